//! Validation before anything is published: a broken fetch must never become a broken feed.
//!
//! Entries inside special-purpose ranges (RFC 1918, loopback, documentation, multicast…) are
//! dropped and counted: FireHOL level1 lists them on purpose, and a scorer that took them
//! literally would judge internal clients. Then the fetch is refused, as a whole, when it is
//! empty, mostly unparseable, shrank too much, lists everything (`0.0.0.0/0`, `::/0`) or a
//! prefix broader than the minimum, or touches an allowlisted prefix.

use std::net::{Ipv4Addr, Ipv6Addr};

use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};

use crate::parse::{FeedEntry, Parsed};

/// The validation policy (from the config; `max_shrink` also per feed).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Policy {
    /// Refuse an update that loses more than this share of the entries.
    pub max_shrink: f64,
    /// Refuse a body in which more than this share of the records are not entries.
    pub max_error_share: f64,
    /// Refuse entries broader than these prefix lengths.
    pub min_prefix_v4: u8,
    pub min_prefix_v6: u8,
}

impl Default for Policy {
    fn default() -> Policy {
        Policy { max_shrink: 0.5, max_error_share: 0.1, min_prefix_v4: 8, min_prefix_v6: 19 }
    }
}

/// Why a fetch was not published.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum Refusal {
    #[error("the fetch holds no entries (the feed is not allowed to be empty)")]
    Empty,
    #[error("{errors} of {records} records are not addresses (more than {max:.0}%): not this feed's format")]
    Unparseable { errors: usize, records: usize, max: f64 },
    #[error("the feed would shrink from {from} to {to} entries (more than {max:.0}%)")]
    Shrunk { from: usize, to: usize, max: f64 },
    #[error("the feed lists {0}: everything")]
    Everything(IpNetwork),
    #[error("the feed lists {net}, broader than /{min}")]
    TooBroad { net: IpNetwork, min: u8 },
    #[error("the feed lists {net}, which overlaps the allowlisted {allow}")]
    Allowlisted { net: IpNetwork, allow: IpNetwork },
}

impl Refusal {
    /// A short label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Refusal::Empty => "empty",
            Refusal::Unparseable { .. } => "unparseable",
            Refusal::Shrunk { .. } => "shrunk",
            Refusal::Everything(_) => "everything",
            Refusal::TooBroad { .. } => "too_broad",
            Refusal::Allowlisted { .. } => "allowlisted",
        }
    }
}

/// What validation did to an accepted fetch.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Accepted {
    /// Entries dropped because they lie in special-purpose ranges.
    pub reserved: usize,
}

/// Checks `parsed` (dropping special-purpose entries from it) against the policy, the number of
/// entries currently published (`previous`) and the allowlist.
pub fn validate(
    parsed: &mut Parsed,
    previous: Option<usize>,
    allow_empty: bool,
    max_shrink: Option<f64>,
    policy: &Policy,
    allowlist: &[IpNetwork],
) -> Result<Accepted, Refusal> {
    if parsed.records > 0 && parsed.errors as f64 > policy.max_error_share * parsed.records as f64 {
        return Err(Refusal::Unparseable {
            errors: parsed.errors,
            records: parsed.records,
            max: policy.max_error_share * 100.0,
        });
    }
    for e in &parsed.entries {
        if e.net.prefix() == 0 {
            return Err(Refusal::Everything(e.net));
        }
    }
    let before = parsed.entries.len();
    parsed.entries.retain(|e| !is_special(e.net));
    let accepted = Accepted { reserved: before - parsed.entries.len() };
    for FeedEntry { net, .. } in &parsed.entries {
        let min = if net.is_ipv4() { policy.min_prefix_v4 } else { policy.min_prefix_v6 };
        if net.prefix() < min {
            return Err(Refusal::TooBroad { net: *net, min });
        }
        if let Some(allow) = allowlist.iter().find(|a| overlaps(**a, *net)) {
            return Err(Refusal::Allowlisted { net: *net, allow: *allow });
        }
    }
    let n = parsed.entries.len();
    if n == 0 && !allow_empty {
        return Err(Refusal::Empty);
    }
    let max = max_shrink.unwrap_or(policy.max_shrink);
    if let Some(from) = previous
        && from > 0
        && ((from - n.min(from)) as f64) > max * from as f64
    {
        return Err(Refusal::Shrunk { from, to: n, max: max * 100.0 });
    }
    Ok(accepted)
}

/// Whether one network contains the other.
pub fn overlaps(a: IpNetwork, b: IpNetwork) -> bool {
    match (a, b) {
        (IpNetwork::V4(x), IpNetwork::V4(y)) => x.contains(y.network()) || y.contains(x.network()),
        (IpNetwork::V6(x), IpNetwork::V6(y)) => x.contains(y.network()) || y.contains(x.network()),
        _ => false,
    }
}

/// IANA special-purpose and non-unicast ranges (RFC 6890 and successors) that no threat feed
/// should make a scorer judge.
const SPECIAL_V4: &[(Ipv4Addr, u8)] = &[
    (Ipv4Addr::new(0, 0, 0, 0), 8),
    (Ipv4Addr::new(10, 0, 0, 0), 8),
    (Ipv4Addr::new(100, 64, 0, 0), 10),
    (Ipv4Addr::new(127, 0, 0, 0), 8),
    (Ipv4Addr::new(169, 254, 0, 0), 16),
    (Ipv4Addr::new(172, 16, 0, 0), 12),
    (Ipv4Addr::new(192, 0, 0, 0), 24),
    (Ipv4Addr::new(192, 0, 2, 0), 24),
    (Ipv4Addr::new(192, 168, 0, 0), 16),
    (Ipv4Addr::new(198, 18, 0, 0), 15),
    (Ipv4Addr::new(198, 51, 100, 0), 24),
    (Ipv4Addr::new(203, 0, 113, 0), 24),
    (Ipv4Addr::new(224, 0, 0, 0), 4),
    (Ipv4Addr::new(240, 0, 0, 0), 4),
];

const SPECIAL_V6: &[(Ipv6Addr, u8)] = &[
    (Ipv6Addr::UNSPECIFIED, 128),
    (Ipv6Addr::LOCALHOST, 128),
    (Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0, 0), 96),
    (Ipv6Addr::new(0x64, 0xff9b, 1, 0, 0, 0, 0, 0), 48),
    (Ipv6Addr::new(0x100, 0, 0, 0, 0, 0, 0, 0), 64),
    (Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0), 32),
    (Ipv6Addr::new(0xfc00, 0, 0, 0, 0, 0, 0, 0), 7),
    (Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0), 10),
    (Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0), 8),
];

/// Whether `net` lies wholly inside special-purpose ranges (possibly several: 224.0.0.0/3 is
/// multicast plus the reserved class E).
pub fn is_special(net: IpNetwork) -> bool {
    match net {
        IpNetwork::V4(n) => covered_v4(u32::from(n.network()), n.prefix()),
        IpNetwork::V6(n) => SPECIAL_V6
            .iter()
            .any(|&(a, l)| ipnetwork::Ipv6Network::new(a, l).is_ok_and(|s| n.prefix() >= l && s.contains(n.network()))),
    }
}

fn covered_v4(start: u32, len: u8) -> bool {
    let inside = |&(a, l): &(Ipv4Addr, u8)| {
        let mask = if l == 0 { 0 } else { u32::MAX << (32 - l) };
        len >= l && start & mask == u32::from(a)
    };
    if SPECIAL_V4.iter().any(inside) {
        return true;
    }
    // Split into halves while some special range lies strictly inside.
    let contains_some = SPECIAL_V4.iter().any(|&(a, l)| {
        let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
        l > len && u32::from(a) & mask == start
    });
    if !contains_some || len >= 32 {
        return false;
    }
    let half = 1u32 << (31 - len);
    covered_v4(start, len + 1) && covered_v4(start | half, len + 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::def::FeedFormat;
    use crate::parse::parse;

    fn p(body: &str) -> Parsed {
        parse(FeedFormat::Netset, None, body.as_bytes())
    }

    #[test]
    fn special_ranges_are_dropped_not_refused() {
        let mut parsed = p("10.0.0.0/8\n127.0.0.0/8\n224.0.0.0/3\n1.10.16.0/20\nfe80::/10\n2a06:e480::/29\n");
        let ok = validate(&mut parsed, None, false, None, &Policy::default(), &[]).unwrap();
        assert_eq!(ok.reserved, 4);
        assert_eq!(parsed.entries.len(), 2);
        assert!(is_special("224.0.0.0/3".parse().unwrap()));
        assert!(!is_special("192.0.0.0/2".parse().unwrap()));
        assert!(!is_special("8.8.8.8/32".parse().unwrap()));
    }

    #[test]
    fn refusals() {
        let policy = Policy::default();
        let refuse = |body: &str, prev: Option<usize>, allow: &[IpNetwork]| {
            validate(&mut p(body), prev, false, None, &policy, allow).unwrap_err().label()
        };
        assert_eq!(refuse("# nothing\n", None, &[]), "empty");
        assert_eq!(refuse("10.0.0.0/8\n", None, &[]), "empty");
        assert_eq!(refuse("1.2.3.4\n0.0.0.0/0\n", None, &[]), "everything");
        assert_eq!(refuse("::/0\n", None, &[]), "everything");
        assert_eq!(refuse("4.0.0.0/6\n", None, &[]), "too_broad");
        assert_eq!(refuse("1.2.3.4\n5.6.7.8\n", Some(5), &[]), "shrunk");
        assert_eq!(refuse("<html>\n<body>\nerror</body>\n1.2.3.4\n", None, &[]), "unparseable");
        let office: IpNetwork = "8.8.8.0/24".parse().unwrap();
        assert_eq!(refuse("1.2.3.4\n8.8.8.8\n", None, &[office]), "allowlisted");
        assert_eq!(refuse("1.2.3.4\n8.0.0.0/8\n", None, &[office]), "allowlisted");
        assert!(validate(&mut p("1.2.3.4\n5.6.7.8\n"), Some(3), false, None, &policy, &[office]).is_ok());
        assert!(validate(&mut p(""), Some(3), true, Some(1.0), &policy, &[]).is_ok());
    }
}
