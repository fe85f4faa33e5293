//! `roost up`: the appliance in one process. Follows the configured access logs, scores every
//! request, keeps verdicts in memory, and serves a JSON API and Prometheus metrics on loopback.
//! With `--demo`, a bundled attack scenario is replayed so verdicts show within seconds.
//!
//! Threads: one per log source (tail + parse), one scorer that owns the engine, and the tokio
//! runtime serving HTTP. Batches flow tail → scorer over a bounded channel, so a slow scorer
//! slows reading rather than growing memory.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use roost_engine::alarm::{DropDetector, Sample};
use roost_engine::{Class, Engine, RequestEvent, Timestamp, VerdictChange};
use roost_ingest::tail::{Start, Tail};
use roost_logformat::{FormatKind, Parser};
use serde::Deserialize;

use crate::alert::AlertConfig;
use crate::config::{Config, LogSource, LogStart};

/// Verdict changes kept for `/api/v1/changes`.
const RECENT: usize = 1000;
/// Samples of the average reputation kept for the admin overview's chart.
const SERIES_KEPT: usize = 2160;
/// Lines per batch handed from a tail to the scorer.
const BATCH: usize = 1024;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: String,
}

#[derive(Default)]
struct Metrics {
    lines: Counter,
    parse_errors: Family<KindLabel, Counter>,
    events: Counter,
    rotations: Counter,
    rules: crate::rules::RuleMetrics,
    redis_dropped: Counter,
    kafka_dropped: Counter,
    population: roost_scorer::PopulationMetrics,
    drop_state: Gauge,
    drop_short: Gauge<f64, std::sync::atomic::AtomicU64>,
    drop_baseline: Gauge<f64, std::sync::atomic::AtomicU64>,
    drop_spread: Gauge<f64, std::sync::atomic::AtomicU64>,
}

impl Metrics {
    fn register(&self, r: &mut Registry) {
        r.register("roost_log_lines", "Access-log lines read", self.lines.clone());
        r.register("roost_log_parse_errors", "Access-log lines that did not parse, by kind", self.parse_errors.clone());
        r.register("roost_log_rotations", "Log rotations and truncations followed", self.rotations.clone());
        r.register("roost_events", "Requests scored", self.events.clone());
        self.rules.register(r);
        r.register(
            "roost_up_redis_writes_dropped",
            "Verdict writes dropped while Redis was unreachable too long (a full rewrite follows)",
            self.redis_dropped.clone(),
        );
        r.register(
            "roost_up_kafka_records_dropped",
            "Verdict and audit records not written to Kafka (its queue full, or the broker away too long)",
            self.kafka_dropped.clone(),
        );
        self.population.register(r);
        r.register(
            "roost_reputation_drop_state",
            "The in-process RoostAverageReputationDrop alert: 0 inactive, 1 pending, 2 firing",
            self.drop_state.clone(),
        );
        r.register(
            "roost_reputation_drop_short_mean",
            "The drop signal's recent (short-window) mean of the request-weighted reputation",
            self.drop_short.clone(),
        );
        r.register(
            "roost_reputation_drop_baseline",
            "The drop signal's baseline: the median over the long window",
            self.drop_baseline.clone(),
        );
        r.register(
            "roost_reputation_drop_spread",
            "The drop signal's baseline interquartile range",
            self.drop_spread.clone(),
        );
    }
}

pub(crate) struct Shared {
    pub(crate) engine: Mutex<Engine>,
    recent: Mutex<VecDeque<VerdictChange>>,
    metrics: Metrics,
    registry: Registry,
    /// While the demo replays, time follows its events rather than the wall clock.
    demo_running: AtomicBool,
    stop: AtomicBool,
    /// Set by SIGHUP: reload the rule files now.
    reload_rules: Arc<AtomicBool>,
    /// The average-reputation drop signal.
    pub(crate) drop: Mutex<DropDetector>,
    /// (Unix s, request-weighted mean reputation), sampled with the drop signal: the admin
    /// overview's chart.
    pub(crate) series: Mutex<VecDeque<(f64, f64)>>,
    /// Current verdicts, histories and the audit log (the admin UI reads them).
    pub(crate) verdicts: Mutex<crate::up_store::Verdicts>,
    /// Redis, when `redis.url` is set.
    pub(crate) redis: std::sync::OnceLock<crate::up_store::RedisMirror>,
    /// The verdicts and audit topics, when `kafka.brokers` is set.
    pub(crate) kafka: std::sync::OnceLock<crate::up_store::KafkaMirror>,
    /// The in-process proxy's verdict cache.
    pub(crate) cache: std::sync::OnceLock<Arc<roost_proxy::cache::VerdictCache>>,
    /// The overrides as the in-process proxy holds them (the admin resolves their references).
    pub(crate) overrides: Mutex<std::collections::HashMap<String, roost_verdicts::OverrideEntry>>,
    proxy_health: std::sync::OnceLock<roost_proxy::UpstreamHealth>,
    /// The in-process proxy's challenge outcomes per client.
    pub(crate) outcomes: std::sync::OnceLock<Arc<roost_proxy::outcomes::Outcomes>>,
    alert: AlertConfig,
    /// The admin UI's base URL, for links in alerts.
    admin_url: String,
    /// The in-process flowspec controller's verdict input, when `bgp.peers` is set.
    pub(crate) bgp: std::sync::OnceLock<std::sync::mpsc::Sender<crate::bgp::Input>>,
}

pub(crate) fn wall_now() -> Timestamp {
    let d = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    Timestamp(d.as_millis() as i64)
}

pub struct UpArgs {
    pub demo: bool,
    pub listen: Option<SocketAddr>,
}

pub fn run(cfg: Config, args: UpArgs) -> anyhow::Result<()> {
    let mut engine = Engine::new(cfg.engine.clone())?;
    let rule_set = crate::rules::compile(&cfg.rules, None)?;
    tracing::info!(version = rule_set.version(), rules = rule_set.rules().len(), "known-bad rules loaded");
    let metrics = Metrics::default();
    metrics.rules.in_force(&rule_set);
    let rules = roost_rules::handle(rule_set);
    engine.add_inspector(Box::new(roost_rules::RulesInspector::new(rules.clone(), cfg.rules.max_clients)));
    let feed_defs = crate::feeds::definitions(&cfg.feeds)?;
    let enrich = crate::feeds::Enrichment::new(&cfg, roost_feeds::FeedIndex::default())?;
    enrich.attach(&mut engine);
    let mut registry = Registry::default();
    metrics.register(&mut registry);
    let feed_metrics = crate::feeds::FeedMetrics::default();
    feed_metrics.register(&mut registry);
    // the proxy and the admin UI share the signing secret: error-page references resolve
    let secret = roost_proxy::secret(&cfg.proxy)?;
    let proxy = if cfg.up.proxy {
        let pcfg = if args.demo { demo_proxy_config(&cfg.proxy) } else { cfg.proxy.clone() };
        if args.demo {
            crate::demo_app::start_if_free(&pcfg.upstreams)?;
        }
        Some(roost_proxy::build(
            pcfg,
            roost_proxy::Verdicts::Fed,
            cfg.engine.ipv6_prefix,
            &roost_proxy::RunOptions::default(),
            secret.clone(),
            roost_proxy::MetricsAt::Registry(&mut registry),
        )?)
    } else {
        None
    };
    let feeds_stop = Arc::new(AtomicBool::new(false));
    let shared = Arc::new(Shared {
        engine: Mutex::new(engine),
        recent: Mutex::new(VecDeque::new()),
        metrics,
        registry,
        demo_running: AtomicBool::new(args.demo),
        stop: AtomicBool::new(false),
        reload_rules: Arc::default(),
        drop: Mutex::new(DropDetector::new(cfg.alert.drop.clone())),
        alert: cfg.alert.clone(),
        admin_url: if cfg.alert.admin_url.is_empty() {
            format!("http://{}", args.listen.unwrap_or(cfg.up.listen))
        } else {
            cfg.alert.admin_url.trim_end_matches('/').to_owned()
        },
        bgp: std::sync::OnceLock::new(),
        series: Mutex::new(VecDeque::new()),
        verdicts: Mutex::new(crate::up_store::Verdicts::default()),
        redis: std::sync::OnceLock::new(),
        kafka: std::sync::OnceLock::new(),
        cache: std::sync::OnceLock::new(),
        overrides: Mutex::new(Default::default()),
        proxy_health: std::sync::OnceLock::new(),
        outcomes: std::sync::OnceLock::new(),
    });
    if !cfg.redis.url.is_empty() {
        let m = crate::up_store::RedisMirror::start(&cfg.redis, shared.metrics.redis_dropped.clone(), shared.clone())?;
        let _ = shared.redis.set(m);
    }
    if cfg.kafka.enabled() {
        let m = crate::up_store::KafkaMirror::start(&cfg.kafka, shared.metrics.kafka_dropped.clone())?;
        let _ = shared.kafka.set(m);
    }
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut threads = Vec::new();
    if let Some(p) = proxy {
        let _ = shared.cache.set(p.cache.clone());
        let _ = shared.proxy_health.set(p.health());
        let _ = shared.outcomes.set(p.outcomes.clone());
        let rx = stop_rx.clone();
        threads.push(std::thread::Builder::new().name("roost-proxy".into()).spawn(move || p.run_until(rx))?);
    }
    let (tx, rx) = sync_channel::<Vec<RequestEvent<'static>>>(64);
    for src in &cfg.logs {
        let (src, tx, sh) = (src.clone(), tx.clone(), shared.clone());
        let start = match cfg.up.start {
            LogStart::End => Start::End,
            LogStart::Beginning => Start::Beginning,
        };
        let poll = cfg.up.poll_interval;
        // Opened (and, for `start = "end"`, their ends noted) before the API is announced: a
        // line written after "roost up: API … on" is always read.
        let mut tail = match Tail::new(&src.path, start) {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(path = %src.path, error = %e, "bad log path pattern; not following it");
                continue;
            }
        };
        tail.rescan();
        threads.push(
            std::thread::Builder::new().name("roost-tail".into()).spawn(move || tail_loop(src, tail, poll, tx, sh))?,
        );
    }
    if args.demo {
        let (tx, sh) = (tx.clone(), shared.clone());
        threads.push(std::thread::Builder::new().name("roost-demo".into()).spawn(move || demo_loop(tx, sh))?);
    }
    drop(tx);
    {
        let sh = shared.clone();
        let watch = crate::rules::spawn_watch(
            &cfg.rules,
            rules,
            shared.metrics.rules.clone(),
            shared.reload_rules.clone(),
            move || sh.stop.load(Ordering::Relaxed),
        )?;
        threads.extend(watch);
    }
    threads.push(crate::feeds::spawn_sync(
        &cfg,
        feed_defs,
        enrich.feeds.clone(),
        enrich.geo.as_ref().map(|(h, _)| h.clone()),
        feed_metrics,
        feeds_stop.clone(),
    )?);
    let sh = shared.clone();
    let scorer = std::thread::Builder::new().name("roost-scorer".into()).spawn(move || scorer_loop(rx, sh))?;

    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let bgp_stop = Arc::new(AtomicBool::new(false));
    if !cfg.bgp.peers.is_empty() {
        // the flowspec controller in process: the engine's verdict changes are its source
        let (tx, planner) = crate::bgp::start_in_process(&cfg, &rt, bgp_stop.clone())?;
        let _ = shared.bgp.set(tx);
        threads.push(planner);
    }
    let admin = if cfg.up.admin {
        let mut acfg = cfg.admin.clone();
        if acfg.listen.ip().is_loopback() && acfg.cookie_secure {
            // a browser keeps a Secure cookie only over HTTPS (or from loopback, not everywhere)
            acfg.cookie_secure = false;
        }
        let users = admin_users(&acfg)?;
        let backend = Arc::new(crate::up_store::UpBackend { shared: shared.clone() });
        let st = roost_admin::state(acfg, users, backend, Some(secret), enrich.geo.as_ref().map(|(h, _)| h.clone()))?;
        let mut rx = stop_rx.clone();
        Some(rt.spawn(roost_admin::serve(st, async move {
            let _ = rx.wait_for(|stop| *stop).await;
        })))
    } else {
        None
    };
    let listen = args.listen.unwrap_or(cfg.up.listen);
    let result = rt.block_on(serve(listen, shared.clone()));
    let _ = stop_tx.send(true);
    if let Some(a) = admin {
        match rt.block_on(a) {
            Ok(Err(e)) => tracing::error!(error = %e, "the admin UI stopped"),
            Err(e) => tracing::error!(error = %e, "the admin UI panicked"),
            Ok(Ok(())) => {}
        }
    }
    shared.stop.store(true, Ordering::Relaxed);
    feeds_stop.store(true, Ordering::Relaxed);
    bgp_stop.store(true, Ordering::Relaxed);
    for t in threads {
        let _ = t.join();
    }
    let _ = scorer.join();
    result
}

/// The admin UI's users: the users file, or, when it does not exist, one operator `admin` with a
/// password made up for this run and printed once (as a first start needs).
fn admin_users(cfg: &roost_admin::AdminConfig) -> anyhow::Result<Vec<roost_admin::User>> {
    if cfg.users_file.exists() {
        return Ok(roost_admin::auth::load_users(&cfg.users_file)?);
    }
    let password: String = roost_admin::auth::random_token().chars().take(20).collect();
    eprintln!(
        "roost up: admin UI on http://{}/ — sign in as \"admin\" with password {password}\n  \
         (made up for this run: {} does not exist; `roost admin hash-password` makes its entries)",
        cfg.listen,
        cfg.users_file.display()
    );
    Ok(vec![roost_admin::User {
        name: "admin".into(),
        role: roost_admin::auth::Role::Operator,
        password_hash: roost_admin::auth::hash_password(&password),
    }])
}

/// The demo's proxy: clients on this machine may name the client they stand for in
/// `X-Forwarded-For`, so `curl -H 'X-Forwarded-For: 198.18.0.56' …` shows what that client gets.
fn demo_proxy_config(base: &roost_proxy::ProxyConfig) -> roost_proxy::ProxyConfig {
    let mut p = base.clone();
    for net in ["127.0.0.0/8", "::1/128"] {
        let net: ipnetwork::IpNetwork = net.parse().expect("a valid prefix");
        if !p.trusted_proxies.contains(&net) {
            p.trusted_proxies.push(net);
        }
    }
    p
}

async fn serve(listen: SocketAddr, shared: Arc<Shared>) -> anyhow::Result<()> {
    let app_state = shared.clone();
    let app = Router::new()
        .route("/", get(index))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics))
        .route("/api/v1/summary", get(summary))
        .route("/api/v1/clients", get(clients))
        .route("/api/v1/clients/{ip}", get(client))
        .route("/api/v1/changes", get(changes))
        .route("/api/v1/alerts", get(alerts))
        .with_state(shared);
    let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("listening on {listen}"))?;
    crate::rules::reload_on_sighup(app_state.reload_rules.clone()).context("handling SIGHUP")?;
    tracing::info!("roost up: API and /metrics on http://{}", listener.local_addr()?);
    if app_state.alert.enabled {
        tokio::spawn(sample_drop_signal(app_state.clone()));
    }
    axum::serve(listener, app).with_graceful_shutdown(shutdown_signal()).await?;
    tracing::info!("roost up: stopping");
    Ok(())
}

pub(crate) async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}

fn tail_loop(
    src: LogSource,
    mut tail: Tail,
    poll: Duration,
    tx: SyncSender<Vec<RequestEvent<'static>>>,
    sh: Arc<Shared>,
) {
    let mut parser: Option<Parser> = match src.format.format {
        FormatKind::Auto => None,
        _ => match Parser::from_config(&src.format) {
            Ok(p) => Some(p),
            Err(e) => {
                tracing::error!(path = %src.path, error = %e, "bad log format; not following this log");
                return;
            }
        },
    };
    let mut undetected: Vec<String> = Vec::new();
    let mut errors_logged = 0u64;
    let mut last_scan = Instant::now(); // the caller scanned first
    tracing::info!(path = %src.path, format = ?src.format.format, "following access log");
    while !sh.stop.load(Ordering::Relaxed) {
        if last_scan.elapsed() >= Duration::from_secs(5) {
            tail.rescan();
            last_scan = Instant::now();
        }
        let mut batch = Vec::new();
        let mut handle = |parser: &Parser,
                          path: &std::path::Path,
                          line: &str,
                          batch: &mut Vec<RequestEvent<'static>>| match parser.parse(line) {
            Ok(ev) => batch.push(ev.into_owned()),
            Err(e) => {
                sh.metrics.parse_errors.get_or_create(&KindLabel { kind: e.kind.label().to_owned() }).inc();
                errors_logged += 1;
                if errors_logged <= 10 || errors_logged.is_power_of_two() {
                    let shown: String = line.chars().take(160).collect();
                    tracing::warn!(path = %path.display(), error = %e, line = %shown, count = errors_logged, "malformed log line");
                }
            }
        };
        let stats = tail.poll(&mut |path, raw| {
            let line = String::from_utf8_lossy(raw);
            match &parser {
                Some(p) => handle(p, path, &line, &mut batch),
                None => {
                    undetected.push(line.into_owned());
                    if undetected.len() >= 10 {
                        let p = roost_logformat::detect(undetected.iter().map(String::as_str)).unwrap_or_else(|| {
                            tracing::warn!(path = %path.display(), "cannot tell this log's format; reading it as combined (set `format`)");
                            Parser::Clf
                        });
                        tracing::info!(path = %path.display(), format = p.name(), "detected log format");
                        for l in std::mem::take(&mut undetected) {
                            handle(&p, path, &l, &mut batch);
                        }
                        parser = Some(p);
                    }
                }
            }
            if batch.len() >= BATCH {
                let _ = tx.send(std::mem::take(&mut batch));
            }
        });
        sh.metrics.lines.inc_by(stats.lines);
        sh.metrics.rotations.inc_by(stats.rotations + stats.truncations);
        if !batch.is_empty() && tx.send(batch).is_err() {
            return;
        }
        if stats.lines == 0 {
            std::thread::sleep(poll);
        }
    }
}

fn scorer_loop(rx: Receiver<Vec<RequestEvent<'static>>>, sh: Arc<Shared>) {
    let mut last_tick = Instant::now();
    let mut ticks = 0u64;
    loop {
        match rx.recv_timeout(Duration::from_secs(1)) {
            Ok(batch) => {
                let mut changes = Vec::new();
                {
                    let mut engine = sh.engine.lock().expect("engine lock");
                    for ev in &batch {
                        changes.extend(engine.observe(ev));
                    }
                }
                sh.metrics.events.inc_by(batch.len() as u64);
                record(&sh, changes);
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        if sh.stop.load(Ordering::Relaxed) {
            return;
        }
        if last_tick.elapsed() >= Duration::from_secs(1) {
            last_tick = Instant::now();
            ticks += 1;
            let changes = {
                let mut engine = sh.engine.lock().expect("engine lock");
                let now =
                    if sh.demo_running.load(Ordering::Relaxed) { engine.now() } else { wall_now().max(engine.now()) };
                let changes = engine.expire(now);
                if ticks.is_multiple_of(60) {
                    let forgotten = engine.sweep(now);
                    tracing::debug!(forgotten, tracked = engine.tracked(), "swept idle clients");
                }
                if ticks.is_multiple_of(2) {
                    sh.verdicts.lock().expect("verdicts lock").sweep(now);
                    if let Some(c) = sh.cache.get() {
                        c.sweep(now.0);
                    }
                }
                if ticks.is_multiple_of(5) || ticks == 1 {
                    sh.metrics.population.set_population(&engine.aggregates(now));
                    sh.metrics.population.set_evidence_totals([&engine.stats().evidence_by_source]);
                }
                changes
            };
            record(&sh, changes);
        }
    }
}

pub(crate) fn record(sh: &Shared, changes: Vec<VerdictChange>) {
    if changes.is_empty() {
        return;
    }
    let writes = sh.verdicts.lock().expect("verdicts lock").record(&changes);
    if let Some(cache) = sh.cache.get() {
        for w in &writes {
            cache.apply(&w.record);
        }
    }
    if let Some(r) = sh.redis.get() {
        r.send(writes);
    }
    if let Some(k) = sh.kafka.get() {
        k.changes(&changes);
    }
    let mut recent = sh.recent.lock().expect("recent lock");
    for c in changes {
        let reason = c.reasons.first().map(|r| r.text.as_str()).unwrap_or("");
        tracing::info!(client = %c.subject, from = %c.from, to = %c.to, cause = ?c.cause, reputation = format!("{:.2}", c.reputation), reason, "verdict");
        sh.metrics.population.count_change(&c);
        if let Some(bgp) = sh.bgp.get() {
            let _ = bgp.send(crate::bgp::Input::Verdict(crate::bgp::verdict_of(&c)));
        }
        if recent.len() >= RECENT {
            recent.pop_back();
        }
        recent.push_front(c);
    }
}

/// Replays the golden 30-minute scenario so that it ends a minute from now: what happened
/// before now at once (the scorer takes it in seconds), the last minute as it happens. Event
/// time then never runs ahead of the wall clock nor far behind it, so the verdicts the proxy and
/// the admin UI judge by the wall clock are the scenario's own.
fn demo_loop(tx: SyncSender<Vec<RequestEvent<'static>>>, sh: Arc<Shared>) {
    const LIVE_S: i64 = 60;
    let scenario = roost_loggen::Scenario::golden(1);
    let shift = wall_now().secs() + LIVE_S - scenario.start - scenario.duration_s;
    let mut batch = Vec::new();
    tracing::info!("demo: a 30-minute attack scenario, its last minute live");
    let result = roost_loggen::generate(&scenario, |r| {
        if sh.stop.load(Ordering::Relaxed) {
            return Err(std::io::Error::other("stopping"));
        }
        let ev = demo_event(r, shift);
        let ahead = ev.time.0 - wall_now().0;
        if ahead > 0 {
            if !batch.is_empty() {
                tx.send(std::mem::take(&mut batch)).map_err(|_| std::io::Error::other("scorer gone"))?;
            }
            std::thread::sleep(Duration::from_millis(ahead as u64));
        } else if batch.len() >= BATCH {
            tx.send(std::mem::take(&mut batch)).map_err(|_| std::io::Error::other("scorer gone"))?;
        }
        batch.push(ev);
        Ok(())
    });
    if !batch.is_empty() {
        let _ = tx.send(batch);
    }
    sh.demo_running.store(false, Ordering::Relaxed);
    if result.is_ok() {
        tracing::info!("demo: scenario finished; see /api/v1/clients");
    }
}

fn demo_event(r: &roost_loggen::Request, shift_s: i64) -> RequestEvent<'static> {
    let (path, query) = match r.target.split_once('?') {
        Some((p, q)) => (p.to_owned(), Some(q.to_owned().into())),
        None => (r.target.clone(), None),
    };
    RequestEvent {
        time: Timestamp(r.time_ms + shift_s * 1000),
        client: r.client,
        method: r.method.into(),
        host: None,
        path: path.into(),
        query,
        protocol: "HTTP/1.1".into(),
        status: r.status,
        bytes: r.bytes as u64,
        request_time: Some(r.request_time),
        referer: r.referer.clone().map(Into::into),
        user_agent: Some(r.user_agent.into()),
    }
}

/// Samples the population into the drop signal every `alert.sample_interval` and notifies.
async fn sample_drop_signal(sh: Arc<Shared>) {
    let mut notifier = crate::alert::Notifier::new(sh.alert.clone(), sh.admin_url.clone());
    let mut tick = tokio::time::interval(sh.alert.sample_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if sh.stop.load(Ordering::Relaxed) {
            return;
        }
        let (now, a) = {
            let engine = sh.engine.lock().expect("engine lock");
            let now = clock(&sh, &engine);
            (now, engine.aggregates(now))
        };
        let (transition, status) = {
            let mut d = sh.drop.lock().expect("drop signal lock");
            let t = d.push(Sample { at: now, mean: a.mean_by_request, weight: a.request_weight });
            (t, d.status().clone())
        };
        if a.request_weight > 0.0 && a.mean_by_request.is_finite() {
            let mut series = sh.series.lock().expect("series lock");
            if series.len() >= SERIES_KEPT {
                series.pop_front();
            }
            series.push_back((now.0 as f64 / 1000.0, a.mean_by_request));
        }
        let m = &sh.metrics;
        m.drop_state.set(status.state as i64);
        m.drop_short.set(status.short_mean.unwrap_or(f64::NAN));
        m.drop_baseline.set(status.baseline.unwrap_or(f64::NAN));
        m.drop_spread.set(status.spread.unwrap_or(f64::NAN));
        notifier.handle(transition, &status, now).await;
    }
}

// ---- HTTP handlers -------------------------------------------------------------------------

/// The time verdicts expire by: the wall clock (a log line dated in the future must not move
/// time for every client), or the demo's own event time while it replays.
pub(crate) fn clock(sh: &Shared, engine: &Engine) -> Timestamp {
    if sh.demo_running.load(Ordering::Relaxed) { engine.now() } else { wall_now() }
}

async fn index() -> &'static str {
    "roost up\n\nGET /api/v1/summary          population and pipeline counters\nGET /api/v1/clients?verdict=bad|dubious&limit=N   flagged clients with their reasons\nGET /api/v1/clients/{ip}     everything known about one client\nGET /api/v1/changes?limit=N  recent verdict changes, newest first\nGET /api/v1/alerts           the average-reputation drop alert and the numbers behind it\nGET /metrics                 Prometheus metrics\n"
}

async fn metrics(State(sh): State<Arc<Shared>>) -> Response {
    if let Some(h) = sh.proxy_health.get() {
        h.refresh();
    }
    encode_metrics(&sh.registry)
}

/// A registry in the OpenMetrics text format, as every daemon's `/metrics` serves it.
pub(crate) fn encode_metrics(registry: &Registry) -> Response {
    let mut out = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, registry) {
        return (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response();
    }
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], out).into_response()
}

async fn summary(State(sh): State<Arc<Shared>>) -> Response {
    let engine = sh.engine.lock().expect("engine lock");
    let now = clock(&sh, &engine);
    Json(serde_json::json!({
        "now": now.to_string(),
        "aggregates": engine.aggregates(now),
        "stats": engine.stats(),
        "inspectors": engine.inspector_versions().into_iter().collect::<std::collections::BTreeMap<_, _>>(),
        "demo_running": sh.demo_running.load(Ordering::Relaxed),
        "drop_alert": sh.drop.lock().expect("drop signal lock").status().state,
    }))
    .into_response()
}

#[derive(Deserialize)]
struct ListQuery {
    verdict: Option<String>,
    limit: Option<usize>,
}

async fn clients(State(sh): State<Arc<Shared>>, Query(q): Query<ListQuery>) -> Response {
    let want: Option<Class> = match q.verdict.as_deref() {
        None | Some("") | Some("flagged") => None,
        Some(v) => match v.parse() {
            Ok(c) => Some(c),
            Err(e) => return (StatusCode::BAD_REQUEST, Json(serde_json::json!({ "error": e }))).into_response(),
        },
    };
    let engine = sh.engine.lock().expect("engine lock");
    let now = clock(&sh, &engine);
    let limit = q.limit.unwrap_or(100).min(10_000);
    let list = engine.flagged(now, want, limit);
    Json(list).into_response()
}

async fn client(State(sh): State<Arc<Shared>>, Path(ip): Path<String>) -> Response {
    let Ok(addr) = ip.parse::<IpAddr>() else {
        return (StatusCode::BAD_REQUEST, Json(serde_json::json!({ "error": "not an IP address" }))).into_response();
    };
    let engine = sh.engine.lock().expect("engine lock");
    let now = clock(&sh, &engine);
    match engine.explain(addr, now) {
        Some(x) => Json(x).into_response(),
        None if engine.is_allowlisted(addr) => {
            Json(serde_json::json!({ "subject": addr, "class": "good", "allowlisted": true })).into_response()
        }
        None => {
            (StatusCode::NOT_FOUND, Json(serde_json::json!({ "error": "not tracked (no requests seen recently)" })))
                .into_response()
        }
    }
}

/// The in-process alerts: the drop signal's state and the numbers behind it.
async fn alerts(State(sh): State<Arc<Shared>>) -> Response {
    let status = sh.drop.lock().expect("drop signal lock").status().clone();
    Json(serde_json::json!([{
        "alertname": crate::alert::ALERT_NAME,
        "enabled": sh.alert.enabled,
        "status": status,
        "config": sh.alert.drop,
        "runbook_url": crate::alert::RUNBOOK,
    }]))
    .into_response()
}

#[derive(Deserialize)]
struct ChangesQuery {
    limit: Option<usize>,
}

async fn changes(State(sh): State<Arc<Shared>>, Query(q): Query<ChangesQuery>) -> Response {
    let recent = sh.recent.lock().expect("recent lock");
    let list: Vec<&VerdictChange> = recent.iter().take(q.limit.unwrap_or(100).min(RECENT)).collect();
    Json(list).into_response()
}
