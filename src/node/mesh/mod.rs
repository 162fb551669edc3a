//! The node's runtime: the I/O shell that drives the sans-I/O pieces
//! (tunnel policy, Babel router, peer protocol) with real transports,
//! sockets, the kernel and the registry.
//!
//! [`run`] owns, while it runs, the transports ([`tunnels`]), the router and
//! the route installer ([`routes`]) and answers the control API. One task
//! runs the main loop; the other tasks (transport drivers, router driver,
//! installer, link-local waits) report to it over channels.
//!
//! The start-up code (`re6st node`) prepares a [`MeshSetup`]: options,
//! verified identity, network configuration, opened cache and registry
//! client; it has added our node address and the unreachable route for the
//! network before calling [`run`], and removes them after.

mod config;
mod routes;
mod tunnels;

use std::collections::VecDeque;
use std::future::Future;
use std::net::Ipv6Addr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use babel::{Dump, RttConfig};
use der::{DecodePem, Encode};
use ed25519_dalek::SigningKey;
use tokio::sync::mpsc;

use base64::Engine as _;
use rand::rngs::StdRng;
use rand::SeedableRng;

use self::routes::{RouterParts, SelectedRoute};
use self::tunnels::{TransportCredentials, Transports, TunnelKey, TunnelTable};
use super::cache::PeerCache;
use super::control::{self, ControlCall, Request, Response};
use super::options::NodeOptions;
use super::policy::{Action, Direction, Policy};
use super::{Address, Proto};
use crate::kernel::Kernel;
use crate::pki::{Network, NodeCert, NodePrefix, Verifier};
use crate::registry::client::{NodeAuth, RegistryClient};
use crate::registry::config::{BabelKeys, NetworkConfig};
use crate::routing::RouterHandle;
use crate::tunnel::TunnelEvent;

/// How long the retractions of our routes are given to go out at shutdown.
const LINGER: Duration = Duration::from_secs(1);

/// How many recent events the status keeps.
const EVENT_RING: usize = 64;

/// How often the route table is read to feed the policy.
const ROUTE_POLL: Duration = Duration::from_secs(1);

/// Babel cost multiplier of a tunnel being retired (16 × the normal cost:
/// routes move away, yet it still carries traffic if it is the only path).
const RETIRING_COST: u16 = 16 * 256;

/// The normal cost multiplier (1.0).
const NORMAL_COST: u16 = 256;

/// Pause before trying the next `--client` remote.
const CLIENT_RETRY: Duration = Duration::from_secs(1);

/// Everything the mesh needs, prepared by the start-up code.
pub struct MeshSetup {
    /// The resolved options.
    pub options: NodeOptions,
    /// Our certificate, verified.
    pub cert: NodeCert,
    /// Our key (the certificate's).
    pub key: SigningKey,
    /// The network CA certificate, PEM text (as read from `options.ca`):
    /// the mesh derives the peer verifier, the CA's DER (tunnel
    /// handshakes) and its public key (configuration signatures) from it.
    pub ca: String,
    /// Our prefix (from our certificate).
    pub prefix: NodePrefix,
    /// The network (from the CA certificate).
    pub network: Network,
    /// The network configuration, verified.
    pub config: NetworkConfig,
    /// The Babel MAC keys of `config`, opened with our key.
    pub babel_keys: Option<BabelKeys>,
    /// The peer cache, opened in `options.state`.
    pub cache: PeerCache,
    /// The registry.
    pub registry: RegistryClient,
}

/// Why [`run`] returned normally.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MeshExit {
    /// The shutdown future completed; everything was cleaned up.
    Stopped,
    /// Our own certificate is in the network's revocation list.
    Revoked,
}

/// Why the mesh could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum MeshError {
    /// The setup is inconsistent (certificate, CA, prefix).
    #[error("{0}")]
    Setup(String),
    /// A transport could not listen.
    #[error("cannot start the {proto} transport on port {port}: {source}")]
    Transport {
        /// Its protocol.
        proto: Proto,
        /// The port asked for (0: ephemeral).
        port: u16,
        /// Why.
        source: std::io::Error,
    },
    /// The Babel socket could not be bound.
    #[error("cannot bind the babel port [::]:6696: {0}")]
    BabelSocket(std::io::Error),
    /// The kernel refused a request we cannot do without.
    #[error("kernel: {0}")]
    Kernel(#[from] crate::kernel::Error),
    /// A LAN interface (`-i`) is unusable.
    #[error("-i {name}: {message}")]
    Interface {
        /// The interface.
        name: String,
        /// What is wrong.
        message: String,
    },
}

/// Runs the mesh until `shutdown` completes (then retracts our routes,
/// closes every tunnel, removes our kernel routes and saves the cache) or
/// until our certificate is revoked. Control requests arrive on `calls`.
pub async fn run(
    setup: MeshSetup,
    mut calls: mpsc::Receiver<ControlCall>,
    shutdown: impl Future<Output = ()>,
) -> Result<MeshExit, MeshError> {
    let (mut mesh, mut events) = Mesh::start(setup).await?;
    let exit = mesh.run_loop(&mut events, &mut calls, shutdown).await;
    mesh.stop().await;
    Ok(exit)
}

/// Results of tasks the loop spawned.
#[derive(Debug)]
enum Internal {
    /// Babel can run on a tunnel's interface.
    InterfaceReady {
        key: TunnelKey,
        ifindex: u32,
        link_local: Ipv6Addr,
    },
    /// A tunnel's interface could not be prepared.
    InterfaceFailed { key: TunnelKey, error: String },
    /// The registry's answer to a bootstrap request.
    Bootstrap(Result<(NodePrefix, Vec<Address>), String>),
    /// Time to try the next `--client` remote.
    ClientRetry,
}

/// `--client` mode: one tunnel to the first remote that answers.
#[derive(Debug)]
struct ClientMode {
    remotes: Vec<Address>,
    next: usize,
    pending: Option<TunnelKey>,
}

/// One recent event, for the status.
#[derive(Clone, Debug)]
struct Logged {
    time: SystemTime,
    text: String,
}

/// The running mesh.
struct Mesh {
    options: NodeOptions,
    cert: NodeCert,
    prefix: NodePrefix,
    network: Network,
    config: NetworkConfig,
    cache: PeerCache,
    registry: RegistryClient,
    key: SigningKey,
    policy: Option<Policy<NodePrefix>>,
    client: Option<ClientMode>,
    selected: Vec<SelectedRoute>,
    kernel: Arc<Kernel>,
    transports: Transports,
    table: TunnelTable,
    router: Option<RouterParts>,
    handle: RouterHandle,
    rtt: RttConfig,
    internal_tx: mpsc::UnboundedSender<Internal>,
    internal_rx: mpsc::UnboundedReceiver<Internal>,
    started: Instant,
    events: VecDeque<Logged>,
}

impl Mesh {
    async fn start(
        setup: MeshSetup,
    ) -> Result<(Self, mpsc::UnboundedReceiver<(usize, TunnelEvent)>), MeshError> {
        let MeshSetup {
            options,
            cert,
            key,
            ca,
            prefix,
            network,
            config,
            babel_keys,
            cache,
            registry,
        } = setup;
        let mut verifier =
            Verifier::new(&ca).map_err(|e| MeshError::Setup(format!("CA certificate: {e}")))?;
        verifier.set_revoked(config.crl.iter().copied());
        let ca_der = x509_cert::Certificate::from_pem(ca.as_bytes())
            .and_then(|c| c.to_der())
            .map_err(|e| MeshError::Setup(format!("CA certificate: {e}")))?;
        let kernel = Arc::new(Kernel::connect()?);
        let mac = babel_keys
            .as_ref()
            .map(routes::mac_config)
            .transpose()
            .map_err(MeshError::Setup)?;
        let rtt = routes::rtt_config(&options.babel);
        let router = routes::start(
            &kernel,
            &network,
            options.gateway,
            mac,
            rtt,
            options.table,
            LINGER,
        )
        .await?;
        let handle = router.handle.clone();
        handle.redistribute(routes::subnet_prefix(&network, &prefix)?, None, 0);
        if options.gateway {
            handle.redistribute(
                babel::Prefix::V6_DEFAULT,
                Some(routes::network_prefix(&network)),
                0,
            );
        }
        for name in &options.interfaces {
            let fail = |message: String| MeshError::Interface {
                name: name.clone(),
                message,
            };
            let link = kernel
                .link_by_name(name)
                .await
                .map_err(|e| fail(e.to_string()))?;
            let ll = routes::wait_link_local(&kernel, link.index)
                .await
                .map_err(|e| fail(e.to_string()))?;
            let hello = options.babel.lan_hello.unwrap_or(Duration::from_secs(4));
            handle.add_interface(link.index, routes::lan_interface(ll, hello, link.mtu));
            tracing::info!("babel on LAN interface {name}");
        }
        let creds = TransportCredentials {
            key: &key,
            cert: &cert,
            ca_der: &ca_der,
            verifier,
        };
        let (transports, tunnel_events) = Transports::start(&options, &creds).await?;
        transports.set_revoked(&config.crl);
        let (internal_tx, internal_rx) = mpsc::unbounded_channel();
        let now = Instant::now();
        let (policy, client) = match &options.client {
            Some(remotes) => (
                None,
                Some(ClientMode {
                    remotes: remotes.clone(),
                    next: 0,
                    pending: None,
                }),
            ),
            None => {
                let mut policy = Policy::new(
                    prefix,
                    config::policy_config(&config, &options),
                    StdRng::from_entropy(),
                    now,
                );
                seed_from_cache(&mut policy, &cache, now);
                for n in &options.neighbours {
                    policy.add_neighbour(*n, now);
                }
                policy.set_registry(config::registry_prefix(&config), now);
                (Some(policy), None)
            }
        };
        let mut mesh = Self {
            options,
            cert,
            prefix,
            network,
            config,
            cache,
            registry,
            key,
            policy,
            client,
            selected: Vec::new(),
            kernel,
            transports,
            table: TunnelTable::default(),
            router: Some(router),
            handle,
            rtt,
            internal_tx,
            internal_rx,
            started: Instant::now(),
            events: VecDeque::new(),
        };
        mesh.client_connect().await;
        mesh.drain_policy().await;
        Ok((mesh, tunnel_events))
    }

    async fn run_loop(
        &mut self,
        tunnel_events: &mut mpsc::UnboundedReceiver<(usize, TunnelEvent)>,
        calls: &mut mpsc::Receiver<ControlCall>,
        shutdown: impl Future<Output = ()>,
    ) -> MeshExit {
        let mut shutdown = std::pin::pin!(shutdown);
        let mut calls_open = true;
        let mut route_poll = tokio::time::interval(ROUTE_POLL);
        route_poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let policy_deadline = self.policy.as_ref().and_then(Policy::poll_timeout);
            let policy_timer = async {
                match policy_deadline {
                    Some(d) => tokio::time::sleep_until(d.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = &mut shutdown => return MeshExit::Stopped,
                () = policy_timer => {
                    if let Some(p) = &mut self.policy {
                        p.handle_timeout(Instant::now());
                    }
                }
                _ = route_poll.tick() => self.poll_routes().await,
                ev = tunnel_events.recv() => match ev {
                    Some((transport, ev)) => self.tunnel_event(transport, ev).await,
                    None => {
                        tracing::error!("every transport stopped");
                        shutdown.as_mut().await;
                        return MeshExit::Stopped;
                    }
                },
                Some(internal) = self.internal_rx.recv() => self.internal(internal).await,
                call = calls.recv(), if calls_open => match call {
                    Some((request, reply)) => {
                        let response = self.control(request).await;
                        let _ = reply.send(response);
                    }
                    None => calls_open = false,
                },
            }
            self.drain_policy().await;
        }
    }

    /// Opens a tunnel on transport `t` to `remote`; `None` if the transport
    /// stopped.
    async fn open(
        &self,
        t: usize,
        remote: std::net::SocketAddr,
        expected: Option<NodePrefix>,
    ) -> Option<TunnelKey> {
        let transport = self.transports.list.get(t)?;
        match transport.tunnels.connect(remote, expected).await {
            Ok(id) => Some(TunnelKey { transport: t, id }),
            Err(e) => {
                tracing::warn!("{} transport: {e}", transport.proto);
                None
            }
        }
    }

    /// `--client` mode: opens a tunnel to the next remote.
    async fn client_connect(&mut self) {
        let Some(c) = &self.client else { return };
        if c.pending.is_some() || c.remotes.is_empty() {
            return;
        }
        let remote = c.remotes[c.next % c.remotes.len()];
        let plan = tunnels::plan(&[remote], &self.transports.protos(), &self.options.disabled);
        let key = match plan.front() {
            Some(&(t, addr)) => self.open(t, addr, None).await,
            None => None,
        };
        let Some(c) = &mut self.client else { return };
        c.next += 1;
        match key {
            Some(key) => {
                tracing::info!("client mode: connecting to {remote}");
                c.pending = Some(key);
            }
            None => {
                tracing::warn!("client mode: cannot use {remote}");
                self.schedule_client_retry();
            }
        }
    }

    fn schedule_client_retry(&self) {
        let tx = self.internal_tx.clone();
        tokio::spawn(async move {
            tokio::time::sleep(CLIENT_RETRY).await;
            let _ = tx.send(Internal::ClientRetry);
        });
    }

    /// Reads the selected routes and feeds the policy with them.
    async fn poll_routes(&mut self) {
        let Some(dump) = self.handle.dump().await else {
            return;
        };
        self.selected = dump
            .routes
            .iter()
            .filter(|r| r.selected)
            .map(|r| SelectedRoute {
                prefix: r.prefix,
                src_prefix: r.src_prefix,
                ifindex: r.ifindex,
            })
            .collect();
        let destinations = routes::destinations(&self.selected, &self.network, |i| {
            self.table.peer_of_ifindex(i)
        });
        if let Some(p) = &mut self.policy {
            p.handle_routes(destinations, Instant::now());
        }
    }

    /// Executes every action the policy asks for.
    async fn drain_policy(&mut self) {
        loop {
            let Some(action) = self.policy.as_mut().and_then(Policy::poll_action) else {
                return;
            };
            self.execute(action).await;
        }
    }

    async fn execute(&mut self, action: Action<NodePrefix>) {
        let now = Instant::now();
        match action {
            Action::Connect { peer, addresses } => {
                let mut plan = tunnels::plan(
                    &addresses,
                    &self.transports.protos(),
                    &self.options.disabled,
                );
                while let Some((t, remote)) = plan.pop_front() {
                    if let Some(key) = self.open(t, remote, Some(peer)).await {
                        tracing::info!("connecting to {peer} at {remote}");
                        let proto = self.transports.protos()[t];
                        self.table.opened(key, peer, proto, remote, plan, now);
                        return;
                    }
                }
                tracing::info!("no usable address for {peer}");
                if let Some(p) = &mut self.policy {
                    p.handle_connect_failed(peer, now);
                }
            }
            Action::Close { peer, direction } => {
                if let Some(key) = self.table.find(peer, direction) {
                    self.close(key);
                }
            }
            Action::RequestAddresses { peer } => {
                let cached = match self.cache.peer(peer) {
                    Ok(c) => c.map(|c| c.addresses).unwrap_or_default(),
                    Err(e) => {
                        tracing::warn!("peer cache: {e}");
                        Vec::new()
                    }
                };
                if !cached.is_empty() {
                    if let Some(p) = &mut self.policy {
                        p.handle_addresses(peer, cached, now);
                    }
                }
            }
            Action::RequestBootstrapPeer => self.request_bootstrap(),
            Action::RaiseCost { peer } => {
                if let Some(ifindex) = self.table.ifindex_of_peer(peer) {
                    self.handle
                        .set_cost_multiplier(ifindex, None, RETIRING_COST);
                }
            }
            Action::RestoreCost { peer } => {
                if let Some(ifindex) = self.table.ifindex_of_peer(peer) {
                    self.handle.set_cost_multiplier(ifindex, None, NORMAL_COST);
                }
            }
            Action::RequestRetirement { peer, id } => {
                tracing::debug!("retirement {id} of {peer} needs the peer protocol");
            }
            Action::PeerFailed {
                peer,
                failures,
                retry_at,
            } => {
                let at = SystemTime::now() + retry_at.saturating_duration_since(now);
                if let Err(e) = self.cache.mark_failed(peer, failures, at) {
                    tracing::warn!("peer cache: {e}");
                }
            }
            Action::PeerSucceeded { peer } => {
                if let Err(e) = self.cache.mark_succeeded(peer, SystemTime::now()) {
                    tracing::warn!("peer cache: {e}");
                }
            }
        }
    }

    /// Closes a tunnel and stops Babel on it at once.
    fn close(&mut self, key: TunnelKey) {
        if let Some(entry) = self.table.remove(key) {
            if let Some(ifindex) = entry.ifindex {
                self.handle.remove_interface(ifindex);
            }
            tracing::info!("closing the {} tunnel with {}", entry.proto, entry.peer);
        }
        self.transports.close(key);
    }

    /// Asks the registry for a bootstrap peer in a task.
    fn request_bootstrap(&self) {
        let registry = self.registry.clone();
        let auth = NodeAuth {
            key: self.key.clone(),
            serial: self.cert.serial(),
        };
        let tx = self.internal_tx.clone();
        tokio::spawn(async move {
            let result = async {
                let answer = registry.bootstrap(&auth).await.map_err(|e| e.to_string())?;
                open_bootstrap(&auth.key, &answer.prefix, &answer.sealed)
            }
            .await;
            let _ = tx.send(Internal::Bootstrap(result));
        });
    }

    /// Records an event for the status (and logs it).
    fn log(&mut self, text: String) {
        tracing::info!("{text}");
        if self.events.len() == EVENT_RING {
            self.events.pop_front();
        }
        self.events.push_back(Logged {
            time: SystemTime::now(),
            text,
        });
    }

    fn hello_interval(&self) -> Duration {
        self.options
            .babel
            .hello
            .unwrap_or_else(|| Duration::from_secs(u64::from(self.config.hello.max(1))))
    }

    async fn tunnel_event(&mut self, transport: usize, ev: TunnelEvent) {
        let now = Instant::now();
        let proto = self.transports.protos()[transport];
        match ev {
            TunnelEvent::Up {
                id,
                interface,
                peer,
                addr,
                initiated,
            } => {
                let key = TunnelKey { transport, id };
                let client_tunnel = self.client.as_ref().is_some_and(|c| c.pending == Some(key));
                // A --client tunnel was opened without knowing the peer:
                // recorded now, as an incoming one would be.
                let direction = self.table.up(
                    key,
                    peer.prefix,
                    proto,
                    interface.clone(),
                    addr,
                    initiated && !client_tunnel,
                    now,
                );
                let Some(direction) = direction else {
                    self.transports.close(key);
                    return;
                };
                if client_tunnel {
                    if let Some(e) = self.table.get_mut(key) {
                        e.direction = Direction::Outgoing;
                    }
                } else if direction == Direction::Incoming {
                    let accepted = match &mut self.policy {
                        Some(p) => p.handle_incoming(peer.prefix, now),
                        // --client mode: nobody may connect to us.
                        None => false,
                    };
                    if !accepted {
                        tracing::info!("refusing the tunnel from {} at {addr}", peer.prefix);
                        self.table.remove(key);
                        self.transports.close(key);
                        return;
                    }
                }
                if let Some(p) = &mut self.policy {
                    p.handle_tunnel_up(peer.prefix, direction, now);
                }
                self.log(format!(
                    "{proto} tunnel {} with {} at {addr} up on {interface}",
                    if initiated { "to" } else { "from" },
                    peer.prefix
                ));
                self.prepare_interface(key, interface);
            }
            TunnelEvent::Down {
                id,
                interface,
                reason,
            } => {
                let key = TunnelKey { transport, id };
                if let Some(c) = &mut self.client {
                    if c.pending == Some(key) {
                        c.pending = None;
                        self.table.remove(key);
                        self.log(format!("{proto} client tunnel {id} down: {reason}"));
                        self.schedule_client_retry();
                        return;
                    }
                }
                let Some(entry) = self.table.get(key).cloned() else {
                    return;
                };
                if entry.direction == Direction::Outgoing && !entry.up {
                    // Next address of the attempt, if any.
                    if let Some((t, remote)) = self.table.next_address(key) {
                        if let Some(new) = self.open(t, remote, Some(entry.peer)).await {
                            let proto = self.transports.protos()[t];
                            self.table.retried(key, new, proto, remote, now);
                            return;
                        }
                    }
                    self.table.remove(key);
                    tracing::info!("cannot reach {}: {reason}", entry.peer);
                    if let Some(p) = &mut self.policy {
                        p.handle_connect_failed(entry.peer, now);
                    }
                    return;
                }
                self.table.remove(key);
                if entry.up {
                    if let Some(p) = &mut self.policy {
                        p.handle_tunnel_down(entry.peer, entry.direction, now);
                    }
                }
                if let Some(ifindex) = entry.ifindex {
                    // Forgets the neighbour and its routes at once.
                    self.handle.remove_interface(ifindex);
                }
                self.log(format!(
                    "{proto} tunnel with {} down ({}): {reason}",
                    entry.peer,
                    interface.as_deref().unwrap_or("never up")
                ));
            }
            TunnelEvent::Roamed { id, addr } => {
                let key = TunnelKey { transport, id };
                if let Some(e) = self.table.get_mut(key) {
                    e.remote = Some(addr);
                }
            }
            TunnelEvent::Refused { addr, error } => {
                tracing::debug!("{proto}: refused peer at {addr}: {error}");
            }
        }
    }

    /// Finds the interface's index and link-local address in a task, then
    /// runs Babel on it ([`Internal::InterfaceReady`]).
    fn prepare_interface(&self, key: TunnelKey, interface: String) {
        let kernel = Arc::clone(&self.kernel);
        let tx = self.internal_tx.clone();
        tokio::spawn(async move {
            let result = async {
                let index = kernel.link_index(&interface).await?;
                let ll = routes::wait_link_local(&kernel, index).await?;
                Ok::<_, crate::kernel::Error>((index, ll))
            }
            .await;
            let _ = tx.send(match result {
                Ok((ifindex, link_local)) => Internal::InterfaceReady {
                    key,
                    ifindex,
                    link_local,
                },
                Err(e) => Internal::InterfaceFailed {
                    key,
                    error: format!("{interface}: {e}"),
                },
            });
        });
    }

    async fn internal(&mut self, internal: Internal) {
        match internal {
            Internal::Bootstrap(Ok((peer, addresses))) => {
                self.log(format!(
                    "registry bootstrap peer: {peer} ({} addresses)",
                    addresses.len()
                ));
                if let Some(p) = &mut self.policy {
                    p.handle_bootstrap_peer(peer, addresses, Instant::now());
                }
            }
            Internal::Bootstrap(Err(e)) => tracing::warn!("no bootstrap peer: {e}"),
            Internal::ClientRetry => self.client_connect().await,
            Internal::InterfaceReady {
                key,
                ifindex,
                link_local,
            } => {
                if self.table.set_ifindex(key, ifindex) {
                    let config =
                        routes::tunnel_interface(link_local, self.hello_interval(), self.rtt);
                    self.handle.add_interface(ifindex, config);
                }
            }
            Internal::InterfaceFailed { key, error } => {
                tracing::warn!("tunnel interface unusable, closing it: {error}");
                self.transports.close(key);
            }
        }
    }

    async fn control(&mut self, request: Request) -> Response {
        match request {
            Request::Status { routes } => Response::Status(Box::new(self.status(routes).await)),
            Request::BootstrapPeer => Response::BootstrapPeer(self.bootstrap_peer()),
            other => Response::Error(format!("{other:?} is not supported yet")),
        }
    }

    /// A random live tunnel peer whose addresses we know, for the
    /// registry's bootstrap endpoint; none when we have no such peer.
    fn bootstrap_peer(&self) -> Option<control::BootstrapPeer> {
        use rand::seq::SliceRandom;
        let mut candidates: Vec<(NodePrefix, Vec<Address>)> = self
            .table
            .up_peers()
            .into_iter()
            .filter_map(|p| {
                let cached = self.cache.peer(p).ok().flatten()?;
                (!cached.addresses.is_empty()).then_some((p, cached.addresses))
            })
            .collect();
        candidates.shuffle(&mut rand::thread_rng());
        let (peer, addresses) = candidates.pop()?;
        Some(control::BootstrapPeer {
            prefix: peer.to_string(),
            addresses: addresses.iter().map(ToString::to_string).collect(),
        })
    }

    async fn status(&self, with_routes: bool) -> control::Status {
        let dump = self.handle.dump().await.unwrap_or_else(|| Dump {
            router_id: [0; 8],
            seqno: 0,
            interfaces: Vec::new(),
            neighbours: Vec::new(),
            routes: Vec::new(),
            sources: Vec::new(),
            xroutes: Vec::new(),
        });
        let mut tunnels = Vec::new();
        for (key, e) in self.table.iter() {
            let stats = match self.transports.list.get(key.transport) {
                Some(t) => t.tunnels.status().await.unwrap_or_default(),
                None => Vec::new(),
            };
            let s = stats.iter().find(|s| s.id == key.id);
            tunnels.push(control::TunnelStatus {
                peer: e.peer.to_string(),
                transport: e.proto.to_string(),
                direction: match e.direction {
                    Direction::Outgoing => "outgoing".into(),
                    Direction::Incoming => "incoming".into(),
                },
                state: if e.up { "up" } else { "connecting" }.into(),
                interface: e.interface.clone(),
                local: self
                    .transports
                    .list
                    .get(key.transport)
                    .map(|t| t.tunnels.local_addr()),
                remote: e.remote,
                age_secs: e.opened.elapsed().as_secs(),
                rx_packets: s.map_or(0, |s| s.stats.rx_packets),
                rx_bytes: s.map_or(0, |s| s.stats.rx_bytes),
                tx_packets: s.map_or(0, |s| s.stats.tx_packets),
                tx_bytes: s.map_or(0, |s| s.stats.tx_bytes),
                rtt_ms: s
                    .and_then(|s| s.stats.rtt)
                    .map(|r| r.as_secs_f64() * 1000.0),
                routes: 0,
                persistent: self.options.neighbours.contains(&e.peer),
            });
        }
        let selected: Vec<_> = dump.routes.iter().filter(|r| r.selected).collect();
        control::Status {
            identity: control::Identity {
                prefix: self.prefix.to_string(),
                subnet: routes::subnet_prefix(&self.network, &self.prefix)
                    .map(|p| p.to_string())
                    .unwrap_or_default(),
                address: self.network.node_address(&self.prefix).ok(),
                network: self.network.to_string(),
                config_version: self.config.version,
                software: env!("CARGO_PKG_VERSION").into(),
                uptime_secs: self.started.elapsed().as_secs(),
                cert_not_after: unix(self.cert.not_after()),
            },
            tunnels,
            neighbours: dump
                .neighbours
                .iter()
                .map(|n| control::NeighbourStatus {
                    interface: format!("#{}", n.ifindex),
                    address: n.address,
                    cost: n.cost,
                    rxcost: n.rxcost,
                    txcost: n.txcost,
                    rtt_ms: n.rtt.map(|r| r.as_secs_f64() * 1000.0),
                })
                .collect(),
            route_count: selected.len(),
            routes: with_routes.then(|| {
                selected
                    .iter()
                    .map(|r| control::RouteStatus {
                        prefix: r.prefix.to_string(),
                        src_prefix: r.src_prefix.map(|p| p.to_string()),
                        next_hop: match r.next_hop {
                            std::net::IpAddr::V6(a) => a,
                            std::net::IpAddr::V4(a) => a.to_ipv6_mapped(),
                        },
                        interface: format!("#{}", r.ifindex),
                        metric: r.metric,
                    })
                    .collect()
            }),
            peer_cache: self.cache.len().unwrap_or(0),
            addresses: Vec::new(),
            peer_protocol: control::PeerProtocolCounters::default(),
            babel: control::BabelCounters::default(),
            events: self
                .events
                .iter()
                .map(|e| control::EventRecord {
                    time: unix(e.time),
                    text: e.text.clone(),
                })
                .collect(),
        }
    }

    /// Retracts our routes, closes every tunnel, lets the installer finish,
    /// removes our kernel routes and prunes the cache.
    async fn stop(&mut self) {
        if let Some(router) = self.router.take() {
            let _ = router.stop.send(());
            match router.driver.await {
                Ok(r) => tracing::info!("{} routes in the table at shutdown", r.route_count()),
                Err(e) => tracing::warn!("babel driver: {e}"),
            }
            // The handles keep the driver's command channel open, not the
            // route channel: the installer ends once the driver is dropped.
            match router.installer.await {
                Ok(Ok(stats)) => tracing::info!(
                    "{} route changes applied, {} refused",
                    stats.applied,
                    stats.failed
                ),
                Ok(Err(e)) => tracing::warn!("route installer: {e}"),
                Err(e) => tracing::warn!("route installer: {e}"),
            }
        }
        // Dropping the handles stops the transports: tunnels close and
        // their interfaces disappear.
        self.transports.list.clear();
        match self.kernel.flush_routes().await {
            Ok(n) => tracing::info!("removed our {n} kernel routes"),
            Err(e) => tracing::warn!("cannot remove our kernel routes: {e}"),
        }
        if let Err(e) = self.cache.prune(CACHE_KEEP) {
            tracing::warn!("peer cache: {e}");
        }
    }
}

/// Opens the registry's bootstrap answer: `sealed` is base64 of our
/// sealed JSON list of `IP,PORT,PROTO` strings; unparsable entries are
/// skipped.
fn open_bootstrap(
    key: &SigningKey,
    prefix: &str,
    sealed: &str,
) -> Result<(NodePrefix, Vec<Address>), String> {
    let peer: NodePrefix = prefix
        .parse()
        .map_err(|e| format!("bad bootstrap prefix {prefix:?}: {e}"))?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(sealed)
        .map_err(|e| format!("bad bootstrap answer: {e}"))?;
    let plain = crate::pki::open(key, &bytes).map_err(|e| format!("bad bootstrap answer: {e}"))?;
    let list: Vec<String> =
        serde_json::from_slice(&plain).map_err(|e| format!("bad bootstrap answer: {e}"))?;
    let addresses = list.iter().filter_map(|a| a.parse().ok()).collect();
    Ok((peer, addresses))
}

/// Seeds the policy with the cached peers and their backoff.
fn seed_from_cache(policy: &mut Policy<NodePrefix>, cache: &PeerCache, now: Instant) {
    let peers = match cache.peers() {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!("peer cache: {e}");
            return;
        }
    };
    let wall = SystemTime::now();
    for p in peers {
        let retry_at = p
            .retry_at
            .map(|at| now + at.duration_since(wall).unwrap_or_default());
        policy.handle_cached_peer(p.prefix, p.addresses, p.failures, retry_at);
    }
}

/// Peers kept in the cache at shutdown.
const CACHE_KEEP: usize = 1000;

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}
