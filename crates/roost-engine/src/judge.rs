//! Shadow mode: the engine as deployed. A [`Judge`] holds the live engine, whose verdicts are
//! enforced, and, while any evidence source (a rule, a feed, a geo policy) runs in shadow mode,
//! a candidate engine fed the same events that also takes the shadow sources' evidence. The
//! candidate's verdicts come out marked [`VerdictChange::shadow`]: recorded and shown as "would
//! block", never enforced. Under `mode = "shadow"` there is one engine and every verdict is a
//! shadow verdict.
//!
//! Two engines rather than two sets of books in one: each stays the plain engine, the candidate
//! costs nothing when nothing is in shadow, and the same pairing is what `roost replay --compare`
//! runs (two configurations over one log).

use std::net::IpAddr;

use ipnetwork::IpNetwork;
use roost_event::{ErrorLogEvent, RequestEvent, Timestamp};

use crate::engine::{Engine, EngineStager, Override, Staged};
use crate::evidence::Evidence;
use crate::verdict::VerdictChange;

pub struct Judge {
    live: Engine,
    candidate: Option<Engine>,
}

/// The stateless half of a [`Judge`]'s work on requests: a stager per engine.
pub struct JudgeStager {
    live: EngineStager,
    candidate: Option<EngineStager>,
}

/// What a [`JudgeStager`] found in one request.
pub struct JudgeStaged {
    live: Staged,
    candidate: Option<Staged>,
}

impl JudgeStager {
    pub fn stage(&mut self, ev: &RequestEvent<'_>) -> JudgeStaged {
        JudgeStaged { live: self.live.stage(ev), candidate: self.candidate.as_mut().map(|c| c.stage(ev)) }
    }
}

fn shadowed(mut c: VerdictChange) -> VerdictChange {
    c.shadow = true;
    c
}

impl Judge {
    pub fn new(live: Engine) -> Judge {
        Judge { live, candidate: None }
    }

    /// Runs `candidate` beside the live engine (it is made to take shadow evidence); `None`
    /// stops it. A candidate started late knows only what it sees from then on.
    pub fn set_candidate(&mut self, candidate: Option<Engine>) {
        self.candidate = candidate.map(|mut c| {
            c.take_shadow_evidence(true);
            c
        });
    }

    /// Everything is shadow: `mode = "shadow"`.
    pub fn shadow_all(&self) -> bool {
        self.live.config().mode.is_shadow()
    }

    pub fn live(&self) -> &Engine {
        &self.live
    }

    pub fn live_mut(&mut self) -> &mut Engine {
        &mut self.live
    }

    pub fn candidate(&self) -> Option<&Engine> {
        self.candidate.as_ref()
    }

    /// Both engines, the candidate's output marked shadow (and the live one's too under
    /// `mode = "shadow"`).
    fn both(&mut self, out: &mut Vec<VerdictChange>, mut f: impl FnMut(&mut Engine) -> Vec<VerdictChange>) {
        let all = self.shadow_all();
        out.extend(f(&mut self.live).into_iter().map(|c| if all { shadowed(c) } else { c }));
        if let Some(c) = &mut self.candidate {
            out.extend(f(c).into_iter().map(shadowed));
        }
    }

    /// Nothing in shadow: the live engine alone, its changes as they are (the usual case, kept
    /// free of the pairing's cost).
    fn alone(&self) -> bool {
        self.candidate.is_none() && !self.shadow_all()
    }

    pub fn observe(&mut self, ev: &RequestEvent<'_>, out: &mut Vec<VerdictChange>) {
        if self.alone() {
            out.extend(self.live.observe(ev));
            return;
        }
        self.both(out, |e| e.observe(ev).into_iter().collect());
    }

    /// A stager for the live engine and the candidate (see [`Engine::stager`]). It serves the
    /// engines it was made from: a candidate set later inspects requests itself.
    pub fn stager(&mut self) -> JudgeStager {
        JudgeStager { live: self.live.stager(), candidate: self.candidate.as_mut().map(Engine::stager) }
    }

    /// [`Judge::observe`] with the stateless work done ahead by a stager of [`Judge::stager`].
    pub fn observe_staged(&mut self, ev: &RequestEvent<'_>, staged: &JudgeStaged, out: &mut Vec<VerdictChange>) {
        if self.alone() {
            out.extend(self.live.observe_staged(ev, &staged.live));
            return;
        }
        let all = self.shadow_all();
        out.extend(self.live.observe_staged(ev, &staged.live).map(|c| if all { shadowed(c) } else { c }));
        if let Some(c) = &mut self.candidate {
            let change = match &staged.candidate {
                Some(st) => c.observe_staged(ev, st),
                None => c.observe(ev),
            };
            out.extend(change.map(shadowed));
        }
    }

    pub fn observe_error(&mut self, ev: &ErrorLogEvent<'_>, out: &mut Vec<VerdictChange>) {
        self.both(out, |e| e.observe_error(ev).into_iter().collect());
    }

    pub fn apply(&mut self, ip: IpAddr, at: Timestamp, evidence: &[Evidence], out: &mut Vec<VerdictChange>) {
        self.both(out, |e| e.apply(ip, at, evidence).into_iter().collect());
    }

    /// See [`Engine::advance`].
    pub fn advance(&mut self, time: Timestamp, out: &mut Vec<VerdictChange>) {
        if self.alone() {
            out.extend(self.live.advance(time));
            return;
        }
        self.both(out, |e| e.advance(time));
    }

    /// See [`Engine::expire`].
    pub fn expire(&mut self, now: Timestamp, out: &mut Vec<VerdictChange>) {
        self.both(out, |e| e.expire(now));
    }

    /// See [`Engine::sweep`]; returns how many clients the live engine forgot.
    pub fn sweep(&mut self, now: Timestamp) -> usize {
        if let Some(c) = &mut self.candidate {
            c.sweep(now);
        }
        self.live.sweep(now)
    }

    /// Overrides hold in both engines (an operator's decision is not on trial).
    pub fn set_override(&mut self, net: IpNetwork, ov: Override, now: Timestamp, out: &mut Vec<VerdictChange>) {
        self.both(out, |e| e.set_override(net, ov.clone(), now));
    }

    pub fn remove_override(&mut self, net: IpNetwork, now: Timestamp, out: &mut Vec<VerdictChange>) {
        self.both(out, |e| e.remove_override(net, now));
    }

    pub fn track_renewals(&mut self, on: bool) {
        self.live.track_renewals(on);
        if let Some(c) = &mut self.candidate {
            c.track_renewals(on);
        }
    }

    pub fn take_renewals(&mut self, out: &mut Vec<VerdictChange>) {
        self.both(out, |e| e.take_renewals());
    }
}

/// Reading goes to the live engine: what is enforced (`explain`, `flagged`, `aggregates`, …).
/// Changes go through the judge's own methods, so both engines see them.
impl std::ops::Deref for Judge {
    type Target = Engine;
    fn deref(&self) -> &Engine {
        &self.live
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::{EngineConfig, Mode};
    use crate::evidence::{Source, SourceKind};
    use crate::verdict::Class;

    fn block(shadow: bool) -> Evidence {
        Evidence {
            source: Source::new(SourceKind::Rule, "R-9").in_shadow(shadow),
            penalty: 5.0,
            verdict: Some((Class::Bad, Duration::from_secs(600))),
            detail: "R-9 on trial".into(),
        }
    }

    #[test]
    fn shadow_evidence_makes_shadow_verdicts_only() {
        let mut j = Judge::new(Engine::new(EngineConfig::default()).unwrap());
        j.set_candidate(Some(Engine::new(EngineConfig::default()).unwrap()));
        let ip: IpAddr = "192.0.2.9".parse().unwrap();
        let mut out = Vec::new();
        j.apply(ip, Timestamp::from_secs(1000), &[block(true)], &mut out);
        assert_eq!(out.len(), 1, "{out:?}");
        assert!(out[0].shadow && out[0].to == Class::Bad);
        assert!(j.live().explain(ip, Timestamp::from_secs(1000)).is_none(), "the live engine never saw it");
        // an enforced source: both engines decide, only the candidate's is marked
        out.clear();
        let other: IpAddr = "192.0.2.10".parse().unwrap();
        j.apply(other, Timestamp::from_secs(1001), &[block(false)], &mut out);
        assert_eq!(out.iter().map(|c| (c.shadow, c.to)).collect::<Vec<_>>(), [(false, Class::Bad), (true, Class::Bad)]);
        // both lapse: the shadow verdict ends too
        out.clear();
        j.expire(Timestamp::from_secs(5000), &mut out);
        assert!(out.iter().all(|c| c.to == Class::Good) && out.len() == 3, "{out:?}");
    }

    #[test]
    fn global_shadow_mode_marks_every_verdict() {
        let cfg = EngineConfig { mode: Mode::Shadow, ..EngineConfig::default() };
        let mut j = Judge::new(Engine::new(cfg).unwrap());
        let mut out = Vec::new();
        j.apply("192.0.2.9".parse().unwrap(), Timestamp::from_secs(1000), &[block(false)], &mut out);
        assert_eq!(out.len(), 1);
        assert!(out[0].shadow && out[0].to == Class::Bad);
    }
}
