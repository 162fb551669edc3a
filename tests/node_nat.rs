//! Reachability behind NAT (issue 6) end to end: real `re6st registry` and
//! `re6st node` processes in network namespaces, some hosts behind NAT
//! gateway namespaces (nftables masquerade, port-preserving), one of them
//! running Debian's miniupnpd, some dropping all UDP
//! (`re6st::testbed::nat`).
//!
//! 1. a node behind miniupnpd maps its ports, accepts incoming tunnels from
//!    public nodes, and the mappings are gone after a clean stop;
//! 2. a node behind NAT without UPnP learns its public address from peers
//!    (source `peers`) and keeps at most 2 outgoing tunnels;
//! 3. two nodes behind two port-preserving NATs get a direct udp tunnel by
//!    hole punching;
//! 4. behind a gateway dropping all UDP, a node forms its tunnels over tcp
//!    and reaches every node;
//! 5. a mixed mesh of 9 (public, UPnP, plain NAT, UDP blocked): all pairs
//!    reachable.
//!
//! Bounds are generous (convergence, not speed); measured times are
//! printed. On failure the relevant logs are printed and the bed's files
//! kept.

use std::time::{Duration, Instant};

use re6st::node::control::Status;
use re6st::testbed::mesh::{HostKind, MeshBed, MeshOptions};
use re6st::testbed::require_root;

/// Quick hellos; enough tunnels wanted that the 2-tunnel cap binds.
const PP: [&str; 6] = ["--pp", "1194", "udp", "--pp", "1194", "tcp"];

fn have(tool: &str) -> bool {
    std::process::Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Whether the test can run: root, and nft (miniupnpd too when `upnp`).
fn can_run(test: &str, upnp: bool) -> bool {
    if !require_root(test) {
        return false;
    }
    let missing: Vec<&str> = ["nft", "miniupnpd"]
        .into_iter()
        .take(if upnp { 2 } else { 1 })
        .filter(|t| !have(t))
        .collect();
    if missing.is_empty() {
        return true;
    }
    assert_ne!(
        std::env::var("CI").as_deref(),
        Ok("true"),
        "{test}: {missing:?} mandatory under CI (ci/setup installs them)"
    );
    eprintln!("{test}: skipped ({missing:?} missing)");
    false
}

fn options(name: &str, nodes: usize, client_count: usize) -> MeshOptions {
    let mut opts = MeshOptions::new(env!("CARGO_BIN_EXE_re6st"), nodes)
        .registry_args([
            "--hello",
            "2",
            "--client-count",
            &client_count.to_string(),
            "--max-clients",
            "8",
        ])
        .node_args(PP);
    opts.name = name.into();
    opts
}

/// Every node's log tail and, for NAT hosts, the gateway's miniupnpd log.
fn dump(bed: &MeshBed) {
    for i in 0..bed.len() {
        eprintln!(
            "--- {} ({:?}, public {}) ---\n{}",
            bed.name(i),
            bed.host_kind(i),
            bed.public_ip(i),
            bed.log_tail(i, 60)
        );
        if let Some(gw) = bed.gateway(i) {
            if gw.config().upnp {
                let log = std::fs::read_to_string(gw.miniupnpd_log()).unwrap_or_default();
                eprintln!("--- {} miniupnpd ---\n{log}", bed.name(i));
            }
        }
    }
    eprintln!("{}", bed.graph());
}

/// Polls `check` every 500 ms until it gives `Some`, for at most
/// `timeout`; on timeout dumps the bed and panics with `what` and the
/// last `Err` note.
fn wait_for<T>(
    bed: &MeshBed,
    what: &str,
    timeout: Duration,
    mut check: impl FnMut(&MeshBed) -> Result<T, String>,
) -> (T, Duration) {
    let start = Instant::now();
    loop {
        match check(bed) {
            Ok(v) => return (v, start.elapsed()),
            Err(note) if start.elapsed() > timeout => {
                dump(bed);
                panic!("{what}: not within {timeout:?}; last: {note}");
            }
            Err(_) => std::thread::sleep(Duration::from_millis(500)),
        }
    }
}

fn status(bed: &MeshBed, i: usize) -> Result<Status, String> {
    bed.status(i).map_err(|e| e.to_string())
}

/// The status as JSON, to read fields whatever their Rust shape.
fn status_json(bed: &MeshBed, i: usize) -> Result<serde_json::Value, String> {
    serde_json::to_value(status(bed, i)?).map_err(|e| e.to_string())
}

/// The announced addresses learned from `source`, as `(ip, port, proto)`.
fn announced(s: &Status, source: &str) -> Vec<(String, u16, String)> {
    s.addresses
        .iter()
        .filter(|a| a.source == source)
        .filter_map(|a| {
            let mut it = a.address.split(',');
            let ip = it.next()?.to_owned();
            let port = it.next()?.parse().ok()?;
            let proto = it.next()?.to_owned();
            Some((ip, port, proto))
        })
        .collect()
}

/// The reachability `re6st status` reports, wherever the status puts it.
fn reachability(v: &serde_json::Value) -> Option<String> {
    let found = [
        &v["reachability"],
        &v["nat"]["reachability"],
        &v["reachability"]["state"],
    ]
    .into_iter()
    .find_map(|f| f.as_str().map(str::to_lowercase));
    found.filter(|r| !r.is_empty())
}

/// Outgoing tunnels of `s` that count against the cap (not retiring).
fn outgoing(s: &Status) -> usize {
    s.tunnels
        .iter()
        .filter(|t| t.direction == "outgoing" && t.state != "retiring")
        .count()
}

fn all_pairs(bed: &mut MeshBed, started: Instant, timeout: Duration, label: &str) -> Duration {
    let result = bed.wait_all_pairs(started, timeout, |_, m, t| {
        let (ok, all) = m.counts();
        let missing = m.missing();
        let shown = if !missing.is_empty() && missing.len() <= 16 {
            format!(" (missing {})", missing.join(", "))
        } else {
            String::new()
        };
        eprintln!(
            "{label} {:>5.1} s: {ok}/{all} pairs{shown}",
            t.as_secs_f64()
        );
    });
    match result {
        Ok((m, t)) => {
            eprintln!(
                "{label}: all pairs reachable {:.1} s after start\n{m}",
                t.as_secs_f64()
            );
            t
        }
        Err(e) => {
            dump(bed);
            panic!("{label}: {e}");
        }
    }
}

#[test]
fn upnp_node_maps_ports_accepts_incoming_and_unmaps_at_stop() {
    let test = "upnp_node_maps_ports_accepts_incoming_and_unmaps_at_stop";
    if !can_run(test, true) {
        return;
    }
    // n1 behind miniupnpd, no --ip (UPnP is the default). The public
    // nodes want 3 tunnels each (everyone); n1 opens only one itself, so
    // at least one public node must come in through the mapping.
    let opts = options("r6u", 3, 3)
        .host_kind(1, HostKind::NatUpnp)
        .node_extra(1, ["--client-count", "1"]);
    let started = Instant::now();
    let mut bed = MeshBed::start(opts).expect("testbed");
    let ext = bed.public_ip(1).to_string();
    let host = bed.underlay(1);

    // The gateway redirects a udp and a tcp port to n1's 1194, and n1
    // announces exactly those (source upnp).
    let (mapped, _) = wait_for(
        &bed,
        "n1 announcing its UPnP mappings",
        Duration::from_secs(90),
        |bed| {
            let gw = bed.gateway(1).expect("n1 has a gateway");
            let redirects = gw.redirections().map_err(|e| e.to_string())?;
            let s = status(bed, 1)?;
            let upnp = announced(&s, "upnp");
            let want: Vec<(String, u16, String)> = ["udp", "tcp"]
                .into_iter()
                .filter_map(|proto| {
                    let r = redirects.iter().find(|r| {
                        r.proto == proto && r.internal == std::net::SocketAddrV4::new(host, 1194)
                    })?;
                    Some((ext.clone(), r.external_port, proto.to_owned()))
                })
                .collect();
            if want.len() == 2 && want.iter().all(|w| upnp.contains(w)) {
                Ok(want)
            } else {
                Err(format!(
                    "redirections {redirects:?}, announced {:?}",
                    s.addresses
                ))
            }
        },
    );
    eprintln!(
        "n1 mapped {mapped:?} {:.1} s after start",
        (started.elapsed()).as_secs_f64()
    );
    if let Ok(v) = status_json(&bed, 1) {
        eprintln!("n1 reachability: {:?}", reachability(&v));
        let upnp = &v["nat"]["upnp"];
        if !upnp.is_null() {
            assert_eq!(upnp["state"], "ready", "{upnp}");
            assert_eq!(upnp["external_ip"], ext.as_str(), "{upnp}");
        }
        if let Some(r) = reachability(&v) {
            assert!(!r.contains("unreachable"), "n1 mapped but says {r}");
        }
    }

    // A public node opens a tunnel to n1 through the mapping.
    let public: Vec<String> = [0, 2, 3]
        .iter()
        .map(|&i| bed.prefix(i).to_owned())
        .collect();
    let (incoming, _) = wait_for(
        &bed,
        "an incoming tunnel from a public node to n1",
        Duration::from_secs(120),
        |bed| {
            let s = status(bed, 1)?;
            s.tunnels
                .iter()
                .find(|t| t.direction == "incoming" && t.state == "up" && public.contains(&t.peer))
                .cloned()
                .ok_or_else(|| format!("n1 tunnels: {:?}", s.tunnels))
        },
    );
    eprintln!(
        "n1 accepted a {} tunnel from {} {:.1} s after start",
        incoming.transport,
        incoming.peer,
        started.elapsed().as_secs_f64()
    );
    all_pairs(&mut bed, started, Duration::from_secs(120), "upnp");

    // A clean stop removes the mappings from the gateway.
    let stop = Instant::now();
    let exit = bed.stop(1, Duration::from_secs(15)).expect("n1 stops");
    assert!(exit.success(), "n1 exited with {exit}");
    let left = bed.gateway(1).unwrap().redirections().expect("nft");
    assert!(
        left.is_empty(),
        "mappings left on the gateway after n1 stopped: {left:?}\n{}",
        bed.log_tail(1, 30)
    );
    eprintln!(
        "n1 stopped and unmapped in {:.1} s",
        stop.elapsed().as_secs_f64()
    );
}

#[test]
fn nat_node_learns_its_address_from_peers_and_keeps_two_outgoing_tunnels() {
    let test = "nat_node_learns_its_address_from_peers_and_keeps_two_outgoing_tunnels";
    if !can_run(test, false) {
        return;
    }
    // Everyone wants 4 tunnels: without the cap n1 would open 4.
    let opts = options("r6l", 4, 4)
        .host_kind(1, HostKind::Nat)
        .node_extra(1, ["--ip", "any"]);
    let started = Instant::now();
    let mut bed = MeshBed::start(opts).expect("testbed");
    let ext = bed.public_ip(1).to_string();

    let (learned, _) = wait_for(
        &bed,
        "n1 announcing its public address learned from peers",
        Duration::from_secs(120),
        |bed| {
            let s = status(bed, 1)?;
            let peers = announced(&s, "peers");
            if peers.iter().any(|(ip, _, _)| *ip == ext) {
                Ok(peers)
            } else {
                Err(format!("announced {:?}", s.addresses))
            }
        },
    );
    eprintln!(
        "n1 learned {learned:?} from peers {:.1} s after start",
        started.elapsed().as_secs_f64()
    );
    if let Ok(v) = status_json(&bed, 1) {
        let r = reachability(&v);
        eprintln!("n1 reachability: {r:?}");
        if let Some(r) = r {
            assert!(r.contains("unreachable"), "n1 behind NAT says {r}");
        }
    }

    // The cap: at most 2 outgoing tunnels, once the surplus is retired,
    // and it holds.
    let (_, t) = wait_for(
        &bed,
        "n1 down to 2 outgoing tunnels",
        Duration::from_secs(90),
        |bed| {
            let s = status(bed, 1)?;
            let n = outgoing(&s);
            if n <= 2 {
                Ok(())
            } else {
                Err(format!("{n} outgoing: {:?}", s.tunnels))
            }
        },
    );
    eprintln!(
        "n1 at <= 2 outgoing tunnels {:.1} s after learning",
        t.as_secs_f64()
    );
    let watch = Instant::now();
    let mut max = 0;
    while watch.elapsed() < Duration::from_secs(20) {
        let s = status(&bed, 1).expect("status");
        let n = outgoing(&s);
        max = max.max(n);
        if n > 2 {
            dump(&bed);
            panic!(
                "n1 has {n} outgoing tunnels while unreachable: {:?}",
                s.tunnels
            );
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    eprintln!("n1 kept at most {max} outgoing tunnels over 20 s");
    all_pairs(&mut bed, started, Duration::from_secs(120), "learn");
    let s = status(&bed, 1).expect("status");
    assert!(
        s.tunnels.iter().any(|t| t.state == "up"),
        "n1 has no tunnel: {:?}",
        s.tunnels
    );
}

#[test]
fn two_nat_nodes_punch_a_direct_udp_tunnel() {
    let test = "two_nat_nodes_punch_a_direct_udp_tunnel";
    if !can_run(test, false) {
        return;
    }
    // n1 and n2 behind their NATs; reg and n3 public, so that each NAT
    // node has two peers to learn its public address from. Each wants the
    // other as a persistent neighbour (outside the 2-tunnel cap), so the
    // tunnel between them is wanted whatever the policy draws.
    let opts = options("r6p", 3, 2)
        .host_kind(1, HostKind::Nat)
        .host_kind(2, HostKind::Nat)
        .node_extra(1, ["--ip", "any"])
        .node_extra(2, ["--ip", "any"]);
    let started = Instant::now();
    let mut bed = MeshBed::build(opts).expect("testbed");
    let (n1, n2) = (bed.prefix(1).to_owned(), bed.prefix(2).to_owned());
    bed.add_node_args(1, ["--neighbour", &n2]);
    bed.add_node_args(2, ["--neighbour", &n1]);
    bed.start_nodes().expect("start nodes");
    // Neither NAT lets the other in unasked.
    for (from, to) in [(1, 2), (2, 1)] {
        let target = bed.public_ip(to).to_string();
        assert!(
            bed.netns(from)
                .exec("ping", &["-c", "1", "-W", "1", &target])
                .is_err(),
            "{} reaches {}'s gateway unasked: the test proves nothing",
            bed.name(from),
            bed.name(to)
        );
    }
    let (gw1, gw2) = (bed.public_ip(1), bed.public_ip(2));
    let (tunnel, t) = wait_for(
        &bed,
        "a direct udp tunnel between n1 and n2",
        Duration::from_secs(150),
        |bed| {
            let mut seen = Vec::new();
            for (i, peer, peer_gw) in [(1, &n2, gw2), (2, &n1, gw1)] {
                let s = status(bed, i)?;
                if let Some(t) = s.tunnels.iter().find(|t| {
                    t.peer == *peer
                        && t.state == "up"
                        && t.transport == "udp"
                        && t.remote
                            .is_some_and(|r| r.ip() == std::net::IpAddr::V4(peer_gw))
                }) {
                    return Ok((i, t.clone()));
                }
                seen.push(s.tunnels);
            }
            Err(format!("tunnels of n1, n2: {seen:?}"))
        },
    );
    eprintln!(
        "direct udp tunnel {} ({}) -> {:?} ({}) {:.1} s after start",
        bed.name(tunnel.0),
        tunnel.1.direction,
        tunnel.1.remote,
        tunnel.1.peer,
        t.as_secs_f64()
    );
    // The nodes count it as a punched tunnel.
    let punched: Vec<Option<u64>> = [1, 2]
        .iter()
        .map(|&i| status_json(&bed, i).ok()?["nat"]["punched"].as_u64())
        .collect();
    eprintln!("punched (n1, n2): {punched:?}");
    if punched.iter().any(Option::is_some) {
        assert!(
            punched.iter().flatten().sum::<u64>() >= 1,
            "a direct tunnel, but no punching session succeeded: {punched:?}"
        );
    }
    all_pairs(&mut bed, started, Duration::from_secs(60), "punch");
    // It carries traffic: n1 and n2 are neighbours over it, not through reg.
    assert!(bed.graph().linked(1, 2), "{}", bed.graph());
}

#[test]
fn udp_blocked_node_tunnels_over_tcp_and_reaches_everyone() {
    let test = "udp_blocked_node_tunnels_over_tcp_and_reaches_everyone";
    if !can_run(test, false) {
        return;
    }
    let opts = options("r6t", 3, 2).host_kind(1, HostKind::NatNoUdp);
    let started = Instant::now();
    let mut bed = MeshBed::start(opts).expect("testbed");
    all_pairs(&mut bed, started, Duration::from_secs(150), "no-udp");
    let (tunnels, _) = wait_for(&bed, "n1 with tunnels up", Duration::from_secs(30), |bed| {
        let s = status(bed, 1)?;
        let up: Vec<_> = s.tunnels.into_iter().filter(|t| t.state == "up").collect();
        if up.is_empty() {
            Err("no tunnel up".into())
        } else {
            Ok(up)
        }
    });
    let summary: Vec<String> = tunnels
        .iter()
        .map(|t| format!("{}:{}:{}", t.peer, t.direction, t.transport))
        .collect();
    eprintln!("n1 tunnels: {summary:?}");
    assert!(
        tunnels.iter().all(|t| t.transport == "tcp"),
        "udp tunnel through a gateway dropping all udp: {summary:?}"
    );
}

#[test]
fn mixed_mesh_of_nine_reaches_all_pairs() {
    let test = "mixed_mesh_of_nine_reaches_all_pairs";
    if !can_run(test, true) {
        return;
    }
    // reg, n1, n2 public; n3, n4 UPnP; n5, n6 plain NAT (n5 --ip any, n6
    // the default); n7, n8 UDP blocked.
    let opts = options("r6m", 8, 3)
        .host_kind(3, HostKind::NatUpnp)
        .host_kind(4, HostKind::NatUpnp)
        .host_kind(5, HostKind::Nat)
        .host_kind(6, HostKind::Nat)
        .host_kind(7, HostKind::NatNoUdp)
        .host_kind(8, HostKind::NatNoUdp)
        .node_extra(5, ["--ip", "any"]);
    let started = Instant::now();
    let mut bed = MeshBed::start(opts).expect("testbed");
    all_pairs(&mut bed, started, Duration::from_secs(200), "mixed");
    let graph = bed.graph();
    eprintln!("{graph}");
    for i in [7, 8] {
        let s = status(&bed, i).expect("status");
        assert!(
            s.tunnels
                .iter()
                .filter(|t| t.state == "up")
                .all(|t| t.transport == "tcp"),
            "{}: {:?}",
            bed.name(i),
            s.tunnels
        );
    }
}
