//! What the engine decides and how it explains itself.

use std::fmt;

use ipnetwork::IpNetwork;
use roost_event::Timestamp;
use serde::{Deserialize, Serialize};

/// The outcome per client: what the proxy should do with its requests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Class {
    /// Pass to the app.
    #[default]
    Good,
    /// Challenge: prove you are a browser at human pace.
    Dubious,
    /// Block.
    Bad,
}

impl Class {
    pub const ALL: [Class; 3] = [Class::Good, Class::Dubious, Class::Bad];

    pub fn as_str(self) -> &'static str {
        match self {
            Class::Good => "good",
            Class::Dubious => "dubious",
            Class::Bad => "bad",
        }
    }

    pub(crate) fn from_u8(v: u8) -> Class {
        match v {
            1 => Class::Dubious,
            2 => Class::Bad,
            _ => Class::Good,
        }
    }
}

impl fmt::Display for Class {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Class {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "good" | "allow" => Ok(Class::Good),
            "dubious" | "challenge" => Ok(Class::Dubious),
            "bad" | "block" => Ok(Class::Bad),
            _ => Err(format!("unknown verdict {s:?} (good, dubious or bad)")),
        }
    }
}

/// One piece of the explanation: which source, what it saw, in words and numbers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Reason {
    /// Where the evidence came from: `status:not_found`, `behaviour:crawl`, `rule:R-1003`,
    /// `feed:spamhaus_drop`, `override`, …
    pub source: String,
    /// The evidence in words, e.g. "41 of 52 requests answered 404 on non-static paths within 3 min".
    pub text: String,
    /// How much it weighed (pseudo-requests of negative evidence; 0 for context).
    pub weight: f32,
}

/// A request kept as an example of what a client did.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    pub at: Timestamp,
    pub method: String,
    /// Path and query, truncated to a bounded length.
    pub target: String,
    pub status: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
}

/// Why a verdict changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Cause {
    /// New evidence crossed a threshold.
    Evidence,
    /// The verdict's time to live ran out and the evidence no longer holds it.
    Expired,
    /// An operator set or removed an override.
    Override,
    /// Not a change of class: evidence kept the verdict in force and pushed its expiry out (see
    /// `Engine::track_renewals`). Stores that keep verdicts with a TTL rewrite them.
    Renewed,
}

/// A client's verdict moved from one class to another. The engine's output: sinks publish these
/// (Redis, the verdicts topic, the admin UI's history).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VerdictChange {
    /// The client: an address (/32, /128) or the IPv6 prefix clients are aggregated by.
    pub subject: IpNetwork,
    pub at: Timestamp,
    pub from: Class,
    pub to: Class,
    pub cause: Cause,
    pub reputation: f32,
    /// Requests seen from the subject in its current episode.
    pub requests: u32,
    /// When a non-good verdict lapses unless renewed by new evidence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<Timestamp>,
    /// Always at least one.
    pub reasons: Vec<Reason>,
    pub samples: Vec<Sample>,
    /// A shadow verdict: what the engine would decide with the sources in shadow mode (or with
    /// everything, under `mode = "shadow"`). Recorded and shown as "would block"; no proxy,
    /// router or enforcement key acts on it. See [`crate::Judge`].
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub shadow: bool,
}

/// Everything the engine knows about one client, for `explain`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Explanation {
    pub subject: IpNetwork,
    pub class: Class,
    pub reputation: f32,
    pub requests: u32,
    pub first_seen: Timestamp,
    pub last_seen: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<Timestamp>,
    /// How many times this client was flagged within the repeat-offender memory.
    pub offences: u32,
    pub reasons: Vec<Reason>,
    pub samples: Vec<Sample>,
}

/// A subject as text: a plain address for a single host (`203.0.113.7`), `prefix/len` for an
/// aggregated IPv6 prefix (`2001:db8:1:2::/64`). Kafka keys, Redis keys and reports use it.
pub fn subject_name(net: IpNetwork) -> String {
    let full = match net.ip() {
        std::net::IpAddr::V4(_) => 32,
        std::net::IpAddr::V6(_) => 128,
    };
    if net.prefix() == full { net.ip().to_string() } else { net.to_string() }
}
