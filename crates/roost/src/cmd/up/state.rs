//! `roost up`'s state: the engine, what it decided (verdicts, histories, recent changes, the
//! audit log), the drop signal and the in-process parts that act on verdicts (proxy cache,
//! flowspec controller, Redis and Kafka mirrors). [`record`] is the one place a verdict change
//! goes out to all of them.

use std::collections::VecDeque;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, OnceLock};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use roost_admin::AuditEntry;
use roost_engine::alarm::DropDetector;
use roost_engine::{Engine, Judge, Timestamp, VerdictChange};
use roost_verdicts::LocalVerdicts;

use super::store::{KafkaMirror, RedisMirror};
use crate::config::AlertConfig;
use crate::runtime::{self, Shutdown};

/// Verdict changes kept for `/api/v1/changes`.
pub const RECENT: usize = 1000;
/// Samples of the average reputation kept for the admin overview's chart.
pub const SERIES_KEPT: usize = 2160;
/// Audit entries kept in memory (Redis keeps its own stream when configured).
pub const AUDIT_KEPT: usize = 10_000;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: String,
}

#[derive(Default)]
pub struct UpMetrics {
    pub lines: Counter,
    pub parse_errors: Family<KindLabel, Counter>,
    pub events: Counter,
    /// Error-log lines that named a client, by kind.
    pub error_events: Family<KindLabel, Counter>,
    /// Error-log lines about nothing roost judges.
    pub unjudged_lines: Counter,
    pub rotations: Counter,
    pub rules: crate::ruleset::RuleMetrics,
    pub redis_dropped: Counter,
    pub kafka_dropped: Counter,
    pub population: roost_scorer::PopulationMetrics,
    pub drop_state: Gauge,
    pub drop_short: Gauge<f64, std::sync::atomic::AtomicU64>,
    pub drop_baseline: Gauge<f64, std::sync::atomic::AtomicU64>,
    pub drop_spread: Gauge<f64, std::sync::atomic::AtomicU64>,
}

impl UpMetrics {
    pub fn register(&self, r: &mut Registry) {
        r.register("roost_log_lines", "Log lines read", self.lines.clone());
        r.register("roost_log_parse_errors", "Log lines that did not parse, by kind", self.parse_errors.clone());
        r.register(
            "roost_error_log_events",
            "Error-log lines that named a client and what it did wrong, by kind",
            self.error_events.clone(),
        );
        r.register(
            "roost_error_log_unjudged_lines",
            "Error-log lines about nothing roost judges (a missing file, a notice)",
            self.unjudged_lines.clone(),
        );
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

/// Everything `roost up` holds, shared by its threads, its API and its admin UI.
pub struct Appliance {
    /// The live engine, and the shadow engine while a source is in shadow mode.
    pub engine: Mutex<Judge>,
    /// What the engines are made of (a reload may start or stop the shadow engine).
    pub builder: crate::engine::EngineBuilder,
    pub recent: Mutex<VecDeque<VerdictChange>>,
    pub metrics: UpMetrics,
    pub registry: Registry,
    /// While the demo replays, time follows its events rather than the wall clock.
    pub demo_running: AtomicBool,
    pub shutdown: Shutdown,
    /// Set by SIGHUP: reload the rule files now.
    pub reload_rules: Arc<AtomicBool>,
    /// The average-reputation drop signal.
    pub drop: Mutex<DropDetector>,
    /// (Unix s, request-weighted mean reputation), sampled with the drop signal: the admin
    /// overview's chart.
    pub series: Mutex<VecDeque<(f64, f64)>>,
    /// Current verdicts and histories (the admin UI reads them).
    pub verdicts: Mutex<LocalVerdicts>,
    /// The audit log, newest first (when Redis is configured, it keeps the log of record).
    pub audit: Mutex<VecDeque<AuditEntry>>,
    /// Redis, when `redis.url` is set.
    pub redis: OnceLock<RedisMirror>,
    /// The verdicts and audit topics, when `kafka.brokers` is set.
    pub kafka: OnceLock<KafkaMirror>,
    /// The in-process proxy's verdict cache.
    pub cache: OnceLock<Arc<roost_proxy::cache::VerdictCache>>,
    /// The overrides as the in-process proxy holds them (the admin resolves their references).
    pub overrides: Mutex<std::collections::HashMap<String, roost_verdicts::OverrideEntry>>,
    pub proxy_health: OnceLock<roost_proxy::UpstreamHealth>,
    /// The in-process proxy's challenge outcomes per client.
    pub outcomes: OnceLock<Arc<roost_proxy::outcomes::Outcomes>>,
    pub alert: AlertConfig,
    /// The admin UI's base URL, for links in alerts.
    pub admin_url: String,
    /// The in-process flowspec controller's input, when `bgp.peers` is set.
    pub bgp: OnceLock<std::sync::mpsc::Sender<Vec<roost_bgp::Input>>>,
}

impl Appliance {
    /// The time verdicts expire by: the wall clock (a log line dated in the future must not move
    /// time for every client), or the demo's own event time while it replays.
    pub fn clock(&self, engine: &Engine) -> Timestamp {
        // (a Judge reads as its live engine)
        if self.demo_running.load(std::sync::atomic::Ordering::Relaxed) { engine.now() } else { runtime::wall_now() }
    }
}

/// Sends verdict changes everywhere they go: the verdict records and histories, the proxy's
/// cache, Redis, Kafka, the flowspec controller, the recent list and the log.
pub fn record(sh: &Appliance, changes: Vec<VerdictChange>) {
    if changes.is_empty() {
        return;
    }
    let writes = sh.verdicts.lock().expect("verdicts lock").record(&changes);
    // Shadow verdicts ("would block") are recorded, kept in Redis under their own keys and
    // counted; the proxy, the verdicts topic and the routers never hear of them.
    if let Some(cache) = sh.cache.get() {
        for w in writes.iter().filter(|w| !w.record.shadow) {
            cache.apply(&w.record);
        }
    }
    if let Some(r) = sh.redis.get() {
        r.send(writes);
    }
    let enforced: Vec<&VerdictChange> = changes.iter().filter(|c| !c.shadow).collect();
    if let Some(k) = sh.kafka.get()
        && !enforced.is_empty()
    {
        k.changes(enforced.iter().copied());
    }
    if let Some(bgp) = sh.bgp.get()
        && !enforced.is_empty()
    {
        let _ = bgp.send(enforced.iter().map(|c| roost_bgp::Input::verdict(c)).collect());
    }
    let mut recent = sh.recent.lock().expect("recent lock");
    for c in changes {
        let reason = c.reasons.first().map(|r| r.text.as_str()).unwrap_or("");
        if c.shadow {
            tracing::info!(client = %c.subject, from = %c.from, to = %c.to, cause = ?c.cause, reputation = format!("{:.2}", c.reputation), reason, "shadow verdict (not enforced)");
            sh.metrics.population.count_shadow_change(&c);
        } else {
            tracing::info!(client = %c.subject, from = %c.from, to = %c.to, cause = ?c.cause, reputation = format!("{:.2}", c.reputation), reason, "verdict");
            sh.metrics.population.count_change(&c);
        }
        if recent.len() >= RECENT {
            recent.pop_back();
        }
        recent.push_front(c);
    }
}
