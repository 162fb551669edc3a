//! `re6st babel`: the Babel router standalone, like babeld. Routes learned
//! go into the kernel with protocol 61; SIGTERM or SIGINT retracts our
//! prefixes, waits for the retractions to go out and removes our routes;
//! SIGUSR1 logs the router's state (neighbours, routes, counters).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::str::FromStr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use babel::{
    Dump, InterfaceConfig, InterfaceKind, MacAlgorithm, MacConfig, MacKey, Prefix, Router,
    RouterConfig,
};
use rand::RngCore;
use re6st::kernel::{Kernel, TABLE_MAIN};
use re6st::routing::{install, BabelSocket, Driver, InstallConfig};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;

/// How long the retractions of our prefixes are given to go out at
/// shutdown.
const LINGER: Duration = Duration::from_secs(1);

/// How long to wait for an interface's link-local address (duplicate
/// address detection takes a second or two after the link comes up).
const LINK_LOCAL_WAIT: Duration = Duration::from_secs(15);

/// Options of `re6st babel`.
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// Interfaces to run Babel on (repeat -i or list several).
    #[arg(short = 'i', long = "interface", value_name = "IFACE", required = true, num_args = 1..)]
    interfaces: Vec<String>,
    /// Prefix to announce, optionally source-specific: `PREFIX` or `PREFIX
    /// from SRC` (repeatable).
    #[arg(long, value_name = "PREFIX [from SRC]", num_args = 1..=3)]
    redistribute: Vec<String>,
    /// Metric of the prefixes we announce.
    #[arg(long, default_value_t = 0, value_name = "METRIC")]
    redistribute_metric: u16,
    /// Hello interval in seconds (updates go every 4 hellos).
    #[arg(long, value_name = "SECS")]
    hello: Option<f64>,
    /// Interface type: `IFACE=wired|wireless|tunnel` (default wired).
    #[arg(long = "type", value_name = "IFACE=TYPE")]
    types: Vec<String>,
    /// Send and expect RTT timestamps in hellos and IHUs on every interface
    /// (always on for tunnels).
    #[arg(long)]
    timestamps: bool,
    /// MAC key `ID=HEX`: the first signs our packets, all are accepted
    /// (repeatable).
    #[arg(long = "key", value_name = "ID=HEX")]
    keys: Vec<String>,
    /// Algorithm of the MAC keys.
    #[arg(long, value_name = "ALGO", default_value = "hmac-sha256")]
    key_type: String,
    /// With keys, still accept unsigned packets (during a rollout).
    #[arg(long)]
    accept_unsigned: bool,
    /// Kernel routing table for learned routes.
    #[arg(long, default_value_t = TABLE_MAIN)]
    table: u32,
    /// Kernel priority (metric) of learned routes.
    #[arg(long, default_value_t = 0)]
    kernel_priority: u32,
    /// Router-id as 16 hex digits (default: random).
    #[arg(long, value_name = "HEX")]
    router_id: Option<String>,
}

/// Runs the router until SIGTERM or SIGINT.
pub(crate) fn run(args: Args) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(serve(args))
}

async fn serve(args: Args) -> anyhow::Result<()> {
    // Handlers first: a signal during start-up must not kill us unhandled.
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut usr1 = signal(SignalKind::user_defined1())?;
    let prefixes = parse_redistribute(&args.redistribute)?;
    let mac = mac_config(&args)?;
    let types = interface_types(&args.types)?;
    let router_id = match &args.router_id {
        Some(hex) => parse_router_id(hex)?,
        None => {
            let mut id = [0; 8];
            rand::thread_rng().fill_bytes(&mut id);
            id
        }
    };

    let kernel = Kernel::connect()?;
    let flushed = kernel.flush_routes().await?;
    if flushed > 0 {
        tracing::info!("removed {flushed} routes left by a previous run");
    }
    let subtrees = kernel.has_ipv6_subtrees().await.unwrap_or_else(|e| {
        tracing::warn!("cannot tell whether the kernel has IPv6 subtrees ({e}); assuming not");
        false
    });
    if !subtrees {
        tracing::warn!("kernel without IPv6 subtrees: source-specific routes are limited");
    }

    let mut interfaces = Vec::new();
    let mut names = HashMap::new();
    for name in &args.interfaces {
        let link = kernel
            .link_by_name(name)
            .await
            .with_context(|| format!("-i {name}"))?;
        let link_local = wait_link_local(&kernel, link.index)
            .await
            .with_context(|| format!("-i {name}"))?;
        let kind = types
            .get(name.as_str())
            .copied()
            .unwrap_or(InterfaceKind::Wired);
        let mut config = InterfaceConfig::new(kind, link_local);
        if let Some(secs) = args.hello {
            if !(0.01..=655.0).contains(&secs) {
                bail!("--hello {secs}: must be between 0.01 and 655 seconds");
            }
            config.hello_interval = Duration::from_secs_f64(secs);
            config.update_interval = config.hello_interval * 4;
        }
        config.enable_timestamps |= args.timestamps;
        if link.mtu > 0 {
            // IPv6 and UDP headers.
            config.mtu = (link.mtu as usize).saturating_sub(48).max(512);
        }
        names.insert(link.index, name.clone());
        interfaces.push((link.index, config));
    }
    for name in types.keys() {
        if !args.interfaces.iter().any(|i| i == name) {
            bail!("--type {name}=...: {name} is not one of the -i interfaces");
        }
    }

    let now = Instant::now();
    let config = RouterConfig {
        router_id,
        seed: rand::thread_rng().next_u64(),
        mac,
        kernel_has_ipv6_subtrees: subtrees,
        ..RouterConfig::default()
    };
    let router = Router::new(config, now);
    let socket = BabelSocket::bind().context("cannot bind the babel port [::]:6696")?;
    let (routes_tx, routes_rx) = mpsc::unbounded_channel();
    let install_config = InstallConfig {
        table: args.table,
        priority: args.kernel_priority,
        ..InstallConfig::default()
    };
    let installer = tokio::spawn(install::run(install_config, routes_rx));
    let (driver, handle) = Driver::new(router, socket, routes_tx, None);
    for (index, config) in interfaces {
        handle.add_interface(index, config);
    }
    for (prefix, src) in prefixes {
        handle.redistribute(prefix, src, args.redistribute_metric);
    }
    tracing::info!(
        router_id = %hex::encode(router_id),
        "babel running on {}",
        args.interfaces.join(", ")
    );

    let dumper = handle.clone();
    let dumps = tokio::spawn(async move {
        while usr1.recv().await.is_some() {
            if let (Some(dump), Some(stats)) = (dumper.dump().await, dumper.stats().await) {
                eprint!("{}", format_dump(&dump, &stats, &names));
            }
        }
    });
    let shutdown = async move {
        tokio::select! {
            _ = terminate.recv() => {}
            _ = interrupt.recv() => {}
        }
    };
    let router = driver.run(shutdown, LINGER).await;
    dumps.abort();
    drop(handle);
    tracing::info!("{} routes in the table at shutdown", router.route_count());
    drop(router);
    match installer.await {
        Ok(Ok(stats)) => tracing::info!(
            "{} route changes applied, {} refused",
            stats.applied,
            stats.failed
        ),
        Ok(Err(e)) => tracing::warn!("route installer: {e}"),
        Err(e) => tracing::warn!("route installer: {e}"),
    }
    let removed = kernel.flush_routes().await?;
    tracing::info!("removed our {removed} kernel routes; bye");
    Ok(())
}

/// Waits for a usable link-local address on interface `index`.
async fn wait_link_local(kernel: &Kernel, index: u32) -> anyhow::Result<std::net::Ipv6Addr> {
    let deadline = Instant::now() + LINK_LOCAL_WAIT;
    loop {
        match kernel.link_local(index).await {
            Ok(a) => return Ok(a),
            Err(re6st::kernel::Error::NoLinkLocal(_)) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// The values of every `--redistribute`, in order: `PREFIX`, each
/// optionally followed by `from SRC` (also accepted inside one argument).
fn parse_redistribute(values: &[String]) -> anyhow::Result<Vec<(Prefix, Option<Prefix>)>> {
    let prefix =
        |s: &str| Prefix::from_str(s).map_err(|e| anyhow::anyhow!("--redistribute {s:?}: {e}"));
    let mut words = values.iter().flat_map(|w| w.split_whitespace()).peekable();
    let mut out = Vec::new();
    while let Some(word) = words.next() {
        if word == "from" {
            bail!("--redistribute from: expected PREFIX or PREFIX from SRC");
        }
        let p = prefix(word)?;
        let mut src = None;
        if words.next_if_eq(&"from").is_some() {
            let Some(s) = words.next() else {
                bail!("--redistribute {p} from: the source prefix is missing");
            };
            let s = prefix(s)?;
            if p.is_ipv4() != s.is_ipv4() {
                bail!("--redistribute {p} from {s}: the prefixes are of different families");
            }
            src = Some(s);
        }
        out.push((p, src));
    }
    Ok(out)
}

fn interface_types(types: &[String]) -> anyhow::Result<HashMap<&str, InterfaceKind>> {
    types
        .iter()
        .map(|t| {
            let Some((name, kind)) = t.split_once('=') else {
                bail!("--type {t}: expected IFACE=wired|wireless|tunnel");
            };
            let kind = match kind {
                "wired" => InterfaceKind::Wired,
                "wireless" => InterfaceKind::Wireless,
                "tunnel" => InterfaceKind::Tunnel,
                _ => bail!("--type {t}: type must be wired, wireless or tunnel"),
            };
            Ok((name, kind))
        })
        .collect()
}

fn mac_config(args: &Args) -> anyhow::Result<Option<MacConfig>> {
    let algorithm = match args.key_type.as_str() {
        "hmac-sha256" => MacAlgorithm::HmacSha256,
        "blake2s128" => MacAlgorithm::Blake2s128,
        other => bail!("--key-type {other}: expected hmac-sha256 or blake2s128"),
    };
    let mut keys = args.keys.iter().map(|k| {
        let Some((id, value)) = k.split_once('=') else {
            bail!("--key: expected ID=HEX");
        };
        let secret = hex::decode(value)
            .map_err(|e| anyhow::anyhow!("--key {id}=...: the value is not hex ({e})"))?;
        MacKey::new(algorithm, &secret).map_err(|e| anyhow::anyhow!("--key {id}=...: {e}"))
    });
    let Some(sign) = keys.next().transpose()? else {
        if args.accept_unsigned {
            bail!("--accept-unsigned needs --key");
        }
        return Ok(None);
    };
    let mut mac = MacConfig::new(sign);
    mac.accept = keys.collect::<anyhow::Result<_>>()?;
    mac.accept_unsigned = args.accept_unsigned;
    Ok(Some(mac))
}

fn parse_router_id(hex: &str) -> anyhow::Result<[u8; 8]> {
    let bytes = hex::decode(hex).map_err(|e| anyhow::anyhow!("--router-id {hex}: {e}"))?;
    bytes
        .try_into()
        .map_err(|_| anyhow::anyhow!("--router-id {hex}: expected 16 hex digits"))
}

/// The state, one line per item, in the spirit of babeld's dump.
fn format_dump(dump: &Dump, stats: &babel::router::Stats, names: &HashMap<u32, String>) -> String {
    let name = |i: u32| names.get(&i).cloned().unwrap_or_else(|| format!("#{i}"));
    let mut out = String::new();
    let _ = writeln!(
        out,
        "my-id {} seqno {} packets {} malformed {} unauthenticated {} sent {}",
        hex::encode(dump.router_id),
        dump.seqno,
        stats.packets,
        stats.malformed,
        stats.unauthenticated,
        stats.sent
    );
    for n in &dump.neighbours {
        let rtt = n.rtt.map_or_else(
            || "-".to_owned(),
            |r| format!("{:.3}", r.as_secs_f64() * 1000.0),
        );
        let _ = writeln!(
            out,
            "neighbour {} if {} reach {:04x} ureach {:04x} rxcost {} txcost {} rtt {} cost {}",
            n.address,
            name(n.ifindex),
            n.reach,
            n.ureach,
            n.rxcost,
            n.txcost,
            rtt,
            n.cost
        );
    }
    for r in &dump.routes {
        let src = r
            .src_prefix
            .map(|s| format!(" from {s}"))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "route {}{} metric {} refmetric {} id {} seqno {} via {} if {}{}{}",
            r.prefix,
            src,
            r.metric,
            r.refmetric,
            hex::encode(r.router_id),
            r.seqno,
            r.next_hop,
            name(r.ifindex),
            if r.selected { " selected" } else { "" },
            if r.installed { " installed" } else { "" },
        );
    }
    for x in &dump.xroutes {
        let src = x
            .src_prefix
            .map(|s| format!(" from {s}"))
            .unwrap_or_default();
        let _ = writeln!(out, "xroute {}{} metric {}", x.prefix, src, x.metric);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(s: &str) -> Vec<String> {
        s.split(' ').map(str::to_owned).collect()
    }

    #[test]
    fn redistribute_arguments() {
        let r = parse_redistribute(&words("2001:db8::/32")).unwrap();
        assert_eq!(r, [("2001:db8::/32".parse().unwrap(), None)]);
        let r = parse_redistribute(&words("::/0 from 2001:db8::/32 10.0.0.0/8")).unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].0.to_string(), "::/0");
        assert_eq!(r[0].1.unwrap().to_string(), "2001:db8::/32");
        assert_eq!(
            (r[1].0.to_string(), r[1].1),
            ("10.0.0.0/8".to_owned(), None)
        );
        let one = parse_redistribute(&["::/0 from 2001:db8::/32".to_owned()]).unwrap();
        assert_eq!(one[0], r[0]);
        for bad in [
            "2001:db8::/129",
            "::/0 to ::/0",
            "::/0 from 10.0.0.0/8",
            "x",
            "::/0 from",
            "from ::/0",
        ] {
            assert!(parse_redistribute(&words(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn type_arguments() {
        let args = words("a=wired b=tunnel c=wireless");
        let t = interface_types(&args).unwrap();
        assert_eq!(t["b"], InterfaceKind::Tunnel);
        assert_eq!(t["c"], InterfaceKind::Wireless);
        assert!(interface_types(&words("a=fast")).is_err());
        assert!(interface_types(&words("a")).is_err());
    }

    #[test]
    fn router_ids() {
        assert_eq!(
            parse_router_id("0102030405060708").unwrap(),
            [1, 2, 3, 4, 5, 6, 7, 8]
        );
        assert!(parse_router_id("0102").is_err());
        assert!(parse_router_id("zz").is_err());
    }
}
