//! The peer protocol: small messages between nodes across the overlay (UDP
//! port [`wire::PORT`] on re6st addresses), authenticated end to end by the
//! node keys.
//!
//! Messages: address request/reply, network-configuration version
//! announcement, tunnel-retirement request/acknowledgement/refusal, node info
//! (software version) and topology (the sender's tunnel neighbours). The
//! format is in [`wire`].
//!
//! # Security
//!
//! Every packet carries the sender's certificate and an Ed25519 signature by
//! its key over the whole packet (version, type, sender and recipient
//! prefixes, sequence number, certificate and body), prefixed with a context
//! string. [`PeerEndpoint::open`] accepts a packet only if:
//!
//! 1. it is well-formed;
//! 2. its recipient is us (a relay cannot redirect a message);
//! 3. its sequence number (microseconds since the UNIX epoch) is within
//!    `window` of our clock, above the highest one already accepted from
//!    that sender, and not older than our own start (a relay cannot replay a
//!    message, even after we restart);
//! 4. the certificate chains to the network CA, is valid now and not revoked
//!    (the [`Verifier`]), and its CN is the sender prefix;
//! 5. the signature verifies with the certificate's key (a relay cannot
//!    forge or alter a message).
//!
//! Replay state is per sender and pruned once older than the window, so it
//! stays small. The cost: node clocks must agree within `window` (60 s by
//! default), as they already must for certificate validity.
//!
//! The endpoint is sans-I/O: the caller moves the bytes and passes the
//! wall-clock time (certificates and sequence numbers need it).

pub mod wire;

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};

use crate::pki::{NodeCert, NodePrefix, PkiError, Verifier, VerifyError};

pub use wire::{
    AddressIter, Addresses, Body, Message, MessageType, Packet, Prefixes, WireError, PORT,
};

/// Default tolerance between the sender's sequence (its clock) and ours.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(60);

/// Why an endpoint could not be built.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// Our certificate is unusable.
    #[error("own certificate: {0}")]
    Certificate(#[from] PkiError),
    /// Our key is not the one our certificate certifies.
    #[error("the key does not match the certificate")]
    KeyMismatch,
}

/// Why a received packet was rejected. Each variant is counted in
/// [`PeerStats`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// Not a well-formed packet.
    #[error("malformed peer message: {0}")]
    Malformed(#[from] WireError),
    /// Addressed to another node.
    #[error("peer message addressed to another node")]
    WrongRecipient,
    /// Sequence outside the time window, or older than our start.
    #[error("stale peer message")]
    Stale,
    /// Sequence not above the highest already accepted from the sender.
    #[error("replayed peer message")]
    Replay,
    /// The sender's certificate does not verify.
    #[error("peer certificate rejected: {0}")]
    Certificate(VerifyError),
    /// The certificate's CN is not the sender prefix.
    #[error("peer certificate is not the sender's")]
    SenderMismatch,
    /// The signature does not verify.
    #[error("bad peer message signature")]
    BadSignature,
}

/// Counters of what an endpoint sent, accepted and dropped.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PeerStats {
    /// Packets sealed.
    pub sent: u64,
    /// Packets accepted.
    pub accepted: u64,
    /// Malformed packets dropped.
    pub malformed: u64,
    /// Packets for another node dropped.
    pub wrong_recipient: u64,
    /// Stale packets dropped.
    pub stale: u64,
    /// Replayed packets dropped.
    pub replayed: u64,
    /// Packets with a bad or foreign certificate dropped.
    pub bad_certificate: u64,
    /// Packets with a bad signature dropped.
    pub bad_signature: u64,
}

/// One node's end of the peer protocol: seals outgoing messages and opens
/// incoming ones. See the module documentation for the checks.
pub struct PeerEndpoint {
    me: NodePrefix,
    key: SigningKey,
    cert: Vec<u8>,
    verifier: Verifier,
    window: Duration,
    floor: u64,
    last_sent: u64,
    seen: HashMap<NodePrefix, u64>,
    stats: PeerStats,
}

impl PeerEndpoint {
    /// An endpoint for the node holding `cert` and `key`, started at `now`.
    pub fn new(
        cert: &NodeCert,
        key: SigningKey,
        verifier: Verifier,
        now: SystemTime,
    ) -> Result<Self, SetupError> {
        let me = cert.prefix()?;
        if cert.public_key()? != key.verifying_key() {
            return Err(SetupError::KeyMismatch);
        }
        let floor = micros(now);
        Ok(Self {
            me,
            key,
            cert: cert.der().to_vec(),
            verifier,
            window: DEFAULT_WINDOW,
            floor,
            last_sent: 0,
            seen: HashMap::new(),
            stats: PeerStats::default(),
        })
    }

    /// Sets the clock tolerance (default [`DEFAULT_WINDOW`]).
    pub fn set_window(&mut self, window: Duration) {
        self.window = window;
    }

    /// Our prefix.
    pub fn me(&self) -> NodePrefix {
        self.me
    }

    /// The counters.
    pub fn stats(&self) -> PeerStats {
        self.stats
    }

    /// The certificate verifier, to update the revocation list.
    pub fn verifier_mut(&mut self) -> &mut Verifier {
        &mut self.verifier
    }

    /// Senders whose replay state is kept.
    pub fn tracked_senders(&self) -> usize {
        self.seen.len()
    }

    /// Writes a signed packet carrying `body` for `recipient` into `buf` and
    /// returns its length.
    pub fn seal(
        &mut self,
        recipient: NodePrefix,
        body: &Body<'_>,
        now: SystemTime,
        buf: &mut [u8],
    ) -> Result<usize, WireError> {
        let sequence = micros(now).max(self.last_sent + 1);
        let message = Message {
            sender: self.me,
            recipient,
            sequence,
            cert: &self.cert,
            body: *body,
        };
        let len = message.emit_unsigned(buf)?;
        let signed_end = len - wire::SIGNATURE_LEN;
        let signature = self.key.sign(&signing_input(&buf[..signed_end]));
        buf[signed_end..len].copy_from_slice(&signature.to_bytes());
        self.last_sent = sequence;
        self.stats.sent += 1;
        Ok(len)
    }

    /// Authenticates a received packet and returns its message.
    pub fn open<'a>(&mut self, bytes: &'a [u8], now: SystemTime) -> Result<Message<'a>, OpenError> {
        let result = self.check(bytes, now);
        let counter = match &result {
            Ok(_) => &mut self.stats.accepted,
            Err(OpenError::Malformed(_)) => &mut self.stats.malformed,
            Err(OpenError::WrongRecipient) => &mut self.stats.wrong_recipient,
            Err(OpenError::Stale) => &mut self.stats.stale,
            Err(OpenError::Replay) => &mut self.stats.replayed,
            Err(OpenError::Certificate(_) | OpenError::SenderMismatch) => {
                &mut self.stats.bad_certificate
            }
            Err(OpenError::BadSignature) => &mut self.stats.bad_signature,
        };
        *counter += 1;
        result
    }

    fn check<'a>(&mut self, bytes: &'a [u8], now: SystemTime) -> Result<Message<'a>, OpenError> {
        let packet = Packet::new_checked(bytes)?;
        let message = Message::parse(&packet)?;
        if message.recipient != self.me {
            return Err(OpenError::WrongRecipient);
        }
        let now_us = micros(now);
        let window = u64::try_from(self.window.as_micros()).unwrap_or(u64::MAX);
        if message.sequence < self.floor || message.sequence.abs_diff(now_us) > window {
            return Err(OpenError::Stale);
        }
        if self
            .seen
            .get(&message.sender)
            .is_some_and(|&highest| message.sequence <= highest)
        {
            return Err(OpenError::Replay);
        }
        let (cert, prefix) = self
            .verifier
            .verify_der(message.cert, now)
            .map_err(OpenError::Certificate)?;
        if prefix != message.sender {
            return Err(OpenError::SenderMismatch);
        }
        let key: VerifyingKey = cert
            .public_key()
            .map_err(|_| OpenError::Certificate(VerifyError::Malformed))?;
        let signature = Signature::from_bytes(&packet.signature());
        key.verify_strict(&signing_input(packet.signed()), &signature)
            .map_err(|_| OpenError::BadSignature)?;
        // Only authenticated packets move the replay state.
        self.seen.insert(message.sender, message.sequence);
        if self.seen.len() > 1024 {
            let oldest = now_us.saturating_sub(window);
            self.seen.retain(|_, &mut highest| highest >= oldest);
        }
        Ok(message)
    }
}

fn micros(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn signing_input(signed: &[u8]) -> Vec<u8> {
    let mut input = Vec::with_capacity(wire::SIGNATURE_CONTEXT.len() + signed.len());
    input.extend_from_slice(wire::SIGNATURE_CONTEXT);
    input.extend_from_slice(signed);
    input
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    use proptest::prelude::*;

    use super::*;
    use crate::node::{Address, Proto};
    use crate::pki::{generate_key, Ca, Csr, IssueRequest, Network};

    struct Net {
        ca: Ca,
        now: SystemTime,
    }

    impl Net {
        fn new() -> Self {
            let network: Network = "2001:db8:42::/48".parse().expect("network");
            Self {
                ca: Ca::generate(network, 10).expect("ca"),
                now: SystemTime::now(),
            }
        }

        fn cert(&self, value: u128, key: &SigningKey, serial: u64) -> NodeCert {
            let csr = Csr::generate(key, &[]).expect("csr");
            self.ca
                .issue(&IssueRequest {
                    csr: &csr,
                    prefix: prefix(value),
                    subject_serial: serial as u32,
                    serial,
                    not_before: self.now - Duration::from_secs(3600),
                    not_after: self.now + Duration::from_secs(86400),
                })
                .expect("issue")
        }

        fn node(&self, value: u128) -> (PeerEndpoint, NodeCert, SigningKey) {
            let key = generate_key();
            let cert = self.cert(value, &key, value as u64 + 100);
            let verifier = Verifier::new(&self.ca.cert_pem()).expect("verifier");
            let endpoint = PeerEndpoint::new(
                &cert,
                key.clone(),
                verifier,
                self.now - Duration::from_secs(1),
            )
            .expect("endpoint");
            (endpoint, cert, key)
        }
    }

    fn prefix(value: u128) -> NodePrefix {
        NodePrefix::new(value, 16).expect("prefix")
    }

    fn seal(from: &mut PeerEndpoint, to: u128, body: &Body<'_>, now: SystemTime) -> Vec<u8> {
        let mut buf = vec![0; wire::MAX_PACKET_LEN];
        let len = from.seal(prefix(to), body, now, &mut buf).expect("seal");
        buf.truncate(len);
        buf
    }

    fn addresses() -> Vec<Address> {
        vec![
            Address {
                ip: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
                port: 1194,
                proto: Proto::Udp,
            },
            Address {
                ip: IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 7)),
                port: 443,
                proto: Proto::Quic,
            },
        ]
    }

    #[test]
    fn every_message_type_round_trips() {
        let net = Net::new();
        let (mut a, _, _) = net.node(1);
        let (mut b, _, _) = net.node(2);
        let addrs = addresses();
        let neighbours = [prefix(3), prefix(4), NodePrefix::new(5, 24).expect("p")];
        let bodies = [
            Body::AddressRequest,
            Body::AddressReply(Addresses::List(&addrs)),
            Body::AddressReply(Addresses::List(&[])),
            Body::ConfigVersion(42),
            Body::RetireRequest { id: 7 },
            Body::RetireAck { id: 7 },
            Body::RetireNack { id: 7, reason: 2 },
            Body::InfoRequest,
            Body::Info {
                software: "re6st 0.1.0",
            },
            Body::TopologyRequest,
            Body::Topology(Prefixes::List(&neighbours)),
        ];
        for (i, body) in bodies.iter().enumerate() {
            let now = net.now + Duration::from_millis(i as u64);
            let bytes = seal(&mut a, 2, body, now);
            let message = b.open(&bytes, now).expect("open");
            assert_eq!(message.sender, prefix(1));
            assert_eq!(message.recipient, prefix(2));
            assert_eq!(&message.body, body);
        }
        assert_eq!(b.stats().accepted, bodies.len() as u64);
        assert_eq!(a.stats().sent, bodies.len() as u64);
    }

    #[test]
    fn known_bytes() {
        let message = Message {
            sender: prefix(1),
            recipient: NodePrefix::new(0x0203, 24).expect("p"),
            sequence: 0x0102_0304_0506_0708,
            cert: b"CERT",
            body: Body::AddressReply(Addresses::List(&[Address {
                ip: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
                port: 1194,
                proto: Proto::Tcp,
            }])),
        };
        let mut buf = [0xffu8; 200];
        let len = message.emit_unsigned(&mut buf).expect("emit");
        let mut expected = Vec::new();
        expected.extend_from_slice(b"r6\x01\x02");
        expected.extend_from_slice(&[0; 15]);
        expected.extend_from_slice(&[1, 16]);
        expected.extend_from_slice(&[0; 14]);
        expected.extend_from_slice(&[2, 3, 24]);
        expected.extend_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
        expected.extend_from_slice(&[0, 4, 0, 9]);
        expected.extend_from_slice(b"CERT");
        expected.extend_from_slice(&[1, 4, 192, 0, 2, 1, 0x04, 0xaa, 2]);
        expected.extend_from_slice(&[0; 64]);
        assert_eq!(&buf[..len], &expected[..]);
        let packet = Packet::new_checked(&buf[..len]).expect("packet");
        assert_eq!(packet.message_type(), MessageType::AddressReply);
        assert_eq!(packet.cert(), b"CERT");
        assert_eq!(Message::parse(&packet).expect("parse"), message);
    }

    #[test]
    fn malformed_packets_are_errors() {
        let net = Net::new();
        let (mut a, _, _) = net.node(1);
        let (mut b, _, _) = net.node(2);
        let bytes = seal(&mut a, 2, &Body::RetireNack { id: 1, reason: 0 }, net.now);
        // Every truncation and an extension.
        for len in 0..bytes.len() {
            assert!(matches!(
                b.open(&bytes[..len], net.now),
                Err(OpenError::Malformed(_))
            ));
        }
        let mut long = bytes.clone();
        long.push(0);
        assert_eq!(
            b.open(&long, net.now),
            Err(OpenError::Malformed(WireError::Trailing(
                "after the signature"
            )))
        );
        // (offset, new byte, expected wire error)
        let type_at = 3;
        let cases = [
            (0, b'x', WireError::BadMagic),
            (2, 9, WireError::Version(9)),
            (type_at, 99, WireError::UnknownType(99)),
            (type_at, 1, WireError::Trailing("body")),
            (20, 200, WireError::Invalid("sender prefix")),
        ];
        for (at, byte, error) in cases {
            let mut bad = bytes.clone();
            bad[at] = byte;
            assert_eq!(b.open(&bad, net.now), Err(OpenError::Malformed(error)));
        }
        assert_eq!(
            b.stats().malformed,
            bytes.len() as u64 + 1 + cases.len() as u64
        );
        assert_eq!(b.stats().accepted, 0);
    }

    #[test]
    fn relays_can_neither_forge_nor_redirect_nor_replay() {
        let net = Net::new();
        let (mut a, _, _) = net.node(1);
        let (mut b, _, _) = net.node(2);
        let (mut c, c_cert, c_key) = net.node(3);
        let now = net.now;
        let genuine = seal(&mut a, 2, &Body::RetireRequest { id: 5 }, now);

        // A flipped bit anywhere is rejected: every header and body byte,
        // a sample of the certificate and signature bytes (each check costs
        // two signature verifications).
        let body_start = genuine.len() - wire::SIGNATURE_LEN - 4;
        let positions = (0..wire::HEADER_LEN)
            .chain((wire::HEADER_LEN..body_start).step_by(13))
            .chain(body_start..genuine.len() - wire::SIGNATURE_LEN)
            .chain((genuine.len() - wire::SIGNATURE_LEN..genuine.len()).step_by(5));
        for i in positions {
            let mut bad = genuine.clone();
            bad[i] ^= 0x01;
            assert!(b.open(&bad, now).is_err(), "bit flip at {i} accepted");
        }
        // Wrong recipient: C cannot use what A sent to B.
        assert_eq!(c.open(&genuine, now), Err(OpenError::WrongRecipient));

        // C alters the body and re-signs with its own key, keeping A's
        // certificate: the signature fails.
        let mut forged = genuine.clone();
        let body_at = forged.len() - wire::SIGNATURE_LEN - 4;
        forged[body_at + 3] = 6;
        let end = forged.len() - wire::SIGNATURE_LEN;
        let sig = c_key.sign(&signing_input(&forged[..end]));
        forged[end..].copy_from_slice(&sig.to_bytes());
        assert_eq!(b.open(&forged, now), Err(OpenError::BadSignature));

        // C claims to be A but sends its own certificate.
        let message = Message {
            sender: prefix(1),
            recipient: prefix(2),
            sequence: micros(now) + 10,
            cert: c_cert.der(),
            body: Body::RetireRequest { id: 6 },
        };
        let mut buf = vec![0; 2048];
        let len = message.emit_unsigned(&mut buf).expect("emit");
        let end = len - wire::SIGNATURE_LEN;
        let sig = c_key.sign(&signing_input(&buf[..end]));
        buf[end..len].copy_from_slice(&sig.to_bytes());
        assert_eq!(b.open(&buf[..len], now), Err(OpenError::SenderMismatch));

        // A certificate from another CA.
        let other = Net::new();
        let key = generate_key();
        let foreign = other.cert(1, &key, 101);
        let message = Message {
            cert: foreign.der(),
            sequence: micros(now) + 20,
            ..message
        };
        let len = message.emit_unsigned(&mut buf).expect("emit");
        let end = len - wire::SIGNATURE_LEN;
        let sig = key.sign(&signing_input(&buf[..end]));
        buf[end..len].copy_from_slice(&sig.to_bytes());
        assert!(matches!(
            b.open(&buf[..len], now),
            Err(OpenError::Certificate(_))
        ));

        // The genuine one is accepted once, then replays are refused.
        assert!(b.open(&genuine, now).is_ok());
        assert_eq!(b.open(&genuine, now), Err(OpenError::Replay));
        // An older message sent before is refused too once a newer one was
        // accepted.
        let first = seal(&mut a, 2, &Body::InfoRequest, now);
        let second = seal(&mut a, 2, &Body::InfoRequest, now);
        assert!(b.open(&second, now).is_ok());
        assert_eq!(b.open(&first, now), Err(OpenError::Replay));
        // After B restarts, messages sent before are stale.
        let verifier = Verifier::new(&net.ca.cert_pem()).expect("verifier");
        let later = now + Duration::from_secs(1);
        let key = generate_key();
        let cert = net.cert(2, &key, 600);
        let mut b2 = PeerEndpoint::new(&cert, key, verifier, later).expect("endpoint");
        assert_eq!(b2.open(&genuine, later), Err(OpenError::Stale));
        let stats = b.stats();
        assert_eq!(stats.replayed, 2);
        assert_eq!(stats.accepted, 2);
        assert!(stats.bad_signature >= 1 && stats.bad_certificate >= 2);
        assert_eq!(c.stats().wrong_recipient, 1);
    }

    #[test]
    fn clock_window_and_revocation() {
        let net = Net::new();
        let (mut a, a_cert, _) = net.node(1);
        let (mut b, _, _) = net.node(2);
        // (sender clock offset s, receiver clock offset s, accepted?)
        let table: [(i64, i64, bool); 4] =
            [(0, 0, true), (30, 0, true), (0, 90, false), (120, 0, false)];
        let mut t = 10;
        for (send_off, recv_off, accepted) in table {
            t += 1;
            let base = net.now + Duration::from_secs(t);
            let at = |off: i64| base + Duration::from_secs(off.unsigned_abs());
            let bytes = seal(&mut a, 2, &Body::ConfigVersion(1), at(send_off));
            let result = b.open(&bytes, at(recv_off));
            assert_eq!(
                result.is_ok(),
                accepted,
                "{send_off}/{recv_off}: {result:?}"
            );
            if !accepted {
                assert_eq!(result, Err(OpenError::Stale));
            }
        }
        b.verifier_mut().set_revoked([a_cert.serial()]);
        let now = net.now + Duration::from_secs(300);
        let bytes = seal(&mut a, 2, &Body::ConfigVersion(2), now);
        assert_eq!(
            b.open(&bytes, now),
            Err(OpenError::Certificate(VerifyError::Revoked))
        );
    }

    #[test]
    fn replay_state_stays_bounded() {
        let net = Net::new();
        let (mut b, _, _) = net.node(2);
        let mut senders: Vec<PeerEndpoint> = (0..3).map(|i| net.node(10 + i).0).collect();
        for (i, s) in senders.iter_mut().enumerate() {
            let now = net.now + Duration::from_secs(i as u64);
            let bytes = seal(s, 2, &Body::InfoRequest, now);
            assert!(b.open(&bytes, now).is_ok());
        }
        assert_eq!(b.tracked_senders(), 3);
    }

    #[test]
    fn key_must_match_certificate() {
        let net = Net::new();
        let key = generate_key();
        let cert = net.cert(1, &key, 1);
        let verifier = Verifier::new(&net.ca.cert_pem()).expect("verifier");
        assert!(matches!(
            PeerEndpoint::new(&cert, generate_key(), verifier, net.now),
            Err(SetupError::KeyMismatch)
        ));
    }

    fn arb_address() -> impl Strategy<Value = Address> {
        (
            prop_oneof![
                any::<[u8; 4]>().prop_map(|b| IpAddr::V4(b.into())),
                any::<[u8; 16]>().prop_map(|b| IpAddr::V6(b.into())),
            ],
            any::<u16>(),
            any::<u8>(),
        )
            .prop_map(|(ip, port, proto)| Address {
                ip,
                port,
                proto: Proto::from(proto),
            })
    }

    fn arb_prefix() -> impl Strategy<Value = NodePrefix> {
        (1u8..=80).prop_flat_map(|len| {
            let max = u128::MAX >> (128 - u32::from(len));
            (0..=max).prop_map(move |v| NodePrefix::new(v, len).expect("in range"))
        })
    }

    proptest! {
        #[test]
        fn bodies_round_trip(
            addrs in proptest::collection::vec(arb_address(), 0..=wire::MAX_ADDRESSES),
            prefixes in proptest::collection::vec(arb_prefix(), 0..40),
            text in "[ -~é]{0,60}",
            n in any::<u64>(),
            id in any::<u32>(),
            reason in any::<u8>(),
            cert in proptest::collection::vec(any::<u8>(), 0..600),
            sender in arb_prefix(),
            recipient in arb_prefix(),
            kind in 0..10usize,
        ) {
            let body = match kind {
                0 => Body::AddressRequest,
                1 => Body::AddressReply(Addresses::List(&addrs)),
                2 => Body::ConfigVersion(n),
                3 => Body::RetireRequest { id },
                4 => Body::RetireAck { id },
                5 => Body::RetireNack { id, reason },
                6 => Body::InfoRequest,
                7 => Body::Info { software: &text },
                8 => Body::TopologyRequest,
                _ => Body::Topology(Prefixes::List(&prefixes)),
            };
            let message = Message { sender, recipient, sequence: n, cert: &cert, body };
            let mut buf = vec![0; wire::MAX_PACKET_LEN];
            let len = message.emit_unsigned(&mut buf).expect("emit");
            prop_assert_eq!(len, message.buffer_len());
            let packet = Packet::new_checked(&buf[..len]).expect("packet");
            let parsed = Message::parse(&packet).expect("parse");
            prop_assert_eq!(parsed, message);
            // Re-emitting the parsed (zero-copy) form gives the same bytes.
            let mut again = vec![0; wire::MAX_PACKET_LEN];
            let len2 = parsed.emit_unsigned(&mut again).expect("emit");
            prop_assert_eq!(&buf[..len], &again[..len2]);
        }

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            if let Ok(packet) = Packet::new_checked(&bytes[..]) {
                let _ = Message::parse(&packet);
            }
        }
    }
}
