//! `roost replay`: run access logs through the engine offline and say what would be blocked,
//! and why. Same input, same output: time comes only from the log.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use roost_engine::{Class, Judge, JudgeStaged, JudgeStager, Reason, Timestamp, VerdictChange};
use roost_logformat::{ErrorKind, Line, LogFormatConfig, Parser};
use serde::Serialize;

use crate::engine::EngineBuilder;

/// What a replay is asked to do.
pub struct ReplayArgs {
    pub files: Vec<PathBuf>,
    pub format: LogFormatConfig,
    pub output: Option<PathBuf>,
    pub changes: Option<PathBuf>,
    /// The engine: rules, feeds and GeoIP/ASN as configured.
    pub engine: EngineBuilder,
    /// `--compare OTHER.toml`: a second configuration run over the same lines (its name, its
    /// engine). Without it, sources in shadow mode get a shadow engine of their own.
    pub compare: Option<(String, EngineBuilder)>,
}

/// The engine a configuration describes, for `roost replay`: its feeds (and `--feed` files),
/// its GeoIP policy, its rules (or `dir`'s, or none).
pub fn builder(
    cfg: &crate::config::Config,
    feed: &[(String, PathBuf)],
    no_rules: bool,
    dir: Option<&Path>,
) -> anyhow::Result<EngineBuilder> {
    let defs = crate::enrich::definitions(&cfg.feeds)?;
    let loaded = crate::enrich::load_local(cfg, &defs, feed)?;
    let enrich = crate::enrich::Enrichment::new(cfg, roost_feeds::local::index(&loaded))?;
    let mut engine = EngineBuilder::new(cfg.engine.clone())?.enrich(enrich);
    if cfg.crawlers.verify {
        // a replay waits for each answer: the same log gives the same verdicts
        engine = engine.crawlers(crate::crawlers::Verifier::new(&cfg.crawlers, false)?);
    }
    if !no_rules {
        let set = crate::ruleset::compile(&cfg.rules, dir)?;
        engine = engine.rules(roost_rules::handle(set), cfg.rules.max_clients);
    }
    Ok(engine)
}

/// A client judged differently by the shadow (or `--compare`) engine: the worst verdict each
/// gave it during the replay, and why.
#[derive(Clone, Debug, Serialize)]
pub struct Difference {
    pub ip: String,
    pub verdict: Class,
    pub other: Class,
    pub reasons: Vec<String>,
    pub other_reasons: Vec<String>,
}

/// One client's line in the output file.
#[derive(Serialize)]
struct IpRecord<'a> {
    ip: String,
    verdict: Class,
    reputation: f64,
    requests: u32,
    reasons: Vec<&'a str>,
    /// The worst verdict the client held during the replay, and when it was first flagged.
    worst: Class,
    #[serde(skip_serializing_if = "Option::is_none")]
    flagged_at: Option<String>,
    /// The reasons at the moment of the worst verdict, when it is not the final one.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    worst_reasons: Vec<&'a str>,
    first_seen: String,
    last_seen: String,
}

/// The worst a client got during the replay.
struct Peak {
    class: Class,
    first_flagged: Timestamp,
    reasons: Vec<Reason>,
}

/// Malformed lines: counts per kind and a few examples.
#[derive(Default)]
pub struct Malformed {
    pub total: u64,
    pub by_kind: BTreeMap<&'static str, u64>,
    pub samples: Vec<String>,
}

const MAX_SAMPLES: usize = 5;

/// Syslog senders (host/program) a replay summary counts lines of, at most.
pub const MAX_SENDERS: usize = 20;

impl Malformed {
    fn add(&mut self, file: &Path, line_no: u64, kind: ErrorKind, msg: String, line: &str) {
        self.total += 1;
        *self.by_kind.entry(kind.label()).or_default() += 1;
        if self.samples.len() < MAX_SAMPLES {
            let shown: String = line.chars().take(160).collect();
            self.samples.push(format!("{}:{line_no}: {msg}: {shown}", file.display()));
        }
    }
}

/// What a replay found, for the summary.
pub struct Summary {
    pub files: usize,
    /// The formats the files were read in (detected or configured), each once, in order.
    pub formats: Vec<&'static str>,
    /// Error-log lines that named a client and what it did wrong.
    pub error_events: u64,
    /// Error-log lines about nothing roost judges.
    pub unjudged: u64,
    /// Syslog-framed lines by sender (`host/program`), at most [`MAX_SENDERS`] senders.
    pub senders: BTreeMap<String, u64>,
    pub lines: u64,
    pub events: u64,
    pub malformed: Malformed,
    pub per_class: [u64; 3],
    pub ever_flagged: u64,
    pub top_reasons: Vec<(String, u64)>,
    pub clients: u64,
    pub allowlisted: u64,
    /// The rule set's version, when rules were used.
    pub rules: Option<String>,
    /// What the second engine was (`shadow sources`, or the `--compare` file), and the clients
    /// whose worst verdict differs, in address order.
    pub compared: Option<String>,
    pub differences: Vec<Difference>,
    pub seconds: f64,
}

fn open(path: &Path) -> anyhow::Result<Box<dyn Read>> {
    if path.as_os_str() == "-" {
        return Ok(Box::new(io::stdin().lock()));
    }
    let f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    if path.extension().is_some_and(|e| e == "gz") {
        Ok(Box::new(flate2::read::MultiGzDecoder::new(f)))
    } else {
        Ok(Box::new(f))
    }
}

/// Picks the parser: the configured one, or a guess from the first lines of the file.
fn parser_for(cfg: &LogFormatConfig, path: &Path, head: &[String]) -> anyhow::Result<Parser> {
    if cfg.format != roost_logformat::FormatKind::Auto {
        return Parser::from_config(cfg).map_err(Into::into);
    }
    roost_logformat::detect(head.iter().map(String::as_str))
        .with_context(|| format!("{} (--format or --log-format say which)", path.display()))
}

/// Lines of one file, read ahead for a worker, and what the worker made of them. Batches (and
/// their buffers) go round: read, parsed, fed to the engine, reset and read into again, so no
/// fresh memory is zeroed for each.
struct Batch {
    first_line: u64,
    lines: usize,
    text: Vec<u8>,
    /// Where each line ends in `text` (after its `\n`, if it has one).
    ends: Vec<usize>,
    /// The lines parsed, in order.
    parsed: Vec<Parsed>,
    /// Syslog senders counted, in order of first appearance.
    senders: Vec<(String, u64)>,
    /// `text` as UTF-8 once a worker has had it (invalid sequences replaced, as a line-by-line
    /// replay would): what parsed requests point into.
    valid: String,
}

/// A parsed line, with the engine's stateless work on it done.
// Requests are nearly every line: boxing them to shrink the rare variants would allocate per line.
#[allow(clippy::large_enum_variant)]
enum Parsed {
    Request(Detached, JudgeStaged),
    Error(roost_event::ErrorLogEvent<'static>),
    Unjudged,
    Malformed { line_no: u64, kind: ErrorKind, msg: String, line: String },
}

/// Text of a parsed request: where it is in its batch's text, or its own (unescaped) copy.
enum Text {
    At(u32, u32),
    Own(Box<str>),
}

impl Text {
    fn of(c: std::borrow::Cow<'_, str>, base: &str) -> Text {
        match c {
            std::borrow::Cow::Borrowed(s) => {
                let at = (s.as_ptr() as usize).wrapping_sub(base.as_ptr() as usize);
                match at.checked_add(s.len()) {
                    Some(end) if end <= base.len() => Text::At(at as u32, end as u32),
                    _ => Text::Own(s.into()),
                }
            }
            std::borrow::Cow::Owned(s) => Text::Own(s.into_boxed_str()),
        }
    }

    fn get<'a>(&'a self, base: &'a str) -> std::borrow::Cow<'a, str> {
        std::borrow::Cow::Borrowed(match self {
            Text::At(a, b) => &base[*a as usize..*b as usize],
            Text::Own(s) => s,
        })
    }
}

/// A request parsed by a worker, its text left where it was (in the batch) rather than copied:
/// allocating and freeing every field cost more than parsing it.
struct Detached {
    time: Timestamp,
    client: std::net::IpAddr,
    status: u16,
    bytes: u64,
    request_time: Option<f32>,
    method: Text,
    path: Text,
    protocol: Text,
    host: Option<Text>,
    query: Option<Text>,
    referer: Option<Text>,
    user_agent: Option<Text>,
}

impl Detached {
    fn of(ev: roost_event::RequestEvent<'_>, base: &str) -> Detached {
        Detached {
            time: ev.time,
            client: ev.client,
            status: ev.status,
            bytes: ev.bytes,
            request_time: ev.request_time,
            method: Text::of(ev.method, base),
            path: Text::of(ev.path, base),
            protocol: Text::of(ev.protocol, base),
            host: ev.host.map(|t| Text::of(t, base)),
            query: ev.query.map(|t| Text::of(t, base)),
            referer: ev.referer.map(|t| Text::of(t, base)),
            user_agent: ev.user_agent.map(|t| Text::of(t, base)),
        }
    }

    fn event<'a>(&'a self, base: &'a str) -> roost_event::RequestEvent<'a> {
        roost_event::RequestEvent {
            time: self.time,
            client: self.client,
            method: self.method.get(base),
            host: self.host.as_ref().map(|t| t.get(base)),
            path: self.path.get(base),
            query: self.query.as_ref().map(|t| t.get(base)),
            protocol: self.protocol.get(base),
            status: self.status,
            bytes: self.bytes,
            request_time: self.request_time,
            referer: self.referer.as_ref().map(|t| t.get(base)),
            user_agent: self.user_agent.as_ref().map(|t| t.get(base)),
        }
    }
}

impl Batch {
    const LINES: usize = 2048;
    const BYTES: usize = 1 << 20;
    /// Batches read ahead of the one the engine is fed, at most.
    const AHEAD: usize = 8;

    fn new(first_line: u64) -> Batch {
        Batch {
            first_line,
            lines: 0,
            text: Vec::with_capacity(Batch::BYTES),
            ends: Vec::with_capacity(Batch::LINES),
            parsed: Vec::with_capacity(Batch::LINES),
            senders: Vec::new(),
            valid: String::new(),
        }
    }

    fn reset(&mut self, first_line: u64) {
        self.first_line = first_line;
        self.lines = 0;
        self.text.clear();
        self.ends.clear();
        self.parsed.clear();
        self.senders.clear();
        self.text = std::mem::take(&mut self.valid).into_bytes();
        self.text.clear();
    }

    fn push(&mut self, line: &[u8]) {
        self.text.extend_from_slice(line);
        self.text.push(b'\n');
        self.ends.push(self.text.len());
        self.lines += 1;
    }

    fn work(mut self, parser: &Parser, stager: &mut JudgeStager, framed: bool) -> Batch {
        let text = std::mem::take(&mut self.text);
        self.valid = match String::from_utf8(text) {
            Ok(s) => s,
            Err(e) => {
                // '\n' never is part of a UTF-8 sequence: the lines stay where they were
                let s = String::from_utf8_lossy(e.as_bytes()).into_owned();
                self.ends.clear();
                self.ends.extend(s.match_indices('\n').map(|(i, _)| i + 1));
                if !s.ends_with('\n') && !s.is_empty() {
                    self.ends.push(s.len());
                }
                s
            }
        };
        let base = self.valid.as_str();
        let mut start = 0;
        for (line_no, &end) in (self.first_line..).zip(&self.ends) {
            let line = base[start..end].strip_suffix('\n').unwrap_or(&base[start..end]);
            let line = line.strip_suffix('\r').unwrap_or(line);
            start = end;
            if framed && let Some(f) = roost_logformat::syslog::frame(line) {
                let (host, program) = (f.host.unwrap_or("-"), f.program.unwrap_or("-"));
                match self.senders.iter_mut().find(|(s, _)| s.split_once('/') == Some((host, program))) {
                    Some((_, n)) => *n += 1,
                    None => self.senders.push((format!("{host}/{program}"), 1)),
                }
            }
            self.parsed.push(match parser.parse_line(line) {
                Ok(Line::Request(ev)) => {
                    let staged = stager.stage(&ev);
                    Parsed::Request(Detached::of(ev, base), staged)
                }
                Ok(Line::Error(ev)) => Parsed::Error(ev.into_owned()),
                Ok(Line::Unjudged) => Parsed::Unjudged,
                Err(e) => Parsed::Malformed {
                    line_no,
                    kind: e.kind,
                    msg: e.to_string(),
                    line: line.chars().take(160).collect(),
                },
            });
        }
        self
    }
}

pub fn run(args: ReplayArgs) -> anyhow::Result<Summary> {
    let started = Instant::now();
    let mut engine = args.engine.judge();
    let compared = match &args.compare {
        Some((name, other)) => {
            engine.set_candidate(Some(other.build()));
            Some(name.clone())
        }
        None => engine.candidate().is_some().then(|| "sources in shadow mode".to_owned()),
    };
    // a run under `mode = "shadow"` reports what it would do: its verdicts are the replay's
    let second = engine.candidate().is_some();
    let mut other_peaks: std::collections::HashMap<ipnetwork::IpNetwork, Peak> = std::collections::HashMap::new();
    let mut out_buf: Vec<VerdictChange> = Vec::new();
    let rules_version = args.engine.rule_set().map(|set| format!("{} ({} rules)", set.version(), set.rules().len()));
    let mut changes_out = match &args.changes {
        Some(p) => Some(BufWriter::new(File::create(p).with_context(|| format!("creating {}", p.display()))?)),
        None => None,
    };
    let mut peaks: std::collections::HashMap<ipnetwork::IpNetwork, Peak> = std::collections::HashMap::new();
    let mut malformed = Malformed::default();
    let mut formats = Vec::new();
    let (mut error_events, mut unjudged) = (0u64, 0u64);
    let mut senders: BTreeMap<String, u64> = BTreeMap::new();
    let mut lines = 0u64;
    let mut record = |c: VerdictChange, out: &mut Option<BufWriter<File>>| -> anyhow::Result<()> {
        if let Some(w) = out {
            serde_json::to_writer(&mut *w, &c)?;
            w.write_all(b"\n")?;
        }
        let peaks = if second && c.shadow { &mut other_peaks } else { &mut peaks };
        if c.to != Class::Good {
            let p = peaks.entry(c.subject).or_insert_with(|| Peak {
                class: Class::Good,
                first_flagged: c.at,
                reasons: Vec::new(),
            });
            if c.to > p.class {
                p.class = c.to;
                p.reasons = c.reasons;
            }
        }
        Ok(())
    };
    for path in &args.files {
        let mut reader = BufReader::with_capacity(1 << 20, open(path)?);
        let mut buf = Vec::with_capacity(4096);
        // Read the head first, to detect the format if asked to.
        let mut head: Vec<String> = Vec::new();
        let mut head_done = false;
        while head.len() < roost_logformat::DETECT_LINES {
            buf.clear();
            if reader.read_until(b'\n', &mut buf).with_context(|| format!("reading {}", path.display()))? == 0 {
                head_done = true;
                break;
            }
            head.push(String::from_utf8_lossy(trim_newline(&buf)).into_owned());
        }
        let parser = parser_for(&args.format, path, &head)?;
        if !formats.contains(&parser.name()) {
            formats.push(parser.name());
        }
        // Lines are parsed, and matched against the rules, by workers (one per core) in
        // batches; this thread reads, and feeds the results to the engine in the log's order.
        let framed = matches!(parser, Parser::Syslog(_));
        let mut feed = |done: &mut Batch, engine: &mut Judge, malformed: &mut Malformed| -> anyhow::Result<()> {
            for (sender, n) in done.senders.drain(..) {
                if senders.len() < MAX_SENDERS || senders.contains_key(&sender) {
                    *senders.entry(sender).or_default() += n;
                }
            }
            let Batch { parsed, valid, .. } = done;
            for p in parsed.iter_mut() {
                match p {
                    Parsed::Request(d, staged) => {
                        engine.advance(d.time, &mut out_buf);
                        engine.observe_staged(&d.event(valid), staged, &mut out_buf);
                    }
                    Parsed::Error(ev) => {
                        error_events += 1;
                        engine.advance(ev.time, &mut out_buf);
                        engine.observe_error(ev, &mut out_buf);
                    }
                    Parsed::Unjudged => unjudged += 1,
                    Parsed::Malformed { line_no, kind, msg, line } => {
                        malformed.add(path, *line_no, *kind, std::mem::take(msg), line)
                    }
                }
                for c in out_buf.drain(..) {
                    record(c, &mut changes_out)?;
                }
            }
            Ok(())
        };
        // Helpers (one per core but this one) parse batches and match them against the rules;
        // this thread reads the batches, feeds the results to the engine in the log's order,
        // and parses a batch itself whenever the next result is not ready.
        let helpers = std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, 8) - 1;
        let mut line_no = 0u64;
        std::thread::scope(|scope| -> anyhow::Result<()> {
            let (jobs, queue) = crossbeam_channel::bounded::<(usize, Batch)>(Batch::AHEAD);
            let (to_main, results) = crossbeam_channel::unbounded::<(usize, Batch)>();
            for _ in 0..helpers {
                let (queue, to_main) = (queue.clone(), to_main.clone());
                let (parser, mut stager) = (parser.clone(), engine.stager());
                scope.spawn(move || {
                    for (seq, batch) in queue {
                        if to_main.send((seq, batch.work(&parser, &mut stager, framed))).is_err() {
                            break;
                        }
                    }
                });
            }
            let mut stager = engine.stager();
            // results by sequence number, from `fed` on; buffers of fed batches, for reuse
            let mut ready: std::collections::VecDeque<Option<Batch>> = std::collections::VecDeque::new();
            let (mut sent, mut fed) = (0usize, 0usize);
            let mut spare: Vec<Batch> = Vec::new();
            let mut batch = Batch::new(1);
            for l in &head {
                batch.push(l.as_bytes());
            }
            let mut at_end = head_done;
            loop {
                // keep the queue full
                while sent - fed < Batch::AHEAD && !(at_end && batch.lines == 0) {
                    while !at_end && batch.lines < Batch::LINES && batch.text.len() < Batch::BYTES {
                        let n = reader
                            .read_until(b'\n', &mut batch.text)
                            .with_context(|| format!("reading {}", path.display()))?;
                        if n == 0 {
                            at_end = true;
                            break;
                        }
                        batch.ends.push(batch.text.len());
                        batch.lines += 1;
                    }
                    if batch.lines == 0 {
                        break;
                    }
                    line_no += batch.lines as u64;
                    let mut next = spare.pop().unwrap_or_else(|| Batch::new(0));
                    next.reset(line_no + 1);
                    jobs.send((sent, std::mem::replace(&mut batch, next))).context("replay helpers stopped")?;
                    ready.push_back(None);
                    sent += 1;
                }
                while let Ok((seq, done)) = results.try_recv() {
                    ready[seq - fed] = Some(done);
                }
                if let Some(Some(_)) = ready.front() {
                    let mut done = ready.pop_front().flatten().expect("looked");
                    fed += 1;
                    feed(&mut done, &mut engine, &mut malformed)?;
                    spare.push(done);
                    continue;
                }
                if fed == sent {
                    break;
                }
                // the next result is not ready: help with the queue, or wait
                match queue.try_recv() {
                    Ok((seq, b)) => ready[seq - fed] = Some(b.work(&parser, &mut stager, framed)),
                    Err(_) => {
                        let (seq, done) = results.recv().context("replay helpers stopped")?;
                        ready[seq - fed] = Some(done);
                    }
                }
            }
            drop(jobs);
            Ok(())
        })?;
        lines += line_no;
    }
    let end = engine.now();
    engine.expire(end, &mut out_buf);
    for c in out_buf.drain(..) {
        record(c, &mut changes_out)?;
    }
    if let Some(mut w) = changes_out {
        w.flush()?;
    }

    let all = engine.explain_all(end);
    let mut per_class = [0u64; 3];
    let mut reason_counts: BTreeMap<String, u64> = BTreeMap::new();
    for x in &all {
        per_class[x.class as usize] += 1;
    }
    for p in peaks.values() {
        // the rule set's version is context, not a reason of its own
        for r in p.reasons.iter().filter(|r| !r.source.ends_with(":version")) {
            *reason_counts.entry(r.source.clone()).or_default() += 1;
        }
    }
    if let Some(out) = &args.output {
        let mut w = BufWriter::new(File::create(out).with_context(|| format!("creating {}", out.display()))?);
        for x in &all {
            let peak = peaks.get(&x.subject);
            let worst = peak.map_or(x.class, |p| p.class.max(x.class));
            let rec = IpRecord {
                ip: subject_name(x.subject),
                verdict: x.class,
                reputation: (x.reputation as f64 * 1000.0).round() / 1000.0 + 0.0,
                requests: x.requests,
                reasons: x.reasons.iter().map(|r| r.text.as_str()).collect(),
                worst,
                flagged_at: peak.map(|p| p.first_flagged.to_string()),
                worst_reasons: match peak {
                    Some(p) if p.class > x.class => p.reasons.iter().map(|r| r.text.as_str()).collect(),
                    _ => Vec::new(),
                },
                first_seen: x.first_seen.to_string(),
                last_seen: x.last_seen.to_string(),
            };
            serde_json::to_writer(&mut w, &rec)?;
            w.write_all(b"\n")?;
        }
        w.flush().with_context(|| format!("writing {}", out.display()))?;
    }
    let mut differences = Vec::new();
    if second {
        let texts = |p: Option<&Peak>| -> Vec<String> {
            p.map(|p| p.reasons.iter().filter(|r| !r.source.ends_with(":version")).map(|r| r.text.clone()).collect())
                .unwrap_or_default()
        };
        let mut subjects: Vec<ipnetwork::IpNetwork> = peaks.keys().chain(other_peaks.keys()).copied().collect();
        subjects.sort_unstable_by_key(|n| (n.ip(), n.prefix()));
        subjects.dedup();
        for s in subjects {
            let (a, b) = (peaks.get(&s), other_peaks.get(&s));
            let (ca, cb) = (a.map_or(Class::Good, |p| p.class), b.map_or(Class::Good, |p| p.class));
            if ca != cb {
                differences.push(Difference {
                    ip: subject_name(s),
                    verdict: ca,
                    other: cb,
                    reasons: texts(a),
                    other_reasons: texts(b),
                });
            }
        }
    }
    let mut top_reasons: Vec<(String, u64)> = reason_counts.into_iter().collect();
    top_reasons.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    top_reasons.truncate(10);
    Ok(Summary {
        files: args.files.len(),
        formats,
        error_events,
        unjudged,
        senders,
        lines,
        events: engine.stats().events,
        malformed,
        per_class,
        ever_flagged: peaks.len() as u64,
        top_reasons,
        clients: all.len() as u64,
        allowlisted: engine.stats().allowlisted,
        rules: rules_version,
        compared,
        differences,
        seconds: started.elapsed().as_secs_f64(),
    })
}

fn trim_newline(b: &[u8]) -> &[u8] {
    let b = b.strip_suffix(b"\n").unwrap_or(b);
    b.strip_suffix(b"\r").unwrap_or(b)
}

/// `203.0.113.7` for a single address, `2001:db8:1:2::/64` for an aggregated prefix.
pub use roost_engine::subject_name;

fn pct(n: u64, of: u64) -> String {
    if of == 0 { "0.0%".into() } else { format!("{:.1}%", n as f64 * 100.0 / of as f64) }
}

impl Summary {
    pub fn print(&self, w: &mut impl Write) -> io::Result<()> {
        let rate = self.lines as f64 / self.seconds.max(1e-9);
        writeln!(
            w,
            "roost replay: {} file(s) ({}), {} lines in {:.2} s ({:.0} lines/s)",
            self.files,
            self.formats.join(", "),
            self.lines,
            self.seconds,
            rate
        )?;
        writeln!(w, "  events      {}  (allowlisted, not judged: {})", self.events, self.allowlisted)?;
        if !self.senders.is_empty() {
            let list: Vec<String> = self.senders.iter().map(|(s, n)| format!("{s} {n}")).collect();
            writeln!(w, "  syslog      lines by sender (host/program): {}", list.join(", "))?;
        }
        if self.error_events + self.unjudged > 0 {
            writeln!(w, "  error log   {} about clients, {} about nothing judged", self.error_events, self.unjudged)?;
        }
        writeln!(w, "  rules       {}", self.rules.as_deref().unwrap_or("none (--no-rules)"))?;
        write!(w, "  malformed   {}", self.malformed.total)?;
        if self.malformed.total > 0 {
            let kinds: Vec<String> = self.malformed.by_kind.iter().map(|(k, n)| format!("{k} {n}")).collect();
            write!(w, "  ({})", kinds.join(", "))?;
        }
        writeln!(w)?;
        let [g, d, b] = self.per_class;
        writeln!(
            w,
            "  clients     {}  good {} ({})  dubious {} ({})  bad {} ({})",
            self.clients,
            g,
            pct(g, self.clients),
            d,
            pct(d, self.clients),
            b,
            pct(b, self.clients)
        )?;
        writeln!(w, "  flagged at some point  {} ({})", self.ever_flagged, pct(self.ever_flagged, self.clients))?;
        if !self.top_reasons.is_empty() {
            writeln!(w, "  top reasons (flagged clients citing them):")?;
            for (r, n) in &self.top_reasons {
                writeln!(w, "    {n:>8}  {r}")?;
            }
        }
        if let Some(other) = &self.compared {
            self.print_differences(w, other)?;
        }
        for s in &self.malformed.samples {
            writeln!(w, "  malformed: {s}")?;
        }
        Ok(())
    }

    /// The backtest: totals by (this verdict → the other's), then every client that differs.
    fn print_differences(&self, w: &mut impl Write, other: &str) -> io::Result<()> {
        let mut by: BTreeMap<(Class, Class), u64> = BTreeMap::new();
        for d in &self.differences {
            *by.entry((d.verdict, d.other)).or_default() += 1;
        }
        let totals: Vec<String> = by.iter().map(|((a, b), n)| format!("{a} → {b} {n}")).collect();
        writeln!(
            w,
            "  compared with {other}: {} client(s) judged differently (worst verdict during the replay){}{}",
            self.differences.len(),
            if totals.is_empty() { "" } else { ": " },
            totals.join(", ")
        )?;
        for d in &self.differences {
            writeln!(w, "    {}  {} → {}", d.ip, d.verdict, d.other)?;
            for r in d.reasons.iter().take(3) {
                writeln!(w, "      this:  {r}")?;
            }
            for r in d.other_reasons.iter().take(3) {
                writeln!(w, "      other: {r}")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The invariant `roost replay`'s workers rest on: a request staged ahead (path class and
    /// rule matches, on another thread) gets exactly the verdicts it gets observed plainly.
    #[test]
    fn staged_requests_get_the_verdicts_plain_ones_do() {
        let mut text = Vec::new();
        let scenario = roost_loggen::Scenario::sized(7, 40_000);
        roost_loggen::generate(&scenario, |r| roost_loggen::write_line(&mut text, r, roost_loggen::Format::Combined))
            .expect("generates");
        let lines: Vec<&str> = std::str::from_utf8(&text).expect("UTF-8").lines().collect();
        let mut cfg = crate::config::Config::default();
        check_staging(&cfg, &lines, false);
        // a rule in shadow: a candidate engine beside the live one, staged too
        cfg.rules.shadow = vec!["R-4004".into()];
        check_staging(&cfg, &lines, true);
    }

    fn check_staging(cfg: &crate::config::Config, lines: &[&str], shadow: bool) {
        let b = builder(cfg, &[], false, None).expect("engine");
        let (mut plain, mut staged) = (b.judge(), b.judge());
        assert_eq!(staged.candidate().is_some(), shadow);
        let mut stager = staged.stager();
        let (mut a, mut c) = (Vec::new(), Vec::new());
        let parser = Parser::Clf;
        for line in lines {
            let Ok(Line::Request(ev)) = parser.parse_line(line) else { panic!("generated lines parse: {line}") };
            plain.advance(ev.time, &mut a);
            plain.observe(&ev, &mut a);
            let st = stager.stage(&ev);
            staged.advance(ev.time, &mut c);
            staged.observe_staged(&ev, &st, &mut c);
        }
        assert_eq!(a.iter().any(|c| c.shadow), shadow);
        let rules =
            |v: &[VerdictChange]| v.iter().filter(|c| c.reasons.iter().any(|r| r.source.starts_with("rule:"))).count();
        assert!(rules(&a) >= 10, "the scenario's attackers set off rules: {}", rules(&a));
        assert_eq!(a.len(), c.len());
        for (x, y) in a.iter().zip(&c) {
            assert_eq!(x, y);
        }
    }
}
