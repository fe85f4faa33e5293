//! Behaviour of the engine as a whole, through its public API.

use std::borrow::Cow;
use std::net::IpAddr;
use std::time::Duration;

use proptest::prelude::*;
use roost_engine::*;

const T0: i64 = 1_764_064_800; // 2025-11-25T10:00:00Z

fn ev(ip: &str, t: i64, method: &'static str, path: &str, status: u16) -> RequestEvent<'static> {
    let (path, query) = match path.split_once('?') {
        Some((p, q)) => (p.to_owned(), Some(Cow::Owned(q.to_owned()))),
        None => (path.to_owned(), None),
    };
    RequestEvent {
        time: Timestamp::from_secs(t),
        client: ip.parse().unwrap(),
        method: method.into(),
        host: None,
        path: Cow::Owned(path),
        query,
        protocol: "HTTP/1.1".into(),
        status,
        bytes: 100,
        request_time: None,
        referer: None,
        user_agent: Some("Mozilla/5.0".into()),
    }
}

fn engine() -> Engine {
    Engine::new(EngineConfig::default()).unwrap()
}

fn class_of(e: &Engine, ip: &str, t: i64) -> Class {
    e.explain(ip.parse().unwrap(), Timestamp::from_secs(t)).map_or(Class::Good, |x| x.class)
}

#[test]
fn one_404_never_makes_anyone_dubious() {
    let mut e = engine();
    for i in 0..4 {
        assert!(e.observe(&ev("198.51.100.1", T0 + i, "GET", &format!("/missing{i}"), 404)).is_none());
    }
    let x = e.explain("198.51.100.1".parse().unwrap(), Timestamp::from_secs(T0 + 4)).unwrap();
    assert_eq!(x.class, Class::Good);
    assert!(x.reputation < -0.3, "reputation alone would say dubious: {}", x.reputation);
    assert_eq!(x.reasons[0].text, "0 of 4 requests answered 2xx/3xx within 3 s");
    assert_eq!(
        x.reasons[1].text,
        "reputation -0.44 on only 4 negative answer(s) of 4 requests: fewer than the 5 needed to judge"
    );
    // the fifth tips it: challenged first (−5/10 = −0.5), blocked as it goes on
    let c = e.observe(&ev("198.51.100.1", T0 + 5, "GET", "/missing5", 404)).expect("judged now");
    assert_eq!((c.from, c.to), (Class::Good, Class::Dubious));
    assert_eq!(c.reasons[0].text, "5 of 5 requests answered 404/410 on non-static paths within 5 s");
    assert_eq!(c.samples.len(), 5);
    assert_eq!(c.samples[4].target, "/missing5");
    assert_eq!(c.expires, Some(Timestamp::from_secs(T0 + 5 + 900)));
    let c = (6..20).find_map(|i| e.observe(&ev("198.51.100.1", T0 + i, "GET", "/missing", 404))).expect("blocked");
    assert_eq!((c.from, c.to), (Class::Dubious, Class::Bad));
}

#[test]
fn ewma_maths_and_decay_to_neutral() {
    let mut e = engine();
    // 10 good, 10 bad page requests in the same second: s = 0, reputation 0
    for i in 0..10 {
        e.observe(&ev("203.0.113.5", T0, "GET", &format!("/p{i}"), 200));
        e.observe(&ev("203.0.113.5", T0, "GET", &format!("/q{i}"), 404));
    }
    let rep = |e: &Engine, t| e.explain("203.0.113.5".parse().unwrap(), Timestamp::from_secs(t)).unwrap().reputation;
    assert!(rep(&e, T0).abs() < 1e-6);
    // 20 more good: s = 20, w = 40, prior 5 → 20/45
    for i in 0..20 {
        e.observe(&ev("203.0.113.5", T0, "GET", &format!("/r{i}"), 200));
    }
    assert!((rep(&e, T0) - 20.0 / 45.0).abs() < 1e-5);
    // one half-life later both sums halve: 10/(20+5)
    assert!((rep(&e, T0 + 600) - 10.0 / 25.0).abs() < 1e-5);
    // idle for a day: back to neutral
    assert!(rep(&e, T0 + 86_400).abs() < 1e-3);
}

#[test]
fn static_assets_count_little_and_favicon_nothing() {
    let mut e = engine();
    for i in 0..50 {
        e.observe(&ev("192.0.2.10", T0 + i, "GET", &format!("/img/{i}.png"), 404));
        e.observe(&ev("192.0.2.10", T0 + i, "GET", "/favicon.ico", 404));
    }
    let x = e.explain("192.0.2.10".parse().unwrap(), Timestamp::from_secs(T0 + 50)).unwrap();
    assert_eq!(x.class, Class::Good);
    assert_eq!(x.requests, 100);
    // 50 × (−1 × 0.1) / (50 × 0.1 + 5)
    assert!((x.reputation + 0.5).abs() < 0.01, "{}", x.reputation);
}

#[test]
fn a_scanner_recovers_after_its_verdict_expires() {
    let mut e = engine();
    let mut changes = vec![];
    for i in 0..40 {
        changes.extend(e.observe(&ev("198.51.100.7", T0 + i, "GET", &format!("/wp-admin/{i}.php"), 404)));
    }
    let to: Vec<Class> = changes.iter().map(|c| c.to).collect();
    assert_eq!(to, [Class::Dubious, Class::Bad], "challenged, then blocked");
    assert_eq!(changes[1].expires, Some(Timestamp::from_secs(changes[1].at.secs() + 3600)));
    let expires = e.explain("198.51.100.7".parse().unwrap(), Timestamp::from_secs(T0 + 40)).unwrap().expires.unwrap();
    assert_eq!(expires, Timestamp::from_secs(T0 + 39 + 3600), "renewed by each new 404");
    // nothing lapses early
    assert!(e.expire(Timestamp::from_secs(T0 + 1800)).is_empty());
    assert_eq!(class_of(&e, "198.51.100.7", T0 + 1800), Class::Bad);
    let lapsed = e.expire(expires);
    assert_eq!(lapsed.len(), 1);
    assert_eq!((lapsed[0].from, lapsed[0].to, lapsed[0].cause), (Class::Bad, Class::Good, Cause::Expired));
    assert!(lapsed[0].reasons[0].text.starts_with("the bad verdict ran its time"));
}

#[test]
fn hysteresis_keeps_a_verdict_near_its_threshold() {
    let mut cfg = EngineConfig::default();
    cfg.verdict.dubious_ttl = Duration::from_secs(1); // isolate hysteresis from the TTL
    cfg.verdict.bad_ttl = Duration::from_secs(1);
    let mut e = Engine::new(cfg).unwrap();
    let ip = "198.51.100.8";
    let mut t = T0;
    for i in 0..10 {
        e.observe(&ev(ip, t, "GET", &format!("/a{i}"), 200));
    }
    // 21 404s: s = −11, w = 31 → −11/36 = −0.306, just past −0.3
    let mut changes = vec![];
    for _ in 0..21 {
        changes.extend(e.observe(&ev(ip, t, "GET", "/x", 404)));
    }
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0].to, Class::Dubious);
    assert!(changes[0].reputation < -0.3);
    // one good answer lifts it just above −0.3, but not past −0.2: still dubious
    t += 2;
    assert!(e.observe(&ev(ip, t, "GET", "/ok", 200)).is_none());
    let rep = e.explain(ip.parse().unwrap(), Timestamp::from_secs(t)).unwrap().reputation;
    assert!(rep > -0.3 && rep < -0.2, "{rep}");
    assert_eq!(class_of(&e, ip, t), Class::Dubious);
    // enough good answers to pass −0.2: good again
    let mut back = None;
    for i in 0..50 {
        t += 1;
        if let Some(c) = e.observe(&ev(ip, t, "GET", &format!("/ok{i}"), 200)) {
            back = Some(c);
            break;
        }
    }
    let back = back.expect("recovers");
    assert_eq!(back.to, Class::Good);
    assert!(back.reputation >= -0.2);
}

#[test]
fn allowlisted_clients_are_never_judged() {
    let mut cfg = EngineConfig::default();
    cfg.allowlist.push("10.1.0.0/16".parse().unwrap());
    let mut e = Engine::new(cfg).unwrap();
    for i in 0..100 {
        assert!(e.observe(&ev("10.1.2.3", T0 + i, "GET", "/.env", 404)).is_none());
        assert!(e.observe(&ev("127.0.0.1", T0 + i, "GET", "/.env", 404)).is_none());
    }
    assert_eq!(e.stats().allowlisted, 200);
    assert_eq!(e.tracked(), 0);
}

/// The allowlist is checked as verdicts are keyed: an allowlisted IPv4 client logged as an
/// IPv4-mapped IPv6 address is still allowlisted, and an allowlisted IPv6 address exempts its
/// whole /64 (a verdict on the /64 would block it); a neighbouring /64 is judged.
#[test]
fn the_allowlist_is_checked_on_the_subject_verdicts_are_keyed_by() {
    let mut cfg = EngineConfig::default();
    cfg.allowlist.push("198.51.100.7/32".parse().unwrap());
    cfg.allowlist.push("2001:db8:1:2::5/128".parse().unwrap());
    let mut e = Engine::new(cfg).unwrap();
    for i in 0..60 {
        for ip in ["::ffff:198.51.100.7", "2001:db8:1:2::5", "2001:db8:1:2::99"] {
            assert!(e.observe(&ev(ip, T0 + i, "GET", "/.env", 404)).is_none(), "{ip} is judged");
        }
        e.observe(&ev("2001:db8:1:3::99", T0 + i, "GET", "/.env", 404));
    }
    assert_eq!(e.stats().allowlisted, 180);
    assert!(e.is_allowlisted("198.51.100.7".parse().unwrap()));
    assert!(!e.is_allowlisted("198.51.100.8".parse().unwrap()));
    assert!(!e.is_allowlisted("::ffff:198.51.100.8".parse().unwrap()));
    assert_ne!(class_of(&e, "2001:db8:1:3::99", T0 + 60), Class::Good, "the next /64 is judged");
}

#[test]
fn ipv6_clients_are_judged_per_64_when_configured() {
    let mut e = engine();
    for i in 0..10u16 {
        e.observe(&ev(&format!("2001:db8:aa:bb::{i:x}"), T0 + i as i64, "GET", "/phpmyadmin/", 404));
    }
    let x = e.explain("2001:db8:aa:bb::ffff".parse().unwrap(), Timestamp::from_secs(T0 + 10)).unwrap();
    assert_eq!(x.subject.to_string(), "2001:db8:aa:bb::/64");
    assert_eq!((x.class, x.requests), (Class::Bad, 10));
    assert!(e.explain("2001:db8:aa:bc::1".parse().unwrap(), Timestamp::from_secs(T0)).is_none());

    let mut e = Engine::new(EngineConfig { ipv6_prefix: 128, ..Default::default() }).unwrap();
    for i in 0..10u16 {
        e.observe(&ev(&format!("2001:db8:aa:bb::{i:x}"), T0, "GET", "/phpmyadmin/", 404));
    }
    assert_eq!(e.tracked(), 10);
}

#[test]
fn aggressive_crawling_is_challenged_with_its_reason() {
    let mut e = engine();
    let mut change = None;
    // 5 pages a second, all 200
    for i in 0..600i64 {
        if let Some(c) = e.observe(&ev("203.0.113.50", T0 + i / 5, "GET", &format!("/article/{i}"), 200)) {
            change.get_or_insert(c);
        }
    }
    let c = change.expect("challenged");
    assert_eq!(c.to, Class::Dubious);
    assert_eq!(c.reasons[0].source, "behaviour:crawl");
    assert!(
        c.reasons[0].text.starts_with("aggressive crawling: ~121 non-static pages per 60 s (limit 120)"),
        "{}",
        c.reasons[0].text
    );
    // a reader at one page every 10 s never is
    let mut e = engine();
    for i in 0..600 {
        assert!(e.observe(&ev("203.0.113.51", T0 + i * 10, "GET", &format!("/article/{i}"), 200)).is_none());
    }
}

fn slow(ip: &str, t: i64, path: &str, secs: f32) -> RequestEvent<'static> {
    let mut e = ev(ip, t, "GET", path, 200);
    e.request_time = Some(secs);
    e
}

#[test]
fn hammering_slow_pages_is_challenged_unless_the_whole_site_is_slow() {
    let mut e = engine();
    let mut change = None;
    for i in 0..200i64 {
        // plenty of ordinary traffic keeps the site-wide slow share low
        for u in 0..5 {
            e.observe(&slow(&format!("192.0.2.{}", 100 + u), T0 + i, &format!("/page/{i}"), 0.05));
        }
        if i % 4 == 0
            && let Some(c) = e.observe(&slow("198.51.100.66", T0 + i, "/search?q=everything", 6.5))
        {
            change.get_or_insert(c);
        }
    }
    let c = change.expect("challenged");
    assert_eq!(c.to, Class::Dubious);
    assert!(c.reasons[0].text.starts_with("hammering slow pages: ~6 requests slower than 2 s per 2 min (limit 5), latest GET /search?q=everything took 6.5 s"), "{}", c.reasons[0].text);

    // when every page is slow, nobody is to blame
    let mut e = engine();
    for i in 0..200i64 {
        for u in 0..5 {
            e.observe(&slow(&format!("192.0.2.{}", 100 + u), T0 + i, &format!("/page/{i}"), 3.0));
        }
        if i % 4 == 0 {
            assert!(e.observe(&slow("198.51.100.66", T0 + i, "/search?q=everything", 6.5)).is_none());
        }
    }
}

#[test]
fn overrides_win_and_lapse() {
    let mut e = engine();
    e.observe(&ev("203.0.113.9", T0, "GET", "/", 200));
    let ov = Override {
        class: Class::Bad,
        until: Some(Timestamp::from_secs(T0 + 60)),
        by: "alice".into(),
        comment: "credential stuffing, ticket 42".into(),
    };
    let changes = e.set_override("203.0.113.0/24".parse().unwrap(), ov, Timestamp::from_secs(T0));
    assert_eq!(changes.len(), 1);
    assert_eq!((changes[0].to, changes[0].cause), (Class::Bad, Cause::Override));
    assert_eq!(changes[0].reasons[0].text, "override by alice: credential stuffing, ticket 42");
    // good requests do not lift an override
    for i in 1..30 {
        assert!(e.observe(&ev("203.0.113.9", T0 + i, "GET", "/", 200)).is_none());
    }
    let lapsed = e.expire(Timestamp::from_secs(T0 + 60));
    assert_eq!(lapsed.len(), 1);
    assert_eq!(lapsed[0].to, Class::Good);
    assert!(e.overrides().is_empty());
    // an allow override rescues a scanner at once
    for i in 0..10 {
        e.observe(&ev("198.51.100.20", T0 + 100 + i, "GET", "/.git/config", 404));
    }
    assert_eq!(class_of(&e, "198.51.100.20", T0 + 110), Class::Bad);
    let allow = Override { class: Class::Good, until: None, by: "bob".into(), comment: "our pentest".into() };
    let c = e.set_override("198.51.100.20/32".parse().unwrap(), allow, Timestamp::from_secs(T0 + 111));
    assert_eq!(c[0].to, Class::Good);
}

#[test]
fn repeat_offenders_are_held_longer() {
    let mut e = engine();
    let ip = "198.51.100.30";
    let mut ttls = vec![];
    let mut t = T0;
    for _round in 0..3 {
        let mut first = None;
        for i in 0..10 {
            if let Some(c) = e.observe(&ev(ip, t + i, "GET", "/xmlrpc.php", 404)) {
                first.get_or_insert(c);
            }
        }
        let c = first.unwrap();
        ttls.push(c.expires.unwrap().secs() - c.at.secs());
        t += 3 * 86_400 / 4 / 3 + 20_000; // past the expiry of even the longest hold so far
        let lapsed = e.expire(Timestamp::from_secs(t));
        assert_eq!(lapsed.last().map(|c| c.to), Some(Class::Good), "round lapsed");
    }
    assert_eq!(ttls, vec![900, 1800, 3600], "dubious TTL doubles per offence");
}

#[test]
fn sweep_forgets_idle_good_clients_only() {
    let mut e = engine();
    e.observe(&ev("192.0.2.1", T0, "GET", "/", 200));
    for i in 0..10 {
        e.observe(&ev("192.0.2.2", T0 + i, "GET", "/cgi-bin/x", 404));
    }
    assert_eq!(e.sweep(Timestamp::from_secs(T0 + 3599)), 0);
    assert_eq!(e.sweep(Timestamp::from_secs(T0 + 3700)), 1);
    assert_eq!(class_of(&e, "192.0.2.2", T0 + 3700), Class::Bad);
    assert!(e.explain("192.0.2.1".parse().unwrap(), Timestamp::from_secs(T0 + 3700)).is_none());
}

#[test]
fn aggregates() {
    let mut e = engine();
    for i in 0..10 {
        e.observe(&ev("192.0.2.1", T0 + i, "GET", "/", 200));
        e.observe(&ev("192.0.2.2", T0 + i, "GET", "/.env", 404));
    }
    let a = e.aggregates(Timestamp::from_secs(T0 + 10));
    assert_eq!(a.ips, 2);
    assert_eq!(a.per_class, [1, 0, 1]);
    assert_eq!(a.histogram.iter().sum::<u64>(), 2);
    // +10/15 and −10/15: the means cancel
    assert!(a.mean_by_ip.abs() < 1e-6 && a.mean_by_request.abs() < 1e-6);
    assert_eq!(a.histogram[3], 1); // −0.667 is in [−0.7, −0.6)
    assert_eq!(a.histogram[16], 1);
}

struct LoginWatch;
impl Inspector for LoginWatch {
    fn name(&self) -> &str {
        "test-rules"
    }
    fn inspect(&mut self, ctx: &RequestContext<'_, '_>, out: &mut Vec<Evidence>) {
        if ctx.event.path.contains("..") {
            out.push(Evidence {
                source: Source::new(SourceKind::Rule, "T-1"),
                penalty: 3.0,
                verdict: Some((Class::Bad, Duration::from_secs(600))),
                detail: format!("T-1 path traversal: {} {}", ctx.event.method, ctx.event.path),
            });
        }
    }
}

struct ListedNet;
impl Annotator for ListedNet {
    fn name(&self) -> &str {
        "test-feed"
    }
    fn annotate(&self, ip: IpAddr, _now: Timestamp, out: &mut Vec<Evidence>) {
        if ip.to_string().starts_with("203.0.113.") {
            out.push(Evidence {
                source: Source::new(SourceKind::Feed, "testlist"),
                penalty: 2.0,
                verdict: None,
                detail: "listed in testlist".into(),
            });
        }
    }
}

#[test]
fn inspectors_and_annotators_plug_in_with_their_reasons() {
    let mut e = engine();
    e.add_inspector(Box::new(LoginWatch));
    e.add_annotator(Box::new(ListedNet));
    let c = e.observe(&ev("198.51.100.40", T0, "GET", "/../../etc/passwd", 400)).expect("immediate verdict");
    assert_eq!((c.to, c.reasons[0].source.as_str()), (Class::Bad, "rule:T-1"));
    assert_eq!(c.reasons[0].text, "T-1 path traversal: GET /../../etc/passwd → bad");
    assert_eq!(c.expires, Some(Timestamp::from_secs(T0 + 600)), "the rule's own TTL");
    // a repeat offence holds twice as long
    assert_eq!(e.expire(Timestamp::from_secs(T0 + 600)).last().map(|c| c.to), Some(Class::Good));
    let c = e.observe(&ev("198.51.100.40", T0 + 700, "GET", "/../../etc/shadow", 400)).expect("again");
    assert_eq!(c.expires, Some(Timestamp::from_secs(T0 + 700 + 1200)));
    // annotations apply once per episode and show in the explanation
    for i in 0..3 {
        e.observe(&ev("203.0.113.77", T0 + i, "GET", "/", 200));
    }
    let x = e.explain("203.0.113.77".parse().unwrap(), Timestamp::from_secs(T0 + 3)).unwrap();
    assert!(x.reasons.iter().any(|r| r.source == "feed:testlist" && r.text == "listed in testlist"), "{:?}", x.reasons);
    // external evidence through apply()
    let flow = Evidence {
        source: Source::new(SourceKind::Flow, "portscan"),
        penalty: 1.0,
        verdict: Some((Class::Dubious, Duration::from_secs(300))),
        detail: "touched 312 ports in 60 s".into(),
    };
    let c = e.apply("192.0.2.99".parse().unwrap(), Timestamp::from_secs(T0 + 5), &[flow]).unwrap();
    assert_eq!((c.to, c.reasons[0].source.as_str()), (Class::Dubious, "flow:portscan"));
}

#[test]
fn bad_configs_are_refused_with_the_field_named() {
    let mut cfg = EngineConfig::default();
    cfg.scores.insert("6xx".into(), 1.0);
    assert!(Engine::new(cfg).err().unwrap().to_string().contains("\"6xx\""));
    let mut cfg = EngineConfig::default();
    cfg.verdict.bad_below = -0.1;
    assert!(Engine::new(cfg).err().unwrap().to_string().contains("bad_below"));
    let err = toml::from_str::<EngineConfig>("half_lif = \"1m\"").unwrap_err().to_string();
    assert!(err.contains("unknown field `half_lif`"), "{err}");
}

fn arb_event() -> impl Strategy<Value = RequestEvent<'static>> {
    (
        0u8..8,
        0i64..7200,
        prop::sample::select(vec![200u16, 301, 304, 400, 401, 403, 404, 405, 429, 500, 503, 0, 999]),
        prop::sample::select(vec!["/", "/a.css", "/login", "/favicon.ico", "/x/../y"]),
        prop::option::of(0f32..10.0),
    )
        .prop_map(|(ip, t, status, path, rt)| {
            let mut e = ev(&format!("192.0.2.{ip}"), T0 + t, "GET", path, status);
            e.request_time = rt;
            e
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn invariants_hold_for_any_event_sequence(mut events in prop::collection::vec(arb_event(), 1..300)) {
        events.sort_by_key(|e| e.time);
        let mut a = engine();
        let mut b = engine();
        let mut changes_a = vec![];
        for ev in &events {
            if let Some(c) = a.observe(ev) {
                prop_assert!(!c.reasons.is_empty(), "a verdict always carries a reason");
                prop_assert!(c.from != c.to);
                prop_assert!((-1.0..=1.0).contains(&c.reputation));
                changes_a.push(c);
            }
            changes_a.extend(a.expire(ev.time));
        }
        // determinism: a second engine fed the same events says exactly the same
        let mut changes_b = vec![];
        for ev in &events {
            changes_b.extend(b.observe(ev));
            changes_b.extend(b.expire(ev.time));
        }
        prop_assert_eq!(&changes_a, &changes_b);
        let now = events.last().unwrap().time;
        for x in a.explain_all(now) {
            prop_assert!((-1.0..=1.0).contains(&x.reputation));
            prop_assert!(!x.reasons.is_empty());
            prop_assert_eq!(x.since.is_some(), x.class != Class::Good);
        }
        let ag = a.aggregates(now);
        prop_assert_eq!(ag.per_class.iter().sum::<u64>(), ag.ips);
        prop_assert_eq!(ag.histogram.iter().sum::<u64>(), ag.ips);
    }

    #[test]
    fn reputation_recovers_towards_neutral_when_idle(n_bad in 1u32..200, idle_half_lives in 1u32..20) {
        let mut e = engine();
        for i in 0..n_bad {
            e.observe(&ev("198.51.100.1", T0 + i as i64, "GET", "/nope", 404));
        }
        let t = T0 + n_bad as i64;
        let r0 = e.explain("198.51.100.1".parse().unwrap(), Timestamp::from_secs(t)).unwrap().reputation;
        let r1 = e.explain("198.51.100.1".parse().unwrap(), Timestamp::from_secs(t + 600 * idle_half_lives as i64)).unwrap().reputation;
        prop_assert!(r0 < 0.0);
        prop_assert!(r1 > r0 && r1 <= 0.0, "{r0} -> {r1}");
    }
}

/// Times past what the engine can represent (after 2106) clamp; expiring at that edge ends.
#[test]
fn expiry_terminates_at_the_end_of_time() {
    let mut e = engine();
    let far = 7_258_118_400; // 2200-01-01
    for i in 0..12 {
        e.observe(&ev("198.51.100.90", far + i, "GET", "/nope", 404));
    }
    assert_eq!(class_of(&e, "198.51.100.90", far), Class::Bad);
    for _ in 0..3 {
        let _ = e.expire(Timestamp::from_secs(far + 100));
    }
    assert!(e.scheduled() <= 2, "{}", e.scheduled());
}

/// A client flipping between dubious and bad keeps one live entry in the expiry schedule.
#[test]
fn the_expiry_schedule_does_not_grow_with_flips() {
    let mut e = engine();
    let ip = "198.51.100.91";
    let mut t = T0;
    for round in 0..50 {
        for _ in 0..8 {
            t += 1;
            e.observe(&ev(ip, t, "GET", "/x", 404));
        }
        for _ in 0..12 {
            t += 1;
            e.observe(&ev(ip, t, "GET", "/ok", 200));
        }
        let _ = e.expire(Timestamp::from_secs(t));
        assert!(e.scheduled() <= 3, "round {round}: {} entries", e.scheduled());
    }
}

/// At `max_clients`, the good clients idle longest make room; flagged clients stay; when every
/// client is flagged, new ones are refused and counted.
#[test]
fn max_clients_bounds_memory() {
    let mut e = Engine::new(EngineConfig { max_clients: 20, ..Default::default() }).unwrap();
    for i in 0..10u32 {
        for k in 0..6 {
            e.observe(&ev(&format!("198.51.100.{i}"), T0 + k, "GET", "/.env-x", 404));
        }
    }
    for i in 0..100u32 {
        e.observe(&ev(&format!("192.0.2.{i}"), T0 + 10 + i as i64, "GET", "/", 200));
        assert!(e.tracked() <= 20);
    }
    assert!(e.stats().clients_evicted > 0);
    for i in 0..10u32 {
        assert_ne!(class_of(&e, &format!("198.51.100.{i}"), T0 + 200), Class::Good, "flagged clients are kept");
    }
    assert!(e.explain("192.0.2.99".parse().unwrap(), Timestamp::from_secs(T0 + 200)).is_some(), "the newest is kept");
    assert!(e.explain("192.0.2.0".parse().unwrap(), Timestamp::from_secs(T0 + 200)).is_none(), "the longest idle went");

    let mut e = Engine::new(EngineConfig { max_clients: 3, ..Default::default() }).unwrap();
    for i in 0..3u32 {
        for k in 0..6 {
            e.observe(&ev(&format!("198.51.100.{i}"), T0 + k, "GET", "/y", 404));
        }
    }
    assert!(e.observe(&ev("192.0.2.1", T0 + 10, "GET", "/.git/config", 404)).is_none());
    assert_eq!(e.stats().clients_refused, 1);
}

/// When a client's evidence has decayed away, its old rule hits stop counting against it.
#[test]
fn a_new_episode_starts_with_a_clean_ledger() {
    let mut e = engine();
    e.add_inspector(Box::new(LoginWatch));
    let ip = "198.51.100.92";
    e.observe(&ev(ip, T0, "GET", "/a/../b", 400)).expect("flagged");
    let _ = e.expire(Timestamp::from_secs(T0 + 700));
    assert_eq!(class_of(&e, ip, T0 + 700), Class::Good);
    // a day later: four 404s are below the minimum evidence, old hits do not make up the rest
    for i in 0..4 {
        e.observe(&ev(ip, T0 + 86_400 + i, "GET", "/nope", 404));
    }
    let x = e.explain(ip.parse().unwrap(), Timestamp::from_secs(T0 + 86_404)).unwrap();
    assert_eq!(x.class, Class::Good);
    assert!(x.reasons.iter().all(|r| !r.source.starts_with("rule:")), "{:?}", x.reasons);
    assert_eq!(x.offences, 1, "offences are remembered for escalation");
}

/// `flagged` lists the worst first and explains only what it returns.
#[test]
fn flagged_filters_and_limits() {
    let mut e = engine();
    for i in 0..5u32 {
        for k in 0..(if i < 2 { 6 } else { 12 }) {
            e.observe(&ev(&format!("198.51.100.{i}"), T0 + k, "GET", "/z", 404));
        }
    }
    let now = Timestamp::from_secs(T0 + 20);
    let all = e.flagged(now, None, 100);
    assert_eq!(all.len(), 5);
    assert_eq!(all[0].class, Class::Bad);
    assert_eq!(e.flagged(now, Some(Class::Dubious), 100).len(), 2);
    let two = e.flagged(now, None, 2);
    assert_eq!(two.len(), 2);
    assert!(two.iter().all(|x| x.class == Class::Bad));
}

#[test]
fn renewals_are_reported_when_the_expiry_moves_well_past_the_reported_one() {
    let mut e = engine();
    e.track_renewals(true);
    let ip = "198.51.100.8";
    let mut changes = vec![];
    for i in 0..40 {
        changes.extend(e.observe(&ev(ip, T0 + i, "GET", &format!("/wp-admin/{i}.php"), 404)));
    }
    let bad = changes.last().unwrap().clone();
    assert_eq!(bad.to, Class::Bad);
    assert!(e.take_renewals().is_empty(), "a few seconds of renewal is not worth a write");
    // the scanner keeps going for 20 minutes: its hold moves out past a quarter of an hour
    for i in 40..1240 {
        changes.extend(e.observe(&ev(ip, T0 + i, "GET", &format!("/wp-admin/{i}.php"), 404)));
    }
    assert_eq!(changes.len(), 2, "no class change meanwhile");
    let r = e.take_renewals();
    assert_eq!(r.len(), 1);
    assert_eq!((r[0].from, r[0].to, r[0].cause), (Class::Bad, Class::Bad, Cause::Renewed));
    assert!(r[0].expires.unwrap() > bad.expires.unwrap());
    assert!(!r[0].reasons.is_empty());
    assert!(e.take_renewals().is_empty(), "taken once");
    // without tracking nothing is kept
    let mut quiet = engine();
    for i in 0..1240 {
        quiet.observe(&ev(ip, T0 + i, "GET", &format!("/wp-admin/{i}.php"), 404));
    }
    assert!(quiet.take_renewals().is_empty());
}

/// An operator's block of one client that has not sent anything yet is published at once (the
/// proxies and routers act on published verdicts); a wider prefix waits for its clients.
#[test]
fn an_override_of_an_unseen_client_is_published_at_once() {
    let mut e = Engine::new(EngineConfig::default()).unwrap();
    let now = Timestamp::from_secs(1_764_000_000);
    let block = Override { class: Class::Bad, until: None, by: "ana".into(), comment: "stuffing".into() };
    let changes = e.set_override("203.0.113.99/32".parse().unwrap(), block.clone(), now);
    assert_eq!(changes.len(), 1, "{changes:?}");
    assert_eq!((changes[0].to, changes[0].cause), (Class::Bad, Cause::Override));
    assert!(changes[0].reasons.iter().any(|r| r.text.contains("stuffing")), "{changes:?}");
    assert!(e.set_override("198.51.100.0/24".parse().unwrap(), block, now).is_empty());
}
