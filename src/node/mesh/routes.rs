//! The Babel router of the node, the route installer, and the mapping of
//! Babel routes to the tunnel policy's view (destination node → the tunnel
//! peer it is routed through).
//!
//! # What we announce
//!
//! - Our subnet (`<network><prefix bits>::/<len>`), **not** source-specific:
//!   it is reachable from anywhere inside the overlay, and a plain route
//!   works on kernels without IPv6 subtrees.
//! - With `--gateway`, `::/0 from <network>`: a default route for traffic
//!   whose source is inside the network only. [`babel::Filter::re6st`]
//!   makes every node accept a default route only in that source-specific
//!   form and never announce a plain one.
//! - With an IPv4 payload configured, our IPv4 subnet.

use std::net::{IpAddr, Ipv6Addr};
use std::time::{Duration, Instant};

use babel::{Filter, InterfaceConfig, InterfaceKind, MacAlgorithm, MacConfig, MacKey, Prefix};
use babel::{Router, RouterConfig, RttConfig};
use rand::RngCore;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::MeshError;
use crate::kernel::Kernel;
use crate::node::options::BabelOptions;
use crate::node::policy::Via;
use crate::pki::{Network, NodePrefix};
use crate::registry::config::BabelKeys;
use crate::routing::{install, BabelSocket, Driver, InstallConfig, InstallStats, RouterHandle};

/// How long to wait for an interface's link-local address.
pub(crate) const LINK_LOCAL_WAIT: Duration = Duration::from_secs(15);

/// The network prefix as a Babel prefix.
pub(crate) fn network_prefix(network: &Network) -> Prefix {
    // A pki::Network is a valid prefix by its invariant.
    Prefix::new(IpAddr::V6(network.addr()), network.len()).unwrap_or(Prefix::V6_DEFAULT)
}

/// Our subnet as a Babel prefix.
pub(crate) fn subnet_prefix(network: &Network, prefix: &NodePrefix) -> Result<Prefix, MeshError> {
    let (addr, len) = network
        .subnet(prefix)
        .map_err(|e| MeshError::Setup(e.to_string()))?;
    Prefix::new(IpAddr::V6(addr), len).map_err(|e| MeshError::Setup(e.to_string()))
}

/// The router, started: the driver task, its handle, the installer task.
pub(crate) struct RouterParts {
    /// Commands the router.
    pub(crate) handle: RouterHandle,
    /// The driver (returns the router after its linger).
    pub(crate) driver: JoinHandle<Router>,
    /// The installer (finishes when the driver is gone).
    pub(crate) installer: JoinHandle<Result<InstallStats, crate::kernel::Error>>,
    /// Tells the driver to retract and stop.
    pub(crate) stop: tokio::sync::oneshot::Sender<()>,
}

/// Starts the router on the Babel port with re6st's filters, and the
/// installer into `table`.
pub(crate) async fn start(
    kernel: &Kernel,
    network: &Network,
    gateway: bool,
    mac: Option<MacConfig>,
    rtt: RttConfig,
    table: u32,
    linger: Duration,
) -> Result<RouterParts, MeshError> {
    let subtrees = kernel.has_ipv6_subtrees().await.unwrap_or_else(|e| {
        tracing::warn!("cannot tell whether the kernel has IPv6 subtrees ({e}); assuming not");
        false
    });
    if !subtrees {
        tracing::warn!("kernel without IPv6 subtrees: source-specific routes are limited");
    }
    let mut router_id = [0; 8];
    rand::thread_rng().fill_bytes(&mut router_id);
    let net = network_prefix(network);
    let config = RouterConfig {
        router_id,
        seed: rand::thread_rng().next_u64(),
        rtt,
        mac,
        filters: Filter::re6st(net, gateway),
        kernel_has_ipv6_subtrees: subtrees,
        network: Some(net),
    };
    let router = Router::new(config, Instant::now());
    let socket = BabelSocket::bind().map_err(MeshError::BabelSocket)?;
    let (routes_tx, routes_rx) = mpsc::unbounded_channel();
    let install_config = InstallConfig {
        table,
        ..InstallConfig::default()
    };
    let installer = tokio::spawn(install::run(install_config, routes_rx));
    let (driver, handle) = Driver::new(router, socket, routes_tx, None);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let driver = tokio::spawn(async move {
        driver
            .run(
                async move {
                    let _ = stopped.await;
                },
                linger,
            )
            .await
    });
    tracing::info!(router_id = %hex::encode(router_id), "babel router started");
    Ok(RouterParts {
        handle,
        driver,
        installer,
        stop,
    })
}

/// The router's RTT parameters from the options (babeld/re6st defaults for
/// the rest).
pub(crate) fn rtt_config(babel: &BabelOptions) -> RttConfig {
    let mut rtt = RttConfig {
        max_rtt_penalty: 96,
        ..RttConfig::default()
    };
    if let Some(d) = babel.rtt_min {
        rtt.rtt_min_ms = u32::try_from(d.as_millis()).unwrap_or(u32::MAX);
    }
    if let Some(d) = babel.rtt_max {
        rtt.rtt_max_ms = u32::try_from(d.as_millis()).unwrap_or(u32::MAX);
    }
    if let Some(p) = babel.max_rtt_penalty {
        rtt.max_rtt_penalty = p;
    }
    rtt
}

/// The Babel configuration of a tunnel interface.
pub(crate) fn tunnel_interface(
    link_local: Ipv6Addr,
    hello: Duration,
    rtt: RttConfig,
) -> InterfaceConfig {
    let mut c = InterfaceConfig::new(InterfaceKind::Tunnel, link_local);
    c.hello_interval = hello;
    c.update_interval = hello * 4;
    c.rtt = Some(rtt);
    c
}

/// The Babel configuration of a LAN interface (`-i`).
pub(crate) fn lan_interface(link_local: Ipv6Addr, hello: Duration, mtu: u32) -> InterfaceConfig {
    let mut c = InterfaceConfig::new(InterfaceKind::Wired, link_local);
    c.hello_interval = hello;
    c.update_interval = hello * 4;
    if mtu > 0 {
        c.mtu = (mtu as usize).saturating_sub(48).max(512);
    }
    c
}

/// The MAC configuration for the network's Babel keys (HMAC-SHA256; the
/// first accepted key that is not the signing key stays accepted during a
/// staged rotation).
pub(crate) fn mac_config(keys: &BabelKeys) -> Result<MacConfig, String> {
    let key = |hex_text: &str| {
        let secret = hex::decode(hex_text).map_err(|e| format!("babel key is not hex: {e}"))?;
        MacKey::new(MacAlgorithm::HmacSha256, &secret).map_err(|e| format!("babel key: {e}"))
    };
    let mut mac = MacConfig::new(key(&keys.sign)?);
    for a in &keys.accept {
        if *a != keys.sign {
            mac.accept.push(key(a)?);
        }
    }
    Ok(mac)
}

/// Waits for a usable link-local address on interface `index`.
pub(crate) async fn wait_link_local(
    kernel: &Kernel,
    index: u32,
) -> Result<Ipv6Addr, crate::kernel::Error> {
    let deadline = Instant::now() + LINK_LOCAL_WAIT;
    loop {
        match kernel.link_local(index).await {
            Ok(a) => return Ok(a),
            // Not there yet, or the netlink socket busy with another dump
            // (several tunnels come up at once): try again.
            Err(e) if Instant::now() < deadline => {
                tracing::debug!(index, "link-local address: {e}; retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// A selected route as the mesh needs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SelectedRoute {
    /// Destination.
    pub(crate) prefix: Prefix,
    /// Source prefix.
    pub(crate) src_prefix: Option<Prefix>,
    /// Outgoing interface.
    pub(crate) ifindex: u32,
}

/// The destinations of the selected routes that are node subnets of
/// `network`, each with the tunnel peer the route goes through
/// (`peer_of_ifindex`), or [`Via::Other`] for a LAN interface. Source-
/// specific routes and prefixes that are not a node subnet are skipped.
pub(crate) fn destinations(
    routes: &[SelectedRoute],
    network: &Network,
    peer_of_ifindex: impl Fn(u32) -> Option<NodePrefix>,
) -> Vec<(NodePrefix, Via<NodePrefix>)> {
    let mut out: Vec<(NodePrefix, Via<NodePrefix>)> = Vec::new();
    for r in routes {
        if r.src_prefix.is_some() {
            continue;
        }
        let IpAddr::V6(addr) = r.prefix.addr() else {
            continue;
        };
        let Ok(dest) = network.prefix_of(addr, r.prefix.len()) else {
            continue;
        };
        let via = peer_of_ifindex(r.ifindex).map_or(Via::Other, Via::Tunnel);
        out.push((dest, via));
    }
    out.sort_by_key(|(d, _)| *d);
    out.dedup_by_key(|(d, _)| *d);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(p: &str, src: Option<&str>, ifindex: u32) -> SelectedRoute {
        SelectedRoute {
            prefix: p.parse().unwrap(),
            src_prefix: src.map(|s| s.parse().unwrap()),
            ifindex,
        }
    }

    #[test]
    fn routes_map_to_nodes_and_tunnels() {
        let network: Network = "2001:db8:42::/48".parse().unwrap();
        let routes = [
            route("2001:db8:42:5::/64", None, 10),
            route("2001:db8:42:6::/64", None, 11),
            route("2001:db8:42:7::/64", None, 99),
            // Not node subnets, or not ours: skipped.
            route("::/0", Some("2001:db8:42::/48"), 10),
            route("2001:db8:43:1::/64", None, 10),
            route("2001:db8:42::/48", None, 10),
            route("10.0.0.0/24", None, 10),
        ];
        let peer = |i| match i {
            10 => Some(NodePrefix::new(5, 16).unwrap()),
            11 => Some(NodePrefix::new(9, 16).unwrap()),
            _ => None,
        };
        let d = destinations(&routes, &network, peer);
        let n = |v| NodePrefix::new(v, 16).unwrap();
        assert_eq!(
            d,
            vec![
                (n(5), Via::Tunnel(n(5))),
                (n(6), Via::Tunnel(n(9))),
                (n(7), Via::Other),
            ]
        );
    }

    #[test]
    fn mac_keys_from_the_network_configuration() {
        let keys = BabelKeys {
            sign: "00".repeat(32),
            accept: vec!["00".repeat(32), "11".repeat(32)],
        };
        let mac = mac_config(&keys).unwrap();
        assert_eq!(mac.accept.len(), 1);
        let bad = BabelKeys {
            sign: "zz".into(),
            accept: vec![],
        };
        assert!(mac_config(&bad).is_err());
    }

    #[test]
    fn interface_configurations() {
        let ll: Ipv6Addr = "fe80::1".parse().unwrap();
        let t = tunnel_interface(
            ll,
            Duration::from_secs(2),
            rtt_config(&BabelOptions::default()),
        );
        assert_eq!(t.kind, InterfaceKind::Tunnel);
        assert_eq!(t.update_interval, Duration::from_secs(8));
        assert_eq!(t.rtt.unwrap().max_rtt_penalty, 96);
        let l = lan_interface(ll, Duration::from_secs(4), 1500);
        assert_eq!(l.mtu, 1452);
        assert_eq!(l.kind, InterfaceKind::Wired);
    }
}
