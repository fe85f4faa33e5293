//! The I/O loop of `roost score`: Kafka in, Redis and the verdicts topic out, offsets last.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use ipnetwork::IpNetwork;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use roost_engine::{Override, subject_name};
use roost_kafka::{GroupConsumer, GroupEvent, KafkaConfig, Producer};
use roost_verdicts::{OverrideEntry, RedisConfig, Store, VerdictRecord, Write};
use serde::{Deserialize, Serialize};

use crate::{Output, Scorer};

/// The `[score]` config section.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// The consumer group every scorer instance joins.
    pub group: String,
    /// This instance's stable name in the group (static membership, `group.instance.id`): a
    /// restarted instance takes its partitions back at once instead of after the session
    /// timeout. Every instance needs its own name. Empty: dynamic membership.
    pub instance: String,
    /// Where /metrics listens.
    pub listen: SocketAddr,
    /// Partitions of the requests topic when roost creates it. Scorer instances beyond this
    /// number stand by.
    pub partitions: i32,
    /// Records handled between two writes-and-commits, at most.
    pub batch: usize,
    /// Writes-and-commits happen at least this often while records flow.
    #[serde(with = "humantime_serde")]
    pub flush_interval: std::time::Duration,
    /// How far a record's event time may run ahead of this host's clock: later times are taken
    /// as now plus this (`roost_score_clamped_times_total`), so one future-dated record (a
    /// router's wrapped uptime, a forged datagram) cannot move a partition's clock ahead and
    /// expire its verdicts early.
    #[serde(with = "humantime_serde")]
    pub max_clock_skew: std::time::Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            group: "roost-score".into(),
            instance: String::new(),
            listen: "127.0.0.1:9751".parse().expect("valid"),
            partitions: 8,
            batch: 5000,
            flush_interval: Duration::from_millis(50),
            max_clock_skew: Duration::from_secs(10),
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SinkLabel {
    sink: String,
}
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PartitionLabel {
    partition: String,
}

/// `roost score`'s metrics.
#[derive(Default)]
pub struct ScorerMetrics {
    events: Counter,
    rebuilt: Counter,
    bad_records: Counter,
    clamped: Counter,
    writes: Family<SinkLabel, Counter>,
    write_errors: Family<SinkLabel, Counter>,
    resyncs: Counter,
    commits: Counter,
    commit_errors: Counter,
    poll_errors: Counter,
    lag: Family<PartitionLabel, Gauge>,
    partitions: Gauge,
    tracked: Gauge,
    population: crate::PopulationMetrics,
}

impl ScorerMetrics {
    pub fn register(&self, r: &mut Registry) {
        r.register("roost_score_events", "Request events scored", self.events.clone());
        r.register(
            "roost_score_rebuilt_events",
            "Records replayed to rebuild a partition's state",
            self.rebuilt.clone(),
        );
        r.register(
            "roost_score_bad_records",
            "Records on the requests topic that were not request events",
            self.bad_records.clone(),
        );
        r.register(
            "roost_score_clamped_times",
            "Records whose event time lay beyond this host's clock plus score.max_clock_skew (taken as that)",
            self.clamped.clone(),
        );
        r.register("roost_score_writes", "Verdicts written, by sink (redis, kafka)", self.writes.clone());
        r.register("roost_score_write_errors", "Failed verdict writes (retried), by sink", self.write_errors.clone());
        r.register(
            "roost_score_redis_resyncs",
            "Times Redis came back empty and every verdict was written again",
            self.resyncs.clone(),
        );
        r.register("roost_score_commits", "Offset commits", self.commits.clone());
        r.register("roost_score_commit_errors", "Failed offset commits", self.commit_errors.clone());
        r.register(
            "roost_score_poll_errors",
            "Errors reading the requests topic (the broker away)",
            self.poll_errors.clone(),
        );
        r.register(
            "roost_consumer_lag_records",
            "Records not yet read, by partition of the requests topic",
            self.lag.clone(),
        );
        r.register("roost_score_partitions", "Partitions this instance owns", self.partitions.clone());
        r.register("roost_score_state_clients", "Clients with state in this instance's engines", self.tracked.clone());
        self.population.register(r);
    }

    fn sink(&self, f: &Family<SinkLabel, Counter>, sink: &str) -> Counter {
        f.get_or_create(&SinkLabel { sink: sink.into() }).clone()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Kafka(#[from] roost_kafka::Error),
    #[error(transparent)]
    Redis(#[from] roost_verdicts::Error),
}

/// Runs until `stop`: joins the group, scores, writes, commits. Overrides arrive on
/// `overrides` (from the overrides topic, read whole by the caller).
pub fn run(
    kafka: &KafkaConfig,
    redis: &RedisConfig,
    s: &Settings,
    mut scorer: Scorer,
    metrics: &ScorerMetrics,
    stop: &AtomicBool,
    overrides: Receiver<(IpNetwork, Option<Override>)>,
) -> Result<(), Error> {
    let instance = if s.instance.is_empty() { None } else { Some(s.instance.as_str()) };
    let consumer = GroupConsumer::new(kafka, &kafka.topics.requests, &s.group, instance, "roost-score")?;
    let producer = Producer::with(kafka, "roost-score", &[("linger.ms", "5"), ("message.timeout.ms", "0")])?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().expect("a current-thread runtime");
    let mut store = Store::new(redis)?;
    if let Err(e) = store.server_restarted() {
        tracing::warn!(error = %e, "Redis not reachable yet; verdicts wait for it");
    }
    let mut last_check = Instant::now();
    let mut last_stats = Instant::now() - Duration::from_secs(60);
    let mut seen = scorer.counts().clone();
    let mut last_poll_error = Instant::now() - Duration::from_secs(60);
    // the overrides in force, as proxies read them from Redis, and the writes still owed
    let mut in_force: std::collections::BTreeMap<String, OverrideEntry> = Default::default();
    let mut owed: Vec<(String, Option<OverrideEntry>)> = Vec::new();
    // after a Redis restart: also end the stored overrides that are no longer in force
    let mut reconcile = false;
    scorer.set_max_skew(s.max_clock_skew);
    while !stop.load(Ordering::Relaxed) {
        scorer.refresh_candidates();
        scorer.set_wall_clock(wall_now());
        let started = Instant::now();
        let mut n = 0;
        while n < s.batch && started.elapsed() < s.flush_interval {
            let polled = match consumer.poll(s.flush_interval.saturating_sub(started.elapsed())) {
                Ok(p) => p,
                Err(e) => {
                    // librdkafka reconnects by itself: a broker away is a pause, not an end
                    metrics.poll_errors.inc();
                    if last_poll_error.elapsed() >= Duration::from_secs(5) {
                        last_poll_error = Instant::now();
                        tracing::warn!(error = %e, "reading the requests topic");
                    }
                    std::thread::sleep(Duration::from_millis(100));
                    break;
                }
            };
            match polled {
                None => break,
                Some(GroupEvent::Assigned(parts)) => scorer.assign(&parts),
                Some(GroupEvent::Revoked(parts)) => scorer.revoke(&parts),
                Some(GroupEvent::Record(r)) => {
                    n += 1;
                    if let Err(e) = scorer.record(r.partition, r.offset, r.value.as_deref()) {
                        tracing::warn!(partition = r.partition, offset = r.offset, error = %e, "skipping a record that is not a request event");
                    }
                }
            }
        }
        while let Ok((net, ov)) = overrides.try_recv() {
            tracing::info!(prefix = %net, set = ov.is_some(), "override");
            let name = subject_name(net);
            let entry = ov.as_ref().map(|o| OverrideEntry::new(name.clone(), o, wall_now()));
            match &entry {
                Some(e) => in_force.insert(name.clone(), e.clone()),
                None => in_force.remove(&name),
            };
            owed.push((name, entry));
            scorer.set_override(net, ov);
        }
        let (mut outputs, commits) = scorer.take();
        if last_check.elapsed() >= Duration::from_secs(1) {
            last_check = Instant::now();
            if store.server_restarted().unwrap_or(false) {
                tracing::warn!("Redis restarted: writing every current verdict again");
                metrics.resyncs.inc();
                scorer.resync_all();
                outputs.extend(scorer.take().0);
                // removals still owed stay owed; everything in force is written again
                owed.retain(|(_, e)| e.is_none());
                owed.extend(in_force.iter().map(|(k, e)| (k.clone(), Some(e.clone()))));
                reconcile = true;
            }
        }
        // overrides first: proxies apply them to every client under them, judged or not
        if !owed.is_empty() || reconcile {
            let written = store.write_overrides(&owed, wall_now().0).and_then(|()| {
                if reconcile {
                    let ended = store.retain_overrides(|p| in_force.contains_key(p), wall_now().0)?;
                    tracing::info!(ended, "overrides no longer in force removed from Redis");
                }
                Ok(())
            });
            match written {
                Ok(()) => {
                    metrics.sink(&metrics.writes, "redis").inc_by(owed.len() as u64);
                    owed.clear();
                    reconcile = false;
                }
                Err(e) => {
                    metrics.sink(&metrics.write_errors, "redis").inc();
                    tracing::warn!(error = %e, "cannot write overrides to Redis; retrying");
                }
            }
        }
        if !outputs.is_empty() {
            write(&mut store, &producer, &rt, kafka, &mut scorer, &mut outputs, metrics, stop);
        }
        if stop.load(Ordering::Relaxed) {
            break; // whatever was not written is not committed either
        }
        if !commits.is_empty() {
            match consumer.commit(&commits) {
                Ok(()) => {
                    metrics.commits.inc();
                }
                Err(e) => {
                    // the next commit covers these offsets; a crash before it repeats them
                    metrics.commit_errors.inc();
                    tracing::warn!(error = %e, "offset commit failed");
                }
            };
        }
        let c = scorer.counts().clone();
        metrics.events.inc_by(c.events - seen.events);
        metrics.rebuilt.inc_by(c.rebuilt - seen.rebuilt);
        metrics.bad_records.inc_by(c.bad_records - seen.bad_records);
        metrics.clamped.inc_by(c.clamped - seen.clamped);
        seen = c;
        if last_stats.elapsed() >= Duration::from_secs(5) {
            last_stats = Instant::now();
            stats(&consumer, &scorer, metrics);
        }
    }
    Ok(())
}

/// Writes outputs to Redis and the verdicts topic, retrying until both took them (or `stop`).
#[allow(clippy::too_many_arguments)]
fn write(
    store: &mut Store,
    producer: &Producer,
    rt: &tokio::runtime::Runtime,
    kafka: &KafkaConfig,
    scorer: &mut Scorer,
    outputs: &mut Vec<Output>,
    metrics: &ScorerMetrics,
    stop: &AtomicBool,
) {
    let mut backoff = Duration::from_millis(100);
    let mut redis_done = false;
    let mut kafka_done = false;
    while !stop.load(Ordering::Relaxed) {
        if !redis_done {
            let writes = to_writes(outputs);
            match store.write(&writes) {
                Ok(()) => {
                    redis_done = true;
                    metrics.sink(&metrics.writes, "redis").inc_by(writes.len() as u64);
                }
                Err(e) => {
                    metrics.sink(&metrics.write_errors, "redis").inc();
                    tracing::warn!(error = %e, retry_in = ?backoff, "cannot write verdicts to Redis");
                }
            }
        }
        if redis_done && !kafka_done {
            let records: Vec<(Vec<u8>, Option<Vec<u8>>)> = outputs
                .iter()
                .filter_map(|o| match o {
                    // shadow verdicts are never published: routers and other consumers act on the topic
                    Output::Change { change, .. } if change.shadow => None,
                    Output::Change { change, .. } => {
                        Some((roost_wire::verdicts::key(change), Some(roost_wire::verdicts::encode(change))))
                    }
                    Output::Resync { .. } => None,
                })
                .collect();
            let n = records.len() as u64;
            let sent = rt.block_on(async {
                tokio::select! {
                    r = producer.send_all(&kafka.topics.verdicts, records) => Some(r),
                    _ = stopped(stop) => None,
                }
            });
            let Some(sent) = sent else { return }; // stopping: nothing is committed
            match sent {
                Ok(_) => {
                    kafka_done = true;
                    metrics.sink(&metrics.writes, "kafka").inc_by(n);
                }
                Err(e) => {
                    metrics.sink(&metrics.write_errors, "kafka").inc();
                    tracing::warn!(error = %e, retry_in = ?backoff, "cannot write verdicts to Kafka");
                }
            }
        }
        if redis_done && kafka_done {
            for o in outputs.iter() {
                if let Output::Change { change: c, .. } = o {
                    let reason = c.reasons.first().map(|r| r.text.as_str()).unwrap_or("");
                    if c.shadow {
                        tracing::info!(client = %c.subject, from = %c.from, to = %c.to, cause = ?c.cause, reason, "shadow verdict (not enforced)");
                        metrics.population.count_shadow_change(c);
                    } else {
                        tracing::info!(client = %c.subject, from = %c.from, to = %c.to, cause = ?c.cause, reason, "verdict");
                        metrics.population.count_change(c);
                    }
                }
            }
            outputs.clear();
            return;
        }
        std::thread::sleep(backoff);
        backoff = (backoff * 2).min(Duration::from_secs(5));
        // a Redis that comes back may have come back empty
        if !redis_done && store.server_restarted().unwrap_or(false) {
            tracing::warn!("Redis restarted: writing every current verdict again");
            metrics.resyncs.inc();
            scorer.resync_all();
            outputs.extend(scorer.take().0);
        }
    }
}

fn wall_now() -> roost_engine::Timestamp {
    let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    roost_engine::Timestamp(d.as_millis() as i64)
}

/// Resolves once `stop` is set.
pub async fn stopped(stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn to_writes(outputs: &[Output]) -> Vec<Write> {
    let mut w = Vec::new();
    for o in outputs {
        match o {
            Output::Change { change, now, .. } => w.push(Write {
                record: VerdictRecord::from_change(change),
                now: *now,
                announce: true,
                samples: change.samples.clone(),
            }),
            Output::Resync { verdicts, shadow, now, .. } => w.extend(
                verdicts.iter().map(|x| (x, false)).chain(shadow.iter().map(|x| (x, true))).map(|(x, shadow)| Write {
                    record: VerdictRecord { shadow, ..VerdictRecord::from_explanation(x) },
                    now: *now,
                    announce: false,
                    samples: Vec::new(),
                }),
            ),
        }
    }
    w
}

fn stats(consumer: &GroupConsumer, scorer: &Scorer, metrics: &ScorerMetrics) {
    let positions = scorer.positions();
    metrics.partitions.set(positions.len() as i64);
    metrics.lag.clear();
    for (p, lag) in consumer.lag() {
        metrics.lag.get_or_create(&PartitionLabel { partition: p.to_string() }).set(lag);
    }
    let mut all = roost_engine::Aggregates::default();
    let mut tracked = 0u64;
    for e in scorer.engines() {
        all.merge(&e.aggregates(e.now()));
        tracked += e.tracked() as u64;
    }
    metrics.population.set_population(&all);
    metrics.population.set_evidence_totals(scorer.engines().map(|e| &e.stats().evidence_by_source));
    metrics.tracked.set(tracked as i64);
}
