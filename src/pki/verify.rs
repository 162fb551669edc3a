//! Verification of node certificates against the network CA.

use std::collections::HashSet;
use std::time::SystemTime;

use ed25519_dalek::VerifyingKey;
use x509_cert::name::Name;

use super::ca::parse_ca_cert;
use super::cert::NodeCert;
use super::error::PkiError;
use super::prefix::{Network, NodePrefix};
use super::x509;

/// Checks node certificates: chain to the CA, validity, revocation, CN.
#[derive(Clone, Debug)]
pub struct Verifier {
    ca_key: VerifyingKey,
    ca_subject: Name,
    network: Network,
    revoked: HashSet<u64>,
}

/// Why a node certificate is rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// The certificate is not valid DER X.509.
    #[error("malformed certificate")]
    Malformed,
    /// The certificate is not signed by our CA (wrong issuer, signature
    /// algorithm or signature).
    #[error("not signed by the network CA")]
    WrongCa,
    /// The validity period has not started yet.
    #[error("certificate not yet valid")]
    NotYetValid,
    /// The validity period is over.
    #[error("certificate expired")]
    Expired,
    /// The serial number is in the revocation list.
    #[error("certificate revoked")]
    Revoked,
    /// Signed by the CA but not a node certificate: a CA certificate, no
    /// single `"<int>/<len>"` CN, or a key that is not a valid Ed25519 key.
    #[error("not a node certificate")]
    NotANodeCert,
    /// The CN prefix does not fit after the network prefix.
    #[error("prefix outside the network")]
    PrefixOutsideNetwork,
    /// The CN is not the prefix we expected.
    #[error("unexpected prefix")]
    WrongPrefix,
}

impl Verifier {
    /// A verifier for the CA certificate in `ca_cert_pem`: a self-signed
    /// Ed25519 CA whose serial encodes the network. No serial is revoked.
    pub fn new(ca_cert_pem: &str) -> Result<Self, PkiError> {
        let der = x509::pem_block(ca_cert_pem, &["CERTIFICATE"])?;
        let (cert, network) = parse_ca_cert(&der)?;
        let ca_key = x509::key_of_spki(&cert.tbs_certificate.subject_public_key_info)?;
        Ok(Self {
            ca_key,
            ca_subject: cert.tbs_certificate.subject,
            network,
            revoked: HashSet::new(),
        })
    }

    /// The network encoded in the CA certificate.
    pub fn network(&self) -> Network {
        self.network
    }

    /// Replaces the set of revoked certificate serial numbers.
    pub fn set_revoked(&mut self, serials: impl IntoIterator<Item = u64>) {
        self.revoked = serials.into_iter().collect();
    }

    /// Whether `serial` is revoked.
    pub fn is_revoked(&self, serial: u64) -> bool {
        self.revoked.contains(&serial)
    }

    /// Checks that `cert` is signed by the CA, valid at `now`, not revoked,
    /// and a node certificate whose CN prefix fits in the network; returns
    /// that prefix.
    pub fn verify(&self, cert: &NodeCert, now: SystemTime) -> Result<NodePrefix, VerifyError> {
        let x = cert.x509();
        if !x509::is_ed25519(&x.signature_algorithm)
            || x.tbs_certificate.signature != x.signature_algorithm
            || x.tbs_certificate.issuer != self.ca_subject
            || !x509::signature_ok(&self.ca_key, cert.tbs_der(), &x.signature)
        {
            return Err(VerifyError::WrongCa);
        }
        if now < cert.not_before() {
            return Err(VerifyError::NotYetValid);
        }
        if now > cert.not_after() {
            return Err(VerifyError::Expired);
        }
        if self.is_revoked(cert.serial()) {
            return Err(VerifyError::Revoked);
        }
        if cert.is_ca() || cert.public_key().is_err() {
            return Err(VerifyError::NotANodeCert);
        }
        let prefix = cert.prefix().map_err(|_| VerifyError::NotANodeCert)?;
        if u32::from(self.network.len()) + u32::from(prefix.len()) > 128 {
            return Err(VerifyError::PrefixOutsideNetwork);
        }
        Ok(prefix)
    }

    /// Parses a DER certificate and verifies it as [`verify`](Self::verify).
    pub fn verify_der(
        &self,
        der: &[u8],
        now: SystemTime,
    ) -> Result<(NodeCert, NodePrefix), VerifyError> {
        let cert = NodeCert::from_der(der).map_err(|_| VerifyError::Malformed)?;
        let prefix = self.verify(&cert, now)?;
        Ok((cert, prefix))
    }

    /// As [`verify`](Self::verify), and the CN must be `expected`.
    pub fn verify_expected(
        &self,
        cert: &NodeCert,
        now: SystemTime,
        expected: &NodePrefix,
    ) -> Result<(), VerifyError> {
        if self.verify(cert, now)? != *expected {
            return Err(VerifyError::WrongPrefix);
        }
        Ok(())
    }
}
