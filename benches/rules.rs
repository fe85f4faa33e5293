//! Rule evaluation cost per request: the shipped rule set, and the same plus 1,000 synthetic
//! rules, over generated traffic. `cargo bench -p roost-benches --bench rules`

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use roost_benches::{generated_log, synthetic_rules};
use roost_engine::{Engine, EngineConfig, RequestEvent, Scoring};
use roost_logformat::Parser;
use roost_loggen::Format;
use roost_rules::{Evaluator, Options, RuleSet, RuleSource, RulesInspector, handle, load};

const LINES: u64 = 200_000;

fn rule_sets() -> Vec<(&'static str, RuleSet)> {
    let shipped = load::embedded();
    // the set before the known-exploited-vulnerability probes (rules/kev.toml), side by side
    let without_kev: Vec<RuleSource> = shipped.iter().filter(|s| !s.name.ends_with("kev.toml")).cloned().collect();
    assert!(without_kev.len() < shipped.len(), "kev.toml is among the shipped rules");
    let mut big = shipped.clone();
    big.push(RuleSource { name: "synthetic.toml".into(), text: synthetic_rules(1000) });
    vec![
        ("shipped", RuleSet::compile(&shipped, &Options::default()).unwrap()),
        ("shipped_without_kev", RuleSet::compile(&without_kev, &Options::default()).unwrap()),
        ("shipped+1000", RuleSet::compile(&big, &Options::default()).unwrap()),
    ]
}

fn evaluation(c: &mut Criterion) {
    let log = generated_log(LINES, Format::Timed);
    let parser = Parser::from_config(&roost_logformat::LogFormatConfig {
        format: roost_logformat::FormatKind::Nginx,
        log_format: Some(roost_benches::TIMED_LOG_FORMAT.into()),
        ..Default::default()
    })
    .unwrap();
    let events: Vec<RequestEvent<'_>> = log.lines().map(|l| parser.parse(l).unwrap()).collect();
    let scoring = Scoring::new(&EngineConfig::default());
    let classes: Vec<_> = events.iter().map(|e| scoring.classify(&e.path)).collect();
    let mut g = c.benchmark_group("rules");
    g.throughput(Throughput::Elements(LINES));
    for (name, set) in rule_sets() {
        eprintln!("{name}: {} rules", set.rules().len());
        g.bench_function(name, |b| {
            let mut out = Vec::new();
            b.iter(|| {
                let mut eval = Evaluator::new(&set, 100_000);
                let mut fired = 0usize;
                for (ev, pc) in events.iter().zip(&classes) {
                    let key = match ev.client {
                        std::net::IpAddr::V4(a) => (a.to_bits() as u128, 32),
                        std::net::IpAddr::V6(a) => (a.to_bits() >> 64 << 64, 64),
                    };
                    eval.evaluate(&set, key, ev, *pc, &mut out);
                    fired += out.len();
                }
                fired
            })
        });
    }
    g.finish();

    // The whole per-line cost with rules: parse, score, rules.
    let mut g = c.benchmark_group("parse_score_rules");
    g.throughput(Throughput::Elements(LINES));
    let mut sets = rule_sets();
    for (name, set) in [("nginx_log_format", sets.remove(0).1), ("nginx_log_format_without_kev", sets.remove(0).1)] {
        let set = handle(set);
        g.bench_function(name, |b| {
            b.iter_batched_ref(
                || {
                    let mut e = Engine::new(EngineConfig::default()).unwrap();
                    e.add_inspector(Box::new(RulesInspector::new(set.clone(), 100_000)));
                    e
                },
                |engine| {
                    for line in log.lines() {
                        if let Ok(ev) = parser.parse(line) {
                            std::hint::black_box(engine.observe(&ev));
                        }
                    }
                },
                criterion::BatchSize::PerIteration,
            )
        });
    }
    g.finish();
}

criterion_group!(benches, evaluation);
criterion_main!(benches);
