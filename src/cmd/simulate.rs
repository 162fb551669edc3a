//! `re6st simulate`: runs a simulated network (see `re6st::sim`) and prints
//! its figures as a table; writes them and the reachability samples as CSV;
//! `--sweep` runs several sizes and draws their curve as SVG.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use re6st::node::policy::PolicyConfig;
use re6st::sim::scenario::{self, Params, Report, Scenario};
use re6st::sim::svg::{self, Panel, Series};
use re6st::sim::{Sim, SimConfig};

/// re6stnet's own simulation (`simulation/results/distance_final.csv` in
/// Nexedi/re6stnet): average distance in a random graph where each node
/// opens 10 tunnels, by number of nodes.
const RE6STNET_DISTANCE_K10: [(f64, f64); 11] = [
    (100.0, 1.81968),
    (200.0, 2.03163),
    (400.0, 2.31081),
    (800.0, 2.57407),
    (1600.0, 2.77183),
    (3200.0, 2.96714),
    (6400.0, 3.23114),
    (12800.0, 3.5067),
    (25600.0, 3.7211),
    (51200.0, 3.90563),
    (102400.0, 4.1506),
];

/// Options of `re6st simulate`.
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// Nodes at the start (node 0 is the registry's).
    #[arg(long, default_value_t = 100, value_name = "N")]
    nodes: usize,
    /// Scenario: bootstrap, crash, churn, partition, registry-loss or all.
    #[arg(long, default_value = "bootstrap", value_name = "NAME")]
    scenario: String,
    /// Outgoing tunnels per node.
    #[arg(long, default_value_t = 10, value_name = "N")]
    client_count: usize,
    /// Incoming tunnels accepted per node (default: twice client_count).
    #[arg(long, value_name = "N")]
    max_clients: Option<usize>,
    /// Seed of every random choice (same seed, same run).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Fraction of nodes behind a NAT (at most 2 outgoing tunnels, no
    /// incoming).
    #[arg(long, default_value_t = 0.0, value_name = "F")]
    nat_fraction: f64,
    /// Tunnel refresh period in seconds (0 disables refreshing).
    #[arg(long, default_value_t = 300, value_name = "SECS")]
    refresh: u64,
    /// Babel hello interval on tunnels, in seconds (the network
    /// configuration's default, as in re6stnet).
    #[arg(long, default_value_t = 15.0, value_name = "SECS")]
    hello: f64,
    /// Underlay one-way latency range in milliseconds, `MIN-MAX`.
    #[arg(long, default_value = "5-80", value_name = "MIN-MAX")]
    latency_ms: String,
    /// Random extra delay per packet, in milliseconds.
    #[arg(long, default_value_t = 2.0, value_name = "MS")]
    jitter_ms: f64,
    /// Probability of losing each packet on a tunnel.
    #[arg(long, default_value_t = 0.0, value_name = "P")]
    loss: f64,
    /// Nodes join within this many seconds.
    #[arg(long, default_value_t = 60, value_name = "SECS")]
    join_window: u64,
    /// Bootstrap in waves, each adding F times the nodes already running
    /// (joining within --join-window) once every running node reaches the
    /// registry's node; 0: everyone joins within one --join-window.
    #[arg(long, default_value_t = 0.0, value_name = "F")]
    wave_growth: f64,
    /// Steady-state window in seconds (default: two refresh periods).
    #[arg(long, value_name = "SECS")]
    steady: Option<u64>,
    /// Length of the churn, partition and registry-loss phases, in seconds.
    #[arg(long, default_value_t = 300, value_name = "SECS")]
    disturb: u64,
    /// Random pairs traced at each reachability sample.
    #[arg(long, default_value_t = 1000, value_name = "N")]
    sample_pairs: usize,
    /// Directory for the CSV files (and the sweep's SVG).
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Run the bootstrap scenario for each of these sizes and draw the
    /// curve (e.g. `100,1000,10000`).
    #[arg(long, value_name = "N,N,...", value_delimiter = ',')]
    sweep: Vec<usize>,
    /// Redraw the SVG of an existing `sweep.csv` (written next to it) and
    /// exit.
    #[arg(long, value_name = "SWEEP.CSV")]
    plot: Option<PathBuf>,
}

pub(crate) fn run(args: Args) -> anyhow::Result<()> {
    let (min, max) = args
        .latency_ms
        .split_once('-')
        .and_then(|(a, b)| Some((a.trim().parse::<u64>().ok()?, b.trim().parse::<u64>().ok()?)))
        .filter(|(a, b)| a <= b)
        .with_context(|| {
            format!(
                "--latency-ms {:?}: expected MIN-MAX in milliseconds, MIN <= MAX",
                args.latency_ms
            )
        })?;
    if !(0.0..=1.0).contains(&args.nat_fraction) {
        bail!(
            "--nat-fraction {}: must be between 0 and 1",
            args.nat_fraction
        );
    }
    if !(0.0..1.0).contains(&args.loss) {
        bail!("--loss {}: must be at least 0 and below 1", args.loss);
    }
    if !(args.wave_growth >= 0.0 && args.wave_growth.is_finite()) {
        bail!(
            "--wave-growth {}: must be 0 (one join window) or a positive factor",
            args.wave_growth
        );
    }
    if !(args.hello > 0.0 && args.hello.is_finite()) {
        bail!(
            "--hello {}: must be a positive number of seconds",
            args.hello
        );
    }
    if args.nodes < 2 && args.sweep.is_empty() && args.plot.is_none() {
        bail!("--nodes {}: at least 2 nodes", args.nodes);
    }
    let policy = PolicyConfig {
        client_count: args.client_count,
        max_clients: args.max_clients.unwrap_or(2 * args.client_count),
        tunnel_refresh: Duration::from_secs(args.refresh),
        ..PolicyConfig::default()
    };
    let sim = SimConfig {
        seed: args.seed,
        policy,
        hello_interval: Duration::from_secs_f64(args.hello),
        latency_min: Duration::from_millis(min),
        latency_max: Duration::from_millis(max),
        jitter: Duration::from_secs_f64(args.jitter_ms / 1000.0),
        loss: args.loss,
        nat_fraction: args.nat_fraction,
        ..SimConfig::default()
    };
    let params = |nodes: usize| {
        let mut p = Params::new(nodes, sim.clone());
        p.join_window = Duration::from_secs(args.join_window);
        p.wave_growth = args.wave_growth;
        if let Some(s) = args.steady {
            p.steady = Duration::from_secs(s);
        }
        p.disturb = Duration::from_secs(args.disturb);
        p.sample_pairs = args.sample_pairs;
        p
    };
    if let Some(dir) = &args.out {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("--out {}: cannot create the directory", dir.display()))?;
    }
    if let Some(csv) = &args.plot {
        return replot(csv);
    }
    if !args.sweep.is_empty() {
        return sweep(&args, &params);
    }
    let scenarios = if args.scenario == "all" {
        Scenario::ALL.to_vec()
    } else {
        vec![Scenario::from_name(&args.scenario).with_context(|| {
            format!(
                "--scenario {:?}: expected bootstrap, crash, churn, partition, registry-loss or all",
                args.scenario
            )
        })?]
    };
    for s in scenarios {
        let report = run_one(s, &params(args.nodes));
        println!("{}", report.table());
        if let Some(dir) = &args.out {
            let stem = format!("{}-{}", s.name(), args.nodes);
            write(dir.join(format!("{stem}.csv")), &report.figures_csv())?;
            write(
                dir.join(format!("{stem}-samples.csv")),
                &report.samples_csv(),
            )?;
        }
    }
    Ok(())
}

/// Runs one scenario, adding wall time and memory to its figures.
fn run_one(s: Scenario, params: &Params) -> Report {
    let start = Instant::now();
    let cpu_before = cpu_seconds();
    let rss_before = rss_kib();
    let mut at_end = Vec::new();
    let mut report = scenario::run_with(s, params, |sim: &Sim| {
        let rss = rss_kib();
        let nodes = sim.alive().len().max(1) as u64;
        at_end.push(("rss_mib".to_owned(), format!("{}", rss / 1024)));
        at_end.push((
            "rss_per_node_kib".to_owned(),
            format!("{}", rss.saturating_sub(rss_before) / nodes),
        ));
    });
    report.figures.extend(at_end);
    report.figures.push((
        "peak_rss_mib".to_owned(),
        format!("{}", peak_rss_kib() / 1024),
    ));
    report.figures.push((
        "wall_s".to_owned(),
        format!("{:.1}", start.elapsed().as_secs_f64()),
    ));
    report.figures.push((
        "cpu_s".to_owned(),
        format!("{:.1}", cpu_seconds() - cpu_before),
    ));
    report
}

/// Columns of `sweep.csv`.
const SWEEP_COLUMNS: [&str; 15] = [
    "nodes",
    "client_count",
    "all_pairs_after_last_join_s",
    "steady_route_path_avg_hops",
    "steady_graph_avg_distance",
    "steady_graph_diameter",
    "steady_loops",
    "steady_all_pairs_reached",
    "babel_packets_per_node_s",
    "babel_bytes_per_node_s",
    "peer_messages_per_node_s",
    "steady_babel_routes_per_node",
    "rss_per_node_kib",
    "wall_s",
    "cpu_s",
];

/// Runs the bootstrap scenario at each size; rewrites `sweep.csv` and
/// `sweep.svg` after each one, so a long sweep leaves its results so far.
fn sweep(args: &Args, params: &dyn Fn(usize) -> Params) -> anyhow::Result<()> {
    let dir = args.out.clone().unwrap_or_else(|| PathBuf::from("."));
    let mut csv = SWEEP_COLUMNS.join(",");
    csv.push('\n');
    for &n in &args.sweep {
        let report = run_one(Scenario::Bootstrap, &params(n));
        println!("{}", report.table());
        let row: Vec<String> = SWEEP_COLUMNS
            .iter()
            .map(|c| report.figure(c).unwrap_or("").to_owned())
            .collect();
        let _ = writeln!(csv, "{}", row.join(","));
        write(dir.join("sweep.csv"), &csv)?;
        write(dir.join("sweep.svg"), &plot(&csv))?;
    }
    print!("{csv}");
    println!("wrote {0}/sweep.csv and {0}/sweep.svg", dir.display());
    Ok(())
}

/// Redraws the SVG of a `sweep.csv` (`--plot`), next to it.
fn replot(csv_path: &std::path::Path) -> anyhow::Result<()> {
    let csv = std::fs::read_to_string(csv_path)
        .with_context(|| format!("--plot {}: cannot read it", csv_path.display()))?;
    if !csv.starts_with("nodes,") {
        bail!(
            "--plot {}: not a sweep.csv (its header must start with \"nodes,\")",
            csv_path.display()
        );
    }
    let out = csv_path.with_extension("svg");
    write(out.clone(), &plot(&csv))?;
    println!("wrote {}", out.display());
    Ok(())
}

/// The sweep's chart from its CSV: path lengths (with re6stnet's figures
/// for k = 10 when every row has client_count 10) and control traffic
/// against the number of nodes.
fn plot(csv: &str) -> String {
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().unwrap_or("").split(',').collect();
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    let column = |name: &str| header.iter().position(|h| *h == name);
    let curve = |name: &str| -> Vec<(f64, f64)> {
        let (Some(x), Some(y)) = (column("nodes"), column(name)) else {
            return Vec::new();
        };
        rows.iter()
            .filter_map(|r| Some((r.get(x)?.parse().ok()?, r.get(y)?.parse().ok()?)))
            .collect()
    };
    let clients: Vec<(f64, f64)> = curve("client_count");
    let k10 = !clients.is_empty() && clients.iter().all(|&(_, k)| k == 10.0);
    let max_n = curve("nodes").iter().map(|&(n, _)| n).fold(100.0, f64::max);
    let mut path_series = vec![
        Series {
            name: "route path (hops, traced through the routing tables)".into(),
            points: curve("steady_route_path_avg_hops"),
            colour: "#c0392b",
            dashed: false,
        },
        Series {
            name: "shortest path in the tunnel graph".into(),
            points: curve("steady_graph_avg_distance"),
            colour: "#2471a3",
            dashed: false,
        },
    ];
    if k10 {
        path_series.push(Series {
            name: "re6stnet simulation, k=10 (distance_final.csv)".into(),
            points: RE6STNET_DISTANCE_K10
                .iter()
                .copied()
                .filter(|&(n, _)| n <= max_n * 1.5)
                .collect(),
            colour: "#7f8c8d",
            dashed: true,
        });
    }
    let panels = [
        Panel {
            title: "Average path length".into(),
            y_label: "hops".into(),
            series: path_series,
        },
        Panel {
            title: "Babel control traffic per node (steady state)".into(),
            y_label: "bytes/s".into(),
            series: vec![Series {
                name: "Babel bytes sent per node per second".into(),
                points: curve("babel_bytes_per_node_s"),
                colour: "#1e8449",
                dashed: false,
            }],
        },
        Panel {
            title: "Babel packets per node (steady state)".into(),
            y_label: "packets/s".into(),
            series: vec![Series {
                name: "Babel packets sent per node per second".into(),
                points: curve("babel_packets_per_node_s"),
                colour: "#884ea0",
                dashed: false,
            }],
        },
    ];
    svg::chart(&panels, "nodes (log scale)")
}

fn write(path: PathBuf, text: &str) -> anyhow::Result<()> {
    std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))
}

/// A field of `/proc/self/status`, in KiB (0 when unavailable).
fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// User and system CPU time of this process, in seconds (from
/// `/proc/self/stat`, in clock ticks of 1/100 s; 0 when unavailable).
fn cpu_seconds() -> f64 {
    let ticks = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            // Fields after the command name (which may contain spaces).
            let rest = s.rsplit_once(')')?.1.to_owned();
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let utime: u64 = fields.get(11)?.parse().ok()?;
            let stime: u64 = fields.get(12)?.parse().ok()?;
            Some(utime + stime)
        })
        .unwrap_or(0);
    ticks as f64 / 100.0
}

fn rss_kib() -> u64 {
    status_kib("VmRSS:")
}

fn peak_rss_kib() -> u64 {
    status_kib("VmHWM:")
}
