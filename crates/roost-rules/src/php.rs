//! PHP code by its shape: a call of a dangerous PHP function (the OWASP CRS lists in
//! `rules/data/php-function-names-*.data`) written as code, not mentioned in a sentence.
//!
//! A value is judged after PHP's own comments are dropped (`/* */`, `#` and `//` to the end of
//! the line). A listed name followed by `(…)` is a call when
//! - something other than one plain space separates name and parenthesis (a comment, a tab, a
//!   line break, several spaces): nobody types `exec /**/ (` in a search box; or
//! - the call opens the value or follows code punctuation (`;` `.` `=` `(` `,` `{` `}` `!` `@`
//!   `?` `>` `|` `&` `:` `[`), rather than a word of a sentence (`how to use fopen() safely`); or
//! - the name is a quoted string called as a function (`"system"(…)`, PHP 7).

use std::sync::LazyLock;

static FUNCTIONS: LazyLock<hashbrown::HashSet<String>> = LazyLock::new(|| {
    [
        include_str!("../../../rules/data/php-function-names-933160.data"),
        include_str!("../../../rules/data/php-function-names-933150.data"),
    ]
    .iter()
    .flat_map(|t| t.lines())
    .map(|l| l.trim())
    .filter(|l| !l.is_empty() && !l.starts_with('#'))
    .map(|l| l.to_ascii_lowercase())
    .collect()
});

/// What the PHP detector found: how the call was written, and the function.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    pub what: &'static str,
    pub function: String,
}

/// Whether a decoded parameter value or path segment calls a dangerous PHP function as code.
pub fn judge(decoded: &str) -> Option<Found> {
    let b = decoded.as_bytes();
    if !b.contains(&b'(') || !b.contains(&b')') {
        return None;
    }
    let c = &strip_comments(b);
    for open in memchr::memchr_iter(b'(', c) {
        if !c[open + 1..].contains(&b')') {
            break;
        }
        // back over the gap between name and parenthesis
        let mut end = open;
        while end > 0 && (c[end - 1].is_ascii_whitespace() || c[end - 1] == COMMENT) {
            end -= 1;
        }
        let gap = &c[end..open];
        let odd_gap = !(gap.is_empty() || gap == b" ");
        // a quoted name: "system"(…) or 'system'(…)
        if end >= 2 && matches!(c[end - 1], b'"' | b'\'') {
            let q = c[end - 1];
            if let Some(start) = c[..end - 1].iter().rposition(|&x| x == q) {
                let name = &c[start + 1..end - 1];
                if let Some(f) = listed(name) {
                    return Some(Found { what: "a quoted function name called", function: f });
                }
            }
            continue;
        }
        let start = c[..end].iter().rposition(|&x| !(x.is_ascii_alphanumeric() || x == b'_')).map_or(0, |i| i + 1);
        let Some(f) = listed(&c[start..end]) else { continue };
        if odd_gap {
            return Some(Found { what: "a function call with a comment or odd space before its (", function: f });
        }
        // what precedes the name, spaces skipped
        let mut before = start;
        while before > 0 && (c[before - 1].is_ascii_whitespace() || c[before - 1] == COMMENT) {
            before -= 1;
        }
        // punctuation right before the name, or a statement's start even after spaces (prose
        // puts a space after `,` `.` `:`, code need not)
        let after_code = before > 0
            && ((before == start
                && matches!(c[before - 1], b'.' | b',' | b'!' | b'?' | b'>' | b'|' | b'&' | b':' | b'['))
                || matches!(c[before - 1], b';' | b'{' | b'}' | b'(' | b'=' | b'@'));
        if before == 0 || after_code {
            return Some(Found { what: "a function call as code", function: f });
        }
    }
    None
}

/// The byte a dropped comment leaves (so `exec/**/(` still shows a gap).
const COMMENT: u8 = 0;

/// The text, lowercased, with PHP comments replaced by one [`COMMENT`] byte each. `//` right
/// after `:` is a URL, not a comment.
fn strip_comments(b: &[u8]) -> Vec<u8> {
    let mut text = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let rest = &b[i..];
        if rest.starts_with(b"/*") {
            let close = memchr::memmem::find(&rest[2..], b"*/").map_or(b.len(), |e| i + 2 + e + 2);
            text.push(COMMENT);
            i = close;
        } else if rest[0] == b'#' || (rest.starts_with(b"//") && !(i > 0 && b[i - 1] == b':')) {
            let eol = memchr::memchr(b'\n', rest).map_or(b.len(), |e| i + e);
            text.push(COMMENT);
            i = eol;
        } else {
            text.push(rest[0].to_ascii_lowercase());
            i += 1;
        }
    }
    text
}

fn listed(name: &[u8]) -> Option<String> {
    let name = std::str::from_utf8(name).ok()?;
    (name.len() >= 2 && FUNCTIONS.contains(name)).then(|| name.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_written_as_code() {
        for yes in [
            "exec (blah)",
            "exec/*comment*/()",
            "exec#\n (blah)",
            "file_exists (\n\n)",
            "system('id')",
            "x;phpinfo()",
            "1.passthru($_GET[1])",
            "@assert_options(1)",
            "return\"system\"(xyz).s",
            "FoPeN  (blah)",
        ] {
            assert!(judge(yes).is_some(), "{yes:?}");
        }
        assert_eq!(judge("exec\t(x)").map(|f| f.function), Some("exec".to_owned()));
    }

    #[test]
    fn words_in_sentences_are_not_calls() {
        for no in [
            "how to use fopen() safely",
            "main (semicomplete.com - Jordan Sissel)",
            "Feed: semicomplete/main (semicomplete.com - Jordan Sissel)",
            "system requirements (2024)",
            "the exec function",
            "substr($x, 1)",
            "http://example.com/system(1",
            "apples, pears (and more)",
            "print this page (draft)",
        ] {
            assert_eq!(judge(no), None, "{no:?}");
        }
    }

    #[test]
    fn any_text_is_judged_without_panic() {
        for t in crate::random_texts(
            &["exec", "(", ")", "/*", "*/", "#", "\n", "\"", "'", " ", "//", ":", "a", "é"],
            12,
            20_000,
        ) {
            let _ = judge(&t);
        }
    }
}
