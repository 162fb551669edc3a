//! The node's hooks: `--up CMD` and `--daemon CMD`.
//!
//! Each command runs through `sh -c CMD` with the node's environment added
//! to ours ([`startup::hook_env`](super::startup::hook_env)):
//!
//! | variable | value |
//! |---|---|
//! | `re6stnet_ip` | our address, `<subnet>::1` |
//! | `re6stnet_iface` | the main interface (`-I`, `lo` by default) |
//! | `re6stnet_subnet` | our subnet, `ADDR/LEN` |
//! | `re6stnet_network` | the network prefix, `ADDR/LEN` |
//!
//! - `--up` runs once, when the node's address and routes are in place and
//!   the mesh starts; the node does not wait for it. A non-zero exit is
//!   logged.
//! - every `--daemon` is supervised: restarted when it exits, after a delay
//!   that doubles from 1 s up to 60 s while it keeps dying quickly, and
//!   starts again from 1 s once it has run for a minute.
//!
//! Their standard input is `/dev/null`; their standard output and error
//! are the node's (not the `--log` file).
//!
//! Each command runs in its own process group (the group of the shell we
//! started, whose ID is that shell's PID), so that what the shell starts is
//! stopped with it. At exit every hook still running gets `SIGTERM`, and
//! `SIGKILL` [`STOP_GRACE`] later if it has not exited.

use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::process::{Child, Command};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::startup::Backoff;

/// How long a hook is given to exit after `SIGTERM` before `SIGKILL`.
pub const STOP_GRACE: Duration = Duration::from_secs(5);

/// A daemon that ran this long is considered healthy: its next restart
/// delay starts from the shortest again.
pub const STABLE_RUN: Duration = Duration::from_secs(60);

/// First restart delay of a daemon.
pub const RESTART_MIN: Duration = Duration::from_secs(1);

/// Longest restart delay of a daemon.
pub const RESTART_MAX: Duration = Duration::from_secs(60);

/// The restart schedule of one daemon (sans-I/O).
#[derive(Clone, Debug)]
pub struct RestartPolicy {
    backoff: Backoff,
    stable: Duration,
}

impl RestartPolicy {
    /// Delays from `min` doubling to `max`; a run of at least `stable`
    /// resets them.
    pub fn new(min: Duration, max: Duration, stable: Duration) -> Self {
        Self {
            backoff: Backoff::new(min, max),
            stable,
        }
    }

    /// How long to wait before restarting a daemon that ran for `ran`;
    /// `jitter` in `[0, 1]` as for [`Backoff::next_delay`].
    pub fn delay(&mut self, ran: Duration, jitter: f64) -> Duration {
        if ran >= self.stable {
            self.backoff.reset();
        }
        self.backoff.next_delay(jitter)
    }
}

impl Default for RestartPolicy {
    /// [`RESTART_MIN`], [`RESTART_MAX`], [`STABLE_RUN`].
    fn default() -> Self {
        Self::new(RESTART_MIN, RESTART_MAX, STABLE_RUN)
    }
}

/// The running hooks; [`Hooks::stop`] ends them.
#[derive(Debug)]
pub struct Hooks {
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Hooks {
    /// Starts `up` (once) and every daemon (supervised) with `env` added
    /// to the environment. Needs a tokio runtime.
    pub fn start(up: Option<&str>, daemons: &[String], env: &[(String, String)]) -> Self {
        Self::start_with(up, daemons, env, RestartPolicy::default(), STOP_GRACE)
    }

    /// As [`start`](Self::start) with another restart schedule and grace
    /// period (tests).
    pub fn start_with(
        up: Option<&str>,
        daemons: &[String],
        env: &[(String, String)],
        policy: RestartPolicy,
        grace: Duration,
    ) -> Self {
        let (stop, _) = watch::channel(false);
        let mut tasks = Vec::new();
        if let Some(cmd) = up {
            let hook = Hook {
                kind: "--up",
                cmd: cmd.to_owned(),
                env: env.to_vec(),
                grace,
            };
            tasks.push(tokio::spawn(hook.run_once(stop.subscribe())));
        }
        for cmd in daemons {
            let hook = Hook {
                kind: "--daemon",
                cmd: cmd.clone(),
                env: env.to_vec(),
                grace,
            };
            tasks.push(tokio::spawn(
                hook.supervise(policy.clone(), stop.subscribe()),
            ));
        }
        Self { stop, tasks }
    }

    /// Stops every hook still running (`SIGTERM`, then `SIGKILL` after the
    /// grace period) and waits until they are gone.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for task in self.tasks {
            if let Err(e) = task.await {
                tracing::warn!("hook task failed: {e}");
            }
        }
    }
}

/// Resolves once the hooks are told to stop (or their owner is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    // An error means the sender is gone: stop too.
    let _ = stop.wait_for(|s| *s).await;
}

struct Hook {
    kind: &'static str,
    cmd: String,
    env: Vec<(String, String)>,
    grace: Duration,
}

impl Hook {
    fn spawn(&self) -> std::io::Result<Child> {
        Command::new("sh")
            .arg("-c")
            .arg(&self.cmd)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
    }

    /// Runs the command once; stops it if asked to before it ends.
    async fn run_once(self, mut stop: watch::Receiver<bool>) {
        let mut child = match self.spawn() {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("{} {:?}: cannot start sh: {e}", self.kind, self.cmd);
                return;
            }
        };
        self.log_started(&child);
        tokio::select! {
            status = child.wait() => self.report(status),
            () = stopped(&mut stop) => self.terminate(&mut child).await,
        }
    }

    fn log_started(&self, child: &Child) {
        tracing::info!(
            "{} {:?} started (pid {:?})",
            self.kind,
            self.cmd,
            child.id()
        );
    }

    /// Runs the command, restarting it when it exits, until `stop`.
    async fn supervise(self, mut policy: RestartPolicy, mut stop: watch::Receiver<bool>) {
        loop {
            let started = Instant::now();
            match self.spawn() {
                Ok(mut child) => {
                    self.log_started(&child);
                    tokio::select! {
                        status = child.wait() => self.report(status),
                        () = stopped(&mut stop) => {
                            self.terminate(&mut child).await;
                            return;
                        }
                    }
                }
                Err(e) => tracing::warn!("{} {:?}: cannot start sh: {e}", self.kind, self.cmd),
            }
            let delay = policy.delay(started.elapsed(), rand::random::<f64>());
            tracing::warn!(
                "{} {:?} will be restarted in {:.1} s",
                self.kind,
                self.cmd,
                delay.as_secs_f64()
            );
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = stopped(&mut stop) => return,
            }
        }
    }

    fn report(&self, status: std::io::Result<ExitStatus>) {
        match status {
            Ok(s) if s.success() => tracing::info!("{} {:?} exited", self.kind, self.cmd),
            Ok(s) => tracing::warn!("{} {:?} failed: {s}", self.kind, self.cmd),
            Err(e) => tracing::warn!("{} {:?}: {e}", self.kind, self.cmd),
        }
    }

    /// `SIGTERM` to the hook's process group, `SIGKILL` after the grace
    /// period, and reaps the shell.
    async fn terminate(&self, child: &mut Child) {
        let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) else {
            // Already reaped.
            return;
        };
        let group = Pid::from_raw(pid);
        let _ = killpg(group, Signal::SIGTERM);
        match tokio::time::timeout(self.grace, child.wait()).await {
            Ok(status) => self.report(status),
            Err(_) => {
                tracing::warn!(
                    "{} {:?} did not exit {:?} after SIGTERM: killing it",
                    self.kind,
                    self.cmd,
                    self.grace
                );
                let _ = killpg(group, Signal::SIGKILL);
                let _ = child.wait().await;
            }
        }
        // Whatever else the shell left in its group goes too.
        let _ = killpg(group, Signal::SIGKILL);
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn restart_delays_grow_and_reset_after_a_stable_run() {
        let s = Duration::from_secs;
        let mut p = RestartPolicy::new(s(1), s(60), s(60));
        let quick = s(2);
        let delays: Vec<u64> = (0..8).map(|_| p.delay(quick, 1.0).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 60, 60]);
        assert_eq!(p.delay(s(61), 1.0), s(1));
        assert_eq!(p.delay(quick, 1.0), s(2));
    }

    fn env() -> Vec<(String, String)> {
        vec![
            ("re6stnet_ip".into(), "2001:db8:42:5::1".into()),
            ("re6stnet_iface".into(), "lo".into()),
            ("re6stnet_subnet".into(), "2001:db8:42:5::/64".into()),
            ("re6stnet_network".into(), "2001:db8:42::/48".into()),
        ]
    }

    async fn wait_for(path: &Path, mut ok: impl FnMut(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            if ok(&text) {
                return text;
            }
            assert!(Instant::now() < deadline, "{}: {text:?}", path.display());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn up_sees_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("up.out");
        let cmd = format!(
            "echo \"$re6stnet_ip $re6stnet_iface $re6stnet_subnet $re6stnet_network\" > {}.tmp && mv {0}.tmp {0}",
            out.display()
        );
        let hooks = Hooks::start(Some(&cmd), &[], &env());
        let text = wait_for(&out, |t| !t.is_empty()).await;
        assert_eq!(
            text,
            "2001:db8:42:5::1 lo 2001:db8:42:5::/64 2001:db8:42::/48\n"
        );
        hooks.stop().await;
    }

    #[tokio::test]
    async fn a_dying_daemon_is_restarted_and_a_stubborn_one_killed() {
        let dir = tempfile::tempdir().unwrap();
        let runs = dir.path().join("runs");
        // Exits at once: restarted after the (short) delays.
        let dying = format!("echo run >> {}", runs.display());
        // Ignores SIGTERM: needs the SIGKILL.
        let pid_file = dir.path().join("stubborn.pid");
        let stubborn = format!(
            "trap '' TERM; echo $$ > {}; while :; do sleep 0.1; done",
            pid_file.display()
        );
        let ms = Duration::from_millis;
        let policy = RestartPolicy::new(ms(20), ms(100), Duration::from_secs(60));
        let hooks = Hooks::start_with(None, &[dying, stubborn], &env(), policy, ms(300));
        wait_for(&runs, |t| t.lines().count() >= 3).await;
        let pid: i32 = wait_for(&pid_file, |t| t.ends_with('\n'))
            .await
            .trim()
            .parse()
            .unwrap();
        let started = Instant::now();
        hooks.stop().await;
        assert!(started.elapsed() >= ms(300), "waited for the grace period");
        // The shell is reaped, so its PID is gone (or reused by an unrelated
        // process, which is not in our group).
        let alive = nix::sys::signal::kill(Pid::from_raw(pid), None).is_ok()
            && nix::unistd::getpgid(Some(Pid::from_raw(pid))).ok() == Some(Pid::from_raw(pid));
        assert!(!alive, "the stubborn daemon survived");
        let count = std::fs::read_to_string(&runs).unwrap().lines().count();
        tokio::time::sleep(ms(300)).await;
        let later = std::fs::read_to_string(&runs).unwrap().lines().count();
        assert_eq!(count, later, "no restart after stop");
    }
}
