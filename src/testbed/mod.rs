//! Network-namespace topologies shared by `re6st demo` and the integration
//! tests: namespaces, veth links and processes started inside them, all torn
//! down when their handles drop (even when a test panics). [`mesh`] builds a
//! whole network (registry and nodes) on top of them, some hosts possibly
//! behind [`nat`] gateways.

mod inside;
pub mod mesh;
pub mod nat;
mod netns;

pub use netns::{require_root, veth, Netns, NsChild};
