//! UDP hole punching between two hosts behind two port-preserving
//! masquerading NATs whose firewalls drop every unsolicited inbound packet:
//! two `re6st::node::nat::punch::Puncher`s exchange their messages in
//! process (standing in for the mesh that carries them), and on their
//! first `Handshake` action each side starts a real `re6st tunnel up`
//! sending udp handshakes to the other's public endpoint; the tunnel comes
//! up and carries ping.
//!
//! "Internet" addresses 11.78.0.0/24 exist only inside the test's
//! namespaces.

use std::path::Path;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::SeedableRng;
use re6st::node::nat::punch::{PunchAction, PunchConfig, PunchEvent, Puncher};
use re6st::testbed::nat::{NatConfig, NatGateway, EXT_IF};
use re6st::testbed::{require_root, veth, Netns, NsChild};

const RE6ST: &str = env!("CARGO_BIN_EXE_re6st");
const PORT: u16 = 3260;

/// A host behind its NAT gateway (`re6st::testbed::nat`: masquerade
/// towards `ext`, forward only what the LAN started, drop new inbound
/// connections before conntrack confirms them, so a punch packet that
/// arrives early leaves no state behind).
struct Site {
    gw: NatGateway,
    host: Netns,
}

fn site(tag: &str, lan_net: &str, external: &str, dir: &Path) -> Site {
    let host = Netns::new(&format!("punch-h{tag}")).unwrap();
    let config = NatConfig {
        lan: format!("{lan_net}.1").parse().unwrap(),
        host: format!("{lan_net}.2").parse().unwrap(),
        external: external.parse().unwrap(),
        external_len: 24,
        onlink: Vec::new(),
        upnp: false,
        drop_udp: false,
    };
    let gw = NatGateway::new(
        &format!("punch-gw{tag}"),
        &host,
        "eth0",
        config,
        &dir.join(format!("gw{tag}")),
    )
    .unwrap();
    Site { gw, host }
}

fn spawn_tunnel(site: &Site, dir: &Path, n: u32, peer: &str, log: &Path) -> NsChild {
    let p = |f: &str| dir.join(f).to_str().unwrap().to_owned();
    let (ca, key, cert) = (
        p("ca.crt"),
        p(&format!("node{n}.key")),
        p(&format!("node{n}.crt")),
    );
    let listen = format!("0.0.0.0:{PORT}");
    let addr = format!("fd42::{n}/64");
    site.host
        .spawn(
            RE6ST,
            &[
                "tunnel",
                "up",
                "--transport",
                "udp",
                "--ca",
                &ca,
                "--key",
                &key,
                "--cert",
                &cert,
                "--listen",
                &listen,
                "--peer",
                peer,
                "--addr",
                &addr,
                "--ifname-prefix",
                "tp",
            ],
            log,
        )
        .unwrap()
}

#[test]
fn two_nated_hosts_punch_a_direct_udp_tunnel() {
    if !require_root("two_nated_hosts_punch_a_direct_udp_tunnel") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let st = std::process::Command::new(RE6ST)
        .args(["tunnel", "pki", "--dir"])
        .arg(dir.path())
        .args(["--nodes", "2"])
        .status()
        .unwrap();
    assert!(st.success(), "re6st tunnel pki failed");

    let mut a = site("a", "192.168.11", "11.78.0.1", dir.path());
    let mut b = site("b", "192.168.12", "11.78.0.2", dir.path());
    veth(a.gw.netns(), EXT_IF, b.gw.netns(), EXT_IF).unwrap();
    a.gw.start().unwrap();
    b.gw.start().unwrap();
    // Unsolicited packets from outside are dropped by each NAT.
    assert!(a
        .host
        .exec("ping", &["-c", "1", "-W", "1", "11.78.0.2"])
        .is_err());
    assert!(b
        .host
        .exec("ping", &["-c", "1", "-W", "1", "11.78.0.1"])
        .is_err());

    // Control: one side alone cannot get through (B only listens).
    {
        let ctl = dir.path().join("control.log");
        let p = |f: &str| dir.path().join(f).to_str().unwrap().to_owned();
        let listen = format!("0.0.0.0:{PORT}");
        let _b_listens = b
            .host
            .spawn(
                RE6ST,
                &[
                    "tunnel",
                    "up",
                    "--transport",
                    "udp",
                    "--ca",
                    &p("ca.crt"),
                    "--key",
                    &p("node2.key"),
                    "--cert",
                    &p("node2.crt"),
                    "--listen",
                    &listen,
                    "--addr",
                    "fd42::2/64",
                    "--ifname-prefix",
                    "tp",
                ],
                &ctl,
            )
            .unwrap();
        let _a_alone = spawn_tunnel(&a, dir.path(), 1, &format!("11.78.0.2:{PORT},2/16"), &ctl);
        std::thread::sleep(Duration::from_secs(4));
        assert!(
            a.host
                .exec("ping", &["-c", "1", "-W", "1", "fd42::2"])
                .is_err(),
            "a one-sided attempt got through the NAT: the test proves nothing"
        );
    }
    // Let the killed processes release the port.
    std::thread::sleep(Duration::from_millis(300));

    // Public endpoints as peers observe them through port-preserving NATs.
    let a_public = format!("11.78.0.1:{PORT}").parse().unwrap();
    let b_public = format!("11.78.0.2:{PORT}").parse().unwrap();
    // Node n of the PKI has prefix "n/16".
    let mut pa: Puncher<u32, StdRng> =
        Puncher::new(PunchConfig::default(), StdRng::seed_from_u64(1));
    let mut pb: Puncher<u32, StdRng> =
        Puncher::new(PunchConfig::default(), StdRng::seed_from_u64(2));
    let start = Instant::now();
    pa.connect(2, Some(a_public), start);

    let (la, lb) = (dir.path().join("a.log"), dir.path().join("b.log"));
    let mut children: Vec<NsChild> = Vec::new();
    let mut up = false;
    let mut events = Vec::new();
    while start.elapsed() < Duration::from_secs(40) && events.len() < 2 {
        let now = Instant::now();
        pa.handle_timeout(now);
        pb.handle_timeout(now);
        // Carry messages both ways (the mesh's job), then act.
        let mut to_b = Vec::new();
        let mut to_a = Vec::new();
        while let Some(action) = pa.poll_action() {
            match action {
                PunchAction::Send { message, .. } => to_b.push(message),
                PunchAction::Handshake {
                    endpoint, attempt, ..
                } => {
                    if attempt == 0 {
                        let peer = format!("{endpoint},2/16");
                        children.push(spawn_tunnel(&a, dir.path(), 1, &peer, &la));
                    }
                }
            }
        }
        while let Some(action) = pb.poll_action() {
            match action {
                PunchAction::Send { message, .. } => to_a.push(message),
                PunchAction::Handshake {
                    endpoint, attempt, ..
                } => {
                    if attempt == 0 {
                        let peer = format!("{endpoint},1/16");
                        children.push(spawn_tunnel(&b, dir.path(), 2, &peer, &lb));
                    }
                }
            }
        }
        for m in to_b {
            pb.handle_message(1, m, Some(b_public), true, now);
        }
        for m in to_a {
            pa.handle_message(2, m, Some(a_public), true, now);
        }
        if !up
            && children.len() == 2
            && a.host
                .exec("ping", &["-c", "1", "-W", "1", "fd42::2"])
                .is_ok()
        {
            up = true;
            pa.handle_tunnel_up(&2);
            pb.handle_tunnel_up(&1);
        }
        events.extend(std::iter::from_fn(|| pa.poll_event()));
        events.extend(std::iter::from_fn(|| pb.poll_event()));
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        up,
        "no tunnel through the NATs\nA: {}\nB: {}",
        std::fs::read_to_string(&la).unwrap_or_default(),
        std::fs::read_to_string(&lb).unwrap_or_default()
    );
    assert!(
        events.contains(&PunchEvent::Succeeded { peer: 2 }),
        "{events:?}"
    );
    assert!(
        events.contains(&PunchEvent::Succeeded { peer: 1 }),
        "{events:?}"
    );
    assert!(b
        .host
        .exec("ping", &["-c", "1", "-W", "2", "fd42::1"])
        .is_ok());
}
