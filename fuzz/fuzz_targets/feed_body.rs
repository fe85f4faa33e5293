//! Any bytes as a feed body, in every format, then validation, the index and topic records.
//! Nothing may panic; entries must be normalised networks; records must round-trip.
#![no_main]

use libfuzzer_sys::fuzz_target;
use roost_event::Timestamp;
use roost_feeds::def::{CsvLayout, FeedFormat};
use roost_feeds::store::FeedContents;
use roost_feeds::validate::{Policy, validate};
use roost_feeds::{FeedIndex, FeedRecord, IndexedFeed};

fuzz_target!(|data: &[u8]| {
    let csv = CsvLayout { column: 1, detail_column: Some(5) };
    for format in [FeedFormat::Netset, FeedFormat::Spamhaus, FeedFormat::SpamhausJson, FeedFormat::Csv, FeedFormat::Threatexchange] {
        let mut parsed = roost_feeds::parse::parse(format, Some(&csv), data);
        for e in &parsed.entries {
            assert_eq!(e.net.ip(), e.net.network(), "host bits cleared");
        }
        let _ = validate(&mut parsed, Some(10), false, None, &Policy::default(), &["127.0.0.0/8".parse().unwrap()]);
        let contents = FeedContents::default();
        let diff = contents.diff(&parsed.entries, Timestamp(0));
        let mut after = FeedContents::default();
        after.apply(&diff);
        let info = IndexedFeed { name: "f".into(), penalty: 1.0, verdict: None, entries: 0, fetched_at: None };
        let index = FeedIndex::build([(info, &after)]);
        for e in parsed.entries.iter().take(16) {
            assert!(!index.lookup(e.net.ip()).is_empty(), "a listed network is found");
        }
        for r in FeedRecord::publish("f", &diff, Default::default()).into_iter().take(16) {
            let back = FeedRecord::decode(r.key().as_bytes(), r.value().as_deref()).expect("own records decode");
            assert_eq!(back.key(), r.key());
        }
    }
    // And the bytes as a topic record.
    let _ = FeedRecord::decode(data, Some(data));
});
