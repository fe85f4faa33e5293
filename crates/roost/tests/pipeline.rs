//! The distributed Chicken end to end, with real parts on loopback: `roost tail` publishing to a
//! Kafka-protocol broker (tansu), `roost score` instances in a consumer group writing verdicts to
//! Redis (redis-server) and the verdicts topic. Processes are killed with SIGKILL, brokers and
//! Redis stopped and restarted; nothing may be lost and the verdicts must equal `roost replay`'s.
//!
//! The shared broker and Redis come from scripts/services.sh (ROOST_TEST_KAFKA, ROOST_TEST_REDIS,
//! ROOST_TEST_TANSU); tests that stop a server start their own on a free port.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

mod common;

use common::*;
use roost_kafka::{KafkaConfig, TopicFollower};
use roost_verdicts::{RedisConfig, Store};

/// Topic and group names of one test, and the config file that uses them.
struct Setup {
    dir: tempfile::TempDir,
    brokers: String,
    requests: String,
    deadletter: String,
    verdicts: String,
    group: String,
    redis_url: String,
    redis_prefix: String,
    /// Scorers join as static members named after their config (`score.instance`).
    static_members: bool,
    /// `tail.batch_bytes`, when not the default.
    batch_bytes: Option<u64>,
}

impl Setup {
    fn new(name: &str) -> Setup {
        Setup {
            dir: tempfile::tempdir().unwrap(),
            brokers: kafka(),
            requests: unique(&format!("{name}-requests")),
            deadletter: unique(&format!("{name}-deadletter")),
            verdicts: unique(&format!("{name}-verdicts")),
            group: unique(&format!("{name}-score")),
            redis_url: redis(),
            redis_prefix: format!("{}:", unique(name)),
            static_members: false,
            batch_bytes: None,
        }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    /// A config for one process; `logs` are the paths `roost tail` follows.
    fn config(&self, name: &str, logs: &[&str], metrics_port: u16) -> PathBuf {
        let mut t = format!(
            "[kafka]\nbrokers = \"{b}\"\n[kafka.topics]\nrequests = \"{r}\"\ndeadletter = \"{d}\"\nverdicts = \"{v}\"\n\
             overrides = \"{o}\"\nfeeds = \"{f}\"\n\n[redis]\nurl = \"{ru}\"\nprefix = \"{rp}\"\n\n\
             [tail]\ncheckpoint = \"{cp}\"\nstart = \"beginning\"\npoll_interval = \"50ms\"\nlisten = \"127.0.0.1:{port}\"\n\n\
             [score]\ngroup = \"{g}\"\ninstance = \"{inst}\"\npartitions = 4\nlisten = \"127.0.0.1:{port}\"\n\n",
            b = self.brokers,
            r = self.requests,
            d = self.deadletter,
            v = self.verdicts,
            o = self.requests.replace("requests", "overrides"),
            f = self.requests.replace("requests", "feeds"),
            ru = self.redis_url,
            rp = self.redis_prefix,
            cp = self.path("tail.json").display(),
            g = self.group,
            port = metrics_port,
            inst = if self.static_members { name } else { "" },
        );
        if let Some(b) = self.batch_bytes {
            t = t.replace("[tail]\n", &format!("[tail]\nbatch_bytes = {b}\n"));
        }
        for l in logs {
            t.push_str(&format!("[[logs]]\npath = \"{}\"\nformat = \"combined\"\n\n", self.path(l).display()));
        }
        let p = self.path(&format!("{name}.toml"));
        std::fs::write(&p, t).unwrap();
        p
    }

    fn kafka_cfg(&self) -> KafkaConfig {
        KafkaConfig { brokers: self.brokers.clone(), ..Default::default() }
    }

    fn store(&self) -> Store {
        Store::new(&RedisConfig {
            url: self.redis_url.clone(),
            prefix: self.redis_prefix.clone(),
            ..Default::default()
        })
        .unwrap()
    }
}

// ---------------------------------------------------------------------------------------------
// roost tail: nothing lost through rotation, SIGKILL and a broker outage

/// Line `i` of file `f`: a combined-format line whose path names both, so the topic can be
/// counted by content.
fn numbered_line(f: u8, i: u64) -> String {
    let t = 1_764_064_800 + (i / 1000) as i64;
    let sod = t.rem_euclid(86_400);
    let ip = format!("10.{}.{}.{}", f, (i >> 8) & 255, i & 255);
    format!(
        "{ip} - - [25/Nov/2025:{:02}:{:02}:{:02} +0000] \"GET /item/{f}/{i} HTTP/1.1\" 200 512 \"-\" \"Mozilla/5.0 (X11; Linux x86_64)\"\n",
        sod / 3600,
        sod / 60 % 60,
        sod % 60
    )
}

/// Shifts `p.1` → `p.2` → … (keeping 5), as logrotate does.
fn shift(p: &Path) {
    for n in (1..5).rev() {
        let from = PathBuf::from(format!("{}.{n}", p.display()));
        if from.exists() {
            std::fs::rename(&from, format!("{}.{}", p.display(), n + 1)).unwrap();
        }
    }
}

/// Writes `per_file` numbered lines to each of a.log (rotated by rename-and-create) and b.log
/// (rotated by copytruncate), rotating each every `rotate_every` lines, at about `rate` lines/s
/// in all, plus `malformed` lines that do not parse. `progress` counts lines written.
fn write_logs(dir: &Path, per_file: u64, rotate_every: u64, rate: u64, malformed: u64, progress: &AtomicU64) {
    let a = dir.join("a.log");
    let b = dir.join("b.log");
    let open = |p: &Path| std::fs::OpenOptions::new().create(true).append(true).open(p).unwrap();
    let (mut fa, mut fb) = (open(&a), open(&b));
    let chunk = 500;
    let started = Instant::now();
    let mut i = 0;
    while i < per_file {
        let n = chunk.min(per_file - i);
        let mut buf_a = String::new();
        let mut buf_b = String::new();
        for k in i..i + n {
            buf_a.push_str(&numbered_line(0, k));
            buf_b.push_str(&numbered_line(1, k));
            if malformed > 0 && k % (per_file / malformed).max(1) == 0 && k / (per_file / malformed).max(1) < malformed
            {
                buf_b.push_str(&format!("this is not an access log line #{k}\n"));
            }
        }
        fa.write_all(buf_a.as_bytes()).unwrap();
        fb.write_all(buf_b.as_bytes()).unwrap();
        i += n;
        progress.store(i * 2, Ordering::Relaxed);
        if i % rotate_every == 0 && i < per_file {
            // rename-and-create: the server keeps writing the old file until it reopens
            shift(&a);
            std::fs::rename(&a, dir.join("a.log.1")).unwrap();
            fa.write_all(b"").unwrap();
            fa = open(&a);
            // copytruncate: copy aside, truncate in place; the server's descriptor stays
            shift(&b);
            std::fs::copy(&b, dir.join("b.log.1")).unwrap();
            fb.set_len(0).unwrap();
        }
        // pace the writer
        let due = Duration::from_secs_f64((i * 2) as f64 / rate as f64);
        if let Some(wait) = due.checked_sub(started.elapsed()) {
            std::thread::sleep(wait);
        }
    }
}

/// Counts what reached the requests topic by content: per (file, line) how many copies.
struct Census {
    follower: TopicFollower,
    seen: [Vec<u8>; 2],
    unique: u64,
    dups: u64,
    other: u64,
}

impl Census {
    fn new(cfg: &KafkaConfig, topic: &str, per_file: u64) -> Census {
        let follower = TopicFollower::new(cfg, topic, &unique("census")).unwrap();
        Census {
            follower,
            seen: [vec![0; per_file as usize], vec![0; per_file as usize]],
            unique: 0,
            dups: 0,
            other: 0,
        }
    }

    /// Reads until `want` distinct lines arrived and then nothing more for a second (or `limit`).
    fn read(&mut self, want: u64, limit: Duration) {
        let deadline = Instant::now() + limit;
        let mut quiet_since = Instant::now();
        while Instant::now() < deadline {
            match self.follower.poll(Duration::from_millis(200)).unwrap() {
                Some(r) => {
                    quiet_since = Instant::now();
                    let ev = roost_wire::requests::decode_request(r.value.as_deref().unwrap()).unwrap();
                    let mut it = ev.path.trim_start_matches("/item/").split('/');
                    match (
                        it.next().and_then(|f| f.parse::<usize>().ok()),
                        it.next().and_then(|i| i.parse::<usize>().ok()),
                    ) {
                        (Some(f), Some(i)) if f < 2 && i < self.seen[f].len() => {
                            let n = &mut self.seen[f][i];
                            if *n == 0 {
                                self.unique += 1;
                            } else {
                                self.dups += 1;
                            }
                            *n = n.saturating_add(1);
                        }
                        _ => self.other += 1,
                    }
                }
                None if self.unique >= want && quiet_since.elapsed() > Duration::from_secs(1) => return,
                None => {}
            }
        }
    }

    /// Runs of lines that never arrived: (file, first, last), at most 10.
    fn missing(&self) -> Vec<(usize, usize, usize)> {
        self.runs(|n| n == 0)
    }

    /// Runs of lines that arrived more than once.
    fn duplicated(&self) -> Vec<(usize, usize, usize)> {
        self.runs(|n| n > 1)
    }

    fn runs(&self, pick: impl Fn(u8) -> bool) -> Vec<(usize, usize, usize)> {
        let mut out = Vec::new();
        for (f, v) in self.seen.iter().enumerate() {
            let mut i = 0;
            while i < v.len() && out.len() < 10 {
                if pick(v[i]) {
                    let start = i;
                    while i < v.len() && pick(v[i]) {
                        i += 1;
                    }
                    out.push((f, start, i - 1));
                }
                i += 1;
            }
        }
        out
    }
}

#[test]
fn tail_loses_nothing_through_rotations_and_two_sigkills() {
    const PER_FILE: u64 = 500_000;
    const MALFORMED: u64 = 20;
    let s = Setup::new("tail-kill");
    let cfg = s.config("tail", &["a.log", "b.log"], free_port());
    let progress = Arc::new(AtomicU64::new(0));
    let writer = {
        let (dir, progress) = (s.dir.path().to_owned(), progress.clone());
        std::thread::spawn(move || write_logs(&dir, PER_FILE, 100_000, 50_000, MALFORMED, &progress))
    };
    let mut tail = Proc::roost("tail#1", &cfg, "tail");
    for (n, at) in [(2, 300_000), (3, 650_000)] {
        wait_for(Duration::from_secs(120), "the writer to get on", || progress.load(Ordering::Relaxed) >= at);
        assert!(tail.running(), "roost tail died by itself");
        tail.sigkill();
        std::thread::sleep(Duration::from_millis(700)); // lines (and maybe a rotation) meanwhile
        tail = Proc::roost(&format!("tail#{n}"), &cfg, "tail");
    }
    writer.join().unwrap();
    let mut census = Census::new(&s.kafka_cfg(), &s.requests, PER_FILE);
    census.read(2 * PER_FILE, Duration::from_secs(240));
    eprintln!("[test] unique {} duplicates {} other {}", census.unique, census.dups, census.other);
    assert_eq!(census.unique, 2 * PER_FILE, "lines lost: (file, first, last) {:?}", census.missing());
    assert_eq!(census.other, 0);
    assert!(
        census.dups * 1000 < 2 * PER_FILE,
        "{} duplicates: 0.1 % or more; (file, first, last): {:?}",
        census.dups,
        census.duplicated()
    );
    // the lines that did not parse went to the dead-letter topic, with their source
    let mut dead = Vec::new();
    roost_kafka::read_to_end(&s.kafka_cfg(), &s.deadletter, Duration::from_secs(60), |r| {
        dead.push(serde_json::from_slice::<roost_wire::requests::DeadLetter>(r.value.as_deref().unwrap()).unwrap())
    })
    .unwrap();
    let mut lines: Vec<&str> = dead.iter().map(|d| d.line.as_str()).collect();
    lines.sort_unstable();
    lines.dedup();
    assert_eq!(lines.len() as u64, MALFORMED, "{lines:?}");
    assert!(dead.iter().all(|d| d.file.ends_with("b.log") && d.line.starts_with("this is not") && !d.kind.is_empty()));
    assert!(tail.running());
}

#[test]
fn tail_waits_out_a_stopped_broker_with_bounded_memory_and_loses_nothing() {
    const PER_FILE: u64 = 40_000;
    let mut s = Setup::new("tail-outage");
    // tansu's sqlite storage reads large record batches slowly; the outage is what is tested here
    s.batch_bytes = Some(128 * 1024);
    let port = free_port();
    s.brokers = format!("127.0.0.1:{port}");
    let broker_dir = s.path("broker");
    std::fs::create_dir_all(&broker_dir).unwrap();
    let mut broker = Some(own_broker(&broker_dir, port));
    let cfg = s.config("tail", &["a.log", "b.log"], free_port());
    let progress = Arc::new(AtomicU64::new(0));
    let writer = {
        let (dir, progress) = (s.dir.path().to_owned(), progress.clone());
        // 40 s of writing at 2k lines/s; the broker is away for 30 s of it
        std::thread::spawn(move || write_logs(&dir, PER_FILE, 20_000, 2_000, 0, &progress))
    };
    let tail = Proc::roost("tail", &cfg, "tail");
    wait_for(Duration::from_secs(60), "the writer to get on", || progress.load(Ordering::Relaxed) >= 10_000);
    eprintln!("[test] stopping the broker for 30 s");
    broker.take().unwrap().sigkill();
    std::thread::sleep(Duration::from_secs(5));
    let rss_early = tail.rss_kib();
    std::thread::sleep(Duration::from_secs(25));
    let rss_late = tail.rss_kib();
    let written_meanwhile = progress.load(Ordering::Relaxed);
    eprintln!(
        "[test] tail RSS {rss_early} KiB → {rss_late} KiB while the broker was away ({written_meanwhile} lines written by then)"
    );
    broker = Some(own_broker(&broker_dir, port));
    writer.join().unwrap();
    let mut census = Census::new(&s.kafka_cfg(), &s.requests, PER_FILE);
    census.read(2 * PER_FILE, Duration::from_secs(240));
    eprintln!("[test] unique {} duplicates {}", census.unique, census.dups);
    assert_eq!(census.unique, 2 * PER_FILE, "lines lost: (file, first, last) {:?}", census.missing());
    // 25 s of lines at 2k/s is 50k lines, 4.5 MB of log: none of it was held in memory
    assert!(rss_late < rss_early + 4 * 1024, "memory grew from {rss_early} KiB to {rss_late} KiB during the outage");
    assert!(rss_late < 128 * 1024, "{rss_late} KiB");
    drop(broker);
}

// ---------------------------------------------------------------------------------------------
// roost score: restarts, rebalances and a Redis restart end with replay's verdicts

/// A generated log (`roost generate`) of about `lines` lines, with attackers.
fn generate(s: &Setup, lines: u64) -> PathBuf {
    let full = s.path("generated.log");
    let out = Command::new(env!("CARGO_BIN_EXE_roost"))
        .args(["generate", "--lines", &lines.to_string(), "--out"])
        .arg(&full)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    full
}

/// Appends `src` to `dst` gradually (in 100 pieces over about `over`), so that the pipeline is
/// mid-stream while processes are killed; `progress` is the percentage written.
fn feed_gradually(src: &Path, dst: &Path, over: Duration, done: &AtomicBool, progress: &AtomicU64) {
    let text = std::fs::read(src).unwrap();
    let lines: Vec<&[u8]> = text.split_inclusive(|b| *b == b'\n').collect();
    let chunks = 100;
    let per = lines.len().div_ceil(chunks);
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(dst).unwrap();
    for (n, c) in lines.chunks(per).enumerate() {
        f.write_all(&c.concat()).unwrap();
        progress.store(((n + 1) * 100 / chunks) as u64, Ordering::Relaxed);
        std::thread::sleep(over / chunks as u32);
    }
    done.store(true, Ordering::Relaxed);
}

/// `roost replay`'s non-good verdicts for `log`, by subject.
fn replay_verdicts(cfg: &Path, log: &Path) -> BTreeMap<String, String> {
    let out_file = log.with_extension("verdicts.jsonl");
    let out = Command::new(env!("CARGO_BIN_EXE_roost"))
        .arg("--config")
        .arg(cfg)
        .args(["replay", "--format", "combined", "-o"])
        .arg(&out_file)
        .arg(log)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut m = BTreeMap::new();
    for l in std::fs::read_to_string(&out_file).unwrap().lines() {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        let verdict = v["verdict"].as_str().unwrap();
        if verdict != "good" {
            m.insert(v["ip"].as_str().unwrap().to_owned(), verdict.to_owned());
        }
    }
    m
}

fn redis_verdicts(store: &mut Store) -> Option<BTreeMap<String, String>> {
    let all = store.load_all().ok()?;
    Some(all.into_iter().map(|(k, v)| (k, v.verdict.to_string())).collect())
}

/// Waits until Redis holds exactly `want`; on timeout, fails showing the difference.
fn converge(store: &mut Store, want: &BTreeMap<String, String>, limit: Duration) {
    let deadline = Instant::now() + limit;
    let mut got = BTreeMap::new();
    while Instant::now() < deadline {
        if let Some(g) = redis_verdicts(store) {
            if &g == want {
                return;
            }
            got = g;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let missing: Vec<_> = want.iter().filter(|(k, v)| got.get(*k) != Some(v)).take(10).collect();
    let extra: Vec<_> = got.iter().filter(|(k, v)| want.get(*k) != Some(v)).take(10).collect();
    panic!(
        "Redis never matched replay: {} expected, {} held; expected but not held (first 10) {missing:?}; held but not expected {extra:?}",
        want.len(),
        got.len()
    );
}

#[test]
fn a_scorer_killed_and_restarted_mid_stream_ends_with_replays_verdicts() {
    let mut s = Setup::new("score-restart");
    s.static_members = true; // the restarted scorer takes its old place back
    let log = generate(&s, 150_000);
    let tail_cfg = s.config("tail", &["access.log"], free_port());
    let score_port = free_port();
    let score_cfg = s.config("score", &[], score_port);
    let want = replay_verdicts(&score_cfg, &log);
    assert!(want.len() > 20, "the generated log has attackers: {}", want.len());
    let (done, progress) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
    let feeder = {
        let (src, dst, done, progress) = (log.clone(), s.path("access.log"), done.clone(), progress.clone());
        std::thread::spawn(move || feed_gradually(&src, &dst, Duration::from_secs(15), &done, &progress))
    };
    let _tail = Proc::roost("tail", &tail_cfg, "tail");
    let scorer = Proc::roost("score#1", &score_cfg, "score");
    wait_for(Duration::from_secs(60), "some verdicts in Redis", || {
        progress.load(Ordering::Relaxed) >= 40
            && metric(score_port, "roost_score_commits_total").unwrap_or(0.0) > 0.0
            && redis_verdicts(&mut s.store()).is_some_and(|v| !v.is_empty())
    });
    scorer.sigkill();
    std::thread::sleep(Duration::from_secs(1));
    let mut scorer = Proc::roost("score#2", &score_cfg, "score");
    feeder.join().unwrap();
    converge(&mut s.store(), &want, Duration::from_secs(120));
    assert!(scorer.running());
    let rebuilt = metric(score_port, "roost_score_rebuilt_events_total").unwrap_or(0.0);
    assert!(rebuilt > 0.0, "the restarted scorer rebuilt its state from the committed offsets");
    // the population metrics the alerting rules read
    wait_for(Duration::from_secs(20), "population metrics", || {
        metric(score_port, "roost_reputation_weight").unwrap_or(0.0) > 0.0
            && metric(score_port, "roost_evidence_total").unwrap_or(0.0) > 0.0
            && metric(score_port, "roost_reputation_clients").unwrap_or(0.0) > 0.0
    });
    let body = common::http_get(score_port, "/metrics").unwrap();
    assert!(body.contains("roost_reputation_sum{by=\"request\"}"), "{body}");
    assert!(body.contains("roost_evidence_total{kind=\"rule\",source=\"R-"), "{body}");
    // the verdicts topic has a record for every verdict in Redis (compacted: last one wins)
    let mut topic: HashMap<String, String> = HashMap::new();
    roost_kafka::read_to_end(&s.kafka_cfg(), &s.verdicts, Duration::from_secs(60), |r| {
        let v: serde_json::Value = serde_json::from_slice(r.value.as_deref().unwrap()).unwrap();
        assert_eq!(v["v"], 1);
        topic.insert(String::from_utf8(r.key).unwrap(), v["to"].as_str().unwrap().to_owned());
    })
    .unwrap();
    let flagged: BTreeMap<String, String> = topic.into_iter().filter(|(_, v)| v != "good").collect();
    assert_eq!(flagged, want, "the verdicts topic's last word per client is replay's verdict");
}

#[test]
fn two_scorers_share_the_partitions_and_one_takes_over_when_the_other_dies() {
    let s = Setup::new("score-pair");
    let log = generate(&s, 150_000);
    let tail_cfg = s.config("tail", &["access.log"], free_port());
    let (port_a, port_b) = (free_port(), free_port());
    let cfg_a = s.config("score-a", &[], port_a);
    let cfg_b = s.config("score-b", &[], port_b);
    let want = replay_verdicts(&cfg_a, &log);
    let a = Proc::roost("score-a", &cfg_a, "score");
    let mut b = Proc::roost("score-b", &cfg_b, "score");
    let owned = |port| metric(port, "roost_score_partitions").unwrap_or(0.0);
    wait_for(Duration::from_secs(60), "both scorers to own partitions", || {
        owned(port_a) > 0.0 && owned(port_b) > 0.0 && owned(port_a) + owned(port_b) == 4.0
    });
    let (done, progress) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
    let feeder = {
        let (src, dst, done, progress) = (log.clone(), s.path("access.log"), done.clone(), progress.clone());
        std::thread::spawn(move || feed_gradually(&src, &dst, Duration::from_secs(20), &done, &progress))
    };
    let _tail = Proc::roost("tail", &tail_cfg, "tail");
    wait_for(Duration::from_secs(60), "half the log", || progress.load(Ordering::Relaxed) >= 50);
    let before = owned(port_b);
    a.sigkill();
    wait_for(Duration::from_secs(60), "the survivor to take every partition", || owned(port_b) == 4.0);
    eprintln!("[test] score-b owned {before} partitions, now 4");
    feeder.join().unwrap();
    converge(&mut s.store(), &want, Duration::from_secs(120));
    assert!(b.running());
    assert!(metric(port_b, "roost_score_rebuilt_events_total").unwrap_or(0.0) > 0.0);
}

/// A redis-server of the test's own (no persistence: a restart comes back empty).
fn own_redis(dir: &Path, port: u16) -> Proc {
    let mut c = Command::new("redis-server");
    c.args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir"]).arg(dir);
    let p = Proc::spawn("redis", c);
    wait_for(Duration::from_secs(20), "redis to listen", || TcpStream::connect(("127.0.0.1", port)).is_ok());
    p
}

#[test]
fn a_redis_restart_gets_every_verdict_rewritten_and_nothing_crashes() {
    let mut s = Setup::new("redis-restart");
    let port = free_port();
    s.redis_url = format!("redis://127.0.0.1:{port}");
    let redis = own_redis(s.dir.path(), port);
    let log = generate(&s, 100_000);
    let tail_cfg = s.config("tail", &["access.log"], free_port());
    let score_port = free_port();
    let score_cfg = s.config("score", &[], score_port);
    let want = replay_verdicts(&score_cfg, &log);
    let (done, progress) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
    let feeder = {
        let (src, dst, done, progress) = (log.clone(), s.path("access.log"), done.clone(), progress.clone());
        std::thread::spawn(move || feed_gradually(&src, &dst, Duration::from_secs(12), &done, &progress))
    };
    let _tail = Proc::roost("tail", &tail_cfg, "tail");
    let mut scorer = Proc::roost("score", &score_cfg, "score");
    wait_for(Duration::from_secs(60), "verdicts in Redis", || {
        progress.load(Ordering::Relaxed) >= 40 && redis_verdicts(&mut s.store()).is_some_and(|v| v.len() > 5)
    });
    redis.sigkill();
    std::thread::sleep(Duration::from_secs(3)); // the scorer's writes fail meanwhile
    let _redis = own_redis(s.dir.path(), port);
    feeder.join().unwrap();
    converge(&mut s.store(), &want, Duration::from_secs(120));
    assert!(scorer.running(), "the scorer survived Redis going away");
    assert!(metric(score_port, "roost_score_redis_resyncs_total").unwrap_or(0.0) >= 1.0);
}

// ---------------------------------------------------------------------------------------------
// roost score: rule files edited while it runs

/// The verdict and reasons Redis holds for `ip`.
fn redis_verdict(store: &mut Store, ip: &str) -> Option<(String, String)> {
    let all = store.load_all().ok()?;
    all.get(ip).map(|v| (v.verdict.to_string(), v.reasons.join("; ")))
}

#[test]
fn a_scorer_takes_edited_rules_up_without_a_restart_and_reloads_on_sighup() {
    let s = Setup::new("score-rules");
    let rules = s.path("rules");
    std::fs::create_dir(&rules).unwrap();
    std::fs::write(rules.join("site.toml"), RULES_V1).unwrap();
    let tail_cfg = s.config("tail", &["access.log"], free_port());
    let port = free_port();
    let score_cfg = s.config("score", &[], port);
    append(&score_cfg, &format!("[rules]\ndir = \"{}\"\n", rules.display()));
    let log = s.path("access.log");
    append(&log, &clf_line("198.51.100.31", "GET", "/probe-a", 404, "curl/8", unix_now()));
    let _tail = Proc::roost("tail", &tail_cfg, "tail");
    let mut scorer = Proc::roost("score", &score_cfg, "score");
    let reloads = |outcome: &str| metric(port, &format!("roost_rule_reloads_total{{outcome=\"{outcome}\"}}"));
    wait_for(Duration::from_secs(60), "T-1 to challenge its prober", || {
        redis_verdict(&mut s.store(), "198.51.100.31").is_some_and(|(v, r)| v == "dubious" && r.contains("T-1"))
    });
    assert_eq!(metric(port, "roost_rules"), Some(2.0));

    // a rule added: in force without a restart, for every partition
    replace(&rules.join("site.toml"), &format!("{RULES_V1}{RULE_T2}"));
    wait_for(Duration::from_secs(10), "the reload", || reloads("ok") == Some(1.0));
    assert_eq!(metric(port, "roost_rules"), Some(3.0));
    for ip in ["198.51.100.32", "198.51.100.33", "198.51.100.34", "198.51.100.35"] {
        append(&log, &clf_line(ip, "GET", "/probe-b", 404, "curl/8", unix_now()));
    }
    wait_for(Duration::from_secs(30), "T-2 to challenge its probers", || {
        let mut store = s.store();
        ["198.51.100.32", "198.51.100.33", "198.51.100.34", "198.51.100.35"].iter().all(|ip| {
            redis_verdict(&mut store, ip)
                .is_some_and(|(v, r)| v == "dubious" && r.contains("T-2") && r.contains("(3 rules)"))
        })
    });

    // a broken edit is refused and the rules in force stay; mending it is taken up
    replace(&rules.join("broken.toml"), "[[rule]]\nid = \"X\"\nmatch.path = ['(']\n");
    wait_for(Duration::from_secs(10), "the refusal", || reloads("refused") == Some(1.0));
    assert_eq!(metric(port, "roost_rules"), Some(3.0));
    std::fs::remove_file(rules.join("broken.toml")).unwrap();
    wait_for(Duration::from_secs(10), "the mended set", || reloads("ok") == Some(2.0));

    // SIGHUP reloads at once, and does not stop the scorer
    assert!(Command::new("kill").args(["-HUP", &scorer.pid().to_string()]).status().unwrap().success());
    wait_for(Duration::from_secs(10), "the reload SIGHUP asked for", || reloads("ok") == Some(3.0));
    assert!(scorer.running(), "SIGHUP does not stop roost score");
}

/// An nginx error log through the pipeline: `roost tail` publishes what it says of each client,
/// `roost score` judges it, and Redis ends with `roost replay`'s verdicts for the same file.
#[test]
fn an_error_log_through_tail_and_score_ends_with_replays_verdicts() {
    let s = Setup::new("errorlog");
    let t = unix_now() - 1;
    let mut text = String::new();
    for _ in 0..6 {
        for (ip, msg) in ERROR_LOG_CASES {
            text.push_str(&nginx_error_line(ip, msg, t));
        }
    }
    text.push_str("2026/03/03 10:02:01 [notice] 1#1: signal process started\n");
    std::fs::write(s.path("error.log"), &text).unwrap();
    let tail_port = free_port();
    let tail_cfg = s.config("tail", &["error.log"], tail_port);
    let cfg_text = std::fs::read_to_string(&tail_cfg).unwrap().replace("format = \"combined\"", "format = \"auto\"");
    std::fs::write(&tail_cfg, cfg_text).unwrap();
    let score_cfg = s.config("score", &[], free_port());
    let out = s.path("replayed.jsonl");
    let o = Command::new(env!("CARGO_BIN_EXE_roost"))
        .arg("--config")
        .arg(&score_cfg)
        .args(["replay", "-o"])
        .arg(&out)
        .arg(s.path("error.log"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let want: BTreeMap<String, String> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["verdict"] != "good")
        .map(|v| (v["ip"].as_str().unwrap().to_owned(), v["verdict"].as_str().unwrap().to_owned()))
        .collect();
    assert_eq!(want.len(), ERROR_LOG_CASES.len(), "replay flags every client the error log names: {want:?}");
    let _tail = Proc::roost("tail", &tail_cfg, "tail");
    let _score = Proc::roost("score", &score_cfg, "score");
    converge(&mut s.store(), &want, Duration::from_secs(90));
    let published = metric(tail_port, "roost_tail_events_total").expect("roost_tail_events_total");
    assert_eq!(published, (ERROR_LOG_CASES.len() * 6) as f64);
    assert_eq!(metric(tail_port, "roost_tail_unjudged_lines_total"), Some(1.0));
    // the reasons in Redis quote the server's messages
    let all = s.store().load_all().unwrap();
    for (ip, msg) in ERROR_LOG_CASES {
        let words = &msg[..msg.len().min(20)];
        assert!(format!("{:?}", all[ip]).contains(&words.replace('"', "\\\"")), "{ip}: {:?}", all[ip]);
    }
}

/// A record dated 49 days ahead (a router's uptime counter wrapped, a forged or mis-clocked log
/// line) ends nothing early: `roost score` takes it as dated now (plus `score.max_clock_skew`),
/// counts it, and the verdict of the client it names stays in force in Redis, with its expiry
/// where it was, after a later ordinary record through the same partition.
#[test]
fn a_future_dated_record_ends_no_verdict_early() {
    let s = Setup::new("future");
    let tail_cfg = s.config("tail", &["access.log"], free_port());
    let port = free_port();
    let score_cfg = s.config("score", &[], port);
    let log = s.path("access.log");
    let ip = "198.51.100.51";
    let now = unix_now();
    for p in
        ["/.env", "/.git/config", "/phpmyadmin/", "/backup.sql", "/admin.php", "/server-status", "/wp-config.php.bak"]
    {
        append(&log, &clf_line(ip, "GET", p, 404, "scanner", now));
    }
    let _tail = Proc::roost("tail", &tail_cfg, "tail");
    let _score = Proc::roost("score", &score_cfg, "score");
    let verdict = |store: &mut Store| store.load_all().ok().and_then(|all| all.get(ip).cloned());
    let mut store = s.store();
    wait_for(Duration::from_secs(60), "the prober's verdict", || {
        verdict(&mut store).is_some_and(|v| v.verdict.as_str() == "bad")
    });
    let before = verdict(&mut store).unwrap();
    assert_eq!(metric(port, "roost_score_clamped_times_total"), Some(0.0));

    // the same client (so the same partition), 49 days ahead; then an ordinary line after it
    append(&log, &clf_line(ip, "GET", "/", 200, "scanner", now + 49 * 86_400));
    wait_for(Duration::from_secs(30), "the future-dated record to be taken as now", || {
        metric(port, "roost_score_clamped_times_total") == Some(1.0)
    });
    append(&log, &clf_line(ip, "GET", "/index.html", 200, "scanner", unix_now()));
    wait_for(Duration::from_secs(30), "the ordinary record after it", || {
        metric(port, "roost_score_events_total").is_some_and(|n| n >= 9.0)
    });
    std::thread::sleep(Duration::from_secs(2));
    let after = verdict(&mut store).expect("the verdict is still in Redis");
    assert_eq!(after.verdict.as_str(), "bad", "{after:?}");
    assert_eq!(after.expires, before.expires, "the verdict's expiry moved: {before:?} → {after:?}");
    assert_eq!(metric(port, "roost_score_clamped_times_total"), Some(1.0));
}
