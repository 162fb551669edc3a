//! Prometheus metrics of the node (`re6st node --metrics 127.0.0.1:PORT`).
//!
//! [`serve`] is a small HTTP/1.1 server (axum) answering `GET /metrics`:
//! each scrape asks the node's main loop for its state
//! ([`Request::Status`] without routes, the same call `re6st status` makes)
//! and renders it with [`render`], a pure function, in the Prometheus text
//! exposition format (version 0.0.4). Every metric is named `re6st_...`;
//! per-tunnel series carry `peer`, `transport`, `direction` and
//! `interface` labels. `docs/node.md` lists them all.

use std::fmt::Write as _;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response as HttpResponse};
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};

use super::control::{ControlCall, Request, Response, Status};

/// The `Content-Type` of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// How long a scrape waits for the node's main loop.
pub const SCRAPE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `GET /metrics` on `listener` until `calls` is closed (the node's
/// main loop has stopped), asking the loop for its state at every scrape.
/// Other paths get 404; a loop that does not answer in
/// [`SCRAPE_TIMEOUT`] gets the scrape a 503.
pub async fn serve(listener: TcpListener, calls: mpsc::Sender<ControlCall>) {
    let stopped = calls.clone();
    let app = Router::new()
        .route("/metrics", get(scrape))
        .fallback(|| async { (StatusCode::NOT_FOUND, "only /metrics is served here\n") })
        .with_state(calls);
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(async move { stopped.closed().await })
        .await;
    if let Err(e) = served {
        tracing::warn!("metrics server: {e}");
    }
}

async fn scrape(State(calls): State<mpsc::Sender<ControlCall>>) -> HttpResponse {
    let unavailable = |why: String| (StatusCode::SERVICE_UNAVAILABLE, why + "\n").into_response();
    let (tx, rx) = oneshot::channel();
    if calls
        .send((Request::Status { routes: false }, tx))
        .await
        .is_err()
    {
        return unavailable("the node is stopping".into());
    }
    match tokio::time::timeout(SCRAPE_TIMEOUT, rx).await {
        Ok(Ok(Response::Status(status))) => {
            ([(header::CONTENT_TYPE, CONTENT_TYPE)], render(&status)).into_response()
        }
        Ok(Ok(Response::Error(e))) => unavailable(format!("the node refused: {e}")),
        Ok(Ok(other)) => unavailable(format!("unexpected answer from the node: {other:?}")),
        Ok(Err(_)) => unavailable("the node dropped the request".into()),
        Err(_) => unavailable(format!("the node did not answer within {SCRAPE_TIMEOUT:?}")),
    }
}

/// The metric families, in the order they are written: name, type, help.
struct Family {
    name: &'static str,
    kind: &'static str,
    help: &'static str,
}

const fn family(name: &'static str, kind: &'static str, help: &'static str) -> Family {
    Family { name, kind, help }
}

const INFO: Family = family(
    "re6st_info",
    "gauge",
    "The node's identity and software version (always 1).",
);
const UPTIME: Family = family(
    "re6st_uptime_seconds",
    "gauge",
    "Seconds since the node started.",
);
const CONFIG_VERSION: Family = family(
    "re6st_config_version",
    "gauge",
    "Version of the network configuration in use.",
);
const CERT_EXPIRY: Family = family(
    "re6st_certificate_expiry_timestamp_seconds",
    "gauge",
    "When the node's certificate expires (UNIX time).",
);
const TUNNELS: Family = family("re6st_tunnels", "gauge", "Tunnels by direction and state.");
const TUNNEL_UP: Family = family(
    "re6st_tunnel_up",
    "gauge",
    "1 if the tunnel is up, 0 while connecting or retiring.",
);
const TUNNEL_AGE: Family = family(
    "re6st_tunnel_age_seconds",
    "gauge",
    "Seconds since the tunnel was opened.",
);
const TUNNEL_RX_BYTES: Family = family(
    "re6st_tunnel_receive_bytes_total",
    "counter",
    "Bytes received through the tunnel.",
);
const TUNNEL_TX_BYTES: Family = family(
    "re6st_tunnel_transmit_bytes_total",
    "counter",
    "Bytes sent through the tunnel.",
);
const TUNNEL_RX_PACKETS: Family = family(
    "re6st_tunnel_receive_packets_total",
    "counter",
    "Packets received through the tunnel.",
);
const TUNNEL_TX_PACKETS: Family = family(
    "re6st_tunnel_transmit_packets_total",
    "counter",
    "Packets sent through the tunnel.",
);
const TUNNEL_RTT: Family = family(
    "re6st_tunnel_rtt_seconds",
    "gauge",
    "Round-trip time measured by the tunnel's transport.",
);
const TUNNEL_ROUTES: Family = family(
    "re6st_tunnel_routes",
    "gauge",
    "Destinations routed through the tunnel.",
);
const NEIGHBOURS: Family = family(
    "re6st_babel_neighbours",
    "gauge",
    "Babel neighbours (over tunnels and LAN interfaces).",
);
const NEIGHBOUR_COST: Family = family(
    "re6st_babel_neighbour_cost",
    "gauge",
    "Babel link cost of the neighbour (65535 = unreachable).",
);
const NEIGHBOUR_RTT: Family = family(
    "re6st_babel_neighbour_rtt_seconds",
    "gauge",
    "Smoothed round-trip time of the neighbour, from Babel timestamps.",
);
const ROUTES: Family = family("re6st_routes", "gauge", "Selected Babel routes.");
const PEER_CACHE: Family = family(
    "re6st_peer_cache_peers",
    "gauge",
    "Peers in the peer cache.",
);
const ADDRESSES: Family = family(
    "re6st_announced_addresses",
    "gauge",
    "Addresses announced to peers, by how they were learned.",
);
const PEER_MESSAGES: Family = family(
    "re6st_peer_protocol_messages_total",
    "counter",
    "Peer-protocol messages sent, accepted, and dropped (malformed, stale, replayed, forged).",
);
const BABEL_PACKETS: Family = family(
    "re6st_babel_packets_total",
    "counter",
    "Babel control packets sent and received.",
);
const BABEL_BYTES: Family = family(
    "re6st_babel_bytes_total",
    "counter",
    "Babel control traffic sent and received, bytes.",
);

/// Every family [`render`] writes, in order.
pub const FAMILIES: &[&str] = &[
    INFO.name,
    UPTIME.name,
    CONFIG_VERSION.name,
    CERT_EXPIRY.name,
    TUNNELS.name,
    TUNNEL_UP.name,
    TUNNEL_AGE.name,
    TUNNEL_RX_BYTES.name,
    TUNNEL_TX_BYTES.name,
    TUNNEL_RX_PACKETS.name,
    TUNNEL_TX_PACKETS.name,
    TUNNEL_RTT.name,
    TUNNEL_ROUTES.name,
    NEIGHBOURS.name,
    NEIGHBOUR_COST.name,
    NEIGHBOUR_RTT.name,
    ROUTES.name,
    PEER_CACHE.name,
    ADDRESSES.name,
    PEER_MESSAGES.name,
    BABEL_PACKETS.name,
    BABEL_BYTES.name,
];

/// Renders `status` in the Prometheus text exposition format.
pub fn render(status: &Status) -> String {
    let mut w = Writer::default();
    let id = &status.identity;
    w.family(&INFO);
    w.sample(
        &INFO,
        &[
            ("prefix", &id.prefix),
            ("subnet", &id.subnet),
            ("network", &id.network),
            ("software", &id.software),
        ],
        1,
    );
    w.single(&UPTIME, id.uptime_secs);
    w.single(&CONFIG_VERSION, id.config_version);
    w.single(&CERT_EXPIRY, id.cert_not_after);

    w.family(&TUNNELS);
    for direction in ["outgoing", "incoming"] {
        for state in ["connecting", "up", "retiring"] {
            let n = status
                .tunnels
                .iter()
                .filter(|t| t.direction == direction && t.state == state)
                .count();
            w.sample(
                &TUNNELS,
                &[("direction", direction), ("state", state)],
                n as u64,
            );
        }
    }
    let labels = |t: &super::control::TunnelStatus| {
        [
            ("peer", t.peer.clone()),
            ("transport", t.transport.clone()),
            ("direction", t.direction.clone()),
            ("interface", t.interface.clone().unwrap_or_default()),
        ]
    };
    type Field = fn(&super::control::TunnelStatus) -> Option<Value>;
    let per_tunnel: [(&Family, Field); 8] = [
        (&TUNNEL_UP, |t| Some(Value::Int(u64::from(t.state == "up")))),
        (&TUNNEL_AGE, |t| Some(Value::Int(t.age_secs))),
        (&TUNNEL_RX_BYTES, |t| Some(Value::Int(t.rx_bytes))),
        (&TUNNEL_TX_BYTES, |t| Some(Value::Int(t.tx_bytes))),
        (&TUNNEL_RX_PACKETS, |t| Some(Value::Int(t.rx_packets))),
        (&TUNNEL_TX_PACKETS, |t| Some(Value::Int(t.tx_packets))),
        (&TUNNEL_RTT, |t| {
            t.rtt_ms.map(|ms| Value::Float(ms / 1000.0))
        }),
        (&TUNNEL_ROUTES, |t| Some(Value::Int(u64::from(t.routes)))),
    ];
    for (family, field) in &per_tunnel {
        w.family(family);
        for t in &status.tunnels {
            if let Some(value) = field(t) {
                let labels = labels(t);
                let labels: Vec<(&str, &str)> =
                    labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
                w.sample_value(family, &labels, value);
            }
        }
    }

    w.single(&NEIGHBOURS, status.neighbours.len() as u64);
    w.family(&NEIGHBOUR_COST);
    for n in &status.neighbours {
        let address = n.address.to_string();
        let labels = [("interface", n.interface.as_str()), ("address", &address)];
        w.sample(&NEIGHBOUR_COST, &labels, u64::from(n.cost));
    }
    w.family(&NEIGHBOUR_RTT);
    for n in &status.neighbours {
        if let Some(ms) = n.rtt_ms {
            let address = n.address.to_string();
            let labels = [("interface", n.interface.as_str()), ("address", &address)];
            w.sample_value(&NEIGHBOUR_RTT, &labels, Value::Float(ms / 1000.0));
        }
    }
    w.single(&ROUTES, status.route_count as u64);
    w.single(&PEER_CACHE, status.peer_cache as u64);

    w.family(&ADDRESSES);
    let mut sources: Vec<&str> = status.addresses.iter().map(|a| a.source.as_str()).collect();
    sources.sort_unstable();
    sources.dedup();
    for source in sources {
        let n = status
            .addresses
            .iter()
            .filter(|a| a.source == source)
            .count();
        w.sample(&ADDRESSES, &[("source", source)], n as u64);
    }

    let p = &status.peer_protocol;
    w.family(&PEER_MESSAGES);
    for (result, n) in [
        ("sent", p.sent),
        ("accepted", p.accepted),
        ("dropped", p.dropped),
    ] {
        w.sample(&PEER_MESSAGES, &[("result", result)], n);
    }
    let b = &status.babel;
    w.family(&BABEL_PACKETS);
    w.sample(&BABEL_PACKETS, &[("direction", "transmit")], b.tx_packets);
    w.sample(&BABEL_PACKETS, &[("direction", "receive")], b.rx_packets);
    w.family(&BABEL_BYTES);
    w.sample(&BABEL_BYTES, &[("direction", "transmit")], b.tx_bytes);
    w.sample(&BABEL_BYTES, &[("direction", "receive")], b.rx_bytes);
    w.out
}

/// A sample value.
#[derive(Clone, Copy)]
enum Value {
    Int(u64),
    Float(f64),
}

#[derive(Default)]
struct Writer {
    out: String,
}

impl Writer {
    fn family(&mut self, f: &Family) {
        let _ = writeln!(self.out, "# HELP {} {}", f.name, f.help);
        let _ = writeln!(self.out, "# TYPE {} {}", f.name, f.kind);
    }

    /// A family with one unlabelled sample.
    fn single(&mut self, f: &Family, value: u64) {
        self.family(f);
        self.sample(f, &[], value);
    }

    fn sample(&mut self, f: &Family, labels: &[(&str, &str)], value: u64) {
        self.sample_value(f, labels, Value::Int(value));
    }

    fn sample_value(&mut self, f: &Family, labels: &[(&str, &str)], value: Value) {
        self.out.push_str(f.name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (key, value)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{key}=\"");
                escape_label(value, &mut self.out);
                self.out.push('"');
            }
            self.out.push('}');
        }
        let _ = match value {
            Value::Int(n) => writeln!(self.out, " {n}"),
            Value::Float(x) if x.is_finite() => writeln!(self.out, " {x}"),
            Value::Float(x) if x.is_nan() => writeln!(self.out, " NaN"),
            Value::Float(x) if x > 0.0 => writeln!(self.out, " +Inf"),
            Value::Float(_) => writeln!(self.out, " -Inf"),
        };
    }
}

/// Label values escape `\`, `"` and newlines.
fn escape_label(value: &str, out: &mut String) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::super::control::{
        AnnouncedAddress, BabelCounters, Identity, NeighbourStatus, PeerProtocolCounters,
        TunnelStatus,
    };
    use super::*;

    fn sample() -> Status {
        Status {
            identity: Identity {
                prefix: "5/16".into(),
                subnet: "2001:db8:42:5::/64".into(),
                address: Some("2001:db8:42:5::1".parse().unwrap()),
                network: "2001:db8:42::/48".into(),
                config_version: 7,
                software: "0.1.0".into(),
                uptime_secs: 3725,
                cert_not_after: 1_826_000_000,
            },
            tunnels: vec![
                TunnelStatus {
                    peer: "9/16".into(),
                    transport: "udp".into(),
                    direction: "outgoing".into(),
                    state: "up".into(),
                    interface: Some("re6st-1".into()),
                    age_secs: 185,
                    rx_packets: 1200,
                    rx_bytes: 1_572_864,
                    tx_packets: 900,
                    tx_bytes: 800,
                    rtt_ms: Some(1.25),
                    routes: 4,
                    ..Default::default()
                },
                TunnelStatus {
                    peer: "12/16".into(),
                    transport: "quic".into(),
                    direction: "incoming".into(),
                    state: "connecting".into(),
                    age_secs: 2,
                    ..Default::default()
                },
            ],
            neighbours: vec![NeighbourStatus {
                interface: "re6st-1".into(),
                address: "fe80::9".parse().unwrap(),
                cost: 96,
                rxcost: 96,
                txcost: 96,
                rtt_ms: Some(1.5),
            }],
            route_count: 3,
            routes: None,
            peer_cache: 17,
            nat: Default::default(),
            addresses: vec![
                AnnouncedAddress {
                    address: "10.42.0.5,1194,udp".into(),
                    source: "interface".into(),
                },
                AnnouncedAddress {
                    address: "10.42.0.5,1194,tcp".into(),
                    source: "interface".into(),
                },
            ],
            peer_protocol: PeerProtocolCounters {
                sent: 40,
                accepted: 38,
                dropped: 1,
            },
            babel: BabelCounters {
                tx_packets: 500,
                tx_bytes: 64_000,
                rx_packets: 480,
                rx_bytes: 60_000,
            },
            events: Vec::new(),
        }
    }

    const GOLDEN: &str = r#"# HELP re6st_info The node's identity and software version (always 1).
# TYPE re6st_info gauge
re6st_info{prefix="5/16",subnet="2001:db8:42:5::/64",network="2001:db8:42::/48",software="0.1.0"} 1
# HELP re6st_uptime_seconds Seconds since the node started.
# TYPE re6st_uptime_seconds gauge
re6st_uptime_seconds 3725
# HELP re6st_config_version Version of the network configuration in use.
# TYPE re6st_config_version gauge
re6st_config_version 7
# HELP re6st_certificate_expiry_timestamp_seconds When the node's certificate expires (UNIX time).
# TYPE re6st_certificate_expiry_timestamp_seconds gauge
re6st_certificate_expiry_timestamp_seconds 1826000000
# HELP re6st_tunnels Tunnels by direction and state.
# TYPE re6st_tunnels gauge
re6st_tunnels{direction="outgoing",state="connecting"} 0
re6st_tunnels{direction="outgoing",state="up"} 1
re6st_tunnels{direction="outgoing",state="retiring"} 0
re6st_tunnels{direction="incoming",state="connecting"} 1
re6st_tunnels{direction="incoming",state="up"} 0
re6st_tunnels{direction="incoming",state="retiring"} 0
# HELP re6st_tunnel_up 1 if the tunnel is up, 0 while connecting or retiring.
# TYPE re6st_tunnel_up gauge
re6st_tunnel_up{peer="9/16",transport="udp",direction="outgoing",interface="re6st-1"} 1
re6st_tunnel_up{peer="12/16",transport="quic",direction="incoming",interface=""} 0
# HELP re6st_tunnel_age_seconds Seconds since the tunnel was opened.
# TYPE re6st_tunnel_age_seconds gauge
re6st_tunnel_age_seconds{peer="9/16",transport="udp",direction="outgoing",interface="re6st-1"} 185
re6st_tunnel_age_seconds{peer="12/16",transport="quic",direction="incoming",interface=""} 2
# HELP re6st_tunnel_receive_bytes_total Bytes received through the tunnel.
# TYPE re6st_tunnel_receive_bytes_total counter
re6st_tunnel_receive_bytes_total{peer="9/16",transport="udp",direction="outgoing",interface="re6st-1"} 1572864
re6st_tunnel_receive_bytes_total{peer="12/16",transport="quic",direction="incoming",interface=""} 0
# HELP re6st_tunnel_transmit_bytes_total Bytes sent through the tunnel.
# TYPE re6st_tunnel_transmit_bytes_total counter
re6st_tunnel_transmit_bytes_total{peer="9/16",transport="udp",direction="outgoing",interface="re6st-1"} 800
re6st_tunnel_transmit_bytes_total{peer="12/16",transport="quic",direction="incoming",interface=""} 0
# HELP re6st_tunnel_receive_packets_total Packets received through the tunnel.
# TYPE re6st_tunnel_receive_packets_total counter
re6st_tunnel_receive_packets_total{peer="9/16",transport="udp",direction="outgoing",interface="re6st-1"} 1200
re6st_tunnel_receive_packets_total{peer="12/16",transport="quic",direction="incoming",interface=""} 0
# HELP re6st_tunnel_transmit_packets_total Packets sent through the tunnel.
# TYPE re6st_tunnel_transmit_packets_total counter
re6st_tunnel_transmit_packets_total{peer="9/16",transport="udp",direction="outgoing",interface="re6st-1"} 900
re6st_tunnel_transmit_packets_total{peer="12/16",transport="quic",direction="incoming",interface=""} 0
# HELP re6st_tunnel_rtt_seconds Round-trip time measured by the tunnel's transport.
# TYPE re6st_tunnel_rtt_seconds gauge
re6st_tunnel_rtt_seconds{peer="9/16",transport="udp",direction="outgoing",interface="re6st-1"} 0.00125
# HELP re6st_tunnel_routes Destinations routed through the tunnel.
# TYPE re6st_tunnel_routes gauge
re6st_tunnel_routes{peer="9/16",transport="udp",direction="outgoing",interface="re6st-1"} 4
re6st_tunnel_routes{peer="12/16",transport="quic",direction="incoming",interface=""} 0
# HELP re6st_babel_neighbours Babel neighbours (over tunnels and LAN interfaces).
# TYPE re6st_babel_neighbours gauge
re6st_babel_neighbours 1
# HELP re6st_babel_neighbour_cost Babel link cost of the neighbour (65535 = unreachable).
# TYPE re6st_babel_neighbour_cost gauge
re6st_babel_neighbour_cost{interface="re6st-1",address="fe80::9"} 96
# HELP re6st_babel_neighbour_rtt_seconds Smoothed round-trip time of the neighbour, from Babel timestamps.
# TYPE re6st_babel_neighbour_rtt_seconds gauge
re6st_babel_neighbour_rtt_seconds{interface="re6st-1",address="fe80::9"} 0.0015
# HELP re6st_routes Selected Babel routes.
# TYPE re6st_routes gauge
re6st_routes 3
# HELP re6st_peer_cache_peers Peers in the peer cache.
# TYPE re6st_peer_cache_peers gauge
re6st_peer_cache_peers 17
# HELP re6st_announced_addresses Addresses announced to peers, by how they were learned.
# TYPE re6st_announced_addresses gauge
re6st_announced_addresses{source="interface"} 2
# HELP re6st_peer_protocol_messages_total Peer-protocol messages sent, accepted, and dropped (malformed, stale, replayed, forged).
# TYPE re6st_peer_protocol_messages_total counter
re6st_peer_protocol_messages_total{result="sent"} 40
re6st_peer_protocol_messages_total{result="accepted"} 38
re6st_peer_protocol_messages_total{result="dropped"} 1
# HELP re6st_babel_packets_total Babel control packets sent and received.
# TYPE re6st_babel_packets_total counter
re6st_babel_packets_total{direction="transmit"} 500
re6st_babel_packets_total{direction="receive"} 480
# HELP re6st_babel_bytes_total Babel control traffic sent and received, bytes.
# TYPE re6st_babel_bytes_total counter
re6st_babel_bytes_total{direction="transmit"} 64000
re6st_babel_bytes_total{direction="receive"} 60000
"#;

    #[test]
    fn exposition_of_a_sample_status() {
        let text = render(&sample());
        assert_eq!(text, GOLDEN, "got:\n{text}");
    }

    /// Checks the exposition format's rules on `text`: every sample's family
    /// has HELP and TYPE lines before it, names are valid, families are not
    /// split, values are numbers; returns the samples by name and labels.
    fn parse(text: &str) -> HashMap<String, f64> {
        let mut typed: Vec<String> = Vec::new();
        let mut samples = HashMap::new();
        let valid_name = |n: &str| {
            !n.is_empty()
                && n.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
                && !n.starts_with(|c: char| c.is_ascii_digit())
        };
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                assert!(valid_name(name), "{line}");
                assert!(["gauge", "counter"].contains(&kind), "{line}");
                assert!(!typed.iter().any(|t| t == name), "family {name} split");
                typed.push(name.to_owned());
                continue;
            }
            if line.starts_with("# HELP ") {
                continue;
            }
            let (series, value) = line.rsplit_once(' ').unwrap();
            let name = series.split('{').next().unwrap();
            assert!(valid_name(name), "{line}");
            assert_eq!(typed.last().map(String::as_str), Some(name), "{line}");
            assert!(name.starts_with("re6st_"), "{line}");
            if series.contains('{') {
                assert!(series.ends_with('}'), "{line}");
            }
            let value: f64 = value.parse().unwrap_or_else(|_| panic!("{line}"));
            assert!(
                samples.insert(series.to_owned(), value).is_none(),
                "duplicate {line}"
            );
        }
        assert_eq!(typed, FAMILIES, "families and their order");
        samples
    }

    #[test]
    fn exposition_follows_the_format() {
        let mut status = sample();
        status.tunnels[1].peer = "we\"ird\\\n".into();
        let text = render(&status);
        let samples = parse(&text);
        assert!(text.contains(r#"peer="we\"ird\\\n""#), "{text}");
        assert_eq!(samples["re6st_routes"], 3.0);
        let empty = parse(&render(&Status::default()));
        assert_eq!(empty["re6st_babel_neighbours"], 0.0);
        assert_eq!(
            empty[r#"re6st_tunnels{direction="incoming",state="up"}"#],
            0.0
        );
    }

    async fn get(addr: std::net::SocketAddr, path: &str) -> (String, String) {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut resp = String::new();
        s.read_to_string(&mut resp).await.unwrap();
        let (head, body) = resp.split_once("\r\n\r\n").unwrap();
        (head.to_owned(), body.to_owned())
    }

    #[tokio::test]
    async fn scrape_over_a_real_socket() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, mut rx) = mpsc::channel::<ControlCall>(4);
        let server = tokio::spawn(serve(listener, tx));
        let node = tokio::spawn(async move {
            let mut asked = Vec::new();
            while let Some((request, reply)) = rx.recv().await {
                asked.push(request.clone());
                let answer = match asked.len() {
                    1 => Response::Status(Box::new(sample())),
                    _ => Response::Error("busy".into()),
                };
                let _ = reply.send(answer);
                if asked.len() == 2 {
                    // Dropping the receiver stops the server.
                    return asked;
                }
            }
            asked
        });

        let (head, body) = get(addr, "/metrics").await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(
            head.to_ascii_lowercase()
                .contains("content-type: text/plain; version=0.0.4"),
            "{head}"
        );
        assert_eq!(body, GOLDEN);
        let (head, _) = get(addr, "/").await;
        assert!(head.starts_with("HTTP/1.1 404"), "{head}");
        let (head, body) = get(addr, "/metrics").await;
        assert!(head.starts_with("HTTP/1.1 503"), "{head}");
        assert!(body.contains("busy"), "{body}");

        let asked = node.await.unwrap();
        assert_eq!(asked, vec![Request::Status { routes: false }; 2]);
        tokio::time::timeout(Duration::from_secs(10), server)
            .await
            .expect("the server stops once the node's loop is gone")
            .unwrap();
    }
}
