//! UPnP IGD port mapping (`--ip upnp`, and the default without `--ip`).
//!
//! Two layers, as everywhere in the node:
//!
//! - [`Mapper`] is the sans-I/O core: which (port, protocol) pairs to map
//!   ([`wanted`]), which random external port to ask for and what to do on a
//!   conflict, when to refresh a lease, when to look for the gateway again,
//!   and what to report ([`Mapper::announced`], [`Mapper::status`]). It
//!   emits one [`Action`] at a time and is told the outcome.
//! - [`start`] is the tokio shell: it discovers the Internet Gateway Device
//!   with igd-next (bounded by a timeout), performs the actions, publishes
//!   the [`UpnpStatus`] on a watch channel, and removes every mapping when
//!   [`UpnpHandle::stop`] is called.
//!
//! No gateway is not an error: the status says so (`no gateway`) and the
//! mapper looks again every [`MapperConfig::rediscover`].

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use rand::{Rng, RngCore};
use serde::{Deserialize, Serialize};
use tokio::sync::{oneshot, watch};

use crate::node::control::AnnouncedAddress;
use crate::node::{Address, Proto};

/// The UPnP-level protocol of a mapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum MapProto {
    /// UDP (our `udp` and `quic` transports).
    Udp,
    /// TCP (our `tcp` transport).
    Tcp,
}

impl MapProto {
    /// The UPnP protocol that carries `proto`, or `None` for a protocol this
    /// version does not know.
    pub fn of(proto: Proto) -> Option<Self> {
        match proto {
            Proto::Udp | Proto::Quic => Some(Self::Udp),
            Proto::Tcp => Some(Self::Tcp),
            Proto::Unknown(_) => None,
        }
    }
}

/// One port to map: a local listening port and the transport behind it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Wanted {
    /// The port our transport listens on.
    pub local_port: u16,
    /// The transport we announce for it.
    pub proto: Proto,
}

impl Wanted {
    /// The UPnP protocol of the mapping.
    pub fn map_proto(&self) -> MapProto {
        // `wanted` keeps only protocols `MapProto::of` knows.
        MapProto::of(self.proto).unwrap_or(MapProto::Udp)
    }
}

/// What to map for the announced `--pp` entries: one mapping per (port,
/// transport), in the given order, skipping unknown transports, port 0 and
/// duplicates (udp and quic on the same port need a single UDP mapping;
/// the first entry wins).
pub fn wanted(pp: &[(u16, Proto)]) -> Vec<Wanted> {
    let mut out: Vec<Wanted> = Vec::new();
    for &(port, proto) in pp {
        let Some(map) = MapProto::of(proto) else {
            continue;
        };
        if port == 0
            || out
                .iter()
                .any(|w| w.local_port == port && w.map_proto() == map)
        {
            continue;
        }
        out.push(Wanted {
            local_port: port,
            proto,
        });
    }
    out
}

/// Timers and limits of the [`Mapper`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapperConfig {
    /// Lease asked for each mapping; refreshed at half of it.
    pub lease: Duration,
    /// How long to wait before looking for a gateway again when none
    /// answered (or after it was lost).
    pub rediscover: Duration,
    /// How long to wait before trying again a mapping that failed.
    pub retry: Duration,
    /// Random external ports tried in a row when the gateway says the port
    /// is taken.
    pub conflict_attempts: u8,
    /// Consecutive failed requests after which the gateway is considered
    /// lost (and looked for again).
    pub max_failures: u8,
    /// Lowest external port asked for (the highest is 65535).
    pub min_external_port: u16,
}

impl Default for MapperConfig {
    fn default() -> Self {
        Self {
            lease: Duration::from_secs(3600),
            rediscover: Duration::from_secs(300),
            retry: Duration::from_secs(60),
            conflict_attempts: 16,
            max_failures: 3,
            min_external_port: 1024,
        }
    }
}

/// The next request the shell must perform, then report with the matching
/// `handle_*` method.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Look for a gateway; answer with [`Mapper::handle_discovered`].
    Discover,
    /// Ask the gateway its external IP; answer with
    /// [`Mapper::handle_external_ip`].
    ExternalIp,
    /// Add (or renew) a mapping from `external_port` to our `local_port`;
    /// answer with [`Mapper::handle_mapped`].
    Map {
        /// The UPnP protocol.
        proto: MapProto,
        /// Our listening port.
        local_port: u16,
        /// The external port asked for.
        external_port: u16,
        /// Lease in seconds (0: permanent).
        lease_secs: u32,
    },
    /// Remove a mapping; answer with [`Mapper::handle_unmapped`].
    Unmap {
        /// The UPnP protocol.
        proto: MapProto,
        /// The external port to free.
        external_port: u16,
    },
}

/// Why the gateway refused an [`Action::Map`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MapFailure {
    /// The external port is already mapped to someone else.
    Conflict,
    /// The gateway wants the external port equal to the internal one.
    SamePortRequired,
    /// The gateway supports only permanent leases.
    PermanentOnly,
    /// Any other failure (refused, timed out, unreachable gateway).
    Other(String),
}

/// The mapper's state for `re6st status`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpnpStatus {
    /// `discovering`, `no gateway`, `ready`, `stopping` or `stopped`.
    pub state: String,
    /// The gateway's control address, once found.
    pub gateway: Option<SocketAddr>,
    /// The gateway's external IP, once known.
    pub external_ip: Option<IpAddr>,
    /// One entry per wanted mapping.
    pub mappings: Vec<MappingStatus>,
}

impl UpnpStatus {
    /// The addresses to announce: the external IP with each mapped
    /// external port and its transport (the same as [`Mapper::addresses`]).
    pub fn addresses(&self) -> Vec<Address> {
        let Some(ip) = self.external_ip else {
            return Vec::new();
        };
        if self.state != "ready" {
            return Vec::new();
        }
        self.mappings
            .iter()
            .filter_map(|m| {
                Some(Address {
                    ip,
                    port: m.external_port?,
                    proto: m.proto.parse().ok()?,
                })
            })
            .collect()
    }

    /// [`UpnpStatus::addresses`] as `re6st status` shows them (source
    /// `upnp`).
    pub fn announced(&self) -> Vec<AnnouncedAddress> {
        announced(self.addresses())
    }
}

fn announced(addresses: Vec<Address>) -> Vec<AnnouncedAddress> {
    addresses
        .into_iter()
        .map(|a| AnnouncedAddress {
            address: a.to_string(),
            source: "upnp".to_owned(),
        })
        .collect()
}

/// One mapping in [`UpnpStatus`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MappingStatus {
    /// Our transport (`udp`, `tcp`, `quic`).
    pub proto: String,
    /// Our listening port.
    pub local_port: u16,
    /// The mapped external port, while mapped.
    pub external_port: Option<u16>,
    /// `unmapped`, `mapped` or `failed: REASON`.
    pub state: String,
}

/// The sans-I/O UPnP port mapper. See the module documentation.
#[derive(Debug)]
pub struct Mapper<R: RngCore> {
    config: MapperConfig,
    entries: Vec<Entry>,
    rng: R,
    phase: Phase,
    gateway: Option<SocketAddr>,
    external_ip: Option<IpAddr>,
    /// When to ask the external IP again.
    ip_due: Option<Instant>,
    /// A request is out; nothing else is emitted until it is answered.
    in_flight: Option<InFlight>,
    failures: u8,
    permanent_only: bool,
}

#[derive(Debug)]
struct Entry {
    wanted: Wanted,
    state: EntryState,
}

#[derive(Debug)]
enum EntryState {
    /// Not mapped; try at `due` (a fresh random port, or the local one).
    Unmapped {
        due: Instant,
        attempts: u8,
        last_failure: Option<String>,
        same_port: bool,
    },
    /// Mapped on `external_port`; renew at `refresh`.
    Mapped {
        external_port: u16,
        refresh: Instant,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Look for the gateway at the given time.
    Discover(Instant),
    /// None answered; look again at the given time.
    NoGateway(Instant),
    Ready,
    Stopping,
    Stopped,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum InFlight {
    Discover,
    ExternalIp,
    Map { index: usize, external_port: u16 },
    Unmap { index: usize },
}

impl<R: RngCore> Mapper<R> {
    /// A mapper for `wanted` (see [`wanted`]) that looks for the gateway at
    /// once (`now`).
    pub fn new(config: MapperConfig, wanted: Vec<Wanted>, rng: R, now: Instant) -> Self {
        let entries = wanted
            .into_iter()
            .map(|wanted| Entry {
                wanted,
                state: EntryState::Unmapped {
                    due: now,
                    attempts: 0,
                    last_failure: None,
                    same_port: false,
                },
            })
            .collect();
        Self {
            config,
            entries,
            rng,
            phase: Phase::Discover(now),
            gateway: None,
            external_ip: None,
            ip_due: None,
            in_flight: None,
            failures: 0,
            permanent_only: false,
        }
    }

    /// The gateway's external IP, once known.
    pub fn external_ip(&self) -> Option<IpAddr> {
        self.external_ip
    }

    /// Whether [`Mapper::stop`] was called and every mapping is removed.
    pub fn is_stopped(&self) -> bool {
        self.phase == Phase::Stopped
    }

    /// The addresses to announce: the external IP with each mapped external
    /// port and its transport. Empty until the external IP is known.
    pub fn addresses(&self) -> Vec<Address> {
        let Some(ip) = self.external_ip else {
            return Vec::new();
        };
        if !matches!(self.phase, Phase::Ready) {
            return Vec::new();
        }
        self.entries
            .iter()
            .filter_map(|e| match e.state {
                EntryState::Mapped { external_port, .. } => Some(Address {
                    ip,
                    port: external_port,
                    proto: e.wanted.proto,
                }),
                EntryState::Unmapped { .. } => None,
            })
            .collect()
    }

    /// [`Mapper::addresses`] as `re6st status` shows them (source `upnp`).
    pub fn announced(&self) -> Vec<AnnouncedAddress> {
        announced(self.addresses())
    }

    /// The state for `re6st status`.
    pub fn status(&self) -> UpnpStatus {
        let state = match self.phase {
            Phase::Discover(_) => "discovering",
            Phase::NoGateway(_) => "no gateway",
            Phase::Ready => "ready",
            Phase::Stopping => "stopping",
            Phase::Stopped => "stopped",
        };
        UpnpStatus {
            state: state.to_owned(),
            gateway: self.gateway,
            external_ip: self.external_ip,
            mappings: self
                .entries
                .iter()
                .map(|e| {
                    let (external_port, state) = match &e.state {
                        EntryState::Mapped { external_port, .. } => {
                            (Some(*external_port), "mapped".to_owned())
                        }
                        EntryState::Unmapped {
                            last_failure: Some(why),
                            ..
                        } => (None, format!("failed: {why}")),
                        EntryState::Unmapped { .. } => (None, "unmapped".to_owned()),
                    };
                    MappingStatus {
                        proto: e.wanted.proto.to_string(),
                        local_port: e.wanted.local_port,
                        external_port,
                        state,
                    }
                })
                .collect(),
        }
    }

    /// Command: remove every mapping, then stop. [`Mapper::poll_action`]
    /// yields the [`Action::Unmap`]s; [`Mapper::is_stopped`] turns true
    /// when they are done.
    pub fn stop(&mut self) {
        self.phase = Phase::Stopping;
        self.check_stopped();
    }

    /// The next request to perform, if one is due at `now` and none is
    /// out.
    pub fn poll_action(&mut self, now: Instant) -> Option<Action> {
        if self.in_flight.is_some() {
            return None;
        }
        let (action, flight) = self.next_action(now)?;
        self.in_flight = Some(flight);
        Some(action)
    }

    fn next_action(&mut self, now: Instant) -> Option<(Action, InFlight)> {
        match self.phase {
            Phase::Stopped => None,
            Phase::Stopping => {
                let (index, external_port) =
                    self.entries
                        .iter()
                        .enumerate()
                        .find_map(|(i, e)| match e.state {
                            EntryState::Mapped { external_port, .. } => Some((i, external_port)),
                            EntryState::Unmapped { .. } => None,
                        })?;
                let proto = self.entries[index].wanted.map_proto();
                Some((
                    Action::Unmap {
                        proto,
                        external_port,
                    },
                    InFlight::Unmap { index },
                ))
            }
            Phase::Discover(at) | Phase::NoGateway(at) => {
                (at <= now).then_some((Action::Discover, InFlight::Discover))
            }
            Phase::Ready => {
                if self.ip_due.is_none_or(|t| t <= now) {
                    return Some((Action::ExternalIp, InFlight::ExternalIp));
                }
                let lease_secs = if self.permanent_only {
                    0
                } else {
                    u32::try_from(self.config.lease.as_secs()).unwrap_or(u32::MAX)
                };
                let min = self.config.min_external_port.max(1);
                for index in 0..self.entries.len() {
                    let entry = &self.entries[index];
                    let external_port = match entry.state {
                        EntryState::Mapped {
                            external_port,
                            refresh,
                        } if refresh <= now => external_port,
                        EntryState::Unmapped { due, same_port, .. } if due <= now => {
                            if same_port {
                                entry.wanted.local_port
                            } else {
                                self.rng.gen_range(min..=u16::MAX)
                            }
                        }
                        _ => continue,
                    };
                    let entry = &self.entries[index];
                    return Some((
                        Action::Map {
                            proto: entry.wanted.map_proto(),
                            local_port: entry.wanted.local_port,
                            external_port,
                            lease_secs,
                        },
                        InFlight::Map {
                            index,
                            external_port,
                        },
                    ));
                }
                None
            }
        }
    }

    /// The discovery ended: `gateway` is the device's control address, or
    /// `None` when no gateway answered in time.
    pub fn handle_discovered(&mut self, gateway: Option<SocketAddr>, now: Instant) {
        if self.in_flight != Some(InFlight::Discover) {
            return;
        }
        self.in_flight = None;
        if matches!(self.phase, Phase::Stopping | Phase::Stopped) {
            self.check_stopped();
            return;
        }
        self.failures = 0;
        match gateway {
            Some(addr) => {
                self.gateway = Some(addr);
                self.phase = Phase::Ready;
                self.ip_due = None;
                for e in &mut self.entries {
                    e.state = EntryState::Unmapped {
                        due: now,
                        attempts: 0,
                        last_failure: None,
                        same_port: false,
                    };
                }
            }
            None => {
                self.gateway = None;
                self.external_ip = None;
                self.phase = Phase::NoGateway(now + self.config.rediscover);
            }
        }
    }

    /// The answer to [`Action::ExternalIp`] (`None`: the request failed).
    pub fn handle_external_ip(&mut self, ip: Option<IpAddr>, now: Instant) {
        if self.in_flight != Some(InFlight::ExternalIp) {
            return;
        }
        self.in_flight = None;
        if self.phase != Phase::Ready {
            self.check_stopped();
            return;
        }
        match ip {
            Some(ip) if !ip.is_unspecified() => {
                self.external_ip = Some(ip);
                self.failures = 0;
                self.ip_due = Some(now + self.refresh_period());
            }
            _ => {
                self.ip_due = Some(now + self.config.retry);
                self.failed(now);
            }
        }
    }

    /// The answer to [`Action::Map`].
    pub fn handle_mapped(&mut self, result: Result<(), MapFailure>, now: Instant) {
        let Some(InFlight::Map {
            index,
            external_port,
        }) = self.in_flight
        else {
            return;
        };
        self.in_flight = None;
        if self.phase != Phase::Ready {
            // Stopping: the shell must still remove what it just mapped.
            if result.is_ok() && self.phase == Phase::Stopping {
                self.entries[index].state = EntryState::Mapped {
                    external_port,
                    refresh: now,
                };
            }
            self.check_stopped();
            return;
        }
        let refresh = now + self.refresh_period();
        let retry = now + self.config.retry;
        let attempts = match self.entries[index].state {
            EntryState::Unmapped { attempts, .. } => attempts,
            EntryState::Mapped { .. } => 0,
        };
        let entry = &mut self.entries[index];
        entry.state = match result {
            Ok(()) => {
                self.failures = 0;
                EntryState::Mapped {
                    external_port,
                    refresh,
                }
            }
            Err(MapFailure::Conflict) if attempts + 1 < self.config.conflict_attempts => {
                EntryState::Unmapped {
                    due: now,
                    attempts: attempts + 1,
                    last_failure: Some("external port taken".to_owned()),
                    same_port: false,
                }
            }
            Err(MapFailure::Conflict) => EntryState::Unmapped {
                due: retry,
                attempts: 0,
                last_failure: Some("every external port tried was taken".to_owned()),
                same_port: false,
            },
            Err(MapFailure::SamePortRequired) => EntryState::Unmapped {
                // Ask once for the local port itself, then random ones again.
                due: now,
                attempts: attempts + 1,
                last_failure: Some("gateway requires the same port".to_owned()),
                same_port: external_port != entry.wanted.local_port,
            },
            Err(MapFailure::PermanentOnly) => {
                self.permanent_only = true;
                EntryState::Unmapped {
                    due: now,
                    attempts,
                    last_failure: Some("gateway supports only permanent leases".to_owned()),
                    same_port: external_port == entry.wanted.local_port,
                }
            }
            Err(MapFailure::Other(why)) => {
                let state = EntryState::Unmapped {
                    due: retry,
                    attempts: 0,
                    last_failure: Some(why),
                    same_port: false,
                };
                self.entries[index].state = state;
                self.failed(now);
                return;
            }
        };
    }

    /// The answer to [`Action::Unmap`] (success or not: the mapping is
    /// forgotten either way, its lease ends it at worst).
    pub fn handle_unmapped(&mut self, now: Instant) {
        let Some(InFlight::Unmap { index }) = self.in_flight else {
            return;
        };
        self.in_flight = None;
        self.entries[index].state = EntryState::Unmapped {
            due: now,
            attempts: 0,
            last_failure: None,
            same_port: false,
        };
        self.check_stopped();
    }

    /// The next time [`Mapper::poll_action`] may have something to do, when
    /// no request is out.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.in_flight.is_some() {
            return None;
        }
        match self.phase {
            Phase::Stopped => None,
            Phase::Stopping => None,
            Phase::Discover(at) | Phase::NoGateway(at) => Some(at),
            Phase::Ready => {
                let entries = self.entries.iter().map(|e| match e.state {
                    EntryState::Mapped { refresh, .. } => refresh,
                    EntryState::Unmapped { due, .. } => due,
                });
                entries.chain(self.ip_due).min()
            }
        }
    }

    fn refresh_period(&self) -> Duration {
        (self.config.lease / 2).max(Duration::from_secs(1))
    }

    /// One more failed request; too many in a row mean the gateway is gone.
    fn failed(&mut self, now: Instant) {
        self.failures = self.failures.saturating_add(1);
        if self.failures >= self.config.max_failures && self.phase == Phase::Ready {
            self.failures = 0;
            self.external_ip = None;
            self.phase = Phase::Discover(now + self.config.retry);
            for e in &mut self.entries {
                e.state = EntryState::Unmapped {
                    due: now,
                    attempts: 0,
                    last_failure: Some("gateway lost".to_owned()),
                    same_port: false,
                };
            }
        }
    }

    fn check_stopped(&mut self) {
        if self.phase == Phase::Stopping
            && self.in_flight.is_none()
            && !self
                .entries
                .iter()
                .any(|e| matches!(e.state, EntryState::Mapped { .. }))
        {
            self.phase = Phase::Stopped;
        }
    }
}

/// Settings of the tokio shell around the [`Mapper`].
#[derive(Clone, Debug)]
pub struct UpnpConfig {
    /// The mapper's timers.
    pub mapper: MapperConfig,
    /// How long a gateway search may take.
    pub search_timeout: Duration,
    /// How long one request to the gateway may take.
    pub request_timeout: Duration,
    /// The description the mappings carry on the gateway.
    pub description: String,
}

impl Default for UpnpConfig {
    fn default() -> Self {
        Self {
            mapper: MapperConfig::default(),
            search_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
            description: "re6st".to_owned(),
        }
    }
}

/// The running mapper: its status, and how to stop it.
#[derive(Debug)]
pub struct UpnpHandle {
    status: watch::Receiver<UpnpStatus>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<UpnpStatus>,
}

impl UpnpHandle {
    /// The status, updated after every change; `announced addresses` =
    /// [`UpnpStatus`] mappings that are `mapped` with the external IP.
    pub fn status(&self) -> watch::Receiver<UpnpStatus> {
        self.status.clone()
    }

    /// Removes every mapping from the gateway (each request bounded by the
    /// request timeout) and returns the final status.
    pub async fn stop(mut self) -> UpnpStatus {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match (&mut self.task).await {
            Ok(status) => status,
            Err(_) => self.status.borrow().clone(),
        }
    }
}

/// Starts mapping `wanted` on the LAN's Internet Gateway Device, in a task
/// of the current tokio runtime.
pub fn start<R: RngCore + Send + 'static>(
    config: UpnpConfig,
    wanted: Vec<Wanted>,
    rng: R,
) -> UpnpHandle {
    let mapper = Mapper::new(config.mapper.clone(), wanted, rng, Instant::now());
    let (status_tx, status) = watch::channel(mapper.status());
    let (stop, stop_rx) = oneshot::channel();
    let task = tokio::spawn(drive(config, mapper, status_tx, stop_rx));
    UpnpHandle {
        status,
        stop: Some(stop),
        task,
    }
}

type Gateway = igd_next::aio::Gateway<igd_next::aio::tokio::Tokio>;

/// The shell's loop: perform each action, feed its outcome back, sleep
/// until the next deadline or the stop signal.
async fn drive<R: RngCore>(
    config: UpnpConfig,
    mut mapper: Mapper<R>,
    status: watch::Sender<UpnpStatus>,
    mut stop: oneshot::Receiver<()>,
) -> UpnpStatus {
    let mut gateway: Option<(Gateway, IpAddr)> = None;
    let mut stopping = false;
    loop {
        if !stopping && !matches!(stop.try_recv(), Err(oneshot::error::TryRecvError::Empty)) {
            stopping = true;
            mapper.stop();
        }
        while let Some(action) = mapper.poll_action(Instant::now()) {
            perform(&config, &mut mapper, &mut gateway, action).await;
            status.send_if_modified(|s| {
                let new = mapper.status();
                let changed = *s != new;
                *s = new;
                changed
            });
        }
        if mapper.is_stopped() {
            return mapper.status();
        }
        if stopping {
            // Stopping with nothing left to unmap but not stopped cannot
            // happen; guard against spinning anyway.
            return mapper.status();
        }
        let sleep = match mapper.poll_timeout() {
            Some(at) => tokio::time::sleep_until(at.into()),
            None => tokio::time::sleep(Duration::from_secs(3600)),
        };
        tokio::select! {
            _ = sleep => {}
            _ = &mut stop => {
                stopping = true;
                mapper.stop();
            }
        }
    }
}

async fn perform<R: RngCore>(
    config: &UpnpConfig,
    mapper: &mut Mapper<R>,
    gateway: &mut Option<(Gateway, IpAddr)>,
    action: Action,
) {
    let timeout = config.request_timeout;
    match action {
        Action::Discover => {
            let options = igd_next::SearchOptions {
                timeout: Some(config.search_timeout),
                single_search_timeout: Some(config.search_timeout),
                ..Default::default()
            };
            let found = match igd_next::aio::tokio::search_gateway(options).await {
                Ok(gw) => match local_ip_towards(gw.addr).await {
                    Ok(ip) => Some((gw, ip)),
                    Err(err) => {
                        tracing::warn!(gateway = %gw.addr, "upnp: no local address towards the gateway: {err}");
                        None
                    }
                },
                Err(err) => {
                    tracing::info!("upnp: no gateway found: {err}");
                    None
                }
            };
            let addr = found.as_ref().map(|(gw, _)| gw.addr);
            if let Some(addr) = addr {
                tracing::info!(gateway = %addr, "upnp: gateway found");
            }
            *gateway = found;
            mapper.handle_discovered(addr, Instant::now());
        }
        Action::ExternalIp => {
            let ip = match gateway {
                Some((gw, _)) => match tokio::time::timeout(timeout, gw.get_external_ip()).await {
                    Ok(Ok(ip)) => Some(ip),
                    Ok(Err(err)) => {
                        tracing::warn!("upnp: external IP request failed: {err}");
                        None
                    }
                    Err(_) => {
                        tracing::warn!("upnp: external IP request timed out");
                        None
                    }
                },
                None => None,
            };
            mapper.handle_external_ip(ip, Instant::now());
        }
        Action::Map {
            proto,
            local_port,
            external_port,
            lease_secs,
        } => {
            let result = match gateway {
                Some((gw, local_ip)) => {
                    let local = SocketAddr::new(*local_ip, local_port);
                    let request = gw.add_port(
                        igd_proto(proto),
                        external_port,
                        local,
                        lease_secs,
                        &config.description,
                    );
                    match tokio::time::timeout(timeout, request).await {
                        Ok(Ok(())) => Ok(()),
                        Ok(Err(err)) => Err(map_failure(err)),
                        Err(_) => Err(MapFailure::Other("request timed out".to_owned())),
                    }
                }
                None => Err(MapFailure::Other("no gateway".to_owned())),
            };
            match &result {
                Ok(()) => tracing::debug!(?proto, local_port, external_port, "upnp: mapped"),
                Err(why) => {
                    tracing::info!(
                        ?proto,
                        local_port,
                        external_port,
                        ?why,
                        "upnp: mapping refused"
                    )
                }
            }
            mapper.handle_mapped(result, Instant::now());
        }
        Action::Unmap {
            proto,
            external_port,
        } => {
            if let Some((gw, _)) = gateway {
                let request = gw.remove_port(igd_proto(proto), external_port);
                match tokio::time::timeout(timeout, request).await {
                    Ok(Ok(())) => tracing::debug!(?proto, external_port, "upnp: unmapped"),
                    Ok(Err(err)) => {
                        tracing::warn!(?proto, external_port, "upnp: unmapping failed: {err}")
                    }
                    Err(_) => tracing::warn!(?proto, external_port, "upnp: unmapping timed out"),
                }
            }
            mapper.handle_unmapped(Instant::now());
        }
    }
}

fn igd_proto(proto: MapProto) -> igd_next::PortMappingProtocol {
    match proto {
        MapProto::Udp => igd_next::PortMappingProtocol::UDP,
        MapProto::Tcp => igd_next::PortMappingProtocol::TCP,
    }
}

fn map_failure(err: igd_next::AddPortError) -> MapFailure {
    use igd_next::AddPortError as E;
    match err {
        E::PortInUse => MapFailure::Conflict,
        E::SamePortValuesRequired => MapFailure::SamePortRequired,
        E::OnlyPermanentLeasesSupported => MapFailure::PermanentOnly,
        other => MapFailure::Other(other.to_string()),
    }
}

/// Our address on the interface that reaches the gateway (a connected UDP
/// socket picks it; nothing is sent).
async fn local_ip_towards(gateway: SocketAddr) -> std::io::Result<IpAddr> {
    let bind: SocketAddr = match gateway {
        SocketAddr::V4(_) => (std::net::Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = tokio::net::UdpSocket::bind(bind).await?;
    socket.connect(gateway).await?;
    Ok(socket.local_addr()?.ip())
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    use super::*;

    fn gw() -> SocketAddr {
        "192.168.1.1:5000".parse().unwrap()
    }

    fn mapper(pp: &[(u16, Proto)], t0: Instant) -> Mapper<StdRng> {
        Mapper::new(
            MapperConfig::default(),
            wanted(pp),
            StdRng::seed_from_u64(1),
            t0,
        )
    }

    /// Discovers, learns the external IP, and maps everything at `t0`.
    fn ready(m: &mut Mapper<StdRng>, t0: Instant) -> Vec<u16> {
        assert_eq!(m.poll_action(t0), Some(Action::Discover));
        m.handle_discovered(Some(gw()), t0);
        assert_eq!(m.poll_action(t0), Some(Action::ExternalIp));
        m.handle_external_ip(Some("203.0.113.7".parse().unwrap()), t0);
        let mut ports = Vec::new();
        while let Some(action) = m.poll_action(t0) {
            let Action::Map { external_port, .. } = action else {
                panic!("unexpected {action:?}");
            };
            ports.push(external_port);
            m.handle_mapped(Ok(()), t0);
        }
        ports
    }

    type WantedCase = (&'static [(u16, Proto)], &'static [(u16, MapProto)]);

    #[test]
    fn wanted_maps_each_transport_once() {
        let cases: &[WantedCase] = &[
            (&[(1194, Proto::Udp)], &[(1194, MapProto::Udp)]),
            (
                &[(1194, Proto::Udp), (1194, Proto::Tcp)],
                &[(1194, MapProto::Udp), (1194, MapProto::Tcp)],
            ),
            (
                &[(1194, Proto::Udp), (1194, Proto::Quic)],
                &[(1194, MapProto::Udp)],
            ),
            (
                &[(443, Proto::Quic), (0, Proto::Udp), (9, Proto::Unknown(9))],
                &[(443, MapProto::Udp)],
            ),
            (&[], &[]),
        ];
        for (pp, expect) in cases {
            let got: Vec<_> = wanted(pp)
                .iter()
                .map(|w| (w.local_port, w.map_proto()))
                .collect();
            assert_eq!(&got, expect, "{pp:?}");
        }
    }

    #[test]
    fn maps_announces_refreshes_and_removes() {
        let t0 = Instant::now();
        let mut m = mapper(&[(1194, Proto::Udp), (1195, Proto::Tcp)], t0);
        assert_eq!(m.status().state, "discovering");
        assert!(m.addresses().is_empty());
        let ports = ready(&mut m, t0);
        assert_eq!(ports.len(), 2);
        assert!(ports.iter().all(|&p| p >= 1024));
        let addrs = m.addresses();
        assert_eq!(addrs.len(), 2);
        assert_eq!(
            addrs[0].to_string(),
            format!("203.0.113.7,{},udp", ports[0])
        );
        assert_eq!(
            addrs[1].to_string(),
            format!("203.0.113.7,{},tcp", ports[1])
        );
        assert!(m.announced().iter().all(|a| a.source == "upnp"));
        assert_eq!(m.status().addresses(), addrs);
        assert_eq!(m.status().announced(), m.announced());
        let status = m.status();
        assert_eq!(status.state, "ready");
        assert_eq!(status.gateway, Some(gw()));
        assert_eq!(status.mappings[1].external_port, Some(ports[1]));

        // Refresh at half the lease, on the same external ports.
        let half = t0 + Duration::from_secs(1800);
        assert_eq!(m.poll_timeout(), Some(half));
        assert_eq!(m.poll_action(half - Duration::from_secs(1)), None);
        assert_eq!(m.poll_action(half), Some(Action::ExternalIp));
        m.handle_external_ip(Some("203.0.113.7".parse().unwrap()), half);
        for &port in &ports {
            match m.poll_action(half) {
                Some(Action::Map {
                    external_port,
                    lease_secs,
                    ..
                }) => {
                    assert_eq!(external_port, port);
                    assert_eq!(lease_secs, 3600);
                }
                other => panic!("expected a refresh, got {other:?}"),
            }
            m.handle_mapped(Ok(()), half);
        }
        assert_eq!(m.poll_action(half), None);

        m.stop();
        assert!(m.addresses().is_empty());
        let mut removed = Vec::new();
        while let Some(action) = m.poll_action(half) {
            let Action::Unmap { external_port, .. } = action else {
                panic!("unexpected {action:?}");
            };
            removed.push(external_port);
            m.handle_unmapped(half);
        }
        assert_eq!(removed, ports);
        assert!(m.is_stopped());
        assert_eq!(m.poll_timeout(), None);
    }

    #[test]
    fn conflict_picks_another_port_then_backs_off() {
        let t0 = Instant::now();
        let mut m = mapper(&[(1194, Proto::Udp)], t0);
        m.poll_action(t0);
        m.handle_discovered(Some(gw()), t0);
        m.poll_action(t0);
        m.handle_external_ip(Some("203.0.113.7".parse().unwrap()), t0);
        let mut tried = Vec::new();
        for _ in 0..MapperConfig::default().conflict_attempts {
            let Some(Action::Map { external_port, .. }) = m.poll_action(t0) else {
                panic!("expected a mapping attempt");
            };
            tried.push(external_port);
            m.handle_mapped(Err(MapFailure::Conflict), t0);
        }
        tried.sort_unstable();
        tried.dedup();
        assert!(tried.len() > 1, "random ports: {tried:?}");
        // Out of attempts: wait for the retry period.
        assert_eq!(m.poll_action(t0), None);
        assert!(m.status().mappings[0].state.starts_with("failed"));
        let retry = t0 + MapperConfig::default().retry;
        assert_eq!(m.poll_timeout(), Some(retry));
        assert!(matches!(m.poll_action(retry), Some(Action::Map { .. })));
        m.handle_mapped(Ok(()), retry);
        assert_eq!(m.addresses().len(), 1);
    }

    #[test]
    fn same_port_and_permanent_only_gateways() {
        let t0 = Instant::now();
        let mut m = mapper(&[(1194, Proto::Udp)], t0);
        m.poll_action(t0);
        m.handle_discovered(Some(gw()), t0);
        m.poll_action(t0);
        m.handle_external_ip(Some("203.0.113.7".parse().unwrap()), t0);
        assert!(matches!(m.poll_action(t0), Some(Action::Map { .. })));
        m.handle_mapped(Err(MapFailure::SamePortRequired), t0);
        assert_eq!(
            m.poll_action(t0),
            Some(Action::Map {
                proto: MapProto::Udp,
                local_port: 1194,
                external_port: 1194,
                lease_secs: 3600,
            })
        );
        m.handle_mapped(Err(MapFailure::PermanentOnly), t0);
        assert_eq!(
            m.poll_action(t0),
            Some(Action::Map {
                proto: MapProto::Udp,
                local_port: 1194,
                external_port: 1194,
                lease_secs: 0,
            })
        );
        m.handle_mapped(Ok(()), t0);
        assert_eq!(m.addresses()[0].port, 1194);
    }

    #[test]
    fn no_gateway_is_a_state_and_is_retried() {
        let t0 = Instant::now();
        let mut m = mapper(&[(1194, Proto::Udp)], t0);
        assert_eq!(m.poll_action(t0), Some(Action::Discover));
        assert_eq!(m.poll_action(t0), None, "one request at a time");
        m.handle_discovered(None, t0);
        assert_eq!(m.status().state, "no gateway");
        assert!(m.addresses().is_empty());
        let again = t0 + MapperConfig::default().rediscover;
        assert_eq!(m.poll_timeout(), Some(again));
        assert_eq!(m.poll_action(again), Some(Action::Discover));
        // Stopping while searching: nothing to remove.
        m.stop();
        assert!(!m.is_stopped(), "a request is out");
        m.handle_discovered(Some(gw()), again);
        assert!(m.is_stopped());
        assert_eq!(m.poll_action(again), None);
    }

    #[test]
    fn repeated_failures_mean_the_gateway_is_lost() {
        let t0 = Instant::now();
        let mut m = mapper(&[(1194, Proto::Udp), (1195, Proto::Tcp)], t0);
        ready(&mut m, t0);
        let half = t0 + Duration::from_secs(1800);
        assert_eq!(m.poll_action(half), Some(Action::ExternalIp));
        m.handle_external_ip(None, half);
        for _ in 0..2 {
            assert!(matches!(m.poll_action(half), Some(Action::Map { .. })));
            m.handle_mapped(Err(MapFailure::Other("connection refused".into())), half);
        }
        assert_eq!(m.status().state, "discovering");
        assert!(m.addresses().is_empty());
        let later = half + MapperConfig::default().retry;
        assert_eq!(m.poll_action(half), None);
        assert_eq!(m.poll_action(later), Some(Action::Discover));
    }

    #[test]
    fn stop_removes_a_mapping_answered_while_stopping() {
        let t0 = Instant::now();
        let mut m = mapper(&[(1194, Proto::Udp)], t0);
        m.poll_action(t0);
        m.handle_discovered(Some(gw()), t0);
        m.poll_action(t0);
        m.handle_external_ip(Some("203.0.113.7".parse().unwrap()), t0);
        let Some(Action::Map { external_port, .. }) = m.poll_action(t0) else {
            panic!("expected a mapping");
        };
        m.stop();
        assert!(!m.is_stopped(), "a request is out");
        m.handle_mapped(Ok(()), t0);
        assert_eq!(
            m.poll_action(t0),
            Some(Action::Unmap {
                proto: MapProto::Udp,
                external_port
            })
        );
        m.handle_unmapped(t0);
        assert!(m.is_stopped());
    }
}
