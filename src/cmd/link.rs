//! `re6st link` (hidden): brings tunnels of one transport up between two
//! hosts without the node daemon, for the integration tests and the
//! throughput harness (`benches/throughput/`).
//!
//! - `re6st link pki --dir DIR --nodes N` writes a throw-away network:
//!   `ca.crt`, `ca.key` and `node<i>.key`/`node<i>.crt` with CN `"<i>/16"`.
//! - `re6st link up --transport udp|tcp|quic ...` listens (and, with
//!   `--connect`, opens one tunnel to the node whose CN is `--peer`) through
//!   the transport's [`re6st::tunnel::Tunnels`] handle, adds `--addr` to
//!   every tunnel interface that comes up, and runs until the tunnel it
//!   opened goes down (or until SIGTERM when only accepting).

use std::net::{Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context};
use clap::{Args, Subcommand, ValueEnum};

use re6st::pki::{self, Ca, Csr, IssueRequest, NodeCert, NodePrefix, Verifier};
use re6st::tunnel::quic::tls::{PeerPolicy, TlsIdentity};
use re6st::tunnel::quic::QuicConfig;

/// Options of `re6st link`.
#[derive(Args)]
pub(crate) struct LinkArgs {
    #[command(subcommand)]
    command: LinkCommand,
}

#[derive(Subcommand)]
enum LinkCommand {
    /// Write a throw-away CA and node certificates for tests and benches.
    Pki(PkiArgs),
    /// Bring tunnels up and move packets until the tunnel ends.
    Up(UpArgs),
}

#[derive(Args)]
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

/// Transports `re6st link up` can drive.
#[derive(Clone, Copy, Debug, ValueEnum)]
enum Transport {
    /// QUIC datagrams with mutual TLS.
    Quic,
    /// Noise sessions over TCP streams.
    Tcp,
    /// Noise sessions over UDP (the tunnel helper's transport).
    Udp,
}

#[derive(Args)]
struct UpArgs {
    /// The transport.
    #[arg(long, value_enum)]
    transport: Transport,
    /// The network CA certificate (PEM).
    #[arg(long)]
    ca: PathBuf,
    /// Our node key (PKCS#8 PEM).
    #[arg(long)]
    key: PathBuf,
    /// Our node certificate (PEM).
    #[arg(long)]
    cert: PathBuf,
    /// Address to listen on (also the source of tunnels we open).
    #[arg(long, default_value = "[::]:3260")]
    listen: SocketAddr,
    /// Open a tunnel to this address...
    #[arg(long, requires = "peer")]
    connect: Option<SocketAddr>,
    /// ...whose certificate CN must be this prefix (e.g. "2/16").
    #[arg(long)]
    peer: Option<NodePrefix>,
    /// Name of the first TUN device: tunnels are named "<dev without its
    /// trailing digits><n>".
    #[arg(long, default_value = "re6st-0")]
    dev: String,
    /// IPv6 address and prefix length for the TUN device (e.g. fd00::1/64).
    #[arg(long)]
    addr: Option<String>,
    /// Dead-peer timeout in seconds.
    #[arg(long, default_value_t = 5.0)]
    dead_timeout: f64,
    /// Keepalive interval in seconds.
    #[arg(long, default_value_t = 1.0)]
    keepalive: f64,
}

/// Runs `re6st link`.
pub(crate) fn run(args: LinkArgs) -> anyhow::Result<()> {
    match args.command {
        LinkCommand::Pki(a) => write_pki(&a),
        LinkCommand::Up(a) => {
            let rt = tokio::runtime::Runtime::new().context("cannot start the runtime")?;
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

fn seconds(what: &str, s: f64) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(s).with_context(|| format!("{what}: bad duration {s}"))
}

/// Brings the transport up through its [`re6st::tunnel::Tunnels`] handle:
/// interfaces are created by the transport; `--addr` is added to each when
/// it comes up.
async fn up(a: UpArgs) -> anyhow::Result<()> {
    use der::{DecodePem, Encode};
    use re6st::tunnel::{
        quic, tcp, udp, Credentials, EndpointConfig, Timing, TunSettings, TunnelEvent,
        TunnelsConfig,
    };

    let addr = a.addr.as_deref().map(parse_addr).transpose()?;
    let key = pki::load_key(&a.key)?;
    let cert = NodeCert::from_pem(&read(&a.cert)?)
        .with_context(|| format!("{}: not a certificate", a.cert.display()))?;
    let ca_pem = read(&a.ca)?;
    let verifier = Verifier::new(&ca_pem)
        .with_context(|| format!("{}: not a CA certificate", a.ca.display()))?;
    let ca_der = x509_cert::Certificate::from_pem(ca_pem.as_bytes())
        .and_then(|c| c.to_der())
        .map_err(|e| anyhow::anyhow!("{}: bad CA certificate: {e}", a.ca.display()))?;
    let identity = TlsIdentity::new(&key, &cert)?;
    let policy = PeerPolicy::new(verifier.clone());
    let creds =
        Arc::new(Credentials::new(&key, cert, &ca_der, verifier).context("our certificate")?);
    let prefix = a
        .dev
        .trim_end_matches(|c: char| c.is_ascii_digit())
        .to_owned();
    let dead = seconds("--dead-timeout", a.dead_timeout)?;
    let keepalive = seconds("--keepalive", a.keepalive)?;
    let quic_config = QuicConfig {
        keepalive,
        dead_timeout: dead,
        ..QuicConfig::default()
    };
    let config = TunnelsConfig {
        listen: a.listen,
        endpoint: EndpointConfig {
            timing: Timing {
                keepalive,
                dead_after: dead,
                ..Timing::default()
            },
            ..EndpointConfig::default()
        },
        tun: TunSettings {
            name_prefix: prefix,
            ..TunSettings::default()
        },
        seed: None,
    };
    let name = match a.transport {
        Transport::Udp => "udp",
        Transport::Tcp => "tcp",
        Transport::Quic => "quic",
    };
    let (tunnels, mut events) = match a.transport {
        Transport::Udp => udp::start(creds, config).await,
        Transport::Tcp => tcp::start(creds, config).await,
        Transport::Quic => quic::driver::start(identity, policy, quic_config, config).await,
    }
    .with_context(|| format!("cannot listen on {name} {}", a.listen))?;
    tracing::info!(listen = %tunnels.local_addr(), "{name} transport up");
    let ours = match (a.connect, a.peer) {
        (Some(remote), Some(peer)) => {
            Some((tunnels.connect(remote, Some(peer)).await?, remote, peer))
        }
        _ => None,
    };
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        let ev = tokio::select! {
            _ = term.recv() => return Ok(()),
            ev = events.recv() => ev.with_context(|| format!("{name} transport stopped"))?,
        };
        match ev {
            TunnelEvent::Up {
                id,
                interface,
                peer,
                addr: remote,
                ..
            } => {
                tracing::info!(peer = %peer.prefix, %remote, dev = %interface, "{name} tunnel {id} up");
                if let Some((ip, len)) = addr {
                    let st = std::process::Command::new("ip")
                        .args([
                            "-6",
                            "addr",
                            "add",
                            &format!("{ip}/{len}"),
                            "dev",
                            &interface,
                            "nodad",
                        ])
                        .status()
                        .context("cannot run ip")?;
                    if !st.success() {
                        tracing::warn!(dev = %interface, "cannot add {ip}/{len}");
                    }
                }
            }
            TunnelEvent::Down { id, reason, .. } => {
                tracing::warn!("{name} tunnel {id} down: {reason}");
                if let Some((mine, remote, peer)) = ours {
                    if mine == id {
                        let why = match reason {
                            re6st::tunnel::DownReason::Timeout(_) => {
                                format!("peer dead (nothing heard for {dead:?})")
                            }
                            other => other.to_string(),
                        };
                        bail!("{name} tunnel to {peer} at {remote} ended: {why}");
                    }
                }
            }
            TunnelEvent::Roamed { id, addr: remote } => {
                tracing::info!("{name} tunnel {id} roamed to {remote}")
            }
            TunnelEvent::Refused {
                addr: remote,
                error,
            } => {
                tracing::warn!(%remote, "{name}: refused peer: {error}");
            }
        }
    }
}
