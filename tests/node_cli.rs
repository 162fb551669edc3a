//! `re6st node` as a process: option and file mistakes give one clear line
//! and exit status 2 (no root needed); in a network namespace, against a
//! real registry, a node adds its address and unreachable route, answers
//! on its control socket, runs `--up` and `--daemon` with the node's
//! environment, serves `re6st status` and metrics, and leaves nothing behind after SIGTERM; after `kill -9`
//! a restart removes the leftovers, from the cached configuration when the
//! registry is down. Against a registry on loopback (no root): revocation,
//! SIGTERM while waiting for an unreachable registry, log reopening on
//! SIGHUP, renewal.

use std::net::Ipv6Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use re6st::node::control::{self, Request, Response};
use re6st::node::startup::Renewal;
use re6st::testbed::{require_root, Netns, NsChild};

const RE6ST: &str = env!("CARGO_BIN_EXE_re6st");

/// The network of the test registry.
const NETWORK: &str = "2001:db8:42::/48";
/// The registry inside each namespace (its own loopback).
const REGISTRY: &str = "http://127.0.0.1:9201";

fn re6st(args: &[&str]) -> Output {
    Command::new(RE6ST).args(args).output().unwrap()
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A network CA for the registry (`re6st registry init`) in `dir`.
fn init_ca(dir: &Path) {
    let out = re6st(&["registry", "init", "--network", NETWORK, "--dir", path(dir)]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The throw-away PKI of `re6st tunnel pki`: `ca.crt`, `node<i>.crt/key`.
fn pki(dir: &Path, nodes: &str) {
    let out = re6st(&["tunnel", "pki", "--dir", path(dir), "--nodes", nodes]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn mistakes_in_options_and_files_are_one_line_and_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let good = d.join("good");
    let other = d.join("other");
    pki(&good, "2");
    pki(&other, "1");
    std::fs::write(d.join("garbage.crt"), "not a certificate\n").unwrap();
    std::fs::write(
        d.join("typo.toml"),
        "registry = \"http://127.0.0.1:1\"\nclinet_count = 3\n",
    )
    .unwrap();
    let state = d.join("state");
    let run = d.join("run");
    let g = |f: &str| good.join(f).to_str().unwrap().to_owned();
    let base = |ca: &str, cert: &str, key: &str| -> Vec<String> {
        [
            "node",
            "--registry",
            "http://127.0.0.1:1",
            "--ca",
            ca,
            "--cert",
            cert,
            "--key",
            key,
            "--state",
            path(&state),
            "--run",
            path(&run),
        ]
        .map(String::from)
        .to_vec()
    };
    let garbage = d.join("garbage.crt");
    let missing = d.join("missing.crt");
    let cases: Vec<(Vec<String>, String)> = vec![
        (vec!["node".into()], "--registry is required".into()),
        (
            vec![
                "node".into(),
                "--config".into(),
                path(&d.join("absent.toml")).into(),
            ],
            "cannot read".into(),
        ),
        (
            vec![
                "node".into(),
                "--config".into(),
                path(&d.join("typo.toml")).into(),
            ],
            "typo.toml: line 2: unknown field `clinet_count`".into(),
        ),
        (
            [
                base(&g("ca.crt"), &g("node1.crt"), &g("node1.key")),
                vec!["--pp".into(), "1194".into(), "sctp".into()],
            ]
            .concat(),
            "--pp: unknown protocol".into(),
        ),
        (
            base(&g("ca.crt"), path(&missing), &g("node1.key")),
            format!("{}: No such file", missing.display()),
        ),
        (
            base(path(&garbage), &g("node1.crt"), &g("node1.key")),
            format!("{}: not a re6st CA certificate", garbage.display()),
        ),
        (
            base(&g("ca.crt"), path(&garbage), &g("node1.key")),
            format!("{}: not a certificate", garbage.display()),
        ),
        (
            base(&g("ca.crt"), &g("node1.crt"), path(&garbage)),
            format!("{}: invalid private key", garbage.display()),
        ),
        (
            base(&g("ca.crt"), &g("node1.crt"), &g("node2.key")),
            format!(
                "{} is not the private key of the certificate",
                g("node2.key")
            ),
        ),
        (
            base(
                &g("ca.crt"),
                other.join("node1.crt").to_str().unwrap(),
                &g("node1.key"),
            ),
            "certificate rejected: not signed by the network CA".into(),
        ),
        (
            base(&g("ca.crt"), &g("node1.crt"), &g("node1.key"))
                .into_iter()
                .map(|a| a.replace("http://", "https://"))
                .collect(),
            "--registry: bad registry URL".into(),
        ),
    ];
    for (args, want) in cases {
        let out = Command::new(RE6ST).args(&args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert_eq!(
            stderr.trim().lines().count(),
            1,
            "{args:?}: not one line: {stderr}"
        );
        assert!(
            stderr.contains(&want),
            "{args:?}: {stderr:?} lacks {want:?}"
        );
    }
    assert!(!run.join("control.sock").exists());
}

/// A namespace with a registry on its loopback and one enrolled node.
struct Site {
    ns: Netns,
    dir: tempfile::TempDir,
    registry: Option<NsChild>,
}

impl Site {
    fn new(name: &str) -> Self {
        let ns = Netns::new(name).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        init_ca(&d.join("ca"));
        let registry = ns
            .spawn(
                RE6ST,
                &[
                    "registry",
                    "serve",
                    "--listen",
                    "127.0.0.1:9201",
                    "--db",
                    path(&d.join("registry.db")),
                    "--ca",
                    path(&d.join("ca/ca.crt")),
                    "--key",
                    path(&d.join("ca/ca.key")),
                    "--mailhost",
                    path(&d.join("mbox")),
                    "--anonymous-prefix-length",
                    "16",
                ],
                &d.join("registry.log"),
            )
            .unwrap();
        let site = Self {
            ns,
            dir,
            registry: Some(registry),
        };
        site.wait(Duration::from_secs(30), "registry up", || {
            site.ns
                .exec(
                    RE6ST,
                    &[
                        "conf",
                        "--registry",
                        REGISTRY,
                        "--ca-only",
                        "--dir",
                        path(&site.path("probe")),
                    ],
                )
                .is_ok()
        });
        site.ns
            .exec(
                RE6ST,
                &[
                    "conf",
                    "--registry",
                    REGISTRY,
                    "--anonymous",
                    "--dir",
                    path(&site.path("node")),
                ],
            )
            .unwrap();
        site
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.path(name)).unwrap_or_default()
    }

    fn wait(&self, limit: Duration, what: &str, mut ok: impl FnMut() -> bool) {
        let deadline = Instant::now() + limit;
        while !ok() {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}\nnode log:\n{}\nregistry log:\n{}",
                self.log("node.log"),
                self.log("registry.log")
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `node --config ... --state DIR/<state> --run DIR/<run>`: the
    /// arguments of `re6st node` with the enrolled configuration.
    fn node_args(&self, state: &str, run: &str) -> Vec<String> {
        let config = self.path("node/re6st.toml");
        let (state, run) = (self.path(state), self.path(run));
        ["node", "--config", path(&config), "--state", path(&state)]
            .into_iter()
            .chain(["--run", path(&run)])
            .map(String::from)
            .collect()
    }

    /// `re6st node` with the enrolled configuration and `extra` options.
    fn start_node(&self, extra: &[&str]) -> NsChild {
        let mut all = self.node_args("state", "run");
        all.extend(["--pp", "1194", "udp"].map(String::from));
        all.extend(extra.iter().map(|e| e.to_string()));
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        self.ns.spawn(RE6ST, &all, &self.path("node.log")).unwrap()
    }

    fn socket(&self) -> PathBuf {
        control::socket_path(&self.path("run"))
    }

    fn ip(&self, args: &[&str]) -> String {
        let out = self.ns.exec("ip", args).unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Our routes (protocol 61), both families.
    fn our_routes(&self) -> String {
        self.ip(&["-6", "route", "show", "table", "all", "proto", "61"])
            + &self.ip(&["-4", "route", "show", "table", "all", "proto", "61"])
    }

    fn re6st_links(&self) -> Vec<String> {
        self.ip(&["-o", "link", "show"])
            .lines()
            .filter_map(|l| l.split(": ").nth(1))
            .map(|n| n.split('@').next().unwrap_or(n).to_owned())
            .filter(|n| n.starts_with("re6st-"))
            .collect()
    }

    /// Our address: the node prefix from the certificate's CN.
    fn address(&self) -> Ipv6Addr {
        let pem = std::fs::read_to_string(self.path("node/cert.crt")).unwrap();
        let cert = re6st::pki::NodeCert::from_pem(&pem).unwrap();
        let network: re6st::pki::Network = NETWORK.parse().unwrap();
        network.node_address(&cert.prefix().unwrap()).unwrap()
    }

    /// Our subnet, `ADDR/LEN`.
    fn subnet(&self) -> String {
        let pem = std::fs::read_to_string(self.path("node/cert.crt")).unwrap();
        let cert = re6st::pki::NodeCert::from_pem(&pem).unwrap();
        let network: re6st::pki::Network = NETWORK.parse().unwrap();
        let (addr, len) = network.subnet(&cert.prefix().unwrap()).unwrap();
        format!("{addr}/{len}")
    }

    /// Asks the node for its status from inside the namespace.
    fn status(&self) -> Option<Response> {
        let socket = self.socket();
        // The socket is a file: reachable from any namespace.
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(control::call(
                &socket,
                &Request::Status { routes: false },
                Duration::from_secs(10),
            ))
            .ok()
    }

    fn wait_up(&self, address: Ipv6Addr, iface: &str) {
        let lo = format!("{address}/128");
        self.wait(
            Duration::from_secs(60),
            "the node's address and route",
            || {
                self.ip(&["-6", "addr", "show", "dev", iface]).contains(&lo)
                    && self
                        .our_routes()
                        .contains(&format!("unreachable {NETWORK}"))
                    && self.socket().exists()
            },
        );
    }

    fn stop(&self, node: NsChild) -> std::process::ExitStatus {
        node.signal(Signal::SIGTERM).unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut node = node;
        while !node.has_exited() {
            assert!(
                Instant::now() < deadline,
                "node did not stop:\n{}",
                self.log("node.log")
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        node.wait().unwrap_or_else(|_| panic!("already reaped"))
    }

    fn assert_clean(&self, address: Ipv6Addr) {
        let lo = self.ip(&["-6", "addr", "show"]);
        assert!(!lo.contains(&address.to_string()), "address left:\n{lo}");
        let routes = self.our_routes();
        assert!(routes.trim().is_empty(), "routes left:\n{routes}");
        assert!(
            self.re6st_links().is_empty(),
            "interfaces left: {:?}",
            self.re6st_links()
        );
        assert!(!self.socket().exists(), "control socket left");
    }
}

#[test]
fn a_node_sets_up_answers_runs_hooks_and_cleans_up() {
    if !require_root("a_node_sets_up_answers_runs_hooks_and_cleans_up") {
        return;
    }
    let site = Site::new("nodecli");
    let address = site.address();
    let up_out = site.path("up.env");
    let daemon_pid = site.path("daemon.pid");
    let up = format!(
        "echo \"$re6stnet_ip|$re6stnet_iface|$re6stnet_subnet|$re6stnet_network\" > {0}.tmp && mv {0}.tmp {0}",
        up_out.display()
    );
    let daemon = format!("echo $$ > {}; exec sleep 1000", daemon_pid.display());
    let node = site.start_node(&[
        "--up",
        &up,
        "--daemon",
        &daemon,
        "--metrics",
        "127.0.0.1:9100",
    ]);
    site.wait_up(address, "lo");

    // A second node in the same namespace (another run directory) refuses
    // to start, and leaves the first one alone.
    let second = site
        .ns
        .command(RE6ST)
        .args(site.node_args("state2", "run2"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(1), "{stderr}");
    assert_eq!(
        stderr.lines().last(),
        Some("re6st node: another re6st node is running in this network namespace"),
        "{stderr}"
    );
    assert!(
        site.our_routes().contains("unreachable"),
        "the first node's route stays"
    );

    // `re6st status` reads the same socket.
    let out = Command::new(RE6ST)
        .args(["status", "--run", path(&site.path("run"))])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains(&address.to_string()), "{text}");

    // The metrics exporter answers inside the namespace.
    let scrape = site
        .ns
        .block_on(|| async {
            use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
            let mut s = tokio::net::TcpStream::connect("127.0.0.1:9100").await?;
            s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .await?;
            let mut body = String::new();
            s.read_to_string(&mut body).await?;
            std::io::Result::Ok(body)
        })
        .unwrap()
        .unwrap();
    assert!(scrape.starts_with("HTTP/1.1 200"), "{scrape}");
    assert!(scrape.contains("re6st_config_version"), "{scrape}");

    // The control socket answers with our identity.
    let status = site.status();
    match status {
        Some(Response::Status(s)) => {
            assert_eq!(s.identity.address, Some(address), "{s:?}");
        }
        other => panic!("status: {other:?}\n{}", site.log("node.log")),
    }
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(site.socket()).unwrap().permissions(),
    ) & 0o777;
    assert_eq!(mode, 0o600);

    // --up ran with the node's environment.
    site.wait(Duration::from_secs(30), "--up", || up_out.exists());
    let env = std::fs::read_to_string(&up_out).unwrap();
    let subnet = site.subnet();
    assert_eq!(env.trim(), format!("{address}|lo|{subnet}|{NETWORK}"));

    // The daemon runs until the node stops.
    site.wait(Duration::from_secs(30), "--daemon", || {
        std::fs::read_to_string(&daemon_pid).is_ok_and(|t| t.ends_with('\n'))
    });
    let pid: i32 = std::fs::read_to_string(&daemon_pid)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let pid = nix::unistd::Pid::from_raw(pid);
    assert!(nix::sys::signal::kill(pid, None).is_ok());

    let status = site.stop(node);
    assert!(
        status.success(),
        "exit {status:?}:\n{}",
        site.log("node.log")
    );
    site.assert_clean(address);
    // The daemon got SIGTERM (its PID is gone, or reused outside its group).
    let alive = nix::sys::signal::kill(pid, None).is_ok()
        && nix::unistd::getpgid(Some(pid)).ok() == Some(pid);
    assert!(!alive, "the --daemon survived the node");
}

#[test]
fn a_restart_after_kill_9_removes_the_leftovers() {
    if !require_root("a_restart_after_kill_9_removes_the_leftovers") {
        return;
    }
    let mut site = Site::new("nodekill");
    let address = site.address();
    // The address goes on another main interface this time: a TUN device
    // without carrier, where it would stay tentative without `nodad`.
    site.ns
        .exec("ip", &["tuntap", "add", "dev", "main0", "mode", "tun"])
        .unwrap();
    site.ns.exec("ip", &["link", "set", "main0", "up"]).unwrap();
    let out = site
        .ns
        .command(RE6ST)
        .args(site.node_args("state", "run"))
        .args(["-I", "nosuch0"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(
        stderr.lines().last(),
        Some("re6st node: main interface \"nosuch0\" does not exist (-I/--main-interface)"),
        "{stderr}"
    );
    assert!(site.our_routes().trim().is_empty(), "{}", site.our_routes());

    // Without CAP_NET_ADMIN the node says what it needs (skipped when
    // setpriv is missing).
    let has_setpriv = Command::new("setpriv")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if has_setpriv {
        let out = site
            .ns
            .command("setpriv")
            .args([
                "--bounding-set",
                "-net_admin",
                "--inh-caps",
                "-net_admin",
                RE6ST,
            ])
            .args(site.node_args("state", "run"))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        let last = stderr.lines().last().unwrap_or_default();
        assert!(
            last.ends_with(
                "Operation not permitted (os error 1) (re6st node needs root, or CAP_NET_ADMIN)"
            ),
            "{stderr}"
        );
        assert!(site.our_routes().trim().is_empty(), "{}", site.our_routes());
    }

    let node = site.start_node(&["-I", "main0"]);
    site.wait_up(address, "main0");
    let shown = site.ip(&["-6", "addr", "show", "dev", "main0"]);
    assert!(!shown.contains("tentative"), "{shown}");
    node.signal(Signal::SIGKILL).unwrap();
    let _ = node.wait();

    // What a crash leaves: our address, our routes, the socket file; plus
    // an interface named like our tunnels and a stray route of ours.
    assert!(site.our_routes().contains("unreachable"));
    site.ns
        .exec("ip", &["tuntap", "add", "dev", "re6st-99", "mode", "tun"])
        .unwrap();
    site.ns
        .exec(
            "ip",
            &[
                "-6",
                "route",
                "add",
                "2001:db8:ffff::/64",
                "dev",
                "lo",
                "proto",
                "61",
            ],
        )
        .unwrap();
    assert!(
        site.socket().exists(),
        "a killed node leaves its socket file"
    );

    // The registry is gone too: the node starts from its cached
    // configuration.
    drop(site.registry.take());
    let node = site.start_node(&["-I", "main0"]);
    site.wait(Duration::from_secs(60), "leftovers removed", || {
        site.log("node.log").contains("removed leftovers")
    });
    site.wait_up(address, "main0");
    assert!(
        site.re6st_links().iter().all(|l| l != "re6st-99"),
        "{:?}",
        site.re6st_links()
    );
    assert!(
        !site.our_routes().contains("2001:db8:ffff::/64"),
        "{}",
        site.our_routes()
    );
    assert!(matches!(site.status(), Some(Response::Status(_))));

    let status = site.stop(node);
    assert!(
        status.success(),
        "exit {status:?}:\n{}",
        site.log("node.log")
    );
    site.assert_clean(address);
}

/// A registry on 127.0.0.1 (no namespace, no root), killed by PID on drop.
struct LocalRegistry {
    child: std::process::Child,
    url: String,
    dir: tempfile::TempDir,
}

impl Drop for LocalRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl LocalRegistry {
    fn start(extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        init_ca(&d.join("ca"));
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log = std::fs::File::create(d.join("registry.log")).unwrap();
        let child = Command::new(RE6ST)
            .args([
                "registry",
                "serve",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--db",
                path(&d.join("registry.db")),
                "--ca",
                path(&d.join("ca/ca.crt")),
                "--key",
                path(&d.join("ca/ca.key")),
                "--mailhost",
                path(&d.join("mbox")),
                "--anonymous-prefix-length",
                "16",
            ])
            .args(extra)
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let reg = Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "registry did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        reg
    }

    /// Enrolls a node anonymously into `<dir>/<name>`.
    fn enroll(&self, name: &str) -> PathBuf {
        let node = self.dir.path().join(name);
        let out = re6st(&[
            "conf",
            "--registry",
            &self.url,
            "--anonymous",
            "--dir",
            path(&node),
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        node
    }
}

/// `re6st node` on the enrolled `node` directory, state and run inside it.
fn node_command(node: &Path, extra: &[&str]) -> Command {
    let mut cmd = Command::new(RE6ST);
    cmd.args([
        "node",
        "--config",
        path(&node.join("re6st.toml")),
        "--state",
        path(&node.join("state")),
        "--run",
        path(&node.join("run")),
    ])
    .args(extra);
    cmd
}

#[test]
fn a_revoked_node_says_so_and_exits_1() {
    let reg = LocalRegistry::start(&[]);
    let node = reg.enroll("n");
    let pem = std::fs::read_to_string(node.join("cert.crt")).unwrap();
    let serial = re6st::pki::NodeCert::from_pem(&pem).unwrap().serial();
    let out = re6st(&[
        "registry",
        "revoke",
        "--registry",
        &reg.url,
        "--serial",
        &serial.to_string(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = node_command(&node, &[]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(
        stderr.lines().last(),
        Some("re6st node: our certificate was revoked"),
        "{stderr}"
    );
    assert!(!node.join("run/control.sock").exists());
}

#[test]
fn waiting_for_the_registry_with_a_corrupt_cache_then_sighup_and_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let node = dir.path().join("n");
    pki(&node, "1");
    let log = dir.path().join("node.log");
    let rotated = dir.path().join("node.log.1");
    // A corrupt peer cache is moved aside, not a reason to stop.
    std::fs::create_dir_all(node.join("state")).unwrap();
    std::fs::write(node.join("state/peers.db"), b"this is not a database").unwrap();
    // Nothing listens on port 1: the registry is unreachable and no
    // configuration is cached, so the node keeps retrying.
    let mut child = Command::new(RE6ST)
        .args([
            "node",
            "--registry",
            "http://127.0.0.1:1",
            "--ca",
            path(&node.join("ca.crt")),
            "--cert",
            path(&node.join("node1.crt")),
            "--key",
            path(&node.join("node1.key")),
            "--state",
            path(&node.join("state")),
            "--run",
            path(&node.join("run")),
            "--log",
            path(&log),
        ])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let mut wait_for = |what: &str, ok: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !ok() {
            assert!(
                Instant::now() < deadline,
                "{what}:\n{}{}",
                read(&rotated),
                read(&log)
            );
            assert!(
                child.try_wait().unwrap().is_none(),
                "exited:\n{}",
                read(&log)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    wait_for("retries", &|| {
        read(&log).matches("retrying in").count() >= 2
    });

    // Log rotation: the file is moved away, SIGHUP makes a new one.
    std::fs::rename(&log, &rotated).unwrap();
    nix::sys::signal::kill(pid, Signal::SIGHUP).unwrap();
    wait_for("a reopened log", &|| {
        read(&log).contains("SIGHUP: log file reopened")
    });
    wait_for("retries in the new log", &|| {
        read(&log).contains("retrying in")
    });

    nix::sys::signal::kill(pid, Signal::SIGTERM).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "did not stop:\n{}", read(&log));
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(0), "{}", read(&log));
    assert_eq!(stderr, "", "with --log nothing goes to stderr");
    let text = read(&log);
    assert!(text.contains("SIGTERM: stopping"), "{text}");
    assert!(
        !text.contains('\x1b'),
        "no terminal colours in the log file"
    );
    let first = read(&rotated);
    assert!(first.contains("no cached configuration"), "{first}");
    assert!(first.contains("is corrupt"), "{first}");
    let aside = std::fs::read_dir(node.join("state"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("peers.db.corrupt-")
        })
        .count();
    assert_eq!(aside, 1);
}

#[test]
fn renewal_writes_a_new_certificate_for_the_same_key_and_prefix() {
    // Certificates of 10 days: within the registry's renewal window.
    let reg = LocalRegistry::start(&["--validity", "10"]);
    let node = reg.enroll("n");
    let (ca, cert, key) = (
        node.join("ca.crt"),
        node.join("cert.crt"),
        node.join("cert.key"),
    );
    let now = std::time::SystemTime::now();
    let before = re6st::node::startup::load_identity(&ca, &cert, &key, now).unwrap();
    let registry = re6st::registry::RegistryClient::new(&reg.url).unwrap();
    let renewed = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(re6st::node::startup::renew(&registry, &before, now))
        .unwrap();
    let Renewal::Renewed(renewed) = renewed else {
        panic!("not renewed")
    };
    assert_ne!(renewed.serial(), before.cert.serial());
    let later = now + Duration::from_secs(60);
    let after = re6st::node::startup::load_identity(&ca, &cert, &key, later).unwrap();
    assert_eq!(
        after.cert.serial(),
        renewed.serial(),
        "the file holds the new certificate"
    );
    assert_eq!(after.prefix, before.prefix);
    let leftovers: Vec<_> = std::fs::read_dir(&node)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn a_registry_that_does_not_renew_yet_leaves_the_certificate_alone() {
    // A year-long certificate is far from the registry's renewal window.
    let reg = LocalRegistry::start(&[]);
    let node = reg.enroll("n");
    let (ca, cert, key) = (
        node.join("ca.crt"),
        node.join("cert.crt"),
        node.join("cert.key"),
    );
    let before_pem = std::fs::read(&cert).unwrap();
    let now = std::time::SystemTime::now();
    let identity = re6st::node::startup::load_identity(&ca, &cert, &key, now).unwrap();
    let registry = re6st::registry::RegistryClient::new(&reg.url).unwrap();
    let answer = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(re6st::node::startup::renew(&registry, &identity, now))
        .unwrap();
    assert!(matches!(answer, Renewal::NotYet), "{answer:?}");
    assert_eq!(std::fs::read(&cert).unwrap(), before_pem);
}
