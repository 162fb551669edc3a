//! Network simulator: thousands of re6st nodes in one process, each with the
//! real Babel [`Router`] and the real tunnel [`Policy`], on a deterministic
//! virtual clock.
//!
//! What is real and what is modelled:
//!
//! - every Babel packet a router emits is encoded by the router, carried by
//!   a virtual tunnel (latency, jitter, loss) and parsed by the receiving
//!   router; every route change goes to a per-node forwarding table and to
//!   the node's policy, as the node daemon does;
//! - every decision of the tunnel policy is real: whom to connect to, which
//!   tunnel to accept, refresh and retirement, backoff, bootstrap;
//! - a tunnel is a virtual point-to-point link (no TUN, no crypto). Opening
//!   one costs one round trip over the underlay; a tunnel whose peer
//!   vanished is detected after `dead_after` (the transport's keepalives);
//! - peer-protocol messages (address requests, retirement agreement) travel
//!   hop by hop along the routes installed at the moment they are sent, so
//!   they are lost when the overlay has no route;
//! - the registry is node 0's machine: bootstrap requests reach it over the
//!   underlay (not the overlay) and it answers with a random destination of
//!   its own node's routing table, as re6st's registry asks its node;
//! - NATed nodes accept no incoming tunnel (connection attempts to them
//!   fail) and run their policy with `set_reachable(false)`.
//!
//! The clock only moves through the event queue, ordered by (time, sequence
//! number); every random draw comes from one seeded generator and every map
//! iterated is ordered, so one seed gives one run. [`measure`] follows the
//! forwarding tables to check reachability and loops, [`scenario`] runs the
//! scenarios of `re6st simulate` and [`svg`] draws the sweep's curve.

pub mod measure;
pub mod scenario;
pub mod svg;

use std::cmp::{Ordering, Reverse};
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

use babel::router::{
    Destination, Event, InterfaceConfig, InterfaceKind, RouteChange, Router, RouterConfig,
};
use babel::Prefix;
use rand::rngs::StdRng;
use rand::SeedableRng;

use crate::node::policy::{Action, Direction, Policy, PolicyConfig, Via};
use crate::node::{Address, Proto};

/// Index of a simulated node (also its peer id in the policy).
pub type NodeId = u32;

/// No route (in a forwarding table).
const NONE: NodeId = NodeId::MAX;

/// Babel cost multiplier of a tunnel being retired (256 = 1.0): its cost
/// goes from 96 to 3 072, far above any path through the mesh, so routes
/// move away from it.
pub const RETIRE_COST_MULTIPLIER: u16 = 256 * 32;

/// Parameters of a simulated network.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Seed of every random choice.
    pub seed: u64,
    /// The tunnel policy's parameters (client_count, refresh period, ...).
    pub policy: PolicyConfig,
    /// Babel hello interval on tunnels (updates every 4 hellos); the
    /// network configuration's default is 15 s, as in re6stnet.
    pub hello_interval: Duration,
    /// Smallest one-way underlay latency between two machines.
    pub latency_min: Duration,
    /// Largest one-way underlay latency (each pair of machines gets a fixed
    /// latency drawn between the two).
    pub latency_max: Duration,
    /// Extra random delay of each packet, uniform in `[0, jitter]`.
    pub jitter: Duration,
    /// Probability that a packet on a tunnel is lost.
    pub loss: f64,
    /// Fraction of nodes behind a NAT (no incoming tunnels, at most 2
    /// outgoing ones).
    pub nat_fraction: f64,
    /// How long a tunnel's end takes to notice that the other end vanished
    /// (keepalive timeout of the transport).
    pub dead_after: Duration,
    /// How long a connection attempt to an unreachable machine takes to
    /// fail (handshake retries).
    pub connect_fail_after: Duration,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            seed: 1,
            policy: PolicyConfig::default(),
            hello_interval: Duration::from_secs(15),
            latency_min: Duration::from_millis(5),
            latency_max: Duration::from_millis(80),
            jitter: Duration::from_millis(2),
            loss: 0.0,
            nat_fraction: 0.0,
            dead_after: Duration::from_secs(5),
            connect_fail_after: Duration::from_secs(5),
        }
    }
}

/// Traffic counters of one node (since it was created; survive restarts).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Babel packets sent.
    pub babel_packets: u64,
    /// Babel bytes sent (UDP payload).
    pub babel_bytes: u64,
    /// Peer-protocol messages sent or answered by this node.
    pub peer_messages: u64,
    /// Tunnels this node opened (outgoing, up).
    pub tunnels_opened: u64,
}

/// One end of a tunnel, as its node sees it.
#[derive(Clone, Copy, Debug)]
struct End {
    peer: NodeId,
    direction: Direction,
    link: usize,
}

/// A running node's state (dropped when it crashes).
struct Live {
    router: Router,
    policy: Policy<NodeId, StdRng>,
    /// Tunnels by interface index.
    ifaces: BTreeMap<u32, End>,
    next_ifindex: u32,
    /// Outgoing connection attempts in flight.
    pending: BTreeSet<NodeId>,
    /// Forwarding table: next hop towards each node, [`NONE`] if none.
    fib: Vec<NodeId>,
    /// Routes in `fib`.
    routes: usize,
    router_deadline: Option<Duration>,
    policy_deadline: Option<Duration>,
}

/// A node slot: its identity, counters and peer cache survive crashes.
struct Node {
    live: Option<Box<Live>>,
    nat: bool,
    incarnation: u32,
    /// The peer cache: peers known, with failures and backoff (kept on
    /// disk by the real node, so it survives restarts).
    cache: BTreeMap<NodeId, (u32, Option<Instant>)>,
    counters: Counters,
    /// Underlay side while partitioned.
    side: u8,
}

/// A tunnel between two nodes.
#[derive(Clone, Debug)]
struct Link {
    /// (node, incarnation, ifindex) of each end; the end is `None` until it
    /// is set up on that side.
    ends: [(NodeId, u32, Option<u32>); 2],
    latency: Duration,
    up: bool,
}

#[derive(Debug)]
enum Kind {
    /// A Babel packet on a tunnel, to end `side` of `link`.
    Packet {
        link: usize,
        side: usize,
        multicast: bool,
        bytes: Vec<u8>,
    },
    RouterTimer(NodeId),
    PolicyTimer(NodeId),
    /// A connection attempt reaches the peer.
    ConnectArrive {
        from: NodeId,
        inc: u32,
        to: NodeId,
    },
    /// The answer to a connection attempt reaches its initiator.
    ConnectReply {
        to: NodeId,
        inc: u32,
        from: NodeId,
        link: Option<usize>,
    },
    /// A connection attempt to an unreachable machine gives up.
    ConnectFailed {
        to: NodeId,
        inc: u32,
        peer: NodeId,
    },
    /// End `side` of `link` learns that the tunnel is gone.
    TunnelGone {
        link: usize,
        side: usize,
    },
    /// A peer-protocol message arrives.
    Peer {
        to: NodeId,
        inc: u32,
        msg: PeerMsg,
    },
    /// A bootstrap request reaches the registry.
    Bootstrap {
        from: NodeId,
        inc: u32,
    },
    /// The registry's bootstrap answer arrives.
    BootstrapReply {
        to: NodeId,
        inc: u32,
        peer: NodeId,
    },
}

#[derive(Clone, Copy, Debug)]
enum PeerMsg {
    AddressRequest { from: NodeId },
    AddressReply { from: NodeId },
    RetireRequest { from: NodeId, id: u32 },
    RetireReply { from: NodeId, id: u32, agreed: bool },
}

#[derive(Debug)]
struct Ev {
    at: Duration,
    seq: u64,
    kind: Kind,
}

impl PartialEq for Ev {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Ev {}
impl PartialOrd for Ev {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Ev {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

/// The simulated network. See the module documentation.
pub struct Sim {
    config: SimConfig,
    base: Instant,
    now: Duration,
    rng: u64,
    nodes: Vec<Node>,
    links: Vec<Option<Link>>,
    queue: BinaryHeap<Reverse<Ev>>,
    seq: u64,
    buf: Vec<u8>,
    /// Packet buffers of delivered packets, reused for the next ones.
    pool: Vec<Vec<u8>>,
    /// Installed routes summed over the running nodes (kept up to date,
    /// so that "is every route there?" is O(1)).
    installed: usize,
    partitioned: bool,
    /// Events processed so far.
    pub events: u64,
}

impl Sim {
    /// An empty network.
    pub fn new(config: SimConfig) -> Self {
        let rng = config.seed ^ 0x7265_3673_745f_7369;
        Self {
            config,
            base: Instant::now(),
            now: Duration::ZERO,
            rng,
            nodes: Vec::new(),
            links: Vec::new(),
            queue: BinaryHeap::new(),
            seq: 0,
            buf: vec![0; 2048],
            pool: Vec::new(),
            installed: 0,
            partitioned: false,
            events: 0,
        }
    }

    // ---- getters ----

    /// The parameters.
    pub fn config(&self) -> &SimConfig {
        &self.config
    }

    /// Virtual time since the start.
    pub fn elapsed(&self) -> Duration {
        self.now
    }

    /// Node slots (live or crashed).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether there is no node.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Whether `n` is running.
    pub fn is_alive(&self, n: NodeId) -> bool {
        self.nodes[n as usize].live.is_some()
    }

    /// Whether `n` is behind a NAT.
    pub fn is_nat(&self, n: NodeId) -> bool {
        self.nodes[n as usize].nat
    }

    /// Running nodes, in order.
    pub fn alive(&self) -> Vec<NodeId> {
        (0..self.nodes.len() as NodeId)
            .filter(|&n| self.is_alive(n))
            .collect()
    }

    /// A node's traffic counters.
    pub fn counters(&self, n: NodeId) -> Counters {
        self.nodes[n as usize].counters
    }

    /// The next hop of `n` towards `dst` in its forwarding table.
    pub fn next_hop(&self, n: NodeId, dst: NodeId) -> Option<NodeId> {
        let live = self.nodes[n as usize].live.as_ref()?;
        live.fib.get(dst as usize).copied().filter(|&h| h != NONE)
    }

    /// Routes in `n`'s forwarding table (destinations it can reach).
    pub fn route_count(&self, n: NodeId) -> usize {
        self.nodes[n as usize].live.as_ref().map_or(0, |l| l.routes)
    }

    /// Installed routes summed over the running nodes (routes towards
    /// crashed nodes included).
    pub fn installed_routes(&self) -> usize {
        self.installed
    }

    /// `n`'s forwarding table (next hop per destination, [`NodeId::MAX`]
    /// for none), or `None` if it is not running.
    pub fn fib(&self, n: NodeId) -> Option<&[NodeId]> {
        self.nodes[n as usize]
            .live
            .as_ref()
            .map(|l| l.fib.as_slice())
    }

    /// Routes in `n`'s Babel table (one per destination and neighbour that
    /// announced it).
    pub fn babel_route_count(&self, n: NodeId) -> usize {
        self.nodes[n as usize]
            .live
            .as_ref()
            .map_or(0, |l| l.router.route_count())
    }

    /// Whether `n`'s tunnel towards `peer` (if any) is up in both nodes and
    /// in the underlay.
    pub fn tunnel_up(&self, n: NodeId, peer: NodeId) -> bool {
        let Some(live) = self.nodes[n as usize].live.as_ref() else {
            return false;
        };
        live.ifaces.values().any(|e| {
            e.peer == peer
                && self.links[e.link]
                    .as_ref()
                    .is_some_and(|l| l.up && l.ends.iter().all(|x| x.2.is_some()))
        })
    }

    /// Peers of `n`'s tunnels that are up on both sides.
    pub fn tunnel_peers(&self, n: NodeId) -> Vec<NodeId> {
        let Some(live) = self.nodes[n as usize].live.as_ref() else {
            return Vec::new();
        };
        let mut peers: Vec<NodeId> = live
            .ifaces
            .values()
            .filter(|e| {
                self.links[e.link]
                    .as_ref()
                    .is_some_and(|l| l.up && l.ends.iter().all(|x| x.2.is_some()))
            })
            .map(|e| e.peer)
            .collect();
        peers.sort_unstable();
        peers.dedup();
        peers
    }

    /// Outgoing tunnels of `n` that are up, and how many it wants.
    pub fn outgoing(&self, n: NodeId) -> (usize, usize) {
        let Some(live) = self.nodes[n as usize].live.as_ref() else {
            return (0, 0);
        };
        let up = live
            .policy
            .tunnels()
            .filter(|t| t.up && t.direction == Direction::Outgoing)
            .count();
        (up, live.policy.target())
    }

    /// Incoming tunnels of `n` that are up.
    pub fn incoming(&self, n: NodeId) -> usize {
        self.nodes[n as usize].live.as_ref().map_or(0, |l| {
            l.policy
                .tunnels()
                .filter(|t| t.up && t.direction == Direction::Incoming)
                .count()
        })
    }

    /// The prefix node `n` announces: `2001:db8:HI:LO::/64`.
    pub fn prefix(n: NodeId) -> Prefix {
        let addr = Ipv6Addr::new(0x2001, 0xdb8, (n >> 16) as u16, n as u16, 0, 0, 0, 0);
        Prefix::new(IpAddr::V6(addr), 64).unwrap_or(Prefix::V6_DEFAULT)
    }

    // ---- commands ----

    /// Adds a node (started at once unless `start` is false) and returns
    /// its id. NAT membership is drawn from `nat_fraction`; node 0, the
    /// registry's, is never NATed.
    pub fn add_node(&mut self, start: bool) -> NodeId {
        let id = self.nodes.len() as NodeId;
        let nat = id != 0 && self.random() < self.config.nat_fraction;
        self.nodes.push(Node {
            live: None,
            nat,
            incarnation: 0,
            cache: BTreeMap::new(),
            counters: Counters::default(),
            side: 0,
        });
        for n in &mut self.nodes {
            if let Some(live) = n.live.as_mut() {
                live.fib.push(NONE);
            }
        }
        if start {
            self.start(id);
        }
        id
    }

    /// Starts (or restarts) node `n` from its peer cache.
    pub fn start(&mut self, n: NodeId) {
        if self.is_alive(n) {
            return;
        }
        let now = self.instant();
        let count = self.nodes.len();
        let node = &mut self.nodes[n as usize];
        node.incarnation += 1;
        let mut router_id = [0; 8];
        router_id[..4].copy_from_slice(&(n + 1).to_be_bytes());
        router_id[4..].copy_from_slice(&node.incarnation.to_be_bytes());
        let seed = self
            .config
            .seed
            .wrapping_mul(0x9e37_79b9_7f4a_7c15)
            .wrapping_add(u64::from(n) << 20 | u64::from(node.incarnation));
        let router = Router::new(
            RouterConfig {
                router_id,
                seed,
                ..RouterConfig::default()
            },
            now,
        );
        let mut policy = Policy::new(
            n,
            self.config.policy.clone(),
            StdRng::seed_from_u64(seed ^ 0x706f_6c69_6379),
            now,
        );
        for (&peer, &(failures, retry_at)) in &node.cache {
            policy.handle_cached_peer(peer, vec![address(peer)], failures, retry_at);
        }
        node.live = Some(Box::new(Live {
            router,
            policy,
            ifaces: BTreeMap::new(),
            next_ifindex: 1,
            pending: BTreeSet::new(),
            fib: vec![NONE; count],
            routes: 0,
            router_deadline: None,
            policy_deadline: None,
        }));
        let nat = node.nat;
        if let Some(live) = node.live.as_mut() {
            live.router.redistribute(Self::prefix(n), None, 0, now);
            live.policy.set_reachable(!nat, now);
            live.policy.set_registry(Some(0), now);
        }
        self.drain(n);
    }

    /// Crashes node `n`: its state is lost (its peer cache is kept, as on
    /// disk), its tunnels stop carrying anything and their other ends
    /// notice after `dead_after`.
    pub fn crash(&mut self, n: NodeId) {
        let Some(live) = self.nodes[n as usize].live.take() else {
            return;
        };
        self.installed -= live.routes;
        for end in live.ifaces.values() {
            let Some(link) = self.links[end.link].as_mut() else {
                continue;
            };
            link.up = false;
            let own = usize::from(link.ends[1].0 == n);
            link.ends[own] = (n, u32::MAX, None);
            self.push(
                self.config.dead_after,
                Kind::TunnelGone {
                    link: end.link,
                    side: 1 - own,
                },
            );
        }
    }

    /// Splits the underlay in two (node ids `< split` against the others,
    /// the registry on the first side) or heals it (`None`). Tunnels across
    /// the cut stop carrying packets; their ends notice after `dead_after`.
    pub fn set_partition(&mut self, split: Option<NodeId>) {
        self.partitioned = split.is_some();
        for (i, node) in self.nodes.iter_mut().enumerate() {
            node.side = match split {
                Some(s) => u8::from(i as NodeId >= s),
                None => 0,
            };
        }
        if !self.partitioned {
            return;
        }
        for id in 0..self.links.len() {
            let Some(link) = self.links[id].as_ref() else {
                continue;
            };
            let (a, b) = (link.ends[0].0, link.ends[1].0);
            if link.up && self.nodes[a as usize].side != self.nodes[b as usize].side {
                if let Some(link) = self.links[id].as_mut() {
                    link.up = false;
                }
                for side in 0..2 {
                    self.push(self.config.dead_after, Kind::TunnelGone { link: id, side });
                }
            }
        }
    }

    /// Runs the simulation for `d` of virtual time.
    pub fn run_for(&mut self, d: Duration) {
        let end = self.now + d;
        while let Some(Reverse(ev)) = self.queue.peek() {
            if ev.at > end {
                break;
            }
            let Some(Reverse(ev)) = self.queue.pop() else {
                break;
            };
            self.now = self.now.max(ev.at);
            self.events += 1;
            self.dispatch(ev);
        }
        self.now = end;
    }

    // ---- internals ----

    fn instant(&self) -> Instant {
        self.base + self.now
    }

    fn push(&mut self, delay: Duration, kind: Kind) {
        self.seq += 1;
        self.queue.push(Reverse(Ev {
            at: self.now + delay,
            seq: self.seq,
            kind,
        }));
    }

    fn random(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn next_u64(&mut self) -> u64 {
        self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A random index below `n` (`n > 0`).
    fn below(&mut self, n: usize) -> usize {
        (self.random() * n as f64) as usize % n.max(1)
    }

    /// The fixed one-way underlay latency between two machines.
    fn underlay(&self, a: NodeId, b: NodeId) -> Duration {
        let (x, y) = (a.min(b), a.max(b));
        let mut z = (u64::from(x) << 32 | u64::from(y)) ^ self.config.seed;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        let span = self
            .config
            .latency_max
            .saturating_sub(self.config.latency_min);
        let frac = (z >> 11) as f64 / (1u64 << 53) as f64;
        self.config.latency_min + span.mul_f64(frac)
    }

    /// Whether `a` can reach machine `b` over the underlay at all.
    fn underlay_ok(&self, a: NodeId, b: NodeId) -> bool {
        !self.partitioned || self.nodes[a as usize].side == self.nodes[b as usize].side
    }

    fn live_inc(&self, n: NodeId, inc: u32) -> bool {
        let node = &self.nodes[n as usize];
        node.live.is_some() && node.incarnation == inc
    }

    fn dispatch(&mut self, ev: Ev) {
        let now = self.instant();
        match ev.kind {
            Kind::Packet {
                link,
                side,
                multicast,
                bytes,
            } => {
                let Some(l) = self.links[link].as_ref() else {
                    return;
                };
                let (n, inc, ifindex) = l.ends[side];
                let source = link_local(l.ends[1 - side].0, l.ends[1 - side].2.unwrap_or(0));
                let Some(ifindex) = ifindex.filter(|_| l.up) else {
                    return;
                };
                if !self.live_inc(n, inc) {
                    return;
                }
                if let Some(live) = self.nodes[n as usize].live.as_mut() {
                    live.router
                        .handle_packet(ifindex, source, multicast, &bytes, now);
                }
                self.pool.push(bytes);
                self.drain(n);
            }
            Kind::RouterTimer(n) => {
                let Some(live) = self.nodes[n as usize].live.as_mut() else {
                    return;
                };
                if live.router_deadline != Some(ev.at) {
                    return;
                }
                live.router_deadline = None;
                live.router.handle_timeout(now);
                self.drain(n);
            }
            Kind::PolicyTimer(n) => {
                let Some(live) = self.nodes[n as usize].live.as_mut() else {
                    return;
                };
                if live.policy_deadline != Some(ev.at) {
                    return;
                }
                live.policy_deadline = None;
                live.policy.handle_timeout(now);
                self.drain(n);
            }
            Kind::ConnectArrive { from, inc, to } => self.connect_arrive(from, inc, to),
            Kind::ConnectReply {
                to,
                inc,
                from,
                link,
            } => self.connect_reply(to, inc, from, link),
            Kind::ConnectFailed { to, inc, peer } => {
                if !self.live_inc(to, inc) {
                    return;
                }
                if let Some(live) = self.nodes[to as usize].live.as_mut() {
                    if live.pending.remove(&peer) {
                        live.policy.handle_connect_failed(peer, now);
                    }
                }
                self.drain(to);
            }
            Kind::TunnelGone { link, side } => self.tunnel_gone(link, side),
            Kind::Peer { to, inc, msg } => self.peer_message(to, inc, msg),
            Kind::Bootstrap { from, inc } => {
                if !self.is_alive(0) || !self.underlay_ok(from, 0) {
                    return;
                }
                let peer = self.bootstrap_peer(from);
                let rtt = self.underlay(from, 0);
                self.push(
                    rtt,
                    Kind::BootstrapReply {
                        to: from,
                        inc,
                        peer,
                    },
                );
            }
            Kind::BootstrapReply { to, inc, peer } => {
                if !self.live_inc(to, inc) {
                    return;
                }
                self.nodes[to as usize]
                    .cache
                    .entry(peer)
                    .or_insert((0, None));
                if let Some(live) = self.nodes[to as usize].live.as_mut() {
                    live.policy
                        .handle_bootstrap_peer(peer, vec![address(peer)], now);
                }
                self.drain(to);
            }
        }
    }

    /// The registry's choice: a random destination of its node's table
    /// other than the asker, or the registry node itself.
    fn bootstrap_peer(&mut self, asker: NodeId) -> NodeId {
        let count = self.nodes.len();
        if self.nodes[0].live.as_ref().map_or(0, |l| l.routes) == 0 {
            return 0;
        }
        // Rejection sampling: uniform over the candidates, O(1) expected
        // once the registry's node knows a good part of the network (a
        // scan of its whole table per request was O(N)).
        for _ in 0..64 {
            let d = self.below(count);
            let known = self.nodes[0]
                .live
                .as_ref()
                .is_some_and(|l| l.fib[d] != NONE);
            if known && d as NodeId != asker {
                return d as NodeId;
            }
        }
        let Some(live) = self.nodes[0].live.as_ref() else {
            return 0;
        };
        let candidates: Vec<NodeId> = live
            .fib
            .iter()
            .enumerate()
            .filter(|&(d, &h)| h != NONE && d as NodeId != asker)
            .map(|(d, _)| d as NodeId)
            .collect();
        if candidates.is_empty() {
            return 0;
        }
        let k = self.below(candidates.len());
        candidates[k]
    }

    fn connect_arrive(&mut self, from: NodeId, inc: u32, to: NodeId) {
        let now = self.instant();
        let latency = self.underlay(from, to);
        let accepted = match self.nodes[to as usize].live.as_mut() {
            Some(live) => live.policy.handle_incoming(from, now),
            None => false,
        };
        let link = if accepted {
            // Slots are never reused, so a late event cannot hit a newer
            // tunnel.
            let slot = self.links.len();
            self.links.push(None);
            let to_inc = self.nodes[to as usize].incarnation;
            self.links[slot] = Some(Link {
                ends: [(from, inc, None), (to, to_inc, None)],
                latency,
                up: true,
            });
            self.attach(to, slot, 1, from, Direction::Incoming);
            Some(slot)
        } else {
            None
        };
        self.drain(to);
        self.push(
            latency,
            Kind::ConnectReply {
                to: from,
                inc,
                from: to,
                link,
            },
        );
    }

    fn connect_reply(&mut self, to: NodeId, inc: u32, from: NodeId, link: Option<usize>) {
        let now = self.instant();
        let wanted = self.live_inc(to, inc)
            && self.nodes[to as usize]
                .live
                .as_mut()
                .is_some_and(|l| l.pending.remove(&from));
        match link {
            Some(slot) if wanted && self.links[slot].as_ref().is_some_and(|l| l.up) => {
                self.nodes[to as usize].counters.tunnels_opened += 1;
                self.attach(to, slot, 0, from, Direction::Outgoing);
            }
            Some(slot) => {
                // Abandoned meanwhile, or the tunnel died before we saw it:
                // close it.
                self.close_link(slot);
                if wanted {
                    if let Some(live) = self.nodes[to as usize].live.as_mut() {
                        live.policy.handle_connect_failed(from, now);
                    }
                }
            }
            None if wanted => {
                if let Some(live) = self.nodes[to as usize].live.as_mut() {
                    live.policy.handle_connect_failed(from, now);
                }
            }
            None => {}
        }
        self.drain(to);
    }

    /// Sets up end `side` of `link` on node `n` and tells its router and
    /// policy.
    fn attach(&mut self, n: NodeId, link: usize, side: usize, peer: NodeId, dir: Direction) {
        let now = self.instant();
        let hello = self.config.hello_interval;
        let Some(live) = self.nodes[n as usize].live.as_mut() else {
            return;
        };
        let ifindex = live.next_ifindex;
        live.next_ifindex += 1;
        live.ifaces.insert(
            ifindex,
            End {
                peer,
                direction: dir,
                link,
            },
        );
        let mut config = InterfaceConfig::new(InterfaceKind::Tunnel, link_local(n, ifindex));
        config.hello_interval = hello;
        config.update_interval = hello * 4;
        live.router.add_interface(ifindex, config, now);
        live.policy.handle_tunnel_up(peer, dir, now);
        if let Some(l) = self.links[link].as_mut() {
            l.ends[side].2 = Some(ifindex);
        }
    }

    /// Closes a tunnel from both ends: each end learns after the one-way
    /// latency (a close message), or at once for the closing side.
    fn close_link(&mut self, slot: usize) {
        let Some(link) = self.links[slot].as_mut() else {
            return;
        };
        link.up = false;
        let latency = link.latency;
        for side in 0..2 {
            self.push(latency, Kind::TunnelGone { link: slot, side });
        }
    }

    fn tunnel_gone(&mut self, slot: usize, side: usize) {
        let now = self.instant();
        let Some(link) = self.links[slot].as_mut() else {
            return;
        };
        let (n, inc, ifindex) = link.ends[side];
        link.ends[side].2 = None;
        link.ends[side].1 = u32::MAX;
        let other_done = link.ends[1 - side].1 == u32::MAX;
        if other_done {
            self.links[slot] = None;
        }
        let Some(ifindex) = ifindex else {
            return;
        };
        if !self.live_inc(n, inc) {
            return;
        }
        if let Some(live) = self.nodes[n as usize].live.as_mut() {
            if let Some(end) = live.ifaces.remove(&ifindex) {
                live.router.remove_interface(ifindex, now);
                live.policy.handle_tunnel_down(end.peer, end.direction, now);
            }
        }
        self.drain(n);
    }

    /// Follows the forwarding tables from `from` to `to`: the one-way delay
    /// of the path, or `None` if a message would be lost.
    fn overlay_path(&self, from: NodeId, to: NodeId) -> Option<Duration> {
        let mut at = from;
        let mut delay = Duration::ZERO;
        for _ in 0..self.nodes.len() {
            if at == to {
                return Some(delay);
            }
            let next = self.next_hop(at, to)?;
            if !self.tunnel_up(at, next) {
                return None;
            }
            delay += self.underlay(at, next);
            at = next;
        }
        None
    }

    /// Sends a peer-protocol message along the overlay (lost without a
    /// route, a loop, or a dead next hop).
    fn send_peer(&mut self, from: NodeId, to: NodeId, msg: PeerMsg) {
        self.nodes[from as usize].counters.peer_messages += 1;
        let Some(delay) = self.overlay_path(from, to) else {
            return;
        };
        let inc = self.nodes[to as usize].incarnation;
        self.push(delay, Kind::Peer { to, inc, msg });
    }

    fn peer_message(&mut self, to: NodeId, inc: u32, msg: PeerMsg) {
        if !self.live_inc(to, inc) {
            return;
        }
        let now = self.instant();
        match msg {
            PeerMsg::AddressRequest { from } => {
                self.send_peer(to, from, PeerMsg::AddressReply { from: to });
            }
            PeerMsg::AddressReply { from } => {
                self.nodes[to as usize]
                    .cache
                    .entry(from)
                    .or_insert((0, None));
                if let Some(live) = self.nodes[to as usize].live.as_mut() {
                    live.policy.handle_addresses(from, vec![address(from)], now);
                }
            }
            PeerMsg::RetireRequest { from, id } => {
                let agreed = self.nodes[to as usize]
                    .live
                    .as_mut()
                    .is_some_and(|l| l.policy.handle_retirement_request(from, now));
                self.drain(to);
                self.send_peer(
                    to,
                    from,
                    PeerMsg::RetireReply {
                        from: to,
                        id,
                        agreed,
                    },
                );
            }
            PeerMsg::RetireReply { from, id, agreed } => {
                if let Some(live) = self.nodes[to as usize].live.as_mut() {
                    live.policy.handle_retirement_reply(from, id, agreed, now);
                }
            }
        }
        self.drain(to);
    }

    /// Processes everything node `n` has to say until it is quiet: router
    /// packets and route changes, policy actions; then re-arms its timers.
    fn drain(&mut self, n: NodeId) {
        let now = self.instant();
        loop {
            let mut progress = false;
            while let Some(tx) = self.nodes[n as usize]
                .live
                .as_mut()
                .and_then(|l| l.router.poll_transmit(now, &mut self.buf))
            {
                progress = true;
                self.transmit(n, tx.ifindex, tx.destination, tx.len);
            }
            while let Some(ev) = self.nodes[n as usize]
                .live
                .as_mut()
                .and_then(|l| l.router.poll_event())
            {
                progress = true;
                if let Event::Route(change) = ev {
                    self.route_change(n, change);
                }
            }
            while let Some(action) = self.nodes[n as usize]
                .live
                .as_mut()
                .and_then(|l| l.policy.poll_action())
            {
                progress = true;
                self.action(n, action);
            }
            if !progress {
                break;
            }
        }
        let base = self.base;
        let at_now = self.now;
        let Some(live) = self.nodes[n as usize].live.as_mut() else {
            return;
        };
        let to_rel = |t: Instant| t.saturating_duration_since(base).max(at_now);
        let rd = live.router.poll_timeout().map(to_rel);
        let pd = live.policy.poll_timeout().map(to_rel);
        let (arm_r, arm_p) = (rd != live.router_deadline, pd != live.policy_deadline);
        live.router_deadline = rd;
        live.policy_deadline = pd;
        if let (true, Some(d)) = (arm_r, rd) {
            self.push(d - self.now, Kind::RouterTimer(n));
        }
        if let (true, Some(d)) = (arm_p, pd) {
            self.push(d - self.now, Kind::PolicyTimer(n));
        }
    }

    fn transmit(&mut self, n: NodeId, ifindex: u32, dest: Destination, len: usize) {
        let Some(end) = self.nodes[n as usize]
            .live
            .as_ref()
            .and_then(|l| l.ifaces.get(&ifindex).copied())
        else {
            return;
        };
        let counters = &mut self.nodes[n as usize].counters;
        counters.babel_packets += 1;
        counters.babel_bytes += len as u64;
        let Some(link) = self.links[end.link].as_ref() else {
            return;
        };
        if !link.up {
            return;
        }
        let side = usize::from(link.ends[0].0 == n && link.ends[0].2 == Some(ifindex));
        let multicast = match dest {
            Destination::Multicast => true,
            Destination::Unicast(a) => {
                if link.ends[side].2.map(|i| link_local(end.peer, i)) != Some(ipv6(a)) {
                    return;
                }
                false
            }
        };
        let latency = link.latency;
        if self.config.loss > 0.0 && self.random() < self.config.loss {
            return;
        }
        let jitter = if self.config.jitter.is_zero() {
            Duration::ZERO
        } else {
            self.config.jitter.mul_f64(self.random())
        };
        let mut bytes = self.pool.pop().unwrap_or_default();
        bytes.clear();
        bytes.extend_from_slice(&self.buf[..len]);
        self.push(
            latency + jitter,
            Kind::Packet {
                link: end.link,
                side,
                multicast,
                bytes,
            },
        );
    }

    fn route_change(&mut self, n: NodeId, change: RouteChange) {
        let now = self.instant();
        let count = self.nodes.len();
        let Some(live) = self.nodes[n as usize].live.as_mut() else {
            return;
        };
        let (route, present) = match change {
            RouteChange::Add(r) | RouteChange::Replace { new: r, .. } => (r, true),
            RouteChange::Remove(r) => (r, false),
        };
        let Some(dest) = node_of(route.prefix).filter(|&d| (d as usize) < count) else {
            return;
        };
        let via = live.ifaces.get(&route.ifindex).map(|e| e.peer);
        let slot = &mut live.fib[dest as usize];
        let was = *slot != NONE;
        *slot = match (present, via) {
            (true, Some(p)) => p,
            _ => NONE,
        };
        let is = *slot != NONE;
        match (was, is) {
            (false, true) => {
                live.routes += 1;
                self.installed += 1;
            }
            (true, false) => {
                live.routes -= 1;
                self.installed -= 1;
            }
            _ => {}
        }
        let via = if present {
            Some(via.map_or(Via::Other, Via::Tunnel))
        } else {
            None
        };
        live.policy.handle_route(dest, via, now);
    }

    fn action(&mut self, n: NodeId, action: Action<NodeId>) {
        let now = self.instant();
        match action {
            Action::Connect { peer, .. } => {
                let inc = self.nodes[n as usize].incarnation;
                if let Some(live) = self.nodes[n as usize].live.as_mut() {
                    live.pending.insert(peer);
                }
                let reachable = !self.nodes[peer as usize].nat
                    && self.is_alive(peer)
                    && self.underlay_ok(n, peer);
                if reachable {
                    let latency = self.underlay(n, peer);
                    self.push(
                        latency,
                        Kind::ConnectArrive {
                            from: n,
                            inc,
                            to: peer,
                        },
                    );
                } else {
                    self.push(
                        self.config.connect_fail_after,
                        Kind::ConnectFailed { to: n, inc, peer },
                    );
                }
            }
            Action::Close { peer, direction } => {
                let Some(live) = self.nodes[n as usize].live.as_mut() else {
                    return;
                };
                if direction == Direction::Outgoing {
                    live.pending.remove(&peer);
                }
                let found = live
                    .ifaces
                    .iter()
                    .find(|(_, e)| e.peer == peer && e.direction == direction)
                    .map(|(&i, e)| (i, e.link));
                if let Some((ifindex, link)) = found {
                    live.ifaces.remove(&ifindex);
                    live.router.remove_interface(ifindex, now);
                    self.close_link(link);
                }
            }
            Action::RequestAddresses { peer } => {
                self.send_peer(n, peer, PeerMsg::AddressRequest { from: n });
            }
            Action::RequestBootstrapPeer => {
                self.nodes[n as usize].counters.peer_messages += 1;
                if self.underlay_ok(n, 0) {
                    let inc = self.nodes[n as usize].incarnation;
                    let latency = self.underlay(n, 0);
                    self.push(latency, Kind::Bootstrap { from: n, inc });
                }
            }
            Action::RaiseCost { peer } => self.set_cost(n, peer, RETIRE_COST_MULTIPLIER),
            Action::RestoreCost { peer } => self.set_cost(n, peer, 256),
            Action::RequestRetirement { peer, id } => {
                self.send_peer(n, peer, PeerMsg::RetireRequest { from: n, id });
            }
            Action::PeerFailed {
                peer,
                failures,
                retry_at,
            } => {
                self.nodes[n as usize]
                    .cache
                    .insert(peer, (failures, Some(retry_at)));
            }
            Action::PeerSucceeded { peer } => {
                self.nodes[n as usize].cache.insert(peer, (0, None));
            }
        }
    }

    fn set_cost(&mut self, n: NodeId, peer: NodeId, multiplier: u16) {
        let now = self.instant();
        let Some(live) = self.nodes[n as usize].live.as_mut() else {
            return;
        };
        let ifaces: Vec<u32> = live
            .ifaces
            .iter()
            .filter(|(_, e)| e.peer == peer)
            .map(|(&i, _)| i)
            .collect();
        for i in ifaces {
            live.router.set_cost_multiplier(i, None, multiplier, now);
        }
    }
}

/// The link-local address of node `n`'s interface `ifindex`:
/// `fe80::HI:LO:IFINDEX`.
fn link_local(n: NodeId, ifindex: u32) -> Ipv6Addr {
    Ipv6Addr::new(
        0xfe80,
        0,
        0,
        0,
        (n >> 16) as u16,
        n as u16,
        (ifindex >> 16) as u16,
        ifindex as u16,
    )
}

fn ipv6(a: IpAddr) -> Ipv6Addr {
    match a {
        IpAddr::V6(a) => a,
        IpAddr::V4(a) => a.to_ipv6_mapped(),
    }
}

/// The node whose prefix is `p` (see [`Sim::prefix`]).
fn node_of(p: Prefix) -> Option<NodeId> {
    match p.addr() {
        IpAddr::V6(a) if p.len() == 64 => {
            let s = a.segments();
            (s[0] == 0x2001 && s[1] == 0xdb8).then(|| u32::from(s[2]) << 16 | u32::from(s[3]))
        }
        _ => None,
    }
}

/// The underlay address node `n` announces (198.18.0.0/15 is for
/// benchmarks: never routed).
fn address(n: NodeId) -> Address {
    let [_, b, c, d] = n.to_be_bytes();
    Address {
        ip: IpAddr::V4(Ipv4Addr::new(198, 18 + (b & 1), c, d)),
        port: 1194,
        proto: Proto::Udp,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_and_link_locals_round_trip() {
        for n in [0, 1, 255, 65_535, 65_536, 1_000_000] {
            assert_eq!(node_of(Sim::prefix(n)), Some(n));
            let ll = link_local(n, 7).segments();
            assert_eq!((u32::from(ll[4]) << 16) | u32::from(ll[5]), n);
        }
    }

    #[test]
    fn underlay_latency_is_symmetric_and_bounded() {
        let sim = Sim::new(SimConfig::default());
        for (a, b) in [(0, 1), (5, 900), (77, 3)] {
            let l = sim.underlay(a, b);
            assert_eq!(l, sim.underlay(b, a));
            assert!(l >= sim.config.latency_min && l <= sim.config.latency_max);
        }
    }
}
