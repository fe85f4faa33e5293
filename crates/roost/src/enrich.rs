//! Threat feeds and GeoIP/ASN as every scoring process has them: [`Enrichment`], what
//! `roost replay`, `roost score` and `roost up` attach to the engine (through
//! `crate::engine::EngineBuilder`) — the feed index (from local files, and from the feeds topic
//! when Kafka is configured, kept current by [`spawn_sync`]) and the GeoIP/ASN policy — and the
//! feed metrics. `roost feeds` (the subcommand) fetches and publishes what this reads.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use roost_engine::{Engine, Timestamp};
use roost_feeds::local::{self, Loaded};
use roost_feeds::store::{FeedContents, FeedRecord};
use roost_feeds::{FeedAnnotator, FeedDef, FeedFormat, FeedHandle, FeedIndex, FeedStore, IndexedFeed};
use roost_geo::{GeoAnnotator, GeoHandle, GeoInspector, GeoPolicy};
use roost_kafka::TopicFollower;

use crate::config::{Config, FeedsConfig};
use crate::runtime::wall_now;

/// Every definition (built in or from `feeds.dir`), `enabled` reflecting the config.
pub fn definitions(cfg: &FeedsConfig) -> anyhow::Result<Vec<FeedDef>> {
    let mut defs = if cfg.dir.is_empty() {
        roost_feeds::def::embedded()?
    } else {
        roost_feeds::def::from_dir(Path::new(&cfg.dir))?
    };
    for name in cfg.enable.iter().chain(&cfg.disable) {
        anyhow::ensure!(defs.iter().any(|d| &d.name == name), "feeds.enable/disable: no feed named {name:?}");
    }
    for d in &mut defs {
        if cfg.enable.contains(&d.name) {
            d.enabled = true;
        }
        if cfg.disable.contains(&d.name) {
            d.enabled = false;
        }
    }
    Ok(defs)
}

pub fn cache_path(dir: &str, feed: &str) -> PathBuf {
    Path::new(dir).join(format!("{feed}.feed"))
}

/// Loads the feed files on disk: `feeds.files`, `extra` (`--feed NAME=PATH`), and snapshots in
/// `feeds.cache_dir`. A file that does not parse or validate is an error for `extra` and
/// `files` (the operator named it) and a warning for the cache.
pub fn load_local(cfg: &Config, defs: &[FeedDef], extra: &[(String, PathBuf)]) -> anyhow::Result<Vec<Loaded>> {
    let fc = &cfg.feeds;
    let allow = &cfg.engine.allowlist;
    let mut named: BTreeMap<String, PathBuf> = fc.files.clone();
    named.extend(extra.iter().cloned());
    let mut out = Vec::new();
    for (name, path) in &named {
        let def = defs.iter().find(|d| &d.name == name).with_context(|| format!("no feed named {name:?}"))?;
        let l = local::load_file(def, path, &fc.validation, allow).with_context(|| format!("feed {name}"))?;
        out.push(l);
    }
    if !fc.cache_dir.is_empty() {
        for def in defs.iter().filter(|d| d.enabled && !named.contains_key(&d.name)) {
            let path = cache_path(&fc.cache_dir, &def.name);
            if !path.exists() {
                continue;
            }
            let mut d = def.clone();
            d.format = FeedFormat::Spamhaus;
            match local::load_file(&d, &path, &fc.validation, allow) {
                Ok(l) => out.push(l),
                Err(e) => tracing::warn!(feed = %def.name, error = %e, "cached feed not loaded"),
            }
        }
    }
    Ok(out)
}

/// The GeoIP databases, when any is configured.
pub fn open_geo(g: &roost_geo::GeoConfig) -> anyhow::Result<Option<GeoHandle>> {
    if g.country_db.is_some() || g.city_db.is_some() || g.asn_db.is_some() {
        Ok(Some(GeoHandle::open(g.clone())?))
    } else {
        Ok(None)
    }
}

/// What the engine gets from feeds and GeoIP.
#[derive(Clone)]
pub struct Enrichment {
    pub feeds: FeedHandle,
    pub geo: Option<(GeoHandle, GeoPolicy)>,
    /// Feeds in shadow mode (`feeds.shadow`).
    pub shadow_feeds: Vec<String>,
}

impl Enrichment {
    pub fn new(cfg: &Config, index: FeedIndex) -> anyhow::Result<Enrichment> {
        let g = &cfg.geo;
        let geo = if let Some(handle) = open_geo(g)? {
            let policy = GeoPolicy::compile(&g.policy)?;
            Some((handle, policy))
        } else {
            anyhow::ensure!(
                g.policy.is_empty(),
                "geo.policy is set but no geo database (geo.country_db, city_db, asn_db)"
            );
            None
        };
        Ok(Enrichment { feeds: FeedHandle::new(index), geo, shadow_feeds: cfg.feeds.shadow.clone() })
    }

    /// Whether a feed or geo policy rule runs in shadow mode.
    pub fn has_shadow(&self) -> bool {
        !self.shadow_feeds.is_empty() || self.geo.as_ref().is_some_and(|(_, p)| p.has_shadow())
    }

    pub fn attach(&self, engine: &mut Engine) {
        engine.add_annotator(Box::new(FeedAnnotator::new(self.feeds.clone()).shadow(self.shadow_feeds.clone())));
        if let Some((handle, policy)) = &self.geo {
            if policy.has_per_client() {
                engine.add_annotator(Box::new(GeoAnnotator::new(handle.clone(), policy.clone())));
            }
            if policy.has_per_request() {
                engine.add_inspector(Box::new(GeoInspector::new(handle.clone(), policy.clone())));
            }
        }
    }
}

// ---- metrics ---------------------------------------------------------------------------------

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FeedLabel {
    feed: String,
}
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FeedReason {
    feed: String,
    reason: String,
}
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FeedOutcome {
    feed: String,
    outcome: String,
}

/// Feed metrics, shared by `roost feeds run` and `roost up`.
#[derive(Default, Clone)]
pub struct FeedMetrics {
    entries: Family<FeedLabel, Gauge>,
    last_success: Family<FeedLabel, Gauge>,
    age: Family<FeedLabel, Gauge>,
    fetches: Family<FeedOutcome, Counter>,
    errors: Family<FeedReason, Counter>,
    refusals: Family<FeedReason, Counter>,
    index_prefixes: Gauge,
    index_bytes: Gauge,
    bad_records: Counter,
}

impl FeedMetrics {
    pub fn register(&self, r: &mut Registry) {
        r.register("roost_feed_entries", "Entries listed per feed (after validation)", self.entries.clone());
        r.register(
            "roost_feed_last_success_timestamp_seconds",
            "Unix time of the feed's last successful fetch",
            self.last_success.clone(),
        );
        r.register("roost_feed_age_seconds", "Seconds since the feed's last successful fetch", self.age.clone());
        r.register(
            "roost_feed_fetches",
            "Feed fetches by outcome (changed, not_modified, refused, error)",
            self.fetches.clone(),
        );
        r.register("roost_feed_fetch_errors", "Failed feed fetches, by reason", self.errors.clone());
        r.register("roost_feed_refusals", "Fetches refused by validation, by reason", self.refusals.clone());
        r.register("roost_feed_index_prefixes", "Prefixes in the feed index", self.index_prefixes.clone());
        r.register("roost_feed_index_bytes", "Memory held by the feed index", self.index_bytes.clone());
        r.register("roost_feed_bad_records", "Feeds-topic records that could not be read", self.bad_records.clone());
    }

    fn feed(name: &str) -> FeedLabel {
        FeedLabel { feed: name.to_owned() }
    }

    /// Counts one fetch of `feed` by its outcome.
    pub fn outcome(&self, feed: &str, outcome: &str) {
        self.fetches.get_or_create(&FeedOutcome { feed: feed.into(), outcome: outcome.into() }).inc();
    }

    /// Counts a failed fetch (or publish) of `feed` by reason.
    pub fn error(&self, feed: &str, reason: impl Into<String>) {
        self.errors.get_or_create(&FeedReason { feed: feed.into(), reason: reason.into() }).inc();
    }

    /// Counts a fetch of `feed` that validation refused, by reason.
    pub fn refusal(&self, feed: &str, reason: impl Into<String>) {
        self.refusals.get_or_create(&FeedReason { feed: feed.into(), reason: reason.into() }).inc();
    }

    /// Sets a published feed's entries and age (fetched at `fetched_s`, Unix s; ages against `now`).
    pub fn observe_published(&self, feed: &str, entries: usize, fetched_s: i64, now: Timestamp) {
        let l = Self::feed(feed);
        self.entries.get_or_create(&l).set(entries as i64);
        self.last_success.get_or_create(&l).set(fetched_s);
        self.age.get_or_create(&l).set((now.secs() - fetched_s).max(0));
    }

    /// Sets entries and ages from an index (ages against `now`).
    pub fn observe_index(&self, index: &FeedIndex, now: Timestamp) {
        for f in &index.feeds {
            let l = Self::feed(&f.name);
            self.entries.get_or_create(&l).set(f.entries as i64);
            if let Some(at) = f.fetched_at {
                self.last_success.get_or_create(&l).set(at.secs());
                self.age.get_or_create(&l).set((now.secs() - at.secs()).max(0));
            }
        }
        self.index_prefixes.set(index.prefixes() as i64);
        self.index_bytes.set(index.mem_size() as i64);
    }
}

// ---- the index under `roost up`: local files and the feeds topic --------------------------------

/// Builds the index from local files and the topic's store, leaving out feeds whose last
/// successful fetch is older than their `max_age` (a dead feed stops judging anyone).
pub fn build_index(defs: &[FeedDef], loaded: &[Loaded], store: &FeedStore, now: Timestamp) -> FeedIndex {
    let mut parts: Vec<(IndexedFeed, &FeedContents)> = Vec::new();
    for def in defs {
        let (contents, fetched) = if let Some(c) = store.feeds.get(&def.name).filter(|c| c.meta.is_some()) {
            (c, c.meta.as_ref().map(|m| Timestamp(m.fetched_at)))
        } else if let Some(l) = loaded.iter().find(|l| l.def.name == def.name) {
            let mtime = std::fs::metadata(&l.path).and_then(|m| m.modified()).ok().map(local::system_time);
            (&l.contents, mtime)
        } else {
            continue;
        };
        if let Some(at) = fetched
            && now.millis() - at.millis() > def.max_age.as_millis() as i64
        {
            tracing::warn!(feed = %def.name, fetched = %at, max_age = ?def.max_age, "feed is stale; its listings do not count");
            continue;
        }
        let mut info = IndexedFeed::from_def(def);
        info.fetched_at = fetched;
        parts.push((info, contents));
    }
    FeedIndex::build(parts)
}

/// Keeps `enrichment.feeds` current under `roost up`: reloads local files when they change and,
/// when Kafka is configured, follows the feeds topic. Rebuilds happen on this thread; lookups
/// keep using the previous index until the new one is swapped in.
pub fn spawn_sync(
    cfg: &Config,
    defs: Vec<FeedDef>,
    handle: FeedHandle,
    geo: Option<GeoHandle>,
    metrics: FeedMetrics,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<std::thread::JoinHandle<()>> {
    let geo_every = cfg.geo.reload_interval.unwrap_or(Duration::from_secs(60));
    let cfg = cfg.clone();
    // Every file a feed could be loaded from, present or not: a change, a new file or a
    // vanished one means reloading.
    let mut watched: Vec<PathBuf> = cfg.feeds.files.values().cloned().collect();
    if !cfg.feeds.cache_dir.is_empty() {
        watched.extend(defs.iter().filter(|d| d.enabled).map(|d| cache_path(&cfg.feeds.cache_dir, &d.name)));
    }
    let stamp = move || -> Vec<Option<SystemTime>> {
        watched.iter().map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok()).collect()
    };
    // The first load happens before scoring starts, so the first requests already meet the feeds.
    let mut loaded = load_local(&cfg, &defs, &[]).unwrap_or_else(|e| {
        tracing::warn!(error = %format!("{e:#}"), "feed files not loaded");
        Vec::new()
    });
    let mut stamps = stamp();
    let mut store = FeedStore::default();
    let mut follower: Option<TopicFollower> = None;
    let mut retry_at = Instant::now();
    if cfg.kafka.enabled() {
        connect(&cfg, &metrics, &mut store, &mut follower, &mut retry_at);
    }
    let first = build_index(&defs, &loaded, &store, wall_now());
    metrics.observe_index(&first, wall_now());
    tracing::info!(feeds = first.feeds.len(), prefixes = first.prefixes(), "feed index ready");
    handle.store(first);
    let t = std::thread::Builder::new().name("roost-feeds".into()).spawn(move || {
        let mut dirty = false;
        let mut last_build = Instant::now();
        let mut last_local_check = Instant::now();
        let mut last_geo_check = Instant::now();
        let mut retry_at = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            if cfg.kafka.enabled() && follower.is_none() && Instant::now() >= retry_at {
                connect(&cfg, &metrics, &mut store, &mut follower, &mut retry_at);
                dirty = true;
            }
            if let Some(f) = &follower {
                // Drain what arrived, briefly.
                let until = Instant::now() + Duration::from_millis(500);
                while Instant::now() < until {
                    match f.poll(Duration::from_millis(100)) {
                        Ok(Some(r)) => {
                            apply(&mut store, &metrics, r);
                            dirty = true;
                        }
                        Ok(None) => break,
                        Err(e) => {
                            tracing::warn!(error = %e, "reading the feeds topic");
                            break;
                        }
                    }
                }
            } else {
                std::thread::sleep(Duration::from_millis(250));
            }
            if last_local_check.elapsed() >= Duration::from_secs(5) {
                last_local_check = Instant::now();
                let now_stamps = stamp();
                if now_stamps != stamps {
                    match load_local(&cfg, &defs, &[]) {
                        Ok(l) => {
                            loaded = l;
                            dirty = true;
                        }
                        Err(e) => {
                            tracing::warn!(error = %format!("{e:#}"), "feed files not reloaded; keeping the old ones")
                        }
                    }
                    stamps = now_stamps;
                }
            }
            if let Some(g) = &geo
                && last_geo_check.elapsed() >= geo_every
            {
                last_geo_check = Instant::now();
                match g.reload_if_changed() {
                    Ok(true) => tracing::info!("GeoIP/ASN databases changed; reloaded"),
                    Ok(false) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "GeoIP/ASN databases changed but did not load; keeping the old ones")
                    }
                }
            }
            // Rebuild at most once a second, and once a minute anyway (staleness moves with time).
            if (dirty && last_build.elapsed() >= Duration::from_secs(1))
                || last_build.elapsed() >= Duration::from_secs(60)
            {
                let now = wall_now();
                let index = build_index(&defs, &loaded, &store, now);
                metrics.observe_index(&index, now);
                tracing::debug!(prefixes = index.prefixes(), feeds = index.feeds.len(), "feed index rebuilt");
                handle.store(index);
                dirty = false;
                last_build = Instant::now();
            }
        }
    })?;
    Ok(t)
}

/// Opens the feeds topic and reads it to its end; on failure, sets when to try again.
fn connect(
    cfg: &Config,
    metrics: &FeedMetrics,
    store: &mut FeedStore,
    follower: &mut Option<TopicFollower>,
    retry_at: &mut Instant,
) {
    match TopicFollower::new(&cfg.kafka, &cfg.kafka.topics.feeds, "roost-up-feeds") {
        Ok(f) => {
            match f.read_to_end(Duration::from_secs(120), |r| apply(store, metrics, r)) {
                Ok(n) => tracing::info!(records = n, topic = %cfg.kafka.topics.feeds, "feeds topic read"),
                Err(e) => tracing::warn!(error = %e, "feeds topic only partly read; following on"),
            }
            *follower = Some(f);
        }
        Err(e) => {
            tracing::warn!(error = %e, "feeds topic not readable; retrying in 10s");
            *retry_at = Instant::now() + Duration::from_secs(10);
        }
    }
}

pub fn apply(store: &mut FeedStore, metrics: &FeedMetrics, r: roost_kafka::Record) {
    match FeedRecord::decode(&r.key, r.value.as_deref()) {
        Ok(rec) => store.apply(rec),
        Err(e) => {
            metrics.bad_records.inc();
            tracing::warn!(partition = r.partition, offset = r.offset, error = %e, "unreadable feeds-topic record skipped");
        }
    }
}
