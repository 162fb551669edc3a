//! Tunnel wire formats: zero-copy views over received bytes and typed
//! representations that emit into caller buffers.
//!
//! Every message starts with a one-byte type and three reserved zero bytes.
//! Integers are big-endian.
//!
//! ```text
//! Init     (1): type rsv[3] sender:u32 noise[32] mac1[16] mac2[16]          = 72 bytes
//! Response (2): type rsv[3] sender:u32 receiver:u32 noise[..]               >= 12 + 80
//! Finish   (3): type rsv[3] receiver:u32 noise[..]                          >= 8 + 64
//! Cookie   (4): type rsv[3] receiver:u32 nonce[12] sealed_cookie[32]        = 52 bytes
//! Data     (5): type rsv[3] receiver:u32 counter:u64 ciphertext[..] tag[16] >= 32 bytes
//! ```
//!
//! The Noise messages are those of `Noise_XX_25519_ChaChaPoly_BLAKE2s`:
//! `Init` carries `e`, `Response` carries `e, ee, s, es` and the responder's
//! certificate, `Finish` carries `s, se` and the initiator's certificate. The
//! data counter doubles as the AEAD nonce and is authenticated together with
//! the rest of the 16-byte header.

/// Length of the data message header (type, reserved, receiver, counter).
pub const DATA_HEADER_LEN: usize = 16;
/// Length of the AEAD tag that ends every data message.
pub const TAG_LEN: usize = 16;
/// Bytes a data message adds around an inner IP packet.
pub const DATA_OVERHEAD: usize = DATA_HEADER_LEN + TAG_LEN;
/// Length of an `Init` message.
pub const INIT_LEN: usize = 72;
/// Length of the Noise part of an `Init` message (the ephemeral key).
pub const INIT_NOISE_LEN: usize = 32;
/// Length of a `CookieReply` message.
pub const COOKIE_REPLY_LEN: usize = 52;
/// Length of a MAC in an `Init` message.
pub const MAC_LEN: usize = 16;
/// Largest handshake message we emit or accept (certificates are small).
pub const MAX_HANDSHAKE_LEN: usize = 2048;

/// Minimum Noise length of a `Response`: e (32) + encrypted s (48) + tag.
const MIN_RESPONSE_NOISE: usize = 32 + 48 + 16;
/// Minimum Noise length of a `Finish`: encrypted s (48) + tag.
const MIN_FINISH_NOISE: usize = 48 + 16;

mod field {
    use core::ops::{Range, RangeFrom};

    pub(super) const TYPE: usize = 0;
    pub(super) const RESERVED: Range<usize> = 1..4;
    pub(super) const IDX_A: Range<usize> = 4..8;
    pub(super) const IDX_B: Range<usize> = 8..12;
    pub(super) const COUNTER: Range<usize> = 8..16;
    pub(super) const INIT_NOISE: Range<usize> = 8..40;
    pub(super) const INIT_MAC1: Range<usize> = 40..56;
    pub(super) const INIT_MAC2: Range<usize> = 56..72;
    pub(super) const RESPONSE_NOISE: RangeFrom<usize> = 12..;
    pub(super) const FINISH_NOISE: RangeFrom<usize> = 8..;
    pub(super) const COOKIE_NONCE: Range<usize> = 8..20;
    pub(super) const COOKIE_SEALED: Range<usize> = 20..52;
}

/// Why bytes from the network are not a valid tunnel message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The message is shorter than its type requires.
    #[error("message truncated")]
    Truncated,
    /// The message is longer than its type allows.
    #[error("message too long")]
    TooLong,
    /// The first byte is not a known message type.
    #[error("unknown message type {0}")]
    UnknownType(u8),
    /// The reserved bytes are not zero.
    #[error("reserved bytes not zero")]
    Reserved,
    /// The destination buffer is too small for the message.
    #[error("buffer too small")]
    BufferTooSmall,
}

/// The message types.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MessageType {
    /// First handshake message (initiator to responder).
    Init,
    /// Second handshake message (responder to initiator).
    Response,
    /// Third handshake message (initiator to responder).
    Finish,
    /// Stateless cookie challenge (responder under load to initiator).
    CookieReply,
    /// Encrypted IP packet or keepalive.
    Data,
}

impl MessageType {
    /// The code point on the wire.
    pub fn code(self) -> u8 {
        match self {
            Self::Init => 1,
            Self::Response => 2,
            Self::Finish => 3,
            Self::CookieReply => 4,
            Self::Data => 5,
        }
    }
}

impl TryFrom<u8> for MessageType {
    type Error = WireError;
    fn try_from(v: u8) -> Result<Self, WireError> {
        Ok(match v {
            1 => Self::Init,
            2 => Self::Response,
            3 => Self::Finish,
            4 => Self::CookieReply,
            5 => Self::Data,
            other => return Err(WireError::UnknownType(other)),
        })
    }
}

fn u32_at(b: &[u8], r: core::ops::Range<usize>) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[r]);
    u32::from_be_bytes(a)
}

/// A checked view over any tunnel message: after [`Packet::new_checked`]
/// succeeds, every accessor of the matching type is in bounds.
#[derive(Debug, Clone, Copy)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
    kind: MessageType,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Checks the type, the reserved bytes and the length for that type.
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let b = buffer.as_ref();
        if b.len() < 8 {
            return Err(WireError::Truncated);
        }
        let kind = MessageType::try_from(b[field::TYPE])?;
        if b[field::RESERVED] != [0, 0, 0] {
            return Err(WireError::Reserved);
        }
        let (min, max) = match kind {
            MessageType::Init => (INIT_LEN, INIT_LEN),
            MessageType::Response => (12 + MIN_RESPONSE_NOISE, MAX_HANDSHAKE_LEN),
            MessageType::Finish => (8 + MIN_FINISH_NOISE, MAX_HANDSHAKE_LEN),
            MessageType::CookieReply => (COOKIE_REPLY_LEN, COOKIE_REPLY_LEN),
            MessageType::Data => (DATA_OVERHEAD, usize::MAX),
        };
        if b.len() < min {
            return Err(WireError::Truncated);
        }
        if b.len() > max {
            return Err(WireError::TooLong);
        }
        Ok(Self { buffer, kind })
    }

    /// The message type.
    pub fn kind(&self) -> MessageType {
        self.kind
    }

    /// The whole message.
    pub fn as_bytes(&self) -> &[u8] {
        self.buffer.as_ref()
    }

    /// The index the receiver chose (Response, Finish, CookieReply, Data);
    /// for `Init` the sender's index.
    pub fn receiver_index(&self) -> u32 {
        let b = self.buffer.as_ref();
        match self.kind {
            MessageType::Response => u32_at(b, field::IDX_B),
            _ => u32_at(b, field::IDX_A),
        }
    }

    /// The sender's index (Init, Response); 0 for other types.
    pub fn sender_index(&self) -> u32 {
        match self.kind {
            MessageType::Init | MessageType::Response => u32_at(self.buffer.as_ref(), field::IDX_A),
            _ => 0,
        }
    }

    /// The Noise handshake message (Init, Response, Finish); empty otherwise.
    pub fn noise(&self) -> &[u8] {
        let b = self.buffer.as_ref();
        match self.kind {
            MessageType::Init => &b[field::INIT_NOISE],
            MessageType::Response => &b[field::RESPONSE_NOISE],
            MessageType::Finish => &b[field::FINISH_NOISE],
            _ => &[],
        }
    }

    /// For `Init`: the bytes covered by mac1, and mac1.
    pub fn mac1(&self) -> Option<(&[u8], &[u8])> {
        let b = self.buffer.as_ref();
        (self.kind == MessageType::Init)
            .then(|| (&b[..field::INIT_MAC1.start], &b[field::INIT_MAC1]))
    }

    /// For `Init`: the bytes covered by mac2, and mac2.
    pub fn mac2(&self) -> Option<(&[u8], &[u8])> {
        let b = self.buffer.as_ref();
        (self.kind == MessageType::Init)
            .then(|| (&b[..field::INIT_MAC2.start], &b[field::INIT_MAC2]))
    }

    /// For `CookieReply`: the nonce and the sealed cookie.
    pub fn cookie(&self) -> Option<(&[u8], &[u8])> {
        let b = self.buffer.as_ref();
        (self.kind == MessageType::CookieReply)
            .then(|| (&b[field::COOKIE_NONCE], &b[field::COOKIE_SEALED]))
    }

    /// For `Data`: the 64-bit counter; 0 otherwise.
    pub fn counter(&self) -> u64 {
        if self.kind != MessageType::Data {
            return 0;
        }
        let mut a = [0u8; 8];
        a.copy_from_slice(&self.buffer.as_ref()[field::COUNTER]);
        u64::from_be_bytes(a)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Consumes the view and returns the buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }
}

/// Writes a data header (`type`, reserved, `receiver`, `counter`) into
/// `buf[..16]`.
///
/// # Panics
///
/// When `buf` is shorter than [`DATA_HEADER_LEN`].
pub fn emit_data_header(buf: &mut [u8], receiver: u32, counter: u64) {
    buf[field::TYPE] = MessageType::Data.code();
    buf[field::RESERVED].fill(0);
    buf[field::IDX_A].copy_from_slice(&receiver.to_be_bytes());
    buf[field::COUNTER].copy_from_slice(&counter.to_be_bytes());
}

/// A handshake or cookie message in typed form, borrowing its variable parts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HandshakeRepr<'a> {
    /// First message; macs are filled in by the cookie layer after emission.
    Init {
        /// The initiator's index for this handshake.
        sender: u32,
        /// The Noise message (the ephemeral key).
        noise: &'a [u8],
        /// mac1 (network membership) and mac2 (cookie, or zeros).
        macs: [[u8; MAC_LEN]; 2],
    },
    /// Second message.
    Response {
        /// The responder's index.
        sender: u32,
        /// The initiator's index.
        receiver: u32,
        /// The Noise message.
        noise: &'a [u8],
    },
    /// Third message.
    Finish {
        /// The responder's index.
        receiver: u32,
        /// The Noise message.
        noise: &'a [u8],
    },
    /// Cookie challenge.
    CookieReply {
        /// The initiator's index.
        receiver: u32,
        /// The AEAD nonce.
        nonce: [u8; 12],
        /// The sealed cookie (16 bytes + 16-byte tag).
        sealed: [u8; 32],
    },
}

impl<'a> HandshakeRepr<'a> {
    /// Parses a checked packet that is not a data message.
    pub fn parse<T: AsRef<[u8]>>(p: &'a Packet<T>) -> Result<Self, WireError> {
        let b: &'a [u8] = p.buffer.as_ref();
        Ok(match p.kind {
            MessageType::Init => {
                let mut macs = [[0u8; MAC_LEN]; 2];
                macs[0].copy_from_slice(&b[field::INIT_MAC1]);
                macs[1].copy_from_slice(&b[field::INIT_MAC2]);
                Self::Init {
                    sender: u32_at(b, field::IDX_A),
                    noise: &b[field::INIT_NOISE],
                    macs,
                }
            }
            MessageType::Response => Self::Response {
                sender: u32_at(b, field::IDX_A),
                receiver: u32_at(b, field::IDX_B),
                noise: &b[field::RESPONSE_NOISE],
            },
            MessageType::Finish => Self::Finish {
                receiver: u32_at(b, field::IDX_A),
                noise: &b[field::FINISH_NOISE],
            },
            MessageType::CookieReply => {
                let mut nonce = [0u8; 12];
                nonce.copy_from_slice(&b[field::COOKIE_NONCE]);
                let mut sealed = [0u8; 32];
                sealed.copy_from_slice(&b[field::COOKIE_SEALED]);
                Self::CookieReply {
                    receiver: u32_at(b, field::IDX_A),
                    nonce,
                    sealed,
                }
            }
            MessageType::Data => return Err(WireError::UnknownType(MessageType::Data.code())),
        })
    }

    /// Length of the emitted message.
    pub fn buffer_len(&self) -> usize {
        match self {
            Self::Init { .. } => INIT_LEN,
            Self::Response { noise, .. } => 12 + noise.len(),
            Self::Finish { noise, .. } => 8 + noise.len(),
            Self::CookieReply { .. } => COOKIE_REPLY_LEN,
        }
    }

    /// Writes the message at the start of `buf` and returns its length.
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize, WireError> {
        let len = self.buffer_len();
        if buf.len() < len {
            return Err(WireError::BufferTooSmall);
        }
        if len > MAX_HANDSHAKE_LEN {
            return Err(WireError::TooLong);
        }
        let buf = &mut buf[..len];
        buf[field::RESERVED].fill(0);
        match self {
            Self::Init {
                sender,
                noise,
                macs,
            } => {
                if noise.len() != INIT_NOISE_LEN {
                    return Err(WireError::TooLong);
                }
                buf[field::TYPE] = MessageType::Init.code();
                buf[field::IDX_A].copy_from_slice(&sender.to_be_bytes());
                buf[field::INIT_NOISE].copy_from_slice(noise);
                buf[field::INIT_MAC1].copy_from_slice(&macs[0]);
                buf[field::INIT_MAC2].copy_from_slice(&macs[1]);
            }
            Self::Response {
                sender,
                receiver,
                noise,
            } => {
                buf[field::TYPE] = MessageType::Response.code();
                buf[field::IDX_A].copy_from_slice(&sender.to_be_bytes());
                buf[field::IDX_B].copy_from_slice(&receiver.to_be_bytes());
                buf[field::RESPONSE_NOISE].copy_from_slice(noise);
            }
            Self::Finish { receiver, noise } => {
                buf[field::TYPE] = MessageType::Finish.code();
                buf[field::IDX_A].copy_from_slice(&receiver.to_be_bytes());
                buf[field::FINISH_NOISE].copy_from_slice(noise);
            }
            Self::CookieReply {
                receiver,
                nonce,
                sealed,
            } => {
                buf[field::TYPE] = MessageType::CookieReply.code();
                buf[field::IDX_A].copy_from_slice(&receiver.to_be_bytes());
                buf[field::COOKIE_NONCE].copy_from_slice(nonce);
                buf[field::COOKIE_SEALED].copy_from_slice(sealed);
            }
        }
        Ok(len)
    }
}

/// Offset of mac1 in an `Init` message (the bytes before it are covered).
pub const INIT_MAC1_OFFSET: usize = 40;
/// Offset of mac2 in an `Init` message (the bytes before it are covered).
pub const INIT_MAC2_OFFSET: usize = 56;

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn data_header_vector() {
        let mut b = [0xffu8; 32];
        emit_data_header(&mut b, 0x0102_0304, 0x0a0b_0c0d_0e0f_1011);
        assert_eq!(
            &b[..16],
            &[5, 0, 0, 0, 1, 2, 3, 4, 0x0a, 0x0b, 0x0c, 0x0d, 0x0e, 0x0f, 0x10, 0x11]
        );
        let p = Packet::new_checked(&b[..]).unwrap();
        assert_eq!(p.kind(), MessageType::Data);
        assert_eq!(p.receiver_index(), 0x0102_0304);
        assert_eq!(p.counter(), 0x0a0b_0c0d_0e0f_1011);
    }

    #[test]
    fn rejects_bad_input() {
        let cases: &[(&[u8], WireError)] = &[
            (&[], WireError::Truncated),
            (&[5, 0, 0, 0, 0, 0, 0], WireError::Truncated),
            (&[9, 0, 0, 0, 0, 0, 0, 0], WireError::UnknownType(9)),
            (&[0, 0, 0, 0, 0, 0, 0, 0], WireError::UnknownType(0)),
            (&[5, 0, 1, 0, 0, 0, 0, 0], WireError::Reserved),
            (
                &[5, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                WireError::Truncated,
            ),
            (&[1, 0, 0, 0, 0, 0, 0, 0], WireError::Truncated),
            (&[4; 8], WireError::Reserved),
        ];
        for (bytes, err) in cases {
            assert_eq!(Packet::new_checked(*bytes).unwrap_err(), *err, "{bytes:?}");
        }
        let long = [[1u8, 0, 0, 0].as_slice(), &[0u8; 69]].concat();
        assert_eq!(
            Packet::new_checked(&long[..]).unwrap_err(),
            WireError::TooLong
        );
    }

    #[test]
    fn init_vector() {
        let noise = [7u8; 32];
        let repr = HandshakeRepr::Init {
            sender: 0xdead_beef,
            noise: &noise,
            macs: [[1; 16], [2; 16]],
        };
        let mut buf = [0u8; 100];
        let n = repr.emit(&mut buf).unwrap();
        assert_eq!(n, INIT_LEN);
        assert_eq!(&buf[..8], &[1, 0, 0, 0, 0xde, 0xad, 0xbe, 0xef]);
        let p = Packet::new_checked(&buf[..n]).unwrap();
        assert_eq!(p.mac1().unwrap().1, &[1; 16]);
        assert_eq!(p.mac1().unwrap().0.len(), INIT_MAC1_OFFSET);
        assert_eq!(p.mac2().unwrap().1, &[2; 16]);
        assert_eq!(HandshakeRepr::parse(&p).unwrap(), repr);
    }

    fn arb_repr() -> impl Strategy<Value = (u8, u32, u32, Vec<u8>, [u8; 12])> {
        (
            0u8..4,
            any::<u32>(),
            any::<u32>(),
            proptest::collection::vec(any::<u8>(), 96..600),
            any::<[u8; 12]>(),
        )
    }

    proptest! {
        #[test]
        fn handshake_round_trip((kind, a, b, noise, nonce) in arb_repr()) {
            let mut macs = [[0u8; 16]; 2];
            macs[0].copy_from_slice(&noise[..16]);
            let mut sealed = [0u8; 32];
            sealed.copy_from_slice(&noise[..32]);
            let repr = match kind {
                0 => HandshakeRepr::Init { sender: a, noise: &noise[..32], macs },
                1 => HandshakeRepr::Response { sender: a, receiver: b, noise: &noise },
                2 => HandshakeRepr::Finish { receiver: b, noise: &noise },
                _ => HandshakeRepr::CookieReply { receiver: b, nonce, sealed },
            };
            let mut buf = vec![0u8; repr.buffer_len()];
            let n = repr.emit(&mut buf).unwrap();
            prop_assert_eq!(n, buf.len());
            let p = Packet::new_checked(&buf[..]).unwrap();
            prop_assert_eq!(HandshakeRepr::parse(&p).unwrap(), repr);
        }

        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            if let Ok(p) = Packet::new_checked(&bytes[..]) {
                let _ = (p.receiver_index(), p.sender_index(), p.noise(), p.counter(), p.mac1(), p.cookie());
                let _ = HandshakeRepr::parse(&p);
            }
        }
    }
}
