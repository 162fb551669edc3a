//! Babel routing protocol as a sans-I/O library.
//!
//! This crate has no sockets, no clock and no async runtime: callers feed it
//! bytes and the current time, and poll it for packets to send, routes to
//! program and events. The same router runs inside every `re6st node`, as the
//! standalone `re6st babel` daemon, and by the thousand in a simulator.
//!
//! The layers, from the bottom up:
//!
//! - [`wire`]: the codec. Zero-copy views and typed TLVs that borrow from
//!   the input, a parse iterator of `Result`s, a packet builder that
//!   aggregates TLVs up to the MTU, RFC 8967 MACs.
//! - [`router`]: the [`Router`] state machine (RFC 8966, RFC 9079, RFC 8967
//!   anti-replay, the RTT extension): commands, `handle_*` inputs, `poll_*`
//!   outputs, getters.
//! - `sim` (feature `sim`): many routers on a virtual clock over links with
//!   latency and loss, used by the convergence tests and benches.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod router;
#[cfg(feature = "sim")]
pub mod sim;
pub mod wire;

pub use router::{
    Destination, Dump, Event, Filter, InterfaceConfig, InterfaceKind, KernelRoute, MacAlgorithm,
    MacConfig, MacKey, RouteChange, Router, RouterConfig, RttConfig, Transmit,
};
pub use wire::{Error as WireError, Prefix};
