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

/// The memo of clean texts keys each field by its own text: a page seen clean before does not
/// hide what arrives with it the next time (a scanner's user agent, a payload in a header or
/// in another parameter).
#[test]
fn a_page_seen_clean_hides_nothing_that_comes_with_it() {
    let set = RuleSet::compile(&load::embedded(), &Options::default()).unwrap_or_else(|e| panic!("{e}"));
    let scoring = Scoring::new(&EngineConfig::default());
    let mut eval = roost_rules::Evaluator::new(&set, 1000);
    let mut fired = |n: u32, target: &str, ua: &str| -> Vec<String> {
        let line =
            format!("192.0.2.{n} - - [25/Nov/2025:10:00:00 +0000] \"GET {target} HTTP/1.1\" 200 512 \"-\" \"{ua}\"");
        let ev = examples::parse_example(&line).unwrap_or_else(|e| panic!("{e}")).remove(0);
        let mut out = Vec::new();
        eval.evaluate(&set, (n as u128, 32), &ev, scoring.classify(&ev.path), &mut out);
        out.iter().map(|&(r, _)| set.rules()[r as usize].id.clone()).collect()
    };
    let browser = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0";
    for n in 1..=3 {
        assert_eq!(fired(n, "/search?q=hello+world&page=2", browser), Vec::<String>::new());
    }
    assert!(!fired(4, "/search?q=hello+world&page=2", "sqlmap/1.7.2#stable (https://sqlmap.org)").is_empty());
    assert!(!fired(5, "/search?q=hello+world&page=2", "\\\"><script>alert(1)</script>").is_empty());
    assert!(!fired(6, "/search?q=hello+world&page=2%27%20or%20%271%27=%271", browser).is_empty());
    assert!(!fired(7, "/search/../../etc/passwd?q=hello+world&page=2", browser).is_empty());
    assert_eq!(fired(8, "/search?q=hello+world&page=2", browser), Vec::<String>::new());
}
