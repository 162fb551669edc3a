//! Node-authenticated requests: proof of possession of the node key.
//!
//! The node signs, with its certificate's Ed25519 key, a message binding the
//! HTTP method, the path (with query), the SHA-256 of the body, a Unix
//! timestamp, a random nonce and its certificate serial:
//!
//! ```text
//! re6st-request-v1\n<METHOD>\n<path>\n<hex sha256(body)>\n<timestamp>\n<nonce>\n<serial>
//! ```
//!
//! and sends the fields in headers ([`HEADER_SERIAL`], [`HEADER_TIMESTAMP`],
//! [`HEADER_NONCE`], [`HEADER_SIGNATURE`]). The verifier rejects timestamps
//! further than [`MAX_SKEW`] from its clock and nonces it has already seen
//! within that window ([`ReplayGuard`]), so a captured request can be
//! neither replayed nor kept for later. Signer and verifier live here
//! together so the node reuses exactly this code. No I/O, no clock: time is
//! an argument and nonces are supplied by the caller's RNG.

use std::collections::{BTreeSet, HashMap};

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier as _, VerifyingKey};
use sha2::{Digest, Sha256};

/// Header carrying the certificate serial of the signing node.
pub const HEADER_SERIAL: &str = "x-re6st-serial";
/// Header carrying the Unix timestamp (seconds) of the request.
pub const HEADER_TIMESTAMP: &str = "x-re6st-timestamp";
/// Header carrying the nonce (32 lowercase hex digits).
pub const HEADER_NONCE: &str = "x-re6st-nonce";
/// Header carrying the Ed25519 signature (128 lowercase hex digits).
pub const HEADER_SIGNATURE: &str = "x-re6st-signature";
/// Largest accepted distance between the request timestamp and our clock.
pub const MAX_SKEW: u64 = 300;

/// The authentication fields of one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthHeaders {
    /// Certificate serial of the signer.
    pub serial: u64,
    /// Unix time of signing, in seconds.
    pub timestamp: u64,
    /// Random 16 bytes, unique per request.
    pub nonce: [u8; 16],
    /// Signature over [`signed_message`].
    pub signature: [u8; 64],
}

impl AuthHeaders {
    /// The headers as (name, value) pairs.
    pub fn to_pairs(&self) -> [(&'static str, String); 4] {
        [
            (HEADER_SERIAL, self.serial.to_string()),
            (HEADER_TIMESTAMP, self.timestamp.to_string()),
            (HEADER_NONCE, hex::encode(self.nonce)),
            (HEADER_SIGNATURE, hex::encode(self.signature)),
        ]
    }

    /// Parses the headers from a lookup function; `Ok(None)` when the
    /// request carries none of them.
    pub fn from_lookup<'a>(
        get: impl Fn(&str) -> Option<&'a str>,
    ) -> Result<Option<Self>, AuthError> {
        let fields = [
            HEADER_SERIAL,
            HEADER_TIMESTAMP,
            HEADER_NONCE,
            HEADER_SIGNATURE,
        ]
        .map(&get);
        if fields.iter().all(Option::is_none) {
            return Ok(None);
        }
        let [Some(serial), Some(ts), Some(nonce), Some(sig)] = fields else {
            return Err(AuthError::Malformed("missing authentication header"));
        };
        let serial = serial
            .parse()
            .map_err(|_| AuthError::Malformed("bad serial"))?;
        let timestamp = ts
            .parse()
            .map_err(|_| AuthError::Malformed("bad timestamp"))?;
        let mut n = [0u8; 16];
        hex::decode_to_slice(nonce, &mut n).map_err(|_| AuthError::Malformed("bad nonce"))?;
        let mut s = [0u8; 64];
        hex::decode_to_slice(sig, &mut s)
            .map_err(|_| AuthError::Malformed("bad signature encoding"))?;
        Ok(Some(Self {
            serial,
            timestamp,
            nonce: n,
            signature: s,
        }))
    }
}

/// Why a request failed authentication.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// Headers missing or unparsable.
    #[error("malformed authentication: {0}")]
    Malformed(&'static str),
    /// The timestamp is too far from the verifier's clock.
    #[error("stale or future timestamp")]
    Stale,
    /// The nonce was already used within the replay window.
    #[error("replayed request")]
    Replay,
    /// The signature does not verify with the certificate's key.
    #[error("bad signature")]
    BadSignature,
}

/// The exact bytes a node signs for a request.
pub fn signed_message(
    method: &str,
    path: &str,
    body: &[u8],
    serial: u64,
    timestamp: u64,
    nonce: &[u8; 16],
) -> Vec<u8> {
    format!(
        "re6st-request-v1\n{}\n{}\n{}\n{}\n{}\n{}",
        method.to_ascii_uppercase(),
        path,
        hex::encode(Sha256::digest(body)),
        timestamp,
        hex::encode(nonce),
        serial
    )
    .into_bytes()
}

/// Signs a request as the node holding `key` with certificate `serial`.
pub fn sign(
    key: &SigningKey,
    serial: u64,
    method: &str,
    path: &str,
    body: &[u8],
    now: u64,
    nonce: [u8; 16],
) -> AuthHeaders {
    let msg = signed_message(method, path, body, serial, now, &nonce);
    AuthHeaders {
        serial,
        timestamp: now,
        nonce,
        signature: key.sign(&msg).to_bytes(),
    }
}

/// Remembers the nonces seen within the replay window.
#[derive(Debug, Default)]
pub struct ReplayGuard {
    seen: HashMap<(u64, [u8; 16]), u64>,
    by_expiry: BTreeSet<(u64, u64, [u8; 16])>,
}

impl ReplayGuard {
    /// An empty guard.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of nonces remembered.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// Whether no nonce is remembered.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }

    /// Verifies `auth` for a request against the signer's key at Unix time
    /// `now`, and records its nonce. Checks, in order: timestamp within
    /// [`MAX_SKEW`], signature, nonce unused.
    pub fn verify(
        &mut self,
        auth: &AuthHeaders,
        key: &VerifyingKey,
        method: &str,
        path: &str,
        body: &[u8],
        now: u64,
    ) -> Result<(), AuthError> {
        self.expire(now);
        if auth.timestamp.abs_diff(now) > MAX_SKEW {
            return Err(AuthError::Stale);
        }
        let msg = signed_message(method, path, body, auth.serial, auth.timestamp, &auth.nonce);
        key.verify(&msg, &Signature::from_bytes(&auth.signature))
            .map_err(|_| AuthError::BadSignature)?;
        let id = (auth.serial, auth.nonce);
        if self.seen.contains_key(&id) {
            return Err(AuthError::Replay);
        }
        // Remember it until its timestamp leaves the window.
        let expiry = auth.timestamp + MAX_SKEW;
        self.seen.insert(id, expiry);
        self.by_expiry.insert((expiry, auth.serial, auth.nonce));
        Ok(())
    }

    fn expire(&mut self, now: u64) {
        while let Some(&first) = self.by_expiry.first() {
            if first.0 >= now {
                break;
            }
            self.by_expiry.pop_first();
            self.seen.remove(&(first.1, first.2));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    #[test]
    fn sign_verify_round_trip_through_headers() {
        let k = key(1);
        let auth = sign(&k, 7, "post", "/renew", b"{}", 1000, [3; 16]);
        let pairs = auth.to_pairs();
        let parsed = AuthHeaders::from_lookup(|n| {
            pairs.iter().find(|(k, _)| *k == n).map(|(_, v)| v.as_str())
        })
        .unwrap()
        .unwrap();
        assert_eq!(parsed, auth);
        let mut g = ReplayGuard::new();
        assert_eq!(
            g.verify(&parsed, &k.verifying_key(), "POST", "/renew", b"{}", 1010),
            Ok(())
        );
    }

    #[test]
    fn rejections() {
        let k = key(1);
        let vk = k.verifying_key();
        let mut g = ReplayGuard::new();
        let auth = sign(&k, 7, "POST", "/renew", b"{}", 1000, [3; 16]);
        // Replay.
        g.verify(&auth, &vk, "POST", "/renew", b"{}", 1000).unwrap();
        assert_eq!(
            g.verify(&auth, &vk, "POST", "/renew", b"{}", 1001),
            Err(AuthError::Replay)
        );
        // Stale and future.
        let old = sign(&k, 7, "POST", "/renew", b"{}", 1000, [4; 16]);
        assert_eq!(
            g.verify(&old, &vk, "POST", "/renew", b"{}", 1000 + MAX_SKEW + 1),
            Err(AuthError::Stale)
        );
        assert_eq!(
            g.verify(&old, &vk, "POST", "/renew", b"{}", 1000 - MAX_SKEW - 1),
            Err(AuthError::Stale)
        );
        // Wrong key, body, path, method, serial.
        let a = sign(&k, 7, "POST", "/renew", b"{}", 1000, [5; 16]);
        assert_eq!(
            g.verify(&a, &key(2).verifying_key(), "POST", "/renew", b"{}", 1000),
            Err(AuthError::BadSignature)
        );
        assert_eq!(
            g.verify(&a, &vk, "POST", "/renew", b"{ }", 1000),
            Err(AuthError::BadSignature)
        );
        assert_eq!(
            g.verify(&a, &vk, "POST", "/config", b"{}", 1000),
            Err(AuthError::BadSignature)
        );
        assert_eq!(
            g.verify(&a, &vk, "GET", "/renew", b"{}", 1000),
            Err(AuthError::BadSignature)
        );
        let mut b = a.clone();
        b.serial = 8;
        assert_eq!(
            g.verify(&b, &vk, "POST", "/renew", b"{}", 1000),
            Err(AuthError::BadSignature)
        );
        // A failed attempt does not burn the nonce.
        assert_eq!(g.verify(&a, &vk, "POST", "/renew", b"{}", 1000), Ok(()));
    }

    #[test]
    fn window_expires_nonces() {
        let k = key(1);
        let vk = k.verifying_key();
        let mut g = ReplayGuard::new();
        for i in 0..10u8 {
            let a = sign(&k, 1, "GET", "/config", b"", 1000, [i; 16]);
            g.verify(&a, &vk, "GET", "/config", b"", 1000).unwrap();
        }
        assert_eq!(g.len(), 10);
        let a = sign(&k, 1, "GET", "/config", b"", 1000 + 2 * MAX_SKEW, [99; 16]);
        g.verify(&a, &vk, "GET", "/config", b"", 1000 + 2 * MAX_SKEW)
            .unwrap();
        assert_eq!(g.len(), 1);
    }

    #[test]
    fn header_errors() {
        let none = AuthHeaders::from_lookup(|_| None).unwrap();
        assert_eq!(none, None);
        let partial = AuthHeaders::from_lookup(|n| (n == HEADER_SERIAL).then_some("1"));
        assert!(matches!(partial, Err(AuthError::Malformed(_))));
        let bad = AuthHeaders::from_lookup(|n| Some(if n == HEADER_NONCE { "zz" } else { "1" }));
        assert!(matches!(bad, Err(AuthError::Malformed(_))));
    }
}
