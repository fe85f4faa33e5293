//! Any bytes as a record the Kafka pipeline reads: a requests-topic value (then scored), a
//! dead-letter value, a `roost tail` checkpoint, a verdict as Redis holds it. Nothing may panic;
//! an event that decodes must encode back to a value that decodes to the same event.
#![no_main]

use libfuzzer_sys::fuzz_target;
use roost_engine::{Engine, EngineConfig};
use roost_wire::requests as wire;

fuzz_target!(|data: &[u8]| {
    if let Ok(ev) = wire::decode_request(data) {
        let again = wire::encode_request(&ev);
        assert_eq!(wire::decode_request(&again).expect("own encoding decodes"), ev);
        let mut e = Engine::new(EngineConfig::default()).expect("default config");
        let _ = e.expire(ev.time);
        let _ = e.observe(&ev);
        let _ = wire::subject_key(ev.client, 64);
    }
    let _ = serde_json::from_slice::<wire::DeadLetter>(data);
    let _ = serde_json::from_slice::<roost_ingest::checkpoint::Checkpoint>(data);
    let _ = serde_json::from_slice::<roost_verdicts::VerdictRecord>(data);
});
