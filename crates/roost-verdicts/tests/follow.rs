//! The follower against a real Redis (`ROOST_TEST_REDIS`, started by scripts/test.sh): a full
//! load, then changes; a position the trimmed stream left behind loads again — also when the
//! stream was empty at the load.

use std::time::Duration;

use roost_engine::{Class, Timestamp};
use roost_verdicts::follow::{StoreFollower, Update};
use roost_verdicts::{OverrideEntry, RedisConfig, Store, VerdictRecord, Write};

fn cfg(name: &str) -> RedisConfig {
    let url =
        std::env::var("ROOST_TEST_REDIS").expect("ROOST_TEST_REDIS is not set: run the suite with scripts/test.sh");
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    RedisConfig {
        url,
        prefix: format!("t{}-{nanos}-{name}:", std::process::id()),
        stream_maxlen: 10,
        ..Default::default()
    }
}

fn write(subject: &str, verdict: Class) -> Write {
    let now = Timestamp(roost_now());
    Write {
        record: VerdictRecord {
            shadow: false,
            v: 1,
            subject: subject.into(),
            verdict,
            reputation: -0.5,
            at: now,
            expires: Some(Timestamp(now.0 + 3_600_000)),
            requests: 1,
            reasons: vec!["test".into()],
        },
        now,
        announce: true,
        samples: Vec::new(),
    }
}

fn roost_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}

/// Enough changes that `MAXLEN ~ 10` trims whole stream nodes (100 entries each).
fn flood(store: &mut Store, n: usize) {
    let writes: Vec<Write> = (0..n).map(|i| write(&format!("10.9.{}.{}", i / 256, i % 256), Class::Dubious)).collect();
    store.write(&writes).unwrap();
}

fn next(f: &mut StoreFollower) -> Update {
    f.next(Duration::from_millis(50), roost_now()).unwrap()
}

#[test]
fn loads_then_follows_and_loads_again_when_the_stream_was_trimmed_past_it() {
    let cfg = cfg("follow");
    let mut store = Store::new(&cfg).unwrap();
    store.write(&[write("203.0.113.1", Class::Bad)]).unwrap();
    let mut f = StoreFollower::new(&cfg).unwrap();
    match next(&mut f) {
        Update::Full { verdicts, overrides } => assert_eq!((verdicts.len(), overrides.len()), (1, 0)),
        u => panic!("first a full load, not {u:?}"),
    }
    // changes: a verdict, a client good again, an override
    store.write(&[write("203.0.113.2", Class::Dubious), write("203.0.113.1", Class::Good)]).unwrap();
    let ov = OverrideEntry {
        v: 1,
        prefix: "198.51.100.0/24".into(),
        class: Class::Bad,
        at: Timestamp(roost_now()),
        until: None,
        by: "ana".into(),
        comment: "test".into(),
    };
    store.write_overrides(&[("198.51.100.0/24".into(), Some(ov))], roost_now()).unwrap();
    match next(&mut f) {
        Update::Changed { verdicts, overrides, entries, .. } => {
            assert_eq!(entries, 3);
            assert!(verdicts.iter().any(|(s, r)| s == "203.0.113.2" && r.is_some()));
            assert!(verdicts.iter().any(|(s, r)| s == "203.0.113.1" && r.is_none()));
            assert_eq!(overrides[0].0, "198.51.100.0/24");
            assert_eq!(overrides[0].1.as_ref().unwrap().class, Class::Bad);
        }
        u => panic!("changes, not {u:?}"),
    }
    // nothing new: an empty change
    assert!(matches!(next(&mut f), Update::Changed { entries: 0, .. }));
    // more changes than the stream keeps before the next read: a full load again
    flood(&mut store, 600);
    match next(&mut f) {
        Update::Full { verdicts, overrides } => assert_eq!((verdicts.len(), overrides.len()), (601, 1)),
        u => panic!("a full load after the trim, not {u:?}"),
    }
}

#[test]
fn a_stream_empty_at_the_load_and_trimmed_before_the_next_read_loads_again() {
    let cfg = cfg("empty");
    let mut store = Store::new(&cfg).unwrap();
    let mut f = StoreFollower::new(&cfg).unwrap();
    assert!(matches!(next(&mut f), Update::Full { .. }));
    flood(&mut store, 600);
    match next(&mut f) {
        Update::Full { verdicts, .. } => assert_eq!(verdicts.len(), 600),
        u => panic!("a full load after the trim, not {u:?}"),
    }
}
