//! `roost admin` as a real process over real Redis and Kafka, with `roost score` applying the
//! overrides it publishes: every endpoint, signed in and not, with and without CSRF tokens, as
//! viewer and operator; overrides reach Redis (where proxies read them) and the audit log;
//! attacker-controlled text renders escaped.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;

fn write_config(dir: &Path, admin_port: u16, score_port: u16, prefix: &str, topics: &str) -> std::path::PathBuf {
    let users = dir.join("users.toml");
    std::fs::write(
        &users,
        format!(
            "[[user]]\nname = \"ana\"\nrole = \"operator\"\npassword_hash = \"{}\"\n\n[[user]]\nname = \"vic\"\nrole = \"viewer\"\npassword_hash = \"{}\"\n",
            hash_password("correct horse battery"),
            hash_password("viewer pass")
        ),
    )
    .unwrap();
    let token_hash = roost_admin::auth::sha256_hex("ci-viewer-token");
    std::fs::write(dir.join("secret"), "a proxy secret of at least sixteen bytes\n").unwrap();
    let cfg = dir.join("roost.toml");
    std::fs::write(
        &cfg,
        format!(
            "[kafka]\nbrokers = \"{}\"\n[kafka.topics]\nrequests = \"{topics}-requests\"\nverdicts = \"{topics}-verdicts\"\n\
             overrides = \"{topics}-overrides\"\naudit = \"{topics}-audit\"\nfeeds = \"{topics}-feeds\"\n\
             [redis]\nurl = \"{}\"\nprefix = \"{prefix}\"\n\
             [score]\ngroup = \"{topics}-group\"\npartitions = 1\nlisten = \"127.0.0.1:{score_port}\"\n\
             [proxy.challenge]\nsecret_file = \"{secret}\"\n\
             [geo]\ncity_db = \"{mmdb}/GeoIP2-City-Test.mmdb\"\nasn_db = \"{mmdb}/GeoLite2-ASN-Test.mmdb\"\n\
             [admin]\nlisten = \"127.0.0.1:{admin_port}\"\nusers_file = \"{}\"\ncookie_secure = false\n\
             tokens = [{{ name = \"ci\", role = \"viewer\", sha256 = \"{token_hash}\" }}]\n",
            kafka(),
            redis(),
            users.display(),
            secret = dir.join("secret").display(),
            mmdb = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/mmdb").display(),
        ),
    )
    .unwrap();
    cfg
}

#[test]
fn auth_csrf_roles_overrides_audit_and_escaping() {
    let dir = tempfile::tempdir().unwrap();
    let (port, score_port) = (free_port(), free_port());
    let prefix = format!("{}:", unique("adm"));
    let topics = unique("adm");
    let cfg = write_config(dir.path(), port, score_port, &prefix, &topics);
    let _score = Proc::roost("roost score", &cfg, "score");
    let _admin = Proc::roost("roost admin", &cfg, "admin");
    wait_for(Duration::from_secs(30), "roost admin", || http_get(port, "/healthz").is_some());

    // an attacker-controlled reason in a stored verdict (what the scorer writes from a log line)
    let mut store = roost_verdicts::Store::new(&roost_verdicts::RedisConfig {
        url: redis(),
        prefix: prefix.clone(),
        ..Default::default()
    })
    .unwrap();
    let rec = roost_verdicts::VerdictRecord {
        shadow: false,
        v: 1,
        subject: "198.51.100.66".into(),
        verdict: roost_engine::Class::Bad,
        reputation: -0.8,
        at: roost_engine::Timestamp(roost_proxy::now_ms()),
        expires: Some(roost_engine::Timestamp(roost_proxy::now_ms() + 3_600_000)),
        requests: 12,
        reasons: vec!["R-1001 probe: GET /<script>alert(1)</script> UA \"<img src=x onerror=alert(2)>\"".into()],
    };
    store
        .write(&[roost_verdicts::Write {
            record: rec,
            now: roost_engine::Timestamp(roost_proxy::now_ms()),
            announce: true,
            samples: vec![roost_engine::Sample {
                at: roost_engine::Timestamp(roost_proxy::now_ms()),
                method: "GET".into(),
                target: "/.env?<b>x</b>".into(),
                status: 404,
                user_agent: Some("<script>alert(1)</script>".into()),
            }],
        }])
        .unwrap();

    // nothing without signing in
    assert_eq!(request(port, "GET", "/api/v1/clients", &[], "").status, 401);
    let r = request(port, "GET", "/", &[], "");
    assert_eq!(r.status, 303);
    assert!(r.headers.contains("location: /login"));
    assert_eq!(request(port, "GET", "/api/v1/clients", &[("Authorization", "Bearer guessed")], "").status, 401);
    for path in ["/api/v1/me", "/api/v1/clients/198.51.100.66", "/api/v1/audit", "/api/v1/references/0000000000"] {
        assert_eq!(request(port, "GET", path, &[], "").status, 401, "{path}");
    }
    for path in ["/clients", "/clients/198.51.100.66", "/audit", "/references"] {
        assert_eq!(request(port, "GET", path, &[], "").status, 303, "{path}");
    }
    let anon = request(
        port,
        "POST",
        "/api/v1/overrides",
        &[("Content-Type", "application/json")],
        r#"{"prefix":"203.0.113.1","action":"block","comment":"x"}"#,
    );
    assert_eq!(anon.status, 401);
    let r = request(port, "GET", "/login", &[], "");
    assert_eq!(r.status, 200);
    assert!(r.headers.contains("content-security-policy: default-src 'none'"), "{}", r.headers);
    assert!(r.headers.contains("x-frame-options: deny"));

    // wrong passwords, then the limit
    assert_eq!(login(port, "ana", "wrong").status, 401);
    let mut last = 0;
    for _ in 0..6 {
        last = login(port, "mallory", "guess").status;
    }
    assert_eq!(last, 429, "repeated failures are rate limited");

    // the operator signs in
    let r = login(port, "ana", "correct horse battery");
    assert_eq!(r.status, 303, "{}", r.body);
    let cookie = session_cookie(&r);
    let me = request(port, "GET", "/api/v1/me", &[("Cookie", &cookie)], "");
    let me: serde_json::Value = serde_json::from_str(&me.body).unwrap();
    assert_eq!(me["role"], "operator");
    let csrf = me["csrf"].as_str().unwrap().to_owned();

    // two more verdicts, from addresses MaxMind's test databases place: London (GB) and
    // Telstra's network (AS1221); lists filter by country, network, rule and feed as fields, and
    // the overview counts what is behind the bad verdicts
    let now = roost_engine::Timestamp(roost_proxy::now_ms());
    let placed = |subject: &str, reason: &str| roost_verdicts::Write {
        record: roost_verdicts::VerdictRecord {
            shadow: false,
            v: 1,
            subject: subject.into(),
            verdict: roost_engine::Class::Bad,
            reputation: -0.9,
            at: now,
            expires: Some(roost_engine::Timestamp(now.0 + 3_600_000)),
            requests: 7,
            reasons: vec![reason.into()],
        },
        now,
        announce: true,
        samples: Vec::new(),
    };
    store
        .write(&[
            placed("81.2.69.142", "R-1006 probe for site backups: GET /dump.sql → 404 (4 times within 1 min) → bad"),
            placed("1.128.0.1", "feed spamhaus_drop: listed in spamhaus_drop since 2026-11-01 (1.128.0.0/11) → bad"),
        ])
        .unwrap();
    let api = |q: &str| -> serde_json::Value {
        let r = request(port, "GET", &format!("/api/v1/clients?{q}"), &[("Cookie", &cookie)], "");
        assert_eq!(r.status, 200, "{q}: {}", r.body);
        serde_json::from_str(&r.body).unwrap()
    };
    let subjects = |v: &serde_json::Value| -> Vec<String> {
        v["items"].as_array().unwrap().iter().map(|i| i["subject"].as_str().unwrap().to_owned()).collect()
    };
    let gb = api("country=gb");
    assert_eq!(subjects(&gb), ["81.2.69.142"]);
    assert_eq!(gb["items"][0]["country"], "GB");
    assert_eq!(gb["items"][0]["rules"][0], "R-1006");
    let telstra = api("asn=AS1221");
    assert_eq!(subjects(&telstra), ["1.128.0.1"]);
    assert_eq!(telstra["items"][0]["as_org"], "Telstra Pty Ltd");
    assert_eq!(subjects(&api("feed=spamhaus_drop")), ["1.128.0.1"]);
    assert_eq!(subjects(&api("rule=R-1001")), ["198.51.100.66"]);
    assert_eq!(request(port, "GET", "/api/v1/clients?asn=nope", &[("Cookie", &cookie)], "").status, 400);
    let overview = request(port, "GET", "/", &[("Cookie", &cookie)], "");
    assert_eq!(overview.status, 200);
    for shown in [
        "/clients?verdict=bad&amp;country=GB",
        "AS1221 Telstra Pty Ltd",
        "/clients?verdict=bad&amp;feed=spamhaus_drop",
        "R-1006",
    ] {
        assert!(overview.body.contains(shown), "{shown} not on the overview: {}", overview.body);
    }
    let page = request(port, "GET", "/clients?country=GB", &[("Cookie", &cookie)], "");
    assert!(page.body.contains("81.2.69.142") && !page.body.contains("1.128.0.1"), "{}", page.body);

    // the list and the page: the attacker's text is escaped
    let list = request(port, "GET", "/api/v1/clients?verdict=bad", &[("Cookie", &cookie)], "");
    assert_eq!(list.status, 200);
    assert!(list.body.contains("198.51.100.66"), "{}", list.body);
    let page = request(port, "GET", "/clients?verdict=bad", &[("Cookie", &cookie)], "");
    assert_eq!(page.status, 200);
    assert!(page.body.contains("&lt;script&gt;alert(1)&lt;/script&gt;"), "{}", page.body);
    assert!(!page.body.contains("<script>") && !page.body.contains("<img src=x"), "{}", page.body);
    let detail = request(port, "GET", "/clients/198.51.100.66", &[("Cookie", &cookie)], "");
    assert!(detail.body.contains("&lt;img src=x onerror=alert(2)&gt;"), "{}", detail.body);
    // the sample's user agent and path, as text; the timeline is drawn
    assert!(detail.body.contains("<td class=\"mono\">&lt;script&gt;alert(1)&lt;/script&gt;</td>"), "{}", detail.body);
    assert!(detail.body.contains("/.env?&lt;b&gt;x&lt;/b&gt;"), "{}", detail.body);
    assert!(detail.body.contains("<polyline"), "{}", detail.body);
    assert!(!detail.body.contains("<script>"), "{}", detail.body);
    assert_eq!(request(port, "GET", "/api/openapi.json", &[], "").status, 200);
    // the reference a proxy's error page showed for it leads back to the verdict
    let signer = roost_proxy::challenge::Signer::new(b"a proxy secret of at least sixteen bytes");
    let stored = store.load_all().unwrap()["198.51.100.66"].clone();
    let reference = signer.reference("198.51.100.66", stored.at.0);
    let found = request(port, "GET", &format!("/api/v1/references/{reference}"), &[("Cookie", &cookie)], "");
    assert_eq!(found.status, 200, "{}", found.body);
    assert!(found.body.contains("198.51.100.66"));
    assert_eq!(request(port, "GET", "/api/v1/references/0000000000", &[("Cookie", &cookie)], "").status, 404);
    assert_eq!(request(port, "GET", "/api/v1/references/x", &[("Cookie", &cookie)], "").status, 400);
    let page = request(port, "GET", &format!("/references?ref={reference}"), &[("Cookie", &cookie)], "");
    assert!(page.body.contains("198.51.100.66"), "{}", page.body);
    assert_eq!(request(port, "GET", "/api/v1/clients?sort=sideways", &[("Cookie", &cookie)], "").status, 400);

    // state changes need the CSRF token and the same origin
    let body = r#"{"prefix":"203.0.113.99","action":"block","expires_in":"1h","comment":"credential stuffing seen in the app log"}"#;
    let json = ("Content-Type", "application/json");
    assert_eq!(request(port, "POST", "/api/v1/overrides", &[("Cookie", &cookie), json], body).status, 403);
    assert_eq!(
        request(port, "POST", "/api/v1/overrides", &[("Cookie", &cookie), json, ("X-CSRF-Token", "0000")], body).status,
        403
    );
    assert_eq!(
        request(
            port,
            "POST",
            "/api/v1/overrides",
            &[("Cookie", &cookie), json, ("X-CSRF-Token", &csrf), ("Origin", "https://evil.example")],
            body
        )
        .status,
        403
    );
    let form = "prefix=203.0.113.99&action=block&expires_in=1h&comment=x&csrf=wrong";
    let r = request(
        port,
        "POST",
        "/overrides",
        &[("Cookie", &cookie), ("Content-Type", "application/x-www-form-urlencoded")],
        form,
    );
    assert_eq!(r.status, 403);
    // a comment is mandatory, over-broad prefixes are refused
    let no_comment = r#"{"prefix":"203.0.113.99","action":"block","comment":"  "}"#;
    assert_eq!(
        request(port, "POST", "/api/v1/overrides", &[("Cookie", &cookie), json, ("X-CSRF-Token", &csrf)], no_comment)
            .status,
        400
    );
    let broad = r#"{"prefix":"10.0.0.0/8","action":"block","comment":"no"}"#;
    assert_eq!(
        request(port, "POST", "/api/v1/overrides", &[("Cookie", &cookie), json, ("X-CSRF-Token", &csrf)], broad).status,
        400
    );
    // now right
    let posted = std::time::Instant::now();
    let r = request(port, "POST", "/api/v1/overrides", &[("Cookie", &cookie), json, ("X-CSRF-Token", &csrf)], body);
    assert_eq!(r.status, 201, "{}", r.body);
    // (a figure, not a pass/fail: how long an override takes to reach Redis, where proxies read it)
    let mut probe = roost_verdicts::Store::new(&roost_verdicts::RedisConfig {
        url: redis(),
        prefix: prefix.clone(),
        ..Default::default()
    })
    .unwrap();
    wait_for(Duration::from_secs(30), "the block in Redis", || {
        probe.load_all().is_ok_and(|all| all.contains_key("203.0.113.99"))
    });
    eprintln!("[test] override → Redis in {} ms", posted.elapsed().as_millis());
    // through the HTML form too
    let form = format!("prefix=203.0.113.100&action=challenge&expires_in=30m&comment=looks+like+a+scraper&csrf={csrf}");
    let r = request(
        port,
        "POST",
        "/overrides",
        &[("Cookie", &cookie), ("Content-Type", "application/x-www-form-urlencoded")],
        &form,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains("Override applied"));

    // the scorer applies them: the verdicts are in Redis, where proxies read them
    wait_for(Duration::from_secs(30), "the overrides to reach Redis", || {
        store.load_all().is_ok_and(|all| {
            all.get("203.0.113.99").is_some_and(|v| v.verdict.as_str() == "bad")
                && all.get("203.0.113.100").is_some_and(|v| v.verdict.as_str() == "dubious")
        })
    });
    // and the audit log says who, when, what, why
    let audit = request(port, "GET", "/api/v1/audit", &[("Cookie", &cookie)], "");
    let audit: serde_json::Value = serde_json::from_str(&audit.body).unwrap();
    let e = &audit[1];
    assert_eq!(e["by"], "ana");
    assert_eq!(e["prefix"], "203.0.113.99/32");
    assert_eq!(e["class"], "bad");
    assert_eq!(e["comment"], "credential stuffing seen in the app log");
    assert!(e["until"].as_i64().unwrap() > roost_proxy::now_ms());
    let page = request(port, "GET", "/audit", &[("Cookie", &cookie)], "");
    assert!(page.body.contains("looks like a scraper"));
    let one = request(port, "GET", "/api/v1/clients/203.0.113.99", &[("Cookie", &cookie)], "");
    assert!(one.body.contains("credential stuffing"), "{}", one.body);
    // and it is in the audit topic too (durable beyond Redis)
    let mut n = 0;
    let kcfg = roost_kafka::KafkaConfig { brokers: kafka(), ..Default::default() };
    roost_kafka::read_to_end(&kcfg, &format!("{topics}-audit"), Duration::from_secs(20), |_| n += 1).unwrap();
    assert_eq!(n, 2);

    // a viewer (session or token) sees but cannot change
    let v = login(port, "vic", "viewer pass");
    let vcookie = session_cookie(&v);
    let vme: serde_json::Value =
        serde_json::from_str(&request(port, "GET", "/api/v1/me", &[("Cookie", &vcookie)], "").body).unwrap();
    let vcsrf = vme["csrf"].as_str().unwrap().to_owned();
    assert_eq!(
        request(port, "POST", "/api/v1/overrides", &[("Cookie", &vcookie), json, ("X-CSRF-Token", &vcsrf)], body)
            .status,
        403
    );
    let bearer = ("Authorization", "Bearer ci-viewer-token");
    assert_eq!(request(port, "GET", "/api/v1/clients", &[bearer], "").status, 200);
    assert_eq!(request(port, "POST", "/api/v1/overrides", &[bearer, json], body).status, 403);

    // signing out ends the session
    let r = request(
        port,
        "POST",
        "/logout",
        &[("Cookie", &cookie), ("Content-Type", "application/x-www-form-urlencoded")],
        &format!("csrf={csrf}"),
    );
    assert_eq!(r.status, 303);
    assert_eq!(request(port, "GET", "/api/v1/me", &[("Cookie", &cookie)], "").status, 401);

    // /metrics, open to Prometheus: what happened, counted, and nobody's name or address in it
    let m = request(port, "GET", "/metrics", &[], "");
    assert_eq!(m.status, 200);
    for (series, at_least) in [
        ("roost_admin_sign_ins_total{outcome=\"ok\"}", 2.0),
        ("roost_admin_sign_ins_total{outcome=\"invalid\"}", 1.0),
        ("roost_admin_sign_ins_total{outcome=\"limited\"}", 1.0),
        ("roost_admin_overrides_total{action=\"block\"}", 1.0),
        ("roost_admin_overrides_total{action=\"challenge\"}", 1.0),
        ("roost_admin_responses_total{code=\"403\"}", 3.0),
        ("roost_admin_responses_total{code=\"429\"}", 1.0),
        ("roost_admin_verdict_loads_total", 1.0),
    ] {
        assert!(metric(port, series).is_some_and(|v| v >= at_least), "{series} in\n{}", m.body);
    }
    for secret in ["ana", "mallory", "203.0.113", "credential"] {
        assert!(!m.body.contains(secret), "{secret} in /metrics");
    }
}

/// 100,000 flagged clients: the list pages through them on the server (50 to a page, any page,
/// any order, filtered), the browser never gets them all.
#[test]
fn lists_page_through_a_hundred_thousand_verdicts() {
    let dir = tempfile::tempdir().unwrap();
    let (port, score_port) = (free_port(), free_port());
    let prefix = format!("{}:", unique("adm100k"));
    let cfg = write_config(dir.path(), port, score_port, &prefix, &unique("adm100k"));
    let _admin = Proc::roost("roost admin", &cfg, "admin");
    let mut store =
        roost_verdicts::Store::new(&roost_verdicts::RedisConfig { url: redis(), prefix, ..Default::default() })
            .unwrap();
    let now = roost_engine::Timestamp(roost_proxy::now_ms());
    let writes: Vec<roost_verdicts::Write> = (0..100_000u32)
        .map(|i| roost_verdicts::Write {
            record: roost_verdicts::VerdictRecord {
                shadow: false,
                v: 1,
                subject: format!("10.{}.{}.{}", i >> 16, (i >> 8) & 255, i & 255),
                verdict: if i % 4 == 0 { roost_engine::Class::Bad } else { roost_engine::Class::Dubious },
                reputation: -((i % 1000) as f32) / 1000.0,
                at: roost_engine::Timestamp(now.0 - i64::from(i)),
                expires: Some(roost_engine::Timestamp(now.0 + 3_600_000)),
                requests: i % 500,
                reasons: vec![format!("R-{} test rule → {}", 1000 + i % 7, if i % 4 == 0 { "bad" } else { "dubious" })],
            },
            now,
            announce: false,
            samples: Vec::new(),
        })
        .collect();
    for chunk in writes.chunks(5000) {
        store.write(chunk).unwrap();
    }
    wait_for(Duration::from_secs(30), "roost admin", || http_get(port, "/healthz").is_some());
    let r = login(port, "ana", "correct horse battery");
    let cookie = session_cookie(&r);
    let get = |path: &str| {
        let t = std::time::Instant::now();
        let r = request(port, "GET", path, &[("Cookie", &cookie)], "");
        assert_eq!(r.status, 200, "{path}: {}", r.body);
        (r, t.elapsed())
    };
    let (cold, cold_t) = get("/api/v1/clients?per_page=50&page=1000");
    let v: serde_json::Value = serde_json::from_str(&cold.body).unwrap();
    assert_eq!(v["total"], 100_000);
    assert_eq!(v["items"].as_array().unwrap().len(), 50);
    let (_, warm_t) = get("/api/v1/clients?per_page=50&page=1999&sort=recent");
    let (filtered, filtered_t) = get("/api/v1/clients?verdict=bad&rule=R-1003&sort=requests");
    let f: serde_json::Value = serde_json::from_str(&filtered.body).unwrap();
    let want = (0..100_000u32).filter(|i| i % 4 == 0 && i % 7 == 3).count();
    assert_eq!(f["total"].as_u64().unwrap() as usize, want);
    let (page, page_t) = get("/clients?page=500");
    assert!(page.body.len() < 100_000, "a page of 50 is {} bytes", page.body.len());
    assert!(page.body.contains("page 501 of 2000"), "{}", &page.body[..2000.min(page.body.len())]);
    // after the first load the admin reads only what changed: one new verdict and one client
    // good again, announced on the change stream, show up in the next list
    let mut added = writes[1].clone();
    added.record.subject = "10.200.0.1".into();
    added.announce = true;
    let mut cleared = writes[2].clone();
    cleared.record.verdict = roost_engine::Class::Good;
    cleared.announce = true;
    store.write(&[added, cleared]).unwrap();
    // the admin re-reads at most once a second: wait for the change, bounded
    let mut changed_t = Duration::ZERO;
    wait_for(Duration::from_secs(10), "the new verdict in the list", || {
        let (changed, t) = get("/api/v1/clients?q=10.200.0.1");
        changed_t = t;
        serde_json::from_str::<serde_json::Value>(&changed.body).is_ok_and(|c| c["total"] == 1)
    });
    let (_, after_t) = get("/api/v1/clients?per_page=1");
    let (all, _) = get("/api/v1/clients?per_page=1");
    let all: serde_json::Value = serde_json::from_str(&all.body).unwrap();
    assert_eq!(all["total"], 100_000, "one more, one fewer");
    eprintln!(
        "[test] 100k verdicts: first list (load from Redis) {cold_t:?}, another page {warm_t:?}, \
         filtered {filtered_t:?}, an HTML page {page_t:?} ({} bytes); after two changes {changed_t:?}, then {after_t:?}",
        page.body.len()
    );
}

/// A GET through `roost proxy` as `client` (it trusts 127.0.0.1's X-Forwarded-For); the status.
fn via_proxy(port: u16, client: &str) -> u16 {
    request(port, "GET", "/healthz", &[("X-Forwarded-For", client)], "").status
}

/// An operator blocks a /24 nobody has seen yet and allows one address in it: proxies refuse
/// the rest of the /24 at once (no request of theirs has been scored), the router gets the /24
/// as a flowspec rule, and the allowed address takes it off the router again (an allowed client
/// is never diverted), while the proxy still refuses its neighbours.
#[test]
fn a_prefix_override_holds_at_once_in_proxies_and_routers() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (port, score_port, proxy_port, proxy_metrics, bgp_listen, bgp_port, gobgp_api) =
        (free_port(), free_port(), free_port(), free_port(), free_port(), free_port(), free_port());
    let prefix = format!("{}:", unique("ovr"));
    let topics = unique("ovr");
    let cfg = write_config(d, port, score_port, &prefix, &topics);
    let mut text = std::fs::read_to_string(&cfg).unwrap();
    text = text.replacen(
        "[proxy.challenge]",
        &format!(
            "[proxy]\nlisten = [\"127.0.0.1:{proxy_port}\"]\nupstreams = [\"127.0.0.1:{port}\"]\n\
             metrics_listen = \"127.0.0.1:{proxy_metrics}\"\ntrusted_proxies = [\"127.0.0.1/32\"]\nthreads = 1\n\
             pid_file = \"{d}/proxy.pid\"\nupgrade_sock = \"{d}/upgrade.sock\"\n\
             [bgp]\nasn = 65003\nrouter_id = \"127.0.0.4\"\nhold_time = 9\nlisten = \"127.0.0.1:{bgp_listen}\"\n\
             peers = [{{ address = \"127.0.0.1:{bgp_port}\", local_address = \"127.0.0.4\", peer_as = 65000 }}]\n\
             protect = [\"192.0.2.0/24\"]\n\
             [proxy.challenge]",
            d = d.display()
        ),
        1,
    );
    std::fs::write(&cfg, text).unwrap();
    let _router = gobgpd(d, bgp_port, gobgp_api);
    let _score = Proc::roost("roost score", &cfg, "score");
    let _admin = Proc::roost("roost admin", &cfg, "admin");
    let _proxy = Proc::roost("roost proxy", &cfg, "proxy");
    let _bgp = Proc::roost("roost bgp", &cfg, "bgp");
    wait_for(Duration::from_secs(30), "roost admin, the proxy and the BGP session", || {
        http_get(port, "/healthz").is_some()
            && metric(proxy_metrics, "roost_proxy_redis_up") == Some(1.0)
            && metric(bgp_listen, "roost_bgp_session_up") == Some(1.0)
    });
    wait_for(Duration::from_secs(20), "the proxy to pass a client (nobody is blocked yet)", || {
        via_proxy(proxy_port, "203.0.113.50") == 200
    });

    let r = login(port, "ana", "correct horse battery");
    let cookie = session_cookie(&r);
    let me: serde_json::Value =
        serde_json::from_str(&request(port, "GET", "/api/v1/me", &[("Cookie", &cookie)], "").body).unwrap();
    let csrf = me["csrf"].as_str().unwrap().to_owned();
    let post_status = |prefix: &str, action: &str, comment: &str| {
        let body = serde_json::json!({ "prefix": prefix, "action": action, "expires_in": "1h", "comment": comment });
        let r = request(
            port,
            "POST",
            "/api/v1/overrides",
            &[("Cookie", &cookie), ("Content-Type", "application/json"), ("X-CSRF-Token", &csrf)],
            &body.to_string(),
        );
        (r.status, r.body)
    };
    let post = |prefix: &str, action: &str, comment: &str| {
        let (status, body) = post_status(prefix, action, comment);
        assert_eq!(status, 201, "{body}");
    };

    let posted = std::time::Instant::now();
    post("203.0.113.0/24", "block", "hosting range sending the credential stuffing");
    // (figures, not pass/fail: how long until the proxy and the router act on it)
    wait_for(Duration::from_secs(10), "the proxy to refuse an unseen client of the blocked /24", || {
        via_proxy(proxy_port, "203.0.113.50") == 403
    });
    eprintln!("[test] prefix block → proxy refuses an unseen client in {} ms", posted.elapsed().as_millis());
    wait_for(Duration::from_secs(10), "the /24 as a flowspec rule in gobgpd", || {
        rib(gobgp_api, "ipv4-flowspec").contains("203.0.113.0/24")
    });
    eprintln!("[test] prefix block → flowspec rule in gobgpd in {} ms", posted.elapsed().as_millis());
    assert_eq!(via_proxy(proxy_port, "198.51.100.1"), 200, "outside the prefix nothing changed");
    // the error page's reference leads the admin to the override that refused the client
    let page = request(proxy_port, "GET", "/healthz", &[("X-Forwarded-For", "203.0.113.200")], "");
    assert_eq!(page.status, 403);
    let reference = page.body.split("<code>").nth(1).and_then(|s| s.split("</code>").next()).unwrap().to_owned();
    let found = request(port, "GET", &format!("/api/v1/references/{reference}"), &[("Cookie", &cookie)], "");
    assert_eq!(found.status, 200, "{}", found.body);
    let found: serde_json::Value = serde_json::from_str(&found.body).unwrap();
    assert_eq!(found["subject"], "203.0.113.0/24");
    assert_eq!(found["reasons"][0], "override by ana: hosting range sending the credential stuffing");
    let mut probe =
        roost_verdicts::Store::new(&roost_verdicts::RedisConfig { url: redis(), prefix, ..Default::default() })
            .unwrap();
    let stored = probe.get_override("203.0.113.0/24").unwrap().expect("the override in Redis");
    assert_eq!((stored.class.as_str(), stored.by.as_str()), ("bad", "ana"));

    // the operator lets one address of it through: the proxy passes it and only it, and the
    // router no longer diverts a prefix that holds an allowed client
    post("203.0.113.50", "allow", "our monitoring probe lives there");
    wait_for(Duration::from_secs(10), "the allowed address to pass", || via_proxy(proxy_port, "203.0.113.50") == 200);
    assert_eq!(via_proxy(proxy_port, "203.0.113.51"), 403, "its neighbours stay blocked");
    wait_for(Duration::from_secs(10), "the /24 to leave gobgpd", || {
        !rib(gobgp_api, "ipv4-flowspec").contains("203.0.113.0/24")
    });

    // removing the block ends it everywhere
    post("203.0.113.0/24", "remove", "range handed to a new customer");
    wait_for(Duration::from_secs(10), "the /24 to pass again", || via_proxy(proxy_port, "203.0.113.51") == 200);
    assert!(probe.get_override("203.0.113.0/24").unwrap().is_none());

    // an IPv6 client is its /64 (engine.ipv6_prefix): an override of one address covers the /64
    post("2001:db8:5:6::9", "block", "an IPv6 client");
    wait_for(Duration::from_secs(10), "the proxy to refuse the client's /64", || {
        via_proxy(proxy_port, "2001:db8:5:6:aa::1") == 403
    });
    assert_eq!(via_proxy(proxy_port, "2001:db8:5:7::1"), 200);
    assert!(probe.get_override("2001:db8:5:6::/64").unwrap().is_some());
    // an IPv4-mapped prefix names nothing anyone is judged by: refused
    let (status, body) = post_status("::ffff:203.0.113.0/120", "block", "mapped");
    assert_eq!(status, 400, "{body}");
}
