//! Waffles end to end, with real parts on loopback: `roost proxy` in front of a real nginx
//! upstream, verdicts written to a real Redis (scripts/services.sh starts it; the test that stops
//! Redis runs its own), clients from different loopback addresses (127.0.0.x), and a real
//! headless Chromium solving the JavaScript challenge.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use roost_engine::{Class, Timestamp};
use roost_proxy::challenge::{Signer, solve};
use roost_verdicts::{RedisConfig, Store, VerdictRecord, Write as VWrite};

const SECRET: &str = "test secret, sixteen bytes at least";

fn now_ms() -> i64 {
    roost_proxy::now_ms()
}

/// nginx as the app: answers every path with the verdict header and forwarding chain it got.
fn upstream(dir: &Path) -> (Proc, u16) {
    let port = free_port();
    let d = dir.join("nginx");
    std::fs::create_dir_all(d.join("logs")).unwrap();
    let conf = d.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "daemon off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
             events {{ worker_connections 1024; }}\n\
             http {{ access_log off; client_body_temp_path {d}/body; proxy_temp_path {d}/proxy;\n\
               fastcgi_temp_path {d}/fcgi; uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;\n\
               server {{ listen 127.0.0.1:{port};\n\
                 underscores_in_headers on;\n\
                 location / {{ default_type text/plain; return 200 \"app verdict=[$http_x_roost_verdict] xff=[$http_x_forwarded_for] uri=[$request_uri] secret=[$http_x_secret] te=[$http_transfer_encoding] cl=[$http_content_length] cookie=[$http_cookie]\\n\"; }}\n\
                 location = /big.txt {{ root {d}; default_type text/plain; gzip on; gzip_min_length 1; gzip_types text/plain; }} }} }}\n",
            d = d.display()
        ),
    )
    .unwrap();
    std::fs::write(d.join("big.txt"), big_body()).unwrap();
    let mut c = Command::new("/usr/sbin/nginx");
    c.arg("-c").arg(&conf).arg("-p").arg(&d);
    let p = Proc::spawn("nginx", c);
    wait_for(Duration::from_secs(10), "nginx to listen", || TcpStream::connect(("127.0.0.1", port)).is_ok());
    (p, port)
}

/// What the app serves at `/big.txt` (by length; chunked when gzipped on the fly): more than
/// HTTP/2's first flow-control window.
fn big_body() -> String {
    (0..30_000).map(|i| format!("line {i:>6}\n")).collect()
}

struct Waffles {
    cfg: PathBuf,
    /// The process started (with `--daemon`, it has exited and `daemon` is the one serving).
    _proc: Proc,
    daemon: Option<u32>,
    _upstream: Proc,
    port: u16,
    metrics: u16,
    prefix: String,
    redis_url: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Waffles {
    fn start(redis_url: &str, extra: &str) -> Waffles {
        Waffles::start_with(redis_url, extra, None)
    }

    /// `upstreams`: the `proxy.upstreams` value instead of the one nginx upstream.
    fn start_with(redis_url: &str, extra: &str, upstreams: Option<&dyn Fn(u16) -> String>) -> Waffles {
        Waffles::start_as(redis_url, extra, upstreams, false)
    }

    /// `daemon`: started with `--daemon`; the process it forks serves, and is killed on drop.
    fn start_as(redis_url: &str, extra: &str, upstreams: Option<&dyn Fn(u16) -> String>, daemon: bool) -> Waffles {
        Waffles::start_in(redis_url, extra, upstreams, daemon, None)
    }

    /// `prefix`: share another proxy's Redis keys (a fleet).
    fn start_in(
        redis_url: &str,
        extra: &str,
        upstreams: Option<&dyn Fn(u16) -> String>,
        daemon: bool,
        prefix: Option<&str>,
    ) -> Waffles {
        let dir = tempfile::tempdir().unwrap();
        let (up, up_port) = upstream(dir.path());
        let upstreams = upstreams.map_or_else(|| format!("[\"127.0.0.1:{up_port}\"]"), |f| f(up_port));
        let (port, metrics) = (free_port(), free_port());
        let prefix = prefix.map_or_else(|| format!("{}:", unique("proxy")), str::to_owned);
        let log = dir.path().join("proxy-access.log");
        std::fs::write(dir.path().join("secret"), SECRET).unwrap();
        let d = dir.path().display();
        let cfg = dir.path().join("roost.toml");
        std::fs::write(
            &cfg,
            format!(
                r#"[redis]
url = "{redis_url}"
prefix = "{prefix}"
timeout = "1s"

[proxy]
listen = ["127.0.0.1:{port}"]
upstreams = {upstreams}
metrics_listen = "127.0.0.1:{metrics}"
trusted_proxies = ["127.0.0.2/32"]
access_log = "{d}/proxy-access.log"
client_timeout = "2s"
max_header_bytes = 8192
threads = 1
pid_file = "{d}/proxy.pid"
upgrade_sock = "{d}/upgrade.sock"
{extra}

[proxy.challenge]
secret_file = "{d}/secret"
min_bits = 8
max_bits = 10
min_wait_secs = 1
max_wait_secs = 2
"#
            ),
        )
        .unwrap();
        let (p, daemon) = if daemon {
            let mut c = Command::new(env!("CARGO_BIN_EXE_roost"));
            c.arg("--config").arg(&cfg).args(["proxy", "--daemon"]).env("ROOST_LOG", "info");
            let mut p = Proc::spawn("proxy --daemon", c);
            wait_for(Duration::from_secs(20), "roost proxy --daemon to fork and exit", || !p.running());
            let pid_file = dir.path().join("proxy.pid");
            let mut pid = None;
            wait_for(Duration::from_secs(20), "the daemon's PID file", || {
                pid = std::fs::read_to_string(&pid_file).ok().and_then(|s| s.trim().parse::<u32>().ok());
                pid.is_some()
            });
            (p, pid)
        } else {
            (Proc::roost("proxy", &cfg, "proxy"), None)
        };
        wait_for(Duration::from_secs(20), "roost proxy to listen", || TcpStream::connect(("127.0.0.1", port)).is_ok());
        wait_for(Duration::from_secs(20), "roost proxy to load verdicts", || {
            metric(metrics, "roost_proxy_redis_up") == Some(1.0)
        });
        Waffles {
            cfg,
            _proc: p,
            daemon,
            _upstream: up,
            port,
            metrics,
            prefix,
            redis_url: redis_url.to_owned(),
            log,
            _dir: dir,
        }
    }

    fn store(&self) -> Store {
        Store::new(&RedisConfig { url: self.redis_url.clone(), prefix: self.prefix.clone(), ..RedisConfig::default() })
            .unwrap()
    }

    fn set(&self, subject: &str, verdict: Class, reputation: f32) {
        let now = now_ms();
        let record = VerdictRecord {
            shadow: false,
            v: 1,
            subject: subject.into(),
            verdict,
            reputation,
            at: Timestamp(now),
            expires: (verdict != Class::Good).then_some(Timestamp(now + 3_600_000)),
            requests: 10,
            reasons: vec!["test".into()],
        };
        self.store().write(&[VWrite { record, now: Timestamp(now), announce: true, samples: Vec::new() }]).unwrap();
    }

    fn get(&self, from: &str, path: &str, headers: &str) -> Response {
        request(
            from,
            self.port,
            &format!("GET {path} HTTP/1.1\r\nHost: shop.example\r\n{headers}Connection: close\r\n\r\n"),
        )
    }

    /// A metric that must be there: a missing one (or /metrics not answering) fails the test
    /// rather than reading as 0, which "Redis is down" checks would take for a yes.
    fn metric(&self, name: &str) -> f64 {
        metric(self.metrics, name).unwrap_or_else(|| panic!("{name} missing from the proxy's /metrics"))
    }
}

impl Drop for Waffles {
    fn drop(&mut self) {
        if let Some(pid) = self.daemon {
            let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
        }
    }
}

#[derive(Debug)]
struct Response {
    status: u16,
    head: String,
    body: String,
}

impl Response {
    fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
        })
    }
}

/// One raw request from a chosen loopback address.
fn request(from: &str, port: u16, raw: &str) -> Response {
    let s = connect_from(from, port);
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut s = s;
    s.write_all(raw.as_bytes()).unwrap();
    read_response(&mut s)
}

fn connect_from(from: &str, port: u16) -> TcpStream {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let local: SocketAddr = format!("{from}:0").parse().unwrap();
    sock.bind(&local.into()).unwrap();
    let remote: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    sock.connect_timeout(&remote.into(), Duration::from_secs(5)).unwrap();
    sock.into()
}

fn read_response(s: &mut TcpStream) -> Response {
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    Response { status, head: head.to_owned(), body: body.to_owned() }
}

/// The value of a hidden input in a challenge page.
fn field(page: &str, name: &str) -> String {
    let at = page.find(&format!("name=\"{name}\" value=\"")).unwrap_or_else(|| panic!("no {name} in {page}"));
    let rest = &page[at + name.len() + 15..];
    html_unescape(&rest[..rest.find('"').unwrap()])
}

fn html_unescape(s: &str) -> String {
    s.replace("&quot;", "\"").replace("&lt;", "<").replace("&gt;", ">").replace("&#x27;", "'").replace("&amp;", "&")
}

fn bits(page: &str) -> u8 {
    let at = page.find("bits = ").unwrap() + 7;
    page[at..].split(',').next().unwrap().trim().parse().unwrap()
}

fn form(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={}", percent_encoding::utf8_percent_encode(v, percent_encoding::NON_ALPHANUMERIC)))
        .collect::<Vec<_>>()
        .join("&")
}

fn post_form(w: &Waffles, from: &str, body: &str) -> Response {
    request(
        from,
        w.port,
        &format!(
            "POST /.roost/verify HTTP/1.1\r\nHost: shop.example\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    )
}

fn cookie_of(r: &Response) -> String {
    r.header("set-cookie").unwrap().split(';').next().unwrap().to_owned()
}

#[test]
fn a_verdict_written_to_redis_changes_the_route() {
    let w = Waffles::start(&redis(), "");
    let ok = w.get("127.0.0.5", "/", "");
    assert_eq!(ok.status, 200, "{ok:?}");
    assert!(ok.body.contains("verdict=[good]"), "{}", ok.body);

    for (class, want) in [(Class::Bad, 403), (Class::Dubious, 403), (Class::Good, 200)] {
        let t = Instant::now();
        w.set("127.0.0.5", class, -0.5);
        let mut r = w.get("127.0.0.5", "/", "");
        while r.status != want || (class == Class::Dubious && !r.body.contains("One moment")) {
            // the latency is a figure (benches, BENCHMARKS.md), not a pass/fail bound
            assert!(t.elapsed() < Duration::from_secs(10), "{class:?}: route unchanged after 10 s: {r:?}");
            std::thread::sleep(Duration::from_millis(20));
            r = w.get("127.0.0.5", "/", "");
        }
        eprintln!("{class:?} took effect after {:?}", t.elapsed());
        if class == Class::Bad {
            assert!(r.body.contains("Access denied"), "{}", r.body);
            // a reference the admin UI can look up, and nothing about how the verdict was reached
            let reference = r.body.split("<code>").nth(1).unwrap().split("</code>").next().unwrap().to_owned();
            assert_eq!(reference.len(), 10);
            assert!(!r.body.contains("test") && !r.body.contains("-0.5"));
            wait_for(Duration::from_secs(5), "the access log to record the reference", || {
                std::fs::read_to_string(&w.log).unwrap_or_default().contains(&format!("ref={reference}"))
            });
        }
    }
    // IPv6-style subjects and other addresses are unaffected
    assert_eq!(w.get("127.0.0.6", "/", "").status, 200);
    assert!(w.metric("roost_proxy_requests_total") >= 4.0);
    assert!(w.metric("roost_proxy_sync_changes_total") >= 3.0);
}

#[test]
fn a_daemonized_proxy_follows_verdicts_logs_and_stops_on_sigterm() {
    // the Redis follower and the access-log writer are threads; a fork keeps only its caller's
    let w = Waffles::start_as(&redis(), "grace_period = \"1s\"\nshutdown_timeout = \"1s\"\n", None, true);
    let pid = w.daemon.expect("the daemon's PID");
    assert_ne!(pid, w._proc.pid(), "the process that serves is not the one started");
    assert_eq!(w.get("127.0.0.15", "/", "").status, 200);
    w.set("127.0.0.15", Class::Bad, -0.9);
    wait_for(Duration::from_secs(5), "the daemon to refuse the bad client", || {
        w.get("127.0.0.15", "/", "").status == 403
    });
    wait_for(Duration::from_secs(5), "the daemon's access log", || {
        std::fs::read_to_string(&w.log).unwrap_or_default().contains("127.0.0.15 - - [")
    });
    assert!(w.metric("roost_proxy_sync_changes_total") >= 1.0);
    Command::new("kill").args(["-TERM", &pid.to_string()]).status().unwrap();
    wait_for(Duration::from_secs(30), "the daemon to exit", || {
        !Path::new(&format!("/proc/{pid}")).exists()
            || std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.contains(") Z "))
    });
}

#[test]
fn a_client_solves_the_challenge_reaches_the_app_and_cookies_cannot_be_forged_moved_or_replayed() {
    let w = Waffles::start(&redis(), "");
    for ip in ["127.0.0.11", "127.0.0.12"] {
        w.set(ip, Class::Dubious, -0.4);
    }
    wait_for(Duration::from_secs(5), "the verdicts to arrive", || w.get("127.0.0.12", "/", "").status == 403);

    let page = w.get("127.0.0.11", "/shop?item=7&q=%22x%22", "");
    assert_eq!(page.status, 403);
    assert!(page.body.contains("One moment, please"));
    assert!(page.header("content-security-policy").unwrap().contains("script-src 'nonce-"));
    let (token, back) = (field(&page.body, "t"), field(&page.body, "r"));
    assert_eq!(back, "/shop?item=7&q=%22x%22");
    let b = bits(&page.body);
    assert!((8..=10).contains(&b), "{b}");
    let n = solve(&token, b).to_string();

    // a wrong answer is refused
    let wrong = (0u64..)
        .find(|c| {
            roost_proxy::challenge::leading_zero_bits(&roost_proxy::challenge::work_hash(&token, &c.to_string()))
                < b.into()
        })
        .unwrap();
    let r = post_form(&w, "127.0.0.11", &form(&[("t", &token), ("n", &wrong.to_string()), ("r", &back)]));
    assert_eq!(r.status, 403);
    assert!(r.body.contains("did not go through"));
    // the solution, from another address, is refused (the token is bound to the solver's)
    let r = post_form(&w, "127.0.0.12", &form(&[("t", &token), ("n", &n), ("r", &back)]));
    assert_eq!(r.status, 403, "{r:?}");

    let ok = post_form(&w, "127.0.0.11", &form(&[("t", &token), ("n", &n), ("r", &back)]));
    assert_eq!(ok.status, 303, "{ok:?}");
    assert_eq!(ok.header("location").as_deref(), Some("/shop?item=7&q=%22x%22"));
    let cookie = cookie_of(&ok);
    let set = ok.header("set-cookie").unwrap();
    assert!(set.contains("HttpOnly") && set.contains("SameSite=Lax") && set.contains("Max-Age=3600"), "{set}");

    let app = w.get("127.0.0.11", "/shop?item=7", &format!("Cookie: a=b; {cookie}\r\n"));
    assert_eq!(app.status, 200, "{app:?}");
    assert!(app.body.contains("verdict=[dubious; cleared]"), "{}", app.body);

    // replaying the solution is refused
    let again = post_form(&w, "127.0.0.11", &form(&[("t", &token), ("n", &n), ("r", &back)]));
    assert_eq!(again.status, 403, "{again:?}");
    // the cookie moved to another address is refused
    assert_eq!(w.get("127.0.0.12", "/", &format!("Cookie: {cookie}\r\n")).status, 403);
    // a forged cookie (a later expiry, same signature) and one signed with another key
    let (exp, sig) = cookie.split_once('=').unwrap().1.split_once('.').unwrap();
    let later = format!("roost_clearance={}.{sig}", exp.parse::<u64>().unwrap() + 86_400_000);
    assert_eq!(w.get("127.0.0.11", "/", &format!("Cookie: {later}\r\n")).status, 403);
    let other = Signer::new(b"someone else's secret").clearance("127.0.0.11", now_ms() as u64 + 60_000);
    assert_eq!(w.get("127.0.0.11", "/", &format!("Cookie: roost_clearance={other}\r\n")).status, 403);
    // an expired one, genuinely signed
    let expired = Signer::new(SECRET.as_bytes()).clearance("127.0.0.11", now_ms() as u64 - 1000);
    assert_eq!(w.get("127.0.0.11", "/", &format!("Cookie: roost_clearance={expired}\r\n")).status, 403);
    let fresh = Signer::new(SECRET.as_bytes()).clearance("127.0.0.11", now_ms() as u64 + 60_000);
    assert_eq!(w.get("127.0.0.11", "/", &format!("Cookie: roost_clearance={fresh}\r\n")).status, 200);

    // no JavaScript: the meta refresh, redeemed too early and then after the wait
    let page = w.get("127.0.0.12", "/news", "");
    let refresh = page.body.split("http-equiv=\"refresh\" content=\"").nth(1).unwrap();
    let (secs, url) = refresh.split_once(";url=").unwrap();
    let url = html_unescape(&url[..url.find('"').unwrap()]);
    let secs: u64 = secs.parse().unwrap();
    assert!((1..=2).contains(&secs));
    let early = w.get("127.0.0.12", &url, "");
    assert_eq!(early.status, 403);
    std::thread::sleep(Duration::from_millis(secs * 1000 + 100));
    let waited = w.get("127.0.0.12", &url, "");
    assert_eq!(waited.status, 303, "{waited:?}");
    assert_eq!(waited.header("location").as_deref(), Some("/news"));
    let c2 = cookie_of(&waited);
    assert_eq!(w.get("127.0.0.12", "/news", &format!("Cookie: {c2}\r\n")).status, 200);

    assert!(metric(w.metrics, "roost_proxy_challenges_total").unwrap() >= 4.0);
    assert!(w.metric("roost_proxy_cookies_refused_total") >= 4.0);

    // the access log says what happened, in a format roost tail reads
    wait_for(Duration::from_secs(5), "the access log", || {
        std::fs::read_to_string(&w.log).unwrap_or_default().contains("challenge=passed:wait")
    });
    let log = std::fs::read_to_string(&w.log).unwrap();
    let fmt = roost_logformat::NginxFormat::compile(roost_proxy::accesslog::LOG_FORMAT).unwrap();
    for l in log.lines() {
        let ev = fmt.parse(l).unwrap_or_else(|e| panic!("{l}: {e}"));
        assert!(ev.client.to_string().starts_with("127.0.0."));
    }
    assert!(log.contains("route=challenge challenge=passed "));
    assert!(log.contains("challenge=failed:replayed"));
    assert!(log.contains("route=app challenge=cleared"));

    // and each client's outcomes reach Redis, where the admin UI shows them
    let mut store = w.store();
    wait_for(Duration::from_secs(5), "the outcomes in Redis", || {
        store.outcomes("127.0.0.11").unwrap().is_some_and(|o| o.passed >= 1 && o.cleared >= 1)
    });
    let o = store.outcomes("127.0.0.11").unwrap().unwrap();
    assert!(o.issued >= 1 && o.failed >= 1 && o.refused >= 1, "{o:?}");
    wait_for(Duration::from_secs(5), "the waiting client's pass in Redis", || {
        store.outcomes("127.0.0.12").unwrap().is_some_and(|o| o.passed >= 1)
    });
}

#[test]
fn x_forwarded_for_counts_only_from_a_trusted_proxy() {
    let w = Waffles::start(&redis(), "");
    w.set("203.0.113.9", Class::Bad, -0.9);
    w.set("127.0.0.21", Class::Bad, -0.9);
    let xff = "X-Forwarded-For: 203.0.113.9\r\n";
    wait_for(Duration::from_secs(5), "the verdict to arrive", || w.get("127.0.0.2", "/", xff).status == 403);
    // from an untrusted peer the header is the client's own words: ignored
    let r = w.get("127.0.0.1", "/", xff);
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.body.contains("xff=[127.0.0.1]"), "{}", r.body);
    // nor can a flagged client launder itself through it
    assert_eq!(w.get("127.0.0.21", "/", "X-Forwarded-For: 198.51.100.1\r\n").status, 403);
    // through the trusted proxy, the chain is kept for the app
    let r = w.get("127.0.0.2", "/", "X-Forwarded-For: 198.51.100.7\r\n");
    assert_eq!(r.status, 200);
    assert!(r.body.contains("xff=[198.51.100.7, 127.0.0.2]"), "{}", r.body);
    // a client-sent X-Roost-Verdict never reaches the app
    let r = w.get("127.0.0.1", "/", "X-Roost-Verdict: good; trusted\r\n");
    assert!(r.body.contains("verdict=[good]"), "{}", r.body);
    // a trusted proxy sending garbage: counted, and the peer is judged
    let r = w.get("127.0.0.2", "/", "X-Forwarded-For: not-an-address\r\n");
    assert_eq!(r.status, 200);
    assert_eq!(w.metric("roost_proxy_refused_total"), 1.0);
}

/// A real HAProxy in TCP mode in front of the proxy, connecting from the trusted 127.0.0.2: the
/// PROXY v1 header to the plain listener, v2 to the plain and to the TLS listener (TLS passed
/// through). Returns its process and its three frontend ports.
fn haproxy_in_front(dir: &Path, plain: u16, tls: u16) -> (Proc, [u16; 3]) {
    let ports = [free_port(), free_port(), free_port()];
    let cfg = dir.join("haproxy.cfg");
    let backend = |name: &str, front: u16, to: u16, send: &str| {
        format!("listen {name}\n  bind 127.0.0.1:{front}\n  server s 127.0.0.1:{to} {send} source 127.0.0.2\n")
    };
    std::fs::write(
        &cfg,
        format!(
            "global\n  maxconn 100\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 10s\n  timeout server 10s\n{}{}{}",
            backend("v1", ports[0], plain, "send-proxy"),
            backend("v2", ports[1], plain, "send-proxy-v2"),
            backend("tls", ports[2], tls, "send-proxy-v2"),
        ),
    )
    .unwrap();
    let mut c = Command::new("/usr/sbin/haproxy");
    c.args(["-db", "-f"]).arg(&cfg);
    let p = Proc::spawn("haproxy", c);
    wait_for(Duration::from_secs(10), "haproxy to listen", || {
        ports.iter().all(|&port| TcpStream::connect(("127.0.0.1", port)).is_ok())
    });
    (p, ports)
}

#[test]
fn proxy_protocol_from_a_trusted_balancer_names_the_client() {
    let certs = tempfile::tempdir().unwrap();
    let (c, k) = cert(certs.path(), "shop", "shop.test");
    let tls_port = free_port();
    let extra = format!(
        "proxy_protocol = true\ntls = [{{ listen = \"127.0.0.1:{tls_port}\", certs = [{{ cert = \"{}\", key = \"{}\" }}] }}]\n",
        c.display(),
        k.display()
    );
    let w = Waffles::start(&redis(), &extra);
    let (_haproxy, [v1, v2, tls]) = haproxy_in_front(certs.path(), w.port, tls_port);
    let get = |from: &str, port: u16| {
        request(from, port, "GET /pp HTTP/1.1\r\nHost: shop.example\r\nConnection: close\r\n\r\n")
    };
    // the client HAProxy names is the one judged, not HAProxy
    w.set("127.0.0.31", Class::Bad, -0.9);
    wait_for(Duration::from_secs(5), "the verdict to arrive", || get("127.0.0.31", v1).status == 403);
    assert_eq!(get("127.0.0.31", v2).status, 403, "v2 too");
    // another client through the same balancer reaches the app, and is who the app is told of
    let r = get("127.0.0.32", v1);
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.body.contains("xff=[127.0.0.32]"), "{}", r.body);
    let r = get("127.0.0.33", v2);
    assert!(r.body.contains("xff=[127.0.0.33]"), "{}", r.body);
    // TLS passed through: the header comes before the handshake
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "--interface", "127.0.0.34"])
        .args(["--resolve", &format!("shop.test:{tls}:127.0.0.1"), "--cacert"])
        .arg(&c)
        .arg(format!("https://shop.test:{tls}/pp"))
        .output()
        .unwrap();
    let body = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && body.contains("xff=[127.0.0.34]"),
        "{body} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // the access log names the clients, for `roost tail`
    wait_for(Duration::from_secs(5), "the access log", || {
        std::fs::read_to_string(&w.log).is_ok_and(|l| l.contains("127.0.0.33") && l.contains("127.0.0.34"))
    });
    // the trusted peer without a header: dropped without an answer
    let r = w.get("127.0.0.2", "/", "");
    assert_eq!(r.status, 0, "{r:?}");
    // anyone else's PROXY line is not believed: it is a malformed request
    let r = request(
        "127.0.0.1",
        w.port,
        "PROXY TCP4 127.0.0.32 127.0.0.1 1000 80\r\nGET / HTTP/1.1\r\nHost: shop.example\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(r.status, 400, "{r:?}");
    // a malformed header from the trusted peer: dropped too
    let r = request("127.0.0.2", w.port, "PROXY TCP4 not an address\r\nGET / HTTP/1.1\r\n\r\n");
    assert_eq!(r.status, 0, "{r:?}");
    let count = |outcome: &str| {
        metric(w.metrics, &format!("roost_proxy_proxy_protocol_headers_total{{outcome=\"{outcome}\"}}")).unwrap_or(0.0)
    };
    assert!(count("client") >= 6.0);
    assert_eq!(count("missing"), 1.0);
    assert_eq!(count("malformed"), 1.0);
}

#[test]
fn with_redis_down_the_last_known_verdicts_still_apply() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let start_redis = || {
        let mut c = Command::new("redis-server");
        c.args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir.path());
        let p = Proc::spawn("redis", c);
        wait_for(Duration::from_secs(10), "redis to listen", || TcpStream::connect(("127.0.0.1", port)).is_ok());
        p
    };
    let redis_proc = start_redis();
    let w = Waffles::start(&format!("redis://127.0.0.1:{port}"), "");
    w.set("127.0.0.31", Class::Bad, -0.8);
    wait_for(Duration::from_secs(5), "the verdict to arrive", || w.get("127.0.0.31", "/", "").status == 403);

    redis_proc.sigkill();
    wait_for(Duration::from_secs(10), "the proxy to notice", || w.metric("roost_proxy_redis_up") == 0.0);
    for _ in 0..5 {
        assert_eq!(w.get("127.0.0.31", "/", "").status, 403, "the last-known verdict still applies");
        assert_eq!(w.get("127.0.0.32", "/", "").status, 200, "unknown clients: fail open (the default)");
    }
    assert!(w.metric("roost_proxy_sync_errors_total") >= 1.0);

    // Redis back, empty: the proxy loads again and follows what it holds now
    let _redis = start_redis();
    wait_for(Duration::from_secs(15), "the proxy to reconnect", || w.metric("roost_proxy_redis_up") == 1.0);
    wait_for(Duration::from_secs(5), "the reload to clear the old verdict", || {
        w.get("127.0.0.31", "/", "").status == 200
    });
    w.set("127.0.0.32", Class::Bad, -0.8);
    wait_for(Duration::from_secs(5), "a new verdict to apply", || w.get("127.0.0.32", "/", "").status == 403);
}

#[test]
fn the_unknown_policy_applies_only_while_redis_is_unreachable() {
    // nothing listens on this port: the store is unreachable from the start
    let dead = format!("redis://127.0.0.1:{}", free_port());
    let dir = tempfile::tempdir().unwrap();
    let (_up, up_port) = upstream(dir.path());
    let (port, metrics) = (free_port(), free_port());
    let cfg = dir.path().join("roost.toml");
    let d = dir.path().display();
    std::fs::write(
        &cfg,
        format!(
            "[redis]\nurl = \"{dead}\"\ntimeout = \"200ms\"\n[proxy]\nlisten = [\"127.0.0.1:{port}\"]\nupstreams = [\"127.0.0.1:{up_port}\"]\n\
             metrics_listen = \"127.0.0.1:{metrics}\"\nunknown = \"challenge\"\nthreads = 1\npid_file = \"{d}/p.pid\"\nupgrade_sock = \"{d}/u.sock\"\n"
        ),
    )
    .unwrap();
    let _p = Proc::roost("proxy", &cfg, "proxy");
    wait_for(Duration::from_secs(20), "roost proxy to listen", || TcpStream::connect(("127.0.0.1", port)).is_ok());
    let r = request("127.0.0.41", port, "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert_eq!(r.status, 403);
    assert!(r.body.contains("One moment"));
    assert_eq!(metric(metrics, "roost_proxy_redis_up"), Some(0.0));
}

#[test]
fn oversized_headers_and_slow_clients_are_cut_off() {
    let w = Waffles::start(&redis(), "");
    let big = format!("X-Big: {}\r\n", "a".repeat(16 * 1024));
    assert_eq!(w.get("127.0.0.51", "/", &big).status, 431);
    // far past the limit
    let huge = format!("X-Huge: {}\r\n", "b".repeat(2 * 1024 * 1024));
    let s = connect_from("127.0.0.51", w.port);
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut s = s;
    let _ = s.write_all(format!("GET / HTTP/1.1\r\nHost: x\r\n{huge}\r\n").as_bytes());
    let r = read_response(&mut s);
    // bounded before it is buffered: refused once max_header_bytes have arrived
    assert_eq!(r.status, 431, "{r:?}");

    // a header dribbled slower than client_timeout (2 s): cut off
    let mut s = connect_from("127.0.0.52", w.port);
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").unwrap();
    let t = Instant::now();
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "the connection is closed");
    assert!(t.elapsed() < Duration::from_secs(5), "cut off after {:?}", t.elapsed());

    // a body that stops arriving (where the proxy reads it, its own endpoint): 408
    let mut s = connect_from("127.0.0.53", w.port);
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"POST /.roost/verify HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nt=only+ten").unwrap();
    let r = read_response(&mut s);
    assert_eq!(r.status, 408, "{r:?}");
    // the proxy is still fine
    assert_eq!(w.get("127.0.0.54", "/", "").status, 200);
}

#[test]
fn a_real_chromium_solves_the_javascript_challenge() {
    let w = Waffles::start(&redis(), "");
    // Chromium connects from 127.0.0.1
    w.set("127.0.0.1", Class::Dubious, -0.3);
    wait_for(Duration::from_secs(5), "the verdict to arrive", || w.get("127.0.0.1", "/", "").status == 403);
    let profile = tempfile::tempdir().unwrap();
    let out = Command::new("/usr/bin/chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--virtual-time-budget=30000",
            "--timeout=60000",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("--dump-dom")
        .arg(format!("http://127.0.0.1:{}/welcome?from=chromium", w.port))
        .output()
        .expect("chromium (Debian package chromium; scripts/install-test-deps.sh installs it)");
    let dom = String::from_utf8_lossy(&out.stdout);
    assert!(
        dom.contains("verdict=[dubious; cleared]") && dom.contains("uri=[/welcome?from=chromium]"),
        "Chromium did not reach the app:\n{dom}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let log = std::fs::read_to_string(&w.log).unwrap();
    assert!(log.contains("route=challenge challenge=passed "), "{log}");
    assert!(log.contains("HeadlessChrome"), "{log}");
}

/// A self-signed certificate for `name` (openssl, Debian's), as (cert, key) paths.
fn cert(dir: &Path, file: &str, name: &str) -> (PathBuf, PathBuf) {
    let (c, k) = (dir.join(format!("{file}.pem")), dir.join(format!("{file}.key")));
    let ok = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-keyout"])
        .arg(&k)
        .arg("-out")
        .arg(&c)
        .args(["-subj", &format!("/CN={name}"), "-addext", &format!("subjectAltName=DNS:{name}")])
        .output()
        .unwrap();
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    (c, k)
}

/// curl (Debian's) to the TLS listener, verifying against `ca`: (HTTP version, body).
fn curl_tls(port: u16, host: &str, ca: &Path, extra: &[&str]) -> (String, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "--resolve", &format!("{host}:{port}:127.0.0.1"), "--cacert"])
        .arg(ca)
        .args(extra)
        .args(["-w", "\n%{http_version}", &format!("https://{host}:{port}/tls")])
        .output()
        .unwrap();
    assert!(out.status.success(), "curl {host}: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, version) = text.rsplit_once('\n').unwrap();
    (version.to_owned(), body.to_owned())
}

#[test]
fn tls_with_sni_http2_and_h2c() {
    let certs = tempfile::tempdir().unwrap();
    let (shop_c, shop_k) = cert(certs.path(), "shop", "shop.test");
    let (api_c, api_k) = cert(certs.path(), "api", "*.api.test");
    let tls_port = free_port();
    let extra = format!(
        "h2c = true\ntls = [{{ listen = \"127.0.0.1:{tls_port}\", certs = [{{ cert = \"{}\", key = \"{}\" }}, {{ cert = \"{}\", key = \"{}\" }}] }}]\n",
        shop_c.display(),
        shop_k.display(),
        api_c.display(),
        api_k.display()
    );
    let w = Waffles::start(&redis(), &extra);
    wait_for(Duration::from_secs(10), "the TLS listener", || TcpStream::connect(("127.0.0.1", tls_port)).is_ok());
    // SNI picks the certificate: each name verifies only against its own
    let (v, body) = curl_tls(tls_port, "shop.test", &shop_c, &["--http1.1"]);
    assert_eq!(v, "1.1");
    assert!(body.contains("verdict=[good]"), "{body}");
    let (v, body) = curl_tls(tls_port, "v1.api.test", &api_c, &["--http2"]);
    assert_eq!(v, "2", "HTTP/2 by ALPN");
    assert!(body.contains("verdict=[good]"), "{body}");
    // a name no certificate has: the first (default) one is served, which curl refuses for it
    let wrong = Command::new("curl")
        .args(["-sS", "--max-time", "10", "--resolve", &format!("other.test:{tls_port}:127.0.0.1"), "--cacert"])
        .arg(&api_c)
        .arg(format!("https://other.test:{tls_port}/"))
        .output()
        .unwrap();
    assert!(!wrong.status.success());
    // a challenge solved over TLS sets a Secure cookie (and over plain HTTP none that is)
    w.set("127.0.0.1", Class::Dubious, -0.2);
    wait_for(Duration::from_secs(5), "the verdict", || w.get("127.0.0.1", "/", "").status == 403);
    let tls = |args: &[&str], path: &str| {
        let out = Command::new("curl")
            .args([
                "-sS",
                "-i",
                "--http1.1",
                "--max-time",
                "10",
                "--resolve",
                &format!("shop.test:{tls_port}:127.0.0.1"),
            ])
            .arg("--cacert")
            .arg(&shop_c)
            .args(args)
            .arg(format!("https://shop.test:{tls_port}{path}"))
            .output()
            .unwrap();
        assert!(out.status.success(), "curl: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let page = tls(&[], "/");
    assert!(page.starts_with("HTTP/1.1 403"), "{page}");
    let (token, n) = (field(&page, "t"), solve(&field(&page, "t"), bits(&page)).to_string());
    let passed = tls(&["--data", &form(&[("t", &token), ("n", &n), ("r", "/")])], "/.roost/verify");
    let set = passed
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("set-cookie: roost_clearance="))
        .unwrap_or_else(|| panic!("no clearance cookie: {passed}"));
    assert!(set.contains("; Secure"), "{set}");
    let page = w.get("127.0.0.1", "/", "");
    let (token, n) = (field(&page.body, "t"), solve(&field(&page.body, "t"), bits(&page.body)).to_string());
    let plain = post_form(&w, "127.0.0.1", &form(&[("t", &token), ("n", &n), ("r", "/")]));
    assert!(!plain.header("set-cookie").unwrap().contains("Secure"), "{plain:?}");
    // h2c: HTTP/2 with prior knowledge on the plain listener
    let out = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "10",
            "--http2-prior-knowledge",
            "-o",
            "/dev/null",
            "-w",
            "%{http_version} %{http_code}",
        ])
        .arg(format!("http://127.0.0.1:{}/", w.port))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "2 403");
}

#[test]
fn unhealthy_upstreams_are_left_out_of_the_rotation() {
    let dead = free_port();
    let w = Waffles::start_with(
        &redis(),
        "[proxy.health_check]\ninterval = \"200ms\"\npath = \"/health\"\n",
        Some(&|up| format!("[\"127.0.0.1:{up}\", \"127.0.0.1:{dead}\"]")),
    );
    wait_for(Duration::from_secs(10), "the dead upstream to be marked down", || {
        let body = http_get(w.metrics, "/metrics").unwrap_or_default();
        body.contains(&format!("roost_proxy_upstream_healthy{{upstream=\"127.0.0.1:{dead}\"}} 0"))
    });
    for i in 0..20 {
        let r = w.get("127.0.0.61", &format!("/n{i}"), "");
        assert_eq!(r.status, 200, "request {i} went to the dead upstream: {r:?}");
    }
}

#[test]
fn a_graceful_upgrade_hands_the_listeners_over_without_refusing_a_request() {
    let w = Waffles::start(&redis(), "grace_period = \"1s\"\nshutdown_timeout = \"2s\"\n");
    let old_pid = w._proc.pid();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let client = {
        let (stop, port) = (stop.clone(), w.port);
        std::thread::spawn(move || {
            let (mut ok, mut failed) = (0u32, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let r = request("127.0.0.71", port, "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
                if r.status == 200 {
                    ok += 1
                } else {
                    failed.push(r.status)
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            (ok, failed)
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    let mut c = Command::new(env!("CARGO_BIN_EXE_roost"));
    c.arg("--config").arg(&w.cfg).arg("proxy").arg("--upgrade").env("ROOST_LOG", "info");
    let mut new = Proc::spawn("proxy-new", c);
    // the new process listens on the upgrade socket for the old one's listeners
    let sock = w.cfg.parent().unwrap().join("upgrade.sock");
    wait_for(Duration::from_secs(10), "the new proxy to listen on the upgrade socket", || {
        std::fs::read_to_string("/proc/net/unix").unwrap_or_default().contains(sock.to_str().unwrap())
    });
    Command::new("kill").args(["-QUIT", &old_pid.to_string()]).status().unwrap();
    wait_for(Duration::from_secs(15), "the old proxy to exit", || {
        !Path::new(&format!("/proc/{old_pid}")).exists()
            || std::fs::read_to_string(format!("/proc/{old_pid}/stat")).is_ok_and(|s| s.contains(") Z "))
    });
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, failed) = client.join().unwrap();
    assert!(new.running(), "the new proxy serves on");
    assert!(ok > 50, "{ok} requests");
    assert!(failed.is_empty(), "refused or failed during the upgrade: {failed:?}");
    assert_eq!(w.get("127.0.0.72", "/", "").status, 200);
}

/// Every response on a connection the proxy closed, split at each status line.
fn responses(from: &str, port: u16, raw: &[u8]) -> Vec<String> {
    let mut s = connect_from(from, port);
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(raw).unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf).into_owned();
    text.split("HTTP/1.1 ").filter(|p| !p.is_empty()).map(str::to_owned).collect()
}

#[test]
fn requests_framed_ambiguously_are_refused_and_counted_and_nothing_is_smuggled() {
    let w = Waffles::start(&redis(), "");
    // (what it is, the request, the refusal counted)
    let cases: &[(&str, &str, &str)] = &[
        (
            "CL.TE",
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 35\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
            "both_lengths",
        ),
        (
            "TE.CL",
            "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n23\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n\r\n0\r\n\r\n",
            "both_lengths",
        ),
        (
            "TE.TE xchunked",
            "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
            "bad_transfer_encoding",
        ),
        (
            "TE.TE two fields",
            "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n0\r\n\r\n",
            "bad_transfer_encoding",
        ),
        (
            "TE.TE list",
            "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: identity, chunked\r\n\r\n0\r\n\r\n",
            "bad_transfer_encoding",
        ),
        (
            "TE.TE quoted",
            "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: \"chunked\"\r\n\r\n0\r\n\r\n",
            "bad_transfer_encoding",
        ),
        (
            "TE.TE underscore",
            "POST / HTTP/1.1\r\nHost: x\r\nTransfer_Encoding: chunked\r\n\r\n0\r\n\r\n",
            "bad_transfer_encoding",
        ),
        (
            "TE.TE space before colon",
            "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
            "malformed",
        ),
        (
            "TE.TE folded",
            "POST / HTTP/1.1\r\nHost: x\r\nX-A: b\r\n Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            "malformed",
        ),
        ("TE in HTTP/1.0", "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", "bad_transfer_encoding"),
        (
            "CL.CL",
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 40\r\n\r\nabc",
            "duplicate_length",
        ),
        (
            "CL.CL equal",
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
            "duplicate_length",
        ),
        ("CL list", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3, 3\r\n\r\nabc", "bad_length"),
        ("CL sign", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +3\r\n\r\nabc", "bad_length"),
        (
            "chunk size negative",
            "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n-3\r\nabc\r\n0\r\n\r\n",
            "bad_chunk",
        ),
        (
            "chunk size 0x",
            "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0x3\r\nabc\r\n0\r\n\r\n",
            "bad_chunk",
        ),
        (
            "chunk size overflow",
            "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n10000000000000003\r\nabc\r\n0\r\n\r\n",
            "bad_chunk",
        ),
        (
            "chunk line bare LF",
            "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\nabc\r\n0\r\n\r\n",
            "bad_chunk",
        ),
        (
            "chunk extension bare LF",
            "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3;x\nGET /smuggled HTTP/1.1\r\nabc\r\n0\r\n\r\n",
            "bad_chunk",
        ),
        (
            "chunk data too long",
            "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcGET\r\n0\r\n\r\n",
            "bad_chunk",
        ),
        ("no Host", "GET / HTTP/1.1\r\n\r\n", "bad_host"),
        ("two Hosts", "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", "bad_host"),
        ("NUL in a value", "GET / HTTP/1.1\r\nHost: x\r\nX-A: a\0b\r\n\r\n", "malformed"),
    ];
    let mut want: std::collections::HashMap<&str, f64> = Default::default();
    for (what, raw, outcome) in cases {
        let got = responses("127.0.0.61", w.port, raw.as_bytes());
        assert_eq!(got.len(), 1, "{what}: one response and the connection closed: {got:?}");
        assert!(got[0].starts_with("400 "), "{what}: {got:?}");
        *want.entry(outcome).or_default() += 1.0;
    }
    for (outcome, n) in want {
        assert_eq!(w.metric(&format!("roost_proxy_refused_total{{outcome=\"{outcome}\"}}")), n, "{outcome}");
    }

    // Connection cannot name the length away (the body would reach the app as a request)
    let body = "GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n";
    let got = responses(
        "127.0.0.61",
        w.port,
        format!(
            "POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: Content-Length, close\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    );
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(got[0].contains(&format!("cl=[{}]", body.len())) && !got[0].contains("smuggled"), "{got:?}");

    // what is framed clearly goes through: a chunked body (re-chunked, extensions dropped), a
    // sized one, and pipelined requests each answered once, in order
    let got = responses(
        "127.0.0.62",
        w.port,
        b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nTrailer: x\r\n\r\n\
          POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello\
          GET /c HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(got.len(), 3, "{got:?}");
    for (r, uri) in got.iter().zip(["/a", "/b", "/c"]) {
        assert!(r.starts_with("200 ") && r.contains(&format!("uri=[{uri}]")), "{r}");
    }
    assert!(got[0].contains("te=[chunked]"), "{}", got[0]);
    assert!(got[1].contains("cl=[5]") && got[1].contains("te=[]"), "{}", got[1]);
    // the proxy is still fine
    assert_eq!(w.get("127.0.0.63", "/", "").status, 200);
}

/// A refused client that is still sending its body reads its 400 and a clean end: the proxy
/// shuts its side and drains what follows for a while (a lingering close) instead of closing
/// with unread input, which the kernel answers with a reset.
#[test]
fn a_refused_client_still_sending_reads_its_400_and_a_clean_close() {
    let w = Waffles::start(&redis(), "");
    let mut s = connect_from("127.0.0.64", w.port);
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // CL.TE: refused at the head, with 256 KiB of body still to come, a piece every 5 ms
    s.write_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 262144\r\nTransfer-Encoding: chunked\r\n\r\n").unwrap();
    let mut writer = s.try_clone().unwrap();
    let sending = std::thread::spawn(move || {
        for _ in 0..64 {
            writer.write_all(&[b'a'; 4096])?;
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok::<_, std::io::Error>(())
    });
    let mut buf = Vec::new();
    let read = s.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    assert!(read.is_ok(), "the connection ended with {read:?} after {text:?}");
    assert!(text.starts_with("HTTP/1.1 400 "), "{text}");
    sending.join().unwrap().expect("the body was taken to its end");
    assert_eq!(w.metric("roost_proxy_refused_total{outcome=\"both_lengths\"}"), 1.0);
}

#[test]
fn internal_headers_in_any_spelling_and_connection_named_headers_do_not_reach_the_app() {
    let w = Waffles::start(&redis(), "");
    // the app's nginx folds `_` into `-` (underscores_in_headers on), as many servers do
    let r = w.get(
        "127.0.0.64",
        "/",
        "X_Roost_Verdict: spoofed1\r\nx-roost-verdict: spoofed2\r\nX-ROOST_VERDICT: spoofed3\r\nX-Secret: hop\r\nKeep-Alive: timeout=5\r\nConnection: X-Secret\r\n",
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.body.contains("verdict=[good]") && !r.body.contains("spoofed"), "{}", r.body);
    assert!(r.body.contains("secret=[]"), "{}", r.body);
    // nor a forwarding chain in a spelling the app's server folds into X-Forwarded-For
    let r = w.get("127.0.0.64", "/", "X_Forwarded_For: 198.51.100.66\r\n");
    assert!(r.body.contains("xff=[127.0.0.64]"), "{}", r.body);
    // without Connection naming it, the same field is the app's
    let r = w.get("127.0.0.64", "/", "X-Secret: end-to-end\r\n");
    assert!(r.body.contains("secret=[end-to-end]"), "{}", r.body);
}

#[test]
fn a_header_dribbled_a_byte_at_a_time_is_cut_at_the_total_deadline() {
    // client_timeout 2 s: each byte comes sooner than that, the whole head never does
    let w = Waffles::start(&redis(), "");
    let mut s = connect_from("127.0.0.65", w.port);
    s.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    let t = Instant::now();
    let head = b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    let mut sent = 0;
    let mut closed = false;
    for b in head {
        if s.write_all(&[*b]).is_err() {
            closed = true;
            break;
        }
        sent += 1;
        let mut buf = [0u8; 64];
        match s.read(&mut buf) {
            Ok(0) => {
                closed = true;
                break;
            }
            Ok(_) => panic!("an answer to half a head"),
            Err(_) => {}
        }
        std::thread::sleep(Duration::from_millis(200));
        if t.elapsed() > Duration::from_secs(8) {
            break;
        }
    }
    assert!(closed, "still open after {sent} bytes and {:?}", t.elapsed());
    assert!(sent >= 5, "cut after {sent} bytes: the deadline is total, not per byte");
    assert!(t.elapsed() < Duration::from_secs(4), "cut off after {:?}", t.elapsed());
}

#[test]
fn a_solution_redeemed_at_one_proxy_is_refused_at_every_other_and_one_client_cannot_stop_another() {
    let a = Waffles::start(&redis(), "");
    let b = Waffles::start_in(&redis(), "", None, false, Some(&a.prefix));
    for ip in ["127.0.0.71", "127.0.0.72", "127.0.0.73"] {
        a.set(ip, Class::Dubious, 0.0);
    }
    for w in [&a, &b] {
        wait_for(Duration::from_secs(5), "the verdicts to arrive", || w.get("127.0.0.73", "/", "").status == 403);
    }
    let solved = |w: &Waffles, ip: &str| {
        let page = w.get(ip, "/", "");
        let token = field(&page.body, "t");
        let n = solve(&token, bits(&page.body)).to_string();
        form(&[("t", &token), ("n", &n), ("r", "/")])
    };
    // redeemed at b, then replayed at a (which has never seen it): refused, by Redis
    let f = solved(&a, "127.0.0.71");
    assert_eq!(post_form(&b, "127.0.0.71", &f).status, 303);
    let replay = post_form(&a, "127.0.0.71", &f);
    assert_eq!(replay.status, 403, "{replay:?}");
    assert!(replay.body.contains("did not go through"));

    // one client redeems as many solutions as it may hold at once, and more: it alone is
    // refused (429), and another client redeems as before
    let mut busy = 0;
    for _ in 0..(roost_proxy::challenge::ReplayGuard::PER_CLIENT + 2) {
        match post_form(&a, "127.0.0.72", &solved(&a, "127.0.0.72")).status {
            303 => {}
            429 => busy += 1,
            s => panic!("{s}"),
        }
    }
    assert_eq!(busy, 2);
    assert_eq!(post_form(&a, "127.0.0.73", &solved(&a, "127.0.0.73")).status, 303);
}

/// curl over h2c (HTTP/2 with prior knowledge) from 127.0.0.70: ("2 <status>", head and body).
fn h2c(port: u16, args: &[&str], path: &str, stdin: Option<&[u8]>) -> (String, String) {
    let mut c = Command::new("curl");
    c.args(["-sS", "-i", "--max-time", "10", "--http2-prior-knowledge", "--interface", "127.0.0.70"])
        .args(["-w", "\n%{http_version} %{http_code}"])
        .args(args)
        .arg(format!("http://127.0.0.1:{port}{path}"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = c.spawn().unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(b) = stdin {
        input.write_all(b).unwrap();
    }
    drop(input);
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "curl {args:?} {path}: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (resp, status) = text.rsplit_once('\n').unwrap();
    (status.to_owned(), resp.to_owned())
}

#[test]
fn http2_streams_get_the_same_decisions_and_the_apps_whole_responses() {
    let w = Waffles::start(&redis(), "h2c = true\n");
    let port = w.port;
    // the app gets the verdict and forwarding chain set here, whatever the client claims, and
    // the client's cookies in one field
    let (s, r) = h2c(
        port,
        &["-H", "x-roost-verdict: forged1", "-H", "x_roost_verdict: forged2", "-H", "x-forwarded-for: 10.9.9.9"],
        "/a?b=c",
        None,
    );
    assert_eq!(s, "2 200", "{r}");
    assert!(r.contains("verdict=[good] xff=[127.0.0.70] uri=[/a?b=c]") && !r.contains("forged"), "{r}");
    let (_, r) = h2c(port, &["-H", "cookie: a=1", "-H", "cookie: b=2"], "/", None);
    assert!(r.contains("cookie=[a=1; b=2]"), "{r}");
    // a body of declared length, and one of none (chunked to the app)
    let (s, r) = h2c(port, &["--data-binary", "hello=world"], "/post", None);
    assert_eq!(s, "2 200", "{r}");
    assert!(r.contains("te=[] cl=[11]"), "{r}");
    let (s, r) = h2c(port, &["-T", "-"], "/put", Some(&[b'x'; 100_000]));
    assert_eq!(s, "2 200", "{r}");
    assert!(r.contains("te=[chunked] cl=[]"), "{r}");
    // the app's responses past the first flow-control window, by length and chunked, whole
    let big = big_body();
    for (args, framing) in [(&[][..], "by length"), (&["--compressed"][..], "chunked (gzip)")] {
        let (s, r) = h2c(port, args, "/big.txt", None);
        assert_eq!(s, "2 200", "{framing}");
        let body = r.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        assert!(body == big, "{framing}: {} bytes of {}", body.len(), big.len());
    }
    // a head past max_header_bytes: 431, counted
    // (the series appears with its first refusal; the count after must be there)
    let refused = metric(w.metrics, "roost_proxy_refused_total{outcome=\"header_too_large\"}").unwrap_or(0.0);
    let (s, _) = h2c(port, &["-H", &format!("x-big: {}", "a".repeat(9000))], "/", None);
    assert_eq!(s, "2 431");
    assert_eq!(w.metric("roost_proxy_refused_total{outcome=\"header_too_large\"}"), refused + 1.0);
    // a dubious client is challenged, solves it over HTTP/2, and reaches the app with its cookie
    w.set("127.0.0.70", Class::Dubious, -0.2);
    wait_for(Duration::from_secs(5), "the verdict", || h2c(port, &[], "/", None).0 == "2 403");
    let (_, page) = h2c(port, &[], "/shop", None);
    assert!(page.contains("content-security-policy:"), "{page}");
    let (token, n) = (field(&page, "t"), solve(&field(&page, "t"), bits(&page)).to_string());
    let (s, passed) =
        h2c(port, &["--data", &form(&[("t", &token), ("n", &n), ("r", "/shop")])], "/.roost/verify", None);
    assert_eq!(s, "2 303", "{passed}");
    let cookie = passed
        .lines()
        .find_map(|l| l.strip_prefix("set-cookie: "))
        .unwrap_or_else(|| panic!("no clearance cookie: {passed}"))
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let (s, r) = h2c(port, &["-b", &cookie], "/shop", None);
    assert_eq!(s, "2 200", "{r}");
    assert!(r.contains("verdict=[dubious; cleared]"), "{r}");
    // the same solution again: refused (replayed), a fresh challenge
    let (s, _) = h2c(port, &["--data", &form(&[("t", &token), ("n", &n), ("r", "/shop")])], "/.roost/verify", None);
    assert_eq!(s, "2 403");
    // a bad client: the error page
    w.set("127.0.0.70", Class::Bad, -0.9);
    wait_for(Duration::from_secs(5), "the verdict", || {
        let (s, r) = h2c(port, &[], "/", None);
        s == "2 403" && !r.contains("One moment")
    });
    // every stream is in the access log as HTTP/2.0
    wait_for(Duration::from_secs(5), "the access log", || {
        std::fs::read_to_string(&w.log).is_ok_and(|l| l.contains("\"GET /a?b=c HTTP/2.0\" 200"))
    });
    // no upstream to be had: 502
    let dead = free_port();
    let w = Waffles::start_with(&redis(), "h2c = true\n", Some(&|_| format!("[\"127.0.0.1:{dead}\"]")));
    let (s, _) = h2c(w.port, &[], "/", None);
    assert_eq!(s, "2 502");
}

#[test]
fn an_idle_or_silent_http2_connection_gets_a_goaway_and_is_closed() {
    let w = Waffles::start(&redis(), "h2c = true\nkeepalive_timeout = \"1s\"\n");
    // the preface and empty SETTINGS, then nothing: no stream, no SETTINGS ack, no PING answer
    let mut s = connect_from("127.0.0.71", w.port);
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0").unwrap();
    let t = Instant::now();
    let mut got = Vec::new();
    s.read_to_end(&mut got).expect("the proxy closes the connection (not a read timeout)");
    let mut types = Vec::new();
    let mut at = 0;
    while at + 9 <= got.len() {
        let len = (usize::from(got[at]) << 16) | (usize::from(got[at + 1]) << 8) | usize::from(got[at + 2]);
        types.push(got[at + 3]);
        at += 9 + len;
    }
    assert!(types.contains(&7), "a GOAWAY (frame type 7) before the close: {types:?}");
    // idle 1 s (keepalive_timeout), then client_timeout (2 s) for the GOAWAY to be honoured
    assert!(t.elapsed() < Duration::from_secs(8), "closed after {:?}", t.elapsed());
}

/// An HTTP/2 frame.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let n = payload.len();
    let mut f = vec![(n >> 16) as u8, (n >> 8) as u8, n as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// The next frame off `s` (`buf` holds what was read past it): kind, flags, stream, payload.
fn read_frame(s: &mut TcpStream, buf: &mut Vec<u8>) -> (u8, u8, u32, Vec<u8>) {
    loop {
        if buf.len() >= 9 {
            let n = (usize::from(buf[0]) << 16) | (usize::from(buf[1]) << 8) | usize::from(buf[2]);
            if buf.len() >= 9 + n {
                let (kind, flags, stream) =
                    (buf[3], buf[4], u32::from_be_bytes([buf[5] & 0x7f, buf[6], buf[7], buf[8]]));
                let payload = buf[9..9 + n].to_vec();
                buf.drain(..9 + n);
                return (kind, flags, stream, payload);
            }
        }
        let mut chunk = [0u8; 16384];
        let got = s.read(&mut chunk).expect("the proxy's frames");
        assert!(got > 0, "the proxy closed the connection");
        buf.extend_from_slice(&chunk[..got]);
    }
}

/// Reads frames until stream `id` ends; returns its DATA payloads.
fn h2_body(s: &mut TcpStream, id: u32) -> Vec<u8> {
    let (mut body, mut buf) = (Vec::new(), Vec::new());
    loop {
        let (kind, flags, stream, payload) = read_frame(s, &mut buf);
        if stream != id {
            continue;
        }
        assert!(kind != 3, "stream {id} reset");
        if kind == 0 {
            body.extend_from_slice(&payload);
        }
        if matches!(kind, 0 | 1) && flags & 0x1 != 0 {
            return body;
        }
    }
}

#[test]
fn an_empty_http2_data_frame_does_not_end_the_body_the_app_gets() {
    // the app: records what each connection brings, answers once a chunked body has ended
    let app = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let app_port = app.local_addr().unwrap().port();
    let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
    std::thread::spawn(move || {
        for c in app.incoming().take(50) {
            let Ok(mut c) = c else { continue };
            let tx = tx.clone();
            std::thread::spawn(move || {
                c.set_read_timeout(Some(Duration::from_millis(1500))).unwrap();
                let (mut got, mut buf, mut answered) = (Vec::new(), [0u8; 4096], false);
                while let Ok(n @ 1..) = c.read(&mut buf) {
                    got.extend_from_slice(&buf[..n]);
                    if !answered && got.ends_with(b"0\r\n\r\n") {
                        answered = true;
                        let _ = c.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok\n");
                    }
                }
                let _ = tx.send(got);
            });
        }
    });
    let w = Waffles::start_with(&redis(), "h2c = true\n", Some(&|_| format!("[\"127.0.0.1:{app_port}\"]")));
    let mut s = connect_from("127.0.0.72", w.port);
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // HPACK by hand: POST from the static table, :scheme http, :path and :authority as literals
    let mut head = vec![0x83, 0x86, 0x04, 5];
    head.extend_from_slice(b"/post");
    head.extend_from_slice(&[0x01, 9]);
    head.extend_from_slice(b"localhost");
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(frame(4, 0, 0, &[]));
    // no length declared (chunked to the app), empty DATA frames amid the body and at its end
    // (as curl ends an upload of unknown length)
    out.extend(frame(1, 0x4, 1, &head));
    out.extend(frame(0, 0, 1, b"abc"));
    out.extend(frame(0, 0, 1, b""));
    out.extend(frame(0, 0, 1, b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"));
    out.extend(frame(0, 0x1, 1, b""));
    s.write_all(&out).unwrap();
    assert_eq!(h2_body(&mut s, 1), b"ok\n");
    // the connection that brought the POST: its body ended once, at its end
    let t = Instant::now();
    let got = loop {
        let got = rx.recv_timeout(Duration::from_secs(10)).expect("the app's connection");
        if got.starts_with(b"POST ") {
            break String::from_utf8_lossy(&got).into_owned();
        }
        assert!(t.elapsed() < Duration::from_secs(10), "no POST reached the app");
    };
    let body = got.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    assert_eq!(body, "3\r\nabc\r\n23\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n\r\n0\r\n\r\n", "{got}");
}

/// Reads one response (framed by Content-Length) off a kept connection: its body.
fn read_one(s: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut byte).expect("a response head"), 1, "the proxy closed the connection");
        buf.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&buf).to_ascii_lowercase();
    let n: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no length: {head}"));
    let mut body = vec![0u8; n];
    s.read_exact(&mut body).unwrap();
    String::from_utf8_lossy(&body).into_owned()
}

#[test]
fn what_the_app_sends_on_an_idle_kept_connection_never_answers_the_next_request() {
    // the app: answers a connection's first request, then sends a response nobody asked for
    let app = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let app_port = app.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for c in app.incoming().take(50) {
            let Ok(mut c) = c else { continue };
            std::thread::spawn(move || {
                c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                let (mut got, mut buf) = (Vec::new(), [0u8; 4096]);
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match c.read(&mut buf) {
                        Ok(n @ 1..) => got.extend_from_slice(&buf[..n]),
                        _ => return,
                    }
                }
                let _ = c.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nfirst\n");
                std::thread::sleep(Duration::from_millis(100));
                let _ = c.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nstale\n");
                std::thread::sleep(Duration::from_secs(3));
            });
        }
    });
    let w = Waffles::start_with(&redis(), "h2c = true\n", Some(&|_| format!("[\"127.0.0.1:{app_port}\"]")));
    // HTTP/1: the connection bound to the client
    let mut s = connect_from("127.0.0.73", w.port);
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    for path in ["/a", "/b"] {
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: shop.example\r\n\r\n").as_bytes()).unwrap();
        assert_eq!(read_one(&mut s), "first\n", "{path}");
        std::thread::sleep(Duration::from_millis(400));
    }
    // HTTP/2: the connections kept per worker
    for path in ["/c", "/d"] {
        let (st, r) = h2c(w.port, &[], path, None);
        assert_eq!(st, "2 200", "{r}");
        assert!(r.ends_with("\r\n\r\nfirst\n"), "{path}: {r}");
        std::thread::sleep(Duration::from_millis(400));
    }
}

/// An app that never finishes an answer: it sends nothing, or for `/partial` a head and 3 of
/// the 100 bytes it declares. It counts the requests it has read and the connections still open
/// to it (one the proxy closes, or resets, is no longer open).
struct SilentApp {
    port: u16,
    requests: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    open: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl SilentApp {
    fn start() -> SilentApp {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let app = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = app.local_addr().unwrap().port();
        let (requests, open) = (std::sync::Arc::new(AtomicUsize::new(0)), std::sync::Arc::new(AtomicUsize::new(0)));
        let (r, o) = (requests.clone(), open.clone());
        std::thread::spawn(move || {
            for c in app.incoming().take(200) {
                let Ok(mut c) = c else { continue };
                let (r, o) = (r.clone(), o.clone());
                o.fetch_add(1, Ordering::SeqCst);
                std::thread::spawn(move || {
                    // longer than the test waits for the proxy to close it
                    c.set_read_timeout(Some(Duration::from_secs(40))).unwrap();
                    let (mut got, mut buf, mut counted) = (Vec::new(), [0u8; 4096], false);
                    while let Ok(n @ 1..) = c.read(&mut buf) {
                        got.extend_from_slice(&buf[..n]);
                        if !counted && got.windows(4).any(|w| w == b"\r\n\r\n") {
                            counted = true;
                            if got.starts_with(b"GET /partial ") {
                                let _ = c.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nabc");
                            }
                            r.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                    o.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        SilentApp { port, requests, open }
    }

    /// One, and a proxy in front of it with `extra` in `[proxy]`, its answer awaited for
    /// `upstream_timeout`.
    fn behind_proxy(extra: &str, upstream_timeout: &str) -> (SilentApp, Waffles) {
        let app = SilentApp::start();
        let extra = format!("{extra}upstream_timeout = \"{upstream_timeout}\"\n");
        let w = Waffles::start_with(&redis(), &extra, Some(&|_| format!("[\"127.0.0.1:{}\"]", app.port)));
        (app, w)
    }

    fn requests(&self) -> usize {
        self.requests.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn open(&self) -> usize {
        self.open.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Waits until the proxy has closed every connection to the app, then checks that it
    /// counted `abandoned` requests whose client went away and logged `logged` of them as 499
    /// (nginx's "client closed the request").
    fn all_let_go(&self, w: &Waffles, abandoned: usize, logged: usize) {
        wait_for(Duration::from_secs(10), "the app connections of the clients gone closed", || self.open() == 0);
        assert_eq!(w.metric("roost_proxy_abandoned_total"), abandoned as f64);
        wait_for(Duration::from_secs(10), "a 499 line per request abandoned", || {
            std::fs::read_to_string(&w.log).unwrap_or_default().matches("\" 499 ").count() == logged
        });
    }
}

/// An h2c connection to the proxy, its preface and SETTINGS sent.
fn h2c_connection(from: &str, port: u16) -> TcpStream {
    let mut s = connect_from(from, port);
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(frame(4, 0, 0, &[]));
    s.write_all(&out).unwrap();
    s
}

/// HEADERS of `GET path` on stream `id`, the request's end with it (HPACK by hand: GET and
/// :scheme http from the static table, :path and :authority as literals).
fn h2_get(id: u32, path: &str) -> Vec<u8> {
    let mut head = vec![0x82, 0x86, 0x04, path.len() as u8];
    head.extend_from_slice(path.as_bytes());
    head.extend_from_slice(&[0x01, 9]);
    head.extend_from_slice(b"localhost");
    frame(1, 0x4 | 0x1, id, &head)
}

/// Reads frames until a DATA frame of stream `id` with something in it; returns that.
fn h2_data(s: &mut TcpStream, id: u32) -> Vec<u8> {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = Vec::new();
    loop {
        let (kind, _, stream, payload) = read_frame(s, &mut buf);
        assert!(!(stream == id && kind == 3), "stream {id} reset");
        if stream == id && kind == 0 && !payload.is_empty() {
            return payload;
        }
    }
}

#[test]
fn a_client_that_resets_its_streams_or_goes_away_takes_the_app_connections_with_it() {
    // the app's answer awaited for a minute: what is closed sooner is closed for the client
    let (app, w) = SilentApp::behind_proxy("h2c = true\n", "60s");
    // "rapid reset": each stream opened, and reset once the app has its request; the app is
    // never left more than one request at a time
    let mut s = h2c_connection("127.0.0.73", w.port);
    const RESETS: usize = 30;
    for i in 0..RESETS {
        let id = 2 * i as u32 + 1;
        s.write_all(&h2_get(id, "/slow")).unwrap();
        wait_for(Duration::from_secs(10), "the app to get the request", || app.requests() == i + 1);
        // RST_STREAM, CANCEL
        s.write_all(&frame(3, 0, id, &8u32.to_be_bytes())).unwrap();
        wait_for(Duration::from_secs(10), "the reset stream's app connection closed", || app.open() == 0);
    }
    assert_eq!(w.metric("roost_proxy_abandoned_total"), RESETS as f64);
    // reset with the app's response under way
    let id = 2 * RESETS as u32 + 1;
    s.write_all(&h2_get(id, "/partial")).unwrap();
    assert_eq!(h2_data(&mut s, id), b"abc");
    s.write_all(&frame(3, 0, id, &8u32.to_be_bytes())).unwrap();
    wait_for(Duration::from_secs(10), "the app connection of a response under way closed", || app.open() == 0);
    assert_eq!(w.metric("roost_proxy_abandoned_total"), (RESETS + 1) as f64);
    // the connection still serves: one more request, still awaited
    s.write_all(&h2_get(id + 2, "/slow")).unwrap();
    wait_for(Duration::from_secs(10), "the app to get one more request", || app.requests() == RESETS + 2);
    assert_eq!(app.open(), 1);

    // a client with streams in flight whose connection ends: every app connection goes with it
    let mut s2 = h2c_connection("127.0.0.74", w.port);
    for i in 0..10u32 {
        s2.write_all(&h2_get(2 * i + 1, "/slow")).unwrap();
    }
    wait_for(Duration::from_secs(10), "the app to get the ten requests", || app.requests() == RESETS + 12);
    assert_eq!(app.open(), 11);
    drop(s2);
    drop(s);
    // (the one reset with its response under way is logged with the app's status)
    app.all_let_go(&w, RESETS + 12, RESETS + 11);
}

#[test]
fn an_http1_client_that_closes_while_the_app_works_takes_the_app_connection_with_it() {
    let (app, w) = SilentApp::behind_proxy("", "60s");
    // each client sends a request and closes at once: the app is not left a request at work
    // for each (nginx closes them too, "client prematurely closed connection")
    const CLOSED: usize = 20;
    for i in 0..CLOSED {
        let mut s = connect_from("127.0.0.75", w.port);
        s.write_all(b"GET /slow HTTP/1.1\r\nHost: shop.example\r\n\r\n").unwrap();
        wait_for(Duration::from_secs(10), "the app to get the request", || app.requests() == i + 1);
        drop(s);
        wait_for(Duration::from_secs(10), "the closed client's app connection closed", || app.open() == 0);
    }
    // a client that sends its next request before the answer (pipelining) has not gone
    let mut s = connect_from("127.0.0.75", w.port);
    s.write_all(b"GET /slow HTTP/1.1\r\nHost: shop.example\r\n\r\n").unwrap();
    wait_for(Duration::from_secs(10), "the app to get the pipelining client's request", || {
        app.requests() == CLOSED + 1
    });
    s.write_all(b"GET /next HTTP/1.1\r\nHost: shop.example\r\n\r\n").unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(app.open(), 1, "the pipelining client's request still awaited");
    drop(s);
    app.all_let_go(&w, CLOSED + 1, CLOSED + 1);
}

#[test]
fn an_app_that_never_answers_gives_a_504_at_upstream_timeout_with_the_client_still_there() {
    let (app, w) = SilentApp::behind_proxy("", "1500ms");
    let t = Instant::now();
    let r = w.get("127.0.0.76", "/slow", "");
    let took = t.elapsed();
    assert_eq!(r.status, 504, "{}", r.head);
    assert!(took >= Duration::from_millis(1400) && took < Duration::from_secs(5), "504 after {took:?}");
    assert_eq!(app.requests(), 1);
    wait_for(Duration::from_secs(10), "the app connection closed", || app.open() == 0);
    assert_eq!(w.metric("roost_proxy_abandoned_total"), 0.0, "a client that waited is not one that left");
}
