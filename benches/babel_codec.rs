//! Babel wire codec throughput: parse and encode a typical packet (Hello,
//! IHU and ten Updates sharing a router-id, compressed), and sign/verify it
//! with each RFC 8967 MAC. Throughput is in packets per second.

use std::hint::black_box;
use std::net::IpAddr;

use babel::wire::mac::{self, Algorithm, Key};
use babel::wire::{Hello, Ihu, Packet, PacketBuilder, Prefix, Tlv, Update};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

fn typical_tlvs() -> Vec<Tlv<'static>> {
    let neighbour: IpAddr = "fe80::8c91:94ff:fecd:2116".parse().unwrap();
    let mut tlvs = vec![
        Tlv::Hello(Hello {
            unicast: false,
            seqno: 0x1234,
            interval: 400,
            timestamp: Some(0x4c52_35de),
        }),
        Tlv::Ihu(Ihu {
            rxcost: 96,
            interval: 1200,
            address: Some(neighbour),
            timestamp: Some(babel::wire::IhuTimestamp {
                origin: 0x4c51_fdd1,
                receive: 0x4c52_5803,
            }),
        }),
    ];
    for i in 0..10u16 {
        let prefix: Prefix = format!("2001:db8:42:{i:x}::/64").parse().unwrap();
        tlvs.push(Tlv::Update(Update {
            interval: 1600,
            seqno: 7,
            metric: 96 + i,
            prefix: Some(prefix),
            v4_via_v6: false,
            src_prefix: None,
            router_id: Some([0xa0, 0xc6, 0x51, 0x88, 0x30, 0x15, 0x77, 0x04]),
            next_hop: None,
        }));
    }
    tlvs
}

fn encode(tlvs: &[Tlv<'_>], buf: &mut [u8]) -> usize {
    let mut builder = PacketBuilder::new(buf, 1452, 0);
    for tlv in tlvs {
        builder.push(tlv).expect("typical packet fits");
    }
    builder.finish()
}

fn codec(c: &mut Criterion) {
    let tlvs = typical_tlvs();
    let mut buf = [0u8; 1452];
    let len = encode(&tlvs, &mut buf);
    let packet = buf[..len].to_vec();

    let mut group = c.benchmark_group("babel_codec");
    group.throughput(Throughput::Elements(1));
    group.bench_function("parse", |b| {
        b.iter(|| {
            let p = Packet::new_checked(black_box(&packet[..])).unwrap();
            let mut n = 0;
            for tlv in p.into_tlvs() {
                black_box(tlv.unwrap());
                n += 1;
            }
            assert_eq!(n, 13);
        })
    });
    group.bench_function("encode", |b| {
        let mut out = [0u8; 1452];
        b.iter(|| black_box(encode(black_box(&tlvs), &mut out)))
    });
    group.finish();

    let src = "[fe80::1]:6696".parse().unwrap();
    let dst = "[ff02::1:6]:6696".parse().unwrap();
    let pseudo = mac::pseudo_header(src, dst);
    let mut group = c.benchmark_group("babel_mac");
    group.throughput(Throughput::Elements(1));
    for (name, algorithm) in [
        ("hmac_sha256", Algorithm::HmacSha256),
        ("blake2s128", Algorithm::Blake2s128),
    ] {
        let keys = [Key::new(algorithm, &[7; 32]).unwrap()];
        let mut signed = [0u8; 1452];
        signed[..len].copy_from_slice(&packet);
        let total = mac::sign(&mut signed, len, &pseudo, &keys).unwrap();
        group.bench_function(format!("sign_{name}"), |b| {
            let mut out = signed;
            b.iter(|| black_box(mac::sign(&mut out, len, &pseudo, &keys).unwrap()))
        });
        group.bench_function(format!("verify_{name}"), |b| {
            b.iter(|| assert!(mac::verify(black_box(&signed[..total]), &pseudo, &keys).unwrap()))
        });
    }
    group.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);
