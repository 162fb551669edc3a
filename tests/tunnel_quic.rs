//! The quic transport between two network namespaces, through real
//! `re6st tunnel up` processes and real TUN devices: IPv6 ping and an iperf3
//! transfer across (over an IPv6 and an IPv4 underlay), a peer with a
//! foreign certificate refused with a log line, a killed peer detected
//! within the dead-peer timeout.

use std::path::Path;
use std::time::{Duration, Instant};

use re6st::testbed::{require_root, Netns, NsChild};

#[path = "common/link.rs"]
mod link;

use link::{iperf, log_text, ping_until, pki, spawn_link, wait_exit, Pair};

fn pair() -> Pair {
    link::pair("tq")
}

/// Starts `re6st tunnel up --transport quic` in `ns` with node `n`'s
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
    spawn_link("quic", ns, ca_dir, pki, n, addr, connect, log)
}

#[test]
fn quic_tunnel_carries_ipv6_over_both_underlays() {
    if !require_root("quic_tunnel_carries_ipv6_over_both_underlays") {
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
            "no ping across the quic tunnel over {underlay}\nA: {}\nB: {}",
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
            b_log.contains("quic tunnel 0 up") && b_log.contains("1/16"),
            "B did not log the peer: {b_log}"
        );
    }
}

#[test]
fn quic_refuses_foreign_certificate_and_wrong_prefix() {
    if !require_root("quic_refuses_foreign_certificate_and_wrong_prefix") {
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

    // a node holding a certificate of another network (while trusting
    // ours, so that the refusal is B's): B refuses it, A's attempt fails
    let la = ours.path().join("a-foreign.log");
    let mut a = link_up_ca(
        &pair.a,
        ours.path(),
        foreign.path(),
        1,
        "fd00:2::1/64",
        Some(("[fd00:1::2]:3260", "2/16")),
        &la,
    );
    assert!(
        wait_exit(&mut a, Duration::from_secs(30)),
        "foreign node still running"
    );
    assert!(!a.wait().unwrap().success());
    assert!(
        log_text(&lb).contains("refused peer certificate: not signed by the network CA"),
        "B did not log the refusal: {}",
        log_text(&lb)
    );

    // our node 1 expecting another prefix refuses B
    let la = ours.path().join("a-wrong-cn.log");
    let mut a = link_up(
        &pair.a,
        ours.path(),
        1,
        "fd00:2::1/64",
        Some(("[fd00:1::2]:3260", "3/16")),
        &la,
    );
    assert!(
        wait_exit(&mut a, Duration::from_secs(30)),
        "node 1 still running"
    );
    assert!(!a.wait().unwrap().success());
    assert!(
        log_text(&la).contains("refused peer certificate: unexpected prefix"),
        "A did not log the refusal: {}",
        log_text(&la)
    );
    assert!(pair
        .a
        .exec("ping", &["-c", "1", "-W", "1", "fd00:2::2"])
        .is_err());
}

#[test]
fn quic_detects_dead_peer() {
    if !require_root("quic_detects_dead_peer") {
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
    // dead-peer timeout 3 s; generous bound for a loaded machine
    assert!(
        wait_exit(&mut a, Duration::from_secs(20)),
        "A never noticed its peer died"
    );
    let noticed = killed.elapsed();
    assert!(
        log_text(&la).contains("peer dead"),
        "A's log: {}",
        log_text(&la)
    );
    eprintln!("dead peer noticed after {noticed:?}");
}
