//! Parsers for the feed formats. Untrusted input: a bad line is counted and sampled, never fatal;
//! whether a body with many bad lines is acceptable is validation's call (`validate`).

use std::fmt;
use std::net::IpAddr;

use ipnetwork::IpNetwork;
use serde::Deserialize;

use crate::def::{CsvLayout, FeedFormat};

/// One listed network and what the publisher says about it (an SBL id, a malware family).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FeedEntry {
    /// Normalised: the network address with the host bits cleared.
    pub net: IpNetwork,
    pub detail: Option<Box<str>>,
}

/// Why a line was not an entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LineErrorKind {
    /// Neither an address nor a CIDR.
    NotAnAddress,
    /// A CIDR with a prefix length beyond 32 or 128.
    BadPrefix,
    /// A structured record (CSV, JSON) that does not have the expected shape.
    BadRecord,
}

impl LineErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            LineErrorKind::NotAnAddress => "not_an_address",
            LineErrorKind::BadPrefix => "bad_prefix",
            LineErrorKind::BadRecord => "bad_record",
        }
    }
}

/// A line that was not an entry (the first few are kept, with their text, for the logs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LineError {
    /// 1-based line (or record) number.
    pub line: usize,
    pub kind: LineErrorKind,
    pub text: String,
}

impl fmt::Display for LineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}: {:?}", self.line, self.kind.as_str(), self.text)
    }
}

/// What a body held.
#[derive(Clone, Debug, Default)]
pub struct Parsed {
    /// In the body's order, duplicates removed (the first wins).
    pub entries: Vec<FeedEntry>,
    /// Lines that held something: entries, errors and duplicates (comments and blanks excluded).
    pub records: usize,
    pub duplicates: usize,
    pub errors: usize,
    /// The first [`Parsed::SAMPLES`] errors.
    pub samples: Vec<LineError>,
    /// For paged APIs: the next page to fetch.
    pub next_page: Option<String>,
}

impl Parsed {
    pub const SAMPLES: usize = 8;

    fn error(&mut self, line: usize, kind: LineErrorKind, text: &str) {
        self.errors += 1;
        self.records += 1;
        if self.samples.len() < Self::SAMPLES {
            self.samples.push(LineError { line, kind, text: text.chars().take(120).collect() });
        }
    }

    fn entry(&mut self, seen: &mut hashbrown::HashSet<IpNetwork>, net: IpNetwork, detail: Option<&str>) {
        self.records += 1;
        if seen.insert(net) {
            self.entries.push(FeedEntry { net, detail: detail.filter(|d| !d.is_empty()).map(Into::into) });
        } else {
            self.duplicates += 1;
        }
    }

    /// Appends another page's entries (paged APIs), keeping entries unique.
    pub fn extend(&mut self, other: Parsed) {
        let mut seen: hashbrown::HashSet<IpNetwork> = self.entries.iter().map(|e| e.net).collect();
        let offset = self.records;
        for e in other.entries {
            self.entry(&mut seen, e.net, e.detail.as_deref());
        }
        self.duplicates += other.duplicates;
        self.records += other.duplicates;
        self.errors += other.errors;
        self.records += other.errors;
        for mut s in other.samples {
            if self.samples.len() < Self::SAMPLES {
                s.line += offset;
                self.samples.push(s);
            }
        }
        self.next_page = other.next_page;
    }
}

/// Parses one body (one page) in `format`.
pub fn parse(format: FeedFormat, csv: Option<&CsvLayout>, body: &[u8]) -> Parsed {
    let text = String::from_utf8_lossy(body);
    match format {
        FeedFormat::Netset => lines(&text, |l| (strip_comment(l, &['#', ';']), None)),
        FeedFormat::Spamhaus => lines(&text, |l| {
            let l = l.trim();
            if l.starts_with(';') || l.starts_with('#') {
                return ("", None);
            }
            match l.split_once(';') {
                Some((cidr, sbl)) => (cidr.trim(), Some(sbl.trim())),
                None => (l, None),
            }
        }),
        FeedFormat::SpamhausJson => spamhaus_json(&text),
        FeedFormat::Csv => parse_csv(&text, csv.cloned().unwrap_or_default()),
        FeedFormat::Threatexchange => threatexchange(body),
        FeedFormat::IpRanges => ip_ranges(body),
    }
}

/// Google's and Bing's published crawler ranges.
fn ip_ranges(body: &[u8]) -> Parsed {
    #[derive(Deserialize)]
    struct Doc {
        prefixes: Vec<serde_json::Value>,
    }
    let mut out = Parsed::default();
    let doc: Doc = match serde_json::from_slice(body) {
        Ok(d) => d,
        Err(e) => {
            out.error(1, LineErrorKind::BadRecord, &e.to_string());
            return out;
        }
    };
    let mut seen = hashbrown::HashSet::new();
    for (i, p) in doc.prefixes.iter().enumerate() {
        let cidr = p.get("ipv4Prefix").or_else(|| p.get("ipv6Prefix")).and_then(|v| v.as_str());
        match cidr.map(parse_net) {
            Some(Ok(net)) => out.entry(&mut seen, net, None),
            Some(Err(kind)) => out.error(i + 1, kind, &p.to_string()),
            None => out.error(i + 1, LineErrorKind::BadRecord, &p.to_string()),
        }
    }
    out
}

/// Parses an address or CIDR, normalising the network address.
pub fn parse_net(s: &str) -> Result<IpNetwork, LineErrorKind> {
    let s = s.trim();
    match s.split_once('/') {
        None => s.parse::<IpAddr>().map(IpNetwork::from).map_err(|_| LineErrorKind::NotAnAddress),
        Some((addr, len)) => {
            let addr: IpAddr = addr.parse().map_err(|_| LineErrorKind::NotAnAddress)?;
            let len: u8 = len.parse().map_err(|_| LineErrorKind::BadPrefix)?;
            let net = IpNetwork::new(addr, len).map_err(|_| LineErrorKind::BadPrefix)?;
            IpNetwork::new(net.network(), len).map_err(|_| LineErrorKind::BadPrefix)
        }
    }
}

fn strip_comment<'a>(line: &'a str, marks: &[char]) -> &'a str {
    let line = match line.find(marks) {
        Some(i) => &line[..i],
        None => line,
    };
    // FireHOL-style lists may carry a trailing note after whitespace.
    line.split_whitespace().next().unwrap_or("")
}

fn lines<'a>(text: &'a str, mut split: impl FnMut(&'a str) -> (&'a str, Option<&'a str>)) -> Parsed {
    let mut out = Parsed::default();
    let mut seen = hashbrown::HashSet::new();
    for (i, line) in text.lines().enumerate() {
        let (addr, detail) = split(line);
        if addr.is_empty() {
            continue;
        }
        match parse_net(addr) {
            Ok(net) => out.entry(&mut seen, net, detail),
            Err(kind) => out.error(i + 1, kind, line),
        }
    }
    out
}

fn spamhaus_json(text: &str) -> Parsed {
    #[derive(Deserialize)]
    struct Line<'a> {
        #[serde(borrow)]
        cidr: Option<std::borrow::Cow<'a, str>>,
        #[serde(borrow)]
        sblid: Option<std::borrow::Cow<'a, str>>,
        #[serde(rename = "type")]
        kind: Option<std::borrow::Cow<'a, str>>,
    }
    let mut out = Parsed::default();
    let mut seen = hashbrown::HashSet::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        match serde_json::from_str::<Line<'_>>(line) {
            Ok(Line { kind: Some(k), .. }) if k == "metadata" => {}
            Ok(Line { cidr: Some(c), sblid, .. }) => match parse_net(&c) {
                Ok(net) => out.entry(&mut seen, net, sblid.as_deref()),
                Err(kind) => out.error(i + 1, kind, line),
            },
            _ => out.error(i + 1, LineErrorKind::BadRecord, line),
        }
    }
    out
}

fn parse_csv(text: &str, layout: CsvLayout) -> Parsed {
    let mut out = Parsed::default();
    let mut seen = hashbrown::HashSet::new();
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .comment(Some(b'#'))
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(text.as_bytes());
    for rec in reader.records() {
        match rec {
            Ok(rec) => {
                let line = rec.position().map_or(0, |p| p.line() as usize);
                if rec.iter().all(str::is_empty) {
                    continue;
                }
                let detail = layout.detail_column.and_then(|c| rec.get(c));
                match rec.get(layout.column).map(parse_net) {
                    Some(Ok(net)) => out.entry(&mut seen, net, detail),
                    Some(Err(kind)) => out.error(line, kind, &rec.iter().collect::<Vec<_>>().join(",")),
                    None => out.error(line, LineErrorKind::BadRecord, &rec.iter().collect::<Vec<_>>().join(",")),
                }
            }
            Err(e) => {
                let line = e.position().map_or(0, |p| p.line() as usize);
                out.error(line, LineErrorKind::BadRecord, &e.to_string());
            }
        }
    }
    out
}

/// One page of `GET /threat_descriptors?type=IP_ADDRESS`: descriptors whose status is
/// `NON_MALICIOUS` are not listings; the others are, with their status and description as detail.
fn threatexchange(body: &[u8]) -> Parsed {
    #[derive(Deserialize)]
    struct Page {
        #[serde(default)]
        data: Vec<serde_json::Value>,
        #[serde(default)]
        paging: Option<Paging>,
    }
    #[derive(Deserialize)]
    struct Paging {
        next: Option<String>,
    }
    let mut out = Parsed::default();
    let page: Page = match serde_json::from_slice(body) {
        Ok(p) => p,
        Err(e) => {
            out.error(1, LineErrorKind::BadRecord, &e.to_string());
            return out;
        }
    };
    let mut seen = hashbrown::HashSet::new();
    for (i, d) in page.data.iter().enumerate() {
        let kind = d.get("type").and_then(|v| v.as_str()).unwrap_or("IP_ADDRESS");
        if kind != "IP_ADDRESS" {
            continue;
        }
        let status = d.get("status").and_then(|v| v.as_str()).unwrap_or("UNKNOWN");
        if status == "NON_MALICIOUS" {
            continue;
        }
        let raw = d
            .get("raw_indicator")
            .and_then(|v| v.as_str())
            .or_else(|| d.get("indicator").and_then(|i| i.get("indicator")).and_then(|v| v.as_str()));
        let Some(raw) = raw else {
            out.error(i + 1, LineErrorKind::BadRecord, &d.to_string());
            continue;
        };
        let description = d.get("description").and_then(|v| v.as_str()).unwrap_or("");
        let detail = if description.is_empty() {
            status.to_owned()
        } else {
            format!("{status}: {}", description.chars().take(80).collect::<String>())
        };
        match parse_net(raw) {
            Ok(net) => out.entry(&mut seen, net, Some(&detail)),
            Err(kind) => out.error(i + 1, kind, raw),
        }
    }
    out.next_page = page.paging.and_then(|p| p.next).filter(|n| n.starts_with("https://"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(p: &Parsed) -> Vec<String> {
        p.entries.iter().map(|e| e.net.to_string()).collect()
    }

    #[test]
    fn netset_with_comments_v6_and_trailing_notes() {
        let body = b"# header\n\n1.2.3.4\n10.0.0.0/8 ; private\n2001:db8::/32\n5.6.7.8 # note\n5.6.7.8\n1.2.3.300\n9.9.9.9/33\n\r\n";
        let p = parse(FeedFormat::Netset, None, body);
        assert_eq!(nets(&p), ["1.2.3.4/32", "10.0.0.0/8", "2001:db8::/32", "5.6.7.8/32"]);
        assert_eq!((p.records, p.duplicates, p.errors), (7, 1, 2));
        assert_eq!(p.samples[0].kind, LineErrorKind::NotAnAddress);
        assert_eq!(p.samples[1].kind, LineErrorKind::BadPrefix);
    }

    #[test]
    fn host_bits_are_cleared() {
        assert_eq!(parse_net("192.0.2.77/24").unwrap().to_string(), "192.0.2.0/24");
        assert_eq!(parse_net("2001:db8::1/48").unwrap().to_string(), "2001:db8::/48");
    }

    #[test]
    fn spamhaus_text() {
        let body = b"; Spamhaus DROP List 2026/11/20 - (c) 2026 The Spamhaus Project SLU\n; Last-Modified: Thu, 20 Nov 2026 08:00:00 GMT\n; Expires: Thu, 20 Nov 2026 09:00:00 GMT\n1.10.16.0/20 ; SBL256894\n1.19.0.0/16 ; SBL434604\n2a06:e480::/29 ; SBL301771\n";
        let p = parse(FeedFormat::Spamhaus, None, body);
        assert_eq!(nets(&p), ["1.10.16.0/20", "1.19.0.0/16", "2a06:e480::/29"]);
        assert_eq!(p.entries[0].detail.as_deref(), Some("SBL256894"));
        assert_eq!(p.errors, 0);
    }

    #[test]
    fn spamhaus_json_lines() {
        let body = br#"{"cidr":"1.10.16.0/20","sblid":"SBL256894","rir":"apnic"}
{"cidr":"2a06:e480::/29","sblid":"SBL301771","rir":"ripencc"}
{"cidr":"nope","sblid":"SBL1","rir":"x"}
{"type":"metadata","timestamp":1763625600,"size":2,"records":2,"copyright":"(c) 2026 The Spamhaus Project SLU"}
"#;
        let p = parse(FeedFormat::SpamhausJson, None, body);
        assert_eq!(nets(&p), ["1.10.16.0/20", "2a06:e480::/29"]);
        assert_eq!(p.errors, 1);
    }

    #[test]
    fn abuse_ch_csv() {
        let body = b"################################################################\n# abuse.ch Feodo Tracker Botnet C2 IP Blocklist (CSV)          #\n#\n# \"first_seen_utc\",\"dst_ip\",\"dst_port\",\"c2_status\",\"last_online\",\"malware\"\n\"2026-11-17 07:30:05\",\"67.213.75.205\",\"443\",\"online\",\"2026-11-20\",\"QakBot\"\n\"2026-11-18 10:00:00\",\"2001:db8::7\",\"8080\",\"offline\",\"2026-11-19\",\"Emotet\"\n\"2026-11-18 10:00:00\",\"not-an-ip\",\"8080\",\"offline\",\"2026-11-19\",\"Emotet\"\n# Number of entries: 3\n";
        let layout = CsvLayout { column: 1, detail_column: Some(5) };
        let p = parse(FeedFormat::Csv, Some(&layout), body);
        assert_eq!(nets(&p), ["67.213.75.205/32", "2001:db8::7/128"]);
        assert_eq!(p.entries[0].detail.as_deref(), Some("QakBot"));
        assert_eq!(p.errors, 1);
        assert_eq!(p.samples[0].line, 7);
    }

    #[test]
    fn crawler_ranges() {
        let body = br#"{"creationTime":"2026-11-30T23:00:00.000000","prefixes":[{"ipv6Prefix":"2001:4860:4801:10::/64"},{"ipv4Prefix":"66.249.64.0/27"},{"ipv4Prefix":"66.249.64.999/27"},{"other":1}]}"#;
        let p = parse(FeedFormat::IpRanges, None, body);
        let nets: Vec<String> = p.entries.iter().map(|e| e.net.to_string()).collect();
        assert_eq!(nets, ["2001:4860:4801:10::/64", "66.249.64.0/27"]);
        assert_eq!(p.errors, 2);
        assert_eq!(parse(FeedFormat::IpRanges, None, b"<html>").errors, 1);
    }

    #[test]
    fn threatexchange_page() {
        let body = br#"{"data":[
 {"id":"1","raw_indicator":"203.0.113.9","type":"IP_ADDRESS","status":"MALICIOUS","description":"SSH brute force"},
 {"id":"2","indicator":{"id":"9","indicator":"2001:db8::/48","type":"IP_ADDRESS"},"type":"IP_ADDRESS","status":"SUSPICIOUS"},
 {"id":"3","raw_indicator":"198.51.100.1","type":"IP_ADDRESS","status":"NON_MALICIOUS"},
 {"id":"4","raw_indicator":"evil.example","type":"DOMAIN","status":"MALICIOUS"},
 {"id":"5","type":"IP_ADDRESS","status":"MALICIOUS"}
],"paging":{"cursors":{"before":"a","after":"b"},"next":"https://graph.facebook.com/v21.0/threat_descriptors?after=b"}}"#;
        let p = parse(FeedFormat::Threatexchange, None, body);
        assert_eq!(nets(&p), ["203.0.113.9/32", "2001:db8::/48"]);
        assert_eq!(p.entries[0].detail.as_deref(), Some("MALICIOUS: SSH brute force"));
        assert_eq!(p.errors, 1);
        assert!(p.next_page.as_deref().unwrap().contains("after=b"));
        let html = parse(FeedFormat::Threatexchange, None, b"<html>captive portal</html>");
        assert_eq!((html.entries.len(), html.errors), (0, 1));
    }

    #[test]
    fn pages_extend_without_duplicates() {
        let mut a = parse(FeedFormat::Netset, None, b"1.1.1.1\n2.2.2.2\n");
        let b = parse(FeedFormat::Netset, None, b"2.2.2.2\n3.3.3.3\nx\n");
        a.extend(b);
        assert_eq!(nets(&a), ["1.1.1.1/32", "2.2.2.2/32", "3.3.3.3/32"]);
        assert_eq!((a.records, a.duplicates, a.errors), (5, 1, 1));
    }
}
