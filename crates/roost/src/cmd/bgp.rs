//! `roost bgp`: the flowspec controller on its own. Follows the compacted verdicts topic (read
//! whole, then followed) and the overrides topic, and feeds both to the controller
//! (`crate::flowspec`), which keeps one BGP session per router in step with the plan. /metrics,
//! /healthz and /rules (what `roost bgp show` prints) on `bgp.listen`.

use std::sync::mpsc::Receiver;
use std::time::Duration;

use anyhow::Context;
use ipnetwork::IpNetwork;
use roost_bgp::{Controller, Input};

use crate::config::Config;
use crate::flowspec::Flowspec;
use crate::runtime::{self, Shutdown};

pub fn run(cfg: Config) -> anyhow::Result<()> {
    anyhow::ensure!(cfg.kafka.enabled(), "roost bgp follows the verdicts topic: set kafka.brokers");
    let rt = runtime::tokio(1)?;
    let shutdown = Shutdown::on_signals(&rt)?;
    let flowspec = Flowspec::start(&crate::flowspec::with_own_addresses(&cfg), &rt, &shutdown, false)?;
    // as `roost score` does; not fatal: with Kafka away the controller waits (and freezes)
    if let Err(e) = roost_kafka::ensure_topic(&cfg.kafka, &cfg.kafka.topics.verdicts, 1, true) {
        tracing::warn!(error = %e, "cannot make sure the verdicts topic exists; waiting for it");
    }
    // a verdict should reach the routers in well under a second: the broker answers fetches at
    // once instead of waiting to fill them (librdkafka waits up to 500 ms by default)
    let mut kafka = cfg.kafka.clone();
    kafka.properties.entry("fetch.wait.max.ms".into()).or_insert_with(|| "10".into());
    // operators' overrides: the topic read whole, then followed, as every scorer does
    let (otx, orx) = std::sync::mpsc::channel();
    let overrides = roost_scorer::overrides::follow(kafka.clone(), otx, shutdown.flag());
    let follower = {
        let (inputs, controller, shutdown) = (flowspec.inputs.clone(), flowspec.controller.clone(), shutdown.clone());
        std::thread::Builder::new()
            .name("roost-bgp-verdicts".into())
            .spawn(move || follow(&kafka, &controller, &inputs, &orx, &shutdown))?
    };
    tracing::info!(peers = cfg.bgp.peers.len(), "roost bgp: running");
    rt.block_on(shutdown.stopped());
    let _ = follower.join();
    let _ = overrides.join();
    flowspec.join();
    Ok(())
}

/// Reads the verdicts topic into the planner, a batch at a time (what is there is drained
/// before it is planned). An outage freezes the announced set: nothing is withdrawn because of
/// it.
fn follow(
    kafka: &roost_kafka::KafkaConfig,
    controller: &Controller,
    inputs: &std::sync::mpsc::Sender<Vec<Input>>,
    overrides: &Receiver<(IpNetwork, Option<roost_engine::Override>)>,
    shutdown: &Shutdown,
) {
    let mut follower = None;
    let mut batch: Vec<Input> = Vec::new();
    while !shutdown.is_stopping() {
        while let Ok((net, ov)) = overrides.try_recv() {
            tracing::info!(prefix = %net, set = ov.is_some(), "override");
            batch.push(Input::Override(net, ov));
        }
        if follower.is_none() {
            match roost_kafka::TopicFollower::new(kafka, &kafka.topics.verdicts, "roost-bgp") {
                Ok(f) => follower = Some(f),
                Err(e) => {
                    controller.set_source_up(false);
                    tracing::warn!(error = %e, "verdicts topic unreachable: the announced rules stay as they are");
                    std::thread::sleep(Duration::from_secs(1));
                    continue;
                }
            }
        }
        let f = follower.as_ref().expect("set above");
        // while records come in, drain them quickly, then plan; idle, wait longer
        let wait = if batch.is_empty() { Duration::from_millis(200) } else { Duration::from_millis(5) };
        match f.poll(wait) {
            Ok(Some(r)) => {
                let Some(v) = r.value.as_deref() else { continue };
                match roost_wire::verdicts::decode(v) {
                    Ok(c) => batch.push(Input::verdict(&c)),
                    Err(e) => {
                        controller.bad_records.inc();
                        tracing::warn!(error = %e, offset = r.offset, "a verdicts-topic record is not a verdict change; ignored");
                    }
                }
                if batch.len() < 10_000 {
                    continue; // drain what is there before planning
                }
            }
            Ok(None) => {}
            Err(e) => {
                controller.set_source_up(false);
                tracing::warn!(error = %e, "reading the verdicts topic; the announced rules stay as they are");
                std::thread::sleep(Duration::from_millis(500));
                continue;
            }
        }
        if !batch.is_empty() && inputs.send(std::mem::take(&mut batch)).is_err() {
            return;
        }
        controller.set_source_up(true);
    }
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
