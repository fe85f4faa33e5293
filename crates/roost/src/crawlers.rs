//! Verified search-engine crawlers: a client whose User-Agent claims Googlebot, Bingbot,
//! Applebot, YandexBot or Baiduspider is checked by forward-confirmed reverse DNS (its address's
//! PTR name is under the crawler's domain, and that name resolves back to the address). The
//! outcome reaches the engine as evidence, like a feed's: a verified crawler is held good (it
//! may crawl as fast as it likes), a client that fails is flagged with the reason. The engine
//! stays pure: lookups run here, at the edge, on a bounded queue with a bounded cache; `roost
//! replay` waits for each answer (same log, same verdicts), the daemons never do (a client is
//! judged as usual until its answer arrives).
//! The published ranges of Google and Bing are feeds (`feeds/googlebot.toml`, `bingbot.toml`).

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{NameServerConfig, ResolverConfig};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::xfer::Protocol;
use regex::bytes::RegexSet;
use roost_engine::{Class, Evidence, Inspector, RequestContext, Source, SourceKind, Timestamp};
use serde::{Deserialize, Serialize};

/// `[crawlers]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CrawlersConfig {
    /// Verify clients that claim to be a search engine's crawler. Off by default: it asks DNS
    /// about every such client.
    pub verify: bool,
    /// The DNS server to ask (`127.0.0.1:53`); empty: the system's (`/etc/resolv.conf`).
    pub resolver: String,
    /// How long one lookup may take.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Outcomes kept, at most (the oldest go first), and lookups waiting, at most.
    pub cache_size: usize,
    pub max_pending: usize,
    /// A verified crawler is held good this long after each verification is used.
    #[serde(with = "humantime_serde")]
    pub verified_ttl: Duration,
    /// A client that claims a crawler's name and fails: this much negative evidence, and an
    /// immediate `dubious` for `failed_ttl`.
    pub failed_penalty: f32,
    #[serde(with = "humantime_serde")]
    pub failed_ttl: Duration,
}

impl Default for CrawlersConfig {
    fn default() -> Self {
        CrawlersConfig {
            verify: false,
            resolver: String::new(),
            timeout: Duration::from_secs(2),
            cache_size: 100_000,
            max_pending: 1_000,
            verified_ttl: Duration::from_secs(3600),
            failed_penalty: 3.0,
            failed_ttl: Duration::from_secs(3600),
        }
    }
}

/// A crawler roost can verify: its User-Agent tokens and the domains its PTR names are under.
struct Crawler {
    name: &'static str,
    ua: &'static str,
    domains: &'static [&'static str],
}

const CRAWLERS: &[Crawler] = &[
    Crawler {
        name: "Googlebot",
        ua: r"(?i)\b(googlebot|google-inspectiontool|googleother|adsbot-google|mediapartners-google|storebot-google|apis-google|feedfetcher-google)\b",
        domains: &["googlebot.com", "google.com", "googleusercontent.com"],
    },
    Crawler { name: "Bingbot", ua: r"(?i)\b(bingbot|msnbot|adidxbot|bingpreview)\b", domains: &["search.msn.com"] },
    Crawler { name: "Applebot", ua: r"(?i)\bapplebot\b", domains: &["applebot.apple.com"] },
    Crawler {
        name: "YandexBot",
        ua: r"(?i)\byandex(bot|images|video|media|blogs|news|accessibilitybot|mobilebot|metrika)\b",
        domains: &["yandex.ru", "yandex.net", "yandex.com"],
    },
    Crawler { name: "Baiduspider", ua: r"(?i)\bbaiduspider\b", domains: &["baidu.com", "baidu.jp"] },
];

/// What DNS said about a client claiming to be crawler `crawler` (an index into [`CRAWLERS`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Verified { crawler: usize, host: String },
    Failed { crawler: usize, why: String },
}

/// Verification counters, for metrics.
#[derive(Debug, Default)]
pub struct Counts {
    pub verified: AtomicU64,
    pub failed: AtomicU64,
    /// Lookups that could not run (queue full) or did not finish (timeout, DNS error): the
    /// client is judged as usual and asked about again later.
    pub dropped: AtomicU64,
}

struct Cache {
    outcomes: std::collections::HashMap<(IpAddr, usize), Outcome>,
    order: VecDeque<(IpAddr, usize)>,
    pending: std::collections::HashSet<(IpAddr, usize)>,
    cap: usize,
}

impl Cache {
    fn put(&mut self, key: (IpAddr, usize), o: Outcome) {
        self.pending.remove(&key);
        if self.outcomes.insert(key, o).is_none() {
            self.order.push_back(key);
        }
        while self.outcomes.len() > self.cap {
            let Some(old) = self.order.pop_front() else { break };
            self.outcomes.remove(&old);
        }
    }
}

/// Forward-confirmed reverse DNS, with a bounded cache and queue.
pub struct Verifier {
    ua: RegexSet,
    cfg: CrawlersConfig,
    cache: Mutex<Cache>,
    /// Background lookups (daemons); `None`: lookups run when asked (`roost replay`).
    queue: Option<SyncSender<(IpAddr, usize)>>,
    resolver: TokioResolver,
    /// For lookups run when asked.
    rt: Option<tokio::runtime::Runtime>,
    pub counts: Counts,
}

impl Verifier {
    /// `background`: lookups run on a thread of their own and a client is judged as usual until
    /// its answer arrives; otherwise each lookup is waited for.
    pub fn new(cfg: &CrawlersConfig, background: bool) -> anyhow::Result<Arc<Verifier>> {
        let mut builder = if cfg.resolver.is_empty() {
            TokioResolver::builder_tokio()?
        } else {
            let addr: SocketAddr = cfg.resolver.parse().map_err(|e| anyhow::anyhow!("crawlers.resolver: {e}"))?;
            let mut rc = ResolverConfig::new();
            rc.add_name_server(NameServerConfig::new(addr, Protocol::Udp));
            rc.add_name_server(NameServerConfig::new(addr, Protocol::Tcp));
            TokioResolver::builder_with_config(rc, TokioConnectionProvider::default())
        };
        let opts = builder.options_mut();
        opts.timeout = cfg.timeout;
        opts.attempts = 1;
        opts.cache_size = 0; // the outcomes are cached here
        let resolver = builder.build();
        // ASCII classes: compiled in a fraction of the time, and far cheaper per request
        let ua = regex::bytes::RegexSetBuilder::new(CRAWLERS.iter().map(|c| c.ua))
            .unicode(false)
            .build()
            .expect("valid crawler patterns");
        let cache = Mutex::new(Cache {
            outcomes: std::collections::HashMap::new(),
            order: VecDeque::new(),
            pending: std::collections::HashSet::new(),
            cap: cfg.cache_size.max(1),
        });
        if !background {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            return Ok(Arc::new(Verifier {
                ua,
                cfg: cfg.clone(),
                cache,
                queue: None,
                resolver,
                rt: Some(rt),
                counts: Counts::default(),
            }));
        }
        let (tx, rx) = std::sync::mpsc::sync_channel(cfg.max_pending.max(1));
        let v = Arc::new(Verifier {
            ua,
            cfg: cfg.clone(),
            cache,
            queue: Some(tx),
            resolver,
            rt: None,
            counts: Counts::default(),
        });
        let worker = Arc::downgrade(&v);
        std::thread::Builder::new().name("roost-crawlers".into()).spawn(move || work(worker, rx))?;
        Ok(v)
    }

    /// The crawler a User-Agent claims to be, if any.
    fn claimed(&self, ua: &str) -> Option<usize> {
        self.ua.matches(ua.as_bytes()).iter().next()
    }

    /// The outcome for `ip` claiming crawler `c`: cached, looked up now (`roost replay`), or
    /// `None` while it is looked up in the background.
    fn outcome(&self, ip: IpAddr, c: usize) -> Option<Outcome> {
        let key = (ip, c);
        {
            let mut cache = self.cache.lock().expect("crawler cache");
            if let Some(o) = cache.outcomes.get(&key) {
                return Some(o.clone());
            }
            if let Some(q) = &self.queue {
                if cache.pending.contains(&key) {
                    return None;
                }
                match q.try_send(key) {
                    Ok(()) => {
                        cache.pending.insert(key);
                    }
                    Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                        self.counts.dropped.fetch_add(1, Ordering::Relaxed);
                    }
                }
                return None;
            }
        }
        let rt = self.rt.as_ref().expect("a runtime when not in the background");
        let o = rt.block_on(self.verify(ip, c))?;
        self.record(key, o.clone());
        Some(o)
    }

    fn record(&self, key: (IpAddr, usize), o: Outcome) {
        let counter = if matches!(o, Outcome::Verified { .. }) { &self.counts.verified } else { &self.counts.failed };
        counter.fetch_add(1, Ordering::Relaxed);
        self.cache.lock().expect("crawler cache").put(key, o);
    }

    /// Forward-confirmed reverse DNS. `None` when DNS did not answer (asked again later).
    async fn verify(&self, ip: IpAddr, c: usize) -> Option<Outcome> {
        let crawler = &CRAWLERS[c];
        let failed = |why: String| Some(Outcome::Failed { crawler: c, why });
        let names: Vec<String> = match self.resolver.reverse_lookup(ip).await {
            Ok(l) => l.iter().map(|p| p.to_string().trim_end_matches('.').to_ascii_lowercase()).collect(),
            Err(e) if e.is_no_records_found() || e.is_nx_domain() => Vec::new(),
            Err(e) => {
                tracing::debug!(%ip, error = %e, "crawler verification: reverse lookup failed");
                self.counts.dropped.fetch_add(1, Ordering::Relaxed);
                return None;
            }
        };
        if names.is_empty() {
            return failed(format!("{ip} has no reverse DNS name"));
        }
        let under = |n: &str| crawler.domains.iter().any(|d| n == *d || n.ends_with(&format!(".{d}")));
        let Some(host) = names.iter().find(|n| under(n)) else {
            return failed(format!("{ip} is {}, which is not under {}", names.join(", "), crawler.domains.join(", ")));
        };
        match self.resolver.lookup_ip(format!("{host}.")).await {
            Ok(l) if l.iter().any(|a| a == ip) => Some(Outcome::Verified { crawler: c, host: host.clone() }),
            Ok(l) => {
                let back: Vec<String> = l.iter().map(|a| a.to_string()).collect();
                failed(format!("{ip} is {host}, but {host} resolves to {} instead", back.join(", ")))
            }
            Err(e) if e.is_no_records_found() || e.is_nx_domain() => {
                failed(format!("{ip} is {host}, but {host} does not resolve back to it"))
            }
            Err(e) => {
                tracing::debug!(%ip, %host, error = %e, "crawler verification: forward lookup failed");
                self.counts.dropped.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }
}

/// The background lookups: one at a time per worker, several in flight on its runtime.
fn work(v: std::sync::Weak<Verifier>, rx: Receiver<(IpAddr, usize)>) {
    let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
    while let Ok(key) = rx.recv() {
        let Some(v) = v.upgrade() else { return };
        match rt.block_on(v.verify(key.0, key.1)) {
            Some(o) => v.record(key, o),
            None => {
                v.cache.lock().expect("crawler cache").pending.remove(&key);
            }
        }
    }
}

/// The verifier as an engine [`Inspector`]: a request whose User-Agent claims a crawler gets
/// the verification's evidence (at most once per half TTL per client).
pub struct CrawlerInspector {
    verifier: Arc<Verifier>,
    sources: Vec<(Source, Source)>,
    /// When each client last got evidence (event time, s), bounded like the cache.
    said: std::collections::HashMap<IpAddr, i64>,
    /// The crawler each user agent seen lately claims (user agents repeat: matching one costs
    /// about 25 times looking it up), bounded.
    claims: hashbrown::HashMap<Box<str>, Option<u8>>,
}

/// User agents remembered by [`CrawlerInspector`], at most.
const CLAIMS_KEPT: usize = 8192;

impl CrawlerInspector {
    pub fn new(verifier: Arc<Verifier>) -> CrawlerInspector {
        let sources = CRAWLERS
            .iter()
            .map(|c| {
                (
                    Source::new(SourceKind::Crawler, format!("verified_{}", c.name.to_ascii_lowercase())),
                    Source::new(SourceKind::Crawler, format!("fake_{}", c.name.to_ascii_lowercase())),
                )
            })
            .collect();
        CrawlerInspector {
            verifier,
            sources,
            said: std::collections::HashMap::new(),
            claims: hashbrown::HashMap::new(),
        }
    }
}

impl Inspector for CrawlerInspector {
    fn name(&self) -> &str {
        "crawlers"
    }

    fn inspect(&mut self, ctx: &RequestContext<'_, '_>, out: &mut Vec<Evidence>) {
        let Some(ua) = ctx.event.user_agent.as_deref() else { return };
        let claim = match self.claims.get(ua) {
            Some(c) => *c,
            None => {
                if self.claims.len() >= CLAIMS_KEPT {
                    self.claims.clear();
                }
                let c = self.verifier.claimed(ua).map(|c| c as u8);
                self.claims.insert(ua.into(), c);
                c
            }
        };
        let Some(c) = claim.map(usize::from) else { return };
        let ip = ctx.event.client;
        let now = ctx.now.secs();
        let cfg = &self.verifier.cfg;
        let every = (cfg.verified_ttl.min(cfg.failed_ttl).as_secs() as i64 / 2).max(1);
        if self.said.get(&ip).is_some_and(|&t| now >= t && now - t < every) {
            return;
        }
        let Some(outcome) = self.verifier.outcome(ip, c) else { return };
        if self.said.len() >= cfg.cache_size.max(1) {
            self.said.clear();
        }
        self.said.insert(ip, now);
        let crawler = CRAWLERS[c].name;
        out.push(match outcome {
            Outcome::Verified { host, .. } => Evidence {
                source: self.sources[c].0.clone(),
                penalty: 0.0,
                verdict: Some((Class::Good, cfg.verified_ttl)),
                detail: format!("verified {crawler}: {ip} is {host}, which resolves back to it"),
            },
            Outcome::Failed { why, .. } => Evidence {
                source: self.sources[c].1.clone(),
                penalty: cfg.failed_penalty,
                verdict: Some((Class::Dubious, cfg.failed_ttl)),
                detail: format!("claims to be {crawler} but is not: {why}"),
            },
        });
    }

    fn forget_before(&mut self, before: Timestamp) {
        let b = before.secs();
        self.said.retain(|_, t| *t >= b);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The daemons' way: lookups on the background thread, the outcome cached once it arrives
    /// (dnsmasq on loopback answers).
    #[test]
    fn background_lookups_arrive_and_are_cached() {
        let port = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut dns = std::process::Command::new("/usr/sbin/dnsmasq")
            .args(["--keep-in-foreground", "--bind-interfaces", "--listen-address=127.0.0.1", "--no-resolv"])
            .args(["--no-hosts", "--conf-file=/dev/null", "--pid-file=", "--user=root"])
            .arg(format!("--port={port}"))
            .arg("--host-record=crawl-66-249-66-1.googlebot.com,66.249.66.1")
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("dnsmasq (scripts/install-test-deps.sh installs dnsmasq-base)");
        // a query sent before dnsmasq listens is refused and not retried: wait until the port
        // is dnsmasq's (bounded)
        let up = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            assert!(std::time::Instant::now() < up, "dnsmasq did not listen on {port}");
            std::thread::sleep(Duration::from_millis(20));
        }
        let cfg = CrawlersConfig { verify: true, resolver: format!("127.0.0.1:{port}"), ..CrawlersConfig::default() };
        let v = Verifier::new(&cfg, true).unwrap();
        let c = v.claimed("Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)").unwrap();
        assert_eq!(v.claimed("Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0"), None);
        let ip: IpAddr = "66.249.66.1".parse().unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        let outcome = loop {
            if let Some(o) = v.outcome(ip, c) {
                break o;
            }
            assert!(std::time::Instant::now() < deadline, "no answer from the background lookup");
            std::thread::sleep(Duration::from_millis(50));
        };
        let _ = dns.kill();
        let _ = dns.wait();
        assert_eq!(outcome, Outcome::Verified { crawler: c, host: "crawl-66-249-66-1.googlebot.com".into() });
        assert_eq!(v.counts.verified.load(Ordering::Relaxed), 1);
        assert_eq!(v.outcome(ip, c), Some(outcome), "cached: dnsmasq is gone");
    }
}
