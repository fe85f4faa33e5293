//! Pieces shared by the parsers: quoted fields, log escapes, request lines, numbers.

use std::borrow::Cow;

/// Finds the closing `"` of a field whose opening quote was just before `s`, skipping quotes
/// escaped with a backslash (Apache `\"`, nginx `escape=json`). nginx's default escaping writes
/// `"` as `\x22`, which needs no special case. Returns the byte index of the closing quote.
#[inline]
pub fn closing_quote(s: &[u8]) -> Option<usize> {
    let mut from = 0;
    loop {
        let i = from + memchr::memchr(b'"', &s[from..])?;
        let mut backslashes = 0;
        while backslashes < i && s[i - 1 - backslashes] == b'\\' {
            backslashes += 1;
        }
        if backslashes % 2 == 0 {
            return Some(i);
        }
        from = i + 1;
    }
}

/// How a logger escaped a value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Escape {
    /// nginx's default (`\xHH`) and Apache's (`\"`, `\\`, `\n`, `\xHH`).
    Log,
    /// JSON string escapes (nginx `escape=json`).
    Json,
    /// Nothing escaped (nginx `escape=none`).
    None,
}

/// Undoes a logger's escaping. Borrows when there is nothing to undo (the usual case).
/// Bytes that do not form UTF-8 after unescaping are replaced, never dropped silently.
pub fn unescape(s: &str, how: Escape) -> Cow<'_, str> {
    if how == Escape::None || !s.as_bytes().contains(&b'\\') {
        return Cow::Borrowed(s);
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c != b'\\' || i + 1 == b.len() {
            out.push(c);
            i += 1;
            continue;
        }
        let n = b[i + 1];
        match n {
            b'x' | b'X' if how == Escape::Log => match hex2(b.get(i + 2..i + 4)) {
                Some(v) => {
                    out.push(v);
                    i += 4;
                }
                None => {
                    out.push(c);
                    i += 1;
                }
            },
            b'u' if how == Escape::Json => match json_u(b, i) {
                Some((ch, used)) => {
                    let mut buf = [0; 4];
                    out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
                    i += used;
                }
                None => {
                    out.push(c);
                    i += 1;
                }
            },
            b'"' | b'\\' | b'/' => {
                out.push(n);
                i += 2;
            }
            b'n' => {
                out.push(b'\n');
                i += 2;
            }
            b't' => {
                out.push(b'\t');
                i += 2;
            }
            b'r' => {
                out.push(b'\r');
                i += 2;
            }
            b'b' if how == Escape::Json => {
                out.push(8);
                i += 2;
            }
            b'f' if how == Escape::Json => {
                out.push(12);
                i += 2;
            }
            _ => {
                out.push(c);
                i += 1;
            }
        }
    }
    match String::from_utf8(out) {
        Ok(s) => Cow::Owned(s),
        Err(e) => Cow::Owned(String::from_utf8_lossy(e.as_bytes()).into_owned()),
    }
}

fn hex2(b: Option<&[u8]>) -> Option<u8> {
    let b = b?;
    let h = |c: u8| (c as char).to_digit(16);
    Some((h(b[0])? * 16 + h(b[1])?) as u8)
}

/// `\uXXXX`, with surrogate pairs. Returns the char and the bytes consumed.
fn json_u(b: &[u8], i: usize) -> Option<(char, usize)> {
    let hex4 = |at: usize| -> Option<u32> {
        let s = std::str::from_utf8(b.get(at..at + 4)?).ok()?;
        u32::from_str_radix(s, 16).ok()
    };
    let hi = hex4(i + 2)?;
    if (0xD800..0xDC00).contains(&hi) {
        if b.get(i + 6..i + 8) == Some(b"\\u") {
            let lo = hex4(i + 8)?;
            if (0xDC00..0xE000).contains(&lo) {
                let c = 0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00);
                return Some((char::from_u32(c)?, 12));
            }
        }
        return Some((char::REPLACEMENT_CHARACTER, 6));
    }
    Some((char::from_u32(hi).unwrap_or(char::REPLACEMENT_CHARACTER), 6))
}

/// `-` is how access logs write "no value".
#[inline]
pub fn dash_none(s: Cow<'_, str>) -> Option<Cow<'_, str>> {
    if s.is_empty() || s == "-" { None } else { Some(s) }
}

/// The parts of an HTTP request line.
pub struct RequestLine<'a> {
    pub method: Cow<'a, str>,
    pub path: Cow<'a, str>,
    pub query: Option<Cow<'a, str>>,
    pub protocol: Cow<'a, str>,
}

/// Splits `GET /a?b HTTP/1.1`. A line that is not a request (binary junk, `-`, a TLS hello sent
/// to a plain-HTTP port) is kept whole in `path` with an empty method, because that is evidence
/// too: it still has a status and a client.
pub fn split_request(line: Cow<'_, str>) -> RequestLine<'_> {
    fn method_ok(m: &str) -> bool {
        !m.is_empty() && m.len() <= 24 && m.bytes().all(|c| c.is_ascii_alphabetic() || c == b'-' || c == b'_')
    }
    let s: &str = &line;
    let (method_end, rest_start) = match s.find(' ') {
        Some(i) => (i, i + 1),
        None => (s.len(), s.len()),
    };
    if !method_ok(&s[..method_end]) || rest_start >= s.len() {
        return RequestLine { method: Cow::Borrowed(""), path: line, query: None, protocol: Cow::Borrowed("") };
    }
    let rest = &s[rest_start..];
    let (target_end, protocol) = match rest.rfind(' ') {
        Some(i) if rest[i + 1..].starts_with("HTTP/") => (rest_start + i, (rest_start + i + 1, s.len())),
        _ => (s.len(), (s.len(), s.len())),
    };
    let (q, path_end) = match s[rest_start..target_end].find('?') {
        Some(i) => (Some((rest_start + i + 1, target_end)), rest_start + i),
        None => (None, target_end),
    };
    match line {
        Cow::Borrowed(b) => RequestLine {
            method: Cow::Borrowed(&b[..method_end]),
            path: Cow::Borrowed(&b[rest_start..path_end]),
            query: q.map(|(a, z)| Cow::Borrowed(&b[a..z])),
            protocol: Cow::Borrowed(&b[protocol.0..protocol.1]),
        },
        Cow::Owned(o) => RequestLine {
            method: Cow::Owned(o[..method_end].to_owned()),
            path: Cow::Owned(o[rest_start..path_end].to_owned()),
            query: q.map(|(a, z)| Cow::Owned(o[a..z].to_owned())),
            protocol: Cow::Owned(o[protocol.0..protocol.1].to_owned()),
        },
    }
}

/// Splits a request target (`/a?b`) into path and query.
pub fn split_target(t: Cow<'_, str>) -> (Cow<'_, str>, Option<Cow<'_, str>>) {
    match t.find('?') {
        None => (t, None),
        Some(i) => match t {
            Cow::Borrowed(b) => (Cow::Borrowed(&b[..i]), Some(Cow::Borrowed(&b[i + 1..]))),
            Cow::Owned(o) => (Cow::Owned(o[..i].to_owned()), Some(Cow::Owned(o[i + 1..].to_owned()))),
        },
    }
}

/// An unsigned decimal of at most `max_len` digits.
#[inline]
fn decimal(s: &[u8], max_len: usize) -> Option<u64> {
    if s.is_empty() || s.len() > max_len {
        return None;
    }
    let mut v = 0u64;
    for &c in s {
        let d = c.wrapping_sub(b'0');
        if d > 9 {
            return None;
        }
        v = v * 10 + d as u64;
    }
    Some(v)
}

/// A decimal status code, 0..=999.
#[inline]
pub fn status(s: &[u8]) -> Option<u16> {
    decimal(s, 3).map(|v| v as u16)
}

/// A byte count; `-` (Apache's "no body") is 0.
#[inline]
pub fn bytes(s: &[u8]) -> Option<u64> {
    if s == b"-" {
        return Some(0);
    }
    decimal(s, 19)
}

/// Seconds as a decimal (`0.532`); `-` is none. nginx's `$upstream_response_time` may list
/// several upstreams (`0.004, 0.010 : 0.2`): their sum is the time spent.
pub fn seconds(s: &str) -> Option<f32> {
    let s = s.trim();
    if s.is_empty() || s == "-" {
        return None;
    }
    if let Ok(v) = s.parse::<f32>() {
        return (v.is_finite() && v >= 0.0).then_some(v);
    }
    let mut sum = 0.0f32;
    let mut any = false;
    for part in s.split([',', ':']) {
        let p = part.trim();
        if p == "-" || p.is_empty() {
            continue;
        }
        let v: f32 = p.parse().ok()?;
        if !v.is_finite() || v < 0.0 {
            return None;
        }
        sum += v;
        any = true;
    }
    any.then_some(sum)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes() {
        assert_eq!(closing_quote(br#"abc" x"#), Some(3));
        assert_eq!(closing_quote(br#"a\"b" x"#), Some(4));
        assert_eq!(closing_quote(br#"a\\" x"#), Some(3));
        assert_eq!(closing_quote(br#"a\\\"b"#), None);
        assert_eq!(closing_quote(b"abc"), None);
    }

    #[test]
    fn unescaping() {
        assert_eq!(unescape("plain", Escape::Log), "plain");
        assert!(matches!(unescape("plain", Escape::Log), Cow::Borrowed(_)));
        assert_eq!(unescape(r"a\x22b\x5C", Escape::Log), "a\"b\\");
        assert_eq!(unescape(r#"a\"b\\c"#, Escape::Log), "a\"b\\c");
        assert_eq!(unescape(r"\xC3\xA9t\xE9", Escape::Log), "ét\u{FFFD}");
        assert_eq!(unescape(r#"\u00e9\"\ud83d\ude00"#, Escape::Json), "é\"😀");
        assert_eq!(unescape(r"\x2", Escape::Log), r"\x2");
        assert_eq!(unescape(r"a\", Escape::Json), r"a\");
        assert_eq!(unescape(r"\x22", Escape::None), r"\x22");
    }

    #[test]
    fn request_lines() {
        let r = split_request("GET /a/b?c=d&e HTTP/1.1".into());
        assert_eq!(
            (&*r.method, &*r.path, r.query.as_deref(), &*r.protocol),
            ("GET", "/a/b", Some("c=d&e"), "HTTP/1.1")
        );
        let r = split_request("GET /".into());
        assert_eq!((&*r.method, &*r.path, &*r.protocol), ("GET", "/", ""));
        let r = split_request("GET /a b HTTP/1.0".into());
        assert_eq!((&*r.path, &*r.protocol), ("/a b", "HTTP/1.0"));
        let r = split_request(r"\x16\x03\x01\x02\x00\x01\x00".into());
        assert_eq!((&*r.method, &*r.path), ("", r"\x16\x03\x01\x02\x00\x01\x00"));
        let r = split_request("-".into());
        assert_eq!((&*r.method, &*r.path), ("", "-"));
        let r = split_request(Cow::Owned("POST /x?y HTTP/2.0".to_owned()));
        assert_eq!((&*r.method, &*r.path, r.query.as_deref(), &*r.protocol), ("POST", "/x", Some("y"), "HTTP/2.0"));
    }

    #[test]
    fn numbers() {
        assert_eq!(status(b"404"), Some(404));
        assert_eq!(status(b"-1"), None);
        assert_eq!(status(b"4040"), None);
        assert_eq!(bytes(b"-"), Some(0));
        assert_eq!(bytes(b"18446744073709551615999"), None);
        assert_eq!(seconds("0.250"), Some(0.25));
        assert_eq!(seconds("0.004, 0.010 : 0.2"), Some(0.214));
        assert_eq!(seconds("-"), None);
        assert_eq!(seconds("NaN"), None);
    }
}
