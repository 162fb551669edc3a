//! Sealed messages: encryption to a node's certificate key.
//!
//! Format, version 1: `0x01 || E || C`, where `E` is a fresh ephemeral
//! X25519 public key and `C` the ChaCha20-Poly1305 ciphertext and tag. The
//! key is HKDF-SHA256 (salt `"re6st seal v1"`, info `E || R`) of the X25519
//! shared secret between the ephemeral key and the recipient's certificate
//! key `R` mapped to X25519. Each key encrypts one message, so the nonce is
//! zero; the version byte is authenticated data.

use ed25519_dalek::{SigningKey, VerifyingKey};
use rand::rngs::OsRng;
use rand::RngCore;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305};
use ring::hkdf::{Salt, HKDF_SHA256};

use super::error::PkiError;
use super::x25519::{x25519, x25519_base, x25519_public, x25519_secret};

/// The format version byte.
const VERSION: u8 = 1;
/// The HKDF salt, naming the construction.
const SALT: &[u8] = b"re6st seal v1";
/// Length of the ephemeral public key.
const KEY_LEN: usize = 32;
/// Length of the AEAD tag.
const TAG_LEN: usize = 16;
/// Bytes added to the plaintext.
const OVERHEAD: usize = 1 + KEY_LEN + TAG_LEN;

/// Encrypts `plaintext` so that only the holder of the private key of
/// `recipient` can [`open`] it. The result is `plaintext.len() + 49` bytes.
pub fn seal(recipient: &VerifyingKey, plaintext: &[u8]) -> Vec<u8> {
    let mut ephemeral = [0u8; 32];
    OsRng.fill_bytes(&mut ephemeral);
    // The shared secret is zero only for a small-order recipient key (the
    // clamped ephemeral scalar kills every small-order component). No key
    // from a verified request or certificate is one; such a key has no
    // private key that could open anything, so seal to nobody rather than
    // under a key everyone can compute.
    seal_with(recipient, plaintext, ephemeral).unwrap_or_else(|| seal_to_nobody(plaintext))
}

/// Decrypts a message [`seal`]ed to `key`'s public key. Fails, without
/// panicking, on truncated or tampered input and on messages sealed to
/// another key.
pub fn open(key: &SigningKey, sealed: &[u8]) -> Result<Vec<u8>, PkiError> {
    if sealed.len() < OVERHEAD {
        return Err(PkiError::Sealed("message too short"));
    }
    if sealed[0] != VERSION {
        return Err(PkiError::Sealed("unknown format version"));
    }
    let mut ephemeral = [0u8; KEY_LEN];
    ephemeral.copy_from_slice(&sealed[1..1 + KEY_LEN]);
    let shared =
        x25519(x25519_secret(key), ephemeral).ok_or(PkiError::Sealed("invalid ephemeral key"))?;
    let aead = message_key(&shared, &ephemeral, &x25519_public(&key.verifying_key()));
    let mut buf = sealed[1 + KEY_LEN..].to_vec();
    let len = aead
        .open_in_place(zero_nonce(), Aad::from([VERSION]), &mut buf)
        .map_err(|_| {
            PkiError::Sealed("authentication failed (tampered, or sealed to another key)")
        })?
        .len();
    buf.truncate(len);
    Ok(buf)
}

/// Seals with the given ephemeral secret; `None` when the shared secret is
/// zero (small-order recipient key).
pub(crate) fn seal_with(
    recipient: &VerifyingKey,
    plaintext: &[u8],
    ephemeral_secret: [u8; 32],
) -> Option<Vec<u8>> {
    let recipient = x25519_public(recipient);
    let ephemeral = x25519_base(ephemeral_secret);
    let shared = x25519(ephemeral_secret, recipient)?;
    Some(seal_with_shared(&shared, &ephemeral, &recipient, plaintext))
}

/// The sealed message for a given shared secret and pair of public keys.
fn seal_with_shared(
    shared: &[u8; 32],
    ephemeral: &[u8; 32],
    recipient: &[u8; 32],
    plaintext: &[u8],
) -> Vec<u8> {
    let aead = message_key(shared, ephemeral, recipient);
    let mut out = Vec::with_capacity(plaintext.len() + OVERHEAD);
    out.push(VERSION);
    out.extend_from_slice(ephemeral);
    out.extend_from_slice(plaintext);
    let tag = aead
        .seal_in_place_separate_tag(zero_nonce(), Aad::from([VERSION]), &mut out[1 + KEY_LEN..])
        // ChaCha20-Poly1305 only refuses inputs of more than 256 GiB.
        .expect("sealed message size");
    out.extend_from_slice(tag.as_ref());
    out
}

/// A message nobody can open: the plaintext encrypted under a random key
/// that is thrown away.
fn seal_to_nobody(plaintext: &[u8]) -> Vec<u8> {
    let mut secret = [0u8; 32];
    OsRng.fill_bytes(&mut secret);
    let mut other = [0u8; 32];
    OsRng.fill_bytes(&mut other);
    let unrelated = x25519_base(other);
    seal_with_shared(&secret, &x25519_base(secret), &unrelated, plaintext)
}

/// The one-message AEAD key: HKDF-SHA256 of the shared secret, bound to
/// both public keys.
fn message_key(shared: &[u8; 32], ephemeral: &[u8; 32], recipient: &[u8; 32]) -> LessSafeKey {
    let prk = Salt::new(HKDF_SHA256, SALT).extract(shared);
    let info = [&ephemeral[..], &recipient[..]];
    let okm = prk
        .expand(&info, &CHACHA20_POLY1305)
        // 32 bytes is far below HKDF-SHA256's 8160-byte output limit.
        .expect("HKDF output length");
    LessSafeKey::new(UnboundKey::from(okm))
}

/// The all-zero nonce: every key seals exactly one message.
fn zero_nonce() -> Nonce {
    Nonce::assume_unique_for_key([0; 12])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::key::generate_key;

    #[test]
    fn round_trip() {
        let key = generate_key();
        for len in [0, 1, 15, 16, 17, 1000, 70_000] {
            let plaintext: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
            let sealed = seal(&key.verifying_key(), &plaintext);
            assert_eq!(sealed.len(), len + OVERHEAD);
            assert_eq!(sealed[0], VERSION);
            assert_eq!(open(&key, &sealed).unwrap(), plaintext);
        }
    }

    #[test]
    fn each_seal_is_fresh() {
        let key = generate_key();
        let a = seal(&key.verifying_key(), b"secret");
        let b = seal(&key.verifying_key(), b"secret");
        assert_ne!(a, b);
    }

    #[test]
    fn fixed_ephemeral_is_deterministic() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let a = seal_with(&key.verifying_key(), b"babel mac key", [9; 32]).unwrap();
        let b = seal_with(&key.verifying_key(), b"babel mac key", [9; 32]).unwrap();
        assert_eq!(a, b);
        assert_eq!(&a[1..33], &x25519_base([9; 32]));
        assert_eq!(open(&key, &a).unwrap(), b"babel mac key");
    }

    #[test]
    fn any_tampering_is_detected() {
        let key = generate_key();
        let sealed = seal(&key.verifying_key(), b"bootstrap peer list");
        for at in 0..sealed.len() {
            for bit in [0x01, 0x80] {
                let mut bad = sealed.clone();
                bad[at] ^= bit;
                assert!(open(&key, &bad).is_err(), "byte {at} bit {bit:#x}");
            }
        }
        for cut in 0..sealed.len() {
            assert!(open(&key, &sealed[..cut]).is_err(), "cut at {cut}");
        }
        let mut longer = sealed.clone();
        longer.push(0);
        assert!(open(&key, &longer).is_err());
    }

    #[test]
    fn wrong_key_cannot_open() {
        let key = generate_key();
        let sealed = seal(&key.verifying_key(), b"for one node only");
        let err = open(&generate_key(), &sealed).unwrap_err();
        assert!(matches!(err, PkiError::Sealed(_)));
        assert!(err.to_string().contains("another key"), "{err}");
    }

    #[test]
    fn small_order_ephemeral_is_rejected() {
        let key = generate_key();
        let mut sealed = seal(&key.verifying_key(), b"x");
        sealed[1..33].copy_from_slice(&[0; 32]);
        assert!(matches!(
            open(&key, &sealed),
            Err(PkiError::Sealed("invalid ephemeral key"))
        ));
    }

    #[test]
    fn small_order_recipient_gets_an_unreadable_message() {
        // The Edwards identity: a valid encoding with no usable private key.
        let mut identity = [0; 32];
        identity[0] = 1;
        let weak = VerifyingKey::from_bytes(&identity).unwrap();
        assert!(weak.is_weak());
        let sealed = seal(&weak, b"nobody");
        assert_eq!(sealed.len(), 6 + OVERHEAD);
        assert!(open(&generate_key(), &sealed).is_err());
    }
}
