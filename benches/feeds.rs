//! Feed index: lookup cost and memory, with every real snapshot loaded (../shared/data/feeds)
//! and with a synthetic million-prefix load (1M IPv4 + 250k IPv6 prefixes over four feeds).
//! `cargo bench -p roost-benches --bench feeds` (prints build time and index memory first).

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::time::Instant;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ipnetwork::IpNetwork;
use roost_event::Timestamp;
use roost_feeds::store::Listed;
use roost_feeds::{FeedContents, FeedFormat, FeedIndex, IndexedFeed};

fn feed(name: &str) -> IndexedFeed {
    IndexedFeed { name: name.into(), penalty: 3.0, verdict: None, entries: 0, fetched_at: None }
}

fn snapshots() -> Vec<(String, FeedContents)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/feeds");
    let mut out = Vec::new();
    for f in ["firehol_level1", "firehol_level2", "firehol_webclient", "spamhaus_drop", "et_block", "dshield"] {
        let body = std::fs::read(dir.join(format!("{f}.netset"))).expect("shared feed snapshots");
        let parsed = roost_feeds::parse::parse(FeedFormat::Netset, None, &body);
        let mut c = FeedContents::default();
        for e in parsed.entries {
            c.entries.insert(e.net, Listed { since: Timestamp(0), detail: None });
        }
        out.push((f.to_owned(), c));
    }
    out
}

/// A small deterministic generator (xorshift), so every run measures the same sets.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn synthetic() -> Vec<(String, FeedContents)> {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut feeds: Vec<(String, FeedContents)> =
        (0..4).map(|i| (format!("synthetic{i}"), FeedContents::default())).collect();
    let listed = Listed { since: Timestamp(0), detail: None };
    for i in 0..1_000_000u32 {
        let len = [32u8, 32, 32, 24, 28, 20, 16][i as usize % 7];
        let a = Ipv4Addr::from(rng.next() as u32);
        let net = IpNetwork::new(IpAddr::V4(a), len).unwrap();
        let net = IpNetwork::new(net.network(), len).unwrap();
        feeds[i as usize % 4].1.entries.insert(net, listed.clone());
    }
    for i in 0..250_000u32 {
        let len = [128u8, 64, 48, 56][i as usize % 4];
        let hi = (0x2000u64 << 48) | (rng.next() >> 16);
        let a = Ipv6Addr::from((u128::from(hi) << 64) | u128::from(rng.next()));
        let net = IpNetwork::new(IpAddr::V6(a), len).unwrap();
        let net = IpNetwork::new(net.network(), len).unwrap();
        feeds[i as usize % 4].1.entries.insert(net, listed.clone());
    }
    feeds
}

fn build(feeds: &[(String, FeedContents)], what: &str) -> FeedIndex {
    let started = Instant::now();
    let index = FeedIndex::build(feeds.iter().map(|(n, c)| (feed(n), c)));
    let entries: usize = feeds.iter().map(|(_, c)| c.entries.len()).sum();
    eprintln!(
        "{what}: {} feeds, {entries} entries, {} distinct prefixes; built in {:.2?}; index memory {:.1} MiB ({:.0} B/prefix)",
        feeds.len(),
        index.prefixes(),
        started.elapsed(),
        index.mem_size() as f64 / (1 << 20) as f64,
        index.mem_size() as f64 / index.prefixes() as f64,
    );
    index
}

/// Probe addresses: half inside listed prefixes, half random.
fn probes(feeds: &[(String, FeedContents)], n: usize) -> Vec<IpAddr> {
    let mut rng = Rng(42);
    let listed: Vec<IpNetwork> = feeds.iter().flat_map(|(_, c)| c.entries.keys().copied()).collect();
    (0..n)
        .map(|i| {
            if i % 2 == 0 {
                match listed[rng.next() as usize % listed.len()] {
                    IpNetwork::V4(n) => IpAddr::V4(n.network()),
                    IpNetwork::V6(n) => IpAddr::V6(n.network()),
                }
            } else if i % 4 == 1 {
                IpAddr::V4(Ipv4Addr::from(rng.next() as u32))
            } else {
                IpAddr::V6(Ipv6Addr::from((0x2000u128 << 112) | u128::from(rng.next())))
            }
        })
        .collect()
}

fn lookups(c: &mut Criterion) {
    let mut g = c.benchmark_group("feed_lookup");
    for (what, feeds) in [("snapshots", snapshots()), ("synthetic_1.25M", synthetic())] {
        let index = build(&feeds, what);
        let ps = probes(&feeds, 4096);
        let hits = ps.iter().filter(|p| !index.lookup(**p).is_empty()).count();
        eprintln!("{what}: {hits} of {} probes listed", ps.len());
        g.throughput(Throughput::Elements(ps.len() as u64));
        g.bench_function(what, |b| {
            b.iter(|| {
                let mut n = 0;
                for p in &ps {
                    n += index.lookup(black_box(*p)).len();
                }
                n
            })
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20);
    targets = lookups
}
criterion_main!(benches);
