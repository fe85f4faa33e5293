//! The admin under attack and failure, against a real `roost admin` (Redis and the broker from
//! scripts/services.sh): a burst of concurrent wrong passwords gets at most the configured
//! number of password checks and the rest 429, memory stays bounded, and a stranger cannot lock
//! out an operator who signs in from their own address; an override that cannot be put in force
//! leaves a failed entry in the audit log.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use common::{Proc, free_port, hash_password, http_get, kafka, redis, request, unique, wait_for};

/// A metric that must be there: a missing one fails the test rather than reading as 0.
fn metric(port: u16, name: &str) -> f64 {
    common::metric(port, name).unwrap_or_else(|| panic!("{name} missing from /metrics"))
}

fn sign_in(port: u16, from: &str, name: &str, password: &str) -> u16 {
    request(
        port,
        "POST",
        "/login",
        &[("Content-Type", "application/x-www-form-urlencoded"), ("X-Forwarded-For", from)],
        &format!("name={name}&password={password}"),
    )
    .status
}

/// `roost admin` with one operator, `ana` (password `right`), Redis under `prefix`, the test
/// process as its trusted proxy (so `X-Forwarded-For` says who signs in), the sign-in limits
/// spelled out, and `config` added to the file; ready when this returns, on the port returned.
fn admin(dir: &Path, prefix: &str, config: &str) -> (Proc, u16) {
    let port = free_port();
    let users = dir.join("users.toml");
    std::fs::write(
        &users,
        format!("[[user]]\nname = \"ana\"\nrole = \"operator\"\npassword_hash = \"{}\"\n", hash_password("right")),
    )
    .unwrap();
    let cfg = dir.join("roost.toml");
    std::fs::write(
        &cfg,
        format!(
            "{config}[redis]\nurl = \"{}\"\nprefix = \"{prefix}\"\n\
             [admin]\nlisten = \"127.0.0.1:{port}\"\nusers_file = \"{}\"\ncookie_secure = false\n\
             trusted_proxies = [\"127.0.0.1/32\"]\n[admin.sign_in]\nmax_failures = 5\nhash_workers = 2\nhash_queue = 8\n",
            redis(),
            users.display()
        ),
    )
    .unwrap();
    let admin = Proc::roost("roost admin", &cfg, "admin");
    wait_for(Duration::from_secs(30), "roost admin", || http_get(port, "/healthz").is_some());
    (admin, port)
}

#[test]
fn a_burst_of_wrong_passwords_is_bounded_and_cannot_lock_the_operator_out() {
    let dir = tempfile::tempdir().unwrap();
    let t = unique("signin");
    let (admin, port) = admin(
        dir.path(),
        &format!("{t}:"),
        &format!(
            "[kafka]\nbrokers = \"{}\"\n[kafka.topics]\nverdicts = \"{t}-verdicts\"\noverrides = \"{t}-overrides\"\naudit = \"{t}-audit\"\n",
            kafka()
        ),
    );
    let rss_before = admin.rss_kib();

    // 200 wrong passwords at once, for one user from one address (behind the trusted proxy)
    let peak = Arc::new(AtomicU64::new(rss_before));
    let samples = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (peak, samples, done, pid) = (peak.clone(), samples.clone(), done.clone(), admin.pid());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
                if let Some(kib) = s
                    .lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                {
                    peak.fetch_max(kib, Ordering::Relaxed);
                    samples.fetch_add(1, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    let burst: Vec<_> = (0..200)
        .map(|i| std::thread::spawn(move || sign_in(port, "198.51.100.66", "ana", &format!("guess{i}"))))
        .collect();
    let statuses: Vec<u16> = burst.into_iter().map(|t| t.join().unwrap()).collect();
    let checks = metric(port, "roost_admin_password_checks_total");
    // and 100 at once from as many addresses, each for a name of its own: none is limited, so
    // they meet the bounded pool of password checks, and what does not fit is told 429 at once
    let spread: Vec<_> = (0..100u8)
        .map(|i| std::thread::spawn(move || sign_in(port, &format!("203.0.113.{i}"), &format!("u{i}"), "x")))
        .collect();
    let spread: Vec<u16> = spread.into_iter().map(|t| t.join().unwrap()).collect();
    done.store(true, Ordering::Relaxed);
    watcher.join().unwrap();
    let busy = spread.iter().filter(|s| **s == 429).count();
    eprintln!("[test] 100 at once from 100 addresses: {busy} told 429 (busy)");
    assert!(spread.iter().all(|s| *s == 401 || *s == 429), "{spread:?}");
    assert!(busy >= 1 && metric(port, "roost_admin_sign_ins_total{outcome=\"busy\"}") >= 1.0);
    let wrong = statuses.iter().filter(|s| **s == 401).count();
    let refused = statuses.iter().filter(|s| **s == 429).count();
    eprintln!("[test] burst of 200: {wrong} checked and wrong, {refused} refused with 429");
    assert_eq!(wrong + refused, 200, "{statuses:?}");
    assert!((1..=5).contains(&wrong), "at most max_failures guesses are checked: {wrong}");
    assert!(checks <= 5.0, "{checks} argon2 runs for a limit of 5");
    // a watcher that could not read the memory would report no growth: it must have read it
    assert!(samples.load(Ordering::Relaxed) >= 10, "the admin's memory was not read during the burst");
    let grew_mib = (peak.load(Ordering::Relaxed) - rss_before) / 1024;
    eprintln!("[test] the admin's RSS grew by {grew_mib} MiB at most during the burst");
    assert!(grew_mib < 150, "two password checks at a time hold ~40 MiB; grew {grew_mib} MiB");

    // the stranger's address may not try again, not even with the right password…
    assert_eq!(sign_in(port, "198.51.100.66", "ana", "right"), 429);
    // …but the operator, from their own address, signs in
    assert_eq!(sign_in(port, "192.0.2.10", "ana", "right"), 303);
    assert!(metric(port, "roost_admin_sign_ins_total{outcome=\"limited\"}") >= 190.0);
}

#[test]
fn an_override_that_cannot_take_effect_is_on_record_as_failed() {
    let dir = tempfile::tempdir().unwrap();
    // Redis for the audit log, and no broker: overrides cannot reach the scorers
    let prefix = format!("{}:", unique("auditfail"));
    let (_admin, port) = admin(dir.path(), &prefix, "");
    let r = common::login(port, "ana", "right");
    assert_eq!(r.status, 303);
    let cookie = common::session_cookie(&r);
    let me: serde_json::Value =
        serde_json::from_str(&request(port, "GET", "/api/v1/me", &[("Cookie", &cookie)], "").body).unwrap();
    let csrf = me["csrf"].as_str().expect("a CSRF token").to_owned();
    // a duration past what time can hold is refused, not wrapped into the past
    let huge = r#"{"prefix":"203.0.113.9","action":"block","expires_in":"500000000000y","comment":"forever"}"#;
    let headers = [("Cookie", cookie.as_str()), ("X-CSRF-Token", csrf.as_str()), ("Content-Type", "application/json")];
    let r = request(port, "POST", "/api/v1/overrides", &headers, huge);
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("too far away"), "{}", r.body);
    let body = r#"{"prefix":"203.0.113.9","action":"block","expires_in":"1h","comment":"scanner"}"#;
    let r = request(
        port,
        "POST",
        "/api/v1/overrides",
        &[("Cookie", &cookie), ("X-CSRF-Token", &csrf), ("Content-Type", "application/json")],
        body,
    );
    assert_eq!(r.status, 503, "{}", r.body);
    let audit = request(port, "GET", "/api/v1/audit?limit=10", &[("Cookie", &cookie)], "");
    let entries: Vec<serde_json::Value> = serde_json::from_str(&audit.body).unwrap();
    let actions: Vec<&str> = entries.iter().filter_map(|e| e["action"].as_str()).collect();
    assert_eq!(actions, ["override_failed", "override"], "{}", audit.body);
    assert!(entries[0]["comment"].as_str().unwrap().contains("not in force"), "{}", audit.body);
    assert!(common::metric(port, "roost_admin_overrides_total{action=\"failed\"}").is_some_and(|v| v == 1.0));

    // a record in the audit stream that is not an entry is kept and shown, and counted
    let mut store =
        roost_verdicts::Store::new(&roost_verdicts::RedisConfig { url: redis(), prefix, ..Default::default() })
            .unwrap();
    store.append_audit("{\"by\": \"a half-written entr").unwrap();
    let audit = request(port, "GET", "/api/v1/audit?limit=10", &[("Cookie", &cookie)], "");
    let entries: Vec<serde_json::Value> = serde_json::from_str(&audit.body).unwrap();
    assert_eq!(entries.len(), 3, "{}", audit.body);
    assert_eq!(entries[0]["action"], "unreadable", "{}", audit.body);
    assert!(entries[0]["comment"].as_str().unwrap().contains("a half-written entr"), "{}", audit.body);
    assert!(common::metric(port, "roost_admin_audit_unreadable_reads_total").is_some_and(|v| v >= 1.0));
}
