//! Any text as a rule file: loading (TOML, fields, regexes, windows, examples) must report
//! problems, never panic; a rule set that loads must evaluate requests without panicking.
#![no_main]

use std::borrow::Cow;

use libfuzzer_sys::fuzz_target;
use roost_engine::{PathClass, RequestEvent, Timestamp};
use roost_rules::{Evaluator, Options, RuleSet, RuleSource, examples};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data).into_owned();
    let src = [RuleSource { name: "fuzz.toml".into(), text }];
    let Ok(set) = RuleSet::compile(&src, &Options::default()) else { return };
    for r in set.rules() {
        for e in r.must_match.iter().chain(&r.must_not_match) {
            let _ = examples::parse_example(&e.spec);
        }
    }
    let mut eval = Evaluator::new(&set, 8);
    let mut out = Vec::new();
    for (i, path) in ["/", "/a/../b?x=%27", "/.env", "/wp-login.php"].into_iter().enumerate() {
        let ev = RequestEvent {
            time: Timestamp::from_secs(1_800_000_000 + i as i64),
            client: "192.0.2.1".parse().unwrap(),
            method: Cow::Borrowed(if i % 2 == 0 { "GET" } else { "POST" }),
            host: Some(Cow::Borrowed("example.org")),
            path: Cow::Borrowed(path),
            query: None,
            protocol: Cow::Borrowed("HTTP/1.1"),
            status: 200 + i as u16 * 100,
            bytes: 0,
            request_time: Some(i as f32),
            referer: None,
            user_agent: Some(Cow::Borrowed("Mozilla/5.0")),
        };
        eval.evaluate(&set, (1, 32), &ev, PathClass::Page, &mut out);
    }
});
