//! Byte-level vectors: packets captured from babeld 1.12 (see
//! `testdata/capture.sh`), parsed field by field, MAC-verified with the
//! capture's key, re-encoded, and truncated at every offset.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use babel::wire::mac::{self, Algorithm, Key};
use babel::wire::{
    Hello, Ihu, IhuTimestamp, Packet, PacketBuilder, Prefix, RouteRequest, Tlv, Update, INFINITY,
};

/// One captured datagram with its addresses.
struct Capture {
    src: SocketAddr,
    dst: SocketAddr,
    bytes: Vec<u8>,
}

fn load(name: &str) -> Capture {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/testdata")
        .join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    let (mut src, mut dst, mut hex) = (None, None, String::new());
    for line in text.lines() {
        if let Some(a) = line.strip_prefix("src ") {
            src = Some(a.parse().unwrap());
        } else if let Some(a) = line.strip_prefix("dst ") {
            dst = Some(a.parse().unwrap());
        } else if !line.starts_with('#') {
            hex.push_str(line.trim());
        }
    }
    Capture {
        src: src.expect("src line"),
        dst: dst.expect("dst line"),
        bytes: decode_hex(&hex),
    }
}

fn decode_hex(hex: &str) -> Vec<u8> {
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect()
}

fn all_captures() -> Vec<(String, Capture)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/testdata");
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".hex"))
        .collect();
    names.sort();
    assert!(names.len() >= 8, "captures missing: {names:?}");
    names.into_iter().map(|n| (n.clone(), load(&n))).collect()
}

fn tlvs(bytes: &[u8]) -> Vec<Tlv<'_>> {
    Packet::new_checked(bytes)
        .unwrap()
        .into_tlvs()
        .collect::<Result<_, _>>()
        .unwrap()
}

fn prefix(s: &str) -> Prefix {
    s.parse().unwrap()
}

/// The key the signed captures were made with, for `algorithm`.
fn capture_key(algorithm: Algorithm) -> Key {
    let hex = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/testdata/mac.key"),
    )
    .unwrap();
    Key::new(algorithm, &decode_hex(hex.trim())).unwrap()
}

#[test]
fn babeld_hello_with_timestamp() {
    let c = load("babeld-hello.hex");
    assert_eq!(
        tlvs(&c.bytes),
        [Tlv::Hello(Hello {
            unicast: false,
            seqno: 0x7be6,
            interval: 400,
            timestamp: Some(0x4ce6_95f7),
        })]
    );
}

#[test]
fn babeld_hello_and_ihus_with_timestamps() {
    let c = load("babeld-hello-ihu.hex");
    let peer: IpAddr = "fe80::8c91:94ff:fecd:2116".parse().unwrap();
    assert_eq!(
        tlvs(&c.bytes),
        [
            Tlv::Hello(Hello {
                unicast: false,
                seqno: 0x7be4,
                interval: 0,
                timestamp: Some(0x4c53_99b6),
            }),
            Tlv::Ihu(Ihu {
                rxcost: INFINITY,
                interval: 1200,
                address: Some(peer),
                timestamp: Some(IhuTimestamp {
                    origin: 0x4c51_fdd1,
                    receive: 0x4c52_5803,
                }),
            }),
            Tlv::Ihu(Ihu {
                rxcost: 96,
                interval: 1200,
                address: Some(peer),
                timestamp: Some(IhuTimestamp {
                    origin: 0x4c52_35de,
                    receive: 0x4c52_5852,
                }),
            }),
        ]
    );
}

#[test]
fn babeld_full_dump_with_compression_source_prefixes_and_v4_via_v6() {
    let c = load("babeld-updates.hex");
    let all = tlvs(&c.bytes);
    let router_id = [0xa0, 0xc6, 0x51, 0x88, 0x30, 0x15, 0x77, 0x04];
    let updates: Vec<Update> = all
        .iter()
        .filter_map(|t| match t {
            Tlv::Update(u) => Some(*u),
            _ => None,
        })
        .collect();
    let seqno = 0x70b1;
    let announce = |p: &str, src: Option<&str>, v4_via_v6: bool| Update {
        interval: 1600,
        seqno,
        metric: 0,
        prefix: Some(prefix(p)),
        v4_via_v6,
        src_prefix: src.map(prefix),
        router_id: Some(router_id),
        next_hop: None,
    };
    let expected = [
        // The wildcard retraction babeld sends when it starts.
        Update {
            interval: 0xffff,
            seqno,
            metric: INFINITY,
            prefix: None,
            v4_via_v6: false,
            src_prefix: None,
            router_id: None,
            next_hop: None,
        },
        announce("2001:db8:a:1::/64", None, false),
        announce("2001:db8:a:2::/64", None, false),
        announce("2001:db8:a:3::/64", None, false),
        announce("2001:db8:a:100::/56", None, false),
        announce("2001:db8:b::/48", Some("2001:db8:c::/48"), false),
        announce("2001:db8:ff::/48", None, false),
        announce("::/0", Some("2001:db8:42::/48"), false),
        announce("10.1.2.0/24", None, true),
        announce("10.1.3.0/24", None, true),
    ];
    assert_eq!(updates, expected);
    assert_eq!(
        all.last(),
        Some(&Tlv::RouteRequest(RouteRequest {
            prefix: None,
            v4_via_v6: false,
            src_prefix: None,
        }))
    );
}

#[test]
fn babeld_mac_verifies_with_the_capture_key_only() {
    let mut checked = 0;
    for (name, c) in all_captures() {
        let algorithm = if name.starts_with("mac-") {
            Algorithm::HmacSha256
        } else if name.starts_with("blake2s-") {
            Algorithm::Blake2s128
        } else {
            continue;
        };
        checked += 1;
        let key = [capture_key(algorithm)];
        let wrong = [Key::new(algorithm, &[0x55; 32]).unwrap()];
        // The same secret under the other algorithm does not verify.
        let other = match algorithm {
            Algorithm::HmacSha256 => Algorithm::Blake2s128,
            Algorithm::Blake2s128 => Algorithm::HmacSha256,
        };
        let pseudo = mac::pseudo_header(c.src, c.dst);
        assert_eq!(
            mac::verify(&c.bytes, &pseudo, &[capture_key(other)]),
            Ok(false),
            "{name}"
        );
        assert_eq!(mac::verify(&c.bytes, &pseudo, &key), Ok(true), "{name}");
        assert_eq!(mac::verify(&c.bytes, &pseudo, &wrong), Ok(false), "{name}");
        let swapped = mac::pseudo_header(c.dst, c.src);
        assert_eq!(mac::verify(&c.bytes, &swapped, &key), Ok(false), "{name}");
        // Every signed babeld packet carries a packet counter.
        let packet = Packet::new_checked(&c.bytes[..]).unwrap();
        assert!(
            packet.tlvs().any(|t| matches!(t, Ok(Tlv::Pc(_)))),
            "{name} has no PC"
        );
        // Re-signing the same header and body reproduces babeld's trailer.
        let len = packet.header_and_body().len();
        let mut buf = c.bytes.clone();
        let signed = mac::sign(&mut buf, len, &pseudo, &key).unwrap();
        assert_eq!(&buf[..signed], &c.bytes[..], "{name}");
    }
    assert!(checked >= 4, "signed captures missing");
}

#[test]
fn babeld_challenge_tlvs() {
    let request = load("mac-challenge-request.hex");
    let reply = load("mac-challenge-reply.hex");
    let nonce_of = |c: &Capture, want_request: bool| {
        tlvs(&c.bytes)
            .into_iter()
            .find_map(|t| match t {
                Tlv::ChallengeRequest(r) if want_request => Some(r.nonce.to_vec()),
                Tlv::ChallengeReply(r) if !want_request => Some(r.nonce.to_vec()),
                _ => None,
            })
            .expect("challenge tlv")
    };
    let asked = nonce_of(&request, true);
    assert!(!asked.is_empty() && asked.len() <= 192);
    let answered = nonce_of(&reply, false);
    assert!(!answered.is_empty() && answered.len() <= 192);
}

#[test]
fn captures_reencode_to_the_same_tlvs() {
    for (name, c) in all_captures() {
        let original = tlvs(&c.bytes);
        let mut buf = [0u8; 1500];
        let mut builder = PacketBuilder::new(&mut buf, 1500, 0);
        for tlv in &original {
            builder.push(tlv).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        let len = builder.finish();
        let again = tlvs(&buf[..len]);
        // Router-Id TLVs may be placed differently; compare the rest.
        let strip = |v: &[Tlv<'_>]| -> Vec<String> {
            v.iter()
                .filter(|t| !matches!(t, Tlv::RouterId(_)))
                .map(|t| format!("{t:?}"))
                .collect()
        };
        assert_eq!(strip(&again), strip(&original), "{name}");
        assert!(len <= c.bytes.len(), "{name}: {len} > {}", c.bytes.len());
    }
}

#[test]
fn truncation_at_every_offset_never_panics() {
    for (name, c) in all_captures() {
        let full = Packet::new_checked(&c.bytes[..]).unwrap();
        let body_len = full.body().len();
        let count = full.tlvs().count();
        for cut in 0..c.bytes.len() {
            // Datagram cut short: header check or fewer TLVs.
            if let Ok(p) = Packet::new_checked(&c.bytes[..cut]) {
                assert!(p.tlvs().filter(|t| t.is_ok()).count() <= count, "{name}");
            }
        }
        for cut in 0..body_len {
            // Body length field shortened: the last TLVs are cut.
            let mut bytes = c.bytes[..4 + cut].to_vec();
            bytes[2..4].copy_from_slice(&(cut as u16).to_be_bytes());
            let p = Packet::new_checked(&bytes[..]).unwrap();
            let results: Vec<_> = p.tlvs().collect();
            let ok = results.iter().filter(|t| t.is_ok()).count();
            assert!(ok <= count, "{name} at {cut}");
            // At most one error, and only at the end.
            assert!(
                results.iter().rev().skip(1).all(|t| t.is_ok()),
                "{name} at {cut}"
            );
        }
    }
}

/// The fuzz target's invariant: every TLV that parses re-encodes, with the
/// context the builder adds, to a packet that parses back to it.
fn reencodes_faithfully(data: &[u8]) {
    let Ok(packet) = Packet::new_checked(data) else {
        return;
    };
    for tlv in packet.into_tlvs() {
        let Ok(tlv) = tlv else { break };
        if matches!(tlv, Tlv::Dropped(_)) {
            continue;
        }
        let mut buf = [0u8; 1024];
        let mut builder = PacketBuilder::new(&mut buf, 1024, 0);
        match builder.push(&tlv) {
            Ok(()) => {}
            Err(babel::wire::BuildError::Invalid("tlv body over 255 bytes")) => continue,
            Err(e) => panic!("{tlv:?} parsed but cannot be re-encoded: {e}"),
        }
        let len = builder.finish();
        let last = Packet::new_checked(&buf[..len])
            .unwrap()
            .into_tlvs()
            .last()
            .unwrap()
            .unwrap();
        assert_eq!(last, tlv);
    }
    let _ = mac::verify(data, &[0; mac::PSEUDO_HEADER_LEN], &[]);
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]

    #[test]
    fn mutated_captures_never_panic(
        which in 0usize..64,
        flips in proptest::collection::vec((0usize..512, proptest::prelude::any::<u8>()), 1..6),
    ) {
        let captures = all_captures();
        let mut bytes = captures[which % captures.len()].1.bytes.clone();
        for (at, value) in flips {
            let at = at % bytes.len();
            bytes[at] = value;
        }
        reencodes_faithfully(&bytes);
    }
}
