//! Routers in the simulator: convergence on line, ring, grid and random
//! graphs, reconvergence without forwarding loops, starvation, source-specific
//! routing, MAC, RTT, cost multiplier, flush.

use std::net::{IpAddr, Ipv6Addr};
use std::time::Duration;

use babel::router::{MacConfig, MacKey};
use babel::sim::{NodeId, Sim, TraceError};
use babel::{InterfaceConfig, InterfaceKind, MacAlgorithm, Prefix, RouterConfig};

const MS: Duration = Duration::from_millis(1);
const SEC: Duration = Duration::from_secs(1);

fn prefix_of(n: NodeId) -> Prefix {
    let a = Ipv6Addr::new(0x2001, 0xdb8, (n >> 16) as u16, n as u16, 0, 0, 0, 0);
    Prefix::new(IpAddr::V6(a), 64).unwrap()
}

fn addr_of(n: NodeId) -> IpAddr {
    IpAddr::V6(Ipv6Addr::new(
        0x2001,
        0xdb8,
        (n >> 16) as u16,
        n as u16,
        0,
        0,
        0,
        1,
    ))
}

/// A simulation of `n` routers, each originating its own /64.
fn nodes(seed: u64, n: usize) -> Sim {
    let mut sim = Sim::new(seed);
    for i in 0..n {
        let id = sim.add_node();
        sim.redistribute(id, prefix_of(i));
    }
    sim
}

fn reaches(sim: &Sim, from: NodeId, to: NodeId) -> bool {
    matches!(sim.trace(from, addr_of(to), None), Ok(p) if p.last() == Some(&to))
}

fn all_pairs_reach(sim: &Sim) -> bool {
    (0..sim.len()).all(|a| (0..sim.len()).all(|b| reaches(sim, a, b)))
}

/// Pairs to check on big graphs: everyone to and from node 0 and a few
/// thousand random pairs.
fn sample_pairs(n: usize, seed: u64) -> Vec<(NodeId, NodeId)> {
    let mut pairs: Vec<(NodeId, NodeId)> = (0..n).flat_map(|i| [(0, i), (i, 0)]).collect();
    let mut x = seed | 1;
    for _ in 0..3000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        pairs.push(((x % n as u64) as usize, ((x >> 32) % n as u64) as usize));
    }
    pairs
}

fn assert_no_loops(sim: &Sim, pairs: &[(NodeId, NodeId)]) {
    for &(a, b) in pairs {
        if let Err(TraceError::Loop(path)) = sim.trace(a, addr_of(b), None) {
            panic!(
                "forwarding loop at {:?} from {a} to {b}: {path:?}",
                sim.elapsed()
            );
        }
    }
}

fn all_pairs(n: usize) -> Vec<(NodeId, NodeId)> {
    (0..n).flat_map(|a| (0..n).map(move |b| (a, b))).collect()
}

/// Runs for `d` in steps of `step`, asserting loop-freedom at every step.
fn run_loop_free(sim: &mut Sim, d: Duration, step: Duration, pairs: &[(NodeId, NodeId)]) {
    let mut t = Duration::ZERO;
    while t < d {
        sim.run_for(step);
        t += step;
        assert_no_loops(sim, pairs);
    }
}

#[test]
fn line_converges() {
    let n = 12;
    let mut sim = nodes(1, n);
    for i in 1..n {
        sim.connect(i - 1, i, InterfaceKind::Wired, MS);
    }
    let t = sim.run_until(SEC, Duration::from_secs(120), all_pairs_reach);
    assert!(t.is_some(), "line did not converge");
    assert_eq!(
        sim.trace(0, addr_of(n - 1), None).unwrap(),
        (0..n).collect::<Vec<_>>()
    );
    // Metric grows by 96 per hop on wired links.
    let route = sim
        .node(0)
        .router
        .installed_route(prefix_of(n - 1), None)
        .unwrap();
    assert_eq!(route.metric, 96 * (n as u16 - 1));
}

#[test]
fn ring_reconverges_after_failure_and_recovery_without_loops() {
    let n = 16;
    let mut sim = nodes(2, n);
    let links: Vec<_> = (0..n)
        .map(|i| sim.connect(i, (i + 1) % n, InterfaceKind::Wired, 2 * MS))
        .collect();
    assert!(sim
        .run_until(SEC, Duration::from_secs(120), all_pairs_reach)
        .is_some());
    let pairs = all_pairs(n);
    // Node 0 reaches node 1 directly.
    assert_eq!(sim.trace(0, addr_of(1), None).unwrap(), vec![0, 1]);
    // A silent failure (no flush): hellos time out.
    sim.set_link_up(links[0], false);
    run_loop_free(&mut sim, Duration::from_secs(60), 100 * MS, &pairs);
    assert!(
        all_pairs_reach(&sim),
        "ring did not route around the failure"
    );
    assert_eq!(sim.trace(0, addr_of(1), None).unwrap().len(), n);
    // Recovery.
    sim.set_link_up(links[0], true);
    run_loop_free(&mut sim, Duration::from_secs(60), 100 * MS, &pairs);
    assert!(all_pairs_reach(&sim));
    assert_eq!(sim.trace(0, addr_of(1), None).unwrap(), vec![0, 1]);
}

#[test]
fn grid_reconverges_after_each_failure_and_recovery() {
    let side = 6;
    let n = side * side;
    let mut sim = nodes(3, n);
    let mut links = Vec::new();
    for r in 0..side {
        for c in 0..side {
            let i = r * side + c;
            if c + 1 < side {
                links.push(sim.connect(i, i + 1, InterfaceKind::Tunnel, 5 * MS));
            }
            if r + 1 < side {
                links.push(sim.connect(i, i + side, InterfaceKind::Tunnel, 5 * MS));
            }
        }
    }
    assert!(sim
        .run_until(SEC, Duration::from_secs(120), all_pairs_reach)
        .is_some());
    let pairs = all_pairs(n);
    for &l in links.iter().step_by(7) {
        sim.cut(l);
        run_loop_free(&mut sim, Duration::from_secs(10), 200 * MS, &pairs);
        assert!(all_pairs_reach(&sim), "no reconvergence after cutting {l}");
        sim.set_link_up(l, true);
        run_loop_free(&mut sim, Duration::from_secs(30), 500 * MS, &pairs);
        assert!(
            all_pairs_reach(&sim),
            "no reconvergence after restoring {l}"
        );
    }
}

/// A connected random graph: a random tree plus extra random edges, like
/// re6st's random tunnels.
fn random_graph(sim: &mut Sim, n: usize, extra: usize, seed: u64) -> Vec<usize> {
    let mut x = seed | 1;
    let mut rnd = |m: usize| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x % m as u64) as usize
    };
    let mut links = Vec::new();
    for i in 1..n {
        let j = rnd(i);
        links.push(sim.connect(i, j, InterfaceKind::Tunnel, (1 + rnd(20) as u32) * MS));
    }
    for _ in 0..extra {
        let (a, b) = (rnd(n), rnd(n));
        if a != b {
            links.push(sim.connect(a, b, InterfaceKind::Tunnel, (1 + rnd(20) as u32) * MS));
        }
    }
    links
}

#[test]
fn random_graph_of_100_reconverges_without_loops() {
    let n = 100;
    let mut sim = nodes(4, n);
    let links = random_graph(&mut sim, n, 150, 4);
    assert!(sim
        .run_until(SEC, Duration::from_secs(180), all_pairs_reach)
        .is_some());
    let pairs = all_pairs(n);
    // Cut links on the extra (redundant) part: the graph stays connected
    // through the tree.
    for &l in links[n..].iter().step_by(37) {
        sim.cut(l);
        run_loop_free(&mut sim, Duration::from_secs(10), 250 * MS, &pairs);
        assert!(all_pairs_reach(&sim));
    }
}

#[test]
fn random_graph_of_1000_converges() {
    let n = 1000;
    let mut sim = nodes(5, n);
    random_graph(&mut sim, n, 1500, 5);
    let pairs = sample_pairs(n, 5);
    let t = sim.run_until(5 * SEC, Duration::from_secs(300), |s| {
        pairs.iter().all(|&(a, b)| reaches(s, a, b))
    });
    assert!(t.is_some(), "1000 routers did not converge");
    assert_no_loops(&sim, &pairs);
    for i in 0..n {
        assert_eq!(sim.node(i).router.destination_count(), n - 1);
    }
}

#[test]
fn starvation_is_resolved_by_seqno_request() {
    // S - A - D and S - B - C - D: D prefers A; when S-A dies, D's route
    // through C is unfeasible (longer than D's feasibility distance) until
    // S increases its seqno.
    let mut sim = nodes(6, 5);
    let (s, a, b, c, d) = (0, 1, 2, 3, 4);
    let sa = sim.connect(s, a, InterfaceKind::Tunnel, MS);
    sim.connect(a, d, InterfaceKind::Tunnel, MS);
    sim.connect(s, b, InterfaceKind::Tunnel, MS);
    sim.connect(b, c, InterfaceKind::Tunnel, MS);
    sim.connect(c, d, InterfaceKind::Tunnel, MS);
    assert!(sim
        .run_until(SEC, Duration::from_secs(60), all_pairs_reach)
        .is_some());
    assert_eq!(sim.trace(d, addr_of(s), None).unwrap(), vec![d, a, s]);
    let seqno = sim.node(s).router.seqno();
    sim.cut(sa);
    // Far less than a route expiry (3.5 × 16 s): only a seqno request
    // makes the long path feasible this fast.
    let t = sim.run_until(100 * MS, Duration::from_secs(5), |sim| {
        sim.trace(d, addr_of(s), None)
            .is_ok_and(|p| p == vec![d, c, b, s])
    });
    assert!(t.is_some(), "D starved");
    assert_ne!(
        sim.node(s).router.seqno(),
        seqno,
        "S did not bump its seqno"
    );
}

#[test]
fn source_specific_default_routes_follow_their_source() {
    // Two gateways export ::/0 for different source prefixes; a third node
    // exports a plain default route. X, behind them, must send traffic to
    // the gateway of its source address.
    let mut sim = nodes(7, 4);
    let (x, g1, g2, h) = (0, 1, 2, 3);
    for g in [g1, g2, h] {
        sim.connect(x, g, InterfaceKind::Tunnel, MS);
    }
    let net1: Prefix = "2001:db8:1::/48".parse().unwrap();
    let net2: Prefix = "2001:db8:2::/48".parse().unwrap();
    let default = Prefix::V6_DEFAULT;
    sim.command(g1, |r, now| r.redistribute(default, Some(net1), 0, now));
    sim.command(g2, |r, now| r.redistribute(default, Some(net2), 0, now));
    sim.command(h, |r, now| r.redistribute(default, None, 0, now));
    sim.run_for(Duration::from_secs(20));
    let k = &sim.node(x).kernel;
    assert!(k.contains_key(&(default, Some(net1))));
    assert!(k.contains_key(&(default, Some(net2))));
    assert!(k.contains_key(&(default, None)));
    let out: IpAddr = "2001:4860::8888".parse().unwrap();
    let hop = |src: &str| {
        let src: IpAddr = src.parse().unwrap();
        let route = sim
            .node(x)
            .kernel
            .values()
            .filter(|r| r.prefix.contains_addr(out))
            .filter(|r| r.src_prefix.is_none_or(|p| p.contains_addr(src)));
        route
            .max_by_key(|r| r.src_prefix.map_or(0, |p| p.len()))
            .map(|r| r.next_hop)
    };
    let via = |n: NodeId| {
        sim.link(n - 1)
            .members
            .iter()
            .find(|m| m.0 == n)
            .map(|m| IpAddr::V6(m.2))
    };
    assert_eq!(hop("2001:db8:1::5"), via(g1));
    assert_eq!(hop("2001:db8:2::5"), via(g2));
    assert_eq!(hop("2001:db8:3::5"), via(h));
}

#[test]
fn re6st_filter_and_no_subtree_fallback() {
    // X runs re6st's filter for network 2001:db8::/32 on a kernel without
    // IPv6 subtrees: it accepts only the network's source-specific default
    // route, and installs it without source prefix.
    let net: Prefix = "2001:db8::/32".parse().unwrap();
    let mut sim = Sim::new(8);
    let x = sim.add_node_with(RouterConfig {
        filters: babel::Filter::re6st(net, false),
        kernel_has_ipv6_subtrees: false,
        network: Some(net),
        ..RouterConfig::default()
    });
    let (g, h, s) = (sim.add_node(), sim.add_node(), sim.add_node());
    for n in [g, h, s] {
        sim.connect(x, n, InterfaceKind::Tunnel, MS);
    }
    let default = Prefix::V6_DEFAULT;
    let other: Prefix = "2001:db9::/32".parse().unwrap();
    let specific: Prefix = "2001:db8:5::/48".parse().unwrap();
    sim.command(g, |r, now| r.redistribute(default, Some(net), 0, now));
    sim.command(h, |r, now| r.redistribute(default, None, 0, now));
    sim.command(s, |r, now| r.redistribute(default, Some(other), 0, now));
    sim.command(s, |r, now| r.redistribute(specific, Some(net), 0, now));
    sim.run_for(Duration::from_secs(20));
    let kernel: Vec<_> = sim.node(x).kernel.keys().copied().collect();
    assert_eq!(kernel, vec![(default, None)], "{kernel:?}");
    let route = sim.node(x).kernel[&(default, None)];
    assert_eq!(route.next_hop, IpAddr::V6(sim.link(0).members[1].2));
}

fn mac_key(secret: &[u8]) -> MacKey {
    MacKey::new(MacAlgorithm::HmacSha256, secret).unwrap()
}

fn mac_node(sim: &mut Sim, mac: Option<MacConfig>, prefix: NodeId) -> NodeId {
    let n = sim.add_node_with(RouterConfig {
        mac,
        ..RouterConfig::default()
    });
    sim.redistribute(n, prefix_of(prefix));
    n
}

#[test]
fn mac_accepts_shared_key_and_rejects_others() {
    let mut sim = Sim::new(9);
    let good = MacConfig::new(mac_key(b"shared secret"));
    let a = mac_node(&mut sim, Some(good.clone()), 0);
    let b = mac_node(&mut sim, Some(good.clone()), 1);
    let wrong = mac_node(&mut sim, Some(MacConfig::new(mac_key(b"wrong"))), 2);
    let unsigned = mac_node(&mut sim, None, 3);
    let blake = MacKey::new(MacAlgorithm::Blake2s128, b"blake key").unwrap();
    let c = mac_node(&mut sim, Some(MacConfig::new(blake.clone())), 4);
    sim.segment(&[a, b, wrong, unsigned], InterfaceKind::Wired, MS);
    sim.connect(b, c, InterfaceKind::Wired, MS);
    sim.run_for(Duration::from_secs(30));
    assert!(reaches(&sim, a, b) && reaches(&sim, b, a));
    assert!(!reaches(&sim, a, 2) && !reaches(&sim, 2, a));
    assert!(!reaches(&sim, a, 3));
    assert!(sim.node(a).router.stats().unauthenticated > 0);
    // B and C use different algorithms: nothing passes until B accepts
    // C's key and C accepts B's.
    assert!(!reaches(&sim, b, 4));
    sim.command(b, |r, _| {
        r.set_mac(Some(MacConfig {
            accept: vec![blake.clone()],
            ..good.clone()
        }))
    });
    sim.command(c, |r, _| {
        r.set_mac(Some(MacConfig {
            accept: vec![mac_key(b"shared secret")],
            ..MacConfig::new(blake.clone())
        }))
    });
    sim.run_for(Duration::from_secs(30));
    assert!(reaches(&sim, a, 4) && reaches(&sim, 4, a));
    // Rotation: A accepts unsigned packets; the unsigned node ignores MACs.
    sim.command(a, |r, _| {
        r.set_mac(Some(MacConfig {
            accept_unsigned: true,
            ..good.clone()
        }))
    });
    sim.run_for(Duration::from_secs(30));
    assert!(reaches(&sim, a, 3) && reaches(&sim, 3, a));
    // Still no packets with a wrong MAC.
    assert!(!reaches(&sim, a, 2));
}

#[test]
fn rtt_penalty_steers_traffic_to_low_rtt_path() {
    // A - B - C and A - D - C, equal hop counts; the A-B tunnel is slow.
    let mut sim = nodes(10, 4);
    let (a, b, c, d) = (0, 1, 2, 3);
    let ab = sim.connect(a, b, InterfaceKind::Tunnel, 100 * MS);
    sim.connect(b, c, InterfaceKind::Tunnel, MS);
    let ad = sim.connect(a, d, InterfaceKind::Tunnel, MS);
    sim.connect(d, c, InterfaceKind::Tunnel, MS);
    sim.run_for(Duration::from_secs(60));
    assert_eq!(sim.trace(a, addr_of(c), None).unwrap(), vec![a, d, c]);
    let info = sim.node(a).router.dump();
    let slow = info.neighbours.iter().find(|n| n.ifindex == 1).unwrap();
    let rtt = slow.rtt.expect("rtt measured");
    assert!(rtt >= 150 * MS && rtt <= 250 * MS, "{rtt:?}");
    assert_eq!(slow.cost, 96 + 96);
    // Swap the latencies: the smoothed RTT follows and traffic moves.
    sim.set_latency(ab, MS);
    sim.set_latency(ad, 100 * MS);
    let t = sim.run_until(SEC, Duration::from_secs(300), |sim| {
        sim.trace(a, addr_of(c), None)
            .is_ok_and(|p| p == vec![a, b, c])
    });
    assert!(t.is_some(), "traffic did not move to the faster path");
}

#[test]
fn cost_multiplier_drains_a_neighbour() {
    let mut sim = nodes(11, 4);
    let (a, b, c, d) = (0, 1, 2, 3);
    sim.connect(a, b, InterfaceKind::Wired, MS);
    sim.connect(b, c, InterfaceKind::Wired, MS);
    sim.connect(a, d, InterfaceKind::Wired, MS);
    sim.connect(d, c, InterfaceKind::Wired, MS);
    sim.run_for(Duration::from_secs(30));
    let first = sim.trace(a, addr_of(c), None).unwrap()[1];
    let (drain, other) = if first == b { (1, d) } else { (2, b) };
    sim.command(a, |r, now| r.set_cost_multiplier(drain, None, 256 * 4, now));
    let t = sim.run_until(100 * MS, Duration::from_secs(30), |sim| {
        sim.trace(a, addr_of(c), None).is_ok_and(|p| p[1] == other)
    });
    assert!(t.is_some(), "traffic stayed on the drained neighbour");
    let n = sim.node(a).router.dump().neighbours;
    assert_eq!(n.iter().find(|n| n.ifindex == drain).unwrap().cost, 96 * 4);
    // The neighbour itself stays reachable, just expensive.
    assert!(reaches(&sim, a, if drain == 1 { b } else { d }));
}

#[test]
fn flush_neighbour_retracts_at_once() {
    let mut sim = nodes(12, 3);
    let (a, b, c) = (0, 1, 2);
    sim.connect(a, b, InterfaceKind::Tunnel, MS);
    let bc = sim.connect(b, c, InterfaceKind::Tunnel, MS);
    assert!(sim
        .run_until(SEC, Duration::from_secs(60), all_pairs_reach)
        .is_some());
    let c_addr = sim.link(bc).members[1].2;
    let ifindex = sim.link(bc).members[0].1;
    sim.command(b, |r, now| r.flush_neighbour(ifindex, c_addr, now));
    sim.set_link_up(bc, false);
    // B forgets C's prefix immediately ...
    assert!(!sim.node(b).kernel.contains_key(&(prefix_of(c), None)));
    assert!(sim.node(b).events.iter().any(|e| matches!(e,
        babel::Event::NeighbourDown { address, .. } if *address == c_addr)));
    // ... and A hears the retraction within a fraction of a second.
    sim.run_for(100 * MS);
    assert!(!sim.node(a).kernel.contains_key(&(prefix_of(c), None)));
}

#[test]
fn lossy_wireless_segment_converges() {
    let n = 8;
    let mut sim = nodes(13, n);
    let seg = sim.segment(&(0..n).collect::<Vec<_>>(), InterfaceKind::Wireless, 2 * MS);
    sim.set_loss(seg, 0.2);
    assert!(sim
        .run_until(SEC, Duration::from_secs(120), all_pairs_reach)
        .is_some());
    // Every route is direct (single hop on the shared segment) and costs at
    // least the nominal 256.
    for a in 0..n {
        for b in 0..n {
            if a != b {
                let r = sim
                    .node(a)
                    .router
                    .installed_route(prefix_of(b), None)
                    .unwrap();
                assert!(r.metric >= 256, "{r:?}");
            }
        }
    }
}

/// A new tunnel becomes usable within about a second at the default 4 s
/// hello interval, even when one side's first hello is lost because the far
/// end's interface was not up yet: a new neighbour and a link that just
/// became bidirectional each trigger an early hello with IHUs, so the link
/// does not wait for scheduled hellos.
#[test]
fn new_tunnel_is_usable_before_the_second_scheduled_hello() {
    for seed in 1..=20 {
        let mut sim = nodes(seed, 2);
        let link = sim.connect(0, 1, InterfaceKind::Tunnel, 5 * MS);
        let (_, ifindex, ll) = sim.link(link).members[1];
        // Node 1's end comes up 600 ms after node 0's, which has sent its
        // first hello (jittered within an eighth of the interval) by then.
        sim.command(1, |r, now| r.remove_interface(ifindex, now));
        sim.run_for(600 * MS);
        sim.command(1, |r, now| {
            r.add_interface(
                ifindex,
                InterfaceConfig::new(InterfaceKind::Tunnel, ll),
                now,
            )
        });
        let t = sim.run_until(10 * MS, Duration::from_secs(20), all_pairs_reach);
        let t = t.expect("two routers on a tunnel never converged");
        assert!(
            t < Duration::from_millis(2_000),
            "seed {seed}: routes over a new tunnel after {t:?} (hello interval 4 s)"
        );
    }
}
