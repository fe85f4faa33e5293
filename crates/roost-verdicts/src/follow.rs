//! Following the verdict store, as proxies and the admin UI do: note the change stream's last
//! position, load every verdict and override, then follow the stream from that position and
//! re-read the key of each subject that changed. After a position that fell off the trimmed
//! stream, a Redis that restarted (its `run_id` changed) or an error, the next update is a
//! full load again, so a follower never misses a change it was not told about.

use std::time::{Duration, Instant};

use crate::{Error, OverrideEntry, RedisConfig, Store, StreamPos, VerdictRecord};

/// How often the server's identity is checked.
const IDENTITY_CHECK: Duration = Duration::from_secs(2);

/// What a follower learned.
#[derive(Debug)]
pub enum Update {
    /// Everything the store holds: replaces what the follower had.
    Full { verdicts: Vec<VerdictRecord>, overrides: Vec<OverrideEntry> },
    /// What changed since the last update (`None`: no longer stored — good again, or ended).
    Changed {
        verdicts: Vec<(String, Option<VerdictRecord>)>,
        overrides: Vec<(String, Option<OverrideEntry>)>,
        /// Change-stream entries read.
        entries: usize,
        /// Stored records that did not read (skipped; counted, logged by the caller).
        unreadable: Vec<Error>,
        /// How far behind the newest entry read is (ms), 0 when nothing came.
        lag_ms: i64,
    },
}

pub struct StoreFollower {
    store: Store,
    pos: StreamPos,
    loaded: bool,
    checked: Instant,
}

impl StoreFollower {
    /// Connects lazily; the first [`StoreFollower::next`] loads everything.
    pub fn new(cfg: &RedisConfig) -> Result<StoreFollower, Error> {
        Ok(StoreFollower { store: Store::new(cfg)?, pos: StreamPos::default(), loaded: false, checked: Instant::now() })
    }

    /// The next update: a full load when one is due, otherwise the changes that come within
    /// `block` (an empty `Changed` when none did). After an error the next call loads again.
    pub fn next(&mut self, block: Duration, now_ms: i64) -> Result<Update, Error> {
        let r = self.step(block, now_ms);
        if r.is_err() {
            self.loaded = false;
        }
        r
    }

    fn step(&mut self, block: Duration, now_ms: i64) -> Result<Update, Error> {
        if self.loaded && self.checked.elapsed() >= IDENTITY_CHECK {
            self.checked = Instant::now();
            if self.store.server_restarted()? {
                tracing::info!("the verdict store restarted: loading everything again");
                self.loaded = false;
            }
        }
        if !self.loaded {
            return self.load();
        }
        let changes = self.store.read_changes(self.pos, block, 1000)?;
        let mut verdicts = Vec::new();
        let mut overrides = Vec::new();
        let mut unreadable = Vec::new();
        let Some(last) = changes.last().map(|c| c.pos) else {
            return Ok(Update::Changed { verdicts, overrides, entries: 0, unreadable, lag_ms: 0 });
        };
        let trimmed = if self.pos == StreamPos::default() {
            // the stream was empty at the load: were more added than it holds now?
            self.store.stream_counts()?.is_some_and(|(added, held)| added > held)
        } else {
            // the oldest entry is newer than the position
            self.store.first_change()? > self.pos
        };
        if trimmed {
            // `pos` itself was trimmed, and maybe entries after it that this read cannot return
            tracing::info!(pos = %self.pos, "fell behind the trimmed change stream: loading everything again");
            return self.load();
        }
        for c in changes.iter().filter(|c| c.is_override && !c.subject.is_empty()) {
            match self.store.get_override(&c.subject) {
                Ok(e) => overrides.push((c.subject.clone(), e)),
                Err(e @ Error::Record { .. }) => unreadable.push(e),
                Err(e) => return Err(e),
            }
        }
        let subjects: Vec<&str> =
            changes.iter().filter(|c| !c.is_override && !c.subject.is_empty()).map(|c| c.subject.as_str()).collect();
        for (subject, r) in subjects.iter().zip(self.store.get_many(&subjects)?) {
            match r {
                Ok(rec) => verdicts.push((subject.to_string(), rec)),
                Err(e) => unreadable.push(e),
            }
        }
        self.pos = last;
        let lag_ms = (now_ms - last.0 as i64).max(0);
        Ok(Update::Changed { verdicts, overrides, entries: changes.len(), unreadable, lag_ms })
    }

    fn load(&mut self) -> Result<Update, Error> {
        self.store.server_restarted()?; // notes the server loaded from
        self.checked = Instant::now();
        let pos = self.store.last_change()?;
        let verdicts = self.store.load_all()?.into_values().collect();
        let overrides = self.store.load_overrides()?;
        self.pos = pos;
        self.loaded = true;
        Ok(Update::Full { verdicts, overrides })
    }

    /// The position changes are followed from.
    pub fn position(&self) -> StreamPos {
        self.pos
    }
}
