//! The node's transports and the tunnels they carry.
//!
//! [`Transports`] starts one transport per `--pp` entry (listening on its
//! port) plus one client-only transport on an ephemeral port for every
//! enabled protocol no `--pp` entry serves, so that we can reach peers that
//! announce only that protocol. In `--client` mode no listening transport is
//! started at all. The events of every transport are merged into one channel,
//! tagged with the transport's index.
//!
//! [`TunnelTable`] is the pure bookkeeping: tunnel key (transport, id) ↔
//! peer, direction, interface and ifindex; the outgoing attempts and the
//! addresses still to try; the choice of a transport for an [`Address`].

use std::collections::{BTreeMap, VecDeque};
use std::net::{Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use tokio::sync::mpsc;

use super::MeshError;
use crate::node::options::NodeOptions;
use crate::node::policy::Direction;
use crate::node::{Address, Proto};
use crate::pki::{NodeCert, NodePrefix, Verifier};
use crate::tunnel::quic::tls::{PeerPolicy, TlsIdentity};
use crate::tunnel::quic::QuicConfig;
use crate::tunnel::{
    quic, tcp, udp, Credentials, EndpointConfig, Timing, TunSettings, TunnelEvent, TunnelId,
    Tunnels, TunnelsConfig,
};

/// The protocols a node can use, in our default order of preference.
const ALL_PROTOS: [Proto; 3] = [Proto::Udp, Proto::Tcp, Proto::Quic];

/// One running transport.
#[derive(Debug)]
pub(crate) struct Transport {
    /// Its protocol.
    pub(crate) proto: Proto,
    /// The handle (dropping it closes its tunnels and interfaces).
    pub(crate) tunnels: Tunnels,
}

/// Every transport of the node.
#[derive(Debug, Default)]
pub(crate) struct Transports {
    /// Indexed by the tag of their events.
    pub(crate) list: Vec<Transport>,
}

/// Credentials shared by the transports.
pub(crate) struct TransportCredentials<'a> {
    pub(crate) key: &'a SigningKey,
    pub(crate) cert: &'a NodeCert,
    pub(crate) ca_der: &'a [u8],
    pub(crate) verifier: Verifier,
}

impl Transports {
    /// Starts the transports `options` asks for; returns them and the merged
    /// event channel.
    pub(crate) async fn start(
        options: &NodeOptions,
        creds: &TransportCredentials<'_>,
    ) -> Result<(Self, mpsc::UnboundedReceiver<(usize, TunnelEvent)>), MeshError> {
        let shared = Arc::new(
            Credentials::new(
                creds.key,
                creds.cert.clone(),
                creds.ca_der,
                creds.verifier.clone(),
            )
            .map_err(|e| MeshError::Setup(format!("our certificate: {e}")))?,
        );
        let mut wanted: Vec<(Proto, u16, bool)> = Vec::new();
        if options.client.is_none() {
            for pp in &options.pp {
                wanted.push((pp.proto, pp.port, true));
            }
        }
        for proto in ALL_PROTOS {
            if !options.disabled.contains(&proto) && !wanted.iter().any(|w| w.0 == proto) {
                wanted.push((proto, 0, false));
            }
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let mut list = Vec::new();
        for (proto, port, listening) in wanted {
            let config = tunnels_config(options, port, listening);
            let started = match proto {
                Proto::Udp => udp::start(shared.clone(), config).await,
                Proto::Tcp => tcp::start(shared.clone(), config).await,
                Proto::Quic => {
                    let identity = TlsIdentity::new(creds.key, creds.cert)
                        .map_err(|e| MeshError::Setup(format!("quic identity: {e}")))?;
                    let policy = PeerPolicy::new(creds.verifier.clone());
                    let mut q = QuicConfig::default();
                    if let Some(t) = options.tunnel_timeout {
                        q.dead_timeout = t;
                        q.keepalive = keepalive_for(t);
                    }
                    quic::driver::start(identity, policy, q, config).await
                }
                Proto::Unknown(_) => continue,
            };
            let (tunnels, mut events) = started.map_err(|source| MeshError::Transport {
                proto,
                port,
                source,
            })?;
            tracing::info!(
                "{proto} transport on {}{}",
                tunnels.local_addr(),
                if listening { "" } else { " (outgoing only)" }
            );
            let index = list.len();
            let tx = tx.clone();
            tokio::spawn(async move {
                while let Some(ev) = events.recv().await {
                    if tx.send((index, ev)).is_err() {
                        return;
                    }
                }
            });
            list.push(Transport { proto, tunnels });
        }
        Ok((Self { list }, rx))
    }

    /// The protocol of each transport, by index.
    pub(crate) fn protos(&self) -> Vec<Proto> {
        self.list.iter().map(|t| t.proto).collect()
    }

    /// Closes a tunnel (ignores a stopped transport).
    pub(crate) fn close(&self, key: TunnelKey) {
        if let Some(t) = self.list.get(key.transport) {
            let _ = t.tunnels.close(key.id);
        }
    }

    /// Replaces the revoked serials on every transport.
    pub(crate) fn set_revoked(&self, serials: &[u64]) {
        for t in &self.list {
            let _ = t.tunnels.set_revoked(serials.to_vec());
        }
    }
}

/// A keepalive interval for a liveness timeout: five probes per timeout.
fn keepalive_for(timeout: Duration) -> Duration {
    (timeout / 5).max(Duration::from_millis(100))
}

fn tunnels_config(options: &NodeOptions, port: u16, listening: bool) -> TunnelsConfig {
    let mut timing = Timing::default();
    if let Some(t) = options.tunnel_timeout {
        timing.dead_after = t;
        timing.keepalive = keepalive_for(t);
    }
    TunnelsConfig {
        listen: SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)),
        endpoint: EndpointConfig {
            timing,
            accept_incoming: listening,
            ..EndpointConfig::default()
        },
        tun: TunSettings::default(),
        seed: None,
    }
}

/// Identifies a tunnel: its transport's index and its id there.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct TunnelKey {
    /// Index in [`Transports::list`].
    pub(crate) transport: usize,
    /// Id within the transport.
    pub(crate) id: TunnelId,
}

/// What we know of one tunnel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct TunnelEntry {
    /// The peer (known at once for outgoing tunnels, at `Up` for incoming).
    pub(crate) peer: NodePrefix,
    /// Who opened it.
    pub(crate) direction: Direction,
    /// Its transport's protocol.
    pub(crate) proto: Proto,
    /// The TUN interface, once up.
    pub(crate) interface: Option<String>,
    /// The interface index, once Babel runs on it.
    pub(crate) ifindex: Option<u32>,
    /// Our link-local address on it, once Babel runs on it.
    pub(crate) link_local: Option<Ipv6Addr>,
    /// The peer's transport address.
    pub(crate) remote: Option<SocketAddr>,
    /// When it was opened.
    pub(crate) opened: Instant,
    /// Whether it is up.
    pub(crate) up: bool,
}

/// Outgoing connection attempt: the addresses not tried yet.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Attempt {
    key: TunnelKey,
    remaining: VecDeque<(usize, SocketAddr)>,
}

/// The tunnels and outgoing attempts. Pure bookkeeping, no I/O.
#[derive(Debug, Default)]
pub(crate) struct TunnelTable {
    tunnels: BTreeMap<TunnelKey, TunnelEntry>,
    attempts: BTreeMap<NodePrefix, Attempt>,
}

impl TunnelTable {
    /// Every tunnel.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (TunnelKey, &TunnelEntry)> {
        self.tunnels.iter().map(|(k, e)| (*k, e))
    }

    /// One tunnel.
    pub(crate) fn get(&self, key: TunnelKey) -> Option<&TunnelEntry> {
        self.tunnels.get(&key)
    }

    /// One tunnel, mutably.
    pub(crate) fn get_mut(&mut self, key: TunnelKey) -> Option<&mut TunnelEntry> {
        self.tunnels.get_mut(&key)
    }

    /// Records a tunnel we opened to `peer`, with the addresses to try if
    /// this one fails.
    pub(crate) fn opened(
        &mut self,
        key: TunnelKey,
        peer: NodePrefix,
        proto: Proto,
        remote: SocketAddr,
        remaining: VecDeque<(usize, SocketAddr)>,
        now: Instant,
    ) {
        self.tunnels.insert(
            key,
            TunnelEntry {
                peer,
                direction: Direction::Outgoing,
                proto,
                interface: None,
                ifindex: None,
                link_local: None,
                remote: Some(remote),
                opened: now,
                up: false,
            },
        );
        self.attempts.insert(peer, Attempt { key, remaining });
    }

    /// Records a tunnel that came up. Returns its direction, or `None` when
    /// it is an outgoing tunnel we no longer want (the caller closes it).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn up(
        &mut self,
        key: TunnelKey,
        peer: NodePrefix,
        proto: Proto,
        interface: String,
        remote: SocketAddr,
        initiated: bool,
        now: Instant,
    ) -> Option<Direction> {
        if initiated {
            let entry = self.tunnels.get_mut(&key)?;
            if entry.peer != peer {
                return None;
            }
            entry.up = true;
            entry.interface = Some(interface);
            entry.remote = Some(remote);
            if self.attempts.get(&peer).is_some_and(|a| a.key == key) {
                self.attempts.remove(&peer);
            }
            return Some(Direction::Outgoing);
        }
        self.tunnels.insert(
            key,
            TunnelEntry {
                peer,
                direction: Direction::Incoming,
                proto,
                interface: Some(interface),
                ifindex: None,
                link_local: None,
                remote: Some(remote),
                opened: now,
                up: true,
            },
        );
        Some(Direction::Incoming)
    }

    /// Forgets a tunnel (down or closed).
    pub(crate) fn remove(&mut self, key: TunnelKey) -> Option<TunnelEntry> {
        let entry = self.tunnels.remove(&key)?;
        if self.attempts.get(&entry.peer).is_some_and(|a| a.key == key) {
            self.attempts.remove(&entry.peer);
        }
        Some(entry)
    }

    /// A failed outgoing attempt: the next address to try for its peer, if
    /// any (the attempt stays registered; the caller opens it and calls
    /// [`TunnelTable::retried`]).
    pub(crate) fn next_address(&mut self, key: TunnelKey) -> Option<(usize, SocketAddr)> {
        let peer = self.tunnels.get(&key)?.peer;
        let attempt = self.attempts.get_mut(&peer)?;
        if attempt.key != key {
            return None;
        }
        attempt.remaining.pop_front()
    }

    /// The attempt for `peer` continues with a new tunnel `key`.
    pub(crate) fn retried(
        &mut self,
        old: TunnelKey,
        key: TunnelKey,
        proto: Proto,
        remote: SocketAddr,
        now: Instant,
    ) {
        let Some(entry) = self.tunnels.remove(&old) else {
            return;
        };
        let peer = entry.peer;
        let remaining = self
            .attempts
            .remove(&peer)
            .map(|a| a.remaining)
            .unwrap_or_default();
        self.opened(key, peer, proto, remote, remaining, now);
    }

    /// The tunnel with `peer` in `direction` (the newest if several).
    pub(crate) fn find(&self, peer: NodePrefix, direction: Direction) -> Option<TunnelKey> {
        self.tunnels
            .iter()
            .rev()
            .find(|(_, e)| e.peer == peer && e.direction == direction)
            .map(|(k, _)| *k)
    }

    /// Sets the interface index Babel runs on for `key`, and our
    /// link-local address there.
    pub(crate) fn set_ifindex(&mut self, key: TunnelKey, ifindex: u32, ll: Ipv6Addr) -> bool {
        match self.tunnels.get_mut(&key) {
            Some(e) if e.up => {
                e.ifindex = Some(ifindex);
                e.link_local = Some(ll);
                true
            }
            _ => false,
        }
    }

    /// The peer of the up tunnel whose interface is `ifindex`.
    pub(crate) fn peer_of_ifindex(&self, ifindex: u32) -> Option<NodePrefix> {
        self.tunnels
            .values()
            .find(|e| e.up && e.ifindex == Some(ifindex))
            .map(|e| e.peer)
    }

    /// The ifindex of the up tunnel with `peer` (any direction).
    pub(crate) fn ifindex_of_peer(&self, peer: NodePrefix) -> Option<u32> {
        self.tunnels
            .values()
            .filter(|e| e.up && e.peer == peer)
            .find_map(|e| e.ifindex)
    }

    /// Peers of the tunnels that are up.
    pub(crate) fn up_peers(&self) -> Vec<NodePrefix> {
        let mut peers: Vec<_> = self
            .tunnels
            .values()
            .filter(|e| e.up)
            .map(|e| e.peer)
            .collect();
        peers.sort();
        peers.dedup();
        peers
    }
}

/// The transports and socket addresses to try for `addresses`, in order:
/// disabled protocols and protocols no transport runs are skipped; for each
/// protocol a listening transport is preferred (its port is the one peers
/// know us by).
pub(crate) fn plan(
    addresses: &[Address],
    transports: &[Proto],
    disabled: &[Proto],
) -> VecDeque<(usize, SocketAddr)> {
    let mut out = VecDeque::new();
    for a in addresses {
        if disabled.contains(&a.proto) {
            continue;
        }
        let Some(index) = transports.iter().position(|p| *p == a.proto) else {
            continue;
        };
        let addr = SocketAddr::new(a.ip, a.port);
        if !out.contains(&(index, addr)) {
            out.push_back((index, addr));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(v: u128) -> NodePrefix {
        NodePrefix::new(v, 16).unwrap()
    }

    fn key(t: usize, id: u32) -> TunnelKey {
        TunnelKey {
            transport: t,
            id: TunnelId(id),
        }
    }

    #[test]
    fn plan_skips_disabled_and_unserved_protocols() {
        let addrs: Vec<Address> = [
            "10.0.0.1,1194,udp",
            "10.0.0.1,1194,tcp",
            "10.0.0.1,1195,quic",
            "10.0.0.1,1194,udp",
        ]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
        let plan = plan(&addrs, &[Proto::Tcp, Proto::Udp], &[Proto::Tcp]);
        assert_eq!(
            plan,
            VecDeque::from([(1, "10.0.0.1:1194".parse().unwrap())])
        );
        let all = super::plan(&addrs, &[Proto::Udp, Proto::Tcp, Proto::Quic], &[]);
        assert_eq!(all.len(), 3);
        assert_eq!(all[2].0, 2);
    }

    #[test]
    fn table_tracks_attempts_and_interfaces() {
        let now = Instant::now();
        let mut t = TunnelTable::default();
        let a: SocketAddr = "10.0.0.1:1194".parse().unwrap();
        let b: SocketAddr = "10.0.0.2:1194".parse().unwrap();
        t.opened(
            key(0, 1),
            p(5),
            Proto::Udp,
            a,
            VecDeque::from([(1, b)]),
            now,
        );
        assert_eq!(t.find(p(5), Direction::Outgoing), Some(key(0, 1)));
        // The first address fails: the second is next, then nothing.
        assert_eq!(t.next_address(key(0, 1)), Some((1, b)));
        t.retried(key(0, 1), key(1, 7), Proto::Tcp, b, now);
        assert!(t.get(key(0, 1)).is_none());
        assert_eq!(t.next_address(key(1, 7)), None);
        // It comes up; Babel runs on ifindex 42.
        let d = t.up(key(1, 7), p(5), Proto::Tcp, "re6st-0".into(), b, true, now);
        assert_eq!(d, Some(Direction::Outgoing));
        assert!(t.set_ifindex(key(1, 7), 42, Ipv6Addr::LOCALHOST));
        assert_eq!(t.peer_of_ifindex(42), Some(p(5)));
        assert_eq!(t.ifindex_of_peer(p(5)), Some(42));
        // An incoming one from another peer.
        let d = t.up(key(0, 9), p(6), Proto::Udp, "re6st-1".into(), a, false, now);
        assert_eq!(d, Some(Direction::Incoming));
        assert_eq!(t.up_peers(), vec![p(5), p(6)]);
        // An outgoing Up for a tunnel we forgot is not ours.
        assert_eq!(
            t.up(key(0, 99), p(7), Proto::Udp, "re6st-2".into(), a, true, now),
            None
        );
        let gone = t.remove(key(1, 7)).unwrap();
        assert_eq!(gone.ifindex, Some(42));
        assert_eq!(t.peer_of_ifindex(42), None);
    }
}
