//! A Babel router fed arbitrary packets on arbitrary interfaces from
//! arbitrary neighbours, with time moving forward: it must never panic and
//! its invariants must hold after every input.
//!
//! Input: one mode byte (bit 0: MAC configured with `accept_unsigned`),
//! then records `[op, len, bytes[len]]` where `op` picks the interface
//! (bits 0-1), the source (bits 2-3), multicast (bit 4) and how far time
//! advances first (bits 5-7, in 300 ms steps).
#![no_main]

use std::net::{IpAddr, Ipv6Addr};
use std::time::{Duration, Instant};

use babel::router::{MacConfig, MacKey};
use babel::{InterfaceConfig, InterfaceKind, MacAlgorithm, Prefix, Router, RouterConfig};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, mut rest)) = data.split_first() else {
        return;
    };
    let mac = (mode & 1 == 1).then(|| MacConfig {
        accept_unsigned: true,
        ..MacConfig::new(MacKey::new(MacAlgorithm::HmacSha256, b"fuzz").expect("valid key"))
    });
    let t0 = Instant::now();
    let mut now = t0;
    let mut r = Router::new(
        RouterConfig {
            router_id: [1; 8],
            seed: u64::from(mode),
            mac,
            ..RouterConfig::default()
        },
        t0,
    );
    let ll = |n: u16| Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, n);
    r.add_interface(1, InterfaceConfig::new(InterfaceKind::Wired, ll(1)), now);
    r.add_interface(2, InterfaceConfig::new(InterfaceKind::Tunnel, ll(1)), now);
    r.add_interface(3, InterfaceConfig::new(InterfaceKind::Wireless, ll(1)), now);
    let own = Prefix::new(IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 0)), 64)
        .expect("valid prefix");
    r.redistribute(own, None, 0, now);
    let mut buf = vec![0; 1500];
    while let [op, len, tail @ ..] = rest {
        let len = usize::from(*len).min(tail.len());
        let (packet, next) = tail.split_at(len);
        rest = next;
        now += Duration::from_millis(300 * u64::from(op >> 5));
        if r.poll_timeout().is_some_and(|t| t <= now) {
            r.handle_timeout(now);
        }
        let ifindex = [1, 2, 3, 9][usize::from(op & 3)];
        let source = ll(2 + u16::from((op >> 2) & 3));
        r.handle_packet(ifindex, source, op & 0x10 != 0, packet, now);
        while let Some(tx) = r.poll_transmit(now, &mut buf) {
            assert!(tx.len <= 1232, "packet larger than the MTU");
        }
        while r.poll_event().is_some() {}
        if let Err(e) = r.check_invariants() {
            panic!("invariant broken: {e}");
        }
    }
    let _ = r.dump();
});
