//! Peer-protocol packets: parsing never panics, and whatever parses
//! re-emits to the same bytes (signature aside, which is carried as is).
#![no_main]

use libfuzzer_sys::fuzz_target;
use re6st::node::peer_proto::wire::SIGNATURE_LEN;
use re6st::node::peer_proto::{Message, Packet};

fuzz_target!(|data: &[u8]| {
    let Ok(packet) = Packet::new_checked(data) else {
        return;
    };
    let _ = (packet.sender_raw(), packet.recipient_raw(), packet.signature());
    let Ok(message) = Message::parse(&packet) else {
        return;
    };
    let mut buf = vec![0; data.len()];
    let len = message.emit_unsigned(&mut buf).expect("parsed messages re-emit");
    assert_eq!(len, data.len());
    assert_eq!(&buf[..len - SIGNATURE_LEN], &data[..len - SIGNATURE_LEN]);
});
