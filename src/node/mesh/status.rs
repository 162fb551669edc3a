//! Building the control API's [`Status`] from snapshots of the mesh's
//! parts (pure: the loop gathers the snapshots, this module shapes them).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use babel::Dump;

use super::tunnels::{TunnelEntry, TunnelKey};
use crate::node::control::{
    AnnouncedAddress, BabelCounters, EventRecord, Identity, NatStatus, NeighbourStatus,
    PeerProtocolCounters, RouteStatus, Status, TunnelStatus,
};
use crate::node::peer_proto::PeerStats;
use crate::node::policy::{Direction, TunnelInfo};
use crate::pki::NodePrefix;
use crate::tunnel::TunnelStats;

/// Everything the status is made of.
pub(crate) struct Snapshot<'a> {
    /// Who we are.
    pub(crate) identity: Identity,
    /// Our tunnels.
    pub(crate) tunnels: Vec<(TunnelKey, &'a TunnelEntry)>,
    /// Their counters, by key.
    pub(crate) stats: &'a HashMap<TunnelKey, TunnelStats>,
    /// The local address of each transport, by index.
    pub(crate) locals: &'a [SocketAddr],
    /// The policy's view of its tunnels.
    pub(crate) policy: &'a [TunnelInfo<NodePrefix>],
    /// The router's state.
    pub(crate) dump: &'a Dump,
    /// The router's packet counters.
    pub(crate) babel: babel::router::Stats,
    /// Names of the interfaces Babel runs on, by index.
    pub(crate) names: &'a HashMap<u32, String>,
    /// Whether to list every route.
    pub(crate) with_routes: bool,
    /// Peers in the cache.
    pub(crate) peer_cache: usize,
    /// What we announce.
    pub(crate) addresses: Vec<AnnouncedAddress>,
    /// NAT state.
    pub(crate) nat: NatStatus,
    /// Peer-protocol counters.
    pub(crate) peer_protocol: PeerStats,
    /// Recent events.
    pub(crate) events: Vec<(SystemTime, String)>,
    /// The current time.
    pub(crate) now: Instant,
}

/// UNIX seconds of `t`.
pub(crate) fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Shapes a snapshot into the control API's status.
pub(crate) fn build(s: &Snapshot<'_>) -> Status {
    let name = |i: u32| s.names.get(&i).cloned().unwrap_or_else(|| format!("#{i}"));
    let tunnels = s
        .tunnels
        .iter()
        .map(|(key, e)| {
            let stats = s.stats.get(key);
            let info = s
                .policy
                .iter()
                .find(|t| t.peer == e.peer && t.direction == e.direction);
            let state = match (e.up, info.is_some_and(|i| i.retiring)) {
                (false, _) => "connecting",
                (true, true) => "retiring",
                (true, false) => "up",
            };
            TunnelStatus {
                peer: e.peer.to_string(),
                transport: e.proto.to_string(),
                direction: match e.direction {
                    Direction::Outgoing => "outgoing".into(),
                    Direction::Incoming => "incoming".into(),
                },
                state: state.into(),
                interface: e.interface.clone(),
                local: s.locals.get(key.transport).copied(),
                remote: e.remote,
                age_secs: s.now.saturating_duration_since(e.opened).as_secs(),
                rx_packets: stats.map_or(0, |t| t.rx_packets),
                rx_bytes: stats.map_or(0, |t| t.rx_bytes),
                tx_packets: stats.map_or(0, |t| t.tx_packets),
                tx_bytes: stats.map_or(0, |t| t.tx_bytes),
                rtt_ms: stats.and_then(|t| t.rtt).map(|r| r.as_secs_f64() * 1e3),
                routes: info.map_or(0, |i| i.routes),
                persistent: info.is_some_and(|i| i.persistent),
            }
        })
        .collect();
    let neighbours = s
        .dump
        .neighbours
        .iter()
        .map(|n| NeighbourStatus {
            interface: name(n.ifindex),
            address: n.address,
            cost: n.cost,
            rxcost: n.rxcost,
            txcost: n.txcost,
            rtt_ms: n.rtt.map(|r| r.as_secs_f64() * 1e3),
        })
        .collect();
    let selected: Vec<_> = s.dump.routes.iter().filter(|r| r.selected).collect();
    let routes = s.with_routes.then(|| {
        selected
            .iter()
            .map(|r| RouteStatus {
                prefix: r.prefix.to_string(),
                src_prefix: r.src_prefix.map(|p| p.to_string()),
                next_hop: match r.next_hop {
                    IpAddr::V6(a) => a,
                    IpAddr::V4(a) => a.to_ipv6_mapped(),
                },
                interface: name(r.ifindex),
                metric: r.metric,
            })
            .collect()
    });
    let p = s.peer_protocol;
    Status {
        identity: s.identity.clone(),
        tunnels,
        neighbours,
        route_count: selected.len(),
        routes,
        peer_cache: s.peer_cache,
        addresses: s.addresses.clone(),
        nat: s.nat.clone(),
        peer_protocol: PeerProtocolCounters {
            sent: p.sent,
            accepted: p.accepted,
            dropped: p.malformed
                + p.wrong_recipient
                + p.stale
                + p.replayed
                + p.bad_certificate
                + p.bad_signature,
        },
        babel: BabelCounters {
            tx_packets: s.babel.sent,
            rx_packets: s.babel.packets,
            tx_bytes: s.babel.bytes_sent,
            rx_bytes: s.babel.bytes_received,
        },
        events: s
            .events
            .iter()
            .map(|(t, text)| EventRecord {
                time: unix(*t),
                text: text.clone(),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use babel::router::{NeighbourInfo, RouteInfo};

    use super::*;
    use crate::node::Proto;
    use crate::tunnel::TunnelId;

    #[test]
    fn status_from_a_snapshot() {
        let now = Instant::now();
        let peer = NodePrefix::new(5, 16).unwrap();
        let key = TunnelKey {
            transport: 1,
            id: TunnelId(3),
        };
        let entry = TunnelEntry {
            peer,
            direction: Direction::Outgoing,
            proto: Proto::Tcp,
            interface: Some("re6st-0".into()),
            ifindex: Some(9),
            link_local: None,
            remote: Some("10.42.0.3:1194".parse().unwrap()),
            opened: now.checked_sub(Duration::from_secs(7)).unwrap_or(now),
            up: true,
        };
        let stats = HashMap::from([(
            key,
            TunnelStats {
                rx_bytes: 100,
                tx_bytes: 200,
                rtt: Some(Duration::from_millis(3)),
                ..TunnelStats::default()
            },
        )]);
        let policy = [TunnelInfo {
            peer,
            direction: Direction::Outgoing,
            up: true,
            routes: 4,
            persistent: false,
            retiring: true,
        }];
        let ll = "fe80::5".parse().unwrap();
        let dump = Dump {
            router_id: [0; 8],
            seqno: 0,
            interfaces: Vec::new(),
            neighbours: vec![NeighbourInfo {
                ifindex: 9,
                address: ll,
                reach: 0xffff,
                ureach: 0,
                rxcost: 96,
                txcost: 96,
                cost: 96,
                rtt: None,
                cost_multiplier: 256,
            }],
            routes: [true, false]
                .into_iter()
                .map(|selected| RouteInfo {
                    prefix: "2001:db8:42:5::/64".parse().unwrap(),
                    src_prefix: None,
                    ifindex: 9,
                    neighbour: ll,
                    next_hop: IpAddr::V6(ll),
                    router_id: [1; 8],
                    seqno: 1,
                    refmetric: 0,
                    metric: 96,
                    smoothed_metric: 96,
                    feasible: true,
                    selected,
                    installed: selected,
                })
                .collect(),
            sources: Vec::new(),
            xroutes: Vec::new(),
        };
        let names = HashMap::from([(9, "re6st-0".to_owned())]);
        let locals = ["[::]:1194".parse().unwrap(), "[::]:1194".parse().unwrap()];
        let snap = Snapshot {
            identity: Identity::default(),
            tunnels: vec![(key, &entry)],
            stats: &stats,
            locals: &locals,
            policy: &policy,
            dump: &dump,
            babel: babel::router::Stats {
                packets: 10,
                sent: 12,
                bytes_received: 1000,
                bytes_sent: 1200,
                ..Default::default()
            },
            names: &names,
            with_routes: true,
            peer_cache: 2,
            addresses: Vec::new(),
            nat: NatStatus::default(),
            peer_protocol: PeerStats {
                sent: 3,
                accepted: 2,
                stale: 1,
                bad_signature: 1,
                ..PeerStats::default()
            },
            events: vec![(UNIX_EPOCH + Duration::from_secs(5), "hello".into())],
            now,
        };
        let st = build(&snap);
        let t = &st.tunnels[0];
        assert_eq!(
            (t.peer.as_str(), t.transport.as_str(), t.state.as_str()),
            ("5/16", "tcp", "retiring")
        );
        assert_eq!(
            (t.rx_bytes, t.tx_bytes, t.routes, t.age_secs),
            (100, 200, 4, 7)
        );
        assert_eq!(t.rtt_ms, Some(3.0));
        assert_eq!(st.neighbours[0].interface, "re6st-0");
        assert_eq!(st.route_count, 1);
        assert_eq!(st.routes.as_ref().unwrap()[0].interface, "re6st-0");
        assert_eq!(st.peer_protocol.dropped, 2);
        assert_eq!((st.babel.tx_packets, st.babel.rx_packets), (12, 10));
        assert_eq!((st.babel.tx_bytes, st.babel.rx_bytes), (1200, 1000));
        assert_eq!(st.events[0].time, 5);
    }
}
