//! The longest-prefix-match index over every feed: "which feeds list this address, since when"
//! in one trie lookup.
//!
//! Each prefix in the trie maps to the full set of listings that cover it — its own and those
//! of every broader prefix, computed once at build time — so the longest match alone answers
//! the question. Sets are interned (many prefixes share one). The index is immutable: a feed
//! update builds a new one off the scoring thread and swaps it in (`FeedHandle`), so lookups
//! never wait.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use hashbrown::HashMap;
use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};
use prefix_trie::PrefixMap;
use roost_engine::Class;
use roost_event::Timestamp;

use crate::def::FeedDef;
use crate::store::FeedContents;

/// One feed listing an address: which feed, through which of its prefixes, since when.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Listing {
    /// Index into [`FeedIndex::feeds`].
    pub feed: u16,
    pub prefix: IpNetwork,
    pub since: Timestamp,
}

/// A feed as the index knows it: its name and effect.
#[derive(Clone, Debug, PartialEq)]
pub struct IndexedFeed {
    pub name: Arc<str>,
    pub penalty: f32,
    pub verdict: Option<(Class, Duration)>,
    pub entries: usize,
    /// When its contents were last fetched (unix ms), if known.
    pub fetched_at: Option<Timestamp>,
}

impl IndexedFeed {
    pub fn from_def(def: &FeedDef) -> IndexedFeed {
        IndexedFeed {
            name: def.name.as_str().into(),
            penalty: def.effect.penalty,
            verdict: def.verdict(),
            entries: 0,
            fetched_at: None,
        }
    }
}

/// The immutable index.
#[derive(Debug, Default)]
pub struct FeedIndex {
    pub feeds: Vec<IndexedFeed>,
    v4: PrefixMap<Ipv4Network, u32>,
    v6: PrefixMap<Ipv6Network, u32>,
    sets: Vec<Box<[Listing]>>,
    details: HashMap<(u16, IpNetwork), Box<str>>,
}

impl FeedIndex {
    /// Builds the index over `feeds` (each with its contents).
    pub fn build<'a>(feeds: impl IntoIterator<Item = (IndexedFeed, &'a FeedContents)>) -> FeedIndex {
        let mut index = FeedIndex::default();
        let mut all: Vec<(IpNetwork, Listing)> = Vec::new();
        for (mut info, contents) in feeds {
            let id = index.feeds.len() as u16;
            info.entries = contents.entries.len();
            if info.fetched_at.is_none() {
                info.fetched_at = contents.meta.as_ref().map(|m| Timestamp(m.fetched_at));
            }
            index.feeds.push(info);
            for (net, listed) in &contents.entries {
                all.push((*net, Listing { feed: id, prefix: *net, since: listed.since }));
                if let Some(d) = &listed.detail {
                    index.details.insert((id, *net), d.clone());
                }
            }
            if index.feeds.len() == u16::MAX as usize {
                break;
            }
        }
        // Broader prefixes first, so each prefix finds its covering set already in the trie.
        all.sort_unstable_by_key(|(n, l)| (n.is_ipv6(), n.prefix(), *n, l.feed));
        let mut interned: HashMap<Box<[Listing]>, u32> = HashMap::new();
        let mut i = 0;
        let mut set: Vec<Listing> = Vec::new();
        while i < all.len() {
            let net = all[i].0;
            let mut j = i;
            while j < all.len() && all[j].0 == net {
                j += 1;
            }
            let parent = match net {
                IpNetwork::V4(n) => index.v4.get_lpm(&n).map(|(_, s)| *s),
                IpNetwork::V6(n) => index.v6.get_lpm(&n).map(|(_, s)| *s),
            };
            set.clear();
            set.extend(all[i..j].iter().map(|(_, l)| *l));
            if let Some(p) = parent {
                // A feed's more specific prefix stands for it; other feeds' broader ones stay.
                let own: Vec<u16> = set.iter().map(|l| l.feed).collect();
                set.extend(index.sets[p as usize].iter().filter(|l| !own.contains(&l.feed)));
            }
            set.sort_unstable_by_key(|l| l.feed);
            let next = index.sets.len() as u32;
            let id = *interned.entry(set.clone().into_boxed_slice()).or_insert(next);
            if id == next {
                index.sets.push(set.clone().into_boxed_slice());
            }
            match net {
                IpNetwork::V4(n) => index.v4.insert(n, id),
                IpNetwork::V6(n) => index.v6.insert(n, id),
            };
            i = j;
        }
        index
    }

    /// The feeds listing `ip` (empty if none), ordered by feed.
    pub fn lookup(&self, ip: IpAddr) -> &[Listing] {
        let id = match ip {
            IpAddr::V4(a) => self.v4.get_lpm(&Ipv4Network::from(a)).map(|(_, s)| *s),
            IpAddr::V6(a) => self.v6.get_lpm(&Ipv6Network::from(a)).map(|(_, s)| *s),
        };
        id.map_or(&[], |id| &self.sets[id as usize])
    }

    /// The publisher's note on one listing (an SBL id, a malware family), if any.
    pub fn detail(&self, l: &Listing) -> Option<&str> {
        self.details.get(&(l.feed, l.prefix)).map(|d| &**d)
    }

    pub fn feed(&self, l: &Listing) -> &IndexedFeed {
        &self.feeds[l.feed as usize]
    }

    /// Prefixes indexed (distinct over all feeds).
    pub fn prefixes(&self) -> usize {
        self.v4.len() + self.v6.len()
    }

    /// Bytes the index holds (tries, interned sets, details), for metrics and benchmarks.
    pub fn mem_size(&self) -> usize {
        let sets: usize = self.sets.iter().map(|s| size_of::<Box<[Listing]>>() + size_of_val(&**s)).sum();
        let details: usize =
            self.details.iter().map(|(_, d)| size_of::<((u16, IpNetwork), Box<str>)>() + 1 + d.len()).sum::<usize>()
                + self.details.capacity() / 8;
        self.v4.mem_size() + self.v6.mem_size() + sets + details
    }
}

/// The shared, swappable index that annotators read and loaders replace.
#[derive(Clone, Debug, Default)]
pub struct FeedHandle(Arc<ArcSwap<FeedIndex>>);

impl FeedHandle {
    pub fn new(index: FeedIndex) -> FeedHandle {
        FeedHandle(Arc::new(ArcSwap::from_pointee(index)))
    }

    pub fn load(&self) -> arc_swap::Guard<Arc<FeedIndex>> {
        self.0.load()
    }

    pub fn store(&self, index: FeedIndex) {
        self.0.store(Arc::new(index));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Listed;
    use proptest::prelude::*;

    fn contents(nets: &[(&str, i64)]) -> FeedContents {
        let mut c = FeedContents::default();
        for (n, since) in nets {
            c.entries.insert(n.parse().unwrap(), Listed { since: Timestamp(*since), detail: None });
        }
        c
    }

    fn feed(name: &str) -> IndexedFeed {
        IndexedFeed { name: name.into(), penalty: 1.0, verdict: None, entries: 0, fetched_at: None }
    }

    fn names(ix: &FeedIndex, ip: &str) -> Vec<String> {
        ix.lookup(ip.parse().unwrap()).iter().map(|l| format!("{}:{}", ix.feed(l).name, l.prefix)).collect()
    }

    #[test]
    fn nested_and_overlapping_feeds() {
        let a = contents(&[("1.0.0.0/8", 1), ("1.2.3.0/24", 2), ("2001:db8::/32", 3)]);
        let b = contents(&[("1.2.0.0/16", 4), ("1.2.3.4/32", 5)]);
        let ix = FeedIndex::build([(feed("a"), &a), (feed("b"), &b)]);
        assert_eq!(names(&ix, "1.2.3.4"), ["a:1.2.3.0/24", "b:1.2.3.4/32"]);
        assert_eq!(names(&ix, "1.2.3.5"), ["a:1.2.3.0/24", "b:1.2.0.0/16"]);
        assert_eq!(names(&ix, "1.2.4.1"), ["a:1.0.0.0/8", "b:1.2.0.0/16"]);
        assert_eq!(names(&ix, "1.9.9.9"), ["a:1.0.0.0/8"]);
        assert!(names(&ix, "2.0.0.1").is_empty());
        assert_eq!(names(&ix, "2001:db8::1"), ["a:2001:db8::/32"]);
        assert!(names(&ix, "2001:db9::1").is_empty());
        assert_eq!(ix.lookup("1.2.3.4".parse().unwrap())[1].since, Timestamp(5));
        assert_eq!(ix.prefixes(), 5);
        assert!(ix.mem_size() > 0);
    }

    proptest! {
        /// The index agrees with a scan over every listing.
        #[test]
        fn agrees_with_a_scan(
            feeds in prop::collection::vec(prop::collection::vec((any::<u32>(), 8u8..=32), 0..40), 1..4),
            probes in prop::collection::vec(any::<u32>(), 50),
        ) {
            let contents: Vec<FeedContents> = feeds.iter().map(|nets| {
                let mut c = FeedContents::default();
                for (i, (a, len)) in nets.iter().enumerate() {
                    let n = Ipv4Network::new((*a).into(), *len).unwrap();
                    let n = IpNetwork::V4(Ipv4Network::new(n.network(), *len).unwrap());
                    c.entries.insert(n, Listed { since: Timestamp(i as i64), detail: None });
                }
                c
            }).collect();
            let ix = FeedIndex::build(contents.iter().enumerate().map(|(i, c)| (feed(&format!("f{i}")), c)));
            // Probe inside listed networks too, not only at random.
            let extra = contents.iter().flat_map(|c| c.entries.keys().map(|n| u32::from(match n { IpNetwork::V4(v) => v.network(), _ => unreachable!() })));
            for p in probes.into_iter().chain(extra) {
                let ip = IpAddr::V4(p.into());
                let mut want = Vec::new();
                for (f, c) in contents.iter().enumerate() {
                    if let Some((n, l)) = c.entries.iter().filter(|(n, _)| n.contains(ip)).max_by_key(|(n, _)| n.prefix()) {
                        want.push(Listing { feed: f as u16, prefix: *n, since: l.since });
                    }
                }
                prop_assert_eq!(ix.lookup(ip), &want[..]);
            }
        }
    }
}
