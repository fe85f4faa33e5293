//! The verdicts topic (`roost.verdicts`, compacted): key = the subject
//! ([`crate::subject_key`]); value = the [`VerdictChange`] as JSON with `"v":1` first. The last
//! record per subject is its current verdict (a `renewed` one has `from == to` and a later
//! `expires`). Written by `roost score` and `roost up`; read by the flowspec controller.

use roost_engine::{VerdictChange, subject_name};

/// The record key for a change: its subject as text.
pub fn key(c: &VerdictChange) -> Vec<u8> {
    subject_name(c.subject).into_bytes()
}

/// A verdict change as a verdicts-topic value: `{"v":1, …VerdictChange}`.
pub fn encode(c: &VerdictChange) -> Vec<u8> {
    let json = serde_json::to_vec(c).expect("a change serializes");
    let mut out = b"{\"v\":1,".to_vec();
    out.extend_from_slice(&json[1..]);
    out
}

/// A verdicts-topic value read back: version 1, or an error (never a guess).
pub fn decode(value: &[u8]) -> Result<VerdictChange, serde_json::Error> {
    #[derive(serde::Deserialize)]
    struct Versioned {
        v: u32,
        #[serde(flatten)]
        change: VerdictChange,
    }
    let m: Versioned = serde_json::from_slice(value)?;
    if m.v != 1 {
        return Err(serde::de::Error::custom(format!("verdicts-topic version {} (this reader knows 1)", m.v)));
    }
    Ok(m.change)
}

#[cfg(test)]
mod tests {
    use roost_engine::{Cause, Class, Reason, Sample, Timestamp, VerdictChange};

    use super::{decode, encode, key};

    #[test]
    fn a_verdicts_topic_value_reads_back_as_written_and_other_versions_are_refused() {
        let c = VerdictChange {
            shadow: false,
            subject: "2001:db8:1:2::/64".parse().unwrap(),
            at: Timestamp(1_764_064_800_000),
            from: Class::Good,
            to: Class::Bad,
            cause: Cause::Evidence,
            reputation: -0.75,
            requests: 42,
            expires: Some(Timestamp(1_764_065_400_000)),
            reasons: vec![Reason { source: "rule:R-1003".into(), text: "probed /phpmyadmin".into(), weight: 8.0 }],
            samples: vec![Sample {
                at: Timestamp(1_764_064_799_000),
                method: "GET".into(),
                target: "/phpmyadmin/".into(),
                status: 404,
                user_agent: Some("<script>".into()),
            }],
        };
        assert_eq!(key(&c), b"2001:db8:1:2::/64");
        let v = encode(&c);
        assert!(v.starts_with(b"{\"v\":1,"));
        assert_eq!(decode(&v).unwrap(), c);
        let v2 = String::from_utf8(v).unwrap().replacen("\"v\":1", "\"v\":2", 1);
        assert!(decode(v2.as_bytes()).unwrap_err().to_string().contains("version 2"));
        assert!(decode(b"{\"v\":1}").is_err());
        assert!(decode(b"not json").is_err());
    }
}
