//! The values roost keeps in Redis (the key schema is `roost_verdicts`'s): `{prefix}v:{subject}`
//! a [`VerdictRecord`], `{prefix}h:{subject}` a list of [`HistoryEntry`], `{prefix}o:{prefix}` an
//! [`OverrideEntry`], `{prefix}px:{subject}` a hash of [`ProxyOutcomes`] counts. JSON with
//! `"v":1` where a value is a document.

use roost_engine::{Class, Explanation, Timestamp, VerdictChange, subject_name};
use serde::{Deserialize, Serialize};

/// What Redis holds for a client whose verdict is not good.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VerdictRecord {
    pub v: u32,
    pub subject: String,
    pub verdict: Class,
    pub reputation: f32,
    /// When the verdict was reached (event time, Unix ms).
    pub at: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<Timestamp>,
    pub requests: u32,
    pub reasons: Vec<String>,
    /// A shadow verdict ("would block"): kept under `s:{subject}`, never enforced.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub shadow: bool,
}

impl VerdictRecord {
    pub fn from_change(c: &VerdictChange) -> VerdictRecord {
        VerdictRecord {
            v: 1,
            subject: subject_name(c.subject),
            verdict: c.to,
            reputation: (c.reputation * 1000.0).round() / 1000.0,
            at: c.at,
            expires: c.expires,
            requests: c.requests,
            reasons: c.reasons.iter().map(|r| r.text.clone()).collect(),
            shadow: c.shadow,
        }
    }

    pub fn from_explanation(x: &Explanation) -> VerdictRecord {
        VerdictRecord {
            v: 1,
            subject: subject_name(x.subject),
            verdict: x.class,
            reputation: (x.reputation * 1000.0).round() / 1000.0,
            at: x.since.unwrap_or(x.last_seen),
            expires: x.expires,
            requests: x.requests,
            reasons: x.reasons.iter().map(|r| r.text.clone()).collect(),
            shadow: false,
        }
    }
}

/// One entry of a subject's history (`{prefix}h:{subject}`, newest first): the verdict as it
/// was written, with sample requests.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HistoryEntry {
    #[serde(flatten)]
    pub record: VerdictRecord,
    #[serde(default)]
    pub samples: Vec<roost_engine::Sample>,
}

/// An operator's override as proxies read it (`{prefix}o:{prefix}`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OverrideEntry {
    pub v: u32,
    /// The address or prefix it covers (`203.0.113.0/24`, `198.51.100.7`).
    pub prefix: String,
    /// `good` for allow.
    pub class: Class,
    /// When it was put in force (Unix ms).
    pub at: Timestamp,
    /// When it ends (Unix ms); `None`: until removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<Timestamp>,
    pub by: String,
    pub comment: String,
}

impl OverrideEntry {
    pub fn new(prefix: String, ov: &roost_engine::Override, at: Timestamp) -> OverrideEntry {
        OverrideEntry {
            v: 1,
            prefix,
            class: ov.class,
            at,
            until: ov.until,
            by: ov.by.clone(),
            comment: ov.comment.clone(),
        }
    }
}

/// What the proxies did with one client's challenges (`{prefix}px:{subject}`, a hash of counts
/// and the last time, Unix ms; kept `OUTCOMES_TTL_MS` after the last).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProxyOutcomes {
    /// Challenge pages served.
    pub issued: u64,
    /// Challenges solved (clearance cookie given).
    pub passed: u64,
    /// Answers refused: wrong, expired, replayed, for another address.
    pub failed: u64,
    /// Requests let through on a valid clearance cookie.
    pub cleared: u64,
    /// Clearance cookies refused (forged, expired, another address).
    pub refused: u64,
    pub last: i64,
}

impl ProxyOutcomes {
    /// Counts one outcome as the proxy's access log names it (`issued`, `passed`,
    /// `passed:wait`, `failed:REASON`, `cleared`, `cookie_refused:REASON`); false for others.
    pub fn add(&mut self, outcome: &str, at: i64) -> bool {
        let kind = outcome.split(':').next().unwrap_or("");
        match kind {
            "issued" => self.issued += 1,
            "passed" => self.passed += 1,
            "failed" => self.failed += 1,
            "cleared" => self.cleared += 1,
            "cookie_refused" => self.refused += 1,
            _ => return false,
        }
        self.last = self.last.max(at);
        true
    }

    /// Adds another's counts.
    pub fn merge(&mut self, o: &ProxyOutcomes) {
        self.issued += o.issued;
        self.passed += o.passed;
        self.failed += o.failed;
        self.cleared += o.cleared;
        self.refused += o.refused;
        self.last = self.last.max(o.last);
    }

    /// The counts by name, as the hash's fields.
    pub fn counts(&self) -> [(&'static str, u64); 5] {
        [
            ("issued", self.issued),
            ("passed", self.passed),
            ("failed", self.failed),
            ("cleared", self.cleared),
            ("refused", self.refused),
        ]
    }
}

#[cfg(test)]
mod tests {
    use roost_engine::{Cause, Reason, Sample};

    use super::*;

    #[test]
    fn redis_values_read_back_as_written() {
        let c = VerdictChange {
            shadow: false,
            subject: "198.51.100.7/32".parse().unwrap(),
            at: Timestamp(1_764_064_800_000),
            from: Class::Good,
            to: Class::Dubious,
            cause: Cause::Evidence,
            reputation: -0.123_456,
            requests: 7,
            expires: Some(Timestamp(1_764_065_400_000)),
            reasons: vec![Reason {
                source: "status:unauthorized".into(),
                text: "12 of 12 answered 401".into(),
                weight: 3.0,
            }],
            samples: vec![Sample {
                at: Timestamp(1_764_064_799_000),
                method: "POST".into(),
                target: "/login".into(),
                status: 401,
                user_agent: None,
            }],
        };
        let rec = VerdictRecord::from_change(&c);
        assert_eq!((rec.subject.as_str(), rec.verdict, rec.reputation), ("198.51.100.7", Class::Dubious, -0.123));
        let json = serde_json::to_string(&rec).unwrap();
        assert!(json.starts_with(r#"{"v":1,"subject":"198.51.100.7""#), "{json}");
        assert_eq!(serde_json::from_str::<VerdictRecord>(&json).unwrap(), rec);

        let h = HistoryEntry { record: rec.clone(), samples: c.samples.clone() };
        let json = serde_json::to_string(&h).unwrap();
        assert_eq!(serde_json::from_str::<HistoryEntry>(&json).unwrap(), h);

        let o = roost_engine::Override { class: Class::Good, until: None, by: "ops".into(), comment: "partner".into() };
        let e = OverrideEntry::new("203.0.113.0/24".into(), &o, Timestamp(5));
        let json = serde_json::to_string(&e).unwrap();
        assert_eq!(serde_json::from_str::<OverrideEntry>(&json).unwrap(), e);

        let mut px = ProxyOutcomes::default();
        assert!(px.add("failed:replayed", 10) && px.add("passed:wait", 12) && !px.add("nonsense", 13));
        assert_eq!((px.failed, px.passed, px.last), (1, 1, 12));
        let json = serde_json::to_string(&px).unwrap();
        assert_eq!(serde_json::from_str::<ProxyOutcomes>(&json).unwrap(), px);
    }
}
