//! The quic transport between two network namespaces, through real
//! `re6st tunnel up` processes and real TUN devices: IPv6 ping and an iperf3
//! transfer across (over an IPv6 and an IPv4 underlay), a peer with a
//! foreign certificate refused with a log line, a killed peer detected
//! within the dead-peer timeout.

use std::time::Duration;

use re6st::testbed::require_root;

#[path = "common/link.rs"]
mod link;

use link::{assert_no_ping, kill_peer, log_text, refusals, wait_exit};

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
    let r = refusals("quic", "tq");
    let (pair, lb) = (&r.pair, &r.lb);

    // a node holding a certificate of another network (while trusting
    // ours, so that the refusal is B's): B refuses it, A's attempt fails
    let (mut a, _) = r.dial(true, "2/16", "a-foreign");
    assert!(
        wait_exit(&mut a, Duration::from_secs(30)),
        "foreign node still running"
    );
    assert!(!a.wait().unwrap().success());
    assert!(
        log_text(lb).contains("refused peer certificate: not signed by the network CA"),
        "B did not log the refusal: {}",
        log_text(lb)
    );

    // our node 1 expecting another prefix refuses B
    let (mut a, la) = r.dial(false, "3/16", "a-wrong-cn");
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
    assert_no_ping(pair);
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
