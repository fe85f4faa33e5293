//! The rule set shipped in rules/ lints clean and every example does what it says.

use roost_engine::{EngineConfig, Scoring};
use roost_rules::{Options, RuleSet, examples, load};

#[test]
fn shipped_rules_lint_and_pass_their_examples() {
    let sources = load::embedded();
    assert!(sources.len() >= 5, "rules/*.toml are embedded");
    let set = match RuleSet::compile(&sources, &Options::default()) {
        Ok(s) => s,
        Err(e) => panic!("rules/ does not lint:\n{e}"),
    };
    assert!(set.rules().len() >= 30);
    let (n, failures) = examples::run(&set, &Scoring::new(&EngineConfig::default()));
    let report: Vec<String> = failures.iter().map(|f| f.to_string()).collect();
    assert!(failures.is_empty(), "{} of {n} examples fail:\n{}", failures.len(), report.join("\n"));
    assert!(n >= 150, "{n} examples");
}
