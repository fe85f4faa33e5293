//! Each client's challenge outcomes (issued, passed, failed, let through on a cookie, cookie
//! refused), for the admin UI's client page. Counted in memory after the response, never on the
//! way to it; when the proxy follows Redis, a thread of its own adds the counts to
//! `{prefix}px:{subject}` every second (the admin reads them there); in `roost up` the admin
//! reads the totals here.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use roost_verdicts::{ProxyOutcomes, RedisConfig, Store};

/// Subjects counted at most (totals and unflushed deltas each); past it, the oldest go.
const MAX_SUBJECTS: usize = 100_000;

#[derive(Default)]
pub struct Outcomes {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    totals: HashMap<String, ProxyOutcomes>,
    pending: HashMap<String, ProxyOutcomes>,
}

fn bound(m: &mut HashMap<String, ProxyOutcomes>) {
    if m.len() > MAX_SUBJECTS {
        let mut lasts: Vec<i64> = m.values().map(|o| o.last).collect();
        let cut = lasts.len() - MAX_SUBJECTS * 9 / 10;
        let (_, nth, _) = lasts.select_nth_unstable(cut);
        let nth = *nth;
        m.retain(|_, o| o.last > nth);
    }
}

impl Outcomes {
    /// Counts `outcome` (as the access log names it; `-` and others are ignored) for `subject`.
    pub fn record(&self, subject: &str, outcome: &str, at: i64) {
        if outcome.is_empty() || outcome == "-" {
            return;
        }
        let mut one = ProxyOutcomes::default();
        if !one.add(outcome, at) {
            return;
        }
        let mut g = self.inner.lock().expect("outcomes lock");
        let Inner { totals, pending } = &mut *g;
        for m in [totals, pending] {
            match m.get_mut(subject) {
                Some(o) => o.merge(&one),
                None => {
                    m.insert(subject.to_owned(), one.clone());
                    bound(m);
                }
            }
        }
    }

    /// What this process counted for `subject` since it started.
    pub fn get(&self, subject: &str) -> Option<ProxyOutcomes> {
        self.inner.lock().expect("outcomes lock").totals.get(subject).cloned()
    }

    fn take_pending(&self) -> Vec<(String, ProxyOutcomes)> {
        std::mem::take(&mut self.inner.lock().expect("outcomes lock").pending).into_iter().collect()
    }

    fn put_back(&self, deltas: Vec<(String, ProxyOutcomes)>) {
        let mut g = self.inner.lock().expect("outcomes lock");
        for (s, d) in deltas {
            g.pending.entry(s).or_default().merge(&d);
        }
        bound(&mut g.pending);
    }
}

/// Adds the counts to Redis every second until `stop`; while Redis is away they wait (bounded).
pub fn spawn_flush(
    cfg: RedisConfig,
    outcomes: Arc<Outcomes>,
    stop: Arc<AtomicBool>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new().name("roost-proxy-outcomes".into()).spawn(move || {
        let mut store = match Store::new(&cfg) {
            Ok(s) => s,
            Err(e) => return tracing::error!(error = %e, "challenge outcomes: no Redis client; not recorded"),
        };
        let mut failing = false;
        while !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_secs(1));
            let deltas = outcomes.take_pending();
            if deltas.is_empty() {
                continue;
            }
            match store.add_outcomes(&deltas) {
                Ok(()) => failing = false,
                Err(e) => {
                    if !failing {
                        tracing::warn!(error = %e, "cannot write challenge outcomes to Redis; keeping them");
                        failing = true;
                    }
                    outcomes.put_back(deltas);
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_kind_and_hands_deltas_over_once() {
        let o = Outcomes::default();
        o.record("203.0.113.7", "issued", 1);
        o.record("203.0.113.7", "failed:replayed", 2);
        o.record("203.0.113.7", "passed:wait", 3);
        o.record("203.0.113.7", "-", 4);
        o.record("203.0.113.8", "cookie_refused:other_ip", 5);
        let t = o.get("203.0.113.7").unwrap();
        assert_eq!((t.issued, t.failed, t.passed, t.last), (1, 1, 1, 3));
        let mut d = o.take_pending();
        d.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(d.len(), 2);
        assert_eq!(d[1].1.refused, 1);
        assert!(o.take_pending().is_empty());
        o.put_back(d);
        assert_eq!(o.take_pending().len(), 2);
        assert_eq!(o.get("203.0.113.7").unwrap().issued, 1, "totals stay");
    }
}
