//! The tunnel policy: whom to connect to, which tunnels to accept, which
//! tunnel to retire and when.
//!
//! [`Policy`] is a sans-I/O state machine with the shape of every state
//! machine in re6st (STYLE principle 2): `handle_*` methods take inputs with
//! the current time, commands change the configuration, and the outputs are
//! pulled with [`Policy::poll_action`] (until `None`) and
//! [`Policy::poll_timeout`]. It never reads a clock, never touches a socket,
//! and draws every random choice from the RNG it is given, so a run is
//! reproducible from a seed and a simulator can run thousands of policies in
//! one process. Peers are identified by a generic [`PeerId`] (the node uses
//! `pki::NodePrefix`; a simulator may use a small integer).
//!
//! The behaviour follows re6stnet's tunnel manager:
//!
//! - keep `client_count` outgoing tunnels and accept up to `max_clients`
//!   incoming ones (refuse beyond); persistent `--neighbour` tunnels are kept
//!   in addition and never retired;
//! - new peers are chosen uniformly at random among *distant* nodes: the
//!   destinations of our routes that are neither ourselves nor already
//!   tunnel peers. Their addresses come from what we know (the peer cache),
//!   or are asked from the peer over the peer protocol
//!   ([`Action::RequestAddresses`]);
//! - with no route at all we bootstrap from known (cached) peers; when the
//!   registry's prefix is unreachable and nothing else works, or has stayed
//!   unreachable for `bootstrap_interval`, we ask the registry for a
//!   bootstrap peer ([`Action::RequestBootstrapPeer`]);
//! - every `tunnel_refresh` the outgoing tunnel routing the fewest
//!   destinations is retired: its Babel cost is raised, we wait until no
//!   route uses it (at most `drain_timeout`), ask the peer to agree, close it
//!   and open a new random one. A refusal, a silent peer or routes that do
//!   not move abort the retirement and restore the cost;
//! - a tunnel that dies is replaced at once; the peer is marked failed and
//!   retried only after an exponential backoff;
//! - while we are unreachable from outside we keep at most 2 outgoing
//!   tunnels;
//! - when both sides connect to each other at once, the tunnel initiated by
//!   the lower peer id survives, on both sides;
//! - configuration changes apply live: more tunnels are opened at once,
//!   surplus outgoing tunnels are retired gracefully, surplus incoming ones
//!   are closed.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt::Debug;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, RngCore};

use super::Address;

/// What identifies a peer: cheap to copy, totally ordered (the order breaks
/// simultaneous-connection ties and makes every iteration deterministic).
pub trait PeerId: Copy + Ord + Debug {}

impl<T: Copy + Ord + Debug> PeerId for T {}

/// Outgoing tunnels kept at most while we are unreachable from outside.
pub const UNREACHABLE_CLIENT_COUNT: usize = 2;

/// The policy's parameters. The tunnel counts and the refresh period come
/// from the network configuration (overridable on the command line) and can
/// change at run time through [`Policy::set_config`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyConfig {
    /// Outgoing tunnels to keep (not counting persistent neighbours).
    pub client_count: usize,
    /// Incoming tunnels accepted at most (persistent neighbours excepted).
    pub max_clients: usize,
    /// Period between two retirements of the least useful outgoing tunnel
    /// (jittered by ±10 %). Zero disables refreshing.
    pub tunnel_refresh: Duration,
    /// How long a retiring tunnel may keep routes after its cost was raised
    /// before the retirement is abandoned.
    pub drain_timeout: Duration,
    /// How long to wait for a peer-protocol reply (addresses, retirement
    /// agreement).
    pub reply_timeout: Duration,
    /// How long a tunnel may stay connecting before it counts as failed.
    pub connect_timeout: Duration,
    /// Backoff after the first failure of a peer; doubled at each further
    /// failure.
    pub retry_min: Duration,
    /// Upper bound of the backoff.
    pub retry_max: Duration,
    /// Minimum interval between two searches for new peers triggered by
    /// route changes (route updates come in bursts; tunnel events trigger a
    /// search at once).
    pub fill_interval: Duration,
    /// Minimum interval between two bootstrap requests to the registry, and
    /// how long the registry prefix may stay unreachable before we ask even
    /// though we have tunnels (a partition).
    pub bootstrap_interval: Duration,
    /// After agreeing to retire an incoming tunnel, how long to wait for the
    /// peer to close it before restoring its cost.
    pub retire_grace: Duration,
}

impl Default for PolicyConfig {
    /// re6stnet's defaults: 10 clients, 2 × 10 accepted, refresh every 5 min.
    fn default() -> Self {
        Self {
            client_count: 10,
            max_clients: 20,
            tunnel_refresh: Duration::from_secs(300),
            drain_timeout: Duration::from_secs(30),
            reply_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(30),
            retry_min: Duration::from_secs(30),
            retry_max: Duration::from_secs(3600),
            fill_interval: Duration::from_secs(1),
            bootstrap_interval: Duration::from_secs(60),
            retire_grace: Duration::from_secs(30),
        }
    }
}

/// Who initiated a tunnel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// We connected to the peer.
    Outgoing,
    /// The peer connected to us.
    Incoming,
}

/// Where a route leaves us.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Via<P> {
    /// Through the tunnel to this peer.
    Tunnel(P),
    /// Through something else (a LAN interface, a tunnel we do not manage).
    Other,
}

/// What the policy asks its driver to do. Pull them with
/// [`Policy::poll_action`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action<P> {
    /// Open an outgoing tunnel to `peer`, trying `addresses` in order. The
    /// driver answers with [`Policy::handle_tunnel_up`] or
    /// [`Policy::handle_connect_failed`].
    Connect {
        /// The peer to reach.
        peer: P,
        /// Its addresses, by preference.
        addresses: Vec<Address>,
    },
    /// Close the tunnel with `peer` that has this direction, or abandon the
    /// attempt to open it: the driver must not report it up afterwards.
    Close {
        /// The peer.
        peer: P,
        /// Which of the (at most two, during a race) tunnels.
        direction: Direction,
    },
    /// Ask `peer` for its addresses over the peer protocol (or find them
    /// elsewhere: the cache, the registry); answer with
    /// [`Policy::handle_addresses`]. Unanswered after `reply_timeout`, the
    /// peer counts as failed.
    RequestAddresses {
        /// The peer to ask.
        peer: P,
    },
    /// Ask the registry for a bootstrap peer; answer with
    /// [`Policy::handle_bootstrap_peer`].
    RequestBootstrapPeer,
    /// Raise the Babel cost of the tunnel with `peer` so routes move away.
    RaiseCost {
        /// The peer.
        peer: P,
    },
    /// Restore the normal Babel cost of the tunnel with `peer`.
    RestoreCost {
        /// The peer.
        peer: P,
    },
    /// Ask `peer` over the peer protocol to agree to close our tunnel;
    /// answer with [`Policy::handle_retirement_reply`].
    RequestRetirement {
        /// The peer.
        peer: P,
        /// Matches the reply to the request.
        id: u32,
    },
    /// `peer` failed (could not be reached, or its tunnel died); record it
    /// in the peer cache.
    PeerFailed {
        /// The peer.
        peer: P,
        /// Consecutive failures so far.
        failures: u32,
        /// When the policy will consider the peer again.
        retry_at: Instant,
    },
    /// An outgoing tunnel to `peer` came up; reset its failures in the cache.
    PeerSucceeded {
        /// The peer.
        peer: P,
    },
}

/// A tunnel as the policy sees it, for status displays and tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TunnelInfo<P> {
    /// The peer.
    pub peer: P,
    /// Who initiated it.
    pub direction: Direction,
    /// Whether it is up (otherwise still connecting).
    pub up: bool,
    /// Destinations currently routed through it.
    pub routes: u32,
    /// Whether it is a persistent `--neighbour` tunnel.
    pub persistent: bool,
    /// Whether it is being retired.
    pub retiring: bool,
}

/// The tunnel policy state machine. See the module documentation.
///
/// Driving it: after every `handle_*` call or command, take every
/// [`Action`] with [`Policy::poll_action`], then arm a timer at
/// [`Policy::poll_timeout`] and call [`Policy::handle_timeout`] when it
/// fires. Tunnel events must name the direction; events for a tunnel the
/// policy does not know (already closed, or the loser of a race) are ignored.
pub struct Policy<P: PeerId, R: RngCore = StdRng> {
    me: P,
    config: PolicyConfig,
    rng: R,
    reachable: bool,
    registry: Option<P>,
    registry_lost_since: Option<Instant>,
    neighbours: BTreeSet<P>,
    tunnels: BTreeMap<P, Tunnel>,
    routes: BTreeMap<P, Via<P>>,
    known: BTreeMap<P, Known>,
    address_requests: BTreeMap<P, Instant>,
    retirement: Retirement<P>,
    /// The peer retired last: not picked again until the next retirement,
    /// so that a refresh really changes the graph.
    last_retired: Option<P>,
    next_retirement_id: u32,
    next_bootstrap: Option<Instant>,
    timers: [Option<Instant>; Timer::COUNT],
    actions: VecDeque<Action<P>>,
}

impl<P: PeerId, R: RngCore> Policy<P, R> {
    /// A policy for node `me`, starting at `now` with no tunnel and no route.
    pub fn new(me: P, config: PolicyConfig, rng: R, now: Instant) -> Self {
        let mut policy = Self {
            me,
            config,
            rng,
            reachable: true,
            registry: None,
            registry_lost_since: None,
            neighbours: BTreeSet::new(),
            tunnels: BTreeMap::new(),
            routes: BTreeMap::new(),
            known: BTreeMap::new(),
            address_requests: BTreeMap::new(),
            retirement: Retirement::Idle,
            last_retired: None,
            next_retirement_id: 0,
            next_bootstrap: None,
            timers: [None; Timer::COUNT],
            actions: VecDeque::new(),
        };
        policy.schedule_refresh(now);
        policy.timers[Timer::Fill as usize] = Some(now);
        policy
    }

    // ---- getters ----

    /// Our own id.
    pub fn me(&self) -> P {
        self.me
    }

    /// The current parameters.
    pub fn config(&self) -> &PolicyConfig {
        &self.config
    }

    /// Outgoing tunnels wanted now: `client_count`, or at most
    /// [`UNREACHABLE_CLIENT_COUNT`] while unreachable from outside.
    pub fn target(&self) -> usize {
        if self.reachable {
            self.config.client_count
        } else {
            self.config.client_count.min(UNREACHABLE_CLIENT_COUNT)
        }
    }

    /// Whether we are reachable from outside (see [`Policy::set_reachable`]).
    pub fn reachable(&self) -> bool {
        self.reachable
    }

    /// Outgoing tunnels (up or connecting), persistent ones excluded.
    pub fn outgoing_count(&self) -> usize {
        self.tunnels
            .iter()
            .filter(|(p, t)| t.direction == Direction::Outgoing && !self.neighbours.contains(p))
            .count()
    }

    /// Incoming tunnels (up or being accepted), persistent ones excluded.
    pub fn incoming_count(&self) -> usize {
        self.tunnels
            .iter()
            .filter(|(p, t)| t.direction == Direction::Incoming && !self.neighbours.contains(p))
            .count()
    }

    /// Every tunnel, in peer order.
    pub fn tunnels(&self) -> impl Iterator<Item = TunnelInfo<P>> + '_ {
        self.tunnels.iter().map(|(&peer, t)| TunnelInfo {
            peer,
            direction: t.direction,
            up: t.is_up(),
            routes: t.routes,
            persistent: self.neighbours.contains(&peer),
            retiring: self.retirement.peer() == Some(peer),
        })
    }

    /// Destinations we have a route to.
    pub fn route_count(&self) -> usize {
        self.routes.len()
    }

    /// The peer whose tunnel is being retired, if any.
    pub fn retiring(&self) -> Option<P> {
        self.retirement.peer()
    }

    /// Whether the registry's prefix is routed (true when unknown or when we
    /// are the registry node).
    pub fn registry_reachable(&self) -> bool {
        match self.registry {
            None => true,
            Some(r) if r == self.me => true,
            Some(r) => {
                self.routes.contains_key(&r) || self.tunnels.get(&r).is_some_and(Tunnel::is_up)
            }
        }
    }

    /// Whether `peer` is in its failure backoff at `now`.
    pub fn is_backing_off(&self, peer: P, now: Instant) -> bool {
        self.known
            .get(&peer)
            .and_then(|k| k.retry_at)
            .is_some_and(|at| at > now)
    }

    // ---- commands ----

    /// Applies new parameters at once: missing tunnels are opened, surplus
    /// outgoing ones retired gracefully, surplus incoming ones closed.
    pub fn set_config(&mut self, config: PolicyConfig, now: Instant) {
        let refresh_changed = config.tunnel_refresh != self.config.tunnel_refresh;
        self.config = config;
        if refresh_changed {
            self.schedule_refresh(now);
        }
        self.enforce_limits(now);
        self.fill(now);
    }

    /// Tells whether we can be reached from outside (a listening port that
    /// works, or a UPnP mapping). While unreachable we keep at most
    /// [`UNREACHABLE_CLIENT_COUNT`] outgoing tunnels.
    pub fn set_reachable(&mut self, reachable: bool, now: Instant) {
        if self.reachable == reachable {
            return;
        }
        self.reachable = reachable;
        self.enforce_limits(now);
        self.fill(now);
    }

    /// Sets the registry node's id (from the network configuration).
    pub fn set_registry(&mut self, registry: Option<P>, now: Instant) {
        self.registry = registry;
        self.registry_lost_since = (!self.registry_reachable()).then_some(now);
        self.fill(now);
    }

    /// Adds a persistent neighbour: always connected, never retired, not
    /// counted in `client_count`/`max_clients`.
    pub fn add_neighbour(&mut self, peer: P, now: Instant) {
        if peer != self.me && self.neighbours.insert(peer) {
            self.fill(now);
        }
    }

    /// Makes a persistent neighbour an ordinary peer again.
    pub fn remove_neighbour(&mut self, peer: P, now: Instant) {
        if self.neighbours.remove(&peer) {
            self.enforce_limits(now);
            self.fill(now);
        }
    }

    // ---- inputs ----

    /// Replaces the whole route table: each destination with the tunnel (or
    /// other interface) its selected route goes through.
    pub fn handle_routes(&mut self, routes: impl IntoIterator<Item = (P, Via<P>)>, now: Instant) {
        self.routes.clear();
        for (dest, via) in routes {
            if dest != self.me {
                self.routes.insert(dest, via);
            }
        }
        for (peer, tunnel) in &mut self.tunnels {
            tunnel.routes = count_via(&self.routes, *peer);
        }
        self.after_routes_changed(now);
    }

    /// One route change: `via` is where the selected route to `dest` now
    /// goes, or `None` when `dest` became unreachable.
    pub fn handle_route(&mut self, dest: P, via: Option<Via<P>>, now: Instant) {
        if dest == self.me {
            return;
        }
        let old = match via {
            Some(via) => self.routes.insert(dest, via),
            None => self.routes.remove(&dest),
        };
        if old == via {
            return;
        }
        if let Some(Via::Tunnel(p)) = old {
            if let Some(t) = self.tunnels.get_mut(&p) {
                t.routes = t.routes.saturating_sub(1);
            }
        }
        if let Some(Via::Tunnel(p)) = via {
            if let Some(t) = self.tunnels.get_mut(&p) {
                t.routes += 1;
            }
        }
        self.after_routes_changed(now);
    }

    /// Addresses of `peer` learnt from the peer cache or a peer-protocol
    /// reply. Answers a pending [`Action::RequestAddresses`].
    pub fn handle_addresses(&mut self, peer: P, addresses: Vec<Address>, now: Instant) {
        if peer == self.me {
            return;
        }
        let none = addresses.is_empty();
        self.known.entry(peer).or_default().addresses = addresses;
        if self.address_requests.remove(&peer).is_some() && !self.tunnels.contains_key(&peer) {
            // A peer that announces no address (NATed, client-only) cannot
            // be connected to: it fails like a silent one instead of being
            // asked again at once.
            if none {
                self.fail(peer, now);
            } else {
                self.attempt(peer, now);
            }
        }
        self.fill(now);
    }

    /// Seeds what we know of `peer` from the peer cache at start-up,
    /// including its backoff.
    pub fn handle_cached_peer(
        &mut self,
        peer: P,
        addresses: Vec<Address>,
        failures: u32,
        retry_at: Option<Instant>,
    ) {
        if peer == self.me {
            return;
        }
        let known = self.known.entry(peer).or_default();
        known.addresses = addresses;
        known.failures = failures;
        known.retry_at = retry_at;
    }

    /// The registry's answer to [`Action::RequestBootstrapPeer`]. We connect
    /// to it even beyond `client_count` when the registry is unreachable
    /// (it heals a partition; the surplus is retired at the next refresh).
    pub fn handle_bootstrap_peer(&mut self, peer: P, addresses: Vec<Address>, now: Instant) {
        if peer == self.me {
            return;
        }
        let known = self.known.entry(peer).or_default();
        known.addresses = addresses;
        known.retry_at = None;
        if !self.tunnels.contains_key(&peer) && !self.address_requests.contains_key(&peer) {
            let needed = self.deficit() > 0 || !self.registry_reachable();
            if needed && self.reachable_or_below_cap() {
                self.attempt(peer, now);
            }
        }
        self.fill(now);
    }

    /// The registry gave no bootstrap peer (unreachable, or it knows no
    /// live peer yet): ask again `retry` from `now` instead of waiting the
    /// whole `bootstrap_interval`. The driver chooses `retry` (a growing
    /// backoff); it never delays a request already due sooner.
    pub fn handle_bootstrap_failed(&mut self, retry: Duration, now: Instant) {
        let at = now + retry;
        if self.next_bootstrap.is_none_or(|n| n > at) {
            self.next_bootstrap = Some(at);
            self.timers[Timer::Bootstrap as usize] = Some(at);
        }
    }

    /// An incoming tunnel from `peer` asks to be accepted. Returns whether
    /// to accept it (the driver refuses the handshake otherwise).
    pub fn handle_incoming(&mut self, peer: P, now: Instant) -> bool {
        if peer == self.me {
            return false;
        }
        let persistent = self.neighbours.contains(&peer);
        let full = !persistent && self.incoming_count() >= self.config.max_clients;
        match self.tunnels.get(&peer).map(|t| t.direction) {
            Some(Direction::Incoming) => return true,
            Some(Direction::Outgoing) => {
                if full {
                    // The peer will refuse ours too; both back off and
                    // retry at different times.
                    return false;
                }
                // Both sides connect at once: the tunnel initiated by the
                // lower id survives, so both sides pick the same one.
                if self.me < peer {
                    return false;
                }
                self.tunnels.remove(&peer);
                self.abort_retirement_of(peer);
                self.actions.push_back(Action::Close {
                    peer,
                    direction: Direction::Outgoing,
                });
            }
            None => {
                if full {
                    return false;
                }
            }
        }
        self.address_requests.remove(&peer);
        let mut tunnel = Tunnel::new(Direction::Incoming, now + self.config.connect_timeout);
        tunnel.routes = count_via(&self.routes, peer);
        self.tunnels.insert(peer, tunnel);
        self.fill(now);
        true
    }

    /// A tunnel with `peer` is up.
    pub fn handle_tunnel_up(&mut self, peer: P, direction: Direction, now: Instant) {
        if peer == self.me {
            self.actions.push_back(Action::Close { peer, direction });
            return;
        }
        match self.tunnels.get(&peer).map(|t| t.direction) {
            Some(d) if d == direction => {}
            Some(_) => {
                let winner = if self.me < peer {
                    Direction::Outgoing
                } else {
                    Direction::Incoming
                };
                let loser = if direction == winner {
                    self.abort_retirement_of(peer);
                    self.tunnels.remove(&peer);
                    if direction == Direction::Outgoing {
                        Direction::Incoming
                    } else {
                        Direction::Outgoing
                    }
                } else {
                    direction
                };
                self.actions.push_back(Action::Close {
                    peer,
                    direction: loser,
                });
                if loser == direction {
                    return;
                }
            }
            None => {
                // An outgoing tunnel we did not ask for, or abandoned while
                // it was connecting: close it. An incoming one that was not
                // announced: apply the admission rule now.
                let refuse = match direction {
                    Direction::Outgoing => true,
                    Direction::Incoming => {
                        !self.neighbours.contains(&peer)
                            && self.incoming_count() >= self.config.max_clients
                    }
                };
                if refuse {
                    self.actions.push_back(Action::Close { peer, direction });
                    return;
                }
            }
        }
        self.address_requests.remove(&peer);
        let routes = count_via(&self.routes, peer);
        let tunnel = self
            .tunnels
            .entry(peer)
            .or_insert_with(|| Tunnel::new(direction, now));
        tunnel.direction = direction;
        tunnel.phase = Phase::Up;
        tunnel.routes = routes;
        if direction == Direction::Outgoing {
            if let Some(known) = self.known.get_mut(&peer) {
                known.failures = 0;
                known.retry_at = None;
            }
            self.actions.push_back(Action::PeerSucceeded { peer });
        }
        self.enforce_limits(now);
        self.fill(now);
    }

    /// A tunnel with `peer` went down (liveness lost, or closed by the
    /// peer). A dead outgoing tunnel marks the peer failed and is replaced
    /// at once.
    pub fn handle_tunnel_down(&mut self, peer: P, direction: Direction, now: Instant) {
        if self.tunnels.get(&peer).map(|t| t.direction) != Some(direction) {
            return;
        }
        self.tunnels.remove(&peer);
        self.abort_retirement_of(peer);
        if direction == Direction::Outgoing {
            self.fail(peer, now);
        }
        self.fill(now);
    }

    /// Our outgoing connection attempt to `peer` goes on with another
    /// address, transport or hole punching: its connect deadline restarts
    /// at `now`, so that a slow first address does not make the policy
    /// give up the attempt (and stall) while the next one is tried.
    pub fn handle_connect_progress(&mut self, peer: P, now: Instant) {
        if let Some(t) = self.tunnels.get_mut(&peer) {
            if t.direction == Direction::Outgoing {
                if let Phase::Connecting { deadline } = &mut t.phase {
                    *deadline = now + self.config.connect_timeout;
                }
            }
        }
    }

    /// Whether an incoming tunnel from `peer` would be accepted now (asked
    /// before agreeing to punch a hole with it).
    pub fn would_accept(&self, peer: P) -> bool {
        if peer == self.me {
            return false;
        }
        match self.tunnels.get(&peer).map(|t| t.direction) {
            Some(Direction::Incoming) => true,
            Some(Direction::Outgoing) => false,
            None => {
                self.neighbours.contains(&peer) || self.incoming_count() < self.config.max_clients
            }
        }
    }

    /// Our outgoing connection attempt to `peer` failed (every address).
    pub fn handle_connect_failed(&mut self, peer: P, now: Instant) {
        match self.tunnels.get(&peer) {
            Some(t) if t.direction == Direction::Outgoing && !t.is_up() => {
                self.tunnels.remove(&peer);
                self.fail(peer, now);
                self.fill(now);
            }
            _ => {}
        }
    }

    /// `peer` answers our [`Action::RequestRetirement`] number `id`.
    pub fn handle_retirement_reply(&mut self, peer: P, id: u32, agreed: bool, now: Instant) {
        let Retirement::AwaitingAgreement { peer: p, id: i, .. } = self.retirement else {
            return;
        };
        if p != peer || i != id {
            return;
        }
        self.retirement = Retirement::Idle;
        // A surplus tunnel (the cap while unreachable, client_count
        // lowered) goes even when refused: the agreement protects the
        // periodic refresh, not a limit. The peer may well not know the
        // tunnel as incoming (both sides connected at once).
        if agreed || self.outgoing_count() > self.target() {
            self.tunnels.remove(&peer);
            self.last_retired = Some(peer);
            self.actions.push_back(Action::Close {
                peer,
                direction: Direction::Outgoing,
            });
            // More surplus to trim? Go on at once.
            if self.outgoing_count() > self.target() {
                self.timers[Timer::Refresh as usize] = Some(now);
            }
        } else {
            self.actions.push_back(Action::RestoreCost { peer });
        }
        self.fill(now);
    }

    /// `peer` asks us to agree to close its tunnel to us. Returns whether we
    /// agree; if so, the tunnel's cost is raised on our side too until the
    /// peer closes it (or `retire_grace` passes).
    pub fn handle_retirement_request(&mut self, peer: P, now: Instant) -> bool {
        if self.neighbours.contains(&peer) {
            return false;
        }
        match self.tunnels.get_mut(&peer) {
            Some(t) if t.direction == Direction::Incoming && t.is_up() => {
                if t.restore_cost_at.is_none() {
                    self.actions.push_back(Action::RaiseCost { peer });
                }
                t.restore_cost_at = Some(now + self.config.retire_grace);
                true
            }
            _ => false,
        }
    }

    /// Processes every deadline that has passed at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        // Address requests nobody answered.
        let expired: Vec<P> = self
            .address_requests
            .iter()
            .filter(|(_, &deadline)| deadline <= now)
            .map(|(&p, _)| p)
            .collect();
        for peer in expired {
            self.address_requests.remove(&peer);
            self.fail(peer, now);
        }
        // Tunnels stuck connecting; incoming tunnels whose retirement the
        // peer abandoned.
        let mut stuck = Vec::new();
        for (&peer, t) in &mut self.tunnels {
            if let Phase::Connecting { deadline } = t.phase {
                if deadline <= now {
                    stuck.push((peer, t.direction));
                }
            }
            if t.restore_cost_at.is_some_and(|at| at <= now) {
                t.restore_cost_at = None;
                self.actions.push_back(Action::RestoreCost { peer });
            }
        }
        for (peer, direction) in stuck {
            self.tunnels.remove(&peer);
            self.actions.push_back(Action::Close { peer, direction });
            if direction == Direction::Outgoing {
                self.fail(peer, now);
            }
        }
        // A retirement that did not complete in time.
        if let Some(deadline) = self.retirement.deadline() {
            if deadline <= now {
                if let Some(peer) = self.retirement.peer() {
                    self.actions.push_back(Action::RestoreCost { peer });
                }
                self.retirement = Retirement::Idle;
            }
        }
        if self.timers[Timer::Refresh as usize].is_some_and(|at| at <= now) {
            self.schedule_refresh(now);
            self.refresh(now);
        }
        self.fill(now);
    }

    // ---- outputs ----

    /// The next thing to do, if any. Call until `None` after every input.
    pub fn poll_action(&mut self) -> Option<Action<P>> {
        self.actions.pop_front()
    }

    /// When [`Policy::handle_timeout`] must be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let timers = self.timers.iter().flatten().copied();
        let requests = self.address_requests.values().copied();
        let tunnels = self.tunnels.values().flat_map(|t| {
            let connecting = match t.phase {
                Phase::Connecting { deadline } => Some(deadline),
                Phase::Up => None,
            };
            connecting.into_iter().chain(t.restore_cost_at)
        });
        timers
            .chain(requests)
            .chain(tunnels)
            .chain(self.retirement.deadline())
            .min()
    }

    // ---- internals ----

    fn after_routes_changed(&mut self, now: Instant) {
        let reachable = self.registry_reachable();
        match (reachable, self.registry_lost_since) {
            (true, Some(_)) => {
                self.registry_lost_since = None;
                self.next_bootstrap = None;
            }
            (false, None) => {
                self.registry_lost_since = Some(now);
                let at = now + self.config.bootstrap_interval;
                let slot = &mut self.timers[Timer::Bootstrap as usize];
                if slot.is_none_or(|t| t > at) {
                    *slot = Some(at);
                }
            }
            _ => {}
        }
        if let Retirement::Draining { peer, .. } = self.retirement {
            if self.tunnels.get(&peer).is_some_and(|t| t.routes == 0) {
                self.request_agreement(peer, now);
            }
        }
        // Route updates come in bursts: search for peers at most once per
        // fill_interval.
        if self.wants_more() {
            let at = now + self.config.fill_interval;
            let slot = &mut self.timers[Timer::Fill as usize];
            if slot.is_none_or(|t| t > at) {
                *slot = Some(at);
            }
        }
    }

    fn wants_more(&self) -> bool {
        self.deficit() > 0
            || self
                .neighbours
                .iter()
                .any(|n| !self.tunnels.contains_key(n) && !self.address_requests.contains_key(n))
    }

    /// Outgoing tunnels still to open (ongoing attempts count as open).
    fn deficit(&self) -> usize {
        let pending = self
            .address_requests
            .keys()
            .filter(|p| !self.neighbours.contains(p))
            .count();
        self.target()
            .saturating_sub(self.outgoing_count() + pending)
    }

    fn reachable_or_below_cap(&self) -> bool {
        self.reachable || self.outgoing_count() < UNREACHABLE_CLIENT_COUNT
    }

    /// Opens what is missing: persistent neighbours, then random peers.
    fn fill(&mut self, now: Instant) {
        self.timers[Timer::Fill as usize] = None;
        let neighbours: Vec<P> = self
            .neighbours
            .iter()
            .copied()
            .filter(|n| {
                !self.tunnels.contains_key(n)
                    && !self.address_requests.contains_key(n)
                    && !self.is_backing_off(*n, now)
            })
            .collect();
        for n in neighbours {
            self.attempt(n, now);
        }
        let mut deficit = self.deficit();
        while deficit > 0 {
            let Some(peer) = self.pick_candidate(now) else {
                break;
            };
            self.attempt(peer, now);
            deficit -= 1;
        }
        self.maybe_bootstrap(deficit > 0, now);
        // Still short (everyone backing off)? Come back when the first
        // backoff ends.
        if self.wants_more() {
            let retry = self
                .known
                .values()
                .filter_map(|k| k.retry_at)
                .filter(|&at| at > now)
                .min();
            if let Some(at) = retry {
                let slot = &mut self.timers[Timer::Fill as usize];
                if slot.is_none_or(|t| t > at) {
                    *slot = Some(at);
                }
            }
        }
    }

    fn is_candidate(&self, peer: P, now: Instant) -> bool {
        peer != self.me
            && !self.tunnels.contains_key(&peer)
            && !self.address_requests.contains_key(&peer)
            && !self.neighbours.contains(&peer)
            && self.last_retired != Some(peer)
            && !self.is_backing_off(peer, now)
    }

    /// A uniformly random distant node, or else a random known peer; the
    /// peer retired last only when there is no other.
    fn pick_candidate(&mut self, now: Instant) -> Option<P> {
        self.pick_candidate_once(now).or_else(|| {
            self.last_retired.take()?;
            self.pick_candidate_once(now)
        })
    }

    fn pick_candidate_once(&mut self, now: Instant) -> Option<P> {
        let n = self
            .routes
            .keys()
            .filter(|&&p| self.is_candidate(p, now))
            .count();
        if n > 0 {
            let k = self.rng.gen_range(0..n);
            return self
                .routes
                .keys()
                .copied()
                .filter(|&p| self.is_candidate(p, now))
                .nth(k);
        }
        let cached: Vec<P> = self
            .known
            .iter()
            .filter(|(&p, k)| !k.addresses.is_empty() && self.is_candidate(p, now))
            .map(|(&p, _)| p)
            .collect();
        if cached.is_empty() {
            return None;
        }
        let k = self.rng.gen_range(0..cached.len());
        Some(cached[k])
    }

    fn attempt(&mut self, peer: P, now: Instant) {
        let addresses = self
            .known
            .get(&peer)
            .map(|k| k.addresses.clone())
            .unwrap_or_default();
        if addresses.is_empty() {
            self.address_requests
                .insert(peer, now + self.config.reply_timeout);
            self.actions.push_back(Action::RequestAddresses { peer });
        } else {
            self.tunnels.insert(
                peer,
                Tunnel::new(Direction::Outgoing, now + self.config.connect_timeout),
            );
            self.actions.push_back(Action::Connect { peer, addresses });
        }
    }

    fn fail(&mut self, peer: P, now: Instant) {
        let base = self.config.retry_min;
        let max = self.config.retry_max;
        let known = self.known.entry(peer).or_default();
        known.failures = known.failures.saturating_add(1);
        let shift = (known.failures - 1).min(20);
        let delay = base.saturating_mul(1 << shift).min(max);
        // ±10 % jitter so that failed peers are not retried in lockstep.
        let jitter = self.rng.gen_range(0.9..1.1);
        let retry_at = now + delay.mul_f64(jitter);
        known.retry_at = Some(retry_at);
        self.actions.push_back(Action::PeerFailed {
            peer,
            failures: known.failures,
            retry_at,
        });
    }

    fn maybe_bootstrap(&mut self, short: bool, now: Instant) {
        if self.registry_reachable() {
            self.timers[Timer::Bootstrap as usize] = None;
            return;
        }
        let lost_long = self
            .registry_lost_since
            .map(|since| since + self.config.bootstrap_interval);
        let due = short || lost_long.is_some_and(|at| at <= now);
        if !due {
            self.timers[Timer::Bootstrap as usize] = lost_long;
            return;
        }
        if let Some(at) = self.next_bootstrap.filter(|&at| at > now) {
            self.timers[Timer::Bootstrap as usize] = Some(at);
            return;
        }
        self.actions.push_back(Action::RequestBootstrapPeer);
        let next = now + self.config.bootstrap_interval;
        self.next_bootstrap = Some(next);
        self.timers[Timer::Bootstrap as usize] = Some(next);
    }

    fn schedule_refresh(&mut self, now: Instant) {
        let period = self.config.tunnel_refresh;
        self.timers[Timer::Refresh as usize] = if period.is_zero() {
            None
        } else {
            Some(now + period.mul_f64(self.rng.gen_range(0.9..1.1)))
        };
    }

    /// The periodic retirement of the least useful outgoing tunnel.
    fn refresh(&mut self, now: Instant) {
        if !matches!(self.retirement, Retirement::Idle) {
            return;
        }
        let surplus = self.outgoing_count() > self.target();
        let up = self
            .tunnels
            .iter()
            .filter(|(p, t)| {
                t.direction == Direction::Outgoing && t.is_up() && !self.neighbours.contains(p)
            })
            .count();
        // Retiring only makes sense when the replacement can be found.
        let replaceable = up >= self.target()
            && self.target() > 0
            && self.routes.keys().any(|&p| self.is_candidate(p, now));
        if !surplus && !replaceable {
            return;
        }
        let Some(victim) = self.least_useful(Direction::Outgoing) else {
            return;
        };
        self.actions.push_back(Action::RaiseCost { peer: victim });
        if self.tunnels.get(&victim).is_some_and(|t| t.routes == 0) {
            self.request_agreement(victim, now);
        } else {
            self.retirement = Retirement::Draining {
                peer: victim,
                deadline: now + self.config.drain_timeout,
            };
        }
    }

    /// The up, non-persistent tunnel in `direction` routing the fewest
    /// destinations (ties broken at random).
    fn least_useful(&mut self, direction: Direction) -> Option<P> {
        let eligible = |(p, t): &(&P, &Tunnel)| {
            t.direction == direction && t.is_up() && !self.neighbours.contains(*p)
        };
        let min = self
            .tunnels
            .iter()
            .filter(eligible)
            .map(|(_, t)| t.routes)
            .min()?;
        let ties = self
            .tunnels
            .iter()
            .filter(|e| eligible(e) && e.1.routes == min)
            .count();
        let k = self.rng.gen_range(0..ties);
        self.tunnels
            .iter()
            .filter(|e| eligible(e) && e.1.routes == min)
            .map(|(&p, _)| p)
            .nth(k)
    }

    fn request_agreement(&mut self, peer: P, now: Instant) {
        let id = self.next_retirement_id;
        self.next_retirement_id = self.next_retirement_id.wrapping_add(1);
        self.retirement = Retirement::AwaitingAgreement {
            peer,
            id,
            deadline: now + self.config.reply_timeout,
        };
        self.actions
            .push_back(Action::RequestRetirement { peer, id });
    }

    fn abort_retirement_of(&mut self, peer: P) {
        if self.retirement.peer() == Some(peer) {
            self.retirement = Retirement::Idle;
        }
    }

    /// Closes surplus incoming tunnels at once and starts retiring surplus
    /// outgoing ones.
    fn enforce_limits(&mut self, now: Instant) {
        while self.incoming_count() > self.config.max_clients {
            let Some(victim) = self.least_useful(Direction::Incoming).or_else(|| {
                // Only connecting ones left: drop the first.
                self.tunnels
                    .iter()
                    .find(|(p, t)| {
                        t.direction == Direction::Incoming && !self.neighbours.contains(p)
                    })
                    .map(|(&p, _)| p)
            }) else {
                break;
            };
            self.tunnels.remove(&victim);
            self.actions.push_back(Action::Close {
                peer: victim,
                direction: Direction::Incoming,
            });
        }
        // Surplus attempts still connecting are simply abandoned.
        while self.outgoing_count() > self.target() {
            let connecting = self
                .tunnels
                .iter()
                .find(|(p, t)| {
                    t.direction == Direction::Outgoing && !t.is_up() && !self.neighbours.contains(p)
                })
                .map(|(&p, _)| p);
            let Some(peer) = connecting else { break };
            self.tunnels.remove(&peer);
            self.actions.push_back(Action::Close {
                peer,
                direction: Direction::Outgoing,
            });
        }
        if self.outgoing_count() > self.target() && matches!(self.retirement, Retirement::Idle) {
            self.refresh(now);
        }
    }
}

fn count_via<P: PeerId>(routes: &BTreeMap<P, Via<P>>, peer: P) -> u32 {
    let n = routes.values().filter(|&&v| v == Via::Tunnel(peer)).count();
    u32::try_from(n).unwrap_or(u32::MAX)
}

#[derive(Clone, Copy, Debug)]
enum Timer {
    Refresh,
    Fill,
    Bootstrap,
}

impl Timer {
    const COUNT: usize = 3;
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Connecting { deadline: Instant },
    Up,
}

#[derive(Clone, Debug)]
struct Tunnel {
    direction: Direction,
    phase: Phase,
    routes: u32,
    /// Acceptor side of an agreed retirement: when to restore the cost if
    /// the peer never closes.
    restore_cost_at: Option<Instant>,
}

impl Tunnel {
    fn new(direction: Direction, deadline: Instant) -> Self {
        Self {
            direction,
            phase: Phase::Connecting { deadline },
            routes: 0,
            restore_cost_at: None,
        }
    }

    fn is_up(&self) -> bool {
        self.phase == Phase::Up
    }
}

#[derive(Clone, Debug, Default)]
struct Known {
    addresses: Vec<Address>,
    failures: u32,
    retry_at: Option<Instant>,
}

#[derive(Clone, Copy, Debug)]
enum Retirement<P> {
    Idle,
    /// Cost raised; waiting for routes to leave the tunnel.
    Draining {
        peer: P,
        deadline: Instant,
    },
    /// Drained; waiting for the peer's agreement.
    AwaitingAgreement {
        peer: P,
        id: u32,
        deadline: Instant,
    },
}

impl<P: Copy> Retirement<P> {
    fn peer(&self) -> Option<P> {
        match *self {
            Self::Idle => None,
            Self::Draining { peer, .. } | Self::AwaitingAgreement { peer, .. } => Some(peer),
        }
    }

    fn deadline(&self) -> Option<Instant> {
        match *self {
            Self::Idle => None,
            Self::Draining { deadline, .. } | Self::AwaitingAgreement { deadline, .. } => {
                Some(deadline)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet, VecDeque};
    use std::net::{IpAddr, Ipv4Addr};

    use rand::{Rng, SeedableRng};

    use super::*;
    use crate::node::Proto;

    fn addr(n: u32) -> Vec<Address> {
        vec![Address {
            ip: IpAddr::V4(Ipv4Addr::from(0xc000_0200 + n)),
            port: 1194,
            proto: Proto::Udp,
        }]
    }

    fn config(client_count: usize, max_clients: usize) -> PolicyConfig {
        PolicyConfig {
            client_count,
            max_clients,
            ..PolicyConfig::default()
        }
    }

    /// One policy on a virtual clock.
    struct Harness {
        policy: Policy<u32>,
        t0: Instant,
        now: Instant,
    }

    impl Harness {
        fn new(me: u32, config: PolicyConfig) -> Self {
            let t0 = Instant::now();
            Self {
                policy: Policy::new(me, config, StdRng::seed_from_u64(7), t0),
                t0,
                now: t0,
            }
        }

        fn secs(&self, s: f64) -> Instant {
            self.t0 + Duration::from_secs_f64(s)
        }

        /// Advances the clock to `s` seconds, firing every timer on the way.
        fn advance(&mut self, s: f64) -> Vec<Action<u32>> {
            let end = self.secs(s);
            let mut out = self.actions();
            while let Some(at) = self.policy.poll_timeout() {
                if at > end {
                    break;
                }
                self.now = at.max(self.now);
                self.policy.handle_timeout(self.now);
                out.extend(self.actions());
            }
            self.now = end;
            out
        }

        fn actions(&mut self) -> Vec<Action<u32>> {
            std::iter::from_fn(|| self.policy.poll_action()).collect()
        }

        /// Routes to `dests`, each through the tunnel named next to it
        /// (`None` = through another interface).
        fn routes(&mut self, routes: &[(u32, Option<u32>)]) {
            let now = self.now;
            self.policy.handle_routes(
                routes
                    .iter()
                    .map(|&(d, v)| (d, v.map_or(Via::Other, Via::Tunnel))),
                now,
            );
        }

        /// Brings up every pending outgoing connection.
        fn accept_connects(&mut self, actions: &[Action<u32>]) {
            for a in actions {
                if let Action::Connect { peer, .. } = a {
                    let now = self.now;
                    self.policy
                        .handle_tunnel_up(*peer, Direction::Outgoing, now);
                }
            }
        }
    }

    fn connects(actions: &[Action<u32>]) -> Vec<u32> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Connect { peer, .. } => Some(*peer),
                _ => None,
            })
            .collect()
    }

    fn count(actions: &[Action<u32>], f: impl Fn(&Action<u32>) -> bool) -> usize {
        actions.iter().filter(|a| f(a)).count()
    }

    /// A node knowing `n` distant peers with cached addresses, all routed
    /// through another interface.
    fn with_distant(me: u32, n: u32, config: PolicyConfig) -> Harness {
        let mut h = Harness::new(me, config);
        for p in 1..=n {
            h.policy.handle_cached_peer(p, addr(p), 0, None);
        }
        let routes: Vec<_> = (1..=n).map(|p| (p, None)).collect();
        h.routes(&routes);
        h
    }

    #[test]
    fn fills_client_count_from_distant_nodes() {
        // (client_count, distant nodes, expected connects)
        let table = [(3, 10, 3), (10, 4, 4), (0, 10, 0), (5, 5, 5)];
        for (client_count, distant, expected) in table {
            let mut h = with_distant(100, distant, config(client_count, 10));
            let actions = h.advance(0.5);
            let peers = connects(&actions);
            assert_eq!(peers.len(), expected, "{client_count}/{distant}");
            let unique: BTreeSet<_> = peers.iter().collect();
            assert_eq!(unique.len(), peers.len(), "no peer twice");
            assert!(!peers.contains(&100), "never ourselves");
            assert_eq!(h.policy.outgoing_count(), expected);
        }
    }

    #[test]
    fn asks_peers_without_known_address() {
        let mut h = Harness::new(100, config(2, 10));
        h.routes(&[(1, None), (2, None), (3, None)]);
        let actions = h.advance(1.5);
        let asked: Vec<u32> = actions
            .iter()
            .filter_map(|a| match a {
                Action::RequestAddresses { peer } => Some(*peer),
                _ => None,
            })
            .collect();
        assert_eq!(asked.len(), 2);
        assert!(connects(&actions).is_empty());
        // One answers: we connect to it; the other stays silent: it is
        // marked failed after reply_timeout and another peer is tried.
        let now = h.now;
        h.policy.handle_addresses(asked[0], addr(asked[0]), now);
        assert_eq!(connects(&h.actions()), vec![asked[0]]);
        let actions = h.advance(12.0);
        assert!(actions.iter().any(
            |a| matches!(a, Action::PeerFailed { peer, failures: 1, .. } if *peer == asked[1])
        ));
        let third = 6 - asked[0] - asked[1];
        assert!(actions
            .iter()
            .any(|a| matches!(a, Action::RequestAddresses { peer } if *peer == third)));
    }

    #[test]
    fn a_peer_without_addresses_fails_instead_of_being_asked_forever() {
        let mut h = Harness::new(100, config(1, 10));
        h.routes(&[(1, None)]);
        let actions = h.advance(1.5);
        assert_eq!(
            count(&actions, |a| matches!(
                a,
                Action::RequestAddresses { peer: 1 }
            )),
            1
        );
        let now = h.now;
        h.policy.handle_addresses(1, Vec::new(), now);
        let actions = h.actions();
        assert!(
            actions.iter().any(|a| matches!(
                a,
                Action::PeerFailed {
                    peer: 1,
                    failures: 1,
                    ..
                }
            )),
            "{actions:?}"
        );
        assert_eq!(
            count(&actions, |a| matches!(a, Action::RequestAddresses { .. })),
            0,
            "{actions:?}"
        );
        assert!(h.policy.is_backing_off(1, now));
    }

    #[test]
    fn route_bursts_are_coalesced() {
        let mut h = Harness::new(100, config(10, 10));
        let _ = h.advance(0.0);
        let mut searches = 0;
        for p in 1..=50 {
            let now = h.now;
            h.policy.handle_route(p, Some(Via::Other), now);
            searches += count(&h.actions(), |a| {
                matches!(a, Action::RequestAddresses { .. })
            });
        }
        assert_eq!(searches, 0, "no search before fill_interval");
        let actions = h.advance(1.0);
        assert_eq!(
            count(&actions, |a| matches!(a, Action::RequestAddresses { .. })),
            10
        );
    }

    #[test]
    fn incoming_admission_table() {
        // (max_clients, already accepted, persistent?, accepted?)
        let table = [
            (2, 0, false, true),
            (2, 1, false, true),
            (2, 2, false, false),
            (0, 0, false, false),
            (2, 2, true, true),
        ];
        for (max, already, persistent, expected) in table {
            let mut h = Harness::new(100, config(0, max));
            let now = h.now;
            for p in 0..already {
                assert!(h.policy.handle_incoming(200 + p, now));
                h.policy.handle_tunnel_up(200 + p, Direction::Incoming, now);
            }
            if persistent {
                h.policy.add_neighbour(7, now);
                let _ = h.actions();
            }
            assert_eq!(
                h.policy.handle_incoming(7, now),
                expected,
                "{max}/{already}/{persistent}"
            );
            assert!(!h.policy.handle_incoming(100, now), "never ourselves");
        }
    }

    #[test]
    fn simultaneous_connections_keep_the_one_initiated_by_the_lower_id() {
        // (me, peer, incoming accepted?, our outgoing closed?)
        let table = [(10, 20, false, false), (20, 10, true, true)];
        for (me, peer, accepted, closed) in table {
            let mut h = Harness::new(me, config(1, 5));
            h.policy.handle_cached_peer(peer, addr(peer), 0, None);
            h.routes(&[(peer, None)]);
            assert_eq!(connects(&h.advance(1.0)), vec![peer]);
            let now = h.now;
            assert_eq!(h.policy.handle_incoming(peer, now), accepted);
            let actions = h.actions();
            let closed_out = actions.contains(&Action::Close {
                peer,
                direction: Direction::Outgoing,
            });
            assert_eq!(closed_out, closed);
            let tunnels: Vec<_> = h.policy.tunnels().collect();
            assert_eq!(tunnels.len(), 1);
            let expected = if me < peer {
                Direction::Outgoing
            } else {
                Direction::Incoming
            };
            assert_eq!(tunnels[0].direction, expected);
        }
        // Both handshakes already completed: the loser is closed on both
        // sides, whatever order the events arrive in.
        for (me, peer) in [(10u32, 20u32), (20, 10)] {
            let mut h = Harness::new(me, config(1, 5));
            h.policy.handle_cached_peer(peer, addr(peer), 0, None);
            h.routes(&[(peer, None)]);
            let _ = h.advance(1.0);
            let now = h.now;
            h.policy.handle_tunnel_up(peer, Direction::Outgoing, now);
            let _ = h.actions();
            h.policy.handle_tunnel_up(peer, Direction::Incoming, now);
            let actions = h.actions();
            let (keep, lose) = if me < peer {
                (Direction::Outgoing, Direction::Incoming)
            } else {
                (Direction::Incoming, Direction::Outgoing)
            };
            assert!(actions.contains(&Action::Close {
                peer,
                direction: lose
            }));
            assert_eq!(h.policy.tunnels().next().map(|t| t.direction), Some(keep));
        }
    }

    #[test]
    fn dead_tunnel_is_replaced_at_once_and_backs_off() {
        let mut h = with_distant(100, 4, config(2, 10));
        let first = h.advance(1.0);
        h.accept_connects(&first);
        let _ = h.actions();
        let dead = connects(&first)[0];
        let now = h.now;
        h.policy.handle_tunnel_down(dead, Direction::Outgoing, now);
        let actions = h.actions();
        let failed = actions
            .iter()
            .find_map(|a| match a {
                Action::PeerFailed {
                    peer,
                    failures,
                    retry_at,
                } => Some((*peer, *failures, *retry_at)),
                _ => None,
            })
            .expect("failure reported");
        assert_eq!((failed.0, failed.1), (dead, 1));
        let replacement = connects(&actions);
        assert_eq!(replacement.len(), 1, "replaced at once");
        assert_ne!(replacement[0], dead);
        assert!(h.policy.is_backing_off(dead, now));
        let backoff = failed.2 - now;
        assert!(backoff >= Duration::from_secs(27) && backoff <= Duration::from_secs(33));
        assert!(!h.policy.is_backing_off(dead, failed.2));
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let mut h = Harness::new(100, config(1, 10));
        h.policy.handle_cached_peer(1, addr(1), 0, None);
        h.routes(&[(1, None)]);
        // (failure number, min backoff s, max backoff s)
        let table = [
            (1, 27, 33),
            (2, 54, 66),
            (3, 108, 132),
            (4, 216, 264),
            (5, 432, 528),
            (6, 864, 1056),
            (7, 1728, 2112),
            (8, 3240, 3960),
            (9, 3240, 3960),
        ];
        let mut t = 0.0;
        for (n, lo, hi) in table {
            let actions = h.advance(t);
            assert_eq!(connects(&actions), vec![1], "retry {n}");
            let now = h.now;
            h.policy.handle_connect_failed(1, now);
            let (failures, retry_at) = h
                .actions()
                .iter()
                .find_map(|a| match a {
                    Action::PeerFailed {
                        failures, retry_at, ..
                    } => Some((*failures, *retry_at)),
                    _ => None,
                })
                .expect("failure");
            assert_eq!(failures, n);
            let wait = (retry_at - now).as_secs();
            assert!((lo..=hi).contains(&wait), "{n}: {wait}");
            assert!(connects(&h.advance(t + wait as f64 - 1.0)).is_empty());
            t = (retry_at - h.t0).as_secs_f64() + 0.01;
        }
    }

    /// A node with 3 outgoing tunnels up, routing (3, 1, 5) destinations.
    fn refreshing() -> (Harness, [u32; 3]) {
        let mut cfg = config(3, 10);
        cfg.tunnel_refresh = Duration::from_secs(100);
        let mut h = with_distant(100, 20, cfg);
        let first = h.advance(1.0);
        h.accept_connects(&first);
        let _ = h.actions();
        let t = connects(&first);
        let t = [t[0], t[1], t[2]];
        let mut routes: Vec<(u32, Option<u32>)> =
            vec![(t[0], Some(t[0])), (t[1], Some(t[1])), (t[2], Some(t[2]))];
        let others: Vec<u32> = (1..=20).filter(|p| !t.contains(p)).collect();
        routes.extend(others[..2].iter().map(|&p| (p, Some(t[0]))));
        routes.extend(others[2..6].iter().map(|&p| (p, Some(t[2]))));
        routes.extend(others[6..].iter().map(|&p| (p, None)));
        h.routes(&routes);
        let _ = h.actions();
        (h, t)
    }

    #[test]
    fn refresh_retires_the_least_useful_tunnel() {
        let (mut h, t) = refreshing();
        let actions = h.advance(115.0);
        assert!(actions.contains(&Action::RaiseCost { peer: t[1] }));
        assert_eq!(h.policy.retiring(), Some(t[1]));
        // Its last route moves elsewhere: agreement is requested.
        let now = h.now;
        h.policy.handle_route(t[1], Some(Via::Tunnel(t[0])), now);
        let id = h
            .actions()
            .iter()
            .find_map(|a| match a {
                Action::RequestRetirement { peer, id } if *peer == t[1] => Some(*id),
                _ => None,
            })
            .expect("retirement requested");
        h.policy.handle_retirement_reply(t[1], id, true, now);
        let actions = h.actions();
        assert!(actions.contains(&Action::Close {
            peer: t[1],
            direction: Direction::Outgoing
        }));
        let new = connects(&actions);
        assert_eq!(new.len(), 1, "a new random tunnel");
        assert!(!t.contains(&new[0]));
        assert_eq!(h.policy.retiring(), None);
        assert_eq!(h.policy.outgoing_count(), 3);
    }

    #[test]
    fn retired_peer_is_reused_only_when_alone() {
        // (other candidate backing off?, expected replacement)
        for (other_failed, expected) in [(false, 2u32), (true, 1u32)] {
            let mut cfg = config(1, 10);
            cfg.tunnel_refresh = Duration::from_secs(100);
            let mut h = Harness::new(100, cfg);
            h.policy.handle_cached_peer(1, addr(1), 0, None);
            h.routes(&[(1, None)]);
            let first = h.advance(1.0);
            assert_eq!(connects(&first), vec![1]);
            h.accept_connects(&first);
            h.policy.handle_cached_peer(2, addr(2), 0, None);
            h.routes(&[(1, None), (2, None)]);
            let _ = h.actions();
            let id = (2..=115)
                .find_map(|t| {
                    h.advance(f64::from(t)).iter().find_map(|a| match a {
                        Action::RequestRetirement { peer: 1, id } => Some(*id),
                        _ => None,
                    })
                })
                .expect("retirement of the idle tunnel");
            let now = h.now;
            if other_failed {
                let later = now + Duration::from_secs(1000);
                h.policy.handle_cached_peer(2, addr(2), 1, Some(later));
            }
            h.policy.handle_retirement_reply(1, id, true, now);
            assert_eq!(connects(&h.actions()), vec![expected], "{other_failed}");
        }
    }

    #[test]
    fn refresh_aborts_cleanly() {
        // (what happens after the cost is raised, at time s)
        enum Then {
            RoutesStay,
            PeerRefuses,
            PeerSilent,
            WrongId,
        }
        for then in [
            Then::RoutesStay,
            Then::PeerRefuses,
            Then::PeerSilent,
            Then::WrongId,
        ] {
            let (mut h, t) = refreshing();
            let _ = h.advance(115.0);
            let now = h.now;
            let mut actions = Vec::new();
            match then {
                Then::RoutesStay => actions.extend(h.advance(150.0)),
                Then::PeerRefuses | Then::PeerSilent | Then::WrongId => {
                    h.policy.handle_route(t[1], Some(Via::Tunnel(t[0])), now);
                    let id = h
                        .actions()
                        .iter()
                        .find_map(|a| match a {
                            Action::RequestRetirement { id, .. } => Some(*id),
                            _ => None,
                        })
                        .expect("requested");
                    match then {
                        Then::PeerRefuses => {
                            h.policy.handle_retirement_reply(t[1], id, false, now);
                        }
                        Then::WrongId => {
                            h.policy.handle_retirement_reply(t[1], id + 1, true, now);
                        }
                        _ => {}
                    }
                    actions.extend(h.advance(150.0));
                }
            }
            assert!(actions.contains(&Action::RestoreCost { peer: t[1] }));
            assert!(!actions.iter().any(|a| matches!(a, Action::Close { .. })));
            assert_eq!(h.policy.retiring(), None);
            assert_eq!(h.policy.outgoing_count(), 3);
        }
    }

    #[test]
    fn persistent_neighbours_are_kept_and_never_retired() {
        let mut cfg = config(1, 10);
        cfg.tunnel_refresh = Duration::from_secs(10);
        let mut h = with_distant(100, 5, cfg);
        let now = h.now;
        h.policy.add_neighbour(3, now);
        let actions = h.advance(1.0);
        let peers = connects(&actions);
        assert!(peers.contains(&3));
        assert_eq!(peers.len(), 2, "the neighbour does not count");
        h.accept_connects(&actions);
        let _ = h.actions();
        let now = h.now;
        let mut retired = BTreeSet::new();
        for step in 2..200 {
            let actions = h.advance(step as f64);
            for a in actions {
                match a {
                    Action::RaiseCost { peer } => {
                        retired.insert(peer);
                    }
                    Action::RequestRetirement { peer, id } => {
                        let now = h.now;
                        h.policy.handle_retirement_reply(peer, id, true, now);
                    }
                    Action::Connect { peer, .. } => {
                        let now = h.now;
                        h.policy.handle_tunnel_up(peer, Direction::Outgoing, now);
                    }
                    _ => {}
                }
            }
        }
        assert!(!retired.is_empty(), "ordinary tunnels are refreshed");
        assert!(!retired.contains(&3));
        // A dead neighbour is reconnected after its backoff.
        h.policy.handle_tunnel_down(3, Direction::Outgoing, h.now);
        let _ = h.actions();
        let actions = h.advance(240.0);
        assert!(connects(&actions).contains(&3));
        let _ = now;
    }

    #[test]
    fn unreachable_nodes_keep_at_most_two() {
        // Surplus tunnels are retired one by one, gracefully; peers that
        // refuse (they may not know the tunnel as incoming) lose it anyway.
        for agree in [true, false] {
            let mut h = with_distant(100, 20, config(5, 10));
            let actions = h.advance(1.0);
            h.accept_connects(&actions);
            let _ = h.actions();
            assert_eq!(h.policy.outgoing_count(), 5);
            let now = h.now;
            h.policy.set_reachable(false, now);
            assert_eq!(h.policy.target(), 2);
            for step in 2..100 {
                for a in h.advance(step as f64) {
                    if let Action::RequestRetirement { peer, id } = a {
                        let now = h.now;
                        h.policy.handle_retirement_reply(peer, id, agree, now);
                    }
                }
            }
            assert_eq!(h.policy.outgoing_count(), 2, "peers agree: {agree}");
            let now = h.now;
            h.policy.set_reachable(true, now);
            assert_eq!(connects(&h.actions()).len(), 3, "peers agree: {agree}");
        }
    }

    #[test]
    fn bootstrap_from_cache_then_registry() {
        let registry = 1;
        // (cached peers, registry routed?, expect registry request?)
        let table = [(0, false, true), (3, false, false), (0, true, false)];
        for (cached, routed, expect) in table {
            let mut h = Harness::new(100, config(3, 10));
            for p in 0..cached {
                h.policy.handle_cached_peer(10 + p, addr(10 + p), 0, None);
            }
            if routed {
                h.routes(&[(registry, None)]);
            }
            let now = h.now;
            h.policy.set_registry(Some(registry), now);
            let actions = h.advance(2.0);
            let asked = actions.contains(&Action::RequestBootstrapPeer);
            assert_eq!(asked, expect, "{cached}/{routed}");
            if cached > 0 {
                assert_eq!(connects(&actions).len(), 3);
            }
        }
        // The registry is asked at most once per bootstrap_interval, and
        // its peer is connected.
        let mut h = Harness::new(100, config(3, 10));
        let now = h.now;
        h.policy.set_registry(Some(registry), now);
        let actions = h.advance(59.0);
        assert_eq!(count(&actions, |a| *a == Action::RequestBootstrapPeer), 1);
        let actions = h.advance(61.0);
        assert_eq!(count(&actions, |a| *a == Action::RequestBootstrapPeer), 1);
        let now = h.now;
        h.policy.handle_bootstrap_peer(42, addr(42), now);
        assert_eq!(connects(&h.actions()), vec![42]);
    }

    #[test]
    fn failed_bootstrap_is_retried_sooner() {
        let mut h = Harness::new(100, config(3, 10));
        let now = h.now;
        h.policy.set_registry(Some(1), now);
        let actions = h.advance(1.0);
        assert_eq!(count(&actions, |a| *a == Action::RequestBootstrapPeer), 1);
        let now = h.now;
        h.policy
            .handle_bootstrap_failed(Duration::from_secs(2), now);
        let actions = h.advance(2.5);
        assert!(actions.is_empty(), "{actions:?}");
        let actions = h.advance(3.5);
        assert_eq!(count(&actions, |a| *a == Action::RequestBootstrapPeer), 1);
        // A longer retry never postpones the regular interval.
        let now = h.now;
        h.policy
            .handle_bootstrap_failed(Duration::from_secs(600), now);
        let actions = h.advance(64.0);
        assert_eq!(count(&actions, |a| *a == Action::RequestBootstrapPeer), 1);
    }

    #[test]
    fn partitioned_node_asks_the_registry_after_a_grace() {
        let mut h = with_distant(100, 5, config(2, 10));
        let now = h.now;
        h.policy.set_registry(Some(1), now);
        let actions = h.advance(1.0);
        h.accept_connects(&actions);
        let _ = h.actions();
        // Registry (1) not among our routes anymore.
        h.routes(&[(2, None), (3, None)]);
        let early = h.advance(30.0);
        assert!(!early.contains(&Action::RequestBootstrapPeer));
        let later = h.advance(70.0);
        assert!(later.contains(&Action::RequestBootstrapPeer));
        // The bootstrap peer is connected even though we have enough.
        let now = h.now;
        h.policy.handle_bootstrap_peer(42, addr(42), now);
        assert_eq!(connects(&h.actions()), vec![42]);
    }

    #[test]
    fn live_parameter_changes() {
        let mut h = with_distant(100, 20, config(2, 3));
        let actions = h.advance(1.0);
        h.accept_connects(&actions);
        let now = h.now;
        for p in 200..203 {
            assert!(h.policy.handle_incoming(p, now));
            h.policy.handle_tunnel_up(p, Direction::Incoming, now);
        }
        let _ = h.actions();
        // More clients: opened at once.
        h.policy.set_config(config(4, 3), now);
        assert_eq!(connects(&h.actions()).len(), 2);
        // Fewer accepted: surplus incoming closed at once.
        h.policy.set_config(config(4, 1), now);
        let closed = count(&h.actions(), |a| {
            matches!(
                a,
                Action::Close {
                    direction: Direction::Incoming,
                    ..
                }
            )
        });
        assert_eq!(closed, 2);
        assert_eq!(h.policy.incoming_count(), 1);
        // Fewer clients: attempts still connecting are dropped.
        h.policy.set_config(config(2, 1), now);
        assert_eq!(h.policy.outgoing_count(), 2);
        // Refresh period change reschedules.
        let mut cfg = config(2, 1);
        cfg.tunnel_refresh = Duration::from_secs(5);
        h.policy.set_config(cfg, now);
        assert!(h.policy.poll_timeout().unwrap() <= now + Duration::from_secs(6));
    }

    #[test]
    fn acceptor_side_of_a_retirement() {
        let mut h = Harness::new(100, config(0, 5));
        let now = h.now;
        assert!(
            !h.policy.handle_retirement_request(7, now),
            "no such tunnel"
        );
        assert!(h.policy.handle_incoming(7, now));
        h.policy.handle_tunnel_up(7, Direction::Incoming, now);
        assert!(h.policy.handle_retirement_request(7, now));
        assert_eq!(h.actions(), vec![Action::RaiseCost { peer: 7 }]);
        // The peer never closes: the cost is restored after the grace.
        let actions = h.advance(31.0);
        assert!(actions.contains(&Action::RestoreCost { peer: 7 }));
        // Persistent neighbours are never retired.
        let now = h.now;
        h.policy.add_neighbour(7, now);
        assert!(!h.policy.handle_retirement_request(7, now));
    }

    #[test]
    fn same_seed_same_decisions() {
        let run = |seed: u64| {
            let t0 = Instant::now();
            let mut p: Policy<u32> = Policy::new(0, config(5, 5), StdRng::seed_from_u64(seed), t0);
            p.handle_routes((1..500).map(|d| (d, Via::Other)), t0);
            p.handle_timeout(t0 + Duration::from_secs(2));
            std::iter::from_fn(|| p.poll_action()).collect::<Vec<_>>()
        };
        assert_eq!(run(1), run(1));
        assert_ne!(run(1), run(2));
    }

    #[derive(Clone, Debug)]
    enum Op {
        Route(u32, Option<Option<u32>>),
        Incoming(u32),
        Up(u32, bool),
        Down(u32, bool),
        ConnectFailed(u32),
        Addresses(u32),
        RetireReply(u32, u32, bool),
        RetireRequest(u32),
        Advance(u16),
        Config(usize, usize, u8),
        Reachable(bool),
        Neighbour(u32, bool),
        Bootstrap(u32),
    }

    fn arb_op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        let peer = 0u32..12;
        prop_oneof![
            (
                peer.clone(),
                proptest::option::of(proptest::option::of(0u32..12))
            )
                .prop_map(|(d, v)| Op::Route(d, v)),
            peer.clone().prop_map(Op::Incoming),
            (peer.clone(), any::<bool>()).prop_map(|(p, o)| Op::Up(p, o)),
            (peer.clone(), any::<bool>()).prop_map(|(p, o)| Op::Down(p, o)),
            peer.clone().prop_map(Op::ConnectFailed),
            peer.clone().prop_map(Op::Addresses),
            (peer.clone(), 0u32..4, any::<bool>()).prop_map(|(p, i, a)| Op::RetireReply(p, i, a)),
            peer.clone().prop_map(Op::RetireRequest),
            (0u16..400).prop_map(Op::Advance),
            (0usize..6, 0usize..6, 0u8..3).prop_map(|(c, m, r)| Op::Config(c, m, r)),
            any::<bool>().prop_map(Op::Reachable),
            (peer.clone(), any::<bool>()).prop_map(|(p, a)| Op::Neighbour(p, a)),
            peer.prop_map(Op::Bootstrap),
        ]
    }

    proptest::proptest! {
        /// Whatever the order of inputs: no tunnel to ourselves, never more
        /// incoming tunnels than allowed, and after handle_timeout the next
        /// deadline is in the future (a driver never spins).
        #[test]
        fn invariants_hold_under_random_inputs(ops in proptest::collection::vec(arb_op(), 1..120)) {
            let me = 5;
            let mut h = Harness::new(me, config(3, 3));
            let dir = |o: bool| if o { Direction::Outgoing } else { Direction::Incoming };
            let mut t = 0.0;
            for op in ops {
                let now = h.now;
                match op {
                    Op::Route(d, v) => h.policy.handle_route(d, v.map(|v| v.map_or(Via::Other, Via::Tunnel)), now),
                    Op::Incoming(p) => {
                        let _ = h.policy.handle_incoming(p, now);
                    }
                    Op::Up(p, o) => h.policy.handle_tunnel_up(p, dir(o), now),
                    Op::Down(p, o) => h.policy.handle_tunnel_down(p, dir(o), now),
                    Op::ConnectFailed(p) => h.policy.handle_connect_failed(p, now),
                    Op::Addresses(p) => h.policy.handle_addresses(p, addr(p), now),
                    Op::RetireReply(p, i, a) => h.policy.handle_retirement_reply(p, i, a, now),
                    Op::RetireRequest(p) => {
                        let _ = h.policy.handle_retirement_request(p, now);
                    }
                    Op::Advance(ds) => {
                        t += f64::from(ds);
                        let _ = h.advance(t);
                    }
                    Op::Config(c, m, r) => {
                        let mut cfg = config(c, m);
                        cfg.tunnel_refresh = Duration::from_secs(u64::from(r) * 20);
                        h.policy.set_config(cfg, now);
                    }
                    Op::Reachable(b) => h.policy.set_reachable(b, now),
                    Op::Neighbour(p, add) => {
                        if add {
                            h.policy.add_neighbour(p, now);
                        } else {
                            h.policy.remove_neighbour(p, now);
                        }
                    }
                    Op::Bootstrap(p) => h.policy.handle_bootstrap_peer(p, addr(p), now),
                }
                let _ = h.actions();
                proptest::prop_assert!(h.policy.tunnels().all(|t| t.peer != me));
                proptest::prop_assert!(h.policy.incoming_count() <= h.policy.config().max_clients);
                let now = h.now;
                h.policy.handle_timeout(now);
                let _ = h.actions();
                if let Some(next) = h.policy.poll_timeout() {
                    proptest::prop_assert!(next > now, "deadline not in the future");
                }
            }
        }
    }

    /// Many policies joined by an instant, in-memory transport and a toy
    /// shortest-path router: the graph they build stays connected and each
    /// node keeps its client_count, through refreshes and a crash.
    struct Mesh {
        nodes: Vec<Policy<u32>>,
        /// Tunnels as (initiator, acceptor).
        edges: BTreeSet<(u32, u32)>,
        /// (node, peer) whose cost `node` raised.
        raised: BTreeSet<(u32, u32)>,
        rng: StdRng,
        now: Instant,
        retirements: usize,
        /// Whether routes must be recomputed.
        dirty: bool,
    }

    enum Msg {
        Up(u32, Direction),
        Down(u32, Direction),
        ConnectFailed(u32),
        Addresses(u32),
        Bootstrap(u32),
        RetireRequest(u32, u32),
        RetireReply(u32, u32, bool),
    }

    impl Mesh {
        fn new(n: u32, cfg: PolicyConfig, seed: u64) -> Self {
            let now = Instant::now();
            let mut nodes = Vec::new();
            for i in 0..n {
                let mut p = Policy::new(
                    i,
                    cfg.clone(),
                    StdRng::seed_from_u64(seed ^ u64::from(i)),
                    now,
                );
                p.set_registry(Some(0), now);
                nodes.push(p);
            }
            Self {
                nodes,
                edges: BTreeSet::new(),
                raised: BTreeSet::new(),
                rng: StdRng::seed_from_u64(seed),
                now,
                retirements: 0,
                dirty: true,
            }
        }

        fn adjacency(&self) -> Vec<Vec<u32>> {
            let mut adj = vec![Vec::new(); self.nodes.len()];
            for &(a, b) in &self.edges {
                adj[a as usize].push(b);
                adj[b as usize].push(a);
            }
            adj
        }

        fn connected(&self) -> bool {
            let adj = self.adjacency();
            let mut seen = vec![false; adj.len()];
            let mut queue = VecDeque::from([0u32]);
            seen[0] = true;
            while let Some(n) = queue.pop_front() {
                for &m in &adj[n as usize] {
                    if !seen[m as usize] {
                        seen[m as usize] = true;
                        queue.push_back(m);
                    }
                }
            }
            seen.iter().all(|&s| s)
        }

        /// Dijkstra from each node; a raised link costs 100 instead of 1.
        fn push_routes(&mut self) {
            if !std::mem::take(&mut self.dirty) {
                return;
            }
            let adj = self.adjacency();
            let n = adj.len();
            let mut raised = vec![false; n * n];
            for &(a, b) in &self.raised {
                raised[a as usize * n + b as usize] = true;
            }
            for src in 0..n {
                let mut dist = vec![u32::MAX; n];
                let mut first = vec![u32::MAX; n];
                let mut heap = std::collections::BinaryHeap::new();
                dist[src] = 0;
                heap.push(std::cmp::Reverse((0u32, src as u32, u32::MAX)));
                while let Some(std::cmp::Reverse((d, u, hop))) = heap.pop() {
                    if d > dist[u as usize] || (first[u as usize] != u32::MAX && u as usize != src)
                    {
                        continue;
                    }
                    first[u as usize] = hop;
                    for &v in &adj[u as usize] {
                        let w = if raised[u as usize * n + v as usize] {
                            100
                        } else {
                            1
                        };
                        let nd = d + w;
                        if nd < dist[v as usize] {
                            dist[v as usize] = nd;
                            let h = if u as usize == src { v } else { hop };
                            heap.push(std::cmp::Reverse((nd, v, h)));
                        }
                    }
                }
                let routes: Vec<(u32, Via<u32>)> = (0..n as u32)
                    .filter(|&d| d as usize != src && dist[d as usize] != u32::MAX)
                    .map(|d| (d, Via::Tunnel(first[d as usize])))
                    .collect();
                let now = self.now;
                self.nodes[src].handle_routes(routes, now);
            }
        }

        fn close(
            &mut self,
            me: u32,
            peer: u32,
            direction: Direction,
            inbox: &mut VecDeque<(u32, Msg)>,
        ) {
            let edge = match direction {
                Direction::Outgoing => (me, peer),
                Direction::Incoming => (peer, me),
            };
            // A closed attempt is never reported up (the driver's contract).
            let theirs_dir = match direction {
                Direction::Outgoing => Direction::Incoming,
                Direction::Incoming => Direction::Outgoing,
            };
            inbox.retain(|(to, msg)| {
                !matches!(msg, Msg::Up(p, d) if (*to, *p, *d) == (me, peer, direction) || (*to, *p, *d) == (peer, me, theirs_dir))
            });
            if self.edges.remove(&edge) {
                self.dirty = true;
                self.raised.remove(&(me, peer));
                self.raised.remove(&(peer, me));
                let theirs = match direction {
                    Direction::Outgoing => Direction::Incoming,
                    Direction::Incoming => Direction::Outgoing,
                };
                inbox.push_back((peer, Msg::Down(me, theirs)));
            }
        }

        /// Runs every node's actions and the messages they cause.
        fn settle(&mut self) {
            let mut inbox: VecDeque<(u32, Msg)> = VecDeque::new();
            loop {
                for i in 0..self.nodes.len() as u32 {
                    while let Some(a) = self.nodes[i as usize].poll_action() {
                        match a {
                            Action::Connect { peer, .. } => {
                                let now = self.now;
                                if self.nodes[peer as usize].handle_incoming(i, now) {
                                    self.edges.insert((i, peer));
                                    self.dirty = true;
                                    inbox.push_back((i, Msg::Up(peer, Direction::Outgoing)));
                                    inbox.push_back((peer, Msg::Up(i, Direction::Incoming)));
                                } else {
                                    inbox.push_back((i, Msg::ConnectFailed(peer)));
                                }
                            }
                            Action::Close { peer, direction } => {
                                self.close(i, peer, direction, &mut inbox);
                            }
                            Action::RequestAddresses { peer } => {
                                inbox.push_back((i, Msg::Addresses(peer)));
                            }
                            Action::RequestBootstrapPeer => {
                                let n = self.nodes.len() as u32;
                                let peer = self.rng.gen_range(0..n);
                                inbox.push_back((i, Msg::Bootstrap(peer)));
                            }
                            Action::RaiseCost { peer } => {
                                self.dirty |= self.raised.insert((i, peer));
                            }
                            Action::RestoreCost { peer } => {
                                self.dirty |= self.raised.remove(&(i, peer));
                            }
                            Action::RequestRetirement { peer, id } => {
                                inbox.push_back((peer, Msg::RetireRequest(i, id)));
                            }
                            Action::PeerFailed { .. } | Action::PeerSucceeded { .. } => {}
                        }
                    }
                }
                if inbox.is_empty() {
                    break;
                }
                self.push_routes();
                while let Some((to, msg)) = inbox.pop_front() {
                    let now = self.now;
                    let node = &mut self.nodes[to as usize];
                    match msg {
                        Msg::Up(peer, d) => node.handle_tunnel_up(peer, d, now),
                        Msg::Down(peer, d) => node.handle_tunnel_down(peer, d, now),
                        Msg::ConnectFailed(peer) => node.handle_connect_failed(peer, now),
                        Msg::Addresses(peer) => node.handle_addresses(peer, addr(peer), now),
                        Msg::Bootstrap(peer) => node.handle_bootstrap_peer(peer, addr(peer), now),
                        Msg::RetireRequest(from, id) => {
                            let ok = node.handle_retirement_request(from, now);
                            inbox.push_back((from, Msg::RetireReply(to, id, ok)));
                        }
                        Msg::RetireReply(from, id, ok) => {
                            if ok {
                                self.retirements += 1;
                            }
                            node.handle_retirement_reply(from, id, ok, now);
                        }
                    }
                }
            }
            self.push_routes();
        }

        fn step(&mut self, dt: Duration) {
            self.now += dt;
            let now = self.now;
            for node in &mut self.nodes {
                if node.poll_timeout().is_some_and(|t| t <= now) {
                    node.handle_timeout(now);
                }
            }
            self.settle();
        }

        fn crash(&mut self, victim: u32) {
            let mut inbox = VecDeque::new();
            let edges: Vec<_> = self
                .edges
                .iter()
                .copied()
                .filter(|&(a, b)| a == victim || b == victim)
                .collect();
            for (a, b) in edges {
                let (other, d) = if a == victim {
                    (b, Direction::Incoming)
                } else {
                    (a, Direction::Outgoing)
                };
                self.edges.remove(&(a, b));
                self.dirty = true;
                inbox.push_back((other, Msg::Down(victim, d)));
            }
            let now = self.now;
            for (to, msg) in inbox {
                if let Msg::Down(peer, d) = msg {
                    self.nodes[to as usize].handle_tunnel_down(peer, d, now);
                }
            }
            let cfg = self.nodes[victim as usize].config().clone();
            let mut fresh = Policy::new(victim, cfg, StdRng::seed_from_u64(999), now);
            fresh.set_registry(Some(0), now);
            self.nodes[victim as usize] = fresh;
            self.settle();
        }
    }

    #[test]
    fn mesh_stays_connected_and_keeps_client_count() {
        let mut cfg = config(3, 8);
        cfg.tunnel_refresh = Duration::from_secs(20);
        cfg.retry_min = Duration::from_secs(5);
        let mut mesh = Mesh::new(40, cfg, 42);
        let step = Duration::from_millis(500);
        for _ in 0..240 {
            mesh.step(step);
        }
        assert!(mesh.connected(), "bootstrapped mesh is connected");
        for node in &mesh.nodes {
            assert_eq!(node.outgoing_count(), 3, "node {}", node.me());
            assert!(node.incoming_count() <= 8);
        }
        // Steady state with refreshes: connected at every sample, counts
        // kept, the graph changes.
        let before = mesh.edges.clone();
        mesh.retirements = 0;
        for i in 0..600 {
            mesh.step(Duration::from_secs(1));
            assert!(mesh.connected(), "connected at sample {i}");
        }
        assert!(mesh.retirements >= 40, "retirements: {}", mesh.retirements);
        assert_ne!(before, mesh.edges);
        for node in &mesh.nodes {
            let out = node.outgoing_count();
            assert!((2..=3).contains(&out), "node {} has {out}", node.me());
        }
        // A crash: its peers replace their tunnels, the mesh heals.
        mesh.crash(17);
        for _ in 0..120 {
            mesh.step(step);
        }
        assert!(mesh.connected());
        let full = mesh
            .nodes
            .iter()
            .filter(|n| n.outgoing_count() == 3)
            .count();
        assert!(full >= 38, "{full} nodes with 3 outgoing tunnels");
    }

    #[test]
    fn mesh_runs_are_deterministic() {
        let run = || {
            let mut mesh = Mesh::new(20, config(2, 6), 5);
            for _ in 0..200 {
                mesh.step(Duration::from_millis(500));
            }
            mesh.edges
        };
        let a: BTreeMap<_, _> = run().into_iter().map(|e| (e, ())).collect();
        let b: BTreeMap<_, _> = run().into_iter().map(|e| (e, ())).collect();
        assert_eq!(a, b);
    }

    #[test]
    fn connect_progress_restarts_the_deadline_and_admission_is_predicted() {
        let mut h = Harness::new(1, config(1, 1));
        let now = h.now;
        h.policy.handle_bootstrap_peer(42, addr(42), now);
        assert_eq!(connects(&h.actions()), [42]);
        // 25 s later the first address failed and the next one is tried:
        // the attempt is not given up at 30 s, only 30 s after the progress.
        h.advance(25.0);
        let now = h.now;
        h.policy.handle_connect_progress(42, now);
        let closed = |a: &[Action<u32>]| {
            a.iter()
                .any(|a| matches!(a, Action::Close { peer: 42, .. }))
        };
        assert!(!closed(&h.advance(50.0)));
        assert!(closed(&h.advance(56.0)));
        // Admission: one incoming slot.
        assert!(h.policy.would_accept(7));
        assert!(!h.policy.would_accept(1));
        let now = h.now;
        assert!(h.policy.handle_incoming(7, now));
        assert!(h.policy.would_accept(7));
        assert!(!h.policy.would_accept(8));
    }
}
