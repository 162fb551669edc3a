//! The UDP transport: one socket (IPv4 and IPv6) for every tunnel, driven
//! by one task that owns the sans-I/O [`Endpoint`], receives in batches
//! (`recvmmsg` + GRO), decrypts in place and writes to the TUN devices in
//! batches (GRO); each tunnel's encrypting task sends through the same
//! socket with `sendmmsg` + GSO.

use std::io;
use std::net::{SocketAddr, SocketAddrV6};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use rand::RngCore;
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use super::datapath::{busy_poll, Transmit, TunnelManager, TxBatch};
use super::endpoint::{Endpoint, Received};
use super::handshake::Credentials;
use super::sys::udp::{self as sys, RecvBatch, MAX_DATAGRAM};
use super::wire::MAX_HANDSHAKE_LEN;
use super::{Command, TunnelEvent, Tunnels, TunnelsConfig};

/// Sends sealed messages as UDP datagrams, with GSO when available.
#[derive(Debug)]
pub struct UdpTransmit {
    socket: Arc<UdpSocket>,
    v6: bool,
    gso: bool,
}

impl UdpTransmit {
    fn map(&self, dst: SocketAddr) -> SocketAddr {
        match dst {
            SocketAddr::V4(a) if self.v6 => {
                SocketAddr::V6(SocketAddrV6::new(a.ip().to_ipv6_mapped(), a.port(), 0, 0))
            }
            other => other,
        }
    }

    async fn send_one(&self, dst: SocketAddr, msg: &[u8]) -> io::Result<()> {
        self.socket.send_to(msg, self.map(dst)).await.map(|_| ())
    }
}

impl Transmit for UdpTransmit {
    async fn send_batch(&self, dst: SocketAddr, batch: &mut TxBatch) -> io::Result<()> {
        let dst = self.map(dst);
        if self.gso {
            batch.compact();
        }
        while !batch.is_empty() {
            let r = self
                .socket
                .async_io(Interest::WRITABLE, || {
                    sys::send_batch(
                        &*self.socket,
                        dst,
                        batch.flat(),
                        batch.offsets(),
                        batch.lens(),
                        self.gso,
                    )
                })
                .await;
            match r {
                Ok(n) => batch.consume(n.max(1)),
                Err(e) => {
                    batch.clear();
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    fn overhead(&self) -> usize {
        8
    }
}

fn bind(addr: SocketAddr) -> io::Result<std::net::UdpSocket> {
    let domain = if addr.is_ipv6() {
        socket2::Domain::IPV6
    } else {
        socket2::Domain::IPV4
    };
    let s = socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
    if addr.is_ipv6() {
        // One socket for both families when bound to the IPv6 wildcard.
        s.set_only_v6(false)?;
    }
    let _ = s.set_recv_buffer_size(4 << 20);
    let _ = s.set_send_buffer_size(4 << 20);
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    Ok(s.into())
}

/// Binds the UDP transport and starts its driver task. The returned handle
/// sends commands; events arrive on the returned channel.
pub async fn start(
    creds: Arc<Credentials>,
    config: TunnelsConfig,
) -> io::Result<(Tunnels, mpsc::UnboundedReceiver<TunnelEvent>)> {
    let std_sock = bind(config.listen)?;
    let gro = sys::enable_gro(&std_sock);
    let gso = sys::probe_gso(&std_sock);
    let socket = Arc::new(UdpSocket::from_std(std_sock)?);
    let local = socket.local_addr()?;
    let transmit = Arc::new(UdpTransmit {
        socket: socket.clone(),
        v6: local.is_ipv6(),
        gso,
    });
    let seed = config.seed.unwrap_or_else(|| rand::rngs::OsRng.next_u64());
    let endpoint = Endpoint::new(creds, config.endpoint, seed);
    let mut tun = config.tun.clone();
    tun.link_local_seed = seed;
    let manager = TunnelManager::new(transmit.clone(), tun);
    let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
    let (ev_tx, ev_rx) = mpsc::unbounded_channel();
    tracing::debug!(%local, gro, gso, "udp transport bound");
    let driver = Driver {
        socket,
        transmit,
        endpoint,
        manager,
        events: ev_tx,
        gro,
    };
    let task = tokio::spawn(driver.run(cmd_rx));
    Ok((Tunnels::new(cmd_tx, local, task), ev_rx))
}

struct Driver {
    socket: Arc<UdpSocket>,
    transmit: Arc<UdpTransmit>,
    endpoint: Endpoint,
    manager: TunnelManager<UdpTransmit>,
    events: mpsc::UnboundedSender<TunnelEvent>,
    gro: bool,
}

impl Driver {
    async fn run(mut self, mut cmds: mpsc::UnboundedReceiver<Command>) {
        let mut batch = RecvBatch::new(
            if self.gro { 16 } else { 64 },
            if self.gro { MAX_DATAGRAM } else { 2048 },
        );
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
                r = self.socket.readable() => {
                    if r.is_err() {
                        return;
                    }
                    if self.receive(&mut batch).await {
                        // Data went to a TUN device: its answer (or the
                        // next packet of the flow) is likely to come soon.
                        let window = self.manager.busy_poll();
                        let sock = &*self.socket;
                        let got = busy_poll(window, || {
                            sock.try_io(Interest::READABLE, || batch.recv(sock))
                        })
                        .await;
                        if let Some(Ok(_)) = got {
                            self.handle(&mut batch).await;
                        }
                    }
                }
                cmd = cmds.recv() => {
                    let Some(cmd) = cmd else { return };
                    self.command(cmd);
                }
                () = sleep => {
                    self.endpoint.handle_timeout(Instant::now());
                }
            }
            self.drain(&mut out).await;
        }
    }

    /// Receives and handles a bounded number of batches (so timers and
    /// commands are not starved under load); whether any data packet was
    /// delivered.
    async fn receive(&mut self, batch: &mut RecvBatch) -> bool {
        let mut data = false;
        for _ in 0..8 {
            match self
                .socket
                .try_io(Interest::READABLE, || batch.recv(&*self.socket))
            {
                Ok(_) => {}
                Err(_) => break,
            }
            data |= self.handle(batch).await;
        }
        data
    }

    /// Handles the datagrams of a received batch: decrypts data into the
    /// TUN devices (written before returning); whether there was any.
    async fn handle(&mut self, batch: &mut RecvBatch) -> bool {
        let mut data = false;
        let now = Instant::now();
        let wall = SystemTime::now();
        for i in 0..batch.len() {
            let Some((src, bytes, seg)) = batch.message(i) else {
                continue;
            };
            for dgram in bytes.chunks_mut(seg.max(1)) {
                if let Received::Packet { id, packet } =
                    self.endpoint.handle_datagram(src, dgram, now, wall)
                {
                    self.manager.deliver(id, packet);
                    data = true;
                }
            }
        }
        self.manager.flush().await;
        data
    }

    fn command(&mut self, cmd: Command) {
        self.manager
            .command(cmd, &mut self.endpoint, Instant::now());
    }

    async fn drain(&mut self, out: &mut [u8]) {
        while let Some((dst, n)) = self.endpoint.poll_transmit(out) {
            let _ = self.transmit.send_one(dst, &out[..n]).await;
        }
        while let Some(ev) = self.endpoint.poll_event() {
            if let Some(e) = self.manager.publish(ev, &mut self.endpoint) {
                let _ = self.events.send(e);
            }
        }
        // Events may have queued transmits (none today), and transmits never
        // queue events: one more pass keeps this robust to future changes.
        while let Some((dst, n)) = self.endpoint.poll_transmit(out) {
            let _ = self.transmit.send_one(dst, &out[..n]).await;
        }
    }
}
