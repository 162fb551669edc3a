//! Learning our public address from what peers observe (`--ip any`).
//!
//! Each peer with a tunnel to us tells us, in a peer-protocol
//! [`Body::Observed`](crate::node::peer_proto::wire::Body::Observed)
//! message, the underlay address our tunnel packets come from. The
//! [`Learner`] keeps the latest observation of each peer, forgets those
//! older than [`LearnConfig::max_age`], and settles on a public IP once
//! [`LearnConfig::agree`] distinct peers report it. The same observations
//! give our public endpoint per transport ([`Learner::endpoint`]), which hole
//! punching announces, and tell whether the NAT keeps one external port for
//! all peers ([`NatKind`]).
//!
//! Sans-I/O: time is an argument; no sockets.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use crate::node::control::AnnouncedAddress;
use crate::node::{Address, Proto};

/// Settings of the [`Learner`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LearnConfig {
    /// Distinct peers that must report the same IP (or endpoint).
    pub agree: usize,
    /// Observations older than this are forgotten.
    pub max_age: Duration,
    /// Peers remembered at most (the oldest observation goes first).
    pub max_peers: usize,
}

impl Default for LearnConfig {
    fn default() -> Self {
        Self {
            agree: 2,
            max_age: Duration::from_secs(1800),
            max_peers: 64,
        }
    }
}

/// What the observations say about our NAT, for one transport.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NatKind {
    /// Not enough agreeing observations yet.
    Unknown,
    /// Peers see our own listening port: no NAT, or a port-preserving one.
    PortPreserving,
    /// Peers agree on one external port, not ours (endpoint-independent
    /// mapping: hole punching works towards it).
    EndpointIndependent,
    /// Peers agree on the IP but each sees another port (symmetric NAT:
    /// hole punching will not work; route through the mesh).
    Symmetric,
}

/// A change the mesh loop must act upon.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LearnEvent {
    /// The learned public IP changed (`None`: no longer agreed upon).
    PublicIp(Option<IpAddr>),
}

/// Learns our public address from peers' observations. See the module
/// documentation.
#[derive(Debug)]
pub struct Learner<P> {
    config: LearnConfig,
    seen: HashMap<P, Observation>,
    public_ip: Option<IpAddr>,
    events: Vec<LearnEvent>,
}

#[derive(Clone, Copy, Debug)]
struct Observation {
    addr: Address,
    at: Instant,
}

impl<P: Clone + Eq + Hash> Learner<P> {
    /// A learner with no observation.
    pub fn new(config: LearnConfig) -> Self {
        Self {
            config,
            seen: HashMap::new(),
            public_ip: None,
            events: Vec::new(),
        }
    }

    /// The public IP enough peers agree on.
    pub fn public_ip(&self) -> Option<IpAddr> {
        self.public_ip
    }

    /// How many peers' observations are remembered.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// Whether no observation is remembered.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }

    /// The addresses to announce: the learned IP with each of our `pp`
    /// (port, transport) pairs.
    pub fn addresses(&self, pp: &[(u16, Proto)]) -> Vec<Address> {
        let Some(ip) = self.public_ip else {
            return Vec::new();
        };
        pp.iter()
            .map(|&(port, proto)| Address { ip, port, proto })
            .collect()
    }

    /// [`Learner::addresses`] as `re6st status` shows them (source `peers`).
    pub fn announced(&self, pp: &[(u16, Proto)]) -> Vec<AnnouncedAddress> {
        self.addresses(pp)
            .into_iter()
            .map(|a| AnnouncedAddress {
                address: a.to_string(),
                source: "peers".to_owned(),
            })
            .collect()
    }

    /// Our public endpoint for `proto`: the (IP, port) that enough peers
    /// saw our `proto` tunnels come from.
    pub fn endpoint(&self, proto: Proto) -> Option<SocketAddr> {
        let mut counts: HashMap<SocketAddr, (usize, Instant)> = HashMap::new();
        for o in self.seen.values().filter(|o| o.addr.proto == proto) {
            let e = counts
                .entry(SocketAddr::new(o.addr.ip, o.addr.port))
                .or_insert((0, o.at));
            e.0 += 1;
            e.1 = e.1.max(o.at);
        }
        best(counts, self.config.agree)
    }

    /// Our endpoint for `proto` when fewer peers than
    /// [`LearnConfig::agree`] saw it but none contradicts it: every
    /// observation of `proto` (at least one) names the same (IP, port). A
    /// best guess for hole punching in a small network, never a reason to
    /// announce an address.
    pub fn sole_endpoint(&self, proto: Proto) -> Option<SocketAddr> {
        let mut seen = self
            .seen
            .values()
            .filter(|o| o.addr.proto == proto)
            .map(|o| SocketAddr::new(o.addr.ip, o.addr.port));
        let first = seen.next()?;
        seen.all(|e| e == first).then_some(first)
    }

    /// What the observations of `proto` tunnels say about the NAT, given
    /// our listening `local_port` for it.
    pub fn nat_kind(&self, proto: Proto, local_port: u16) -> NatKind {
        if let Some(e) = self.endpoint(proto) {
            return if e.port() == local_port {
                NatKind::PortPreserving
            } else {
                NatKind::EndpointIndependent
            };
        }
        let Some(ip) = self.public_ip else {
            return NatKind::Unknown;
        };
        let ports: Vec<u16> = self
            .seen
            .values()
            .filter(|o| o.addr.proto == proto && o.addr.ip == ip)
            .map(|o| o.addr.port)
            .collect();
        if ports.len() >= self.config.agree {
            NatKind::Symmetric
        } else {
            NatKind::Unknown
        }
    }

    /// `peer` saw our `proto` tunnel packets come from `addr`. Addresses no
    /// peer could really see (unspecified, loopback, multicast, port 0) are
    /// ignored.
    pub fn handle_observed(&mut self, peer: P, addr: Address, now: Instant) {
        let ip = addr.ip;
        if ip.is_unspecified() || ip.is_loopback() || ip.is_multicast() || addr.port == 0 {
            return;
        }
        if matches!(addr.proto, Proto::Unknown(_)) {
            return;
        }
        if !self.seen.contains_key(&peer) && self.seen.len() >= self.config.max_peers {
            if let Some(oldest) = self
                .seen
                .iter()
                .min_by_key(|(_, o)| o.at)
                .map(|(p, _)| p.clone())
            {
                self.seen.remove(&oldest);
            }
        }
        self.seen.insert(peer, Observation { addr, at: now });
        self.update();
    }

    /// `peer` is gone for good (revoked, or its tunnel closed): its
    /// observation no longer counts.
    pub fn handle_peer_gone(&mut self, peer: &P) {
        if self.seen.remove(peer).is_some() {
            self.update();
        }
    }

    /// Forgets observations older than [`LearnConfig::max_age`].
    pub fn handle_timeout(&mut self, now: Instant) {
        let max_age = self.config.max_age;
        let before = self.seen.len();
        self.seen
            .retain(|_, o| now.saturating_duration_since(o.at) < max_age);
        if self.seen.len() != before {
            self.update();
        }
    }

    /// When the oldest observation goes stale.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.seen.values().map(|o| o.at + self.config.max_age).min()
    }

    /// The next change, oldest first.
    pub fn poll_event(&mut self) -> Option<LearnEvent> {
        if self.events.is_empty() {
            None
        } else {
            Some(self.events.remove(0))
        }
    }

    fn update(&mut self) {
        let mut counts: HashMap<IpAddr, (usize, Instant)> = HashMap::new();
        for o in self.seen.values() {
            let e = counts.entry(o.addr.ip).or_insert((0, o.at));
            e.0 += 1;
            e.1 = e.1.max(o.at);
        }
        // Keep the current IP while it is still agreed upon and as well
        // supported as any other (no flapping between two equal camps).
        let current = self
            .public_ip
            .and_then(|ip| counts.get(&ip).map(|&(n, _)| (ip, n)));
        let top = counts.values().map(|&(n, _)| n).max().unwrap_or(0);
        let ip = match current {
            Some((ip, n)) if n >= self.config.agree && n == top => Some(ip),
            _ => best(counts, self.config.agree),
        };
        if ip != self.public_ip {
            self.public_ip = ip;
            self.events.push(LearnEvent::PublicIp(ip));
        }
    }
}

/// The key with the most supporters (at least `agree`), the most recently
/// seen on a tie.
fn best<K: Copy + Ord>(counts: HashMap<K, (usize, Instant)>, agree: usize) -> Option<K> {
    counts
        .into_iter()
        .filter(|&(_, (n, _))| n >= agree)
        .max_by(|a, b| (a.1 .0, a.1 .1, a.0).cmp(&(b.1 .0, b.1 .1, b.0)))
        .map(|(k, _)| k)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> Address {
        s.parse().unwrap()
    }

    #[test]
    fn two_distinct_peers_must_agree() {
        let t0 = Instant::now();
        let mut l = Learner::new(LearnConfig::default());
        l.handle_observed(1, addr("198.51.100.7,1194,udp"), t0);
        assert_eq!(l.public_ip(), None, "one peer is not enough");
        assert_eq!(l.endpoint(Proto::Udp), None);
        // ... but it is the only guess for punching, until contradicted.
        let sole: SocketAddr = "198.51.100.7:1194".parse().unwrap();
        assert_eq!(l.sole_endpoint(Proto::Udp), Some(sole));
        assert_eq!(l.sole_endpoint(Proto::Tcp), None);
        let mut other = Learner::new(LearnConfig::default());
        other.handle_observed(1, addr("198.51.100.7,1194,udp"), t0);
        other.handle_observed(2, addr("198.51.100.7,2000,udp"), t0);
        assert_eq!(other.sole_endpoint(Proto::Udp), None);
        // The same peer again does not count twice.
        l.handle_observed(1, addr("198.51.100.7,1194,udp"), t0);
        assert_eq!(l.public_ip(), None);
        assert_eq!(l.poll_event(), None);
        l.handle_observed(2, addr("198.51.100.7,1194,tcp"), t0);
        let ip: IpAddr = "198.51.100.7".parse().unwrap();
        assert_eq!(l.public_ip(), Some(ip));
        assert_eq!(l.poll_event(), Some(LearnEvent::PublicIp(Some(ip))));
        assert_eq!(l.poll_event(), None);
        let pp = [(1194, Proto::Udp), (443, Proto::Quic)];
        assert_eq!(
            l.addresses(&pp),
            vec![addr("198.51.100.7,1194,udp"), addr("198.51.100.7,443,quic")]
        );
        assert!(l.announced(&pp).iter().all(|a| a.source == "peers"));
    }

    #[test]
    fn stale_observations_are_forgotten() {
        let t0 = Instant::now();
        let config = LearnConfig::default();
        let mut l = Learner::new(config.clone());
        l.handle_observed(1, addr("198.51.100.7,1194,udp"), t0);
        let t1 = t0 + Duration::from_secs(600);
        l.handle_observed(2, addr("198.51.100.7,1194,udp"), t1);
        assert!(l.public_ip().is_some());
        assert_eq!(l.poll_timeout(), Some(t0 + config.max_age));
        l.handle_timeout(t0 + config.max_age - Duration::from_secs(1));
        assert!(l.public_ip().is_some());
        l.handle_timeout(t0 + config.max_age);
        assert_eq!(l.public_ip(), None);
        assert_eq!(l.len(), 1);
        let events: Vec<_> = std::iter::from_fn(|| l.poll_event()).collect();
        assert_eq!(events.last(), Some(&LearnEvent::PublicIp(None)));
        l.handle_timeout(t1 + config.max_age);
        assert!(l.is_empty());
        assert_eq!(l.poll_timeout(), None);
    }

    #[test]
    fn changing_ip_and_no_flapping() {
        let t0 = Instant::now();
        let mut l = Learner::new(LearnConfig::default());
        let a: IpAddr = "198.51.100.7".parse().unwrap();
        let b: IpAddr = "203.0.113.9".parse().unwrap();
        l.handle_observed(1, addr("198.51.100.7,1194,udp"), t0);
        l.handle_observed(2, addr("198.51.100.7,1194,udp"), t0);
        assert_eq!(l.public_ip(), Some(a));
        // Two other peers see a new address: a tie keeps the current one.
        let t1 = t0 + Duration::from_secs(5);
        l.handle_observed(3, addr("203.0.113.9,1194,udp"), t1);
        l.handle_observed(4, addr("203.0.113.9,1194,udp"), t1);
        assert_eq!(l.public_ip(), Some(a));
        // A majority moves it (the NAT's address changed).
        l.handle_observed(1, addr("203.0.113.9,1194,udp"), t1);
        assert_eq!(l.public_ip(), Some(b));
        l.handle_peer_gone(&3);
        l.handle_peer_gone(&4);
        assert_eq!(l.public_ip(), None, "one peer left for b, one for a");
        let events: Vec<_> = std::iter::from_fn(|| l.poll_event()).collect();
        assert_eq!(
            events,
            vec![
                LearnEvent::PublicIp(Some(a)),
                LearnEvent::PublicIp(Some(b)),
                LearnEvent::PublicIp(None)
            ]
        );
    }

    #[test]
    fn implausible_observations_are_ignored() {
        let t0 = Instant::now();
        let mut l = Learner::new(LearnConfig::default());
        for (peer, text) in [
            (1, "0.0.0.0,1194,udp"),
            (2, "127.0.0.1,1194,udp"),
            (3, "224.0.0.1,1194,udp"),
            (4, "::,1194,udp"),
        ] {
            l.handle_observed(peer, addr(text), t0);
        }
        l.handle_observed(
            5,
            Address {
                ip: "198.51.100.7".parse().unwrap(),
                port: 0,
                proto: Proto::Udp,
            },
            t0,
        );
        assert!(l.is_empty());
    }

    #[test]
    fn endpoints_and_nat_kinds() {
        let t0 = Instant::now();
        let cases: &[(&[&str], Option<&str>, NatKind)] = &[
            (&["198.51.100.7,1194,udp"], None, NatKind::Unknown),
            (
                &["198.51.100.7,1194,udp", "198.51.100.7,1194,udp"],
                Some("198.51.100.7:1194"),
                NatKind::PortPreserving,
            ),
            (
                &["198.51.100.7,40000,udp", "198.51.100.7,40000,udp"],
                Some("198.51.100.7:40000"),
                NatKind::EndpointIndependent,
            ),
            (
                &["198.51.100.7,40000,udp", "198.51.100.7,40001,udp"],
                None,
                NatKind::Symmetric,
            ),
            (
                &["198.51.100.7,1194,tcp", "198.51.100.7,1194,tcp"],
                None,
                NatKind::Unknown,
            ),
        ];
        for (seen, endpoint, kind) in cases {
            let mut l = Learner::new(LearnConfig::default());
            for (peer, text) in seen.iter().enumerate() {
                l.handle_observed(peer, addr(text), t0);
            }
            let expect = endpoint.map(|e| e.parse::<SocketAddr>().unwrap());
            assert_eq!(l.endpoint(Proto::Udp), expect, "{seen:?}");
            assert_eq!(l.nat_kind(Proto::Udp, 1194), *kind, "{seen:?}");
        }
    }

    #[test]
    fn remembers_a_bounded_number_of_peers() {
        let t0 = Instant::now();
        let config = LearnConfig {
            max_peers: 3,
            ..LearnConfig::default()
        };
        let mut l = Learner::new(config);
        for peer in 0..10u32 {
            let at = t0 + Duration::from_secs(u64::from(peer));
            l.handle_observed(peer, addr("198.51.100.7,1194,udp"), at);
        }
        assert_eq!(l.len(), 3);
        assert!(l.public_ip().is_some());
    }
}
