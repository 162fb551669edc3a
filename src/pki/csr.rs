//! PKCS#10 certificate requests with Ed25519 keys.

use der::asn1::SetOfVec;
use der::{Decode, Encode};
use ed25519_dalek::{SigningKey, VerifyingKey};
use x509_cert::name::Name;
use x509_cert::request::{CertReq, CertReqInfo, Version};

use super::error::PkiError;
use super::x509;

/// A parsed certificate request whose self-signature has been verified.
#[derive(Clone, Debug)]
pub struct Csr {
    der: Vec<u8>,
    req: CertReq,
    key: VerifyingKey,
}

impl Csr {
    /// A request for `key`, with the given extra subject fields (OpenSSL
    /// short names such as `O`, `OU`, `C`, `emailAddress`, or dotted OIDs).
    /// `CN` and `serialNumber` are refused: the registry assigns them.
    pub fn generate(
        key: &SigningKey,
        extra_subject: &[(String, String)],
    ) -> Result<Self, PkiError> {
        let info = CertReqInfo {
            version: Version::V1,
            subject: x509::subject_from_fields(extra_subject)?,
            public_key: x509::spki_of(&key.verifying_key()),
            attributes: SetOfVec::new(),
        };
        let signature = x509::sign(key, &info.to_der()?);
        let req = CertReq {
            info,
            algorithm: x509::ed25519_algorithm(),
            signature,
        };
        Self::from_der(&req.to_der()?)
    }

    /// Parses a PEM request (`CERTIFICATE REQUEST`, or the older `NEW
    /// CERTIFICATE REQUEST`) and verifies it as [`from_der`](Self::from_der).
    pub fn from_pem(pem: &str) -> Result<Self, PkiError> {
        let der = x509::pem_block(pem, &["CERTIFICATE REQUEST", "NEW CERTIFICATE REQUEST"])?;
        Self::from_der(&der)
    }

    /// Parses a DER request. Rejects keys and signatures other than Ed25519
    /// and requests whose signature does not verify with their own key.
    pub fn from_der(der: &[u8]) -> Result<Self, PkiError> {
        let req = CertReq::from_der(der)?;
        let tbs = &der[x509::signed_part(der)?];
        let key = x509::key_of_spki(&req.info.public_key).map_err(|e| match e {
            PkiError::Certificate(m) => PkiError::Csr(m),
            e => e,
        })?;
        if !x509::is_ed25519(&req.algorithm) {
            return Err(PkiError::UnsupportedAlgorithm(x509::algorithm_name(
                &req.algorithm.oid,
            )));
        }
        if !x509::signature_ok(&key, tbs, &req.signature) {
            return Err(PkiError::BadSignature("certificate request"));
        }
        Ok(Self {
            der: der.to_vec(),
            req,
            key,
        })
    }

    /// The request in PEM.
    pub fn to_pem(&self) -> String {
        x509::to_pem("CERTIFICATE REQUEST", &self.der)
    }

    /// The request in DER.
    pub fn der(&self) -> &[u8] {
        &self.der
    }

    /// The key the certificate will be issued for.
    pub fn public_key(&self) -> VerifyingKey {
        self.key
    }

    /// The requested subject.
    pub(crate) fn subject(&self) -> &Name {
        &self.req.info.subject
    }
}
