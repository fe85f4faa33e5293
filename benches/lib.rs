//! Shared inputs for the benchmarks: generated logs held in memory.

use roost_loggen::{Format, Scenario, generate, write_line};

/// `n` lines of the generated scenario in `format`, as one string.
pub fn generated_log(n: u64, format: Format) -> String {
    let mut out = Vec::with_capacity(n as usize * 170);
    generate(&Scenario::sized(42, n), |r| write_line(&mut out, r, format)).expect("in memory");
    String::from_utf8(out).expect("generator writes UTF-8")
}

pub use roost_loggen::TIMED_LOG_FORMAT;
