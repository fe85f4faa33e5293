//! Network-level evidence from flow records: per source address, over windows of
//! `window` (tumbling, anchored at the source's first flow), the distinct destination ports and
//! hosts it touched, its SYN-only flows (handshakes that never completed) and their share of its
//! TCP flows. Crossing a threshold gives one [`EvidenceEvent`] per kind per window, with the
//! numbers in words ("touched 312 ports on 192.0.2.0/24 in 60 s (NetFlow)").
//!
//! Spoofing: a flow's source address is whatever its first packet claimed. Only a TCP flow in
//! which the source both opened (SYN) and acknowledged (ACK) proves the address is real: a
//! forger never sees the SYN-ACK it would have to acknowledge. Scans count the ports and hosts
//! of such proven flows apart; a scan seen only in unproven flows, and every SYN flood or
//! incomplete-handshake finding (SYN-only flows prove nothing by nature), is reported with the
//! source id `{kind}-unproven` (see [`is_unproven`]), "possibly spoofed" in its words, no
//! penalty and at most a dubious verdict. `roost bgp` never diverts a verdict that rests on such
//! evidence alone.
//!
//! Pure: records carry their own time; nothing reads a clock. Memory is bounded: at most
//! `max_sources` sources (the oldest windows go first), and the sets of ports and hosts stop
//! growing once past every threshold.

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

use roost_engine::UNPROVEN;
/// Whether an evidence source id (`flow:synflood-unproven`) names flow evidence that may have
/// been forged: a verdict resting on such evidence alone is never made a flowspec rule.
pub use roost_engine::unproven_source as is_unproven;

/// What the windows use of a flow record: a third of its size, so a batch of them is a third
/// of the memory to hand over and to read.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Seen {
    /// The flow's end (else its start, else its arrival), Unix ms.
    pub time: i64,
    pub packets: u64,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub dst_port: u16,
    pub tcp_flags: u16,
    pub proto: u8,
}

/// A flow of nothing between unspecified addresses (to fill buffers with).
impl Default for Seen {
    fn default() -> Seen {
        let none = IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED);
        Seen { time: 0, packets: 0, src: none, dst: none, dst_port: 0, tcp_flags: 0, proto: 0 }
    }
}

impl From<&FlowRecord> for Seen {
    fn from(f: &FlowRecord) -> Seen {
        Seen {
            time: f.end.or(f.start).unwrap_or(f.received),
            packets: f.packets,
            src: f.src,
            dst: f.dst,
            dst_port: f.dst_port,
            tcp_flags: f.tcp_flags,
            proto: f.proto,
        }
    }
}

impl Seen {
    /// Whether the flow proves its source address: TCP, opened and acknowledged by the source.
    fn proves_source(&self) -> bool {
        self.proto == 6 && self.tcp_flags & 0x12 == 0x12
    }

    /// As [`FlowRecord::syn_only`].
    fn syn_only(&self) -> bool {
        self.proto == 6 && self.tcp_flags & 0x02 != 0 && self.tcp_flags & 0x10 == 0
    }
}

struct Window {
    src: IpAddr,
    start: i64,
    last: i64,
    ports: Few<u16>,
    hosts: Hosts,
    /// The same, of the flows that prove the source ([`Seen::proves_source`]).
    proven_ports: Few<u16>,
    proven_hosts: Hosts,
    tcp: u64,
    syn_only: u64,
    flows: u64,
    packets: u64,
    /// Kinds already reported in this window (bits: portscan, hostscan, synflood, incomplete;
    /// shifted by [`UNPROVEN_BITS`] for their unproven variants).
    fired: u8,
}

impl Window {
    fn new(src: IpAddr, start: i64) -> Window {
        Window {
            src,
            start,
            last: start,
            ports: Few::default(),
            hosts: Hosts::default(),
            proven_ports: Few::default(),
            proven_hosts: Hosts::default(),
            tcp: 0,
            syn_only: 0,
            flows: 0,
            packets: 0,
            fired: 0,
        }
    }

    fn prefetch_sets(&self) {
        for p in [self.ports.spilled(), self.proven_ports.spilled()].into_iter().flatten() {
            prefetch(p.cast());
        }
        for p in [self.hosts.seen.spilled(), self.proven_hosts.seen.spilled()].into_iter().flatten() {
            prefetch(p.cast());
            prefetch(p.cast::<u8>().wrapping_add(64));
        }
    }

    /// A new window from `start`, the sets' memory kept (a busy source's window starts over
    /// every minute: freeing and allocating its sets each time was most of the cost).
    fn restart(&mut self, start: i64) {
        self.ports.clear();
        self.hosts.clear();
        self.proven_ports.clear();
        self.proven_hosts.clear();
        (self.start, self.last, self.tcp, self.syn_only, self.flows, self.packets, self.fired) =
            (start, start, 0, 0, 0, 0, 0);
    }
}

/// The windows of every source: in one vector, found through [`Index`].
pub struct FlowFeatures {
    cfg: FeaturesConfig,
    windows: Vec<Window>,
    index: Index,
}

/// Where each source's window is in [`FlowFeatures::windows`]: an open-addressing table (linear
/// probing, at most half full) of a hash tag and a position per source. It is laid out so a
/// batch of flows can look ahead ([`FlowFeatures::observe_all`]): a flow's slot is computed and
/// fetched from memory a few flows before its window is, and its window a few flows before it
/// is used. Windows are only ever added one at a time or dropped all together (expiry, eviction),
/// so the table is rebuilt then rather than deleted from. The hash is seeded per process: the
/// addresses are the senders' (and a forger's) choice.
struct Index {
    slots: Vec<Slot>,
    hasher: hashbrown::DefaultHashBuilder,
}

#[derive(Clone, Copy)]
struct Slot {
    /// The hash's upper half.
    tag: u32,
    /// The window's position, or [`EMPTY`].
    at: u32,
}

const EMPTY: u32 = u32::MAX;
const FREE: Slot = Slot { tag: 0, at: EMPTY };

impl Index {
    fn new() -> Index {
        Index { slots: vec![FREE; 1024], hasher: Default::default() }
    }

    fn hash(&self, a: &IpAddr) -> u64 {
        std::hash::BuildHasher::hash_one(&self.hasher, a)
    }

    fn home(&self, h: u64) -> usize {
        h as usize & (self.slots.len() - 1)
    }

    /// The first window whose tag matches `h`: most likely `h`'s source's, to be checked.
    fn candidate(&self, h: u64) -> Option<u32> {
        self.probe(h, |_| true)
    }

    fn find(&self, h: u64, src: &IpAddr, windows: &[Window]) -> Option<u32> {
        self.probe(h, |at| windows[at as usize].src == *src)
    }

    /// The first window from `h`'s slot on whose tag matches and which `accept`s.
    fn probe(&self, h: u64, accept: impl Fn(u32) -> bool) -> Option<u32> {
        let mask = self.slots.len() - 1;
        let mut i = self.home(h);
        loop {
            let s = self.slots[i];
            if s.at == EMPTY {
                return None;
            }
            if s.tag == (h >> 32) as u32 && accept(s.at) {
                return Some(s.at);
            }
            i = (i + 1) & mask;
        }
    }

    /// Notes window `at` under `h` (not there yet).
    fn insert(&mut self, h: u64, at: u32) {
        let mask = self.slots.len() - 1;
        let mut i = self.home(h);
        while self.slots[i].at != EMPTY {
            i = (i + 1) & mask;
        }
        self.slots[i] = Slot { tag: (h >> 32) as u32, at };
    }

    /// The table anew for `windows`, at least twice their number of slots (plus room for one).
    fn rebuild(&mut self, windows: &[Window]) {
        let n = ((windows.len() + 1) * 2).next_power_of_two().max(1024);
        self.slots.clear();
        self.slots.resize(n, FREE);
        for (at, w) in windows.iter().enumerate() {
            let h = self.hash(&w.src);
            self.insert(h, at as u32);
        }
    }

    fn slot_address(&self, h: u64) -> *const u8 {
        (&self.slots[self.home(h)] as *const Slot).cast()
    }
}

/// Asks the processor to bring the cache line at `p` closer (a hint: it never faults and
/// changes nothing observable).
#[inline(always)]
fn prefetch(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint that never faults, whatever the address; SSE, which the
    // instruction needs, is part of every x86_64 processor.
    #[allow(unsafe_code)]
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// How many flows ahead [`FlowFeatures::observe_all`] fetches a flow's slot, and then its window.
const AHEAD: usize = 8;

const PORTSCAN: u8 = 1;
const HOSTSCAN: u8 = 2;
const SYNFLOOD: u8 = 4;
const INCOMPLETE: u8 = 8;
const UNPROVEN_BITS: u8 = 4;

impl FlowFeatures {
    pub fn new(cfg: FeaturesConfig) -> FlowFeatures {
        FlowFeatures { cfg, windows: Vec::new(), index: Index::new() }
    }

    pub fn tracked(&self) -> usize {
        self.windows.len()
    }

    /// Adds flows, in order; returns the evidence they complete. The same as [`Self::observe`]
    /// of each, but a flow's window is fetched from memory while the flows before it are
    /// counted: with many sources, a lookup is a cache miss or two, which dominated the cost.
    pub fn observe_all(&mut self, flows: &[Seen], out: &mut Vec<EvidenceEvent>) {
        // (longer than the distance from the first stage to the last)
        const RING: usize = 4 * AHEAD;
        let mut hashes = [0u64; RING];
        let mut candidates = [EMPTY; RING];
        for i in 0..flows.len() + 3 * AHEAD {
            if let Some(f) = flows.get(i) {
                let h = self.index.hash(&f.src);
                hashes[i % RING] = h;
                prefetch(self.index.slot_address(h));
            }
            if let Some(j) = i.checked_sub(AHEAD).filter(|&j| j < flows.len()) {
                let c = self.index.candidate(hashes[j % RING]).unwrap_or(EMPTY);
                candidates[j % RING] = c;
                if let Some(w) = self.windows.get(c as usize) {
                    let p: *const u8 = (w as *const Window).cast();
                    for line in (0..std::mem::size_of::<Window>()).step_by(64) {
                        prefetch(p.wrapping_add(line));
                    }
                }
            }
            // the sets' members past the first few live apart: fetched once the window is near
            if let Some(w) = i
                .checked_sub(2 * AHEAD)
                .filter(|&k| k < flows.len())
                .and_then(|k| self.windows.get(candidates[k % RING] as usize))
            {
                w.prefetch_sets();
            }
            if let Some(k) = i.checked_sub(3 * AHEAD).filter(|&k| k < flows.len()) {
                self.add(&flows[k], hashes[k % RING], candidates[k % RING], out);
            }
        }
    }

    /// Adds a flow; returns the evidence it completes.
    pub fn observe(&mut self, f: &FlowRecord, out: &mut Vec<EvidenceEvent>) {
        let h = self.index.hash(&f.src);
        self.add(&Seen::from(f), h, EMPTY, out);
    }

    /// The window of `src` (hash `h`), made when there is none: `candidate` is where it was
    /// likely to be a moment ago (checked, as windows may have been added or dropped since).
    fn window(&mut self, src: &IpAddr, h: u64, candidate: u32, t: i64) -> usize {
        if self.windows.get(candidate as usize).is_some_and(|w| w.src == *src) {
            return candidate as usize;
        }
        if let Some(at) = self.index.find(h, src, &self.windows) {
            return at as usize;
        }
        if self.windows.len() >= self.cfg.max_sources {
            self.evict(t);
        }
        if (self.windows.len() + 1) * 2 > self.index.slots.len() {
            self.index.rebuild(&self.windows);
        }
        let at = self.windows.len();
        self.windows.push(Window::new(*src, t));
        self.index.insert(h, at as u32);
        at
    }

    fn add(&mut self, f: &Seen, h: u64, candidate: u32, out: &mut Vec<EvidenceEvent>) {
        let t = f.time;
        let win = self.cfg.window.as_millis() as i64;
        let at = self.window(&f.src, h, candidate, t);
        let w = &mut self.windows[at];
        if t >= w.start.saturating_add(win) {
            w.restart(t);
        }
        w.last = w.last.max(t);
        w.flows += 1;
        w.packets = w.packets.saturating_add(f.packets);
        let cap = self.cfg.portscan_ports.max(self.cfg.hostscan_hosts) + 1;
        w.ports.insert(f.dst_port, cap);
        w.hosts.insert(f.dst, cap);
        if f.proves_source() {
            w.proven_ports.insert(f.dst_port, cap);
            w.proven_hosts.insert(f.dst, cap);
        }
        if f.proto == 6 {
            w.tcp += 1;
            w.syn_only += u64::from(f.syn_only());
        }
        let secs = self.cfg.window.as_secs();
        // `proven`: from flows that prove the source; otherwise it may be forged, and weighs at
        // most a dubious verdict, with no penalty
        let mut emit = |bit: u8, id: &str, weight: &Weight, detail: String, proven: bool, w: &mut Window| {
            let bit = if proven { bit } else { bit << UNPROVEN_BITS };
            if w.fired & bit != 0 {
                return;
            }
            w.fired |= bit;
            let (source, penalty, verdict, detail) = if proven {
                (format!("flow:{id}"), weight.penalty, weight.verdict.clone(), detail)
            } else {
                let capped = weight.verdict.as_ref().map(|_| "dubious".to_owned());
                let detail = format!("{detail}; possibly spoofed: no completed handshake proves the source");
                (format!("flow:{id}{UNPROVEN}"), 0.0, capped, detail)
            };
            out.push(EvidenceEvent {
                time: Timestamp(t),
                client: f.src,
                source,
                penalty,
                verdict,
                ttl_ms: weight.ttl.map(|d| d.as_millis() as u64),
                detail,
            });
        };
        // a scan is proven when the proven flows alone reach the threshold
        let (ports, hosts) = (self.cfg.portscan_ports, self.cfg.hostscan_hosts);
        let scan = |proven: usize, all: usize, min: usize| {
            if proven >= min {
                Some((proven, true))
            } else if all >= min {
                Some((all, false))
            } else {
                None
            }
        };
        if let Some((n, proven)) = scan(w.proven_ports.len(), w.ports.len(), ports) {
            let on = targets(if proven { &w.proven_hosts } else { &w.hosts });
            let detail = format!("touched {n} ports on {on} in {secs} s (NetFlow)");
            emit(PORTSCAN, "portscan", &self.cfg.portscan, detail, proven, w);
        }
        if let Some((n, proven)) = scan(w.proven_hosts.len(), w.hosts.len(), hosts) {
            let on = targets(if proven { &w.proven_hosts } else { &w.hosts });
            let detail = format!("contacted {n} hosts ({on}) in {secs} s (NetFlow)");
            emit(HOSTSCAN, "hostscan", &self.cfg.hostscan, detail, proven, w);
        }
        // SYN-only flows prove nothing: a flood or a share of incomplete handshakes may be forged
        if w.syn_only >= self.cfg.synflood_flows {
            let detail = format!("{} SYN-only flows (handshakes never completed) in {secs} s (NetFlow)", w.syn_only);
            emit(SYNFLOOD, "synflood", &self.cfg.synflood, detail, false, w);
        }
        if w.tcp >= self.cfg.incomplete_min_flows && w.syn_only as f64 >= self.cfg.incomplete_share * w.tcp as f64 {
            let detail =
                format!("{} of {} TCP flows never completed the handshake in {secs} s (NetFlow)", w.syn_only, w.tcp);
            emit(INCOMPLETE, "incomplete", &self.cfg.incomplete, detail, false, w);
        }
    }

    /// Drops windows that ended before `now`.
    pub fn expire(&mut self, now: Timestamp) {
        let win = self.cfg.window.as_millis() as i64;
        self.windows.retain(|w| w.start.saturating_add(win) > now.millis());
        self.index.rebuild(&self.windows);
    }

    /// At capacity: the windows that ended go, else the tenth least recently active.
    fn evict(&mut self, now: i64) {
        self.expire(Timestamp(now));
        if self.windows.len() < self.cfg.max_sources {
            return;
        }
        let mut lasts: Vec<i64> = self.windows.iter().map(|w| w.last).collect();
        let k = (lasts.len() / 10).max(1);
        let (_, cut, _) = lasts.select_nth_unstable(k - 1);
        let cut = *cut;
        self.windows.retain(|w| w.last > cut);
        self.index.rebuild(&self.windows);
    }
}

/// The destinations in words: one host, the one /24 (or /64) they share, or how many.
/// A set that keeps its first [`FEW`] members inline: most sources touch a port or two of a
/// host or two in a window. Past that, all members live in one vector, scanned 16 at a time
/// (up to the cap: 101 by default, a few cache lines read in order). A hash set was an
/// allocation and a rehash or two per busy source and window, and a binary search a chain of
/// dependent loads: each was a third of the features thread's time at line rate.
/// It counts distinct members up to a cap; at the cap the members are let go and only the
/// count stays: nothing more is added in that window, and a busy server's sets cost neither
/// memory nor a lookup per flow from then on.
#[derive(Clone, Debug, Default)]
struct Few<T> {
    inline: [T; FEW],
    /// Distinct members seen (up to the cap); the first [`FEW`] inline, past that all in `more`.
    len: u32,
    more: Vec<T>,
}

const FEW: usize = 4;

impl<T: Copy + Default + Eq> Few<T> {
    fn len(&self) -> usize {
        self.len as usize
    }

    /// Where the members live when they are not inline.
    fn spilled(&self) -> Option<*const T> {
        (!self.more.is_empty()).then_some(self.more.as_ptr())
    }

    /// Empty, the vector's memory kept.
    fn clear(&mut self) {
        self.len = 0;
        self.more.clear();
    }

    /// Adds `v` while fewer than `cap` distinct members were seen; true when it was new.
    fn insert(&mut self, v: T, cap: usize) -> bool {
        let n = self.len as usize;
        if n >= cap {
            return false;
        }
        if n < FEW {
            if self.inline[..n].contains(&v) {
                return false;
            }
            self.inline[n] = v;
        } else {
            if self.more.is_empty() {
                self.more.reserve_exact(4 * FEW);
                self.more.extend_from_slice(&self.inline);
            }
            if holds(&self.more, v) {
                return false;
            }
            self.more.push(v);
        }
        self.len += 1;
        if self.len as usize >= cap {
            self.more = Vec::new();
        }
        true
    }

    /// The members held (none once the cap was reached).
    #[cfg(test)]
    fn iter(&self) -> impl Iterator<Item = &T> {
        let inline = if self.len() <= FEW { &self.inline[..self.len()] } else { &[] };
        inline.iter().chain(self.more.iter())
    }
}

/// Whether `s` holds `v`: compared 16 at a time without an early exit, which the compiler
/// turns into vector instructions.
fn holds<T: Copy + Eq>(s: &[T], v: T) -> bool {
    let mut chunks = s.chunks_exact(16);
    for c in &mut chunks {
        if c.iter().fold(false, |found, x| found | (*x == v)) {
            return true;
        }
    }
    chunks.remainder().contains(&v)
}

/// Destination hosts: told apart by a 32-bit fingerprint (an IPv4 address itself), with the
/// first one kept for the words, and whether all share its /24 (/64).
#[derive(Clone, Debug, Default)]
struct Hosts {
    seen: Few<u32>,
    first: Option<IpAddr>,
    one_net: bool,
}

fn net(a: &IpAddr) -> u128 {
    match a {
        IpAddr::V4(v) => (u32::from(*v) >> 8) as u128,
        IpAddr::V6(v) => u128::from(*v) >> 64 | 1 << 127,
    }
}

impl Hosts {
    fn clear(&mut self) {
        self.seen.clear();
        (self.first, self.one_net) = (None, false);
    }

    fn len(&self) -> usize {
        self.seen.len()
    }

    /// Adds `a` while fewer than `cap` hosts were seen.
    fn insert(&mut self, a: IpAddr, cap: usize) {
        if self.seen.len() >= cap {
            return;
        }
        let print = match a {
            IpAddr::V4(v) => u32::from(v),
            IpAddr::V6(v) => {
                let x = u128::from(v);
                (x as u32) ^ ((x >> 32) as u32).rotate_left(7) ^ ((x >> 64) as u32).rotate_left(13) ^ ((x >> 96) as u32)
            }
        };
        self.seen.insert(print, cap);
        match self.first {
            None => (self.first, self.one_net) = (Some(a), true),
            Some(f) => self.one_net &= net(&f) == net(&a),
        }
    }
}

fn targets(hosts: &Hosts) -> String {
    let Some(first) = &hosts.first else { return "no host".into() };
    if hosts.len() == 1 {
        return first.to_string();
    }
    if hosts.one_net {
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

    /// A scan by connections the source completed (SYN and ACK from it) proves the source: full
    /// weight, once per window.
    #[test]
    fn a_port_scan_is_reported_once_per_window_with_its_numbers() {
        let cfg =
            FeaturesConfig { portscan: Weight { verdict: Some("bad".into()), ..cfg_scan() }, ..Default::default() };
        let mut f = FlowFeatures::new(cfg);
        let mut out = Vec::new();
        for p in 0..150u16 {
            f.observe(&flow("203.0.113.200", "192.0.2.20", p + 1, 0x1b, 1_000 + i64::from(p)), &mut out);
        }
        let scans: Vec<_> = out.iter().filter(|e| e.source == "flow:portscan").collect();
        assert_eq!(scans.len(), 1, "{out:?}");
        assert_eq!(scans[0].detail, "touched 100 ports on 192.0.2.20 in 60 s (NetFlow)");
        assert_eq!((scans[0].verdict.as_deref(), scans[0].penalty), (Some("bad"), 10.0));
        assert_eq!(out.len(), 1, "nothing unproven: {out:?}");
        // the next window reports again
        out.clear();
        for p in 0..100u16 {
            f.observe(&flow("203.0.113.200", "192.0.2.21", p + 1, 0x1b, 70_000 + i64::from(p)), &mut out);
        }
        assert_eq!(out.iter().filter(|e| e.source == "flow:portscan").count(), 1);
    }

    fn cfg_scan() -> Weight {
        FeaturesConfig::default().portscan
    }

    /// A SYN scan (no handshake completed) may come from a forged address: reported as
    /// unproven, possibly spoofed, no penalty, at most dubious however the kind is weighted.
    /// Proven flows later in the window still make the proven finding.
    #[test]
    fn a_scan_in_unproven_flows_is_possibly_spoofed_and_at_most_dubious() {
        let cfg =
            FeaturesConfig { portscan: Weight { verdict: Some("bad".into()), ..cfg_scan() }, ..Default::default() };
        let mut f = FlowFeatures::new(cfg);
        let mut out = Vec::new();
        for p in 0..150u16 {
            f.observe(&flow("203.0.113.200", "192.0.2.20", p + 1, 0x02, 1_000 + i64::from(p)), &mut out);
        }
        let scans: Vec<_> = out.iter().filter(|e| e.source.starts_with("flow:portscan")).collect();
        assert_eq!(scans.len(), 1, "{out:?}");
        let e = scans[0];
        assert_eq!(e.source, "flow:portscan-unproven");
        assert!(is_unproven(&e.source));
        assert_eq!((e.verdict.as_deref(), e.penalty), (Some("dubious"), 0.0));
        assert!(e.detail.ends_with("possibly spoofed: no completed handshake proves the source"), "{}", e.detail);
        // 150 SYN-only of 150 TCP flows: incomplete handshakes too, once, unproven
        let inc: Vec<_> = out.iter().filter(|e| e.source.starts_with("flow:incomplete")).collect();
        assert_eq!(inc.len(), 1);
        assert!(is_unproven(&inc[0].source) && inc[0].penalty == 0.0);
        out.clear();
        for p in 0..100u16 {
            f.observe(&flow("203.0.113.200", "192.0.2.20", p + 1, 0x12, 2_000 + i64::from(p)), &mut out);
        }
        assert_eq!(out.iter().map(|e| e.source.as_str()).collect::<Vec<_>>(), ["flow:portscan"]);
        assert!(!is_unproven("flow:portscan") && !is_unproven("rule:R-1-unproven"));
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
        let floods: Vec<_> = out.iter().filter(|e| e.source.starts_with("flow:synflood")).collect();
        assert_eq!(floods.len(), 1, "{out:?}");
        let e = floods[0];
        assert_eq!(e.client, "203.0.113.66".parse::<IpAddr>().unwrap());
        // SYN-only flows prove nothing: weighed `bad`, a flood is at most dubious, no penalty
        assert_eq!(cfg.synflood.verdict.as_deref(), Some("bad"));
        assert_eq!(
            (e.source.as_str(), e.verdict.as_deref(), e.penalty),
            ("flow:synflood-unproven", Some("dubious"), 0.0)
        );
        assert_eq!(e.ttl_ms, Some(600_000));
        assert!(e.detail.contains("500 SYN-only flows"), "{}", e.detail);
        assert!(e.detail.contains("possibly spoofed"), "{}", e.detail);
        assert!(out.iter().any(|e| e.source == "flow:incomplete-unproven"), "{out:?}");
        assert!(!out.iter().any(|e| e.source.contains("portscan") || e.source.contains("hostscan")), "{out:?}");
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
        assert_eq!(f.windows.iter().find(|w| w.src == big.src).unwrap().packets, u64::MAX);
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
        let e = out.iter().find(|e| e.source == "flow:hostscan-unproven").unwrap();
        assert_eq!(
            e.detail,
            "contacted 20 hosts (192.0.2.0/24) in 60 s (NetFlow); possibly spoofed: no completed handshake proves the source"
        );
    }

    /// The inline set agrees with a hash set on any sequence of inserts, across its move from
    /// inline to the heap.
    #[test]
    fn a_few_members_inline_then_a_hash_set() {
        for n in 0..12u16 {
            let mut few = Few::default();
            let mut set = std::collections::HashSet::new();
            for i in 0..n {
                let v = (i * 7) % 5 + i / 5 * 10;
                assert_eq!(few.insert(v, 100), set.insert(v));
                assert_eq!(few.len(), set.len());
            }
            let mut got: Vec<u16> = few.iter().copied().collect();
            got.sort_unstable();
            let mut want: Vec<u16> = set.into_iter().collect();
            want.sort_unstable();
            assert_eq!(got, want);
            assert_eq!(!few.more.is_empty(), want.len() > FEW);
        }
    }

    /// At the cap the count stays and the members go: later inserts, new or not, change nothing.
    #[test]
    fn a_set_at_its_cap_keeps_the_count_and_frees_the_members() {
        for cap in [1, 3, FEW, FEW + 1, 10] {
            let mut few = Few::default();
            for v in 0..cap as u16 {
                assert!(few.insert(v, cap));
                assert!(!few.insert(v, cap), "a member counts once");
            }
            assert_eq!(few.len(), cap);
            assert!(few.more.is_empty(), "cap {cap}: members let go");
            assert_eq!(few.iter().count(), if cap > FEW { 0 } else { cap }, "cap {cap}: only inline ones kept");
            assert!(!few.insert(500, cap));
            assert_eq!(few.len(), cap);
        }
    }

    /// Flows of `sources` sources (some IPv6), over several windows, of every kind: a fixed
    /// pseudo-random sequence.
    fn mixed_flows(n: usize, sources: u64) -> Vec<FlowRecord> {
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        (0..n)
            .map(|i| {
                let r = next();
                // a tenth of the flows from ten busy sources (scanners, flooders), the rest spread
                let s = if r % 10 == 0 { (r >> 8) % 10 } else { r % sources };
                let src = if s % 5 == 0 {
                    format!("2001:db8::{s:x}")
                } else {
                    format!("10.{}.{}.{}", s >> 16, (s >> 8) & 255, s & 255)
                };
                let dst = format!("192.0.2.{}", (r >> 20) % 160);
                let flags = [0x02, 0x12, 0x1b, 0x10][(r >> 30) as usize % 4];
                // over two minutes: windows start over
                flow(&src, &dst, ((r >> 40) % 240) as u16, flags, (i as i64) * 3)
            })
            .collect()
    }

    #[test]
    fn flows_added_in_batches_give_what_they_give_one_at_a_time() {
        let cfg = FeaturesConfig {
            max_sources: 500,
            portscan_ports: 20,
            hostscan_hosts: 15,
            synflood_flows: 30,
            ..FeaturesConfig::default()
        };
        let flows = mixed_flows(40_000, 1_500);
        let (mut one, mut found_one) = (FlowFeatures::new(cfg.clone()), Vec::new());
        for f in &flows {
            one.observe(f, &mut found_one);
        }
        let (mut batched, mut found_batched) = (FlowFeatures::new(cfg), Vec::new());
        let mut rest = &flows[..];
        for size in [1, 2, 7, 1024, 3, 24, 25, 4096].into_iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let (now, later) = rest.split_at(size.min(rest.len()));
            batched.observe_all(&now.iter().map(Seen::from).collect::<Vec<_>>(), &mut found_batched);
            rest = later;
        }
        assert!(found_one.len() > 100, "the sequence finds things: {}", found_one.len());
        assert!(
            found_one.iter().any(|e| e.source.ends_with("-unproven"))
                && found_one.iter().any(|e| !e.source.ends_with("-unproven"))
        );
        assert_eq!(found_batched, found_one);
        assert_eq!(batched.tracked(), one.tracked());
        let sorted = |f: &FlowFeatures| {
            let mut w: Vec<_> =
                f.windows.iter().map(|w| (w.src, w.start, w.last, w.flows, w.ports.len(), w.hosts.len())).collect();
            w.sort();
            w
        };
        assert_eq!(sorted(&batched), sorted(&one));
    }

    #[test]
    fn every_source_has_one_window_however_many_there_are() {
        let mut f = FlowFeatures::new(FeaturesConfig::default());
        let mut out = Vec::new();
        let flows: Vec<Seen> = (0..60_000u32)
            .map(|i| {
                let f = flow(
                    &std::net::Ipv4Addr::from(0x0a00_0000 + i % 20_000).to_string(),
                    "192.0.2.10",
                    443,
                    0x1b,
                    1000,
                );
                Seen::from(&f)
            })
            .collect();
        for chunk in flows.chunks(1000) {
            f.observe_all(chunk, &mut out);
        }
        assert_eq!(f.tracked(), 20_000);
        assert!(f.windows.iter().all(|w| w.flows == 3), "each source's three flows in one window");
        // after expiry the table is rebuilt: the windows left are still found, not made again
        f.windows.iter_mut().take(5_000).for_each(|w| w.start = 1_000_000);
        f.expire(Timestamp(900_000));
        assert_eq!(f.tracked(), 5_000);
        f.observe_all(&flows[..20_000], &mut out);
        assert_eq!(f.tracked(), 20_000);
        assert_eq!(f.windows.iter().filter(|w| w.flows == 4).count(), 5_000);
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
