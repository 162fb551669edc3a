//! `re6st demo`: a registry and N nodes in network namespaces on this
//! machine, built with `testbed::mesh`, shown converging into a mesh.
//!
//! Prints progress while the mesh converges, then the all-pairs
//! reachability matrix, the tunnel graph (text, and a DOT file), one node's
//! status and the time to all-pairs reachability. Everything is torn down
//! on exit or Ctrl-C; `--keep` leaves the mesh running until Ctrl-C.
//! `--measure` also measures the figures of `benches/README.md`.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::Args;
use re6st::testbed::mesh::{BedError, Matrix, MeshBed, MeshOptions};

/// `re6st demo ...`
#[derive(Args)]
pub(crate) struct DemoArgs {
    /// Node hosts besides the registry host (the registry runs a node too).
    #[arg(long, default_value_t = 8)]
    nodes: usize,
    /// Leave the mesh running after the report, until Ctrl-C.
    #[arg(long)]
    keep: bool,
    /// Also measure control traffic and memory at rest, and the outage
    /// after a link cut (takes about a minute more).
    #[arg(long)]
    measure: bool,
    /// With --measure: how many times to cut the link (the outage of each
    /// cut and their median are printed; the tunnel is awaited back between
    /// cuts).
    #[arg(long, default_value_t = 1)]
    cuts: u32,
    /// Outgoing tunnels per node (network configuration).
    #[arg(long, default_value_t = 3)]
    client_count: u32,
    /// Babel hello interval, seconds (network configuration).
    #[arg(long, default_value_t = 4)]
    hello: u32,
    /// Seconds between tunnel refreshes (network configuration).
    #[arg(long, default_value_t = 300)]
    tunnel_refresh: u32,
    /// Where to write the tunnel graph (Graphviz DOT) [default:
    /// $TMPDIR/re6st-demo.dot].
    #[arg(long)]
    dot: Option<PathBuf>,
    /// Give up when not every pair reaches each other within this many
    /// seconds.
    #[arg(long, default_value_t = 120)]
    timeout: u64,
}

/// Runs `re6st demo`.
pub(crate) fn run(a: DemoArgs) -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("re6st demo needs root (network namespaces, TUN devices): run it with sudo");
    }
    if a.nodes == 0 || a.nodes > 250 {
        bail!("--nodes must be between 1 and 250");
    }
    for tool in ["ip", "ping", "nft"] {
        let found = std::env::var_os("PATH")
            .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(tool).is_file()));
        if !found {
            bail!("re6st demo needs `{tool}`: run ci/setup (or install iproute2, iputils-ping, nftables)");
        }
    }
    // Ctrl-C and SIGTERM raise a flag every wait of the bed checks; the
    // nodes, in our process group, get Ctrl-C too and stop cleanly.
    let cancel = Arc::new(AtomicBool::new(false));
    let signals = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    {
        use tokio::signal::unix::{signal, SignalKind};
        let _guard = signals.enter();
        let mut int = signal(SignalKind::interrupt())?;
        let mut term = signal(SignalKind::terminate())?;
        let flag = cancel.clone();
        signals.spawn(async move {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
            flag.store(true, Ordering::Relaxed);
        });
    }

    let binary = std::env::current_exe().context("cannot find the re6st binary")?;
    let opts = MeshOptions::new(binary, a.nodes)
        .registry_args([
            "--hello".to_owned(),
            a.hello.to_string(),
            "--client-count".into(),
            a.client_count.to_string(),
            "--tunnel-refresh".into(),
            a.tunnel_refresh.to_string(),
        ])
        .registry_args(["--authorized-origin", "127.0.0.1"]);
    println!(
        "re6st demo: registry + {} nodes, network {}",
        a.nodes,
        re6st::testbed::mesh::NETWORK
    );
    let started = Instant::now();
    let mut bed = MeshBed::build(opts).context("cannot build the testbed")?;
    bed.set_cancel(cancel.clone());
    println!(
        "  registry at {} (files in {}), {} certificates issued in {:.1} s",
        bed.registry_url(),
        bed.dir().display(),
        bed.len(),
        started.elapsed().as_secs_f64()
    );
    let result = demo(&mut bed, &a, &cancel);
    if let Err(e) = &result {
        if matches!(e.downcast_ref::<BedError>(), Some(BedError::Cancelled)) {
            println!("\ninterrupted: tearing down");
        } else {
            eprintln!("re6st demo: {e:#}");
            for i in 0..bed.len() {
                eprintln!("---- end of {}:", bed.log_path(i).display());
                eprintln!("{}", bed.log_tail(i, 8));
            }
            eprintln!("(set RE6ST_KEEP_BED=1 to keep the logs)");
        }
    }
    let stopped = Instant::now();
    for (name, status) in bed.shutdown(Duration::from_secs(10)) {
        match status {
            Ok(s) if s.success() => {}
            Ok(s) => println!("  {name} exited with {s}"),
            Err(e) => println!("  {name}: {e}"),
        }
    }
    drop(bed);
    println!(
        "torn down in {:.1} s: nodes stopped, namespaces removed",
        stopped.elapsed().as_secs_f64()
    );
    match result {
        Err(e) if matches!(e.downcast_ref::<BedError>(), Some(BedError::Cancelled)) => Ok(()),
        Err(_) => bail!("the demo failed (see above)"),
        Ok(()) => Ok(()),
    }
}

fn demo(bed: &mut MeshBed, a: &DemoArgs, cancel: &AtomicBool) -> anyhow::Result<()> {
    let since = Instant::now();
    bed.start_nodes()?;
    println!(
        "  registry's node up, then {} nodes started; waiting for the mesh:",
        bed.len() - 1
    );
    bed.wait_ready(Duration::from_secs(60))?;
    let total = bed.len() * (bed.len() - 1);
    let (matrix, converged) = bed.wait_all_pairs(
        since,
        Duration::from_secs(a.timeout),
        |bed, m: &Matrix, t| {
            let (ok, _) = m.counts();
            let graph = bed.graph();
            println!(
                "  [{:5.1} s] tunnels up {:3}, pairs reachable {ok:3}/{total}",
                t.as_secs_f64(),
                graph.edges.len()
            );
        },
    )?;
    println!("\nall-pairs reachability (ping6 between re6st addresses, # = answered):");
    print!("{matrix}");
    println!("\nnodes:");
    for i in 0..bed.len() {
        println!(
            "  {:>4}  prefix {:<8} address {:<24} underlay {}",
            bed.name(i),
            bed.prefix(i),
            bed.address(i),
            bed.underlay(i)
        );
    }
    let graph = bed.graph();
    println!("\ntunnel graph (-> opened, <- accepted):");
    println!("{graph}");
    let dot = a
        .dot
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join("re6st-demo.dot"));
    std::fs::write(&dot, graph.to_dot())
        .with_context(|| format!("cannot write {}", dot.display()))?;
    println!(
        "DOT file: {} (render: dot -Tsvg {} > mesh.svg)",
        dot.display(),
        dot.display()
    );

    println!("\nstatus of {}:", bed.name(1.min(bed.len() - 1)));
    print_status(bed, 1.min(bed.len() - 1));

    println!(
        "\nall {} pairs reachable {:.1} s after the nodes started",
        total,
        converged.as_secs_f64()
    );

    if a.measure {
        measure(bed, converged, a.cuts.max(1))?;
    }

    if a.keep {
        println!("\nthe mesh keeps running; Ctrl-C tears it down. To explore:");
        for i in 0..bed.len() {
            println!(
                "  sudo ip netns exec {} bash    # {} ({}); re6st status --run {}",
                bed.netns(i).name(),
                bed.name(i),
                bed.address(i),
                bed.run_dir(i).display()
            );
        }
        println!("  logs: {}/*/node.log", bed.dir().display());
        while !cancel.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(200));
        }
        println!();
        return Err(BedError::Cancelled.into());
    }
    Ok(())
}

/// `re6st status` when this binary has it, else a summary of the status.
fn print_status(bed: &MeshBed, i: usize) {
    let run = bed.run_dir(i).to_string_lossy().into_owned();
    match bed.re6st(i, &["status", "--run", &run]) {
        Ok(text) => print!("{text}"),
        Err(_) => match bed.status(i) {
            Ok(s) => {
                println!(
                    "  prefix {} ({}), address {}, configuration version {}",
                    s.identity.prefix,
                    s.identity.subnet,
                    s.identity
                        .address
                        .map_or_else(|| "-".into(), |a| a.to_string()),
                    s.identity.config_version
                );
                for t in &s.tunnels {
                    println!(
                        "  tunnel {} {} {} {} {} rx {} B tx {} B routes {}",
                        t.direction,
                        t.peer,
                        t.transport,
                        t.state,
                        t.interface.as_deref().unwrap_or("-"),
                        t.rx_bytes,
                        t.tx_bytes,
                        t.routes
                    );
                }
                println!(
                    "  {} neighbours, {} routes, {} cached peers",
                    s.neighbours.len(),
                    s.route_count,
                    s.peer_cache
                );
            }
            Err(e) => println!("  {e}"),
        },
    }
}

/// The figures of benches/README.md's "Node" section.
fn measure(bed: &mut MeshBed, converged: Duration, cuts: u32) -> anyhow::Result<()> {
    const SETTLE: Duration = Duration::from_secs(15);
    const REST: Duration = Duration::from_secs(30);
    println!("\n== measuring: control traffic at rest over {REST:?}, after {SETTLE:?} to settle");
    bed.sleep(SETTLE)?;
    let before: Vec<_> = (0..bed.len())
        .map(|i| bed.status(i))
        .collect::<Result<_, _>>()?;
    let t0 = Instant::now();
    bed.sleep(REST)?;
    let after: Vec<_> = (0..bed.len())
        .map(|i| bed.status(i))
        .collect::<Result<_, _>>()?;
    let dt = t0.elapsed().as_secs_f64();
    let mut babel = Vec::new();
    let mut tunnel = Vec::new();
    for (b, a) in before.iter().zip(&after) {
        let bytes = |s: &re6st::node::control::Status| s.babel.tx_bytes + s.babel.rx_bytes;
        babel.push(bytes(a).saturating_sub(bytes(b)) as f64 / dt / 2.0);
        let tun = |s: &re6st::node::control::Status| {
            s.tunnels
                .iter()
                .map(|t| t.tx_bytes + t.rx_bytes)
                .sum::<u64>()
        };
        // Tunnels that closed meanwhile make this negative: clamp.
        tunnel.push(tun(a).saturating_sub(tun(b)) as f64 / dt / 2.0);
    }
    let rss: Vec<f64> = (0..bed.len())
        .filter_map(|i| bed.vm_rss_kib(i))
        .map(|k| k as f64 / 1024.0)
        .collect();

    println!("== measuring: outage after a link cut (10 Hz ping across it)");
    let graph = bed.graph();
    let (x, y) = graph
        .pairs()
        .into_iter()
        .find(|(x, y)| *x != 0 && *y != 0)
        .or_else(|| graph.pairs().into_iter().next())
        .context("no tunnel to cut")?;
    // One cut keeps the link down 30 s; repeated cuts 10 s each (every
    // outage measured so far is far shorter), then wait for the tunnel.
    let hold = if cuts == 1 { 30 } else { 10 };
    let mut outages = Vec::new();
    for run in 1..=cuts {
        if run > 1 {
            let deadline = Instant::now() + Duration::from_secs(120);
            while !bed.graph().edges.contains_key(&(x, y)) {
                if Instant::now() > deadline {
                    bail!("the tunnel {x} <-> {y} did not come back within 120 s");
                }
                bed.sleep(Duration::from_secs(1))?;
            }
            // Let Babel prefer the direct tunnel again.
            bed.sleep(Duration::from_secs(10))?;
        }
        let probe = bed.ping_probe(x, y)?;
        bed.sleep(Duration::from_secs(3))?;
        let cut = bed.cut(x, y)?;
        bed.sleep(Duration::from_secs(hold))?;
        let result = probe.finish()?;
        drop(cut);
        println!(
            "   cut {} {} <-> {} 3 s into the probe, for {hold} s; {} of {} replies; outage {:.1} s",
            run,
            bed.name(x),
            bed.name(y),
            result.received,
            result.sent,
            result.longest_gap.as_secs_f64()
        );
        outages.push(result.longest_gap);
    }
    outages.sort();
    let outage = outages[outages.len() / 2];

    let stats = |v: &[f64]| {
        let mean = v.iter().sum::<f64>() / v.len().max(1) as f64;
        let max = v.iter().copied().fold(0.0, f64::max);
        (mean, max)
    };
    let (babel_mean, babel_max) = stats(&babel);
    let (tun_mean, tun_max) = stats(&tunnel);
    let (rss_mean, rss_max) = stats(&rss);
    println!(
        "\nfigures ({} nodes, {} build):",
        bed.len(),
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        }
    );
    println!(
        "  time to all-pairs reachability: {:.1} s",
        converged.as_secs_f64()
    );
    println!(
        "  outage after a link cut:        {:.1} s{}",
        outage.as_secs_f64(),
        if cuts > 1 {
            format!(" (median of {cuts})")
        } else {
            String::new()
        }
    );
    println!("  Babel control traffic at rest:  {babel_mean:.0} B/s per node (mean of sent+received / 2; max {babel_max:.0})");
    println!("  all tunnel traffic at rest:     {tun_mean:.0} B/s per node (max {tun_max:.0})");
    println!("  memory (VmRSS):                 {rss_mean:.1} MiB per node (max {rss_max:.1})");
    Ok(())
}
