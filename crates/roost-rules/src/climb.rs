//! Path traversal and local file inclusion by structure (`match.detect = ["traversal"]`): a value
//! that climbs out of its directory (`../../`) or names an operating system's own file behind
//! a leading separator, however the separators and dots are spelled.
//!
//! Servers have decoded more spellings of `.`, `/` and `\` than any list of them: repeated
//! percent-encoding, overlong UTF-8 of any length, IIS's `%uXXXX` and its lenient hex
//! (`%c0%qf` decoded as `%c0%af`), textual `0x2f`. So the raw text is decoded the most lenient
//! way any of them did, every byte that is not a printable ASCII character becomes a separator,
//! and then the path's shape is judged, not its spelling.
//!
//! The files are OWASP CRS's `lfi-os-files.data` (Apache-2.0) and roost's additions, in
//! `rules/data/`.

use std::sync::LazyLock;

use hashbrown::HashSet;

/// Known operating-system and application files, lowercase, without a leading slash.
static OS_FILES: LazyLock<HashSet<Box<str>>> = LazyLock::new(|| {
    [include_str!("../../../rules/data/lfi-os-files.data"), include_str!("../../../rules/data/os-files-roost.data")]
        .into_iter()
        .flat_map(str::lines)
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.trim_start_matches('/').to_ascii_lowercase().into_boxed_str())
        .collect()
});

/// How deep the known files go (segments), so a lookup never tries longer prefixes.
static DEEPEST: LazyLock<usize> =
    LazyLock::new(|| OS_FILES.iter().map(|f| f.trim_end_matches('/').split('/').count()).max().unwrap_or(1));

/// What the detector found in one value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Climb {
    /// Two or more `..` segments in a row.
    Deep,
    /// A known file behind a leading separator or a `..`.
    File,
}

impl Climb {
    /// For a verdict's reason.
    pub fn describe(self) -> &'static str {
        match self {
            Climb::Deep => "climbs two or more directories",
            Climb::File => "names a system file from the root or after a climb",
        }
    }
}

/// Whether a raw (undecoded) parameter value or path climbs or names a system file. `path` is
/// for the request path, which always begins with `/`: there only a climb counts, with or
/// without a file at its end.
pub fn judge(raw: &str, path: bool) -> Option<Climb> {
    let b = raw.as_bytes();
    if b.len() < 3 {
        return None;
    }
    // the usual value: printable ASCII with nothing encoded, so canonical is plain lowercase; it
    // can only climb with a `..` and only be rooted if it begins with a separator or a drive
    let encoded = b.iter().any(|&c| matches!(c, b'%' | b'\\' | b';') || !(0x20..0x7f).contains(&c))
        || memchr::memmem::find(b, b"0x").is_some()
        || memchr::memmem::find(b, b"0X").is_some();
    if !encoded && memchr::memmem::find(b, b"..").is_none() && (b[0].is_ascii_alphanumeric() && b[1] != b':' || path) {
        return None;
    }
    let canon = canonical(b);
    shape(&canon, path)
}

/// The path's shape: segments, the runs of segments without a letter or digit between them
/// (gaps), the climbs in a gap and the file after it.
fn shape(c: &[u8], path: bool) -> Option<Climb> {
    let segs: Vec<&[u8]> = c.split(|&x| x == b'/').collect();
    let word = |s: &[u8]| s.iter().any(u8::is_ascii_alphanumeric);
    let climb = |s: &[u8]| s.len() >= 2 && s.contains(&b'.') && !word(s);
    let mut run = 0;
    for s in segs.iter().filter(|s| !s.is_empty()) {
        run = if climb(s) { run + 1 } else { 0 };
        if run >= 2 {
            return Some(Climb::Deep);
        }
    }
    // a drive letter (`c:`) at the start stands for a leading separator
    let drive = segs.len() > 1 && segs[0].len() == 2 && segs[0][0].is_ascii_alphabetic() && segs[0][1] == b':';
    let mut i = usize::from(drive);
    let mut leading = true;
    while i < segs.len() {
        let gap = i;
        while i < segs.len() && !word(segs[i]) {
            i += 1;
        }
        if i == segs.len() {
            break;
        }
        let climbed = segs[gap..i].iter().any(|s| climb(s));
        // a value beginning with a separator, dots or junk: a path from the root
        let rooted = leading && (i > gap || drive);
        if (climbed || (!path && rooted)) && known_file(&segs[i..]) {
            return Some(Climb::File);
        }
        leading = false;
        i += 1;
    }
    None
}

/// Whether the segments begin with a known file (or a known directory, listed with a trailing
/// slash).
fn known_file(segs: &[&[u8]]) -> bool {
    let mut prefix = String::new();
    for (i, s) in segs.iter().take(*DEEPEST).enumerate() {
        let Ok(s) = std::str::from_utf8(s) else { return false };
        if i > 0 {
            prefix.push('/');
        }
        prefix.push_str(s);
        if OS_FILES.contains(prefix.as_str()) {
            return true;
        }
        prefix.push('/');
        if OS_FILES.contains(prefix.as_str()) {
            return true;
        }
        prefix.pop();
    }
    false
}

/// The raw text decoded as leniently as any server has: percent-decoding until stable (at most
/// four rounds), overlong UTF-8 as the ASCII it stands for, then lowercase with `\` and `;` as
/// `/` and every other byte outside printable ASCII (control bytes, NUL, the rest of UTF-8) as a
/// separator too.
pub fn canonical(raw: &[u8]) -> Vec<u8> {
    let mut cur = raw.to_vec();
    for _ in 0..4 {
        let next = overlong(&decode_once(&cur));
        if next == cur {
            break;
        }
        cur = next;
    }
    for x in &mut cur {
        *x = match *x {
            b'\\' | b';' => b'/',
            c if !(0x20..0x7f).contains(&c) => b'/',
            c => c.to_ascii_lowercase(),
        };
    }
    cur
}

/// A hex digit's value the way IIS computed it: any letter counts, `g` as 16 and so on (so
/// `%qf` is 0x1af, truncated to 0xaf).
fn lenient_hex(c: u8) -> Option<u32> {
    match c {
        b'0'..=b'9' => Some(u32::from(c - b'0')),
        b'a'..=b'z' => Some(u32::from(c - b'a') + 10),
        b'A'..=b'Z' => Some(u32::from(c - b'A') + 10),
        _ => None,
    }
}

/// One round of `%XX`, `%uXXXX` and textual `0x2e`/`0x2f`/`0x5c` decoding.
fn decode_once(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == b'%' {
            // %uXXXX: the character if ASCII or a lookalike of `.`, `/`, `\`; a separator otherwise
            if i + 5 < b.len() && (b[i + 1] | 0x20) == b'u' && b[i + 2..i + 6].iter().all(u8::is_ascii_hexdigit) {
                let cp = b[i + 2..i + 6].iter().fold(0u32, |a, &d| a * 16 + lenient_hex(d).unwrap_or(0));
                out.push(match char::from_u32(cp) {
                    Some(c) if c.is_ascii() => c as u8,
                    Some(c) => crate::view::fold_lookalike(c).map_or(0, |a| a as u8),
                    None => 0,
                });
                i += 6;
                continue;
            }
            // nibbles encoded apart (`%%35%%63` decoded once is `%5%c`): one byte
            if i + 3 < b.len() && b[i + 2] == b'%' && b[i + 1].is_ascii_hexdigit() && b[i + 3].is_ascii_hexdigit() {
                let h = (b[i + 1] as char).to_digit(16).unwrap_or(0);
                let l = (b[i + 3] as char).to_digit(16).unwrap_or(0);
                out.push((h * 16 + l) as u8);
                i += 4;
                continue;
            }
            if i + 2 < b.len()
                && let (Some(h), Some(l)) = (lenient_hex(b[i + 1]), lenient_hex(b[i + 2]))
            {
                out.push(((h * 16 + l) & 0xff) as u8);
                i += 3;
                continue;
            }
        }
        if c == b'0' && i + 3 < b.len() && (b[i + 1] | 0x20) == b'x' {
            let v = b[i + 2..i + 4].iter().try_fold(0u8, |a, &d| Some(a * 16 + (d as char).to_digit(16)? as u8));
            if let Some(v @ (b'.' | b'/' | b'\\')) = v {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(c);
        i += 1;
    }
    out
}

/// Overlong UTF-8 sequences of any length (`c0 ae`, `e0 80 af`, `f0 80 80 af`, `f8 80 80 80 ae`,
/// `fc 80 80 80 80 af`) as the ASCII byte they encode, including the malformed ones lenient
/// decoders accepted (`c0 2f`, `c1 1c`).
fn overlong(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let len = match c {
            0xc0 | 0xc1 => 2,
            0xe0 => 3,
            0xf0 => 4,
            0xf8 => 5,
            0xfc => 6,
            _ => 0,
        };
        if len > 0 && i + len <= b.len() {
            let tail = &b[i + 1..i + len];
            let v = if len == 2 {
                let x = tail[0];
                Some(if c == 0xc0 && x < 0x80 { x } else { ((c & 1) << 6) | (x & 0x3f) })
            } else {
                // all but the last two continuation bytes carry nothing in an overlong form
                let (zero, low) = tail.split_at(len - 3);
                (zero.iter().all(|&z| z == 0x80) && low[0] & 0xc0 == 0x80 && low[0] & 0x3e == 0)
                    .then(|| ((low[0] & 1) << 6) | (low[1] & 0x3f))
            };
            if let Some(v) = v {
                out.push(v);
                i += len;
                continue;
            }
        }
        out.push(c);
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canon(s: &str) -> String {
        String::from_utf8(canonical(s.as_bytes())).unwrap()
    }

    #[test]
    fn spellings_of_dots_and_slashes_are_seen_through() {
        assert_eq!(canon("%c0%ae%c0%ae%c0%af"), "../");
        assert_eq!(canon("%e0%80%ae%e0%80%ae%c0%2f"), "../");
        assert_eq!(canon("%f8%80%80%80%ae%fc%80%80%80%80%ae%f0%80%80%af"), "../");
        assert_eq!(canon("..%c1%9c..%c1%1c"), "../../");
        // IIS's lenient hex: %qf is %af, %9v is %af, %8s and %pc are %9c, %bg is %c0
        assert_eq!(canon("..%c0%qf..%c0%9v..%c1%8s..%c1%pc%bg%qf"), "../../../..//");
        assert_eq!(canon("0x2e0x2e0x2f"), "../");
        assert_eq!(canon("%%32%65%%32%65%%35%%63"), "../");
        assert_eq!(canon("%252e%252e%255c"), "../");
        assert_eq!(canon("%u002e%uff0e%u2215etc%uEFC8passwd"), "../etc/passwd");
        assert_eq!(canon("..%01/"), "..//");
        assert_eq!(canon("Hello World"), "hello world");
    }

    #[test]
    fn climbs_and_system_files_are_found() {
        for (raw, want) in [
            ("../../../{FILE}", Climb::Deep),
            ("%c0%ae%c0%ae%c0%afetc%c0%afpasswd", Climb::File),
            ("?.\\?.\\?.\\etc\\passwd", Climb::Deep),
            ("%c0%fe%c0%fe%c0%5cetc%c0%5cissue", Climb::File),
            ("/etc/passwd%00.jpg", Climb::File),
            ("C:\\boot.ini", Climb::File),
            ("..\\windows\\system32\\drivers\\etc\\hosts", Climb::File),
            ("/.htaccess", Climb::File),
        ] {
            assert_eq!(judge(raw, false), Some(want), "{raw}");
        }
        assert_eq!(judge("/..%c0%af..%c0%afetc/passwd", true), Some(Climb::Deep));
        assert_eq!(judge("/static/..%c0%afetc/passwd", true), Some(Climb::File));
    }

    #[test]
    fn ordinary_values_and_paths_are_left_alone() {
        for raw in [
            "etc/passwd",
            "how to edit etc passwd",
            "wait... what",
            "1.2..1.4",
            "/docs/.../x",
            "https://example.com/a/b",
            "/account",
            "100%sure",
            "0x2f is a slash",
            "../account",
            "C:\\Users\\alice\\report.docx",
        ] {
            assert_eq!(judge(raw, false), None, "{raw}");
        }
        // a path always begins with '/': a known file there is a request for it, not a climb
        assert_eq!(judge("/package.json", true), None);
        assert_eq!(judge("/a/../b", true), None);
    }

    /// Random texts over the bytes that matter: the shortcut never changes the answer.
    #[test]
    fn the_shortcut_for_plain_values_changes_nothing() {
        let alphabet = ["..", ".", "/", "\\", "etc", "passwd", "c:", "a", "%2e", "0x2f", " ", "boot.ini", "é"];
        for s in crate::random_texts(&alphabet, 7, 20_000) {
            for path in [false, true] {
                let slow = if s.len() < 3 { None } else { shape(&canonical(s.as_bytes()), path) };
                assert_eq!(judge(&s, path), slow, "{s:?} {path}");
            }
        }
    }

    #[test]
    fn any_bytes_are_judged_without_panicking() {
        let mut b = Vec::new();
        for i in 0..4096u32 {
            b.push((i.wrapping_mul(2_654_435_761) >> 13) as u8);
            let s = String::from_utf8_lossy(&b);
            let _ = judge(&s, i % 2 == 0);
        }
    }
}
