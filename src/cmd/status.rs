//! `re6st status`: asks the running node for its state over the control
//! socket and prints it, as a human-readable report or as the JSON the
//! node answered.
//!
//! The report is rendered by [`render`], a pure function of the node's
//! [`Status`] and the current time, so its layout is tested on a fixed
//! sample.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context as _};
use re6st::node::control::{self, ControlError, NatStatus, Request, Response, Status};
use re6st::node::options::DEFAULT_RUN_DIR;

/// Options of `re6st status`.
#[derive(clap::Args, Debug)]
pub(crate) struct StatusArgs {
    /// The node's run directory (where its control socket is) [default:
    /// the `run` key of --config, else /run/re6st].
    #[arg(long, value_name = "DIR")]
    run: Option<PathBuf>,
    /// The node's configuration file, to find its run directory.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Print the node's answer as JSON.
    #[arg(long)]
    json: bool,
    /// Also list every selected route.
    #[arg(long)]
    routes: bool,
    /// How long to wait for the node, seconds.
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    timeout: u64,
}

/// Runs `re6st status`.
pub(crate) fn run(args: StatusArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let status = runtime.block_on(fetch(&args))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print!("{}", render(&status, unix_now()));
    }
    Ok(())
}

/// `--run`, else the `run` key of `--config` (relative to the file's
/// directory, as the node reads it), else the default.
fn run_dir(args: &StatusArgs) -> anyhow::Result<PathBuf> {
    if let Some(run) = &args.run {
        return Ok(run.clone());
    }
    let Some(config) = &args.config else {
        return Ok(DEFAULT_RUN_DIR.into());
    };
    let text = std::fs::read_to_string(config)
        .with_context(|| format!("cannot read {}", config.display()))?;
    let table: toml::Table = text
        .parse()
        .with_context(|| format!("{} is not valid TOML", config.display()))?;
    match table.get("run") {
        None => Ok(DEFAULT_RUN_DIR.into()),
        Some(toml::Value::String(run)) => Ok(config.parent().unwrap_or(Path::new("")).join(run)),
        Some(_) => bail!("{}: `run` is not a string", config.display()),
    }
}

async fn fetch(args: &StatusArgs) -> anyhow::Result<Status> {
    let run = run_dir(args)?;
    let path = control::socket_path(&run);
    let request = Request::Status {
        routes: args.routes,
    };
    let answer = control::call(&path, &request, Duration::from_secs(args.timeout)).await;
    match answer {
        Ok(Response::Status(status)) => Ok(*status),
        Ok(Response::Error(e)) => bail!("the node refused the request: {e}"),
        Ok(other) => bail!("the node gave an unexpected answer: {other:?}"),
        Err(ControlError::Connect { path, source }) => bail!(
            "no node answers on {} ({source}); is `re6st node` running with --run {}?",
            path.display(),
            run.display()
        ),
        Err(e) => Err(e.into()),
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The human-readable report of `status`, as of `now` (UNIX seconds; event
/// ages are relative to it).
pub(crate) fn render(status: &Status, now: u64) -> String {
    let mut out = String::new();
    let id = &status.identity;
    let address = id
        .address
        .map_or_else(|| "none".to_owned(), |a| a.to_string());
    let _ = writeln!(out, "node {} ({}), address {address}", id.prefix, id.subnet);
    let _ = writeln!(
        out,
        "network {}, configuration version {}",
        id.network, id.config_version
    );
    let _ = writeln!(
        out,
        "software {}, up {}, certificate expires {}",
        id.software,
        duration(id.uptime_secs),
        re6st::registry::mail::asctime(id.cert_not_after)
    );

    out.push('\n');
    let outgoing = status
        .tunnels
        .iter()
        .filter(|t| t.direction == "outgoing")
        .count();
    if status.tunnels.is_empty() {
        out.push_str("tunnels: none\n");
    } else {
        let _ = writeln!(
            out,
            "tunnels: {} ({outgoing} outgoing, {} incoming)",
            status.tunnels.len(),
            status.tunnels.len() - outgoing
        );
        let mut table = Table::new(&[
            "PEER",
            "TRANSPORT",
            "DIRECTION",
            "STATE",
            "INTERFACE",
            "LOCAL",
            "REMOTE",
            ">AGE",
            ">RX",
            ">TX",
            ">RTT",
            ">ROUTES",
        ]);
        for t in &status.tunnels {
            let peer = if t.persistent {
                format!("{}*", t.peer)
            } else {
                t.peer.clone()
            };
            table.row(vec![
                peer,
                t.transport.clone(),
                t.direction.clone(),
                t.state.clone(),
                or_dash(t.interface.as_ref()),
                or_dash(t.local.as_ref()),
                or_dash(t.remote.as_ref()),
                duration(t.age_secs),
                bytes(t.rx_bytes),
                bytes(t.tx_bytes),
                rtt(t.rtt_ms),
                t.routes.to_string(),
            ]);
        }
        table.write(&mut out);
        if status.tunnels.iter().any(|t| t.persistent) {
            out.push_str("  * persistent (--neighbour)\n");
        }
    }

    out.push('\n');
    if status.neighbours.is_empty() {
        out.push_str("neighbours: none\n");
    } else {
        let _ = writeln!(out, "neighbours: {}", status.neighbours.len());
        let mut table = Table::new(&[
            "INTERFACE",
            "ADDRESS",
            ">COST",
            ">RXCOST",
            ">TXCOST",
            ">RTT",
        ]);
        for n in &status.neighbours {
            table.row(vec![
                n.interface.clone(),
                n.address.to_string(),
                cost(n.cost),
                cost(n.rxcost),
                cost(n.txcost),
                rtt(n.rtt_ms),
            ]);
        }
        table.write(&mut out);
    }

    out.push('\n');
    let _ = writeln!(out, "routes: {} selected", status.route_count);
    if let Some(routes) = &status.routes {
        let mut table = Table::new(&["PREFIX", "FROM", "VIA", "INTERFACE", ">METRIC"]);
        for r in routes {
            table.row(vec![
                r.prefix.clone(),
                or_dash(r.src_prefix.as_ref()),
                r.next_hop.to_string(),
                r.interface.clone(),
                cost(r.metric),
            ]);
        }
        if !routes.is_empty() {
            table.write(&mut out);
        }
    }
    let _ = writeln!(out, "peer cache: {} peers", status.peer_cache);
    if status.addresses.is_empty() {
        out.push_str("announced addresses: none\n");
    } else {
        out.push_str("announced addresses:\n");
        let mut table = Table::new(&["ADDRESS", "LEARNED"]);
        for a in &status.addresses {
            table.row(vec![a.address.clone(), a.source.clone()]);
        }
        table.write_bare(&mut out);
    }
    nat(&status.nat, &mut out);
    let p = &status.peer_protocol;
    let _ = writeln!(
        out,
        "peer protocol: {} sent, {} accepted, {} dropped",
        p.sent, p.accepted, p.dropped
    );
    let b = &status.babel;
    let _ = writeln!(
        out,
        "babel: {} packets sent ({}), {} received ({})",
        b.tx_packets,
        bytes(b.tx_bytes),
        b.rx_packets,
        bytes(b.rx_bytes)
    );

    out.push('\n');
    if status.events.is_empty() {
        out.push_str("recent events: none\n");
    } else {
        out.push_str("recent events:\n");
        let mut table = Table::new(&[">AGE", "EVENT"]);
        for e in &status.events {
            table.row(vec![
                format!("{} ago", duration(now.saturating_sub(e.time))),
                e.text.clone(),
            ]);
        }
        table.write_bare(&mut out);
    }
    out
}

/// A text table: columns as wide as their widest cell, two spaces apart,
/// indented by two. A header starting with `>` is right-aligned.
struct Table {
    headers: Vec<(String, bool)>,
    rows: Vec<Vec<String>>,
}

impl Table {
    fn new(headers: &[&str]) -> Self {
        let headers = headers
            .iter()
            .map(|h| match h.strip_prefix('>') {
                Some(h) => (h.to_owned(), true),
                None => ((*h).to_owned(), false),
            })
            .collect();
        Self {
            headers,
            rows: Vec::new(),
        }
    }

    fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// With the header line.
    fn write(&self, out: &mut String) {
        let header: Vec<String> = self.headers.iter().map(|(h, _)| h.clone()).collect();
        self.lines(std::iter::once(&header).chain(&self.rows), out);
    }

    /// Without the header line.
    fn write_bare(&self, out: &mut String) {
        self.lines(self.rows.iter(), out);
    }

    fn lines<'a>(&self, rows: impl Iterator<Item = &'a Vec<String>> + Clone, out: &mut String) {
        let mut widths = vec![0; self.headers.len()];
        for row in rows.clone() {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        for row in rows {
            let mut line = String::new();
            for ((cell, (_, right)), w) in row.iter().zip(&self.headers).zip(&widths) {
                if *right {
                    let _ = write!(line, "  {cell:>w$}");
                } else {
                    let _ = write!(line, "  {cell:<w$}");
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
    }
}

/// The NAT section: reachability, what peers see, UPnP, hole punching.
fn nat(n: &NatStatus, out: &mut String) {
    let reach = if n.reachability.is_empty() {
        "unknown"
    } else {
        &n.reachability
    };
    let cap = if reach == "unreachable" {
        " (at most 2 outgoing tunnels)"
    } else {
        ""
    };
    let _ = writeln!(out, "reachability: {reach}{cap}");
    if n.learning {
        let _ = writeln!(
            out,
            "  learned from peers: {} ({} observations), udp endpoint {}, nat {}",
            or_dash(n.public_ip.as_ref()),
            n.observations,
            or_dash(n.udp_endpoint.as_ref()),
            if n.nat_kind.is_empty() {
                "unknown"
            } else {
                &n.nat_kind
            }
        );
    } else {
        out.push_str("  learned from peers: off\n");
    }
    match &n.upnp {
        None => out.push_str("  upnp: off\n"),
        Some(u) => {
            let _ = writeln!(
                out,
                "  upnp: {}, gateway {}, external address {}",
                u.state,
                or_dash(u.gateway.as_ref()),
                or_dash(u.external_ip.as_ref())
            );
            if !u.mappings.is_empty() {
                let mut table = Table::new(&["PROTO", "LOCAL", "EXTERNAL", "STATE"]);
                for m in &u.mappings {
                    table.row(vec![
                        m.proto.clone(),
                        m.local_port.to_string(),
                        or_dash(m.external_port.as_ref()),
                        m.state.clone(),
                    ]);
                }
                let mut lines = String::new();
                table.write(&mut lines);
                for line in lines.lines() {
                    let _ = writeln!(out, "  {line}");
                }
            }
        }
    }
    let _ = writeln!(
        out,
        "  hole punching: {} under way, {} succeeded, {} failed",
        n.punching, n.punched, n.punch_failed
    );
}

fn or_dash(v: Option<&impl std::fmt::Display>) -> String {
    v.map_or_else(|| "-".to_owned(), ToString::to_string)
}

/// `45s`, `3m05s`, `2h03m`, `4d03h`.
fn duration(secs: u64) -> String {
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m{:02}s", secs / 60, secs % 60),
        3600..86400 => format!("{}h{:02}m", secs / 3600, secs % 3600 / 60),
        _ => format!("{}d{:02}h", secs / 86400, secs % 86400 / 3600),
    }
}

/// `512 B`, `1.5 KiB`, `3.2 MiB`, ...
fn bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

fn rtt(ms: Option<f64>) -> String {
    ms.map_or_else(|| "-".to_owned(), |ms| format!("{ms:.1} ms"))
}

/// A Babel cost or metric; 65535 is infinity.
fn cost(c: u16) -> String {
    if c == u16::MAX {
        "inf".to_owned()
    } else {
        c.to_string()
    }
}

#[cfg(test)]
mod tests {
    use re6st::node::control::{
        AnnouncedAddress, BabelCounters, EventRecord, Identity, NeighbourStatus,
        PeerProtocolCounters, RouteStatus, TunnelStatus,
    };
    use re6st::node::nat::upnp::{MappingStatus, UpnpStatus};

    use super::*;

    const NOW: u64 = 1_795_000_000;

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
                    local: Some("10.42.0.5:40001".parse().unwrap()),
                    remote: Some("10.42.0.9:1194".parse().unwrap()),
                    age_secs: 185,
                    rx_packets: 1200,
                    rx_bytes: 1_572_864,
                    tx_packets: 900,
                    tx_bytes: 800,
                    rtt_ms: Some(1.25),
                    routes: 4,
                    persistent: true,
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
            neighbours: vec![
                NeighbourStatus {
                    interface: "re6st-1".into(),
                    address: "fe80::9".parse().unwrap(),
                    cost: 96,
                    rxcost: 96,
                    txcost: 96,
                    rtt_ms: Some(1.3),
                },
                NeighbourStatus {
                    interface: "eth1".into(),
                    address: "fe80::1:2".parse().unwrap(),
                    cost: u16::MAX,
                    rxcost: u16::MAX,
                    txcost: 256,
                    rtt_ms: None,
                },
            ],
            route_count: 2,
            routes: Some(vec![
                RouteStatus {
                    prefix: "2001:db8:42:9::/64".into(),
                    src_prefix: None,
                    next_hop: "fe80::9".parse().unwrap(),
                    interface: "re6st-1".into(),
                    metric: 96,
                },
                RouteStatus {
                    prefix: "::/0".into(),
                    src_prefix: Some("2001:db8:42::/48".into()),
                    next_hop: "fe80::9".parse().unwrap(),
                    interface: "re6st-1".into(),
                    metric: 352,
                },
            ]),
            peer_cache: 17,
            addresses: vec![
                AnnouncedAddress {
                    address: "10.42.0.5,1194,udp".into(),
                    source: "interface".into(),
                },
                AnnouncedAddress {
                    address: "2001:db8::5,1195,quic".into(),
                    source: "configured".into(),
                },
                AnnouncedAddress {
                    address: "198.51.100.9,40001,udp".into(),
                    source: "upnp".into(),
                },
                AnnouncedAddress {
                    address: "198.51.100.9,1194,udp".into(),
                    source: "peers".into(),
                },
            ],
            nat: NatStatus {
                reachability: "mapped".into(),
                upnp: Some(UpnpStatus {
                    state: "ready".into(),
                    gateway: Some("10.42.0.1:5000".parse().unwrap()),
                    external_ip: Some("198.51.100.9".parse().unwrap()),
                    mappings: vec![
                        MappingStatus {
                            proto: "udp".into(),
                            local_port: 1194,
                            external_port: Some(40001),
                            state: "mapped".into(),
                        },
                        MappingStatus {
                            proto: "quic".into(),
                            local_port: 1195,
                            external_port: None,
                            state: "failed: conflict".into(),
                        },
                    ],
                }),
                learning: true,
                public_ip: Some("198.51.100.9".parse().unwrap()),
                udp_endpoint: Some("198.51.100.9:1194".parse().unwrap()),
                nat_kind: "port-preserving".into(),
                observations: 3,
                punching: 1,
                punched: 2,
                punch_failed: 1,
            },
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
            events: vec![
                EventRecord {
                    time: NOW - 185,
                    text: "tunnel to 9/16 up on re6st-1 (udp)".into(),
                },
                EventRecord {
                    time: NOW - 2,
                    text: "incoming tunnel from 12/16 (quic)".into(),
                },
            ],
        }
    }

    const GOLDEN: &str = "\
node 5/16 (2001:db8:42:5::/64), address 2001:db8:42:5::1
network 2001:db8:42::/48, configuration version 7
software 0.1.0, up 1h02m, certificate expires Fri Nov 12 06:13:20 2027

tunnels: 2 (1 outgoing, 1 incoming)
  PEER   TRANSPORT  DIRECTION  STATE       INTERFACE  LOCAL            REMOTE            AGE       RX     TX     RTT  ROUTES
  9/16*  udp        outgoing   up          re6st-1    10.42.0.5:40001  10.42.0.9:1194  3m05s  1.5 MiB  800 B  1.2 ms       4
  12/16  quic       incoming   connecting  -          -                -                  2s      0 B    0 B       -       0
  * persistent (--neighbour)

neighbours: 2
  INTERFACE  ADDRESS    COST  RXCOST  TXCOST     RTT
  re6st-1    fe80::9      96      96      96  1.3 ms
  eth1       fe80::1:2   inf     inf     256       -

routes: 2 selected
  PREFIX              FROM              VIA      INTERFACE  METRIC
  2001:db8:42:9::/64  -                 fe80::9  re6st-1        96
  ::/0                2001:db8:42::/48  fe80::9  re6st-1       352
peer cache: 17 peers
announced addresses:
  10.42.0.5,1194,udp      interface
  2001:db8::5,1195,quic   configured
  198.51.100.9,40001,udp  upnp
  198.51.100.9,1194,udp   peers
reachability: mapped
  learned from peers: 198.51.100.9 (3 observations), udp endpoint 198.51.100.9:1194, nat port-preserving
  upnp: ready, gateway 10.42.0.1:5000, external address 198.51.100.9
    PROTO  LOCAL  EXTERNAL  STATE
    udp    1194   40001     mapped
    quic   1195   -         failed: conflict
  hole punching: 1 under way, 2 succeeded, 1 failed
peer protocol: 40 sent, 38 accepted, 1 dropped
babel: 500 packets sent (62.5 KiB), 480 received (58.6 KiB)

recent events:
  3m05s ago  tunnel to 9/16 up on re6st-1 (udp)
     2s ago  incoming tunnel from 12/16 (quic)
";

    #[test]
    fn report_of_a_sample_status() {
        let text = render(&sample(), NOW);
        assert_eq!(text, GOLDEN, "got:\n{text}");
    }

    #[test]
    fn report_of_a_lonely_node() {
        let status = Status {
            identity: Identity {
                prefix: "0/16".into(),
                subnet: "2001:db8:42::/64".into(),
                network: "2001:db8:42::/48".into(),
                software: "0.1.0".into(),
                ..Default::default()
            },
            ..Default::default()
        };
        let text = render(&status, NOW);
        let expected = "\
node 0/16 (2001:db8:42::/64), address none
network 2001:db8:42::/48, configuration version 0
software 0.1.0, up 0s, certificate expires Thu Jan  1 00:00:00 1970

tunnels: none

neighbours: none

routes: 0 selected
peer cache: 0 peers
announced addresses: none
reachability: unknown
  learned from peers: off
  upnp: off
  hole punching: 0 under way, 0 succeeded, 0 failed
peer protocol: 0 sent, 0 accepted, 0 dropped
babel: 0 packets sent (0 B), 0 received (0 B)

recent events: none
";
        assert_eq!(text, expected, "got:\n{text}");
    }

    #[test]
    fn units() {
        let cases = [
            (0, "0s"),
            (59, "59s"),
            (60, "1m00s"),
            (3599, "59m59s"),
            (3600, "1h00m"),
            (86_399, "23h59m"),
            (86_400, "1d00h"),
            (200_000, "2d07h"),
        ];
        for (secs, text) in cases {
            assert_eq!(duration(secs), text, "{secs}");
        }
        let cases = [
            (0, "0 B"),
            (1023, "1023 B"),
            (1024, "1.0 KiB"),
            (1536, "1.5 KiB"),
            (5 << 30, "5.0 GiB"),
            (u64::MAX, "16.0 EiB"),
        ];
        for (n, text) in cases {
            assert_eq!(bytes(n), text, "{n}");
        }
        assert_eq!(cost(65535), "inf");
        assert_eq!(rtt(Some(0.04)), "0.0 ms");
    }
}
