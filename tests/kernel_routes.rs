//! The netlink layer against a real kernel, inside throwaway namespaces:
//! routes (source-specific, replaced atomically, unreachable, IPv4 and
//! v4-via-v6), flushing by protocol, links and addresses.

use std::net::IpAddr;
use std::time::Instant;

use re6st::kernel::{Kernel, Net, Route, RouteKind, RouteOp, RoutePipeline, RTPROT_RE6ST};
use re6st::testbed::{require_root, Netns};

fn net(s: &str) -> Net {
    let (a, l) = s.split_once('/').unwrap();
    Net::new(a.parse().unwrap(), l.parse().unwrap()).unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// A namespace with an interface `d0` (one end of a veth pair whose other
/// end, `d1`, stays in the namespace too), up, with 2001:db8:ff::1/64 and
/// 192.0.2.1/24.
fn namespace() -> Netns {
    let ns = Netns::new("kroute").unwrap();
    ns.exec(
        "ip",
        &["link", "add", "d0", "type", "veth", "peer", "name", "d1"],
    )
    .unwrap();
    ns.exec("ip", &["link", "set", "d1", "up"]).unwrap();
    ns.exec("ip", &["link", "set", "d0", "up"]).unwrap();
    ns.exec(
        "ip",
        &["addr", "add", "2001:db8:ff::1/64", "dev", "d0", "nodad"],
    )
    .unwrap();
    ns.exec("ip", &["addr", "add", "192.0.2.1/24", "dev", "d0"])
        .unwrap();
    ns
}

fn show(ns: &Netns, family: &str) -> String {
    let out = ns
        .exec(
            "ip",
            &[
                family,
                "route",
                "show",
                "table",
                "all",
                "proto",
                &RTPROT_RE6ST.to_string(),
            ],
        )
        .unwrap();
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn ipv6_routes_add_replace_remove() {
    if !require_root("ipv6_routes_add_replace_remove") {
        return;
    }
    let ns = namespace();
    let (subtrees, index) = ns
        .block_on(|| async {
            let k = Kernel::connect().unwrap();
            (
                k.has_ipv6_subtrees().await.unwrap(),
                k.link_index("d0").await.unwrap(),
            )
        })
        .unwrap();
    // The probe leaves nothing behind.
    assert_eq!(show(&ns, "-6"), "");

    let mut r = Route::new(net("2001:db8:1::/48"));
    r.gateway = Some(ip("fe80::1"));
    r.ifindex = Some(index);
    r.priority = 7;
    if subtrees {
        r.src = Some(net("2001:db8:ff::/64"));
    }
    ns.block_on(|| async {
        let k = Kernel::connect().unwrap();
        k.apply(RouteOp::Add(r)).await.unwrap();
        // Adding the same key again is refused; replacing is not.
        let again = k.apply(RouteOp::Add(r)).await.unwrap_err();
        assert_eq!(again.errno(), Some(libc::EEXIST), "{again}");
    })
    .unwrap();
    let table = show(&ns, "-6");
    assert!(table.contains("2001:db8:1::/48"), "{table}");
    assert!(table.contains("via fe80::1 dev d0"), "{table}");
    assert!(table.contains("metric 7"), "{table}");
    if subtrees {
        assert!(table.contains("from 2001:db8:ff::/64"), "{table}");
    }

    let mut new = r;
    new.gateway = Some(ip("fe80::2"));
    ns.block_on(|| async {
        let k = Kernel::connect().unwrap();
        k.apply(RouteOp::Replace(new)).await.unwrap();
    })
    .unwrap();
    let table = show(&ns, "-6");
    assert_eq!(table.lines().count(), 1, "replace must not add: {table}");
    assert!(table.contains("via fe80::2 dev d0"), "{table}");

    ns.block_on(|| async {
        let k = Kernel::connect().unwrap();
        k.apply(RouteOp::Remove(new)).await.unwrap();
        let gone = k.apply(RouteOp::Remove(new)).await.unwrap_err();
        assert_eq!(gone.errno(), Some(libc::ESRCH), "{gone}");
    })
    .unwrap();
    assert_eq!(show(&ns, "-6"), "");
}

#[test]
fn unreachable_ipv4_and_v4_via_v6_routes() {
    if !require_root("unreachable_ipv4_and_v4_via_v6_routes") {
        return;
    }
    let ns = namespace();
    ns.block_on(|| async {
        let k = Kernel::connect().unwrap();
        let index = k.link_index("d0").await.unwrap();
        let mut unreachable = Route::new(net("2001:db8:2::/48"));
        unreachable.kind = RouteKind::Unreachable;
        k.apply(RouteOp::Replace(unreachable)).await.unwrap();

        let mut v4 = Route::new(net("198.51.100.0/24"));
        v4.gateway = Some(ip("192.0.2.2"));
        v4.ifindex = Some(index);
        v4.pref_src = Some(ip("192.0.2.1"));
        k.apply(RouteOp::Replace(v4)).await.unwrap();

        let mut via6 = Route::new(net("203.0.113.0/24"));
        via6.gateway = Some(ip("fe80::3"));
        via6.ifindex = Some(index);
        k.apply(RouteOp::Replace(via6)).await.unwrap();
        assert_eq!(k.our_routes().await.unwrap().len(), 3);
    })
    .unwrap();
    let v6 = show(&ns, "-6");
    assert!(v6.contains("unreachable 2001:db8:2::/48"), "{v6}");
    let v4 = show(&ns, "-4");
    assert!(v4.contains("198.51.100.0/24 via 192.0.2.2 dev d0"), "{v4}");
    assert!(v4.contains("src 192.0.2.1"), "{v4}");
    assert!(
        v4.contains("203.0.113.0/24 via inet6 fe80::3 dev d0"),
        "{v4}"
    );
}

#[test]
fn flush_removes_only_our_routes() {
    if !require_root("flush_removes_only_our_routes") {
        return;
    }
    let ns = namespace();
    ns.exec(
        "ip",
        &["-6", "route", "add", "2001:db8:9::/48", "dev", "d0"],
    )
    .unwrap();
    let flushed = ns
        .block_on(|| async {
            let k = Kernel::connect().unwrap();
            let index = k.link_index("d0").await.unwrap();
            let mut pipeline = RoutePipeline::new(64).unwrap();
            let ops = (0..300u128).map(|i| {
                let mut r = Route::new(
                    Net::new(
                        IpAddr::V6(((0x2001_0db8_0100u128 << 80) | (i << 64)).into()),
                        64,
                    )
                    .unwrap(),
                );
                r.ifindex = Some(index);
                RouteOp::Replace(r)
            });
            let failures = pipeline.run(ops).await;
            assert!(failures.is_empty(), "{failures:?}");
            let mut v4 = Route::new(net("198.51.100.0/24"));
            v4.ifindex = Some(index);
            v4.table = 1000;
            k.apply(RouteOp::Replace(v4)).await.unwrap();
            assert_eq!(k.our_routes().await.unwrap().len(), 301);
            k.flush_routes().await.unwrap()
        })
        .unwrap();
    assert_eq!(flushed, 301);
    assert_eq!(show(&ns, "-6"), "");
    assert_eq!(show(&ns, "-4"), "");
    let all = String::from_utf8(ns.exec("ip", &["-6", "route"]).unwrap().stdout).unwrap();
    assert!(all.contains("2001:db8:9::/48 dev d0"), "{all}");
}

#[test]
fn links_and_addresses() {
    if !require_root("links_and_addresses") {
        return;
    }
    let ns = namespace();
    ns.block_on(|| async {
        let k = Kernel::connect().unwrap();
        let d0 = k.link_by_name("d0").await.unwrap();
        assert!(d0.up);
        assert_eq!(k.link_by_index(d0.index).await.unwrap().name, "d0");
        let missing = k.link_by_name("nope0").await.unwrap_err();
        assert!(
            matches!(missing, re6st::kernel::Error::NoSuchInterface(_)),
            "{missing}"
        );
        assert!(k.links().await.unwrap().iter().any(|l| l.name == "lo"));

        k.set_mtu(d0.index, 1400).await.unwrap();
        assert_eq!(k.link_by_index(d0.index).await.unwrap().mtu, 1400);
        k.set_link_up(d0.index, false).await.unwrap();
        assert!(!k.link_by_index(d0.index).await.unwrap().up);
        k.set_link_up(d0.index, true).await.unwrap();
        assert!(k.link_by_index(d0.index).await.unwrap().up);

        let a = ip("2001:db8:77::1");
        k.add_address(d0.index, a, 64).await.unwrap();
        k.add_address(d0.index, a, 64).await.unwrap();
        let found = k.addresses(Some(d0.index)).await.unwrap();
        assert!(
            found.iter().any(|x| x.addr == a && x.prefix_len == 64),
            "{found:?}"
        );
        k.remove_address(d0.index, a, 64).await.unwrap();
        let found = k.addresses(Some(d0.index)).await.unwrap();
        assert!(!found.iter().any(|x| x.addr == a), "{found:?}");

        let fe80 = ip("fe80::42");
        k.add_address(d0.index, fe80, 64).await.unwrap();
        // The link-local becomes usable once duplicate address detection ends.
        let deadline = Instant::now() + std::time::Duration::from_secs(20);
        let ll = loop {
            match k.link_local(d0.index).await {
                Ok(ll) => break ll,
                Err(e) if Instant::now() > deadline => panic!("{e}"),
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
            }
        };
        assert!(ll.is_unicast_link_local());
    })
    .unwrap();
}

/// Installs 100 000 routes in a fresh namespace and prints the rate
/// (`cargo test --release --test kernel_routes -- --ignored --nocapture`).
#[test]
#[ignore = "measurement, not a check: run by hand"]
fn install_100k_routes() {
    if !require_root("install_100k_routes") {
        return;
    }
    let ns = namespace();
    ns.block_on(|| async {
        let k = Kernel::connect().unwrap();
        let index = k.link_index("d0").await.unwrap();
        let subtrees = k.has_ipv6_subtrees().await.unwrap();
        let route = |i: u128| {
            let mut r = Route::new(Net::new(IpAddr::V6(((0x2001_0db8u128 << 96) | (i << 64)).into()), 64).unwrap());
            r.gateway = Some(ip("fe80::1"));
            r.ifindex = Some(index);
            if subtrees {
                r.src = Some(net("2001:db8::/32"));
            }
            r
        };
        for limit in [1usize, 1024] {
            let n = if limit == 1 { 10_000 } else { 100_000 };
            let mut pipeline = RoutePipeline::new(limit).unwrap();
            let start = Instant::now();
            let failures = pipeline.run((0..n).map(|i| RouteOp::Replace(route(i)))).await;
            let install = start.elapsed();
            assert!(failures.is_empty(), "{:?}", &failures[..1]);
            let start = Instant::now();
            let mut failures = pipeline.run((0..n).map(|i| {
                let mut r = route(i);
                r.gateway = Some(ip("fe80::2"));
                RouteOp::Replace(r)
            })).await;
            let replace = start.elapsed();
            let start = Instant::now();
            let flushed = k.flush_routes().await.unwrap();
            let flush = start.elapsed();
            failures.truncate(1);
            assert!(failures.is_empty(), "{failures:?}");
            assert_eq!(flushed, n as usize);
            let rate = |d: std::time::Duration| n as f64 / d.as_secs_f64();
            println!(
                "{n} routes, {limit} in flight, source-specific: {subtrees}: install {install:?} ({:.0}/s), replace {replace:?} ({:.0}/s), flush {flush:?} ({:.0}/s)",
                rate(install), rate(replace), rate(flush)
            );
        }
    })
    .unwrap();
}

/// The installer applies a stream of route changes in order: the kernel
/// ends up with exactly what the last change for each route says.
#[test]
fn installer_applies_changes_in_order() {
    use babel::{KernelRoute, RouteChange};
    use re6st::routing::{install, InstallConfig};

    if !require_root("installer_applies_changes_in_order") {
        return;
    }
    let ns = namespace();
    let (stats, subtrees) = ns
        .block_on(|| async {
            let k = Kernel::connect().unwrap();
            let index = k.link_index("d0").await.unwrap();
            let subtrees = k.has_ipv6_subtrees().await.unwrap();
            let route = |i: u16, hop: &str| KernelRoute {
                prefix: format!("2001:db8:{i:x}::/48").parse().unwrap(),
                src_prefix: subtrees.then(|| "2001:db8:ff::/64".parse().unwrap()),
                next_hop: hop.parse().unwrap(),
                ifindex: index,
                metric: 96,
            };
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            let installer = tokio::spawn(install::run(InstallConfig::default(), rx));
            for i in 1..=2000u16 {
                tx.send(RouteChange::Add(route(i, "fe80::1"))).unwrap();
            }
            for i in 1..=2000u16 {
                let (old, new) = (route(i, "fe80::1"), route(i, "fe80::2"));
                tx.send(RouteChange::Replace { old, new }).unwrap();
                if i % 2 == 0 {
                    tx.send(RouteChange::Remove(new)).unwrap();
                }
            }
            drop(tx);
            (installer.await.unwrap().unwrap(), subtrees)
        })
        .unwrap();
    assert_eq!(stats.failed, 0, "{stats:?}");
    assert_eq!(stats.applied, 5000);
    let table = show(&ns, "-6");
    assert_eq!(table.lines().count(), 1000, "{table}");
    let via = if subtrees {
        "from 2001:db8:ff::/64 via fe80::2 dev d0"
    } else {
        "via fe80::2 dev d0"
    };
    assert!(table.lines().all(|l| l.contains(via)), "{table}");
    assert!(table.contains("2001:db8:7cf::/48"), "{table}");
    assert!(!table.contains("2001:db8:7d0::/48"), "{table}");
}
