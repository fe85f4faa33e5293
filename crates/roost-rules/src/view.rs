//! What rules look at: a request's fields, raw and decoded.
//!
//! Attackers encode what they send (`..%2f`, `%252e%252e%252f`, `..\`, `%c0%af`) so that naive
//! matching misses it. Rules therefore see the path and query both as sent and decoded: percent
//! decoding applied until nothing changes (at most three rounds), backslashes and overlong UTF-8
//! slashes turned into `/`, and repeated slashes collapsed. `path` additionally resolves `.` and
//! `..` segments (what the server would serve), while `decoded_path` keeps them (so traversal
//! is visible). Each view is computed once per request and only if some rule looks at it.

use std::borrow::Cow;

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
        if plus_is_space { memchr::memchr2(b'%', b'+', b).is_none() } else { memchr::memchr(b'%', b).is_none() };
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
        let bytes: Vec<u8> = percent_decode(lowered.as_bytes()).collect();
        let next = String::from_utf8_lossy(&bytes).into_owned();
        if next == *cur {
            break;
        }
        cur = Cow::Owned(next);
    }
    cur
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
    if !s.contains('\\') && !s.contains("//") {
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
    let has_dots = s.split('/').any(|seg| seg == "." || seg == "..");
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
        }
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
                let q = self.query().to_owned();
                Cow::Owned(format!("{}?{q}", self.decoded_path.as_deref().expect("just set")))
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
