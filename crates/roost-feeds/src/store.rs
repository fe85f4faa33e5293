//! What each feed currently lists, since when; the diff between a fetch and that; and the
//! records that carry both through a compacted Kafka topic.
//!
//! Topic records (`roost.feeds`, compacted, one partition so a feed's `meta` follows its entries):
//!
//! | key | value (JSON, `"v": 1`) |
//! |---|---|
//! | `entry/{feed}/{prefix}` | `{"v":1,"feed":…,"prefix":"1.10.16.0/20","since":<unix ms>,"detail":"SBL256894"}`; a tombstone (no value) when the feed stops listing it |
//! | `meta/{feed}` | `{"v":1,"feed":…,"entries":N,"fetched_at":<unix ms>,"etag":…,"last_modified":…,"sha256":…}`, written after the feed's entries |
//!
//! A reader that applies every record in order, last write per key winning, converges on the
//! publisher's set whatever it read before.

use std::borrow::Cow;
use std::collections::BTreeMap;

use ipnetwork::IpNetwork;
use roost_event::Timestamp;
use serde::{Deserialize, Serialize};

use crate::parse::FeedEntry;

/// Schema version of the topic's values.
pub const SCHEMA_VERSION: u32 = 1;

/// When an entry was first seen listed, and the publisher's note.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listed {
    pub since: Timestamp,
    pub detail: Option<Box<str>>,
}

/// A feed's state: its entries and the last accepted fetch.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FeedContents {
    pub entries: BTreeMap<IpNetwork, Listed>,
    pub meta: Option<Meta>,
}

/// About the last accepted fetch.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    pub v: u32,
    pub feed: String,
    pub entries: usize,
    pub fetched_at: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_modified: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

/// The difference between what is listed and an accepted fetch.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Diff {
    pub added: Vec<(IpNetwork, Listed)>,
    /// Entries whose detail changed (their `since` is kept).
    pub changed: Vec<(IpNetwork, Listed)>,
    pub removed: Vec<IpNetwork>,
}

impl Diff {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.changed.is_empty() && self.removed.is_empty()
    }
}

impl FeedContents {
    /// What changes if the feed now lists `entries` (fetched at `now`): new entries are listed
    /// since `now`, kept ones keep their `since`.
    pub fn diff(&self, entries: &[FeedEntry], now: Timestamp) -> Diff {
        let mut diff = Diff::default();
        let mut fresh: BTreeMap<IpNetwork, &FeedEntry> = BTreeMap::new();
        for e in entries {
            fresh.insert(e.net, e);
        }
        for (net, e) in &fresh {
            match self.entries.get(net) {
                None => diff.added.push((*net, Listed { since: now, detail: e.detail.clone() })),
                Some(old) if old.detail != e.detail => {
                    diff.changed.push((*net, Listed { since: old.since, detail: e.detail.clone() }))
                }
                Some(_) => {}
            }
        }
        diff.removed = self.entries.keys().filter(|n| !fresh.contains_key(n)).copied().collect();
        diff
    }

    pub fn apply(&mut self, diff: &Diff) {
        for n in &diff.removed {
            self.entries.remove(n);
        }
        for (n, l) in diff.added.iter().chain(&diff.changed) {
            self.entries.insert(*n, l.clone());
        }
    }
}

/// Every feed's contents, keyed by feed name.
#[derive(Clone, Debug, Default)]
pub struct FeedStore {
    pub feeds: BTreeMap<String, FeedContents>,
}

/// One record of the feeds topic.
#[derive(Clone, Debug, PartialEq)]
pub enum FeedRecord {
    Entry { feed: String, net: IpNetwork, listed: Listed },
    Removed { feed: String, net: IpNetwork },
    Meta(Meta),
}

#[derive(Serialize, Deserialize)]
struct EntryValue<'a> {
    v: u32,
    #[serde(borrow)]
    feed: Cow<'a, str>,
    prefix: IpNetwork,
    since: i64,
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    detail: Option<Cow<'a, str>>,
}

/// Why a topic record could not be read.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("unknown key {0:?}")]
    Key(String),
    #[error("value of {key:?}: {why}")]
    Value { key: String, why: String },
}

impl FeedRecord {
    pub fn key(&self) -> String {
        match self {
            FeedRecord::Entry { feed, net, .. } | FeedRecord::Removed { feed, net } => format!("entry/{feed}/{net}"),
            FeedRecord::Meta(m) => format!("meta/{}", m.feed),
        }
    }

    /// The value, or `None` for a tombstone.
    pub fn value(&self) -> Option<Vec<u8>> {
        match self {
            FeedRecord::Entry { feed, net, listed } => serde_json::to_vec(&EntryValue {
                v: SCHEMA_VERSION,
                feed: Cow::Borrowed(feed),
                prefix: *net,
                since: listed.since.0,
                detail: listed.detail.as_deref().map(Cow::Borrowed),
            })
            .ok(),
            FeedRecord::Removed { .. } => None,
            FeedRecord::Meta(m) => serde_json::to_vec(m).ok(),
        }
    }

    pub fn decode(key: &[u8], value: Option<&[u8]>) -> Result<FeedRecord, RecordError> {
        let key = String::from_utf8_lossy(key);
        let bad = |why: String| RecordError::Value { key: key.to_string(), why };
        if let Some(rest) = key.strip_prefix("entry/") {
            let (feed, net) = rest.split_once('/').ok_or_else(|| RecordError::Key(key.to_string()))?;
            let net: IpNetwork = net.parse().map_err(|_| RecordError::Key(key.to_string()))?;
            let Some(value) = value else {
                return Ok(FeedRecord::Removed { feed: feed.to_owned(), net });
            };
            let v: EntryValue<'_> = serde_json::from_slice(value).map_err(|e| bad(e.to_string()))?;
            if v.feed != feed || v.prefix != net {
                return Err(bad("the value names another entry than the key".into()));
            }
            Ok(FeedRecord::Entry {
                feed: feed.to_owned(),
                net,
                listed: Listed { since: Timestamp(v.since), detail: v.detail.map(|d| d.into()) },
            })
        } else if let Some(feed) = key.strip_prefix("meta/") {
            let Some(value) = value else {
                return Ok(FeedRecord::Meta(Meta { v: SCHEMA_VERSION, feed: feed.to_owned(), ..Meta::default() }));
            };
            let m: Meta = serde_json::from_slice(value).map_err(|e| bad(e.to_string()))?;
            if m.feed != feed {
                return Err(bad("the value names another feed than the key".into()));
            }
            Ok(FeedRecord::Meta(m))
        } else {
            Err(RecordError::Key(key.to_string()))
        }
    }

    /// The records that publish `diff` for `feed`, the meta record last.
    pub fn publish(feed: &str, diff: &Diff, meta: Meta) -> Vec<FeedRecord> {
        let mut out = Vec::with_capacity(diff.added.len() + diff.changed.len() + diff.removed.len() + 1);
        for (net, listed) in diff.added.iter().chain(&diff.changed) {
            out.push(FeedRecord::Entry { feed: feed.to_owned(), net: *net, listed: listed.clone() });
        }
        for net in &diff.removed {
            out.push(FeedRecord::Removed { feed: feed.to_owned(), net: *net });
        }
        out.push(FeedRecord::Meta(meta));
        out
    }
}

impl FeedStore {
    /// Applies one topic record.
    pub fn apply(&mut self, record: FeedRecord) {
        match record {
            FeedRecord::Entry { feed, net, listed } => {
                self.feeds.entry(feed).or_default().entries.insert(net, listed);
            }
            FeedRecord::Removed { feed, net } => {
                if let Some(c) = self.feeds.get_mut(&feed) {
                    c.entries.remove(&net);
                }
            }
            FeedRecord::Meta(m) => {
                let c = self.feeds.entry(m.feed.clone()).or_default();
                c.meta = (m.fetched_at != 0).then_some(m);
            }
        }
    }

    /// Total entries over all feeds.
    pub fn len(&self) -> usize {
        self.feeds.values().map(|c| c.entries.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::def::FeedFormat;
    use crate::parse::parse;

    #[test]
    fn diff_keeps_since_and_records_round_trip() {
        let mut c = FeedContents::default();
        let first = parse(FeedFormat::Spamhaus, None, b"1.10.16.0/20 ; SBL1\n1.19.0.0/16 ; SBL2\n").entries;
        let d1 = c.diff(&first, Timestamp(1000));
        assert_eq!((d1.added.len(), d1.removed.len()), (2, 0));
        c.apply(&d1);
        let second = parse(FeedFormat::Spamhaus, None, b"1.10.16.0/20 ; SBL1b\n5.0.0.0/16 ; SBL3\n").entries;
        let d2 = c.diff(&second, Timestamp(2000));
        assert_eq!(
            d2.added,
            vec![("5.0.0.0/16".parse().unwrap(), Listed { since: Timestamp(2000), detail: Some("SBL3".into()) })]
        );
        assert_eq!(d2.changed[0].1.since, Timestamp(1000));
        assert_eq!(d2.removed, vec!["1.19.0.0/16".parse::<IpNetwork>().unwrap()]);
        c.apply(&d2);
        assert!(c.diff(&second, Timestamp(3000)).is_empty());

        // Publishing both diffs through records rebuilds the same contents.
        let meta = Meta { v: 1, feed: "drop".into(), entries: 2, fetched_at: 2000, ..Meta::default() };
        let mut store = FeedStore::default();
        for r in
            FeedRecord::publish("drop", &d1, meta.clone()).into_iter().chain(FeedRecord::publish("drop", &d2, meta))
        {
            let (k, v) = (r.key(), r.value());
            let back = FeedRecord::decode(k.as_bytes(), v.as_deref()).unwrap();
            assert_eq!(back, r);
            store.apply(back);
        }
        assert_eq!(store.feeds["drop"].entries, c.entries);
        assert_eq!(store.feeds["drop"].meta.as_ref().unwrap().entries, 2);
    }

    #[test]
    fn details_with_escapes_round_trip() {
        let r = FeedRecord::Entry {
            feed: "te".into(),
            net: "192.0.2.1/32".parse().unwrap(),
            listed: Listed { since: Timestamp(5), detail: Some("MALICIOUS: \"quoted\" \u{e9}\n".into()) },
        };
        assert_eq!(FeedRecord::decode(r.key().as_bytes(), r.value().as_deref()).unwrap(), r);
    }

    #[test]
    fn bad_records_are_errors() {
        assert!(FeedRecord::decode(b"what/x", Some(b"{}")).is_err());
        assert!(FeedRecord::decode(b"entry/drop/not-a-net", None).is_err());
        assert!(FeedRecord::decode(b"entry/drop/1.2.3.4/32", Some(b"{")).is_err());
        let other = br#"{"v":1,"feed":"other","prefix":"1.2.3.4/32","since":1}"#;
        assert!(FeedRecord::decode(b"entry/drop/1.2.3.4/32", Some(other)).is_err());
    }
}
