//! TUN devices for tunnels: one interface per tunnel, up, with an IPv6
//! link-local address and an MTU derived from the transport's overhead,
//! opened with the virtio-net header so the kernel hands us TSO
//! super-packets and accepts GRO-coalesced ones.

use std::io;
use std::net::Ipv6Addr;

use tun_rs::{AsyncDevice, DeviceBuilder};

/// How to create a tunnel's TUN device.
#[derive(Clone, Debug)]
pub struct TunConfig {
    /// Interface name (at most 15 bytes).
    pub name: String,
    /// MTU of the interface.
    pub mtu: u16,
    /// The IPv6 link-local address to set (prefix length 64).
    pub link_local: Ipv6Addr,
    /// Whether to ask for TSO/GRO offloads (virtio-net header).
    pub offload: bool,
    /// Packets the device queues for us to read (`txqueuelen`, the size of
    /// the TUN ring): the kernel drops what does not fit, without slowing
    /// the sender down.
    pub tx_queue_len: u32,
}

/// Creates and brings up the device.
pub fn create(config: &TunConfig) -> io::Result<AsyncDevice> {
    if config.name.len() > 15 || config.name.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("interface name {:?} must have 1 to 15 bytes", config.name),
        ));
    }
    let offload = config.offload;
    DeviceBuilder::new()
        .name(&config.name)
        .mtu(config.mtu)
        .tx_queue_len(config.tx_queue_len)
        .ipv6(config.link_local, 64u8)
        .with(|b| {
            b.offload(offload);
        })
        .enable(true)
        .build_async()
}
