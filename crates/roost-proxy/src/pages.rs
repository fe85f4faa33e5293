//! The pages the proxy serves itself: the challenge (JavaScript proof of work, with a slower
//! meta-refresh path for browsers without JavaScript) and the error page. Plain words for the
//! visitor; nothing about how the verdict was reached. Every value from the request is escaped.

use html_escape::encode_double_quoted_attribute as attr;
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};

/// Where the proxy's own endpoints live; never forwarded to the app.
pub const PREFIX: &str = "/.roost/";
pub const VERIFY: &str = "/.roost/verify";
pub const WAIT: &str = "/.roost/wait";

pub struct ChallengePage {
    /// The work token and its difficulty.
    pub token: String,
    pub bits: u8,
    /// The wait token (no-JavaScript path) and the seconds to wait.
    pub wait_token: String,
    pub wait_secs: u64,
    /// Where to go once cleared (a local path; see [`safe_return`]).
    pub back: String,
    /// The CSP nonce of the page's script.
    pub nonce: String,
    /// Shown when a previous attempt was refused.
    pub retry: bool,
}

impl ChallengePage {
    /// The page: the template's fixed parts (made once) with this challenge's values, escaped,
    /// in one allocation.
    pub fn render(&self) -> String {
        let back_q = utf8_percent_encode(&self.back, NON_ALPHANUMERIC);
        let wait_token = utf8_percent_encode(&self.wait_token, NON_ALPHANUMERIC);
        let mut wait_url = String::with_capacity(64 + self.wait_token.len() + self.back.len() * 3);
        use std::fmt::Write as _;
        let _ = write!(wait_url, "{WAIT}?t={wait_token}&r={back_q}");
        let retry = if self.retry {
            "<p><strong>The last check did not go through, so here is a new one.</strong></p>\n"
        } else {
            ""
        };
        let (wait, bits) = (self.wait_secs.to_string(), self.bits.to_string());
        let values: [&str; CHALLENGE_VARS] =
            [&wait, &attr(&wait_url), retry, &attr(&self.token), &attr(&self.back), &attr(&self.nonce), &bits];
        let template = &*CHALLENGE;
        let mut out = String::with_capacity(template.len + values.iter().map(|v| v.len() * 2).sum::<usize>());
        for (lit, var) in &template.parts {
            out.push_str(lit);
            if let Some(i) = var {
                out.push_str(values[*i]);
            }
        }
        out
    }

    /// The Content-Security-Policy that goes with the page: only its own script runs.
    pub fn csp(&self) -> String {
        format!(
            "default-src 'none'; script-src 'nonce-{}'; style-src 'unsafe-inline'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
            self.nonce
        )
    }
}

/// The challenge page's variables, in [`challenge_template`]'s order.
const CHALLENGE_VARS: usize = 7;
const MARK: char = '\u{1}';

/// A page template: literal text, each followed by the variable that comes after it.
struct Template {
    parts: Vec<(String, Option<usize>)>,
    len: usize,
}

static CHALLENGE: std::sync::LazyLock<Template> = std::sync::LazyLock::new(|| {
    let marks: Vec<String> = (0..CHALLENGE_VARS).map(|i| format!("{MARK}{i}{MARK}")).collect();
    let text = challenge_template(std::array::from_fn(|i| marks[i].as_str()));
    let mut parts = Vec::new();
    let mut rest = text.as_str();
    while let Some(at) = rest.find(MARK) {
        let end = at + 1 + rest[at + 1..].find(MARK).expect("a closed mark");
        let var: usize = rest[at + 1..end].parse().expect("a variable number");
        parts.push((rest[..at].to_owned(), Some(var)));
        rest = &rest[end + 1..];
    }
    parts.push((rest.to_owned(), None));
    let len = parts.iter().map(|(l, _)| l.len()).sum();
    Template { parts, len }
});

/// The challenge page with its variables: wait seconds, wait URL, retry notice, token, return
/// path, script nonce, bits (each already escaped for where it goes).
fn challenge_template(v: [&str; CHALLENGE_VARS]) -> String {
    let [wait, wait_url, retry, token, back, nonce, bits] = v;
    {
        format!(
            r#"{head}
<noscript><meta http-equiv="refresh" content="{wait};url={wait_url}"></noscript>
</head>
<body>
<h1>One moment, please</h1>
{retry}<p>This site has seen unusual traffic from your network, so before letting you in it asks your
browser to do a short calculation. It runs by itself and usually takes a few seconds; you do not
need to do anything. Afterwards you can browse normally.</p>
<p id="status" role="status">Checking your browser&hellip;</p>
<noscript><p>JavaScript is turned off in your browser. That is fine: this page will take you on by
itself in about {wait} seconds. If it does not, <a href="{wait_url}">follow this link</a> after that
time.</p></noscript>
<form id="f" method="post" action="{VERIFY}">
<input type="hidden" name="t" value="{token}">
<input type="hidden" name="n" value="">
<input type="hidden" name="r" value="{back}">
</form>
<script nonce="{nonce}">
(function () {{
  var K = [0x428a2f98,0x71374491,0xb5c0fbcf,0xe9b5dba5,0x3956c25b,0x59f111f1,0x923f82a4,0xab1c5ed5,
    0xd807aa98,0x12835b01,0x243185be,0x550c7dc3,0x72be5d74,0x80deb1fe,0x9bdc06a7,0xc19bf174,
    0xe49b69c1,0xefbe4786,0x0fc19dc6,0x240ca1cc,0x2de92c6f,0x4a7484aa,0x5cb0a9dc,0x76f988da,
    0x983e5152,0xa831c66d,0xb00327c8,0xbf597fc7,0xc6e00bf3,0xd5a79147,0x06ca6351,0x14292967,
    0x27b70a85,0x2e1b2138,0x4d2c6dfc,0x53380d13,0x650a7354,0x766a0abb,0x81c2c92e,0x92722c85,
    0xa2bfe8a1,0xa81a664b,0xc24b8b70,0xc76c51a3,0xd192e819,0xd6990624,0xf40e3585,0x106aa070,
    0x19a4c116,0x1e376c08,0x2748774c,0x34b0bcb5,0x391c0cb3,0x4ed8aa4a,0x5b9cca4f,0x682e6ff3,
    0x748f82ee,0x78a5636f,0x84c87814,0x8cc70208,0x90befffa,0xa4506ceb,0xbef9a3f7,0xc67178f2];
  var W = new Array(64);
  function sha256(s) {{ // s: ASCII only (the token and a number)
    var n = s.length, words = ((n + 8) >> 6) + 1, m = new Array(words * 16).fill(0), i;
    for (i = 0; i < n; i++) m[i >> 2] |= s.charCodeAt(i) << (24 - (i % 4) * 8);
    m[n >> 2] |= 0x80 << (24 - (n % 4) * 8);
    m[words * 16 - 1] = n * 8;
    var h0 = 0x6a09e667, h1 = 0xbb67ae85, h2 = 0x3c6ef372, h3 = 0xa54ff53a,
        h4 = 0x510e527f, h5 = 0x9b05688c, h6 = 0x1f83d9ab, h7 = 0x5be0cd19;
    for (var b = 0; b < m.length; b += 16) {{
      var a = h0, c1 = h1, c = h2, d = h3, e = h4, f = h5, g = h6, h = h7, t;
      for (i = 0; i < 64; i++) {{
        if (i < 16) W[i] = m[b + i] | 0;
        else {{
          var x = W[i - 15], y = W[i - 2];
          W[i] = (((x >>> 7) | (x << 25)) ^ ((x >>> 18) | (x << 14)) ^ (x >>> 3)) + W[i - 16] +
                 (((y >>> 17) | (y << 15)) ^ ((y >>> 19) | (y << 13)) ^ (y >>> 10)) + W[i - 7] | 0;
        }}
        var s1 = ((e >>> 6) | (e << 26)) ^ ((e >>> 11) | (e << 21)) ^ ((e >>> 25) | (e << 7));
        var t1 = h + s1 + ((e & f) ^ (~e & g)) + K[i] + W[i] | 0;
        var s0 = ((a >>> 2) | (a << 30)) ^ ((a >>> 13) | (a << 19)) ^ ((a >>> 22) | (a << 10));
        var t2 = s0 + ((a & c1) ^ (a & c) ^ (c1 & c)) | 0;
        h = g; g = f; f = e; e = d + t1 | 0; d = c; c = c1; c1 = a; a = t1 + t2 | 0;
      }}
      h0 = h0 + a | 0; h1 = h1 + c1 | 0; h2 = h2 + c | 0; h3 = h3 + d | 0;
      h4 = h4 + e | 0; h5 = h5 + f | 0; h6 = h6 + g | 0; h7 = h7 + h | 0;
    }}
    return [h0, h1, h2, h3, h4, h5, h6, h7];
  }}
  function zeros(h) {{
    for (var i = 0, z = 0; i < 8; i++) {{ if (h[i] === 0) {{ z += 32; continue; }} return z + Math.clz32(h[i]); }}
    return z;
  }}
  var form = document.getElementById("f"), token = form.t.value, bits = {bits}, n = 0;
  var status = document.getElementById("status");
  function step() {{
    var end = Date.now() + 50;
    while (Date.now() < end) {{
      for (var k = 0; k < 2000; k++, n++) {{
        if (zeros(sha256(token + ":" + n)) >= bits) {{
          status.textContent = "Done, taking you on\u2026";
          form.n.value = String(n);
          form.submit();
          return;
        }}
      }}
    }}
    status.textContent = "Checking your browser\u2026 (" + n + ")";
    setTimeout(step, 0);
  }}
  setTimeout(step, 0);
}})();
</script>
</body>
</html>
"#,
            head = head("One moment, please"),
        )
    }
}

/// The start of both pages, up to the open `<head>`'s end (the caller closes it).
fn head(title: &str) -> String {
    format!(
        r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="robots" content="noindex, nofollow">
<title>{title}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:38em;margin:4em auto;padding:0 1em;line-height:1.5;color:#222}}</style>"#
    )
}

/// The error page: a plain refusal with a reference the operators can look up.
pub fn error_page(status: u16, reference: &str) -> String {
    let (before, after) = if status == 429 { &*TOO_MANY } else { &*DENIED };
    let reference = html_escape::encode_text(reference);
    let mut out = String::with_capacity(before.len() + reference.len() + after.len());
    out.push_str(before);
    out.push_str(&reference);
    out.push_str(after);
    out
}

/// The error pages' text before and after the reference.
static DENIED: std::sync::LazyLock<(String, String)> = std::sync::LazyLock::new(|| error_template(403));
static TOO_MANY: std::sync::LazyLock<(String, String)> = std::sync::LazyLock::new(|| error_template(429));

fn error_template(status: u16) -> (String, String) {
    let (title, text) = match status {
        429 => (
            "Too many requests",
            "Requests from your network are arriving faster than this site can accept. Please wait a while and try again.",
        ),
        _ => (
            "Access denied",
            "This site is not accepting requests from your network at the moment, because of traffic from it that looked automated or abusive.",
        ),
    };
    let page = format!(
        r#"{head}
</head>
<body>
<h1>{title}</h1>
<p>{text}</p>
<p>If you think this is a mistake, contact the site's operators and give them this reference:
<code>{MARK}</code>. It is all they need to look it up.</p>
</body>
</html>
"#,
        head = head(title),
    );
    let (a, b) = page.split_once(MARK).expect("the reference's place");
    (a.to_owned(), b.to_owned())
}

/// A return path that can only lead back into this site: a local absolute path, else `/`.
pub fn safe_return(r: &str) -> &str {
    let ok = r.starts_with('/')
        && !r.starts_with("//")
        && !r.starts_with("/\\")
        && r.len() <= 2048
        && !r.starts_with(PREFIX)
        && !r.bytes().any(|b| b.is_ascii_control());
    if ok { r } else { "/" }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_text_is_escaped_and_return_paths_stay_local() {
        let p = ChallengePage {
            token: "p.1.16.00.x".into(),
            bits: 16,
            wait_token: "w.1.5000.00.y".into(),
            wait_secs: 5,
            back: r#"/search?q="><script>alert(1)</script>"#.into(),
            nonce: "abc".into(),
            retry: false,
        };
        let html = p.render();
        assert!(!html.contains("<script>alert"));
        assert!(html.contains("&quot;&gt;&lt;script&gt;") || html.contains("&quot;>&lt;script"));
        assert!(html.contains(r#"<script nonce="abc">"#));
        assert!(p.csp().contains("'nonce-abc'"));
        assert_eq!(safe_return("//evil.example/"), "/");
        assert_eq!(safe_return("https://evil.example/"), "/");
        assert_eq!(safe_return("/\\evil.example"), "/");
        assert_eq!(safe_return("/.roost/verify"), "/");
        assert_eq!(safe_return("/shop?a=1"), "/shop?a=1");
        // the page made from the template's parts is the template with the values in it
        let back_q = utf8_percent_encode(&p.back, NON_ALPHANUMERIC).to_string();
        let wait_url = format!("{WAIT}?t={}&r={back_q}", utf8_percent_encode(&p.wait_token, NON_ALPHANUMERIC));
        let direct =
            challenge_template(["5", &attr(&wait_url), "", &attr(&p.token), &attr(&p.back), &attr(&p.nonce), "16"]);
        assert_eq!(html, direct);
        assert!(html.contains("bits = 16,") && html.contains(r#"content="5;url=/.roost/wait?t=w%2E1"#), "{html}");
        assert!(!html.contains(MARK));
        let e = error_page(403, "<b>ref</b>");
        assert!(e.contains("&lt;b&gt;ref&lt;/b&gt;") && e.contains("Access denied"));
        assert!(error_page(429, "R").contains("Too many requests"));
    }
}
