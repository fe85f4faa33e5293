//! Every rule carries examples; `roost rules test` runs them.
//!
//! An example is a request spec or a whole combined log line:
//!
//! ```text
//! GET /.env 404
//! POST /login 401 ua="python-requests/2.32" rt=0.2 host=shop.example ref="https://x/"
//! 12x POST /wp-login.php 401 every 5s          # a sequence: 12 requests, 5 s apart
//! 35x GET /article/{i} 200 every 1s            # {i} is the request's number, 1..35
//! 203.0.113.7 - - [25/Nov/2026:10:00:00 +0000] "GET /x HTTP/1.1" 404 0 "-" "curl/8"
//! ```
//!
//! The status defaults to 200; every example runs from a clean state as one client.

use std::borrow::Cow;
use std::net::IpAddr;
use std::time::Duration;

use roost_engine::{RequestEvent, Scoring, Timestamp};

use crate::compile::{Example, RuleSet};
use crate::inspect::Evaluator;

const T0: i64 = 1_795_600_800; // 2026-11-25T10:00:00Z
const CLIENT: [u8; 4] = [192, 0, 2, 1];

/// Splits on spaces, keeping `"quoted strings"` (with `\"` inside) together.
fn tokens(s: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if quoted => match chars.next() {
                Some(n) => cur.push(n),
                None => return Err("dangling backslash".into()),
            },
            '"' => quoted = !quoted,
            ' ' | '\t' if !quoted => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if quoted {
        return Err("unterminated quote".into());
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    Ok(out)
}

/// The requests an example stands for.
pub fn parse_example(spec: &str) -> Result<Vec<RequestEvent<'static>>, String> {
    let spec = spec.trim();
    let first = spec.split_whitespace().next().unwrap_or("");
    if first.parse::<IpAddr>().is_ok() {
        let ev = roost_logformat::Parser::Clf.parse(spec).map_err(|e| format!("not a combined log line: {e}"))?;
        return Ok(vec![ev.into_owned()]);
    }
    let toks = tokens(spec)?;
    let mut i = 0;
    let mut count = 1u32;
    if let Some(n) = toks
        .first()
        .and_then(|t| t.strip_suffix('x').or_else(|| t.strip_suffix('×')))
        .and_then(|n| n.parse::<u32>().ok())
    {
        if n == 0 || n > 10_000 {
            return Err(format!("repeat count {n} must be 1..=10000"));
        }
        count = n;
        i = 1;
    }
    let method = toks.get(i).ok_or("missing method")?.clone();
    let target = toks.get(i + 1).ok_or("missing target (the path, e.g. /login)")?.clone();
    if !method.bytes().all(|c| c.is_ascii_alphabetic()) {
        return Err(format!("{method:?} is not a method"));
    }
    i += 2;
    let mut status = 200u16;
    let (mut ua, mut referer, mut host, mut rt) = (None, None, None, None);
    let mut every = Duration::from_secs(1);
    while i < toks.len() {
        let t = &toks[i];
        if let Ok(s) = t.parse::<u16>() {
            if !(100..=599).contains(&s) {
                return Err(format!("status {s} is not 100..=599"));
            }
            status = s;
        } else if t == "every" {
            let d = toks.get(i + 1).ok_or("`every` needs a duration, e.g. every 5s")?;
            every = humantime::parse_duration(d).map_err(|e| format!("every {d}: {e}"))?;
            if every > Duration::from_secs(7 * 86_400) {
                return Err(format!("every {d}: at most a week between requests"));
            }
            i += 1;
        } else if let Some((k, v)) = t.split_once('=') {
            match k {
                "ua" => ua = Some(v.to_owned()),
                "ref" => referer = Some(v.to_owned()),
                "host" => host = Some(v.to_owned()),
                "rt" => rt = Some(v.parse::<f32>().map_err(|_| format!("rt={v} is not seconds"))?),
                other => return Err(format!("unknown key {other:?} (ua, ref, host, rt)")),
            }
        } else {
            return Err(format!("unexpected {t:?}"));
        }
        i += 1;
    }
    let mut out = Vec::with_capacity(count as usize);
    for n in 1..=count {
        let fill = |s: &str| s.replace("{i}", &n.to_string());
        let target = fill(&target);
        let (path, query) = match target.split_once('?') {
            Some((p, q)) => (p.to_owned(), Some(Cow::Owned(q.to_owned()))),
            None => (target.clone(), None),
        };
        out.push(RequestEvent {
            time: Timestamp(T0 * 1000 + every.as_millis() as i64 * (n as i64 - 1)),
            client: IpAddr::from(CLIENT),
            method: Cow::Owned(method.to_ascii_uppercase()),
            host: host.as_deref().map(|h| Cow::Owned(fill(h))),
            path: Cow::Owned(path),
            query,
            protocol: Cow::Borrowed("HTTP/1.1"),
            status,
            bytes: 0,
            request_time: rt,
            referer: referer.as_deref().map(|r| Cow::Owned(fill(r))),
            user_agent: ua.as_deref().map(|u| Cow::Owned(fill(u))),
        });
    }
    Ok(out)
}

/// One example that did not do what it says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    pub rule: String,
    pub file: String,
    pub line: usize,
    pub spec: String,
    pub problem: String,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}: {}: {}: {}", self.file, self.line, self.rule, self.problem, self.spec)
    }
}

/// Runs every rule's examples. Returns (examples run, failures).
pub fn run(set: &RuleSet, scoring: &Scoring) -> (usize, Vec<Failure>) {
    let mut failures = Vec::new();
    let mut n = 0;
    let mut fired = Vec::new();
    for (idx, rule) in set.rules().iter().enumerate() {
        let cases = rule.must_match.iter().map(|e| (e, true)).chain(rule.must_not_match.iter().map(|e| (e, false)));
        for (ex, expect) in cases {
            n += 1;
            let Example { spec, line } = ex;
            let fail = |problem: String| Failure {
                rule: rule.id.clone(),
                file: rule.file.clone(),
                line: *line,
                spec: spec.clone(),
                problem,
            };
            let events = match parse_example(spec) {
                Ok(e) => e,
                Err(e) => {
                    failures.push(fail(format!("cannot read the example: {e}")));
                    continue;
                }
            };
            let mut eval = Evaluator::new(set, 16);
            let mut hit = false;
            for ev in &events {
                eval.evaluate(
                    set,
                    (u32::from_be_bytes(CLIENT) as u128, 32),
                    ev,
                    scoring.classify(&ev.path),
                    &mut fired,
                );
                hit |= fired.iter().any(|&(r, _)| r as usize == idx);
            }
            if hit != expect {
                failures.push(fail(if expect {
                    "must match but does not".into()
                } else {
                    "must not match but does".into()
                }));
            }
        }
    }
    (n, failures)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs() {
        let e = parse_example(r#"12x POST /login?next=/a 401 ua="python \"req\"" rt=0.5 every 5s"#).unwrap();
        assert_eq!(e.len(), 12);
        assert_eq!(
            (&*e[0].method, &*e[0].path, e[0].query.as_deref(), e[0].status),
            ("POST", "/login", Some("next=/a"), 401)
        );
        assert_eq!(e[0].user_agent.as_deref(), Some("python \"req\""));
        assert_eq!(e[11].time.0 - e[0].time.0, 55_000);
        assert_eq!(e[0].request_time, Some(0.5));
        let e = parse_example("3x GET /a/{i}").unwrap();
        assert_eq!(e[2].path, "/a/3");
        let e = parse_example(r#"203.0.113.7 - - [25/Nov/2026:10:00:00 +0000] "GET /x HTTP/1.1" 404 0 "-" "curl/8""#)
            .unwrap();
        assert_eq!((e[0].status, e[0].user_agent.as_deref()), (404, Some("curl/8")));
        for bad in ["", "GET", "0x GET /", "GET / 999", "GET / zz=1", "GET / every", r#"GET / ua="x"#, "G3T /"] {
            assert!(parse_example(bad).is_err(), "{bad:?}");
        }
    }
}
