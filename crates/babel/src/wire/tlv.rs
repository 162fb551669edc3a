//! TLVs (RFC 8966 §4.6, RFC 8967 §4.2–4.3): the generic view, the typed
//! representations, and the packet-body iterator with the parser state of
//! RFC 8966 §4.5.

use std::net::IpAddr;

use super::prefix::{
    address_ae, address_len, emit_address, emit_prefix, parse_address, parse_prefix, prefix_ae,
};
use super::subtlv::{SubTlvType, SubTlvs};
use super::{be16, be32, enum_with_unknown, Ae, CompressionState, Error, Prefix};

/// The metric of a retraction.
pub const INFINITY: u16 = 0xffff;

enum_with_unknown! {
    /// TLV type.
    pub enum TlvType(u8) {
        /// One byte of padding, without length.
        Pad1 = 0,
        /// `n` bytes of padding.
        PadN = 1,
        /// Acknowledgment request.
        AckReq = 2,
        /// Acknowledgment.
        Ack = 3,
        /// Hello.
        Hello = 4,
        /// I Heard You.
        Ihu = 5,
        /// Router-Id for the following Updates.
        RouterId = 6,
        /// Next hop for the following Updates.
        NextHop = 7,
        /// Route announcement or retraction.
        Update = 8,
        /// Route request.
        RouteRequest = 9,
        /// Seqno request.
        SeqnoRequest = 10,
        /// RFC 8967 MAC (in the packet trailer).
        Mac = 16,
        /// RFC 8967 packet counter.
        Pc = 17,
        /// RFC 8967 challenge request.
        ChallengeRequest = 18,
        /// RFC 8967 challenge reply.
        ChallengeReply = 19,
    }
}

/// A zero-copy view of one TLV: type, and (except for Pad1) a length and a
/// body that the checked constructor has verified to be in bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TlvBuf<'a> {
    ty: TlvType,
    body: &'a [u8],
    total: usize,
}

impl<'a> TlvBuf<'a> {
    /// Checks the TLV at the start of `bytes` and returns a view of it.
    pub fn new_checked(bytes: &'a [u8]) -> Result<Self, Error> {
        let Some(&ty) = bytes.first() else {
            return Err(Error::Truncated("tlv type"));
        };
        let ty = TlvType::from(ty);
        if ty == TlvType::Pad1 {
            return Ok(Self {
                ty,
                body: &[],
                total: 1,
            });
        }
        let Some(&len) = bytes.get(1) else {
            return Err(Error::Truncated("tlv length"));
        };
        let end = 2 + usize::from(len);
        let Some(body) = bytes.get(2..end) else {
            return Err(Error::Truncated("tlv body"));
        };
        Ok(Self {
            ty,
            body,
            total: end,
        })
    }

    /// The TLV type.
    pub fn tlv_type(&self) -> TlvType {
        self.ty
    }

    /// The body after type and length (empty for Pad1).
    pub fn body(&self) -> &'a [u8] {
        self.body
    }

    /// Bytes taken on the wire, header included.
    pub fn total_len(&self) -> usize {
        self.total
    }
}

/// Declares a zero-copy view of a TLV body with fixed fields at fixed
/// offsets; `new_checked` verifies the fixed part is present, so no
/// accessor can panic. `rest` is what follows: address or prefix, then
/// sub-TLVs.
macro_rules! tlv_view {
    (
        $(#[$attr:meta])*
        $name:ident, $what:literal, len = $len:expr,
        { $( $(#[$fattr:meta])* $field:ident: $kind:ident @ $at:expr ),* $(,)? }
    ) => {
        $(#[$attr])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub struct $name<'a> {
            body: &'a [u8],
        }

        impl<'a> $name<'a> {
            /// Length of the fixed fields.
            pub const FIXED_LEN: usize = $len;

            /// Checks that `body` (a TLV body) holds the fixed fields.
            pub fn new_checked(body: &'a [u8]) -> Result<Self, Error> {
                if body.len() < Self::FIXED_LEN {
                    return Err(Error::Truncated($what));
                }
                Ok(Self { body })
            }

            $(
                $(#[$fattr])*
                pub fn $field(&self) -> tlv_view!(@ty $kind) {
                    tlv_view!(@get $kind, self.body, $at)
                }
            )*

            /// The bytes after the fixed fields.
            pub fn rest(&self) -> &'a [u8] {
                &self.body[Self::FIXED_LEN..]
            }
        }
    };
    (@ty u8) => { u8 };
    (@ty u16) => { u16 };
    (@ty u32) => { u32 };
    (@ty id) => { [u8; 8] };
    (@get u8, $b:expr, $at:expr) => { $b[$at] };
    (@get u16, $b:expr, $at:expr) => { be16($b, $at) };
    (@get u32, $b:expr, $at:expr) => { be32($b, $at) };
    (@get id, $b:expr, $at:expr) => {{
        let mut id = [0; 8];
        id.copy_from_slice(&$b[$at..$at + 8]);
        id
    }};
}

tlv_view! {
    /// View of an Ack Request body.
    AckReqView, "ack request", len = 6, {
        /// Opaque value.
        opaque: u16 @ 2,
        /// Interval, centiseconds.
        interval: u16 @ 4,
    }
}

tlv_view! {
    /// View of an Ack body.
    AckView, "ack", len = 2, {
        /// Opaque value.
        opaque: u16 @ 0,
    }
}

tlv_view! {
    /// View of a Hello body.
    HelloView, "hello", len = 6, {
        /// Flags (0x8000: unicast).
        flags: u16 @ 0,
        /// Seqno.
        seqno: u16 @ 2,
        /// Interval, centiseconds.
        interval: u16 @ 4,
    }
}

tlv_view! {
    /// View of an IHU body; `rest` starts with the address.
    IhuView, "ihu", len = 6, {
        /// Address encoding.
        ae: u8 @ 0,
        /// Receive cost.
        rxcost: u16 @ 2,
        /// Interval, centiseconds.
        interval: u16 @ 4,
    }
}

tlv_view! {
    /// View of a Router-Id body.
    RouterIdView, "router-id", len = 10, {
        /// Router-id.
        router_id: id @ 2,
    }
}

tlv_view! {
    /// View of a Next Hop body; `rest` starts with the address.
    NextHopView, "next hop", len = 2, {
        /// Address encoding.
        ae: u8 @ 0,
    }
}

tlv_view! {
    /// View of an Update body; `rest` starts with the (compressed) prefix.
    UpdateView, "update", len = 10, {
        /// Address encoding.
        ae: u8 @ 0,
        /// Flags (0x80: set default prefix, 0x40: router-id from prefix).
        flags: u8 @ 1,
        /// Prefix length in bits.
        plen: u8 @ 2,
        /// Leading bytes taken from the default prefix.
        omitted: u8 @ 3,
        /// Interval, centiseconds.
        interval: u16 @ 4,
        /// Seqno.
        seqno: u16 @ 6,
        /// Metric.
        metric: u16 @ 8,
    }
}

tlv_view! {
    /// View of a Route Request body; `rest` starts with the prefix.
    RouteRequestView, "route request", len = 2, {
        /// Address encoding.
        ae: u8 @ 0,
        /// Prefix length in bits.
        plen: u8 @ 1,
    }
}

tlv_view! {
    /// View of a Seqno Request body; `rest` starts with the prefix.
    SeqnoRequestView, "seqno request", len = 14, {
        /// Address encoding.
        ae: u8 @ 0,
        /// Prefix length in bits.
        plen: u8 @ 1,
        /// Requested seqno.
        seqno: u16 @ 2,
        /// Hop count.
        hop_count: u8 @ 4,
        /// Router-id.
        router_id: id @ 6,
    }
}

tlv_view! {
    /// View of a PC body; `rest` is the index.
    PcView, "packet counter", len = 4, {
        /// Packet counter.
        pc: u32 @ 0,
    }
}

/// Hello flag: unicast Hello.
const HELLO_UNICAST: u16 = 0x8000;
/// Update flag: this prefix becomes the default for compression.
const UPDATE_SET_DEFAULT: u8 = 0x80;
/// Update flag: the router-id is the low bits of this prefix.
const UPDATE_ROUTER_ID: u8 = 0x40;

/// Acknowledgment request (type 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AckReq {
    /// Opaque value to echo in the Ack.
    pub opaque: u16,
    /// Deadline for the Ack, in centiseconds.
    pub interval: u16,
}

/// Acknowledgment (type 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ack {
    /// The opaque value of the request being acknowledged.
    pub opaque: u16,
}

/// Hello (type 4), with the RTT extension's transmit timestamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Hello {
    /// Unicast Hello (flag 0x8000), with its own seqno space.
    pub unicast: bool,
    /// Hello seqno.
    pub seqno: u16,
    /// Interval to the next Hello, in centiseconds (0: no promise).
    pub interval: u16,
    /// Timestamp sub-TLV: sender's clock at transmission, microseconds.
    pub timestamp: Option<u32>,
}

/// The RTT extension's timestamps carried by an IHU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IhuTimestamp {
    /// The timestamp of the last Hello received from the IHU's recipient.
    pub origin: u32,
    /// The IHU sender's clock when it received that Hello, microseconds.
    pub receive: u32,
}

/// I Heard You (type 5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ihu {
    /// Receive cost of the link as seen by the sender.
    pub rxcost: u16,
    /// Interval to the next IHU, in centiseconds.
    pub interval: u16,
    /// The neighbour this IHU is about; `None` (AE 0) means the receiver.
    pub address: Option<IpAddr>,
    /// Timestamp sub-TLV.
    pub timestamp: Option<IhuTimestamp>,
}

/// Router-Id (type 6): applies to the following Updates in the packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RouterId {
    /// The router-id.
    pub router_id: [u8; 8],
}

/// Next Hop (type 7): applies to the following Updates of its family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NextHop {
    /// The next-hop address (AE 3 is used for `fe80::/64` addresses).
    pub address: IpAddr,
}

/// Update (type 8), decompressed and resolved against the parser state.
///
/// `router_id` and `next_hop` are context, not fields of the Update TLV:
/// the parser fills them from the preceding Router-Id / Next-Hop TLVs (or
/// the router-id flag), and [`super::PacketBuilder`] emits Router-Id and
/// Next-Hop TLVs before the Update when they differ from what the packet
/// already established. [`Tlv::emit`] alone does not write them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Update {
    /// Interval to the next Update for this prefix, in centiseconds.
    pub interval: u16,
    /// Source seqno.
    pub seqno: u16,
    /// Metric; [`INFINITY`] retracts.
    pub metric: u16,
    /// Destination; `None` (AE 0) is a wildcard retraction of every route
    /// from the sender.
    pub prefix: Option<Prefix>,
    /// IPv4 prefix with an IPv6 next hop (AE 4, RFC 9229).
    pub v4_via_v6: bool,
    /// RFC 9079 source prefix (same family as `prefix`).
    pub src_prefix: Option<Prefix>,
    /// The router-id in force for this Update, if any.
    pub router_id: Option<[u8; 8]>,
    /// The next hop in force for this Update's family; `None` means the
    /// sender's source address. For plain IPv4 Updates (AE 1) the router
    /// needs an IPv4 next hop and should ignore the Update without one.
    pub next_hop: Option<IpAddr>,
}

/// Route Request (type 9).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RouteRequest {
    /// Requested destination; `None` (AE 0) asks for a full dump.
    pub prefix: Option<Prefix>,
    /// Request for the v4-via-v6 encoding (AE 4).
    pub v4_via_v6: bool,
    /// RFC 9079 source prefix.
    pub src_prefix: Option<Prefix>,
}

/// Seqno Request (type 10).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SeqnoRequest {
    /// Requested seqno.
    pub seqno: u16,
    /// Remaining hop count.
    pub hop_count: u8,
    /// Router-id of the source whose seqno is requested.
    pub router_id: [u8; 8],
    /// Requested destination.
    pub prefix: Prefix,
    /// Request for the v4-via-v6 encoding (AE 4).
    pub v4_via_v6: bool,
    /// RFC 9079 source prefix.
    pub src_prefix: Option<Prefix>,
}

/// Challenge Request (type 18, RFC 8967).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ChallengeRequest<'a> {
    /// Nonce to echo (at most 192 bytes).
    pub nonce: &'a [u8],
}

/// Challenge Reply (type 19, RFC 8967).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ChallengeReply<'a> {
    /// The nonce of the request being answered.
    pub nonce: &'a [u8],
}

/// Packet counter (type 17, RFC 8967).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Pc<'a> {
    /// Packet counter.
    pub pc: u32,
    /// Index of the counter (at most 32 bytes).
    pub index: &'a [u8],
}

/// MAC (type 16, RFC 8967), found in the packet trailer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Mac<'a> {
    /// The MAC value.
    pub mac: &'a [u8],
}

/// A TLV of a type this implementation does not know; skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Unknown<'a> {
    /// Its type code.
    pub tlv_type: u8,
    /// Its body.
    pub body: &'a [u8],
}

/// Why a well-formed TLV must be ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// It carries a mandatory sub-TLV (type ≥ 128) we do not know.
    UnknownMandatorySubTlv(u8),
    /// Its address encoding is unknown or not allowed in this TLV.
    Ae(u8),
    /// A wildcard (AE 0) Update or Route Request carries a source prefix.
    WildcardSourcePrefix,
    /// A wildcard (AE 0) Update has a finite metric.
    WildcardFiniteMetric,
}

/// A TLV that must be ignored (RFC 8966 §4.4), reported so that the
/// router can log it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Dropped {
    /// Its type.
    pub tlv_type: TlvType,
    /// Why it is ignored.
    pub reason: DropReason,
}

/// One TLV, typed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Tlv<'a> {
    /// Pad1.
    Pad1,
    /// PadN with this many bytes of body.
    PadN(u8),
    /// Acknowledgment request.
    AckReq(AckReq),
    /// Acknowledgment.
    Ack(Ack),
    /// Hello.
    Hello(Hello),
    /// I Heard You.
    Ihu(Ihu),
    /// Router-Id.
    RouterId(RouterId),
    /// Next Hop.
    NextHop(NextHop),
    /// Update.
    Update(Update),
    /// Route Request.
    RouteRequest(RouteRequest),
    /// Seqno Request.
    SeqnoRequest(SeqnoRequest),
    /// Challenge Request.
    ChallengeRequest(ChallengeRequest<'a>),
    /// Challenge Reply.
    ChallengeReply(ChallengeReply<'a>),
    /// Packet counter.
    Pc(Pc<'a>),
    /// MAC.
    Mac(Mac<'a>),
    /// Unknown type, skipped.
    Unknown(Unknown<'a>),
    /// Known but to be ignored.
    Dropped(Dropped),
}

/// The parser state of RFC 8966 §4.5, reset for every packet.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ParseState {
    /// Default prefixes for compression.
    pub compression: CompressionState,
    /// Current router-id.
    pub router_id: Option<[u8; 8]>,
    /// Current IPv4 next hop.
    pub next_hop_v4: Option<IpAddr>,
    /// Current IPv6 next hop.
    pub next_hop_v6: Option<IpAddr>,
}

/// Iterator over the TLVs of a packet body (or trailer), carrying the
/// parser state. Yields `Err` once, for the first malformed TLV, then ends.
#[derive(Debug, Clone)]
pub struct Tlvs<'a> {
    rest: &'a [u8],
    state: ParseState,
}

impl<'a> Tlvs<'a> {
    /// Iterates over the TLVs in `bytes` with a fresh parser state.
    pub fn new(bytes: &'a [u8]) -> Self {
        Self {
            rest: bytes,
            state: ParseState::default(),
        }
    }

    /// The parser state after the TLVs yielded so far.
    pub fn state(&self) -> &ParseState {
        &self.state
    }
}

impl<'a> Iterator for Tlvs<'a> {
    type Item = Result<Tlv<'a>, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let result = TlvBuf::new_checked(self.rest).and_then(|buf| {
            self.rest = &self.rest[buf.total_len()..];
            Tlv::parse(&buf, &mut self.state)
        });
        if result.is_err() {
            self.rest = &[];
        }
        Some(result)
    }
}

/// What the sub-TLVs of one TLV carried.
#[derive(Default)]
struct SubInfo<'a> {
    timestamp: Option<&'a [u8]>,
    src: Option<(u8, &'a [u8])>,
    drop: Option<DropReason>,
}

/// Scans sub-TLVs; `ts_len` is the timestamp size this TLV understands
/// (0: none), `src_ok` whether a source prefix is allowed.
fn scan_subtlvs(bytes: &[u8], ts_len: usize, src_ok: bool) -> Result<SubInfo<'_>, Error> {
    let mut info = SubInfo::default();
    for sub in SubTlvs::new(bytes) {
        let sub = sub?;
        match sub.sub_tlv_type() {
            SubTlvType::Pad1 | SubTlvType::PadN | SubTlvType::Diversity => {}
            SubTlvType::Timestamp => {
                // babeld ignores a timestamp of the wrong size; so do we.
                if ts_len > 0 && sub.body().len() >= ts_len {
                    info.timestamp = Some(&sub.body()[..ts_len]);
                }
            }
            SubTlvType::SourcePrefix if src_ok => {
                let Some((&plen, prefix)) = sub.body().split_first() else {
                    return Err(Error::Truncated("source prefix sub-tlv"));
                };
                if info.src.is_some() {
                    return Err(Error::Malformed("duplicate source prefix sub-tlv"));
                }
                info.src = Some((plen, prefix));
            }
            other => {
                if other.is_mandatory() && info.drop.is_none() {
                    info.drop = Some(DropReason::UnknownMandatorySubTlv(other.into()));
                }
            }
        }
    }
    Ok(info)
}

/// Decodes a source prefix sub-TLV body for a TLV of encoding `ae`.
fn source_prefix(ae: Ae, src: Option<(u8, &[u8])>) -> Result<Option<Prefix>, Error> {
    let Some((plen, bytes)) = src else {
        return Ok(None);
    };
    if plen == 0 {
        return Err(Error::Malformed("source prefix of length 0"));
    }
    let ae = if ae == Ae::LinkLocal { Ae::Ipv6 } else { ae };
    match parse_prefix(ae, plen, 0, bytes, &CompressionState::default())? {
        Ok((prefix, _)) => Ok(prefix),
        Err(_) => Err(Error::Malformed("source prefix encoding")),
    }
}

fn dropped<'a>(ty: TlvType, reason: DropReason) -> Result<Tlv<'a>, Error> {
    Ok(Tlv::Dropped(Dropped {
        tlv_type: ty,
        reason,
    }))
}

impl<'a> Tlv<'a> {
    /// Parses the TLV in `buf`, updating the parser `state` (router-id,
    /// next hops, default prefixes) as RFC 8966 §4.5 prescribes.
    pub fn parse(buf: &TlvBuf<'a>, state: &mut ParseState) -> Result<Self, Error> {
        let b = buf.body();
        let ty = buf.tlv_type();
        let tlv = match ty {
            TlvType::Pad1 => Self::Pad1,
            // A TLV body is at most 255 bytes long.
            TlvType::PadN => Self::PadN(b.len() as u8),
            TlvType::AckReq => {
                let v = AckReqView::new_checked(b)?;
                let info = scan_subtlvs(v.rest(), 0, false)?;
                if let Some(reason) = info.drop {
                    return dropped(ty, reason);
                }
                Self::AckReq(AckReq {
                    opaque: v.opaque(),
                    interval: v.interval(),
                })
            }
            TlvType::Ack => {
                let v = AckView::new_checked(b)?;
                let info = scan_subtlvs(v.rest(), 0, false)?;
                if let Some(reason) = info.drop {
                    return dropped(ty, reason);
                }
                Self::Ack(Ack { opaque: v.opaque() })
            }
            TlvType::Hello => {
                let v = HelloView::new_checked(b)?;
                let info = scan_subtlvs(v.rest(), 4, false)?;
                if let Some(reason) = info.drop {
                    return dropped(ty, reason);
                }
                Self::Hello(Hello {
                    unicast: v.flags() & HELLO_UNICAST != 0,
                    seqno: v.seqno(),
                    interval: v.interval(),
                    timestamp: info.timestamp.map(|t| be32(t, 0)),
                })
            }
            TlvType::Ihu => {
                let v = IhuView::new_checked(b)?;
                let ae = Ae::from(v.ae());
                let (address, alen) = match parse_address(ae, v.rest())? {
                    Ok(a) => a,
                    Err(ae) => return dropped(ty, DropReason::Ae(ae.into())),
                };
                let info = scan_subtlvs(&v.rest()[alen..], 8, false)?;
                if let Some(reason) = info.drop {
                    return dropped(ty, reason);
                }
                Self::Ihu(Ihu {
                    rxcost: v.rxcost(),
                    interval: v.interval(),
                    address,
                    timestamp: info.timestamp.map(|t| IhuTimestamp {
                        origin: be32(t, 0),
                        receive: be32(t, 4),
                    }),
                })
            }
            TlvType::RouterId => {
                let v = RouterIdView::new_checked(b)?;
                let info = scan_subtlvs(v.rest(), 0, false)?;
                if let Some(reason) = info.drop {
                    return dropped(ty, reason);
                }
                state.router_id = Some(v.router_id());
                Self::RouterId(RouterId {
                    router_id: v.router_id(),
                })
            }
            TlvType::NextHop => {
                let v = NextHopView::new_checked(b)?;
                let ae = Ae::from(v.ae());
                let Ok((Some(address), alen)) = parse_address(ae, v.rest())? else {
                    return dropped(ty, DropReason::Ae(ae.into()));
                };
                let info = scan_subtlvs(&v.rest()[alen..], 0, false)?;
                if let Some(reason) = info.drop {
                    return dropped(ty, reason);
                }
                if address.is_ipv4() {
                    state.next_hop_v4 = Some(address);
                } else {
                    state.next_hop_v6 = Some(address);
                }
                Self::NextHop(NextHop { address })
            }
            TlvType::Update => return parse_update(b, state),
            TlvType::RouteRequest => {
                let v = RouteRequestView::new_checked(b)?;
                let ae = Ae::from(v.ae());
                let none = CompressionState::default();
                let (prefix, plen) = match parse_prefix(ae, v.plen(), 0, v.rest(), &none)? {
                    Ok(p) => p,
                    Err(ae) => return dropped(ty, DropReason::Ae(ae.into())),
                };
                let info = scan_subtlvs(&v.rest()[plen..], 0, true)?;
                if let Some(reason) = info.drop {
                    return dropped(ty, reason);
                }
                if prefix.is_none() && info.src.is_some() {
                    return dropped(ty, DropReason::WildcardSourcePrefix);
                }
                Self::RouteRequest(RouteRequest {
                    prefix,
                    v4_via_v6: ae == Ae::V4ViaV6,
                    src_prefix: source_prefix(ae, info.src)?,
                })
            }
            TlvType::SeqnoRequest => {
                let v = SeqnoRequestView::new_checked(b)?;
                let ae = Ae::from(v.ae());
                let none = CompressionState::default();
                let Ok((Some(prefix), plen)) = parse_prefix(ae, v.plen(), 0, v.rest(), &none)?
                else {
                    return dropped(ty, DropReason::Ae(ae.into()));
                };
                let info = scan_subtlvs(&v.rest()[plen..], 0, true)?;
                if let Some(reason) = info.drop {
                    return dropped(ty, reason);
                }
                Self::SeqnoRequest(SeqnoRequest {
                    seqno: v.seqno(),
                    hop_count: v.hop_count(),
                    router_id: v.router_id(),
                    prefix,
                    v4_via_v6: ae == Ae::V4ViaV6,
                    src_prefix: source_prefix(ae, info.src)?,
                })
            }
            TlvType::ChallengeRequest => {
                if b.len() > MAX_NONCE {
                    return Err(Error::Malformed("challenge nonce over 192 bytes"));
                }
                Self::ChallengeRequest(ChallengeRequest { nonce: b })
            }
            TlvType::ChallengeReply => {
                if b.len() > MAX_NONCE {
                    return Err(Error::Malformed("challenge nonce over 192 bytes"));
                }
                Self::ChallengeReply(ChallengeReply { nonce: b })
            }
            TlvType::Pc => {
                let v = PcView::new_checked(b)?;
                if v.rest().len() > MAX_INDEX {
                    return Err(Error::Malformed("pc index over 32 bytes"));
                }
                Self::Pc(Pc {
                    pc: v.pc(),
                    index: v.rest(),
                })
            }
            TlvType::Mac => Self::Mac(Mac { mac: b }),
            TlvType::Unknown(code) => Self::Unknown(Unknown {
                tlv_type: code,
                body: b,
            }),
        };
        Ok(tlv)
    }

    /// The TLV type.
    pub fn tlv_type(&self) -> TlvType {
        match self {
            Self::Pad1 => TlvType::Pad1,
            Self::PadN(_) => TlvType::PadN,
            Self::AckReq(_) => TlvType::AckReq,
            Self::Ack(_) => TlvType::Ack,
            Self::Hello(_) => TlvType::Hello,
            Self::Ihu(_) => TlvType::Ihu,
            Self::RouterId(_) => TlvType::RouterId,
            Self::NextHop(_) => TlvType::NextHop,
            Self::Update(_) => TlvType::Update,
            Self::RouteRequest(_) => TlvType::RouteRequest,
            Self::SeqnoRequest(_) => TlvType::SeqnoRequest,
            Self::ChallengeRequest(_) => TlvType::ChallengeRequest,
            Self::ChallengeReply(_) => TlvType::ChallengeReply,
            Self::Pc(_) => TlvType::Pc,
            Self::Mac(_) => TlvType::Mac,
            Self::Unknown(u) => TlvType::Unknown(u.tlv_type),
            Self::Dropped(d) => d.tlv_type,
        }
    }

    /// Checks that this TLV can be emitted: bodies fit in 255 bytes, source
    /// prefixes match the family of their destination, and `Dropped` is
    /// not emitted.
    pub fn check(&self) -> Result<(), &'static str> {
        let src_family = |prefix: Option<&Prefix>, src: &Option<Prefix>| match (prefix, src) {
            (Some(p), Some(s)) if p.is_ipv4() != s.is_ipv4() => {
                Err("source prefix family differs from the destination's")
            }
            (None, Some(_)) => Err("source prefix on a wildcard"),
            (_, Some(s)) if s.len() == 0 => Err("source prefix of length 0"),
            _ => Ok(()),
        };
        match self {
            Self::Dropped(_) => return Err("a dropped tlv cannot be emitted"),
            Self::Pad1 => return Ok(()),
            Self::Update(u) => src_family(u.prefix.as_ref(), &u.src_prefix)?,
            Self::RouteRequest(r) => src_family(r.prefix.as_ref(), &r.src_prefix)?,
            Self::SeqnoRequest(r) => src_family(Some(&r.prefix), &r.src_prefix)?,
            Self::ChallengeRequest(ChallengeRequest { nonce })
            | Self::ChallengeReply(ChallengeReply { nonce })
                if nonce.len() > MAX_NONCE =>
            {
                return Err("challenge nonce over 192 bytes")
            }
            Self::Pc(p) if p.index.len() > MAX_INDEX => return Err("pc index over 32 bytes"),
            _ => {}
        }
        // The largest body is bounded; an Unknown or Mac body may not be.
        if self.buffer_len(&CompressionState::default()) > 257 {
            return Err("tlv body over 255 bytes");
        }
        Ok(())
    }

    /// Bytes this TLV takes on the wire, given the compression state
    /// (which only matters for Updates).
    pub fn buffer_len(&self, compression: &CompressionState) -> usize {
        if let Self::Pad1 = self {
            return 1;
        }
        2 + self.body_len(compression)
    }

    fn body_len(&self, compression: &CompressionState) -> usize {
        let src_len = |src: &Option<Prefix>| src.map_or(0, |s| 3 + s.byte_len());
        match self {
            Self::Pad1 => 0,
            Self::PadN(n) => usize::from(*n),
            Self::AckReq(_) => 6,
            Self::Ack(_) => 2,
            Self::Hello(h) => 6 + if h.timestamp.is_some() { 6 } else { 0 },
            Self::Ihu(i) => {
                6 + i.address.map_or(0, |a| address_len(address_ae(&a)))
                    + if i.timestamp.is_some() { 10 } else { 0 }
            }
            Self::RouterId(_) => 10,
            Self::NextHop(n) => 2 + address_len(address_ae(&n.address)),
            Self::Update(u) => {
                let prefix_len = u.prefix.map_or(0, |p| {
                    let ae = prefix_ae(&p, u.v4_via_v6);
                    p.byte_len() - compression.omittable(ae, &p)
                });
                10 + prefix_len + src_len(&u.src_prefix)
            }
            Self::RouteRequest(r) => {
                2 + r.prefix.map_or(0, |p| p.byte_len()) + src_len(&r.src_prefix)
            }
            Self::SeqnoRequest(r) => 14 + r.prefix.byte_len() + src_len(&r.src_prefix),
            Self::ChallengeRequest(c) => c.nonce.len(),
            Self::ChallengeReply(c) => c.nonce.len(),
            Self::Pc(p) => 4 + p.index.len(),
            Self::Mac(m) => m.mac.len(),
            Self::Unknown(u) => u.body.len(),
            Self::Dropped(_) => 0,
        }
    }

    /// Writes the TLV at the start of `buf`, updating the compression
    /// state for Updates, and returns its length.
    ///
    /// # Panics
    ///
    /// If `buf` is shorter than [`Self::buffer_len`] or [`Self::check`]
    /// fails. [`super::PacketBuilder`] checks both and never panics.
    pub fn emit(&self, buf: &mut [u8], compression: &mut CompressionState) -> usize {
        if let Err(e) = self.check() {
            panic!("cannot emit tlv: {e}");
        }
        let len = self.buffer_len(compression);
        let buf = &mut buf[..len];
        buf[0] = self.tlv_type().into();
        if len == 1 {
            return 1;
        }
        // check() bounds every body to 255 bytes.
        buf[1] = (len - 2) as u8;
        let b = &mut buf[2..];
        match self {
            Self::Pad1 | Self::Dropped(_) => {}
            Self::PadN(_) => b.fill(0),
            Self::AckReq(a) => {
                b[..2].fill(0);
                b[2..4].copy_from_slice(&a.opaque.to_be_bytes());
                b[4..6].copy_from_slice(&a.interval.to_be_bytes());
            }
            Self::Ack(a) => b.copy_from_slice(&a.opaque.to_be_bytes()),
            Self::Hello(h) => {
                b[..2].copy_from_slice(&if h.unicast { HELLO_UNICAST } else { 0 }.to_be_bytes());
                b[2..4].copy_from_slice(&h.seqno.to_be_bytes());
                b[4..6].copy_from_slice(&h.interval.to_be_bytes());
                if let Some(t) = h.timestamp {
                    b[6] = SubTlvType::Timestamp.into();
                    b[7] = 4;
                    b[8..12].copy_from_slice(&t.to_be_bytes());
                }
            }
            Self::Ihu(i) => {
                b[0] = i.address.map_or(Ae::Wildcard, |a| address_ae(&a)).into();
                b[1] = 0;
                b[2..4].copy_from_slice(&i.rxcost.to_be_bytes());
                b[4..6].copy_from_slice(&i.interval.to_be_bytes());
                let n = 6 + i.address.map_or(0, |a| emit_address(&a, &mut b[6..]));
                if let Some(t) = i.timestamp {
                    b[n] = SubTlvType::Timestamp.into();
                    b[n + 1] = 8;
                    b[n + 2..n + 6].copy_from_slice(&t.origin.to_be_bytes());
                    b[n + 6..n + 10].copy_from_slice(&t.receive.to_be_bytes());
                }
            }
            Self::RouterId(r) => {
                b[..2].fill(0);
                b[2..10].copy_from_slice(&r.router_id);
            }
            Self::NextHop(n) => {
                b[0] = address_ae(&n.address).into();
                b[1] = 0;
                emit_address(&n.address, &mut b[2..]);
            }
            Self::Update(u) => {
                let (ae, omitted) = match &u.prefix {
                    None => (Ae::Wildcard, 0),
                    Some(p) => {
                        let ae = prefix_ae(p, u.v4_via_v6);
                        (ae, compression.omittable(ae, p))
                    }
                };
                let plen = u.prefix.map_or(0, |p| p.len());
                let set_default = u.prefix.is_some_and(|p| p.byte_len() > 0);
                b[0] = ae.into();
                b[1] = if set_default { UPDATE_SET_DEFAULT } else { 0 };
                b[2] = plen;
                b[3] = omitted as u8;
                b[4..6].copy_from_slice(&u.interval.to_be_bytes());
                b[6..8].copy_from_slice(&u.seqno.to_be_bytes());
                b[8..10].copy_from_slice(&u.metric.to_be_bytes());
                let mut n = 10;
                if let Some(p) = &u.prefix {
                    n += emit_prefix(p, omitted, &mut b[n..]);
                    if set_default {
                        compression.set(ae, p);
                    }
                }
                emit_src_prefix(&u.src_prefix, &mut b[n..]);
            }
            Self::RouteRequest(r) => {
                b[0] = r
                    .prefix
                    .map_or(Ae::Wildcard, |p| prefix_ae(&p, r.v4_via_v6))
                    .into();
                b[1] = r.prefix.map_or(0, |p| p.len());
                let n = 2 + r.prefix.map_or(0, |p| emit_prefix(&p, 0, &mut b[2..]));
                emit_src_prefix(&r.src_prefix, &mut b[n..]);
            }
            Self::SeqnoRequest(r) => {
                b[0] = prefix_ae(&r.prefix, r.v4_via_v6).into();
                b[1] = r.prefix.len();
                b[2..4].copy_from_slice(&r.seqno.to_be_bytes());
                b[4] = r.hop_count;
                b[5] = 0;
                b[6..14].copy_from_slice(&r.router_id);
                let n = 14 + emit_prefix(&r.prefix, 0, &mut b[14..]);
                emit_src_prefix(&r.src_prefix, &mut b[n..]);
            }
            Self::ChallengeRequest(ChallengeRequest { nonce })
            | Self::ChallengeReply(ChallengeReply { nonce }) => b.copy_from_slice(nonce),
            Self::Pc(p) => {
                b[..4].copy_from_slice(&p.pc.to_be_bytes());
                b[4..].copy_from_slice(p.index);
            }
            Self::Mac(m) => b.copy_from_slice(m.mac),
            Self::Unknown(u) => b.copy_from_slice(u.body),
        }
        len
    }
}

/// Largest RFC 8967 nonce.
const MAX_NONCE: usize = 192;
/// Largest RFC 8967 PC index.
const MAX_INDEX: usize = 32;

fn emit_src_prefix(src: &Option<Prefix>, b: &mut [u8]) {
    if let Some(s) = src {
        b[0] = SubTlvType::SourcePrefix.into();
        b[1] = (1 + s.byte_len()) as u8;
        b[2] = s.len();
        emit_prefix(s, 0, &mut b[3..]);
    }
}

fn parse_update<'a>(b: &[u8], state: &mut ParseState) -> Result<Tlv<'a>, Error> {
    let ty = TlvType::Update;
    let v = match UpdateView::new_checked(b) {
        Ok(v) => v,
        Err(e) => {
            // babeld forgets the default prefixes when a truncated Update
            // may have meant to set one.
            if b.len() < 2 || b[1] & UPDATE_SET_DEFAULT != 0 {
                state.compression.clear();
            }
            return Err(e);
        }
    };
    let ae = Ae::from(v.ae());
    let flags = v.flags();
    let parsed = parse_prefix(ae, v.plen(), v.omitted(), v.rest(), &state.compression);
    let (prefix, plen) = match parsed {
        Ok(Ok(p)) => p,
        Ok(Err(ae)) => return dropped(ty, DropReason::Ae(ae.into())),
        Err(e) => {
            if flags & UPDATE_SET_DEFAULT != 0 {
                state.compression.clear();
            }
            return Err(e);
        }
    };
    if let Some(p) = &prefix {
        if flags & UPDATE_SET_DEFAULT != 0 {
            state.compression.set(ae, p);
        }
        if flags & UPDATE_ROUTER_ID != 0 {
            let bytes = p.bytes();
            let mut id = [0; 8];
            if p.is_ipv4() {
                id[4..].copy_from_slice(&bytes[..4]);
            } else {
                id.copy_from_slice(&bytes[8..]);
            }
            state.router_id = Some(id);
        }
    }
    let metric = v.metric();
    let info = scan_subtlvs(&v.rest()[plen..], 0, true)?;
    if let Some(reason) = info.drop {
        return dropped(ty, reason);
    }
    if prefix.is_none() {
        if info.src.is_some() {
            return dropped(ty, DropReason::WildcardSourcePrefix);
        }
        if metric != INFINITY {
            return dropped(ty, DropReason::WildcardFiniteMetric);
        }
    }
    let next_hop = match ae {
        Ae::Ipv4 => state.next_hop_v4,
        Ae::Wildcard => None,
        _ => state.next_hop_v6,
    };
    Ok(Tlv::Update(Update {
        interval: v.interval(),
        seqno: v.seqno(),
        metric,
        prefix,
        v4_via_v6: ae == Ae::V4ViaV6,
        src_prefix: source_prefix(ae, info.src)?,
        router_id: state.router_id,
        next_hop,
    }))
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use proptest::prelude::*;

    use super::*;
    use crate::wire::{BuildError, Packet, PacketBuilder};

    fn parse_one(bytes: &[u8]) -> Result<Tlv<'_>, Error> {
        let mut it = Tlvs::new(bytes);
        let tlv = it.next().expect("one tlv")?;
        assert!(it.next().is_none(), "trailing bytes after {tlv:?}");
        Ok(tlv)
    }

    fn prefix(s: &str) -> Prefix {
        s.parse().unwrap()
    }

    /// (bytes, expected TLV) for every TLV type.
    #[test]
    fn byte_vectors() {
        let ll: IpAddr = "fe80::1:2:3:4".parse().unwrap();
        let cases: Vec<(&[u8], Tlv<'_>)> = vec![
            (&[0], Tlv::Pad1),
            (&[1, 3, 0, 0, 0], Tlv::PadN(3)),
            (
                &[2, 6, 0, 0, 0xab, 0xcd, 0x01, 0x2c],
                Tlv::AckReq(AckReq {
                    opaque: 0xabcd,
                    interval: 300,
                }),
            ),
            (&[3, 2, 0xab, 0xcd], Tlv::Ack(Ack { opaque: 0xabcd })),
            (
                &[4, 6, 0x80, 0, 0, 9, 0x01, 0x90],
                Tlv::Hello(Hello {
                    unicast: true,
                    seqno: 9,
                    interval: 400,
                    timestamp: None,
                }),
            ),
            (
                &[4, 12, 0, 0, 0, 9, 0x01, 0x90, 3, 4, 0, 0, 1, 0],
                Tlv::Hello(Hello {
                    unicast: false,
                    seqno: 9,
                    interval: 400,
                    timestamp: Some(256),
                }),
            ),
            (
                &[5, 6, 0, 0, 0, 96, 0x04, 0xb0],
                Tlv::Ihu(Ihu {
                    rxcost: 96,
                    interval: 1200,
                    address: None,
                    timestamp: None,
                }),
            ),
            (
                &[
                    5, 24, 3, 0, 0, 96, 0x04, 0xb0, 0, 1, 0, 2, 0, 3, 0, 4, 3, 8, 0, 0, 0, 1, 0, 0,
                    0, 2,
                ],
                Tlv::Ihu(Ihu {
                    rxcost: 96,
                    interval: 1200,
                    address: Some(ll),
                    timestamp: Some(IhuTimestamp {
                        origin: 1,
                        receive: 2,
                    }),
                }),
            ),
            (
                &[6, 10, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8],
                Tlv::RouterId(RouterId {
                    router_id: [1, 2, 3, 4, 5, 6, 7, 8],
                }),
            ),
            (
                &[7, 6, 1, 0, 192, 0, 2, 1],
                Tlv::NextHop(NextHop {
                    address: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
                }),
            ),
            (
                &[
                    8, 16, 2, 0x80, 48, 0, 0x01, 0x90, 0, 5, 0, 96, 0x20, 0x01, 0x0d, 0xb8, 0, 1,
                ],
                Tlv::Update(Update {
                    interval: 400,
                    seqno: 5,
                    metric: 96,
                    prefix: Some(prefix("2001:db8:1::/48")),
                    v4_via_v6: false,
                    src_prefix: None,
                    router_id: None,
                    next_hop: None,
                }),
            ),
            (
                &[
                    8, 17, 1, 0x80, 24, 0, 0x01, 0x90, 0, 5, 0, 96, 10, 1, 2, 128, 2, 8, 10,
                ],
                Tlv::Update(Update {
                    interval: 400,
                    seqno: 5,
                    metric: 96,
                    prefix: Some(prefix("10.1.2.0/24")),
                    v4_via_v6: false,
                    src_prefix: Some(prefix("10.0.0.0/8")),
                    router_id: None,
                    next_hop: None,
                }),
            ),
            (
                &[9, 2, 0, 0],
                Tlv::RouteRequest(RouteRequest {
                    prefix: None,
                    v4_via_v6: false,
                    src_prefix: None,
                }),
            ),
            (
                &[9, 5, 4, 24, 10, 1, 2],
                Tlv::RouteRequest(RouteRequest {
                    prefix: Some(prefix("10.1.2.0/24")),
                    v4_via_v6: true,
                    src_prefix: None,
                }),
            ),
            (
                &[
                    10, 23, 2, 32, 0, 7, 64, 0, 1, 2, 3, 4, 5, 6, 7, 8, 0x20, 0x01, 0x0d, 0xb8,
                    128, 3, 16, 0x20, 0x01,
                ],
                Tlv::SeqnoRequest(SeqnoRequest {
                    seqno: 7,
                    hop_count: 64,
                    router_id: [1, 2, 3, 4, 5, 6, 7, 8],
                    prefix: prefix("2001:db8::/32"),
                    v4_via_v6: false,
                    src_prefix: Some(prefix("2001::/16")),
                }),
            ),
            (&[16, 2, 0xaa, 0xbb], Tlv::Mac(Mac { mac: &[0xaa, 0xbb] })),
            (
                &[17, 6, 0, 0, 1, 0, 9, 9],
                Tlv::Pc(Pc {
                    pc: 256,
                    index: &[9, 9],
                }),
            ),
            (
                &[18, 3, 1, 2, 3],
                Tlv::ChallengeRequest(ChallengeRequest { nonce: &[1, 2, 3] }),
            ),
            (
                &[19, 1, 7],
                Tlv::ChallengeReply(ChallengeReply { nonce: &[7] }),
            ),
            (
                &[42, 2, 1, 2],
                Tlv::Unknown(Unknown {
                    tlv_type: 42,
                    body: &[1, 2],
                }),
            ),
        ];
        for (bytes, expected) in cases {
            assert_eq!(parse_one(bytes), Ok(expected), "{bytes:?}");
            let mut out = [0u8; 64];
            let n = expected.emit(&mut out, &mut CompressionState::default());
            assert_eq!(&out[..n], bytes, "{expected:?}");
        }
    }

    #[test]
    fn drops_and_skips() {
        let cases: Vec<(&[u8], DropReason)> = vec![
            // Hello with an unknown mandatory sub-TLV 200.
            (
                &[4, 8, 0, 0, 0, 1, 0, 1, 200, 0],
                DropReason::UnknownMandatorySubTlv(200),
            ),
            // Update with an unknown AE.
            (&[8, 10, 9, 0, 0, 0, 0, 0, 0, 0, 0, 0], DropReason::Ae(9)),
            // IHU with AE 4, not allowed for addresses.
            (&[5, 10, 4, 0, 0, 0, 0, 0, 1, 2, 3, 4], DropReason::Ae(4)),
            // Seqno request with AE 0.
            (
                &[10, 14, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8],
                DropReason::Ae(0),
            ),
            // Wildcard update with a finite metric.
            (
                &[8, 10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
                DropReason::WildcardFiniteMetric,
            ),
            // Wildcard request with a source prefix.
            (&[9, 5, 0, 0, 128, 1, 0], DropReason::WildcardSourcePrefix),
            // Source prefix sub-TLV on a Router-Id: unknown mandatory there.
            (
                &[6, 13, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 128, 1, 0],
                DropReason::UnknownMandatorySubTlv(128),
            ),
        ];
        for (bytes, reason) in cases {
            let tlv = parse_one(bytes).unwrap();
            assert_eq!(
                tlv,
                Tlv::Dropped(Dropped {
                    tlv_type: TlvBuf::new_checked(bytes).unwrap().tlv_type(),
                    reason
                }),
                "{bytes:?}"
            );
        }
        // An unknown non-mandatory sub-TLV is skipped.
        assert_eq!(
            parse_one(&[3, 5, 0, 1, 77, 1, 0]),
            Ok(Tlv::Ack(Ack { opaque: 1 }))
        );
    }

    #[test]
    fn malformed_is_an_error_and_stops() {
        let cases: Vec<(&[u8], Error)> = vec![
            (&[4], Error::Truncated("tlv length")),
            (&[4, 6, 0], Error::Truncated("tlv body")),
            (&[4, 2, 0, 0], Error::Truncated("hello")),
            (
                &[6, 9, 0, 0, 1, 2, 3, 4, 5, 6, 7],
                Error::Truncated("router-id"),
            ),
            (&[7, 4, 2, 0, 0, 0], Error::Truncated("address")),
            (
                &[8, 11, 2, 0, 48, 1, 0, 0, 0, 0, 0, 0, 1],
                Error::Malformed("omitted bytes without a default prefix"),
            ),
            (
                &[8, 10, 1, 0, 33, 0, 0, 0, 0, 0, 0, 0],
                Error::Malformed("prefix length"),
            ),
            (
                &[8, 11, 2, 0, 16, 0, 0, 0, 0, 0, 0, 0, 0x20],
                Error::Truncated("prefix"),
            ),
            (
                &[9, 4, 2, 0, 128, 0],
                Error::Truncated("source prefix sub-tlv"),
            ),
            (&[9, 4, 2, 0, 3, 5], Error::Truncated("sub-tlv body")),
            (&[9, 5, 2, 0, 128, 1, 8], Error::Truncated("prefix")),
            (&[17, 3, 0, 0, 0], Error::Truncated("packet counter")),
        ];
        for (bytes, error) in cases {
            let mut it = Tlvs::new(bytes);
            assert_eq!(it.next(), Some(Err(error)), "{bytes:?}");
            assert_eq!(it.next(), None, "{bytes:?}");
        }
        // Nothing is yielded after the first error.
        let mut it = Tlvs::new(&[4, 2, 0, 0, 3, 2, 0, 1]);
        assert_eq!(it.next(), Some(Err(Error::Truncated("hello"))));
        assert_eq!(it.next(), None);
    }

    #[test]
    fn parser_state_router_id_flag_and_next_hops() {
        let body: &[u8] = &[
            // Next hop AE 1 then AE 3.
            7, 6, 1, 0, 192, 0, 2, 1, //
            7, 10, 3, 0, 0, 0, 0, 0, 0, 0, 0, 9, //
            // Update, flags 0x80|0x40, 2001:db8::1:2:3:4/128, AE 2.
            8, 26, 2, 0xc0, 128, 0, 0, 100, 0, 1, 0, 10, 0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 1,
            0, 2, 0, 3, 0, 4, //
            // Update, IPv4 10.0.0.0/8, takes the IPv4 next hop.
            8, 11, 1, 0, 8, 0, 0, 100, 0, 1, 0, 10, 10, //
            // Update AE 3 prefix fe80::5/128 (8 bytes, no compression).
            8, 18, 3, 0, 128, 0, 0, 100, 0, 1, 0, 10, 0, 0, 0, 0, 0, 0, 0, 5,
        ];
        let tlvs: Vec<_> = Tlvs::new(body).collect::<Result<_, _>>().unwrap();
        let Tlv::Update(u) = tlvs[2] else { panic!() };
        assert_eq!(u.router_id, Some([0, 1, 0, 2, 0, 3, 0, 4]));
        assert_eq!(u.next_hop, Some("fe80::9".parse().unwrap()));
        let Tlv::Update(u) = tlvs[3] else { panic!() };
        assert_eq!(u.next_hop, Some("192.0.2.1".parse().unwrap()));
        assert_eq!(u.router_id, Some([0, 1, 0, 2, 0, 3, 0, 4]));
        let Tlv::Update(u) = tlvs[4] else { panic!() };
        assert_eq!(u.prefix, Some(prefix("fe80::5/128")));
    }

    #[test]
    fn v4_and_v4_via_v6_share_compression_on_parse() {
        // AE 1 sets the default 10.1.0.0, AE 4 omits 2 bytes from it.
        let body: &[u8] = &[
            8, 12, 1, 0x80, 16, 0, 0, 100, 0, 1, 0, 10, 10, 1, //
            8, 11, 4, 0, 24, 2, 0, 100, 0, 1, 0, 10, 7,
        ];
        let tlvs: Vec<_> = Tlvs::new(body).collect::<Result<_, _>>().unwrap();
        let Tlv::Update(u) = tlvs[1] else { panic!() };
        assert_eq!(u.prefix, Some(prefix("10.1.7.0/24")));
        assert!(u.v4_via_v6);
    }

    fn leak(v: Vec<u8>) -> &'static [u8] {
        Box::leak(v.into_boxed_slice())
    }

    fn arb_prefix(v4: bool) -> BoxedStrategy<Prefix> {
        if v4 {
            (any::<[u8; 4]>(), 0..=32u8)
                .prop_map(|(a, l)| Prefix::new(IpAddr::V4(a.into()), l).unwrap())
                .boxed()
        } else {
            (any::<[u8; 16]>(), 0..=128u8)
                .prop_map(|(a, l)| Prefix::new(IpAddr::V6(a.into()), l).unwrap())
                .boxed()
        }
    }

    fn arb_addr() -> impl Strategy<Value = IpAddr> {
        prop_oneof![
            any::<[u8; 4]>().prop_map(|a| IpAddr::V4(a.into())),
            any::<[u8; 16]>().prop_map(|a| IpAddr::V6(a.into())),
            any::<u64>().prop_map(|iid| {
                IpAddr::V6(Ipv6Addr::from((0xfe80u128 << 112) | u128::from(iid)))
            }),
        ]
    }

    /// A destination and a matching optional source prefix.
    fn arb_dst_src() -> impl Strategy<Value = (Prefix, Option<Prefix>)> {
        any::<bool>().prop_flat_map(|v4| {
            (
                arb_prefix(v4),
                proptest::option::of(arb_prefix(v4).prop_filter("src len > 0", |p| p.len() > 0)),
            )
        })
    }

    fn arb_update() -> impl Strategy<Value = Update> {
        prop_oneof![
            (any::<u16>(), any::<u16>()).prop_map(|(interval, seqno)| Update {
                interval,
                seqno,
                metric: INFINITY,
                prefix: None,
                v4_via_v6: false,
                src_prefix: None,
                router_id: None,
                next_hop: None,
            }),
            (
                any::<u16>(),
                any::<u16>(),
                any::<u16>(),
                arb_dst_src(),
                any::<bool>()
            )
                .prop_map(|(interval, seqno, metric, (dst, src), via)| Update {
                    interval,
                    seqno,
                    metric,
                    prefix: Some(dst),
                    v4_via_v6: via && dst.is_ipv4(),
                    src_prefix: src,
                    router_id: None,
                    next_hop: None,
                }),
        ]
    }

    fn arb_tlv() -> impl Strategy<Value = Tlv<'static>> {
        let bytes = |max: usize| proptest::collection::vec(any::<u8>(), 0..=max).prop_map(leak);
        prop_oneof![
            Just(Tlv::Pad1),
            any::<u8>().prop_map(Tlv::PadN),
            (any::<u16>(), any::<u16>())
                .prop_map(|(opaque, interval)| Tlv::AckReq(AckReq { opaque, interval })),
            any::<u16>().prop_map(|opaque| Tlv::Ack(Ack { opaque })),
            (
                any::<bool>(),
                any::<u16>(),
                any::<u16>(),
                any::<Option<u32>>()
            )
                .prop_map(|(unicast, seqno, interval, timestamp)| Tlv::Hello(Hello {
                    unicast,
                    seqno,
                    interval,
                    timestamp
                })),
            (
                any::<u16>(),
                any::<u16>(),
                proptest::option::of(arb_addr()),
                any::<Option<(u32, u32)>>()
            )
                .prop_map(|(rxcost, interval, address, ts)| Tlv::Ihu(Ihu {
                    rxcost,
                    interval,
                    address,
                    timestamp: ts.map(|(origin, receive)| IhuTimestamp { origin, receive }),
                })),
            any::<[u8; 8]>().prop_map(|router_id| Tlv::RouterId(RouterId { router_id })),
            arb_addr().prop_map(|address| Tlv::NextHop(NextHop { address })),
            arb_update().prop_map(Tlv::Update),
            prop_oneof![
                Just(RouteRequest {
                    prefix: None,
                    v4_via_v6: false,
                    src_prefix: None
                }),
                (arb_dst_src(), any::<bool>()).prop_map(|((dst, src), via)| RouteRequest {
                    prefix: Some(dst),
                    v4_via_v6: via && dst.is_ipv4(),
                    src_prefix: src,
                }),
            ]
            .prop_map(Tlv::RouteRequest),
            (
                any::<u16>(),
                any::<u8>(),
                any::<[u8; 8]>(),
                arb_dst_src(),
                any::<bool>()
            )
                .prop_map(|(seqno, hop_count, router_id, (dst, src), via)| {
                    Tlv::SeqnoRequest(SeqnoRequest {
                        seqno,
                        hop_count,
                        router_id,
                        prefix: dst,
                        v4_via_v6: via && dst.is_ipv4(),
                        src_prefix: src,
                    })
                }),
            bytes(MAX_NONCE).prop_map(|nonce| Tlv::ChallengeRequest(ChallengeRequest { nonce })),
            bytes(MAX_NONCE).prop_map(|nonce| Tlv::ChallengeReply(ChallengeReply { nonce })),
            (any::<u32>(), bytes(MAX_INDEX)).prop_map(|(pc, index)| Tlv::Pc(Pc { pc, index })),
            bytes(255).prop_map(|mac| Tlv::Mac(Mac { mac })),
            (20..=255u8, bytes(255))
                .prop_map(|(tlv_type, body)| Tlv::Unknown(Unknown { tlv_type, body })),
        ]
    }

    proptest! {
        #[test]
        fn every_tlv_round_trips(tlv in arb_tlv()) {
            let mut buf = [0u8; 300];
            let mut state = CompressionState::default();
            prop_assert_eq!(tlv.check(), Ok(()));
            let len = tlv.buffer_len(&state);
            let n = tlv.emit(&mut buf, &mut state);
            prop_assert_eq!(n, len);
            prop_assert_eq!(parse_one(&buf[..n]), Ok(tlv));
        }

        #[test]
        fn update_sequences_round_trip_through_the_builder(
            updates in proptest::collection::vec(
                (arb_update(), 0..3u8, 0..3u8, any::<bool>()), 1..40),
            mtu in 96..400usize,
        ) {
            // Give every announcement a router-id and next hop from small
            // sets, so that Router-Id / Next-Hop elision is exercised.
            let updates: Vec<Update> = updates.into_iter().map(|(mut u, id, nh, explicit)| {
                if u.prefix.is_some() {
                    u.router_id = Some([id; 8]);
                    let v4 = u.prefix.is_some_and(|p| p.is_ipv4()) && !u.v4_via_v6;
                    u.next_hop = if v4 {
                        Some(IpAddr::V4(Ipv4Addr::new(192, 0, 2, nh)))
                    } else if explicit {
                        Some(IpAddr::V6(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, u16::from(nh))))
                    } else {
                        None
                    };
                }
                u
            }).collect();
            let mut packets = Vec::new();
            let mut buf = vec![0u8; mtu];
            let mut i = 0;
            while i < updates.len() {
                let mut b = PacketBuilder::new(&mut buf, mtu, 0);
                while i < updates.len() {
                    match b.push(&Tlv::Update(updates[i])) {
                        Ok(()) => i += 1,
                        Err(BuildError::Full) => break,
                        Err(e) => return Err(TestCaseError::fail(format!("{e}"))),
                    }
                }
                prop_assert!(!b.is_empty());
                let n = b.finish();
                prop_assert!(n <= mtu);
                packets.push(buf[..n].to_vec());
            }
            let mut parsed = Vec::new();
            for p in &packets {
                for tlv in Packet::new_checked(&p[..]).unwrap().into_tlvs() {
                    if let Tlv::Update(u) = tlv.unwrap() {
                        parsed.push(u);
                    }
                }
            }
            // A retraction inherits whatever router-id the packet carries.
            let normalise = |u: &Update| Update {
                router_id: if u.prefix.is_some() { u.router_id } else { None },
                next_hop: if u.prefix.is_some() { u.next_hop } else { None },
                ..*u
            };
            let parsed: Vec<_> = parsed.iter().map(normalise).collect();
            prop_assert_eq!(parsed, updates);
        }
    }
}
