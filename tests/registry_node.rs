//! The registry and its node end to end: in network namespaces (the shared
//! `MeshBed`), a registry started with `--node-control` and three real
//! `re6st node` processes. The admin `topology` and `versions` views walk
//! the real mesh, and `re6st status` reports a real node.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use re6st::node::control::{NodeVersion, TopologyNode};
use re6st::testbed::mesh::{MeshBed, MeshOptions};

/// Quick hellos, two tunnels each.
const REGISTRY_ARGS: [&str; 6] = ["--hello", "2", "--client-count", "2", "--max-clients", "4"];

#[test]
fn registry_views_walk_a_real_mesh() {
    if !re6st::testbed::require_root("registry_views_walk_a_real_mesh") {
        return;
    }
    let opts = MeshOptions::new(env!("CARGO_BIN_EXE_re6st"), 2)
        .registry_args(REGISTRY_ARGS)
        .node_args(["--pp", "1194", "udp"]);
    let started = Instant::now();
    let mut bed = MeshBed::start(opts).expect("testbed");
    if let Err(e) = bed.wait_all_pairs(started, Duration::from_secs(90), |_, _, _| {}) {
        for i in 0..bed.len() {
            eprintln!("--- {} ---\n{}", bed.name(i), bed.log_tail(i, 40));
        }
        panic!("{e}");
    }
    let prefixes: BTreeSet<String> = (0..bed.len()).map(|i| bed.prefix(i).to_owned()).collect();
    let admin = bed.registry_admin_url();

    // Topology: every node answered with its tunnel neighbours, and the
    // tunnels agree at both ends (bounded walk: retry while a tunnel is
    // still settling).
    let deadline = Instant::now() + Duration::from_secs(60);
    let nodes = loop {
        let json = bed
            .re6st(0, &["registry", "topology", "--json", "--registry", &admin])
            .expect("registry topology");
        let nodes: Vec<TopologyNode> = serde_json::from_str(&json).expect(&json);
        let seen: BTreeSet<String> = nodes.iter().map(|n| n.prefix.clone()).collect();
        let symmetric = nodes.iter().all(|n| {
            n.neighbours.iter().flatten().all(|m| {
                nodes.iter().any(|o| {
                    &o.prefix == m && o.neighbours.iter().flatten().any(|x| x == &n.prefix)
                })
            })
        });
        let answered = nodes
            .iter()
            .all(|n| n.neighbours.as_ref().is_some_and(|l| !l.is_empty()));
        if seen == prefixes && answered && symmetric {
            break nodes;
        }
        assert!(Instant::now() < deadline, "topology never settled: {json}");
        bed.sleep(Duration::from_secs(2)).unwrap();
    };
    eprintln!("topology: {nodes:?}");
    let text = bed
        .re6st(0, &["registry", "topology", "--registry", &admin])
        .unwrap();
    eprintln!("{text}");
    assert!(text.starts_with("3 nodes, "), "{text}");
    let dot = bed
        .re6st(0, &["registry", "topology", "--dot", "--registry", &admin])
        .unwrap();
    assert!(dot.starts_with("graph re6st {\n"), "{dot}");
    assert!(dot.contains(" -- "), "{dot}");

    // Versions: every node, with our software and the same configuration.
    let json = bed
        .re6st(0, &["registry", "versions", "--json", "--registry", &admin])
        .unwrap();
    let versions: Vec<NodeVersion> = serde_json::from_str(&json).expect(&json);
    let seen: BTreeSet<String> = versions.iter().map(|v| v.prefix.clone()).collect();
    assert_eq!(seen, prefixes, "{json}");
    for v in &versions {
        let software = v.software.as_deref().unwrap_or_default();
        assert!(software.contains(env!("CARGO_PKG_VERSION")), "{json}");
        assert_eq!(v.config_version, versions[0].config_version, "{json}");
        assert!(v.config_version.is_some(), "{json}");
    }

    // `re6st status` on a node host, human and JSON.
    let run = bed.run_dir(1);
    let run = run.to_str().unwrap();
    let text = bed.re6st(1, &["status", "--run", run]).unwrap();
    eprintln!("{text}");
    assert!(
        text.starts_with(&format!("node {} (", bed.prefix(1))),
        "{text}"
    );
    assert!(text.contains(" up "), "no tunnel up: {text}");
    let json = bed.re6st(1, &["status", "--run", run, "--json"]).unwrap();
    let status: re6st::node::control::Status = serde_json::from_str(&json).expect(&json);
    assert_eq!(status.identity.prefix, bed.prefix(1));
}
