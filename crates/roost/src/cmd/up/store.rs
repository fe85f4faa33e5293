//! Where `roost up`'s verdicts go besides its memory (`roost_verdicts::LocalVerdicts` in
//! [`super::state`]): with `redis.url` set, every verdict, override and audit entry is also
//! written to Redis (in the key schema `roost score` uses), so `roost proxy` instances elsewhere
//! follow this appliance ([`RedisMirror`]); with `kafka.brokers` set, verdict changes and audit
//! entries go to the verdicts and audit topics ([`KafkaMirror`]). And [`UpBackend`], the admin
//! UI's view of this process.

use std::collections::VecDeque;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ipnetwork::IpNetwork;
use prometheus_client::metrics::counter::Counter;
use roost_admin::{AuditEntry, Backend, Health};
use roost_engine::{Override, VerdictChange};
use roost_verdicts::{HistoryEntry, OverrideEntry, RedisConfig, Write};

use super::state::{AUDIT_KEPT, Appliance, record};
use crate::runtime::wall_now;

/// Writes waiting for Redis while it is unreachable, at most (then the oldest are dropped and
/// counted; a full resync follows when it is back).
const PENDING_MAX: usize = 100_000;

/// Mirrors verdicts and audit entries to Redis, off the scorer's thread.
pub struct RedisMirror {
    tx: SyncSender<Vec<Write>>,
    store: Mutex<roost_verdicts::Store>,
    /// Set when a write outside the writer failed (an override): the writer writes everything
    /// again.
    resync: Arc<std::sync::atomic::AtomicBool>,
}

impl RedisMirror {
    pub fn start(cfg: &RedisConfig, dropped: Counter, shared: Arc<Appliance>) -> anyhow::Result<RedisMirror> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1024);
        let store = roost_verdicts::Store::new(cfg)?;
        let writer = roost_verdicts::Store::new(cfg)?;
        let resync = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let r = resync.clone();
        std::thread::Builder::new()
            .name("roost-redis".into())
            .spawn(move || write_loop(writer, rx, dropped, shared, r))?;
        tracing::info!(url = %roost_verdicts::redact(&cfg.url), "verdicts also written to Redis");
        Ok(RedisMirror { tx, store: Mutex::new(store), resync })
    }

    /// Has the writer write every verdict and override again.
    pub fn resync(&self) {
        self.resync.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn send(&self, writes: Vec<Write>) {
        match self.tx.try_send(writes) {
            Ok(()) | Err(TrySendError::Disconnected(_)) => {}
            Err(TrySendError::Full(w)) => {
                // a slow Redis slows the scorer rather than losing verdicts
                let _ = self.tx.send(w);
            }
        }
    }
}

/// Waits up to 200 ms for batches on `rx` and takes all that wait, keeping `pending` within
/// `PENDING_MAX` (the oldest dropped and counted). The number dropped; `None` once the senders
/// are gone and nothing is pending.
fn gather<T>(rx: &Receiver<Vec<T>>, pending: &mut VecDeque<T>, dropped: &Counter) -> Option<usize> {
    match rx.recv_timeout(Duration::from_millis(200)) {
        Ok(b) => pending.extend(b),
        Err(RecvTimeoutError::Timeout) => {}
        Err(RecvTimeoutError::Disconnected) if pending.is_empty() => return None,
        Err(RecvTimeoutError::Disconnected) => {}
    }
    while let Ok(b) = rx.try_recv() {
        pending.extend(b);
    }
    let n = pending.len().saturating_sub(PENDING_MAX);
    pending.drain(..n);
    dropped.inc_by(n as u64);
    Some(n)
}

fn write_loop(
    mut store: roost_verdicts::Store,
    rx: Receiver<Vec<Write>>,
    dropped: Counter,
    shared: Arc<Appliance>,
    requested: Arc<std::sync::atomic::AtomicBool>,
) {
    let mut pending: VecDeque<Write> = VecDeque::new();
    let mut resync = false;
    let mut failing_since: Option<Instant> = None;
    let mut checked = Instant::now();
    loop {
        let Some(lost) = gather(&rx, &mut pending, &dropped) else { return };
        resync |= lost > 0 || requested.swap(false, std::sync::atomic::Ordering::Relaxed);
        if checked.elapsed() >= Duration::from_secs(2) {
            checked = Instant::now();
            // a Redis that restarted (or failed over) may have come back empty
            if store.server_restarted().unwrap_or(false) {
                tracing::warn!("Redis restarted: writing every current verdict and override again");
                resync = true;
            }
        }
        if resync && failing_since.is_none() {
            // the store missed writes: every override and current verdict again (no announcements)
            let now = wall_now();
            let overrides: Vec<(String, Option<OverrideEntry>)> = {
                let engine = shared.engine.lock().expect("engine lock");
                engine
                    .overrides()
                    .into_iter()
                    .map(|(n, o)| {
                        let name = roost_engine::subject_name(n);
                        (name.clone(), Some(OverrideEntry::new(name, &o, now)))
                    })
                    .collect()
            };
            let keep: std::collections::HashSet<String> = overrides.iter().map(|(k, _)| k.clone()).collect();
            let written = store
                .write_overrides(&overrides, now.0)
                .and_then(|()| store.retain_overrides(|p| keep.contains(p), now.0));
            if let Err(e) = written {
                tracing::warn!(error = %e, "cannot write the overrides to Redis; retrying in 2 s");
                std::thread::sleep(Duration::from_secs(2));
                continue;
            }
            let all = shared.verdicts.lock().expect("verdicts lock").current();
            pending.extend(all.into_iter().map(|record| Write { record, now, announce: false, samples: Vec::new() }));
            resync = false;
        }
        if pending.is_empty() {
            continue;
        }
        let batch: Vec<Write> = pending.iter().take(500).cloned().collect();
        match store.write(&batch) {
            Ok(()) => {
                pending.drain(..batch.len());
                if failing_since.take().is_some() {
                    tracing::info!("Redis reachable again; verdict writes resumed");
                }
            }
            Err(e) => {
                if failing_since.is_none() {
                    tracing::warn!(error = %e, pending = pending.len(), "cannot write verdicts to Redis; keeping them and retrying");
                    failing_since = Some(Instant::now());
                }
                std::thread::sleep(Duration::from_millis(500));
            }
        }
    }
}

/// `roost up`'s verdict changes and audit entries on the pipeline's topics, when
/// `kafka.brokers` is set: the compacted verdicts topic (as `roost score` writes it, so
/// `roost bgp`, a SIEM or another consumer can follow this appliance) and the audit topic (the
/// audit log durable outside the process). A thread of its own; an unreachable broker delays
/// records (kept, bounded) and never the engine.
/// A record for a topic: (topic, key, value; `None` a tombstone).
type TopicRecord = (String, Vec<u8>, Option<Vec<u8>>);

pub struct KafkaMirror {
    tx: SyncSender<Vec<TopicRecord>>,
    dropped: Counter,
    verdicts: String,
    audit: String,
}

impl KafkaMirror {
    pub fn start(kafka: &roost_kafka::KafkaConfig, dropped: Counter) -> anyhow::Result<KafkaMirror> {
        for (topic, compact) in [(&kafka.topics.verdicts, true), (&kafka.topics.audit, false)] {
            if let Err(e) = roost_kafka::ensure_topic(kafka, topic, 1, compact) {
                tracing::warn!(topic, error = %e, "cannot make sure the topic exists; writing anyway");
            }
        }
        // sends time out (30 s): an unreachable broker becomes an error the writer retries
        let producer = roost_kafka::Producer::with(kafka, "roost-up", &[("linger.ms", "5")])?;
        let (tx, rx) = std::sync::mpsc::sync_channel(1024);
        let d = dropped.clone();
        std::thread::Builder::new().name("roost-kafka".into()).spawn(move || kafka_loop(producer, rx, d))?;
        tracing::info!(verdicts = %kafka.topics.verdicts, audit = %kafka.topics.audit, "verdicts also written to Kafka");
        Ok(KafkaMirror { tx, dropped, verdicts: kafka.topics.verdicts.clone(), audit: kafka.topics.audit.clone() })
    }

    pub fn changes<'c>(&self, changes: impl IntoIterator<Item = &'c VerdictChange>) {
        let batch = changes
            .into_iter()
            .map(|c| {
                let key = roost_engine::subject_name(c.subject).into_bytes();
                (self.verdicts.clone(), key, Some(roost_wire::verdicts::encode(c)))
            })
            .collect();
        self.send(batch);
    }

    pub fn audit(&self, entry: &AuditEntry) {
        let json = serde_json::to_vec(entry).expect("an entry serializes");
        self.send(vec![(self.audit.clone(), entry.prefix.clone().into_bytes(), Some(json))]);
    }

    /// Never waits: the engine does not wait on Kafka (a full queue drops, counted).
    fn send(&self, batch: Vec<TopicRecord>) {
        if let Err(TrySendError::Full(b)) = self.tx.try_send(batch) {
            self.dropped.inc_by(b.len() as u64);
        }
    }
}

fn kafka_loop(producer: roost_kafka::Producer, rx: Receiver<Vec<TopicRecord>>, dropped: Counter) {
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => return tracing::error!(error = %e, "no runtime for the Kafka mirror"),
    };
    let mut pending: VecDeque<TopicRecord> = VecDeque::new();
    let mut failing_since: Option<Instant> = None;
    loop {
        if gather(&rx, &mut pending, &dropped).is_none() {
            return;
        }
        // in order, one topic at a time: a subject's records keep their order
        while let Some(topic) = pending.front().map(|r| r.0.clone()) {
            let n = pending.iter().take(500).take_while(|r| r.0 == topic).count();
            let records: Vec<(Vec<u8>, Option<Vec<u8>>)> =
                pending.iter().take(n).map(|(_, k, v)| (k.clone(), v.clone())).collect();
            match rt.block_on(producer.send_all(&topic, records)) {
                Ok(_) => {
                    pending.drain(..n);
                    if failing_since.take().is_some() {
                        tracing::info!("Kafka reachable again; verdict records resumed");
                    }
                }
                Err(e) => {
                    if failing_since.is_none() {
                        tracing::warn!(error = %e, pending = pending.len(), "cannot write to Kafka; keeping the records and retrying");
                        failing_since = Some(Instant::now());
                    }
                    std::thread::sleep(Duration::from_millis(500));
                    break;
                }
            }
        }
    }
}

/// The admin UI's backend in `roost up`: this process's engine and records.
pub struct UpBackend {
    pub shared: Arc<Appliance>,
}

impl Backend for UpBackend {
    fn verdict_updates(&self) -> Result<roost_admin::VerdictUpdate, String> {
        // held in this process: all of them each time is a copy, not a load
        Ok(roost_admin::VerdictUpdate::All(self.shared.verdicts.lock().expect("verdicts lock").current()))
    }

    fn history(&self, subject: &str) -> Vec<HistoryEntry> {
        self.shared.verdicts.lock().expect("verdicts lock").history(subject)
    }

    fn shadow_verdicts(&self) -> Vec<roost_verdicts::VerdictRecord> {
        self.shared.verdicts.lock().expect("verdicts lock").shadow()
    }

    fn append_audit(&self, entry: &AuditEntry) -> Result<(), String> {
        if let Some(r) = self.shared.redis.get() {
            let json = serde_json::to_string(entry).expect("an entry serializes");
            r.store.lock().expect("store lock").append_audit(&json).map_err(|e| e.to_string())?;
        }
        if let Some(k) = self.shared.kafka.get() {
            k.audit(entry);
        }
        tracing::info!(target: "roost::audit", by = %entry.by, from = %entry.from, action = %entry.action,
            prefix = %entry.prefix, class = ?entry.class, until = ?entry.until, comment = %entry.comment, "audit");
        let mut audit = self.shared.audit.lock().expect("audit lock");
        if audit.len() >= AUDIT_KEPT {
            audit.pop_back();
        }
        audit.push_front(entry.clone());
        Ok(())
    }

    fn recent_audit(&self, n: usize) -> Result<Vec<AuditEntry>, String> {
        if let Some(r) = self.shared.redis.get() {
            let v = r.store.lock().expect("store lock").recent_audit(n).map_err(|e| e.to_string())?;
            return Ok(v.into_iter().map(|(id, j)| roost_admin::AuditEntry::read(&id, &j)).collect());
        }
        Ok(self.shared.audit.lock().expect("audit lock").iter().take(n).cloned().collect())
    }

    fn apply_override(&self, prefix: IpNetwork, ov: Option<Override>) -> Result<(), String> {
        let name = roost_engine::subject_name(prefix);
        let entry = ov.as_ref().map(|o| OverrideEntry::new(name.clone(), o, wall_now()));
        // the in-process proxy and flowspec controller act on it before any client is judged
        if let Some(c) = self.shared.cache.get() {
            c.set_override(prefix, entry.as_ref());
        }
        {
            let mut held = self.shared.overrides.lock().expect("overrides lock");
            match &entry {
                Some(e) => held.insert(name.clone(), e.clone()),
                None => held.remove(&name),
            };
        }
        if let Some(bgp) = self.shared.bgp.get() {
            let _ = bgp.send(vec![roost_bgp::Input::Override(prefix, ov.clone())]);
        }
        let changes = {
            let mut engine = self.shared.engine.lock().expect("engine lock");
            let now = self.shared.clock(&engine);
            let mut out = Vec::new();
            match ov {
                Some(o) => engine.set_override(prefix, o, now, &mut out),
                None => engine.remove_override(prefix, now, &mut out),
            }
            out
        };
        record(&self.shared, changes);
        if let Some(r) = self.shared.redis.get() {
            // other proxies following this Redis
            r.store.lock().expect("store lock").write_overrides(&[(name, entry)], wall_now().0).map_err(|e| {
                r.resync(); // the writer puts it there once Redis answers
                format!("the override is in force here, but not yet in Redis: {e}")
            })?;
        }
        Ok(())
    }

    fn proxy_outcomes(&self, subject: &str) -> Option<roost_verdicts::ProxyOutcomes> {
        self.shared.outcomes.get()?.get(subject)
    }

    fn overrides(&self) -> Vec<OverrideEntry> {
        let now = wall_now();
        let held = self.shared.overrides.lock().expect("overrides lock");
        held.values().filter(|e| e.until.is_none_or(|u| u > now)).cloned().collect()
    }

    fn health(&self) -> Option<Health> {
        let series = self.shared.series.lock().expect("series lock").iter().copied().collect();
        let state = self.shared.drop.lock().expect("drop signal lock").status().state;
        Some(Health {
            configured: true,
            error: None,
            series,
            drop_alert: match state as i64 {
                2 => "firing",
                1 => "pending",
                _ => "inactive",
            }
            .into(),
            targets: vec![("roost-up".into(), "this process".into(), true)],
        })
    }
}
