//! Evidence beyond the status code, and the extension points that supply it.
//!
//! Every source — the built-in behaviour signals, known-bad rules, threat feeds, GeoIP/ASN,
//! netflow, operators — speaks the same language: an [`Evidence`] with a [`Source`], a penalty
//! (pseudo-requests of negative evidence that enter the reputation average and decay with it),
//! optionally an immediate verdict with a time to live, and the reason in words.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use ipnetwork::IpNetwork;
use roost_event::{RequestEvent, Timestamp};
use serde::{Deserialize, Serialize};

use crate::scoring::PathClass;
use crate::verdict::Class;

/// What kind of source evidence came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    /// The engine's built-in signals (crawl rate, slow pages).
    Behaviour,
    /// A known-bad rule from `rules/`.
    Rule,
    /// A threat feed listing.
    Feed,
    /// Country or ASN policy.
    Geo,
    /// Netflow features.
    Flow,
    /// The proxy's challenge outcomes.
    Proxy,
    /// An operator.
    Manual,
    /// A web server's error log.
    #[serde(rename = "errorlog")]
    ErrorLog,
    /// Search-engine crawler verification (forward-confirmed reverse DNS).
    Crawler,
}

impl SourceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SourceKind::Behaviour => "behaviour",
            SourceKind::Rule => "rule",
            SourceKind::Feed => "feed",
            SourceKind::Geo => "geo",
            SourceKind::Flow => "flow",
            SourceKind::Proxy => "proxy",
            SourceKind::Manual => "manual",
            SourceKind::ErrorLog => "errorlog",
            SourceKind::Crawler => "crawler",
        }
    }
}

impl std::str::FromStr for SourceKind {
    type Err = String;
    fn from_str(s: &str) -> Result<SourceKind, String> {
        Ok(match s {
            "behaviour" => SourceKind::Behaviour,
            "rule" => SourceKind::Rule,
            "feed" => SourceKind::Feed,
            "geo" => SourceKind::Geo,
            "flow" => SourceKind::Flow,
            "proxy" => SourceKind::Proxy,
            "manual" => SourceKind::Manual,
            "errorlog" => SourceKind::ErrorLog,
            "crawler" => SourceKind::Crawler,
            _ => return Err(format!("unknown evidence source kind {s:?}")),
        })
    }
}

/// Where a piece of evidence came from: a kind and an id within it (`rule:R-1003`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Source {
    pub kind: SourceKind,
    pub id: Arc<str>,
    /// A source in shadow mode (a rule, feed or geo policy being tried): its evidence reaches
    /// only a [`crate::Judge`]'s candidate engine, whose verdicts are recorded and shown but
    /// never enforced.
    pub shadow: bool,
}

impl Source {
    pub fn new(kind: SourceKind, id: impl Into<Arc<str>>) -> Source {
        Source { kind, id: id.into(), shadow: false }
    }

    /// The same source, in shadow mode or not.
    pub fn in_shadow(mut self, shadow: bool) -> Source {
        self.shadow = shadow;
        self
    }
}

/// The id suffix of flow evidence whose flows do not prove their source address
/// (`flow:synflood-unproven`): SYN-only or one-way flows, which anyone can forge "from" any
/// address. Such evidence weighs at most a dubious verdict, and `roost bgp` never diverts a
/// verdict that rests on it alone ([`crate::Reason`]s carry the source).
pub const UNPROVEN: &str = "-unproven";

/// Whether a source, written `kind:id`, is flow evidence that may have been forged.
pub fn unproven_source(source: &str) -> bool {
    source.strip_prefix("flow:").is_some_and(|id| id.ends_with(UNPROVEN))
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind.as_str(), self.id)
    }
}

/// One piece of evidence about a client.
#[derive(Clone, Debug, PartialEq)]
pub struct Evidence {
    pub source: Source,
    /// Negative evidence in pseudo-requests scored −1 (a negative value is credit, scored +1).
    /// It enters the reputation average and decays with it.
    pub penalty: f32,
    /// An immediate verdict (at least this class) for this long after the evidence; `Good`:
    /// the client is held good for this long whatever else the evidence says (a verified
    /// crawler; only an operator's override beats it).
    pub verdict: Option<(Class, Duration)>,
    /// The reason in words and numbers, e.g. "R-1003 path traversal: GET /..%2f..%2fetc/passwd".
    pub detail: String,
}

/// What an [`Inspector`] sees of one request.
pub struct RequestContext<'a, 'e> {
    /// The client as the engine keys it (an address, or an IPv6 prefix).
    pub subject: IpNetwork,
    pub event: &'a RequestEvent<'e>,
    pub path_class: PathClass,
    pub now: Timestamp,
}

/// Looks at every request and may add evidence: known-bad rules plug in here. Inspectors may
/// keep per-client state (sliding windows) and must bound it themselves.
pub trait Inspector: Send {
    /// A short name for logs and metrics.
    fn name(&self) -> &str;
    fn inspect(&mut self, ctx: &RequestContext<'_, '_>, out: &mut Vec<Evidence>);
    /// A version string of the inspector's configuration (the rule set's), quoted in reasons.
    fn version(&self) -> Option<String> {
        None
    }
    /// Drops per-client state not touched since `before` (called by the engine's sweep).
    fn forget_before(&mut self, _before: Timestamp) {}
    /// The stateless half of [`Inspector::inspect`], if it has one: a [`Stager`] that may run
    /// ahead of the engine on another thread (`roost replay` parses and matches on all cores
    /// while one thread keeps the state). Its findings come back through `inspect_staged`.
    fn stager(&mut self) -> Option<Box<dyn Stager>> {
        None
    }
    /// `inspect`, given what this inspector's stager found in the request. An inspector whose
    /// configuration changed since it made the stager ignores `found` and inspects afresh.
    fn inspect_staged(&mut self, ctx: &RequestContext<'_, '_>, found: &[(u32, u64)], out: &mut Vec<Evidence>) {
        let _ = found;
        self.inspect(ctx, out);
    }
}

/// The stateless half of an inspector: what it finds in a request without knowing the client
/// (the rules a request matches), as `(index, value)` pairs of its own meaning.
pub trait Stager: Send {
    fn stage(&mut self, event: &RequestEvent<'_>, path_class: PathClass, out: &mut Vec<(u32, u64)>);
}

/// Knows something about an address regardless of what it requests: threat feeds, GeoIP/ASN.
/// Consulted when a client is first seen and whenever it returns after its evidence decayed.
pub trait Annotator: Send {
    fn name(&self) -> &str;
    fn annotate(&self, ip: IpAddr, now: Timestamp, out: &mut Vec<Evidence>);
}
