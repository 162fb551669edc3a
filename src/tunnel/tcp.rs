//! The tcp transport: the same Noise sessions as the udp transport, carried
//! over TCP streams as length-prefixed records ([`super::framing`]), for
//! networks that block UDP.
//!
//! One listening socket (IPv4 and IPv6) accepts every incoming tunnel; we
//! open one TCP connection per tunnel we initiate. The sans-I/O
//! [`Endpoint`] sees each connection as a peer address: a record is handled
//! exactly like a UDP datagram from that address, and what the endpoint
//! wants to send to an address goes to that address's connection (opening
//! it first when we initiated the tunnel).
//!
//! Boundedness and backpressure, end to end:
//! - each connection's reader fills fixed-size chunks and hands them to the
//!   driver through a channel of [`READ_CHUNKS`] slots; when the driver is
//!   behind, the reader stops reading, the kernel's receive window closes
//!   and the peer's sender slows down;
//! - each connection's writer frames records into a [`RecordEncoder`] of
//!   [`SEND_BUFFER`] bytes and waits for the socket when it is full, so the
//!   tunnel's encrypting task waits and stops reading its TUN device.
//!
//! A TCP connection that ends (EOF, reset) takes its tunnel down at once.

use std::collections::{HashMap, HashSet};
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::{Instant, SystemTime};

use rand::RngCore;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Mutex};

use super::datapath::{Transmit, TunnelManager, TxBatch};
use super::endpoint::{Endpoint, Received};
use super::framing::{RecordDecoder, RecordEncoder, MAX_RECORD_LIMIT};
use super::handshake::Credentials;
use super::wire::MAX_HANDSHAKE_LEN;
use super::{Command, DownReason, TunnelEvent, TunnelId, Tunnels, TunnelsConfig};

/// Bytes of framed records a connection buffers before its writers wait.
pub const SEND_BUFFER: usize = 256 * 1024;

/// Size of one chunk a connection's reader fills from the socket.
pub const READ_CHUNK: usize = 64 * 1024;

/// Chunks a connection's reader may have in flight to the driver.
pub const READ_CHUNKS: usize = 4;

/// Control messages kept for a connection being opened.
const MAX_QUEUED_CONTROL: usize = 4;

/// Bytes TCP adds around a record besides the IP header: the TCP header
/// with timestamps (32) and the record length (2).
const TCP_OVERHEAD: usize = 32 + super::framing::HEADER_LEN;

/// The sending half of one TCP connection.
#[derive(Debug)]
struct ConnWriter {
    inner: Mutex<(OwnedWriteHalf, RecordEncoder)>,
}

impl ConnWriter {
    fn new(w: OwnedWriteHalf) -> Self {
        Self {
            inner: Mutex::new((w, RecordEncoder::new(MAX_RECORD_LIMIT, SEND_BUFFER))),
        }
    }

    /// Frames and writes `messages`, waiting for the socket as needed.
    async fn send<'a>(&self, messages: impl Iterator<Item = &'a [u8]>) -> io::Result<()> {
        let mut guard = self.inner.lock().await;
        let (w, enc) = &mut *guard;
        for m in messages {
            loop {
                match enc.push(m) {
                    Ok(true) => break,
                    Ok(false) => flush(w, enc).await?,
                    Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidInput, e)),
                }
            }
        }
        flush(w, enc).await
    }
}

async fn flush(w: &mut OwnedWriteHalf, enc: &mut RecordEncoder) -> io::Result<()> {
    while !enc.is_empty() {
        let n = w.write(enc.pending()).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        enc.consume(n);
    }
    Ok(())
}

/// Sends sealed messages as records on the connection to their peer.
#[derive(Debug, Default)]
pub struct TcpTransmit {
    conns: RwLock<HashMap<SocketAddr, Arc<ConnWriter>>>,
}

impl TcpTransmit {
    fn writer(&self, dst: SocketAddr) -> Option<Arc<ConnWriter>> {
        // a poisoned lock only means a panic elsewhere; the map is intact
        let map = self.conns.read().unwrap_or_else(|e| e.into_inner());
        map.get(&dst).cloned()
    }

    fn insert(&self, addr: SocketAddr, w: Arc<ConnWriter>) {
        let mut map = self.conns.write().unwrap_or_else(|e| e.into_inner());
        map.insert(addr, w);
    }

    fn remove(&self, addr: SocketAddr) {
        let mut map = self.conns.write().unwrap_or_else(|e| e.into_inner());
        map.remove(&addr);
    }
}

impl Transmit for TcpTransmit {
    async fn send_batch(&self, dst: SocketAddr, batch: &mut TxBatch) -> io::Result<()> {
        let Some(w) = self.writer(dst) else {
            batch.clear();
            return Err(io::ErrorKind::NotConnected.into());
        };
        let flat = batch.flat();
        let msgs = batch
            .offsets()
            .iter()
            .zip(batch.lens())
            .map(|(&o, &l)| &flat[o..o + l]);
        let r = w.send(msgs).await;
        batch.clear();
        r
    }

    fn overhead(&self) -> usize {
        TCP_OVERHEAD
    }
}

/// What connection tasks tell the driver.
#[derive(Debug)]
enum ConnEvent {
    /// A connection is established (accepted, or the one we opened).
    Open {
        addr: SocketAddr,
        reader: OwnedReadHalf,
        writer: OwnedWriteHalf,
    },
    /// Stream bytes from `addr` (a chunk of up to [`READ_CHUNK`] bytes).
    Data { addr: SocketAddr, chunk: Vec<u8> },
    /// The connection to `addr` ended (or could not be opened).
    Closed {
        addr: SocketAddr,
        error: Option<io::Error>,
    },
}

fn configure(stream: &TcpStream) {
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!("cannot set TCP_NODELAY: {e}");
    }
}

fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let domain = if addr.is_ipv6() {
        socket2::Domain::IPV6
    } else {
        socket2::Domain::IPV4
    };
    let s = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
    if addr.is_ipv6() {
        // one socket for both families when bound to the IPv6 wildcard
        s.set_only_v6(false)?;
    }
    s.set_reuse_address(true)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(1024)?;
    TcpListener::from_std(s.into())
}

/// IPv4 peers of a dual-stack socket appear as IPv4-mapped IPv6 addresses;
/// the endpoint knows them by their plain IPv4 address.
fn canonical(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(a) => match a.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(v4.into(), a.port()),
            None => addr,
        },
        v4 => v4,
    }
}

/// Binds the tcp transport and starts its driver task. The returned handle
/// sends commands; events arrive on the returned channel.
pub async fn start(
    creds: Arc<Credentials>,
    config: TunnelsConfig,
) -> io::Result<(Tunnels, mpsc::UnboundedReceiver<TunnelEvent>)> {
    let listener = bind(config.listen)?;
    let local = listener.local_addr()?;
    let transmit = Arc::new(TcpTransmit::default());
    let seed = config.seed.unwrap_or_else(|| rand::rngs::OsRng.next_u64());
    let endpoint = Endpoint::new(creds, config.endpoint, seed);
    let mut tun = config.tun.clone();
    tun.link_local_seed = seed;
    let manager = TunnelManager::new(Arc::clone(&transmit), tun);
    let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
    let (ev_tx, ev_rx) = mpsc::unbounded_channel();
    // bounded in any case: each reader has at most READ_CHUNKS chunks out
    // before the driver hands them back
    let (conn_tx, conn_rx) = mpsc::channel(64);
    tracing::debug!(%local, "tcp transport bound");
    let driver = Driver {
        listener,
        transmit,
        endpoint,
        manager,
        events: ev_tx,
        conn_tx,
        readers: HashMap::new(),
        initiated: HashSet::new(),
        connecting: HashMap::new(),
        tunnel_addrs: HashMap::new(),
    };
    let task = tokio::spawn(driver.run(cmd_rx, conn_rx));
    Ok((Tunnels::new(cmd_tx, local, task), ev_rx))
}

/// Per-connection state the driver keeps.
#[derive(Debug)]
struct Reader {
    decoder: RecordDecoder,
    /// Returns chunks (their count is the reader's credit) to the task.
    credit: mpsc::Sender<Vec<u8>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Driver {
    listener: TcpListener,
    transmit: Arc<TcpTransmit>,
    endpoint: Endpoint,
    manager: TunnelManager<TcpTransmit>,
    events: mpsc::UnboundedSender<TunnelEvent>,
    conn_tx: mpsc::Sender<ConnEvent>,
    readers: HashMap<SocketAddr, Reader>,
    /// Addresses we open connections to (tunnels we initiate).
    initiated: HashSet<SocketAddr>,
    /// Handshake messages waiting for a connection being opened.
    connecting: HashMap<SocketAddr, Vec<Vec<u8>>>,
    /// The peer address of every tunnel that is up.
    tunnel_addrs: HashMap<TunnelId, SocketAddr>,
}

impl Driver {
    async fn run(
        mut self,
        mut cmds: mpsc::UnboundedReceiver<Command>,
        mut conns: mpsc::Receiver<ConnEvent>,
    ) {
        let mut out = vec![0u8; MAX_HANDSHAKE_LEN];
        loop {
            let deadline = self.endpoint.poll_timeout();
            let sleep = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                r = self.listener.accept() => match r {
                    Ok((stream, addr)) => {
                        configure(&stream);
                        let (reader, writer) = stream.into_split();
                        self.open(canonical(addr), reader, writer);
                    }
                    Err(e) => tracing::warn!("tcp accept failed: {e}"),
                },
                ev = conns.recv() => {
                    // the driver holds a sender itself: never None
                    let Some(ev) = ev else { return };
                    self.conn_event(ev).await;
                }
                cmd = cmds.recv() => {
                    let Some(cmd) = cmd else { return };
                    self.command(cmd);
                }
                () = sleep => self.endpoint.handle_timeout(Instant::now()),
            }
            self.drain(&mut out).await;
        }
    }

    /// Starts reading a new connection and makes it the route to `addr`.
    fn open(&mut self, addr: SocketAddr, mut stream: OwnedReadHalf, writer: OwnedWriteHalf) {
        let (credit_tx, mut credit_rx) = mpsc::channel::<Vec<u8>>(READ_CHUNKS);
        for _ in 0..READ_CHUNKS {
            // fresh channel with READ_CHUNKS slots: cannot be full
            let _ = credit_tx.try_send(Vec::with_capacity(READ_CHUNK));
        }
        let conn_tx = self.conn_tx.clone();
        let task = tokio::spawn(async move {
            let error = loop {
                let Some(mut chunk) = credit_rx.recv().await else {
                    return;
                };
                chunk.clear();
                chunk.resize(READ_CHUNK, 0);
                match stream.read(&mut chunk).await {
                    Ok(0) => break None,
                    Ok(n) => {
                        chunk.truncate(n);
                        if conn_tx.send(ConnEvent::Data { addr, chunk }).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => break Some(e),
                }
            };
            let _ = conn_tx.send(ConnEvent::Closed { addr, error }).await;
        });
        let old = self.readers.insert(
            addr,
            Reader {
                decoder: RecordDecoder::new(MAX_RECORD_LIMIT),
                credit: credit_tx,
                task,
            },
        );
        if old.is_some() {
            tracing::debug!(%addr, "tcp: replacing the connection to a peer");
        }
        let w = Arc::new(ConnWriter::new(writer));
        self.transmit.insert(addr, Arc::clone(&w));
        if let Some(queued) = self.connecting.remove(&addr) {
            tokio::spawn(async move {
                if let Err(e) = w.send(queued.iter().map(Vec::as_slice)).await {
                    tracing::debug!(%addr, "tcp: cannot send handshake: {e}");
                }
            });
        }
    }

    async fn conn_event(&mut self, ev: ConnEvent) {
        match ev {
            ConnEvent::Open {
                addr,
                reader,
                writer,
            } => self.open(addr, reader, writer),
            ConnEvent::Data { addr, chunk } => self.receive(addr, chunk).await,
            ConnEvent::Closed { addr, error } => {
                match &error {
                    Some(e) => tracing::info!(%addr, "tcp connection failed: {e}"),
                    None => tracing::debug!(%addr, "tcp connection closed by the peer"),
                }
                self.connecting.remove(&addr);
                self.close_conn(addr);
            }
        }
    }

    /// Feeds a chunk of stream bytes through the connection's decoder and
    /// the endpoint, then gives the chunk back to the reader.
    async fn receive(&mut self, addr: SocketAddr, chunk: Vec<u8>) {
        let Some(reader) = self.readers.get_mut(&addr) else {
            return;
        };
        let now = Instant::now();
        let wall = SystemTime::now();
        let mut rest = &chunk[..];
        let mut broken = None;
        while !rest.is_empty() {
            let n = reader.decoder.feed(rest);
            rest = &rest[n..];
            loop {
                match reader.decoder.next_record_mut() {
                    Ok(Some(record)) => {
                        if let Received::Packet { id, packet } =
                            self.endpoint.handle_datagram(addr, record, now, wall)
                        {
                            self.manager.deliver(id, packet);
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        broken = Some(e);
                        break;
                    }
                }
            }
            if broken.is_some() {
                break;
            }
        }
        self.manager.flush().await;
        if let Some(e) = broken {
            tracing::warn!(%addr, "tcp: bad record stream, closing the connection: {e}");
            self.close_conn(addr);
            return;
        }
        // hand the buffer back: the reader may read again
        let _ = reader.credit.try_send(chunk);
    }

    /// Forgets the connection to `addr` and takes its tunnels down at once.
    fn close_conn(&mut self, addr: SocketAddr) {
        self.readers.remove(&addr);
        self.transmit.remove(addr);
        let ids: Vec<_> = self
            .endpoint
            .tunnels()
            .filter(|&id| self.endpoint.addr(id) == Some(addr))
            .collect();
        for id in ids {
            // reported as down at once; the owner decides whether to
            // open a new tunnel
            self.endpoint.close(id);
        }
    }

    fn command(&mut self, cmd: Command) {
        if let Command::Connect { addr, .. } = &cmd {
            self.initiated.insert(*addr);
        }
        self.manager
            .command(cmd, &mut self.endpoint, Instant::now());
    }

    /// Sends one message from the endpoint (a handshake or control
    /// message) to `dst`, opening the connection when we initiate.
    fn send_control(&mut self, dst: SocketAddr, msg: &[u8]) {
        if let Some(w) = self.transmit.writer(dst) {
            let msg = msg.to_vec();
            tokio::spawn(async move {
                if let Err(e) = w.send(std::iter::once(&msg[..])).await {
                    tracing::debug!(addr = %dst, "tcp: send failed: {e}");
                }
            });
            return;
        }
        if !self.initiated.contains(&dst) {
            // an accepted peer whose connection is gone: it reconnects
            return;
        }
        let queue = self.connecting.entry(dst).or_default();
        let attempt_running = !queue.is_empty();
        if queue.len() == MAX_QUEUED_CONTROL {
            // handshake retries while the connection is being opened: keep
            // the newest
            queue.remove(0);
        }
        queue.push(msg.to_vec());
        if attempt_running {
            return;
        }
        let conn_tx = self.conn_tx.clone();
        tokio::spawn(async move {
            match TcpStream::connect(dst).await {
                Ok(stream) => {
                    configure(&stream);
                    let (reader, writer) = stream.into_split();
                    let _ = conn_tx
                        .send(ConnEvent::Open {
                            addr: dst,
                            reader,
                            writer,
                        })
                        .await;
                }
                Err(e) => {
                    let _ = conn_tx
                        .send(ConnEvent::Closed {
                            addr: dst,
                            error: Some(e),
                        })
                        .await;
                }
            }
        });
    }

    async fn drain(&mut self, out: &mut [u8]) {
        while let Some((dst, n)) = self.endpoint.poll_transmit(out) {
            self.send_control(dst, &out[..n]);
        }
        while let Some(ev) = self.endpoint.poll_event() {
            let Some(public) = self.manager.publish(ev, &mut self.endpoint) else {
                continue;
            };
            match &public {
                TunnelEvent::Up { id, addr, .. } | TunnelEvent::Roamed { id, addr } => {
                    self.tunnel_addrs.insert(*id, *addr);
                }
                TunnelEvent::Down { id, reason, .. } => {
                    if let Some(addr) = self.tunnel_addrs.remove(id) {
                        // a silent peer's connection goes with its tunnel
                        let used = self.tunnel_addrs.values().any(|a| *a == addr);
                        if matches!(reason, DownReason::Timeout(_)) && !used {
                            self.readers.remove(&addr);
                            self.transmit.remove(addr);
                        }
                    }
                }
                TunnelEvent::Refused { .. } => {}
            }
            let _ = self.events.send(public);
        }
        while let Some((dst, n)) = self.endpoint.poll_transmit(out) {
            self.send_control(dst, &out[..n]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapped_ipv4_peers_get_their_plain_address() {
        let cases = [
            ("[::ffff:10.1.0.1]:4000", "10.1.0.1:4000"),
            ("10.1.0.1:4000", "10.1.0.1:4000"),
            ("[fd00:1::1]:4000", "[fd00:1::1]:4000"),
        ];
        for (given, want) in cases {
            let got = canonical(given.parse().unwrap());
            assert_eq!(got, want.parse::<SocketAddr>().unwrap(), "{given}");
        }
    }

    #[tokio::test]
    async fn records_reach_the_peer_in_order_and_unknown_peers_fail() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = TcpStream::connect(addr).await.unwrap();
        let (mut server, _) = listener.accept().await.unwrap();
        let (_r, w) = client.into_split();
        let transmit = TcpTransmit::default();
        transmit.insert(addr, Arc::new(ConnWriter::new(w)));

        let msgs: Vec<Vec<u8>> = (1..=50u8).map(|i| vec![i; usize::from(i) * 30]).collect();
        let writer = transmit.writer(addr).unwrap();
        writer.send(msgs.iter().map(Vec::as_slice)).await.unwrap();

        let mut dec = RecordDecoder::new(MAX_RECORD_LIMIT);
        let mut got = Vec::new();
        while got.len() < msgs.len() {
            let n = server.read(dec.read_buf()).await.unwrap();
            assert!(n > 0, "stream ended early");
            dec.advance(n);
            while let Some(r) = dec.next_record().unwrap() {
                got.push(r.to_vec());
            }
        }
        assert_eq!(got, msgs);

        let mut batch = TxBatch::new();
        let err = transmit
            .send_batch("127.0.0.1:9".parse().unwrap(), &mut batch)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotConnected);
    }
}
