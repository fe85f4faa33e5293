//! Syslog framing around a log line: what nginx's `access_log syslog:server=…`, rsyslog,
//! syslog-ng and journald put in front of the line the web server wrote.
//!
//! ```text
//! <190>Mar  3 10:15:02 web-1 nginx: 192.0.2.7 - - [03/Mar/2026:10:15:02 +0000] "GET / HTTP/1.1" 200 …
//! Mar  3 10:15:02 web-1 nginx[812]: 192.0.2.7 - - […]                   (RFC 3164, rsyslog's file format)
//! <190>Mar  3 10:15:02 nginx: 192.0.2.7 - - […]                         (nginx's `nohostname`)
//! 2026-03-03T10:15:02.123456+00:00 web-1 nginx[812]: 192.0.2.7 - - […]  (rsyslog RFC 3339 time, journalctl -o short-iso)
//! <190>1 2026-03-03T10:15:02.003Z web-1 nginx 812 - - 192.0.2.7 - - […] (RFC 5424, structured data `-` or `[…]`)
//! ```
//!
//! The priority (`<PRI>`) is optional everywhere. The frame's time is not used: the line inside
//! has its own, in the web server's words. The host and program are kept ([`Frame`]).

/// Which syslog header a line has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rfc {
    /// BSD syslog: `Mmm dd hh:mm:ss` (or an RFC 3339 time, as rsyslog and journald write it),
    /// host, `program[pid]:`.
    Rfc3164,
    /// `VERSION TIMESTAMP HOST APP PROCID MSGID STRUCTURED-DATA MSG`.
    Rfc5424,
}

/// A syslog header taken apart, and the line it carried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Frame<'a> {
    pub rfc: Rfc,
    /// The sending host, when the header names one.
    pub host: Option<&'a str>,
    /// The program (`nginx`, `apache2`, `httpd`…), without its `[pid]`.
    pub program: Option<&'a str>,
    /// What the program wrote.
    pub message: &'a str,
}

const MONTHS: [&[u8; 3]; 12] =
    [b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec"];

/// The header of a syslog-framed line, or `None` when the line has none.
pub fn frame(line: &str) -> Option<Frame<'_>> {
    let rest = strip_pri(line)?;
    if let Some(after) = rest.strip_prefix("1 ")
        && let Some(f) = rfc5424(after)
    {
        return Some(f);
    }
    rfc3164(rest)
}

/// `<PRI>` (1–3 digits, at most 191), when there is one.
fn strip_pri(line: &str) -> Option<&str> {
    let Some(rest) = line.strip_prefix('<') else { return Some(line) };
    let end = rest.find('>')?;
    let digits = &rest[..end];
    if digits.is_empty() || digits.len() > 3 || !digits.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    (digits.parse::<u16>().ok()? <= 191).then_some(&rest[end + 1..])
}

/// `TIMESTAMP HOST APP PROCID MSGID SD MSG` (after `VERSION `).
fn rfc5424(s: &str) -> Option<Frame<'_>> {
    let (time, s) = s.split_once(' ')?;
    if time != "-" && !rfc3339(time) {
        return None;
    }
    let (host, s) = s.split_once(' ')?;
    let (app, s) = s.split_once(' ')?;
    let (_procid, s) = s.split_once(' ')?;
    let (_msgid, s) = s.split_once(' ')?;
    let message = if let Some(s) = s.strip_prefix('-') {
        s.strip_prefix(' ').unwrap_or(s)
    } else if s.starts_with('[') {
        let end = structured_data_end(s)?;
        let m = &s[end..];
        m.strip_prefix(' ').unwrap_or(m)
    } else {
        return None;
    };
    let message = message.strip_prefix('\u{feff}').unwrap_or(message);
    let nil = |v: &'_ str| (v != "-").then_some(());
    Some(Frame { rfc: Rfc::Rfc5424, host: nil(host).map(|()| host), program: nil(app).map(|()| app), message })
}

/// The end of one or more `[id param="value" …]` elements (values may hold escaped `"`, `]`, `\`).
fn structured_data_end(s: &str) -> Option<usize> {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() && b[i] == b'[' {
        let mut quoted = false;
        i += 1;
        loop {
            let c = *b.get(i)?;
            match c {
                b'\\' if quoted => i += 1,
                b'"' => quoted = !quoted,
                b']' if !quoted => break,
                _ => {}
            }
            i += 1;
        }
        i += 1;
    }
    Some(i)
}

/// `2026-03-03T10:15:02Z`, with fractions and an offset (`+00:00`, `+0000`).
fn rfc3339(t: &str) -> bool {
    let b = t.as_bytes();
    b.len() >= 20
        && b[..4].iter().all(u8::is_ascii_digit)
        && b[4] == b'-'
        && b[7] == b'-'
        && b[10] == b'T'
        && b[13] == b':'
        && b[16] == b':'
        && b[5..7].iter().chain(&b[8..10]).chain(&b[11..13]).chain(&b[14..16]).chain(&b[17..19]).all(u8::is_ascii_digit)
        && matches!(b.last(), Some(c) if *c == b'Z' || c.is_ascii_digit())
}

/// `Mmm dd hh:mm:ss` (the day space-padded) followed by a space: the rest.
fn bsd_time(s: &str) -> Option<&str> {
    let b = s.as_bytes();
    if b.len() < 16 || !MONTHS.iter().any(|m| &b[..3] == *m) || b[3] != b' ' {
        return None;
    }
    let day_ok = (b[4] == b' ' || b[4].is_ascii_digit()) && b[5].is_ascii_digit();
    let clock = &b[7..15];
    let clock_ok =
        clock[2] == b':' && clock[5] == b':' && [0, 1, 3, 4, 6, 7].iter().all(|&i| clock[i].is_ascii_digit());
    (day_ok && b[6] == b' ' && clock_ok && b[15] == b' ').then(|| &s[16..])
}

/// `TIME [HOST] TAG: MSG`.
fn rfc3164(s: &str) -> Option<Frame<'_>> {
    let rest = match bsd_time(s) {
        Some(r) => r,
        None => {
            let (time, r) = s.split_once(' ')?;
            if !rfc3339(time) {
                return None;
            }
            r
        }
    };
    // `TAG:` right away (no host, as nginx's `nohostname` writes), or `HOST TAG:`
    let (first, after_first) = rest.split_once(' ')?;
    let (host, tag, message) = if let Some(tag) = first.strip_suffix(':') {
        (None, tag, after_first)
    } else {
        let (second, message) = after_first.split_once(' ')?;
        let tag = second.strip_suffix(':')?;
        (Some(first), tag, message)
    };
    let program = tag.split_once('[').map_or(tag, |(p, _)| p);
    if program.is_empty() || !program.bytes().all(|c| c.is_ascii_graphic()) {
        return None;
    }
    Some(Frame { rfc: Rfc::Rfc3164, host, program: Some(program), message })
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINE: &str = r#"192.0.2.7 - - [03/Mar/2026:10:15:02 +0000] "GET / HTTP/1.1" 200 5 "-" "curl/8""#;

    fn check(framed: &str, rfc: Rfc, host: Option<&str>, program: Option<&str>) {
        let f = frame(framed).unwrap_or_else(|| panic!("no frame in {framed:?}"));
        assert_eq!(f, Frame { rfc, host, program, message: LINE }, "{framed}");
    }

    #[test]
    fn the_frames_in_use() {
        check(&format!("<190>Mar  3 10:15:02 web-1 nginx: {LINE}"), Rfc::Rfc3164, Some("web-1"), Some("nginx"));
        check(&format!("Mar  3 10:15:02 web-1 nginx[812]: {LINE}"), Rfc::Rfc3164, Some("web-1"), Some("nginx"));
        check(&format!("Mar 13 10:15:02 web-1 nginx[812]: {LINE}"), Rfc::Rfc3164, Some("web-1"), Some("nginx"));
        check(&format!("<190>Mar  3 10:15:02 nginx: {LINE}"), Rfc::Rfc3164, None, Some("nginx"));
        check(
            &format!("2026-03-03T10:15:02.123456+00:00 web-1 apache2[77]: {LINE}"),
            Rfc::Rfc3164,
            Some("web-1"),
            Some("apache2"),
        );
        check(
            &format!("2026-03-03T10:15:02+0000 web-1 nginx[812]: {LINE}"),
            Rfc::Rfc3164,
            Some("web-1"),
            Some("nginx"),
        );
        check(
            &format!("<190>1 2026-03-03T10:15:02.003Z web-1 nginx 812 - - {LINE}"),
            Rfc::Rfc5424,
            Some("web-1"),
            Some("nginx"),
        );
        check(
            &format!("1 2026-03-03T10:15:02Z web-1 nginx - access - {LINE}"),
            Rfc::Rfc5424,
            Some("web-1"),
            Some("nginx"),
        );
        check(
            &format!(
                r#"<165>1 2026-03-03T10:15:02Z web-1 nginx 812 ID47 [ex@32473 iut="3" a="x\"]y"][b@1 c="d"] {LINE}"#
            ),
            Rfc::Rfc5424,
            Some("web-1"),
            Some("nginx"),
        );
        check(&format!("<165>1 - - - - - - \u{feff}{LINE}"), Rfc::Rfc5424, None, None);
    }

    #[test]
    fn lines_without_a_frame() {
        for line in [
            LINE,
            r#"{"remote_addr":"192.0.2.7"}"#,
            "",
            "<999>Mar  3 10:15:02 web-1 nginx: x",
            "<19x>Mar  3 10:15:02 web-1 nginx: x",
            "Mar  3 10:15:02",
            "Mar  3 10:15:02 web-1 nginx x",
            "Foo  3 10:15:02 web-1 nginx: x",
            "1 2026-03-03T10:15:02Z web-1 nginx 812 - [unterminated x",
            "2026/03/03 10:15:02 [error] 812#812: *1 something",
        ] {
            assert_eq!(frame(line), None, "{line:?}");
        }
    }
}
