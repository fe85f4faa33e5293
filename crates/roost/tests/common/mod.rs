//! Helpers the integration tests share: the servers scripts/services.sh started, free ports,
//! bounded waits, child processes that die with the test, plain HTTP.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn kafka() -> String {
    std::env::var("ROOST_TEST_KAFKA")
        .expect("ROOST_TEST_KAFKA is not set: run the suite with scripts/test.sh, which starts the broker")
}

pub fn redis() -> String {
    std::env::var("ROOST_TEST_REDIS").expect("ROOST_TEST_REDIS is not set: run the suite with scripts/test.sh")
}

pub fn tansu() -> String {
    std::env::var("ROOST_TEST_TANSU").expect("ROOST_TEST_TANSU is not set: run the suite with scripts/test.sh")
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A name no other test (or earlier run against the same broker) uses.
pub fn unique(what: &str) -> String {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis();
    format!("t{}-{t}-{what}", std::process::id())
}

pub fn wait_for(limit: Duration, what: &str, mut ok: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ok() {
        assert!(start.elapsed() < limit, "timed out after {limit:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A child process, killed when dropped with every process it started (its process group: an
/// nginx master's workers, a browser's renderers), its stderr echoed with a prefix (shown on
/// failure).
pub struct Proc {
    pub child: Child,
    pub name: String,
}

impl Proc {
    pub fn spawn(name: &str, mut cmd: Command) -> Proc {
        use std::os::unix::process::CommandExt;
        let mut child = cmd
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let err = child.stderr.take().unwrap();
        let tag = name.to_owned();
        std::thread::spawn(move || {
            for l in BufReader::new(err).lines().map_while(Result::ok) {
                eprintln!("[{tag}] {l}");
            }
        });
        Proc { child, name: name.to_owned() }
    }

    pub fn roost(name: &str, config: &Path, sub: &str) -> Proc {
        let mut c = Command::new(env!("CARGO_BIN_EXE_roost"));
        c.arg("--config").arg(config).arg(sub).env("ROOST_LOG", "info,rdkafka=warn");
        Proc::spawn(name, c)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn sigkill(mut self) {
        eprintln!("[test] SIGKILL {}", self.name);
        self.kill_group();
    }

    /// SIGKILL to the process and its group (what it started and did not move elsewhere).
    fn kill_group(&mut self) {
        // the group outlives its leader while any member lives (nginx workers whose master
        // died): killed by the leader's pid, which is the group's id
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill").args(["-KILL", "--", &group]).stderr(Stdio::null()).status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Resident memory in KiB; a process whose memory cannot be read fails the test (a 0 would
    /// pass every "memory stays bounded" check).
    pub fn rss_kib(&self) -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .unwrap_or_else(|e| panic!("{}: /proc status: {e}", self.name));
        s.lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("{}: no VmRSS in /proc status", self.name))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill_group();
    }
}

pub fn http_get(port: u16, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\nConnection: close\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out.split_once("\r\n\r\n")?.1.to_owned())
}

/// A metric's value summed over its label sets (`name` without labels), from /metrics.
pub fn metric(port: u16, name: &str) -> Option<f64> {
    let body = http_get(port, "/metrics")?;
    let mut found = None;
    for l in body.lines().filter(|l| !l.starts_with('#')) {
        let (key, value) = l.rsplit_once(' ')?;
        let bare = key.split('{').next().unwrap_or(key);
        // a bare name sums every label set; a name with labels is that series alone
        if bare == name || key == name {
            *found.get_or_insert(0.0) += value.parse::<f64>().ok()?;
        }
    }
    found
}

/// An access-log line in the combined format, dated `unix_secs` (UTC).
pub fn clf_line(ip: &str, method: &str, path: &str, status: u16, user_agent: &str, unix_secs: u64) -> String {
    // "Wed, 02 Dec 2026 09:00:00 GMT" → "02/Dec/2026:09:00:00 +0000"
    let t = httpdate::fmt_http_date(std::time::UNIX_EPOCH + Duration::from_secs(unix_secs));
    let p: Vec<&str> = t.split(' ').collect();
    format!(
        "{ip} - - [{}/{}/{}:{} +0000] \"{method} {path} HTTP/1.1\" {status} 153 \"-\" \"{user_agent}\"\n",
        p[1], p[2], p[3], p[4]
    )
}

/// Appends `s` to the file at `p` (created if missing).
pub fn append(p: &Path, s: &str) {
    std::fs::OpenOptions::new().create(true).append(true).open(p).unwrap().write_all(s.as_bytes()).unwrap();
}

/// Replaces the file at `p` at once, as an editor that renames does: a watcher of its directory
/// never sees it half written. The new text is written next to the directory, not in it.
pub fn replace(p: &Path, s: &str) {
    let dir = p.parent().unwrap();
    let tmp = dir.parent().unwrap().join(format!(".{}.new", p.file_name().unwrap().to_string_lossy()));
    std::fs::write(&tmp, s).unwrap();
    std::fs::rename(&tmp, p).unwrap();
}

/// The current Unix time in seconds.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

/// An argon2 hash of `password`, from `roost admin hash-password`.
pub fn hash_password(password: &str) -> String {
    let mut c = Command::new(env!("CARGO_BIN_EXE_roost"))
        .args(["admin", "hash-password"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    c.stdin.take().unwrap().write_all(format!("{password}\n").as_bytes()).unwrap();
    let out = c.wait_with_output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// A real Prometheus (Debian's) on 127.0.0.1:`port` with `config` (prometheus.yml) written to
/// `dir`, its storage there too; ready when this returns.
pub fn prometheus(dir: &Path, port: u16, config: &str) -> Proc {
    std::fs::write(dir.join("prometheus.yml"), config).unwrap();
    let mut c = Command::new("prometheus");
    c.arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
        .arg(format!("--storage.tsdb.path={}", dir.join("tsdb").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"));
    let p = Proc::spawn("prometheus", c);
    wait_for(Duration::from_secs(30), "Prometheus to be ready", || {
        http_get(port, "/-/ready").is_some_and(|b| b.contains("Ready"))
    });
    p
}

/// An HTTP response, its header names lower-cased.
pub struct Resp {
    pub status: u16,
    pub headers: String,
    pub body: String,
}

/// One HTTP/1.1 request to 127.0.0.1:`port`.
pub fn request(port: u16, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Resp {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    // generous: a first load of 100k verdicts on a loaded 2-core machine takes a while, and how
    // long is a figure for BENCHMARKS.md, not a pass mark
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    s.write_all(req.as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap_or_else(|e| panic!("{method} {path}: no answer within 60 s: {e}"));
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    Resp { status: head[9..12].parse().unwrap(), headers: head.to_ascii_lowercase(), body: body.to_owned() }
}

/// Signs in to the admin UI.
pub fn login(port: u16, name: &str, password: &str) -> Resp {
    request(
        port,
        "POST",
        "/login",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        &format!("name={name}&password={}", password.replace(' ', "+")),
    )
}

/// The admin session cookie a sign-in set (`roost_admin=…`).
pub fn session_cookie(r: &Resp) -> String {
    let line = r.headers.lines().find(|l| l.starts_with("set-cookie: roost_admin=")).expect("a session cookie");
    assert!(line.contains("httponly") && line.contains("samesite=strict"), "{line}");
    line["set-cookie: ".len()..].split(';').next().unwrap().to_owned()
}

/// GoBGP (Debian's gobgpd) as the router: AS 65000 on 127.0.0.1:`bgp_port`, peering passively
/// with roost at 127.0.0.4 (AS 65003) for IPv4 and IPv6 flowspec; its API on `api_port`.
pub fn gobgpd(dir: &Path, bgp_port: u16, api_port: u16) -> Proc {
    let conf = dir.join("gobgpd.toml");
    std::fs::write(
        &conf,
        format!(
            r#"[global.config]
  as = 65000
  router-id = "127.0.0.1"
  port = {bgp_port}
  local-address-list = ["127.0.0.1"]
[[neighbors]]
  [neighbors.config]
    neighbor-address = "127.0.0.4"
    peer-as = 65003
  [neighbors.transport.config]
    passive-mode = true
  [neighbors.ebgp-multihop.config]
    enabled = true
    multihop-ttl = 2
  [neighbors.timers.config]
    hold-time = 9
  [[neighbors.afi-safis]]
    [neighbors.afi-safis.config]
      afi-safi-name = "ipv4-flowspec"
  [[neighbors.afi-safis]]
    [neighbors.afi-safis.config]
      afi-safi-name = "ipv6-flowspec"
"#
        ),
    )
    .unwrap();
    let p = gobgpd_with(&conf, api_port);
    wait_for(Duration::from_secs(20), "gobgpd to listen", || TcpStream::connect(("127.0.0.1", bgp_port)).is_ok());
    p
}

/// gobgpd's table for `family` (`ipv4-flowspec`), as `gobgp global rib` prints it.
/// A command that keeps failing fails the test (tried for up to 5 s): an empty table read off a
/// failed command would pass every "rule withdrawn" wait.
pub fn rib(api_port: u16, family: &str) -> String {
    let mut cmd = Command::new("/usr/bin/gobgp");
    cmd.args(["-p", &api_port.to_string(), "global", "rib", "-a", family]);
    output_of(cmd)
}

/// The standard output of a command that succeeds within 5 s of tries (a daemon's control
/// socket may still be coming up); one that keeps failing fails the test.
pub fn output_of(mut cmd: Command) -> String {
    let start = Instant::now();
    loop {
        let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
        if out.status.success() {
            return String::from_utf8_lossy(&out.stdout).into_owned();
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The shipped Prometheus rules (deploy/prometheus/roost.rules.yml) written to
/// `dir/roost.rules.yml` with their windows shortened for a test: 5m → 10s, 6h → 3m, for 5s.
pub fn write_short_rules(dir: &Path) {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let rules = std::fs::read_to_string(repo.join("deploy/prometheus/roost.rules.yml"))
        .unwrap()
        .replace("[5m]", "[10s]")
        .replace("[6h]", "[3m]")
        .replace("for: 5m", "for: 5s");
    std::fs::write(dir.join("roost.rules.yml"), rules).unwrap();
}

/// gobgpd on the config file `conf`, its API on `api_port`.
pub fn gobgpd_with(conf: &Path, api_port: u16) -> Proc {
    let mut c = Command::new("/usr/bin/gobgpd");
    c.arg("-f").arg(conf).args([
        "--api-hosts",
        &format!("127.0.0.1:{api_port}"),
        "--pprof-disable",
        "-p",
        "-l",
        "warn",
    ]);
    Proc::spawn("gobgpd", c)
}

/// Rules of the reload tests: T-1 challenges `/probe-a`; W-1 blocks 8 failed logins in 10 min.
pub const RULES_V1: &str = r#"
[[rule]]
id = "T-1"
title = "probe a"
severity = "high"
category = "test"
match.path = ['^/probe-a$']
effect = { penalty = 1.0, verdict = "challenge", ttl = "10m" }
examples.match = ["GET /probe-a 404"]

[[rule]]
id = "W-1"
title = "login failures"
severity = "high"
category = "test"
match.method = ["POST"]
match.path = ['^/login$']
match.status = [401]
window = { count = 8, within = "10m" }
effect = { penalty = 1.0, verdict = "block", ttl = "10m" }
examples.match = ["8x POST /login 401"]
"#;

/// A rule to add to [`RULES_V1`]: T-2 challenges `/probe-b`.
pub const RULE_T2: &str = r#"
[[rule]]
id = "T-2"
title = "probe b"
severity = "high"
category = "test"
match.path = ['^/probe-b$']
effect = { penalty = 1.0, verdict = "challenge", ttl = "10m" }
examples.match = ["GET /probe-b 404"]
"#;

/// An nginx error-log line at `unix_secs` (UTC) about `client`.
pub fn nginx_error_line(client: &str, message: &str, unix_secs: u64) -> String {
    // "Wed, 02 Dec 2026 09:00:00 GMT" → "2026/12/02 09:00:00"
    let t = httpdate::fmt_http_date(std::time::UNIX_EPOCH + Duration::from_secs(unix_secs));
    let p: Vec<&str> = t.split(' ').collect();
    const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let month = MONTHS.iter().position(|m| *m == p[2]).unwrap() + 1;
    format!(
        "{}/{month:02}/{} {} [error] 812#812: *1 {message}, client: {client}, server: example.com, request: \"GET /admin HTTP/1.1\", host: \"example.com\"\n",
        p[3], p[1], p[4]
    )
}

/// Error-log messages, one per kind roost judges, each for its own client.
pub const ERROR_LOG_CASES: [(&str, &str); 4] = [
    ("203.0.113.41", r#"user "admin" was not found in "/etc/nginx/.htpasswd""#),
    ("203.0.113.42", r#"user "admin": password mismatch"#),
    ("203.0.113.43", r#"limiting requests, excess: 10.520 by zone "one""#),
    ("203.0.113.44", "client sent invalid request while reading client request line"),
];

/// Verdict changes on `kafka`'s verdicts topic, as the scorer writes them: (subject, class,
/// reputation, expires in ms), each for a rule's evidence.
pub fn send_verdicts(kafka: &roost_kafka::KafkaConfig, records: &[(&str, &str, f32, i64)]) {
    let p = roost_kafka::Producer::new(kafka, "bgp-test").unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        for (subject, to, rep, expires_in) in records {
            let now = roost_proxy::now_ms();
            let v = serde_json::json!({
                "v": 1, "subject": subject, "at": now, "from": "good", "to": to, "cause": "evidence",
                "reputation": rep, "requests": 20, "expires": now + expires_in,
                "reasons": [{"source": "rule", "text": format!("R-5001 brute-force login ({subject})"), "weight": 1.0}],
                "samples": []
            });
            p.send(&kafka.topics.verdicts, subject.as_bytes(), Some(v.to_string().as_bytes())).await.unwrap();
        }
    });
}

/// A tansu broker of the test's own, with sqlite storage (its topics survive a restart).
pub fn own_broker(dir: &Path, port: u16) -> Proc {
    let mut c = Command::new(tansu());
    c.args([
        "broker",
        "--listener-url",
        &format!("tcp://127.0.0.1:{port}"),
        "--advertised-listener-url",
        &format!("tcp://127.0.0.1:{port}"),
        // tansu opens sqlite files relative to its working directory
        "--storage-engine",
        "sqlite://tansu.db",
    ]);
    c.current_dir(dir).env("RUST_LOG", "warn");
    let p = Proc::spawn("tansu", c);
    wait_for(Duration::from_secs(20), "tansu to listen", || TcpStream::connect(("127.0.0.1", port)).is_ok());
    p
}
