//! Per-client sliding windows for stateful rules: exact counts of matching requests, distinct
//! values, requests per value, and shares, over a time window. Memory is bounded: each window
//! keeps at most what its threshold needs, and the number of clients with any window state is
//! capped (idle clients are dropped first; beyond that, new clients are refused and counted).

use std::collections::VecDeque;

use hashbrown::HashMap;

use crate::spec::WindowSpec;

/// A client as the rules key it: address bits and prefix length.
pub type ClientKey = (u128, u8);

/// Values tracked per client and `same` window.
const MAX_SAME_VALUES: usize = 16;

#[derive(Debug)]
enum State {
    /// Times of matching requests (at most `count`).
    Count(VecDeque<u32>),
    /// (last time, value hash) of distinct values (at most `count`).
    Distinct(VecDeque<(u32, u64)>),
    /// Per value hash, times of matching requests.
    Same(Vec<(u64, VecDeque<u32>)>),
    /// (time, matched) of every request since the first match (bounded).
    Ratio(VecDeque<(u32, bool)>),
}

#[derive(Debug)]
struct Slot {
    rule: u32,
    state: State,
}

#[derive(Debug, Default)]
struct Client {
    last: u32,
    slots: Vec<Slot>,
}

#[derive(Debug)]
pub struct Windows {
    clients: HashMap<ClientKey, Client>,
    cap: usize,
    /// Longest window in seconds: clients idle longer hold nothing useful.
    horizon: u32,
    /// Clients whose window state was dropped early to stay within the cap.
    pub evicted: u64,
}

/// A hash of a field value, for distinct / same windows: keyed per process (no one can aim a
/// collision at it) and 64 bits wide (no collision changes a replay's outcome in practice).
pub fn value_hash(v: &str) -> u64 {
    use std::hash::BuildHasher;
    static KEYS: std::sync::OnceLock<hashbrown::DefaultHashBuilder> = std::sync::OnceLock::new();
    KEYS.get_or_init(hashbrown::DefaultHashBuilder::default).hash_one(v)
}

/// Records a matching request at `t` in a time-ordered ring; fires (and starts over) when
/// `count` requests fall within the window.
fn push_and_fire(times: &mut VecDeque<u32>, t: u32, count: u32, old: impl Fn(u32) -> bool) -> Option<u32> {
    times.push_back(t);
    while times.front().is_some_and(|&x| old(x)) || times.len() > count as usize {
        times.pop_front();
    }
    (times.len() as u32 >= count).then(|| {
        times.clear();
        count
    })
}

impl Windows {
    pub fn new(cap: usize, horizon: u32) -> Windows {
        Windows { clients: HashMap::new(), cap: cap.max(1), horizon: horizon.max(1), evicted: 0 }
    }

    pub fn clients(&self) -> usize {
        self.clients.len()
    }

    /// The client's window state, made room for when the table is full: clients idle past the
    /// longest window go first, then the least recently seen tenth (ties by key), so the
    /// clients active now — the ones being watched — keep their state.
    fn client(&mut self, key: ClientKey, t: u32) -> &mut Client {
        if !self.clients.contains_key(&key) && self.clients.len() >= self.cap {
            let (horizon, before) = (self.horizon, self.clients.len());
            self.clients.retain(|_, c| t.saturating_sub(c.last) <= horizon);
            if self.clients.len() >= self.cap {
                let mut by_age: Vec<(u32, ClientKey)> = self.clients.iter().map(|(k, c)| (c.last, *k)).collect();
                let n = (self.cap / 10).clamp(1, by_age.len());
                by_age.select_nth_unstable(n - 1);
                for (_, k) in &by_age[..n] {
                    self.clients.remove(k);
                }
            }
            self.evicted += (before - self.clients.len()) as u64;
            tracing::debug!(dropped = before - self.clients.len(), "rule windows: made room");
        }
        let c = self.clients.entry(key).or_default();
        c.last = c.last.max(t);
        c
    }

    /// A request of `key` matched window rule `rule`. Returns the count reached when the window's
    /// condition now holds (the window then starts over).
    pub fn hit(&mut self, key: ClientKey, rule: u32, spec: &WindowSpec, t: u32, value: u64) -> Option<u32> {
        let within = spec.within.as_secs().min(u32::MAX as u64) as u32;
        let count = spec.count.max(1);
        let c = self.client(key, t);
        let slot = match c.slots.iter_mut().position(|s| s.rule == rule) {
            Some(i) => &mut c.slots[i],
            None => {
                let state = if spec.ratio.is_some() {
                    State::Ratio(VecDeque::new())
                } else if spec.distinct.is_some() {
                    State::Distinct(VecDeque::new())
                } else if spec.same.is_some() {
                    State::Same(Vec::new())
                } else {
                    State::Count(VecDeque::new())
                };
                c.slots.push(Slot { rule, state });
                c.slots.last_mut().expect("just pushed")
            }
        };
        let old = |x: u32| t.saturating_sub(x) > within;
        match &mut slot.state {
            State::Count(times) => push_and_fire(times, t, count, old),
            State::Distinct(seen) => {
                // kept in time order: a value seen again moves to the back
                if let Some(i) = seen.iter().position(|(_, h)| *h == value) {
                    seen.remove(i);
                }
                seen.push_back((t, value));
                while seen.front().is_some_and(|&(x, _)| old(x)) || seen.len() > count as usize {
                    seen.pop_front();
                }
                (seen.len() as u32 >= count).then(|| {
                    seen.clear();
                    count
                })
            }
            State::Same(per) => {
                let i = match per.iter().position(|(h, _)| *h == value) {
                    Some(i) => i,
                    None => {
                        if per.len() >= MAX_SAME_VALUES {
                            // drop the value seen least recently
                            let stalest = (0..per.len())
                                .min_by_key(|&i| per[i].1.back().copied().unwrap_or(0))
                                .expect("non-empty");
                            per.swap_remove(stalest);
                        }
                        per.push((value, VecDeque::new()));
                        per.len() - 1
                    }
                };
                push_and_fire(&mut per[i].1, t, count, old)
            }
            State::Ratio(events) => {
                events.push_back((t, true));
                let bound = (count as usize).saturating_mul(8).max(64);
                while events.front().is_some_and(|&(x, _)| old(x)) || events.len() > bound {
                    events.pop_front();
                }
                let matched = events.iter().filter(|e| e.1).count() as u32;
                let share = matched as f32 / events.len().max(1) as f32;
                (matched >= count && share >= spec.ratio.unwrap_or(0.0)).then(|| {
                    events.clear();
                    matched
                })
            }
        }
    }

    /// A request of `key` that matched none of the client's ratio rules: it counts in their
    /// denominators. `matched` lists the rules it did match.
    pub fn miss(&mut self, key: ClientKey, t: u32, matched: &[u32]) {
        let Some(c) = self.clients.get_mut(&key) else { return };
        c.last = c.last.max(t);
        for s in &mut c.slots {
            if let State::Ratio(events) = &mut s.state
                && !matched.contains(&s.rule)
            {
                events.push_back((t, false));
                if events.len() > 4096 {
                    events.pop_front();
                }
            }
        }
    }

    /// Keeps state only for rules still present with the same window, renumbered (a reload).
    pub fn remap(&mut self, map: &dyn Fn(u32) -> Option<u32>) {
        for c in self.clients.values_mut() {
            c.slots.retain_mut(|s| match map(s.rule) {
                Some(n) => {
                    s.rule = n;
                    true
                }
                None => false,
            });
        }
        self.clients.retain(|_, c| !c.slots.is_empty());
    }

    /// Drops clients idle since before `t`.
    pub fn forget_before(&mut self, t: u32) {
        self.clients.retain(|_, c| c.last >= t);
    }

    pub fn set_horizon(&mut self, horizon: u32) {
        self.horizon = horizon.max(1);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::spec::KeyField;

    fn spec(count: u32, within: u64) -> WindowSpec {
        WindowSpec { within: Duration::from_secs(within), count, distinct: None, same: None, ratio: None }
    }

    #[test]
    fn counts_within_the_window_only() {
        let mut w = Windows::new(10, 300);
        let s = spec(3, 60);
        let k = (1, 32);
        assert_eq!(w.hit(k, 0, &s, 0, 0), None);
        assert_eq!(w.hit(k, 0, &s, 30, 0), None);
        assert_eq!(w.hit(k, 0, &s, 100, 0), None, "the first two have left the window");
        assert_eq!(w.hit(k, 0, &s, 110, 0), None);
        assert_eq!(w.hit(k, 0, &s, 120, 0), Some(3));
        assert_eq!(w.hit(k, 0, &s, 121, 0), None, "starts over after firing");
    }

    #[test]
    fn distinct_and_same() {
        let mut w = Windows::new(10, 300);
        let d = WindowSpec { distinct: Some(KeyField::Path), ..spec(3, 60) };
        let k = (2, 32);
        assert_eq!(w.hit(k, 1, &d, 0, 7), None);
        assert_eq!(w.hit(k, 1, &d, 1, 7), None, "same value again");
        assert_eq!(w.hit(k, 1, &d, 2, 8), None);
        assert_eq!(w.hit(k, 1, &d, 3, 9), Some(3));
        let s = WindowSpec { same: Some(KeyField::Path), ..spec(2, 60) };
        assert_eq!(w.hit(k, 2, &s, 0, 1), None);
        assert_eq!(w.hit(k, 2, &s, 1, 2), None);
        assert_eq!(w.hit(k, 2, &s, 2, 1), Some(2));
    }

    #[test]
    fn ratio_needs_the_share() {
        let mut w = Windows::new(10, 300);
        let r = WindowSpec { ratio: Some(0.5), ..spec(3, 60) };
        let k = (3, 32);
        assert_eq!(w.hit(k, 0, &r, 0, 0), None);
        for t in 1..6 {
            w.miss(k, t, &[]);
        }
        assert_eq!(w.hit(k, 0, &r, 6, 0), None);
        assert_eq!(w.hit(k, 0, &r, 7, 0), None, "3 of 8: below half");
        assert_eq!(w.hit(k, 0, &r, 8, 0), None, "4 of 9");
        assert_eq!(w.hit(k, 0, &r, 9, 0), Some(5), "5 of 10: half");
    }

    #[test]
    fn client_cap_drops_idle_then_least_recent() {
        let mut w = Windows::new(2, 60);
        let s = spec(2, 60);
        w.hit((1, 32), 0, &s, 0, 0);
        w.hit((2, 32), 0, &s, 5, 0);
        // full, nobody idle past the window: the least recently seen makes room
        assert_eq!(w.hit((3, 32), 0, &s, 10, 0), None);
        assert_eq!((w.clients(), w.evicted), (2, 1));
        assert_eq!(w.hit((2, 32), 0, &s, 11, 0), Some(2), "client 2 kept its state");
        // idle clients go first, all of them
        w.hit((4, 32), 0, &s, 100, 0);
        assert_eq!((w.clients(), w.evicted), (1, 3));
    }
}
