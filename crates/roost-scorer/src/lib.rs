//! `roost score`: the engine behind a Kafka consumer group.
//!
//! - [`Scorer`] (no I/O): one [`Engine`] per assigned partition of the requests topic. A
//!   partition's state is a function of that partition's records alone, in offset order, so
//!   whichever instance owns it computes the same verdicts. On assignment a partition is read
//!   from its beginning: records before the group's committed offset rebuild state without
//!   effects; at the committed offset the partition's current verdicts are written once
//!   (resync), and from there on every verdict change is an output, and so is every renewal
//!   (a verdict kept in force past the expiry last written: stores with TTLs must hear of it).
//! - [`run`]: the loop around it: poll a batch, write its outputs to Redis and the verdicts
//!   topic, and only then commit the offsets. A Redis that comes back empty gets every current
//!   verdict again.
//!
//! The messages it reads and writes are `roost_wire`'s.

pub mod overrides;
pub mod population;
pub mod run;

use std::collections::BTreeMap;

use ipnetwork::IpNetwork;
use roost_engine::{Engine, Explanation, Judge, Override, Timestamp, VerdictChange};

pub use population::PopulationMetrics;
use roost_wire::requests as wire;
pub use run::{ScorerMetrics, Settings, run};

/// Builds a fresh engine (rules, feeds and GeoIP attached) for a partition: the live engine,
/// and a shadow one while sources run in shadow mode.
pub type EngineFactory = Box<dyn Fn() -> Judge + Send>;

struct Partition {
    engine: Judge,
    /// The offset of the next record to handle.
    next: i64,
    /// Records before this offset were handled by an earlier owner: replay them silently.
    live_from: i64,
    live: bool,
}

/// What the scorer asks to be written.
#[derive(Debug)]
pub enum Output {
    /// A verdict changed (event time `now` of its partition).
    Change { partition: i32, change: VerdictChange, now: Timestamp },
    /// A partition went live: its current non-good verdicts, to (re)write without announcing
    /// (and the shadow engine's, as shadow verdicts).
    Resync { partition: i32, verdicts: Vec<Explanation>, shadow: Vec<Explanation>, now: Timestamp },
}

/// Counters, for metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub events: u64,
    /// Records replayed to rebuild state after an assignment.
    pub rebuilt: u64,
    /// Records that were not a request event (counted, logged, skipped).
    pub bad_records: u64,
    /// Records dated beyond the wall clock plus the allowed skew, taken as that time.
    pub clamped: u64,
}

/// Starts or stops a judge's shadow engine as sources go into or out of shadow mode (a rule
/// reload); returns whether it did.
pub type CandidateRefresh = Box<dyn Fn(&mut Judge) -> bool + Send>;

/// The engines of the partitions this instance owns.
pub struct Scorer {
    make: EngineFactory,
    refresh: Option<CandidateRefresh>,
    parts: BTreeMap<i32, Partition>,
    overrides: BTreeMap<IpNetwork, Override>,
    outputs: Vec<Output>,
    counts: Counts,
    /// The host's clock as last told ([`Scorer::set_wall_clock`]), and how far event times may
    /// run ahead of it.
    wall: Option<Timestamp>,
    max_skew: i64,
}

impl Scorer {
    pub fn new(make: EngineFactory) -> Scorer {
        Scorer {
            make,
            refresh: None,
            parts: BTreeMap::new(),
            overrides: BTreeMap::new(),
            outputs: Vec::new(),
            counts: Counts::default(),
            wall: None,
            max_skew: 10_000,
        }
    }

    /// The host's clock now (the caller reads it: this type reads no clock). Records dated
    /// beyond it plus the allowed skew are taken as dated then, so no record can move a
    /// partition's clock (and its expiry) ahead of real time. Without it, event times are
    /// taken as they come (offline use).
    pub fn set_wall_clock(&mut self, now: Timestamp) {
        self.wall = Some(now);
    }

    /// How far event times may run ahead of the wall clock (default 10 s).
    pub fn set_max_skew(&mut self, skew: std::time::Duration) {
        self.max_skew = skew.as_millis().min(i64::MAX as u128) as i64;
    }

    /// Lets [`Scorer::refresh_candidates`] start and stop shadow engines.
    pub fn with_refresh(mut self, f: CandidateRefresh) -> Scorer {
        self.refresh = Some(f);
        self
    }

    /// A rule reload may have put the first source into shadow mode or taken the last out:
    /// every partition's judge starts or stops its shadow engine (a shadow engine started now
    /// learns from here on). Returns how many changed.
    pub fn refresh_candidates(&mut self) -> usize {
        let Some(f) = &self.refresh else { return 0 };
        self.parts.values_mut().map(|p| f(&mut p.engine)).filter(|changed| *changed).count()
    }

    /// Takes partitions, each with the group's committed offset.
    pub fn assign(&mut self, parts: &[(i32, Option<i64>)]) {
        for &(p, committed) in parts {
            let mut engine = (self.make)();
            engine.track_renewals(true);
            let mut ignored = Vec::new();
            for (net, ov) in &self.overrides {
                engine.set_override(*net, ov.clone(), Timestamp(0), &mut ignored);
            }
            let mut part = Partition { engine, next: 0, live_from: committed.unwrap_or(0), live: false };
            Self::maybe_live(p, &mut part, &mut self.outputs);
            self.parts.insert(p, part);
        }
    }

    /// Gives partitions up: their state and unwritten outputs go (the next owner rebuilds).
    pub fn revoke(&mut self, parts: &[i32]) {
        for p in parts {
            self.parts.remove(p);
        }
        self.outputs.retain(|o| match o {
            Output::Change { partition, .. } | Output::Resync { partition, .. } => !parts.contains(partition),
        });
    }

    pub fn partitions(&self) -> impl Iterator<Item = i32> + '_ {
        self.parts.keys().copied()
    }

    fn maybe_live(p: i32, part: &mut Partition, out: &mut Vec<Output>) {
        if !part.live && part.next >= part.live_from {
            part.live = true;
            part.engine.take_renewals(&mut Vec::new()); // the resync carries them
            let now = part.engine.now();
            let (verdicts, shadow) = flagged(&part.engine, now);
            tracing::info!(partition = p, offset = part.next, flagged = verdicts.len(), "partition live");
            out.push(Output::Resync { partition: p, verdicts, shadow, now });
        }
    }

    /// Handles one record of partition `p`. Records of partitions not owned, and records
    /// already handled, are ignored. Returns an error for a record that is not a request event
    /// (it is skipped; the caller counts and logs it).
    pub fn record(&mut self, p: i32, offset: i64, value: Option<&[u8]>) -> Result<(), wire::Error> {
        let Some(part) = self.parts.get_mut(&p) else { return Ok(()) };
        if offset < part.next {
            return Ok(());
        }
        part.next = offset + 1;
        let result = match value.map(wire::decode_message) {
            None => Err(wire::Error::Empty),
            Some(Err(e)) => Err(e),
            Some(Ok(mut rec)) => {
                let live = part.live;
                let time = match &mut rec {
                    wire::Message::Request(ev) => &mut ev.time,
                    wire::Message::Evidence(e) => &mut e.time,
                    wire::Message::ErrorLog(e) => &mut e.time,
                };
                // never ahead of the wall clock (plus skew): one future-dated record would
                // otherwise expire the partition's verdicts and overrides at once
                if let Some(limit) = self.wall.map(|w| Timestamp(w.millis().saturating_add(self.max_skew)))
                    && *time > limit
                {
                    *time = limit;
                    self.counts.clamped += 1;
                }
                let time = *time;
                // the one expiry policy, as `roost replay`'s: verdicts lapse as event time passes
                let mut changes = Vec::new();
                part.engine.advance(time, &mut changes);
                let handled = match &rec {
                    wire::Message::Request(ev) => {
                        part.engine.observe(ev, &mut changes);
                        Ok(())
                    }
                    wire::Message::Evidence(e) => match e.evidence() {
                        Ok(ev) => {
                            part.engine.apply(e.client, e.time, &[ev], &mut changes);
                            Ok(())
                        }
                        Err(why) => Err(wire::Error::Evidence(why)),
                    },
                    wire::Message::ErrorLog(e) => {
                        part.engine.observe_error(e, &mut changes);
                        Ok(())
                    }
                };
                if live {
                    let now = part.engine.now();
                    self.outputs.extend(changes.into_iter().map(|change| Output::Change { partition: p, now, change }));
                }
                match handled {
                    Ok(()) => {
                        if live {
                            self.counts.events += 1;
                        } else {
                            self.counts.rebuilt += 1;
                        }
                        Ok(())
                    }
                    Err(e) => Err(e),
                }
            }
        };
        if result.is_err() {
            self.counts.bad_records += 1;
        }
        Self::maybe_live(p, part, &mut self.outputs);
        result
    }

    /// Sets (`Some`) or removes an operator's override in every partition's engine, and in
    /// engines made later.
    pub fn set_override(&mut self, net: IpNetwork, ov: Option<Override>) {
        match &ov {
            Some(o) => self.overrides.insert(net, o.clone()),
            None => self.overrides.remove(&net),
        };
        for (p, part) in &mut self.parts {
            let now = part.engine.now();
            let mut changes = Vec::new();
            match &ov {
                Some(o) => part.engine.set_override(net, o.clone(), now, &mut changes),
                None => part.engine.remove_override(net, now, &mut changes),
            }
            if part.live {
                self.outputs.extend(changes.into_iter().map(|c| Output::Change { partition: *p, change: c, now }));
            }
        }
    }

    /// Every live partition's current verdicts, to write again (the store lost them).
    pub fn resync_all(&mut self) {
        for (p, part) in &self.parts {
            if part.live {
                let now = part.engine.now();
                let (verdicts, shadow) = flagged(&part.engine, now);
                self.outputs.push(Output::Resync { partition: *p, verdicts, shadow, now });
            }
        }
    }

    /// The outputs so far, and per partition the offset to commit once they are written.
    pub fn take(&mut self) -> (Vec<Output>, BTreeMap<i32, i64>) {
        for (p, part) in &mut self.parts {
            if part.live {
                let now = part.engine.now();
                let mut renewals = Vec::new();
                part.engine.take_renewals(&mut renewals);
                self.outputs.extend(renewals.into_iter().map(|change| Output::Change { partition: *p, change, now }));
            }
        }
        let commits = self.parts.iter().filter(|(_, s)| s.live && s.next > 0).map(|(p, s)| (*p, s.next)).collect();
        (std::mem::take(&mut self.outputs), commits)
    }

    /// The offset of the next record to handle, per partition.
    pub fn positions(&self) -> BTreeMap<i32, i64> {
        self.parts.iter().map(|(p, s)| (*p, s.next)).collect()
    }

    pub fn counts(&self) -> &Counts {
        &self.counts
    }

    /// The live engines, for metrics (aggregates, state size).
    pub fn engines(&self) -> impl Iterator<Item = &Engine> {
        self.parts.values().map(|p| p.engine.live())
    }
}

/// A judge's flagged clients: the live engine's, and the shadow engine's.
fn flagged(j: &Judge, now: Timestamp) -> (Vec<Explanation>, Vec<Explanation>) {
    let live = j.flagged(now, None, usize::MAX);
    let shadow = j.candidate().map(|c| c.flagged(now, None, usize::MAX)).unwrap_or_default();
    if j.shadow_all() { (Vec::new(), live) } else { (live, shadow) }
}

#[cfg(test)]
mod tests {
    use roost_engine::{Class, EngineConfig, RequestEvent};

    use super::*;

    fn ev(t: i64, ip: &str, status: u16) -> Vec<u8> {
        let ev = RequestEvent {
            time: Timestamp(t * 1000),
            client: ip.parse().unwrap(),
            method: "GET".into(),
            host: None,
            path: "/admin".into(),
            query: None,
            protocol: "HTTP/1.1".into(),
            status,
            bytes: 10,
            request_time: None,
            referer: None,
            user_agent: None,
        };
        wire::encode_request(&ev)
    }

    fn scorer() -> Scorer {
        Scorer::new(Box::new(|| Judge::new(Engine::new(EngineConfig::default()).unwrap())))
    }

    fn changes(out: &[Output]) -> Vec<(String, Class)> {
        out.iter()
            .filter_map(|o| match o {
                Output::Change { change, .. } => Some((change.subject.ip().to_string(), change.to)),
                Output::Resync { .. } => None,
            })
            .collect()
    }

    /// A shadow engine started by a reload joins a live partition: its verdicts come out marked
    /// shadow beside the live ones; stopped, they end.
    #[test]
    fn a_reload_starts_and_stops_a_partitions_shadow_engine() {
        let on = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = on.clone();
        let mut s = scorer().with_refresh(Box::new(move |j| {
            match (flag.load(std::sync::atomic::Ordering::Relaxed), j.candidate().is_some()) {
                (true, false) => j.set_candidate(Some(Engine::new(EngineConfig::default()).unwrap())),
                (false, true) => j.set_candidate(None),
                _ => return false,
            }
            true
        }));
        s.assign(&[(0, None)]);
        assert_eq!(s.refresh_candidates(), 0);
        on.store(true, std::sync::atomic::Ordering::Relaxed);
        assert_eq!(s.refresh_candidates(), 1);
        assert_eq!(s.refresh_candidates(), 0, "once");
        for i in 0..60 {
            s.record(0, i, Some(&ev(1_700_000_000 + i, "198.51.100.11", 403))).unwrap();
        }
        let (out, _) = s.take();
        let shadow =
            |out: &[Output]| out.iter().filter(|o| matches!(o, Output::Change { change, .. } if change.shadow)).count();
        assert!(shadow(&out) >= 1, "{out:?}");
        assert!(out.iter().any(|o| matches!(o, Output::Change { change, .. } if !change.shadow)));
        on.store(false, std::sync::atomic::Ordering::Relaxed);
        assert_eq!(s.refresh_candidates(), 1);
        for i in 60..120 {
            s.record(0, i, Some(&ev(1_700_000_000 + i, "198.51.100.12", 403))).unwrap();
        }
        assert_eq!(shadow(&s.take().0), 0);
    }

    #[test]
    fn a_rebuilt_partition_ends_where_one_that_never_stopped_does() {
        let log: Vec<Vec<u8>> = (0..60).map(|i| ev(1_700_000_000 + i, "198.51.100.9", 403)).collect();
        // one owner all along
        let mut a = scorer();
        a.assign(&[(0, None)]);
        for (o, v) in log.iter().enumerate() {
            a.record(0, o as i64, Some(v)).unwrap();
        }
        let (out_a, commits) = a.take();
        assert_eq!(commits[&0], 60);
        let flagged_a = changes(&out_a);
        assert!(!flagged_a.is_empty(), "60 forbidden answers in a minute flag the client");
        // a second owner takes over after 30 records were committed: it replays them silently,
        // resyncs, and emits only what comes after
        let mut b = scorer();
        b.assign(&[(0, Some(30))]);
        for (o, v) in log.iter().enumerate() {
            b.record(0, o as i64, Some(v)).unwrap();
        }
        let (out_b, _) = b.take();
        assert_eq!(b.counts().rebuilt, 30);
        assert!(matches!(out_b[0], Output::Resync { .. }));
        let before: usize = out_a
            .iter()
            .filter(|o| matches!(o, Output::Change { change, .. } if change.at.secs() < 1_700_000_030))
            .count();
        assert_eq!(changes(&out_b), flagged_a[before..].to_vec());
        let xa: Vec<_> = a.engines().flat_map(|e| e.flagged(e.now(), None, 10)).collect();
        let xb: Vec<_> = b.engines().flat_map(|e| e.flagged(e.now(), None, 10)).collect();
        assert_eq!(xa, xb);
    }

    /// A record dated 49 days ahead (a router's uptime counter wrapped, a forged datagram) is
    /// taken as dated at the wall clock plus the skew: the partition's verdicts do not expire
    /// early. Without a wall clock (offline) nothing changes.
    #[test]
    fn a_future_dated_record_does_not_expire_a_partitions_verdicts() {
        let t0 = 1_700_000_000;
        let run = |wall: bool| {
            let mut s = scorer();
            if wall {
                s.set_wall_clock(Timestamp((t0 + 60) * 1000));
                s.set_max_skew(std::time::Duration::from_secs(10));
            }
            s.assign(&[(0, None)]);
            for i in 0..60 {
                s.record(0, i, Some(&ev(t0 + i, "198.51.100.9", 403))).unwrap();
            }
            let future = wire::EvidenceEvent {
                time: Timestamp((t0 + 49 * 86_400) * 1000),
                client: "203.0.113.5".parse().unwrap(),
                source: "flow:synflood-unproven".into(),
                penalty: 0.0,
                verdict: None,
                ttl_ms: None,
                detail: "forged".into(),
            };
            s.record(0, 60, Some(&wire::encode_evidence(&future))).unwrap();
            let flagged: Vec<_> = s.engines().flat_map(|e| e.flagged(e.now(), None, 10)).collect();
            let now = s.engines().next().unwrap().now();
            (flagged.len(), now, s.counts().clamped)
        };
        let (flagged, now, clamped) = run(true);
        assert_eq!((flagged, clamped), (1, 1), "the client stays flagged; the record was clamped");
        assert_eq!(now, Timestamp((t0 + 70) * 1000), "the partition's clock stops at the wall clock plus skew");
        let (flagged, _, clamped) = run(false);
        assert_eq!((flagged, clamped), (0, 0), "without the clamp the verdict would have expired");
    }

    #[test]
    fn renewals_of_a_live_partition_are_outputs() {
        let mut s = scorer();
        s.assign(&[(0, None)]);
        // forbidden answers for 20 minutes: flagged early, then kept in force
        for i in 0..1200 {
            s.record(0, i, Some(&ev(1_700_000_000 + i, "198.51.100.10", 403))).unwrap();
        }
        let (out, _) = s.take();
        let renewed: Vec<_> = out
            .iter()
            .filter_map(|o| match o {
                Output::Change { change, .. } if change.cause == roost_engine::Cause::Renewed => Some(change),
                _ => None,
            })
            .collect();
        assert!(!renewed.is_empty(), "the verdict's expiry moved out and was reported");
        assert!(renewed.iter().all(|c| c.from == c.to && c.to != Class::Good && c.expires.is_some()));
    }

    #[test]
    fn bad_records_are_counted_and_skipped_and_revoked_partitions_forgotten() {
        let mut s = scorer();
        s.assign(&[(0, None), (1, None)]);
        assert!(s.record(0, 0, Some(b"not json")).is_err());
        assert!(s.record(0, 1, None).is_err());
        s.record(1, 0, Some(&ev(1_700_000_000, "192.0.2.1", 200))).unwrap();
        assert_eq!(s.counts().bad_records, 2);
        assert_eq!(s.counts().events, 1);
        s.revoke(&[1]);
        assert_eq!(s.partitions().collect::<Vec<_>>(), [0]);
        let (_, commits) = s.take();
        assert_eq!(commits.get(&0), Some(&2));
        assert_eq!(commits.get(&1), None);
    }
}
