//! Interface addresses: listing, link-local lookup, adding and removing.

use std::net::{IpAddr, Ipv6Addr};

use rtnetlink::packet_core::{NLM_F_CREATE, NLM_F_DUMP, NLM_F_REPLACE};
use rtnetlink::packet_route::address::{
    AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage, AddressScope,
};
use rtnetlink::packet_route::{AddressFamily, RouteNetlinkMessage};

use super::{Error, Kernel};

/// An address assigned to an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Address {
    /// Interface index.
    pub index: u32,
    /// The address.
    pub addr: IpAddr,
    /// Its prefix length.
    pub prefix_len: u8,
    /// Still undergoing duplicate address detection: not usable as a source.
    pub tentative: bool,
}

impl Address {
    fn from_message(m: AddressMessage) -> Option<Self> {
        let mut tentative = m.header.flags.contains(AddressHeaderFlags::Tentative);
        let mut local = None;
        let mut address = None;
        for a in m.attributes {
            match a {
                AddressAttribute::Local(a) => local = Some(a),
                AddressAttribute::Address(a) => address = Some(a),
                AddressAttribute::Flags(f) => tentative |= f.contains(AddressFlags::Tentative),
                _ => {}
            }
        }
        Some(Self {
            index: m.header.index,
            addr: local.or(address)?,
            prefix_len: m.header.prefix_len,
            tentative,
        })
    }
}

/// The `RTM_NEWADDR`/`RTM_DELADDR` body for `addr/prefix_len` on `index`.
pub fn address_message(index: u32, addr: IpAddr, prefix_len: u8) -> Result<AddressMessage, Error> {
    let max = if addr.is_ipv4() { 32 } else { 128 };
    if prefix_len > max {
        return Err(Error::Invalid("prefix length longer than the address"));
    }
    let mut m = AddressMessage::default();
    m.header.family = if addr.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    m.header.prefix_len = prefix_len;
    m.header.index = index;
    m.header.scope = match addr {
        IpAddr::V6(a) if a.is_unicast_link_local() => AddressScope::Link,
        _ => AddressScope::Universe,
    };
    m.attributes.push(AddressAttribute::Local(addr));
    m.attributes.push(AddressAttribute::Address(addr));
    Ok(m)
}

impl Kernel {
    /// The addresses of interface `index`, or of all interfaces.
    pub async fn addresses(&self, index: Option<u32>) -> Result<Vec<Address>, Error> {
        let dump = self
            .request(
                RouteNetlinkMessage::GetAddress(AddressMessage::default()),
                NLM_F_DUMP,
                || "ip address show".to_owned(),
            )
            .await?;
        Ok(dump
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewAddress(a) => Address::from_message(a),
                _ => None,
            })
            .filter(|a| index.is_none_or(|i| a.index == i))
            .collect())
    }

    /// The usable (not tentative) IPv6 link-local address of interface
    /// `index`.
    pub async fn link_local(&self, index: u32) -> Result<Ipv6Addr, Error> {
        self.addresses(Some(index))
            .await?
            .into_iter()
            .find_map(|a| match a.addr {
                IpAddr::V6(v6) if v6.is_unicast_link_local() && !a.tentative => Some(v6),
                _ => None,
            })
            .ok_or(Error::NoLinkLocal(index))
    }

    /// Adds `addr/prefix_len` to interface `index` (succeeds if present).
    pub async fn add_address(&self, index: u32, addr: IpAddr, prefix_len: u8) -> Result<(), Error> {
        let m = address_message(index, addr, prefix_len)?;
        self.request(
            RouteNetlinkMessage::NewAddress(m),
            NLM_F_CREATE | NLM_F_REPLACE,
            || format!("ip address add {addr}/{prefix_len} dev #{index}"),
        )
        .await
        .map(drop)
    }

    /// Removes `addr/prefix_len` from interface `index`.
    pub async fn remove_address(
        &self,
        index: u32,
        addr: IpAddr,
        prefix_len: u8,
    ) -> Result<(), Error> {
        let m = address_message(index, addr, prefix_len)?;
        self.request(RouteNetlinkMessage::DelAddress(m), 0, || {
            format!("ip address del {addr}/{prefix_len} dev #{index}")
        })
        .await
        .map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_messages() {
        let m = address_message(3, "fe80::1".parse().unwrap(), 64).unwrap();
        assert_eq!(m.header.family, AddressFamily::Inet6);
        assert_eq!(m.header.scope, AddressScope::Link);
        assert_eq!(m.header.index, 3);
        let m = address_message(3, "2001:db8::1".parse().unwrap(), 128).unwrap();
        assert_eq!(m.header.scope, AddressScope::Universe);
        let m = address_message(2, "10.0.0.1".parse().unwrap(), 24).unwrap();
        assert_eq!(m.header.family, AddressFamily::Inet);
        assert!(address_message(2, "10.0.0.1".parse().unwrap(), 33).is_err());
    }

    #[test]
    fn tentative_flag_is_read_from_either_place() {
        let mut m = address_message(1, "fe80::1".parse().unwrap(), 64).unwrap();
        m.attributes
            .push(AddressAttribute::Flags(AddressFlags::Tentative));
        assert!(Address::from_message(m).unwrap().tentative);
        let mut m = address_message(1, "fe80::1".parse().unwrap(), 64).unwrap();
        m.header.flags = AddressHeaderFlags::Tentative;
        assert!(Address::from_message(m).unwrap().tentative);
        let m = address_message(1, "fe80::1".parse().unwrap(), 64).unwrap();
        assert!(!Address::from_message(m).unwrap().tentative);
    }
}
