//! From rule files to a [`RuleSet`]: validation with file:line diagnostics, then compilation of
//! every pattern of every rule into one `RegexSet` per request field. Matching a request costs
//! one automaton pass per field, whatever the number of rules.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::time::Duration;

use regex::bytes::{RegexSet, RegexSetBuilder};
use roost_engine::{Class, PathClass};
use sha2::{Digest, Sha256};
use toml::Spanned;

use crate::spec::{Conditions, EffectSpec, RuleFile, Severity, StatusSpec, VerdictSpec, WindowSpec};
use crate::view::{Field, View};

/// One rule file's text and the name to report it by.
#[derive(Clone, Debug)]
pub struct RuleSource {
    pub name: String,
    pub text: String,
}

/// A problem found in a rule file, at a line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: String,
    pub line: usize,
    pub rule: Option<String>,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: ", self.file, self.line)?;
        if let Some(r) = &self.rule {
            write!(f, "{r}: ")?;
        }
        f.write_str(&self.message)
    }
}

/// The rule set could not be built; every problem found is listed.
#[derive(Clone, Debug, thiserror::Error)]
pub struct RulesError(pub Vec<Diagnostic>);

impl fmt::Display for RulesError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

/// Which rules to leave out (site-specific: a WordPress site disables the `not-wordpress` tag).
#[derive(Clone, Debug, Default)]
pub struct Options {
    pub disable: Vec<String>,
    pub disable_tags: Vec<String>,
    /// Rule ids, and tags, to run in shadow mode whatever their files say.
    pub shadow: Vec<String>,
    pub shadow_tags: Vec<String>,
}

/// What a rule does when it matches.
#[derive(Clone, Debug, PartialEq)]
pub struct Effect {
    pub penalty: f32,
    pub verdict: Option<(Class, Duration)>,
}

/// An example request (or sequence) and where it is written.
#[derive(Clone, Debug)]
pub struct Example {
    pub spec: String,
    pub line: usize,
}

/// A compiled rule.
#[derive(Clone, Debug)]
pub struct Rule {
    pub id: String,
    /// `rule:<id>`, made once: evidence clones it.
    pub source: roost_engine::Source,
    pub title: String,
    pub description: String,
    pub references: Vec<String>,
    pub severity: Severity,
    pub category: String,
    pub tags: Vec<String>,
    /// `shadow`: evidence from this rule reaches only the shadow (candidate) engine.
    pub mode: roost_engine::Mode,
    pub file: String,
    pub line: usize,
    pub window: Option<WindowSpec>,
    pub effect: Effect,
    pub must_match: Vec<Example>,
    pub must_not_match: Vec<Example>,
    cond: Compiled,
    unless: Compiled,
}

/// The non-pattern conditions, and which fields carry patterns.
#[derive(Clone, Debug, Default)]
struct Compiled {
    methods: Vec<String>,
    status: Vec<(u16, u16)>,
    min_request_time: Option<f32>,
    path_class: Option<PathClass>,
    /// Bit `Field as usize` set for each field with patterns.
    fields: u16,
    /// The detectors that must find something (`crate::view::DETECT_*` bits; any of them).
    detect: u8,
}

impl Compiled {
    fn is_empty(&self) -> bool {
        self.methods.is_empty()
            && self.status.is_empty()
            && self.min_request_time.is_none()
            && self.path_class.is_none()
            && self.fields == 0
            && self.detect == 0
    }
}

struct FieldSet {
    field: Field,
    set: RegexSet,
    /// Pattern index → the (rule index, condition bit) pairs it satisfies: a pattern several rules
    /// share (R-6999 repeats every KEV probe's) is in the set once. `anywhere` patterns sit in
    /// the target, user-agent, referer and host sets, each setting the `Anywhere` bit.
    owners: Vec<Vec<(u32, u16)>>,
}

/// A compiled, immutable rule set. Cheap to share; swapped whole on reload.
pub struct RuleSet {
    rules: Vec<Rule>,
    pos: Vec<FieldSet>,
    neg: Vec<FieldSet>,
    /// Rules without field patterns: candidates on every request.
    always: Vec<u32>,
    version: String,
    files: usize,
    has_ratio: bool,
}

/// What rule evaluation needs of a request besides its text fields.
pub struct RequestFacts<'a> {
    pub method: &'a str,
    pub status: u16,
    pub request_time: Option<f32>,
    pub path_class: PathClass,
}

/// Reusable buffers for evaluation, and a memo of texts known to match nothing.
#[derive(Default)]
pub struct Scratch {
    sat: Vec<u16>,
    touched: Vec<u32>,
    neg: Vec<Option<Vec<usize>>>,
    /// Keys of texts that matched no pattern of a field (see `View::memo_key`), for the rule
    /// set `clean_for`. User agents, referers, hosts and popular pages repeat endlessly; a
    /// lookup is far cheaper than computing the view and scanning it. The hasher is randomly
    /// keyed, so no one can aim a collision at it.
    clean: CleanMemo,
    clean_for: String,
    hasher: hashbrown::DefaultHashBuilder,
}

/// Slots of the clean memo: 64k (512 KiB). Measured with the rules bench side by side: 16k
/// slots lost more scans to evictions than they saved in cache misses, 256k gained nothing, and
/// the hash set of 64k entries this replaced probed twice (control bytes, then the bucket).
const CLEAN_BITS: u32 = 16;
const CLEAN_SLOTS: usize = 1 << CLEAN_BITS;

/// A direct-mapped cache of hashes known clean: one load per lookup, a newer text in the same
/// slot evicts the older (which then costs one scan more, never a wrong answer: a slot holds
/// the whole 64-bit hash).
pub struct CleanMemo {
    slots: Box<[u64]>,
}

impl Default for CleanMemo {
    fn default() -> Self {
        CleanMemo { slots: vec![0; CLEAN_SLOTS].into_boxed_slice() }
    }
}

impl CleanMemo {
    #[inline]
    fn at(h: u64) -> (usize, u64) {
        // the slot from the high bits, the tag never 0 (the empty slot)
        ((h >> (64 - CLEAN_BITS)) as usize, h | 1)
    }

    #[inline]
    pub fn contains(&self, h: u64) -> bool {
        let (i, tag) = Self::at(h);
        self.slots[i] == tag
    }

    #[inline]
    pub fn remember(&mut self, h: u64) {
        let (i, tag) = Self::at(h);
        self.slots[i] = tag;
    }

    pub fn clear(&mut self) {
        self.slots.fill(0);
    }

    pub fn is_empty(&self) -> bool {
        self.slots.iter().all(|&s| s == 0)
    }
}

/// The memo tag of the path and query string clean for every pattern of their fields.
const TAG_TARGET: u8 = 0x7e;

const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// The texts an `anywhere` pattern is looked for in.
const ANYWHERE: [Field; 4] = [Field::Target, Field::UserAgent, Field::Referer, Field::Host];

fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())].iter().filter(|&&b| b == b'\n').count() + 1
}

fn default_effect(sev: Severity) -> Effect {
    match sev {
        Severity::Info => Effect { penalty: 0.5, verdict: None },
        Severity::Low => Effect { penalty: 1.0, verdict: None },
        Severity::Medium => Effect { penalty: 3.0, verdict: None },
        Severity::High => Effect { penalty: 5.0, verdict: Some((Class::Dubious, Duration::from_secs(15 * 60))) },
        Severity::Critical => Effect { penalty: 10.0, verdict: Some((Class::Bad, Duration::from_secs(3600))) },
    }
}

fn effect_of(spec: Option<&EffectSpec>, sev: Severity) -> Effect {
    let base = default_effect(sev);
    let Some(e) = spec else { return base };
    let verdict = match e.verdict {
        Some(VerdictSpec::Challenge) => Some((Class::Dubious, e.ttl.unwrap_or(Duration::from_secs(15 * 60)))),
        Some(VerdictSpec::Block) => Some((Class::Bad, e.ttl.unwrap_or(Duration::from_secs(3600)))),
        None if e.penalty.is_some() => None,
        None => base.verdict,
    };
    Effect { penalty: e.penalty.unwrap_or(base.penalty), verdict }
}

type Patterns<'a> = [(Field, &'a [Spanned<String>]); 10];

fn patterns(c: &Conditions) -> Patterns<'_> {
    [
        (Field::Path, &c.path),
        (Field::DecodedPath, &c.decoded_path),
        (Field::RawPath, &c.raw_path),
        (Field::Query, &c.query),
        (Field::RawQuery, &c.raw_query),
        (Field::Target, &c.target),
        (Field::UserAgent, &c.user_agent),
        (Field::Referer, &c.referer),
        (Field::Host, &c.host),
        (Field::Anywhere, &c.anywhere),
    ]
}

fn status_ranges(list: &[StatusSpec]) -> Result<Vec<(u16, u16)>, String> {
    list.iter()
        .map(|s| match s {
            StatusSpec::Code(c) if (100..=599).contains(c) => Ok((*c, *c)),
            StatusSpec::Code(c) => Err(format!("status {c} is not an HTTP status (100-599)")),
            StatusSpec::Class(k) => {
                let b = k.as_bytes();
                if b.len() == 3 && (b'1'..=b'5').contains(&b[0]) && b[1..].eq_ignore_ascii_case(b"xx") {
                    let lo = (b[0] - b'0') as u16 * 100;
                    Ok((lo, lo + 99))
                } else if let Ok(c) = k.parse::<u16>() {
                    status_ranges(&[StatusSpec::Code(c)]).map(|v| v[0])
                } else {
                    Err(format!("status {k:?} is neither a code nor a class like \"4xx\""))
                }
            }
        })
        .collect()
}

fn path_class(s: &Option<String>) -> Result<Option<PathClass>, String> {
    match s.as_deref() {
        None | Some("any") => Ok(None),
        Some("page") => Ok(Some(PathClass::Page)),
        Some("static") => Ok(Some(PathClass::Static)),
        Some(other) => Err(format!("path_class {other:?} is not one of page, static, any")),
    }
}

impl RuleSet {
    /// Validates and compiles rule files. Every problem found is reported, not only the first.
    pub fn compile(sources: &[RuleSource], opts: &Options) -> Result<RuleSet, RulesError> {
        let mut diags = Vec::new();
        let mut rules: Vec<Rule> = Vec::new();
        // per field scanned: (pattern, rule index, condition bit)
        let mut pos_pats: BTreeMap<Field, Vec<(String, u32, u16)>> = BTreeMap::new();
        let mut neg_pats: BTreeMap<Field, Vec<(String, u32, u16)>> = BTreeMap::new();
        let mut seen: HashMap<String, (String, usize)> = HashMap::new();
        let mut hasher = Sha256::new();
        for src in sources {
            hasher.update(src.name.as_bytes());
            hasher.update([0]);
            hasher.update(src.text.as_bytes());
            hasher.update([0]);
            let file: RuleFile = match toml::from_str(&src.text) {
                Ok(f) => f,
                Err(e) => {
                    let line = e.span().map_or(1, |s| line_of(&src.text, s.start));
                    diags.push(Diagnostic {
                        file: src.name.clone(),
                        line,
                        rule: None,
                        message: e.message().trim().to_owned(),
                    });
                    continue;
                }
            };
            for spanned in file.rule {
                let rule_line = line_of(&src.text, spanned.span().start);
                let spec = spanned.into_inner();
                let id = spec.id.get_ref().clone();
                let at = |s: &std::ops::Range<usize>| line_of(&src.text, s.start);
                let mut err = |line: usize, message: String| {
                    diags.push(Diagnostic { file: src.name.clone(), line, rule: Some(id.clone()), message });
                };
                if id.is_empty() || !id.bytes().all(|c| c.is_ascii_alphanumeric() || b"-_.".contains(&c)) {
                    err(at(&spec.id.span()), format!("id {id:?} must be non-empty letters, digits, '-', '_' or '.'"));
                }
                if let Some((f, l)) = seen.get(&id) {
                    err(at(&spec.id.span()), format!("duplicate rule id (first defined at {f}:{l})"));
                } else {
                    seen.insert(id.clone(), (src.name.clone(), at(&spec.id.span())));
                }
                if spec.title.trim().is_empty() {
                    err(rule_line, "title is empty".into());
                }
                if spec.category.trim().is_empty() {
                    err(rule_line, "category is empty".into());
                }
                let mut compiled = [Compiled::default(), Compiled::default()];
                for (which, conds) in [(0usize, &spec.matches), (1, &spec.unless)] {
                    let part = if which == 0 { "match" } else { "unless" };
                    let c = &mut compiled[which];
                    c.methods = conds.method.iter().map(|m| m.to_ascii_uppercase()).collect();
                    match status_ranges(&conds.status) {
                        Ok(s) => c.status = s,
                        Err(m) => err(rule_line, format!("{part}.{m}")),
                    }
                    c.min_request_time = conds.min_request_time.map(|d| d.as_secs_f32());
                    for d in &conds.detect {
                        match crate::view::detector(d) {
                            Some(bit) if which == 0 => c.detect |= bit,
                            Some(_) => err(rule_line, "unless.detect: detectors are a match condition only".into()),
                            None => err(
                                rule_line,
                                format!("{part}.detect: {d:?} is not a detector (sqli, xss, traversal, cmd)"),
                            ),
                        }
                    }
                    match path_class(&conds.path_class) {
                        Ok(p) => c.path_class = p,
                        Err(m) => err(rule_line, format!("{part}.{m}")),
                    }
                    for (field, pats) in patterns(conds) {
                        for p in pats {
                            let pattern =
                                if spec.case_sensitive { p.get_ref().clone() } else { format!("(?i:{})", p.get_ref()) };
                            // Parsing is enough to find mistakes and far cheaper than compiling
                            // twice; a pattern too big to compile is found when its set is built.
                            if let Err(e) = regex_syntax::ast::parse::Parser::new().parse(&pattern) {
                                let msg = e.kind().to_string();
                                err(
                                    at(&p.span()),
                                    format!("bad regex in {part}.{}: {:?}: {msg}", field.name(), p.get_ref()),
                                );
                                continue;
                            }
                            let bit = 1u16 << field as u16;
                            c.fields |= bit;
                            let idx = rules.len() as u32;
                            let dest = if which == 0 { &mut pos_pats } else { &mut neg_pats };
                            let scanned: &[Field] =
                                if field == Field::Anywhere { &ANYWHERE } else { std::slice::from_ref(&field) };
                            for f in scanned {
                                dest.entry(*f).or_default().push((pattern.clone(), idx, bit));
                            }
                        }
                    }
                }
                let listed = patterns(&spec.matches).iter().any(|(_, p)| !p.is_empty());
                if compiled[0].is_empty() && !listed && spec.window.is_none() {
                    err(rule_line, "no conditions under [match]: the rule would match every request".into());
                }
                if let Some(w) = &spec.window {
                    let wl = at(&w.span());
                    let w = w.get_ref();
                    if w.count == 0 || w.within.is_zero() {
                        err(wl, "window needs count >= 1 and a positive `within`".into());
                    }
                    if w.distinct.is_some() && w.same.is_some() {
                        err(wl, "window: `distinct` and `same` cannot both be set".into());
                    }
                    if w.ratio.is_some_and(|r| !(r > 0.0 && r <= 1.0)) {
                        err(wl, "window: ratio must be within (0, 1]".into());
                    }
                }
                if let Some(e) = &spec.effect {
                    if e.penalty.is_some_and(|p| !(0.0..=100.0).contains(&p)) {
                        err(rule_line, "effect.penalty must be within 0..=100".into());
                    }
                    if e.ttl.is_some() && e.verdict.is_none() {
                        err(rule_line, "effect.ttl without effect.verdict".into());
                    }
                }
                let examples = spec.examples.unwrap_or_default();
                if examples.matches.is_empty() {
                    err(
                        rule_line,
                        "no examples: add requests that must match under [rule.examples] match = [...]".into(),
                    );
                }
                let ex = |v: &[Spanned<String>]| {
                    v.iter().map(|s| Example { spec: s.get_ref().clone(), line: at(&s.span()) }).collect::<Vec<_>>()
                };
                let disabled = opts.disable.contains(&id) || spec.tags.iter().any(|t| opts.disable_tags.contains(t));
                let mode = if opts.shadow.contains(&id) || spec.tags.iter().any(|t| opts.shadow_tags.contains(t)) {
                    roost_engine::Mode::Shadow
                } else {
                    spec.mode
                };
                let rule = Rule {
                    source: roost_engine::Source::new(roost_engine::SourceKind::Rule, id.as_str())
                        .in_shadow(mode.is_shadow()),
                    mode,
                    id: id.clone(),
                    title: spec.title,
                    description: spec.description,
                    references: spec.references,
                    severity: spec.severity,
                    category: spec.category,
                    tags: spec.tags,
                    file: src.name.clone(),
                    line: rule_line,
                    window: spec.window.map(|w| w.into_inner()),
                    effect: effect_of(spec.effect.as_ref(), spec.severity),
                    must_match: ex(&examples.matches),
                    must_not_match: ex(&examples.no_match),
                    cond: std::mem::take(&mut compiled[0]),
                    unless: std::mem::take(&mut compiled[1]),
                };
                if disabled {
                    // drop its patterns again
                    let idx = rules.len() as u32;
                    for m in [&mut pos_pats, &mut neg_pats] {
                        for v in m.values_mut() {
                            v.retain(|(_, r, _)| *r != idx);
                        }
                    }
                    continue;
                }
                rules.push(rule);
            }
        }
        if !diags.is_empty() {
            return Err(RulesError(diags));
        }
        let build = |pats: BTreeMap<Field, Vec<(String, u32, u16)>>| -> Result<Vec<FieldSet>, String> {
            let mut out = Vec::new();
            for (field, list) in pats {
                if list.is_empty() {
                    continue;
                }
                // identical patterns once, owned by every rule that has them
                let mut index: BTreeMap<&str, usize> = BTreeMap::new();
                let mut patterns: Vec<&str> = Vec::new();
                let mut owners: Vec<Vec<(u32, u16)>> = Vec::new();
                for (p, r, b) in &list {
                    let i = *index.entry(p.as_str()).or_insert_with(|| {
                        patterns.push(p);
                        owners.push(Vec::new());
                        patterns.len() - 1
                    });
                    owners[i].push((*r, *b));
                }
                // Byte-oriented and ASCII-only (`\w`, `\s`, case folding): request fields are
                // mostly ASCII, and Unicode case folding of every class made compiling the set
                // cost more than replaying 100,000 lines. A rule that wants Unicode says `(?u:…)`.
                let set = RegexSetBuilder::new(&patterns)
                    .unicode(false)
                    .size_limit(REGEX_SIZE_LIMIT * 64)
                    .dfa_size_limit(REGEX_SIZE_LIMIT * 16)
                    .build()
                    .map_err(|e| format!("{}: {e}", field.name()))?;
                out.push(FieldSet { field, set, owners });
            }
            Ok(out)
        };
        let to_err = |m: String| {
            RulesError(vec![Diagnostic {
                file: "(rule set)".into(),
                line: 0,
                rule: None,
                message: format!("the combined patterns do not compile: {m}"),
            }])
        };
        let pos = build(pos_pats).map_err(to_err)?;
        let neg = build(neg_pats).map_err(to_err)?;
        let always = rules.iter().enumerate().filter(|(_, r)| r.cond.fields == 0).map(|(i, _)| i as u32).collect();
        let digest = hasher.finalize();
        let version = digest.iter().take(6).map(|b| format!("{b:02x}")).collect();
        let has_ratio = rules.iter().any(|r| r.window.as_ref().is_some_and(|w| w.ratio.is_some()));
        Ok(RuleSet { rules, pos, neg, always, version, files: sources.len(), has_ratio })
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// A short hash of the rule files' names and contents.
    pub fn version(&self) -> &str {
        &self.version
    }

    pub fn files(&self) -> usize {
        self.files
    }

    /// Whether any rule runs in shadow mode.
    pub fn has_shadow(&self) -> bool {
        self.rules.iter().any(|r| r.mode.is_shadow())
    }

    /// Whether any rule's window is a share of all requests (those windows see every request).
    pub fn has_ratio(&self) -> bool {
        self.has_ratio
    }

    /// What rule `r`'s detectors (`match.detect`) found in this request, if it has any.
    pub fn detection(&self, r: u32, ev: &roost_event::RequestEvent<'_>) -> Option<crate::view::Detection> {
        let want = self.rules.get(r as usize)?.cond.detect;
        if want == 0 {
            return None;
        }
        View::of(ev).detection(want)
    }

    /// When rule `r` matched this request on a header rather than on the request target (a
    /// `user_agent` rule, or an `anywhere` pattern found only in a header): which header, and
    /// its value. Reasons then quote the header instead of citing the path.
    pub fn matched_header<'e>(&self, r: u32, ev: &'e roost_event::RequestEvent<'_>) -> Option<(&'static str, &'e str)> {
        const HEADERS: u16 = (1 << Field::UserAgent as u16) | (1 << Field::Referer as u16) | (1 << Field::Host as u16);
        let anywhere = 1u16 << Field::Anywhere as u16;
        let fields = self.rules.get(r as usize)?.cond.fields;
        // most rules look at the request line only: nothing to find (this runs per fired rule)
        if fields & (HEADERS | anywhere) == 0 {
            return None;
        }
        let name_of = |f: Field| match f {
            Field::UserAgent => "User-Agent",
            Field::Referer => "Referer",
            _ => "Host",
        };
        let value_of = |f: Field| {
            match f {
                Field::UserAgent => ev.user_agent.as_deref(),
                Field::Referer => ev.referer.as_deref(),
                _ => ev.host.as_deref(),
            }
            .unwrap_or_default()
        };
        // a rule on one header and nothing else: it fired, so that header matched
        if fields.count_ones() == 1 && fields & HEADERS != 0 {
            let f =
                [Field::UserAgent, Field::Referer, Field::Host].into_iter().find(|f| fields & (1 << *f as u16) != 0)?;
            return Some((name_of(f), value_of(f)));
        }
        let mut view = View::of(ev);
        let hit = |fs: &FieldSet, view: &mut View<'_>| {
            fs.owners.iter().flatten().any(|&(o, _)| o == r) && {
                let hay = view.get(fs.field);
                fs.set.is_match(hay.as_bytes())
                    && fs.set.matches(hay.as_bytes()).iter().any(|pi| fs.owners[pi].iter().any(|&(o, _)| o == r))
            }
        };
        // the headers' sets are small; the request line's are looked at only when a header matched
        let header = self
            .pos
            .iter()
            .filter(|fs| matches!(fs.field, Field::UserAgent | Field::Referer | Field::Host))
            .find(|fs| hit(fs, &mut view))?;
        if fields & !(HEADERS | anywhere) != 0 || fields & anywhere != 0 {
            let line = self
                .pos
                .iter()
                .filter(|fs| !matches!(fs.field, Field::UserAgent | Field::Referer | Field::Host))
                .any(|fs| hit(fs, &mut view));
            if line {
                // the request line matched too: the usual reason, which cites it
                return None;
            }
        }
        Some((name_of(header.field), value_of(header.field)))
    }

    /// The rules one request matches (window conditions aside), by index.
    pub fn matching(&self, view: &mut View<'_>, facts: &RequestFacts<'_>, scratch: &mut Scratch, out: &mut Vec<u32>) {
        out.clear();
        if scratch.sat.len() != self.rules.len() {
            scratch.sat = vec![0; self.rules.len()];
        }
        if scratch.clean_for != self.version {
            scratch.clean.clear();
            scratch.clean_for.clone_from(&self.version);
        }
        // a path and query string seen before that no pattern of any of their fields matched:
        // one lookup instead of one per field
        let whole = view.target_key(&scratch.hasher, TAG_TARGET);
        let target_clean = scratch.clean.contains(whole);
        let mut target_matched = false;
        for fs in &self.pos {
            let of_target = fs.field.of_target();
            if target_clean && of_target {
                continue;
            }
            let h = view.memo_key(&scratch.hasher, fs.field as u8, fs.field);
            if scratch.clean.contains(h) {
                continue;
            }
            let hay = view.get(fs.field);
            if !fs.set.is_match(hay.as_bytes()) {
                scratch.clean.remember(h);
                continue;
            }
            target_matched |= of_target;
            for pi in fs.set.matches(hay.as_bytes()).iter() {
                for &(r, bit) in &fs.owners[pi] {
                    let r = r as usize;
                    if scratch.sat[r] == 0 {
                        scratch.touched.push(r as u32);
                    }
                    scratch.sat[r] |= bit;
                }
            }
        }
        if !target_clean && !target_matched {
            scratch.clean.remember(whole);
        }
        let Scratch { sat, touched, neg, clean, hasher, .. } = scratch;
        for v in neg.iter_mut() {
            *v = None;
        }
        neg.resize(self.neg.len(), None);
        let mut consider = |r: u32, view: &mut View<'_>| {
            let rule = &self.rules[r as usize];
            if !self.facts_hold(&rule.cond, facts) {
                return;
            }
            if rule.cond.detect != 0 && !view.detects(rule.cond.detect, &mut crate::view::Memo { clean, hasher }) {
                return;
            }
            if !self.excluded(r, rule, view, facts, neg, clean, hasher) {
                out.push(r);
            }
        };
        for &r in touched.iter() {
            if sat[r as usize] == self.rules[r as usize].cond.fields {
                consider(r, view);
            }
            sat[r as usize] = 0;
        }
        touched.clear();
        for &r in &self.always {
            consider(r, view);
        }
        out.sort_unstable();
    }

    fn facts_hold(&self, c: &Compiled, f: &RequestFacts<'_>) -> bool {
        (c.methods.is_empty() || c.methods.iter().any(|m| m.eq_ignore_ascii_case(f.method)))
            && (c.status.is_empty() || c.status.iter().any(|&(lo, hi)| (lo..=hi).contains(&f.status)))
            && c.min_request_time.is_none_or(|min| f.request_time.is_some_and(|rt| rt >= min))
            && c.path_class.is_none_or(|pc| pc == f.path_class)
    }

    /// Whether any `unless` condition of the rule holds.
    #[allow(clippy::too_many_arguments)]
    fn excluded(
        &self,
        r: u32,
        rule: &Rule,
        view: &mut View<'_>,
        f: &RequestFacts<'_>,
        neg: &mut [Option<Vec<usize>>],
        clean: &mut CleanMemo,
        hasher: &hashbrown::DefaultHashBuilder,
    ) -> bool {
        let u = &rule.unless;
        if u.is_empty() {
            return false;
        }
        if u.methods.iter().any(|m| m.eq_ignore_ascii_case(f.method))
            || u.status.iter().any(|&(lo, hi)| (lo..=hi).contains(&f.status))
            || u.min_request_time.is_some_and(|min| f.request_time.is_some_and(|rt| rt >= min))
            || u.path_class.is_some_and(|pc| pc == f.path_class)
        {
            return true;
        }
        for (i, fs) in self.neg.iter().enumerate() {
            if !fs.owners.iter().flatten().any(|&(o, _)| o == r) {
                continue;
            }
            let hits = neg[i].get_or_insert_with(|| {
                let h = view.memo_key(hasher, 0x80 | fs.field as u8, fs.field);
                if clean.contains(h) {
                    return Vec::new();
                }
                let hay = view.get(fs.field);
                let v: Vec<usize> = fs.set.matches(hay.as_bytes()).iter().collect();
                if v.is_empty() {
                    clean.remember(h);
                }
                v
            });
            if hits.iter().any(|&pi| fs.owners[pi].iter().any(|&(o, _)| o == r)) {
                return true;
            }
        }
        false
    }
}
