//! `re6st tunnel` (hidden): brings tunnels up without the node daemon, for
//! the integration tests and the throughput harness (`benches/throughput/`).
//!
//! - `re6st tunnel pki --dir DIR --nodes N` writes a throw-away network:
//!   `ca.crt`, `ca.key` and `node<i>.key`/`node<i>.crt` with CN `"<i>/16"`.
//! - `re6st tunnel up --transport udp|tcp|quic ...` listens, opens a tunnel
//!   to every `--peer`, adds `--addr` to every tunnel interface that comes
//!   up and prints one log line per event. A peer whose tunnel goes down is
//!   reconnected, or, with `--once`, the command fails with the reason.
//!   On SIGINT/SIGTERM it prints the counters of every tunnel and exits.

use std::collections::HashMap;
use std::net::{Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{anyhow, bail, Context};
use clap::{Args, Subcommand, ValueEnum};
use der::{DecodePem, Encode};
use re6st::pki::{self, Ca, Csr, IssueRequest, NodeCert, NodePrefix, Verifier};
use re6st::tunnel::quic::tls::{PeerPolicy, TlsIdentity};
use re6st::tunnel::quic::QuicConfig;
use re6st::tunnel::{
    quic, tcp, udp, Credentials, DownReason, EndpointConfig, Timing, TunSettings, TunnelEvent,
    TunnelsConfig,
};

/// Options of `re6st tunnel`.
#[derive(Args, Debug)]
pub(crate) struct TunnelArgs {
    #[command(subcommand)]
    command: TunnelCommand,
}

#[derive(Subcommand, Debug)]
enum TunnelCommand {
    /// Write a throw-away CA and node certificates for tests and benches.
    Pki(PkiArgs),
    /// Bring tunnels up and move packets until SIGTERM.
    Up(UpArgs),
}

#[derive(Args, Debug)]
struct PkiArgs {
    /// Directory to write ca.crt, ca.key, node<i>.key and node<i>.crt into.
    #[arg(long)]
    dir: PathBuf,
    /// Number of node certificates (CN "1/16", "2/16", ...).
    #[arg(long, default_value_t = 2)]
    nodes: u32,
    /// The network prefix.
    #[arg(long, default_value = "2001:db8:42::/48")]
    network: String,
}

/// The transports `re6st tunnel up` can drive.
#[derive(Clone, Copy, Debug, ValueEnum)]
enum Transport {
    /// QUIC datagrams with mutual TLS.
    Quic,
    /// Noise sessions over TCP streams.
    Tcp,
    /// Noise sessions over UDP.
    Udp,
}

impl Transport {
    const fn name(self) -> &'static str {
        match self {
            Self::Quic => "quic",
            Self::Tcp => "tcp",
            Self::Udp => "udp",
        }
    }
}

#[derive(Args, Debug)]
struct UpArgs {
    /// The transport.
    #[arg(long, value_enum, default_value = "udp")]
    transport: Transport,
    /// Our certificate (PEM).
    #[arg(long)]
    cert: PathBuf,
    /// Our private key (PKCS#8 PEM).
    #[arg(long)]
    key: PathBuf,
    /// The network CA certificate (PEM).
    #[arg(long)]
    ca: PathBuf,
    /// Address and port to listen on (`[::]:PORT` for IPv4 and IPv6); also
    /// the source of the tunnels we open.
    #[arg(long, default_value = "[::]:326")]
    listen: SocketAddr,
    /// A peer to connect to: ADDR:PORT[,EXPECTED_PREFIX] (repeatable).
    #[arg(long = "peer", value_name = "ADDR:PORT[,PREFIX]")]
    peers: Vec<String>,
    /// Fail when a tunnel to a `--peer` goes down instead of reconnecting.
    #[arg(long)]
    once: bool,
    /// IPv6 address and prefix length to add to every tunnel interface
    /// (e.g. fd00::1/64).
    #[arg(long)]
    addr: Option<String>,
    /// Keepalive interval in seconds.
    #[arg(long, default_value_t = 1.0)]
    keepalive: f64,
    /// Seconds of silence after which a peer is declared dead.
    #[arg(long, default_value_t = 5.0)]
    timeout: f64,
    /// Revoked certificate serial numbers (as a CRL would list them).
    #[arg(long = "revoked", value_name = "SERIAL")]
    revoked: Vec<u64>,
    /// Underlay MTU (the tunnel MTU is derived from it; udp and tcp).
    #[arg(long, default_value_t = 1500)]
    underlay_mtu: usize,
    /// Disable TUN segmentation offloads.
    #[arg(long)]
    no_offload: bool,
    /// Microseconds the data path keeps polling after handling packets
    /// before it sleeps (0: never; udp and tcp). Lowers latency on hosts
    /// with idle cores, raises it on busy ones.
    #[arg(long, default_value_t = 0)]
    busy_poll_us: u64,
    /// Interface name prefix (tunnels are named "<prefix><n>").
    #[arg(long, default_value = "re6st-")]
    ifname_prefix: String,
}

/// Runs `re6st tunnel`.
pub(crate) fn run(args: TunnelArgs) -> anyhow::Result<()> {
    match args.command {
        TunnelCommand::Pki(a) => write_pki(&a),
        TunnelCommand::Up(a) => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .context("cannot start the runtime")?;
            rt.block_on(up(a))
        }
    }
}

fn write_pki(a: &PkiArgs) -> anyhow::Result<()> {
    let network = a
        .network
        .parse()
        .with_context(|| format!("--network {}", a.network))?;
    let ca = Ca::generate(network, 30)?;
    std::fs::create_dir_all(&a.dir)
        .with_context(|| format!("cannot create {}", a.dir.display()))?;
    ca.write(&a.dir)?;
    let now = SystemTime::now();
    for i in 1..=a.nodes {
        let key = pki::generate_key();
        let csr = Csr::generate(&key, &[])?;
        let cert = ca.issue(&IssueRequest {
            csr: &csr,
            prefix: NodePrefix::new(u128::from(i), 16)?,
            subject_serial: i,
            serial: u64::from(i),
            not_before: now - Duration::from_secs(3600),
            not_after: now + Duration::from_secs(30 * 86_400),
        })?;
        pki::save_key(&a.dir.join(format!("node{i}.key")), &key)?;
        write_new(&a.dir.join(format!("node{i}.crt")), &cert.to_pem())?;
    }
    Ok(())
}

fn write_new(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    f.write_all(text.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))
}

fn read(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}

fn parse_peer(s: &str) -> anyhow::Result<(SocketAddr, Option<NodePrefix>)> {
    let (addr, cn) = match s.split_once(',') {
        Some((a, c)) => (a, Some(c)),
        None => (s, None),
    };
    let addr: SocketAddr = addr
        .parse()
        .with_context(|| format!("--peer {s}: bad address {addr:?}"))?;
    let cn = cn
        .map(|c| {
            c.parse::<NodePrefix>()
                .map_err(|e| anyhow!("--peer {s}: bad prefix {c:?}: {e}"))
        })
        .transpose()?;
    Ok((addr, cn))
}

fn parse_addr(s: &str) -> anyhow::Result<(Ipv6Addr, u8)> {
    let (a, l) = s
        .split_once('/')
        .context("--addr: expected ADDRESS/LENGTH")?;
    let addr = a
        .parse()
        .with_context(|| format!("--addr: bad IPv6 address {a:?}"))?;
    let len: u8 = l
        .parse()
        .with_context(|| format!("--addr: bad prefix length {l:?}"))?;
    if len > 128 {
        bail!("--addr: prefix length {len} above 128");
    }
    Ok((addr, len))
}

fn secs(name: &str, v: f64) -> anyhow::Result<Duration> {
    if !(v.is_finite() && v > 0.0) {
        bail!("--{name} must be a positive number of seconds, not {v}");
    }
    Ok(Duration::from_secs_f64(v))
}

/// Adds `ip/len` to `interface` (no duplicate address detection).
fn add_address(interface: &str, (ip, len): (Ipv6Addr, u8)) -> anyhow::Result<()> {
    let st = std::process::Command::new("ip")
        .args(["-6", "addr", "add", &format!("{ip}/{len}")])
        .args(["dev", interface, "nodad"])
        .status()
        .context("cannot run ip")?;
    if !st.success() {
        tracing::warn!(dev = %interface, "cannot add {ip}/{len}");
    }
    Ok(())
}

/// Brings the transport up through its [`re6st::tunnel::Tunnels`] handle:
/// interfaces are created by the transport; `--addr` is added to each when
/// it comes up.
async fn up(args: UpArgs) -> anyhow::Result<()> {
    let name = args.transport.name();
    let addr = args.addr.as_deref().map(parse_addr).transpose()?;
    let cert_pem = read(&args.cert)?;
    let ca_pem = read(&args.ca)?;
    let cert = NodeCert::from_pem(&cert_pem)
        .with_context(|| format!("{}: bad certificate", args.cert.display()))?;
    let key =
        pki::load_key(&args.key).with_context(|| format!("{}: bad key", args.key.display()))?;
    let mut verifier = Verifier::new(&ca_pem)
        .with_context(|| format!("{}: bad CA certificate", args.ca.display()))?;
    verifier.set_revoked(args.revoked.iter().copied());
    let ca_der = x509_cert::Certificate::from_pem(ca_pem.as_bytes())
        .and_then(|c| c.to_der())
        .map_err(|e| anyhow!("{}: bad CA certificate: {e}", args.ca.display()))?;
    let identity = TlsIdentity::new(&key, &cert)?;
    let policy = PeerPolicy::new(verifier.clone());
    let creds =
        Arc::new(Credentials::new(&key, cert, &ca_der, verifier).context("our certificate")?);
    let peers = args
        .peers
        .iter()
        .map(|p| parse_peer(p))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let keepalive = secs("keepalive", args.keepalive)?;
    let dead = secs("timeout", args.timeout)?;
    let config = TunnelsConfig {
        listen: args.listen,
        endpoint: EndpointConfig {
            timing: Timing {
                keepalive,
                dead_after: dead,
                // A standalone tunnel carries no Babel hellos: probe an
                // idle peer every keepalive so it is found dead in time.
                idle_probe: keepalive,
                ..Timing::default()
            },
            ..EndpointConfig::default()
        },
        tun: TunSettings {
            name_prefix: args.ifname_prefix.clone(),
            underlay_mtu: args.underlay_mtu,
            offload: !args.no_offload,
            busy_poll: Duration::from_micros(args.busy_poll_us),
            ..TunSettings::default()
        },
        seed: None,
    };
    let (tunnels, mut events) = match args.transport {
        Transport::Udp => udp::start(creds.clone(), config).await,
        Transport::Tcp => tcp::start(creds.clone(), config).await,
        Transport::Quic => {
            let quic_config = QuicConfig {
                keepalive,
                dead_timeout: dead,
                ..QuicConfig::default()
            };
            quic::driver::start(identity, policy, quic_config, config).await
        }
    }
    .with_context(|| format!("cannot listen on {name} {}", args.listen))?;
    tracing::info!(
        "listening on {name} {} as {}",
        tunnels.local_addr(),
        creds.prefix()
    );
    let mut wanted = HashMap::new();
    for (remote, cn) in &peers {
        let id = tunnels.connect(*remote, *cn).await?;
        wanted.insert(id, (*remote, *cn));
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let (retry_tx, mut retry_rx) = tokio::sync::mpsc::unbounded_channel();
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
            Some((remote, cn)) = retry_rx.recv() => {
                let id = tunnels.connect(remote, cn).await?;
                wanted.insert(id, (remote, cn));
            }
            ev = events.recv() => {
                let Some(ev) = ev else { bail!("{name} transport stopped") };
                match ev {
                    TunnelEvent::Up { id, interface, peer, addr: remote, initiated } => {
                        tracing::info!(
                            "{name} tunnel {id} up: interface {interface}, peer {} (serial {}) at {remote}, {}",
                            peer.prefix, peer.cert.serial(), if initiated { "outgoing" } else { "incoming" }
                        );
                        if let Some(a) = addr {
                            add_address(&interface, a)?;
                        }
                    }
                    TunnelEvent::Down { id, interface, reason } => {
                        tracing::warn!("{name} tunnel {id} down ({}): {reason}", interface.as_deref().unwrap_or("no interface"));
                        let Some((remote, cn)) = wanted.remove(&id) else { continue };
                        if args.once {
                            let why = match reason {
                                DownReason::Timeout(_) => format!("peer dead (nothing heard for {dead:?})"),
                                other => other.to_string(),
                            };
                            let peer = cn.map_or_else(|| "peer".to_owned(), |p| p.to_string());
                            bail!("{name} tunnel to {peer} at {remote} ended: {why}");
                        }
                        let tx = retry_tx.clone();
                        tokio::spawn(async move {
                            tokio::time::sleep(Duration::from_secs(1)).await;
                            let _ = tx.send((remote, cn));
                        });
                    }
                    TunnelEvent::Roamed { id, addr: remote } => tracing::info!("{name} tunnel {id} roamed: peer now at {remote}"),
                    TunnelEvent::Refused { addr: remote, error } => tracing::warn!("refused peer at {remote}: {error}"),
                }
            }
        }
    }
    for s in tunnels.status().await? {
        tracing::info!(
            "{name} tunnel {} ({}): rx {} packets {} bytes, tx {} packets {} bytes, handshakes {}",
            s.id,
            s.interface.as_deref().unwrap_or("-"),
            s.stats.rx_packets,
            s.stats.rx_bytes,
            s.stats.tx_packets,
            s.stats.tx_bytes,
            s.stats.handshakes
        );
    }
    Ok(())
}
