//! NetFlow v5, v9 and IPFIX, decoded into [`FlowRecord`]s: what `roost flows` publishes to the
//! flows topic and the scorer reads.
//!
//! [`Decoder`] is sans-IO: a datagram, the exporter's address and the time it arrived go in;
//! records and counted errors come out. Decoding is netflow_parser's, with templates kept per
//! exporter address and observation domain (v9 source ID, IPFIX observation domain ID, as RFC
//! 3954 and RFC 7011 scope them) and expired when not refreshed. Sampling rates come from the v5
//! header or from v9/IPFIX options data (`samplingInterval`, `samplerRandomInterval`,
//! `samplingPacketInterval`); packets and bytes are scaled by them.
//!
//! **Bad input never crashes and never vanishes:** a datagram that does not decode is counted
//! with its exporter and a [`DecodeError`] reason, and data sets that reference a template not
//! yet seen from that exporter and domain are counted as template misses (as nfcapd, the
//! collector does not guess: exporters resend templates periodically).

pub mod features;
mod template;
pub mod topic;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use netflow_parser::{AutoScopedParser, NetflowPacket, NetflowParser, TtlConfig};
use roost_event::Timestamp;
use serde::{Deserialize, Serialize};

/// One flow record as decoded (the flows topic carries it as [`topic`] encodes it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowRecord {
    /// The exporter (router) that sent it: address and port.
    pub exporter: SocketAddr,
    /// 5, 9 or 10 (IPFIX).
    pub version: u16,
    /// v9 source ID / IPFIX observation domain ID (0 for v5).
    pub domain: u32,
    /// When the collector received the datagram (Unix ms).
    pub received: i64,
    /// The flow's first and last packet (Unix ms), when the export says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<i64>,
    pub src: IpAddr,
    pub dst: IpAddr,
    #[serde(default)]
    pub src_port: u16,
    #[serde(default)]
    pub dst_port: u16,
    /// IP protocol number (6 TCP, 17 UDP, 1 ICMP…).
    pub proto: u8,
    /// TCP flags seen over the flow (OR of every packet's).
    #[serde(default)]
    pub tcp_flags: u16,
    /// Packets and bytes, already multiplied by `sampling`.
    pub packets: u64,
    pub bytes: u64,
    /// 1 in `sampling` packets was sampled (1: every packet).
    pub sampling: u32,
}

impl FlowRecord {
    /// TCP with SYN and without ACK over the whole flow: a handshake that never completed.
    pub fn syn_only(&self) -> bool {
        self.proto == 6 && self.tcp_flags & 0x02 != 0 && self.tcp_flags & 0x10 == 0
    }
}

/// Why a datagram (or part of one) did not decode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
pub enum DecodeError {
    #[error("too short for a NetFlow/IPFIX header")]
    Truncated,
    #[error("not NetFlow v5, v9 or IPFIX")]
    UnsupportedVersion,
    #[error("malformed")]
    Malformed,
    #[error("a record without source or destination address")]
    MissingFields,
    #[error("more templates from one exporter and domain than roost keeps")]
    TooManyTemplates,
}

impl DecodeError {
    /// A short label for metrics.
    pub fn label(self) -> &'static str {
        match self {
            DecodeError::Truncated => "truncated",
            DecodeError::UnsupportedVersion => "unsupported_version",
            DecodeError::Malformed => "malformed",
            DecodeError::MissingFields => "missing_fields",
            DecodeError::TooManyTemplates => "too_many_templates",
        }
    }
}

/// What one datagram gave.
#[derive(Debug, Default)]
pub struct Decoded {
    pub records: Vec<FlowRecord>,
    /// Errors, each with how many times it happened in this datagram.
    pub errors: Vec<(DecodeError, u32)>,
    /// Data sets whose template the collector has not seen (yet) from this exporter.
    pub template_misses: u32,
    /// Records whose start or end lay beyond the arrival time plus `max_skew` (a wrong exporter
    /// clock or a forged datagram): their times were set to the arrival time.
    pub clamped: u32,
    /// Templates (and options templates) learned from this datagram.
    pub templates: u32,
    pub version: u16,
}

impl Decoded {
    /// Empty, its buffers kept.
    pub fn clear(&mut self) {
        self.records.clear();
        self.errors.clear();
        (self.template_misses, self.clamped, self.templates, self.version) = (0, 0, 0, 0);
    }
}

/// Limits of the decoder (`[flows]` in the config).
#[derive(Clone, Debug)]
pub struct DecoderConfig {
    /// Templates not refreshed within this time are forgotten.
    pub template_ttl: Duration,
    /// Exporters (and observation domains) tracked at most; the least recently heard is dropped.
    pub max_exporters: usize,
    /// How far an exporter's clock may run ahead of the collector's: a flow that ends later
    /// than its datagram's arrival plus this is given the arrival time (and counted).
    pub max_skew: Duration,
}

impl Default for DecoderConfig {
    fn default() -> Self {
        DecoderConfig {
            template_ttl: Duration::from_secs(30 * 60),
            max_exporters: 1024,
            max_skew: Duration::from_secs(10),
        }
    }
}

/// Decodes datagrams from many exporters at once.
pub struct Decoder {
    /// NetFlow v5 (no templates).
    parsers: AutoScopedParser,
    /// NetFlow v9 and IPFIX: templates and sampling rates per exporter and domain.
    templates: template::Templates,
    max_skew: i64,
}

impl Decoder {
    pub fn new(cfg: &DecoderConfig) -> Decoder {
        let builder =
            NetflowParser::builder().with_allowed_versions(&[5, 9, 10]).with_ttl(TtlConfig::new(cfg.template_ttl));
        let parsers = AutoScopedParser::try_with_builder(builder)
            .and_then(|p| p.with_max_sources(cfg.max_exporters.max(1)))
            .expect("a valid parser configuration");
        Decoder {
            parsers,
            templates: template::Templates::new(cfg.template_ttl, cfg.max_exporters),
            max_skew: cfg.max_skew.as_millis().min(i64::MAX as u128) as i64,
        }
    }

    /// Decodes one datagram from `exporter`, received at `received`.
    pub fn decode(&mut self, exporter: SocketAddr, datagram: &[u8], received: Timestamp) -> Decoded {
        let mut out = Decoded::default();
        self.decode_into(exporter, datagram, received, &mut out);
        out
    }

    /// [`Decoder::decode`] into `out`, which is cleared first: a collector that keeps one
    /// [`Decoded`] reuses its buffers instead of allocating for every datagram.
    pub fn decode_into(&mut self, exporter: SocketAddr, datagram: &[u8], received: Timestamp, out: &mut Decoded) {
        out.clear();
        if datagram.len() < 4 {
            out.errors.push((DecodeError::Truncated, 1));
            return;
        }
        let version = u16::from_be_bytes([datagram[0], datagram[1]]);
        out.version = version;
        if !matches!(version, 5 | 9 | 10) {
            out.errors.push((DecodeError::UnsupportedVersion, 1));
            return;
        }
        if version != 5 {
            self.templates.decode(exporter, datagram, received, version == 10, out);
            self.clamp(out, received);
            return;
        }
        let result = self.parsers.parse_from_source(exporter, datagram);
        if result.error.is_some() {
            out.errors.push((DecodeError::Malformed, 1));
        }
        for p in result.packets {
            match p {
                NetflowPacket::V5(v5) => {
                    // the top two bits are the sampling mode, the rest the interval
                    let rate = u32::from(v5.header.sampling_interval & 0x3fff).max(1);
                    let uptime = Uptime {
                        export: i64::from(v5.header.unix_secs) * 1000 + i64::from(v5.header.unix_nsecs / 1_000_000),
                        now: v5.header.sys_up_time,
                    };
                    for f in &v5.flowsets {
                        out.records.push(FlowRecord {
                            exporter,
                            version: 5,
                            domain: 0,
                            received: received.millis(),
                            start: Some(uptime.at(f.first)),
                            end: Some(uptime.at(f.last)),
                            src: IpAddr::V4(f.src_addr),
                            dst: IpAddr::V4(f.dst_addr),
                            src_port: f.src_port,
                            dst_port: f.dst_port,
                            proto: f.protocol_number,
                            tcp_flags: u16::from(f.tcp_flags),
                            packets: u64::from(f.d_pkts) * u64::from(rate),
                            bytes: u64::from(f.d_octets) * u64::from(rate),
                            sampling: rate,
                        });
                    }
                }
                _ => out.errors.push((DecodeError::UnsupportedVersion, 1)),
            }
        }
        self.clamp(out, received);
    }

    /// No flow ends after its datagram arrived (give or take the clocks' skew), and none
    /// began before 1970 (an uptime larger than the export time says nothing usable).
    fn clamp(&self, out: &mut Decoded, received: Timestamp) {
        let limit = received.millis().saturating_add(self.max_skew);
        for r in &mut out.records {
            if r.end.is_some_and(|t| t > limit) || r.start.is_some_and(|t| t > limit) {
                out.clamped += 1;
                r.end = r.end.map(|t| t.min(r.received));
                r.start = r.start.map(|t| t.min(r.end.unwrap_or(r.received)));
            }
            r.start = r.start.filter(|t| *t > 0);
            r.end = r.end.filter(|t| *t > 0);
        }
    }

    /// Exporters (and domains) with templates held.
    pub fn exporters(&self) -> usize {
        self.templates.exporters()
    }

    /// Forgets exporters (their templates) and sampling rates not heard of for `idle`.
    pub fn prune(&mut self, now: Timestamp, idle: Duration) -> usize {
        let cut = now.millis() - idle.as_millis() as i64;
        self.parsers.prune_idle_sources(idle);
        self.templates.prune(cut)
    }
}

/// An exporter's clock in a v5 or v9 header: the export time (Unix ms) and the uptime then
/// (`sysUpTime`, ms, a 32-bit counter that wraps every 49.7 days).
#[derive(Clone, Copy, Debug)]
struct Uptime {
    export: i64,
    now: u32,
}

impl Uptime {
    /// The Unix time of an uptime reading (a flow's FIRST/LAST_SWITCHED). The difference to the
    /// export's uptime is taken modulo 2^32 as a signed number (serial-number arithmetic, RFC
    /// 1982): a flow that started before the counter wrapped lies seconds, not 49 days, in the
    /// past, and one stamped a little after the header's uptime (exporters do that) a little in
    /// the future, as it would without the wrap.
    fn at(self, up: u32) -> i64 {
        self.export - i64::from(self.now.wrapping_sub(up) as i32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exporter() -> SocketAddr {
        "192.0.2.1:40000".parse().unwrap()
    }

    /// A v5 datagram with one TCP flow 203.0.113.5:4000 → 192.0.2.10:443, exported at
    /// 1,700,000,000 s with an uptime of 10 s; the flow switched at uptime 9.0 and 9.5 s.
    fn v5(sampling: u16) -> Vec<u8> {
        v5_at(sampling, 10_000, 9_000, 9_500)
    }

    fn v5_at(sampling: u16, uptime: u32, first: u32, last: u32) -> Vec<u8> {
        let mut p = Vec::new();
        p.extend_from_slice(&5u16.to_be_bytes());
        p.extend_from_slice(&1u16.to_be_bytes());
        p.extend_from_slice(&uptime.to_be_bytes());
        p.extend_from_slice(&1_700_000_000u32.to_be_bytes());
        p.extend_from_slice(&0u32.to_be_bytes());
        p.extend_from_slice(&7u32.to_be_bytes());
        p.extend_from_slice(&[0, 0]);
        p.extend_from_slice(&sampling.to_be_bytes());
        p.extend_from_slice(&[203, 0, 113, 5, 192, 0, 2, 10, 0, 0, 0, 0]);
        p.extend_from_slice(&[0, 1, 0, 2]);
        p.extend_from_slice(&3u32.to_be_bytes());
        p.extend_from_slice(&180u32.to_be_bytes());
        p.extend_from_slice(&first.to_be_bytes());
        p.extend_from_slice(&last.to_be_bytes());
        p.extend_from_slice(&4000u16.to_be_bytes());
        p.extend_from_slice(&443u16.to_be_bytes());
        p.extend_from_slice(&[0, 0x02, 6, 0, 0, 0, 0, 0, 24, 24, 0, 0]);
        p
    }

    #[test]
    fn v5_records_carry_times_flags_and_scaled_counts() {
        let mut d = Decoder::new(&DecoderConfig::default());
        let out = d.decode(exporter(), &v5(0x4000 | 10), Timestamp(1_700_000_000_000));
        assert!(out.errors.is_empty(), "{:?}", out.errors);
        assert_eq!(out.clamped, 0);
        let r = &out.records[0];
        assert_eq!(
            (r.src.to_string(), r.dst.to_string(), r.src_port, r.dst_port),
            ("203.0.113.5".into(), "192.0.2.10".into(), 4000, 443)
        );
        assert_eq!((r.packets, r.bytes, r.sampling), (30, 1800, 10));
        assert_eq!(r.start, Some(1_700_000_000_000 - 10_000 + 9_000));
        assert!(r.syn_only());
        let back = topic::decode(&topic::encode(std::slice::from_ref(r))).unwrap();
        assert_eq!(back, std::slice::from_ref(r));
    }

    /// The uptime counter wrapped between the flow's start and the export: the flow started
    /// 3 s before the export, not 49.7 days after it (RFC 3954's modulo-2^32 arithmetic).
    #[test]
    fn an_uptime_counter_that_wrapped_gives_times_in_the_past() {
        let mut d = Decoder::new(&DecoderConfig::default());
        let export = 1_700_000_000_000;
        let out = d.decode(exporter(), &v5_at(0, 1_000, u32::MAX - 1_999, 500), Timestamp(export));
        let r = &out.records[0];
        assert_eq!((r.start, r.end), (Some(export - 3_000), Some(export - 500)));
        assert_eq!(out.clamped, 0);
        // a flow stamped just after the header's uptime is just after the export, not 49 days back
        let out = d.decode(exporter(), &v5_at(0, 1_000, 1_200, 1_300), Timestamp(export));
        assert_eq!(out.records[0].end, Some(export + 300));
    }

    /// A flow dated after its datagram arrived (an exporter clock ahead, a forged header) gets
    /// the arrival time, and is counted; within the allowed skew it is left alone.
    #[test]
    fn future_flow_times_are_clamped_to_the_arrival() {
        let mut d = Decoder::new(&DecoderConfig::default());
        // exported at 1,700,000,000 s; arrived an hour earlier by the collector's clock
        let arrival = 1_700_000_000_000 - 3_600_000;
        let out = d.decode(exporter(), &v5(0), Timestamp(arrival));
        let r = &out.records[0];
        assert_eq!(out.clamped, 1);
        assert_eq!((r.start, r.end), (Some(arrival), Some(arrival)));
        // 5 s ahead is within the default 10 s of skew
        let out = d.decode(exporter(), &v5(0), Timestamp(1_700_000_000_000 - 5_000));
        assert_eq!(out.clamped, 0);
        assert_eq!(out.records[0].end, Some(1_700_000_000_000 - 500));
    }

    /// A v9 datagram: a template (id 256: src, dst, sport, dport, proto, flags, bytes, packets),
    /// then its data.
    fn v9(with_template: bool, source_id: u32) -> Vec<u8> {
        let mut p = Vec::new();
        let fields: [(u16, u16); 8] = [(8, 4), (12, 4), (7, 2), (11, 2), (4, 1), (6, 1), (1, 4), (2, 4)];
        let mut sets = Vec::new();
        if with_template {
            let mut t = vec![];
            t.extend_from_slice(&256u16.to_be_bytes());
            t.extend_from_slice(&(fields.len() as u16).to_be_bytes());
            for (id, len) in fields {
                t.extend_from_slice(&id.to_be_bytes());
                t.extend_from_slice(&len.to_be_bytes());
            }
            sets.extend_from_slice(&0u16.to_be_bytes());
            sets.extend_from_slice(&((t.len() + 4) as u16).to_be_bytes());
            sets.extend_from_slice(&t);
        }
        let mut data = vec![198, 51, 100, 7, 192, 0, 2, 10];
        data.extend_from_slice(&5555u16.to_be_bytes());
        data.extend_from_slice(&22u16.to_be_bytes());
        data.extend_from_slice(&[6, 0x12]);
        data.extend_from_slice(&1000u32.to_be_bytes());
        data.extend_from_slice(&10u32.to_be_bytes());
        data.extend_from_slice(&[0, 0]); // padding to 4 bytes
        sets.extend_from_slice(&256u16.to_be_bytes());
        sets.extend_from_slice(&((data.len() + 4) as u16).to_be_bytes());
        sets.extend_from_slice(&data);
        p.extend_from_slice(&9u16.to_be_bytes());
        p.extend_from_slice(&(if with_template { 2u16 } else { 1 }).to_be_bytes());
        p.extend_from_slice(&5_000u32.to_be_bytes());
        p.extend_from_slice(&1_700_000_000u32.to_be_bytes());
        p.extend_from_slice(&1u32.to_be_bytes());
        p.extend_from_slice(&source_id.to_be_bytes());
        p.extend_from_slice(&sets);
        p
    }

    #[test]
    fn v9_templates_are_kept_per_exporter_and_domain() {
        let mut d = Decoder::new(&DecoderConfig::default());
        // data before its template: a miss, nothing invented
        let out = d.decode(exporter(), &v9(false, 1), Timestamp(1));
        assert!(out.records.is_empty());
        assert_eq!(out.template_misses, 1);
        let out = d.decode(exporter(), &v9(true, 1), Timestamp(2));
        assert_eq!(out.templates, 1);
        let flows: Vec<_> = out.records.iter().filter(|r| r.src_port == 5555).collect();
        assert_eq!(flows.len(), 1, "{out:?}");
        let r = flows[0];
        assert_eq!((r.proto, r.tcp_flags, r.bytes, r.packets, r.domain), (6, 0x12, 1000, 10, 1));
        assert!(!r.syn_only());
        // the same template id means nothing from another domain of the same exporter
        let out = d.decode(exporter(), &v9(false, 2), Timestamp(3));
        assert!(out.records.is_empty());
        assert_eq!(out.template_misses, 1);
    }

    /// A v9 options template (id 257: scope System, option SAMPLING_INTERVAL) and its data
    /// saying 1 in 100, in one datagram.
    fn v9_sampling_options(source_id: u32, rate: u32) -> Vec<u8> {
        let mut t = Vec::new();
        t.extend_from_slice(&257u16.to_be_bytes());
        t.extend_from_slice(&4u16.to_be_bytes()); // scope length: one field
        t.extend_from_slice(&4u16.to_be_bytes()); // options length: one field
        t.extend_from_slice(&[0, 1, 0, 4]); // scope: System, 4 bytes
        t.extend_from_slice(&[0, 34, 0, 4]); // SAMPLING_INTERVAL, 4 bytes
        let mut sets = Vec::new();
        sets.extend_from_slice(&1u16.to_be_bytes());
        sets.extend_from_slice(&((t.len() + 4 + 2) as u16).to_be_bytes());
        sets.extend_from_slice(&t);
        sets.extend_from_slice(&[0, 0]);
        let mut d = vec![192, 0, 2, 1];
        d.extend_from_slice(&rate.to_be_bytes());
        sets.extend_from_slice(&257u16.to_be_bytes());
        sets.extend_from_slice(&((d.len() + 4) as u16).to_be_bytes());
        sets.extend_from_slice(&d);
        let mut p = Vec::new();
        p.extend_from_slice(&9u16.to_be_bytes());
        p.extend_from_slice(&2u16.to_be_bytes());
        p.extend_from_slice(&5_000u32.to_be_bytes());
        p.extend_from_slice(&1_700_000_000u32.to_be_bytes());
        p.extend_from_slice(&2u32.to_be_bytes());
        p.extend_from_slice(&source_id.to_be_bytes());
        p.extend_from_slice(&sets);
        p
    }

    #[test]
    fn v9_sampling_options_scale_the_counts_of_that_exporter_and_domain_only() {
        let mut d = Decoder::new(&DecoderConfig::default());
        let out = d.decode(exporter(), &v9_sampling_options(1, 100), Timestamp(1));
        assert!(out.errors.is_empty(), "{out:?}");
        assert_eq!(out.templates, 1);
        let out = d.decode(exporter(), &v9(true, 1), Timestamp(2));
        let r = &out.records[0];
        assert_eq!((r.sampling, r.packets, r.bytes), (100, 1000, 100_000), "{r:?}");
        // another domain of the same exporter is not sampled
        let out = d.decode(exporter(), &v9(true, 2), Timestamp(3));
        assert_eq!((out.records[0].sampling, out.records[0].packets), (1, 10));
        // a rate not repeated within the idle time is forgotten
        d.prune(Timestamp(3_600_000), Duration::from_secs(1800));
        let out = d.decode(exporter(), &v9(true, 1), Timestamp(3_600_001));
        assert_eq!(out.records[0].sampling, 1);
    }

    #[test]
    fn garbage_is_counted_not_fatal() {
        let mut d = Decoder::new(&DecoderConfig::default());
        assert_eq!(d.decode(exporter(), &[0, 5], Timestamp(0)).errors, vec![(DecodeError::Truncated, 1)]);
        assert_eq!(
            d.decode(exporter(), &[0, 7, 0, 0, 1, 2], Timestamp(0)).errors,
            vec![(DecodeError::UnsupportedVersion, 1)]
        );
        let mut bad = v5(0);
        bad.truncate(40);
        assert_eq!(d.decode(exporter(), &bad, Timestamp(0)).errors, vec![(DecodeError::Malformed, 1)]);
        let mut bad = v9(true, 1);
        bad.truncate(30);
        let out = d.decode(exporter(), &bad, Timestamp(0));
        assert!(out.records.is_empty());
    }
}
