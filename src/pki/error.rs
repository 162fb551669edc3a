//! The error type of the certificate layer.

use std::io;
use std::path::PathBuf;

use super::verify::VerifyError;

/// Everything that can go wrong while creating, loading, parsing or using
/// keys, certificates, certificate requests and sealed messages.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file concerned.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// A file we must create already exists; we never overwrite keys or
    /// certificates.
    #[error("{0}: refusing to overwrite an existing file")]
    AlreadyExists(PathBuf),
    /// A network prefix (`ADDR/LEN` or a CA serial number) is invalid.
    #[error("invalid network: {0}")]
    Network(String),
    /// A node prefix (`INT/LEN`, the certificate CN) is invalid or does not
    /// fit in the network.
    #[error("invalid node prefix: {0}")]
    Prefix(String),
    /// A private key could not be decoded.
    #[error("invalid private key: {0}")]
    Key(String),
    /// PEM armour is missing or malformed.
    #[error("malformed PEM: {0}")]
    Pem(String),
    /// A DER structure could not be decoded or encoded.
    #[error("malformed DER: {0}")]
    Der(#[from] der::Error),
    /// A certificate is well-formed DER but not acceptable here.
    #[error("invalid certificate: {0}")]
    Certificate(String),
    /// A certificate request is well-formed DER but not acceptable here.
    #[error("invalid certificate request: {0}")]
    Csr(String),
    /// A key or signature uses an algorithm other than Ed25519.
    #[error("unsupported algorithm {0}: only Ed25519 is accepted")]
    UnsupportedAlgorithm(String),
    /// A signature does not verify.
    #[error("bad signature on the {0}")]
    BadSignature(&'static str),
    /// A subject field given for a certificate request is not acceptable.
    #[error("invalid subject field: {0}")]
    Subject(String),
    /// A validity period or timestamp cannot be represented.
    #[error("invalid validity period: {0}")]
    Validity(String),
    /// A sealed message could not be opened: truncated, tampered with, or
    /// sealed to another key.
    #[error("cannot open sealed message: {0}")]
    Sealed(&'static str),
    /// A certificate failed verification.
    #[error("certificate rejected: {0}")]
    Verify(#[from] VerifyError),
}

impl PkiError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}
