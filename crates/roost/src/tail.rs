//! `roost tail`: follows the configured access logs and publishes every line to Kafka, parsed
//! at the edge: request events to the requests topic keyed by client, lines that do not parse
//! to the dead-letter topic with their source.
//!
//! At-least-once, nothing lost: a batch of lines is sent (idempotent producer, `acks=all`, no
//! delivery timeout: while Kafka is away the batch waits and reading pauses), and only once
//! every line of it is acknowledged are the files' positions checkpointed (atomically, synced).
//! Killed at any moment, a restart resends at most the one batch that was in flight.

use std::collections::BTreeMap;
use std::net::SocketAddr;
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
use roost_ingest::tail::{Position, Start, Tail};
use roost_logformat::{FormatKind, Parser};
use roost_scorer::wire::{DeadLetter, encode_request, subject_key};
use serde::{Deserialize, Serialize};

use crate::config::{Config, LogSource, LogStart};

/// The `[tail]` config section.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TailConfig {
    /// Where reading positions are kept.
    pub checkpoint: PathBuf,
    /// Files that exist at the first start (no checkpoint yet) are read from their `end` or
    /// `beginning`; files that appear later are always read whole.
    pub start: LogStart,
    /// How often files are checked for new lines.
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// Bytes read from each file per batch, about (one batch is in flight at a time).
    pub batch_bytes: u64,
    /// Where /metrics listens.
    pub listen: SocketAddr,
}

impl Default for TailConfig {
    fn default() -> Self {
        TailConfig {
            checkpoint: PathBuf::from("/var/lib/roost/tail.json"),
            start: LogStart::End,
            poll_interval: Duration::from_millis(100),
            batch_bytes: 128 * 1024,
            listen: "127.0.0.1:9753".parse().expect("valid"),
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: String,
}

#[derive(Default)]
struct Metrics {
    lines: Counter,
    events: Counter,
    parse_errors: Family<KindLabel, Counter>,
    rotations: Counter,
    lost_rotations: Counter,
    cut: Counter,
    checkpoints: Counter,
    send_errors: Counter,
}

impl Metrics {
    fn register(&self, r: &mut Registry) {
        r.register("roost_tail_lines", "Access-log lines read", self.lines.clone());
        r.register("roost_tail_events", "Request events published to the requests topic", self.events.clone());
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

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into())
}

pub fn run(cfg: Config) -> anyhow::Result<()> {
    anyhow::ensure!(cfg.kafka.enabled(), "roost tail publishes to Kafka: set kafka.brokers");
    anyhow::ensure!(!cfg.logs.is_empty(), "no logs configured ([[logs]] path = …)");
    let t = &cfg.tail;
    if let Some(dir) = t.checkpoint.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    roost_kafka::ensure_topic(&cfg.kafka, &cfg.kafka.topics.requests, cfg.score.partitions, false)?;
    roost_kafka::ensure_topic(&cfg.kafka, &cfg.kafka.topics.deadletter, 1, false)?;
    let metrics = Arc::new(Metrics::default());
    let mut registry = Registry::default();
    metrics.register(&mut registry);
    let stop = Arc::new(AtomicBool::new(false));
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    let listen = t.listen;
    let registry = Arc::new(registry);
    rt.spawn(async move {
        let app = axum::Router::new()
            .route("/healthz", axum::routing::get(|| async { "ok\n" }))
            .route("/metrics", axum::routing::get(move || std::future::ready(crate::up::encode_metrics(&registry))));
        match tokio::net::TcpListener::bind(listen).await {
            Ok(l) => {
                tracing::info!("roost tail: /metrics on http://{listen}");
                let _ = axum::serve(l, app).await;
            }
            Err(e) => tracing::error!(error = %e, %listen, "cannot serve /metrics"),
        }
    });
    {
        let stop = stop.clone();
        rt.spawn(async move {
            crate::up::shutdown_signal().await;
            stop.store(true, Ordering::Relaxed);
        });
    }
    rt.block_on(pump(&cfg, &metrics, &stop))
}

async fn pump(cfg: &Config, m: &Metrics, stop: &AtomicBool) -> anyhow::Result<()> {
    let t = &cfg.tail;
    let producer = roost_kafka::Producer::with(
        &cfg.kafka,
        "roost-tail",
        // no delivery timeout: while Kafka is down the batch waits (and reading pauses)
        &[("linger.ms", "2"), ("message.timeout.ms", "0"), ("compression.type", "lz4")],
    )?;
    let saved = Checkpoint::load(&t.checkpoint)?;
    let fresh = saved.is_none();
    let saved = saved.map(|c| c.files).unwrap_or_default();
    tracing::info!(checkpoint = %t.checkpoint.display(), files = saved.len(), "roost tail starting");
    let start = if fresh && t.start == LogStart::End { Start::End } else { Start::Beginning };
    let mut sources = Vec::new();
    for src in &cfg.logs {
        let parser = match src.format.format {
            FormatKind::Auto => None,
            _ => Some(Parser::from_config(&src.format)?),
        };
        let tail = Tail::resume(&src.path, start, saved.clone())
            .map_err(|e| anyhow::anyhow!("log path {:?} is not a valid glob: {e}", src.path))?;
        sources.push(Source { cfg: src.clone(), tail, parser });
    }
    for s in &mut sources {
        s.tail.rescan();
    }
    let mut last = positions(&sources);
    Checkpoint::new(last.clone()).store(&t.checkpoint)?;
    let host = hostname();
    let v6 = cfg.engine.ipv6_prefix;
    let mut last_scan = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        if last_scan.elapsed() >= Duration::from_secs(1) {
            last_scan = Instant::now();
            for s in &mut sources {
                s.tail.rescan();
            }
        }
        let mut requests: Vec<(Vec<u8>, Option<Vec<u8>>)> = Vec::new();
        let mut dead: Vec<(Vec<u8>, Option<Vec<u8>>)> = Vec::new();
        for s in &mut sources {
            let mut lines: Vec<(PathBuf, Vec<u8>)> = Vec::new();
            let st = s.tail.poll_max(t.batch_bytes, &mut |p, l| lines.push((p.to_owned(), l.to_vec())));
            m.lines.inc_by(st.lines);
            m.rotations.inc_by(st.rotations + st.truncations);
            m.lost_rotations.inc_by(st.lost_rotations);
            m.cut.inc_by(st.cut);
            if lines.is_empty() {
                continue;
            }
            let parser = s.parser.get_or_insert_with(|| detect(&s.cfg, &lines));
            for (path, raw) in &lines {
                let line = String::from_utf8_lossy(raw);
                match parser.parse(&line) {
                    Ok(ev) => requests.push((subject_key(ev.client, v6).into_bytes(), Some(encode_request(&ev)))),
                    Err(e) => {
                        m.parse_errors.get_or_create(&KindLabel { kind: e.kind.label().into() }).inc();
                        let d = DeadLetter {
                            v: 1,
                            host: host.clone(),
                            file: path.display().to_string(),
                            kind: e.kind.label().into(),
                            error: e.to_string(),
                            line: line.into_owned(),
                        };
                        dead.push((d.file.clone().into_bytes(), Some(serde_json::to_vec(&d)?)));
                    }
                }
            }
        }
        let now = positions(&sources);
        if requests.is_empty() && dead.is_empty() {
            if now != last {
                Checkpoint::new(now.clone()).store(&t.checkpoint)?;
                last = now;
            }
            tokio::time::sleep(t.poll_interval).await;
            continue;
        }
        let (n_req, _n_dead) = (requests.len(), dead.len());
        let sending = async {
            tokio::try_join!(
                producer.send_all(&cfg.kafka.topics.requests, requests),
                producer.send_all(&cfg.kafka.topics.deadletter, dead)
            )
        };
        let sent = tokio::select! {
            r = sending => r,
            // stopping while Kafka is away: the batch is not checkpointed, so it is read again
            _ = roost_scorer::run::stopped(stop) => break,
        };
        if let Err(e) = sent {
            // Fatal for this process (no delivery timeout: only a refusal gets here). Exiting
            // without checkpointing means the batch is read and sent again after a restart.
            m.send_errors.inc();
            return Err(e).context("Kafka refused a batch; positions not checkpointed");
        }
        m.events.inc_by(n_req as u64);
        Checkpoint::new(now.clone()).store(&t.checkpoint)?;
        m.checkpoints.inc();
        last = now;
    }
    tracing::info!("roost tail stopping");
    Ok(())
}

fn positions(sources: &[Source]) -> BTreeMap<PathBuf, Position> {
    sources.iter().flat_map(|s| s.tail.positions()).collect()
}

/// The parser for an `auto` source, from the first lines read.
fn detect(src: &LogSource, lines: &[(PathBuf, Vec<u8>)]) -> Parser {
    let head: Vec<String> = lines.iter().take(20).map(|(_, l)| String::from_utf8_lossy(l).into_owned()).collect();
    match roost_logformat::detect(head.iter().map(String::as_str)) {
        Some(p) => {
            tracing::info!(path = %src.path, format = p.name(), "detected log format");
            p
        }
        None => {
            tracing::warn!(path = %src.path, "cannot tell the log format; assuming combined (lines that do not parse go to the dead-letter topic)");
            Parser::Clf
        }
    }
}
