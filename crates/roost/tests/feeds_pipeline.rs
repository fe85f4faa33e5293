//! The feed pipeline end to end, with real parts on loopback: nginx serves real feed snapshots,
//! `roost feeds run --once` fetches them (conditional requests honoured, bad updates refused)
//! and publishes to a Kafka-protocol broker (tansu, started by scripts/services.sh), and a
//! scorer (`roost up`) reading the feeds topic flags a listed client with the feed as reason.

use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime};

use roost_feeds::{FeedRecord, FeedStore};

fn kafka() -> String {
    std::env::var("ROOST_TEST_KAFKA")
        .expect("ROOST_TEST_KAFKA is not set: run the suite with scripts/test.sh, which starts the broker")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn shared(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/feeds").join(name)
}

/// A child in its own process group, killed with the group (an nginx master and its workers).
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let group = format!("-{}", self.0.id());
        let _ = Command::new("kill").args(["-KILL", "--", &group]).stderr(Stdio::null()).status();
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn chmod(p: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// nginx serving `www` on a free port (ETag and If-Modified-Since are nginx's own).
fn nginx(dir: &Path, www: &Path) -> (Killed, u16) {
    let port = free_port();
    let conf = dir.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "daemon off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
             events {{ worker_connections 64; }}\n\
             http {{\n  access_log {d}/access.log;\n  client_body_temp_path {d}/tmp;\n  proxy_temp_path {d}/tmp;\n  fastcgi_temp_path {d}/tmp;\n  uwsgi_temp_path {d}/tmp;\n  scgi_temp_path {d}/tmp;\n  \
             server {{ listen 127.0.0.1:{port}; root {w}; }}\n}}\n",
            d = dir.display(),
            w = www.display()
        ),
    )
    .unwrap();
    use std::os::unix::process::CommandExt;
    let child = Command::new("/usr/sbin/nginx")
        .args(["-p", &dir.display().to_string(), "-c", &conf.display().to_string()])
        .process_group(0)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("nginx (Debian package nginx; scripts/install-test-deps.sh installs it)");
    let guard = Killed(child);
    wait_for(Duration::from_secs(10), "nginx to listen", || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
    (guard, port)
}

fn wait_for(limit: Duration, what: &str, mut ok: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ok() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn roost(config: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_roost"))
        .arg("--config")
        .arg(config)
        .args(args)
        .env("ROOST_LOG", "warn")
        .output()
        .unwrap()
}

fn read_topic(topic: &str) -> FeedStore {
    let cfg = roost_kafka::KafkaConfig { brokers: kafka(), ..Default::default() };
    let mut store = FeedStore::default();
    roost_kafka::read_to_end(&cfg, topic, Duration::from_secs(60), |r| {
        store.apply(FeedRecord::decode(&r.key, r.value.as_deref()).unwrap())
    })
    .unwrap();
    store
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Rewrites a served file with a later modification time (so nginx's validators change).
fn serve(www: &Path, name: &str, body: &str) {
    let p = www.join(name);
    std::fs::write(&p, body).unwrap();
    chmod(&p, 0o644);
    let later = SystemTime::now() + Duration::from_secs(2);
    std::fs::File::options().write(true).open(&p).unwrap().set_modified(later).unwrap();
}

fn get(port: u16, path: &str) -> Option<String> {
    use std::io::Read;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out.split_once("\r\n\r\n")?.1.to_owned())
}

#[test]
fn feeds_fetch_validate_publish_and_flag() {
    let dir = tempfile::tempdir().unwrap();
    chmod(dir.path(), 0o755);
    let www = dir.path().join("www");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::create_dir_all(dir.path().join("tmp")).unwrap();
    chmod(&www, 0o755);
    let drop_v4 = std::fs::read_to_string(shared("spamhaus_drop.netset")).unwrap();
    let level2 = std::fs::read_to_string(shared("firehol_level2.netset")).unwrap();
    serve(&www, "drop.txt", &drop_v4);
    serve(&www, "level2.netset", &level2);
    let (_nginx, port) = nginx(dir.path(), &www);

    // Feed definitions pointing at the local server.
    let defs = dir.path().join("feeds");
    std::fs::create_dir_all(&defs).unwrap();
    std::fs::write(
        defs.join("spamhaus_drop.toml"),
        format!(
            "name = \"spamhaus_drop\"\ndescription = \"DROP\"\nurl = \"http://127.0.0.1:{port}/drop.txt\"\nformat = \"spamhaus\"\n\
             refresh = \"1h\"\nmax_age = \"4d\"\neffect = {{ penalty = 5, verdict = \"bad\", ttl = \"1h\" }}\nlicence = \"test\"\n"
        ),
    )
    .unwrap();
    std::fs::write(
        defs.join("firehol_level2.toml"),
        format!(
            "name = \"firehol_level2\"\ndescription = \"level2\"\nurl = \"http://127.0.0.1:{port}/level2.netset\"\nformat = \"netset\"\n\
             refresh = \"1h\"\nmax_age = \"1d\"\neffect = {{ penalty = 3, verdict = \"dubious\", ttl = \"30m\" }}\nlicence = \"test\"\n"
        ),
    )
    .unwrap();
    let topic = format!(
        "roost.feeds.test.{}.{}",
        std::process::id(),
        SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_nanos()
    );
    let log = dir.path().join("access.log");
    std::fs::write(&log, "").unwrap();
    let api = free_port();
    let config = dir.path().join("roost.toml");
    std::fs::write(
        &config,
        format!(
            "[[logs]]\npath = \"{log}\"\nformat = \"combined\"\n\n[up]\nlisten = \"127.0.0.1:{api}\"\nproxy = false\nadmin = false\nstart = \"beginning\"\npoll_interval = \"100ms\"\n\n\
             [feeds]\ndir = \"{defs}\"\n\n[feeds.fetch]\ntimeout = \"5s\"\nretries = 1\nbackoff = \"100ms\"\n\n\
             [kafka]\nbrokers = \"{kafka}\"\n\n[kafka.topics]\nfeeds = \"{topic}\"\n",
            log = log.display(),
            defs = defs.display(),
            kafka = kafka(),
        ),
    )
    .unwrap();

    // 1. First fetch: everything published.
    let out = roost(&config, &["feeds", "run", "--once"]);
    assert!(out.status.success(), "{}\n{}", stdout(&out), String::from_utf8_lossy(&out.stderr));
    assert!(stdout(&out).contains("spamhaus_drop: published 926 entries"), "{}", stdout(&out));
    assert!(stdout(&out).contains("firehol_level2: published 18112 entries"), "{}", stdout(&out));
    let store = read_topic(&topic);
    assert_eq!(store.feeds["spamhaus_drop"].entries.len(), 926);
    assert_eq!(store.feeds["firehol_level2"].entries.len(), 18_112);
    assert!(store.feeds["spamhaus_drop"].meta.as_ref().unwrap().etag.is_some());

    // 2. Unchanged: conditional requests answered 304 by nginx; nothing republished.
    let out = roost(&config, &["feeds", "run", "--once"]);
    assert!(out.status.success());
    assert_eq!(stdout(&out).matches("not modified").count(), 2, "{}", stdout(&out));
    let access = std::fs::read_to_string(dir.path().join("access.log")).unwrap();
    assert_eq!(access.lines().filter(|l| l.contains("\" 304 ")).count(), 2, "{access}");

    // 3. Bad updates are refused and the published set stays: a list shrunk to ten entries, and
    //    one that suddenly lists everything.
    let shrunk: String = drop_v4.lines().filter(|l| !l.starts_with('#')).take(10).map(|l| format!("{l}\n")).collect();
    serve(&www, "drop.txt", &shrunk);
    serve(&www, "level2.netset", &format!("{level2}0.0.0.0/0\n"));
    let out = roost(&config, &["feeds", "run", "--once"]);
    assert!(!out.status.success(), "a refused update fails --once");
    assert!(stdout(&out).contains("spamhaus_drop: refused: the feed would shrink from 926 to 10"), "{}", stdout(&out));
    assert!(stdout(&out).contains("firehol_level2: refused: the feed lists 0.0.0.0/0"), "{}", stdout(&out));
    let store = read_topic(&topic);
    assert_eq!(store.feeds["spamhaus_drop"].entries.len(), 926);
    assert_eq!(store.feeds["firehol_level2"].entries.len(), 18_112);

    // 4. A good update: five entries gone (tombstoned), one new.
    let mut kept: Vec<&str> = drop_v4.lines().filter(|l| !l.starts_with('#')).collect();
    let gone: Vec<String> = kept.drain(..5).map(str::to_owned).collect();
    let body = format!("; Spamhaus DROP\n{}\n45.95.168.0/24 ; SBL999999\n", kept.join("\n"));
    serve(&www, "drop.txt", &body);
    serve(&www, "level2.netset", &level2);
    let out = roost(&config, &["feeds", "run", "--once", "--only", "spamhaus_drop"]);
    assert!(out.status.success(), "{}", stdout(&out));
    assert!(stdout(&out).contains("spamhaus_drop: published 922 entries (+1 −5"), "{}", stdout(&out));
    let store = read_topic(&topic);
    let listed = &store.feeds["spamhaus_drop"].entries;
    assert_eq!(listed.len(), 922);
    for g in &gone {
        assert!(!listed.contains_key(&g.parse().unwrap()), "{g} still listed");
    }
    let new = &listed[&"45.95.168.0/24".parse().unwrap()];
    assert_eq!(new.detail.as_deref(), Some("SBL999999"));

    // 5. A scorer reading the topic flags a listed client, with the feed as its reason.
    let up = Command::new(env!("CARGO_BIN_EXE_roost"))
        .arg("--config")
        .arg(&config)
        .arg("up")
        .env("ROOST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let _up = Killed(up);
    wait_for(Duration::from_secs(60), "roost up's feed index", || {
        get(api, "/metrics").is_some_and(|m| m.contains("roost_feed_entries{feed=\"spamhaus_drop\"} 922"))
    });
    let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs() as i64;
    let stamp = clf_time(now);
    let mut f = std::fs::File::options().append(true).open(&log).unwrap();
    for ip in ["45.95.168.7", "8.8.4.4"] {
        for i in 0..3 {
            writeln!(f, "{ip} - - [{stamp}] \"GET /page/{i} HTTP/1.1\" 200 512 \"-\" \"Mozilla/5.0\"").unwrap();
        }
    }
    drop(f);
    let mut flagged = String::new();
    wait_for(Duration::from_secs(30), "the listed client's verdict", || {
        flagged = get(api, "/api/v1/clients/45.95.168.7").unwrap_or_default();
        flagged.contains("\"class\":\"bad\"")
    });
    assert!(flagged.contains("listed in spamhaus_drop since"), "{flagged}");
    assert!(flagged.contains("45.95.168.0/24, SBL999999"), "{flagged}");
    let clean = get(api, "/api/v1/clients/8.8.4.4").unwrap_or_default();
    assert!(clean.contains("\"class\":\"good\""), "{clean}");
}

/// `25/Nov/2026:10:00:00 +0000` for unix seconds.
fn clf_time(secs: i64) -> String {
    const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let (y, m, d) = roost_event::civil_from_days(secs.div_euclid(86_400));
    let s = secs.rem_euclid(86_400);
    format!("{d:02}/{}/{y}:{:02}:{:02}:{:02} +0000", MONTHS[m as usize - 1], s / 3600, s / 60 % 60, s % 60)
}
