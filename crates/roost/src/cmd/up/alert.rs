//! The in-product drop alert of `roost up`, for users without Prometheus: the population is
//! sampled at a fixed interval into [`DropDetector`] (the same test as the Prometheus rule
//! `RoostAverageReputationDrop`), its state is shown at `/api/v1/alerts` and in /metrics, and
//! firing and resolution are POSTed to the configured receivers: an Alertmanager (its
//! `/api/v2/alerts`, re-sent while firing as Prometheus does) or anything that takes
//! Alertmanager's webhook payload (version 4).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use roost_engine::Timestamp;
use roost_engine::alarm::{DropStatus, Reading, Transition};
use serde::Serialize;

use super::state::{Appliance, SERIES_KEPT};
use crate::config::{AlertConfig, ReceiverFormat};

/// The alert's name, the same as the Prometheus rule's.
pub const ALERT_NAME: &str = "RoostAverageReputationDrop";

/// What the alert says: labels and annotations, the same as the Prometheus rule's.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Alert {
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    #[serde(rename = "startsAt")]
    pub starts_at: String,
    #[serde(rename = "endsAt")]
    pub ends_at: String,
    #[serde(rename = "generatorURL")]
    pub generator_url: String,
}

impl Alert {
    /// The alert for a firing status (`ends` in the future) or its resolution (`ends` = now).
    pub fn new(cfg: &AlertConfig, admin: &str, status: &DropStatus, starts: Timestamp, ends: Timestamp) -> Alert {
        let mut labels = cfg.labels.clone();
        labels.insert("alertname".into(), ALERT_NAME.into());
        labels.insert("service".into(), "roost".into());
        labels.insert("source".into(), "roost-up".into());
        let f = |x: Option<f64>| x.map_or("?".to_owned(), |v| format!("{v:.2}"));
        let annotations = BTreeMap::from([
            (
                "summary".to_owned(),
                format!(
                    "Average client reputation fell to {} (usual {}, ±{} between quartiles)",
                    f(status.short_mean),
                    f(status.baseline),
                    f(status.spread)
                ),
            ),
            (
                "description".to_owned(),
                format!(
                    "The request-weighted mean reputation of the last {} is {} below its median over the last {}, \
                     across about {:.0} recent requests: many requests are coming from clients that behave badly \
                     (an application-level attack starting, or a rule or feed misfiring). Look at the newly flagged \
                     clients and their reasons.",
                    humantime::format_duration(cfg.drop.short),
                    match (status.baseline, status.short_mean) {
                        (Some(b), Some(s)) => format!("{:.2}", b - s),
                        _ => "?".to_owned(),
                    },
                    humantime::format_duration(cfg.drop.long),
                    status.weight
                ),
            ),
            ("runbook_url".to_owned(), RUNBOOK.to_owned()),
            ("admin_url".to_owned(), format!("{admin}/api/v1/clients?verdict=bad")),
        ]);
        Alert {
            labels,
            annotations,
            starts_at: starts.to_string(),
            ends_at: ends.to_string(),
            generator_url: format!("{admin}/api/v1/alerts"),
        }
    }
}

/// The runbook the Prometheus rule links to as well.
pub const RUNBOOK: &str =
    "https://github.com/roost-appliance/roost/blob/main/deploy/runbooks/RoostAverageReputationDrop.md";

/// The body of a POST to a receiver.
pub fn payload(format: ReceiverFormat, alert: &Alert, resolved: bool, admin: &str) -> serde_json::Value {
    match format {
        ReceiverFormat::Alertmanager => serde_json::json!([alert]),
        ReceiverFormat::Webhook => {
            let status = if resolved { "resolved" } else { "firing" };
            let mut a = serde_json::to_value(alert).expect("an alert serializes");
            a["status"] = status.into();
            a["fingerprint"] = fingerprint(&alert.labels).into();
            serde_json::json!({
                "version": "4",
                "groupKey": format!("{{}}:{{alertname=\"{ALERT_NAME}\"}}"),
                "truncatedAlerts": 0,
                "status": status,
                "receiver": "roost-up",
                "groupLabels": { "alertname": ALERT_NAME },
                "commonLabels": alert.labels,
                "commonAnnotations": alert.annotations,
                "externalURL": admin,
                "alerts": [a],
            })
        }
    }
}

/// A stable 16-hex-digit fingerprint of a label set (FNV-1a, as Alertmanager's is a 64-bit hash).
fn fingerprint(labels: &BTreeMap<String, String>) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (k, v) in labels {
        for b in k.bytes().chain([0xff]).chain(v.bytes()).chain([0xff]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("{h:016x}")
}

/// Sends alerts; one per process, owned by the sampling task.
pub struct Notifier {
    cfg: AlertConfig,
    admin: String,
    http: reqwest::Client,
    /// While firing: when it started, and when it was last sent.
    firing: Option<(Timestamp, std::time::Instant)>,
}

impl Notifier {
    pub fn new(cfg: AlertConfig, admin: String) -> Notifier {
        let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().expect("an HTTP client builds");
        Notifier { cfg, admin, http, firing: None }
    }

    /// Acts on a sample's outcome: notify on firing and resolution, re-send while firing.
    pub async fn handle(&mut self, transition: Option<Transition>, status: &DropStatus, now: Timestamp) {
        match transition {
            Some(Transition::Fired(s)) => {
                let starts = s.firing_since.unwrap_or(now);
                tracing::warn!(alert = ALERT_NAME, short = ?s.short_mean, baseline = ?s.baseline, "alert firing");
                self.firing = Some((starts, std::time::Instant::now()));
                self.send(&s, starts, false, now).await;
            }
            Some(Transition::Resolved { started, at }) => {
                tracing::info!(alert = ALERT_NAME, "alert resolved");
                self.firing = None;
                self.send(status, started, true, at).await;
            }
            None => {
                if let Some((starts, last)) = self.firing
                    && last.elapsed() >= self.cfg.resend
                {
                    self.firing = Some((starts, std::time::Instant::now()));
                    self.send(status, starts, false, now).await;
                }
            }
        }
    }

    async fn send(&self, status: &DropStatus, starts: Timestamp, resolved: bool, now: Timestamp) {
        // while firing, valid until four re-sends are missed (what Prometheus does)
        let ends = if resolved { now } else { now.add_millis(4 * self.cfg.resend.as_millis() as i64) };
        let alert = Alert::new(&self.cfg, &self.admin, status, starts, ends);
        for r in &self.cfg.receivers {
            let url = match r.format {
                ReceiverFormat::Alertmanager => format!("{}/api/v2/alerts", r.url.trim_end_matches('/')),
                ReceiverFormat::Webhook => r.url.clone(),
            };
            let body = payload(r.format, &alert, resolved, &self.admin);
            match self.http.post(&url).json(&body).send().await {
                Ok(resp) if resp.status().is_success() => tracing::debug!(%url, resolved, "alert sent"),
                Ok(resp) => tracing::warn!(%url, status = %resp.status(), "alert receiver refused the alert"),
                Err(e) => tracing::warn!(%url, error = %e, "cannot send the alert"),
            }
        }
    }
}

/// Samples the population into the drop signal every `alert.sample_interval` and notifies.
pub async fn sample_drop_signal(sh: Arc<Appliance>) {
    let mut notifier = Notifier::new(sh.alert.clone(), sh.admin_url.clone());
    let mut tick = tokio::time::interval(sh.alert.sample_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if sh.shutdown.is_stopping() {
            return;
        }
        let (now, a) = {
            let engine = sh.engine.lock().expect("engine lock");
            let now = sh.clock(&engine);
            (now, engine.aggregates(now))
        };
        let (transition, status) = {
            let mut d = sh.drop.lock().expect("drop signal lock");
            let t = d.push(Reading { at: now, mean: a.mean_by_request, weight: a.request_weight });
            (t, d.status().clone())
        };
        if a.request_weight > 0.0 && a.mean_by_request.is_finite() {
            let mut series = sh.series.lock().expect("series lock");
            if series.len() >= SERIES_KEPT {
                series.pop_front();
            }
            series.push_back((now.0 as f64 / 1000.0, a.mean_by_request));
        }
        let m = &sh.metrics;
        m.drop_state.set(status.state as i64);
        m.drop_short.set(status.short_mean.unwrap_or(f64::NAN));
        m.drop_baseline.set(status.baseline.unwrap_or(f64::NAN));
        m.drop_spread.set(status.spread.unwrap_or(f64::NAN));
        notifier.handle(transition, &status, now).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_webhook_payload_has_alertmanagers_shape() {
        let cfg = AlertConfig::default();
        let st = DropStatus { short_mean: Some(0.1), baseline: Some(0.8), spread: Some(0.05), ..Default::default() };
        let a = Alert::new(&cfg, "http://127.0.0.1:9750", &st, Timestamp::from_secs(0), Timestamp::from_secs(60));
        let p = payload(ReceiverFormat::Webhook, &a, false, "http://127.0.0.1:9750");
        assert_eq!(p["version"], "4");
        assert_eq!(p["status"], "firing");
        assert_eq!(p["alerts"][0]["labels"]["alertname"], ALERT_NAME);
        assert_eq!(p["alerts"][0]["startsAt"], "1970-01-01T00:00:00Z");
        assert_eq!(p["alerts"][0]["fingerprint"].as_str().unwrap().len(), 16);
        assert!(p["commonAnnotations"]["summary"].as_str().unwrap().contains("fell to 0.10 (usual 0.80"));
        let p = payload(ReceiverFormat::Alertmanager, &a, false, "");
        assert_eq!(p[0]["endsAt"], "1970-01-01T00:01:00Z");
    }
}
