//! JSON lines, as nginx writes them with `log_format … escape=json '{…}'` (and as most other
//! servers and shippers do). Field names vary between setups, so each field is recognised under
//! the names people actually use; where a line carries several names for one field, the earlier
//! name in each list wins. Unknown fields and nested objects are ignored.

use std::borrow::Cow;
use std::fmt;
use std::net::IpAddr;

use roost_event::RequestEvent;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Visitor};

use crate::error::{ErrorKind, ParseError};
use crate::text::{dash_none, split_request, split_target};
use crate::time;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Field {
    Client,
    Time,
    Request,
    Method,
    Uri,
    Path,
    Query,
    Protocol,
    Status,
    Bytes,
    RequestTime,
    UpstreamTime,
    Referer,
    UserAgent,
    Host,
}

const N_FIELDS: usize = 15;

/// (name, field, rank): lower rank wins when a line has several names for one field.
fn field_of(key: &str) -> Option<(Field, u8)> {
    use Field::*;
    Some(match key {
        "remote_addr" => (Client, 0),
        "client_ip" | "clientip" => (Client, 1),
        "client" | "ip" | "remote_ip" => (Client, 2),
        "time_iso8601" => (Time, 0),
        "time_local" => (Time, 1),
        "msec" => (Time, 2),
        "time" | "timestamp" | "@timestamp" | "ts" => (Time, 3),
        "request" | "request_line" => (Request, 0),
        "request_method" | "method" | "verb" => (Method, 0),
        "request_uri" => (Uri, 0),
        "uri" | "url" => (Path, 1),
        "path" => (Path, 2),
        "args" | "query_string" | "query" => (Query, 0),
        "server_protocol" | "protocol" | "httpversion" => (Protocol, 0),
        "status" | "status_code" | "response" => (Status, 0),
        "body_bytes_sent" => (Bytes, 0),
        "bytes_sent" | "bytes" | "size" | "response_size" => (Bytes, 1),
        "request_time" | "duration" | "request_duration" | "response_time" => (RequestTime, 0),
        "upstream_response_time" => (UpstreamTime, 0),
        "http_referer" | "referer" | "referrer" => (Referer, 0),
        "http_user_agent" | "user_agent" | "agent" | "useragent" => (UserAgent, 0),
        "host" | "http_host" => (Host, 0),
        "server_name" | "vhost" => (Host, 1),
        _ => return None,
    })
}

/// A JSON scalar, borrowed where the text needed no unescaping.
enum Scalar<'a> {
    Str(Cow<'a, str>),
    Num(f64),
    Null,
}

impl Scalar<'_> {
    fn text(&self) -> Option<Cow<'_, str>> {
        match self {
            Scalar::Str(s) => Some(Cow::Borrowed(&**s)),
            Scalar::Num(n) => Some(Cow::Owned(n.to_string())),
            Scalar::Null => None,
        }
    }
}

impl<'de> de::Deserialize<'de> for Scalar<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Scalar<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON scalar")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Scalar::Str(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Scalar::Str(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
                Ok(Scalar::Str(Cow::Owned(v)))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
                Ok(Scalar::Num(v as f64))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
                Ok(Scalar::Num(v as f64))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
                Ok(Scalar::Num(v))
            }
            fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
                Ok(Scalar::Null)
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(Scalar::Null)
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut a: A) -> Result<Self::Value, A::Error> {
                while a.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Scalar::Null)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Self::Value, A::Error> {
                while a.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Scalar::Null)
            }
        }
        d.deserialize_any(V)
    }
}

struct Fields<'a> {
    slots: [(u8, Option<Scalar<'a>>); N_FIELDS],
}

impl<'de> de::Deserialize<'de> for Fields<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Fields<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Self::Value, A::Error> {
                let mut out = Fields { slots: std::array::from_fn(|_| (u8::MAX, None)) };
                while let Some(key) = a.next_key::<Cow<'de, str>>()? {
                    match field_of(&key) {
                        Some((f, rank)) => {
                            let v: Scalar<'de> = a.next_value()?;
                            let slot = &mut out.slots[f as usize];
                            if rank < slot.0 && !matches!(v, Scalar::Null) {
                                *slot = (rank, Some(v));
                            }
                        }
                        None => {
                            a.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(out)
            }
        }
        d.deserialize_map(V)
    }
}

impl<'a> Fields<'a> {
    fn take(&mut self, f: Field) -> Option<Scalar<'a>> {
        self.slots[f as usize].1.take()
    }
    fn take_str(&mut self, f: Field) -> Option<Cow<'a, str>> {
        match self.take(f)? {
            Scalar::Str(s) => dash_none(s),
            Scalar::Num(n) => Some(Cow::Owned(n.to_string())),
            Scalar::Null => None,
        }
    }
}

pub fn parse(line: &str) -> Result<RequestEvent<'_>, ParseError> {
    let trimmed = line.trim();
    if trimmed.is_empty() {
        return Err(ParseError::new(ErrorKind::Empty, 0));
    }
    if !trimmed.starts_with('{') {
        return Err(ParseError::new(ErrorKind::Json, 0));
    }
    let mut f: Fields<'_> = serde_json::from_str(line).map_err(|e| {
        let at = line.lines().take(e.line().saturating_sub(1)).map(|l| l.len() + 1).sum::<usize>()
            + e.column().saturating_sub(1);
        ParseError::new(ErrorKind::Json, at)
    })?;
    let missing = |_| ParseError::new(ErrorKind::MissingField, 0);
    let client = f.take_str(Field::Client).ok_or(()).map_err(missing)?;
    let client: IpAddr = client.parse().map_err(|_| ParseError::new(ErrorKind::Client, 0))?;
    let time = match f.take(Field::Time).ok_or(()).map_err(missing)? {
        Scalar::Num(n) => time::epoch_number(n),
        Scalar::Str(s) => time::parse_any(&s),
        Scalar::Null => None,
    }
    .ok_or(ParseError::new(ErrorKind::Time, 0))?;
    let status = match f.take(Field::Status).ok_or(()).map_err(missing)? {
        Scalar::Num(n) if (0.0..1000.0).contains(&n) => n as u16,
        Scalar::Str(s) => crate::text::status(s.as_bytes()).ok_or(ParseError::new(ErrorKind::Status, 0))?,
        _ => return Err(ParseError::new(ErrorKind::Status, 0)),
    };
    let bytes = match f.take(Field::Bytes) {
        None | Some(Scalar::Null) => 0,
        Some(Scalar::Num(n)) if n >= 0.0 => n as u64,
        Some(Scalar::Str(s)) => crate::text::bytes(s.as_bytes()).ok_or(ParseError::new(ErrorKind::Bytes, 0))?,
        Some(Scalar::Num(_)) => return Err(ParseError::new(ErrorKind::Bytes, 0)),
    };
    let seconds = |s: Option<Scalar<'_>>| match s {
        Some(Scalar::Num(n)) if n >= 0.0 && n.is_finite() => Some(n as f32),
        Some(ref v @ Scalar::Str(_)) => v.text().and_then(|t| crate::text::seconds(&t)),
        _ => None,
    };
    let request_time = seconds(f.take(Field::RequestTime)).or_else(|| seconds(f.take(Field::UpstreamTime)));

    let (method, path, query, protocol) = if let Some(req) = f.take_str(Field::Request) {
        let r = split_request(req);
        let method = f.take_str(Field::Method).unwrap_or(r.method);
        (method, r.path, r.query, r.protocol)
    } else {
        let method = f.take_str(Field::Method).unwrap_or(Cow::Borrowed(""));
        let (path, mut query) = match f.take_str(Field::Uri).or_else(|| f.take_str(Field::Path)) {
            Some(t) => split_target(t),
            None => return Err(missing(())),
        };
        if query.is_none() {
            query = f.take_str(Field::Query);
        }
        let protocol = f.take_str(Field::Protocol).unwrap_or(Cow::Borrowed(""));
        (method, path, query, protocol)
    };
    Ok(RequestEvent {
        time,
        client,
        method,
        host: f.take_str(Field::Host),
        path,
        query,
        protocol,
        status,
        bytes,
        request_time,
        referer: f.take_str(Field::Referer),
        user_agent: f.take_str(Field::UserAgent),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nginx_escape_json() {
        let l = r#"{"time_iso8601":"2026-11-25T10:00:00+00:00","remote_addr":"2001:db8::1","request":"GET /search?q=%22x%22 HTTP/2.0","status":"200","body_bytes_sent":"512","request_time":"1.250","http_referer":"","http_user_agent":"Mozilla \"X\" \u00e9","host":"shop.example"}"#;
        let e = parse(l).unwrap();
        assert_eq!(e.client.to_string(), "2001:db8::1");
        assert_eq!(e.time.to_string(), "2026-11-25T10:00:00Z");
        assert_eq!(
            (&*e.method, &*e.path, e.query.as_deref(), &*e.protocol),
            ("GET", "/search", Some("q=%22x%22"), "HTTP/2.0")
        );
        assert_eq!((e.status, e.bytes, e.request_time), (200, 512, Some(1.25)));
        assert_eq!(e.referer, None);
        assert_eq!(e.user_agent.as_deref(), Some("Mozilla \"X\" é"));
        assert_eq!(e.host.as_deref(), Some("shop.example"));
    }

    #[test]
    fn split_fields_numbers_and_ranks() {
        let l = r#"{"msec":1764064800.5,"realip":"x","client_ip":"10.0.0.1","remote_addr":"192.0.2.4","request_method":"POST","request_uri":"/login?next=/","server_protocol":"HTTP/1.1","status":401,"bytes_sent":10,"upstream_response_time":"0.010, 0.020","nested":{"a":[1,2]}}"#;
        let e = parse(l).unwrap();
        assert_eq!(e.client.to_string(), "192.0.2.4");
        assert_eq!(e.time.0, 1_764_064_800_500);
        assert_eq!((&*e.method, &*e.path, e.query.as_deref()), ("POST", "/login", Some("next=/")));
        assert_eq!(e.status, 401);
        assert!((e.request_time.unwrap() - 0.03).abs() < 1e-6);
        let l = r#"{"ts":"17/May/2015:10:05:03 +0000","ip":"1.2.3.4","uri":"/a","args":"b=1","status":"404"}"#;
        let e = parse(l).unwrap();
        assert_eq!((&*e.path, e.query.as_deref(), e.bytes), ("/a", Some("b=1"), 0));
    }

    #[test]
    fn errors() {
        let cases: &[(&str, ErrorKind)] = &[
            ("", ErrorKind::Empty),
            ("not json", ErrorKind::Json),
            ("{\"remote_addr\":", ErrorKind::Json),
            ("{}", ErrorKind::MissingField),
            (
                r#"{"remote_addr":"nope","time":"2026-11-25T10:00:00Z","status":200,"request":"GET / HTTP/1.1"}"#,
                ErrorKind::Client,
            ),
            (
                r#"{"remote_addr":"1.2.3.4","time":"yesterday","status":200,"request":"GET / HTTP/1.1"}"#,
                ErrorKind::Time,
            ),
            (
                r#"{"remote_addr":"1.2.3.4","time":"2026-11-25T10:00:00Z","status":"2000","request":"GET / HTTP/1.1"}"#,
                ErrorKind::Status,
            ),
            (r#"{"remote_addr":"1.2.3.4","time":"2026-11-25T10:00:00Z","status":200}"#, ErrorKind::MissingField),
        ];
        for (line, kind) in cases {
            assert_eq!(parse(line).map(|_| ()).unwrap_err().kind, *kind, "{line:?}");
        }
    }
}
