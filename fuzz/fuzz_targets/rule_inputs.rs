//! Any bytes in a request's path, query, User-Agent and Referer, through the shipped rules: the
//! decoded views and the tokenising detectors (`match.detect`) must never panic, nor must
//! describing what a detector found, for the reason.
#![no_main]

use std::borrow::Cow;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use roost_engine::{PathClass, RequestEvent, Timestamp};
use roost_rules::{Evaluator, Options, RuleSet, load};

fn shipped() -> &'static RuleSet {
    static SET: OnceLock<RuleSet> = OnceLock::new();
    SET.get_or_init(|| RuleSet::compile(&load::embedded(), &Options::default()).expect("shipped rules compile"))
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    // fields separated by NUL bytes: path, query, user agent, referer
    let mut f = text.split('\0');
    let path = f.next().unwrap_or("/");
    let query = f.next();
    let (ua, referer) = (f.next(), f.next());
    let ev = RequestEvent {
        time: Timestamp::from_secs(1_800_000_000),
        client: "192.0.2.1".parse().unwrap(),
        method: Cow::Borrowed("GET"),
        host: Some(Cow::Borrowed("example.org")),
        path: Cow::Borrowed(path),
        query: query.map(Cow::Borrowed),
        protocol: Cow::Borrowed("HTTP/1.1"),
        status: 200,
        bytes: 0,
        request_time: None,
        referer: referer.map(Cow::Borrowed),
        user_agent: ua.map(Cow::Borrowed),
    };
    let set = shipped();
    let mut eval = Evaluator::new(set, 8);
    let mut out = Vec::new();
    eval.evaluate(set, (1, 32), &ev, PathClass::Page, &mut out);
    for &(r, _) in &out {
        let _ = set.detection(r, &ev);
    }
});
