//! Buffered emission: per (interface, destination) queues of pending
//! messages, flushed into packets up to the MTU by `Router::poll_transmit`
//! (babeld's buffered output in `message.c`).
//!
//! Updates are queued by destination only and rendered when the packet is
//! built, so a queued update always carries the current state, a route
//! queued twice is sent once, and a full dump costs one key per route.

use std::collections::VecDeque;
use std::net::Ipv6Addr;

use super::hash::FxHashSet;
use super::mac::NONCE_LEN;
use super::route::RouteKey;
use super::timer::Time;
use super::RouterId;
use crate::wire::IhuTimestamp;

/// Where a queue's packets go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Dest {
    Multicast,
    Unicast(Ipv6Addr),
}

/// A control message waiting for a packet.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Control {
    /// A hello; timestamped when the packet is built.
    Hello {
        seqno: u16,
        interval_cs: u16,
        timestamp: bool,
    },
    Ihu {
        rxcost: u16,
        interval_cs: u16,
        address: Ipv6Addr,
        timestamp: Option<IhuTimestamp>,
    },
    Ack {
        opaque: u16,
    },
    /// `None` asks for a full dump.
    RouteRequest {
        key: Option<RouteKey>,
    },
    SeqnoRequest {
        key: RouteKey,
        seqno: u16,
        hop_count: u8,
        router_id: RouterId,
    },
    ChallengeRequest {
        nonce: [u8; NONCE_LEN],
    },
    ChallengeReply {
        nonce: Vec<u8>,
    },
}

/// Messages for one (interface, destination).
#[derive(Debug, Default)]
pub(crate) struct Queue {
    pub(crate) control: VecDeque<Control>,
    /// The members of `control`, to drop duplicates in constant time.
    queued: FxHashSet<Control>,
    pub(crate) updates: VecDeque<RouteKey>,
    pub(crate) pending: FxHashSet<RouteKey>,
    pub(crate) deadline: Option<Time>,
}

impl Queue {
    pub(crate) fn is_empty(&self) -> bool {
        self.control.is_empty() && self.updates.is_empty()
    }

    /// Flush no later than `at`.
    pub(crate) fn flush_by(&mut self, at: Time) {
        self.deadline = Some(self.deadline.map_or(at, |d| d.min(at)));
    }

    /// Queues a control message unless the same one is already waiting.
    pub(crate) fn push_control(&mut self, msg: Control) {
        if self.queued.insert(msg.clone()) {
            self.control.push_back(msg);
        }
    }

    /// Puts a message at the head of the queue (hellos and IHUs).
    pub(crate) fn push_control_front(&mut self, msg: Control) {
        if self.queued.insert(msg.clone()) {
            self.control.push_front(msg);
        }
    }

    /// Removes the head control message.
    pub(crate) fn pop_control(&mut self) -> Option<Control> {
        let msg = self.control.pop_front()?;
        self.queued.remove(&msg);
        Some(msg)
    }

    pub(crate) fn push_update(&mut self, key: RouteKey) {
        if self.pending.insert(key) {
            self.updates.push_back(key);
        }
    }

    /// Takes the next update to render.
    pub(crate) fn pop_update(&mut self) -> Option<RouteKey> {
        let key = self.updates.pop_front()?;
        self.pending.remove(&key);
        Some(key)
    }

    /// Puts back an update that did not fit.
    pub(crate) fn unpop_update(&mut self, key: RouteKey) {
        if self.pending.insert(key) {
            self.updates.push_front(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::route::tests::key;

    #[test]
    fn updates_are_deduplicated_and_order_kept() {
        let mut q = Queue::default();
        let (a, b) = (key("2001:db8::/64"), key("2001:db8:1::/64"));
        q.push_update(a);
        q.push_update(b);
        q.push_update(a);
        assert_eq!(q.pop_update(), Some(a));
        q.unpop_update(a);
        assert_eq!(q.pop_update(), Some(a));
        assert_eq!(q.pop_update(), Some(b));
        assert_eq!(q.pop_update(), None);
        assert!(q.is_empty());
        q.push_control(Control::Ack { opaque: 1 });
        q.push_control(Control::Ack { opaque: 1 });
        q.push_control_front(Control::Ack { opaque: 2 });
        assert_eq!(q.pop_control(), Some(Control::Ack { opaque: 2 }));
        assert_eq!(q.pop_control(), Some(Control::Ack { opaque: 1 }));
        assert_eq!(q.pop_control(), None);
        q.flush_by(10);
        q.flush_by(20);
        assert_eq!(q.deadline, Some(10));
    }
}
