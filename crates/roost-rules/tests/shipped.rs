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

/// Patterns match bytes with ASCII classes and case folding; `(?u:…)` opts into Unicode, and
/// non-ASCII literals match their UTF-8 text.
#[test]
fn patterns_are_ascii_unless_they_ask_for_unicode() {
    let rule = |id: &str, pat: &str, yes: &str, no: &str| {
        format!(
            "[[rule]]\nid = \"{id}\"\ntitle = \"t\"\nseverity = \"high\"\ncategory = \"c\"\nmatch.path = ['{pat}']\n\
             examples.match = [\"GET {yes} 404\"]\nexamples.no_match = [\"GET {no} 404\"]\n"
        )
    };
    let text = [
        rule("U-1", r"^/\w+\.PHP$", "/Shell.php", "/%C3%A9t%C3%A9.php"),
        rule("U-2", r"^/(?u:\p{Han})+$", "/%E4%B8%AD%E6%96%87", "/abc"),
        rule("U-3", "^/caf\u{e9}$", "/caf%C3%A9", "/cafe"),
        rule("U-4", r"^/a.b$", "/a-b", "/a%C3%A9b"),
    ]
    .concat();
    let set = RuleSet::compile(&[roost_rules::RuleSource { name: "u.toml".into(), text }], &Options::default())
        .unwrap_or_else(|e| panic!("{e}"));
    let (n, failures) = examples::run(&set, &Scoring::new(&EngineConfig::default()));
    let report: Vec<String> = failures.iter().map(|f| f.to_string()).collect();
    assert!(failures.is_empty(), "{}", report.join("\n"));
    assert_eq!(n, 8);
}
