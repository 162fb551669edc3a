//! The Babel packet: header view (magic, version, body length), body and
//! trailer, and the builder that aggregates TLVs into a caller-owned
//! buffer.

use std::net::IpAddr;

use super::prefix::prefix_ae;
use super::tlv::{NextHop, RouterId};
use super::{Ae, CompressionState, Error, Tlv, Tlvs};

/// The first byte of every Babel packet.
pub const MAGIC: u8 = 42;
/// The protocol version this crate speaks.
pub const VERSION: u8 = 2;
/// Size of the packet header.
pub const HEADER_LEN: usize = 4;

mod field {
    use core::ops::Range;

    pub(super) const MAGIC: usize = 0;
    pub(super) const VERSION: usize = 1;
    pub(super) const BODY_LEN: Range<usize> = 2..4;
}

/// A zero-copy view of a Babel packet: header, body and trailer (the bytes
/// after the body, where RFC 8967 MAC TLVs live).
///
/// After [`Packet::new_checked`] succeeds, no accessor panics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wraps a buffer without checking it.
    pub fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    /// Wraps a buffer, checking magic, version and that the body length
    /// fits in the buffer.
    pub fn new_checked(buffer: T) -> Result<Self, Error> {
        let packet = Self::new_unchecked(buffer);
        packet.check()?;
        Ok(packet)
    }

    /// Checks magic, version and lengths.
    pub fn check(&self) -> Result<(), Error> {
        let b = self.buffer.as_ref();
        if b.len() < HEADER_LEN {
            return Err(Error::Truncated("packet header"));
        }
        if b[field::MAGIC] != MAGIC {
            return Err(Error::Magic(b[field::MAGIC]));
        }
        if b[field::VERSION] != VERSION {
            return Err(Error::Version(b[field::VERSION]));
        }
        if b.len() < HEADER_LEN + usize::from(self.body_len()) {
            return Err(Error::Truncated("packet body"));
        }
        Ok(())
    }

    /// The magic byte.
    ///
    /// # Panics
    ///
    /// On an unchecked buffer shorter than the header.
    pub fn magic(&self) -> u8 {
        self.buffer.as_ref()[field::MAGIC]
    }

    /// The version byte.
    ///
    /// # Panics
    ///
    /// On an unchecked buffer shorter than the header.
    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[field::VERSION]
    }

    /// The body length field.
    ///
    /// # Panics
    ///
    /// On an unchecked buffer shorter than the header.
    pub fn body_len(&self) -> u16 {
        super::be16(self.buffer.as_ref(), field::BODY_LEN.start)
    }

    /// The body: the TLVs covered by the MAC.
    ///
    /// # Panics
    ///
    /// On an unchecked buffer shorter than its body length.
    pub fn body(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..HEADER_LEN + usize::from(self.body_len())]
    }

    /// The header and body: what a MAC covers (after the pseudo-header).
    ///
    /// # Panics
    ///
    /// On an unchecked buffer shorter than its body length.
    pub fn header_and_body(&self) -> &[u8] {
        &self.buffer.as_ref()[..HEADER_LEN + usize::from(self.body_len())]
    }

    /// The trailer: everything after the body.
    ///
    /// # Panics
    ///
    /// On an unchecked buffer shorter than its body length.
    pub fn trailer(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN + usize::from(self.body_len())..]
    }

    /// The TLVs of the body.
    pub fn tlvs(&self) -> Tlvs<'_> {
        Tlvs::new(self.body())
    }

    /// The TLVs of the trailer (MAC and padding).
    pub fn trailer_tlvs(&self) -> Tlvs<'_> {
        Tlvs::new(self.trailer())
    }

    /// The wrapped buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }
}

impl<'a> Packet<&'a [u8]> {
    /// The body TLVs, borrowing the buffer rather than the view.
    pub fn into_tlvs(self) -> Tlvs<'a> {
        let len = usize::from(self.body_len());
        Tlvs::new(&self.buffer[HEADER_LEN..HEADER_LEN + len])
    }

    /// The trailer TLVs, borrowing the buffer rather than the view.
    pub fn into_trailer_tlvs(self) -> Tlvs<'a> {
        let len = usize::from(self.body_len());
        Tlvs::new(&self.buffer[HEADER_LEN + len..])
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Writes magic, version and body length.
    ///
    /// # Panics
    ///
    /// If the buffer is shorter than the header.
    pub fn set_header(&mut self, body_len: u16) {
        let b = self.buffer.as_mut();
        b[field::MAGIC] = MAGIC;
        b[field::VERSION] = VERSION;
        b[field::BODY_LEN].copy_from_slice(&body_len.to_be_bytes());
    }
}

/// Why [`PacketBuilder::push`] did not add a TLV. Nothing was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BuildError {
    /// The packet has no room left for this TLV: finish it, send it, and
    /// push the TLV into a new packet.
    #[error("packet full")]
    Full,
    /// The TLV does not fit even in an empty packet of this size.
    #[error("tlv larger than the packet size")]
    TooBig,
    /// The TLV cannot be encoded (reason given).
    #[error("cannot encode tlv: {0}")]
    Invalid(&'static str),
}

/// Aggregates TLVs into one packet in a caller-owned buffer.
///
/// Like babeld's buffered output, it tracks what the packet has already
/// established: a Router-Id TLV is written before an Update only when the
/// Update's router-id differs from the current one, a Next-Hop TLV only
/// when the Update's next hop changes, and Update prefixes are compressed
/// against the previous Update of the same family. When a TLV does not fit,
/// [`BuildError::Full`] tells the caller to [`finish`](Self::finish) the
/// packet, send it, and start a new one.
#[derive(Debug)]
pub struct PacketBuilder<'b> {
    buf: &'b mut [u8],
    /// End of the body region (trailer space excluded).
    limit: usize,
    trailer_len: usize,
    len: usize,
    compression: CompressionState,
    router_id: Option<[u8; 8]>,
    next_hop_v4: Option<IpAddr>,
    next_hop_v6: Option<IpAddr>,
}

impl<'b> PacketBuilder<'b> {
    /// Starts a packet in `buf`, at most `max_len` bytes long (header, body
    /// and trailer: the interface MTU minus the IP and UDP headers), keeping
    /// `trailer_len` bytes free for the MAC trailer ([`super::mac::trailer_len`]).
    pub fn new(buf: &'b mut [u8], max_len: usize, trailer_len: usize) -> Self {
        let total = max_len
            .min(buf.len())
            .min(HEADER_LEN + usize::from(u16::MAX));
        let limit = total.saturating_sub(trailer_len);
        Self {
            buf,
            limit,
            trailer_len,
            len: HEADER_LEN,
            compression: CompressionState::default(),
            router_id: None,
            next_hop_v4: None,
            next_hop_v6: None,
        }
    }

    /// Whether no TLV was pushed yet.
    pub fn is_empty(&self) -> bool {
        self.len == HEADER_LEN
    }

    /// Packet length so far (header and body).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Body bytes still free.
    pub fn remaining(&self) -> usize {
        self.limit.saturating_sub(self.len)
    }

    /// Bytes reserved for the trailer.
    pub fn trailer_len(&self) -> usize {
        self.trailer_len
    }

    /// Appends a TLV, preceded by the Router-Id and Next-Hop TLVs an Update
    /// needs. On error nothing is written and the packet is unchanged.
    pub fn push(&mut self, tlv: &Tlv<'_>) -> Result<(), BuildError> {
        tlv.check().map_err(BuildError::Invalid)?;
        let mut router_id = None;
        let mut next_hop = None;
        if let Tlv::Update(u) = tlv {
            if let Some(id) = u.router_id {
                if self.router_id != Some(id) {
                    router_id = Some(Tlv::RouterId(RouterId { router_id: id }));
                }
            }
            if let Some(p) = &u.prefix {
                let v4_family = prefix_ae(p, u.v4_via_v6) == Ae::Ipv4;
                let current = if v4_family {
                    self.next_hop_v4
                } else {
                    self.next_hop_v6
                };
                match u.next_hop {
                    Some(nh) if nh.is_ipv4() != v4_family => {
                        return Err(BuildError::Invalid("next hop family differs from prefix"))
                    }
                    Some(nh) if current != Some(nh) => {
                        next_hop = Some(Tlv::NextHop(NextHop { address: nh }));
                    }
                    Some(_) => {}
                    // A next hop cannot be unset within a packet.
                    None if current.is_some() => return Err(BuildError::Full),
                    None => {}
                }
            }
        }
        let needed = router_id.map_or(0, |t| t.buffer_len(&self.compression))
            + next_hop.map_or(0, |t| t.buffer_len(&self.compression))
            + tlv.buffer_len(&self.compression);
        if self.len + needed > self.limit {
            return Err(if self.is_empty() {
                BuildError::TooBig
            } else {
                BuildError::Full
            });
        }
        for t in [router_id.as_ref(), next_hop.as_ref(), Some(tlv)]
            .into_iter()
            .flatten()
        {
            self.len += t.emit(&mut self.buf[self.len..], &mut self.compression);
            match t {
                Tlv::RouterId(r) => self.router_id = Some(r.router_id),
                Tlv::NextHop(n) if n.address.is_ipv4() => self.next_hop_v4 = Some(n.address),
                Tlv::NextHop(n) => self.next_hop_v6 = Some(n.address),
                _ => {}
            }
        }
        Ok(())
    }

    /// Writes the header and returns the packet length (header and body).
    /// The packet is `buf[..len]`; a MAC trailer, if any, goes after it
    /// ([`super::mac::sign`]).
    pub fn finish(self) -> usize {
        let body_len = (self.len - HEADER_LEN) as u16;
        Packet::new_unchecked(&mut self.buf[..HEADER_LEN]).set_header(body_len);
        self.len
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{Hello, Prefix, Update, INFINITY};

    #[test]
    fn header_checks() {
        assert_eq!(
            Packet::new_checked(&[42u8, 2, 0][..]),
            Err(Error::Truncated("packet header"))
        );
        assert_eq!(
            Packet::new_checked(&[43u8, 2, 0, 0][..]),
            Err(Error::Magic(43))
        );
        assert_eq!(
            Packet::new_checked(&[42u8, 3, 0, 0][..]),
            Err(Error::Version(3))
        );
        assert_eq!(
            Packet::new_checked(&[42u8, 2, 0, 2, 0][..]),
            Err(Error::Truncated("packet body"))
        );
        let p = Packet::new_checked(&[42u8, 2, 0, 1, 0, 16, 0][..]).unwrap();
        assert_eq!(p.body(), &[0]);
        assert_eq!(p.trailer(), &[16, 0]);
    }

    #[test]
    fn hello_packet_bytes() {
        let mut buf = [0u8; 64];
        let mut b = PacketBuilder::new(&mut buf, 64, 0);
        b.push(&Tlv::Hello(Hello {
            unicast: false,
            seqno: 0x1234,
            interval: 400,
            timestamp: None,
        }))
        .unwrap();
        let n = b.finish();
        assert_eq!(
            &buf[..n],
            &[42, 2, 0, 8, 4, 6, 0, 0, 0x12, 0x34, 0x01, 0x90]
        );
    }

    fn update(prefix: &str, id: u8) -> Update {
        Update {
            interval: 1600,
            seqno: 7,
            metric: 96,
            prefix: Some(prefix.parse().unwrap()),
            v4_via_v6: false,
            src_prefix: None,
            router_id: Some([id; 8]),
            next_hop: None,
        }
    }

    #[test]
    fn builder_aggregates_and_compresses() {
        let mut buf = [0u8; 256];
        let mut b = PacketBuilder::new(&mut buf, 256, 0);
        b.push(&Tlv::Update(update("2001:db8:1::/48", 1))).unwrap();
        b.push(&Tlv::Update(update("2001:db8:2::/48", 1))).unwrap();
        b.push(&Tlv::Update(update("2001:db8:2:1::/64", 2)))
            .unwrap();
        let n = b.finish();
        let expected: &[u8] = &[
            42, 2, 0, 68, // header
            6, 10, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, // router-id 0101..
            8, 16, 2, 0x80, 48, 0, 6, 64, 0, 7, 0, 96, // update, nothing omitted
            0x20, 0x01, 0x0d, 0xb8, 0, 1, // 2001:db8:1::
            8, 11, 2, 0x80, 48, 5, 6, 64, 0, 7, 0, 96, 2, // 5 bytes omitted
            6, 10, 0, 0, 2, 2, 2, 2, 2, 2, 2, 2, // router-id changes
            8, 11, 2, 0x80, 64, 7, 6, 64, 0, 7, 0, 96, 1, // 7 omitted
        ];
        assert_eq!(&buf[..n], expected);
        let packet = Packet::new_checked(&buf[..n]).unwrap();
        let updates: Vec<_> = packet
            .tlvs()
            .filter_map(|t| match t.unwrap() {
                Tlv::Update(u) => Some(u),
                _ => None,
            })
            .collect();
        assert_eq!(
            updates,
            [
                update("2001:db8:1::/48", 1),
                update("2001:db8:2::/48", 1),
                update("2001:db8:2:1::/64", 2)
            ]
        );
    }

    #[test]
    fn builder_reports_full_and_too_big() {
        let mut buf = [0u8; 64];
        let mut b = PacketBuilder::new(&mut buf, 40, 0);
        b.push(&Tlv::Update(update("2001:db8:1::/48", 1))).unwrap();
        let before = b.len();
        assert_eq!(
            b.push(&Tlv::Update(update("2001:db8:1::/48", 9))),
            Err(BuildError::Full)
        );
        assert_eq!(b.len(), before);
        let mut small = [0u8; 16];
        let mut b = PacketBuilder::new(&mut small, 16, 0);
        assert_eq!(
            b.push(&Tlv::Update(update("2001:db8:1::/48", 1))),
            Err(BuildError::TooBig)
        );
    }

    #[test]
    fn builder_keeps_trailer_room_and_next_hop_context() {
        // 4 header + 12 router-id + 18 update = 34 bytes of packet; a
        // 34-byte trailer reservation leaves no room in 60 bytes.
        let mut buf = [0u8; 128];
        let mut b = PacketBuilder::new(&mut buf, 60, 34);
        assert_eq!(
            b.push(&Tlv::Update(update("2001:db8:1::/48", 1))),
            Err(BuildError::TooBig)
        );
        let mut b = PacketBuilder::new(&mut buf, 68, 34);
        b.push(&Tlv::Update(update("2001:db8:1::/48", 1))).unwrap();
        assert_eq!(b.remaining(), 0);

        // An explicit next hop cannot be followed by "the sender" within
        // one packet: the builder asks for a new packet.
        let mut b = PacketBuilder::new(&mut buf, 128, 0);
        let mut via = update("2001:db8:1::/48", 1);
        via.next_hop = Some("fe80::9".parse().unwrap());
        b.push(&Tlv::Update(via)).unwrap();
        b.push(&Tlv::Update(via)).unwrap();
        assert_eq!(
            b.push(&Tlv::Update(update("2001:db8:2::/48", 1))),
            Err(BuildError::Full)
        );
        let n = b.finish();
        let next_hops = Packet::new_checked(&buf[..n])
            .unwrap()
            .into_tlvs()
            .filter(|t| matches!(t, Ok(Tlv::NextHop(_))))
            .count();
        assert_eq!(next_hops, 1);
    }

    #[test]
    fn builder_rejects_inconsistent_tlvs() {
        let mut buf = [0u8; 128];
        let mut b = PacketBuilder::new(&mut buf, 128, 0);
        let mut u = update("2001:db8:1::/48", 1);
        u.src_prefix = Some("10.0.0.0/8".parse().unwrap());
        assert!(matches!(
            b.push(&Tlv::Update(u)),
            Err(BuildError::Invalid(_))
        ));
        let mut u = update("10.0.0.0/8", 1);
        u.next_hop = Some("fe80::1".parse().unwrap());
        assert!(matches!(
            b.push(&Tlv::Update(u)),
            Err(BuildError::Invalid(_))
        ));
        let wildcard = Update {
            prefix: None,
            metric: INFINITY,
            src_prefix: Some(Prefix::V6_DEFAULT),
            ..update("::/0", 1)
        };
        assert!(matches!(
            b.push(&Tlv::Update(wildcard)),
            Err(BuildError::Invalid(_))
        ));
        assert!(b.is_empty());
    }
}
