//! The average-reputation drop signal, for `roost up` users without Prometheus.
//!
//! The same test as `RoostAverageReputationDrop` in `deploy/prometheus/roost.rules.yml`, on the
//! same samples: the request-weighted mean reputation, sampled at a fixed interval. The alert's
//! condition holds when
//!
//! ```text
//! baseline - short_mean > max(spreads · spread, min_drop)
//!   and recent request weight >= min_weight              (no alarm on a quiet night's few requests)
//!   and the baseline spans at least `min_baseline` short windows   (no alarm right after a start)
//! ```
//!
//! where `short_mean` is the mean of the samples of the last `short` window, `baseline` the
//! median of the samples of the last `long` window and `spread` their interquartile range
//! (quantiles interpolated as Prometheus' `quantile_over_time` does). Median and quartiles
//! rather than mean and standard deviation: an attack that has gone on for a while is part of
//! the baseline window, and would inflate a standard deviation until the alert resolved itself;
//! the quartiles do not move until the attack fills a quarter of the window. Like a Prometheus alert, it is *pending* once the condition holds
//! and *firing* once it has held for `for`; it resolves as soon as it stops holding.
//!
//! Pure: samples come with their time, nothing reads a clock.

use std::collections::VecDeque;
use std::time::Duration;

use roost_event::Timestamp;
use serde::{Deserialize, Serialize};

/// Thresholds of the drop signal (`[alert.drop]` in the config).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DropConfig {
    /// The recent window whose mean is compared.
    #[serde(with = "humantime_serde")]
    pub short: Duration,
    /// The baseline window.
    #[serde(with = "humantime_serde")]
    pub long: Duration,
    /// How long the condition must hold before the alert fires.
    #[serde(rename = "for", with = "humantime_serde")]
    pub for_: Duration,
    /// Interquartile ranges of the baseline the short mean must fall below its median (2.2
    /// interquartile ranges are about 3 standard deviations of normally distributed samples).
    pub spreads: f64,
    /// The smallest drop that counts, on the -1..1 reputation scale, however calm the baseline.
    pub min_drop: f64,
    /// The smallest recent request weight (decayed requests) worth alerting on.
    pub min_weight: f64,
    /// The baseline must span this many short windows before it is trusted.
    pub min_baseline: f64,
}

impl Default for DropConfig {
    fn default() -> Self {
        DropConfig {
            short: Duration::from_secs(5 * 60),
            long: Duration::from_secs(6 * 3600),
            for_: Duration::from_secs(5 * 60),
            spreads: 2.2,
            min_drop: 0.15,
            min_weight: 200.0,
            min_baseline: 4.0,
        }
    }
}

/// One sample of the population (from [`crate::Aggregates`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Reading {
    pub at: Timestamp,
    /// Request-weighted mean reputation.
    pub mean: f64,
    /// Recent request weight behind the mean.
    pub weight: f64,
}

/// Where the alert is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AlertState {
    #[default]
    Inactive,
    Pending,
    Firing,
}

impl AlertState {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertState::Inactive => "inactive",
            AlertState::Pending => "pending",
            AlertState::Firing => "firing",
        }
    }
}

/// The signal at one moment: what the alert shows and what a notification carries.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct DropStatus {
    pub state: AlertState,
    /// Since when the condition holds (pending or firing).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub active_since: Option<Timestamp>,
    /// Since when the alert fires.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub firing_since: Option<Timestamp>,
    pub short_mean: Option<f64>,
    /// The median of the baseline window.
    pub baseline: Option<f64>,
    /// The interquartile range of the baseline window.
    pub spread: Option<f64>,
    /// The drop the condition asks for at this moment.
    pub threshold: Option<f64>,
    pub weight: f64,
    /// Why the condition does not hold, when it does not (for the admin UI).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quiet_because: Option<&'static str>,
}

/// A change of [`AlertState`] worth notifying.
#[derive(Clone, Debug, PartialEq)]
pub enum Transition {
    Fired(DropStatus),
    /// The alert stopped firing, with the time it had started firing.
    Resolved {
        started: Timestamp,
        at: Timestamp,
    },
}

/// The drop signal's state: a window of samples and the alert.
#[derive(Clone, Debug)]
pub struct DropDetector {
    cfg: DropConfig,
    samples: VecDeque<Reading>,
    status: DropStatus,
}

impl DropDetector {
    pub fn new(cfg: DropConfig) -> DropDetector {
        DropDetector { cfg, samples: VecDeque::new(), status: DropStatus::default() }
    }

    pub fn config(&self) -> &DropConfig {
        &self.cfg
    }

    pub fn status(&self) -> &DropStatus {
        &self.status
    }

    /// Adds a sample (times must not go backwards; an older one is ignored) and re-evaluates.
    pub fn push(&mut self, s: Reading) -> Option<Transition> {
        if self.samples.back().is_some_and(|last| last.at > s.at) || !s.mean.is_finite() {
            return None;
        }
        self.samples.push_back(s);
        let long = self.cfg.long.as_millis() as i64;
        while self.samples.front().is_some_and(|f| f.at.millis() <= s.at.millis() - long) {
            self.samples.pop_front();
        }
        self.evaluate(s)
    }

    fn evaluate(&mut self, now: Reading) -> Option<Transition> {
        let short_from = now.at.millis() - self.cfg.short.as_millis() as i64;
        let (mut n_short, mut sum_short) = (0usize, 0.0f64);
        let mut sorted: Vec<f64> = Vec::with_capacity(self.samples.len());
        for s in &self.samples {
            sorted.push(s.mean);
            if s.at.millis() > short_from {
                n_short += 1;
                sum_short += s.mean;
            }
        }
        sorted.sort_by(f64::total_cmp);
        let n_long = sorted.len();
        let base = quantile(&sorted, 0.5);
        let spread = quantile(&sorted, 0.75) - quantile(&sorted, 0.25);
        let short = sum_short / n_short.max(1) as f64;
        let threshold = (self.cfg.spreads * spread).max(self.cfg.min_drop);
        let quiet_because = if now.weight < self.cfg.min_weight {
            Some("too few recent requests to judge")
        } else if (n_long as f64) < self.cfg.min_baseline * n_short as f64 {
            Some("the baseline is still being learned")
        } else if base - short <= threshold {
            Some("the average is within its usual range")
        } else {
            None
        };
        let prev = self.status.clone();
        let mut st = DropStatus {
            short_mean: Some(short),
            baseline: Some(base),
            spread: Some(spread),
            threshold: Some(threshold),
            weight: now.weight,
            quiet_because,
            ..DropStatus::default()
        };
        if quiet_because.is_none() {
            let since = prev.active_since.unwrap_or(now.at);
            st.active_since = Some(since);
            if now.at.millis() - since.millis() >= self.cfg.for_.as_millis() as i64 {
                st.state = AlertState::Firing;
                st.firing_since = Some(prev.firing_since.unwrap_or(now.at));
            } else {
                st.state = AlertState::Pending;
            }
        }
        self.status = st;
        match (prev.state, self.status.state) {
            (AlertState::Firing, AlertState::Firing) => None,
            (_, AlertState::Firing) => Some(Transition::Fired(self.status.clone())),
            (AlertState::Firing, _) => {
                Some(Transition::Resolved { started: prev.firing_since.unwrap_or(now.at), at: now.at })
            }
            _ => None,
        }
    }
}

/// The φ-quantile of sorted values, interpolated between ranks as Prometheus does.
fn quantile(sorted: &[f64], phi: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = phi * (sorted.len() - 1) as f64;
    let (lo, hi) = (rank.floor() as usize, rank.ceil() as usize);
    let w = rank - lo as f64;
    sorted[lo] * (1.0 - w) + sorted[hi] * w
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> DropConfig {
        DropConfig {
            short: Duration::from_secs(60),
            long: Duration::from_secs(3600),
            for_: Duration::from_secs(120),
            ..DropConfig::default()
        }
    }

    /// Feeds one sample every 15 s from `from` to `to` (seconds), returning the transitions.
    fn feed(d: &mut DropDetector, from: i64, to: i64, mean: impl Fn(i64) -> f64, weight: f64) -> Vec<Transition> {
        (from..to)
            .step_by(15)
            .filter_map(|t| d.push(Reading { at: Timestamp::from_secs(t), mean: mean(t), weight }))
            .collect()
    }

    fn normal(t: i64) -> f64 {
        0.8 + 0.02 * ((t / 15) % 3) as f64
    }

    #[test]
    fn a_steady_population_never_alerts() {
        let mut d = DropDetector::new(cfg());
        assert!(feed(&mut d, 0, 7200, normal, 5000.0).is_empty());
        assert_eq!(d.status().state, AlertState::Inactive);
        assert_eq!(d.status().quiet_because, Some("the average is within its usual range"));
    }

    #[test]
    fn a_sharp_drop_goes_pending_then_fires_then_resolves() {
        let mut d = DropDetector::new(cfg());
        feed(&mut d, 0, 1800, normal, 5000.0);
        let attack = |t: i64| if t < 2100 { 0.2 } else { normal(t) };
        let mut states = Vec::new();
        let mut transitions = Vec::new();
        for t in (1800..2400).step_by(15) {
            transitions.extend(d.push(Reading { at: Timestamp::from_secs(t), mean: attack(t), weight: 5000.0 }));
            states.push(d.status().state);
        }
        let first_pending = states.iter().position(|s| *s == AlertState::Pending).expect("pending");
        let first_firing = states.iter().position(|s| *s == AlertState::Firing).expect("firing");
        assert!(first_pending < first_firing);
        // 120 s of `for` at 15 s per sample
        assert_eq!(first_firing - first_pending, 8);
        assert!(matches!(transitions[0], Transition::Fired(ref s) if s.short_mean.unwrap() < 0.5));
        // firing for the whole attack (the quartiles do not follow it), resolved after it
        match transitions[1] {
            Transition::Resolved { at, .. } => assert!(at >= Timestamp::from_secs(2100)),
            _ => panic!("{transitions:?}"),
        }
        assert_eq!(transitions.len(), 2);
        assert_eq!(d.status().state, AlertState::Inactive);
    }

    #[test]
    fn a_quiet_nights_small_sample_does_not_alert() {
        let mut d = DropDetector::new(cfg());
        feed(&mut d, 0, 1800, normal, 5000.0);
        // at night: few requests, and two of the clients are bad
        assert!(feed(&mut d, 1800, 3600, |_| -0.3, 40.0).is_empty());
        assert_eq!(d.status().quiet_because, Some("too few recent requests to judge"));
    }

    #[test]
    fn quantiles_interpolate_like_prometheus() {
        let v = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(quantile(&v, 0.5), 2.5);
        assert_eq!(quantile(&v, 0.25), 1.75);
        assert_eq!(quantile(&v, 1.0), 4.0);
        assert_eq!(quantile(&[7.0], 0.75), 7.0);
    }

    #[test]
    fn no_alert_before_the_baseline_is_learned() {
        let mut d = DropDetector::new(cfg());
        feed(&mut d, 0, 120, normal, 5000.0);
        assert!(feed(&mut d, 120, 200, |_| -0.5, 5000.0).is_empty());
        assert_eq!(d.status().quiet_because, Some("the baseline is still being learned"));
    }

    #[test]
    fn a_noisy_baseline_needs_a_bigger_drop() {
        let mut d = DropDetector::new(cfg());
        let noisy = |t: i64| 0.6 + 0.15 * (((t / 15) % 5) as f64 - 2.0);
        feed(&mut d, 0, 1800, noisy, 5000.0);
        // 0.3 below the median (0.6), but its interquartile range is 0.3: 2.2 of them are 0.66
        assert!(feed(&mut d, 1800, 2400, |_| 0.3, 5000.0).is_empty());
        assert!(d.status().spread.unwrap() >= 0.3);
    }
}
