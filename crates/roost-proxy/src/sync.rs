//! Keeps the [`VerdictCache`] in step with Redis, off the request path, on a thread of its own:
//! note the change stream's last position, load every verdict key, then follow the stream from
//! that position and re-read the key of each subject that changed. While Redis is unreachable
//! the cache keeps what it had (the last-known verdicts still apply) and the proxy reports it;
//! after a reconnect, a restarted Redis, or a position that fell off the trimmed stream, it
//! loads everything again.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use roost_verdicts::{RedisConfig, Store, StreamPos};

use crate::cache::VerdictCache;
use crate::metrics::Metrics;
use crate::now_ms;

/// How long one stream read waits for changes.
const BLOCK: Duration = Duration::from_millis(500);
/// How often expired verdicts are swept and the server's identity checked.
const HOUSEKEEPING: Duration = Duration::from_secs(2);

pub fn spawn(
    cfg: RedisConfig,
    cache: Arc<VerdictCache>,
    metrics: Arc<Metrics>,
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
    metrics: &Metrics,
    stop: &AtomicBool,
) -> Result<(), roost_verdicts::Error> {
    let mut store = Store::new(cfg)?;
    store.server_restarted()?;
    let mut pos = load(&mut store, cache, metrics)?;
    let mut housekeeping = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let changes = store.read_changes(pos, BLOCK, 1000)?;
        if !changes.is_empty() {
            let first = store.first_change()?;
            if pos != StreamPos::default() && first > pos {
                // `pos` itself was trimmed, and maybe entries after it that this read cannot return
                tracing::info!(%pos, oldest = %first, "fell behind the trimmed change stream: loading every verdict");
                pos = load(&mut store, cache, metrics)?;
                continue;
            }
            let subjects: Vec<&str> = changes.iter().map(|c| c.subject.as_str()).filter(|s| !s.is_empty()).collect();
            let records = store.get_many(&subjects)?;
            for (subject, r) in subjects.iter().zip(records) {
                match r {
                    Ok(Some(rec)) => {
                        if !cache.apply(&rec) {
                            metrics.sync_bad_records.inc();
                            tracing::warn!(subject = %rec.subject, "a stored verdict names no address or prefix");
                        }
                    }
                    Ok(None) => cache.remove(subject),
                    Err(e) => {
                        metrics.sync_bad_records.inc();
                        tracing::warn!(error = %e, "a stored verdict is unreadable; ignored");
                    }
                }
            }
            let last = changes.last().expect("not empty").pos;
            metrics.sync_changes.inc_by(changes.len() as u64);
            metrics.sync_lag_ms.set((now_ms() - last.0 as i64).max(0));
            pos = last;
        } else {
            metrics.sync_lag_ms.set(0);
        }
        metrics.cache_entries.set(cache.len() as i64);
        if housekeeping.elapsed() >= HOUSEKEEPING {
            housekeeping = Instant::now();
            cache.sweep(now_ms());
            if store.server_restarted()? {
                tracing::info!("the verdict store restarted: loading every verdict");
                pos = load(&mut store, cache, metrics)?;
            }
        }
    }
    Ok(())
}

fn load(store: &mut Store, cache: &VerdictCache, metrics: &Metrics) -> Result<StreamPos, roost_verdicts::Error> {
    let t = Instant::now();
    let pos = store.last_change()?;
    let all = store.load_all()?;
    cache.replace_all(all.values());
    cache.sweep(now_ms());
    metrics.sync_loads.inc();
    metrics.redis_up.set(1);
    metrics.cache_entries.set(cache.len() as i64);
    tracing::info!(verdicts = cache.len(), from = %pos, took = ?t.elapsed(), "verdicts loaded from Redis");
    Ok(pos)
}
