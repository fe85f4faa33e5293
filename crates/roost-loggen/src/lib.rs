//! Synthetic access logs with ground truth, for tests, benchmarks and the demo.
//!
//! A population of clients — readers (some behind office NAT), a search-engine bot, and
//! attackers: vulnerability scanners, login brute-forcers, aggressive crawlers, slow-page
//! hammerers — each acts out its behaviour as a stream of requests; the streams are merged in
//! time order and written in the chosen log format. The same seed gives the same bytes.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io::{self, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use rand::prelude::*;
use rand_chacha::ChaCha8Rng;
use roost_event::Timestamp;
use serde::{Deserialize, Serialize};

/// What a client really is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Persona {
    Reader,
    /// Several readers behind one office NAT address.
    Office,
    SearchBot,
    Scanner,
    BruteForcer,
    Crawler,
    SlowHammerer,
}

impl Persona {
    pub fn is_attacker(self) -> bool {
        matches!(self, Persona::Scanner | Persona::BruteForcer | Persona::Crawler | Persona::SlowHammerer)
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Persona::Reader => "reader",
            Persona::Office => "office",
            Persona::SearchBot => "search_bot",
            Persona::Scanner => "scanner",
            Persona::BruteForcer => "brute_forcer",
            Persona::Crawler => "crawler",
            Persona::SlowHammerer => "slow_hammerer",
        }
    }
}

/// The log format to write.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// nginx `combined`.
    Combined,
    /// `combined` plus ` rt=$request_time` (see [`TIMED_LOG_FORMAT`]).
    Timed,
    /// nginx `escape=json` lines (see [`JSON_LOG_FORMAT`]).
    Json,
}

/// The nginx `log_format` that [`Format::Timed`] writes.
pub const TIMED_LOG_FORMAT: &str = r#"log_format timed '$remote_addr - $remote_user [$time_local] "$request" $status $body_bytes_sent "$http_referer" "$http_user_agent" rt=$request_time';"#;
/// The nginx `log_format` that [`Format::Json`] writes.
pub const JSON_LOG_FORMAT: &str = r#"log_format json escape=json '{"time_iso8601":"$time_iso8601","remote_addr":"$remote_addr","host":"$host","request":"$request","status":$status,"body_bytes_sent":$body_bytes_sent,"request_time":$request_time,"http_referer":"$http_referer","http_user_agent":"$http_user_agent"}';"#;

/// Who takes part, for how long.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Scenario {
    pub seed: u64,
    /// Unix seconds of the first request.
    pub start: i64,
    pub duration_s: i64,
    pub readers: usize,
    pub offices: usize,
    pub search_bots: usize,
    pub scanners: usize,
    pub brute_forcers: usize,
    pub crawlers: usize,
    pub slow_hammerers: usize,
    /// Share of readers on IPv6.
    pub ipv6_share: f64,
    /// Stop after this many lines (0: run the whole duration).
    pub max_lines: u64,
}

impl Scenario {
    /// The golden scenario: 30 minutes of a small site with every kind of attacker.
    pub fn golden(seed: u64) -> Scenario {
        Scenario {
            seed,
            start: 1_764_064_800,
            duration_s: 1800,
            readers: 400,
            offices: 6,
            search_bots: 2,
            scanners: 12,
            brute_forcers: 8,
            crawlers: 6,
            slow_hammerers: 6,
            ipv6_share: 0.15,
            max_lines: 0,
        }
    }

    /// About `lines` lines over an hour, with the golden mix of clients scaled up.
    pub fn sized(seed: u64, lines: u64) -> Scenario {
        // readers average ≈ 75 lines an hour; attackers add about a fifth on top
        let readers = ((lines as f64 / 90.0).ceil() as usize).max(10);
        let k = (readers as f64 / 400.0).max(0.05);
        let scale = |n: usize| ((n as f64 * k).round() as usize).max(1);
        Scenario {
            duration_s: 3600,
            readers,
            offices: scale(6),
            search_bots: scale(2),
            scanners: scale(12),
            brute_forcers: scale(8),
            crawlers: scale(6),
            slow_hammerers: scale(6),
            max_lines: lines,
            ..Scenario::golden(seed)
        }
    }
}

/// One generated request.
#[derive(Clone, Debug)]
pub struct Request {
    pub time_ms: i64,
    pub client: IpAddr,
    pub method: &'static str,
    pub target: String,
    pub status: u16,
    pub bytes: u32,
    pub request_time: f32,
    pub referer: Option<String>,
    pub user_agent: &'static str,
}

const BROWSERS: &[&str] = &[
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/130.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_6) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.0 Safari/605.1.15",
    "Mozilla/5.0 (X11; Linux x86_64; rv:132.0) Gecko/20100101 Firefox/132.0",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 18_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.0 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/130.0.0.0 Mobile Safari/537.36",
];
const SEARCH_BOT: &str = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)";
const SCANNER_UAS: &[&str] = &[
    "sqlmap/1.8.2#stable (https://sqlmap.org)",
    "Mozilla/5.00 (Nikto/2.5.0) (Evasions:None) (Test:000001)",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/130.0.0.0 Safari/537.36",
    "Nuclei - Open-source project (github.com/projectdiscovery/nuclei)",
    "Mozilla/5.0 zgrab/0.x",
    "python-requests/2.32.3",
];
const BRUTE_UAS: &[&str] = &[
    "python-requests/2.32.3",
    "curl/8.5.0",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/130.0.0.0 Safari/537.36",
    "Go-http-client/1.1",
];
const CRAWLER_UAS: &[&str] = &[
    "Scrapy/2.11.2 (+https://scrapy.org)",
    "python-requests/2.32.3",
    "Mozilla/5.0 (compatible; DataForSeoBot/1.0)",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/130.0.0.0 Safari/537.36",
];

const SCAN_PATHS: &[(&str, u16)] = &[
    ("/phpmyadmin/", 404),
    ("/phpMyAdmin/index.php", 404),
    ("/pma/", 404),
    ("/wp-login.php", 404),
    ("/xmlrpc.php", 404),
    ("/wp-admin/setup-config.php", 404),
    ("/.env", 404),
    ("/.env.production", 404),
    ("/.git/config", 403),
    ("/.git/HEAD", 403),
    ("/backup.zip", 404),
    ("/backup.sql", 404),
    ("/db.sql.gz", 404),
    ("/dump.sql", 404),
    ("/admin/", 404),
    ("/administrator/", 404),
    ("/cgi-bin/luci", 404),
    ("/cgi-bin/test.cgi", 404),
    ("/actuator/env", 404),
    ("/actuator/health", 404),
    ("/server-status", 403),
    ("/vendor/phpunit/phpunit/src/Util/PHP/eval-stdin.php", 404),
    ("/boaform/admin/formLogin", 404),
    ("/solr/admin/info/system", 404),
    ("/config.json", 404),
    ("/.aws/credentials", 404),
    ("/.DS_Store", 404),
    ("/web.config", 404),
    ("/owa/auth/logon.aspx", 404),
    ("/index.php?s=/Index/\\think\\app/invokefunction&function=call_user_func_array&vars[0]=md5&vars[1][]=x", 404),
    ("/admin", 301),
    ("/login.action", 404),
    ("/console/", 404),
    ("/manager/html", 404),
    ("/api/v1/pods", 404),
    ("/.well-known/security.txt", 404),
    ("/", 200),
    ("/robots.txt", 200),
    ("/hudson", 404),
    ("/jenkins/login", 404),
];
const TOPICS: &[&str] = &["rust", "kafka", "nginx", "bgp", "redis", "linux", "security", "ops", "sre", "http"];

/// A client acting out its role.
struct Actor {
    role: Persona,
    ip: IpAddr,
    ua: &'static str,
    rng: ChaCha8Rng,
    next_ms: i64,
    /// Persona-specific progress counter.
    step: u32,
    /// Requests queued to go out at `next_ms` and just after (a page's assets).
    burst: Vec<(i64, Request)>,
    logged_in: bool,
}

/// Addresses for generated clients come from ranges reserved for documentation and benchmarks
/// (RFC 2544's 198.18.0.0/15 and the three TEST-NETs), so no real host is ever shown as an
/// attacker in a demo or a test. 131,840 addresses (less the .0 and .255 of each /24); each client gets its own.
fn client_v4(rng: &mut ChaCha8Rng, used: &mut std::collections::HashSet<IpAddr>) -> IpAddr {
    const TEST_NETS: [u32; 3] = [0xC000_0200, 0xC633_6400, 0xCB00_7100]; // 192.0.2/24, 198.51.100/24, 203.0.113/24
    assert!(used.len() < 129_000, "scenario needs more IPv4 clients than the reserved ranges hold");
    loop {
        let n: u32 = rng.random_range(0..131_840);
        let bits = if n < 131_072 { 0xC612_0000 + n } else { TEST_NETS[((n - 131_072) / 256) as usize] + (n % 256) };
        let ip = IpAddr::V4(Ipv4Addr::from_bits(bits));
        let last = bits & 0xff;
        if last != 0 && last != 255 && used.insert(ip) {
            return ip;
        }
    }
}

fn v6_in_own_64(rng: &mut ChaCha8Rng, used: &mut std::collections::HashSet<IpAddr>) -> IpAddr {
    // 2001:db8::/32 documentation space, one /64 per client, a random interface id
    loop {
        let net: u32 = rng.random();
        let iid: u64 = rng.random();
        let ip = IpAddr::V6(Ipv6Addr::from_bits((0x2001_0db8u128 << 96) | ((net as u128) << 64) | iid as u128));
        if used.insert(IpAddr::V6(Ipv6Addr::from_bits((0x2001_0db8u128 << 96) | ((net as u128) << 64)))) {
            return ip;
        }
    }
}

impl Actor {
    fn exp(&mut self, mean_s: f64) -> i64 {
        let u: f64 = self.rng.random_range(1e-9..1.0);
        (-u.ln() * mean_s * 1000.0) as i64
    }

    fn req(&self, t: i64, method: &'static str, target: String, status: u16) -> Request {
        Request {
            time_ms: t,
            client: self.ip,
            method,
            target,
            status,
            bytes: 0,
            request_time: 0.0,
            referer: None,
            user_agent: self.ua,
        }
    }

    /// Queues the role's next action; returns false when the actor is done.
    fn plan(&mut self, end_ms: i64) -> bool {
        let t = self.next_ms;
        if t >= end_ms {
            return false;
        }
        let mut out: Vec<(i64, Request)> = Vec::new();
        match self.role {
            Persona::Reader | Persona::Office => {
                // one page view: the page, then its assets within a second
                let topic = TOPICS[self.rng.random_range(0..TOPICS.len())];
                let page = match self.rng.random_range(0..10) {
                    0 => "/".to_owned(),
                    1..=6 => format!("/blog/{topic}/{}", self.rng.random_range(1..400)),
                    7 => format!("/tag/{topic}?page={}", self.rng.random_range(1..5)),
                    8 => format!("/search?q={topic}"),
                    _ => format!("/docs/{topic}"),
                };
                let status = if self.rng.random_bool(0.02) {
                    404
                } else if self.rng.random_bool(0.1) {
                    304
                } else {
                    200
                };
                let mut r = self.req(t, "GET", page, status);
                r.request_time = self.rng.random_range(0.01..0.3);
                r.bytes = if status == 200 { self.rng.random_range(8_000..60_000) } else { 0 };
                r.referer = (self.step > 0).then(|| "https://www.example.org/".to_owned());
                out.push((t, r));
                if self.step == 0 || self.rng.random_bool(0.3) {
                    for (k, asset) in
                        ["/static/app.css", "/static/app.js", "/static/logo.svg", "/img/hero.webp"].iter().enumerate()
                    {
                        let st = if self.step == 0 { 200 } else { 304 };
                        let mut a = self.req(t + 40 + 30 * k as i64, "GET", asset.to_string(), st);
                        a.request_time = 0.002;
                        out.push((a.time_ms, a));
                    }
                    if self.step == 0 {
                        out.push((t + 200, self.req(t + 200, "GET", "/favicon.ico".into(), 404)));
                    }
                }
                if !self.logged_in && self.rng.random_bool(0.08) {
                    // logging in, sometimes mistyping the password once
                    let mut tt = t + 3000 + self.exp(5.0);
                    out.push((tt, self.req(tt, "GET", "/login".into(), 200)));
                    if self.rng.random_bool(0.3) {
                        tt += 4000 + self.exp(4.0);
                        out.push((tt, self.req(tt, "POST", "/login".into(), 401)));
                    }
                    tt += 4000 + self.exp(4.0);
                    out.push((tt, self.req(tt, "POST", "/login".into(), 302)));
                    self.logged_in = true;
                }
                self.step += 1;
                // think time, and now and then a break
                let pause = if self.rng.random_bool(0.1) {
                    self.exp(600.0)
                } else {
                    3000 + self.exp(if self.role == Persona::Office { 20.0 } else { 30.0 })
                };
                self.next_ms = t + pause + out.last().map_or(0, |(x, _)| x - t);
            }
            Persona::SearchBot => {
                let target = if self.step.is_multiple_of(200) {
                    "/robots.txt".to_owned()
                } else {
                    format!(
                        "/blog/{}/{}",
                        TOPICS[self.rng.random_range(0..TOPICS.len())],
                        self.rng.random_range(1..400)
                    )
                };
                let status = if self.rng.random_bool(0.03) {
                    404
                } else if self.rng.random_bool(0.05) {
                    301
                } else {
                    200
                };
                let mut r = self.req(t, "GET", target, status);
                r.request_time = self.rng.random_range(0.01..0.2);
                out.push((t, r));
                self.step += 1;
                self.next_ms = t + 2000 + self.exp(6.0);
            }
            Persona::Scanner => {
                let (path, status) = SCAN_PATHS[self.step as usize % SCAN_PATHS.len()];
                let mut r = self.req(t, "GET", path.to_owned(), status);
                r.request_time = 0.003;
                out.push((t, r));
                self.step += 1;
                // a pass over the list at a few requests a second, then a pause
                self.next_ms = t + if (self.step as usize).is_multiple_of(SCAN_PATHS.len()) {
                    30_000 + self.exp(90.0)
                } else {
                    150 + self.exp(0.5)
                };
            }
            Persona::BruteForcer => {
                let (method, target, status) = if self.step.is_multiple_of(25) {
                    ("GET", "/login", 200)
                } else if self.rng.random_bool(0.05) {
                    ("POST", "/login", 429)
                } else {
                    ("POST", "/login", 401)
                };
                let mut r = self.req(t, method, target.to_owned(), status);
                r.request_time = 0.08;
                out.push((t, r));
                self.step += 1;
                self.next_ms = t + 400 + self.exp(1.5);
            }
            Persona::Crawler => {
                let target = match self.step % 3 {
                    0 => format!("/blog/{}/{}", TOPICS[self.step as usize % TOPICS.len()], self.step / 3),
                    1 => format!("/tag/{}?page={}", TOPICS[self.step as usize % TOPICS.len()], self.step / 3),
                    _ => format!("/docs/{}?rev={}", TOPICS[self.step as usize % TOPICS.len()], self.step),
                };
                let status = if self.rng.random_bool(0.02) { 404 } else { 200 };
                let mut r = self.req(t, "GET", target, status);
                r.request_time = self.rng.random_range(0.02..0.3);
                r.bytes = 20_000;
                out.push((t, r));
                self.step += 1;
                self.next_ms = t + 80 + self.exp(0.15);
            }
            Persona::SlowHammerer => {
                let target = if self.rng.random_bool(0.5) {
                    format!(
                        "/search?q={}&sort=relevance&page={}",
                        TOPICS[self.rng.random_range(0..TOPICS.len())],
                        self.step
                    )
                } else {
                    format!("/reports/export?year={}&format=csv", 2000 + self.step % 25)
                };
                let (status, rt) =
                    if self.rng.random_bool(0.15) { (504, 30.0) } else { (200, self.rng.random_range(3.0..9.0)) };
                let mut r = self.req(t, "GET", target, status);
                r.request_time = rt;
                out.push((t, r));
                self.step += 1;
                self.next_ms = t + 1500 + self.exp(2.0);
            }
        }
        out.sort_by_key(|(t, _)| *t);
        self.burst = out;
        self.burst.reverse(); // popped from the back in time order
        true
    }
}

/// Generates a scenario, calling `emit` with each request in time order. Returns the ground
/// truth: the address and role of each client that sent at least one request.
pub fn generate(s: &Scenario, mut emit: impl FnMut(&Request) -> io::Result<()>) -> io::Result<Vec<(IpAddr, Persona)>> {
    let mut rng = ChaCha8Rng::seed_from_u64(s.seed);
    let start_ms = s.start * 1000;
    let end_ms = start_ms + s.duration_s * 1000;
    let mut actors: Vec<Actor> = Vec::new();
    let mut truth = Vec::new();
    let mut used = std::collections::HashSet::new();
    let roles = [
        (Persona::Reader, s.readers),
        (Persona::Office, s.offices),
        (Persona::SearchBot, s.search_bots),
        (Persona::Scanner, s.scanners),
        (Persona::BruteForcer, s.brute_forcers),
        (Persona::Crawler, s.crawlers),
        (Persona::SlowHammerer, s.slow_hammerers),
    ];
    for (role, n) in roles {
        for _ in 0..n {
            let ip = if role == Persona::Reader && rng.random_bool(s.ipv6_share) {
                v6_in_own_64(&mut rng, &mut used)
            } else {
                client_v4(&mut rng, &mut used)
            };
            truth.push((ip, role));
            // offices are several readers on one address
            let people = if role == Persona::Office { rng.random_range(5..15) } else { 1 };
            for _ in 0..people {
                let ua = match role {
                    Persona::Reader | Persona::Office => BROWSERS[rng.random_range(0..BROWSERS.len())],
                    Persona::SearchBot => SEARCH_BOT,
                    Persona::Scanner => SCANNER_UAS[rng.random_range(0..SCANNER_UAS.len())],
                    Persona::BruteForcer => BRUTE_UAS[rng.random_range(0..BRUTE_UAS.len())],
                    Persona::Crawler => CRAWLER_UAS[rng.random_range(0..CRAWLER_UAS.len())],
                    Persona::SlowHammerer => BROWSERS[rng.random_range(0..BROWSERS.len())],
                };
                // attackers start in the first third so they are in full swing by the end
                let span = if role.is_attacker() { s.duration_s / 3 } else { s.duration_s };
                let first = start_ms + rng.random_range(0..span.max(1) * 1000);
                let seed = rng.random();
                actors.push(Actor {
                    role,
                    ip,
                    ua,
                    rng: ChaCha8Rng::seed_from_u64(seed),
                    next_ms: first,
                    step: 0,
                    burst: Vec::new(),
                    logged_in: false,
                });
            }
        }
    }
    // merge the actors' streams by time
    let mut heap: BinaryHeap<Reverse<(i64, usize)>> = BinaryHeap::new();
    for (i, a) in actors.iter_mut().enumerate() {
        if a.plan(end_ms) {
            heap.push(Reverse((a.burst.last().expect("planned").0, i)));
        }
    }
    let mut lines = 0u64;
    let mut seen = std::collections::HashSet::new();
    while let Some(Reverse((_, i))) = heap.pop() {
        let a = &mut actors[i];
        let (_, r) = a.burst.pop().expect("queued");
        seen.insert(r.client);
        emit(&r)?;
        lines += 1;
        if s.max_lines > 0 && lines >= s.max_lines {
            break;
        }
        if a.burst.is_empty() && !a.plan(end_ms) {
            continue;
        }
        heap.push(Reverse((a.burst.last().expect("planned").0, i)));
    }
    truth.retain(|(ip, _)| seen.contains(ip));
    Ok(truth)
}

/// Writes one request as a log line (with its newline).
pub fn write_line(w: &mut impl Write, r: &Request, format: Format) -> io::Result<()> {
    let referer = roost_event::nginx_escaped(r.referer.as_deref().unwrap_or("-"));
    match format {
        Format::Combined | Format::Timed => {
            write!(
                w,
                "{} - - [{}] \"{} {} HTTP/1.1\" {} {} \"{referer}\" \"{}\"",
                r.client,
                roost_event::TimeLocal(roost_event::Timestamp(r.time_ms)),
                r.method,
                roost_event::nginx_escaped(&r.target),
                r.status,
                r.bytes,
                roost_event::nginx_escaped(r.user_agent)
            )?;
            if format == Format::Timed {
                write!(w, " rt={:.3}", r.request_time)?;
            }
            writeln!(w)
        }
        Format::Json => {
            let line = serde_json::json!({
                "time_iso8601": Timestamp::from_secs(r.time_ms.div_euclid(1000)).to_string().replace('Z', "+00:00"),
                "remote_addr": r.client.to_string(),
                "host": "www.example.org",
                "request": format!("{} {} HTTP/1.1", r.method, r.target),
                "status": r.status,
                "body_bytes_sent": r.bytes,
                "request_time": (r.request_time * 1000.0).round() / 1000.0,
                "http_referer": r.referer.as_deref().unwrap_or(""),
                "http_user_agent": r.user_agent,
            });
            writeln!(w, "{line}")
        }
    }
}

/// How the engine will name a client: IPv6 readers each own a /64.
pub fn subject(ip: IpAddr, ipv6_prefix: u8) -> String {
    match ip {
        IpAddr::V4(a) => a.to_string(),
        IpAddr::V6(a) if ipv6_prefix >= 128 => a.to_string(),
        IpAddr::V6(a) => {
            let bits = a.to_bits() & (u128::MAX << (128 - ipv6_prefix as u32));
            format!("{}/{ipv6_prefix}", Ipv6Addr::from_bits(bits))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(s: &Scenario, f: Format) -> (Vec<u8>, Vec<(IpAddr, Persona)>) {
        let mut out = Vec::new();
        let truth = generate(s, |r| write_line(&mut out, r, f)).unwrap();
        (out, truth)
    }

    #[test]
    fn same_seed_same_bytes_and_time_ordered() {
        let s = Scenario { readers: 40, ..Scenario::golden(7) };
        let (a, ta) = render(&s, Format::Combined);
        let (b, tb) = render(&s, Format::Combined);
        assert_eq!(a, b);
        assert_eq!(ta, tb);
        let (c, _) = render(&Scenario { seed: 8, ..s.clone() }, Format::Combined);
        assert_ne!(a, c);
        let mut last = 0;
        let mut n = 0;
        generate(&s, |r| {
            assert!(r.time_ms >= last);
            last = r.time_ms;
            n += 1;
            Ok(())
        })
        .unwrap();
        assert!(n > 10_000, "{n}");
    }

    #[test]
    fn sized_stops_at_the_line_count() {
        let s = Scenario::sized(1, 5000);
        let (out, _) = render(&s, Format::Json);
        assert_eq!(out.iter().filter(|&&b| b == b'\n').count(), 5000);
    }
}
