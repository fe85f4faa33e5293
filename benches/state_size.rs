//! Engine memory per tracked client, measured with a counting allocator over 1M distinct
//! clients (one request each). `cargo bench -p roost-benches --bench state_size`

use std::alloc::{GlobalAlloc, Layout, System};
use std::borrow::Cow;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicIsize, Ordering};

use roost_engine::{Engine, EngineConfig, IpState, RequestEvent, Timestamp};

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

const N: u32 = 1_000_000;

fn event(ip: IpAddr, i: u32) -> RequestEvent<'static> {
    RequestEvent {
        time: Timestamp::from_secs(1_764_064_800 + (i / 1000) as i64),
        client: ip,
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
    }
}

fn measure(name: &str, prefix: u8, ip_of: impl Fn(u32) -> IpAddr) {
    let before = LIVE.load(Ordering::Relaxed);
    let cfg = EngineConfig { ipv6_prefix: prefix, ..Default::default() };
    let mut engine = Engine::new(cfg).unwrap();
    let base = LIVE.load(Ordering::Relaxed);
    for i in 0..N {
        engine.observe(&event(ip_of(i), i));
    }
    assert_eq!(engine.tracked(), N as usize);
    let used = LIVE.load(Ordering::Relaxed) - base;
    println!(
        "{name:<28} {N} clients: {:>6.1} MiB, {:>6.1} bytes per client (engine itself {} bytes)",
        used as f64 / (1 << 20) as f64,
        used as f64 / N as f64,
        base - before
    );
    drop(engine);
}

fn main() {
    // `cargo bench` passes --bench; nothing to parse.
    println!("size_of::<IpState>() = {} bytes", std::mem::size_of::<IpState>());
    measure("IPv4", 64, |i| IpAddr::V4(Ipv4Addr::from_bits(0x0B00_0000 + i * 7)));
    measure("IPv6 aggregated per /64", 64, |i| {
        IpAddr::V6(Ipv6Addr::from_bits((0x2001_0db8u128 << 96) | ((i as u128) << 64) | 1))
    });
    measure("IPv6 per address (/128)", 128, |i| IpAddr::V6(Ipv6Addr::from_bits((0x2001_0db8u128 << 96) | i as u128)));
}
