//! The scenarios of `re6st simulate`: bootstrap of a whole network from the
//! registry node, steady state with tunnel refresh, a crash, churn,
//! partition and heal, loss of the registry node. Each returns a
//! [`Report`]: named figures (the table) and samples of reachability over
//! time (the time series).

use std::fmt::Write as _;
use std::time::Duration;

use super::measure::{self, Reach};
use super::{NodeId, Sim, SimConfig};

/// What to simulate after the bootstrap and the steady-state window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scenario {
    /// Bootstrap and steady state only.
    Bootstrap,
    /// One node crashes; how long until no route uses it.
    Crash,
    /// Nodes crash, restart and join at random for a while.
    Churn,
    /// The underlay splits in two, then heals.
    Partition,
    /// The registry node crashes for good; nodes keep crashing and
    /// restarting from their peer caches.
    RegistryLoss,
}

impl Scenario {
    /// Every scenario, in the order `--scenario all` runs them.
    pub const ALL: [Self; 5] = [
        Self::Bootstrap,
        Self::Crash,
        Self::Churn,
        Self::Partition,
        Self::RegistryLoss,
    ];

    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Self::Bootstrap => "bootstrap",
            Self::Crash => "crash",
            Self::Churn => "churn",
            Self::Partition => "partition",
            Self::RegistryLoss => "registry-loss",
        }
    }

    /// Parses a name given by [`Scenario::name`].
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.name() == name)
    }
}

/// Parameters of a run.
#[derive(Clone, Debug)]
pub struct Params {
    /// Nodes at the start (node 0 is the registry's).
    pub nodes: usize,
    /// The network's parameters.
    pub sim: SimConfig,
    /// Nodes join at random times within this window (node 0 first).
    pub join_window: Duration,
    /// Bootstrap in waves when positive: each wave adds this many times
    /// the nodes already running (1 doubles the network), its nodes
    /// joining within `join_window`, and starts once every running node
    /// reaches the registry's node and back. 0: every node joins within
    /// one `join_window`.
    pub wave_growth: f64,
    /// Give up waiting for convergence after this long.
    pub converge_limit: Duration,
    /// Length of the steady-state window (traffic is measured over it).
    pub steady: Duration,
    /// Interval between reachability samples.
    pub sample_every: Duration,
    /// Random pairs traced at each sample.
    pub sample_pairs: usize,
    /// Sources of the breadth-first searches for graph statistics.
    pub graph_sources: usize,
    /// Length of the churn, partition and registry-loss phases.
    pub disturb: Duration,
    /// Mean interval between two churn events.
    pub churn_every: Duration,
}

impl Params {
    /// Defaults for `nodes` nodes: joins within 60 s, a steady window of
    /// two refresh periods.
    pub fn new(nodes: usize, sim: SimConfig) -> Self {
        let steady = (sim.policy.tunnel_refresh * 2).max(Duration::from_secs(60));
        Self {
            nodes,
            sim,
            join_window: Duration::from_secs(60),
            wave_growth: 0.0,
            converge_limit: Duration::from_secs(1800),
            steady,
            sample_every: Duration::from_secs(10),
            sample_pairs: 1000,
            graph_sources: 500,
            disturb: Duration::from_secs(300),
            churn_every: Duration::from_secs(5),
        }
    }
}

/// One reachability sample.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// Virtual time, in seconds.
    pub t: f64,
    /// Phase of the scenario.
    pub phase: &'static str,
    /// Running nodes.
    pub alive: usize,
    /// Outcome of the sampled pairs.
    pub reach: Reach,
}

/// Result of a run: figures in order, and samples.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Report {
    /// (name, value) in the order they were measured.
    pub figures: Vec<(String, String)>,
    /// Reachability over time.
    pub samples: Vec<Sample>,
}

impl Report {
    fn put(&mut self, name: &str, value: impl ToString) {
        let value = value.to_string();
        tracing::info!("{name} = {value}");
        self.figures.push((name.to_owned(), value));
    }

    /// A figure by name.
    pub fn figure(&self, name: &str) -> Option<&str> {
        self.figures
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The figures as an aligned two-column table.
    pub fn table(&self) -> String {
        let width = self.figures.iter().map(|(n, _)| n.len()).max().unwrap_or(0);
        let mut out = String::new();
        for (name, value) in &self.figures {
            let _ = writeln!(out, "{name:width$}  {value}");
        }
        out
    }

    /// The figures as CSV (`metric,value`).
    pub fn figures_csv(&self) -> String {
        let mut out = String::from("metric,value\n");
        for (name, value) in &self.figures {
            let _ = writeln!(out, "{name},{value}");
        }
        out
    }

    /// The samples as CSV.
    pub fn samples_csv(&self) -> String {
        let mut out =
            String::from("t_s,phase,alive,pairs,reached_fraction,no_route,loops,dead,avg_hops\n");
        for s in &self.samples {
            let _ = writeln!(
                out,
                "{:.1},{},{},{},{:.4},{},{},{},{:.3}",
                s.t,
                s.phase,
                s.alive,
                s.reach.pairs,
                s.reach.fraction(),
                s.reach.no_route,
                s.reach.loops,
                s.reach.dead,
                s.reach.average_hops()
            );
        }
        out
    }
}

/// A run in progress.
struct Run {
    sim: Sim,
    params: Params,
    report: Report,
    pairs: Vec<(NodeId, NodeId)>,
    rng: u64,
}

/// Runs `scenario`: bootstrap, steady state, then the scenario's own phase.
pub fn run(scenario: Scenario, params: &Params) -> Report {
    run_with(scenario, params, |_| {})
}

/// Like [`run`], calling `at_end` with the network before it is dropped (to
/// measure memory, for instance).
pub fn run_with(scenario: Scenario, params: &Params, at_end: impl FnOnce(&Sim)) -> Report {
    let mut run = Run {
        sim: Sim::new(params.sim.clone()),
        params: params.clone(),
        report: Report::default(),
        pairs: Vec::new(),
        rng: params.sim.seed ^ 0x7363_656e_6172_696f,
    };
    run.report.put("scenario", scenario.name());
    run.report.put("nodes", params.nodes);
    run.report
        .put("client_count", params.sim.policy.client_count);
    run.report.put("seed", params.sim.seed);
    if run.bootstrap() {
        run.steady();
        match scenario {
            Scenario::Bootstrap => {}
            Scenario::Crash => run.crash(),
            Scenario::Churn => run.churn(),
            Scenario::Partition => run.partition(),
            Scenario::RegistryLoss => run.registry_loss(),
        }
    }
    run.report.put("virtual_time_s", secs(run.sim.elapsed()));
    run.report.put("events", run.sim.events);
    at_end(&run.sim);
    run.report
}

fn secs(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64())
}

impl Run {
    fn random(&mut self) -> u64 {
        self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.random() % n.max(1) as u64) as usize
    }

    fn draw_pairs(&mut self) {
        let n = self.sim.len();
        self.pairs = (0..self.params.sample_pairs)
            .map(|_| (self.below(n) as NodeId, self.below(n) as NodeId))
            .filter(|(a, b)| a != b)
            .collect();
    }

    fn sample(&mut self, phase: &'static str) -> Reach {
        let reach = measure::pairs(&self.sim, &self.pairs);
        tracing::debug!(
            t = self.sim.elapsed().as_secs(),
            phase,
            reached = reach.fraction(),
            loops = reach.loops,
            "sample"
        );
        self.report.samples.push(Sample {
            t: self.sim.elapsed().as_secs_f64(),
            phase,
            alive: self.sim.alive().len(),
            reach,
        });
        reach
    }

    /// Runs `d`, sampling reachability every `sample_every`.
    fn run_sampled(&mut self, d: Duration, phase: &'static str) -> Reach {
        let end = self.sim.elapsed() + d;
        let mut last = Reach::default();
        while self.sim.elapsed() < end {
            let step = self.params.sample_every.min(end - self.sim.elapsed());
            self.sim.run_for(step);
            last = self.sample(phase);
        }
        last
    }

    /// Runs in steps of `step` until every pair of running nodes is
    /// reachable (or `limit`); returns the time it took.
    fn until_all_pairs(
        &mut self,
        step: Duration,
        limit: Duration,
        phase: &'static str,
    ) -> Option<Duration> {
        let start = self.sim.elapsed();
        let mut next_sample = start;
        while self.sim.elapsed() - start < limit {
            self.sim.run_for(step);
            if self.sim.elapsed() >= next_sample {
                self.sample(phase);
                next_sample += self.params.sample_every;
            }
            if measure::all_routes_present(&self.sim) && measure::all_pairs(&self.sim).complete() {
                return Some(self.sim.elapsed() - start);
            }
        }
        None
    }

    /// Starts node 0, then the others at random times in the join window
    /// (in waves if `wave_growth` is positive), and waits until all pairs
    /// are reachable.
    fn bootstrap(&mut self) -> bool {
        let n = self.params.nodes.max(2);
        for _ in 0..n {
            self.sim.add_node(false);
        }
        self.draw_pairs();
        self.sim.start(0);
        let mut next: NodeId = 1;
        let mut waves = 0;
        while (next as usize) < n {
            let size = if self.params.wave_growth > 0.0 {
                ((next as f64 * self.params.wave_growth).ceil() as usize).max(1)
            } else {
                n
            };
            let end = (next as usize + size).min(n) as NodeId;
            if waves > 0 && !self.until_joined() {
                self.report.put("waves", waves);
                self.report.put("all_pairs_reachable_s", "never");
                return false;
            }
            self.join(next..end);
            waves += 1;
            next = end;
        }
        if self.params.wave_growth > 0.0 {
            self.report.put("waves", waves);
        }
        let nat = (0..n as NodeId).filter(|&i| self.sim.is_nat(i)).count();
        self.report.put("nat_nodes", nat);
        let t = self.until_all_pairs(
            Duration::from_secs(1),
            self.params.converge_limit,
            "bootstrap",
        );
        match t {
            Some(t) => {
                self.report
                    .put("all_pairs_reachable_s", secs(self.sim.elapsed()));
                self.report.put("all_pairs_after_last_join_s", secs(t));
                true
            }
            None => {
                self.report.put("all_pairs_reachable_s", "never");
                let reach = measure::all_pairs(&self.sim);
                self.report
                    .put("reachable_fraction", format!("{:.4}", reach.fraction()));
                false
            }
        }
    }

    /// Starts the nodes of `range` at random times within the join window
    /// (from now).
    fn join(&mut self, range: std::ops::Range<NodeId>) {
        let window = self.params.join_window.as_millis().max(1) as u64;
        let start = self.sim.elapsed();
        let mut joins: Vec<(u64, NodeId)> = range.map(|i| (self.random() % window, i)).collect();
        joins.sort_unstable();
        for (at, i) in joins {
            let at = start + Duration::from_millis(at);
            if at > self.sim.elapsed() {
                self.sim.run_for(at - self.sim.elapsed());
            }
            self.sim.start(i);
        }
    }

    /// Runs until every running node has a route to the registry's node
    /// and the registry's node one to each of them (O(N) per virtual
    /// second): the end of a bootstrap wave. False after `converge_limit`.
    fn until_joined(&mut self) -> bool {
        let start = self.sim.elapsed();
        let mut next_sample = start;
        while self.sim.elapsed() - start < self.params.converge_limit {
            let alive = self.sim.alive();
            let joined = self.sim.route_count(0) + 1 >= alive.len()
                && alive.iter().all(|&a| {
                    a == 0
                        || (self.sim.next_hop(a, 0).is_some() && self.sim.next_hop(0, a).is_some())
                });
            if joined {
                tracing::info!(
                    t = self.sim.elapsed().as_secs(),
                    nodes = alive.len(),
                    "wave joined"
                );
                return true;
            }
            self.sim.run_for(Duration::from_secs(1));
            if self.sim.elapsed() >= next_sample {
                self.sample("bootstrap");
                next_sample += self.params.sample_every;
            }
        }
        false
    }

    /// The steady-state window: refresh at work; traffic and final state.
    fn steady(&mut self) {
        let before: Vec<_> = (0..self.sim.len() as NodeId)
            .map(|n| self.sim.counters(n))
            .collect();
        let d = self.params.steady;
        self.run_sampled(d, "steady");
        let alive = self.sim.alive();
        let secs_f = d.as_secs_f64();
        let (mut pkts, mut bytes, mut msgs, mut opened) = (0u64, 0u64, 0u64, 0u64);
        for &n in &alive {
            let c = self.sim.counters(n);
            let b = before[n as usize];
            pkts += c.babel_packets - b.babel_packets;
            bytes += c.babel_bytes - b.babel_bytes;
            msgs += c.peer_messages - b.peer_messages;
            opened += c.tunnels_opened - b.tunnels_opened;
        }
        let per = |x: u64| x as f64 / alive.len() as f64 / secs_f;
        self.report.put("steady_window_s", secs(d));
        self.report
            .put("babel_packets_per_node_s", format!("{:.2}", per(pkts)));
        self.report
            .put("babel_bytes_per_node_s", format!("{:.0}", per(bytes)));
        self.report
            .put("peer_messages_per_node_s", format!("{:.4}", per(msgs)));
        self.report.put(
            "tunnels_opened_per_node_per_refresh",
            format!(
                "{:.2}",
                opened as f64
                    / alive.len() as f64
                    / (secs_f / self.params.sim.policy.tunnel_refresh.as_secs_f64().max(1.0))
            ),
        );
        self.final_state("steady");
    }

    /// Reachability, loops, path lengths, tunnel counts, routes.
    fn final_state(&mut self, prefix: &str) {
        let reach = measure::all_pairs(&self.sim);
        let put = |r: &mut Report, name: &str, v: String| r.put(&format!("{prefix}_{name}"), v);
        put(
            &mut self.report,
            "all_pairs_reached",
            format!("{}/{}", reach.reached, reach.pairs),
        );
        put(&mut self.report, "loops", reach.loops.to_string());
        put(
            &mut self.report,
            "route_path_avg_hops",
            format!("{:.3}", reach.average_hops()),
        );
        put(
            &mut self.report,
            "route_path_max_hops",
            reach.max_hops.to_string(),
        );
        let g = measure::graph(&self.sim, self.params.graph_sources);
        put(
            &mut self.report,
            "graph_avg_distance",
            format!("{:.3}", g.average_distance),
        );
        put(&mut self.report, "graph_diameter", g.diameter.to_string());
        put(
            &mut self.report,
            "graph_avg_degree",
            format!("{:.2}", g.average_degree),
        );
        let alive = self.sim.alive();
        let short = alive
            .iter()
            .filter(|&&n| {
                let (up, target) = self.sim.outgoing(n);
                up < target
            })
            .count();
        put(
            &mut self.report,
            "nodes_below_client_count",
            short.to_string(),
        );
        let max_in = alive
            .iter()
            .map(|&n| self.sim.incoming(n))
            .max()
            .unwrap_or(0);
        put(&mut self.report, "max_incoming", max_in.to_string());
        let babel: usize = alive.iter().map(|&n| self.sim.babel_route_count(n)).sum();
        put(
            &mut self.report,
            "babel_routes_per_node",
            format!("{:.0}", babel as f64 / alive.len().max(1) as f64),
        );
        let fib: usize = alive.iter().map(|&n| self.sim.route_count(n)).sum();
        put(
            &mut self.report,
            "installed_routes_per_node",
            format!("{:.0}", fib as f64 / alive.len().max(1) as f64),
        );
    }

    /// A random running node other than the registry's.
    fn random_alive(&mut self) -> Option<NodeId> {
        let alive: Vec<NodeId> = self.sim.alive().into_iter().filter(|&n| n != 0).collect();
        if alive.is_empty() {
            return None;
        }
        let k = self.below(alive.len());
        Some(alive[k])
    }

    fn crash(&mut self) {
        let Some(victim) = self.random_alive() else {
            return;
        };
        self.report.put("crashed_node", victim);
        self.sim.crash(victim);
        let start = self.sim.elapsed();
        let limit = Duration::from_secs(300);
        let step = Duration::from_millis(100);
        let (mut via, mut to, mut all) = (None, None, None);
        while self.sim.elapsed() - start < limit && (via.is_none() || to.is_none() || all.is_none())
        {
            self.sim.run_for(step);
            let alive = self.sim.alive();
            let t = self.sim.elapsed() - start;
            if via.is_none()
                && alive.iter().all(|&n| {
                    alive
                        .iter()
                        .all(|&d| self.sim.next_hop(n, d) != Some(victim))
                })
            {
                via = Some(t);
            }
            if to.is_none()
                && alive
                    .iter()
                    .all(|&n| self.sim.next_hop(n, victim).is_none())
            {
                to = Some(t);
            }
            if all.is_none() && via.is_some() && measure::all_pairs(&self.sim).complete() {
                all = Some(t);
            }
        }
        let show = |d: Option<Duration>| d.map_or_else(|| "never".to_owned(), secs);
        self.report.put("crash_no_route_via_it_s", show(via));
        self.report.put("crash_no_route_to_it_s", show(to));
        self.report.put("crash_all_pairs_again_s", show(all));
        self.final_state("after_crash");
    }

    fn churn(&mut self) {
        let end = self.sim.elapsed() + self.params.disturb;
        let (mut crashes, mut restarts, mut joins) = (0, 0, 0);
        let mut next_sample = self.sim.elapsed();
        let mut worst = 1.0f64;
        let mut loops = 0;
        while self.sim.elapsed() < end {
            let mean = self.params.churn_every.as_millis().max(1) as u64;
            let gap = Duration::from_millis(self.random() % (2 * mean) + 1);
            self.sim.run_for(gap.min(end - self.sim.elapsed()));
            let crashed: Vec<NodeId> = (1..self.sim.len() as NodeId)
                .filter(|&n| !self.sim.is_alive(n))
                .collect();
            match self.below(10) {
                0..=3 => {
                    if let Some(v) = self.random_alive() {
                        self.sim.crash(v);
                        crashes += 1;
                    }
                }
                4..=7 if !crashed.is_empty() => {
                    let k = self.below(crashed.len());
                    self.sim.start(crashed[k]);
                    restarts += 1;
                }
                _ => {
                    self.sim.add_node(true);
                    joins += 1;
                }
            }
            if self.sim.elapsed() >= next_sample {
                let r = self.sample("churn");
                worst = worst.min(r.fraction());
                loops += r.loops;
                next_sample += self.params.sample_every;
            }
        }
        self.report.put("churn_crashes", crashes);
        self.report.put("churn_restarts", restarts);
        self.report.put("churn_joins", joins);
        self.report
            .put("churn_worst_sampled_reachability", format!("{worst:.4}"));
        self.report.put("churn_sampled_loops", loops);
        self.draw_pairs();
        let t = self.until_all_pairs(
            Duration::from_secs(1),
            self.params.converge_limit,
            "after-churn",
        );
        self.report.put(
            "churn_all_pairs_again_s",
            t.map_or_else(|| "never".to_owned(), secs),
        );
        self.final_state("after_churn");
    }

    fn partition(&mut self) {
        let split = (self.sim.len() / 2) as NodeId;
        self.sim.set_partition(Some(split));
        let mut worst_inside = 1.0f64;
        let end = self.sim.elapsed() + self.params.disturb;
        let side_pairs: Vec<(NodeId, NodeId)> = self
            .pairs
            .iter()
            .copied()
            .filter(|&(a, b)| (a < split) == (b < split))
            .collect();
        while self.sim.elapsed() < end {
            let step = self.params.sample_every.min(end - self.sim.elapsed());
            self.sim.run_for(step);
            self.sample("partitioned");
            let inside = measure::pairs(&self.sim, &side_pairs);
            worst_inside = worst_inside.min(inside.fraction());
        }
        let inside = measure::pairs(&self.sim, &side_pairs);
        self.report.put("partition_s", secs(self.params.disturb));
        self.report.put(
            "partition_same_side_reachability_end",
            format!("{:.4}", inside.fraction()),
        );
        self.sim.set_partition(None);
        let t = self.until_all_pairs(Duration::from_secs(1), self.params.converge_limit, "healed");
        self.report.put(
            "heal_all_pairs_again_s",
            t.map_or_else(|| "never".to_owned(), secs),
        );
        self.report.put(
            "partition_same_side_worst_reachability",
            format!("{worst_inside:.4}"),
        );
        self.final_state("after_heal");
    }

    fn registry_loss(&mut self) {
        self.sim.crash(0);
        let t = self.until_all_pairs(
            Duration::from_secs(1),
            self.params.converge_limit,
            "registry-lost",
        );
        self.report.put(
            "registry_lost_all_pairs_again_s",
            t.map_or_else(|| "never".to_owned(), secs),
        );
        // Nodes keep crashing and restarting from their caches.
        let end = self.sim.elapsed() + self.params.disturb;
        let mut restarts = 0;
        while self.sim.elapsed() < end {
            let gap = self.params.churn_every.min(end - self.sim.elapsed());
            if let Some(v) = self.random_alive() {
                self.sim.crash(v);
                self.sim.run_for(gap);
                self.sim.start(v);
                restarts += 1;
            } else {
                self.sim.run_for(gap);
            }
            if restarts % 4 == 0 {
                self.sample("registry-lost");
            }
        }
        self.report.put("registry_lost_restarts", restarts);
        let t = self.until_all_pairs(
            Duration::from_secs(1),
            self.params.converge_limit,
            "registry-lost",
        );
        self.report.put(
            "registry_lost_all_pairs_after_restarts_s",
            t.map_or_else(|| "never".to_owned(), secs),
        );
        self.final_state("registry_lost");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::policy::PolicyConfig;

    /// A small network that converges in a few seconds of debug build.
    fn params(nodes: usize, seed: u64, nat: f64) -> Params {
        let sim = SimConfig {
            seed,
            nat_fraction: nat,
            policy: PolicyConfig {
                client_count: 4,
                max_clients: 10,
                tunnel_refresh: Duration::from_secs(60),
                ..PolicyConfig::default()
            },
            ..SimConfig::default()
        };
        let mut p = Params::new(nodes, sim);
        p.join_window = Duration::from_secs(20);
        p.converge_limit = Duration::from_secs(600);
        p.steady = Duration::from_secs(120);
        p.disturb = Duration::from_secs(60);
        p.sample_pairs = 200;
        p
    }

    fn figure(r: &Report, name: &str) -> String {
        r.figure(name)
            .unwrap_or_else(|| panic!("no figure {name} in\n{}", r.table()))
            .to_owned()
    }

    fn seconds(r: &Report, name: &str) -> f64 {
        figure(r, name)
            .parse()
            .unwrap_or_else(|_| panic!("{name} is not a number in\n{}", r.table()))
    }

    #[test]
    fn bootstrap_reaches_every_pair_without_loops_and_keeps_tunnel_counts() {
        let p = params(80, 7, 0.25);
        let mut checked = false;
        let report = run_with(Scenario::Bootstrap, &p, |sim| {
            let alive = sim.alive();
            assert_eq!(alive.len(), 80);
            let mut at_target = 0;
            for &n in &alive {
                let (up, target) = sim.outgoing(n);
                let want = if sim.is_nat(n) { 2 } else { 4 };
                assert_eq!(target, want, "node {n}");
                assert!(up <= target, "node {n}: {up} outgoing tunnels up");
                assert!(up + 1 >= target, "node {n}: {up} of {target} tunnels up");
                at_target += usize::from(up == target);
                assert!(sim.incoming(n) <= 10, "node {n} accepted too many");
                if sim.is_nat(n) {
                    assert_eq!(sim.incoming(n), 0, "NATed node {n} accepted a tunnel");
                }
            }
            assert!(at_target * 10 >= alive.len() * 9, "{at_target} at target");
            checked = true;
        });
        assert!(checked, "never converged:\n{}", report.table());
        assert_ne!(figure(&report, "all_pairs_reachable_s"), "never");
        assert!(figure(&report, "nat_nodes").parse::<usize>().unwrap_or(0) > 0);
        assert_eq!(figure(&report, "steady_all_pairs_reached"), "6320/6320");
        assert_eq!(figure(&report, "steady_loops"), "0");
        let steady = report.samples.iter().filter(|s| s.phase == "steady");
        for s in steady {
            assert_eq!(s.reach.loops, 0, "loop at {} s", s.t);
        }
    }

    #[test]
    fn a_bootstrap_in_waves_doubles_the_network_until_every_pair_is_reachable() {
        let mut p = params(40, 13, 0.0);
        p.wave_growth = 1.0;
        p.join_window = Duration::from_secs(5);
        p.steady = Duration::from_secs(30);
        let report = run(Scenario::Bootstrap, &p);
        // Node 0, then waves of 1, 2, 4, 8 and 16 nodes, and the last 8.
        assert_eq!(figure(&report, "waves"), "6", "{}", report.table());
        assert_eq!(figure(&report, "steady_all_pairs_reached"), "1560/1560");
        assert_eq!(figure(&report, "steady_loops"), "0");
    }

    #[test]
    fn a_crashed_node_is_routed_around() {
        let report = run(Scenario::Crash, &params(60, 3, 0.0));
        assert!(
            seconds(&report, "crash_no_route_via_it_s") < 60.0,
            "{}",
            report.table()
        );
        assert!(
            seconds(&report, "crash_all_pairs_again_s") < 120.0,
            "{}",
            report.table()
        );
        assert_eq!(figure(&report, "after_crash_loops"), "0");
    }

    #[test]
    fn one_seed_gives_one_run() {
        let p = params(50, 11, 0.1);
        let a = run(Scenario::Bootstrap, &p);
        let b = run(Scenario::Bootstrap, &p);
        assert_eq!(a, b);
        assert!(!a.samples.is_empty());
    }

    #[test]
    fn a_partition_heals_and_the_registry_is_not_needed() {
        let report = run(Scenario::Partition, &params(50, 5, 0.0));
        assert!(
            seconds(&report, "heal_all_pairs_again_s") < 600.0,
            "{}",
            report.table()
        );
        assert_eq!(figure(&report, "after_heal_loops"), "0");
        let report = run(Scenario::RegistryLoss, &params(50, 5, 0.0));
        assert!(
            seconds(&report, "registry_lost_all_pairs_after_restarts_s") < 600.0,
            "{}",
            report.table()
        );
        assert_eq!(figure(&report, "registry_lost_loops"), "0");
    }

    #[test]
    fn churn_settles_back_to_full_reachability() {
        let report = run(Scenario::Churn, &params(50, 9, 0.2));
        assert!(
            seconds(&report, "churn_all_pairs_again_s") < 600.0,
            "{}",
            report.table()
        );
        assert_eq!(figure(&report, "after_churn_loops"), "0");
        assert!(figure(&report, "churn_joins").parse::<u32>().unwrap_or(0) > 0);
    }
}
