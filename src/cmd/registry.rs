//! `re6st registry`: create the CA, run the registry, and administer it.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::{Args, Subcommand};
use rand::RngCore;
use re6st::node::control::{NodeVersion, TopologyNode};
use re6st::pki::{self, Ca, Network};
use re6st::registry::community::Communities;
use re6st::registry::config::Ipv4Settings;
use re6st::registry::mail::{Mailer, SmtpOptions};
use re6st::registry::server::{self, Origin, Params, Registry, Settings};
use re6st::registry::store::Store;
use re6st::registry::RegistryClient;
use tokio::net::TcpListener;

const DAY: u64 = 86400;

/// `re6st registry ...`
#[derive(Args)]
pub(crate) struct RegistryArgs {
    #[command(subcommand)]
    command: RegistryCommand,
}

#[derive(Subcommand)]
enum RegistryCommand {
    /// Create the network CA: DIR/ca.key (0600) and DIR/ca.crt.
    Init(InitArgs),
    /// Run the registry HTTP service.
    Serve(Box<ServeOpts>),
    /// Revoke a certificate (by serial or CN): CRL updated, prefix freed.
    Revoke(RevokeArgs),
    /// Registration tokens: add, list, delete.
    Token(TokenArgs),
    /// Advance the staged Babel MAC key rotation by one step.
    RotateKeys(AdminArgs),
    /// List live certificates (serial, prefix, email, expiry).
    List(AdminArgs),
    /// Fetch, verify and print the signed network configuration.
    Config(ConfigArgs),
    /// Show the mesh: every node the registry's node reaches and its
    /// tunnel neighbours (text, or Graphviz with --dot).
    Topology(TopologyArgs),
    /// Show every reachable node's software and configuration versions.
    Versions(AdminArgs),
}

#[derive(Args)]
struct TopologyArgs {
    #[command(flatten)]
    admin: AdminArgs,
    /// Print a Graphviz graph (`dot -Tsvg`) instead of text.
    #[arg(long, conflicts_with = "json")]
    dot: bool,
}

#[derive(Args)]
struct ConfigArgs {
    /// URL of the registry.
    #[arg(long, env = "RE6ST_REGISTRY")]
    registry: String,
    /// CA certificate to verify the signature with (default: the one the
    /// registry serves, which only checks consistency).
    #[arg(long)]
    ca: Option<PathBuf>,
}

#[derive(Args)]
struct InitArgs {
    /// The network prefix, e.g. 2001:db8:42::/48.
    #[arg(long)]
    network: Network,
    /// Directory for ca.key and ca.crt (created if missing).
    #[arg(long)]
    dir: PathBuf,
    /// CA certificate lifetime in days.
    #[arg(long, default_value_t = 3650)]
    days: u32,
}

/// `re6st registry serve` options. Each may also be set in the TOML file
/// given with `--config` (same names, e.g. `prefix-length = 16`,
/// `listen = ["[::]:9201"]`, `ipv4 = ["10.42.0.0/16", "24"]`); the command
/// line wins, and a repeatable option given on the command line replaces
/// the file's list.
#[derive(Args, Default, serde::Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
struct ServeOpts {
    /// TOML file with any of these options.
    #[arg(long)]
    #[serde(skip)]
    config: Option<PathBuf>,
    /// Address to listen on (repeatable; IPv4 or IPv6), e.g. [::]:9201.
    #[arg(long)]
    listen: Vec<SocketAddr>,
    /// SQLite database (created if missing).
    #[arg(long)]
    db: Option<PathBuf>,
    /// CA certificate (PEM).
    #[arg(long)]
    ca: Option<PathBuf>,
    /// CA private key (PEM).
    #[arg(long)]
    key: Option<PathBuf>,
    /// SMTP relay `host[:port]`, or the path of an mbox file to append
    /// token mails to (any value containing '/') [default: localhost].
    #[arg(long)]
    mailhost: Option<String>,
    /// SMTP login.
    #[arg(long)]
    smtp_user: Option<String>,
    /// SMTP password.
    #[arg(long)]
    smtp_pwd: Option<String>,
    /// Use STARTTLS with the SMTP relay.
    #[arg(long)]
    smtp_starttls: bool,
    /// Sender address of token mails [default: re6st@localhost].
    #[arg(long)]
    mail_from: Option<String>,
    /// Prefix length of nodes registered by email (0 disables email
    /// registration) [default: 16].
    #[arg(long)]
    prefix_length: Option<u8>,
    /// Prefix length of anonymous nodes (0 or unset disables anonymous
    /// registration).
    #[arg(long)]
    anonymous_prefix_length: Option<u8>,
    /// Enable the IPv4 payload: network NET/N, each node getting a subnet
    /// of length PLEN.
    #[arg(long, num_args = 2, value_names = ["NET/N", "PLEN"])]
    ipv4: Option<Vec<String>>,
    /// Community file (lines: binary sub-prefix, then `*`, country codes
    /// or @continents).
    #[arg(long)]
    community: Option<PathBuf>,
    /// Days after expiry during which a certificate may still be renewed
    /// and its prefix stays reserved [default: 100].
    #[arg(long)]
    grace_period: Option<u64>,
    /// Lifetime of issued certificates, days [default: 365].
    #[arg(long)]
    validity: Option<u64>,
    /// Lifetime of registration tokens, days [default: 3].
    #[arg(long)]
    token_lifetime: Option<u64>,
    /// Oldest node protocol version allowed in the network [default: 1].
    #[arg(long)]
    min_protocol: Option<u32>,
    /// Address or ADDR/LEN allowed to call admin endpoints (repeatable)
    /// [default: loopback only].
    #[arg(long)]
    #[serde(deserialize_with = "origins")]
    authorized_origin: Vec<Origin>,
    /// Babel hello interval published to nodes, seconds [default: 15].
    #[arg(long)]
    hello: Option<u32>,
    /// Outgoing tunnels per node [default: 10].
    #[arg(long)]
    client_count: Option<u32>,
    /// Incoming tunnels per node at most [default: 2 × client-count].
    #[arg(long)]
    max_clients: Option<u32>,
    /// Seconds between tunnel refreshes [default: 300].
    #[arg(long)]
    tunnel_refresh: Option<u32>,
    /// Seconds between housekeeping runs (expired certificates, tokens)
    /// [default: 600].
    #[arg(long)]
    housekeeping_interval: Option<u64>,
    /// Control socket of the node running on this host (e.g.
    /// /run/re6st/control.sock): it answers bootstrap requests and the
    /// topology and versions views [default: none].
    #[arg(long, value_name = "PATH")]
    node_control: Option<PathBuf>,
}

fn origins<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<Origin>, D::Error> {
    let v: Vec<String> = serde::Deserialize::deserialize(d)?;
    v.iter()
        .map(|s| s.parse().map_err(serde::de::Error::custom))
        .collect()
}

/// The command line's list when given, else the file's.
fn prefer<T>(cli: Vec<T>, file: Vec<T>) -> Vec<T> {
    if cli.is_empty() {
        file
    } else {
        cli
    }
}

/// The resolved options of `registry serve`.
struct ServeArgs {
    listen: Vec<SocketAddr>,
    db: PathBuf,
    ca: PathBuf,
    key: PathBuf,
    mailhost: String,
    smtp_user: Option<String>,
    smtp_pwd: Option<String>,
    smtp_starttls: bool,
    mail_from: String,
    prefix_length: u8,
    anonymous_prefix_length: u8,
    ipv4: Option<Vec<String>>,
    community: Option<PathBuf>,
    grace_period: u64,
    validity: u64,
    token_lifetime: u64,
    min_protocol: u32,
    authorized_origin: Vec<Origin>,
    hello: u32,
    client_count: u32,
    max_clients: Option<u32>,
    tunnel_refresh: u32,
    housekeeping_interval: u64,
    node_control: Option<PathBuf>,
}

impl ServeOpts {
    /// Command line over config file over defaults.
    fn resolve(self) -> anyhow::Result<ServeArgs> {
        let file: Self = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read {}", path.display()))?;
                toml::from_str(&text).with_context(|| format!("config file {}", path.display()))?
            }
            None => Self::default(),
        };

        let required = |v: Option<PathBuf>, name: &str| {
            v.with_context(|| format!("--{name} is required (or `{name}` in --config)"))
        };
        let listen = prefer(self.listen, file.listen);
        if listen.is_empty() {
            bail!("--listen is required (or `listen` in --config)");
        }
        if self.smtp_user.is_some() != self.smtp_pwd.is_some()
            && file.smtp_user.is_none()
            && file.smtp_pwd.is_none()
        {
            bail!("--smtp-user and --smtp-pwd go together");
        }
        Ok(ServeArgs {
            listen,
            db: required(self.db.or(file.db), "db")?,
            ca: required(self.ca.or(file.ca), "ca")?,
            key: required(self.key.or(file.key), "key")?,
            mailhost: self
                .mailhost
                .or(file.mailhost)
                .unwrap_or_else(|| "localhost".into()),
            smtp_user: self.smtp_user.or(file.smtp_user),
            smtp_pwd: self.smtp_pwd.or(file.smtp_pwd),
            smtp_starttls: self.smtp_starttls || file.smtp_starttls,
            mail_from: self
                .mail_from
                .or(file.mail_from)
                .unwrap_or_else(|| "re6st@localhost".into()),
            prefix_length: self.prefix_length.or(file.prefix_length).unwrap_or(16),
            anonymous_prefix_length: self
                .anonymous_prefix_length
                .or(file.anonymous_prefix_length)
                .unwrap_or(0),
            ipv4: match self.ipv4.or(file.ipv4) {
                Some(v) if v.len() != 2 => bail!("ipv4 takes two values: NET/N and PLEN"),
                v => v,
            },
            community: self.community.or(file.community),
            grace_period: self.grace_period.or(file.grace_period).unwrap_or(100),
            validity: self.validity.or(file.validity).unwrap_or(365),
            token_lifetime: self.token_lifetime.or(file.token_lifetime).unwrap_or(3),
            min_protocol: self.min_protocol.or(file.min_protocol).unwrap_or(1),
            authorized_origin: prefer(self.authorized_origin, file.authorized_origin),
            hello: self.hello.or(file.hello).unwrap_or(15),
            client_count: self.client_count.or(file.client_count).unwrap_or(10),
            max_clients: self.max_clients.or(file.max_clients),
            tunnel_refresh: self.tunnel_refresh.or(file.tunnel_refresh).unwrap_or(300),
            housekeeping_interval: self
                .housekeeping_interval
                .or(file.housekeeping_interval)
                .unwrap_or(600),
            node_control: self.node_control.or(file.node_control),
        })
    }
}

#[derive(Args)]
struct AdminArgs {
    /// URL of the running registry, e.g. http://127.0.0.1:9201.
    #[arg(long, env = "RE6ST_REGISTRY")]
    registry: String,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
#[group(required = true, multiple = false)]
struct RevokeTarget {
    /// Certificate serial.
    #[arg(long)]
    serial: Option<u64>,
    /// Certificate CN, the node prefix (e.g. 5/16).
    #[arg(long)]
    cn: Option<String>,
}

#[derive(Args)]
struct RevokeArgs {
    #[command(flatten)]
    admin: AdminArgs,
    #[command(flatten)]
    target: RevokeTarget,
}

#[derive(Args)]
struct TokenArgs {
    #[command(subcommand)]
    command: TokenCommand,
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Create a token and print it (not mailed).
    Add {
        #[command(flatten)]
        admin: AdminArgs,
        /// Email of the token's owner.
        #[arg(long)]
        email: String,
        /// Prefix length it entitles to (default: the registry's).
        #[arg(long)]
        prefix_len: Option<u8>,
    },
    /// List tokens.
    List(AdminArgs),
    /// Delete a token.
    Delete {
        #[command(flatten)]
        admin: AdminArgs,
        /// The token.
        token: String,
    },
}

/// Runs `re6st registry ...`.
pub(crate) fn run(args: RegistryArgs) -> anyhow::Result<()> {
    match args.command {
        RegistryCommand::Init(a) => init(a),
        RegistryCommand::Serve(a) => {
            let a = a.resolve()?;
            runtime()?.block_on(serve(a))
        }
        RegistryCommand::Revoke(a) => runtime()?.block_on(revoke(a)),
        RegistryCommand::Token(a) => runtime()?.block_on(token(a)),
        RegistryCommand::RotateKeys(a) => runtime()?.block_on(async {
            let r = client(&a)?.rotate_keys().await?;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                println!(
                    "babel keys: {} (configuration version {})",
                    serde_json::to_value(r.stage)?.as_str().unwrap_or("?"),
                    r.version
                );
            }
            Ok(())
        }),
        RegistryCommand::Config(a) => runtime()?.block_on(show_config(a)),
        RegistryCommand::Topology(a) => runtime()?.block_on(async {
            let nodes = client(&a.admin)?.topology().await?;
            if a.admin.json {
                println!("{}", serde_json::to_string_pretty(&nodes)?);
            } else if a.dot {
                print!("{}", topology_dot(&nodes));
            } else {
                print!("{}", topology_text(&nodes));
            }
            Ok(())
        }),
        RegistryCommand::Versions(a) => runtime()?.block_on(async {
            let nodes = client(&a)?.versions().await?;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&nodes)?);
            } else {
                print!("{}", versions_text(&nodes));
            }
            Ok(())
        }),
        RegistryCommand::List(a) => runtime()?.block_on(async {
            let certs = client(&a)?.certs().await?;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&certs)?);
                return Ok(());
            }
            println!(
                "{:>8}  {:<24}  {:<30}  expires",
                "serial", "prefix", "email"
            );
            for c in certs {
                println!(
                    "{:>8}  {:<24}  {:<30}  {}",
                    c.serial,
                    c.prefix,
                    c.email.as_deref().unwrap_or("(anonymous)"),
                    re6st::registry::mail::asctime(c.not_after)
                );
            }
            Ok(())
        }),
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

fn client(a: &AdminArgs) -> anyhow::Result<RegistryClient> {
    Ok(RegistryClient::new(&a.registry)?)
}

fn init(a: InitArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&a.dir)
        .with_context(|| format!("cannot create {}", a.dir.display()))?;
    let ca = Ca::generate(a.network, a.days)?;
    ca.write(&a.dir)
        .with_context(|| format!("cannot write the CA into {}", a.dir.display()))?;
    println!("network {}", ca.network());
    println!("CA certificate {}", a.dir.join("ca.crt").display());
    println!("CA key {}", a.dir.join("ca.key").display());
    println!("fingerprint {}", pki::fingerprint(ca.cert_der()));
    Ok(())
}

async fn serve(a: ServeArgs) -> anyhow::Result<()> {
    let ca = Ca::load(&a.ca, &a.key).with_context(|| {
        format!(
            "cannot load the CA from {} and {}",
            a.ca.display(),
            a.key.display()
        )
    })?;
    let network = ca.network();
    let node_bits = 128 - network.len();
    for (name, len) in [
        ("--prefix-length", a.prefix_length),
        ("--anonymous-prefix-length", a.anonymous_prefix_length),
    ] {
        if len > node_bits {
            bail!("{name} {len} is longer than the {node_bits} node bits of {network}");
        }
    }
    let communities = match &a.community {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            Communities::parse(&text, node_bits)
                .with_context(|| format!("community file {}", path.display()))?
        }
        None => Communities::whole(),
    };
    let ipv4 = match &a.ipv4 {
        Some(v) => Some(parse_ipv4(&v[0], &v[1])?),
        None => None,
    };
    let params = Params {
        hello: a.hello,
        client_count: a.client_count,
        max_clients: a.max_clients.unwrap_or(2 * a.client_count),
        tunnel_refresh: a.tunnel_refresh,
        min_protocol: a.min_protocol,
        ipv4,
    };
    let mut first_key = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut first_key);
    let store = Store::open(
        &a.db,
        network,
        &communities,
        &params.fingerprint(),
        first_key,
    )
    .with_context(|| format!("database {}", a.db.display()))?;
    let mailer = Mailer::new(&SmtpOptions {
        mailhost: a.mailhost.clone(),
        user: a.smtp_user.clone(),
        password: a.smtp_pwd.clone(),
        starttls: a.smtp_starttls,
    })?;
    let settings = Settings {
        params,
        prefix_length: a.prefix_length,
        anonymous_prefix_length: a.anonymous_prefix_length,
        grace_period: a.grace_period * DAY,
        validity: a.validity * DAY,
        token_lifetime: a.token_lifetime * DAY,
        authorized: if a.authorized_origin.is_empty() {
            Origin::loopback()
        } else {
            a.authorized_origin.clone()
        },
        mail_from: a.mail_from.clone(),
        communities,
        node_control: a.node_control.clone(),
    };
    let mut listeners = Vec::new();
    for addr in &a.listen {
        listeners.push(bind(*addr).with_context(|| format!("cannot listen on {addr}"))?);
    }
    let registry = Arc::new(Registry::new(ca, store, mailer, settings));
    for l in &listeners {
        tracing::info!(
            "registry for {network} listening on http://{}",
            l.local_addr()?
        );
    }
    server::serve(
        registry,
        listeners,
        Duration::from_secs(a.housekeeping_interval.max(1)),
        shutdown_signal(),
    )
    .await?;
    tracing::info!("registry stopped");
    Ok(())
}

/// Binds a listener; IPv6 sockets are IPv6-only so `[::]:P` and
/// `0.0.0.0:P` can both be given.
fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    TcpListener::from_std(socket.into())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

fn parse_ipv4(net: &str, plen: &str) -> anyhow::Result<Ipv4Settings> {
    let (addr, len) = net
        .split_once('/')
        .context("--ipv4 expects NET/N PLEN, e.g. 10.42.0.0/16 24")?;
    let addr: std::net::Ipv4Addr = addr
        .parse()
        .with_context(|| format!("--ipv4: bad address {addr:?}"))?;
    let len: u8 = len
        .parse()
        .ok()
        .filter(|l| *l <= 32)
        .with_context(|| format!("--ipv4: bad length {len:?}"))?;
    let plen: u8 = plen
        .parse()
        .ok()
        .filter(|p| *p >= len && *p <= 32)
        .with_context(|| format!("--ipv4: PLEN {plen:?} must be between {len} and 32"))?;
    if len < 32 && u32::from(addr) & (u32::MAX >> len) != 0 {
        bail!("--ipv4: {net} has host bits set");
    }
    Ok(Ipv4Settings {
        network: format!("{addr}/{len}"),
        prefix_len: plen,
    })
}

async fn show_config(a: ConfigArgs) -> anyhow::Result<()> {
    let client = RegistryClient::new(&a.registry)?;
    let ca_pem = match &a.ca {
        Some(p) => {
            std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))?
        }
        None => client.ca().await?.ca,
    };
    let signed = client.config(None).await?;
    let config = signed.verify(&ca_key(&ca_pem)?)?;
    println!("{}", serde_json::to_string_pretty(&config)?);
    Ok(())
}

/// The Ed25519 key of a CA certificate (PEM).
fn ca_key(pem: &str) -> anyhow::Result<ed25519_dalek::VerifyingKey> {
    use der::{Decode as _, Encode as _};
    use ed25519_dalek::pkcs8::DecodePublicKey as _;
    let (_, der) = der::pem::decode_vec(pem.as_bytes())
        .map_err(|e| anyhow::anyhow!("bad CA certificate: {e}"))?;
    let cert = x509_cert::Certificate::from_der(&der).context("bad CA certificate")?;
    let spki = cert.tbs_certificate.subject_public_key_info.to_der()?;
    ed25519_dalek::VerifyingKey::from_public_key_der(&spki)
        .map_err(|e| anyhow::anyhow!("CA key is not Ed25519: {e}"))
}

async fn revoke(a: RevokeArgs) -> anyhow::Result<()> {
    let c = client(&a.admin)?;
    let r = match (a.target.serial, &a.target.cn) {
        (Some(s), _) => c.revoke_serial(s).await?,
        (None, Some(cn)) => c.revoke_cn(cn).await?,
        (None, None) => bail!("give --serial or --cn"),
    };
    if a.admin.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        println!(
            "revoked serial {} (prefix {}); configuration version {}",
            r.serial, r.prefix, r.version
        );
    }
    Ok(())
}

async fn token(a: TokenArgs) -> anyhow::Result<()> {
    match a.command {
        TokenCommand::Add {
            admin,
            email,
            prefix_len,
        } => {
            let t = client(&admin)?.add_token(&email, prefix_len).await?;
            if admin.json {
                println!("{}", serde_json::to_string_pretty(&t)?);
            } else {
                println!("{}", t.token);
            }
        }
        TokenCommand::List(admin) => {
            let list = client(&admin)?.tokens().await?;
            if admin.json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                println!("{:<22}  {:<30}  {:>3}  expires", "token", "email", "len");
                for t in list {
                    println!(
                        "{:<22}  {:<30}  {:>3}  {}",
                        t.token,
                        t.email,
                        t.prefix_len,
                        re6st::registry::mail::asctime(t.expires)
                    );
                }
            }
        }
        TokenCommand::Delete { admin, token } => {
            client(&admin)?.delete_token(&token).await?;
            if !admin.json {
                println!("deleted {token}");
            }
        }
    }
    Ok(())
}

/// The tunnels of a topology, each once (`a < b`).
fn tunnels(nodes: &[TopologyNode]) -> BTreeSet<(&str, &str)> {
    let mut edges = BTreeSet::new();
    for n in nodes {
        for m in n.neighbours.iter().flatten() {
            let (a, b) = (n.prefix.as_str(), m.as_str());
            edges.insert(if a <= b { (a, b) } else { (b, a) });
        }
    }
    edges
}

/// One line per node: its prefix and its neighbours.
fn topology_text(nodes: &[TopologyNode]) -> String {
    let mut out = format!("{} nodes, {} tunnels\n", nodes.len(), tunnels(nodes).len());
    let width = nodes.iter().map(|n| n.prefix.len()).max().unwrap_or(0);
    for n in nodes {
        let neighbours = match &n.neighbours {
            Some(list) if list.is_empty() => "(no tunnel)".to_owned(),
            Some(list) => list.join(" "),
            None => "(did not answer)".to_owned(),
        };
        out.push_str(&format!("{:<width$}  {neighbours}\n", n.prefix));
    }
    out
}

/// A Graphviz graph: one vertex per node (dashed when it did not answer),
/// one edge per tunnel.
fn topology_dot(nodes: &[TopologyNode]) -> String {
    let mut out = String::from("graph re6st {\n");
    for n in nodes {
        let style = if n.neighbours.is_none() {
            " [style=dashed]"
        } else {
            ""
        };
        out.push_str(&format!("  \"{}\"{style};\n", n.prefix));
    }
    for (a, b) in tunnels(nodes) {
        out.push_str(&format!("  \"{a}\" -- \"{b}\";\n"));
    }
    out.push_str("}\n");
    out
}

/// A table of the nodes' versions.
fn versions_text(nodes: &[NodeVersion]) -> String {
    let width = nodes
        .iter()
        .map(|n| n.prefix.len())
        .chain([6])
        .max()
        .unwrap_or(6);
    let soft = nodes
        .iter()
        .filter_map(|n| n.software.as_ref().map(String::len))
        .chain([8])
        .max()
        .unwrap_or(8);
    let mut out = format!("{:<width$}  {:<soft$}  config\n", "prefix", "software");
    for n in nodes {
        match (&n.software, n.config_version) {
            (None, None) => out.push_str(&format!("{:<width$}  (did not answer)\n", n.prefix)),
            (software, config) => out.push_str(&format!(
                "{:<width$}  {:<soft$}  {}\n",
                n.prefix,
                software.as_deref().unwrap_or("?"),
                config.map_or_else(|| "?".to_owned(), |v| v.to_string())
            )),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topology() -> Vec<TopologyNode> {
        let node = |p: &str, n: Option<&[&str]>| TopologyNode {
            prefix: p.into(),
            neighbours: n.map(|n| n.iter().map(|s| s.to_string()).collect()),
        };
        vec![
            node("0/16", Some(&["2/16", "5/16"])),
            node("2/16", Some(&["0/16"])),
            node("5/16", None),
            node("12/16", Some(&[])),
        ]
    }

    #[test]
    fn topology_views() {
        assert_eq!(
            topology_text(&topology()),
            "4 nodes, 2 tunnels\n\
             0/16   2/16 5/16\n\
             2/16   0/16\n\
             5/16   (did not answer)\n\
             12/16  (no tunnel)\n"
        );
        assert_eq!(
            topology_dot(&topology()),
            "graph re6st {\n  \"0/16\";\n  \"2/16\";\n  \"5/16\" [style=dashed];\n  \"12/16\";\n  \
             \"0/16\" -- \"2/16\";\n  \"0/16\" -- \"5/16\";\n}\n"
        );
        assert_eq!(topology_text(&[]), "0 nodes, 0 tunnels\n");
    }

    #[test]
    fn versions_view() {
        let nodes = [
            NodeVersion {
                prefix: "0/16".into(),
                software: Some("0.1.0".into()),
                config_version: Some(7),
            },
            NodeVersion {
                prefix: "5/16".into(),
                software: None,
                config_version: None,
            },
            NodeVersion {
                prefix: "123456/20".into(),
                software: Some("re6st 0.2.0".into()),
                config_version: None,
            },
        ];
        assert_eq!(
            versions_text(&nodes),
            "prefix     software     config\n\
             0/16       0.1.0        7\n\
             5/16       (did not answer)\n\
             123456/20  re6st 0.2.0  ?\n"
        );
    }

    #[test]
    fn serve_config_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("registry.toml");
        std::fs::write(
            &path,
            "listen = [\"[::]:9201\", \"0.0.0.0:9201\"]\ndb = \"/r.db\"\nca = \"/ca.crt\"\nkey = \"/ca.key\"\n\
             prefix-length = 20\nhello = 4\nauthorized-origin = [\"10.0.0.0/8\"]\nipv4 = [\"10.42.0.0/16\", \"24\"]\n",
        )
        .unwrap();
        let cli = ServeOpts {
            config: Some(path.clone()),
            hello: Some(7),
            ..Default::default()
        };
        let a = cli.resolve().unwrap();
        assert_eq!(a.listen.len(), 2);
        assert_eq!((a.prefix_length, a.hello, a.client_count), (20, 7, 10));
        assert_eq!(
            a.authorized_origin,
            vec!["10.0.0.0/8".parse::<Origin>().unwrap()]
        );
        assert_eq!(a.db, PathBuf::from("/r.db"));
        std::fs::write(&path, "listen = [\"[::]:9201\"]\nbogus = 1\n").unwrap();
        let cli = ServeOpts {
            config: Some(path.clone()),
            ..Default::default()
        };
        assert!(cli.resolve().is_err());
        assert!(ServeOpts::default().resolve().is_err());
    }

    #[test]
    fn ipv4_option() {
        let s = parse_ipv4("10.42.0.0/16", "24").unwrap();
        assert_eq!(s.network, "10.42.0.0/16");
        assert_eq!(s.prefix_len, 24);
        for (n, p) in [
            ("10.42.0.1/16", "24"),
            ("10.42.0.0/16", "8"),
            ("10.42.0.0/33", "33"),
            ("x/8", "8"),
            ("10.0.0.0", "8"),
        ] {
            assert!(parse_ipv4(n, p).is_err(), "{n} {p}");
        }
    }
}
