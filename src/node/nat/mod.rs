//! Reachability behind NAT (issue 6): the building blocks the mesh loop
//! drives.
//!
//! - [`upnp`]: UPnP IGD port mapping, a sans-I/O [`upnp::Mapper`] and its
//!   tokio shell [`upnp::start`].
//! - [`learn`]: our public address learned from what peers observe
//!   (`--ip any`), and what it says about the NAT.
//! - [`punch`]: UDP hole punching coordinated over the peer protocol, and
//!   the transport fallback order.
//! - [`reachability`]: whether others can reach us, hence whether the
//!   tunnel policy limits itself to 2 outgoing tunnels.
//!
//! # How the mesh loop drives them
//!
//! - **UPnP** (`--ip upnp`, or no `--ip`): at start,
//!   `upnp::start(UpnpConfig::default(), upnp::wanted(&pp), rng)` (`pp`:
//!   `options.pp` as `(port, proto)` pairs) inside
//!   the runtime; watch `handle.status()` and, on each change, replace the
//!   UPnP-sourced announced addresses with the `mapped` entries (external
//!   IP + external port + transport; `UpnpStatus::announced` builds the
//!   `control::AnnouncedAddress`es, source `upnp`); put the status in
//!   `re6st status`. On shutdown, `handle.stop().await` before closing the
//!   transports (it removes every mapping).
//! - **Learning** (`--ip any`, and alongside UPnP): when a tunnel comes up
//!   or roams, send the peer `Body::Observed(addr)` with the underlay
//!   address the tunnel event reports for it (its transport as `proto`). On
//!   receiving `Observed` from peer P: `learner.handle_observed(P, addr,
//!   now)`; on revocation or tunnel loss: `handle_peer_gone`; arm
//!   `poll_timeout` and call `handle_timeout`; on
//!   `LearnEvent::PublicIp(ip)` re-announce `learner.announced(&pp)`
//!   (source `peers`) and answer `AddressRequest`s with them.
//! - **Reachability**: recompute [`reachability`] whenever the above
//!   change; while [`Reachability::limits_tunnels`], cap outgoing tunnels
//!   at 2.
//! - **Punching**: when a wanted peer P's addresses all failed and neither
//!   side is reachable, `puncher.connect(P, learner.endpoint(Proto::Udp),
//!   now)`. Feed `PunchMessage::from_body` of received peer messages to
//!   `handle_message(P, msg, learner.endpoint(Proto::Udp), wanted, now)`.
//!   Drain `poll_action`: `Send` -> seal `message.to_body()` to P;
//!   `Handshake { attempt: 0 }` -> `udp_tunnels.connect(endpoint,
//!   Some(P))`, later attempts -> a fresh handshake to the same endpoint if
//!   the transport does not retransmit by itself. A udp `TunnelEvent::Up`
//!   from P -> `handle_tunnel_up(&P)`. `PunchEvent::Failed` -> keep
//!   routing through the mesh and do not retry P before the next tunnel
//!   refresh.
//! - **Transport fallback**: after udp handshakes to a peer fail, connect
//!   to `punch::fallback(&its_addresses, &options.disabled,
//!   &failed_protos)`; `None` means route through the mesh.
//!
//! The peer-protocol messages they use are
//! [`Body::Observed`](crate::node::peer_proto::wire::Body::Observed),
//! `PunchRequest`, `PunchAccept` and `PunchRefuse` in
//! [`crate::node::peer_proto::wire`].

pub mod learn;
pub mod punch;
pub mod upnp;

use std::net::IpAddr;

/// Whether other nodes can open tunnels to us, which decides how many
/// outgoing tunnels we keep (at most 2 while [`Reachability::Unreachable`],
/// as re6stnet does, unless hole punching gives us more).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reachability {
    /// An address was configured (`--ip ADDRESS`), or peers see one of our
    /// own addresses: no NAT in the way.
    Public,
    /// The UPnP gateway forwards at least one of our ports.
    Mapped,
    /// Peers see an address that is not ours and nothing forwards to us.
    Unreachable,
    /// Not known yet (no mapping, not enough observations).
    Unknown,
}

impl Reachability {
    /// Whether the tunnel policy must limit itself to 2 outgoing tunnels.
    pub fn limits_tunnels(self) -> bool {
        self == Self::Unreachable
    }
}

/// Decides [`Reachability`] from what we know: whether addresses were
/// configured, whether UPnP maps a port, the public IP peers agree on
/// ([`learn::Learner::public_ip`]) and the host's own addresses.
pub fn reachability(
    configured: bool,
    upnp_mapped: bool,
    learned: Option<IpAddr>,
    local: &[IpAddr],
) -> Reachability {
    if configured {
        Reachability::Public
    } else if upnp_mapped {
        Reachability::Mapped
    } else {
        match learned {
            Some(ip) if local.contains(&ip) => Reachability::Public,
            Some(_) => Reachability::Unreachable,
            None => Reachability::Unknown,
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::{reachability, Reachability};
    use crate::node::peer_proto::wire::{Body, MessageType, SIGNATURE_LEN};
    use crate::node::peer_proto::{Message, Packet};
    use crate::node::{Address, Proto};

    #[test]
    fn reachability_table() {
        let public: std::net::IpAddr = "198.51.100.7".parse().unwrap();
        let lan: std::net::IpAddr = "192.168.1.2".parse().unwrap();
        let cases = [
            (true, false, None, &[lan][..], Reachability::Public),
            (false, true, Some(public), &[lan][..], Reachability::Mapped),
            (
                false,
                false,
                Some(public),
                &[lan, public][..],
                Reachability::Public,
            ),
            (
                false,
                false,
                Some(public),
                &[lan][..],
                Reachability::Unreachable,
            ),
            (false, false, None, &[lan][..], Reachability::Unknown),
        ];
        for (configured, mapped, learned, local, expect) in cases {
            let got = reachability(configured, mapped, learned, local);
            assert_eq!(got, expect, "{configured} {mapped} {learned:?}");
            assert_eq!(got.limits_tunnels(), expect == Reachability::Unreachable);
        }
    }

    fn address() -> impl Strategy<Value = Address> {
        (
            prop_oneof![
                any::<[u8; 4]>().prop_map(std::net::IpAddr::from),
                any::<[u8; 16]>().prop_map(std::net::IpAddr::from),
            ],
            1..=u16::MAX,
            any::<u8>(),
        )
            .prop_map(|(ip, port, proto)| Address {
                ip,
                port,
                proto: Proto::from(proto),
            })
    }

    fn body() -> impl Strategy<Value = Body<'static>> {
        prop_oneof![
            address().prop_map(Body::Observed),
            (any::<u32>(), address(), any::<u16>()).prop_map(|(id, endpoint, delay_ms)| {
                Body::PunchRequest {
                    id,
                    endpoint,
                    delay_ms,
                }
            }),
            (any::<u32>(), address(), any::<u16>()).prop_map(|(id, endpoint, delay_ms)| {
                Body::PunchAccept {
                    id,
                    endpoint,
                    delay_ms,
                }
            }),
            (any::<u32>(), any::<u8>()).prop_map(|(id, reason)| Body::PunchRefuse { id, reason }),
        ]
    }

    proptest! {
        /// The NAT messages survive emit then parse unchanged.
        #[test]
        fn nat_bodies_round_trip(body in body()) {
            let mut buf = vec![0; body.buffer_len()];
            let len = body.emit(&mut buf).unwrap();
            prop_assert_eq!(len, buf.len());
            let parsed = Body::parse(body.message_type(), &buf).unwrap();
            prop_assert_eq!(parsed, body);
            // One byte short or one too many is an error, never a panic.
            prop_assert!(Body::parse(body.message_type(), &buf[..len - 1]).is_err());
            buf.push(0);
            prop_assert!(Body::parse(body.message_type(), &buf).is_err());
        }
    }

    #[test]
    fn nat_message_vectors() {
        // Observed 198.51.100.7:40000 udp.
        let observed = [4, 198, 51, 100, 7, 0x9c, 0x40, 1];
        assert_eq!(
            Body::parse(MessageType::Observed, &observed),
            Ok(Body::Observed("198.51.100.7,40000,udp".parse().unwrap()))
        );
        // PunchRequest id 9, 198.51.100.7:1194 udp, 1500 ms.
        let request = [0, 0, 0, 9, 4, 198, 51, 100, 7, 0x04, 0xaa, 1, 0x05, 0xdc];
        assert_eq!(
            Body::parse(MessageType::PunchRequest, &request),
            Ok(Body::PunchRequest {
                id: 9,
                endpoint: "198.51.100.7,1194,udp".parse().unwrap(),
                delay_ms: 1500,
            })
        );
        assert_eq!(
            Body::parse(MessageType::PunchRefuse, &[0, 0, 0, 9, 1]),
            Ok(Body::PunchRefuse { id: 9, reason: 1 })
        );
        let bad: &[(MessageType, &[u8])] = &[
            (MessageType::Observed, &[]),
            (MessageType::Observed, &[5, 1, 2, 3, 4, 0, 1, 1]),
            (MessageType::PunchRequest, &[0, 0, 0]),
            (
                MessageType::PunchAccept,
                &[0, 0, 0, 9, 4, 1, 2, 3, 4, 0, 1, 1, 0],
            ),
            (MessageType::PunchRefuse, &[0, 0, 0, 9]),
        ];
        for (t, bytes) in bad {
            assert!(Body::parse(*t, bytes).is_err(), "{t:?} {bytes:?}");
        }
        for (code, t) in [
            (11, MessageType::Observed),
            (12, MessageType::PunchRequest),
            (13, MessageType::PunchAccept),
            (14, MessageType::PunchRefuse),
        ] {
            assert_eq!(MessageType::from(code), t);
            assert_eq!(u8::from(t), code);
        }
    }

    /// The fuzz seeds parse and re-emit byte for byte, as the `peer_msg`
    /// target checks.
    #[test]
    fn nat_fuzz_seeds_round_trip() {
        let seeds: [&[u8]; 5] = [
            include_bytes!("../../../fuzz/corpus/peer_msg/observed_v4"),
            include_bytes!("../../../fuzz/corpus/peer_msg/observed_v6"),
            include_bytes!("../../../fuzz/corpus/peer_msg/punch_request"),
            include_bytes!("../../../fuzz/corpus/peer_msg/punch_accept"),
            include_bytes!("../../../fuzz/corpus/peer_msg/punch_refuse"),
        ];
        for seed in seeds {
            let packet = Packet::new_checked(seed).unwrap();
            let message = Message::parse(&packet).unwrap();
            let mut buf = vec![0; seed.len()];
            let len = message.emit_unsigned(&mut buf).unwrap();
            assert_eq!(len, seed.len());
            assert_eq!(&buf[..len - SIGNATURE_LEN], &seed[..len - SIGNATURE_LEN]);
        }
    }
}
