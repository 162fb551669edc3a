//! The transport-agnostic tunnel endpoint: a sans-I/O state machine that
//! owns every tunnel of one transport socket. It demultiplexes received
//! messages by receiver index, runs handshakes (with cookies under load),
//! opens data messages, and tells its owner what to send, when to wake up
//! and what happened.
//!
//! API shape (STYLE principle 2): getters; `handle_datagram` and
//! `handle_timeout` for inputs; `connect`, `close`, `set_revoked` commands;
//! `poll_transmit`, `poll_timeout`, `poll_event` for outputs. Time is an
//! argument; randomness comes from a seedable RNG.
//!
//! The encrypting direction does not go through the endpoint: each tunnel's
//! current [`Sender`] is handed out (in [`Event::Keys`]) to the task that
//! reads the TUN device, which seals packets without any lock.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::cookie::{CookieChecker, CookieConfig, InitDrop, Verdict, COOKIE_LIFETIME};
use super::handshake::{Completed, Credentials, HandshakeError, Initiator, PeerInfo, Responder};
use super::session::{Sender, SessionAction, SessionError, Sessions, Timing};
use super::wire::{
    HandshakeRepr, MessageType, Packet, DATA_HEADER_LEN, MAC_LEN, MAX_HANDSHAKE_LEN,
};
use crate::pki::NodePrefix;

/// Identifies a tunnel within its endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TunnelId(pub u32);

impl fmt::Display for TunnelId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Endpoint parameters.
#[derive(Clone, Copy, Debug)]
pub struct EndpointConfig {
    /// Tunnel timers.
    pub timing: Timing,
    /// Handshake flood protection.
    pub cookie: CookieConfig,
    /// Whether handshakes from unknown peers create tunnels.
    pub accept_incoming: bool,
    /// Most tunnels at once (incoming handshakes beyond it are refused).
    pub max_tunnels: usize,
    /// Most half-open responder handshakes kept at once.
    pub max_pending: usize,
}

impl Default for EndpointConfig {
    fn default() -> Self {
        Self {
            timing: Timing::default(),
            cookie: CookieConfig::default(),
            accept_incoming: true,
            max_tunnels: 1024,
            max_pending: 1024,
        }
    }
}

/// Why a tunnel went down.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DownReason {
    /// Nothing authenticated arrived from the peer within the liveness
    /// timeout.
    #[error("peer silent for more than {0:?}")]
    Timeout(Duration),
    /// The first handshake never completed.
    #[error("no handshake response within {0:?}")]
    HandshakeTimeout(Duration),
    /// The peer was refused during the handshake.
    #[error("{0}")]
    Refused(HandshakeError),
    /// The peer's certificate was revoked.
    #[error("peer certificate revoked")]
    Revoked,
    /// Closed by our side.
    #[error("closed")]
    Closed,
    /// The peer told us it closed the tunnel (for instance because it
    /// refused it: it has enough tunnels).
    #[error("closed by the peer")]
    ClosedByPeer,
}

/// Something the owner must know about.
// Events are rare (handshakes, timeouts): their size does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug)]
pub enum Event {
    /// A tunnel completed its first handshake.
    Up {
        /// The tunnel.
        id: TunnelId,
        /// The authenticated peer.
        peer: PeerInfo,
        /// Its transport address.
        addr: SocketAddr,
        /// Whether we initiated it.
        initiated: bool,
    },
    /// A tunnel has a new session (first one, or a rekey): the encrypting
    /// task must switch to this sender. `None`: the session expired
    /// (`reject_after`) before a rekey succeeded; the task must stop
    /// sending (the peer would drop the packets) until new keys arrive.
    Keys {
        /// The tunnel.
        id: TunnelId,
        /// The sender of the new session, if any.
        sender: Option<Arc<Sender>>,
    },
    /// A tunnel's peer now sends from another address.
    Roamed {
        /// The tunnel.
        id: TunnelId,
        /// The new address.
        addr: SocketAddr,
    },
    /// A tunnel is gone (its keys are forgotten).
    Down {
        /// The tunnel.
        id: TunnelId,
        /// Why.
        reason: DownReason,
    },
    /// A handshake from `addr` was refused (no tunnel was created).
    Refused {
        /// Where it came from.
        addr: SocketAddr,
        /// Why.
        error: HandshakeError,
    },
}

/// Counters of the encrypting direction, updated by the task that owns the
/// TUN device (atomics: no lock).
#[derive(Debug, Default)]
pub struct TxCounters {
    /// Packets sent.
    pub packets: AtomicU64,
    /// Inner bytes sent.
    pub bytes: AtomicU64,
    /// Packets dropped for lack of a usable session.
    pub no_session: AtomicU64,
    /// Packets dropped because the socket refused them.
    pub send_errors: AtomicU64,
}

/// Packets dropped on receive, by reason.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RxDrops {
    /// Replayed or too old counter.
    pub replay: u64,
    /// Failed authentication or unknown session.
    pub auth: u64,
    /// Not an IP packet nor a control message.
    pub malformed: u64,
}

/// A snapshot of one tunnel's counters.
#[derive(Clone, Debug, Default)]
pub struct TunnelStats {
    /// Packets received (IP packets delivered).
    pub rx_packets: u64,
    /// Inner bytes received.
    pub rx_bytes: u64,
    /// Packets sent.
    pub tx_packets: u64,
    /// Inner bytes sent.
    pub tx_bytes: u64,
    /// Receive drops by reason.
    pub rx_drops: RxDrops,
    /// Transmit drops for lack of a session.
    pub tx_no_session: u64,
    /// Transmit drops refused by the socket.
    pub tx_send_errors: u64,
    /// Completed handshakes.
    pub handshakes: u64,
    /// When the last handshake completed.
    pub last_handshake: Option<Instant>,
    /// Round-trip time of the last keepalive probe.
    pub rtt: Option<Duration>,
}

/// Endpoint-wide receive drops (messages not attributable to a tunnel).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EndpointDrops {
    /// Not a valid message.
    pub malformed: u64,
    /// Unknown receiver index.
    pub unknown_index: u64,
    /// `Init` with a bad mac1.
    pub bad_mac: u64,
    /// `Init` over its source's rate.
    pub rate_limited: u64,
    /// Cookie challenges sent.
    pub cookies_sent: u64,
}

/// What a received datagram turned out to be.
#[derive(Debug)]
pub enum Received<'a> {
    /// An IP packet for the tunnel's TUN device (a sub-slice of the input).
    Packet {
        /// The tunnel.
        id: TunnelId,
        /// The decrypted packet.
        packet: &'a mut [u8],
    },
    /// Handled internally (handshake, keepalive) or dropped.
    Nothing,
}

const CTRL_PING: u8 = 1;
const CTRL_PONG: u8 = 2;
/// The sender closed the tunnel: the receiver drops it at once instead of
/// waiting for its liveness timeout.
const CTRL_CLOSE: u8 = 3;
const CTRL_LEN: usize = 10;

#[derive(Clone, Copy, Debug)]
enum Slot {
    Session(TunnelId),
    Initiating(TunnelId),
    Responding,
}

#[derive(Debug)]
struct Tunnel {
    addr: SocketAddr,
    expected: Option<NodePrefix>,
    peer: Option<PeerInfo>,
    initiated: bool,
    /// Whether `Up` was reported: at once for responders, on the first
    /// authenticated data message for initiators (key confirmation, so a
    /// peer that refused us never shows as up).
    confirmed: bool,
    sessions: Sessions,
    initiator: Option<Initiator>,
    first_attempt: Option<Instant>,
    retry_at: Option<Instant>,
    cookie: Option<([u8; MAC_LEN], Instant)>,
    ping_seq: u64,
    ping_sent: Option<(u64, Instant)>,
    stats: TunnelStats,
    tx: Arc<TxCounters>,
}

/// The sans-I/O tunnel endpoint of one transport.
pub struct Endpoint {
    creds: Arc<Credentials>,
    config: EndpointConfig,
    rng: StdRng,
    next_id: u32,
    tunnels: HashMap<TunnelId, Tunnel>,
    index: HashMap<u32, Slot>,
    responders: HashMap<u32, (Responder, SocketAddr)>,
    by_prefix: HashMap<NodePrefix, TunnelId>,
    cookie: CookieChecker,
    drops: EndpointDrops,
    events: VecDeque<Event>,
    transmits: VecDeque<(SocketAddr, Vec<u8>)>,
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoint")
            .field("tunnels", &self.tunnels.len())
            .finish_non_exhaustive()
    }
}

impl Endpoint {
    /// An endpoint with our credentials; `seed` seeds its RNG (indices,
    /// cookie secrets, jitter).
    pub fn new(creds: Arc<Credentials>, config: EndpointConfig, seed: u64) -> Self {
        let cookie = CookieChecker::new(creds.mac_keys().clone(), config.cookie);
        Self {
            creds,
            config,
            rng: StdRng::seed_from_u64(seed),
            next_id: 0,
            tunnels: HashMap::new(),
            index: HashMap::new(),
            responders: HashMap::new(),
            by_prefix: HashMap::new(),
            cookie,
            drops: EndpointDrops::default(),
            events: VecDeque::new(),
            transmits: VecDeque::new(),
        }
    }

    // ---- getters ----

    /// Our credentials.
    pub fn credentials(&self) -> &Arc<Credentials> {
        &self.creds
    }

    /// The tunnels that exist (up or connecting).
    pub fn tunnels(&self) -> impl Iterator<Item = TunnelId> + '_ {
        self.tunnels.keys().copied()
    }

    /// The peer of an established tunnel.
    pub fn peer(&self, id: TunnelId) -> Option<&PeerInfo> {
        self.tunnels.get(&id)?.peer.as_ref()
    }

    /// The tunnel's current transport address.
    pub fn addr(&self, id: TunnelId) -> Option<SocketAddr> {
        self.tunnels.get(&id).map(|t| t.addr)
    }

    /// The current sender of a tunnel.
    pub fn sender(&self, id: TunnelId) -> Option<Arc<Sender>> {
        self.tunnels.get(&id)?.sessions.sender().cloned()
    }

    /// The tunnel's transmit counters (shared with the encrypting task).
    pub fn tx_counters(&self, id: TunnelId) -> Option<Arc<TxCounters>> {
        self.tunnels.get(&id).map(|t| t.tx.clone())
    }

    /// A snapshot of the tunnel's counters.
    pub fn stats(&self, id: TunnelId) -> Option<TunnelStats> {
        let t = self.tunnels.get(&id)?;
        let mut s = t.stats.clone();
        s.tx_packets = t.tx.packets.load(Ordering::Relaxed);
        s.tx_bytes = t.tx.bytes.load(Ordering::Relaxed);
        s.tx_no_session = t.tx.no_session.load(Ordering::Relaxed);
        s.tx_send_errors = t.tx.send_errors.load(Ordering::Relaxed);
        Some(s)
    }

    /// Endpoint-wide drop counters.
    pub fn drops(&self) -> EndpointDrops {
        self.drops
    }

    // ---- commands ----

    /// Opens a tunnel to `addr`, expecting the peer's certificate CN to be
    /// `expected` (when given). Returns the existing tunnel if one to that
    /// prefix exists.
    pub fn connect(
        &mut self,
        addr: SocketAddr,
        expected: Option<NodePrefix>,
        now: Instant,
    ) -> TunnelId {
        if let Some(id) = expected.and_then(|p| self.by_prefix.get(&p)) {
            return *id;
        }
        let id = self.new_tunnel(addr, expected, true);
        if let Some(t) = self.tunnels.get_mut(&id) {
            t.first_attempt = Some(now);
        }
        self.start_handshake(id, now);
        id
    }

    /// Closes a tunnel. The peer is told by an authenticated close notice
    /// on the current session; should that be lost, it notices through its
    /// liveness timeout.
    pub fn close(&mut self, id: TunnelId) {
        self.send_control(id, CTRL_CLOSE, 0);
        self.remove(id, DownReason::Closed);
    }

    /// Replaces the revoked serials; tunnels to revoked peers go down.
    pub fn set_revoked(&mut self, serials: impl IntoIterator<Item = u64>) {
        self.creds.set_revoked(serials);
        let revoked: Vec<TunnelId> = self
            .tunnels
            .iter()
            .filter(|(_, t)| {
                t.peer
                    .as_ref()
                    .is_some_and(|p| self.creds.is_revoked(p.cert.serial()))
            })
            .map(|(id, _)| *id)
            .collect();
        for id in revoked {
            self.remove(id, DownReason::Revoked);
        }
    }

    // ---- inputs ----

    /// Handles one datagram (or record) from `from`. Data messages are
    /// decrypted in place; the returned packet borrows `buf`.
    pub fn handle_datagram<'a>(
        &mut self,
        from: SocketAddr,
        buf: &'a mut [u8],
        now: Instant,
        wall: SystemTime,
    ) -> Received<'a> {
        let Ok(p) = Packet::new_checked(&*buf) else {
            self.drops.malformed += 1;
            return Received::Nothing;
        };
        match p.kind() {
            MessageType::Data => {
                let idx = p.receiver_index();
                self.handle_data(from, idx, buf, now)
            }
            MessageType::Init => {
                self.handle_init(from, &p, now);
                Received::Nothing
            }
            MessageType::Response => {
                self.handle_response(from, &p, now, wall);
                Received::Nothing
            }
            MessageType::Finish => {
                self.handle_finish(from, &p, now, wall);
                Received::Nothing
            }
            MessageType::CookieReply => {
                self.handle_cookie(&p, now);
                Received::Nothing
            }
        }
    }

    /// Runs the timers due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        let ids: Vec<TunnelId> = self.tunnels.keys().copied().collect();
        for id in ids {
            self.tunnel_timeout(id, now);
        }
        let limit = self.config.timing.handshake_retry * 5;
        let stale: Vec<u32> = self
            .responders
            .iter()
            .filter(|(_, (r, _))| now.saturating_duration_since(r.created()) >= limit)
            .map(|(i, _)| *i)
            .collect();
        for i in stale {
            self.responders.remove(&i);
            self.index.remove(&i);
        }
    }

    // ---- outputs ----

    /// The next message to send: copies it into `buf` and returns its
    /// destination and length. A message longer than `buf` is dropped.
    pub fn poll_transmit(&mut self, buf: &mut [u8]) -> Option<(SocketAddr, usize)> {
        loop {
            let (addr, msg) = self.transmits.pop_front()?;
            if let Some(dst) = buf.get_mut(..msg.len()) {
                dst.copy_from_slice(&msg);
                return Some((addr, msg.len()));
            }
        }
    }

    /// When `handle_timeout` must be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let tunnels = self.tunnels.values().flat_map(|t| {
            [
                t.sessions.poll_timeout(),
                t.retry_at,
                t.first_attempt
                    .map(|f| f + self.config.timing.handshake_timeout),
            ]
        });
        let responders = self
            .responders
            .values()
            .map(|(r, _)| Some(r.created() + self.config.timing.handshake_retry * 5));
        tunnels.chain(responders).flatten().min()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    // ---- internals ----

    fn new_index(&mut self, slot: Slot) -> u32 {
        loop {
            let i: u32 = self.rng.gen();
            if let Entry::Vacant(e) = self.index.entry(i) {
                e.insert(slot);
                return i;
            }
        }
    }

    fn new_tunnel(
        &mut self,
        addr: SocketAddr,
        expected: Option<NodePrefix>,
        initiated: bool,
    ) -> TunnelId {
        let id = TunnelId(self.next_id);
        self.next_id = self.next_id.wrapping_add(1);
        self.tunnels.insert(
            id,
            Tunnel {
                addr,
                expected,
                peer: None,
                initiated,
                confirmed: false,
                sessions: Sessions::new(self.config.timing),
                initiator: None,
                first_attempt: None,
                retry_at: None,
                cookie: None,
                ping_seq: 0,
                ping_sent: None,
                stats: TunnelStats::default(),
                tx: Arc::new(TxCounters::default()),
            },
        );
        if let Some(p) = expected {
            self.by_prefix.insert(p, id);
        }
        id
    }

    fn remove(&mut self, id: TunnelId, reason: DownReason) {
        let Some(t) = self.tunnels.remove(&id) else {
            return;
        };
        for i in t.sessions.local_indices() {
            self.index.remove(&i);
        }
        if let Some(h) = &t.initiator {
            self.index.remove(&h.local_index());
        }
        let prefix = t.peer.as_ref().map(|p| p.prefix).or(t.expected);
        if let Some(p) = prefix {
            if self.by_prefix.get(&p) == Some(&id) {
                self.by_prefix.remove(&p);
            }
        }
        self.events.push_back(Event::Down { id, reason });
    }

    fn start_handshake(&mut self, id: TunnelId, now: Instant) {
        let idx = self.new_index(Slot::Initiating(id));
        let Some(t) = self.tunnels.get_mut(&id) else {
            return;
        };
        if let Some(old) = t.initiator.take() {
            self.index.remove(&old.local_index());
        }
        let cookie = t
            .cookie
            .filter(|(_, at)| now.saturating_duration_since(*at) < COOKIE_LIFETIME);
        let mut out = [0u8; MAX_HANDSHAKE_LEN];
        match Initiator::start(
            &self.creds,
            idx,
            t.expected,
            cookie.as_ref().map(|c| &c.0),
            now,
            &mut out,
        ) {
            Ok((h, n)) => {
                t.initiator = Some(h);
                // Jitter retries a little so crossing handshakes separate.
                let jitter = Duration::from_millis(self.rng.gen_range(0..100));
                t.retry_at = Some(now + self.config.timing.handshake_retry + jitter);
                self.transmits.push_back((t.addr, out[..n].to_vec()));
            }
            Err(_) => {
                self.index.remove(&idx);
            }
        }
    }

    fn tunnel_timeout(&mut self, id: TunnelId, now: Instant) {
        let timing = self.config.timing;
        let Some(t) = self.tunnels.get_mut(&id) else {
            return;
        };
        if !t.confirmed {
            if let Some(first) = t.first_attempt {
                if now >= first + timing.handshake_timeout {
                    self.remove(id, DownReason::HandshakeTimeout(timing.handshake_timeout));
                    return;
                }
            }
        }
        if t.retry_at.is_some_and(|r| r <= now) {
            t.retry_at = None;
            self.start_handshake(id, now);
        }
        let was_established = self
            .tunnels
            .get(&id)
            .is_some_and(|t| t.sessions.is_established());
        loop {
            let Some(t) = self.tunnels.get_mut(&id) else {
                return;
            };
            match t.sessions.handle_timeout(now) {
                None => break,
                Some(SessionAction::Dead) => {
                    let reason = if t.confirmed {
                        DownReason::Timeout(timing.dead_after)
                    } else {
                        DownReason::HandshakeTimeout(timing.dead_after)
                    };
                    self.remove(id, reason);
                    return;
                }
                Some(SessionAction::Rekey) => {
                    if t.initiator.is_none() {
                        self.start_handshake(id, now);
                    }
                }
                Some(SessionAction::Keepalive) => {
                    t.ping_seq += 1;
                    let seq = t.ping_seq;
                    // Time one probe at a time; a lost one is replaced once
                    // its answer could no longer arrive.
                    if t.ping_sent.is_none_or(|(_, at)| {
                        now.saturating_duration_since(at) >= timing.dead_after
                    }) {
                        t.ping_sent = Some((seq, now));
                    }
                    self.send_control(id, CTRL_PING, seq);
                }
            }
        }
        // Session expired (reject_after) without a replacement: the
        // encrypting task drops its sender, and we rehandshake.
        if let Some(t) = self.tunnels.get(&id) {
            if was_established && !t.sessions.is_established() {
                self.events.push_back(Event::Keys { id, sender: None });
            }
            if !t.sessions.is_established() && t.peer.is_some() && t.initiator.is_none() {
                self.start_handshake(id, now);
            }
        }
    }

    fn send_control(&mut self, id: TunnelId, kind: u8, seq: u64) {
        let Some(t) = self.tunnels.get_mut(&id) else {
            return;
        };
        let Some(sender) = t.sessions.sender() else {
            return;
        };
        let mut buf = vec![0u8; DATA_HEADER_LEN + CTRL_LEN + super::wire::TAG_LEN];
        buf[DATA_HEADER_LEN] = 0;
        buf[DATA_HEADER_LEN + 1] = kind;
        buf[DATA_HEADER_LEN + 2..DATA_HEADER_LEN + CTRL_LEN].copy_from_slice(&seq.to_be_bytes());
        if let Ok(n) = sender.seal(&mut buf, CTRL_LEN) {
            buf.truncate(n);
            t.sessions.control_sent();
            self.transmits.push_back((t.addr, buf));
        }
    }

    fn handle_data<'a>(
        &mut self,
        from: SocketAddr,
        idx: u32,
        buf: &'a mut [u8],
        now: Instant,
    ) -> Received<'a> {
        let Some(Slot::Session(id)) = self.index.get(&idx).copied() else {
            self.drops.unknown_index += 1;
            return Received::Nothing;
        };
        let Some(t) = self.tunnels.get_mut(&id) else {
            self.drops.unknown_index += 1;
            return Received::Nothing;
        };
        let plain = match t.sessions.open(idx, buf, now) {
            Ok((plain, _)) => plain,
            Err(SessionError::Replay) => {
                t.stats.rx_drops.replay += 1;
                return Received::Nothing;
            }
            Err(_) => {
                t.stats.rx_drops.auth += 1;
                return Received::Nothing;
            }
        };
        // Authenticated: the peer may have moved.
        if t.addr != from {
            t.addr = from;
            if t.confirmed {
                self.events.push_back(Event::Roamed { id, addr: from });
            }
        }
        if !t.confirmed {
            // Key confirmation of a tunnel we initiated.
            t.confirmed = true;
            t.retry_at = None;
            t.first_attempt = None;
            if let (Some(peer), Some(sender)) = (t.peer.clone(), t.sessions.sender().cloned()) {
                self.events.push_back(Event::Up {
                    id,
                    peer,
                    addr: from,
                    initiated: t.initiated,
                });
                self.events.push_back(Event::Keys {
                    id,
                    sender: Some(sender),
                });
            }
        }
        match plain.first().map(|b| b >> 4) {
            Some(4 | 6) => {
                t.stats.rx_packets += 1;
                t.stats.rx_bytes += plain.len() as u64;
                Received::Packet { id, packet: plain }
            }
            None => Received::Nothing,
            Some(0) if plain.len() == CTRL_LEN => {
                let mut s = [0u8; 8];
                s.copy_from_slice(&plain[2..CTRL_LEN]);
                let seq = u64::from_be_bytes(s);
                match plain[1] {
                    CTRL_PING => self.send_control(id, CTRL_PONG, seq),
                    CTRL_CLOSE => self.remove(id, DownReason::ClosedByPeer),
                    CTRL_PONG => {
                        if let Some((sent_seq, at)) = t.ping_sent {
                            if sent_seq == seq {
                                t.stats.rtt = Some(now.saturating_duration_since(at));
                                t.ping_sent = None;
                            }
                        }
                    }
                    _ => t.stats.rx_drops.malformed += 1,
                }
                Received::Nothing
            }
            Some(_) => {
                t.stats.rx_drops.malformed += 1;
                Received::Nothing
            }
        }
    }

    fn handle_init<T: AsRef<[u8]>>(&mut self, from: SocketAddr, p: &Packet<T>, now: Instant) {
        let mut reply = [0u8; 64];
        match self
            .cookie
            .check_init(p, from, now, &mut self.rng, &mut reply)
        {
            Verdict::Accept => {}
            Verdict::Challenge(n) => {
                self.drops.cookies_sent += 1;
                self.transmits.push_back((from, reply[..n].to_vec()));
                return;
            }
            Verdict::Drop(InitDrop::BadMac1) => {
                self.drops.bad_mac += 1;
                return;
            }
            Verdict::Drop(InitDrop::RateLimited) => {
                self.drops.rate_limited += 1;
                return;
            }
        }
        if self.responders.len() >= self.config.max_pending {
            self.drops.rate_limited += 1;
            return;
        }
        let idx = self.new_index(Slot::Responding);
        let mut out = [0u8; MAX_HANDSHAKE_LEN];
        match Responder::accept(&self.creds, p, idx, now, &mut out) {
            Ok((r, n)) => {
                self.responders.insert(idx, (r, from));
                self.transmits.push_back((from, out[..n].to_vec()));
            }
            Err(error) => {
                self.index.remove(&idx);
                self.events.push_back(Event::Refused { addr: from, error });
            }
        }
    }

    fn handle_response<T: AsRef<[u8]>>(
        &mut self,
        from: SocketAddr,
        p: &Packet<T>,
        now: Instant,
        wall: SystemTime,
    ) {
        let idx = p.receiver_index();
        let Some(Slot::Initiating(id)) = self.index.get(&idx).copied() else {
            self.drops.unknown_index += 1;
            return;
        };
        let Some(t) = self.tunnels.get_mut(&id) else {
            return;
        };
        let Some(h) = t.initiator.take() else { return };
        self.index.remove(&idx);
        let sent_at = h.sent_at();
        let mut out = [0u8; MAX_HANDSHAKE_LEN];
        match h.handle_response(&self.creds, p, now, wall, &mut out) {
            Ok((done, n)) => {
                self.transmits.push_back((from, out[..n].to_vec()));
                if let Some(t) = self.tunnels.get_mut(&id) {
                    t.stats.rtt = Some(now.saturating_duration_since(sent_at));
                }
                self.complete(id, from, done, now);
            }
            Err(error) => {
                let established = t.sessions.is_established();
                if established {
                    // A failed rekey: keep the tunnel until its keys expire;
                    // the retry timer starts a new attempt.
                    self.events.push_back(Event::Refused { addr: from, error });
                } else {
                    self.remove(id, DownReason::Refused(error));
                }
            }
        }
    }

    fn handle_finish<T: AsRef<[u8]>>(
        &mut self,
        from: SocketAddr,
        p: &Packet<T>,
        now: Instant,
        wall: SystemTime,
    ) {
        let idx = p.receiver_index();
        let Some((r, _)) = self.responders.remove(&idx) else {
            self.drops.unknown_index += 1;
            return;
        };
        self.index.remove(&idx);
        let done = match r.handle_finish(&self.creds, p, now, wall) {
            Ok(done) => done,
            Err(error) => {
                self.events.push_back(Event::Refused { addr: from, error });
                return;
            }
        };
        let prefix = done.peer.prefix;
        let id = match self.by_prefix.get(&prefix) {
            Some(id) => *id,
            None => {
                if prefix == self.creds.prefix() {
                    self.events.push_back(Event::Refused {
                        addr: from,
                        error: HandshakeError::Unexpected,
                    });
                    return;
                }
                if !self.config.accept_incoming || self.tunnels.len() >= self.config.max_tunnels {
                    return;
                }
                self.new_tunnel(from, Some(prefix), false)
            }
        };
        self.complete(id, from, done, now);
    }

    fn handle_cookie<T: AsRef<[u8]>>(&mut self, p: &Packet<T>, now: Instant) {
        let idx = p.receiver_index();
        let Some(Slot::Initiating(id)) = self.index.get(&idx).copied() else {
            return;
        };
        let Ok(HandshakeRepr::CookieReply { nonce, sealed, .. }) = HandshakeRepr::parse(p) else {
            return;
        };
        let Some(t) = self.tunnels.get_mut(&id) else {
            return;
        };
        let Some(h) = &t.initiator else { return };
        if let Some(c) = self
            .creds
            .mac_keys()
            .open_cookie(&nonce, &sealed, h.sent_mac1())
        {
            t.cookie = Some((c, now));
        }
    }

    fn complete(&mut self, id: TunnelId, from: SocketAddr, done: Completed, now: Instant) {
        let Completed { peer, keypair } = done;
        let local = keypair.receiver.local_index();
        let initiator = keypair.initiator;
        let sender = keypair.sender.clone();
        self.index.insert(local, Slot::Session(id));
        let Some(t) = self.tunnels.get_mut(&id) else {
            return;
        };
        if let Some(old) = t.sessions.install(keypair, now) {
            self.index.remove(&old);
        }
        if let Some(h) = t.initiator.take() {
            self.index.remove(&h.local_index());
        }
        t.stats.handshakes += 1;
        t.stats.last_handshake = Some(now);
        let moved = t.addr != from;
        t.addr = from;
        self.by_prefix.insert(peer.prefix, id);
        t.peer = Some(peer.clone());
        if t.confirmed {
            t.retry_at = None;
            if moved {
                self.events.push_back(Event::Roamed { id, addr: from });
            }
            self.events.push_back(Event::Keys {
                id,
                sender: Some(sender),
            });
        } else if !initiator {
            // We are the responder: the initiator proved its key in Finish.
            t.confirmed = true;
            t.retry_at = None;
            t.first_attempt = None;
            self.events.push_back(Event::Up {
                id,
                peer,
                addr: from,
                initiated: t.initiated,
            });
            self.events.push_back(Event::Keys {
                id,
                sender: Some(sender),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tunnel::handshake::tests::TestNet;
    use crate::tunnel::wire::DATA_OVERHEAD;

    struct Sim {
        a: Endpoint,
        b: Endpoint,
        a_addr: SocketAddr,
        b_addr: SocketAddr,
        now: Instant,
        wall: SystemTime,
        a_events: Vec<Event>,
        b_events: Vec<Event>,
        delivered: Vec<(bool, Vec<u8>)>,
        /// Lose every handshake message (data still flows).
        drop_handshakes: bool,
    }

    impl Sim {
        fn new(net: &TestNet, timing: Timing) -> Self {
            let config = EndpointConfig {
                timing,
                ..EndpointConfig::default()
            };
            Self {
                a: Endpoint::new(Arc::new(net.node("1/16")), config, 1),
                b: Endpoint::new(Arc::new(net.node("2/16")), config, 2),
                a_addr: "192.0.2.1:1000".parse().unwrap(),
                b_addr: "192.0.2.2:2000".parse().unwrap(),
                now: Instant::now(),
                wall: SystemTime::now(),
                a_events: Vec::new(),
                b_events: Vec::new(),
                delivered: Vec::new(),
                drop_handshakes: false,
            }
        }

        /// Moves messages between the endpoints until both are quiet.
        fn pump(&mut self) {
            let mut buf = [0u8; 4096];
            let data = MessageType::Data.code();
            for _ in 0..100 {
                let mut moved = false;
                while let Some((dst, n)) = self.a.poll_transmit(&mut buf) {
                    moved = true;
                    if self.drop_handshakes && buf[0] != data {
                        continue;
                    }
                    if dst == self.b_addr {
                        if let Received::Packet { packet, .. } =
                            self.b
                                .handle_datagram(self.a_addr, &mut buf[..n], self.now, self.wall)
                        {
                            self.delivered.push((false, packet.to_vec()));
                        }
                    }
                }
                while let Some((dst, n)) = self.b.poll_transmit(&mut buf) {
                    moved = true;
                    if self.drop_handshakes && buf[0] != data {
                        continue;
                    }
                    if dst == self.a_addr {
                        if let Received::Packet { packet, .. } =
                            self.a
                                .handle_datagram(self.b_addr, &mut buf[..n], self.now, self.wall)
                        {
                            self.delivered.push((true, packet.to_vec()));
                        }
                    }
                }
                while let Some(e) = self.a.poll_event() {
                    self.a_events.push(e);
                }
                while let Some(e) = self.b.poll_event() {
                    self.b_events.push(e);
                }
                if !moved {
                    return;
                }
            }
        }

        fn advance(&mut self, d: Duration) {
            let end = self.now + d;
            loop {
                let next = [self.a.poll_timeout(), self.b.poll_timeout()]
                    .into_iter()
                    .flatten()
                    .min();
                match next {
                    Some(t) if t <= end => {
                        self.now = self.now.max(t);
                        self.a.handle_timeout(self.now);
                        self.b.handle_timeout(self.now);
                        self.pump();
                    }
                    _ => break,
                }
            }
            self.now = end;
        }
    }

    fn ups(events: &[Event]) -> usize {
        events
            .iter()
            .filter(|e| matches!(e, Event::Up { .. }))
            .count()
    }

    fn downs(events: &[Event]) -> Vec<DownReason> {
        events
            .iter()
            .filter_map(|e| match e {
                Event::Down { reason, .. } => Some(reason.clone()),
                _ => None,
            })
            .collect()
    }

    fn send(ep: &Endpoint, id: TunnelId, payload: &[u8]) -> (SocketAddr, Vec<u8>) {
        let mut buf = vec![0u8; DATA_HEADER_LEN + payload.len() + DATA_OVERHEAD];
        buf[DATA_HEADER_LEN..DATA_HEADER_LEN + payload.len()].copy_from_slice(payload);
        let n = ep
            .sender(id)
            .unwrap()
            .seal(&mut buf, payload.len())
            .unwrap();
        buf.truncate(n);
        (ep.addr(id).unwrap(), buf)
    }

    #[test]
    fn tunnel_comes_up_and_carries_packets() {
        let net = TestNet::new();
        let mut s = Sim::new(&net, Timing::default());
        let id = s.a.connect(s.b_addr, Some("2/16".parse().unwrap()), s.now);
        s.pump();
        // Key confirmation: the responder's first keepalive confirms.
        s.advance(Duration::from_millis(10));
        assert_eq!((ups(&s.a_events), ups(&s.b_events)), (1, 1));
        assert_eq!(s.a.peer(id).unwrap().prefix.to_string(), "2/16");
        let bid = s.b.tunnels().next().unwrap();
        assert_eq!(s.b.peer(bid).unwrap().prefix.to_string(), "1/16");
        // An IPv6 packet each way.
        let pkt = [0x60u8, 0, 0, 0, 0, 0, 59, 64];
        let (dst, mut m) = send(&s.a, id, &pkt);
        assert_eq!(dst, s.b_addr);
        let Received::Packet { id: got, packet } =
            s.b.handle_datagram(s.a_addr, &mut m, s.now, s.wall)
        else {
            panic!("not delivered");
        };
        assert_eq!((got, &*packet), (bid, &pkt[..]));
        let (_, mut m2) = send(&s.b, bid, &pkt);
        assert!(matches!(
            s.a.handle_datagram(s.b_addr, &mut m2, s.now, s.wall),
            Received::Packet { .. }
        ));
        // Replaying it is dropped and counted.
        let mut again = m.clone();
        let _ = &mut again;
        assert!(matches!(
            s.b.handle_datagram(s.a_addr, &mut m, s.now, s.wall),
            Received::Nothing
        ));
        // Keepalives measure the RTT and keep the tunnel up for minutes,
        // across rekeys, with no down event.
        s.advance(Duration::from_secs(400));
        assert!(downs(&s.a_events).is_empty() && downs(&s.b_events).is_empty());
        let st = s.a.stats(id).unwrap();
        assert!(st.handshakes >= 3, "rekeyed: {st:?}");
        assert!(st.rtt.is_some());
        let (_, mut m3) = send(&s.a, id, &pkt);
        assert!(matches!(
            s.b.handle_datagram(s.a_addr, &mut m3, s.now, s.wall),
            Received::Packet { .. }
        ));
    }

    #[test]
    fn an_expired_session_withdraws_the_sender_until_a_rekey_succeeds() {
        let net = TestNet::new();
        let timing = Timing {
            rekey_after: Duration::from_secs(10),
            reject_after: Duration::from_secs(15),
            dead_after: Duration::from_secs(600),
            handshake_timeout: Duration::from_secs(600),
            ..Timing::default()
        };
        let mut s = Sim::new(&net, timing);
        let id = s.a.connect(s.b_addr, Some("2/16".parse().unwrap()), s.now);
        s.pump();
        s.advance(Duration::from_millis(10));
        assert_eq!(ups(&s.a_events), 1);
        let senders = |events: &[Event]| -> Vec<bool> {
            events
                .iter()
                .filter_map(|e| match e {
                    Event::Keys { sender, .. } => Some(sender.is_some()),
                    _ => None,
                })
                .collect()
        };
        assert_eq!(senders(&s.a_events), [true]);
        // Rekeys fail: past reject_after the sender is withdrawn, the
        // tunnel is not reported down (the peer is alive) and no data can
        // be sealed with the expired keys.
        s.drop_handshakes = true;
        s.advance(Duration::from_secs(16));
        assert_eq!(senders(&s.a_events), [true, false]);
        assert!(s.a.sender(id).is_none());
        assert!(downs(&s.a_events).is_empty());
        // Handshakes get through again: new keys, and data flows.
        s.drop_handshakes = false;
        s.advance(Duration::from_secs(3));
        assert_eq!(senders(&s.a_events).last(), Some(&true));
        let bid = s.b.tunnels().next().unwrap();
        let pkt = [0x60u8, 0, 0, 0, 0, 0, 59, 64];
        let (_, mut m) = send(&s.a, id, &pkt);
        assert!(matches!(
            s.b.handle_datagram(s.a_addr, &mut m, s.now, s.wall),
            Received::Packet { id, .. } if id == bid
        ));
    }

    #[test]
    fn closing_tells_the_peer_at_once() {
        let net = TestNet::new();
        let mut s = Sim::new(&net, Timing::default());
        let id = s.a.connect(s.b_addr, None, s.now);
        s.pump();
        s.advance(Duration::from_millis(10));
        assert_eq!((ups(&s.a_events), ups(&s.b_events)), (1, 1));
        // b refuses the tunnel (say it has enough): a learns it with the
        // next message, not after its liveness timeout.
        let bid = s.b.tunnels().next().unwrap();
        s.b.close(bid);
        s.pump();
        assert_eq!(downs(&s.b_events), vec![DownReason::Closed]);
        assert_eq!(downs(&s.a_events), vec![DownReason::ClosedByPeer]);
        assert!(s.a.stats(id).is_none(), "forgotten");
        // A new tunnel between the same ends comes up normally.
        let id2 = s.a.connect(s.b_addr, None, s.now);
        s.pump();
        s.advance(Duration::from_millis(10));
        assert!(s.a.stats(id2).is_some());
        assert_eq!(downs(&s.a_events).len(), 1);
    }

    #[test]
    fn dead_peer_reported_within_timeout() {
        let net = TestNet::new();
        let timing = Timing {
            dead_after: Duration::from_secs(3),
            ..Timing::default()
        };
        let mut s = Sim::new(&net, timing);
        let id = s.a.connect(s.b_addr, None, s.now);
        s.pump();
        s.advance(Duration::from_secs(2));
        assert_eq!(ups(&s.a_events), 1);
        // b vanishes: a's timers run alone, and a sends a packet that stays
        // unanswered.
        let killed = s.now;
        let _ = send(&s.a, id, &[0x60u8, 0, 0, 0, 0, 0, 59, 64]);
        let mut t = s.now;
        let mut buf = [0u8; 2048];
        while downs(&s.a_events).is_empty() && t < killed + Duration::from_secs(10) {
            t = s.a.poll_timeout().unwrap();
            s.a.handle_timeout(t);
            while s.a.poll_transmit(&mut buf).is_some() {}
            while let Some(e) = s.a.poll_event() {
                s.a_events.push(e);
            }
        }
        assert_eq!(
            downs(&s.a_events),
            vec![DownReason::Timeout(Duration::from_secs(3))]
        );
        assert!(
            t - killed <= Duration::from_secs(3) + timing.keepalive,
            "{:?}",
            t - killed
        );
        assert!(s.a.stats(id).is_none(), "forgotten");
    }

    #[test]
    fn roaming_follows_authenticated_packets_only() {
        let net = TestNet::new();
        let mut s = Sim::new(&net, Timing::default());
        let id = s.a.connect(s.b_addr, None, s.now);
        s.pump();
        s.advance(Duration::from_millis(10));
        let bid = s.b.tunnels().next().unwrap();
        let pkt = [0x45u8, 0, 0, 20];
        // A forged packet from elsewhere does not move the tunnel.
        let evil: SocketAddr = "203.0.113.9:9".parse().unwrap();
        let (_, mut m) = send(&s.a, id, &pkt);
        m[20] ^= 1;
        let _ = s.b.handle_datagram(evil, &mut m, s.now, s.wall);
        assert_eq!(s.b.addr(bid), Some(s.a_addr));
        // A genuine one does.
        let moved: SocketAddr = "198.51.100.7:1000".parse().unwrap();
        let (_, mut m) = send(&s.a, id, &pkt);
        let _ = s.b.handle_datagram(moved, &mut m, s.now, s.wall);
        assert_eq!(s.b.addr(bid), Some(moved));
        assert!(matches!(s.b.poll_event(), Some(Event::Roamed { addr, .. }) if addr == moved));
    }

    #[test]
    fn refused_peer_never_comes_up() {
        let net = TestNet::new();
        let mut s = Sim::new(&net, Timing::default());
        // b revokes a's certificate: b refuses, a gives up without ever
        // reporting the tunnel up.
        let a_serial = s.a.credentials().serial();
        s.b.set_revoked([a_serial]);
        s.a.connect(s.b_addr, None, s.now);
        s.pump();
        s.advance(Duration::from_secs(20));
        assert_eq!(ups(&s.a_events), 0);
        assert_eq!(ups(&s.b_events), 0);
        assert!(s.b_events.iter().any(|e| matches!(
            e,
            Event::Refused {
                error: HandshakeError::Certificate(crate::pki::VerifyError::Revoked),
                ..
            }
        )));
        assert!(matches!(
            downs(&s.a_events)[..],
            [DownReason::HandshakeTimeout(_)]
        ));
    }

    #[test]
    fn crossing_connects_make_one_tunnel() {
        let net = TestNet::new();
        let mut s = Sim::new(&net, Timing::default());
        let ida = s.a.connect(s.b_addr, Some("2/16".parse().unwrap()), s.now);
        let idb = s.b.connect(s.a_addr, Some("1/16".parse().unwrap()), s.now);
        s.pump();
        s.advance(Duration::from_secs(5));
        assert_eq!((ups(&s.a_events), ups(&s.b_events)), (1, 1));
        assert_eq!((s.a.tunnels().count(), s.b.tunnels().count()), (1, 1));
        assert!(downs(&s.a_events).is_empty() && downs(&s.b_events).is_empty());
        let pkt = [0x60u8, 0, 0, 0];
        let (_, mut m) = send(&s.a, ida, &pkt);
        assert!(matches!(
            s.b.handle_datagram(s.a_addr, &mut m, s.now, s.wall),
            Received::Packet { id, .. } if id == idb
        ));
    }

    #[test]
    fn revoking_a_peer_takes_its_tunnel_down() {
        let net = TestNet::new();
        let mut s = Sim::new(&net, Timing::default());
        s.a.connect(s.b_addr, None, s.now);
        s.pump();
        s.advance(Duration::from_millis(10));
        assert_eq!(ups(&s.b_events), 1);
        let a_serial = s.a.credentials().serial();
        s.b.set_revoked([a_serial]);
        s.pump();
        assert_eq!(downs(&s.b_events), vec![DownReason::Revoked]);
        assert_eq!(s.b.tunnels().count(), 0);
    }
}
