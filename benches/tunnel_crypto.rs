//! Tunnel crypto hot paths: sealing and opening 1400-byte data messages
//! (our AES-256-GCM sessions, with ChaCha20-Poly1305 alongside for the
//! cipher choice), and the cost of a full handshake with certificate checks.

use std::hint::black_box;
use std::time::{Duration, Instant, SystemTime};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use re6st::pki::{self, Ca, Csr, IssueRequest, Network, Verifier};
use re6st::tunnel::handshake::{Credentials, Initiator, Responder};
use re6st::tunnel::session::{Receiver, Sender};
use re6st::tunnel::wire::{Packet, DATA_HEADER_LEN, DATA_OVERHEAD, MAX_HANDSHAKE_LEN};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, CHACHA20_POLY1305};

const LEN: usize = 1400;

fn data(c: &mut Criterion) {
    let mut g = c.benchmark_group("data_1400");
    g.throughput(Throughput::Bytes(LEN as u64));
    let sender = Sender::new(&[7; 32], 1);
    let mut buf = vec![0u8; LEN + DATA_OVERHEAD];
    g.bench_function("seal", |b| {
        b.iter(|| black_box(sender.seal(&mut buf, LEN).unwrap()))
    });
    let s2 = Sender::new(&[8; 32], 1);
    let mut r2 = Receiver::new(&[8; 32], 1);
    g.bench_function("seal_open", |b| {
        b.iter(|| {
            let n = s2.seal(&mut buf, LEN).unwrap();
            black_box(r2.open(&mut buf[..n]).unwrap().1)
        })
    });
    for (name, alg) in [
        ("ring_aes256gcm", &AES_256_GCM),
        ("ring_chacha20poly1305", &CHACHA20_POLY1305),
    ] {
        let key = LessSafeKey::new(UnboundKey::new(alg, &[9; 32]).unwrap());
        let mut ctr = 0u64;
        let mut p = vec![0u8; LEN];
        g.bench_function(name, |b| {
            b.iter(|| {
                ctr += 1;
                let mut n = [0u8; 12];
                n[4..].copy_from_slice(&ctr.to_be_bytes());
                black_box(
                    key.seal_in_place_separate_tag(
                        Nonce::assume_unique_for_key(n),
                        Aad::from(&[0u8; DATA_HEADER_LEN]),
                        &mut p,
                    )
                    .unwrap(),
                )
            })
        });
    }
    g.finish();
}

fn node(ca: &Ca, prefix: &str, serial: u64) -> Credentials {
    let key = pki::generate_key();
    let csr = Csr::generate(&key, &[]).unwrap();
    let now = SystemTime::now();
    let cert = ca
        .issue(&IssueRequest {
            csr: &csr,
            prefix: prefix.parse().unwrap(),
            subject_serial: serial as u32,
            serial,
            not_before: now - Duration::from_secs(60),
            not_after: now + Duration::from_secs(86400),
        })
        .unwrap();
    Credentials::new(
        &key,
        cert,
        ca.cert_der(),
        Verifier::new(&ca.cert_pem()).unwrap(),
    )
    .unwrap()
}

fn handshake(c: &mut Criterion) {
    let network: Network = "2001:db8:42::/48".parse().unwrap();
    let ca = Ca::generate(network, 30).unwrap();
    let a = node(&ca, "1/16", 2);
    let b = node(&ca, "2/16", 3);
    let expected = Some("2/16".parse().unwrap());
    c.bench_function("handshake_xx_with_certificates", |bench| {
        bench.iter(|| {
            let now = Instant::now();
            let wall = SystemTime::now();
            let mut m1 = [0u8; MAX_HANDSHAKE_LEN];
            let mut m2 = [0u8; MAX_HANDSHAKE_LEN];
            let mut m3 = [0u8; MAX_HANDSHAKE_LEN];
            let (i, n1) = Initiator::start(&a, 1, expected, None, now, &mut m1).unwrap();
            let (r, n2) = Responder::accept(
                &b,
                &Packet::new_checked(&m1[..n1]).unwrap(),
                2,
                now,
                &mut m2,
            )
            .unwrap();
            let (_, n3) = i
                .handle_response(
                    &a,
                    &Packet::new_checked(&m2[..n2]).unwrap(),
                    now,
                    wall,
                    &mut m3,
                )
                .unwrap();
            black_box(
                r.handle_finish(&b, &Packet::new_checked(&m3[..n3]).unwrap(), now, wall)
                    .unwrap(),
            )
        })
    });
}

criterion_group!(benches, data, handshake);
criterion_main!(benches);
