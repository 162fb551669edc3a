//! Retransmission of requests and urgent updates, and duplicate suppression
//! of forwarded seqno requests (RFC 8966 §3.8.1.2, §3.8.2, §3.7.2).
//!
//! Maps are keyed by destination; the earliest deadline is cached so that a
//! burst of 100 000 retractions is scanned only when something is due.

use std::cmp::Ordering;

use super::hash::FxHashMap;
use super::neighbour::NeighbourId;
use super::route::RouteKey;
use super::source::seqno_cmp;
use super::timer::Time;
use super::RouterId;

/// First resend delay; doubled after each resend.
pub(crate) const RESEND_DELAY_MS: Time = 1_000;
/// How many times a request or urgent update is sent after the first time.
pub(crate) const RESENDS: u8 = 2;
/// How long a forwarded seqno request suppresses identical ones.
pub(crate) const DUPLICATE_MS: Time = 4_000;

/// Where a request goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Target {
    /// Multicast on every interface.
    All,
    /// Unicast to one neighbour.
    Neighbour(NeighbourId),
}

/// An outstanding seqno request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Request {
    pub(crate) router_id: RouterId,
    pub(crate) seqno: u16,
    pub(crate) hop_count: u8,
    pub(crate) target: Target,
    pub(crate) left: u8,
    pub(crate) delay: Time,
    pub(crate) next: Time,
}

/// An urgent update still to be repeated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct UrgentUpdate {
    pub(crate) left: u8,
    pub(crate) delay: Time,
    pub(crate) next: Time,
}

/// Things due for retransmission.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Due {
    Request(RouteKey, Request),
    Update(RouteKey),
}

/// Retransmission state.
#[derive(Debug, Default)]
pub(crate) struct Resend {
    pub(crate) requests: FxHashMap<RouteKey, Request>,
    pub(crate) updates: FxHashMap<RouteKey, UrgentUpdate>,
    forwarded: FxHashMap<(RouteKey, RouterId, u16), Time>,
    next: Option<Time>,
}

impl Resend {
    /// Records a request just sent. Returns false (and records nothing) if
    /// an identical or newer request for the same destination is already
    /// outstanding, so the caller should not send it again.
    pub(crate) fn add_request(
        &mut self,
        key: RouteKey,
        router_id: RouterId,
        seqno: u16,
        hop_count: u8,
        target: Target,
        now: Time,
    ) -> bool {
        if let Some(r) = self.requests.get(&key) {
            if r.router_id == router_id && seqno_cmp(r.seqno, seqno) != Ordering::Less {
                return false;
            }
        }
        let next = now + RESEND_DELAY_MS;
        self.requests.insert(
            key,
            Request {
                router_id,
                seqno,
                hop_count,
                target,
                left: RESENDS,
                delay: RESEND_DELAY_MS,
                next,
            },
        );
        self.arm(next);
        true
    }

    /// An update arrived: drop requests it answers (same router-id and a
    /// seqno at least the requested one, or another router-id's feasible
    /// route).
    /// Returns whether a request was satisfied.
    pub(crate) fn satisfy(
        &mut self,
        key: &RouteKey,
        router_id: &RouterId,
        seqno: u16,
        feasible: bool,
    ) -> bool {
        let mut answered = false;
        if let Some(r) = self.requests.get(key) {
            answered = if r.router_id == *router_id {
                seqno_cmp(seqno, r.seqno) != Ordering::Less
            } else {
                feasible
            };
            if answered {
                self.requests.remove(key);
            }
        }
        answered
    }

    /// Schedules repetitions of an urgent update just sent.
    pub(crate) fn add_update(&mut self, key: RouteKey, now: Time) {
        let next = now + RESEND_DELAY_MS / 2;
        self.updates.insert(
            key,
            UrgentUpdate {
                left: RESENDS,
                delay: RESEND_DELAY_MS / 2,
                next,
            },
        );
        self.arm(next);
    }

    /// Returns true if a seqno request for this source and seqno was already
    /// forwarded recently, and records it otherwise.
    pub(crate) fn is_duplicate(
        &mut self,
        key: RouteKey,
        router_id: RouterId,
        seqno: u16,
        now: Time,
    ) -> bool {
        let slot = self.forwarded.entry((key, router_id, seqno)).or_insert(0);
        if *slot > now {
            return true;
        }
        *slot = now + DUPLICATE_MS;
        false
    }

    /// Forgets stale duplicate-suppression records.
    pub(crate) fn gc(&mut self, now: Time) {
        self.forwarded.retain(|_, t| *t > now);
    }

    /// Earliest retransmission deadline.
    pub(crate) fn next(&self) -> Option<Time> {
        self.next
    }

    /// Everything due at `now`, rescheduling or retiring each item.
    pub(crate) fn due(&mut self, now: Time) -> Vec<Due> {
        let mut out = Vec::new();
        if self.next.is_none_or(|t| t > now) {
            return out;
        }
        let mut next: Option<Time> = None;
        let mut min = |t: Time| next = Some(next.map_or(t, |n: Time| n.min(t)));
        self.requests.retain(|key, r| {
            if r.next <= now {
                out.push(Due::Request(*key, *r));
                r.left -= 1;
                if r.left == 0 {
                    return false;
                }
                r.delay *= 2;
                r.next = now + r.delay;
            }
            min(r.next);
            true
        });
        self.updates.retain(|key, u| {
            if u.next <= now {
                out.push(Due::Update(*key));
                u.left -= 1;
                if u.left == 0 {
                    return false;
                }
                u.delay *= 2;
                u.next = now + u.delay;
            }
            min(u.next);
            true
        });
        self.next = next;
        out
    }

    fn arm(&mut self, at: Time) {
        self.next = Some(self.next.map_or(at, |n| n.min(at)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::route::tests::key;

    #[test]
    fn requests_are_resent_then_retired() {
        let mut r = Resend::default();
        let k = key("2001:db8::/64");
        assert!(r.add_request(k, [1; 8], 5, 64, Target::All, 0));
        assert!(!r.add_request(k, [1; 8], 5, 64, Target::All, 10));
        assert!(!r.add_request(k, [1; 8], 4, 64, Target::All, 10));
        assert_eq!(r.next(), Some(RESEND_DELAY_MS));
        assert!(r.due(RESEND_DELAY_MS - 1).is_empty());
        let mut sent = 0;
        let mut now = 0;
        while let Some(t) = r.next() {
            now = t;
            sent += r.due(now).len();
        }
        // The initial send is the caller's; RESENDS repetitions follow.
        assert_eq!(sent, usize::from(RESENDS));
        assert!(now >= RESEND_DELAY_MS * 3);
        assert!(r.requests.is_empty());
    }

    #[test]
    fn satisfy_table() {
        let k = key("2001:db8::/64");
        // (router-id, seqno, feasible, satisfied)
        let cases = [
            ([1u8; 8], 5u16, false, true),
            ([1; 8], 6, false, true),
            ([1; 8], 4, true, false),
            ([2; 8], 1, false, false),
            ([2; 8], 1, true, true),
        ];
        for (rid, seqno, feasible, want) in cases {
            let mut r = Resend::default();
            r.add_request(k, [1; 8], 5, 64, Target::All, 0);
            r.satisfy(&k, &rid, seqno, feasible);
            assert_eq!(r.requests.is_empty(), want, "{rid:?} {seqno} {feasible}");
        }
    }

    #[test]
    fn urgent_updates_repeat_twice() {
        let mut r = Resend::default();
        let k = key("2001:db8::/64");
        r.add_update(k, 0);
        let mut count = 0;
        while let Some(t) = r.next() {
            count += r.due(t).len();
        }
        assert_eq!(count, usize::from(RESENDS));
    }

    #[test]
    fn duplicates_are_suppressed_for_a_while() {
        let mut r = Resend::default();
        let k = key("2001:db8::/64");
        assert!(!r.is_duplicate(k, [1; 8], 3, 0));
        assert!(r.is_duplicate(k, [1; 8], 3, 100));
        assert!(!r.is_duplicate(k, [1; 8], 4, 100));
        r.gc(DUPLICATE_MS + 1);
        assert!(!r.is_duplicate(k, [1; 8], 3, DUPLICATE_MS + 1));
    }
}
