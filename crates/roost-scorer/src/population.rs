//! Metrics of the scored population, the same under `roost score` and `roost up`: what the
//! alerting rules in `deploy/prometheus/` and the dashboard in `deploy/grafana/` read.
//!
//! Sums and weights are exported beside the means so that several scorer instances add up:
//! `sum(roost_reputation_sum) / sum(roost_reputation_weight)` is the population's mean however
//! the partitions are spread. No label is ever an address: sources are as many as the rules,
//! feeds and policies configured, reason categories and verdicts are fixed sets.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use roost_engine::{Aggregates, Class, Source, VerdictChange};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VerdictLabel {
    verdict: String,
}
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ByLabel {
    by: String,
}
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LeLabel {
    le: String,
}
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabel {
    kind: String,
    source: String,
}
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ChangeLabel {
    to: String,
    cause: String,
    reason: String,
}

type FloatGauge = Gauge<f64, AtomicU64>;

/// The population's gauges and the evidence and change counters.
#[derive(Default)]
pub struct PopulationMetrics {
    clients: Family<VerdictLabel, Gauge>,
    mean: Family<ByLabel, FloatGauge>,
    sum: Family<ByLabel, FloatGauge>,
    weight: Family<ByLabel, FloatGauge>,
    distribution: Family<LeLabel, Gauge>,
    dossiers: Gauge,
    evidence: Family<SourceLabel, Counter>,
    changes: Family<ChangeLabel, Counter>,
    shadow_changes: Family<ChangeLabel, Counter>,
    /// The evidence totals last seen, to count increments only (engines come and go with
    /// partitions, so their totals are not monotonic).
    seen: Mutex<HashMap<Source, u64>>,
}

/// The categories a change's leading reason is counted under (its source's prefix).
const REASON_KINDS: [&str; 13] = [
    "status",
    "behaviour",
    "rule",
    "feed",
    "geo",
    "flow",
    "proxy",
    "override",
    "manual",
    "verdict",
    "evidence",
    "errorlog",
    "crawler",
];

impl PopulationMetrics {
    pub fn register(&self, r: &mut Registry) {
        r.register("roost_clients", "Tracked clients, by verdict", self.clients.clone());
        r.register(
            "roost_reputation_mean",
            "Mean reputation (-1..1) of tracked clients, per client (by=client) or weighted by recent requests (by=request)",
            self.mean.clone(),
        );
        r.register(
            "roost_reputation_sum",
            "Sum of reputations (by=client) or of reputation times recent request weight (by=request): divide by roost_reputation_weight",
            self.sum.clone(),
        );
        r.register(
            "roost_reputation_weight",
            "What the mean stands on: tracked clients (by=client) or their decayed recent requests (by=request)",
            self.weight.clone(),
        );
        r.register(
            "roost_reputation_clients",
            "Tracked clients with a reputation at most `le` (cumulative, like a histogram's buckets)",
            self.distribution.clone(),
        );
        r.register("roost_dossiers", "Clients with a dossier (samples and evidence)", self.dossiers.clone());
        r.register(
            "roost_evidence",
            "Pieces of evidence applied, by source kind (rule, feed, behaviour, geo…) and source (rule id, feed name…)",
            self.evidence.clone(),
        );
        r.register(
            "roost_verdict_changes",
            "Verdict changes, by new verdict, cause and the category of the leading reason",
            self.changes.clone(),
        );
        r.register(
            "roost_shadow_verdict_changes",
            "Shadow verdict changes (sources in shadow mode: recorded, never enforced), labelled as roost_verdict_changes",
            self.shadow_changes.clone(),
        );
    }

    /// Sets the gauges from the population's aggregates (merged over every engine).
    pub fn set_population(&self, a: &Aggregates) {
        for c in Class::ALL {
            self.clients
                .get_or_create(&VerdictLabel { verdict: c.as_str().into() })
                .set(a.per_class[c as usize] as i64);
        }
        let by = |s: &str| ByLabel { by: s.into() };
        self.weight.get_or_create(&by("client")).set(a.ips as f64);
        self.sum.get_or_create(&by("client")).set(a.mean_by_ip * a.ips as f64);
        self.weight.get_or_create(&by("request")).set(a.request_weight);
        self.sum.get_or_create(&by("request")).set(a.mean_by_request * a.request_weight);
        if a.ips > 0 {
            self.mean.get_or_create(&by("client")).set(a.mean_by_ip);
        }
        if a.request_weight > 0.0 {
            self.mean.get_or_create(&by("request")).set(a.mean_by_request);
        }
        let mut cumulative = 0u64;
        for (i, n) in a.histogram.iter().enumerate() {
            cumulative += n;
            let le = if i + 1 == a.histogram.len() {
                "+Inf".to_owned()
            } else {
                format!("{:.1}", (i as i32 + 1 - 10) as f64 / 10.0)
            };
            self.distribution.get_or_create(&LeLabel { le }).set(cumulative as i64);
        }
        self.dossiers.set(a.dossiers as i64);
    }

    /// Counts the evidence applied since the last call, given every engine's totals.
    pub fn set_evidence_totals<'a>(&self, engines: impl IntoIterator<Item = &'a HashMap<Source, u64>>) {
        let mut now: HashMap<Source, u64> = HashMap::new();
        for totals in engines {
            for (s, n) in totals {
                *now.entry(s.clone()).or_default() += n;
            }
        }
        let mut seen = self.seen.lock().expect("evidence totals lock");
        for (s, n) in &now {
            let before = seen.get(s).copied().unwrap_or(0);
            if *n > before {
                self.evidence
                    .get_or_create(&SourceLabel { kind: s.kind.as_str().into(), source: s.id.to_string() })
                    .inc_by(n - before);
            }
        }
        *seen = now;
    }

    /// Counts a verdict change.
    pub fn count_change(&self, c: &VerdictChange) {
        self.changes.get_or_create(&change_label(c)).inc();
    }

    /// Counts a shadow verdict change (never enforced).
    pub fn count_shadow_change(&self, c: &VerdictChange) {
        self.shadow_changes.get_or_create(&change_label(c)).inc();
    }
}

fn change_label(c: &VerdictChange) -> ChangeLabel {
    let kind = c.reasons.first().map_or("", |r| r.source.split(':').next().unwrap_or(""));
    let reason = REASON_KINDS.iter().find(|k| **k == kind).copied().unwrap_or("other");
    ChangeLabel { to: c.to.as_str().into(), cause: format!("{:?}", c.cause).to_lowercase(), reason: reason.into() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use roost_engine::SourceKind;

    fn encode(m: &PopulationMetrics) -> String {
        let mut r = Registry::default();
        m.register(&mut r);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &r).unwrap();
        out
    }

    #[test]
    fn evidence_counts_increments_across_engines_that_come_and_go() {
        let m = PopulationMetrics::default();
        let rule = Source::new(SourceKind::Rule, "R-1003");
        let a: HashMap<Source, u64> = [(rule.clone(), 5)].into();
        let b: HashMap<Source, u64> = [(rule.clone(), 2)].into();
        m.set_evidence_totals([&a, &b]);
        // engine b's partition moved away; a saw one more
        let a2: HashMap<Source, u64> = [(rule.clone(), 6)].into();
        m.set_evidence_totals([&a2]);
        let a3: HashMap<Source, u64> = [(rule, 9)].into();
        m.set_evidence_totals([&a3]);
        let text = encode(&m);
        assert!(text.contains("roost_evidence_total{kind=\"rule\",source=\"R-1003\"} 10"), "{text}");
    }

    #[test]
    fn the_distribution_is_cumulative_and_ends_at_every_client() {
        let m = PopulationMetrics::default();
        let mut a = Aggregates { ips: 3, ..Aggregates::default() };
        a.histogram[0] = 1;
        a.histogram[19] = 2;
        m.set_population(&a);
        let text = encode(&m);
        assert!(text.contains("roost_reputation_clients{le=\"-0.9\"} 1"), "{text}");
        assert!(text.contains("roost_reputation_clients{le=\"0.9\"} 1"), "{text}");
        assert!(text.contains("roost_reputation_clients{le=\"+Inf\"} 3"), "{text}");
    }
}
