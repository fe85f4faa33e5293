//! The operator's inspection commands, run as the binary: `roost rules list|test`, `roost feeds
//! list|check|lookup` and `roost replay --feed`, on the shipped rules and feed definitions and a
//! real FireHOL snapshot (../shared/data/feeds). README's rule figures are read from README and
//! must be what `roost rules test` reports.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn firehol() -> PathBuf {
    let p = repo().join("../shared/data/feeds/firehol_level1.netset");
    assert!(p.is_file(), "{} is missing (scripts/install-test-deps.sh checks ../shared/data)", p.display());
    p
}

fn roost(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_roost"))
        .args(args)
        .env_remove("ROOST_CONFIG")
        .output()
        .unwrap_or_else(|e| panic!("roost {args:?}: {e}"))
}

/// stdout of a command that must succeed.
fn ok(args: &[&str]) -> String {
    let o = roost(args);
    assert!(o.status.success(), "roost {args:?} failed: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap()
}

/// The rules and examples counts README claims ("N readable rules in `rules/` with M examples").
fn readme_rule_counts() -> (usize, usize) {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let line = readme.lines().find(|l| l.contains("readable rules in `rules/`")).expect("README names its rule count");
    let numbers: Vec<usize> =
        line.split(|c: char| !c.is_ascii_digit()).filter(|w| !w.is_empty()).map(|w| w.parse().unwrap()).collect();
    (numbers[0], numbers[1])
}

#[test]
fn rules_list_shows_every_rule_and_readme_counts_are_the_tests() {
    let list = ok(&["rules", "list"]);
    let rows: Vec<&str> = list.lines().filter(|l| l.starts_with("R-")).collect();
    let ids: std::collections::BTreeSet<&str> = rows.iter().map(|l| l.split_whitespace().next().unwrap()).collect();
    assert_eq!(ids.len(), rows.len(), "ids are unique: {list}");
    // every rule file's ids are listed, with severity, category and effect
    let mut in_files = 0;
    for f in std::fs::read_dir(repo().join("rules")).unwrap() {
        let p = f.unwrap().path();
        if p.extension().is_some_and(|e| e == "toml") {
            let text = std::fs::read_to_string(&p).unwrap();
            for l in text.lines().filter(|l| l.trim_start().starts_with("id =")) {
                let id = l.split('"').nth(1).unwrap();
                assert!(ids.contains(id), "{id} of {} is not listed", p.display());
                in_files += 1;
            }
        }
    }
    assert_eq!(in_files, rows.len(), "rules/ and `roost rules list` agree");
    let r5001 = rows.iter().find(|l| l.starts_with("R-5001")).unwrap();
    for word in ["critical", "bruteforce", "block for 1h", "brute-force login"] {
        assert!(r5001.contains(word), "{r5001}");
    }
    // README's figures are what `roost rules test` runs
    let test = ok(&["rules", "test"]);
    let (rules, examples) = readme_rule_counts();
    assert!(
        test.contains(&format!("{rules} rules, {examples} examples: all pass")),
        "README says {rules} rules and {examples} examples; `roost rules test` says: {test}"
    );
    assert_eq!(rows.len(), rules, "README's rule count is the listed one");
}

#[test]
fn feeds_list_shows_the_definitions_and_never_a_token() {
    let token = "123456|do-not-print-this-secret";
    let o = Command::new(env!("CARGO_BIN_EXE_roost"))
        .args(["feeds", "list"])
        .env("ROOST_THREATEXCHANGE_TOKEN", token)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let list = String::from_utf8(o.stdout).unwrap();
    for name in ["firehol_level1", "spamhaus_drop", "feodo", "threatexchange"] {
        assert!(list.lines().any(|l| l.starts_with(name)), "{name} missing: {list}");
    }
    let firehol = list.lines().find(|l| l.starts_with("firehol_level1")).unwrap();
    for word in [" on ", "netset", "every 1h", "dubious for 30m", "https://iplists.firehol.org/"] {
        assert!(firehol.contains(word), "{firehol}");
    }
    assert!(list.lines().find(|l| l.starts_with("threatexchange")).unwrap().contains(" off "), "{list}");
    assert!(!list.contains("do-not-print") && !list.contains("123456"), "the token leaked: {list}");
    assert!(list.contains("REDACTED"), "{list}");
}

#[test]
fn feeds_check_counts_entries_and_names_bad_lines() {
    let f = firehol();
    let text = std::fs::read_to_string(&f).unwrap();
    let entries = text.lines().filter(|l| !l.trim().is_empty() && !l.starts_with('#')).count();
    let out = ok(&["feeds", "check", "firehol_level1", f.to_str().unwrap()]);
    assert!(out.contains(&format!(": {entries} entries")), "{entries} entries in the file: {out}");
    assert!(out.contains("0 bad lines") && out.contains("would be published"), "{out}");
    // a copy with two broken lines: both named with their line numbers
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.netset");
    std::fs::write(&bad, format!("{text}not-an-ip\n10.0.0.0/99\n")).unwrap();
    let out = ok(&["feeds", "check", "firehol_level1", bad.to_str().unwrap()]);
    let lines = text.lines().count();
    assert!(out.contains("2 bad lines"), "{out}");
    assert!(out.contains(&format!("line {}: not_an_address: \"not-an-ip\"", lines + 1)), "{out}");
    assert!(out.contains(&format!("line {}: bad_prefix: \"10.0.0.0/99\"", lines + 2)), "{out}");
    // an unknown feed name is an error that says so
    let o = roost(&["feeds", "check", "nosuch", f.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("no feed named \"nosuch\""));
}

/// An address inside the snapshot's first prefix, and the prefix.
fn listed() -> (String, String) {
    let text = std::fs::read_to_string(firehol()).unwrap();
    let prefix = text
        .lines()
        .filter(|l| !l.starts_with('#') && l.contains('/'))
        .find(|l| l.ends_with("/22") || l.ends_with("/24"))
        .expect("a /22 or /24 in the snapshot")
        .to_owned();
    let base: std::net::Ipv4Addr = prefix.split('/').next().unwrap().parse().unwrap();
    let ip = std::net::Ipv4Addr::from(u32::from(base) + 7);
    (ip.to_string(), prefix)
}

#[test]
fn feeds_lookup_names_the_feed_and_prefix_or_none() {
    let (ip, prefix) = listed();
    let feed = format!("firehol_level1={}", firehol().display());
    let out = ok(&["feeds", "lookup", &ip, "--feed", &feed]);
    assert!(
        out.contains(&format!("{ip}: listed in firehol_level1 since")) && out.contains(&format!("({prefix})")),
        "{out}"
    );
    let out = ok(&["feeds", "lookup", "192.0.2.55", "--feed", &feed]);
    assert!(out.contains("192.0.2.55: listed by none of 1 feeds"), "{out}");
}

#[test]
fn replay_with_a_feed_flags_the_listed_client_and_only_with_it() {
    let (ip, prefix) = listed();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let mut text = String::new();
    for i in 1..=3 {
        for client in [ip.as_str(), "198.51.100.1"] {
            text.push_str(&format!(
                "{client} - - [06/Dec/2026:10:00:0{i} +0000] \"GET /page{i} HTTP/1.1\" 200 512 \"-\" \"Mozilla/5.0\"\n"
            ));
        }
    }
    std::fs::write(&log, text).unwrap();
    let verdicts = |extra: &[&str]| -> Vec<serde_json::Value> {
        let out = dir.path().join("verdicts.jsonl");
        let mut args = vec!["replay", "-o", out.to_str().unwrap()];
        args.extend_from_slice(extra);
        args.push(log.to_str().unwrap());
        ok(&args);
        std::fs::read_to_string(&out).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    };
    let feed = format!("firehol_level1={}", firehol().display());
    let with = verdicts(&["--feed", &feed]);
    let listed = with.iter().find(|v| v["ip"] == ip.as_str()).unwrap();
    assert_eq!(listed["verdict"], "dubious", "{listed}");
    let reason = listed["reasons"][0].as_str().unwrap();
    assert!(reason.contains("listed in firehol_level1") && reason.contains(&prefix), "{reason}");
    let other = with.iter().find(|v| v["ip"] == "198.51.100.1").unwrap();
    assert_eq!(other["verdict"], "good", "{other}");
    let without = verdicts(&[]);
    assert!(without.iter().all(|v| v["verdict"] == "good"), "without the feed nobody is flagged: {without:?}");
}
