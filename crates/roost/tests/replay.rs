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

/// The same log inside syslog frames — RFC 3164 as nginx's `access_log syslog:` and rsyslog write
/// it, and RFC 5424 — is detected and judged exactly as the bare log, in combined and in a custom
/// nginx `log_format` (`--syslog`); attackers are flagged.
#[test]
fn syslog_framed_logs_are_judged_as_the_bare_ones() {
    let dir = tempfile::tempdir().unwrap();
    let (bare, timed) = (dir.path().join("bare.log"), dir.path().join("timed.log"));
    ok(&["generate", "--out", s(&bare), "--seed", "11", "--lines", "4000"]);
    ok(&["generate", "--out", s(&timed), "--format", "timed", "--seed", "11", "--lines", "4000"]);
    let frame = |src: &Path, name: &str, header: &dyn Fn(usize) -> String| -> PathBuf {
        let out = dir.path().join(name);
        let text: String = std::fs::read_to_string(src)
            .unwrap()
            .lines()
            .enumerate()
            .map(|(i, l)| format!("{}{l}\n", header(i)))
            .collect();
        std::fs::write(&out, text).unwrap();
        out
    };
    let rfc3164 = |i: usize| {
        if i.is_multiple_of(2) {
            format!("<190>Mar  3 10:15:{:02} web-1 nginx: ", i % 60)
        } else {
            format!("Mar  3 10:15:{:02} web-2 nginx[812]: ", i % 60)
        }
    };
    let rfc5424 = |i: usize| format!("<190>1 2026-03-03T10:15:{:02}.003Z web-1 nginx {i} - - ", i % 60);
    let verdicts = |args: &[&str]| -> String {
        let out = dir.path().join("out.jsonl");
        let mut a = vec!["replay", "-o", s(&out)];
        a.extend_from_slice(args);
        ok(&a);
        std::fs::read_to_string(&out).unwrap()
    };
    let want = verdicts(&[s(&bare)]);
    assert!(want.contains("\"verdict\":\"bad\""), "the generated log has attackers");
    for (name, header) in [("3164.log", &rfc3164 as &dyn Fn(usize) -> String), ("5424.log", &rfc5424)] {
        let framed = frame(&bare, name, header);
        let summary = ok(&["replay", "-o", s(&dir.path().join("x.jsonl")), s(&framed)]);
        assert!(summary.contains("1 file(s) (combined in syslog)"), "{summary}");
        // the senders are kept: host and program
        let senders = if name == "3164.log" { "web-1/nginx 2000, web-2/nginx 2000" } else { "web-1/nginx 4000" };
        assert!(summary.contains(&format!("lines by sender (host/program): {senders}")), "{summary}");
        assert_eq!(verdicts(&[s(&framed)]), want, "{name}: detected and judged as the bare log");
        assert_eq!(verdicts(&["--format", "combined", "--syslog", s(&framed)]), want, "{name} with --syslog");
        // without saying so, a named format does not read framed lines
        let summary = ok(&["replay", "--format", "combined", s(&framed)]);
        assert!(
            summary.contains("(combined)")
                && summary
                    .contains(&format!("malformed   {}", std::fs::read_to_string(&framed).unwrap().lines().count())),
            "{summary}"
        );
    }
    let want = verdicts(&["--log-format", TIMED, s(&timed)]);
    let framed = frame(&timed, "timed-5424.log", &rfc5424);
    assert_eq!(verdicts(&["--log-format", TIMED, "--syslog", s(&framed)]), want, "a custom log_format inside RFC 5424");
}

/// Real-looking nginx and Apache error-log lines, one client per message, six lines each (five
/// negative answers are the least evidence the engine judges on): every one ends dubious or bad
/// with the server's message as the reason, readers in the same logs stay good, and lines about
/// nothing roost judges are counted, not malformed. Detected, in syslog frames too.
#[test]
fn error_logs_flag_the_clients_they_name() {
    let dir = tempfile::tempdir().unwrap();
    let nginx = |t: u32, client: &str, msg: &str| {
        format!(
            "2026/03/03 10:{:02}:{:02} [error] 812#812: *{t} {msg}, client: {client}, server: example.com, request: \"GET /admin HTTP/1.1\", host: \"example.com\"\n",
            t / 60,
            t % 60
        )
    };
    let apache = |t: u32, client: &str, msg: &str| {
        format!(
            "[Tue Mar 03 10:{:02}:{:02}.123456 2026] [auth_basic:error] [pid 812:tid 140] [client {client}:51234] {msg}\n",
            t / 60,
            t % 60
        )
    };
    let nginx_cases = [
        ("203.0.113.1", r#"user "admin" was not found in "/etc/nginx/.htpasswd""#, "was not found in"),
        ("203.0.113.2", r#"user "admin": password mismatch"#, "password mismatch"),
        ("203.0.113.3", r#"limiting requests, excess: 10.520 by zone "one""#, "limiting requests"),
        ("203.0.113.4", "client sent invalid request while reading client request line", "client sent invalid request"),
        (
            "2001:db8:5::1",
            r#"client login failed: "authentication failed" while in http auth state"#,
            "client login failed",
        ),
    ];
    let apache_cases = [
        ("198.51.100.1", "AH01618: user admin not found: /admin", "AH01618"),
        ("198.51.100.2", r#"AH01617: user admin: authentication failure for "/admin": Password Mismatch"#, "AH01617"),
        ("198.51.100.3", "AH00126: Invalid URI in request GET /..%2f..%2fetc/passwd HTTP/1.1", "AH00126"),
    ];
    let (mut n_text, mut a_text) = (String::new(), String::new());
    for i in 0..6u32 {
        for (k, (ip, msg, _)) in nginx_cases.iter().enumerate() {
            n_text.push_str(&nginx(i * 10 + k as u32, ip, msg));
        }
        for (k, (ip, msg, _)) in apache_cases.iter().enumerate() {
            a_text.push_str(&apache(i * 10 + k as u32, ip, msg));
        }
    }
    // a reader's one mistyped password, and lines about nothing roost judges
    n_text.push_str(&nginx(100, "192.0.2.10", r#"user "ana": password mismatch"#));
    n_text.push_str(r#"2026/03/03 10:02:00 [error] 812#812: *90 open() "/srv/www/favicon.ico" failed (2: No such file or directory), client: 192.0.2.10, server: example.com, request: "GET /favicon.ico HTTP/1.1""#);
    n_text.push_str("\n2026/03/03 10:02:01 [notice] 1#1: signal process started\n");
    a_text.push_str("[Tue Mar 03 10:02:00.000001 2026] [mpm_event:notice] [pid 1:tid 2] AH00489: Apache/2.4.57 configured -- resuming normal operations\n");
    let (nlog, alog) = (dir.path().join("error.log"), dir.path().join("apache-error.log"));
    std::fs::write(&nlog, &n_text).unwrap();
    std::fs::write(&alog, &a_text).unwrap();
    let framed = dir.path().join("error-syslog.log");
    let text: String = n_text.lines().map(|l| format!("<187>Mar  3 10:15:02 web-1 nginx: {l}\n")).collect();
    std::fs::write(&framed, text).unwrap();

    for (log, cases, format) in [
        (&nlog, &nginx_cases[..], "nginx error log"),
        (&framed, &nginx_cases[..], "nginx error log in syslog"),
        (&alog, &apache_cases[..], "apache error log"),
    ] {
        let out = dir.path().join("v.jsonl");
        let summary = ok(&["replay", "-o", s(&out), s(log)]);
        assert!(summary.contains(&format!("({format})")), "{summary}");
        assert!(summary.contains("malformed   0"), "{summary}");
        let unjudged = if format.starts_with("apache") { 1 } else { 2 };
        assert!(
            summary.contains("about nothing judged") && summary.contains(&format!(", {unjudged} about")),
            "{summary}"
        );
        let verdicts = read_jsonl(&out);
        for (ip, _, words) in cases {
            let subject = if ip.contains(':') { "2001:db8:5::/64" } else { ip };
            let v = verdicts.iter().find(|v| v["ip"] == *subject).unwrap_or_else(|| panic!("{subject}: {verdicts:?}"));
            assert_ne!(v["verdict"], "good", "{format}: {v}");
            let reasons = v["reasons"].to_string();
            assert!(reasons.contains(words) && reasons.contains("error log:"), "{format}: {v}");
        }
        if !format.starts_with("apache") {
            let reader = verdicts.iter().find(|v| v["ip"] == "192.0.2.10").unwrap();
            assert_eq!(reader["verdict"], "good", "{reader}");
        }
    }
}

/// An IDOR enumerator walking `/projects/N/todos/M` at four requests a minute for an hour, half
/// of them answered 403/404, beside readers: flagged within its first hour by the slow
/// enumeration rule, while its error rate alone (50 %) and its pace (far below any crawl rate)
/// would leave it good; the readers stay good.
#[test]
fn a_slow_enumerator_is_flagged_within_its_first_hour() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let t0 = 1_772_532_000u64; // 2026-03-03 10:00:00 UTC
    let line = |ip: &str, path: &str, status: u16, t: u64| {
        let secs = t - t0;
        format!(
            "{ip} - - [03/Mar/2026:{:02}:{:02}:{:02} +0000] \"GET {path} HTTP/1.1\" {status} 512 \"-\" \"Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0\"\n",
            10 + secs / 3600,
            secs / 60 % 60,
            secs % 60
        )
    };
    let mut text = String::new();
    for m in 0..60u64 {
        for k in 0..4u64 {
            let n = m * 4 + k;
            let status = match k {
                0 | 2 => 200,
                1 => 403,
                _ => 404,
            };
            text.push_str(&line(
                "203.0.113.77",
                &format!("/projects/{}/todos/{}", 1000 + n, n % 9),
                status,
                t0 + m * 60 + k * 15,
            ));
        }
        // readers: a page a minute each, one broken link now and then
        for r in 1..=5u64 {
            let status = if (m + r) % 20 == 0 { 404 } else { 200 };
            text.push_str(&line(
                &format!("192.0.2.{r}"),
                &format!("/projects/{r}/board?day={m}"),
                status,
                t0 + m * 60 + r,
            ));
        }
    }
    std::fs::write(&log, text).unwrap();
    let out = dir.path().join("v.jsonl");
    ok(&["replay", "-o", s(&out), s(&log)]);
    let verdicts = read_jsonl(&out);
    let e = verdicts.iter().find(|v| v["ip"] == "203.0.113.77").unwrap();
    assert_ne!(e["worst"], "good", "{e}");
    let flagged_at = e["flagged_at"].as_str().unwrap();
    assert!(flagged_at < "2026-03-03T11:00:00Z", "flagged within the first hour: {e}");
    assert!(e["reasons"].to_string().contains("R-5011 slow enumeration"), "{e}");
    for r in 1..=5 {
        let v = verdicts.iter().find(|v| v["ip"] == format!("192.0.2.{r}").as_str()).unwrap();
        assert_eq!(v["worst"], "good", "{v}");
    }
}

/// One-shot exploit probes of known-exploited vulnerabilities (rules/kev.toml): one request
/// makes the client dubious with the CVE in the reason, whatever the answer; a second, different
/// probe within the hour makes it bad (R-6999); the same product's normal pages do nothing.
#[test]
fn one_shot_exploit_probes_name_their_cve() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let line = |ip: &str, method: &str, target: &str, status: u16, sec: u32| {
        format!(
            "{ip} - - [03/Mar/2026:10:{:02}:{:02} +0000] \"{method} {target} HTTP/1.1\" {status} 0 \"-\" \"Mozilla/5.0\"\n",
            sec / 60,
            sec % 60
        )
    };
    let probes = [
        (
            "203.0.113.1",
            "/server-info.action?bootstrapStatusProvider.applicationConfig.setupComplete=false",
            404,
            "CVE-2023-22515",
        ),
        ("203.0.113.2", "/php/ztp_gate.php/.js.map", 404, "CVE-2024-0012"),
        ("203.0.113.3", "/Telerik.Web.UI.WebResource.axd?type=rau", 200, "CVE-2019-18935"),
    ];
    let mut text = String::new();
    for (ip, target, status, _) in probes {
        text.push_str(&line(ip, "GET", target, status, 1));
    }
    // one client tries two of them
    text.push_str(&line("203.0.113.9", "GET", probes[0].1, 404, 10));
    text.push_str(&line("203.0.113.9", "GET", probes[1].1, 404, 70));
    // the products' users
    text.push_str(&line("192.0.2.1", "GET", "/server-info.action", 200, 5));
    text.push_str(&line("192.0.2.1", "GET", "/display/DOC/Home", 200, 6));
    text.push_str(&line("192.0.2.2", "POST", "/Telerik.Web.UI.WebResource.axd?type=rau", 200, 7));
    text.push_str(&line("192.0.2.3", "GET", "/php/login.php", 200, 8));
    std::fs::write(&log, text).unwrap();
    let out = dir.path().join("v.jsonl");
    ok(&["replay", "-o", s(&out), s(&log)]);
    let verdicts = read_jsonl(&out);
    let get = |ip: &str| verdicts.iter().find(|v| v["ip"] == ip).unwrap_or_else(|| panic!("{ip}")).clone();
    for (ip, _, _, cve) in probes {
        let v = get(ip);
        assert_eq!(v["verdict"], "dubious", "{v}");
        assert!(v["reasons"].to_string().contains(cve), "the reason names {cve}: {v}");
    }
    let twice = get("203.0.113.9");
    assert_eq!(twice["verdict"], "bad", "{twice}");
    assert!(twice["reasons"].to_string().contains("R-6999"), "{twice}");
    for ip in ["192.0.2.1", "192.0.2.2", "192.0.2.3"] {
        assert_eq!(get(ip)["verdict"], "good", "{}", get(ip));
    }
}

/// A rule that matched a header says so and quotes it; a rule that matched the request line
/// cites the request as before.
#[test]
fn reasons_name_the_header_a_rule_matched() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let ua = "<script>alert(document.domain)</script>";
    let mut text = String::new();
    for i in 0..3 {
        text.push_str(&format!(
            "203.0.113.9 - - [03/Mar/2026:10:00:0{i} +0000] \"GET /wp-config.php.bak HTTP/1.1\" 404 0 \"-\" \"{ua}\"\n"
        ));
    }
    text.push_str("203.0.113.10 - - [03/Mar/2026:10:00:05 +0000] \"GET /search?q=<script>alert(1)</script> HTTP/1.1\" 200 10 \"-\" \"Mozilla/5.0\"\n");
    std::fs::write(&log, text).unwrap();
    let out = dir.path().join("v.jsonl");
    ok(&["replay", "-o", s(&out), s(&log)]);
    let verdicts = read_jsonl(&out);
    let by_ua = verdicts.iter().find(|v| v["ip"] == "203.0.113.9").unwrap().to_string();
    assert!(
        by_ua.contains(r#"User-Agent \"<script>alert(document.domain)</script>\" (GET /wp-config.php.bak → 404)"#),
        "{by_ua}"
    );
    assert!(
        by_ua.contains("probe for credentials and keys: GET /wp-config.php.bak → 404"),
        "a path rule cites the path: {by_ua}"
    );
    let in_query = verdicts.iter().find(|v| v["ip"] == "203.0.113.10").unwrap().to_string();
    assert!(
        in_query.contains("GET /search?q=<script>alert(1)</script> → 200") && !in_query.contains("User-Agent"),
        "{in_query}"
    );
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

/// A log long enough to be read in several batches (parsed by several threads) reads as it would
/// line by line: line numbers, CRLF endings, invalid UTF-8 (replaced, not dropped), a last line
/// with no newline, and the same verdicts whatever the order the threads finish in.
#[test]
fn a_long_log_is_read_in_order_whatever_the_threads_do() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("long.log");
    let mut text = Vec::new();
    for i in 1..=7000u32 {
        let ip = format!("198.51.100.{}", i % 200);
        let path = if i % 97 == 0 { "/wp-login.php".to_owned() } else { format!("/page/{}", i % 50) };
        let status = if i % 97 == 0 { 404 } else { 200 };
        let mut line = format!(
            "{ip} - - [25/Nov/2026:10:{:02}:{:02} +0000] \"GET {path} HTTP/1.1\" {status} 10 \"-\" \"Mozilla/5.0 ",
            (i / 60) % 60,
            i % 60
        )
        .into_bytes();
        if i == 3000 {
            line.extend_from_slice(b"\xff\xfe bad bytes");
        }
        line.extend_from_slice(b"\"");
        if i == 4500 {
            line = b"not a log line at all".to_vec();
        }
        text.extend_from_slice(&line);
        match i {
            7000 => {}
            _ if i % 3 == 0 => text.extend_from_slice(b"\r\n"),
            _ => text.push(b'\n'),
        }
    }
    std::fs::write(&log, &text).unwrap();
    let (out1, out2) = (dir.path().join("o1.jsonl"), dir.path().join("o2.jsonl"));
    let summary = ok(&["replay", s(&log), "-o", s(&out1)]);
    assert!(summary.contains("7000 lines"), "{summary}");
    assert!(summary.contains("events      6999"), "{summary}");
    assert!(summary.contains("malformed   1"), "{summary}");
    assert!(summary.contains("long.log:4500: "), "{summary}");
    ok(&["replay", s(&log), "-o", s(&out2)]);
    assert_eq!(std::fs::read(&out1).unwrap(), std::fs::read(&out2).unwrap(), "same input, same output");
    let rows = read_jsonl(&out1);
    assert_eq!(rows.iter().map(|r| r["requests"].as_u64().unwrap()).sum::<u64>(), 6999);
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

/// The backtest: `--compare OTHER.toml` reports exactly the clients whose worst verdict a
/// tightened threshold (the crawl limit) changes (found here by two plain replays), with both sets of reasons;
/// a rule in shadow mode gets the same report against the engine without it.
#[test]
fn compare_reports_exactly_the_clients_a_change_moves() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("g.log");
    roost(&["generate", "--out", s(&log), "--seed", "3"]);
    let other = dir.path().join("tight.toml");
    std::fs::write(&other, "[engine.crawl]\nlimit = 20\n").unwrap();
    let (a, b) = (dir.path().join("a.jsonl"), dir.path().join("b.jsonl"));
    ok(&["replay", s(&log), "--output", s(&a)]);
    ok(&["--config", s(&other), "replay", s(&log), "--output", s(&b)]);
    let worst = |p: &Path| -> std::collections::BTreeMap<String, String> {
        read_jsonl(p).into_iter().map(|v| (v["ip"].as_str().unwrap().to_owned(), v["worst"].to_string())).collect()
    };
    let (wa, wb) = (worst(&a), worst(&b));
    let mut expected: Vec<String> = wa.keys().filter(|ip| wa.get(*ip) != wb.get(*ip)).cloned().collect();
    expected.sort();
    assert!(!expected.is_empty(), "the tighter thresholds change someone");

    let out = ok(&["replay", s(&log), "--compare", s(&other)]);
    let header = out.lines().find(|l| l.contains("compared with")).unwrap_or_else(|| panic!("{out}"));
    assert!(header.contains(&format!("{} client(s) judged differently", expected.len())), "{header}");
    let mut reported: Vec<String> = out
        .lines()
        .skip_while(|l| !l.contains("compared with"))
        .skip(1)
        .take_while(|l| l.starts_with("    "))
        .filter(|l| {
            l.starts_with("    ") && !l.trim_start().starts_with("this:") && !l.trim_start().starts_with("other:")
        })
        .map(|l| l.split_whitespace().next().unwrap().to_owned())
        .collect();
    reported.sort();
    assert_eq!(reported, expected, "{out}");
    assert!(out.contains("      other: "), "the other configuration's reasons are shown: {out}");

    // a shadow rule: its would-be verdicts are the difference; the replay's own verdicts ignore it
    let rules = dir.path().join("rules");
    std::fs::create_dir(&rules).unwrap();
    std::fs::write(
        rules.join("trial.toml"),
        "[[rule]]\nid = \"S-1\"\ntitle = \"home page on trial\"\nseverity = \"high\"\ncategory = \"test\"\n\
         mode = \"shadow\"\nmatch.path = ['^/$']\neffect = { penalty = 1.0, verdict = \"block\", ttl = \"10m\" }\n\
         examples.match = [\"GET / 200\"]\n",
    )
    .unwrap();
    let c = dir.path().join("c.jsonl");
    let out = ok(&["replay", s(&log), "--rules", s(&rules), "--output", s(&c)]);
    assert!(out.contains("compared with sources in shadow mode"), "{out}");
    assert!(out.contains("good → bad") && out.contains("other: S-1 home page on trial"), "{out}");
    let enforced = read_jsonl(&c);
    assert!(
        enforced.iter().all(|v| !v.to_string().contains("S-1")),
        "the replay's own verdicts never cite the shadow rule"
    );
}

/// A Nextcloud user browsing photos in Firefox: a burst of previews and avatars answered 404,
/// the notifications app polled while disabled. Without the profile the client is judged on
/// those 404s; with `[engine] profiles = ["nextcloud"]` it stays good. A scanner in the same log
/// is flagged either way.
#[test]
fn an_app_profile_keeps_a_nextcloud_user_good() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("cloud.log");
    let ua = "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0";
    let referer = "https://cloud.example.org/apps/photos/";
    let mut lines = String::new();
    let line = |s: u32, ip: &str, req: &str, status: u16| {
        format!(
            "{ip} - alice [06/Dec/2026:10:{:02}:{:02} +0000] \"{req} HTTP/1.1\" {status} 512 \"{referer}\" \"{ua}\"\n",
            s / 60,
            s % 60
        )
    };
    lines.push_str(&line(0, "192.0.2.44", "GET /apps/photos/", 200));
    for i in 0..60u32 {
        let req = match i % 4 {
            0 | 1 => format!("GET /index.php/core/preview?fileId={}&x=256&y=256&a=true", 1000 + i),
            2 => format!("GET /avatar/user{i}/64"),
            _ => "GET /ocs/v2.php/apps/notifications/api/v2/notifications?format=json".to_owned(),
        };
        lines.push_str(&line(2 + i * 2, "192.0.2.44", &req, 404));
        if i % 10 == 0 {
            lines.push_str(&line(3 + i * 2, "192.0.2.44", "GET /apps/photos/api/v1/albums", 200));
        }
    }
    for (i, p) in
        ["/.env", "/.git/config", "/wp-login.php", "/phpmyadmin/", "/backup.zip", "/admin.php"].iter().enumerate()
    {
        lines.push_str(&line(10 + i as u32, "198.51.100.9", &format!("GET {p}"), 404));
    }
    std::fs::write(&log, lines).unwrap();
    let verdicts = |cfg: Option<&Path>| -> std::collections::BTreeMap<String, String> {
        let out = dir.path().join("out.jsonl");
        let mut args = vec![];
        if let Some(c) = cfg {
            args.extend(["--config", s(c)]);
        }
        args.extend(["replay", s(&log), "--output", s(&out)]);
        ok(&args);
        read_jsonl(&out).into_iter().map(|v| (v["ip"].as_str().unwrap().to_owned(), v["worst"].to_string())).collect()
    };
    let without = verdicts(None);
    assert_ne!(without["192.0.2.44"], "\"good\"", "the 404 burst is evidence without the profile: {without:?}");
    let cfg = dir.path().join("roost.toml");
    std::fs::write(&cfg, "[engine]\nprofiles = [\"nextcloud\"]\n").unwrap();
    let with = verdicts(Some(&cfg));
    assert_eq!(with["192.0.2.44"], "\"good\"", "{with:?}");
    assert_eq!(with["198.51.100.9"], "\"bad\"", "the scanner is still flagged: {with:?}");
    std::fs::write(&cfg, "[engine]\nprofiles = [\"nextclowd\"]\n").unwrap();
    let out = roost(&["--config", s(&cfg), "replay", s(&log)]);
    assert!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("no app profile named \"nextclowd\"")
    );
}

/// `roost replay` of `log` with `cfg` as the configuration file: each client's output by address.
fn replay_with(dir: &Path, log: &Path, cfg: &str) -> HashMap<String, Value> {
    let c = dir.join("roost.toml");
    std::fs::write(&c, cfg).unwrap();
    let out = dir.join("out.jsonl");
    ok(&["--config", s(&c), "replay", s(log), "--output", s(&out)]);
    read_jsonl(&out).into_iter().map(|v| (v["ip"].as_str().unwrap().to_owned(), v)).collect()
}

/// dnsmasq on loopback answering PTR and A records, as the DNS server crawler verification asks.
struct Dns(std::process::Child);

impl Drop for Dns {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn dnsmasq(records: &[&str]) -> (Dns, u16) {
    // the port is free for UDP when picked; its TCP twin, or the port itself a moment later,
    // may be another test's: dnsmasq then exits at once, and another port is tried
    for _ in 0..5 {
        let port = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut cmd = Command::new("/usr/sbin/dnsmasq");
        cmd.args(["--keep-in-foreground", "--bind-interfaces", "--listen-address=127.0.0.1", "--no-resolv"])
            .args(["--no-hosts", "--conf-file=/dev/null", "--pid-file=", "--user=root", "--log-facility=-"])
            .arg(format!("--port={port}"))
            .args(records)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        let mut child = cmd.spawn().expect("dnsmasq (scripts/install-test-deps.sh installs dnsmasq-base)");
        // listening once it answers a TCP connection on the port
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return (Dns(child), port);
            }
            if let Some(status) = child.try_wait().unwrap() {
                let mut why = String::new();
                let _ = std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut why);
                eprintln!("[test] dnsmasq on port {port} exited ({status}): {why}");
                break;
            }
            assert!(std::time::Instant::now() < deadline, "dnsmasq did not start on port {port}");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
    panic!("dnsmasq did not start on any of 5 ports");
}

/// Crawler verification by forward-confirmed reverse DNS, against a real DNS server: the real
/// Googlebot (PTR under googlebot.com, resolving back) stays good while crawling far faster
/// than anyone may; clients claiming Googlebot whose PTR is missing, whose PTR name does not
/// resolve back, or resolves elsewhere are flagged, each with that reason. Without
/// verification the real one is flagged for its pace.
#[test]
fn crawlers_are_verified_by_forward_confirmed_reverse_dns() {
    let (_dns, port) = dnsmasq(&[
        "--host-record=crawl-66-249-66-1.googlebot.com,66.249.66.1",
        "--ptr-record=55.2.0.192.in-addr.arpa,crawl-192-0-2-55.googlebot.com",
        "--ptr-record=56.2.0.192.in-addr.arpa,crawl-192-0-2-56.googlebot.com",
        "--host-record=crawl-192-0-2-56.googlebot.com,66.249.66.9",
        "--host-record=scraper.example.net,192.0.2.57",
    ]);
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("bots.log");
    let ua = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)";
    let mut lines = String::new();
    // 300 pages in 2 minutes each: far over the crawl limit
    for i in 0..300u32 {
        for ip in ["66.249.66.1", "192.0.2.55", "192.0.2.56", "192.0.2.57", "203.0.113.77"] {
            let (m, s) = ((i * 4 / 10) / 60, (i * 4 / 10) % 60);
            lines.push_str(&format!(
                "{ip} - - [06/Dec/2026:10:{m:02}:{s:02} +0000] \"GET /articles/{i} HTTP/1.1\" 200 5120 \"-\" \"{ua}\"\n"
            ));
        }
    }
    std::fs::write(&log, lines).unwrap();
    let run = |cfg: &str| replay_with(dir.path(), &log, cfg);
    let off = run("");
    assert_ne!(off["66.249.66.1"]["worst"], "good", "without verification its pace flags it: {:?}", off["66.249.66.1"]);

    let on = run(&format!("[crawlers]\nverify = true\nresolver = \"127.0.0.1:{port}\"\n"));
    let google = &on["66.249.66.1"];
    assert_eq!(google["worst"], "good", "{google}");
    assert!(
        google.to_string().contains("verified Googlebot: 66.249.66.1 is crawl-66-249-66-1.googlebot.com"),
        "{google}"
    );
    for (ip, why) in [
        ("192.0.2.55", "crawl-192-0-2-55.googlebot.com does not resolve back to it"),
        ("192.0.2.56", "crawl-192-0-2-56.googlebot.com resolves to 66.249.66.9 instead"),
        ("192.0.2.57", "is scraper.example.net, which is not under googlebot.com"),
        ("203.0.113.77", "has no reverse DNS name"),
    ] {
        let v = &on[ip];
        assert_ne!(v["worst"], "good", "{v}");
        let text = v.to_string();
        assert!(text.contains("claims to be Googlebot but is not") && text.contains(why), "{ip}: {text}");
    }
}

/// Writes combined lines `(second, client, request, status, user agent)` on 06/Dec/2026 10:00.
fn clf_lines(lines: &[(u32, String, String, u16, String)]) -> String {
    lines
        .iter()
        .map(|(t, ip, req, status, ua)| {
            format!(
                "{ip} - - [06/Dec/2026:{:02}:{:02}:{:02} +0000] \"{req} HTTP/1.1\" {status} 300 \"-\" \"{ua}\"\n",
                10 + t / 3600,
                t / 60 % 60,
                t % 60
            )
        })
        .collect()
}

/// An attacker rotating through /64s of one /48: once three of them are bad, the next ones are
/// judged bad at their first request, with the reason naming the /48; with escalation off they
/// get a fresh start. Another /48 is not touched.
#[test]
fn rotating_through_a_48_escalates() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("v6.log");
    let ua = "curl/8.5.0".to_owned();
    let mut l = Vec::new();
    for n in 1..=3u32 {
        for (i, p) in
            ["/.env", "/.git/config", "/wp-config.php.bak", "/.env.production", "/backup.sql", "/.aws/credentials"]
                .iter()
                .enumerate()
        {
            l.push((n * 60 + i as u32, format!("2001:db8:1:{n}::1"), format!("GET {p}"), 404, ua.clone()));
        }
    }
    for n in 4..=6u32 {
        l.push((300 + n, format!("2001:db8:1:{n}::1"), "GET /".to_owned(), 200, ua.clone()));
    }
    l.push((310, "2001:db8:2:1::1".to_owned(), "GET /".to_owned(), 200, ua.clone()));
    std::fs::write(&log, clf_lines(&l)).unwrap();
    let run = |cfg: &str| replay_with(dir.path(), &log, cfg);
    let on = run("");
    for n in 1..=3 {
        assert_eq!(on[&format!("2001:db8:1:{n}::/64")]["worst"], "bad", "{:?}", on);
    }
    for n in 4..=6 {
        let v = &on[&format!("2001:db8:1:{n}::/64")];
        assert_eq!(v["worst"], "bad", "{v}");
        assert!(v.to_string().contains("2001:db8:1::/48: 3 of its /64s turned bad within 10 min"), "{v}");
    }
    assert_eq!(on["2001:db8:2:1::/64"]["worst"], "good");
    let off = run("[engine.escalation]\nenabled = false\n");
    assert_eq!(off["2001:db8:1:4::/64"]["worst"], "good", "a fresh start without escalation");
}

/// An IPv4 address behind which many people browse well (a NAT) while one of them scans: it is
/// challenged, not blocked, with the reason saying why. The same scanner alone is blocked.
#[test]
fn a_shared_address_is_challenged_rather_than_blocked() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("nat.log");
    let mut l = Vec::new();
    let scanner = "Mozilla/5.0 zgrab/0.x".to_owned();
    for u in 0..12u32 {
        let ua =
            format!("Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:{}.0) Gecko/20100101 Firefox/{}.0", 120 + u, 120 + u);
        for k in 0..5u32 {
            l.push((5 + u * 10 + k, "203.0.113.10".to_owned(), format!("GET /news/{}", u * 5 + k), 200, ua.clone()));
        }
    }
    for (i, p) in
        ["/.git/config", "/wp-config.php.bak", "/.env.production", "/backup.sql", "/.aws/credentials", "/phpinfo.php"]
            .iter()
            .enumerate()
    {
        for ip in ["203.0.113.10", "198.51.100.99"] {
            l.push((200 + i as u32 * 5, ip.to_owned(), format!("GET {p}"), 404, scanner.clone()));
        }
    }
    for ip in ["203.0.113.10", "198.51.100.99"] {
        l.push((195, ip.to_owned(), "GET /.env".to_owned(), 404, scanner.clone()));
    }
    l.sort_by_key(|x| x.0);
    std::fs::write(&log, clf_lines(&l)).unwrap();
    let out = dir.path().join("out.jsonl");
    ok(&["replay", s(&log), "--output", s(&out)]);
    let v: HashMap<String, Value> =
        read_jsonl(&out).into_iter().map(|v| (v["ip"].as_str().unwrap().to_owned(), v)).collect();
    let nat = &v["203.0.113.10"];
    assert_eq!(nat["worst"], "dubious", "{nat}");
    assert!(nat.to_string().contains("shared address: 8 or more distinct user agents"), "{nat}");
    assert_eq!(v["198.51.100.99"]["worst"], "bad", "the scanner alone: {}", v["198.51.100.99"]);
    let cfg = dir.path().join("roost.toml");
    std::fs::write(&cfg, "[engine.shared]\nenabled = false\n").unwrap();
    ok(&["--config", s(&cfg), "replay", s(&log), "--output", s(&out)]);
    let off = read_jsonl(&out).into_iter().find(|v| v["ip"] == "203.0.113.10").unwrap();
    assert_eq!(off["worst"], "bad", "without the rule the NAT is blocked: {off}");
}
