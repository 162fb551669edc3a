//! `re6st tunnel` (hidden): brings up tunnels from the command line, for
//! integration tests and the throughput harness. Prints one log line per
//! event; peers given with `--peer` are reconnected when they go down.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use clap::{Args, ValueEnum};
use der::{DecodePem, Encode};
use re6st::pki::{self, NodeCert, NodePrefix, Verifier};
use re6st::tunnel::{
    self, Credentials, EndpointConfig, Timing, TunSettings, TunnelEvent, TunnelsConfig,
};

/// The transport of the tunnels.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub(crate) enum Transport {
    /// Noise over UDP.
    Udp,
}

/// Options of `re6st tunnel`.
#[derive(Args, Debug)]
pub(crate) struct TunnelArgs {
    /// Our certificate (PEM).
    #[arg(long)]
    cert: PathBuf,
    /// Our private key (PKCS#8 PEM).
    #[arg(long)]
    key: PathBuf,
    /// The network CA certificate (PEM).
    #[arg(long)]
    ca: PathBuf,
    /// Address and port to listen on (`[::]:PORT` for IPv4 and IPv6).
    #[arg(long, default_value = "[::]:326")]
    listen: SocketAddr,
    /// A peer to connect to: ADDR:PORT[,EXPECTED_PREFIX] (repeatable).
    #[arg(long = "peer", value_name = "ADDR:PORT[,PREFIX]")]
    peers: Vec<String>,
    /// The transport.
    #[arg(long, value_enum, default_value = "udp")]
    transport: Transport,
    /// Keepalive interval in seconds.
    #[arg(long, default_value_t = 1.0)]
    keepalive: f64,
    /// Seconds of silence after which a peer is declared dead.
    #[arg(long, default_value_t = 5.0)]
    timeout: f64,
    /// Revoked certificate serial numbers (as a CRL would list them).
    #[arg(long = "revoked", value_name = "SERIAL")]
    revoked: Vec<u64>,
    /// Underlay MTU (the tunnel MTU is derived from it).
    #[arg(long, default_value_t = 1500)]
    underlay_mtu: usize,
    /// Disable TUN segmentation offloads.
    #[arg(long)]
    no_offload: bool,
    /// Interface name prefix.
    #[arg(long, default_value = "re6st-")]
    ifname_prefix: String,
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

fn secs(name: &str, v: f64) -> anyhow::Result<Duration> {
    if !(v.is_finite() && v > 0.0) {
        bail!("--{name} must be a positive number of seconds, not {v}");
    }
    Ok(Duration::from_secs_f64(v))
}

/// Runs the tunnels until SIGINT/SIGTERM.
pub(crate) fn run(args: TunnelArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(serve(args))
}

async fn serve(args: TunnelArgs) -> anyhow::Result<()> {
    let read = |p: &PathBuf| {
        std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))
    };
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
    let creds =
        Arc::new(Credentials::new(&key, cert, &ca_der, verifier).context("our certificate")?);
    let peers = args
        .peers
        .iter()
        .map(|p| parse_peer(p))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let timing = Timing {
        keepalive: secs("keepalive", args.keepalive)?,
        dead_after: secs("timeout", args.timeout)?,
        ..Timing::default()
    };
    let config = TunnelsConfig {
        listen: args.listen,
        endpoint: EndpointConfig {
            timing,
            ..EndpointConfig::default()
        },
        tun: TunSettings {
            name_prefix: args.ifname_prefix.clone(),
            underlay_mtu: args.underlay_mtu,
            offload: !args.no_offload,
            ..TunSettings::default()
        },
        seed: None,
    };
    let (tunnels, mut events) = match args.transport {
        Transport::Udp => tunnel::udp::start(creds.clone(), config)
            .await
            .with_context(|| format!("cannot listen on udp {}", args.listen))?,
    };
    tracing::info!(
        "listening on udp {} as {}",
        tunnels.local_addr(),
        creds.prefix()
    );
    let mut wanted = std::collections::HashMap::new();
    for (addr, cn) in &peers {
        let id = tunnels.connect(*addr, *cn).await?;
        wanted.insert(id, (*addr, *cn));
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let (retry_tx, mut retry_rx) = tokio::sync::mpsc::unbounded_channel();
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
            Some((addr, cn)) = retry_rx.recv() => {
                let id = tunnels.connect(addr, cn).await?;
                wanted.insert(id, (addr, cn));
            }
            ev = events.recv() => {
                let Some(ev) = ev else { bail!("tunnel transport stopped") };
                match ev {
                    TunnelEvent::Up { id, interface, peer, addr, initiated } => tracing::info!(
                        "tunnel {id} up: interface {interface}, peer {} (serial {}) at {addr}, {}",
                        peer.prefix, peer.cert.serial(), if initiated { "outgoing" } else { "incoming" }
                    ),
                    TunnelEvent::Down { id, interface, reason } => {
                        tracing::warn!("tunnel {id} down ({}): {reason}", interface.as_deref().unwrap_or("no interface"));
                        if let Some(p) = wanted.remove(&id) {
                            let tx = retry_tx.clone();
                            tokio::spawn(async move {
                                tokio::time::sleep(Duration::from_secs(1)).await;
                                let _ = tx.send(p);
                            });
                        }
                    }
                    TunnelEvent::Roamed { id, addr } => tracing::info!("tunnel {id} roamed: peer now at {addr}"),
                    TunnelEvent::Refused { addr, error } => tracing::warn!("refused peer at {addr}: {error}"),
                }
            }
        }
    }
    for s in tunnels.status().await? {
        tracing::info!(
            "tunnel {} ({}): rx {} packets {} bytes, tx {} packets {} bytes, handshakes {}",
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
