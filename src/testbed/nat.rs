//! NAT gateways in network namespaces: a gateway namespace between a host
//! and the rest of the bed, masquerading the host's traffic with nftables,
//! optionally running Debian's real `miniupnpd` as its UPnP IGD and
//! optionally dropping every UDP packet it would forward.
//!
//! ```text
//!   host ns                 gateway ns                    uplink
//!   eth0 (LAN_HOST) ─veth─ lan (LAN_GW)   ext (EXTERNAL) ─veth─ …
//!   default via LAN_GW     masquerade out of `ext`
//! ```
//!
//! The gateway behaves as a home router does:
//!
//! - masquerade towards `ext` without `random`, so source ports are kept
//!   when free ("port-preserving", the NAT hole punching can get through);
//! - forward what the LAN started (and what it relates to), and from
//!   outside only what a UPnP mapping redirects (`jump miniupnpd`);
//! - packets from outside that would open a new connection to the gateway
//!   itself are dropped in `input`, before conntrack confirms them, so an
//!   early hole-punching packet leaves no state that would make the
//!   masquerade pick another port;
//! - with [`NatConfig::drop_udp`], every UDP packet to be forwarded (either
//!   way) or sent by the gateway out of `ext` is dropped: a network where
//!   only TCP gets out.
//!
//! The tables and chains are those miniupnpd's nftables backend expects
//! (table `inet filter`, chains `miniupnpd`, `prerouting_miniupnpd`,
//! `postrouting_miniupnpd`). miniupnpd refuses a private external address,
//! so [`NatConfig::external`] must be outside RFC 1918 when
//! [`NatConfig::upnp`] is set (the addresses exist only inside the
//! namespaces). miniupnpd is held as an [`NsChild`] and killed by PID; the
//! namespace is deleted when the gateway drops.

use std::io;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::{veth, Netns, NsChild};

/// The gateway's interface towards the host.
pub const LAN_IF: &str = "lan";
/// The gateway's interface towards the outside (the uplink).
pub const EXT_IF: &str = "ext";

/// Where a host of a [`MeshBed`](super::mesh::MeshBed) sits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum HostKind {
    /// On the "internet" bridge itself, with its own public address.
    #[default]
    Public,
    /// Behind a port-preserving masquerading gateway, no UPnP.
    Nat,
    /// Behind a masquerading gateway running miniupnpd.
    NatUpnp,
    /// Behind a masquerading gateway that drops all UDP (no UPnP).
    NatNoUdp,
}

/// How to build a [`NatGateway`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NatConfig {
    /// The gateway's LAN address (a /24 shared with the host).
    pub lan: Ipv4Addr,
    /// The host's address on that LAN.
    pub host: Ipv4Addr,
    /// The gateway's external address, on `ext`: the public address of
    /// everything behind it.
    pub external: Ipv4Addr,
    /// Prefix length of [`external`](Self::external)'s network.
    pub external_len: u8,
    /// Other networks reachable on-link through `ext` (e.g. the public
    /// hosts' subnet on a shared bridge), as `A.B.C.D/N`.
    pub onlink: Vec<String>,
    /// Run miniupnpd on the gateway (UPnP IGD on the LAN side).
    pub upnp: bool,
    /// Drop every UDP packet forwarded between LAN and outside, and those
    /// the gateway sends out of `ext`.
    pub drop_udp: bool,
}

/// One redirection miniupnpd installed (a DNAT rule of its chain).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Redirect {
    /// `udp` or `tcp`.
    pub proto: String,
    /// The external port.
    pub external_port: u16,
    /// Where it goes: the internal address and port.
    pub internal: std::net::SocketAddrV4,
}

/// A NAT gateway namespace in front of a host. See the module doc.
#[derive(Debug)]
pub struct NatGateway {
    // Killed (by PID) before the namespace goes.
    miniupnpd: Option<NsChild>,
    ns: Netns,
    config: NatConfig,
    dir: PathBuf,
}

impl NatGateway {
    /// Creates the gateway namespace (name starting with `prefix`), joins
    /// it to `host` (the host's side named `host_if`, given
    /// [`NatConfig::host`] and a default route through the gateway) and
    /// sets up its LAN side. Its `ext` interface does not exist yet: join
    /// it to the uplink with [`veth`] (interface [`EXT_IF`] in
    /// [`netns`](Self::netns)), then call [`start`](Self::start). Files
    /// (rules, miniupnpd's configuration and log) go to `dir`.
    pub fn new(
        prefix: &str,
        host: &Netns,
        host_if: &str,
        config: NatConfig,
        dir: &Path,
    ) -> io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let ns = Netns::new(prefix)?;
        veth(&ns, LAN_IF, host, host_if)?;
        ns.exec(
            "ip",
            &["addr", "add", &format!("{}/24", config.lan), "dev", LAN_IF],
        )?;
        host.exec(
            "ip",
            &[
                "addr",
                "add",
                &format!("{}/24", config.host),
                "dev",
                host_if,
            ],
        )?;
        host.exec(
            "ip",
            &["route", "add", "default", "via", &config.lan.to_string()],
        )?;
        ns.exec("sysctl", &["-qw", "net.ipv4.ip_forward=1"])?;
        Ok(Self {
            miniupnpd: None,
            ns,
            config,
            dir: dir.to_owned(),
        })
    }

    /// Once `ext` exists: gives it the external address and the on-link
    /// routes, loads the rules and, with UPnP, starts miniupnpd and waits
    /// (up to 20 s) until it listens.
    pub fn start(&mut self) -> io::Result<()> {
        let c = &self.config;
        self.ns.exec(
            "ip",
            &[
                "addr",
                "add",
                &format!("{}/{}", c.external, c.external_len),
                "dev",
                EXT_IF,
            ],
        )?;
        for net in &c.onlink {
            self.ns.exec("ip", &["route", "add", net, "dev", EXT_IF])?;
        }
        let rules = self.dir.join("gateway.nft");
        std::fs::write(&rules, ruleset(c.drop_udp))?;
        self.ns.exec("nft", &["-f", &rules.to_string_lossy()])?;
        if c.upnp && self.miniupnpd.is_none() {
            self.miniupnpd = Some(self.start_miniupnpd()?);
        }
        Ok(())
    }

    fn start_miniupnpd(&self) -> io::Result<NsChild> {
        let conf = self.dir.join("miniupnpd.conf");
        let lan_net = Ipv4Addr::from(u32::from(self.config.lan) & 0xffff_ff00);
        std::fs::write(
            &conf,
            format!(
                "ext_ifname={EXT_IF}\n\
                 listening_ip={LAN_IF}\n\
                 port=0\n\
                 enable_upnp=yes\n\
                 enable_natpmp=no\n\
                 secure_mode=yes\n\
                 system_uptime=yes\n\
                 uuid=6c1d6d2a-5f0e-4b8e-9f63-2b1e7a0c0d02\n\
                 allow 1024-65535 {lan_net}/24 1024-65535\n\
                 deny 0-65535 0.0.0.0/0 0-65535\n"
            ),
        )?;
        let log = self.miniupnpd_log();
        let child = self.ns.spawn(
            "miniupnpd",
            &[
                "-d",
                "-f",
                &conf.to_string_lossy(),
                "-P",
                &self.dir.join("miniupnpd.pid").to_string_lossy(),
            ],
            &log,
        )?;
        let deadline = Instant::now() + Duration::from_secs(20);
        while !std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("HTTP listening")
        {
            if Instant::now() > deadline {
                return Err(io::Error::other(format!(
                    "miniupnpd did not start within 20 s; its log {}:\n{}",
                    log.display(),
                    std::fs::read_to_string(&log).unwrap_or_default()
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(child)
    }

    /// The gateway's namespace.
    pub fn netns(&self) -> &Netns {
        &self.ns
    }

    /// How it was built.
    pub fn config(&self) -> &NatConfig {
        &self.config
    }

    /// The address everything behind the gateway has outside.
    pub fn external(&self) -> Ipv4Addr {
        self.config.external
    }

    /// miniupnpd's log file (empty or absent without UPnP).
    pub fn miniupnpd_log(&self) -> PathBuf {
        self.dir.join("miniupnpd.log")
    }

    /// Whether miniupnpd runs (reaping it if it exited).
    pub fn miniupnpd_running(&mut self) -> bool {
        self.miniupnpd.as_mut().is_some_and(|c| !c.has_exited())
    }

    /// miniupnpd's redirection chain as `nft` lists it.
    pub fn redirections_text(&self) -> io::Result<String> {
        let out = self.ns.exec(
            "nft",
            &["list", "chain", "inet", "filter", "prerouting_miniupnpd"],
        )?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The port mappings miniupnpd currently has in the gateway's rules.
    pub fn redirections(&self) -> io::Result<Vec<Redirect>> {
        Ok(parse_redirections(&self.redirections_text()?))
    }
}

/// The gateway's nftables rules (see the module doc).
pub fn ruleset(drop_udp: bool) -> String {
    let (forward_udp, output_udp) = if drop_udp {
        (
            "    meta l4proto udp drop\n",
            format!(
                "  chain output {{\n    type filter hook output priority 0; policy accept;\n    \
                 oifname \"{EXT_IF}\" meta l4proto udp drop\n  }}\n"
            ),
        )
    } else {
        ("", String::new())
    };
    format!(
        "table inet filter {{\n  \
         chain miniupnpd {{\n  }}\n  \
         chain prerouting_miniupnpd {{\n  }}\n  \
         chain postrouting_miniupnpd {{\n  }}\n  \
         chain input {{\n    type filter hook input priority 0; policy accept;\n    \
         iifname \"{EXT_IF}\" ct state new drop\n  }}\n  \
         chain forward {{\n    type filter hook forward priority 0; policy drop;\n\
         {forward_udp}    \
         ct state established,related accept\n    \
         iifname \"{LAN_IF}\" oifname \"{EXT_IF}\" accept\n    \
         jump miniupnpd\n  }}\n\
         {output_udp}  \
         chain prerouting {{\n    type nat hook prerouting priority -100; policy accept;\n    \
         jump prerouting_miniupnpd\n  }}\n  \
         chain postrouting {{\n    type nat hook postrouting priority 100; policy accept;\n    \
         jump postrouting_miniupnpd\n    \
         oifname \"{EXT_IF}\" masquerade\n  }}\n\
         }}\n"
    )
}

/// Reads the DNAT rules of `nft list chain … prerouting_miniupnpd`, e.g.
/// `iif "ext" @nh,72,8 0x11 th dport 30476 dnat ip to 172.16.1.2:1194`
/// (miniupnpd matches the IP protocol byte, 0x11 udp or 0x6 tcp, and a
/// transport-header port) or `udp dport 30476 dnat …`. Lines that are not
/// such a rule are skipped.
pub fn parse_redirections(text: &str) -> Vec<Redirect> {
    text.lines()
        .filter(|line| line.contains("dnat"))
        .filter_map(|line| {
            let words: Vec<&str> = line.split_whitespace().collect();
            let dport = words.iter().position(|w| *w == "dport")?;
            let before = *words.get(dport.checked_sub(1)?)?;
            let proto = match before {
                "udp" | "tcp" => before.to_owned(),
                _ => {
                    let at = words.iter().position(|w| *w == "@nh,72,8")?;
                    match *words.get(at + 1)? {
                        "0x11" => "udp".to_owned(),
                        "0x6" | "0x06" => "tcp".to_owned(),
                        _ => return None,
                    }
                }
            };
            let external_port = words.get(dport + 1)?.parse().ok()?;
            let to = words.iter().position(|w| *w == "to")?;
            let internal = words.get(to + 1)?.parse().ok()?;
            Some(Redirect {
                proto,
                external_port,
                internal,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirections_are_read_from_nft_output() {
        let text = "table inet filter {\n\
            \tchain prerouting_miniupnpd {\n\
            \t\tiif \"ext\" @nh,72,8 0x11 th dport 41234 dnat ip to 172.16.3.2:1194\n\
            \t\tiif \"ext\" tcp dport 5000 dnat ip to 172.16.3.2:1194\n\
            \t\tiif \"ext\" @nh,72,8 0x84 th dport 5002 dnat ip to 172.16.3.2:1194\n\
            \t\tiif \"ext\" tcp dport 5001 accept\n\
            \t\tudp dport nonsense dnat ip to 1.2.3.4:5\n\
            \t}\n}\n";
        let r = parse_redirections(text);
        assert_eq!(
            r,
            [
                Redirect {
                    proto: "udp".into(),
                    external_port: 41234,
                    internal: "172.16.3.2:1194".parse().unwrap(),
                },
                Redirect {
                    proto: "tcp".into(),
                    external_port: 5000,
                    internal: "172.16.3.2:1194".parse().unwrap(),
                },
            ]
        );
        assert!(parse_redirections("").is_empty());
        assert!(parse_redirections("dport").is_empty());
    }

    #[test]
    fn udp_blocking_rules_only_when_asked() {
        let plain = ruleset(false);
        assert!(!plain.contains("udp drop"), "{plain}");
        assert!(plain.contains("oifname \"ext\" masquerade\n"), "{plain}");
        assert!(!plain.contains("random"), "{plain}");
        let blocked = ruleset(true);
        assert!(blocked.contains("    meta l4proto udp drop\n"), "{blocked}");
        assert!(
            blocked.contains("oifname \"ext\" meta l4proto udp drop"),
            "{blocked}"
        );
    }
}
