//! Listings as engine evidence: the [`Annotator`] the engine consults when a client shows up.

use std::net::IpAddr;

use roost_engine::{Annotator, Evidence, Source, SourceKind};
use roost_event::{Timestamp, civil_from_days};

use crate::index::FeedHandle;

/// Turns "listed in spamhaus_drop since 2026-11-20" into evidence, one per listing feed.
pub struct FeedAnnotator {
    handle: FeedHandle,
    /// Feeds on trial (`feeds.shadow`): their listings are shadow evidence.
    shadow: Vec<String>,
}

impl FeedAnnotator {
    pub fn new(handle: FeedHandle) -> FeedAnnotator {
        FeedAnnotator { handle, shadow: Vec::new() }
    }

    /// Listings of these feeds become shadow evidence (recorded and shown, never enforced).
    pub fn shadow(mut self, feeds: Vec<String>) -> FeedAnnotator {
        self.shadow = feeds;
        self
    }
}

/// `YYYY-MM-DD` (UTC) of a timestamp.
pub fn date(t: Timestamp) -> String {
    let (y, m, d) = civil_from_days(t.secs().div_euclid(86_400));
    format!("{y:04}-{m:02}-{d:02}")
}

impl Annotator for FeedAnnotator {
    fn name(&self) -> &str {
        "feeds"
    }

    fn annotate(&self, ip: IpAddr, _now: Timestamp, out: &mut Vec<Evidence>) {
        let index = self.handle.load();
        for l in index.lookup(ip) {
            let feed = index.feed(l);
            if feed.penalty == 0.0 && feed.verdict.is_none() {
                continue;
            }
            let mut detail = format!("listed in {} since {} ({}", feed.name, date(l.since), l.prefix);
            if let Some(d) = index.detail(l) {
                detail.push_str(", ");
                detail.push_str(d);
            }
            detail.push(')');
            out.push(Evidence {
                source: Source::new(SourceKind::Feed, feed.name.clone())
                    .in_shadow(!self.shadow.is_empty() && self.shadow.iter().any(|f| **f == *feed.name)),
                penalty: feed.penalty,
                verdict: feed.verdict,
                detail,
            });
        }
    }
}
