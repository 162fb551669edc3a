//! Named network namespaces (`ip netns`) and the processes started in them.

use std::io;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use nix::sys::signal::Signal;
use nix::unistd::Pid;

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A network namespace created by us and deleted on drop.
///
/// Names are `<prefix>-<pid>-<n>`, unique on the machine, so tests running in
/// parallel (and leftovers of other runs) never collide.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates a namespace whose name starts with `prefix` and brings its
    /// loopback interface up.
    pub fn new(prefix: &str) -> io::Result<Self> {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("{prefix}-{}-{n}", std::process::id());
        run(Command::new("ip").args(["netns", "add", &name]))?;
        let ns = Self { name };
        ns.exec("ip", &["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The namespace's name, as `ip netns` knows it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A command that runs `program` inside the namespace. `ip netns exec`
    /// execs the program, so a spawned child's PID is the program's own.
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, program]);
        cmd
    }

    /// Runs `program args...` inside the namespace and waits for it; a
    /// non-zero exit is an error carrying its stderr.
    pub fn exec(&self, program: &str, args: &[&str]) -> io::Result<Output> {
        run(self.command(program).args(args))
    }

    /// Starts `program args...` inside the namespace in the background,
    /// with stdout and stderr appended to `log`. The child is killed (by its
    /// PID) when the returned handle drops.
    pub fn spawn(
        &self,
        program: &str,
        args: &[&str],
        log: &std::path::Path,
    ) -> io::Result<NsChild> {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)?;
        let err = out.try_clone()?;
        let child = self
            .command(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()?;
        Ok(NsChild { child: Some(child) })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stderr(Stdio::null())
            .status();
    }
}

/// A process started inside a namespace, killed by PID on drop.
#[derive(Debug)]
pub struct NsChild {
    child: Option<Child>,
}

impl NsChild {
    /// The process ID.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Sends `signal` (e.g. `Signal::SIGTERM`) to the process.
    pub fn signal(&self, signal: Signal) -> io::Result<()> {
        let pid = i32::try_from(self.pid()).map_err(|_| io::Error::other("pid out of range"))?;
        nix::sys::signal::kill(Pid::from_raw(pid), signal).map_err(io::Error::from)
    }

    /// Whether the process has exited (reaping it if so).
    pub fn has_exited(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => !matches!(c.try_wait(), Ok(None)),
            None => true,
        }
    }

    /// Waits for the process to exit and returns its status.
    pub fn wait(mut self) -> io::Result<std::process::ExitStatus> {
        match self.child.take() {
            Some(mut c) => c.wait(),
            None => Err(io::Error::other("already waited")),
        }
    }
}

impl Drop for NsChild {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Joins two namespaces with a veth pair, `a_if` in `a` and `b_if` in `b`,
/// both up. Interface names are local to each namespace.
pub fn veth(a: &Netns, a_if: &str, b: &Netns, b_if: &str) -> io::Result<()> {
    run(Command::new("ip").args([
        "link",
        "add",
        "name",
        a_if,
        "netns",
        a.name(),
        "type",
        "veth",
        "peer",
        "name",
        b_if,
        "netns",
        b.name(),
    ]))?;
    a.exec("ip", &["link", "set", a_if, "up"])?;
    b.exec("ip", &["link", "set", b_if, "up"])?;
    Ok(())
}

/// Whether the tests that need root (namespaces, TUN) can run. Outside CI a
/// missing privilege skips them (returns false, with a note on stderr);
/// under `CI=true` it panics, because there they are mandatory.
pub fn require_root(test: &str) -> bool {
    let root = nix::unistd::geteuid().is_root();
    if !root {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("{test}: needs root, and CI=true makes it mandatory");
        }
        eprintln!("{test}: skipped (needs root)");
    }
    root
}

fn run(cmd: &mut Command) -> io::Result<Output> {
    let out = cmd.stdin(Stdio::null()).output()?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(io::Error::other(format!(
            "{:?} failed: {}",
            cmd,
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}
