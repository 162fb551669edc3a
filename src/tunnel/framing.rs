//! Record framing for tunnels carried over a byte stream (the tcp transport).
//!
//! A TCP stream has no message boundaries, so every tunnel message (a Noise
//! handshake message or an encrypted data packet, exactly as the udp
//! transport would put in one datagram) travels as one *record*:
//!
//! ```text
//! +--------+--------+---------------------------+
//! | length (u16 BE) | body (length bytes, >= 1) |
//! +--------+--------+---------------------------+
//! ```
//!
//! Both halves are sans-I/O and own fixed-size buffers, so a connection can
//! never queue more than it was configured for:
//!
//! - [`RecordDecoder`] takes bytes as they arrive (any split or merge of
//!   records), and hands out complete record bodies borrowed from its
//!   buffer. A length above the configured maximum, or zero, is an error:
//!   the stream is then unusable and the decoder stays failed.
//! - [`RecordEncoder`] frames outgoing records into a bounded buffer the
//!   caller drains into the socket; when it is full, [`RecordEncoder::push`]
//!   says so and the caller applies backpressure (stops reading its TUN
//!   device, or drops the packet) instead of queueing without bound.

/// Size of the length prefix in front of every record.
pub const HEADER_LEN: usize = 2;

/// The largest record body the format can express.
pub const MAX_RECORD_LIMIT: usize = u16::MAX as usize;

/// Why a byte stream or a record was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FramingError {
    /// A record announced (or was given) more bytes than the configured
    /// maximum record size.
    #[error("record of {len} bytes exceeds the maximum of {max}")]
    TooLarge {
        /// The announced or requested body length.
        len: usize,
        /// The configured maximum.
        max: usize,
    },
    /// A record announced an empty body, which no tunnel message has.
    #[error("empty record")]
    Empty,
}

/// Reassembles records from stream bytes, within a fixed buffer.
#[derive(Debug)]
pub struct RecordDecoder {
    buf: Box<[u8]>,
    /// Start of unconsumed bytes.
    start: usize,
    /// End of received bytes.
    end: usize,
    max_record: usize,
    failed: Option<FramingError>,
}

impl RecordDecoder {
    /// A decoder accepting record bodies of 1 to `max_record` bytes
    /// (clamped to [`MAX_RECORD_LIMIT`]). Its buffer holds two records, so a
    /// read never has to wait for the previous record to be taken.
    pub fn new(max_record: usize) -> Self {
        let max_record = max_record.clamp(1, MAX_RECORD_LIMIT);
        Self {
            buf: vec![0; 2 * (HEADER_LEN + max_record)].into_boxed_slice(),
            start: 0,
            end: 0,
            max_record,
            failed: None,
        }
    }

    /// The largest record body accepted.
    pub fn max_record(&self) -> usize {
        self.max_record
    }

    /// Bytes received but not yet returned as records.
    pub fn buffered(&self) -> usize {
        self.end - self.start
    }

    /// Free space to read stream bytes into; call [`Self::advance`] with the
    /// count read. Never empty unless a complete record is waiting to be
    /// taken with [`Self::next_record`] (or the decoder failed).
    pub fn read_buf(&mut self) -> &mut [u8] {
        self.compact();
        &mut self.buf[self.end..]
    }

    /// Records that `n` bytes were written at the start of
    /// [`Self::read_buf`].
    ///
    /// # Panics
    ///
    /// When `n` exceeds the length of the slice `read_buf` returned (a
    /// caller bug, not something the network can cause).
    pub fn advance(&mut self, n: usize) {
        assert!(
            n <= self.buf.len() - self.end,
            "advance past the read buffer"
        );
        self.end += n;
    }

    /// Copies as much of `data` as fits and returns how many bytes were
    /// taken; the rest must be fed again after taking records.
    pub fn feed(&mut self, data: &[u8]) -> usize {
        let dst = self.read_buf();
        let n = dst.len().min(data.len());
        dst[..n].copy_from_slice(&data[..n]);
        self.end += n;
        n
    }

    /// The next complete record body, `Ok(None)` when more bytes are
    /// needed, or the error that made the stream unusable (returned again on
    /// every later call).
    pub fn next_record(&mut self) -> Result<Option<&[u8]>, FramingError> {
        Ok(self.next_range()?.map(|r| &self.buf[r]))
    }

    /// As [`Self::next_record`], with the body mutable (to decrypt in
    /// place).
    pub fn next_record_mut(&mut self) -> Result<Option<&mut [u8]>, FramingError> {
        Ok(self.next_range()?.map(|r| &mut self.buf[r]))
    }

    fn next_range(&mut self) -> Result<Option<std::ops::Range<usize>>, FramingError> {
        if let Some(e) = self.failed {
            return Err(e);
        }
        let avail = &self.buf[self.start..self.end];
        let Some(header) = avail.first_chunk::<HEADER_LEN>() else {
            return Ok(None);
        };
        let len = usize::from(u16::from_be_bytes(*header));
        if len == 0 {
            return Err(self.fail(FramingError::Empty));
        }
        if len > self.max_record {
            return Err(self.fail(FramingError::TooLarge {
                len,
                max: self.max_record,
            }));
        }
        if avail.len() < HEADER_LEN + len {
            return Ok(None);
        }
        let body = self.start + HEADER_LEN;
        self.start = body + len;
        Ok(Some(body..body + len))
    }

    fn fail(&mut self, e: FramingError) -> FramingError {
        self.failed = Some(e);
        e
    }

    /// Moves unconsumed bytes to the front once the free tail cannot hold
    /// a whole record any more (the buffer holds two records, so this copies
    /// about one record at most).
    fn compact(&mut self) {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.start > 0 && self.buf.len() - self.end < HEADER_LEN + self.max_record {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
    }
}

/// Frames outgoing records into a bounded buffer that the caller drains
/// into the stream.
#[derive(Debug)]
pub struct RecordEncoder {
    buf: Box<[u8]>,
    start: usize,
    end: usize,
    max_record: usize,
}

impl RecordEncoder {
    /// An encoder for record bodies of up to `max_record` bytes (clamped to
    /// [`MAX_RECORD_LIMIT`]) holding at most `capacity` framed bytes (at
    /// least one full record).
    pub fn new(max_record: usize, capacity: usize) -> Self {
        let max_record = max_record.clamp(1, MAX_RECORD_LIMIT);
        let capacity = capacity.max(HEADER_LEN + max_record);
        Self {
            buf: vec![0; capacity].into_boxed_slice(),
            start: 0,
            end: 0,
            max_record,
        }
    }

    /// The largest record body accepted.
    pub fn max_record(&self) -> usize {
        self.max_record
    }

    /// Whether nothing is waiting to be written.
    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }

    /// Whether a record of `len` body bytes fits now.
    pub fn has_room(&self, len: usize) -> bool {
        self.free() >= HEADER_LEN + len
    }

    /// Frames `record`. `Ok(false)` means the buffer is full: write out
    /// [`Self::pending`] first, or drop the record.
    pub fn push(&mut self, record: &[u8]) -> Result<bool, FramingError> {
        self.push_with(record.len(), |dst| {
            dst.copy_from_slice(record);
            record.len()
        })
    }

    /// Frames a record written in place: `fill` gets a slice of `max_len`
    /// bytes, writes the body at its start (e.g. encrypts into it) and
    /// returns the body length. Saves a copy on the data path. `Ok(false)`
    /// when `max_len` does not fit now (`fill` is not called).
    ///
    /// # Panics
    ///
    /// When `fill` returns a length above `max_len` (a caller bug).
    pub fn push_with(
        &mut self,
        max_len: usize,
        fill: impl FnOnce(&mut [u8]) -> usize,
    ) -> Result<bool, FramingError> {
        if max_len > self.max_record {
            return Err(FramingError::TooLarge {
                len: max_len,
                max: self.max_record,
            });
        }
        if !self.has_room(max_len) {
            return Ok(false);
        }
        if self.buf.len() - self.end < HEADER_LEN + max_len {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        let body = self.end + HEADER_LEN;
        let len = fill(&mut self.buf[body..body + max_len]);
        assert!(len <= max_len, "record body longer than reserved");
        if len == 0 {
            return Err(FramingError::Empty);
        }
        // len <= max_record <= u16::MAX, checked above
        let header = u16::try_from(len).unwrap_or(u16::MAX).to_be_bytes();
        self.buf[self.end..body].copy_from_slice(&header);
        self.end = body + len;
        Ok(true)
    }

    /// Framed bytes waiting to be written to the stream.
    pub fn pending(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    /// Records that the first `n` bytes of [`Self::pending`] were written.
    ///
    /// # Panics
    ///
    /// When `n` exceeds the pending length (a caller bug).
    pub fn consume(&mut self, n: usize) {
        assert!(n <= self.end - self.start, "consumed more than pending");
        self.start += n;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    fn free(&self) -> usize {
        self.buf.len() - (self.end - self.start)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn drain(dec: &mut RecordDecoder) -> Result<Vec<Vec<u8>>, FramingError> {
        let mut out = Vec::new();
        while let Some(r) = dec.next_record()? {
            out.push(r.to_vec());
        }
        Ok(out)
    }

    #[test]
    fn decodes_byte_vector() {
        let mut dec = RecordDecoder::new(16);
        let wire = [0x00, 0x03, b'a', b'b', b'c', 0x00, 0x01, 0xff];
        assert_eq!(dec.feed(&wire), wire.len());
        assert_eq!(drain(&mut dec).unwrap(), vec![b"abc".to_vec(), vec![0xff]]);
        assert_eq!(dec.buffered(), 0);
    }

    #[test]
    fn split_reads_wait_for_the_whole_record() {
        let mut dec = RecordDecoder::new(16);
        let wire = [0x00, 0x04, 1, 2, 3, 4];
        for (i, b) in wire.iter().enumerate() {
            assert_eq!(dec.next_record().unwrap(), None, "after {i} bytes");
            dec.feed(&[*b]);
        }
        let body = dec.next_record_mut().unwrap().unwrap();
        body[0] = 9;
        assert_eq!(body, &[9, 2, 3, 4]);
        assert_eq!(dec.next_record().unwrap(), None);
    }

    #[test]
    fn errors_are_sticky() {
        let cases: &[(&[u8], FramingError)] = &[
            (&[0x00, 0x00], FramingError::Empty),
            (&[0x00, 0x11], FramingError::TooLarge { len: 17, max: 16 }),
            (
                &[0xff, 0xff, 0],
                FramingError::TooLarge {
                    len: 65535,
                    max: 16,
                },
            ),
            // a good record first, then a bad header
            (&[0x00, 0x01, 7, 0x00, 0x00], FramingError::Empty),
        ];
        for (wire, err) in cases {
            let mut dec = RecordDecoder::new(16);
            dec.feed(wire);
            assert_eq!(drain(&mut dec), Err(*err), "{wire:?}");
            assert_eq!(dec.next_record(), Err(*err), "{wire:?} again");
        }
    }

    #[test]
    fn read_buf_respects_the_bound() {
        let mut dec = RecordDecoder::new(4);
        // two full records fill the buffer exactly
        let wire = [0, 4, 1, 1, 1, 1, 0, 4, 2, 2, 2, 2, 0, 1, 3];
        assert_eq!(dec.feed(&wire), 12);
        assert!(dec.read_buf().is_empty());
        assert_eq!(dec.next_record().unwrap(), Some(&[1, 1, 1, 1][..]));
        // taking one record makes room again
        assert_eq!(dec.feed(&wire[12..]), 3);
        assert_eq!(drain(&mut dec).unwrap(), vec![vec![2; 4], vec![3]]);
    }

    #[test]
    fn encoder_frames_and_applies_backpressure() {
        let mut enc = RecordEncoder::new(4, 8);
        assert_eq!(enc.push(b"abc"), Ok(true));
        assert_eq!(enc.pending(), &[0, 3, b'a', b'b', b'c']);
        // 5 of 8 bytes used: a 2-byte record (4 framed) does not fit
        assert_eq!(enc.push(b"de"), Ok(false));
        assert_eq!(
            enc.push(b"12345"),
            Err(FramingError::TooLarge { len: 5, max: 4 })
        );
        assert_eq!(enc.push(b""), Err(FramingError::Empty));
        enc.consume(4);
        assert_eq!(enc.push(b"de"), Ok(true));
        assert_eq!(enc.pending(), &[b'c', 0, 2, b'd', b'e']);
        enc.consume(5);
        assert!(enc.is_empty());
    }

    #[test]
    fn push_with_writes_in_place() {
        let mut enc = RecordEncoder::new(32, 64);
        let pushed = enc.push_with(32, |dst| {
            dst[..2].copy_from_slice(b"hi");
            2
        });
        assert_eq!(pushed, Ok(true));
        assert_eq!(enc.pending(), &[0, 2, b'h', b'i']);
    }

    proptest! {
        #[test]
        fn round_trip_any_split(
            records in proptest::collection::vec(
                proptest::collection::vec(any::<u8>(), 1..300), 0..20),
            chunk in 1usize..700,
        ) {
            let mut enc = RecordEncoder::new(300, 1 << 16);
            let mut wire = Vec::new();
            for r in &records {
                prop_assert_eq!(enc.push(r), Ok(true));
                wire.extend_from_slice(enc.pending());
                let n = enc.pending().len();
                enc.consume(n);
            }
            let mut dec = RecordDecoder::new(300);
            let mut got = Vec::new();
            for piece in wire.chunks(chunk) {
                let mut rest = piece;
                while !rest.is_empty() {
                    let n = dec.feed(rest);
                    rest = &rest[n..];
                    got.extend(drain(&mut dec).unwrap());
                }
            }
            prop_assert_eq!(got, records);
            prop_assert_eq!(dec.buffered(), 0);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2000)) {
            let mut dec = RecordDecoder::new(512);
            let mut rest = &bytes[..];
            while !rest.is_empty() {
                let n = dec.feed(rest);
                rest = &rest[n..];
                match drain(&mut dec) {
                    Ok(_) => {}
                    Err(_) => break,
                }
                if n == 0 { break; }
            }
        }
    }
}
