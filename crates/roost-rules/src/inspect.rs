//! Rules at work: the evaluator (rules + windows for one stream of requests) and the engine
//! inspector that turns what fires into evidence. The inspector reads its rule set through a
//! shared handle, so a reload swaps rules between two requests and keeps every client's window
//! state for the rules that did not change.

use std::sync::Arc;

use arc_swap::ArcSwap;
use roost_engine::{Evidence, Inspector, PathClass, RequestContext, RequestEvent, Stager};

use crate::compile::{RequestFacts, Rule, RuleSet, Scratch};
use crate::spec::KeyField;
use crate::view::View;
use crate::window::{ClientKey, Windows, value_hash};

/// Clients with window state, at most (per evaluator).
pub const DEFAULT_MAX_CLIENTS: usize = 100_000;

/// Evaluates a rule set over a stream of requests, keeping the windows' state.
pub struct Evaluator {
    windows: Windows,
    scratch: Scratch,
    hits: Vec<u32>,
    found: Vec<(u32, u64)>,
}

/// The stateless half of evaluation: the rules a request matches (windows aside), each with
/// the hash of the value its window counts by (0 for none), appended to `out` in rule order.
pub fn find(
    set: &RuleSet,
    ev: &RequestEvent<'_>,
    path_class: PathClass,
    scratch: &mut Scratch,
    hits: &mut Vec<u32>,
    out: &mut Vec<(u32, u64)>,
) {
    let mut view = View::of(ev);
    let facts = RequestFacts { method: &ev.method, status: ev.status, request_time: ev.request_time, path_class };
    set.matching(&mut view, &facts, scratch, hits);
    for &r in hits.iter() {
        let value = match set.rules()[r as usize].window.as_ref().and_then(|w| w.distinct.or(w.same)) {
            None => 0,
            Some(KeyField::Path) => value_hash(view.path()),
            Some(KeyField::Target) => value_hash(view.target()),
            Some(KeyField::Host) => value_hash(view.host),
            Some(KeyField::UserAgent) => value_hash(view.user_agent),
            Some(KeyField::Method) => value_hash(&ev.method),
        };
        out.push((r, value));
    }
}

fn horizon(set: &RuleSet) -> u32 {
    set.rules().iter().filter_map(|r| r.window.as_ref()).map(|w| w.within.as_secs() as u32).max().unwrap_or(1)
}

fn secs(t: roost_event::Timestamp) -> u32 {
    t.secs().clamp(0, u32::MAX as i64) as u32
}

impl Evaluator {
    pub fn new(set: &RuleSet, max_clients: usize) -> Evaluator {
        Evaluator {
            windows: Windows::new(max_clients, horizon(set)),
            scratch: Scratch::default(),
            hits: Vec::new(),
            found: Vec::new(),
        }
    }

    /// The rules that fire on this request: `(rule index, window count)`.
    pub fn evaluate(
        &mut self,
        set: &RuleSet,
        client: ClientKey,
        ev: &RequestEvent<'_>,
        path_class: PathClass,
        out: &mut Vec<(u32, Option<u32>)>,
    ) {
        let mut found = std::mem::take(&mut self.found);
        found.clear();
        find(set, ev, path_class, &mut self.scratch, &mut self.hits, &mut found);
        self.fire(set, client, ev, &found, out);
        self.found = found;
    }

    /// The window half of [`Evaluator::evaluate`], given what [`find`] found in the request.
    pub fn fire(
        &mut self,
        set: &RuleSet,
        client: ClientKey,
        ev: &RequestEvent<'_>,
        found: &[(u32, u64)],
        out: &mut Vec<(u32, Option<u32>)>,
    ) {
        out.clear();
        let t = secs(ev.time);
        for &(r, value) in found {
            let rule = &set.rules()[r as usize];
            match &rule.window {
                None => out.push((r, None)),
                Some(w) => {
                    if let Some(n) = self.windows.hit(client, r, w, t, value) {
                        out.push((r, Some(n)));
                    }
                }
            }
        }
        if set.has_ratio() {
            self.hits.clear();
            self.hits.extend(found.iter().map(|&(r, _)| r));
            self.windows.miss(client, t, &self.hits);
        }
    }

    pub fn windows(&self) -> &Windows {
        &self.windows
    }
}

/// The reason text for a rule that fired; `header`: the header it matched on, when it was not
/// the request line (quoted then, and the request cited after it).
pub fn detail(rule: &Rule, ev: &RequestEvent<'_>, count: Option<u32>, header: Option<(&str, &str)>) -> String {
    let method = if ev.method.is_empty() { "(no method)" } else { &ev.method };
    match (count, &rule.window) {
        (Some(n), Some(w)) => {
            let mut target = String::new();
            push_target(&mut target, ev);
            let took = ev
                .request_time
                .filter(|_| w.same.is_some())
                .map(|rt| {
                    let tenths = (rt.max(0.0) * 10.0).round() as u32;
                    format!(" ({}.{} s)", tenths / 10, tenths % 10)
                })
                .unwrap_or_default();
            let within = humantime::format_duration(w.within);
            let what = match (w.distinct, w.same) {
                (Some(f), _) => format!("{n} distinct {}s", key_name(f)),
                (_, Some(f)) => format!("{n} requests for the same {}", key_name(f)),
                _ if w.ratio.is_some() => {
                    format!("{n} matching requests (≥ {}% of all)", (w.ratio.unwrap_or(0.0) * 100.0).round() as u32)
                }
                _ => format!("{n} matching requests"),
            };
            format!(
                "{} {}: {what} within {within}, latest {method} {target} → {}{took}",
                rule.id, rule.title, ev.status
            )
        }
        // Rules without a window fire on every matching request (a tool's user agent on each of
        // its requests): the text is put together by hand, which costs a fraction of `format!`.
        _ => {
            let mut out = String::with_capacity(rule.id.len() + rule.title.len() + 200);
            out.push_str(&rule.id);
            out.push(' ');
            out.push_str(&rule.title);
            out.push_str(": ");
            let quoted = header.is_some();
            if let Some((name, value)) = header {
                let mut end = value.len().min(120);
                while !value.is_char_boundary(end) {
                    end -= 1;
                }
                out.push_str(name);
                out.push_str(" \"");
                out.push_str(&value[..end]);
                if end < value.len() {
                    out.push('…');
                }
                out.push_str("\" (");
            }
            out.push_str(method);
            out.push(' ');
            push_target(&mut out, ev);
            out.push_str(" → ");
            push_u16(&mut out, ev.status);
            if quoted {
                out.push(')');
            }
            out
        }
    }
}

/// Appends the request target (path `?` query), cut to 120 bytes plus an ellipsis.
fn push_target(out: &mut String, ev: &RequestEvent<'_>) {
    const MAX: usize = 120;
    let start = out.len();
    out.push_str(&ev.path);
    if let Some(q) = &ev.query {
        out.push('?');
        out.push_str(q);
    }
    if out.len() - start > MAX {
        let mut end = start + MAX;
        while !out.is_char_boundary(end) {
            end -= 1;
        }
        out.truncate(end);
        out.push('…');
    }
}

fn push_u16(out: &mut String, mut n: u16) {
    let mut buf = [0u8; 5];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.push_str(std::str::from_utf8(&buf[i..]).expect("ASCII digits"));
}

fn key_name(f: KeyField) -> &'static str {
    match f {
        KeyField::Path => "path",
        KeyField::Target => "URL",
        KeyField::Host => "host",
        KeyField::UserAgent => "user agent",
        KeyField::Method => "method",
    }
}

/// A rule set that can be swapped while inspectors use it.
pub type RulesHandle = Arc<ArcSwap<RuleSet>>;

pub fn handle(set: RuleSet) -> RulesHandle {
    Arc::new(ArcSwap::from_pointee(set))
}

/// The known-bad rules as an engine [`Inspector`].
pub struct RulesInspector {
    handle: RulesHandle,
    current: Arc<RuleSet>,
    eval: Evaluator,
    fired: Vec<(u32, Option<u32>)>,
    /// The rule set the latest stager matches with: its findings are used while it is in force.
    staged_for: Option<Arc<RuleSet>>,
}

/// The rules inspector's stateless half: which rules a request matches, windows aside.
struct RulesStager {
    set: Arc<RuleSet>,
    scratch: Scratch,
    hits: Vec<u32>,
}

impl Stager for RulesStager {
    fn stage(&mut self, event: &RequestEvent<'_>, path_class: PathClass, out: &mut Vec<(u32, u64)>) {
        find(&self.set, event, path_class, &mut self.scratch, &mut self.hits, out);
    }
}

impl RulesInspector {
    pub fn new(handle: RulesHandle, max_clients: usize) -> RulesInspector {
        let current = handle.load_full();
        let eval = Evaluator::new(&current, max_clients);
        RulesInspector { handle, current, eval, fired: Vec::new(), staged_for: None }
    }

    /// Takes up a new rule set: window state moves with rules whose id and window are unchanged.
    fn take_up(&mut self, new: Arc<RuleSet>) {
        let old = &self.current;
        let map: Vec<Option<u32>> = old
            .rules()
            .iter()
            .map(|r| {
                new.rules()
                    .iter()
                    .position(|n| n.id == r.id && n.window == r.window && n.window.is_some())
                    .map(|i| i as u32)
            })
            .collect();
        self.eval.windows.remap(&|i| map.get(i as usize).copied().flatten());
        self.eval.windows.set_horizon(horizon(&new));
        tracing::info!(
            version = new.version(),
            rules = new.rules().len(),
            previous = old.version(),
            "rule set reloaded; client state kept"
        );
        self.current = new;
    }
}

fn client_key(net: ipnetwork::IpNetwork) -> ClientKey {
    let bits = match net.ip() {
        std::net::IpAddr::V4(a) => a.to_bits() as u128,
        std::net::IpAddr::V6(a) => a.to_bits(),
    };
    (bits, net.prefix())
}

impl RulesInspector {
    /// Takes up the rule set handed over since the last request, if any.
    fn refresh(&mut self) {
        let latest = self.handle.load();
        if !Arc::ptr_eq(&latest, &self.current) {
            let new = Arc::clone(&latest);
            drop(latest);
            self.take_up(new);
        }
    }

    /// Evidence for the rules in `self.fired`.
    fn evidence(&self, ctx: &RequestContext<'_, '_>, out: &mut Vec<Evidence>) {
        let current = &self.current;
        for &(r, count) in self.fired.iter() {
            let rule = &current.rules()[r as usize];
            let header = if count.is_none() { current.matched_header(r, ctx.event) } else { None };
            let mut detail = detail(rule, ctx.event, count, header);
            if let Some(d) = current.detection(r, ctx.event) {
                detail.push_str(&format!(" [{} in {}", d.detector, d.place));
                match &d.fingerprint {
                    Some(f) if d.detector == "sqli" => detail.push_str(&format!(", fingerprint {f}")),
                    Some(f) => detail.push_str(&format!(", {f}")),
                    None => {}
                }
                detail.push_str(&format!(": {:?}]", d.fragment));
            }
            out.push(Evidence {
                source: rule.source.clone(),
                penalty: rule.effect.penalty,
                verdict: rule.effect.verdict,
                detail,
            });
        }
    }
}

impl Inspector for RulesInspector {
    fn name(&self) -> &str {
        "rules"
    }

    fn inspect(&mut self, ctx: &RequestContext<'_, '_>, out: &mut Vec<Evidence>) {
        self.refresh();
        let RulesInspector { current, eval, fired, .. } = self;
        eval.evaluate(current, client_key(ctx.subject), ctx.event, ctx.path_class, fired);
        self.evidence(ctx, out);
    }

    fn stager(&mut self) -> Option<Box<dyn Stager>> {
        self.refresh();
        self.staged_for = Some(Arc::clone(&self.current));
        Some(Box::new(RulesStager { set: Arc::clone(&self.current), scratch: Scratch::default(), hits: Vec::new() }))
    }

    fn inspect_staged(&mut self, ctx: &RequestContext<'_, '_>, found: &[(u32, u64)], out: &mut Vec<Evidence>) {
        self.refresh();
        if !self.staged_for.as_ref().is_some_and(|s| Arc::ptr_eq(s, &self.current)) {
            return self.inspect(ctx, out);
        }
        let RulesInspector { current, eval, fired, .. } = self;
        eval.fire(current, client_key(ctx.subject), ctx.event, found, fired);
        self.evidence(ctx, out);
    }

    /// The rule set in force: the latest one handed over, even before a request took it up.
    fn version(&self) -> Option<String> {
        let set = self.handle.load();
        Some(format!("{} ({} rules)", set.version(), set.rules().len()))
    }

    fn forget_before(&mut self, before: roost_event::Timestamp) {
        self.eval.windows.forget_before(secs(before));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_and_targets_are_written_as_format_would() {
        for n in [0u16, 7, 10, 404, 9999, 65535] {
            let mut s = String::from("x");
            push_u16(&mut s, n);
            assert_eq!(s, format!("x{n}"));
        }
        let long = "é".repeat(100);
        let ev = &crate::examples::parse_example(&format!("GET /{long}?a=1 200")).expect("example")[0];
        let mut s = String::new();
        push_target(&mut s, ev);
        assert!(s.ends_with('…') && s.len() <= 120 + '…'.len_utf8(), "{s}");
        let ev = &crate::examples::parse_example("GET /a?b=c 200").expect("example")[0];
        let mut s = String::from("GET ");
        push_target(&mut s, ev);
        assert_eq!(s, "GET /a?b=c");
    }
}
