//! A parser built from an operator's nginx `log_format` definition.
//!
//! The operator pastes their `log_format` line as it stands in nginx.conf, e.g.
//!
//! ```text
//! log_format timed '$remote_addr - $remote_user [$time_local] "$request" '
//!                  '$status $body_bytes_sent "$http_referer" "$http_user_agent" rt=$request_time';
//! ```
//!
//! and roost compiles it into a sequence of literals and variables. A line is matched by
//! finding each literal after the variable before it; where a value may itself contain the
//! next literal (a user agent containing `" "`), the matcher backtracks, within a small budget.

use std::borrow::Cow;
use std::net::IpAddr;

use roost_event::RequestEvent;

use crate::error::{ErrorKind, FormatError, ParseError};
use crate::text::{self, Escape, dash_none, split_request, split_target, unescape};
use crate::time;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Var {
    RemoteAddr,
    TimeLocal,
    TimeIso8601,
    Msec,
    Request,
    RequestMethod,
    RequestUri,
    Uri,
    Args,
    ServerProtocol,
    Status,
    BodyBytesSent,
    BytesSent,
    RequestTime,
    UpstreamResponseTime,
    HttpReferer,
    HttpUserAgent,
    Host,
    ServerName,
    /// Logged but not used by roost.
    Other,
}

fn var_of(name: &str) -> Var {
    match name {
        "remote_addr" => Var::RemoteAddr,
        "time_local" => Var::TimeLocal,
        "time_iso8601" => Var::TimeIso8601,
        "msec" => Var::Msec,
        "request" => Var::Request,
        "request_method" => Var::RequestMethod,
        "request_uri" => Var::RequestUri,
        "uri" | "document_uri" => Var::Uri,
        "args" | "query_string" => Var::Args,
        "server_protocol" => Var::ServerProtocol,
        "status" => Var::Status,
        "body_bytes_sent" => Var::BodyBytesSent,
        "bytes_sent" => Var::BytesSent,
        "request_time" => Var::RequestTime,
        "upstream_response_time" => Var::UpstreamResponseTime,
        "http_referer" => Var::HttpReferer,
        "http_user_agent" => Var::HttpUserAgent,
        "host" | "http_host" => Var::Host,
        "server_name" => Var::ServerName,
        _ => Var::Other,
    }
}

#[derive(Clone, Debug)]
enum Seg {
    Lit(Box<str>),
    Var(Var, Box<str>),
}

/// A compiled `log_format`.
#[derive(Clone, Debug)]
pub struct NginxFormat {
    segs: Vec<Seg>,
    escape: Escape,
    n_vars: usize,
}

/// How many alternative splits a line may try before it is declared not to match.
const BACKTRACK_BUDGET: u32 = 256;

impl NginxFormat {
    /// Compiles a `log_format` definition: the whole nginx directive
    /// (`log_format name [escape=…] '…' '…';`), its quoted strings, or the bare format.
    pub fn compile(def: &str) -> Result<Self, FormatError> {
        let (template, escape) = template_of(def)?;
        let mut segs: Vec<Seg> = Vec::new();
        let b = template.as_bytes();
        let mut i = 0;
        let mut lit = String::new();
        while i < b.len() {
            if b[i] != b'$' {
                let next = memchr::memchr(b'$', &b[i..]).map_or(b.len(), |j| i + j);
                lit.push_str(&template[i..next]);
                i = next;
                continue;
            }
            let (name, end) = if b.get(i + 1) == Some(&b'{') {
                let close = memchr::memchr(b'}', &b[i..]).ok_or(FormatError::Unterminated(i))?;
                (&template[i + 2..i + close], i + close + 1)
            } else {
                let n = b[i + 1..].iter().take_while(|c| c.is_ascii_alphanumeric() || **c == b'_').count();
                (&template[i + 1..i + 1 + n], i + 1 + n)
            };
            if name.is_empty() {
                return Err(FormatError::EmptyVariable(i));
            }
            if !lit.is_empty() {
                segs.push(Seg::Lit(std::mem::take(&mut lit).into()));
            } else if let Some(Seg::Var(_, prev)) = segs.last() {
                return Err(FormatError::AdjacentVariables(prev.to_string(), name.to_owned()));
            }
            segs.push(Seg::Var(var_of(name), name.into()));
            i = end;
        }
        if !lit.is_empty() {
            segs.push(Seg::Lit(lit.into()));
        }
        let has = |v: &[Var]| segs.iter().any(|s| matches!(s, Seg::Var(x, _) if v.contains(x)));
        if !has(&[Var::RemoteAddr]) {
            return Err(FormatError::Missing("$remote_addr"));
        }
        if !has(&[Var::TimeLocal, Var::TimeIso8601, Var::Msec]) {
            return Err(FormatError::Missing("a time ($time_local, $time_iso8601 or $msec)"));
        }
        if !has(&[Var::Status]) {
            return Err(FormatError::Missing("$status"));
        }
        if !has(&[Var::Request, Var::RequestUri, Var::Uri]) {
            return Err(FormatError::Missing("the request ($request, $request_uri or $uri)"));
        }
        let n_vars = segs.iter().filter(|s| matches!(s, Seg::Var(..))).count();
        Ok(NginxFormat { segs, escape, n_vars })
    }

    pub fn parse<'a>(&self, line: &'a str) -> Result<RequestEvent<'a>, ParseError> {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.trim().is_empty() {
            return Err(ParseError::new(ErrorKind::Empty, 0));
        }
        let mut spans = [(0usize, 0usize); 48];
        let mut heap;
        let spans: &mut [(usize, usize)] = if self.n_vars <= spans.len() {
            &mut spans[..self.n_vars]
        } else {
            heap = vec![(0, 0); self.n_vars];
            &mut heap
        };
        let mut budget = BACKTRACK_BUDGET;
        let mut furthest = 0;
        if !self.matches(line, 0, 0, 0, spans, &mut budget, &mut furthest) {
            return Err(ParseError::new(ErrorKind::Shape, furthest));
        }
        self.build(line, spans)
    }

    /// Matches segments from `seg` at byte `pos`; `v` is the index of the next variable.
    #[allow(clippy::too_many_arguments)]
    fn matches(
        &self,
        line: &str,
        seg: usize,
        pos: usize,
        v: usize,
        spans: &mut [(usize, usize)],
        budget: &mut u32,
        furthest: &mut usize,
    ) -> bool {
        *furthest = (*furthest).max(pos);
        let Some(s) = self.segs.get(seg) else {
            return pos == line.len();
        };
        match s {
            Seg::Lit(l) => {
                line[pos..].starts_with(&**l) && self.matches(line, seg + 1, pos + l.len(), v, spans, budget, furthest)
            }
            Seg::Var(var, _) => {
                let next = match self.segs.get(seg + 1) {
                    None => {
                        spans[v] = (pos, line.len());
                        return shape_ok(*var, &line[pos..]);
                    }
                    Some(Seg::Lit(l)) => &**l,
                    Some(Seg::Var(..)) => unreachable!("compile() refuses adjacent variables"),
                };
                if *var == Var::TimeLocal {
                    // `17/May/2015:10:05:03 +0000`: fixed width, contains a space
                    let end = pos + 26;
                    if end > line.len() || !line.is_char_boundary(end) {
                        return false;
                    }
                    spans[v] = (pos, end);
                    return self.matches(line, seg + 1, end, v + 1, spans, budget, furthest);
                }
                let mut from = pos;
                while let Some(i) = find_unescaped(&line.as_bytes()[from..], next.as_bytes(), self.escape) {
                    let end = from + i;
                    spans[v] = (pos, end);
                    if shape_ok(*var, &line[pos..end])
                        && self.matches(line, seg + 1, end, v + 1, spans, budget, furthest)
                    {
                        return true;
                    }
                    if *budget == 0 {
                        return false;
                    }
                    *budget -= 1;
                    from = end + 1;
                    while from < line.len() && !line.is_char_boundary(from) {
                        from += 1;
                    }
                }
                false
            }
        }
    }

    fn build<'a>(&self, line: &'a str, spans: &[(usize, usize)]) -> Result<RequestEvent<'a>, ParseError> {
        let mut client = None;
        let mut time = None;
        let mut time_at = 0;
        let (mut request, mut method, mut uri, mut path, mut args, mut protocol) = (None, None, None, None, None, None);
        let (mut status, mut bytes, mut body_bytes) = (None, None, None);
        let (mut request_time, mut upstream_time) = (None, None);
        let (mut referer, mut user_agent, mut host, mut server_name) = (None, None, None, None);
        let vars = self.segs.iter().filter_map(|s| match s {
            Seg::Var(v, _) => Some(*v),
            Seg::Lit(_) => None,
        });
        for (var, &(a, z)) in vars.zip(spans) {
            let raw = &line[a..z];
            let val = || unescape(raw, self.escape);
            match var {
                Var::RemoteAddr => {
                    client = Some(raw.parse::<IpAddr>().map_err(|_| ParseError::new(ErrorKind::Client, a))?)
                }
                Var::TimeLocal | Var::TimeIso8601 | Var::Msec => {
                    if time.is_none() {
                        time_at = a;
                        time = Some(match var {
                            Var::TimeLocal => time::parse_clf(raw, 0),
                            Var::TimeIso8601 => time::parse_iso8601(raw),
                            _ => time::parse_epoch(raw),
                        });
                    }
                }
                Var::Request => request = Some(val()),
                Var::RequestMethod => method = dash_none(val()),
                Var::RequestUri => uri = Some(val()),
                Var::Uri => path = Some(val()),
                Var::Args => args = dash_none(val()),
                Var::ServerProtocol => protocol = dash_none(val()),
                Var::Status => {
                    status = Some(text::status(raw.as_bytes()).ok_or(ParseError::new(ErrorKind::Status, a))?)
                }
                Var::BodyBytesSent => {
                    body_bytes = Some(text::bytes(raw.as_bytes()).ok_or(ParseError::new(ErrorKind::Bytes, a))?)
                }
                Var::BytesSent => {
                    bytes = Some(text::bytes(raw.as_bytes()).ok_or(ParseError::new(ErrorKind::Bytes, a))?)
                }
                Var::RequestTime => request_time = text::seconds(raw),
                Var::UpstreamResponseTime => upstream_time = text::seconds(raw),
                Var::HttpReferer => referer = dash_none(val()),
                Var::HttpUserAgent => user_agent = dash_none(val()),
                Var::Host => host = dash_none(val()),
                Var::ServerName => server_name = dash_none(val()),
                Var::Other => {}
            }
        }
        let time = time.flatten().ok_or(ParseError::new(ErrorKind::Time, time_at))?;
        let (method, path, query, protocol) = if let Some(req) = request {
            let r = split_request(req);
            (method.unwrap_or(r.method), r.path, r.query.or(args), protocol.unwrap_or(r.protocol))
        } else {
            let (p, q) = match uri {
                Some(u) => split_target(u),
                None => (path.unwrap_or(Cow::Borrowed("")), None),
            };
            (method.unwrap_or(Cow::Borrowed("")), p, q.or(args), protocol.unwrap_or(Cow::Borrowed("")))
        };
        Ok(RequestEvent {
            time,
            client: client.ok_or(ParseError::new(ErrorKind::MissingField, 0))?,
            method,
            host: host.or(server_name),
            path,
            query,
            protocol,
            status: status.ok_or(ParseError::new(ErrorKind::MissingField, 0))?,
            bytes: body_bytes.or(bytes).unwrap_or(0),
            request_time: request_time.or(upstream_time),
            referer,
            user_agent,
        })
    }
}

/// Whether a value could be what the variable logs. Numbers and addresses have a fixed alphabet;
/// checking it lets the matcher backtrack when a text value swallowed the delimiter.
fn shape_ok(var: Var, v: &str) -> bool {
    let all = |f: fn(u8) -> bool| !v.is_empty() && v.bytes().all(f);
    match var {
        Var::Status | Var::BodyBytesSent | Var::BytesSent => v == "-" || all(|c| c.is_ascii_digit()),
        Var::RequestTime | Var::Msec => v == "-" || all(|c| c.is_ascii_digit() || c == b'.'),
        Var::UpstreamResponseTime => all(|c| c.is_ascii_digit() || b"., :-".contains(&c)),
        Var::RemoteAddr => all(|c| c.is_ascii_hexdigit() || c == b'.' || c == b':'),
        _ => true,
    }
}

/// Finds `needle` in `hay`; a `"` preceded by an odd run of backslashes is part of the value,
/// not the end of it (JSON escaping; Apache-style `\"`; nginx's own default writes `\x22`).
fn find_unescaped(hay: &[u8], needle: &[u8], escape: Escape) -> Option<usize> {
    let mut from = 0;
    loop {
        let i = from + memchr::memmem::find(&hay[from..], needle)?;
        if escape == Escape::None || needle[0] != b'"' {
            return Some(i);
        }
        let run = hay[..i].iter().rev().take_while(|&&c| c == b'\\').count();
        if run % 2 == 0 {
            return Some(i);
        }
        from = i + 1;
    }
}

/// Pulls the format string and escape mode out of a `log_format` directive.
fn template_of(def: &str) -> Result<(String, Escape), FormatError> {
    let d = def.trim();
    let d = d.strip_suffix(';').unwrap_or(d).trim_end();
    let mut escape = Escape::Log;
    let mut rest = d;
    if let Some(r) = d.strip_prefix("log_format")
        && r.starts_with(char::is_whitespace)
    {
        {
            let r = r.trim_start();
            // the format's name
            let name_end = r.find(char::is_whitespace).unwrap_or(r.len());
            rest = r[name_end..].trim_start();
            if let Some(r2) = rest.strip_prefix("escape=") {
                let end = r2.find(char::is_whitespace).unwrap_or(r2.len());
                escape = match &r2[..end] {
                    "default" => Escape::Log,
                    "json" => Escape::Json,
                    "none" => Escape::None,
                    other => return Err(FormatError::Escape(other.to_owned())),
                };
                rest = r2[end..].trim_start();
            }
        }
    }
    if !rest.starts_with(['\'', '"']) {
        return Ok((rest.to_owned(), escape));
    }
    // one or more quoted strings, concatenated as nginx does
    let mut out = String::new();
    let b = rest.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            q @ (b'\'' | b'"') => {
                let start = i;
                i += 1;
                loop {
                    match b.get(i) {
                        None => return Err(FormatError::Unterminated(start)),
                        Some(&c) if c == q => break,
                        Some(b'\\') if matches!(b.get(i + 1), Some(&c) if c == q || c == b'\\') => {
                            out.push(b[i + 1] as char);
                            i += 2;
                        }
                        Some(_) => {
                            let ch = rest[i..].chars().next().expect("in bounds");
                            out.push(ch);
                            i += ch.len_utf8();
                        }
                    }
                }
                i += 1;
            }
            c if c.is_ascii_whitespace() => i += 1,
            _ => {
                // unquoted tail: take it verbatim up to the next quote
                let end = rest[i..].find(['\'', '"']).map_or(rest.len(), |j| i + j);
                out.push_str(rest[i..end].trim());
                i = end;
            }
        }
    }
    Ok((out, escape))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMED: &str = r#"log_format timed '$remote_addr - $remote_user [$time_local] "$request" '
                    '$status $body_bytes_sent "$http_referer" "$http_user_agent" rt=$request_time';"#;

    #[test]
    fn compiles_the_directive_and_parses() {
        let f = NginxFormat::compile(TIMED).unwrap();
        let l = r#"198.51.100.3 - - [25/Nov/2026:10:00:00 +0000] "GET /search?q=big HTTP/1.1" 200 9000 "-" "Mozilla/5.0 (X11)" rt=4.250"#;
        let e = f.parse(l).unwrap();
        assert_eq!(e.client.to_string(), "198.51.100.3");
        assert_eq!((&*e.path, e.query.as_deref(), e.status, e.bytes), ("/search", Some("q=big"), 200, 9000));
        assert_eq!(e.request_time, Some(4.25));
        assert_eq!(e.user_agent.as_deref(), Some("Mozilla/5.0 (X11)"));
    }

    #[test]
    fn backtracks_over_values_containing_the_delimiter() {
        let f = NginxFormat::compile(r#"log_format x escape=none '$remote_addr [$time_local] "$request" "$http_user_agent" $status $request_time'"#).unwrap();
        let l = r#"192.0.2.1 [25/Nov/2026:10:00:00 +0000] "GET / HTTP/1.1" "ua " 1 with" 200 0.1"#;
        let e = f.parse(l).unwrap();
        assert_eq!(e.user_agent.as_deref(), Some(r#"ua " 1 with"#));
        assert_eq!((e.status, e.request_time), (200, Some(0.1)));
        let f = NginxFormat::compile(
            r#"'$remote_addr [$time_local] "$request" $status "$http_user_agent" "$http_referer" $request_time'"#,
        )
        .unwrap();
        let l = r#"192.0.2.1 [25/Nov/2026:10:00:00 +0000] "GET / HTTP/1.1" 200 "ua \" \" inside" "-" 0.1"#;
        assert_eq!(f.parse(l).unwrap().user_agent.as_deref(), Some(r#"ua " " inside"#));
    }

    #[test]
    fn json_template_with_split_request_fields() {
        let def = r#"log_format j escape=json '{"t":"$time_iso8601","ip":"$remote_addr",'
            '"m":"$request_method","u":"$request_uri","p":"$server_protocol","s":$status,'
            '"b":$bytes_sent,"ut":"$upstream_response_time","h":"$host","ua":"$http_user_agent"}';"#;
        let f = NginxFormat::compile(def).unwrap();
        let l = r#"{"t":"2026-11-25T10:00:00+00:00","ip":"2001:db8::9","m":"POST","u":"/login?a=\"1\"","p":"HTTP/2.0","s":401,"b":120,"ut":"0.010, 0.020","h":"shop.example","ua":"x \"y\""}"#;
        let e = f.parse(l).unwrap();
        assert_eq!((&*e.method, &*e.path, e.query.as_deref()), ("POST", "/login", Some("a=\"1\"")));
        assert_eq!((e.status, e.bytes), (401, 120));
        assert!((e.request_time.unwrap() - 0.03).abs() < 1e-6);
        assert_eq!(e.host.as_deref(), Some("shop.example"));
        assert_eq!(e.user_agent.as_deref(), Some("x \"y\""));
    }

    #[test]
    fn bare_format_with_braces_and_msec() {
        let f = NginxFormat::compile("${remote_addr}|${msec}|$status|$uri|$args|$request_method").unwrap();
        let e = f.parse("203.0.113.1|1764064800.250|404|/wp-login.php|-|GET").unwrap();
        assert_eq!(e.time.0, 1_764_064_800_250);
        assert_eq!((&*e.path, e.query.as_deref(), e.status), ("/wp-login.php", None, 404));
    }

    #[test]
    fn refuses_formats_it_cannot_use() {
        assert!(matches!(
            NginxFormat::compile("$remote_addr$status [$time_local] $request"),
            Err(FormatError::AdjacentVariables(..))
        ));
        assert!(matches!(
            NginxFormat::compile("$remote_addr [$time_local] $request"),
            Err(FormatError::Missing("$status"))
        ));
        assert!(matches!(NginxFormat::compile("log_format x '$remote_addr"), Err(FormatError::Unterminated(_))));
        assert!(matches!(NginxFormat::compile("log_format x escape=yaml '$remote_addr'"), Err(FormatError::Escape(_))));
        assert!(matches!(NginxFormat::compile("$remote_addr $ $status"), Err(FormatError::EmptyVariable(_))));
    }

    #[test]
    fn mismatching_lines_are_errors_not_panics() {
        let f = NginxFormat::compile(TIMED).unwrap();
        for l in [
            "",
            "x",
            "1.2.3.4 - - [25/Nov/2026:10:00:00 +0000] \"GET / HTTP/1.1\" 200",
            "1.2.3.4 - - [25/Nov/2026:10:00:00 +0000] \"GET / HTTP/1.1\" abc 1 \"-\" \"-\" rt=1",
            "é - - [25/Nov/2026:10:00:00 +0000] \"GET / HTTP/1.1\" 200 1 \"-\" \"-\" rt=1",
            "1.2.3.4 - - [25/Nov/2026:10:00é0 +0000] \"GET",
        ] {
            assert!(f.parse(l).is_err(), "{l:?}");
        }
    }
}
