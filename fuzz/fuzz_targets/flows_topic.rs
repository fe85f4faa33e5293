//! Any bytes as a flows-topic value (`roost_flows::topic`: length-delimited protobuf
//! FlowMessages, as a consumer reads them off the topic): decoding never panics, and what
//! decodes encodes back to records that decode the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use roost_flows::topic;

fuzz_target!(|data: &[u8]| {
    if let Ok(records) = topic::decode(data) {
        let again = topic::encode(&records);
        let back = topic::decode(&again).expect("re-encoded records decode");
        // times at or before the epoch are "not said" once encoded (goflow2's 0)
        let norm = |rs: Vec<roost_flows::FlowRecord>| {
            rs.into_iter()
                .map(|mut r| {
                    r.start = r.start.filter(|t| *t > 0);
                    r.end = r.end.filter(|t| *t > 0);
                    r
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(norm(back), norm(records));
    }
});
