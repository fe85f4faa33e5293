//! `roost up`'s JSON API and /metrics (on `up.listen`, loopback by default): the population,
//! flagged clients with their reasons, one client, recent changes, the drop alert.

use std::net::IpAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use roost_engine::{Class, VerdictChange};
use serde::Deserialize;

use super::state::{Appliance, RECENT};
use crate::runtime;

/// The API's routes, for requests whose `Host` is an address, `localhost` or one of `hosts`.
pub fn router(sh: Arc<Appliance>, hosts: Vec<String>) -> Router {
    let hosts: Arc<Vec<String>> = Arc::new(hosts.into_iter().map(|h| h.to_ascii_lowercase()).collect());
    Router::new()
        .route("/", get(index))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics))
        .route("/api/v1/summary", get(summary))
        .route("/api/v1/clients", get(clients))
        .route("/api/v1/clients/{ip}", get(client))
        .route("/api/v1/changes", get(changes))
        .route("/api/v1/alerts", get(alerts))
        .with_state(sh)
        .layer(axum::middleware::from_fn(move |req: axum::extract::Request, next: axum::middleware::Next| {
            let allowed = host_allowed(req.headers().get(axum::http::header::HOST), &hosts);
            async move {
                if !allowed {
                    return (StatusCode::MISDIRECTED_REQUEST, "roost up: this Host is not one of up.hosts\n")
                        .into_response();
                }
                next.run(req).await
            }
        }))
}

/// An IP address, `localhost`, or a configured name (any port); no `Host` at all (HTTP/1.0
/// tools) is let through, as no browser sends such a request.
fn host_allowed(host: Option<&axum::http::HeaderValue>, hosts: &[String]) -> bool {
    let Some(h) = host else { return true };
    let Ok(h) = h.to_str() else { return false };
    let h = h.trim().to_ascii_lowercase();
    // "[::1]:9750", "127.0.0.1:9750", "name:9750", "name"
    let name = if let Some(rest) = h.strip_prefix('[') {
        match rest.split_once(']') {
            Some((addr, _)) => return addr.parse::<std::net::Ipv6Addr>().is_ok(),
            None => return false,
        }
    } else {
        h.rsplit_once(':').filter(|(_, port)| port.bytes().all(|b| b.is_ascii_digit())).map_or(h.as_str(), |(n, _)| n)
    };
    name.parse::<IpAddr>().is_ok() || name == "localhost" || hosts.iter().any(|a| a == name)
}

async fn index() -> &'static str {
    "roost up\n\nGET /api/v1/summary          population and pipeline counters\nGET /api/v1/clients?verdict=bad|dubious&limit=N   flagged clients with their reasons\nGET /api/v1/clients/{ip}     everything known about one client\nGET /api/v1/changes?limit=N  recent verdict changes, newest first\nGET /api/v1/alerts           the average-reputation drop alert and the numbers behind it\nGET /metrics                 Prometheus metrics\n"
}

async fn metrics(State(sh): State<Arc<Appliance>>) -> Response {
    if let Some(h) = sh.proxy_health.get() {
        h.refresh();
    }
    runtime::encode_metrics(&sh.registry)
}

async fn summary(State(sh): State<Arc<Appliance>>) -> Response {
    let engine = sh.engine.lock().expect("engine lock");
    let now = sh.clock(&engine);
    Json(serde_json::json!({
        "now": now.to_string(),
        "aggregates": engine.aggregates(now),
        "stats": engine.stats(),
        "inspectors": engine.inspector_versions().into_iter().collect::<std::collections::BTreeMap<_, _>>(),
        "demo_running": sh.demo_running.load(std::sync::atomic::Ordering::Relaxed),
        "drop_alert": sh.drop.lock().expect("drop signal lock").status().state,
    }))
    .into_response()
}

#[derive(Deserialize)]
struct ListQuery {
    verdict: Option<String>,
    limit: Option<usize>,
}

async fn clients(State(sh): State<Arc<Appliance>>, Query(q): Query<ListQuery>) -> Response {
    let want: Option<Class> = match q.verdict.as_deref() {
        None | Some("") | Some("flagged") => None,
        Some(v) => match v.parse() {
            Ok(c) => Some(c),
            Err(e) => return (StatusCode::BAD_REQUEST, Json(serde_json::json!({ "error": e }))).into_response(),
        },
    };
    let engine = sh.engine.lock().expect("engine lock");
    let now = sh.clock(&engine);
    let limit = q.limit.unwrap_or(100).min(10_000);
    let list = engine.flagged(now, want, limit);
    Json(list).into_response()
}

async fn client(State(sh): State<Arc<Appliance>>, Path(ip): Path<String>) -> Response {
    let Ok(addr) = ip.parse::<IpAddr>() else {
        return (StatusCode::BAD_REQUEST, Json(serde_json::json!({ "error": "not an IP address" }))).into_response();
    };
    let engine = sh.engine.lock().expect("engine lock");
    let now = sh.clock(&engine);
    match engine.explain(addr, now) {
        Some(x) => Json(x).into_response(),
        None if engine.is_allowlisted(addr) => {
            Json(serde_json::json!({ "subject": addr, "class": "good", "allowlisted": true })).into_response()
        }
        None => {
            (StatusCode::NOT_FOUND, Json(serde_json::json!({ "error": "not tracked (no requests seen recently)" })))
                .into_response()
        }
    }
}

/// The in-process alerts: the drop signal's state and the numbers behind it.
async fn alerts(State(sh): State<Arc<Appliance>>) -> Response {
    let status = sh.drop.lock().expect("drop signal lock").status().clone();
    Json(serde_json::json!([{
        "alertname": super::alert::ALERT_NAME,
        "enabled": sh.alert.enabled,
        "status": status,
        "config": sh.alert.drop,
        "runbook_url": super::alert::RUNBOOK,
    }]))
    .into_response()
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::host_allowed;

    #[test]
    fn only_addresses_localhost_and_configured_names_may_reach_the_api() {
        let hosts = vec!["roost.internal".to_owned()];
        let ok = |h: &str| host_allowed(Some(&HeaderValue::from_str(h).unwrap()), &hosts);
        for h in ["127.0.0.1:9750", "[::1]:9750", "localhost:9750", "LOCALHOST", "10.1.2.3", "roost.internal:9750"] {
            assert!(ok(h), "{h}");
        }
        // a name of the attacker's pointed at this machine
        for h in ["evil.example:9750", "evil.example", "127.0.0.1.evil.example:9750", "[::1", "localhost.evil:9750"] {
            assert!(!ok(h), "{h}");
        }
        assert!(host_allowed(None, &hosts));
    }
}

#[derive(Deserialize)]
struct ChangesQuery {
    limit: Option<usize>,
}

async fn changes(State(sh): State<Arc<Appliance>>, Query(q): Query<ChangesQuery>) -> Response {
    let recent = sh.recent.lock().expect("recent lock");
    let list: Vec<&VerdictChange> = recent.iter().take(q.limit.unwrap_or(100).min(RECENT)).collect();
    Json(list).into_response()
}
