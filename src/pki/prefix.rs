//! Addressing: the overlay [`Network`] (encoded in the CA serial number) and
//! a node's [`NodePrefix`] (its certificate CN, `"<int>/<len>"`).
//!
//! A node's subnet is the network prefix followed by the node prefix bits:
//! with network `2001:db8:42::/48` and CN `"5/16"` the subnet is
//! `2001:db8:42:5::/64` and the node's own address `2001:db8:42:5::1`.

use std::fmt;
use std::net::Ipv6Addr;
use std::str::FromStr;

use super::error::PkiError;

/// The overlay's IPv6 prefix.
///
/// Invariant: `len <= 128` and every bit of `addr` after `len` is zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Network {
    addr: Ipv6Addr,
    len: u8,
}

/// A node's prefix relative to the network: `len` bits whose value is
/// `value`. Its text form, used as certificate CN, is `"<value>/<len>"`.
///
/// Invariant: `1 <= len <= 128` and `value < 2^len`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodePrefix {
    value: u128,
    len: u8,
}

/// The mask keeping the first `len` bits of an address (`len <= 128`).
fn mask(len: u8) -> u128 {
    match len {
        0 => 0,
        l => u128::MAX << (128 - u32::from(l)),
    }
}

impl Network {
    /// A network from its address and prefix length. Fails when `len > 128`
    /// or when `addr` has bits set after the prefix.
    pub fn new(addr: Ipv6Addr, len: u8) -> Result<Self, PkiError> {
        if len > 128 {
            return Err(PkiError::Network(format!(
                "prefix length {len} is longer than 128"
            )));
        }
        if u128::from(addr) & !mask(len) != 0 {
            return Err(PkiError::Network(format!(
                "{addr}/{len} has bits set after the prefix length"
            )));
        }
        Ok(Self { addr, len })
    }

    /// The network address (host bits zero).
    pub fn addr(&self) -> Ipv6Addr {
        self.addr
    }

    /// The prefix length.
    #[allow(clippy::len_without_is_empty)]
    pub fn len(&self) -> u8 {
        self.len
    }

    /// The CA serial number encoding this network, big-endian without
    /// leading zero bytes: a `1` bit followed by the `len` prefix bits.
    ///
    /// `2001:db8:42::/48` gives `[0x01, 0x20, 0x01, 0x0d, 0xb8, 0x00, 0x42]`.
    pub fn ca_serial(&self) -> Vec<u8> {
        let bits = u128::from(self.addr);
        // The value has len + 1 bits: a high part (bit 128, only set for
        // /128) and the low 128 bits.
        let (high, low) = match self.len {
            128 => (1u8, bits),
            0 => (0, 1),
            l => (0, (1u128 << l) | (bits >> (128 - u32::from(l)))),
        };
        let mut out = Vec::with_capacity(17);
        out.push(high);
        out.extend_from_slice(&low.to_be_bytes());
        let first = out.iter().position(|&b| b != 0).unwrap_or(out.len() - 1);
        out.drain(..first);
        out
    }

    /// The inverse of [`ca_serial`](Self::ca_serial). Leading zero bytes
    /// (as in a DER INTEGER) are accepted.
    pub fn from_ca_serial(be: &[u8]) -> Result<Self, PkiError> {
        let first = be.iter().position(|&b| b != 0);
        let Some(first) = first else {
            return Err(PkiError::Network(
                "CA serial number is zero: it does not encode a network".into(),
            ));
        };
        let be = &be[first..];
        if be.len() > 17 || (be.len() == 17 && be[0] != 1) {
            return Err(PkiError::Network(
                "CA serial number is longer than 129 bits: it does not encode a network".into(),
            ));
        }
        if be.len() == 17 {
            let mut low = [0u8; 16];
            low.copy_from_slice(&be[1..]);
            return Self::new(Ipv6Addr::from(u128::from_be_bytes(low)), 128);
        }
        let mut buf = [0u8; 16];
        buf[16 - be.len()..].copy_from_slice(be);
        let value = u128::from_be_bytes(buf);
        // The leading 1 bit marks the start of the prefix.
        let len = 127 - value.leading_zeros();
        let bits = value ^ (1u128 << len);
        let addr = match len {
            0 => 0,
            l => bits << (128 - l),
        };
        // len <= 127 here, so the conversion is lossless.
        Self::new(Ipv6Addr::from(addr), len as u8)
    }

    /// The node's subnet: the network prefix followed by the prefix bits.
    /// Fails when the node prefix does not fit after the network prefix.
    pub fn subnet(&self, p: &NodePrefix) -> Result<(Ipv6Addr, u8), PkiError> {
        let total = u32::from(self.len) + u32::from(p.len);
        if total > 128 {
            return Err(PkiError::Prefix(format!(
                "{p} does not fit in network {self} ({total} bits > 128)"
            )));
        }
        // p.len >= 1, so the shift is at most 127.
        let bits = u128::from(self.addr) | (p.value << (128 - total));
        Ok((Ipv6Addr::from(bits), total as u8))
    }

    /// The node's own address: its subnet with interface id `::1`. Fails
    /// when the subnet is a /128 (no room for an interface id).
    pub fn node_address(&self, p: &NodePrefix) -> Result<Ipv6Addr, PkiError> {
        let (addr, len) = self.subnet(p)?;
        if len == 128 {
            return Err(PkiError::Prefix(format!(
                "{p} in network {self} is a /128: no room for the node address"
            )));
        }
        Ok(Ipv6Addr::from(u128::from(addr) | 1))
    }

    /// The node prefix of the subnet `addr/len`: the inverse of
    /// [`subnet`](Self::subnet). Bits of `addr` after `len` are ignored.
    pub fn prefix_of(&self, addr: Ipv6Addr, len: u8) -> Result<NodePrefix, PkiError> {
        if len <= self.len || len > 128 {
            return Err(PkiError::Prefix(format!(
                "{addr}/{len} is not a subnet of {self}"
            )));
        }
        if !self.contains(addr) {
            return Err(PkiError::Prefix(format!("{addr} is outside {self}")));
        }
        let plen = u32::from(len - self.len);
        // self.len < len <= 128, so both shifts are at most 127.
        let value = (u128::from(addr) << self.len) >> (128 - plen);
        NodePrefix::new(value, plen as u8)
    }

    /// Whether `addr` is inside this network.
    pub fn contains(&self, addr: Ipv6Addr) -> bool {
        u128::from(addr) & mask(self.len) == u128::from(self.addr)
    }
}

impl FromStr for Network {
    type Err = PkiError;

    /// Parses `ADDR/LEN`, e.g. `2001:db8:42::/48`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let Some((addr, len)) = s.split_once('/') else {
            return Err(PkiError::Network(format!("{s:?} is not ADDR/LEN")));
        };
        let addr: Ipv6Addr = addr
            .parse()
            .map_err(|_| PkiError::Network(format!("{addr:?} is not an IPv6 address")))?;
        let len = parse_decimal(len)
            .and_then(|l| u8::try_from(l).ok())
            .ok_or_else(|| PkiError::Network(format!("{len:?} is not a prefix length")))?;
        Self::new(addr, len)
    }
}

impl fmt::Display for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl NodePrefix {
    /// A node prefix of `len` bits with value `value`. Fails when `len` is 0
    /// or above 128, or when `value` does not fit in `len` bits.
    pub fn new(value: u128, len: u8) -> Result<Self, PkiError> {
        if len == 0 || len > 128 {
            return Err(PkiError::Prefix(format!(
                "length {len} is not between 1 and 128"
            )));
        }
        if len < 128 && value >> len != 0 {
            return Err(PkiError::Prefix(format!(
                "value {value} does not fit in {len} bits"
            )));
        }
        Ok(Self { value, len })
    }

    /// The prefix bits, as an integer.
    pub fn value(&self) -> u128 {
        self.value
    }

    /// The number of prefix bits.
    #[allow(clippy::len_without_is_empty)]
    pub fn len(&self) -> u8 {
        self.len
    }
}

impl FromStr for NodePrefix {
    type Err = PkiError;

    /// Parses the canonical CN form `"<int>/<len>"`: decimal digits only, no
    /// sign, no leading zeros, no spaces.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || PkiError::Prefix(format!("{s:?} is not INT/LEN"));
        let (value, len) = s.split_once('/').ok_or_else(bad)?;
        let value = parse_decimal(value).ok_or_else(bad)?;
        let len = parse_decimal(len)
            .and_then(|l| u8::try_from(l).ok())
            .ok_or_else(bad)?;
        Self::new(value, len)
    }
}

impl fmt::Display for NodePrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.value, self.len)
    }
}

/// A canonical unsigned decimal: digits only, no leading zero unless "0".
fn parse_decimal(s: &str) -> Option<u128> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) || (s.len() > 1 && s.starts_with('0'))
    {
        return None;
    }
    s.parse().ok()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn net(s: &str) -> Network {
        s.parse().unwrap()
    }

    fn pfx(s: &str) -> NodePrefix {
        s.parse().unwrap()
    }

    #[test]
    fn ca_serial_table() {
        let cases = [
            ("2001:db8:42::/48", "0120010db80042"),
            ("2001:db8:42::/47", "900086dc0021"),
            ("::/0", "01"),
            ("::/1", "02"),
            ("8000::/1", "03"),
            ("fd00::/8", "01fd"),
            ("2001:db8::/32", "0120010db8"),
            ("2001:db8::/127", "900086dc000000000000000000000000"),
            ("2001:db8::1/128", "0120010db8000000000000000000000001"),
            (
                "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/128",
                "01ffffffffffffffffffffffffffffffff",
            ),
        ];
        for (text, hex_serial) in cases {
            let n = net(text);
            let mut want = hex_serial.to_string();
            if want.len() % 2 == 1 {
                want.insert(0, '0');
            }
            let want = hex::decode(want).unwrap();
            assert_eq!(n.ca_serial(), want, "{text}");
            assert_eq!(Network::from_ca_serial(&want).unwrap(), n, "{text}");
            assert_eq!(n.to_string(), text);
        }
        // The example of DESIGN.md, as an integer.
        let serial = net("2001:db8:42::/48").ca_serial();
        let mut buf = [0u8; 8];
        buf[8 - serial.len()..].copy_from_slice(&serial);
        assert_eq!(u64::from_be_bytes(buf), 0x120010db80042);
    }

    #[test]
    fn ca_serial_round_trips_every_length() {
        let bits = u128::from(Ipv6Addr::new(
            0x2001, 0x0db8, 0xa5a5, 0x5a5a, 0xdead, 0xbeef, 0x1234, 0x5679,
        ));
        for len in 0..=128u8 {
            let n = Network::new(Ipv6Addr::from(bits & mask(len)), len).unwrap();
            let serial = n.ca_serial();
            assert_eq!(serial.len(), usize::from(len) / 8 + 1, "/{len}");
            assert_ne!(serial[0], 0);
            assert_eq!(Network::from_ca_serial(&serial).unwrap(), n, "/{len}");
            // A DER INTEGER may carry a leading zero byte.
            let mut padded = vec![0];
            padded.extend_from_slice(&serial);
            assert_eq!(Network::from_ca_serial(&padded).unwrap(), n, "/{len}");
        }
    }

    #[test]
    fn ca_serial_rejects() {
        let mut long = vec![0x02];
        long.extend_from_slice(&[0; 16]);
        for bad in [&[][..], &[0], &[0, 0], &[0xff; 18], &long] {
            assert!(
                matches!(Network::from_ca_serial(bad), Err(PkiError::Network(_))),
                "{bad:x?}"
            );
        }
    }

    #[test]
    fn network_rejects() {
        for bad in [
            "2001:db8:42::1/48",
            "2001:db8:42::/129",
            "2001:db8:42::/300",
            "2001:db8:42::",
            "2001:db8:42::/",
            "2001:db8:42::/+48",
            "2001:db8:42::/048",
            "2001:db8:42::/ 48",
            "10.0.0.0/8",
            "/48",
            "",
        ] {
            assert!(bad.parse::<Network>().is_err(), "{bad:?}");
        }
        assert!(Network::new(Ipv6Addr::LOCALHOST, 127).is_err());
        assert!(Network::new(Ipv6Addr::LOCALHOST, 128).is_ok());
        assert!(Network::new(Ipv6Addr::UNSPECIFIED, 129).is_err());
    }

    #[test]
    fn node_prefix_table() {
        let good = [
            ("5/16", 5, 16),
            ("0/1", 0, 1),
            ("1/1", 1, 1),
            ("0/16", 0, 16),
            ("65535/16", 65535, 16),
            ("131071/17", 131_071, 17),
            (
                "340282366920938463463374607431768211455/128",
                u128::MAX,
                128,
            ),
        ];
        for (text, value, len) in good {
            let p = pfx(text);
            assert_eq!((p.value(), p.len()), (value, len), "{text}");
            assert_eq!(p.to_string(), text);
            assert_eq!(NodePrefix::new(value, len).unwrap(), p);
        }
        let bad = [
            "0/0",
            "1/0",
            "2/1",
            "65536/16",
            "5/129",
            "5/256",
            "05/16",
            "5/016",
            "+5/16",
            "-5/16",
            " 5/16",
            "5/16 ",
            "5 /16",
            "5",
            "/16",
            "5/",
            "/",
            "",
            "5/16/1",
            "0x5/16",
            "340282366920938463463374607431768211456/128",
            "٥/16",
        ];
        for text in bad {
            assert!(text.parse::<NodePrefix>().is_err(), "{text:?}");
        }
        assert!(NodePrefix::new(0, 0).is_err());
        assert!(NodePrefix::new(1 << 16, 16).is_err());
    }

    #[test]
    fn subnet_and_node_address() {
        let cases = [
            (
                "2001:db8:42::/48",
                "5/16",
                "2001:db8:42:5::",
                64,
                "2001:db8:42:5::1",
            ),
            (
                "2001:db8:42::/48",
                "0/16",
                "2001:db8:42::",
                64,
                "2001:db8:42::1",
            ),
            (
                "2001:db8:42::/48",
                "1/1",
                "2001:db8:42:8000::",
                49,
                "2001:db8:42:8000::1",
            ),
            (
                "2001:db8:42::/47",
                "1/17",
                "2001:db8:42:1::",
                64,
                "2001:db8:42:1::1",
            ),
            (
                "2001:db8:42::/47",
                "65536/17",
                "2001:db8:43::",
                64,
                "2001:db8:43::1",
            ),
            (
                "2001:db8::/32",
                "5/80",
                "2001:db8::5:0",
                112,
                "2001:db8::5:1",
            ),
            ("::/0", "1/1", "8000::", 1, "8000::1"),
            ("2001:db8::/126", "1/1", "2001:db8::2", 127, "2001:db8::3"),
        ];
        for (n, p, subnet, len, addr) in cases {
            let (n, p) = (net(n), pfx(p));
            let subnet: Ipv6Addr = subnet.parse().unwrap();
            let addr: Ipv6Addr = addr.parse().unwrap();
            assert_eq!(n.subnet(&p).unwrap(), (subnet, len), "{n} {p}");
            assert_eq!(n.node_address(&p).unwrap(), addr, "{n} {p}");
            assert!(n.contains(subnet) && n.contains(addr));
            assert_eq!(n.prefix_of(subnet, len).unwrap(), p, "{n} {p}");
            assert_eq!(n.prefix_of(addr, len).unwrap(), p, "{n} {p}");
        }
    }

    #[test]
    fn subnet_bounds() {
        let n = net("2001:db8:42::/48");
        assert!(n.subnet(&pfx("5/80")).is_ok());
        assert!(n.node_address(&pfx("5/80")).is_err(), "a /128 has no ::1");
        assert!(n.subnet(&pfx("5/81")).is_err());
        assert!(n.node_address(&pfx("5/81")).is_err());
        let full = net("2001:db8::/127");
        assert!(full.node_address(&pfx("1/1")).is_err());
        assert!(net("::1/128").subnet(&pfx("0/1")).is_err());
    }

    #[test]
    fn prefix_of_rejects() {
        let n = net("2001:db8:42::/48");
        let inside: Ipv6Addr = "2001:db8:42:5::".parse().unwrap();
        let outside: Ipv6Addr = "2001:db8:43:5::".parse().unwrap();
        assert!(n.prefix_of(outside, 64).is_err());
        assert!(n.prefix_of(inside, 48).is_err());
        assert!(n.prefix_of(inside, 40).is_err());
        assert!(n.prefix_of(inside, 129).is_err());
        assert_eq!(
            n.prefix_of(inside, 128).unwrap(),
            pfx("92233720368547758080/80")
        );
        assert!(!n.contains(outside));
        assert!(net("::/0").contains(outside));
    }

    proptest! {
        #[test]
        fn prop_prefix_text_round_trip(value: u128, len in 1u8..=128) {
            let value = if len == 128 { value } else { value & ((1u128 << len) - 1) };
            let p = NodePrefix::new(value, len).unwrap();
            prop_assert_eq!(p.to_string().parse::<NodePrefix>().unwrap(), p);
        }

        #[test]
        fn prop_subnet_round_trip(bits: u128, nlen in 0u8..=127, value: u128, plen in 1u8..=128) {
            let plen = plen.min(128 - nlen);
            let value = if plen == 128 { value } else { value & ((1u128 << plen) - 1) };
            let n = Network::new(Ipv6Addr::from(bits & mask(nlen)), nlen).unwrap();
            let p = NodePrefix::new(value, plen).unwrap();
            let (subnet, len) = n.subnet(&p).unwrap();
            prop_assert!(n.contains(subnet));
            prop_assert_eq!(n.prefix_of(subnet, len).unwrap(), p);
            prop_assert_eq!(Network::from_ca_serial(&n.ca_serial()).unwrap(), n);
        }

        #[test]
        fn prop_parsers_never_panic(s in "\\PC{0,60}") {
            let _ = s.parse::<NodePrefix>();
            let _ = s.parse::<Network>();
        }
    }
}
