//! In-memory simulator: many routers on a virtual clock, joined by links of
//! configurable latency and loss, all randomness seeded.
//!
//! Every packet goes through the real wire encoding: a router's
//! `poll_transmit` output is copied onto the link and fed to the receivers'
//! `handle_packet` after the link latency. Route changes are applied to a
//! per-node "kernel" table, which [`Sim::trace`] follows hop by hop to check
//! reachability and the absence of forwarding loops.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::net::{IpAddr, Ipv6Addr};
use std::time::{Duration, Instant};

use crate::router::{
    Destination, Event, InterfaceConfig, InterfaceKind, KernelRoute, RouteChange, Router,
    RouterConfig,
};
use crate::wire::Prefix;

/// Index of a node.
pub type NodeId = usize;
/// Index of a link.
pub type LinkId = usize;

/// A simulated router and its kernel table.
#[derive(Debug)]
pub struct Node {
    /// The router.
    pub router: Router,
    /// Routes installed, keyed by (prefix, source prefix).
    pub kernel: BTreeMap<(Prefix, Option<Prefix>), KernelRoute>,
    /// Link of each interface.
    pub interfaces: BTreeMap<u32, LinkId>,
    /// Events other than route changes, in order.
    pub events: Vec<Event>,
    /// Prefixes this node originates (for [`Sim::trace`]).
    pub local: Vec<Prefix>,
    deadline: Option<Duration>,
    /// How many kernel routes have each destination length (so lookups
    /// only try lengths that exist).
    lengths: BTreeMap<u8, usize>,
}

/// A link: a point-to-point tunnel or a shared segment.
#[derive(Debug, Clone)]
pub struct Link {
    /// (node, ifindex, link-local address) of each attached interface.
    pub members: Vec<(NodeId, u32, Ipv6Addr)>,
    /// One-way delay.
    pub latency: Duration,
    /// Probability of losing each packet, per receiver.
    pub loss: f64,
    /// Down links drop everything.
    pub up: bool,
}

/// Why a trace did not reach its destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TraceError {
    /// A node had no route; the path so far.
    NoRoute(Vec<NodeId>),
    /// The path came back to a node it had visited.
    Loop(Vec<NodeId>),
    /// A next hop named no node on the link (or the link was down).
    BadNextHop(Vec<NodeId>),
}

#[derive(Debug)]
struct Delivery {
    node: NodeId,
    ifindex: u32,
    source: Ipv6Addr,
    multicast: bool,
    bytes: Vec<u8>,
}

/// The simulator.
#[derive(Debug)]
pub struct Sim {
    base: Instant,
    now: Duration,
    seed: u64,
    rng: u64,
    nodes: Vec<Node>,
    links: Vec<Link>,
    seq: u64,
    deliveries: BinaryHeap<Reverse<(Duration, u64)>>,
    in_flight: HashMap<u64, Delivery>,
    timers: BinaryHeap<Reverse<(Duration, NodeId)>>,
    buf: Vec<u8>,
    /// Packets delivered so far.
    pub delivered: u64,
}

impl Sim {
    /// An empty simulation whose randomness derives from `seed`.
    pub fn new(seed: u64) -> Self {
        Self {
            base: Instant::now(),
            now: Duration::ZERO,
            seed,
            rng: seed ^ 0x5eed_5eed_5eed_5eed,
            nodes: Vec::new(),
            links: Vec::new(),
            seq: 0,
            deliveries: BinaryHeap::new(),
            in_flight: HashMap::new(),
            timers: BinaryHeap::new(),
            buf: vec![0; 65536],
            delivered: 0,
        }
    }

    /// The current virtual time.
    pub fn now(&self) -> Instant {
        self.base + self.now
    }

    /// Virtual time elapsed since the start.
    pub fn elapsed(&self) -> Duration {
        self.now
    }

    /// Adds a router with a default configuration (router-id and seed
    /// derived from the node number).
    pub fn add_node(&mut self) -> NodeId {
        self.add_node_with(RouterConfig::default())
    }

    /// Adds a router; its router-id and seed are derived from the node
    /// number unless set in `config` (non-zero router-id).
    pub fn add_node_with(&mut self, mut config: RouterConfig) -> NodeId {
        let id = self.nodes.len();
        if config.router_id == [0; 8] {
            config.router_id = (id as u64 + 1).to_be_bytes();
        }
        config.seed = self.seed.wrapping_mul(0x9e37_79b9).wrapping_add(id as u64);
        let router = Router::new(config, self.now());
        self.nodes.push(Node {
            router,
            kernel: BTreeMap::new(),
            interfaces: BTreeMap::new(),
            events: Vec::new(),
            local: Vec::new(),
            deadline: None,
            lengths: BTreeMap::new(),
        });
        self.drain(id);
        id
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether there are no nodes.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// A node.
    pub fn node(&self, id: NodeId) -> &Node {
        &self.nodes[id]
    }

    /// A link.
    pub fn link(&self, id: LinkId) -> &Link {
        &self.links[id]
    }

    /// Joins `a` and `b` by a point-to-point link of `kind`.
    pub fn connect(
        &mut self,
        a: NodeId,
        b: NodeId,
        kind: InterfaceKind,
        latency: Duration,
    ) -> LinkId {
        self.segment(&[a, b], kind, latency)
    }

    /// Joins `nodes` by a shared segment (multicast reaches all of them).
    pub fn segment(&mut self, nodes: &[NodeId], kind: InterfaceKind, latency: Duration) -> LinkId {
        self.segment_with(nodes, latency, |ll| InterfaceConfig::new(kind, ll))
    }

    /// Like [`Sim::segment`], with each interface configured by `config`
    /// from its link-local address.
    pub fn segment_with(
        &mut self,
        nodes: &[NodeId],
        latency: Duration,
        config: impl Fn(Ipv6Addr) -> InterfaceConfig,
    ) -> LinkId {
        let link = self.links.len();
        let mut members = Vec::new();
        for &n in nodes {
            let ifindex = self.nodes[n].interfaces.keys().last().map_or(1, |i| i + 1);
            let ll = Ipv6Addr::new(
                0xfe80,
                0,
                0,
                0,
                0,
                (n >> 16) as u16,
                n as u16,
                ifindex as u16,
            );
            members.push((n, ifindex, ll));
            self.nodes[n].interfaces.insert(ifindex, link);
            let now = self.now();
            self.nodes[n].router.add_interface(ifindex, config(ll), now);
        }
        self.links.push(Link {
            members,
            latency,
            loss: 0.0,
            up: true,
        });
        for &n in nodes {
            self.drain(n);
        }
        link
    }

    /// Brings a link down (everything sent on it is lost) or up.
    pub fn set_link_up(&mut self, link: LinkId, up: bool) {
        self.links[link].up = up;
    }

    /// Sets a link's loss probability.
    pub fn set_loss(&mut self, link: LinkId, loss: f64) {
        self.links[link].loss = loss;
    }

    /// Sets a link's one-way latency.
    pub fn set_latency(&mut self, link: LinkId, latency: Duration) {
        self.links[link].latency = latency;
    }

    /// Runs a command on a node's router (given the current time), then
    /// processes its output.
    pub fn command<T>(&mut self, node: NodeId, f: impl FnOnce(&mut Router, Instant) -> T) -> T {
        let now = self.now();
        let r = f(&mut self.nodes[node].router, now);
        self.drain(node);
        r
    }

    /// Makes `node` originate `prefix`.
    pub fn redistribute(&mut self, node: NodeId, prefix: Prefix) {
        self.nodes[node].local.push(prefix);
        self.command(node, |r, now| r.redistribute(prefix, None, 0, now));
    }

    /// Tells both ends of a point-to-point link that it died (as the tunnel
    /// layer does), and brings it down.
    pub fn cut(&mut self, link: LinkId) {
        self.links[link].up = false;
        let members = self.links[link].members.clone();
        for &(n, ifindex, _) in &members {
            for &(m, _, addr) in &members {
                if m != n {
                    self.command(n, |r, now| r.flush_neighbour(ifindex, addr, now));
                }
            }
        }
    }

    /// Runs the simulation for `d` of virtual time.
    pub fn run_for(&mut self, d: Duration) {
        let end = self.now + d;
        loop {
            let next_delivery = self.deliveries.peek().map(|Reverse((t, _))| *t);
            let next_timer = loop {
                match self.timers.peek() {
                    Some(Reverse((t, n))) if self.nodes[*n].deadline != Some(*t) => {
                        self.timers.pop();
                    }
                    Some(Reverse((t, _))) => break Some(*t),
                    None => break None,
                }
            };
            let next = match (next_delivery, next_timer) {
                (Some(a), Some(b)) => a.min(b),
                (a, b) => match a.or(b) {
                    Some(t) => t,
                    None => break,
                },
            };
            if next > end {
                break;
            }
            self.now = self.now.max(next);
            if next_delivery == Some(next) {
                let Some(Reverse((_, seq))) = self.deliveries.pop() else {
                    break;
                };
                let Some(d) = self.in_flight.remove(&seq) else {
                    continue;
                };
                let now = self.now();
                self.delivered += 1;
                self.nodes[d.node].router.handle_packet(
                    d.ifindex,
                    d.source,
                    d.multicast,
                    &d.bytes,
                    now,
                );
                self.drain(d.node);
            } else {
                let Some(Reverse((_, n))) = self.timers.pop() else {
                    break;
                };
                self.nodes[n].deadline = None;
                let now = self.now();
                self.nodes[n].router.handle_timeout(now);
                self.drain(n);
            }
        }
        self.now = end;
    }

    /// Runs until `check` holds (tested every `step`), for at most `limit`.
    /// Returns the virtual time it took, or `None`.
    pub fn run_until(
        &mut self,
        step: Duration,
        limit: Duration,
        mut check: impl FnMut(&Self) -> bool,
    ) -> Option<Duration> {
        let start = self.now;
        while self.now - start < limit {
            self.run_for(step);
            if check(self) {
                return Some(self.now - start);
            }
        }
        None
    }

    /// Follows installed routes from `from` towards `dst` (longest prefix
    /// match, source-specific routes matched against `src`) until a node
    /// that originates a prefix containing `dst`. Returns the path.
    pub fn trace(
        &self,
        from: NodeId,
        dst: IpAddr,
        src: Option<IpAddr>,
    ) -> Result<Vec<NodeId>, TraceError> {
        let mut path = vec![from];
        let mut at = from;
        loop {
            let node = &self.nodes[at];
            if node.local.iter().any(|p| p.contains_addr(dst)) {
                return Ok(path);
            }
            let Some(route) = lookup(node, dst, src) else {
                return Err(TraceError::NoRoute(path));
            };
            let Some(&link) = node.interfaces.get(&route.ifindex) else {
                return Err(TraceError::BadNextHop(path));
            };
            let link = &self.links[link];
            let next = link
                .members
                .iter()
                .find(|(_, _, addr)| IpAddr::V6(*addr) == route.next_hop)
                .map(|(n, _, _)| *n);
            let Some(next) = next.filter(|_| link.up) else {
                return Err(TraceError::BadNextHop(path));
            };
            if path.contains(&next) {
                path.push(next);
                return Err(TraceError::Loop(path));
            }
            path.push(next);
            at = next;
        }
    }

    /// Delivers a raw packet to a node now (for fuzz-like tests).
    pub fn inject(
        &mut self,
        node: NodeId,
        ifindex: u32,
        source: Ipv6Addr,
        multicast: bool,
        bytes: &[u8],
    ) {
        let now = self.now();
        self.nodes[node]
            .router
            .handle_packet(ifindex, source, multicast, bytes, now);
        self.drain(node);
    }

    /// Processes a node's output: packets onto links, route changes into
    /// its kernel table, and its next deadline into the timer heap.
    fn drain(&mut self, n: NodeId) {
        let now = self.now();
        while let Some(tx) = self.nodes[n].router.poll_transmit(now, &mut self.buf) {
            let Some(&link) = self.nodes[n].interfaces.get(&tx.ifindex) else {
                continue;
            };
            if !self.links[link].up {
                continue;
            }
            let bytes = self.buf[..tx.len].to_vec();
            let source = self.links[link]
                .members
                .iter()
                .find(|(m, i, _)| *m == n && *i == tx.ifindex)
                .map(|(_, _, a)| *a);
            let Some(source) = source else {
                continue;
            };
            let (latency, loss) = (self.links[link].latency, self.links[link].loss);
            let members = self.links[link].members.clone();
            for (m, ifindex, addr) in members {
                if m == n && ifindex == tx.ifindex {
                    continue;
                }
                let multicast = match tx.destination {
                    Destination::Multicast => true,
                    Destination::Unicast(a) if a == IpAddr::V6(addr) => false,
                    Destination::Unicast(_) => continue,
                };
                if loss > 0.0 && self.random() < loss {
                    continue;
                }
                self.seq += 1;
                self.in_flight.insert(
                    self.seq,
                    Delivery {
                        node: m,
                        ifindex,
                        source,
                        multicast,
                        bytes: bytes.clone(),
                    },
                );
                self.deliveries
                    .push(Reverse((self.now + latency, self.seq)));
            }
        }
        let node = &mut self.nodes[n];
        while let Some(ev) = node.router.poll_event() {
            match ev {
                Event::Route(RouteChange::Add(r)) => node.install(r),
                Event::Route(RouteChange::Replace { old, new }) => {
                    node.uninstall(&old);
                    node.install(new);
                }
                Event::Route(RouteChange::Remove(r)) => node.uninstall(&r),
                other => node.events.push(other),
            }
        }
        let deadline = node
            .router
            .poll_timeout()
            .map(|t| t.saturating_duration_since(self.base).max(self.now));
        if deadline != node.deadline {
            node.deadline = deadline;
            if let Some(d) = deadline {
                self.timers.push(Reverse((d, n)));
            }
        }
    }

    fn random(&mut self) -> f64 {
        self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    }
}

impl Node {
    fn install(&mut self, r: KernelRoute) {
        if self.kernel.insert((r.prefix, r.src_prefix), r).is_none() {
            *self.lengths.entry(r.prefix.len()).or_default() += 1;
        }
    }

    fn uninstall(&mut self, r: &KernelRoute) {
        if self.kernel.remove(&(r.prefix, r.src_prefix)).is_some() {
            if let Some(c) = self.lengths.get_mut(&r.prefix.len()) {
                *c -= 1;
                if *c == 0 {
                    self.lengths.remove(&r.prefix.len());
                }
            }
        }
    }
}

/// Destination-first longest match, then the most specific source prefix
/// that contains `src` (a route without source prefix matches any source).
fn lookup(node: &Node, dst: IpAddr, src: Option<IpAddr>) -> Option<&KernelRoute> {
    node.lengths.keys().rev().find_map(|&len| {
        let p = Prefix::new(dst, len).ok()?;
        node.kernel
            .range((p, None)..)
            .take_while(|((q, _), _)| *q == p)
            .map(|(_, r)| r)
            .filter(|r| match (r.src_prefix, src) {
                (None, _) => true,
                (Some(s), Some(a)) => s.contains_addr(a),
                (Some(_), None) => false,
            })
            .max_by_key(|r| r.src_prefix.map_or(0, |p| p.len()))
    })
}
