//! Any bytes as the start of a connection from a trusted load balancer: framing and parsing
//! the PROXY protocol header never panic, never claim more bytes than were given, and a header
//! that frames as complete either parses or is refused.
#![no_main]

use libfuzzer_sys::fuzz_target;
use roost_proxy::proxyproto::{self, Frame};

fuzz_target!(|data: &[u8]| {
    match proxyproto::frame(data) {
        Ok(Frame::Complete(n)) => {
            assert!(n <= data.len());
            let _ = proxyproto::parse(&data[..n]);
        }
        Ok(Frame::NeedMore(n)) => assert!(n > data.len()),
        Err(_) => {}
    }
    let _ = proxyproto::parse(data);
});
