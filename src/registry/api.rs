//! The JSON bodies of the registry HTTP API, shared by the server and the
//! typed client. `docs/registry-api.md` documents each endpoint.
//!
//! Request types reject unknown fields, so a typo is an error rather than a
//! silently ignored option. [`parse_request`] is the one parser the server
//! applies to every request body.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::store::{CertInfo, RotationStage, TokenInfo};

/// Largest request body the registry reads.
pub const MAX_BODY: usize = 64 * 1024;

/// `GET /ca`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaResponse {
    /// The CA certificate, PEM.
    pub ca: String,
    /// `sha256:<hex>` of the certificate DER.
    pub fingerprint: String,
    /// The network prefix it encodes.
    pub network: String,
}

/// `POST /token`: mail a registration token to `email`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    /// Where to send the token.
    pub email: String,
}

/// Answer to `POST /token`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenSent {
    /// Where the token went.
    pub email: String,
    /// When it expires, Unix seconds.
    pub expires: u64,
}

/// `POST /cert`: a certificate for a CSR.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertRequest {
    /// PKCS#10 CSR, PEM, with an Ed25519 key.
    pub csr: String,
    /// Registration token; absent for anonymous registration.
    #[serde(default)]
    pub token: Option<String>,
    /// Where the node is: `CC,@CONTINENT` (selects the community).
    #[serde(default)]
    pub location: Option<String>,
}

/// A certificate the registry issued (`POST /cert`, `POST /renew`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertResponse {
    /// The certificate, PEM.
    pub cert: String,
    /// Its serial.
    pub serial: u64,
    /// The node prefix, CN form (`"5/16"`).
    pub prefix: String,
}

/// `POST /renew` (node-authenticated).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenewRequest {
    /// A CSR with the certificate's key, PEM.
    pub csr: String,
}

/// Answer to `POST /bootstrap`: a live peer, from the node running on the
/// registry host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootstrapResponse {
    /// The peer's prefix (CN form).
    pub prefix: String,
    /// Its addresses: base64 of [`crate::pki::seal`] to the requester's
    /// key of a JSON array of `"IP,PORT,PROTO"` strings. Open it with
    /// [`super::client::open_bootstrap`].
    pub sealed: String,
}

/// `POST /admin/revoke`: exactly one of `serial` and `cn`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevokeRequest {
    /// Certificate serial.
    #[serde(default)]
    pub serial: Option<u64>,
    /// Certificate CN (the prefix, `"5/16"`).
    #[serde(default)]
    pub cn: Option<String>,
}

/// `POST /admin/tokens`: create a token without mailing it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddTokenRequest {
    /// The email the token is for.
    pub email: String,
    /// Prefix length it entitles to (default: `--prefix-length`).
    #[serde(default)]
    pub prefix_len: Option<u8>,
}

/// Answer to `POST /admin/rotate-keys`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RotateResponse {
    /// The rotation stage reached.
    pub stage: RotationStage,
    /// The configuration version after the change.
    pub version: u64,
}

/// `GET /admin/tokens`.
pub type TokenList = Vec<TokenInfo>;
/// `GET /admin/certs`.
pub type CertList = Vec<CertInfo>;

/// Every error answer: a short machine-readable code and one human line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// Code (`bad_request`, `bad_token`, `registration_disabled`, ...).
    pub error: String,
    /// What is wrong, for humans.
    pub detail: String,
}

/// Why a request body was rejected.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// Larger than [`MAX_BODY`].
    #[error("body larger than {MAX_BODY} bytes")]
    TooLarge,
    /// Not the expected JSON.
    #[error("{0}")]
    Json(#[from] serde_json::Error),
}

/// Parses a request body as `T`, with the size limit.
pub fn parse_request<T: DeserializeOwned>(body: &[u8]) -> Result<T, BodyError> {
    if body.len() > MAX_BODY {
        return Err(BodyError::TooLarge);
    }
    Ok(serde_json::from_slice(body)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_parsing() {
        let r: CertRequest = parse_request(br#"{"csr":"x","token":"t"}"#).unwrap();
        assert_eq!(r.token.as_deref(), Some("t"));
        assert_eq!(r.location, None);
        assert!(parse_request::<CertRequest>(br#"{"csr":"x","tokn":"t"}"#).is_err());
        assert!(parse_request::<CertRequest>(b"garbage").is_err());
        assert!(parse_request::<TokenRequest>(b"{}").is_err());
        let big = vec![b' '; MAX_BODY + 1];
        assert!(matches!(
            parse_request::<TokenRequest>(&big),
            Err(BodyError::TooLarge)
        ));
        let r: RevokeRequest = parse_request(br#"{"serial":4}"#).unwrap();
        assert_eq!(r.serial, Some(4));
        assert!(parse_request::<RevokeRequest>(br#"{"serial":-4}"#).is_err());
    }
}
