//! The peer-protocol socket (UDP port 326 on our re6st address), sealing
//! and opening through [`PeerEndpoint`], the bookkeeping of questions
//! waiting for an answer, and the mesh walks built on it (topology and
//! versions, for the registry's admin views).
//!
//! Answers to our own questions (topology, node info, configuration
//! version) are matched by sender and kind: the protocol carries no request
//! id for them, and one outstanding question per (node, kind) is all the
//! walks need.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::{Ipv6Addr, SocketAddr, SocketAddrV6};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use futures::stream::{FuturesUnordered, StreamExt};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};

use super::MeshError;
use crate::node::control::{NodeVersion, TopologyNode};
use crate::node::peer_proto::wire::MAX_PACKET_LEN;
use crate::node::peer_proto::{Body, PeerEndpoint, PeerStats, PORT};
use crate::pki::{Network, NodePrefix};

/// How long the bind of the peer socket is retried (our address may still
/// be settling).
const BIND_RETRY: Duration = Duration::from_secs(5);

/// How long a walk waits for each node.
pub(crate) const ASK_TIMEOUT: Duration = Duration::from_secs(3);

/// Questions a walk keeps in flight at most.
const WALK_CONCURRENCY: usize = 16;

/// The peer-protocol socket and endpoint.
pub(crate) struct PeerSocket {
    socket: Arc<UdpSocket>,
    endpoint: PeerEndpoint,
    network: Network,
    buf: Vec<u8>,
}

impl PeerSocket {
    /// Binds `[address]:326`, retrying for a few seconds, and starts the
    /// task that reads it into the returned channel.
    pub(crate) async fn bind(
        address: Ipv6Addr,
        endpoint: PeerEndpoint,
        network: Network,
    ) -> Result<(Self, mpsc::Receiver<(Vec<u8>, SocketAddr)>), MeshError> {
        let local = SocketAddr::V6(SocketAddrV6::new(address, PORT, 0, 0));
        let deadline = Instant::now() + BIND_RETRY;
        let socket = loop {
            match UdpSocket::bind(local).await {
                Ok(s) => break Arc::new(s),
                Err(e) if Instant::now() < deadline => {
                    tracing::debug!("peer socket {local}: {e}; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(source) => return Err(MeshError::PeerSocket { local, source }),
            }
        };
        let (tx, rx) = mpsc::channel(256);
        let reader = Arc::clone(&socket);
        tokio::spawn(async move {
            let mut buf = vec![0; MAX_PACKET_LEN];
            loop {
                match reader.recv_from(&mut buf).await {
                    Ok((n, from)) => {
                        // Full queue: drop, as the network would.
                        if let Err(mpsc::error::TrySendError::Closed(_)) =
                            tx.try_send((buf[..n].to_vec(), from))
                        {
                            return;
                        }
                    }
                    Err(e) => {
                        tracing::debug!("peer socket: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        });
        Ok((
            Self {
                socket,
                endpoint,
                network,
                buf: vec![0; MAX_PACKET_LEN],
            },
            rx,
        ))
    }

    /// The endpoint (to open received packets, update the CRL).
    pub(crate) fn endpoint_mut(&mut self) -> &mut PeerEndpoint {
        &mut self.endpoint
    }

    /// The endpoint's counters.
    pub(crate) fn stats(&self) -> PeerStats {
        self.endpoint.stats()
    }

    /// Seals `body` for `peer` and sends it to the peer's re6st address.
    pub(crate) async fn send(&mut self, peer: NodePrefix, body: &Body<'_>) {
        let Ok(ip) = self.network.node_address(&peer) else {
            return;
        };
        let len = match self
            .endpoint
            .seal(peer, body, SystemTime::now(), &mut self.buf)
        {
            Ok(len) => len,
            Err(e) => {
                tracing::warn!("cannot seal a peer message for {peer}: {e}");
                return;
            }
        };
        let to = SocketAddr::V6(SocketAddrV6::new(ip, PORT, 0, 0));
        if let Err(e) = self.socket.send_to(&self.buf[..len], to).await {
            tracing::debug!("peer message to {peer}: {e}");
        }
    }
}

/// What a walk asks a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Question {
    /// Its tunnel neighbours.
    Topology,
    /// Its software version.
    Info,
    /// Its configuration version (asked with the info request; the node
    /// answers both).
    Version,
}

/// An answer to a [`Question`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Answer {
    /// Tunnel neighbours.
    Topology(Vec<NodePrefix>),
    /// Software version.
    Info(String),
    /// Configuration version.
    Version(u64),
}

impl Answer {
    fn question(&self) -> Question {
        match self {
            Self::Topology(_) => Question::Topology,
            Self::Info(_) => Question::Info,
            Self::Version(_) => Question::Version,
        }
    }
}

/// A walk's question for the main loop, which sends it and routes the
/// answer back.
#[derive(Debug)]
pub(crate) struct Ask {
    /// Whom to ask.
    pub(crate) peer: NodePrefix,
    /// What.
    pub(crate) question: Question,
    /// Where the answer goes.
    pub(crate) reply: oneshot::Sender<Answer>,
}

/// Questions waiting for their answer, by node and kind. Pure bookkeeping.
#[derive(Debug, Default)]
pub(crate) struct Waiters {
    waiting: HashMap<(NodePrefix, Question), Vec<oneshot::Sender<Answer>>>,
}

impl Waiters {
    /// Registers a question; returns whether it must be sent (none of the
    /// same kind to the same node is in flight).
    pub(crate) fn add(&mut self, ask: Ask) -> bool {
        self.waiting.retain(|_, v| {
            v.retain(|s| !s.is_closed());
            !v.is_empty()
        });
        let list = self.waiting.entry((ask.peer, ask.question)).or_default();
        list.push(ask.reply);
        list.len() == 1
    }

    /// Delivers an answer from `peer` to whoever waits for it.
    pub(crate) fn answer(&mut self, peer: NodePrefix, answer: &Answer) {
        if let Some(list) = self.waiting.remove(&(peer, answer.question())) {
            for s in list {
                let _ = s.send(answer.clone());
            }
        }
    }
}

/// Asks one question through the main loop, with a timeout.
async fn ask(asks: &mpsc::UnboundedSender<Ask>, peer: NodePrefix, q: Question) -> Option<Answer> {
    let (reply, answer) = oneshot::channel();
    asks.send(Ask {
        peer,
        question: q,
        reply,
    })
    .ok()?;
    tokio::time::timeout(ASK_TIMEOUT, answer).await.ok()?.ok()
}

/// Breadth-first walk of the tunnel graph from our own neighbours: every
/// node reached is asked for its tunnel neighbours, a bounded number at a
/// time. Nodes that do not answer are listed without neighbours.
pub(crate) async fn topology(
    me: NodePrefix,
    my_neighbours: Vec<NodePrefix>,
    asks: mpsc::UnboundedSender<Ask>,
) -> Vec<TopologyNode> {
    let mut result: BTreeMap<NodePrefix, Option<Vec<NodePrefix>>> = BTreeMap::new();
    let mut seen: BTreeSet<NodePrefix> = BTreeSet::from([me]);
    let mut queue: VecDeque<NodePrefix> = VecDeque::new();
    for n in &my_neighbours {
        if seen.insert(*n) {
            queue.push_back(*n);
        }
    }
    result.insert(me, Some(my_neighbours));
    let mut inflight = FuturesUnordered::new();
    loop {
        while inflight.len() < WALK_CONCURRENCY {
            let Some(peer) = queue.pop_front() else { break };
            let asks = asks.clone();
            inflight.push(async move { (peer, ask(&asks, peer, Question::Topology).await) });
        }
        let Some((peer, answer)) = inflight.next().await else {
            break;
        };
        let neighbours = match answer {
            Some(Answer::Topology(n)) => Some(n),
            _ => None,
        };
        for n in neighbours.iter().flatten() {
            if seen.insert(*n) {
                queue.push_back(*n);
            }
        }
        result.insert(peer, neighbours);
    }
    result
        .into_iter()
        .map(|(p, n)| TopologyNode {
            prefix: p.to_string(),
            neighbours: n.map(|n| n.iter().map(ToString::to_string).collect()),
        })
        .collect()
}

/// Asks every node in `nodes` for its software and configuration versions.
pub(crate) async fn versions(
    nodes: Vec<NodePrefix>,
    asks: mpsc::UnboundedSender<Ask>,
) -> Vec<NodeVersion> {
    let mut out: Vec<NodeVersion> = futures::stream::iter(nodes)
        .map(|peer| {
            let asks = asks.clone();
            async move {
                let (info, version) = tokio::join!(
                    ask(&asks, peer, Question::Info),
                    ask(&asks, peer, Question::Version)
                );
                NodeVersion {
                    prefix: peer.to_string(),
                    software: match info {
                        Some(Answer::Info(s)) => Some(s),
                        _ => None,
                    },
                    config_version: match version {
                        Some(Answer::Version(v)) => Some(v),
                        _ => None,
                    },
                }
            }
        })
        .buffer_unordered(WALK_CONCURRENCY)
        .collect()
        .await;
    out.sort_by(|a, b| a.prefix.cmp(&b.prefix));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(v: u128) -> NodePrefix {
        NodePrefix::new(v, 16).unwrap()
    }

    #[test]
    fn waiters_share_one_question_and_get_the_answer() {
        let mut w = Waiters::default();
        let (tx1, mut rx1) = oneshot::channel();
        let (tx2, mut rx2) = oneshot::channel();
        let (tx3, mut rx3) = oneshot::channel();
        let ask = |question, reply| Ask {
            peer: p(1),
            question,
            reply,
        };
        assert!(w.add(ask(Question::Topology, tx1)));
        assert!(!w.add(ask(Question::Topology, tx2)));
        assert!(w.add(ask(Question::Info, tx3)));
        // An answer of another kind or from another node is not theirs.
        w.answer(p(2), &Answer::Topology(vec![p(3)]));
        w.answer(p(1), &Answer::Version(4));
        assert!(rx1.try_recv().is_err());
        w.answer(p(1), &Answer::Topology(vec![p(3)]));
        assert_eq!(rx1.try_recv().unwrap(), Answer::Topology(vec![p(3)]));
        assert_eq!(rx2.try_recv().unwrap(), Answer::Topology(vec![p(3)]));
        assert!(rx3.try_recv().is_err());
    }

    /// A fake mesh answering the walk's questions: 1 - 2 - 3, 1 - 4, and
    /// 5 silent.
    #[tokio::test]
    async fn topology_walk_visits_every_reachable_node_once() {
        let (tx, mut rx) = mpsc::unbounded_channel::<Ask>();
        let graph: HashMap<NodePrefix, Vec<NodePrefix>> = HashMap::from([
            (p(2), vec![p(1), p(3), p(5)]),
            (p(3), vec![p(2)]),
            (p(4), vec![p(1)]),
        ]);
        let asked = Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = Arc::clone(&asked);
        tokio::spawn(async move {
            while let Some(a) = rx.recv().await {
                log.lock().unwrap().push(a.peer);
                if let Some(n) = graph.get(&a.peer) {
                    let _ = a.reply.send(Answer::Topology(n.clone()));
                }
            }
        });
        let nodes = topology(p(1), vec![p(2), p(4)], tx).await;
        let names: Vec<_> = nodes.iter().map(|n| n.prefix.as_str()).collect();
        assert_eq!(names, ["1/16", "2/16", "3/16", "4/16", "5/16"]);
        assert_eq!(nodes[4].neighbours, None);
        assert_eq!(
            nodes[2].neighbours.as_deref(),
            Some(&["2/16".to_owned()][..])
        );
        let mut asked = asked.lock().unwrap().clone();
        asked.sort();
        assert_eq!(asked, vec![p(2), p(3), p(4), p(5)]);
    }
}
