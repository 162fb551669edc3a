//! The peer cache: an SQLite database (`peers.db`, WAL mode) in the node's
//! state directory.
//!
//! It keeps what a node needs to rejoin the mesh when the registry is down:
//! known peers (prefix, announced addresses, when last seen, consecutive
//! failures and when to retry) and the current signed network configuration
//! (opaque bytes and their version).
//!
//! A file that is not a database or fails SQLite's integrity check is moved
//! aside (`peers.db.corrupt-<unix time>`) with a warning and a fresh cache is
//! started: the cache is an optimisation, never a reason not to start.
//!
//! Times are stored as seconds since the UNIX epoch.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection, ErrorCode, OptionalExtension};

use super::Address;
use crate::pki::NodePrefix;

/// File name of the cache in the state directory.
pub const FILE_NAME: &str = "peers.db";

/// Schema version written in `PRAGMA user_version`.
const SCHEMA_VERSION: i64 = 1;

/// Errors of the peer cache.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// SQLite failed.
    #[error("peer cache {path}: {source}")]
    Sqlite {
        /// The database file.
        path: PathBuf,
        /// What SQLite said.
        source: rusqlite::Error,
    },
    /// Moving a corrupt file aside failed.
    #[error("peer cache {path}: cannot move corrupt file aside: {source}")]
    MoveAside {
        /// The database file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file was written by a newer re6st.
    #[error("peer cache {path}: schema version {found} is newer than {SCHEMA_VERSION}")]
    NewerSchema {
        /// The database file.
        path: PathBuf,
        /// The version found.
        found: i64,
    },
}

/// One known peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CachedPeer {
    /// Its prefix.
    pub prefix: NodePrefix,
    /// Its announced addresses, by preference.
    pub addresses: Vec<Address>,
    /// When we last had a tunnel with it or heard its addresses.
    pub last_seen: Option<SystemTime>,
    /// Consecutive failed attempts.
    pub failures: u32,
    /// Not to be tried before this time.
    pub retry_at: Option<SystemTime>,
}

/// The open peer cache.
pub struct PeerCache {
    conn: Connection,
    path: PathBuf,
}

impl PeerCache {
    /// Opens (or creates) `peers.db` in `state_dir`. Returns the cache and,
    /// if the existing file was corrupt, where it was moved.
    pub fn open(state_dir: &Path) -> Result<(Self, Option<PathBuf>), CacheError> {
        Self::open_path(&state_dir.join(FILE_NAME))
    }

    /// Opens (or creates) the cache at `path`; see [`PeerCache::open`].
    pub fn open_path(path: &Path) -> Result<(Self, Option<PathBuf>), CacheError> {
        match Self::try_open(path) {
            Ok(cache) => Ok((cache, None)),
            Err(CacheError::Sqlite { source, .. }) if is_corruption(&source) => {
                let aside = move_aside(path)?;
                tracing::warn!(
                    "peer cache {} is corrupt ({source}); moved to {} and starting afresh",
                    path.display(),
                    aside.display()
                );
                Ok((Self::try_open(path)?, Some(aside)))
            }
            Err(e) => Err(e),
        }
    }

    fn try_open(path: &Path) -> Result<Self, CacheError> {
        let err = |source| CacheError::Sqlite {
            path: path.to_owned(),
            source,
        };
        let conn = Connection::open(path).map_err(err)?;
        conn.busy_timeout(Duration::from_secs(5)).map_err(err)?;
        let check: String = conn
            .query_row("PRAGMA quick_check", [], |r| r.get(0))
            .map_err(err)?;
        if check != "ok" {
            return Err(err(rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CORRUPT),
                Some(check),
            )));
        }
        let _mode: String = conn
            .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
            .map_err(err)?;
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(err)?;
        if version > SCHEMA_VERSION {
            return Err(CacheError::NewerSchema {
                path: path.to_owned(),
                found: version,
            });
        }
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS peer (
                 prefix    TEXT PRIMARY KEY,
                 addresses TEXT NOT NULL,
                 last_seen INTEGER,
                 failures  INTEGER NOT NULL DEFAULT 0,
                 retry_at  INTEGER
             );
             CREATE TABLE IF NOT EXISTS network_config (
                 id      INTEGER PRIMARY KEY CHECK (id = 1),
                 version INTEGER NOT NULL,
                 body    BLOB NOT NULL
             );
             PRAGMA user_version = 1;",
        )
        .map_err(err)?;
        Ok(Self {
            conn,
            path: path.to_owned(),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Records `prefix`'s addresses (replacing the old ones) and that it was
    /// seen at `now`. Failures are kept.
    pub fn set_addresses(
        &self,
        prefix: NodePrefix,
        addresses: &[Address],
        now: SystemTime,
    ) -> Result<(), CacheError> {
        self.conn
            .execute(
                "INSERT INTO peer (prefix, addresses, last_seen) VALUES (?1, ?2, ?3)
                 ON CONFLICT (prefix) DO UPDATE SET addresses = ?2, last_seen = ?3",
                params![prefix.to_string(), encode_addresses(addresses), secs(now)],
            )
            .map(drop)
            .map_err(|e| self.err(e))
    }

    /// Records a failure of `prefix`: `failures` in a row, not to be retried
    /// before `retry_at`.
    pub fn mark_failed(
        &self,
        prefix: NodePrefix,
        failures: u32,
        retry_at: SystemTime,
    ) -> Result<(), CacheError> {
        self.conn
            .execute(
                "INSERT INTO peer (prefix, addresses, failures, retry_at) VALUES (?1, '', ?2, ?3)
                 ON CONFLICT (prefix) DO UPDATE SET failures = ?2, retry_at = ?3",
                params![prefix.to_string(), failures, secs(retry_at)],
            )
            .map(drop)
            .map_err(|e| self.err(e))
    }

    /// Records a working tunnel with `prefix` at `now`: failures cleared.
    pub fn mark_succeeded(&self, prefix: NodePrefix, now: SystemTime) -> Result<(), CacheError> {
        self.conn
            .execute(
                "UPDATE peer SET failures = 0, retry_at = NULL, last_seen = ?2 WHERE prefix = ?1",
                params![prefix.to_string(), secs(now)],
            )
            .map(drop)
            .map_err(|e| self.err(e))
    }

    /// Forgets `prefix` (e.g. its certificate was revoked).
    pub fn remove(&self, prefix: NodePrefix) -> Result<(), CacheError> {
        self.conn
            .execute("DELETE FROM peer WHERE prefix = ?1", [prefix.to_string()])
            .map(drop)
            .map_err(|e| self.err(e))
    }

    /// One peer.
    pub fn peer(&self, prefix: NodePrefix) -> Result<Option<CachedPeer>, CacheError> {
        self.conn
            .query_row(
                "SELECT prefix, addresses, last_seen, failures, retry_at FROM peer
                 WHERE prefix = ?1",
                [prefix.to_string()],
                row_to_raw,
            )
            .optional()
            .map(|raw| raw.and_then(RawPeer::decode))
            .map_err(|e| self.err(e))
    }

    /// Every peer, most recently seen first. Rows that do not decode (a
    /// prefix or address this version cannot read) are skipped.
    pub fn peers(&self) -> Result<Vec<CachedPeer>, CacheError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT prefix, addresses, last_seen, failures, retry_at FROM peer
                 ORDER BY last_seen IS NULL, last_seen DESC, prefix",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], row_to_raw)
            .map_err(|e| self.err(e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.err(e))?;
        Ok(rows.into_iter().filter_map(RawPeer::decode).collect())
    }

    /// Peers with addresses that may be tried at `now`.
    pub fn retryable(&self, now: SystemTime) -> Result<Vec<CachedPeer>, CacheError> {
        Ok(self
            .peers()?
            .into_iter()
            .filter(|p| !p.addresses.is_empty() && p.retry_at.is_none_or(|at| at <= now))
            .collect())
    }

    /// Number of peers.
    pub fn len(&self) -> Result<usize, CacheError> {
        self.conn
            .query_row("SELECT COUNT(*) FROM peer", [], |r| r.get::<_, i64>(0))
            .map(|n| usize::try_from(n).unwrap_or(0))
            .map_err(|e| self.err(e))
    }

    /// Whether no peer is known.
    pub fn is_empty(&self) -> Result<bool, CacheError> {
        self.len().map(|n| n == 0)
    }

    /// Keeps only the `keep` most recently seen peers.
    pub fn prune(&self, keep: usize) -> Result<usize, CacheError> {
        let keep = i64::try_from(keep).unwrap_or(i64::MAX);
        self.conn
            .execute(
                "DELETE FROM peer WHERE prefix NOT IN (
                     SELECT prefix FROM peer
                     ORDER BY last_seen IS NULL, last_seen DESC, prefix LIMIT ?1)",
                [keep],
            )
            .map_err(|e| self.err(e))
    }

    /// The cached network configuration: (version, signed bytes).
    pub fn network_config(&self) -> Result<Option<(u64, Vec<u8>)>, CacheError> {
        self.conn
            .query_row(
                "SELECT version, body FROM network_config WHERE id = 1",
                [],
                |r| Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?)),
            )
            .optional()
            .map(|row| row.map(|(v, body)| (v as u64, body)))
            .map_err(|e| self.err(e))
    }

    /// Stores the network configuration `body` (signed, opaque here) of
    /// `version`, replacing the previous one.
    pub fn set_network_config(&self, version: u64, body: &[u8]) -> Result<(), CacheError> {
        // Stored as the same 64 bits in SQLite's signed integer.
        let version = version as i64;
        self.conn
            .execute(
                "INSERT INTO network_config (id, version, body) VALUES (1, ?1, ?2)
                 ON CONFLICT (id) DO UPDATE SET version = ?1, body = ?2",
                params![version, body],
            )
            .map(drop)
            .map_err(|e| self.err(e))
    }

    fn err(&self, source: rusqlite::Error) -> CacheError {
        CacheError::Sqlite {
            path: self.path.clone(),
            source,
        }
    }
}

struct RawPeer {
    prefix: String,
    addresses: String,
    last_seen: Option<i64>,
    failures: i64,
    retry_at: Option<i64>,
}

impl RawPeer {
    fn decode(self) -> Option<CachedPeer> {
        Some(CachedPeer {
            prefix: self.prefix.parse().ok()?,
            addresses: decode_addresses(&self.addresses),
            last_seen: self.last_seen.map(from_secs),
            failures: u32::try_from(self.failures).unwrap_or(0),
            retry_at: self.retry_at.map(from_secs),
        })
    }
}

fn row_to_raw(r: &rusqlite::Row<'_>) -> rusqlite::Result<RawPeer> {
    Ok(RawPeer {
        prefix: r.get(0)?,
        addresses: r.get(1)?,
        last_seen: r.get(2)?,
        failures: r.get(3)?,
        retry_at: r.get(4)?,
    })
}

fn is_corruption(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt)
    )
}

fn move_aside(path: &Path) -> Result<PathBuf, CacheError> {
    let stamp = secs(SystemTime::now());
    let mut aside = path.as_os_str().to_owned();
    aside.push(format!(".corrupt-{stamp}"));
    let aside = PathBuf::from(aside);
    std::fs::rename(path, &aside).map_err(|source| CacheError::MoveAside {
        path: path.to_owned(),
        source,
    })?;
    for suffix in ["-wal", "-shm"] {
        let mut side = path.as_os_str().to_owned();
        side.push(suffix);
        // Journals of the corrupt file are meaningless for a fresh one.
        let _ = std::fs::remove_file(PathBuf::from(side));
    }
    Ok(aside)
}

/// Addresses as `ip,port,proto` joined by `;` (re6stnet's notation).
fn encode_addresses(addresses: &[Address]) -> String {
    addresses
        .iter()
        .map(Address::to_string)
        .collect::<Vec<_>>()
        .join(";")
}

fn decode_addresses(text: &str) -> Vec<Address> {
    text.split(';')
        .filter(|s| !s.is_empty())
        .filter_map(|s| s.parse().ok())
        .collect()
}

fn secs(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn from_secs(s: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(u64::try_from(s).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use super::*;
    use crate::node::Proto;

    fn prefix(v: u128) -> NodePrefix {
        NodePrefix::new(v, 16).expect("prefix")
    }

    fn addrs(n: u8) -> Vec<Address> {
        vec![
            Address {
                ip: IpAddr::V4(Ipv4Addr::new(192, 0, 2, n)),
                port: 1194,
                proto: Proto::Udp,
            },
            Address {
                ip: "2001:db8::1".parse().expect("ip"),
                port: 443,
                proto: Proto::Quic,
            },
        ]
    }

    fn at(s: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_700_000_000 + s)
    }

    #[test]
    fn peers_persist_across_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let (cache, aside) = PeerCache::open(dir.path()).expect("open");
            assert!(aside.is_none());
            assert!(cache.is_empty().expect("len"));
            cache
                .set_addresses(prefix(1), &addrs(1), at(10))
                .expect("set");
            cache
                .set_addresses(prefix(2), &addrs(2), at(20))
                .expect("set");
            cache.mark_failed(prefix(2), 3, at(500)).expect("fail");
            cache
                .set_network_config(u64::MAX, b"signed config")
                .expect("config");
        }
        let (cache, _) = PeerCache::open(dir.path()).expect("reopen");
        let mode: String = cache
            .conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .expect("mode");
        assert_eq!(mode, "wal");
        let peers = cache.peers().expect("peers");
        assert_eq!(
            peers,
            vec![
                CachedPeer {
                    prefix: prefix(2),
                    addresses: addrs(2),
                    last_seen: Some(at(20)),
                    failures: 3,
                    retry_at: Some(at(500)),
                },
                CachedPeer {
                    prefix: prefix(1),
                    addresses: addrs(1),
                    last_seen: Some(at(10)),
                    failures: 0,
                    retry_at: None,
                },
            ]
        );
        assert_eq!(
            cache.network_config().expect("config"),
            Some((u64::MAX, b"signed config".to_vec()))
        );
    }

    #[test]
    fn failures_and_retries() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (cache, _) = PeerCache::open(dir.path()).expect("open");
        cache
            .set_addresses(prefix(1), &addrs(1), at(0))
            .expect("set");
        cache
            .set_addresses(prefix(2), &addrs(2), at(0))
            .expect("set");
        // A failure of a peer we had no address for creates a row.
        cache.mark_failed(prefix(3), 1, at(100)).expect("fail");
        cache.mark_failed(prefix(1), 2, at(100)).expect("fail");
        // (time, retryable prefixes)
        let table: [(u64, &[u128]); 3] = [(50, &[2]), (100, &[1, 2]), (200, &[1, 2])];
        for (t, expected) in table {
            let mut got: Vec<u128> = cache
                .retryable(at(t))
                .expect("retryable")
                .iter()
                .map(|p| p.prefix.value())
                .collect();
            got.sort_unstable();
            assert_eq!(got, expected, "at {t}");
        }
        cache.mark_succeeded(prefix(1), at(300)).expect("ok");
        let p1 = cache.peer(prefix(1)).expect("peer").expect("present");
        assert_eq!(
            (p1.failures, p1.retry_at, p1.last_seen),
            (0, None, Some(at(300)))
        );
        // New addresses keep the failure count.
        cache
            .set_addresses(prefix(3), &addrs(3), at(310))
            .expect("set");
        let p3 = cache.peer(prefix(3)).expect("peer").expect("present");
        assert_eq!((p3.failures, p3.addresses.len()), (1, 2));
        cache.remove(prefix(3)).expect("remove");
        assert_eq!(cache.peer(prefix(3)).expect("peer"), None);
        assert_eq!(cache.len().expect("len"), 2);
    }

    #[test]
    fn prune_keeps_the_most_recent() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (cache, _) = PeerCache::open(dir.path()).expect("open");
        for i in 1..=10u8 {
            cache
                .set_addresses(prefix(u128::from(i)), &addrs(i), at(u64::from(i)))
                .expect("set");
        }
        assert_eq!(cache.prune(3).expect("prune"), 7);
        let left: Vec<u128> = cache
            .peers()
            .expect("peers")
            .iter()
            .map(|p| p.prefix.value())
            .collect();
        assert_eq!(left, vec![10, 9, 8]);
    }

    #[test]
    fn network_config_is_replaced() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (cache, _) = PeerCache::open(dir.path()).expect("open");
        assert_eq!(cache.network_config().expect("get"), None);
        cache.set_network_config(1, b"one").expect("set");
        cache.set_network_config(2, b"two").expect("set");
        assert_eq!(
            cache.network_config().expect("get"),
            Some((2, b"two".to_vec()))
        );
    }

    #[test]
    fn corrupt_file_is_moved_aside() {
        // (file contents, moved aside?)
        let garbage: Vec<u8> = (0..8192u32).map(|i| (i * 7 + 13) as u8).collect();
        let mut bad_header = b"SQLite format 3\0".to_vec();
        bad_header.extend(std::iter::repeat_n(0xa5, 4096));
        let table: [(&[u8], bool); 4] = [
            (b"", false),
            (&garbage, true),
            (
                b"not a database at all, just some text that is long enough",
                true,
            ),
            (&bad_header, true),
        ];
        for (contents, moved) in table {
            let dir = tempfile::tempdir().expect("tempdir");
            let path = dir.path().join(FILE_NAME);
            std::fs::write(&path, contents).expect("write");
            let (cache, aside) = PeerCache::open(dir.path()).expect("open despite corruption");
            assert_eq!(aside.is_some(), moved, "{} bytes", contents.len());
            if let Some(aside) = aside {
                assert_eq!(std::fs::read(&aside).expect("aside"), contents);
                assert!(aside
                    .file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("peers.db.corrupt-")));
            }
            // The fresh cache works.
            cache
                .set_addresses(prefix(1), &addrs(1), at(0))
                .expect("set");
            assert_eq!(cache.len().expect("len"), 1);
        }
    }

    #[test]
    fn newer_schema_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(FILE_NAME);
        Connection::open(&path)
            .and_then(|c| c.execute_batch("PRAGMA user_version = 99"))
            .expect("prepare");
        let err = PeerCache::open(dir.path()).err().expect("refused");
        assert!(matches!(err, CacheError::NewerSchema { found: 99, .. }));
        assert!(err.to_string().contains("peers.db"));
    }

    #[test]
    fn unreadable_addresses_are_skipped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (cache, _) = PeerCache::open(dir.path()).expect("open");
        cache
            .conn
            .execute(
                "INSERT INTO peer (prefix, addresses) VALUES ('1/16', '192.0.2.1,1,udp;bogus;192.0.2.2,2,tcp'),
                 ('not a prefix', '')",
                [],
            )
            .expect("insert");
        let peers = cache.peers().expect("peers");
        assert_eq!(peers.len(), 1);
        assert_eq!(peers[0].addresses.len(), 2);
    }
}
