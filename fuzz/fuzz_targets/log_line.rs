//! Any bytes as a log line, through every built-in parser, and whatever parses through the
//! engine. Nothing may panic; parsed events must carry their invariants.
#![no_main]

use std::sync::{LazyLock, Mutex};

use libfuzzer_sys::fuzz_target;
use roost_engine::{Engine, EngineConfig};
use roost_logformat::{FormatKind, LogFormatConfig, Parser};

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
    vec![Parser::Clf, Parser::Json, Parser::from_config(&haproxy).unwrap(), Parser::from_config(&nginx).unwrap(), Parser::from_config(&nginx_json).unwrap()]
});

static ENGINE: LazyLock<Mutex<Engine>> = LazyLock::new(|| Mutex::new(Engine::new(EngineConfig::default()).unwrap()));

fuzz_target!(|data: &[u8]| {
    let line = String::from_utf8_lossy(data);
    let mut engine = ENGINE.lock().unwrap();
    for p in PARSERS.iter() {
        if let Ok(ev) = p.parse(&line) {
            assert!(ev.status < 1000);
            if let Some(c) = engine.observe(&ev) {
                assert!(!c.reasons.is_empty());
                assert!((-1.0..=1.0).contains(&c.reputation));
            }
        }
    }
    let _ = roost_logformat::detect(line.lines());
});
