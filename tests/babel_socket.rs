//! The Babel socket between two namespaces joined by a veth pair: multicast
//! and unicast datagrams arrive with the sender's link-local address, the
//! interface they came in on and whether they were multicast.

use std::net::{IpAddr, Ipv6Addr};
use std::sync::mpsc;
use std::time::Duration;

use babel::Destination;
use re6st::kernel::Kernel;
use re6st::routing::{BabelSocket, Received};
use re6st::testbed::{require_root, veth, Netns};

/// The index and (usable) link-local address of `dev` in `ns`.
fn link(ns: &Netns, dev: &str) -> (u32, Ipv6Addr) {
    ns.block_on(|| async {
        let k = Kernel::connect().unwrap();
        let index = k.link_index(dev).await.unwrap();
        for _ in 0..200 {
            if let Ok(ll) = k.link_local(index).await {
                return (index, ll);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("no link-local address on {dev}");
    })
    .unwrap()
}

#[test]
fn multicast_and_unicast_with_packet_info() {
    if !require_root("multicast_and_unicast_with_packet_info") {
        return;
    }
    let a = Netns::new("bsock").unwrap();
    let b = Netns::new("bsock").unwrap();
    veth(&a, "xa", &b, "xb").unwrap();
    let (a_index, a_ll) = link(&a, "xa");
    let (b_index, b_ll) = link(&b, "xb");

    let (ready_tx, ready_rx) = mpsc::channel();
    std::thread::scope(|scope| {
        let receiver = scope.spawn(|| {
            b.block_on(|| async move {
                let socket = BabelSocket::bind().unwrap();
                socket.join(b_index).unwrap();
                ready_tx.send(()).unwrap();
                let mut buf = [0u8; 1500];
                let mut got = Vec::new();
                while got.len() < 2 {
                    let r = tokio::time::timeout(Duration::from_secs(30), socket.recv(&mut buf))
                        .await
                        .expect("no datagram within 30 s")
                        .unwrap();
                    got.push((r, buf[..r.len].to_vec()));
                }
                got
            })
            .unwrap()
        });
        ready_rx.recv().unwrap();
        a.block_on(|| async move {
            let socket = BabelSocket::bind().unwrap();
            socket.join(a_index).unwrap();
            socket
                .send(a_index, Destination::Multicast, b"multicast")
                .await
                .unwrap();
            socket
                .send(a_index, Destination::Unicast(IpAddr::V6(b_ll)), b"unicast")
                .await
                .unwrap();
            let v4 = socket
                .send(
                    a_index,
                    Destination::Unicast("192.0.2.1".parse().unwrap()),
                    b"x",
                )
                .await;
            assert!(v4.is_err());
        })
        .unwrap();
        let got = receiver.join().unwrap();
        let want = |len, multicast| Received {
            len,
            source: a_ll,
            ifindex: b_index,
            multicast,
        };
        assert_eq!(got[0], (want(9, true), b"multicast".to_vec()));
        assert_eq!(got[1], (want(7, false), b"unicast".to_vec()));
    });
}
