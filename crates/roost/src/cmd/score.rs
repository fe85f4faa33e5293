//! `roost score`: one member of the scorer consumer group. Wires the engine (rules, feeds,
//! GeoIP: `crate::engine`) into `roost_scorer`, follows the feeds and overrides topics, serves
//! /metrics.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use anyhow::Context;
use prometheus_client::registry::Registry;

use crate::config::Config;
use crate::engine::EngineBuilder;
use crate::enrich::{self, Enrichment, FeedMetrics};
use crate::ruleset::{self, RuleMetrics};
use crate::runtime::{self, Shutdown};

/// How long a stopping scorer may take to leave its group.
const LEAVE_WITHIN: std::time::Duration = std::time::Duration::from_secs(10);

pub fn run(cfg: Config) -> anyhow::Result<()> {
    anyhow::ensure!(cfg.kafka.enabled(), "roost score reads Kafka: set kafka.brokers");
    anyhow::ensure!(!cfg.redis.url.is_empty(), "roost score writes verdicts to Redis: set redis.url");
    let rt = runtime::tokio(1)?;
    let shutdown = Shutdown::on_signals(&rt)?;
    // the metrics listener first: a port that is taken stops the scorer before it joins the group
    let listener = rt.block_on(runtime::bind(cfg.score.listen))?;
    let k = &cfg.kafka;
    roost_kafka::ensure_topic(k, &k.topics.requests, cfg.score.partitions, false)?;
    roost_kafka::ensure_topic(k, &k.topics.verdicts, 1, true)?;
    roost_kafka::ensure_topic(k, &k.topics.overrides, 1, true)?;

    let rule_set = ruleset::compile(&cfg.rules, None)?;
    tracing::info!(version = rule_set.version(), rules = rule_set.rules().len(), "known-bad rules loaded");
    let rule_metrics = RuleMetrics::default();
    rule_metrics.in_force(&rule_set);
    let rules = roost_rules::handle(rule_set);
    let enrich = Enrichment::new(&cfg, roost_feeds::FeedIndex::default())?;
    let mut registry = Registry::default();
    let metrics = Arc::new(roost_scorer::ScorerMetrics::default());
    metrics.register(&mut registry);
    rule_metrics.register(&mut registry);
    let feed_metrics = FeedMetrics::default();
    feed_metrics.register(&mut registry);
    let mut threads = vec![enrich::spawn_sync(
        &cfg,
        enrich::definitions(&cfg.feeds)?,
        enrich.feeds.clone(),
        enrich.geo.as_ref().map(|(h, _)| h.clone()),
        feed_metrics,
        shutdown.flag(),
    )?];
    // every partition's engine reads the same handle: a reload is in force for all of them
    let reload_rules = Arc::new(AtomicBool::new(false));
    let s = shutdown.clone();
    threads.extend(ruleset::spawn_watch(&cfg.rules, rules.clone(), rule_metrics, reload_rules.clone(), move || {
        s.is_stopping()
    })?);
    let mut builder = EngineBuilder::new(cfg.engine.clone())?.rules(rules, cfg.rules.max_clients).enrich(enrich);
    if cfg.crawlers.verify {
        builder = builder.crawlers(crate::crawlers::Verifier::new(&cfg.crawlers, true)?);
    }
    let refresher = builder.clone();
    let make: roost_scorer::EngineFactory = Box::new(move || builder.judge());
    let (tx, rx) = std::sync::mpsc::channel();
    threads.push(roost_scorer::overrides::follow(cfg.kafka.clone(), tx, shutdown.flag()));
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    {
        let (cfg, metrics, shutdown) = (cfg.clone(), metrics.clone(), shutdown.clone());
        std::thread::Builder::new().name("roost-score".into()).spawn(move || {
            let r = roost_scorer::run(
                &cfg.kafka,
                &cfg.redis,
                &cfg.score,
                roost_scorer::Scorer::new(make).with_refresh(Box::new(move |j| refresher.refresh_candidate(j))),
                &metrics,
                &shutdown.flag(),
                rx,
            );
            // a scorer that gave up stops the process (and a stopping process the scorer)
            shutdown.stop();
            let _ = done_tx.send(r);
        })?;
    }
    rt.block_on(async {
        ruleset::reload_on_sighup(reload_rules).context("handling SIGHUP")?;
        tracing::info!(group = %cfg.score.group, "roost score: scoring");
        let server =
            runtime::serve("roost score: /metrics", listener, runtime::metrics_router(Arc::new(registry)), &shutdown);
        shutdown.stopped().await;
        let _ = server.await;
        anyhow::Ok(())
    })?;
    // Leaving the group can hang in librdkafka when the stop comes while the group is still
    // forming; nothing is lost by not waiting: offsets are committed only after the writes.
    let r = match done_rx.recv_timeout(LEAVE_WITHIN) {
        Ok(r) => r,
        Err(_) => {
            tracing::warn!(waited = ?LEAVE_WITHIN, "the scorer did not leave the group in time; exiting without it (nothing is lost: offsets are committed after the writes)");
            Ok(())
        }
    };
    for t in threads {
        let _ = t.join();
    }
    r.context("scoring stopped")
}
