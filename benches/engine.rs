//! Hot paths: parsing a log line, scoring a request, and both together.
//! `cargo bench -p roost-benches --bench engine`

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use roost_benches::{TIMED_LOG_FORMAT, generated_log};
use roost_engine::{Engine, EngineConfig, RequestEvent};
use roost_logformat::{FormatKind, LogFormatConfig, Parser};
use roost_loggen::Format;

const LINES: u64 = 200_000;

fn parsers(c: &mut Criterion) {
    let mut g = c.benchmark_group("parse");
    g.throughput(Throughput::Elements(LINES));
    let nginx = Parser::from_config(&LogFormatConfig {
        format: FormatKind::Nginx,
        log_format: Some(TIMED_LOG_FORMAT.into()),
        ..Default::default()
    })
    .unwrap();
    for (name, format, parser) in [
        ("combined", Format::Combined, Parser::Clf),
        ("nginx_log_format", Format::Timed, nginx),
        ("json", Format::Json, Parser::Json),
    ] {
        let log = generated_log(LINES, format);
        g.bench_function(name, |b| {
            b.iter(|| {
                let mut ok = 0u32;
                for line in log.lines() {
                    ok += parser.parse(line).is_ok() as u32;
                }
                assert_eq!(ok as u64, LINES);
            })
        });
    }
    // what every reader calls since error logs: `parse_line` (a `Line`), on the same combined
    // lines, and those lines inside an RFC 3164 syslog frame
    let log = generated_log(LINES, Format::Combined);
    let framed: String = log.lines().map(|l| format!("<190>Mar  3 10:15:02 web-1 nginx[812]: {l}\n")).collect();
    let syslog = Parser::Syslog(Box::new(Parser::Clf));
    for (name, parser, text) in [("combined_parse_line", &Parser::Clf, &log), ("combined_in_syslog", &syslog, &framed)]
    {
        g.bench_function(name, |b| {
            b.iter(|| {
                let mut ok = 0u32;
                for line in text.lines() {
                    ok += matches!(parser.parse_line(line), Ok(roost_logformat::Line::Request(_))) as u32;
                }
                assert_eq!(ok as u64, LINES);
            })
        });
    }
    g.finish();
}

fn scoring(c: &mut Criterion) {
    let log = generated_log(LINES, Format::Combined);
    let events: Vec<RequestEvent<'_>> = log.lines().map(|l| Parser::Clf.parse(l).unwrap()).collect();
    let mut g = c.benchmark_group("score");
    g.throughput(Throughput::Elements(LINES));
    g.bench_function("observe", |b| {
        b.iter_batched_ref(
            || Engine::new(EngineConfig::default()).unwrap(),
            |engine| {
                for ev in &events {
                    std::hint::black_box(engine.observe(ev));
                }
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();

    // The headline figure: one core parsing combined-format lines and scoring them.
    let mut g = c.benchmark_group("parse_score");
    g.throughput(Throughput::Elements(LINES));
    g.bench_function("combined", |b| {
        b.iter_batched_ref(
            || Engine::new(EngineConfig::default()).unwrap(),
            |engine| {
                for line in log.lines() {
                    if let Ok(ev) = Parser::Clf.parse(line) {
                        std::hint::black_box(engine.observe(&ev));
                    }
                }
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

criterion_group!(benches, parsers, scoring);
criterion_main!(benches);
