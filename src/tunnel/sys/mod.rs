//! The system edge of the data path, and the only place of the crate
//! allowed to use `unsafe` (each block carries a `// SAFETY:` comment):
//! batched UDP I/O (`recvmmsg`/`sendmmsg`, UDP GSO and GRO) and TUN devices
//! with segmentation offloads (through tun-rs, whose offload support is
//! safe to call).

pub mod tun;
pub mod udp;
