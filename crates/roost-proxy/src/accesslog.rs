//! The proxy's access log: one line per request, in an nginx `log_format` that `roost tail`
//! reads ([`LOG_FORMAT`]), with the route taken, the challenge outcome and the error reference,
//! so passes and failures feed back into the client's reputation. Written by a thread of its
//! own from a bounded queue: a slow disk never stalls requests; a full queue drops lines and
//! counts them.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::time::Duration;

use roost_event::{TimeLocal, Timestamp, nginx_escaped};

use crate::metrics::ProxyMetrics;

/// The format of the lines, to give `roost tail` (`logs.log_format`).
pub const LOG_FORMAT: &str = r#"log_format roost '$remote_addr - - [$time_local] "$request" $status $body_bytes_sent "$http_referer" "$http_user_agent" $request_time route=$roost_route challenge=$roost_challenge ref=$roost_ref';"#;

/// One request, as logged.
pub struct Entry {
    pub time: Timestamp,
    pub client: std::net::IpAddr,
    pub method: String,
    pub target: String,
    pub protocol: &'static str,
    pub status: u16,
    pub bytes: usize,
    pub referer: Option<String>,
    pub user_agent: Option<String>,
    pub seconds: f64,
    pub route: &'static str,
    /// `-`, `issued`, `passed`, `cleared` or `failed:REASON`.
    pub challenge: String,
    pub reference: Option<String>,
}

impl Entry {
    pub fn write(&self, out: &mut impl Write) -> std::io::Result<()> {
        writeln!(
            out,
            "{} - - [{}] \"{} {} {}\" {} {} \"{}\" \"{}\" {:.3} route={} challenge={} ref={}",
            self.client,
            TimeLocal(self.time),
            nginx_escaped(&self.method),
            nginx_escaped(&self.target),
            self.protocol,
            self.status,
            self.bytes,
            nginx_escaped(self.referer.as_deref().unwrap_or("-")),
            nginx_escaped(self.user_agent.as_deref().unwrap_or("-")),
            self.seconds,
            self.route,
            nginx_escaped(&self.challenge),
            self.reference.as_deref().unwrap_or("-"),
        )
    }
}

#[derive(Clone)]
pub struct AccessLog {
    tx: Option<SyncSender<Entry>>,
    metrics: Arc<ProxyMetrics>,
}

impl AccessLog {
    /// No log.
    pub fn off(metrics: Arc<ProxyMetrics>) -> AccessLog {
        AccessLog { tx: None, metrics }
    }

    /// Appends to `path` (created if missing; reopened when it is rotated away). The file is
    /// opened now; its writer thread starts when the returned [`Writer`] is started (entries
    /// wait in the queue until then).
    pub fn open(path: PathBuf, metrics: Arc<ProxyMetrics>) -> std::io::Result<(AccessLog, Writer)> {
        let file = open(&path)?;
        let (tx, rx) = std::sync::mpsc::sync_channel(65_536);
        let m = metrics.clone();
        Ok((AccessLog { tx: Some(tx), metrics }, Writer { path, file, rx, metrics: m }))
    }

    pub fn enabled(&self) -> bool {
        self.tx.is_some()
    }

    pub fn log(&self, e: Entry) {
        if let Some(tx) = &self.tx {
            match tx.try_send(e) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                    self.metrics.access_log_dropped.inc();
                }
            }
        }
    }
}

/// The access log's writer, not started yet.
pub struct Writer {
    path: PathBuf,
    file: std::fs::File,
    rx: Receiver<Entry>,
    metrics: Arc<ProxyMetrics>,
}

impl Writer {
    /// Starts the writer thread; it ends when every [`AccessLog`] handle is gone.
    pub fn start(self) -> std::io::Result<()> {
        let Writer { path, file, rx, metrics } = self;
        std::thread::Builder::new().name("roost-proxy-log".into()).spawn(move || writer(path, file, rx, &metrics))?;
        Ok(())
    }
}

fn open(path: &std::path::Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new().create(true).append(true).open(path)
}

fn writer(path: PathBuf, file: std::fs::File, rx: Receiver<Entry>, m: &ProxyMetrics) {
    use std::os::unix::fs::MetadataExt;
    let mut ino = file.metadata().map(|md| md.ino()).unwrap_or(0);
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, file);
    let mut last_check = std::time::Instant::now();
    loop {
        let e = match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(e) => Some(e),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => None,
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                let _ = out.flush();
                return;
            }
        };
        if let Some(e) = e {
            if e.write(&mut out).is_err() {
                m.access_log_errors.inc();
            }
            // drain what is queued before flushing
            while let Ok(e) = rx.try_recv() {
                if e.write(&mut out).is_err() {
                    m.access_log_errors.inc();
                }
            }
        }
        if out.flush().is_err() {
            m.access_log_errors.inc();
        }
        // follow rotation (rename-and-create by logrotate): reopen when the path is another file
        if last_check.elapsed() >= Duration::from_secs(1) {
            last_check = std::time::Instant::now();
            let now = std::fs::metadata(&path).map(|md| md.ino()).ok();
            if now != Some(ino) {
                match open(&path) {
                    Ok(f) => {
                        ino = f.metadata().map(|md| md.ino()).unwrap_or(0);
                        out = std::io::BufWriter::with_capacity(64 * 1024, f);
                    }
                    Err(e) => {
                        m.access_log_errors.inc();
                        tracing::warn!(error = %e, path = %path.display(), "reopening the access log");
                    }
                }
            }
        }
    }
}
