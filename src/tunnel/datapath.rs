//! The data path between TUN devices and a transport: batches and reused
//! buffers, one encrypting task per tunnel (TUN -> transport) and
//! per-tunnel write batches for the decrypting side (transport -> TUN).
//!
//! Each direction of a tunnel runs on one task, so a flow's packets stay in
//! order while the two directions use both cores. The encrypting task
//! seals with the session's [`Sender`] (an atomic counter, no lock) and
//! learns of new keys and addresses through a channel it polls between
//! batches.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tun_rs::{AsyncDevice, GROTable, VIRTIO_NET_HDR_LEN};

use super::endpoint::{Endpoint, Event, TunnelId, TxCounters};
use super::session::{Sender, SessionError};
use super::sys::tun::{self, TunConfig};
use super::wire::{DATA_HEADER_LEN, DATA_OVERHEAD, TAG_LEN};
use super::{Command, TunnelEvent, TunnelStatus};

/// Largest inner MTU supported.
pub const MAX_MTU: usize = 1500;
/// Size of one slot of a transmit batch: header, packet, tag.
pub const SLOT: usize = DATA_HEADER_LEN + MAX_MTU + TAG_LEN;
/// Datagrams per batch: two TUN reads' worth.
pub const BATCH: usize = 2 * SUPER_PACKET_SLOTS;
/// Slots one TUN read may need: a 64 KiB TSO super-packet split at a
/// gso_size down to 512 bytes (below the smallest TCP MSS, 536).
const SUPER_PACKET_SLOTS: usize = 128;

/// Sealed messages waiting to be sent to one peer: message `i` is
/// `flat()[offsets[i]..offsets[i] + lens[i]]`.
pub struct TxBatch {
    slots: Vec<[u8; SLOT]>,
    offsets: Vec<usize>,
    lens: Vec<usize>,
}

impl Default for TxBatch {
    fn default() -> Self {
        Self::new()
    }
}

impl TxBatch {
    /// An empty batch of [`BATCH`] slots.
    pub fn new() -> Self {
        Self {
            slots: vec![[0u8; SLOT]; BATCH],
            offsets: Vec::with_capacity(BATCH),
            lens: Vec::with_capacity(BATCH),
        }
    }

    /// The batch memory (slots back to back).
    pub fn flat(&self) -> &[u8] {
        self.slots.as_flattened()
    }

    /// Offsets of the messages in [`TxBatch::flat`].
    pub fn offsets(&self) -> &[usize] {
        &self.offsets
    }

    /// Lengths of the messages.
    pub fn lens(&self) -> &[usize] {
        &self.lens
    }

    /// Number of messages.
    pub fn len(&self) -> usize {
        self.lens.len()
    }

    /// Whether the batch holds no message.
    pub fn is_empty(&self) -> bool {
        self.lens.is_empty()
    }

    /// Empties the batch.
    pub fn clear(&mut self) {
        self.offsets.clear();
        self.lens.clear();
    }

    /// Packs the messages back to back (so runs of equal-size datagrams
    /// can go as one GSO send). Messages keep their order.
    pub fn compact(&mut self) {
        let flat = self.slots.as_flattened_mut();
        let mut w = 0;
        for i in 0..self.lens.len() {
            let (o, l) = (self.offsets[i], self.lens[i]);
            if o != w {
                flat.copy_within(o..o + l, w);
                self.offsets[i] = w;
            }
            w += l;
        }
    }

    /// Drops the first `n` messages (already sent).
    pub fn consume(&mut self, n: usize) {
        let n = n.min(self.lens.len());
        self.offsets.drain(..n);
        self.lens.drain(..n);
    }
}

/// What a transport provides to the encrypting tasks: sending sealed
/// messages to a peer. UDP sends them as datagrams (with GSO), TCP as
/// length-prefixed records.
pub trait Transmit: Send + Sync + 'static {
    /// Sends every message of `batch` to `dst`, in order, waiting for the
    /// transport to accept them (backpressure). May reorder bytes inside the
    /// batch (e.g. [`TxBatch::compact`]); leaves it empty on success.
    fn send_batch(
        &self,
        dst: SocketAddr,
        batch: &mut TxBatch,
    ) -> impl Future<Output = io::Result<()>> + Send;

    /// Bytes the transport adds around a sealed message on the underlay,
    /// besides the IP header (e.g. 8 for UDP).
    fn overhead(&self) -> usize;
}

/// An update for a tunnel's encrypting task.
#[derive(Debug)]
enum TxUpdate {
    Keys(Option<Arc<Sender>>),
    Addr(SocketAddr),
}

/// Settings of the TUN devices a manager creates.
#[derive(Clone, Debug)]
pub struct TunSettings {
    /// Interface name prefix; tunnels are `<prefix><n>`.
    pub name_prefix: String,
    /// Underlay MTU (of the path to peers).
    pub underlay_mtu: usize,
    /// Whether to use TSO/GRO offloads on TUN devices.
    pub offload: bool,
    /// Seed of the link-local interface identifiers.
    pub link_local_seed: u64,
    /// How long a data path task keeps polling for more packets after
    /// handling some, before it sleeps (see [`busy_poll`]); zero disables.
    pub busy_poll: Duration,
    /// `txqueuelen` of the TUN devices (see [`DEFAULT_TX_QUEUE_LEN`]).
    pub tx_queue_len: u32,
}

/// Default of [`TunSettings::tx_queue_len`]. The kernel's 500 for TUN
/// devices overflows when a sender bursts small or fragmented packets
/// faster than one task reads them one by one (the kernel drops them
/// without slowing the sender down): 4 000 lets the encrypting task catch
/// up after being scheduled out for a few milliseconds.
pub const DEFAULT_TX_QUEUE_LEN: u32 = 4000;

/// Default of [`TunSettings::busy_poll`]: off. On a busy machine with few
/// cores a polling task takes the CPU from the very process (or kernel
/// path) that is about to produce the packet it waits for: measured on the
/// shared 2-core build machine, a 200 µs window doubled the ping time
/// through a udp tunnel (see `benches/README.md`). A window of 100–200 µs
/// is meant for hosts with idle cores, where it saves the wake-up of a
/// halted CPU per packet exchange; a resting tunnel never polls either way
/// (only data packets open a window).
pub const DEFAULT_BUSY_POLL: Duration = Duration::ZERO;

impl Default for TunSettings {
    fn default() -> Self {
        Self {
            name_prefix: "re6st-".into(),
            underlay_mtu: 1500,
            offload: true,
            link_local_seed: 0,
            busy_poll: DEFAULT_BUSY_POLL,
            tx_queue_len: DEFAULT_TX_QUEUE_LEN,
        }
    }
}

struct Interface {
    name: String,
    dev: Arc<AsyncDevice>,
    updates: mpsc::UnboundedSender<TxUpdate>,
    task: JoinHandle<()>,
    rx: RxBatch,
}

impl Drop for Interface {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Decrypted packets waiting to be written to one TUN device.
struct RxBatch {
    bufs: Vec<Vec<u8>>,
    used: usize,
    gro: GROTable,
}

impl RxBatch {
    fn new() -> Self {
        Self {
            bufs: Vec::new(),
            used: 0,
            gro: GROTable::default(),
        }
    }

    fn push(&mut self, packet: &[u8]) {
        if self.used == self.bufs.len() {
            self.bufs
                .push(Vec::with_capacity(VIRTIO_NET_HDR_LEN + 65535));
        }
        let b = &mut self.bufs[self.used];
        b.clear();
        b.resize(VIRTIO_NET_HDR_LEN, 0);
        b.extend_from_slice(packet);
        self.used += 1;
    }
}

/// Number of the next tunnel interface, for every transport of the process.
static NEXT_INTERFACE: AtomicU32 = AtomicU32::new(0);

/// The TUN side of every tunnel of one transport: creates an interface when
/// a tunnel comes up, runs its encrypting task, batches decrypted packets
/// into it, and removes it when the tunnel goes down.
pub struct TunnelManager<T: Transmit> {
    transmit: Arc<T>,
    settings: TunSettings,
    interfaces: HashMap<TunnelId, Interface>,
    dirty: Vec<TunnelId>,
}

impl<T: Transmit> TunnelManager<T> {
    /// A manager sending through `transmit`.
    pub fn new(transmit: Arc<T>, settings: TunSettings) -> Self {
        Self {
            transmit,
            settings,
            interfaces: HashMap::new(),
            dirty: Vec::new(),
        }
    }

    /// The inner MTU of tunnels: underlay MTU minus the IPv6 header (the
    /// larger one), the transport's overhead and ours.
    pub fn mtu(&self) -> u16 {
        let m = self
            .settings
            .underlay_mtu
            .saturating_sub(40 + self.transmit.overhead() + DATA_OVERHEAD);
        m.clamp(1280, MAX_MTU) as u16
    }

    /// The interface name of a tunnel.
    pub fn interface(&self, id: TunnelId) -> Option<&str> {
        self.interfaces.get(&id).map(|i| i.name.as_str())
    }

    /// A name no interface has: numbers come from one counter shared by
    /// every transport of the process (a node runs udp, tcp and quic side
    /// by side, and their interfaces share the namespace), skipping names
    /// taken by interfaces this process did not create.
    fn free_name(&mut self) -> String {
        loop {
            let n = NEXT_INTERFACE.fetch_add(1, Ordering::Relaxed);
            let name = format!("{}{n}", self.settings.name_prefix);
            let ours = self.interfaces.values().any(|i| i.name == name);
            if !ours && nix::net::if_::if_nametoindex(name.as_str()).is_err() {
                return name;
            }
        }
    }

    fn link_local(&self, id: TunnelId) -> Ipv6Addr {
        let s = self.settings.link_local_seed;
        let hi = (s as u32) ^ 0x7265_3673;
        Ipv6Addr::new(
            0xfe80,
            0,
            0,
            0,
            (hi >> 16) as u16,
            hi as u16,
            (id.0 >> 16) as u16,
            (id.0 as u16) | 1,
        )
    }

    /// Applies an endpoint event: creates, updates or removes the tunnel's
    /// interface. Call with every event the endpoint emits.
    pub fn handle_event(&mut self, ev: &Event, endpoint: &Endpoint) -> io::Result<()> {
        match ev {
            Event::Up { id, addr, .. } => {
                let name = self.free_name();
                let config = TunConfig {
                    name: name.clone(),
                    mtu: self.mtu(),
                    link_local: self.link_local(*id),
                    offload: self.settings.offload,
                    tx_queue_len: self.settings.tx_queue_len,
                };
                let dev = Arc::new(tun::create(&config)?);
                let (tx, rx) = mpsc::unbounded_channel();
                let _ = tx.send(TxUpdate::Addr(*addr));
                let counters = endpoint.tx_counters(*id).unwrap_or_default();
                let task = tokio::spawn(encrypt_loop(
                    dev.clone(),
                    self.transmit.clone(),
                    rx,
                    counters,
                    self.settings.busy_poll,
                ));
                self.interfaces.insert(
                    *id,
                    Interface {
                        name,
                        dev,
                        updates: tx,
                        task,
                        rx: RxBatch::new(),
                    },
                );
            }
            Event::Keys { id, sender } => {
                if let Some(i) = self.interfaces.get(id) {
                    if let Some(a) = endpoint.addr(*id) {
                        let _ = i.updates.send(TxUpdate::Addr(a));
                    }
                    let _ = i.updates.send(TxUpdate::Keys(sender.clone()));
                }
            }
            Event::Roamed { id, addr } => {
                if let Some(i) = self.interfaces.get(id) {
                    let _ = i.updates.send(TxUpdate::Addr(*addr));
                }
            }
            Event::Down { id, .. } => {
                self.interfaces.remove(id);
            }
            Event::Refused { .. } => {}
        }
        Ok(())
    }

    /// Carries out a command of the [`super::Tunnels`] handle on an
    /// endpoint-driven transport (udp, tcp) at time `now`: opens, closes,
    /// revokes or lists tunnels (with their interfaces).
    pub fn command(&self, cmd: Command, endpoint: &mut Endpoint, now: Instant) {
        match cmd {
            Command::Connect {
                addr,
                expected,
                reply,
            } => {
                let id = endpoint.connect(addr, expected, now);
                let _ = reply.send(id);
            }
            Command::Close(id) => endpoint.close(id),
            Command::SetRevoked(serials) => endpoint.set_revoked(serials),
            Command::Status(reply) => {
                let list = endpoint
                    .tunnels()
                    .map(|id| TunnelStatus {
                        id,
                        interface: self.interface(id).map(str::to_owned),
                        peer: endpoint.peer(id).map(|p| p.prefix),
                        addr: endpoint.addr(id),
                        stats: endpoint.stats(id).unwrap_or_default(),
                    })
                    .collect();
                let _ = reply.send(list);
            }
        }
    }

    /// Applies an endpoint event to the interfaces (see
    /// [`Self::handle_event`]) and returns what the owner of the tunnels is
    /// told, if anything. A tunnel whose interface cannot be created is
    /// closed (its `Down` event follows) and not reported up.
    pub fn publish(&mut self, ev: Event, endpoint: &mut Endpoint) -> Option<TunnelEvent> {
        let interface = match &ev {
            Event::Down { id, .. } => self.interface(*id).map(str::to_owned),
            _ => None,
        };
        if let Err(e) = self.handle_event(&ev, endpoint) {
            if let Event::Up { id, .. } = &ev {
                tracing::error!(tunnel = %id, "cannot create the tunnel interface: {e}");
                endpoint.close(*id);
            }
            return None;
        }
        match ev {
            Event::Up {
                id,
                peer,
                addr,
                initiated,
            } => Some(TunnelEvent::Up {
                id,
                interface: self.interface(id).unwrap_or_default().to_owned(),
                peer,
                addr,
                initiated,
            }),
            Event::Down { id, reason } => Some(TunnelEvent::Down {
                id,
                interface,
                reason,
            }),
            Event::Roamed { id, addr } => Some(TunnelEvent::Roamed { id, addr }),
            Event::Refused { addr, error } => Some(TunnelEvent::Refused { addr, error }),
            Event::Keys { .. } => None,
        }
    }

    /// Queues a decrypted packet for the tunnel's interface.
    pub fn deliver(&mut self, id: TunnelId, packet: &[u8]) {
        if let Some(i) = self.interfaces.get_mut(&id) {
            if i.rx.used == 0 {
                self.dirty.push(id);
            }
            i.rx.push(packet);
        }
    }

    /// The busy-polling window of the data path (see [`busy_poll`]).
    pub fn busy_poll(&self) -> Duration {
        self.settings.busy_poll
    }

    /// Writes the queued packets to their interfaces, coalescing TCP and
    /// UDP flows (GRO) when offloads are on.
    pub async fn flush(&mut self) {
        for id in self.dirty.drain(..) {
            let Some(i) = self.interfaces.get_mut(&id) else {
                continue;
            };
            let used = i.rx.used;
            i.rx.used = 0;
            let RxBatch { bufs, gro, .. } = &mut i.rx;
            if i.dev
                .send_multiple(gro, &mut bufs[..used], VIRTIO_NET_HDR_LEN)
                .await
                .is_err()
            {
                // The kernel refused some packet (e.g. interface going down);
                // the rest of the batch was still written.
            }
        }
    }
}

/// Tries the non-blocking `op` until it returns anything but `WouldBlock`
/// or `window` has passed, yielding to the runtime between tries; `None`
/// when the window ended empty (or is zero: `op` is then not called).
///
/// Meant to lower latency on hosts with idle cores: a yielding task makes
/// its worker poll the I/O driver without sleeping, so the next packet on
/// any socket or TUN device of the process (typically the reply to what was
/// just sent) is handled at once, instead of after the wake-up of a halted
/// CPU and a sleeping thread. On a busy host it raises latency instead (see
/// [`DEFAULT_BUSY_POLL`]). Start a window only after handling data packets,
/// so that a tunnel at rest never polls.
pub async fn busy_poll<R>(
    window: Duration,
    mut op: impl FnMut() -> io::Result<R>,
) -> Option<io::Result<R>> {
    if window.is_zero() {
        return None;
    }
    let until = Instant::now() + window;
    loop {
        match op() {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            r => return Some(r),
        }
        if Instant::now() >= until {
            return None;
        }
        tokio::task::yield_now().await;
    }
}

/// Reads packets from a TUN device (splitting TSO super-packets), seals
/// them and sends them to the peer, batch by batch.
async fn encrypt_loop<T: Transmit>(
    dev: Arc<AsyncDevice>,
    transmit: Arc<T>,
    mut updates: mpsc::UnboundedReceiver<TxUpdate>,
    counters: Arc<TxCounters>,
    window: Duration,
) {
    let mut original = vec![0u8; VIRTIO_NET_HDR_LEN + 65535];
    let mut batch = TxBatch::new();
    let mut sizes = [0usize; BATCH];
    let mut sender: Option<Arc<Sender>> = None;
    let mut addr: Option<SocketAddr> = None;
    // Whether the last batch carried packets: then poll a while before
    // sleeping (see `busy_poll`).
    let mut active = false;
    loop {
        let spun = if active {
            busy_poll(window, || {
                dev.try_recv_multiple(&mut original, &mut batch.slots, &mut sizes, DATA_HEADER_LEN)
            })
            .await
        } else {
            None
        };
        let read = match spun {
            Some(r) => r,
            None => {
                dev.recv_multiple(&mut original, &mut batch.slots, &mut sizes, DATA_HEADER_LEN)
                    .await
            }
        };
        active = false;
        let mut n = match read {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.raw_os_error() == Some(libc::EBADFD) => return,
            Err(_) => continue,
        };
        // Fill the batch with what else is already queued (small packets,
        // several flows), keeping room for a whole super-packet per read.
        while BATCH - n >= SUPER_PACKET_SLOTS {
            match dev.try_recv_multiple(
                &mut original,
                &mut batch.slots[n..],
                &mut sizes[n..],
                DATA_HEADER_LEN,
            ) {
                Ok(m) => n += m,
                Err(_) => break,
            }
        }
        while let Ok(u) = updates.try_recv() {
            match u {
                TxUpdate::Keys(s) => sender = s,
                TxUpdate::Addr(a) => addr = Some(a),
            }
        }
        let (Some(s), Some(dst)) = (&sender, addr) else {
            counters.no_session.fetch_add(n as u64, Ordering::Relaxed);
            continue;
        };
        batch.clear();
        let mut bytes = 0u64;
        for (i, &len) in sizes.iter().enumerate().take(n) {
            match s.seal(&mut batch.slots[i], len) {
                Ok(m) => {
                    batch.offsets.push(i * SLOT);
                    batch.lens.push(m);
                    bytes += len as u64;
                }
                Err(SessionError::CounterExhausted) | Err(_) => {
                    counters.no_session.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        let sent = batch.len() as u64;
        active = sent > 0;
        match transmit.send_batch(dst, &mut batch).await {
            Ok(()) => {
                counters.packets.fetch_add(sent, Ordering::Relaxed);
                counters.bytes.fetch_add(bytes, Ordering::Relaxed);
            }
            Err(_) => {
                counters.send_errors.fetch_add(sent, Ordering::Relaxed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn would_block<R>() -> io::Result<R> {
        Err(io::ErrorKind::WouldBlock.into())
    }

    #[tokio::test]
    async fn busy_poll_returns_the_first_result() {
        let mut tries = 0;
        let r = busy_poll(Duration::from_secs(10), || {
            tries += 1;
            if tries < 4 {
                would_block()
            } else {
                Ok(tries)
            }
        })
        .await;
        assert_eq!(r.unwrap().unwrap(), 4);
    }

    #[tokio::test]
    async fn busy_poll_passes_errors_other_than_would_block() {
        let r: Option<io::Result<()>> = busy_poll(Duration::from_secs(10), || {
            Err(io::ErrorKind::ConnectionRefused.into())
        })
        .await;
        assert_eq!(
            r.unwrap().unwrap_err().kind(),
            io::ErrorKind::ConnectionRefused
        );
    }

    #[tokio::test]
    async fn busy_poll_gives_up_after_the_window() {
        let start = Instant::now();
        let mut tries = 0u32;
        let r: Option<io::Result<()>> = busy_poll(Duration::from_millis(5), || {
            tries += 1;
            would_block()
        })
        .await;
        assert!(r.is_none());
        assert!(start.elapsed() >= Duration::from_millis(5));
        assert!(tries >= 2, "polled {tries} times");
    }

    #[tokio::test]
    async fn busy_poll_zero_window_does_not_poll() {
        let mut tries = 0u32;
        let r: Option<io::Result<()>> = busy_poll(Duration::ZERO, || {
            tries += 1;
            Ok(())
        })
        .await;
        assert!(r.is_none());
        assert_eq!(tries, 0);
    }

    #[test]
    fn compact_keeps_order_and_packs() {
        let mut b = TxBatch::new();
        for (i, len) in [100usize, 100, 60].into_iter().enumerate() {
            b.slots[i][..len].fill(i as u8 + 1);
            b.offsets.push(i * SLOT);
            b.lens.push(len);
        }
        b.compact();
        assert_eq!(b.offsets(), &[0, 100, 200]);
        let f = b.flat();
        assert!(f[..100].iter().all(|&x| x == 1));
        assert!(f[100..200].iter().all(|&x| x == 2));
        assert!(f[200..260].iter().all(|&x| x == 3));
        b.consume(2);
        assert_eq!((b.offsets(), b.lens()), (&[200usize][..], &[60usize][..]));
    }
}
