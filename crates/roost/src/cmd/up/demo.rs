//! `roost up --demo`: a bundled 30-minute attack scenario replayed so verdicts show within
//! seconds, and, when nothing else listens where the proxy's upstream is, a demo app behind the
//! proxy (one page that says the request reached the app, and with which verdict).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::mpsc::SyncSender;
use std::time::Duration;

use axum::Router;
use axum::http::HeaderMap;
use axum::routing::get;
use roost_engine::{RequestEvent, Timestamp};

use super::ingest::BATCH;
use super::state::Appliance;
use crate::runtime::wall_now;

/// Replays the golden 30-minute scenario so that it ends a minute from now: what happened
/// before now at once (the scorer takes it in seconds), the last minute as it happens. Event
/// time then never runs ahead of the wall clock nor far behind it, so the verdicts the proxy and
/// the admin UI judge by the wall clock are the scenario's own.
pub fn demo_loop(tx: SyncSender<Vec<super::ingest::Ingested>>, sh: Arc<Appliance>) {
    const LIVE_S: i64 = 60;
    let scenario = roost_loggen::Scenario::golden(1);
    let shift = wall_now().secs() + LIVE_S - scenario.start - scenario.duration_s;
    let mut batch = Vec::new();
    tracing::info!("demo: a 30-minute attack scenario, its last minute live");
    let result = roost_loggen::generate(&scenario, |r| {
        if sh.shutdown.is_stopping() {
            return Err(std::io::Error::other("stopping"));
        }
        let ev = demo_event(r, shift);
        let ahead = ev.time.0 - wall_now().0;
        if ahead > 0 {
            if !batch.is_empty() {
                tx.send(std::mem::take(&mut batch)).map_err(|_| std::io::Error::other("scorer gone"))?;
            }
            std::thread::sleep(Duration::from_millis(ahead as u64));
        } else if batch.len() >= BATCH {
            tx.send(std::mem::take(&mut batch)).map_err(|_| std::io::Error::other("scorer gone"))?;
        }
        batch.push(super::ingest::Ingested::Request(ev));
        Ok(())
    });
    if !batch.is_empty() {
        let _ = tx.send(batch);
    }
    sh.demo_running.store(false, std::sync::atomic::Ordering::Relaxed);
    if result.is_ok() {
        tracing::info!("demo: scenario finished; see /api/v1/clients");
    }
}

fn demo_event(r: &roost_loggen::Request, shift_s: i64) -> RequestEvent<'static> {
    let (path, query) = match r.target.split_once('?') {
        Some((p, q)) => (p.to_owned(), Some(q.to_owned().into())),
        None => (r.target.clone(), None),
    };
    RequestEvent {
        time: Timestamp(r.time_ms + shift_s * 1000),
        client: r.client,
        method: r.method.into(),
        host: None,
        path: path.into(),
        query,
        protocol: "HTTP/1.1".into(),
        status: r.status,
        bytes: r.bytes as u64,
        request_time: Some(r.request_time),
        referer: r.referer.clone().map(Into::into),
        user_agent: Some(r.user_agent.into()),
    }
}

/// The demo's proxy: clients on this machine may name the client they stand for in
/// `X-Forwarded-For`, so `curl -H 'X-Forwarded-For: 198.18.0.56' …` shows what that client gets.
pub fn proxy_config(base: &roost_proxy::ProxyConfig) -> roost_proxy::ProxyConfig {
    let mut p = base.clone();
    for net in ["127.0.0.0/8", "::1/128"] {
        let net: ipnetwork::IpNetwork = net.parse().expect("a valid prefix");
        if !p.trusted_proxies.contains(&net) {
            p.trusted_proxies.push(net);
        }
    }
    p
}

/// Serves the demo app on the first upstream address, unless something listens there already.
pub fn start_app_if_free(upstreams: &[String]) -> anyhow::Result<()> {
    let Some(addr) = upstreams.first().and_then(|u| u.parse::<SocketAddr>().ok()) else { return Ok(()) };
    let listener = match std::net::TcpListener::bind(addr) {
        Ok(l) => l,
        Err(_) => {
            tracing::info!(%addr, "demo: the proxy's upstream is already served; using it");
            return Ok(());
        }
    };
    listener.set_nonblocking(true)?;
    std::thread::Builder::new().name("roost-demo-app".into()).spawn(move || {
        let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(rt) => rt,
            Err(e) => return tracing::error!(error = %e, "demo app: no runtime"),
        };
        rt.block_on(async move {
            let Ok(l) = tokio::net::TcpListener::from_std(listener) else { return };
            let app = Router::new().fallback(get(page));
            if let Err(e) = axum::serve(l, app).await {
                tracing::error!(error = %e, "demo app stopped");
            }
        });
    })?;
    tracing::info!(%addr, "demo: serving a demo app behind the proxy");
    Ok(())
}

async fn page(h: HeaderMap) -> String {
    let verdict = h.get("x-roost-verdict").and_then(|v| v.to_str().ok()).unwrap_or("-");
    format!("roost demo app: your request reached the app (X-Roost-Verdict: {verdict})\n")
}
