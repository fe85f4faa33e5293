//! The subcommands, one module each. A subcommand module depends on `crate::config`,
//! `crate::runtime`, the shared wiring (`crate::engine`, `crate::ruleset`, `crate::enrich`,
//! `crate::flowspec`) and its library crates — never on another subcommand (a test in `main.rs`
//! checks).

pub mod admin;
pub mod bgp;
pub mod feeds;
pub mod flows;
pub mod generate;
pub mod replay;
pub mod rules;
pub mod score;
pub mod tail;
pub mod up;
