//! `roost rules lint`'s diagnostics: what is wrong, in which file, on which line.

use roost_rules::{Options, RuleSet, RuleSource};

fn lint(files: &[(&str, &str)]) -> Vec<String> {
    let sources: Vec<RuleSource> =
        files.iter().map(|(n, t)| RuleSource { name: (*n).into(), text: (*t).into() }).collect();
    match RuleSet::compile(&sources, &Options::default()) {
        Ok(_) => Vec::new(),
        Err(e) => e.0.iter().map(|d| d.to_string()).collect(),
    }
}

const GOOD: &str = r#"
[[rule]]
id = "T-1"
title = "probe"
severity = "high"
category = "scanner"
match.path = ['^/probe$']
examples.match = ["GET /probe 404"]
"#;

#[test]
fn a_good_file_lints_clean() {
    assert!(lint(&[("a.toml", GOOD)]).is_empty());
}

#[test]
fn unknown_fields_name_file_and_line() {
    let text = GOOD.replace("category = \"scanner\"", "category = \"scanner\"\nseverty = \"low\"");
    let d = lint(&[("rules/a.toml", &text)]);
    assert_eq!(d.len(), 1, "{d:?}");
    assert!(d[0].starts_with("rules/a.toml:7: unknown field `severty`"), "{}", d[0]);
    let text = GOOD.replace("match.path", "match.paht");
    let d = lint(&[("a.toml", &text)]);
    assert!(d[0].starts_with("a.toml:7: unknown field `paht`"), "{}", d[0]);
}

#[test]
fn bad_regexes_name_the_pattern_and_line() {
    let text = GOOD.replace("'^/probe$'", "'^/probe$',\n  '(unclosed'");
    let d = lint(&[("a.toml", &text)]);
    assert_eq!(d.len(), 1, "{d:?}");
    assert!(d[0].starts_with("a.toml:8: T-1: bad regex in match.path: \"(unclosed\":"), "{}", d[0]);
    let text = GOOD.replace("'^/probe$'", r"'(a)\1'");
    assert!(
        lint(&[("a.toml", &text)])[0].contains("backreferences are not supported"),
        "{:?}",
        lint(&[("a.toml", &text)])
    );
}

#[test]
fn duplicate_ids_point_at_both() {
    let d = lint(&[("a.toml", GOOD), ("b.toml", GOOD)]);
    assert_eq!(d, ["b.toml:3: T-1: duplicate rule id (first defined at a.toml:3)"]);
}

#[test]
fn semantic_mistakes_are_caught() {
    let cases: &[(&str, &str, &str)] = &[
        ("match.path = ['^/probe$']", "match.status = [700]", "status 700 is not an HTTP status"),
        ("match.path = ['^/probe$']", "match.status = [\"4yy\"]", "neither a code nor a class"),
        ("match.path = ['^/probe$']", "match.path_class = \"dynamic\"", "path_class \"dynamic\""),
        ("match.path = ['^/probe$']", "", "no conditions under [match]"),
        ("examples.match = [\"GET /probe 404\"]", "", "no examples"),
        (
            "match.path = ['^/probe$']",
            "match.path = ['^/probe$']\nwindow = { count = 0, within = \"1m\" }",
            "window needs count >= 1",
        ),
        (
            "match.path = ['^/probe$']",
            "match.path = ['^/probe$']\nwindow = { count = 2, within = \"1m\", ratio = 1.5 }",
            "ratio must be within",
        ),
        (
            "match.path = ['^/probe$']",
            "match.path = ['^/probe$']\neffect = { ttl = \"1h\" }",
            "effect.ttl without effect.verdict",
        ),
        ("id = \"T-1\"", "id = \"T 1\"", "must be non-empty letters"),
        ("severity = \"high\"", "severity = \"severe\"", "unknown variant `severe`"),
    ];
    for (from, to, expect) in cases {
        let text = GOOD.replace(from, to);
        let d = lint(&[("a.toml", &text)]);
        assert!(d.iter().any(|m| m.contains(expect)), "{from} -> {to}: expected {expect:?} in {d:?}");
    }
}

#[test]
fn every_problem_is_reported_at_once() {
    let text = format!(
        "{GOOD}{}",
        GOOD.replace("'^/probe$'", "'['").replace("T-1", "T-2").replace("examples.match = [\"GET /probe 404\"]", "")
    );
    let d = lint(&[("a.toml", &text)]);
    assert_eq!(d.len(), 2, "{d:?}");
}

#[test]
fn toml_syntax_errors_have_lines() {
    let d = lint(&[("a.toml", "[[rule]]\nid = \"x\"\ntitle = oops\n")]);
    assert!(d[0].starts_with("a.toml:3:"), "{d:?}");
}

#[test]
fn detectors_are_named_and_match_conditions_only() {
    let sqli = GOOD.replace("match.path = ['^/probe$']", "match.detect = [\"sqli\"]").replace(
        "examples.match = [\"GET /probe 404\"]",
        "examples.match = [\"GET /x?id=1%27%20or%20%271%27=%271 200\"]\nexamples.no_match = [\"GET /x?id=1 200\"]",
    );
    assert!(lint(&[("a.toml", &sqli)]).is_empty(), "{:?}", lint(&[("a.toml", &sqli)]));
    let d = lint(&[("a.toml", &sqli.replace("[\"sqli\"]", "[\"sqlx\"]"))]);
    assert!(
        d.iter().any(|m| m.contains("match.detect: \"sqlx\" is not a detector (sqli, xss, traversal, cmd)")),
        "{d:?}"
    );
    let d = lint(&[(
        "a.toml",
        &sqli.replace("match.detect = [\"sqli\"]", "match.path = ['^/x']\nunless.detect = [\"xss\"]"),
    )]);
    assert!(d.iter().any(|m| m.contains("unless.detect: detectors are a match condition only")), "{d:?}");
}
