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

mod addresses;
mod config;
mod ipv4;
mod nat;
mod peers;
mod routes;
mod status;
mod tunnels;

use std::collections::VecDeque;
use std::future::Future;
use std::net::Ipv6Addr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use babel::{Dump, RttConfig};
use der::{DecodePem, Encode};
use ed25519_dalek::SigningKey;
use tokio::sync::mpsc;

use base64::Engine as _;
use rand::rngs::StdRng;
use rand::SeedableRng;

use self::addresses::Source;
use self::config::Changes;
use self::nat::{Mechanisms, NatState};
use self::peers::{Answer, Ask, PeerSocket, Waiters};
use self::routes::{RouterParts, SelectedRoute};
use self::tunnels::{TransportCredentials, Transports, TunnelKey, TunnelTable};
use super::cache::PeerCache;
use super::control::{self, ControlCall, Request, Response};
use super::nat::punch::{PunchAction, PunchEvent, PunchMessage};
use super::nat::upnp::{self, UpnpConfig, UpnpHandle, UpnpStatus};
use super::options::NodeOptions;
use super::peer_proto::{Addresses, Body, Message, PeerEndpoint, Prefixes};
use super::policy::{Action, Direction, Policy};
use super::{Address, Proto};
use crate::kernel::Kernel;
use crate::pki::{Network, NodeCert, NodePrefix, Verifier};
use crate::registry::client::{ClientError, NodeAuth, RegistryClient};
use crate::registry::config::{BabelKeys, NetworkConfig, SignedConfig};
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

/// Delays of the resends of an unanswered address request (1, 3 and 6 s
/// after the first, within the policy's reply timeout).
const ADDRESS_RESEND: [Duration; 3] = [
    Duration::from_secs(1),
    Duration::from_secs(2),
    Duration::from_secs(3),
];

/// Longest pause between a peer's agreement to retire a tunnel and its
/// closing (one hello interval, at most this).
const RETIRE_LINGER_MAX: Duration = Duration::from_secs(4);

/// How long after the retiring side the agreeing side closes its end.
const RETIRE_CLOSE_SLACK: Duration = Duration::from_millis(500);

/// The normal cost multiplier (1.0).
const NORMAL_COST: u16 = 256;

/// Pause before trying the next `--client` remote.
const CLIENT_RETRY: Duration = Duration::from_secs(1);

/// How often the registry is asked for the configuration even when no
/// peer announced a newer one (a fallback for gossip).
const CONFIG_POLL: Duration = Duration::from_secs(300);

/// How often the registry's own node (on the registry host) asks the
/// registry for the configuration: it is where a new version enters the
/// gossip, so it must notice it quickly.
const REGISTRY_NODE_CONFIG_POLL: Duration = Duration::from_secs(5);

/// How often the host's addresses (announced to peers) are re-read.
const ADDRESS_POLL: Duration = Duration::from_secs(60);

/// Why a retirement is refused (the peer protocol's free code points).
const NACK_NO_TUNNEL: u8 = 1;
/// Refused: the tunnel is a persistent `--neighbour` one.
const NACK_PERSISTENT: u8 = 2;

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
    /// The peer-protocol socket could not be bound.
    #[error("cannot bind the peer protocol socket {local}: {source}")]
    PeerSocket {
        /// The address.
        local: std::net::SocketAddr,
        /// Why.
        source: std::io::Error,
    },
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
    let (mut mesh, mut inputs) = Mesh::start(setup).await?;
    let exit = mesh.run_loop(&mut inputs, &mut calls, shutdown).await;
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
    /// Send an unanswered address request again.
    ResendAddressRequest { peer: NodePrefix, attempt: usize },
    /// We agreed to retire a peer's tunnel a moment ago: close our side.
    CloseRetired { peer: NodePrefix },
    /// A peer agreed to retire our tunnel a moment ago.
    RetireAgreed { peer: NodePrefix, id: u32 },
    /// A configuration fetched from the registry and verified.
    Config(Result<Box<FetchedConfig>, String>),
    /// The host's addresses were read.
    HostAddresses(Vec<std::net::IpAddr>),
}

/// A verified configuration from the registry.
#[derive(Debug)]
struct FetchedConfig {
    config: NetworkConfig,
    keys: Option<BabelKeys>,
    signed: SignedConfig,
    /// Fetched without authentication (the registry refused ours, e.g.
    /// because our certificate is revoked): it carries no keys.
    anonymous: bool,
}

/// The channels the main loop reads besides the control calls.
struct Inputs {
    tunnels: mpsc::UnboundedReceiver<(usize, TunnelEvent)>,
    peer: mpsc::Receiver<(Vec<u8>, std::net::SocketAddr)>,
    asks: mpsc::UnboundedReceiver<Ask>,
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
    babel_keys: Option<BabelKeys>,
    ca_key: ed25519_dalek::VerifyingKey,
    cache: PeerCache,
    registry: RegistryClient,
    key: SigningKey,
    peer: PeerSocket,
    waiters: Waiters,
    asks_tx: mpsc::UnboundedSender<Ask>,
    fetching: bool,
    revoked: bool,
    bootstrap_failures: u32,
    announced: Vec<(Address, Source)>,
    /// The configured and host addresses, before the NAT state adds the
    /// UPnP mappings and the learned address.
    base_announced: Vec<(Address, Source)>,
    /// UPnP, learning, reachability and hole punching.
    nat: NatState,
    /// The UPnP mapper, while it runs.
    upnp: Option<UpnpHandle>,
    /// Tunnels opened by hole punching that are not up yet, with the
    /// direction the policy knows them by (outgoing on the side that asked
    /// for the tunnel, incoming on the side that agreed).
    punch_keys: std::collections::BTreeMap<TunnelKey, Direction>,
    /// Tunnel peers we told our configuration version since their tunnel
    /// came up.
    told_version: std::collections::BTreeSet<NodePrefix>,
    /// Peers asked for their addresses that did not answer yet.
    address_pending: std::collections::BTreeSet<NodePrefix>,
    /// Names of the LAN interfaces (`-i`), by index.
    lan_names: std::collections::HashMap<u32, String>,
    /// The IPv4 payload address we added (interface index, address).
    ipv4: Option<(u32, std::net::Ipv4Addr)>,
    policy: Option<Policy<NodePrefix>>,
    client: Option<ClientMode>,
    selected: Vec<SelectedRoute>,
    kernel: Arc<Kernel>,
    /// Next `--remote-gateway` to route a tunnel endpoint through.
    next_gateway: std::sync::atomic::AtomicUsize,
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
    async fn start(setup: MeshSetup) -> Result<(Self, Inputs), MeshError> {
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
        let ca_key = config::ca_key(&ca).map_err(MeshError::Setup)?;
        let address = network
            .node_address(&prefix)
            .map_err(|e| MeshError::Setup(e.to_string()))?;
        let endpoint = PeerEndpoint::new(&cert, key.clone(), verifier.clone(), SystemTime::now())
            .map_err(|e| MeshError::Setup(format!("peer protocol: {e}")))?;
        let (peer, peer_rx) = PeerSocket::bind(address, endpoint, network).await?;
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
        let ipv4 = match &config.ipv4 {
            Some(settings) => Some(start_ipv4(&kernel, &handle, &options, &cert, settings).await?),
            None => None,
        };
        let mut lan_names = std::collections::HashMap::new();
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
            lan_names.insert(link.index, name.clone());
        }
        let creds = TransportCredentials {
            key: &key,
            cert: &cert,
            ca_der: &ca_der,
            verifier: verifier.clone(),
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
        let (asks_tx, asks_rx) = mpsc::unbounded_channel();
        let mechanisms = Mechanisms::of(&options.ip, options.client.is_some());
        let nat = NatState::new(mechanisms, &options.pp, StdRng::from_entropy());
        let upnp = mechanisms.upnp.then(|| {
            upnp::start(
                UpnpConfig::default(),
                upnp::wanted(nat.pp()),
                StdRng::from_entropy(),
            )
        });
        let mut mesh = Self {
            options,
            cert,
            prefix,
            network,
            config,
            babel_keys,
            ca_key,
            cache,
            registry,
            key,
            peer,
            waiters: Waiters::default(),
            asks_tx,
            fetching: false,
            revoked: false,
            bootstrap_failures: 0,
            announced: Vec::new(),
            base_announced: Vec::new(),
            nat,
            upnp,
            punch_keys: std::collections::BTreeMap::new(),
            told_version: std::collections::BTreeSet::new(),
            lan_names,
            ipv4,
            address_pending: std::collections::BTreeSet::new(),
            policy,
            client,
            selected: Vec::new(),
            kernel,
            next_gateway: std::sync::atomic::AtomicUsize::new(0),
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
        mesh.read_host_addresses();
        mesh.client_connect().await;
        mesh.drain_policy().await;
        let inputs = Inputs {
            tunnels: tunnel_events,
            peer: peer_rx,
            asks: asks_rx,
        };
        Ok((mesh, inputs))
    }

    async fn run_loop(
        &mut self,
        inputs: &mut Inputs,
        calls: &mut mpsc::Receiver<ControlCall>,
        shutdown: impl Future<Output = ()>,
    ) -> MeshExit {
        let mut shutdown = std::pin::pin!(shutdown);
        let mut calls_open = true;
        let mut route_poll = tokio::time::interval(ROUTE_POLL);
        route_poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let poll = if config::registry_prefix(&self.config) == Some(self.prefix) {
            REGISTRY_NODE_CONFIG_POLL
        } else {
            CONFIG_POLL
        };
        let mut config_poll = tokio::time::interval_at(tokio::time::Instant::now() + poll, poll);
        let mut address_poll =
            tokio::time::interval_at(tokio::time::Instant::now() + ADDRESS_POLL, ADDRESS_POLL);
        let mut upnp_status = self.upnp.as_ref().map(UpnpHandle::status);
        loop {
            if self.revoked {
                return MeshExit::Revoked;
            }
            let policy_deadline = self.policy.as_ref().and_then(Policy::poll_timeout);
            let policy_timer = async {
                match policy_deadline {
                    Some(d) => tokio::time::sleep_until(d.into()).await,
                    None => std::future::pending().await,
                }
            };
            let nat_deadline = self.nat.poll_timeout();
            let nat_timer = async {
                match nat_deadline {
                    Some(d) => tokio::time::sleep_until(d.into()).await,
                    None => std::future::pending().await,
                }
            };
            let upnp_changed = async {
                match &mut upnp_status {
                    Some(rx) => match rx.changed().await {
                        Ok(()) => rx.borrow_and_update().clone(),
                        Err(_) => std::future::pending().await,
                    },
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = &mut shutdown => return MeshExit::Stopped,
                () = nat_timer => {
                    if self.nat.handle_timeout(Instant::now()).is_some() {
                        self.recompute_nat();
                    }
                    self.drain_punch().await;
                }
                status = upnp_changed => self.upnp_status(status),
                () = policy_timer => {
                    if let Some(p) = &mut self.policy {
                        p.handle_timeout(Instant::now());
                    }
                }
                _ = route_poll.tick() => self.poll_routes().await,
                _ = config_poll.tick() => self.fetch_config(),
                _ = address_poll.tick() => self.read_host_addresses(),
                Some((bytes, from)) = inputs.peer.recv() => self.peer_packet(&bytes, from).await,
                Some(ask) = inputs.asks.recv() => self.ask(ask).await,
                ev = inputs.tunnels.recv() => match ev {
                    Some((transport, ev)) => self.tunnel_event(transport, ev).await,
                    None => {
                        tracing::error!("every transport stopped");
                        shutdown.as_mut().await;
                        return MeshExit::Stopped;
                    }
                },
                Some(internal) = self.internal_rx.recv() => self.internal(internal).await,
                call = calls.recv(), if calls_open => match call {
                    Some((request, reply)) => self.control(request, reply).await,
                    None => calls_open = false,
                },
            }
            self.drain_policy().await;
        }
    }

    /// When no tunnel is up (any more): ask the registry for a bootstrap
    /// peer again soon (2 s doubling, not the policy's whole minute: a
    /// refused or failed bootstrap tunnel must not leave us alone for
    /// long), and fetch the configuration (if our own certificate was
    /// revoked, nobody gossips the news to us any more).
    fn isolated(&mut self) {
        if !self.table.up_peers().is_empty() || self.policy.is_none() {
            return;
        }
        self.bootstrap_failures = self.bootstrap_failures.saturating_add(1);
        let retry = bootstrap_retry(self.bootstrap_failures);
        tracing::info!("no tunnel up: asking the registry again in {retry:?}");
        if let Some(p) = &mut self.policy {
            p.handle_bootstrap_failed(retry, Instant::now());
        }
        self.fetch_config();
    }

    /// Asks `peer` for its addresses, again after 1, 3 and 6 s while no
    /// reply came: the first request may leave before the kernel has the route
    /// Babel just selected.
    async fn request_addresses(&mut self, peer: NodePrefix) {
        self.address_pending.insert(peer);
        self.peer.send(peer, &Body::AddressRequest).await;
        self.schedule_address_resend(peer, 0);
    }

    fn schedule_address_resend(&self, peer: NodePrefix, attempt: usize) {
        let Some(&delay) = ADDRESS_RESEND.get(attempt) else {
            return;
        };
        let tx = self.internal_tx.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let _ = tx.send(Internal::ResendAddressRequest { peer, attempt });
        });
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
        self.route_via_gateway(remote.ip()).await;
        match transport.tunnels.connect(remote, expected).await {
            Ok(id) => Some(TunnelKey { transport: t, id }),
            Err(e) => {
                tracing::warn!("{} transport: {e}", transport.proto);
                None
            }
        }
    }

    /// `--remote-gateway`: routes an IPv4 tunnel endpoint through the next
    /// gateway, round-robin, with a host route of our protocol (removed
    /// with our other routes at shutdown).
    async fn route_via_gateway(&self, remote: std::net::IpAddr) {
        let gateways = &self.options.remote_gateways;
        let std::net::IpAddr::V4(v4) = remote else {
            return;
        };
        if gateways.is_empty() {
            return;
        }
        let n = self
            .next_gateway
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let gateway = gateways[n % gateways.len()];
        let Ok(dst) = crate::kernel::Net::new(v4.into(), 32) else {
            return;
        };
        let mut route = crate::kernel::Route::new(dst);
        route.gateway = Some(gateway.into());
        match self
            .kernel
            .apply(crate::kernel::RouteOp::Replace(route))
            .await
        {
            Ok(()) => tracing::debug!("tunnel endpoint {v4} routed via {gateway}"),
            Err(e) => tracing::warn!("cannot route {v4} via {gateway}: {e}"),
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
        // Gossip: tell each tunnel peer our configuration version once it
        // is routed (its re6st address is reachable).
        let up = self.table.up_peers();
        self.told_version.retain(|p| up.contains(p));
        let newly: Vec<NodePrefix> = up
            .into_iter()
            .filter(|p| !self.told_version.contains(p))
            .filter(|p| destinations.iter().any(|(d, _)| d == p))
            .collect();
        for peer in newly {
            self.told_version.insert(peer);
            let seen: Vec<(Proto, std::net::SocketAddr)> = self
                .table
                .iter()
                .filter(|(_, e)| e.up && e.peer == peer)
                .filter_map(|(_, e)| Some((e.proto, e.remote?)))
                .collect();
            for (proto, addr) in seen {
                self.tell_observed(peer, proto, addr).await;
            }
            let version = self.config.version;
            self.peer.send(peer, &Body::ConfigVersion(version)).await;
            // Learn its addresses too: we hand them to nodes that
            // bootstrap through us (the registry's node) and reconnect
            // with them after a restart.
            self.peer.send(peer, &Body::AddressRequest).await;
        }
        if let Some(p) = &mut self.policy {
            p.handle_routes(destinations, Instant::now());
        }
    }

    /// Tells `peer` the underlay address its `proto` tunnel packets come
    /// from (what it learns its public address from).
    async fn tell_observed(&mut self, peer: NodePrefix, proto: Proto, addr: std::net::SocketAddr) {
        let addr = Address {
            ip: addr.ip().to_canonical(),
            port: addr.port(),
            proto,
        };
        self.peer.send(peer, &Body::Observed(addr)).await;
    }

    /// Reads the host's addresses in a task ([`Internal::HostAddresses`]).
    fn read_host_addresses(&self) {
        let kernel = Arc::clone(&self.kernel);
        let tx = self.internal_tx.clone();
        tokio::spawn(async move {
            match kernel.addresses(None).await {
                Ok(list) => {
                    let ips = list
                        .iter()
                        .filter(|a| !a.tentative)
                        .map(|a| a.addr)
                        .collect();
                    let _ = tx.send(Internal::HostAddresses(ips));
                }
                Err(e) => tracing::warn!("cannot list the host's addresses: {e}"),
            }
        });
    }

    /// Fetches the configuration from the registry in a task
    /// ([`Internal::Config`]), unless a fetch is in flight.
    fn fetch_config(&mut self) {
        if self.fetching {
            return;
        }
        self.fetching = true;
        let registry = self.registry.clone();
        let auth = NodeAuth {
            key: self.key.clone(),
            serial: self.cert.serial(),
        };
        let ca_key = self.ca_key;
        let tx = self.internal_tx.clone();
        tokio::spawn(async move {
            let result = async {
                let (signed, anonymous) = match registry.config(Some(&auth)).await {
                    Ok(s) => (s, false),
                    // Refused authentication: still learn the CRL.
                    Err(ClientError::Api {
                        status: 401 | 403, ..
                    }) => (
                        registry.config(None).await.map_err(|e| e.to_string())?,
                        true,
                    ),
                    Err(e) => return Err(e.to_string()),
                };
                let config = signed.verify(&ca_key).map_err(|e| e.to_string())?;
                let keys = if anonymous {
                    None
                } else {
                    config
                        .open_babel_keys(&auth.key)
                        .map_err(|e| e.to_string())?
                };
                Ok(Box::new(FetchedConfig {
                    config,
                    keys,
                    signed,
                    anonymous,
                }))
            }
            .await;
            let _ = tx.send(Internal::Config(result));
        });
    }

    /// Applies a newer configuration live.
    async fn apply_config(&mut self, fetched: FetchedConfig) {
        let FetchedConfig {
            config,
            keys,
            signed,
            anonymous,
        } = fetched;
        if anonymous && config.crl.contains(&self.cert.serial()) {
            self.log("our certificate was revoked".into());
            self.revoked = true;
            return;
        }
        if config.version <= self.config.version {
            return;
        }
        // An unauthenticated answer has no keys: keep ours.
        let keys = if anonymous {
            self.babel_keys.clone()
        } else {
            keys
        };
        let now = Instant::now();
        let changes = Changes::between(
            &self.config,
            self.babel_keys.as_ref(),
            &config,
            keys.as_ref(),
        );
        self.log(format!(
            "network configuration version {} -> {}",
            self.config.version, config.version
        ));
        if config.crl.contains(&self.cert.serial()) {
            self.log("our certificate was revoked".into());
            self.revoked = true;
        }
        if changes.crl {
            self.transports.set_revoked(&config.crl);
            self.peer
                .endpoint_mut()
                .verifier_mut()
                .set_revoked(config.crl.iter().copied());
            if !changes.newly_revoked.is_empty() {
                self.log(format!(
                    "revoked serials {:?}: their tunnels close",
                    changes.newly_revoked
                ));
            }
        }
        if changes.keys {
            match keys.as_ref().map(routes::mac_config).transpose() {
                Ok(mac) => {
                    self.handle.set_mac(mac);
                    self.log("babel MAC keys replaced".into());
                }
                Err(e) => tracing::warn!("new babel keys unusable, keeping the old ones: {e}"),
            }
        }
        if changes.ipv4 {
            tracing::warn!("IPv4 payload settings changed: they apply at the next start");
        }
        let old_hello = self.hello_interval();
        self.config = config;
        self.babel_keys = keys;
        if changes.hello && self.hello_interval() != old_hello {
            let hello = self.hello_interval();
            for (_, e) in self.table.iter() {
                if let (Some(ifindex), Some(ll)) = (e.ifindex, e.link_local) {
                    self.handle
                        .add_interface(ifindex, routes::tunnel_interface(ll, hello, self.rtt));
                }
            }
        }
        if let Some(p) = &mut self.policy {
            if changes.policy {
                p.set_config(config::policy_config(&self.config, &self.options), now);
            }
            if changes.registry {
                p.set_registry(config::registry_prefix(&self.config), now);
            }
        }
        let body = serde_json::to_vec(&signed).unwrap_or_default();
        if let Err(e) = self.cache.set_network_config(self.config.version, &body) {
            tracing::warn!("peer cache: {e}");
        }
        // Gossip the new version to every tunnel peer.
        let version = self.config.version;
        for peer in self.table.up_peers() {
            self.peer.send(peer, &Body::ConfigVersion(version)).await;
        }
    }

    /// A datagram on the peer-protocol socket.
    async fn peer_packet(&mut self, bytes: &[u8], from: std::net::SocketAddr) {
        let message = match self.peer.endpoint_mut().open(bytes, SystemTime::now()) {
            Ok(m) => m,
            Err(e) => {
                tracing::debug!("peer message from {from} dropped: {e}");
                return;
            }
        };
        let Message { sender, body, .. } = message;
        let now = Instant::now();
        match body {
            Body::AddressRequest => {
                let list: Vec<Address> = self.announced.iter().map(|(a, _)| *a).collect();
                let list = &list[..list.len().min(crate::node::peer_proto::wire::MAX_ADDRESSES)];
                self.peer
                    .send(sender, &Body::AddressReply(Addresses::List(list)))
                    .await;
            }
            Body::AddressReply(addresses) => {
                self.address_pending.remove(&sender);
                let list: Vec<Address> = addresses.iter().collect();
                if let Err(e) = self.cache.set_addresses(sender, &list, SystemTime::now()) {
                    tracing::warn!("peer cache: {e}");
                }
                if let Some(p) = &mut self.policy {
                    p.handle_addresses(sender, list, now);
                }
            }
            Body::ConfigVersion(version) => {
                self.waiters.answer(sender, &Answer::Version(version));
                if version > self.config.version {
                    tracing::info!("{sender} has configuration version {version}: fetching it");
                    self.fetch_config();
                } else if version < self.config.version {
                    let ours = self.config.version;
                    self.peer.send(sender, &Body::ConfigVersion(ours)).await;
                }
            }
            Body::RetireRequest { id } => {
                let agreed = self
                    .policy
                    .as_mut()
                    .is_some_and(|p| p.handle_retirement_request(sender, now));
                if agreed {
                    // The retiring side closes one hello after our ack;
                    // we close our side just after it, so that neither
                    // side keeps routing into a half-closed tunnel until
                    // the dead-peer timeout.
                    let tx = self.internal_tx.clone();
                    let linger = self.hello_interval().min(RETIRE_LINGER_MAX) + RETIRE_CLOSE_SLACK;
                    tokio::spawn(async move {
                        tokio::time::sleep(linger).await;
                        let _ = tx.send(Internal::CloseRetired { peer: sender });
                    });
                }
                let answer = match agreed {
                    true => Body::RetireAck { id },
                    false => Body::RetireNack {
                        id,
                        reason: if self.options.neighbours.contains(&sender) {
                            NACK_PERSISTENT
                        } else {
                            NACK_NO_TUNNEL
                        },
                    },
                };
                self.peer.send(sender, &answer).await;
            }
            Body::RetireAck { id } => {
                // The peer raised the tunnel's cost on its side as it
                // agreed: give its routes a moment to move away too before
                // the policy closes the tunnel.
                let tx = self.internal_tx.clone();
                let linger = self.hello_interval().min(RETIRE_LINGER_MAX);
                tokio::spawn(async move {
                    tokio::time::sleep(linger).await;
                    let _ = tx.send(Internal::RetireAgreed { peer: sender, id });
                });
            }
            Body::RetireNack { id, reason } => {
                tracing::info!("{sender} refused to retire our tunnel (reason {reason})");
                if let Some(p) = &mut self.policy {
                    p.handle_retirement_reply(sender, id, false, now);
                }
            }
            Body::InfoRequest => {
                let software = concat!("re6st ", env!("CARGO_PKG_VERSION"));
                self.peer.send(sender, &Body::Info { software }).await;
                let ours = self.config.version;
                self.peer.send(sender, &Body::ConfigVersion(ours)).await;
            }
            Body::Info { software } => {
                self.waiters
                    .answer(sender, &Answer::Info(software.to_owned()));
            }
            Body::TopologyRequest => {
                let peers = self.table.up_peers();
                let max = (crate::node::peer_proto::wire::MAX_PACKET_LEN - 1024) / 17;
                let peers = &peers[..peers.len().min(max)];
                self.peer
                    .send(sender, &Body::Topology(Prefixes::List(peers)))
                    .await;
            }
            Body::Topology(prefixes) => {
                let list = prefixes.iter().collect();
                self.waiters.answer(sender, &Answer::Topology(list));
            }
            Body::Observed(addr) => {
                // Only a tunnel peer saw our packets.
                if !self.table.up_peers().contains(&sender) {
                    tracing::debug!("{sender}: observation ignored (no tunnel with it)");
                    return;
                }
                tracing::debug!("{sender} sees us at {addr}");
                if self.nat.handle_observed(sender, addr, now).is_some() {
                    self.recompute_nat();
                }
            }
            Body::PunchRequest { .. } | Body::PunchAccept { .. } | Body::PunchRefuse { .. } => {
                let Some(message) = PunchMessage::from_body(&body) else {
                    return;
                };
                // A request is welcome when we would accept the tunnel, or
                // when we are trying to connect to that peer ourselves.
                let wanted = self.udp_transport().is_some()
                    && self.policy.as_ref().is_some_and(|p| {
                        p.would_accept(sender)
                            || p.tunnels().any(|t| {
                                t.peer == sender && t.direction == Direction::Outgoing && !t.up
                            })
                    });
                tracing::debug!("{sender}: {message:?}");
                let ours = self.nat.udp_endpoint();
                self.nat
                    .puncher
                    .handle_message(sender, message, ours, wanted, now);
                self.drain_punch().await;
            }
        }
    }

    /// Sends a walk's question (unless the same one is in flight).
    async fn ask(&mut self, ask: Ask) {
        let (peer, question) = (ask.peer, ask.question);
        if !self.waiters.add(ask) {
            return;
        }
        let body = match question {
            peers::Question::Topology => Body::TopologyRequest,
            peers::Question::Info | peers::Question::Version => Body::InfoRequest,
        };
        self.peer.send(peer, &body).await;
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
                let addresses = self.nat.order(peer, &addresses, now);
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
                if direction == Direction::Outgoing {
                    // Given up (connect timeout): no more punching either.
                    self.nat.puncher.cancel(&peer);
                }
                if let Some(key) = self.table.find(peer, direction) {
                    self.punch_keys.remove(&key);
                    self.close(key);
                }
            }
            Action::RequestAddresses { peer } => {
                self.request_addresses(peer).await;
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
                self.log(format!("retiring our tunnel to {peer}"));
                self.peer.send(peer, &Body::RetireRequest { id }).await;
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
                // A punched tunnel keeps the direction the policy knows it
                // by, whichever side's handshake won.
                let punched = self.punch_keys.remove(&key);
                // A --client tunnel was opened without knowing the peer:
                // recorded now, as an incoming one would be.
                let direction = self.table.up(
                    key,
                    peer.prefix,
                    proto,
                    interface.clone(),
                    addr,
                    (initiated || punched.is_some()) && !client_tunnel,
                    now,
                );
                let Some(mut direction) = direction else {
                    self.transports.close(key);
                    return;
                };
                if let Some(d) = punched {
                    direction = d;
                    if let Some(e) = self.table.get_mut(key) {
                        e.direction = d;
                    }
                }
                if proto == Proto::Udp {
                    self.nat.puncher.handle_tunnel_up(&peer.prefix);
                }
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
                self.bootstrap_failures = 0;
                self.log(format!(
                    "{proto} tunnel {} {} at {addr} up on {interface}",
                    if direction == Direction::Outgoing {
                        "to"
                    } else {
                        "from"
                    },
                    peer.prefix
                ));
                self.prepare_interface(key, interface);
                self.drain_punch().await;
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
                if self.punch_keys.remove(&key).is_some() {
                    // The puncher decides when punching failed.
                    self.table.remove(key);
                    tracing::debug!("punching handshakes to {} ended: {reason}", entry.peer);
                    return;
                }
                if entry.direction == Direction::Outgoing && !entry.up {
                    self.nat.handle_proto_failed(entry.peer, entry.proto, now);
                    // Next address of the attempt, if any.
                    if let Some((t, remote)) = self.table.next_address(key) {
                        if let Some(new) = self.open(t, remote, Some(entry.peer)).await {
                            let proto = self.transports.protos()[t];
                            tracing::info!(
                                "cannot reach {} over {}: trying {remote} over {proto}",
                                entry.peer,
                                entry.proto
                            );
                            self.table.retried(key, new, proto, remote, now);
                            if let Some(p) = &mut self.policy {
                                p.handle_connect_progress(entry.peer, now);
                            }
                            return;
                        }
                    }
                    self.table.remove(key);
                    tracing::info!("cannot reach {}: {reason}", entry.peer);
                    if self.udp_transport().is_some() && self.nat.should_punch(entry.peer, now) {
                        // Neither side reachable: punch through the mesh.
                        self.log(format!("punching a hole to {}", entry.peer));
                        let ours = self.nat.udp_endpoint();
                        self.nat.puncher.connect(entry.peer, ours, now);
                        if let Some(p) = &mut self.policy {
                            p.handle_connect_progress(entry.peer, now);
                        }
                        self.drain_punch().await;
                        return;
                    }
                    if let Some(p) = &mut self.policy {
                        p.handle_connect_failed(entry.peer, now);
                    }
                    self.isolated();
                    return;
                }
                self.table.remove(key);
                if entry.up {
                    if let Some(p) = &mut self.policy {
                        p.handle_tunnel_down(entry.peer, entry.direction, now);
                    }
                }
                self.isolated();
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
                    let peer = e.peer;
                    if self.told_version.contains(&peer) {
                        self.tell_observed(peer, proto, addr).await;
                    }
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
                // The netlink socket may be busy with another dump
                // (EBUSY) when several tunnels come up at once.
                let mut tries = 0;
                let index = loop {
                    match kernel.link_index(&interface).await {
                        Ok(i) => break i,
                        Err(_) if tries < 20 => {
                            tries += 1;
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                        Err(e) => return Err(e),
                    }
                };
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
            Internal::Bootstrap(Err(e)) => {
                tracing::warn!("no bootstrap peer: {e}");
                self.isolated();
            }
            Internal::ClientRetry => self.client_connect().await,
            Internal::ResendAddressRequest { peer, attempt } => {
                if self.address_pending.contains(&peer) {
                    self.peer.send(peer, &Body::AddressRequest).await;
                    self.schedule_address_resend(peer, attempt + 1);
                }
            }
            Internal::CloseRetired { peer } => {
                if let Some(key) = self.table.find(peer, Direction::Incoming) {
                    self.log(format!("closing the tunnel from {peer}, retired by it"));
                    self.close(key);
                    if let Some(p) = &mut self.policy {
                        p.handle_tunnel_down(peer, Direction::Incoming, Instant::now());
                    }
                }
            }
            Internal::RetireAgreed { peer, id } => {
                if let Some(p) = &mut self.policy {
                    p.handle_retirement_reply(peer, id, true, Instant::now());
                }
            }
            Internal::Config(Ok(fetched)) => {
                self.fetching = false;
                self.apply_config(*fetched).await;
            }
            Internal::Config(Err(e)) => {
                self.fetching = false;
                tracing::warn!("cannot fetch the network configuration: {e}");
            }
            Internal::HostAddresses(ips) => {
                self.base_announced = addresses::announced(
                    &self.options.ip,
                    &self.options.pp,
                    &ips,
                    &self.network,
                    self.client.is_some(),
                );
                self.nat.set_host(ips);
                self.recompute_nat();
            }
            Internal::InterfaceReady {
                key,
                ifindex,
                link_local,
            } => {
                if self.table.set_ifindex(key, ifindex, link_local) {
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

    /// Recomputes what we announce and whether the policy caps its
    /// outgoing tunnels, after the host's addresses, a UPnP mapping or the
    /// learned public address changed.
    fn recompute_nat(&mut self) {
        let list = self.nat.announced(&self.base_announced);
        if list != self.announced {
            let text: Vec<String> = list
                .iter()
                .map(|(a, s)| format!("{a} ({})", s.as_str()))
                .collect();
            self.log(format!("announcing {}", text.join(" ")));
            self.announced = list;
        }
        let reach = self.nat.reachability();
        let reachable = !reach.limits_tunnels();
        if self
            .policy
            .as_ref()
            .is_some_and(|p| p.reachable() != reachable)
        {
            self.log(format!(
                "reachability {reach:?}: {}",
                if reachable {
                    "no limit on outgoing tunnels"
                } else {
                    "at most 2 outgoing tunnels"
                }
            ));
        }
        if let Some(p) = &mut self.policy {
            p.set_reachable(reachable, Instant::now());
        }
    }

    /// The UPnP mapper's status changed.
    fn upnp_status(&mut self, status: UpnpStatus) {
        let summary = format!(
            "upnp: {}{}",
            status.state,
            status
                .external_ip
                .map(|ip| format!(", external address {ip}"))
                .unwrap_or_default()
        );
        if self.nat.set_upnp(status).is_some() {
            tracing::info!("{summary}");
            self.recompute_nat();
        }
    }

    /// Index of the udp transport that hole punching uses (the listening
    /// one: its port is the one peers observed), unless udp is disabled.
    fn udp_transport(&self) -> Option<usize> {
        self.transports
            .list
            .iter()
            .position(|t| t.proto == Proto::Udp)
    }

    /// Performs what the puncher asks for and acts upon its outcomes.
    async fn drain_punch(&mut self) {
        let now = Instant::now();
        while let Some(action) = self.nat.puncher.poll_action() {
            match action {
                PunchAction::Send { peer, message } => {
                    self.peer.send(peer, &message.to_body()).await;
                }
                // The udp transport retransmits its handshake by itself:
                // later attempts need no new tunnel.
                PunchAction::Handshake { attempt: 1.., .. } => {}
                PunchAction::Handshake {
                    peer,
                    endpoint,
                    attempt: 0,
                } => self.punch_handshake(peer, endpoint, now).await,
            }
        }
        while let Some(event) = self.nat.poll_punch_event(now) {
            match event {
                PunchEvent::Succeeded { peer } => {
                    self.log(format!("hole punched to {peer}"));
                }
                PunchEvent::Failed { peer, reason } => {
                    self.log(format!(
                        "hole punching to {peer} failed ({reason:?}): routing through the mesh"
                    ));
                    let keys: Vec<TunnelKey> = self
                        .punch_keys
                        .keys()
                        .copied()
                        .filter(|k| self.table.get(*k).is_some_and(|e| e.peer == peer))
                        .collect();
                    for key in keys {
                        self.punch_keys.remove(&key);
                        self.close(key);
                    }
                    if let Some(p) = &mut self.policy {
                        p.handle_connect_failed(peer, now);
                    }
                }
            }
        }
    }

    /// Starts sending udp handshakes to `peer`'s public endpoint.
    async fn punch_handshake(
        &mut self,
        peer: NodePrefix,
        endpoint: std::net::SocketAddr,
        now: Instant,
    ) {
        let Some(t) = self.udp_transport() else {
            self.nat.puncher.cancel(&peer);
            return;
        };
        // Both sides asked at once: the session restarted, the handshakes
        // already go out.
        if self
            .punch_keys
            .keys()
            .any(|k| self.table.get(*k).is_some_and(|e| e.peer == peer))
        {
            return;
        }
        let direction = match self
            .policy
            .as_ref()
            .and_then(|p| p.tunnels().find(|i| i.peer == peer))
        {
            Some(info) if info.direction == Direction::Outgoing && !info.up => Direction::Outgoing,
            Some(_) => {
                // A tunnel with it exists already.
                self.nat.puncher.cancel(&peer);
                return;
            }
            None => Direction::Incoming,
        };
        let Some(key) = self.open(t, endpoint, Some(peer)).await else {
            self.nat.puncher.cancel(&peer);
            return;
        };
        tracing::info!("punching: udp handshakes to {peer} at {endpoint}");
        self.table
            .opened(key, peer, Proto::Udp, endpoint, VecDeque::new(), now);
        if let Some(e) = self.table.get_mut(key) {
            e.direction = direction;
        }
        self.punch_keys.insert(key, direction);
        if let Some(p) = &mut self.policy {
            p.handle_connect_progress(peer, now);
        }
    }

    /// Answers a control request; the mesh walks run in their own task
    /// (their answers come through this loop) and reply from there.
    async fn control(&mut self, request: Request, reply: tokio::sync::oneshot::Sender<Response>) {
        let response = match request {
            Request::Status { routes } => Response::Status(Box::new(self.status(routes).await)),
            Request::BootstrapPeer => Response::BootstrapPeer(self.bootstrap_peer()),
            Request::Topology => {
                let walk =
                    peers::topology(self.prefix, self.table.up_peers(), self.asks_tx.clone());
                tokio::spawn(async move {
                    let _ = reply.send(Response::Topology(walk.await));
                });
                return;
            }
            Request::Versions => {
                self.poll_routes().await;
                let mut nodes: Vec<NodePrefix> =
                    routes::destinations(&self.selected, &self.network, |_| None)
                        .into_iter()
                        .map(|(d, _)| d)
                        .collect();
                nodes.retain(|n| *n != self.prefix);
                let walk = peers::versions(nodes, self.asks_tx.clone());
                let me = control::NodeVersion {
                    prefix: self.prefix.to_string(),
                    software: Some(concat!("re6st ", env!("CARGO_PKG_VERSION")).into()),
                    config_version: Some(self.config.version),
                };
                tokio::spawn(async move {
                    let mut list = walk.await;
                    list.push(me);
                    list.sort_by(|a, b| a.prefix.cmp(&b.prefix));
                    let _ = reply.send(Response::Versions(list));
                });
                return;
            }
        };
        let _ = reply.send(response);
    }

    /// A random live tunnel peer whose addresses we know, for the
    /// registry's bootstrap endpoint, or ourselves (our announced
    /// addresses) when we have none, so that the first nodes can join the
    /// registry's node; `None` when we announce nothing either.
    fn bootstrap_peer(&self) -> Option<control::BootstrapPeer> {
        use rand::seq::SliceRandom;
        // Our tunnel peers first (certainly alive), else any routed node.
        let routed: Vec<NodePrefix> = routes::destinations(&self.selected, &self.network, |_| None)
            .into_iter()
            .map(|(d, _)| d)
            .collect();
        let mut candidates: Vec<(NodePrefix, Vec<Address>)> = Vec::new();
        for group in [self.table.up_peers(), routed] {
            candidates = self.with_addresses(group);
            if !candidates.is_empty() {
                break;
            }
        }
        candidates.shuffle(&mut rand::thread_rng());
        let (peer, addresses) = candidates.pop().or_else(|| {
            let ours: Vec<Address> = self.announced.iter().map(|(a, _)| *a).collect();
            (!ours.is_empty()).then_some((self.prefix, ours))
        })?;
        Some(control::BootstrapPeer {
            prefix: peer.to_string(),
            addresses: addresses.iter().map(ToString::to_string).collect(),
        })
    }

    /// The nodes of `peers` whose addresses the cache knows.
    fn with_addresses(&self, peers: Vec<NodePrefix>) -> Vec<(NodePrefix, Vec<Address>)> {
        peers
            .into_iter()
            .filter(|p| *p != self.prefix)
            .filter_map(|p| {
                let cached = self.cache.peer(p).ok().flatten()?;
                (!cached.addresses.is_empty()).then_some((p, cached.addresses))
            })
            .collect()
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
        let babel = self.handle.stats().await.unwrap_or_default();
        let mut stats = std::collections::HashMap::new();
        let mut locals = Vec::new();
        for (transport, t) in self.transports.list.iter().enumerate() {
            locals.push(t.tunnels.local_addr());
            for s in t.tunnels.status().await.unwrap_or_default() {
                stats.insert(
                    TunnelKey {
                        transport,
                        id: s.id,
                    },
                    s.stats,
                );
            }
        }
        let mut names = self.lan_names.clone();
        for (_, e) in self.table.iter() {
            if let (Some(i), Some(n)) = (e.ifindex, &e.interface) {
                names.insert(i, n.clone());
            }
        }
        let policy: Vec<_> = self
            .policy
            .as_ref()
            .map(|p| p.tunnels().collect())
            .unwrap_or_default();
        let snapshot = status::Snapshot {
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
                cert_not_after: status::unix(self.cert.not_after()),
            },
            tunnels: self.table.iter().collect(),
            stats: &stats,
            locals: &locals,
            policy: &policy,
            dump: &dump,
            babel,
            names: &names,
            with_routes,
            peer_cache: self.cache.len().unwrap_or(0),
            addresses: addresses::status(&self.announced),
            nat: self.nat.status(),
            peer_protocol: self.peer.stats(),
            events: self
                .events
                .iter()
                .map(|e| (e.time, e.text.clone()))
                .collect(),
            now: Instant::now(),
        };
        status::build(&snapshot)
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
        // The UPnP mappings go first, while the gateway is still reachable
        // and before anything could reuse the ports.
        if let Some(upnp) = self.upnp.take() {
            let status = upnp.stop().await;
            tracing::info!("upnp: {}", status.state);
        }
        // Dropping the handles stops the transports: tunnels close and
        // their interfaces disappear.
        self.transports.list.clear();
        if let Some((index, addr)) = self.ipv4.take() {
            if let Err(e) = self.kernel.remove_address(index, addr.into(), 32).await {
                tracing::warn!("cannot remove {addr}: {e}");
            }
        }
        match self.kernel.flush_routes().await {
            Ok(n) => tracing::info!("removed our {n} kernel routes"),
            Err(e) => tracing::warn!("cannot remove our kernel routes: {e}"),
        }
        if let Err(e) = self.cache.prune(CACHE_KEEP) {
            tracing::warn!("peer cache: {e}");
        }
    }
}

/// Starts the IPv4 payload: our subnet announced, its first address on the
/// main interface. Returns the interface index and the address (removed at
/// shutdown).
async fn start_ipv4(
    kernel: &Kernel,
    handle: &RouterHandle,
    options: &NodeOptions,
    cert: &NodeCert,
    settings: &crate::registry::config::Ipv4Settings,
) -> Result<(u32, std::net::Ipv4Addr), MeshError> {
    let serial = cert.subject_serial().ok_or_else(|| {
        MeshError::Setup("IPv4 payload: our certificate has no subject serial".into())
    })?;
    let (subnet, len) = ipv4::node_subnet(settings, serial).map_err(MeshError::Setup)?;
    let addr = ipv4::node_address(subnet);
    let index = kernel.link_index(&options.main_interface).await?;
    kernel.add_address(index, addr.into(), 32).await?;
    let prefix = babel::Prefix::new(subnet.into(), len)
        .map_err(|e| MeshError::Setup(format!("IPv4 payload: {e}")))?;
    handle.redistribute(prefix, None, 0);
    tracing::info!(
        "IPv4 payload: {subnet}/{len}, {addr} on {}",
        options.main_interface
    );
    Ok((index, addr))
}

/// The pause before asking the registry again after `failures` failed
/// bootstrap requests: 2 s doubling up to a minute.
fn bootstrap_retry(failures: u32) -> Duration {
    let shift = failures.saturating_sub(1).min(5);
    Duration::from_secs(2 << shift).min(Duration::from_secs(60))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bootstrap_backoff_doubles_up_to_a_minute() {
        let secs: Vec<u64> = (1..=8).map(|n| bootstrap_retry(n).as_secs()).collect();
        assert_eq!(secs, [2, 4, 8, 16, 32, 60, 60, 60]);
    }

    #[test]
    fn bootstrap_answer_opened_with_our_key() {
        let key = crate::pki::generate_key();
        let list =
            serde_json::to_vec(&["10.42.0.1,1194,udp", "junk", "10.42.0.1,1194,tcp"]).unwrap();
        let sealed = base64::engine::general_purpose::STANDARD
            .encode(crate::pki::seal(&key.verifying_key(), &list));
        let (peer, addresses) = open_bootstrap(&key, "0/16", &sealed).unwrap();
        assert_eq!(peer, NodePrefix::new(0, 16).unwrap());
        assert_eq!(addresses.len(), 2);
        assert_eq!(addresses[1].to_string(), "10.42.0.1,1194,tcp");
        let other = crate::pki::generate_key();
        assert!(open_bootstrap(&other, "0/16", &sealed).is_err());
        assert!(open_bootstrap(&key, "0/x", &sealed).is_err());
        assert!(open_bootstrap(&key, "0/16", "!!").is_err());
    }
}
