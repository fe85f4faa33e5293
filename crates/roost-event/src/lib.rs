//! The request event: one HTTP request as an access-log line described it.
//!
//! Parsers (`roost-logformat`) produce it, the engine (`roost-engine`) consumes it, and the
//! Kafka pipeline carries it (`roost_wire`: the versioned message schemas). Text fields borrow from
//! the line they were parsed from where possible ([`Cow`]), so parsing a line allocates only
//! when it has to unescape something.

use std::borrow::Cow;
use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// A point in time as Unix milliseconds (UTC).
///
/// roost never reads the clock inside its engine: every event carries its own time and every
/// call that needs "now" takes one of these.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Timestamp(pub i64);

impl Timestamp {
    /// From whole Unix seconds.
    pub const fn from_secs(secs: i64) -> Self {
        Timestamp(secs * 1000)
    }
    /// Whole Unix seconds (floor).
    pub const fn secs(self) -> i64 {
        self.0.div_euclid(1000)
    }
    /// Unix milliseconds.
    pub const fn millis(self) -> i64 {
        self.0
    }
    /// This time plus `ms` milliseconds.
    pub const fn add_millis(self, ms: i64) -> Self {
        Timestamp(self.0.saturating_add(ms))
    }
}

impl fmt::Display for Timestamp {
    /// RFC 3339 in UTC, with milliseconds only when they are not zero.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.secs();
        let ms = self.0.rem_euclid(1000);
        let days = secs.div_euclid(86_400);
        let sod = secs.rem_euclid(86_400);
        let (y, m, d) = civil_from_days(days);
        write!(f, "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}", sod / 3600, (sod / 60) % 60, sod % 60)?;
        if ms != 0 {
            write!(f, ".{ms:03}")?;
        }
        f.write_str("Z")
    }
}

/// A time as nginx's `$time_local` writes it, in UTC: `02/Dec/2026:04:35:52 +0000`.
pub struct TimeLocal(pub Timestamp);

impl fmt::Display for TimeLocal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
        let secs = self.0.secs();
        let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
        let sod = secs.rem_euclid(86_400);
        write!(f, "{d:02}/{}/{y}:{:02}:{:02}:{:02} +0000", MONTHS[m as usize - 1], sod / 3600, sod / 60 % 60, sod % 60)
    }
}

/// A value as nginx's default log escaping writes it: `"`, `\\` and bytes outside printable
/// ASCII as `\xHH` (what `roost_logformat` unescapes).
pub fn nginx_escaped(s: &str) -> std::borrow::Cow<'_, str> {
    if s.bytes().all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\') {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for b in s.bytes() {
        if (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\' {
            out.push(b as char);
        } else {
            out.push_str(&format!("\\x{b:02X}"));
        }
    }
    std::borrow::Cow::Owned(out)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
pub const fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = m as i64;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day number since 1970-01-01 (inverse of [`days_from_civil`]).
pub const fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// One HTTP request, as the access log recorded it.
///
/// Optional fields are `None` when the log format does not carry them (the common format has
/// no user agent; only some formats record the request time or the host).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RequestEvent<'a> {
    /// When the request was logged.
    pub time: Timestamp,
    /// The client address as the web server saw it.
    pub client: IpAddr,
    /// `GET`, `POST`, … Empty when the request line could not be split (garbage, TLS on a
    /// plain-HTTP port); the raw line is then in `path`.
    #[serde(borrow)]
    pub method: Cow<'a, str>,
    /// The `Host` header or server name, when logged.
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub host: Option<Cow<'a, str>>,
    /// The request target up to `?`, as sent (not percent-decoded).
    #[serde(borrow)]
    pub path: Cow<'a, str>,
    /// The query string after `?`, without the `?`.
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub query: Option<Cow<'a, str>>,
    /// `HTTP/1.1`, `HTTP/2.0`, … Empty for HTTP/0.9-style or garbage request lines.
    #[serde(borrow)]
    pub protocol: Cow<'a, str>,
    /// The response status code (0 when the server logged none, e.g. HAProxy's `-1`).
    pub status: u16,
    /// Response body bytes.
    pub bytes: u64,
    /// Time the server took, in seconds, when the format records it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_time: Option<f32>,
    /// The `Referer` header, when logged and not `-`.
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub referer: Option<Cow<'a, str>>,
    /// The `User-Agent` header, when logged and not `-`.
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<Cow<'a, str>>,
}

impl RequestEvent<'_> {
    /// A copy that owns all its text, for sending across threads or keeping.
    pub fn into_owned(self) -> RequestEvent<'static> {
        fn own(c: Cow<'_, str>) -> Cow<'static, str> {
            Cow::Owned(c.into_owned())
        }
        RequestEvent {
            time: self.time,
            client: self.client,
            method: own(self.method),
            host: self.host.map(own),
            path: own(self.path),
            query: self.query.map(own),
            protocol: own(self.protocol),
            status: self.status,
            bytes: self.bytes,
            request_time: self.request_time,
            referer: self.referer.map(own),
            user_agent: self.user_agent.map(own),
        }
    }

    /// The request target as sent: path plus `?query`.
    pub fn target(&self) -> Cow<'_, str> {
        match &self.query {
            Some(q) => Cow::Owned(format!("{}?{}", self.path, q)),
            None => Cow::Borrowed(&self.path),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_round_trip() {
        for days in [-719_468, -1, 0, 1, 16_572, 20_000, 2_932_896] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days, "{y}-{m}-{d}");
        }
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
    }

    #[test]
    fn timestamp_display() {
        assert_eq!(Timestamp::from_secs(0).to_string(), "1970-01-01T00:00:00Z");
        assert_eq!(Timestamp(1_431_856_003_250).to_string(), "2015-05-17T09:46:43.250Z");
        assert_eq!(Timestamp(-1).to_string(), "1969-12-31T23:59:59.999Z");
    }

    #[test]
    fn event_round_trips_through_json() {
        let ev = RequestEvent {
            time: Timestamp::from_secs(1_700_000_000),
            client: "2001:db8::7".parse().unwrap(),
            method: "GET".into(),
            host: Some("example.org".into()),
            path: "/a b".into(),
            query: Some("q=1".into()),
            protocol: "HTTP/1.1".into(),
            status: 404,
            bytes: 12,
            request_time: Some(0.25),
            referer: None,
            user_agent: Some("curl/8".into()),
        };
        let json = serde_json::to_string(&ev).unwrap();
        let back: RequestEvent<'_> = serde_json::from_str(&json).unwrap();
        assert_eq!(back, ev);
        assert_eq!(ev.target(), "/a b?q=1");
    }
}

/// What a web server's error log says a client did wrong, by kind. A closed set: each has its
/// weight in the engine's config (`[engine.error_log]`) and a stable label for metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorLogKind {
    /// HTTP basic auth named a user the password file does not have (nginx `user "x" was not
    /// found in "…"`, Apache `AH01618`).
    UnknownUser,
    /// HTTP basic auth with a wrong password (nginx `password mismatch`, Apache `AH01617`).
    WrongPassword,
    /// A request over a rate limit (nginx `limiting requests, excess: … by zone`, `limiting
    /// connections by zone`).
    RateLimited,
    /// A request no client sends by accident (nginx `client sent invalid request`, `… invalid
    /// method`, `… too long URI`…; Apache `AH00126: Invalid URI in request`).
    InvalidRequest,
    /// A failed login at nginx's mail proxy (`client login failed`).
    MailLoginFailed,
}

impl ErrorLogKind {
    pub const ALL: [ErrorLogKind; 5] = [
        ErrorLogKind::UnknownUser,
        ErrorLogKind::WrongPassword,
        ErrorLogKind::RateLimited,
        ErrorLogKind::InvalidRequest,
        ErrorLogKind::MailLoginFailed,
    ];

    /// A stable label (metrics, evidence sources: `errorlog:unknown_user`).
    pub fn label(self) -> &'static str {
        match self {
            ErrorLogKind::UnknownUser => "unknown_user",
            ErrorLogKind::WrongPassword => "wrong_password",
            ErrorLogKind::RateLimited => "rate_limited",
            ErrorLogKind::InvalidRequest => "invalid_request",
            ErrorLogKind::MailLoginFailed => "mail_login_failed",
        }
    }
}

/// One error-log line that names a client and something it did wrong.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorLogEvent<'a> {
    pub time: Timestamp,
    pub client: IpAddr,
    /// (`"error"` on the wire: `"kind"` tells message kinds apart there.)
    #[serde(rename = "error")]
    pub kind: ErrorLogKind,
    /// `nginx` or `apache`.
    #[serde(borrow)]
    pub server: Cow<'a, str>,
    /// The server's message, as logged (without the client/server/request/host suffix).
    #[serde(borrow)]
    pub message: Cow<'a, str>,
    /// The request line, when the server logged it.
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub request: Option<Cow<'a, str>>,
}

impl ErrorLogEvent<'_> {
    pub fn into_owned(self) -> ErrorLogEvent<'static> {
        ErrorLogEvent {
            time: self.time,
            client: self.client,
            kind: self.kind,
            server: Cow::Owned(self.server.into_owned()),
            message: Cow::Owned(self.message.into_owned()),
            request: self.request.map(|r| Cow::Owned(r.into_owned())),
        }
    }
}
