//! Property tests: no input makes a parser panic, and what a logger writes parses back to what
//! it was given.

use std::net::IpAddr;

use proptest::prelude::*;
use roost_logformat::{FormatKind, LogFormatConfig, Parser, Timestamp};

fn parsers() -> Vec<Parser> {
    let nginx = LogFormatConfig {
        format: FormatKind::Nginx,
        log_format: Some(r#"log_format t '$remote_addr - $remote_user [$time_local] "$request" $status $body_bytes_sent "$http_referer" "$http_user_agent" rt=$request_time';"#.into()),
        ..Default::default()
    };
    let haproxy = LogFormatConfig {
        format: FormatKind::Haproxy,
        haproxy_request_headers: vec!["host".into(), "user-agent".into()],
        ..Default::default()
    };
    vec![
        Parser::Clf,
        Parser::Json,
        Parser::from_config(&haproxy).unwrap(),
        Parser::from_config(&nginx).unwrap(),
        Parser::Syslog(Box::new(Parser::Clf)),
    ]
}

const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];

fn clf_time(t: i64) -> String {
    let days = t.div_euclid(86_400);
    let sod = t.rem_euclid(86_400);
    let (y, m, d) = roost_event::civil_from_days(days);
    format!("{d:02}/{}/{y:04}:{:02}:{:02}:{:02} +0000", MONTHS[m as usize - 1], sod / 3600, sod / 60 % 60, sod % 60)
}

/// nginx's default escaping of a logged value.
fn nginx_escape(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b == b'"' || b == b'\\' || !(0x20..0x7f).contains(&b) {
            out.push_str(&format!("\\x{b:02X}"));
        } else {
            out.push(b as char);
        }
    }
    out
}

fn ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![any::<[u8; 4]>().prop_map(IpAddr::from), any::<[u8; 16]>().prop_map(IpAddr::from)]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn never_panics_on_bytes(line in "\\PC{0,300}") {
        for p in parsers() {
            let _ = p.parse(&line);
        }
    }

    #[test]
    fn never_panics_on_near_misses(
        prefix in "[0-9a-f:. \\[\\]\"/-]{0,60}",
        cut in 0usize..200,
    ) {
        let base = r#"1.2.3.4 - - [10/Oct/2000:13:55:36 +0000] "GET /a?b HTTP/1.1" 200 12 "-" "ua" rt=0.1"#;
        let line = format!("{prefix}{}", &base[..cut.min(base.len())]);
        for p in parsers() {
            let _ = p.parse(&line);
        }
    }

    /// Inside any syslog frame, a line parses to what it parses to bare; cut frames never panic.
    #[test]
    fn framed_lines_parse_as_bare_ones(
        header in prop::sample::select(vec![
            "<190>Mar  3 10:15:02 web-1 nginx: ",
            "Dec 31 23:59:59 h nginx[1]: ",
            "<13>Mar  3 10:15:02 nginx: ",
            "2026-03-03T10:15:02.5+01:00 web-1 httpd[9]: ",
            "<190>1 2026-03-03T10:15:02Z web-1 nginx 812 - - ",
            "1 2026-03-03T10:15:02Z - - - - [a b=\"]\"] ",
        ]),
        cut in 0usize..120,
        garbage in "[ -~]{0,20}",
    ) {
        let base = r#"1.2.3.4 - - [10/Oct/2000:13:55:36 +0000] "GET /a?b HTTP/1.1" 200 12 "-" "ua""#;
        let framed = format!("{header}{base}");
        let p = Parser::Syslog(Box::new(Parser::Clf));
        prop_assert_eq!(p.parse(&framed).unwrap(), Parser::Clf.parse(base).unwrap());
        let _ = p.parse(&framed[..cut.min(framed.len())]);
        let _ = p.parse(&format!("{header}{garbage}"));
    }

    #[test]
    fn combined_round_trip(
        client in ip(),
        t in 0i64..4_000_000_000,
        method in "(GET|POST|HEAD|PUT)",
        path in "/[ -~]{0,40}",
        query in proptest::option::of("[ -~]{0,20}"),
        status in 100u16..600,
        bytes in any::<u32>(),
        referer in proptest::option::of("[ -~]{1,30}"),
        ua in proptest::option::of("\\PC{1,40}"),
    ) {
        // what nginx would log: values escaped, "-" for absent, no '?' or ' ' inside the path
        let path = path.replace(['?', ' '], "_");
        let query = query.map(|q| q.replace(' ', "+"));
        let target = match &query { Some(q) => format!("{path}?{q}"), None => path.clone() };
        let referer = referer.filter(|r| r != "-");
        let ua = ua.filter(|u| u != "-");
        let line = format!(
            "{client} - - [{}] \"{method} {} HTTP/1.1\" {status} {bytes} \"{}\" \"{}\"",
            clf_time(t),
            nginx_escape(&target),
            referer.as_deref().map_or("-".to_owned(), nginx_escape),
            ua.as_deref().map_or("-".to_owned(), nginx_escape),
        );
        let e = Parser::Clf.parse(&line).map_err(|e| TestCaseError::fail(format!("{e}: {line}")))?;
        prop_assert_eq!(e.client, client);
        prop_assert_eq!(e.time, Timestamp::from_secs(t));
        prop_assert_eq!(&*e.method, method.as_str());
        prop_assert_eq!(&*e.path, path.as_str());
        prop_assert_eq!(e.query.as_deref(), query.as_deref());
        prop_assert_eq!(e.status, status);
        prop_assert_eq!(e.bytes, bytes as u64);
        prop_assert_eq!(e.referer.as_deref(), referer.as_deref());
        prop_assert_eq!(e.user_agent.as_deref(), ua.as_deref());
    }
}

/// Every line of a real public web server's log parses (shared test data, see its README).
#[test]
fn real_apache_log_parses_completely() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/data/logs/semicomplete-apache-2015-05-17_18.log");
    let text = std::fs::read_to_string(path).expect("shared test data ../shared/data/logs is present");
    let mut n = 0;
    for (i, line) in text.lines().enumerate() {
        let e = Parser::Clf.parse(line).unwrap_or_else(|e| panic!("line {}: {e}: {line}", i + 1));
        assert!(e.status >= 100, "line {}", i + 1);
        n += 1;
    }
    assert_eq!(n, 4525);
    assert!(roost_logformat::detect(text.lines()).is_ok_and(|p| matches!(p, Parser::Clf)));
}
