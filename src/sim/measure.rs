//! Measures on a simulated network: hop-by-hop traces through the
//! forwarding tables (reachability, forwarding loops, black holes, path
//! length) and graph statistics of the tunnel graph (shortest distances,
//! diameter).

use std::collections::VecDeque;

use super::{NodeId, Sim};

/// Where a trace through the forwarding tables ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trace {
    /// Reached the destination after this many hops.
    Reached(u32),
    /// A node on the way had no route.
    NoRoute,
    /// The path came back to a node it had visited: a forwarding loop.
    Loop,
    /// A next hop whose tunnel is down (a black hole until the route
    /// moves).
    Dead,
}

/// Follows the forwarding tables from `from` towards `to`.
pub fn trace(sim: &Sim, from: NodeId, to: NodeId) -> Trace {
    let mut path = Vec::with_capacity(8);
    let mut at = from;
    loop {
        if at == to {
            return Trace::Reached(path.len() as u32);
        }
        let Some(next) = sim.next_hop(at, to) else {
            return Trace::NoRoute;
        };
        if !sim.tunnel_up(at, next) {
            return Trace::Dead;
        }
        if next == from || path.contains(&next) {
            return Trace::Loop;
        }
        path.push(next);
        at = next;
    }
}

/// Outcome of tracing a set of pairs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Reach {
    /// Pairs traced.
    pub pairs: u64,
    /// Pairs whose trace reached the destination.
    pub reached: u64,
    /// Pairs stopped by a missing route.
    pub no_route: u64,
    /// Pairs caught in a forwarding loop.
    pub loops: u64,
    /// Pairs stopped at a dead tunnel.
    pub dead: u64,
    /// Sum of the hop counts of the reached pairs.
    pub hops: u64,
    /// Longest reached path, in hops.
    pub max_hops: u32,
}

impl Reach {
    /// Adds one trace.
    pub fn add(&mut self, t: Trace) {
        self.pairs += 1;
        match t {
            Trace::Reached(h) => {
                self.reached += 1;
                self.hops += u64::from(h);
                self.max_hops = self.max_hops.max(h);
            }
            Trace::NoRoute => self.no_route += 1,
            Trace::Loop => self.loops += 1,
            Trace::Dead => self.dead += 1,
        }
    }

    /// Fraction of pairs reached (1 when there was none).
    pub fn fraction(&self) -> f64 {
        if self.pairs == 0 {
            1.0
        } else {
            self.reached as f64 / self.pairs as f64
        }
    }

    /// Whether every pair was reached.
    pub fn complete(&self) -> bool {
        self.reached == self.pairs
    }

    /// Average hop count of the reached pairs.
    pub fn average_hops(&self) -> f64 {
        if self.reached == 0 {
            0.0
        } else {
            self.hops as f64 / self.reached as f64
        }
    }
}

/// Whether every running node has a route to every other running node (a
/// cheap test before [`all_pairs`]): O(1) while routes are missing (the
/// network's installed-route count is below `alive × (alive − 1)`), one
/// pass over the forwarding tables otherwise.
pub fn all_routes_present(sim: &Sim) -> bool {
    let alive = sim.alive();
    let a = alive.len();
    if sim.installed_routes() < a * a.saturating_sub(1) {
        return false;
    }
    alive.iter().all(|&n| {
        sim.route_count(n) + 1 >= a
            && sim
                .fib(n)
                .is_some_and(|fib| alive.iter().all(|&d| d == n || fib[d as usize] != NONE))
    })
}

/// No route in a forwarding table (see [`Sim::fib`]).
const NONE: NodeId = NodeId::MAX;

/// Destinations resolved together: one cache line of each forwarding table.
const BLOCK: usize = 16;

/// Outcome of a trace still being resolved (see [`all_pairs`]).
const UNKNOWN: u32 = u32::MAX;
/// On the path being followed.
const ON_PATH: u32 = u32::MAX - 1;
const NO_ROUTE: u32 = u32::MAX - 2;
const LOOP: u32 = u32::MAX - 3;
const DEAD: u32 = u32::MAX - 4;

/// Traces every ordered pair of running nodes, with the same outcome per
/// pair as [`trace`], in O(N) per destination instead of O(N × hops).
///
/// For one destination the forwarding tables form a functional graph
/// (each node has at most one next hop), so the outcome of a node is its
/// next hop's plus one hop: each node's outcome is resolved once,
/// following paths until a resolved node or a node already on the path
/// (a loop: every node on the path then loops). Destinations are taken 16
/// at a time, copying one cache line of each table; the blocks are split
/// over the available cores and the counts summed, which gives the same
/// figures whatever the number of threads.
pub fn all_pairs(sim: &Sim) -> Reach {
    all_pairs_threads(sim, threads())
}

/// Cores to use for measures (at most 2 on the build machine; the
/// simulation itself decides its own).
fn threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().min(4))
}

/// The up tunnel peers of every node (sorted; none for a stopped node),
/// indexed by node.
fn tunnel_peers(sim: &Sim) -> Vec<Vec<NodeId>> {
    (0..sim.len() as NodeId)
        .map(|n| {
            if sim.is_alive(n) {
                sim.tunnel_peers(n)
            } else {
                Vec::new()
            }
        })
        .collect()
}

/// [`all_pairs`] on `threads` threads.
pub fn all_pairs_threads(sim: &Sim, threads: usize) -> Reach {
    let alive = sim.alive();
    let count = sim.len();
    // Up tunnel peers of each node, sorted, to check next hops fast.
    let up = tunnel_peers(sim);
    let fibs: Vec<Option<&[NodeId]>> = (0..count as NodeId).map(|n| sim.fib(n)).collect();
    let blocks: Vec<&[NodeId]> = alive.chunks(BLOCK).collect();
    let threads = threads.clamp(1, blocks.len().max(1));
    let per = blocks.len().div_ceil(threads);
    let work = |mine: &[&[NodeId]]| {
        let mut reach = Reach::default();
        let mut columns = vec![NONE; BLOCK * count];
        let mut state = vec![UNKNOWN; count];
        let mut path = Vec::new();
        for dests in mine {
            for (n, fib) in fibs.iter().enumerate() {
                let Some(fib) = fib else { continue };
                for (k, &d) in dests.iter().enumerate() {
                    columns[k * count + n] = fib[d as usize];
                }
            }
            for (k, &d) in dests.iter().enumerate() {
                let next = &columns[k * count..(k + 1) * count];
                resolve(d, next, &up, &alive, &mut state, &mut path, &mut reach);
            }
        }
        reach
    };
    let parts: Vec<Reach> = if threads == 1 {
        vec![work(&blocks)]
    } else {
        std::thread::scope(|s| {
            let handles: Vec<_> = blocks
                .chunks(per)
                .map(|mine| s.spawn(move || work(mine)))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_default())
                .collect()
        })
    };
    let mut total = Reach::default();
    for r in parts {
        total.pairs += r.pairs;
        total.reached += r.reached;
        total.no_route += r.no_route;
        total.loops += r.loops;
        total.dead += r.dead;
        total.hops += r.hops;
        total.max_hops = total.max_hops.max(r.max_hops);
    }
    total
}

/// Resolves every running node's trace towards `dest`, whose next hops
/// are `next` (indexed by node), and adds them to `reach`.
fn resolve(
    dest: NodeId,
    next: &[NodeId],
    up: &[Vec<NodeId>],
    alive: &[NodeId],
    state: &mut [u32],
    path: &mut Vec<NodeId>,
    reach: &mut Reach,
) {
    state.fill(UNKNOWN);
    state[dest as usize] = 0;
    for &src in alive {
        path.clear();
        let mut at = src;
        // Follow until an outcome is known.
        let outcome = loop {
            match state[at as usize] {
                UNKNOWN => {}
                ON_PATH => break LOOP,
                known => break known,
            }
            let hop = next[at as usize];
            if hop == NONE {
                state[at as usize] = NO_ROUTE;
                break NO_ROUTE;
            }
            if up[at as usize].binary_search(&hop).is_err() {
                state[at as usize] = DEAD;
                break DEAD;
            }
            state[at as usize] = ON_PATH;
            path.push(at);
            at = hop;
        };
        // Unwind: each node on the path is one hop further than the next.
        let mut o = outcome;
        for &n in path.iter().rev() {
            o = match o {
                NO_ROUTE | LOOP | DEAD => o,
                h => h + 1,
            };
            state[n as usize] = o;
        }
        if src == dest {
            continue;
        }
        reach.add(match state[src as usize] {
            NO_ROUTE => Trace::NoRoute,
            LOOP => Trace::Loop,
            DEAD => Trace::Dead,
            h => Trace::Reached(h),
        });
    }
}

/// Traces the given pairs, skipping those with an end not running.
pub fn pairs(sim: &Sim, pairs: &[(NodeId, NodeId)]) -> Reach {
    let mut reach = Reach::default();
    for &(a, b) in pairs {
        if a != b && sim.is_alive(a) && sim.is_alive(b) {
            reach.add(trace(sim, a, b));
        }
    }
    reach
}

/// Statistics of the graph of tunnels that are up.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct GraphStats {
    /// Running nodes.
    pub nodes: usize,
    /// Tunnels (undirected edges).
    pub edges: usize,
    /// Average degree.
    pub average_degree: f64,
    /// Average shortest distance in hops over the pairs measured.
    pub average_distance: f64,
    /// Largest shortest distance found (the diameter when every node was a
    /// source, a lower bound otherwise).
    pub diameter: u32,
    /// Whether every measured source reached every node.
    pub connected: bool,
    /// Breadth-first searches run (sources).
    pub sources: usize,
}

/// Shortest distances in the tunnel graph from at most `max_sources`
/// sources, spread evenly over the running nodes.
pub fn graph(sim: &Sim, max_sources: usize) -> GraphStats {
    let alive = sim.alive();
    let count = sim.len();
    let adjacency = tunnel_peers(sim);
    let degree_sum: usize = adjacency.iter().map(Vec::len).sum();
    let mut stats = GraphStats {
        nodes: alive.len(),
        edges: degree_sum / 2,
        average_degree: if alive.is_empty() {
            0.0
        } else {
            degree_sum as f64 / alive.len() as f64
        },
        connected: true,
        ..GraphStats::default()
    };
    if alive.len() < 2 {
        return stats;
    }
    let step = alive.len().div_ceil(max_sources.max(1));
    let sources: Vec<NodeId> = alive.iter().copied().step_by(step).collect();
    stats.sources = sources.len();
    // (sum of distances, pairs, largest distance, every source saw all).
    let bfs = |mine: &[NodeId]| {
        let mut dist = vec![u32::MAX; count];
        let mut queue = VecDeque::new();
        let (mut sum, mut pairs, mut diameter, mut connected) = (0u64, 0u64, 0u32, true);
        for &s in mine {
            dist.fill(u32::MAX);
            dist[s as usize] = 0;
            queue.push_back(s);
            let mut seen = 1;
            while let Some(u) = queue.pop_front() {
                let d = dist[u as usize];
                for &v in &adjacency[u as usize] {
                    if dist[v as usize] == u32::MAX {
                        dist[v as usize] = d + 1;
                        seen += 1;
                        sum += u64::from(d + 1);
                        pairs += 1;
                        diameter = diameter.max(d + 1);
                        queue.push_back(v);
                    }
                }
            }
            connected &= seen >= alive.len();
        }
        (sum, pairs, diameter, connected)
    };
    let threads = threads().clamp(1, sources.len());
    let parts: Vec<(u64, u64, u32, bool)> = std::thread::scope(|s| {
        let handles: Vec<_> = sources
            .chunks(sources.len().div_ceil(threads))
            .map(|mine| s.spawn(move || bfs(mine)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or((0, 0, 0, false)))
            .collect()
    });
    let (mut sum, mut pairs) = (0u64, 0u64);
    for (s, p, d, c) in parts {
        sum += s;
        pairs += p;
        stats.diameter = stats.diameter.max(d);
        stats.connected &= c;
    }
    stats.average_distance = if pairs == 0 {
        0.0
    } else {
        sum as f64 / pairs as f64
    };
    stats
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::node::policy::PolicyConfig;
    use crate::sim::SimConfig;

    /// Every ordered pair traced one by one (the definition).
    fn naive(sim: &Sim) -> Reach {
        let alive = sim.alive();
        let mut reach = Reach::default();
        for &a in &alive {
            for &b in &alive {
                if a != b {
                    reach.add(trace(sim, a, b));
                }
            }
        }
        reach
    }

    #[test]
    fn all_pairs_matches_tracing_each_pair_on_any_thread_count() {
        let mut sim = Sim::new(SimConfig {
            seed: 3,
            policy: PolicyConfig {
                client_count: 3,
                max_clients: 6,
                ..PolicyConfig::default()
            },
            ..SimConfig::default()
        });
        for _ in 0..40 {
            sim.add_node(true);
        }
        // Converging, converged, then just after two crashes (routes
        // through dead tunnels, towards dead nodes).
        for (step, crash) in [(5, None), (120, Some(7)), (1, Some(20)), (3, None)] {
            sim.run_for(Duration::from_secs(step));
            if let Some(c) = crash {
                sim.crash(c);
            }
            let want = naive(&sim);
            assert_eq!(all_pairs_threads(&sim, 1), want);
            assert_eq!(all_pairs_threads(&sim, 2), want);
            assert_eq!(all_pairs_threads(&sim, 3), want);
        }
        assert!(naive(&sim).reached > 0);
    }
}
