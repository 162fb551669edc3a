//! Routes: descriptions, request builders, and a pipeline that keeps many
//! requests in flight.
//!
//! Replacing a route is one `RTM_NEWROUTE` with `NLM_F_CREATE |
//! NLM_F_REPLACE`, so traffic never sees a gap between the old and the new
//! next hop. The kernel's route key is the destination, the source prefix,
//! the table and the priority (metric): a replacement that keeps those
//! replaces in place.

use std::fmt;
use std::net::IpAddr;

use rtnetlink::packet_core::{NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REPLACE};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
    RouteVia,
};
use rtnetlink::packet_route::{AddressFamily, RouteNetlinkMessage};

use super::pipeline::{RoutePipeline, DEFAULT_IN_FLIGHT};
use super::{Error, Kernel};

/// The routing protocol number on every route we install (`ip route show
/// proto 61`). Not in iproute2's `rt_protos` list (babeld uses 42), so our
/// routes are told apart from everyone else's.
pub const RTPROT_RE6ST: u8 = 61;

/// The main routing table.
pub const TABLE_MAIN: u32 = 254;

/// Table for the throwaway route of [`Kernel::has_ipv6_subtrees`]: no rule
/// points at it, so the probe never affects forwarding.
const PROBE_TABLE: u32 = 0x7265_3673;

/// An IP prefix: an address whose bits past `len` are zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Net {
    addr: IpAddr,
    len: u8,
}

impl Net {
    /// The prefix of length `len` containing `addr` (host bits cleared).
    pub fn new(addr: IpAddr, len: u8) -> Result<Self, Error> {
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if len > max {
            return Err(Error::Invalid("prefix length longer than the address"));
        }
        let addr = match addr {
            IpAddr::V4(a) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
                IpAddr::V4((u32::from(a) & mask).into())
            }
            IpAddr::V6(a) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
                IpAddr::V6((u128::from(a) & mask).into())
            }
        };
        Ok(Self { addr, len })
    }

    /// The network address.
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length.
    pub fn prefix_len(&self) -> u8 {
        self.len
    }

    /// Whether this is a default route prefix (length 0).
    pub fn is_default(&self) -> bool {
        self.len == 0
    }
}

impl fmt::Display for Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

/// What the kernel does with packets matching a route.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RouteKind {
    /// Forward through the gateway and/or device.
    Unicast,
    /// Drop and answer ICMP "unreachable" (an aggregate we announce but do
    /// not fully route, or a route babel holds as unreachable).
    Unreachable,
}

/// A route as the kernel stores it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Route {
    /// Destination prefix.
    pub dst: Net,
    /// Source prefix (`ip route ... from SRC`): a source-specific route.
    /// IPv6 needs a kernel built with `CONFIG_IPV6_SUBTREES`.
    pub src: Option<Net>,
    /// Next hop. An IPv6 next hop for an IPv4 destination is sent as
    /// `RTA_VIA` (v4-via-v6).
    pub gateway: Option<IpAddr>,
    /// Output interface.
    pub ifindex: Option<u32>,
    /// Preferred source address for locally generated packets.
    pub pref_src: Option<IpAddr>,
    /// Kernel priority (`metric` in `ip route`); part of the route's key.
    pub priority: u32,
    /// Routing table.
    pub table: u32,
    /// Unicast or unreachable.
    pub kind: RouteKind,
}

impl Route {
    /// A unicast route to `dst` in the main table, priority 0 (the kernel
    /// shows 1024 for IPv6).
    pub fn new(dst: Net) -> Self {
        Self {
            dst,
            src: None,
            gateway: None,
            ifindex: None,
            pref_src: None,
            priority: 0,
            table: TABLE_MAIN,
            kind: RouteKind::Unicast,
        }
    }

    /// The `RTM_NEWROUTE`/`RTM_DELROUTE` body for this route, with our
    /// protocol number.
    pub fn message(&self) -> Result<RouteMessage, Error> {
        let v4 = self.dst.addr.is_ipv4();
        let same_family = |a: IpAddr| a.is_ipv4() == v4;
        if self.src.is_some_and(|s| !same_family(s.addr)) {
            return Err(Error::Invalid("source prefix of another address family"));
        }
        if self.pref_src.is_some_and(|a| !same_family(a)) {
            return Err(Error::Invalid("preferred source of another address family"));
        }
        if !v4 && self.gateway.is_some_and(|g| g.is_ipv4()) {
            return Err(Error::Invalid("IPv4 next hop for an IPv6 destination"));
        }
        let mut message = RouteMessage::default();
        let header = &mut message.header;
        header.address_family = if v4 {
            AddressFamily::Inet
        } else {
            AddressFamily::Inet6
        };
        header.destination_prefix_length = self.dst.len;
        header.source_prefix_length = self.src.map_or(0, |s| s.len);
        header.table = u8::try_from(self.table).unwrap_or(RouteHeader::RT_TABLE_UNSPEC);
        header.protocol = RouteProtocol::from(RTPROT_RE6ST);
        header.kind = match self.kind {
            RouteKind::Unicast => RouteType::Unicast,
            RouteKind::Unreachable => RouteType::Unreachable,
        };
        header.scope = if v4 && self.kind == RouteKind::Unicast && self.gateway.is_none() {
            RouteScope::Link
        } else {
            RouteScope::Universe
        };
        let attrs = &mut message.attributes;
        attrs.push(RouteAttribute::Table(self.table));
        attrs.push(RouteAttribute::Destination(self.dst.addr.into()));
        if let Some(src) = self.src {
            attrs.push(RouteAttribute::Source(src.addr.into()));
        }
        match self.gateway {
            Some(IpAddr::V6(g)) if v4 => attrs.push(RouteAttribute::Via(RouteVia::Inet6(g))),
            Some(g) => attrs.push(RouteAttribute::Gateway(RouteAddress::from(g))),
            None => {}
        }
        if let Some(index) = self.ifindex {
            attrs.push(RouteAttribute::Oif(index));
        }
        if let Some(pref) = self.pref_src {
            attrs.push(RouteAttribute::PrefSource(pref.into()));
        }
        if self.priority != 0 {
            attrs.push(RouteAttribute::Priority(self.priority));
        }
        Ok(message)
    }
}

impl Route {
    /// The route a kernel message describes, if it is a unicast or
    /// unreachable IPv4 or IPv6 route.
    pub fn from_message(m: &RouteMessage) -> Option<Self> {
        let v4 = match m.header.address_family {
            AddressFamily::Inet => true,
            AddressFamily::Inet6 => false,
            _ => return None,
        };
        let kind = match m.header.kind {
            RouteType::Unicast => RouteKind::Unicast,
            RouteType::Unreachable => RouteKind::Unreachable,
            _ => return None,
        };
        let any = if v4 {
            IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)
        } else {
            IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)
        };
        let ip = |a: &RouteAddress| match a {
            RouteAddress::Inet(a) => Some(IpAddr::V4(*a)),
            RouteAddress::Inet6(a) => Some(IpAddr::V6(*a)),
            _ => None,
        };
        let mut dst = any;
        let mut route = Self::new(Net::new(any, 0).ok()?);
        route.kind = kind;
        route.table = u32::from(m.header.table);
        for a in &m.attributes {
            match a {
                RouteAttribute::Destination(a) => dst = ip(a)?,
                RouteAttribute::Source(a) => {
                    route.src = Some(Net::new(ip(a)?, m.header.source_prefix_length).ok()?)
                }
                RouteAttribute::Gateway(a) => route.gateway = ip(a),
                RouteAttribute::Via(RouteVia::Inet6(a)) => route.gateway = Some(IpAddr::V6(*a)),
                RouteAttribute::Via(RouteVia::Inet(a)) => route.gateway = Some(IpAddr::V4(*a)),
                RouteAttribute::Oif(i) => route.ifindex = Some(*i),
                RouteAttribute::PrefSource(a) => route.pref_src = ip(a),
                RouteAttribute::Priority(p) => route.priority = *p,
                RouteAttribute::Table(t) => route.table = *t,
                _ => {}
            }
        }
        route.dst = Net::new(dst, m.header.destination_prefix_length).ok()?;
        Some(route)
    }
}

impl fmt::Display for Route {
    /// In the words of `ip route`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.kind == RouteKind::Unreachable {
            f.write_str("unreachable ")?;
        }
        write!(f, "{}", self.dst)?;
        if let Some(src) = self.src {
            write!(f, " from {src}")?;
        }
        if let Some(g) = self.gateway {
            write!(f, " via {g}")?;
        }
        if let Some(i) = self.ifindex {
            write!(f, " dev #{i}")?;
        }
        if let Some(p) = self.pref_src {
            write!(f, " src {p}")?;
        }
        write!(f, " metric {} table {}", self.priority, self.table)
    }
}

/// One change to the kernel's routes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RouteOp {
    /// Create the route; fails if one with the same key exists.
    Add(Route),
    /// Create the route, or replace the one with the same key atomically.
    Replace(Route),
    /// Delete the route.
    Remove(Route),
}

impl RouteOp {
    /// The route concerned.
    pub fn route(&self) -> &Route {
        match self {
            Self::Add(r) | Self::Replace(r) | Self::Remove(r) => r,
        }
    }

    pub(crate) fn request(&self) -> Result<(RouteNetlinkMessage, u16), Error> {
        let message = self.route().message()?;
        Ok(match self {
            Self::Add(_) => (
                RouteNetlinkMessage::NewRoute(message),
                NLM_F_CREATE | NLM_F_EXCL,
            ),
            Self::Replace(_) => (
                RouteNetlinkMessage::NewRoute(message),
                NLM_F_CREATE | NLM_F_REPLACE,
            ),
            Self::Remove(_) => (RouteNetlinkMessage::DelRoute(message), 0),
        })
    }

    pub(crate) fn describe(&self) -> String {
        match self {
            Self::Add(r) => format!("ip route add {r}"),
            Self::Replace(r) => format!("ip route replace {r}"),
            Self::Remove(r) => format!("ip route del {r}"),
        }
    }
}

impl Kernel {
    /// Applies one route change and waits for the kernel's answer.
    pub async fn apply(&self, op: RouteOp) -> Result<(), Error> {
        let (message, flags) = op.request()?;
        self.request(message, flags, || op.describe())
            .await
            .map(drop)
    }

    /// All routes of both families with protocol [`RTPROT_RE6ST`], in any
    /// table, as raw kernel messages.
    pub async fn our_routes(&self) -> Result<Vec<RouteMessage>, Error> {
        let mut ours = Vec::new();
        for family in [AddressFamily::Inet6, AddressFamily::Inet] {
            let mut query = RouteMessage::default();
            query.header.address_family = family;
            let dump = self
                .request(RouteNetlinkMessage::GetRoute(query), NLM_F_DUMP, || {
                    "ip route show".to_owned()
                })
                .await?;
            ours.extend(dump.into_iter().filter_map(|m| match m {
                RouteNetlinkMessage::NewRoute(r)
                    if r.header.protocol == RouteProtocol::from(RTPROT_RE6ST) =>
                {
                    Some(r)
                }
                _ => None,
            }));
        }
        Ok(ours)
    }

    /// Our routes (protocol [`RTPROT_RE6ST`]) in any table.
    pub async fn our_route_list(&self) -> Result<Vec<Route>, Error> {
        Ok(self
            .our_routes()
            .await?
            .iter()
            .filter_map(Route::from_message)
            .collect())
    }

    /// Deletes every route with protocol [`RTPROT_RE6ST`] (the leftovers of a
    /// previous run, or ours at shutdown) and returns how many it deleted.
    /// Requests are pipelined on a socket of the current thread's namespace.
    pub async fn flush_routes(&self) -> Result<usize, Error> {
        let ours = self.our_route_list().await?;
        let count = ours.len();
        let mut pipeline = RoutePipeline::new(DEFAULT_IN_FLIGHT)?;
        let failures = pipeline.run(ours.into_iter().map(RouteOp::Remove)).await;
        // A route vanishing between the dump and its deletion is no error.
        match failures
            .into_iter()
            .find(|c| c.result.as_ref().err().and_then(Error::errno) != Some(libc::ESRCH))
        {
            Some(c) => c.result.map(|()| count),
            None => Ok(count),
        }
    }

    /// Whether the kernel accepts IPv6 source-specific routes
    /// (`CONFIG_IPV6_SUBTREES`). Probes with a throwaway unreachable route
    /// between documentation prefixes in a table no rule points to, and
    /// removes it.
    pub async fn has_ipv6_subtrees(&self) -> Result<bool, Error> {
        let doc = |a: u128, len| Net::new(IpAddr::V6(a.into()), len);
        let mut probe = Route::new(doc(0x2001_0db8_ffff_ffff << 64, 64)?);
        probe.src = Some(doc(0x2001_0db8_ffff_fffe << 64, 64)?);
        probe.kind = RouteKind::Unreachable;
        probe.table = PROBE_TABLE;
        match self.apply(RouteOp::Replace(probe)).await {
            Ok(()) => {
                self.apply(RouteOp::Remove(probe)).await?;
                Ok(true)
            }
            Err(e) if matches!(e.errno(), Some(libc::EINVAL | libc::EOPNOTSUPP)) => Ok(false),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    fn net(s: &str) -> Net {
        let (a, l) = s.split_once('/').unwrap();
        Net::new(a.parse().unwrap(), l.parse().unwrap()).unwrap()
    }

    #[test]
    fn net_clears_host_bits() {
        let cases = [
            ("2001:db8::1/64", "2001:db8::/64"),
            ("2001:db8:ffff::/0", "::/0"),
            ("2001:db8::1/128", "2001:db8::1/128"),
            ("10.1.2.3/8", "10.0.0.0/8"),
            ("10.1.2.3/0", "0.0.0.0/0"),
            ("10.1.2.3/32", "10.1.2.3/32"),
        ];
        for (input, want) in cases {
            assert_eq!(net(input).to_string(), want, "{input}");
        }
        assert!(Net::new(Ipv6Addr::LOCALHOST.into(), 129).is_err());
        assert!(Net::new(Ipv4Addr::LOCALHOST.into(), 33).is_err());
    }

    #[test]
    fn message_of_a_source_specific_route() {
        let mut r = Route::new(net("2001:db8:1::/48"));
        r.src = Some(net("2001:db8::/32"));
        r.gateway = Some("fe80::1".parse().unwrap());
        r.ifindex = Some(7);
        r.priority = 5;
        let m = r.message().unwrap();
        assert_eq!(m.header.address_family, AddressFamily::Inet6);
        assert_eq!(m.header.destination_prefix_length, 48);
        assert_eq!(m.header.source_prefix_length, 32);
        assert_eq!(m.header.protocol, RouteProtocol::Other(RTPROT_RE6ST));
        assert_eq!(m.header.table, 254);
        assert_eq!(m.header.kind, RouteType::Unicast);
        assert_eq!(m.header.scope, RouteScope::Universe);
        let want = [
            RouteAttribute::Table(254),
            RouteAttribute::Destination(RouteAddress::Inet6("2001:db8:1::".parse().unwrap())),
            RouteAttribute::Source(RouteAddress::Inet6("2001:db8::".parse().unwrap())),
            RouteAttribute::Gateway(RouteAddress::Inet6("fe80::1".parse().unwrap())),
            RouteAttribute::Oif(7),
            RouteAttribute::Priority(5),
        ];
        assert_eq!(m.attributes, want);
    }

    #[test]
    fn message_of_ipv4_routes() {
        let mut r = Route::new(net("10.0.0.0/8"));
        r.ifindex = Some(3);
        let m = r.message().unwrap();
        assert_eq!(m.header.address_family, AddressFamily::Inet);
        assert_eq!(m.header.scope, RouteScope::Link);

        r.gateway = Some("fe80::2".parse().unwrap());
        r.table = 1000;
        let m = r.message().unwrap();
        assert_eq!(m.header.scope, RouteScope::Universe);
        assert_eq!(m.header.table, RouteHeader::RT_TABLE_UNSPEC);
        assert!(m.attributes.contains(&RouteAttribute::Table(1000)));
        assert!(m.attributes.contains(&RouteAttribute::Via(RouteVia::Inet6(
            "fe80::2".parse().unwrap()
        ))));
    }

    #[test]
    fn message_rejects_mixed_families() {
        let mut r = Route::new(net("2001:db8::/32"));
        r.src = Some(net("10.0.0.0/8"));
        assert!(r.message().is_err());
        let mut r = Route::new(net("2001:db8::/32"));
        r.gateway = Some("10.0.0.1".parse().unwrap());
        assert!(r.message().is_err());
        let mut r = Route::new(net("10.0.0.0/8"));
        r.pref_src = Some("2001:db8::1".parse().unwrap());
        assert!(r.message().is_err());
    }

    #[test]
    fn message_round_trip() {
        let mut r = Route::new(net("2001:db8:1::/48"));
        r.src = Some(net("2001:db8::/32"));
        r.gateway = Some("fe80::1".parse().unwrap());
        r.ifindex = Some(7);
        r.priority = 5;
        r.pref_src = Some("2001:db8::1".parse().unwrap());
        assert_eq!(Route::from_message(&r.message().unwrap()), Some(r));
        let mut r = Route::new(net("10.0.0.0/8"));
        r.gateway = Some("fe80::1".parse().unwrap());
        r.table = 4000;
        r.kind = RouteKind::Unreachable;
        assert_eq!(Route::from_message(&r.message().unwrap()), Some(r));
    }

    #[test]
    fn unreachable_route() {
        let mut r = Route::new(net("2001:db8::/32"));
        r.kind = RouteKind::Unreachable;
        let m = r.message().unwrap();
        assert_eq!(m.header.kind, RouteType::Unreachable);
        assert_eq!(
            r.to_string(),
            "unreachable 2001:db8::/32 metric 0 table 254"
        );
    }
}
