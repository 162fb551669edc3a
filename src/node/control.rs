//! The node's control API: one JSON request and one JSON answer per
//! connection on a Unix socket in the run directory (mode 0600).
//!
//! `re6st status`, the Prometheus exporter and the registry running beside
//! the node are its clients ([`call`]); the daemon answers through
//! [`serve`], which hands every request to the node's main loop as a
//! [`ControlCall`] and writes back what the loop replies. Each message is a
//! single line of JSON, so the socket can also be used by hand:
//! `echo '{"status":{"routes":false}}' | socat - UNIX:/run/re6st/control.sock`.

use std::io;
use std::net::{Ipv6Addr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};

/// The socket's file name inside the run directory.
pub const SOCKET_NAME: &str = "control.sock";

/// Longest request or answer line accepted (a full route table of a large
/// network fits).
pub const MAX_LINE: usize = 64 << 20;

/// How long a client waits for an answer by default.
pub const TIMEOUT: Duration = Duration::from_secs(30);

/// The socket path for a run directory.
pub fn socket_path(run_dir: &Path) -> PathBuf {
    run_dir.join(SOCKET_NAME)
}

/// A request to the node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// The node's state; the route table too if `routes`.
    Status {
        /// Include every route.
        routes: bool,
    },
    /// A random live peer and its addresses, for the registry's bootstrap
    /// endpoint.
    BootstrapPeer,
    /// Walk the mesh over the peer protocol and return every node's tunnel
    /// neighbours (the registry's admin `topology` view).
    Topology,
    /// Ask every reachable node for its software and configuration versions
    /// (the registry's admin `versions` view).
    Versions,
}

/// The node's answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Response {
    /// Answer to [`Request::Status`].
    Status(Box<Status>),
    /// Answer to [`Request::BootstrapPeer`]; `None` when no peer is known.
    BootstrapPeer(Option<BootstrapPeer>),
    /// Answer to [`Request::Topology`].
    Topology(Vec<TopologyNode>),
    /// Answer to [`Request::Versions`].
    Versions(Vec<NodeVersion>),
    /// The request could not be served.
    Error(String),
}

/// Everything `re6st status` shows.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// Who we are.
    pub identity: Identity,
    /// Our tunnels (connecting, up or retiring).
    pub tunnels: Vec<TunnelStatus>,
    /// Babel neighbours (over tunnels and LAN interfaces).
    pub neighbours: Vec<NeighbourStatus>,
    /// Number of selected routes.
    pub route_count: usize,
    /// The selected routes, when asked for.
    pub routes: Option<Vec<RouteStatus>>,
    /// Peers in the peer cache.
    pub peer_cache: usize,
    /// Addresses we announce to peers, and how each was learned.
    pub addresses: Vec<AnnouncedAddress>,
    /// Reachability behind NAT: UPnP, learned address, hole punching.
    #[serde(default)]
    pub nat: NatStatus,
    /// Peer-protocol counters.
    pub peer_protocol: PeerProtocolCounters,
    /// Babel control traffic.
    pub babel: BabelCounters,
    /// Recent events, oldest first.
    pub events: Vec<EventRecord>,
}

/// The node's identity and versions.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// Our prefix in CN form (`"5/16"`).
    pub prefix: String,
    /// Our prefix as an IPv6 network (`"2001:db8:42:5::/64"`).
    pub subnet: String,
    /// Our re6st address (`<subnet>::1`).
    pub address: Option<Ipv6Addr>,
    /// The whole network's prefix.
    pub network: String,
    /// Version of the network configuration in use.
    pub config_version: u64,
    /// Software version (`CARGO_PKG_VERSION`).
    pub software: String,
    /// Seconds since the node started.
    pub uptime_secs: u64,
    /// When our certificate expires (UNIX seconds).
    pub cert_not_after: u64,
}

/// One tunnel.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TunnelStatus {
    /// The peer's prefix in CN form.
    pub peer: String,
    /// `udp`, `tcp` or `quic`.
    pub transport: String,
    /// `outgoing` or `incoming`.
    pub direction: String,
    /// `connecting`, `up` or `retiring`.
    pub state: String,
    /// Its TUN interface, once up.
    pub interface: Option<String>,
    /// Our transport address.
    pub local: Option<SocketAddr>,
    /// The peer's transport address.
    pub remote: Option<SocketAddr>,
    /// Seconds since it was opened.
    pub age_secs: u64,
    /// Packets received.
    pub rx_packets: u64,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Packets sent.
    pub tx_packets: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
    /// Round-trip time measured by the transport, milliseconds.
    pub rtt_ms: Option<f64>,
    /// Destinations routed through it.
    pub routes: u32,
    /// Whether it is a persistent `--neighbour` tunnel.
    pub persistent: bool,
}

/// One Babel neighbour.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NeighbourStatus {
    /// Interface name.
    pub interface: String,
    /// Link-local address.
    pub address: Ipv6Addr,
    /// Link cost as Babel computes it (65535 = unreachable).
    pub cost: u16,
    /// Receive cost (from hello history).
    pub rxcost: u16,
    /// Transmit cost (from the neighbour's IHU).
    pub txcost: u16,
    /// Smoothed RTT, milliseconds.
    pub rtt_ms: Option<f64>,
}

/// One selected route.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteStatus {
    /// Destination prefix.
    pub prefix: String,
    /// Source prefix of a source-specific route.
    pub src_prefix: Option<String>,
    /// Next hop (link-local).
    pub next_hop: Ipv6Addr,
    /// Outgoing interface.
    pub interface: String,
    /// Babel metric.
    pub metric: u16,
}

/// An address we announce.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnnouncedAddress {
    /// `IP,PORT,PROTO`.
    pub address: String,
    /// How it was learned: `configured`, `interface`, `upnp`, `peers`.
    pub source: String,
}

/// What the node knows of its NAT (issue 6).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NatStatus {
    /// Whether others can open tunnels to us: `public`, `mapped` (UPnP),
    /// `unreachable` (at most 2 outgoing tunnels) or `unknown`.
    pub reachability: String,
    /// The UPnP mapper's state, when UPnP is enabled.
    pub upnp: Option<crate::node::nat::upnp::UpnpStatus>,
    /// Whether our public address is learned from peers.
    pub learning: bool,
    /// The public IP peers agree on.
    pub public_ip: Option<std::net::IpAddr>,
    /// Our public UDP endpoint as peers see it (announced when punching).
    pub udp_endpoint: Option<SocketAddr>,
    /// What the observations say about the NAT's UDP mappings:
    /// `unknown`, `port-preserving`, `endpoint-independent`, `symmetric`.
    pub nat_kind: String,
    /// Peers whose observation of our address is remembered.
    pub observations: usize,
    /// Hole-punching sessions under way.
    pub punching: usize,
    /// Hole-punching sessions that gave a tunnel.
    pub punched: u64,
    /// Hole-punching sessions that failed.
    pub punch_failed: u64,
}

/// Peer-protocol counters (see `peer_proto::PeerStats`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerProtocolCounters {
    /// Messages sent.
    pub sent: u64,
    /// Messages accepted.
    pub accepted: u64,
    /// Messages dropped (malformed, stale, replayed, forged, misaddressed).
    pub dropped: u64,
}

/// Babel control traffic since start.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BabelCounters {
    /// Packets sent.
    pub tx_packets: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
    /// Packets received.
    pub rx_packets: u64,
    /// Bytes received.
    pub rx_bytes: u64,
}

/// A recent event.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventRecord {
    /// When (UNIX seconds).
    pub time: u64,
    /// What happened, one line.
    pub text: String,
}

/// A live peer for bootstrapping another node.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootstrapPeer {
    /// Its prefix in CN form.
    pub prefix: String,
    /// Its addresses, `IP,PORT,PROTO` each.
    pub addresses: Vec<String>,
}

/// One node of the topology walk.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopologyNode {
    /// Its prefix in CN form.
    pub prefix: String,
    /// Its tunnel neighbours, when it answered.
    pub neighbours: Option<Vec<String>>,
}

/// One node's versions.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeVersion {
    /// Its prefix in CN form.
    pub prefix: String,
    /// Its software version, when it answered.
    pub software: Option<String>,
    /// The configuration version it uses, when it answered.
    pub config_version: Option<u64>,
}

/// A request handed to the node's main loop, with where to send the answer.
pub type ControlCall = (Request, oneshot::Sender<Response>);

/// The errors of the control client.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The socket could not be reached (no node running?).
    #[error("cannot connect to {path}: {source}")]
    Connect {
        /// The socket path.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// Reading or writing failed.
    #[error("control socket: {0}")]
    Io(#[from] io::Error),
    /// The answer is not valid JSON of the expected shape.
    #[error("malformed answer from the node: {0}")]
    Malformed(#[from] serde_json::Error),
    /// No answer in time.
    #[error("the node did not answer within {0:?}")]
    Timeout(Duration),
    /// The node closed the connection without answering.
    #[error("the node closed the connection without answering")]
    Closed,
    /// The answer is too long.
    #[error("answer longer than {MAX_LINE} bytes")]
    TooLong,
}

/// Binds the control socket at `path` (replacing a stale one) with mode
/// 0600.
pub fn bind(path: &Path) -> io::Result<UnixListener> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Accepts connections on `listener` until `calls` is closed, forwarding
/// each request to it and writing back the answer. A malformed request is
/// answered with [`Response::Error`]; it never stops the server.
pub async fn serve(listener: UnixListener, calls: mpsc::Sender<ControlCall>) {
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!("control socket: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = calls.closed() => return,
        };
        let calls = calls.clone();
        tokio::spawn(async move {
            if let Err(e) = answer(stream, &calls).await {
                tracing::debug!("control connection: {e}");
            }
        });
    }
}

async fn answer(stream: UnixStream, calls: &mpsc::Sender<ControlCall>) -> io::Result<()> {
    let (read, mut write) = stream.into_split();
    let line = match read_line(read).await {
        Ok(Some(line)) => line,
        Ok(None) => return Ok(()),
        Err(e) => {
            let response = Response::Error(e.to_string());
            return write_line(&mut write, &response).await;
        }
    };
    let response = match serde_json::from_slice::<Request>(&line) {
        Err(e) => Response::Error(format!("malformed request: {e}")),
        Ok(request) => {
            let (tx, rx) = oneshot::channel();
            if calls.send((request, tx)).await.is_err() {
                Response::Error("the node is stopping".into())
            } else {
                rx.await
                    .unwrap_or_else(|_| Response::Error("the node dropped the request".into()))
            }
        }
    };
    write_line(&mut write, &response).await
}

/// Reads one line of at most [`MAX_LINE`] bytes; `None` at a clean end of
/// stream before any byte.
async fn read_line(read: impl tokio::io::AsyncRead + Unpin) -> io::Result<Option<Vec<u8>>> {
    let mut reader = BufReader::new(read).take(MAX_LINE as u64 + 1);
    let mut line = Vec::new();
    let n = reader.read_until(b'\n', &mut line).await?;
    if n == 0 {
        return Ok(None);
    }
    if line.len() > MAX_LINE {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("line longer than {MAX_LINE} bytes"),
        ));
    }
    Ok(Some(line))
}

async fn write_line(
    write: &mut (impl tokio::io::AsyncWrite + Unpin),
    value: &impl Serialize,
) -> io::Result<()> {
    let mut bytes = serde_json::to_vec(value).map_err(io::Error::other)?;
    bytes.push(b'\n');
    write.write_all(&bytes).await?;
    write.shutdown().await
}

/// Sends `request` to the node listening at `path` and returns its answer,
/// waiting at most `timeout`.
pub async fn call(
    path: &Path,
    request: &Request,
    timeout: Duration,
) -> Result<Response, ControlError> {
    let exchange = async {
        let stream = UnixStream::connect(path)
            .await
            .map_err(|source| ControlError::Connect {
                path: path.to_owned(),
                source,
            })?;
        let (read, mut write) = stream.into_split();
        write_line(&mut write, request).await?;
        match read_line(read).await {
            Ok(Some(line)) => Ok(serde_json::from_slice(&line)?),
            Ok(None) => Err(ControlError::Closed),
            Err(e) if e.kind() == io::ErrorKind::InvalidData => Err(ControlError::TooLong),
            Err(e) => Err(e.into()),
        }
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| ControlError::Timeout(timeout))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_have_a_stable_json_form() {
        let cases = [
            (
                Request::Status { routes: true },
                r#"{"status":{"routes":true}}"#,
            ),
            (Request::BootstrapPeer, r#""bootstrap_peer""#),
            (Request::Topology, r#""topology""#),
            (Request::Versions, r#""versions""#),
        ];
        for (request, json) in cases {
            assert_eq!(serde_json::to_string(&request).unwrap(), json);
            assert_eq!(serde_json::from_str::<Request>(json).unwrap(), request);
        }
        for bad in [
            "",
            "{}",
            r#"{"status":{}}"#,
            r#""reboot""#,
            r#"{"status":{"routes":1}}"#,
        ] {
            assert!(serde_json::from_str::<Request>(bad).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn a_call_reaches_the_loop_and_bad_requests_get_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = socket_path(dir.path());
        let listener = bind(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let (tx, mut rx) = mpsc::channel::<ControlCall>(4);
        let server = tokio::spawn(serve(listener, tx));
        let node = tokio::spawn(async move {
            while let Some((request, reply)) = rx.recv().await {
                let response = match request {
                    Request::BootstrapPeer => Response::BootstrapPeer(Some(BootstrapPeer {
                        prefix: "5/16".into(),
                        addresses: vec!["192.0.2.1,1194,udp".into()],
                    })),
                    other => Response::Error(format!("unexpected {other:?}")),
                };
                let _ = reply.send(response);
            }
        });

        let answer = call(&path, &Request::BootstrapPeer, TIMEOUT).await.unwrap();
        let Response::BootstrapPeer(Some(peer)) = answer else {
            panic!("{answer:?}")
        };
        assert_eq!(peer.prefix, "5/16");

        let mut raw = UnixStream::connect(&path).await.unwrap();
        raw.write_all(b"{\"reboot\":1}\n").await.unwrap();
        let mut text = String::new();
        raw.read_to_string(&mut text).await.unwrap();
        let answer: Response = serde_json::from_str(text.trim()).unwrap();
        assert!(matches!(answer, Response::Error(ref e) if e.contains("malformed")));

        server.abort();
        node.abort();
        let err = call(&dir.path().join("absent.sock"), &Request::Topology, TIMEOUT)
            .await
            .unwrap_err();
        assert!(err.to_string().starts_with("cannot connect to"), "{err}");
    }
}
