//! `roost admin`: the operators' web UI and JSON API.
//!
//! Reads the verdicts from Redis (what the proxies enforce), writes operators' overrides to the
//! overrides topic (every scorer applies them; the resulting verdicts reach Redis, the proxies
//! and the flowspec controller within a second) and every action to the audit log (a Redis
//! stream and the audit topic: who, when, what, why).
//!
//! Security, all of it on every route: sign-in with argon2-hashed passwords or API tokens
//! (`Authorization: Bearer`), roles (viewer, operator), server-side sessions behind an
//! HttpOnly SameSite=Strict cookie, a CSRF token on every state change (cookie sessions), a
//! cross-origin `Origin` refused, sign-in attempts counted before the password is checked (per
//! user and address, per address; a name guessed at from many addresses is slowed, never
//! locked) with a bounded pool of password checks (the rest 429), the client address from
//! `X-Forwarded-For` only when the peer is a trusted proxy, every
//! string rendered through maud (escaped: paths, user agents, reasons are attacker-controlled),
//! and a Content-Security-Policy without inline scripts or styles.

pub mod auth;
pub mod metrics;
mod pages;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

pub use auth::User;
use axum::Router;
use axum::extract::{ConnectInfo, Form, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Json, Redirect, Response};
use axum::routing::{get, post};
use ipnetwork::IpNetwork;
use roost_engine::{Class, Override, Timestamp};
use roost_verdicts::{RedisConfig, Store, VerdictRecord};
use serde::{Deserialize, Serialize};

use crate::auth::{Auth, LoginError, Principal, Role};

/// The `[admin]` config section.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// Where the UI and API listen (put TLS in front, or keep it on loopback).
    pub listen: SocketAddr,
    /// The users file (`[[user]] name, role, password_hash`).
    pub users_file: PathBuf,
    /// API tokens: name, role and the hex SHA-256 of the token.
    pub tokens: Vec<auth::Token>,
    #[serde(with = "humantime_serde")]
    pub session_ttl: Duration,
    /// Mark the session cookie `Secure` (off only for plain HTTP on loopback).
    pub cookie_secure: bool,
    /// Overrides may not cover more than this (shortest prefix lengths).
    pub min_prefix_v4: u8,
    pub min_prefix_v6: u8,
    /// A Prometheus that scrapes the roost daemons (`http://127.0.0.1:9090`): the overview
    /// then shows the average reputation over time, the drop alert and the pipeline's health.
    /// Empty: not shown.
    pub prometheus_url: String,
    /// `roost bgp`'s address (`http://127.0.0.1:9755`): client pages then say whether the
    /// client's traffic is diverted, by which rule. Empty: not shown.
    pub bgp_url: String,
    /// Peers whose `X-Forwarded-For` is believed (a TLS terminator in front of the admin): the
    /// client address for sign-in limits and the audit log is then read from it, as the proxy
    /// does. From anyone else the header is ignored.
    pub trusted_proxies: Vec<ipnetwork::IpNetwork>,
    pub sign_in: auth::SignInConfig,
    /// The prefix length IPv6 clients are judged by (`engine.ipv6_prefix`; set by the binary).
    #[serde(skip)]
    pub ipv6_prefix: u8,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: "127.0.0.1:9757".parse().expect("valid"),
            users_file: PathBuf::from("/etc/roost/admin-users.toml"),
            tokens: Vec::new(),
            session_ttl: Duration::from_secs(8 * 3600),
            cookie_secure: true,
            min_prefix_v4: 16,
            min_prefix_v6: 32,
            prometheus_url: String::new(),
            bgp_url: String::new(),
            trusted_proxies: Vec::new(),
            sign_in: auth::SignInConfig::default(),
            ipv6_prefix: 64,
        }
    }
}

/// Where the admin reads verdicts and writes operators' actions. [`Distributed`] is the
/// pipeline's (Redis and Kafka); `roost up` implements it over its own engine.
pub trait Backend: Send + Sync + 'static {
    /// The stored verdicts that changed since the last call; the first call, and any after the
    /// backend had to reload, gives them all. (The admin drops the expired ones.)
    fn verdict_updates(&self) -> Result<VerdictUpdate, String>;
    /// A subject's history, newest first.
    fn history(&self, subject: &str) -> Vec<roost_verdicts::HistoryEntry>;
    /// Records an operator's action durably, before it takes effect.
    fn append_audit(&self, entry: &AuditEntry) -> Result<(), String>;
    /// The last `n` audit entries, newest first.
    fn recent_audit(&self, n: usize) -> Result<Vec<AuditEntry>, String>;
    /// Puts an override in force (`None`: removes the one on `prefix`).
    fn apply_override(&self, prefix: IpNetwork, ov: Option<Override>) -> Result<(), String>;
    /// The overview's average-reputation series and drop-alert state, when the backend has them
    /// itself (used when `admin.prometheus_url` is empty).
    fn health(&self) -> Option<Health> {
        None
    }
    /// Shadow verdicts in force ("would block": sources in shadow mode; never enforced).
    fn shadow_verdicts(&self) -> Vec<VerdictRecord> {
        Vec::new()
    }
    /// What the proxies did with the subject's challenges.
    fn proxy_outcomes(&self, _subject: &str) -> Option<roost_verdicts::ProxyOutcomes> {
        None
    }
    /// The overrides in force as the proxies hold them (for error-page references of clients
    /// an override alone refuses).
    fn overrides(&self) -> Vec<roost_verdicts::OverrideEntry> {
        Vec::new()
    }
}

/// What [`Backend::verdict_updates`] gives.
pub enum VerdictUpdate {
    /// Every stored verdict: replaces what the admin holds.
    All(Vec<VerdictRecord>),
    /// The subjects whose verdict changed (`None`: no longer stored, good again).
    Changed(Vec<(String, Option<VerdictRecord>)>),
}

/// The distributed pipeline's backend: verdicts, histories and the audit stream in Redis
/// (what the proxies enforce); overrides to the overrides topic (every scorer applies them; the
/// resulting verdicts reach Redis, the proxies and the flowspec controller within a second) and
/// the audit log also to the audit topic.
pub struct Distributed {
    store: Mutex<Store>,
    /// Follows the change stream: after the first load, a list reads only what changed.
    follower: Mutex<roost_verdicts::follow::StoreFollower>,
    producer: Option<roost_kafka::Producer>,
    kafka: roost_kafka::KafkaConfig,
    rt: tokio::runtime::Handle,
}

impl Distributed {
    /// Connects (lazily) to Redis and creates the Kafka topics it writes; Kafka sends are awaited
    /// on `rt` (the admin's blocking handlers wait for them).
    pub fn connect(
        redis: &RedisConfig,
        kafka: roost_kafka::KafkaConfig,
        rt: tokio::runtime::Handle,
    ) -> Result<Distributed, Error> {
        let producer = if kafka.enabled() { Some(roost_kafka::Producer::new(&kafka, "roost-admin")?) } else { None };
        if kafka.enabled() {
            roost_kafka::ensure_topic(&kafka, &kafka.topics.overrides, 1, true)?;
            roost_kafka::ensure_topic(&kafka, &kafka.topics.audit, 1, false)?;
        }
        Ok(Distributed {
            store: Mutex::new(Store::new(redis)?),
            follower: Mutex::new(roost_verdicts::follow::StoreFollower::new(redis)?),
            producer,
            kafka,
            rt,
        })
    }
}

impl Backend for Distributed {
    fn shadow_verdicts(&self) -> Vec<VerdictRecord> {
        self.store.lock().expect("store lock").load_shadow().unwrap_or_else(|e| {
            tracing::warn!(error = %e, "cannot read the shadow verdicts");
            Vec::new()
        })
    }

    fn verdict_updates(&self) -> Result<VerdictUpdate, String> {
        use roost_verdicts::follow::Update;
        let mut f = self.follower.lock().expect("follower lock");
        let mut changed = Vec::new();
        // what the stream holds now, without waiting; bounded (the rest comes with the next call)
        for _ in 0..100 {
            match f.next(Duration::from_millis(1), now_ms()).map_err(|e| e.to_string())? {
                Update::Full { verdicts, .. } => return Ok(VerdictUpdate::All(verdicts)),
                Update::Changed { verdicts, entries, unreadable, .. } => {
                    for e in unreadable {
                        tracing::warn!(error = %e, "a stored verdict is unreadable; not listed");
                    }
                    changed.extend(verdicts);
                    if entries < 1000 {
                        break;
                    }
                }
            }
        }
        Ok(VerdictUpdate::Changed(changed))
    }

    fn history(&self, subject: &str) -> Vec<roost_verdicts::HistoryEntry> {
        self.store.lock().expect("store lock").history(subject).unwrap_or_default()
    }

    fn append_audit(&self, entry: &AuditEntry) -> Result<(), String> {
        let json = serde_json::to_string(entry).expect("an entry serializes");
        self.store.lock().expect("store lock").append_audit(&json).map_err(|e| e.to_string())?;
        if let Some(p) = &self.producer {
            self.rt
                .block_on(p.send(&self.kafka.topics.audit, entry.prefix.as_bytes(), Some(json.as_bytes())))
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    fn recent_audit(&self, n: usize) -> Result<Vec<AuditEntry>, String> {
        let v = self.store.lock().expect("store lock").recent_audit(n).map_err(|e| e.to_string())?;
        Ok(v.into_iter().map(|(id, j)| AuditEntry::read(&id, &j)).collect())
    }

    fn proxy_outcomes(&self, subject: &str) -> Option<roost_verdicts::ProxyOutcomes> {
        self.store.lock().expect("store lock").outcomes(subject).ok().flatten()
    }

    fn overrides(&self) -> Vec<roost_verdicts::OverrideEntry> {
        self.store.lock().expect("store lock").load_overrides().unwrap_or_default()
    }

    fn apply_override(&self, prefix: IpNetwork, ov: Option<Override>) -> Result<(), String> {
        let producer = self.producer.as_ref().ok_or("Kafka is not configured")?;
        let (key, value) = roost_wire::overrides::encode(prefix, ov.as_ref());
        self.rt.block_on(producer.send(&self.kafka.topics.overrides, &key, value.as_deref())).map_err(|e| e.to_string())
    }
}

pub struct AppState {
    cfg: AdminConfig,
    auth: Auth,
    backend: Arc<dyn Backend>,
    cache: Mutex<ItemCache>,
    metrics: metrics::AdminMetrics,
    registry: prometheus_client::registry::Registry,
    /// The GeoIP databases (`[geo]`): where each client is.
    geo: Option<roost_geo::GeoHandle>,
    /// The proxies' signer: references are recomputed from it.
    signer: Option<roost_proxy::challenge::Signer>,
    /// Sign-ins admitted to a password check, running or waiting (`hash_workers + hash_queue`),
    /// and the checks running at once (`hash_workers`).
    admitted: tokio::sync::Semaphore,
    hashing: tokio::sync::Semaphore,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Auth(#[from] auth::Error),
    #[error(transparent)]
    Redis(#[from] roost_verdicts::Error),
    #[error(transparent)]
    Kafka(#[from] roost_kafka::Error),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

const COOKIE: &str = "roost_admin";
const CSP: &str = "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; \
                   frame-ancestors 'none'; base-uri 'none'";

/// The admin's state. `proxy_secret`: the proxies' signing secret
/// (`proxy.challenge.secret_file`), to find the verdict behind an error page's reference.
pub fn state(
    cfg: AdminConfig,
    users: Vec<auth::User>,
    backend: Arc<dyn Backend>,
    proxy_secret: Option<Vec<u8>>,
    geo: Option<roost_geo::GeoHandle>,
) -> Result<Arc<AppState>, Error> {
    if users.is_empty() && cfg.tokens.is_empty() {
        tracing::warn!(file = %cfg.users_file.display(), "no users and no tokens: nobody can sign in");
    }
    let auth = Auth::new(users, cfg.tokens.clone(), cfg.session_ttl, cfg.sign_in.clone());
    let workers = cfg.sign_in.hash_workers.max(1);
    let (admitted, hashing) =
        (tokio::sync::Semaphore::new(workers + cfg.sign_in.hash_queue), tokio::sync::Semaphore::new(workers));
    let signer = match proxy_secret {
        Some(s) => Some(roost_proxy::challenge::Signer::new(&s)),
        None => {
            tracing::warn!("proxy.challenge.secret_file is not set: error-page references cannot be looked up");
            None
        }
    };
    // one count of password checks: the one `Auth` keeps
    let metrics = metrics::AdminMetrics { password_checks: auth.checks(), ..Default::default() };
    let registry = metrics.registry();
    Ok(Arc::new(AppState {
        signer,
        admitted,
        hashing,
        cfg,
        auth,
        backend,
        cache: Mutex::new(ItemCache::default()),
        metrics,
        registry,
        geo,
    }))
}

/// Reads a proxy secret file (`proxy.challenge.secret_file`); empty path: none.
pub fn read_secret(path: &str) -> Result<Option<Vec<u8>>, Error> {
    if path.is_empty() {
        return Ok(None);
    }
    Ok(Some(std::fs::read(path)?.trim_ascii().to_vec()))
}

pub fn router(st: Arc<AppState>) -> Router {
    Router::new()
        .route("/login", get(login_page).post(login))
        .route("/logout", post(logout))
        .route("/", get(overview))
        .route("/clients", get(clients_page))
        .route("/clients/{subject}", get(client_page))
        .route("/overrides", post(override_form))
        .route("/audit", get(audit_page))
        .route("/references", get(reference_page))
        .route("/api/v1/references/{reference}", get(api_reference))
        .route("/static/admin.css", get(css))
        .route("/api/v1/clients", get(api_clients))
        .route("/api/v1/clients/{subject}", get(api_client))
        .route("/api/v1/overrides", post(api_override))
        .route("/api/v1/audit", get(api_audit))
        .route("/api/v1/me", get(api_me))
        .route("/api/openapi.json", get(openapi))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics_text))
        .layer(axum::middleware::map_response(security_headers))
        .layer(axum::middleware::map_response_with_state(st.clone(), count_response))
        .with_state(st)
}

/// Serves on `l` (bound by the caller on `admin.listen`) until `shutdown` completes.
pub async fn serve(
    l: tokio::net::TcpListener,
    st: Arc<AppState>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    tracing::info!("roost admin: on http://{}", l.local_addr()?);
    axum::serve(l, router(st).into_make_service_with_connect_info::<SocketAddr>())
        .with_graceful_shutdown(shutdown)
        .await?;
    Ok(())
}

async fn count_response(State(st): State<Arc<AppState>>, r: Response) -> Response {
    st.metrics.responses.get_or_create(&metrics::CodeLabels { code: r.status().as_u16() }).inc();
    r
}

/// Counts only (no names, addresses or comments): served without signing in, for Prometheus.
async fn metrics_text(State(st): State<Arc<AppState>>) -> Response {
    let mut out = String::new();
    if prometheus_client::encoding::text::encode(&mut out, &st.registry).is_err() {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], out).into_response()
}

async fn security_headers(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

async fn css() -> Response {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], include_str!("../assets/admin.css")).into_response()
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

fn cookie_of(h: &HeaderMap) -> Option<String> {
    h.get_all(header::COOKIE).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(';')).find_map(|c| {
        let (k, v) = c.trim().split_once('=')?;
        (k == COOKIE).then(|| v.to_owned())
    })
}

/// The principal of a request: a bearer token, else the session cookie.
fn principal(st: &AppState, h: &HeaderMap) -> Option<Principal> {
    if let Some(b) = h.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "))
    {
        return st.auth.token(b.trim());
    }
    st.auth.session(&cookie_of(h)?)
}

/// Refusals, as JSON for the API and as a page (or the login page) for the UI.
#[derive(Debug)]
enum Refusal {
    Unauthenticated,
    Forbidden(&'static str),
    Bad(String),
    Unavailable(String),
}

impl Refusal {
    fn api(self) -> Response {
        let (code, msg) = match self {
            Refusal::Unauthenticated => {
                (StatusCode::UNAUTHORIZED, "sign in, or send Authorization: Bearer <token>".to_owned())
            }
            Refusal::Forbidden(m) => (StatusCode::FORBIDDEN, m.to_owned()),
            Refusal::Bad(m) => (StatusCode::BAD_REQUEST, m),
            Refusal::Unavailable(m) => (StatusCode::SERVICE_UNAVAILABLE, m),
        };
        (code, Json(serde_json::json!({ "error": msg }))).into_response()
    }

    fn page(self, who: Option<&Principal>) -> Response {
        match self {
            Refusal::Unauthenticated => Redirect::to("/login").into_response(),
            Refusal::Forbidden(m) => {
                (StatusCode::FORBIDDEN, Html(pages::message(who, "Not allowed", m))).into_response()
            }
            Refusal::Bad(m) => {
                (StatusCode::BAD_REQUEST, Html(pages::message(who, "Cannot do that", &m))).into_response()
            }
            Refusal::Unavailable(m) => {
                (StatusCode::SERVICE_UNAVAILABLE, Html(pages::message(who, "Unavailable", &m))).into_response()
            }
        }
    }
}

/// A state change from a cookie session must carry its CSRF token and come from this origin.
fn check_csrf(p: &Principal, h: &HeaderMap, form_token: Option<&str>) -> Result<(), Refusal> {
    if let (Some(origin), Some(host)) = (h.get(header::ORIGIN), h.get(header::HOST)) {
        let origin = origin.to_str().unwrap_or("");
        let host = host.to_str().unwrap_or("");
        let same = origin.strip_prefix("http://").or_else(|| origin.strip_prefix("https://")) == Some(host);
        if !same {
            return Err(Refusal::Forbidden("cross-origin request refused"));
        }
    }
    let Some(want) = &p.csrf else { return Ok(()) }; // API token: nothing ambient to forge
    let got = form_token.or_else(|| h.get("x-csrf-token").and_then(|v| v.to_str().ok())).unwrap_or("");
    if auth::constant_time_eq(want, got) { Ok(()) } else { Err(Refusal::Forbidden("missing or wrong CSRF token")) }
}

// ---- sign-in ---------------------------------------------------------------------------------

async fn login_page(State(st): State<Arc<AppState>>, h: HeaderMap) -> Response {
    if principal(&st, &h).is_some() {
        return Redirect::to("/").into_response();
    }
    Html(pages::login(None)).into_response()
}

#[derive(Deserialize)]
struct LoginForm {
    name: String,
    password: String,
}

/// The client's address: the peer, or, from a peer in `admin.trusted_proxies`, what
/// `X-Forwarded-For` says (read as the proxy reads it; a malformed header counts as the peer).
fn client_addr(st: &AppState, peer: SocketAddr, h: &HeaderMap) -> IpAddr {
    let xff = h.get_all("x-forwarded-for").iter().map(|v| v.as_bytes());
    roost_proxy::clientip::client_ip(peer.ip(), xff, &st.cfg.trusted_proxies).unwrap_or(peer.ip())
}

async fn login(
    State(st): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    h: HeaderMap,
    Form(f): Form<LoginForm>,
) -> Response {
    let from = client_addr(&st, peer, &h);
    let (name, password) = (f.name.chars().take(100).collect::<String>(), f.password);
    // 1. counted as a failure at once, atomically: a limited attempt never reaches a check
    let attempt = match st.auth.reserve(&name, from) {
        Ok(a) => a,
        Err(e) => return sign_in_refused(&st, e, from),
    };
    // 2. a place among the password checks, or 429 at once: argon2 holds ~19 MiB per run
    let Ok(place) = st.admitted.try_acquire() else {
        st.auth.release(attempt); // no password was checked: no attempt was made
        st.metrics.sign_ins.get_or_create(&metrics::OutcomeLabels { outcome: "busy" }).inc();
        tracing::warn!(%from, "sign-in refused: too many at once");
        return (
            StatusCode::TOO_MANY_REQUESTS,
            [(header::RETRY_AFTER, "1")],
            Html(pages::login(Some("Too many sign-ins at once. Try again in a moment."))),
        )
            .into_response();
    };
    let Ok(running) = st.hashing.acquire().await else { return StatusCode::SERVICE_UNAVAILABLE.into_response() };
    // 3. the check, off the async threads
    let st2 = st.clone();
    let r = tokio::task::spawn_blocking(move || st2.auth.login(attempt, &password)).await;
    drop((running, place));
    match r {
        Ok(Ok((cookie, p))) => {
            st.metrics.sign_ins.get_or_create(&metrics::OutcomeLabels { outcome: "ok" }).inc();
            tracing::info!(user = %p.name, %from, "signed in");
            let secure = if st.cfg.cookie_secure { "; Secure" } else { "" };
            let set = format!(
                "{COOKIE}={cookie}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
                st.cfg.session_ttl.as_secs()
            );
            ([(header::SET_COOKIE, set)], Redirect::to("/")).into_response()
        }
        Ok(Err(e)) => sign_in_refused(&st, e, from),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

fn sign_in_refused(st: &AppState, e: LoginError, from: IpAddr) -> Response {
    match e {
        LoginError::Limited(wait) => {
            st.metrics.sign_ins.get_or_create(&metrics::OutcomeLabels { outcome: "limited" }).inc();
            tracing::warn!(%from, "sign-in refused: too many failures");
            let secs = wait.as_secs().max(1).to_string();
            (
                StatusCode::TOO_MANY_REQUESTS,
                [(header::RETRY_AFTER, secs)],
                Html(pages::login(Some("Too many failed attempts. Try again later."))),
            )
                .into_response()
        }
        LoginError::Invalid => {
            st.metrics.sign_ins.get_or_create(&metrics::OutcomeLabels { outcome: "invalid" }).inc();
            tracing::warn!(%from, "sign-in failed");
            (StatusCode::UNAUTHORIZED, Html(pages::login(Some("Wrong name or password.")))).into_response()
        }
    }
}

#[derive(Deserialize)]
struct CsrfOnly {
    #[serde(default)]
    csrf: String,
}

async fn logout(State(st): State<Arc<AppState>>, h: HeaderMap, Form(f): Form<CsrfOnly>) -> Response {
    let Some(p) = principal(&st, &h) else { return Redirect::to("/login").into_response() };
    if let Err(r) = check_csrf(&p, &h, Some(&f.csrf)) {
        return r.page(Some(&p));
    }
    if let Some(c) = cookie_of(&h) {
        st.auth.logout(&c);
    }
    let expire = format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0");
    ([(header::SET_COOKIE, expire)], Redirect::to("/login")).into_response()
}

async fn api_me(State(st): State<Arc<AppState>>, h: HeaderMap) -> Response {
    match principal(&st, &h) {
        Some(p) => Json(serde_json::json!({ "name": p.name, "role": p.role, "csrf": p.csrf })).into_response(),
        None => Refusal::Unauthenticated.api(),
    }
}

// ---- verdicts ---------------------------------------------------------------------------------

/// A current verdict, with what it is made of in fields: where the client is (with GeoIP
/// databases configured), the rules and feeds its reasons cite.
#[derive(Clone, Debug, Serialize)]
pub struct Item {
    #[serde(flatten)]
    pub record: VerdictRecord,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub country: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub asn: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub as_org: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub feeds: Vec<String>,
}

/// The rule ids a verdict's reasons cite: their first word, when it is an id (`R-1003`).
fn rules_cited(reasons: &[String]) -> Vec<String> {
    let mut v: Vec<String> = reasons
        .iter()
        .filter_map(|r| r.split_whitespace().next())
        .filter(|w| {
            w.contains('-')
                && w.starts_with(|c: char| c.is_ascii_uppercase())
                && w.chars().any(|c| c.is_ascii_digit())
                && w.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        })
        .map(str::to_owned)
        .collect();
    v.dedup();
    v
}

/// The feeds a verdict's reasons cite (`… listed in NAME since …`).
fn feeds_cited(reasons: &[String]) -> Vec<String> {
    let mut v: Vec<String> = reasons
        .iter()
        .filter_map(|r| r.split_once("listed in ").and_then(|(_, rest)| rest.split_once(" since")).map(|(n, _)| n))
        .filter(|n| !n.is_empty() && !n.contains(' '))
        .map(str::to_owned)
        .collect();
    v.sort();
    v.dedup();
    v
}

fn geo_of(db: Option<&roost_geo::GeoDb>, subject: &str) -> roost_geo::GeoInfo {
    match (db, subject.parse::<IpNetwork>()) {
        (Some(db), Ok(net)) => db.lookup(net.network()),
        _ => roost_geo::GeoInfo::default(),
    }
}

/// The verdicts the admin lists, with their fields: loaded whole once, then kept up to date
/// from the backend's changes, so a page over 100k verdicts reads only what changed.
#[derive(Default)]
struct ItemCache {
    /// When the backend was last asked; `None`: ask now.
    at: Option<Instant>,
    by_subject: std::collections::HashMap<String, Arc<Item>>,
    /// The current (unexpired) ones, as of `at`.
    current: Arc<Vec<Arc<Item>>>,
}

impl ItemCache {
    fn item(&self, record: VerdictRecord, db: Option<&roost_geo::GeoDb>) -> Arc<Item> {
        // where a client is does not change between two verdicts: looked up once per subject
        let (country, asn, as_org) = match self.by_subject.get(&record.subject) {
            Some(i) => (i.country.clone(), i.asn, i.as_org.clone()),
            None => {
                let g = geo_of(db, &record.subject);
                (g.country, g.asn, g.as_org)
            }
        };
        Arc::new(Item {
            rules: rules_cited(&record.reasons),
            feeds: feeds_cited(&record.reasons),
            record,
            country,
            asn,
            as_org,
        })
    }
}

/// How stale the admin's verdicts may be.
const REFRESH: Duration = Duration::from_secs(1);

/// Every current verdict with its fields (asking the backend for changes at most every
/// [`REFRESH`]).
fn verdicts(st: &AppState) -> Result<Arc<Vec<Arc<Item>>>, Refusal> {
    let mut c = st.cache.lock().expect("cache lock");
    if c.at.is_some_and(|at| at.elapsed() < REFRESH) {
        return Ok(c.current.clone());
    }
    let update = st.backend.verdict_updates().map_err(|e| {
        st.metrics.verdict_store_errors.inc();
        Refusal::Unavailable(format!("the verdict store is unreachable: {e}"))
    })?;
    let db = st.geo.as_ref().map(|g| g.load());
    let db = db.as_deref().map(|d| &**d);
    match update {
        VerdictUpdate::All(all) => {
            st.metrics.verdict_loads.inc();
            let fresh: std::collections::HashMap<String, Arc<Item>> =
                all.into_iter().map(|r| (r.subject.clone(), c.item(r, db))).collect();
            c.by_subject = fresh;
        }
        VerdictUpdate::Changed(changed) => {
            for (subject, r) in changed {
                match r {
                    Some(r) => {
                        let i = c.item(r, db);
                        c.by_subject.insert(subject, i);
                    }
                    None => {
                        c.by_subject.remove(&subject);
                    }
                }
            }
        }
    }
    // an expired verdict is good, whatever is still stored (a renewal comes as a change)
    let now = now_ms();
    c.by_subject.retain(|_, i| i.record.expires.is_none_or(|e| e.0 > now));
    c.current = Arc::new(c.by_subject.values().cloned().collect());
    st.metrics.verdicts.set(c.current.len() as i64);
    c.at = Some(Instant::now());
    Ok(c.current.clone())
}

/// List filters, shared by the page and the API.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct ListQuery {
    /// `bad`, `dubious` or empty (both).
    #[serde(default)]
    pub verdict: String,
    /// Part of the address or prefix.
    #[serde(default)]
    pub q: String,
    /// Part of a reason (a rule id, a feed name, words).
    #[serde(default)]
    pub reason: String,
    /// A rule id its reasons cite (`R-1003`).
    #[serde(default)]
    pub rule: String,
    /// A feed its reasons cite (`tor_exits`).
    #[serde(default)]
    pub feed: String,
    /// The client's country (ISO code, `NL`), from the GeoIP databases.
    #[serde(default)]
    pub country: String,
    /// The client's AS number (`14061` or `AS14061`).
    #[serde(default)]
    pub asn: String,
    /// `reputation` (worst first, the default), `recent`, `expires`, `requests`.
    #[serde(default)]
    pub sort: String,
    #[serde(default)]
    pub page: usize,
    #[serde(default)]
    pub per_page: usize,
}

pub struct ClientPage {
    pub total: usize,
    pub page: usize,
    pub per_page: usize,
    pub items: Vec<Item>,
    pub counts: BTreeMap<&'static str, usize>,
}

fn list(all: &[Arc<Item>], q: &ListQuery) -> Result<ClientPage, Refusal> {
    let want = match q.verdict.as_str() {
        "" | "flagged" => None,
        v => Some(v.parse::<Class>().map_err(Refusal::Bad)?),
    };
    let needle = q.q.trim().to_ascii_lowercase();
    let reason = q.reason.trim().to_lowercase();
    let (rule, feed, country) = (q.rule.trim(), q.feed.trim(), q.country.trim());
    let asn: Option<u32> = match q.asn.trim().trim_start_matches(['A', 'S', 'a', 's']) {
        "" => None,
        n => Some(n.parse().map_err(|_| Refusal::Bad(format!("asn {:?} is not an AS number", q.asn)))?),
    };
    let mut counts = BTreeMap::new();
    let mut hits: Vec<&Item> = all
        .iter()
        .map(|i| &**i)
        .filter(|i| {
            let r = &i.record;
            *counts.entry(r.verdict.as_str()).or_insert(0) += 1;
            want.is_none_or(|w| r.verdict == w)
                && (needle.is_empty() || r.subject.to_ascii_lowercase().contains(&needle))
                && (reason.is_empty() || r.reasons.iter().any(|x| x.to_lowercase().contains(&reason)))
                && (rule.is_empty() || i.rules.iter().any(|x| x.eq_ignore_ascii_case(rule)))
                && (feed.is_empty() || i.feeds.iter().any(|x| x == feed))
                && (country.is_empty() || i.country.as_deref().is_some_and(|c| c.eq_ignore_ascii_case(country)))
                && asn.is_none_or(|a| i.asn == Some(a))
        })
        .collect();
    let by_subject = |a: &&Item, b: &&Item| a.record.subject.cmp(&b.record.subject);
    match q.sort.as_str() {
        "recent" => hits.sort_by(|a, b| b.record.at.cmp(&a.record.at).then(by_subject(a, b))),
        "expires" => hits.sort_by(|a, b| b.record.expires.cmp(&a.record.expires).then(by_subject(a, b))),
        "requests" => hits.sort_by(|a, b| b.record.requests.cmp(&a.record.requests).then(by_subject(a, b))),
        "" | "reputation" => {
            hits.sort_by(|a, b| a.record.reputation.total_cmp(&b.record.reputation).then(by_subject(a, b)))
        }
        s => return Err(Refusal::Bad(format!("unknown sort {s:?} (reputation, recent, expires, requests)"))),
    }
    let per_page = if q.per_page == 0 { 50 } else { q.per_page.min(500) };
    let total = hits.len();
    let items = hits.into_iter().skip(q.page * per_page).take(per_page).cloned().collect();
    Ok(ClientPage { total, page: q.page, per_page, items, counts })
}

async fn api_clients(State(st): State<Arc<AppState>>, h: HeaderMap, Query(q): Query<ListQuery>) -> Response {
    if principal(&st, &h).is_none() {
        return Refusal::Unauthenticated.api();
    }
    let st2 = st.clone();
    let r = tokio::task::spawn_blocking(move || verdicts(&st2).and_then(|all| list(&all, &q))).await;
    match r {
        Ok(Ok(l)) => Json(serde_json::json!({
            "total": l.total, "page": l.page, "per_page": l.per_page, "counts": l.counts, "items": l.items,
        }))
        .into_response(),
        Ok(Err(e)) => e.api(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

async fn clients_page(State(st): State<Arc<AppState>>, h: HeaderMap, Query(q): Query<ListQuery>) -> Response {
    let Some(p) = principal(&st, &h) else { return Refusal::Unauthenticated.page(None) };
    let st2 = st.clone();
    let q2 = q.clone();
    let r = tokio::task::spawn_blocking(move || verdicts(&st2).and_then(|all| list(&all, &q2))).await;
    match r {
        Ok(Ok(l)) => Html(pages::clients(&p, &q, &l)).into_response(),
        Ok(Err(e)) => e.page(Some(&p)),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

/// A subject from the path: an address (IPv6 by its `engine.ipv6_prefix`, as the engine keys
/// it) or a prefix.
fn subject_of(s: &str, ipv6_prefix: u8) -> Result<String, Refusal> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(roost_wire::subject_key(ip, ipv6_prefix));
    }
    s.parse::<IpNetwork>().map(|n| n.to_string()).map_err(|_| Refusal::Bad(format!("{s:?} is not an address")))
}

/// What is known of one subject: its verdict, the operator actions covering it, its history,
/// what the proxies did with its challenges.
pub struct Detail {
    pub subject: String,
    pub item: Option<Item>,
    pub audit: Vec<AuditEntry>,
    pub history: Vec<roost_verdicts::HistoryEntry>,
    pub proxy: Option<roost_verdicts::ProxyOutcomes>,
}

fn client_detail(st: &AppState, subject: String) -> Result<Detail, Refusal> {
    let v = verdicts(st)?;
    let item = v.iter().find(|i| i.record.subject == subject).map(|i| Item::clone(i));
    let audit = audit_for(st, &subject);
    let history = st.backend.history(&subject);
    let proxy = st.backend.proxy_outcomes(&subject);
    Ok(Detail { subject, item, audit, history, proxy })
}

async fn api_client(State(st): State<Arc<AppState>>, h: HeaderMap, Path(s): Path<String>) -> Response {
    if principal(&st, &h).is_none() {
        return Refusal::Unauthenticated.api();
    }
    let subject = match subject_of(&s, st.cfg.ipv6_prefix) {
        Ok(x) => x,
        Err(e) => return e.api(),
    };
    let st2 = st.clone();
    let r = tokio::task::spawn_blocking(move || client_detail(&st2, subject)).await;
    match r {
        Ok(Ok(d)) => Json(serde_json::json!({
            "subject": d.subject,
            "verdict": d.item.as_ref().map_or("good", |i| i.record.verdict.as_str()),
            "record": d.item,
            "audit": d.audit,
            "history": d.history,
            "proxy": d.proxy,
        }))
        .into_response(),
        Ok(Err(e)) => e.api(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

/// Whether the flowspec controller diverts `subject`: `None` when not configured, else the
/// controller's answer in words.
async fn diversion(st: &AppState, subject: &str) -> Option<String> {
    if st.cfg.bgp_url.is_empty() {
        return None;
    }
    let url = format!("{}/rules", st.cfg.bgp_url.trim_end_matches('/'));
    let client = reqwest::Client::builder().timeout(Duration::from_secs(2)).build().ok()?;
    let v: serde_json::Value = match client.get(&url).send().await {
        Ok(r) => match r.json().await {
            Ok(v) => v,
            Err(e) => return Some(format!("the flowspec controller's answer did not read: {e}")),
        },
        Err(e) => return Some(format!("the flowspec controller is unreachable: {e}")),
    };
    let covers = |x: &serde_json::Value| x.as_array().into_iter().flatten().any(|s| s.as_str() == Some(subject));
    if let Some(r) = v["rules"].as_array().into_iter().flatten().find(|r| covers(&r["subjects"])) {
        let peers = v["peers"].as_array().map_or(0, |p| p.iter().filter(|p| p["established"] == true).count());
        return Some(format!(
            "diverted: flowspec rule for {} in the controller's plan ({peers} router session(s) up)",
            r["rule"]["source"].as_str().unwrap_or(subject)
        ));
    }
    if let Some(why) = v["refused"].as_array().into_iter().flatten().find(|r| r[0].as_str() == Some(subject)) {
        return Some(format!("not diverted: {}", why[1].as_str().unwrap_or("refused")));
    }
    Some("not diverted (no flowspec rule for this client)".into())
}

async fn client_page(State(st): State<Arc<AppState>>, h: HeaderMap, Path(s): Path<String>) -> Response {
    let Some(p) = principal(&st, &h) else { return Refusal::Unauthenticated.page(None) };
    let bgp = match subject_of(&s, st.cfg.ipv6_prefix) {
        Ok(subject) => diversion(&st, &subject).await,
        Err(_) => None,
    };
    let subject = match subject_of(&s, st.cfg.ipv6_prefix) {
        Ok(x) => x,
        Err(e) => return e.page(Some(&p)),
    };
    let st2 = st.clone();
    let r = tokio::task::spawn_blocking(move || client_detail(&st2, subject)).await;
    match r {
        Ok(Ok(d)) => Html(pages::client(&p, &d, bgp.as_deref())).into_response(),
        Ok(Err(e)) => e.page(Some(&p)),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

/// What the overview shows from Prometheus.
#[derive(Default)]
pub struct Health {
    pub configured: bool,
    pub error: Option<String>,
    /// (Unix s, mean reputation) over the last 6 hours.
    pub series: Vec<(f64, f64)>,
    /// `inactive`, `pending` or `firing`.
    pub drop_alert: String,
    /// (job, instance, up).
    pub targets: Vec<(String, String, bool)>,
}

const MEAN: &str = "sum(roost_reputation_sum{by=\"request\"}) / sum(roost_reputation_weight{by=\"request\"})";

async fn prom(
    client: &reqwest::Client,
    base: &str,
    path: &str,
    params: &[(&str, String)],
) -> Result<serde_json::Value, String> {
    let r = client
        .get(format!("{}{path}", base.trim_end_matches('/')))
        .query(params)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let v: serde_json::Value = r.json().await.map_err(|e| e.to_string())?;
    if v["status"] != "success" {
        return Err(v["error"].as_str().unwrap_or("query failed").to_owned());
    }
    Ok(v["data"]["result"].clone())
}

async fn health(st: &AppState) -> Health {
    let base = &st.cfg.prometheus_url;
    if base.is_empty() {
        return st.backend.health().unwrap_or_default();
    }
    let mut h = Health { configured: true, drop_alert: "inactive".into(), ..Health::default() };
    let client = match reqwest::Client::builder().timeout(Duration::from_secs(3)).build() {
        Ok(c) => c,
        Err(e) => {
            h.error = Some(e.to_string());
            return h;
        }
    };
    let end = now_ms() as f64 / 1000.0;
    let params = [
        ("query", MEAN.to_owned()),
        ("start", format!("{:.0}", end - 6.0 * 3600.0)),
        ("end", format!("{end:.0}")),
        ("step", "10".to_owned()),
    ];
    match prom(&client, base, "/api/v1/query_range", &params).await {
        Ok(r) => {
            h.series = r[0]["values"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|p| Some((p[0].as_f64()?, p[1].as_str()?.parse::<f64>().ok()?)))
                .filter(|(_, v)| v.is_finite())
                .collect()
        }
        Err(e) => h.error = Some(e),
    }
    let alerts = [("query", "ALERTS{alertname=\"RoostAverageReputationDrop\"}".to_owned())];
    if let Ok(r) = prom(&client, base, "/api/v1/query", &alerts).await {
        for a in r.as_array().into_iter().flatten() {
            let s = a["metric"]["alertstate"].as_str().unwrap_or("");
            if s == "firing" || (s == "pending" && h.drop_alert != "firing") {
                h.drop_alert = s.to_owned();
            }
        }
    }
    let up = [("query", "up{job=~\"roost.*\"}".to_owned())];
    if let Ok(r) = prom(&client, base, "/api/v1/query", &up).await {
        for t in r.as_array().into_iter().flatten() {
            let m = &t["metric"];
            h.targets.push((
                m["job"].as_str().unwrap_or("").to_owned(),
                m["instance"].as_str().unwrap_or("").to_owned(),
                t["value"][1].as_str() == Some("1"),
            ));
        }
        h.targets.sort();
    }
    h
}

async fn overview(State(st): State<Arc<AppState>>, h: HeaderMap) -> Response {
    let Some(p) = principal(&st, &h) else { return Refusal::Unauthenticated.page(None) };
    let health = health(&st).await;
    let st2 = st.clone();
    let r = tokio::task::spawn_blocking(move || {
        let all = verdicts(&st2)?;
        let recent = list(&all, &ListQuery { sort: "recent".into(), per_page: 15, ..ListQuery::default() })?;
        let worst = list(&all, &ListQuery { per_page: 15, ..ListQuery::default() })?;
        let audit = recent_audit(&st2, 10);
        let mut shadow = st2.backend.shadow_verdicts();
        let now = now_ms();
        shadow.retain(|r| r.expires.is_none_or(|e| e.0 > now));
        shadow.sort_by(|a, b| b.verdict.cmp(&a.verdict).then(b.at.cmp(&a.at)));
        shadow.truncate(50);
        Ok::<_, Refusal>((recent, worst, audit, tops(&all), shadow))
    })
    .await;
    match r {
        Ok(Ok((recent, worst, audit, top, shadow))) => {
            Html(pages::overview(&p, &recent, &worst, &audit, &top, &health, st.geo.is_some(), &shadow)).into_response()
        }
        Ok(Err(e)) => e.page(Some(&p)),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

/// What is behind the bad verdicts, for the overview: the most frequent rules, feeds,
/// countries and networks.
#[derive(Default)]
pub struct Tops {
    pub rules: Vec<(String, usize)>,
    pub feeds: Vec<(String, usize)>,
    pub countries: Vec<(String, usize)>,
    pub asns: Vec<(String, usize)>,
}

fn tops(all: &[Arc<Item>]) -> Tops {
    fn top(n: BTreeMap<String, usize>) -> Vec<(String, usize)> {
        let mut v: Vec<(String, usize)> = n.into_iter().collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        v.truncate(10);
        v
    }
    let (mut rules, mut feeds, mut countries, mut asns) =
        (BTreeMap::new(), BTreeMap::new(), BTreeMap::new(), BTreeMap::new());
    for i in all.iter().filter(|i| i.record.verdict == Class::Bad) {
        for r in &i.rules {
            *rules.entry(r.clone()).or_insert(0) += 1;
        }
        for f in &i.feeds {
            *feeds.entry(f.clone()).or_insert(0) += 1;
        }
        if let Some(c) = &i.country {
            *countries.entry(c.clone()).or_insert(0) += 1;
        }
        if let Some(a) = i.asn {
            let name = match &i.as_org {
                Some(o) => format!("AS{a} {}", o.chars().take(30).collect::<String>()),
                None => format!("AS{a}"),
            };
            *asns.entry(name).or_insert(0) += 1;
        }
    }
    Tops { rules: top(rules), feeds: top(feeds), countries: top(countries), asns: top(asns) }
}

// ---- overrides and the audit log --------------------------------------------------------------

/// One audit-log entry.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AuditEntry {
    pub at: i64,
    pub by: String,
    pub from: String,
    /// `override` or `remove_override`; `override_failed` or `remove_override_failed` right
    /// after one that could not be put in force (its comment says why).
    pub action: String,
    pub prefix: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class: Option<Class>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<i64>,
    pub comment: String,
}

impl AuditEntry {
    /// What an audit-log record says; one that does not read as an entry is kept as an
    /// `unreadable` entry (its time from the stream ID, its text as the comment), never dropped.
    pub fn read(stream_id: &str, json: &str) -> AuditEntry {
        serde_json::from_str(json).unwrap_or_else(|e| AuditEntry {
            at: stream_id.split('-').next().and_then(|ms| ms.parse().ok()).unwrap_or(0),
            by: String::new(),
            from: String::new(),
            action: "unreadable".into(),
            prefix: String::new(),
            class: None,
            until: None,
            comment: format!("{e}: {}", json.chars().take(500).collect::<String>()),
        })
    }
}

#[derive(Debug, Deserialize)]
pub struct OverrideRequest {
    /// An address or prefix.
    pub prefix: String,
    /// `allow`, `challenge`, `block` or `remove`.
    pub action: String,
    /// How long (`1h`, `30m`, `7d`); empty: until removed (not for `remove`).
    #[serde(default)]
    pub expires_in: String,
    /// Why (required).
    #[serde(default)]
    pub comment: String,
    #[serde(default)]
    pub csrf: String,
}

fn apply_override(st: &AppState, p: &Principal, from: IpAddr, req: &OverrideRequest) -> Result<AuditEntry, Refusal> {
    if p.role < Role::Operator {
        return Err(Refusal::Forbidden("overrides need the operator role"));
    }
    let net: IpNetwork = match req.prefix.trim().parse::<IpAddr>() {
        Ok(ip) => IpNetwork::from(ip),
        Err(_) => req
            .prefix
            .trim()
            .parse()
            .map_err(|_| Refusal::Bad(format!("{:?} is not an address or prefix", req.prefix)))?,
    };
    if let IpNetwork::V6(n) = net
        && n.network().to_ipv4_mapped().is_some()
    {
        return Err(Refusal::Bad(format!("{net} is an IPv4-mapped address: write the IPv4 address or prefix")));
    }
    // an IPv6 client is its engine.ipv6_prefix: an override of part of it covers all of it
    let len = if net.is_ipv6() { net.prefix().min(st.cfg.ipv6_prefix) } else { net.prefix() };
    let net = IpNetwork::new(net.ip(), len).and_then(|n| IpNetwork::new(n.network(), len)).expect("valid prefix");
    let min = if net.is_ipv4() { st.cfg.min_prefix_v4 } else { st.cfg.min_prefix_v6 };
    if net.prefix() < min {
        return Err(Refusal::Bad(format!("{net} is broader than /{min}, the widest an override may be")));
    }
    let comment = req.comment.trim();
    if comment.is_empty() {
        return Err(Refusal::Bad("a comment is required: say why".into()));
    }
    if comment.chars().count() > 500 {
        return Err(Refusal::Bad("the comment is longer than 500 characters".into()));
    }
    let class = match req.action.as_str() {
        "allow" => Some(Class::Good),
        "challenge" => Some(Class::Dubious),
        "block" => Some(Class::Bad),
        "remove" => None,
        a => return Err(Refusal::Bad(format!("unknown action {a:?} (allow, challenge, block, remove)"))),
    };
    let now = now_ms();
    let until = match req.expires_in.trim() {
        "" => None,
        d => {
            let d = humantime::parse_duration(d).map_err(|e| Refusal::Bad(format!("expires_in: {e}")))?;
            // checked: an attacker-sized duration must not wrap into the past
            let until = i64::try_from(d.as_millis()).ok().and_then(|ms| now.checked_add(ms));
            Some(until.ok_or_else(|| Refusal::Bad(format!("expires_in: {d:?} is too far away")))?)
        }
    };
    let ov = class.map(|c| Override {
        class: c,
        until: until.map(Timestamp),
        by: p.name.clone(),
        comment: comment.to_owned(),
    });
    let entry = AuditEntry {
        at: now,
        by: p.name.clone(),
        from: from.to_string(),
        action: if class.is_some() { "override" } else { "remove_override" }.into(),
        prefix: net.to_string(),
        class,
        until,
        comment: comment.to_owned(),
    };
    // the audit entry first: nothing takes effect that is not on record; and when it could not
    // take effect, that is on record too
    st.backend.append_audit(&entry).map_err(|e| Refusal::Unavailable(format!("cannot write the audit log: {e}")))?;
    if let Err(e) = st.backend.apply_override(net, ov) {
        let failed = AuditEntry {
            at: now_ms(),
            action: format!("{}_failed", entry.action),
            comment: format!("not in force: {e}"),
            ..entry.clone()
        };
        if let Err(e2) = st.backend.append_audit(&failed) {
            tracing::error!(error = %e2, prefix = %net, "cannot write that the override failed to the audit log");
        }
        st.metrics.overrides.get_or_create(&metrics::ActionLabels { action: "failed".into() }).inc();
        return Err(Refusal::Unavailable(format!("cannot put the override in force: {e}")));
    }
    // the next page shows it
    st.cache.lock().expect("cache lock").at = None;
    st.metrics.overrides.get_or_create(&metrics::ActionLabels { action: req.action.clone() }).inc();
    tracing::info!(by = %p.name, prefix = %net, action = %req.action, comment, "override");
    Ok(entry)
}

async fn api_override(
    State(st): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    h: HeaderMap,
    Json(req): Json<OverrideRequest>,
) -> Response {
    let Some(p) = principal(&st, &h) else { return Refusal::Unauthenticated.api() };
    if let Err(e) = check_csrf(&p, &h, None) {
        return e.api();
    }
    let st2 = st.clone();
    let from = client_addr(&st, peer, &h);
    match tokio::task::spawn_blocking(move || apply_override(&st2, &p, from, &req)).await {
        Ok(Ok(entry)) => (StatusCode::CREATED, Json(entry)).into_response(),
        Ok(Err(e)) => e.api(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

async fn override_form(
    State(st): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    h: HeaderMap,
    Form(req): Form<OverrideRequest>,
) -> Response {
    let Some(p) = principal(&st, &h) else { return Refusal::Unauthenticated.page(None) };
    if let Err(e) = check_csrf(&p, &h, Some(&req.csrf)) {
        return e.page(Some(&p));
    }
    let st2 = st.clone();
    let p2 = p.clone();
    let from = client_addr(&st, peer, &h);
    match tokio::task::spawn_blocking(move || apply_override(&st2, &p2, from, &req)).await {
        Ok(Ok(entry)) => Html(pages::override_done(&p, &entry)).into_response(),
        Ok(Err(e)) => e.page(Some(&p)),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

fn recent_audit(st: &AppState, n: usize) -> Vec<AuditEntry> {
    match st.backend.recent_audit(n) {
        Ok(v) => {
            let unreadable = v.iter().filter(|e| e.action == "unreadable").count();
            if unreadable > 0 {
                st.metrics.audit_unreadable.inc_by(unreadable as u64);
                tracing::warn!(unreadable, "audit-log records that do not read as entries (kept, shown as unreadable)");
            }
            v
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the audit log");
            Vec::new()
        }
    }
}

/// Audit entries whose prefix covers `subject` (among the last 10,000).
fn audit_for(st: &AppState, subject: &str) -> Vec<AuditEntry> {
    let Ok(net) = subject.parse::<IpNetwork>() else { return Vec::new() };
    recent_audit(st, 10_000)
        .into_iter()
        .filter(|e| {
            e.prefix.parse::<IpNetwork>().is_ok_and(|p| p.contains(net.network()) && p.prefix() <= net.prefix())
        })
        .collect()
}

#[derive(Deserialize)]
struct AuditQuery {
    #[serde(default)]
    limit: usize,
}

async fn api_audit(State(st): State<Arc<AppState>>, h: HeaderMap, Query(q): Query<AuditQuery>) -> Response {
    if principal(&st, &h).is_none() {
        return Refusal::Unauthenticated.api();
    }
    let n = if q.limit == 0 { 100 } else { q.limit.min(10_000) };
    let st2 = st.clone();
    match tokio::task::spawn_blocking(move || recent_audit(&st2, n)).await {
        Ok(v) => Json(v).into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

async fn audit_page(State(st): State<Arc<AppState>>, h: HeaderMap) -> Response {
    let Some(p) = principal(&st, &h) else { return Refusal::Unauthenticated.page(None) };
    let st2 = st.clone();
    match tokio::task::spawn_blocking(move || recent_audit(&st2, 500)).await {
        Ok(v) => Html(pages::audit(&p, &v)).into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

/// The verdict behind an error page's reference: the proxies sign (subject, verdict time), so
/// every current verdict's reference is recomputed and compared.
fn find_reference(st: &AppState, reference: &str) -> Result<Option<Item>, Refusal> {
    let signer =
        st.signer.as_ref().ok_or_else(|| Refusal::Unavailable("the proxies' secret is not configured".into()))?;
    let want = reference.trim().to_ascii_uppercase();
    if want.len() != 10 || !want.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(Refusal::Bad("a reference is 10 letters and digits".into()));
    }
    let all = verdicts(st)?;
    if let Some(i) = all.iter().find(|i| signer.reference(&i.record.subject, i.record.at.0) == want) {
        return Ok(Some(Item::clone(i)));
    }
    // a client refused by an override alone: the proxies name the override's prefix
    let found = st.backend.overrides().into_iter().find(|o| signer.reference(&o.prefix, o.at.0) == want);
    Ok(found.map(|o| Item {
        record: VerdictRecord {
            shadow: false,
            v: 1,
            reasons: vec![format!("override by {}: {}", o.by, o.comment)],
            subject: o.prefix,
            verdict: o.class,
            reputation: 0.0,
            at: o.at,
            expires: o.until,
            requests: 0,
        },
        country: None,
        asn: None,
        as_org: None,
        rules: Vec::new(),
        feeds: Vec::new(),
    }))
}

async fn api_reference(State(st): State<Arc<AppState>>, h: HeaderMap, Path(reference): Path<String>) -> Response {
    if principal(&st, &h).is_none() {
        return Refusal::Unauthenticated.api();
    }
    let st2 = st.clone();
    match tokio::task::spawn_blocking(move || find_reference(&st2, &reference)).await {
        Ok(Ok(Some(r))) => Json(r).into_response(),
        Ok(Ok(None)) => (
            StatusCode::NOT_FOUND,
            Json(serde_json::json!({ "error": "no current verdict has this reference (it may have expired)" })),
        )
            .into_response(),
        Ok(Err(e)) => e.api(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

#[derive(Deserialize)]
struct RefQuery {
    #[serde(default, rename = "ref")]
    reference: String,
}

async fn reference_page(State(st): State<Arc<AppState>>, h: HeaderMap, Query(q): Query<RefQuery>) -> Response {
    let Some(p) = principal(&st, &h) else { return Refusal::Unauthenticated.page(None) };
    if q.reference.is_empty() {
        return Html(pages::reference(&p, "", None)).into_response();
    }
    let st2 = st.clone();
    let r2 = q.reference.clone();
    match tokio::task::spawn_blocking(move || find_reference(&st2, &r2)).await {
        Ok(Ok(found)) => Html(pages::reference(&p, &q.reference, Some(found.as_ref()))).into_response(),
        Ok(Err(e)) => e.page(Some(&p)),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], include_str!("../assets/openapi.json")).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(subject: &str, class: Class, rep: f32, reason: &str) -> Arc<Item> {
        let record = VerdictRecord {
            shadow: false,
            v: 1,
            subject: subject.into(),
            verdict: class,
            reputation: rep,
            at: Timestamp(1),
            expires: None,
            requests: 10,
            reasons: vec![reason.into()],
        };
        Arc::new(Item {
            rules: rules_cited(&record.reasons),
            feeds: feeds_cited(&record.reasons),
            country: Some(if subject.ends_with('7') { "NL" } else { "DE" }.into()),
            asn: Some(64500),
            as_org: None,
            record,
        })
    }

    #[test]
    fn lists_filter_sort_and_page() {
        let all: Vec<Arc<Item>> = (0..120)
            .map(|i| {
                rec(
                    &format!("203.0.113.{i}"),
                    if i % 3 == 0 { Class::Bad } else { Class::Dubious },
                    -(i as f32) / 200.0,
                    if i % 2 == 0 {
                        "R-1001 probe for .env: GET /.env → 404"
                    } else {
                        "listed in tor_exits since 2026-11-30 (203.0.113.0/24)"
                    },
                )
            })
            .collect();
        let l = list(&all, &ListQuery { verdict: "bad".into(), ..ListQuery::default() }).unwrap();
        assert_eq!(l.total, 40);
        assert_eq!(l.items[0].record.subject, "203.0.113.117", "worst first");
        let l =
            list(&all, &ListQuery { reason: "r-1001".into(), per_page: 10, page: 2, ..ListQuery::default() }).unwrap();
        assert_eq!((l.total, l.items.len()), (60, 10));
        assert_eq!(list(&all, &ListQuery { rule: "R-1001".into(), ..ListQuery::default() }).unwrap().total, 60);
        assert_eq!(list(&all, &ListQuery { feed: "tor_exits".into(), ..ListQuery::default() }).unwrap().total, 60);
        assert_eq!(list(&all, &ListQuery { country: "nl".into(), ..ListQuery::default() }).unwrap().total, 12);
        assert_eq!(list(&all, &ListQuery { asn: "AS64500".into(), ..ListQuery::default() }).unwrap().total, 120);
        assert_eq!(list(&all, &ListQuery { asn: "64501".into(), ..ListQuery::default() }).unwrap().total, 0);
        assert!(list(&all, &ListQuery { asn: "ASX".into(), ..ListQuery::default() }).is_err());
        assert!(list(&all, &ListQuery { sort: "nope".into(), ..ListQuery::default() }).is_err());
        assert!(list(&all, &ListQuery { verdict: "purple".into(), ..ListQuery::default() }).is_err());
        let t = tops(&all);
        assert_eq!(t.rules, vec![("R-1001".to_owned(), 20)]);
        assert_eq!(t.feeds, vec![("tor_exits".to_owned(), 20)]);
        assert_eq!(t.countries[0], ("DE".to_owned(), 36));
    }

    #[test]
    fn ipv6_clients_are_named_by_the_engines_prefix() {
        assert_eq!(subject_of("2001:db8:1:2:3::9", 64).unwrap(), "2001:db8:1:2::/64");
        assert_eq!(subject_of("2001:db8:1:2:3::9", 56).unwrap(), "2001:db8:1::/56");
        assert_eq!(subject_of("203.0.113.7", 56).unwrap(), "203.0.113.7");
        assert_eq!(subject_of("203.0.113.0/24", 64).unwrap(), "203.0.113.0/24");
        assert!(subject_of("<script>", 64).is_err());
    }

    #[test]
    fn rules_and_feeds_are_read_from_reasons() {
        let r = vec![
            "R-1003 probe for database admin panels: GET /pma/ → 404".to_owned(),
            "rules version b19ab1835779 (45 rules)".to_owned(),
            "LOCAL-7 our own rule".to_owned(),
            "feed: listed in spamhaus_drop since 2026-11-01 (45.95.168.0/24, SBL1)".to_owned(),
            "5 of 5 requests answered 404/410".to_owned(),
        ];
        assert_eq!(rules_cited(&r), vec!["R-1003", "LOCAL-7"]);
        assert_eq!(feeds_cited(&r), vec!["spamhaus_drop"]);
    }
}
