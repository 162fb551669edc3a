//! Certificates: the network CA, node certificates, CSRs, verification.
//!
//! Keys are Ed25519 everywhere. The CA certificate's serial number encodes
//! the overlay [`Network`]; a node certificate's subject CN is its
//! [`NodePrefix`]. The same keys serve as X25519 keys ([`x25519_secret`],
//! [`x25519_public`]) for tunnel handshakes and for [`seal`]ing secrets to
//! a node.

mod ca;
mod cert;
mod csr;
mod error;
mod key;
mod prefix;
mod seal;
mod verify;
mod x25519;
mod x509;

pub use ca::{Ca, IssueRequest};
pub use cert::NodeCert;
pub use csr::Csr;
pub use error::PkiError;
pub use key::{generate_key, load_key, public_key_to_pem, save_key};
pub use prefix::{Network, NodePrefix};
pub use seal::{open, seal};
pub use verify::{Verifier, VerifyError};
pub use x25519::{x25519_public, x25519_secret};

use sha2::{Digest, Sha256};

/// The fingerprint of a DER certificate: `"sha256:<lowercase hex>"`, as
/// `re6st conf --fingerprint` takes it.
pub fn fingerprint(der: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(der)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_is_sha256_hex() {
        assert_eq!(
            fingerprint(b"abc"),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
