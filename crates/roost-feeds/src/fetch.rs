//! Fetching a feed over HTTP(S): conditional requests (ETag / If-Modified-Since), a timeout per
//! request, a size cap, retries with exponential backoff on transient failures, and paging for
//! APIs. Tokens never appear in errors or logs.

use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::{ETAG, IF_MODIFIED_SINCE, IF_NONE_MATCH, LAST_MODIFIED};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::def::FeedDef;
use crate::parse::{Parsed, parse};

/// How to fetch (from the config).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FetchConfig {
    /// Per request, connect to last byte.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Further attempts after a transient failure (connection, timeout, 5xx, 429).
    pub retries: u32,
    /// The first retry's delay; each next one doubles it (with jitter), up to a minute.
    #[serde(with = "humantime_serde")]
    pub backoff: Duration,
    /// A body larger than this is refused.
    pub max_bytes: usize,
    pub user_agent: String,
}

impl Default for FetchConfig {
    fn default() -> FetchConfig {
        FetchConfig {
            timeout: Duration::from_secs(30),
            retries: 3,
            backoff: Duration::from_secs(2),
            max_bytes: 64 << 20,
            user_agent: concat!("roost-feeds/", env!("CARGO_PKG_VERSION")).to_owned(),
        }
    }
}

/// Validators from the last accepted fetch.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Conditional {
    pub etag: Option<String>,
    pub last_modified: Option<String>,
    pub sha256: Option<String>,
}

/// What a fetch brought.
#[derive(Debug)]
pub enum Fetched {
    /// The server said 304, or the body is byte-identical to the last accepted one.
    NotModified,
    Changed {
        parsed: Parsed,
        validators: Conditional,
    },
}

/// Why a fetch failed (after its retries).
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{feed}: needs the token in ${var}, which is not set")]
    NoToken { feed: String, var: String },
    #[error("{feed}: HTTP {status} from {url}")]
    Status { feed: String, status: u16, url: String },
    #[error("{feed}: {url}: {why}")]
    Transport { feed: String, url: String, why: String },
    #[error("{feed}: body larger than {max} bytes")]
    TooLarge { feed: String, max: usize },
}

impl FetchError {
    /// A short label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            FetchError::NoToken { .. } => "no_token",
            FetchError::Status { .. } => "status",
            FetchError::Transport { .. } => "transport",
            FetchError::TooLarge { .. } => "too_large",
        }
    }
}

/// An HTTP client for feeds.
#[derive(Clone, Debug)]
pub struct Fetcher {
    client: reqwest::Client,
    cfg: FetchConfig,
}

impl Fetcher {
    pub fn new(cfg: FetchConfig) -> Result<Fetcher, reqwest::Error> {
        let client = reqwest::Client::builder()
            .timeout(cfg.timeout)
            .connect_timeout(cfg.timeout.min(Duration::from_secs(10)))
            .user_agent(cfg.user_agent.clone())
            .build()?;
        Ok(Fetcher { client, cfg })
    }

    /// Fetches `def`, following pages, with `cond` from the last accepted fetch.
    pub async fn fetch(&self, def: &FeedDef, cond: &Conditional) -> Result<Fetched, FetchError> {
        let token = match &def.token_env {
            Some(var) if def.url.contains("{token}") => match std::env::var(var) {
                Ok(t) if !t.is_empty() => Some(t),
                _ => return Err(FetchError::NoToken { feed: def.name.clone(), var: var.clone() }),
            },
            _ => None,
        };
        let shown = redact(&def.url);
        let url = match &token {
            Some(t) => def.url.replace("{token}", t),
            None => def.url.clone(),
        };
        let (first, validators) = match self.get(def, &url, &shown, Some(cond)).await? {
            None => return Ok(Fetched::NotModified),
            Some(r) => r,
        };
        let mut hasher = Sha256::new();
        hasher.update(&first);
        let mut bytes = first.len();
        let mut parsed = parse(def.format, def.csv.as_ref(), &first);
        let mut pages = 1;
        while let Some(next) = parsed.next_page.take() {
            if pages >= def.max_pages {
                tracing::warn!(feed = %def.name, pages, "stopped following pages at max_pages");
                break;
            }
            let (body, _) = self.get(def, &next, &redact(&next), None).await?.expect("no conditional on pages");
            bytes += body.len();
            if bytes > self.cfg.max_bytes {
                return Err(FetchError::TooLarge { feed: def.name.clone(), max: self.cfg.max_bytes });
            }
            hasher.update(&body);
            parsed.extend(parse(def.format, def.csv.as_ref(), &body));
            pages += 1;
        }
        let sha = format!("{:x}", hasher.finalize());
        if cond.sha256.as_deref() == Some(sha.as_str()) {
            return Ok(Fetched::NotModified);
        }
        Ok(Fetched::Changed { parsed, validators: Conditional { sha256: Some(sha), ..validators } })
    }

    /// One GET with retries. `None` when the server answered 304.
    async fn get(
        &self,
        def: &FeedDef,
        url: &str,
        shown: &str,
        cond: Option<&Conditional>,
    ) -> Result<Option<(Vec<u8>, Conditional)>, FetchError> {
        let mut attempt = 0;
        loop {
            match self.get_once(def, url, shown, cond).await {
                Ok(r) => return Ok(r),
                Err((e, transient)) if transient && attempt < self.cfg.retries => {
                    let delay = backoff(self.cfg.backoff, attempt);
                    tracing::warn!(feed = %def.name, error = %e, attempt = attempt + 1, ?delay, "fetch failed; retrying");
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
                Err((e, _)) => return Err(e),
            }
        }
    }

    async fn get_once(
        &self,
        def: &FeedDef,
        url: &str,
        shown: &str,
        cond: Option<&Conditional>,
    ) -> Result<Option<(Vec<u8>, Conditional)>, (FetchError, bool)> {
        let transport = |e: reqwest::Error| {
            let why = redact(&e.without_url().to_string());
            (FetchError::Transport { feed: def.name.clone(), url: shown.to_owned(), why }, true)
        };
        let mut req = self.client.get(url);
        if let Some(c) = cond {
            if let Some(etag) = &c.etag {
                req = req.header(IF_NONE_MATCH, etag);
            }
            if let Some(lm) = &c.last_modified {
                req = req.header(IF_MODIFIED_SINCE, lm);
            }
        }
        let mut resp = req.send().await.map_err(transport)?;
        let status = resp.status();
        if status == StatusCode::NOT_MODIFIED {
            return Ok(None);
        }
        if !status.is_success() {
            let transient = status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS;
            return Err((
                FetchError::Status { feed: def.name.clone(), status: status.as_u16(), url: shown.to_owned() },
                transient,
            ));
        }
        let header =
            |h| resp.headers().get(h).and_then(|v: &reqwest::header::HeaderValue| v.to_str().ok()).map(str::to_owned);
        let validators = Conditional { etag: header(ETAG), last_modified: header(LAST_MODIFIED), sha256: None };
        let too_large = || (FetchError::TooLarge { feed: def.name.clone(), max: self.cfg.max_bytes }, false);
        if resp.content_length().is_some_and(|n| n as usize > self.cfg.max_bytes) {
            return Err(too_large());
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(transport)? {
            if body.len() + chunk.len() > self.cfg.max_bytes {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Some((body, validators)))
    }
}

/// The delay before retry `attempt` (0-based): base × 2^attempt, capped at a minute, with up to
/// a quarter of jitter so many instances do not retry in step.
pub fn backoff(base: Duration, attempt: u32) -> Duration {
    let d = base.saturating_mul(1 << attempt.min(16)).min(Duration::from_secs(60));
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    d + d.mul_f64(f64::from(nanos % 1000) / 4000.0)
}

/// The URL with query values that look like credentials replaced (`access_token=…`).
pub fn redact(url: &str) -> String {
    let mut out = String::with_capacity(url.len());
    let mut rest = url;
    while let Some(i) = rest.find(['?', '&']) {
        out.push_str(&rest[..=i]);
        rest = &rest[i + 1..];
        let end = rest.find('&').unwrap_or(rest.len());
        let pair = &rest[..end];
        match pair.split_once('=') {
            Some((k, _)) if ["token", "key", "secret", "password"].iter().any(|s| k.to_lowercase().contains(s)) => {
                out.push_str(k);
                out.push_str("=REDACTED");
            }
            _ => out.push_str(pair),
        }
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_redacted() {
        assert_eq!(
            redact("https://graph.facebook.com/v21.0/threat_descriptors?type=IP_ADDRESS&access_token=123|abc&limit=5"),
            "https://graph.facebook.com/v21.0/threat_descriptors?type=IP_ADDRESS&access_token=REDACTED&limit=5"
        );
        assert_eq!(redact("https://x/a.txt"), "https://x/a.txt");
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let b = Duration::from_secs(1);
        assert!(backoff(b, 0) >= b && backoff(b, 0) < b * 2);
        assert!(backoff(b, 3) >= b * 8);
        assert!(backoff(b, 30) <= Duration::from_secs(75));
    }
}
