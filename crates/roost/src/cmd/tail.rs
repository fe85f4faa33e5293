//! `roost tail`: follows the configured access logs and publishes every line to Kafka, parsed
//! at the edge: request events to the requests topic keyed by client, lines that do not parse
//! to the dead-letter topic with their source.
//!
//! At-least-once, nothing lost: a batch of lines is sent (idempotent producer, `acks=all`, no
//! delivery timeout: while Kafka is away the batch waits and reading pauses), and only once
//! every line of it is acknowledged are the files' positions checkpointed (atomically, synced).
//! Killed at any moment, a restart resends only what of the batch in flight did not reach Kafka:
//! every record carries its line's origin (`"origin"`: host, file, inode, offset), the
//! checkpoint records each partition's offset, and the restart reads back what lies beyond.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use roost_ingest::checkpoint::Checkpoint;
use roost_ingest::tail::{LineAt, Position, Start, Tail};
use roost_kafka::OutRecord;
use roost_logformat::{FormatKind, Line, Parser};
use roost_wire::requests::{DeadLetter, Origin, encode_error_from, encode_request_from, origin_of, subject_key};

use crate::config::{Config, LogSource, LogStart};
use crate::runtime::{self, Shutdown};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: String,
}

#[derive(Default)]
struct Metrics {
    lines: Counter,
    events: Counter,
    parse_errors: Family<KindLabel, Counter>,
    unjudged: Counter,
    rotations: Counter,
    lost_rotations: Counter,
    cut: Counter,
    checkpoints: Counter,
    send_errors: Counter,
    read_back: Counter,
    deduplicated: Counter,
}

impl Metrics {
    fn register(&self, r: &mut Registry) {
        r.register("roost_tail_lines", "Log lines read", self.lines.clone());
        r.register(
            "roost_tail_events",
            "Request and error-log events published to the requests topic",
            self.events.clone(),
        );
        r.register(
            "roost_tail_unjudged_lines",
            "Error-log lines about nothing roost judges (not published)",
            self.unjudged.clone(),
        );
        r.register(
            "roost_tail_parse_errors",
            "Lines that did not parse (sent to the dead-letter topic), by kind",
            self.parse_errors.clone(),
        );
        r.register("roost_tail_rotations", "Log rotations and truncations followed", self.rotations.clone());
        r.register(
            "roost_tail_lost_rotations",
            "Files that rotated away while roost tail was stopped and could not be found again",
            self.lost_rotations.clone(),
        );
        r.register("roost_tail_cut_lines", "Lines longer than 64 KiB, cut", self.cut.clone());
        r.register(
            "roost_tail_checkpoints",
            "Positions checkpointed after Kafka acknowledged",
            self.checkpoints.clone(),
        );
        r.register(
            "roost_tail_send_errors",
            "Batches Kafka refused (resent from the checkpoint)",
            self.send_errors.clone(),
        );
    }
}

struct Source {
    cfg: LogSource,
    tail: Tail,
    parser: Option<Parser>,
}

pub fn run(cfg: Config) -> anyhow::Result<()> {
    anyhow::ensure!(cfg.kafka.enabled(), "roost tail publishes to Kafka: set kafka.brokers");
    anyhow::ensure!(!cfg.logs.is_empty(), "no logs configured ([[logs]] path = …)");
    let t = &cfg.tail;
    if let Some(dir) = t.checkpoint.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let rt = runtime::tokio(1)?;
    let shutdown = Shutdown::on_signals(&rt)?;
    let listener = rt.block_on(runtime::bind(t.listen))?;
    roost_kafka::ensure_topic(&cfg.kafka, &cfg.kafka.topics.requests, cfg.score.partitions, false)?;
    roost_kafka::ensure_topic(&cfg.kafka, &cfg.kafka.topics.deadletter, 1, false)?;
    let metrics = Arc::new(Metrics::default());
    let mut registry = Registry::default();
    metrics.register(&mut registry);
    rt.block_on(async {
        let server =
            runtime::serve("roost tail: /metrics", listener, runtime::metrics_router(Arc::new(registry)), &shutdown);
        let r = pump(&cfg, &metrics, &shutdown.flag()).await;
        shutdown.stop();
        let _ = server.await;
        r
    })
}

async fn pump(cfg: &Config, m: &Metrics, stop: &AtomicBool) -> anyhow::Result<()> {
    let t = &cfg.tail;
    let topics = [cfg.kafka.topics.requests.clone(), cfg.kafka.topics.deadletter.clone()];
    let producer = roost_kafka::Producer::with(
        &cfg.kafka,
        "roost-tail",
        // no delivery timeout: while Kafka is down the batch waits (and reading pauses)
        &[("linger.ms", "1"), ("message.timeout.ms", "0"), ("compression.type", "lz4")],
    )?;
    let saved = Checkpoint::load(&t.checkpoint)?;
    let fresh = saved.is_none();
    let saved = saved.unwrap_or_default();
    tracing::info!(checkpoint = %t.checkpoint.display(), files = saved.files.len(), "roost tail starting");
    let host = runtime::hostname();
    // Where each partition stood at the last checkpoint; partitions never written to start at
    // their end now. Whatever lies beyond is the batch that was in flight (or other hosts').
    let mut kafka_next = saved.kafka.clone();
    for topic in &topics {
        let ends = roost_kafka::TopicFollower::new(&cfg.kafka, topic, "roost-tail-ends").and_then(|f| f.ends());
        match ends {
            Ok(ends) => {
                let next = kafka_next.entry(topic.clone()).or_default();
                for (p, end) in ends {
                    next.entry(p).or_insert(end);
                }
            }
            // without them a kill may cost duplicates in partitions not written yet; no loss
            Err(e) => tracing::warn!(%topic, error = %e, "cannot read the partitions' ends"),
        }
    }
    let mut delivered = if fresh { HashSet::new() } else { read_back(cfg, &host, &saved.kafka, m) };
    let start = if fresh && t.start == LogStart::End { Start::End } else { Start::Beginning };
    let mut sources = Vec::new();
    for src in &cfg.logs {
        let parser = match src.format.format {
            FormatKind::Auto => None,
            _ => Some(Parser::from_config(&src.format)?),
        };
        let tail = Tail::resume(&src.path, start, saved.files.clone())
            .map_err(|e| anyhow::anyhow!("log path {:?} is not a valid glob: {e}", src.path))?;
        sources.push(Source { cfg: src.clone(), tail, parser });
    }
    for s in &mut sources {
        s.tail.rescan();
    }
    let checkpoint = |files: &BTreeMap<PathBuf, Position>, kafka: &BTreeMap<String, BTreeMap<i32, i64>>| {
        let mut c = Checkpoint::new(files.clone());
        c.kafka = kafka.clone();
        c.store(&t.checkpoint)
    };
    let mut last = positions(&sources);
    checkpoint(&last, &kafka_next)?;
    let v6 = cfg.engine.ipv6_prefix;
    let mut last_scan = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        if last_scan.elapsed() >= Duration::from_secs(1) {
            last_scan = Instant::now();
            for s in &mut sources {
                s.tail.rescan();
            }
        }
        let mut requests: Vec<OutRecord> = Vec::new();
        let mut dead: Vec<OutRecord> = Vec::new();
        for s in &mut sources {
            let mut lines: Vec<(PathBuf, LineAt, Vec<u8>)> = Vec::new();
            let st = s.tail.poll_lines(t.batch_bytes, &mut |p, at, l| lines.push((p.to_owned(), at, l.to_vec())));
            m.lines.inc_by(st.lines);
            m.rotations.inc_by(st.rotations + st.truncations);
            m.lost_rotations.inc_by(st.lost_rotations);
            m.cut.inc_by(st.cut);
            if lines.is_empty() {
                continue;
            }
            let parser = s.parser.get_or_insert_with(|| detect(&s.cfg, &lines));
            for (path, at, raw) in &lines {
                let path = path.display().to_string();
                let origin = Origin {
                    host: host.clone(),
                    file: path.clone(),
                    dev: at.file.dev,
                    ino: at.file.ino,
                    offset: at.offset,
                };
                if !delivered.is_empty() && delivered.remove(&origin) {
                    m.deduplicated.inc(); // written by the batch in flight when the last run ended
                    continue;
                }
                let line = String::from_utf8_lossy(raw);
                match parser.parse_line(&line) {
                    Ok(Line::Request(ev)) => requests.push(OutRecord {
                        key: subject_key(ev.client, v6).into_bytes(),
                        value: Some(encode_request_from(&ev, Some(&origin))),
                    }),
                    Ok(Line::Error(ev)) => requests.push(OutRecord {
                        key: subject_key(ev.client, v6).into_bytes(),
                        value: Some(encode_error_from(&ev, Some(&origin))),
                    }),
                    Ok(Line::Unjudged) => {
                        m.unjudged.inc();
                    }
                    Err(e) => {
                        m.parse_errors.get_or_create(&KindLabel { kind: e.kind.label().into() }).inc();
                        let d = DeadLetter {
                            v: 1,
                            host: host.clone(),
                            file: path.clone(),
                            kind: e.kind.label().into(),
                            error: e.to_string(),
                            line: line.into_owned(),
                            origin: Some(origin.to_string()),
                        };
                        dead.push(OutRecord { key: path.into_bytes(), value: Some(serde_json::to_vec(&d)?) });
                    }
                }
            }
        }
        let now = positions(&sources);
        if requests.is_empty() && dead.is_empty() {
            if now != last {
                checkpoint(&now, &kafka_next)?;
                last = now;
            }
            tokio::time::sleep(t.poll_interval).await;
            continue;
        }
        let n_req = requests.len();
        let sending = async {
            tokio::try_join!(producer.send_batch(&topics[0], &requests), producer.send_batch(&topics[1], &dead))
        };
        let sent = tokio::select! {
            r = sending => r,
            // stopping while Kafka is away: the batch is not checkpointed, so it is read again
            _ = roost_scorer::run::stopped(stop) => break,
        };
        let (req_next, dead_next) = match sent {
            Ok(n) => n,
            Err(e) => {
                // Fatal for this process (no delivery timeout: only a refusal gets here). Exiting
                // without checkpointing means the batch is read and sent again after a restart.
                m.send_errors.inc();
                return Err(e).context("Kafka refused a batch; positions not checkpointed");
            }
        };
        for (topic, next) in [(&topics[0], req_next), (&topics[1], dead_next)] {
            let known = kafka_next.entry(topic.clone()).or_default();
            for (p, o) in next {
                let e = known.entry(p).or_insert(o);
                *e = (*e).max(o);
            }
        }
        m.events.inc_by(n_req as u64);
        checkpoint(&now, &kafka_next)?;
        m.checkpoints.inc();
        last = now;
    }
    tracing::info!("roost tail stopping");
    Ok(())
}

/// The lines of this host written after the checkpointed partition offsets: the batch that was
/// in flight when the last run ended, at most. Bounded (records and time); past the bounds the
/// rest of that batch is simply sent again (duplicates, never a loss).
fn read_back(cfg: &Config, host: &str, from: &BTreeMap<String, BTreeMap<i32, i64>>, m: &Metrics) -> HashSet<Origin> {
    const MAX_RECORDS: usize = 2_000_000;
    let mut out = HashSet::new();
    for (topic, start) in from {
        let follower = match roost_kafka::TopicFollower::from(&cfg.kafka, topic, "roost-tail-readback", start) {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(%topic, error = %e, "cannot read back the last batch; it may be sent twice");
                continue;
            }
        };
        let mut n = 0usize;
        let r = follower.read_to_end(Duration::from_secs(60), |r| {
            n += 1;
            if n <= MAX_RECORDS
                && let Some(o) = r.value.as_deref().and_then(origin_of)
                && o.host == host
            {
                out.insert(o);
            }
        });
        if let Err(e) = r {
            tracing::warn!(%topic, error = %e, "reading back the last batch; part of it may be sent twice");
        }
        if n > MAX_RECORDS {
            tracing::warn!(%topic, records = n, "more written since the checkpoint than read back; part of the last batch may be sent twice");
        }
    }
    m.read_back.inc_by(out.len() as u64);
    if !out.is_empty() {
        tracing::info!(lines = out.len(), "lines of the last batch already in Kafka: not sent again");
    }
    out
}

fn positions(sources: &[Source]) -> BTreeMap<PathBuf, Position> {
    sources.iter().flat_map(|s| s.tail.positions()).collect()
}

/// The parser for an `auto` source, from the first lines read (`crate::logs`).
fn detect(src: &LogSource, lines: &[(PathBuf, LineAt, Vec<u8>)]) -> Parser {
    let head: Vec<String> = lines
        .iter()
        .filter(|(_, _, l)| !l.trim_ascii().is_empty())
        .take(roost_logformat::DETECT_LINES)
        .map(|(_, _, l)| String::from_utf8_lossy(l).into_owned())
        .collect();
    crate::logs::detect_or_combined(&src.path, head.iter().map(String::as_str))
}
