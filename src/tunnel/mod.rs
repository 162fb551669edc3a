//! Tunnels: authenticated, encrypted point-to-point IP links between nodes.
pub mod framing;
pub mod quic;
