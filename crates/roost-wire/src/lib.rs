//! Every message roost puts on a Kafka topic or under a Redis key, in one place: the schema,
//! the encoder and the decoder of each, and a round-trip test per message. Producers and
//! consumers of a message use these and nothing else, so they cannot drift apart.
//!
//! | where | message | module |
//! |---|---|---|
//! | `roost.requests` | request events and network evidence, keyed by subject | [`requests`] |
//! | `roost.deadletter` | lines that did not parse | [`requests::DeadLetter`] |
//! | `roost.verdicts` | verdict changes (compacted: the last per subject is its verdict) | [`verdicts`] |
//! | `roost.overrides` | operators' overrides on prefixes (compacted, tombstone = removed) | [`overrides`] |
//! | Redis `v:`, `h:`, `o:`, `px:` | current verdicts, histories, overrides, challenge outcomes | [`redis`] |
//!
//! Every value starts with its schema version (`{"v":1,…`); a reader refuses a version it does
//! not know rather than guess. The feeds topic's records are `roost_feeds::FeedRecord` and the flows
//! topic's `roost_flows::FlowRecord`: each has one producer and its consumers in its own crate.
//! ARCHITECTURE.md ("Messages and keys") shows every schema in full.
//!
//! **Architecture Invariant:** no I/O here: bytes in, values out.

pub mod overrides;
pub mod redis;
pub mod requests;
pub mod verdicts;

pub use requests::subject_key;
