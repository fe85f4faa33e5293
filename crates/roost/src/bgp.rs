//! `roost bgp`: the flowspec controller. Follows the compacted verdicts topic (read whole, then
//! followed), turns the live verdicts into a plan (`roost_bgp::policy`) once a second or when
//! they change, and keeps one BGP session per router in step with it. /metrics, /healthz and
//! /rules (what `roost bgp show` prints) on `bgp.listen`.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use ipnetwork::IpNetwork;
use roost_bgp::policy::{self, Plan, Verdict};
use roost_bgp::session::{self, PeerState};
use roost_engine::Class;
use serde::Deserialize;

use crate::config::Config;

/// The fields of a verdicts-topic value the controller needs.
#[derive(Deserialize)]
struct Change {
    subject: IpNetwork,
    to: Class,
    reputation: f32,
    #[serde(default)]
    expires: Option<i64>,
    #[serde(default)]
    reasons: Vec<Reason>,
}

#[derive(Deserialize)]
struct Reason {
    text: String,
}

struct Shared {
    /// The current plan: sessions subscribe to it, /rules and /metrics read it.
    plan: tokio::sync::watch::Sender<Arc<Plan>>,
    peers: Vec<(String, Arc<PeerState>)>,
    source_up: AtomicBool,
    bad_records: std::sync::atomic::AtomicU64,
}

pub fn run(cfg: Config) -> anyhow::Result<()> {
    let b = Arc::new(cfg.bgp.clone());
    b.validate()?;
    anyhow::ensure!(cfg.kafka.enabled(), "roost bgp follows the verdicts topic: set kafka.brokers");
    // as `roost score` does; not fatal: with Kafka away the controller waits (and freezes)
    if let Err(e) = roost_kafka::ensure_topic(&cfg.kafka, &cfg.kafka.topics.verdicts, 1, true) {
        tracing::warn!(error = %e, "cannot make sure the verdicts topic exists; waiting for it");
    }
    let peers: Vec<(String, Arc<PeerState>)> =
        b.peers.iter().map(|p| (p.address.to_string(), Arc::new(PeerState::default()))).collect();
    let shared = Arc::new(Shared {
        plan: tokio::sync::watch::Sender::new(Arc::new(Plan::default())),
        peers,
        source_up: AtomicBool::new(false),
        bad_records: Default::default(),
    });
    let stop = Arc::new(AtomicBool::new(false));
    // the verdict source: a thread following the topic
    // a verdict should reach the routers in well under a second: the broker answers fetches at
    // once instead of waiting to fill them (librdkafka waits up to 500 ms by default)
    let mut kafka = cfg.kafka.clone();
    kafka.properties.entry("fetch.wait.max.ms".into()).or_insert_with(|| "10".into());
    let follower = {
        let (kafka, b, shared, stop) = (kafka, b.clone(), shared.clone(), stop.clone());
        std::thread::Builder::new()
            .name("roost-bgp-verdicts".into())
            .spawn(move || follow(&kafka, &b, &shared, &stop))?
    };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    rt.block_on(async {
        if b.dry_run {
            tracing::warn!("bgp.dry_run: computing the rules, announcing nothing");
        } else {
            let mut passive = Vec::new();
            for (p, (_, state)) in b.peers.iter().zip(&shared.peers) {
                let incoming = p.passive.then(|| {
                    let (tx, rx) = tokio::sync::mpsc::channel(1);
                    passive.push((p.address.ip(), tx));
                    rx
                });
                tokio::spawn(session::run(b.clone(), p.clone(), shared.plan.subscribe(), state.clone(), incoming));
            }
            if let Some(addr) = b.bgp_listen {
                tokio::spawn(async move {
                    if let Err(e) = session::listen(addr, passive).await {
                        tracing::error!(%addr, error = %e, "cannot accept BGP connections");
                    }
                });
            }
        }
        let sh = shared.clone();
        let sh2 = shared.clone();
        let app = axum::Router::new()
            .route("/healthz", axum::routing::get(|| async { "ok\n" }))
            .route("/rules", axum::routing::get(move || std::future::ready(rules_json(&sh))))
            .route("/metrics", axum::routing::get(move || std::future::ready(metrics_text(&sh2))));
        let l = tokio::net::TcpListener::bind(b.listen).await.with_context(|| format!("listening on {}", b.listen))?;
        tracing::info!(peers = b.peers.len(), listen = %b.listen, "roost bgp: running");
        let server = tokio::spawn(async move { axum::serve(l, app).await });
        crate::up::shutdown_signal().await;
        server.abort();
        anyhow::Ok(())
    })?;
    stop.store(true, Ordering::Relaxed);
    let _ = follower.join();
    Ok(())
}

fn follow(kafka: &roost_kafka::KafkaConfig, b: &roost_bgp::BgpConfig, shared: &Shared, stop: &AtomicBool) {
    let mut verdicts: HashMap<IpNetwork, Verdict> = HashMap::new();
    let mut follower = None;
    let mut last_plan = Instant::now() - Duration::from_secs(10);
    let mut dirty = true;
    while !stop.load(Ordering::Relaxed) {
        if follower.is_none() {
            match roost_kafka::Follower::new(kafka, &kafka.topics.verdicts, "roost-bgp") {
                Ok(f) => follower = Some(f),
                Err(e) => {
                    shared.source_up.store(false, Ordering::Relaxed);
                    tracing::warn!(error = %e, "verdicts topic unreachable: the announced rules stay as they are");
                    std::thread::sleep(Duration::from_secs(1));
                    continue;
                }
            }
        }
        let f = follower.as_ref().expect("set above");
        // while records come in, drain them quickly, then plan; idle, wait longer
        let wait = if dirty { Duration::from_millis(5) } else { Duration::from_millis(200) };
        match f.poll(wait) {
            Ok(Some(r)) => {
                shared.source_up.store(true, Ordering::Relaxed);
                let Some(v) = r.value.as_deref() else { continue };
                match serde_json::from_slice::<Change>(v) {
                    Ok(c) => {
                        let v = Verdict {
                            subject: c.subject,
                            class: c.to,
                            reputation: c.reputation,
                            expires: c.expires,
                            reasons: c.reasons.into_iter().map(|r| r.text).collect(),
                        };
                        if v.class == Class::Good {
                            verdicts.remove(&v.subject);
                        } else {
                            verdicts.insert(v.subject, v);
                        }
                        dirty = true;
                    }
                    Err(e) => {
                        shared.bad_records.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(error = %e, offset = r.offset, "a verdicts-topic record is not a verdict change; ignored");
                    }
                }
                continue; // drain what is there before planning
            }
            Ok(None) => shared.source_up.store(true, Ordering::Relaxed),
            Err(e) => {
                // an outage freezes the current set: nothing is withdrawn because of it
                shared.source_up.store(false, Ordering::Relaxed);
                tracing::warn!(error = %e, "reading the verdicts topic; the announced rules stay as they are");
                std::thread::sleep(Duration::from_millis(500));
                continue;
            }
        }
        // a plan once what is there was read, then on change or once a second (verdicts expire)
        if dirty || last_plan.elapsed() >= Duration::from_secs(1) {
            let p = Arc::new(policy::plan(b, verdicts.values(), roost_proxy::now_ms()));
            shared.plan.send_if_modified(|cur| {
                if **cur == *p {
                    return false;
                }
                tracing::info!(rules = p.rules.len(), refused = p.refused.len(), capped = p.capped, "flowspec plan");
                *cur = p;
                true
            });
            last_plan = Instant::now();
            dirty = false;
        }
    }
}

fn rules_json(sh: &Shared) -> axum::response::Response {
    use axum::response::IntoResponse;
    let plan = sh.plan.borrow().clone();
    let peers: Vec<serde_json::Value> = sh
        .peers
        .iter()
        .map(|(name, s)| {
            serde_json::json!({
                "peer": name,
                "established": s.established.load(Ordering::Relaxed),
                "announced": s.announced.load(Ordering::Relaxed),
            })
        })
        .collect();
    axum::Json(
        serde_json::json!({ "peers": peers, "rules": plan.rules, "refused": plan.refused, "capped": plan.capped }),
    )
    .into_response()
}

fn metrics_text(sh: &Shared) -> String {
    use std::fmt::Write;
    let plan = sh.plan.borrow().clone();
    let mut out = String::new();
    let _ = writeln!(out, "# TYPE roost_bgp_session_up gauge");
    for (p, s) in &sh.peers {
        let _ =
            writeln!(out, "roost_bgp_session_up{{peer=\"{p}\"}} {}", u8::from(s.established.load(Ordering::Relaxed)));
    }
    let _ = writeln!(out, "# TYPE roost_bgp_rules_announced gauge");
    for (p, s) in &sh.peers {
        let _ = writeln!(out, "roost_bgp_rules_announced{{peer=\"{p}\"}} {}", s.announced.load(Ordering::Relaxed));
    }
    type Read = fn(&PeerState) -> u64;
    let counters: [(&str, Read); 4] = [
        ("announces", |s: &PeerState| s.announces.load(Ordering::Relaxed)),
        ("withdraws", |s: &PeerState| s.withdraws.load(Ordering::Relaxed)),
        ("session_resets", |s: &PeerState| s.resets.load(Ordering::Relaxed)),
        ("updates_received", |s: &PeerState| s.updates_received.load(Ordering::Relaxed)),
    ];
    for (name, f) in counters {
        let _ = writeln!(out, "# TYPE roost_bgp_{name} counter");
        for (p, s) in &sh.peers {
            let _ = writeln!(out, "roost_bgp_{name}_total{{peer=\"{p}\"}} {}", f(s));
        }
    }
    let _ = writeln!(out, "# TYPE roost_bgp_rules_planned gauge\nroost_bgp_rules_planned {}", plan.rules.len());
    let _ = writeln!(out, "# TYPE roost_bgp_rules_capped gauge\nroost_bgp_rules_capped {}", plan.capped);
    let mut refused: HashMap<&str, u64> = HashMap::new();
    for (_, why) in &plan.refused {
        *refused.entry(policy::refusal_kind(why)).or_default() += 1;
    }
    let _ = writeln!(out, "# TYPE roost_bgp_rules_refused gauge");
    for (k, n) in refused {
        let _ = writeln!(out, "roost_bgp_rules_refused{{reason=\"{k}\"}} {n}");
    }
    let _ = writeln!(
        out,
        "# TYPE roost_bgp_verdict_source_up gauge\nroost_bgp_verdict_source_up {}",
        u8::from(sh.source_up.load(Ordering::Relaxed))
    );
    let _ = writeln!(
        out,
        "# TYPE roost_bgp_bad_records counter\nroost_bgp_bad_records_total {}",
        sh.bad_records.load(Ordering::Relaxed)
    );
    out
}

/// `roost bgp show`: the running controller's rules, with the verdict and reasons of each.
pub fn show(cfg: &Config) -> anyhow::Result<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(cfg.bgp.listen)
        .with_context(|| format!("is roost bgp running? nothing on {}", cfg.bgp.listen))?;
    write!(s, "GET /rules HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
    let mut body = String::new();
    s.read_to_string(&mut body)?;
    let json = body.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    let v: serde_json::Value = serde_json::from_str(json).context("reading /rules")?;
    let mut out = String::new();
    for p in v["peers"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "peer {}: {}, {} rules announced\n",
            p["peer"].as_str().unwrap_or("?"),
            if p["established"].as_bool() == Some(true) { "established" } else { "down" },
            p["announced"]
        ));
    }
    for r in v["rules"].as_array().into_iter().flatten() {
        let rule = &r["rule"];
        out.push_str(&format!(
            "{} -> {} {}: {} (reputation {}) {}\n",
            rule["source"].as_str().unwrap_or("?"),
            rule["destination"].as_str().unwrap_or("any"),
            rule["action"],
            r["class"].as_str().unwrap_or("?"),
            r["reputation"],
            r["reasons"]
                .as_array()
                .map(|a| a.iter().filter_map(|x| x.as_str()).collect::<Vec<_>>().join("; "))
                .unwrap_or_default()
        ));
    }
    for x in v["refused"].as_array().into_iter().flatten() {
        out.push_str(&format!("refused {}: {}\n", x[0].as_str().unwrap_or("?"), x[1].as_str().unwrap_or("?")));
    }
    Ok(out)
}
