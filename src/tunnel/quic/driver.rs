//! The quic transport behind the same [`Tunnels`] handle and
//! [`TunnelEvent`]s as the udp and tcp transports, so the node drives all
//! three alike: one task owns the [`QuicTransport`] (one socket), gives
//! every tunnel that comes up its TUN interface (`<prefix><n>`, link-local
//! address, MTU of the connection's datagrams), runs its data path, and
//! reports tunnels going down at once (QUIC idle timeout = dead peer).

use std::collections::HashMap;
use std::io;
use std::net::{Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use rand::RngCore;
use tokio::sync::mpsc;

use super::tls::{PeerPolicy, TlsIdentity};
use super::{
    QuicCloser, QuicConfig, QuicCounters, QuicError, QuicTransport, QuicTunnel, TunnelEnd,
};
use crate::tunnel::datapath::DEFAULT_TX_QUEUE_LEN;
use crate::tunnel::sys::tun::{self, TunConfig};
use crate::tunnel::{
    Command, DownReason, HandshakeError, PeerInfo, TunnelEvent, TunnelId, TunnelStats,
    TunnelStatus, Tunnels, TunnelsConfig,
};

/// Binds the quic transport on `config.listen` and starts its driver task.
/// `config.endpoint` is not used (QUIC has its own handshake and timers:
/// `quic` sets them); `config.tun` names the interfaces.
pub async fn start(
    identity: TlsIdentity,
    policy: PeerPolicy,
    quic: QuicConfig,
    config: TunnelsConfig,
) -> io::Result<(Tunnels, mpsc::UnboundedReceiver<TunnelEvent>)> {
    let transport =
        QuicTransport::bind(config.listen, identity, policy, &quic).map_err(|e| match e {
            QuicError::Bind(e) => e,
            other => io::Error::other(other),
        })?;
    let transport = Arc::new(transport);
    let local = transport.local_addr()?;
    let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
    let (ev_tx, ev_rx) = mpsc::unbounded_channel();
    let (int_tx, int_rx) = mpsc::unbounded_channel();
    let seed = config.seed.unwrap_or_else(|| rand::rngs::OsRng.next_u64());
    let accept = {
        let transport = Arc::clone(&transport);
        let tx = int_tx.clone();
        tokio::spawn(async move {
            while let Some(r) = transport.accept().await {
                if tx.send(Internal::Incoming(r)).is_err() {
                    return;
                }
            }
        })
    };
    let driver = Driver {
        transport,
        quic,
        name_prefix: config.tun.name_prefix.clone(),
        seed,
        next_id: 0,
        next_if: 0,
        tunnels: HashMap::new(),
        events: ev_tx,
        internal: int_tx,
        _accept: AbortOnDrop(accept),
    };
    let task = tokio::spawn(driver.run(cmd_rx, int_rx));
    Ok((Tunnels::new(cmd_tx, local, task), ev_rx))
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

enum Internal {
    Incoming(Result<QuicTunnel, (SocketAddr, QuicError)>),
    Connected(TunnelId, Result<QuicTunnel, QuicError>),
    Ended(TunnelId, TunnelEnd),
}

struct Entry {
    addr: SocketAddr,
    /// Set once the tunnel is up.
    up: Option<UpState>,
    revoked: bool,
}

struct UpState {
    closer: QuicCloser,
    interface: String,
    peer: PeerInfo,
    counters: Arc<QuicCounters>,
    since: Instant,
}

struct Driver {
    transport: Arc<QuicTransport>,
    quic: QuicConfig,
    name_prefix: String,
    seed: u64,
    next_id: u32,
    next_if: u32,
    tunnels: HashMap<TunnelId, Entry>,
    events: mpsc::UnboundedSender<TunnelEvent>,
    internal: mpsc::UnboundedSender<Internal>,
    _accept: AbortOnDrop,
}

impl Driver {
    async fn run(
        mut self,
        mut cmds: mpsc::UnboundedReceiver<Command>,
        mut internal: mpsc::UnboundedReceiver<Internal>,
    ) {
        loop {
            tokio::select! {
                cmd = cmds.recv() => {
                    let Some(cmd) = cmd else { break };
                    self.command(cmd);
                }
                // the driver holds a sender itself: never None
                Some(i) = internal.recv() => self.internal(i),
            }
        }
        self.transport.close();
    }

    fn id(&mut self) -> TunnelId {
        let id = TunnelId(self.next_id);
        self.next_id = self.next_id.wrapping_add(1);
        id
    }

    fn command(&mut self, cmd: Command) {
        match cmd {
            Command::Connect {
                addr,
                expected,
                reply,
            } => {
                let id = self.id();
                self.tunnels.insert(
                    id,
                    Entry {
                        addr,
                        up: None,
                        revoked: false,
                    },
                );
                let _ = reply.send(id);
                let transport = Arc::clone(&self.transport);
                let tx = self.internal.clone();
                tokio::spawn(async move {
                    let r = transport.connect(addr, expected).await;
                    let _ = tx.send(Internal::Connected(id, r));
                });
            }
            Command::Close(id) => match self.tunnels.get(&id) {
                Some(Entry { up: Some(u), .. }) => u.closer.close(),
                Some(_) => self.down(id, DownReason::Closed),
                None => {}
            },
            Command::SetRevoked(serials) => {
                self.transport.policy().set_revoked(serials.iter().copied());
                for e in self.tunnels.values_mut() {
                    if let Some(u) = &e.up {
                        if serials.contains(&u.peer.cert.serial()) {
                            e.revoked = true;
                            u.closer.close();
                        }
                    }
                }
            }
            Command::Status(reply) => {
                let list = self
                    .tunnels
                    .iter()
                    .map(|(&id, e)| TunnelStatus {
                        id,
                        interface: e.up.as_ref().map(|u| u.interface.clone()),
                        peer: e.up.as_ref().map(|u| u.peer.prefix),
                        addr: Some(e.addr),
                        stats: e.up.as_ref().map(stats).unwrap_or_default(),
                    })
                    .collect();
                let _ = reply.send(list);
            }
        }
    }

    fn internal(&mut self, i: Internal) {
        match i {
            Internal::Incoming(Ok(t)) => {
                let id = self.id();
                let addr = t.remote_address();
                self.tunnels.insert(
                    id,
                    Entry {
                        addr,
                        up: None,
                        revoked: false,
                    },
                );
                self.established(id, t, false);
            }
            Internal::Incoming(Err((addr, e))) => {
                // The server-side verifier is shared by every handshake, so
                // it cannot tell which connection a refusal belongs to: it
                // logs the precise reason itself, and no Refused event is
                // emitted for incoming quic tunnels.
                tracing::debug!(%addr, "quic: incoming tunnel failed: {e}");
            }
            Internal::Connected(id, Ok(t)) => {
                if self.tunnels.contains_key(&id) {
                    self.established(id, t, true);
                } else {
                    // closed while connecting
                    t.closer().close();
                }
            }
            Internal::Connected(id, Err(e)) => {
                let reason = match e {
                    QuicError::Refused(v) => DownReason::Refused(HandshakeError::Certificate(v)),
                    QuicError::Connection(quinn::ConnectionError::TimedOut) => {
                        DownReason::HandshakeTimeout(self.quic.dead_timeout)
                    }
                    other => {
                        tracing::info!(tunnel = %id, "quic: cannot connect: {other}");
                        DownReason::Closed
                    }
                };
                self.down(id, reason);
            }
            Internal::Ended(id, end) => {
                let revoked = self.tunnels.get(&id).is_some_and(|e| e.revoked);
                let reason = match end {
                    TunnelEnd::TimedOut => DownReason::Timeout(self.quic.dead_timeout),
                    _ if revoked => DownReason::Revoked,
                    TunnelEnd::ClosedLocally => DownReason::Closed,
                    other => {
                        tracing::info!(tunnel = %id, "quic tunnel ended: {other:?}");
                        DownReason::Closed
                    }
                };
                self.down(id, reason);
            }
        }
    }

    fn free_name(&mut self) -> String {
        loop {
            let name = format!("{}{}", self.name_prefix, self.next_if);
            self.next_if = self.next_if.wrapping_add(1);
            let taken = self
                .tunnels
                .values()
                .any(|e| e.up.as_ref().is_some_and(|u| u.interface == name));
            if !taken {
                return name;
            }
        }
    }

    fn link_local(&self, id: TunnelId) -> Ipv6Addr {
        // seeded, distinct per tunnel, never the same as the peer's
        let hi = (self.seed >> 32) as u32 ^ 0x7175_6963;
        let lo = self.seed as u32 ^ id.0;
        Ipv6Addr::new(
            0xfe80,
            0,
            0,
            0,
            (hi >> 16) as u16,
            hi as u16,
            (lo >> 16) as u16,
            lo as u16 | 1,
        )
    }

    fn established(&mut self, id: TunnelId, t: QuicTunnel, initiated: bool) {
        let interface = self.free_name();
        let cfg = TunConfig {
            name: interface.clone(),
            mtu: t.mtu(),
            link_local: self.link_local(id),
            offload: false,
            tx_queue_len: DEFAULT_TX_QUEUE_LEN,
        };
        let dev = match tun::create(&cfg) {
            Ok(d) => Arc::new(d),
            Err(e) => {
                tracing::error!(tunnel = %id, "cannot create the tunnel interface {interface}: {e}");
                t.closer().close();
                self.down(id, DownReason::Closed);
                return;
            }
        };
        let peer = PeerInfo {
            prefix: t.peer_prefix(),
            cert: t.peer_cert().clone(),
        };
        let addr = t.remote_address();
        let up = UpState {
            closer: t.closer(),
            interface: interface.clone(),
            peer: peer.clone(),
            counters: t.counters(),
            since: Instant::now(),
        };
        if let Some(e) = self.tunnels.get_mut(&id) {
            e.addr = addr;
            e.up = Some(up);
        }
        let tx = self.internal.clone();
        tokio::spawn(async move {
            let end = t.run(dev).await;
            let _ = tx.send(Internal::Ended(id, end));
        });
        let _ = self.events.send(TunnelEvent::Up {
            id,
            interface,
            peer,
            addr,
            initiated,
        });
    }

    fn down(&mut self, id: TunnelId, reason: DownReason) {
        let Some(e) = self.tunnels.remove(&id) else {
            return;
        };
        let _ = self.events.send(TunnelEvent::Down {
            id,
            interface: e.up.map(|u| u.interface),
            reason,
        });
    }
}

fn stats(u: &UpState) -> TunnelStats {
    use std::sync::atomic::Ordering::Relaxed;
    let c = &u.counters;
    TunnelStats {
        rx_packets: c.rx_packets.load(Relaxed),
        rx_bytes: c.rx_bytes.load(Relaxed),
        tx_packets: c.tx_packets.load(Relaxed),
        tx_bytes: c.tx_bytes.load(Relaxed),
        tx_send_errors: c.tx_too_large.load(Relaxed),
        handshakes: 1,
        last_handshake: Some(u.since),
        rtt: Some(u.closer.rtt()),
        ..TunnelStats::default()
    }
}
