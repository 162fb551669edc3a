//! Node certificates: the subject CN is the node prefix.

use std::ops::Range;
use std::time::SystemTime;

use const_oid::AssociatedOid;
use der::Decode;
use ed25519_dalek::VerifyingKey;
use x509_cert::ext::pkix::BasicConstraints;
use x509_cert::Certificate;

use super::error::PkiError;
use super::prefix::NodePrefix;
use super::x509;

/// A parsed certificate. Parsing checks the structure only; whether it is a
/// valid node certificate of our network is for [`Verifier`](super::Verifier).
#[derive(Clone, Debug)]
pub struct NodeCert {
    der: Vec<u8>,
    tbs: Range<usize>,
    cert: Certificate,
    serial: u64,
    not_before: SystemTime,
    not_after: SystemTime,
}

impl NodeCert {
    /// Parses a PEM certificate. Text around the `CERTIFICATE` block is
    /// ignored.
    pub fn from_pem(pem: &str) -> Result<Self, PkiError> {
        Self::from_der(&x509::pem_block(pem, &["CERTIFICATE"])?)
    }

    /// Parses a DER certificate. Fails on malformed DER and on serial
    /// numbers that do not fit in 64 bits.
    pub fn from_der(der: &[u8]) -> Result<Self, PkiError> {
        let cert = Certificate::from_der(der)?;
        let tbs = x509::signed_part(der)?;
        let serial = serial_u64(cert.tbs_certificate.serial_number.as_bytes())?;
        let validity = &cert.tbs_certificate.validity;
        Ok(Self {
            der: der.to_vec(),
            tbs,
            serial,
            not_before: validity.not_before.to_system_time(),
            not_after: validity.not_after.to_system_time(),
            cert,
        })
    }

    /// The certificate in PEM.
    pub fn to_pem(&self) -> String {
        x509::to_pem("CERTIFICATE", &self.der)
    }

    /// The certificate in DER.
    pub fn der(&self) -> &[u8] {
        &self.der
    }

    /// The certificate serial number (unique per issued certificate, used
    /// for revocation).
    pub fn serial(&self) -> u64 {
        self.serial
    }

    /// The node prefix in the subject CN. Fails when there is not exactly
    /// one CN or when it is not a canonical `"<int>/<len>"`.
    pub fn prefix(&self) -> Result<NodePrefix, PkiError> {
        let subject = &self.cert.tbs_certificate.subject;
        let cn = x509::single_value(subject, x509::CN)
            .ok_or_else(|| PkiError::Certificate("subject has no single text CN".into()))?;
        cn.parse()
    }

    /// The small integer in the subject `serialNumber` attribute, if there
    /// is exactly one and it is a decimal `u32`.
    pub fn subject_serial(&self) -> Option<u32> {
        let s = x509::single_value(&self.cert.tbs_certificate.subject, x509::SERIAL_NUMBER)?;
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        s.parse().ok()
    }

    /// The start of the validity period.
    pub fn not_before(&self) -> SystemTime {
        self.not_before
    }

    /// The end of the validity period.
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// The certified Ed25519 key. Fails for other algorithms and for
    /// invalid or small-order keys.
    pub fn public_key(&self) -> Result<VerifyingKey, PkiError> {
        x509::key_of_spki(&self.cert.tbs_certificate.subject_public_key_info)
    }

    /// The parsed certificate.
    pub(crate) fn x509(&self) -> &Certificate {
        &self.cert
    }

    /// The signed bytes (the DER `TBSCertificate`).
    pub(crate) fn tbs_der(&self) -> &[u8] {
        &self.der[self.tbs.clone()]
    }

    /// Whether the certificate says it is a CA (basicConstraints cA true).
    /// A malformed basicConstraints counts as a CA, so it is never taken
    /// for a node certificate.
    pub(crate) fn is_ca(&self) -> bool {
        x509::find_extension::<BasicConstraints>(
            &self.cert.tbs_certificate.extensions,
            BasicConstraints::OID,
        )
        .map_or(true, |bc| bc.is_some_and(|bc| bc.ca))
    }
}

/// A DER INTEGER's content (big-endian, positive) as a `u64`.
pub(crate) fn serial_u64(be: &[u8]) -> Result<u64, PkiError> {
    let first = be.iter().position(|&b| b != 0).unwrap_or(be.len());
    let be = &be[first..];
    if be.len() > 8 {
        return Err(PkiError::Certificate(
            "serial number does not fit in 64 bits".into(),
        ));
    }
    let mut buf = [0u8; 8];
    buf[8 - be.len()..].copy_from_slice(be);
    Ok(u64::from_be_bytes(buf))
}
