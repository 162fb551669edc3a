//! Batched UDP I/O: `recvmmsg` with UDP GRO (one buffer may hold many
//! datagrams of one size from one source) and `sendmmsg` with UDP GSO (one
//! message carries a run of equal-size datagrams to one destination).
//!
//! Non-blocking: both return `WouldBlock` when the socket is not ready, so
//! the tokio shell drives them with `UdpSocket::try_io`.

use std::io;
use std::mem;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, RawFd};

/// `UDP_SEGMENT` (linux/udp.h): GSO segment size, socket option and cmsg.
const UDP_SEGMENT: libc::c_int = 103;
/// `UDP_GRO` (linux/udp.h): receive coalescing, socket option and cmsg.
const UDP_GRO: libc::c_int = 104;
/// Most segments the kernel accepts in one GSO send.
pub const MAX_GSO_SEGMENTS: usize = 64;
/// Largest UDP payload (and GRO buffer).
pub const MAX_DATAGRAM: usize = 65535;

fn setsockopt_int(
    fd: RawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: `value` lives across the call and its size is passed exactly;
    // the kernel only reads it.
    let r = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&value as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Turns UDP GRO on; false when the kernel does not support it.
pub fn enable_gro(sock: &impl AsRawFd) -> bool {
    setsockopt_int(sock.as_raw_fd(), libc::SOL_UDP, UDP_GRO, 1).is_ok()
}

/// Whether the kernel supports UDP GSO on this socket (probed by setting
/// the socket-level default segment size to 0, which means "off").
pub fn probe_gso(sock: &impl AsRawFd) -> bool {
    setsockopt_int(sock.as_raw_fd(), libc::SOL_UDP, UDP_SEGMENT, 0).is_ok()
}

fn to_sockaddr(addr: &SocketAddr, storage: &mut libc::sockaddr_storage) -> libc::socklen_t {
    match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and aligned for every
            // sockaddr type; we write one sockaddr_in at its start.
            unsafe { std::ptr::write((storage as *mut libc::sockaddr_storage).cast(), sin) };
            size_of::<libc::sockaddr_in>() as libc::socklen_t
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: as above, for sockaddr_in6.
            unsafe { std::ptr::write((storage as *mut libc::sockaddr_storage).cast(), sin6) };
            size_of::<libc::sockaddr_in6>() as libc::socklen_t
        }
    }
}

fn from_sockaddr(storage: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match i32::from(storage.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in, and
            // sockaddr_storage is aligned for it.
            let sin: &libc::sockaddr_in =
                unsafe { &*(storage as *const libc::sockaddr_storage).cast() };
            let ip = Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes());
            Some(SocketAddr::V4(SocketAddrV4::new(
                ip,
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: as above, for sockaddr_in6.
            let sin6: &libc::sockaddr_in6 =
                unsafe { &*(storage as *const libc::sockaddr_storage).cast() };
            let ip = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            // Report v4-mapped sources of a dual-stack socket as IPv4.
            let addr = match ip.to_ipv4_mapped() {
                Some(v4) => SocketAddr::V4(SocketAddrV4::new(v4, u16::from_be(sin6.sin6_port))),
                None => SocketAddr::V6(SocketAddrV6::new(
                    ip,
                    u16::from_be(sin6.sin6_port),
                    sin6.sin6_flowinfo,
                    sin6.sin6_scope_id,
                )),
            };
            Some(addr)
        }
        _ => None,
    }
}

const CMSG_SPACE: usize = 64;

/// Buffers for one `recvmmsg` call, allocated once and reused.
pub struct RecvBatch {
    bufs: Vec<Vec<u8>>,
    lens: Vec<usize>,
    segs: Vec<usize>,
    addrs: Vec<Option<SocketAddr>>,
    names: Vec<libc::sockaddr_storage>,
    cmsgs: Vec<[u8; CMSG_SPACE]>,
    count: usize,
}

impl RecvBatch {
    /// `slots` messages of up to `buf_len` bytes each (use
    /// [`MAX_DATAGRAM`] with GRO).
    pub fn new(slots: usize, buf_len: usize) -> Self {
        Self {
            bufs: vec![vec![0u8; buf_len]; slots],
            lens: vec![0; slots],
            segs: vec![0; slots],
            addrs: vec![None; slots],
            // SAFETY: sockaddr_storage is plain data for which all-zero is valid.
            names: vec![unsafe { mem::zeroed() }; slots],
            cmsgs: vec![[0u8; CMSG_SPACE]; slots],
            count: 0,
        }
    }

    /// How many messages the last receive filled.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether the last receive filled nothing.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Message `i`: its source, its bytes (possibly several coalesced
    /// datagrams) and the size of each datagram in it.
    pub fn message(&mut self, i: usize) -> Option<(SocketAddr, &mut [u8], usize)> {
        if i >= self.count {
            return None;
        }
        let len = self.lens[i];
        let seg = if self.segs[i] == 0 { len } else { self.segs[i] };
        Some((self.addrs[i]?, &mut self.bufs[i][..len], seg))
    }

    /// Receives up to the batch size of messages without blocking.
    pub fn recv(&mut self, sock: &impl AsRawFd) -> io::Result<usize> {
        let n = self.bufs.len();
        let mut iovs: Vec<libc::iovec> = Vec::with_capacity(n);
        for b in &mut self.bufs {
            iovs.push(libc::iovec {
                iov_base: b.as_mut_ptr().cast(),
                iov_len: b.len(),
            });
        }
        // SAFETY: all-zero is a valid mmsghdr (null pointers, zero lengths).
        let mut hdrs: Vec<libc::mmsghdr> = vec![unsafe { mem::zeroed() }; n];
        for i in 0..n {
            let h = &mut hdrs[i].msg_hdr;
            h.msg_name = (&mut self.names[i] as *mut libc::sockaddr_storage).cast();
            h.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_iov = &mut iovs[i];
            h.msg_iovlen = 1;
            h.msg_control = self.cmsgs[i].as_mut_ptr().cast();
            h.msg_controllen = CMSG_SPACE as _;
        }
        // SAFETY: every header points into buffers owned by `self` or the
        // local `iovs`, all alive and unaliased for the duration of the call;
        // the lengths passed are those of the buffers.
        let r = unsafe {
            libc::recvmmsg(
                sock.as_raw_fd(),
                hdrs.as_mut_ptr(),
                n as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if r < 0 {
            self.count = 0;
            return Err(io::Error::last_os_error());
        }
        let r = r as usize;
        for (i, hdr) in hdrs.iter().enumerate().take(r) {
            self.lens[i] = hdr.msg_len as usize;
            self.addrs[i] = from_sockaddr(&self.names[i]);
            self.segs[i] = 0;
            let h = &hdr.msg_hdr;
            // SAFETY: the kernel filled msg_control up to msg_controllen
            // within our buffer; the CMSG_* macros walk only that range.
            unsafe {
                let mut c = libc::CMSG_FIRSTHDR(h);
                while !c.is_null() {
                    if (*c).cmsg_level == libc::SOL_UDP && (*c).cmsg_type == UDP_GRO {
                        let mut v: libc::c_int = 0;
                        std::ptr::copy_nonoverlapping(
                            libc::CMSG_DATA(c),
                            (&mut v as *mut libc::c_int).cast::<u8>(),
                            size_of::<libc::c_int>(),
                        );
                        self.segs[i] = usize::try_from(v).unwrap_or(0);
                    }
                    c = libc::CMSG_NXTHDR(h, c);
                }
            }
        }
        self.count = r;
        Ok(r)
    }
}

/// Sends the datagrams `flat[offsets[i]..offsets[i] + lens[i]]` to `dst`
/// in order, without blocking. With `gso`, runs of consecutive datagrams
/// that are contiguous in `flat`, all of one size but the last (which may
/// be shorter), go as one GSO message. Returns how many datagrams were
/// handed to the kernel (fewer than all on `WouldBlock` after progress).
pub fn send_batch(
    sock: &impl AsRawFd,
    dst: SocketAddr,
    flat: &[u8],
    offsets: &[usize],
    lens: &[usize],
    gso: bool,
) -> io::Result<usize> {
    let count = offsets.len().min(lens.len());
    if count == 0 {
        return Ok(0);
    }
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut name: libc::sockaddr_storage = unsafe { mem::zeroed() };
    let namelen = to_sockaddr(&dst, &mut name);
    // Group datagrams into messages: (first datagram, datagrams, bytes, segment size).
    let mut runs: Vec<(usize, usize, usize, usize)> = Vec::with_capacity(count);
    let mut i = 0;
    while i < count {
        let seg = lens[i];
        let mut j = i + 1;
        let mut bytes = seg;
        if gso {
            while j < count
                && j - i < MAX_GSO_SEGMENTS
                && offsets[j] == offsets[i] + bytes
                && lens[j] <= seg
                && lens[j - 1] == seg
                && bytes + lens[j] <= MAX_DATAGRAM - 100
            {
                bytes += lens[j];
                j += 1;
            }
        }
        runs.push((i, j - i, bytes, seg));
        i = j;
    }
    let mut iovs: Vec<libc::iovec> = runs
        .iter()
        .map(|&(first, _, bytes, _)| libc::iovec {
            // The kernel only reads through this pointer (sendmmsg).
            iov_base: flat[offsets[first]..offsets[first] + bytes].as_ptr() as *mut libc::c_void,
            iov_len: bytes,
        })
        .collect();
    let mut cmsgs: Vec<[u8; CMSG_SPACE]> = vec![[0u8; CMSG_SPACE]; runs.len()];
    // SAFETY: all-zero is a valid mmsghdr.
    let mut hdrs: Vec<libc::mmsghdr> = vec![unsafe { mem::zeroed() }; runs.len()];
    for (k, &(_, n, _, seg)) in runs.iter().enumerate() {
        let h = &mut hdrs[k].msg_hdr;
        h.msg_name = (&mut name as *mut libc::sockaddr_storage).cast();
        h.msg_namelen = namelen;
        h.msg_iov = &mut iovs[k];
        h.msg_iovlen = 1;
        if n > 1 {
            h.msg_control = cmsgs[k].as_mut_ptr().cast();
            // SAFETY: CMSG_SPACE is a pure size computation.
            let space = unsafe { libc::CMSG_SPACE(size_of::<u16>() as u32) } as usize;
            h.msg_controllen = space as _;
            // SAFETY: msg_control points to CMSG_SPACE (64) bytes, more than
            // the space of one u16 cmsg; we write exactly one header and its
            // u16 payload inside it.
            unsafe {
                let c = libc::CMSG_FIRSTHDR(h);
                (*c).cmsg_level = libc::SOL_UDP;
                (*c).cmsg_type = UDP_SEGMENT;
                (*c).cmsg_len = libc::CMSG_LEN(size_of::<u16>() as u32) as _;
                let v = seg as u16;
                std::ptr::copy_nonoverlapping(
                    (&v as *const u16).cast::<u8>(),
                    libc::CMSG_DATA(c),
                    size_of::<u16>(),
                );
            }
        }
    }
    let mut sent_msgs = 0usize;
    while sent_msgs < hdrs.len() {
        // SAFETY: the headers point to `name`, `iovs`, `cmsgs` and `flat`,
        // all alive and unchanged during the call; lengths match buffers.
        let r = unsafe {
            libc::sendmmsg(
                sock.as_raw_fd(),
                hdrs[sent_msgs..].as_mut_ptr(),
                (hdrs.len() - sent_msgs) as libc::c_uint,
                libc::MSG_DONTWAIT,
            )
        };
        if r < 0 {
            let e = io::Error::last_os_error();
            if sent_msgs > 0 && e.kind() == io::ErrorKind::WouldBlock {
                break;
            }
            if sent_msgs > 0 {
                // Skip the message the kernel refused and go on.
                sent_msgs += 1;
                continue;
            }
            return Err(e);
        }
        sent_msgs += r as usize;
    }
    Ok(runs[..sent_msgs.min(runs.len())].iter().map(|r| r.1).sum())
}

#[cfg(test)]
mod tests {
    use std::net::UdpSocket;

    use super::*;

    #[test]
    fn batch_round_trip_on_loopback() {
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").unwrap();
        let gro = enable_gro(&b);
        let gso = probe_gso(&a);
        // Five datagrams of 100 bytes and a last one of 40, contiguous.
        let mut flat = vec![0u8; 540];
        for (i, c) in flat.chunks_mut(100).enumerate() {
            c.fill(i as u8);
        }
        let offsets = [0, 100, 200, 300, 400, 500];
        let lens = [100, 100, 100, 100, 100, 40];
        let dst = b.local_addr().unwrap();
        assert_eq!(send_batch(&a, dst, &flat, &offsets, &lens, gso).unwrap(), 6);
        let mut batch = RecvBatch::new(8, MAX_DATAGRAM);
        let mut got = Vec::new();
        for _ in 0..100 {
            match batch.recv(&b) {
                Ok(n) => {
                    for i in 0..n {
                        let (src, bytes, seg) = batch.message(i).unwrap();
                        assert_eq!(src, a.local_addr().unwrap());
                        for d in bytes.chunks(seg) {
                            got.push(d.to_vec());
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if got.len() == 6 {
                        break;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                Err(e) => panic!("{e}"),
            }
        }
        let _ = gro;
        assert_eq!(got.len(), 6);
        for (i, d) in got.iter().enumerate() {
            assert_eq!(d.len(), lens[i]);
            assert!(d.iter().all(|&x| x == i as u8));
        }
    }

    #[test]
    fn sockaddr_round_trip() {
        for s in ["192.0.2.1:5", "[2001:db8::1]:65535"] {
            let a: SocketAddr = s.parse().unwrap();
            // SAFETY: all-zero is a valid sockaddr_storage.
            let mut st: libc::sockaddr_storage = unsafe { mem::zeroed() };
            to_sockaddr(&a, &mut st);
            assert_eq!(from_sockaddr(&st), Some(a));
        }
    }
}
