//! Handshake flood protection, as WireGuard does it: every `Init` carries
//! `mac1`, keyed by the network (so only members' messages cost us a Noise
//! operation), and `mac2`, keyed by a cookie that only the responder can
//! compute from the initiator's address. Under load the responder answers an
//! `Init` without a valid `mac2` by a stateless `CookieReply`, and limits
//! the handshake rate of each source address.
//!
//! Sans-I/O: time is an argument, randomness comes from the caller's RNG.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use rand::RngCore;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305};
use ring::{digest, hmac};

use super::wire::{
    HandshakeRepr, Packet, COOKIE_REPLY_LEN, INIT_MAC1_OFFSET, INIT_MAC2_OFFSET, MAC_LEN,
};

/// How long a cookie secret (responder) or a received cookie (initiator)
/// stays valid.
pub const COOKIE_LIFETIME: Duration = Duration::from_secs(120);

/// The network-wide keys derived from the network identity (the CA
/// certificate): the mac1 key and the key that seals cookie replies.
#[derive(Debug, Clone)]
pub struct MacKeys {
    mac1: hmac::Key,
    seal: [u8; 32],
}

fn derive(label: &[u8], network_id: &[u8]) -> [u8; 32] {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(label);
    ctx.update(network_id);
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

fn mac(key: &hmac::Key, msg: &[u8]) -> [u8; MAC_LEN] {
    let tag = hmac::sign(key, msg);
    let mut out = [0u8; MAC_LEN];
    out.copy_from_slice(&tag.as_ref()[..MAC_LEN]);
    out
}

/// Compares two MACs in time independent of where they differ.
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn seal_key(k: &[u8; 32]) -> LessSafeKey {
    // CHACHA20_POLY1305 takes exactly 32 bytes, which the array type guarantees.
    LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, k).expect("32-byte key"))
}

impl MacKeys {
    /// Derives the keys of the network identified by `network_id`.
    pub fn new(network_id: &[u8]) -> Self {
        Self {
            mac1: hmac::Key::new(hmac::HMAC_SHA256, &derive(b"re6st mac1", network_id)),
            seal: derive(b"re6st cookie", network_id),
        }
    }

    /// Fills in mac1 and (when a fresh cookie is known) mac2 of an emitted
    /// `Init` message (`msg` is exactly [`super::wire::INIT_LEN`] bytes).
    ///
    /// # Panics
    ///
    /// When `msg` is shorter than an `Init` message.
    pub fn stamp_init(&self, msg: &mut [u8], cookie: Option<&[u8; MAC_LEN]>) {
        let m1 = mac(&self.mac1, &msg[..INIT_MAC1_OFFSET]);
        msg[INIT_MAC1_OFFSET..INIT_MAC2_OFFSET].copy_from_slice(&m1);
        let m2 = cookie.map_or([0; MAC_LEN], |c| {
            mac(
                &hmac::Key::new(hmac::HMAC_SHA256, c),
                &msg[..INIT_MAC2_OFFSET],
            )
        });
        msg[INIT_MAC2_OFFSET..INIT_MAC2_OFFSET + MAC_LEN].copy_from_slice(&m2);
    }

    /// Opens a cookie reply to an `Init` whose mac1 was `sent_mac1`.
    pub fn open_cookie(
        &self,
        nonce: &[u8; 12],
        sealed: &[u8; 32],
        sent_mac1: &[u8; MAC_LEN],
    ) -> Option<[u8; MAC_LEN]> {
        let mut buf = *sealed;
        let plain = seal_key(&self.seal)
            .open_in_place(
                Nonce::assume_unique_for_key(*nonce),
                Aad::from(sent_mac1),
                &mut buf,
            )
            .ok()?;
        let mut c = [0u8; MAC_LEN];
        c.copy_from_slice(plain);
        Some(c)
    }
}

/// Limits and thresholds of the responder's protection.
#[derive(Clone, Copy, Debug)]
pub struct CookieConfig {
    /// More `Init` messages than this per second means "under load".
    pub load_threshold: u32,
    /// Handshakes per second accepted from one source address.
    pub per_source_rate: u32,
    /// Burst allowed above that rate.
    pub per_source_burst: u32,
}

impl Default for CookieConfig {
    fn default() -> Self {
        Self {
            load_threshold: 64,
            per_source_rate: 10,
            per_source_burst: 20,
        }
    }
}

/// What to do with an `Init` message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Process it.
    Accept,
    /// Send the `CookieReply` now in the caller's buffer (this many bytes).
    Challenge(usize),
    /// Drop it for this reason.
    Drop(InitDrop),
}

/// Why an `Init` was dropped before any Noise work.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InitDrop {
    /// mac1 is wrong: not from a member of this network.
    #[error("bad mac1")]
    BadMac1,
    /// The source exceeded its handshake rate.
    #[error("rate limited")]
    RateLimited,
}

#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// The responder's side: verifies macs, tracks load, issues cookies.
#[derive(Debug)]
pub struct CookieChecker {
    keys: MacKeys,
    config: CookieConfig,
    secret: [u8; 32],
    secret_born: Option<Instant>,
    window_start: Option<Instant>,
    window_count: u32,
    buckets: HashMap<IpAddr, Bucket>,
}

impl CookieChecker {
    /// A checker for the network keys `keys`.
    pub fn new(keys: MacKeys, config: CookieConfig) -> Self {
        Self {
            keys,
            config,
            secret: [0; 32],
            secret_born: None,
            window_start: None,
            window_count: 0,
            buckets: HashMap::new(),
        }
    }

    fn cookie(&mut self, src: SocketAddr, now: Instant, rng: &mut dyn RngCore) -> [u8; MAC_LEN] {
        if self
            .secret_born
            .is_none_or(|b| now.saturating_duration_since(b) >= COOKIE_LIFETIME)
        {
            rng.fill_bytes(&mut self.secret);
            self.secret_born = Some(now);
        }
        let key = hmac::Key::new(hmac::HMAC_SHA256, &self.secret);
        let mut ctx = hmac::Context::with_key(&key);
        match src.ip() {
            IpAddr::V4(a) => ctx.update(&a.octets()),
            IpAddr::V6(a) => ctx.update(&a.octets()),
        }
        ctx.update(&src.port().to_be_bytes());
        let mut c = [0u8; MAC_LEN];
        c.copy_from_slice(&ctx.sign().as_ref()[..MAC_LEN]);
        c
    }

    /// Whether more `Init` messages than the threshold arrived in the last
    /// second (counting this one).
    fn count_load(&mut self, now: Instant) -> bool {
        match self.window_start {
            Some(s) if now.saturating_duration_since(s) < Duration::from_secs(1) => {
                self.window_count = self.window_count.saturating_add(1);
            }
            _ => {
                self.window_start = Some(now);
                self.window_count = 1;
            }
        }
        self.window_count > self.config.load_threshold
    }

    fn rate_ok(&mut self, ip: IpAddr, now: Instant) -> bool {
        if self.buckets.len() > 4096 {
            let burst = f64::from(self.config.per_source_burst);
            let rate = f64::from(self.config.per_source_rate);
            self.buckets.retain(|_, b| {
                b.tokens + now.saturating_duration_since(b.at).as_secs_f64() * rate < burst
            });
        }
        let c = self.config;
        let b = self.buckets.entry(ip).or_insert(Bucket {
            tokens: f64::from(c.per_source_burst),
            at: now,
        });
        let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
        b.tokens =
            (b.tokens + elapsed * f64::from(c.per_source_rate)).min(f64::from(c.per_source_burst));
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Checks a parsed `Init` from `src`. On [`Verdict::Challenge`] the
    /// cookie reply is in `reply[..n]`.
    pub fn check_init<T: AsRef<[u8]>>(
        &mut self,
        init: &Packet<T>,
        src: SocketAddr,
        now: Instant,
        rng: &mut dyn RngCore,
        reply: &mut [u8],
    ) -> Verdict {
        let (Some((m1_cov, m1)), Some((m2_cov, m2))) = (init.mac1(), init.mac2()) else {
            return Verdict::Drop(InitDrop::BadMac1);
        };
        if !ct_eq(&mac(&self.keys.mac1, m1_cov), m1) {
            return Verdict::Drop(InitDrop::BadMac1);
        }
        if self.count_load(now) {
            let cookie = self.cookie(src, now, rng);
            let want = mac(&hmac::Key::new(hmac::HMAC_SHA256, &cookie), m2_cov);
            if !ct_eq(&want, m2) {
                let mut nonce = [0u8; 12];
                rng.fill_bytes(&mut nonce);
                let mut sealed = [0u8; 32];
                sealed[..MAC_LEN].copy_from_slice(&cookie);
                let mut aad = [0u8; MAC_LEN];
                aad.copy_from_slice(m1);
                let (body, tag_out) = sealed.split_at_mut(MAC_LEN);
                let Ok(tag) = seal_key(&self.keys.seal).seal_in_place_separate_tag(
                    Nonce::assume_unique_for_key(nonce),
                    Aad::from(&aad),
                    body,
                ) else {
                    return Verdict::Drop(InitDrop::RateLimited);
                };
                tag_out.copy_from_slice(tag.as_ref());
                let repr = HandshakeRepr::CookieReply {
                    receiver: init.sender_index(),
                    nonce,
                    sealed,
                };
                return match repr.emit(reply) {
                    Ok(n) => {
                        debug_assert_eq!(n, COOKIE_REPLY_LEN);
                        Verdict::Challenge(n)
                    }
                    Err(_) => Verdict::Drop(InitDrop::RateLimited),
                };
            }
        }
        if self.rate_ok(src.ip(), now) {
            Verdict::Accept
        } else {
            Verdict::Drop(InitDrop::RateLimited)
        }
    }
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    use super::*;
    use crate::tunnel::wire::INIT_LEN;

    fn init(keys: &MacKeys, sender: u32, cookie: Option<&[u8; 16]>) -> [u8; INIT_LEN] {
        let mut b = [0u8; INIT_LEN];
        HandshakeRepr::Init {
            sender,
            noise: &[9; 32],
            macs: [[0; 16]; 2],
        }
        .emit(&mut b)
        .unwrap();
        keys.stamp_init(&mut b, cookie);
        b
    }

    #[test]
    fn mac1_binds_to_network() {
        let keys = MacKeys::new(b"network A");
        let other = MacKeys::new(b"network B");
        let mut c = CookieChecker::new(keys.clone(), CookieConfig::default());
        let mut rng = StdRng::seed_from_u64(1);
        let src: SocketAddr = "192.0.2.1:1000".parse().unwrap();
        let now = Instant::now();
        let mut reply = [0u8; 64];
        let ok = init(&keys, 1, None);
        let p = Packet::new_checked(&ok[..]).unwrap();
        assert_eq!(
            c.check_init(&p, src, now, &mut rng, &mut reply),
            Verdict::Accept
        );
        let bad = init(&other, 1, None);
        let p = Packet::new_checked(&bad[..]).unwrap();
        assert_eq!(
            c.check_init(&p, src, now, &mut rng, &mut reply),
            Verdict::Drop(InitDrop::BadMac1)
        );
    }

    #[test]
    fn challenge_under_load_then_accept_with_cookie() {
        let keys = MacKeys::new(b"net");
        let config = CookieConfig {
            load_threshold: 3,
            per_source_rate: 1000,
            per_source_burst: 1000,
        };
        let mut c = CookieChecker::new(keys.clone(), config);
        let mut rng = StdRng::seed_from_u64(7);
        let src: SocketAddr = "[2001:db8::1]:5000".parse().unwrap();
        let now = Instant::now();
        let mut reply = [0u8; 64];
        let msg = init(&keys, 42, None);
        let p = Packet::new_checked(&msg[..]).unwrap();
        for _ in 0..3 {
            assert_eq!(
                c.check_init(&p, src, now, &mut rng, &mut reply),
                Verdict::Accept
            );
        }
        let Verdict::Challenge(n) = c.check_init(&p, src, now, &mut rng, &mut reply) else {
            panic!("expected a challenge under load");
        };
        // The initiator opens the cookie and retries with mac2.
        let rp = Packet::new_checked(&reply[..n]).unwrap();
        assert_eq!(rp.receiver_index(), 42);
        let HandshakeRepr::CookieReply { nonce, sealed, .. } = HandshakeRepr::parse(&rp).unwrap()
        else {
            panic!("not a cookie reply");
        };
        let mut sent_mac1 = [0u8; 16];
        sent_mac1.copy_from_slice(&msg[INIT_MAC1_OFFSET..INIT_MAC2_OFFSET]);
        let cookie = keys
            .open_cookie(&nonce, &sealed, &sent_mac1)
            .expect("cookie opens");
        assert!(
            keys.open_cookie(&nonce, &sealed, &[0; 16]).is_none(),
            "bound to mac1"
        );
        let retry = init(&keys, 43, Some(&cookie));
        let p = Packet::new_checked(&retry[..]).unwrap();
        assert_eq!(
            c.check_init(&p, src, now, &mut rng, &mut reply),
            Verdict::Accept
        );
        // The cookie is bound to the source address and port.
        let elsewhere: SocketAddr = "[2001:db8::1]:5001".parse().unwrap();
        assert!(matches!(
            c.check_init(&p, elsewhere, now, &mut rng, &mut reply),
            Verdict::Challenge(_)
        ));
        // After the secret rotates, the old cookie no longer works.
        let later = now + COOKIE_LIFETIME;
        for _ in 0..4 {
            let _ = c.check_init(&p, src, later, &mut rng, &mut reply);
        }
        assert!(matches!(
            c.check_init(&p, src, later, &mut rng, &mut reply),
            Verdict::Challenge(_)
        ));
        // Load ends after a quiet second.
        let quiet = later + Duration::from_secs(2);
        let p = Packet::new_checked(&msg[..]).unwrap();
        assert_eq!(
            c.check_init(&p, src, quiet, &mut rng, &mut reply),
            Verdict::Accept
        );
    }

    #[test]
    fn per_source_rate_limit() {
        let keys = MacKeys::new(b"net");
        let config = CookieConfig {
            load_threshold: 1000,
            per_source_rate: 2,
            per_source_burst: 3,
        };
        let mut c = CookieChecker::new(keys.clone(), config);
        let mut rng = StdRng::seed_from_u64(3);
        let a: SocketAddr = "198.51.100.1:1".parse().unwrap();
        let b: SocketAddr = "198.51.100.2:1".parse().unwrap();
        let now = Instant::now();
        let mut reply = [0u8; 64];
        let msg = init(&keys, 1, None);
        let p = Packet::new_checked(&msg[..]).unwrap();
        for _ in 0..3 {
            assert_eq!(
                c.check_init(&p, a, now, &mut rng, &mut reply),
                Verdict::Accept
            );
        }
        assert_eq!(
            c.check_init(&p, a, now, &mut rng, &mut reply),
            Verdict::Drop(InitDrop::RateLimited)
        );
        assert_eq!(
            c.check_init(&p, b, now, &mut rng, &mut reply),
            Verdict::Accept,
            "other source"
        );
        let t = now + Duration::from_millis(500);
        assert_eq!(
            c.check_init(&p, a, t, &mut rng, &mut reply),
            Verdict::Accept,
            "refilled"
        );
        assert_eq!(
            c.check_init(&p, a, t, &mut rng, &mut reply),
            Verdict::Drop(InitDrop::RateLimited)
        );
    }
}
