//! The engine's memory per tracked client stays within its budget of 128 bytes, measured with a
//! counting allocator over 1M distinct clients (this test binary's own global allocator).
//! This is also the benchmark: `cargo test --release -p roost-engine --test memory -- --nocapture`
//! prints the figures BENCHMARKS.md records.

use std::alloc::{GlobalAlloc, Layout, System};
use std::borrow::Cow;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicIsize, Ordering};

use roost_engine::{Engine, EngineConfig, RequestEvent, Timestamp};

struct Counting;
static LIVE: AtomicIsize = AtomicIsize::new(0);

#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        LIVE.fetch_add(new as isize - l.size() as isize, Ordering::Relaxed);
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static A: Counting = Counting;

const BUDGET: f64 = 128.0;
const N: u32 = 1_000_000;

fn per_client(prefix: u8, ip_of: impl Fn(u32) -> IpAddr) -> f64 {
    let mut engine = Engine::new(EngineConfig { ipv6_prefix: prefix, ..Default::default() }).unwrap();
    let base = LIVE.load(Ordering::Relaxed);
    for i in 0..N {
        let ev = RequestEvent {
            time: Timestamp::from_secs(1_764_064_800 + (i / 1000) as i64),
            client: ip_of(i),
            method: Cow::Borrowed("GET"),
            host: None,
            path: Cow::Borrowed("/"),
            query: None,
            protocol: Cow::Borrowed("HTTP/1.1"),
            status: 200,
            bytes: 512,
            request_time: None,
            referer: None,
            user_agent: None,
        };
        engine.observe(&ev);
    }
    assert_eq!(engine.tracked(), N as usize);
    (LIVE.load(Ordering::Relaxed) - base) as f64 / N as f64
}

#[test]
fn at_most_128_bytes_per_client_with_1m_clients() {
    println!("size_of::<IpState>() = {} bytes", std::mem::size_of::<roost_engine::IpState>());
    type Case = (&'static str, u8, fn(u32) -> IpAddr);
    let cases: [Case; 3] = [
        ("IPv4", 64, |i| IpAddr::V4(Ipv4Addr::from_bits(0x0B00_0000 + i * 7))),
        ("IPv6 aggregated per /64", 64, |i| {
            IpAddr::V6(Ipv6Addr::from_bits((0x2001_0db8u128 << 96) | ((i as u128) << 64) | 1))
        }),
        ("IPv6 per address (/128)", 128, |i| IpAddr::V6(Ipv6Addr::from_bits((0x2001_0db8u128 << 96) | i as u128))),
    ];
    for (name, prefix, ip_of) in cases {
        let per = per_client(prefix, ip_of);
        println!("{name:<26} {N} clients: {:>6.1} MiB, {per:>6.1} bytes per client", per * N as f64 / (1 << 20) as f64);
        assert!(per <= BUDGET, "{name}: {per:.1} bytes per client");
    }
}
