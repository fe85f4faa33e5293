//! `roost feeds`: threat feeds at the binary's edge.
//!
//! - `roost feeds run`: fetch every enabled feed on its schedule, validate, publish the diff to
//!   the compacted feeds topic (and/or write a snapshot to `feeds.cache_dir`).
//! - `roost feeds list|check|lookup`: what is defined, whether a file parses and passes
//!   validation, which feeds list an address.
//!
//! What the scoring processes make of the published feeds is `crate::enrich`.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use prometheus_client::registry::Registry;
use roost_engine::Timestamp;
use roost_feeds::fetch::{Conditional, Fetched, Fetcher};
use roost_feeds::store::{FeedContents, FeedRecord, Meta, SCHEMA_VERSION};
use roost_feeds::{FeedDef, FeedStore};
use roost_kafka::Producer;

use crate::config::{Config, FeedsConfig};
use crate::enrich::{FeedMetrics, apply, build_index, cache_path, definitions, load_local};
use crate::runtime::{self, Shutdown, wall_now};

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
    let rt = runtime::tokio(2)?;
    let shutdown = Shutdown::on_signals(&rt)?;
    rt.block_on(daemon(cfg, defs, args.once, shutdown))
}

async fn daemon(cfg: Config, defs: Vec<FeedDef>, once: bool, shutdown: Shutdown) -> anyhow::Result<bool> {
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
        let listener = runtime::bind(cfg.feeds.listen).await?;
        runtime::serve("roost feeds: /metrics", listener, runtime::metrics_router(Arc::new(registry)), &shutdown);
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
                metrics.observe_published(&def.name, m.entries, m.fetched_at / 1000, now);
            }
        }
        if once {
            return Ok(all_ok);
        }
        let wake = next.iter().min().copied().unwrap_or_else(Instant::now);
        let nap = wake.saturating_duration_since(Instant::now()).min(Duration::from_secs(5));
        tokio::select! {
            _ = tokio::time::sleep(nap) => {}
            // stopping is a clean end: what failed was logged and counted as it happened
            _ = shutdown.stopped() => return Ok(true),
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
            metrics.error(&def.name, e.label());
            return Outcome::Failed(e.to_string());
        }
    };
    let (mut parsed, validators) = match fetched {
        Fetched::NotModified => {
            // Still a successful fetch: publish the new time so scorers know the feed is fresh.
            if let Some(m) = &current.meta {
                let meta = Meta { fetched_at: now.millis(), ..m.clone() };
                if let Err(e) = publish(cfg, producer, vec![FeedRecord::Meta(meta.clone())]).await {
                    return Outcome::Failed(e.to_string());
                }
                store.apply(FeedRecord::Meta(meta));
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
            metrics.refusal(&def.name, r.label());
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
    let records = FeedRecord::publish(&def.name, &diff, meta);
    if let Err(e) = publish(cfg, producer, records.clone()).await {
        metrics.error(&def.name, "publish");
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

async fn publish(cfg: &Config, producer: Option<&Producer>, records: Vec<FeedRecord>) -> anyhow::Result<()> {
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
