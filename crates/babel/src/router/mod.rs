//! The Babel router state machine (RFC 8966, RFC 9079, RFC 8967 and the RTT
//! extension), with no I/O.
//!
//! The [`Router`] follows the project's state-machine shape:
//!
//! - commands: [`Router::add_interface`], [`Router::redistribute`],
//!   [`Router::flush_neighbour`], [`Router::set_cost_multiplier`], ...;
//! - inputs: [`Router::handle_packet`] and [`Router::handle_timeout`];
//! - outputs, polled in this order after every input: [`Router::poll_transmit`]
//!   until `None`, then [`Router::poll_event`] until `None`, then
//!   [`Router::poll_timeout`] to know when to call `handle_timeout`;
//! - getters: [`Router::dump`], [`Router::route_count`], ...
//!
//! Time is always an argument; randomness comes from
//! [`RouterConfig::seed`].
//!
//! The modules follow babeld's split: [`interface`](InterfaceConfig),
//! `neighbour` (hellos, IHU, cost, RTT), `source` (feasibility distances),
//! `route` (table, selection, smoothing), `xroute` (our prefixes), `resend`
//! (retransmissions), `filter`, `mac` (RFC 8967 anti-replay), `output`
//! (buffered emission) and `timer`.

mod filter;
mod hash;
mod interface;
mod mac;
mod neighbour;
mod output;
mod resend;
mod route;
mod source;
mod timer;
mod xroute;

use std::collections::{BTreeMap, VecDeque};
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

pub use filter::{Action, Filter, Match, Rule};
pub use interface::{InterfaceConfig, InterfaceKind};
pub use mac::MacConfig;
pub use neighbour::RttConfig;

pub use crate::wire::mac::{Algorithm as MacAlgorithm, Key as MacKey};
use crate::wire::{
    self, mac as wire_mac, Ack, ChallengeReply, ChallengeRequest, Hello, Ihu, IhuTimestamp, Packet,
    PacketBuilder, Pc, Prefix, RouteRequest, SeqnoRequest, Tlv, Update,
};
use hash::FxHashMap;
use interface::Interface;
use mac::{MacState, Verdict};
use neighbour::{Neighbour, NeighbourId};
use output::{Control, Dest, Queue};
use resend::{Due, Resend, Target};
use route::{Entry, Installed, Route, RouteKey, Table};
use source::{seqno_cmp, Sources};
use timer::{Clock, Rng, Time, Timer, Timers};
use xroute::Xroutes;

/// The infinite metric: a retraction.
pub const INFINITY: u16 = wire::INFINITY;
/// Babel's UDP port.
pub const PORT: u16 = 6696;
/// Babel's link-local multicast group, `ff02::1:6`.
pub const MULTICAST_GROUP: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 1, 6);

/// An 8-byte router-id.
pub(crate) type RouterId = [u8; 8];

/// Hop count of the seqno requests we originate (babeld uses 127).
const REQUEST_HOP_COUNT: u8 = 127;
/// Interval between garbage collections of sources and other soft state.
const GC_INTERVAL_MS: Time = 30_000;
/// Metric increase that makes a triggered update urgent (babeld).
const URGENT_INCREASE: u16 = 512;
/// Metric change that triggers a (non-urgent) update.
const SIGNIFICANT_CHANGE: u16 = 256;

/// Router configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouterConfig {
    /// Our router-id (the shell derives it from a seeded RNG or a MAC
    /// address).
    pub router_id: [u8; 8],
    /// Seed of the RNG used for jitter, nonces and the MAC index.
    pub seed: u64,
    /// Default RTT parameters (interfaces may override them).
    pub rtt: RttConfig,
    /// MAC authentication; `None` sends and accepts unsigned packets.
    pub mac: Option<MacConfig>,
    /// In, out and install filters.
    pub filters: Filter,
    /// Whether the kernel supports source-specific IPv6 routes. When false,
    /// IPv6 source-specific routes are accepted only for `::/0` from
    /// [`RouterConfig::network`], and installed without source prefix.
    pub kernel_has_ipv6_subtrees: bool,
    /// Our network's prefix (used by the no-subtrees fallback).
    pub network: Option<Prefix>,
}

impl Default for RouterConfig {
    fn default() -> Self {
        Self {
            router_id: [0; 8],
            seed: 0,
            rtt: RttConfig::default(),
            mac: None,
            filters: Filter::default(),
            kernel_has_ipv6_subtrees: true,
            network: None,
        }
    }
}

/// Where a packet goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Destination {
    /// To `ff02::1:6` on the interface.
    Multicast,
    /// To one neighbour.
    Unicast(IpAddr),
}

/// A packet written by [`Router::poll_transmit`] into the caller's buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transmit {
    /// Interface to send on.
    pub ifindex: u32,
    /// Destination (port 6696).
    pub destination: Destination,
    /// Length of the datagram at the start of the buffer.
    pub len: usize,
}

/// A route as the kernel should hold it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct KernelRoute {
    /// Destination.
    pub prefix: Prefix,
    /// Source prefix (RFC 9079), if source-specific.
    pub src_prefix: Option<Prefix>,
    /// Next hop (the neighbour's link-local address, usually).
    pub next_hop: IpAddr,
    /// Outgoing interface.
    pub ifindex: u32,
    /// Babel metric. In events, the metric when the route was installed or
    /// moved: metric changes alone do not produce events (the kernel need
    /// not be touched); getters return the current metric.
    pub metric: u16,
}

/// A change to apply to the kernel routing table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteChange {
    /// Install a new route.
    Add(KernelRoute),
    /// Atomically replace a route for the same destination.
    Replace {
        /// The route to replace.
        old: KernelRoute,
        /// Its replacement.
        new: KernelRoute,
    },
    /// Remove a route.
    Remove(KernelRoute),
}

/// Something the shell should know about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A kernel route change.
    Route(RouteChange),
    /// A neighbour appeared.
    NeighbourUp {
        /// Its interface.
        ifindex: u32,
        /// Its link-local address.
        address: Ipv6Addr,
    },
    /// A neighbour was lost or flushed.
    NeighbourDown {
        /// Its interface.
        ifindex: u32,
        /// Its link-local address.
        address: Ipv6Addr,
    },
}

/// A snapshot of the router's state, for `re6st status` and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dump {
    /// Our router-id.
    pub router_id: [u8; 8],
    /// Our current seqno.
    pub seqno: u16,
    /// Interfaces.
    pub interfaces: Vec<InterfaceInfo>,
    /// Neighbours.
    pub neighbours: Vec<NeighbourInfo>,
    /// Every route of the table (selected or not).
    pub routes: Vec<RouteInfo>,
    /// Feasibility distances.
    pub sources: Vec<SourceInfo>,
    /// Our exported prefixes.
    pub xroutes: Vec<XrouteInfo>,
}

/// An interface in a [`Dump`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceInfo {
    /// OS interface index.
    pub ifindex: u32,
    /// Configuration.
    pub config: InterfaceConfig,
    /// Seqno of our last hello.
    pub hello_seqno: u16,
}

/// A neighbour in a [`Dump`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NeighbourInfo {
    /// Interface.
    pub ifindex: u32,
    /// Link-local address.
    pub address: Ipv6Addr,
    /// Multicast hello history (bit 15: latest).
    pub reach: u16,
    /// Unicast hello history.
    pub ureach: u16,
    /// How well we hear it.
    pub rxcost: u16,
    /// How well it hears us (from its IHU).
    pub txcost: u16,
    /// Link cost used for routes (RTT penalty and multiplier included).
    pub cost: u16,
    /// Smoothed RTT, when measured recently.
    pub rtt: Option<Duration>,
    /// Cost multiplier (256 = 1.0).
    pub cost_multiplier: u16,
}

/// A route in a [`Dump`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteInfo {
    /// Destination.
    pub prefix: Prefix,
    /// Source prefix, if source-specific.
    pub src_prefix: Option<Prefix>,
    /// Interface of the neighbour.
    pub ifindex: u32,
    /// Neighbour it was learned from.
    pub neighbour: Ipv6Addr,
    /// Next hop.
    pub next_hop: IpAddr,
    /// Originator.
    pub router_id: [u8; 8],
    /// Source seqno.
    pub seqno: u16,
    /// Metric advertised by the neighbour.
    pub refmetric: u16,
    /// Our metric through the neighbour.
    pub metric: u16,
    /// Smoothed metric.
    pub smoothed_metric: u16,
    /// Passes the feasibility condition.
    pub feasible: bool,
    /// Is the selected route for its destination.
    pub selected: bool,
    /// Is in the kernel.
    pub installed: bool,
}

/// A feasibility distance in a [`Dump`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceInfo {
    /// Destination.
    pub prefix: Prefix,
    /// Source prefix.
    pub src_prefix: Option<Prefix>,
    /// Originator.
    pub router_id: [u8; 8],
    /// Seqno of the distance.
    pub seqno: u16,
    /// Metric of the distance.
    pub metric: u16,
}

/// An exported prefix in a [`Dump`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XrouteInfo {
    /// Destination.
    pub prefix: Prefix,
    /// Source prefix.
    pub src_prefix: Option<Prefix>,
    /// Metric we announce.
    pub metric: u16,
}

/// Traffic and dropped-input counters, for diagnostics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Packets received.
    pub packets: u64,
    /// Packets dropped as malformed (or on unknown interfaces, or from
    /// non-link-local sources).
    pub malformed: u64,
    /// Packets dropped by MAC verification or anti-replay.
    pub unauthenticated: u64,
    /// Packets sent.
    pub sent: u64,
    /// Bytes received (Babel payload, every packet counted in `packets`).
    pub bytes_received: u64,
    /// Bytes sent (Babel payload of the packets counted in `sent`).
    pub bytes_sent: u64,
}

/// The Babel router. See the module documentation for the calling
/// convention.
#[derive(Debug)]
pub struct Router {
    config: RouterConfig,
    verify_keys: Vec<MacKey>,
    clock: Clock,
    rng: Rng,
    timers: Timers,
    seqno: u16,
    interfaces: BTreeMap<u32, Interface>,
    neighbours: Vec<Option<Neighbour>>,
    free: Vec<NeighbourId>,
    by_address: FxHashMap<(u32, Ipv6Addr), NeighbourId>,
    multipliers: FxHashMap<(u32, Option<Ipv6Addr>), u16>,
    table: Table,
    sources: Sources,
    xroutes: Xroutes,
    resend: Resend,
    mac: MacState,
    queues: BTreeMap<(u32, Dest), Queue>,
    events: VecDeque<Event>,
    stats: Stats,
}

/// What we announce for a destination at a given moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Announcement {
    router_id: RouterId,
    seqno: u16,
    metric: u16,
}

impl Router {
    /// A router with no interfaces, created at `now` (its time origin).
    pub fn new(config: RouterConfig, now: Instant) -> Self {
        let mut rng = Rng::new(config.seed);
        let mac = MacState::new(&mut rng);
        let mut timers = Timers::default();
        timers.set(Timer::Gc, GC_INTERVAL_MS);
        let seqno = (rng.next_u64() & 0xffff) as u16;
        let verify_keys = config
            .mac
            .as_ref()
            .map_or(Vec::new(), MacConfig::verify_keys);
        Self {
            config,
            verify_keys,
            clock: Clock::new(now),
            rng,
            timers,
            seqno,
            interfaces: BTreeMap::new(),
            neighbours: Vec::new(),
            free: Vec::new(),
            by_address: FxHashMap::default(),
            multipliers: FxHashMap::default(),
            table: Table::default(),
            sources: Sources::default(),
            xroutes: Xroutes::default(),
            resend: Resend::default(),
            mac,
            queues: BTreeMap::new(),
            events: VecDeque::new(),
            stats: Stats::default(),
        }
    }

    // ---------------------------------------------------------------- getters

    /// Our router-id.
    pub fn router_id(&self) -> [u8; 8] {
        self.config.router_id
    }

    /// Our current seqno.
    pub fn seqno(&self) -> u16 {
        self.seqno
    }

    /// Number of route records (one per destination and neighbour).
    pub fn route_count(&self) -> usize {
        self.table.routes
    }

    /// Number of destinations in the route table.
    pub fn destination_count(&self) -> usize {
        self.table.entries.len()
    }

    /// Number of neighbours.
    pub fn neighbour_count(&self) -> usize {
        self.by_address.len()
    }

    /// Input and output counters.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// The route the kernel should hold for a destination, if any.
    pub fn installed_route(
        &self,
        prefix: Prefix,
        src_prefix: Option<Prefix>,
    ) -> Option<KernelRoute> {
        let key = RouteKey::new(prefix, src_prefix);
        let installed = self.table.get(&key)?.installed?;
        Some(self.kernel_route(&key, installed))
    }

    /// Every route the kernel should hold.
    pub fn installed_routes(&self) -> Vec<KernelRoute> {
        self.table
            .entries
            .iter()
            .filter_map(|(k, e)| e.installed.map(|i| self.kernel_route(k, i)))
            .collect()
    }

    /// A snapshot of interfaces, neighbours, routes, sources and xroutes.
    pub fn dump(&self) -> Dump {
        let now = self.now_estimate();
        let interfaces = self
            .interfaces
            .iter()
            .map(|(&ifindex, i)| InterfaceInfo {
                ifindex,
                config: i.config.clone(),
                hello_seqno: i.hello_seqno,
            })
            .collect();
        let neighbours = self
            .neighbours
            .iter()
            .flatten()
            .map(|n| {
                let kind = self
                    .interfaces
                    .get(&n.ifindex)
                    .map(|i| (i.config.kind, i.config.rxcost));
                NeighbourInfo {
                    ifindex: n.ifindex,
                    address: n.address,
                    reach: n.hello.reach,
                    ureach: n.uhello.reach,
                    rxcost: kind.map_or(INFINITY, |(k, c)| n.rxcost(k, c)),
                    txcost: n.txcost,
                    cost: n.cost,
                    rtt: n
                        .rtt
                        .time
                        .map(|_| Duration::from_micros(u64::from(n.rtt.rtt_us))),
                    cost_multiplier: n.multiplier,
                }
            })
            .collect();
        let mut routes = Vec::with_capacity(self.table.routes);
        for (key, entry) in &self.table.entries {
            for r in &entry.routes {
                let Some(n) = self.neighbour(r.neighbour) else {
                    continue;
                };
                let selected = entry.selected == Some(r.neighbour);
                routes.push(RouteInfo {
                    prefix: key.prefix,
                    src_prefix: key.src(),
                    ifindex: n.ifindex,
                    neighbour: n.address,
                    next_hop: r.next_hop,
                    router_id: r.router_id,
                    seqno: r.seqno,
                    refmetric: r.refmetric,
                    metric: r.metric,
                    smoothed_metric: r.smoothed(now),
                    feasible: self
                        .sources
                        .is_feasible(key, &r.router_id, r.seqno, r.refmetric),
                    selected,
                    installed: selected && entry.installed.is_some(),
                });
            }
        }
        let sources = self
            .sources
            .iter()
            .map(|((k, rid), s)| SourceInfo {
                prefix: k.prefix,
                src_prefix: k.src(),
                router_id: *rid,
                seqno: s.seqno,
                metric: s.metric,
            })
            .collect();
        let xroutes = self
            .xroutes
            .map
            .iter()
            .map(|(k, &metric)| XrouteInfo {
                prefix: k.prefix,
                src_prefix: k.src(),
                metric,
            })
            .collect();
        Dump {
            router_id: self.config.router_id,
            seqno: self.seqno,
            interfaces,
            neighbours,
            routes,
            sources,
            xroutes,
        }
    }

    // --------------------------------------------------------------- commands

    /// Starts running on an interface (replacing its configuration if it is
    /// already known). The first hello and a wildcard route request go out
    /// at once.
    pub fn add_interface(&mut self, ifindex: u32, config: InterfaceConfig, now: Instant) {
        let t = self.clock.time(now);
        let hello_jitter = self.rng.below(config.hello_ms() / 8 + 1);
        let update_jitter = self.rng.below(config.hello_ms() / 2 + 1);
        let hello_seqno = (self.rng.next_u64() & 0xffff) as u16;
        if let Some(i) = self.interfaces.get_mut(&ifindex) {
            i.config = config;
            return;
        }
        self.interfaces.insert(
            ifindex,
            Interface {
                config,
                hello_seqno,
                hello_deadline: t + hello_jitter,
                update_deadline: t + update_jitter,
            },
        );
        self.queue_control(
            ifindex,
            Dest::Multicast,
            Control::RouteRequest { key: None },
            true,
            t,
        );
    }

    /// Stops running on an interface: its neighbours are flushed (their
    /// routes retracted) and its queued output dropped.
    pub fn remove_interface(&mut self, ifindex: u32, now: Instant) {
        let t = self.clock.time(now);
        let ids: Vec<NeighbourId> = self
            .by_address
            .iter()
            .filter(|((i, _), _)| *i == ifindex)
            .map(|(_, &id)| id)
            .collect();
        for id in ids {
            self.drop_neighbour(id, t);
        }
        self.interfaces.remove(&ifindex);
        self.queues.retain(|(i, _), _| *i != ifindex);
        self.mac.forget_interface(ifindex);
        self.multipliers.retain(|(i, _), _| *i != ifindex);
    }

    /// Forgets a neighbour at once (its tunnel died): its routes are
    /// removed, and retracted or replaced without waiting for timeouts.
    pub fn flush_neighbour(&mut self, ifindex: u32, address: Ipv6Addr, now: Instant) {
        let t = self.clock.time(now);
        if let Some(&id) = self.by_address.get(&(ifindex, address)) {
            self.drop_neighbour(id, t);
        }
        self.mac.forget(ifindex, address);
    }

    /// Multiplies the cost of one neighbour (`address` given) or of every
    /// neighbour on the interface by `multiplier / 256`. Kept for
    /// neighbours that appear later.
    pub fn set_cost_multiplier(
        &mut self,
        ifindex: u32,
        address: Option<Ipv6Addr>,
        multiplier: u16,
        now: Instant,
    ) {
        let t = self.clock.time(now);
        let multiplier = multiplier.max(1);
        self.multipliers.insert((ifindex, address), multiplier);
        let ids: Vec<NeighbourId> = self
            .by_address
            .iter()
            .filter(|((i, a), _)| *i == ifindex && address.is_none_or(|x| x == *a))
            .map(|(_, &id)| id)
            .collect();
        for id in ids {
            if let Some(n) = self.neighbour_mut(id) {
                n.multiplier = multiplier;
            }
            self.update_cost(id, t);
        }
    }

    /// Announces a local prefix (optionally source-specific) with `metric`.
    pub fn redistribute(
        &mut self,
        prefix: Prefix,
        src_prefix: Option<Prefix>,
        metric: u16,
        now: Instant,
    ) {
        let t = self.clock.time(now);
        let key = RouteKey::new(prefix, src_prefix);
        let before = self.announcement(&key);
        if self.xroutes.add(key, metric.min(INFINITY - 1)) {
            self.reselect(key, before, t);
        }
    }

    /// Stops announcing a local prefix; it is retracted unless a learned
    /// route takes over.
    pub fn withdraw(&mut self, prefix: Prefix, src_prefix: Option<Prefix>, now: Instant) {
        let t = self.clock.time(now);
        let key = RouteKey::new(prefix, src_prefix);
        let before = self.announcement(&key);
        if self.xroutes.remove(&key) {
            self.reselect(key, before, t);
        }
    }

    /// Replaces the MAC configuration (key rotation).
    pub fn set_mac(&mut self, mac: Option<MacConfig>) {
        self.verify_keys = mac.as_ref().map_or(Vec::new(), MacConfig::verify_keys);
        self.config.mac = mac;
    }

    /// Shutdown: retracts all our exported prefixes on every interface,
    /// urgently, and stops announcing them.
    pub fn retract_all(&mut self, now: Instant) {
        let t = self.clock.time(now);
        let keys: Vec<RouteKey> = self.xroutes.map.keys().copied().collect();
        for key in keys {
            let before = self.announcement(&key);
            self.xroutes.remove(&key);
            self.reselect(key, before, t);
            if self.announcement(&key).is_some() {
                // A learned route took over; still tell neighbours that we
                // no longer originate it by sending the update at once.
                self.queue_update_all(key, true, t);
            }
        }
        // The process is about to exit: everything goes out now.
        for q in self.queues.values_mut() {
            q.deadline = Some(t);
        }
    }

    // ----------------------------------------------------------------- inputs

    /// Processes a Babel packet received on `ifindex` from `source` (the
    /// sender's link-local address), sent to the multicast group or to us.
    pub fn handle_packet(
        &mut self,
        ifindex: u32,
        source: Ipv6Addr,
        multicast: bool,
        bytes: &[u8],
        now: Instant,
    ) {
        self.stats.packets += 1;
        self.stats.bytes_received += bytes.len() as u64;
        let t = self.clock.time(now);
        let Some(iface) = self.interfaces.get(&ifindex) else {
            self.stats.malformed += 1;
            return;
        };
        if !is_link_local(source) {
            self.stats.malformed += 1;
            return;
        }
        let Ok(packet) = Packet::new_checked(bytes) else {
            self.stats.malformed += 1;
            return;
        };
        let link_local = iface.config.link_local;
        if self.config.mac.is_some()
            && !self.authenticate(ifindex, source, multicast, link_local, &packet, t)
        {
            self.stats.unauthenticated += 1;
            return;
        }
        let now_us = self.clock.timestamp_us(now);
        // The RTT computation needs the hello's timestamp wherever the hello
        // sits in the packet.
        let hello_ts = packet.tlvs().find_map(|tlv| match tlv {
            Ok(Tlv::Hello(h)) => h.timestamp,
            _ => None,
        });
        for tlv in packet.tlvs() {
            let Ok(tlv) = tlv else {
                self.stats.malformed += 1;
                break;
            };
            match tlv {
                Tlv::Hello(h) => self.handle_hello(ifindex, source, multicast, &h, now_us, t),
                Tlv::Ihu(ihu) => self.handle_ihu(ifindex, source, &ihu, hello_ts, now_us, t),
                Tlv::AckReq(req) => {
                    let ack = Control::Ack { opaque: req.opaque };
                    self.queue_control(ifindex, Dest::Unicast(source), ack, true, t);
                }
                Tlv::Update(u) => {
                    if let Some(&id) = self.by_address.get(&(ifindex, source)) {
                        self.handle_update(id, ifindex, source, &u, t);
                    }
                }
                Tlv::RouteRequest(r) if self.by_address.contains_key(&(ifindex, source)) => {
                    self.handle_route_request(ifindex, source, multicast, &r, t);
                }
                Tlv::SeqnoRequest(r) => {
                    if let Some(&id) = self.by_address.get(&(ifindex, source)) {
                        self.handle_seqno_request(id, ifindex, source, multicast, &r, t);
                    }
                }
                _ => {}
            }
        }
    }

    /// Runs whatever is due at `now`: hellos, periodic updates, neighbour
    /// and route timeouts, resends, garbage collection.
    pub fn handle_timeout(&mut self, now: Instant) {
        let t = self.clock.time(now);
        // Interfaces.
        let ifindexes: Vec<u32> = self.interfaces.keys().copied().collect();
        for ifindex in ifindexes {
            let Some(iface) = self.interfaces.get(&ifindex) else {
                continue;
            };
            let (hello_due, update_due) = (iface.hello_deadline <= t, iface.update_deadline <= t);
            if hello_due {
                self.send_hello(ifindex, t);
            }
            if update_due {
                self.queue_full_dump(ifindex, Dest::Multicast, false, t);
                if let Some(iface) = self.interfaces.get_mut(&ifindex) {
                    let ms = iface.config.update_ms();
                    iface.update_deadline = self.rng.jittered(t, ms);
                }
            }
        }
        // Neighbours.
        let ids: Vec<NeighbourId> = self.by_address.values().copied().collect();
        for id in ids {
            let Some(n) = self.neighbour_mut(id) else {
                continue;
            };
            if n.next_deadline().is_none_or(|d| d > t) {
                continue;
            }
            let mut changed = n.hello.timeout(t) | n.uhello.timeout(t);
            if n.ihu_deadline.is_some_and(|d| d <= t) {
                n.ihu_deadline = None;
                n.txcost = INFINITY;
                changed = true;
            }
            if n.is_dead() {
                self.drop_neighbour(id, t);
            } else if changed {
                self.update_cost(id, t);
            }
        }
        // Routes.
        if self.timers.is_expired(Timer::RouteExpiry, t) {
            self.expire_routes(t);
        }
        // Resends.
        for due in self.resend.due(t) {
            match due {
                Due::Request(key, r) => {
                    self.send_seqno_request(key, r.router_id, r.seqno, r.hop_count, r.target, t)
                }
                Due::Update(key) => self.queue_update_all(key, true, t),
            }
        }
        // Garbage collection.
        if self.timers.is_expired(Timer::Gc, t) {
            self.sources.gc(t);
            self.resend.gc(t);
            self.mac.gc(t);
            self.timers.set(Timer::Gc, t + GC_INTERVAL_MS);
        }
    }

    // ---------------------------------------------------------------- outputs

    /// Writes the next packet to send into `buf` (at most the interface MTU
    /// is used) and says where it goes; `None` when nothing is due.
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        let t = self.clock.time(now);
        loop {
            let (&(ifindex, dest), _) = self
                .queues
                .iter()
                .find(|(_, q)| q.deadline.is_some_and(|d| d <= t) && !q.is_empty())?;
            let Some(iface) = self.interfaces.get(&ifindex) else {
                self.queues.remove(&(ifindex, dest));
                continue;
            };
            let config = iface.config.clone();
            let len = self.build_packet(ifindex, dest, &config, now, t, buf);
            let q = self.queues.get_mut(&(ifindex, dest))?;
            if q.is_empty() {
                self.queues.remove(&(ifindex, dest));
            }
            let Some(len) = len else {
                continue;
            };
            self.stats.sent += 1;
            self.stats.bytes_sent += len as u64;
            return Some(Transmit {
                ifindex,
                destination: match dest {
                    Dest::Multicast => Destination::Multicast,
                    Dest::Unicast(a) => Destination::Unicast(IpAddr::V6(a)),
                },
                len,
            });
        }
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When `handle_timeout` must be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut next = self.timers.next();
        let mut min = |t: Option<Time>| {
            if let Some(t) = t {
                next = Some(next.map_or(t, |n: Time| n.min(t)));
            }
        };
        min(self.resend.next());
        for i in self.interfaces.values() {
            min(Some(i.hello_deadline.min(i.update_deadline)));
        }
        for n in self.neighbours.iter().flatten() {
            min(n.next_deadline());
        }
        for q in self.queues.values() {
            if !q.is_empty() {
                min(q.deadline);
            }
        }
        next.map(|t| self.clock.instant(t))
    }

    // -------------------------------------------------------------- internals

    fn now_estimate(&self) -> Time {
        // Getters have no `now`; the freshest time we know is good enough
        // for the smoothed metric shown in dumps.
        self.interfaces
            .values()
            .map(|i| i.hello_deadline.saturating_sub(i.config.hello_ms()))
            .max()
            .unwrap_or(0)
    }

    fn neighbour(&self, id: NeighbourId) -> Option<&Neighbour> {
        self.neighbours.get(id as usize).and_then(Option::as_ref)
    }

    fn neighbour_mut(&mut self, id: NeighbourId) -> Option<&mut Neighbour> {
        self.neighbours
            .get_mut(id as usize)
            .and_then(Option::as_mut)
    }

    fn kernel_route(&self, key: &RouteKey, i: Installed) -> KernelRoute {
        let mut src_prefix = key.src();
        if !self.config.kernel_has_ipv6_subtrees && key.prefix.is_ipv6() {
            src_prefix = None;
        }
        KernelRoute {
            prefix: key.prefix,
            src_prefix,
            next_hop: i.next_hop,
            ifindex: i.ifindex,
            metric: i.metric,
        }
    }

    /// Verifies the MAC and the anti-replay state (RFC 8967 §4.3); answers
    /// challenges. Returns whether the packet may be processed.
    fn authenticate(
        &mut self,
        ifindex: u32,
        source: Ipv6Addr,
        multicast: bool,
        link_local: Ipv6Addr,
        packet: &Packet<&[u8]>,
        t: Time,
    ) -> bool {
        let Some(mac) = &self.config.mac else {
            return true;
        };
        let accept_unsigned = mac.accept_unsigned;
        let dst = if multicast {
            MULTICAST_GROUP
        } else {
            link_local
        };
        let ph = wire_mac::pseudo_header(
            SocketAddr::new(IpAddr::V6(source), PORT),
            SocketAddr::new(IpAddr::V6(dst), PORT),
        );
        let datagram: &[u8] = packet.into_inner();
        match wire_mac::verify(datagram, &ph, &self.verify_keys) {
            Ok(true) => {}
            Ok(false) => {
                let has_mac = packet
                    .trailer_tlvs()
                    .any(|tlv| matches!(tlv, Ok(Tlv::Mac(_)) | Err(_)));
                return accept_unsigned && !has_mac;
            }
            Err(_) => return false,
        }
        let mut pc = None;
        let mut replies: Vec<&[u8]> = Vec::new();
        let mut requests: Vec<Vec<u8>> = Vec::new();
        for tlv in packet.tlvs() {
            match tlv {
                Ok(Tlv::Pc(p)) if pc.is_none() => pc = Some((p.pc, p.index)),
                Ok(Tlv::ChallengeReply(r)) => replies.push(r.nonce),
                Ok(Tlv::ChallengeRequest(r)) => requests.push(r.nonce.to_vec()),
                Ok(_) => {}
                Err(_) => break,
            }
        }
        for nonce in requests {
            if self.mac.may_reply(ifindex, source, t) {
                let reply = Control::ChallengeReply { nonce };
                self.queue_control(ifindex, Dest::Unicast(source), reply, true, t);
            }
        }
        match self
            .mac
            .check(ifindex, source, pc, &replies, &mut self.rng, t)
        {
            Verdict::Accept => true,
            Verdict::Reject(challenge) => {
                if let Some(nonce) = challenge {
                    let req = Control::ChallengeRequest { nonce };
                    self.queue_control(ifindex, Dest::Unicast(source), req, true, t);
                }
                false
            }
        }
    }

    fn find_or_create_neighbour(&mut self, ifindex: u32, address: Ipv6Addr) -> NeighbourId {
        if let Some(&id) = self.by_address.get(&(ifindex, address)) {
            return id;
        }
        let multiplier = self
            .multipliers
            .get(&(ifindex, Some(address)))
            .or_else(|| self.multipliers.get(&(ifindex, None)))
            .copied()
            .unwrap_or(256);
        let n = Neighbour::new(ifindex, address, multiplier);
        let id = match self.free.pop() {
            Some(id) => {
                self.neighbours[id as usize] = Some(n);
                id
            }
            None => {
                self.neighbours.push(Some(n));
                (self.neighbours.len() - 1) as NeighbourId
            }
        };
        self.by_address.insert((ifindex, address), id);
        self.events
            .push_back(Event::NeighbourUp { ifindex, address });
        id
    }

    fn handle_hello(
        &mut self,
        ifindex: u32,
        source: Ipv6Addr,
        multicast: bool,
        h: &Hello,
        now_us: u32,
        t: Time,
    ) {
        if h.unicast && multicast {
            return;
        }
        let Some((kind, nominal)) = self
            .interfaces
            .get(&ifindex)
            .map(|i| (i.config.kind, i.config.rxcost))
        else {
            return;
        };
        let id = self.find_or_create_neighbour(ifindex, source);
        let Some(n) = self.neighbour_mut(id) else {
            return;
        };
        let is_new = n.hello.reach == 0 && n.uhello.reach == 0;
        let was_heard = n.rxcost(kind, nominal) < INFINITY;
        if h.unicast {
            n.uhello.receive(h.seqno, h.interval, t);
        } else {
            n.hello.receive(h.seqno, h.interval, t);
        }
        if let Some(ts) = h.timestamp {
            n.rtt.last_hello = Some((ts, now_us));
        }
        let heard = n.rxcost(kind, nominal) < INFINITY;
        if is_new || heard != was_heard {
            // Let the neighbour hear us soon: a new neighbour gets a hello
            // it can count, and one we just started hearing well gets an
            // IHU with a finite cost, so that a new link becomes usable in a
            // few exchanges rather than after two hello intervals.
            if let Some(iface) = self.interfaces.get_mut(&ifindex) {
                let soon = t + self.rng.below(iface.config.hello_ms() / 8 + 1);
                iface.hello_deadline = iface.hello_deadline.min(soon);
            }
        }
        self.update_cost(id, t);
    }

    fn handle_ihu(
        &mut self,
        ifindex: u32,
        source: Ipv6Addr,
        ihu: &Ihu,
        hello_ts: Option<u32>,
        now_us: u32,
        t: Time,
    ) {
        let Some(iface) = self.interfaces.get(&ifindex) else {
            return;
        };
        if let Some(addr) = ihu.address {
            if addr != IpAddr::V6(iface.config.link_local) {
                return;
            }
        }
        let decay = iface.config.rtt.unwrap_or(self.config.rtt).decay;
        let hello_ms = iface.config.hello_ms();
        let id = self.find_or_create_neighbour(ifindex, source);
        let Some(n) = self.neighbour_mut(id) else {
            return;
        };
        n.txcost = ihu.rxcost;
        let interval_ms = if ihu.interval > 0 {
            u64::from(ihu.interval) * 10
        } else {
            hello_ms * 3
        };
        n.ihu_deadline = Some(t + interval_ms * 7 / 2);
        if let (Some(ts), Some(send)) = (ihu.timestamp, hello_ts) {
            n.rtt.sample(ts.origin, ts.receive, send, now_us, decay, t);
        }
        self.update_cost(id, t);
    }

    /// Recomputes a neighbour's cost and, if it changed, the metric of every
    /// route through it.
    fn update_cost(&mut self, id: NeighbourId, t: Time) {
        let Some(n) = self.neighbour(id) else {
            return;
        };
        let Some(iface) = self.interfaces.get(&n.ifindex) else {
            return;
        };
        let rtt = iface.config.rtt.unwrap_or(self.config.rtt);
        let cost = n.compute_cost(iface.config.kind, iface.config.rxcost, &rtt, t);
        let (old, ifindex, address) = (n.cost, n.ifindex, n.address);
        if cost == old {
            return;
        }
        if let Some(n) = self.neighbour_mut(id) {
            n.cost = cost;
        }
        let keys: Vec<RouteKey> = self
            .table
            .entries
            .iter()
            .filter(|(_, e)| e.route(id).is_some())
            .map(|(k, _)| *k)
            .collect();
        for key in keys {
            let before = self.announcement(&key);
            if let Some(r) = self
                .table
                .entries
                .get_mut(&key)
                .and_then(|e| e.route_mut(id))
            {
                let m = route_metric(r.refmetric, r.add_metric, cost);
                r.set_metric(m, t);
            }
            self.reselect(key, before, t);
        }
        if old == INFINITY && cost < INFINITY {
            // The link just became usable: give the neighbour our table and
            // ask for its own.
            self.queue_full_dump(ifindex, Dest::Unicast(address), true, t);
            let req = Control::RouteRequest { key: None };
            self.queue_control(ifindex, Dest::Unicast(address), req, true, t);
        }
    }

    fn drop_neighbour(&mut self, id: NeighbourId, t: Time) {
        let Some(n) = self.neighbours.get_mut(id as usize).and_then(Option::take) else {
            return;
        };
        self.by_address.remove(&(n.ifindex, n.address));
        self.free.push(id);
        let keys: Vec<RouteKey> = self
            .table
            .entries
            .iter()
            .filter(|(_, e)| e.route(id).is_some())
            .map(|(k, _)| *k)
            .collect();
        for key in keys {
            let before = self.announcement(&key);
            if let Some(e) = self.table.entries.get_mut(&key) {
                if e.remove(id).is_some() {
                    self.table.routes -= 1;
                }
            }
            self.reselect(key, before, t);
        }
        self.resend
            .requests
            .retain(|_, r| r.target != Target::Neighbour(id));
        self.queues.remove(&(n.ifindex, Dest::Unicast(n.address)));
        self.events.push_back(Event::NeighbourDown {
            ifindex: n.ifindex,
            address: n.address,
        });
    }

    fn handle_update(
        &mut self,
        id: NeighbourId,
        ifindex: u32,
        source: Ipv6Addr,
        u: &Update,
        t: Time,
    ) {
        let Some(prefix) = u.prefix else {
            // Wildcard retraction: everything learned from this neighbour.
            if u.metric == INFINITY {
                let keys: Vec<RouteKey> = self
                    .table
                    .entries
                    .iter()
                    .filter(|(_, e)| e.route(id).is_some_and(|r| r.refmetric < INFINITY))
                    .map(|(k, _)| *k)
                    .collect();
                for key in keys {
                    self.retract_route(key, id, t);
                }
            }
            return;
        };
        let next_hop = u.next_hop.unwrap_or(IpAddr::V6(source));
        if prefix.is_ipv4() && !u.v4_via_v6 && next_hop.is_ipv6() {
            return;
        }
        if is_martian(&prefix) {
            return;
        }
        let key = RouteKey::new(prefix, u.src_prefix);
        if !self.config.kernel_has_ipv6_subtrees && prefix.is_ipv6() && key.src().is_some() {
            let ours = prefix.is_default()
                && self.config.network.is_some()
                && key.src() == self.config.network;
            if !ours {
                return;
            }
        }
        let Some(router_id) = u.router_id else {
            if u.metric == INFINITY {
                self.retract_route(key, id, t);
            }
            return;
        };
        if router_id == self.config.router_id {
            // Our own announcements echoed back.
            return;
        }
        let refmetric = if u.metric == INFINITY {
            INFINITY
        } else {
            match filter::apply(&self.config.filters.input, &key, ifindex, Some(source)) {
                None => INFINITY,
                Some(add) => u.metric.saturating_add(add),
            }
        };
        if refmetric == INFINITY {
            self.retract_route(key, id, t);
            return;
        }
        let feasible = self
            .sources
            .is_feasible(&key, &router_id, u.seqno, refmetric);
        let satisfied = self.resend.satisfy(&key, &router_id, u.seqno, feasible);
        let cost = self.neighbour(id).map_or(INFINITY, |n| n.cost);
        let metric = route_metric(refmetric, 0, cost);
        let before = self.announcement(&key);
        let entry = self.table.entries.entry(key).or_default();
        let is_selected = entry.selected == Some(id);
        let interval_cs = u.interval.max(1);
        let expires = t + u64::from(interval_cs) * 35;
        match entry.route_mut(id) {
            Some(r) => {
                if is_selected && !feasible && r.router_id == router_id && r.metric < INFINITY {
                    // RFC 8966 §3.5.4: an unfeasible update for the selected
                    // route may be ignored; ask for a new seqno instead.
                    let old_metric = r.metric;
                    self.request_unfeasible(key, id, router_id, metric, Some(old_metric), t);
                    return;
                }
                let refresh = r.router_id == router_id
                    && r.seqno == u.seqno
                    && r.refmetric == refmetric
                    && r.next_hop == next_hop
                    && r.metric == metric;
                r.router_id = router_id;
                r.seqno = u.seqno;
                r.refmetric = refmetric;
                r.add_metric = 0;
                r.next_hop = next_hop;
                r.interval_cs = interval_cs;
                r.expires = expires;
                r.set_metric(metric, t);
                if refresh && is_selected && !satisfied {
                    // A periodic refresh of the selected route changes
                    // nothing but its expiry.
                    self.timers.set_earlier(Timer::RouteExpiry, expires);
                    return;
                }
            }
            None => {
                // Most destinations have one route: start with room for one
                // (Vec would reserve four).
                if entry.routes.capacity() == 0 {
                    entry.routes.reserve_exact(1);
                }
                entry.routes.push(Route {
                    neighbour: id,
                    router_id,
                    seqno: u.seqno,
                    refmetric,
                    add_metric: 0,
                    metric,
                    smoothed: metric,
                    smoothed_at: t,
                    interval_cs,
                    expires,
                    next_hop,
                });
                self.table.routes += 1;
            }
        }
        self.timers.set_earlier(Timer::RouteExpiry, expires);
        if !feasible {
            let selected_metric = self
                .table
                .get(&key)
                .and_then(Entry::selected_route)
                .map(|r| r.metric);
            self.request_unfeasible(key, id, router_id, metric, selected_metric, t);
        }
        self.reselect(key, before, t);
        if satisfied {
            // Someone (maybe us, maybe a neighbour whose request we
            // forwarded) is waiting for this: pass it on now.
            self.queue_update_all(key, true, t);
        }
    }

    /// babeld's `send_unfeasible_request`: an unfeasible route that would be
    /// much better than what we use deserves a seqno request to its
    /// neighbour.
    fn request_unfeasible(
        &mut self,
        key: RouteKey,
        id: NeighbourId,
        router_id: RouterId,
        metric: u16,
        selected_metric: Option<u16>,
        t: Time,
    ) {
        if metric == INFINITY {
            return;
        }
        if selected_metric.is_some_and(|m| m < metric.saturating_add(URGENT_INCREASE)) {
            return;
        }
        let Some(s) = self.sources.get(&key, &router_id) else {
            return;
        };
        let seqno = s.seqno.wrapping_add(1);
        self.request_seqno(
            key,
            router_id,
            seqno,
            REQUEST_HOP_COUNT,
            Target::Neighbour(id),
            t,
        );
    }

    /// Marks the route from `id` as retracted (RFC 8966 §3.5.4).
    fn retract_route(&mut self, key: RouteKey, id: NeighbourId, t: Time) {
        let before = self.announcement(&key);
        let Some(r) = self
            .table
            .entries
            .get_mut(&key)
            .and_then(|e| e.route_mut(id))
        else {
            return;
        };
        if r.refmetric == INFINITY {
            return;
        }
        r.refmetric = INFINITY;
        r.set_metric(INFINITY, t);
        self.reselect(key, before, t);
    }

    fn handle_route_request(
        &mut self,
        ifindex: u32,
        source: Ipv6Addr,
        multicast: bool,
        r: &RouteRequest,
        t: Time,
    ) {
        let dest = if multicast {
            Dest::Multicast
        } else {
            Dest::Unicast(source)
        };
        match r.prefix {
            None => self.queue_full_dump(ifindex, dest, true, t),
            Some(prefix) => {
                let key = RouteKey::new(prefix, r.src_prefix);
                self.queue_update(ifindex, dest, key, true, t);
            }
        }
    }

    fn handle_seqno_request(
        &mut self,
        id: NeighbourId,
        ifindex: u32,
        source: Ipv6Addr,
        multicast: bool,
        r: &SeqnoRequest,
        t: Time,
    ) {
        let key = RouteKey::new(r.prefix, r.src_prefix);
        let dest = if multicast {
            Dest::Multicast
        } else {
            Dest::Unicast(source)
        };
        if self.xroutes.get(&key).is_some() {
            if r.router_id == self.config.router_id && seqno_cmp(r.seqno, self.seqno).is_gt() {
                self.seqno = self.seqno.wrapping_add(1);
                // Everyone should learn the new seqno.
                self.queue_update_all(key, true, t);
            } else {
                self.queue_update(ifindex, dest, key, true, t);
            }
            return;
        }
        let Some(sel) = self.table.get(&key).and_then(Entry::selected_route) else {
            return;
        };
        if sel.metric == INFINITY {
            return;
        }
        if sel.router_id != r.router_id || !seqno_cmp(sel.seqno, r.seqno).is_lt() {
            self.queue_update(ifindex, dest, key, true, t);
            return;
        }
        let next = sel.neighbour;
        if r.hop_count < 2 || next == id {
            return;
        }
        if self.resend.is_duplicate(key, r.router_id, r.seqno, t) {
            return;
        }
        self.request_seqno(
            key,
            r.router_id,
            r.seqno,
            r.hop_count - 1,
            Target::Neighbour(next),
            t,
        );
    }

    fn send_seqno_request(
        &mut self,
        key: RouteKey,
        router_id: RouterId,
        seqno: u16,
        hop_count: u8,
        target: Target,
        t: Time,
    ) {
        let msg = Control::SeqnoRequest {
            key,
            seqno,
            hop_count,
            router_id,
        };
        match target {
            Target::All => {
                let ifs: Vec<u32> = self.interfaces.keys().copied().collect();
                for ifindex in ifs {
                    self.queue_control(ifindex, Dest::Multicast, msg.clone(), true, t);
                }
            }
            Target::Neighbour(id) => {
                let Some(n) = self.neighbour(id) else {
                    return;
                };
                let (ifindex, address) = (n.ifindex, n.address);
                self.queue_control(ifindex, Dest::Unicast(address), msg, true, t);
            }
        }
    }

    /// Sends a seqno request unless the same (or a newer) one is already
    /// outstanding, and schedules its resends.
    fn request_seqno(
        &mut self,
        key: RouteKey,
        router_id: RouterId,
        seqno: u16,
        hop_count: u8,
        target: Target,
        t: Time,
    ) {
        if self
            .resend
            .add_request(key, router_id, seqno, hop_count, target, t)
        {
            self.send_seqno_request(key, router_id, seqno, hop_count, target, t);
        }
    }

    /// What we announce for `key` now: our own prefix, or the selected
    /// route, or nothing.
    fn announcement(&self, key: &RouteKey) -> Option<Announcement> {
        if let Some(metric) = self.xroutes.get(key) {
            return Some(Announcement {
                router_id: self.config.router_id,
                seqno: self.seqno,
                metric,
            });
        }
        let r = self.table.get(key)?.selected_route()?;
        (r.metric < INFINITY).then_some(Announcement {
            router_id: r.router_id,
            seqno: r.seqno,
            metric: r.metric,
        })
    }

    /// Re-runs route selection for `key`, updates the kernel view, sends
    /// triggered updates and starvation requests. `before` is what we
    /// announced before the change.
    fn reselect(&mut self, key: RouteKey, before: Option<Announcement>, t: Time) {
        let has_xroute = self.xroutes.get(&key).is_some();
        let mut remove_entry = false;
        let mut change = None;
        if let Some(entry) = self.table.entries.get_mut(&key) {
            let choice = if has_xroute {
                None
            } else {
                entry.choose(&key, &self.sources, t)
            };
            entry.selected = choice;
            let desired = choice.and_then(|id| {
                let r = entry.route(id)?;
                let n = self.neighbours.get(id as usize)?.as_ref()?;
                filter::apply(
                    &self.config.filters.install,
                    &key,
                    n.ifindex,
                    Some(n.address),
                )?;
                Some(Installed {
                    next_hop: r.next_hop,
                    ifindex: n.ifindex,
                    metric: r.metric,
                })
            });
            let old = entry.installed;
            match (old, desired) {
                (None, None) => {}
                (Some(o), Some(d)) if o.next_hop == d.next_hop && o.ifindex == d.ifindex => {
                    // Same kernel route: keep the metric current for
                    // getters, without an event.
                    entry.installed = desired;
                }
                _ => {
                    entry.installed = desired;
                    change = Some((old, desired));
                }
            }
            remove_entry = entry.routes.is_empty() && entry.installed.is_none();
        }
        if remove_entry {
            self.table.entries.remove(&key);
        }
        if let Some((old, new)) = change {
            let ev = match (old, new) {
                (None, Some(n)) => RouteChange::Add(self.kernel_route(&key, n)),
                (Some(o), None) => RouteChange::Remove(self.kernel_route(&key, o)),
                (Some(o), Some(n)) => RouteChange::Replace {
                    old: self.kernel_route(&key, o),
                    new: self.kernel_route(&key, n),
                },
                (None, None) => unreachable!("no change recorded without a route"),
            };
            self.events.push_back(Event::Route(ev));
        }
        let after = self.announcement(&key);
        match (before, after) {
            (None, None) => {}
            (None, Some(_)) => self.queue_update_all(key, false, t),
            (Some(b), None) => {
                // Retraction, repeated; and a seqno request if the
                // destination is starving (RFC 8966 §3.8.2.1).
                self.queue_update_all(key, true, t);
                self.resend.add_update(key, t);
                if b.router_id != self.config.router_id {
                    let seqno = self
                        .sources
                        .get(&key, &b.router_id)
                        .map_or(b.seqno, |s| s.seqno)
                        .wrapping_add(1);
                    self.request_seqno(key, b.router_id, seqno, REQUEST_HOP_COUNT, Target::All, t);
                }
            }
            (Some(b), Some(a)) => {
                if a.router_id != b.router_id {
                    self.queue_update_all(key, true, t);
                    self.resend.add_update(key, t);
                } else if a.metric > b.metric && a.metric - b.metric >= URGENT_INCREASE {
                    self.queue_update_all(key, true, t);
                } else if a.metric.abs_diff(b.metric) >= SIGNIFICANT_CHANGE || a.seqno != b.seqno {
                    self.queue_update_all(key, false, t);
                }
            }
        }
    }

    fn expire_routes(&mut self, t: Time) {
        let mut expired = Vec::new();
        let mut next: Option<Time> = None;
        for (key, e) in &self.table.entries {
            for r in &e.routes {
                if r.expires <= t {
                    expired.push((*key, r.neighbour));
                } else {
                    next = Some(next.map_or(r.expires, |n| n.min(r.expires)));
                }
            }
        }
        for (key, id) in expired {
            let before = self.announcement(&key);
            let Some(entry) = self.table.entries.get_mut(&key) else {
                continue;
            };
            let Some(r) = entry.route_mut(id) else {
                continue;
            };
            if r.refmetric < INFINITY {
                // Expired: retract, keep for a hold time.
                r.refmetric = INFINITY;
                r.set_metric(INFINITY, t);
                r.expires = t + u64::from(r.interval_cs) * 35;
                next = Some(next.map_or(r.expires, |n| n.min(r.expires)));
            } else {
                entry.remove(id);
                self.table.routes -= 1;
            }
            self.reselect(key, before, t);
        }
        match next {
            Some(n) => self.timers.set(Timer::RouteExpiry, n),
            None => self.timers.stop(Timer::RouteExpiry),
        }
    }

    fn send_hello(&mut self, ifindex: u32, t: Time) {
        let Some(iface) = self.interfaces.get_mut(&ifindex) else {
            return;
        };
        iface.hello_seqno = iface.hello_seqno.wrapping_add(1);
        let hello_ms = iface.config.hello_ms();
        iface.hello_deadline = self.rng.jittered(t, hello_ms);
        let config = iface.config.clone();
        let hello = Control::Hello {
            seqno: iface.hello_seqno,
            interval_cs: config.hello_cs(),
            timestamp: config.enable_timestamps,
        };
        let mut msgs = vec![hello];
        for n in self
            .neighbours
            .iter()
            .flatten()
            .filter(|n| n.ifindex == ifindex)
        {
            let timestamp = if config.enable_timestamps {
                n.rtt
                    .last_hello
                    .map(|(origin, receive)| IhuTimestamp { origin, receive })
            } else {
                None
            };
            msgs.push(Control::Ihu {
                rxcost: n.rxcost(config.kind, config.rxcost),
                interval_cs: config.hello_cs().saturating_mul(3),
                address: n.address,
                timestamp,
            });
        }
        let q = self.queues.entry((ifindex, Dest::Multicast)).or_default();
        // Hello and IHUs go first so that they share a packet (the RTT
        // extension needs the hello's timestamp next to the IHUs).
        for m in msgs.into_iter().rev() {
            q.push_control_front(m);
        }
        q.flush_by(t);
    }

    fn queue_control(&mut self, ifindex: u32, dest: Dest, msg: Control, urgent: bool, t: Time) {
        let Some(hello_ms) = self.interfaces.get(&ifindex).map(|i| i.config.hello_ms()) else {
            return;
        };
        let delay = self.rng.flush_delay(urgent, hello_ms);
        let q = self.queues.entry((ifindex, dest)).or_default();
        q.push_control(msg);
        q.flush_by(t + delay);
    }

    fn queue_update(&mut self, ifindex: u32, dest: Dest, key: RouteKey, urgent: bool, t: Time) {
        let Some(hello_ms) = self.interfaces.get(&ifindex).map(|i| i.config.hello_ms()) else {
            return;
        };
        let delay = self.rng.flush_delay(urgent, hello_ms);
        let q = self.queues.entry((ifindex, dest)).or_default();
        q.push_update(key);
        q.flush_by(t + delay);
    }

    fn queue_update_all(&mut self, key: RouteKey, urgent: bool, t: Time) {
        let ifs: Vec<u32> = self.interfaces.keys().copied().collect();
        for ifindex in ifs {
            self.queue_update(ifindex, Dest::Multicast, key, urgent, t);
        }
    }

    /// Queues every destination we announce.
    fn queue_full_dump(&mut self, ifindex: u32, dest: Dest, urgent: bool, t: Time) {
        let Some(hello_ms) = self.interfaces.get(&ifindex).map(|i| i.config.hello_ms()) else {
            return;
        };
        let delay = self.rng.flush_delay(urgent, hello_ms);
        let q = self.queues.entry((ifindex, dest)).or_default();
        for key in self.xroutes.map.keys() {
            q.push_update(*key);
        }
        for (key, e) in &self.table.entries {
            if e.selected_route().is_some_and(|r| r.metric < INFINITY) {
                q.push_update(*key);
            }
        }
        q.flush_by(t + delay);
    }

    /// Fills `buf` with one packet from the queue (ifindex, dest). Returns
    /// its length, or `None` if nothing was worth sending.
    fn build_packet(
        &mut self,
        ifindex: u32,
        dest: Dest,
        config: &InterfaceConfig,
        now: Instant,
        t: Time,
        buf: &mut [u8],
    ) -> Option<usize> {
        let sign_key = self.config.mac.as_ref().map(|m| m.sign.clone());
        let keys: &[MacKey] = sign_key.as_slice();
        let trailer = wire_mac::trailer_len(keys);
        let mtu = config.mtu.min(buf.len());
        let ts_us = self.clock.timestamp_us(now);
        let pc = sign_key.is_some().then(|| self.mac.next_pc(&mut self.rng));
        let index = self.mac.index;
        let mut queue = self.queues.remove(&(ifindex, dest))?;
        let mut b = PacketBuilder::new(buf, mtu, trailer);
        if let Some(pc) = pc {
            if b.push(&Tlv::Pc(Pc { pc, index: &index })).is_err() {
                // The MTU cannot even hold a PC: nothing can be sent here.
                self.queues.insert((ifindex, dest), Queue::default());
                return None;
            }
        }
        let base = b.len();
        let mut full = false;
        while let Some(msg) = queue.control.front() {
            let tlv = control_tlv(msg, ts_us);
            match b.push(&tlv) {
                Ok(()) => {
                    queue.pop_control();
                }
                Err(wire::BuildError::Full) => {
                    full = true;
                    break;
                }
                Err(_) => {
                    queue.pop_control();
                }
            }
        }
        let update_cs = config.update_cs();
        while !full {
            let Some(key) = queue.pop_update() else {
                break;
            };
            let Some(tlv) = self.update_tlv(&key, ifindex, update_cs) else {
                continue;
            };
            match b.push(&Tlv::Update(tlv)) {
                Ok(()) => {
                    if tlv.metric < INFINITY {
                        if let Some(rid) = tlv.router_id {
                            self.sources
                                .advertised(&key, &rid, tlv.seqno, tlv.metric, t);
                        }
                    }
                }
                Err(wire::BuildError::Full) => {
                    queue.unpop_update(key);
                    full = true;
                }
                Err(_) => {}
            }
        }
        let empty = b.len() == base;
        let len = b.finish();
        if !queue.is_empty() {
            self.queues.insert((ifindex, dest), queue);
        } else {
            // Keep an empty queue so the caller's lookup succeeds; it is
            // removed right after.
            self.queues.insert((ifindex, dest), Queue::default());
        }
        if empty {
            return None;
        }
        match sign_key {
            None => Some(len),
            Some(key) => {
                let dst = match dest {
                    Dest::Multicast => MULTICAST_GROUP,
                    Dest::Unicast(a) => a,
                };
                let ph = wire_mac::pseudo_header(
                    SocketAddr::new(IpAddr::V6(config.link_local), PORT),
                    SocketAddr::new(IpAddr::V6(dst), PORT),
                );
                wire_mac::sign(buf, len, &ph, std::slice::from_ref(&key)).ok()
            }
        }
    }

    /// The Update TLV announcing `key` on `ifindex` now (a retraction if we
    /// have no route), or `None` if the output filter forbids it.
    fn update_tlv(&self, key: &RouteKey, ifindex: u32, interval_cs: u16) -> Option<Update> {
        let (router_id, seqno, metric) = match self.announcement(key) {
            Some(a) => {
                let add = filter::apply(&self.config.filters.output, key, ifindex, None)?;
                (a.router_id, a.seqno, a.metric.saturating_add(add))
            }
            None => (self.config.router_id, self.seqno, INFINITY),
        };
        Some(Update {
            interval: interval_cs,
            seqno,
            metric,
            prefix: Some(key.prefix),
            v4_via_v6: key.prefix.is_ipv4(),
            src_prefix: key.src(),
            router_id: Some(router_id),
            next_hop: None,
        })
    }
}

fn route_metric(refmetric: u16, add: u16, cost: u16) -> u16 {
    let m = u32::from(refmetric) + u32::from(add) + u32::from(cost);
    m.min(u32::from(INFINITY)) as u16
}

fn is_link_local(a: Ipv6Addr) -> bool {
    a.segments()[0] & 0xffc0 == 0xfe80
}

/// Prefixes nobody should route: link-local and multicast.
fn is_martian(p: &Prefix) -> bool {
    match p.addr() {
        IpAddr::V6(a) => {
            (p.len() >= 10 && is_link_local(a))
                || (p.len() >= 8 && a.segments()[0] & 0xff00 == 0xff00)
        }
        IpAddr::V4(a) => p.len() >= 4 && a.is_multicast(),
    }
}

fn control_tlv(msg: &Control, ts_us: u32) -> Tlv<'_> {
    match msg {
        Control::Hello {
            seqno,
            interval_cs,
            timestamp,
        } => Tlv::Hello(Hello {
            unicast: false,
            seqno: *seqno,
            interval: *interval_cs,
            timestamp: timestamp.then_some(ts_us.max(1)),
        }),
        Control::Ihu {
            rxcost,
            interval_cs,
            address,
            timestamp,
        } => Tlv::Ihu(Ihu {
            rxcost: *rxcost,
            interval: *interval_cs,
            address: Some(IpAddr::V6(*address)),
            timestamp: *timestamp,
        }),
        Control::Ack { opaque } => Tlv::Ack(Ack { opaque: *opaque }),
        Control::RouteRequest { key } => Tlv::RouteRequest(RouteRequest {
            prefix: key.map(|k| k.prefix),
            v4_via_v6: key.is_some_and(|k| k.prefix.is_ipv4()),
            src_prefix: key.and_then(|k| k.src()),
        }),
        Control::SeqnoRequest {
            key,
            seqno,
            hop_count,
            router_id,
        } => Tlv::SeqnoRequest(SeqnoRequest {
            seqno: *seqno,
            hop_count: *hop_count,
            router_id: *router_id,
            prefix: key.prefix,
            v4_via_v6: key.prefix.is_ipv4(),
            src_prefix: key.src(),
        }),
        Control::ChallengeRequest { nonce } => Tlv::ChallengeRequest(ChallengeRequest { nonce }),
        Control::ChallengeReply { nonce } => Tlv::ChallengeReply(ChallengeReply { nonce }),
    }
}

impl Router {
    /// Checks the router's internal invariants; for tests and fuzzing.
    ///
    /// Route counts match the table, every route belongs to a live
    /// neighbour, a selected route exists, is finite and feasible, an
    /// installed route is selected, and the neighbour index matches the
    /// neighbour slab.
    pub fn check_invariants(&self) -> Result<(), &'static str> {
        let mut count = 0;
        for (key, e) in &self.table.entries {
            count += e.routes.len();
            for r in &e.routes {
                if self.neighbour(r.neighbour).is_none() {
                    return Err("route through a dead neighbour");
                }
            }
            if let Some(id) = e.selected {
                let Some(r) = e.route(id) else {
                    return Err("selected route missing");
                };
                if r.metric == INFINITY {
                    return Err("selected route is infinite");
                }
                if !self
                    .sources
                    .is_feasible(key, &r.router_id, r.seqno, r.refmetric)
                {
                    return Err("selected route is unfeasible");
                }
            } else if e.installed.is_some() {
                return Err("installed route not selected");
            }
            if e.routes.is_empty() && e.installed.is_none() {
                return Err("empty entry kept");
            }
        }
        if count != self.table.routes {
            return Err("route count mismatch");
        }
        let live = self.neighbours.iter().flatten().count();
        if live != self.by_address.len() {
            return Err("neighbour index mismatch");
        }
        for (&(ifindex, address), &id) in &self.by_address {
            match self.neighbour(id) {
                Some(n) if n.ifindex == ifindex && n.address == address => {}
                _ => return Err("neighbour index points to the wrong slot"),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ll(n: u16) -> Ipv6Addr {
        Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, n)
    }

    fn router(id: u8, now: Instant) -> Router {
        let mut r = Router::new(
            RouterConfig {
                router_id: [id; 8],
                seed: u64::from(id),
                ..RouterConfig::default()
            },
            now,
        );
        r.add_interface(
            1,
            InterfaceConfig::new(InterfaceKind::Wired, ll(u16::from(id))),
            now,
        );
        r
    }

    /// Builds a packet from `tlvs`.
    fn packet(tlvs: &[Tlv<'_>]) -> Vec<u8> {
        let mut buf = vec![0; 1500];
        let mut b = PacketBuilder::new(&mut buf, 1500, 0);
        for t in tlvs {
            b.push(t).unwrap();
        }
        let len = b.finish();
        buf.truncate(len);
        buf
    }

    /// Everything `r` sends now, parsed back, with its destination.
    fn sent(r: &mut Router, now: Instant) -> Vec<(Destination, Vec<u8>)> {
        let mut out = Vec::new();
        let mut buf = vec![0; 2000];
        while let Some(tx) = r.poll_transmit(now, &mut buf) {
            out.push((tx.destination, buf[..tx.len].to_vec()));
        }
        out
    }

    fn tlvs_of(bytes: &[u8]) -> Vec<Tlv<'_>> {
        wire::Tlvs::new(&bytes[wire::HEADER_LEN..])
            .map(Result::unwrap)
            .collect()
    }

    /// Runs two routers on one link for `secs` seconds (100 ms steps).
    fn converse(a: &mut Router, b: &mut Router, start: Instant, secs: u64) -> Instant {
        let mut now = start;
        for _ in 0..secs * 10 {
            now += Duration::from_millis(100);
            a.handle_timeout(now);
            b.handle_timeout(now);
            for (dest, bytes) in sent(a, now) {
                b.handle_packet(1, ll(1), dest == Destination::Multicast, &bytes, now);
            }
            for (dest, bytes) in sent(b, now) {
                a.handle_packet(1, ll(2), dest == Destination::Multicast, &bytes, now);
            }
            a.check_invariants().unwrap();
            b.check_invariants().unwrap();
        }
        now
    }

    fn p(s: &str) -> Prefix {
        s.parse().unwrap()
    }

    #[test]
    fn two_routers_learn_each_other() {
        let t0 = Instant::now();
        let (mut a, mut b) = (router(1, t0), router(2, t0));
        a.redistribute(p("2001:db8:1::/64"), None, 0, t0);
        b.redistribute(p("2001:db8:2::/64"), None, 0, t0);
        converse(&mut a, &mut b, t0, 15);
        let r = a.installed_route(p("2001:db8:2::/64"), None).unwrap();
        assert_eq!(r.next_hop, IpAddr::V6(ll(2)));
        assert_eq!(r.metric, 96);
        let events: Vec<Event> = std::iter::from_fn(|| a.poll_event()).collect();
        assert!(events.contains(&Event::NeighbourUp {
            ifindex: 1,
            address: ll(2)
        }));
        assert!(events.contains(&Event::Route(RouteChange::Add(r))));
        let d = a.dump();
        assert_eq!(d.neighbours.len(), 1);
        assert_eq!((d.neighbours[0].txcost, d.neighbours[0].rxcost), (96, 96));
        assert_eq!(d.xroutes.len(), 1);
        assert_eq!(a.route_count(), 1);
        // B feasibility distance for its own prefix is not kept, but A
        // keeps one for B's prefix once it re-announces it.
        assert!(d.sources.iter().any(|s| s.router_id == [2; 8]));
    }

    #[test]
    fn update_handling_table() {
        let t0 = Instant::now();
        let (mut a, mut b) = (router(1, t0), router(2, t0));
        let now = converse(&mut a, &mut b, t0, 10);
        let pfx = p("2001:db8:9::/64");
        let update = |seqno: u16, metric: u16, rid: u8| {
            packet(&[Tlv::Update(Update {
                interval: 400,
                seqno,
                metric,
                prefix: Some(pfx),
                v4_via_v6: false,
                src_prefix: None,
                router_id: Some([rid; 8]),
                next_hop: None,
            })])
        };
        // (update (seqno, metric, router-id), expected installed metric)
        let cases: [((u16, u16, u8), Option<u16>); 7] = [
            ((10, 100, 9), Some(196)),
            ((10, 300, 9), Some(196)), // unfeasible for the selected route: ignored
            ((11, 300, 9), Some(396)), // newer seqno: accepted
            ((11, INFINITY, 9), None), // retraction
            ((11, 50, 9), Some(146)),  // better than the distance: feasible
            ((12, 50, 1), Some(146)),  // our own router-id echoed: ignored
            ((12, 60, 7), Some(156)),  // another origin, feasible
        ];
        for ((seqno, metric, rid), want) in cases {
            a.handle_packet(1, ll(2), true, &update(seqno, metric, rid), now);
            // Announce, so that feasibility distances follow.
            sent(&mut a, now + Duration::from_secs(1));
            a.check_invariants().unwrap();
            let got = a.installed_route(pfx, None).map(|r| r.metric);
            assert_eq!(got, want, "update {seqno} {metric} {rid}");
        }
    }

    #[test]
    fn seqno_request_for_our_prefix() {
        let t0 = Instant::now();
        let (mut a, mut b) = (router(1, t0), router(2, t0));
        let pfx = p("2001:db8:1::/64");
        a.redistribute(pfx, None, 0, t0);
        let now = converse(&mut a, &mut b, t0, 10);
        let s = a.seqno();
        // (requested seqno, router-id, expected seqno afterwards)
        let cases = [
            (s, [1u8; 8], s),
            (s.wrapping_sub(3), [1; 8], s),
            (s.wrapping_add(1), [1; 8], s.wrapping_add(1)),
            (s.wrapping_add(9), [7; 8], s.wrapping_add(1)),
        ];
        for (seqno, router_id, want) in cases {
            let req = packet(&[Tlv::SeqnoRequest(SeqnoRequest {
                seqno,
                hop_count: 5,
                router_id,
                prefix: pfx,
                v4_via_v6: false,
                src_prefix: None,
            })]);
            a.handle_packet(1, ll(2), false, &req, now);
            assert_eq!(a.seqno(), want);
            // Every request is answered with an update for the prefix.
            let out = sent(&mut a, now + Duration::from_millis(20));
            let answered = out.iter().any(|(_, bytes)| {
                tlvs_of(bytes).iter().any(
                    |t| matches!(t, Tlv::Update(u) if u.prefix == Some(pfx) && u.seqno == want),
                )
            });
            assert!(answered, "request {seqno} not answered");
        }
    }

    #[test]
    fn ack_requests_are_answered_by_unicast() {
        let t0 = Instant::now();
        let mut a = router(1, t0);
        sent(&mut a, t0 + Duration::from_secs(1));
        let req = packet(&[Tlv::AckReq(wire::AckReq {
            opaque: 0xbeef,
            interval: 100,
        })]);
        a.handle_packet(1, ll(2), true, &req, t0);
        let out = sent(&mut a, t0 + Duration::from_millis(20));
        let (dest, bytes) = &out[0];
        assert_eq!(*dest, Destination::Unicast(IpAddr::V6(ll(2))));
        assert!(tlvs_of(bytes).contains(&Tlv::Ack(Ack { opaque: 0xbeef })));
    }

    #[test]
    fn bad_input_is_counted_and_ignored() {
        let t0 = Instant::now();
        let mut a = router(1, t0);
        let hello = packet(&[Tlv::Hello(Hello {
            unicast: false,
            seqno: 1,
            interval: 400,
            timestamp: None,
        })]);
        // (ifindex, source, bytes, malformed count after)
        let global: Ipv6Addr = "2001:db8::1".parse().unwrap();
        let cases: [(u32, Ipv6Addr, &[u8], u64); 5] = [
            (9, ll(2), &hello, 1),
            (1, global, &hello, 2),
            (1, ll(2), &[42, 2, 0], 3),
            (1, ll(2), &[43, 2, 0, 0], 4),
            (1, ll(2), &hello, 4),
        ];
        for (ifindex, source, bytes, want) in cases {
            a.handle_packet(ifindex, source, true, bytes, t0);
            assert_eq!(a.stats().malformed, want, "{ifindex} {source}");
        }
        assert_eq!(a.neighbour_count(), 1);
        a.check_invariants().unwrap();
    }

    #[test]
    fn full_dump_is_split_across_packets() {
        let t0 = Instant::now();
        let mut a = router(1, t0);
        for i in 0..1000u16 {
            let pfx = Prefix::new(
                IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, i, 0, 0, 0, 0, 0)),
                64,
            )
            .unwrap();
            a.redistribute(pfx, None, 0, t0);
        }
        let out = sent(&mut a, t0 + Duration::from_secs(20));
        let updates: usize = out
            .iter()
            .map(|(_, b)| {
                assert!(b.len() <= 1232);
                tlvs_of(b)
                    .iter()
                    .filter(|t| matches!(t, Tlv::Update(_)))
                    .count()
            })
            .sum();
        assert!(out.len() > 5, "{} packets", out.len());
        assert!(updates >= 1000, "{updates} updates");
    }

    #[test]
    fn retract_all_sends_retractions_at_once() {
        let t0 = Instant::now();
        let mut a = router(1, t0);
        let pfx = p("2001:db8:1::/64");
        a.redistribute(pfx, None, 0, t0);
        sent(&mut a, t0 + Duration::from_secs(20));
        let t1 = t0 + Duration::from_secs(21);
        a.retract_all(t1);
        let out = sent(&mut a, t1);
        let retracted = out.iter().any(|(_, bytes)| {
            tlvs_of(bytes).iter().any(
                |t| matches!(t, Tlv::Update(u) if u.prefix == Some(pfx) && u.metric == INFINITY),
            )
        });
        assert!(retracted);
        assert!(a.dump().xroutes.is_empty());
    }

    #[test]
    fn martians_table() {
        let cases = [
            ("fe80::/64", true),
            ("fe80::/10", true),
            ("ff02::/16", true),
            ("2001:db8::/32", false),
            ("::/0", false),
            ("224.0.0.0/4", true),
            ("10.0.0.0/8", false),
        ];
        for (s, want) in cases {
            assert_eq!(is_martian(&p(s)), want, "{s}");
        }
    }
}
