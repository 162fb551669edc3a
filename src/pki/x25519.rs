//! Ed25519 identities as X25519 keys.
//!
//! The birational map from the Edwards curve to its Montgomery form lets a
//! node's certificate key serve directly as its Noise static key and as the
//! recipient key of [`seal`](super::seal): a handshake or a sealed message
//! is bound to the certificate without a second key to distribute.

use curve25519_dalek::montgomery::MontgomeryPoint;
use ed25519_dalek::{SigningKey, VerifyingKey};

/// The X25519 private key of an Ed25519 key: the clamped first half of
/// SHA-512 of the seed, i.e. the Ed25519 secret scalar.
pub fn x25519_secret(key: &SigningKey) -> [u8; 32] {
    let mut scalar = key.to_scalar_bytes();
    scalar[0] &= 248;
    scalar[31] &= 127;
    scalar[31] |= 64;
    scalar
}

/// The X25519 public key (Montgomery u-coordinate) of an Ed25519 key.
pub fn x25519_public(key: &VerifyingKey) -> [u8; 32] {
    key.to_montgomery().to_bytes()
}

/// X25519: `secret` (clamped) times the point `public`. `None` when the
/// result is the all-zero point (a small-order public key).
pub(crate) fn x25519(secret: [u8; 32], public: [u8; 32]) -> Option<[u8; 32]> {
    let shared = MontgomeryPoint(public).mul_clamped(secret).to_bytes();
    (shared != [0; 32]).then_some(shared)
}

/// The X25519 public key of an X25519 secret.
pub(crate) fn x25519_base(secret: [u8; 32]) -> [u8; 32] {
    MontgomeryPoint::mul_base_clamped(secret).to_bytes()
}
