//! The distributed appliance end to end, every part a real program on loopback: nginx (Debian)
//! serves the app and writes its access log in the shipped `log_format`; `roost tail` sends it
//! (and the proxy's own log) to the broker; `roost score` turns it into verdicts in Redis and on
//! the verdicts topic; `roost proxy` in front of nginx routes each request by them; `roost bgp`
//! announces flowspec rules to gobgpd (the router); Prometheus scrapes the daemons with the
//! shipped rules. Traffic from a generator — readers, a scanner, a brute-forcer and a crawler,
//! behind a load balancer that names them in X-Forwarded-For — must end with the attackers
//! challenged or blocked within seconds, the readers still getting 200s, a flowspec rule for
//! the scanner in gobgpd, and the average-reputation alert firing in Prometheus.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The `log_format` nginx writes, as shipped in deploy/logformats/.
fn shipped_log_format() -> String {
    let text = std::fs::read_to_string(repo().join("deploy/logformats/nginx.conf")).unwrap();
    let start = text.find("\nlog_format roost ").expect("deploy/logformats/nginx.conf defines log_format roost") + 1;
    let end = start + text[start..].find(';').unwrap() + 1;
    text[start..end].to_owned()
}

/// nginx as the app: pages and assets 200, a login that refuses, 404 for anything else; it
/// believes the proxy (127.0.0.1) about the client.
fn app(dir: &Path, log_format: &str) -> (Proc, u16, PathBuf) {
    let port = free_port();
    let d = dir.join("nginx");
    std::fs::create_dir_all(&d).unwrap();
    let log = d.join("access.log");
    std::fs::write(
        d.join("nginx.conf"),
        format!(
            "daemon off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
             events {{ worker_connections 1024; }}\n\
             http {{\n  {log_format}\n  access_log {log} roost;\n\
               client_body_temp_path {d}/body; proxy_temp_path {d}/proxy;\n\
               fastcgi_temp_path {d}/fcgi; uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;\n\
               set_real_ip_from 127.0.0.1; real_ip_header X-Forwarded-For; real_ip_recursive on;\n\
               server {{ listen 127.0.0.1:{port}; default_type text/plain;\n\
                 location /articles/ {{ return 200 \"app article\\n\"; }}\n\
                 location /static/ {{ return 200 \"app asset\\n\"; }}\n\
                 location = / {{ return 200 \"app home\\n\"; }}\n\
                 location = /login {{ return 401 \"app login refused\\n\"; }}\n\
                 location / {{ return 404 \"app not found\\n\"; }} }} }}\n",
            d = d.display(),
            log = log.display(),
        ),
    )
    .unwrap();
    let mut c = std::process::Command::new("/usr/sbin/nginx");
    c.arg("-c").arg(d.join("nginx.conf")).arg("-p").arg(&d);
    let p = Proc::spawn("nginx", c);
    wait_for(Duration::from_secs(10), "nginx to listen", || TcpStream::connect(("127.0.0.1", port)).is_ok());
    (p, port, log)
}

/// One request through the proxy, as the load balancer in front would send it for `client`.
/// Returns the status and whether the app answered (not the proxy).
fn via_proxy(port: u16, client: &str, method: &str, path: &str, ua: &str) -> Option<(u16, bool)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let body = if method == "POST" { "user=admin&password=guess" } else { "" };
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: shop.example\r\nUser-Agent: {ua}\r\nX-Forwarded-For: {client}\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let status = out.get(9..12)?.parse().ok()?;
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    Some((status, body.starts_with("app ")))
}

#[derive(Default)]
struct Tally {
    /// Readers' requests, and those that did not get a 200 from the app.
    readers: AtomicU64,
    readers_refused: AtomicU64,
    /// When each attacker was first kept from the app (challenge or error), since the attack began.
    stopped: Mutex<Vec<(&'static str, Duration)>>,
}

const READER_UA: &str =
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0 Safari/537.36";

/// Readers: 40 clients, each a page and an asset now and then (about 40 requests/s in all).
fn readers(port: u16, stop: Arc<AtomicBool>, tally: Arc<Tally>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(240);
        let mut i = 0u64;
        while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
            i += 1;
            let client = format!("198.51.100.{}", i % 40 + 1);
            let path = if i.is_multiple_of(3) {
                format!("/static/site-{}.css", i % 4)
            } else {
                format!("/articles/{}", i % 200)
            };
            // a request that could not connect, timed out or got no answer counts as refused: a
            // proxy that drops readers must not pass for one that serves them
            tally.readers.fetch_add(1, Ordering::Relaxed);
            match via_proxy(port, &client, "GET", &path, READER_UA) {
                Some((200, true)) => {}
                Some((status, _)) => {
                    tally.readers_refused.fetch_add(1, Ordering::Relaxed);
                    eprintln!("[test] reader {client} got {status} for {path}");
                }
                None => {
                    tally.readers_refused.fetch_add(1, Ordering::Relaxed);
                    eprintln!("[test] reader {client} got no answer for {path}");
                }
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    })
}

/// An attacker: sends its requests until the proxy keeps it from the app for good measure
/// (and then on, as a real one would), noting when it was first stopped.
/// What one attacker sends, how often, from which address.
struct Attacker {
    name: &'static str,
    client: &'static str,
    every: Duration,
    request: fn(u64) -> (&'static str, String, &'static str),
}

fn attacker(
    port: u16,
    a: Attacker,
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
    began: Instant,
) -> std::thread::JoinHandle<()> {
    let Attacker { name, client, every, request } = a;
    std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(180);
        let mut i = 0u64;
        let mut noted = false;
        while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
            i += 1;
            let (method, path, ua) = request(i);
            if let Some((status, from_app)) = via_proxy(port, client, method, &path, ua)
                && !from_app
                && !noted
            {
                noted = true;
                eprintln!("[test] {name} {client} stopped by the proxy ({status}) after {:?}", began.elapsed());
                tally.stopped.lock().unwrap().push((name, began.elapsed()));
            }
            std::thread::sleep(every);
        }
    })
}

const PROBES: [&str; 10] = [
    "/.env",
    "/.git/config",
    "/phpmyadmin/index.php",
    "/backup.sql",
    "/wp-config.php.bak",
    "/server-status",
    "/actuator/env",
    "/.aws/credentials",
    "/admin/config.php",
    "/db.sql.gz",
];

fn scan(i: u64) -> (&'static str, String, &'static str) {
    ("GET", PROBES[(i % PROBES.len() as u64) as usize].to_owned(), "Mozilla/5.0 zgrab/0.x")
}

fn brute_force(_: u64) -> (&'static str, String, &'static str) {
    ("POST", "/login".to_owned(), "python-requests/2.31")
}

fn crawl(i: u64) -> (&'static str, String, &'static str) {
    ("GET", format!("/articles/{}", i % 5000), "Mozilla/5.0 (compatible; HungryBot/1.0)")
}

fn prom_query(port: u16, q: &str) -> Option<serde_json::Value> {
    let body = http_get(
        port,
        &format!(
            "/api/v1/query?query={}",
            percent_encoding::utf8_percent_encode(q, percent_encoding::NON_ALPHANUMERIC)
        ),
    )?;
    serde_json::from_str(&body).ok()
}

#[test]
fn attacks_are_stopped_readers_served_routers_told_and_the_alert_fires() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (proxy_port, tail_port, score_port, bgp_listen, bgp_port, gobgp_api, prom_port) =
        (free_port(), free_port(), free_port(), free_port(), free_port(), free_port(), free_port());
    let topics = unique("e2e");
    let prefix = format!("{topics}:");
    let log_format = shipped_log_format();
    let (_nginx, app_port, app_log) = app(d, &log_format);
    let proxy_log = d.join("proxy-access.log");
    std::fs::write(&proxy_log, "").unwrap();
    std::fs::write(d.join("secret"), "an end-to-end proxy secret of some length\n").unwrap();

    let cfg = d.join("roost.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"[[logs]]
path = "{app_log}"
format = "nginx"
log_format = '''{log_format}'''

[[logs]]
path = "{proxy_log}"
format = "nginx"
log_format = '''{proxy_format}'''

[kafka]
brokers = "{kafka}"
[kafka.topics]
requests = "{topics}-requests"
deadletter = "{topics}-dead"
verdicts = "{topics}-verdicts"
overrides = "{topics}-overrides"
audit = "{topics}-audit"
feeds = "{topics}-feeds"

[redis]
url = "{redis}"
prefix = "{prefix}"

[tail]
listen = "127.0.0.1:{tail_port}"
checkpoint = "{d}/tail.json"
start = "beginning"

[score]
group = "{topics}-scorers"
partitions = 2
listen = "127.0.0.1:{score_port}"

[proxy]
listen = ["127.0.0.1:{proxy_port}"]
upstreams = ["127.0.0.1:{app_port}"]
metrics_listen = "127.0.0.1:{proxy_metrics}"
trusted_proxies = ["127.0.0.1/32"]
access_log = "{proxy_log}"
threads = 1
pid_file = "{d}/proxy.pid"
upgrade_sock = "{d}/upgrade.sock"

[proxy.challenge]
secret_file = "{d}/secret"

[bgp]
asn = 65003
router_id = "127.0.0.4"
hold_time = 9
listen = "127.0.0.1:{bgp_listen}"
peers = [{{ address = "127.0.0.1:{bgp_port}", local_address = "127.0.0.4", peer_as = 65000 }}]
protect = ["192.0.2.0/24"]
"#,
            app_log = app_log.display(),
            proxy_log = proxy_log.display(),
            proxy_format = roost_proxy::accesslog::LOG_FORMAT,
            kafka = kafka(),
            redis = redis(),
            d = d.display(),
            proxy_metrics = free_port(),
        ),
    )
    .unwrap();

    let _router = gobgpd(d, bgp_port, gobgp_api);
    let _score = Proc::roost("roost score", &cfg, "score");
    let _tail = Proc::roost("roost tail", &cfg, "tail");
    let _proxy = Proc::roost("roost proxy", &cfg, "proxy");
    let _bgp = Proc::roost("roost bgp", &cfg, "bgp");
    common::write_short_rules(d);
    let _prom = prometheus(
        d,
        prom_port,
        &format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files: [roost.rules.yml]\n\
             scrape_configs:\n  - job_name: roost-score\n    static_configs: [{{ targets: ['127.0.0.1:{score_port}'] }}]\n  \
             - job_name: roost-tail\n    static_configs: [{{ targets: ['127.0.0.1:{tail_port}'] }}]\n"
        ),
    );
    wait_for(Duration::from_secs(60), "the pipeline to be up", || {
        TcpStream::connect(("127.0.0.1", proxy_port)).is_ok()
            && http_get(score_port, "/metrics").is_some()
            && http_get(tail_port, "/metrics").is_some()
            && metric(bgp_listen, "roost_bgp_session_up") == Some(1.0)
    });

    // readers alone first: the scorer learns the usual reputation (the alert needs a baseline)
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let mut threads = vec![readers(proxy_port, stop.clone(), tally.clone())];
    wait_for(Duration::from_secs(60), "the readers' requests to be scored", || {
        metric(score_port, "roost_score_events_total").unwrap_or(0.0) >= 500.0
    });
    wait_for(Duration::from_secs(90), "a baseline in Prometheus", || {
        prom_query(prom_port, "roost:reputation_mean:by_request:baseline_windows >= 4")
            .is_some_and(|v| !v["data"]["result"].as_array().unwrap().is_empty())
    });
    let firing = |v: &serde_json::Value| {
        v["data"]["result"].as_array().into_iter().flatten().any(|a| a["metric"]["alertstate"] == "firing")
    };
    let alerts = "ALERTS{alertname=\"RoostAverageReputationDrop\"}";
    assert!(!prom_query(prom_port, alerts).is_some_and(|v| firing(&v)), "the drop alert fires on readers alone");

    // the attack
    let began = Instant::now();
    eprintln!("[test] the attack begins");
    for a in [
        Attacker { name: "scanner", client: "203.0.113.10", every: Duration::from_millis(30), request: scan },
        Attacker {
            name: "brute-forcer",
            client: "203.0.113.20",
            every: Duration::from_millis(30),
            request: brute_force,
        },
        Attacker { name: "crawler", client: "203.0.113.30", every: Duration::from_millis(60), request: crawl },
    ] {
        threads.push(attacker(proxy_port, a, stop.clone(), tally.clone(), began));
    }
    wait_for(Duration::from_secs(60), "every attacker to be kept from the app", || {
        tally.stopped.lock().unwrap().len() == 3
    });
    wait_for(Duration::from_secs(30), "the scanner's flowspec rule in gobgpd", || {
        rib(gobgp_api, "ipv4-flowspec").contains("203.0.113.10/32")
    });
    eprintln!("[test] flowspec rule in gobgpd after {:?}:\n{}", began.elapsed(), rib(gobgp_api, "ipv4-flowspec"));
    wait_for(Duration::from_secs(90), "RoostAverageReputationDrop to fire in Prometheus", || {
        prom_query(prom_port, alerts).is_some_and(|v| firing(&v))
    });
    eprintln!("[test] the drop alert fires {:?} after the attack began", began.elapsed());
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }

    let stopped = tally.stopped.lock().unwrap().clone();
    for (name, after) in &stopped {
        assert!(*after < Duration::from_secs(45), "{name} reached the app for {after:?}");
    }
    let (n, refused) = (tally.readers.load(Ordering::Relaxed), tally.readers_refused.load(Ordering::Relaxed));
    eprintln!("[test] readers: {n} requests, {refused} not served by the app; attackers stopped: {stopped:?}");
    assert!(n > 1000, "{n} reader requests");
    assert_eq!(refused, 0, "readers were kept from the app");
    // the routers are not told about the readers
    let table = rib(gobgp_api, "ipv4-flowspec");
    assert!(!table.contains("198.51.100."), "{table}");
}
