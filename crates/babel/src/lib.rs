//! Babel routing protocol as a sans-I/O library.
//!
//! This crate has no sockets, no clock and no async runtime: callers feed it
//! bytes and the current time, and poll it for packets to send, routes to
//! program and events. The same router runs inside every `re6st node`, as the
//! standalone `re6st babel` daemon, and by the thousand in a simulator.
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
