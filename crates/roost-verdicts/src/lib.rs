//! The verdict store in Redis: what proxies read to route a request, written by `roost score`.
//!
//! Key schema (prefix `roost:` by default, see [`RedisConfig::prefix`]):
//!
//! - `{prefix}v:{subject}` → a [`VerdictRecord`] as JSON, for every client whose verdict is not
//!   good, with a TTL: the verdict's remaining time plus [`RedisConfig::ttl_grace`]. A scorer that
//!   dies cannot leave a client blocked for good. A client that becomes good again is deleted.
//! - `{prefix}changes` → a stream (`XADD … MAXLEN ~ stream_maxlen`) with one entry per change:
//!   fields `subject`, `verdict`, `expires` (ms, or empty). Proxies load every `v:` key at start
//!   (SCAN), then follow the stream from the ID they loaded at; one whose position fell off the
//!   stream's end loads again.
//! - `{prefix}o:{prefix}` → an [`OverrideEntry`] as JSON for every operator's override in force
//!   (allow, challenge, block an address or a prefix), with a TTL to its end; announced on the
//!   change stream with `kind override`. Proxies judge a client by the longest override prefix
//!   that covers it before its own verdict, as the engine does, so an override holds for clients
//!   no scorer has seen yet. Written by every scorer (they all read the overrides topic whole).
//!
//! Writes are pipelined per batch and idempotent (the same change written twice leaves the same
//! state), so a scorer may repeat a batch after a failure. [`Store::server_restarted`] notices a
//! Redis that came back empty (its `run_id` changed): the scorer then writes every verdict again.

pub mod follow;
mod local;

use std::collections::BTreeMap;
use std::time::Duration;

use redis::{Commands, Connection, RedisError};
use roost_engine::{Class, Timestamp};
use serde::{Deserialize, Serialize};

pub use local::{HISTORIES_KEPT, LocalVerdicts};
/// The values under the keys below: their schema is `roost_wire::redis`.
pub use roost_wire::redis::{HistoryEntry, OverrideEntry, ProxyOutcomes, VerdictRecord};

/// The `[redis]` config section.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://[:password@]host:port[/db]`; empty: Redis is not used.
    pub url: String,
    /// Put before every key roost writes.
    pub prefix: String,
    /// Added to each verdict's remaining time for its key's TTL.
    #[serde(with = "humantime_serde")]
    pub ttl_grace: Duration,
    /// The change stream is trimmed to about this many entries.
    pub stream_maxlen: usize,
    /// Connect and command timeout.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            url: String::new(),
            prefix: "roost:".into(),
            ttl_grace: Duration::from_secs(300),
            stream_maxlen: 100_000,
            timeout: Duration::from_secs(5),
        }
    }
}

/// One write: a verdict as of `now` (event time, for its TTL).
#[derive(Clone, Debug)]
pub struct Write {
    pub record: VerdictRecord,
    pub now: Timestamp,
    /// Also append to the change stream and the subject's history (a resync rewrites keys
    /// without announcing them again).
    pub announce: bool,
    /// Requests kept as examples, for the history (the admin UI shows them).
    pub samples: Vec<roost_engine::Sample>,
}

pub const OUTCOMES_TTL_MS: u64 = 7 * 24 * 3600 * 1000;

/// History entries kept per subject, and for how long after the last one.
pub const HISTORY_LEN: isize = 100;
pub const HISTORY_TTL_MS: u64 = 7 * 24 * 3600 * 1000;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("redis {url}: {what}: {source}")]
    Redis {
        url: String,
        what: &'static str,
        #[source]
        source: RedisError,
    },
    #[error("redis {url}: a stored verdict is not valid JSON ({key}): {source}")]
    Record {
        url: String,
        key: String,
        #[source]
        source: serde_json::Error,
    },
}

/// A connection to the verdict store, reconnecting after failures.
pub struct Store {
    cfg: RedisConfig,
    client: redis::Client,
    conn: Option<Connection>,
    run_id: Option<String>,
}

impl Store {
    pub fn new(cfg: &RedisConfig) -> Result<Store, Error> {
        let client = redis::Client::open(cfg.url.as_str()).map_err(|source| Error::Redis {
            url: redact(&cfg.url),
            what: "parsing the URL",
            source,
        })?;
        Ok(Store { cfg: cfg.clone(), client, conn: None, run_id: None })
    }

    pub fn config(&self) -> &RedisConfig {
        &self.cfg
    }

    fn err(&self, what: &'static str) -> impl FnOnce(RedisError) -> Error + use<> {
        let url = redact(&self.cfg.url);
        move |source| Error::Redis { url, what, source }
    }

    fn conn(&mut self) -> Result<&mut Connection, Error> {
        if self.conn.is_none() {
            let c = self.client.get_connection_with_timeout(self.cfg.timeout).map_err(self.err("connecting"))?;
            c.set_read_timeout(Some(self.cfg.timeout)).map_err(self.err("setting the read timeout"))?;
            c.set_write_timeout(Some(self.cfg.timeout)).map_err(self.err("setting the write timeout"))?;
            self.conn = Some(c);
        }
        Ok(self.conn.as_mut().expect("just connected"))
    }

    /// Runs `f` on the connection; a failure drops the connection so the next call reconnects.
    fn with<T>(
        &mut self,
        what: &'static str,
        f: impl FnOnce(&mut Connection) -> Result<T, RedisError>,
    ) -> Result<T, Error> {
        let map = self.err(what);
        let r = f(self.conn()?);
        if r.is_err() {
            self.conn = None;
        }
        r.map_err(map)
    }

    /// The key of a subject's verdict.
    pub fn key(&self, subject: &str) -> String {
        format!("{}v:{subject}", self.cfg.prefix)
    }

    /// The key of a subject's shadow verdict ("would block"): no proxy reads it.
    pub fn shadow_key(&self, subject: &str) -> String {
        format!("{}s:{subject}", self.cfg.prefix)
    }

    /// Every shadow verdict in force.
    pub fn load_shadow(&mut self) -> Result<Vec<VerdictRecord>, Error> {
        let pattern = format!("{}s:*", self.cfg.prefix);
        self.load_json(&pattern, "scanning shadow verdict keys", "reading shadow verdicts")
    }

    pub fn stream_key(&self) -> String {
        format!("{}changes", self.cfg.prefix)
    }

    /// The key of a subject's history list.
    pub fn history_key(&self, subject: &str) -> String {
        format!("{}h:{subject}", self.cfg.prefix)
    }

    /// The key of a subject's challenge outcomes at the proxies (a hash).
    pub fn outcomes_key(&self, subject: &str) -> String {
        format!("{}px:{subject}", self.cfg.prefix)
    }

    /// The key a redeemed challenge nonce is claimed under (shared by every proxy of a fleet).
    pub fn nonce_key(&self, nonce_hex: &str) -> String {
        format!("{}n:{nonce_hex}", self.cfg.prefix)
    }

    /// Claims a redeemed challenge's nonce for `ttl_ms` (`SET NX PX`): `true` if this is the
    /// first claim anywhere in the fleet, `false` if any proxy claimed it before.
    pub fn claim_nonce(&mut self, nonce_hex: &str, ttl_ms: u64) -> Result<bool, Error> {
        let key = self.nonce_key(nonce_hex);
        let set: Option<String> = self.with("claiming a challenge nonce", |c| {
            redis::cmd("SET").arg(&key).arg(1).arg("NX").arg("PX").arg(ttl_ms.max(1)).query(c)
        })?;
        Ok(set.is_some())
    }

    /// Adds proxies' outcome counts (deltas) to their subjects' hashes, in one pipeline.
    pub fn add_outcomes(&mut self, deltas: &[(String, ProxyOutcomes)]) -> Result<(), Error> {
        if deltas.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for (subject, d) in deltas {
            let key = self.outcomes_key(subject);
            for (field, n) in d.counts() {
                if n > 0 {
                    pipe.hincr(&key, field, n).ignore();
                }
            }
            pipe.cmd("HSET").arg(&key).arg("last").arg(d.last).ignore();
            pipe.pexpire(&key, OUTCOMES_TTL_MS as i64).ignore();
        }
        self.with("writing challenge outcomes", |c| pipe.query::<()>(c))
    }

    /// A subject's challenge outcomes at the proxies, if any were recorded.
    pub fn outcomes(&mut self, subject: &str) -> Result<Option<ProxyOutcomes>, Error> {
        let key = self.outcomes_key(subject);
        let h: BTreeMap<String, i64> =
            self.with("reading challenge outcomes", |c| redis::cmd("HGETALL").arg(&key).query(c))?;
        if h.is_empty() {
            return Ok(None);
        }
        let get = |k: &str| h.get(k).copied().unwrap_or(0).max(0) as u64;
        Ok(Some(ProxyOutcomes {
            issued: get("issued"),
            passed: get("passed"),
            failed: get("failed"),
            cleared: get("cleared"),
            refused: get("refused"),
            last: h.get("last").copied().unwrap_or(0),
        }))
    }

    /// A subject's history, newest first (entries that do not read are skipped).
    pub fn history(&mut self, subject: &str) -> Result<Vec<HistoryEntry>, Error> {
        let key = self.history_key(subject);
        let raw: Vec<String> =
            self.with("reading a history", |c| redis::cmd("LRANGE").arg(&key).arg(0).arg(-1).query(c))?;
        Ok(raw.iter().filter_map(|j| serde_json::from_str(j).ok()).collect())
    }

    /// Writes verdicts in one pipeline: good ones deleted, others set with their TTL.
    pub fn write(&mut self, writes: &[Write]) -> Result<(), Error> {
        if writes.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        let stream = self.stream_key();
        for w in writes {
            // a shadow verdict has its own key and is never announced on the change stream
            // (proxies follow it); its history entry says it was a shadow verdict
            let key = if w.record.shadow { self.shadow_key(&w.record.subject) } else { self.key(&w.record.subject) };
            if w.record.verdict == Class::Good {
                pipe.del(&key).ignore();
            } else {
                let remaining = w.record.expires.map_or(0, |e| (e.0 - w.now.0).max(0)) as u64;
                let ttl = remaining + self.cfg.ttl_grace.as_millis() as u64;
                let json = serde_json::to_string(&w.record).expect("a record serializes");
                pipe.pset_ex(&key, json, ttl.max(1)).ignore();
            }
            if w.announce {
                let hkey = self.history_key(&w.record.subject);
                let entry = HistoryEntry { record: w.record.clone(), samples: w.samples.clone() };
                pipe.lpush(&hkey, serde_json::to_string(&entry).expect("an entry serializes")).ignore();
                pipe.ltrim(&hkey, 0, HISTORY_LEN - 1).ignore();
                pipe.pexpire(&hkey, HISTORY_TTL_MS as i64).ignore();
                if w.record.shadow {
                    continue;
                }
                let expires = w.record.expires.map(|e| e.0.to_string()).unwrap_or_default();
                self.announce(&mut pipe, &stream, &w.record.subject)
                    .arg("verdict")
                    .arg(w.record.verdict.as_str())
                    .arg("expires")
                    .arg(expires)
                    .ignore();
            }
        }
        self.with("writing verdicts", |c| pipe.query::<()>(c))
    }

    /// Starts a change-stream entry for `subject` in `pipe` (add fields to it).
    fn announce<'p>(&self, pipe: &'p mut redis::Pipeline, stream: &str, subject: &str) -> &'p mut redis::Pipeline {
        pipe.cmd("XADD")
            .arg(stream)
            .arg("MAXLEN")
            .arg("~")
            .arg(self.cfg.stream_maxlen)
            .arg("*")
            .arg("subject")
            .arg(subject)
    }

    /// Whether the server is not the one seen last time (restarted, failed over): whatever it
    /// held may be gone. The first call only notes the server.
    pub fn server_restarted(&mut self) -> Result<bool, Error> {
        let info: redis::InfoDict = self.with("reading INFO", |c| redis::cmd("INFO").arg("server").query(c))?;
        let id: Option<String> = info.get("run_id");
        let changed = self.run_id.is_some() && id != self.run_id;
        self.run_id = id;
        Ok(changed)
    }

    /// Every stored verdict, by subject (a full load, as a proxy does at start).
    pub fn load_all(&mut self) -> Result<BTreeMap<String, VerdictRecord>, Error> {
        let pattern = format!("{}v:*", self.cfg.prefix);
        let all: Vec<VerdictRecord> = self.load_json(&pattern, "scanning verdict keys", "reading verdicts")?;
        Ok(all.into_iter().map(|r| (r.subject.clone(), r)).collect())
    }

    /// Every key matching `pattern`, read as JSON (SCAN, then MGET in chunks); keys gone
    /// meanwhile are skipped, a value that does not read is an error.
    fn load_json<T: serde::de::DeserializeOwned>(
        &mut self,
        pattern: &str,
        scanning: &'static str,
        reading: &'static str,
    ) -> Result<Vec<T>, Error> {
        let keys: Vec<String> = self.with(scanning, |c| c.scan_match(pattern)?.collect::<Result<Vec<String>, _>>())?;
        let mut out = Vec::new();
        for chunk in keys.chunks(500) {
            let values: Vec<Option<String>> = self.with(reading, |c| c.mget(chunk))?;
            for (key, v) in chunk.iter().zip(values) {
                let Some(v) = v else { continue }; // expired meanwhile
                out.push(serde_json::from_str(&v).map_err(|source| Error::Record {
                    url: redact(&self.cfg.url),
                    key: key.clone(),
                    source,
                })?);
            }
        }
        Ok(out)
    }
}

/// A position in the change stream (`MS-SEQ`, as Redis numbers stream entries).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StreamPos(pub u64, pub u64);

impl StreamPos {
    pub fn parse(s: &str) -> Option<StreamPos> {
        let (a, b) = s.split_once('-')?;
        Some(StreamPos(a.parse().ok()?, b.parse().ok()?))
    }
}

impl std::fmt::Display for StreamPos {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.0, self.1)
    }
}

/// One entry of the change stream: which subject changed (read its key for the verdict).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    pub pos: StreamPos,
    pub subject: String,
    /// The subject's override changed (`kind override`), not its verdict.
    pub is_override: bool,
}

/// The admin UI's audit log: a stream of JSON entries (`{prefix}audit`), never trimmed by roost.
impl Store {
    pub fn audit_key(&self) -> String {
        format!("{}audit", self.cfg.prefix)
    }

    /// Appends an entry (JSON) to the audit log; returns its stream ID.
    pub fn append_audit(&mut self, entry: &str) -> Result<String, Error> {
        let key = self.audit_key();
        self.with("writing the audit log", |c| redis::cmd("XADD").arg(&key).arg("*").arg("entry").arg(entry).query(c))
    }

    /// The newest `count` audit entries, newest first: (stream ID, JSON).
    pub fn recent_audit(&mut self, count: usize) -> Result<Vec<(String, String)>, Error> {
        let key = self.audit_key();
        let r: redis::streams::StreamRangeReply = self.with("reading the audit log", |c| {
            redis::cmd("XREVRANGE").arg(&key).arg("+").arg("-").arg("COUNT").arg(count).query(c)
        })?;
        Ok(r.ids.into_iter().map(|e| (e.id.clone(), e.get::<String>("entry").unwrap_or_default())).collect())
    }
}

/// Operators' overrides, as scorers write them and proxies read them.
impl Store {
    pub fn override_key(&self, prefix: &str) -> String {
        format!("{}o:{prefix}", self.cfg.prefix)
    }

    /// Puts overrides in force (`Some`) or ends them (`None`), each announced on the change
    /// stream. `now` (Unix ms) sets each key's TTL to the override's end; one already over is
    /// deleted. Idempotent: every scorer writes the same.
    pub fn write_overrides(&mut self, entries: &[(String, Option<OverrideEntry>)], now: i64) -> Result<(), Error> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        let stream = self.stream_key();
        for (prefix, e) in entries {
            let key = self.override_key(prefix);
            match e {
                Some(e) if e.until.is_none_or(|u| u.0 > now) => {
                    let json = serde_json::to_string(e).expect("an override serializes");
                    match e.until {
                        Some(u) => pipe.pset_ex(&key, json, (u.0 - now).max(1) as u64).ignore(),
                        None => pipe.set(&key, json).ignore(),
                    };
                }
                _ => {
                    pipe.del(&key).ignore();
                }
            }
            self.announce(&mut pipe, &stream, prefix).arg("kind").arg("override").ignore();
        }
        self.with("writing overrides", |c| pipe.query::<()>(c))
    }

    /// Every override in force (a full load, as a proxy does at start).
    pub fn load_overrides(&mut self) -> Result<Vec<OverrideEntry>, Error> {
        let pattern = format!("{}o:*", self.cfg.prefix);
        self.load_json(&pattern, "scanning override keys", "reading overrides")
    }

    /// Ends every stored override whose prefix `keep` refuses (a store restored from an old
    /// snapshot may hold ones removed since); returns how many.
    pub fn retain_overrides(&mut self, keep: impl Fn(&str) -> bool, now: i64) -> Result<usize, Error> {
        let stale: Vec<(String, Option<OverrideEntry>)> =
            self.load_overrides()?.into_iter().filter(|e| !keep(&e.prefix)).map(|e| (e.prefix, None)).collect();
        self.write_overrides(&stale, now)?;
        Ok(stale.len())
    }

    /// The override on `prefix`, if one is in force.
    pub fn get_override(&mut self, prefix: &str) -> Result<Option<OverrideEntry>, Error> {
        let key = self.override_key(prefix);
        let v: Option<String> = self.with("reading an override", |c| c.get(&key))?;
        v.map(|v| serde_json::from_str(&v).map_err(|source| Error::Record { url: redact(&self.cfg.url), key, source }))
            .transpose()
    }
}

/// Reading the change stream, as proxies do.
impl Store {
    /// The last entry's position (`0-0` when the stream is empty or missing): load everything
    /// after reading it, then follow from it, and no change can fall in between.
    pub fn last_change(&mut self) -> Result<StreamPos, Error> {
        let key = self.stream_key();
        self.edge_change(&key, "XREVRANGE", "+", "-")
    }

    /// The oldest entry still in the stream (`0-0` when empty): a follower whose position is
    /// older than this may have missed trimmed changes and loads everything again.
    pub fn first_change(&mut self) -> Result<StreamPos, Error> {
        let key = self.stream_key();
        self.edge_change(&key, "XRANGE", "-", "+")
    }

    /// How many entries were ever added to the stream and how many it holds (Redis 7 and
    /// later; `None` from older servers or when there is no stream yet): a follower that has
    /// read none while more were added than are held missed trimmed ones.
    pub fn stream_counts(&mut self) -> Result<Option<(u64, u64)>, Error> {
        let key = self.stream_key();
        let info: Option<std::collections::HashMap<String, redis::Value>> =
            self.with("reading the change stream's info", |c| {
                match redis::cmd("XINFO").arg("STREAM").arg(&key).query(c) {
                    Ok(m) => Ok(Some(m)),
                    Err(e) if e.to_string().contains("no such key") => Ok(None),
                    Err(e) => Err(e),
                }
            })?;
        let get = |m: &std::collections::HashMap<String, redis::Value>, k: &str| {
            m.get(k).and_then(|v| redis::from_redis_value_ref::<u64>(v).ok())
        };
        Ok(info.and_then(|m| Some((get(&m, "entries-added")?, get(&m, "length")?))))
    }

    fn edge_change(&mut self, key: &str, cmd: &str, a: &str, b: &str) -> Result<StreamPos, Error> {
        let r: redis::streams::StreamRangeReply = self.with("reading the change stream", |c| {
            redis::cmd(cmd).arg(key).arg(a).arg(b).arg("COUNT").arg(1).query(c)
        })?;
        Ok(r.ids.first().and_then(|e| StreamPos::parse(&e.id)).unwrap_or_default())
    }

    /// Changes after `after`, waiting up to `block` for the first (at most `count`).
    pub fn read_changes(&mut self, after: StreamPos, block: Duration, count: usize) -> Result<Vec<Change>, Error> {
        let key = self.stream_key();
        let reply: Option<redis::streams::StreamReadReply> = self.with("following the change stream", |c| {
            redis::cmd("XREAD")
                .arg("COUNT")
                .arg(count)
                .arg("BLOCK")
                .arg(block.as_millis() as u64)
                .arg("STREAMS")
                .arg(&key)
                .arg(after.to_string())
                .query(c)
        })?;
        let mut out = Vec::new();
        for k in reply.map(|r| r.keys).unwrap_or_default() {
            for e in k.ids {
                let Some(pos) = StreamPos::parse(&e.id) else { continue };
                let subject: Option<String> = e.get("subject");
                let kind: Option<String> = e.get("kind");
                out.push(Change {
                    pos,
                    subject: subject.unwrap_or_default(),
                    is_override: kind.as_deref() == Some("override"),
                });
            }
        }
        Ok(out)
    }

    /// The stored verdicts of these subjects (`None`: good, or lapsed); a record that is not
    /// valid JSON is an error of its own, the others still read.
    #[allow(clippy::type_complexity)]
    pub fn get_many(&mut self, subjects: &[&str]) -> Result<Vec<Result<Option<VerdictRecord>, Error>>, Error> {
        if subjects.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = subjects.iter().map(|s| self.key(s)).collect();
        let values: Vec<Option<String>> = self.with("reading verdicts", |c| c.mget(&keys))?;
        let url = redact(&self.cfg.url);
        Ok(keys
            .into_iter()
            .zip(values)
            .map(|(key, v)| {
                v.map(|v| serde_json::from_str(&v).map_err(|source| Error::Record { url: url.clone(), key, source }))
                    .transpose()
            })
            .collect())
    }
}

/// The URL without its password, for messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://***@{}", &url[..s], &url[at + 1..]),
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords() {
        assert_eq!(redact("redis://:secret@10.0.0.1:6379/0"), "redis://***@10.0.0.1:6379/0");
        assert_eq!(redact("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
    }
}
