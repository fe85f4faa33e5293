//! `roost replay` end to end, through the real binary: the golden scenario, determinism,
//! format parity, real traffic, and bad input.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

fn roost(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_roost")).args(args).env_remove("ROOST_CONFIG").output().expect("runs roost")
}

fn ok(args: &[&str]) -> String {
    let out = roost(args);
    assert!(out.status.success(), "roost {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

const TIMED: &str = r#"log_format timed '$remote_addr - $remote_user [$time_local] "$request" $status $body_bytes_sent "$http_referer" "$http_user_agent" rt=$request_time';"#;

fn read_jsonl(p: &Path) -> Vec<Value> {
    std::fs::read_to_string(p).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn truth(p: &Path) -> Vec<(String, String)> {
    std::fs::read_to_string(p)
        .unwrap()
        .lines()
        .map(|l| {
            let (a, b) = l.split_once('\t').unwrap();
            (a.to_owned(), b.to_owned())
        })
        .collect()
}

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

/// The golden test: a generated log with known attackers and normal users. Every attacker ends
/// dubious or bad with a reason naming its behaviour; every normal client stays good; the same
/// input gives byte-identical output, equal to the blessed file (ROOST_BLESS=1 rewrites it).
#[test]
fn golden_scenario() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("golden.log");
    let truth_p = dir.path().join("golden.truth");
    let out1 = dir.path().join("out1.jsonl");
    let out2 = dir.path().join("out2.jsonl");
    roost(&["generate", "--out", s(&log), "--truth", s(&truth_p), "--format", "timed", "--seed", "1"]);
    let summary = ok(&["replay", "--log-format", TIMED, s(&log), "--output", s(&out1)]);
    assert!(summary.contains("malformed   0"), "{summary}");
    ok(&["replay", "--log-format", TIMED, s(&log), "--output", s(&out2)]);
    let a = std::fs::read(&out1).unwrap();
    assert_eq!(a, std::fs::read(&out2).unwrap(), "same input, same output");

    let by_ip: HashMap<String, Value> =
        read_jsonl(&out1).into_iter().map(|v| (v["ip"].as_str().unwrap().to_owned(), v)).collect();
    let truth = truth(&truth_p);
    assert!(truth.len() > 400);
    let mut seen_roles = HashMap::new();
    for (ip, role) in &truth {
        let v = by_ip.get(ip).unwrap_or_else(|| panic!("{ip} ({role}) missing from the output"));
        let verdict = v["verdict"].as_str().unwrap();
        let reasons: Vec<&str> = v["reasons"].as_array().unwrap().iter().map(|r| r.as_str().unwrap()).collect();
        assert!(!reasons.is_empty(), "{ip}: a verdict always has a reason");
        *seen_roles.entry(role.as_str()).or_insert(0) += 1;
        let names_behaviour = |needle: &str| reasons.iter().any(|r| r.contains(needle));
        match role.as_str() {
            "reader" | "office" | "search_bot" => {
                assert_eq!(
                    (verdict, v["worst"].as_str().unwrap()),
                    ("good", "good"),
                    "{role} {ip} flagged: {reasons:?}"
                );
            }
            attacker => {
                assert!(verdict == "dubious" || verdict == "bad", "{attacker} {ip} ends {verdict}: {reasons:?}");
                // the status evidence, or the rule that recognised the behaviour
                let needles: &[&str] = match attacker {
                    "scanner" => &["404/410 on non-static paths", "probe for", "attack tool"],
                    "brute_forcer" => &["401/403 (failed authentication", "brute-force login"],
                    "crawler" => &["aggressive crawling"],
                    "slow_hammerer" => &["hammering slow pages", "hammering a slow page"],
                    other => panic!("unknown role {other}"),
                };
                assert!(
                    needles.iter().any(|n| names_behaviour(n)),
                    "{attacker} {ip}: no reason names its behaviour: {reasons:?}"
                );
                assert!(v["reputation"].as_f64().unwrap() < 0.1, "{attacker} {ip}: {v}");
            }
        }
    }
    for role in ["reader", "office", "search_bot", "scanner", "brute_forcer", "crawler", "slow_hammerer"] {
        assert!(seen_roles.get(role).copied().unwrap_or(0) >= 2, "scenario lacks {role}s");
    }

    let golden = golden_dir().join("replay-golden.jsonl");
    if std::env::var_os("ROOST_BLESS").is_some() {
        std::fs::create_dir_all(golden_dir()).unwrap();
        std::fs::write(&golden, &a).unwrap();
    }
    let expected = std::fs::read(&golden).expect("tests/golden/replay-golden.jsonl (ROOST_BLESS=1 writes it)");
    assert!(
        a == expected,
        "replay output differs from tests/golden/replay-golden.jsonl; review the change, then ROOST_BLESS=1 cargo test -p roost --test replay"
    );
}

/// The same traffic logged as nginx JSON lines (format auto-detected) gives the same verdicts.
#[test]
fn json_and_custom_log_format_agree() {
    let dir = tempfile::tempdir().unwrap();
    let (timed, json) = (dir.path().join("t.log"), dir.path().join("j.log"));
    let (o1, o2) = (dir.path().join("o1"), dir.path().join("o2"));
    roost(&["generate", "--out", s(&timed), "--format", "timed", "--seed", "5"]);
    roost(&["generate", "--out", s(&json), "--format", "json", "--seed", "5"]);
    ok(&["replay", "--log-format", TIMED, s(&timed), "-o", s(&o1)]);
    ok(&["replay", s(&json), "-o", s(&o2)]);
    assert_eq!(std::fs::read_to_string(&o1).unwrap(), std::fs::read_to_string(&o2).unwrap());
}

/// A real public web server's log: 890 clients, mostly readers and search crawlers, and a few
/// bots probing for WordPress and Joomla logins on a site that runs neither. Exactly those are
/// flagged, and only challenged; no reader or crawler is.
#[test]
fn real_log_flags_only_the_probers() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("real.jsonl");
    let log = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/data/logs/semicomplete-apache-2015-05-17_18.log");
    let summary = ok(&["replay", log, "-o", s(&out)]);
    assert!(summary.contains("4525 lines"), "{summary}");
    let rows = read_jsonl(&out);
    assert_eq!(rows.len(), 890);
    let text = std::fs::read_to_string(log).unwrap();
    let probed = |ip: &str| {
        text.lines()
            .filter(|l| l.starts_with(&format!("{ip} ")))
            .filter_map(|l| l.split('"').nth(1))
            .any(|req| req.contains("/wp-") || req.contains("/administrator") || req.contains("/wp/"))
    };
    let flagged: Vec<&Value> = rows.iter().filter(|v| v["worst"] != "good").collect();
    for v in &flagged {
        let ip = v["ip"].as_str().unwrap();
        assert!(probed(ip), "{ip} flagged but it never probed for an admin login: {v}");
        assert_eq!(v["worst"], "dubious", "probers are challenged, not blocked: {v}");
    }
    let probers = rows.iter().filter(|v| probed(v["ip"].as_str().unwrap())).count();
    assert_eq!((flagged.len(), probers), (16, 16), "every prober flagged, nobody else");
    // without the rules, status codes alone flag nobody here
    let out2 = dir.path().join("norules.jsonl");
    ok(&["replay", "--no-rules", log, "-o", s(&out2)]);
    assert!(read_jsonl(&out2).iter().all(|v| v["worst"] == "good"));
}

/// Malformed lines are counted, sampled with file and line, and never stop the replay; .gz works.
#[test]
fn malformed_lines_are_counted_not_fatal() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("mixed.log.gz");
    let good = r#"192.0.2.1 - - [25/Nov/2026:10:00:00 +0000] "GET / HTTP/1.1" 200 10 "-" "Mozilla/5.0""#;
    let text = format!(
        "{good}\n{good}\nthis is not a log line\n{good}\n192.0.2.1 - - [25/Nov/2026:10:00:00 +0000] \"GET / HTTP/1.1\" 2OO 10\n\n{good}\n"
    );
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, text.as_bytes()).unwrap();
    std::fs::write(&log, gz.finish().unwrap()).unwrap();
    let out = dir.path().join("o.jsonl");
    let summary = ok(&["replay", s(&log), "-o", s(&out)]);
    assert!(summary.contains("7 lines"), "{summary}");
    assert!(summary.contains("events      4"), "{summary}");
    assert!(summary.contains("malformed   3  (client 1, empty 1, status 1)"), "{summary}");
    assert!(
        summary.contains("mixed.log.gz:3: client is not an IP address at byte 0: this is not a log line"),
        "{summary}"
    );
    assert!(summary.contains("mixed.log.gz:5: bad status code"), "{summary}");
    let rows = read_jsonl(&out);
    assert_eq!(rows[0]["requests"], 4);
}

#[test]
fn clear_errors() {
    let out = roost(&["replay", "/nonexistent/access.log"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("opening /nonexistent/access.log"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.log");
    std::fs::write(&junk, "junk\nmore junk\n").unwrap();
    let err = String::from_utf8_lossy(&roost(&["replay", s(&junk)]).stderr).into_owned();
    assert!(err.contains("cannot tell the log format"), "{err}");
    let cfg = dir.path().join("bad.toml");
    std::fs::write(&cfg, "[engine]\nhalf_lif = \"1m\"\n").unwrap();
    let err = String::from_utf8_lossy(&roost(&["--config", s(&cfg), "config"]).stderr).into_owned();
    assert!(err.contains("half_lif"), "{err}");
}

#[test]
fn config_merges_file_and_environment() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(&cfg, "[engine]\nhalf_life = \"5m\"\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_roost"))
        .args(["--config", s(&cfg), "config"])
        .env("ROOST_ENGINE__PRIOR_WEIGHT", "7.5")
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("half_life = \"5m\""), "{text}");
    assert!(text.contains("prior_weight = 7.5"), "{text}");
}
