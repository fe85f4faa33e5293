//! What every subcommand runs on, and nothing else provides: the Tokio runtime, the one way to
//! stop (SIGINT or SIGTERM, or a part of the process giving up), `/metrics` and `/healthz`
//! served from a prometheus-client registry, the wall clock and the host's name.
//!
//! A daemon builds its runtime with [`tokio`], takes a [`Shutdown`] with [`Shutdown::on_signals`]
//! before it announces readiness, binds every configured listener with [`bind`] (a listener that
//! cannot be had is an error, never a warning) and serves it with [`serve`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::SystemTime;

use anyhow::Context;
use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use prometheus_client::registry::Registry;
use roost_engine::Timestamp;

/// The wall clock, as the engine counts time. The only clock read of the binary: the engine and
/// the library cores are handed time.
pub fn wall_now() -> Timestamp {
    let d = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    Timestamp(d.as_millis() as i64)
}

/// This host's name, as records name their origin.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into())
}

/// A multi-threaded Tokio runtime with `workers` worker threads (at least one).
pub fn tokio(workers: usize) -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers.max(1))
        .enable_all()
        .build()
        .context("starting the Tokio runtime")
}

/// The one way a daemon stops. Raised by SIGINT or SIGTERM (see [`Shutdown::on_signals`]) or by
/// [`Shutdown::stop`] (a part that cannot go on); threads poll [`Shutdown::is_stopping`] or hand
/// [`Shutdown::flag`] to the library loops, tasks await [`Shutdown::stopped`].
#[derive(Clone)]
pub struct Shutdown {
    flag: Arc<AtomicBool>,
    tx: Arc<tokio::sync::watch::Sender<bool>>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Shutdown { flag: Arc::default(), tx: Arc::new(tokio::sync::watch::Sender::new(false)) }
    }
}

impl Shutdown {
    /// A shutdown raised by SIGINT or SIGTERM. The handlers are in place when this returns: call
    /// it before announcing readiness, or an early signal ends the process abruptly.
    pub fn on_signals(rt: &tokio::runtime::Runtime) -> anyhow::Result<Shutdown> {
        use tokio::signal::unix::{SignalKind, signal};
        let s = Shutdown::default();
        let _guard = rt.enter();
        let mut term = signal(SignalKind::terminate()).context("handling SIGTERM")?;
        let mut int = signal(SignalKind::interrupt()).context("handling SIGINT")?;
        let raise = s.clone();
        rt.spawn(async move {
            let name = tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
            };
            tracing::info!(signal = name, "stopping");
            raise.stop();
        });
        Ok(s)
    }

    /// Stops the process's parts (idempotent).
    pub fn stop(&self) {
        self.flag.store(true, Ordering::Relaxed);
        self.tx.send_replace(true);
    }

    pub fn is_stopping(&self) -> bool {
        self.flag.load(Ordering::Relaxed)
    }

    /// The flag itself, for loops in the library crates that take one.
    pub fn flag(&self) -> Arc<AtomicBool> {
        self.flag.clone()
    }

    /// A receiver that turns `true` once stopping, for the library parts that take one.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<bool> {
        self.tx.subscribe()
    }

    /// Resolves once stopping.
    pub async fn stopped(&self) {
        let mut rx = self.tx.subscribe();
        let _ = rx.wait_for(|stop| *stop).await;
    }
}

/// Binds a configured HTTP listener; not getting it is an error (with its address).
pub async fn bind(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await.with_context(|| format!("listening on {addr}"))
}

/// `/healthz` and `/metrics` (the registry in the OpenMetrics text format): what every daemon
/// serves on its metrics listener; callers may add routes.
pub fn metrics_router(registry: Arc<Registry>) -> Router {
    Router::new()
        .route("/healthz", axum::routing::get(|| async { "ok\n" }))
        .route("/metrics", axum::routing::get(move || std::future::ready(encode_metrics(&registry))))
}

/// A registry in the OpenMetrics text format, as every daemon's `/metrics` serves it.
pub fn encode_metrics(registry: &Registry) -> Response {
    let mut out = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, registry) {
        return (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response();
    }
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], out).into_response()
}

/// Serves `app` on `listener` until `shutdown` (gracefully: requests in flight finish), as a task
/// on the current runtime. `what` names it in the log.
pub fn serve(
    what: &'static str,
    listener: tokio::net::TcpListener,
    app: Router,
    shutdown: &Shutdown,
) -> tokio::task::JoinHandle<()> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!("{what} on http://{addr}");
    }
    let s = shutdown.clone();
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(async move { s.stopped().await }).await {
            tracing::error!(error = %e, "{what}: serving stopped");
        }
    })
}
