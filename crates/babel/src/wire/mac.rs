//! RFC 8967 MACs: HMAC-SHA256 and BLAKE2s-128 over the pseudo-header and
//! the packet header and body, carried in MAC TLVs in the packet trailer.

use core::fmt;
use std::net::{IpAddr, SocketAddr};

use blake2::digest::consts::U16;
use blake2::Blake2sMac;
use hmac::{Hmac, Mac as _};
use sha2::Sha256;

use super::{BuildError, Error, Packet, Tlv};

/// Size of the pseudo-header: source address and port, destination address
/// and port, addresses as 16 bytes (IPv4 mapped).
pub const PSEUDO_HEADER_LEN: usize = 36;

/// A MAC algorithm of RFC 8967.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// HMAC-SHA256, 32-byte MACs.
    HmacSha256,
    /// Keyed BLAKE2s with a 16-byte output; keys of at most 32 bytes.
    Blake2s128,
}

impl Algorithm {
    /// Length of the MACs this algorithm produces.
    pub fn mac_len(self) -> usize {
        match self {
            Self::HmacSha256 => 32,
            Self::Blake2s128 => 16,
        }
    }
}

/// An invalid MAC key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The key is empty.
    #[error("empty mac key")]
    Empty,
    /// The key is longer than the algorithm allows (BLAKE2s: 32 bytes).
    #[error("mac key of {len} bytes exceeds {max}")]
    TooLong {
        /// The key length.
        len: usize,
        /// The maximum for the algorithm.
        max: usize,
    },
}

/// A MAC key: an algorithm and a secret.
#[derive(Clone, PartialEq, Eq)]
pub struct Key {
    algorithm: Algorithm,
    secret: Vec<u8>,
}

impl Key {
    /// Builds a key, checking its length against the algorithm.
    pub fn new(algorithm: Algorithm, secret: &[u8]) -> Result<Self, KeyError> {
        if secret.is_empty() {
            return Err(KeyError::Empty);
        }
        if algorithm == Algorithm::Blake2s128 && secret.len() > 32 {
            return Err(KeyError::TooLong {
                len: secret.len(),
                max: 32,
            });
        }
        Ok(Self {
            algorithm,
            secret: secret.to_vec(),
        })
    }

    /// The algorithm.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// Computes the MAC of `pseudo_header || header_and_body` into `out`
    /// and returns its length ([`Algorithm::mac_len`]).
    pub fn compute(
        &self,
        pseudo_header: &[u8; PSEUDO_HEADER_LEN],
        header_and_body: &[u8],
        out: &mut [u8; 32],
    ) -> usize {
        match self.algorithm {
            Algorithm::HmacSha256 => {
                // HMAC accepts keys of any length.
                let mut mac = Hmac::<Sha256>::new_from_slice(&self.secret)
                    .expect("hmac accepts any key length");
                mac.update(pseudo_header);
                mac.update(header_and_body);
                out.copy_from_slice(&mac.finalize().into_bytes());
                32
            }
            Algorithm::Blake2s128 => {
                // Key::new bounds BLAKE2s keys to 1..=32 bytes.
                let mut mac = Blake2sMac::<U16>::new_from_slice(&self.secret)
                    .expect("blake2s key length checked in Key::new");
                mac.update(pseudo_header);
                mac.update(header_and_body);
                out[..16].copy_from_slice(&mac.finalize().into_bytes());
                16
            }
        }
    }

    /// Whether `mac` is this key's MAC of the packet (constant time).
    pub fn verify(
        &self,
        pseudo_header: &[u8; PSEUDO_HEADER_LEN],
        header_and_body: &[u8],
        mac: &[u8],
    ) -> bool {
        match self.algorithm {
            Algorithm::HmacSha256 => {
                let mut m = Hmac::<Sha256>::new_from_slice(&self.secret)
                    .expect("hmac accepts any key length");
                m.update(pseudo_header);
                m.update(header_and_body);
                m.verify_slice(mac).is_ok()
            }
            Algorithm::Blake2s128 => {
                let mut m = Blake2sMac::<U16>::new_from_slice(&self.secret)
                    .expect("blake2s key length checked in Key::new");
                m.update(pseudo_header);
                m.update(header_and_body);
                m.verify_slice(mac).is_ok()
            }
        }
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Key")
            .field("algorithm", &self.algorithm)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// The RFC 8967 pseudo-header for a packet from `src` to `dst`.
pub fn pseudo_header(src: SocketAddr, dst: SocketAddr) -> [u8; PSEUDO_HEADER_LEN] {
    let mut out = [0; PSEUDO_HEADER_LEN];
    let addr16 = |a: IpAddr| match a {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    };
    out[..16].copy_from_slice(&addr16(src.ip()));
    out[16..18].copy_from_slice(&src.port().to_be_bytes());
    out[18..34].copy_from_slice(&addr16(dst.ip()));
    out[34..36].copy_from_slice(&dst.port().to_be_bytes());
    out
}

/// Trailer bytes needed to sign with every key in `keys`.
pub fn trailer_len(keys: &[Key]) -> usize {
    keys.iter().map(|k| 2 + k.algorithm.mac_len()).sum()
}

/// Appends one MAC TLV per key after the packet in `buf[..packet_len]`
/// (header and body, as returned by [`super::PacketBuilder::finish`]) and
/// returns the length of the signed datagram.
pub fn sign(
    buf: &mut [u8],
    packet_len: usize,
    pseudo_header: &[u8; PSEUDO_HEADER_LEN],
    keys: &[Key],
) -> Result<usize, BuildError> {
    if buf.len() < packet_len + trailer_len(keys) {
        return Err(BuildError::Full);
    }
    let (packet, trailer) = buf.split_at_mut(packet_len);
    let mut at = 0;
    for key in keys {
        let mut mac = [0; 32];
        let n = key.compute(pseudo_header, packet, &mut mac);
        trailer[at] = u8::from(super::TlvType::Mac);
        trailer[at + 1] = n as u8;
        trailer[at + 2..at + 2 + n].copy_from_slice(&mac[..n]);
        at += 2 + n;
    }
    Ok(packet_len + at)
}

/// Whether the datagram carries, in its trailer, a MAC TLV that one of
/// `keys` validates. Malformed packets are an error.
///
/// Under `cfg(fuzzing)` every well-formed packet passes, so that fuzzers
/// reach the code behind the check.
#[allow(unexpected_cfgs)]
pub fn verify(
    datagram: &[u8],
    pseudo_header: &[u8; PSEUDO_HEADER_LEN],
    keys: &[Key],
) -> Result<bool, Error> {
    let packet = Packet::new_checked(datagram)?;
    if cfg!(fuzzing) {
        return Ok(true);
    }
    for tlv in packet.trailer_tlvs() {
        if let Tlv::Mac(mac) = tlv? {
            let ok = keys.iter().any(|k| {
                k.algorithm.mac_len() == mac.mac.len()
                    && k.verify(pseudo_header, packet.header_and_body(), mac.mac)
            });
            if ok {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{Hello, PacketBuilder};

    fn hello_packet(buf: &mut [u8], keys: &[Key]) -> usize {
        let mut b = PacketBuilder::new(buf, 256, trailer_len(keys));
        b.push(&Tlv::Hello(Hello {
            unicast: false,
            seqno: 1,
            interval: 400,
            timestamp: None,
        }))
        .unwrap();
        b.finish()
    }

    #[test]
    fn hmac_sha256_known_answer() {
        // RFC 4231 test case 2 key "Jefe"; the message here is the
        // pseudo-header (all zero) followed by the 4-byte header "*\x02\0\0".
        let key = Key::new(Algorithm::HmacSha256, b"Jefe").unwrap();
        let mut out = [0; 32];
        let pseudo = [0; PSEUDO_HEADER_LEN];
        let n = key.compute(&pseudo, &[42, 2, 0, 0], &mut out);
        let mut reference = Hmac::<Sha256>::new_from_slice(b"Jefe").unwrap();
        let mut msg = pseudo.to_vec();
        msg.extend_from_slice(&[42, 2, 0, 0]);
        reference.update(&msg);
        assert_eq!(&out[..n], &reference.finalize().into_bytes()[..]);
    }

    #[test]
    fn sign_then_verify_both_algorithms() {
        let src: SocketAddr = "[fe80::1]:6696".parse().unwrap();
        let dst: SocketAddr = "[ff02::1:6]:6696".parse().unwrap();
        let pseudo = pseudo_header(src, dst);
        let keys = [
            Key::new(Algorithm::HmacSha256, &[7; 32]).unwrap(),
            Key::new(Algorithm::Blake2s128, &[9; 32]).unwrap(),
        ];
        let mut buf = [0u8; 256];
        let n = hello_packet(&mut buf, &keys);
        let total = sign(&mut buf, n, &pseudo, &keys).unwrap();
        assert_eq!(total, n + 34 + 18);
        let datagram = &buf[..total];
        assert_eq!(verify(datagram, &pseudo, &keys[..1]), Ok(true));
        assert_eq!(verify(datagram, &pseudo, &keys[1..]), Ok(true));
        let wrong = Key::new(Algorithm::HmacSha256, &[8; 32]).unwrap();
        assert_eq!(verify(datagram, &pseudo, &[wrong]), Ok(false));
        // A different pseudo-header (another source) fails.
        let other = pseudo_header("[fe80::2]:6696".parse().unwrap(), dst);
        assert_eq!(verify(datagram, &other, &keys), Ok(false));
        // Tampering with the body fails.
        let mut tampered = datagram.to_vec();
        tampered[9] ^= 1;
        assert_eq!(verify(&tampered, &pseudo, &keys), Ok(false));
        // Unsigned packets fail.
        assert_eq!(verify(&buf[..n], &pseudo, &keys), Ok(false));
    }

    #[test]
    fn pseudo_header_layout() {
        let p = pseudo_header(
            "10.0.0.1:6696".parse().unwrap(),
            "[ff02::1:6]:6697".parse().unwrap(),
        );
        assert_eq!(&p[10..16], &[0xff, 0xff, 10, 0, 0, 1]);
        assert_eq!(&p[16..18], &6696u16.to_be_bytes());
        assert_eq!(&p[18..20], &[0xff, 0x02]);
        assert_eq!(&p[34..36], &6697u16.to_be_bytes());
    }

    #[test]
    fn key_validation() {
        assert_eq!(Key::new(Algorithm::HmacSha256, &[]), Err(KeyError::Empty));
        assert_eq!(
            Key::new(Algorithm::Blake2s128, &[0; 33]),
            Err(KeyError::TooLong { len: 33, max: 32 })
        );
        assert!(
            format!("{:?}", Key::new(Algorithm::Blake2s128, &[1]).unwrap()).contains("<redacted>")
        );
    }
}
