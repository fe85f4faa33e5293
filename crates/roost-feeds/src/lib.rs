//! Threat feeds for roost.
//!
//! - [`def`]: feed definitions (`feeds/*.toml`, built in; or the operator's directory).
//! - [`parse`]: one parser per format (netset/ipset, Spamhaus text and JSON, CSV, ThreatExchange).
//! - [`validate`]: what a fetch must pass before it is published.
//! - [`store`]: per-feed contents with first-seen times, diffs, and the Kafka topic's records.
//! - [`index`]: the longest-prefix-match index, swapped atomically on update.
//! - [`annotate`]: listings as engine evidence.
//! - [`fetch`]: HTTP(S) with conditional requests, timeouts and retries (the only I/O besides
//!   [`local`], which loads feed files from disk).

pub mod annotate;
pub mod def;
pub mod fetch;
pub mod index;
pub mod local;
pub mod parse;
pub mod store;
pub mod validate;

pub use annotate::FeedAnnotator;
pub use def::{FeedDef, FeedEffect, FeedFormat};
pub use index::{FeedHandle, FeedIndex, IndexedFeed, Listing};
pub use parse::{FeedEntry, Parsed};
pub use store::{FeedContents, FeedRecord, FeedStore};
pub use validate::{Policy, Refusal};

/// Errors reading definitions or files.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}: {1}")]
    Definition(String, String),
    #[error("{0}: {1}")]
    Io(String, #[source] std::io::Error),
}
