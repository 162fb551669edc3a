//! A typed async client of the registry API, used by `re6st conf`, the
//! admin CLI and the node.
//!
//! Plain HTTP/1.1 over hyper (the registry's answers that matter are signed
//! or sealed, so TLS is not needed for their integrity). Works with
//! `http://127.0.0.1:PORT`, `http://[::1]:PORT` and host names; a base path
//! (`http://host/re6st`) is kept in front of every endpoint. Each request
//! has a timeout and answers are read with a size limit.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use ed25519_dalek::SigningKey;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::header::{CONTENT_TYPE, HOST};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rand::RngCore;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::api::{
    AddTokenRequest, CaResponse, CertList, CertRequest, CertResponse, ErrorBody, RenewRequest,
    RevokeRequest, RotateResponse, TokenList, TokenRequest, TokenSent,
};
use super::auth;
use super::config::{SignedConfig, MAX_CONFIG_LEN};
use super::store::{unix, Revoked, TokenInfo};
use crate::node::control::{BootstrapPeer, NodeVersion, TopologyNode};
use crate::pki;

/// Default time limit of one request.
pub const TIMEOUT: Duration = Duration::from_secs(30);

/// Errors of the client.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The URL is not `http://host[:port][/path]`.
    #[error("bad registry URL {0:?}: {1}")]
    BadUrl(String, String),
    /// The registry cannot be reached.
    #[error("registry {0} unreachable: {1}")]
    Unreachable(String, String),
    /// No answer within the time limit.
    #[error("registry {0} did not answer in time")]
    Timeout(String),
    /// The registry answered with an error.
    #[error("registry refused ({status}): {detail}")]
    Api {
        /// HTTP status.
        status: u16,
        /// The `error` code of the answer.
        code: String,
        /// The `detail` line of the answer.
        detail: String,
    },
    /// The answer is not what the API promises.
    #[error("unexpected answer from the registry: {0}")]
    BadResponse(String),
}

impl ClientError {
    /// The registry's error code, for API errors.
    pub fn code(&self) -> Option<&str> {
        match self {
            Self::Api { code, .. } => Some(code),
            _ => None,
        }
    }
}

/// A node's credentials for authenticated calls.
pub struct NodeAuth {
    /// The certificate's private key.
    pub key: SigningKey,
    /// The certificate's serial.
    pub serial: u64,
}

/// A registry client.
#[derive(Clone)]
pub struct RegistryClient {
    url: String,
    authority: String,
    base_path: String,
    client: Client<HttpConnector, Full<Bytes>>,
    timeout: Duration,
}

impl RegistryClient {
    /// A client of the registry at `url` (`http://host[:port][/path]`).
    pub fn new(url: &str) -> Result<Self, ClientError> {
        let bad = |why: &str| ClientError::BadUrl(url.into(), why.into());
        let uri: Uri = url
            .parse()
            .map_err(|e: hyper::http::uri::InvalidUri| bad(&e.to_string()))?;
        if uri.scheme_str() != Some("http") {
            return Err(bad("only http:// is supported"));
        }
        let authority = uri.authority().ok_or_else(|| bad("no host"))?.to_string();
        if uri.query().is_some() {
            return Err(bad("no query allowed"));
        }
        let base_path = uri.path().trim_end_matches('/').to_owned();
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_secs(10)));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new()).build(connector);
        Ok(Self {
            url: url.trim_end_matches('/').to_owned(),
            authority,
            base_path,
            client,
            timeout: TIMEOUT,
        })
    }

    /// The same client with another request time limit.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The registry URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// `GET /ca`.
    pub async fn ca(&self) -> Result<CaResponse, ClientError> {
        self.json(Method::GET, "/ca", None, None).await
    }

    /// `POST /token`: asks the registry to mail a token to `email`.
    pub async fn request_token(&self, email: &str) -> Result<TokenSent, ClientError> {
        let body = TokenRequest {
            email: email.into(),
        };
        self.json(Method::POST, "/token", Some(to_json(&body)), None)
            .await
    }

    /// `POST /cert`.
    pub async fn request_cert(&self, req: &CertRequest) -> Result<CertResponse, ClientError> {
        self.json(Method::POST, "/cert", Some(to_json(req)), None)
            .await
    }

    /// `POST /renew`, authenticated as `node`, with a CSR for its key.
    pub async fn renew(&self, node: &NodeAuth, csr_pem: &str) -> Result<CertResponse, ClientError> {
        let body = RenewRequest {
            csr: csr_pem.into(),
        };
        self.json(Method::POST, "/renew", Some(to_json(&body)), Some(node))
            .await
    }

    /// `GET /config`: the signed network configuration; with `node`, it
    /// carries the Babel keys sealed to that node. Verify it with
    /// [`SignedConfig::verify`].
    pub async fn config(&self, node: Option<&NodeAuth>) -> Result<SignedConfig, ClientError> {
        let bytes = self.call(Method::GET, "/config", None, node).await?;
        SignedConfig::parse(&bytes).map_err(|e| ClientError::BadResponse(e.to_string()))
    }

    /// `POST /bootstrap`: a live peer, sealed to `node`.
    pub async fn bootstrap(
        &self,
        node: &NodeAuth,
    ) -> Result<super::api::BootstrapResponse, ClientError> {
        self.json(Method::POST, "/bootstrap", Some(b"{}".to_vec()), Some(node))
            .await
    }

    /// `POST /bootstrap`, opened: the peer's prefix and its addresses
    /// (`IP,PORT,PROTO` each), decrypted with `node`'s key. Answers that
    /// do not open, or hold no address, are [`ClientError::BadResponse`].
    pub async fn bootstrap_peer(&self, node: &NodeAuth) -> Result<BootstrapPeer, ClientError> {
        let sealed = self.bootstrap(node).await?;
        open_bootstrap(&sealed, &node.key)
    }

    /// `GET /admin/topology`: every node the registry's node reached by
    /// walking the mesh, with its tunnel neighbours.
    pub async fn topology(&self) -> Result<Vec<TopologyNode>, ClientError> {
        self.json(Method::GET, "/admin/topology", None, None).await
    }

    /// `GET /admin/versions`: every reachable node's software and
    /// configuration versions.
    pub async fn versions(&self) -> Result<Vec<NodeVersion>, ClientError> {
        self.json(Method::GET, "/admin/versions", None, None).await
    }

    /// `POST /admin/revoke` by serial.
    pub async fn revoke_serial(&self, serial: u64) -> Result<Revoked, ClientError> {
        let body = RevokeRequest {
            serial: Some(serial),
            cn: None,
        };
        self.json(Method::POST, "/admin/revoke", Some(to_json(&body)), None)
            .await
    }

    /// `POST /admin/revoke` by CN (`"5/16"`).
    pub async fn revoke_cn(&self, cn: &str) -> Result<Revoked, ClientError> {
        let body = RevokeRequest {
            serial: None,
            cn: Some(cn.into()),
        };
        self.json(Method::POST, "/admin/revoke", Some(to_json(&body)), None)
            .await
    }

    /// `POST /admin/tokens`: a token for `email`, returned, not mailed.
    pub async fn add_token(
        &self,
        email: &str,
        prefix_len: Option<u8>,
    ) -> Result<TokenInfo, ClientError> {
        let body = AddTokenRequest {
            email: email.into(),
            prefix_len,
        };
        self.json(Method::POST, "/admin/tokens", Some(to_json(&body)), None)
            .await
    }

    /// `GET /admin/tokens`.
    pub async fn tokens(&self) -> Result<TokenList, ClientError> {
        self.json(Method::GET, "/admin/tokens", None, None).await
    }

    /// `DELETE /admin/tokens/{token}`.
    pub async fn delete_token(&self, token: &str) -> Result<(), ClientError> {
        if token.is_empty() || !token.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(ClientError::BadResponse(format!("not a token: {token:?}")));
        }
        self.call(
            Method::DELETE,
            &format!("/admin/tokens/{token}"),
            None,
            None,
        )
        .await
        .map(drop)
    }

    /// `POST /admin/rotate-keys`: one step of the Babel key rotation.
    pub async fn rotate_keys(&self) -> Result<RotateResponse, ClientError> {
        self.json(
            Method::POST,
            "/admin/rotate-keys",
            Some(b"{}".to_vec()),
            None,
        )
        .await
    }

    /// `GET /admin/certs`.
    pub async fn certs(&self) -> Result<CertList, ClientError> {
        self.json(Method::GET, "/admin/certs", None, None).await
    }

    async fn json<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        node: Option<&NodeAuth>,
    ) -> Result<T, ClientError> {
        let bytes = self.call(method, path, body, node).await?;
        serde_json::from_slice(&bytes).map_err(|e| ClientError::BadResponse(e.to_string()))
    }

    /// One request: returns the body of a 2xx answer, or the API error.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        node: Option<&NodeAuth>,
    ) -> Result<Bytes, ClientError> {
        let full_path = format!("{}{}", self.base_path, path);
        let uri = format!("http://{}{}", self.authority, full_path);
        let body = body.unwrap_or_default();
        let mut req = Request::builder()
            .method(method.clone())
            .uri(&uri)
            .header(HOST, &self.authority)
            .header(CONTENT_TYPE, "application/json");
        if let Some(node) = node {
            let mut nonce = [0u8; 16];
            rand::rngs::OsRng.fill_bytes(&mut nonce);
            let a = auth::sign(
                &node.key,
                node.serial,
                method.as_str(),
                &full_path,
                &body,
                unix(SystemTime::now()),
                nonce,
            );
            for (k, v) in a.to_pairs() {
                req = req.header(k, v);
            }
        }
        let req = req
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| ClientError::BadUrl(uri.clone(), e.to_string()))?;
        let exchange = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| ClientError::Unreachable(self.url.clone(), error_chain(&e)))?;
            let status = resp.status();
            let bytes = Limited::new(resp.into_body(), MAX_CONFIG_LEN)
                .collect()
                .await
                .map_err(|e| ClientError::BadResponse(e.to_string()))?
                .to_bytes();
            Ok::<_, ClientError>((status, bytes))
        };
        let (status, bytes) = tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| ClientError::Timeout(self.url.clone()))??;
        if status.is_success() {
            return Ok(bytes);
        }
        Err(match serde_json::from_slice::<ErrorBody>(&bytes) {
            Ok(e) => ClientError::Api {
                status: status.as_u16(),
                code: e.error,
                detail: e.detail,
            },
            Err(_) => ClientError::Api {
                status: status.as_u16(),
                code: status_code(status).into(),
                detail: String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
                    .trim()
                    .to_owned(),
            },
        })
    }
}

/// Opens a bootstrap answer sealed to `key`: base64, then
/// [`pki::open`], then a JSON array of `IP,PORT,PROTO` strings.
pub fn open_bootstrap(
    answer: &super::api::BootstrapResponse,
    key: &SigningKey,
) -> Result<BootstrapPeer, ClientError> {
    use base64::Engine as _;
    let bad = |why: String| ClientError::BadResponse(format!("bootstrap peer: {why}"));
    let sealed = base64::engine::general_purpose::STANDARD
        .decode(&answer.sealed)
        .map_err(|e| bad(e.to_string()))?;
    let plain = pki::open(key, &sealed).map_err(|e| bad(e.to_string()))?;
    let addresses: Vec<String> = serde_json::from_slice(&plain).map_err(|e| bad(e.to_string()))?;
    if addresses.is_empty() {
        return Err(bad("no address".into()));
    }
    Ok(BootstrapPeer {
        prefix: answer.prefix.clone(),
        addresses,
    })
}

fn to_json<T: Serialize>(v: &T) -> Vec<u8> {
    // Our request types are plain strings and integers: cannot fail.
    serde_json::to_vec(v).unwrap_or_default()
}

fn status_code(s: StatusCode) -> &'static str {
    s.canonical_reason().unwrap_or("error")
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        for ok in [
            "http://127.0.0.1:8080",
            "http://[::1]:9/",
            "http://registry.example/re6st",
        ] {
            RegistryClient::new(ok).unwrap();
        }
        assert_eq!(RegistryClient::new("http://h/x/").unwrap().base_path, "/x");
        for bad in ["https://h", "h:80", "http://", "ftp://x", "http://h/?a=b"] {
            assert!(RegistryClient::new(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn bootstrap_answers_open_with_the_right_key_only() {
        use base64::Engine as _;
        let key = pki::generate_key();
        let plain = br#"["192.0.2.1,1194,udp","2001:db8::1,1195,quic"]"#;
        let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
        let answer = |sealed: String| super::super::api::BootstrapResponse {
            prefix: "5/16".into(),
            sealed,
        };
        let peer =
            open_bootstrap(&answer(b64(&pki::seal(&key.verifying_key(), plain))), &key).unwrap();
        assert_eq!(peer.prefix, "5/16");
        assert_eq!(
            peer.addresses,
            vec!["192.0.2.1,1194,udp", "2001:db8::1,1195,quic"]
        );
        let other = pki::generate_key();
        let to_other = answer(b64(&pki::seal(&other.verifying_key(), plain)));
        let bad_cases = [
            to_other,
            answer("not base64!".into()),
            answer(b64(b"short")),
            answer(b64(&pki::seal(&key.verifying_key(), b"{}"))),
            answer(b64(&pki::seal(&key.verifying_key(), b"[]"))),
        ];
        for bad in bad_cases {
            let err = open_bootstrap(&bad, &key).unwrap_err();
            assert!(matches!(err, ClientError::BadResponse(_)), "{err}");
        }
    }

    #[tokio::test]
    async fn unreachable_is_reported() {
        // Bind then drop, so nothing listens on that port.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let c = RegistryClient::new(&format!("http://127.0.0.1:{port}")).unwrap();
        assert!(matches!(c.ca().await, Err(ClientError::Unreachable(..))));
    }
}
