//! Network-level evidence from flow records: per source address, over windows of
//! `window` (tumbling, anchored at the source's first flow), the distinct destination ports and
//! hosts it touched, its SYN-only flows (handshakes that never completed) and their share of its
//! TCP flows. Crossing a threshold gives one [`EvidenceEvent`] per kind per window, with the
//! numbers in words ("touched 312 ports on 192.0.2.0/24 in 60 s (NetFlow)").
//!
//! Pure: records carry their own time; nothing reads a clock. Memory is bounded: at most
//! `max_sources` sources (the oldest windows go first), and the sets of ports and hosts stop
//! growing once past every threshold.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::time::Duration;

use roost_event::Timestamp;
use roost_wire::requests::EvidenceEvent;
use serde::{Deserialize, Serialize};

use crate::FlowRecord;

/// One kind of finding and what it weighs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Weight {
    /// Pseudo-requests of negative evidence.
    pub penalty: f32,
    /// An immediate verdict (`dubious`, `bad`) and for how long; none: the penalty alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<String>,
    #[serde(default, with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub ttl: Option<Duration>,
}

/// Thresholds (`[flows.features]` in the config).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FeaturesConfig {
    pub enabled: bool,
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// Distinct destination ports within a window that make a port scan.
    pub portscan_ports: usize,
    pub portscan: Weight,
    /// Distinct destination hosts within a window that make a host sweep.
    pub hostscan_hosts: usize,
    pub hostscan: Weight,
    /// SYN-only TCP flows within a window that make a SYN flood.
    pub synflood_flows: u64,
    pub synflood: Weight,
    /// The share of a source's TCP flows that never completed the handshake, from
    /// `incomplete_min_flows` flows on.
    pub incomplete_share: f64,
    pub incomplete_min_flows: u64,
    pub incomplete: Weight,
    /// Sources tracked at most.
    pub max_sources: usize,
}

impl Default for FeaturesConfig {
    fn default() -> Self {
        let w = |penalty: f32, verdict: Option<(&str, u64)>| Weight {
            penalty,
            verdict: verdict.map(|(v, _)| v.to_owned()),
            ttl: verdict.map(|(_, s)| Duration::from_secs(s)),
        };
        FeaturesConfig {
            enabled: true,
            window: Duration::from_secs(60),
            portscan_ports: 100,
            portscan: w(10.0, Some(("dubious", 1800))),
            hostscan_hosts: 50,
            hostscan: w(10.0, Some(("dubious", 1800))),
            synflood_flows: 500,
            synflood: w(20.0, Some(("bad", 600))),
            incomplete_share: 0.8,
            incomplete_min_flows: 20,
            incomplete: w(4.0, None),
            max_sources: 200_000,
        }
    }
}

#[derive(Default)]
struct Window {
    start: i64,
    last: i64,
    ports: HashSet<u16>,
    hosts: HashSet<IpAddr>,
    tcp: u64,
    syn_only: u64,
    flows: u64,
    packets: u64,
    /// Kinds already reported in this window (bits: portscan, hostscan, synflood, incomplete).
    fired: u8,
}

/// The windows of every source.
pub struct FlowFeatures {
    cfg: FeaturesConfig,
    sources: HashMap<IpAddr, Window>,
}

const PORTSCAN: u8 = 1;
const HOSTSCAN: u8 = 2;
const SYNFLOOD: u8 = 4;
const INCOMPLETE: u8 = 8;

impl FlowFeatures {
    pub fn new(cfg: FeaturesConfig) -> FlowFeatures {
        FlowFeatures { cfg, sources: HashMap::new() }
    }

    pub fn tracked(&self) -> usize {
        self.sources.len()
    }

    /// Adds a flow; returns the evidence it completes.
    pub fn observe(&mut self, f: &FlowRecord, out: &mut Vec<EvidenceEvent>) {
        let t = f.end.or(f.start).unwrap_or(f.received);
        let win = self.cfg.window.as_millis() as i64;
        if !self.sources.contains_key(&f.src) && self.sources.len() >= self.cfg.max_sources {
            self.evict(t);
        }
        let w = self.sources.entry(f.src).or_insert_with(|| Window { start: t, ..Window::default() });
        if t >= w.start.saturating_add(win) {
            *w = Window { start: t, ..Window::default() };
        }
        w.last = w.last.max(t);
        w.flows += 1;
        w.packets = w.packets.saturating_add(f.packets);
        let cap = self.cfg.portscan_ports.max(self.cfg.hostscan_hosts) + 1;
        if w.ports.len() < cap {
            w.ports.insert(f.dst_port);
        }
        if w.hosts.len() < cap {
            w.hosts.insert(f.dst);
        }
        if f.proto == 6 {
            w.tcp += 1;
            w.syn_only += u64::from(f.syn_only());
        }
        let secs = self.cfg.window.as_secs();
        let mut emit = |bit: u8, id: &str, weight: &Weight, detail: String, w: &mut Window| {
            if w.fired & bit != 0 {
                return;
            }
            w.fired |= bit;
            out.push(EvidenceEvent {
                time: Timestamp(t),
                client: f.src,
                source: format!("flow:{id}"),
                penalty: weight.penalty,
                verdict: weight.verdict.clone(),
                ttl_ms: weight.ttl.map(|d| d.as_millis() as u64),
                detail,
            });
        };
        if w.ports.len() >= self.cfg.portscan_ports {
            let detail = format!("touched {} ports on {} in {secs} s (NetFlow)", w.ports.len(), targets(&w.hosts));
            emit(PORTSCAN, "portscan", &self.cfg.portscan, detail, w);
        }
        if w.hosts.len() >= self.cfg.hostscan_hosts {
            let detail = format!("contacted {} hosts ({}) in {secs} s (NetFlow)", w.hosts.len(), targets(&w.hosts));
            emit(HOSTSCAN, "hostscan", &self.cfg.hostscan, detail, w);
        }
        if w.syn_only >= self.cfg.synflood_flows {
            let detail = format!("{} SYN-only flows (handshakes never completed) in {secs} s (NetFlow)", w.syn_only);
            emit(SYNFLOOD, "synflood", &self.cfg.synflood, detail, w);
        }
        if w.tcp >= self.cfg.incomplete_min_flows && w.syn_only as f64 >= self.cfg.incomplete_share * w.tcp as f64 {
            let detail =
                format!("{} of {} TCP flows never completed the handshake in {secs} s (NetFlow)", w.syn_only, w.tcp);
            emit(INCOMPLETE, "incomplete", &self.cfg.incomplete, detail, w);
        }
    }

    /// Drops windows that ended before `now`.
    pub fn expire(&mut self, now: Timestamp) {
        let win = self.cfg.window.as_millis() as i64;
        self.sources.retain(|_, w| w.start.saturating_add(win) > now.millis());
    }

    /// At capacity: the windows that ended go, else the tenth least recently active.
    fn evict(&mut self, now: i64) {
        self.expire(Timestamp(now));
        if self.sources.len() < self.cfg.max_sources {
            return;
        }
        let mut lasts: Vec<i64> = self.sources.values().map(|w| w.last).collect();
        let k = (lasts.len() / 10).max(1);
        let (_, cut, _) = lasts.select_nth_unstable(k - 1);
        let cut = *cut;
        self.sources.retain(|_, w| w.last > cut);
    }
}

/// The destinations in words: one host, the one /24 (or /64) they share, or how many.
fn targets(hosts: &HashSet<IpAddr>) -> String {
    let mut it = hosts.iter();
    let Some(first) = it.next() else { return "no host".into() };
    if hosts.len() == 1 {
        return first.to_string();
    }
    let net = |a: &IpAddr| match a {
        IpAddr::V4(v) => (u32::from(*v) >> 8) as u128,
        IpAddr::V6(v) => u128::from(*v) >> 64 | 1 << 127,
    };
    if hosts.iter().all(|h| net(h) == net(first)) {
        return match first {
            IpAddr::V4(v) => format!("{}/24", std::net::Ipv4Addr::from(u32::from(*v) & 0xffff_ff00)),
            IpAddr::V6(v) => format!("{}/64", std::net::Ipv6Addr::from(u128::from(*v) & !((1u128 << 64) - 1))),
        };
    }
    format!("{} hosts", hosts.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(src: &str, dst: &str, dport: u16, flags: u16, t: i64) -> FlowRecord {
        FlowRecord {
            exporter: "192.0.2.1:9995".parse().unwrap(),
            version: 9,
            domain: 0,
            received: t,
            start: Some(t),
            end: Some(t),
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            src_port: 40000,
            dst_port: dport,
            proto: 6,
            tcp_flags: flags,
            packets: 1,
            bytes: 40,
            sampling: 1,
        }
    }

    #[test]
    fn a_port_scan_is_reported_once_per_window_with_its_numbers() {
        let mut f = FlowFeatures::new(FeaturesConfig::default());
        let mut out = Vec::new();
        for p in 0..150u16 {
            f.observe(&flow("203.0.113.200", "192.0.2.20", p + 1, 0x02, 1_000 + i64::from(p)), &mut out);
        }
        let scans: Vec<_> = out.iter().filter(|e| e.source == "flow:portscan").collect();
        assert_eq!(scans.len(), 1, "{out:?}");
        assert_eq!(scans[0].detail, "touched 100 ports on 192.0.2.20 in 60 s (NetFlow)");
        assert_eq!(scans[0].verdict.as_deref(), Some("dubious"));
        // 150 SYN-only of 150 TCP flows: incomplete handshakes too, once
        assert_eq!(out.iter().filter(|e| e.source == "flow:incomplete").count(), 1);
        // the next window reports again
        out.clear();
        for p in 0..100u16 {
            f.observe(&flow("203.0.113.200", "192.0.2.21", p + 1, 0x02, 70_000 + i64::from(p)), &mut out);
        }
        assert_eq!(out.iter().filter(|e| e.source == "flow:portscan").count(), 1);
    }

    /// A SYN flood at one service: SYN-only flows (handshakes never completed) from one source
    /// to one port of one host, so neither scan fires; the flood is reported once, with its
    /// verdict, when the count reaches `synflood_flows`, and the incomplete-handshake share too.
    #[test]
    fn a_syn_flood_is_reported_once_with_its_verdict() {
        let cfg = FeaturesConfig::default();
        let mut f = FlowFeatures::new(cfg.clone());
        let mut out = Vec::new();
        for i in 0..cfg.synflood_flows - 1 {
            f.observe(&flow("203.0.113.66", "192.0.2.10", 443, 0x02, 5_000 + i as i64), &mut out);
        }
        assert!(out.iter().all(|e| e.source != "flow:synflood"), "not before the threshold: {out:?}");
        for i in 0..100 {
            f.observe(&flow("203.0.113.66", "192.0.2.10", 443, 0x02, 6_000 + i), &mut out);
        }
        let floods: Vec<_> = out.iter().filter(|e| e.source == "flow:synflood").collect();
        assert_eq!(floods.len(), 1, "{out:?}");
        let e = floods[0];
        assert_eq!(e.client, "203.0.113.66".parse::<IpAddr>().unwrap());
        assert_eq!(e.verdict.as_deref(), Some("bad"));
        assert_eq!(e.ttl_ms, Some(600_000));
        assert!(e.detail.contains("500 SYN-only flows"), "{}", e.detail);
        assert!(out.iter().any(|e| e.source == "flow:incomplete"), "{out:?}");
        assert!(!out.iter().any(|e| e.source == "flow:portscan" || e.source == "flow:hostscan"), "{out:?}");
        // the same flows with the handshake completed (SYN+ACK+FIN) are a busy client, not a flood
        let mut f = FlowFeatures::new(cfg.clone());
        let mut out = Vec::new();
        for i in 0..cfg.synflood_flows * 2 {
            f.observe(&flow("198.51.100.9", "192.0.2.10", 443, 0x13, 5_000 + i as i64), &mut out);
        }
        assert!(out.is_empty(), "{out:?}");
    }

    /// Exporter-given counters are attacker data: sums saturate instead of wrapping or panicking.
    #[test]
    fn huge_packet_counts_saturate() {
        let mut f = FlowFeatures::new(FeaturesConfig::default());
        let mut out = Vec::new();
        let mut big = flow("203.0.113.7", "192.0.2.10", 443, 0x1b, 1_000);
        big.packets = u64::MAX;
        f.observe(&big, &mut out);
        f.observe(&big, &mut out);
        assert_eq!(f.sources[&big.src].packets, u64::MAX);
    }

    #[test]
    fn normal_clients_and_completed_handshakes_give_nothing() {
        let mut f = FlowFeatures::new(FeaturesConfig::default());
        let mut out = Vec::new();
        for c in 0..200u32 {
            for k in 0..5 {
                let src = format!("198.51.100.{}", c % 250);
                f.observe(&flow(&src, "192.0.2.10", 443, 0x1b, i64::from(c * 10 + k)), &mut out);
            }
        }
        assert!(out.is_empty(), "{out:?}");
    }

    #[test]
    fn a_sweep_of_a_subnet_names_the_subnet() {
        let mut f = FlowFeatures::new(FeaturesConfig { hostscan_hosts: 20, ..FeaturesConfig::default() });
        let mut out = Vec::new();
        for h in 0..20u8 {
            f.observe(&flow("203.0.113.9", &format!("192.0.2.{h}"), 22, 0x02, i64::from(h)), &mut out);
        }
        let e = out.iter().find(|e| e.source == "flow:hostscan").unwrap();
        assert_eq!(e.detail, "contacted 20 hosts (192.0.2.0/24) in 60 s (NetFlow)");
    }

    #[test]
    fn memory_is_bounded() {
        let mut f = FlowFeatures::new(FeaturesConfig { max_sources: 1000, ..FeaturesConfig::default() });
        let mut out = Vec::new();
        for i in 0..5000u32 {
            let src = std::net::Ipv4Addr::from(0x0a00_0000 + i).to_string();
            f.observe(&flow(&src, "192.0.2.10", 443, 0x1b, i64::from(i)), &mut out);
        }
        assert!(f.tracked() <= 1000);
    }
}
