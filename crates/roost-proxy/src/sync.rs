//! Keeps the [`VerdictCache`] in step with Redis, off the request path, on a thread of its own
//! ([`roost_verdicts::follow`]: load every verdict and override, then follow the change stream
//! and re-read what changed). While Redis is unreachable
//! the cache keeps what it had (the last-known verdicts still apply) and the proxy reports it;
//! after a reconnect, a restarted Redis, or a position that fell off the trimmed stream, it
//! loads everything again.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use roost_verdicts::RedisConfig;
use roost_verdicts::follow::{StoreFollower, Update};

use crate::cache::VerdictCache;
use crate::metrics::ProxyMetrics;
use crate::now_ms;

/// How long one stream read waits for changes.
const BLOCK: Duration = Duration::from_millis(500);
/// How often expired verdicts and overrides are swept.
const HOUSEKEEPING: Duration = Duration::from_secs(2);

pub fn spawn(
    cfg: RedisConfig,
    cache: Arc<VerdictCache>,
    metrics: Arc<ProxyMetrics>,
    stop: Arc<AtomicBool>,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new().name("roost-proxy-sync".into()).spawn(move || {
        let mut cfg = cfg;
        // a read must outlast the block
        cfg.timeout = cfg.timeout.max(BLOCK + Duration::from_secs(1));
        let mut backoff = Duration::from_millis(100);
        while !stop.load(Ordering::Relaxed) {
            match follow(&cfg, &cache, &metrics, &stop) {
                Ok(()) => return,
                Err(e) => {
                    metrics.redis_up.set(0);
                    metrics.sync_errors.inc();
                    tracing::warn!(error = %e, retry_in = ?backoff, cache = cache.len(),
                        "verdict store unreachable: serving the last-known verdicts");
                }
            }
            sleep_unless_stopped(backoff, &stop);
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    })
}

fn sleep_unless_stopped(d: Duration, stop: &AtomicBool) {
    let end = Instant::now() + d;
    while Instant::now() < end && !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn follow(
    cfg: &RedisConfig,
    cache: &VerdictCache,
    metrics: &ProxyMetrics,
    stop: &AtomicBool,
) -> Result<(), roost_verdicts::Error> {
    let mut f = StoreFollower::new(cfg)?;
    let mut housekeeping = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let t = Instant::now();
        match f.next(BLOCK, now_ms())? {
            Update::Full { verdicts, overrides } => {
                cache.replace_all(verdicts.iter());
                cache.replace_overrides(overrides.iter());
                cache.sweep(now_ms());
                metrics.sync_loads.inc();
                metrics.redis_up.set(1);
                tracing::info!(verdicts = cache.len(), overrides = cache.overrides(), from = %f.position(),
                    took = ?t.elapsed(), "verdicts loaded from Redis");
            }
            Update::Changed { verdicts, overrides, entries, unreadable, lag_ms } => {
                for (prefix, e) in &overrides {
                    match crate::cache::parse_subject(prefix) {
                        Ok(net) => cache.set_override(net, e.as_ref()),
                        Err(_) => {
                            metrics.sync_bad_records.inc();
                            tracing::warn!(prefix, "an override change names no address or prefix");
                        }
                    }
                }
                for (subject, r) in &verdicts {
                    match r {
                        Some(rec) => {
                            if !cache.apply(rec) {
                                metrics.sync_bad_records.inc();
                                tracing::warn!(subject = %rec.subject, "a stored verdict names no address or prefix");
                            }
                        }
                        None => cache.remove(subject),
                    }
                }
                for e in &unreadable {
                    metrics.sync_bad_records.inc();
                    tracing::warn!(error = %e, "a stored verdict or override is unreadable; ignored");
                }
                metrics.sync_changes.inc_by(entries as u64);
                metrics.sync_lag_ms.set(lag_ms);
            }
        }
        metrics.cache_entries.set(cache.len() as i64);
        if housekeeping.elapsed() >= HOUSEKEEPING {
            housekeeping = Instant::now();
            cache.sweep(now_ms());
        }
    }
    Ok(())
}
