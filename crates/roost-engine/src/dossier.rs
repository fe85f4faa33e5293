//! The file kept on clients worth explaining: those with a verdict, and (while there is room)
//! those with any negative evidence. Holds what the compact per-client state cannot: sample
//! requests, the ledger of non-status evidence, and the verdict's timing.

use std::collections::VecDeque;

use roost_event::{RequestEvent, Timestamp};

use crate::evidence::{Evidence, Source};
use crate::state::Secs;
use crate::verdict::{Class, Sample};

/// A non-good verdict in force.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Held {
    pub since: Secs,
    pub expires: Secs,
    /// The expiry last reported outside (in the change, or the latest renewal).
    pub announced: Secs,
}

/// One source's evidence about a client, accumulated.
#[derive(Clone, Debug)]
pub struct Entry {
    pub source: Source,
    pub hits: u32,
    pub penalty: f32,
    pub first: Secs,
    pub last: Secs,
    /// The latest reason text.
    pub detail: String,
    /// An immediate verdict this source asked for, and until when.
    pub verdict: Option<(Class, Secs)>,
}

#[derive(Clone, Debug, Default)]
pub struct Dossier {
    pub held: Option<Held>,
    /// Offences (times flagged) within the repeat memory, and when the last one was.
    pub offences: u32,
    pub last_offence: Secs,
    pub samples: VecDeque<Sample>,
    pub ledger: Vec<Entry>,
    /// Requests (or other observations) with negative evidence that their status did not
    /// already count as negative.
    pub extra_negatives: u32,
    /// The time of this client's live entry in the expiry heap, if any (at most one is live;
    /// others are stale and dropped when popped).
    pub queued: Option<Secs>,
    /// IPv4: hashes of distinct user agents answered 2xx/3xx (bounded): many means a shared
    /// address (a NAT).
    pub agents: Vec<u32>,
}

const MAX_TARGET: usize = 200;
const MAX_UA: usize = 160;
const MAX_DETAIL: usize = 300;
/// Sources per client kept in the ledger; the weakest is dropped beyond this.
const MAX_LEDGER: usize = 16;

/// `s`, cut to at most `max` bytes (plus an ellipsis) without copying when it fits.
fn bounded(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push('…');
    }
    s
}

pub fn truncate(s: &str, max: usize) -> String {
    // copy no more than fits (plus a char), then cut like `bounded`
    let mut end = s.len().min(max + 4);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    if s.len() <= max { s.to_owned() } else { bounded(s[..end].to_owned(), max) }
}

impl Dossier {
    /// Keeps `ev` as an example; once `keep` are held, at most one more per second.
    pub fn sample(&mut self, ev: &RequestEvent<'_>, keep: usize) {
        if keep == 0 {
            return;
        }
        if self.samples.len() >= keep && self.samples.back().is_some_and(|s| s.at.secs() >= ev.time.secs()) {
            return;
        }
        while self.samples.len() >= keep {
            self.samples.pop_front();
        }
        self.samples.push_back(Sample {
            at: ev.time,
            method: truncate(&ev.method, 16),
            target: truncate(&ev.target(), MAX_TARGET),
            status: ev.status,
            user_agent: ev.user_agent.as_deref().map(|u| truncate(u, MAX_UA)),
        });
    }

    /// Adds evidence to the ledger; an immediate verdict's TTL is multiplied by `ttl_scale`
    /// (repeat offenders are held longer).
    pub fn record(&mut self, e: Evidence, t: Secs, ttl_scale: f32) {
        let until = e
            .verdict
            .map(|(c, ttl)| (c, t.saturating_add((ttl.as_secs_f32() * ttl_scale).min(u32::MAX as f32) as u32)));
        if let Some(en) = self.ledger.iter_mut().find(|en| en.source == e.source) {
            en.hits = en.hits.saturating_add(1);
            en.penalty += e.penalty;
            en.last = en.last.max(t);
            en.detail = bounded(e.detail, MAX_DETAIL);
            en.verdict = match (en.verdict, until) {
                (Some((c1, u1)), Some((c2, u2))) => Some((c1.max(c2), u1.max(u2))),
                (a, b) => a.or(b),
            };
            return;
        }
        if self.ledger.len() >= MAX_LEDGER {
            // Make room: the weakest entry whose immediate verdict (if any) has run out.
            let evictable = (0..self.ledger.len())
                .filter(|&i| self.ledger[i].verdict.is_none_or(|(_, until)| until <= t))
                .min_by(|&a, &b| {
                    self.ledger[a]
                        .penalty
                        .total_cmp(&self.ledger[b].penalty)
                        .then(self.ledger[a].last.cmp(&self.ledger[b].last))
                });
            match evictable {
                Some(i) if until.is_some() || self.ledger[i].penalty <= e.penalty => {
                    self.ledger.swap_remove(i);
                }
                _ => return,
            }
        }
        self.ledger.push(Entry {
            source: e.source,
            hits: 1,
            penalty: e.penalty,
            first: t,
            last: t,
            detail: bounded(e.detail, MAX_DETAIL),
            verdict: until,
        });
    }

    /// A new episode (the client's evidence decayed away): what it did before no longer speaks
    /// against it. Offences are kept for escalation.
    pub fn new_episode(&mut self) {
        self.ledger.clear();
        self.samples.clear();
        self.extra_negatives = 0;
    }

    /// The strongest immediate verdict still in force at `t`.
    pub fn floor(&self, t: Secs) -> Option<(Class, Secs)> {
        self.ledger.iter().filter_map(|e| e.verdict).filter(|&(c, until)| c != Class::Good && until > t).max()
    }

    /// Whether evidence asked for the client to be held good until after `t` (a verified
    /// crawler): it then is, whatever else the evidence says (only an override beats it).
    pub fn exempt(&self, t: Secs) -> bool {
        self.ledger.iter().filter_map(|e| e.verdict).any(|(c, until)| c == Class::Good && until > t)
    }

    /// Observations with negative evidence beyond negative status answers: they count for the
    /// minimum-evidence rule, one per request however many sources spoke about it.
    pub fn penalized_hits(&self) -> u32 {
        self.extra_negatives
    }

    /// Notes a user agent answered well, up to `max` distinct ones.
    pub fn agent(&mut self, ua: &str, max: usize) {
        if self.agents.len() >= max {
            return;
        }
        // FNV-1a over the length and the last 32 bytes (where browsers put their versions):
        // stable across runs (replay is deterministic), cheap, and collisions only undercount
        let tail = &ua.as_bytes()[ua.len().saturating_sub(32)..];
        let h = tail.iter().fold(0x811c_9dc5u32 ^ ua.len() as u32, |h, &b| (h ^ b as u32).wrapping_mul(0x0100_0193));
        if !self.agents.contains(&h) {
            self.agents.push(h);
        }
    }

    pub fn samples_vec(&self) -> Vec<Sample> {
        self.samples.iter().cloned().collect()
    }
}

pub fn ts(s: Secs) -> Timestamp {
    Timestamp::from_secs(s as i64)
}
