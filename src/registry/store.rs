//! The registry database: SQLite (bundled), WAL journal, versioned schema.
//!
//! Every mutating method runs in ONE transaction: it either applies all its
//! changes or, on any error, none (the transaction is rolled back when
//! dropped uncommitted). Time is an argument (`now`, Unix seconds) and random
//! values (tokens, keys) are supplied by the caller, so the store is
//! deterministic under test.
//!
//! Schema (version [`SCHEMA_VERSION`], kept in `PRAGMA user_version`):
//!
//! - `meta(key, value)`: network, configuration version, registry prefix,
//!   next certificate serial, community and parameter fingerprints;
//! - `cert`: live certificates (serial, prefix CN, subject serial number,
//!   email, public key, expiry, PEM);
//! - `revoked`: serials revoked and not yet expired (the CRL);
//! - `free_block`: the free blocks of the prefix tree;
//! - `token`: single-use registration tokens;
//! - `babel_key`: the Babel MAC keys and which one signs.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ed25519_dalek::VerifyingKey;
use rusqlite::{params, Connection, OptionalExtension, Transaction};

use super::allocator::{AllocError, Allocator, Block};
use super::community::{Communities, Location};
use super::config::BabelKeys;
use crate::pki::{self, Ca, Csr, NodePrefix};

/// Current schema version.
pub const SCHEMA_VERSION: i64 = 1;

/// Certificates within this many seconds of expiry get a new one on renewal.
pub const RENEW_WINDOW: u64 = 30 * 86400;

const SCHEMA: &str = "
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE cert (
    serial INTEGER PRIMARY KEY,
    prefix TEXT NOT NULL UNIQUE,
    subject_serial INTEGER NOT NULL UNIQUE,
    email TEXT,
    pubkey BLOB NOT NULL,
    not_after INTEGER NOT NULL,
    pem TEXT NOT NULL
);
CREATE TABLE revoked (serial INTEGER PRIMARY KEY, not_after INTEGER NOT NULL);
CREATE TABLE free_block (len INTEGER NOT NULL, value TEXT NOT NULL, PRIMARY KEY (len, value));
CREATE TABLE token (
    token TEXT PRIMARY KEY,
    email TEXT NOT NULL,
    prefix_len INTEGER NOT NULL,
    expires INTEGER NOT NULL
);
CREATE TABLE babel_key (id INTEGER PRIMARY KEY AUTOINCREMENT, key TEXT NOT NULL, signing INTEGER NOT NULL);
";

/// Errors of the store. Only [`StoreError::Db`], [`StoreError::Corrupt`]
/// and [`StoreError::Issue`] are the registry's fault; the others describe
/// what is wrong with a request.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite failed.
    #[error("database error: {0}")]
    Db(#[from] rusqlite::Error),
    /// The database holds something we cannot read.
    #[error("database corrupt: {0}")]
    Corrupt(String),
    /// The database was created for another network or a newer schema.
    #[error("{0}")]
    Incompatible(String),
    /// The token is unknown, expired or already used.
    #[error("token unknown, expired or already used")]
    BadToken,
    /// No free prefix of the requested length.
    #[error("prefix space exhausted")]
    Exhausted,
    /// The requested prefix length does not fit.
    #[error("prefix length {0} does not fit in the network")]
    BadLength(u8),
    /// No live certificate with that serial or prefix.
    #[error("no such certificate")]
    UnknownCert,
    /// The certificate expired longer ago than the grace period.
    #[error("certificate expired beyond the grace period")]
    Expired,
    /// The renewal CSR does not carry the certificate's key.
    #[error("the CSR key is not the certificate's key")]
    KeyMismatch,
    /// No token with that value.
    #[error("no such token")]
    UnknownToken,
    /// The CA could not issue the certificate.
    #[error("certificate issuance failed: {0}")]
    Issue(pki::PkiError),
}

impl From<AllocError> for StoreError {
    fn from(e: AllocError) -> Self {
        match e {
            AllocError::Exhausted => Self::Exhausted,
            AllocError::BadLength(l) => Self::BadLength(l),
        }
    }
}

/// A registration token, as listed to the administrator.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TokenInfo {
    /// The token.
    pub token: String,
    /// The email it was issued for.
    pub email: String,
    /// Length of the prefix it entitles to.
    pub prefix_len: u8,
    /// Expiry, Unix seconds.
    pub expires: u64,
}

/// A live certificate, as listed to the administrator.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CertInfo {
    /// Certificate serial.
    pub serial: u64,
    /// The node prefix, CN form (`"5/16"`).
    pub prefix: String,
    /// The subject serial number (IPv4 subnet index).
    pub subject_serial: u32,
    /// Email of the token used, `None` for anonymous certificates.
    pub email: Option<String>,
    /// Expiry, Unix seconds.
    pub not_after: u64,
}

/// What a certificate request asks for.
pub struct IssueParams<'a> {
    /// The node's CSR (signature already verified by the parser).
    pub csr: &'a Csr,
    /// The token, or `None` for anonymous registration.
    pub token: Option<&'a str>,
    /// Prefix length for an anonymous request.
    pub anonymous_len: u8,
    /// Where the node is (community selection).
    pub locations: &'a [Location],
    /// Certificate lifetime, seconds.
    pub validity: u64,
}

/// A certificate the registry issued.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Issued {
    /// The certificate, PEM.
    pub pem: String,
    /// Its serial.
    pub serial: u64,
    /// The allocated prefix.
    pub prefix: Block,
}

/// What a revocation did.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Revoked {
    /// The revoked serial.
    pub serial: u64,
    /// The prefix that went back to the tree (CN form).
    pub prefix: String,
    /// The configuration version after the change.
    pub version: u64,
}

/// Which stage a Babel key rotation is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RotationStage {
    /// One key, used to sign and accepted.
    Stable,
    /// A new key is accepted; the old one still signs.
    NewAccepted,
    /// The new key signs; the old one is still accepted.
    NewSigning,
}

/// What housekeeping removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Swept {
    /// Certificates expired past the grace period, prefixes merged back.
    pub certs: usize,
    /// Expired tokens.
    pub tokens: usize,
    /// CRL entries whose certificate expired.
    pub crl: usize,
}

/// The registry database.
pub struct Store {
    conn: Connection,
    max_len: u8,
    roots: Vec<Block>,
}

impl Store {
    /// Opens (creating if needed) the database at `path` for `network`.
    /// `params` is a fingerprint of the published parameters: when it
    /// differs from the stored one, the configuration version is bumped.
    /// `first_key` is the Babel MAC key installed in a new database.
    pub fn open(
        path: &Path,
        network: pki::Network,
        communities: &Communities,
        params: &str,
        first_key: [u8; 32],
    ) -> Result<Self, StoreError> {
        let conn = Connection::open(path)?;
        Self::init(conn, network, communities, params, first_key)
    }

    /// An in-memory database (tests).
    pub fn open_in_memory(
        network: pki::Network,
        communities: &Communities,
        params: &str,
        first_key: [u8; 32],
    ) -> Result<Self, StoreError> {
        Self::init(
            Connection::open_in_memory()?,
            network,
            communities,
            params,
            first_key,
        )
    }

    fn init(
        mut conn: Connection,
        network: pki::Network,
        communities: &Communities,
        params: &str,
        first_key: [u8; 32],
    ) -> Result<Self, StoreError> {
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.busy_timeout(Duration::from_secs(5))?;
        let max_len = 128 - network.len();
        let roots = communities.roots();
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        let tx = conn.transaction()?;
        match version {
            0 => {
                tx.execute_batch(SCHEMA)?;
                tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
                set_meta(&tx, "network", &network.to_string())?;
                set_meta(&tx, "config_version", "1")?;
                set_meta(&tx, "next_serial", "1")?;
                set_meta(&tx, "communities", &communities.fingerprint())?;
                set_meta(&tx, "params", params)?;
                write_free(&tx, &BTreeSet::new(), &Allocator::new(max_len, &roots))?;
                tx.execute(
                    "INSERT INTO babel_key (key, signing) VALUES (?1, 1)",
                    [hex::encode(first_key)],
                )?;
            }
            SCHEMA_VERSION => {
                let stored = meta(&tx, "network")?.unwrap_or_default();
                if stored != network.to_string() {
                    return Err(StoreError::Incompatible(format!(
                        "database belongs to network {stored}, not {network}"
                    )));
                }
                if meta(&tx, "communities")?.as_deref() != Some(&communities.fingerprint()) {
                    // Communities changed: recompute the free set around the
                    // allocated prefixes.
                    let allocated = cert_prefixes(&tx)?;
                    let before = read_free(&tx)?;
                    write_free(
                        &tx,
                        &before,
                        &Allocator::rebuild(max_len, &roots, &allocated),
                    )?;
                    set_meta(&tx, "communities", &communities.fingerprint())?;
                    bump(&tx)?;
                }
                if meta(&tx, "params")?.as_deref() != Some(params) {
                    set_meta(&tx, "params", params)?;
                    bump(&tx)?;
                }
            }
            v => {
                return Err(StoreError::Incompatible(format!(
                    "database schema version {v} is newer than this re6st ({SCHEMA_VERSION})"
                )))
            }
        }
        tx.commit()?;
        Ok(Self {
            conn,
            max_len,
            roots,
        })
    }

    /// The configuration version.
    pub fn config_version(&self) -> Result<u64, StoreError> {
        meta_u64(&self.conn, "config_version")
    }

    /// The registry node's prefix, once the first certificate is issued.
    pub fn registry_prefix(&self) -> Result<Option<String>, StoreError> {
        meta(&self.conn, "registry_prefix")
    }

    /// Serials of revoked certificates that have not expired yet.
    pub fn crl(&self) -> Result<Vec<u64>, StoreError> {
        let mut st = self
            .conn
            .prepare("SELECT serial FROM revoked ORDER BY serial")?;
        let rows = st.query_map([], |r| r.get::<_, i64>(0))?;
        rows.map(|r| Ok(r? as u64)).collect()
    }

    /// The free blocks of the prefix tree.
    pub fn free_blocks(&self) -> Result<Vec<Block>, StoreError> {
        Ok(read_free(&self.conn)?.into_iter().collect())
    }

    /// Stores a new token for `email`.
    pub fn add_token(
        &mut self,
        token: &str,
        email: &str,
        prefix_len: u8,
        expires: u64,
    ) -> Result<(), StoreError> {
        if prefix_len == 0 || prefix_len > self.max_len {
            return Err(StoreError::BadLength(prefix_len));
        }
        let tx = self.conn.transaction()?;
        tx.execute(
            "INSERT INTO token (token, email, prefix_len, expires) VALUES (?1, ?2, ?3, ?4)",
            params![token, email, prefix_len, expires as i64],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// All tokens, by expiry.
    pub fn tokens(&self) -> Result<Vec<TokenInfo>, StoreError> {
        let mut st = self.conn.prepare(
            "SELECT token, email, prefix_len, expires FROM token ORDER BY expires, token",
        )?;
        let rows = st.query_map([], |r| {
            Ok(TokenInfo {
                token: r.get(0)?,
                email: r.get(1)?,
                prefix_len: r.get(2)?,
                expires: r.get::<_, i64>(3)? as u64,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Deletes a token.
    pub fn delete_token(&mut self, token: &str) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        if tx.execute("DELETE FROM token WHERE token = ?1", [token])? == 0 {
            return Err(StoreError::UnknownToken);
        }
        tx.commit()?;
        Ok(())
    }

    /// Issues a certificate: consumes the token (if any), allocates a
    /// prefix, signs, records. The first certificate ever issued becomes the
    /// registry node's and bumps the configuration version.
    pub fn issue(
        &mut self,
        ca: &Ca,
        communities: &Communities,
        req: &IssueParams<'_>,
        now: u64,
    ) -> Result<Issued, StoreError> {
        let tx = self.conn.transaction()?;
        let (len, email) = match req.token {
            Some(token) => {
                let row: Option<(u8, String)> = tx
                    .query_row(
                        "SELECT prefix_len, email FROM token WHERE token = ?1 AND expires > ?2",
                        params![token, now as i64],
                        |r| Ok((r.get(0)?, r.get(1)?)),
                    )
                    .optional()?;
                let (len, email) = row.ok_or(StoreError::BadToken)?;
                tx.execute("DELETE FROM token WHERE token = ?1", [token])?;
                (len, Some(email))
            }
            None => (req.anonymous_len, None),
        };
        let community = communities.select(req.locations);
        let before = read_free(&tx)?;
        let mut alloc = Allocator::with_free(self.max_len, &self.roots, before.iter().copied());
        let prefix = alloc.allocate(len, &community)?;
        write_free(&tx, &before, &alloc)?;
        let subject_serial = smallest_unused_subject_serial(&tx)?;
        let serial = meta_u64(&tx, "next_serial")?;
        set_meta(&tx, "next_serial", &(serial + 1).to_string())?;
        let pem = sign_cert(
            ca,
            req.csr,
            prefix,
            subject_serial,
            serial,
            now,
            req.validity,
        )?;
        insert_cert(
            &tx,
            serial,
            prefix,
            subject_serial,
            email.as_deref(),
            &req.csr.public_key(),
            now + req.validity,
            &pem,
        )?;
        if meta(&tx, "registry_prefix")?.is_none() {
            set_meta(&tx, "registry_prefix", &prefix.to_string())?;
            bump(&tx)?;
        }
        tx.commit()?;
        Ok(Issued {
            pem,
            serial,
            prefix,
        })
    }

    /// The key, expiry and prefix of the live certificate `serial`.
    pub fn cert_key(&self, serial: u64) -> Result<Option<(VerifyingKey, u64, Block)>, StoreError> {
        let row: Option<(Vec<u8>, i64, String)> = self
            .conn
            .query_row(
                "SELECT pubkey, not_after, prefix FROM cert WHERE serial = ?1",
                [serial as i64],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        let Some((key, not_after, prefix)) = row else {
            return Ok(None);
        };
        let key = <[u8; 32]>::try_from(key.as_slice())
            .ok()
            .and_then(|k| VerifyingKey::from_bytes(&k).ok())
            .ok_or_else(|| StoreError::Corrupt(format!("public key of certificate {serial}")))?;
        let prefix = Block::parse_cn(&prefix)
            .ok_or_else(|| StoreError::Corrupt(format!("prefix {prefix}")))?;
        Ok(Some((key, not_after as u64, prefix)))
    }

    /// Renews certificate `serial`: a new certificate for the same prefix
    /// when it expires within [`RENEW_WINDOW`], the current one otherwise.
    /// Allowed up to `grace` seconds after expiry.
    pub fn renew(
        &mut self,
        ca: &Ca,
        serial: u64,
        csr: &Csr,
        validity: u64,
        grace: u64,
        now: u64,
    ) -> Result<Issued, StoreError> {
        let tx = self.conn.transaction()?;
        type Row = (String, u32, Option<String>, Vec<u8>, i64, String);
        let row: Option<Row> = tx
            .query_row(
                "SELECT prefix, subject_serial, email, pubkey, not_after, pem FROM cert WHERE serial = ?1",
                [serial as i64],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?)),
            )
            .optional()?;
        let (prefix, subject_serial, email, pubkey, not_after, pem) =
            row.ok_or(StoreError::UnknownCert)?;
        let not_after = not_after as u64;
        let prefix = Block::parse_cn(&prefix)
            .ok_or_else(|| StoreError::Corrupt(format!("prefix {prefix}")))?;
        if now > not_after.saturating_add(grace) {
            return Err(StoreError::Expired);
        }
        if csr.public_key().as_bytes().as_slice() != pubkey.as_slice() {
            return Err(StoreError::KeyMismatch);
        }
        if not_after > now + RENEW_WINDOW {
            return Ok(Issued {
                pem,
                serial,
                prefix,
            });
        }
        let new_serial = meta_u64(&tx, "next_serial")?;
        set_meta(&tx, "next_serial", &(new_serial + 1).to_string())?;
        let pem = sign_cert(ca, csr, prefix, subject_serial, new_serial, now, validity)?;
        tx.execute("DELETE FROM cert WHERE serial = ?1", [serial as i64])?;
        insert_cert(
            &tx,
            new_serial,
            prefix,
            subject_serial,
            email.as_deref(),
            &csr.public_key(),
            now + validity,
            &pem,
        )?;
        tx.commit()?;
        Ok(Issued {
            pem,
            serial: new_serial,
            prefix,
        })
    }

    /// Revokes the live certificate with this serial or prefix: it joins the
    /// CRL, its prefix goes back to the tree, the configuration version is
    /// bumped.
    pub fn revoke(&mut self, target: RevokeTarget) -> Result<Revoked, StoreError> {
        let tx = self.conn.transaction()?;
        let row: Option<(i64, String, i64)> = match target {
            RevokeTarget::Serial(s) => tx.query_row(
                "SELECT serial, prefix, not_after FROM cert WHERE serial = ?1",
                [s as i64],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            ),
            RevokeTarget::Prefix(p) => tx.query_row(
                "SELECT serial, prefix, not_after FROM cert WHERE prefix = ?1",
                [p.to_string()],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            ),
        }
        .optional()?;
        let (serial, prefix, not_after) = row.ok_or(StoreError::UnknownCert)?;
        let block = Block::parse_cn(&prefix)
            .ok_or_else(|| StoreError::Corrupt(format!("prefix {prefix}")))?;
        tx.execute("DELETE FROM cert WHERE serial = ?1", [serial])?;
        tx.execute(
            "INSERT OR REPLACE INTO revoked (serial, not_after) VALUES (?1, ?2)",
            [serial, not_after],
        )?;
        release(&tx, self.max_len, &self.roots, &[block])?;
        let version = bump(&tx)?;
        tx.commit()?;
        Ok(Revoked {
            serial: serial as u64,
            prefix,
            version,
        })
    }

    /// Live certificates, by serial.
    pub fn certs(&self) -> Result<Vec<CertInfo>, StoreError> {
        let mut st = self.conn.prepare(
            "SELECT serial, prefix, subject_serial, email, not_after FROM cert ORDER BY serial",
        )?;
        let rows = st.query_map([], |r| {
            Ok(CertInfo {
                serial: r.get::<_, i64>(0)? as u64,
                prefix: r.get(1)?,
                subject_serial: r.get(2)?,
                email: r.get(3)?,
                not_after: r.get::<_, i64>(4)? as u64,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The current Babel MAC keys.
    pub fn babel_keys(&self) -> Result<BabelKeys, StoreError> {
        let mut st = self
            .conn
            .prepare("SELECT key, signing FROM babel_key ORDER BY id")?;
        let rows: Vec<(String, bool)> = st
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        let sign = rows
            .iter()
            .find(|(_, s)| *s)
            .map(|(k, _)| k.clone())
            .ok_or_else(|| StoreError::Corrupt("no signing babel key".into()))?;
        Ok(BabelKeys {
            sign,
            accept: rows.into_iter().map(|(k, _)| k).collect(),
        })
    }

    /// The stage of the Babel key rotation.
    pub fn rotation_stage(&self) -> Result<RotationStage, StoreError> {
        stage(&self.conn)
    }

    /// Advances the staged Babel key rotation by one step and bumps the
    /// configuration version: `stable` → a new key (`new_key`) is accepted;
    /// → the new key signs; → the old key is dropped (`stable`). Returns the
    /// stage reached.
    pub fn rotate_keys(&mut self, new_key: [u8; 32]) -> Result<RotationStage, StoreError> {
        let tx = self.conn.transaction()?;
        let next = match stage(&tx)? {
            RotationStage::Stable => {
                tx.execute(
                    "INSERT INTO babel_key (key, signing) VALUES (?1, 0)",
                    [hex::encode(new_key)],
                )?;
                RotationStage::NewAccepted
            }
            RotationStage::NewAccepted => {
                tx.execute("UPDATE babel_key SET signing = NOT signing", [])?;
                RotationStage::NewSigning
            }
            RotationStage::NewSigning => {
                tx.execute("DELETE FROM babel_key WHERE signing = 0", [])?;
                RotationStage::Stable
            }
        };
        bump(&tx)?;
        tx.commit()?;
        Ok(next)
    }

    /// Deletes certificates expired more than `grace` seconds ago (their
    /// prefixes merge back into free blocks), expired tokens, and CRL
    /// entries of expired certificates (bumping the configuration version
    /// when the CRL shrinks).
    pub fn sweep(&mut self, grace: u64, now: u64) -> Result<Swept, StoreError> {
        let tx = self.conn.transaction()?;
        let cutoff = now.saturating_sub(grace) as i64;
        let expired: Vec<String> = {
            let mut st = tx.prepare("SELECT prefix FROM cert WHERE not_after < ?1")?;
            let rows = st.query_map([cutoff], |r| r.get(0))?;
            rows.collect::<Result<_, _>>()?
        };
        let blocks = expired
            .iter()
            .map(|p| Block::parse_cn(p).ok_or_else(|| StoreError::Corrupt(format!("prefix {p}"))))
            .collect::<Result<Vec<_>, _>>()?;
        tx.execute("DELETE FROM cert WHERE not_after < ?1", [cutoff])?;
        release(&tx, self.max_len, &self.roots, &blocks)?;
        let tokens = tx.execute("DELETE FROM token WHERE expires <= ?1", [now as i64])?;
        let crl = tx.execute("DELETE FROM revoked WHERE not_after < ?1", [now as i64])?;
        if crl > 0 {
            bump(&tx)?;
        }
        tx.commit()?;
        Ok(Swept {
            certs: blocks.len(),
            tokens,
            crl,
        })
    }
}

/// Which certificate to revoke.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RevokeTarget {
    /// By certificate serial.
    Serial(u64),
    /// By prefix (the CN).
    Prefix(Block),
}

fn sign_cert(
    ca: &Ca,
    csr: &Csr,
    prefix: Block,
    subject_serial: u32,
    serial: u64,
    now: u64,
    validity: u64,
) -> Result<String, StoreError> {
    let node_prefix = NodePrefix::new(prefix.value, prefix.len).map_err(StoreError::Issue)?;
    let cert = ca
        .issue(&pki::IssueRequest {
            csr,
            prefix: node_prefix,
            subject_serial,
            serial,
            not_before: UNIX_EPOCH + Duration::from_secs(now),
            not_after: UNIX_EPOCH + Duration::from_secs(now + validity),
        })
        .map_err(StoreError::Issue)?;
    Ok(cert.to_pem())
}

#[allow(clippy::too_many_arguments)]
fn insert_cert(
    tx: &Transaction<'_>,
    serial: u64,
    prefix: Block,
    subject_serial: u32,
    email: Option<&str>,
    key: &VerifyingKey,
    not_after: u64,
    pem: &str,
) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO cert (serial, prefix, subject_serial, email, pubkey, not_after, pem)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            serial as i64,
            prefix.to_string(),
            subject_serial,
            email,
            key.as_bytes().as_slice(),
            not_after as i64,
            pem
        ],
    )?;
    Ok(())
}

fn smallest_unused_subject_serial(conn: &Connection) -> Result<u32, StoreError> {
    let mut st = conn.prepare("SELECT subject_serial FROM cert ORDER BY subject_serial")?;
    let mut want = 1u32;
    for s in st.query_map([], |r| r.get::<_, u32>(0))? {
        let s = s?;
        if s > want {
            break;
        }
        if s == want {
            want += 1;
        }
    }
    Ok(want)
}

fn release(
    tx: &Transaction<'_>,
    max_len: u8,
    roots: &[Block],
    blocks: &[Block],
) -> Result<(), StoreError> {
    if blocks.is_empty() {
        return Ok(());
    }
    let before = read_free(tx)?;
    let mut alloc = Allocator::with_free(max_len, roots, before.iter().copied());
    for b in blocks {
        alloc.release(*b);
    }
    write_free(tx, &before, &alloc)
}

fn stage(conn: &Connection) -> Result<RotationStage, StoreError> {
    let rows: Vec<(i64, bool)> = {
        let mut st = conn.prepare("SELECT id, signing FROM babel_key ORDER BY id")?;
        let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        rows.collect::<Result<_, _>>()?
    };
    match rows.as_slice() {
        [(_, true)] => Ok(RotationStage::Stable),
        [(_, true), (_, false)] => Ok(RotationStage::NewAccepted),
        [(_, false), (_, true)] => Ok(RotationStage::NewSigning),
        _ => Err(StoreError::Corrupt("babel keys".into())),
    }
}

fn cert_prefixes(conn: &Connection) -> Result<Vec<Block>, StoreError> {
    let mut st = conn.prepare("SELECT prefix FROM cert")?;
    let rows: Vec<String> = st.query_map([], |r| r.get(0))?.collect::<Result<_, _>>()?;
    rows.iter()
        .map(|p| Block::parse_cn(p).ok_or_else(|| StoreError::Corrupt(format!("prefix {p}"))))
        .collect()
}

fn read_free(conn: &Connection) -> Result<BTreeSet<Block>, StoreError> {
    let mut st = conn.prepare("SELECT len, value FROM free_block")?;
    let rows: Vec<(u8, String)> = st
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    rows.into_iter()
        .map(|(len, v)| {
            v.parse()
                .ok()
                .and_then(|v| Block::new(v, len))
                .ok_or_else(|| StoreError::Corrupt(format!("free block {v}/{len}")))
        })
        .collect()
}

fn write_free(
    tx: &Transaction<'_>,
    before: &BTreeSet<Block>,
    after: &Allocator,
) -> Result<(), StoreError> {
    let after: BTreeSet<Block> = after.free_blocks().copied().collect();
    for b in before.difference(&after) {
        tx.execute(
            "DELETE FROM free_block WHERE len = ?1 AND value = ?2",
            params![b.len, b.value.to_string()],
        )?;
    }
    for b in after.difference(before) {
        tx.execute(
            "INSERT INTO free_block (len, value) VALUES (?1, ?2)",
            params![b.len, b.value.to_string()],
        )?;
    }
    Ok(())
}

fn meta(conn: &Connection, key: &str) -> Result<Option<String>, StoreError> {
    Ok(conn
        .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
        .optional()?)
}

fn meta_u64(conn: &Connection, key: &str) -> Result<u64, StoreError> {
    meta(conn, key)?
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| StoreError::Corrupt(format!("meta {key}")))
}

fn set_meta(conn: &Connection, key: &str, value: &str) -> Result<(), StoreError> {
    conn.execute(
        "INSERT OR REPLACE INTO meta (key, value) VALUES (?1, ?2)",
        [key, value],
    )?;
    Ok(())
}

fn bump(conn: &Connection) -> Result<u64, StoreError> {
    let v = meta_u64(conn, "config_version")? + 1;
    set_meta(conn, "config_version", &v.to_string())?;
    Ok(v)
}

/// Seconds since the Unix epoch of a system time (0 before the epoch).
pub fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use ed25519_dalek::SigningKey;

    use super::*;
    use crate::pki::NodeCert;

    const DAY: u64 = 86400;
    const T0: u64 = 1_800_000_000;

    fn setup(communities: &Communities) -> (Ca, Store) {
        let net: pki::Network = "2001:db8:42::/48".parse().unwrap();
        let ca = Ca::generate(net, 3650).unwrap();
        let store = Store::open_in_memory(net, communities, "p", [7; 32]).unwrap();
        (ca, store)
    }

    fn csr(seed: u8) -> Csr {
        Csr::generate(&SigningKey::from_bytes(&[seed; 32]), &[]).unwrap()
    }

    fn issue(
        store: &mut Store,
        ca: &Ca,
        c: &Communities,
        csr: &Csr,
        token: Option<&str>,
        loc: &[Location],
        now: u64,
    ) -> Result<Issued, StoreError> {
        let p = IssueParams {
            csr,
            token,
            anonymous_len: 16,
            locations: loc,
            validity: 365 * DAY,
        };
        store.issue(ca, c, &p, now)
    }

    #[test]
    fn registry_first_then_subject_serials() {
        let c = Communities::whole();
        let (ca, mut s) = setup(&c);
        assert_eq!(s.config_version().unwrap(), 1);
        assert_eq!(s.registry_prefix().unwrap(), None);
        let a = issue(&mut s, &ca, &c, &csr(1), None, &[], T0).unwrap();
        assert_eq!(a.prefix.to_string(), "0/16");
        assert_eq!(s.registry_prefix().unwrap().as_deref(), Some("0/16"));
        assert_eq!(s.config_version().unwrap(), 2);
        let b = issue(&mut s, &ca, &c, &csr(2), None, &[], T0).unwrap();
        assert_eq!(b.prefix.to_string(), "1/16");
        assert_eq!(s.registry_prefix().unwrap().as_deref(), Some("0/16"));
        assert_eq!(s.config_version().unwrap(), 2);
        assert!(b.serial > a.serial);
        let cert = NodeCert::from_pem(&b.pem).unwrap();
        assert_eq!(cert.prefix().unwrap().to_string(), "1/16");
        assert_eq!(cert.subject_serial(), Some(2));
        assert_eq!(cert.serial(), b.serial);
        // A revoked certificate frees its subject serial and its prefix.
        let r = s.revoke(RevokeTarget::Serial(a.serial)).unwrap();
        assert_eq!(r.prefix, "0/16");
        assert_eq!(r.version, 3);
        assert_eq!(s.crl().unwrap(), [a.serial]);
        let c3 = issue(&mut s, &ca, &c, &csr(3), None, &[], T0).unwrap();
        assert_eq!(c3.prefix.to_string(), "0/16");
        assert_eq!(
            NodeCert::from_pem(&c3.pem).unwrap().subject_serial(),
            Some(1)
        );
        assert!(matches!(
            s.revoke(RevokeTarget::Serial(a.serial)),
            Err(StoreError::UnknownCert)
        ));
        let r = s
            .revoke(RevokeTarget::Prefix(Block::parse_cn("1/16").unwrap()))
            .unwrap();
        assert_eq!(r.serial, b.serial);
    }

    #[test]
    fn tokens_single_use_and_expiring() {
        let c = Communities::whole();
        let (ca, mut s) = setup(&c);
        s.add_token("t1", "a@example.org", 20, T0 + DAY).unwrap();
        s.add_token("t2", "b@example.org", 16, T0 + 10).unwrap();
        assert!(matches!(
            s.add_token("t3", "c@example.org", 81, T0),
            Err(StoreError::BadLength(81))
        ));
        assert!(s.add_token("t1", "dup@example.org", 16, T0).is_err());
        assert_eq!(s.tokens().unwrap().len(), 2);
        let a = issue(&mut s, &ca, &c, &csr(1), Some("t1"), &[], T0).unwrap();
        assert_eq!(a.prefix.len, 20);
        assert_eq!(
            s.certs().unwrap()[0].email.as_deref(),
            Some("a@example.org")
        );
        // Used, unknown, expired.
        for t in ["t1", "nope"] {
            assert!(matches!(
                issue(&mut s, &ca, &c, &csr(2), Some(t), &[], T0),
                Err(StoreError::BadToken)
            ));
        }
        assert!(matches!(
            issue(&mut s, &ca, &c, &csr(2), Some("t2"), &[], T0 + 10),
            Err(StoreError::BadToken)
        ));
        let swept = s.sweep(100 * DAY, T0 + 11).unwrap();
        assert_eq!(swept.tokens, 1);
        assert!(s.tokens().unwrap().is_empty());
        s.add_token("t4", "d@example.org", 16, T0 + DAY).unwrap();
        s.delete_token("t4").unwrap();
        assert!(matches!(
            s.delete_token("t4"),
            Err(StoreError::UnknownToken)
        ));
    }

    #[test]
    fn failed_issue_changes_nothing() {
        let c = Communities::whole();
        let (ca, mut s) = setup(&c);
        s.add_token("t", "a@example.org", 16, T0 + DAY).unwrap();
        // The token asks for a prefix longer than the space: the token is
        // not consumed and nothing is allocated.
        let free = s.free_blocks().unwrap();
        let p = IssueParams {
            csr: &csr(1),
            token: None,
            anonymous_len: 81,
            locations: &[],
            validity: DAY,
        };
        assert!(matches!(
            s.issue(&ca, &c, &p, T0),
            Err(StoreError::BadLength(81))
        ));
        assert_eq!(s.free_blocks().unwrap(), free);
        assert_eq!(s.config_version().unwrap(), 1);
        assert_eq!(s.registry_prefix().unwrap(), None);
    }

    #[test]
    fn exhaustion() {
        let c = Communities::whole();
        let net: pki::Network = "2001:db8:42:ff00::/62".parse().unwrap();
        let ca = Ca::generate(net, 3650).unwrap();
        let mut s = Store::open_in_memory(net, &c, "p", [7; 32]).unwrap();
        let csrs: Vec<Csr> = (0..10).map(csr).collect();
        let p = |i: u8| IssueParams {
            csr: &csrs[usize::from(i)],
            token: None,
            anonymous_len: 2,
            locations: &[],
            validity: DAY,
        };
        for i in 0..4 {
            s.issue(&ca, &c, &p(i), T0).unwrap();
        }
        assert!(matches!(
            s.issue(&ca, &c, &p(9), T0),
            Err(StoreError::Exhausted)
        ));
    }

    #[test]
    fn communities_by_location() {
        let c = Communities::parse("0 *\n10 FR @EU\n", 80).unwrap();
        let (ca, mut s) = setup(&c);
        let fr = crate::registry::community::parse_locations("FR").unwrap();
        let us = crate::registry::community::parse_locations("US,@NA").unwrap();
        let a = issue(&mut s, &ca, &c, &csr(1), None, &fr, T0).unwrap();
        assert_eq!(a.prefix.bits(), format!("10{}", "0".repeat(14)));
        let b = issue(&mut s, &ca, &c, &csr(2), None, &us, T0).unwrap();
        assert_eq!(b.prefix.bits(), "0".repeat(16));
    }

    #[test]
    fn renewal_and_grace() {
        let c = Communities::whole();
        let (ca, mut s) = setup(&c);
        let k = csr(1);
        let a = issue(&mut s, &ca, &c, &k, None, &[], T0).unwrap();
        let grace = 100 * DAY;
        // Far from expiry: the same certificate.
        let same = s
            .renew(&ca, a.serial, &k, 365 * DAY, grace, T0 + DAY)
            .unwrap();
        assert_eq!(same, a);
        // Another key is refused.
        assert!(matches!(
            s.renew(&ca, a.serial, &csr(2), 365 * DAY, grace, T0 + 340 * DAY),
            Err(StoreError::KeyMismatch)
        ));
        // Within 30 days of expiry: a new certificate, same prefix and subject serial.
        let n = s
            .renew(&ca, a.serial, &k, 365 * DAY, grace, T0 + 340 * DAY)
            .unwrap();
        assert_ne!(n.serial, a.serial);
        assert_eq!(n.prefix, a.prefix);
        let cert = NodeCert::from_pem(&n.pem).unwrap();
        assert_eq!(cert.subject_serial(), Some(1));
        assert_eq!(unix(cert.not_after()), T0 + 705 * DAY);
        assert!(matches!(
            s.renew(&ca, a.serial, &k, DAY, grace, T0),
            Err(StoreError::UnknownCert)
        ));
        // After expiry, within grace: renewed. Beyond grace: refused.
        let exp = T0 + 705 * DAY;
        let m = s
            .renew(&ca, n.serial, &k, 365 * DAY, grace, exp + 50 * DAY)
            .unwrap();
        assert_ne!(m.serial, n.serial);
        assert!(matches!(
            s.renew(
                &ca,
                m.serial,
                &k,
                365 * DAY,
                grace,
                exp + 50 * DAY + 366 * DAY + grace
            ),
            Err(StoreError::Expired)
        ));
    }

    #[test]
    fn sweep_merges_expired_prefixes() {
        let c = Communities::whole();
        let (ca, mut s) = setup(&c);
        let csrs: Vec<Csr> = (0..3).map(csr).collect();
        let p = |i: u8, v| IssueParams {
            csr: &csrs[usize::from(i)],
            token: None,
            anonymous_len: 16,
            locations: &[],
            validity: v,
        };
        let a = s.issue(&ca, &c, &p(1, DAY), T0).unwrap();
        s.issue(&ca, &c, &p(2, 2 * DAY), T0).unwrap();
        s.revoke(RevokeTarget::Serial(a.serial)).unwrap();
        let v = s.config_version().unwrap();
        // Nothing expired past grace yet; the revoked certificate expired,
        // so its CRL entry goes and the version moves.
        let sw = s.sweep(10 * DAY, T0 + DAY + 1).unwrap();
        assert_eq!(
            sw,
            Swept {
                certs: 0,
                tokens: 0,
                crl: 1
            }
        );
        assert_eq!(s.config_version().unwrap(), v + 1);
        assert!(s.crl().unwrap().is_empty());
        let sw = s.sweep(10 * DAY, T0 + 12 * DAY + 1).unwrap();
        assert_eq!(sw.certs, 1);
        assert!(s.certs().unwrap().is_empty());
        assert_eq!(s.free_blocks().unwrap(), [Block::ROOT]);
    }

    #[test]
    fn staged_key_rotation() {
        let c = Communities::whole();
        let (_, mut s) = setup(&c);
        let old = hex::encode([7u8; 32]);
        let new = hex::encode([8u8; 32]);
        assert_eq!(s.rotation_stage().unwrap(), RotationStage::Stable);
        assert_eq!(
            s.babel_keys().unwrap(),
            BabelKeys {
                sign: old.clone(),
                accept: vec![old.clone()]
            }
        );
        assert_eq!(s.rotate_keys([8; 32]).unwrap(), RotationStage::NewAccepted);
        assert_eq!(
            s.babel_keys().unwrap(),
            BabelKeys {
                sign: old.clone(),
                accept: vec![old.clone(), new.clone()]
            }
        );
        assert_eq!(s.rotate_keys([9; 32]).unwrap(), RotationStage::NewSigning);
        assert_eq!(
            s.babel_keys().unwrap(),
            BabelKeys {
                sign: new.clone(),
                accept: vec![old, new.clone()]
            }
        );
        assert_eq!(s.rotate_keys([9; 32]).unwrap(), RotationStage::Stable);
        assert_eq!(
            s.babel_keys().unwrap(),
            BabelKeys {
                sign: new.clone(),
                accept: vec![new]
            }
        );
        assert_eq!(s.config_version().unwrap(), 4);
    }

    #[test]
    fn reopen_checks_network_and_bumps_on_change() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.db");
        let net: pki::Network = "2001:db8:42::/48".parse().unwrap();
        let c = Communities::whole();
        drop(Store::open(&path, net, &c, "p1", [1; 32]).unwrap());
        let s = Store::open(&path, net, &c, "p1", [1; 32]).unwrap();
        assert_eq!(s.config_version().unwrap(), 1);
        drop(s);
        let s = Store::open(&path, net, &c, "p2", [1; 32]).unwrap();
        assert_eq!(s.config_version().unwrap(), 2);
        drop(s);
        let c2 = Communities::parse("0 *\n11 FR\n", 80).unwrap();
        let s = Store::open(&path, net, &c2, "p2", [1; 32]).unwrap();
        assert_eq!(s.config_version().unwrap(), 3);
        assert_eq!(
            s.free_blocks().unwrap(),
            [
                Block::from_bits("0").unwrap(),
                Block::from_bits("11").unwrap()
            ]
        );
        drop(s);
        let other: pki::Network = "2001:db8:43::/48".parse().unwrap();
        assert!(matches!(
            Store::open(&path, other, &c, "p2", [1; 32]),
            Err(StoreError::Incompatible(_))
        ));
    }
}
