//! The one engine builder: `roost replay`, `roost score` (one engine per partition) and
//! `roost up` get their engines here, so the same configuration gives the same verdicts in
//! each. Evidence sources are attached in one order — the known-bad rules, then the threat
//! feeds, then GeoIP/ASN — and every engine expires verdicts by one policy,
//! [`roost_engine::Engine::advance`] as event time passes (daemons also expire by the wall clock).
//! Network-level evidence (`roost flows`) needs no source of its own: it arrives as evidence
//! records on the requests topic.

use roost_engine::{Engine, EngineConfig, Judge};
use roost_rules::{RuleSet, RulesHandle, RulesInspector};

use crate::enrich::Enrichment;

/// Everything an engine is made of. Cloning shares the rule and feed handles: a reload is in
/// force for every engine built from it.
#[derive(Clone)]
pub struct EngineBuilder {
    cfg: EngineConfig,
    rules: Option<(RulesHandle, usize)>,
    enrich: Option<Enrichment>,
    crawlers: Option<std::sync::Arc<crate::crawlers::Verifier>>,
}

impl EngineBuilder {
    /// Checks the engine's configuration once, so that [`EngineBuilder::build`] cannot fail.
    pub fn new(cfg: EngineConfig) -> anyhow::Result<EngineBuilder> {
        Engine::new(cfg.clone())?;
        Ok(EngineBuilder { cfg, rules: None, enrich: None, crawlers: None })
    }

    /// Scores with these known-bad rules (a handle: reloads reach every engine), tracking
    /// sliding windows for at most `max_clients` clients.
    pub fn rules(mut self, rules: RulesHandle, max_clients: usize) -> EngineBuilder {
        self.rules = Some((rules, max_clients));
        self
    }

    /// Scores with these threat feeds and GeoIP/ASN policy.
    pub fn enrich(mut self, enrich: Enrichment) -> EngineBuilder {
        self.enrich = Some(enrich);
        self
    }

    /// Verifies clients that claim to be a search engine's crawler (`[crawlers] verify`); one
    /// verifier (cache, queue) serves every engine built.
    pub fn crawlers(mut self, verifier: std::sync::Arc<crate::crawlers::Verifier>) -> EngineBuilder {
        self.crawlers = Some(verifier);
        self
    }

    /// The rule set in force, when scoring with rules.
    pub fn rule_set(&self) -> Option<std::sync::Arc<RuleSet>> {
        self.rules.as_ref().map(|(h, _)| h.load_full())
    }

    /// Whether a rule, feed or geo policy rule runs in shadow mode (then a [`Judge`] runs a
    /// candidate engine beside the live one). Under `mode = "shadow"` the one engine is enough.
    pub fn has_shadow_sources(&self) -> bool {
        !self.cfg.mode.is_shadow()
            && (self.rules.as_ref().is_some_and(|(h, _)| h.load().has_shadow())
                || self.enrich.as_ref().is_some_and(Enrichment::has_shadow))
    }

    /// The engine as deployed: the live engine, and a candidate for the sources in shadow mode
    /// when there are any.
    pub fn judge(&self) -> Judge {
        let mut j = Judge::new(self.build());
        if self.has_shadow_sources() {
            j.set_candidate(Some(self.build()));
        }
        j
    }

    /// Starts or stops the candidate engine as sources went into or out of shadow mode (a rule
    /// reload). Returns whether it changed.
    pub fn refresh_candidate(&self, j: &mut Judge) -> bool {
        match (self.has_shadow_sources(), j.candidate().is_some()) {
            (true, false) => {
                tracing::info!("sources in shadow mode: starting the shadow engine (it learns from now on)");
                j.set_candidate(Some(self.build()));
                true
            }
            (false, true) => {
                tracing::info!("no source in shadow mode any more: stopping the shadow engine");
                j.set_candidate(None);
                true
            }
            _ => false,
        }
    }

    /// A fresh engine with every source attached, in the one order.
    pub fn build(&self) -> Engine {
        let mut e = Engine::new(self.cfg.clone()).expect("validated by EngineBuilder::new");
        if let Some((rules, max_clients)) = &self.rules {
            e.add_inspector(Box::new(RulesInspector::new(rules.clone(), *max_clients)));
        }
        if let Some(enrich) = &self.enrich {
            enrich.attach(&mut e);
        }
        if let Some(v) = &self.crawlers {
            e.add_inspector(Box::new(crate::crawlers::CrawlerInspector::new(v.clone())));
        }
        e
    }
}
