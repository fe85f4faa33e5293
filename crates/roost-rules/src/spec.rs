//! The rule file format, as written in `rules/*.toml` (documented in `rules/README.md`).
//! Spans are kept so that every error can name its file and line.

use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleFile {
    #[serde(default)]
    pub rule: Vec<Spanned<RuleSpec>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Low,
    Medium,
    High,
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    pub id: Spanned<String>,
    pub title: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub references: Vec<String>,
    pub severity: Severity,
    /// What kind of behaviour (scanner, traversal, sqli, …): for metrics and reports.
    pub category: String,
    /// Labels operators can switch rules off by (`rules.disable_tags`).
    #[serde(default)]
    pub tags: Vec<String>,
    /// Patterns are case-insensitive unless this is set.
    #[serde(default)]
    pub case_sensitive: bool,
    /// `shadow`: the rule is on trial; its verdicts are recorded and shown as "would block" and
    /// never enforced (`enforce` by default; `rules.shadow` in the config does the same).
    #[serde(default)]
    pub mode: roost_engine::Mode,
    #[serde(rename = "match", default)]
    pub matches: Conditions,
    /// The rule does not apply when any of these holds.
    #[serde(default)]
    pub unless: Conditions,
    pub window: Option<Spanned<WindowSpec>>,
    pub effect: Option<EffectSpec>,
    pub examples: Option<Examples>,
}

/// Conditions on one request. Under `match`, all listed conditions must hold (within a field,
/// any pattern); under `unless`, any one excludes the request.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Conditions {
    #[serde(default)]
    pub method: Vec<String>,
    #[serde(default)]
    pub status: Vec<StatusSpec>,
    /// The server took at least this long.
    #[serde(default, with = "humantime_serde")]
    pub min_request_time: Option<Duration>,
    /// `page` (not a static asset or a path browsers fetch on their own), `static`, `any`.
    pub path_class: Option<String>,
    #[serde(default)]
    pub path: Vec<Spanned<String>>,
    #[serde(default)]
    pub decoded_path: Vec<Spanned<String>>,
    #[serde(default)]
    pub raw_path: Vec<Spanned<String>>,
    #[serde(default)]
    pub query: Vec<Spanned<String>>,
    #[serde(default)]
    pub raw_query: Vec<Spanned<String>>,
    #[serde(default)]
    pub target: Vec<Spanned<String>>,
    #[serde(default)]
    pub user_agent: Vec<Spanned<String>>,
    #[serde(default)]
    pub referer: Vec<Spanned<String>>,
    #[serde(default)]
    pub host: Vec<Spanned<String>>,
    /// Decoded target, user agent, referer and host: where payloads hide.
    #[serde(default)]
    pub anywhere: Vec<Spanned<String>>,
    /// Tokenising detectors (`sqli`, `xss`: libinjection's) run over each decoded query
    /// parameter (name and value), each path segment, the User-Agent and the Referer.
    #[serde(default)]
    pub detect: Vec<String>,
}

/// A status code (`404`) or class (`"4xx"`).
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum StatusSpec {
    Code(u16),
    Class(String),
}

/// Which request field a window counts distinct values of, or groups by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyField {
    Path,
    Target,
    Host,
    UserAgent,
    Method,
}

/// A sliding window per client over the requests that match.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WindowSpec {
    #[serde(with = "humantime_serde")]
    pub within: Duration,
    /// At least this many matching requests (or distinct values, or requests with the same value).
    pub count: u32,
    /// Count distinct values of this field instead of requests.
    pub distinct: Option<KeyField>,
    /// Count requests per value of this field: `count` requests with the same value.
    pub same: Option<KeyField>,
    /// And matching requests make at least this share of all the client's requests in the window.
    pub ratio: Option<f32>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VerdictSpec {
    Challenge,
    Block,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EffectSpec {
    /// Negative evidence per hit, in pseudo-requests.
    pub penalty: Option<f32>,
    /// An immediate verdict…
    pub verdict: Option<VerdictSpec>,
    /// …for this long (escalated for repeat offenders).
    #[serde(default, with = "humantime_serde")]
    pub ttl: Option<Duration>,
}

/// Requests that must and must not trigger the rule. Each entry is a request spec
/// (`GET /.env 404 ua="curl/8"`, optionally `12x … every 5s`) or a whole combined log line.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Examples {
    #[serde(rename = "match", default)]
    pub matches: Vec<Spanned<String>>,
    #[serde(default)]
    pub no_match: Vec<Spanned<String>>,
}
