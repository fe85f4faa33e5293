//! Sources of roost's input. Today: following access logs on disk ([`tail`]).

pub mod tail;
