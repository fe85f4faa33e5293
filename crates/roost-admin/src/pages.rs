//! The HTML pages, rendered with maud: every interpolated value is escaped, so the paths, user
//! agents and reasons that attackers control render as text. No inline script or style (the CSP
//! forbids both); charts are inline SVG built here.

use maud::{DOCTYPE, Markup, PreEscaped, html};
use roost_verdicts::{HistoryEntry, VerdictRecord};

use crate::auth::{Principal, Role};
use crate::{AuditEntry, ClientPage, Detail, Health, Item, ListQuery, Tops};

fn time(ms: i64) -> String {
    roost_engine::Timestamp(ms).to_string()
}

fn layout(who: Option<&Principal>, title: &str, body: Markup) -> String {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · roost admin" }
                link rel="stylesheet" href="/static/admin.css";
            }
            body {
                header {
                    strong { "roost" }
                    @if let Some(p) = who {
                        a href="/" { "Overview" }
                        a href="/clients?verdict=bad" { "Blocked" }
                        a href="/clients?verdict=dubious" { "Challenged" }
                        a href="/audit" { "Audit log" }
                        a href="/references" { "Reference lookup" }
                        span.who { (p.name) " (" (p.role.as_str()) ")" }
                        form method="post" action="/logout" {
                            input type="hidden" name="csrf" value=(p.csrf.clone().unwrap_or_default());
                            button type="submit" { "Sign out" }
                        }
                    }
                }
                main { (body) }
            }
        }
    }
    .into_string()
}

pub fn message(who: Option<&Principal>, title: &str, text: &str) -> String {
    layout(who, title, html! { h1 { (title) } p.error { (text) } p { a href="/" { "Back" } } })
}

pub fn login(error: Option<&str>) -> String {
    layout(
        None,
        "Sign in",
        html! {
            div.card.login {
                h1 { "Sign in to roost" }
                @if let Some(e) = error { p.error { (e) } }
                form method="post" action="/login" {
                    label { "Name" input name="name" autocomplete="username" required; }
                    label { "Password" input name="password" type="password" autocomplete="current-password" required; }
                    p { button type="submit" { "Sign in" } }
                }
            }
        },
    )
}

fn class_cell(c: &str) -> Markup {
    html! { span class=(c) { (c) } }
}

/// "NL · AS64500 Example" for a listed client, "–" when the databases know nothing.
fn where_of(i: &Item) -> String {
    let mut parts = Vec::new();
    if let Some(c) = &i.country {
        parts.push(c.clone());
    }
    if let Some(a) = i.asn {
        parts.push(match &i.as_org {
            Some(o) => format!("AS{a} {}", o.chars().take(24).collect::<String>()),
            None => format!("AS{a}"),
        });
    }
    if parts.is_empty() { "–".into() } else { parts.join(" · ") }
}

fn table(items: &[Item]) -> Markup {
    html! {
        table {
            thead { tr { th { "Client" } th { "Verdict" } th { "Reputation" } th { "Requests" } th { "Where" } th { "Since" } th { "Until" } th { "Why" } } }
            tbody {
                @for i in items {
                    @let r = &i.record;
                    tr {
                        td.mono { a href={ "/clients/" (r.subject.replace('/', "%2F")) } { (r.subject) } }
                        td { (class_cell(r.verdict.as_str())) }
                        td { (format!("{:.2}", r.reputation)) }
                        td { (r.requests) }
                        td { (where_of(i)) }
                        td.mono { (time(r.at.0)) }
                        td.mono { (r.expires.map(|e| time(e.0)).unwrap_or_else(|| "–".into())) }
                        td { (r.reasons.first().map(String::as_str).unwrap_or("")) }
                    }
                }
            }
        }
    }
}

/// The population's mean reputation over time (from Prometheus).
fn mean_chart(series: &[(f64, f64)]) -> Markup {
    if series.len() < 2 {
        return html! { p { "Not enough samples yet." } };
    }
    let pts: Vec<(i64, f64)> = series.iter().map(|(t, v)| ((t * 1000.0) as i64, *v)).collect();
    let last = series[series.len() - 1].1;
    html! {
        (line_chart(&pts, &[], "average reputation"))
        p { "now " strong { (format!("{last:.2}")) } " (request-weighted, −1 worst … 1 best), last 6 hours" }
    }
}

fn health_cards(h: &Health) -> Markup {
    html! {
        @if !h.configured {
            div.card { h2 { "Average reputation" } p { "Set admin.prometheus_url to see the average reputation over time, the drop alert and the pipeline's health." } }
        } @else {
            div.card {
                h2 { "Average reputation" }
                @if let Some(e) = &h.error { p.error { "Prometheus: " (e) } }
                (mean_chart(&h.series))
                p { "Drop alert (RoostAverageReputationDrop): "
                    @match h.drop_alert.as_str() { "firing" => span.bad { "FIRING" }, "pending" => span.dubious { "pending" }, _ => span.good { "quiet" } } }
            }
            div.card {
                h2 { "Pipeline" }
                table {
                    thead { tr { th { "Job" } th { "Instance" } th { "Scraped" } } }
                    tbody { @for (job, inst, up) in &h.targets { tr { td { (job) } td.mono { (inst) } td { @if *up { span.good { "up" } } @else { span.bad { "DOWN" } } } } } }
                }
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
pub fn overview(
    p: &Principal,
    recent: &ClientPage,
    worst: &ClientPage,
    audit: &[AuditEntry],
    top: &Tops,
    health: &Health,
    geo: bool,
    shadow: &[VerdictRecord],
) -> String {
    let n = |k: &str| recent.counts.get(k).copied().unwrap_or(0);
    layout(
        Some(p),
        "Overview",
        html! {
            h1 { "Overview" }
            div.grid {
                div.card.stat { div.n.bad { (n("bad")) } div.l { "blocked clients" } }
                div.card.stat { div.n.dubious { (n("dubious")) } div.l { "challenged clients" } }
                div.card.stat { div.n { (audit.len()) } div.l { "recent operator actions" } }
            }
            (health_cards(health))
            div.card {
                h2 { "Find a client" }
                form.inline method="get" action="/clients" {
                    label { "Address or prefix" input name="q" placeholder="203.0.113.7"; }
                    label { "Reason contains" input name="reason" placeholder="R-1001, tor_exits, 404"; }
                    button type="submit" { "Search" }
                }
            }
            div.grid2 {
                div.card { h2 { "Rules behind bad verdicts" } (top_links(&top.rules, "rule")) }
                div.card { h2 { "Feeds behind bad verdicts" } (top_links(&top.feeds, "feed")) }
                div.card { h2 { "Countries of bad clients" }
                    @if geo { (top_links(&top.countries, "country")) } @else { p { "Set geo.country_db (or city_db) to see where they are." } } }
                div.card { h2 { "Networks of bad clients" }
                    @if geo { (top_links(&top.asns, "asn")) } @else { p { "Set geo.asn_db to see their networks." } } }
            }
            @if !shadow.is_empty() {
                h2 { "Shadow verdicts (not enforced)" }
                p { "Sources in shadow mode (rules, feeds, geo policies on trial) would have judged these clients; nothing was enforced." }
                table.shadow {
                    tr { th { "client" } th { "would" } th { "since" } th { "why" } }
                    @for r in shadow {
                        tr {
                            td.mono { a href={ "/clients/" (enc(&r.subject)) } { (r.subject) } }
                            td { span class={ "pill " (r.verdict.as_str()) } { (would(r.verdict)) } }
                            td { (time(r.at.0)) }
                            td { (r.reasons.first().map(String::as_str).unwrap_or("")) }
                        }
                    }
                }
            }
            h2 { "Most recent verdicts" }
            (table(&recent.items))
            h2 { "Worst reputations" }
            (table(&worst.items))
        },
    )
}

/// A shadow verdict in words.
fn would(c: roost_engine::Class) -> &'static str {
    match c {
        roost_engine::Class::Bad => "would block",
        roost_engine::Class::Dubious => "would challenge",
        roost_engine::Class::Good => "would pass",
    }
}

/// Counts as bars, each label a link to the bad clients it counts.
fn top_links(rows: &[(String, usize)], field: &str) -> Markup {
    if rows.is_empty() {
        return html! { p { "None." } };
    }
    let max = rows.iter().map(|r| r.1).max().unwrap_or(1).max(1) as f64;
    html! {
        table.bars {
            tbody {
                @for (label, n) in rows {
                    @let value = if field == "asn" { label.split_whitespace().next().unwrap_or("").to_owned() } else { label.clone() };
                    tr {
                        td { a href={ "/clients?verdict=bad&" (field) "=" (enc(&value)) } { (label) } }
                        td.n { (n) }
                        td.bar { meter min="0" max=(format!("{max}")) value=(n) {} }
                    }
                }
            }
        }
    }
}

pub fn clients(p: &Principal, q: &ListQuery, l: &ClientPage) -> String {
    let pages = l.total.div_ceil(l.per_page).max(1);
    let link = |page: usize| {
        format!(
            "/clients?verdict={}&q={}&reason={}&rule={}&feed={}&country={}&asn={}&sort={}&page={page}",
            enc(&q.verdict),
            enc(&q.q),
            enc(&q.reason),
            enc(&q.rule),
            enc(&q.feed),
            enc(&q.country),
            enc(&q.asn),
            enc(&q.sort)
        )
    };
    layout(
        Some(p),
        "Clients",
        html! {
            h1 { "Clients" }
            form.inline method="get" action="/clients" {
                label { "Verdict" select name="verdict" {
                    option value="" selected[q.verdict.is_empty()] { "bad and dubious" }
                    option value="bad" selected[q.verdict == "bad"] { "bad" }
                    option value="dubious" selected[q.verdict == "dubious"] { "dubious" }
                } }
                label { "Address or prefix" input name="q" value=(q.q); }
                label { "Reason contains" input name="reason" value=(q.reason); }
                label { "Rule" input name="rule" value=(q.rule) size="8" placeholder="R-1001"; }
                label { "Feed" input name="feed" value=(q.feed) size="12" placeholder="tor_exits"; }
                label { "Country" input name="country" value=(q.country) size="3" placeholder="NL"; }
                label { "ASN" input name="asn" value=(q.asn) size="8" placeholder="AS14061"; }
                label { "Sort" select name="sort" {
                    option value="reputation" selected[q.sort.is_empty() || q.sort == "reputation"] { "worst first" }
                    option value="recent" selected[q.sort == "recent"] { "most recent" }
                    option value="expires" selected[q.sort == "expires"] { "expiring last" }
                    option value="requests" selected[q.sort == "requests"] { "most requests" }
                } }
                button type="submit" { "Filter" }
            }
            p { (l.total) " clients · page " (l.page + 1) " of " (pages) }
            (table(&l.items))
            div.pager {
                @if l.page > 0 { a href=(link(l.page - 1)) { "← previous" } }
                @if l.page + 1 < pages { a href=(link(l.page + 1)) { "next →" } }
            }
        },
    )
}

fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Reputations over time (Unix ms, -1..1) as an inline SVG line on a -1..1 axis, with an
/// optional dot per point (class, tooltip). No script: the CSP allows none.
fn line_chart(points: &[(i64, f64)], dots: &[(&str, String)], label: &str) -> Markup {
    let (t0, t1) = (points[0].0, points[points.len() - 1].0.max(points[0].0 + 1));
    let x = |t: i64| 40.0 + 540.0 * (t - t0) as f64 / (t1 - t0) as f64;
    let y = |r: f64| 10.0 + 100.0 * (1.0 - (r.clamp(-1.0, 1.0) + 1.0) / 2.0);
    let line: String = points.iter().map(|(t, v)| format!("{:.1},{:.1} ", x(*t), y(*v))).collect();
    html! {
        svg width="600" height="130" viewBox="0 0 600 130" role="img" aria-label=(label) {
            line x1="40" y1=(y(0.0)) x2="580" y2=(y(0.0)) stroke="#dde1e8" {}
            text x="2" y="14" font-size="11" { "+1" }
            text x="2" y=(y(0.0) + 4.0) font-size="11" { "0" }
            text x="2" y="112" font-size="11" { "−1" }
            polyline class="mean" points=(line) fill="none" stroke="#2b59c3" stroke-width="2" {}
            @for ((t, v), (class, tip)) in points.iter().zip(dots) {
                circle cx=(format!("{:.1}", x(*t))) cy=(format!("{:.1}", y(*v))) r="4" class=(class)
                    fill=(match *class { "bad" => "#b3261e", "dubious" => "#a15c00", _ => "#1e7a3c" }) {
                    title { (tip) }
                }
            }
        }
    }
}

/// The reputation at each recorded verdict change, oldest left.
fn timeline(history: &[HistoryEntry]) -> Markup {
    if history.is_empty() {
        return html! { p { "No recorded changes." } };
    }
    let pts: Vec<(i64, f64)> = history.iter().rev().map(|e| (e.record.at.0, f64::from(e.record.reputation))).collect();
    let dots: Vec<(&str, String)> = history
        .iter()
        .rev()
        .map(|e| {
            let shadow = if e.record.shadow { " (shadow, not enforced)" } else { "" };
            let tip =
                format!("{}: {}{shadow}, {:.2}", time(e.record.at.0), e.record.verdict.as_str(), e.record.reputation);
            (e.record.verdict.as_str(), tip)
        })
        .collect();
    html! {
        (line_chart(&pts, &dots, "reputation over time"))
        p.mono { (time(pts[0].0)) " … " (time(pts[pts.len() - 1].0)) }
    }
}

pub fn client(p: &Principal, d: &Detail, bgp: Option<&str>) -> String {
    let (subject, rec, audit, history) = (d.subject.as_str(), d.item.as_ref(), &d.audit[..], &d.history[..]);
    let samples: Vec<&roost_engine::Sample> = history.iter().flat_map(|h| &h.samples).take(20).collect();
    layout(
        Some(p),
        subject,
        html! {
            h1.mono { (subject) }
            div.card {
                @match rec.map(|i| (i, &i.record)) {
                    Some((i, r)) => {
                        p { "Verdict: " (class_cell(r.verdict.as_str())) " · reputation " (format!("{:.2}", r.reputation))
                            " (−1 worst … 1 best) · " (r.requests) " requests in this episode" }
                        p { "Since " span.mono { (time(r.at.0)) } @if let Some(e) = r.expires { " · until " span.mono { (time(e.0)) } } }
                        @if i.country.is_some() || i.asn.is_some() { p { "Where: " (where_of(i)) } }
                        h2 { "Why" }
                        ul.reasons { @for x in &r.reasons { li { (x) } } }
                        @if !i.rules.is_empty() || !i.feeds.is_empty() {
                            p { "Cited: "
                                @for x in &i.rules { a.tag href={ "/clients?rule=" (enc(x)) } { (x) } " " }
                                @for x in &i.feeds { a.tag href={ "/clients?feed=" (enc(x)) } { (x) } " " } }
                        }
                    }
                    None => { p { span.good { "good" } ": no verdict is held against this client (it passes)." } }
                }
                @if let Some(b) = bgp { p { "Routers: " (b) } }
                @match &d.proxy {
                    Some(o) => p { "At the proxies: " (o.issued) " challenge(s) shown, " (o.passed) " solved, " (o.failed)
                        " answer(s) refused; " (o.cleared) " request(s) let through on a clearance cookie, " (o.refused)
                        " cookie(s) refused (last " span.mono { (time(o.last)) } ")." },
                    None => p { "At the proxies: no challenge shown to this client." },
                }
            }
            @if p.role >= Role::Operator {
                div.card {
                    h2 { "Override" }
                    form.inline method="post" action="/overrides" {
                        input type="hidden" name="csrf" value=(p.csrf.clone().unwrap_or_default());
                        label { "Address or prefix" input name="prefix" value=(subject) required; }
                        label { "Action" select name="action" {
                            option value="block" { "block" }
                            option value="challenge" { "challenge" }
                            option value="allow" { "allow" }
                            option value="remove" { "remove override" }
                        } }
                        label { "For" input name="expires_in" value="1h" placeholder="1h, 7d; empty: until removed"; }
                        label { "Why (required)" input name="comment" required maxlength="500" size="40"; }
                        button type="submit" { "Apply" }
                    }
                }
            }
            div.card { h2 { "Reputation over time" } (timeline(history)) }
            h2 { "Sample requests" }
            table {
                thead { tr { th { "When" } th { "Request" } th { "Status" } th { "User agent" } } }
                tbody {
                    @for s in &samples {
                        tr {
                            td.mono { (time(s.at.0)) }
                            td.mono { (s.method) " " (s.target) }
                            td { (s.status) }
                            td.mono { (s.user_agent.as_deref().unwrap_or("–")) }
                        }
                    }
                }
            }
            h2 { "History of verdicts" }
            table {
                thead { tr { th { "When" } th { "Verdict" } th { "Reputation" } th { "Why" } } }
                tbody {
                    @for h in history {
                        tr {
                            td.mono { (time(h.record.at.0)) }
                            td { (class_cell(h.record.verdict.as_str())) }
                            td { (format!("{:.2}", h.record.reputation)) }
                            td { (h.record.reasons.first().map(String::as_str).unwrap_or("")) }
                        }
                    }
                }
            }
            h2 { "Operator actions" }
            (audit_table(audit))
        },
    )
}

fn audit_table(v: &[AuditEntry]) -> Markup {
    html! {
        table {
            thead { tr { th { "When" } th { "Who" } th { "From" } th { "What" } th { "Prefix" } th { "Until" } th { "Why" } } }
            tbody {
                @for e in v {
                    tr {
                        td.mono { (time(e.at)) }
                        td { (e.by) }
                        td.mono { (e.from) }
                        td { (e.action) @if let Some(c) = e.class { " → " (class_cell(c.as_str())) } }
                        td.mono { (e.prefix) }
                        td.mono { (e.until.map(time).unwrap_or_else(|| "–".into())) }
                        td { (e.comment) }
                    }
                }
            }
        }
    }
}

pub fn reference(p: &Principal, r: &str, found: Option<Option<&Item>>) -> String {
    layout(
        Some(p),
        "Reference lookup",
        html! {
            h1 { "Reference lookup" }
            p { "A visitor who was refused sees a 10-character reference on the error page. Enter it to see the verdict behind it." }
            form.inline method="get" action="/references" {
                label { "Reference" input name="ref" value=(r) maxlength="10" required; }
                button type="submit" { "Look up" }
            }
            @match found {
                Some(Some(rec)) => { h2 { "Found" } (table(std::slice::from_ref(rec))) }
                Some(None) => { p.error { "No current verdict has this reference (it may have expired)." } }
                None => {}
            }
        },
    )
}

pub fn audit(p: &Principal, v: &[AuditEntry]) -> String {
    layout(Some(p), "Audit log", html! { h1 { "Audit log" } (audit_table(v)) })
}

pub fn override_done(p: &Principal, e: &AuditEntry) -> String {
    layout(
        Some(p),
        "Override applied",
        html! {
            h1 { "Override applied" }
            p.ok { (e.action) " " span.mono { (e.prefix) } @if let Some(c) = e.class { " → " (c.as_str()) } ": proxies and routers follow within a second." }
            p { a href={ "/clients/" (e.prefix.replace('/', "%2F")) } { "Back to " (e.prefix) } " · " a href="/audit" { "Audit log" } }
            (PreEscaped(""))
        },
    )
}
