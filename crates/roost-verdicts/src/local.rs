//! [`LocalVerdicts`]: the verdicts one process holds in memory, in the shape Redis holds them —
//! each flagged client's current [`VerdictRecord`] and every client's recent history — for
//! `roost up`, whose admin UI and proxy read them in process. Time comes from the changes and
//! from the caller ([`LocalVerdicts::sweep`]); no I/O.

use std::collections::{HashMap, VecDeque};

use roost_engine::{Class, Timestamp, VerdictChange};

use crate::{HISTORY_LEN, HISTORY_TTL_MS, HistoryEntry, VerdictRecord, Write};

/// Subjects with a history, at most, by default; the least recently changed go first.
pub const HISTORIES_KEPT: usize = 200_000;

pub struct LocalVerdicts {
    current: HashMap<String, VerdictRecord>,
    /// Shadow verdicts ("would block"), never enforced.
    shadow: HashMap<String, VerdictRecord>,
    histories: HashMap<String, (i64, VecDeque<HistoryEntry>)>,
    histories_kept: usize,
}

impl Default for LocalVerdicts {
    fn default() -> Self {
        LocalVerdicts::with_capacity(HISTORIES_KEPT)
    }
}

impl LocalVerdicts {
    /// Keeping the histories of at most `histories_kept` subjects.
    pub fn with_capacity(histories_kept: usize) -> LocalVerdicts {
        LocalVerdicts { current: HashMap::new(), shadow: HashMap::new(), histories: HashMap::new(), histories_kept }
    }

    /// Records verdict changes (the current record, the history) and returns what a store that
    /// mirrors them (Redis) is to write.
    pub fn record(&mut self, changes: &[VerdictChange]) -> Vec<Write> {
        let mut writes = Vec::with_capacity(changes.len());
        for c in changes {
            let rec = VerdictRecord::from_change(c);
            let (last, h) = self.histories.entry(rec.subject.clone()).or_default();
            *last = c.at.0;
            h.push_front(HistoryEntry { record: rec.clone(), samples: c.samples.clone() });
            h.truncate(HISTORY_LEN as usize);
            let current = if rec.shadow { &mut self.shadow } else { &mut self.current };
            if rec.verdict == Class::Good {
                current.remove(&rec.subject);
            } else {
                current.insert(rec.subject.clone(), rec.clone());
            }
            writes.push(Write { record: rec, now: c.at, announce: true, samples: c.samples.clone() });
        }
        writes
    }

    /// Drops verdicts expired at `now`, histories older than their TTL, and the oldest histories
    /// beyond the capacity.
    pub fn sweep(&mut self, now: Timestamp) {
        self.current.retain(|_, r| r.expires.is_none_or(|e| e > now));
        self.shadow.retain(|_, r| r.expires.is_none_or(|e| e > now));
        let oldest = now.0 - HISTORY_TTL_MS as i64;
        self.histories.retain(|_, (at, _)| *at > oldest);
        if self.histories.len() > self.histories_kept {
            let mut ages: Vec<i64> = self.histories.values().map(|(at, _)| *at).collect();
            let cut = ages.len() - self.histories_kept;
            let (_, nth, _) = ages.select_nth_unstable(cut);
            let nth = *nth;
            self.histories.retain(|_, (at, _)| *at >= nth);
        }
    }

    /// Every current non-good verdict.
    pub fn current(&self) -> Vec<VerdictRecord> {
        self.current.values().cloned().collect()
    }

    /// Every current shadow verdict ("would block").
    pub fn shadow(&self) -> Vec<VerdictRecord> {
        self.shadow.values().cloned().collect()
    }

    /// A subject's history, newest first.
    pub fn history(&self, subject: &str) -> Vec<HistoryEntry> {
        self.histories.get(subject).map(|(_, h)| h.iter().cloned().collect()).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use roost_engine::{Cause, Reason};

    use super::*;

    fn change(ip: &str, at_s: i64, to: Class, expires_s: Option<i64>) -> VerdictChange {
        VerdictChange {
            shadow: false,
            subject: ip.parse().unwrap(),
            at: Timestamp::from_secs(at_s),
            from: Class::Good,
            to,
            cause: Cause::Evidence,
            reputation: -0.5,
            requests: 3,
            expires: expires_s.map(Timestamp::from_secs),
            reasons: vec![Reason { source: "rule:T".into(), text: "probe".into(), weight: 1.0 }],
            samples: Vec::new(),
        }
    }

    #[test]
    fn keeps_current_verdicts_and_histories_and_lets_them_go_with_the_time_it_is_given() {
        let mut v = LocalVerdicts::with_capacity(2);
        let w = v.record(&[change("192.0.2.1/32", 100, Class::Bad, Some(700))]);
        assert_eq!(w.len(), 1);
        assert!(w[0].announce);
        assert_eq!(v.current().len(), 1);
        // good again: no longer current, but in the history
        v.record(&[change("192.0.2.1/32", 200, Class::Good, None)]);
        assert!(v.current().is_empty());
        assert_eq!(v.history("192.0.2.1").len(), 2);
        assert_eq!(v.history("192.0.2.1")[0].record.verdict, Class::Good, "newest first");

        v.record(&[change("192.0.2.2/32", 300, Class::Dubious, Some(400))]);
        v.sweep(Timestamp::from_secs(399));
        assert_eq!(v.current().len(), 1);
        v.sweep(Timestamp::from_secs(400));
        assert!(v.current().is_empty(), "expired at its time");

        // a third subject: the oldest history goes beyond the capacity of two
        v.record(&[change("192.0.2.3/32", 500, Class::Bad, None)]);
        v.sweep(Timestamp::from_secs(500));
        assert!(v.history("192.0.2.1").is_empty());
        assert_eq!(v.history("192.0.2.3").len(), 1);
        // histories older than their TTL go
        v.sweep(Timestamp(Timestamp::from_secs(500).0 + HISTORY_TTL_MS as i64 + 1));
        assert!(v.history("192.0.2.3").is_empty());
        assert_eq!(v.current().len(), 1, "a verdict without an expiry stays");
    }
}
