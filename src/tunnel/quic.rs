//! The quic transport: tunnels as QUIC connections (quinn), authenticated by
//! mutual TLS with the network's certificates, carrying IP packets as QUIC
//! datagrams (RFC 9221, unreliable: no head-of-line blocking between the
//! inner flows).
//!
//! One [`QuicTransport`] owns one UDP socket (a quinn endpoint acting as
//! both client and server) shared by all its tunnels. [`QuicTransport::connect`]
//! and [`QuicTransport::accept`] yield a [`QuicTunnel`] once the TLS handshake
//! proved the peer's certificate (see [`tls`]); [`QuicTunnel::run`] then
//! moves packets between the tunnel and its TUN device until the connection
//! ends. Liveness comes from QUIC itself: keepalive PINGs every
//! [`QuicConfig::keepalive`], and a connection silent for
//! [`QuicConfig::dead_timeout`] ends with [`TunnelEnd::TimedOut`].
//!
//! Backpressure: packets read from the TUN device wait for room in quinn's
//! bounded datagram send buffer (`send_datagram_wait`), so a slow path slows
//! the reader instead of growing a queue; received datagrams sit in quinn's
//! bounded receive buffer (oldest dropped when full).

pub mod driver;
pub mod tls;

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::pki_types::CertificateDer;
use tun_rs::AsyncDevice;

use self::tls::{PeerPolicy, Refusal, TlsError, TlsIdentity};
use crate::pki::{NodeCert, NodePrefix, VerifyError};

/// UDP payload size QUIC starts with: fits a 1500-byte underlay path over
/// IPv6 (1500 - 40 - 8) and therefore over IPv4 too.
pub const INITIAL_UDP_PAYLOAD: u16 = 1452;

/// The smallest MTU an IPv6 link may have (RFC 8200).
pub const IPV6_MIN_MTU: u16 = 1280;

/// Tunables of the quic transport.
#[derive(Clone, Debug)]
pub struct QuicConfig {
    /// Interval of keepalive PINGs on an idle tunnel. quinn has no
    /// "probe only when waiting" mode (its loss recovery already probes a
    /// tunnel that sends), so an idle tunnel pings at this rate: a third of
    /// `dead_timeout` gives three chances before the timeout.
    pub keepalive: Duration,
    /// A tunnel that hears nothing from its peer for this long is dead
    /// (quinn stretches it to three probe timeouts on slow paths).
    pub dead_timeout: Duration,
    /// Bytes of datagrams queued for sending per tunnel before the TUN
    /// reader waits.
    pub send_buffer: usize,
    /// Bytes of received datagrams queued per tunnel before the oldest are
    /// dropped.
    pub receive_buffer: usize,
}

impl Default for QuicConfig {
    fn default() -> Self {
        Self {
            keepalive: Duration::from_millis(500),
            dead_timeout: Duration::from_millis(1500),
            send_buffer: 1 << 20,
            receive_buffer: 1 << 20,
        }
    }
}

/// Why the quic transport could not bind, connect or accept.
#[derive(Debug, thiserror::Error)]
pub enum QuicError {
    /// The UDP socket could not be bound.
    #[error("cannot bind the quic socket: {0}")]
    Bind(#[source] io::Error),
    /// Our credentials could not become a TLS configuration.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// A configuration quinn refused (cipher suites, timeouts).
    #[error("quic configuration: {0}")]
    Config(String),
    /// The connection attempt could not start.
    #[error("cannot connect: {0}")]
    Connect(#[from] quinn::ConnectError),
    /// The handshake failed (for example the peer's certificate was
    /// refused, on either side) or the connection ended.
    #[error("quic connection: {0}")]
    Connection(#[from] quinn::ConnectionError),
    /// We refused the peer's certificate.
    #[error("peer certificate refused: {0}")]
    Refused(VerifyError),
    /// The handshake completed without a usable peer certificate.
    #[error("peer presented no node certificate")]
    NoPeerCertificate,
    /// The peer does not accept QUIC datagrams, or too small ones.
    #[error("peer does not support datagrams of {0} bytes")]
    Datagrams(u16),
}

/// How a tunnel ended.
#[derive(Debug)]
pub enum TunnelEnd {
    /// Nothing was heard from the peer within the dead-peer timeout.
    TimedOut,
    /// The peer closed the tunnel (or its endpoint went away).
    ClosedByPeer(String),
    /// We closed it ([`QuicTunnel::close`] or [`QuicTransport::close`]).
    ClosedLocally,
    /// Reading or writing the TUN device failed.
    Device(io::Error),
    /// Another connection error.
    Other(quinn::ConnectionError),
}

/// One socket, all quic tunnels of a node.
#[derive(Debug)]
pub struct QuicTransport {
    endpoint: quinn::Endpoint,
    identity: TlsIdentity,
    policy: PeerPolicy,
    transport: Arc<quinn::TransportConfig>,
}

impl QuicTransport {
    /// Binds the transport's UDP socket on `addr` (IPv6 sockets also take
    /// IPv4-mapped peers) and starts accepting tunnels from nodes whose
    /// certificates `policy` accepts.
    pub fn bind(
        addr: SocketAddr,
        identity: TlsIdentity,
        policy: PeerPolicy,
        config: &QuicConfig,
    ) -> Result<Self, QuicError> {
        let transport = Arc::new(transport_config(config)?);
        let tls = tls::server_config(&identity, policy.clone())?;
        let crypto =
            QuicServerConfig::try_from(tls).map_err(|e| QuicError::Config(e.to_string()))?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        server.transport_config(Arc::clone(&transport));
        let endpoint = quinn::Endpoint::server(server, addr).map_err(QuicError::Bind)?;
        Ok(Self {
            endpoint,
            identity,
            policy,
            transport,
        })
    }

    /// The address the socket is bound to.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// The certificate rules of this transport (to apply a new CRL).
    pub fn policy(&self) -> &PeerPolicy {
        &self.policy
    }

    /// Opens a tunnel to the node at `addr` whose certificate CN must be
    /// `expected` (when given).
    pub async fn connect(
        &self,
        addr: SocketAddr,
        expected: Option<NodePrefix>,
    ) -> Result<QuicTunnel, QuicError> {
        let refusal = Refusal::default();
        let tls = tls::client_config(
            &self.identity,
            self.policy.clone(),
            expected,
            refusal.clone(),
        )?;
        let crypto =
            QuicClientConfig::try_from(tls).map_err(|e| QuicError::Config(e.to_string()))?;
        let mut client = quinn::ClientConfig::new(Arc::new(crypto));
        client.transport_config(Arc::clone(&self.transport));
        let connecting = self.endpoint.connect_with(client, addr, tls::SERVER_NAME)?;
        match connecting.await {
            Ok(conn) => QuicTunnel::new(conn),
            Err(e) => Err(refusal
                .reason()
                .map_or(QuicError::Connection(e), QuicError::Refused)),
        }
    }

    /// Waits for the next tunnel a peer opens to us; `None` once the
    /// transport is closed. A peer whose certificate is refused shows up as
    /// an error with its address (and a log line naming the reason).
    pub async fn accept(&self) -> Option<Result<QuicTunnel, (SocketAddr, QuicError)>> {
        let incoming = self.endpoint.accept().await?;
        let addr = incoming.remote_address();
        Some(match incoming.await {
            Ok(conn) => QuicTunnel::new(conn).map_err(|e| (addr, e)),
            Err(e) => Err((addr, e.into())),
        })
    }

    /// Closes every tunnel and the socket.
    pub fn close(&self) {
        self.endpoint.close(0u32.into(), b"shutdown");
    }
}

fn transport_config(c: &QuicConfig) -> Result<quinn::TransportConfig, QuicError> {
    let mut t = quinn::TransportConfig::default();
    let idle = quinn::IdleTimeout::try_from(c.dead_timeout)
        .map_err(|e| QuicError::Config(format!("dead peer timeout: {e}")))?;
    t.max_idle_timeout(Some(idle))
        .keep_alive_interval(Some(c.keepalive))
        .datagram_receive_buffer_size(Some(c.receive_buffer))
        .datagram_send_buffer_size(c.send_buffer)
        .initial_mtu(INITIAL_UDP_PAYLOAD)
        // tunnels carry no streams
        .max_concurrent_bidi_streams(0u8.into())
        .max_concurrent_uni_streams(0u8.into());
    Ok(t)
}

/// Counters of one tunnel's data path.
#[derive(Debug, Default)]
pub struct QuicCounters {
    /// Packets read from the TUN device and sent.
    pub tx_packets: AtomicU64,
    /// Their bytes.
    pub tx_bytes: AtomicU64,
    /// Datagrams received and written to the TUN device.
    pub rx_packets: AtomicU64,
    /// Their bytes.
    pub rx_bytes: AtomicU64,
    /// Packets dropped because they exceed what one datagram holds.
    pub tx_too_large: AtomicU64,
}

/// An established quic tunnel to an authenticated peer.
#[derive(Debug)]
pub struct QuicTunnel {
    conn: quinn::Connection,
    peer_cert: NodeCert,
    peer_prefix: NodePrefix,
    mtu: u16,
    counters: Arc<QuicCounters>,
}

impl QuicTunnel {
    fn new(conn: quinn::Connection) -> Result<Self, QuicError> {
        let certs = conn
            .peer_identity()
            .and_then(|id| id.downcast::<Vec<CertificateDer<'static>>>().ok())
            .ok_or(QuicError::NoPeerCertificate)?;
        let (peer_cert, peer_prefix) =
            tls::peer_prefix(&certs).ok_or(QuicError::NoPeerCertificate)?;
        let max = conn.max_datagram_size().unwrap_or(0);
        let mtu = u16::try_from(max).unwrap_or(u16::MAX);
        if mtu < IPV6_MIN_MTU {
            conn.close(1u32.into(), b"datagrams too small");
            return Err(QuicError::Datagrams(IPV6_MIN_MTU));
        }
        Ok(Self {
            conn,
            peer_cert,
            peer_prefix,
            mtu,
            counters: Arc::default(),
        })
    }

    /// The peer's prefix (its certificate's CN).
    pub fn peer_prefix(&self) -> NodePrefix {
        self.peer_prefix
    }

    /// The peer's certificate.
    pub fn peer_cert(&self) -> &NodeCert {
        &self.peer_cert
    }

    /// The peer's current UDP address.
    pub fn remote_address(&self) -> SocketAddr {
        self.conn.remote_address()
    }

    /// The MTU to give the tunnel's TUN device: the largest IP packet one
    /// QUIC datagram carries on this connection's path.
    pub fn mtu(&self) -> u16 {
        self.mtu
    }

    /// Current round-trip time estimate.
    pub fn rtt(&self) -> Duration {
        self.conn.rtt()
    }

    /// The tunnel's data path counters.
    pub fn counters(&self) -> Arc<QuicCounters> {
        Arc::clone(&self.counters)
    }

    /// A handle that closes the tunnel from elsewhere.
    pub fn closer(&self) -> QuicCloser {
        QuicCloser(self.conn.clone())
    }

    /// Moves packets between `tun` and the peer until the tunnel ends, and
    /// says how it ended.
    pub async fn run(self, tun: Arc<AsyncDevice>) -> TunnelEnd {
        let up = pump_up(&self.conn, &tun, self.mtu, &self.counters);
        let down = pump_down(&self.conn, &tun, &self.counters);
        let result = tokio::select! {
            r = up => r,
            r = down => r,
        };
        match result {
            PumpError::Conn(e) => end_of(e),
            PumpError::Device(e) => {
                self.conn.close(2u32.into(), b"device error");
                TunnelEnd::Device(e)
            }
        }
    }
}

/// Closes a [`QuicTunnel`] from another task.
#[derive(Clone, Debug)]
pub struct QuicCloser(quinn::Connection);

impl QuicCloser {
    /// The connection's current round-trip time estimate.
    pub fn rtt(&self) -> Duration {
        self.0.rtt()
    }

    /// Closes the tunnel; its [`QuicTunnel::run`] returns
    /// [`TunnelEnd::ClosedLocally`].
    pub fn close(&self) {
        self.0.close(0u32.into(), b"closed");
    }
}

fn end_of(e: quinn::ConnectionError) -> TunnelEnd {
    use quinn::ConnectionError as E;
    match e {
        E::TimedOut => TunnelEnd::TimedOut,
        E::LocallyClosed => TunnelEnd::ClosedLocally,
        E::ApplicationClosed(c) => {
            TunnelEnd::ClosedByPeer(String::from_utf8_lossy(&c.reason).into())
        }
        E::ConnectionClosed(c) => TunnelEnd::ClosedByPeer(c.to_string()),
        E::Reset => TunnelEnd::ClosedByPeer("reset".into()),
        other => TunnelEnd::Other(other),
    }
}

enum PumpError {
    Conn(quinn::ConnectionError),
    Device(io::Error),
}

/// Bytes reserved at once for packets read from the TUN device: datagrams
/// are slices of these blocks, so reading allocates once per block, not
/// once per packet.
const BLOCK: usize = 256 * 1024;

/// TUN device -> peer. Waits for room in the datagram send buffer.
async fn pump_up(
    conn: &quinn::Connection,
    tun: &AsyncDevice,
    mtu: u16,
    c: &QuicCounters,
) -> PumpError {
    let mtu = usize::from(mtu);
    let mut buf = BytesMut::with_capacity(BLOCK);
    loop {
        if buf.capacity() < mtu {
            buf = BytesMut::with_capacity(BLOCK);
        }
        buf.resize(mtu, 0);
        let n = match tun.recv(&mut buf).await {
            Ok(n) => n,
            Err(e) => return PumpError::Device(e),
        };
        let packet = buf.split_to(n).freeze();
        buf.clear();
        c.tx_packets.fetch_add(1, Ordering::Relaxed);
        c.tx_bytes.fetch_add(n as u64, Ordering::Relaxed);
        match conn.send_datagram_wait(packet).await {
            Ok(()) => {}
            Err(quinn::SendDatagramError::ConnectionLost(e)) => return PumpError::Conn(e),
            Err(quinn::SendDatagramError::TooLarge) => {
                // the path MTU shrank below the TUN MTU
                c.tx_too_large.fetch_add(1, Ordering::Relaxed);
            }
            Err(
                quinn::SendDatagramError::UnsupportedByPeer | quinn::SendDatagramError::Disabled,
            ) => {
                conn.close(1u32.into(), b"datagrams unsupported");
                return PumpError::Conn(quinn::ConnectionError::LocallyClosed);
            }
        }
    }
}

/// Peer -> TUN device.
async fn pump_down(conn: &quinn::Connection, tun: &AsyncDevice, c: &QuicCounters) -> PumpError {
    loop {
        let d = match conn.read_datagram().await {
            Ok(d) => d,
            Err(e) => return PumpError::Conn(e),
        };
        c.rx_packets.fetch_add(1, Ordering::Relaxed);
        c.rx_bytes.fetch_add(d.len() as u64, Ordering::Relaxed);
        if let Err(e) = tun.send(&d).await {
            return PumpError::Device(e);
        }
    }
}
