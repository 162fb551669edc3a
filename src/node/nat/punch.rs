//! UDP hole punching coordinated through the mesh, and the transport
//! fallback order.
//!
//! When A wants a tunnel to B and neither can reach the other, A sends B a
//! [`PunchMessage::Request`] over the peer protocol (carried by the mesh)
//! with A's public UDP endpoint (learned from peers, see
//! [`super::learn::Learner::endpoint`]) and a delay. B answers
//! [`PunchMessage::Accept`] with its own public endpoint and starts sending
//! UDP handshakes to A's endpoint `delay` after receipt; A starts at `delay`
//! after the answer arrived minus half the round trip, so both NATs open
//! their mapping at about the same moment. Each side sends
//! [`PunchConfig::attempts`] handshakes every [`PunchConfig::interval`].
//! The tunnel coming up ends the session ([`PunchEvent::Succeeded`]); no
//! tunnel by [`PunchConfig::timeout`] after the start is a failure
//! ([`PunchEvent::Failed`]): the mesh keeps routing through other nodes.
//!
//! [`fallback`] picks the next transport to try towards a peer whose udp
//! handshakes failed.
//!
//! Sans-I/O: time is an argument, request ids come from an injected RNG.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::RngCore;

use crate::node::peer_proto::wire::Body;
use crate::node::{Address, Proto};

/// Timers and limits of hole punching.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PunchConfig {
    /// Between the request's receipt and the first handshake; covers the
    /// answer's trip back.
    pub delay: Duration,
    /// Between two handshakes to the peer's endpoint.
    pub interval: Duration,
    /// Handshakes sent per side.
    pub attempts: u8,
    /// After the start, how long to wait for the tunnel.
    pub timeout: Duration,
    /// How long to wait for the peer's answer to a request.
    pub answer_timeout: Duration,
    /// Sessions at the same time at most (more requests are refused).
    pub max_sessions: usize,
}

impl Default for PunchConfig {
    fn default() -> Self {
        Self {
            delay: Duration::from_millis(1000),
            interval: Duration::from_millis(250),
            attempts: 8,
            timeout: Duration::from_secs(10),
            answer_timeout: Duration::from_secs(5),
            max_sessions: 16,
        }
    }
}

/// A hole-punching peer-protocol message, owned (see the matching
/// [`Body`] variants).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PunchMessage {
    /// Please punch towards `endpoint` from `delay_ms` after receipt.
    Request {
        /// Matches the answer to the request.
        id: u32,
        /// The requester's public UDP endpoint.
        endpoint: Address,
        /// Milliseconds.
        delay_ms: u16,
    },
    /// Agreed: punching towards the requester from `delay_ms` after this
    /// was sent.
    Accept {
        /// The request's id.
        id: u32,
        /// The answerer's public UDP endpoint.
        endpoint: Address,
        /// Milliseconds.
        delay_ms: u16,
    },
    /// Refused.
    Refuse {
        /// The request's id.
        id: u32,
        /// Why.
        reason: RefuseReason,
    },
}

/// Why a peer refused to punch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefuseReason {
    /// No reason given.
    Unspecified,
    /// It does not know its public UDP endpoint.
    NoEndpoint,
    /// It has too many punching sessions.
    Busy,
    /// It does not want a tunnel with us.
    NotWanted,
    /// A code point this version does not know.
    Unknown(u8),
}

impl From<u8> for RefuseReason {
    fn from(code: u8) -> Self {
        match code {
            0 => Self::Unspecified,
            1 => Self::NoEndpoint,
            2 => Self::Busy,
            3 => Self::NotWanted,
            other => Self::Unknown(other),
        }
    }
}

impl From<RefuseReason> for u8 {
    fn from(reason: RefuseReason) -> Self {
        match reason {
            RefuseReason::Unspecified => 0,
            RefuseReason::NoEndpoint => 1,
            RefuseReason::Busy => 2,
            RefuseReason::NotWanted => 3,
            RefuseReason::Unknown(other) => other,
        }
    }
}

impl PunchMessage {
    /// The peer-protocol body carrying this message.
    pub fn to_body(self) -> Body<'static> {
        match self {
            Self::Request {
                id,
                endpoint,
                delay_ms,
            } => Body::PunchRequest {
                id,
                endpoint,
                delay_ms,
            },
            Self::Accept {
                id,
                endpoint,
                delay_ms,
            } => Body::PunchAccept {
                id,
                endpoint,
                delay_ms,
            },
            Self::Refuse { id, reason } => Body::PunchRefuse {
                id,
                reason: reason.into(),
            },
        }
    }

    /// The message a received body carries, if it is a punching one.
    pub fn from_body(body: &Body<'_>) -> Option<Self> {
        Some(match *body {
            Body::PunchRequest {
                id,
                endpoint,
                delay_ms,
            } => Self::Request {
                id,
                endpoint,
                delay_ms,
            },
            Body::PunchAccept {
                id,
                endpoint,
                delay_ms,
            } => Self::Accept {
                id,
                endpoint,
                delay_ms,
            },
            Body::PunchRefuse { id, reason } => Self::Refuse {
                id,
                reason: reason.into(),
            },
            _ => return None,
        })
    }
}

/// What the shell must do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PunchAction<P> {
    /// Send `message` to `peer` over the peer protocol.
    Send {
        /// The recipient.
        peer: P,
        /// What to send.
        message: PunchMessage,
    },
    /// Send a UDP tunnel handshake to `peer` at `endpoint` (from our UDP
    /// transport's socket, so the NAT mapping is the one peers observed).
    Handshake {
        /// The peer (the prefix the handshake expects).
        peer: P,
        /// Its public endpoint.
        endpoint: SocketAddr,
        /// 0 for the first handshake of the session, then 1, 2, ...
        attempt: u8,
    },
}

/// How a session ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PunchEvent<P> {
    /// The tunnel came up.
    Succeeded {
        /// The peer.
        peer: P,
    },
    /// No tunnel: route through the mesh (or try another transport).
    Failed {
        /// The peer.
        peer: P,
        /// Why.
        reason: PunchFailure,
    },
}

/// Why punching failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PunchFailure {
    /// We do not know our own public UDP endpoint.
    NoEndpoint,
    /// The peer did not answer the request.
    NoAnswer,
    /// The peer refused.
    Refused(RefuseReason),
    /// Handshakes were sent but no tunnel came up (symmetric NAT, UDP
    /// blocked).
    TimedOut,
}

/// The hole-punching coordinator. See the module documentation.
#[derive(Debug)]
pub struct Puncher<P, R: RngCore> {
    config: PunchConfig,
    rng: R,
    sessions: HashMap<P, Session>,
    actions: VecDeque<PunchAction<P>>,
    events: VecDeque<PunchEvent<P>>,
}

#[derive(Clone, Copy, Debug)]
enum Session {
    /// We asked; waiting for the answer until `deadline`.
    Asked {
        id: u32,
        sent: Instant,
        deadline: Instant,
    },
    /// Both agreed: handshakes to `endpoint` from `next`, until `until`.
    Punching {
        endpoint: SocketAddr,
        next: Instant,
        sent: u8,
        until: Instant,
    },
}

impl<P: Clone + Eq + Hash, R: RngCore> Puncher<P, R> {
    /// A coordinator with no session.
    pub fn new(config: PunchConfig, rng: R) -> Self {
        Self {
            config,
            rng,
            sessions: HashMap::new(),
            actions: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    /// Whether a session with `peer` is under way.
    pub fn is_active(&self, peer: &P) -> bool {
        self.sessions.contains_key(peer)
    }

    /// How many sessions are under way.
    pub fn active(&self) -> usize {
        self.sessions.len()
    }

    /// Command: punch towards `peer`, announcing `ours`, our public UDP
    /// endpoint (`None` fails at once with [`PunchFailure::NoEndpoint`]).
    /// Does nothing while a session with `peer` is under way.
    pub fn connect(&mut self, peer: P, ours: Option<SocketAddr>, now: Instant) {
        if self.sessions.contains_key(&peer) {
            return;
        }
        let Some(ours) = ours else {
            self.events.push_back(PunchEvent::Failed {
                peer,
                reason: PunchFailure::NoEndpoint,
            });
            return;
        };
        let id = self.rng.next_u32();
        self.sessions.insert(
            peer.clone(),
            Session::Asked {
                id,
                sent: now,
                deadline: now + self.config.answer_timeout,
            },
        );
        self.actions.push_back(PunchAction::Send {
            peer,
            message: PunchMessage::Request {
                id,
                endpoint: udp(ours),
                delay_ms: millis(self.config.delay),
            },
        });
    }

    /// A punching message from `peer`; `ours` is our public UDP endpoint
    /// (to answer a request), `wanted` whether we accept a tunnel with this
    /// peer at all.
    pub fn handle_message(
        &mut self,
        peer: P,
        message: PunchMessage,
        ours: Option<SocketAddr>,
        wanted: bool,
        now: Instant,
    ) {
        match message {
            PunchMessage::Request {
                id,
                endpoint,
                delay_ms,
            } => self.handle_request(peer, id, endpoint, delay_ms, ours, wanted, now),
            PunchMessage::Accept {
                id,
                endpoint,
                delay_ms,
            } => {
                let Some(&Session::Asked {
                    id: asked, sent, ..
                }) = self.sessions.get(&peer)
                else {
                    return;
                };
                if asked != id || endpoint.proto != Proto::Udp {
                    return;
                }
                // The peer starts `delay` after sending its answer, which
                // left about half a round trip ago.
                let half_rtt = now.saturating_duration_since(sent) / 2;
                let delay = Duration::from_millis(u64::from(delay_ms));
                let start = now + delay.saturating_sub(half_rtt);
                self.start(peer, endpoint, start);
            }
            PunchMessage::Refuse { id, reason } => {
                if let Some(&Session::Asked { id: asked, .. }) = self.sessions.get(&peer) {
                    if asked == id {
                        self.sessions.remove(&peer);
                        self.events.push_back(PunchEvent::Failed {
                            peer,
                            reason: PunchFailure::Refused(reason),
                        });
                    }
                }
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn handle_request(
        &mut self,
        peer: P,
        id: u32,
        theirs: Address,
        delay_ms: u16,
        ours: Option<SocketAddr>,
        wanted: bool,
        now: Instant,
    ) {
        let refuse = if !wanted {
            Some(RefuseReason::NotWanted)
        } else if ours.is_none() || theirs.proto != Proto::Udp || theirs.port == 0 {
            Some(RefuseReason::NoEndpoint)
        } else if !self.sessions.contains_key(&peer)
            && self.sessions.len() >= self.config.max_sessions
        {
            Some(RefuseReason::Busy)
        } else {
            None
        };
        let (Some(ours), None) = (ours, refuse) else {
            self.actions.push_back(PunchAction::Send {
                peer,
                message: PunchMessage::Refuse {
                    id,
                    reason: refuse.unwrap_or(RefuseReason::Unspecified),
                },
            });
            return;
        };
        // Both asked each other at once: their request wins on both sides
        // (each answers the other's), so both punch.
        self.actions.push_back(PunchAction::Send {
            peer: peer.clone(),
            message: PunchMessage::Accept {
                id,
                endpoint: udp(ours),
                delay_ms,
            },
        });
        let start = now + Duration::from_millis(u64::from(delay_ms));
        self.start(peer, theirs, start);
    }

    fn start(&mut self, peer: P, endpoint: Address, start: Instant) {
        self.sessions.insert(
            peer,
            Session::Punching {
                endpoint: SocketAddr::new(endpoint.ip, endpoint.port),
                next: start,
                sent: 0,
                until: start + self.config.timeout,
            },
        );
    }

    /// A udp tunnel with `peer` came up (by punching or otherwise): the
    /// session succeeded.
    pub fn handle_tunnel_up(&mut self, peer: &P) {
        if let Some((peer, _)) = self.sessions.remove_entry(peer) {
            self.events.push_back(PunchEvent::Succeeded { peer });
        }
    }

    /// Command: give up on `peer` without an event (e.g. it was revoked).
    pub fn cancel(&mut self, peer: &P) {
        self.sessions.remove(peer);
        self.actions.retain(|a| match a {
            PunchAction::Send { peer: p, .. } | PunchAction::Handshake { peer: p, .. } => p != peer,
        });
    }

    /// Sends due handshakes and ends sessions whose time is up.
    pub fn handle_timeout(&mut self, now: Instant) {
        let mut ended = Vec::new();
        for (peer, session) in &mut self.sessions {
            match session {
                Session::Asked { deadline, .. } if *deadline <= now => {
                    ended.push((peer.clone(), PunchFailure::NoAnswer));
                }
                Session::Asked { .. } => {}
                Session::Punching {
                    endpoint,
                    next,
                    sent,
                    until,
                } => {
                    if *until <= now {
                        ended.push((peer.clone(), PunchFailure::TimedOut));
                        continue;
                    }
                    if *next <= now && *sent < self.config.attempts {
                        self.actions.push_back(PunchAction::Handshake {
                            peer: peer.clone(),
                            endpoint: *endpoint,
                            attempt: *sent,
                        });
                        *sent += 1;
                        *next = now + self.config.interval;
                    }
                }
            }
        }
        for (peer, reason) in ended {
            self.sessions.remove(&peer);
            self.events.push_back(PunchEvent::Failed { peer, reason });
        }
    }

    /// The next thing to send.
    pub fn poll_action(&mut self) -> Option<PunchAction<P>> {
        self.actions.pop_front()
    }

    /// The next session outcome.
    pub fn poll_event(&mut self) -> Option<PunchEvent<P>> {
        self.events.pop_front()
    }

    /// When [`Puncher::handle_timeout`] must run next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.sessions
            .values()
            .map(|s| match *s {
                Session::Asked { deadline, .. } => deadline,
                Session::Punching {
                    next, sent, until, ..
                } => {
                    if sent < self.config.attempts {
                        next.min(until)
                    } else {
                        until
                    }
                }
            })
            .min()
    }
}

fn udp(endpoint: SocketAddr) -> Address {
    Address {
        ip: endpoint.ip(),
        port: endpoint.port(),
        proto: Proto::Udp,
    }
}

fn millis(d: Duration) -> u16 {
    u16::try_from(d.as_millis()).unwrap_or(u16::MAX)
}

/// The next address to try towards a peer: its `announced` addresses are
/// in its order of preference; skip transports we disabled
/// (`--disable-proto`), transports this version does not know, and those
/// that already `failed` towards this peer. `None`: every transport failed,
/// route through the mesh.
pub fn fallback(announced: &[Address], disabled: &[Proto], failed: &[Proto]) -> Option<Address> {
    announced
        .iter()
        .find(|a| {
            !matches!(a.proto, Proto::Unknown(_))
                && !disabled.contains(&a.proto)
                && !failed.contains(&a.proto)
        })
        .copied()
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    use super::*;

    type Node = Puncher<u32, StdRng>;

    fn ep(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    /// Two punchers exchanging messages with a one-way latency, on a
    /// virtual clock; returns the handshakes each sent and when.
    struct Pair {
        a: Node,
        b: Node,
        latency: Duration,
        /// (arrival, to_b, message)
        wire: Vec<(Instant, bool, PunchMessage)>,
        handshakes: Vec<(Instant, u32, SocketAddr)>,
    }

    const A: u32 = 1;
    const B: u32 = 2;

    impl Pair {
        fn new(latency: Duration) -> Self {
            Self {
                a: Puncher::new(PunchConfig::default(), StdRng::seed_from_u64(1)),
                b: Puncher::new(PunchConfig::default(), StdRng::seed_from_u64(2)),
                latency,
                wire: Vec::new(),
                handshakes: Vec::new(),
            }
        }

        fn pump(&mut self, now: Instant) {
            for (node, me) in [(&mut self.a, A), (&mut self.b, B)] {
                node.handle_timeout(now);
                while let Some(action) = node.poll_action() {
                    match action {
                        PunchAction::Send { peer, message } => {
                            assert_ne!(peer, me);
                            self.wire.push((now + self.latency, me == A, message));
                        }
                        PunchAction::Handshake { endpoint, .. } => {
                            self.handshakes.push((now, me, endpoint));
                        }
                    }
                }
            }
            let (due, later): (Vec<_>, Vec<_>) =
                self.wire.drain(..).partition(|(at, _, _)| *at <= now);
            self.wire = later;
            for (_, to_b, message) in due {
                if to_b {
                    self.b
                        .handle_message(A, message, Some(ep("203.0.113.2:1194")), true, now);
                } else {
                    self.a
                        .handle_message(B, message, Some(ep("198.51.100.1:1194")), true, now);
                }
            }
        }

        fn run(&mut self, from: Instant, to: Instant) {
            let mut now = from;
            while now <= to {
                self.pump(now);
                now += Duration::from_millis(10);
            }
        }
    }

    #[test]
    fn both_sides_punch_at_about_the_same_time() {
        let t0 = Instant::now();
        let mut p = Pair::new(Duration::from_millis(80));
        p.a.connect(B, Some(ep("198.51.100.1:1194")), t0);
        p.run(t0, t0 + Duration::from_secs(3));
        let first = |who: u32| {
            p.handshakes
                .iter()
                .find(|(_, w, _)| *w == who)
                .map(|&(at, _, to)| (at, to))
                .unwrap()
        };
        let (a_at, a_to) = first(A);
        let (b_at, b_to) = first(B);
        assert_eq!(a_to, ep("203.0.113.2:1194"));
        assert_eq!(b_to, ep("198.51.100.1:1194"));
        let skew = if a_at > b_at {
            a_at - b_at
        } else {
            b_at - a_at
        };
        assert!(skew <= Duration::from_millis(30), "skew {skew:?}");
        // B starts `delay` after the request reached it.
        let expect_b = t0 + Duration::from_millis(80) + PunchConfig::default().delay;
        assert!(b_at >= expect_b && b_at <= expect_b + Duration::from_millis(20));
        // Repeated `attempts` times each.
        let count = |who: u32| p.handshakes.iter().filter(|h| h.1 == who).count();
        assert_eq!(count(A), 8);
        assert_eq!(count(B), 8);
        // The tunnel comes up on both sides.
        p.a.handle_tunnel_up(&B);
        p.b.handle_tunnel_up(&A);
        assert_eq!(p.a.poll_event(), Some(PunchEvent::Succeeded { peer: B }));
        assert_eq!(p.b.poll_event(), Some(PunchEvent::Succeeded { peer: A }));
        assert_eq!(p.a.active() + p.b.active(), 0);
        assert_eq!(p.a.poll_timeout(), None);
    }

    #[test]
    fn no_tunnel_means_failure_after_the_timeout() {
        let t0 = Instant::now();
        let mut p = Pair::new(Duration::from_millis(20));
        p.a.connect(B, Some(ep("198.51.100.1:1194")), t0);
        p.run(t0, t0 + Duration::from_secs(12));
        assert_eq!(
            p.a.poll_event(),
            Some(PunchEvent::Failed {
                peer: B,
                reason: PunchFailure::TimedOut
            })
        );
        assert_eq!(
            p.b.poll_event(),
            Some(PunchEvent::Failed {
                peer: A,
                reason: PunchFailure::TimedOut
            })
        );
        assert!(!p.a.is_active(&B));
    }

    #[test]
    fn refusals_silence_and_missing_endpoints() {
        let t0 = Instant::now();
        let mut a: Node = Puncher::new(PunchConfig::default(), StdRng::seed_from_u64(1));
        a.connect(B, None, t0);
        assert_eq!(
            a.poll_event(),
            Some(PunchEvent::Failed {
                peer: B,
                reason: PunchFailure::NoEndpoint
            })
        );
        assert_eq!(a.poll_action(), None);

        // B does not know its endpoint: it refuses.
        let mut b: Node = Puncher::new(PunchConfig::default(), StdRng::seed_from_u64(2));
        a.connect(B, Some(ep("198.51.100.1:1194")), t0);
        let Some(PunchAction::Send { message, .. }) = a.poll_action() else {
            panic!("expected a request");
        };
        b.handle_message(A, message, None, true, t0);
        let Some(PunchAction::Send {
            message: answer, ..
        }) = b.poll_action()
        else {
            panic!("expected an answer");
        };
        assert!(matches!(
            answer,
            PunchMessage::Refuse {
                reason: RefuseReason::NoEndpoint,
                ..
            }
        ));
        assert!(!b.is_active(&A));
        a.handle_message(B, answer, None, true, t0);
        assert_eq!(
            a.poll_event(),
            Some(PunchEvent::Failed {
                peer: B,
                reason: PunchFailure::Refused(RefuseReason::NoEndpoint)
            })
        );

        // No answer at all.
        a.connect(B, Some(ep("198.51.100.1:1194")), t0);
        a.poll_action();
        let deadline = t0 + PunchConfig::default().answer_timeout;
        assert_eq!(a.poll_timeout(), Some(deadline));
        a.handle_timeout(deadline);
        assert_eq!(
            a.poll_event(),
            Some(PunchEvent::Failed {
                peer: B,
                reason: PunchFailure::NoAnswer
            })
        );

        // An answer with a wrong id is ignored; an unwanted peer is refused.
        a.connect(B, Some(ep("198.51.100.1:1194")), t0);
        a.poll_action();
        let forged = PunchMessage::Accept {
            id: 12345,
            endpoint: "203.0.113.2,1194,udp".parse().unwrap(),
            delay_ms: 0,
        };
        a.handle_message(B, forged, None, true, t0);
        assert!(matches!(a.sessions.get(&B), Some(Session::Asked { .. })));
        b.handle_message(
            A,
            PunchMessage::Request {
                id: 1,
                endpoint: "198.51.100.1,1194,udp".parse().unwrap(),
                delay_ms: 100,
            },
            Some(ep("203.0.113.2:1194")),
            false,
            t0,
        );
        assert!(matches!(
            b.poll_action(),
            Some(PunchAction::Send {
                message: PunchMessage::Refuse {
                    reason: RefuseReason::NotWanted,
                    ..
                },
                ..
            })
        ));
    }

    #[test]
    fn busy_peers_refuse_and_cancel_drops_pending_work() {
        let t0 = Instant::now();
        let config = PunchConfig {
            max_sessions: 1,
            ..PunchConfig::default()
        };
        let mut b: Puncher<u32, StdRng> = Puncher::new(config, StdRng::seed_from_u64(2));
        let request = |id| PunchMessage::Request {
            id,
            endpoint: "198.51.100.1,1194,udp".parse().unwrap(),
            delay_ms: 100,
        };
        let ours = Some(ep("203.0.113.2:1194"));
        b.handle_message(10, request(1), ours, true, t0);
        b.handle_message(11, request(2), ours, true, t0);
        let answers: Vec<_> = std::iter::from_fn(|| b.poll_action()).collect();
        assert!(matches!(
            answers[0],
            PunchAction::Send {
                message: PunchMessage::Accept { id: 1, .. },
                ..
            }
        ));
        assert!(matches!(
            answers[1],
            PunchAction::Send {
                message: PunchMessage::Refuse {
                    id: 2,
                    reason: RefuseReason::Busy
                },
                ..
            }
        ));
        b.handle_timeout(t0 + Duration::from_millis(100));
        b.cancel(&10);
        assert_eq!(b.poll_action(), None);
        assert_eq!(b.active(), 0);
        assert_eq!(b.poll_event(), None);
    }

    #[test]
    fn messages_map_to_bodies_and_back() {
        let endpoint: Address = "198.51.100.1,1194,udp".parse().unwrap();
        for message in [
            PunchMessage::Request {
                id: 1,
                endpoint,
                delay_ms: 1000,
            },
            PunchMessage::Accept {
                id: 2,
                endpoint,
                delay_ms: 0,
            },
            PunchMessage::Refuse {
                id: 3,
                reason: RefuseReason::Unknown(77),
            },
        ] {
            assert_eq!(PunchMessage::from_body(&message.to_body()), Some(message));
        }
        assert_eq!(PunchMessage::from_body(&Body::InfoRequest), None);
        for code in 0..=255u8 {
            assert_eq!(u8::from(RefuseReason::from(code)), code);
        }
    }

    type FallbackCase<'a> = (&'a [Address], &'a [Proto], &'a [Proto], Option<usize>);

    #[test]
    fn fallback_order() {
        let peer: Vec<Address> = [
            "198.51.100.1,1194,udp",
            "198.51.100.1,1195,tcp",
            "198.51.100.1,443,quic",
        ]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
        let unknown = Address {
            proto: Proto::Unknown(9),
            ..peer[0]
        };
        let cases: &[FallbackCase<'_>] = &[
            (&peer, &[], &[], Some(0)),
            (&peer, &[], &[Proto::Udp], Some(1)),
            (&peer, &[Proto::Tcp], &[Proto::Udp], Some(2)),
            (&peer, &[], &[Proto::Udp, Proto::Tcp], Some(2)),
            (&peer, &[Proto::Quic], &[Proto::Udp, Proto::Tcp], None),
            (&peer, &[Proto::Udp, Proto::Tcp, Proto::Quic], &[], None),
            (&[], &[], &[], None),
        ];
        for (announced, disabled, failed, expect) in cases {
            assert_eq!(
                fallback(announced, disabled, failed),
                expect.map(|i| peer[i]),
                "disabled {disabled:?} failed {failed:?}"
            );
        }
        assert_eq!(fallback(&[unknown, peer[1]], &[], &[]), Some(peer[1]));
    }
}
