//! Waffles' per-request logic, the same for both data paths ([`crate::h1`], [`crate::http2`]):
//! find the client, look its verdict up in the local cache, and route: the app (with
//! `X-Roost-Verdict`), a challenge page, or an error page. The proxy's own endpoints under
//! `/.roost/` redeem challenges.

use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use base64::Engine as _;
use bytes::Bytes;
use ipnetwork::IpNetwork;
use pingora::lb::LoadBalancer;
use pingora::lb::selection::RoundRobin;
use pingora::prelude::*;
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
pub const MAX_FORM: usize = 8 * 1024;

/// What the access log says of a request whose client went away before its answer began
/// (nginx's 499), on either protocol.
pub const CLIENT_CLOSED: u16 = 499;

pub struct Waffles {
    pub cfg: Arc<ProxyConfig>,
    pub cache: Arc<VerdictCache>,
    pub signer: Signer,
    pub replay: ReplayGuard,
    /// The fleet's shared record of redeemed nonces (Redis), when there is one.
    pub fleet: Option<Arc<std::sync::Mutex<roost_verdicts::Store>>>,
    pub metrics: Arc<ProxyMetrics>,
    pub log: AccessLog,
    pub upstreams: Arc<LoadBalancer<RoundRobin>>,
    pub outcomes: Arc<crate::outcomes::Outcomes>,
}

/// What happened to one request, for the access log and metrics.
pub struct Ctx {
    pub start: Instant,
    /// When the request arrived (Unix ms).
    pub now: i64,
    pub client: Option<IpAddr>,
    pub route: &'static str,
    pub verdict: &'static str,
    pub challenge: Cow<'static, str>,
    pub reference: Option<String>,
    /// Set when the proxy answered itself.
    pub served: Option<(u16, usize)>,
}

impl Ctx {
    pub fn new(start: Instant) -> Ctx {
        Ctx {
            start,
            now: 0,
            client: None,
            route: "-",
            verdict: "-",
            challenge: Cow::Borrowed("-"),
            reference: None,
            served: None,
        }
    }

    /// The `X-Roost-Verdict` the app is told.
    pub fn verdict_header(&self) -> &'static str {
        match (self.verdict, self.challenge.as_ref()) {
            ("dubious", "cleared") => "dubious; cleared",
            (v, _) => v,
        }
    }
}

/// Where a request goes.
#[derive(Clone, Debug, PartialEq)]
pub enum Route {
    App { verdict: &'static str },
    Challenge { reputation: f32 },
    Error { status: u16, reference: String, verdict: &'static str },
}

/// What to do with a request, whichever protocol brought it.
pub enum Front {
    /// On to the app.
    App,
    /// The proxy answers itself.
    Reply(Reply),
    /// A redemption on the proxy's own endpoints: read its form (the body of a POST, at most
    /// [`MAX_FORM`] bytes), then [`Waffles::redeem`].
    Redeem,
}

/// A response the proxy makes itself, written by either data path.
pub struct Reply {
    pub status: u16,
    /// A page (HTML, with no-store and nosniff) or plain text.
    pub html: bool,
    pub headers: Vec<(&'static str, String)>,
    pub body: Bytes,
    /// Close the connection after it.
    pub close: bool,
}

impl Reply {
    pub fn page(status: u16, body: String, headers: Vec<(&'static str, String)>) -> Reply {
        Reply { status, html: true, headers, body: Bytes::from(body), close: false }
    }

    pub fn text(status: u16, text: &'static str) -> Reply {
        Reply { status, html: false, headers: Vec::new(), body: Bytes::from_static(text.as_bytes()), close: true }
    }

    /// The fields of the reply, in order, content type and length included.
    pub fn fields(&self) -> impl Iterator<Item = (&'static str, &str)> {
        let ctype = match (self.html, self.body.is_empty()) {
            (_, true) => None,
            (true, false) => Some(("content-type", "text/html; charset=utf-8")),
            (false, false) => Some(("content-type", "text/plain; charset=utf-8")),
        };
        let page: &[(&'static str, &str)] = if self.html {
            &[("cache-control", "no-store"), ("x-content-type-options", "nosniff"), ("referrer-policy", "no-referrer")]
        } else {
            &[]
        };
        ctype.into_iter().chain(page.iter().copied()).chain(self.headers.iter().map(|(k, v)| (*k, v.as_str())))
    }

    /// The reply's head as HTTP/1.1 bytes.
    pub fn write_head(&self, out: &mut Vec<u8>, keep_alive: bool, http11: bool) {
        use std::io::Write as _;
        let _ = write!(out, "HTTP/1.1 {} {}\r\n", self.status, reason(self.status));
        for (k, v) in self.fields() {
            out.extend_from_slice(k.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(v.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        let _ = write!(out, "content-length: {}\r\n", self.body.len());
        out.extend_from_slice(match (keep_alive && !self.close, http11) {
            (true, true) => b"\r\n",
            (true, false) => b"connection: keep-alive\r\n\r\n",
            (false, _) => b"connection: close\r\n\r\n",
        });
    }
}

/// The reason phrase of the statuses the proxy answers with itself.
pub fn reason(status: u16) -> &'static str {
    http::StatusCode::from_u16(status).ok().and_then(|s| s.canonical_reason()).unwrap_or("")
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

    /// The client of a connection from `peer` whose request carries these `X-Forwarded-For`
    /// values (believed only from trusted proxies).
    pub fn client<'a>(&self, peer: IpAddr, xff: impl DoubleEndedIterator<Item = &'a [u8]>) -> IpAddr {
        let peer = canonical(peer);
        match clientip::client_ip(peer, xff, &self.cfg.trusted_proxies) {
            Ok(ip) => ip,
            Err(e) => {
                self.metrics.refused.get_or_create(&OutcomeLabels { outcome: "forwarded_malformed" }).inc();
                tracing::debug!(%peer, error = %e, "ignoring X-Forwarded-For");
                peer
            }
        }
    }

    /// The `X-Forwarded-For` sent to the app: the chain a trusted peer brought, then the peer.
    /// `peer_text` is the (canonical) peer as text.
    pub fn forwarded_for<'a>(
        &self,
        peer: IpAddr,
        peer_text: &[u8],
        prior: impl Iterator<Item = &'a [u8]>,
        out: &mut Vec<u8>,
    ) {
        if clientip::is_trusted(canonical(peer), &self.cfg.trusted_proxies) {
            for v in prior {
                out.extend_from_slice(v);
                out.extend_from_slice(b", ");
            }
        }
        out.extend_from_slice(peer_text);
    }

    fn clearance_ok<'a>(
        &self,
        cookies: impl Iterator<Item = &'a [u8]>,
        bind: &str,
        now: i64,
    ) -> Result<bool, ChallengeRefusal> {
        let name = &self.cfg.challenge.cookie;
        let mut result = Ok(false);
        for v in cookies {
            let Ok(v) = std::str::from_utf8(v) else { continue };
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

    fn challenge(&self, ctx: &mut Ctx, ip: IpAddr, reputation: f32, back: &str, retry: bool) -> Reply {
        let page = self.challenge_page(ip, reputation, back, retry, ctx.now);
        ctx.route = "challenge";
        if ctx.challenge == "-" {
            ctx.challenge = Cow::Borrowed("issued");
        }
        let csp = page.csp();
        Reply::page(403, page.render(), vec![("content-security-policy", csp)])
    }

    fn error(&self, ctx: &mut Ctx, status: u16, reference: String) -> Reply {
        ctx.route = "error";
        let body = pages::error_page(status, &reference);
        ctx.reference = Some(reference);
        Reply::page(status, body, Vec::new())
    }

    /// Routes a request for `path_and_query` from the client found by [`Waffles::client`],
    /// carrying these `Cookie` values; fills `ctx` (which has its `now`).
    pub fn front<'a>(
        &self,
        ctx: &mut Ctx,
        ip: IpAddr,
        path_and_query: &str,
        cookies: impl Iterator<Item = &'a [u8]>,
    ) -> Front {
        let now = ctx.now;
        ctx.client = Some(ip);
        if path_and_query.starts_with(pages::PREFIX) {
            ctx.verdict = match self.cache.lookup(ip, now) {
                Some(v) if v.class == Class::Bad => "bad",
                Some(v) if v.class == Class::Dubious => "dubious",
                _ => "good",
            };
            ctx.route = "challenge";
            return Front::Redeem;
        }
        match self.decide(ip, now) {
            Route::App { verdict } => {
                ctx.route = "app";
                ctx.verdict = verdict;
                Front::App
            }
            Route::Error { status, reference, verdict } => {
                ctx.verdict = verdict;
                Front::Reply(self.error(ctx, status, reference))
            }
            Route::Challenge { reputation } => {
                ctx.verdict = "dubious";
                match self.clearance_ok(cookies, &self.cache.binding(ip), now) {
                    Ok(true) => {
                        ctx.route = "app";
                        ctx.challenge = Cow::Borrowed("cleared");
                        return Front::App;
                    }
                    Ok(false) => {}
                    Err(r) => {
                        self.metrics.cookies_refused.get_or_create(&OutcomeLabels { outcome: r.as_str() }).inc();
                        ctx.challenge = Cow::Owned(format!("cookie_refused:{}", r.as_str()));
                    }
                }
                Front::Reply(self.challenge(ctx, ip, reputation, path_and_query, false))
            }
        }
    }

    /// `/.roost/verify` (POST t, n, r) and `/.roost/wait` (GET t, r): `form` is the POST's body
    /// (`None` when it was longer than [`MAX_FORM`]); `tls` marks the cookie Secure.
    #[allow(clippy::too_many_arguments)]
    pub async fn redeem(
        &self,
        ctx: &mut Ctx,
        ip: IpAddr,
        path: &str,
        query: &str,
        post: bool,
        form: Option<&[u8]>,
        tls: bool,
    ) -> Reply {
        let now = ctx.now;
        ctx.route = "challenge";
        let form: Vec<(String, String)> = if path == pages::VERIFY {
            if !post {
                return self.served(ctx, Reply::text(405, "Method not allowed\n"));
            }
            let Some(body) = form else {
                return self.served(ctx, Reply::text(413, "Request body too large\n"));
            };
            form_urlencoded::parse(body).into_owned().collect()
        } else if path == pages::WAIT {
            form_urlencoded::parse(query.as_bytes()).into_owned().collect()
        } else {
            return self.served(ctx, Reply::text(404, "Not found\n"));
        };
        let field = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str()).unwrap_or("");
        let (token, counter, back) = (field("t"), field("n"), pages::safe_return(field("r")).to_owned());
        let bind = self.cache.binding(ip);
        let c = &self.cfg.challenge;
        let valid_for = c.valid_for.as_millis() as u64;
        let outcome = match self.signer.verify(token, counter, &bind, now as u64, valid_for) {
            Ok(v) => self.claim(&bind, v.nonce, v.issued + valid_for, now as u64).await.map(|()| v),
            Err(r) => Err(r),
        };
        match outcome {
            Ok(v) => {
                self.metrics.challenges.get_or_create(&OutcomeLabels { outcome: "passed" }).inc();
                ctx.challenge = Cow::Borrowed(match v.kind {
                    Kind::Work { .. } => "passed",
                    Kind::Wait { .. } => "passed:wait",
                });
                let expires = now as u64 + c.clearance_for.as_millis() as u64;
                let secure = if tls { "; Secure" } else { "" };
                let cookie = format!(
                    "{}={}; Path=/; Max-Age={}; HttpOnly; SameSite=Lax{secure}",
                    c.cookie,
                    self.signer.clearance(&bind, expires),
                    c.clearance_for.as_secs()
                );
                let r = Reply {
                    status: 303,
                    html: false,
                    headers: vec![("location", back), ("set-cookie", cookie), ("cache-control", "no-store".into())],
                    body: Bytes::new(),
                    close: false,
                };
                self.served(ctx, r)
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
                ctx.challenge = Cow::Owned(format!("failed:{}", r.as_str()));
                if r == ChallengeRefusal::Busy {
                    let reply = self.error(ctx, 429, self.signer.reference("busy", now / 60_000));
                    return self.served(ctx, reply);
                }
                let rep = self.cache.lookup(ip, now).map_or(0.0, |v| v.reputation);
                let reply = self.challenge(ctx, ip, rep, &back, true);
                self.served(ctx, reply)
            }
        }
    }

    /// Claims a redeemed nonce: in this process (bounded per client), then in the fleet's Redis
    /// (`SET NX`), so a solution redeemed at one proxy is refused at every other. With Redis
    /// unreachable, this process's claim stands alone (counted in `sync_errors`).
    async fn claim(&self, bind: &str, nonce: [u8; 16], until: u64, now: u64) -> Result<(), ChallengeRefusal> {
        self.replay.claim(bind, nonce, until, now)?;
        let Some(store) = self.fleet.clone() else { return Ok(()) };
        let hex = crate::challenge::hex_nonce(&nonce);
        let ttl = until.saturating_sub(now);
        let claimed =
            tokio::task::spawn_blocking(move || store.lock().unwrap_or_else(|p| p.into_inner()).claim_nonce(&hex, ttl))
                .await;
        match claimed {
            Ok(Ok(true)) => Ok(()),
            Ok(Ok(false)) => Err(ChallengeRefusal::Replayed),
            Ok(Err(e)) => {
                self.metrics.sync_errors.inc();
                tracing::warn!(error = %e, "cannot claim a challenge nonce in Redis; this proxy's own record stands");
                Ok(())
            }
            Err(e) => {
                tracing::warn!(error = %e, "claiming a challenge nonce");
                Ok(())
            }
        }
    }

    fn served(&self, ctx: &mut Ctx, r: Reply) -> Reply {
        ctx.served = Some((r.status, r.body.len()));
        r
    }

    /// Counts a finished request and writes its access-log line.
    #[allow(clippy::too_many_arguments)]
    pub fn finish(
        &self,
        ctx: &mut Ctx,
        status: u16,
        bytes: usize,
        method: &str,
        target: &str,
        protocol: &'static str,
        referer: Option<&[u8]>,
        user_agent: Option<&[u8]>,
    ) {
        self.metrics.requests.get_or_create(&RouteLabels { route: ctx.route, verdict: ctx.verdict }).inc();
        let Some(client) = ctx.client else { return };
        if ctx.challenge != "-" && !ctx.challenge.is_empty() {
            self.outcomes.record(&self.cache.binding(client), &ctx.challenge, now_ms());
        }
        if !self.log.enabled() {
            return;
        }
        let text = |v: Option<&[u8]>| v.and_then(|v| std::str::from_utf8(v).ok()).map(str::to_owned);
        self.log.log(Entry {
            time: Timestamp(now_ms()),
            client,
            method: method.to_owned(),
            target: target.to_owned(),
            protocol,
            status,
            bytes,
            referer: text(referer),
            user_agent: text(user_agent),
            seconds: ctx.start.elapsed().as_secs_f64(),
            route: ctx.route,
            challenge: std::mem::take(&mut ctx.challenge).into_owned(),
            reference: ctx.reference.take(),
        });
    }
}

/// Nonces: from a per-thread CSPRNG (ChaCha, seeded and reseeded from the OS), not a system
/// call per challenge.
pub(crate) fn random() -> [u8; 16] {
    rand::random()
}
