//! re6st: a resilient, scalable IPv6 mesh VPN.
//!
//! One process per machine. The layers, from the bottom up:
//!
//! - [`pki`]: the network's certificate authority, node certificates whose
//!   subject CN is the node's IPv6 prefix, CSRs, verification and revocation.
//! - [`registry`]: the HTTP service that allocates prefixes, issues and
//!   revokes certificates and publishes the signed network configuration,
//!   with its SQLite store and a typed client.
//! - [`node`]: the mesh manager's building blocks: the tunnel policy, the
//!   authenticated peer protocol and the SQLite peer cache.
//! - [`kernel`]: links, addresses and routes through netlink.
//! - [`routing`]: the Babel router's sockets, event loop and kernel routes.
//! - [`tunnel`]: encrypted point-to-point links (Noise handshakes bound to
//!   certificates), one TUN interface per tunnel, and the fast data path.
//! - [`testbed`]: network-namespace topologies for `re6st demo` and tests.
//! - [`sim`]: thousands of nodes (real router, real policy) on a virtual
//!   clock, for `re6st simulate`.
//!
//! Protocol logic lives in sans-I/O state machines (the `babel` crate, the
//! tunnel sessions); the modules here are the I/O shells around them.

pub mod kernel;
pub mod node;
pub mod pki;
pub mod registry;
pub mod routing;
pub mod sim;
pub mod testbed;
pub mod tunnel;
