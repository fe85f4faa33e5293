//! Any bytes as what a router sends `roost bgp`: framing, then the message (OPEN through
//! bgpkit-parser). Nothing may panic; a frame is never longer than the buffer.
#![no_main]

use libfuzzer_sys::fuzz_target;
use roost_bgp::wire;

fuzz_target!(|data: &[u8]| {
    let mut buf = data;
    while let Ok(Some(len)) = wire::frame_len(buf) {
        assert!(len <= buf.len() && len >= wire::HEADER);
        let _ = wire::parse(&buf[..len]);
        buf = &buf[len..];
    }
    let _ = wire::parse(data);
});
