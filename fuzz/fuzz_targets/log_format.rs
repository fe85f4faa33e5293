//! An operator's `log_format` definition (first line) and a log line (the rest): compiling any
//! definition and matching any line against it must not panic or run away.
#![no_main]

use libfuzzer_sys::fuzz_target;
use roost_logformat::NginxFormat;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (def, line) = text.split_once('\n').unwrap_or((&text, ""));
    if let Ok(f) = NginxFormat::compile(def) {
        let _ = f.parse(line);
    }
});
