//! roost's scoring engine ("Chicken"): per-client reputation from request events, verdicts
//! (good / dubious / bad) and the reasons behind them.
//!
//! **Architecture Invariant:** this crate does no I/O and never reads a clock. Time comes from
//! the events and from the caller, so replaying a log gives the same verdicts every time, and
//! the same code serves `roost replay`, `roost up` and `roost score`.
//!
//! **Architecture Invariant:** a verdict always carries at least one reason.
//!
//! Inputs: [`RequestEvent`]s ([`Engine::observe`]), other [`Evidence`] ([`Engine::apply`]),
//! operator [`Override`]s, and the passing of time ([`Engine::expire`], [`Engine::sweep`]).
//! Output: [`VerdictChange`]s, plus [`Engine::explain`] and [`Engine::aggregates`] on demand.
//! Known-bad rules plug in as [`Inspector`]s, threat feeds and GeoIP as [`Annotator`]s.

pub mod alarm;
mod config;
mod dossier;
mod engine;
mod evidence;
mod judge;
mod reasons;
mod scoring;
mod state;
mod verdict;

pub use config::{
    AppProfile, BehaviourConfig, ConfigError, EngineConfig, ErrorLogWeights, EscalationConfig, Mode, NormalRequests,
    PathConfig, SharedConfig, SlowConfig, VerdictConfig,
};
pub use engine::{Aggregates, Engine, EngineStager, Override, Staged, Stats};
pub use evidence::{
    Annotator, Evidence, Inspector, RequestContext, Source, SourceKind, Stager, UNPROVEN, unproven_source,
};
pub use judge::{Judge, JudgeStaged, JudgeStager};
pub use roost_event::{RequestEvent, Timestamp};
pub use scoring::{Category, PathClass, Scoring};
pub use state::{IpState, Key};
pub use verdict::{Cause, Class, Explanation, Reason, Sample, VerdictChange, subject_name};
