//! Data messages: the wire view, the typed handshake layer and in-place
//! decryption of arbitrary bytes must never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use re6st::tunnel::session::Receiver;
use re6st::tunnel::wire::{HandshakeRepr, Packet};

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = Packet::new_checked(data) {
        let _ = (p.kind(), p.receiver_index(), p.sender_index(), p.counter(), p.noise(), p.mac1(), p.mac2(), p.cookie());
        if let Ok(repr) = HandshakeRepr::parse(&p) {
            let mut out = vec![0u8; repr.buffer_len()];
            let n = repr.emit(&mut out).expect("a parsed message re-emits");
            assert_eq!(&out[..n], data);
        }
    }
    let mut buf = data.to_vec();
    let mut r = Receiver::new(&[3; 32], 0);
    let _ = r.open(&mut buf);
});
