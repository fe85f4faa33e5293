//! Web servers' error logs: the lines that name a client and something it did wrong become
//! [`ErrorLogEvent`]s; other well-formed lines (a missing file, an upstream timeout) are
//! [`Line::Unjudged`]: the access log already shows those requests.
//!
//! ```text
//! 2026/03/03 10:15:02 [error] 812#812: *1 user "admin" was not found in "/etc/nginx/.htpasswd", client: 192.0.2.7, server: example.com, request: "GET /admin HTTP/1.1", host: "example.com"
//! [Tue Mar 03 10:15:02.123456 2026] [auth_basic:error] [pid 812:tid 140] [client 192.0.2.7:51234] AH01618: user admin not found: /admin
//! [Tue Mar 03 10:15:02 2026] [error] [client 192.0.2.7] user admin not found: /admin        (Apache 2.2)
//! ```
//!
//! Both servers write local time without a zone: `utc_offset_s` says what it is.

use std::borrow::Cow;
use std::net::IpAddr;

use roost_event::{ErrorLogEvent, ErrorLogKind};

use crate::Line;
use crate::error::{ErrorKind, ParseError};
use crate::time;

/// An address as error logs write it: bare, `ip:port`, `[v6]:port`.
fn client(s: &str) -> Option<IpAddr> {
    let s = s.trim();
    if let Ok(ip) = s.parse() {
        return Some(ip);
    }
    let (host, port) = s.rsplit_once(':')?;
    if port.is_empty() || !port.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host).parse().ok()
}

/// A quoted value after `key: "` in nginx's suffix, unescaped as nginx writes it (`\"`).
fn quoted_after<'a>(s: &'a str, key: &str) -> Option<Cow<'a, str>> {
    let start = s.find(key)? + key.len();
    let v = &s[start..];
    let end = crate::text::closing_quote(v.as_bytes())?;
    Some(crate::text::unescape(&v[..end], crate::text::Escape::Log))
}

fn nginx_kind(message: &str) -> Option<ErrorLogKind> {
    if message.starts_with("user \"") {
        if message.contains("\" was not found in \"") {
            return Some(ErrorLogKind::UnknownUser);
        }
        if message.ends_with("\": password mismatch") {
            return Some(ErrorLogKind::WrongPassword);
        }
    }
    if message.starts_with("limiting requests, excess:") || message.starts_with("limiting connections by zone") {
        return Some(ErrorLogKind::RateLimited);
    }
    if message.starts_with("client sent invalid")
        || message.starts_with("client sent too long")
        || message.starts_with("client sent duplicate")
    {
        return Some(ErrorLogKind::InvalidRequest);
    }
    if message.starts_with("client login failed") {
        return Some(ErrorLogKind::MailLoginFailed);
    }
    None
}

/// One line of an nginx error log.
pub fn parse_nginx(line: &str, utc_offset_s: i64) -> Result<Line<'_>, ParseError> {
    if line.trim().is_empty() {
        return Err(ParseError::new(ErrorKind::Empty, 0));
    }
    let t = line.get(..19).and_then(|t| time::parse_nginx_error(t, utc_offset_s));
    let t = t.ok_or(ParseError::new(ErrorKind::Time, 0))?;
    let rest = line[19..].strip_prefix(" [").ok_or(ParseError::new(ErrorKind::Shape, 19))?;
    let close = rest.find("] ").ok_or(ParseError::new(ErrorKind::Shape, 21))?;
    let level = &rest[..close];
    if level.is_empty() || !level.bytes().all(|c| c.is_ascii_lowercase()) {
        return Err(ParseError::new(ErrorKind::Shape, 21));
    }
    let rest = &rest[close + 2..];
    // `PID#TID: `
    let colon = rest.find(": ").ok_or(ParseError::new(ErrorKind::Shape, 23 + close))?;
    let (pid, tid) = rest[..colon].split_once('#').ok_or(ParseError::new(ErrorKind::Shape, 23 + close))?;
    if !pid.bytes().all(|c| c.is_ascii_digit()) || !tid.bytes().all(|c| c.is_ascii_digit()) {
        return Err(ParseError::new(ErrorKind::Shape, 23 + close));
    }
    let mut text = &rest[colon + 2..];
    // `*CONNECTION ` when the line is about a connection
    if let Some(after) = text.strip_prefix('*') {
        let sp = after.find(' ').unwrap_or(after.len());
        if after[..sp].bytes().all(|c| c.is_ascii_digit()) {
            text = after[sp..].trim_start();
        }
    }
    let Some(at) = text.find(", client: ") else { return Ok(Line::Unjudged) };
    let (message, suffix) = (&text[..at], &text[at + 10..]);
    let Some(kind) = nginx_kind(message) else { return Ok(Line::Unjudged) };
    let addr_end = suffix.find(", ").unwrap_or(suffix.len());
    let offset = line.len() - suffix.len();
    let client = client(&suffix[..addr_end]).ok_or(ParseError::new(ErrorKind::Client, offset))?;
    Ok(Line::Error(ErrorLogEvent {
        time: t,
        client,
        kind,
        server: Cow::Borrowed("nginx"),
        message: Cow::Borrowed(message),
        request: quoted_after(suffix, ", request: \""),
    }))
}

fn apache_kind(message: &str) -> Option<(ErrorLogKind, Option<&str>)> {
    let (code, text) = match message.split_once(": ") {
        Some((c, t)) if c.len() == 7 && c.starts_with("AH") && c[2..].bytes().all(|b| b.is_ascii_digit()) => (c, t),
        _ => ("", message),
    };
    match code {
        "AH01618" => return Some((ErrorLogKind::UnknownUser, None)),
        "AH01617" => return Some((ErrorLogKind::WrongPassword, None)),
        "AH00126" => return Some((ErrorLogKind::InvalidRequest, text.strip_prefix("Invalid URI in request "))),
        _ => {}
    }
    // Apache 2.2 wrote the same messages without codes
    if text.starts_with("user ") && text.contains(" not found") {
        Some((ErrorLogKind::UnknownUser, None))
    } else if text.starts_with("user ") && text.contains(": authentication failure for \"") {
        Some((ErrorLogKind::WrongPassword, None))
    } else {
        text.strip_prefix("Invalid URI in request ").map(|r| (ErrorLogKind::InvalidRequest, Some(r)))
    }
}

/// One line of an Apache (2.2 or 2.4) error log.
pub fn parse_apache(line: &str, utc_offset_s: i64) -> Result<Line<'_>, ParseError> {
    if line.trim().is_empty() {
        return Err(ParseError::new(ErrorKind::Empty, 0));
    }
    let rest = line.strip_prefix('[').ok_or(ParseError::new(ErrorKind::Shape, 0))?;
    let close = rest.find(']').ok_or(ParseError::new(ErrorKind::Time, 1))?;
    let t = time::parse_apache_error(&rest[..close], utc_offset_s).ok_or(ParseError::new(ErrorKind::Time, 1))?;
    let mut rest = &rest[close + 1..];
    let mut addr = None;
    let mut blocks = 0;
    // ` [module:level]`, ` [pid N:tid M]`, ` [client ADDR]`, ` [remote ADDR]`…
    while let Some(b) = rest.strip_prefix(" [") {
        // `[client [v6]:port]` has a `]` inside: that block ends at the `]` after the port
        let v6_end = b
            .strip_prefix("client [")
            .and_then(|v6| v6.find("]:"))
            .and_then(|i| b[8 + i + 2..].find(']').map(|j| 8 + i + 2 + j));
        let end = v6_end.or_else(|| b.find(']')).ok_or(ParseError::new(ErrorKind::Shape, line.len() - rest.len()))?;
        if let Some(a) = b[..end].strip_prefix("client ") {
            addr = Some((a, line.len() - rest.len()));
        }
        blocks += 1;
        rest = &b[end + 1..];
    }
    if blocks == 0 {
        return Err(ParseError::new(ErrorKind::Shape, close + 2));
    }
    let message = rest.trim_start();
    let Some((addr, at)) = addr else { return Ok(Line::Unjudged) };
    let Some((kind, request)) = apache_kind(message) else { return Ok(Line::Unjudged) };
    let client = client(addr).ok_or(ParseError::new(ErrorKind::Client, at))?;
    Ok(Line::Error(ErrorLogEvent {
        time: t,
        client,
        kind,
        server: Cow::Borrowed("apache"),
        message: Cow::Borrowed(message),
        request: request.map(Cow::Borrowed),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(l: Result<Line<'_>, ParseError>) -> ErrorLogEvent<'_> {
        match l {
            Ok(Line::Error(e)) => e,
            other => panic!("not an error-log event: {other:?}"),
        }
    }

    #[test]
    fn nginx_messages_about_clients() {
        let pre = "2026/03/03 10:15:02 [error] 812#812: *1 ";
        let suf = r#", client: 192.0.2.7, server: example.com, request: "GET /admin HTTP/1.1", host: "example.com""#;
        let cases = [
            (r#"user "admin" was not found in "/etc/nginx/.htpasswd""#, ErrorLogKind::UnknownUser),
            (r#"user "admin": password mismatch"#, ErrorLogKind::WrongPassword),
            (r#"limiting requests, excess: 10.520 by zone "one""#, ErrorLogKind::RateLimited),
            (r#"limiting connections by zone "addr""#, ErrorLogKind::RateLimited),
            ("client sent invalid request while reading client request line", ErrorLogKind::InvalidRequest),
            ("client sent invalid method while reading client request line", ErrorLogKind::InvalidRequest),
            ("client sent too long URI while reading client request line", ErrorLogKind::InvalidRequest),
        ];
        for (message, kind) in cases {
            let line = format!("{pre}{message}{suf}");
            let e = event(parse_nginx(&line, 0));
            assert_eq!((e.kind, e.message.as_ref()), (kind, message), "{line}");
            assert_eq!(e.client.to_string(), "192.0.2.7");
            assert_eq!(e.request.as_deref(), Some("GET /admin HTTP/1.1"));
            assert_eq!(e.server, "nginx");
            assert_eq!(e.time, crate::time::parse_nginx_error("2026/03/03 10:15:02", 0).unwrap());
        }
        // the mail proxy, an IPv6 client, no request
        let mail = r#"2026/03/03 10:15:02 [info] 812#0: *9 client login failed: "authentication failed" while in http auth state, client: 2001:db8::7, server: 0.0.0.0:25, login: "admin""#;
        let e = event(parse_nginx(mail, 0));
        assert_eq!(
            (e.kind, e.client.to_string(), e.request),
            (ErrorLogKind::MailLoginFailed, "2001:db8::7".into(), None)
        );
        // local time: the offset says what it is
        let local = format!("{pre}{}{suf}", cases[0].0);
        let e = event(parse_nginx(&local, 3600));
        assert_eq!(e.time.0, crate::time::parse_nginx_error("2026/03/03 09:15:02", 0).unwrap().0);
    }

    #[test]
    fn nginx_lines_roost_does_not_judge_and_garbage() {
        for line in [
            r#"2026/03/03 10:15:02 [error] 812#812: *3 open() "/usr/share/nginx/html/x" failed (2: No such file or directory), client: 192.0.2.7, server: _, request: "GET /x HTTP/1.1""#,
            "2026/03/03 10:15:02 [notice] 1#1: signal process started",
            "2026/03/03 10:15:02 [emerg] 1#1: bind() to 0.0.0.0:80 failed (98: Address already in use)",
        ] {
            assert!(matches!(parse_nginx(line, 0), Ok(Line::Unjudged)), "{line}");
        }
        for (line, kind) in [
            ("", ErrorKind::Empty),
            ("2026/03/03 10:15:0", ErrorKind::Time),
            ("2026/03/03 10:15:02 error 812#812: x", ErrorKind::Shape),
            ("2026/03/03 10:15:02 [error] x: y", ErrorKind::Shape),
            (
                r#"2026/03/03 10:15:02 [error] 1#1: *1 user "a": password mismatch, client: nope, server: x"#,
                ErrorKind::Client,
            ),
            (r#"192.0.2.7 - - [03/Mar/2026:10:15:02 +0000] "GET / HTTP/1.1" 200 5 "-" "x""#, ErrorKind::Time),
        ] {
            assert_eq!(parse_nginx(line, 0).unwrap_err().kind, kind, "{line:?}");
        }
    }

    #[test]
    fn apache_messages_about_clients() {
        let t = crate::time::parse_apache_error("Tue Mar 03 10:15:02 2026", 0).unwrap();
        let cases = [
            (
                "[Tue Mar 03 10:15:02.123456 2026] [auth_basic:error] [pid 812:tid 140] [client 192.0.2.7:51234] AH01618: user admin not found: /admin",
                ErrorLogKind::UnknownUser,
                None,
            ),
            (
                r#"[Tue Mar 03 10:15:02.123456 2026] [auth_basic:error] [pid 812:tid 140] [client 192.0.2.7:51234] AH01617: user admin: authentication failure for "/admin": Password Mismatch"#,
                ErrorLogKind::WrongPassword,
                None,
            ),
            (
                "[Tue Mar 03 10:15:02.123456 2026] [core:error] [pid 812:tid 140] [client 192.0.2.7:51234] AH00126: Invalid URI in request GET /..%2f..%2fetc/passwd HTTP/1.1",
                ErrorLogKind::InvalidRequest,
                Some("GET /..%2f..%2fetc/passwd HTTP/1.1"),
            ),
            (
                "[Tue Mar 03 10:15:02 2026] [error] [client 192.0.2.7] user admin not found: /admin",
                ErrorLogKind::UnknownUser,
                None,
            ),
            (
                r#"[Tue Mar 03 10:15:02 2026] [error] [client 192.0.2.7] user admin: authentication failure for "/admin": Password Mismatch"#,
                ErrorLogKind::WrongPassword,
                None,
            ),
        ];
        for (line, kind, request) in cases {
            let e = event(parse_apache(line, 0));
            assert_eq!(
                (e.kind, e.client.to_string(), e.request.as_deref()),
                (kind, "192.0.2.7".into(), request),
                "{line}"
            );
            assert_eq!(e.time.secs(), t.secs());
            assert_eq!(e.server, "apache");
        }
        let v6 = "[Tue Mar 03 10:15:02 2026] [auth_basic:error] [pid 1] [client [2001:db8::7]:51234] AH01618: user x not found: /";
        assert_eq!(event(parse_apache(v6, 0)).client.to_string(), "2001:db8::7");
        let v6 =
            "[Tue Mar 03 10:15:02 2026] [auth_basic:error] [pid 1] [client 2001:db8::7] AH01618: user x not found: /";
        assert_eq!(event(parse_apache(v6, 0)).client.to_string(), "2001:db8::7");
    }

    #[test]
    fn apache_lines_roost_does_not_judge_and_garbage() {
        for line in [
            "[Tue Mar 03 10:15:02.123456 2026] [mpm_event:notice] [pid 1:tid 2] AH00489: Apache/2.4.57 configured -- resuming normal operations",
            "[Tue Mar 03 10:15:02 2026] [authz_core:error] [pid 1] [client 192.0.2.7:5] AH01630: client denied by server configuration: /srv",
        ] {
            assert!(matches!(parse_apache(line, 0), Ok(Line::Unjudged)), "{line}");
        }
        for (line, kind) in [
            ("", ErrorKind::Empty),
            ("Tue Mar 03 10:15:02 2026 x", ErrorKind::Shape),
            ("[Tue Mar 03 10:15:02 2026", ErrorKind::Time),
            ("[yesterday] [error] x", ErrorKind::Time),
            ("[Tue Mar 03 10:15:02 2026] no blocks", ErrorKind::Shape),
            ("[Tue Mar 03 10:15:02 2026] [error] [client nope] user x not found: /", ErrorKind::Client),
        ] {
            assert_eq!(parse_apache(line, 0).unwrap_err().kind, kind, "{line:?}");
        }
    }
}
