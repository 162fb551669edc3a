//! Many route changes in flight on one netlink socket.
//!
//! Installing a full table (100 000 routes) one request and one
//! acknowledgement at a time costs a round trip and a wake-up per route.
//! Here requests are serialised back to back into one buffer and sent with
//! one `send` per batch; the kernel processes every message of a datagram in
//! order and queues one acknowledgement per message, which are read many per
//! `recv` and matched to their requests by sequence number. The number of
//! unacknowledged requests is bounded, so acknowledgements never overflow
//! the socket's receive buffer.

use std::collections::VecDeque;
use std::io;
use std::time::Duration;

use rtnetlink::packet_core::{NetlinkMessage, NetlinkPayload};
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::sys::{protocols::NETLINK_ROUTE, AsyncSocket, AsyncSocketExt, TokioSocket};

use super::{Error, RouteOp};

/// A good bound on requests in flight: large enough to amortise syscalls,
/// small enough that the acknowledgements fit the receive buffer.
pub const DEFAULT_IN_FLIGHT: usize = 1024;

/// Send the batch once it holds this many bytes (the kernel refuses a
/// datagram larger than the socket's send buffer).
const BATCH_BYTES: usize = 32 << 10;

/// Receive buffer, forced (needs CAP_NET_ADMIN, as route changes do).
const RECEIVE_BUFFER: usize = 8 << 20;

/// How long to wait for an acknowledgement before giving up on every
/// request still in flight.
const ACK_TIMEOUT: Duration = Duration::from_secs(30);

/// The outcome of one request sent through a [`RoutePipeline`].
#[derive(Debug)]
pub struct Completion {
    /// The change that was requested.
    pub op: RouteOp,
    /// Whether the kernel applied it.
    pub result: Result<(), Error>,
}

/// The kernel's answer to one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ack {
    /// Sequence number of the request.
    pub sequence: u32,
    /// The errno it failed with, or `None` if it was applied.
    pub errno: Option<i32>,
}

/// The acknowledgements (`NLMSG_ERROR` messages) in a datagram read from a
/// netlink socket, in order. Other messages are skipped; a malformed
/// message ends the iteration.
pub fn acknowledgements(datagram: &[u8]) -> impl Iterator<Item = Ack> + '_ {
    let mut offset = 0;
    std::iter::from_fn(move || loop {
        let rest = datagram.get(offset..).filter(|r| !r.is_empty())?;
        let message = NetlinkMessage::<RouteNetlinkMessage>::deserialize(rest).ok()?;
        let length = message.header.length as usize;
        if length == 0 {
            return None;
        }
        // Messages are aligned to 4 bytes.
        offset = offset.saturating_add(length.saturating_add(3) & !3);
        if let NetlinkPayload::Error(e) = message.payload {
            return Some(Ack {
                sequence: message.header.sequence_number,
                errno: e.code.map(|c| c.get().saturating_abs()),
            });
        }
    })
}

/// Sends route changes without waiting for each acknowledgement.
///
/// [`submit`](Self::submit) appends a request to the current batch; requests
/// reach the kernel in submission order and the kernel applies them in that
/// order. [`next`](Self::next) sends what is batched and returns
/// completions as acknowledgements come. Callers bound the number in flight
/// with [`is_full`](Self::is_full).
pub struct RoutePipeline {
    socket: TokioSocket,
    sequence: u32,
    batch: Vec<u8>,
    in_flight: VecDeque<(u32, RouteOp)>,
    ready: VecDeque<Completion>,
    limit: usize,
    receive: Vec<u8>,
}

impl std::fmt::Debug for RoutePipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RoutePipeline")
            .field("in_flight", &self.in_flight.len())
            .field("limit", &self.limit)
            .finish_non_exhaustive()
    }
}

impl RoutePipeline {
    /// Opens a netlink socket in the current thread's network namespace,
    /// allowing at most `limit` requests in flight (at least 1).
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime with I/O enabled.
    pub fn new(limit: usize) -> Result<Self, Error> {
        let mut socket = TokioSocket::new(NETLINK_ROUTE).map_err(Error::Socket)?;
        let raw = socket.socket_mut();
        raw.bind_auto().map_err(Error::Socket)?;
        raw.set_rx_buf_sz(RECEIVE_BUFFER).map_err(Error::Socket)?;
        raw.set_cap_ack(true).map_err(Error::Socket)?;
        Ok(Self {
            socket,
            sequence: 0,
            batch: Vec::with_capacity(BATCH_BYTES * 2),
            in_flight: VecDeque::new(),
            ready: VecDeque::new(),
            limit: limit.max(1),
            receive: Vec::with_capacity(1 << 16),
        })
    }

    /// Requests submitted and not yet completed.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Whether the caller should wait for a [`next`](Self::next) before
    /// submitting more.
    pub fn is_full(&self) -> bool {
        self.in_flight.len() >= self.limit
    }

    /// Appends `op` to the batch (sent when the batch is large, or by the
    /// next [`next`](Self::next)). An invalid route description completes at
    /// once with its error.
    pub fn submit(&mut self, op: RouteOp) {
        let (message, flags) = match op.request() {
            Ok(r) => r,
            Err(e) => {
                self.ready.push_back(Completion { op, result: Err(e) });
                return;
            }
        };
        self.sequence = self.sequence.wrapping_add(1);
        let mut request = NetlinkMessage::from(message);
        request.header.flags =
            rtnetlink::packet_core::NLM_F_REQUEST | rtnetlink::packet_core::NLM_F_ACK | flags;
        request.header.sequence_number = self.sequence;
        request.finalize();
        let start = self.batch.len();
        self.batch.resize(start + request.buffer_len(), 0);
        request.serialize(&mut self.batch[start..]);
        self.in_flight.push_back((self.sequence, op));
        if self.batch.len() >= BATCH_BYTES {
            self.send_batch();
        }
    }

    /// The next completed request, or `None` when none is pending.
    pub async fn next(&mut self) -> Option<Completion> {
        loop {
            if let Some(c) = self.ready.pop_front() {
                return Some(c);
            }
            if self.in_flight.is_empty() {
                return None;
            }
            self.send_batch();
            if let Some(c) = self.ready.pop_front() {
                return Some(c);
            }
            match tokio::time::timeout(ACK_TIMEOUT, self.receive()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    // Some acknowledgements were dropped: the gaps show which
                    // when later ones arrive, and the timeout catches the rest.
                    tracing::warn!("netlink acknowledgements lost (receive buffer full)");
                }
                Ok(Err(e)) => self.fail_all(e),
                Err(_) => self.fail_all(io::ErrorKind::TimedOut.into()),
            }
        }
    }

    /// Submits every op, keeping the pipeline full, and waits for all of
    /// them. Returns the failures.
    pub async fn run(&mut self, ops: impl IntoIterator<Item = RouteOp>) -> Vec<Completion> {
        let mut failures = Vec::new();
        for op in ops {
            while self.is_full() {
                match self.next().await {
                    Some(c) if c.result.is_err() => failures.push(c),
                    Some(_) => {}
                    None => break,
                }
            }
            self.submit(op);
        }
        while let Some(c) = self.next().await {
            if c.result.is_err() {
                failures.push(c);
            }
        }
        failures
    }

    /// Sends the batch. The kernel handles the requests inside the call, so
    /// the socket is never "not ready" for writing; a failure fails the
    /// requests of the batch.
    fn send_batch(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        let result = self.socket.socket_ref().send(&self.batch, 0);
        self.batch.clear();
        if let Err(e) = result {
            self.fail_all(e);
        }
    }

    /// Reads one datagram of acknowledgements and completes their requests.
    async fn receive(&mut self) -> io::Result<()> {
        self.receive.clear();
        self.socket.recv(&mut self.receive).await?;
        let datagram = std::mem::take(&mut self.receive);
        for ack in acknowledgements(&datagram) {
            let result = match ack.errno {
                None => Ok(()),
                Some(errno) => Err(io::Error::from_raw_os_error(errno)),
            };
            self.complete(ack.sequence, result);
        }
        self.receive = datagram;
        Ok(())
    }

    /// Completes request `sequence`. Requests before it whose acknowledgement
    /// never came (dropped by a full receive buffer) fail.
    fn complete(&mut self, sequence: u32, result: io::Result<()>) {
        // Sequence numbers in flight are consecutive.
        let Some(&(first, _)) = self.in_flight.front() else {
            return;
        };
        if sequence.wrapping_sub(first) as usize >= self.in_flight.len() {
            return;
        }
        while let Some((s, op)) = self.in_flight.pop_front() {
            if s == sequence {
                let result = result.map_err(|source| Error::Refused {
                    what: op.describe(),
                    source,
                });
                self.ready.push_back(Completion { op, result });
                return;
            }
            self.ready.push_back(Completion {
                result: Err(Error::Refused {
                    what: op.describe(),
                    source: io::Error::other("acknowledgement lost"),
                }),
                op,
            });
        }
    }

    fn fail_all(&mut self, e: io::Error) {
        tracing::warn!("netlink route requests failed: {e}");
        for (_, op) in self.in_flight.drain(..) {
            self.ready.push_back(Completion {
                result: Err(Error::Refused {
                    what: op.describe(),
                    source: io::Error::new(e.kind(), e.to_string()),
                }),
                op,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An ack (errno 0) for sequence 7 and an error (-ESRCH) for sequence 8
    /// carrying the capped request header, as the kernel sends them, and a
    /// truncated tail.
    #[test]
    fn acknowledgements_in_a_datagram() {
        let mut d = Vec::new();
        for (seq, code) in [(7u32, 0i32), (8, -libc::ESRCH)] {
            d.extend_from_slice(&36u32.to_ne_bytes()); // length
            d.extend_from_slice(&2u16.to_ne_bytes()); // NLMSG_ERROR
            d.extend_from_slice(&0x100u16.to_ne_bytes()); // NLM_F_CAPPED
            d.extend_from_slice(&seq.to_ne_bytes());
            d.extend_from_slice(&0u32.to_ne_bytes()); // port
            d.extend_from_slice(&code.to_ne_bytes());
            // The request's header.
            d.extend_from_slice(&[0x20, 0, 0, 0, 24, 0, 5, 5]);
            d.extend_from_slice(&seq.to_ne_bytes());
            d.extend_from_slice(&0u32.to_ne_bytes());
        }
        let want = [
            Ack {
                sequence: 7,
                errno: None,
            },
            Ack {
                sequence: 8,
                errno: Some(libc::ESRCH),
            },
        ];
        assert_eq!(acknowledgements(&d).collect::<Vec<_>>(), want);
        for cut in 0..d.len() {
            let n = acknowledgements(&d[..cut]).count();
            assert!(
                n <= usize::from(cut >= 36) + usize::from(cut >= 72),
                "{cut}"
            );
        }
        assert_eq!(acknowledgements(&[]).count(), 0);
    }

    /// Found by the fuzzer: an error code of i32::MIN cannot be negated;
    /// it must come out as an errno, not a panic.
    #[test]
    fn error_code_of_i32_min_does_not_panic() {
        let mut d = Vec::new();
        d.extend_from_slice(&36u32.to_ne_bytes()); // length
        d.extend_from_slice(&2u16.to_ne_bytes()); // NLMSG_ERROR
        d.extend_from_slice(&0x100u16.to_ne_bytes()); // NLM_F_CAPPED
        d.extend_from_slice(&9u32.to_ne_bytes()); // sequence
        d.extend_from_slice(&0u32.to_ne_bytes()); // port
        d.extend_from_slice(&i32::MIN.to_ne_bytes()); // error code
        d.extend_from_slice(&[0x20, 0, 0, 0, 24, 0, 5, 5]);
        d.extend_from_slice(&9u32.to_ne_bytes());
        d.extend_from_slice(&0u32.to_ne_bytes());
        let acks: Vec<_> = acknowledgements(&d).collect();
        assert_eq!(
            acks,
            [Ack {
                sequence: 9,
                errno: Some(i32::MAX),
            }]
        );
    }
}
