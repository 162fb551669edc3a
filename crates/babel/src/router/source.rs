//! Sources and feasibility distances (RFC 8966 §2.4, §3.5.1, §3.7.3).
//!
//! A source is a (prefix, source prefix, router-id) triple; its feasibility
//! distance is the best (seqno, metric) pair we have advertised for it. An
//! update is feasible when it is strictly better than that distance, which is
//! what keeps Babel loop-free.

use std::cmp::Ordering;

use super::hash::FxHashMap;
use super::route::RouteKey;
use super::timer::Time;
use super::{RouterId, INFINITY};

/// Compares two sequence numbers modulo 2^16 (RFC 8966 §3.2.1).
pub(crate) fn seqno_cmp(a: u16, b: u16) -> Ordering {
    if a == b {
        Ordering::Equal
    } else if b.wrapping_sub(a) < 0x8000 {
        Ordering::Less
    } else {
        Ordering::Greater
    }
}

/// Sources are forgotten this long after we last advertised them (babeld's
/// SOURCE_GC_TIME).
pub(crate) const SOURCE_GC_MS: Time = 200_000;

/// A feasibility distance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Source {
    pub(crate) seqno: u16,
    pub(crate) metric: u16,
    /// When we last advertised this source.
    pub(crate) time: Time,
}

/// The source table.
#[derive(Debug, Default)]
pub(crate) struct Sources {
    map: FxHashMap<(RouteKey, RouterId), Source>,
}

impl Sources {
    pub(crate) fn get(&self, key: &RouteKey, router_id: &RouterId) -> Option<&Source> {
        self.map.get(&(*key, *router_id))
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (&(RouteKey, RouterId), &Source)> {
        self.map.iter()
    }

    /// RFC 8966 §3.5.1: is an update with (`seqno`, `metric`) from
    /// `router_id` feasible?
    pub(crate) fn is_feasible(
        &self,
        key: &RouteKey,
        router_id: &RouterId,
        seqno: u16,
        metric: u16,
    ) -> bool {
        if metric == INFINITY {
            return true;
        }
        match self.get(key, router_id) {
            None => true,
            Some(s) => match seqno_cmp(seqno, s.seqno) {
                Ordering::Greater => true,
                Ordering::Equal => metric < s.metric,
                Ordering::Less => false,
            },
        }
    }

    /// Records that we advertised (`seqno`, `metric`) for the source
    /// (RFC 8966 §3.7.3). Retractions do not touch feasibility distances.
    pub(crate) fn advertised(
        &mut self,
        key: &RouteKey,
        router_id: &RouterId,
        seqno: u16,
        metric: u16,
        now: Time,
    ) {
        if metric == INFINITY {
            return;
        }
        let s = self.map.entry((*key, *router_id)).or_insert(Source {
            seqno,
            metric,
            time: now,
        });
        match seqno_cmp(seqno, s.seqno) {
            Ordering::Greater => {
                s.seqno = seqno;
                s.metric = metric;
            }
            Ordering::Equal => s.metric = s.metric.min(metric),
            Ordering::Less => {}
        }
        s.time = now;
    }

    /// Forgets sources not advertised since `now - SOURCE_GC_MS`.
    pub(crate) fn gc(&mut self, now: Time) {
        self.map
            .retain(|_, s| now.saturating_sub(s.time) < SOURCE_GC_MS);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::route::tests::key;

    #[test]
    fn seqno_comparison_table() {
        let cases = [
            (1u16, 1u16, Ordering::Equal),
            (1, 2, Ordering::Less),
            (2, 1, Ordering::Greater),
            (0xffff, 0, Ordering::Less),
            (0, 0xffff, Ordering::Greater),
            (0, 0x7fff, Ordering::Less),
            (0, 0x8001, Ordering::Greater),
        ];
        for (a, b, want) in cases {
            assert_eq!(seqno_cmp(a, b), want, "{a} vs {b}");
        }
    }

    #[test]
    fn feasibility_table() {
        let k = key("2001:db8::/64");
        let rid = [1; 8];
        let mut s = Sources::default();
        s.advertised(&k, &rid, 10, 300, 0);
        // (seqno, metric, feasible)
        let cases = [
            (10u16, 299u16, true),
            (10, 300, false),
            (10, 301, false),
            (11, 5000, true),
            (9, 1, false),
            (9, INFINITY, true),
        ];
        for (seqno, metric, want) in cases {
            assert_eq!(
                s.is_feasible(&k, &rid, seqno, metric),
                want,
                "{seqno} {metric}"
            );
        }
        // Unknown router-id: always feasible.
        assert!(s.is_feasible(&k, &[2; 8], 0, 60000));
    }

    #[test]
    fn advertised_only_tightens() {
        let k = key("2001:db8::/64");
        let rid = [1; 8];
        let mut s = Sources::default();
        s.advertised(&k, &rid, 10, 300, 0);
        s.advertised(&k, &rid, 10, 500, 1);
        assert_eq!(s.get(&k, &rid).unwrap().metric, 300);
        s.advertised(&k, &rid, 10, 200, 2);
        assert_eq!(s.get(&k, &rid).unwrap().metric, 200);
        s.advertised(&k, &rid, 9, 100, 3);
        assert_eq!(s.get(&k, &rid).unwrap().seqno, 10);
        s.advertised(&k, &rid, 11, 900, 4);
        assert_eq!(
            *s.get(&k, &rid).unwrap(),
            Source {
                seqno: 11,
                metric: 900,
                time: 4
            }
        );
        s.advertised(&k, &rid, 12, INFINITY, 5);
        assert_eq!(s.get(&k, &rid).unwrap().seqno, 11);
        s.gc(4 + SOURCE_GC_MS - 1);
        assert_eq!(s.len(), 1);
        s.gc(4 + SOURCE_GC_MS);
        assert_eq!(s.len(), 0);
    }
}
