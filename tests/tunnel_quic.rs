//! The quic transport between two network namespaces, through real
//! `re6st tunnel up` processes and real TUN devices: IPv6 ping and an iperf3
//! transfer across (over an IPv6 and an IPv4 underlay), a peer with a
//! foreign certificate refused with a log line, a killed peer detected
//! within the dead-peer timeout.

use std::time::Duration;

use re6st::testbed::require_root;

#[path = "common/link.rs"]
mod link;

use link::{assert_no_ping, kill_peer, log_text, pki, spawn_link, wait_exit, Pair, B_V6};

fn pair() -> Pair {
    link::pair("tq")
}

#[test]
fn quic_tunnel_carries_ipv6_over_both_underlays() {
    if !require_root("quic_tunnel_carries_ipv6_over_both_underlays") {
        return;
    }
    link::assert_carries_over_both_underlays("quic", "tq");
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
    let (o, f) = (ours.path(), foreign.path());
    let _b = spawn_link("quic", &pair.b, o, o, 2, "fd00:2::2/64", None, &lb);
    std::thread::sleep(Duration::from_millis(300));

    // a node holding a certificate of another network (while trusting
    // ours, so that the refusal is B's): B refuses it, A's attempt fails
    let la = ours.path().join("a-foreign.log");
    let to_b = Some((B_V6, "2/16"));
    let mut a = spawn_link("quic", &pair.a, o, f, 1, "fd00:2::1/64", to_b, &la);
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
    let to_b = Some((B_V6, "3/16"));
    let mut a = spawn_link("quic", &pair.a, o, o, 1, "fd00:2::1/64", to_b, &la);
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
    assert_no_ping(&pair);
}

#[test]
fn quic_detects_dead_peer() {
    if !require_root("quic_detects_dead_peer") {
        return;
    }
    let (la, noticed) = kill_peer("quic");
    assert!(la.contains("peer dead"), "A's log: {la}");
    eprintln!("dead peer noticed after {noticed:?}");
}
