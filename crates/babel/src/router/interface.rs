//! Interfaces: kind, hello and update intervals, nominal cost, MTU.

use std::net::Ipv6Addr;
use std::time::Duration;

use super::neighbour::RttConfig;
use super::timer::Time;

/// The kind of link, which selects the link-quality estimator
/// (RFC 8966 appendix A) and babeld's defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum InterfaceKind {
    /// A wired LAN: 2-out-of-3 estimator, nominal cost 96.
    Wired,
    /// A lossy radio link: ETX estimator, nominal cost 256.
    Wireless,
    /// A point-to-point tunnel: 2-out-of-3 estimator, nominal cost 96,
    /// timestamps on and an RTT penalty of 96 by default.
    Tunnel,
}

/// Per-interface configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceConfig {
    /// Link type.
    pub kind: InterfaceKind,
    /// Interval between multicast hellos (default 4 s).
    pub hello_interval: Duration,
    /// Interval between periodic full updates (default 4 × hello).
    pub update_interval: Duration,
    /// Nominal receive cost (default 96 wired/tunnel, 256 wireless).
    pub rxcost: u16,
    /// Largest Babel packet we send on this interface (UDP payload).
    pub mtu: usize,
    /// Our link-local address on the interface: the source of our packets
    /// and the address our neighbours' IHUs name.
    pub link_local: Ipv6Addr,
    /// Send timestamps in hellos and IHUs (RTT extension).
    pub enable_timestamps: bool,
    /// RTT parameters for this interface; `None` uses the router's.
    pub rtt: Option<RttConfig>,
}

impl InterfaceConfig {
    /// babeld's defaults for `kind`: hellos every 4 s, updates every 16 s,
    /// MTU 1232 (IPv6 minimum MTU less IPv6 and UDP headers); tunnels also
    /// get timestamps and re6st's `max-rtt-penalty` of 96.
    pub fn new(kind: InterfaceKind, link_local: Ipv6Addr) -> Self {
        let hello = Duration::from_secs(4);
        Self {
            kind,
            hello_interval: hello,
            update_interval: hello * 4,
            rxcost: match kind {
                InterfaceKind::Wireless => 256,
                InterfaceKind::Wired | InterfaceKind::Tunnel => 96,
            },
            mtu: 1232,
            link_local,
            enable_timestamps: kind == InterfaceKind::Tunnel,
            rtt: (kind == InterfaceKind::Tunnel).then(|| RttConfig {
                max_rtt_penalty: 96,
                ..RttConfig::default()
            }),
        }
    }

    pub(crate) fn hello_ms(&self) -> Time {
        (self.hello_interval.as_millis() as Time).clamp(10, 655_350)
    }

    pub(crate) fn update_ms(&self) -> Time {
        (self.update_interval.as_millis() as Time).clamp(10, 655_350)
    }

    /// Hello interval in centiseconds, as carried on the wire.
    pub(crate) fn hello_cs(&self) -> u16 {
        (self.hello_ms() / 10) as u16
    }

    /// Update interval in centiseconds, as carried on the wire.
    pub(crate) fn update_cs(&self) -> u16 {
        (self.update_ms() / 10) as u16
    }
}

/// An interface the router runs on.
#[derive(Debug, Clone)]
pub(crate) struct Interface {
    pub(crate) config: InterfaceConfig,
    pub(crate) hello_seqno: u16,
    pub(crate) hello_deadline: Time,
    pub(crate) update_deadline: Time,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_per_kind() {
        let ll: Ipv6Addr = "fe80::1".parse().unwrap();
        let cases = [
            (InterfaceKind::Wired, 96, false, None),
            (InterfaceKind::Wireless, 256, false, None),
            (InterfaceKind::Tunnel, 96, true, Some(96)),
        ];
        for (kind, rxcost, ts, pen) in cases {
            let c = InterfaceConfig::new(kind, ll);
            assert_eq!(c.rxcost, rxcost);
            assert_eq!(c.enable_timestamps, ts);
            assert_eq!(c.rtt.map(|r| r.max_rtt_penalty), pen);
            assert_eq!(c.hello_cs(), 400);
            assert_eq!(c.update_cs(), 1600);
        }
    }
}
