//! Helpers shared by the transport integration tests (`tunnel_udp`,
//! `tunnel_tcp`, `tunnel_quic`): two namespaces joined by a veth pair, a
//! throw-away PKI, `re6st tunnel up` processes, ping/iperf3 across, log
//! checks.
#![allow(dead_code)] // each test crate uses a subset

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use re6st::testbed::{veth, Netns, NsChild};

pub(crate) const RE6ST: &str = env!("CARGO_BIN_EXE_re6st");

/// B's listening address over the IPv6 underlay.
pub(crate) const B_V6: &str = "[fd00:1::2]:3260";
/// B's listening address over the IPv4 underlay.
pub(crate) const B_V4: &str = "10.1.0.2:3260";

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

/// A tunnel between node 1 in A and node 2 in B (`re6st tunnel up` each).
pub(crate) struct Tunnel {
    pub(crate) a: NsChild,
    pub(crate) b: NsChild,
    pub(crate) la: PathBuf,
    pub(crate) lb: PathBuf,
}

/// Starts B listening (node 2 of the PKI in `dir`, `<overlay>::2/64`),
/// then A (node 1, `<overlay>::1/64`) opening a tunnel to B at `remote`
/// that expects CN "2/16"; logs `<tag>-a.log`, `<tag>-b.log` in `dir`.
pub(crate) fn tunnel(
    transport: &str,
    pair: &Pair,
    dir: &Path,
    tag: &str,
    remote: &str,
    overlay: &str,
) -> Tunnel {
    let (la, lb) = (
        dir.join(format!("{tag}-a.log")),
        dir.join(format!("{tag}-b.log")),
    );
    let b = spawn_link(
        transport,
        &pair.b,
        dir,
        dir,
        2,
        &format!("{overlay}::2/64"),
        None,
        &lb,
    );
    std::thread::sleep(Duration::from_millis(300));
    let a = spawn_link(
        transport,
        &pair.a,
        dir,
        dir,
        1,
        &format!("{overlay}::1/64"),
        Some((remote, "2/16")),
        &la,
    );
    Tunnel { a, b, la, lb }
}

/// Asserts that A pings B's overlay address through `t` and that iperf3
/// moves more than a megabyte across; `what` names the tunnel in messages.
pub(crate) fn assert_carries(pair: &Pair, dir: &Path, t: &Tunnel, overlay: &str, what: &str) {
    let target = format!("{overlay}::2");
    assert!(
        ping_until(&pair.a, &target, Duration::from_secs(30)),
        "no ping across the {what}\nA: {}\nB: {}",
        log_text(&t.la),
        log_text(&t.lb)
    );
    let bytes = iperf(pair, dir, &target);
    assert!(
        bytes > 1e6,
        "iperf3 moved only {bytes} bytes over the {what}"
    );
}

/// Sets a `transport` tunnel up over the IPv6 underlay, kills B and
/// asserts that A notices (it exits; generous bound, the dead-peer timeout
/// is 3 s). Returns A's log and how long A took.
pub(crate) fn kill_peer(transport: &str) -> (String, Duration) {
    let dir = tempfile::tempdir().unwrap();
    pki(dir.path());
    let pair = pair(&format!("{transport}d"));
    let mut t = tunnel(transport, &pair, dir.path(), "dead", B_V6, "fd00:2");
    assert!(
        ping_until(&pair.a, "fd00:2::2", Duration::from_secs(30)),
        "tunnel never came up"
    );
    t.b.signal(nix::sys::signal::Signal::SIGKILL).unwrap();
    let killed = Instant::now();
    assert!(
        wait_exit(&mut t.a, Duration::from_secs(20)),
        "A never noticed its peer died"
    );
    (log_text(&t.la), killed.elapsed())
}

/// Waits until the log at `path` contains `needle`; false after `within`.
pub(crate) fn wait_log(path: &Path, needle: &str, within: Duration) -> bool {
    wait_count(path, needle, 1, within)
}

/// Waits until the log at `path` contains `needle` `count` times; false
/// after `within`.
pub(crate) fn wait_count(path: &Path, needle: &str, count: usize, within: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < within {
        if log_text(path).matches(needle).count() >= count {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

/// Asserts that A cannot reach B's overlay address fd00:2::2.
pub(crate) fn assert_no_ping(pair: &Pair) {
    assert!(pair
        .a
        .exec("ping", &["-c", "1", "-W", "1", "fd00:2::2"])
        .is_err());
}

/// Brings a `transport` tunnel up over the IPv6, then the IPv4 underlay
/// (new namespaces `<ns>-a`/`<ns>-b` each time) and asserts that it
/// carries ping and iperf3 and that B logged its peer "1/16".
pub(crate) fn assert_carries_over_both_underlays(transport: &str, ns: &str) {
    let dir = tempfile::tempdir().unwrap();
    pki(dir.path());
    for (underlay, remote) in [("ipv6", B_V6), ("ipv4", B_V4)] {
        let pair = pair(ns);
        let t = tunnel(transport, &pair, dir.path(), underlay, remote, "fd00:2");
        let what = format!("{transport} tunnel over {underlay}");
        assert_carries(&pair, dir.path(), &t, "fd00:2", &what);
        let b_log = log_text(&t.lb);
        assert!(
            b_log.contains(&format!("{transport} tunnel 0 up")) && b_log.contains("1/16"),
            "B did not log the peer: {b_log}"
        );
    }
}

/// The set-up of the refusal tests: our network's and a foreign network's
/// PKIs, and B (node 2 of ours) listening with `transport`.
pub(crate) struct Refusals {
    pub(crate) b: NsChild,
    pub(crate) lb: PathBuf,
    pub(crate) pair: Pair,
    transport: String,
    ours: tempfile::TempDir,
    foreign: tempfile::TempDir,
}

/// Starts B for the refusal tests (namespaces `<ns>-a`/`<ns>-b`).
pub(crate) fn refusals(transport: &str, ns: &str) -> Refusals {
    let ours = tempfile::tempdir().unwrap();
    let foreign = tempfile::tempdir().unwrap();
    pki(ours.path());
    pki(foreign.path());
    let pair = pair(ns);
    let lb = ours.path().join("b.log");
    let o = ours.path();
    let b = spawn_link(transport, &pair.b, o, o, 2, "fd00:2::2/64", None, &lb);
    std::thread::sleep(Duration::from_millis(300));
    Refusals {
        b,
        lb,
        pair,
        transport: transport.to_owned(),
        ours,
        foreign,
    }
}

impl Refusals {
    /// Starts node 1 in A, trusting our CA, with the foreign network's
    /// certificate when `foreign`, opening a tunnel to B that expects CN
    /// `peer`; logs to `<name>.log`. Returns the process and its log.
    pub(crate) fn dial(&self, foreign: bool, peer: &str, name: &str) -> (NsChild, PathBuf) {
        let o = self.ours.path();
        let certs = if foreign { self.foreign.path() } else { o };
        let la = o.join(format!("{name}.log"));
        let a = spawn_link(
            &self.transport,
            &self.pair.a,
            o,
            certs,
            1,
            "fd00:2::1/64",
            Some((B_V6, peer)),
            &la,
        );
        (a, la)
    }
}
