//! Helpers shared by the transport integration tests (`tunnel_tcp`,
//! `tunnel_quic`): two namespaces joined by a veth pair, a throw-away PKI,
//! `re6st tunnel up` processes, ping/iperf3 across, log checks.
#![allow(dead_code)] // each test crate uses a subset

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use re6st::testbed::{veth, Netns, NsChild};

pub(crate) const RE6ST: &str = env!("CARGO_BIN_EXE_re6st");

pub(crate) struct Pair {
    pub(crate) a: Netns,
    pub(crate) b: Netns,
}

/// Two namespaces joined by a veth pair: A fd00:1::1 / 10.1.0.1,
/// B fd00:1::2 / 10.1.0.2.
pub(crate) fn pair(prefix: &str) -> Pair {
    let a = Netns::new(&format!("{prefix}-a")).unwrap();
    let b = Netns::new(&format!("{prefix}-b")).unwrap();
    veth(&a, "ua", &b, "ub").unwrap();
    for (ns, dev, v6, v4) in [
        (&a, "ua", "fd00:1::1/64", "10.1.0.1/24"),
        (&b, "ub", "fd00:1::2/64", "10.1.0.2/24"),
    ] {
        ns.exec("ip", &["addr", "add", v6, "dev", dev, "nodad"])
            .unwrap();
        ns.exec("ip", &["addr", "add", v4, "dev", dev]).unwrap();
    }
    Pair { a, b }
}

pub(crate) fn pki(dir: &Path) {
    let st = Command::new(RE6ST)
        .args(["tunnel", "pki", "--dir"])
        .arg(dir)
        .args(["--nodes", "2"])
        .status()
        .unwrap();
    assert!(st.success(), "re6st tunnel pki failed");
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn spawn_link(
    transport: &str,
    ns: &Netns,
    ca_dir: &Path,
    pki: &Path,
    n: u32,
    addr: &str,
    connect: Option<(&str, &str)>,
    log: &Path,
) -> NsChild {
    let p = |d: &Path, f: String| d.join(f).to_str().unwrap().to_owned();
    let (ca, key, cert) = (
        p(ca_dir, "ca.crt".into()),
        p(pki, format!("node{n}.key")),
        p(pki, format!("node{n}.crt")),
    );
    let mut args = vec![
        "tunnel",
        "up",
        "--transport",
        transport,
        "--ca",
        &ca,
        "--key",
        &key,
        "--cert",
        &cert,
        "--listen",
        "[::]:3260",
        "--ifname-prefix",
        "tq",
        "--addr",
        addr,
        "--timeout",
        "3",
    ];
    let peer_arg;
    if let Some((remote, peer)) = connect {
        peer_arg = format!("{remote},{peer}");
        args.extend(["--peer", &peer_arg, "--once"]);
    }
    ns.spawn(RE6ST, &args, log).unwrap()
}

pub(crate) fn ping_until(ns: &Netns, target: &str, within: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < within {
        if ns.exec("ping", &["-c", "1", "-W", "1", target]).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    false
}

pub(crate) fn wait_exit(child: &mut NsChild, within: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < within {
        if child.has_exited() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

pub(crate) fn log_text(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// iperf3 A -> B over the tunnel; returns the bytes B received.
pub(crate) fn iperf(pair: &Pair, dir: &Path, target: &str) -> f64 {
    let _server = pair
        .b
        .spawn(
            "iperf3",
            &["-s", "-1", "-p", "5201"],
            &dir.join("iperf3-s.log"),
        )
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let out = pair
        .a
        .exec(
            "timeout",
            &["60", "iperf3", "-c", target, "-p", "5201", "-t", "2", "-J"],
        )
        .expect("iperf3 client");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("iperf3 json");
    json["end"]["sum_received"]["bytes"].as_f64().unwrap_or(0.0)
}
