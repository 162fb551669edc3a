//! Routes: descriptions, request builders, and a pipeline that keeps many
//! requests in flight.
//!
//! Replacing a route is one `RTM_NEWROUTE` with `NLM_F_CREATE |
//! NLM_F_REPLACE`, so traffic never sees a gap between the old and the new
//! next hop. The kernel's route key is the destination, the source prefix,
//! the table and the priority (metric): a replacement that keeps those
//! replaces in place.

use std::fmt;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::time::Duration;

use futures::stream::FuturesUnordered;
use futures::StreamExt;
use rtnetlink::packet_core::{NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REPLACE};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
    RouteVia,
};
use rtnetlink::packet_route::{AddressFamily, RouteNetlinkMessage};

use super::{collect, send, Error, Kernel};

/// The routing protocol number on every route we install (`ip route show
/// proto 61`). Not in iproute2's `rt_protos` list (babeld uses 42), so our
/// routes are told apart from everyone else's.
pub const RTPROT_RE6ST: u8 = 61;

/// The main routing table.
pub const TABLE_MAIN: u32 = 254;

/// Table for the throwaway route of [`Kernel::has_ipv6_subtrees`]: no rule
/// points at it, so the probe never affects forwarding.
const PROBE_TABLE: u32 = 0x7265_3673;

/// How long one route request may wait for its acknowledgement.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

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

    fn request(&self) -> Result<(RouteNetlinkMessage, u16), Error> {
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

    fn describe(&self) -> String {
        match self {
            Self::Add(r) => format!("ip route add {r}"),
            Self::Replace(r) => format!("ip route replace {r}"),
            Self::Remove(r) => format!("ip route del {r}"),
        }
    }
}

type Pending = Pin<Box<dyn Future<Output = Completion> + Send>>;

/// The outcome of one request sent through a [`RoutePipeline`].
#[derive(Debug)]
pub struct Completion {
    /// The change that was requested.
    pub op: RouteOp,
    /// Whether the kernel applied it.
    pub result: Result<(), Error>,
}

/// Sends route changes without waiting for each acknowledgement.
///
/// [`submit`](Self::submit) queues a request on the socket at once, so
/// requests reach the kernel in submission order (and the kernel applies
/// them in that order); acknowledgements are collected as they come by
/// [`next`](Self::next). Callers bound the number in flight with
/// [`is_full`](Self::is_full) so the socket's receive buffer never
/// overflows.
pub struct RoutePipeline {
    handle: rtnetlink::Handle,
    pending: FuturesUnordered<Pending>,
    limit: usize,
}

impl fmt::Debug for RoutePipeline {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RoutePipeline")
            .field("in_flight", &self.pending.len())
            .field("limit", &self.limit)
            .finish()
    }
}

impl RoutePipeline {
    /// A pipeline on `kernel`'s socket with at most `limit` requests in
    /// flight (at least 1).
    pub fn new(kernel: &Kernel, limit: usize) -> Self {
        Self {
            handle: kernel.handle(),
            pending: FuturesUnordered::new(),
            limit: limit.max(1),
        }
    }

    /// Requests awaiting their acknowledgement.
    pub fn in_flight(&self) -> usize {
        self.pending.len()
    }

    /// Whether the caller should wait for a [`next`](Self::next) before
    /// submitting more.
    pub fn is_full(&self) -> bool {
        self.pending.len() >= self.limit
    }

    /// Queues `op` on the socket. An invalid route description completes at
    /// once with its error.
    pub fn submit(&mut self, op: RouteOp) {
        let response = op
            .request()
            .and_then(|(message, flags)| send(&mut self.handle, message, flags));
        let future: Pending = match response {
            Ok(response) => Box::pin(async move {
                let result = match tokio::time::timeout(REQUEST_TIMEOUT, collect(response)).await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(source)) => Err(Error::Refused {
                        what: op.describe(),
                        source,
                    }),
                    Err(_) => Err(Error::Refused {
                        what: op.describe(),
                        source: std::io::ErrorKind::TimedOut.into(),
                    }),
                };
                Completion { op, result }
            }),
            Err(e) => Box::pin(std::future::ready(Completion { op, result: Err(e) })),
        };
        self.pending.push(future);
    }

    /// The next acknowledged request, or `None` when none is in flight.
    pub async fn next(&mut self) -> Option<Completion> {
        self.pending.next().await
    }

    /// Submits every op, keeping the pipeline full, and waits for all of
    /// them. Returns the failures.
    pub async fn run(&mut self, ops: impl IntoIterator<Item = RouteOp>) -> Vec<Completion> {
        let mut failures = Vec::new();
        let mut keep = |c: Completion| {
            if c.result.is_err() {
                failures.push(c);
            }
        };
        for op in ops {
            while self.is_full() {
                match self.next().await {
                    Some(c) => keep(c),
                    None => break,
                }
            }
            self.submit(op);
        }
        while let Some(c) = self.next().await {
            keep(c);
        }
        failures
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

    /// Deletes every route with protocol [`RTPROT_RE6ST`] (the leftovers of a
    /// previous run, or ours at shutdown) and returns how many it deleted.
    /// Requests are pipelined.
    pub async fn flush_routes(&self) -> Result<usize, Error> {
        let ours = self.our_routes().await?;
        let count = ours.len();
        let mut handle = self.handle();
        let mut pending = FuturesUnordered::new();
        for message in ours {
            let response = send(&mut handle, RouteNetlinkMessage::DelRoute(message), 0)?;
            pending.push(collect(response));
            if pending.len() >= 256 {
                flush_result(pending.next().await)?;
            }
        }
        while let Some(r) = pending.next().await {
            flush_result(Some(r))?;
        }
        Ok(count)
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

/// A route vanishing between the dump and its deletion is not an error.
fn flush_result(r: Option<std::io::Result<Vec<RouteNetlinkMessage>>>) -> Result<(), Error> {
    match r {
        Some(Err(e)) if e.raw_os_error() != Some(libc::ESRCH) => Err(Error::Refused {
            what: format!("ip route flush proto {RTPROT_RE6ST}"),
            source: e,
        }),
        _ => Ok(()),
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
