//! Putting the proxy together on pingora's server: listeners (plain, h2c, TLS with SNI), the
//! upstream pool with its health checks, the Redis follower, /metrics, and graceful restart
//! (`--upgrade` takes the listeners over from a running proxy; SIGQUIT hands them over).

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::apps::http_app::ServeHttp;
use pingora::lb::LoadBalancer;
use pingora::lb::health_check::{HttpHealthCheck, TcpHealthCheck};
use pingora::lb::selection::RoundRobin;
use pingora::listeners::tls::TlsSettings;
use pingora::listeners::{PreTlsProcess, TlsAccept, TlsAcceptCallbacks};
use pingora::protocols::http::ServerSession;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::tls::TlsRef;
use pingora::protocols::{GetSocketDigest, SocketDigest, Stream, UniqueID};
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::{Server, ShutdownWatch};
use pingora::services::background::background_service;
use pingora::services::listening::Service;
use pingora::tls::pkey::{PKey, Private};
use pingora::tls::ssl::NameType;
use pingora::tls::x509::X509;
use prometheus_client::registry::Registry;
use roost_verdicts::RedisConfig;

use crate::accesslog::AccessLog;
use crate::cache::VerdictCache;
use crate::challenge::{ReplayGuard, Signer};
use crate::config::{CertKey, ProxyConfig};
use crate::metrics::{OutcomeLabels, ProxyMetrics, UpstreamLabels};
use crate::service::Waffles;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("{what} {path}: {source}")]
    File {
        what: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS certificate {path}: {msg}")]
    Tls { path: String, msg: String },
    #[error("proxy.upstreams: {0}")]
    Upstreams(std::io::Error),
    #[error("starting: {0}")]
    Start(String),
    #[error("listening on {addr}: {source}")]
    Listen {
        addr: String,
        #[source]
        source: std::io::Error,
    },
}

/// Every configured listener can be had, or an error naming the first that cannot: pingora
/// would wait for a taken address forever (it retries, for an upgrade's hand-over). Not asked
/// when upgrading: the running proxy holds them and hands them over.
fn check_listeners<'a>(addrs: impl IntoIterator<Item = &'a str>) -> Result<(), Error> {
    for addr in addrs {
        if let Err(source) = std::net::TcpListener::bind(addr) {
            return Err(Error::Listen { addr: addr.to_owned(), source });
        }
    }
    Ok(())
}

/// How this process starts.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// Take the listeners over from a running proxy (graceful upgrade).
    pub upgrade: bool,
    pub daemon: bool,
}

/// Where the proxy's verdicts come from.
pub enum VerdictSource {
    /// Follow a Redis verdict store (`roost proxy`); empty URL: none, every client is unknown.
    Redis(RedisConfig),
    /// The caller applies verdicts to [`Proxy::cache`] itself (`roost up`: straight from its
    /// engine).
    Fed,
}

/// Where the proxy's metrics are served.
pub enum MetricsAt<'a> {
    /// Its own `/metrics` listener on `proxy.metrics_listen`.
    Listener,
    /// Registered in the caller's registry (`roost up` serves one `/metrics`); call
    /// [`Proxy::refresh_upstream_health`] before encoding it.
    Registry(&'a mut Registry),
}

/// A proxy ready to run: the pingora server, and what the caller may feed or read.
pub struct Proxy {
    pub server: Server,
    pub cache: Arc<VerdictCache>,
    /// Each client's challenge outcomes, as this process counted them.
    pub outcomes: Arc<crate::outcomes::Outcomes>,
    pub metrics: Arc<ProxyMetrics>,
    upstreams: Arc<LoadBalancer<RoundRobin>>,
}

impl Proxy {
    /// Updates `roost_proxy_upstream_healthy` from the health checks.
    pub fn refresh_upstream_health(&self) {
        refresh_upstream_health(&self.metrics, &self.upstreams);
    }

    /// Runs until `stop` turns true, in this thread (pingora starts runtimes of its own).
    pub fn run_until(self, stop: tokio::sync::watch::Receiver<bool>) {
        self.server.run(pingora::server::RunArgs { shutdown_signal: Box::new(StopWhen(stop)) });
    }

    /// A handle that outlives the server (the server is consumed by running it).
    pub fn health(&self) -> UpstreamHealth {
        UpstreamHealth { metrics: self.metrics.clone(), upstreams: self.upstreams.clone() }
    }
}

/// Stops a proxy run inside another process (`roost up`) when the value turns true:
/// `server.run(RunArgs { shutdown_signal: Box::new(StopWhen(rx)) })`.
pub struct StopWhen(pub tokio::sync::watch::Receiver<bool>);

#[async_trait]
impl pingora::server::ShutdownSignalWatch for StopWhen {
    async fn recv(&self) -> pingora::server::ShutdownSignal {
        let mut rx = self.0.clone();
        let _ = rx.wait_for(|stop| *stop).await;
        // graceful: the listeners are told first and stop accepting (a fast shutdown tears the
        // runtimes down under them, and their accept loops spin on the error for good)
        pingora::server::ShutdownSignal::GracefulTerminate
    }
}

/// Refreshes the upstream health metric from outside the proxy's own runtime.
#[derive(Clone)]
pub struct UpstreamHealth {
    metrics: Arc<ProxyMetrics>,
    upstreams: Arc<LoadBalancer<RoundRobin>>,
}

impl UpstreamHealth {
    pub fn refresh(&self) {
        refresh_upstream_health(&self.metrics, &self.upstreams);
    }
}

fn refresh_upstream_health(metrics: &ProxyMetrics, upstreams: &LoadBalancer<RoundRobin>) {
    let backends = upstreams.backends();
    for b in backends.get_backend().iter() {
        let up = i64::from(backends.ready(b));
        metrics.upstream_healthy.get_or_create(&UpstreamLabels { upstream: b.addr.to_string() }).set(up);
    }
}

/// Runs the proxy until it is told to stop. Never returns on success: pingora exits the process.
pub fn run(cfg: ProxyConfig, redis: RedisConfig, ipv6_prefix: u8, opts: RunOptions) -> Result<(), Error> {
    let s = secret(&cfg)?;
    let p = build(cfg, VerdictSource::Redis(redis), ipv6_prefix, &opts, s, MetricsAt::Listener)?;
    p.server.run_forever();
}

/// Puts a proxy together: listeners, upstream pool and health checks, the verdict cache (and
/// its Redis follower), the access log, metrics. `secret` signs challenges and cookies
/// ([`secret`] reads it from the config).
pub fn build(
    cfg: ProxyConfig,
    verdicts: VerdictSource,
    ipv6_prefix: u8,
    opts: &RunOptions,
    secret: Vec<u8>,
    metrics_at: MetricsAt<'_>,
) -> Result<Proxy, Error> {
    cfg.validate()?;
    if !opts.upgrade {
        let metrics_listen = cfg.metrics_listen.to_string();
        let own_metrics = matches!(metrics_at, MetricsAt::Listener).then_some(metrics_listen.as_str());
        check_listeners(
            cfg.listen.iter().chain(cfg.tls.iter().map(|t| &t.listen)).map(String::as_str).chain(own_metrics),
        )?;
    }
    let cfg = Arc::new(cfg);
    let signer = Signer::new(&secret);
    let metrics = Arc::new(ProxyMetrics::default());
    let mut own_registry = Registry::default();
    let listener = match metrics_at {
        MetricsAt::Listener => {
            metrics.register(&mut own_registry);
            true
        }
        MetricsAt::Registry(r) => {
            metrics.register(r);
            false
        }
    };
    let cache = Arc::new(VerdictCache::new(ipv6_prefix));
    let outcomes = Arc::new(crate::outcomes::Outcomes::default());
    let threads = Threads::default();
    let fleet = match &verdicts {
        VerdictSource::Redis(redis) if !redis.url.is_empty() => Some(Arc::new(std::sync::Mutex::new(
            roost_verdicts::Store::new(redis).map_err(|e| Error::Start(e.to_string()))?,
        ))),
        _ => None,
    };
    match verdicts {
        VerdictSource::Redis(redis) if redis.url.is_empty() => {
            tracing::warn!("redis.url is empty: no verdicts; every client follows proxy.unknown");
        }
        VerdictSource::Redis(redis) => {
            let (o, c, m) = (outcomes.clone(), cache.clone(), metrics.clone());
            let r = redis.clone();
            threads
                .add("the challenge outcomes thread", move |stop| crate::outcomes::spawn_flush(r, o, stop).map(drop));
            threads.add("the Redis follower thread", move |stop| crate::sync::spawn(redis, c, m, stop).map(drop));
        }
        VerdictSource::Fed => {
            metrics.redis_up.set(1);
        }
    }
    let log = if cfg.access_log.is_empty() {
        AccessLog::off(metrics.clone())
    } else {
        let (log, writer) = AccessLog::open(cfg.access_log.clone().into(), metrics.clone())
            .map_err(|source| Error::File { what: "access log", path: cfg.access_log.clone(), source })?;
        threads.add("the access log writer", move |_| writer.start());
        log
    };
    let mut conf = ServerConf {
        threads: if cfg.threads == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            cfg.threads
        },
        grace_period_seconds: Some(cfg.grace_period.as_secs()),
        graceful_shutdown_timeout_seconds: Some(cfg.shutdown_timeout.as_secs()),
        upgrade_sock: cfg.upgrade_sock.clone(),
        pid_file: cfg.pid_file.clone(),
        daemon: opts.daemon,
        ..ServerConf::default()
    };
    conf.work_stealing = false;
    let opt = Opt { upgrade: opts.upgrade, daemon: opts.daemon, ..Opt::default() };
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    server.bootstrap();

    let mut lb = LoadBalancer::<RoundRobin>::try_from_iter(cfg.upstreams.iter().map(String::as_str))
        .map_err(Error::Upstreams)?;
    if cfg.health_check.path.is_empty() {
        lb.set_health_check(TcpHealthCheck::new());
    } else {
        let mut hc = HttpHealthCheck::new(&cfg.health_check.host, false);
        hc.req.set_uri(
            cfg.health_check.path.parse().map_err(|_| {
                Error::Start(format!("proxy.health_check.path {:?} is not a path", cfg.health_check.path))
            })?,
        );
        lb.set_health_check(Box::new(hc));
    }
    lb.health_check_frequency = Some(cfg.health_check.interval);
    let health = background_service("upstream health checks", lb);
    let upstreams = health.task();

    let waffles = Arc::new(Waffles {
        cfg: cfg.clone(),
        cache: cache.clone(),
        signer,
        replay: ReplayGuard::new(cfg.challenge.max_redeemed),
        fleet,
        metrics: metrics.clone(),
        log,
        upstreams: upstreams.clone(),
        outcomes: outcomes.clone(),
    });
    let header_timeout = cfg.client_timeout.min(cfg.keepalive_timeout);
    let pp = cfg.proxy_protocol.then(|| {
        Arc::new(ProxyHeaders {
            trusted: cfg.trusted_proxies.clone(),
            timeout: header_timeout,
            metrics: metrics.clone(),
        })
    });
    let app = ProxyProtocolApp {
        inner: Arc::new(Http { waffles, h2c: cfg.h2c }),
        // TLS connections have theirs read before the handshake (below)
        headers: pp.clone(),
    };
    let mut svc = Service::new("roost proxy".into(), app);
    for l in &cfg.listen {
        svc.add_tcp(l);
    }
    for t in &cfg.tls {
        let certs = Certs::load(&t.certs)?;
        let mut tls = TlsSettings::with_callbacks(Box::new(certs) as TlsAcceptCallbacks)
            .map_err(|e| Error::Tls { path: t.listen.clone(), msg: e.to_string() })?;
        tls.enable_h2();
        svc.add_tls_with_settings(&t.listen, None, tls);
    }
    if let Some(pp) = pp {
        svc.endpoints().set_pre_tls_callback(pp);
    }

    if listener {
        let mut metrics_svc = Service::new(
            "roost proxy metrics".into(),
            pingora::apps::http_app::HttpServer::new_app(MetricsApp {
                registry: own_registry,
                metrics: metrics.clone(),
                upstreams: upstreams.clone(),
            }),
        );
        metrics_svc.add_tcp(&cfg.metrics_listen.to_string());
        server.add_service(metrics_svc);
    }

    tracing::info!(
        listen = ?cfg.listen,
        tls = cfg.tls.len(),
        upstreams = ?cfg.upstreams,
        metrics = %if listener { cfg.metrics_listen.to_string() } else { "in process".into() },
        "roost proxy: serving"
    );
    server.add_service(background_service("roost proxy threads", threads));
    server.add_service(health);
    server.add_service(svc);
    Ok(Proxy { server, cache, outcomes, metrics, upstreams })
}

type Starter = Box<dyn FnOnce(Arc<AtomicBool>) -> std::io::Result<()> + Send>;

/// The proxy's own threads (the Redis follower, the outcome flusher, the access-log writer),
/// started as a pingora background service: that is after pingora has daemonized (`--daemon`
/// forks, and a fork keeps only the thread that called it), and they are told to stop when the
/// server shuts down.
#[derive(Default)]
struct Threads {
    starters: std::sync::Mutex<Vec<(&'static str, Starter)>>,
    stop: Arc<AtomicBool>,
}

impl Threads {
    fn add(&self, what: &'static str, start: impl FnOnce(Arc<AtomicBool>) -> std::io::Result<()> + Send + 'static) {
        self.starters.lock().expect("threads lock").push((what, Box::new(start)));
    }
}

#[async_trait]
impl pingora::services::background::BackgroundService for Threads {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let starters = std::mem::take(&mut *self.starters.lock().expect("threads lock"));
        for (what, start) in starters {
            if let Err(e) = start(self.stop.clone()) {
                // without its follower the proxy would serve on with no verdicts
                tracing::error!(error = %e, "cannot start {what}; exiting");
                std::process::exit(1);
            }
        }
        let _ = shutdown.changed().await;
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// The signing secret: `proxy.challenge.secret_file`, or a random one for this process.
pub fn secret(cfg: &ProxyConfig) -> Result<Vec<u8>, Error> {
    let f = &cfg.challenge.secret_file;
    if f.is_empty() {
        tracing::warn!(
            "proxy.challenge.secret_file is empty: a random secret for this process; clearance cookies end with it and other proxies refuse them"
        );
        let mut b = vec![0u8; 32];
        getrandom::fill(&mut b).map_err(|e| Error::Start(format!("randomness: {e}")))?;
        return Ok(b);
    }
    let s = std::fs::read(f).map_err(|source| Error::File { what: "challenge secret", path: f.clone(), source })?;
    let s = s.trim_ascii().to_vec();
    if s.len() < 16 {
        return Err(Error::Start(format!("proxy.challenge.secret_file {f}: at least 16 bytes of secret, please")));
    }
    Ok(s)
}

/// Every connection's first stop: HTTP/2 (ALPN h2 on TLS, or the h2c preface on a plain
/// listener with `h2c` on) goes to [`crate::http2`], everything else to [`crate::h1`].
struct Http {
    waffles: Arc<Waffles>,
    h2c: bool,
}

/// The HTTP/2 connection preface.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

#[async_trait]
impl ServerApp for Http {
    async fn process_new(self: &Arc<Self>, mut stream: Stream, shutdown: &ShutdownWatch) -> Option<Stream> {
        let tls = stream.get_ssl().is_some();
        let mut h2 = matches!(stream.selected_alpn_proto(), Some(pingora::protocols::ALPN::H2));
        if !h2 && !tls && self.h2c {
            // pingora's peek waits for all 24 bytes: bounded, or a client sending less (or
            // nothing) would hold the connection for good
            let mut buf = [0u8; H2_PREFACE.len()];
            let wait = self.waffles.cfg.client_timeout.min(self.waffles.cfg.keepalive_timeout);
            // too few bytes in time: HTTP/1 (nothing was consumed)
            if let Ok(Ok(true)) = tokio::time::timeout(wait, stream.try_peek(&mut buf)).await {
                h2 = buf == H2_PREFACE;
            }
        }
        if h2 {
            crate::http2::serve(&self.waffles, stream, shutdown).await;
        } else {
            crate::h1::serve(&self.waffles, stream, shutdown).await;
        }
        None
    }
}

/// Reads the PROXY protocol header of each connection from a trusted peer ([`crate::proxyproto`])
/// and makes the client it names the connection's peer address.
struct ProxyHeaders {
    trusted: Vec<ipnetwork::IpNetwork>,
    timeout: Duration,
    metrics: Arc<ProxyMetrics>,
}

impl ProxyHeaders {
    /// `Err` drops the connection (counted and logged).
    async fn accept<S>(&self, stream: &mut S) -> Result<(), crate::proxyproto::Error>
    where
        S: tokio::io::AsyncRead + Unpin + GetSocketDigest + UniqueID + ?Sized,
    {
        let Some(peer) = stream.get_socket_digest().and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).copied())
        else {
            return Ok(());
        };
        if !crate::clientip::is_trusted(crate::clientip::canonical(peer.ip()), &self.trusted) {
            return Ok(());
        }
        let count = |outcome| self.metrics.proxy_protocol.get_or_create(&OutcomeLabels { outcome }).inc();
        let read = tokio::time::timeout(self.timeout, crate::proxyproto::read(stream)).await;
        match read.unwrap_or(Err(crate::proxyproto::Error::Timeout)) {
            Ok(Some(client)) => {
                count("client");
                let digest = SocketDigest::from_raw_fd(stream.id());
                let _ = digest.peer_addr.set(Some(pingora::protocols::l4::socket::SocketAddr::Inet(client)));
                stream.set_socket_digest(digest);
                Ok(())
            }
            Ok(None) => {
                count("local");
                Ok(())
            }
            Err(e) => {
                count(e.label());
                tracing::debug!(%peer, error = %e, "dropping a connection from a trusted proxy");
                Err(e)
            }
        }
    }
}

#[async_trait]
impl PreTlsProcess for ProxyHeaders {
    async fn process(&self, stream: &mut L4Stream) -> pingora::Result<()> {
        self.accept(stream).await.map_err(|e| pingora::Error::explain(pingora::ErrorType::AcceptError, e.to_string()))
    }
}

/// The plain listeners' app: reads a connection's PROXY header first when `headers` is set,
/// then serves every request of the connection with `inner`.
struct ProxyProtocolApp<A> {
    inner: Arc<A>,
    headers: Option<Arc<ProxyHeaders>>,
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for ProxyProtocolApp<A> {
    async fn process_new(self: &Arc<Self>, mut stream: Stream, shutdown: &ShutdownWatch) -> Option<Stream> {
        let Some(headers) = &self.headers else {
            return self.inner.process_new(stream, shutdown).await;
        };
        if stream.get_ssl().is_none() && headers.accept(&mut *stream).await.is_err() {
            return None;
        }
        // the connection's later requests are served here, not handed back: pingora would
        // bring them to `process_new` again, which would look for another header
        let mut next = self.inner.process_new(stream, shutdown).await;
        while let Some(s) = next {
            next = self.inner.process_new(s, shutdown).await;
        }
        None
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await
    }
}

/// Certificates for one TLS listener, picked by the client's SNI.
struct Certs {
    certs: Vec<LoadedCert>,
}

struct LoadedCert {
    names: Vec<String>,
    leaf: X509,
    chain: Vec<X509>,
    key: PKey<Private>,
}

impl Certs {
    fn load(list: &[CertKey]) -> Result<Certs, Error> {
        let mut certs = Vec::new();
        for ck in list {
            let tls_err = |msg: String| Error::Tls { path: ck.cert.clone(), msg };
            let pem = std::fs::read(&ck.cert).map_err(|source| Error::File {
                what: "TLS certificate",
                path: ck.cert.clone(),
                source,
            })?;
            let mut stack = X509::stack_from_pem(&pem).map_err(|e| tls_err(e.to_string()))?;
            if stack.is_empty() {
                return Err(tls_err("no certificate in the file".into()));
            }
            let leaf = stack.remove(0);
            let key_pem = std::fs::read(&ck.key).map_err(|source| Error::File {
                what: "TLS key",
                path: ck.key.clone(),
                source,
            })?;
            let key = PKey::private_key_from_pem(&key_pem)
                .map_err(|e| Error::Tls { path: ck.key.clone(), msg: e.to_string() })?;
            let mut names: Vec<String> = leaf
                .subject_alt_names()
                .map(|s| s.iter().filter_map(|n| n.dnsname().map(|d| d.to_ascii_lowercase())).collect())
                .unwrap_or_default();
            if names.is_empty() {
                for e in leaf.subject_name().entries_by_nid(pingora::tls::nid::Nid::COMMONNAME) {
                    if let Ok(s) = e.data().to_string() {
                        names.push(s.to_ascii_lowercase());
                    }
                }
            }
            certs.push(LoadedCert { names, leaf, chain: stack, key });
        }
        Ok(Certs { certs })
    }

    fn pick(&self, sni: Option<&str>) -> &LoadedCert {
        let Some(sni) = sni.map(str::to_ascii_lowercase) else { return &self.certs[0] };
        let matches = |n: &str| {
            n == sni
                || n.strip_prefix("*.").is_some_and(|base| sni.split_once('.').is_some_and(|(_, rest)| rest == base))
        };
        self.certs.iter().find(|c| c.names.iter().any(|n| matches(n))).unwrap_or(&self.certs[0])
    }
}

#[async_trait]
impl TlsAccept for Certs {
    async fn certificate_callback(&self, ssl: &mut TlsRef) {
        use pingora::tls::ext;
        let c = self.pick(ssl.servername(NameType::HOST_NAME));
        if let Err(e) = ext::ssl_use_certificate(ssl, &c.leaf) {
            tracing::warn!(error = %e, "TLS: using the certificate");
        }
        if let Err(e) = ext::ssl_use_private_key(ssl, &c.key) {
            tracing::warn!(error = %e, "TLS: using the key");
        }
        for ch in &c.chain {
            if let Err(e) = ext::ssl_add_chain_cert(ssl, ch) {
                tracing::warn!(error = %e, "TLS: adding a chain certificate");
            }
        }
    }
}

struct MetricsApp {
    registry: Registry,
    metrics: Arc<ProxyMetrics>,
    upstreams: Arc<LoadBalancer<RoundRobin>>,
}

#[async_trait]
impl ServeHttp for MetricsApp {
    async fn response(&self, session: &mut ServerSession) -> http::Response<Vec<u8>> {
        let path = session.req_header().uri.path().to_owned();
        // scrapes are seconds apart: no idle connections kept for them
        session.set_keepalive(None);
        let (status, ctype, body) = match path.as_str() {
            "/metrics" => {
                refresh_upstream_health(&self.metrics, &self.upstreams);
                let mut out = String::new();
                match prometheus_client::encoding::text::encode(&mut out, &self.registry) {
                    Ok(()) => (200, "application/openmetrics-text; version=1.0.0; charset=utf-8", out.into_bytes()),
                    Err(_) => (500, "text/plain", b"encoding the metrics failed\n".to_vec()),
                }
            }
            "/healthz" => (200, "text/plain", b"ok\n".to_vec()),
            _ => (404, "text/plain", b"not found\n".to_vec()),
        };
        http::Response::builder()
            .status(status)
            .header("content-type", ctype)
            .header("content-length", body.len())
            .body(body)
            .expect("a valid response")
    }
}
