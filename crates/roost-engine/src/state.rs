//! Per-client state, kept small: a busy site sees millions of clients, so every byte here is
//! multiplied. 40 bytes per client plus the hash table's own overhead.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use hashbrown::HashMap;
use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};

use crate::scoring::N_CATEGORIES;

/// The engine's key for a client: an IPv4 address, or an IPv6 address masked to the configured
/// prefix. IPv6 keys are two `u64` rather than a `u128` so that table entries align to 8 bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Key {
    V4(u32),
    V6([u64; 2]),
}

impl Key {
    pub fn of(ip: IpAddr, v6_prefix: u8) -> Key {
        match ip {
            IpAddr::V4(a) => Key::V4(a.to_bits()),
            IpAddr::V6(a) => match a.to_ipv4_mapped() {
                Some(v4) => Key::V4(v4.to_bits()),
                None => {
                    let bits = a.to_bits() & mask128(v6_prefix);
                    Key::V6([(bits >> 64) as u64, bits as u64])
                }
            },
        }
    }

    /// The network this key stands for.
    pub fn subject(self, v6_prefix: u8) -> IpNetwork {
        match self {
            Key::V4(a) => IpNetwork::V4(Ipv4Network::new(Ipv4Addr::from_bits(a), 32).expect("/32 is valid")),
            Key::V6([hi, lo]) => {
                let addr = Ipv6Addr::from_bits(((hi as u128) << 64) | lo as u128);
                IpNetwork::V6(Ipv6Network::new(addr, v6_prefix.min(128)).expect("prefix <= 128"))
            }
        }
    }

    /// The key's first address, for prefix lookups.
    pub fn addr(self) -> IpAddr {
        match self {
            Key::V4(a) => IpAddr::V4(Ipv4Addr::from_bits(a)),
            Key::V6([hi, lo]) => IpAddr::V6(Ipv6Addr::from_bits(((hi as u128) << 64) | lo as u128)),
        }
    }
}

fn mask128(prefix: u8) -> u128 {
    match prefix {
        0 => 0,
        p if p >= 128 => u128::MAX,
        p => u128::MAX << (128 - p as u32),
    }
}

/// Seconds since the Unix epoch, clamped into `u32` (good until 2106).
pub type Secs = u32;

pub const HAS_DOSSIER: u8 = 1;

/// What the engine remembers of one client.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
#[repr(C)]
pub struct IpState {
    /// Decayed sum of weighted scores (the EWMA's numerator).
    pub s: f32,
    /// Decayed sum of weights (its denominator).
    pub w: f32,
    /// Decayed count of non-static page requests (crawl rate).
    pub crawl: f32,
    /// Decayed count of slow page requests.
    pub slow: f32,
    /// Event time of the last request, and of the first in this episode.
    pub last: Secs,
    pub first: Secs,
    /// Requests in this episode (saturating).
    pub requests: u32,
    /// Requests per response category this episode (saturating): ok (any path), and for page
    /// requests: not found, auth, rejected, server error.
    pub n: [u16; N_CATEGORIES],
    /// The current verdict (`Class as u8`).
    pub class: u8,
    pub flags: u8,
}

const _: () = assert!(std::mem::size_of::<IpState>() == 40);

impl IpState {
    /// Requests answered with a negative status category this episode.
    pub fn negatives(&self) -> u32 {
        self.n[1] as u32 + self.n[2] as u32 + self.n[3] as u32
    }
}

/// The two tables of client state.
#[derive(Default)]
pub struct States {
    pub v4: HashMap<u32, IpState>,
    pub v6: HashMap<[u64; 2], IpState>,
}

impl States {
    pub fn len(&self) -> usize {
        self.v4.len() + self.v6.len()
    }

    pub fn get(&self, k: Key) -> Option<&IpState> {
        match k {
            Key::V4(a) => self.v4.get(&a),
            Key::V6(a) => self.v6.get(&a),
        }
    }

    pub fn get_mut(&mut self, k: Key) -> Option<&mut IpState> {
        match k {
            Key::V4(a) => self.v4.get_mut(&a),
            Key::V6(a) => self.v6.get_mut(&a),
        }
    }

    /// The state for `k`, created if new; the flag says whether it was.
    #[inline]
    pub fn entry(&mut self, k: Key) -> (&mut IpState, bool) {
        let mut new = false;
        let st = match k {
            Key::V4(a) => self.v4.entry(a).or_insert_with(|| {
                new = true;
                IpState::default()
            }),
            Key::V6(a) => self.v6.entry(a).or_insert_with(|| {
                new = true;
                IpState::default()
            }),
        };
        (st, new)
    }

    pub fn iter(&self) -> impl Iterator<Item = (Key, &IpState)> {
        self.v4.iter().map(|(k, v)| (Key::V4(*k), v)).chain(self.v6.iter().map(|(k, v)| (Key::V6(*k), v)))
    }

    pub fn retain(&mut self, mut keep: impl FnMut(Key, &IpState) -> bool) {
        self.v4.retain(|k, v| keep(Key::V4(*k), v));
        self.v6.retain(|k, v| keep(Key::V6(*k), v));
    }
}

/// Decay factor after `dt` seconds with half-life `h` seconds: 2^(−dt/h).
#[inline]
pub fn half_life_decay(dt: u32, inv_half_life: f32) -> f32 {
    if dt == 0 { 1.0 } else { (-(dt as f32) * inv_half_life).exp2() }
}

/// Decay factor after `dt` seconds with time constant `tau` seconds: e^(−dt/τ). A count decayed
/// this way approaches rate × τ under a steady rate, so "count ≥ limit" reads as "at least
/// `limit` per window τ".
#[inline]
pub fn window_decay(dt: u32, inv_tau: f32) -> f32 {
    if dt == 0 { 1.0 } else { (-(dt as f32) * inv_tau).exp() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys() {
        let k = Key::of("2001:db8:1:2:3:4:5:6".parse().unwrap(), 64);
        assert_eq!(k.subject(64).to_string(), "2001:db8:1:2::/64");
        assert_eq!(k, Key::of("2001:db8:1:2:ffff::1".parse().unwrap(), 64));
        assert_ne!(k, Key::of("2001:db8:1:3::1".parse().unwrap(), 64));
        let k = Key::of("2001:db8::1".parse().unwrap(), 128);
        assert_eq!(k.subject(128).to_string(), "2001:db8::1/128");
        let k = Key::of("::ffff:192.0.2.1".parse().unwrap(), 64);
        assert_eq!(k, Key::V4(0xC000_0201));
        assert_eq!(k.subject(64).to_string(), "192.0.2.1/32");
        assert_eq!(mask128(0), 0);
    }

    #[test]
    fn decays() {
        let inv = 1.0 / 600.0;
        assert_eq!(half_life_decay(0, inv), 1.0);
        assert!((half_life_decay(600, inv) - 0.5).abs() < 1e-6);
        assert!((half_life_decay(1200, inv) - 0.25).abs() < 1e-6);
        assert!((window_decay(60, 1.0 / 60.0) - (-1.0f32).exp()).abs() < 1e-6);
    }
}
