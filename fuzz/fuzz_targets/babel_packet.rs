//! Babel packet parser: arbitrary bytes never panic, and every TLV that
//! parses re-encodes (with the Router-Id / Next-Hop context the builder
//! adds) to a packet that parses back to the same TLV.
#![no_main]

use babel::wire::{mac, BuildError, Packet, PacketBuilder, Tlv};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
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
            // An AE 3 prefix re-encoded as AE 2 may outgrow 255 bytes.
            Err(BuildError::Invalid("tlv body over 255 bytes")) => continue,
            Err(e) => panic!("{tlv:?} parsed but cannot be re-encoded: {e}"),
        }
        let len = builder.finish();
        let again = Packet::new_checked(&buf[..len]).expect("builder output is a packet");
        let last = again
            .into_tlvs()
            .last()
            .expect("one tlv")
            .expect("builder output parses");
        assert_eq!(last, tlv);
    }
    for tlv in packet.into_trailer_tlvs() {
        if tlv.is_err() {
            break;
        }
    }
    // Parses the trailer again; the MAC check itself is skipped under
    // cfg(fuzzing).
    let _ = mac::verify(data, &[0; mac::PSEUDO_HEADER_LEN], &[]);
});
