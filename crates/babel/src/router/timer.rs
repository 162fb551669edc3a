//! Router-wide deadlines and the seeded random source for jitter.
//!
//! Router-wide deadlines live in an array indexed by [`Timer`] (as quinn does),
//! per-interface deadlines (hellos, periodic updates) live in the interfaces,
//! and the router reports the earliest of all of them. Times inside the router
//! are milliseconds since the router was created ([`Time`]), which keeps route
//! records small; they are converted back to `Instant`s at the API boundary.

use std::time::{Duration, Instant};

/// Milliseconds since the router's epoch (the `now` given to `Router::new`).
pub(crate) type Time = u64;

/// Router-wide timers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Timer {
    /// Garbage collection of sources, duplicate-suppression records and
    /// MAC peer state.
    Gc = 0,
    /// The earliest route expiry (a lower bound: routes are refreshed
    /// without moving it, and the expiry scan recomputes it).
    RouteExpiry = 1,
}

const TIMER_COUNT: usize = 2;

/// Deadlines indexed by [`Timer`].
#[derive(Debug, Clone, Default)]
pub(crate) struct Timers {
    deadlines: [Option<Time>; TIMER_COUNT],
}

impl Timers {
    pub(crate) fn set(&mut self, timer: Timer, at: Time) {
        self.deadlines[timer as usize] = Some(at);
    }

    /// Arms `timer` at `at` unless it is already armed earlier.
    pub(crate) fn set_earlier(&mut self, timer: Timer, at: Time) {
        let slot = &mut self.deadlines[timer as usize];
        if slot.is_none_or(|t| at < t) {
            *slot = Some(at);
        }
    }

    pub(crate) fn stop(&mut self, timer: Timer) {
        self.deadlines[timer as usize] = None;
    }

    pub(crate) fn is_expired(&self, timer: Timer, now: Time) -> bool {
        self.deadlines[timer as usize].is_some_and(|t| t <= now)
    }

    /// The earliest armed deadline.
    pub(crate) fn next(&self) -> Option<Time> {
        self.deadlines.iter().flatten().min().copied()
    }
}

/// Converts between `Instant`s and router [`Time`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clock {
    epoch: Instant,
}

impl Clock {
    pub(crate) fn new(epoch: Instant) -> Self {
        Self { epoch }
    }

    /// Router time of `now`; instants before the epoch map to 0.
    pub(crate) fn time(&self, now: Instant) -> Time {
        now.saturating_duration_since(self.epoch).as_millis() as Time
    }

    pub(crate) fn instant(&self, t: Time) -> Instant {
        self.epoch + Duration::from_millis(t)
    }

    /// Microsecond timestamp for the RTT extension (wraps at 2^32).
    pub(crate) fn timestamp_us(&self, now: Instant) -> u32 {
        now.saturating_duration_since(self.epoch).as_micros() as u32
    }
}

/// Seeded pseudo-random generator (SplitMix64) for jitter, nonces and the MAC
/// index: deterministic under a fixed seed, OS-seeded by the shell.
#[derive(Debug, Clone)]
pub(crate) struct Rng {
    state: u64,
}

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..bound` (`bound` > 0; returns 0 for 0).
    pub(crate) fn below(&mut self, bound: u64) -> u64 {
        if bound == 0 {
            0
        } else {
            self.next_u64() % bound
        }
    }

    pub(crate) fn fill(&mut self, out: &mut [u8]) {
        for chunk in out.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }

    /// A periodic deadline with babeld's jitter: uniformly in
    /// `[3/4, 5/4) × interval` after `now`.
    pub(crate) fn jittered(&mut self, now: Time, interval_ms: u64) -> Time {
        let quarter = interval_ms / 4;
        now + interval_ms - quarter + self.below(2 * quarter + 1)
    }

    /// Delay before flushing buffered messages: urgent ones within a few
    /// milliseconds, others within a fraction of the hello interval.
    pub(crate) fn flush_delay(&mut self, urgent: bool, hello_ms: u64) -> u64 {
        if urgent {
            self.below(10)
        } else {
            let cap = (hello_ms / 8).clamp(10, 500);
            self.below(cap)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timers_report_earliest() {
        let mut t = Timers::default();
        assert_eq!(t.next(), None);
        t.set(Timer::RouteExpiry, 50);
        t.set(Timer::Gc, 20);
        assert_eq!(t.next(), Some(20));
        t.set_earlier(Timer::Gc, 30);
        assert_eq!(t.next(), Some(20));
        t.set_earlier(Timer::Gc, 10);
        assert_eq!(t.next(), Some(10));
        assert!(t.is_expired(Timer::Gc, 10));
        assert!(!t.is_expired(Timer::RouteExpiry, 10));
        t.stop(Timer::Gc);
        assert_eq!(t.next(), Some(50));
    }

    #[test]
    fn rng_is_deterministic_and_jitter_bounded() {
        let mut a = Rng::new(7);
        let mut b = Rng::new(7);
        for _ in 0..100 {
            assert_eq!(a.next_u64(), b.next_u64());
        }
        for _ in 0..1000 {
            let t = a.jittered(1000, 4000);
            assert!((4000..=6000).contains(&t), "{t}");
            assert!(a.flush_delay(true, 4000) < 10);
            assert!(a.flush_delay(false, 4000) < 500);
        }
    }

    #[test]
    fn clock_round_trip() {
        let epoch = Instant::now();
        let c = Clock::new(epoch);
        assert_eq!(c.time(epoch + Duration::from_millis(1234)), 1234);
        assert_eq!(c.instant(1234), epoch + Duration::from_millis(1234));
        assert_eq!(c.time(epoch), 0);
    }
}
