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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::key::generate_key;

    #[test]
    fn libsodium_conversion_vector() {
        // libsodium's test/default/ed25519_convert: the seed below converts
        // to these X25519 keys with crypto_sign_ed25519_{sk,pk}_to_curve25519.
        let seed = hex::decode("421151a459faeade3d247115f94aedae42318124095afabe4d1451a559faedee")
            .unwrap();
        let key = SigningKey::from_bytes(&seed.try_into().unwrap());
        assert_eq!(
            hex::encode(x25519_secret(&key)),
            "8052030376d47112be7f73ed7a019293dd12ad910b654455798b4667d73de166"
        );
        assert_eq!(
            hex::encode(x25519_public(&key.verifying_key())),
            "f1814f0e8ff1043d8a44d25babff3cedcae6c22c3edaa48f857ae70de2baae50"
        );
    }

    #[test]
    fn secret_and_public_agree() {
        for _ in 0..8 {
            let (a, b) = (generate_key(), generate_key());
            let (a_secret, b_secret) = (x25519_secret(&a), x25519_secret(&b));
            let (a_public, b_public) = (
                x25519_public(&a.verifying_key()),
                x25519_public(&b.verifying_key()),
            );
            assert_eq!(x25519_base(a_secret), a_public);
            assert_eq!(x25519(a_secret, b_public), x25519(b_secret, a_public));
        }
    }

    #[test]
    fn small_order_point_gives_none() {
        let secret = x25519_secret(&generate_key());
        assert_eq!(x25519(secret, [0; 32]), None);
        let mut one = [0; 32];
        one[0] = 1;
        assert_eq!(x25519(secret, one), None);
    }
}
