//! UPnP port mapping against Debian's miniupnpd (nftables backend) in
//! network namespaces: a LAN host behind a masquerading gateway maps a UDP
//! and a TCP port with `re6st::node::nat::upnp`, a host on the public side
//! reaches echo listeners in the LAN through the external ports, and the
//! mappings are gone from the gateway after the mapper stops.
//!
//! Addresses: LAN 192.168.77.0/24, "public" 11.77.0.0/24 (miniupnpd refuses
//! a private external address; these addresses exist only inside the test's
//! namespaces, which have no route anywhere else).

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::SeedableRng;
use re6st::node::nat::upnp::{self, UpnpConfig, UpnpStatus};
use re6st::node::Proto;
use re6st::testbed::nat::{NatConfig, NatGateway, EXT_IF};
use re6st::testbed::{require_root, veth, Netns};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const GW_LAN: &str = "192.168.77.1";
const LAN: &str = "192.168.77.2";
const GW_EXT: &str = "11.77.0.1";
const PUBLIC: &str = "11.77.0.2";
const UDP_PORT: u16 = 4000;
const TCP_PORT: u16 = 4001;

struct Topology {
    gw: NatGateway,
    lan: Netns,
    public: Netns,
}

fn have(tool: &str) -> bool {
    std::process::Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// The LAN host behind a masquerading gateway running miniupnpd, whose
/// external side is joined to the public host.
fn topology(dir: &Path) -> Topology {
    let lan = Netns::new("upnp-lan").unwrap();
    let public = Netns::new("upnp-pub").unwrap();
    let config = NatConfig {
        lan: GW_LAN.parse().unwrap(),
        host: LAN.parse().unwrap(),
        external: GW_EXT.parse().unwrap(),
        external_len: 24,
        onlink: Vec::new(),
        upnp: true,
        drop_udp: false,
    };
    let mut gw = NatGateway::new("upnp-gw", &lan, "lan0", config, dir).unwrap();
    veth(gw.netns(), EXT_IF, &public, "pub0").unwrap();
    public
        .exec(
            "ip",
            &["addr", "add", &format!("{PUBLIC}/24"), "dev", "pub0"],
        )
        .unwrap();
    gw.start().unwrap();
    Topology { gw, lan, public }
}

/// The gateway's redirections (the DNAT rules miniupnpd installed).
fn redirections(gw: &NatGateway) -> String {
    gw.redirections_text().unwrap()
}

fn log(gw: &NatGateway) -> String {
    std::fs::read_to_string(gw.miniupnpd_log()).unwrap_or_default()
}

#[test]
fn upnp_maps_ports_through_miniupnpd_and_removes_them() {
    if !require_root("upnp_maps_ports_through_miniupnpd_and_removes_them") {
        return;
    }
    if !have("miniupnpd") || !have("nft") {
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "miniupnpd and nft are mandatory under CI (ci/setup installs them)"
        );
        eprintln!("skipped: miniupnpd or nft missing");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let t = topology(dir.path());
    let (status_tx, status_rx) = mpsc::channel::<UpnpStatus>();
    let (stop_tx, stop_rx) = mpsc::channel::<()>();

    std::thread::scope(|scope| {
        let lan = &t.lan;
        let mapper = scope.spawn(move || {
            lan.block_on(|| async move {
                let udp = tokio::net::UdpSocket::bind((IpAddr::from([0, 0, 0, 0]), UDP_PORT))
                    .await
                    .unwrap();
                let tcp = tokio::net::TcpListener::bind((IpAddr::from([0, 0, 0, 0]), TCP_PORT))
                    .await
                    .unwrap();
                let echo = tokio::spawn(async move {
                    let mut buf = [0u8; 1500];
                    loop {
                        tokio::select! {
                            got = udp.recv_from(&mut buf) => {
                                let (n, from) = got.unwrap();
                                udp.send_to(&buf[..n], from).await.unwrap();
                            }
                            got = tcp.accept() => {
                                let (mut stream, _) = got.unwrap();
                                tokio::spawn(async move {
                                    let mut buf = [0u8; 64];
                                    if let Ok(n) = stream.read(&mut buf).await {
                                        let _ = stream.write_all(&buf[..n]).await;
                                    }
                                });
                            }
                        }
                    }
                });
                let wanted = upnp::wanted(&[(UDP_PORT, Proto::Udp), (TCP_PORT, Proto::Tcp)]);
                let mut config = UpnpConfig::default();
                config.mapper.rediscover = Duration::from_secs(5);
                let handle = upnp::start(config, wanted, StdRng::seed_from_u64(6));
                let mut status = handle.status();
                let deadline = Instant::now() + Duration::from_secs(60);
                loop {
                    let s = status.borrow_and_update().clone();
                    if s.mappings.iter().all(|m| m.state == "mapped") && s.external_ip.is_some() {
                        status_tx.send(s).unwrap();
                        break;
                    }
                    assert!(Instant::now() < deadline, "no mapping within 60 s: {s:?}");
                    let _ = tokio::time::timeout(Duration::from_secs(1), status.changed()).await;
                }
                tokio::task::spawn_blocking(move || stop_rx.recv())
                    .await
                    .unwrap()
                    .unwrap();
                let last = handle.stop().await;
                echo.abort();
                last
            })
            .unwrap()
        });

        let Ok(status) = status_rx.recv_timeout(Duration::from_secs(90)) else {
            drop(stop_tx);
            let _ = mapper.join();
            panic!("mapper never reported; miniupnpd log:\n{}", log(&t.gw));
        };
        assert_eq!(status.state, "ready");
        assert_eq!(status.external_ip, Some(GW_EXT.parse().unwrap()));
        let port_of = |proto: &str| {
            status
                .mappings
                .iter()
                .find(|m| m.proto == proto)
                .and_then(|m| m.external_port)
                .unwrap()
        };
        let (udp_ext, tcp_ext) = (port_of("udp"), port_of("tcp"));
        let announced: Vec<String> = status.announced().into_iter().map(|a| a.address).collect();
        assert_eq!(
            announced,
            [
                format!("{GW_EXT},{udp_ext},udp"),
                format!("{GW_EXT},{tcp_ext},tcp")
            ]
        );
        let rules = redirections(&t.gw);
        assert!(rules.contains(&format!("dport {udp_ext}")), "{rules}");
        assert!(rules.contains(&format!("dport {tcp_ext}")), "{rules}");

        // The public host reaches both listeners through the external ports.
        let ext: IpAddr = GW_EXT.parse().unwrap();
        t.public
            .block_on(|| async move {
                let sock = tokio::net::UdpSocket::bind("0.0.0.0:0").await.unwrap();
                let mut buf = [0u8; 64];
                let mut answered = None;
                for _ in 0..10 {
                    sock.send_to(b"ping over upnp", SocketAddr::new(ext, udp_ext))
                        .await
                        .unwrap();
                    if let Ok(got) =
                        tokio::time::timeout(Duration::from_secs(1), sock.recv_from(&mut buf)).await
                    {
                        answered = Some(got.unwrap());
                        break;
                    }
                }
                let (n, from) = answered.expect("no UDP echo through the mapped port");
                assert_eq!(&buf[..n], b"ping over upnp");
                assert_eq!(from, SocketAddr::new(ext, udp_ext));

                let mut stream = tokio::time::timeout(
                    Duration::from_secs(10),
                    tokio::net::TcpStream::connect(SocketAddr::new(ext, tcp_ext)),
                )
                .await
                .expect("TCP connect through the mapped port timed out")
                .unwrap();
                stream.write_all(b"tcp over upnp").await.unwrap();
                let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
                    .await
                    .unwrap()
                    .unwrap();
                assert_eq!(&buf[..n], b"tcp over upnp");
            })
            .unwrap();

        stop_tx.send(()).unwrap();
        let last = mapper.join().unwrap();
        assert_eq!(last.state, "stopped");
        let rules = redirections(&t.gw);
        assert!(!rules.contains(&format!("dport {udp_ext}")), "{rules}");
        assert!(!rules.contains(&format!("dport {tcp_ext}")), "{rules}");
        assert!(!rules.contains("dnat"), "mappings left behind: {rules}");
    });
}

#[test]
fn upnp_without_a_gateway_reports_no_gateway() {
    if !require_root("upnp_without_a_gateway_reports_no_gateway") {
        return;
    }
    let lan = Netns::new("upnp-none").unwrap();
    let peer = Netns::new("upnp-none-gw").unwrap();
    veth(&lan, "lan0", &peer, "gw0").unwrap();
    lan.exec("ip", &["addr", "add", "192.168.78.2/24", "dev", "lan0"])
        .unwrap();
    lan.exec("ip", &["route", "add", "default", "via", "192.168.78.1"])
        .unwrap();
    let status = lan
        .block_on(|| async {
            let config = UpnpConfig {
                search_timeout: Duration::from_secs(2),
                ..UpnpConfig::default()
            };
            let wanted = upnp::wanted(&[(UDP_PORT, Proto::Udp)]);
            let handle = upnp::start(config, wanted, StdRng::seed_from_u64(1));
            let mut status = handle.status();
            let deadline = Instant::now() + Duration::from_secs(30);
            while status.borrow_and_update().state != "no gateway" {
                assert!(Instant::now() < deadline, "search never ended");
                let _ = tokio::time::timeout(Duration::from_secs(1), status.changed()).await;
            }
            handle.stop().await
        })
        .unwrap();
    assert_eq!(status.state, "stopped");
    assert!(status.external_ip.is_none());
    assert!(status.mappings.iter().all(|m| m.external_port.is_none()));
}
