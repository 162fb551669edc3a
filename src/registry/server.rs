//! The registry HTTP server (axum): routes, error answers, node
//! authentication, admin origin checks and housekeeping.
//!
//! The bootstrap endpoint and the admin `topology` and `versions` views are
//! answered by the node running on the registry host, asked over its
//! control socket ([`Settings::node_control`], see `crate::node::control`).
//!
//! Every answer is JSON. Errors are `{"error": CODE, "detail": TEXT}` with a
//! 4xx status for anything the client got wrong; a 5xx only means the
//! registry itself failed (database, mail relay) or cannot help yet. Bodies
//! are read with a hard limit ([`MAX_BODY`]) and parsed by
//! [`parse_request`], never by a panicking path.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use axum::body::{to_bytes, Body, Bytes};
use axum::extract::{ConnectInfo, Path as UrlPath, Request, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use base64::Engine as _;
use ed25519_dalek::VerifyingKey;
use rand::RngCore;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::net::TcpListener;

use super::allocator::Block;
use super::api::{
    parse_request, AddTokenRequest, BodyError, BootstrapResponse, CaResponse, CertRequest,
    CertResponse, ErrorBody, RenewRequest, RevokeRequest, RotateResponse, TokenRequest, TokenSent,
    MAX_BODY,
};
use super::auth::{AuthHeaders, ReplayGuard};
use super::community::{parse_locations, Communities};
use super::config::{Ipv4Settings, NetworkConfig, SignedConfig};
use super::mail::Mailer;
use super::store::{unix, IssueParams, RevokeTarget, Store, StoreError};
use crate::node::control::{self, NodeVersion, TopologyNode};
use crate::node::Address;
use crate::pki::{self, Ca, Csr};

/// The parameters the registry publishes in the network configuration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Params {
    /// Babel hello interval, seconds.
    pub hello: u32,
    /// Outgoing tunnels per node.
    pub client_count: u32,
    /// Incoming tunnels per node at most.
    pub max_clients: u32,
    /// Tunnel refresh period, seconds.
    pub tunnel_refresh: u32,
    /// Oldest node protocol version allowed.
    pub min_protocol: u32,
    /// IPv4 payload settings.
    pub ipv4: Option<Ipv4Settings>,
}

impl Params {
    /// A stable fingerprint, to bump the configuration version when the
    /// parameters change between runs.
    pub fn fingerprint(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// An authorised origin for admin calls: an address and a prefix length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Origin {
    addr: IpAddr,
    len: u8,
}

impl Origin {
    /// Loopback: `127.0.0.0/8` and `::1`.
    pub fn loopback() -> Vec<Self> {
        vec![
            Self {
                addr: IpAddr::from([127, 0, 0, 0]),
                len: 8,
            },
            Self {
                addr: IpAddr::from([0u16, 0, 0, 0, 0, 0, 0, 1]),
                len: 128,
            },
        ]
    }

    /// Whether `ip` (IPv4-mapped IPv6 counts as IPv4) is inside.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        match (self.addr, ip) {
            (IpAddr::V4(a), IpAddr::V4(b)) => mask_eq(&a.octets(), &b.octets(), self.len),
            (IpAddr::V6(a), IpAddr::V6(b)) => mask_eq(&a.octets(), &b.octets(), self.len),
            _ => false,
        }
    }
}

impl std::str::FromStr for Origin {
    type Err = String;

    /// `ADDR` or `ADDR/LEN`, IPv4 or IPv6.
    fn from_str(s: &str) -> Result<Self, String> {
        let (a, l) = s.split_once('/').map_or((s, None), |(a, l)| (a, Some(l)));
        let addr: IpAddr = a.parse().map_err(|_| format!("bad address {a:?}"))?;
        let addr = addr.to_canonical();
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len = match l {
            None => max,
            Some(l) => l
                .parse()
                .ok()
                .filter(|l| *l <= max)
                .ok_or(format!("bad prefix length {l:?}"))?,
        };
        Ok(Self { addr, len })
    }
}

fn mask_eq(a: &[u8], b: &[u8], len: u8) -> bool {
    let full = usize::from(len / 8);
    let rest = len % 8;
    a[..full] == b[..full] && (rest == 0 || (a[full] ^ b[full]) >> (8 - rest) == 0)
}

/// Everything the server needs besides the CA and the store.
pub struct Settings {
    /// Published parameters.
    pub params: Params,
    /// Prefix length for email registration (0 disables it).
    pub prefix_length: u8,
    /// Prefix length for anonymous registration (0 disables it).
    pub anonymous_prefix_length: u8,
    /// Seconds after expiry during which renewal is allowed and the prefix
    /// stays reserved.
    pub grace_period: u64,
    /// Certificate lifetime, seconds.
    pub validity: u64,
    /// Token lifetime, seconds.
    pub token_lifetime: u64,
    /// Who may call the admin endpoints.
    pub authorized: Vec<Origin>,
    /// Sender of token mails.
    pub mail_from: String,
    /// Communities.
    pub communities: Communities,
    /// The control socket of the node running on the registry host, which
    /// answers bootstrap requests and the admin `topology` and `versions`
    /// views; without it bootstrap is always `no_peer` and those views
    /// `no_node`.
    pub node_control: Option<PathBuf>,
}

/// Requests handled at once; more wait for a slot.
pub const MAX_CONCURRENT: usize = 64;
/// Time limit of one request, slot wait included.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the registry waits for its node's answer to a bootstrap
/// request.
pub const NODE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the registry waits for its node's mesh walk (`topology`,
/// `versions`); less than [`REQUEST_TIMEOUT`] so the error is the node's.
pub const NODE_WALK_TIMEOUT: Duration = Duration::from_secs(25);
/// How many times the node is asked for a bootstrap peer when it picks
/// the requester itself.
pub const BOOTSTRAP_TRIES: usize = 3;

/// The running registry: CA, database, settings.
pub struct Registry {
    slots: tokio::sync::Semaphore,
    ca: Ca,
    store: Mutex<Store>,
    replay: Mutex<ReplayGuard>,
    mailer: Mailer,
    settings: Settings,
}

impl Registry {
    /// A registry over an opened store.
    pub fn new(ca: Ca, store: Store, mailer: Mailer, settings: Settings) -> Self {
        Self {
            slots: tokio::sync::Semaphore::new(MAX_CONCURRENT),
            ca,
            store: Mutex::new(store),
            replay: Mutex::new(ReplayGuard::new()),
            mailer,
            settings,
        }
    }

    /// Runs housekeeping once (see [`Store::sweep`]).
    pub fn sweep(&self, now: u64) -> Result<super::store::Swept, StoreError> {
        self.lock().sweep(self.settings.grace_period, now)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Store> {
        // A panic while holding the lock cannot leave a transaction half
        // applied (SQLite rolls it back), so a poisoned lock is still usable.
        self.store
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn network_config(
        &self,
        store: &Store,
        recipient: Option<&VerifyingKey>,
    ) -> Result<NetworkConfig, StoreError> {
        let p = &self.settings.params;
        Ok(NetworkConfig {
            version: store.config_version()?,
            network: self.ca.network().to_string(),
            hello: p.hello,
            client_count: p.client_count,
            max_clients: p.max_clients,
            tunnel_refresh: p.tunnel_refresh,
            crl: store.crl()?,
            registry_prefix: store.registry_prefix()?,
            min_protocol: p.min_protocol,
            ipv4: p.ipv4.clone(),
            babel_keys: match recipient {
                Some(k) => Some(store.babel_keys()?.seal(k)),
                None => None,
            },
        })
    }
}

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    detail: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        Self {
            status,
            code,
            detail: detail.into(),
        }
    }

    fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", detail)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::warn!(code = self.code, "{}", self.detail);
        }
        let body = ErrorBody {
            error: self.code.into(),
            detail: self.detail,
        };
        (self.status, Json(body)).into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        let detail = e.to_string();
        let (status, code) = match e {
            StoreError::BadToken => (StatusCode::FORBIDDEN, "bad_token"),
            StoreError::Exhausted => (StatusCode::SERVICE_UNAVAILABLE, "exhausted"),
            StoreError::BadLength(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            StoreError::UnknownCert | StoreError::UnknownToken => {
                (StatusCode::NOT_FOUND, "not_found")
            }
            StoreError::Expired => (StatusCode::FORBIDDEN, "expired"),
            StoreError::KeyMismatch => (StatusCode::BAD_REQUEST, "bad_csr"),
            StoreError::Db(_)
            | StoreError::Corrupt(_)
            | StoreError::Incompatible(_)
            | StoreError::Issue(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        };
        Self::new(status, code, detail)
    }
}

impl From<BodyError> for ApiError {
    fn from(e: BodyError) -> Self {
        match e {
            BodyError::TooLarge => {
                Self::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", e.to_string())
            }
            BodyError::Json(j) => Self::bad_request(format!("invalid request body: {j}")),
        }
    }
}

type ApiResult<T> = Result<Json<T>, ApiError>;
type Shared = Arc<Registry>;

/// The axum router of the API. Serve it with connect info
/// (`into_make_service_with_connect_info::<SocketAddr>()`), which the admin
/// origin check needs.
pub fn router(registry: Shared) -> Router {
    let admin = Router::new()
        .route("/admin/revoke", post(admin_revoke))
        .route("/admin/tokens", post(admin_add_token).get(admin_tokens))
        .route("/admin/tokens/{token}", delete(admin_delete_token))
        .route("/admin/rotate-keys", post(admin_rotate))
        .route("/admin/certs", get(admin_certs))
        .route("/admin/topology", get(admin_topology))
        .route("/admin/versions", get(admin_versions))
        .route_layer(middleware::from_fn_with_state(registry.clone(), admin_only));
    Router::new()
        .route("/ca", get(get_ca))
        .route("/token", post(request_token))
        .route("/cert", post(request_cert))
        .route("/renew", post(renew))
        .route("/config", get(config))
        .route("/bootstrap", post(bootstrap))
        .merge(admin)
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
        })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "method not allowed here",
            )
        })
        .layer(middleware::from_fn_with_state(registry.clone(), limit))
        .with_state(registry)
}

/// Caps concurrent requests and bounds each one in time.
async fn limit(State(reg): State<Shared>, req: Request, next: Next) -> Response {
    let run = async {
        // The semaphore is never closed.
        let _permit = reg.slots.acquire().await;
        next.run(req).await
    };
    match tokio::time::timeout(REQUEST_TIMEOUT, run).await {
        Ok(r) => r,
        Err(_) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "timeout",
            "request took too long",
        )
        .into_response(),
    }
}

/// Serves the API on `listeners` until `shutdown` completes, running
/// housekeeping every `sweep_every`.
pub async fn serve(
    registry: Shared,
    listeners: Vec<TcpListener>,
    sweep_every: Duration,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (tx, rx) = tokio::sync::watch::channel(false);
    let housekeeping = {
        let registry = registry.clone();
        let mut rx = rx.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(sweep_every);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = rx.changed() => break,
                }
                let r = registry.clone();
                let res =
                    tokio::task::spawn_blocking(move || r.sweep(unix(SystemTime::now()))).await;
                match res {
                    Ok(Ok(s)) if s != Default::default() => tracing::info!(
                        certs = s.certs,
                        tokens = s.tokens,
                        crl = s.crl,
                        "housekeeping removed expired entries"
                    ),
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => tracing::warn!("housekeeping failed: {e}"),
                    Err(e) => tracing::warn!("housekeeping task failed: {e}"),
                }
            }
        })
    };
    let app = router(registry);
    let mut tasks = Vec::new();
    for l in listeners {
        let app = app.clone();
        let mut rx = rx.clone();
        tasks.push(tokio::spawn(async move {
            axum::serve(l, app.into_make_service_with_connect_info::<SocketAddr>())
                .with_graceful_shutdown(async move {
                    let _ = rx.changed().await;
                })
                .await
        }));
    }
    shutdown.await;
    let _ = tx.send(true);
    let mut result = Ok(());
    for t in tasks {
        match t.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => result = Err(e),
            Err(e) => result = Err(std::io::Error::other(e)),
        }
    }
    let _ = housekeeping.await;
    result
}

async fn admin_only(
    State(reg): State<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
    next: Next,
) -> Response {
    if reg
        .settings
        .authorized
        .iter()
        .any(|o| o.contains(peer.ip()))
    {
        next.run(req).await
    } else {
        ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("admin calls are not allowed from {}", peer.ip()),
        )
        .into_response()
    }
}

async fn read_body(body: Body) -> Result<Bytes, ApiError> {
    to_bytes(body, MAX_BODY)
        .await
        .map_err(|_| ApiError::from(BodyError::TooLarge))
}

async fn json_body<T: DeserializeOwned>(body: Body) -> Result<T, ApiError> {
    Ok(parse_request(&read_body(body).await?)?)
}

/// Runs `f` on the store in a blocking task.
async fn with_store<T: Send + 'static>(
    reg: &Shared,
    f: impl FnOnce(&Registry, &mut Store) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    let reg = reg.clone();
    tokio::task::spawn_blocking(move || {
        let mut store = reg.lock();
        f(&reg, &mut store)
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?
}

/// A verified node: its certificate serial, key and prefix.
struct Node {
    serial: u64,
    key: VerifyingKey,
    prefix: Block,
}

async fn authenticate(
    reg: &Shared,
    method: &Method,
    uri: &axum::http::Uri,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<Node, ApiError> {
    let unauthorized = |d: String| ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", d);
    let auth = AuthHeaders::from_lookup(|n| headers.get(n).and_then(|v| v.to_str().ok()))
        .map_err(|e| unauthorized(e.to_string()))?
        .ok_or_else(|| unauthorized("node authentication required".into()))?;
    let path = uri
        .path_and_query()
        .map_or(uri.path(), |p| p.as_str())
        .to_owned();
    let method = method.as_str().to_owned();
    let body = body.clone();
    with_store(reg, move |reg, store| {
        let now = unix(SystemTime::now());
        let (key, not_after, prefix) = store.cert_key(auth.serial)?.ok_or_else(|| {
            unauthorized(format!("certificate {} unknown or revoked", auth.serial))
        })?;
        if now > not_after.saturating_add(reg.settings.grace_period) {
            return Err(StoreError::Expired.into());
        }
        reg.replay
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .verify(&auth, &key, &method, &path, &body, now)
            .map_err(|e| unauthorized(e.to_string()))?;
        Ok(Node {
            serial: auth.serial,
            key,
            prefix,
        })
    })
    .await
}

async fn get_ca(State(reg): State<Shared>) -> ApiResult<CaResponse> {
    Ok(Json(CaResponse {
        ca: reg.ca.cert_pem(),
        fingerprint: pki::fingerprint(reg.ca.cert_der()),
        network: reg.ca.network().to_string(),
    }))
}

async fn request_token(State(reg): State<Shared>, req: Request) -> ApiResult<TokenSent> {
    let r: TokenRequest = json_body(req.into_body()).await?;
    if reg.settings.prefix_length == 0 {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "registration_disabled",
            "registration by email is disabled on this registry",
        ));
    }
    if r.email.parse::<lettre::Address>().is_err() {
        return Err(ApiError::bad_request(format!(
            "invalid email address {:?}",
            r.email
        )));
    }
    let token = new_token();
    let expires = unix(SystemTime::now()) + reg.settings.token_lifetime;
    // Mail first: if sending fails nothing is stored.
    reg.mailer
        .send_token(
            &reg.settings.mail_from,
            &r.email,
            &token,
            &reg.ca.network().to_string(),
        )
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::BAD_GATEWAY,
                "mail_failed",
                format!("cannot send the token: {e}"),
            )
        })?;
    let email = r.email.clone();
    with_store(&reg, move |reg, store| {
        Ok(store.add_token(&token, &email, reg.settings.prefix_length, expires)?)
    })
    .await?;
    Ok(Json(TokenSent {
        email: r.email,
        expires,
    }))
}

async fn request_cert(State(reg): State<Shared>, req: Request) -> ApiResult<CertResponse> {
    let r: CertRequest = json_body(req.into_body()).await?;
    let csr = Csr::from_pem(&r.csr).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_csr",
            format!("invalid CSR: {e}"),
        )
    })?;
    let locations = match &r.location {
        Some(l) => parse_locations(l).ok_or_else(|| {
            ApiError::bad_request(format!("bad location {l:?} (expected CC,@CONTINENT)"))
        })?,
        None => Vec::new(),
    };
    if r.token.is_none() && reg.settings.anonymous_prefix_length == 0 {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "registration_disabled",
            "anonymous registration is disabled on this registry",
        ));
    }
    let issued = with_store(&reg, move |reg, store| {
        let params = IssueParams {
            csr: &csr,
            token: r.token.as_deref(),
            anonymous_len: reg.settings.anonymous_prefix_length,
            locations: &locations,
            validity: reg.settings.validity,
        };
        Ok(store.issue(
            &reg.ca,
            &reg.settings.communities,
            &params,
            unix(SystemTime::now()),
        )?)
    })
    .await?;
    tracing::info!(serial = issued.serial, prefix = %issued.prefix, "certificate issued");
    Ok(Json(CertResponse {
        cert: issued.pem,
        serial: issued.serial,
        prefix: issued.prefix.to_string(),
    }))
}

async fn renew(State(reg): State<Shared>, req: Request) -> ApiResult<CertResponse> {
    let (parts, body) = req.into_parts();
    let body = read_body(body).await?;
    let node = authenticate(&reg, &parts.method, &parts.uri, &parts.headers, &body).await?;
    let r: RenewRequest = parse_request(&body)?;
    let csr = Csr::from_pem(&r.csr).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_csr",
            format!("invalid CSR: {e}"),
        )
    })?;
    let issued = with_store(&reg, move |reg, store| {
        let s = &reg.settings;
        Ok(store.renew(
            &reg.ca,
            node.serial,
            &csr,
            s.validity,
            s.grace_period,
            unix(SystemTime::now()),
        )?)
    })
    .await?;
    Ok(Json(CertResponse {
        cert: issued.pem,
        serial: issued.serial,
        prefix: issued.prefix.to_string(),
    }))
}

async fn config(State(reg): State<Shared>, req: Request) -> ApiResult<SignedConfig> {
    let (parts, body) = req.into_parts();
    let body = read_body(body).await?;
    let node = if AuthHeaders::from_lookup(|n| parts.headers.get(n).and_then(|v| v.to_str().ok()))
        .is_ok_and(|a| a.is_none())
    {
        None
    } else {
        Some(authenticate(&reg, &parts.method, &parts.uri, &parts.headers, &body).await?)
    };
    with_store(&reg, move |reg, store| {
        let config = reg.network_config(store, node.as_ref().map(|n| &n.key))?;
        Ok(Json(SignedConfig::sign(&config, |m| reg.ca.sign(m))))
    })
    .await
}

async fn bootstrap(State(reg): State<Shared>, req: Request) -> ApiResult<BootstrapResponse> {
    let (parts, body) = req.into_parts();
    let body = read_body(body).await?;
    let node = authenticate(&reg, &parts.method, &parts.uri, &parts.headers, &body).await?;
    let no_peer =
        |detail: String| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "no_peer", detail);
    let Some(path) = &reg.settings.node_control else {
        return Err(no_peer(
            "no live peer known (the registry runs without --node-control)".into(),
        ));
    };
    for _ in 0..BOOTSTRAP_TRIES {
        let answer = control::call(path, &control::Request::BootstrapPeer, NODE_TIMEOUT)
            .await
            .map_err(|e| no_peer(format!("no live peer known: the registry's node: {e}")))?;
        let peer = match answer {
            control::Response::BootstrapPeer(Some(peer)) => peer,
            control::Response::BootstrapPeer(None) => {
                return Err(no_peer("no live peer known".into()))
            }
            control::Response::Error(e) => {
                return Err(no_peer(format!(
                    "no live peer known: the registry's node: {e}"
                )))
            }
            other => {
                return Err(no_peer(format!(
                    "no live peer known: unexpected answer from the registry's node: {other:?}"
                )))
            }
        };
        let Some(prefix) = Block::parse_cn(&peer.prefix) else {
            return Err(no_peer(format!(
                "no live peer known: the registry's node named a bad prefix {:?}",
                peer.prefix
            )));
        };
        if prefix == node.prefix {
            // The node picks at random; it may pick someone else next time.
            continue;
        }
        let addresses: Vec<String> = peer
            .addresses
            .iter()
            .filter(|a| a.parse::<Address>().is_ok())
            .cloned()
            .collect();
        if addresses.is_empty() {
            return Err(no_peer(format!(
                "no live peer known: no usable address for {prefix}"
            )));
        }
        let plain = serde_json::to_vec(&addresses).map_err(|e| {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
        })?;
        tracing::debug!(requester = %node.prefix, peer = %prefix, "bootstrap peer handed out");
        return Ok(Json(BootstrapResponse {
            prefix: prefix.to_string(),
            sealed: base64::engine::general_purpose::STANDARD.encode(pki::seal(&node.key, &plain)),
        }));
    }
    Err(no_peer("no live peer known other than you".into()))
}

/// Forwards a mesh walk to the registry's node.
async fn ask_node(
    reg: &Registry,
    request: control::Request,
) -> Result<control::Response, ApiError> {
    let no_node =
        |detail: String| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "no_node", detail);
    let path = reg
        .settings
        .node_control
        .as_ref()
        .ok_or_else(|| no_node("the registry runs without a node (--node-control)".into()))?;
    match control::call(path, &request, NODE_WALK_TIMEOUT).await {
        Ok(control::Response::Error(e)) => Err(no_node(format!("the registry's node: {e}"))),
        Ok(answer) => Ok(answer),
        Err(e) => Err(no_node(format!("the registry's node: {e}"))),
    }
}

fn unexpected(answer: &control::Response) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "no_node",
        format!("unexpected answer from the registry's node: {answer:?}"),
    )
}

async fn admin_topology(State(reg): State<Shared>) -> ApiResult<Vec<TopologyNode>> {
    match ask_node(&reg, control::Request::Topology).await? {
        control::Response::Topology(nodes) => Ok(Json(nodes)),
        other => Err(unexpected(&other)),
    }
}

async fn admin_versions(State(reg): State<Shared>) -> ApiResult<Vec<NodeVersion>> {
    match ask_node(&reg, control::Request::Versions).await? {
        control::Response::Versions(nodes) => Ok(Json(nodes)),
        other => Err(unexpected(&other)),
    }
}

async fn admin_revoke(State(reg): State<Shared>, req: Request) -> ApiResult<super::store::Revoked> {
    let r: RevokeRequest = json_body(req.into_body()).await?;
    let target = match (r.serial, &r.cn) {
        (Some(s), None) => RevokeTarget::Serial(s),
        (None, Some(cn)) => RevokeTarget::Prefix(Block::parse_cn(cn).ok_or_else(|| {
            ApiError::bad_request(format!("bad CN {cn:?} (expected <int>/<len>)"))
        })?),
        _ => return Err(ApiError::bad_request("give exactly one of serial and cn")),
    };
    let revoked = with_store(&reg, move |_, store| Ok(store.revoke(target)?)).await?;
    tracing::info!(serial = revoked.serial, prefix = %revoked.prefix, "certificate revoked");
    Ok(Json(revoked))
}

async fn admin_add_token(
    State(reg): State<Shared>,
    req: Request,
) -> ApiResult<super::store::TokenInfo> {
    let r: AddTokenRequest = json_body(req.into_body()).await?;
    if r.email.parse::<lettre::Address>().is_err() {
        return Err(ApiError::bad_request(format!(
            "invalid email address {:?}",
            r.email
        )));
    }
    with_store(&reg, move |reg, store| {
        let info = super::store::TokenInfo {
            token: new_token(),
            email: r.email,
            prefix_len: r.prefix_len.unwrap_or(reg.settings.prefix_length),
            expires: unix(SystemTime::now()) + reg.settings.token_lifetime,
        };
        store.add_token(&info.token, &info.email, info.prefix_len, info.expires)?;
        Ok(Json(info))
    })
    .await
}

async fn admin_tokens(State(reg): State<Shared>) -> ApiResult<super::api::TokenList> {
    with_store(&reg, |_, store| Ok(Json(store.tokens()?))).await
}

async fn admin_delete_token(
    State(reg): State<Shared>,
    UrlPath(token): UrlPath<String>,
) -> ApiResult<serde_json::Value> {
    with_store(&reg, move |_, store| {
        store.delete_token(&token)?;
        Ok(Json(serde_json::json!({ "deleted": token })))
    })
    .await
}

async fn admin_rotate(State(reg): State<Shared>) -> ApiResult<RotateResponse> {
    let mut key = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut key);
    with_store(&reg, move |_, store| {
        let stage = store.rotate_keys(key)?;
        Ok(Json(RotateResponse {
            stage,
            version: store.config_version()?,
        }))
    })
    .await
}

async fn admin_certs(State(reg): State<Shared>) -> ApiResult<super::api::CertList> {
    with_store(&reg, |_, store| Ok(Json(store.certs()?))).await
}

/// A fresh random token: 20 characters of lowercase base32 (100 bits).
fn new_token() -> String {
    const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";
    let mut bytes = [0u8; 20];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    bytes
        .iter()
        .map(|b| ALPHABET[usize::from(b & 31)] as char)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins() {
        let lo = Origin::loopback();
        let ok = |ip: &str| lo.iter().any(|o| o.contains(ip.parse().unwrap()));
        assert!(ok("127.0.0.1"));
        assert!(ok("127.3.2.1"));
        assert!(ok("::1"));
        assert!(ok("::ffff:127.0.0.1"));
        assert!(!ok("10.0.0.1"));
        assert!(!ok("::2"));
        let o: Origin = "2001:db8::/32".parse().unwrap();
        assert!(o.contains("2001:db8:1::1".parse().unwrap()));
        assert!(!o.contains("2001:db9::1".parse().unwrap()));
        let o: Origin = "192.0.2.0/25".parse().unwrap();
        assert!(o.contains("192.0.2.127".parse().unwrap()));
        assert!(!o.contains("192.0.2.128".parse().unwrap()));
        let o: Origin = "192.0.2.7".parse().unwrap();
        assert!(o.contains("192.0.2.7".parse().unwrap()));
        assert!(!o.contains("192.0.2.8".parse().unwrap()));
        for bad in ["x", "10.0.0.0/33", "::/129", "1.2.3.4/"] {
            assert!(bad.parse::<Origin>().is_err(), "{bad}");
        }
    }

    #[test]
    fn tokens_are_random() {
        let a = new_token();
        assert_eq!(a.len(), 20);
        assert_ne!(a, new_token());
    }
}
