//! The I/O shell around the sans-I/O Babel router: the UDP socket
//! ([`sockets`]), the tokio loop that feeds the router and drains its
//! outputs ([`driver`]), and the task that applies its route changes to the
//! kernel ([`install`]). Used by `re6st babel` and by the node.

pub mod driver;
pub mod install;
pub mod sockets;

pub use driver::{Driver, RouterHandle};
pub use install::{InstallConfig, InstallStats};
pub use sockets::{BabelSocket, Received};
