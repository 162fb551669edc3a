//! A whole re6st network in namespaces: the topology `re6st demo` shows and
//! the node integration tests run on.
//!
//! ```text
//!                 internet namespace: bridge br0 (10.42.0.0/24)
//!        ┌──────────────┬──────────────┬─────────── … ───┐
//!   registry host    node host 1    node host 2      node host N
//!   10.42.0.1        10.42.0.2      10.42.0.3        10.42.0.(N+1)
//!   registry :9201   re6st node     re6st node       re6st node
//!   + re6st node
//! ```
//!
//! [`MeshBed::start`] creates the CA (`re6st registry init`), starts
//! `re6st registry serve` in the registry host, enrolls the registry's own
//! node first (the first certificate issued is the registry node's) and then
//! every other host with `re6st conf --anonymous`, and starts
//! `re6st node` in each host, logging to `<dir>/<host>/node.log`. Node 0 is
//! the registry's node; nodes `1..=N` are the node hosts.
//!
//! A host may sit behind a NAT gateway instead ([`MeshOptions::host_kind`],
//! [`HostKind`]): the gateway namespace is on the bridge with an external
//! address 11.42.0.(i+1) (public hosts reach 11.42.0.0/24 on-link), the
//! host is 172.16.i.2 behind it; see [`super::nat`].
//!
//! Every namespace is private to the bed (unique names, addresses only
//! inside them), so beds running at the same time never collide. Processes
//! are held as [`NsChild`]ren and killed by PID; the bed's drop stops the
//! nodes (SIGTERM, then SIGKILL), the registry, and deletes the namespaces,
//! also when a test panics. The working directory (certificates, logs) is
//! removed on a clean drop and kept, with its path printed, after a panic.
//!
//! Helpers cover what the demo and the tests do to a mesh: the all-pairs
//! reachability [`Matrix`] (ping6 between re6st addresses), the
//! [`TunnelGraph`] from every node's status (text and DOT), link cuts
//! ([`LinkCut`], an nftables drop rule), a 10 Hz ping measuring an
//! outage ([`PingProbe`]), killing, stopping and restarting nodes, and
//! stopping the registry.

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

pub use super::nat::HostKind;
use super::nat::{NatConfig, NatGateway, EXT_IF};
use super::{veth, Netns, NsChild};
use crate::node::control::{self, ControlError, Request, Response, Status};
use crate::pki::{NodeCert, Verifier};

/// Port of the registry inside the bed.
pub const REGISTRY_PORT: u16 = 9201;
/// The network prefix of the bed's CA.
pub const NETWORK: &str = "2001:db8:42::/48";

/// Why building or driving a bed failed.
#[derive(Debug, thiserror::Error)]
pub enum BedError {
    /// A command or file operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Why it failed.
        source: io::Error,
    },
    /// A process did not behave as expected (its output says why).
    #[error("{0}")]
    Failed(String),
    /// Something did not happen in time.
    #[error("{what} did not happen within {after:?}")]
    Timeout {
        /// What was awaited.
        what: String,
        /// How long we waited.
        after: Duration,
    },
    /// A node's control socket did not answer.
    #[error("{node}: {source}")]
    Control {
        /// The node's name.
        node: String,
        /// Why.
        source: ControlError,
    },
    /// The bed's cancel flag was raised (Ctrl-C in `re6st demo`).
    #[error("interrupted")]
    Cancelled,
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> BedError {
    let what = what.into();
    move |source| BedError::Io { what, source }
}

/// How to build a bed.
#[derive(Clone, Debug)]
pub struct MeshOptions {
    /// The `re6st` binary to run.
    pub binary: PathBuf,
    /// Number of node hosts besides the registry host.
    pub nodes: usize,
    /// Extra `re6st registry serve` arguments (network parameters such as
    /// `--hello 4 --client-count 3 --tunnel-refresh 300`).
    pub registry_args: Vec<String>,
    /// Extra `re6st node` arguments for every node.
    pub node_args: Vec<String>,
    /// Extra `re6st node` arguments for some nodes (by index, 0 being the
    /// registry's node).
    pub node_extra: Vec<(usize, Vec<String>)>,
    /// Nodes (by index) also joined to a shared LAN segment: a second
    /// bridge, interface `lan0` in their host (use `-i lan0`).
    pub lan: Vec<usize>,
    /// Working directory; a fresh one under the system temporary directory
    /// when `None`.
    pub dir: Option<PathBuf>,
    /// `RUST_LOG` for the processes (`info` when `None`).
    pub log_filter: Option<String>,
    /// Prefix of the namespace names (`r6`: `r6reg-PID-N`, `r6n1-PID-N`).
    pub name: String,
    /// Hosts (by index) that are not [`HostKind::Public`]: behind a NAT
    /// gateway of that kind (see [`super::nat`]). The registry's host (0)
    /// must stay public.
    pub kinds: Vec<(usize, HostKind)>,
}

impl MeshOptions {
    /// Options for `nodes` node hosts running `binary`, with no extra
    /// arguments.
    pub fn new(binary: impl Into<PathBuf>, nodes: usize) -> Self {
        Self {
            binary: binary.into(),
            nodes,
            registry_args: Vec::new(),
            node_args: Vec::new(),
            node_extra: Vec::new(),
            lan: Vec::new(),
            dir: None,
            log_filter: None,
            name: "r6".into(),
            kinds: Vec::new(),
        }
    }

    /// Appends `re6st registry serve` arguments.
    pub fn registry_args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.registry_args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Appends `re6st node` arguments for every node.
    pub fn node_args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.node_args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Appends `re6st node` arguments for node `index`.
    pub fn node_extra<I, S>(mut self, index: usize, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.node_extra
            .push((index, args.into_iter().map(Into::into).collect()));
        self
    }

    /// Puts host `index` behind a NAT gateway of `kind` (the last call for
    /// an index wins).
    pub fn host_kind(mut self, index: usize, kind: HostKind) -> Self {
        self.kinds.push((index, kind));
        self
    }

    /// The kind of host `index`.
    pub fn kind(&self, index: usize) -> HostKind {
        self.kinds
            .iter()
            .rev()
            .find(|(i, _)| *i == index)
            .map_or(HostKind::Public, |(_, k)| *k)
    }
}

/// One host of the bed and its node.
#[derive(Debug)]
struct Host {
    name: String,
    ns: Netns,
    underlay: Ipv4Addr,
    kind: HostKind,
    // The NAT gateway in front of the host, if any (dropped after `ns`).
    gateway: Option<NatGateway>,
    dir: PathBuf,
    prefix: String,
    serial: u64,
    address: Ipv6Addr,
    args: Vec<String>,
    node: Option<NsChild>,
}

/// A registry and N + 1 nodes in network namespaces. See the module doc.
#[derive(Debug)]
pub struct MeshBed {
    opts: MeshOptions,
    dir: PathBuf,
    registry: Option<NsChild>,
    // Dropped after the processes (see Drop).
    hosts: Vec<Host>,
    lan: Option<Netns>,
    internet: Netns,
    fingerprint: String,
    network: String,
    cancel: Option<Arc<AtomicBool>>,
    runtime: tokio::runtime::Runtime,
}

impl MeshBed {
    /// Builds the namespaces, the registry and the nodes' certificates, and
    /// starts every node. Returns once every process is started (not once
    /// the mesh converged: see [`wait_ready`](Self::wait_ready) and
    /// [`wait_all_pairs`](Self::wait_all_pairs)).
    pub fn start(opts: MeshOptions) -> Result<Self, BedError> {
        let mut bed = Self::build(opts)?;
        bed.start_nodes()?;
        Ok(bed)
    }

    /// Starts every node that is not running: the registry's node first,
    /// waiting (up to 60 s) until it answers on its control socket, as on
    /// a real registry host where it runs before anyone enrolls; then all
    /// the others at once.
    pub fn start_nodes(&mut self) -> Result<(), BedError> {
        self.start_node(0)?;
        self.wait_node_ready(0, Instant::now() + Duration::from_secs(60))?;
        for i in 1..self.hosts.len() {
            self.start_node(i)?;
        }
        Ok(())
    }

    /// Like [`start`](Self::start), but starts no node: the registry runs
    /// and every host is enrolled. Start nodes with
    /// [`start_node`](Self::start_node).
    pub fn build(opts: MeshOptions) -> Result<Self, BedError> {
        if opts.nodes > 250 {
            return Err(BedError::Failed(format!(
                "{} nodes: at most 250 fit in 10.42.0.0/24",
                opts.nodes
            )));
        }
        let dir = match &opts.dir {
            Some(d) => d.clone(),
            None => {
                static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
                let nanos = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.subsec_nanos());
                std::env::temp_dir().join("re6st-beds").join(format!(
                    "{}-{}-{nanos:08x}",
                    std::process::id(),
                    N.fetch_add(1, Ordering::Relaxed)
                ))
            }
        };
        std::fs::create_dir_all(&dir).map_err(io_err(format!("create {}", dir.display())))?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(io_err("tokio runtime"))?;
        let ns_err = |what: &str| io_err(format!("namespace {what}"));

        let internet = Netns::new(&format!("{}i", opts.name)).map_err(ns_err("internet"))?;
        internet
            .exec("ip", &["link", "add", "br0", "type", "bridge"])
            .and_then(|_| internet.exec("ip", &["link", "set", "br0", "up"]))
            .map_err(ns_err("internet bridge"))?;
        let lan = if opts.lan.is_empty() {
            None
        } else {
            let lan = Netns::new(&format!("{}l", opts.name)).map_err(ns_err("lan"))?;
            lan.exec("ip", &["link", "add", "br0", "type", "bridge"])
                .and_then(|_| lan.exec("ip", &["link", "set", "br0", "up"]))
                .map_err(ns_err("lan bridge"))?;
            Some(lan)
        };

        if opts.kind(0) != HostKind::Public {
            return Err(BedError::Failed(
                "the registry's host (0) must be public: every node enrolls through it".into(),
            ));
        }
        let any_nat = (0..=opts.nodes).any(|i| opts.kind(i) != HostKind::Public);
        let mut hosts = Vec::new();
        for i in 0..=opts.nodes {
            let name = host_name(i);
            let ns = Netns::new(&format!("{}{name}", opts.name)).map_err(ns_err(&name))?;
            let kind = opts.kind(i);
            let host_dir = dir.join(&name);
            let mut underlay = Ipv4Addr::new(10, 42, 0, u8::try_from(i + 1).unwrap_or(255));
            // Forwarding: every node relays traffic for the others. No DAD:
            // link-local addresses usable at once.
            for sysctl in [
                "net.ipv6.conf.all.forwarding=1",
                "net.ipv4.ip_forward=1",
                "net.ipv6.conf.default.accept_dad=0",
                "net.ipv6.conf.all.accept_dad=0",
            ] {
                ns.exec("sysctl", &["-qw", sysctl]).map_err(ns_err(&name))?;
            }
            let port = format!("h{i}");
            let gateway = if kind == HostKind::Public {
                veth(&internet, &port, &ns, "eth0").map_err(ns_err(&name))?;
                internet
                    .exec("ip", &["link", "set", &port, "master", "br0"])
                    .and_then(|_| {
                        ns.exec(
                            "ip",
                            &["addr", "add", &format!("{underlay}/24"), "dev", "eth0"],
                        )
                    })
                    .map_err(ns_err(&name))?;
                if any_nat {
                    ns.exec("ip", &["route", "add", NAT_PUBLIC_NET, "dev", "eth0"])
                        .map_err(ns_err(&name))?;
                }
                None
            } else {
                let config = nat_config(i, kind);
                underlay = config.host;
                let mut gw = NatGateway::new(
                    &format!("{}{name}gw", opts.name),
                    &ns,
                    "eth0",
                    config,
                    &host_dir.join("gateway"),
                )
                .map_err(ns_err(&format!("{name} gateway")))?;
                veth(&internet, &port, gw.netns(), EXT_IF)
                    .and_then(|()| internet.exec("ip", &["link", "set", &port, "master", "br0"]))
                    .map_err(ns_err(&format!("{name} gateway")))?;
                gw.start().map_err(ns_err(&format!("{name} gateway")))?;
                Some(gw)
            };
            if let (Some(lan), true) = (&lan, opts.lan.contains(&i)) {
                veth(lan, &port, &ns, "lan0").map_err(ns_err(&name))?;
                lan.exec("ip", &["link", "set", &port, "master", "br0"])
                    .map_err(ns_err(&name))?;
            }
            std::fs::create_dir_all(host_dir.join("run"))
                .and_then(|()| std::fs::create_dir_all(host_dir.join("state")))
                .map_err(io_err(format!("create {}", host_dir.display())))?;
            let mut args = opts.node_args.clone();
            for (n, extra) in &opts.node_extra {
                if *n == i {
                    args.extend(extra.iter().cloned());
                }
            }
            hosts.push(Host {
                name,
                ns,
                underlay,
                kind,
                gateway,
                dir: host_dir,
                prefix: String::new(),
                serial: 0,
                address: Ipv6Addr::UNSPECIFIED,
                args,
                node: None,
            });
        }

        let mut bed = Self {
            opts,
            dir,
            registry: None,
            hosts,
            lan,
            internet,
            fingerprint: String::new(),
            network: NETWORK.into(),
            cancel: None,
            runtime,
        };
        bed.init_registry()?;
        bed.start_registry()?;
        for i in 0..bed.hosts.len() {
            bed.enroll(i)?;
        }
        Ok(bed)
    }

    fn init_registry(&mut self) -> Result<(), BedError> {
        let ca = self.dir.join("ca");
        let out = Command::new(&self.opts.binary)
            .args(["registry", "init", "--network", NETWORK, "--dir"])
            .arg(&ca)
            .stdin(Stdio::null())
            .output()
            .map_err(io_err("re6st registry init"))?;
        if !out.status.success() {
            return Err(BedError::Failed(format!(
                "re6st registry init: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        let text = String::from_utf8_lossy(&out.stdout);
        self.fingerprint = text
            .lines()
            .find_map(|l| l.strip_prefix("fingerprint "))
            .map(str::to_owned)
            .ok_or_else(|| BedError::Failed(format!("re6st registry init printed {text:?}")))?;
        Ok(())
    }

    /// Starts `re6st registry serve` in the registry host (again, after
    /// [`stop_registry`](Self::stop_registry)); waits until it listens.
    pub fn start_registry(&mut self) -> Result<(), BedError> {
        if self.registry.is_some() {
            return Ok(());
        }
        let log = self.dir.join("registry.log");
        let start = std::fs::metadata(&log).map_or(0, |m| m.len());
        let ca = self.dir.join("ca");
        let mut args: Vec<String> = vec![
            "registry".into(),
            "serve".into(),
            "--listen".into(),
            format!("10.42.0.1:{REGISTRY_PORT}"),
            "--listen".into(),
            format!("127.0.0.1:{REGISTRY_PORT}"),
            "--db".into(),
            path_arg(&self.dir.join("registry.db")),
            "--ca".into(),
            path_arg(&ca.join("ca.crt")),
            "--key".into(),
            path_arg(&ca.join("ca.key")),
            "--mailhost".into(),
            path_arg(&self.dir.join("mbox")),
            "--anonymous-prefix-length".into(),
            "16".into(),
        ];
        if self.registry_supports("--node-control") {
            args.push("--node-control".into());
            args.push(path_arg(&control::socket_path(
                &self.hosts[0].dir.join("run"),
            )));
        }
        args.extend(self.opts.registry_args.iter().cloned());
        let child = self.spawn(0, &args, &log)?;
        self.registry = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let text = read_from(&log, start);
            if text.contains("listening on http://10.42.0.1") {
                return Ok(());
            }
            if self.registry.as_mut().is_some_and(NsChild::has_exited) {
                self.registry = None;
                return Err(BedError::Failed(format!(
                    "re6st registry serve exited: {}",
                    text.trim()
                )));
            }
            if Instant::now() > deadline {
                return Err(BedError::Timeout {
                    what: "the registry listening".into(),
                    after: Duration::from_secs(20),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the registry (SIGTERM, then SIGKILL after 5 s). The nodes keep
    /// running.
    pub fn stop_registry(&mut self) -> Result<(), BedError> {
        if let Some(child) = self.registry.take() {
            stop_child(child, Duration::from_secs(5))?;
        }
        Ok(())
    }

    /// Whether `re6st registry serve --help` mentions `flag`.
    fn registry_supports(&self, flag: &str) -> bool {
        Command::new(&self.opts.binary)
            .args(["registry", "serve", "--help"])
            .stdin(Stdio::null())
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(flag))
    }

    fn enroll(&mut self, i: usize) -> Result<(), BedError> {
        let host = &self.hosts[i];
        let out = host
            .ns
            .command(&path_arg(&self.opts.binary))
            .args([
                "conf",
                "--registry",
                &self.registry_url(),
                "--fingerprint",
                &self.fingerprint,
                "--anonymous",
                "--dir",
            ])
            .arg(&host.dir)
            .stdin(Stdio::null())
            .output()
            .map_err(io_err(format!("{}: re6st conf", host.name)))?;
        if !out.status.success() {
            return Err(BedError::Failed(format!(
                "{}: re6st conf: {}",
                host.name,
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        let read = |f: &str| {
            std::fs::read_to_string(host.dir.join(f))
                .map_err(io_err(format!("read {}", host.dir.join(f).display())))
        };
        let bad = |e: &dyn fmt::Display| BedError::Failed(format!("{}: {e}", host.name));
        let cert = NodeCert::from_pem(&read("cert.crt")?).map_err(|e| bad(&e))?;
        let verifier = Verifier::new(&read("ca.crt")?).map_err(|e| bad(&e))?;
        let prefix = cert.prefix().map_err(|e| bad(&e))?;
        let network = verifier.network();
        let address = network.node_address(&prefix).map_err(|e| bad(&e))?;
        let host = &mut self.hosts[i];
        host.prefix = prefix.to_string();
        host.serial = cert.serial();
        host.address = address;
        self.network = network.to_string();
        Ok(())
    }

    /// Appends `re6st node` arguments for node `i`, used from its next
    /// start: arguments naming what is known only once the bed is built,
    /// such as another node's prefix (`--neighbour`).
    pub fn add_node_args<I, S>(&mut self, i: usize, args: I)
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.hosts[i].args.extend(args.into_iter().map(Into::into));
    }

    /// Starts (or restarts, after [`kill`](Self::kill) or
    /// [`stop`](Self::stop)) node `i`. Its output is appended to
    /// [`log_path`](Self::log_path).
    pub fn start_node(&mut self, i: usize) -> Result<(), BedError> {
        if self.hosts[i].node.is_some() {
            return Ok(());
        }
        let host = &self.hosts[i];
        let mut args: Vec<String> = vec![
            "node".into(),
            "--config".into(),
            path_arg(&host.dir.join("re6st.toml")),
            "--state".into(),
            path_arg(&host.dir.join("state")),
            "--run".into(),
            path_arg(&host.dir.join("run")),
        ];
        args.extend(host.args.iter().cloned());
        let log = self.log_path(i);
        let child = self.spawn(i, &args, &log)?;
        self.hosts[i].node = Some(child);
        Ok(())
    }

    fn spawn(&self, i: usize, args: &[String], log: &Path) -> Result<NsChild, BedError> {
        let host = &self.hosts[i];
        let filter = self.opts.log_filter.as_deref().unwrap_or("info");
        let mut argv = vec![
            "env".to_owned(),
            format!("RUST_LOG={filter}"),
            "NO_COLOR=1".into(),
        ];
        argv.push(path_arg(&self.opts.binary));
        argv.extend(args.iter().cloned());
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        host.ns
            .spawn(argv[0], &argv[1..], log)
            .map_err(io_err(format!("{}: start {}", host.name, args[0])))
    }

    /// Sends SIGKILL to node `i` and reaps it: a crash, leaving whatever
    /// it had set up behind.
    pub fn kill(&mut self, i: usize) -> Result<(), BedError> {
        if let Some(child) = self.hosts[i].node.take() {
            child
                .signal(Signal::SIGKILL)
                .map_err(io_err(format!("{}: kill", self.hosts[i].name)))?;
            child
                .wait()
                .map_err(io_err(format!("{}: wait", self.hosts[i].name)))?;
        }
        Ok(())
    }

    /// Stops node `i` cleanly (SIGTERM) and returns its exit status; kills
    /// it if it has not exited after `timeout` (an error).
    pub fn stop(&mut self, i: usize, timeout: Duration) -> Result<ExitStatus, BedError> {
        let child = self.hosts[i]
            .node
            .take()
            .ok_or_else(|| BedError::Failed(format!("{} is not running", self.hosts[i].name)))?;
        stop_child(child, timeout)
    }

    /// Whether node `i`'s process runs (reaping it if it exited).
    pub fn is_running(&mut self, i: usize) -> bool {
        self.hosts[i].node.as_mut().is_some_and(|c| !c.has_exited())
    }

    /// Waits up to `timeout` for node `i` to exit by itself and returns its
    /// status.
    pub fn wait_exit(&mut self, i: usize, timeout: Duration) -> Result<ExitStatus, BedError> {
        let deadline = Instant::now() + timeout;
        loop {
            let exited = self.hosts[i].node.as_mut().is_none_or(NsChild::has_exited);
            if exited {
                let child = self.hosts[i].node.take().ok_or_else(|| {
                    BedError::Failed(format!("{} was not running", self.hosts[i].name))
                })?;
                return child
                    .wait()
                    .map_err(io_err(format!("{}: wait", self.hosts[i].name)));
            }
            if Instant::now() > deadline {
                return Err(BedError::Timeout {
                    what: format!("{} exiting", self.hosts[i].name),
                    after: timeout,
                });
            }
            self.check_cancel()?;
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Raises [`BedError::Cancelled`] from every wait once `flag` is set.
    pub fn set_cancel(&mut self, flag: Arc<AtomicBool>) {
        self.cancel = Some(flag);
    }

    /// Sleeps for `d`, returning early with [`BedError::Cancelled`] when
    /// the cancel flag is raised.
    pub fn sleep(&self, d: Duration) -> Result<(), BedError> {
        let end = Instant::now() + d;
        loop {
            self.check_cancel()?;
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(());
            }
            std::thread::sleep(left.min(Duration::from_millis(100)));
        }
    }

    fn check_cancel(&self) -> Result<(), BedError> {
        match &self.cancel {
            Some(flag) if flag.load(Ordering::Relaxed) => Err(BedError::Cancelled),
            _ => Ok(()),
        }
    }

    /// Number of nodes, the registry's included.
    pub fn len(&self) -> usize {
        self.hosts.len()
    }

    /// Always false: a bed has at least the registry's node.
    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty()
    }

    /// Node `i`'s name: `reg` for 0, `n1`… for the others.
    pub fn name(&self, i: usize) -> &str {
        &self.hosts[i].name
    }

    /// Node `i`'s prefix in CN form.
    pub fn prefix(&self, i: usize) -> &str {
        &self.hosts[i].prefix
    }

    /// The serial of node `i`'s certificate.
    pub fn serial(&self, i: usize) -> u64 {
        self.hosts[i].serial
    }

    /// Node `i`'s re6st address (`<subnet>::1`).
    pub fn address(&self, i: usize) -> Ipv6Addr {
        self.hosts[i].address
    }

    /// Host `i`'s own IPv4 address: on the "internet" bridge for a public
    /// host, on its LAN (172.16.`i`.2) behind a NAT gateway.
    pub fn underlay(&self, i: usize) -> Ipv4Addr {
        self.hosts[i].underlay
    }

    /// The address others see host `i`'s traffic come from: its
    /// [`underlay`](Self::underlay) when public, its gateway's external
    /// address when behind a NAT.
    pub fn public_ip(&self, i: usize) -> Ipv4Addr {
        self.hosts[i]
            .gateway
            .as_ref()
            .map_or(self.hosts[i].underlay, NatGateway::external)
    }

    /// What host `i` sits behind.
    pub fn host_kind(&self, i: usize) -> HostKind {
        self.hosts[i].kind
    }

    /// Host `i`'s NAT gateway, when it has one.
    pub fn gateway(&self, i: usize) -> Option<&NatGateway> {
        self.hosts[i].gateway.as_ref()
    }

    /// The network prefix (`2001:db8:42::/48`).
    pub fn network(&self) -> &str {
        &self.network
    }

    /// Host `i`'s namespace.
    pub fn netns(&self, i: usize) -> &Netns {
        &self.hosts[i].ns
    }

    /// The "internet" namespace holding the bridge.
    pub fn internet(&self) -> &Netns {
        &self.internet
    }

    /// The LAN namespace, when some nodes share a LAN.
    pub fn lan(&self) -> Option<&Netns> {
        self.lan.as_ref()
    }

    /// The bed's working directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Node `i`'s directory (`cert.crt`, `re6st.toml`, `state/`, `run/`).
    pub fn node_dir(&self, i: usize) -> &Path {
        &self.hosts[i].dir
    }

    /// Node `i`'s run directory (control socket).
    pub fn run_dir(&self, i: usize) -> PathBuf {
        self.hosts[i].dir.join("run")
    }

    /// Node `i`'s log file.
    pub fn log_path(&self, i: usize) -> PathBuf {
        self.hosts[i].dir.join("node.log")
    }

    /// The registry's log file.
    pub fn registry_log(&self) -> PathBuf {
        self.dir.join("registry.log")
    }

    /// The registry's URL as nodes see it.
    pub fn registry_url(&self) -> String {
        format!("http://10.42.0.1:{REGISTRY_PORT}")
    }

    /// The registry's admin URL (loopback of the registry host).
    pub fn registry_admin_url(&self) -> String {
        format!("http://127.0.0.1:{REGISTRY_PORT}")
    }

    /// The node's PID (0 when stopped).
    pub fn pid(&self, i: usize) -> u32 {
        self.hosts[i].node.as_ref().map_or(0, NsChild::pid)
    }

    /// Resident memory of node `i`, in KiB (VmRSS in /proc).
    pub fn vm_rss_kib(&self, i: usize) -> Option<u64> {
        let text = std::fs::read_to_string(format!("/proc/{}/status", self.pid(i))).ok()?;
        text.lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
    }

    /// Runs `re6st ARGS` inside host `i` and returns its output, failing
    /// with its stderr on a non-zero exit.
    pub fn re6st(&self, i: usize, args: &[&str]) -> Result<String, BedError> {
        let out = self.hosts[i]
            .ns
            .command(&path_arg(&self.opts.binary))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(io_err(format!("re6st {}", args.join(" "))))?;
        if !out.status.success() {
            return Err(BedError::Failed(format!(
                "re6st {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Revokes node `i`'s certificate through the registry's admin API.
    pub fn revoke(&self, i: usize) -> Result<String, BedError> {
        let cn = self.hosts[i].prefix.clone();
        self.re6st(
            0,
            &[
                "registry",
                "revoke",
                "--registry",
                &self.registry_admin_url(),
                "--cn",
                &cn,
            ],
        )
    }

    /// Node `i`'s status through its control socket.
    pub fn status(&self, i: usize) -> Result<Status, BedError> {
        self.request(i, &Request::Status { routes: false })
            .and_then(|r| match r {
                Response::Status(s) => Ok(*s),
                other => Err(BedError::Failed(format!(
                    "{}: unexpected answer {other:?}",
                    self.hosts[i].name
                ))),
            })
    }

    /// Sends `request` to node `i`'s control socket.
    pub fn request(&self, i: usize, request: &Request) -> Result<Response, BedError> {
        let path = control::socket_path(&self.run_dir(i));
        self.runtime
            .block_on(control::call(&path, request, Duration::from_secs(10)))
            .map_err(|source| BedError::Control {
                node: self.hosts[i].name.clone(),
                source,
            })
    }

    /// Waits until every running node answers on its control socket.
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<(), BedError> {
        let deadline = Instant::now() + timeout;
        for i in 0..self.len() {
            self.wait_node_ready(i, deadline)?;
        }
        Ok(())
    }

    fn wait_node_ready(&mut self, i: usize, deadline: Instant) -> Result<(), BedError> {
        let start = Instant::now();
        loop {
            if self.hosts[i].node.is_none() || self.status(i).is_ok() {
                return Ok(());
            }
            if !self.is_running(i) {
                return Err(BedError::Failed(format!(
                    "{} exited; the end of its log {}:\n{}",
                    self.name(i),
                    self.log_path(i).display(),
                    tail(&self.log_path(i), 20)
                )));
            }
            if Instant::now() > deadline {
                return Err(BedError::Timeout {
                    what: format!("{} answering on its control socket", self.name(i)),
                    after: start.elapsed(),
                });
            }
            self.check_cancel()?;
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Whether one ping6 (1 s timeout) from node `from`'s re6st address
    /// to node `to`'s is answered.
    pub fn ping(&self, from: usize, to: usize) -> bool {
        self.ping_command(from, to)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    fn ping_command(&self, from: usize, to: usize) -> Command {
        let mut cmd = self.hosts[from].ns.command("ping");
        cmd.args(["-6", "-n", "-q", "-c", "1", "-W", "1", "-I"])
            .arg(self.hosts[from].address.to_string())
            .arg(self.hosts[to].address.to_string())
            .stdin(Stdio::null());
        cmd
    }

    /// Pings every ordered pair of running nodes at once (one ping each,
    /// 1 s timeout) and returns who reached whom. Stopped nodes are left
    /// out (their row and column are `None`).
    pub fn reachability(&mut self) -> Matrix {
        let n = self.len();
        let running: Vec<bool> = (0..n).map(|i| self.is_running(i)).collect();
        let mut children: Vec<(usize, usize, Option<Child>)> = Vec::new();
        for from in 0..n {
            for to in 0..n {
                if from != to && running[from] && running[to] {
                    let child = self
                        .ping_command(from, to)
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .spawn()
                        .ok();
                    children.push((from, to, child));
                }
            }
        }
        let mut cells = vec![vec![None; n]; n];
        for (from, to, child) in children {
            let ok = child.is_some_and(|mut c| c.wait().is_ok_and(|s| s.success()));
            cells[from][to] = Some(ok);
        }
        Matrix {
            names: self.hosts.iter().map(|h| h.name.clone()).collect(),
            cells,
        }
    }

    /// Samples [`reachability`](Self::reachability) until every pair of
    /// running nodes reaches each other, calling `progress` with each
    /// sample and the time elapsed since `since`. Returns the last (full)
    /// matrix and the time from `since` to the sample that found it full.
    pub fn wait_all_pairs(
        &mut self,
        since: Instant,
        timeout: Duration,
        mut progress: impl FnMut(&Self, &Matrix, Duration),
    ) -> Result<(Matrix, Duration), BedError> {
        loop {
            let sampled = Instant::now();
            let m = self.reachability();
            let elapsed = sampled.duration_since(since);
            progress(self, &m, elapsed);
            if m.all() {
                return Ok((m, elapsed));
            }
            if since.elapsed() > timeout {
                return Err(BedError::Timeout {
                    what: format!("all-pairs reachability (last sample:\n{m})"),
                    after: timeout,
                });
            }
            self.check_cancel()?;
            // The ping timeout already paces a failing sample.
            if sampled.elapsed() < Duration::from_millis(500) {
                std::thread::sleep(Duration::from_millis(500));
            }
        }
    }

    /// The tunnel graph from every running node's status (nodes that do
    /// not answer contribute nothing).
    pub fn graph(&self) -> TunnelGraph {
        let by_prefix: BTreeMap<&str, usize> = self
            .hosts
            .iter()
            .enumerate()
            .map(|(i, h)| (h.prefix.as_str(), i))
            .collect();
        let mut graph = TunnelGraph {
            names: self.hosts.iter().map(|h| h.name.clone()).collect(),
            edges: BTreeMap::new(),
        };
        for i in 0..self.len() {
            if self.hosts[i].node.is_none() {
                continue;
            }
            let Ok(status) = self.status(i) else {
                continue;
            };
            for t in status.tunnels.iter().filter(|t| t.state == "up") {
                let Some(&j) = by_prefix.get(t.peer.as_str()) else {
                    continue;
                };
                let key = (i.min(j), i.max(j));
                let initiator = if t.direction == "outgoing" { i } else { j };
                graph.edges.entry(key).or_insert(TunnelEdge {
                    initiator,
                    transport: t.transport.clone(),
                });
            }
        }
        graph
    }

    /// Drops every packet between hosts `a` and `b` (their underlay
    /// addresses, both directions, in both hosts) until the returned guard
    /// is dropped.
    pub fn cut(&self, a: usize, b: usize) -> Result<LinkCut, BedError> {
        let mut cut = LinkCut { rules: Vec::new() };
        for (here, there) in [(a, b), (b, a)] {
            let table = format!("re6st_cut_{there}");
            let peer = self.public_ip(there).to_string();
            let script = format!(
                "table ip {table} {{\n\
                 chain input {{ type filter hook input priority -10; ip saddr {peer} drop; }}\n\
                 chain output {{ type filter hook output priority -10; ip daddr {peer} drop; }}\n\
                 }}\n"
            );
            let path = self.dir.join(format!("cut-{here}-{there}.nft"));
            std::fs::write(&path, script).map_err(io_err(format!("write {}", path.display())))?;
            self.hosts[here]
                .ns
                .exec("nft", &["-f", &path_arg(&path)])
                .map_err(io_err(format!("{}: nft", self.hosts[here].name)))?;
            cut.rules
                .push((self.hosts[here].ns.name().to_owned(), table));
        }
        Ok(cut)
    }

    /// Starts a 10 Hz ping from node `from`'s re6st address to node `to`'s,
    /// in the background, until [`PingProbe::finish`].
    pub fn ping_probe(&self, from: usize, to: usize) -> Result<PingProbe, BedError> {
        let log = self.dir.join(format!(
            "probe-{}-{}-{}.log",
            self.hosts[from].name,
            self.hosts[to].name,
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis())
        ));
        let from_addr = self.hosts[from].address.to_string();
        let to_addr = self.hosts[to].address.to_string();
        let child = self.hosts[from]
            .ns
            .spawn(
                "ping",
                &[
                    "-6", "-n", "-D", "-i", "0.1", "-W", "1", "-I", &from_addr, &to_addr,
                ],
                &log,
            )
            .map_err(io_err("start ping"))?;
        Ok(PingProbe {
            child: Some(child),
            log,
            started: Instant::now(),
        })
    }

    /// What a crashed or stopped node `i` left in its host: `re6st-*`
    /// interfaces, its re6st address, routes of protocol 61 and routes
    /// covering the network prefix. Empty when clean.
    pub fn leftovers(&self, i: usize) -> Result<Vec<String>, BedError> {
        let ns = &self.hosts[i].ns;
        let run = |args: &[&str]| -> Result<String, BedError> {
            ns.exec("ip", args)
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .map_err(io_err(format!(
                    "{}: ip {}",
                    self.hosts[i].name,
                    args.join(" ")
                )))
        };
        let mut found = Vec::new();
        for line in run(&["-o", "link", "show"])?.lines() {
            if line.contains("re6st-") {
                found.push(format!("interface: {}", line.trim()));
            }
        }
        let address = self.hosts[i].address.to_string();
        for line in run(&["-o", "-6", "addr", "show"])?.lines() {
            if line.contains(&format!(" {address}/")) {
                found.push(format!("address: {}", line.trim()));
            }
        }
        let net_start = self.network.split("::").next().unwrap_or("2001:db8:42");
        for family in ["-4", "-6"] {
            for line in run(&[family, "route", "show", "table", "all"])?.lines() {
                let ours = line.contains("proto 61") || line.contains(net_start);
                if ours {
                    found.push(format!("route: {}", line.trim()));
                }
            }
        }
        Ok(found)
    }

    /// Stops every node cleanly (SIGTERM, SIGKILL after `timeout`) and the
    /// registry; the namespaces stay until the bed drops. Returns each
    /// node's exit status.
    pub fn shutdown(&mut self, timeout: Duration) -> Vec<(String, Result<ExitStatus, BedError>)> {
        for host in &self.hosts {
            if let Some(child) = &host.node {
                let _ = child.signal(Signal::SIGTERM);
            }
        }
        let mut result = Vec::new();
        for i in 0..self.len() {
            if let Some(child) = self.hosts[i].node.take() {
                result.push((self.hosts[i].name.clone(), stop_child(child, timeout)));
            }
        }
        let _ = self.stop_registry();
        result
    }

    /// The last `lines` lines of node `i`'s log.
    pub fn log_tail(&self, i: usize, lines: usize) -> String {
        tail(&self.log_path(i), lines)
    }
}

impl Drop for MeshBed {
    fn drop(&mut self) {
        let panicking = std::thread::panicking();
        if panicking {
            for host in &mut self.hosts {
                drop(host.node.take());
            }
            drop(self.registry.take());
        } else {
            self.shutdown(Duration::from_secs(5));
        }
        // Namespaces go with the hosts (fields), after their processes.
        if panicking || std::env::var_os("RE6ST_KEEP_BED").is_some() {
            eprintln!("mesh bed: files kept in {}", self.dir.display());
        } else if self.opts.dir.is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Who reaches whom: `cells[from][to]`, `None` on the diagonal and for
/// stopped nodes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Matrix {
    /// Node names, by index.
    pub names: Vec<String>,
    /// `Some(reached)` for each pair of running nodes.
    pub cells: Vec<Vec<Option<bool>>>,
}

impl Matrix {
    /// Pairs that answered, and pairs tried.
    pub fn counts(&self) -> (usize, usize) {
        let tried = self.cells.iter().flatten().filter(|c| c.is_some()).count();
        let ok = self
            .cells
            .iter()
            .flatten()
            .filter(|c| **c == Some(true))
            .count();
        (ok, tried)
    }

    /// Whether every pair tried answered.
    pub fn all(&self) -> bool {
        let (ok, tried) = self.counts();
        ok == tried
    }

    /// The pairs that did not answer, as `from -> to`.
    pub fn missing(&self) -> Vec<String> {
        let mut v = Vec::new();
        for (from, row) in self.cells.iter().enumerate() {
            for (to, cell) in row.iter().enumerate() {
                if *cell == Some(false) {
                    v.push(format!("{} -> {}", self.names[from], self.names[to]));
                }
            }
        }
        v
    }
}

impl fmt::Display for Matrix {
    /// One row per source: `#` reached, `.` not, `-` itself or stopped.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let w = self.names.iter().map(String::len).max().unwrap_or(1);
        let lw = w.max("from\\to".len());
        write!(f, "{:>lw$}", "from\\to")?;
        for n in &self.names {
            write!(f, " {n:>w$}")?;
        }
        writeln!(f)?;
        for (name, row) in self.names.iter().zip(&self.cells) {
            write!(f, "{name:>lw$}")?;
            for cell in row {
                let c = match cell {
                    Some(true) => "#",
                    Some(false) => ".",
                    None => "-",
                };
                write!(f, " {c:>w$}")?;
            }
            writeln!(f)?;
        }
        Ok(())
    }
}

/// One tunnel between two nodes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TunnelEdge {
    /// The node that opened it.
    pub initiator: usize,
    /// `udp`, `tcp` or `quic`.
    pub transport: String,
}

/// The tunnels that are up, as reported by the nodes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TunnelGraph {
    /// Node names, by index.
    pub names: Vec<String>,
    /// Each tunnel, keyed by its two ends (lower index first).
    pub edges: BTreeMap<(usize, usize), TunnelEdge>,
}

impl TunnelGraph {
    /// The tunnels node `i` opened.
    pub fn outgoing(&self, i: usize) -> usize {
        self.edges.values().filter(|e| e.initiator == i).count()
    }

    /// All tunnels of node `i`.
    pub fn degree(&self, i: usize) -> usize {
        self.edges
            .keys()
            .filter(|(a, b)| *a == i || *b == i)
            .count()
    }

    /// Whether `a` and `b` share a tunnel.
    pub fn linked(&self, a: usize, b: usize) -> bool {
        self.edges.contains_key(&(a.min(b), a.max(b)))
    }

    /// The edge set, for comparing graphs over time.
    pub fn pairs(&self) -> Vec<(usize, usize)> {
        self.edges.keys().copied().collect()
    }

    /// Graphviz text: one node per re6st node, one arrow per tunnel from
    /// its initiator, labelled with the transport.
    pub fn to_dot(&self) -> String {
        let mut s = String::from("digraph re6st {\n  node [shape=ellipse];\n");
        for name in &self.names {
            s.push_str(&format!("  \"{name}\";\n"));
        }
        for (&(a, b), e) in &self.edges {
            let other = if e.initiator == a { b } else { a };
            s.push_str(&format!(
                "  \"{}\" -> \"{}\" [label=\"{}\"];\n",
                self.names[e.initiator], self.names[other], e.transport
            ));
        }
        s.push_str("}\n");
        s
    }
}

impl fmt::Display for TunnelGraph {
    /// One line per node: its tunnels (`->` opened by it, `<-` accepted).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let w = self.names.iter().map(String::len).max().unwrap_or(1);
        for (i, name) in self.names.iter().enumerate() {
            write!(f, "{name:>w$}:")?;
            for (&(a, b), e) in &self.edges {
                let other = match (a == i, b == i) {
                    (true, _) => b,
                    (_, true) => a,
                    _ => continue,
                };
                let arrow = if e.initiator == i { "->" } else { "<-" };
                write!(f, " {arrow}{}({})", self.names[other], e.transport)?;
            }
            writeln!(f)?;
        }
        write!(f, "{} tunnels", self.edges.len())
    }
}

/// A link cut made by [`MeshBed::cut`]; dropping it restores the link.
#[derive(Debug)]
#[must_use = "the link is restored when the cut drops"]
pub struct LinkCut {
    /// (namespace name, nftables table) per host.
    rules: Vec<(String, String)>,
}

impl Drop for LinkCut {
    fn drop(&mut self) {
        for (ns, table) in &self.rules {
            let _ = Command::new("ip")
                .args(["netns", "exec", ns, "nft", "delete", "table", "ip", table])
                .stdin(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// A background 10 Hz ping started by [`MeshBed::ping_probe`].
#[derive(Debug)]
pub struct PingProbe {
    child: Option<NsChild>,
    log: PathBuf,
    started: Instant,
}

/// What a [`PingProbe`] saw.
#[derive(Clone, Debug, PartialEq)]
pub struct ProbeResult {
    /// Echo requests sent (highest sequence number seen or implied by the
    /// run time).
    pub sent: u64,
    /// Echo replies received.
    pub received: u64,
    /// The longest time without a reply between two replies, or from the
    /// start to the first reply / from the last reply to the end.
    pub longest_gap: Duration,
}

impl PingProbe {
    /// Stops the ping and reads its output.
    pub fn finish(mut self) -> Result<ProbeResult, BedError> {
        let elapsed = self.started.elapsed();
        if let Some(child) = self.child.take() {
            let _ = child.signal(Signal::SIGINT);
            let _ = stop_child(child, Duration::from_secs(3));
        }
        let text = std::fs::read_to_string(&self.log)
            .map_err(io_err(format!("read {}", self.log.display())))?;
        Ok(parse_probe(&text, elapsed))
    }
}

/// Reads ping's `icmp_seq=N` reply lines: the longest run of missing
/// sequence numbers, at 100 ms each, is the outage.
fn parse_probe(text: &str, elapsed: Duration) -> ProbeResult {
    let mut seqs: Vec<u64> = text
        .lines()
        .filter(|l| l.contains("bytes from"))
        .filter_map(|l| l.split("icmp_seq=").nth(1))
        .filter_map(|s| s.split_whitespace().next())
        .filter_map(|s| s.parse().ok())
        .collect();
    seqs.sort_unstable();
    seqs.dedup();
    let tick = Duration::from_millis(100);
    let sent = (elapsed.as_millis() / 100) as u64;
    let sent = sent.max(seqs.last().copied().unwrap_or(0));
    let mut longest = 0;
    let mut prev = 0; // seq numbers start at 1
    for &s in &seqs {
        longest = longest.max(s.saturating_sub(prev + 1));
        prev = s;
    }
    longest = longest.max(sent.saturating_sub(prev));
    ProbeResult {
        sent,
        received: seqs.len() as u64,
        longest_gap: tick * u32::try_from(longest).unwrap_or(u32::MAX),
    }
}

/// Where NAT gateways have their external addresses, on the "internet"
/// bridge next to the public hosts' 10.42.0.0/24 (miniupnpd refuses a
/// private external address; these exist only inside the bed).
const NAT_PUBLIC_NET: &str = "11.42.0.0/24";

/// The gateway of NAT host `i`: LAN 172.16.`i`.0/24 (gateway `.1`, host
/// `.2`), external address 11.42.0.(`i`+1), public hosts on-link.
fn nat_config(i: usize, kind: HostKind) -> NatConfig {
    let n = u8::try_from(i).unwrap_or(255);
    NatConfig {
        lan: Ipv4Addr::new(172, 16, n, 1),
        host: Ipv4Addr::new(172, 16, n, 2),
        external: Ipv4Addr::new(11, 42, 0, n.saturating_add(1)),
        external_len: 24,
        onlink: vec!["10.42.0.0/24".into()],
        upnp: kind == HostKind::NatUpnp,
        drop_udp: kind == HostKind::NatNoUdp,
    }
}

fn host_name(i: usize) -> String {
    if i == 0 {
        "reg".into()
    } else {
        format!("n{i}")
    }
}

fn path_arg(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

fn read_from(path: &Path, offset: u64) -> String {
    let text = std::fs::read(path).unwrap_or_default();
    let start = usize::try_from(offset).unwrap_or(0).min(text.len());
    String::from_utf8_lossy(&text[start..]).into_owned()
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// SIGTERM, then SIGKILL after `timeout` (an error), and reap.
fn stop_child(mut child: NsChild, timeout: Duration) -> Result<ExitStatus, BedError> {
    let _ = child.signal(Signal::SIGTERM);
    let deadline = Instant::now() + timeout;
    while !child.has_exited() {
        if Instant::now() > deadline {
            let _ = child.signal(Signal::SIGKILL);
            let _ = child.wait();
            return Err(BedError::Timeout {
                what: "a clean exit after SIGTERM".into(),
                after: timeout,
            });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait().map_err(io_err("wait"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_gap_counts_missing_sequence_numbers() {
        let text = "PING x\n\
            [1.0] 64 bytes from a: icmp_seq=1 ttl=64 time=0.1 ms\n\
            [1.1] 64 bytes from a: icmp_seq=2 ttl=64 time=0.1 ms\n\
            [2.5] 64 bytes from a: icmp_seq=17 ttl=64 time=0.1 ms\n\
            [2.6] 64 bytes from a: icmp_seq=18 ttl=64 time=0.1 ms\n";
        let r = parse_probe(text, Duration::from_millis(1850));
        assert_eq!(r.received, 4);
        assert_eq!(r.sent, 18);
        assert_eq!(r.longest_gap, Duration::from_millis(1400));
    }

    #[test]
    fn probe_without_replies_is_all_gap() {
        let r = parse_probe("PING x\n", Duration::from_secs(3));
        assert_eq!((r.sent, r.received), (30, 0));
        assert_eq!(r.longest_gap, Duration::from_secs(3));
    }

    #[test]
    fn probe_trailing_silence_counts() {
        let text = "[1.0] 64 bytes from a: icmp_seq=1 ttl=64 time=0.1 ms\n";
        let r = parse_probe(text, Duration::from_secs(2));
        assert_eq!(r.longest_gap, Duration::from_millis(1900));
    }

    #[test]
    fn matrix_display_and_missing() {
        let m = Matrix {
            names: vec!["reg".into(), "n1".into()],
            cells: vec![vec![None, Some(true)], vec![Some(false), None]],
        };
        assert_eq!(m.counts(), (1, 2));
        assert!(!m.all());
        assert_eq!(m.missing(), vec!["n1 -> reg".to_owned()]);
        let text = m.to_string();
        assert_eq!(text, "from\\to reg  n1\n    reg   -   #\n     n1   .   -\n");
    }

    #[test]
    fn graph_text_and_dot() {
        let mut g = TunnelGraph {
            names: vec!["reg".into(), "n1".into(), "n2".into()],
            edges: BTreeMap::new(),
        };
        g.edges.insert(
            (0, 2),
            TunnelEdge {
                initiator: 2,
                transport: "udp".into(),
            },
        );
        assert_eq!(g.outgoing(2), 1);
        assert_eq!(g.degree(0), 1);
        assert!(g.linked(2, 0));
        assert!(g.to_dot().contains("\"n2\" -> \"reg\" [label=\"udp\"];"));
        let text = g.to_string();
        assert!(text.contains("reg: <-n2(udp)"), "{text}");
        assert!(text.ends_with("1 tunnels"));
    }
}
