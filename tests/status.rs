//! `re6st status` end to end: the real binary talks to a control socket
//! served by `control::serve`, with a task standing in for the node's main
//! loop (the daemon itself is tested in `tests/node_*.rs`).

use std::path::Path;
use std::process::Output;

use re6st::node::control::{
    self, ControlCall, Identity, Request, Response, RouteStatus, Status, TunnelStatus,
};
use tokio::sync::mpsc;

const BIN: &str = env!("CARGO_BIN_EXE_re6st");

fn sample(routes: bool) -> Status {
    Status {
        identity: Identity {
            prefix: "5/16".into(),
            subnet: "2001:db8:42:5::/64".into(),
            address: Some("2001:db8:42:5::1".parse().unwrap()),
            network: "2001:db8:42::/48".into(),
            config_version: 3,
            software: "0.1.0".into(),
            uptime_secs: 42,
            cert_not_after: 1_826_000_000,
        },
        tunnels: vec![TunnelStatus {
            peer: "9/16".into(),
            transport: "tcp".into(),
            direction: "outgoing".into(),
            state: "up".into(),
            interface: Some("re6st-7".into()),
            ..Default::default()
        }],
        route_count: 1,
        routes: routes.then(|| {
            vec![RouteStatus {
                prefix: "2001:db8:42:9::/64".into(),
                src_prefix: None,
                next_hop: "fe80::9".parse().unwrap(),
                interface: "re6st-7".into(),
                metric: 96,
            }]
        }),
        ..Default::default()
    }
}

/// Runs `re6st status ARGS` in a blocking task while the fake node answers.
async fn status(args: &[&str]) -> Output {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(BIN)
            .arg("status")
            .args(&args)
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

fn fake_node(run: &Path) -> tokio::task::JoinHandle<Vec<Request>> {
    let listener = control::bind(&control::socket_path(run)).unwrap();
    let (tx, mut rx) = mpsc::channel::<ControlCall>(4);
    tokio::spawn(control::serve(listener, tx));
    tokio::spawn(async move {
        let mut asked = Vec::new();
        while let Some((request, reply)) = rx.recv().await {
            let answer = match request {
                Request::Status { routes } => Response::Status(Box::new(sample(routes))),
                _ => Response::Error("not a node".into()),
            };
            asked.push(request);
            let _ = reply.send(answer);
            if asked.len() == 3 {
                break;
            }
        }
        asked
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_prints_the_node_state() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().to_str().unwrap();
    let node = fake_node(dir.path());

    let out = status(&["--run", run]).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.starts_with("node 5/16 (2001:db8:42:5::/64), address 2001:db8:42:5::1\n"),
        "{text}"
    );
    assert!(
        text.contains("tunnels: 1 (1 outgoing, 0 incoming)"),
        "{text}"
    );
    assert!(text.contains("re6st-7"), "{text}");
    assert!(
        !text.contains("fe80::9"),
        "routes only with --routes: {text}"
    );

    let out = status(&["--run", run, "--routes"]).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(text.contains("2001:db8:42:9::/64"), "{text}");

    // The run directory can come from the node's configuration file.
    let config = dir.path().join("re6st.toml");
    std::fs::write(&config, format!("run = {run:?}\nregistry = \"http://x\"\n")).unwrap();
    let out = status(&["--config", config.to_str().unwrap(), "--json"]).await;
    assert!(out.status.success());
    let parsed: Status = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(parsed, sample(false));

    let asked = node.await.unwrap();
    assert_eq!(
        asked,
        vec![
            Request::Status { routes: false },
            Request::Status { routes: true },
            Request::Status { routes: false },
        ]
    );
}

#[tokio::test]
async fn status_without_a_node_says_so_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let out = status(&["--run", dir.path().to_str().unwrap()]).await;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.starts_with("re6st: error: no node answers on "),
        "{err}"
    );
    assert!(out.stdout.is_empty());
}
