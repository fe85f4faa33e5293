//! `roost bgp`: the flowspec controller. From the verdicts it computes the set of flowspec rules
//! that divert flagged clients' traffic to the proxy ([`policy`]), and keeps every configured
//! router's table equal to that set through a BGP-4 session of its own ([`session`]), sending
//! only the difference. The wire format of what it sends is in [`wire`] and [`flowspec`]
//! (encoded by hand per RFC 4271, 4760, 8955 and 8956, and checked against bgpkit-parser's
//! parser); what it receives is parsed with bgpkit-parser.
//!
//! Safety first: a rule is never made for an allowlisted prefix or for a source prefix shorter
//! than the configured minimum, each peer gets at most `max_rules` (worst verdicts first), and
//! when the verdict source is unreachable the announced set is frozen, not withdrawn.

pub mod config;
pub mod controller;
pub mod flowspec;
pub mod policy;
pub mod session;
pub mod wire;

pub use config::BgpConfig;
pub use controller::{Controller, Input, Planner};
pub use flowspec::{Action, FlowRule};
