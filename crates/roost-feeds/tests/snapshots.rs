//! Parsers, validation and the index on real feed snapshots (../shared/data/feeds: FireHOL's
//! published files, April 2021), whose headers state the entry counts a parser must reproduce.

use std::path::PathBuf;

use roost_feeds::def::{self, FeedFormat};
use roost_feeds::local::{self, LoadError};
use roost_feeds::parse::parse;
use roost_feeds::validate::{Policy, validate};
use roost_feeds::{FeedAnnotator, FeedHandle, FeedIndex};

fn data(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/feeds").join(name)
}

/// The number on the header's `# Entries : 926 subnets, …` line.
fn header_entries(text: &str) -> usize {
    let line = text.lines().find(|l| l.starts_with("# Entries")).expect("an Entries line");
    let after = line.split(':').nth(1).unwrap().trim();
    after.split_whitespace().next().unwrap().parse().unwrap()
}

#[test]
fn entry_counts_match_the_headers() {
    let files = [
        ("firehol_level1.netset", 2744, 2341),
        ("firehol_level2.netset", 18112, 219),
        ("firehol_webclient.netset", 2108, 71),
        ("spamhaus_drop.netset", 926, 926),
        ("et_block.netset", 1161, 943),
        ("dshield.netset", 18, 18),
        ("feodo.ipset", 0, 0),
    ];
    for (file, entries, cidrs) in files {
        let body = std::fs::read(data(file)).unwrap();
        let p = parse(FeedFormat::Netset, None, &body);
        assert_eq!(p.entries.len(), header_entries(&String::from_utf8_lossy(&body)), "{file}");
        assert_eq!(p.entries.len(), entries, "{file}");
        let multi = p.entries.iter().filter(|e| e.net.prefix() < 32).count();
        assert_eq!(multi, cidrs, "{file}: CIDRs");
        assert_eq!((p.errors, p.duplicates), (0, 0), "{file}");
    }
}

#[test]
fn validation_on_real_snapshots() {
    let policy = Policy::default();
    let body = std::fs::read(data("firehol_level1.netset")).unwrap();
    let mut p = parse(FeedFormat::Netset, None, &body);
    let ok = validate(&mut p, None, false, None, &policy, &["127.0.0.0/8".parse().unwrap()]).unwrap();
    // 0.0.0.0/8, 10/8, 100.64/10, 127/8, 169.254/16, 172.16/12, 192.0.0.0/24, 192.0.2.0/24,
    // 192.168/16, 198.18/15, 198.51.100/24, 203.0.113/24, 224.0.0.0/3 are bogons, listed on purpose.
    assert!(ok.reserved >= 10, "dropped {}", ok.reserved);
    assert!(p.entries.iter().all(|e| !roost_feeds::validate::is_special(e.net)));
    assert_eq!(p.entries.len(), 2744 - ok.reserved);

    // An empty fetch over a published list is refused, even for a feed allowed to be empty.
    let mut empty = parse(FeedFormat::Netset, None, &std::fs::read(data("feodo.ipset")).unwrap());
    assert_eq!(validate(&mut empty, Some(926), true, None, &policy, &[]).unwrap_err().label(), "shrunk");
    assert_eq!(validate(&mut empty, None, false, None, &policy, &[]).unwrap_err().label(), "empty");
    // Replacing level2 (18k entries) with spamhaus_drop (926) is a shrink, refused.
    let mut drop = parse(FeedFormat::Netset, None, &std::fs::read(data("spamhaus_drop.netset")).unwrap());
    assert_eq!(validate(&mut drop, Some(18_112), false, None, &policy, &[]).unwrap_err().label(), "shrunk");
}

#[test]
fn embedded_definitions_cover_the_required_feeds() {
    let defs = def::embedded().unwrap();
    let names: Vec<&str> = defs.iter().map(|d| d.name.as_str()).collect();
    for want in [
        "firehol_level1",
        "firehol_level2",
        "spamhaus_drop",
        "spamhaus_dropv6",
        "feodo",
        "et_compromised",
        "tor_exits",
        "blocklist_de",
        "threatexchange",
    ] {
        assert!(names.contains(&want), "{want} missing from feeds/");
    }
    let te = defs.iter().find(|d| d.name == "threatexchange").unwrap();
    assert!(!te.enabled && te.token_env.is_some());
    assert!(defs.iter().all(|d| !d.licence.is_empty() && !d.description.is_empty()));
}

#[test]
fn every_snapshot_in_one_index_with_reasons() {
    let defs = def::embedded().unwrap();
    let by = |n: &str| defs.iter().find(|d| d.name == n).unwrap().clone();
    let policy = Policy::default();
    let allow = ["127.0.0.0/8".parse().unwrap()];
    let mut loaded = Vec::new();
    for (feed, file) in [
        ("firehol_level1", "firehol_level1.netset"),
        ("firehol_level2", "firehol_level2.netset"),
        ("spamhaus_drop", "spamhaus_drop.netset"),
        ("et_compromised", "et_block.netset"),
    ] {
        let mut d = by(feed);
        d.format = FeedFormat::Netset;
        loaded.push(local::load_file(&d, &data(file), &policy, &allow).unwrap());
    }
    // The empty Feodo snapshot loads (the feed may be empty) and lists nothing.
    let feodo = local::load_file(&by("feodo"), &data("feodo.ipset"), &policy, &allow).unwrap();
    assert!(feodo.contents.entries.is_empty());
    // A feed that may not be empty refuses the same file.
    let strict = local::load_file(&by("firehol_level2"), &data("feodo.ipset"), &policy, &allow);
    assert!(matches!(strict, Err(LoadError::Refused { .. })), "{strict:?}");
    loaded.push(feodo);
    let index = local::index(&loaded);
    assert_eq!(index.feeds.len(), 5);

    // 1.10.16.0/20 is in spamhaus_drop and (verbatim) in firehol_level1.
    let hits = index.lookup("1.10.16.77".parse().unwrap());
    let names: Vec<&str> = hits.iter().map(|l| &*index.feed(l).name).collect();
    assert!(names.contains(&"spamhaus_drop") && names.contains(&"firehol_level1"), "{names:?}");
    assert!(index.lookup("127.0.0.1".parse().unwrap()).is_empty());
    assert!(index.lookup("10.1.2.3".parse().unwrap()).is_empty(), "bogons dropped");

    // Through the annotator: evidence naming the feed, the prefix and the date.
    let handle = FeedHandle::new(index);
    let ann = FeedAnnotator::new(handle.clone());
    let mut out = Vec::new();
    roost_engine::Annotator::annotate(&ann, "1.10.16.77".parse().unwrap(), roost_event::Timestamp(0), &mut out);
    let drop = out.iter().find(|e| &*e.source.id == "spamhaus_drop").unwrap();
    assert!(drop.detail.starts_with("listed in spamhaus_drop since 20"), "{}", drop.detail);
    assert!(drop.detail.contains("1.10.16.0/20"));
    assert_eq!(drop.verdict.map(|v| v.0), Some(roost_engine::Class::Bad));

    // Swapping in an empty index takes effect for the next lookup.
    handle.store(FeedIndex::default());
    out.clear();
    roost_engine::Annotator::annotate(&ann, "1.10.16.77".parse().unwrap(), roost_event::Timestamp(0), &mut out);
    assert!(out.is_empty());
}
