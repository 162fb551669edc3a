//! The tcp transport between two network namespaces, through real
//! `re6st tunnel up` processes and real TUN devices: IPv6 ping and an iperf3
//! transfer across (over an IPv6 and an IPv4 underlay), the tunnel working
//! while an nft rule drops all UDP (where the quic transport cannot come
//! up), a peer with a foreign certificate refused with a log line, a killed
//! peer detected at once.

use std::time::Duration;

use re6st::testbed::require_root;

#[path = "common/link.rs"]
mod link;

use link::{
    assert_carries, assert_no_ping, kill_peer, log_text, pki, refusals, tunnel, wait_exit,
    wait_log, Pair, B_V6,
};

fn pair() -> Pair {
    link::pair("tt")
}

#[test]
fn tcp_tunnel_carries_ipv6_over_both_underlays() {
    if !require_root("tcp_tunnel_carries_ipv6_over_both_underlays") {
        return;
    }
    link::assert_carries_over_both_underlays("tcp", "tt");
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
    let mut quic = tunnel("quic", &pair, dir.path(), "quic", B_V6, "fd00:3");
    assert!(
        wait_exit(&mut quic.a, Duration::from_secs(30)),
        "quic came up through the UDP block?"
    );
    assert!(!quic.a.wait().unwrap().success());
    // ...while the tcp transport carries traffic
    let t = tunnel("tcp", &pair, dir.path(), "tcp", B_V6, "fd00:2");
    assert_carries(&pair, dir.path(), &t, "fd00:2", "tcp tunnel");
}

#[test]
fn tcp_refuses_foreign_certificate_and_wrong_prefix() {
    if !require_root("tcp_refuses_foreign_certificate_and_wrong_prefix") {
        return;
    }
    let r = refusals("tcp", "tt");
    let (pair, lb) = (&r.pair, &r.lb);

    // a node holding a certificate of another network (while using ours
    // for the handshake's network binding): B refuses its handshake
    let (a, _) = r.dial(true, "2/16", "a-foreign");
    assert!(
        wait_log(lb, "refused peer", Duration::from_secs(30)),
        "B did not log a refusal: {}",
        log_text(lb)
    );
    assert_no_ping(pair);
    drop(a);

    // our node 1 expecting another prefix refuses B
    let (_a, la) = r.dial(false, "3/16", "a-wrong-cn");
    wait_log(&la, "unexpected prefix", Duration::from_secs(30));
    assert!(
        log_text(&la).contains("peer certificate refused: unexpected prefix"),
        "A did not log a refusal: {}",
        log_text(&la)
    );
    assert_no_ping(pair);
}

#[test]
fn tcp_detects_dead_peer() {
    if !require_root("tcp_detects_dead_peer") {
        return;
    }
    let (la, noticed) = kill_peer("tcp");
    eprintln!("dead peer noticed after {noticed:?}");
    assert!(la.contains("tcp tunnel 0 down"), "A's log: {la}");
}
