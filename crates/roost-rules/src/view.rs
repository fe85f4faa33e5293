//! What rules look at: a request's fields, raw and decoded.
//!
//! Attackers encode what they send (`..%2f`, `%252e%252e%252f`, `..\`, `%c0%af`) so that naive
//! matching misses it. Rules therefore see the path and query both as sent and decoded: percent
//! decoding applied until nothing changes (at most three rounds; IIS `%uXXXX` escapes too),
//! then JavaScript/JSON string escapes (`\u003c`, `\x3c`),
//! lookalike dots and slashes (fullwidth, division slash) folded to ASCII, backslashes and
//! overlong UTF-8 slashes turned into `/`, and repeated slashes collapsed. `path` additionally resolves `.` and
//! `..` segments (what the server would serve), while `decoded_path` keeps them (so traversal
//! is visible). Each view is computed once per request and only if some rule looks at it.

use std::borrow::Cow;
use std::hash::BuildHasher;

use percent_encoding::percent_decode;

/// The fields a rule can match on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Field {
    /// Decoded and normalised path (dot segments resolved).
    Path,
    /// Decoded path with dot segments kept.
    DecodedPath,
    /// The path exactly as sent.
    RawPath,
    /// The decoded query string (`+` as space).
    Query,
    /// The query string exactly as sent.
    RawQuery,
    /// Decoded path and query: `decoded_path?query`. Where payloads are looked for.
    Target,
    UserAgent,
    Referer,
    Host,
    /// Where a payload can hide: any of target, user agent, referer and host. Not a text of its
    /// own: its patterns are looked for in each of those.
    Anywhere,
}

impl Field {
    pub const ALL: [Field; 10] = [
        Field::Path,
        Field::DecodedPath,
        Field::RawPath,
        Field::Query,
        Field::RawQuery,
        Field::Target,
        Field::UserAgent,
        Field::Referer,
        Field::Host,
        Field::Anywhere,
    ];

    /// Whether the field is made of the path and query string alone.
    pub fn of_target(self) -> bool {
        matches!(
            self,
            Field::Path | Field::DecodedPath | Field::RawPath | Field::Query | Field::RawQuery | Field::Target
        )
    }

    pub fn name(self) -> &'static str {
        match self {
            Field::Path => "path",
            Field::DecodedPath => "decoded_path",
            Field::RawPath => "raw_path",
            Field::Query => "query",
            Field::RawQuery => "raw_query",
            Field::Target => "target",
            Field::UserAgent => "user_agent",
            Field::Referer => "referer",
            Field::Host => "host",
            Field::Anywhere => "anywhere",
        }
    }
}

/// Percent-decodes until stable (at most `rounds` times), so double and triple encoding is seen
/// through. Also maps overlong UTF-8 encodings of `/` and `.` (`%c0%af`, `%c0%ae`) that some
/// servers once accepted. `plus_is_space` for query strings.
pub fn decode(s: &str, plus_is_space: bool) -> Cow<'_, str> {
    let b = s.as_bytes();
    let nothing =
        if plus_is_space { memchr::memchr3(b'%', b'+', b'\\', b) } else { memchr::memchr2(b'%', b'\\', b) }.is_none();
    if nothing {
        return Cow::Borrowed(s);
    }
    let mut cur: Cow<'_, str> = Cow::Borrowed(s);
    if plus_is_space && cur.contains('+') {
        cur = Cow::Owned(cur.replace('+', " "));
    }
    for _ in 0..3 {
        if !cur.contains('%') {
            break;
        }
        let lowered = overlong(&cur);
        let lowered = iis_unicode(&lowered);
        let bytes: Vec<u8> = percent_decode(lowered.as_bytes()).collect();
        let next = String::from_utf8_lossy(&bytes).into_owned();
        if next == *cur {
            break;
        }
        cur = Cow::Owned(next);
    }
    if let Cow::Owned(unescaped) = script_escapes(&cur) {
        cur = Cow::Owned(unescaped);
    }
    match lookalikes(&cur) {
        Cow::Borrowed(_) => cur,
        Cow::Owned(folded) => Cow::Owned(folded),
    }
}

/// JavaScript and JSON string escapes (`\u003c`, `\x3c`) as the characters they stand for: a
/// parameter holding JSON or a script string carries markup and code this way, and the page or
/// interpreter that receives it decodes them. `\x` only for ASCII; other backslashes are kept.
fn script_escapes(s: &str) -> Cow<'_, str> {
    let b = s.as_bytes();
    let hex = |from: usize, n: usize| {
        b.get(from..from + n)
            .filter(|h| h.iter().all(u8::is_ascii_hexdigit))
            .and_then(|_| u32::from_str_radix(&s[from..from + n], 16).ok())
    };
    // the character an escape at `i` stands for, and its length
    let escape = |i: usize| -> Option<(char, usize)> {
        match b.get(i + 1).map(|c| c | 0x20) {
            Some(b'u') => hex(i + 2, 4).and_then(char::from_u32).map(|c| (c, 6)),
            Some(b'x') => hex(i + 2, 2).filter(|&v| v < 0x80).and_then(char::from_u32).map(|c| (c, 4)),
            _ => None,
        }
    };
    if !memchr::memchr_iter(b'\\', b).any(|i| escape(i).is_some()) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && let Some((c, len)) = escape(i)
        {
            out.push(c);
            i += len;
            continue;
        }
        let ch = s[i..].chars().next().expect("in bounds");
        out.push(ch);
        i += ch.len_utf8();
    }
    Cow::Owned(out)
}

/// IIS's `%uXXXX` escapes (`%u002e`, `%uff0e`) as the characters they stand for.
fn iis_unicode(s: &str) -> Cow<'_, str> {
    let b = s.as_bytes();
    let escape = |i: usize| {
        (b.len() >= i + 6
            && b[i] == b'%'
            && (b[i + 1] | 0x20) == b'u'
            && b[i + 2..i + 6].iter().all(u8::is_ascii_hexdigit))
        .then(|| u32::from_str_radix(&s[i + 2..i + 6], 16).ok().and_then(char::from_u32))
        .flatten()
    };
    if !memchr::memchr_iter(b'%', b).any(|i| escape(i).is_some()) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < b.len() {
        if let Some(c) = escape(i) {
            out.push(c);
            i += 6;
            continue;
        }
        let ch = s[i..].chars().next().expect("in bounds");
        out.push(ch);
        i += ch.len_utf8();
    }
    Cow::Owned(out)
}

/// Characters that servers and frameworks have been known to fold into `.`, `/` and `\`
/// (fullwidth forms, the division and fraction slashes, set minus) as the ASCII they pass for.
fn lookalikes(s: &str) -> Cow<'_, str> {
    if s.is_ascii() || !s.chars().any(|c| fold_lookalike(c).is_some()) {
        return Cow::Borrowed(s);
    }
    Cow::Owned(s.chars().map(|c| fold_lookalike(c).unwrap_or(c)).collect())
}

/// The ASCII `.`, `/` or `\\` a lookalike character passes for, if it is one.
pub(crate) fn fold_lookalike(c: char) -> Option<char> {
    match c {
        '\u{FF0E}' | '\u{2024}' => Some('.'),
        '\u{FF0F}' | '\u{2215}' | '\u{2044}' => Some('/'),
        '\u{FF3C}' | '\u{2216}' | '\u{29F5}' => Some('\\'),
        _ => None,
    }
}

/// Overlong UTF-8 encodings of `/`, `.` and `\\` (`%c0%af`, `%c0%ae`, `%c1%9c`, `%e0%80%af`) as
/// the characters they stand for; the rest of the text untouched.
fn overlong(s: &str) -> Cow<'_, str> {
    const SEQS: [(&str, char); 4] = [("%e0%80%af", '/'), ("%c0%af", '/'), ("%c0%ae", '.'), ("%c1%9c", '\\')];
    let b = s.as_bytes();
    let at = |i: usize, pat: &str| b.len() >= i + pat.len() && b[i..i + pat.len()].eq_ignore_ascii_case(pat.as_bytes());
    if !(0..b.len()).any(|i| b[i] == b'%' && SEQS.iter().any(|(p, _)| at(i, p))) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    'outer: while i < b.len() {
        if b[i] == b'%' {
            for (p, c) in SEQS {
                if at(i, p) {
                    out.push(c);
                    i += p.len();
                    continue 'outer;
                }
            }
        }
        let ch = s[i..].chars().next().expect("in bounds");
        out.push(ch);
        i += ch.len_utf8();
    }
    Cow::Owned(out)
}

/// Backslashes as slashes, repeated slashes collapsed.
pub fn slashes(s: &str) -> Cow<'_, str> {
    let b = s.as_bytes();
    // paths are short: a plain loop beats a vectorised search's set-up
    if !b.contains(&b'\\') && !b.windows(2).any(|w| w == b"//") {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len());
    let mut prev_slash = false;
    for c in s.chars() {
        let c = if c == '\\' { '/' } else { c };
        if c == '/' && prev_slash {
            continue;
        }
        prev_slash = c == '/';
        out.push(c);
    }
    Cow::Owned(out)
}

/// RFC 3986 `remove_dot_segments`, never climbing above the root.
pub fn resolve_dots(s: &str) -> Cow<'_, str> {
    // a dot segment is a `.` or `..` between slashes (or the ends)
    let b = s.as_bytes();
    let ends = |i: usize| i == b.len() || b[i] == b'/';
    let has_dots = (0..b.len())
        .any(|i| b[i] == b'.' && (i == 0 || b[i - 1] == b'/') && (ends(i + 1) || (b[i + 1] == b'.' && ends(i + 2))));
    if !has_dots {
        return Cow::Borrowed(s);
    }
    let mut out: Vec<&str> = Vec::new();
    let segs: Vec<&str> = s.split('/').collect();
    let n = segs.len();
    for (i, seg) in segs.iter().enumerate() {
        match *seg {
            "." => {
                if i == n - 1 {
                    out.push("");
                }
            }
            ".." => {
                if out.len() > 1 {
                    out.pop();
                }
                if i == n - 1 {
                    out.push("");
                }
            }
            other => out.push(other),
        }
    }
    let joined = out.join("/");
    Cow::Owned(if joined.starts_with('/') || !s.starts_with('/') { joined } else { format!("/{joined}") })
}

/// Detector bits (`match.detect`): libinjection's SQL tokeniser and its HTML/XSS one, the
/// path-shape one of [`crate::climb`], the command-line one of [`crate::shell`] and the PHP-call
/// one of [`crate::php`].
pub const DETECT_SQLI: u8 = 1;
pub const DETECT_XSS: u8 = 2;
pub const DETECT_TRAVERSAL: u8 = 4;
pub const DETECT_CMD: u8 = 8;
pub const DETECT_PHP: u8 = 16;
const DETECT_ALL: u8 = DETECT_SQLI | DETECT_XSS | DETECT_TRAVERSAL | DETECT_CMD | DETECT_PHP;

/// The bit of a detector named in a rule file.
pub fn detector(name: &str) -> Option<u8> {
    match name {
        "sqli" => Some(DETECT_SQLI),
        "xss" => Some(DETECT_XSS),
        "traversal" => Some(DETECT_TRAVERSAL),
        "cmd" => Some(DETECT_CMD),
        "php" => Some(DETECT_PHP),
        _ => None,
    }
}

/// What a detector found, for the reason: which detector, where, and the input it judged.
#[derive(Clone, Debug, PartialEq)]
pub struct Detection {
    pub detector: &'static str,
    /// `parameter "q"`, `parameter name`, `path segment`, `User-Agent`, `Referer`.
    pub place: String,
    /// The decoded input, clipped to 80 characters.
    pub fragment: String,
    /// libinjection's SQL fingerprint (`s&sos`), for SQL; what the path does, for traversal;
    /// the command and how it was found, for commands.
    pub fingerprint: Option<String>,
}

/// The wanted detectors worth running on an input: those whose payloads need a byte (or, for
/// SQL, a keyword) the input has. Most parameters, path segments and user agents stop here.
/// Per detector, so a detector's verdict never depends on which others were asked for.
fn worth_a_look(s: &str, want: u8) -> u8 {
    let b = s.as_bytes();
    if b.len() < 2 {
        return 0;
    }
    let sql = want & DETECT_SQLI != 0
        && (b.iter().any(|c| matches!(c, b'\'' | b'"' | b'`' | b';' | b'(' | b'#' | b'='))
            || memchr::memmem::find(b, b"--").is_some()
            || memchr::memmem::find(b, b"/*").is_some()
            || (b.contains(&b' ') && sql_word(b)));
    let html = want & DETECT_XSS != 0 && b.iter().any(|c| matches!(c, b'<' | b'>' | b'"' | b'\'' | b'`' | b'='));
    let cmd = want & DETECT_CMD != 0
        && b.iter().any(|c| {
            matches!(
                c,
                b';' | b'|' | b'&' | b'\n' | b'\r' | b'`' | b'$' | b'(' | b'{' | b'/' | b'-' | b'\\' | b'=' | b'%'
            )
        });
    let php = want & DETECT_PHP != 0 && b.contains(&b'(');
    let bit = |on: bool, d: u8| if on { d } else { 0 };
    bit(sql, DETECT_SQLI)
        | bit(html, DETECT_XSS)
        | bit(cmd, DETECT_CMD)
        | bit(php, DETECT_PHP)
        | (want & DETECT_TRAVERSAL)
}

/// Whether a text has a word SQL injections without punctuation are made of (`1 union select 2`).
fn sql_word(b: &[u8]) -> bool {
    const WORDS: [&[u8]; 9] = [b"union", b"select", b"order", b"group", b"having", b"and", b"or", b"xor", b"waitfor"];
    b.split(|c| !c.is_ascii_alphabetic()).any(|w| WORDS.iter().any(|k| w.eq_ignore_ascii_case(k)))
}

/// Inputs the detectors found nothing in, remembered across requests (user agents and popular
/// parameters repeat): the rule set's memo of clean texts, under keys of their own.
pub struct Memo<'m> {
    pub clean: &'m mut crate::compile::CleanMemo,
    pub hasher: &'m hashbrown::DefaultHashBuilder,
}

/// Runs the wanted detectors over one decoded input: the bits that fired, and a description of
/// the first hit if asked for.
/// The traversal detector judges the raw text (`raw`), decoding it its own lenient way.
fn judge(
    input: &str,
    (raw, at): (&str, At),
    want: u8,
    place: &dyn Fn() -> String,
    first: &mut Option<Detection>,
    describe: bool,
) -> u8 {
    let mut note = |detector: &'static str, fingerprint: Option<String>| {
        if describe && first.is_none() {
            *first =
                Some(Detection { detector, place: place(), fragment: input.chars().take(80).collect(), fingerprint });
        }
    };
    let mut found = 0;
    if want & DETECT_SQLI != 0 {
        let r = libinjectionrs::detect_sqli(input.as_bytes());
        if r.is_injection() {
            found |= DETECT_SQLI;
            note("sqli", r.fingerprint.map(|f| f.as_str().to_owned()));
        }
    }
    if want & DETECT_XSS != 0 && libinjectionrs::detect_xss(input.as_bytes()).is_injection() {
        found |= DETECT_XSS;
        note("xss", None);
    }
    if want & DETECT_CMD != 0
        && let Some(f) = crate::shell::judge(input, at == At::Header)
    {
        found |= DETECT_CMD;
        note("cmd", Some(format!("{}: {}", f.what, f.word)));
    }
    // PHP in parameters and path segments (a User-Agent's `(compatible; …)` is no call)
    if want & DETECT_PHP != 0
        && matches!(at, At::Query | At::Segment)
        && let Some(f) = crate::php::judge(input)
    {
        found |= DETECT_PHP;
        note("php", Some(format!("{}: {}", f.what, f.function)));
    }
    if want & DETECT_TRAVERSAL != 0
        && let Some(how) = crate::climb::judge(raw, at == At::Path)
    {
        found |= DETECT_TRAVERSAL;
        note("traversal", Some(how.describe().to_owned()));
    }
    found
}

/// Where a detector's input comes from: it decides how the raw text was decoded (`+` is a space
/// only in a query), whether the traversal detector sees a whole path, and whether `;` separates
/// commands (not in headers, where it separates a User-Agent's comments).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum At {
    Query,
    Segment,
    Path,
    Header,
}

/// A memo key from a text's (randomly keyed) hash and a tag saying what the key is for.
fn mix(h: u64, tag: u8) -> u64 {
    let x = (h ^ (tag as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x ^ (x >> 31)
}

/// Memo tags of the detectors' keys: the whole path and query, a header (or'ed with the
/// detector bits asked for). Rule fields use their `Field` number, `unless` fields 0x80 or'ed.
const TAG_TARGET_DETECT: u8 = 0x7f;
const TAG_HEADER_DETECT: u8 = 0x40;

/// The inputs of a request the detectors look at: its path and query, or its headers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Part {
    Target,
    Headers,
}

/// The views of one request, each computed on first use.
pub struct View<'a> {
    pub raw_path: &'a str,
    pub raw_query: &'a str,
    pub user_agent: &'a str,
    pub referer: &'a str,
    pub host: &'a str,
    decoded_path: Option<Cow<'a, str>>,
    path: Option<Cow<'a, str>>,
    query: Option<Cow<'a, str>>,
    target: Option<Cow<'a, str>>,
    headers: [Option<Cow<'a, str>>; 3],
    /// Detector bits run so far, and those that fired.
    detect_ran: u8,
    detect_found: u8,
    /// Hashes of the raw path, query, user agent, referer and host (bit set once computed).
    hashes: [u64; 5],
    hashed: u8,
}

impl<'a> View<'a> {
    /// The views of one request event.
    pub fn of(ev: &'a roost_event::RequestEvent<'_>) -> View<'a> {
        View::new(&ev.path, ev.query.as_deref(), ev.user_agent.as_deref(), ev.referer.as_deref(), ev.host.as_deref())
    }

    pub fn new(
        path: &'a str,
        query: Option<&'a str>,
        user_agent: Option<&'a str>,
        referer: Option<&'a str>,
        host: Option<&'a str>,
    ) -> View<'a> {
        View {
            raw_path: path,
            raw_query: query.unwrap_or(""),
            user_agent: user_agent.unwrap_or(""),
            referer: referer.unwrap_or(""),
            host: host.unwrap_or(""),
            decoded_path: None,
            path: None,
            query: None,
            target: None,
            headers: [None, None, None],
            detect_ran: 0,
            detect_found: 0,
            hashes: [0; 5],
            hashed: 0,
        }
    }

    /// The hash of one raw text (0 path, 1 query, 2 user agent, 3 referer, 4 host), computed
    /// once per request.
    fn raw_hash(&mut self, hasher: &hashbrown::DefaultHashBuilder, i: usize) -> u64 {
        if self.hashed & (1 << i) == 0 {
            let raw = [self.raw_path, self.raw_query, self.user_agent, self.referer, self.host][i];
            self.hashes[i] = hasher.hash_one(raw);
            self.hashed |= 1 << i;
        }
        self.hashes[i]
    }

    /// The memo key of a field's text under `tag`. Every view is a function of the raw text it
    /// comes from, so the key is derived from that text's hash: one hash per raw text and
    /// request however many views and memos ask, and a view known clean is never computed.
    pub fn memo_key(&mut self, hasher: &hashbrown::DefaultHashBuilder, tag: u8, f: Field) -> u64 {
        let h = match f {
            Field::Path | Field::DecodedPath | Field::RawPath => self.raw_hash(hasher, 0),
            Field::Query | Field::RawQuery => self.raw_hash(hasher, 1),
            Field::Target | Field::Anywhere => self.target_hash(hasher),
            Field::UserAgent => self.raw_hash(hasher, 2),
            Field::Referer => self.raw_hash(hasher, 3),
            Field::Host => self.raw_hash(hasher, 4),
        };
        mix(h, tag)
    }

    /// The memo key of the path and query string together under `tag`.
    pub fn target_key(&mut self, hasher: &hashbrown::DefaultHashBuilder, tag: u8) -> u64 {
        let h = self.target_hash(hasher);
        mix(h, tag)
    }

    fn target_hash(&mut self, hasher: &hashbrown::DefaultHashBuilder) -> u64 {
        self.raw_hash(hasher, 0) ^ self.raw_hash(hasher, 1).rotate_left(29)
    }

    /// Whether any of the `want` detectors finds an injection in a decoded query parameter
    /// (name or value), a path segment, the User-Agent or the Referer. Run once per request.
    pub fn detects(&mut self, want: u8, memo: &mut Memo<'_>) -> bool {
        // every detector at once: one pass over the inputs however many rules ask
        let todo = if self.detect_ran & want == want { 0 } else { DETECT_ALL & !self.detect_ran };
        if todo != 0 {
            // a path and query string seen before and clean for every detector: one lookup
            // instead of one per parameter and segment (popular pages repeat endlessly)
            let whole = (todo == DETECT_ALL).then(|| self.target_key(memo.hasher, TAG_TARGET_DETECT));
            let known_clean = whole.is_some_and(|k| memo.clean.contains(k));
            if !known_clean {
                let found = self.scan(todo, &mut None, Some(memo), Part::Target);
                if found == 0
                    && let Some(k) = whole
                {
                    memo.clean.remember(k);
                }
                self.detect_found |= found;
            }
            self.detect_found |= self.scan(todo, &mut None, Some(memo), Part::Headers);
            self.detect_ran |= todo;
        }
        self.detect_found & want != 0
    }

    /// The first place one of the `want` detectors fires, for the reason.
    pub fn detection(&mut self, want: u8) -> Option<Detection> {
        let mut first = None;
        self.scan(want, &mut first, None, Part::Target);
        if first.is_none() {
            self.scan(want, &mut first, None, Part::Headers);
        }
        first
    }

    /// Runs the detectors over every input; with a memo (deciding, not describing) inputs
    /// known clean are skipped and new clean ones remembered.
    fn scan(&mut self, want: u8, first: &mut Option<Detection>, mut memo: Option<&mut Memo<'_>>, part: Part) -> u8 {
        let describe = memo.is_none();
        let not_paths = want & !DETECT_TRAVERSAL;
        // the headers' keys from the request's hashes of them (rule fields hash them too)
        let header_keys = match (&memo, part) {
            (Some(m), Part::Headers) => [Field::UserAgent, Field::Referer]
                .map(|f| Some(self.memo_key(m.hasher, TAG_HEADER_DETECT | not_paths, f))),
            _ => [None, None],
        };
        // `input` decoded, `raw` as sent (the traversal detector decodes its own way; the memo
        // is keyed by it, which determines the decoded text)
        let mut look = |input: &str,
                        raw: (&str, At),
                        want: u8,
                        key: Option<u64>,
                        place: &dyn Fn() -> String,
                        first: &mut Option<Detection>|
         -> u8 {
            if input.len() < 2 || want == 0 {
                return 0;
            }
            let Some(m) = memo.as_deref_mut() else {
                let want = worth_a_look(input, want);
                return if want != 0 { judge(input, raw, want, place, first, true) } else { 0 };
            };
            // a memo lookup first: user agents repeat, and hashing is cheaper than a byte scan
            // keyed by the raw text and how it was decoded (`+` is a space only in a query)
            let key = key.unwrap_or_else(|| m.hasher.hash_one((0x80u8 | want, raw.0, raw.1 as u8)));
            if m.clean.contains(key) {
                return 0;
            }
            let worth = worth_a_look(input, want);
            let found = if worth != 0 { judge(input, raw, worth, place, first, false) } else { 0 };
            if found == 0 {
                m.clean.remember(key);
            }
            found
        };
        // the usual request: nothing but letters, digits and separators, nothing to look at
        let plain = |s: &str| {
            s.bytes().all(|c| {
                c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.' | b'~' | b'/' | b'&' | b'=' | b',')
            }) && (want & DETECT_TRAVERSAL == 0 || !(s.contains("..") || s.contains("0x") || s.contains("0X")))
        };
        let mut found = 0;
        if part == Part::Headers {
            for (i, name) in [(0usize, "the User-Agent"), (1, "the Referer")] {
                let raw = [self.user_agent, self.referer][i];
                let h = self.header(i);
                found |= look(h, (raw, At::Header), not_paths, header_keys[i], &|| name.to_owned(), first);
            }
            return found;
        }
        if !plain(self.raw_query) {
            for part in self.raw_query.split(['&', ';']) {
                let (raw_name, raw_value) = part.split_once('=').unwrap_or((part, ""));
                let name = decode(raw_name, true);
                let value = decode(raw_value, true);
                let place = || format!("parameter {:?}", name.chars().take(40).collect::<String>());
                found |= look(&value, (raw_value, At::Query), want, None, &place, first);
                found |= look(&name, (raw_name, At::Query), not_paths, None, &|| "a parameter name".to_owned(), first);
                if found == want && !describe {
                    return found;
                }
            }
        }
        if !plain(self.raw_path) {
            found |= look(
                self.raw_path,
                (self.raw_path, At::Path),
                want & DETECT_TRAVERSAL,
                None,
                &|| "the path".to_owned(),
                first,
            );
            for seg in self.raw_path.split('/') {
                found |= look(
                    &decode(seg, false),
                    (seg, At::Segment),
                    not_paths,
                    None,
                    &|| "a path segment".to_owned(),
                    first,
                );
            }
        }
        found
    }

    pub fn decoded_path(&mut self) -> &str {
        if self.decoded_path.is_none() {
            let d = decode(self.raw_path, false);
            let s = match slashes(&d) {
                Cow::Borrowed(_) => d,
                Cow::Owned(o) => Cow::Owned(o),
            };
            self.decoded_path = Some(s);
        }
        self.decoded_path.as_deref().expect("just set")
    }

    pub fn path(&mut self) -> &str {
        if self.path.is_none() {
            self.decoded_path();
            let p = match self.decoded_path.as_ref().expect("just set") {
                // the usual case: nothing to decode and no dot segments; no copy at all
                Cow::Borrowed(d) => resolve_dots(d),
                Cow::Owned(d) => Cow::Owned(resolve_dots(d).into_owned()),
            };
            self.path = Some(p);
        }
        self.path.as_deref().expect("just set")
    }

    pub fn query(&mut self) -> &str {
        if self.query.is_none() {
            self.query = Some(decode(self.raw_query, true));
        }
        self.query.as_deref().expect("just set")
    }

    pub fn target(&mut self) -> &str {
        if self.target.is_none() {
            self.decoded_path();
            let t = if self.raw_query.is_empty() {
                match self.decoded_path.as_ref().expect("just set") {
                    Cow::Borrowed(d) => Cow::Borrowed(*d),
                    Cow::Owned(d) => Cow::Owned(d.clone()),
                }
            } else {
                self.query();
                let (d, q) =
                    (self.decoded_path.as_deref().expect("just set"), self.query.as_deref().expect("just set"));
                let mut t = String::with_capacity(d.len() + 1 + q.len());
                t.push_str(d);
                t.push('?');
                t.push_str(q);
                Cow::Owned(t)
            };
            self.target = Some(t);
        }
        self.target.as_deref().expect("just set")
    }

    /// User agent, referer or host, percent-decoded (payloads are sometimes encoded there too).
    fn header(&mut self, i: usize) -> &str {
        if self.headers[i].is_none() {
            let raw = [self.user_agent, self.referer, self.host][i];
            self.headers[i] = Some(decode(raw, false));
        }
        self.headers[i].as_deref().expect("just set")
    }

    pub fn get(&mut self, f: Field) -> &str {
        match f {
            Field::Path => self.path(),
            Field::DecodedPath => self.decoded_path(),
            Field::RawPath => self.raw_path,
            Field::Query => self.query(),
            Field::RawQuery => self.raw_query,
            Field::Target => self.target(),
            Field::UserAgent => self.header(0),
            Field::Referer => self.header(1),
            Field::Host => self.header(2),
            Field::Anywhere => unreachable!("anywhere patterns are compiled into the other fields"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decoding_sees_through_encodings() {
        assert_eq!(decode("/a/b", false), "/a/b");
        assert!(matches!(decode("/a/b", false), Cow::Borrowed(_)));
        assert_eq!(decode("/..%2f..%2fetc/passwd", false), "/../../etc/passwd");
        assert_eq!(decode("/%252e%252e%252fetc", false), "/../etc");
        assert_eq!(decode("/%25252e%25252e", false), "/..");
        assert_eq!(decode("/%c0%ae%c0%ae%c0%afetc", false), "/../etc");
        assert_eq!(
            decode("/%C0%AE%C0%AE%C0%AFEtc/PassWD", false),
            "/../EtcPassWD".replace("EtcPassWD", "Etc/PassWD"),
            "case kept"
        );
        assert_eq!(decode("q=a+b%20c", true), "q=a b c");
        assert_eq!(decode("a+b", false), "a+b");
        assert_eq!(decode("%ff%fe", false), "\u{FFFD}\u{FFFD}");
        // IIS %u escapes and lookalike dots and slashes
        assert_eq!(decode("/%uff0e%uff0e%u2215etc%u2215passwd", false), "/../etc/passwd");
        assert_eq!(decode("/%u002e%u002e/x", false), "/../x");
        assert_eq!(decode("/a%25u002e%uzzzz", false), "/a.%uzzzz");
        assert_eq!(decode("/caf%C3%A9", false), "/café", "other Unicode is left alone");
        // script and JSON escapes, after percent decoding; other backslashes stay
        assert_eq!(decode("%5Cu003cscript%5Cu003e", true), "<script>");
        assert_eq!(decode(r"\x3cimg\X3E \u00e9", false), "<img> é");
        assert_eq!(decode(r"C:\xampp\x9f\u12", false), r"C:\xampp\x9f\u12");
        assert!(matches!(decode(r"C:\Windows", false), Cow::Borrowed(_)));
    }

    fn memo_detects(v: &mut View<'_>, want: u8) -> bool {
        let (mut clean, hasher) = (crate::compile::CleanMemo::default(), hashbrown::DefaultHashBuilder::default());
        v.detects(want, &mut Memo { clean: &mut clean, hasher: &hasher })
    }

    #[test]
    fn detectors_say_what_they_found_and_where() {
        let mut v = View::new("/search", Some("page=2&q=%27%20or%20%271%27%3D%271"), Some("Mozilla/5.0"), None, None);
        assert!(memo_detects(&mut v, DETECT_SQLI));
        assert!(!memo_detects(&mut v, DETECT_XSS));
        let d = v.detection(DETECT_SQLI).expect("found");
        assert_eq!((d.detector, d.place.as_str(), d.fragment.as_str()), ("sqli", "parameter \"q\"", "' or '1'='1"));
        assert!(d.fingerprint.is_some());
        let mut v = View::new("/", None, Some("\" onmouseover=\"alert(1)"), None, None);
        assert!(memo_detects(&mut v, DETECT_XSS));
        assert_eq!(v.detection(DETECT_XSS).expect("found").place, "the User-Agent");
        let mut v =
            View::new("/a/b-c.html", Some("q=rock+%27n%27+roll&x=1"), Some("Mozilla/5.0 (X11; Linux)"), None, None);
        assert!(!memo_detects(&mut v, DETECT_SQLI | DETECT_XSS));
        assert_eq!(v.detection(DETECT_SQLI | DETECT_XSS), None);
        // a clean text is remembered, and still clean the second time
        let (mut clean, hasher) = (crate::compile::CleanMemo::default(), hashbrown::DefaultHashBuilder::default());
        for _ in 0..2 {
            let mut v = View::new("/", Some("q=it%27s+fine"), Some("curl/8 (x; y)"), None, None);
            assert!(!v.detects(DETECT_SQLI, &mut Memo { clean: &mut clean, hasher: &hasher }));
        }
        assert!(!clean.is_empty());
    }

    /// A memo key names a field's text: the same text in another field, another request part
    /// or under another tag is a different key, and the whole-target key covers both parts.
    #[test]
    fn memo_keys_tell_fields_and_parts_apart() {
        let hasher = hashbrown::DefaultHashBuilder::default();
        let mut keys = std::collections::HashSet::new();
        for (path, query, ua) in [("/a", "q=1", "x"), ("/a", "q=2", "x"), ("/b", "q=1", "x"), ("/a", "q=1", "y")] {
            let mut v = View::new(path, Some(query), Some(ua), Some("/a"), Some("q=1"));
            for f in Field::ALL.into_iter().filter(|&f| f != Field::Anywhere) {
                keys.insert((path, query, ua, v.memo_key(&hasher, f as u8, f)));
                keys.insert((path, query, ua, v.memo_key(&hasher, 0x80 | f as u8, f)));
            }
            keys.insert((path, query, ua, v.target_key(&hasher, 0x7e)));
            keys.insert((path, query, ua, v.target_key(&hasher, TAG_TARGET_DETECT)));
        }
        let distinct: std::collections::HashSet<u64> = keys.iter().map(|k| k.3).collect();
        // per request: 9 fields x 2 tags + 2 whole-target keys; fields from the same raw text
        // share keys only across requests that share that text
        let mut expected = std::collections::HashSet::new();
        for (path, query, ua) in [("/a", "q=1", "x"), ("/a", "q=2", "x"), ("/b", "q=1", "x"), ("/a", "q=1", "y")] {
            for f in Field::ALL.into_iter().filter(|&f| f != Field::Anywhere) {
                let src = match f {
                    Field::Path | Field::DecodedPath | Field::RawPath => path.to_owned(),
                    Field::Query | Field::RawQuery => query.to_owned(),
                    Field::Target => format!("{path}?{query}"),
                    Field::UserAgent => ua.to_owned(),
                    _ => String::new(),
                };
                expected.insert((f as u8, src.clone()));
                expected.insert((0x80 | f as u8, src));
            }
            expected.insert((0x7e, format!("{path}?{query}")));
            expected.insert((TAG_TARGET_DETECT, format!("{path}?{query}")));
        }
        assert_eq!(distinct.len(), expected.len());
    }

    #[test]
    fn any_bytes_go_through_views_and_detectors() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let alphabet = b"%'\"<>()=;&/.\\-#*+ aZ09uU\x00\xc0\xaf";
        for n in 0..3000usize {
            let mut s = Vec::new();
            for _ in 0..(n % 64) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                s.push(alphabet[(x % alphabet.len() as u64) as usize]);
            }
            let t = String::from_utf8_lossy(&s);
            let half = t.char_indices().nth(t.chars().count() / 2).map_or(t.len(), |(i, _)| i);
            let (p, q) = t.split_at(half);
            let mut v = View::new(p, Some(q), Some(&t), Some(q), None);
            for f in Field::ALL.into_iter().filter(|f| *f != Field::Anywhere) {
                let _ = v.get(f);
            }
            for want in [DETECT_SQLI | DETECT_XSS, DETECT_TRAVERSAL, DETECT_CMD, DETECT_PHP, DETECT_ALL] {
                let mut v = View::new(p, Some(q), Some(&t), Some(q), None);
                let found = memo_detects(&mut v, want);
                assert_eq!(found, v.detection(want).is_some(), "{t:?} {want}");
            }
        }
    }

    #[test]
    fn normalising() {
        assert_eq!(slashes("\\..\\..\\windows\\win.ini"), "/../../windows/win.ini");
        assert_eq!(slashes("//a///b"), "/a/b");
        assert_eq!(resolve_dots("/a/./b/../c"), "/a/c");
        assert_eq!(resolve_dots("/../../etc/passwd"), "/etc/passwd");
        assert_eq!(resolve_dots("/a/b/.."), "/a/");
        assert_eq!(resolve_dots("/a/.env"), "/a/.env");
        assert_eq!(resolve_dots("/wp-admin/../wp-login.php"), "/wp-login.php");
        assert_eq!(resolve_dots("./a"), "a");
        assert_eq!(resolve_dots(".."), "");
    }

    /// The shortcuts that leave a path alone agree with the definitions on every text.
    #[test]
    fn normalising_shortcuts_agree_with_the_definitions() {
        let texts = crate::random_texts(&["/", ".", "..", "a", "\\", "//", ".a", "a."], 8, 20_000);
        for t in &texts {
            let dots = t.split('/').any(|seg| seg == "." || seg == "..");
            assert_eq!(matches!(resolve_dots(t), Cow::Owned(_)), dots, "{t:?}");
            let twice = t.contains('\\') || t.contains("//");
            assert_eq!(matches!(slashes(t), Cow::Owned(_)), twice, "{t:?}");
        }
    }

    #[test]
    fn views() {
        let mut v = View::new("/x/..%2f..%2fetc/passwd", Some("q=%27+or+1%3D1"), Some("sqlmap"), None, None);
        assert_eq!(v.get(Field::RawPath), "/x/..%2f..%2fetc/passwd");
        assert_eq!(v.get(Field::DecodedPath), "/x/../../etc/passwd");
        assert_eq!(v.get(Field::Path), "/etc/passwd");
        assert_eq!(v.get(Field::Query), "q=' or 1=1");
        assert_eq!(v.get(Field::Target), "/x/../../etc/passwd?q=' or 1=1");
        assert_eq!(v.get(Field::Referer), "");
    }
}
