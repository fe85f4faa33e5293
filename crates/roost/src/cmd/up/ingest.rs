//! `roost up`'s pipeline: one thread per log source (follow the files, detect the format, parse)
//! handing batches over a bounded channel to the one scorer thread that owns the engine — so a
//! slow scorer slows reading rather than growing memory — which also expires verdicts by the
//! wall clock each second and refreshes the population metrics.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender};
use std::time::{Duration, Instant};

use roost_engine::RequestEvent;
use roost_ingest::tail::Tail;
use roost_logformat::{ErrorLogEvent, FormatKind, Line, Parser};

use super::state::{Appliance, KindLabel, record};
use crate::config::LogSource;
use crate::runtime;

/// Lines per batch handed from a tail to the scorer.
pub const BATCH: usize = 1024;

/// What a log line gave the scorer.
pub enum Ingested {
    Request(RequestEvent<'static>),
    Error(ErrorLogEvent<'static>),
}

impl Ingested {
    fn time(&self) -> roost_engine::Timestamp {
        match self {
            Ingested::Request(r) => r.time,
            Ingested::Error(e) => e.time,
        }
    }
}

/// Follows one log source (already opened, its first rescan done) until the shutdown.
pub fn tail_loop(src: LogSource, mut tail: Tail, poll: Duration, tx: SyncSender<Vec<Ingested>>, sh: Arc<Appliance>) {
    let mut parser: Option<Parser> = match src.format.format {
        FormatKind::Auto => None,
        _ => match Parser::from_config(&src.format) {
            Ok(p) => Some(p),
            Err(e) => {
                tracing::error!(path = %src.path, error = %e, "bad log format; not following this log");
                return;
            }
        },
    };
    let mut errors_logged = 0u64;
    let mut last_scan = Instant::now(); // the caller scanned first
    tracing::info!(path = %src.path, format = ?src.format.format, "following log");
    while !sh.shutdown.is_stopping() {
        if last_scan.elapsed() >= Duration::from_secs(5) {
            tail.rescan();
            last_scan = Instant::now();
        }
        let mut batch = Vec::new();
        let mut handle = |parser: &Parser, line: &str, batch: &mut Vec<Ingested>| match parser.parse_line(line) {
            Ok(Line::Request(ev)) => batch.push(Ingested::Request(ev.into_owned())),
            Ok(Line::Error(ev)) => batch.push(Ingested::Error(ev.into_owned())),
            Ok(Line::Unjudged) => {
                sh.metrics.unjudged_lines.inc();
            }
            Err(e) => {
                sh.metrics.parse_errors.get_or_create(&KindLabel { kind: e.kind.label().to_owned() }).inc();
                errors_logged += 1;
                if errors_logged <= 10 || errors_logged.is_power_of_two() {
                    let shown: String = line.chars().take(160).collect();
                    tracing::warn!(path = %src.path, error = %e, line = %shown, count = errors_logged, "malformed log line");
                }
            }
        };
        // until the format is known, the lines of this read wait for it
        let mut undetected: Vec<String> = Vec::new();
        let stats = tail.poll(&mut |_, raw| {
            let line = String::from_utf8_lossy(raw);
            match &parser {
                Some(p) => handle(p, &line, &mut batch),
                None => undetected.push(line.into_owned()),
            }
            if batch.len() >= BATCH {
                let _ = tx.send(std::mem::take(&mut batch));
            }
        });
        if !undetected.is_empty() {
            let p = crate::logs::detect_or_combined(&src.path, undetected.iter().map(String::as_str));
            for l in &undetected {
                handle(&p, l, &mut batch);
            }
            parser = Some(p);
        }
        sh.metrics.lines.inc_by(stats.lines);
        sh.metrics.rotations.inc_by(stats.rotations + stats.truncations);
        if !batch.is_empty() && tx.send(batch).is_err() {
            return;
        }
        if stats.lines == 0 {
            std::thread::sleep(poll);
        }
    }
}

/// Scores what the tails hand over, and once a second expires verdicts by the wall clock
/// (the demo's own time while it replays) and refreshes the population metrics.
pub fn scorer_loop(rx: Receiver<Vec<Ingested>>, sh: Arc<Appliance>) {
    let mut last_tick = Instant::now();
    let mut ticks = 0u64;
    loop {
        match rx.recv_timeout(Duration::from_secs(1)) {
            Ok(batch) => {
                let mut changes = Vec::new();
                {
                    let mut engine = sh.engine.lock().expect("engine lock");
                    for ev in &batch {
                        // the one expiry policy, as `roost replay`'s: verdicts lapse as event time passes
                        engine.advance(ev.time(), &mut changes);
                        match ev {
                            Ingested::Request(r) => engine.observe(r, &mut changes),
                            Ingested::Error(e) => {
                                sh.metrics
                                    .error_events
                                    .get_or_create(&KindLabel { kind: e.kind.label().to_owned() })
                                    .inc();
                                engine.observe_error(e, &mut changes)
                            }
                        }
                    }
                }
                let requests = batch.iter().filter(|e| matches!(e, Ingested::Request(_))).count();
                sh.metrics.events.inc_by(requests as u64);
                record(&sh, changes);
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        if sh.shutdown.is_stopping() {
            return;
        }
        if last_tick.elapsed() >= Duration::from_secs(1) {
            last_tick = Instant::now();
            ticks += 1;
            let changes = {
                let mut engine = sh.engine.lock().expect("engine lock");
                let now = if sh.demo_running.load(std::sync::atomic::Ordering::Relaxed) {
                    engine.now()
                } else {
                    runtime::wall_now().max(engine.now())
                };
                let mut changes = Vec::new();
                engine.expire(now, &mut changes);
                // a rule reload may have put a rule into shadow mode, or the last one out of it
                sh.builder.refresh_candidate(&mut engine);
                if ticks.is_multiple_of(60) {
                    let forgotten = engine.sweep(now);
                    tracing::debug!(forgotten, tracked = engine.tracked(), "swept idle clients");
                }
                if ticks.is_multiple_of(2) {
                    sh.verdicts.lock().expect("verdicts lock").sweep(now);
                    if let Some(c) = sh.cache.get() {
                        c.sweep(now.0);
                    }
                }
                if ticks.is_multiple_of(5) || ticks == 1 {
                    sh.metrics.population.set_population(&engine.aggregates(now));
                    sh.metrics.population.set_evidence_totals([&engine.stats().evidence_by_source]);
                }
                changes
            };
            record(&sh, changes);
        }
    }
}
