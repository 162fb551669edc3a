//! The tokio loop around the sans-I/O [`Router`]: feeds it packets, timer
//! expiries and commands, and after every input drains its outputs in the
//! order the API fixes: transmits, then events, then the next deadline.

use std::future::Future;
use std::net::Ipv6Addr;
use std::time::{Duration, Instant};

use babel::router::Stats;
use babel::{Dump, Event, InterfaceConfig, MacConfig, Prefix, RouteChange, Router};
use tokio::sync::{mpsc, oneshot};

use super::sockets::BabelSocket;

/// Largest datagram we read or write.
const BUFFER: usize = 65_535;

/// A command for the router, sent through a [`RouterHandle`].
#[derive(Debug)]
enum Command {
    AddInterface(u32, Box<InterfaceConfig>),
    RemoveInterface(u32),
    FlushNeighbour(u32, Ipv6Addr),
    SetCostMultiplier(u32, Option<Ipv6Addr>, u16),
    Redistribute(Prefix, Option<Prefix>, u16),
    Withdraw(Prefix, Option<Prefix>),
    SetMac(Option<Box<MacConfig>>),
    Dump(oneshot::Sender<Dump>),
    Stats(oneshot::Sender<Stats>),
}

/// Commands the router from other tasks (the node's tunnel and mesh
/// managers, the signal handler of `re6st babel`).
#[derive(Debug, Clone)]
pub struct RouterHandle {
    commands: mpsc::UnboundedSender<Command>,
}

impl RouterHandle {
    fn send(&self, c: Command) -> bool {
        self.commands.send(c).is_ok()
    }

    /// Runs Babel on interface `ifindex` (joins the multicast group there).
    /// Returns false if the driver has stopped.
    pub fn add_interface(&self, ifindex: u32, config: InterfaceConfig) -> bool {
        self.send(Command::AddInterface(ifindex, Box::new(config)))
    }

    /// Stops running Babel on interface `ifindex`.
    pub fn remove_interface(&self, ifindex: u32) -> bool {
        self.send(Command::RemoveInterface(ifindex))
    }

    /// Forgets a neighbour at once (its tunnel died).
    pub fn flush_neighbour(&self, ifindex: u32, address: Ipv6Addr) -> bool {
        self.send(Command::FlushNeighbour(ifindex, address))
    }

    /// Sets a neighbour's (or an interface's) cost multiplier, 256 = 1.0.
    pub fn set_cost_multiplier(
        &self,
        ifindex: u32,
        address: Option<Ipv6Addr>,
        multiplier: u16,
    ) -> bool {
        self.send(Command::SetCostMultiplier(ifindex, address, multiplier))
    }

    /// Announces a local prefix.
    pub fn redistribute(&self, prefix: Prefix, src_prefix: Option<Prefix>, metric: u16) -> bool {
        self.send(Command::Redistribute(prefix, src_prefix, metric))
    }

    /// Stops announcing a local prefix.
    pub fn withdraw(&self, prefix: Prefix, src_prefix: Option<Prefix>) -> bool {
        self.send(Command::Withdraw(prefix, src_prefix))
    }

    /// Replaces the MAC keys.
    pub fn set_mac(&self, mac: Option<MacConfig>) -> bool {
        self.send(Command::SetMac(mac.map(Box::new)))
    }

    /// A snapshot of the router's state, or `None` if the driver stopped.
    pub async fn dump(&self) -> Option<Dump> {
        let (tx, rx) = oneshot::channel();
        if !self.send(Command::Dump(tx)) {
            return None;
        }
        rx.await.ok()
    }

    /// The router's packet counters, or `None` if the driver stopped.
    pub async fn stats(&self) -> Option<Stats> {
        let (tx, rx) = oneshot::channel();
        if !self.send(Command::Stats(tx)) {
            return None;
        }
        rx.await.ok()
    }
}

/// Owns the router and its socket and runs them.
#[derive(Debug)]
pub struct Driver {
    router: Router,
    socket: BabelSocket,
    commands: mpsc::UnboundedReceiver<Command>,
    routes: mpsc::UnboundedSender<RouteChange>,
    neighbours: Option<mpsc::UnboundedSender<Event>>,
    transmit: Vec<u8>,
    receive: Vec<u8>,
}

impl Driver {
    /// A driver for `router` speaking on `socket`. Route changes go to
    /// `routes` (the installer), in order; neighbour events to `neighbours`
    /// if given.
    pub fn new(
        router: Router,
        socket: BabelSocket,
        routes: mpsc::UnboundedSender<RouteChange>,
        neighbours: Option<mpsc::UnboundedSender<Event>>,
    ) -> (Self, RouterHandle) {
        let (tx, rx) = mpsc::unbounded_channel();
        let driver = Self {
            router,
            socket,
            commands: rx,
            routes,
            neighbours,
            transmit: vec![0; BUFFER],
            receive: vec![0; BUFFER],
        };
        (driver, RouterHandle { commands: tx })
    }

    /// Runs until `shutdown` completes, then retracts our prefixes, keeps
    /// running for `linger` so the retractions go out (and are resent), and
    /// returns the router. Dropping the returned router's driver closes the
    /// route channel, which lets the installer finish.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>, linger: Duration) -> Router {
        let mut shutdown = std::pin::pin!(shutdown);
        self.run_until(&mut shutdown).await;
        let now = Instant::now();
        tracing::info!("retracting our routes");
        self.router.retract_all(now);
        self.run_until(tokio::time::sleep(linger)).await;
        self.router
    }

    async fn run_until(&mut self, stop: impl Future<Output = ()>) {
        let mut stop = std::pin::pin!(stop);
        loop {
            self.drain(Instant::now()).await;
            let deadline = self.router.poll_timeout();
            let sleep = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                () = &mut stop => return,
                command = self.commands.recv() => match command {
                    Some(c) => self.command(c),
                    // Every handle dropped: keep routing until stopped.
                    None => stop.as_mut().await,
                },
                received = self.socket.recv(&mut self.receive) => match received {
                    Ok(r) => self.router.handle_packet(
                        r.ifindex,
                        r.source,
                        r.multicast,
                        &self.receive[..r.len],
                        Instant::now(),
                    ),
                    Err(e) => tracing::warn!("babel socket: {e}"),
                },
                () = sleep => self.router.handle_timeout(Instant::now()),
            }
        }
    }

    /// Transmits until none is left, then events, as the API requires.
    async fn drain(&mut self, now: Instant) {
        while let Some(t) = self.router.poll_transmit(now, &mut self.transmit) {
            let bytes = &self.transmit[..t.len];
            if let Err(e) = self.socket.send(t.ifindex, t.destination, bytes).await {
                tracing::debug!(ifindex = t.ifindex, "babel send failed: {e}");
            }
        }
        while let Some(event) = self.router.poll_event() {
            match event {
                Event::Route(change) => {
                    tracing::debug!(?change, "route");
                    if self.routes.send(change).is_err() {
                        tracing::warn!("route installer gone; route change dropped");
                    }
                }
                Event::NeighbourUp { ifindex, address } => {
                    tracing::info!(ifindex, %address, "neighbour up");
                    self.forward(event);
                }
                Event::NeighbourDown { ifindex, address } => {
                    tracing::info!(ifindex, %address, "neighbour down");
                    self.forward(event);
                }
            }
        }
    }

    fn forward(&mut self, event: Event) {
        if let Some(tx) = &self.neighbours {
            if tx.send(event).is_err() {
                self.neighbours = None;
            }
        }
    }

    fn command(&mut self, command: Command) {
        let now = Instant::now();
        let router = &mut self.router;
        match command {
            Command::AddInterface(ifindex, config) => {
                if let Err(e) = self.socket.join(ifindex) {
                    tracing::warn!(ifindex, "cannot join ff02::1:6: {e}");
                }
                router.add_interface(ifindex, *config, now);
            }
            Command::RemoveInterface(ifindex) => {
                router.remove_interface(ifindex, now);
                if let Err(e) = self.socket.leave(ifindex) {
                    tracing::debug!(ifindex, "cannot leave ff02::1:6: {e}");
                }
            }
            Command::FlushNeighbour(ifindex, address) => {
                router.flush_neighbour(ifindex, address, now);
            }
            Command::SetCostMultiplier(ifindex, address, m) => {
                router.set_cost_multiplier(ifindex, address, m, now);
            }
            Command::Redistribute(prefix, src, metric) => {
                router.redistribute(prefix, src, metric, now);
            }
            Command::Withdraw(prefix, src) => router.withdraw(prefix, src, now),
            Command::SetMac(mac) => router.set_mac(mac.map(|m| *m)),
            Command::Dump(reply) => {
                let _ = reply.send(router.dump());
            }
            Command::Stats(reply) => {
                let _ = reply.send(router.stats());
            }
        }
    }
}
