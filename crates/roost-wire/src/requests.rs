//! The requests and dead-letter topics (version 1).
//!
//! - `roost.requests`: key = the client's subject ([`subject_key`]: the IPv4 address, or the
//!   IPv6 prefix clients are aggregated by, so one client always lands in one partition);
//!   value = the [`RequestEvent`] as JSON with `"v":1` first:
//!   `{"v":1,"time":1764064800000,"client":"203.0.113.7","method":"GET","path":"/","status":200,…}`.
//! - The requests topic also carries evidence that did not come with a request (network-level
//!   evidence from `roost flows`), keyed the same way so it lands in the client's partition and
//!   is scored in offset order with its requests: `{"v":1,"kind":"evidence","time":…,
//!   "client":"203.0.113.7","source":"flow:portscan","penalty":10.0,"verdict":"dubious",
//!   "ttl_ms":1800000,"detail":"touched 312 ports on 192.0.2.0/24 in 60 s (NetFlow)"}`
//!   ([`EvidenceEvent`]); [`decode_message`] tells the two apart.
//! - `roost.deadletter`: key = the source file; value = [`DeadLetter`] as JSON.
//!
//! A reader refuses any other version rather than guess.

use std::net::{IpAddr, Ipv6Addr};

use serde::{Deserialize, Serialize};

use roost_engine::{Class, Evidence, Source};
use roost_event::{ErrorLogEvent, RequestEvent, Timestamp};

const V1: &[u8] = b"{\"v\":1,";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("empty record")]
    Empty,
    #[error("not a version-1 request event (starts {0:?})")]
    Version(String),
    #[error("not a request event: {0}")]
    Json(#[from] serde_json::Error),
    #[error("not usable evidence: {0}")]
    Evidence(String),
}

/// The Kafka key for a client: its subject, as the engine names it (`roost_engine::subject_name`).
pub fn subject_key(ip: IpAddr, ipv6_prefix: u8) -> String {
    match ip {
        IpAddr::V4(_) => ip.to_string(),
        IpAddr::V6(v6) => {
            let len = ipv6_prefix.min(128);
            if len == 128 {
                return v6.to_string();
            }
            let mask = if len == 0 { 0 } else { u128::MAX << (128 - len) };
            format!("{}/{len}", Ipv6Addr::from(u128::from(v6) & mask))
        }
    }
}

/// A request event as a requests-topic value.
pub fn encode_request(ev: &RequestEvent<'_>) -> Vec<u8> {
    encode_request_from(ev, None)
}

/// A request event as a requests-topic value, with the `origin` of its line (see [`Origin`]).
pub fn encode_request_from(ev: &RequestEvent<'_>, origin: Option<&Origin>) -> Vec<u8> {
    tagged(V1, &serde_json::to_vec(ev).expect("an event serializes"), origin)
}

/// `head` (`{"v":1,…,`), then `"origin":…,` when there is one, then the object `json` without its `{`.
fn tagged(head: &[u8], json: &[u8], origin: Option<&Origin>) -> Vec<u8> {
    let mut out = Vec::with_capacity(json.len() + head.len() + 80);
    out.extend_from_slice(head);
    if let Some(o) = origin {
        out.extend_from_slice(b"\"origin\":");
        serde_json::to_writer(&mut out, &o.to_string()).expect("a string serializes");
        out.push(b',');
    }
    out.extend_from_slice(&json[1..]);
    out
}

/// Where a published line came from: `roost tail`'s host, the followed path, the file's device
/// and inode and the byte offset where the line began. In a requests-topic or dead-letter value
/// as `"origin":"host\tpath\tdev\tino\toffset"`. A restarted tail reads back what was written
/// after its checkpoint and leaves out lines whose origin is already there.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Origin {
    pub host: String,
    pub file: String,
    pub dev: u64,
    pub ino: u64,
    pub offset: u64,
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}\t{}\t{}\t{}\t{}", self.host, self.file, self.dev, self.ino, self.offset)
    }
}

impl std::str::FromStr for Origin {
    type Err = ();
    fn from_str(s: &str) -> Result<Origin, ()> {
        let mut it = s.split('\t');
        let mut next = || it.next().ok_or(());
        let (host, file) = (next()?.to_owned(), next()?.to_owned());
        let num = |s: &str| s.parse::<u64>().map_err(|_| ());
        let (dev, ino, offset) = (num(next()?)?, num(next()?)?, num(next()?)?);
        Ok(Origin { host, file, dev, ino, offset })
    }
}

/// The origin in a requests-topic or dead-letter value, if it has one.
pub fn origin_of(value: &[u8]) -> Option<Origin> {
    #[derive(Deserialize)]
    struct Only<'a> {
        #[serde(borrow, default)]
        origin: Option<std::borrow::Cow<'a, str>>,
    }
    serde_json::from_slice::<Only<'_>>(value).ok()?.origin?.parse().ok()
}

/// A requests-topic value as an event (borrowing from it where no unescaping was needed).
pub fn decode_request(value: &[u8]) -> Result<RequestEvent<'_>, Error> {
    if !value.starts_with(V1) {
        return Err(Error::Version(String::from_utf8_lossy(&value[..value.len().min(16)]).into_owned()));
    }
    Ok(serde_json::from_slice(value)?)
}

const V1_EVIDENCE: &[u8] = b"{\"v\":1,\"kind\":\"evidence\",";

/// Evidence about a client that did not come with a request (see the module docs).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvidenceEvent {
    pub time: Timestamp,
    pub client: IpAddr,
    /// `kind:id`, e.g. `flow:portscan`.
    pub source: String,
    /// Pseudo-requests of negative evidence (as [`Evidence::penalty`]).
    pub penalty: f32,
    /// An immediate verdict (`dubious`, `bad`) for `ttl_ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_ms: Option<u64>,
    /// The reason in words and numbers.
    pub detail: String,
}

impl EvidenceEvent {
    /// The engine's evidence, checked: a known source kind, a verdict only with its time to live,
    /// a finite penalty.
    pub fn evidence(&self) -> Result<Evidence, String> {
        let (kind, id) =
            self.source.split_once(':').ok_or_else(|| format!("source {:?} is not kind:id", self.source))?;
        let verdict = match (&self.verdict, self.ttl_ms) {
            (Some(c), Some(ttl)) => Some((c.parse::<Class>()?, std::time::Duration::from_millis(ttl))),
            (Some(_), None) => return Err("a verdict without ttl_ms".into()),
            _ => None,
        };
        if !self.penalty.is_finite() {
            return Err("penalty is not a number".into());
        }
        Ok(Evidence {
            source: Source::new(kind.parse()?, id),
            penalty: self.penalty,
            verdict,
            detail: self.detail.clone(),
        })
    }
}

/// An evidence event as a requests-topic value.
pub fn encode_evidence(e: &EvidenceEvent) -> Vec<u8> {
    let json = serde_json::to_vec(e).expect("evidence serializes");
    let mut out = Vec::with_capacity(json.len() + V1_EVIDENCE.len());
    out.extend_from_slice(V1_EVIDENCE);
    out.extend_from_slice(&json[1..]);
    out
}

const V1_ERRORLOG: &[u8] = b"{\"v\":1,\"kind\":\"errorlog\",";

/// An error-log event as a requests-topic value, with the `origin` of its line (see [`Origin`]).
pub fn encode_error_from(ev: &ErrorLogEvent<'_>, origin: Option<&Origin>) -> Vec<u8> {
    tagged(V1_ERRORLOG, &serde_json::to_vec(ev).expect("an event serializes"), origin)
}

/// What a requests-topic record holds.
#[derive(Debug)]
pub enum Message<'a> {
    Request(RequestEvent<'a>),
    Evidence(EvidenceEvent),
    /// What a web server's error log said of a client (`roost tail` reading an error log).
    ErrorLog(ErrorLogEvent<'a>),
}

/// A requests-topic value: a request event or an evidence event.
pub fn decode_message(value: &[u8]) -> Result<Message<'_>, Error> {
    if value.starts_with(V1_EVIDENCE) {
        #[derive(Deserialize)]
        struct Tagged {
            #[serde(flatten)]
            e: EvidenceEvent,
        }
        return Ok(Message::Evidence(serde_json::from_slice::<Tagged>(value)?.e));
    }
    if value.starts_with(V1_ERRORLOG) {
        #[derive(Deserialize)]
        struct Tagged<'a> {
            #[serde(borrow, flatten)]
            e: ErrorLogEvent<'a>,
        }
        return Ok(Message::ErrorLog(serde_json::from_slice::<Tagged<'_>>(value)?.e));
    }
    decode_request(value).map(Message::Request)
}

/// A line that did not parse, kept with where it came from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    pub v: u32,
    /// The host `roost tail` runs on.
    pub host: String,
    pub file: String,
    /// Parse-error kind (bounded set) and message.
    pub kind: String,
    pub error: String,
    /// The raw line (invalid UTF-8 replaced).
    pub line: String,
    /// Where the line was (see [`Origin`]), as text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
}

#[cfg(test)]
mod evidence_tests {
    use super::*;

    #[test]
    fn error_log_events_round_trip_with_their_origin() {
        let e = ErrorLogEvent {
            time: roost_event::Timestamp(1_700_000_000_000),
            client: "192.0.2.7".parse().unwrap(),
            kind: roost_event::ErrorLogKind::WrongPassword,
            server: "nginx".into(),
            message: "user \"admin\": password mismatch".into(),
            request: Some("GET /admin HTTP/1.1".into()),
        };
        let origin = Origin { host: "h".into(), file: "/var/log/nginx/error.log".into(), dev: 1, ino: 2, offset: 3 };
        let v = encode_error_from(&e, Some(&origin));
        match decode_message(&v).unwrap() {
            Message::ErrorLog(back) => assert_eq!(back, e),
            other => panic!("{other:?}"),
        }
        assert_eq!(origin_of(&v), Some(origin));
        assert!(decode_request(&v).is_err(), "not a request");
    }

    #[test]
    fn evidence_round_trips_and_is_told_from_requests() {
        let e = EvidenceEvent {
            time: Timestamp(1_764_000_000_000),
            client: "203.0.113.7".parse().unwrap(),
            source: "flow:portscan".into(),
            penalty: 10.0,
            verdict: Some("dubious".into()),
            ttl_ms: Some(1_800_000),
            detail: "touched 312 ports on 192.0.2.0/24 in 60 s (NetFlow)".into(),
        };
        let v = encode_evidence(&e);
        assert!(v.starts_with(b"{\"v\":1,\"kind\":\"evidence\","));
        match decode_message(&v).unwrap() {
            Message::Evidence(back) => assert_eq!(back, e),
            r => panic!("{r:?}"),
        }
        // a request event is not mistaken for evidence, and evidence is not a request event
        assert!(decode_request(&v).is_err());
        let ev = e.evidence().unwrap();
        assert_eq!(ev.source.to_string(), "flow:portscan");
        assert_eq!(ev.verdict, Some((Class::Dubious, std::time::Duration::from_secs(1800))));
        let bad = |f: fn(&mut EvidenceEvent)| {
            let mut x = e.clone();
            f(&mut x);
            x.evidence().unwrap_err()
        };
        assert!(bad(|x| x.source = "portscan".into()).contains("kind:id"));
        assert!(bad(|x| x.source = "nonsense:x".into()).contains("unknown evidence source kind"));
        assert!(bad(|x| x.ttl_ms = None).contains("without ttl_ms"));
        assert!(bad(|x| x.penalty = f32::NAN).contains("not a number"));
    }
}

#[cfg(test)]
mod subject_tests {
    use proptest::prelude::*;
    use roost_engine::{Engine, EngineConfig, subject_name};

    use super::subject_key;

    proptest! {
        /// The Kafka key `roost tail` gives a client is the subject the engine files it under, so
        /// one client's requests always meet in one partition's engine.
        #[test]
        fn the_wire_key_is_the_engines_subject(bits in any::<u128>(), v4 in any::<u32>(), prefix in 1u8..=128) {
            let e = Engine::new(EngineConfig { ipv6_prefix: prefix, ..EngineConfig::default() }).unwrap();
            for ip in [std::net::IpAddr::from(std::net::Ipv6Addr::from(bits)), std::net::IpAddr::from(std::net::Ipv4Addr::from(v4))] {
                prop_assert_eq!(subject_name(e.subject_of(ip)), subject_key(ip, prefix));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_other_versions() {
        let ev = RequestEvent {
            time: Timestamp(1_764_064_800_000),
            client: "2001:db8::7".parse().unwrap(),
            method: "GET".into(),
            host: Some("shop.example".into()),
            path: "/a \"quoted\" path".into(),
            query: Some("q=1".into()),
            protocol: "HTTP/1.1".into(),
            status: 404,
            bytes: 153,
            request_time: Some(0.004),
            referer: None,
            user_agent: Some("curl/8".into()),
        };
        let v = encode_request(&ev);
        assert!(v.starts_with(br#"{"v":1,"time":1764064800000,"client":"2001:db8::7""#));
        assert_eq!(decode_request(&v).unwrap(), ev);
        assert!(matches!(decode_request(br#"{"v":2,"time":1}"#), Err(Error::Version(_))));
        assert!(matches!(decode_request(br#"{"v":1,"time":"x"}"#), Err(Error::Json(_))));
        assert_eq!(subject_key("2001:db8:1:2:3::7".parse().unwrap(), 64), "2001:db8:1:2::/64");
        let o = Origin { host: "web1".into(), file: "/var/log/a \"b\".log".into(), dev: 2049, ino: 77, offset: 123 };
        let with = encode_request_from(&ev, Some(&o));
        assert!(with.starts_with(br#"{"v":1,"origin":"web1\t/var/log/a \"b\".log\t2049\t77\t123","time""#));
        assert_eq!(decode_request(&with).unwrap(), ev);
        assert_eq!(origin_of(&with), Some(o));
        assert_eq!(origin_of(&v), None);
        assert_eq!(subject_key("203.0.113.7".parse().unwrap(), 64), "203.0.113.7");
    }
}
