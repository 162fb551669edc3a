//! The addresses a node announces to its peers (peer protocol address
//! replies, the registry's bootstrap answers).
//!
//! Every `--ip ADDR` combined with every `--pp PORT PROTO`, in that order;
//! with no explicit address, every usable address of the host combined with
//! every pp. `--ip any` and `--ip upnp` (learning the public address from
//! peers, UPnP port mapping) are not implemented yet: they fall back to the
//! host's addresses. A `--client` node announces nothing (it accepts no
//! tunnel).

use std::net::IpAddr;

use crate::node::control::AnnouncedAddress;
use crate::node::options::{AnnounceIp, PortProto};
use crate::node::Address;
use crate::pki::Network;

/// How an announced address was learned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Source {
    /// `--ip ADDR`.
    Configured,
    /// An address of one of the host's interfaces.
    Interface,
    /// A UPnP port mapping on the gateway (`--ip upnp`, or no `--ip`).
    Upnp,
    /// The address peers see our tunnels come from (`--ip any`).
    Peers,
}

impl Source {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Configured => "configured",
            Self::Interface => "interface",
            Self::Upnp => "upnp",
            Self::Peers => "peers",
        }
    }
}

/// Whether a host address may be announced: not loopback, link-local,
/// multicast or unspecified, and not inside the overlay itself.
pub(crate) fn usable_host_address(ip: IpAddr, network: &Network) -> bool {
    match ip {
        IpAddr::V4(a) => {
            !(a.is_loopback()
                || a.is_link_local()
                || a.is_multicast()
                || a.is_unspecified()
                || a.is_broadcast())
        }
        IpAddr::V6(a) => {
            let link_local = (a.segments()[0] & 0xffc0) == 0xfe80;
            !(a.is_loopback()
                || link_local
                || a.is_multicast()
                || a.is_unspecified()
                || network.contains(a))
        }
    }
}

/// The announced addresses, by preference, with how each was learned.
pub(crate) fn announced(
    ip: &[AnnounceIp],
    pp: &[PortProto],
    host: &[IpAddr],
    network: &Network,
    client_mode: bool,
) -> Vec<(Address, Source)> {
    if client_mode {
        return Vec::new();
    }
    let configured: Vec<IpAddr> = ip
        .iter()
        .filter_map(|i| match i {
            AnnounceIp::Address(a) => Some(*a),
            AnnounceIp::Any | AnnounceIp::Upnp => None,
        })
        .collect();
    let fallback = configured.is_empty() || configured.len() < ip.len();
    let mut ips: Vec<(IpAddr, Source)> = configured
        .iter()
        .map(|a| (*a, Source::Configured))
        .collect();
    if fallback {
        for a in host {
            if usable_host_address(*a, network) && !ips.iter().any(|(i, _)| i == a) {
                ips.push((*a, Source::Interface));
            }
        }
    }
    let mut out = Vec::new();
    for (ip, source) in ips {
        for p in pp {
            out.push((
                Address {
                    ip,
                    port: p.port,
                    proto: p.proto,
                },
                source,
            ));
        }
    }
    out
}

/// The status form of announced addresses.
pub(crate) fn status(list: &[(Address, Source)]) -> Vec<AnnouncedAddress> {
    list.iter()
        .map(|(a, s)| AnnouncedAddress {
            address: a.to_string(),
            source: s.as_str().into(),
        })
        .collect()
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::node::Proto;

    /// udp and tcp on port 1194, the `--pp` of the tests.
    pub(in crate::node::mesh) fn pp() -> Vec<PortProto> {
        vec![
            PortProto {
                port: 1194,
                proto: Proto::Udp,
            },
            PortProto {
                port: 1194,
                proto: Proto::Tcp,
            },
        ]
    }

    fn ips(list: &[&str]) -> Vec<IpAddr> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn host_addresses_filtered_and_combined_with_every_pp() {
        let network: Network = "2001:db8:42::/48".parse().unwrap();
        let host = ips(&[
            "127.0.0.1",
            "::1",
            "fe80::1",
            "169.254.3.4",
            "2001:db8:42:5::1",
            "10.42.0.2",
            "fd42::2",
        ]);
        let a = announced(&[], &pp(), &host, &network, false);
        let text: Vec<String> = a.iter().map(|(a, _)| a.to_string()).collect();
        assert_eq!(
            text,
            [
                "10.42.0.2,1194,udp",
                "10.42.0.2,1194,tcp",
                "fd42::2,1194,udp",
                "fd42::2,1194,tcp"
            ]
        );
        assert!(a.iter().all(|(_, s)| *s == Source::Interface));
        assert!(announced(&[], &pp(), &host, &network, true).is_empty());
    }

    #[test]
    fn configured_addresses_first_and_any_falls_back() {
        let network: Network = "2001:db8:42::/48".parse().unwrap();
        let host = ips(&["10.42.0.2"]);
        let only = [AnnounceIp::Address("192.0.2.7".parse().unwrap())];
        let a = announced(&only, &pp()[..1], &host, &network, false);
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].0.to_string(), "192.0.2.7,1194,udp");
        assert_eq!(a[0].1, Source::Configured);
        let with_any = [only[0], AnnounceIp::Any];
        let a = announced(&with_any, &pp()[..1], &host, &network, false);
        assert_eq!(a.len(), 2);
        assert_eq!(a[1].0.to_string(), "10.42.0.2,1194,udp");
        assert_eq!(status(&a)[1].source, "interface");
    }
}
