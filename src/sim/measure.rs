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
/// cheap test before [`all_pairs`]).
pub fn all_routes_present(sim: &Sim) -> bool {
    let alive = sim.alive();
    alive.iter().all(|&a| {
        sim.route_count(a) + 1 >= alive.len()
            && alive
                .iter()
                .all(|&b| a == b || sim.next_hop(a, b).is_some())
    })
}

/// Traces every ordered pair of running nodes.
pub fn all_pairs(sim: &Sim) -> Reach {
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
    let adjacency: Vec<Vec<NodeId>> = (0..count as NodeId)
        .map(|n| {
            if sim.is_alive(n) {
                sim.tunnel_peers(n)
            } else {
                Vec::new()
            }
        })
        .collect();
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
    let mut dist = vec![u32::MAX; count];
    let mut queue = VecDeque::new();
    let (mut sum, mut pairs) = (0u64, 0u64);
    for &s in alive.iter().step_by(step) {
        stats.sources += 1;
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
                    stats.diameter = stats.diameter.max(d + 1);
                    queue.push_back(v);
                }
            }
        }
        if seen < alive.len() {
            stats.connected = false;
        }
    }
    stats.average_distance = if pairs == 0 {
        0.0
    } else {
        sum as f64 / pairs as f64
    };
    stats
}
