//! Log parsers: one line of text in, one [`Line`] (or a counted [`ParseError`]) out: a
//! [`RequestEvent`] from an access log, an [`ErrorLogEvent`] from a web server's error log.
//!
//! Formats: nginx/Apache `combined` and `common` (and Apache `vhost_combined`), JSON lines
//! (nginx `escape=json` and the usual field names), HAProxy's HTTP log, and any custom nginx
//! `log_format`, compiled from the operator's own definition; any of them inside a syslog frame
//! (RFC 3164 or 5424, [`syslog`]). Parsing never panics and never allocates unless a value had
//! to be unescaped.
//!
//! **Architecture Invariant:** no I/O here; callers hand in lines.

mod clf;
mod error;
mod errorlog;
mod haproxy;
mod json;
mod nginx;
pub mod syslog;
mod text;
pub mod time;

use serde::{Deserialize, Serialize};

pub use error::{ErrorKind, FormatError, ParseError};
pub use haproxy::Haproxy;
pub use nginx::NginxFormat;
pub use roost_event::{ErrorLogEvent, ErrorLogKind, RequestEvent, Timestamp};

/// What one line said.
#[derive(Clone, Debug, PartialEq)]
pub enum Line<'a> {
    /// An access-log line: one request.
    Request(RequestEvent<'a>),
    /// An error-log line naming a client and what it did wrong.
    Error(ErrorLogEvent<'a>),
    /// A well-formed error-log line about nothing roost judges (a missing file, a notice).
    Unjudged,
}

/// Which log format a source writes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FormatKind {
    /// Guess from the first lines of each source ([`detect`] says how).
    #[default]
    Auto,
    /// nginx/Apache combined (also accepts common and vhost_combined).
    Combined,
    /// Apache/NCSA common: combined without referer and user agent.
    Common,
    /// One JSON object per line.
    Json,
    /// HAProxy `option httplog`.
    Haproxy,
    /// A custom nginx `log_format`, given in [`LogFormatConfig::log_format`].
    Nginx,
    /// nginx's error log (`error_log`).
    NginxError,
    /// Apache's error log (`ErrorLog`), 2.2 or 2.4.
    ApacheError,
}

/// How to read one log source: the `format` and what it needs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogFormatConfig {
    pub format: FormatKind,
    /// The nginx `log_format` directive, pasted as it stands in nginx.conf (format `nginx`).
    pub log_format: Option<String>,
    /// HAProxy: the captured request headers (`capture request header NAME`), in order.
    pub haproxy_request_headers: Vec<String>,
    /// HAProxy logs local time without a zone: the box's offset from UTC, e.g. `+0100`.
    pub haproxy_utc_offset: Option<String>,
    /// Every line is inside a syslog frame (RFC 3164 or 5424), as nginx's `access_log
    /// syslog:server=…` or rsyslog writes it. With `format = "auto"` this is detected.
    pub syslog: bool,
    /// Error logs write local time without a zone: the box's offset from UTC, e.g. `+0100`.
    pub utc_offset: Option<String>,
}

/// A ready parser for one format.
#[derive(Clone, Debug)]
pub enum Parser {
    Clf,
    Json,
    Haproxy(Haproxy),
    Nginx(NginxFormat),
    /// nginx's error log; the box's offset from UTC in seconds.
    NginxError(i64),
    /// Apache's error log; the box's offset from UTC in seconds.
    ApacheError(i64),
    /// The inner format inside a syslog frame.
    Syslog(Box<Parser>),
}

impl Parser {
    /// Builds the parser a config asks for. `Auto` needs sample lines: use [`detect`].
    pub fn from_config(cfg: &LogFormatConfig) -> Result<Parser, FormatError> {
        let inner = Parser::unframed(cfg)?;
        // HAProxy's parser finds its line after any header itself
        Ok(if cfg.syslog && !matches!(inner, Parser::Haproxy(_)) { Parser::Syslog(Box::new(inner)) } else { inner })
    }

    fn unframed(cfg: &LogFormatConfig) -> Result<Parser, FormatError> {
        Ok(match cfg.format {
            FormatKind::Auto | FormatKind::Combined | FormatKind::Common => Parser::Clf,
            FormatKind::Json => Parser::Json,
            FormatKind::Haproxy => {
                let utc_offset_s = match &cfg.haproxy_utc_offset {
                    None => 0,
                    Some(z) => {
                        parse_offset(z).ok_or_else(|| FormatError::UnknownFormat(format!("haproxy_utc_offset {z}")))?
                    }
                };
                Parser::Haproxy(Haproxy {
                    request_headers: cfg.haproxy_request_headers.iter().map(|h| h.to_ascii_lowercase()).collect(),
                    utc_offset_s,
                })
            }
            FormatKind::Nginx => {
                Parser::Nginx(NginxFormat::compile(cfg.log_format.as_deref().ok_or(FormatError::MissingDefinition)?)?)
            }
            FormatKind::NginxError => Parser::NginxError(utc_offset(cfg)?),
            FormatKind::ApacheError => Parser::ApacheError(utc_offset(cfg)?),
        })
    }

    /// Parses one line (without its newline), of any format.
    #[inline]
    pub fn parse_line<'a>(&self, line: &'a str) -> Result<Line<'a>, ParseError> {
        match self {
            Parser::NginxError(offset) => errorlog::parse_nginx(line, *offset),
            Parser::ApacheError(offset) => errorlog::parse_apache(line, *offset),
            Parser::Syslog(inner) if inner.is_error_log() => {
                let (message, offset) = unframe(line)?;
                inner.parse_line(message).map_err(|e| ParseError::new(e.kind, e.at + offset))
            }
            _ => self.parse(line).map(Line::Request),
        }
    }

    /// Whether this parser reads an error log (lines give [`Line::Error`], not requests).
    pub fn is_error_log(&self) -> bool {
        match self {
            Parser::NginxError(_) | Parser::ApacheError(_) => true,
            Parser::Syslog(inner) => inner.is_error_log(),
            _ => false,
        }
    }

    /// Parses one access-log line (without its newline). An error-log parser gives a `Shape`
    /// error: read those with [`Parser::parse_line`].
    #[inline]
    pub fn parse<'a>(&self, line: &'a str) -> Result<RequestEvent<'a>, ParseError> {
        match self {
            Parser::Clf => clf::parse(line),
            Parser::Json => json::parse(line),
            Parser::Haproxy(h) => h.parse(line),
            Parser::Nginx(n) => n.parse(line),
            Parser::NginxError(_) | Parser::ApacheError(_) => Err(ParseError::new(ErrorKind::Shape, 0)),
            Parser::Syslog(inner) => {
                let (message, offset) = unframe(line)?;
                inner.parse(message).map_err(|e| ParseError::new(e.kind, e.at + offset))
            }
        }
    }

    /// The format's name, for summaries.
    pub fn name(&self) -> &'static str {
        match self {
            Parser::Clf => "combined",
            Parser::Json => "json",
            Parser::Haproxy(_) => "haproxy",
            Parser::Nginx(_) => "nginx log_format",
            Parser::NginxError(_) => "nginx error log",
            Parser::ApacheError(_) => "apache error log",
            Parser::Syslog(inner) => match **inner {
                Parser::Clf => "combined in syslog",
                Parser::Json => "json in syslog",
                Parser::Haproxy(_) => "haproxy",
                Parser::Nginx(_) => "nginx log_format in syslog",
                Parser::NginxError(_) => "nginx error log in syslog",
                Parser::ApacheError(_) => "apache error log in syslog",
                Parser::Syslog(_) => "syslog",
            },
        }
    }
}

/// The message inside a syslog frame, and where it starts in the line.
fn unframe(line: &str) -> Result<(&str, usize), ParseError> {
    let frame = syslog::frame(line).ok_or(ParseError::new(ErrorKind::Shape, 0))?;
    Ok((frame.message, frame.message.as_ptr() as usize - line.as_ptr() as usize))
}

fn utc_offset(cfg: &LogFormatConfig) -> Result<i64, FormatError> {
    match &cfg.utc_offset {
        None => Ok(0),
        Some(z) => parse_offset(z).ok_or_else(|| FormatError::UnknownFormat(format!("utc_offset {z}"))),
    }
}

fn parse_offset(z: &str) -> Option<i64> {
    let z = z.trim();
    let (sign, rest) = match z.as_bytes().first()? {
        b'+' => (1, &z[1..]),
        b'-' => (-1, &z[1..]),
        _ => (1, z),
    };
    let rest = rest.replace(':', "");
    if rest.len() != 4 || !rest.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let h: i64 = rest[..2].parse().ok()?;
    let m: i64 = rest[2..].parse().ok()?;
    (h < 24 && m < 60).then_some(sign * (h * 3600 + m * 60))
}

/// Lines [`detect`] looks at, at most: the first this many non-empty ones.
pub const DETECT_LINES: usize = 20;

/// No built-in format parses any of a source's first lines.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "cannot tell the log format from its first lines ({lines} looked at); set the format (combined, common, json, haproxy, nginx_error, apache_error) or an nginx log_format"
)]
pub struct Undetected {
    /// Non-empty lines looked at.
    pub lines: usize,
}

/// The one format-detection policy, for every reader of logs (`roost replay`, `roost tail`,
/// `roost up`): a source whose format is `auto` is judged by the lines there are when it is first
/// read — its first [`DETECT_LINES`] non-empty lines, or fewer when that is all it has — and
/// gets the built-in format that parses most of them (ties to the more common format; a format
/// inside a syslog frame counts as a format of its own, after the unframed ones). When none
/// parses any, [`Undetected`]: `roost replay` stops with it; the daemons log it and read the
/// source as combined, so no line vanishes (each that does not parse is counted as malformed,
/// and `roost tail` dead-letters it).
pub fn detect<'a>(sample: impl IntoIterator<Item = &'a str>) -> Result<Parser, Undetected> {
    let candidates = [
        Parser::Clf,
        Parser::Json,
        Parser::Haproxy(Haproxy::default()),
        Parser::NginxError(0),
        Parser::ApacheError(0),
        Parser::Syslog(Box::new(Parser::Clf)),
        Parser::Syslog(Box::new(Parser::Json)),
        Parser::Syslog(Box::new(Parser::NginxError(0))),
    ];
    let mut ok = [0usize; 8];
    let mut lines = 0;
    for line in sample.into_iter().filter(|l| !l.trim().is_empty()).take(DETECT_LINES) {
        lines += 1;
        for (i, p) in candidates.iter().enumerate() {
            ok[i] += p.parse_line(line).is_ok() as usize;
        }
    }
    let best = (0..candidates.len()).max_by_key(|&i| (ok[i], std::cmp::Reverse(i))).expect("candidates");
    if ok[best] == 0 {
        return Err(Undetected { lines });
    }
    Ok(candidates[best].clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detection() {
        let clf = r#"1.2.3.4 - - [10/Oct/2000:13:55:36 +0000] "GET / HTTP/1.1" 200 1 "-" "x""#;
        let json = r#"{"remote_addr":"1.2.3.4","time_local":"10/Oct/2000:13:55:36 +0000","request":"GET / HTTP/1.1","status":200}"#;
        let hap =
            r#"1.2.3.4:5 [06/Feb/2009:12:14:14.655] fe be/s 1/2/3/4/5 200 1 - - ---- 1/1/1/1/0 0/0 "GET / HTTP/1.1""#;
        assert!(matches!(detect([clf, clf, "junk"]), Ok(Parser::Clf)));
        assert!(matches!(detect([json, "", json]), Ok(Parser::Json)));
        assert!(matches!(detect([hap]), Ok(Parser::Haproxy(_))));
        // a syslog header in front: the format inside it, framed
        let framed = format!("<190>Mar  3 10:15:02 web-1 nginx: {clf}");
        let framed5424 = format!("<190>1 2026-03-03T10:15:02Z web-1 nginx 812 - - {json}");
        let p = detect([framed.as_str(), framed.as_str()]).unwrap();
        assert!(matches!(&p, Parser::Syslog(i) if matches!(**i, Parser::Clf)), "{p:?}");
        assert_eq!(p.parse(&framed).unwrap().client.to_string(), "1.2.3.4");
        assert_eq!(p.name(), "combined in syslog");
        let p = detect([framed5424.as_str()]).unwrap();
        assert!(matches!(&p, Parser::Syslog(i) if matches!(**i, Parser::Json)), "{p:?}");
        // HAProxy's own syslog header is HAProxy's
        let hap_sys = format!("Feb  6 12:14:14 localhost haproxy[14389]: {hap}");
        assert!(matches!(detect([hap_sys.as_str()]), Ok(Parser::Haproxy(_))));
        // error logs, bare and framed
        let nginx_err =
            r#"2026/03/03 10:15:02 [error] 812#812: *1 user "admin": password mismatch, client: 192.0.2.7, server: x"#;
        let apache_err =
            "[Tue Mar 03 10:15:02 2026] [auth_basic:error] [pid 1] [client 192.0.2.7:5] AH01618: user x not found: /";
        assert!(matches!(detect([nginx_err, nginx_err]), Ok(Parser::NginxError(0))));
        assert!(matches!(detect([apache_err]), Ok(Parser::ApacheError(0))));
        let framed_err = format!("<187>Mar  3 10:15:02 web-1 nginx: {nginx_err}");
        let p = detect([framed_err.as_str()]).unwrap();
        assert!(p.is_error_log() && p.name() == "nginx error log in syslog", "{p:?}");
        assert!(matches!(p.parse_line(&framed_err), Ok(Line::Error(e)) if e.kind == ErrorLogKind::WrongPassword));
        assert_eq!(Parser::NginxError(0).parse(nginx_err).unwrap_err().kind, ErrorKind::Shape, "not a request");
        // an error in the framed line is placed in the whole line
        let e = p.parse("<190>1 2026-03-03T10:15:02Z web-1 nginx 812 - - {\"x\"").unwrap_err();
        assert!(e.at > 40, "{e:?}");
        assert_eq!(p.parse(clf).unwrap_err().kind, ErrorKind::Shape);
        assert_eq!(detect(["junk", "more junk"]).unwrap_err(), Undetected { lines: 2 });
        assert_eq!(detect([]).unwrap_err(), Undetected { lines: 0 });
        // the window is the first DETECT_LINES non-empty lines: what comes after does not count
        let late: Vec<&str> = std::iter::repeat_n("junk", DETECT_LINES).chain([clf, clf]).collect();
        assert_eq!(detect(late).unwrap_err(), Undetected { lines: DETECT_LINES });
    }

    #[test]
    fn config() {
        let cfg = LogFormatConfig { format: FormatKind::Nginx, ..Default::default() };
        assert_eq!(Parser::from_config(&cfg).unwrap_err(), FormatError::MissingDefinition);
        let cfg = LogFormatConfig {
            format: FormatKind::Haproxy,
            haproxy_utc_offset: Some("+01:00".into()),
            haproxy_request_headers: vec!["Host".into()],
            ..Default::default()
        };
        match Parser::from_config(&cfg).unwrap() {
            Parser::Haproxy(h) => assert_eq!((h.utc_offset_s, h.request_headers), (3600, vec!["host".to_owned()])),
            _ => panic!(),
        }
        assert_eq!(parse_offset("-0530"), Some(-19_800));
        assert_eq!(parse_offset("+25:00"), None);
    }
}
