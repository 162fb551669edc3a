//! `re6st node`: the daemon every machine of the network runs.
//!
//! This file is the process around the mesh loop ([`re6st::node::mesh`]):
//! options, logging, start-up ([`re6st::node::startup`]), the control
//! socket, metrics, hooks ([`re6st::node::hooks`]), signals, clean-up and
//! the exit status.
//!
//! - Logs go to standard error, or with `--log FILE` appended to that file
//!   (reopened on `SIGHUP`, for log rotation). `-v` is debug, `-vv` trace;
//!   `RUST_LOG` overrides.
//! - `SIGTERM` or `SIGINT` stops the node cleanly, also during start-up
//!   (for instance while it waits for an unreachable registry).
//! - Exit status: 0 after a clean stop; 2 when the options, the
//!   configuration file, the certificate, key or CA files or the main
//!   interface are wrong (one line on standard error says which); 1 for
//!   failures at run time, including `our certificate was revoked`.
//! - `--metrics ADDR:PORT`: the Prometheus exporter
//!   ([`re6st::node::metrics`]) answers `GET /metrics` there while the
//!   mesh runs.
//! - At exit, after the mesh has closed its tunnels and removed its
//!   routes: the `--daemon` children and a still running `--up` get
//!   `SIGTERM` (then `SIGKILL` after 5 s); our address, the unreachable
//!   route and the control socket are removed, and as a safety net every
//!   route still carrying our protocol number is flushed.

use std::fs::File;
use std::io::{self, IsTerminal as _, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use re6st::kernel::Kernel;
use re6st::node::cache::PeerCache;
use re6st::node::hooks::Hooks;
use re6st::node::mesh::{self, MeshExit, MeshSetup};
use re6st::node::options::{NodeArgs, NodeOptions};
use re6st::node::startup::{self, Backoff, NodeAddresses, Plumbing, Renewal, StartupError};
use re6st::node::{control, metrics};
use re6st::pki::NodeCert;
use re6st::registry::RegistryClient;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::{mpsc, oneshot};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

/// `re6st node ...`
#[derive(clap::Args, Debug)]
pub(crate) struct NodeCmd {
    #[command(flatten)]
    args: Box<NodeArgs>,
}

/// Exit status for wrong options or files.
const EXIT_USAGE: u8 = 2;
/// Exit status for failures at run time.
const EXIT_FAILURE: u8 = 1;
/// Exit status when our own certificate is revoked: restarting cannot help
/// until an operator enrolls the node again (`RestartPreventExitStatus`).
const EXIT_REVOKED: u8 = 3;

/// Room for control requests waiting for the mesh loop.
const CONTROL_QUEUE: usize = 64;

/// Longest sleep before checking the clock again while waiting to renew.
const RENEWAL_CHECK: Duration = Duration::from_secs(3600);
/// First retry delay of a failed renewal.
const RENEWAL_RETRY_MIN: Duration = Duration::from_secs(60);
/// Longest retry delay of a failed renewal.
const RENEWAL_RETRY_MAX: Duration = Duration::from_secs(3600);

/// Runs `re6st node` and returns its exit status. Sets up its own logging
/// (the other subcommands' is not initialised for it).
pub(crate) fn main(cmd: NodeCmd, verbose: u8) -> ExitCode {
    let options = match NodeOptions::resolve(*cmd.args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("re6st node: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let log = match init_logging(options.log.as_deref(), verbose) {
        Ok(log) => log,
        Err(e) => {
            eprintln!("re6st node: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("re6st node: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    let to_file = log.is_some();
    let outcome = runtime.block_on(async {
        if let Some(log) = log {
            tokio::spawn(reopen_on_sighup(log));
        }
        run(options).await
    });
    // Hooks and control tasks are done; do not wait for stray tasks.
    runtime.shutdown_timeout(Duration::from_secs(1));
    match outcome {
        Ok(MeshExit::Stopped) => {
            tracing::info!("stopped");
            ExitCode::SUCCESS
        }
        Ok(MeshExit::Revoked) => fail(EXIT_REVOKED, "our certificate was revoked", to_file),
        Err(Failure::Usage(e)) => fail(EXIT_USAGE, &e.to_string(), to_file),
        Err(Failure::Runtime(e)) => fail(EXIT_FAILURE, &e.to_string(), to_file),
    }
}

/// Prints the error as one line on standard error, and logs it too when
/// the log is a file.
fn fail(code: u8, message: &str, to_file: bool) -> ExitCode {
    if to_file {
        tracing::error!("{message}");
    }
    eprintln!("re6st node: {message}");
    ExitCode::from(code)
}

/// How `run` failed: the operator's input, or at run time. Each error's
/// own message is complete (it names its cause): print it with `{}`, not
/// `{:#}`, which would repeat the sources.
enum Failure {
    Usage(anyhow::Error),
    Runtime(anyhow::Error),
}

impl From<StartupError> for Failure {
    fn from(e: StartupError) -> Self {
        if e.is_usage() {
            Self::Usage(e.into())
        } else {
            Self::Runtime(e.into())
        }
    }
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Self::Runtime(e)
    }
}

/// SIGTERM and SIGINT, installed before anything else so that a signal
/// during start-up stops us cleanly instead of killing us.
struct Signals {
    term: Signal,
    int: Signal,
}

impl Signals {
    fn install() -> io::Result<Self> {
        Ok(Self {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    /// Resolves at the next SIGTERM or SIGINT.
    async fn recv(&mut self) {
        let name = tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        };
        tracing::info!("{name}: stopping");
    }
}

async fn run(options: NodeOptions) -> Result<MeshExit, Failure> {
    let mut signals =
        Signals::install().map_err(|e| anyhow::anyhow!("cannot install signal handlers: {e}"))?;

    let identity =
        startup::load_identity(&options.ca, &options.cert, &options.key, SystemTime::now())?;
    let addrs = NodeAddresses::new(identity.network, &identity.prefix)
        .map_err(|e| Failure::Usage(anyhow::anyhow!("{}: {e}", options.cert.display())))?;
    let registry = RegistryClient::new(&options.registry)
        .map_err(|e| Failure::Usage(anyhow::anyhow!("--registry: {e}")))?
        .with_timeout(startup::REGISTRY_TIMEOUT);
    tracing::info!(
        "node {} (serial {}) in network {}: address {}",
        identity.prefix,
        identity.cert.serial(),
        identity.network,
        addrs.address
    );
    startup::check_not_running(&options.run).await?;
    let cache = startup::open_cache(&options.state)?;

    // The network configuration, and renewal: both may wait for the
    // registry, so a signal ends them.
    let prepared = tokio::select! {
        p = prepare(&registry, identity, &cache) => p?,
        () = signals.recv() => return Ok(MeshExit::Stopped),
    };

    // From here on we change the namespace's kernel state: one node only.
    let _namespace = startup::claim_namespace()?;
    let kernel = Kernel::connect().map_err(|e| anyhow::anyhow!("{e}"))?;
    let leftovers = startup::remove_leftovers(&kernel, addrs.address).await?;
    if !leftovers.is_empty() {
        tracing::warn!(
            "removed leftovers of a previous run: interfaces {:?}, {} routes, our address on {} interfaces",
            leftovers.interfaces,
            leftovers.routes,
            leftovers.addresses.len()
        );
    }
    let plumbing = Plumbing::install(
        &kernel,
        &options.main_interface,
        &addrs,
        options.table,
        prepared.config.ipv4.is_some(),
    )
    .await?;
    tracing::info!(
        "{} on {}, unreachable {}",
        addrs.address,
        options.main_interface,
        addrs.network
    );

    let result = serve(&options, &addrs, prepared, cache, registry, signals).await;

    // Safety net after the mesh cleaned up: nothing of ours stays.
    plumbing.remove(&kernel).await;
    match kernel.flush_routes().await {
        Ok(0) => {}
        Ok(n) => tracing::debug!("flushed {n} routes left at exit"),
        Err(e) => tracing::warn!("cannot flush our routes: {e}"),
    }
    result
}

/// What start-up learned from the registry.
struct Prepared {
    identity: startup::Identity,
    config: re6st::registry::NetworkConfig,
    babel_keys: Option<re6st::registry::BabelKeys>,
}

/// Fetches the configuration and renews the certificate when due.
async fn prepare(
    registry: &RegistryClient,
    mut identity: startup::Identity,
    cache: &PeerCache,
) -> Result<Prepared, Failure> {
    let now = SystemTime::now();
    if startup::renewal_due(identity.cert.not_before(), identity.cert.not_after(), now) {
        tracing::info!(
            "certificate {} is due for renewal",
            identity.cert_path.display()
        );
        match startup::renew(registry, &identity, now).await {
            Ok(Renewal::Renewed(cert)) => {
                tracing::info!(
                    "certificate renewed (serial {}), written to {}",
                    cert.serial(),
                    identity.cert_path.display()
                );
                identity.cert = *cert;
            }
            Ok(Renewal::NotYet) => {
                tracing::info!("the registry does not renew our certificate yet")
            }
            Err(e) if identity.is_expired(now) => {
                return Err(Failure::Runtime(anyhow::anyhow!(
                    "{}: certificate expired, and {e}",
                    identity.cert_path.display()
                )))
            }
            Err(e) => tracing::warn!("{e}; keeping the current certificate for now"),
        }
    }
    let verified = startup::network_config(registry, &identity, cache, Backoff::default(), || {
        rand::random::<f64>()
    })
    .await?;
    let config = verified.config;
    tracing::info!("network configuration version {}", config.version);
    let babel_keys = config
        .open_babel_keys(&identity.key)
        .map_err(|e| anyhow::anyhow!("network configuration: {e}"))?;
    Ok(Prepared {
        identity,
        config,
        babel_keys,
    })
}

/// Control socket, metrics, hooks and the mesh loop, then their shutdown.
///
/// When the certificate comes due for renewal while the node runs, a
/// background task renews it; the mesh is then stopped and started again
/// with the new certificate (tunnels are re-established; our address, the
/// unreachable route and the hooks stay).
async fn serve(
    options: &NodeOptions,
    addrs: &NodeAddresses,
    prepared: Prepared,
    cache: PeerCache,
    registry: RegistryClient,
    mut signals: Signals,
) -> Result<MeshExit, Failure> {
    let Prepared {
        mut identity,
        mut config,
        mut babel_keys,
    } = prepared;
    let env = startup::hook_env(addrs, &options.main_interface);
    let hooks = Hooks::start(options.up.as_deref(), &options.daemons, &env);
    let mut cache = Some(cache);
    let result = loop {
        let metrics_listener = match options.metrics {
            Some(addr) => match tokio::net::TcpListener::bind(addr).await {
                Ok(l) => Some(l),
                Err(e) => break Err(anyhow::anyhow!("--metrics {addr}: {e}").into()),
            },
            None => None,
        };
        let (socket, listener) = match startup::bind_control(&options.run) {
            Ok(bound) => bound,
            Err(e) => break Err(e.into()),
        };
        let (calls_tx, calls) = mpsc::channel(CONTROL_QUEUE);
        let control_task = tokio::spawn(control::serve(listener, calls_tx.clone()));
        let metrics_task = metrics_listener.map(|l| {
            if let Ok(addr) = l.local_addr() {
                tracing::info!("metrics on http://{addr}/metrics");
            }
            tokio::spawn(metrics::serve(l, calls_tx.clone()))
        });
        drop(calls_tx);

        let (renewed_tx, mut renewed_rx) = oneshot::channel();
        let renewal = tokio::spawn(renew_in_background(
            registry.clone(),
            identity.clone(),
            renewed_tx,
        ));
        let mesh_cache = match cache.take() {
            Some(c) => c,
            None => match startup::open_cache(&options.state) {
                Ok(c) => c,
                Err(e) => break Err(e.into()),
            },
        };
        let setup = MeshSetup {
            options: options.clone(),
            cert: identity.cert.clone(),
            key: identity.key.clone(),
            ca: identity.ca_pem.clone(),
            prefix: identity.prefix,
            network: identity.network,
            config: config.clone(),
            babel_keys: babel_keys.clone(),
            cache: mesh_cache,
            registry: registry.clone(),
        };
        let mut renewed = None;
        let shutdown = async {
            tokio::select! {
                () = signals.recv() => {}
                Ok(cert) = &mut renewed_rx => renewed = Some(cert),
            }
        };
        let result = mesh::run(setup, calls, shutdown).await;
        renewal.abort();
        control_task.abort();
        remove_socket(&socket);
        if let Some(task) = metrics_task {
            // It ends once the mesh dropped its end of the calls; the port
            // must be free before a restart binds it again.
            task.abort();
            let _ = task.await;
        }
        match (result, renewed) {
            (Ok(MeshExit::Stopped), Some(cert)) => {
                tracing::info!("restarting the mesh with the renewed certificate");
                identity.cert = cert;
            }
            (result, _) => break result.map_err(|e| Failure::Runtime(e.into())),
        }
        // The configuration may have changed meanwhile.
        let reopened = match startup::open_cache(&options.state) {
            Ok(c) => c,
            Err(e) => break Err(e.into()),
        };
        let fetched = tokio::select! {
            v = startup::network_config(&registry, &identity, &reopened, Backoff::default(), rand::random::<f64>) => v,
            () = signals.recv() => break Ok(MeshExit::Stopped),
        };
        let verified = match fetched {
            Ok(v) => v,
            Err(StartupError::Revoked) => break Ok(MeshExit::Revoked),
            Err(e) => break Err(e.into()),
        };
        match verified.config.open_babel_keys(&identity.key) {
            Ok(keys) => (config, babel_keys) = (verified.config, keys),
            Err(e) => break Err(anyhow::anyhow!("network configuration: {e}").into()),
        }
        cache = Some(reopened);
    };
    hooks.stop().await;
    result
}

/// Sleeps until the certificate is due for renewal, then renews it
/// (retrying with backoff from 1 minute to 1 hour) and sends the new one.
async fn renew_in_background(
    registry: RegistryClient,
    identity: startup::Identity,
    renewed: oneshot::Sender<NodeCert>,
) {
    let cert = &identity.cert;
    let due = startup::renewal_time(cert.not_before(), cert.not_after());
    // Sleep in slices against the wall clock: a suspended machine or a
    // clock change does not delay the renewal by much.
    while let Ok(left) = due.duration_since(SystemTime::now()) {
        tokio::time::sleep(left.min(RENEWAL_CHECK)).await;
    }
    let mut backoff = Backoff::new(RENEWAL_RETRY_MIN, RENEWAL_RETRY_MAX);
    loop {
        let now = SystemTime::now();
        let delay = match startup::renew(&registry, &identity, now).await {
            Ok(Renewal::Renewed(new)) => {
                tracing::info!(
                    "certificate renewed (serial {}), written to {}",
                    new.serial(),
                    identity.cert_path.display()
                );
                let _ = renewed.send(*new);
                return;
            }
            Ok(Renewal::NotYet) => {
                tracing::debug!("the registry does not renew our certificate yet");
                startup::RENEWAL_NOT_YET_RETRY
            }
            Err(e) => {
                let delay = backoff.next_delay(rand::random::<f64>());
                let expired = if identity.is_expired(now) {
                    " (the certificate has expired)"
                } else {
                    ""
                };
                tracing::warn!("{e}{expired}; retrying in {} s", delay.as_secs());
                delay
            }
        };
        tokio::time::sleep(delay).await;
    }
}

fn remove_socket(path: &Path) {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!("cannot remove {}: {e}", path.display()),
    }
}

// ---------------------------------------------------------------------------
// Logging.

/// The log file, reopened on SIGHUP.
struct LogFile {
    path: PathBuf,
    file: Mutex<File>,
}

impl LogFile {
    fn open(path: &Path) -> io::Result<File> {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
    }

    fn reopen(&self) -> io::Result<()> {
        let file = Self::open(&self.path)?;
        *self.file.lock().unwrap_or_else(PoisonError::into_inner) = file;
        Ok(())
    }
}

/// A locked log file, written by one event.
struct LogWriter<'a>(MutexGuard<'a, File>);

impl Write for LogWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

#[derive(Clone)]
struct SharedLog(Arc<LogFile>);

impl<'a> MakeWriter<'a> for SharedLog {
    type Writer = LogWriter<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        LogWriter(self.0.file.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

/// Logs to standard error, or to `file` (returned for reopening).
fn init_logging(file: Option<&Path>, verbose: u8) -> anyhow::Result<Option<Arc<LogFile>>> {
    let default = match verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match file {
        None => {
            builder
                .with_ansi(io::stderr().is_terminal())
                .with_writer(io::stderr)
                .init();
            Ok(None)
        }
        Some(path) => {
            let log = Arc::new(LogFile {
                path: path.to_owned(),
                file: Mutex::new(
                    LogFile::open(path)
                        .map_err(|e| anyhow::anyhow!("--log: {}: {e}", path.display()))?,
                ),
            });
            builder
                .with_ansi(false)
                .with_writer(SharedLog(log.clone()))
                .init();
            Ok(Some(log))
        }
    }
}

/// Reopens the log file on every SIGHUP (after logrotate moved it).
async fn reopen_on_sighup(log: Arc<LogFile>) {
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot handle SIGHUP: the log file will not be reopened");
        return;
    };
    while hup.recv().await.is_some() {
        match log.reopen() {
            Ok(()) => tracing::info!("SIGHUP: log file reopened"),
            Err(e) => tracing::warn!("SIGHUP: cannot reopen {}: {e}", log.path.display()),
        }
    }
}
