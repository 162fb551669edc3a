//! Fuzzes the tcp transport's record framing: arbitrary stream bytes, cut
//! into arbitrary reads, must decode without panicking, every record must
//! respect the size bounds, and re-framing the records must reproduce the
//! bytes they came from.
#![no_main]

use libfuzzer_sys::fuzz_target;
use re6st::tunnel::framing::{RecordDecoder, RecordEncoder};

fuzz_target!(|data: &[u8]| {
    let Some((&[chunk, max_hi, max_lo], stream)) = data.split_first_chunk::<3>() else {
        return;
    };
    let chunk = usize::from(chunk).max(1);
    let max = usize::from(u16::from_be_bytes([max_hi, max_lo]));
    let mut dec = RecordDecoder::new(max);
    let max = dec.max_record();
    let mut enc = RecordEncoder::new(max, 0);
    let mut consumed = 0;
    let mut rest = stream;
    'outer: while !rest.is_empty() {
        let piece = &rest[..rest.len().min(chunk)];
        let n = dec.feed(piece);
        rest = &rest[n..];
        loop {
            match dec.next_record() {
                Ok(Some(rec)) => {
                    assert!(!rec.is_empty() && rec.len() <= max);
                    assert_eq!(enc.push(rec), Ok(true));
                    let framed = enc.pending();
                    assert_eq!(framed, &stream[consumed..consumed + framed.len()]);
                    consumed += framed.len();
                    let len = framed.len();
                    enc.consume(len);
                }
                Ok(None) => break,
                Err(_) => break 'outer,
            }
        }
        assert!(n > 0 || piece.is_empty(), "decoder stalled");
    }
    assert!(consumed + dec.buffered() <= stream.len());
});
