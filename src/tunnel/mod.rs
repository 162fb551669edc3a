//! Tunnels: authenticated, encrypted point-to-point IP links between nodes,
//! each surfaced as one TUN interface (`re6st-<n>`).
//!
//! Layers, from the wire up:
//!
//! - [`wire`]: message formats (handshake, cookie reply, data).
//! - [`session`]: sans-I/O data sessions (AEAD, counters, replay window,
//!   rekey/keepalive/dead-peer timers).
//! - [`handshake`]: the Noise XX handshake bound to node certificates.
//! - [`cookie`]: flood protection (mac1/mac2, cookie replies, rate limits).
//! - [`endpoint`]: the sans-I/O state machine of every tunnel of one
//!   transport socket (what a transport plugs into).
//! - [`datapath`]: TUN devices, batching, the encrypting tasks, and the
//!   [`datapath::Transmit`] trait a transport implements.
//! - [`udp`]: the UDP transport shell. `sys`: the unsafe system edge.
//! - [`framing`]: length-prefixed records for stream transports.
//! - [`tcp`]: the same sessions over TCP streams, as records.
//! - [`quic`]: the QUIC transport (quinn, mutual TLS, datagrams).
//!
//! [`Tunnels`] is the handle the node (and `re6st tunnel`) drives: connect,
//! close, revoke, status; [`TunnelEvent`]s report tunnels going up and
//! down (at once on liveness timeout), roaming, and refused peers.

use std::net::SocketAddr;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

pub mod cookie;
pub mod datapath;
pub mod endpoint;
pub mod framing;
pub mod handshake;
pub mod quic;
pub mod session;
pub mod sys;
pub mod tcp;
pub mod udp;
pub mod wire;

pub use datapath::{Transmit, TunSettings, TunnelManager, TxBatch};
pub use endpoint::{DownReason, Endpoint, EndpointConfig, Event, Received, TunnelId, TunnelStats};
pub use handshake::{Credentials, HandshakeError, PeerInfo};
pub use session::Timing;

use crate::pki::NodePrefix;

/// Configuration of one transport's tunnels.
#[derive(Clone, Debug)]
pub struct TunnelsConfig {
    /// Address to listen on (`[::]:PORT` serves IPv4 and IPv6).
    pub listen: SocketAddr,
    /// Endpoint parameters (timers, limits).
    pub endpoint: EndpointConfig,
    /// TUN devices.
    pub tun: TunSettings,
    /// RNG seed (tests); `None` seeds from the OS.
    pub seed: Option<u64>,
}

/// What the tunnels report to their owner.
// Events are rare (handshakes, timeouts): their size does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug)]
pub enum TunnelEvent {
    /// A tunnel is up: its interface exists and carries traffic.
    Up {
        /// The tunnel.
        id: TunnelId,
        /// Its TUN interface.
        interface: String,
        /// The authenticated peer (prefix and certificate).
        peer: PeerInfo,
        /// The peer's transport address.
        addr: SocketAddr,
        /// Whether we initiated it.
        initiated: bool,
    },
    /// A tunnel is down (its interface is removed).
    Down {
        /// The tunnel.
        id: TunnelId,
        /// Its interface, if it had come up.
        interface: Option<String>,
        /// Why.
        reason: DownReason,
    },
    /// The peer of a tunnel moved to another address.
    Roamed {
        /// The tunnel.
        id: TunnelId,
        /// The new address.
        addr: SocketAddr,
    },
    /// A handshake from `addr` was refused.
    Refused {
        /// The source of the handshake.
        addr: SocketAddr,
        /// Why.
        error: HandshakeError,
    },
}

/// One tunnel in a status listing.
#[derive(Clone, Debug)]
pub struct TunnelStatus {
    /// The tunnel.
    pub id: TunnelId,
    /// Its interface, once up.
    pub interface: Option<String>,
    /// The peer's prefix, once authenticated.
    pub peer: Option<NodePrefix>,
    /// The peer's transport address.
    pub addr: Option<SocketAddr>,
    /// Counters.
    pub stats: TunnelStats,
}

/// Commands to a transport's driver task.
#[derive(Debug)]
pub enum Command {
    /// Open a tunnel.
    Connect {
        /// Peer address.
        addr: SocketAddr,
        /// Expected peer prefix (certificate CN).
        expected: Option<NodePrefix>,
        /// Receives the tunnel id.
        reply: oneshot::Sender<TunnelId>,
    },
    /// Close a tunnel.
    Close(TunnelId),
    /// Replace the revoked certificate serials.
    SetRevoked(Vec<u64>),
    /// List tunnels.
    Status(oneshot::Sender<Vec<TunnelStatus>>),
}

/// The errors of the [`Tunnels`] handle.
#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    /// The driver task has stopped.
    #[error("tunnel transport stopped")]
    Stopped,
}

/// A handle on a running transport and its tunnels. Dropping it stops the
/// driver (tunnels and interfaces go away).
#[derive(Debug)]
pub struct Tunnels {
    cmds: mpsc::UnboundedSender<Command>,
    local: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for Tunnels {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Tunnels {
    /// Wraps a driver task (for transports).
    pub fn new(
        cmds: mpsc::UnboundedSender<Command>,
        local: SocketAddr,
        task: JoinHandle<()>,
    ) -> Self {
        Self { cmds, local, task }
    }

    /// The bound local address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Opens a tunnel to `addr`, expecting the peer's prefix `expected`.
    pub async fn connect(
        &self,
        addr: SocketAddr,
        expected: Option<NodePrefix>,
    ) -> Result<TunnelId, TunnelError> {
        let (tx, rx) = oneshot::channel();
        self.cmds
            .send(Command::Connect {
                addr,
                expected,
                reply: tx,
            })
            .map_err(|_| TunnelError::Stopped)?;
        rx.await.map_err(|_| TunnelError::Stopped)
    }

    /// Closes a tunnel.
    pub fn close(&self, id: TunnelId) -> Result<(), TunnelError> {
        self.cmds
            .send(Command::Close(id))
            .map_err(|_| TunnelError::Stopped)
    }

    /// Replaces the revoked certificate serials; tunnels to revoked peers
    /// go down.
    pub fn set_revoked(&self, serials: Vec<u64>) -> Result<(), TunnelError> {
        self.cmds
            .send(Command::SetRevoked(serials))
            .map_err(|_| TunnelError::Stopped)
    }

    /// The tunnels and their counters.
    pub async fn status(&self) -> Result<Vec<TunnelStatus>, TunnelError> {
        let (tx, rx) = oneshot::channel();
        self.cmds
            .send(Command::Status(tx))
            .map_err(|_| TunnelError::Stopped)?;
        rx.await.map_err(|_| TunnelError::Stopped)
    }
}
