//! Waffles' per-request logic, as a pingora [`ProxyHttp`]: find the client, look its verdict up
//! in the local cache, and route: the app (with `X-Roost-Verdict`), a challenge page, or an
//! error page. The proxy's own endpoints under `/.roost/` redeem challenges.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use base64::Engine as _;
use bytes::Bytes;
use ipnetwork::IpNetwork;
use pingora::http::ResponseHeader;
use pingora::lb::LoadBalancer;
use pingora::lb::selection::RoundRobin;
use pingora::prelude::*;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use roost_engine::{Class, Timestamp};

use crate::accesslog::{AccessLog, Entry};
use crate::cache::VerdictCache;
use crate::challenge::{ChallengeRefusal, Kind, ReplayGuard, Signer, difficulty};
use crate::clientip::{self, canonical};
use crate::config::{ProxyConfig, UnknownPolicy};
use crate::metrics::{OutcomeLabels, ProxyMetrics, RouteLabels};
use crate::now_ms;
use crate::pages::{self, ChallengePage};

/// Longest body accepted on the proxy's own endpoints.
const MAX_FORM: usize = 8 * 1024;

pub struct Waffles {
    pub cfg: Arc<ProxyConfig>,
    pub cache: Arc<VerdictCache>,
    pub signer: Signer,
    pub replay: ReplayGuard,
    pub metrics: Arc<ProxyMetrics>,
    pub log: AccessLog,
    pub upstreams: Arc<LoadBalancer<RoundRobin>>,
    pub outcomes: Arc<crate::outcomes::Outcomes>,
}

/// What happened to one request, for the access log and metrics.
pub struct Ctx {
    start: Instant,
    /// When the request arrived (Unix ms).
    now: i64,
    client: Option<IpAddr>,
    route: &'static str,
    verdict: &'static str,
    challenge: String,
    reference: Option<String>,
    /// Set when the proxy answered itself.
    served: Option<(u16, usize)>,
}

/// Where a request goes.
#[derive(Clone, Debug, PartialEq)]
pub enum Route {
    App { verdict: &'static str },
    Challenge { reputation: f32 },
    Error { status: u16, reference: String, verdict: &'static str },
}

impl Waffles {
    /// The route for a client, by override, verdict and the store's state.
    pub fn decide(&self, ip: IpAddr, now: i64) -> Route {
        let contains = |l: &[IpNetwork]| l.iter().any(|n| n.contains(ip));
        if contains(&self.cfg.deny) {
            let reference = self.signer.reference(&format!("deny {}", self.cache.binding(ip)), 0);
            return Route::Error { status: 403, reference, verdict: "deny" };
        }
        if contains(&self.cfg.allow) {
            return Route::App { verdict: "allow" };
        }
        match self.cache.lookup(ip, now) {
            Some(v) => match v.class {
                Class::Bad => Route::Error {
                    status: self.cfg.bad_status,
                    reference: self.signer.reference(&v.subject, v.at),
                    verdict: "bad",
                },
                Class::Dubious => Route::Challenge { reputation: v.reputation },
                Class::Good => Route::App { verdict: "good" },
            },
            None if self.metrics.redis_up.get() == 0 => match self.cfg.unknown {
                UnknownPolicy::App => Route::App { verdict: "unknown" },
                UnknownPolicy::Challenge => Route::Challenge { reputation: 0.0 },
                UnknownPolicy::Error => Route::Error {
                    status: 503,
                    reference: self.signer.reference("unknown", now / 60_000),
                    verdict: "unknown",
                },
            },
            None => Route::App { verdict: "good" },
        }
    }

    fn client(&self, session: &Session) -> Option<IpAddr> {
        let peer = canonical(session.client_addr()?.as_inet()?.ip());
        let xff = session.req_header().headers.get_all("x-forwarded-for");
        match clientip::client_ip(peer, xff.iter().map(|v| v.as_bytes()), &self.cfg.trusted_proxies) {
            Ok(ip) => Some(ip),
            Err(e) => {
                self.metrics.refused.get_or_create(&OutcomeLabels { outcome: "forwarded_malformed" }).inc();
                tracing::debug!(%peer, error = %e, "ignoring X-Forwarded-For");
                Some(peer)
            }
        }
    }

    fn clearance_ok(&self, session: &Session, bind: &str, now: i64) -> Result<bool, ChallengeRefusal> {
        let name = &self.cfg.challenge.cookie;
        let mut result = Ok(false);
        for v in session.req_header().headers.get_all("cookie") {
            let Ok(v) = v.to_str() else { continue };
            for pair in v.split(';') {
                let Some((k, val)) = pair.trim().split_once('=') else { continue };
                if k == name {
                    match self.signer.check_clearance(val, bind, now as u64) {
                        Ok(_) => return Ok(true),
                        Err(r) => result = Err(r),
                    }
                }
            }
        }
        result
    }

    fn challenge_page(&self, ip: IpAddr, reputation: f32, back: &str, retry: bool, now: i64) -> ChallengePage {
        let c = &self.cfg.challenge;
        let bind = self.cache.binding(ip);
        let bits = difficulty(reputation, c.min_bits, c.max_bits);
        let badness = f64::from(((1.0 - reputation.clamp(-1.0, 1.0)) / 2.0).clamp(0.0, 1.0));
        let wait_secs = c.min_wait_secs + ((c.max_wait_secs - c.min_wait_secs) as f64 * badness).round() as u64;
        let token = self.signer.issue(Kind::Work { bits }, &bind, now as u64, random());
        let wait_token = self.signer.issue(Kind::Wait { ms: wait_secs * 1000 }, &bind, now as u64, random());
        let nonce = base64::engine::general_purpose::STANDARD_NO_PAD.encode(random());
        self.metrics.challenges.get_or_create(&OutcomeLabels { outcome: "issued" }).inc();
        ChallengePage { token, bits, wait_token, wait_secs, back: pages::safe_return(back).to_owned(), nonce, retry }
    }

    async fn serve_challenge(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        ip: IpAddr,
        reputation: f32,
        back: &str,
        retry: bool,
    ) -> Result<bool> {
        let page = self.challenge_page(ip, reputation, back, retry, ctx.now);
        let csp = page.csp();
        let body = page.render();
        ctx.route = "challenge";
        if ctx.challenge == "-" {
            ctx.challenge = "issued".into();
        }
        respond(session, ctx, 403, body, &[("content-security-policy", csp)]).await
    }

    /// `/.roost/verify` (POST t, n, r) and `/.roost/wait` (GET t, r).
    async fn redeem(&self, session: &mut Session, ctx: &mut Ctx, ip: IpAddr, now: i64) -> Result<bool> {
        ctx.route = "challenge";
        let path = session.req_header().uri.path().to_owned();
        let method = session.req_header().method.clone();
        let form: Vec<(String, String)> = if path == pages::VERIFY {
            if method != http::Method::POST {
                return respond_text(session, ctx, 405, "Method not allowed\n").await;
            }
            let mut body = Vec::new();
            while let Some(chunk) = session.read_request_body().await? {
                body.extend_from_slice(&chunk);
                if body.len() > MAX_FORM {
                    return respond_text(session, ctx, 413, "Request body too large\n").await;
                }
            }
            form_urlencoded::parse(&body).into_owned().collect()
        } else if path == pages::WAIT {
            let q = session.req_header().uri.query().unwrap_or("").to_owned();
            form_urlencoded::parse(q.as_bytes()).into_owned().collect()
        } else {
            return respond_text(session, ctx, 404, "Not found\n").await;
        };
        let field = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str()).unwrap_or("");
        let (token, counter, back) = (field("t"), field("n"), pages::safe_return(field("r")).to_owned());
        let bind = self.cache.binding(ip);
        let c = &self.cfg.challenge;
        let valid_for = c.valid_for.as_millis() as u64;
        let outcome = self
            .signer
            .verify(token, counter, &bind, now as u64, valid_for)
            .and_then(|v| self.replay.claim(v.nonce, v.issued + valid_for, now as u64).map(|()| v));
        match outcome {
            Ok(v) => {
                self.metrics.challenges.get_or_create(&OutcomeLabels { outcome: "passed" }).inc();
                ctx.challenge = match v.kind {
                    Kind::Work { .. } => "passed".into(),
                    Kind::Wait { .. } => "passed:wait".into(),
                };
                let expires = now as u64 + c.clearance_for.as_millis() as u64;
                let secure = if session.digest().is_some_and(|d| d.ssl_digest.is_some()) { "; Secure" } else { "" };
                let cookie = format!(
                    "{}={}; Path=/; Max-Age={}; HttpOnly; SameSite=Lax{secure}",
                    c.cookie,
                    self.signer.clearance(&bind, expires),
                    c.clearance_for.as_secs()
                );
                let mut h = ResponseHeader::build(303, Some(4))?;
                h.insert_header("location", back)?;
                h.insert_header("set-cookie", cookie)?;
                h.insert_header("cache-control", "no-store")?;
                h.insert_header("content-length", "0")?;
                session.write_response_header(Box::new(h), true).await?;
                ctx.served = Some((303, 0));
                Ok(true)
            }
            Err(r) => {
                let label: &'static str = match r {
                    ChallengeRefusal::Malformed => "failed_malformed",
                    ChallengeRefusal::Signature => "failed_signature",
                    ChallengeRefusal::Expired => "failed_expired",
                    ChallengeRefusal::TooEarly => "failed_too_early",
                    ChallengeRefusal::Work => "failed_work",
                    ChallengeRefusal::Replayed => "failed_replayed",
                    ChallengeRefusal::Busy => "failed_busy",
                };
                self.metrics.challenges.get_or_create(&OutcomeLabels { outcome: label }).inc();
                ctx.challenge = format!("failed:{}", r.as_str());
                if r == ChallengeRefusal::Busy {
                    return respond_error(session, ctx, 429, &self.signer.reference("busy", now / 60_000)).await;
                }
                let rep = self.cache.lookup(ip, now).map_or(0.0, |v| v.reputation);
                self.serve_challenge(session, ctx, ip, rep, &back, true).await
            }
        }
    }
}

fn random() -> [u8; 16] {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).expect("the OS has randomness");
    b
}

async fn respond(
    session: &mut Session,
    ctx: &mut Ctx,
    status: u16,
    body: String,
    extra: &[(&'static str, String)],
) -> Result<bool> {
    let mut h = ResponseHeader::build(status, Some(8))?;
    h.insert_header("content-type", "text/html; charset=utf-8")?;
    h.insert_header("content-length", body.len().to_string())?;
    h.insert_header("cache-control", "no-store")?;
    h.insert_header("x-content-type-options", "nosniff")?;
    h.insert_header("referrer-policy", "no-referrer")?;
    for (k, v) in extra {
        h.insert_header(*k, v.as_str())?;
    }
    let head = session.req_header().method == http::Method::HEAD;
    ctx.served = Some((status, if head { 0 } else { body.len() }));
    session.write_response_header(Box::new(h), head).await?;
    if !head {
        session.write_response_body(Some(Bytes::from(body)), true).await?;
    }
    Ok(true)
}

async fn respond_text(session: &mut Session, ctx: &mut Ctx, status: u16, text: &'static str) -> Result<bool> {
    let mut h = ResponseHeader::build(status, Some(3))?;
    h.insert_header("content-type", "text/plain; charset=utf-8")?;
    h.insert_header("content-length", text.len().to_string())?;
    h.insert_header("connection", "close")?;
    ctx.served = Some((status, text.len()));
    session.set_keepalive(None);
    session.write_response_header(Box::new(h), false).await?;
    session.write_response_body(Some(Bytes::from_static(text.as_bytes())), true).await?;
    Ok(true)
}

async fn respond_error(session: &mut Session, ctx: &mut Ctx, status: u16, reference: &str) -> Result<bool> {
    ctx.route = "error";
    ctx.reference = Some(reference.to_owned());
    respond(session, ctx, status, pages::error_page(status, reference), &[]).await
}

/// Bytes of the request line and headers, as the client sent them (about).
fn header_bytes(session: &Session) -> usize {
    let req = session.req_header();
    let target =
        req.uri.path_and_query().map_or(1, |p| p.as_str().len()) + req.uri.authority().map_or(0, |a| a.as_str().len());
    let line = req.method.as_str().len() + target + 12;
    line + req.headers.iter().map(|(k, v)| k.as_str().len() + v.len() + 4).sum::<usize>()
}

#[async_trait]
impl ProxyHttp for Waffles {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx {
            start: Instant::now(),
            now: 0,
            client: None,
            route: "-",
            verdict: "-",
            challenge: "-".into(),
            reference: None,
            served: None,
        }
    }

    async fn early_request_filter(&self, session: &mut Session, _ctx: &mut Ctx) -> Result<()> {
        session.set_read_timeout(Some(self.cfg.client_timeout));
        session.set_write_timeout(Some(self.cfg.client_timeout));
        session.set_keepalive(Some(self.cfg.keepalive_timeout.as_secs()));
        Ok(())
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        let now = now_ms();
        ctx.now = now;
        if header_bytes(session) > self.cfg.max_header_bytes {
            self.metrics.refused.get_or_create(&OutcomeLabels { outcome: "header_too_large" }).inc();
            ctx.route = "refused";
            return respond_text(session, ctx, 431, "Request header fields too large\n").await;
        }
        let Some(ip) = self.client(session) else {
            // not an IP socket (a Unix socket in front): nothing to judge by
            ctx.route = "app";
            ctx.verdict = "unknown";
            return Ok(false);
        };
        ctx.client = Some(ip);
        if session.req_header().uri.path().starts_with(pages::PREFIX) {
            ctx.verdict = match self.cache.lookup(ip, now) {
                Some(v) if v.class == Class::Bad => "bad",
                Some(v) if v.class == Class::Dubious => "dubious",
                _ => "good",
            };
            return self.redeem(session, ctx, ip, now).await;
        }
        match self.decide(ip, now) {
            Route::App { verdict } => {
                ctx.route = "app";
                ctx.verdict = verdict;
                Ok(false)
            }
            Route::Error { status, reference, verdict } => {
                ctx.verdict = verdict;
                respond_error(session, ctx, status, &reference).await
            }
            Route::Challenge { reputation } => {
                ctx.verdict = "dubious";
                match self.clearance_ok(session, &self.cache.binding(ip), now) {
                    Ok(true) => {
                        ctx.route = "app";
                        ctx.challenge = "cleared".into();
                        return Ok(false);
                    }
                    Ok(false) => {}
                    Err(r) => {
                        self.metrics.cookies_refused.get_or_create(&OutcomeLabels { outcome: r.as_str() }).inc();
                        ctx.challenge = format!("cookie_refused:{}", r.as_str());
                    }
                }
                let back = session.req_header().uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
                self.serve_challenge(session, ctx, ip, reputation, &back, false).await
            }
        }
    }

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let backend = self
            .upstreams
            .select(b"", 256)
            .ok_or_else(|| Error::explain(ErrorType::HTTPStatus(502), "no healthy upstream"))?;
        let mut peer = HttpPeer::new(backend, false, String::new());
        peer.options.connection_timeout = Some(self.cfg.connect_timeout);
        peer.options.read_timeout = Some(self.cfg.upstream_timeout);
        peer.options.write_timeout = Some(self.cfg.upstream_timeout);
        peer.options.idle_timeout = Some(self.cfg.keepalive_timeout);
        Ok(Box::new(peer))
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut pingora::http::RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        upstream.remove_header("x-roost-verdict");
        let v = match (ctx.verdict, ctx.challenge.as_str()) {
            ("dubious", "cleared") => "dubious; cleared",
            (v, _) => v,
        };
        upstream.insert_header("x-roost-verdict", v)?;
        if let Some(peer) = session.client_addr().and_then(|a| a.as_inet()).map(|a| canonical(a.ip())) {
            let prior = if clientip::is_trusted(peer, &self.cfg.trusted_proxies) {
                session
                    .req_header()
                    .headers
                    .get_all("x-forwarded-for")
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .collect::<Vec<_>>()
                    .join(", ")
            } else {
                String::new()
            };
            let xff = if prior.is_empty() { peer.to_string() } else { format!("{prior}, {peer}") };
            upstream.insert_header("x-forwarded-for", xff)?;
        }
        Ok(())
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        let code = match e.etype() {
            ErrorType::HTTPStatus(code) => *code,
            // a client too slow with its body (reads on the proxy's own endpoints come back
            // unmarked); an upstream too slow is a gateway timeout
            ErrorType::ReadTimedout | ErrorType::WriteTimedout => {
                if e.esource() == &ErrorSource::Upstream {
                    504
                } else {
                    408
                }
            }
            _ => match e.esource() {
                ErrorSource::Upstream => 502,
                ErrorSource::Downstream => match e.etype() {
                    ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed => 0,
                    _ => 400,
                },
                ErrorSource::Internal | ErrorSource::Unset => 500,
            },
        };
        if code > 0 && session.response_written().is_none() {
            let _ = session.respond_error(code).await;
        }
        if ctx.served.is_none() && code > 0 {
            ctx.served = Some((code, 0));
        }
        FailToProxy { error_code: code, can_reuse_downstream: false }
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut Ctx) {
        let status = match ctx.served {
            Some((s, _)) => s,
            None => session.response_written().map_or(0, |r| r.status.as_u16()),
        };
        self.metrics.requests.get_or_create(&RouteLabels { route: ctx.route, verdict: ctx.verdict }).inc();
        let Some(client) = ctx.client else { return };
        if ctx.challenge != "-" && !ctx.challenge.is_empty() {
            self.outcomes.record(&self.cache.binding(client), &ctx.challenge, now_ms());
        }
        if !self.log.enabled() {
            return;
        }
        let req = session.req_header();
        let header = |k: &str| req.headers.get(k).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let protocol = match req.version {
            http::Version::HTTP_2 => "HTTP/2.0",
            http::Version::HTTP_10 => "HTTP/1.0",
            _ => "HTTP/1.1",
        };
        self.log.log(Entry {
            time: Timestamp(now_ms()),
            client,
            method: req.method.as_str().to_owned(),
            target: req.uri.path_and_query().map_or("/", |p| p.as_str()).to_owned(),
            protocol,
            status,
            bytes: ctx.served.map_or_else(|| session.body_bytes_sent(), |(_, b)| b),
            referer: header("referer"),
            user_agent: header("user-agent"),
            seconds: ctx.start.elapsed().as_secs_f64(),
            route: ctx.route,
            challenge: std::mem::take(&mut ctx.challenge),
            reference: ctx.reference.take(),
        });
    }
}
