//! Neighbours: hello histories, IHU, link cost (RFC 8966 §3.4 and
//! appendix A), RTT measurement with babeld's penalty, cost multiplier.

use std::net::Ipv6Addr;

use super::interface::InterfaceKind;
use super::source::seqno_cmp;
use super::timer::Time;
use super::INFINITY;

/// Index of a neighbour in the router's neighbour slab.
pub(crate) type NeighbourId = u32;

/// RTT samples are trusted this long (babeld's validity window).
pub(crate) const RTT_VALIDITY_MS: Time = 180_000;

/// RTT extension parameters (babeld's `rtt-min`, `rtt-max`,
/// `max-rtt-penalty`, `rtt-decay`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RttConfig {
    /// RTT below which no penalty applies, in milliseconds (default 10).
    pub rtt_min_ms: u32,
    /// RTT at and above which the full penalty applies, in milliseconds
    /// (default 120).
    pub rtt_max_ms: u32,
    /// Cost added at `rtt_max` (default 0: RTT ignored).
    pub max_rtt_penalty: u16,
    /// Weight of a new sample in the moving average, in 1/256
    /// (default 42).
    pub decay: u8,
}

impl Default for RttConfig {
    fn default() -> Self {
        Self {
            rtt_min_ms: 10,
            rtt_max_ms: 120,
            max_rtt_penalty: 0,
            decay: 42,
        }
    }
}

impl RttConfig {
    /// babeld's penalty: 0 up to `rtt_min`, linear up to `max_rtt_penalty`
    /// at `rtt_max`, constant beyond.
    pub(crate) fn penalty(&self, rtt_us: u32) -> u16 {
        let min = u64::from(self.rtt_min_ms) * 1000;
        let max = u64::from(self.rtt_max_ms) * 1000;
        let rtt = u64::from(rtt_us);
        let pen = u64::from(self.max_rtt_penalty);
        if pen == 0 || rtt <= min {
            0
        } else if rtt < max {
            (pen * (rtt - min) / (max - min)) as u16
        } else {
            self.max_rtt_penalty
        }
    }
}

/// History of received hellos of one kind (multicast or unicast), RFC 8966
/// appendix A.1.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct HelloHistory {
    /// Bit 15 is the most recent hello interval.
    pub(crate) reach: u16,
    /// The seqno we expect next.
    pub(crate) expected: u16,
    pub(crate) interval_cs: u16,
    /// When we count the next expected hello as missed.
    pub(crate) deadline: Option<Time>,
}

impl HelloHistory {
    /// Records a hello with `seqno` announcing `interval_cs`.
    pub(crate) fn receive(&mut self, seqno: u16, interval_cs: u16, now: Time) {
        let fresh = self.reach == 0 && self.deadline.is_none();
        let gap = seqno.wrapping_sub(self.expected);
        let ahead = seqno_cmp(seqno, self.expected) != std::cmp::Ordering::Less;
        if fresh || !ahead && gap != 0 || gap > 16 && ahead {
            // New neighbour, restarted neighbour or lost sync: start over.
            self.reach = 0;
        } else if ahead {
            self.reach = self.reach.checked_shr(u32::from(gap)).unwrap_or(0);
        }
        self.reach = (self.reach >> 1) | 0x8000;
        self.expected = seqno.wrapping_add(1);
        self.interval_cs = interval_cs;
        self.deadline = (interval_cs > 0).then(|| now + u64::from(interval_cs) * 15);
    }

    /// Accounts for hellos missed by `now`; returns true if anything changed.
    pub(crate) fn timeout(&mut self, now: Time) -> bool {
        let mut changed = false;
        while let Some(d) = self.deadline.filter(|&d| d <= now) {
            self.reach >>= 1;
            self.expected = self.expected.wrapping_add(1);
            changed = true;
            self.deadline = (self.reach != 0).then(|| d + u64::from(self.interval_cs.max(1)) * 10);
        }
        changed
    }

    /// 2-out-of-3 (appendix A.2.1): nominal cost if at least two of the last
    /// three hellos arrived.
    pub(crate) fn rxcost_k_out_of_j(&self, nominal: u16) -> u16 {
        if (self.reach & 0xe000).count_ones() >= 2 {
            nominal
        } else {
            INFINITY
        }
    }

    /// ETX (appendix A.2.2): nominal divided by the fraction of hellos
    /// received over the last sixteen intervals.
    pub(crate) fn rxcost_etx(&self, nominal: u16) -> u16 {
        let n = self.reach.count_ones();
        if n == 0 {
            return INFINITY;
        }
        (u32::from(nominal) * 16 / n).min(u32::from(INFINITY - 1)) as u16
    }
}

/// RTT measurement state (RTT extension).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Rtt {
    /// The timestamp in the neighbour's last hello and our local µs clock
    /// when it arrived: echoed in our IHUs.
    pub(crate) last_hello: Option<(u32, u32)>,
    /// Smoothed RTT in µs.
    pub(crate) rtt_us: u32,
    /// When the last sample was taken.
    pub(crate) time: Option<Time>,
}

impl Rtt {
    /// Folds in a sample: `origin` is our hello's timestamp echoed back,
    /// `receive` when the neighbour got it (its clock), `send` the
    /// neighbour's hello timestamp in this packet, `now_us` our receive time.
    pub(crate) fn sample(
        &mut self,
        origin: u32,
        receive: u32,
        send: u32,
        now_us: u32,
        decay: u8,
        now: Time,
    ) -> bool {
        if origin == 0 && receive == 0 {
            return false;
        }
        let total = now_us.wrapping_sub(origin) as i32;
        let held = send.wrapping_sub(receive) as i32;
        if total < 0 || held < 0 {
            return false;
        }
        let sample = (total - held).max(0) as u32;
        let d = u64::from(decay.max(1));
        self.rtt_us = match self.time {
            None => sample,
            Some(_) => ((d * u64::from(sample) + (256 - d) * u64::from(self.rtt_us)) / 256) as u32,
        };
        self.time = Some(now);
        true
    }

    pub(crate) fn valid(&self, now: Time) -> bool {
        self.time
            .is_some_and(|t| now.saturating_sub(t) < RTT_VALIDITY_MS)
    }
}

/// A neighbour on one interface.
#[derive(Debug, Clone)]
pub(crate) struct Neighbour {
    pub(crate) ifindex: u32,
    pub(crate) address: Ipv6Addr,
    pub(crate) hello: HelloHistory,
    pub(crate) uhello: HelloHistory,
    /// Cost the neighbour reported in its last IHU.
    pub(crate) txcost: u16,
    pub(crate) ihu_deadline: Option<Time>,
    pub(crate) rtt: Rtt,
    /// 256 = 1.0.
    pub(crate) multiplier: u16,
    /// Cached result of [`Neighbour::compute_cost`].
    pub(crate) cost: u16,
}

impl Neighbour {
    pub(crate) fn new(ifindex: u32, address: Ipv6Addr, multiplier: u16) -> Self {
        Self {
            ifindex,
            address,
            hello: HelloHistory::default(),
            uhello: HelloHistory::default(),
            txcost: INFINITY,
            ihu_deadline: None,
            rtt: Rtt::default(),
            multiplier,
            cost: INFINITY,
        }
    }

    /// The cost we advertise in IHUs: how well we hear the neighbour.
    pub(crate) fn rxcost(&self, kind: InterfaceKind, nominal: u16) -> u16 {
        let f = |h: &HelloHistory| match kind {
            InterfaceKind::Wireless => h.rxcost_etx(nominal),
            InterfaceKind::Wired | InterfaceKind::Tunnel => h.rxcost_k_out_of_j(nominal),
        };
        f(&self.hello).min(f(&self.uhello))
    }

    /// Link cost (appendix A.2) plus RTT penalty, times the multiplier.
    pub(crate) fn compute_cost(
        &self,
        kind: InterfaceKind,
        nominal: u16,
        rtt: &RttConfig,
        now: Time,
    ) -> u16 {
        let tx = self.txcost;
        let rx = self.rxcost(kind, nominal);
        if tx == INFINITY || rx == INFINITY {
            return INFINITY;
        }
        let base = match kind {
            InterfaceKind::Wired | InterfaceKind::Tunnel => u32::from(tx),
            InterfaceKind::Wireless => (u32::from(tx.max(256)) * u32::from(rx.max(256)) + 128) >> 8,
        };
        let penalty = if self.rtt.valid(now) {
            u32::from(rtt.penalty(self.rtt.rtt_us))
        } else {
            0
        };
        let cost = (base + penalty) * u32::from(self.multiplier) / 256;
        cost.clamp(1, u32::from(INFINITY - 1)) as u16
    }

    /// Is the neighbour gone (nothing heard for sixteen hello intervals and
    /// no IHU pending)?
    pub(crate) fn is_dead(&self) -> bool {
        self.hello.reach == 0 && self.uhello.reach == 0 && self.ihu_deadline.is_none()
    }

    /// Earliest deadline of this neighbour.
    pub(crate) fn next_deadline(&self) -> Option<Time> {
        [self.hello.deadline, self.uhello.deadline, self.ihu_deadline]
            .into_iter()
            .flatten()
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_history_table() {
        // (seqnos received in consecutive 4 s slots (None = missed), final reach)
        let cases: &[(&[Option<u16>], u16)] = &[
            (&[Some(1)], 0x8000),
            (&[Some(1), Some(2), Some(3)], 0xe000),
            (&[Some(1), None, Some(3)], 0xa000),
            (&[Some(1), Some(3)], 0xa000), // gap detected from seqno
            (&[Some(1), Some(2), Some(100)], 0x8000), // jump: reset
            (&[Some(5), Some(6), Some(2)], 0x8000), // went backwards: reset
            (&[Some(1), None, None], 0x4000),
        ];
        for (seq, want) in cases {
            let mut h = HelloHistory::default();
            let mut now = 0;
            for s in seq.iter() {
                now += 4000;
                h.timeout(now);
                if let Some(s) = s {
                    h.receive(*s, 400, now);
                }
            }
            now += 1000;
            h.timeout(now);
            assert_eq!(h.reach, *want, "{seq:?}");
        }
    }

    #[test]
    fn rxcost_table() {
        // (reach, 2-of-3 cost, etx cost) with nominal 96 / 256
        let cases = [
            (0xe000u16, 96u16, 256 * 16 / 3),
            (0xc000, 96, 256 * 16 / 2),
            (0xa000, 96, 256 * 16 / 2),
            (0x8000, INFINITY, 4096),
            (0x6000, 96, 256 * 16 / 2),
            (0x2000, INFINITY, 4096),
            (0xffff, 96, 256),
            (0x0000, INFINITY, INFINITY),
        ];
        for (reach, kj, etx) in cases {
            let h = HelloHistory {
                reach,
                ..Default::default()
            };
            assert_eq!(h.rxcost_k_out_of_j(96), kj, "{reach:#x}");
            assert_eq!(h.rxcost_etx(256), etx, "{reach:#x}");
        }
    }

    #[test]
    fn rtt_penalty_table() {
        let c = RttConfig {
            max_rtt_penalty: 96,
            ..Default::default()
        };
        let cases = [
            (0u32, 0u16),
            (10_000, 0),
            (65_000, 48),
            (120_000, 96),
            (500_000, 96),
        ];
        for (rtt, want) in cases {
            assert_eq!(c.penalty(rtt), want, "{rtt}");
        }
        assert_eq!(RttConfig::default().penalty(500_000), 0);
    }

    #[test]
    fn rtt_sample_and_smoothing() {
        let mut r = Rtt::default();
        // We sent at 1000 µs, they received at 50_000 (their clock), sent
        // their hello at 60_000, we received at 41_000: 40 ms total, 10 ms held.
        assert!(r.sample(1000, 50_000, 60_000, 41_000, 42, 0));
        assert_eq!(r.rtt_us, 30_000);
        assert!(r.sample(1000, 50_000, 60_000, 291_000, 42, 1));
        // 42/256 of 280 ms + 214/256 of 30 ms
        assert_eq!(r.rtt_us, (42 * 280_000 + 214 * 30_000) / 256);
        assert!(r.valid(1));
        assert!(!r.valid(1 + RTT_VALIDITY_MS));
        // Negative intervals are rejected.
        assert!(!r.sample(50_000, 0, 10, 1000, 42, 2));
    }

    #[test]
    fn cost_table() {
        let rtt = RttConfig::default();
        let mut n = Neighbour::new(1, Ipv6Addr::LOCALHOST, 256);
        n.hello.reach = 0xe000;
        n.txcost = 96;
        assert_eq!(n.compute_cost(InterfaceKind::Wired, 96, &rtt, 0), 96);
        assert_eq!(n.compute_cost(InterfaceKind::Tunnel, 96, &rtt, 0), 96);
        n.txcost = 512;
        n.hello.reach = 0xffff;
        assert_eq!(n.compute_cost(InterfaceKind::Wireless, 256, &rtt, 0), 512);
        n.multiplier = 512;
        assert_eq!(n.compute_cost(InterfaceKind::Wireless, 256, &rtt, 0), 1024);
        n.txcost = INFINITY;
        assert_eq!(n.compute_cost(InterfaceKind::Wired, 96, &rtt, 0), INFINITY);
        n.txcost = 96;
        n.multiplier = 256;
        n.rtt.rtt_us = 200_000;
        n.rtt.time = Some(0);
        let tun = RttConfig {
            max_rtt_penalty: 96,
            ..Default::default()
        };
        assert_eq!(n.compute_cost(InterfaceKind::Tunnel, 96, &tun, 0), 192);
    }
}
