//! The `[proxy]` config section.

use std::net::SocketAddr;
use std::time::Duration;

use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProxyConfig {
    /// Plain-HTTP listeners (`addr:port`).
    pub listen: Vec<String>,
    /// HTTP/2 without TLS (prior knowledge) on the plain listeners.
    pub h2c: bool,
    /// TLS listeners; HTTP/2 by ALPN.
    pub tls: Vec<TlsListener>,
    /// The app: `addr:port` of each upstream server, balanced round-robin among the healthy.
    pub upstreams: Vec<String>,
    pub health_check: HealthCheckConfig,
    /// Connecting to an upstream.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Idle connections to the upstreams kept per worker thread for HTTP/2 requests (each
    /// HTTP/1 client connection keeps its own upstream connection instead), like nginx's
    /// `keepalive` in an `upstream` block; beyond it, the oldest is closed.
    pub upstream_keepalive: usize,
    /// Waiting for an upstream's response (each read).
    #[serde(with = "humantime_serde")]
    pub upstream_timeout: Duration,
    /// Waiting for a client's request header or body (each read): slower clients are cut off.
    #[serde(with = "humantime_serde")]
    pub client_timeout: Duration,
    /// Idle keep-alive connections from clients are closed after this.
    #[serde(with = "humantime_serde")]
    pub keepalive_timeout: Duration,
    /// Request line and headers larger than this get 431.
    pub max_header_bytes: usize,
    /// Peers whose `X-Forwarded-For` is believed (load balancers in front of the proxy).
    /// Anyone else's is ignored.
    pub trusted_proxies: Vec<IpNetwork>,
    /// Connections from `trusted_proxies` start with a PROXY protocol header (v1 or v2), which
    /// names the client: for balancers that pass TCP (or TLS) through. Connections from them
    /// without one are refused; anyone else's are never read for one.
    pub proxy_protocol: bool,
    /// Manual overrides, before any verdict: always to the app…
    pub allow: Vec<IpNetwork>,
    /// …or always refused.
    pub deny: Vec<IpNetwork>,
    /// Where clients without a known verdict go while the verdict store is unreachable.
    pub unknown: UnknownPolicy,
    /// The status for clients whose verdict is bad: 403 or 429.
    pub bad_status: u16,
    pub challenge: ChallengeConfig,
    /// The access log (`roost tail` reads it with [`crate::accesslog::LOG_FORMAT`]); empty: none.
    pub access_log: String,
    /// Where /metrics and /healthz listen.
    pub metrics_listen: SocketAddr,
    /// Worker threads per listener service (0: one per core).
    pub threads: usize,
    /// On SIGTERM/SIGQUIT: how long to keep serving (so a new process can take over the
    /// listeners, `roost proxy --upgrade`), then how long to let requests finish.
    #[serde(with = "humantime_serde")]
    pub grace_period: Duration,
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// The socket listeners are handed over on for a graceful upgrade.
    pub upgrade_sock: String,
    pub pid_file: String,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            listen: vec!["127.0.0.1:8080".into()],
            h2c: false,
            tls: Vec::new(),
            upstreams: vec!["127.0.0.1:8081".into()],
            health_check: HealthCheckConfig::default(),
            connect_timeout: Duration::from_secs(5),
            upstream_keepalive: 256,
            upstream_timeout: Duration::from_secs(60),
            client_timeout: Duration::from_secs(15),
            keepalive_timeout: Duration::from_secs(60),
            max_header_bytes: 32 * 1024,
            trusted_proxies: Vec::new(),
            proxy_protocol: false,
            allow: Vec::new(),
            deny: Vec::new(),
            unknown: UnknownPolicy::App,
            bad_status: 403,
            challenge: ChallengeConfig::default(),
            access_log: String::new(),
            metrics_listen: "127.0.0.1:9754".parse().expect("valid"),
            threads: 0,
            grace_period: Duration::from_secs(5),
            shutdown_timeout: Duration::from_secs(10),
            upgrade_sock: "/tmp/roost-proxy-upgrade.sock".into(),
            pid_file: "/tmp/roost-proxy.pid".into(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsListener {
    pub listen: String,
    /// Certificates (PEM, chain after the leaf) and keys; the client's SNI picks the one whose
    /// names match, the first is the default.
    pub certs: Vec<CertKey>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertKey {
    pub cert: String,
    pub key: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HealthCheckConfig {
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// HTTP path to GET (a 2xx is healthy); empty: a TCP connect is enough.
    pub path: String,
    /// The Host header of the check.
    pub host: String,
}

impl Default for HealthCheckConfig {
    fn default() -> Self {
        HealthCheckConfig { interval: Duration::from_secs(2), path: String::new(), host: "localhost".into() }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UnknownPolicy {
    App,
    Challenge,
    Error,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ChallengeConfig {
    /// A file holding the secret challenges and cookies are signed with; every proxy that should
    /// accept the others' cookies reads the same one. Empty: a random secret per process
    /// (cookies then end with it).
    pub secret_file: String,
    /// Proof-of-work difficulty in leading zero bits, at the dubious edge and for the worst
    /// reputations (each bit doubles the expected work; 16 bits is about 65k hashes).
    pub min_bits: u8,
    pub max_bits: u8,
    /// The no-JavaScript path: seconds to wait, at the dubious edge and for the worst.
    pub min_wait_secs: u64,
    pub max_wait_secs: u64,
    /// How long a challenge can be answered.
    #[serde(with = "humantime_serde")]
    pub valid_for: Duration,
    /// How long a clearance cookie lets a dubious client through.
    #[serde(with = "humantime_serde")]
    pub clearance_for: Duration,
    pub cookie: String,
    /// Clients whose answered challenges are remembered (against replays) at most, each with
    /// up to 64 live ones; with Redis configured, every proxy of the fleet also claims each
    /// answer there (`SET NX`), so none can be redeemed twice anywhere.
    pub max_redeemed: usize,
}

impl Default for ChallengeConfig {
    fn default() -> Self {
        ChallengeConfig {
            secret_file: String::new(),
            min_bits: 14,
            max_bits: 20,
            min_wait_secs: 5,
            max_wait_secs: 20,
            valid_for: Duration::from_secs(300),
            clearance_for: Duration::from_secs(3600),
            cookie: "roost_clearance".into(),
            max_redeemed: 100_000,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("proxy.{0}: {1}")]
    Invalid(&'static str, String),
}

impl ProxyConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |k, m: &str| Err(ConfigError::Invalid(k, m.into()));
        if self.listen.is_empty() && self.tls.is_empty() {
            return bad("listen", "no listener: set listen or tls");
        }
        if self.upstreams.is_empty() {
            return bad("upstreams", "no upstream to send the app's traffic to");
        }
        if !matches!(self.bad_status, 403 | 429) {
            return bad("bad_status", "must be 403 or 429");
        }
        let c = &self.challenge;
        if c.min_bits == 0 || c.min_bits > c.max_bits || c.max_bits > 32 {
            return bad("challenge.min_bits", "need 1 <= min_bits <= max_bits <= 32");
        }
        if c.min_wait_secs > c.max_wait_secs {
            return bad("challenge.min_wait_secs", "must not exceed max_wait_secs");
        }
        if c.cookie.is_empty() || !c.cookie.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
            return bad("challenge.cookie", "a cookie name: letters, digits, _ and -");
        }
        if self.proxy_protocol && self.trusted_proxies.is_empty() {
            return bad("proxy_protocol", "PROXY protocol headers are read only from trusted_proxies: set them");
        }
        for t in &self.tls {
            if t.certs.is_empty() {
                return bad("tls.certs", "a TLS listener needs at least one certificate");
            }
        }
        Ok(())
    }
}
