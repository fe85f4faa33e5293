//! The engine: request events and evidence in, verdict changes out.
//!
//! Reputation is a time-decayed exponentially weighted average of per-request scores:
//! `s` and `w` are sums of `score × weight` and of `weight`, both halved every `half_life` of
//! event time, and reputation = `s / (w + prior_weight)`. The prior pulls clients with little
//! evidence towards neutral (0); decay lets an idle client drift back there. Time only ever
//! comes from events and from callers: replaying a log gives the same verdicts every time.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::IpAddr;

use hashbrown::HashMap;
use ipnetwork::IpNetwork;
use prefix_trie::joint::map::JointPrefixMap;
use roost_event::{RequestEvent, Timestamp};
use serde::{Deserialize, Serialize};

use crate::config::{ConfigError, EngineConfig};
use crate::dossier::{Dossier, Held, ts};
use crate::evidence::{Annotator, Evidence, Inspector, RequestContext, Source, SourceKind};
use crate::reasons::{reasons, span};
use crate::scoring::{Category, PathClass, Scoring};
use crate::state::{HAS_DOSSIER, IpState, Key, Secs, States, half_life_decay, window_decay};
use crate::verdict::{Cause, Class, Explanation, Reason, VerdictChange, subject_name};

/// Requests in an episode after which an IPv4 client is watched for being a shared address.
const BUSY: u32 = 20;

/// Below this much decayed weight, a returning client starts a new episode: its counts restart.
const EPISODE_EPS: f32 = 0.01;

/// An operator's decision about a prefix. It overrides whatever the evidence says.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Override {
    pub class: Class,
    /// When it lapses; `None` = until removed.
    pub until: Option<Timestamp>,
    pub by: String,
    pub comment: String,
}

/// Counters of what the engine did, for metrics.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Stats {
    pub events: u64,
    pub allowlisted: u64,
    pub evidence: u64,
    /// Verdict changes by the class moved to (good, dubious, bad).
    pub changes_to: [u64; 3],
    /// Dossiers not opened because the table was full.
    pub dossiers_refused: u64,
    /// Good clients forgotten early to stay within `max_clients`.
    pub clients_evicted: u64,
    /// New clients not scored because every tracked client holds a verdict.
    pub clients_refused: u64,
    /// Pieces of evidence applied, by source (`rule:R-1003`, `feed:spamhaus_drop`): as many
    /// sources as rules, feeds and policies are configured.
    #[serde(skip)]
    pub evidence_by_source: std::collections::HashMap<Source, u64>,
}

/// The reputation of the tracked population at one moment.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Aggregates {
    pub ips: u64,
    /// Clients per class: good, dubious, bad.
    pub per_class: [u64; 3],
    /// Mean reputation over clients.
    pub mean_by_ip: f64,
    /// Mean reputation weighted by each client's recent (decayed) request weight.
    pub mean_by_request: f64,
    /// The recent (decayed) request weight behind `mean_by_request`: how many requests, give or
    /// take, the mean stands on.
    pub request_weight: f64,
    /// Clients per reputation bucket: `[-1.0,-0.9)`, …, `[0.9,1.0]`.
    pub histogram: [u64; 20],
    pub dossiers: u64,
}

impl Aggregates {
    /// The lower edge of histogram bucket `i`.
    pub fn bucket_low(i: usize) -> f32 {
        -1.0 + i as f32 * 0.1
    }

    /// Adds another engine's population to this one (the scorer has one engine per partition).
    pub fn merge(&mut self, o: &Aggregates) {
        let total = self.ips + o.ips;
        if total > 0 {
            self.mean_by_ip = (self.mean_by_ip * self.ips as f64 + o.mean_by_ip * o.ips as f64) / total as f64;
        }
        let w = self.request_weight + o.request_weight;
        if w > 0.0 {
            self.mean_by_request =
                (self.mean_by_request * self.request_weight + o.mean_by_request * o.request_weight) / w;
        }
        self.ips = total;
        self.request_weight = w;
        for (a, b) in self.per_class.iter_mut().zip(o.per_class) {
            *a += b;
        }
        for (a, b) in self.histogram.iter_mut().zip(o.histogram) {
            *a += b;
        }
        self.dossiers += o.dossiers;
    }
}

/// What an [`EngineStager`] found in one request, for [`Engine::observe_staged`].
#[derive(Clone, Debug)]
pub struct Staged {
    path_class: PathClass,
    /// Per inspector that has a stager (at most [`MAX_STAGERS`]): its index and the range of
    /// `found` that is its own. No allocation for a request nothing was found in.
    spans: [(u32, u32, u32); MAX_STAGERS],
    staged: u8,
    found: Vec<(u32, u64)>,
}

/// Inspectors staged ahead, at most; any others inspect as usual.
const MAX_STAGERS: usize = 4;

impl Staged {
    fn found_by(&self, inspector: u32) -> Option<&[(u32, u64)]> {
        let &(_, a, b) = self.spans[..self.staged as usize].iter().find(|s| s.0 == inspector)?;
        Some(&self.found[a as usize..b as usize])
    }
}

/// The stateless half of an engine's work on a request (see [`Engine::stager`]).
pub struct EngineStager {
    scoring: Scoring,
    stagers: Vec<(u32, Box<dyn crate::evidence::Stager>)>,
}

impl EngineStager {
    pub fn stage(&mut self, ev: &RequestEvent<'_>) -> Staged {
        let path_class = self.scoring.classify_request(&ev.method, &ev.path, ev.status);
        let mut staged = Staged { path_class, spans: [(0, 0, 0); MAX_STAGERS], staged: 0, found: Vec::new() };
        for (n, (i, s)) in self.stagers.iter_mut().enumerate() {
            let a = staged.found.len() as u32;
            s.stage(ev, path_class, &mut staged.found);
            staged.spans[n] = (*i, a, staged.found.len() as u32);
            staged.staged += 1;
        }
        staged
    }
}

pub struct Engine {
    cfg: EngineConfig,
    scoring: Scoring,
    inv_half_life: f32,
    inv_crawl_tau: f32,
    inv_slow_tau: f32,
    slow_threshold: f32,
    states: States,
    dossiers: HashMap<Key, Dossier>,
    /// Non-good verdicts by expiry; stale entries are skipped when popped.
    expiry: BinaryHeap<Reverse<(Secs, Key)>>,
    allowlist: JointPrefixMap<IpNetwork, ()>,
    /// Whether an IPv6 allowlist entry is narrower than a subject (then a subject's entries
    /// inside it are looked for too).
    narrow_v6_allow: bool,
    overrides: JointPrefixMap<IpNetwork, Override>,
    inspectors: Vec<Box<dyn Inspector>>,
    annotators: Vec<Box<dyn Annotator>>,
    /// Site-wide decayed counts of page requests and slow page requests.
    site_pages: f32,
    site_slow: f32,
    site_last: Secs,
    now: Secs,
    /// The last second `expire` ran for (see [`Engine::advance`]).
    expired_to: Option<Secs>,
    stats: Stats,
    scratch: Vec<Evidence>,
    /// The built-in signals' sources, made once (crawl, slow, escalated prefix).
    sources: [Source; 3],
    /// Clients whose verdict's expiry moved well past the one reported, while tracked.
    renewed: Option<Vec<Key>>,
    /// IPv6 prefixes wider than a subject (`[engine.escalation]`) with subjects that turned bad
    /// recently, and until when the prefix is escalated.
    wide: HashMap<u128, Wide>,
    /// Whether evidence from sources in shadow mode counts here (a [`crate::Judge`]'s
    /// candidate engine) or is dropped (the live engine, the default).
    takes_shadow: bool,
}

/// A wider IPv6 prefix's subjects that turned bad within the escalation window.
#[derive(Default)]
struct Wide {
    bad: Vec<([u64; 2], Secs)>,
    /// Escalated until then (0: not escalated).
    until: Secs,
}

/// Seconds as whole and tenths, for text: integer formatting is far cheaper than `{:.1}`.
fn tenths(s: f32) -> (u32, u32) {
    let t = (s.max(0.0) * 10.0).round() as u32;
    (t / 10, t % 10)
}

fn secs(t: Timestamp) -> Secs {
    t.secs().clamp(0, u32::MAX as i64) as Secs
}

fn dur_secs(d: std::time::Duration) -> Secs {
    d.as_secs().min(u32::MAX as u64) as Secs
}

impl Engine {
    pub fn new(cfg: EngineConfig) -> Result<Engine, ConfigError> {
        cfg.validate()?;
        let mut allowlist = JointPrefixMap::new();
        for net in &cfg.allowlist {
            allowlist.insert(*net, ());
        }
        Ok(Engine {
            scoring: Scoring::new(&cfg),
            inv_half_life: 1.0 / cfg.half_life.as_secs_f32(),
            inv_crawl_tau: 1.0 / cfg.crawl.window.as_secs_f32().max(1.0),
            inv_slow_tau: 1.0 / cfg.slow.behaviour.window.as_secs_f32().max(1.0),
            slow_threshold: cfg.slow.threshold.as_secs_f32(),
            states: States::default(),
            dossiers: HashMap::new(),
            expiry: BinaryHeap::new(),
            narrow_v6_allow: cfg.allowlist.iter().any(|n| n.is_ipv6() && n.prefix() > cfg.ipv6_prefix),
            allowlist,
            overrides: JointPrefixMap::new(),
            inspectors: Vec::new(),
            annotators: Vec::new(),
            site_pages: 0.0,
            site_slow: 0.0,
            site_last: 0,
            now: 0,
            expired_to: None,
            stats: Stats::default(),
            scratch: Vec::new(),
            sources: [
                Source::new(SourceKind::Behaviour, "crawl"),
                Source::new(SourceKind::Behaviour, "slow"),
                Source::new(SourceKind::Behaviour, "escalated_prefix"),
            ],
            renewed: None,
            takes_shadow: false,
            wide: HashMap::new(),
            cfg,
        })
    }

    pub fn config(&self) -> &EngineConfig {
        &self.cfg
    }

    /// Makes this engine take evidence from sources in shadow mode (a [`crate::Judge`]'s
    /// candidate); by default such evidence is dropped.
    pub fn take_shadow_evidence(&mut self, on: bool) {
        self.takes_shadow = on;
    }

    pub fn takes_shadow_evidence(&self) -> bool {
        self.takes_shadow
    }

    /// Adds a per-request evidence source (known-bad rules).
    pub fn add_inspector(&mut self, i: Box<dyn Inspector>) {
        self.inspectors.push(i);
    }

    /// Adds a per-address evidence source (threat feeds, GeoIP/ASN).
    pub fn add_annotator(&mut self, a: Box<dyn Annotator>) {
        self.annotators.push(a);
    }

    /// Replaces the inspector called `name` (a rule-set reload keeps all client state).
    pub fn replace_inspector(&mut self, name: &str, i: Box<dyn Inspector>) -> bool {
        match self.inspectors.iter_mut().find(|x| x.name() == name) {
            Some(slot) => {
                *slot = i;
                true
            }
            None => false,
        }
    }

    /// The latest event time seen (or passed to `expire`).
    pub fn now(&self) -> Timestamp {
        ts(self.now)
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    pub fn tracked(&self) -> usize {
        self.states.len()
    }

    /// Starts (or stops) noting renewals: a verdict that evidence keeps in force has its expiry
    /// pushed out silently (no [`VerdictChange`]); a store that keeps verdicts with a TTL (Redis)
    /// must hear of it before the reported expiry passes. With tracking on, each time a verdict's
    /// expiry moves past the last reported one by a quarter of its remaining time (at least a
    /// minute), the client is noted for [`Engine::take_renewals`].
    pub fn track_renewals(&mut self, on: bool) {
        self.renewed = on.then(Vec::new);
    }

    /// The renewals noted since the last call, as changes with `cause` [`Cause::Renewed`] and
    /// `from == to` (in address order; clients whose verdict ended meanwhile are left out).
    pub fn take_renewals(&mut self) -> Vec<VerdictChange> {
        let Some(keys) = self.renewed.as_mut() else { return Vec::new() };
        let mut keys = std::mem::take(keys);
        keys.sort_unstable();
        keys.dedup();
        let now = self.now();
        keys.into_iter()
            .filter_map(|k| {
                let x = self.explain(k.addr(), now)?;
                (x.class != Class::Good).then_some(VerdictChange {
                    subject: x.subject,
                    at: now,
                    from: x.class,
                    to: x.class,
                    cause: Cause::Renewed,
                    reputation: x.reputation,
                    requests: x.requests,
                    expires: x.expires,
                    reasons: x.reasons,
                    samples: x.samples,
                    shadow: false,
                })
            })
            .collect()
    }

    /// Notes `key` as renewed if its hold's expiry moved far enough past the reported one.
    fn note_renewal(&mut self, key: Key, t: Secs) {
        let Some(renewed) = self.renewed.as_mut() else { return };
        if let Some(h) = self.dossiers.get_mut(&key).and_then(|d| d.held.as_mut()) {
            let step = (h.expires.saturating_sub(t) / 4).max(60);
            if h.expires >= h.announced.saturating_add(step) {
                h.announced = h.expires;
                renewed.push(key);
            }
        }
    }

    /// Entries in the expiry schedule (live and stale), for metrics and tests.
    pub fn scheduled(&self) -> usize {
        self.expiry.len()
    }

    /// The key the engine files an address under (IPv6 aggregated to the configured prefix).
    pub fn subject_of(&self, ip: IpAddr) -> IpNetwork {
        Key::of(ip, self.cfg.ipv6_prefix).subject(self.cfg.ipv6_prefix)
    }

    /// Whether an address is on the allowlist (never judged), as verdicts are keyed: an
    /// IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) is its IPv4 address, and an IPv6 client is
    /// judged per `ipv6_prefix` subject, so an allowlist entry anywhere in that subject (a single
    /// address of a /64) exempts the whole subject: a verdict on it would block the allowlisted
    /// address too.
    pub fn is_allowlisted(&self, ip: IpAddr) -> bool {
        if self.cfg.allowlist.is_empty() {
            return false;
        }
        let subject = Key::of(ip, self.cfg.ipv6_prefix).subject(self.cfg.ipv6_prefix);
        self.allowlist.get_lpm(&subject).is_some()
            || (self.narrow_v6_allow && subject.is_ipv6() && self.allowlist.children(&subject).next().is_some())
    }

    /// Scores one request. Returns the verdict change it caused, if any.
    pub fn observe(&mut self, ev: &RequestEvent<'_>) -> Option<VerdictChange> {
        self.observe_with(ev, None)
    }

    /// A stager for this engine's stateless work on a request (its path class and its
    /// inspectors' stagers), to run ahead of [`Engine::observe_staged`], on another thread if
    /// wanted. Call it once per worker.
    pub fn stager(&mut self) -> EngineStager {
        let stagers = self
            .inspectors
            .iter_mut()
            .enumerate()
            .filter_map(|(i, x)| Some((i as u32, x.stager()?)))
            .take(MAX_STAGERS)
            .collect();
        EngineStager { scoring: self.scoring.clone(), stagers }
    }

    /// [`Engine::observe`] with the stateless work done ahead by a stager of this engine: the
    /// same verdicts as `observe` gives the same requests.
    pub fn observe_staged(&mut self, ev: &RequestEvent<'_>, staged: &Staged) -> Option<VerdictChange> {
        self.observe_with(ev, Some(staged))
    }

    fn observe_with(&mut self, ev: &RequestEvent<'_>, staged: Option<&Staged>) -> Option<VerdictChange> {
        self.stats.events += 1;
        let t = secs(ev.time);
        self.now = self.now.max(t);
        if self.is_allowlisted(ev.client) {
            self.stats.allowlisted += 1;
            return None;
        }
        let key = Key::of(ev.client, self.cfg.ipv6_prefix);
        if !self.room_for(key) {
            return None;
        }
        let path_class = match staged {
            Some(st) => st.path_class,
            None => self.scoring.classify_request(&ev.method, &ev.path, ev.status),
        };
        let weight = self.scoring.weight(path_class);
        let score = self.scoring.status_score(ev.status);
        let cat = Category::of(ev.status);
        let page = path_class == PathClass::Page;

        let mut evidence = std::mem::take(&mut self.scratch);
        evidence.clear();
        let new_episode = self.fold(key, t);
        let st = self.states.get_mut(key).expect("fold created it");
        st.requests = st.requests.saturating_add(1);
        // shared-address watch (IPv4): a busy client gets a dossier; a dossier counts agents
        let watch = self.cfg.shared.enabled && matches!(key, Key::V4(_));
        let (busy, had_dossier) = (st.requests == BUSY, st.flags & HAS_DOSSIER != 0);
        if weight > 0.0 {
            st.s += score * weight;
            st.w += weight;
        }
        if cat == Category::Ok || (page && cat != Category::Unknown) {
            let n = &mut st.n[cat as usize];
            *n = n.saturating_add(1);
        }
        if page {
            self.behaviour(key, ev, &mut evidence);
        }
        if !self.inspectors.is_empty() {
            let ctx =
                RequestContext { subject: key.subject(self.cfg.ipv6_prefix), event: ev, path_class, now: ev.time };
            for (n, i) in self.inspectors.iter_mut().enumerate() {
                match staged.and_then(|st| st.found_by(n as u32)) {
                    Some(found) => i.inspect_staged(&ctx, found, &mut evidence),
                    None => i.inspect(&ctx, &mut evidence),
                }
            }
        }
        if new_episode {
            for a in &self.annotators {
                a.annotate(ev.client, ev.time, &mut evidence);
            }
        }
        if !self.wide.is_empty() {
            self.escalated(key, t, &mut evidence);
        }
        // a busy IPv4 client gets a dossier (while there is room), so that a shared address is
        // known by its many user agents before anyone behind it misbehaves
        if watch && busy && !had_dossier {
            self.dossier_for(key, false);
        }
        let max_agents = self.cfg.shared.min_agents as usize;
        if watch
            && (had_dossier || busy)
            && cat == Category::Ok
            && let Some(ua) = ev.user_agent.as_deref()
            && let Some(d) = self.dossiers.get_mut(&key)
        {
            d.agent(ua, max_agents);
        }
        if !self.takes_shadow && evidence.iter().any(|e| e.source.shadow) {
            evidence.retain(|e| !e.source.shadow);
        }
        let status_negative = page && matches!(cat, Category::NotFound | Category::Auth | Category::Rejected);
        let notable = (page && score * weight <= -0.5) || !evidence.is_empty();
        if notable {
            self.apply_evidence(key, t, &mut evidence, status_negative);
            let keep = self.cfg.samples_per_ip;
            if let Some(d) = self.dossier_for(key, false) {
                d.sample(ev, keep);
            }
        }
        self.scratch = evidence;
        self.decide(key, t, Cause::Evidence)
    }

    /// What an error log says of a client: evidence weighted by `[engine.error_log]`, with the
    /// server's message (and the request, when logged) as the reason.
    pub fn observe_error(&mut self, ev: &roost_event::ErrorLogEvent<'_>) -> Option<VerdictChange> {
        let mut detail = format!("{} error log: {}", ev.server, ev.message);
        if let Some(r) = &ev.request {
            detail.push_str(&format!(" ({r})"));
        }
        if detail.len() > 300 {
            let mut cut = 300;
            while !detail.is_char_boundary(cut) {
                cut -= 1;
            }
            detail.truncate(cut);
            detail.push('…');
        }
        let evidence = Evidence {
            source: Source::new(SourceKind::ErrorLog, ev.kind.label()),
            penalty: self.cfg.error_log.of(ev.kind),
            verdict: None,
            detail,
        };
        self.apply(ev.client, ev.time, &[evidence])
    }

    /// Applies evidence that did not come with a request (netflow, a feed update, the proxy's
    /// challenge outcomes) at time `at`.
    pub fn apply(&mut self, ip: IpAddr, at: Timestamp, evidence: &[Evidence]) -> Option<VerdictChange> {
        let t = secs(at);
        self.now = self.now.max(t);
        let mut evidence: Vec<Evidence> =
            evidence.iter().filter(|e| self.takes_shadow || !e.source.shadow).cloned().collect();
        if self.is_allowlisted(ip) || evidence.is_empty() {
            return None;
        }
        let key = Key::of(ip, self.cfg.ipv6_prefix);
        if !self.room_for(key) {
            return None;
        }
        self.fold(key, t);
        self.apply_evidence(key, t, &mut evidence, false);
        self.decide(key, t, Cause::Evidence)
    }

    /// The wider IPv6 prefix `key` escalates with, as bits.
    fn wide_of(&self, key: Key) -> Option<u128> {
        let e = &self.cfg.escalation;
        match key {
            Key::V6([hi, lo]) if e.enabled && e.prefix < self.cfg.ipv6_prefix => {
                let bits = ((hi as u128) << 64) | lo as u128;
                Some(bits & (u128::MAX << (128 - e.prefix as u32)))
            }
            _ => None,
        }
    }

    /// Evidence for a subject of an escalated wider prefix (once its class is below it).
    fn escalated(&mut self, key: Key, t: Secs, out: &mut Vec<Evidence>) {
        let Some(p) = self.wide_of(key) else { return };
        let e = &self.cfg.escalation;
        let Some(w) = self.wide.get(&p).filter(|w| w.until > t) else { return };
        if self.states.get(key).is_some_and(|st| st.class >= e.verdict as u8) {
            return;
        }
        let wide = IpNetwork::new(std::net::Ipv6Addr::from_bits(p).into(), e.prefix).expect("prefix <= 128");
        let mut subjects: Vec<String> =
            w.bad.iter().take(3).map(|(s, _)| subject_name(Key::V6(*s).subject(self.cfg.ipv6_prefix))).collect();
        if w.bad.len() > 3 {
            subjects.push("…".into());
        }
        out.push(Evidence {
            source: self.sources[2].clone(),
            penalty: 1.0,
            verdict: Some((e.verdict, std::time::Duration::from_secs((w.until - t) as u64))),
            detail: format!(
                "{wide}: {} of its /{}s turned bad within {} ({}); every other one is judged with them",
                w.bad.len(),
                self.cfg.ipv6_prefix,
                span(dur_secs(e.window)),
                subjects.join(", ")
            ),
        });
    }

    /// Notes a subject that turned bad; escalates its wider prefix when enough did.
    fn note_bad(&mut self, key: Key, t: Secs) {
        let (Some(p), Key::V6(subject)) = (self.wide_of(key), key) else { return };
        let e = &self.cfg.escalation;
        let (window, min, ttl) = (dur_secs(e.window), e.min_subjects as usize, dur_secs(e.ttl));
        let w = self.wide.entry(p).or_default();
        if w.until > t {
            return; // escalated already: its own verdicts are not new evidence
        }
        w.bad.retain(|(_, at)| t.saturating_sub(*at) <= window);
        match w.bad.iter_mut().find(|(s, _)| *s == subject) {
            Some(b) => b.1 = t,
            None => w.bad.push((subject, t)),
        }
        if w.bad.len() >= min {
            w.until = w.until.max(t.saturating_add(ttl));
        }
    }

    /// Whether `key` is tracked or may be: at `max_clients`, the good clients idle longest
    /// (a tenth of the table, oldest first, ties by address) are forgotten to make room; when
    /// every client holds a verdict, a new one is refused and counted.
    fn room_for(&mut self, key: Key) -> bool {
        if self.states.len() < self.cfg.max_clients || self.states.get(key).is_some() {
            return true;
        }
        let mut idle: Vec<(Secs, Key)> =
            self.states.iter().filter(|(_, st)| st.class == Class::Good as u8).map(|(k, st)| (st.last, k)).collect();
        let n = (self.cfg.max_clients / 10).clamp(1, idle.len().max(1));
        if idle.is_empty() {
            self.stats.clients_refused += 1;
            return false;
        }
        if n < idle.len() {
            idle.select_nth_unstable(n - 1);
            idle.truncate(n);
        }
        for (_, k) in &idle {
            self.forget(*k);
        }
        self.stats.clients_evicted += idle.len() as u64;
        true
    }

    /// Drops a client's state and, unless it holds a verdict, its dossier.
    fn forget(&mut self, k: Key) {
        match k {
            Key::V4(a) => {
                self.states.v4.remove(&a);
            }
            Key::V6(a) => {
                self.states.v6.remove(&a);
            }
        }
        if self.dossiers.get(&k).is_some_and(|d| d.held.is_none()) {
            self.dossiers.remove(&k);
        }
    }

    /// Brings a client's state to time `t` (decay), creating it or starting a new episode when
    /// its old evidence has decayed away. Returns whether an episode started.
    fn fold(&mut self, key: Key, t: Secs) -> bool {
        let (st, created) = self.states.entry(key);
        let dt = t.saturating_sub(st.last);
        let d = half_life_decay(dt, self.inv_half_life);
        let fresh = created || (st.w * d < EPISODE_EPS && st.class == Class::Good as u8);
        if fresh {
            let (class, flags) = (st.class, st.flags);
            *st = IpState { first: t, last: t, class, flags, ..IpState::default() };
            if created && !self.dossiers.is_empty() && self.dossiers.contains_key(&key) {
                st.flags |= HAS_DOSSIER;
            }
            if !created
                && let Some(d) = self.dossiers.get_mut(&key)
                && d.held.is_none()
            {
                d.new_episode();
            }
        } else if dt > 0 {
            st.s *= d;
            st.w *= d;
            st.crawl *= window_decay(dt, self.inv_crawl_tau);
            st.slow *= window_decay(dt, self.inv_slow_tau);
            st.last = t;
        }
        fresh
    }

    /// The built-in behaviour signals, for a page request.
    fn behaviour(&mut self, key: Key, ev: &RequestEvent<'_>, out: &mut Vec<Evidence>) {
        let t = secs(ev.time);
        let slow = ev.request_time.is_some_and(|rt| rt >= self.slow_threshold);
        if self.cfg.slow.behaviour.enabled {
            let d = window_decay(t.saturating_sub(self.site_last), self.inv_slow_tau);
            self.site_pages = self.site_pages * d + 1.0;
            self.site_slow = self.site_slow * d + slow as u8 as f32;
            self.site_last = self.site_last.max(t);
        }
        let st = self.states.get_mut(key).expect("folded");
        let c = &self.cfg.crawl;
        if c.enabled {
            st.crawl += 1.0;
            if st.crawl > c.limit {
                out.push(Evidence {
                    source: self.sources[0].clone(),
                    penalty: c.penalty,
                    verdict: c.verdict.map(|v| (v, c.ttl)),
                    detail: format!(
                        "aggressive crawling: ~{} non-static pages per {} (limit {})",
                        st.crawl.ceil() as u32,
                        span(dur_secs(c.window)),
                        c.limit as u32
                    ),
                });
            }
        }
        let s = &self.cfg.slow;
        if s.behaviour.enabled && slow {
            st.slow += 1.0;
            let site_share = self.site_slow / self.site_pages.max(1.0);
            if st.slow >= s.behaviour.limit && site_share <= s.max_site_share {
                out.push(Evidence {
                    source: self.sources[1].clone(),
                    penalty: s.behaviour.penalty,
                    verdict: s.behaviour.verdict.map(|v| (v, s.behaviour.ttl)),
                    detail: format!(
                        "hammering slow pages: ~{} requests slower than {} s per {} (limit {}), latest {} {} took {}.{} s",
                        st.slow.round() as u32,
                        s.threshold.as_secs_f32(),
                        span(dur_secs(s.behaviour.window)),
                        s.behaviour.limit as u32,
                        ev.method,
                        crate::dossier::truncate(&ev.target(), 80),
                        tenths(ev.request_time.unwrap_or(0.0)).0,
                        tenths(ev.request_time.unwrap_or(0.0)).1,
                    ),
                });
            }
        }
    }

    /// Folds evidence about one observation into the client's state and dossier.
    /// `counted` says whether the observation already counts as negative (its status did).
    fn apply_evidence(&mut self, key: Key, t: Secs, evidence: &mut Vec<Evidence>, counted: bool) {
        if evidence.is_empty() {
            return;
        }
        self.stats.evidence += evidence.len() as u64;
        for e in evidence.iter() {
            match self.stats.evidence_by_source.get_mut(&e.source) {
                Some(n) => *n += 1,
                None => {
                    self.stats.evidence_by_source.insert(e.source.clone(), 1);
                }
            }
        }
        let st = self.states.get_mut(key).expect("folded");
        for e in evidence.iter() {
            st.s -= e.penalty;
            st.w += e.penalty.abs();
        }
        let must = evidence.iter().any(|e| e.verdict.is_some());
        let (factor, memory, max_ttl) = (
            self.cfg.verdict.repeat_factor.max(1.0),
            dur_secs(self.cfg.verdict.repeat_memory),
            self.cfg.verdict.max_ttl.as_secs_f32(),
        );
        if let Some(d) = self.dossier_for(key, must) {
            let earlier = if d.offences > 0 && t.saturating_sub(d.last_offence) <= memory { d.offences } else { 0 };
            let scale = factor.powi(earlier.min(30) as i32);
            if !counted && evidence.iter().any(|e| e.penalty > 0.0) {
                d.extra_negatives = d.extra_negatives.saturating_add(1);
            }
            for e in evidence.drain(..) {
                let cap = e.verdict.map_or(1.0, |(_, ttl)| (max_ttl / ttl.as_secs_f32().max(1.0)).max(1.0));
                d.record(e, t, scale.min(cap));
            }
        }
    }

    /// The client's dossier, opened if there is room (or if `must`: clients with a verdict
    /// always get one).
    fn dossier_for(&mut self, key: Key, must: bool) -> Option<&mut Dossier> {
        let st = self.states.get_mut(key)?;
        if st.flags & HAS_DOSSIER == 0 {
            if !must && self.dossiers.len() >= self.cfg.max_dossiers {
                self.stats.dossiers_refused += 1;
                return None;
            }
            st.flags |= HAS_DOSSIER;
        }
        Some(self.dossiers.entry(key).or_default())
    }

    fn reputation(&self, st: &IpState, d: f32) -> f32 {
        let w = st.w * d;
        if w <= 0.0 {
            return 0.0;
        }
        (st.s * d / (w + self.cfg.prior_weight)).clamp(-1.0, 1.0)
    }

    /// The class the reputation alone supports, with hysteresis around the current class.
    fn judged(&self, current: Class, rep: f32, decayed_w: f32, negatives: u32) -> Class {
        let v = &self.cfg.verdict;
        if negatives < v.min_negative_requests as u32 || decayed_w < v.min_weight {
            return Class::Good;
        }
        let (bad, dubious) = match current {
            Class::Good => (v.bad_below, v.dubious_below),
            Class::Dubious => (v.bad_below, v.dubious_below + v.hysteresis),
            Class::Bad => (v.bad_below + v.hysteresis, v.dubious_below + v.hysteresis),
        };
        if rep < bad {
            Class::Bad
        } else if rep < dubious {
            Class::Dubious
        } else {
            Class::Good
        }
    }

    fn ttl(&self, class: Class, offences: u32) -> Secs {
        let v = &self.cfg.verdict;
        let base = match class {
            Class::Good => return 0,
            Class::Dubious => v.dubious_ttl,
            Class::Bad => v.bad_ttl,
        };
        let factor = v.repeat_factor.max(1.0).powi(offences.saturating_sub(1).min(30) as i32);
        let secs = (base.as_secs_f32() * factor).min(v.max_ttl.as_secs_f32().max(base.as_secs_f32()));
        secs as Secs
    }

    fn override_for(&self, key: Key) -> Option<&Override> {
        if self.overrides.is_empty() {
            return None;
        }
        self.overrides.get_lpm(&IpNetwork::from(key.addr())).map(|(_, o)| o)
    }

    /// Re-evaluates a client's verdict at `t` and records any change.
    fn decide(&mut self, key: Key, t: Secs, cause: Cause) -> Option<VerdictChange> {
        let st = *self.states.get(key)?;
        let current = Class::from_u8(st.class);
        let dossier = self.dossiers.get(&key).filter(|_| st.flags & HAS_DOSSIER != 0);
        let d = half_life_decay(t.saturating_sub(st.last), self.inv_half_life);
        let rep = self.reputation(&st, d);
        let negatives = st.negatives() + dossier.map_or(0, Dossier::penalized_hits);
        let mut judged = self.judged(current, rep, st.w * d, negatives);
        let mut floor = dossier.and_then(|d| d.floor(t));
        // a shared address (a NAT): challenged, which each person behind it can pass, rather
        // than blocked, unless the evidence is overwhelming
        let sh = &self.cfg.shared;
        let shared =
            sh.enabled && rep >= sh.bad_below && dossier.is_some_and(|d| d.agents.len() >= sh.min_agents as usize);
        if shared {
            judged = judged.min(Class::Dubious);
            floor = floor.map(|(c, until)| (c.min(Class::Dubious), until));
        }
        let mut target = judged.max(floor.map_or(Class::Good, |f| f.0));
        // evidence that holds the client good (a verified crawler) beats the rest of it
        let exempt = dossier.is_some_and(|d| d.exempt(t));
        if exempt {
            target = Class::Good;
        }
        let ov = self.override_for(key).cloned();
        if let Some(o) = &ov {
            target = o.class;
        }
        let held = dossier.and_then(|d| d.held);
        if target == current {
            // Still supported by the evidence: the verdict's clock restarts.
            if current != Class::Good && ov.is_none() && (judged == current || floor.is_some_and(|f| f.0 == current)) {
                let offences = dossier.map_or(1, |d| d.offences);
                let expires = self.expiry_for(current, judged, floor, t, offences);
                let d = self.dossiers.get_mut(&key).expect("non-good clients have a dossier");
                if let Some(h) = &mut d.held {
                    h.expires = h.expires.max(expires);
                }
                self.note_renewal(key, t);
            }
            return None;
        }
        let cause = if ov.is_some() { Cause::Override } else { cause };
        // a block found to be on a shared address is lifted to a challenge at once
        let released = exempt || (shared && current == Class::Bad);
        if target < current && ov.is_none() && !released && held.is_some_and(|h| t < h.expires) {
            return None; // holds until it expires
        }
        Some(self.change(key, st, current, target, t, rep, cause, floor, judged))
    }

    /// Puts a client in the expiry heap for `at`, unless an earlier entry is already there (it
    /// will look again when it comes up).
    fn schedule(&mut self, key: Key, at: Secs) {
        if let Some(d) = self.dossiers.get_mut(&key)
            && d.queued.is_none_or(|q| at < q)
        {
            d.queued = Some(at);
            self.expiry.push(Reverse((at, key)));
        }
    }

    /// When a verdict of `class` decided at `t` lapses: the class's own TTL when the reputation
    /// supports it, the immediate verdict's TTL when evidence asked for it, whichever is later.
    fn expiry_for(&self, class: Class, judged: Class, floor: Option<(Class, Secs)>, t: Secs, offences: u32) -> Secs {
        let by_reputation = (judged == class).then(|| t.saturating_add(self.ttl(class, offences)));
        let by_evidence = floor.filter(|f| f.0 == class).map(|f| f.1);
        match (by_reputation, by_evidence) {
            (None, None) => t.saturating_add(self.ttl(class, offences)), // an override
            (a, b) => a.max(b).expect("one is set"),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn change(
        &mut self,
        key: Key,
        st: IpState,
        from: Class,
        to: Class,
        t: Secs,
        rep: f32,
        cause: Cause,
        floor: Option<(Class, Secs)>,
        judged: Class,
    ) -> VerdictChange {
        let memory = dur_secs(self.cfg.verdict.repeat_memory);
        let d = self.dossier_for(key, true).expect("forced");
        if from == Class::Good && to != Class::Good {
            if d.offences > 0 && t.saturating_sub(d.last_offence) > memory {
                d.offences = 0;
            }
            d.offences += 1;
            d.last_offence = t;
        }
        let offences = d.offences;
        let expires = (to != Class::Good).then(|| self.expiry_for(to, judged, floor, t, offences));
        let d = self.dossiers.get_mut(&key).expect("just opened");
        d.held = expires.map(|e| Held { since: t, expires: e, announced: e });
        if let Some(e) = expires {
            self.schedule(key, e);
        }
        self.states.get_mut(key).expect("exists").class = to as u8;
        self.stats.changes_to[to as usize] += 1;
        if to == Class::Bad && from != Class::Bad {
            self.note_bad(key, t);
        }
        let d = self.dossiers.get(&key).expect("exists");
        let mut why = reasons(&self.cfg, &st, Some(d), t, to, rep);
        match cause {
            Cause::Expired => why.insert(
                0,
                Reason {
                    source: "verdict:expired".into(),
                    text: format!("the {from} verdict ran its time without new evidence; reputation now {rep:.2}"),
                    weight: 0.0,
                },
            ),
            Cause::Override => {
                if let Some(o) = self.override_for(key) {
                    why.insert(
                        0,
                        Reason {
                            source: "override".into(),
                            text: format!("override by {}: {}", o.by, o.comment),
                            weight: 0.0,
                        },
                    );
                } else {
                    why.insert(0, Reason { source: "override".into(), text: "override removed".into(), weight: 0.0 });
                }
            }
            Cause::Evidence | Cause::Renewed => {}
        }
        self.cite_versions(&mut why);
        VerdictChange {
            subject: key.subject(self.cfg.ipv6_prefix),
            at: ts(t),
            from,
            to,
            cause,
            reputation: rep,
            requests: st.requests,
            expires: expires.map(ts),
            reasons: why,
            samples: d.samples_vec(),
            shadow: false,
        }
    }

    /// The one expiry policy for events fed in order (`roost replay`, each partition of
    /// `roost score`, `roost up`'s logs): verdicts lapse as event time enters a new second. Call
    /// it with each event's time before [`Engine::observe`] or [`Engine::apply`]; daemons also
    /// call [`Engine::expire`] with the wall clock as it passes.
    pub fn advance(&mut self, time: Timestamp) -> Vec<VerdictChange> {
        if self.expired_to.is_some_and(|e| secs(time) <= e) {
            return Vec::new();
        }
        self.expire(time)
    }

    /// Lets verdicts whose time ran out lapse, and overrides whose time ran out end. Call it as
    /// time passes (each second live; as event time advances in a replay).
    pub fn expire(&mut self, now: Timestamp) -> Vec<VerdictChange> {
        let t = secs(now);
        self.now = self.now.max(t);
        self.expired_to = Some(self.expired_to.map_or(t, |e| e.max(t)));
        let mut out = Vec::new();
        if !self.overrides.is_empty() {
            let lapsed: Vec<IpNetwork> =
                self.overrides.iter().filter(|(_, o)| o.until.is_some_and(|u| u <= now)).map(|(n, _)| n).collect();
            for net in lapsed {
                out.extend(self.remove_override(net, now));
            }
        }
        // Take what is due first, then handle each once: whatever is scheduled meanwhile waits
        // for the next call, so this always ends.
        let mut due = Vec::new();
        while let Some(&Reverse((exp, key))) = self.expiry.peek() {
            if exp > t {
                break;
            }
            self.expiry.pop();
            due.push((exp, key));
        }
        for (exp, key) in due {
            let Some(d) = self.dossiers.get_mut(&key) else { continue };
            if d.queued != Some(exp) {
                continue; // a stale copy
            }
            d.queued = None;
            let Some(held) = d.held else { continue };
            if held.expires > t {
                self.schedule(key, held.expires); // renewed since
                continue;
            }
            let Some(current) = self.states.get(key).map(|st| Class::from_u8(st.class)) else { continue };
            match self.decide(key, t, Cause::Expired) {
                Some(change) => out.push(change),
                None if current != Class::Good => {
                    // Still supported by the evidence: decide() renewed the hold.
                    let renewed = self.dossiers.get(&key).and_then(|d| d.held).map_or(t, |h| h.expires);
                    let next = if renewed > t { renewed } else { t.saturating_add(self.ttl(current, 1).max(1)) };
                    if next > t {
                        if let Some(h) = self.dossiers.get_mut(&key).and_then(|d| d.held.as_mut()) {
                            h.expires = next;
                        }
                        self.note_renewal(key, t);
                        self.schedule(key, next);
                    }
                }
                None => {}
            }
        }
        out
    }

    /// Forgets good clients idle longer than `forget_after`, and dossiers no longer needed.
    /// Returns how many clients were forgotten.
    pub fn sweep(&mut self, now: Timestamp) -> usize {
        let t = secs(now);
        let idle = dur_secs(self.cfg.forget_after);
        let memory = dur_secs(self.cfg.verdict.repeat_memory);
        let before = self.states.len();
        let dossiers = &mut self.dossiers;
        self.states.retain(|key, st| {
            let keep = st.class != Class::Good as u8 || t.saturating_sub(st.last) < idle;
            if !keep && st.flags & HAS_DOSSIER != 0 {
                let remember =
                    dossiers.get(&key).is_some_and(|d| d.offences > 0 && t.saturating_sub(d.last_offence) < memory);
                if !remember {
                    dossiers.remove(&key);
                }
            }
            keep
        });
        let states = &self.states;
        self.dossiers.retain(|key, d| {
            states.get(*key).is_some() || (d.offences > 0 && t.saturating_sub(d.last_offence) < memory)
        });
        for i in &mut self.inspectors {
            i.forget_before(Timestamp::from_secs(t.saturating_sub(idle) as i64));
        }
        let window = dur_secs(self.cfg.escalation.window);
        self.wide.retain(|_, w| w.until > t || w.bad.iter().any(|(_, at)| t.saturating_sub(*at) <= window));
        before - self.states.len()
    }

    /// Sets an operator's override on a prefix; returns the verdict changes it causes among
    /// tracked clients.
    pub fn set_override(&mut self, net: IpNetwork, ov: Override, now: Timestamp) -> Vec<VerdictChange> {
        self.overrides.insert(net, ov);
        // An override of one client holds even if it has sent nothing yet: it gets a state, so
        // the verdict is published at once (proxies and routers act on published verdicts).
        // Wider prefixes apply to the clients under them as they are seen.
        let single = match net {
            IpNetwork::V4(n) => n.prefix() == 32,
            IpNetwork::V6(n) => n.prefix() >= self.cfg.ipv6_prefix,
        };
        if single {
            let key = Key::of(net.network(), self.cfg.ipv6_prefix);
            if self.room_for(key) {
                self.fold(key, secs(now));
            }
        }
        self.reevaluate(net, now)
    }

    /// Removes an override; clients under it return to what their evidence says.
    pub fn remove_override(&mut self, net: IpNetwork, now: Timestamp) -> Vec<VerdictChange> {
        if self.overrides.remove(&net).is_none() {
            return Vec::new();
        }
        let t = secs(now);
        // Without the override, a held verdict must not outlive it: end holds at once.
        let mut keys: Vec<Key> = self.states.iter().filter(|(k, _)| net.contains(k.addr())).map(|(k, _)| k).collect();
        keys.sort_unstable();
        for k in &keys {
            if let Some(h) = self.dossiers.get_mut(k).and_then(|d| d.held.as_mut()) {
                h.expires = h.expires.min(t);
            }
        }
        let mut out = Vec::new();
        for k in keys {
            if let Some(mut c) = self.decide(k, t, Cause::Override) {
                c.cause = Cause::Override;
                out.push(c);
            }
        }
        out
    }

    /// The overrides in force.
    pub fn overrides(&self) -> Vec<(IpNetwork, Override)> {
        self.overrides.iter().map(|(n, o)| (n, o.clone())).collect()
    }

    fn reevaluate(&mut self, net: IpNetwork, now: Timestamp) -> Vec<VerdictChange> {
        let t = secs(now);
        self.now = self.now.max(t);
        let mut keys: Vec<Key> = self.states.iter().filter(|(k, _)| net.contains(k.addr())).map(|(k, _)| k).collect();
        keys.sort_unstable();
        keys.into_iter().filter_map(|k| self.decide(k, t, Cause::Override)).collect()
    }

    /// Everything known about the client behind `ip`, as of `now`.
    pub fn explain(&self, ip: IpAddr, now: Timestamp) -> Option<Explanation> {
        let key = Key::of(ip, self.cfg.ipv6_prefix);
        let st = self.states.get(key)?;
        let t = secs(now).max(st.last);
        let d = half_life_decay(t - st.last, self.inv_half_life);
        let dossier = self.dossiers.get(&key).filter(|_| st.flags & HAS_DOSSIER != 0);
        let class = Class::from_u8(st.class);
        let reputation = self.reputation(st, d);
        let mut why = reasons(&self.cfg, st, dossier, t, class, reputation);
        self.cite_versions(&mut why);
        Some(Explanation {
            subject: key.subject(self.cfg.ipv6_prefix),
            class,
            reputation,
            requests: st.requests,
            first_seen: ts(st.first),
            last_seen: ts(st.last),
            since: dossier.and_then(|d| d.held).map(|h| ts(h.since)),
            expires: dossier.and_then(|d| d.held).map(|h| ts(h.expires)),
            offences: dossier.map_or(0, |d| d.offences),
            reasons: why,
            samples: dossier.map(|d| d.samples_vec()).unwrap_or_default(),
        })
    }

    /// Clients with a non-good verdict (or only those of `class`), worst first, then by
    /// address; at most `limit`. Only those returned are explained.
    pub fn flagged(&self, now: Timestamp, class: Option<Class>, limit: usize) -> Vec<Explanation> {
        let mut keys: Vec<(Reverse<u8>, Key)> = self
            .dossiers
            .iter()
            .filter(|(_, d)| d.held.is_some())
            .filter_map(|(k, _)| self.states.get(*k).map(|st| (Reverse(st.class), *k)))
            .filter(|(Reverse(c), _)| *c != Class::Good as u8 && class.is_none_or(|want| want as u8 == *c))
            .collect();
        let limit = limit.min(keys.len());
        if limit == 0 {
            return Vec::new();
        }
        if limit < keys.len() {
            keys.select_nth_unstable(limit - 1);
            keys.truncate(limit);
        }
        keys.sort_unstable();
        keys.into_iter().filter_map(|(_, k)| self.explain(k.addr(), now)).collect()
    }

    /// Every tracked client's explanation, in address order.
    pub fn explain_all(&self, now: Timestamp) -> Vec<Explanation> {
        let mut keys: Vec<Key> = self.states.iter().map(|(k, _)| k).collect();
        keys.sort_unstable();
        keys.into_iter().filter_map(|k| self.explain(k.addr(), now)).collect()
    }

    /// The tracked population's reputation at `now`.
    pub fn aggregates(&self, now: Timestamp) -> Aggregates {
        let t = secs(now);
        let mut a = Aggregates { dossiers: self.dossiers.len() as u64, ..Aggregates::default() };
        let (mut sum, mut wsum, mut wtot) = (0.0f64, 0.0f64, 0.0f64);
        for (_, st) in self.states.iter() {
            let d = half_life_decay(t.saturating_sub(st.last), self.inv_half_life);
            let rep = self.reputation(st, d);
            a.ips += 1;
            a.per_class[st.class.min(2) as usize] += 1;
            sum += rep as f64;
            let w = (st.w * d) as f64;
            wsum += rep as f64 * w;
            wtot += w;
            let b = (((rep + 1.0) * 10.0).floor() as i64).clamp(0, 19) as usize;
            a.histogram[b] += 1;
        }
        if a.ips > 0 {
            a.mean_by_ip = sum / a.ips as f64;
        }
        if wtot > 0.0 {
            a.mean_by_request = wsum / wtot;
        }
        a.request_weight = wtot;
        a
    }

    /// Reasons that cite a rule also cite the rule set's version.
    fn cite_versions(&self, why: &mut Vec<Reason>) {
        if !why.iter().any(|r| r.source.starts_with("rule:")) {
            return;
        }
        for i in &self.inspectors {
            if let Some(v) = i.version() {
                why.push(Reason {
                    source: format!("{}:version", i.name()),
                    text: format!("{} version {v}", i.name()),
                    weight: 0.0,
                });
            }
        }
    }

    /// Versions of the inspectors' configurations (the rule set's), for reasons and metrics.
    pub fn inspector_versions(&self) -> Vec<(String, String)> {
        self.inspectors.iter().filter_map(|i| i.version().map(|v| (i.name().to_owned(), v))).collect()
    }
}
