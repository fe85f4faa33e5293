//! The proxy's copy of the verdict store: every non-good verdict, looked up per request without
//! a Redis round trip. Kept in sync by [`crate::sync`]; lookups honour each verdict's expiry,
//! so a verdict whose key Redis let lapse (no change is announced for that) stops applying here
//! at the same moment.

use std::net::IpAddr;
use std::sync::Arc;

use dashmap::DashMap;
use ipnetwork::IpNetwork;
use roost_engine::Class;
use roost_verdicts::VerdictRecord;

/// What the proxy needs of a verdict.
#[derive(Clone, Debug, PartialEq)]
pub struct Cached {
    pub subject: Arc<str>,
    pub class: Class,
    pub reputation: f32,
    /// When it was reached (Unix ms): with the subject, names the verdict for error references.
    pub at: i64,
    /// Unix ms; `None`: until changed.
    pub expires: Option<i64>,
}

/// Verdicts by subject (an IPv4 address, or an IPv6 prefix of `ipv6_prefix` bits).
pub struct VerdictCache {
    map: DashMap<IpNetwork, Cached>,
    ipv6_prefix: u8,
}

impl VerdictCache {
    pub fn new(ipv6_prefix: u8) -> VerdictCache {
        VerdictCache { map: DashMap::new(), ipv6_prefix: ipv6_prefix.clamp(1, 128) }
    }

    /// The subject a client address is judged as (the engine's and the Redis key's).
    pub fn subject_of(&self, ip: IpAddr) -> IpNetwork {
        match ip {
            IpAddr::V4(v4) => IpNetwork::V4(ipnetwork::Ipv4Network::from(v4)),
            IpAddr::V6(v6) => {
                let len = self.ipv6_prefix;
                let mask = if len == 128 { u128::MAX } else { !(u128::MAX >> len) };
                let net = std::net::Ipv6Addr::from(u128::from(v6) & mask);
                IpNetwork::V6(ipnetwork::Ipv6Network::new(net, len).expect("prefix within 1..=128"))
            }
        }
    }

    /// The binding challenges and cookies are signed for: the subject as text.
    pub fn binding(&self, ip: IpAddr) -> String {
        roost_engine::subject_name(self.subject_of(ip))
    }

    /// The client's verdict, unless none or expired at `now` (Unix ms).
    pub fn lookup(&self, ip: IpAddr, now: i64) -> Option<Cached> {
        if self.map.is_empty() {
            return None;
        }
        let e = self.map.get(&self.subject_of(ip))?;
        if e.expires.is_some_and(|x| x <= now) {
            return None;
        }
        Some(e.clone())
    }

    /// Applies a stored record (a good verdict removes the subject).
    pub fn apply(&self, r: &VerdictRecord) -> bool {
        let Ok(net) = parse_subject(&r.subject) else {
            return false;
        };
        if r.verdict == Class::Good {
            self.map.remove(&net);
        } else {
            self.map.insert(
                net,
                Cached {
                    subject: r.subject.as_str().into(),
                    class: r.verdict,
                    reputation: r.reputation,
                    at: r.at.0,
                    expires: r.expires.map(|e| e.0),
                },
            );
        }
        true
    }

    pub fn remove(&self, subject: &str) {
        if let Ok(net) = parse_subject(subject) {
            self.map.remove(&net);
        }
    }

    /// Replaces everything with a full load (subjects missing from it are dropped).
    pub fn replace_all<'a>(&self, records: impl IntoIterator<Item = &'a VerdictRecord>) {
        let mut keep = std::collections::HashSet::new();
        for r in records {
            if self.apply(r)
                && let Ok(n) = parse_subject(&r.subject)
            {
                keep.insert(n);
            }
        }
        self.map.retain(|k, _| keep.contains(k));
    }

    /// Drops verdicts that expired by `now`.
    pub fn sweep(&self, now: i64) -> usize {
        let before = self.map.len();
        self.map.retain(|_, v| v.expires.is_none_or(|x| x > now));
        before - self.map.len()
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// A subject as the engine names it: `203.0.113.7`, `2001:db8:1:2::/64`, `2001:db8::7`.
pub fn parse_subject(s: &str) -> Result<IpNetwork, ipnetwork::IpNetworkError> {
    s.parse::<IpNetwork>()
}

#[cfg(test)]
mod tests {
    use super::*;
    use roost_engine::Timestamp;

    fn rec(subject: &str, verdict: Class, expires: Option<i64>) -> VerdictRecord {
        VerdictRecord {
            v: 1,
            subject: subject.into(),
            verdict,
            reputation: -0.4,
            at: Timestamp(1000),
            expires: expires.map(Timestamp),
            requests: 3,
            reasons: vec![],
        }
    }

    #[test]
    fn ipv6_clients_share_their_prefix_and_expiry_is_honoured() {
        let c = VerdictCache::new(64);
        c.apply(&rec("2001:db8:1:2::/64", Class::Bad, Some(5000)));
        c.apply(&rec("203.0.113.7", Class::Dubious, None));
        assert_eq!(c.lookup("2001:db8:1:2::99".parse().unwrap(), 4000).unwrap().class, Class::Bad);
        assert!(c.lookup("2001:db8:1:3::99".parse().unwrap(), 4000).is_none());
        assert!(c.lookup("2001:db8:1:2::99".parse().unwrap(), 5000).is_none());
        assert_eq!(c.lookup("203.0.113.7".parse().unwrap(), 9_999_999).unwrap().class, Class::Dubious);
        assert_eq!(c.binding("2001:db8:1:2:aa::1".parse().unwrap()), "2001:db8:1:2::/64");
        assert_eq!(c.binding("203.0.113.7".parse().unwrap()), "203.0.113.7");
        assert_eq!(c.sweep(6000), 1);
        c.apply(&rec("203.0.113.7", Class::Good, None));
        assert!(c.is_empty());
        let full = VerdictCache::new(128);
        full.apply(&rec("2001:db8::7", Class::Bad, None));
        assert!(full.lookup("2001:db8::7".parse().unwrap(), 0).is_some());
        assert!(full.lookup("2001:db8::8".parse().unwrap(), 0).is_none());
    }

    #[test]
    fn a_full_load_replaces_what_was_there() {
        let c = VerdictCache::new(64);
        c.apply(&rec("198.51.100.1", Class::Bad, None));
        c.replace_all(&[rec("198.51.100.2", Class::Bad, None)]);
        assert!(c.lookup("198.51.100.1".parse().unwrap(), 0).is_none());
        assert!(c.lookup("198.51.100.2".parse().unwrap(), 0).is_some());
        assert!(!c.apply(&rec("not an address", Class::Bad, None)));
    }
}
