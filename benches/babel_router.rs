//! Babel router at scale: a router holding 100 000 routes.
//!
//! Measures the time to process a full dump of 100 000 updates from a new
//! neighbour (parsing, feasibility, selection, kernel events and the
//! triggered updates it sends), the time to process the loss of that
//! neighbour (retractions, seqno requests, kernel removals), and the memory
//! per route (resident set growth while the table fills). The figures are
//! printed once before the criterion runs.

use std::hint::black_box;
use std::net::{IpAddr, Ipv6Addr};
use std::time::{Duration, Instant};

use babel::wire::{Hello, Ihu, PacketBuilder, Tlv, Update};
use babel::{InterfaceConfig, InterfaceKind, Prefix, Router, RouterConfig};
use criterion::{BatchSize, Criterion};

const ROUTES: u32 = 100_000;
const US: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);
const THEM: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 2);

fn prefix(i: u32) -> Prefix {
    let a = Ipv6Addr::new(0x2001, 0xdb8, (i >> 16) as u16, i as u16, 0, 0, 0, 0);
    Prefix::new(IpAddr::V6(a), 64).expect("valid /64")
}

fn packets(tlvs: impl Iterator<Item = Tlv<'static>>) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = vec![0; 1232];
    let mut tlvs = tlvs.peekable();
    while tlvs.peek().is_some() {
        let mut b = PacketBuilder::new(&mut buf, 1232, 0);
        while let Some(t) = tlvs.peek() {
            if b.push(t).is_err() {
                break;
            }
            tlvs.next();
        }
        let len = b.finish();
        out.push(buf[..len].to_vec());
    }
    out
}

/// Hellos and an IHU that make THEM a usable neighbour.
fn handshake() -> Vec<Vec<u8>> {
    (1..=3)
        .map(|seqno| {
            packets(
                [
                    Tlv::Hello(Hello {
                        unicast: false,
                        seqno,
                        interval: 400,
                        timestamp: None,
                    }),
                    Tlv::Ihu(Ihu {
                        rxcost: 96,
                        interval: 1200,
                        address: Some(IpAddr::V6(US)),
                        timestamp: None,
                    }),
                ]
                .into_iter(),
            )
            .remove(0)
        })
        .collect()
}

fn dump() -> Vec<Vec<u8>> {
    packets((0..ROUTES).map(|i| {
        Tlv::Update(Update {
            interval: 1600,
            seqno: 1,
            metric: 96 + (i % 7) as u16,
            prefix: Some(prefix(i)),
            v4_via_v6: false,
            src_prefix: None,
            router_id: Some([0, 0, 0, 0, 0, 0, (i >> 8) as u8, i as u8]),
            next_hop: None,
        })
    }))
}

fn drain(r: &mut Router, now: Instant, buf: &mut [u8]) -> (usize, usize) {
    let mut sent = 0;
    while let Some(tx) = r.poll_transmit(now, buf) {
        sent += tx.len;
    }
    let mut events = 0;
    while r.poll_event().is_some() {
        events += 1;
    }
    (sent, events)
}

/// A router that hears THEM on interface 1.
fn router_with_neighbour(t0: Instant, hs: &[Vec<u8>]) -> (Router, Instant) {
    let mut r = Router::new(
        RouterConfig {
            router_id: [9; 8],
            seed: 1,
            ..RouterConfig::default()
        },
        t0,
    );
    r.add_interface(1, InterfaceConfig::new(InterfaceKind::Wired, US), t0);
    let mut now = t0;
    let mut buf = vec![0; 1500];
    for p in hs {
        now += Duration::from_secs(4);
        r.handle_packet(1, THEM, true, p, now);
        r.handle_timeout(now);
        drain(&mut r, now, &mut buf);
    }
    (r, now)
}

fn feed(r: &mut Router, packets: &[Vec<u8>], now: Instant, buf: &mut [u8]) -> (usize, usize) {
    for p in packets {
        r.handle_packet(1, THEM, true, p, now);
    }
    drain(r, now + Duration::from_secs(1), buf)
}

/// CPU time of this thread (the machine may be shared: wall time alone
/// would measure the neighbours).
fn cpu_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let ns = stat.split_whitespace().next()?.parse().ok()?;
    Some(Duration::from_nanos(ns))
}

fn ms(d: Option<Duration>) -> String {
    d.map_or("?".into(), |d| format!("{:.1} ms", d.as_secs_f64() * 1e3))
}

fn rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn report(hs: &[Vec<u8>], dump: &[Vec<u8>]) {
    let mut buf = vec![0; 1500];
    let t0 = Instant::now();
    let (mut r, now) = router_with_neighbour(t0, hs);
    let before = rss_kib();
    let start = Instant::now();
    let cpu = cpu_time();
    let (sent, events) = feed(&mut r, dump, now, &mut buf);
    let full = start.elapsed();
    let full_cpu = cpu.zip(cpu_time()).map(|(a, b)| b - a);
    let after = rss_kib();
    assert_eq!(r.route_count(), ROUTES as usize);
    println!(
        "babel_router: full dump of {ROUTES} updates in {} packets: {:.1} ms wall, {} CPU ({} kernel events, {} bytes of triggered updates)",
        dump.len(),
        full.as_secs_f64() * 1e3,
        ms(full_cpu),
        events,
        sent
    );
    if let (Some(b), Some(a)) = (before, after) {
        println!(
            "babel_router: memory per route: {} bytes (RSS +{} KiB)",
            (a.saturating_sub(b)) * 1024 / u64::from(ROUTES),
            a.saturating_sub(b)
        );
    }
    let start = Instant::now();
    let cpu = cpu_time();
    r.flush_neighbour(1, THEM, now + Duration::from_secs(2));
    let (sent, events) = drain(&mut r, now + Duration::from_secs(3), &mut buf);
    let loss = start.elapsed();
    let loss_cpu = cpu.zip(cpu_time()).map(|(a, b)| b - a);
    assert_eq!(r.route_count(), 0);
    println!(
        "babel_router: neighbour loss with {ROUTES} routes: {:.1} ms wall, {} CPU ({} kernel events, {} bytes of retractions and requests)",
        loss.as_secs_f64() * 1e3,
        ms(loss_cpu),
        events,
        sent
    );
}

fn main() {
    let hs = handshake();
    let dump = dump();
    report(&hs, &dump);
    let mut c = Criterion::default()
        .sample_size(10)
        .measurement_time(Duration::from_secs(20))
        .configure_from_args();
    let mut g = c.benchmark_group("babel_router");
    g.bench_function("full_dump_100k", |b| {
        let mut buf = vec![0; 1500];
        b.iter_batched(
            || router_with_neighbour(Instant::now(), &hs),
            |(mut r, now)| {
                black_box(feed(&mut r, &dump, now, &mut buf));
                r
            },
            BatchSize::PerIteration,
        );
    });
    g.bench_function("neighbour_loss_100k", |b| {
        let mut buf = vec![0; 1500];
        b.iter_batched(
            || {
                let (mut r, now) = router_with_neighbour(Instant::now(), &hs);
                feed(&mut r, &dump, now, &mut buf);
                (r, now)
            },
            |(mut r, now)| {
                r.flush_neighbour(1, THEM, now + Duration::from_secs(2));
                black_box(drain(&mut r, now + Duration::from_secs(3), &mut [0; 1500]));
                r
            },
            BatchSize::PerIteration,
        );
    });
    g.finish();
    c.final_summary();
}
