//! The proxy's copy of the verdict store: every non-good verdict, looked up per request without
//! a Redis round trip. Kept in sync by [`crate::sync`]; lookups honour each verdict's expiry,
//! so a verdict whose key Redis let lapse (no change is announced for that) stops applying here
//! at the same moment.

use std::net::IpAddr;
use std::sync::Arc;

use std::sync::RwLock;
use std::sync::atomic::{AtomicBool, Ordering};

use dashmap::DashMap;
use ipnetwork::IpNetwork;
use prefix_trie::joint::map::JointPrefixMap;
use roost_engine::Class;
use roost_verdicts::{OverrideEntry, VerdictRecord};

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

/// An operator's override as the proxy applies it.
#[derive(Clone, Debug, PartialEq)]
struct CachedOverride {
    /// Its prefix as the engine names it: the subject of an error page's reference for a
    /// client the override alone refuses.
    prefix: Arc<str>,
    class: Class,
    at: i64,
    until: Option<i64>,
}

impl CachedOverride {
    fn of(prefix: IpNetwork, e: &OverrideEntry) -> CachedOverride {
        CachedOverride {
            prefix: roost_engine::subject_name(prefix).into(),
            class: e.class,
            at: e.at.0,
            until: e.until.map(|u| u.0),
        }
    }
}

/// Verdicts by subject (an IPv4 address, or an IPv6 prefix of `ipv6_prefix` bits), and
/// operators' overrides by prefix.
pub struct VerdictCache {
    map: DashMap<IpNetwork, Cached>,
    /// Looked up longest prefix first, before the client's own verdict (the engine's order), so
    /// an override holds at once for clients no scorer has judged yet.
    overrides: RwLock<JointPrefixMap<IpNetwork, CachedOverride>>,
    /// Whether `overrides` holds any: lookups skip its lock when none.
    any_override: AtomicBool,
    ipv6_prefix: u8,
}

impl VerdictCache {
    pub fn new(ipv6_prefix: u8) -> VerdictCache {
        VerdictCache {
            map: DashMap::new(),
            overrides: RwLock::new(JointPrefixMap::new()),
            any_override: AtomicBool::new(false),
            ipv6_prefix: ipv6_prefix.clamp(1, 128),
        }
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

    /// The client's verdict, unless none or expired at `now` (Unix ms). An override covering
    /// the client decides first, with its class (`Good` for allow: the client passes even
    /// while Redis is unreachable).
    pub fn lookup(&self, ip: IpAddr, now: i64) -> Option<Cached> {
        let ip = crate::clientip::canonical(ip);
        if self.any_override.load(Ordering::Relaxed) {
            let subject = self.subject_of(ip);
            if let Some(o) = self.override_for(subject, now) {
                return Some(match self.map.get(&subject) {
                    Some(e) => Cached { class: o.class, ..e.clone() },
                    None => Cached {
                        subject: o.prefix.clone(),
                        class: o.class,
                        reputation: 0.0,
                        at: o.at,
                        expires: o.until,
                    },
                });
            }
        }
        if self.map.is_empty() {
            return None;
        }
        let e = self.map.get(&self.subject_of(ip))?;
        if e.expires.is_some_and(|x| x <= now) {
            return None;
        }
        Some(e.clone())
    }

    /// The override covering a subject, looked up by its network address as the engine looks
    /// up its clients' keys (an IPv6 client is its whole prefix).
    fn override_for(&self, subject: IpNetwork, now: i64) -> Option<CachedOverride> {
        let m = self.overrides.read().expect("overrides lock");
        let (_, o) = m.get_lpm(&IpNetwork::from(subject.network()))?;
        // one that ended covers nothing; the next sync or sweep removes it
        o.until.is_none_or(|u| u > now).then(|| o.clone())
    }

    /// Puts an override in force (`Some`) or ends the one on `prefix` (`None`).
    pub fn set_override(&self, prefix: IpNetwork, e: Option<&OverrideEntry>) {
        let prefix = IpNetwork::new(prefix.network(), prefix.prefix()).unwrap_or(prefix);
        let mut m = self.overrides.write().expect("overrides lock");
        match e {
            Some(e) => {
                m.insert(prefix, CachedOverride::of(prefix, e));
            }
            None => {
                m.remove(&prefix);
            }
        }
        self.any_override.store(!m.is_empty(), Ordering::Relaxed);
    }

    /// Replaces every override with a full load.
    pub fn replace_overrides<'a>(&self, entries: impl IntoIterator<Item = &'a OverrideEntry>) {
        let mut m = JointPrefixMap::new();
        for e in entries {
            if let Ok(n) = parse_subject(&e.prefix) {
                let n = IpNetwork::new(n.network(), n.prefix()).unwrap_or(n);
                m.insert(n, CachedOverride::of(n, e));
            }
        }
        let mut cur = self.overrides.write().expect("overrides lock");
        *cur = m;
        self.any_override.store(!cur.is_empty(), Ordering::Relaxed);
    }

    /// How many overrides are in force.
    pub fn overrides(&self) -> usize {
        self.overrides.read().expect("overrides lock").len()
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

    /// Drops verdicts and overrides that ended by `now`.
    pub fn sweep(&self, now: i64) -> usize {
        let before = self.map.len();
        self.map.retain(|_, v| v.expires.is_none_or(|x| x > now));
        if self.any_override.load(Ordering::Relaxed) {
            let mut m = self.overrides.write().expect("overrides lock");
            let ended: Vec<IpNetwork> =
                m.iter().filter(|(_, o)| o.until.is_some_and(|u| u <= now)).map(|(n, _)| n).collect();
            for n in ended {
                m.remove(&n);
            }
            self.any_override.store(!m.is_empty(), Ordering::Relaxed);
        }
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
            shadow: false,
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

    fn ov(prefix: &str, class: Class, until: Option<i64>) -> OverrideEntry {
        OverrideEntry {
            v: 1,
            prefix: prefix.into(),
            class,
            at: Timestamp(500),
            until: until.map(Timestamp),
            by: "ana".into(),
            comment: "test".into(),
        }
    }

    #[test]
    fn overrides_decide_first_longest_prefix_first_for_clients_seen_or_not() {
        let c = VerdictCache::new(64);
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        c.apply(&rec("203.0.113.9", Class::Dubious, None));
        c.apply(&rec("198.51.100.1", Class::Bad, None));
        c.set_override("203.0.113.0/24".parse().unwrap(), Some(&ov("203.0.113.0/24", Class::Bad, Some(9000))));
        c.set_override("203.0.113.50/32".parse().unwrap(), Some(&ov("203.0.113.50", Class::Good, None)));
        c.set_override("198.51.100.1/32".parse().unwrap(), Some(&ov("198.51.100.1", Class::Good, None)));
        // a client never judged, under the block: bad, named by the block (its error page's
        // reference leads to the override), until the block ends
        let unseen = c.lookup(ip("203.0.113.77"), 1000).unwrap();
        assert_eq!(
            (unseen.class, &*unseen.subject, unseen.at, unseen.expires),
            (Class::Bad, "203.0.113.0/24", 500, Some(9000))
        );
        // a judged one keeps its own record's details with the override's class
        let seen = c.lookup(ip("203.0.113.9"), 1000).unwrap();
        assert_eq!((seen.class, seen.reputation), (Class::Bad, -0.4));
        // the allowed address inside the block, and an allowed client with a bad record, pass
        assert_eq!(c.lookup(ip("203.0.113.50"), 1000).unwrap().class, Class::Good);
        assert_eq!(c.lookup(ip("198.51.100.1"), 1000).unwrap().class, Class::Good);
        assert!(c.lookup(ip("::ffff:203.0.113.77"), 1000).is_some(), "IPv4-mapped is the IPv4 client");
        // the block ended: its clients are judged by their own verdicts again
        assert!(c.lookup(ip("203.0.113.77"), 9000).is_none());
        assert_eq!(c.lookup(ip("203.0.113.9"), 9000).unwrap().class, Class::Dubious);
        c.sweep(9000);
        assert_eq!(c.overrides(), 2);
        c.set_override("198.51.100.1/32".parse().unwrap(), None);
        assert_eq!(c.lookup(ip("198.51.100.1"), 9000).unwrap().class, Class::Bad);
        c.replace_overrides(&[ov("192.0.2.0/24", Class::Dubious, None)]);
        assert_eq!(c.overrides(), 1);
        assert_eq!(c.lookup(ip("192.0.2.1"), 0).unwrap().class, Class::Dubious);
        assert!(c.lookup(ip("203.0.113.77"), 0).is_none());
        // an IPv6 client is its /64, as in the engine: an override inside the /64 covers it all
        c.set_override("2001:db8:1:2::/64".parse().unwrap(), Some(&ov("2001:db8:1:2::/64", Class::Bad, None)));
        assert_eq!(c.lookup(ip("2001:db8:1:2:aa::1"), 0).unwrap().class, Class::Bad);
        assert!(c.lookup(ip("2001:db8:1:3::1"), 0).is_none());
    }
}
