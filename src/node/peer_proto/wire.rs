//! Peer-protocol wire format: a zero-copy [`Packet`] view and the typed
//! [`Message`] representation (STYLE principle 5).
//!
//! Every integer is big-endian. A packet is:
//!
//! ```text
//!  0  2  magic "r6"
//!  2  1  version (1)
//!  3  1  message type
//!  4 17  sender prefix    (u128 value, u8 length: the certificate CN)
//! 21 17  recipient prefix
//! 38  8  sequence (microseconds since the UNIX epoch, strictly increasing
//!        per sender)
//! 46  2  certificate length C
//! 48  2  body length B
//! 50  C  sender certificate (DER)
//!  .  B  body
//!  . 64  Ed25519 signature by the certificate's key over
//!        SIGNATURE_CONTEXT || every byte before the signature
//! ```
//!
//! Bodies by type: address request, node-info request and topology request
//! are empty; address reply is `count u8` then per address `family u8 (4 or
//! 6), ip (4 or 16), port u16, proto u8`; configuration version is `u64`;
//! retirement request and acknowledgement are `id u32`; refusal is `id u32,
//! reason u8`; node info is `len u8` and UTF-8 text; topology is `count
//! u16` then 17-byte prefixes.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::node::{Address, Proto};
use crate::pki::NodePrefix;

/// The two bytes every packet starts with.
pub const MAGIC: [u8; 2] = *b"r6";
/// The protocol version this code speaks.
pub const VERSION: u8 = 1;
/// The UDP port the protocol runs on, on re6st addresses.
pub const PORT: u16 = 326;
/// Length of the fixed header.
pub const HEADER_LEN: usize = field::CERT.start;
/// Length of the trailing signature.
pub const SIGNATURE_LEN: usize = 64;
/// Prepended to the signed bytes so that a peer-protocol signature can never
/// be mistaken for another use of the node key.
pub const SIGNATURE_CONTEXT: &[u8] = b"re6st peer protocol v1\0";
/// Largest packet we emit or accept (fits a UDP datagram).
pub const MAX_PACKET_LEN: usize = 8192;
/// Most addresses an address reply carries.
pub const MAX_ADDRESSES: usize = 32;
/// Longest node-info text.
pub const MAX_INFO_LEN: usize = 255;

mod field {
    use std::ops::Range;

    pub(super) const MAGIC: Range<usize> = 0..2;
    pub(super) const VERSION: usize = 2;
    pub(super) const TYPE: usize = 3;
    pub(super) const SENDER: Range<usize> = 4..21;
    pub(super) const RECIPIENT: Range<usize> = 21..38;
    pub(super) const SEQUENCE: Range<usize> = 38..46;
    pub(super) const CERT_LEN: Range<usize> = 46..48;
    pub(super) const BODY_LEN: Range<usize> = 48..50;
    pub(super) const CERT: Range<usize> = 50..50;
}

/// Why bytes are not a well-formed packet. `Copy`, with a static reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The packet is shorter than its header and signature, or than its
    /// length fields say.
    #[error("truncated packet: {0}")]
    Truncated(&'static str),
    /// Bytes left after the signature, or inside a body after its fields.
    #[error("trailing bytes: {0}")]
    Trailing(&'static str),
    /// Not a peer-protocol packet.
    #[error("bad magic")]
    BadMagic,
    /// A version we do not speak.
    #[error("unsupported version {0}")]
    Version(u8),
    /// A message type we do not know.
    #[error("unknown message type {0}")]
    UnknownType(u8),
    /// A field holds a value out of its range.
    #[error("invalid field: {0}")]
    Invalid(&'static str),
    /// The caller's buffer is too small for the packet.
    #[error("buffer too small")]
    BufferTooSmall,
}

/// A message type code point.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MessageType {
    /// Ask for the recipient's announced addresses.
    AddressRequest,
    /// The sender's announced addresses.
    AddressReply,
    /// The version of the network configuration the sender has.
    ConfigVersion,
    /// Ask the recipient to agree to close the sender's tunnel to it.
    RetireRequest,
    /// Agreement to a retirement request.
    RetireAck,
    /// Refusal of a retirement request.
    RetireNack,
    /// Ask for the recipient's node info.
    InfoRequest,
    /// The sender's node info.
    Info,
    /// Ask for the recipient's tunnel neighbours.
    TopologyRequest,
    /// The sender's tunnel neighbours.
    Topology,
    /// The underlay address the sender sees the recipient's packets come
    /// from (NAT: learning our public address).
    Observed,
    /// Ask the recipient to punch a UDP hole towards the sender.
    PunchRequest,
    /// The recipient agrees to punch, and says where to.
    PunchAccept,
    /// The recipient refuses to punch.
    PunchRefuse,
    /// A code point this version does not know.
    Unknown(u8),
}

impl From<u8> for MessageType {
    fn from(code: u8) -> Self {
        match code {
            1 => Self::AddressRequest,
            2 => Self::AddressReply,
            3 => Self::ConfigVersion,
            4 => Self::RetireRequest,
            5 => Self::RetireAck,
            6 => Self::RetireNack,
            7 => Self::InfoRequest,
            8 => Self::Info,
            9 => Self::TopologyRequest,
            10 => Self::Topology,
            11 => Self::Observed,
            12 => Self::PunchRequest,
            13 => Self::PunchAccept,
            14 => Self::PunchRefuse,
            other => Self::Unknown(other),
        }
    }
}

impl From<MessageType> for u8 {
    fn from(t: MessageType) -> Self {
        match t {
            MessageType::AddressRequest => 1,
            MessageType::AddressReply => 2,
            MessageType::ConfigVersion => 3,
            MessageType::RetireRequest => 4,
            MessageType::RetireAck => 5,
            MessageType::RetireNack => 6,
            MessageType::InfoRequest => 7,
            MessageType::Info => 8,
            MessageType::TopologyRequest => 9,
            MessageType::Topology => 10,
            MessageType::Observed => 11,
            MessageType::PunchRequest => 12,
            MessageType::PunchAccept => 13,
            MessageType::PunchRefuse => 14,
            MessageType::Unknown(other) => other,
        }
    }
}

/// A zero-copy view over a packet whose lengths have been checked: no
/// accessor can panic once [`Packet::new_checked`] succeeded.
#[derive(Clone, Copy, Debug)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Checks magic, version and that the length fields match the buffer
    /// exactly.
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let b = buffer.as_ref();
        if b.len() < HEADER_LEN + SIGNATURE_LEN {
            return Err(WireError::Truncated("shorter than header and signature"));
        }
        if b[field::MAGIC] != MAGIC {
            return Err(WireError::BadMagic);
        }
        if b[field::VERSION] != VERSION {
            return Err(WireError::Version(b[field::VERSION]));
        }
        let packet = Self { buffer };
        let total = HEADER_LEN + packet.cert_len() + packet.body_len() + SIGNATURE_LEN;
        let len = packet.buffer.as_ref().len();
        if len < total {
            return Err(WireError::Truncated("shorter than its length fields"));
        }
        if len > total {
            return Err(WireError::Trailing("after the signature"));
        }
        Ok(packet)
    }

    /// The message type.
    pub fn message_type(&self) -> MessageType {
        self.buffer.as_ref()[field::TYPE].into()
    }

    /// The sender prefix field, raw (value, length).
    pub fn sender_raw(&self) -> (u128, u8) {
        prefix_raw(&self.buffer.as_ref()[field::SENDER])
    }

    /// The recipient prefix field, raw (value, length).
    pub fn recipient_raw(&self) -> (u128, u8) {
        prefix_raw(&self.buffer.as_ref()[field::RECIPIENT])
    }

    /// The sender's sequence number (microseconds since the UNIX epoch).
    pub fn sequence(&self) -> u64 {
        u64::from_be_bytes(array(&self.buffer.as_ref()[field::SEQUENCE]))
    }

    fn cert_len(&self) -> usize {
        usize::from(u16::from_be_bytes(array(
            &self.buffer.as_ref()[field::CERT_LEN],
        )))
    }

    fn body_len(&self) -> usize {
        usize::from(u16::from_be_bytes(array(
            &self.buffer.as_ref()[field::BODY_LEN],
        )))
    }

    /// The sender's DER certificate.
    pub fn cert(&self) -> &[u8] {
        let start = HEADER_LEN;
        &self.buffer.as_ref()[start..start + self.cert_len()]
    }

    /// The body bytes.
    pub fn body(&self) -> &[u8] {
        let start = HEADER_LEN + self.cert_len();
        &self.buffer.as_ref()[start..start + self.body_len()]
    }

    /// The bytes the signature covers (after [`SIGNATURE_CONTEXT`]).
    pub fn signed(&self) -> &[u8] {
        let b = self.buffer.as_ref();
        &b[..b.len() - SIGNATURE_LEN]
    }

    /// The signature.
    pub fn signature(&self) -> [u8; SIGNATURE_LEN] {
        let b = self.buffer.as_ref();
        array(&b[b.len() - SIGNATURE_LEN..])
    }
}

/// A list of addresses: parsed from a body (validated, zero-copy) or given
/// by the sender.
#[derive(Clone, Copy, Debug)]
pub enum Addresses<'a> {
    /// Validated wire bytes (after the count).
    Wire {
        /// Entry bytes.
        bytes: &'a [u8],
        /// Number of entries.
        count: usize,
    },
    /// A list to emit.
    List(&'a [Address]),
}

impl<'a> Addresses<'a> {
    /// Iterates over the addresses.
    pub fn iter(&self) -> AddressIter<'a> {
        match *self {
            Self::Wire { bytes, count } => AddressIter::Wire(bytes, count),
            Self::List(list) => AddressIter::List(list.iter()),
        }
    }

    /// Number of addresses.
    pub fn len(&self) -> usize {
        match self {
            Self::Wire { count, .. } => *count,
            Self::List(list) => list.len(),
        }
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn emitted_len(&self) -> usize {
        1 + self.iter().map(|a| address_len(&a)).sum::<usize>()
    }
}

impl PartialEq for Addresses<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.iter().eq(other.iter())
    }
}

/// Iterator over [`Addresses`].
#[derive(Clone, Debug)]
pub enum AddressIter<'a> {
    /// Over validated wire bytes.
    Wire(&'a [u8], usize),
    /// Over a slice.
    List(std::slice::Iter<'a, Address>),
}

impl Iterator for AddressIter<'_> {
    type Item = Address;

    fn next(&mut self) -> Option<Address> {
        match self {
            Self::List(it) => it.next().copied(),
            Self::Wire(bytes, count) => {
                if *count == 0 {
                    return None;
                }
                // Validated at parse time; a short read ends the iteration
                // instead of panicking.
                let (addr, used) = read_address(bytes).ok()?;
                *bytes = &bytes[used..];
                *count -= 1;
                Some(addr)
            }
        }
    }
}

/// A list of node prefixes (topology): validated wire bytes or a slice.
#[derive(Clone, Copy, Debug)]
pub enum Prefixes<'a> {
    /// Validated wire bytes, 17 per prefix.
    Wire(&'a [u8]),
    /// A list to emit.
    List(&'a [NodePrefix]),
}

impl Prefixes<'_> {
    /// Iterates over the prefixes.
    pub fn iter(&self) -> impl Iterator<Item = NodePrefix> + '_ {
        let (wire, list): (&[u8], &[NodePrefix]) = match self {
            Self::Wire(b) => (b, &[]),
            Self::List(l) => (&[], l),
        };
        wire.chunks_exact(17)
            .filter_map(|c| {
                let (v, l) = prefix_raw(c);
                NodePrefix::new(v, l).ok()
            })
            .chain(list.iter().copied())
    }

    /// Number of prefixes.
    pub fn len(&self) -> usize {
        match self {
            Self::Wire(b) => b.len() / 17,
            Self::List(l) => l.len(),
        }
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl PartialEq for Prefixes<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.iter().eq(other.iter())
    }
}

/// A message body, typed. Borrows from the packet it was parsed from.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Body<'a> {
    /// Ask for the recipient's announced addresses.
    AddressRequest,
    /// The sender's announced addresses, by preference.
    AddressReply(Addresses<'a>),
    /// The network-configuration version the sender has.
    ConfigVersion(u64),
    /// Ask the recipient to agree to close the sender's tunnel to it.
    RetireRequest {
        /// Matches the answer to the request.
        id: u32,
    },
    /// The recipient agrees.
    RetireAck {
        /// The request's id.
        id: u32,
    },
    /// The recipient refuses.
    RetireNack {
        /// The request's id.
        id: u32,
        /// Why (free code point: 0 unspecified, 1 no such tunnel, 2
        /// persistent neighbour).
        reason: u8,
    },
    /// Ask for the recipient's node info.
    InfoRequest,
    /// The sender's node info: its software version.
    Info {
        /// Free text, at most [`MAX_INFO_LEN`] bytes.
        software: &'a str,
    },
    /// Ask for the recipient's tunnel neighbours.
    TopologyRequest,
    /// The sender's tunnel neighbours.
    Topology(Prefixes<'a>),
    /// The underlay address (and transport) the sender sees the
    /// recipient's tunnel packets come from.
    Observed(Address),
    /// Ask the recipient to send UDP handshakes to `endpoint` (the sender's
    /// public UDP endpoint) from `delay_ms` after receipt, while the sender
    /// does the same towards the endpoint of the [`Body::PunchAccept`].
    PunchRequest {
        /// Matches the answer to the request.
        id: u32,
        /// The sender's public UDP endpoint.
        endpoint: Address,
        /// Milliseconds between receipt and the first handshake.
        delay_ms: u16,
    },
    /// The recipient agrees: it punches towards the request's endpoint from
    /// `delay_ms` after sending this.
    PunchAccept {
        /// The request's id.
        id: u32,
        /// The recipient's public UDP endpoint.
        endpoint: Address,
        /// Milliseconds between sending this and the first handshake.
        delay_ms: u16,
    },
    /// The recipient refuses to punch.
    PunchRefuse {
        /// The request's id.
        id: u32,
        /// Why (0 unspecified, 1 no public UDP endpoint, 2 busy, 3 not
        /// wanted).
        reason: u8,
    },
}

impl<'a> Body<'a> {
    /// The type code point of this body.
    pub fn message_type(&self) -> MessageType {
        match self {
            Self::AddressRequest => MessageType::AddressRequest,
            Self::AddressReply(_) => MessageType::AddressReply,
            Self::ConfigVersion(_) => MessageType::ConfigVersion,
            Self::RetireRequest { .. } => MessageType::RetireRequest,
            Self::RetireAck { .. } => MessageType::RetireAck,
            Self::RetireNack { .. } => MessageType::RetireNack,
            Self::InfoRequest => MessageType::InfoRequest,
            Self::Info { .. } => MessageType::Info,
            Self::TopologyRequest => MessageType::TopologyRequest,
            Self::Topology(_) => MessageType::Topology,
            Self::Observed(_) => MessageType::Observed,
            Self::PunchRequest { .. } => MessageType::PunchRequest,
            Self::PunchAccept { .. } => MessageType::PunchAccept,
            Self::PunchRefuse { .. } => MessageType::PunchRefuse,
        }
    }

    /// Parses the body of a message of type `t`, rejecting trailing bytes.
    pub fn parse(t: MessageType, b: &'a [u8]) -> Result<Self, WireError> {
        let exact = |n: usize| -> Result<(), WireError> {
            match b.len().cmp(&n) {
                std::cmp::Ordering::Less => Err(WireError::Truncated("body")),
                std::cmp::Ordering::Greater => Err(WireError::Trailing("body")),
                std::cmp::Ordering::Equal => Ok(()),
            }
        };
        Ok(match t {
            MessageType::AddressRequest => exact(0).map(|()| Self::AddressRequest)?,
            MessageType::InfoRequest => exact(0).map(|()| Self::InfoRequest)?,
            MessageType::TopologyRequest => exact(0).map(|()| Self::TopologyRequest)?,
            MessageType::ConfigVersion => {
                exact(8)?;
                Self::ConfigVersion(u64::from_be_bytes(array(b)))
            }
            MessageType::RetireRequest => {
                exact(4)?;
                Self::RetireRequest {
                    id: u32::from_be_bytes(array(b)),
                }
            }
            MessageType::RetireAck => {
                exact(4)?;
                Self::RetireAck {
                    id: u32::from_be_bytes(array(b)),
                }
            }
            MessageType::RetireNack => {
                exact(5)?;
                Self::RetireNack {
                    id: u32::from_be_bytes(array(&b[..4])),
                    reason: b[4],
                }
            }
            MessageType::AddressReply => {
                let (&count, mut rest) = b.split_first().ok_or(WireError::Truncated("body"))?;
                let count = usize::from(count);
                if count > MAX_ADDRESSES {
                    return Err(WireError::Invalid("too many addresses"));
                }
                let entries = rest;
                for _ in 0..count {
                    let (_, used) = read_address(rest)?;
                    rest = &rest[used..];
                }
                if !rest.is_empty() {
                    return Err(WireError::Trailing("address list"));
                }
                Self::AddressReply(Addresses::Wire {
                    bytes: entries,
                    count,
                })
            }
            MessageType::Info => {
                let (&len, rest) = b.split_first().ok_or(WireError::Truncated("body"))?;
                if rest.len() != usize::from(len) {
                    return Err(if rest.len() < usize::from(len) {
                        WireError::Truncated("node info")
                    } else {
                        WireError::Trailing("node info")
                    });
                }
                let software =
                    std::str::from_utf8(rest).map_err(|_| WireError::Invalid("node info utf-8"))?;
                Self::Info { software }
            }
            MessageType::Topology => {
                if b.len() < 2 {
                    return Err(WireError::Truncated("body"));
                }
                let count = usize::from(u16::from_be_bytes(array(&b[..2])));
                let rest = &b[2..];
                if rest.len() != count * 17 {
                    return Err(if rest.len() < count * 17 {
                        WireError::Truncated("topology")
                    } else {
                        WireError::Trailing("topology")
                    });
                }
                for c in rest.chunks_exact(17) {
                    let (v, l) = prefix_raw(c);
                    NodePrefix::new(v, l).map_err(|_| WireError::Invalid("topology prefix"))?;
                }
                Self::Topology(Prefixes::Wire(rest))
            }
            MessageType::Observed => {
                let (addr, used) = read_address(b)?;
                exact(used)?;
                Self::Observed(addr)
            }
            MessageType::PunchRequest | MessageType::PunchAccept => {
                let (id, rest) = b.split_at_checked(4).ok_or(WireError::Truncated("body"))?;
                let (endpoint, used) = read_address(rest)?;
                let rest = &rest[used..];
                match rest.len().cmp(&2) {
                    std::cmp::Ordering::Less => return Err(WireError::Truncated("punch delay")),
                    std::cmp::Ordering::Greater => return Err(WireError::Trailing("body")),
                    std::cmp::Ordering::Equal => {}
                }
                let id = u32::from_be_bytes(array(id));
                let delay_ms = u16::from_be_bytes(array(rest));
                if t == MessageType::PunchRequest {
                    Self::PunchRequest {
                        id,
                        endpoint,
                        delay_ms,
                    }
                } else {
                    Self::PunchAccept {
                        id,
                        endpoint,
                        delay_ms,
                    }
                }
            }
            MessageType::PunchRefuse => {
                exact(5)?;
                Self::PunchRefuse {
                    id: u32::from_be_bytes(array(&b[..4])),
                    reason: b[4],
                }
            }
            MessageType::Unknown(code) => return Err(WireError::UnknownType(code)),
        })
    }

    /// Bytes [`Body::emit`] writes.
    pub fn buffer_len(&self) -> usize {
        match self {
            Self::AddressRequest | Self::InfoRequest | Self::TopologyRequest => 0,
            Self::ConfigVersion(_) => 8,
            Self::RetireRequest { .. } | Self::RetireAck { .. } => 4,
            Self::RetireNack { .. } => 5,
            Self::AddressReply(a) => a.emitted_len(),
            Self::Info { software } => 1 + software.len(),
            Self::Topology(p) => 2 + 17 * p.len(),
            Self::Observed(a) => address_len(a),
            Self::PunchRequest { endpoint, .. } | Self::PunchAccept { endpoint, .. } => {
                4 + address_len(endpoint) + 2
            }
            Self::PunchRefuse { .. } => 5,
        }
    }

    /// Checks the limits [`Body::emit`] relies on.
    pub fn validate(&self) -> Result<(), WireError> {
        match self {
            Self::AddressReply(a) if a.len() > MAX_ADDRESSES => {
                Err(WireError::Invalid("too many addresses"))
            }
            Self::Info { software } if software.len() > MAX_INFO_LEN => {
                Err(WireError::Invalid("node info too long"))
            }
            Self::Topology(p) if p.len() > usize::from(u16::MAX) => {
                Err(WireError::Invalid("too many neighbours"))
            }
            _ => Ok(()),
        }
    }

    /// Writes the body into `buf` and returns its length
    /// ([`Body::buffer_len`]).
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize, WireError> {
        self.validate()?;
        let len = self.buffer_len();
        let buf = buf.get_mut(..len).ok_or(WireError::BufferTooSmall)?;
        match self {
            Self::AddressRequest | Self::InfoRequest | Self::TopologyRequest => {}
            Self::ConfigVersion(v) => buf[..8].copy_from_slice(&v.to_be_bytes()),
            Self::RetireRequest { id } | Self::RetireAck { id } => {
                buf[..4].copy_from_slice(&id.to_be_bytes());
            }
            Self::RetireNack { id, reason } | Self::PunchRefuse { id, reason } => {
                buf[..4].copy_from_slice(&id.to_be_bytes());
                buf[4] = *reason;
            }
            Self::Observed(a) => {
                write_address(a, buf);
            }
            Self::PunchRequest {
                id,
                endpoint,
                delay_ms,
            }
            | Self::PunchAccept {
                id,
                endpoint,
                delay_ms,
            } => {
                buf[..4].copy_from_slice(&id.to_be_bytes());
                let at = 4 + write_address(endpoint, &mut buf[4..]);
                buf[at..at + 2].copy_from_slice(&delay_ms.to_be_bytes());
            }
            Self::AddressReply(a) => {
                // At most MAX_ADDRESSES (validated), so it fits a byte.
                buf[0] = a.len() as u8;
                let mut at = 1;
                for addr in a.iter() {
                    at += write_address(&addr, &mut buf[at..]);
                }
            }
            Self::Info { software } => {
                // At most MAX_INFO_LEN (validated), so it fits a byte.
                buf[0] = software.len() as u8;
                buf[1..1 + software.len()].copy_from_slice(software.as_bytes());
            }
            Self::Topology(p) => {
                // At most u16::MAX (validated).
                buf[..2].copy_from_slice(&(p.len() as u16).to_be_bytes());
                for (i, prefix) in p.iter().enumerate() {
                    write_prefix(&prefix, &mut buf[2 + 17 * i..2 + 17 * (i + 1)]);
                }
            }
        }
        Ok(len)
    }
}

/// A whole message, typed, before or after authentication.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Message<'a> {
    /// The sender (its certificate's CN).
    pub sender: NodePrefix,
    /// The intended recipient.
    pub recipient: NodePrefix,
    /// The sender's sequence number.
    pub sequence: u64,
    /// The sender's DER certificate.
    pub cert: &'a [u8],
    /// The body.
    pub body: Body<'a>,
}

impl<'a> Message<'a> {
    /// Parses a packet's fields (the signature is not checked here; see
    /// [`super::PeerEndpoint::open`]).
    pub fn parse(packet: &Packet<&'a [u8]>) -> Result<Self, WireError> {
        let (v, l) = packet.sender_raw();
        let sender = NodePrefix::new(v, l).map_err(|_| WireError::Invalid("sender prefix"))?;
        let (v, l) = packet.recipient_raw();
        let recipient =
            NodePrefix::new(v, l).map_err(|_| WireError::Invalid("recipient prefix"))?;
        let bytes: &'a [u8] = packet.buffer;
        let cert_len = packet.cert_len();
        let body_start = HEADER_LEN + cert_len;
        Ok(Self {
            sender,
            recipient,
            sequence: packet.sequence(),
            cert: &bytes[HEADER_LEN..body_start],
            body: Body::parse(
                packet.message_type(),
                &bytes[body_start..body_start + packet.body_len()],
            )?,
        })
    }

    /// Bytes [`Message::emit_unsigned`] writes, signature included.
    pub fn buffer_len(&self) -> usize {
        HEADER_LEN + self.cert.len() + self.body.buffer_len() + SIGNATURE_LEN
    }

    /// Writes the packet into `buf` with the signature left zero, and
    /// returns its length. Sign `buf[..len - SIGNATURE_LEN]` (after
    /// [`SIGNATURE_CONTEXT`]) and write the signature in the last 64 bytes.
    pub fn emit_unsigned(&self, buf: &mut [u8]) -> Result<usize, WireError> {
        self.body.validate()?;
        let len = self.buffer_len();
        if len > buf.len() {
            return Err(WireError::BufferTooSmall);
        }
        let cert_len = u16::try_from(self.cert.len())
            .map_err(|_| WireError::Invalid("certificate too long"))?;
        let body_len = u16::try_from(self.body.buffer_len())
            .map_err(|_| WireError::Invalid("body too long"))?;
        let buf = &mut buf[..len];
        buf[field::MAGIC].copy_from_slice(&MAGIC);
        buf[field::VERSION] = VERSION;
        buf[field::TYPE] = self.body.message_type().into();
        write_prefix(&self.sender, &mut buf[field::SENDER]);
        write_prefix(&self.recipient, &mut buf[field::RECIPIENT]);
        buf[field::SEQUENCE].copy_from_slice(&self.sequence.to_be_bytes());
        buf[field::CERT_LEN].copy_from_slice(&cert_len.to_be_bytes());
        buf[field::BODY_LEN].copy_from_slice(&body_len.to_be_bytes());
        let body_start = HEADER_LEN + self.cert.len();
        buf[HEADER_LEN..body_start].copy_from_slice(self.cert);
        let body_end = body_start + self.body.emit(&mut buf[body_start..])?;
        buf[body_end..].fill(0);
        Ok(len)
    }
}

fn array<const N: usize>(b: &[u8]) -> [u8; N] {
    let mut out = [0; N];
    out.copy_from_slice(&b[..N]);
    out
}

fn prefix_raw(b: &[u8]) -> (u128, u8) {
    (u128::from_be_bytes(array(&b[..16])), b[16])
}

fn write_prefix(p: &NodePrefix, buf: &mut [u8]) {
    buf[..16].copy_from_slice(&p.value().to_be_bytes());
    buf[16] = p.len();
}

fn address_len(a: &Address) -> usize {
    match a.ip {
        IpAddr::V4(_) => 1 + 4 + 3,
        IpAddr::V6(_) => 1 + 16 + 3,
    }
}

fn read_address(b: &[u8]) -> Result<(Address, usize), WireError> {
    let (&family, rest) = b.split_first().ok_or(WireError::Truncated("address"))?;
    let ip_len = match family {
        4 => 4,
        6 => 16,
        _ => return Err(WireError::Invalid("address family")),
    };
    if rest.len() < ip_len + 3 {
        return Err(WireError::Truncated("address"));
    }
    let ip = if ip_len == 4 {
        IpAddr::V4(Ipv4Addr::from(array::<4>(rest)))
    } else {
        IpAddr::V6(Ipv6Addr::from(array::<16>(rest)))
    };
    let port = u16::from_be_bytes(array(&rest[ip_len..]));
    let proto = Proto::from(rest[ip_len + 2]);
    Ok((Address { ip, port, proto }, 1 + ip_len + 3))
}

fn write_address(a: &Address, buf: &mut [u8]) -> usize {
    let at = match a.ip {
        IpAddr::V4(ip) => {
            buf[0] = 4;
            buf[1..5].copy_from_slice(&ip.octets());
            5
        }
        IpAddr::V6(ip) => {
            buf[0] = 6;
            buf[1..17].copy_from_slice(&ip.octets());
            17
        }
    };
    buf[at..at + 2].copy_from_slice(&a.port.to_be_bytes());
    buf[at + 2] = a.proto.into();
    at + 3
}
