//! Turning counts into sentences. Every verdict carries at least one reason, with numbers.

use crate::config::EngineConfig;
use crate::dossier::Dossier;
use crate::scoring::Category;
use crate::state::{IpState, Secs};
use crate::verdict::{Class, Reason};

/// "45 s", "3 min", "2 h 5 min".
pub fn span(secs: u32) -> String {
    match secs {
        0..=1 => "1 s".to_owned(),
        2..=119 => format!("{secs} s"),
        120..=7199 => format!("{} min", secs.saturating_add(30) / 60),
        _ => {
            let m = secs.saturating_add(30) / 60;
            if m.is_multiple_of(60) { format!("{} h", m / 60) } else { format!("{} h {} min", m / 60, m % 60) }
        }
    }
}

const STATUS_REASONS: [(Category, &str, &str); 4] = [
    (Category::NotFound, "status:not_found", "answered 404/410 on non-static paths"),
    (Category::Auth, "status:auth", "answered 401/403 (failed authentication or forbidden)"),
    (Category::Rejected, "status:rejected", "rejected with another 4xx (400, 405, 429, …)"),
    (Category::ServerError, "status:server_error", "answered 5xx (server errors)"),
];

/// The reasons for a client's standing at `now`, strongest first. A good client's first reason
/// is what it did right; evidence against it follows only where it is notable.
pub fn reasons(
    cfg: &EngineConfig,
    st: &IpState,
    dossier: Option<&Dossier>,
    now: Secs,
    class: Class,
    rep: f32,
) -> Vec<Reason> {
    let mut out = Vec::new();
    let good = class == Class::Good;
    let within = span(st.last.saturating_sub(st.first));
    let req = st.requests;
    let min_neg = cfg.verdict.min_negative_requests as u32;
    for (cat, source, words) in STATUS_REASONS {
        let n = st.n[cat as usize] as u32;
        if n == 0 {
            continue;
        }
        let share = n as f32 / req.max(1) as f32;
        let notable = match cat {
            Category::ServerError => share >= 0.5 && n >= min_neg,
            _ if good => share >= 0.25 && n >= min_neg,
            _ => n >= min_neg || share >= 0.25,
        };
        if notable {
            out.push(Reason {
                source: source.to_owned(),
                text: format!("{n} of {req} requests {words} within {within}"),
                weight: n as f32,
            });
        }
    }
    if let Some(d) = dossier {
        for e in &d.ledger {
            let mut text = e.detail.clone();
            if e.hits > 1 {
                text.push_str(&format!(" ({} times within {})", e.hits, span(e.last.saturating_sub(e.first))));
            }
            let active = e.verdict.is_some_and(|(_, until)| until > now);
            if let Some((class, _)) = e.verdict.filter(|_| active) {
                text.push_str(&format!(" → {class}"));
            }
            out.push(Reason {
                source: e.source.to_string(),
                text,
                weight: e.penalty + if active { 1000.0 } else { 0.0 },
            });
        }
    }
    let shared = &cfg.shared;
    let mut shared_reason = None;
    if let Some(d) = dossier.filter(|d| shared.enabled && d.agents.len() >= shared.min_agents as usize) {
        shared_reason = Some(Reason {
            source: "behaviour:shared_address".to_owned(),
            text: format!(
                "shared address: {} or more distinct user agents were answered well here (a NAT or CGNAT), so it is challenged rather than blocked unless its reputation falls below {}",
                d.agents.len(),
                shared.bad_below
            ),
            weight: 0.0,
        });
    }
    let negatives = st.negatives() + dossier.map_or(0, Dossier::penalized_hits);
    if good && negatives < min_neg && rep < cfg.verdict.dubious_below {
        out.push(Reason {
            source: "evidence:insufficient".to_owned(),
            text: format!("reputation {rep:.2} on only {negatives} negative answer(s) of {req} requests: fewer than the {min_neg} needed to judge"),
            weight: 0.5,
        });
    }
    out.sort_by(|a, b| b.weight.total_cmp(&a.weight));
    // why a flagged shared address is held at a challenge comes first
    if let Some(r) = shared_reason {
        if good { out.push(r) } else { out.insert(0, r) }
    }
    if good || out.is_empty() {
        let ok = st.n[Category::Ok as usize];
        out.insert(
            0,
            Reason {
                source: "status:ok".to_owned(),
                text: format!("{ok} of {req} requests answered 2xx/3xx within {within}"),
                weight: 0.0,
            },
        );
    }
    out.truncate(8);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans() {
        assert_eq!(span(0), "1 s");
        assert_eq!(span(45), "45 s");
        assert_eq!(span(180), "3 min");
        assert_eq!(span(3600 * 2 + 300), "2 h 5 min");
        assert_eq!(span(3600 * 3), "3 h");
    }
}
