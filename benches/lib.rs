//! Shared inputs for the benchmarks: generated logs held in memory.

use roost_loggen::{Format, Scenario, generate, write_line};

/// `n` lines of the generated scenario in `format`, as one string.
pub fn generated_log(n: u64, format: Format) -> String {
    let mut out = Vec::with_capacity(n as usize * 170);
    generate(&Scenario::sized(42, n), |r| write_line(&mut out, r, format)).expect("in memory");
    String::from_utf8(out).expect("generator writes UTF-8")
}

pub use roost_loggen::TIMED_LOG_FORMAT;

/// `n` synthetic rules in the style of the shipped ones (paths, payloads, user agents, windows),
/// for measuring how evaluation cost grows with the rule count. None of them matches the
/// generated traffic's normal requests, as in real rule sets.
pub fn synthetic_rules(n: usize) -> String {
    let mut out = String::new();
    for i in 0..n {
        let (key, pat) = match i % 5 {
            0 => ("path", format!("(?:^|/)probe-{i}-[a-z]+\\.(?:php|asp)$")),
            1 => ("query", format!("(?:^|&)p{i}=(?:union|select)[^&]*")),
            2 => ("user_agent", format!("\\bscanner{i}/\\d")),
            3 => ("target", format!("/exploit-{i}(?:/|\\?)")),
            _ => ("anywhere", format!("\\$\\{{x{i}:")),
        };
        out.push_str(&format!(
            "[[rule]]\nid = \"S-{i}\"\ntitle = \"synthetic {i}\"\nseverity = \"medium\"\ncategory = \"synthetic\"\nmatch.{key} = ['{pat}']\nexamples.match = [\"GET / 200\"]\n\n"
        ));
    }
    out
}
