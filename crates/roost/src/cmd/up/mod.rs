//! `roost up`: the appliance in one process. Follows the configured access logs, scores every
//! request, keeps verdicts in memory, serves the proxy, the admin UI, a JSON API and Prometheus
//! metrics, and — when configured — mirrors verdicts to Redis and Kafka and announces flowspec
//! rules to routers. With `--demo`, a bundled attack scenario is replayed so verdicts show within
//! seconds.
//!
//! This file is the wiring; the parts are [`state`] (what is held, and where a verdict change
//! goes), [`ingest`] (tails → scorer), [`api`], [`alert`] (the in-process drop alert), [`store`]
//! (Redis and Kafka mirrors, the admin UI's backend) and [`demo`].

mod alert;
mod api;
mod demo;
mod ingest;
mod state;
mod store;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::mpsc::sync_channel;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use prometheus_client::registry::Registry;
use roost_engine::alarm::DropDetector;
use roost_ingest::tail::{Start, Tail};

use self::state::{Appliance, UpMetrics};
use crate::config::{Config, LogStart};
use crate::engine::EngineBuilder;
use crate::enrich::{self, Enrichment, FeedMetrics};
use crate::flowspec::Flowspec;
use crate::ruleset;
use crate::runtime::{self, Shutdown};

pub struct UpArgs {
    pub demo: bool,
    pub listen: Option<SocketAddr>,
}

pub fn run(cfg: Config, args: UpArgs) -> anyhow::Result<()> {
    let rt = runtime::tokio(2)?;
    let shutdown = Shutdown::on_signals(&rt)?;
    let listen = args.listen.unwrap_or(cfg.up.listen);
    // every configured listener first: one that is taken stops the start, before any thread runs
    let api_listener = rt.block_on(runtime::bind(listen))?;
    let admin_listener = if cfg.up.admin { Some(rt.block_on(runtime::bind(cfg.admin.listen))?) } else { None };

    let rule_set = ruleset::compile(&cfg.rules, None)?;
    tracing::info!(version = rule_set.version(), rules = rule_set.rules().len(), "known-bad rules loaded");
    let metrics = UpMetrics::default();
    metrics.rules.in_force(&rule_set);
    let rules = roost_rules::handle(rule_set);
    let feed_defs = enrich::definitions(&cfg.feeds)?;
    let enrich = Enrichment::new(&cfg, roost_feeds::FeedIndex::default())?;
    let mut builder =
        EngineBuilder::new(cfg.engine.clone())?.rules(rules.clone(), cfg.rules.max_clients).enrich(enrich.clone());
    if cfg.crawlers.verify {
        builder = builder.crawlers(crate::crawlers::Verifier::new(&cfg.crawlers, true)?);
    }
    let engine = builder.judge();
    let mut registry = Registry::default();
    metrics.register(&mut registry);
    let feed_metrics = FeedMetrics::default();
    feed_metrics.register(&mut registry);
    // the proxy and the admin UI share the signing secret: error-page references resolve
    let secret = roost_proxy::secret(&cfg.proxy)?;
    let proxy = if cfg.up.proxy {
        let pcfg = if args.demo { demo::proxy_config(&cfg.proxy) } else { cfg.proxy.clone() };
        if args.demo {
            demo::start_app_if_free(&pcfg.upstreams)?;
        }
        Some(roost_proxy::build(
            pcfg,
            roost_proxy::VerdictSource::Fed,
            cfg.engine.ipv6_prefix,
            &roost_proxy::RunOptions::default(),
            secret.clone(),
            roost_proxy::MetricsAt::Registry(&mut registry),
        )?)
    } else {
        None
    };
    let shared = Arc::new(Appliance {
        engine: Mutex::new(engine),
        builder,
        recent: Mutex::new(VecDeque::new()),
        metrics,
        registry,
        demo_running: AtomicBool::new(args.demo),
        shutdown: shutdown.clone(),
        reload_rules: Arc::default(),
        drop: Mutex::new(DropDetector::new(cfg.alert.drop.clone())),
        alert: cfg.alert.clone(),
        admin_url: if cfg.alert.admin_url.is_empty() {
            format!("http://{listen}")
        } else {
            cfg.alert.admin_url.trim_end_matches('/').to_owned()
        },
        bgp: Default::default(),
        series: Mutex::new(VecDeque::new()),
        verdicts: Default::default(),
        audit: Default::default(),
        redis: Default::default(),
        kafka: Default::default(),
        cache: Default::default(),
        overrides: Default::default(),
        proxy_health: Default::default(),
        outcomes: Default::default(),
    });
    // the flowspec controller in process: the engine's verdict changes are its source
    let flowspec = if cfg.bgp.peers.is_empty() {
        None
    } else {
        let f = Flowspec::start(&crate::flowspec::with_own_addresses(&cfg), &rt, &shutdown, true)?;
        let _ = shared.bgp.set(f.inputs.clone());
        Some(f)
    };
    if !cfg.redis.url.is_empty() {
        let m = store::RedisMirror::start(&cfg.redis, shared.metrics.redis_dropped.clone(), shared.clone())?;
        let _ = shared.redis.set(m);
    }
    if cfg.kafka.enabled() {
        let m = store::KafkaMirror::start(&cfg.kafka, shared.metrics.kafka_dropped.clone())?;
        let _ = shared.kafka.set(m);
    }
    let mut threads = Vec::new();
    if let Some(p) = proxy {
        let _ = shared.cache.set(p.cache.clone());
        let _ = shared.proxy_health.set(p.health());
        let _ = shared.outcomes.set(p.outcomes.clone());
        let stop = shutdown.subscribe();
        threads.push(std::thread::Builder::new().name("roost-proxy".into()).spawn(move || p.run_until(stop))?);
    }
    let (tx, rx) = sync_channel::<Vec<ingest::Ingested>>(64);
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
            std::thread::Builder::new()
                .name("roost-tail".into())
                .spawn(move || ingest::tail_loop(src, tail, poll, tx, sh))?,
        );
    }
    if args.demo {
        let (tx, sh) = (tx.clone(), shared.clone());
        threads.push(std::thread::Builder::new().name("roost-demo".into()).spawn(move || demo::demo_loop(tx, sh))?);
    }
    drop(tx);
    {
        let s = shutdown.clone();
        threads.extend(ruleset::spawn_watch(
            &cfg.rules,
            rules,
            shared.metrics.rules.clone(),
            shared.reload_rules.clone(),
            move || s.is_stopping(),
        )?);
    }
    threads.push(enrich::spawn_sync(
        &cfg,
        feed_defs,
        enrich.feeds.clone(),
        enrich.geo.as_ref().map(|(h, _)| h.clone()),
        feed_metrics,
        shutdown.flag(),
    )?);
    let sh = shared.clone();
    let scorer = std::thread::Builder::new().name("roost-scorer".into()).spawn(move || ingest::scorer_loop(rx, sh))?;

    let admin = match admin_listener {
        Some(l) => {
            let mut acfg = cfg.admin.clone();
            if acfg.listen.ip().is_loopback() && acfg.cookie_secure {
                // a browser keeps a Secure cookie only over HTTPS (or from loopback, not everywhere)
                acfg.cookie_secure = false;
            }
            let users = admin_users(&acfg)?;
            let backend = Arc::new(store::UpBackend { shared: shared.clone() });
            let st =
                roost_admin::state(acfg, users, backend, Some(secret), enrich.geo.as_ref().map(|(h, _)| h.clone()))?;
            let s = shutdown.clone();
            Some(rt.spawn(roost_admin::serve(l, st, async move { s.stopped().await })))
        }
        None => None,
    };
    rt.block_on(async {
        ruleset::reload_on_sighup(shared.reload_rules.clone()).context("handling SIGHUP")?;
        if shared.alert.enabled {
            tokio::spawn(alert::sample_drop_signal(shared.clone()));
        }
        let api = runtime::serve(
            "roost up: API and /metrics",
            api_listener,
            api::router(shared.clone(), cfg.up.hosts.clone()),
            &shutdown,
        );
        shutdown.stopped().await;
        tracing::info!("roost up: stopping");
        let _ = api.await;
        anyhow::Ok(())
    })?;
    if let Some(a) = admin {
        match rt.block_on(a) {
            Ok(Err(e)) => tracing::error!(error = %e, "the admin UI stopped"),
            Err(e) => tracing::error!(error = %e, "the admin UI panicked"),
            Ok(Ok(())) => {}
        }
    }
    for t in threads {
        let _ = t.join();
    }
    let _ = scorer.join();
    if let Some(f) = flowspec {
        f.join();
    }
    Ok(())
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
