//! The collector's CPU cost per flow record, without sockets or Kafka: decoding NetFlow v5, v9
//! and IPFIX datagrams of 30 records (about what softflowd sends), then encoding each record for
//! the flows topic and running the flow features. `cargo bench -p roost-benches --bench flows`.

use std::net::SocketAddr;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use roost_event::Timestamp;
use roost_flows::features::{FeaturesConfig, FlowFeatures};
use roost_flows::{Decoder, DecoderConfig};

const RECORDS: usize = 30;

/// v9 (version 9) or IPFIX (10): a template set (id 256: src, dst, sport, dport, proto, flags,
/// bytes, packets, first, last) and a data set of RECORDS records.
fn templated(version: u16, with_template: bool, seq: u32) -> Vec<u8> {
    let fields: [(u16, u16); 10] = [(8, 4), (12, 4), (7, 2), (11, 2), (4, 1), (6, 1), (1, 4), (2, 4), (22, 4), (21, 4)];
    let mut sets = Vec::new();
    if with_template {
        let mut t = Vec::new();
        t.extend_from_slice(&256u16.to_be_bytes());
        t.extend_from_slice(&(fields.len() as u16).to_be_bytes());
        for (id, len) in fields {
            t.extend_from_slice(&id.to_be_bytes());
            t.extend_from_slice(&len.to_be_bytes());
        }
        sets.extend_from_slice(&(if version == 9 { 0u16 } else { 2 }).to_be_bytes());
        sets.extend_from_slice(&((t.len() + 4) as u16).to_be_bytes());
        sets.extend_from_slice(&t);
    }
    let mut data = Vec::new();
    for i in 0..RECORDS as u32 {
        let n = seq.wrapping_mul(31).wrapping_add(i);
        data.extend_from_slice(&[198, 51, (n >> 8) as u8, n as u8, 192, 0, 2, 10]);
        data.extend_from_slice(&(40_000 + (n % 20_000) as u16).to_be_bytes());
        data.extend_from_slice(&443u16.to_be_bytes());
        data.extend_from_slice(&[6, 0x1b]);
        data.extend_from_slice(&(1000 + n % 5000).to_be_bytes());
        data.extend_from_slice(&(3 + n % 10).to_be_bytes());
        data.extend_from_slice(&1_000u32.to_be_bytes());
        data.extend_from_slice(&2_000u32.to_be_bytes());
    }
    while data.len() % 4 != 0 {
        data.push(0);
    }
    sets.extend_from_slice(&256u16.to_be_bytes());
    sets.extend_from_slice(&((data.len() + 4) as u16).to_be_bytes());
    sets.extend_from_slice(&data);
    let mut p = Vec::new();
    p.extend_from_slice(&version.to_be_bytes());
    if version == 9 {
        p.extend_from_slice(&(if with_template { 2u16 } else { 1 }).to_be_bytes());
        p.extend_from_slice(&5_000u32.to_be_bytes());
        p.extend_from_slice(&1_764_000_000u32.to_be_bytes());
        p.extend_from_slice(&seq.to_be_bytes());
        p.extend_from_slice(&1u32.to_be_bytes());
    } else {
        p.extend_from_slice(&((16 + sets.len()) as u16).to_be_bytes());
        p.extend_from_slice(&1_764_000_000u32.to_be_bytes());
        p.extend_from_slice(&seq.to_be_bytes());
        p.extend_from_slice(&1u32.to_be_bytes());
    }
    p.extend_from_slice(&sets);
    p
}

fn v5(seq: u32) -> Vec<u8> {
    let mut p = Vec::new();
    p.extend_from_slice(&5u16.to_be_bytes());
    p.extend_from_slice(&(RECORDS as u16).to_be_bytes());
    p.extend_from_slice(&10_000u32.to_be_bytes());
    p.extend_from_slice(&1_764_000_000u32.to_be_bytes());
    p.extend_from_slice(&0u32.to_be_bytes());
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&[0, 0, 0, 0]);
    for i in 0..RECORDS as u32 {
        let n = seq.wrapping_mul(31).wrapping_add(i);
        p.extend_from_slice(&[198, 51, (n >> 8) as u8, n as u8, 192, 0, 2, 10, 0, 0, 0, 0, 0, 1, 0, 2]);
        p.extend_from_slice(&(3 + n % 10).to_be_bytes());
        p.extend_from_slice(&(1000 + n % 5000).to_be_bytes());
        p.extend_from_slice(&9_000u32.to_be_bytes());
        p.extend_from_slice(&9_500u32.to_be_bytes());
        p.extend_from_slice(&(40_000 + (n % 20_000) as u16).to_be_bytes());
        p.extend_from_slice(&443u16.to_be_bytes());
        p.extend_from_slice(&[0, 0x1b, 6, 0, 0, 0, 0, 0, 24, 24, 0, 0]);
    }
    p
}

fn bench(c: &mut Criterion) {
    let exporter: SocketAddr = "192.0.2.1:40000".parse().unwrap();
    let mut g = c.benchmark_group("flows");
    g.throughput(Throughput::Elements(RECORDS as u64));
    for (name, version) in [("v5", 5u16), ("v9", 9), ("ipfix", 10)] {
        let datagrams: Vec<Vec<u8>> =
            (0..64u32).map(|s| if version == 5 { v5(s) } else { templated(version, false, s) }).collect();
        let mut d = Decoder::new(&DecoderConfig::default());
        if version != 5 {
            let first = d.decode(exporter, &templated(version, true, 0), Timestamp(0));
            assert_eq!(first.records.len(), RECORDS, "{name}: the template datagram decodes");
        }
        assert_eq!(d.decode(exporter, &datagrams[1], Timestamp(0)).records.len(), RECORDS, "{name}");
        let mut i = 0usize;
        g.bench_function(format!("decode_{name}"), |b| {
            b.iter(|| {
                i = (i + 1) % datagrams.len();
                d.decode(exporter, &datagrams[i], Timestamp(0)).records.len()
            })
        });
        // the records as the collector encodes them: dated now, so their times are full-size varints
        let at = Timestamp(1_764_000_001_000);
        if version != 5 {
            d.decode(exporter, &templated(version, true, 0), at);
        }
        let records = d.decode(exporter, &datagrams[2], at).records;
        assert_eq!(records.len(), RECORDS, "{name}: the records to encode");
        let mut encoder = roost_flows::topic::Encoder::default();
        let mut value = Vec::with_capacity(RECORDS * roost_flows::topic::max_encoded_len());
        g.bench_function(format!("encode_{name}"), |b| {
            b.iter(|| {
                value.clear();
                for r in &records {
                    encoder.encode(r, &mut value);
                }
                value.len()
            })
        });
        let mut f = FlowFeatures::new(FeaturesConfig::default());
        let mut found = Vec::new();
        let mut value = Vec::new();
        g.bench_function(format!("decode_encode_features_{name}"), |b| {
            b.iter(|| {
                i = (i + 1) % datagrams.len();
                let out = d.decode(exporter, &datagrams[i], Timestamp(0));
                value.clear();
                roost_flows::topic::encode_into(&out.records, &mut value);
                for r in &out.records {
                    f.observe(r, &mut found);
                }
                found.clear();
                value.len()
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
