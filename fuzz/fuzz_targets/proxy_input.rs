//! Any bytes as what a client sends the proxy: a challenge answer (token, counter), a clearance
//! cookie, X-Forwarded-For values, a return path rendered into the challenge page. Nothing may
//! panic, nothing forged may verify, and the page must never carry the input unescaped.
#![no_main]

use libfuzzer_sys::fuzz_target;
use roost_proxy::challenge::Signer;
use roost_proxy::{clientip, pages};

fuzz_target!(|data: &[u8]| {
    let s = String::from_utf8_lossy(data);
    let signer = Signer::new(b"fuzz secret");
    let (a, b) = s.split_once('\n').unwrap_or((&s, ""));
    // nothing the fuzzer writes was signed with this key
    assert!(signer.check(a, "203.0.113.7", 1_764_650_000_000, 300_000).is_err());
    assert!(signer.verify(a, b, "203.0.113.7", 1_764_650_000_000, 300_000).is_err());
    assert!(signer.check_clearance(a, "203.0.113.7", 1_764_650_000_000).is_err());
    let trusted = ["10.0.0.0/8".parse().unwrap()];
    let _ = clientip::client_ip("10.1.2.3".parse().unwrap(), data.split(|&c| c == b'\n'), &trusted);
    let back = pages::safe_return(a);
    assert!(back.starts_with('/') && !back.starts_with("//"));
    let page = pages::ChallengePage {
        token: b.to_owned(),
        bits: 16,
        wait_token: a.to_owned(),
        wait_secs: 5,
        back: back.to_owned(),
        nonce: "n".into(),
        retry: false,
    }
    .render();
    if a.contains('<') || b.contains('<') {
        assert!(!page.contains(&format!("value=\"{b}\"")) || !b.contains('<'));
    }
    let _ = pages::error_page(403, a);
});
