//! The route table: one entry per (prefix, source prefix), holding the routes
//! learned from each neighbour, with feasibility-aware selection and babeld's
//! smoothed-metric hysteresis (RFC 8966 §3.5.4, §3.6; RFC 9079 §4).

use std::hash::{Hash, Hasher};
use std::net::IpAddr;

use super::hash::FxHashMap;
use super::neighbour::NeighbourId;
use super::source::Sources;
use super::timer::Time;
use super::{RouterId, INFINITY};
use crate::wire::Prefix;

/// Half-life of the smoothed metric (babeld's `smoothing-half-life`).
pub(crate) const SMOOTHING_HALF_LIFE_MS: Time = 4_000;

/// A destination: prefix plus source prefix. Routes that are not
/// source-specific have the default prefix of their family as source, so
/// that a single key type covers RFC 8966 and RFC 9079 routes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct RouteKey {
    pub(crate) prefix: Prefix,
    pub(crate) src: Prefix,
}

/// Hashes both prefixes as five words (the derived hash writes each
/// address byte by byte with discriminants and lengths; this is the hot
/// path of every update).
impl Hash for RouteKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        let words = |p: &Prefix| -> (u64, u64) {
            let bits = match p.addr() {
                IpAddr::V6(a) => u128::from(a),
                IpAddr::V4(a) => u128::from(u32::from(a)) | 1 << 127,
            };
            ((bits >> 64) as u64, bits as u64)
        };
        let (a, b) = words(&self.prefix);
        let (c, d) = words(&self.src);
        state.write_u64(a);
        state.write_u64(b);
        state.write_u64(c);
        state.write_u64(d);
        state.write_u64(u64::from(self.prefix.len()) << 8 | u64::from(self.src.len()));
    }
}

impl RouteKey {
    pub(crate) fn new(prefix: Prefix, src: Option<Prefix>) -> Self {
        let src = src.unwrap_or(if prefix.is_ipv4() {
            Prefix::V4_DEFAULT
        } else {
            Prefix::V6_DEFAULT
        });
        Self { prefix, src }
    }

    /// The source prefix, or `None` when the route is not source-specific.
    pub(crate) fn src(&self) -> Option<Prefix> {
        (!self.src.is_default()).then_some(self.src)
    }
}

/// A route learned from one neighbour.
#[derive(Debug, Clone)]
pub(crate) struct Route {
    pub(crate) neighbour: NeighbourId,
    pub(crate) router_id: RouterId,
    pub(crate) seqno: u16,
    /// The metric the neighbour advertised.
    pub(crate) refmetric: u16,
    /// Metric added by the input filter.
    pub(crate) add_metric: u16,
    /// `refmetric + add_metric + neighbour cost`, saturated at infinity.
    pub(crate) metric: u16,
    pub(crate) smoothed: u16,
    pub(crate) smoothed_at: Time,
    /// Update interval announced by the neighbour, in centiseconds.
    pub(crate) interval_cs: u16,
    pub(crate) expires: Time,
    pub(crate) next_hop: IpAddr,
}

impl Route {
    /// babeld's smoothed metric: decays towards the metric with a half-life
    /// of four seconds, so that a route must stay better for a while before
    /// it displaces the selected one.
    pub(crate) fn smoothed(&self, now: Time) -> u16 {
        if self.metric == INFINITY || self.smoothed == INFINITY {
            return self.metric;
        }
        let dt = now.saturating_sub(self.smoothed_at) as f64;
        let factor = (-(dt / SMOOTHING_HALF_LIFE_MS as f64) * std::f64::consts::LN_2).exp();
        let m = f64::from(self.metric);
        let s = m + (f64::from(self.smoothed) - m) * factor;
        s.round().clamp(0.0, f64::from(INFINITY - 1)) as u16
    }

    /// Sets the metric, folding the elapsed time into the smoothed value.
    pub(crate) fn set_metric(&mut self, metric: u16, now: Time) {
        if metric == self.metric {
            return;
        }
        if self.metric == INFINITY || metric == INFINITY {
            self.smoothed = metric;
        } else {
            self.smoothed = self.smoothed(now);
        }
        self.smoothed_at = now;
        self.metric = metric;
    }
}

/// What the kernel holds for an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Installed {
    pub(crate) next_hop: IpAddr,
    pub(crate) ifindex: u32,
    pub(crate) metric: u16,
}

/// All routes to one destination.
#[derive(Debug, Clone, Default)]
pub(crate) struct Entry {
    pub(crate) routes: Vec<Route>,
    /// The neighbour of the selected route.
    pub(crate) selected: Option<NeighbourId>,
    pub(crate) installed: Option<Installed>,
}

impl Entry {
    pub(crate) fn route(&self, neighbour: NeighbourId) -> Option<&Route> {
        self.routes.iter().find(|r| r.neighbour == neighbour)
    }

    pub(crate) fn route_mut(&mut self, neighbour: NeighbourId) -> Option<&mut Route> {
        self.routes.iter_mut().find(|r| r.neighbour == neighbour)
    }

    pub(crate) fn selected_route(&self) -> Option<&Route> {
        self.selected.and_then(|n| self.route(n))
    }

    pub(crate) fn remove(&mut self, neighbour: NeighbourId) -> Option<Route> {
        let i = self.routes.iter().position(|r| r.neighbour == neighbour)?;
        Some(self.routes.swap_remove(i))
    }

    /// Chooses the route to use (RFC 8966 §3.6): the feasible route of least
    /// metric, but a selected route is only displaced by one that is better
    /// both in metric and in smoothed metric (babeld's hysteresis), unless
    /// it has become infinite or unfeasible.
    pub(crate) fn choose(
        &self,
        key: &RouteKey,
        sources: &Sources,
        now: Time,
    ) -> Option<NeighbourId> {
        let usable = |r: &Route| {
            r.metric < INFINITY && sources.is_feasible(key, &r.router_id, r.seqno, r.refmetric)
        };
        let current = self.selected_route().filter(|r| usable(r));
        let best = self
            .routes
            .iter()
            .filter(|r| usable(r))
            .min_by_key(|r| (r.metric, Some(r.neighbour) != self.selected, r.neighbour))?;
        match current {
            None => Some(best.neighbour),
            Some(cur) if cur.neighbour == best.neighbour => Some(cur.neighbour),
            Some(cur) => {
                if best.metric < cur.metric && best.smoothed(now) < cur.smoothed(now) {
                    Some(best.neighbour)
                } else {
                    Some(cur.neighbour)
                }
            }
        }
    }
}

/// The route table.
#[derive(Debug, Default)]
pub(crate) struct Table {
    pub(crate) entries: FxHashMap<RouteKey, Entry>,
    /// Number of route records (sum of `routes.len()`).
    pub(crate) routes: usize,
}

impl Table {
    pub(crate) fn get(&self, key: &RouteKey) -> Option<&Entry> {
        self.entries.get(key)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::net::Ipv6Addr;

    use super::*;

    pub(crate) fn key(s: &str) -> RouteKey {
        RouteKey::new(s.parse().unwrap(), None)
    }

    fn route(neighbour: NeighbourId, metric: u16, seqno: u16) -> Route {
        Route {
            neighbour,
            router_id: [neighbour as u8; 8],
            seqno,
            refmetric: metric.saturating_sub(96),
            add_metric: 0,
            metric,
            smoothed: metric,
            smoothed_at: 0,
            interval_cs: 1600,
            expires: 100_000,
            next_hop: IpAddr::V6(Ipv6Addr::LOCALHOST),
        }
    }

    #[test]
    fn key_normalises_source() {
        let k = key("2001:db8::/64");
        assert_eq!(k.src(), None);
        let s: Prefix = "2001:db8:1::/48".parse().unwrap();
        let k2 = RouteKey::new("::/0".parse().unwrap(), Some(s));
        assert_eq!(k2.src(), Some(s));
        let v4 = key("10.0.0.0/8");
        assert_eq!(v4.src, Prefix::V4_DEFAULT);
    }

    #[test]
    fn smoothing_decays_with_half_life() {
        let mut r = route(1, 1000, 0);
        r.set_metric(200, 0);
        assert_eq!(r.smoothed(0), 1000);
        assert_eq!(r.smoothed(SMOOTHING_HALF_LIFE_MS), 600);
        assert_eq!(r.smoothed(2 * SMOOTHING_HALF_LIFE_MS), 400);
        assert!(r.smoothed(60_000) <= 201);
        r.set_metric(INFINITY, 1000);
        assert_eq!(r.smoothed(5000), INFINITY);
    }

    #[test]
    fn selection_table() {
        let k = key("2001:db8::/64");
        let sources = Sources::default();
        // (routes (neighbour, metric), currently selected, expected)
        type Case = (
            Vec<(NeighbourId, u16)>,
            Option<NeighbourId>,
            Option<NeighbourId>,
        );
        let cases: Vec<Case> = vec![
            (vec![], None, None),
            (vec![(1, 300)], None, Some(1)),
            (vec![(1, 300), (2, 200)], None, Some(2)),
            (vec![(1, INFINITY), (2, 500)], Some(1), Some(2)),
            (vec![(1, INFINITY)], None, None),
            (vec![(1, 300), (2, 300)], Some(2), Some(2)),
        ];
        for (routes, selected, want) in cases {
            let entry = Entry {
                routes: routes.iter().map(|&(n, m)| route(n, m, 0)).collect(),
                selected,
                installed: None,
            };
            assert_eq!(
                entry.choose(&k, &sources, 0),
                want,
                "{routes:?} {selected:?}"
            );
        }
    }

    #[test]
    fn hysteresis_keeps_selected_until_smoothed_is_better() {
        let k = key("2001:db8::/64");
        let sources = Sources::default();
        let mut better = route(2, 1000, 0);
        better.set_metric(200, 0); // just improved: smoothed still 1000
        let entry = Entry {
            routes: vec![route(1, 400, 0), better],
            selected: Some(1),
            installed: None,
        };
        assert_eq!(entry.choose(&k, &sources, 0), Some(1));
        assert_eq!(entry.choose(&k, &sources, 20_000), Some(2));
    }

    #[test]
    fn unfeasible_routes_are_not_selected() {
        let k = key("2001:db8::/64");
        let mut sources = Sources::default();
        let r = route(1, 400, 5);
        sources.advertised(&k, &r.router_id, 5, 100, 0);
        let entry = Entry {
            routes: vec![r],
            selected: None,
            installed: None,
        };
        assert_eq!(entry.choose(&k, &sources, 0), None);
    }
}
