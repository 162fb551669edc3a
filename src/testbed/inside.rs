//! Running code of the calling process inside a namespace: a dedicated
//! thread enters it, so sockets that thread opens (netlink, UDP) belong to
//! the namespace, while the rest of the process stays where it was.

use std::fs::File;
use std::future::Future;
use std::io;

use nix::sched::{setns, CloneFlags};

use super::Netns;

impl Netns {
    /// Runs the future built by `f` to completion on a new thread that has
    /// entered this namespace, with its own tokio runtime, and returns its
    /// output. A panic inside is propagated.
    pub fn block_on<F, Fut, T>(&self, f: F) -> io::Result<T>
    where
        F: FnOnce() -> Fut + Send,
        Fut: Future<Output = T>,
        T: Send,
    {
        let path = format!("/run/netns/{}", self.name());
        let ns = File::open(&path)?;
        std::thread::scope(|scope| {
            let thread = scope.spawn(move || {
                setns(&ns, CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                Ok(runtime.block_on(f()))
            });
            match thread.join() {
                Ok(result) => result,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }
}
