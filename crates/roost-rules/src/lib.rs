//! Known-bad behaviour rules: a readable TOML format (`rules/README.md`), each rule with examples
//! that must and must not match; compiled into one regex set per request field so the cost per
//! request stays nearly flat as rules grow; per-client sliding windows for behaviour over time;
//! plugged into the scoring engine as an [`roost_engine::Inspector`].
//!
//! **Architecture Invariant:** no I/O besides reading rule files in [`load`]; evaluation is pure
//! and driven by event time.

mod climb;
mod compile;
pub mod examples;
mod inspect;
pub mod load;
mod php;
mod shell;
mod spec;
pub mod view;
mod window;

pub use compile::{Diagnostic, Effect, Example, Options, RequestFacts, Rule, RuleSet, RuleSource, RulesError, Scratch};
pub use inspect::{DEFAULT_MAX_CLIENTS, Evaluator, RulesHandle, RulesInspector, detail, handle};
pub use spec::{KeyField, Severity, WindowSpec};
pub use window::ClientKey;

/// `count` texts of 1 to `pieces` pieces drawn from `alphabet` (xorshift, fixed seed), for tests
/// that compare two ways of judging the same text.
#[cfg(test)]
fn random_texts(alphabet: &[&str], pieces: u64, count: usize) -> Vec<String> {
    let mut x = 0x2545_f491_4f6c_dd1du64;
    (0..count)
        .map(|_| {
            let mut s = String::new();
            for _ in 0..(x % pieces + 1) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                s.push_str(alphabet[(x % alphabet.len() as u64) as usize]);
            }
            s
        })
        .collect()
}
