//! Mutual TLS 1.3 for the quic transport, with the network's certificates.
//!
//! Both ends present their Ed25519 node certificate (no chain: every node
//! knows the CA) and check the peer's with [`pki::Verifier`], applying the
//! same rules as the Noise handshake of the udp and tcp transports: signed
//! by the network CA, inside its validity period at the handshake's time,
//! not revoked, a node certificate whose CN fits the network, and — when we
//! initiate — whose CN is the prefix we meant to reach. The peer proves
//! possession of the certificate's key by its TLS 1.3 `CertificateVerify`
//! signature, which only Ed25519 is accepted for.
//!
//! The verifier reads the time rustls hands it (the handshake's `now`), and
//! revocations take effect for every later handshake through the shared
//! [`PeerPolicy`].

use std::fmt;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ed25519_dalek::pkcs8::EncodePrivateKey;
use ed25519_dalek::{Signature, SigningKey};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};

use crate::pki::{NodeCert, NodePrefix, Verifier, VerifyError};

/// ALPN protocol name of re6st tunnels over QUIC.
pub const ALPN: &[u8] = b"re6st-tunnel/1";

/// The name the client puts in its TLS `server_name`. Peers are identified
/// by their certificate's CN, not by a host name, so it is constant.
pub const SERVER_NAME: &str = "re6st.invalid";

/// Why TLS configuration could not be built from our credentials.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// Our private key could not be encoded as PKCS#8.
    #[error("cannot encode the node key: {0}")]
    Key(String),
    /// rustls refused the configuration (key/certificate mismatch, ...).
    #[error("tls configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The certificate rules shared by every handshake of a quic endpoint: the
/// network CA and the current revocation list.
#[derive(Clone)]
pub struct PeerPolicy {
    verifier: Arc<RwLock<Verifier>>,
}

impl fmt::Debug for PeerPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerPolicy").finish_non_exhaustive()
    }
}

impl PeerPolicy {
    /// A policy checking peers with `verifier`.
    pub fn new(verifier: Verifier) -> Self {
        Self {
            verifier: Arc::new(RwLock::new(verifier)),
        }
    }

    /// Replaces the set of revoked certificate serials (from a new CRL);
    /// later handshakes refuse those certificates.
    pub fn set_revoked(&self, serials: impl IntoIterator<Item = u64>) {
        // A poisoned lock only means a writer panicked while replacing the
        // set; the verifier is still consistent.
        let mut v = self.verifier.write().unwrap_or_else(|e| e.into_inner());
        v.set_revoked(serials);
    }

    /// Checks a peer certificate (DER) at `now`, and its CN against
    /// `expected` when given; returns the certificate and its prefix.
    pub fn check(
        &self,
        der: &[u8],
        now: SystemTime,
        expected: Option<&NodePrefix>,
    ) -> Result<(NodeCert, NodePrefix), VerifyError> {
        let v = self.verifier.read().unwrap_or_else(|e| e.into_inner());
        let (cert, prefix) = v.verify_der(der, now)?;
        if let Some(want) = expected {
            if prefix != *want {
                return Err(VerifyError::WrongPrefix);
            }
        }
        Ok((cert, prefix))
    }
}

/// Where a client-side verifier records why it refused the server, so the
/// connection's owner can report the precise reason.
#[derive(Clone, Debug, Default)]
pub struct Refusal(Arc<Mutex<Option<VerifyError>>>);

impl Refusal {
    /// The reason recorded, if the peer's certificate was refused.
    pub fn reason(&self) -> Option<VerifyError> {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set(&self, e: VerifyError) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(e);
    }
}

/// Our own certificate and key, as rustls wants them.
#[derive(Debug)]
pub struct TlsIdentity {
    cert: CertificateDer<'static>,
    key: PrivatePkcs8KeyDer<'static>,
}

impl Clone for TlsIdentity {
    fn clone(&self) -> Self {
        Self {
            cert: self.cert.clone(),
            key: self.key.clone_key(),
        }
    }
}

impl TlsIdentity {
    /// Our node key and certificate.
    pub fn new(key: &SigningKey, cert: &NodeCert) -> Result<Self, TlsError> {
        let doc = key
            .to_pkcs8_der()
            .map_err(|e| TlsError::Key(e.to_string()))?;
        Ok(Self {
            cert: CertificateDer::from(cert.der().to_vec()),
            key: PrivatePkcs8KeyDer::from(doc.as_bytes().to_vec()),
        })
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// TLS configuration for connections we accept: a client certificate is
/// mandatory and checked against `policy`.
pub fn server_config(
    id: &TlsIdentity,
    policy: PeerPolicy,
) -> Result<rustls::ServerConfig, TlsError> {
    let verifier = Arc::new(NodeVerifier {
        policy,
        expected: None,
        refusal: None,
    });
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            vec![id.cert.clone()],
            PrivateKeyDer::Pkcs8(id.key.clone_key()),
        )?;
    cfg.alpn_protocols = vec![ALPN.to_vec()];
    Ok(cfg)
}

/// TLS configuration for one connection we initiate, to the node whose
/// prefix is `expected` when given; a refusal is recorded in `refusal`.
pub fn client_config(
    id: &TlsIdentity,
    policy: PeerPolicy,
    expected: Option<NodePrefix>,
    refusal: Refusal,
) -> Result<rustls::ClientConfig, TlsError> {
    let verifier = Arc::new(NodeVerifier {
        policy,
        expected,
        refusal: Some(refusal),
    });
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(
            vec![id.cert.clone()],
            PrivateKeyDer::Pkcs8(id.key.clone_key()),
        )?;
    cfg.alpn_protocols = vec![ALPN.to_vec()];
    Ok(cfg)
}

/// The prefix of a peer whose certificate passed the TLS handshake.
pub fn peer_prefix(certs: &[CertificateDer<'_>]) -> Option<(NodeCert, NodePrefix)> {
    let cert = NodeCert::from_der(certs.first()?).ok()?;
    let prefix = cert.prefix().ok()?;
    Some((cert, prefix))
}

/// Checks peers' certificates for both TLS roles.
struct NodeVerifier {
    policy: PeerPolicy,
    /// The CN we meant to reach (client role only).
    expected: Option<NodePrefix>,
    /// Where to record a refusal (client role only).
    refusal: Option<Refusal>,
}

impl fmt::Debug for NodeVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeVerifier")
            .field("expected", &self.expected)
            .finish()
    }
}

impl NodeVerifier {
    fn check_chain(
        &self,
        end_entity: &CertificateDer<'_>,
        now: UnixTime,
    ) -> Result<(), rustls::Error> {
        let now = UNIX_EPOCH + Duration::from_secs(now.as_secs());
        match self.policy.check(end_entity, now, self.expected.as_ref()) {
            Ok((_, prefix)) => {
                tracing::debug!(%prefix, "quic: peer certificate accepted");
                Ok(())
            }
            Err(e) => {
                let cn = NodeCert::from_der(end_entity)
                    .ok()
                    .and_then(|c| c.prefix().ok())
                    .map_or_else(|| "?".to_owned(), |p| p.to_string());
                tracing::warn!(
                    peer_cn = %cn,
                    expected = ?self.expected.map(|p| p.to_string()),
                    "quic: refused peer certificate: {e}"
                );
                if let Some(r) = &self.refusal {
                    r.set(e);
                }
                Err(rustls::Error::InvalidCertificate(certificate_error(e)))
            }
        }
    }
}

fn certificate_error(e: VerifyError) -> CertificateError {
    match e {
        VerifyError::Malformed => CertificateError::BadEncoding,
        VerifyError::WrongCa => CertificateError::UnknownIssuer,
        VerifyError::NotYetValid => CertificateError::NotValidYet,
        VerifyError::Expired => CertificateError::Expired,
        VerifyError::Revoked => CertificateError::Revoked,
        VerifyError::WrongPrefix => CertificateError::NotValidForName,
        VerifyError::NotANodeCert | VerifyError::PrefixOutsideNetwork => {
            CertificateError::ApplicationVerificationFailure
        }
    }
}

/// Checks a TLS 1.3 `CertificateVerify` signature with the Ed25519 key of
/// the (already verified) certificate.
fn verify_signature(
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
) -> Result<HandshakeSignatureValid, rustls::Error> {
    let bad = || rustls::Error::InvalidCertificate(CertificateError::BadSignature);
    if dss.scheme != SignatureScheme::ED25519 {
        return Err(bad());
    }
    let key = NodeCert::from_der(cert)
        .ok()
        .and_then(|c| c.public_key().ok())
        .ok_or_else(bad)?;
    let sig = Signature::from_slice(dss.signature()).map_err(|_| bad())?;
    key.verify_strict(message, &sig).map_err(|_| bad())?;
    Ok(HandshakeSignatureValid::assertion())
}

impl ServerCertVerifier for NodeVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.check_chain(end_entity, now)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        // Only TLS 1.3 is enabled (QUIC requires it).
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls13RequiredForQuic,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}

impl ClientCertVerifier for NodeVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.check_chain(end_entity, now)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls13RequiredForQuic,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use rustls::{ClientConnection, Connection, ServerConnection};

    use super::*;
    use crate::pki::{Ca, Csr, IssueRequest};

    const DAY: Duration = Duration::from_secs(86_400);

    struct Node {
        key: SigningKey,
        cert: NodeCert,
    }

    fn network_ca() -> Ca {
        Ca::generate("2001:db8:42::/48".parse().unwrap(), 30).unwrap()
    }

    fn node(ca: &Ca, prefix: &str, serial: u64, from: SystemTime, to: SystemTime) -> Node {
        let key = crate::pki::generate_key();
        let csr = Csr::generate(&key, &[]).unwrap();
        let cert = ca
            .issue(&IssueRequest {
                csr: &csr,
                prefix: prefix.parse().unwrap(),
                subject_serial: u32::try_from(serial).unwrap(),
                serial,
                not_before: from,
                not_after: to,
            })
            .unwrap();
        Node { key, cert }
    }

    fn valid(ca: &Ca, prefix: &str, serial: u64) -> Node {
        let now = SystemTime::now();
        node(ca, prefix, serial, now - DAY, now + DAY)
    }

    fn policy(ca: &Ca) -> PeerPolicy {
        PeerPolicy::new(Verifier::new(&ca.cert_pem()).unwrap())
    }

    fn identity(n: &Node) -> TlsIdentity {
        TlsIdentity::new(&n.key, &n.cert).unwrap()
    }

    #[derive(Debug, PartialEq)]
    enum Refused {
        ByClient(rustls::Error),
        ByServer(rustls::Error),
    }

    /// Runs a TLS 1.3 handshake in memory; returns the prefix each side
    /// saw, or which side refused and why.
    fn handshake(
        client: rustls::ClientConfig,
        server: rustls::ServerConfig,
    ) -> Result<(NodePrefix, NodePrefix), Refused> {
        let name = ServerName::try_from(SERVER_NAME).unwrap();
        let mut c = Connection::from(ClientConnection::new(Arc::new(client), name).unwrap());
        let mut s = Connection::from(ServerConnection::new(Arc::new(server)).unwrap());
        for _ in 0..10 {
            let mut wire = Vec::new();
            while c.wants_write() {
                c.write_tls(&mut wire).unwrap();
            }
            s.read_tls(&mut &wire[..]).unwrap();
            s.process_new_packets().map_err(Refused::ByServer)?;
            let mut wire = Vec::new();
            while s.wants_write() {
                s.write_tls(&mut wire).unwrap();
            }
            c.read_tls(&mut &wire[..]).unwrap();
            c.process_new_packets().map_err(Refused::ByClient)?;
            if !c.is_handshaking() && !s.is_handshaking() {
                let seen =
                    |conn: &Connection| peer_prefix(conn.peer_certificates().unwrap()).unwrap().1;
                return Ok((seen(&c), seen(&s)));
            }
        }
        panic!("handshake did not finish");
    }

    #[test]
    fn mutual_authentication_succeeds() {
        let ca = network_ca();
        let (a, b) = (valid(&ca, "1/16", 1), valid(&ca, "2/16", 2));
        let client = client_config(
            &identity(&a),
            policy(&ca),
            "2/16".parse().ok(),
            Refusal::default(),
        )
        .unwrap();
        let server = server_config(&identity(&b), policy(&ca)).unwrap();
        let (client_saw, server_saw) = handshake(client, server).unwrap();
        assert_eq!(client_saw.to_string(), "2/16");
        assert_eq!(server_saw.to_string(), "1/16");
    }

    #[test]
    fn refusals() {
        let ca = network_ca();
        let foreign = network_ca();
        let now = SystemTime::now();
        let good_a = valid(&ca, "1/16", 1);
        let good_b = valid(&ca, "2/16", 2);
        let foreign_b = valid(&foreign, "2/16", 2);
        let foreign_a = valid(&foreign, "1/16", 1);
        let expired_a = node(&ca, "1/16", 3, now - 3 * DAY, now - DAY);
        let future_b = node(&ca, "2/16", 4, now + DAY, now + 3 * DAY);
        let revoked_b = policy(&ca);
        revoked_b.set_revoked([2]);
        let revoked_a = policy(&ca);
        revoked_a.set_revoked([1]);
        let bad = |e| rustls::Error::InvalidCertificate(e);
        let cases: Vec<(&str, &Node, &Node, &str, PeerPolicy, PeerPolicy, Refused)> = vec![
            (
                "wrong CN",
                &good_a,
                &good_b,
                "3/16",
                policy(&ca),
                policy(&ca),
                Refused::ByClient(bad(CertificateError::NotValidForName)),
            ),
            (
                "server from a foreign CA",
                &good_a,
                &foreign_b,
                "2/16",
                policy(&ca),
                policy(&ca),
                Refused::ByClient(bad(CertificateError::UnknownIssuer)),
            ),
            (
                "client from a foreign CA",
                &foreign_a,
                &good_b,
                "2/16",
                policy(&ca),
                policy(&ca),
                Refused::ByServer(bad(CertificateError::UnknownIssuer)),
            ),
            (
                "client expired",
                &expired_a,
                &good_b,
                "2/16",
                policy(&ca),
                policy(&ca),
                Refused::ByServer(bad(CertificateError::Expired)),
            ),
            (
                "server not yet valid",
                &good_a,
                &future_b,
                "2/16",
                policy(&ca),
                policy(&ca),
                Refused::ByClient(bad(CertificateError::NotValidYet)),
            ),
            (
                "server revoked",
                &good_a,
                &good_b,
                "2/16",
                revoked_b,
                policy(&ca),
                Refused::ByClient(bad(CertificateError::Revoked)),
            ),
            (
                "client revoked",
                &good_a,
                &good_b,
                "2/16",
                policy(&ca),
                revoked_a,
                Refused::ByServer(bad(CertificateError::Revoked)),
            ),
        ];
        for (what, a, b, expected, cpol, spol, want) in cases {
            let refusal = Refusal::default();
            let client =
                client_config(&identity(a), cpol, expected.parse().ok(), refusal.clone()).unwrap();
            let server = server_config(&identity(b), spol).unwrap();
            let got = handshake(client, server).unwrap_err();
            if let Refused::ByClient(_) = got {
                assert!(refusal.reason().is_some(), "{what}: refusal not recorded");
            }
            assert_eq!(got, want, "{what}");
        }
    }

    #[test]
    fn key_not_matching_the_certificate_is_refused() {
        // a node presenting someone else's certificate cannot sign for it
        let ca = network_ca();
        let a = valid(&ca, "1/16", 1);
        let b = valid(&ca, "2/16", 2);
        let thief = Node {
            key: crate::pki::generate_key(),
            cert: b.cert.clone(),
        };
        // rustls refuses a key that does not match the certificate when it
        // builds the configuration; were it to accept it, the peer would
        // refuse the CertificateVerify signature
        let id = TlsIdentity::new(&thief.key, &thief.cert).unwrap();
        let refused = match server_config(&id, policy(&ca)) {
            Err(_) => true,
            Ok(server) => {
                let client = client_config(
                    &identity(&a),
                    policy(&ca),
                    "2/16".parse().ok(),
                    Refusal::default(),
                )
                .unwrap();
                handshake(client, server).is_err()
            }
        };
        assert!(refused);
    }
}
