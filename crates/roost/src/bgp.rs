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

pub(crate) struct Shared {
    /// The current plan: sessions subscribe to it, /rules and /metrics read it.
    plan: tokio::sync::watch::Sender<Arc<Plan>>,
    peers: Vec<(String, Arc<PeerState>)>,
    source_up: AtomicBool,
    bad_records: std::sync::atomic::AtomicU64,
}

impl Shared {
    fn new(b: &roost_bgp::BgpConfig) -> Arc<Shared> {
        let peers = b.peers.iter().map(|p| (p.address.to_string(), Arc::new(PeerState::default()))).collect();
        Arc::new(Shared {
            plan: tokio::sync::watch::Sender::new(Arc::new(Plan::default())),
            peers,
            source_up: AtomicBool::new(false),
            bad_records: Default::default(),
        })
    }
}

/// What the planner is told: a client's verdict changed, or an operator's override on a prefix
/// (`None`: removed).
pub(crate) enum Input {
    Verdict(Verdict),
    Override(IpNetwork, Option<roost_engine::Override>),
}

/// The live verdicts and overrides, and when they were last planned: the one place both sources
/// (the topics, `roost up`'s engine and admin) feed.
struct Planner {
    verdicts: HashMap<IpNetwork, Verdict>,
    overrides: HashMap<IpNetwork, policy::OverrideRule>,
    last_plan: Instant,
    dirty: bool,
}

impl Planner {
    fn new() -> Planner {
        Planner {
            verdicts: HashMap::new(),
            overrides: HashMap::new(),
            last_plan: Instant::now() - Duration::from_secs(10),
            dirty: true,
        }
    }

    fn input(&mut self, i: Input) {
        match i {
            Input::Verdict(v) => self.apply(v),
            Input::Override(net, ov) => {
                match ov {
                    Some(o) => self.overrides.insert(
                        net,
                        policy::OverrideRule {
                            prefix: net,
                            class: o.class,
                            until: o.until.map(|u| u.0),
                            reason: format!("override by {}: {}", o.by, o.comment),
                        },
                    ),
                    None => self.overrides.remove(&net),
                };
                self.dirty = true;
            }
        }
    }

    fn apply(&mut self, v: Verdict) {
        if v.class == Class::Good {
            self.verdicts.remove(&v.subject);
        } else {
            self.verdicts.insert(v.subject, v);
        }
        self.dirty = true;
    }

    /// A plan once what is there was read, then on change or once a second (verdicts expire).
    fn maybe_plan(&mut self, b: &roost_bgp::BgpConfig, shared: &Shared) {
        if !(self.dirty || self.last_plan.elapsed() >= Duration::from_secs(1)) {
            return;
        }
        let overrides: Vec<policy::OverrideRule> = self.overrides.values().cloned().collect();
        let p = Arc::new(policy::plan_with_overrides(b, self.verdicts.values(), &overrides, roost_proxy::now_ms()));
        shared.plan.send_if_modified(|cur| {
            if **cur == *p {
                return false;
            }
            tracing::info!(rules = p.rules.len(), refused = p.refused.len(), capped = p.capped, "flowspec plan");
            *cur = p;
            true
        });
        self.last_plan = Instant::now();
        self.dirty = false;
    }
}

/// The controller inside `roost up`: verdicts come from the engine over a channel (see
/// [`verdict_of`]), overrides from the admin; sessions and the /rules, /metrics listener run on
/// `rt`. Returns the sender both go to.
pub(crate) fn start_in_process(
    cfg: &Config,
    rt: &tokio::runtime::Runtime,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<(std::sync::mpsc::Sender<Input>, std::thread::JoinHandle<()>)> {
    let b = Arc::new(cfg.bgp.clone());
    b.validate()?;
    let shared = Shared::new(&b);
    shared.source_up.store(true, Ordering::Relaxed);
    let (tx, rx) = std::sync::mpsc::channel::<Input>();
    let planner = {
        let (b, shared) = (b.clone(), shared.clone());
        std::thread::Builder::new().name("roost-bgp-plan".into()).spawn(move || {
            let mut planner = Planner::new();
            while !stop.load(Ordering::Relaxed) {
                match rx.recv_timeout(Duration::from_millis(200)) {
                    Ok(i) => {
                        planner.input(i);
                        while let Ok(i) = rx.try_recv() {
                            planner.input(i);
                        }
                    }
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                    Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
                }
                planner.maybe_plan(&b, &shared);
            }
        })?
    };
    let l = rt.block_on(bind(&b))?;
    let _guard = rt.enter();
    start_sessions(&b, &shared);
    rt.spawn(serve_http(l, shared.clone()));
    tracing::info!(peers = b.peers.len(), listen = %b.listen, "flowspec controller running in process");
    Ok((tx, planner))
}

/// A verdict change from the engine as the controller's verdict.
pub(crate) fn verdict_of(c: &roost_engine::VerdictChange) -> Verdict {
    Verdict {
        subject: c.subject,
        class: c.to,
        reputation: c.reputation,
        expires: c.expires.map(|t| t.millis()),
        reasons: c.reasons.iter().map(|r| r.text.clone()).collect(),
    }
}

/// One session task per router (and the listener for passive ones); must run inside a runtime.
fn start_sessions(b: &Arc<roost_bgp::BgpConfig>, shared: &Arc<Shared>) {
    if b.dry_run {
        tracing::warn!("bgp.dry_run: computing the rules, announcing nothing");
        return;
    }
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

async fn bind(b: &roost_bgp::BgpConfig) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(b.listen).await.with_context(|| format!("listening on {}", b.listen))
}

/// /healthz, /rules (what `roost bgp show` prints) and /metrics.
async fn serve_http(l: tokio::net::TcpListener, shared: Arc<Shared>) {
    let sh = shared.clone();
    let app = axum::Router::new()
        .route("/healthz", axum::routing::get(|| async { "ok\n" }))
        .route("/rules", axum::routing::get(move || std::future::ready(rules_json(&sh))))
        .route("/metrics", axum::routing::get(move || std::future::ready(metrics_text(&shared))));
    if let Err(e) = axum::serve(l, app).await {
        tracing::error!(error = %e, "roost bgp: serving /rules and /metrics stopped");
    }
}

pub fn run(cfg: Config) -> anyhow::Result<()> {
    let b = Arc::new(cfg.bgp.clone());
    b.validate()?;
    anyhow::ensure!(cfg.kafka.enabled(), "roost bgp follows the verdicts topic: set kafka.brokers");
    // as `roost score` does; not fatal: with Kafka away the controller waits (and freezes)
    if let Err(e) = roost_kafka::ensure_topic(&cfg.kafka, &cfg.kafka.topics.verdicts, 1, true) {
        tracing::warn!(error = %e, "cannot make sure the verdicts topic exists; waiting for it");
    }
    let shared = Shared::new(&b);
    let stop = Arc::new(AtomicBool::new(false));
    // the verdict source: a thread following the topic
    // a verdict should reach the routers in well under a second: the broker answers fetches at
    // once instead of waiting to fill them (librdkafka waits up to 500 ms by default)
    let mut kafka = cfg.kafka.clone();
    kafka.properties.entry("fetch.wait.max.ms".into()).or_insert_with(|| "10".into());
    // operators' overrides: the topic read whole, then followed, as every scorer does
    let (otx, orx) = std::sync::mpsc::channel();
    let overrides = roost_scorer::overrides::follow(kafka.clone(), otx, stop.clone());
    let follower = {
        let (kafka, b, shared, stop) = (kafka, b.clone(), shared.clone(), stop.clone());
        std::thread::Builder::new()
            .name("roost-bgp-verdicts".into())
            .spawn(move || follow(&kafka, &b, &shared, &stop, &orx))?
    };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    rt.block_on(async {
        let l = bind(&b).await?;
        start_sessions(&b, &shared);
        tracing::info!(peers = b.peers.len(), listen = %b.listen, "roost bgp: running");
        let server = tokio::spawn(serve_http(l, shared.clone()));
        crate::up::shutdown_signal().await;
        server.abort();
        anyhow::Ok(())
    })?;
    stop.store(true, Ordering::Relaxed);
    let _ = follower.join();
    let _ = overrides.join();
    Ok(())
}

fn follow(
    kafka: &roost_kafka::KafkaConfig,
    b: &roost_bgp::BgpConfig,
    shared: &Shared,
    stop: &AtomicBool,
    overrides: &std::sync::mpsc::Receiver<(IpNetwork, Option<roost_engine::Override>)>,
) {
    let mut planner = Planner::new();
    let mut follower = None;
    while !stop.load(Ordering::Relaxed) {
        while let Ok((net, ov)) = overrides.try_recv() {
            tracing::info!(prefix = %net, set = ov.is_some(), "override");
            planner.input(Input::Override(net, ov));
        }
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
        let wait = if planner.dirty { Duration::from_millis(5) } else { Duration::from_millis(200) };
        match f.poll(wait) {
            Ok(Some(r)) => {
                shared.source_up.store(true, Ordering::Relaxed);
                let Some(v) = r.value.as_deref() else { continue };
                match serde_json::from_slice::<Change>(v) {
                    Ok(c) => planner.apply(Verdict {
                        subject: c.subject,
                        class: c.to,
                        reputation: c.reputation,
                        expires: c.expires,
                        reasons: c.reasons.into_iter().map(|r| r.text).collect(),
                    }),
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
        planner.maybe_plan(b, shared);
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
    let counters: [(&str, Read); 5] = [
        ("announces", |s: &PeerState| s.announces.load(Ordering::Relaxed)),
        ("withdraws", |s: &PeerState| s.withdraws.load(Ordering::Relaxed)),
        ("session_resets", |s: &PeerState| s.resets.load(Ordering::Relaxed)),
        ("updates_received", |s: &PeerState| s.updates_received.load(Ordering::Relaxed)),
        ("route_refreshes", |s: &PeerState| s.route_refreshes.load(Ordering::Relaxed)),
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
