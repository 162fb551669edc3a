//! RFC 8967 MAC authentication state: our packet counter and index, and
//! per-neighbour anti-replay state with challenges.
//!
//! The MAC computation itself is in [`crate::wire::mac`]; this module
//! decides which packets are accepted. A packet with a valid MAC is accepted
//! only if it carries a PC TLV whose index matches the one we last
//! established with the sender and whose counter has increased; otherwise we
//! challenge the sender and accept its index and counter once it echoes our
//! nonce (§4.3).

use std::collections::HashMap;
use std::net::Ipv6Addr;

use super::timer::{Rng, Time};
use crate::wire::mac::Key;

/// MAC configuration: one signing key, any number of accepted keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MacConfig {
    /// Key our packets are signed with (also accepted).
    pub sign: Key,
    /// Further keys accepted on input (e.g. the previous key during a
    /// rotation).
    pub accept: Vec<Key>,
    /// Accept packets that carry no MAC at all (during the rollout of
    /// authentication). Packets whose MACs are all invalid are still
    /// dropped.
    pub accept_unsigned: bool,
}

impl MacConfig {
    /// Signs with `key` and accepts only it.
    pub fn new(key: Key) -> Self {
        Self {
            sign: key,
            accept: Vec::new(),
            accept_unsigned: false,
        }
    }

    /// All keys accepted on input.
    pub(crate) fn verify_keys(&self) -> Vec<Key> {
        std::iter::once(self.sign.clone())
            .chain(self.accept.iter().cloned())
            .collect()
    }
}

/// Length of our challenge nonces.
pub(crate) const NONCE_LEN: usize = 8;
/// A challenge must be answered within this time.
pub(crate) const CHALLENGE_TIMEOUT_MS: Time = 30_000;
/// At most one challenge request or reply per neighbour in this time.
pub(crate) const CHALLENGE_RATE_MS: Time = 300;
/// Anti-replay state of silent peers is forgotten after this time.
pub(crate) const PEER_GC_MS: Time = 300_000;

/// What we know of one sender.
#[derive(Debug, Clone, Default)]
pub(crate) struct Peer {
    index: Option<Vec<u8>>,
    pc: u32,
    nonce: Option<([u8; NONCE_LEN], Time)>,
    last_challenge: Option<Time>,
    last_reply: Option<Time>,
    last_seen: Time,
}

/// The verdict on an authenticated packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Process the packet.
    Accept,
    /// Drop the packet; send this challenge nonce if any.
    Reject(Option<[u8; NONCE_LEN]>),
}

/// Our MAC state.
#[derive(Debug)]
pub(crate) struct MacState {
    pub(crate) index: [u8; 4],
    pub(crate) pc: u32,
    peers: HashMap<(u32, Ipv6Addr), Peer>,
}

impl MacState {
    pub(crate) fn new(rng: &mut Rng) -> Self {
        let mut index = [0; 4];
        rng.fill(&mut index);
        Self {
            index,
            pc: 0,
            peers: HashMap::new(),
        }
    }

    /// The counter for our next packet; a new index when it wraps.
    pub(crate) fn next_pc(&mut self, rng: &mut Rng) -> u32 {
        self.pc = self.pc.wrapping_add(1);
        if self.pc == 0 {
            rng.fill(&mut self.index);
            self.pc = 1;
        }
        self.pc
    }

    /// May we answer a challenge from this peer now (rate limit)?
    pub(crate) fn may_reply(&mut self, ifindex: u32, address: Ipv6Addr, now: Time) -> bool {
        let peer = self.peers.entry((ifindex, address)).or_default();
        peer.last_seen = now;
        if peer.last_reply.is_some_and(|t| now < t + CHALLENGE_RATE_MS) {
            return false;
        }
        peer.last_reply = Some(now);
        true
    }

    /// Anti-replay check for a packet whose MAC is valid (§4.3).
    pub(crate) fn check(
        &mut self,
        ifindex: u32,
        address: Ipv6Addr,
        pc: Option<(u32, &[u8])>,
        replies: &[&[u8]],
        rng: &mut Rng,
        now: Time,
    ) -> Verdict {
        let peer = self.peers.entry((ifindex, address)).or_default();
        peer.last_seen = now;
        let Some((pc, index)) = pc else {
            return Verdict::Reject(None);
        };
        let answered = peer.nonce.is_some_and(|(nonce, sent)| {
            now < sent + CHALLENGE_TIMEOUT_MS && replies.iter().any(|r| *r == nonce)
        });
        if answered {
            peer.nonce = None;
            peer.index = Some(index.to_vec());
            peer.pc = pc;
            return Verdict::Accept;
        }
        if peer.index.as_deref() == Some(index) && pc > peer.pc {
            peer.pc = pc;
            return Verdict::Accept;
        }
        if peer
            .last_challenge
            .is_some_and(|t| now < t + CHALLENGE_RATE_MS)
        {
            return Verdict::Reject(None);
        }
        let mut nonce = [0; NONCE_LEN];
        rng.fill(&mut nonce);
        peer.nonce = Some((nonce, now));
        peer.last_challenge = Some(now);
        Verdict::Reject(Some(nonce))
    }

    pub(crate) fn forget(&mut self, ifindex: u32, address: Ipv6Addr) {
        self.peers.remove(&(ifindex, address));
    }

    pub(crate) fn forget_interface(&mut self, ifindex: u32) {
        self.peers.retain(|(i, _), _| *i != ifindex);
    }

    pub(crate) fn gc(&mut self, now: Time) {
        self.peers
            .retain(|_, p| now.saturating_sub(p.last_seen) < PEER_GC_MS);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenge_then_counter() {
        let mut rng = Rng::new(1);
        let mut m = MacState::new(&mut rng);
        let a: Ipv6Addr = "fe80::2".parse().unwrap();
        let idx: &[u8] = &[1, 2, 3, 4];
        // Unknown peer: challenged.
        let Verdict::Reject(Some(nonce)) = m.check(1, a, Some((5, idx)), &[], &mut rng, 0) else {
            panic!("expected a challenge");
        };
        // Rate-limited second challenge.
        assert_eq!(
            m.check(1, a, Some((6, idx)), &[], &mut rng, 10),
            Verdict::Reject(None)
        );
        // Wrong nonce: still rejected.
        assert_eq!(
            m.check(1, a, Some((7, idx)), &[&[0; 8]], &mut rng, 20),
            Verdict::Reject(None)
        );
        // Echoed nonce: accepted, index and PC learned.
        assert_eq!(
            m.check(1, a, Some((8, idx)), &[&nonce], &mut rng, 30),
            Verdict::Accept
        );
        // (pc, index, accepted)
        let cases: [(u32, &[u8], bool); 4] = [
            (9, idx, true),
            (9, idx, false),      // replay
            (3, idx, false),      // older
            (10, &[9, 9], false), // other index
        ];
        let mut now = 1000;
        for (pc, index, ok) in cases {
            now += 1000;
            let v = m.check(1, a, Some((pc, index)), &[], &mut rng, now);
            assert_eq!(v == Verdict::Accept, ok, "{pc} {index:?}");
        }
        // No PC at all.
        assert_eq!(
            m.check(1, a, None, &[], &mut rng, now),
            Verdict::Reject(None)
        );
    }

    #[test]
    fn pc_wraps_with_new_index() {
        let mut rng = Rng::new(1);
        let mut m = MacState::new(&mut rng);
        let old = m.index;
        m.pc = u32::MAX;
        assert_eq!(m.next_pc(&mut rng), 1);
        assert_ne!(m.index, old);
    }

    #[test]
    fn replies_are_rate_limited() {
        let mut rng = Rng::new(1);
        let mut m = MacState::new(&mut rng);
        let a: Ipv6Addr = "fe80::2".parse().unwrap();
        assert!(m.may_reply(1, a, 0));
        assert!(!m.may_reply(1, a, 100));
        assert!(m.may_reply(1, a, CHALLENGE_RATE_MS));
    }
}
