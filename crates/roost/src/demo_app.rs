//! The app behind the proxy in `roost up --demo`, when nothing else listens where the proxy's
//! upstream is: one page that says the request reached the app, and with which verdict.

use std::net::SocketAddr;

use axum::Router;
use axum::http::HeaderMap;
use axum::routing::get;

/// Serves the demo app on the first upstream address, unless something listens there already.
pub fn start_if_free(upstreams: &[String]) -> anyhow::Result<()> {
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
