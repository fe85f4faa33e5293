//! Sources of roost's input. Today: following access logs on disk ([`tail`]) and remembering
//! where reading stands ([`checkpoint`]).

pub mod checkpoint;
pub mod tail;
