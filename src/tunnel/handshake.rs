//! The tunnel handshake: `Noise_XX_25519_ChaChaPoly_BLAKE2s` (snow) whose
//! static keys are the nodes' certificate keys (Ed25519 mapped to X25519 by
//! [`pki::x25519_secret`]), with each side's certificate (DER) as the
//! encrypted payload of its static-key message.
//!
//! A side accepts the handshake only when the peer's certificate verifies
//! (chain to the network CA, validity at `now`, not revoked, and for
//! initiators the CN we meant to reach) **and** its key maps to the Noise
//! remote static key the peer proved possession of.
//!
//! XX is used rather than IK because an initiator knows the prefix it wants
//! to reach but not the peer's key; the cost is one more message (1.5 RTT).
//!
//! One struct per expected message, consumed on each transition:
//! [`Initiator`] expects a `Response`, [`Responder`] expects a `Finish`.
//! No clock reads: the caller passes `now` (monotonic) and `wall` (for
//! certificate validity).

use std::fmt;
use std::sync::{Arc, RwLock};
use std::time::{Instant, SystemTime};

use ed25519_dalek::SigningKey;
use snow::{Builder, HandshakeState};

use super::cookie::MacKeys;
use super::session::Keypair;
use super::wire::{
    HandshakeRepr, MessageType, Packet, INIT_LEN, INIT_MAC1_OFFSET, INIT_MAC2_OFFSET, MAC_LEN,
    MAX_HANDSHAKE_LEN,
};
use crate::pki::{self, NodeCert, NodePrefix, Verifier, VerifyError};

/// The Noise protocol name.
pub const NOISE_PATTERN: &str = "Noise_XX_25519_ChaChaPoly_BLAKE2s";
const PROLOGUE: &[u8] = b"re6st tunnel v1";

/// Why a handshake failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    /// The Noise layer rejected the message (bad MAC, wrong length...).
    #[error("noise handshake failed: {0}")]
    Noise(String),
    /// The message is not the one expected in this state.
    #[error("unexpected handshake message")]
    Unexpected,
    /// The peer's certificate was refused.
    #[error("peer certificate refused: {0}")]
    Certificate(#[from] VerifyError),
    /// The certificate's key is not the Noise static key the peer proved.
    #[error("peer certificate key does not match its noise static key")]
    KeyMismatch,
    /// The certificate could not be parsed.
    #[error("peer sent a malformed certificate")]
    MalformedCertificate,
    /// Our own message did not fit the handshake size limit.
    #[error("handshake message too large")]
    TooLarge,
}

impl From<snow::Error> for HandshakeError {
    fn from(e: snow::Error) -> Self {
        Self::Noise(e.to_string())
    }
}

/// Our identity and the rules for accepting peers, shared by every
/// handshake of an endpoint.
pub struct Credentials {
    static_secret: [u8; 32],
    cert: NodeCert,
    prefix: NodePrefix,
    verifier: RwLock<Verifier>,
    mac_keys: MacKeys,
    prologue: Vec<u8>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl Credentials {
    /// Our key and certificate, the network CA certificate (DER, which
    /// identifies the network: mac1 and the Noise prologue are bound to it)
    /// and the verifier for peers' certificates.
    pub fn new(
        key: &SigningKey,
        cert: NodeCert,
        ca_der: &[u8],
        verifier: Verifier,
    ) -> Result<Self, pki::PkiError> {
        let prefix = cert.prefix()?;
        let mut prologue = PROLOGUE.to_vec();
        prologue.extend_from_slice(pki::fingerprint(ca_der).as_bytes());
        Ok(Self {
            static_secret: pki::x25519_secret(key),
            cert,
            prefix,
            verifier: RwLock::new(verifier),
            mac_keys: MacKeys::new(ca_der),
            prologue,
        })
    }

    /// Our certificate's serial number.
    pub fn serial(&self) -> u64 {
        self.cert.serial()
    }

    /// Our prefix (from our certificate's CN).
    pub fn prefix(&self) -> NodePrefix {
        self.prefix
    }

    /// The network's mac keys.
    pub fn mac_keys(&self) -> &MacKeys {
        &self.mac_keys
    }

    /// Replaces the set of revoked certificate serials (from a new CRL).
    pub fn set_revoked(&self, serials: impl IntoIterator<Item = u64>) {
        // A poisoned lock only means another thread panicked while
        // replacing the list; the verifier itself stays consistent.
        let mut v = self.verifier.write().unwrap_or_else(|e| e.into_inner());
        v.set_revoked(serials);
    }

    /// Whether `serial` is currently revoked.
    pub fn is_revoked(&self, serial: u64) -> bool {
        self.verifier
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .is_revoked(serial)
    }

    fn builder(&self) -> Builder<'_> {
        // NOISE_PATTERN is a valid, supported pattern name (tested below).
        let params = NOISE_PATTERN.parse().expect("valid noise pattern");
        Builder::new(params)
            .local_private_key(&self.static_secret)
            .prologue(&self.prologue)
    }

    /// Checks the certificate a peer sent against the Noise static key it
    /// proved, and (for initiators) against the prefix we meant to reach.
    fn check_peer(
        &self,
        der: &[u8],
        remote_static: Option<&[u8]>,
        expected: Option<&NodePrefix>,
        wall: SystemTime,
    ) -> Result<PeerInfo, HandshakeError> {
        let cert = NodeCert::from_der(der).map_err(|_| HandshakeError::MalformedCertificate)?;
        let verifier = self.verifier.read().unwrap_or_else(|e| e.into_inner());
        let prefix = match expected {
            Some(p) => {
                verifier.verify_expected(&cert, wall, p)?;
                *p
            }
            None => verifier.verify(&cert, wall)?,
        };
        drop(verifier);
        let key = cert
            .public_key()
            .map_err(|_| HandshakeError::MalformedCertificate)?;
        let want = pki::x25519_public(&key);
        if remote_static != Some(&want[..]) {
            return Err(HandshakeError::KeyMismatch);
        }
        Ok(PeerInfo { prefix, cert })
    }
}

/// Who the peer is, once a handshake completed.
#[derive(Clone, Debug)]
pub struct PeerInfo {
    /// The peer's prefix (its certificate's CN).
    pub prefix: NodePrefix,
    /// The peer's certificate.
    pub cert: NodeCert,
}

/// A completed handshake: the peer and the session keys.
#[derive(Debug)]
pub struct Completed {
    /// The authenticated peer.
    pub peer: PeerInfo,
    /// The new session.
    pub keypair: Keypair,
}

fn split(hs: &mut HandshakeState, initiator: bool) -> ([u8; 32], [u8; 32]) {
    let (i2r, r2i) = hs.dangerously_get_raw_split();
    if initiator {
        (i2r, r2i)
    } else {
        (r2i, i2r)
    }
}

/// An initiator waiting for the `Response`.
pub struct Initiator {
    hs: HandshakeState,
    local_index: u32,
    expected: Option<NodePrefix>,
    sent_at: Instant,
    sent_mac1: [u8; MAC_LEN],
}

impl fmt::Debug for Initiator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Initiator")
            .field("local_index", &self.local_index)
            .finish_non_exhaustive()
    }
}

impl Initiator {
    /// Starts a handshake: writes the `Init` message into `out` (at least
    /// [`INIT_LEN`] bytes) and returns the state and the message length.
    /// `cookie` is the last cookie the responder gave us, if fresh.
    pub fn start(
        creds: &Credentials,
        local_index: u32,
        expected: Option<NodePrefix>,
        cookie: Option<&[u8; MAC_LEN]>,
        now: Instant,
        out: &mut [u8],
    ) -> Result<(Self, usize), HandshakeError> {
        let mut hs = creds.builder().build_initiator()?;
        let mut noise = [0u8; 64];
        let n = hs.write_message(&[], &mut noise)?;
        let repr = HandshakeRepr::Init {
            sender: local_index,
            noise: &noise[..n],
            macs: [[0; 16]; 2],
        };
        let len = repr.emit(out).map_err(|_| HandshakeError::TooLarge)?;
        creds.mac_keys.stamp_init(&mut out[..INIT_LEN], cookie);
        let mut sent_mac1 = [0u8; MAC_LEN];
        sent_mac1.copy_from_slice(&out[INIT_MAC1_OFFSET..INIT_MAC2_OFFSET]);
        Ok((
            Self {
                hs,
                local_index,
                expected,
                sent_at: now,
                sent_mac1,
            },
            len,
        ))
    }

    /// Our index for this handshake.
    pub fn local_index(&self) -> u32 {
        self.local_index
    }

    /// When the `Init` was sent.
    pub fn sent_at(&self) -> Instant {
        self.sent_at
    }

    /// The mac1 of the `Init` we sent (a cookie reply is bound to it).
    pub fn sent_mac1(&self) -> &[u8; MAC_LEN] {
        &self.sent_mac1
    }

    /// Handles the `Response`: checks the responder's certificate, writes
    /// the `Finish` message into `out` and returns the completed handshake
    /// and the `Finish` length.
    pub fn handle_response<T: AsRef<[u8]>>(
        mut self,
        creds: &Credentials,
        msg: &Packet<T>,
        now: Instant,
        wall: SystemTime,
        out: &mut [u8],
    ) -> Result<(Completed, usize), HandshakeError> {
        if msg.kind() != MessageType::Response || msg.receiver_index() != self.local_index {
            return Err(HandshakeError::Unexpected);
        }
        let remote_index = msg.sender_index();
        let mut payload = [0u8; MAX_HANDSHAKE_LEN];
        let n = self.hs.read_message(msg.noise(), &mut payload)?;
        let peer = creds.check_peer(
            &payload[..n],
            self.hs.get_remote_static(),
            self.expected.as_ref(),
            wall,
        )?;
        let mut noise = [0u8; MAX_HANDSHAKE_LEN];
        let nlen = self.hs.write_message(creds.cert.der(), &mut noise)?;
        let repr = HandshakeRepr::Finish {
            receiver: remote_index,
            noise: &noise[..nlen],
        };
        let len = repr.emit(out).map_err(|_| HandshakeError::TooLarge)?;
        let (send, recv) = split(&mut self.hs, true);
        let keypair = Keypair::new(&send, &recv, self.local_index, remote_index, true, now);
        Ok((Completed { peer, keypair }, len))
    }
}

/// A responder waiting for the `Finish`.
pub struct Responder {
    hs: HandshakeState,
    local_index: u32,
    remote_index: u32,
    created: Instant,
}

impl fmt::Debug for Responder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Responder")
            .field("local_index", &self.local_index)
            .finish_non_exhaustive()
    }
}

impl Responder {
    /// Handles an `Init` (whose macs the caller already checked): writes the
    /// `Response` (with our certificate) into `out`.
    pub fn accept<T: AsRef<[u8]>>(
        creds: &Credentials,
        init: &Packet<T>,
        local_index: u32,
        now: Instant,
        out: &mut [u8],
    ) -> Result<(Self, usize), HandshakeError> {
        if init.kind() != MessageType::Init {
            return Err(HandshakeError::Unexpected);
        }
        let mut hs = creds.builder().build_responder()?;
        let mut payload = [0u8; 64];
        hs.read_message(init.noise(), &mut payload)?;
        let mut noise = [0u8; MAX_HANDSHAKE_LEN];
        let nlen = hs.write_message(creds.cert.der(), &mut noise)?;
        let remote_index = init.sender_index();
        let repr = HandshakeRepr::Response {
            sender: local_index,
            receiver: remote_index,
            noise: &noise[..nlen],
        };
        let len = repr.emit(out).map_err(|_| HandshakeError::TooLarge)?;
        Ok((
            Self {
                hs,
                local_index,
                remote_index,
                created: now,
            },
            len,
        ))
    }

    /// Our index for this handshake.
    pub fn local_index(&self) -> u32 {
        self.local_index
    }

    /// When the `Init` was accepted.
    pub fn created(&self) -> Instant {
        self.created
    }

    /// Handles the `Finish`: checks the initiator's certificate.
    pub fn handle_finish<T: AsRef<[u8]>>(
        mut self,
        creds: &Credentials,
        msg: &Packet<T>,
        now: Instant,
        wall: SystemTime,
    ) -> Result<Completed, HandshakeError> {
        if msg.kind() != MessageType::Finish || msg.receiver_index() != self.local_index {
            return Err(HandshakeError::Unexpected);
        }
        let mut payload = [0u8; MAX_HANDSHAKE_LEN];
        let n = self.hs.read_message(msg.noise(), &mut payload)?;
        let peer = creds.check_peer(&payload[..n], self.hs.get_remote_static(), None, wall)?;
        let (send, recv) = split(&mut self.hs, false);
        let keypair = Keypair::new(
            &send,
            &recv,
            self.local_index,
            self.remote_index,
            false,
            now,
        );
        Ok(Completed { peer, keypair })
    }
}

/// Shared credentials.
pub type SharedCredentials = Arc<Credentials>;

#[cfg(test)]
pub(crate) mod tests {
    use std::time::Duration;

    use super::*;
    use crate::pki::{Ca, Csr, IssueRequest, Network};
    use crate::tunnel::wire::DATA_HEADER_LEN;

    /// A test network: a CA and a way to issue node certificates.
    pub(crate) struct TestNet {
        pub(crate) ca: Ca,
        serial: std::cell::Cell<u64>,
    }

    impl TestNet {
        pub(crate) fn new() -> Self {
            let network: Network = "2001:db8:42::/48".parse().unwrap();
            Self {
                ca: Ca::generate(network, 30).unwrap(),
                serial: 1.into(),
            }
        }

        pub(crate) fn issue_with(
            &self,
            prefix: &str,
            not_before: SystemTime,
            not_after: SystemTime,
        ) -> (SigningKey, NodeCert) {
            let key = pki::generate_key();
            let csr = Csr::generate(&key, &[]).unwrap();
            let serial = self.serial.get() + 1;
            self.serial.set(serial);
            let cert = self
                .ca
                .issue(&IssueRequest {
                    csr: &csr,
                    prefix: prefix.parse().unwrap(),
                    subject_serial: serial as u32,
                    serial,
                    not_before,
                    not_after,
                })
                .unwrap();
            (key, cert)
        }

        pub(crate) fn issue(&self, prefix: &str) -> (SigningKey, NodeCert) {
            let now = SystemTime::now();
            self.issue_with(
                prefix,
                now - Duration::from_secs(60),
                now + Duration::from_secs(86400),
            )
        }

        pub(crate) fn creds(&self, key: &SigningKey, cert: NodeCert) -> Credentials {
            let verifier = Verifier::new(&self.ca.cert_pem()).unwrap();
            Credentials::new(key, cert, self.ca.cert_der(), verifier).unwrap()
        }

        pub(crate) fn node(&self, prefix: &str) -> Credentials {
            let (k, c) = self.issue(prefix);
            self.creds(&k, c)
        }
    }

    type Outcome = (
        Result<(Completed, usize), HandshakeError>,
        Option<Result<Completed, HandshakeError>>,
    );

    fn run(i: &Credentials, r: &Credentials, expected: Option<&str>, wall: SystemTime) -> Outcome {
        let now = Instant::now();
        let mut m1 = [0u8; MAX_HANDSHAKE_LEN];
        let (init, n1) = Initiator::start(
            i,
            7,
            expected.map(|e| e.parse().unwrap()),
            None,
            now,
            &mut m1,
        )
        .unwrap();
        let p1 = Packet::new_checked(&m1[..n1]).unwrap();
        let mut m2 = [0u8; MAX_HANDSHAKE_LEN];
        let (resp, n2) = Responder::accept(r, &p1, 9, now, &mut m2).unwrap();
        let p2 = Packet::new_checked(&m2[..n2]).unwrap();
        let mut m3 = [0u8; MAX_HANDSHAKE_LEN];
        let res = init.handle_response(i, &p2, now, wall, &mut m3);
        let fin = match &res {
            Ok((_, n3)) => {
                let p3 = Packet::new_checked(&m3[..*n3]).unwrap();
                Some(resp.handle_finish(r, &p3, now, wall))
            }
            Err(_) => None,
        };
        (res, fin)
    }

    #[test]
    fn pattern_parses() {
        assert!(NOISE_PATTERN.parse::<snow::params::NoiseParams>().is_ok());
    }

    #[test]
    fn handshake_completes_and_keys_match() {
        let net = TestNet::new();
        let a = net.node("1/16");
        let b = net.node("2/16");
        let (res, fin) = run(&a, &b, Some("2/16"), SystemTime::now());
        let (ca, _) = res.unwrap();
        let cb = fin.unwrap().unwrap();
        assert_eq!(ca.peer.prefix.to_string(), "2/16");
        assert_eq!(cb.peer.prefix.to_string(), "1/16");
        // Data sealed by one side opens on the other, both ways.
        let mut ka = ca.keypair;
        let mut kb = cb.keypair;
        let mut buf = [0u8; 64];
        buf[DATA_HEADER_LEN..DATA_HEADER_LEN + 2].copy_from_slice(b"hi");
        let n = ka.sender.seal(&mut buf, 2).unwrap();
        assert_eq!(kb.receiver.open(&mut buf[..n]).unwrap().0, b"hi");
        let n = kb.sender.seal(&mut buf, 2).unwrap();
        assert_eq!(ka.receiver.open(&mut buf[..n]).unwrap().0, b"hi");
        assert_eq!(ka.sender.remote_index(), 9);
        assert_eq!(kb.sender.remote_index(), 7);
    }

    #[test]
    fn certificate_checks() {
        let net = TestNet::new();
        let other = TestNet::new();
        let now = SystemTime::now();
        let day = Duration::from_secs(86400);
        let a = net.node("1/16");
        // Responder-side certificate problems, seen by the initiator.
        let (k, c) = net.issue_with("2/16", now - 3 * day, now - day);
        let expired = net.creds(&k, c);
        let (k, c) = net.issue_with("2/16", now + day, now + 3 * day);
        let future = net.creds(&k, c);
        let (k, c) = net.issue("2/16");
        let serial = c.serial();
        let revoked = net.creds(&k, c);
        a.set_revoked([serial]);
        // A certificate from another CA (for the same network), presented by
        // a node that knows our CA certificate (so Noise gets that far).
        let (k, c) = other.issue("2/16");
        let verifier = Verifier::new(&net.ca.cert_pem()).unwrap();
        let foreign = Credentials::new(&k, c, net.ca.cert_der(), verifier).unwrap();
        let cases: Vec<(&Credentials, &str, HandshakeError)> = vec![
            (
                &expired,
                "2/16",
                HandshakeError::Certificate(VerifyError::Expired),
            ),
            (
                &future,
                "2/16",
                HandshakeError::Certificate(VerifyError::NotYetValid),
            ),
            (
                &revoked,
                "2/16",
                HandshakeError::Certificate(VerifyError::Revoked),
            ),
            (
                &foreign,
                "2/16",
                HandshakeError::Certificate(VerifyError::WrongCa),
            ),
        ];
        for (r, expected, err) in cases {
            let (res, _) = run(&a, r, Some(expected), now);
            assert_eq!(res.unwrap_err(), err, "{expected}");
        }
        // Wrong CN for a tunnel we initiate.
        let b = net.node("3/16");
        let (res, _) = run(&a, &b, Some("2/16"), now);
        assert_eq!(
            res.unwrap_err(),
            HandshakeError::Certificate(VerifyError::WrongPrefix)
        );
        // Initiator-side problems, seen by the responder.
        let (res, fin) = run(&expired, &a, None, now);
        assert!(res.is_ok());
        assert_eq!(
            fin.unwrap().unwrap_err(),
            HandshakeError::Certificate(VerifyError::Expired)
        );
        let (res, fin) = run(&revoked, &a, None, now);
        assert!(res.is_ok());
        assert_eq!(
            fin.unwrap().unwrap_err(),
            HandshakeError::Certificate(VerifyError::Revoked)
        );
    }

    #[test]
    fn wrong_key_for_certificate() {
        // A node presenting someone else's certificate with its own key.
        let net = TestNet::new();
        let a = net.node("1/16");
        let (_, stolen) = net.issue("2/16");
        let thief_key = pki::generate_key();
        let thief = net.creds(&thief_key, stolen);
        let (res, _) = run(&a, &thief, Some("2/16"), SystemTime::now());
        assert_eq!(res.unwrap_err(), HandshakeError::KeyMismatch);
        let (res, fin) = run(&thief, &a, None, SystemTime::now());
        assert!(res.is_ok());
        assert_eq!(fin.unwrap().unwrap_err(), HandshakeError::KeyMismatch);
    }

    #[test]
    fn different_networks_do_not_even_talk() {
        // mac1 and the prologue bind to the CA: a foreign node's handshake
        // fails in Noise before any certificate is looked at.
        let net = TestNet::new();
        let other = TestNet::new();
        let a = net.node("1/16");
        let f = other.node("2/16");
        let now = Instant::now();
        let mut m1 = [0u8; MAX_HANDSHAKE_LEN];
        let (init, n1) = Initiator::start(&a, 1, None, None, now, &mut m1).unwrap();
        let p1 = Packet::new_checked(&m1[..n1]).unwrap();
        let mut m2 = [0u8; MAX_HANDSHAKE_LEN];
        let (_, n2) = Responder::accept(&f, &p1, 2, now, &mut m2).unwrap();
        let p2 = Packet::new_checked(&m2[..n2]).unwrap();
        let err = init
            .handle_response(&a, &p2, now, SystemTime::now(), &mut [0; 2048])
            .unwrap_err();
        assert!(matches!(err, HandshakeError::Noise(_)), "{err:?}");
    }
}
