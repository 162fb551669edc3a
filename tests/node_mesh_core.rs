//! The node's runtime end to end: a registry and three `re6st node`
//! processes in network namespaces (the registry's node and two others)
//! form tunnels, route over them with Babel and reach each other's re6st
//! addresses; a clean stop leaves nothing behind.
//!
//! Bounds are generous (convergence, not speed); the measured time is
//! printed.

use std::time::{Duration, Instant};

use re6st::node::control::{Request, Response};
use re6st::testbed::mesh::{MeshBed, MeshOptions};

/// Demo-friendly network parameters: quick hellos, two tunnels each.
const REGISTRY_ARGS: [&str; 6] = ["--hello", "2", "--client-count", "2", "--max-clients", "4"];

#[test]
fn three_nodes_form_a_mesh_and_reach_each_other() {
    if !re6st::testbed::require_root("three_nodes_form_a_mesh_and_reach_each_other") {
        return;
    }
    let opts = MeshOptions::new(env!("CARGO_BIN_EXE_re6st"), 2)
        .registry_args(REGISTRY_ARGS)
        .node_args(["--pp", "1194", "udp", "--pp", "1194", "tcp"]);
    let started = Instant::now();
    let mut bed = MeshBed::start(opts).expect("testbed");
    let result = bed.wait_all_pairs(started, Duration::from_secs(90), |_, m, t| {
        let (ok, all) = m.counts();
        eprintln!("{:>5.1} s: {ok}/{all} pairs reachable", t.as_secs_f64());
    });
    let (matrix, elapsed) = match result {
        Ok(r) => r,
        Err(e) => {
            for i in 0..bed.len() {
                eprintln!("--- {} ---\n{}", bed.name(i), bed.log_tail(i, 40));
            }
            panic!("{e}");
        }
    };
    eprintln!(
        "all pairs of 3 nodes reachable {:.1} s after start\n{matrix}",
        elapsed.as_secs_f64()
    );

    if std::env::var_os("MESH_CORE_LOGS").is_some() {
        for i in 0..bed.len() {
            eprintln!("--- {} ---\n{}", bed.name(i), bed.log_tail(i, 60));
        }
    }
    // Every node has tunnels up and a route to each other node.
    for i in 0..bed.len() {
        let status = bed.status(i).expect("status");
        let up = status.tunnels.iter().filter(|t| t.state != "connecting");
        assert!(up.count() >= 1, "{}: no tunnel up", bed.name(i));
        assert!(
            status.route_count >= 2,
            "{}: {} routes",
            bed.name(i),
            status.route_count
        );
        assert!(
            !status.addresses.is_empty(),
            "{}: announces nothing",
            bed.name(i)
        );
    }
    // The registry's node walks the mesh over the peer protocol.
    match bed.request(0, &Request::Topology).expect("topology") {
        Response::Topology(nodes) => {
            assert_eq!(nodes.len(), 3, "{nodes:?}");
            assert!(nodes.iter().all(|n| n.neighbours.is_some()), "{nodes:?}");
        }
        other => panic!("unexpected answer {other:?}"),
    }
    match bed.request(0, &Request::Versions).expect("versions") {
        Response::Versions(nodes) => {
            assert_eq!(nodes.len(), 3, "{nodes:?}");
            assert!(
                nodes.iter().all(|n| n.config_version.is_some()),
                "{nodes:?}"
            );
        }
        other => panic!("unexpected answer {other:?}"),
    }

    // A clean stop: exit status 0, no interface, address or route left.
    for (name, status) in bed.shutdown(Duration::from_secs(15)) {
        let status = status.unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(status.success(), "{name} exited with {status}");
    }
    for i in 0..bed.len() {
        let left = bed.leftovers(i).expect("leftovers");
        assert!(left.is_empty(), "{} left {left:?}", bed.name(i));
    }
}
