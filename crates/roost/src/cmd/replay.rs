//! `roost replay`: run access logs through the engine offline and say what would be blocked,
//! and why. Same input, same output: time comes only from the log.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use roost_engine::{Class, Judge, Reason, Timestamp, VerdictChange};
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
        let mut line_no = 0u64;
        let framed = matches!(parser, Parser::Syslog(_));
        let mut handle =
            |line: &str, line_no: u64, engine: &mut Judge, malformed: &mut Malformed| -> anyhow::Result<()> {
                if framed && let Some(f) = roost_logformat::syslog::frame(line) {
                    let sender = format!("{}/{}", f.host.unwrap_or("-"), f.program.unwrap_or("-"));
                    if senders.len() < MAX_SENDERS || senders.contains_key(&sender) {
                        *senders.entry(sender).or_default() += 1;
                    }
                }
                match parser.parse_line(line) {
                    Ok(Line::Request(ev)) => {
                        engine.advance(ev.time, &mut out_buf);
                        engine.observe(&ev, &mut out_buf);
                        for c in out_buf.drain(..) {
                            record(c, &mut changes_out)?;
                        }
                    }
                    Ok(Line::Error(ev)) => {
                        error_events += 1;
                        engine.advance(ev.time, &mut out_buf);
                        engine.observe_error(&ev, &mut out_buf);
                        for c in out_buf.drain(..) {
                            record(c, &mut changes_out)?;
                        }
                    }
                    Ok(Line::Unjudged) => unjudged += 1,
                    Err(e) => malformed.add(path, line_no, e.kind, e.to_string(), line),
                }
                Ok(())
            };
        for l in &head {
            line_no += 1;
            handle(l, line_no, &mut engine, &mut malformed)?;
        }
        if !head_done {
            loop {
                buf.clear();
                if reader.read_until(b'\n', &mut buf).with_context(|| format!("reading {}", path.display()))? == 0 {
                    break;
                }
                line_no += 1;
                let raw = trim_newline(&buf);
                match std::str::from_utf8(raw) {
                    Ok(s) => handle(s, line_no, &mut engine, &mut malformed)?,
                    Err(_) => handle(&String::from_utf8_lossy(raw), line_no, &mut engine, &mut malformed)?,
                }
            }
        }
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
