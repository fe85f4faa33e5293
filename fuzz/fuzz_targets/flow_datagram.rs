//! Any bytes as NetFlow/IPFIX datagrams from two exporters to `roost flows`: the first bytes
//! split the input into datagrams, so templates from one can meet data in the next. Nothing may
//! panic; every record decoded is encoded for the flows topic, read back, and fed to the
//! flow features; what the features say is encoded for the requests topic and read back.
#![no_main]

use libfuzzer_sys::fuzz_target;
use roost_event::Timestamp;
use roost_flows::features::{FeaturesConfig, FlowFeatures};
use roost_flows::{Decoder, DecoderConfig, topic};

fuzz_target!(|data: &[u8]| {
    let mut d = Decoder::new(&DecoderConfig::default());
    let mut f = FlowFeatures::new(FeaturesConfig { portscan_ports: 3, hostscan_hosts: 3, synflood_flows: 3, ..FeaturesConfig::default() });
    let exporters = ["192.0.2.1:2055".parse().unwrap(), "[2001:db8::1]:4739".parse().unwrap()];
    let mut rest = data;
    let mut i = 0usize;
    let mut found = Vec::new();
    while rest.len() > 2 {
        let n = (usize::from(u16::from_be_bytes([rest[0], rest[1]])) % 1500).min(rest.len() - 2);
        let datagram = &rest[2..2 + n];
        rest = &rest[2 + n..];
        let out = d.decode(exporters[i % 2], datagram, Timestamp(i as i64 * 1000));
        let back = topic::decode(&topic::encode(&out.records)).expect("encoded records read back");
        assert_eq!(back, out.records);
        for r in &out.records {
            f.observe(r, &mut found);
        }
        for e in found.drain(..) {
            let v = roost_wire::requests::encode_evidence(&e);
            assert!(matches!(roost_wire::requests::decode_message(&v), Ok(roost_wire::requests::Message::Evidence(_))));
        }
        i += 1;
    }
    let _ = d.decode(exporters[0], data, Timestamp(0));
});
