//! Start-up and shutdown of `re6st node`: everything around the mesh loop.
//!
//! In the order the daemon runs them:
//!
//! 1. [`load_identity`]: read the CA certificate, our certificate and our
//!    key; check that the certificate is signed by the CA, valid now and
//!    made for this key. Each problem is one line naming the file.
//! 2. [`open_cache`]: create the state directory (mode 0700) and open the
//!    peer cache (a corrupt file is moved aside with a warning).
//! 3. [`network_config`]: fetch the signed network configuration from the
//!    registry and verify it with the CA key. While the registry cannot be
//!    reached, a configuration cached by a previous run is used; without
//!    one, the fetch is retried with exponential [`Backoff`] (1 s doubling
//!    to 60 s, jittered) until it succeeds or the node is stopped. A fetched
//!    configuration is stored in the cache. A node whose own certificate is
//!    in the CRL stops there ([`StartupError::Revoked`]).
//! 4. [`renew`] when [`renewal_due`]: past two thirds of the certificate's
//!    lifetime (or expired but still in the registry's grace period), a new
//!    certificate for the same key is asked for with a fresh CSR and written
//!    over the old file atomically (temporary file, `fsync`, `rename`).
//!    A failed renewal of a still valid certificate is a warning. A
//!    registry that only renews closer to the expiry answers with the
//!    current certificate ([`Renewal::NotYet`]): the node asks again daily.
//!    While the node runs, `re6st node` renews in the background when the
//!    time comes and restarts the mesh loop with the new certificate.
//! 5. [`check_not_running`] (before the configuration) and
//!    [`claim_namespace`] (before touching the kernel): refuse to start when
//!    another node answers on the control socket of the same run directory,
//!    or runs in the same network namespace (an abstract Unix socket,
//!    `@re6st-node`, marks it).
//! 6. [`remove_leftovers`]: what a crashed run may have left: interfaces
//!    named `re6st-*` (the prefix is reserved for our tunnels), every route
//!    with protocol [`RTPROT_RE6ST`](crate::kernel::RTPROT_RE6ST) (61), and
//!    our address on any interface.
//! 7. [`Plumbing::install`]: `<subnet>::1/128` on the main interface
//!    (`lo` by default), an `unreachable` route for the whole network
//!    prefix in the routing table of the node (so that packets to unknown
//!    nodes of the network are refused instead of leaking to the default
//!    route), and IPv6 forwarding switched on (a node routes for others;
//!    IPv4 forwarding too when the configuration enables the IPv4
//!    payload). [`Plumbing::remove`] undoes all three at exit (forwarding
//!    is put back only if we switched it on).
//!
//! The sans-I/O parts (when to renew, the backoff schedule, which
//! interfaces are leftovers, the node's addresses) are plain functions
//! tested below; the rest are thin I/O functions the command calls.

use std::io::{self, Write as _};
use std::net::{IpAddr, Ipv6Addr};
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use ed25519_dalek::{SigningKey, VerifyingKey};
use rtnetlink::packet_core::{NLM_F_CREATE, NLM_F_REPLACE};
use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags, AddressHeaderFlags};
use rtnetlink::packet_route::link::LinkMessage;
use rtnetlink::packet_route::RouteNetlinkMessage;

use super::cache::{CacheError, PeerCache};
use super::control;
use crate::kernel::{self, Kernel, Net, Route, RouteKind, RouteOp};
use crate::pki::{self, Csr, Network, NodeCert, NodePrefix, Verifier, VerifyError};
use crate::registry::{ClientError, NetworkConfig, NodeAuth, RegistryClient, SignedConfig};

/// Name prefix of our tunnel interfaces; any interface named so at start
/// is a leftover of a crashed run.
pub const INTERFACE_PREFIX: &str = "re6st-";

/// First delay of the configuration fetch retries.
pub const BACKOFF_MIN: Duration = Duration::from_secs(1);
/// Longest delay of the configuration fetch retries.
pub const BACKOFF_MAX: Duration = Duration::from_secs(60);

/// Time limit of one registry request during start-up.
pub const REGISTRY_TIMEOUT: Duration = Duration::from_secs(15);

/// The kernel setting switched on so that the node forwards packets.
pub const FORWARDING_SYSCTL: &str = "/proc/sys/net/ipv6/conf/all/forwarding";

/// The same for IPv4, switched on when the network carries IPv4.
pub const IPV4_FORWARDING_SYSCTL: &str = "/proc/sys/net/ipv4/ip_forward";

/// Why the node cannot start (or stopped during start-up). Every message is
/// one line saying what is wrong and where.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// A certificate or key file is missing, unreadable or malformed.
    #[error("{path}: {message}")]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// Our certificate is not a valid node certificate of this CA now.
    #[error("{path}: certificate rejected: {reason}")]
    Rejected {
        /// The certificate file.
        path: PathBuf,
        /// Why.
        reason: VerifyError,
    },
    /// The key file does not hold the key of the certificate.
    #[error("{key} is not the private key of the certificate {cert}")]
    KeyMismatch {
        /// The key file.
        key: PathBuf,
        /// The certificate file.
        cert: PathBuf,
    },
    /// A directory could not be created.
    #[error("cannot create directory {path}: {source}")]
    Dir {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The peer cache could not be opened.
    #[error(transparent)]
    Cache(#[from] CacheError),
    /// The registry refused or could not be reached, and no cached
    /// configuration can stand in.
    #[error("network configuration: {0}")]
    Registry(ClientError),
    /// The configuration the registry sent is not valid.
    #[error("network configuration from {registry}: {message}")]
    Config {
        /// The registry URL.
        registry: String,
        /// What is wrong.
        message: String,
    },
    /// Our certificate is in the network's revocation list.
    #[error("our certificate was revoked")]
    Revoked,
    /// The certificate must be renewed (it expired) and renewal failed.
    #[error("certificate renewal: {0}")]
    Renew(String),
    /// A file could not be written.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The kernel refused a change.
    #[error("{0}")]
    Kernel(#[from] kernel::Error),
    /// The main interface does not exist.
    #[error("main interface {0:?} does not exist (-I/--main-interface)")]
    NoMainInterface(String),
    /// A kernel setting could not be read or written.
    #[error("{path}: {source}")]
    Sysctl {
        /// The `/proc/sys` file.
        path: &'static str,
        /// Why.
        source: io::Error,
    },
    /// Another node already serves the control socket of this run
    /// directory.
    #[error("another re6st node is running: {0} answers (use another --run directory)")]
    AlreadyRunning(PathBuf),
    /// Another node runs in this network namespace.
    #[error("another re6st node is running in this network namespace")]
    NamespaceTaken,
    /// The control socket could not be created.
    #[error("control socket {path}: {source}")]
    Control {
        /// The socket path.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
}

impl StartupError {
    /// Whether the error is the operator's files (exit status 2) rather
    /// than a failure at run time (exit status 1).
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            Self::File { .. }
                | Self::Rejected { .. }
                | Self::KeyMismatch { .. }
                | Self::NoMainInterface(_)
        )
    }
}

// ---------------------------------------------------------------------------
// Sans-I/O decisions.

/// When a certificate valid from `not_before` to `not_after` should be
/// renewed: two thirds into its lifetime.
pub fn renewal_time(not_before: SystemTime, not_after: SystemTime) -> SystemTime {
    let life = not_after
        .duration_since(not_before)
        .unwrap_or(Duration::ZERO);
    not_before + life * 2 / 3
}

/// Whether a certificate valid from `not_before` to `not_after` is due for
/// renewal at `now` (past two thirds of its lifetime, or expired).
pub fn renewal_due(not_before: SystemTime, not_after: SystemTime, now: SystemTime) -> bool {
    now >= renewal_time(not_before, not_after)
}

/// Exponential backoff: each delay doubles, from `min` up to `max`, and is
/// drawn in the upper half of the current step so that many nodes
/// restarting together do not hammer the registry in step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    step: Duration,
}

impl Backoff {
    /// A schedule starting at `min` and capped at `max`.
    pub fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max: max.max(min),
            step: min,
        }
    }

    /// The next delay; `jitter` in `[0, 1]` picks it in
    /// `[step / 2, step]` (values outside are clamped).
    pub fn next_delay(&mut self, jitter: f64) -> Duration {
        let step = self.step;
        self.step = (self.step * 2).min(self.max);
        let jitter = if jitter.is_nan() {
            0.0
        } else {
            jitter.clamp(0.0, 1.0)
        };
        step / 2 + (step / 2).mul_f64(jitter)
    }

    /// Starts again from the shortest delay (after a success).
    pub fn reset(&mut self) {
        self.step = self.min;
    }
}

impl Default for Backoff {
    /// [`BACKOFF_MIN`] to [`BACKOFF_MAX`].
    fn default() -> Self {
        Self::new(BACKOFF_MIN, BACKOFF_MAX)
    }
}

/// Whether an interface of this name is one of our tunnels (and so, at
/// start, a leftover of a crashed run).
pub fn is_leftover_interface(name: &str) -> bool {
    name.strip_prefix(INTERFACE_PREFIX)
        .is_some_and(|rest| !rest.is_empty())
}

/// The addresses a node derives from its prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodeAddresses {
    /// The network prefix.
    pub network: Net,
    /// Our subnet (network prefix + our prefix bits).
    pub subnet: Net,
    /// Our own address: the subnet with interface id `::1`.
    pub address: Ipv6Addr,
}

impl NodeAddresses {
    /// The addresses of node `prefix` in `network`.
    pub fn new(network: Network, prefix: &NodePrefix) -> Result<Self, pki::PkiError> {
        let (subnet, len) = network.subnet(prefix)?;
        let address = network.node_address(prefix)?;
        let net = |a: Ipv6Addr, l| {
            // Both come from a valid Network/subnet: host bits are zero and
            // lengths are at most 128.
            Net::new(IpAddr::V6(a), l).map_err(|e| pki::PkiError::Prefix(e.to_string()))
        };
        Ok(Self {
            network: net(network.addr(), network.len())?,
            subnet: net(subnet, len)?,
            address,
        })
    }
}

/// The environment of `--up` and `--daemon` commands.
pub fn hook_env(addrs: &NodeAddresses, main_interface: &str) -> Vec<(String, String)> {
    vec![
        ("re6stnet_ip".into(), addrs.address.to_string()),
        ("re6stnet_iface".into(), main_interface.to_owned()),
        ("re6stnet_subnet".into(), addrs.subnet.to_string()),
        ("re6stnet_network".into(), addrs.network.to_string()),
    ]
}

// ---------------------------------------------------------------------------
// Credentials.

/// Our credentials, loaded and checked.
#[derive(Clone, Debug)]
pub struct Identity {
    /// The CA certificate as read (PEM).
    pub ca_pem: String,
    /// A verifier for the CA (no serial revoked yet).
    pub verifier: Verifier,
    /// The CA's public key (signs the network configuration).
    pub ca_key: VerifyingKey,
    /// The network encoded in the CA certificate.
    pub network: Network,
    /// Our certificate.
    pub cert: NodeCert,
    /// Our private key.
    pub key: SigningKey,
    /// Our prefix (the certificate's CN).
    pub prefix: NodePrefix,
    /// Where the certificate was read from (renewal writes it back there).
    pub cert_path: PathBuf,
}

impl Identity {
    /// Our credentials for authenticated registry calls.
    pub fn auth(&self) -> NodeAuth {
        NodeAuth {
            key: self.key.clone(),
            serial: self.cert.serial(),
        }
    }

    /// Whether the certificate has expired at `now`.
    pub fn is_expired(&self, now: SystemTime) -> bool {
        now > self.cert.not_after()
    }
}

/// Reads and checks the CA certificate, our certificate and our key at
/// `now`. An expired certificate is accepted here (renewal may still save
/// it; see [`Identity::is_expired`]); any other problem is an error naming
/// the file.
pub fn load_identity(
    ca: &Path,
    cert: &Path,
    key: &Path,
    now: SystemTime,
) -> Result<Identity, StartupError> {
    let file_err = |path: &Path, message: String| StartupError::File {
        path: path.to_owned(),
        message,
    };
    let read =
        |path: &Path| std::fs::read_to_string(path).map_err(|e| file_err(path, e.to_string()));

    let ca_pem = read(ca)?;
    let verifier = Verifier::new(&ca_pem)
        .map_err(|e| file_err(ca, format!("not a re6st CA certificate: {e}")))?;
    let (ca_key, ca_end) = ca_key_and_end(&ca_pem).map_err(|e| file_err(ca, e))?;
    let cert_pem = read(cert)?;
    let node_cert = NodeCert::from_pem(&cert_pem)
        .map_err(|e| file_err(cert, format!("not a certificate: {e}")))?;
    // `pki::load_key` names the file in its own message.
    let signing_key = pki::load_key(key).map_err(|e| match e {
        pki::PkiError::Io { path, source } => file_err(&path, source.to_string()),
        other => StartupError::File {
            path: key.to_owned(),
            message: strip_path(&other.to_string(), key),
        },
    })?;
    let prefix = match verifier.verify(&node_cert, now) {
        Ok(prefix) => prefix,
        Err(VerifyError::Expired) if now <= ca_end => node_cert
            .prefix()
            .map_err(|e| file_err(cert, e.to_string()))?,
        Err(reason) => {
            return Err(StartupError::Rejected {
                path: cert.to_owned(),
                reason,
            })
        }
    };
    let public = node_cert
        .public_key()
        .map_err(|e| file_err(cert, e.to_string()))?;
    if public != signing_key.verifying_key() {
        return Err(StartupError::KeyMismatch {
            key: key.to_owned(),
            cert: cert.to_owned(),
        });
    }
    Ok(Identity {
        network: verifier.network(),
        ca_pem,
        verifier,
        ca_key,
        cert: node_cert,
        key: signing_key,
        prefix,
        cert_path: cert.to_owned(),
    })
}

/// `pki::load_key` puts the path in its message; avoid saying it twice.
fn strip_path(message: &str, path: &Path) -> String {
    let shown = format!("{}: ", path.display());
    message.replacen(&shown, "", 1)
}

/// The Ed25519 key and the end of validity of a CA certificate (PEM).
fn ca_key_and_end(pem: &str) -> Result<(VerifyingKey, SystemTime), String> {
    use der::{Decode as _, Encode as _};
    use ed25519_dalek::pkcs8::DecodePublicKey as _;
    let (_, der) = der::pem::decode_vec(pem.trim().as_bytes()).map_err(|e| e.to_string())?;
    let cert = x509_cert::Certificate::from_der(&der).map_err(|e| e.to_string())?;
    let tbs = &cert.tbs_certificate;
    let spki = tbs
        .subject_public_key_info
        .to_der()
        .map_err(|e| e.to_string())?;
    let key = VerifyingKey::from_public_key_der(&spki)
        .map_err(|e| format!("the CA key is not Ed25519: {e}"))?;
    Ok((key, tbs.validity.not_after.to_system_time()))
}

// ---------------------------------------------------------------------------
// State directory and peer cache.

/// Creates `dir` (and its parents) with mode 0700 if missing.
pub fn create_dir(dir: &Path, mode: u32) -> Result<(), StartupError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(dir)
        .map_err(|source| StartupError::Dir {
            path: dir.to_owned(),
            source,
        })
}

/// Creates the state directory and opens the peer cache in it (a corrupt
/// cache is moved aside with a warning by [`PeerCache::open`]).
pub fn open_cache(state: &Path) -> Result<PeerCache, StartupError> {
    create_dir(state, 0o700)?;
    let (cache, _moved_aside) = PeerCache::open(state)?;
    Ok(cache)
}

// ---------------------------------------------------------------------------
// Network configuration.

/// A verified network configuration and the signed document it came from.
#[derive(Clone, Debug)]
pub struct VerifiedConfig {
    /// The configuration.
    pub config: NetworkConfig,
    /// As signed by the CA (what the cache stores).
    pub signed: SignedConfig,
}

/// Checks a signed configuration: CA signature and network.
pub fn verify_config(signed: SignedConfig, identity: &Identity) -> Result<VerifiedConfig, String> {
    let config = signed.verify(&identity.ca_key).map_err(|e| e.to_string())?;
    let network: Network = config
        .network
        .parse()
        .map_err(|e: pki::PkiError| e.to_string())?;
    if network != identity.network {
        return Err(format!(
            "it is for network {network}, but the CA is for {}",
            identity.network
        ));
    }
    Ok(VerifiedConfig { config, signed })
}

/// The configuration stored in the cache by a previous run, if any and if
/// it still verifies (a bad one is ignored with a warning).
pub fn cached_config(cache: &PeerCache, identity: &Identity) -> Option<VerifiedConfig> {
    let (_, body) = match cache.network_config() {
        Ok(Some(stored)) => stored,
        Ok(None) => return None,
        Err(e) => {
            tracing::warn!("{e}");
            return None;
        }
    };
    match SignedConfig::parse(&body)
        .map_err(|e| e.to_string())
        .and_then(|s| verify_config(s, identity))
    {
        Ok(v) => Some(v),
        Err(e) => {
            tracing::warn!("ignoring the cached network configuration: {e}");
            None
        }
    }
}

/// Stores a verified configuration in the cache (as the signed JSON
/// document the registry served).
pub fn store_config(cache: &PeerCache, v: &VerifiedConfig) -> Result<(), StartupError> {
    // Serialising two strings cannot fail.
    let body = serde_json::to_vec(&v.signed).unwrap_or_default();
    cache.set_network_config(v.config.version, &body)?;
    Ok(())
}

/// One attempt to fetch and verify the configuration.
async fn fetch_config(
    registry: &RegistryClient,
    identity: &Identity,
) -> Result<VerifiedConfig, StartupError> {
    let signed = registry
        .config(Some(&identity.auth()))
        .await
        .map_err(StartupError::Registry)?;
    verify_config(signed, identity).map_err(|message| StartupError::Config {
        registry: registry.url().to_owned(),
        message,
    })
}

/// Whether a registry error may go away by itself (retry) rather than
/// being an answer (give up).
fn is_transient(e: &StartupError) -> bool {
    match e {
        StartupError::Registry(ClientError::Api { status, .. }) => *status >= 500,
        StartupError::Registry(
            ClientError::Unreachable(..) | ClientError::Timeout(_) | ClientError::BadResponse(_),
        ) => true,
        _ => false,
    }
}

/// When the registry refuses us, asks it anonymously for the public
/// configuration: if our serial is in its CRL, we were revoked.
async fn revoked_per_registry(registry: &RegistryClient, identity: &Identity) -> bool {
    match registry.config(None).await {
        Ok(signed) => verify_config(signed, identity)
            .is_ok_and(|v| v.config.crl.contains(&identity.cert.serial())),
        Err(_) => false,
    }
}

/// The network configuration to start with: the registry's (stored in the
/// cache), else the cached one, else retried with `backoff` until the
/// registry answers. `jitter` draws numbers in `[0, 1]` for the backoff.
/// Fails with [`StartupError::Revoked`] when our certificate is in the CRL.
/// Stop it by dropping the future (on a signal).
pub async fn network_config(
    registry: &RegistryClient,
    identity: &Identity,
    cache: &PeerCache,
    mut backoff: Backoff,
    mut jitter: impl FnMut() -> f64,
) -> Result<VerifiedConfig, StartupError> {
    let cached = cached_config(cache, identity);
    let chosen = loop {
        match fetch_config(registry, identity).await {
            Ok(fetched) => {
                let newer_cached = cached
                    .as_ref()
                    .filter(|c| c.config.version > fetched.config.version);
                match newer_cached {
                    Some(c) => {
                        tracing::warn!(
                            "the registry serves configuration version {} but version {} is cached; keeping the newer",
                            fetched.config.version,
                            c.config.version
                        );
                        break c.clone();
                    }
                    None => {
                        store_config(cache, &fetched)?;
                        break fetched;
                    }
                }
            }
            Err(e) => {
                if matches!(e, StartupError::Registry(ClientError::Api { .. }))
                    && revoked_per_registry(registry, identity).await
                {
                    return Err(StartupError::Revoked);
                }
                if let Some(c) = &cached {
                    tracing::warn!(
                        "{e}; using the cached network configuration (version {})",
                        c.config.version
                    );
                    break c.clone();
                }
                if !is_transient(&e) {
                    return Err(e);
                }
                let delay = backoff.next_delay(jitter());
                tracing::warn!(
                    "{e}; no cached configuration, retrying in {:.1} s",
                    delay.as_secs_f64()
                );
                tokio::time::sleep(delay).await;
            }
        }
    };
    if chosen.config.crl.contains(&identity.cert.serial()) {
        return Err(StartupError::Revoked);
    }
    Ok(chosen)
}

// ---------------------------------------------------------------------------
// Certificate renewal.

/// How long to wait before asking again when the registry kept our
/// certificate (it renews only close to the expiry; re6st's registry within
/// 30 days of it).
pub const RENEWAL_NOT_YET_RETRY: Duration = Duration::from_secs(86_400);

/// How far in the future a renewed certificate may start (clock skew
/// between the registry and us).
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(300);

/// What the registry answered to a renewal.
#[derive(Clone, Debug)]
pub enum Renewal {
    /// A new certificate, already written over the certificate file.
    Renewed(Box<NodeCert>),
    /// The registry answered with our current certificate: too early for
    /// it. Ask again later ([`RENEWAL_NOT_YET_RETRY`]).
    NotYet,
}

/// Asks the registry for a new certificate for our key (fresh CSR), checks
/// it (signed by the CA, valid, same prefix, our key) and writes it over
/// the certificate file atomically. The caller replaces `identity.cert`
/// with a [`Renewal::Renewed`] certificate.
pub async fn renew(
    registry: &RegistryClient,
    identity: &Identity,
    now: SystemTime,
) -> Result<Renewal, StartupError> {
    let fail = |m: String| StartupError::Renew(m);
    let csr = Csr::generate(&identity.key, &[]).map_err(|e| fail(e.to_string()))?;
    let answer = registry
        .renew(&identity.auth(), &csr.to_pem())
        .await
        .map_err(|e| fail(e.to_string()))?;
    let cert = NodeCert::from_pem(&answer.cert)
        .map_err(|e| fail(format!("the registry sent an invalid certificate: {e}")))?;
    // The registry starts the validity at its own clock: tolerate a small
    // skew (and the time the request took).
    let at = match cert.not_before() {
        start if start > now && start <= now + MAX_CLOCK_SKEW => start,
        _ => now,
    };
    let prefix = identity
        .verifier
        .verify(&cert, at)
        .map_err(|e| fail(format!("the registry sent a bad certificate: {e}")))?;
    if prefix != identity.prefix {
        return Err(fail(format!(
            "the registry changed our prefix from {} to {prefix}",
            identity.prefix
        )));
    }
    if cert.public_key().ok() != Some(identity.key.verifying_key()) {
        return Err(fail("the new certificate is not for our key".into()));
    }
    if cert.der() == identity.cert.der() {
        return Ok(Renewal::NotYet);
    }
    write_atomically(&identity.cert_path, cert.to_pem().as_bytes(), 0o644)?;
    Ok(Renewal::Renewed(Box::new(cert)))
}

/// Replaces `path` with `data` so that readers see the old or the new
/// content, never a mix: a temporary file in the same directory, synced,
/// renamed over `path`, then the directory synced.
pub fn write_atomically(path: &Path, data: &[u8], mode: u32) -> Result<(), StartupError> {
    let err = |source| StartupError::Write {
        path: path.to_owned(),
        source,
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| err(io::Error::other("not a file name")))?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(&dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(err)
}

// ---------------------------------------------------------------------------
// Run directory.

/// Fails when a node already answers on the control socket of `run`; a
/// stale socket file (nobody listening) is fine (`control::bind` replaces
/// it).
pub async fn check_not_running(run: &Path) -> Result<(), StartupError> {
    let path = control::socket_path(run);
    if tokio::net::UnixStream::connect(&path).await.is_ok() {
        return Err(StartupError::AlreadyRunning(path));
    }
    Ok(())
}

/// The name of the abstract Unix socket that marks a running node in a
/// network namespace.
pub const NAMESPACE_LOCK: &str = "re6st-node";

/// Held while a node runs: an abstract Unix socket, which exists once per
/// network namespace and vanishes with the process (even on `kill -9`).
/// It keeps a second node in the same namespace (whatever its run
/// directory) from taking the first one's leftovers for its own.
#[derive(Debug)]
pub struct NamespaceLock {
    _socket: std::os::unix::net::UnixListener,
}

/// Claims this network namespace for our node.
pub fn claim_namespace() -> Result<NamespaceLock, StartupError> {
    use std::os::linux::net::SocketAddrExt as _;
    use std::os::unix::net::{SocketAddr, UnixListener};
    let addr =
        SocketAddr::from_abstract_name(NAMESPACE_LOCK).map_err(|source| StartupError::Control {
            path: PathBuf::from(format!("@{NAMESPACE_LOCK}")),
            source,
        })?;
    match UnixListener::bind_addr(&addr) {
        Ok(socket) => Ok(NamespaceLock { _socket: socket }),
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => Err(StartupError::NamespaceTaken),
        Err(source) => Err(StartupError::Control {
            path: PathBuf::from(format!("@{NAMESPACE_LOCK}")),
            source,
        }),
    }
}

/// Creates the run directory (mode 0755) and binds the control socket.
pub fn bind_control(run: &Path) -> Result<(PathBuf, tokio::net::UnixListener), StartupError> {
    create_dir(run, 0o755)?;
    let path = control::socket_path(run);
    let listener = control::bind(&path).map_err(|source| StartupError::Control {
        path: path.clone(),
        source,
    })?;
    Ok((path, listener))
}

// ---------------------------------------------------------------------------
// Kernel state.

/// What [`remove_leftovers`] found and removed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Leftovers {
    /// Interfaces deleted.
    pub interfaces: Vec<String>,
    /// Routes with our protocol number deleted.
    pub routes: usize,
    /// Interfaces (by index) our address was removed from.
    pub addresses: Vec<u32>,
}

impl Leftovers {
    /// Whether nothing was left.
    pub fn is_empty(&self) -> bool {
        self.interfaces.is_empty() && self.routes == 0 && self.addresses.is_empty()
    }
}

/// Removes what a crashed run may have left: `re6st-*` interfaces, every
/// route with our protocol number and `address` on any interface.
pub async fn remove_leftovers(
    kernel: &Kernel,
    address: Ipv6Addr,
) -> Result<Leftovers, StartupError> {
    let mut found = Leftovers::default();
    for link in kernel.links().await? {
        if is_leftover_interface(&link.name) {
            delete_link(kernel, link.index, &link.name).await?;
            found.interfaces.push(link.name);
        }
    }
    found.routes = kernel.flush_routes().await?;
    for a in kernel.addresses(None).await? {
        if a.addr == IpAddr::V6(address) {
            kernel.remove_address(a.index, a.addr, a.prefix_len).await?;
            found.addresses.push(a.index);
        }
    }
    Ok(found)
}

/// `ip link del` by index; an interface already gone is no error.
async fn delete_link(kernel: &Kernel, index: u32, name: &str) -> Result<(), StartupError> {
    let mut m = LinkMessage::default();
    m.header.index = index;
    match kernel
        .request(RouteNetlinkMessage::DelLink(m), 0, || {
            format!("ip link del {name}")
        })
        .await
    {
        Err(e) if e.errno() == Some(libc::ENODEV) => Ok(()),
        other => other.map(drop).map_err(Into::into),
    }
}

/// What [`Plumbing::install`] set up, to undo it at exit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plumbing {
    /// The main interface's index.
    pub main_index: u32,
    /// Our address on it.
    pub address: Ipv6Addr,
    /// The unreachable route for the network.
    pub unreachable: Route,
    /// The forwarding settings we switched on, with their former values.
    pub forwarding_was: Vec<(&'static str, String)>,
}

/// The unreachable route covering the whole `network` in `table`.
pub fn unreachable_route(network: Net, table: u32) -> Route {
    let mut route = Route::new(network);
    route.kind = RouteKind::Unreachable;
    route.table = table;
    route
}

impl Plumbing {
    /// Adds our address (`/128`) to `main_interface`, the unreachable route
    /// for the network in `table`, and switches IPv6 forwarding on (IPv4
    /// forwarding too if `ipv4`, when the network carries an IPv4 payload).
    pub async fn install(
        kernel: &Kernel,
        main_interface: &str,
        addrs: &NodeAddresses,
        table: u32,
        ipv4: bool,
    ) -> Result<Self, StartupError> {
        let link = match kernel.link_by_name(main_interface).await {
            Ok(link) => link,
            Err(kernel::Error::NoSuchInterface(_)) => {
                return Err(StartupError::NoMainInterface(main_interface.to_owned()))
            }
            Err(e) => return Err(e.into()),
        };
        if !link.up {
            tracing::warn!(
                "main interface {main_interface} is down: our address is unusable until it is up"
            );
        }
        add_address_nodad(kernel, link.index, main_interface, addrs.address).await?;
        let unreachable = unreachable_route(addrs.network, table);
        let mut plumbing = Self {
            main_index: link.index,
            address: addrs.address,
            unreachable,
            forwarding_was: Vec::new(),
        };
        if let Err(e) = kernel.apply(RouteOp::Replace(unreachable)).await {
            plumbing.remove(kernel).await;
            return Err(e.into());
        }
        let sysctls =
            std::iter::once(FORWARDING_SYSCTL).chain(ipv4.then_some(IPV4_FORWARDING_SYSCTL));
        for path in sysctls {
            match switch_on(path) {
                Ok(Some(was)) => plumbing.forwarding_was.push((path, was)),
                Ok(None) => {}
                Err(e) => {
                    plumbing.remove(kernel).await;
                    return Err(e);
                }
            }
        }
        Ok(plumbing)
    }

    /// Removes the address and the route and restores forwarding; failures
    /// are logged (this runs at exit, nothing can be done about them).
    pub async fn remove(&self, kernel: &Kernel) {
        if let Err(e) = kernel.apply(RouteOp::Remove(self.unreachable)).await {
            if e.errno() != Some(libc::ESRCH) {
                tracing::warn!("{e}");
            }
        }
        if let Err(e) = kernel
            .remove_address(self.main_index, IpAddr::V6(self.address), 128)
            .await
        {
            if e.errno() != Some(libc::EADDRNOTAVAIL) && e.errno() != Some(libc::ENODEV) {
                tracing::warn!("{e}");
            }
        }
        for (path, was) in &self.forwarding_was {
            if let Err(e) = std::fs::write(path, was) {
                tracing::warn!("{path}: {e}");
            }
        }
    }
}

/// `ip address add ADDR/128 dev IFACE nodad`: our address is unique by
/// construction, and duplicate address detection would leave it tentative
/// (unusable as a source or to bind to) for a while on interfaces other
/// than `lo`.
async fn add_address_nodad(
    kernel: &Kernel,
    index: u32,
    name: &str,
    address: Ipv6Addr,
) -> Result<(), StartupError> {
    let mut m = kernel::addr::address_message(index, IpAddr::V6(address), 128)?;
    m.header.flags |= AddressHeaderFlags::Nodad;
    m.attributes
        .push(AddressAttribute::Flags(AddressFlags::Nodad));
    kernel
        .request(
            RouteNetlinkMessage::NewAddress(m),
            NLM_F_CREATE | NLM_F_REPLACE,
            || format!("ip address add {address}/128 dev {name} nodad"),
        )
        .await?;
    Ok(())
}

/// Writes `1` to the `/proc/sys` file `path`; returns the previous value
/// when it was something else.
fn switch_on(path: &'static str) -> Result<Option<String>, StartupError> {
    let err = |source| StartupError::Sysctl { path, source };
    let was = std::fs::read_to_string(path).map_err(err)?;
    if was.trim() == "1" {
        return Ok(None);
    }
    std::fs::write(path, "1").map_err(err)?;
    tracing::info!("forwarding switched on ({path})");
    Ok(Some(was.trim().to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);

    #[test]
    fn renewal_is_due_past_two_thirds_of_the_lifetime() {
        let start = SystemTime::UNIX_EPOCH + DAY * 10_000;
        let end = start + DAY * 300;
        let cases = [
            (Duration::ZERO, false),
            (DAY * 100, false),
            (DAY * 199, false),
            (DAY * 200, true),
            (DAY * 250, true),
            (DAY * 301, true),
        ];
        for (elapsed, due) in cases {
            assert_eq!(renewal_due(start, end, start + elapsed), due, "{elapsed:?}");
        }
        assert_eq!(renewal_time(start, end), start + DAY * 200);
        // A certificate whose end precedes its start is due at once.
        assert!(renewal_due(end, start, end));
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_and_jitters_in_the_upper_half() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
        let full: Vec<u64> = (0..9).map(|_| b.next_delay(1.0).as_secs()).collect();
        assert_eq!(full, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        b.reset();
        assert_eq!(b.next_delay(0.0), Duration::from_millis(500));
        assert_eq!(b.next_delay(0.5), Duration::from_millis(1500));
        // Out-of-range jitter is clamped.
        assert_eq!(b.next_delay(7.0), Duration::from_secs(4));
        assert_eq!(b.next_delay(f64::NAN), Duration::from_secs(4));
        assert_eq!(b.next_delay(-1.0), Duration::from_secs(8));
        // max below min: min is the cap.
        let mut b = Backoff::new(Duration::from_secs(5), Duration::from_secs(1));
        assert_eq!(b.next_delay(1.0), Duration::from_secs(5));
        assert_eq!(b.next_delay(1.0), Duration::from_secs(5));
    }

    #[test]
    fn leftover_interfaces_are_ours_only() {
        let cases = [
            ("re6st-0", true),
            ("re6st-17", true),
            ("re6st-q3", true),
            ("re6st-", false),
            ("re6st", false),
            ("lo", false),
            ("eth0", false),
            ("xre6st-1", false),
            ("Re6st-1", false),
        ];
        for (name, leftover) in cases {
            assert_eq!(is_leftover_interface(name), leftover, "{name}");
        }
    }

    #[test]
    fn node_addresses_and_hook_environment() {
        let network: Network = "2001:db8:42::/48".parse().unwrap();
        let prefix: NodePrefix = "5/16".parse().unwrap();
        let a = NodeAddresses::new(network, &prefix).unwrap();
        assert_eq!(a.address, "2001:db8:42:5::1".parse::<Ipv6Addr>().unwrap());
        assert_eq!(a.subnet.to_string(), "2001:db8:42:5::/64");
        assert_eq!(a.network.to_string(), "2001:db8:42::/48");
        let env = hook_env(&a, "lo");
        let want = [
            ("re6stnet_ip", "2001:db8:42:5::1"),
            ("re6stnet_iface", "lo"),
            ("re6stnet_subnet", "2001:db8:42:5::/64"),
            ("re6stnet_network", "2001:db8:42::/48"),
        ];
        let got: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(got, want);
        // A /128 subnet leaves no room for the node address.
        let full: NodePrefix = "5/80".parse().unwrap();
        assert!(NodeAddresses::new(network, &full).is_err());
    }

    #[test]
    fn the_unreachable_route_covers_the_network_with_our_protocol() {
        let network = Net::new("2001:db8:42::".parse().unwrap(), 48).unwrap();
        let route = unreachable_route(network, 254);
        assert_eq!(
            route.to_string(),
            "unreachable 2001:db8:42::/48 metric 0 table 254"
        );
        let m = route.message().unwrap();
        assert_eq!(u8::from(m.header.protocol), kernel::RTPROT_RE6ST);
    }

    #[test]
    fn atomic_write_replaces_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cert.crt");
        std::fs::write(&path, "old").unwrap();
        write_atomically(&path, b"new", 0o644).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "new");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["cert.crt"], "no temporary file is left");
        let missing = dir.path().join("no/such/dir/cert.crt");
        let err = write_atomically(&missing, b"x", 0o644).unwrap_err();
        assert!(err.to_string().starts_with("cannot write"), "{err}");
    }
}
