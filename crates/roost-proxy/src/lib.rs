//! Waffles: `roost proxy`, the reverse proxy diverted traffic reaches. For every request it
//! decides, by the client's verdict, between the app, a challenge and an error page, without a
//! Redis round trip on the request path (a local cache follows Redis), and it never needs a
//! third party: the challenge is a SHA-256 proof of work served by the proxy itself.
//!
//! - [`challenge`]: tokens and clearance cookies (pure: secret, binding and time passed in);
//! - [`cache`] and [`sync`]: the verdicts, and the thread that keeps them in step with Redis;
//! - [`clientip`]: the client address, believing `X-Forwarded-For` only from trusted proxies;
//! - [`proxyproto`]: PROXY protocol headers from trusted load balancers;
//! - [`pages`]: the challenge and error pages;
//! - [`service`]: the decisions for each request (verdict, challenge, redemption, access log),
//!   the same for both data paths;
//! - [`h1`]: the HTTP/1 data path, on pingora's listeners, with [`framing`]: strict HTTP/1
//!   framing (what could be smuggled is refused);
//! - [`http2`]: the HTTP/2 data path (TLS with ALPN h2, h2c), on the `h2` crate, with the
//!   app reached over HTTP/1.1 connections kept per worker thread;
//! - [`server`]: listeners, TLS with SNI, upstream pool and health checks, metrics, graceful
//!   restart;
//! - [`accesslog`]: what happened to each request, in a format `roost tail` reads back;
//! - [`outcomes`]: each client's challenge outcomes, for the admin UI.

pub mod accesslog;
pub mod cache;
pub mod challenge;
pub mod clientip;
pub mod config;
pub mod framing;
pub mod h1;
pub mod http2;
pub mod metrics;
pub mod outcomes;
pub mod pages;
pub mod proxyproto;
pub mod server;
pub mod service;
pub mod sync;

pub use config::ProxyConfig;
pub use server::{MetricsAt, Proxy, RunOptions, StopWhen, UpstreamHealth, VerdictSource, build, run, secret};

/// Wall-clock time, Unix ms: the proxy lives at the edge and judges requests as they arrive.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}
