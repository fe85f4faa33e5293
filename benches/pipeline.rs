//! The distributed pipeline measured end to end on this machine: log file → `roost tail` → Kafka
//! broker → `roost score` → Redis. Run by `benches/pipeline.sh`, which starts the broker and
//! Redis (and fail2ban, the peer, in the same run).
//!
//! - throughput: a generated log of `--lines` lines is appended at once to a watched file, then
//!   one probe line; the time until the scorer has scored every line and the probe's verdict is
//!   in Redis (and, with `--fail2ban-banfile`, until fail2ban watching the same file banned the
//!   probe).
//! - detection latency: normal traffic is appended at `--rate` lines/s; every 100 ms one probe
//!   line (an SQL injection from a fresh address, which the rules block at once) is appended, and
//!   the time until its verdict appears on Redis's change stream is recorded (and until fail2ban
//!   banned it, when it watches the same file).
//!
//! Prints one `key value` line per figure.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

struct Args {
    roost: PathBuf,
    kafka: String,
    redis: String,
    dir: PathBuf,
    lines: u64,
    rate: u64,
    seconds: u64,
    /// fail2ban's ban log (`IP EPOCH.NANOS` per ban), when fail2ban watches the same files.
    banfile: Option<PathBuf>,
}

fn args() -> Args {
    let mut a = Args {
        roost: PathBuf::from("target/release/roost"),
        kafka: "127.0.0.1:19092".into(),
        redis: "redis://127.0.0.1:16379".into(),
        dir: std::env::temp_dir().join("roost-pipeline-bench"),
        lines: 1_000_000,
        rate: 10_000,
        seconds: 30,
        banfile: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let v = it.next().unwrap_or_else(|| panic!("{k} needs a value"));
        match k.as_str() {
            "--roost" => a.roost = v.into(),
            "--kafka" => a.kafka = v,
            "--redis" => a.redis = v,
            "--dir" => a.dir = v.into(),
            "--lines" => a.lines = v.parse().expect("--lines N"),
            "--rate" => a.rate = v.parse().expect("--rate N"),
            "--seconds" => a.seconds = v.parse().expect("--seconds N"),
            "--fail2ban-banfile" => a.banfile = Some(v.into()),
            _ => panic!("unknown argument {k}"),
        }
    }
    a
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg("-TERM").arg(self.0.id().to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.0.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn roost(a: &Args, cfg: &Path, sub: &str) -> Proc {
    let log = std::fs::File::create(cfg.with_extension(format!("{sub}.log"))).unwrap();
    Proc(
        Command::new(&a.roost)
            .arg("--config")
            .arg(cfg)
            .arg(sub)
            .env("ROOST_LOG", "info,librdkafka=warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("roost binary (cargo build --release -p roost)"),
    )
}

fn metric(port: u16, name: &str) -> Option<f64> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET /metrics HTTP/1.0\r\n\r\n").ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    let body = body.split_once("\r\n\r\n")?.1;
    let mut found = None;
    for l in body.lines().filter(|l| !l.starts_with('#')) {
        let Some((key, value)) = l.rsplit_once(' ') else { continue };
        if key.split('{').next() == Some(name) {
            *found.get_or_insert(0.0) += value.parse::<f64>().ok()?;
        }
    }
    found
}

fn wait(limit: Duration, what: &str, mut ok: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !ok() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
    start.elapsed()
}

fn stamp() -> String {
    let t = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_millis();
    format!("{}-{t}", std::process::id())
}

/// A config for a run: its own topics, group and Redis prefix.
fn config(a: &Args, run: &str, log: &Path, start: &str, tail_port: u16, score_port: u16) -> (PathBuf, String) {
    let id = format!("bench-{run}-{}", stamp());
    let prefix = format!("{id}:");
    let text = format!(
        "[kafka]\nbrokers = \"{k}\"\n[kafka.topics]\nrequests = \"{id}-requests\"\ndeadletter = \"{id}-dead\"\n\
         verdicts = \"{id}-verdicts\"\noverrides = \"{id}-overrides\"\nfeeds = \"{id}-feeds\"\n\n\
         [redis]\nurl = \"{r}\"\nprefix = \"{prefix}\"\n\n\
         [tail]\ncheckpoint = \"{d}/{id}.tail.json\"\nstart = \"{start}\"\npoll_interval = \"20ms\"\nlisten = \"127.0.0.1:{tail_port}\"\n\n\
         [score]\ngroup = \"{id}\"\ninstance = \"bench\"\npartitions = 4\nlisten = \"127.0.0.1:{score_port}\"\nflush_interval = \"20ms\"\n\n\
         [[logs]]\npath = \"{l}\"\nformat = \"combined\"\n",
        k = a.kafka,
        r = a.redis,
        d = a.dir.display(),
        l = log.display(),
    );
    let p = a.dir.join(format!("{id}.toml"));
    std::fs::write(&p, text).unwrap();
    (p, prefix)
}

/// fail2ban's bans so far: address → when (Unix seconds).
fn bans(file: &Path) -> HashMap<String, f64> {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let (ip, t) = l.split_once(' ')?;
            Some((ip.to_owned(), t.trim().parse().ok()?))
        })
        .collect()
}

fn unix(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs_f64()
}

const PROBE: &str = "/item?id=1%20UNION%20SELECT%20username,password%20FROM%20users";

/// Every line of a generated log appended at once to a watched (empty) file, then one probe
/// line: how long until everything is scored (roost) and until the probe is banned (fail2ban,
/// which reads a file in order, so its ban means every line before was read).
fn throughput(a: &Args) {
    let src = a.dir.join("generated.log");
    if !src.exists() {
        let st = Command::new(&a.roost)
            .args(["generate", "--lines", &a.lines.to_string(), "--out"])
            .arg(&src)
            .status()
            .unwrap();
        assert!(st.success());
    }
    let body = std::fs::read(&src).unwrap();
    let lines = body.iter().filter(|b| **b == b'\n').count() as f64 + 1.0;
    let log = a.dir.join("throughput.log");
    std::fs::OpenOptions::new().create(true).append(true).open(&log).unwrap();
    let (tail_port, score_port) = (free_port(), free_port());
    let (cfg, prefix) = config(a, "tput", &log, "end", tail_port, score_port);
    let score = roost(a, &cfg, "score");
    let _tail = roost(a, &cfg, "tail");
    wait(Duration::from_secs(60), "the scorer to own its partitions", || {
        metric(score_port, "roost_score_partitions").unwrap_or(0.0) >= 4.0
    });
    wait(Duration::from_secs(30), "the tail to be up", || metric(tail_port, "roost_tail_lines_total").is_some());
    let probe_ip = "10.251.0.1";
    let started = Instant::now();
    let t0 = unix(SystemTime::now());
    {
        let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
        for chunk in body.chunks(4 << 20) {
            f.write_all(chunk).unwrap();
        }
        f.write_all(clf(SystemTime::now(), probe_ip, PROBE, 200).as_bytes()).unwrap();
    }
    let written = started.elapsed();
    let mut tail_done = None;
    let mut f2b_done: Option<f64> = None;
    let mut redis = redis::Client::open(a.redis.as_str()).unwrap().get_connection().unwrap();
    let key = format!("{prefix}v:{probe_ip}");
    let mut probe_seen = None;
    wait(Duration::from_secs(900), "every line scored", || {
        if tail_done.is_none() && metric(tail_port, "roost_tail_events_total").unwrap_or(0.0) >= lines {
            tail_done = Some(started.elapsed());
        }
        if probe_seen.is_none() && redis::cmd("EXISTS").arg(&key).query::<i64>(&mut redis).unwrap_or(0) == 1 {
            probe_seen = Some(started.elapsed());
        }
        if let Some(b) = &a.banfile
            && f2b_done.is_none()
        {
            f2b_done = bans(b).get(probe_ip).map(|t| t - t0);
        }
        let roost_done = metric(score_port, "roost_score_events_total").unwrap_or(0.0) >= lines && probe_seen.is_some();
        roost_done && (a.banfile.is_none() || f2b_done.is_some())
    });
    let all = probe_seen.unwrap().max(tail_done.unwrap_or_default());
    println!("throughput_lines {lines}");
    println!("throughput_append_seconds {:.2}", written.as_secs_f64());
    println!("roost_tail_seconds {:.2}", tail_done.unwrap_or(all).as_secs_f64());
    println!("roost_end_to_end_seconds {:.2}", all.as_secs_f64());
    println!("roost_end_to_end_lines_per_s {:.0}", lines / all.as_secs_f64());
    if let Some(t) = f2b_done {
        println!("fail2ban_end_to_end_seconds {t:.2}");
        println!("fail2ban_end_to_end_lines_per_s {:.0}", lines / t);
    }
    // A scorer that takes the partitions over rebuilds their state from the topic.
    drop(score);
    let started = Instant::now();
    let _again = roost(a, &cfg, "score");
    wait(Duration::from_secs(600), "the state rebuilt", || {
        metric(score_port, "roost_score_rebuilt_events_total").unwrap_or(0.0) >= lines - 1.0
    });
    let rebuild = started.elapsed().as_secs_f64();
    println!("rebuild_seconds {rebuild:.2}");
    println!("rebuild_records_per_s {:.0}", lines / rebuild);
}

fn clf(t: SystemTime, ip: &str, target: &str, status: u16) -> String {
    let secs = t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs() as i64;
    let (y, m, d) = civil(secs.div_euclid(86_400));
    let sod = secs.rem_euclid(86_400);
    const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    format!(
        "{ip} - - [{d:02}/{}/{y}:{:02}:{:02}:{:02} +0000] \"GET {target} HTTP/1.1\" {status} 512 \"-\" \"Mozilla/5.0 (X11; Linux x86_64)\"\n",
        MONTHS[m as usize - 1],
        sod / 3600,
        sod / 60 % 60,
        sod % 60
    )
}

fn civil(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + (m <= 2) as i64, m, d)
}

/// Appends normal traffic at `rate` lines/s and a probe every 100 ms to `log` for `seconds`;
/// returns when each probe's line was written, by address.
pub fn drive(log: &Path, rate: u64, seconds: u64, stop: &AtomicBool) -> HashMap<String, (Instant, f64)> {
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
    let mut probes = HashMap::new();
    let started = Instant::now();
    let tick = Duration::from_millis(10);
    let per_tick = (rate / 100).max(1);
    let mut n = 0u64;
    let mut next_probe = started;
    let mut k = 0u64;
    while started.elapsed() < Duration::from_secs(seconds) && !stop.load(Ordering::Relaxed) {
        let now = SystemTime::now();
        let mut buf = String::with_capacity(per_tick as usize * 140);
        for _ in 0..per_tick {
            n += 1;
            let ip = format!("10.1.{}.{}", (n / 250) % 250, n % 250);
            buf.push_str(&clf(now, &ip, &format!("/articles/{}", n % 5000), 200));
        }
        f.write_all(buf.as_bytes()).unwrap();
        if Instant::now() >= next_probe {
            k += 1;
            let ip = format!("10.250.{}.{}", k / 250, k % 250);
            f.write_all(clf(now, &ip, PROBE, 200).as_bytes()).unwrap();
            probes.insert(ip, (Instant::now(), unix(SystemTime::now())));
            next_probe += Duration::from_millis(100);
        }
        let due = tick * ((started.elapsed().as_nanos() / tick.as_nanos()) as u32 + 1);
        if let Some(w) = due.checked_sub(started.elapsed()) {
            std::thread::sleep(w);
        }
    }
    probes
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn latency(a: &Args) {
    let log = a.dir.join("latency.log");
    std::fs::OpenOptions::new().create(true).append(true).open(&log).unwrap();
    let (tail_port, score_port) = (free_port(), free_port());
    let (cfg, prefix) = config(a, "lat", &log, "end", tail_port, score_port);
    let _score = roost(a, &cfg, "score");
    let _tail = roost(a, &cfg, "tail");
    wait(Duration::from_secs(60), "the scorer to own its partitions", || {
        metric(score_port, "roost_score_partitions").unwrap_or(0.0) >= 4.0
    });
    wait(Duration::from_secs(30), "the tail to be up", || metric(tail_port, "roost_tail_lines_total").is_some());
    // watch the change stream proxies follow
    let seen: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (seen, stop, url, stream) = (seen.clone(), stop.clone(), a.redis.clone(), format!("{prefix}changes"));
        std::thread::spawn(move || {
            let client = redis::Client::open(url).unwrap();
            let mut c = client.get_connection().unwrap();
            let mut last = "$".to_owned();
            while !stop.load(Ordering::Relaxed) {
                let reply: redis::Value = redis::cmd("XREAD")
                    .arg("BLOCK")
                    .arg(200)
                    .arg("STREAMS")
                    .arg(&stream)
                    .arg(&last)
                    .query(&mut c)
                    .unwrap();
                let now = Instant::now();
                for (id, subject) in stream_entries(&reply) {
                    last = id;
                    seen.lock().unwrap().entry(subject).or_insert(now);
                }
            }
        })
    };
    let probes = drive(&log, a.rate, a.seconds, &stop);
    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, Ordering::Relaxed);
    reader.join().unwrap();
    let seen = seen.lock().unwrap();
    let mut lat: Vec<f64> = probes
        .iter()
        .filter_map(|(ip, (t0, _))| seen.get(ip).map(|t1| t1.saturating_duration_since(*t0).as_secs_f64() * 1000.0))
        .collect();
    lat.sort_by(|a, b| a.total_cmp(b));
    let events = metric(score_port, "roost_score_events_total").unwrap_or(0.0);
    println!("latency_rate_lines_per_s {}", a.rate);
    println!("latency_lines_scored {events:.0}");
    println!("latency_probes {}", probes.len());
    report("roost", &lat);
    if let Some(b) = &a.banfile {
        let banned = bans(b);
        let mut f2b: Vec<f64> =
            probes.iter().filter_map(|(ip, (_, w))| banned.get(ip).map(|t| (t - w).max(0.0) * 1000.0)).collect();
        f2b.sort_by(|a, b| a.total_cmp(b));
        report("fail2ban", &f2b);
    }
}

fn report(who: &str, lat: &[f64]) {
    println!("{who}_latency_detected {}", lat.len());
    println!("{who}_latency_p50_ms {:.1}", percentile(lat, 50.0));
    println!("{who}_latency_p90_ms {:.1}", percentile(lat, 90.0));
    println!("{who}_latency_p99_ms {:.1}", percentile(lat, 99.0));
    println!("{who}_latency_max_ms {:.1}", lat.last().copied().unwrap_or(f64::NAN));
}

/// (entry id, subject) of every entry in an XREAD reply.
fn stream_entries(v: &redis::Value) -> Vec<(String, String)> {
    use redis::Value::*;
    let mut out = Vec::new();
    let streams = match v {
        Array(s) => s.clone(),
        Map(m) => m.iter().map(|(k, v)| Array(vec![k.clone(), v.clone()])).collect(),
        _ => return out,
    };
    for s in streams {
        let Array(parts) = s else { continue };
        let Some(Array(entries)) = parts.get(1) else { continue };
        for e in entries {
            let Array(e) = e else { continue };
            let (Some(id), Some(Array(fields))) = (e.first(), e.get(1)) else { continue };
            let text = |v: &redis::Value| match v {
                BulkString(b) => String::from_utf8_lossy(b).into_owned(),
                SimpleString(s) => s.clone(),
                _ => String::new(),
            };
            let mut subject = String::new();
            for kv in fields.chunks(2) {
                if kv.len() == 2 && text(&kv[0]) == "subject" {
                    subject = text(&kv[1]);
                }
            }
            out.push((text(id), subject));
        }
    }
    out
}

fn main() {
    let a = args();
    std::fs::create_dir_all(&a.dir).unwrap();
    let which = std::env::var("PIPELINE_BENCH").unwrap_or_else(|_| "all".into());
    if which == "all" || which == "throughput" {
        throughput(&a);
    }
    if which == "all" || which == "latency" {
        latency(&a);
    }
}
