//! The node's mesh manager building blocks.
//!
//! - [`policy`]: the tunnel policy, a sans-I/O state machine that decides
//!   whom to connect to, which incoming tunnels to accept and which tunnel
//!   to retire, fed with routes, tunnel events, peer replies and time. The
//!   node daemon and the scale simulator drive the same code.
//! - [`peer_proto`]: the authenticated peer protocol carried over UDP port
//!   326 between re6st addresses (address exchange, configuration version
//!   gossip, tunnel retirement, node info, topology).
//! - [`cache`]: the peer cache, an SQLite database in the state directory.
//! - [`control`]: the control API on a Unix socket (`re6st status`, the
//!   registry's bootstrap and admin views).
//! - [`metrics`]: Prometheus metrics over HTTP, rendered from the control
//!   API's status.
//! - [`options`]: `re6st node`'s flags and configuration file.
//! - [`mesh`]: the node's runtime loop, which drives all of the above with
//!   real transports, the Babel router and the kernel.
//! - [`startup`]: what the daemon does before and after the mesh loop
//!   (credentials, configuration, renewal, leftovers, address and routes).
//! - [`hooks`]: the `--up` and supervised `--daemon` commands.
//!
//! [`Address`] and [`Proto`] describe where a node can be reached; they are
//! shared by all three.

pub mod cache;
pub mod control;
pub mod hooks;
pub mod mesh;
pub mod metrics;
pub mod options;
pub mod peer_proto;
pub mod policy;
pub mod startup;

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// A transport protocol a node serves tunnels on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Proto {
    /// UDP with a Noise handshake.
    Udp,
    /// TCP with a Noise handshake (length-prefixed records).
    Tcp,
    /// QUIC with mutual TLS.
    Quic,
    /// A code point this version does not know (kept so it round-trips).
    Unknown(u8),
}

impl From<u8> for Proto {
    fn from(code: u8) -> Self {
        match code {
            1 => Self::Udp,
            2 => Self::Tcp,
            3 => Self::Quic,
            other => Self::Unknown(other),
        }
    }
}

impl From<Proto> for u8 {
    fn from(proto: Proto) -> Self {
        match proto {
            Proto::Udp => 1,
            Proto::Tcp => 2,
            Proto::Quic => 3,
            Proto::Unknown(other) => other,
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Udp => f.write_str("udp"),
            Self::Tcp => f.write_str("tcp"),
            Self::Quic => f.write_str("quic"),
            Self::Unknown(code) => write!(f, "proto{code}"),
        }
    }
}

/// The error of parsing a [`Proto`] or an [`Address`] from text.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AddressParseError {
    /// The protocol is not `udp`, `tcp` or `quic`.
    #[error("unknown protocol (expected udp, tcp or quic)")]
    Proto,
    /// The text is not `IP,PORT,PROTO`.
    #[error("malformed address (expected IP,PORT,PROTO)")]
    Syntax,
    /// The IP part is not an IP address.
    #[error("malformed IP address")]
    Ip,
    /// The port is not a number in 1..=65535.
    #[error("malformed port")]
    Port,
}

impl FromStr for Proto {
    type Err = AddressParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "udp" => Ok(Self::Udp),
            "tcp" => Ok(Self::Tcp),
            "quic" => Ok(Self::Quic),
            _ => Err(AddressParseError::Proto),
        }
    }
}

/// One announced way to reach a node: an IP address, a port and a transport.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Address {
    /// The public (underlay) IP address.
    pub ip: IpAddr,
    /// The port the transport listens on.
    pub port: u16,
    /// The transport.
    pub proto: Proto,
}

impl fmt::Display for Address {
    /// `IP,PORT,PROTO`, the form re6stnet uses in `--client` and its cache.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{},{},{}", self.ip, self.port, self.proto)
    }
}

impl FromStr for Address {
    type Err = AddressParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut parts = s.split(',');
        let (Some(ip), Some(port), Some(proto), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(AddressParseError::Syntax);
        };
        let ip = ip.trim().parse().map_err(|_| AddressParseError::Ip)?;
        let port: u16 = port.trim().parse().map_err(|_| AddressParseError::Port)?;
        if port == 0 {
            return Err(AddressParseError::Port);
        }
        let proto = proto.trim().parse()?;
        Ok(Self { ip, port, proto })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_text_round_trip() {
        let cases = [
            ("192.0.2.1,1194,udp", true),
            ("2001:db8::1,443,quic", true),
            ("192.0.2.1,1194,tcp", true),
            ("192.0.2.1,1194", false),
            ("192.0.2.1,0,udp", false),
            ("192.0.2.1,70000,udp", false),
            ("nonsense,1,udp", false),
            ("192.0.2.1,1,sctp", false),
            ("192.0.2.1,1,udp,extra", false),
        ];
        for (text, ok) in cases {
            let parsed = text.parse::<Address>();
            assert_eq!(parsed.is_ok(), ok, "{text}");
            if let Ok(addr) = parsed {
                assert_eq!(addr.to_string(), text);
            }
        }
    }

    #[test]
    fn proto_code_points_round_trip() {
        for code in 0..=255u8 {
            assert_eq!(u8::from(Proto::from(code)), code);
        }
        assert_eq!(Proto::from(1), Proto::Udp);
        assert_eq!(Proto::from(9), Proto::Unknown(9));
    }
}
