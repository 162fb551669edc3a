//! The tcp transport between two network namespaces, through real
//! `re6st tunnel up` processes and real TUN devices: IPv6 ping and an iperf3
//! transfer across (over an IPv6 and an IPv4 underlay), the tunnel working
//! while an nft rule drops all UDP (where the quic transport cannot come
//! up), a peer with a foreign certificate refused with a log line, a killed
//! peer detected at once.

use std::path::Path;
use std::time::{Duration, Instant};

use re6st::testbed::{require_root, Netns, NsChild};

#[path = "common/link.rs"]
mod link;

use link::{iperf, log_text, ping_until, pki, spawn_link, wait_exit, Pair};

fn pair() -> Pair {
    link::pair("tt")
}

/// Starts `re6st tunnel up --transport tcp` in `ns` with node `n`'s
/// certificate from `pki`; `connect` = (address, expected CN).
fn link_up(
    ns: &Netns,
    pki: &Path,
    n: u32,
    addr: &str,
    connect: Option<(&str, &str)>,
    log: &Path,
) -> NsChild {
    link_up_ca(ns, pki, pki, n, addr, connect, log)
}

/// As [`link_up`], trusting the CA in `ca_dir` (maybe another network's).
fn link_up_ca(
    ns: &Netns,
    ca_dir: &Path,
    pki: &Path,
    n: u32,
    addr: &str,
    connect: Option<(&str, &str)>,
    log: &Path,
) -> NsChild {
    spawn_link("tcp", ns, ca_dir, pki, n, addr, connect, log)
}

/// As [`link_up`] with another transport.
fn link_up_with(
    transport: &str,
    ns: &Netns,
    pki: &Path,
    n: u32,
    addr: &str,
    connect: Option<(&str, &str)>,
    log: &Path,
) -> NsChild {
    spawn_link(transport, ns, pki, pki, n, addr, connect, log)
}

#[test]
fn tcp_tunnel_carries_ipv6_over_both_underlays() {
    if !require_root("tcp_tunnel_carries_ipv6_over_both_underlays") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    pki(dir.path());
    for (underlay, remote) in [("ipv6", "[fd00:1::2]:3260"), ("ipv4", "10.1.0.2:3260")] {
        let pair = pair();
        let (la, lb) = (
            dir.path().join(format!("a-{underlay}.log")),
            dir.path().join(format!("b-{underlay}.log")),
        );
        let _b = link_up(&pair.b, dir.path(), 2, "fd00:2::2/64", None, &lb);
        std::thread::sleep(Duration::from_millis(300));
        let _a = link_up(
            &pair.a,
            dir.path(),
            1,
            "fd00:2::1/64",
            Some((remote, "2/16")),
            &la,
        );
        assert!(
            ping_until(&pair.a, "fd00:2::2", Duration::from_secs(30)),
            "no ping across the tcp tunnel over {underlay}\nA: {}\nB: {}",
            log_text(&la),
            log_text(&lb)
        );
        let bytes = iperf(&pair, dir.path(), "fd00:2::2");
        assert!(
            bytes > 1e6,
            "iperf3 moved only {bytes} bytes over {underlay}"
        );
        let b_log = log_text(&lb);
        assert!(
            b_log.contains("tcp tunnel 0 up") && b_log.contains("1/16"),
            "B did not log the peer: {b_log}"
        );
    }
}

#[test]
fn tcp_tunnel_works_while_udp_is_blocked() {
    if !require_root("tcp_tunnel_works_while_udp_is_blocked") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    pki(dir.path());
    let pair = pair();
    for ns in [&pair.a, &pair.b] {
        ns.exec("nft", &["add", "table", "inet", "blockudp"])
            .expect("nft (package nftables)");
        ns.exec(
            "nft",
            &[
                "add",
                "chain",
                "inet",
                "blockudp",
                "in",
                "{ type filter hook input priority 0 ; policy accept ; }",
            ],
        )
        .unwrap();
        ns.exec(
            "nft",
            &[
                "add", "rule", "inet", "blockudp", "in", "meta", "l4proto", "udp", "drop",
            ],
        )
        .unwrap();
    }
    // a UDP-based transport cannot come up...
    let (qa, qb) = (dir.path().join("quic-a.log"), dir.path().join("quic-b.log"));
    let _quic_b = link_up_with("quic", &pair.b, dir.path(), 2, "fd00:3::2/64", None, &qb);
    std::thread::sleep(Duration::from_millis(300));
    let mut quic_a = link_up_with(
        "quic",
        &pair.a,
        dir.path(),
        1,
        "fd00:3::1/64",
        Some(("[fd00:1::2]:3260", "2/16")),
        &qa,
    );
    assert!(
        wait_exit(&mut quic_a, Duration::from_secs(30)),
        "quic came up through the UDP block?"
    );
    assert!(!quic_a.wait().unwrap().success());
    // ...while the tcp transport carries traffic
    let (la, lb) = (dir.path().join("a.log"), dir.path().join("b.log"));
    let _b = link_up(&pair.b, dir.path(), 2, "fd00:2::2/64", None, &lb);
    std::thread::sleep(Duration::from_millis(300));
    let _a = link_up(
        &pair.a,
        dir.path(),
        1,
        "fd00:2::1/64",
        Some(("[fd00:1::2]:3260", "2/16")),
        &la,
    );
    assert!(
        ping_until(&pair.a, "fd00:2::2", Duration::from_secs(30)),
        "no ping across the tcp tunnel\nA: {}\nB: {}",
        log_text(&la),
        log_text(&lb)
    );
    let bytes = iperf(&pair, dir.path(), "fd00:2::2");
    assert!(bytes > 1e6, "iperf3 moved only {bytes} bytes");
}

#[test]
fn tcp_refuses_foreign_certificate_and_wrong_prefix() {
    if !require_root("tcp_refuses_foreign_certificate_and_wrong_prefix") {
        return;
    }
    let ours = tempfile::tempdir().unwrap();
    let foreign = tempfile::tempdir().unwrap();
    pki(ours.path());
    pki(foreign.path());
    let pair = pair();
    let lb = ours.path().join("b.log");
    let _b = link_up(&pair.b, ours.path(), 2, "fd00:2::2/64", None, &lb);
    std::thread::sleep(Duration::from_millis(300));

    // a node holding a certificate of another network (while using ours
    // for the handshake's network binding): B refuses its handshake
    let la = ours.path().join("a-foreign.log");
    let _a = link_up_ca(
        &pair.a,
        ours.path(),
        foreign.path(),
        1,
        "fd00:2::1/64",
        Some(("[fd00:1::2]:3260", "2/16")),
        &la,
    );
    let start = Instant::now();
    while !log_text(&lb).contains("refused peer") && start.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        log_text(&lb).contains("refused peer"),
        "B did not log a refusal: {}",
        log_text(&lb)
    );
    assert!(pair
        .a
        .exec("ping", &["-c", "1", "-W", "1", "fd00:2::2"])
        .is_err());
    drop(_a);

    // our node 1 expecting another prefix refuses B
    let la = ours.path().join("a-wrong-cn.log");
    let _a = link_up(
        &pair.a,
        ours.path(),
        1,
        "fd00:2::1/64",
        Some(("[fd00:1::2]:3260", "3/16")),
        &la,
    );
    let start = Instant::now();
    while !log_text(&la).contains("unexpected prefix") && start.elapsed() < Duration::from_secs(30)
    {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        log_text(&la).contains("peer certificate refused: unexpected prefix"),
        "A did not log a refusal: {}",
        log_text(&la)
    );
    assert!(pair
        .a
        .exec("ping", &["-c", "1", "-W", "1", "fd00:2::2"])
        .is_err());
}

#[test]
fn tcp_detects_dead_peer() {
    if !require_root("tcp_detects_dead_peer") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    pki(dir.path());
    let pair = pair();
    let (la, lb) = (dir.path().join("a.log"), dir.path().join("b.log"));
    let b = link_up(&pair.b, dir.path(), 2, "fd00:2::2/64", None, &lb);
    std::thread::sleep(Duration::from_millis(300));
    let mut a = link_up(
        &pair.a,
        dir.path(),
        1,
        "fd00:2::1/64",
        Some(("[fd00:1::2]:3260", "2/16")),
        &la,
    );
    assert!(
        ping_until(&pair.a, "fd00:2::2", Duration::from_secs(30)),
        "tunnel never came up"
    );
    b.signal(nix::sys::signal::Signal::SIGKILL).unwrap();
    let killed = Instant::now();
    assert!(
        wait_exit(&mut a, Duration::from_secs(20)),
        "A never noticed its peer died"
    );
    eprintln!("dead peer noticed after {:?}", killed.elapsed());
    assert!(
        log_text(&la).contains("tcp tunnel 0 down"),
        "A's log: {}",
        log_text(&la)
    );
}
