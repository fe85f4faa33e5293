//! Alerting: the rules, tests and routing in deploy/ check out with the real tools (promtool,
//! amtool), and end to end: a real Prometheus scrapes a running `roost up` while a generated log
//! replays normal traffic and then an attack; `RoostAverageReputationDrop` stays quiet on the
//! normal traffic, goes pending then firing during the attack, in Prometheus and in roost's own
//! signal; Alertmanager gets both and routes the page; the dashboard's queries all run.

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Proc, free_port, http_get};

fn clf(ip: &str, method: &str, path: &str, status: u16, now: u64) -> String {
    common::clf_line(ip, method, path, status, "Mozilla/5.0 (X11; Linux x86_64)", now)
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    text
}

#[test]
fn the_shipped_rules_routing_and_dashboard_check_out() {
    let r = repo();
    let d = r.join("deploy");
    let text = run_ok(Command::new("promtool").arg("check").arg("rules").arg(d.join("prometheus/roost.rules.yml")));
    assert!(text.contains("SUCCESS"), "{text}");
    // every alert, firing and not firing (the tests say so per alert)
    let text = run_ok(Command::new("promtool").current_dir(d.join("prometheus/tests")).args([
        "test",
        "rules",
        "roost.rules.test.yml",
    ]));
    assert!(text.contains("SUCCESS"), "{text}");
    let rules = std::fs::read_to_string(d.join("prometheus/roost.rules.yml")).unwrap();
    let tests = std::fs::read_to_string(d.join("prometheus/tests/roost.rules.test.yml")).unwrap();
    for alert in rules.lines().filter_map(|l| l.trim().strip_prefix("- alert: ")) {
        let cases = tests.matches(&format!("alertname: {alert}\n")).count();
        assert!(cases >= 2, "{alert} needs a firing and a not-firing test, has {cases}");
        assert!(d.join(format!("runbooks/{alert}.md")).exists(), "{alert} has no runbook");
    }
    run_ok(Command::new("promtool").arg("check").arg("config").arg(d.join("prometheus/prometheus.yml")));
    run_ok(Command::new("amtool").arg("check-config").arg(d.join("alertmanager/alertmanager.yml")));
    let dash: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("grafana/roost.json")).unwrap()).unwrap();
    assert!(!dashboard_queries(&dash).is_empty());
}

fn dashboard_queries(dash: &serde_json::Value) -> Vec<String> {
    let mut out = Vec::new();
    for p in dash["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().into_iter().flatten() {
            out.push(t["expr"].as_str().unwrap().to_owned());
        }
    }
    out
}

// ---- end to end -----------------------------------------------------------------------------

/// Collects what is POSTed to it, by path.
struct Hooks {
    got: Arc<Mutex<Vec<(String, serde_json::Value)>>>,
    port: u16,
}

impl Hooks {
    fn start() -> Hooks {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let got = Arc::new(Mutex::new(Vec::new()));
        let g = got.clone();
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { continue };
                let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                let mut r = BufReader::new(s.try_clone().unwrap());
                let mut line = String::new();
                if r.read_line(&mut line).is_err() {
                    continue;
                }
                let path = line.split(' ').nth(1).unwrap_or("").to_owned();
                let mut len = 0usize;
                loop {
                    let mut h = String::new();
                    if r.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                        break;
                    }
                    if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                        len = v.trim().parse().unwrap_or(0);
                    }
                }
                let mut body = vec![0; len.min(1 << 20)];
                if r.read_exact(&mut body).is_ok()
                    && let Ok(v) = serde_json::from_slice(&body)
                {
                    g.lock().unwrap().push((path, v));
                }
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            }
        });
        Hooks { got, port }
    }

    fn received(&self, path: &str, alert: &str) -> Vec<serde_json::Value> {
        self.got
            .lock()
            .unwrap()
            .iter()
            .filter(|(p, v)| {
                p == path && v["alerts"].as_array().into_iter().flatten().any(|a| a["labels"]["alertname"] == alert)
            })
            .map(|(_, v)| v.clone())
            .collect()
    }
}

fn query(port: u16, q: &str) -> Option<serde_json::Value> {
    let enc = percent_encoding::utf8_percent_encode(q, percent_encoding::NON_ALPHANUMERIC);
    let body = http_get(port, &format!("/api/v1/query?query={enc}"))?;
    serde_json::from_str(&body).ok()
}

/// The states Prometheus holds the drop alert in now (`pending`, `firing`).
fn prometheus_states(port: u16) -> BTreeSet<String> {
    let Some(v) = http_get(port, "/api/v1/alerts").and_then(|b| serde_json::from_str::<serde_json::Value>(&b).ok())
    else {
        return BTreeSet::new();
    };
    v["data"]["alerts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|a| a["labels"]["alertname"] == "RoostAverageReputationDrop")
        .filter_map(|a| a["state"].as_str().map(str::to_owned))
        .collect()
}

fn roost_state(port: u16) -> String {
    http_get(port, "/api/v1/alerts")
        .and_then(|b| serde_json::from_str::<serde_json::Value>(&b).ok())
        .and_then(|v| v[0]["status"]["state"].as_str().map(str::to_owned))
        .unwrap_or_default()
}

const NORMAL: u8 = 1;
const ATTACK: u8 = 2;
const STOP: u8 = 3;

/// Appends traffic to `log` every 100 ms with the current time: 150 requests/s from 120 readers
/// (pages, assets, the odd 404), and in the attack phase 300 more from 40 attackers (login
/// brute force and a path scan).
fn traffic(log: PathBuf, phase: Arc<AtomicU8>) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&log).unwrap();
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut rnd = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        const PROBES: [&str; 8] = [
            "/.env",
            "/.git/config",
            "/phpmyadmin/",
            "/backup.sql",
            "/admin.php",
            "/wp-config.php.bak",
            "/server-status",
            "/actuator/env",
        ];
        let mut lines = 0u64;
        let deadline = Instant::now() + Duration::from_secs(300);
        while Instant::now() < deadline {
            let p = phase.load(Ordering::Relaxed);
            if p == STOP {
                break;
            }
            let now = common::unix_now();
            let mut batch = String::new();
            for _ in 0..15 {
                let c = rnd(120);
                let ip = format!("198.51.100.{}", c + 1);
                let (path, status) = match rnd(100) {
                    0 => ("/no-such-page".to_owned(), 404),
                    1..=30 => (format!("/static/app-{}.css", rnd(5)), 200),
                    _ => (format!("/articles/{}", rnd(500)), 200),
                };
                batch.push_str(&clf(&ip, "GET", &path, status, now));
            }
            if p == ATTACK {
                for _ in 0..30 {
                    let ip = format!("203.0.113.{}", rnd(40) + 1);
                    if rnd(2) == 0 {
                        batch.push_str(&clf(&ip, "POST", "/wp-login.php", 401, now));
                    } else {
                        batch.push_str(&clf(&ip, "GET", PROBES[rnd(8) as usize], 404, now));
                    }
                }
            }
            lines += batch.lines().count() as u64;
            f.write_all(batch.as_bytes()).unwrap();
            std::thread::sleep(Duration::from_millis(100));
        }
        lines
    })
}

#[test]
fn prometheus_pages_on_an_attack_and_not_on_normal_traffic() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (up_port, prom_port, am_port) = (free_port(), free_port(), free_port());
    let hooks = Hooks::start();

    // Alertmanager with the shipped routing, its receivers pointed at the test's hooks
    let am_cfg = std::fs::read_to_string(repo().join("deploy/alertmanager/alertmanager.yml"))
        .unwrap()
        .replace("http://127.0.0.1:9099", &format!("http://127.0.0.1:{}", hooks.port));
    std::fs::write(d.join("alertmanager.yml"), am_cfg).unwrap();
    let mut am = Command::new("prometheus-alertmanager");
    am.arg(format!("--config.file={}", d.join("alertmanager.yml").display()))
        .arg(format!("--storage.path={}", d.join("am").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{am_port}"))
        .arg("--cluster.listen-address=");
    let _am = Proc::spawn("alertmanager", am);

    // roost up on the log, its own drop signal on the same short windows as the rules below
    let log = d.join("access.log");
    std::fs::write(&log, "").unwrap();
    std::fs::write(
        d.join("roost.toml"),
        format!(
            "[[logs]]\npath = \"{}\"\nformat = \"combined\"\n\n[up]\nlisten = \"127.0.0.1:{up_port}\"\nproxy = false\nadmin = false\npoll_interval = \"100ms\"\n\n\
             [alert]\nsample_interval = \"1s\"\nresend = \"2s\"\n[alert.drop]\nshort = \"10s\"\nlong = \"3m\"\nfor = \"5s\"\n\n\
             [[alert.receivers]]\nurl = \"http://127.0.0.1:{am_port}\"\n\n\
             [[alert.receivers]]\nurl = \"http://127.0.0.1:{}/roost\"\nformat = \"webhook\"\n",
            log.display(),
            hooks.port
        ),
    )
    .unwrap();
    let _up = Proc::roost("roost up", &d.join("roost.toml"), "up");

    // Prometheus with the shipped rules, their windows shortened: 5m → 10s, 6h → 3m, for 5s
    common::write_short_rules(d);
    let _prom = common::prometheus(
        d,
        prom_port,
        &format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n  external_labels:\n    roost_admin_url: http://127.0.0.1:{up_port}\n\
             rule_files: [roost.rules.yml]\n\
             alerting:\n  alertmanagers:\n    - static_configs: [{{ targets: ['127.0.0.1:{am_port}'] }}]\n\
             scrape_configs:\n  - job_name: roost-up\n    static_configs: [{{ targets: ['127.0.0.1:{up_port}'] }}]\n"
        ),
    );

    common::wait_for(Duration::from_secs(30), "roost up, Prometheus and Alertmanager", || {
        http_get(up_port, "/healthz").is_some()
            && http_get(prom_port, "/-/ready").is_some_and(|b| b.contains("Ready"))
            && http_get(am_port, "/-/ready").is_some()
    });

    // normal traffic for 75 s: the baseline is learned after ~45 s, so the last half-minute
    // is judged, and nothing may fire
    let phase = Arc::new(AtomicU8::new(NORMAL));
    let writer = traffic(log.clone(), phase.clone());
    let normal_until = Instant::now() + Duration::from_secs(75);
    let mut judged = false;
    while Instant::now() < normal_until {
        let states = prometheus_states(prom_port);
        assert!(states.is_empty(), "the drop alert is {states:?} on normal traffic");
        let ours = roost_state(up_port);
        assert!(ours == "inactive" || ours.is_empty(), "roost's own drop signal is {ours} on normal traffic");
        if let Some(v) = query(prom_port, "roost:reputation_mean:by_request:baseline_windows >= 4") {
            judged |= !v["data"]["result"].as_array().unwrap().is_empty();
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(judged, "the baseline was never long enough to judge normal traffic");
    let normal_mean = query(prom_port, "roost:reputation_mean:by_request").unwrap();
    eprintln!("[test] mean reputation on normal traffic: {}", normal_mean["data"]["result"]);

    // the attack: pending, then firing, in Prometheus and in roost up
    phase.store(ATTACK, Ordering::Relaxed);
    let (mut prom_seen, mut ours_seen) = (Vec::<String>::new(), Vec::<String>::new());
    let attack_until = Instant::now() + Duration::from_secs(90);
    while Instant::now() < attack_until {
        for s in prometheus_states(prom_port) {
            if prom_seen.last() != Some(&s) {
                prom_seen.push(s);
            }
        }
        let ours = roost_state(up_port);
        if ours_seen.last() != Some(&ours) {
            ours_seen.push(ours);
        }
        let delivered = !hooks.received("/oncall", "RoostAverageReputationDrop").is_empty();
        if prom_seen.iter().any(|s| s == "firing") && ours_seen.iter().any(|s| s == "firing") && delivered {
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    eprintln!("[test] Prometheus went {prom_seen:?}, roost up went {ours_seen:?}");
    let first = |v: &[String], s: &str| v.iter().position(|x| x == s);
    assert!(first(&prom_seen, "pending").is_some(), "Prometheus never held the alert pending: {prom_seen:?}");
    assert!(first(&prom_seen, "pending") < first(&prom_seen, "firing"), "pending, then firing: {prom_seen:?}");
    assert!(first(&ours_seen, "pending").is_some(), "roost never held its alert pending: {ours_seen:?}");
    assert!(first(&ours_seen, "pending") < first(&ours_seen, "firing"), "pending, then firing: {ours_seen:?}");

    // Alertmanager has both: Prometheus' (with the link to the evidence) and roost up's own
    let am_alerts: serde_json::Value =
        serde_json::from_str(&http_get(am_port, "/api/v2/alerts").unwrap()).expect("Alertmanager's alerts");
    let drops: Vec<&serde_json::Value> = am_alerts
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["labels"]["alertname"] == "RoostAverageReputationDrop")
        .collect();
    assert!(
        drops.iter().any(|a| a["labels"]["source"] == "roost-up"),
        "roost up's alert reached Alertmanager: {drops:?}"
    );
    let from_prom = drops.iter().find(|a| a["labels"]["source"].is_null()).expect("Prometheus' alert in Alertmanager");
    assert_eq!(
        from_prom["annotations"]["admin_url"],
        format!("http://127.0.0.1:{up_port}/api/v1/clients?verdict=bad").as_str()
    );
    assert!(from_prom["annotations"]["runbook_url"].as_str().unwrap().ends_with("RoostAverageReputationDrop.md"));
    // routed as a page
    let paged = hooks.received("/oncall", "RoostAverageReputationDrop");
    assert!(!paged.is_empty(), "the shipped routing pages on-call");
    // roost up's webhook, in Alertmanager's webhook shape
    let direct = hooks.received("/roost", "RoostAverageReputationDrop");
    let hook = direct.first().expect("roost up POSTed its webhook");
    assert_eq!(hook["version"], "4");
    assert_eq!(hook["status"], "firing");
    assert!(hook["alerts"][0]["annotations"]["summary"].as_str().unwrap().contains("fell to"));

    // the attackers are the ones flagged, the readers are not
    let bad = http_get(up_port, "/api/v1/clients?verdict=bad&limit=1000").unwrap();
    assert!(bad.contains("203.0.113."), "attackers flagged: {bad}");
    assert!(!bad.contains("198.51.100."), "no reader flagged: {bad}");

    // every query of the shipped dashboard runs against this Prometheus
    let dash: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(repo().join("deploy/grafana/roost.json")).unwrap()).unwrap();
    for q in dashboard_queries(&dash) {
        let v = query(prom_port, &q).unwrap_or_else(|| panic!("no answer to {q}"));
        assert_eq!(v["status"], "success", "dashboard query {q}: {v}");
    }
    for name in
        ["roost_reputation_clients", "roost_reputation_weight", "roost_evidence_total", "roost_verdict_changes_total"]
    {
        let v = query(prom_port, name).unwrap();
        assert!(!v["data"]["result"].as_array().unwrap().is_empty(), "{name} is scraped: {v}");
    }

    phase.store(STOP, Ordering::Relaxed);
    let lines = writer.join().unwrap();
    eprintln!("[test] {lines} log lines written");
}
