//! `re6st babel` against the real babeld, in two namespaces joined by a
//! veth pair: `ours` runs `re6st babel -i va`, `theirs` runs babeld on `vb`.
//!
//! Each side announces a host address on its loopback and a
//! source-specific /64 (`from 2001:db8::/32`); the tests check the routes
//! in both kernels, ping across, MAC authentication with a shared and with a
//! wrong HMAC-SHA256 key, RTT timestamps, and retraction when a side goes
//! away. Conditions are polled with generous deadlines.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use re6st::testbed::{require_root, veth, Netns, NsChild};

const OURS: &str = "2001:db8:a::1";
const THEIRS: &str = "2001:db8:b::1";
const OUR_SS: &str = "2001:db8:a1::/64 from 2001:db8::/32";
const THEIR_SS: &str = "2001:db8:b1::/64 from 2001:db8::/32";
const KEY: &str = "6b65792d6f6e652d666f722d626f74682d736964657321";
const OTHER_KEY: &str = "616e6f746865722d6b6579";
const CONVERGE: Duration = Duration::from_secs(60);

struct Setup {
    dir: tempfile::TempDir,
    ours: Netns,
    theirs: Netns,
}

impl Setup {
    fn new() -> Self {
        let ours = Netns::new("b-ours").unwrap();
        let theirs = Netns::new("b-babeld").unwrap();
        veth(&ours, "va", &theirs, "vb").unwrap();
        for (ns, host, ss) in [
            (&ours, OURS, "2001:db8:a1::1"),
            (&theirs, THEIRS, "2001:db8:b1::1"),
        ] {
            for a in [host, ss] {
                ns.exec(
                    "ip",
                    &[
                        "-6",
                        "addr",
                        "add",
                        &format!("{a}/128"),
                        "dev",
                        "lo",
                        "nodad",
                    ],
                )
                .unwrap();
            }
        }
        // babeld announces the kernel route of its source-specific prefix
        // (it ignores routes of protocol "boot", the default of `ip`).
        theirs
            .exec(
                "ip",
                &[
                    "-6",
                    "route",
                    "add",
                    "2001:db8:b1::/64",
                    "from",
                    "2001:db8::/32",
                    "dev",
                    "lo",
                    "proto",
                    "static",
                ],
            )
            .unwrap();
        // Daemons need usable link-local addresses: wait for duplicate
        // address detection to finish on both ends.
        let deadline = Instant::now() + CONVERGE;
        for (ns, dev) in [(&ours, "va"), (&theirs, "vb")] {
            loop {
                let out = ns
                    .exec("ip", &["-6", "addr", "show", "dev", dev, "scope", "link"])
                    .unwrap();
                let text = String::from_utf8(out.stdout).unwrap();
                if text.contains("fe80::") && !text.contains("tentative") {
                    break;
                }
                assert!(Instant::now() < deadline, "no link-local on {dev}: {text}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        Self {
            dir: tempfile::tempdir().unwrap(),
            ours,
            theirs,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Starts babeld on `vb`, with `key` if given.
    fn babeld(&self, key: Option<&str>) -> NsChild {
        let mut conf = String::new();
        if let Some(k) = key {
            conf += &format!("key id k1 type hmac-sha256 value {k}\n");
        }
        conf += "default hello-interval 1 enable-timestamps true\n";
        conf += "interface vb type wired";
        if key.is_some() {
            conf += " key k1";
        }
        conf += "\n";
        conf += "redistribute local ip 2001:db8:b::1/128 allow\n";
        conf += "redistribute ip 2001:db8:b1::/64 src-ip 2001:db8::/32 allow\n";
        conf += "redistribute local deny\nredistribute deny\n";
        let file = self.path("babeld.conf");
        std::fs::write(&file, conf).unwrap();
        let (pid, state, log) = (
            self.path("babeld.pid"),
            self.path("babeld.state"),
            self.path("babeld.log"),
        );
        let _ = std::fs::remove_file(&pid);
        self.theirs
            .spawn(
                "babeld",
                &[
                    "-c",
                    file.to_str().unwrap(),
                    "-I",
                    pid.to_str().unwrap(),
                    "-S",
                    state.to_str().unwrap(),
                    "-L",
                    log.to_str().unwrap(),
                ],
                &self.path("babeld.out"),
            )
            .unwrap()
    }

    /// Starts `re6st babel` on `va`, with `key` if given.
    fn re6st(&self, key: Option<&str>) -> NsChild {
        let args = vec![
            "babel",
            "-i",
            "va",
            "--hello",
            "1",
            "--timestamps",
            "--redistribute",
            "2001:db8:a::1/128",
            "--redistribute",
            "2001:db8:a1::/64",
            "from",
            "2001:db8::/32",
        ];
        self.re6st_with(&self.ours, args, key, "re6st.log")
    }

    /// Starts `re6st babel` in `ns` with `args` (plus `key` if given),
    /// logging to the file `log`.
    fn re6st_with(&self, ns: &Netns, args: Vec<&str>, key: Option<&str>, log: &str) -> NsChild {
        let mut args: Vec<String> = args.into_iter().map(str::to_owned).collect();
        if let Some(k) = key {
            args.extend([
                "--key".into(),
                format!("k1={k}"),
                "--key-type".into(),
                "hmac-sha256".into(),
            ]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        ns.spawn(env!("CARGO_BIN_EXE_re6st"), &args, &self.path(log))
            .unwrap()
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.path(name)).unwrap_or_default()
    }

    fn logs(&self) -> String {
        format!(
            "--- re6st.log\n{}\n--- babeld.log\n{}{}",
            self.log("re6st.log"),
            self.log("babeld.log"),
            self.log("babeld.out")
        )
    }
}

fn routes(ns: &Netns, proto: &str) -> String {
    let out = ns
        .exec("ip", &["-6", "route", "show", "proto", proto])
        .unwrap();
    String::from_utf8(out.stdout).unwrap()
}

/// Polls `check` until it holds or `limit` passes.
fn wait_for(what: &str, limit: Duration, setup: &Setup, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !check() {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}\n{}",
            setup.logs()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn ping(ns: &Netns, from: &str, to: &str) -> bool {
    ns.command("ping")
        .args(["-6", "-c", "1", "-W", "2", "-I", from, to])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Both kernels hold each other's host and source-specific routes.
fn wait_converged(s: &Setup) {
    wait_for("our kernel to learn babeld's routes", CONVERGE, s, || {
        let r = routes(&s.ours, "61");
        r.contains(&format!("{THEIRS} via fe80::")) && r.contains(&format!("{THEIR_SS} via fe80::"))
    });
    wait_for("babeld to learn our routes", CONVERGE, s, || {
        let r = routes(&s.theirs, "babel");
        r.contains(&format!("{OURS} via fe80::")) && r.contains(&format!("{OUR_SS} via fe80::"))
    });
}

/// The dump `re6st babel` logs on SIGUSR1.
fn dump(s: &Setup, re6st: &NsChild) -> String {
    wait_for("re6st babel to start", CONVERGE, s, || {
        s.log("re6st.log").contains("babel running")
    });
    let before = s.log("re6st.log").len();
    re6st.signal(Signal::SIGUSR1).unwrap();
    let mut text = String::new();
    wait_for("a dump", Duration::from_secs(10), s, || {
        text = s.log("re6st.log")[before..].to_owned();
        text.contains("my-id")
    });
    text
}

#[test]
fn routes_ping_rtt_and_retraction() {
    if !require_root("routes_ping_rtt_and_retraction") {
        return;
    }
    let s = Setup::new();
    let _babeld = s.babeld(None);
    let re6st = s.re6st(None);
    wait_converged(&s);

    wait_for("ping from us to babeld's side", CONVERGE, &s, || {
        ping(&s.ours, OURS, THEIRS)
    });
    wait_for("ping from babeld's side to us", CONVERGE, &s, || {
        ping(&s.theirs, THEIRS, OURS)
    });
    wait_for("ping over the source-specific routes", CONVERGE, &s, || {
        ping(&s.ours, OURS, "2001:db8:b1::1") && ping(&s.theirs, THEIRS, "2001:db8:a1::1")
    });

    // babeld's timestamps are echoed and ours answered: an RTT is measured.
    wait_for("an RTT in our dump", CONVERGE, &s, || {
        dump(&s, &re6st)
            .lines()
            .any(|l| l.starts_with("neighbour fe80::") && !l.contains(" rtt - "))
    });

    // SIGTERM: our prefixes are retracted (babeld drops them long before
    // its hold time) and our kernel routes removed.
    re6st.signal(Signal::SIGTERM).unwrap();
    let status = re6st.wait().unwrap();
    assert!(status.success(), "{status}\n{}", s.logs());
    assert_eq!(routes(&s.ours, "61"), "", "{}", s.logs());
    // babeld keeps a retracted route as unreachable for a while.
    wait_for(
        "babeld to drop our retracted routes",
        Duration::from_secs(30),
        &s,
        || {
            !routes(&s.theirs, "babel")
                .lines()
                .any(|l| (l.contains(OURS) || l.contains("2001:db8:a1::")) && l.contains(" via "))
        },
    );
}

#[test]
fn neighbour_loss_removes_routes() {
    if !require_root("neighbour_loss_removes_routes") {
        return;
    }
    let s = Setup::new();
    let babeld = s.babeld(None);
    let _re6st = s.re6st(None);
    wait_converged(&s);
    // SIGKILL: no retraction; only the missing hellos tell.
    babeld.signal(Signal::SIGKILL).unwrap();
    drop(babeld);
    wait_for("our routes through babeld to go", CONVERGE, &s, || {
        let r = routes(&s.ours, "61");
        !r.contains(THEIRS) && !r.contains("2001:db8:b1::")
    });
}

#[test]
fn mac_with_a_shared_key() {
    if !require_root("mac_with_a_shared_key") {
        return;
    }
    let s = Setup::new();
    let _babeld = s.babeld(Some(KEY));
    let re6st = s.re6st(Some(KEY));
    wait_converged(&s);
    // Packets before the challenge-response (RFC 8967 §4.3) completed are
    // counted as unauthenticated; afterwards routes flow.
    let text = dump(&s, &re6st);
    assert!(text.contains(&format!("route {THEIRS}/128")), "{text}");
    assert!(text.contains(" installed"), "{text}");
}

#[test]
fn mac_with_a_wrong_key_is_rejected() {
    if !require_root("mac_with_a_wrong_key_is_rejected") {
        return;
    }
    let s = Setup::new();
    let _babeld = s.babeld(Some(KEY));
    let re6st = s.re6st(Some(OTHER_KEY));
    // Wait until we have rejected several of babeld's packets (it sends a
    // hello a second), then check nobody learned anything.
    wait_for("babeld's packets to be rejected", CONVERGE, &s, || {
        let text = dump(&s, &re6st);
        text.split_whitespace()
            .skip_while(|w| *w != "unauthenticated")
            .nth(1)
            .and_then(|n| n.parse::<u64>().ok())
            .is_some_and(|n| n >= 5)
    });
    assert!(
        !routes(&s.ours, "61").contains("2001:db8:b"),
        "{}",
        s.logs()
    );
    assert!(
        !routes(&s.theirs, "babel").contains("2001:db8:a"),
        "{}",
        s.logs()
    );
    let text = dump(&s, &re6st);
    assert!(!text.contains("neighbour fe80::"), "{text}");
}

/// Our router on both sides: the shell and the router agree with
/// themselves (source-specific routes both ways, ping across).
#[test]
fn re6st_to_re6st() {
    if !require_root("re6st_to_re6st") {
        return;
    }
    let s = Setup::new();
    let _ours = s.re6st(None);
    let args = vec![
        "babel",
        "-i",
        "vb",
        "--hello",
        "1",
        "--redistribute",
        "2001:db8:b::1/128",
        "--redistribute",
        "2001:db8:b1::/64 from 2001:db8::/32",
    ];
    let _theirs = s.re6st_with(&s.theirs, args, None, "babeld.log");
    for (ns, dst, ss) in [(&s.ours, THEIRS, THEIR_SS), (&s.theirs, OURS, OUR_SS)] {
        wait_for("routes learned from the other re6st", CONVERGE, &s, || {
            let r = routes(ns, "61");
            r.contains(&format!("{dst} via fe80::")) && r.contains(&format!("{ss} via fe80::"))
        });
    }
    wait_for("ping both ways", CONVERGE, &s, || {
        ping(&s.ours, OURS, "2001:db8:b1::1") && ping(&s.theirs, THEIRS, "2001:db8:a1::1")
    });
}
