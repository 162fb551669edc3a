//! The Babel socket: UDP port 6696 on `::`, the group `ff02::1:6` joined per
//! interface, `IPV6_PKTINFO` to learn on which interface a packet came in
//! (and whether it was multicast) and to send out of a chosen interface with
//! its link-local source.

use std::io::{self, IoSlice, IoSliceMut};
use std::net::{IpAddr, Ipv6Addr, SocketAddr, SocketAddrV6};
use std::os::fd::AsRawFd;

use babel::router::{MULTICAST_GROUP, PORT};
use babel::Destination;
use nix::sys::socket::{
    recvmsg, sendmsg, setsockopt, sockopt, ControlMessage, ControlMessageOwned, MsgFlags,
    SockaddrIn6,
};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::Interest;
use tokio::net::UdpSocket;

/// Receive buffer requested for the socket: a full table dump from a
/// neighbour arrives as a burst of thousands of packets.
const RECEIVE_BUFFER: usize = 4 << 20;

/// Traffic class of our packets: CS6 (network control), as babeld.
const TCLASS_CS6: u32 = 0xc0;

/// A datagram read by [`BabelSocket::recv`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Received {
    /// Its length at the start of the buffer.
    pub len: usize,
    /// The sender's link-local address.
    pub source: Ipv6Addr,
    /// The interface it arrived on.
    pub ifindex: u32,
    /// Sent to the multicast group (not to us alone).
    pub multicast: bool,
}

/// The UDP socket Babel speaks on, shared by all interfaces.
#[derive(Debug)]
pub struct BabelSocket {
    socket: UdpSocket,
}

impl BabelSocket {
    /// Binds `[::]:6696` in the current network namespace.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime with I/O enabled.
    pub fn bind() -> io::Result<Self> {
        Self::bind_port(PORT)
    }

    /// Binds `[::]:port` (tests use another port to run beside a router).
    pub fn bind_port(port: u16) -> io::Result<Self> {
        let socket = Socket::new(Domain::IPV6, Type::DGRAM, Some(Protocol::UDP))?;
        socket.set_only_v6(true)?;
        socket.set_reuse_address(true)?;
        socket.set_multicast_loop_v6(false)?;
        socket.set_multicast_hops_v6(1)?;
        socket.set_tclass_v6(TCLASS_CS6)?;
        socket.set_nonblocking(true)?;
        // Forcing the size needs CAP_NET_ADMIN; without it take what the
        // system allows.
        if setsockopt(&socket, sockopt::RcvBufForce, &RECEIVE_BUFFER).is_err() {
            socket.set_recv_buffer_size(RECEIVE_BUFFER)?;
        }
        setsockopt(&socket, sockopt::Ipv6RecvPacketInfo, &true)?;
        let any = SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), port);
        socket.bind(&any.into())?;
        let socket = UdpSocket::from_std(socket.into())?;
        Ok(Self { socket })
    }

    /// The local port (useful after binding port 0).
    pub fn local_port(&self) -> io::Result<u16> {
        Ok(self.socket.local_addr()?.port())
    }

    /// Joins `ff02::1:6` on interface `ifindex`.
    pub fn join(&self, ifindex: u32) -> io::Result<()> {
        match self.socket.join_multicast_v6(&MULTICAST_GROUP, ifindex) {
            // Already a member (the interface was added twice).
            Err(e) if e.raw_os_error() == Some(libc::EADDRINUSE) => Ok(()),
            r => r,
        }
    }

    /// Leaves `ff02::1:6` on interface `ifindex`.
    pub fn leave(&self, ifindex: u32) -> io::Result<()> {
        self.socket.leave_multicast_v6(&MULTICAST_GROUP, ifindex)
    }

    /// Waits for the next Babel datagram from a link-local address and
    /// copies it into `buf`. Datagrams from other sources are dropped here
    /// (RFC 8966 §4: Babel speaks only between link-local addresses).
    pub async fn recv(&self, buf: &mut [u8]) -> io::Result<Received> {
        loop {
            let received = self
                .socket
                .async_io(Interest::READABLE, || self.try_recv(buf))
                .await?;
            if let Some(r) = received {
                return Ok(r);
            }
        }
    }

    fn try_recv(&self, buf: &mut [u8]) -> io::Result<Option<Received>> {
        let mut iov = [IoSliceMut::new(buf)];
        let mut control = nix::cmsg_space!(libc::in6_pktinfo);
        let message = recvmsg::<SockaddrIn6>(
            self.socket.as_raw_fd(),
            &mut iov,
            Some(&mut control),
            MsgFlags::MSG_DONTWAIT,
        )
        .map_err(io::Error::from)?;
        let Some(from) = message.address else {
            return Ok(None);
        };
        let source = from.ip();
        if !source.is_unicast_link_local() {
            tracing::debug!(%source, "babel packet from a non-link-local address dropped");
            return Ok(None);
        }
        let mut ifindex = from.scope_id();
        let mut multicast = false;
        for c in message.cmsgs().map_err(io::Error::from)? {
            if let ControlMessageOwned::Ipv6PacketInfo(info) = c {
                ifindex = info.ipi6_ifindex;
                multicast = Ipv6Addr::from(info.ipi6_addr.s6_addr).is_multicast();
            }
        }
        Ok(Some(Received {
            len: message.bytes,
            source,
            ifindex,
            multicast,
        }))
    }

    /// Sends `bytes` out of interface `ifindex` to `destination` (the group
    /// or a neighbour's link-local address), with our link-local source
    /// chosen by the kernel.
    pub async fn send(
        &self,
        ifindex: u32,
        destination: Destination,
        bytes: &[u8],
    ) -> io::Result<()> {
        let port = self.socket.local_addr()?.port();
        let address = match destination {
            Destination::Multicast => MULTICAST_GROUP,
            Destination::Unicast(IpAddr::V6(a)) => a,
            Destination::Unicast(IpAddr::V4(a)) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("babel runs over IPv6, cannot send to {a}"),
                ))
            }
        };
        let to = SockaddrIn6::from(SocketAddrV6::new(address, port, 0, ifindex));
        let info = libc::in6_pktinfo {
            ipi6_addr: libc::in6_addr {
                s6_addr: Ipv6Addr::UNSPECIFIED.octets(),
            },
            ipi6_ifindex: ifindex,
        };
        self.socket
            .async_io(Interest::WRITABLE, || {
                sendmsg(
                    self.socket.as_raw_fd(),
                    &[IoSlice::new(bytes)],
                    &[ControlMessage::Ipv6PacketInfo(&info)],
                    MsgFlags::MSG_DONTWAIT,
                    Some(&to),
                )
                .map_err(io::Error::from)
            })
            .await
            .map(drop)
    }
}
