//! Timestamps as access logs write them. Hand-written because they sit on the hot path
//! (a general-purpose date parser costs more than the rest of the line) and the shapes are fixed.

use roost_event::{Timestamp, days_from_civil};

#[inline]
fn digits<const N: usize>(b: &[u8]) -> Option<u32> {
    if b.len() < N {
        return None;
    }
    let mut v = 0u32;
    for &c in &b[..N] {
        let d = c.wrapping_sub(b'0');
        if d > 9 {
            return None;
        }
        v = v * 10 + d as u32;
    }
    Some(v)
}

#[inline]
fn month(b: &[u8]) -> Option<u32> {
    let m = match b {
        b"Jan" => 1,
        b"Feb" => 2,
        b"Mar" => 3,
        b"Apr" => 4,
        b"May" => 5,
        b"Jun" => 6,
        b"Jul" => 7,
        b"Aug" => 8,
        b"Sep" => 9,
        b"Oct" => 10,
        b"Nov" => 11,
        b"Dec" => 12,
        _ => return None,
    };
    Some(m)
}

fn valid(y: u32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> bool {
    (1..=12).contains(&mo) && (1..=31).contains(&d) && h < 24 && mi < 60 && s <= 60 && y >= 1
}

fn to_millis((y, mo, d): (u32, u32, u32), (h, mi, s, ms): (u32, u32, u32, u32), offset_s: i64) -> i64 {
    let days = days_from_civil(y as i64, mo, d);
    let secs = days * 86_400 + (h * 3600 + mi * 60 + s) as i64 - offset_s;
    secs * 1000 + ms as i64
}

/// Common Log Format time, as nginx `$time_local` and Apache `%t` write it:
/// `17/May/2015:10:05:03 +0000`. HAProxy's accept date `06/Feb/2009:12:14:14.655` (milliseconds,
/// no zone) is accepted too; a missing zone means `default_offset_s`.
pub fn parse_clf(s: &str, default_offset_s: i64) -> Option<Timestamp> {
    let b = s.as_bytes();
    if b.len() < 20 || b[2] != b'/' || b[6] != b'/' || b[11] != b':' || b[14] != b':' || b[17] != b':' {
        return None;
    }
    let d = digits::<2>(b)?;
    let mo = month(&b[3..6])?;
    let y = digits::<4>(&b[7..])?;
    let h = digits::<2>(&b[12..])?;
    let mi = digits::<2>(&b[15..])?;
    let sec = digits::<2>(&b[18..])?;
    if !valid(y, mo, d, h, mi, sec) {
        return None;
    }
    let mut rest = &b[20..];
    let mut ms = 0;
    if let Some((&b'.', frac)) = rest.split_first() {
        let n = frac.iter().take_while(|c| c.is_ascii_digit()).count();
        if n == 0 {
            return None;
        }
        ms = fraction_ms(&frac[..n]);
        rest = &frac[n..];
    }
    let offset = match rest {
        [] => default_offset_s,
        [b' ', zone @ ..] if zone.len() == 5 => zone_offset(zone)?,
        _ => return None,
    };
    Some(Timestamp(to_millis((y, mo, d), (h, mi, sec, ms), offset)))
}

fn fraction_ms(f: &[u8]) -> u32 {
    let mut ms = 0;
    for i in 0..3 {
        ms = ms * 10 + f.get(i).map_or(0, |c| (c - b'0') as u32);
    }
    ms
}

/// `+0100`, `-0700`, `+01:00`, `Z`.
fn zone_offset(z: &[u8]) -> Option<i64> {
    match z {
        b"Z" | b"z" => Some(0),
        [sign @ (b'+' | b'-'), rest @ ..] => {
            let (h, m) = match rest.len() {
                4 => (digits::<2>(rest)?, digits::<2>(&rest[2..])?),
                5 if rest[2] == b':' => (digits::<2>(rest)?, digits::<2>(&rest[3..])?),
                2 => (digits::<2>(rest)?, 0),
                _ => return None,
            };
            if h > 23 || m > 59 {
                return None;
            }
            let off = (h * 3600 + m * 60) as i64;
            Some(if *sign == b'-' { -off } else { off })
        }
        _ => None,
    }
}

/// ISO 8601 / RFC 3339, as nginx `$time_iso8601` writes it (`2026-11-25T10:00:00+00:00`), with
/// optional fractional seconds; `T` or a space between date and time; no zone means UTC.
pub fn parse_iso8601(s: &str) -> Option<Timestamp> {
    let b = s.as_bytes();
    if b.len() < 19
        || b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't' | b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let y = digits::<4>(b)?;
    let mo = digits::<2>(&b[5..])?;
    let d = digits::<2>(&b[8..])?;
    let h = digits::<2>(&b[11..])?;
    let mi = digits::<2>(&b[14..])?;
    let sec = digits::<2>(&b[17..])?;
    if !valid(y, mo, d, h, mi, sec) {
        return None;
    }
    let mut rest = &b[19..];
    let mut ms = 0;
    if let Some((&(b'.' | b','), frac)) = rest.split_first() {
        let n = frac.iter().take_while(|c| c.is_ascii_digit()).count();
        if n == 0 {
            return None;
        }
        ms = fraction_ms(&frac[..n]);
        rest = &frac[n..];
    }
    let offset = if rest.is_empty() { 0 } else { zone_offset(rest)? };
    Some(Timestamp(to_millis((y, mo, d), (h, mi, sec, ms), offset)))
}

/// Unix seconds with an optional fraction, as nginx `$msec` writes it (`1431856003.250`).
/// Values above 10^11 are taken as milliseconds (JSON loggers that write epoch millis).
pub fn parse_epoch(s: &str) -> Option<Timestamp> {
    let v: f64 = s.trim().parse().ok()?;
    epoch_number(v)
}

/// An epoch number in seconds, or in milliseconds when it is too large to be seconds.
pub fn epoch_number(v: f64) -> Option<Timestamp> {
    if !v.is_finite() || v < 0.0 {
        return None;
    }
    let ms = if v > 1e11 { v } else { v * 1000.0 };
    if ms > 1e16 {
        return None;
    }
    Some(Timestamp(ms.round() as i64))
}

/// Any of the above, tried in order of likelihood.
pub fn parse_any(s: &str) -> Option<Timestamp> {
    parse_iso8601(s).or_else(|| parse_clf(s, 0)).or_else(|| parse_epoch(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clf() {
        let t = parse_clf("17/May/2015:10:05:03 +0000", 0).unwrap();
        assert_eq!(t.to_string(), "2015-05-17T10:05:03Z");
        let t = parse_clf("10/Oct/2000:13:55:36 -0700", 0).unwrap();
        assert_eq!(t.to_string(), "2000-10-10T20:55:36Z");
        let t = parse_clf("06/Feb/2009:12:14:14.655", 3600).unwrap();
        assert_eq!(t.to_string(), "2009-02-06T11:14:14.655Z");
        for bad in [
            "",
            "17/May/2015",
            "17/Mai/2015:10:05:03 +0000",
            "32/May/2015:10:05:03 +0000",
            "17/May/2015:24:05:03 +0000",
            "17/May/2015:10:05:03 +00",
            "17/May/2015:10:05:03 0000",
            "1x/May/2015:10:05:03 +0000",
            "17/May/2015:10:05:03.",
        ] {
            assert_eq!(parse_clf(bad, 0), None, "{bad:?}");
        }
    }

    #[test]
    fn iso() {
        let t = parse_iso8601("2026-11-25T10:00:00+01:00").unwrap();
        assert_eq!(t.to_string(), "2026-11-25T09:00:00Z");
        let t = parse_iso8601("2026-11-25 10:00:00.5Z").unwrap();
        assert_eq!(t.to_string(), "2026-11-25T10:00:00.500Z");
        assert_eq!(parse_iso8601("2026-11-25T10:00:00").unwrap().secs(), 1_795_600_800);
        assert_eq!(parse_iso8601("2026-13-25T10:00:00Z"), None);
        assert_eq!(parse_iso8601("2026-11-25T10:00:00+1"), None);
    }

    #[test]
    fn epoch() {
        assert_eq!(parse_epoch("1431856003.250").unwrap().0, 1_431_856_003_250);
        assert_eq!(parse_epoch("1431856003250").unwrap().0, 1_431_856_003_250);
        assert_eq!(parse_epoch("-5"), None);
        assert_eq!(parse_epoch("nan"), None);
        assert_eq!(parse_any("17/May/2015:10:05:03 +0000").unwrap().secs(), 1_431_857_103);
    }
}

/// nginx's error-log time, local and without a zone: `2026/03/03 10:15:02`.
pub fn parse_nginx_error(s: &str, offset_s: i64) -> Option<Timestamp> {
    let b = s.as_bytes();
    if b.len() < 19 || b[4] != b'/' || b[7] != b'/' || b[10] != b' ' || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (y, mo, d) = (digits::<4>(b)?, digits::<2>(&b[5..])?, digits::<2>(&b[8..])?);
    let (h, mi, sec) = (digits::<2>(&b[11..])?, digits::<2>(&b[14..])?, digits::<2>(&b[17..])?);
    valid(y, mo, d, h, mi, sec).then(|| Timestamp(to_millis((y, mo, d), (h, mi, sec, 0), offset_s)))
}

/// Apache's error-log time, local and without a zone: `Tue Mar 03 10:15:02.123456 2026` (2.4)
/// or `Tue Mar 03 10:15:02 2026` (2.2).
pub fn parse_apache_error(s: &str, offset_s: i64) -> Option<Timestamp> {
    let b = s.as_bytes();
    if b.len() < 24 || b[3] != b' ' || b[7] != b' ' || b[10] != b' ' || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let mo = month(&b[4..7])?;
    let d = if b[8] == b' ' { digits::<1>(&b[9..])? } else { digits::<2>(&b[8..])? };
    let (h, mi, sec) = (digits::<2>(&b[11..])?, digits::<2>(&b[14..])?, digits::<2>(&b[17..])?);
    let mut i = 19;
    let mut ms = 0;
    if b[i] == b'.' {
        let end = b[i + 1..].iter().position(|c| !c.is_ascii_digit()).map_or(b.len(), |p| i + 1 + p);
        ms = fraction_ms(&b[i + 1..end]);
        i = end;
    }
    if b.get(i) != Some(&b' ') {
        return None;
    }
    let y = digits::<4>(&b[i + 1..])?;
    if b.len() != i + 5 {
        return None;
    }
    valid(y, mo, d, h, mi, sec).then(|| Timestamp(to_millis((y, mo, d), (h, mi, sec, ms), offset_s)))
}

#[cfg(test)]
mod error_log_tests {
    use super::*;

    #[test]
    fn error_log_times() {
        let t = Timestamp(to_millis((2026, 3, 3), (10, 15, 2, 0), 0));
        assert_eq!(parse_nginx_error("2026/03/03 10:15:02", 0), Some(t));
        assert_eq!(parse_nginx_error("2026/03/03 11:15:02", 3600), Some(t));
        assert_eq!(parse_nginx_error("2026/13/03 10:15:02", 0), None);
        assert_eq!(parse_apache_error("Tue Mar 03 10:15:02 2026", 0), Some(t));
        assert_eq!(parse_apache_error("Tue Mar  3 10:15:02 2026", 0), Some(t));
        assert_eq!(parse_apache_error("Tue Mar 03 10:15:02.123456 2026", 0), Some(Timestamp(t.0 + 123)));
        assert_eq!(parse_apache_error("Tue Mar 03 10:15:02.123456 2026x", 0), None);
        assert_eq!(parse_apache_error("Tue Foo 03 10:15:02 2026", 0), None);
    }
}
