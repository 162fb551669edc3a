//! The IPv4 payload: when the network configuration enables it, each node
//! gets the IPv4 subnet `network + subject serial` of `prefix_len` bits,
//! takes its first address on the main interface and announces the subnet
//! with Babel (IPv4 routes with IPv6 next hops, RFC 9229; the kernel gets
//! them as `via inet6`).
//!
//! Applied at start only: a change of the IPv4 settings in a newer
//! configuration is logged and takes effect at the next start.

use std::net::Ipv4Addr;

use crate::registry::config::Ipv4Settings;

/// Our IPv4 subnet (address and length) for certificate subject serial
/// `serial`.
pub(crate) fn node_subnet(settings: &Ipv4Settings, serial: u32) -> Result<(Ipv4Addr, u8), String> {
    let (addr, len) = settings
        .network
        .split_once('/')
        .ok_or_else(|| format!("IPv4 network {:?} is not ADDR/LEN", settings.network))?;
    let addr: Ipv4Addr = addr
        .parse()
        .map_err(|_| format!("IPv4 network {:?}: bad address", settings.network))?;
    let len: u8 = len
        .parse()
        .ok()
        .filter(|l| *l <= 32)
        .ok_or_else(|| format!("IPv4 network {:?}: bad length", settings.network))?;
    let plen = settings.prefix_len;
    if plen < len || plen > 30 {
        return Err(format!(
            "IPv4 node subnets of /{plen} do not fit in {}",
            settings.network
        ));
    }
    let bits = u32::from(plen - len);
    if bits < 32 && u64::from(serial) >= 1u64 << bits {
        return Err(format!(
            "subject serial {serial} does not fit in the {bits} node bits of {}",
            settings.network
        ));
    }
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    let base = u32::from(addr) & mask;
    // plen <= 30, so the shift is at least 2.
    let subnet = base | (serial << (32 - u32::from(plen)));
    Ok((Ipv4Addr::from(subnet), plen))
}

/// The node's own IPv4 address: the first of its subnet.
pub(crate) fn node_address(subnet: Ipv4Addr) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(subnet) | 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(network: &str, prefix_len: u8) -> Ipv4Settings {
        Ipv4Settings {
            network: network.into(),
            prefix_len,
        }
    }

    #[test]
    fn subnets_from_the_subject_serial() {
        let s = settings("10.99.0.0/16", 24);
        assert_eq!(
            node_subnet(&s, 3).unwrap(),
            ("10.99.3.0".parse().unwrap(), 24)
        );
        assert_eq!(
            node_address("10.99.3.0".parse().unwrap()).to_string(),
            "10.99.3.1"
        );
        assert_eq!(
            node_subnet(&settings("10.0.0.0/8", 28), 5)
                .unwrap()
                .0
                .to_string(),
            "10.0.0.80"
        );
        for (net, plen, serial) in [
            ("10.99.0.0/16", 24, 256),
            ("10.99.0.0/16", 8, 1),
            ("10.99.0.0/16", 31, 1),
            ("10.99.0.0", 24, 1),
            ("10.99.0.x/16", 24, 1),
            ("10.99.0.0/40", 24, 1),
        ] {
            assert!(
                node_subnet(&settings(net, plen), serial).is_err(),
                "{net} {plen} {serial}"
            );
        }
    }
}
