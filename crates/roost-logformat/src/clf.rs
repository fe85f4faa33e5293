//! Common Log Format family: nginx's default `combined`, Apache's `common` and `combined`
//! (`%h %l %u %t "%r" %>s %b "%{Referer}i" "%{User-agent}i"`), and Apache's `vhost_combined`
//! (`%v:%p` in front). Trailing fields some setups append (`"$http_x_forwarded_for"`) are ignored.

use std::borrow::Cow;
use std::net::IpAddr;

use roost_event::RequestEvent;

use crate::error::{ErrorKind, ParseError};
use crate::text::{Escape, closing_quote, dash_none, split_request, unescape};
use crate::{text, time};

pub fn parse(line: &str) -> Result<RequestEvent<'_>, ParseError> {
    let b = line.as_bytes();
    let err = |k, at| Err(ParseError::new(k, at));
    if b.first().is_none_or(u8::is_ascii_whitespace) && line.trim().is_empty() {
        return err(ErrorKind::Empty, 0);
    }
    let Some(sp) = memchr::memchr(b' ', b) else {
        return err(ErrorKind::Truncated, b.len());
    };
    let mut host = None;
    let (client, mut pos) = match line[..sp].parse::<IpAddr>() {
        Ok(ip) => (ip, sp + 1),
        Err(_) => {
            // vhost_combined: `example.org:443 203.0.113.7 - - [...]`
            let Some(sp2) = memchr::memchr(b' ', &b[sp + 1..]).map(|i| sp + 1 + i) else {
                return err(ErrorKind::Client, 0);
            };
            match line[sp + 1..sp2].parse::<IpAddr>() {
                Ok(ip) if b[..sp].contains(&b':') || b[..sp].contains(&b'.') => {
                    let vhost = &line[..sp];
                    let name = vhost.rsplit_once(':').map_or(vhost, |(h, _)| h);
                    host = Some(Cow::Borrowed(name));
                    (ip, sp2 + 1)
                }
                _ => return err(ErrorKind::Client, 0),
            }
        }
    };
    // ident and user: skip to the bracketed time
    let Some(lb) = memchr::memchr(b'[', &b[pos..]) else {
        return err(ErrorKind::Time, pos);
    };
    pos += lb + 1;
    let Some(rb) = memchr::memchr(b']', &b[pos..]) else {
        return err(ErrorKind::Time, pos);
    };
    let Some(time) = time::parse_clf(&line[pos..pos + rb], 0) else {
        return err(ErrorKind::Time, pos);
    };
    pos += rb + 1;
    if b.get(pos..pos + 2) != Some(b" \"") {
        return err(ErrorKind::Truncated, pos);
    }
    pos += 2;
    let Some(q) = closing_quote(&b[pos..]) else {
        return err(ErrorKind::Quote, pos);
    };
    let req = split_request(unescape(&line[pos..pos + q], Escape::Log));
    pos += q + 1;
    if b.get(pos) != Some(&b' ') {
        return err(ErrorKind::Truncated, pos);
    }
    pos += 1;
    let end = memchr::memchr(b' ', &b[pos..]).map_or(b.len(), |i| pos + i);
    let Some(status) = text::status(&b[pos..end]) else {
        return err(ErrorKind::Status, pos);
    };
    pos = end + 1;
    if pos > b.len() {
        return err(ErrorKind::Truncated, b.len());
    }
    let end = memchr::memchr(b' ', &b[pos..]).map_or(b.len(), |i| pos + i);
    let bytes_field = trim_cr(&b[pos..end]);
    let Some(bytes) = text::bytes(bytes_field) else {
        return err(ErrorKind::Bytes, pos);
    };
    pos = end;
    // combined: ` "referer" "user agent"`; common stops here
    let mut quoted = [None, None];
    for slot in &mut quoted {
        if b.get(pos..pos + 2) != Some(b" \"") {
            break;
        }
        pos += 2;
        let Some(q) = closing_quote(&b[pos..]) else {
            return err(ErrorKind::Quote, pos);
        };
        *slot = dash_none(unescape(&line[pos..pos + q], Escape::Log));
        pos += q + 1;
    }
    let [referer, user_agent] = quoted;
    Ok(RequestEvent {
        time,
        client,
        method: req.method,
        host,
        path: req.path,
        query: req.query,
        protocol: req.protocol,
        status,
        bytes,
        request_time: None,
        referer,
        user_agent,
    })
}

fn trim_cr(b: &[u8]) -> &[u8] {
    b.strip_suffix(b"\r").unwrap_or(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nginx_combined() {
        let l = r#"203.0.113.7 - - [17/May/2015:10:05:03 +0000] "GET /presentations/logstash?q=1 HTTP/1.1" 200 7697 "http://semicomplete.com/" "Mozilla/5.0 (X11; Linux x86_64)""#;
        let e = parse(l).unwrap();
        assert_eq!(e.client.to_string(), "203.0.113.7");
        assert_eq!(e.time.to_string(), "2015-05-17T10:05:03Z");
        assert_eq!(
            (&*e.method, &*e.path, e.query.as_deref(), &*e.protocol),
            ("GET", "/presentations/logstash", Some("q=1"), "HTTP/1.1")
        );
        assert_eq!((e.status, e.bytes), (200, 7697));
        assert_eq!(e.referer.as_deref(), Some("http://semicomplete.com/"));
        assert_eq!(e.user_agent.as_deref(), Some("Mozilla/5.0 (X11; Linux x86_64)"));
        assert_eq!(e.host, None);
    }

    #[test]
    fn common_and_ipv6_and_dash_bytes() {
        let e =
            parse(r#"2001:db8::7 - frank [10/Oct/2000:13:55:36 -0700] "GET /apache_pb.gif HTTP/1.0" 304 -"#).unwrap();
        assert_eq!(e.client.to_string(), "2001:db8::7");
        assert_eq!((e.status, e.bytes), (304, 0));
        assert_eq!((e.referer, e.user_agent), (None, None));
    }

    #[test]
    fn escaped_quotes_both_styles() {
        let apache =
            r#"1.2.3.4 - - [10/Oct/2000:13:55:36 +0000] "GET /a\"b HTTP/1.1" 400 0 "-" "Mozilla \"quoted\" \\ end""#;
        let e = parse(apache).unwrap();
        assert_eq!(&*e.path, "/a\"b");
        assert_eq!(e.user_agent.as_deref(), Some(r#"Mozilla "quoted" \ end"#));
        assert_eq!(e.referer, None);
        let nginx = r#"1.2.3.4 - - [10/Oct/2000:13:55:36 +0000] "GET /x HTTP/1.1" 200 5 "-" "a\x22b""#;
        assert_eq!(parse(nginx).unwrap().user_agent.as_deref(), Some("a\"b"));
    }

    #[test]
    fn vhost_combined_and_trailing_fields() {
        let l = r#"example.org:443 198.51.100.9 - - [10/Oct/2000:13:55:36 +0000] "POST /login HTTP/1.1" 401 12 "-" "curl/8.0" "10.0.0.1""#;
        let e = parse(l).unwrap();
        assert_eq!(e.host.as_deref(), Some("example.org"));
        assert_eq!(e.client.to_string(), "198.51.100.9");
        assert_eq!(e.user_agent.as_deref(), Some("curl/8.0"));
    }

    #[test]
    fn garbage_request_line_is_still_an_event() {
        let l = r#"192.0.2.1 - - [10/Oct/2000:13:55:36 +0000] "\x16\x03\x01\x00\xA5\x01" 400 150 "-" "-""#;
        let e = parse(l).unwrap();
        assert_eq!(e.method, "");
        assert_eq!(e.status, 400);
    }

    #[test]
    fn errors_say_what_and_where() {
        let cases: &[(&str, ErrorKind)] = &[
            ("", ErrorKind::Empty),
            ("   ", ErrorKind::Empty),
            ("garbage", ErrorKind::Truncated),
            ("host.example - - [10/Oct/2000:13:55:36 +0000] \"GET / HTTP/1.1\" 200 1", ErrorKind::Client),
            ("1.2.3.4 - - [10/Oct/2000:13:55] \"GET / HTTP/1.1\" 200 1", ErrorKind::Time),
            ("1.2.3.4 - - 10/Oct/2000", ErrorKind::Time),
            ("1.2.3.4 - - [10/Oct/2000:13:55:36 +0000] \"GET / HTTP/1.1 200 1", ErrorKind::Quote),
            ("1.2.3.4 - - [10/Oct/2000:13:55:36 +0000] \"GET / HTTP/1.1\" OK 1", ErrorKind::Status),
            ("1.2.3.4 - - [10/Oct/2000:13:55:36 +0000] \"GET / HTTP/1.1\" 200 x", ErrorKind::Bytes),
            ("1.2.3.4 - - [10/Oct/2000:13:55:36 +0000] \"GET / HTTP/1.1\" 200", ErrorKind::Truncated),
            ("1.2.3.4 - - [10/Oct/2000:13:55:36 +0000] \"GET / HTTP/1.1\" 200 1 \"ref", ErrorKind::Quote),
        ];
        for (line, kind) in cases {
            assert_eq!(parse(line).map(|e| format!("{e:?}")).unwrap_err().kind, *kind, "{line:?}");
        }
    }
}
