//! The kernel boundary: links, addresses and routes through rtnetlink.
//!
//! One [`Kernel`] owns a netlink socket (created in the network namespace of
//! the thread that calls [`Kernel::connect`]) and the tokio task that drives
//! it. Requests are built from plain descriptions ([`Route`], addresses,
//! link settings) by the builders in [`route`], [`addr`] and [`link`], one
//! file per kernel object as in rtnetlink.
//!
//! Routes we install carry the protocol number [`RTPROT_RE6ST`], so that
//! `ip route show proto 61` lists them and [`Kernel::flush_routes`] can
//! remove the leftovers of a crashed run. Many route changes are sent
//! without waiting for each acknowledgement through a [`RoutePipeline`].

pub mod addr;
pub mod link;
pub mod pipeline;
pub mod route;

use std::io;

use futures::StreamExt;
use rtnetlink::packet_core::{NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_REQUEST};
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::sys::AsyncSocket;
use tokio::task::JoinHandle;

pub use addr::Address;
pub use link::Link;
pub use pipeline::{acknowledgements, Ack, Completion, RoutePipeline};
pub use route::{Net, Route, RouteKind, RouteOp, RTPROT_RE6ST, TABLE_MAIN};

/// Receive buffer of the netlink socket: room for the acknowledgements of a
/// full pipeline of route requests, so none is dropped.
const RECEIVE_BUFFER: usize = 8 << 20;

/// What can go wrong talking to the kernel.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The netlink socket could not be created or configured.
    #[error("cannot open a netlink socket: {0}")]
    Socket(#[source] io::Error),
    /// The task driving the netlink socket is gone (it failed, or the
    /// runtime is shutting down).
    #[error("the netlink connection is closed")]
    Closed,
    /// The kernel refused a request.
    #[error("{what}: {source}")]
    Refused {
        /// The request, in the words of `ip(8)`.
        what: String,
        /// The error the kernel returned.
        source: io::Error,
    },
    /// No interface has this name.
    #[error("no interface named {0:?}")]
    NoSuchInterface(String),
    /// The interface has no usable IPv6 link-local address.
    #[error("interface {0} has no link-local IPv6 address")]
    NoLinkLocal(u32),
    /// A route or address description is inconsistent (for instance an IPv4
    /// destination with an IPv6 source prefix, or a prefix length larger
    /// than the address).
    #[error("invalid request: {0}")]
    Invalid(&'static str),
}

impl Error {
    /// The errno the kernel answered with, when it refused a request.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Self::Refused { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

/// A netlink connection to the kernel's routing subsystem.
///
/// Dropping it stops the task that drives the socket.
#[derive(Debug)]
pub struct Kernel {
    handle: rtnetlink::Handle,
    task: JoinHandle<()>,
}

impl Kernel {
    /// Opens a netlink socket in the current thread's network namespace and
    /// spawns the task that drives it on the current tokio runtime.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime (the task cannot be spawned).
    pub fn connect() -> Result<Self, Error> {
        let (mut connection, handle, _) = rtnetlink::new_connection().map_err(Error::Socket)?;
        let socket = connection.socket_mut().socket_mut();
        // SO_RCVBUFFORCE needs CAP_NET_ADMIN, which route changes need anyway.
        socket
            .set_rx_buf_sz(RECEIVE_BUFFER)
            .map_err(Error::Socket)?;
        // Errors echo only the request header, not the whole request.
        socket.set_cap_ack(true).map_err(Error::Socket)?;
        let task = tokio::spawn(connection);
        Ok(Self { handle, task })
    }

    /// Sends one request and collects the messages the kernel answers with
    /// (nothing but the acknowledgement for a change, the entries for a
    /// dump). `what` describes the request for error messages.
    pub(crate) async fn request(
        &self,
        message: RouteNetlinkMessage,
        flags: u16,
        what: impl FnOnce() -> String,
    ) -> Result<Vec<RouteNetlinkMessage>, Error> {
        let mut handle = self.handle.clone();
        let response = send(&mut handle, message, flags)?;
        collect(response).await.map_err(|source| Error::Refused {
            what: what(),
            source,
        })
    }
}

impl Drop for Kernel {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Queues `message` on the connection. Requests queued one after the other
/// reach the kernel in that order.
fn send(
    handle: &mut rtnetlink::Handle,
    message: RouteNetlinkMessage,
    flags: u16,
) -> Result<impl futures::Stream<Item = NetlinkMessage<RouteNetlinkMessage>> + use<>, Error> {
    let mut request = NetlinkMessage::from(message);
    request.header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
    handle.request(request).map_err(|_| Error::Closed)
}

/// Reads a response to its end: the payloads, or the kernel's error.
async fn collect(
    response: impl futures::Stream<Item = NetlinkMessage<RouteNetlinkMessage>>,
) -> io::Result<Vec<RouteNetlinkMessage>> {
    let mut response = std::pin::pin!(response);
    let mut out = Vec::new();
    while let Some(message) = response.next().await {
        match message.payload {
            NetlinkPayload::InnerMessage(inner) => out.push(inner),
            NetlinkPayload::Error(e) if e.code.is_some() => return Err(e.to_io()),
            NetlinkPayload::Overrun(_) => {
                return Err(io::Error::other("netlink receive buffer overrun"))
            }
            _ => {}
        }
    }
    Ok(out)
}
