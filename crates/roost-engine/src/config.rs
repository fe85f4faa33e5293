//! The engine's configuration: one typed struct with safe, documented defaults. The reference
//! config (`deploy/roost.toml`) spells every default out, and a test checks they agree.

use std::collections::BTreeMap;
use std::time::Duration;

use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};

use crate::verdict::Class;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EngineConfig {
    /// `enforce` (the default): verdicts are acted on. `shadow`: every verdict is computed,
    /// recorded and shown as "would block", and nothing is enforced (see [`crate::Judge`]).
    pub mode: Mode,
    /// Half-life of the reputation average in event time: evidence this old counts half.
    /// An idle client drifts back to neutral at this pace.
    #[serde(with = "humantime_serde")]
    pub half_life: Duration,
    /// Neutral pseudo-requests every client starts with, so a handful of requests cannot swing
    /// the reputation far (reputation = evidence sum / (evidence weight + prior_weight)).
    pub prior_weight: f32,
    /// IPv6 clients are judged per prefix of this length (64: one subscriber's /64; 128: per
    /// address). IPv4 clients are always judged per address.
    pub ipv6_prefix: u8,
    /// Per-request score by status code (`"404"`) or class (`"4xx"`), from −1 (bad) to +1 (good).
    /// A code not listed takes its class's score; a class not listed scores 0.
    pub scores: BTreeMap<String, f32>,
    pub paths: PathConfig,
    pub verdict: VerdictConfig,
    /// Aggressive crawling: many non-static pages in a short window.
    pub crawl: BehaviourConfig,
    /// Hammering slow pages: repeated requests that take the server long to answer.
    pub slow: SlowConfig,
    /// Clients in these prefixes are never judged (monitoring, your own offices, partners).
    pub allowlist: Vec<IpNetwork>,
    /// Sample requests kept per flagged or suspect client.
    pub samples_per_ip: usize,
    /// Upper bound on clients with a dossier (samples and non-status evidence). Clients with a
    /// non-good verdict always get one; others only while there is room.
    pub max_dossiers: usize,
    /// A good client idle this long is forgotten by `sweep` (its evidence has long decayed).
    #[serde(with = "humantime_serde")]
    pub forget_after: Duration,
    /// Clients tracked at most (about 100 bytes each, more with a dossier). At the limit, the
    /// good clients idle longest are forgotten early.
    pub max_clients: usize,
    /// What the web servers' error logs say, by kind: pseudo-requests of negative evidence each.
    pub error_log: ErrorLogWeights,
    /// IPv6: when several subjects (/64s) of one wider prefix turn bad within a window, the
    /// wider prefix's other subjects are judged at once.
    pub escalation: EscalationConfig,
    /// IPv4 addresses shared by many (a NAT, a CGNAT): challenged rather than blocked.
    pub shared: SharedConfig,
    /// Legitimate-app profiles in force, by name (`profiles/`): their normal 401/403/404
    /// answers count as nothing.
    pub profiles: Vec<String>,
    /// The definitions of `profiles` (filled in by whoever loads the configuration).
    #[serde(skip)]
    pub profile_defs: Vec<AppProfile>,
}

/// `[engine.escalation]`: an attacker rotating through the /64s of its /48 gets no fresh start.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EscalationConfig {
    pub enabled: bool,
    /// The wider prefix (shorter than `ipv6_prefix`).
    pub prefix: u8,
    /// Subjects of one wider prefix that turn bad within `window` …
    pub min_subjects: u16,
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// … make every other subject of it this (at its first request) for `ttl`.
    pub verdict: Class,
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
}

impl Default for EscalationConfig {
    fn default() -> Self {
        EscalationConfig {
            enabled: true,
            prefix: 48,
            min_subjects: 3,
            window: Duration::from_secs(600),
            verdict: Class::Bad,
            ttl: Duration::from_secs(3600),
        }
    }
}

/// `[engine.shared]`: an IPv4 address behind which many distinct user agents behave well is
/// shared (a NAT, a carrier-grade NAT): a verdict there would hit them all.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SharedConfig {
    pub enabled: bool,
    /// Distinct user agents whose requests were answered 2xx/3xx …
    pub min_agents: u16,
    /// … hold the address at `dubious` (challenged, which each person behind it can pass)
    /// unless its reputation falls below this (far more evidence than `bad_below`).
    pub bad_below: f32,
}

impl Default for SharedConfig {
    fn default() -> Self {
        SharedConfig { enabled: true, min_agents: 8, bad_below: -0.95 }
    }
}

/// A legitimate self-hosted app's normal requests (`profiles/*.toml`): answers that are part of
/// its normal operation (Nextcloud's previews and avatars answered 404, WebDAV's 401 before the
/// credentials) and so say nothing about the client.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppProfile {
    /// Lowercase letters, digits, `-` and `_`: what `engine.profiles` names.
    pub name: String,
    pub title: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub references: Vec<String>,
    pub normal: Vec<NormalRequests>,
}

/// Requests an app makes in normal operation, and the answers that are normal for them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NormalRequests {
    /// Regexes on the path (case-insensitive, searched: anchor with `^`).
    pub paths: Vec<String>,
    /// Only these methods; empty: any.
    #[serde(default)]
    pub methods: Vec<String>,
    /// The answers that are normal here.
    #[serde(default = "normal_statuses")]
    pub statuses: Vec<u16>,
    /// `METHOD /path?query STATUS` lines that are normal (tested), and that are not.
    #[serde(default)]
    pub examples: Vec<String>,
    #[serde(default)]
    pub not_examples: Vec<String>,
}

fn normal_statuses() -> Vec<u16> {
    vec![401, 403, 404]
}

/// Whether verdicts are acted on (`enforce`) or only recorded and shown (`shadow`): for the
/// engine as a whole, and for each rule, feed and geo policy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    #[default]
    Enforce,
    Shadow,
}

impl Mode {
    pub fn is_shadow(self) -> bool {
        self == Mode::Shadow
    }
}

/// Penalties of error-log evidence (`[engine.error_log]`), in pseudo-requests scored −1 each,
/// entering the reputation like the access log's answers (a 401 scores −1 once).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ErrorLogWeights {
    /// Basic auth naming a user that does not exist: guessing names.
    pub unknown_user: f32,
    /// Basic auth with a wrong password.
    pub wrong_password: f32,
    /// A request over a rate limit (`limit_req`, `limit_conn`).
    pub rate_limited: f32,
    /// A request no client sends by accident (invalid method or URI, too long a request line).
    pub invalid_request: f32,
    /// A failed login at nginx's mail proxy.
    pub mail_login_failed: f32,
}

impl Default for ErrorLogWeights {
    fn default() -> Self {
        ErrorLogWeights {
            unknown_user: 2.0,
            wrong_password: 1.0,
            rate_limited: 1.0,
            invalid_request: 3.0,
            mail_login_failed: 1.0,
        }
    }
}

impl ErrorLogWeights {
    pub fn of(&self, kind: roost_event::ErrorLogKind) -> f32 {
        use roost_event::ErrorLogKind as K;
        match kind {
            K::UnknownUser => self.unknown_user,
            K::WrongPassword => self.wrong_password,
            K::RateLimited => self.rate_limited,
            K::InvalidRequest => self.invalid_request,
            K::MailLoginFailed => self.mail_login_failed,
        }
    }
}

impl Default for EngineConfig {
    fn default() -> Self {
        let scores = [
            ("1xx", 0.0),
            ("2xx", 1.0),
            ("3xx", 0.5),
            ("304", 1.0),
            ("4xx", -0.5),
            ("400", -0.5),
            ("401", -1.0),
            ("403", -1.0),
            ("404", -1.0),
            ("405", -1.0),
            ("407", -1.0),
            ("408", 0.0),
            ("410", -1.0),
            ("414", -1.0),
            ("429", -1.0),
            ("444", -1.0),
            ("499", 0.0),
            ("5xx", -0.1),
        ];
        EngineConfig {
            mode: Mode::Enforce,
            half_life: Duration::from_secs(600),
            prior_weight: 5.0,
            ipv6_prefix: 64,
            scores: scores.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
            paths: PathConfig::default(),
            verdict: VerdictConfig::default(),
            crawl: BehaviourConfig::default(),
            slow: SlowConfig::default(),
            allowlist: vec!["127.0.0.0/8".parse().expect("valid"), "::1/128".parse().expect("valid")],
            samples_per_ip: 5,
            max_dossiers: 200_000,
            forget_after: Duration::from_secs(3600),
            max_clients: 5_000_000,
            error_log: ErrorLogWeights::default(),
            escalation: EscalationConfig::default(),
            shared: SharedConfig::default(),
            profiles: Vec::new(),
            profile_defs: Vec::new(),
        }
    }
}

/// How much a request counts, by what it asked for.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PathConfig {
    /// File extensions of static assets (lowercase, without the dot).
    pub static_extensions: Vec<String>,
    /// Weight of a request for a static asset (pages weigh 1).
    pub static_weight: f32,
    /// Paths browsers and well-behaved bots fetch on their own, which weigh nothing: a 404 on
    /// `/favicon.ico` says nothing about the client. Exact, or a prefix ending in `*`.
    pub benign: Vec<String>,
}

impl Default for PathConfig {
    fn default() -> Self {
        let ext = [
            "css",
            "js",
            "mjs",
            "map",
            "png",
            "jpg",
            "jpeg",
            "gif",
            "ico",
            "svg",
            "webp",
            "avif",
            "bmp",
            "woff",
            "woff2",
            "ttf",
            "otf",
            "eot",
            "mp4",
            "webm",
            "mp3",
            "ogg",
            "wav",
            "webmanifest",
        ];
        let benign = [
            "/favicon.ico",
            "/favicon.png",
            "/robots.txt",
            "/sitemap.xml",
            "/ads.txt",
            "/humans.txt",
            "/apple-touch-icon*",
            "/browserconfig.xml",
            "/.well-known/*",
        ];
        PathConfig {
            static_extensions: ext.into_iter().map(str::to_owned).collect(),
            static_weight: 0.1,
            benign: benign.into_iter().map(str::to_owned).collect(),
        }
    }
}

/// From reputation to verdict.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VerdictConfig {
    /// Reputation below which a client is dubious (challenged).
    pub dubious_below: f32,
    /// Reputation below which a client is bad (blocked).
    pub bad_below: f32,
    /// A verdict is left only when the reputation has recovered this far past its threshold,
    /// so clients near a threshold do not flap.
    pub hysteresis: f32,
    /// Minimum evidence: a client is judged on its reputation only after this many of its
    /// requests to non-static paths were answered with a negative score (one 404 never
    /// makes anyone dubious).
    pub min_negative_requests: u16,
    /// … and only with at least this much (decayed) evidence weight.
    pub min_weight: f32,
    /// How long a dubious verdict holds after the last evidence for it.
    #[serde(with = "humantime_serde")]
    pub dubious_ttl: Duration,
    /// How long a bad verdict holds after the last evidence for it.
    #[serde(with = "humantime_serde")]
    pub bad_ttl: Duration,
    /// Repeat offenders: each new offence within `repeat_memory` multiplies the TTL by this.
    pub repeat_factor: f32,
    /// Longest TTL escalation can reach.
    #[serde(with = "humantime_serde")]
    pub max_ttl: Duration,
    /// How long offences are remembered for escalation.
    #[serde(with = "humantime_serde")]
    pub repeat_memory: Duration,
}

impl Default for VerdictConfig {
    fn default() -> Self {
        VerdictConfig {
            dubious_below: -0.3,
            bad_below: -0.6,
            hysteresis: 0.1,
            min_negative_requests: 5,
            min_weight: 4.0,
            dubious_ttl: Duration::from_secs(15 * 60),
            bad_ttl: Duration::from_secs(3600),
            repeat_factor: 2.0,
            max_ttl: Duration::from_secs(24 * 3600),
            repeat_memory: Duration::from_secs(24 * 3600),
        }
    }
}

/// A built-in behavioural signal: a decayed count over a window, compared with a limit.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BehaviourConfig {
    pub enabled: bool,
    /// Requests per window above which the behaviour counts as evidence.
    pub limit: f32,
    /// The window (the time constant of the decayed count).
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// Negative evidence per request beyond the limit, in pseudo-requests.
    pub penalty: f32,
    /// An immediate verdict while the behaviour lasts (and `ttl` after), or none.
    pub verdict: Option<Class>,
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
}

impl Default for BehaviourConfig {
    fn default() -> Self {
        BehaviourConfig {
            enabled: true,
            limit: 120.0,
            window: Duration::from_secs(60),
            penalty: 1.0,
            verdict: Some(Class::Dubious),
            ttl: Duration::from_secs(15 * 60),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SlowConfig {
    #[serde(flatten)]
    pub behaviour: BehaviourConfig,
    /// A request is slow when the server took at least this long.
    #[serde(with = "humantime_serde")]
    pub threshold: Duration,
    /// When more than this share of all recent page requests is slow, the site itself is slow:
    /// slowness is then nobody's fault and counts against no client.
    pub max_site_share: f32,
}

impl Default for SlowConfig {
    fn default() -> Self {
        SlowConfig {
            behaviour: BehaviourConfig {
                enabled: true,
                limit: 5.0,
                window: Duration::from_secs(120),
                penalty: 2.0,
                verdict: Some(Class::Dubious),
                ttl: Duration::from_secs(15 * 60),
            },
            threshold: Duration::from_secs(2),
            max_site_share: 0.25,
        }
    }
}

/// Why a config was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConfigError {
    #[error("engine.scores: {0:?} is not a status code (100-599) or class (1xx-5xx)")]
    ScoreKey(String),
    #[error("engine.scores.{0}: score {1} is outside -1..=1")]
    ScoreRange(String, f32),
    #[error("engine.{0}: {1}")]
    Invalid(&'static str, String),
}

impl EngineConfig {
    /// Checks what serde cannot: ranges and relations between fields.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let e = &self.escalation;
        // (a prefix no shorter than ipv6_prefix leaves escalation without effect)
        if e.enabled && (e.prefix == 0 || e.prefix > 128 || e.min_subjects < 2 || e.verdict == Class::Good) {
            return Err(ConfigError::Invalid(
                "escalation",
                format!(
                    "prefix ({}) must be 1-128, min_subjects ({}) at least 2, verdict dubious or bad",
                    e.prefix, e.min_subjects
                ),
            ));
        }
        if self.shared.enabled && !(-1.0..=self.verdict.bad_below).contains(&self.shared.bad_below) {
            return Err(ConfigError::Invalid(
                "shared",
                format!("bad_below ({}) must be between -1 and verdict.bad_below", self.shared.bad_below),
            ));
        }
        for name in &self.profiles {
            let def = self.profile_defs.iter().find(|p| p.name == *name).ok_or_else(|| {
                ConfigError::Invalid("profiles", format!("no app profile named {name:?} (roost profiles list)"))
            })?;
            for n in &def.normal {
                for p in &n.paths {
                    regex::Regex::new(p).map_err(|e| {
                        ConfigError::Invalid("profiles", format!("profile {name}: bad path pattern {p:?}: {e}"))
                    })?;
                }
            }
        }
        for (k, v) in &self.scores {
            parse_score_key(k).ok_or_else(|| ConfigError::ScoreKey(k.clone()))?;
            if !(-1.0..=1.0).contains(v) {
                return Err(ConfigError::ScoreRange(k.clone(), *v));
            }
        }
        let v = &self.verdict;
        if !(v.bad_below < v.dubious_below && v.dubious_below < 0.0 && v.bad_below > -1.0) {
            return Err(ConfigError::Invalid(
                "verdict",
                format!("need -1 < bad_below ({}) < dubious_below ({}) < 0", v.bad_below, v.dubious_below),
            ));
        }
        if !(0.0..=0.5).contains(&v.hysteresis) {
            return Err(ConfigError::Invalid("verdict.hysteresis", "must be within 0..=0.5".into()));
        }
        if self.half_life.is_zero() {
            return Err(ConfigError::Invalid("half_life", "must be positive".into()));
        }
        if self.prior_weight.is_nan() || self.prior_weight < 0.0 {
            return Err(ConfigError::Invalid("prior_weight", "must be >= 0".into()));
        }
        if self.max_clients == 0 {
            return Err(ConfigError::Invalid("max_clients", "must be at least 1".into()));
        }
        if !(1..=128).contains(&self.ipv6_prefix) {
            return Err(ConfigError::Invalid("ipv6_prefix", "must be within 1..=128".into()));
        }
        for (name, b) in [("crawl", &self.crawl), ("slow", &self.slow.behaviour)] {
            if b.enabled
                && (b.window.is_zero() || b.limit.is_nan() || b.limit <= 0.0 || b.penalty.is_nan() || b.penalty < 0.0)
            {
                return Err(ConfigError::Invalid(name, "window and limit must be positive, penalty >= 0".into()));
            }
        }
        if !(0.0..=1.0).contains(&self.paths.static_weight) {
            return Err(ConfigError::Invalid("paths.static_weight", "must be within 0..=1".into()));
        }
        Ok(())
    }
}

/// `"404"` → (404, 404); `"4xx"` → (400, 499).
pub(crate) fn parse_score_key(k: &str) -> Option<(u16, u16)> {
    let b = k.as_bytes();
    if b.len() != 3 || !(b'1'..=b'5').contains(&b[0]) {
        return None;
    }
    if &b[1..] == b"xx" || &b[1..] == b"XX" {
        let lo = (b[0] - b'0') as u16 * 100;
        return Some((lo, lo + 99));
    }
    let code: u16 = k.parse().ok()?;
    Some((code, code))
}
