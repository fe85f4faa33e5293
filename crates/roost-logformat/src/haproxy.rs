//! HAProxy's HTTP log format (`option httplog`), with or without a syslog header:
//!
//! ```text
//! Feb  6 12:14:14 localhost haproxy[14389]: 10.0.1.2:33317 [06/Feb/2009:12:14:14.655] http-in \
//!   static/srv1 10/0/30/69/109 200 2750 - - ---- 1/1/1/1/0 0/0 {1wt.eu} {} "GET /index.html HTTP/1.1"
//! ```
//!
//! HAProxy writes its accept date without a zone, in the box's local time: `utc_offset_s` says
//! what that is. Captured request headers (`capture request header …`) appear in the first
//! `{…}` block in the order they were declared; `request_headers` names them so `Host`,
//! `User-Agent` and `Referer` can be picked out.

use std::borrow::Cow;
use std::net::IpAddr;

use roost_event::RequestEvent;

use crate::error::{ErrorKind, ParseError};
use crate::text::{Escape, closing_quote, dash_none, split_request, unescape};
use crate::{text, time};

#[derive(Clone, Debug, Default)]
pub struct Haproxy {
    /// Lowercased names of the captured request headers, in declaration order.
    pub request_headers: Vec<String>,
    /// Offset of the box's local time from UTC, in seconds.
    pub utc_offset_s: i64,
}

fn client_addr(tok: &str) -> Option<IpAddr> {
    let (ip, port) = tok.rsplit_once(':')?;
    if port.is_empty() || !port.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let ip = ip.strip_prefix('[').and_then(|s| s.strip_suffix(']')).unwrap_or(ip);
    ip.parse().ok()
}

impl Haproxy {
    pub fn parse<'a>(&self, line: &'a str) -> Result<RequestEvent<'a>, ParseError> {
        let b = line.as_bytes();
        if line.trim().is_empty() {
            return Err(ParseError::new(ErrorKind::Empty, 0));
        }
        // Find `CLIENT:PORT [DATE]`: the first token followed by ` [` that is an address.
        let mut search = 0;
        let (client, mut pos) = loop {
            let Some(i) = memchr::memmem::find(&b[search..], b" [") else {
                return Err(ParseError::new(ErrorKind::Client, 0));
            };
            let i = search + i;
            let start = b[..i].iter().rposition(|&c| c == b' ').map_or(0, |p| p + 1);
            if let Some(ip) = client_addr(&line[start..i]) {
                break (ip, i + 2);
            }
            search = i + 2;
        };
        let Some(rb) = memchr::memchr(b']', &b[pos..]) else {
            return Err(ParseError::new(ErrorKind::Time, pos));
        };
        let time =
            time::parse_clf(&line[pos..pos + rb], self.utc_offset_s).ok_or(ParseError::new(ErrorKind::Time, pos))?;
        pos += rb + 1;
        let mut fields = Fields { line, pos };
        let _frontend = fields.next()?;
        let _backend_server = fields.next()?;
        let (timers, timers_at) = (fields.next()?, fields.pos);
        let (st, st_at) = (fields.next()?, fields.pos);
        let (by, by_at) = (fields.next()?, fields.pos);
        // HAProxy logs -1 when there was no response (client aborted, bad request).
        let status = if st == "-1" {
            0
        } else {
            text::status(st.as_bytes()).ok_or(ParseError::new(ErrorKind::Status, st_at))?
        };
        let bytes = text::bytes(by.as_bytes()).ok_or(ParseError::new(ErrorKind::Bytes, by_at))?;
        let request_time = timers
            .rsplit('/')
            .next()
            .and_then(|t| t.trim_start_matches('+').parse::<i64>().ok())
            .filter(|&ms| ms >= 0)
            .map(|ms| ms as f32 / 1000.0);
        if request_time.is_none() && timers.split('/').count() < 4 {
            return Err(ParseError::new(ErrorKind::Shape, timers_at));
        }
        for _ in 0..5 {
            // captured request cookie, captured response cookie, termination state, conn counts, queues
            fields.next()?;
        }
        let mut pos = fields.pos;
        let mut blocks: [Option<&str>; 2] = [None, None];
        for slot in &mut blocks {
            while b.get(pos) == Some(&b' ') {
                pos += 1;
            }
            if b.get(pos) != Some(&b'{') {
                break;
            }
            let Some(end) = memchr::memchr(b'}', &b[pos..]) else {
                return Err(ParseError::new(ErrorKind::Shape, pos));
            };
            *slot = Some(&line[pos + 1..pos + end]);
            pos += end + 1;
        }
        while b.get(pos) == Some(&b' ') {
            pos += 1;
        }
        if b.get(pos) != Some(&b'"') {
            return Err(ParseError::new(ErrorKind::Truncated, pos));
        }
        pos += 1;
        // HAProxy truncates long request lines and may drop the closing quote.
        let q = closing_quote(&b[pos..]).unwrap_or(b.len() - pos);
        let req = split_request(unescape(&line[pos..pos + q], Escape::Log));
        let (mut host, mut user_agent, mut referer) = (None, None, None);
        if let Some(captured) = blocks[0] {
            for (name, value) in self.request_headers.iter().zip(captured.split('|')) {
                let v = dash_none(unescape(value, Escape::Log));
                match name.as_str() {
                    "host" => host = v,
                    "user-agent" => user_agent = v,
                    "referer" => referer = v,
                    _ => {}
                }
            }
        }
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
            request_time,
            referer,
            user_agent: user_agent.map(|u: Cow<'_, str>| u),
        })
    }
}

/// Space-separated fields after the accept date.
struct Fields<'a> {
    line: &'a str,
    pos: usize,
}

impl<'a> Fields<'a> {
    fn next(&mut self) -> Result<&'a str, ParseError> {
        let b = self.line.as_bytes();
        while b.get(self.pos) == Some(&b' ') {
            self.pos += 1;
        }
        if self.pos >= b.len() {
            return Err(ParseError::new(ErrorKind::Truncated, self.pos));
        }
        let start = self.pos;
        let end = memchr::memchr(b' ', &b[start..]).map_or(b.len(), |i| start + i);
        self.pos = end;
        Ok(&self.line[start..end])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hp() -> Haproxy {
        Haproxy { request_headers: vec!["host".into(), "user-agent".into()], utc_offset_s: 0 }
    }

    #[test]
    fn syslog_line_with_captures() {
        let l = r#"Feb  6 12:14:14 localhost haproxy[14389]: 10.0.1.2:33317 [06/Feb/2009:12:14:14.655] http-in static/srv1 10/0/30/69/109 200 2750 - - ---- 1/1/1/1/0 0/0 {1wt.eu|Mozilla/5.0} {} "GET /index.html?x=1 HTTP/1.1""#;
        let e = hp().parse(l).unwrap();
        assert_eq!(e.client.to_string(), "10.0.1.2");
        assert_eq!(e.time.to_string(), "2009-02-06T12:14:14.655Z");
        assert_eq!((e.status, e.bytes), (200, 2750));
        assert_eq!(e.request_time, Some(0.109));
        assert_eq!((&*e.path, e.query.as_deref()), ("/index.html", Some("x=1")));
        assert_eq!(e.host.as_deref(), Some("1wt.eu"));
        assert_eq!(e.user_agent.as_deref(), Some("Mozilla/5.0"));
    }

    #[test]
    fn raw_ipv6_no_captures_and_aborts() {
        let l = r#"2001:db8::5:40000 [06/Feb/2009:12:14:14.655] fe~ be/<NOSRV> 0/-1/-1/-1/+3 -1 0 - - CR-- 1/1/0/0/0 0/0 "<BADREQ>""#;
        let e = Haproxy::default().parse(l).unwrap();
        assert_eq!(e.client.to_string(), "2001:db8::5");
        assert_eq!(e.status, 0);
        assert_eq!(e.request_time, Some(0.003));
        assert_eq!(e.method, "");
        assert_eq!(e.path, "<BADREQ>");
    }

    #[test]
    fn errors() {
        let h = hp();
        assert_eq!(h.parse("").unwrap_err().kind, ErrorKind::Empty);
        assert_eq!(h.parse("no client here [x]").unwrap_err().kind, ErrorKind::Client);
        assert_eq!(h.parse("1.2.3.4:5 [06/Feb/2009]").unwrap_err().kind, ErrorKind::Time);
        assert_eq!(
            h.parse("1.2.3.4:5 [06/Feb/2009:12:14:14.655] fe be/s 1/2/3/4/5").unwrap_err().kind,
            ErrorKind::Truncated
        );
        assert_eq!(
            h.parse("1.2.3.4:5 [06/Feb/2009:12:14:14.655] fe be/s 1/2/3/4/5 OK 1 - - ---- 1/1/1/1/0 0/0 \"GET /\"")
                .unwrap_err()
                .kind,
            ErrorKind::Status
        );
    }
}
