//! `roost score`: one member of the scorer consumer group. Wires the engine (rules, feeds,
//! GeoIP) into `roost_scorer`, follows the feeds and overrides topics, serves /metrics.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use prometheus_client::registry::Registry;
use roost_engine::Engine;

use crate::config::Config;

pub fn run(cfg: Config) -> anyhow::Result<()> {
    anyhow::ensure!(cfg.kafka.enabled(), "roost score reads Kafka: set kafka.brokers");
    anyhow::ensure!(!cfg.redis.url.is_empty(), "roost score writes verdicts to Redis: set redis.url");
    let k = &cfg.kafka;
    roost_kafka::ensure_topic(k, &k.topics.requests, cfg.score.partitions, false)?;
    roost_kafka::ensure_topic(k, &k.topics.verdicts, 1, true)?;
    roost_kafka::ensure_topic(k, &k.topics.overrides, 1, true)?;

    let rule_set = crate::rules::compile(&cfg.rules, None)?;
    tracing::info!(version = rule_set.version(), rules = rule_set.rules().len(), "known-bad rules loaded");
    let rule_metrics = crate::rules::RuleMetrics::default();
    rule_metrics.in_force(&rule_set);
    let rules = roost_rules::handle(rule_set);
    let enrich = crate::feeds::Enrichment::new(&cfg, roost_feeds::FeedIndex::default())?;
    let mut registry = Registry::default();
    let metrics = Arc::new(roost_scorer::Metrics::default());
    metrics.register(&mut registry);
    rule_metrics.register(&mut registry);
    let feed_metrics = crate::feeds::FeedMetrics::default();
    feed_metrics.register(&mut registry);
    let stop = Arc::new(AtomicBool::new(false));
    let mut threads = vec![crate::feeds::spawn_sync(
        &cfg,
        crate::feeds::definitions(&cfg.feeds)?,
        enrich.feeds.clone(),
        enrich.geo.as_ref().map(|(h, _)| h.clone()),
        feed_metrics,
        stop.clone(),
    )?];
    // every partition's engine reads the same handle: a reload is in force for all of them
    let reload_rules = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    threads.extend(crate::rules::spawn_watch(
        &cfg.rules,
        rules.clone(),
        rule_metrics,
        reload_rules.clone(),
        move || s.load(Ordering::Relaxed),
    )?);
    let (engine_cfg, max_clients) = (cfg.engine.clone(), cfg.rules.max_clients);
    // validated once here, so the factory cannot fail later
    Engine::new(engine_cfg.clone())?;
    let make: roost_scorer::EngineFactory = Box::new(move || {
        let mut e = Engine::new(engine_cfg.clone()).expect("validated at start");
        e.add_inspector(Box::new(roost_rules::RulesInspector::new(rules.clone(), max_clients)));
        enrich.attach(&mut e);
        e
    });
    let (tx, rx) = std::sync::mpsc::channel();
    threads.push(roost_scorer::overrides::follow(cfg.kafka.clone(), tx, stop.clone()));
    let scorer_thread = {
        let (cfg, metrics, stop) = (cfg.clone(), metrics.clone(), stop.clone());
        std::thread::Builder::new().name("roost-score".into()).spawn(move || {
            let r = roost_scorer::run(
                &cfg.kafka,
                &cfg.redis,
                &cfg.score,
                roost_scorer::Scorer::new(make),
                &metrics,
                &stop,
                rx,
            );
            stop.store(true, Ordering::Relaxed);
            r
        })?
    };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    let listen = cfg.score.listen;
    let registry = Arc::new(registry);
    let stop2 = stop.clone();
    rt.block_on(async move {
        let app = axum::Router::new()
            .route("/healthz", axum::routing::get(|| async { "ok\n" }))
            .route("/metrics", axum::routing::get(move || std::future::ready(crate::up::encode_metrics(&registry))));
        let l = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("listening on {listen}"))?;
        crate::rules::reload_on_sighup(reload_rules).context("handling SIGHUP")?;
        tracing::info!(group = %cfg.score.group, "roost score: /metrics on http://{listen}");
        let server = tokio::spawn(async move { axum::serve(l, app).await });
        let watch = async {
            while !stop2.load(Ordering::Relaxed) {
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
        };
        tokio::select! { _ = crate::up::shutdown_signal() => {}, _ = watch => {} }
        server.abort();
        anyhow::Ok(())
    })?;
    stop.store(true, Ordering::Relaxed);
    let r = scorer_thread.join().map_err(|_| anyhow::anyhow!("the scorer thread panicked"))?;
    for t in threads {
        let _ = t.join();
    }
    r.context("scoring stopped")
}
