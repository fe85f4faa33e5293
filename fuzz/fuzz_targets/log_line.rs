//! Any bytes as a log line, through every built-in parser (access and error logs, also inside
//! a syslog frame), and whatever parses through the
//! engine. Nothing may panic; parsed events must carry their invariants.
#![no_main]

use std::sync::{LazyLock, Mutex};

use libfuzzer_sys::fuzz_target;
use roost_engine::{Engine, EngineConfig};
use roost_logformat::{FormatKind, Line, LogFormatConfig, Parser};

static PARSERS: LazyLock<Vec<Parser>> = LazyLock::new(|| {
    let nginx = LogFormatConfig {
        format: FormatKind::Nginx,
        log_format: Some(r#"log_format t '$remote_addr - $remote_user [$time_local] "$request" $status $body_bytes_sent "$http_referer" "$http_user_agent" rt=$request_time';"#.into()),
        ..Default::default()
    };
    let nginx_json = LogFormatConfig {
        format: FormatKind::Nginx,
        log_format: Some(r#"log_format j escape=json '{"t":"$time_iso8601","ip":"$remote_addr","r":"$request","s":$status,"ua":"$http_user_agent"}';"#.into()),
        ..Default::default()
    };
    let haproxy = LogFormatConfig { format: FormatKind::Haproxy, haproxy_request_headers: vec!["host".into(), "user-agent".into()], ..Default::default() };
    let syslog_nginx = LogFormatConfig { syslog: true, ..nginx.clone() };
    vec![
        Parser::Clf,
        Parser::Json,
        Parser::from_config(&haproxy).unwrap(),
        Parser::from_config(&nginx).unwrap(),
        Parser::from_config(&nginx_json).unwrap(),
        Parser::Syslog(Box::new(Parser::Clf)),
        Parser::Syslog(Box::new(Parser::Json)),
        Parser::from_config(&syslog_nginx).unwrap(),
        Parser::NginxError(3600),
        Parser::ApacheError(-7200),
        Parser::Syslog(Box::new(Parser::NginxError(0))),
    ]
});

static ENGINE: LazyLock<Mutex<Engine>> = LazyLock::new(|| Mutex::new(Engine::new(EngineConfig::default()).unwrap()));

fuzz_target!(|data: &[u8]| {
    let line = String::from_utf8_lossy(data);
    let mut engine = ENGINE.lock().unwrap();
    for p in PARSERS.iter() {
        let change = match p.parse_line(&line) {
            Ok(Line::Request(ev)) => {
                assert!(ev.status < 1000);
                engine.observe(&ev)
            }
            Ok(Line::Error(ev)) => {
                assert!(line.contains(ev.message.as_ref()));
                engine.observe_error(&ev)
            }
            Ok(Line::Unjudged) | Err(_) => None,
        };
        if let Some(c) = change {
            assert!(!c.reasons.is_empty());
            assert!((-1.0..=1.0).contains(&c.reputation));
        }
    }
    if let Some(f) = roost_logformat::syslog::frame(&line) {
        // the message is the tail of the line
        assert!(line.ends_with(f.message));
    }
    let _ = roost_logformat::detect(line.lines());
});
