//! From verdicts to the rules every router should hold: pure (time passed in), so the same
//! verdicts always give the same set.

use std::collections::BTreeMap;

use ipnetwork::IpNetwork;
use roost_engine::Class;
use serde::{Deserialize, Serialize};

use crate::config::BgpConfig;
use crate::flowspec::FlowRule;

/// A client's current verdict, as the verdicts topic tells it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    pub subject: IpNetwork,
    pub class: Class,
    pub reputation: f32,
    /// Unix ms; `None`: until changed.
    pub expires: Option<i64>,
    pub reasons: Vec<String>,
    /// The verdict rests on flow evidence that may have been forged alone
    /// ([`roost_engine::unproven_source`]): never diverted.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unproven: bool,
}

/// One rule to announce, and why.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Planned {
    pub rule: FlowRule,
    pub class: Class,
    pub reputation: f32,
    /// The clients it covers (more than one when aggregated).
    pub subjects: Vec<String>,
    pub reasons: Vec<String>,
}

/// The wanted rules, worst first, and what was refused (subject, why).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub rules: Vec<Planned>,
    pub refused: Vec<(String, String)>,
    /// Verdicts that wanted a rule beyond `max_rules`.
    pub capped: usize,
}

/// Why a verdict gets no rule (a bounded set: metric label).
/// Every kind [`refusal_kind`] tells.
pub const REFUSAL_KINDS: [&str; 4] = ["allowlisted", "too_short", "spoofable", "other"];

pub fn refusal_kind(why: &str) -> &'static str {
    if why.starts_with("allowlisted") {
        "allowlisted"
    } else if why.starts_with("possibly spoofed") {
        "spoofable"
    } else if why.starts_with("prefix") {
        "too_short"
    } else {
        "other"
    }
}

/// An operator's override (from the overrides topic, or `roost up`'s admin): challenge and block
/// divert the whole prefix, as any verdict would; allow keeps every rule that would touch the
/// prefix off the routers, as the allowlist does.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OverrideRule {
    pub prefix: IpNetwork,
    /// `Good` for allow.
    pub class: Class,
    /// Unix ms; `None`: until removed.
    pub until: Option<i64>,
    pub reason: String,
}

pub fn plan<'a>(cfg: &BgpConfig, verdicts: impl IntoIterator<Item = &'a Verdict>, now: i64) -> Plan {
    plan_with_overrides(cfg, verdicts, &[], now)
}

/// [`plan`], with operators' overrides in force at `now`.
pub fn plan_with_overrides<'a>(
    cfg: &BgpConfig,
    verdicts: impl IntoIterator<Item = &'a Verdict>,
    overrides: &[OverrideRule],
    now: i64,
) -> Plan {
    let live = overrides.iter().filter(|o| o.until.is_none_or(|u| u > now));
    let allow: Vec<IpNetwork> = cfg
        .never_divert()
        .into_iter()
        .chain(live.clone().filter(|o| o.class == Class::Good).map(|o| o.prefix))
        .collect();
    let forced: Vec<Verdict> = live
        .filter(|o| o.class != Class::Good)
        .map(|o| Verdict {
            subject: o.prefix,
            class: o.class,
            // an operator's word ranks before any score
            reputation: -1.0,
            expires: o.until,
            reasons: vec![o.reason.clone()],
            unproven: false,
        })
        .collect();
    let mut by_source: BTreeMap<IpNetwork, Planned> = BTreeMap::new();
    let mut refused = Vec::new();
    let mut all: Vec<&Verdict> = verdicts.into_iter().collect();
    all.extend(forced.iter());
    for v in all {
        if v.expires.is_some_and(|e| e <= now) {
            continue;
        }
        let action = match v.class {
            Class::Good => continue,
            Class::Dubious => cfg.dubious,
            Class::Bad => cfg.bad,
        };
        let Some(action) = action else { continue };
        let (agg, min) = if v.subject.is_ipv4() {
            (cfg.aggregate_v4, cfg.min_prefix_v4)
        } else {
            (cfg.aggregate_v6, cfg.min_prefix_v6)
        };
        let len = v.subject.prefix().min(agg);
        // the subject's network at `len` bits (host bits cleared)
        let Ok(source) = IpNetwork::new(v.subject.ip(), len).and_then(|n| IpNetwork::new(n.network(), len)) else {
            continue;
        };
        let name = roost_engine::subject_name(v.subject);
        if v.unproven {
            refused.push((name, "possibly spoofed: only flows that do not prove their source".into()));
            continue;
        }
        if source.prefix() < min {
            refused.push((name, format!("prefix {source} is shorter than /{min}")));
            continue;
        }
        if let Some(a) = allow.iter().find(|a| overlaps(a, &source)) {
            refused.push((name, format!("allowlisted ({a})")));
            continue;
        }
        let e = by_source.entry(source).or_insert_with(|| Planned {
            rule: FlowRule {
                source,
                destination: None,
                protocol: (cfg.protocol != 0).then_some(cfg.protocol),
                ports: cfg.ports.clone(),
                action,
            },
            class: v.class,
            reputation: v.reputation,
            subjects: Vec::new(),
            reasons: v.reasons.clone(),
        });
        e.subjects.push(name);
        if v.class > e.class || (v.class == e.class && v.reputation < e.reputation) {
            e.class = v.class;
            e.reputation = v.reputation;
            e.rule.action = action;
            e.reasons = v.reasons.clone();
        }
    }
    let mut rules: Vec<Planned> = Vec::new();
    for p in by_source.into_values() {
        let fam: Vec<&IpNetwork> = cfg.protect.iter().filter(|d| d.is_ipv4() == p.rule.source.is_ipv4()).collect();
        if cfg.protect.is_empty() {
            rules.push(p);
        } else {
            for d in fam {
                let mut q = p.clone();
                q.rule.destination = Some(*d);
                rules.push(q);
            }
        }
    }
    // worst first: bad before dubious, then the lowest reputation
    rules.sort_by(|a, b| {
        b.class.cmp(&a.class).then(a.reputation.total_cmp(&b.reputation)).then(a.rule.source.cmp(&b.rule.source))
    });
    let capped = rules.len().saturating_sub(cfg.max_rules);
    rules.truncate(cfg.max_rules);
    Plan { rules, refused, capped }
}

fn overlaps(a: &IpNetwork, b: &IpNetwork) -> bool {
    a.is_ipv4() == b.is_ipv4() && (a.contains(b.network()) || b.contains(a.network()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_divert_whole_prefixes_and_allows_keep_rules_off() {
        let cfg = BgpConfig::default();
        let ov = |p: &str, class: Class, until: Option<i64>| OverrideRule {
            prefix: p.parse().unwrap(),
            class,
            until,
            reason: "override by alice: hosting range".into(),
        };
        let clients = [v("198.51.100.7", Class::Bad, -0.9), v("192.0.2.9", Class::Bad, -0.8)];
        let p = plan_with_overrides(
            &cfg,
            clients.iter(),
            &[
                ov("203.0.113.0/24", Class::Bad, None),
                ov("198.51.100.0/28", Class::Good, None),
                ov("192.0.2.0/24", Class::Dubious, Some(1_000)),
                ov("10.0.0.0/8", Class::Bad, None),
            ],
            2_000,
        );
        let sources: Vec<String> = p.rules.iter().map(|r| r.rule.source.to_string()).collect();
        // the block first (an operator's word), the ended challenge gone, the allowed client kept off
        assert_eq!(sources, ["203.0.113.0/24", "192.0.2.9/32"]);
        assert_eq!(p.rules[0].reasons, ["override by alice: hosting range"]);
        assert!(p.refused.iter().any(|(s, why)| s == "198.51.100.7" && why.starts_with("allowlisted")));
        assert!(p.refused.iter().any(|(s, why)| s == "10.0.0.0/8" && why.starts_with("prefix")));
    }

    fn v(subject: &str, class: Class, rep: f32) -> Verdict {
        Verdict {
            subject: subject.parse().unwrap(),
            class,
            reputation: rep,
            expires: Some(10_000),
            reasons: vec!["r".into()],
            unproven: false,
        }
    }

    #[test]
    fn worst_first_capped_never_allowlisted_or_too_broad() {
        let cfg = BgpConfig {
            max_rules: 2,
            allowlist: vec!["198.51.100.0/24".parse().unwrap()],
            protect: vec!["192.0.2.0/24".parse().unwrap(), "2001:db8:ffff::/48".parse().unwrap()],
            ..BgpConfig::default()
        };
        let vs = [
            v("203.0.113.1", Class::Dubious, -0.1),
            v("203.0.113.2", Class::Bad, -0.5),
            v("203.0.113.3", Class::Bad, -0.9),
            v("198.51.100.7", Class::Bad, -1.0),
            v("203.0.113.4", Class::Good, 0.9),
        ];
        let p = plan(&cfg, &vs, 0);
        let got: Vec<String> = p.rules.iter().map(|r| r.rule.source.to_string()).collect();
        assert_eq!(got, ["203.0.113.3/32", "203.0.113.2/32"]);
        assert_eq!(p.capped, 1);
        assert_eq!(p.rules[0].rule.destination, Some("192.0.2.0/24".parse().unwrap()));
        assert_eq!(p.refused.len(), 1);
        assert_eq!(refusal_kind(&p.refused[0].1), "allowlisted");
        // expired verdicts are gone
        assert!(plan(&cfg, &vs, 10_000).rules.is_empty());
    }

    #[test]
    fn aggregation_merges_clients_and_minimums_hold() {
        let cfg = BgpConfig { aggregate_v4: 24, ..BgpConfig::default() };
        let vs = [
            v("203.0.113.1", Class::Bad, -0.5),
            v("203.0.113.9", Class::Dubious, -0.2),
            v("2001:db8:1:2::/64", Class::Bad, -0.7),
        ];
        let p = plan(&cfg, &vs, 0);
        assert_eq!(p.rules.len(), 2);
        let v4 = p.rules.iter().find(|r| r.rule.source.is_ipv4()).unwrap();
        assert_eq!(v4.rule.source.to_string(), "203.0.113.0/24");
        assert_eq!(v4.subjects.len(), 2);
        assert_eq!(v4.class, Class::Bad);
        let broad = BgpConfig { aggregate_v4: 16, min_prefix_v4: 16, ..BgpConfig::default() };
        assert!(broad.validate().is_ok());
        let too_broad = BgpConfig { aggregate_v4: 16, min_prefix_v4: 24, ..BgpConfig::default() };
        assert!(too_broad.validate().is_err());
        // a subject wider than the minimum (an override on a /16, say) is refused
        let p = plan(&BgpConfig::default(), &[v("10.1.0.0/16", Class::Bad, -1.0)], 0);
        assert!(p.rules.is_empty());
        assert_eq!(refusal_kind(&p.refused[0].1), "too_short");
    }
}
