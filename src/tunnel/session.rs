//! Sans-I/O data sessions: the keys a handshake produced, the send counter
//! (which is the AEAD nonce and is never reused), the replay window, and the
//! per-tunnel timers that decide when to send keepalives, when to rekey,
//! when old keys stop being accepted and when the peer is dead.
//!
//! Nothing here reads a clock: every method that depends on time takes `now`.
//!
//! A session is split into a [`Sender`] (shared with the task that reads the
//! TUN device: the counter is an atomic, so sealing needs no lock) and a
//! [`Receiver`] (owned by the task that reads the socket).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};

use super::wire::{self, DATA_HEADER_LEN, TAG_LEN};

/// Packets a replay window accepts behind the highest counter seen.
pub const REPLAY_WINDOW: u64 = 2048;
/// A session refuses to send (and to accept) counters from this value on, so
/// a nonce is never reused even if the rekey is late.
pub const REJECT_AFTER_MESSAGES: u64 = u64::MAX - (1 << 13);

const WORD_BITS: u64 = 64;
const WORDS: usize = (REPLAY_WINDOW / WORD_BITS) as usize + 1;

/// Why a data message could not be sealed or opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    /// The send counter reached [`REJECT_AFTER_MESSAGES`]: a new handshake
    /// is needed before anything else can be sent.
    #[error("send counter exhausted")]
    CounterExhausted,
    /// The caller's buffer cannot hold header, payload and tag.
    #[error("buffer too small")]
    BufferTooSmall,
    /// The counter is too old or was already received.
    #[error("replayed or too old counter")]
    Replay,
    /// The ciphertext does not authenticate under this session's key.
    #[error("authentication failed")]
    Auth,
    /// The message is not a data message or is malformed.
    #[error("malformed data message")]
    Malformed,
}

/// The data-path cipher: AES-256-GCM through `ring` (AES-NI + CLMUL on x86;
/// see `benches/tunnel_crypto.rs` for the comparison with ChaCha20-Poly1305).
fn key(bytes: &[u8; 32]) -> LessSafeKey {
    // AES_256_GCM takes exactly 32 bytes, which the array type guarantees.
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, bytes).expect("32-byte key"))
}

fn nonce(counter: u64) -> Nonce {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&counter.to_be_bytes());
    Nonce::assume_unique_for_key(n)
}

/// The sending half of a session. Shared (`Arc`) with the encrypting task.
#[derive(Debug)]
pub struct Sender {
    key: LessSafeKey,
    remote_index: u32,
    next: AtomicU64,
}

impl Sender {
    /// A sender with key `key` whose messages go to the peer's `remote_index`.
    pub fn new(key_bytes: &[u8; 32], remote_index: u32) -> Self {
        Self {
            key: key(key_bytes),
            remote_index,
            next: AtomicU64::new(0),
        }
    }

    /// The index the peer chose for this session.
    pub fn remote_index(&self) -> u32 {
        self.remote_index
    }

    /// How many counters have been used.
    pub fn messages_sent(&self) -> u64 {
        self.next.load(Ordering::Relaxed)
    }

    fn take_counter(&self) -> Result<u64, SessionError> {
        self.next
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |c| {
                (c < REJECT_AFTER_MESSAGES).then_some(c + 1)
            })
            .map_err(|_| SessionError::CounterExhausted)
    }

    /// Seals the `payload_len` bytes at `buf[DATA_HEADER_LEN..]` in place:
    /// writes the header in front and the tag behind, and returns the
    /// message length (`payload_len + DATA_OVERHEAD`).
    pub fn seal(&self, buf: &mut [u8], payload_len: usize) -> Result<usize, SessionError> {
        let total = DATA_HEADER_LEN + payload_len + TAG_LEN;
        if buf.len() < total {
            return Err(SessionError::BufferTooSmall);
        }
        let counter = self.take_counter()?;
        let (header, rest) = buf.split_at_mut(DATA_HEADER_LEN);
        wire::emit_data_header(header, self.remote_index, counter);
        let (payload, tail) = rest.split_at_mut(payload_len);
        let tag = self
            .key
            .seal_in_place_separate_tag(nonce(counter), Aad::from(&*header), payload)
            .map_err(|_| SessionError::BufferTooSmall)?;
        tail[..TAG_LEN].copy_from_slice(tag.as_ref());
        Ok(total)
    }

    #[cfg(test)]
    fn set_next(&self, c: u64) {
        self.next.store(c, Ordering::Relaxed);
    }
}

/// A sliding anti-replay bitmap (RFC 6479) accepting any counter not older
/// than [`REPLAY_WINDOW`] behind the highest one seen, each at most once.
#[derive(Clone, Debug)]
pub struct ReplayWindow {
    /// Highest counter accepted so far (meaningful once `any` is set).
    last: u64,
    any: bool,
    bitmap: [u64; WORDS],
}

impl Default for ReplayWindow {
    fn default() -> Self {
        Self::new()
    }
}

impl ReplayWindow {
    /// An empty window.
    pub fn new() -> Self {
        Self {
            last: 0,
            any: false,
            bitmap: [0; WORDS],
        }
    }

    fn slot(counter: u64) -> (usize, u64) {
        (
            ((counter / WORD_BITS) % WORDS as u64) as usize,
            1 << (counter % WORD_BITS),
        )
    }

    /// Whether `counter` would be accepted (no state change). Call before
    /// decrypting; call [`ReplayWindow::accept`] after authentication.
    pub fn check(&self, counter: u64) -> bool {
        if counter >= REJECT_AFTER_MESSAGES {
            return false;
        }
        if !self.any || counter > self.last {
            return true;
        }
        if self.last - counter >= REPLAY_WINDOW {
            return false;
        }
        let (w, bit) = Self::slot(counter);
        self.bitmap[w] & bit == 0
    }

    /// Marks `counter` as received; false when it is a replay or too old.
    pub fn accept(&mut self, counter: u64) -> bool {
        if !self.check(counter) {
            return false;
        }
        if !self.any || counter > self.last {
            let new_word = counter / WORD_BITS;
            if self.any {
                let cur_word = self.last / WORD_BITS;
                let diff = (new_word - cur_word).min(WORDS as u64);
                for i in 1..=diff {
                    self.bitmap[((cur_word + i) % WORDS as u64) as usize] = 0;
                }
            } else {
                self.bitmap = [0; WORDS];
            }
            self.last = counter;
            self.any = true;
        }
        let (w, bit) = Self::slot(counter);
        self.bitmap[w] |= bit;
        true
    }
}

/// The receiving half of a session, owned by the decrypting task.
#[derive(Debug)]
pub struct Receiver {
    key: LessSafeKey,
    local_index: u32,
    replay: ReplayWindow,
}

impl Receiver {
    /// A receiver with key `key` for messages addressed to `local_index`.
    pub fn new(key_bytes: &[u8; 32], local_index: u32) -> Self {
        Self {
            key: key(key_bytes),
            local_index,
            replay: ReplayWindow::new(),
        }
    }

    /// The index we chose for this session.
    pub fn local_index(&self) -> u32 {
        self.local_index
    }

    /// Authenticates and decrypts a data message in place; returns the
    /// plaintext (a sub-slice of `msg`) and the message counter.
    pub fn open<'a>(&mut self, msg: &'a mut [u8]) -> Result<(&'a mut [u8], u64), SessionError> {
        let p = wire::Packet::new_checked(&*msg).map_err(|_| SessionError::Malformed)?;
        if p.kind() != wire::MessageType::Data {
            return Err(SessionError::Malformed);
        }
        let counter = p.counter();
        if !self.replay.check(counter) {
            return Err(SessionError::Replay);
        }
        let (header, body) = msg.split_at_mut(DATA_HEADER_LEN);
        let plain = self
            .key
            .open_in_place(nonce(counter), Aad::from(header), body)
            .map_err(|_| SessionError::Auth)?;
        if !self.replay.accept(counter) {
            return Err(SessionError::Replay);
        }
        Ok((plain, counter))
    }
}

/// The keys of one completed handshake.
#[derive(Debug)]
pub struct Keypair {
    /// Sending half.
    pub sender: Arc<Sender>,
    /// Receiving half.
    pub receiver: Receiver,
    /// Whether we initiated the handshake that made it.
    pub initiator: bool,
    /// When the handshake completed.
    pub created: Instant,
}

impl Keypair {
    /// Builds both halves from the raw Noise split (`send`, `recv` keys).
    pub fn new(
        send: &[u8; 32],
        recv: &[u8; 32],
        local_index: u32,
        remote_index: u32,
        initiator: bool,
        now: Instant,
    ) -> Self {
        Self {
            sender: Arc::new(Sender::new(send, remote_index)),
            receiver: Receiver::new(recv, local_index),
            initiator,
            created: now,
        }
    }
}

/// Timing parameters of tunnels.
///
/// Liveness works like WireGuard's passive keepalives, made fast: a tunnel
/// over which we sent something (data, a Babel hello, a probe) and heard
/// nothing back is *waiting*; once the peer has also been quiet for one
/// `keepalive` interval we probe it every `keepalive`, and if nothing
/// authenticated arrives within `dead_after` of the first unanswered send the
/// peer is dead. Anything received counts as an answer, so a busy tunnel
/// sends no probes at all, and an idle one sends one probe per `idle_probe`
/// (or per Babel hello, whichever comes first).
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// Interval of keepalive probes once the peer went quiet while we were
    /// sending; also how often a tunnel that is sending checks for answers.
    pub keepalive: Duration,
    /// A peer that leaves what we sent unanswered (probes included) for this
    /// long is dead.
    pub dead_after: Duration,
    /// A probe (which also measures the RTT and proves the peer alive) is
    /// sent when none was sent for this long, even on a silent tunnel.
    pub idle_probe: Duration,
    /// The initiator of the current session starts a new handshake after
    /// this long (the responder falls back to it 30 s later).
    pub rekey_after: Duration,
    /// Keys older than this are discarded (old sessions drain until then).
    pub reject_after: Duration,
    /// A new handshake is started once this many messages were sent.
    pub rekey_after_messages: u64,
    /// Retransmission interval of an unanswered handshake.
    pub handshake_retry: Duration,
    /// A tunnel that cannot complete its first handshake within this long
    /// is given up.
    pub handshake_timeout: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            keepalive: Duration::from_millis(250),
            dead_after: Duration::from_millis(1500),
            idle_probe: Duration::from_secs(10),
            rekey_after: Duration::from_secs(120),
            reject_after: Duration::from_secs(180),
            rekey_after_messages: 1 << 60,
            handshake_retry: Duration::from_secs(1),
            handshake_timeout: Duration::from_secs(15),
        }
    }
}

/// How many `keepalive` intervals apart an idle tunnel (nothing sent, no
/// answer awaited) checks whether something was sent.
const IDLE_TICKS: u32 = 4;

/// The timers of one tunnel; deadlines live in an array indexed by this.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Timer {
    /// Check for unanswered sends; send a keepalive probe if needed.
    Keepalive = 0,
    /// What we sent stayed unanswered for `dead_after`: the peer is dead.
    Dead = 1,
    /// Start a handshake (rekey).
    Rekey = 2,
}

/// Deadlines indexed by [`Timer`].
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct TimerTable([Option<Instant>; 3]);

impl TimerTable {
    pub(crate) fn set(&mut self, t: Timer, at: Instant) {
        self.0[t as usize] = Some(at);
    }
    pub(crate) fn stop(&mut self, t: Timer) {
        self.0[t as usize] = None;
    }
    pub(crate) fn get(&self, t: Timer) -> Option<Instant> {
        self.0[t as usize]
    }
    pub(crate) fn is_expired(&self, t: Timer, now: Instant) -> bool {
        self.0[t as usize].is_some_and(|d| d <= now)
    }
    pub(crate) fn next(&self) -> Option<Instant> {
        self.0.iter().flatten().min().copied()
    }
}

/// Dead-peer detection state of the current session (see [`Timing`]).
///
/// Data is sealed by another task, so sends are observed by sampling the
/// current sender's counter at each check; control messages the endpoint
/// seals itself (probes, answers to probes) are subtracted so that answering
/// a probe never makes the answerer wait for an answer in turn.
#[derive(Clone, Copy, Debug)]
struct Liveness {
    /// Control messages sealed on the current sender.
    control_sent: u64,
    /// Data messages of the current sender counted at the last check.
    data_mark: u64,
    /// When the sends were last checked.
    last_check: Option<Instant>,
    /// Earliest time since which something we sent is unanswered.
    waiting_since: Option<Instant>,
    /// When the last probe was sent.
    last_probe: Option<Instant>,
    /// Probe at the next check whatever the state (key confirmation).
    probe_now: bool,
}

impl Liveness {
    /// A fresh state; a session installed at `installed` probes at once.
    fn new(installed: Option<Instant>) -> Self {
        Self {
            control_sent: 0,
            data_mark: 0,
            last_check: installed,
            waiting_since: None,
            last_probe: None,
            probe_now: installed.is_some(),
        }
    }
}

/// The keys of one tunnel: the current session, the previous one (still
/// accepted while it drains, until `reject_after`), and the timers that
/// drive keepalives, rekeying and dead-peer detection.
#[derive(Debug)]
pub struct Sessions {
    timing: Timing,
    current: Option<Keypair>,
    previous: Option<Keypair>,
    last_received: Option<Instant>,
    live: Liveness,
    timers: TimerTable,
}

/// What the tunnel asks its owner to do after a timeout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionAction {
    /// Send a keepalive probe on the current session.
    Keepalive,
    /// Start a new handshake (rekey).
    Rekey,
    /// What we sent stayed unanswered for `dead_after`.
    Dead,
}

impl Sessions {
    /// No keys yet.
    pub fn new(timing: Timing) -> Self {
        Self {
            timing,
            current: None,
            previous: None,
            last_received: None,
            live: Liveness::new(None),
            timers: TimerTable::default(),
        }
    }

    /// The timing parameters.
    pub fn timing(&self) -> &Timing {
        &self.timing
    }

    /// The current sender, if a session is established and not expired.
    pub fn sender(&self) -> Option<&Arc<Sender>> {
        self.current.as_ref().map(|k| &k.sender)
    }

    /// When the current session was created.
    pub fn current_created(&self) -> Option<Instant> {
        self.current.as_ref().map(|k| k.created)
    }

    /// Whether a session is established.
    pub fn is_established(&self) -> bool {
        self.current.is_some()
    }

    /// When something authenticated last arrived from the peer.
    pub fn last_received(&self) -> Option<Instant> {
        self.last_received
    }

    /// Since when something we sent is unanswered, if it is.
    pub fn waiting_since(&self) -> Option<Instant> {
        self.live.waiting_since
    }

    /// The local indices of the sessions whose keys are still held.
    pub fn local_indices(&self) -> impl Iterator<Item = u32> + '_ {
        self.current
            .iter()
            .chain(self.previous.iter())
            .map(|k| k.receiver.local_index())
    }

    /// Installs a new session; the current one becomes the previous (and
    /// the previous one is dropped). Returns the local index that is no
    /// longer in use, if any. A probe is due at once: it confirms the keys
    /// to the peer and measures the RTT.
    pub fn install(&mut self, kp: Keypair, now: Instant) -> Option<u32> {
        let dropped = self.previous.take().map(|k| k.receiver.local_index());
        self.previous = self.current.replace(kp);
        self.last_received = Some(now);
        let rekey_in = if self.current.as_ref().is_some_and(|k| k.initiator) {
            self.timing.rekey_after
        } else {
            self.timing.rekey_after + Duration::from_secs(30)
        };
        self.timers.set(Timer::Rekey, now + rekey_in);
        self.live = Liveness::new(Some(now));
        self.timers.set(Timer::Keepalive, now);
        self.timers.stop(Timer::Dead);
        dropped
    }

    /// Records that the owner sealed a control message (probe or answer)
    /// on the current sender: it is not data awaiting an answer.
    pub fn control_sent(&mut self) {
        self.live.control_sent += 1;
    }

    /// Opens a data message addressed to `local_index`. On success the peer
    /// is known alive at `now`.
    pub fn open<'a>(
        &mut self,
        local_index: u32,
        msg: &'a mut [u8],
        now: Instant,
    ) -> Result<(&'a mut [u8], u64), SessionError> {
        let kp = [self.current.as_mut(), self.previous.as_mut()]
            .into_iter()
            .flatten()
            .find(|k| k.receiver.local_index() == local_index)
            .ok_or(SessionError::Auth)?;
        if now.saturating_duration_since(kp.created) >= self.timing.reject_after {
            return Err(SessionError::Auth);
        }
        let r = kp.receiver.open(msg)?;
        self.last_received = Some(now);
        Ok(r)
    }

    /// The earliest deadline.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.next()
    }

    /// Samples the send counter: updates `waiting_since` and the dead timer.
    /// Returns whether data was sent since the last check.
    fn check_sends(&mut self, now: Instant) -> bool {
        let heard = self.last_received;
        if let (Some(ws), Some(rx)) = (self.live.waiting_since, heard) {
            if rx > ws {
                self.live.waiting_since = None;
            }
        }
        let sent = match &self.current {
            Some(k) => {
                let data = k
                    .sender
                    .messages_sent()
                    .saturating_sub(self.live.control_sent);
                let sent = data > self.live.data_mark;
                self.live.data_mark = data;
                sent
            }
            // No keys (expired before a rekey succeeded): nothing can be
            // sent and the peer must still answer a handshake in time.
            None => true,
        };
        if sent && self.live.waiting_since.is_none() {
            // The send happened after the previous check and after the last
            // answer; never assume it is older than one keepalive interval
            // (an idle tunnel checks less often).
            let mut since = self.live.last_check.unwrap_or(now);
            if let Some(rx) = heard {
                since = since.max(rx);
            }
            if let Some(recent) = now.checked_sub(self.timing.keepalive) {
                since = since.max(recent);
            }
            self.live.waiting_since = Some(since.min(now));
        }
        self.live.last_check = Some(now);
        match self.live.waiting_since {
            Some(ws) => self.timers.set(Timer::Dead, ws + self.timing.dead_after),
            None => self.timers.stop(Timer::Dead),
        }
        sent
    }

    /// Runs the timers due at `now`; returns the first action to take (call
    /// again until `None`).
    pub fn handle_timeout(&mut self, now: Instant) -> Option<SessionAction> {
        // Expire keys past reject_after: a session too old is never used.
        if self
            .previous
            .as_ref()
            .is_some_and(|k| now.saturating_duration_since(k.created) >= self.timing.reject_after)
        {
            self.previous = None;
        }
        if self
            .current
            .as_ref()
            .is_some_and(|k| now.saturating_duration_since(k.created) >= self.timing.reject_after)
        {
            self.current = None;
        }
        if self.timers.is_expired(Timer::Dead, now) {
            // An answer may have arrived since the timer was set.
            self.check_sends(now);
            if self.timers.is_expired(Timer::Dead, now) {
                self.timers = TimerTable::default();
                return Some(SessionAction::Dead);
            }
        }
        if self.timers.is_expired(Timer::Rekey, now)
            || self
                .current
                .as_ref()
                .is_some_and(|k| k.sender.messages_sent() >= self.timing.rekey_after_messages)
                && self.timers.get(Timer::Rekey).is_some()
        {
            self.timers.stop(Timer::Rekey);
            return Some(SessionAction::Rekey);
        }
        if self.timers.is_expired(Timer::Keepalive, now) {
            let sent = self.check_sends(now);
            let quiet = self
                .last_received
                .is_none_or(|rx| now.saturating_duration_since(rx) >= self.timing.keepalive);
            let stale = self
                .live
                .last_probe
                .is_none_or(|p| now.saturating_duration_since(p) >= self.timing.idle_probe);
            let probe = self.current.is_some()
                && (self.live.probe_now || stale || self.live.waiting_since.is_some() && quiet);
            if probe {
                self.live.probe_now = false;
                self.live.last_probe = Some(now);
                if self.live.waiting_since.is_none() {
                    self.live.waiting_since = Some(now);
                    self.timers.set(Timer::Dead, now + self.timing.dead_after);
                }
            }
            let active = sent || self.live.waiting_since.is_some();
            let mut next = now
                + if active {
                    self.timing.keepalive
                } else {
                    self.timing.keepalive * IDLE_TICKS
                };
            if let Some(p) = self.live.last_probe {
                // Not later than the idle probe.
                next = next
                    .min(p + self.timing.idle_probe)
                    .max(now + Duration::from_millis(1));
            }
            self.timers.set(Timer::Keepalive, next);
            if probe {
                return Some(SessionAction::Keepalive);
            }
        }
        None
    }

    /// Re-arms the rekey timer after a failed rekey attempt.
    pub fn retry_rekey_at(&mut self, at: Instant) {
        self.timers.set(Timer::Rekey, at);
    }

    /// Forgets every key and timer.
    pub fn clear(&mut self) {
        self.current = None;
        self.previous = None;
        self.timers = TimerTable::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tunnel::wire::DATA_OVERHEAD;

    fn pair(now: Instant) -> (Keypair, Keypair) {
        let a = [1u8; 32];
        let b = [2u8; 32];
        (
            Keypair::new(&a, &b, 10, 20, true, now),
            Keypair::new(&b, &a, 20, 10, false, now),
        )
    }

    #[test]
    fn replay_window_edges() {
        let mut w = ReplayWindow::new();
        assert!(w.accept(0));
        assert!(!w.accept(0), "duplicate");
        assert!(w.accept(5000));
        // Exactly REPLAY_WINDOW - 1 behind is accepted, REPLAY_WINDOW behind is not.
        assert!(w.check(5000 - (REPLAY_WINDOW - 1)));
        assert!(!w.check(5000 - REPLAY_WINDOW));
        assert!(w.accept(5000 - (REPLAY_WINDOW - 1)));
        assert!(!w.accept(5000 - (REPLAY_WINDOW - 1)));
        assert!(!w.accept(0));
        // Everything in the window, once, in reverse order.
        let mut w = ReplayWindow::new();
        assert!(w.accept(10_000));
        for c in (10_000 - REPLAY_WINDOW + 1..10_000).rev() {
            assert!(w.accept(c), "{c}");
        }
        for c in 10_000 - REPLAY_WINDOW + 1..=10_000 {
            assert!(!w.accept(c), "{c}");
        }
        // A big jump clears the whole bitmap.
        assert!(w.accept(1_000_000));
        assert!(w.accept(1_000_000 - 64));
        assert!(!w.accept(REJECT_AFTER_MESSAGES));
    }

    #[test]
    fn replay_window_sequential_and_reordered() {
        let mut w = ReplayWindow::new();
        for c in 0..10_000u64 {
            // Pairwise swap to simulate reordering.
            let c = if c % 2 == 0 { c + 1 } else { c - 1 };
            assert!(w.accept(c));
        }
        for c in 9_000..10_000u64 {
            assert!(!w.accept(c));
        }
    }

    #[test]
    fn seal_open_round_trip_and_tamper() {
        let now = Instant::now();
        let (a, mut b) = pair(now);
        let mut buf = [0u8; 1500];
        buf[DATA_HEADER_LEN..DATA_HEADER_LEN + 5].copy_from_slice(b"hello");
        let n = a.sender.seal(&mut buf, 5).unwrap();
        assert_eq!(n, 5 + DATA_OVERHEAD);
        let mut copy = buf;
        let (plain, c) = b.receiver.open(&mut buf[..n]).unwrap();
        assert_eq!((&*plain, c), (&b"hello"[..], 0));
        // Replayed.
        let mut again = copy;
        assert_eq!(
            b.receiver.open(&mut again[..n]).unwrap_err(),
            SessionError::Replay
        );
        // Tampered header (counter) or body.
        copy[15] ^= 1;
        assert_eq!(
            b.receiver.open(&mut copy[..n]).unwrap_err(),
            SessionError::Auth
        );
        // Too small buffer.
        assert_eq!(
            a.sender.seal(&mut [0u8; 40], 10).unwrap_err(),
            SessionError::BufferTooSmall
        );
    }

    #[test]
    fn counter_exhaustion() {
        let now = Instant::now();
        let (a, mut b) = pair(now);
        a.sender.set_next(REJECT_AFTER_MESSAGES - 1);
        let mut buf = [0u8; 64];
        let n = a.sender.seal(&mut buf, 0).unwrap();
        assert!(b.receiver.open(&mut buf[..n]).is_ok());
        for _ in 0..3 {
            assert_eq!(
                a.sender.seal(&mut buf, 0).unwrap_err(),
                SessionError::CounterExhausted
            );
        }
        assert_eq!(a.sender.messages_sent(), REJECT_AFTER_MESSAGES);
    }

    #[test]
    fn rekey_and_drain_on_virtual_clock() {
        let t0 = Instant::now();
        let timing = Timing::default();
        let mut s = Sessions::new(timing);
        let (peer, ours) = pair(t0);
        // We are the initiator of this session: rekey after `rekey_after`.
        let ours = Keypair {
            initiator: true,
            ..ours
        };
        s.install(ours, t0);
        assert_eq!(s.handle_timeout(t0), Some(SessionAction::Keepalive));
        assert_eq!(s.handle_timeout(t0), None);
        let mut buf = [0u8; 64];
        let mut t = t0;
        let mut rekeyed = None;
        while rekeyed.is_none() && t < t0 + Duration::from_secs(200) {
            t += Duration::from_millis(500);
            // The peer keeps talking, so it is never dead.
            let n = peer.sender.seal(&mut buf, 0).unwrap();
            s.open(20, &mut buf[..n], t).unwrap();
            while let Some(a) = s.handle_timeout(t) {
                match a {
                    SessionAction::Rekey => rekeyed = Some(t),
                    SessionAction::Keepalive => {}
                    SessionAction::Dead => panic!("dead at {:?}", t - t0),
                }
            }
        }
        assert_eq!(rekeyed.unwrap() - t0, timing.rekey_after);
        // The new session is installed; the old one drains until reject_after.
        let t1 = t0 + timing.rekey_after;
        assert_eq!(
            s.install(Keypair::new(&[3; 32], &[4; 32], 11, 21, true, t1), t1),
            None
        );
        assert_eq!(s.local_indices().collect::<Vec<_>>(), vec![11, 20]);
        let n = peer.sender.seal(&mut buf, 0).unwrap();
        let late = t0 + timing.reject_after - Duration::from_millis(1);
        assert!(
            s.open(20, &mut buf[..n], late).is_ok(),
            "old session still drains"
        );
        s.handle_timeout(late);
        assert_eq!(s.local_indices().count(), 2);
        s.handle_timeout(t0 + timing.reject_after);
        assert_eq!(s.local_indices().collect::<Vec<_>>(), vec![11]);
        // A responder-side session rekeys 30 s later than an initiator's.
        let mut r = Sessions::new(timing);
        r.install(Keypair::new(&[5; 32], &[6; 32], 1, 2, false, t0), t0);
        assert_eq!(
            r.timers.get(Timer::Rekey),
            Some(t0 + timing.rekey_after + Duration::from_secs(30))
        );
    }

    #[test]
    fn rekey_after_messages() {
        let t0 = Instant::now();
        let timing = Timing {
            rekey_after_messages: 100,
            ..Timing::default()
        };
        let mut s = Sessions::new(timing);
        s.install(Keypair::new(&[1; 32], &[2; 32], 1, 2, true, t0), t0);
        assert_eq!(s.handle_timeout(t0), Some(SessionAction::Keepalive));
        s.sender().unwrap().set_next(100);
        assert_eq!(s.handle_timeout(t0), Some(SessionAction::Rekey));
        assert_eq!(s.handle_timeout(t0), None, "asked once");
    }

    /// A virtual-clock run of our `Sessions` against a peer, in 10 ms
    /// steps. `we_send(t)`: whether we send a data message at `t` (ms);
    /// `peer_sends(t)`: whether the peer does; `link_up(t)`: whether messages
    /// get through at `t`; `lost()`: an extra random loss per message. The
    /// peer answers every probe that reaches it. Returns the probe times and
    /// the time of the Dead action, in ms since the session was installed.
    fn drive(
        timing: Timing,
        until_ms: u64,
        we_send: impl Fn(u64) -> bool,
        peer_sends: impl Fn(u64) -> bool,
        link_up: impl Fn(u64) -> bool,
        mut lost: impl FnMut() -> bool,
    ) -> (Vec<u64>, Option<u64>) {
        let t0 = Instant::now();
        let (peer, ours) = pair(t0);
        let mut s = Sessions::new(timing);
        s.install(ours, t0);
        let mut buf = [0u8; 64];
        let mut probes = Vec::new();
        let mut deliver = |s: &mut Sessions, now: Instant| {
            let n = peer.sender.seal(&mut buf, 0).unwrap();
            s.open(20, &mut buf[..n], now).unwrap();
        };
        // Answers to probes arrive one step (10 ms) after the probe.
        let mut answer = false;
        for ms in (0..=until_ms).step_by(10) {
            let now = t0 + Duration::from_millis(ms);
            let through = |lost: &mut dyn FnMut() -> bool| link_up(ms) && !lost();
            if std::mem::take(&mut answer) && through(&mut lost) {
                deliver(&mut s, now);
            }
            if we_send(ms) {
                s.sender().unwrap().seal(&mut [0u8; 64], 0).unwrap();
            }
            if peer_sends(ms) && through(&mut lost) {
                deliver(&mut s, now);
            }
            while let Some(a) = s.handle_timeout(now) {
                match a {
                    SessionAction::Keepalive => {
                        probes.push(ms);
                        s.sender().unwrap().seal(&mut [0u8; 64], 0).unwrap();
                        s.control_sent();
                        // The probe crosses the link; its answer comes back.
                        answer = through(&mut lost);
                    }
                    SessionAction::Dead => return (probes, Some(ms)),
                    SessionAction::Rekey => {}
                }
            }
        }
        (probes, None)
    }

    #[test]
    fn busy_tunnel_needs_no_probes_and_idle_one_few() {
        let timing = Timing::default();
        // Both sides send every 50 ms for a minute: only the key
        // confirmation probe is sent, and the idle probe every 10 s.
        let (probes, dead) = drive(
            timing,
            60_000,
            |t| t % 50 == 0,
            |t| t % 50 == 20,
            |_| true,
            || false,
        );
        assert_eq!(dead, None);
        assert_eq!(probes.len(), 7, "{probes:?}");
        // Nobody sends anything: one probe per idle_probe.
        let (probes, dead) = drive(timing, 60_000, |_| false, |_| false, |_| true, || false);
        assert_eq!(dead, None);
        assert_eq!(probes, [0, 10_000, 20_000, 30_000, 40_000, 50_000, 60_000]);
        // A Babel hello each way every 4 s: one probe per hello we send.
        let (probes, dead) = drive(
            timing,
            60_000,
            |t| t % 4000 == 1000,
            |t| t % 4000 == 3000,
            |_| true,
            || false,
        );
        assert_eq!(dead, None);
        eprintln!(
            "probes in a minute with a hello each way per 4 s: {}",
            probes.len()
        );
        assert!(probes.len() <= 16, "{probes:?}");
    }

    #[test]
    fn silent_cut_under_traffic_is_dead_within_dead_after() {
        let timing = Timing::default();
        for cut in [5_000u64, 5_030, 5_120, 5_240] {
            let (probes, dead) = drive(
                timing,
                20_000,
                |t| t % 100 == 0,
                |t| t % 100 == 10,
                |t| t < cut,
                || false,
            );
            let dead = dead.expect("detected");
            let after = dead - cut;
            assert!(
                (1000..=1500).contains(&after),
                "cut at {cut}: dead {after} ms later"
            );
            // Probes went out every keepalive once the peer was quiet.
            let during: Vec<_> = probes.iter().filter(|&&p| p >= cut).collect();
            assert!(during.len() >= 4, "cut at {cut}: probes {probes:?}");
        }
    }

    #[test]
    fn one_way_traffic_only_probes_and_a_dead_idle_peer_is_found() {
        let timing = Timing::default();
        // We stream, the peer only answers probes: a probe per quiet
        // keepalive interval, never dead.
        let (probes, dead) = drive(
            timing,
            30_000,
            |t| t % 20 == 0,
            |_| false,
            |_| true,
            || false,
        );
        assert_eq!(dead, None);
        eprintln!("probes in 30 s of one-way traffic: {}", probes.len());
        assert!((50..=130).contains(&probes.len()), "{}", probes.len());
        // An idle tunnel whose peer vanished is found by the idle probe.
        let (_, dead) = drive(
            timing,
            30_000,
            |_| false,
            |_| false,
            |t| t < 3_000,
            || false,
        );
        let dead = dead.expect("detected");
        // The idle probe is due 10 s after the last one (at 0); dead 1.5 s
        // after it.
        assert_eq!(dead, 11_500);
    }

    #[test]
    fn five_percent_loss_kills_no_tunnel() {
        use rand::{Rng, SeedableRng};
        // No rekeys in this harness: keep the session for the whole run.
        let timing = Timing {
            rekey_after: Duration::from_secs(3600),
            reject_after: Duration::from_secs(3600),
            ..Timing::default()
        };
        // Ten virtual minutes of each traffic pattern, 5 % loss on every
        // message (probes and answers included), seeded.
        for (seed, pattern) in [(1u64, 0u8), (2, 1), (3, 2)] {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let (_, dead) = drive(
                timing,
                600_000,
                |t| match pattern {
                    0 => t % 100 == 0,
                    1 => t % 20 == 0,
                    _ => t % 4000 == 1000,
                },
                |t| match pattern {
                    0 => t % 100 == 50,
                    1 => false,
                    _ => t % 4000 == 3000,
                },
                |_| true,
                || rng.gen_bool(0.05),
            );
            assert_eq!(dead, None, "pattern {pattern}");
        }
    }

    #[test]
    fn dead_peer_and_old_keys_refused() {
        let t0 = Instant::now();
        let timing = Timing {
            dead_after: Duration::from_secs(3),
            ..Timing::default()
        };
        let mut s = Sessions::new(timing);
        let (a, b) = pair(t0);
        s.install(b, t0);
        // The key-confirmation probe is unanswered until 2 s.
        assert_eq!(s.handle_timeout(t0), Some(SessionAction::Keepalive));
        let mut buf = [0u8; 64];
        let n = a.sender.seal(&mut buf, 0).unwrap();
        assert!(s
            .open(20, &mut buf[..n], t0 + Duration::from_secs(2))
            .is_ok());
        // We send at 4 s; nothing comes back: dead 3 s later.
        let mut dead = None;
        for ms in (2000..9000).step_by(50) {
            if ms == 4000 {
                s.sender().unwrap().seal(&mut [0u8; 64], 0).unwrap();
            }
            match s.handle_timeout(t0 + Duration::from_millis(ms)) {
                Some(SessionAction::Dead) => {
                    dead = Some(ms);
                    break;
                }
                Some(SessionAction::Keepalive) => s.control_sent(),
                _ => {}
            }
        }
        let dead = dead.expect("dead");
        assert!((6_750..=7_000).contains(&dead), "dead at {dead} ms");
        // Keys past reject_after are refused even if a message arrives.
        let n = a.sender.seal(&mut buf, 0).unwrap();
        assert_eq!(
            s.open(20, &mut buf[..n], t0 + timing.reject_after)
                .unwrap_err(),
            SessionError::Auth
        );
    }
}
