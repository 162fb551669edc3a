//! The options of `re6st node`: command line and configuration file.
//!
//! Every option exists both as a command-line flag ([`NodeArgs`]) and as a
//! key of the TOML configuration file written by `re6st conf` (the flag's
//! long name with `-` replaced by `_`: `--client-count` is `client_count`).
//! The command line wins over the file; [`NodeOptions::resolve`] merges both,
//! applies the defaults and checks everything, so that a mistake is reported
//! as one line naming the option (and the file) before anything starts.
//! Relative paths in the file are relative to the file's directory.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;

use super::{Address, Proto};
use crate::pki::NodePrefix;

/// Default directory of the peer cache and router state.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/re6st";
/// Default directory of the control socket.
pub const DEFAULT_RUN_DIR: &str = "/run/re6st";
/// Default port of the udp and tcp transports (OpenVPN's, as re6stnet).
pub const DEFAULT_PORT: u16 = 1194;
/// Default port of the quic transport (UDP, so not the udp transport's).
pub const DEFAULT_QUIC_PORT: u16 = 1195;

/// Why the options are unusable. The message is one line naming the option.
#[derive(Debug, thiserror::Error)]
pub enum OptionsError {
    /// The configuration file cannot be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The configuration file is not valid TOML or has an unknown key or a
    /// value of the wrong type.
    #[error("{path}: {message}")]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong, with the line.
        message: String,
    },
    /// A value is invalid.
    #[error("{option}: {message}")]
    Invalid {
        /// The option (flag form, e.g. `--pp`).
        option: &'static str,
        /// What is wrong.
        message: String,
    },
    /// A required option is missing.
    #[error("{0} is required (on the command line or in the configuration file)")]
    Missing(&'static str),
}

fn invalid(option: &'static str, message: impl Into<String>) -> OptionsError {
    OptionsError::Invalid {
        option,
        message: message.into(),
    }
}

/// How our announced addresses are found (`--ip`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AnnounceIp {
    /// Announce this address.
    Address(IpAddr),
    /// Learn our public address from peers.
    Any,
    /// Map ports on the UPnP Internet Gateway Device and announce its
    /// external address.
    Upnp,
}

impl FromStr for AnnounceIp {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "any" => Ok(Self::Any),
            "upnp" => Ok(Self::Upnp),
            _ => s
                .parse()
                .map(Self::Address)
                .map_err(|_| format!("{s:?} is not an IP address, `any` or `upnp`")),
        }
    }
}

/// A port and protocol we serve tunnels on (`--pp PORT PROTO`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortProto {
    /// The port.
    pub port: u16,
    /// The transport.
    pub proto: Proto,
}

/// The `re6st node` flags. Every field is optional here: the file may give
/// it instead, and [`NodeOptions::resolve`] applies the defaults.
#[derive(clap::Args, Debug, Default, Clone)]
pub struct NodeArgs {
    /// Configuration file (TOML, written by `re6st conf`).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Registry URL.
    #[arg(long, value_name = "URL")]
    pub registry: Option<String>,
    /// The network CA certificate (PEM).
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// Our certificate (PEM).
    #[arg(long, value_name = "FILE")]
    pub cert: Option<PathBuf>,
    /// Our private key (PEM, PKCS#8).
    #[arg(long, value_name = "FILE")]
    pub key: Option<PathBuf>,
    /// State directory: peer cache, network configuration [default:
    /// /var/lib/re6st].
    #[arg(long, value_name = "DIR")]
    pub state: Option<PathBuf>,
    /// Run directory: control socket [default: /run/re6st].
    #[arg(long, value_name = "DIR")]
    pub run: Option<PathBuf>,
    /// Write logs to this file instead of standard error.
    #[arg(long, value_name = "FILE")]
    pub log: Option<PathBuf>,
    /// Also run Babel on this LAN interface, to route directly to nodes on
    /// the same segment (repeatable).
    #[arg(short = 'i', long = "interface", value_name = "IFACE")]
    pub interface: Vec<String>,
    /// Interface that carries our re6st address [default: lo].
    #[arg(short = 'I', long, value_name = "IFACE")]
    pub main_interface: Option<String>,
    /// Address to announce to peers, `any` (learn it from peers) or `upnp`
    /// (repeatable).
    #[arg(long, value_name = "ADDR")]
    pub ip: Vec<String>,
    /// Port and protocol to serve and announce, by preference (repeatable)
    /// [default: 1194 udp, 1194 tcp, 1195 quic].
    #[arg(long, num_args = 2, value_names = ["PORT", "PROTO"])]
    pub pp: Vec<String>,
    /// Do not use this protocol, neither to serve nor to connect
    /// (repeatable).
    #[arg(long, value_name = "PROTO")]
    pub disable_proto: Vec<String>,
    /// Outgoing tunnels to keep [default: from the network configuration].
    #[arg(long, value_name = "N")]
    pub client_count: Option<usize>,
    /// Incoming tunnels accepted at most [default: from the network
    /// configuration].
    #[arg(long, value_name = "N")]
    pub max_clients: Option<usize>,
    /// Keep a persistent tunnel to this node (its prefix, `INT/LEN`;
    /// repeatable).
    #[arg(long, value_name = "CN")]
    pub neighbour: Vec<String>,
    /// Client-only mode: no server, one tunnel to the first of these that
    /// answers (`IP,PORT,PROTO[;IP,PORT,PROTO...]`).
    #[arg(long, value_name = "REMOTES")]
    pub client: Option<String>,
    /// Route tunnel endpoints through these IPv4 gateways, round-robin
    /// (repeatable).
    #[arg(long, value_name = "GW")]
    pub remote_gateway: Vec<String>,
    /// Export a default route, source-specific to the network.
    #[arg(long)]
    pub gateway: bool,
    /// Command run once the node is up (through `sh -c`).
    #[arg(long, value_name = "CMD")]
    pub up: Option<String>,
    /// Command run and supervised while the node runs (repeatable).
    #[arg(long, value_name = "CMD")]
    pub daemon: Vec<String>,
    /// Babel hello interval on tunnels, seconds [default: from the network
    /// configuration].
    #[arg(long, value_name = "SECS")]
    pub babel_hello: Option<f64>,
    /// Babel hello interval on LAN interfaces (`-i`), seconds [default: 4].
    #[arg(long, value_name = "SECS")]
    pub babel_lan_hello: Option<f64>,
    /// RTT below which a tunnel gets no penalty, milliseconds [default: 10].
    #[arg(long, value_name = "MS")]
    pub babel_rtt_min: Option<u64>,
    /// RTT at which a tunnel gets the full penalty, milliseconds [default:
    /// 120].
    #[arg(long, value_name = "MS")]
    pub babel_rtt_max: Option<u64>,
    /// Largest RTT penalty added to a tunnel's cost [default: 96].
    #[arg(long, value_name = "COST")]
    pub babel_max_rtt_penalty: Option<u16>,
    /// A tunnel whose peer leaves what we send unanswered for this long is
    /// dead, seconds [default: the transport's: 1.5 (probes every 0.25 s
    /// once the peer went quiet); probes every fifth of it when set].
    #[arg(long, value_name = "SECS")]
    pub tunnel_timeout: Option<f64>,
    /// Kernel routing table for routes learned from Babel [default: main].
    #[arg(long, value_name = "TABLE")]
    pub table: Option<u32>,
    /// Serve Prometheus metrics on this local address (loopback only).
    #[arg(long, value_name = "ADDR:PORT")]
    pub metrics: Option<String>,
}

/// The configuration file's keys: the flags' long names with `_`.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct FileOptions {
    registry: Option<String>,
    ca: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    state: Option<PathBuf>,
    run: Option<PathBuf>,
    log: Option<PathBuf>,
    #[serde(default)]
    interface: Vec<String>,
    main_interface: Option<String>,
    #[serde(default)]
    ip: Vec<String>,
    /// `["1194 udp", "1194 tcp"]`.
    #[serde(default)]
    pp: Vec<String>,
    #[serde(default)]
    disable_proto: Vec<String>,
    client_count: Option<usize>,
    max_clients: Option<usize>,
    #[serde(default)]
    neighbour: Vec<String>,
    client: Option<String>,
    #[serde(default)]
    remote_gateway: Vec<String>,
    gateway: Option<bool>,
    up: Option<String>,
    #[serde(default)]
    daemon: Vec<String>,
    babel_hello: Option<f64>,
    babel_lan_hello: Option<f64>,
    babel_rtt_min: Option<u64>,
    babel_rtt_max: Option<u64>,
    babel_max_rtt_penalty: Option<u16>,
    tunnel_timeout: Option<f64>,
    table: Option<u32>,
    metrics: Option<String>,
}

/// Babel parameters set on the command line (unset ones come from the
/// network configuration or the router's defaults).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BabelOptions {
    /// Hello interval on tunnels.
    pub hello: Option<Duration>,
    /// Hello interval on LAN interfaces.
    pub lan_hello: Option<Duration>,
    /// RTT without penalty.
    pub rtt_min: Option<Duration>,
    /// RTT with the full penalty.
    pub rtt_max: Option<Duration>,
    /// The full penalty.
    pub max_rtt_penalty: Option<u16>,
}

/// The node's resolved options: file and flags merged, defaults applied,
/// every value checked.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeOptions {
    /// Registry URL.
    pub registry: String,
    /// CA certificate file.
    pub ca: PathBuf,
    /// Our certificate file.
    pub cert: PathBuf,
    /// Our key file.
    pub key: PathBuf,
    /// State directory.
    pub state: PathBuf,
    /// Run directory.
    pub run: PathBuf,
    /// Log file (standard error if `None`).
    pub log: Option<PathBuf>,
    /// LAN interfaces Babel also runs on.
    pub interfaces: Vec<String>,
    /// Interface carrying our re6st address.
    pub main_interface: String,
    /// How our announced addresses are found; empty: every global address
    /// of this host.
    pub ip: Vec<AnnounceIp>,
    /// Ports and protocols served and announced, by preference (disabled
    /// protocols already removed).
    pub pp: Vec<PortProto>,
    /// Protocols never used.
    pub disabled: Vec<Proto>,
    /// Outgoing tunnel count override.
    pub client_count: Option<usize>,
    /// Incoming tunnel limit override.
    pub max_clients: Option<usize>,
    /// Persistent tunnel peers.
    pub neighbours: Vec<NodePrefix>,
    /// Client-only mode: the remotes to try.
    pub client: Option<Vec<Address>>,
    /// IPv4 gateways for tunnel endpoints.
    pub remote_gateways: Vec<Ipv4Addr>,
    /// Export a source-specific default route.
    pub gateway: bool,
    /// Command run once up.
    pub up: Option<String>,
    /// Supervised commands.
    pub daemons: Vec<String>,
    /// Router overrides.
    pub babel: BabelOptions,
    /// Tunnel liveness timeout override.
    pub tunnel_timeout: Option<Duration>,
    /// Kernel table for learned routes.
    pub table: u32,
    /// Prometheus listen address.
    pub metrics: Option<SocketAddr>,
}

impl NodeOptions {
    /// Merges `args` over the file named by `args.config` (if any), applies
    /// defaults and checks every value.
    pub fn resolve(args: NodeArgs) -> Result<Self, OptionsError> {
        let (file, base) = match &args.config {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| OptionsError::Read {
                    path: path.clone(),
                    source,
                })?;
                let file = parse_file(&text).map_err(|message| OptionsError::File {
                    path: path.clone(),
                    message,
                })?;
                let base = path.parent().map(Path::to_owned).unwrap_or_default();
                (file, base)
            }
            None => (FileOptions::default(), PathBuf::new()),
        };
        Self::merge(args, file, &base)
    }

    fn merge(a: NodeArgs, f: FileOptions, base: &Path) -> Result<Self, OptionsError> {
        let path = |cli: Option<PathBuf>, file: Option<PathBuf>| {
            cli.or_else(|| file.map(|p| base.join(p)))
        };
        let list = |cli: Vec<String>, file: Vec<String>| if cli.is_empty() { file } else { cli };
        let registry = a
            .registry
            .or(f.registry)
            .ok_or(OptionsError::Missing("--registry"))?;
        if !(registry.starts_with("http://") || registry.starts_with("https://")) {
            return Err(invalid(
                "--registry",
                format!("{registry:?} is not an http:// or https:// URL"),
            ));
        }
        let ca = path(a.ca, f.ca).ok_or(OptionsError::Missing("--ca"))?;
        let cert = path(a.cert, f.cert).ok_or(OptionsError::Missing("--cert"))?;
        let key = path(a.key, f.key).ok_or(OptionsError::Missing("--key"))?;
        let state = path(a.state, f.state).unwrap_or_else(|| DEFAULT_STATE_DIR.into());
        let run = path(a.run, f.run).unwrap_or_else(|| DEFAULT_RUN_DIR.into());
        let log = path(a.log, f.log);

        let interfaces = list(a.interface, f.interface);
        let main_interface = a
            .main_interface
            .or(f.main_interface)
            .unwrap_or_else(|| "lo".into());
        for name in interfaces.iter().chain([&main_interface]) {
            check_ifname(name)?;
        }
        let ip = list(a.ip, f.ip)
            .iter()
            .map(|s| s.parse().map_err(|e| invalid("--ip", e)))
            .collect::<Result<Vec<AnnounceIp>, _>>()?;

        let disabled = list(a.disable_proto, f.disable_proto)
            .iter()
            .map(|s| parse_proto("--disable-proto", s))
            .collect::<Result<Vec<_>, _>>()?;
        let pp = parse_pp(&a.pp, &f.pp)?;
        let pp: Vec<_> = pp
            .into_iter()
            .filter(|p| !disabled.contains(&p.proto))
            .collect();
        let client = a
            .client
            .or(f.client)
            .map(|s| parse_client(&s))
            .transpose()?;
        if client.is_none() && pp.is_empty() {
            return Err(invalid(
                "--disable-proto",
                "every protocol is disabled: nothing to serve",
            ));
        }
        if let Some(remotes) = &client {
            if remotes.iter().all(|r| disabled.contains(&r.proto)) {
                return Err(invalid("--client", "every remote uses a disabled protocol"));
            }
        }

        let client_count = a.client_count.or(f.client_count);
        let max_clients = a.max_clients.or(f.max_clients);
        let neighbours = list(a.neighbour, f.neighbour)
            .iter()
            .map(|s| {
                s.parse::<NodePrefix>().map_err(|_| {
                    invalid(
                        "--neighbour",
                        format!("{s:?} is not a node prefix (INT/LEN)"),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let remote_gateways = list(a.remote_gateway, f.remote_gateway)
            .iter()
            .map(|s| {
                s.parse().map_err(|_| {
                    invalid("--remote-gateway", format!("{s:?} is not an IPv4 address"))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let gateway = a.gateway || f.gateway.unwrap_or(false);
        let up = a.up.or(f.up).filter(|s| !s.trim().is_empty());
        let daemons = list(a.daemon, f.daemon);
        if daemons.iter().any(|d| d.trim().is_empty()) {
            return Err(invalid("--daemon", "empty command"));
        }

        let babel = BabelOptions {
            hello: seconds("--babel-hello", a.babel_hello.or(f.babel_hello))?,
            lan_hello: seconds("--babel-lan-hello", a.babel_lan_hello.or(f.babel_lan_hello))?,
            rtt_min: a
                .babel_rtt_min
                .or(f.babel_rtt_min)
                .map(Duration::from_millis),
            rtt_max: a
                .babel_rtt_max
                .or(f.babel_rtt_max)
                .map(Duration::from_millis),
            max_rtt_penalty: a.babel_max_rtt_penalty.or(f.babel_max_rtt_penalty),
        };
        if let (Some(min), Some(max)) = (babel.rtt_min, babel.rtt_max) {
            if min >= max {
                return Err(invalid(
                    "--babel-rtt-max",
                    "must be greater than --babel-rtt-min",
                ));
            }
        }
        let tunnel_timeout = seconds("--tunnel-timeout", a.tunnel_timeout.or(f.tunnel_timeout))?;
        let table = a.table.or(f.table).unwrap_or(crate::kernel::TABLE_MAIN);
        let metrics = a
            .metrics
            .or(f.metrics)
            .map(|s| {
                let addr: SocketAddr = s
                    .parse()
                    .map_err(|_| invalid("--metrics", format!("{s:?} is not ADDR:PORT")))?;
                if !addr.ip().is_loopback() {
                    return Err(invalid("--metrics", "only loopback addresses are allowed"));
                }
                Ok(addr)
            })
            .transpose()?;

        Ok(Self {
            registry,
            ca,
            cert,
            key,
            state,
            run,
            log,
            interfaces,
            main_interface,
            ip,
            pp,
            disabled,
            client_count,
            max_clients,
            neighbours,
            client,
            remote_gateways,
            gateway,
            up,
            daemons,
            babel,
            tunnel_timeout,
            table,
            metrics,
        })
    }
}

/// Parses the file, keeping only the first line of toml's message (it
/// names the line and the key).
fn parse_file(text: &str) -> Result<FileOptions, String> {
    toml::from_str(text).map_err(|e: toml::de::Error| {
        let message = e.message().trim().to_owned();
        match e.span() {
            Some(span) => {
                let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
                format!("line {line}: {message}")
            }
            None => message,
        }
    })
}

fn check_ifname(name: &str) -> Result<(), OptionsError> {
    if name.is_empty() || name.len() > 15 || name.contains(['/', ' ', '\0']) {
        return Err(invalid(
            "--interface",
            format!("{name:?} is not a valid interface name"),
        ));
    }
    Ok(())
}

fn parse_proto(option: &'static str, s: &str) -> Result<Proto, OptionsError> {
    s.trim().parse().map_err(|_| {
        invalid(
            option,
            format!("unknown protocol {s:?} (expected udp, tcp or quic)"),
        )
    })
}

/// `--pp` on the command line comes as a flat list `PORT PROTO PORT PROTO`;
/// in the file each entry is `"PORT PROTO"`.
fn parse_pp(cli: &[String], file: &[String]) -> Result<Vec<PortProto>, OptionsError> {
    let pairs: Vec<(&str, &str)> = if !cli.is_empty() {
        cli.chunks(2)
            .map(|c| match c {
                [port, proto] => Ok((port.as_str(), proto.as_str())),
                _ => Err(invalid("--pp", "expected PORT PROTO")),
            })
            .collect::<Result<_, _>>()?
    } else if !file.is_empty() {
        file.iter()
            .map(|e| {
                let mut words = e.split_whitespace();
                match (words.next(), words.next(), words.next()) {
                    (Some(port), Some(proto), None) => Ok((port, proto)),
                    _ => Err(invalid("--pp", format!("{e:?} is not \"PORT PROTO\""))),
                }
            })
            .collect::<Result<_, _>>()?
    } else {
        return Ok(vec![
            PortProto {
                port: DEFAULT_PORT,
                proto: Proto::Udp,
            },
            PortProto {
                port: DEFAULT_PORT,
                proto: Proto::Tcp,
            },
            PortProto {
                port: DEFAULT_QUIC_PORT,
                proto: Proto::Quic,
            },
        ]);
    };
    let mut out: Vec<PortProto> = Vec::new();
    for (port, proto) in pairs {
        let port: u16 = port
            .parse()
            .ok()
            .filter(|&p| p != 0)
            .ok_or_else(|| invalid("--pp", format!("{port:?} is not a port number")))?;
        let proto = parse_proto("--pp", proto)?;
        if out.iter().any(|p| p.proto == proto) {
            return Err(invalid("--pp", format!("{proto} is given twice")));
        }
        let udp_based = |p: Proto| matches!(p, Proto::Udp | Proto::Quic);
        if out
            .iter()
            .any(|p| p.port == port && udp_based(p.proto) && udp_based(proto))
        {
            return Err(invalid(
                "--pp",
                format!("udp and quic cannot share port {port}"),
            ));
        }
        out.push(PortProto { port, proto });
    }
    Ok(out)
}

fn parse_client(s: &str) -> Result<Vec<Address>, OptionsError> {
    let remotes = s
        .split(';')
        .filter(|r| !r.trim().is_empty())
        .map(|r| {
            r.trim()
                .parse::<Address>()
                .map_err(|e| invalid("--client", format!("{r:?}: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if remotes.is_empty() {
        return Err(invalid("--client", "no remote given"));
    }
    Ok(remotes)
}

fn seconds(option: &'static str, value: Option<f64>) -> Result<Option<Duration>, OptionsError> {
    value
        .map(|s| {
            Duration::try_from_secs_f64(s)
                .ok()
                .filter(|d| !d.is_zero() && *d <= Duration::from_secs(86_400))
                .ok_or_else(|| {
                    invalid(
                        option,
                        format!("{s} is not a number of seconds in (0, 86400]"),
                    )
                })
        })
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> NodeArgs {
        NodeArgs {
            registry: Some("http://192.0.2.1:9201".into()),
            ca: Some("ca.crt".into()),
            cert: Some("cert.crt".into()),
            key: Some("cert.key".into()),
            ..NodeArgs::default()
        }
    }

    fn resolve(a: NodeArgs, file: &str) -> Result<NodeOptions, OptionsError> {
        let f = parse_file(file).map_err(|message| OptionsError::File {
            path: "re6st.toml".into(),
            message,
        })?;
        NodeOptions::merge(a, f, Path::new("/etc/re6st"))
    }

    #[test]
    fn defaults() {
        let o = resolve(args(), "").unwrap();
        assert_eq!(o.main_interface, "lo");
        assert_eq!(o.state, Path::new(DEFAULT_STATE_DIR));
        assert_eq!(o.run, Path::new(DEFAULT_RUN_DIR));
        let pp: Vec<_> = o.pp.iter().map(|p| (p.port, p.proto)).collect();
        assert_eq!(
            pp,
            [(1194, Proto::Udp), (1194, Proto::Tcp), (1195, Proto::Quic)]
        );
        assert_eq!(o.table, crate::kernel::TABLE_MAIN);
        assert!(o.ip.is_empty() && o.client.is_none() && !o.gateway);
    }

    #[test]
    fn the_file_fills_in_and_the_command_line_wins() {
        let file = r#"
            registry = "http://registry.example:9201"
            ca = "ca.crt"
            cert = "/abs/cert.crt"
            key = "cert.key"
            client_count = 4
            pp = ["1300 tcp", "1301 udp"]
            neighbour = ["5/16"]
            ip = ["192.0.2.7", "any"]
        "#;
        let a = NodeArgs {
            client_count: Some(6),
            ..NodeArgs::default()
        };
        let o = resolve(a, file).unwrap();
        assert_eq!(o.registry, "http://registry.example:9201");
        assert_eq!(o.ca, Path::new("/etc/re6st/ca.crt"));
        assert_eq!(o.cert, Path::new("/abs/cert.crt"));
        assert_eq!(o.client_count, Some(6));
        assert_eq!(o.pp.len(), 2);
        assert_eq!(o.pp[0].proto, Proto::Tcp);
        assert_eq!(o.neighbours, ["5/16".parse::<NodePrefix>().unwrap()]);
        assert_eq!(
            o.ip,
            [
                AnnounceIp::Address("192.0.2.7".parse().unwrap()),
                AnnounceIp::Any
            ]
        );
    }

    #[test]
    fn mistakes_are_one_line_naming_the_option() {
        let cases: &[(NodeArgs, &str, &str)] = &[
            (NodeArgs::default(), "", "--registry is required"),
            (
                args(),
                "clinet_count = 3",
                "re6st.toml: line 1: unknown field `clinet_count`",
            ),
            (args(), "client_count = \"x\"", "re6st.toml: line 1:"),
            (
                NodeArgs {
                    pp: vec!["1194".into(), "sctp".into()],
                    ..args()
                },
                "",
                "--pp: unknown protocol \"sctp\"",
            ),
            (
                NodeArgs {
                    pp: vec!["0".into(), "udp".into()],
                    ..args()
                },
                "",
                "--pp: \"0\" is not a port number",
            ),
            (
                NodeArgs {
                    pp: vec!["1194".into(), "udp".into(), "1194".into(), "quic".into()],
                    ..args()
                },
                "",
                "--pp: udp and quic cannot share port 1194",
            ),
            (
                NodeArgs {
                    disable_proto: vec!["udp".into(), "tcp".into(), "quic".into()],
                    ..args()
                },
                "",
                "--disable-proto: every protocol is disabled",
            ),
            (
                NodeArgs {
                    client: Some("192.0.2.1,1194".into()),
                    ..args()
                },
                "",
                "--client: \"192.0.2.1,1194\": malformed address",
            ),
            (
                NodeArgs {
                    neighbour: vec!["5".into()],
                    ..args()
                },
                "",
                "--neighbour: \"5\" is not a node prefix",
            ),
            (
                NodeArgs {
                    ip: vec!["nowhere".into()],
                    ..args()
                },
                "",
                "--ip: \"nowhere\" is not an IP address",
            ),
            (
                NodeArgs {
                    metrics: Some("0.0.0.0:9100".into()),
                    ..args()
                },
                "",
                "--metrics: only loopback",
            ),
            (
                NodeArgs {
                    tunnel_timeout: Some(-1.0),
                    ..args()
                },
                "",
                "--tunnel-timeout: -1 is not a number of seconds",
            ),
            (
                NodeArgs {
                    registry: Some("registry.example".into()),
                    ..args()
                },
                "",
                "--registry: \"registry.example\" is not an http",
            ),
            (
                NodeArgs {
                    main_interface: Some("a-very-long-interface-name".into()),
                    ..args()
                },
                "",
                "--interface: \"a-very-long-interface-name\" is not a valid",
            ),
        ];
        for (a, file, want) in cases {
            let err = resolve(a.clone(), file).unwrap_err().to_string();
            assert!(err.starts_with(want), "{err:?} should start with {want:?}");
            assert!(!err.contains('\n'), "{err:?} is not one line");
        }
    }

    #[test]
    fn client_mode_and_disabled_protocols() {
        let a = NodeArgs {
            client: Some("192.0.2.1,1194,udp; 2001:db8::1,443,tcp".into()),
            disable_proto: vec!["quic".into()],
            ..args()
        };
        let o = resolve(a, "").unwrap();
        assert_eq!(o.client.as_ref().unwrap().len(), 2);
        assert!(o.pp.iter().all(|p| p.proto != Proto::Quic));
        assert_eq!(o.disabled, [Proto::Quic]);
    }
}
