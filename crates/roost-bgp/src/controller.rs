//! The controller around the sessions: the [`Planner`] (pure: the live verdicts and overrides,
//! turned into a [`Plan`] when they change or once a second, time passed in) and the
//! [`Controller`] the sessions, `/rules` and `/metrics` read (the current plan, each peer's
//! [`PeerState`], the verdict source's health).
//!
//! Both the standalone `roost bgp` (verdicts from the verdicts topic, overrides from the
//! overrides topic) and `roost up` (verdicts from its engine, overrides from its admin) feed the
//! same planner with [`Input`]s.

use std::collections::HashMap;
use std::sync::Arc;

use ipnetwork::IpNetwork;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use roost_engine::{Class, Override, VerdictChange};

use crate::BgpConfig;
use crate::policy::{self, OverrideRule, Plan, Verdict};
use crate::session::{self, PeerState};

/// How often the plan is made again without a change (verdicts and overrides expire).
const REPLAN_MS: i64 = 1000;

/// What the planner is told: a client's verdict changed, or an operator's override on a prefix
/// (`None`: removed).
#[derive(Clone, Debug)]
pub enum Input {
    Verdict(Verdict),
    Override(IpNetwork, Option<Override>),
}

impl Input {
    /// A verdict change (from the engine, or read off the verdicts topic) as the planner's input.
    pub fn verdict(c: &VerdictChange) -> Input {
        Input::Verdict(Verdict {
            subject: c.subject,
            class: c.to,
            reputation: c.reputation,
            expires: c.expires.map(|t| t.millis()),
            reasons: c.reasons.iter().map(|r| r.text.clone()).collect(),
            unproven: rests_on_unproven(&c.reasons),
        })
    }
}

/// Whether a verdict's evidence is possibly forged flow evidence and nothing else: an unproven
/// flow finding among its reasons, and no other reason that weighed anything.
fn rests_on_unproven(reasons: &[roost_engine::Reason]) -> bool {
    reasons.iter().any(|r| roost_engine::unproven_source(&r.source))
        && reasons.iter().all(|r| roost_engine::unproven_source(&r.source) || r.weight <= 0.0)
}

/// The live verdicts and overrides, and when they were last planned. No I/O, no clock: the
/// caller passes the time (Unix ms).
pub struct Planner {
    verdicts: HashMap<IpNetwork, Verdict>,
    overrides: HashMap<IpNetwork, OverrideRule>,
    last_plan: Option<i64>,
    dirty: bool,
}

impl Default for Planner {
    fn default() -> Self {
        Planner { verdicts: HashMap::new(), overrides: HashMap::new(), last_plan: None, dirty: true }
    }
}

impl Planner {
    pub fn input(&mut self, i: Input) {
        match i {
            Input::Verdict(v) if v.class == Class::Good => {
                self.verdicts.remove(&v.subject);
            }
            Input::Verdict(v) => {
                self.verdicts.insert(v.subject, v);
            }
            Input::Override(net, Some(o)) => {
                self.overrides.insert(
                    net,
                    OverrideRule {
                        prefix: net,
                        class: o.class,
                        until: o.until.map(|u| u.0),
                        reason: format!("override by {}: {}", o.by, o.comment),
                    },
                );
            }
            Input::Override(net, None) => {
                self.overrides.remove(&net);
            }
        }
        self.dirty = true;
    }

    /// A new plan when something changed or a second passed since the last one (at `now`, Unix
    /// ms); `None` otherwise.
    pub fn plan(&mut self, cfg: &BgpConfig, now: i64) -> Option<Plan> {
        if !self.dirty && self.last_plan.is_some_and(|t| now - t < REPLAN_MS) {
            return None;
        }
        let overrides: Vec<OverrideRule> = self.overrides.values().cloned().collect();
        self.last_plan = Some(now);
        self.dirty = false;
        Some(policy::plan_with_overrides(cfg, self.verdicts.values(), &overrides, now))
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PeerLabel {
    peer: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

/// The plan in force and everything `/rules` and `/metrics` show.
pub struct Controller {
    /// The current plan: sessions subscribe to it.
    plan: tokio::sync::watch::Sender<Arc<Plan>>,
    peers: Vec<(String, Arc<PeerState>)>,
    /// Verdict-source records that were not a verdict change.
    pub bad_records: Counter,
    metrics: Parts,
}

/// The series registered for the controller.
#[derive(Default)]
struct Parts {
    session_up: Family<PeerLabel, Gauge>,
    announced: Family<PeerLabel, Gauge>,
    announces: Family<PeerLabel, Counter>,
    withdraws: Family<PeerLabel, Counter>,
    resets: Family<PeerLabel, Counter>,
    updates: Family<PeerLabel, Counter>,
    refreshes: Family<PeerLabel, Counter>,
    planned: Gauge,
    capped: Gauge,
    refused: Family<ReasonLabel, Gauge>,
    source_up: Gauge,
}

impl Controller {
    pub fn new(cfg: &BgpConfig) -> Arc<Controller> {
        let m = Parts::default();
        let peers = cfg
            .peers
            .iter()
            .map(|p| {
                let l = PeerLabel { peer: p.address.to_string() };
                let state = PeerState {
                    established: m.session_up.get_or_create(&l).clone(),
                    announced: m.announced.get_or_create(&l).clone(),
                    announces: m.announces.get_or_create(&l).clone(),
                    withdraws: m.withdraws.get_or_create(&l).clone(),
                    resets: m.resets.get_or_create(&l).clone(),
                    updates_received: m.updates.get_or_create(&l).clone(),
                    route_refreshes: m.refreshes.get_or_create(&l).clone(),
                };
                (l.peer, Arc::new(state))
            })
            .collect();
        for r in policy::REFUSAL_KINDS {
            let _ = m.refused.get_or_create(&ReasonLabel { reason: r });
        }
        Arc::new(Controller {
            plan: tokio::sync::watch::Sender::new(Arc::new(Plan::default())),
            peers,
            bad_records: Counter::default(),
            metrics: m,
        })
    }

    /// The controller's series: `roost_bgp_*`.
    pub fn register(&self, r: &mut Registry) {
        let m = &self.metrics;
        let r = r.sub_registry_with_prefix("roost_bgp");
        r.register("session_up", "1 while the BGP session to the peer is established", m.session_up.clone());
        r.register("rules_announced", "Flowspec rules in the peer's table", m.announced.clone());
        r.register("announces", "Flowspec rules announced to the peer", m.announces.clone());
        r.register("withdraws", "Flowspec rules withdrawn from the peer", m.withdraws.clone());
        r.register("session_resets", "BGP sessions to the peer that ended", m.resets.clone());
        r.register("updates_received", "UPDATE messages the peer sent", m.updates.clone());
        r.register("route_refreshes", "ROUTE-REFRESH requests answered", m.refreshes.clone());
        r.register("rules_planned", "Flowspec rules in the plan", m.planned.clone());
        r.register("rules_capped", "Verdicts that wanted a rule beyond bgp.max_rules", m.capped.clone());
        r.register("rules_refused", "Verdicts refused a rule, by reason", m.refused.clone());
        r.register("verdict_source_up", "1 while the verdict source answers", m.source_up.clone());
        r.register("bad_records", "Verdict-source records that were not a verdict change", self.bad_records.clone());
    }

    /// Whether the verdict source answers.
    pub fn source_up(&self) -> bool {
        self.metrics.source_up.get() == 1
    }

    /// Whether the verdict source answers (an outage freezes the plan).
    pub fn set_source_up(&self, up: bool) {
        self.metrics.source_up.set(i64::from(up));
    }

    /// Puts a new plan in force (the sessions send the difference); no-op when it is the same.
    pub fn publish(&self, p: Plan) {
        let m = &self.metrics;
        m.planned.set(p.rules.len() as i64);
        m.capped.set(p.capped as i64);
        let mut refused: HashMap<&'static str, i64> = HashMap::new();
        for (_, why) in &p.refused {
            *refused.entry(policy::refusal_kind(why)).or_default() += 1;
        }
        for r in policy::REFUSAL_KINDS {
            m.refused.get_or_create(&ReasonLabel { reason: r }).set(refused.get(r).copied().unwrap_or(0));
        }
        let p = Arc::new(p);
        self.plan.send_if_modified(|cur| {
            if **cur == *p {
                return false;
            }
            tracing::info!(rules = p.rules.len(), refused = p.refused.len(), capped = p.capped, "flowspec plan");
            *cur = p;
            true
        });
    }

    /// The plan in force.
    pub fn plan(&self) -> Arc<Plan> {
        self.plan.borrow().clone()
    }

    /// What `/rules` serves (and `roost bgp show` prints): the peers, the rules with the verdict
    /// and reasons of each, the refusals.
    pub fn rules_json(&self) -> serde_json::Value {
        let plan = self.plan();
        let peers: Vec<serde_json::Value> = self
            .peers
            .iter()
            .map(|(name, s)| {
                serde_json::json!({
                    "peer": name,
                    "established": s.established.get() == 1,
                    "announced": s.announced.get(),
                })
            })
            .collect();
        serde_json::json!({ "peers": peers, "rules": plan.rules, "refused": plan.refused, "capped": plan.capped })
    }

    /// One session task per router, and the listener for passive ones; must run inside a Tokio
    /// runtime. Nothing is announced with `bgp.dry_run`.
    pub fn start_sessions(self: &Arc<Self>, b: &Arc<BgpConfig>) {
        if b.dry_run {
            tracing::warn!("bgp.dry_run: computing the rules, announcing nothing");
            return;
        }
        let mut passive = Vec::new();
        for (p, (_, state)) in b.peers.iter().zip(&self.peers) {
            let incoming = p.passive.then(|| {
                let (tx, rx) = tokio::sync::mpsc::channel(1);
                passive.push((p.address.ip(), tx));
                rx
            });
            tokio::spawn(session::run(b.clone(), p.clone(), self.plan.subscribe(), state.clone(), incoming));
        }
        if let Some(addr) = b.bgp_listen {
            tokio::spawn(async move {
                if let Err(e) = session::listen(addr, passive).await {
                    tracing::error!(%addr, error = %e, "cannot accept BGP connections");
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use roost_engine::Timestamp;

    fn cfg() -> BgpConfig {
        BgpConfig {
            peers: vec![crate::config::PeerConfig {
                address: "127.0.0.1:1179".parse().unwrap(),
                passive: false,
                local_address: None,
                peer_as: 0,
            }],
            protect: vec!["192.0.2.0/24".parse().unwrap()],
            ..BgpConfig::default()
        }
    }

    /// The engine's verdict on flow evidence, as the verdicts topic carries it.
    fn flow_verdict(ip: &str, id: &str, penalty: f32, class: Class) -> (Input, roost_engine::VerdictChange) {
        use roost_engine::{Engine, EngineConfig, Evidence, Source, SourceKind};
        let mut e = Engine::new(EngineConfig::default()).unwrap();
        let ev = Evidence {
            source: Source::new(SourceKind::Flow, id),
            penalty,
            verdict: Some((class, std::time::Duration::from_secs(600))),
            detail: format!("{id} (NetFlow)"),
        };
        let c = e.apply(ip.parse().unwrap(), Timestamp(1_000), &[ev]).expect("a verdict");
        (Input::verdict(&c), c)
    }

    /// A verdict on flow evidence that may be forged (SYN-only flows "from" anyone) is never a
    /// flowspec rule, whatever the verdict; proven flow evidence, or any other evidence beside
    /// it, is.
    #[test]
    fn possibly_spoofed_flow_evidence_alone_is_never_diverted() {
        let c = cfg();
        let mut p = Planner::default();
        let (unproven, change) = flow_verdict("203.0.113.66", "synflood-unproven", 0.0, Class::Dubious);
        assert_eq!(change.to, Class::Dubious, "the engine still holds it dubious (challenge at the proxy)");
        p.input(unproven);
        let plan = p.plan(&c, 2_000).unwrap();
        assert!(plan.rules.is_empty(), "{plan:?}");
        assert_eq!(plan.refused.len(), 1);
        assert!(plan.refused[0].1.starts_with("possibly spoofed"), "{plan:?}");
        assert_eq!(policy::refusal_kind(&plan.refused[0].1), "spoofable");
        // even a `bad` verdict on it (an older collector, a hand-written event) is not diverted
        let (unproven_bad, _) = flow_verdict("203.0.113.67", "portscan-unproven", 10.0, Class::Bad);
        p.input(unproven_bad);
        assert!(p.plan(&c, 3_000).unwrap().rules.is_empty());
        // a scan by completed handshakes is
        let (proven, _) = flow_verdict("203.0.113.68", "portscan", 10.0, Class::Bad);
        p.input(proven);
        let plan = p.plan(&c, 4_000).unwrap();
        assert_eq!(plan.rules.iter().map(|r| r.rule.source.to_string()).collect::<Vec<_>>(), ["203.0.113.68/32"]);
    }

    /// A forged flood "from" a router or from roost's own session address never diverts it:
    /// those addresses are allowlisted whatever `bgp.allowlist` says.
    #[test]
    fn routers_and_our_own_addresses_are_never_diverted() {
        let mut c = cfg();
        c.allowlist.clear();
        c.peers.push(crate::config::PeerConfig {
            address: "198.51.100.1:179".parse().unwrap(),
            passive: false,
            local_address: Some("198.51.100.100".parse().unwrap()),
            peer_as: 0,
        });
        let mut p = Planner::default();
        for ip in ["198.51.100.1/32", "198.51.100.100/32", "127.0.0.1/32", "198.51.100.7/32"] {
            p.input(bad(ip, None));
        }
        let plan = p.plan(&c, 0).unwrap();
        assert_eq!(plan.rules.iter().map(|r| r.rule.source.to_string()).collect::<Vec<_>>(), ["198.51.100.7/32"]);
        assert_eq!(plan.refused.iter().filter(|(_, why)| why.starts_with("allowlisted")).count(), 3, "{plan:?}");
    }

    #[test]
    fn peers_without_protected_prefixes_are_refused() {
        let mut c = cfg();
        assert!(c.validate().is_ok());
        c.protect.clear();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.starts_with("bgp.protect: empty with peers configured"), "{e}");
        c.peers.clear();
        assert!(c.validate().is_ok(), "no peers (dry runs, `roost up` without routers): no rule is announced");
    }

    fn bad(ip: &str, expires: Option<i64>) -> Input {
        Input::Verdict(Verdict {
            subject: ip.parse().unwrap(),
            class: Class::Bad,
            reputation: -0.9,
            expires,
            reasons: vec!["scanner".into()],
            unproven: false,
        })
    }

    #[test]
    fn plans_on_change_and_once_a_second_with_the_time_it_is_given() {
        let c = cfg();
        let mut p = Planner::default();
        assert!(p.plan(&c, 0).is_some(), "a first plan, even of nothing");
        assert!(p.plan(&c, 500).is_none(), "nothing changed within the second");
        p.input(bad("198.51.100.7/32", Some(10_000)));
        let plan = p.plan(&c, 600).expect("a change plans at once");
        assert_eq!(plan.rules.len(), 1);
        assert!(p.plan(&c, 1500).is_none());
        // the verdict's time runs out: the next timed plan drops it
        let plan = p.plan(&c, 10_600).expect("a second passed");
        assert!(plan.rules.is_empty(), "{plan:?}");
    }

    #[test]
    fn a_good_verdict_withdraws_and_an_override_allows() {
        let c = cfg();
        let mut p = Planner::default();
        p.input(bad("198.51.100.7/32", None));
        p.input(bad("198.51.100.8/32", None));
        assert_eq!(p.plan(&c, 0).unwrap().rules.len(), 2);
        p.input(Input::Verdict(Verdict {
            subject: "198.51.100.7/32".parse().unwrap(),
            class: Class::Good,
            reputation: 0.5,
            expires: None,
            reasons: vec![],
            unproven: false,
        }));
        let allow =
            Override { class: Class::Good, until: Some(Timestamp(5_000)), by: "ops".into(), comment: "partner".into() };
        p.input(Input::Override("198.51.100.8/32".parse().unwrap(), Some(allow)));
        assert!(p.plan(&c, 1).unwrap().rules.is_empty(), "withdrawn, and allowed by the override");
        // the override ends at 5 s: the verdict it held back is planned again
        assert_eq!(p.plan(&c, 6_000).unwrap().rules.len(), 1);
    }

    #[test]
    fn the_controller_counts_refusals_and_serves_the_plan() {
        let c = cfg();
        let ctl = Controller::new(&c);
        let mut p = Planner::default();
        p.input(bad("198.51.100.7/32", None));
        ctl.publish(p.plan(&c, 0).unwrap());
        let mut reg = Registry::default();
        ctl.register(&mut reg);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &reg).unwrap();
        assert!(text.contains("roost_bgp_rules_planned 1"), "{text}");
        assert!(text.contains("roost_bgp_session_up{peer=\"127.0.0.1:1179\"} 0"), "{text}");
        assert!(text.contains("roost_bgp_announces_total{peer=\"127.0.0.1:1179\"} 0"), "{text}");
        let j = ctl.rules_json();
        assert_eq!(j["rules"].as_array().unwrap().len(), 1);
        assert_eq!(j["peers"][0]["established"], false);
    }
}
