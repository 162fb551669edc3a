//! Reachability behind NAT (issue 6): the building blocks the mesh loop
//! drives.
//!
//! - [`upnp`]: UPnP IGD port mapping, a sans-I/O [`upnp::Mapper`] and its
//!   tokio shell [`upnp::start`].

pub mod upnp;
