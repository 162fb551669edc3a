//! Babel version 2 wire format: packets, TLVs, sub-TLVs, address encodings
//! and MACs (RFC 8966, RFC 9079, RFC 8967, RFC 9229, RTT extension).
//!
//! Every format has two layers, as in smoltcp:
//!
//! - zero-copy *views* over a byte buffer ([`Packet`] for the header,
//!   [`TlvBuf`] and [`SubTlvBuf`] for type and length, [`UpdateView`],
//!   [`HelloView`] and friends for each TLV's fixed fields), whose checked
//!   constructor guarantees that no accessor panics;
//! - typed *representations* ([`Tlv`] and its structs) that borrow from the
//!   input, with `parse`, `emit` and `buffer_len`.
//!
//! Parsing a packet yields an iterator of `Result<Tlv, Error>` ([`Tlvs`])
//! that decompresses prefixes, tracks the current router-id and next hops,
//! keeps unknown TLVs as [`Tlv::Unknown`], reports TLVs carrying an unknown
//! mandatory sub-TLV as [`Tlv::Dropped`], and stops after the first error.
//! It allocates nothing.
//!
//! Emission goes through [`PacketBuilder`], which writes into a buffer the
//! caller owns, up to the interface MTU, aggregating TLVs the way babeld
//! does (Router-Id and Next-Hop only when they change, prefix compression
//! across consecutive updates) and answers [`BuildError::Full`] when the
//! caller must flush and start a new packet.
//!
//! [`mac`] computes and verifies RFC 8967 MACs over the pseudo-header and
//! the packet.

pub mod mac;
mod packet;
mod prefix;
mod subtlv;
mod tlv;

pub use packet::{BuildError, Packet, PacketBuilder, HEADER_LEN, MAGIC, VERSION};
pub use prefix::{Ae, CompressionState, Prefix, PrefixError};
pub use subtlv::{SubTlv, SubTlvBuf, SubTlvType, SubTlvs};
pub use tlv::{
    Ack, AckReq, ChallengeReply, ChallengeRequest, DropReason, Dropped, Hello, Ihu, IhuTimestamp,
    Mac, NextHop, ParseState, Pc, RouteRequest, RouterId, SeqnoRequest, Tlv, TlvBuf, TlvType, Tlvs,
    Unknown, Update, INFINITY,
};
pub use tlv::{
    AckReqView, AckView, HelloView, IhuView, NextHopView, PcView, RouteRequestView, RouterIdView,
    SeqnoRequestView, UpdateView,
};

/// A malformed Babel packet, TLV or sub-TLV.
///
/// Parse errors are cheap to copy and carry a static description of the
/// field at fault, so the router can log them without allocating.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The input ends before a fixed field or before a declared length.
    #[error("truncated {0}")]
    Truncated(&'static str),
    /// A field holds a value the protocol forbids.
    #[error("malformed {0}")]
    Malformed(&'static str),
    /// The first byte of the packet is not the Babel magic number (42).
    #[error("bad magic byte {0}")]
    Magic(u8),
    /// The packet is not Babel version 2.
    #[error("unsupported babel version {0}")]
    Version(u8),
}

/// Declares a code-point enum with an `Unknown` variant and conversions
/// from and to its integer type (smoltcp's `enum_with_unknown!`).
macro_rules! enum_with_unknown {
    (
        $(#[$enum_attr:meta])*
        pub enum $name:ident($ty:ty) {
            $(
                $(#[$variant_attr:meta])*
                $variant:ident = $value:expr
            ),+ $(,)?
        }
    ) => {
        $(#[$enum_attr])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $(
                $(#[$variant_attr])*
                $variant,
            )+
            /// A code point this implementation does not know.
            Unknown($ty),
        }

        impl From<$ty> for $name {
            fn from(value: $ty) -> Self {
                match value {
                    $($value => Self::$variant,)+
                    other => Self::Unknown(other),
                }
            }
        }

        impl From<$name> for $ty {
            fn from(value: $name) -> Self {
                match value {
                    $($name::$variant => $value,)+
                    $name::Unknown(other) => other,
                }
            }
        }
    };
}
pub(crate) use enum_with_unknown;

/// Reads a big-endian `u16` at `at`; the caller has checked the length.
pub(crate) fn be16(bytes: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([bytes[at], bytes[at + 1]])
}

/// Reads a big-endian `u32` at `at`; the caller has checked the length.
pub(crate) fn be32(bytes: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}
