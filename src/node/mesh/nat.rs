//! The mesh loop's NAT bookkeeping (issue 6): what it learned from UPnP and
//! from peers, the resulting [`Reachability`], the announced addresses it
//! composes from them, the hole-punching sessions, and which transports
//! failed towards which peer.
//!
//! Pure decisions, no I/O: [`NatState`] is told what happened (a UPnP
//! status, an observation, a failed handshake) with the current time, and
//! answers what to announce, whether to cap the outgoing tunnels, whether to
//! punch and in which order to try a peer's addresses. The loop in
//! [`super`] performs the I/O (see the contract in [`crate::node::nat`]).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;

use super::addresses::Source;
use crate::node::control::NatStatus;
use crate::node::nat::learn::{LearnConfig, LearnEvent, Learner, NatKind};
use crate::node::nat::punch::{PunchConfig, PunchEvent, Puncher};
use crate::node::nat::upnp::UpnpStatus;
use crate::node::nat::{reachability, Reachability};
use crate::node::options::{AnnounceIp, PortProto};
use crate::node::{Address, Proto};
use crate::pki::NodePrefix;

/// How long a transport that failed towards a peer is tried last for it,
/// and how long a peer we could not punch a hole to is not punched again.
pub(crate) const FAILURE_MEMORY: Duration = Duration::from_secs(300);

/// What the NAT machinery decided, for the loop to act upon.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum NatChange {
    /// The announced addresses or the reachability may have changed:
    /// recompute them.
    Recompute,
}

/// Which NAT mechanisms `--ip` enables.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Mechanisms {
    /// UPnP port mapping: `--ip upnp`, or no `--ip` at all.
    pub(crate) upnp: bool,
    /// Learning from peers: `--ip any`, and alongside UPnP.
    pub(crate) learn: bool,
    /// Some address was given explicitly (`--ip ADDRESS`).
    pub(crate) configured: bool,
}

impl Mechanisms {
    /// The mechanisms `--ip` asks for (`client_mode`: none at all).
    pub(crate) fn of(ip: &[AnnounceIp], client_mode: bool) -> Self {
        if client_mode {
            return Self {
                upnp: false,
                learn: false,
                configured: false,
            };
        }
        let upnp = ip.is_empty() || ip.contains(&AnnounceIp::Upnp);
        let any = ip.contains(&AnnounceIp::Any);
        Self {
            upnp,
            learn: upnp || any,
            configured: ip.iter().any(|i| matches!(i, AnnounceIp::Address(_))),
        }
    }
}

/// NAT state of the running node. See the module documentation.
#[derive(Debug)]
pub(crate) struct NatState {
    mechanisms: Mechanisms,
    pp: Vec<(u16, Proto)>,
    upnp: Option<UpnpStatus>,
    learner: Learner<NodePrefix>,
    /// The puncher (driven by the loop, which drains its actions).
    pub(crate) puncher: Puncher<NodePrefix, StdRng>,
    host: Vec<IpAddr>,
    reach: Reachability,
    /// Per peer, the transports whose handshakes failed, and until when
    /// that is remembered.
    failed: BTreeMap<NodePrefix, Vec<(Proto, Instant)>>,
    /// Peers not to punch to again before this time.
    no_punch: BTreeMap<NodePrefix, Instant>,
    /// Counters for the status.
    punched: u64,
    punch_failed: u64,
}

impl NatState {
    /// The state at start: nothing learned, nothing mapped.
    pub(crate) fn new(mechanisms: Mechanisms, pp: &[PortProto], rng: StdRng) -> Self {
        let mut state = Self {
            mechanisms,
            pp: pp.iter().map(|p| (p.port, p.proto)).collect(),
            upnp: None,
            learner: Learner::new(LearnConfig::default()),
            puncher: Puncher::new(PunchConfig::default(), rng),
            host: Vec::new(),
            reach: Reachability::Unknown,
            failed: BTreeMap::new(),
            no_punch: BTreeMap::new(),
            punched: 0,
            punch_failed: 0,
        };
        state.update_reach();
        state
    }

    /// The (port, transport) pairs we listen on (`--pp`).
    pub(crate) fn pp(&self) -> &[(u16, Proto)] {
        &self.pp
    }

    /// Whether others can reach us.
    pub(crate) fn reachability(&self) -> Reachability {
        self.reach
    }

    /// Our public UDP endpoint as peers see it (what punching announces):
    /// the one enough peers agree on, else the one the only observers saw
    /// (a small network may give a NATed node a single public peer).
    pub(crate) fn udp_endpoint(&self) -> Option<SocketAddr> {
        self.learner
            .endpoint(Proto::Udp)
            .or_else(|| self.learner.sole_endpoint(Proto::Udp))
    }

    /// The host's addresses were read.
    pub(crate) fn set_host(&mut self, host: Vec<IpAddr>) -> Option<NatChange> {
        let host: Vec<IpAddr> = host.into_iter().map(|ip| ip.to_canonical()).collect();
        if host == self.host {
            return None;
        }
        self.host = host;
        self.update_reach();
        Some(NatChange::Recompute)
    }

    /// The UPnP mapper's status changed.
    pub(crate) fn set_upnp(&mut self, status: UpnpStatus) -> Option<NatChange> {
        if self.upnp.as_ref() == Some(&status) {
            return None;
        }
        self.upnp = Some(status);
        self.update_reach();
        Some(NatChange::Recompute)
    }

    /// `peer` (with a tunnel up to us) saw our tunnel packets come from
    /// `addr`.
    pub(crate) fn handle_observed(
        &mut self,
        peer: NodePrefix,
        addr: Address,
        now: Instant,
    ) -> Option<NatChange> {
        if !self.mechanisms.learn {
            return None;
        }
        let addr = Address {
            ip: addr.ip.to_canonical(),
            ..addr
        };
        self.learner.handle_observed(peer, addr, now);
        self.learn_events()
    }

    fn learn_events(&mut self) -> Option<NatChange> {
        let mut changed = false;
        while let Some(LearnEvent::PublicIp(_)) = self.learner.poll_event() {
            changed = true;
        }
        changed.then(|| {
            self.update_reach();
            NatChange::Recompute
        })
    }

    /// Recomputes the reachability. Once peers showed that we are behind
    /// a NAT, losing their observations (tunnels retired, observations too
    /// old) does not make us "unknown" again: the tunnel cap would be
    /// lifted and imposed again at every tunnel churn. Only a mapping or a
    /// public address of ours lifts it.
    fn update_reach(&mut self) {
        let mapped = self
            .upnp
            .as_ref()
            .is_some_and(|s| !s.addresses().is_empty());
        let learned = self.learner.public_ip();
        let new = reachability(self.mechanisms.configured, mapped, learned, &self.host);
        self.reach = match (self.reach, new) {
            (Reachability::Unreachable, Reachability::Unknown) => Reachability::Unreachable,
            (_, new) => new,
        };
    }

    /// The addresses to announce, by preference: `base` (configured and
    /// host addresses, as [`super::addresses::announced`] computes them),
    /// with the UPnP mappings after the configured ones and the address
    /// peers see us at after those. While we are unreachable the host's
    /// own addresses are left out: nobody outside could use them.
    pub(crate) fn announced(&self, base: &[(Address, Source)]) -> Vec<(Address, Source)> {
        let mut out: Vec<(Address, Source)> = Vec::new();
        let push = |a: Address, s: Source, out: &mut Vec<(Address, Source)>| {
            if !out.iter().any(|(b, _)| *b == a) {
                out.push((a, s));
            }
        };
        for (a, s) in base.iter().filter(|(_, s)| *s == Source::Configured) {
            push(*a, *s, &mut out);
        }
        if self.mechanisms.upnp {
            for a in self.upnp.iter().flat_map(UpnpStatus::addresses) {
                push(a, Source::Upnp, &mut out);
            }
        }
        if self.mechanisms.learn {
            // Peers seeing one of our own addresses is no news: it is
            // announced below as an interface address.
            let own = self
                .learner
                .public_ip()
                .is_some_and(|ip| self.host.contains(&ip));
            if !own {
                for a in self.learner.addresses(&self.pp) {
                    push(a, Source::Peers, &mut out);
                }
            }
        }
        if self.reach != Reachability::Unreachable {
            for (a, s) in base.iter().filter(|(_, s)| *s == Source::Interface) {
                push(*a, *s, &mut out);
            }
        }
        out
    }

    /// A peer's `addresses` in the order to try them: transports that
    /// failed towards it lately go last (kept, in case the failure was
    /// transient).
    pub(crate) fn order(
        &self,
        peer: NodePrefix,
        addresses: &[Address],
        now: Instant,
    ) -> Vec<Address> {
        let failed: Vec<Proto> = self
            .failed
            .get(&peer)
            .map(|l| {
                l.iter()
                    .filter(|(_, until)| *until > now)
                    .map(|(p, _)| *p)
                    .collect()
            })
            .unwrap_or_default();
        let (good, bad): (Vec<Address>, Vec<Address>) =
            addresses.iter().partition(|a| !failed.contains(&a.proto));
        good.into_iter().chain(bad).collect()
    }

    /// Handshakes over `proto` to `peer` failed.
    pub(crate) fn handle_proto_failed(&mut self, peer: NodePrefix, proto: Proto, now: Instant) {
        let list = self.failed.entry(peer).or_default();
        list.retain(|(p, until)| *p != proto && *until > now);
        list.push((proto, now + FAILURE_MEMORY));
    }

    /// Every direct address of `peer` failed: whether to punch a hole to
    /// it. Only when we cannot be reached ourselves (a reachable node is
    /// connected to by the peer, if it wants a tunnel), when no session is
    /// under way, and not again after a failure until [`FAILURE_MEMORY`]
    /// has passed.
    pub(crate) fn should_punch(&self, peer: NodePrefix, now: Instant) -> bool {
        !matches!(self.reach, Reachability::Public | Reachability::Mapped)
            && !self.puncher.is_active(&peer)
            && self.no_punch.get(&peer).is_none_or(|until| *until <= now)
    }

    /// The next punching outcome, with the bookkeeping done: a failed
    /// peer is not punched again before [`FAILURE_MEMORY`].
    pub(crate) fn poll_punch_event(&mut self, now: Instant) -> Option<PunchEvent<NodePrefix>> {
        let event = self.puncher.poll_event()?;
        match event {
            PunchEvent::Succeeded { .. } => self.punched += 1,
            PunchEvent::Failed { peer, .. } => {
                self.punch_failed += 1;
                self.no_punch.insert(peer, now + FAILURE_MEMORY);
            }
        }
        Some(event)
    }

    /// Forgets expired failures and old observations.
    pub(crate) fn handle_timeout(&mut self, now: Instant) -> Option<NatChange> {
        self.puncher.handle_timeout(now);
        self.learner.handle_timeout(now);
        self.no_punch.retain(|_, until| *until > now);
        self.failed.retain(|_, l| {
            l.retain(|(_, until)| *until > now);
            !l.is_empty()
        });
        self.learn_events()
    }

    /// When [`NatState::handle_timeout`] must run.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        [self.puncher.poll_timeout(), self.learner.poll_timeout()]
            .into_iter()
            .flatten()
            .min()
    }

    /// The status form.
    pub(crate) fn status(&self) -> NatStatus {
        let udp_port = self
            .pp
            .iter()
            .find(|(_, p)| *p == Proto::Udp)
            .map_or(0, |(port, _)| *port);
        NatStatus {
            reachability: reachability_name(self.reach).into(),
            upnp: self.upnp.clone().filter(|_| self.mechanisms.upnp),
            learning: self.mechanisms.learn,
            public_ip: self.learner.public_ip(),
            udp_endpoint: self.udp_endpoint(),
            nat_kind: nat_kind_name(self.learner.nat_kind(Proto::Udp, udp_port)).into(),
            observations: self.learner.len(),
            punching: self.puncher.active(),
            punched: self.punched,
            punch_failed: self.punch_failed,
        }
    }
}

fn reachability_name(r: Reachability) -> &'static str {
    match r {
        Reachability::Public => "public",
        Reachability::Mapped => "mapped",
        Reachability::Unreachable => "unreachable",
        Reachability::Unknown => "unknown",
    }
}

fn nat_kind_name(k: NatKind) -> &'static str {
    match k {
        NatKind::Unknown => "unknown",
        NatKind::PortPreserving => "port-preserving",
        NatKind::EndpointIndependent => "endpoint-independent",
        NatKind::Symmetric => "symmetric",
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;
    use crate::node::mesh::addresses::tests::pp;
    use crate::node::nat::upnp::MappingStatus;

    fn p(v: u128) -> NodePrefix {
        NodePrefix::new(v, 16).unwrap()
    }

    fn a(s: &str) -> Address {
        s.parse().unwrap()
    }

    fn state(ip: &[AnnounceIp]) -> NatState {
        NatState::new(Mechanisms::of(ip, false), &pp(), StdRng::seed_from_u64(1))
    }

    fn text(list: &[(Address, Source)]) -> Vec<String> {
        list.iter()
            .map(|(a, s)| format!("{a} {}", s.as_str()))
            .collect()
    }

    fn upnp_ready() -> UpnpStatus {
        UpnpStatus {
            state: "ready".into(),
            gateway: Some("10.1.0.1:5000".parse().unwrap()),
            external_ip: Some("198.51.100.9".parse().unwrap()),
            mappings: vec![MappingStatus {
                proto: "udp".into(),
                local_port: 1194,
                external_port: Some(40001),
                state: "mapped".into(),
            }],
        }
    }

    #[test]
    fn mechanisms_follow_the_ip_option() {
        let addr = AnnounceIp::Address("192.0.2.1".parse().unwrap());
        let cases = [
            (vec![], false, (true, true, false)),
            (vec![AnnounceIp::Upnp], false, (true, true, false)),
            (vec![AnnounceIp::Any], false, (false, true, false)),
            (vec![addr], false, (false, false, true)),
            (vec![addr, AnnounceIp::Any], false, (false, true, true)),
            (vec![], true, (false, false, false)),
        ];
        for (ip, client, (upnp, learn, configured)) in cases {
            let m = Mechanisms::of(&ip, client);
            assert_eq!(
                (m.upnp, m.learn, m.configured),
                (upnp, learn, configured),
                "{ip:?}"
            );
        }
    }

    #[test]
    fn learned_address_is_announced_and_caps_tunnels_until_mapped() {
        let now = Instant::now();
        let mut s = state(&[AnnounceIp::Any]);
        let lan = a("10.1.0.2,1194,udp");
        let base = vec![(lan, Source::Interface)];
        assert!(s.set_host(vec!["10.1.0.2".parse().unwrap()]).is_some());
        assert_eq!(s.reachability(), Reachability::Unknown);
        // One observation is not enough; two agreeing peers are. One is
        // enough to guess the endpoint to punch from, though.
        assert!(s
            .handle_observed(p(1), a("198.51.100.9,1194,udp"), now)
            .is_none());
        assert_eq!(s.udp_endpoint(), Some("198.51.100.9:1194".parse().unwrap()));
        assert_eq!(s.reachability(), Reachability::Unknown);
        assert_eq!(
            s.handle_observed(p(2), a("198.51.100.9,1194,udp"), now),
            Some(NatChange::Recompute)
        );
        assert_eq!(s.reachability(), Reachability::Unreachable);
        assert!(s.reachability().limits_tunnels());
        assert_eq!(s.udp_endpoint(), Some("198.51.100.9:1194".parse().unwrap()));
        // The host's own (private) address is no use to anyone outside.
        assert_eq!(
            text(&s.announced(&base)),
            ["198.51.100.9,1194,udp peers", "198.51.100.9,1194,tcp peers"]
        );
        // Observations going stale do not lift the cap.
        s.handle_timeout(now + LearnConfig::default().max_age);
        assert_eq!(s.status().observations, 0);
        assert_eq!(s.reachability(), Reachability::Unreachable);
        assert!(s.should_punch(p(7), now));
    }

    #[test]
    fn upnp_mapping_makes_us_reachable_and_comes_first() {
        let now = Instant::now();
        let mut s = state(&[]);
        s.set_host(vec!["10.1.0.2".parse().unwrap()]);
        s.handle_observed(p(1), a("198.51.100.9,1194,udp"), now);
        s.handle_observed(p(2), a("198.51.100.9,1194,udp"), now);
        assert_eq!(s.reachability(), Reachability::Unreachable);
        assert_eq!(s.set_upnp(upnp_ready()), Some(NatChange::Recompute));
        assert_eq!(s.set_upnp(upnp_ready()), None);
        assert_eq!(s.reachability(), Reachability::Mapped);
        assert!(!s.should_punch(p(7), now));
        let base = vec![(a("10.1.0.2,1194,udp"), Source::Interface)];
        assert_eq!(
            text(&s.announced(&base)),
            [
                "198.51.100.9,40001,udp upnp",
                "198.51.100.9,1194,udp peers",
                "198.51.100.9,1194,tcp peers",
                "10.1.0.2,1194,udp interface"
            ]
        );
        let status = s.status();
        assert_eq!(status.reachability, "mapped");
        assert_eq!(status.upnp.unwrap().state, "ready");
        // No gateway: not an error, just not mapped.
        let none = UpnpStatus {
            state: "no gateway".into(),
            ..UpnpStatus::default()
        };
        s.set_upnp(none);
        assert_eq!(s.reachability(), Reachability::Unreachable);
    }

    #[test]
    fn public_host_and_configured_addresses() {
        let now = Instant::now();
        let mut s = state(&[]);
        s.set_host(vec!["198.51.100.9".parse().unwrap()]);
        s.handle_observed(p(1), a("::ffff:198.51.100.9,1194,udp"), now);
        s.handle_observed(p(2), a("198.51.100.9,1194,udp"), now);
        assert_eq!(s.reachability(), Reachability::Public);
        let base = vec![(a("198.51.100.9,1194,udp"), Source::Interface)];
        assert_eq!(
            text(&s.announced(&base)),
            ["198.51.100.9,1194,udp interface"]
        );
        let addr = AnnounceIp::Address("192.0.2.1".parse().unwrap());
        let mut c = state(&[addr]);
        assert_eq!(c.reachability(), Reachability::Public);
        // Learning is off: observations are ignored.
        assert!(c
            .handle_observed(p(1), a("203.0.113.1,1,udp"), now)
            .is_none());
        let base = vec![(a("192.0.2.1,1194,udp"), Source::Configured)];
        assert_eq!(text(&c.announced(&base)), ["192.0.2.1,1194,udp configured"]);
    }

    #[test]
    fn failed_transports_go_last_for_a_while() {
        let now = Instant::now();
        let mut s = state(&[]);
        let addresses = [
            a("198.51.100.9,1194,udp"),
            a("198.51.100.9,1194,tcp"),
            a("198.51.100.8,1194,udp"),
        ];
        assert_eq!(s.order(p(5), &addresses, now), addresses);
        s.handle_proto_failed(p(5), Proto::Udp, now);
        let ordered = s.order(p(5), &addresses, now);
        assert_eq!(ordered, [addresses[1], addresses[0], addresses[2]]);
        // Another peer is not affected.
        assert_eq!(s.order(p(6), &addresses, now), addresses);
        let later = now + FAILURE_MEMORY + Duration::from_secs(1);
        s.handle_timeout(later);
        assert_eq!(s.order(p(5), &addresses, later), addresses);
    }

    #[test]
    fn failed_punch_is_not_retried_before_the_memory_expires() {
        let now = Instant::now();
        let mut s = state(&[AnnounceIp::Any]);
        // No endpoint known: fails at once.
        assert!(s.should_punch(p(3), now));
        s.puncher.connect(p(3), None, now);
        assert!(matches!(
            s.poll_punch_event(now),
            Some(PunchEvent::Failed { .. })
        ));
        assert!(!s.should_punch(p(3), now));
        assert!(s.should_punch(p(3), now + FAILURE_MEMORY));
        assert_eq!(s.status().punch_failed, 1);
    }
}
