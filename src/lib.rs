//! re6st: a resilient, scalable IPv6 mesh VPN.
//!
//! One process per machine. The layers, from the bottom up:
//!
//! - [`pki`]: the network's certificate authority, node certificates whose
//!   subject CN is the node's IPv6 prefix, CSRs, verification and revocation.
//! - [`registry`]: the HTTP service that allocates prefixes, issues and
//!   revokes certificates and publishes the signed network configuration,
//!   with its SQLite store and a typed client.
//! - [`tunnel`]: encrypted point-to-point links (Noise handshakes bound to
//!   certificates), one TUN interface per tunnel, and the fast data path.
//! - [`testbed`]: network-namespace topologies for `re6st demo` and tests.
//!
//! Protocol logic lives in sans-I/O state machines (the `babel` crate, the
//! tunnel sessions); the modules here are the I/O shells around them.

pub mod pki;
pub mod registry;
pub mod testbed;
pub mod tunnel;
