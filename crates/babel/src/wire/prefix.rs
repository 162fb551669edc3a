//! Network prefixes and Babel address encodings (RFC 8966 §4.1.5,
//! RFC 9229), with the per-family default prefix used by Update prefix
//! compression.

use core::fmt;
use core::str::FromStr;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::{enum_with_unknown, Error};

enum_with_unknown! {
    /// Address encoding (AE) of an address or prefix field.
    pub enum Ae(u8) {
        /// AE 0: no address; a wildcard in Updates and Route Requests.
        Wildcard = 0,
        /// AE 1: IPv4, compressible.
        Ipv4 = 1,
        /// AE 2: IPv6, compressible.
        Ipv6 = 2,
        /// AE 3: link-local IPv6: 8 octets of interface identifier after an
        /// implied `fe80::/64`.
        LinkLocal = 3,
        /// AE 4 (RFC 9229): an IPv4 prefix routed through an IPv6 next hop;
        /// same format and compression state as AE 1.
        V4ViaV6 = 4,
    }
}

/// An IPv4 or IPv6 prefix: an address with its host bits cleared, and a
/// length.
///
/// Two prefixes compare equal when they denote the same set of addresses,
/// because construction always clears the bits beyond the length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Prefix {
    addr: IpAddr,
    len: u8,
}

/// An invalid prefix given by a caller or a user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PrefixError {
    /// The length exceeds the address size (32 or 128).
    #[error("prefix length {len} exceeds {max}")]
    Length {
        /// The length asked for.
        len: u8,
        /// The largest length of the address family.
        max: u8,
    },
    /// The text is not `ADDRESS/LENGTH` or `ADDRESS`.
    #[error("invalid prefix syntax, expected ADDRESS/LENGTH")]
    Syntax,
}

impl Prefix {
    /// The IPv6 default prefix `::/0`.
    pub const V6_DEFAULT: Self = Self {
        addr: IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        len: 0,
    };
    /// The IPv4 default prefix `0.0.0.0/0`.
    pub const V4_DEFAULT: Self = Self {
        addr: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        len: 0,
    };

    /// Builds a prefix, clearing the address bits beyond `len`.
    pub fn new(addr: IpAddr, len: u8) -> Result<Self, PrefixError> {
        let max = max_len(&addr);
        if len > max {
            return Err(PrefixError::Length { len, max });
        }
        let addr = match addr {
            IpAddr::V4(a) => {
                let mut b = a.octets();
                mask(&mut b, len);
                IpAddr::V4(b.into())
            }
            IpAddr::V6(a) => {
                let mut b = a.octets();
                mask(&mut b, len);
                IpAddr::V6(b.into())
            }
        };
        Ok(Self { addr, len })
    }

    /// The host prefix (`/32` or `/128`) of one address.
    pub fn host(addr: IpAddr) -> Self {
        Self {
            len: max_len(&addr),
            addr,
        }
    }

    /// The network address (host bits are zero).
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length in bits.
    #[allow(clippy::len_without_is_empty)]
    pub fn len(&self) -> u8 {
        self.len
    }

    /// Whether this is an IPv4 prefix.
    pub fn is_ipv4(&self) -> bool {
        self.addr.is_ipv4()
    }

    /// Whether this is an IPv6 prefix.
    pub fn is_ipv6(&self) -> bool {
        self.addr.is_ipv6()
    }

    /// Whether this is a default prefix (length 0).
    pub fn is_default(&self) -> bool {
        self.len == 0
    }

    /// Whether `addr` lies inside this prefix (false across families).
    pub fn contains_addr(&self, addr: IpAddr) -> bool {
        Self::new(addr, self.len).is_ok_and(|p| p.addr == self.addr)
    }

    /// Whether `other` is equal to or more specific than this prefix.
    pub fn contains(&self, other: &Self) -> bool {
        other.len >= self.len && self.contains_addr(other.addr)
    }

    /// Number of bytes that carry the prefix bits: `ceil(len / 8)`.
    pub fn byte_len(&self) -> usize {
        usize::from(self.len).div_ceil(8)
    }

    /// The address as 16 bytes (IPv4 in the first 4).
    pub(crate) fn bytes(&self) -> [u8; 16] {
        let mut out = [0; 16];
        match self.addr {
            IpAddr::V4(a) => out[..4].copy_from_slice(&a.octets()),
            IpAddr::V6(a) => out = a.octets(),
        }
        out
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl FromStr for Prefix {
    type Err = PrefixError;

    /// Parses `ADDRESS/LENGTH`, or a bare address as a host prefix.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once('/') {
            Some((addr, len)) => {
                let addr = addr.parse().map_err(|_| PrefixError::Syntax)?;
                let len = len.parse().map_err(|_| PrefixError::Syntax)?;
                Self::new(addr, len)
            }
            None => Ok(Self::host(s.parse().map_err(|_| PrefixError::Syntax)?)),
        }
    }
}

/// Per-family default prefixes for Update prefix compression
/// (RFC 8966 §4.5, the parser state; RFC 9229: AE 4 shares AE 1's).
///
/// One value lives for one packet, on the parsing side in [`super::Tlvs`]
/// and on the emitting side in [`super::PacketBuilder`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CompressionState {
    v4: Option<[u8; 4]>,
    v6: Option<[u8; 16]>,
    /// On emission: the AE of the Update that last set the IPv4 default,
    /// so that AE 1 and AE 4 never compress against each other (safe
    /// whether or not the receiver shares their state).
    v4_setter: u8,
}

impl CompressionState {
    /// The default prefix bytes of the family that `ae` encodes, if any.
    fn default_for(&self, ae: Ae) -> Option<&[u8]> {
        match ae {
            Ae::Ipv4 | Ae::V4ViaV6 => self.v4.as_ref().map(|b| &b[..]),
            Ae::Ipv6 => self.v6.as_ref().map(|b| &b[..]),
            _ => None,
        }
    }

    /// Records `prefix` as the default of its family (Update flag 0x80).
    pub(crate) fn set(&mut self, ae: Ae, prefix: &Prefix) {
        let bytes = prefix.bytes();
        match ae {
            Ae::Ipv4 | Ae::V4ViaV6 => {
                let mut v4 = [0; 4];
                v4.copy_from_slice(&bytes[..4]);
                self.v4 = Some(v4);
                self.v4_setter = ae.into();
            }
            Ae::Ipv6 => self.v6 = Some(bytes),
            _ => {}
        }
    }

    /// Forgets the default of the family of `ae` (after a malformed
    /// Update that tried to set it, as babeld does).
    pub(crate) fn clear(&mut self) {
        *self = Self::default();
    }

    /// How many leading bytes of `prefix` an encoder may omit.
    pub(crate) fn omittable(&self, ae: Ae, prefix: &Prefix) -> usize {
        if matches!(ae, Ae::Ipv4 | Ae::V4ViaV6) && self.v4_setter != u8::from(ae) {
            return 0;
        }
        let Some(default) = self.default_for(ae) else {
            return 0;
        };
        let bytes = prefix.bytes();
        let pb = prefix.byte_len();
        default
            .iter()
            .zip(&bytes[..pb])
            .take_while(|(a, b)| a == b)
            .count()
    }
}

/// The AE that encodes an address compactly: AE 3 for `fe80::/64`
/// addresses, else AE 1 or AE 2.
pub(crate) fn address_ae(addr: &IpAddr) -> Ae {
    match addr {
        IpAddr::V4(_) => Ae::Ipv4,
        IpAddr::V6(a) if a.octets()[..8] == LINK_LOCAL_PREFIX => Ae::LinkLocal,
        IpAddr::V6(_) => Ae::Ipv6,
    }
}

/// Encoded size of an address in `ae`.
pub(crate) fn address_len(ae: Ae) -> usize {
    match ae {
        Ae::Ipv4 | Ae::V4ViaV6 => 4,
        Ae::Ipv6 => 16,
        Ae::LinkLocal => 8,
        Ae::Wildcard | Ae::Unknown(_) => 0,
    }
}

/// Writes `addr` in the encoding `address_ae` picks; returns the length.
pub(crate) fn emit_address(addr: &IpAddr, buf: &mut [u8]) -> usize {
    match (address_ae(addr), addr) {
        (Ae::LinkLocal, IpAddr::V6(a)) => {
            buf[..8].copy_from_slice(&a.octets()[8..]);
            8
        }
        (_, IpAddr::V4(a)) => {
            buf[..4].copy_from_slice(&a.octets());
            4
        }
        (_, IpAddr::V6(a)) => {
            buf[..16].copy_from_slice(&a.octets());
            16
        }
    }
}

/// Decodes an address (IHU, Next Hop) in `ae` from the start of `bytes`.
/// Returns the address (`None` for AE 0) and the bytes consumed, or
/// `Ok(Err(ae))` when the AE is not valid for an address.
pub(crate) fn parse_address(
    ae: Ae,
    bytes: &[u8],
) -> Result<Result<(Option<IpAddr>, usize), Ae>, Error> {
    let len = address_len(ae);
    if bytes.len() < len {
        return Err(Error::Truncated("address"));
    }
    let addr = match ae {
        Ae::Wildcard => None,
        Ae::Ipv4 => Some(IpAddr::V4(Ipv4Addr::new(
            bytes[0], bytes[1], bytes[2], bytes[3],
        ))),
        Ae::Ipv6 => {
            let mut b = [0; 16];
            b.copy_from_slice(&bytes[..16]);
            Some(IpAddr::V6(b.into()))
        }
        Ae::LinkLocal => {
            let mut b = [0; 16];
            b[..8].copy_from_slice(&LINK_LOCAL_PREFIX);
            b[8..].copy_from_slice(&bytes[..8]);
            Some(IpAddr::V6(b.into()))
        }
        Ae::V4ViaV6 | Ae::Unknown(_) => return Ok(Err(ae)),
    };
    Ok(Ok((addr, len)))
}

/// Decodes a possibly compressed prefix of `plen` bits in `ae` from the
/// start of `bytes`, omitting `omitted` leading bytes taken from `state`.
/// Returns the prefix (`None` for AE 0) and the bytes consumed, or
/// `Ok(Err(ae))` for an AE this implementation does not know.
pub(crate) fn parse_prefix(
    ae: Ae,
    plen: u8,
    omitted: u8,
    bytes: &[u8],
    state: &CompressionState,
) -> Result<Result<(Option<Prefix>, usize), Ae>, Error> {
    let pb = usize::from(plen).div_ceil(8);
    let omitted = usize::from(omitted);
    let mut full = [0u8; 16];
    let (addr_len, family_v4) = match ae {
        Ae::Wildcard => {
            if plen != 0 || omitted != 0 {
                return Err(Error::Malformed("wildcard prefix with non-zero length"));
            }
            return Ok(Ok((None, 0)));
        }
        Ae::Ipv4 | Ae::V4ViaV6 => (4, true),
        Ae::Ipv6 => (16, false),
        Ae::LinkLocal => {
            if omitted != 0 {
                return Err(Error::Malformed("compressed link-local prefix"));
            }
            if !(64..=128).contains(&plen) {
                return Err(Error::Malformed("link-local prefix length"));
            }
            let n = pb - 8;
            if bytes.len() < n {
                return Err(Error::Truncated("prefix"));
            }
            full[..8].copy_from_slice(&LINK_LOCAL_PREFIX);
            full[8..8 + n].copy_from_slice(&bytes[..n]);
            let prefix = Prefix::new(IpAddr::V6(full.into()), plen)
                .map_err(|_| Error::Malformed("prefix length"))?;
            return Ok(Ok((Some(prefix), n)));
        }
        Ae::Unknown(_) => return Ok(Err(ae)),
    };
    if pb > addr_len {
        return Err(Error::Malformed("prefix length"));
    }
    if omitted > addr_len {
        return Err(Error::Malformed("omitted count"));
    }
    if omitted > 0 {
        let Some(default) = state.default_for(ae) else {
            return Err(Error::Malformed("omitted bytes without a default prefix"));
        };
        full[..omitted].copy_from_slice(&default[..omitted]);
    }
    let n = pb.saturating_sub(omitted);
    if bytes.len() < n {
        return Err(Error::Truncated("prefix"));
    }
    full[omitted..omitted + n].copy_from_slice(&bytes[..n]);
    let addr = if family_v4 {
        IpAddr::V4(Ipv4Addr::new(full[0], full[1], full[2], full[3]))
    } else {
        IpAddr::V6(full.into())
    };
    let prefix = Prefix::new(addr, plen).map_err(|_| Error::Malformed("prefix length"))?;
    Ok(Ok((Some(prefix), n)))
}

/// Writes the bytes of `prefix` after the first `omitted`; returns the
/// length written (`byte_len - omitted`, or 0).
pub(crate) fn emit_prefix(prefix: &Prefix, omitted: usize, buf: &mut [u8]) -> usize {
    let bytes = prefix.bytes();
    let pb = prefix.byte_len();
    let n = pb.saturating_sub(omitted);
    buf[..n].copy_from_slice(&bytes[omitted..omitted + n]);
    n
}

/// The AE of a prefix: AE 1 (or AE 4 when `v4_via_v6`) or AE 2.
pub(crate) fn prefix_ae(prefix: &Prefix, v4_via_v6: bool) -> Ae {
    match (prefix.is_ipv4(), v4_via_v6) {
        (true, true) => Ae::V4ViaV6,
        (true, false) => Ae::Ipv4,
        (false, _) => Ae::Ipv6,
    }
}

const LINK_LOCAL_PREFIX: [u8; 8] = [0xfe, 0x80, 0, 0, 0, 0, 0, 0];

fn max_len(addr: &IpAddr) -> u8 {
    if addr.is_ipv4() {
        32
    } else {
        128
    }
}

fn mask(bytes: &mut [u8], len: u8) {
    let len = usize::from(len);
    for (i, b) in bytes.iter_mut().enumerate() {
        let bits = len.saturating_sub(i * 8).min(8);
        *b &= !(0xffu16 >> bits) as u8;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_masks_host_bits() {
        let p: Prefix = "2001:db8:1:2::1/48".parse().unwrap();
        assert_eq!(p.to_string(), "2001:db8:1::/48");
        let p: Prefix = "10.1.2.3/12".parse().unwrap();
        assert_eq!(p.to_string(), "10.0.0.0/12");
        assert_eq!(p.byte_len(), 2);
        let p: Prefix = "fe80::1".parse().unwrap();
        assert_eq!(p.len(), 128);
    }

    #[test]
    fn prefix_rejects_bad_input() {
        assert_eq!(
            "10.0.0.0/33".parse::<Prefix>(),
            Err(PrefixError::Length { len: 33, max: 32 })
        );
        assert_eq!("10.0.0.0/x".parse::<Prefix>(), Err(PrefixError::Syntax));
        assert_eq!("nope".parse::<Prefix>(), Err(PrefixError::Syntax));
    }

    #[test]
    fn containment() {
        let net: Prefix = "2001:db8::/32".parse().unwrap();
        let sub: Prefix = "2001:db8:42::/48".parse().unwrap();
        assert!(net.contains(&sub));
        assert!(!sub.contains(&net));
        assert!(Prefix::V6_DEFAULT.contains(&net));
        assert!(!Prefix::V4_DEFAULT.contains(&net));
    }

    #[test]
    fn ae_code_points() {
        assert_eq!(Ae::from(4), Ae::V4ViaV6);
        assert_eq!(Ae::from(9), Ae::Unknown(9));
        assert_eq!(u8::from(Ae::LinkLocal), 3);
    }

    #[test]
    fn compressed_prefix_uses_default() {
        let mut state = CompressionState::default();
        let first: Prefix = "2001:db8:1::/48".parse().unwrap();
        state.set(Ae::Ipv6, &first);
        // 2001:db8:2::/48 with 4 bytes omitted: 2 bytes on the wire.
        let (p, n) = parse_prefix(Ae::Ipv6, 48, 4, &[0, 2, 0xff], &state)
            .unwrap()
            .unwrap();
        assert_eq!(p.unwrap().to_string(), "2001:db8:2::/48");
        assert_eq!(n, 2);
        assert_eq!(state.omittable(Ae::Ipv6, &p.unwrap()), 5);
    }

    #[test]
    fn compression_without_default_is_malformed() {
        let state = CompressionState::default();
        assert_eq!(
            parse_prefix(Ae::Ipv6, 48, 4, &[0, 2], &state),
            Err(Error::Malformed("omitted bytes without a default prefix"))
        );
    }

    #[test]
    fn link_local_address() {
        let (a, n) = parse_address(Ae::LinkLocal, &[0, 0, 0, 0, 0, 0, 0, 1])
            .unwrap()
            .unwrap();
        assert_eq!(a, Some("fe80::1".parse().unwrap()));
        assert_eq!(n, 8);
        assert_eq!(address_ae(&a.unwrap()), Ae::LinkLocal);
        assert_eq!(parse_address(Ae::V4ViaV6, &[0; 4]), Ok(Err(Ae::V4ViaV6)));
    }
}
