//! Threat feeds and GeoIP/ASN at the binary's edge.
//!
//! - `roost feeds run`: fetch every enabled feed on its schedule, validate, publish the diff to
//!   the compacted feeds topic (and/or write a snapshot to `feeds.cache_dir`).
//! - `roost feeds list|check|lookup`: what is defined, whether a file parses and passes
//!   validation, which feeds list an address.
//! - [`Enrichment`]: what `roost up` and `roost replay` attach to the engine — the feed index
//!   (from local files, and under `roost up` also from the feeds topic, kept current by
//!   [`spawn_sync`]) and the GeoIP/ASN policy.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, bail};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use roost_engine::{Engine, Timestamp};
use roost_feeds::fetch::{Conditional, FetchConfig, Fetched, Fetcher};
use roost_feeds::local::{self, Loaded};
use roost_feeds::store::{FeedContents, Meta, Record, SCHEMA_VERSION};
use roost_feeds::{FeedAnnotator, FeedDef, FeedHandle, FeedIndex, FeedStore, Format, IndexedFeed, Policy};
use roost_geo::{GeoAnnotator, GeoHandle, GeoInspector, GeoPolicy};
use roost_kafka::{Follower, Producer};
use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::up::wall_now;

/// The `[feeds]` config section.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FeedsConfig {
    /// A directory of feed definitions (`*.toml`); empty: the built-in ones (`feeds/`).
    pub dir: String,
    /// Feeds to switch on that are off by default (e.g. `threatexchange`, which needs a token).
    pub enable: Vec<String>,
    /// Feeds to switch off.
    pub disable: Vec<String>,
    /// Feed files on disk, by feed name, loaded directly by `roost up` and `roost replay`.
    pub files: BTreeMap<String, PathBuf>,
    /// Where `roost feeds run` writes each accepted feed (`NAME.feed`) and `roost up` reads
    /// them; empty: nowhere.
    pub cache_dir: String,
    /// Where `roost feeds run` serves /metrics.
    pub listen: SocketAddr,
    pub validation: Policy,
    pub fetch: FetchConfig,
}

impl Default for FeedsConfig {
    fn default() -> Self {
        FeedsConfig {
            dir: String::new(),
            enable: Vec::new(),
            disable: Vec::new(),
            files: BTreeMap::new(),
            cache_dir: String::new(),
            listen: "127.0.0.1:9752".parse().expect("valid"),
            validation: Policy::default(),
            fetch: FetchConfig::default(),
        }
    }
}

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

fn cache_path(dir: &str, feed: &str) -> PathBuf {
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
            d.format = Format::Spamhaus;
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
        Ok(Enrichment { feeds: FeedHandle::new(index), geo })
    }

    pub fn attach(&self, engine: &mut Engine) {
        engine.add_annotator(Box::new(FeedAnnotator::new(self.feeds.clone())));
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

    fn outcome(&self, feed: &str, outcome: &str) {
        self.fetches.get_or_create(&FeedOutcome { feed: feed.into(), outcome: outcome.into() }).inc();
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
fn build_index(defs: &[FeedDef], loaded: &[Loaded], store: &FeedStore, now: Timestamp) -> FeedIndex {
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
    let mut follower: Option<Follower> = None;
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
    follower: &mut Option<Follower>,
    retry_at: &mut Instant,
) {
    match Follower::new(&cfg.kafka, &cfg.kafka.topics.feeds, "roost-up-feeds") {
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

fn apply(store: &mut FeedStore, metrics: &FeedMetrics, r: roost_kafka::Record) {
    match Record::decode(&r.key, r.value.as_deref()) {
        Ok(rec) => store.apply(rec),
        Err(e) => {
            metrics.bad_records.inc();
            tracing::warn!(partition = r.partition, offset = r.offset, error = %e, "unreadable feeds-topic record skipped");
        }
    }
}

// ---- `roost feeds run` -------------------------------------------------------------------------

/// What one refresh of one feed came to.
#[derive(Debug)]
enum Outcome {
    Changed { entries: usize, added: usize, removed: usize, reserved: usize },
    NotModified,
    Refused(String),
    Failed(String),
}

pub struct RunArgs {
    pub once: bool,
    pub only: Vec<String>,
}

pub fn run(cfg: Config, args: RunArgs) -> anyhow::Result<bool> {
    let mut defs: Vec<FeedDef> = definitions(&cfg.feeds)?.into_iter().filter(|d| d.enabled).collect();
    if !args.only.is_empty() {
        for n in &args.only {
            anyhow::ensure!(defs.iter().any(|d| &d.name == n), "--only {n}: no enabled feed of that name");
        }
        defs.retain(|d| args.only.contains(&d.name));
    }
    anyhow::ensure!(!defs.is_empty(), "no feeds enabled");
    if !cfg.kafka.enabled() && cfg.feeds.cache_dir.is_empty() {
        bail!("nowhere to publish: set kafka.brokers (the feeds topic) or feeds.cache_dir (files for roost up)");
    }
    if !cfg.feeds.cache_dir.is_empty() {
        std::fs::create_dir_all(&cfg.feeds.cache_dir).with_context(|| format!("creating {}", cfg.feeds.cache_dir))?;
    }
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(daemon(cfg, defs, args.once))
}

async fn daemon(cfg: Config, defs: Vec<FeedDef>, once: bool) -> anyhow::Result<bool> {
    let metrics = FeedMetrics::default();
    let mut store = FeedStore::default();
    let producer = if cfg.kafka.enabled() {
        let k = cfg.kafka.clone();
        let topic = k.topics.feeds.clone();
        let st = tokio::task::spawn_blocking(move || -> anyhow::Result<FeedStore> {
            roost_kafka::ensure_topic(&k, &topic, 1, true)?;
            let mut store = FeedStore::default();
            let m = FeedMetrics::default();
            let n = roost_kafka::read_to_end(&k, &topic, Duration::from_secs(300), |r| apply(&mut store, &m, r))?;
            tracing::info!(records = n, entries = store.len(), %topic, "published feed state read back");
            Ok(store)
        })
        .await??;
        store = st;
        Some(Producer::new(&cfg.kafka, "roost-feeds")?)
    } else {
        None
    };
    let fetcher = Fetcher::new(cfg.feeds.fetch.clone())?;
    if !once {
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        let listen = cfg.feeds.listen;
        let registry = Arc::new(registry);
        let app = axum::Router::new()
            .route("/healthz", axum::routing::get(|| async { "ok\n" }))
            .route("/metrics", axum::routing::get(move || std::future::ready(crate::up::encode_metrics(&registry))));
        let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("listening on {listen}"))?;
        tracing::info!("roost feeds: /metrics on http://{}", listener.local_addr()?);
        tokio::spawn(async move { axum::serve(listener, app).await });
    }
    let mut next: Vec<Instant> = vec![Instant::now(); defs.len()];
    let mut all_ok = true;
    loop {
        for (i, def) in defs.iter().enumerate() {
            if next[i] > Instant::now() {
                continue;
            }
            let outcome = refresh(&cfg, def, &fetcher, producer.as_ref(), &mut store, &metrics).await;
            let label = match &outcome {
                Outcome::Changed { entries, added, removed, reserved } => {
                    tracing::info!(feed = %def.name, entries, added, removed, reserved, "feed published");
                    println!(
                        "{}: published {entries} entries (+{added} −{removed}, {reserved} special-purpose dropped)",
                        def.name
                    );
                    "changed"
                }
                Outcome::NotModified => {
                    tracing::info!(feed = %def.name, "feed not modified");
                    println!("{}: not modified", def.name);
                    "not_modified"
                }
                Outcome::Refused(why) => {
                    tracing::warn!(feed = %def.name, %why, "feed update refused; the published set stays");
                    println!("{}: refused: {why}", def.name);
                    all_ok = false;
                    "refused"
                }
                Outcome::Failed(why) => {
                    tracing::warn!(feed = %def.name, %why, "feed fetch failed; the published set stays");
                    println!("{}: failed: {why}", def.name);
                    all_ok = false;
                    "error"
                }
            };
            metrics.outcome(&def.name, label);
            let ok = matches!(outcome, Outcome::Changed { .. } | Outcome::NotModified);
            // After a failure, try again sooner than the schedule (but not hammering).
            let wait = if ok { def.refresh } else { def.refresh.min(Duration::from_secs(300)) };
            next[i] = Instant::now() + wait;
        }
        let now = wall_now();
        for def in &defs {
            if let Some(m) = store.feeds.get(&def.name).and_then(|c| c.meta.as_ref()) {
                let l = FeedMetrics::feed(&def.name);
                metrics.entries.get_or_create(&l).set(m.entries as i64);
                metrics.last_success.get_or_create(&l).set(m.fetched_at / 1000);
                metrics.age.get_or_create(&l).set((now.secs() - m.fetched_at / 1000).max(0));
            }
        }
        if once {
            return Ok(all_ok);
        }
        let wake = next.iter().min().copied().unwrap_or_else(Instant::now);
        let nap = wake.saturating_duration_since(Instant::now()).min(Duration::from_secs(5));
        tokio::select! {
            _ = tokio::time::sleep(nap) => {}
            _ = tokio::signal::ctrl_c() => return Ok(all_ok),
        }
    }
}

async fn refresh(
    cfg: &Config,
    def: &FeedDef,
    fetcher: &Fetcher,
    producer: Option<&Producer>,
    store: &mut FeedStore,
    metrics: &FeedMetrics,
) -> Outcome {
    let current = store.feeds.get(&def.name).cloned().unwrap_or_default();
    let cond = current
        .meta
        .as_ref()
        .map(|m| Conditional { etag: m.etag.clone(), last_modified: m.last_modified.clone(), sha256: m.sha256.clone() })
        .unwrap_or_default();
    let now = wall_now();
    let fetched = match fetcher.fetch(def, &cond).await {
        Ok(f) => f,
        Err(e) => {
            metrics.errors.get_or_create(&FeedReason { feed: def.name.clone(), reason: e.label().into() }).inc();
            return Outcome::Failed(e.to_string());
        }
    };
    let (mut parsed, validators) = match fetched {
        Fetched::NotModified => {
            // Still a successful fetch: publish the new time so scorers know the feed is fresh.
            if let Some(m) = &current.meta {
                let meta = Meta { fetched_at: now.millis(), ..m.clone() };
                if let Err(e) = publish(cfg, producer, vec![Record::Meta(meta.clone())]).await {
                    return Outcome::Failed(e.to_string());
                }
                store.apply(Record::Meta(meta));
            }
            return Outcome::NotModified;
        }
        Fetched::Changed { parsed, validators, .. } => (parsed, validators),
    };
    for s in &parsed.samples {
        tracing::debug!(feed = %def.name, error = %s, "feed line skipped");
    }
    let previous = current.meta.as_ref().map(|_| current.entries.len());
    let accepted = match roost_feeds::validate::validate(
        &mut parsed,
        previous,
        def.allow_empty,
        def.max_shrink,
        &cfg.feeds.validation,
        &cfg.engine.allowlist,
    ) {
        Ok(a) => a,
        Err(r) => {
            metrics.refusals.get_or_create(&FeedReason { feed: def.name.clone(), reason: r.label().into() }).inc();
            return Outcome::Refused(r.to_string());
        }
    };
    let diff = current.diff(&parsed.entries, now);
    let meta = Meta {
        v: SCHEMA_VERSION,
        feed: def.name.clone(),
        entries: parsed.entries.len(),
        fetched_at: now.millis(),
        etag: validators.etag,
        last_modified: validators.last_modified,
        sha256: validators.sha256,
    };
    let records = Record::publish(&def.name, &diff, meta);
    if let Err(e) = publish(cfg, producer, records.clone()).await {
        metrics.errors.get_or_create(&FeedReason { feed: def.name.clone(), reason: "publish".into() }).inc();
        return Outcome::Failed(e.to_string());
    }
    for r in records {
        store.apply(r);
    }
    if !cfg.feeds.cache_dir.is_empty()
        && let Err(e) = write_cache(&cfg.feeds.cache_dir, def, store.feeds.get(&def.name).expect("just applied"))
    {
        return Outcome::Failed(format!("writing the cache file: {e}"));
    }
    Outcome::Changed {
        entries: parsed.entries.len(),
        added: diff.added.len(),
        removed: diff.removed.len(),
        reserved: accepted.reserved,
    }
}

async fn publish(cfg: &Config, producer: Option<&Producer>, records: Vec<Record>) -> anyhow::Result<()> {
    let Some(p) = producer else { return Ok(()) };
    let topic = &cfg.kafka.topics.feeds;
    p.send_all(topic, records.iter().map(|r| (r.key().into_bytes(), r.value()))).await?;
    Ok(())
}

/// Writes the accepted entries as `PREFIX ; detail` lines (the Spamhaus text format), renamed
/// into place so readers never see half a file.
fn write_cache(dir: &str, def: &FeedDef, c: &FeedContents) -> std::io::Result<()> {
    use std::io::Write;
    let path = cache_path(dir, &def.name);
    let tmp = path.with_extension("feed.tmp");
    let mut w = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
    writeln!(
        w,
        "; roost feed snapshot: {} ({} entries) from {}",
        def.name,
        c.entries.len(),
        roost_feeds::fetch::redact(&def.url)
    )?;
    for (net, l) in &c.entries {
        match &l.detail {
            Some(d) => writeln!(w, "{net} ; {}", d.replace(['\n', '\r'], " "))?,
            None => writeln!(w, "{net}")?,
        }
    }
    w.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    std::fs::rename(tmp, path)
}

// ---- `roost feeds list|check|lookup` -------------------------------------------------------------

pub fn list(cfg: &FeedsConfig) -> anyhow::Result<String> {
    use std::fmt::Write;
    let mut out = String::new();
    for d in definitions(cfg)? {
        let effect = match d.verdict() {
            Some((c, ttl)) => format!("{c} for {}, penalty {}", humantime::format_duration(ttl), d.effect.penalty),
            None => format!("penalty {}", d.effect.penalty),
        };
        writeln!(
            out,
            "{:<16} {:<4} {:<14} every {:<5} {:<32} {}",
            d.name,
            if d.enabled { "on" } else { "off" },
            format!("{:?}", d.format).to_lowercase(),
            humantime::format_duration(d.refresh).to_string(),
            effect,
            roost_feeds::fetch::redact(&d.url)
        )?;
    }
    Ok(out)
}

/// Parses and validates a file as feed `name` (or in `format`), reporting counts and problems.
pub fn check(cfg: &Config, name: &str, path: &Path) -> anyhow::Result<String> {
    use std::fmt::Write;
    let defs = definitions(&cfg.feeds)?;
    let def = defs.iter().find(|d| d.name == name).with_context(|| format!("no feed named {name:?}"))?;
    let body = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let mut parsed = roost_feeds::parse::parse(def.format, def.csv.as_ref(), &body);
    let mut out = String::new();
    writeln!(
        out,
        "{}: {} entries ({} v4, {} v6), {} duplicates, {} bad lines",
        path.display(),
        parsed.entries.len(),
        parsed.entries.iter().filter(|e| e.net.is_ipv4()).count(),
        parsed.entries.iter().filter(|e| e.net.is_ipv6()).count(),
        parsed.duplicates,
        parsed.errors
    )?;
    for s in &parsed.samples {
        writeln!(out, "  {s}")?;
    }
    match roost_feeds::validate::validate(
        &mut parsed,
        None,
        def.allow_empty,
        def.max_shrink,
        &cfg.feeds.validation,
        &cfg.engine.allowlist,
    ) {
        Ok(a) => writeln!(
            out,
            "valid: {} entries would be published ({} special-purpose dropped)",
            parsed.entries.len(),
            a.reserved
        )?,
        Err(r) => bail!("{out}refused: {r}"),
    }
    Ok(out)
}

/// Which feeds list `ip`: from `--feed` files, the configured files and cache, and the feeds
/// topic when Kafka is configured.
pub fn lookup(cfg: &Config, ip: IpAddr, extra: &[(String, PathBuf)]) -> anyhow::Result<String> {
    use std::fmt::Write;
    let defs = definitions(&cfg.feeds)?;
    let loaded = load_local(cfg, &defs, extra)?;
    let mut store = FeedStore::default();
    if cfg.kafka.enabled() {
        let m = FeedMetrics::default();
        roost_kafka::read_to_end(&cfg.kafka, &cfg.kafka.topics.feeds, Duration::from_secs(60), |r| {
            apply(&mut store, &m, r)
        })?;
    }
    // No staleness here: the question is what the data says.
    let index = build_index(&defs, &loaded, &store, Timestamp(i64::MIN / 2));
    let hits = index.lookup(ip);
    let mut out = String::new();
    if hits.is_empty() {
        writeln!(out, "{ip}: listed by none of {} feeds ({} prefixes)", index.feeds.len(), index.prefixes())?;
    }
    for l in hits {
        let f = index.feed(l);
        write!(out, "{ip}: listed in {} since {} ({}", f.name, roost_feeds::annotate::date(l.since), l.prefix)?;
        if let Some(d) = index.detail(l) {
            write!(out, ", {d}")?;
        }
        writeln!(out, ")")?;
    }
    Ok(out)
}

/// Parses `NAME=PATH`.
pub fn parse_feed_arg(s: &str) -> Result<(String, PathBuf), String> {
    let (n, p) =
        s.split_once('=').ok_or_else(|| "expected NAME=PATH (a feed name from `roost feeds list`)".to_owned())?;
    Ok((n.to_owned(), PathBuf::from(p)))
}
