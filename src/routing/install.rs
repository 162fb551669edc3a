//! Applies the router's route changes to the kernel, in order, many in
//! flight at once.
//!
//! Babel metrics are not kernel priorities: every route goes in with the
//! same configured priority (babeld's `kernel-priority`, 0 by default), so a
//! next-hop change keeps the kernel's route key and is one atomic
//! `NLM_F_REPLACE`.

use babel::{KernelRoute, RouteChange};
use tokio::sync::mpsc;

use crate::kernel::{self, Net, Route, RouteOp, RoutePipeline, TABLE_MAIN};

/// Where and how routes are installed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InstallConfig {
    /// Routing table (main by default).
    pub table: u32,
    /// Kernel priority of every route.
    pub priority: u32,
    /// Requests in flight at most.
    pub in_flight: usize,
}

impl Default for InstallConfig {
    fn default() -> Self {
        Self {
            table: TABLE_MAIN,
            priority: 0,
            in_flight: kernel::pipeline::DEFAULT_IN_FLIGHT,
        }
    }
}

/// Counters of what the installer did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InstallStats {
    /// Requests the kernel applied.
    pub applied: u64,
    /// Requests the kernel refused (logged).
    pub failed: u64,
}

impl InstallConfig {
    /// The kernel route for a Babel route.
    pub fn route(&self, r: &KernelRoute) -> Route {
        let mut route = Route::new(net(r.prefix));
        route.src = r.src_prefix.map(net);
        route.gateway = Some(r.next_hop);
        route.ifindex = Some(r.ifindex);
        route.priority = self.priority;
        route.table = self.table;
        route
    }

    /// The kernel requests for one change, in order.
    pub fn ops(&self, change: &RouteChange) -> impl Iterator<Item = RouteOp> {
        let (first, second) = match change {
            RouteChange::Add(r) => (RouteOp::Replace(self.route(r)), None),
            RouteChange::Replace { old, new } => {
                let (old, new) = (self.route(old), self.route(new));
                if (old.dst, old.src) == (new.dst, new.src) {
                    (RouteOp::Replace(new), None)
                } else {
                    (
                        RouteOp::Replace(new),
                        Some(RouteOp::Remove(self.removal(old))),
                    )
                }
            }
            RouteChange::Remove(r) => (RouteOp::Remove(self.removal(self.route(r))), None),
        };
        std::iter::once(first).chain(second)
    }

    /// A deletion matching the route by key (destination, source, table,
    /// priority and our protocol) whatever its next hop, so it removes the
    /// route even if a replacement we were not told about moved it.
    fn removal(&self, mut route: Route) -> Route {
        route.gateway = None;
        route.ifindex = None;
        route
    }
}

/// Reads route changes from `changes` and applies them until the channel
/// closes and every request is acknowledged. Failures are logged, not
/// fatal: the router's view stays authoritative and the next change for the
/// same destination repairs the kernel's.
pub async fn run(
    config: InstallConfig,
    mut changes: mpsc::UnboundedReceiver<RouteChange>,
) -> Result<InstallStats, kernel::Error> {
    let mut pipeline = RoutePipeline::new(config.in_flight)?;
    let mut stats = InstallStats::default();
    let mut open = true;
    loop {
        while open && !pipeline.is_full() {
            match changes.try_recv() {
                Ok(change) => config.ops(&change).for_each(|op| pipeline.submit(op)),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => open = false,
            }
        }
        if pipeline.in_flight() == 0 {
            if !open {
                return Ok(stats);
            }
            match changes.recv().await {
                Some(change) => config.ops(&change).for_each(|op| pipeline.submit(op)),
                None => open = false,
            }
            continue;
        }
        if let Some(done) = pipeline.next().await {
            match done.result {
                Ok(()) => stats.applied += 1,
                Err(e) => {
                    stats.failed += 1;
                    if matches!(done.op, RouteOp::Remove(_)) && e.errno() == Some(libc::ESRCH) {
                        tracing::debug!("{e}");
                    } else {
                        tracing::warn!("{e}");
                    }
                }
            }
        }
    }
}

fn net(p: babel::Prefix) -> Net {
    // A babel prefix is already a valid prefix: its length fits its family.
    Net::new(p.addr(), p.len()).expect("babel prefixes have valid lengths")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(prefix: &str, src: Option<&str>, hop: &str) -> KernelRoute {
        KernelRoute {
            prefix: prefix.parse().unwrap(),
            src_prefix: src.map(|s| s.parse().unwrap()),
            next_hop: hop.parse().unwrap(),
            ifindex: 3,
            metric: 96,
        }
    }

    #[test]
    fn changes_become_requests() {
        let c = InstallConfig {
            table: 100,
            priority: 9,
            ..InstallConfig::default()
        };
        let a = route("2001:db8::/32", Some("2001:db8:1::/48"), "fe80::1");
        let b = route("2001:db8::/32", Some("2001:db8:1::/48"), "fe80::2");
        let other = route("2001:db9::/32", None, "fe80::2");

        let add: Vec<_> = c.ops(&RouteChange::Add(a)).collect();
        let want = c.route(&a);
        assert_eq!(add, [RouteOp::Replace(want)]);
        assert_eq!(want.table, 100);
        assert_eq!(want.priority, 9);
        assert_eq!(want.src.unwrap().to_string(), "2001:db8:1::/48");
        assert_eq!(want.gateway, Some("fe80::1".parse().unwrap()));

        let replace: Vec<_> = c.ops(&RouteChange::Replace { old: a, new: b }).collect();
        assert_eq!(replace, [RouteOp::Replace(c.route(&b))]);

        let moved: Vec<_> = c
            .ops(&RouteChange::Replace { old: a, new: other })
            .collect();
        assert_eq!(moved.len(), 2);
        assert_eq!(moved[0], RouteOp::Replace(c.route(&other)));
        let RouteOp::Remove(gone) = moved[1] else {
            panic!("{moved:?}")
        };
        assert_eq!(
            (gone.dst, gone.gateway, gone.ifindex),
            (c.route(&a).dst, None, None)
        );

        let remove: Vec<_> = c.ops(&RouteChange::Remove(b)).collect();
        let RouteOp::Remove(gone) = remove[0] else {
            panic!("{remove:?}")
        };
        assert_eq!((gone.dst, gone.src), (want.dst, want.src));
    }
}
