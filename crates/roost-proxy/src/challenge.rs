//! Challenges and clearance cookies: pure functions of a secret, the client's binding and the
//! time passed in (no clock reads, no I/O), so every rule here is unit-tested.
//!
//! - A challenge token is `KIND.ISSUED.PARAM.NONCE.MAC`: kind `p` (proof of work: PARAM is the
//!   number of leading zero bits SHA-256(token ":" counter) must have) or `w` (the no-JavaScript
//!   path: PARAM is how many milliseconds the visitor must wait before redeeming it). MAC is
//!   HMAC-SHA256 over the kind, issue time, parameter, nonce *and the client's binding* (its
//!   IPv4 address or IPv6 prefix), so a token solved from one address is refused from another.
//! - A solved token's nonce is claimed once ([`ReplayGuard`]): the same solution sent twice is
//!   refused.
//! - A clearance cookie is `EXPIRES.MAC` (HMAC over the binding and expiry): signed, bound to
//!   the client, expiring. Nothing in it can be changed without the secret.

use std::collections::HashMap;
use std::sync::Mutex;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

/// Why a challenge answer or a cookie was refused (a bounded set: metric label and log field).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ChallengeRefusal {
    #[error("malformed")]
    Malformed,
    #[error("signature does not match (forged, or from another address)")]
    Signature,
    #[error("expired")]
    Expired,
    #[error("redeemed before the wait was over")]
    TooEarly,
    #[error("the proof of work is wrong")]
    Work,
    #[error("already redeemed")]
    Replayed,
    #[error("too many challenges outstanding")]
    Busy,
}

impl ChallengeRefusal {
    pub fn as_str(self) -> &'static str {
        match self {
            ChallengeRefusal::Malformed => "malformed",
            ChallengeRefusal::Signature => "signature",
            ChallengeRefusal::Expired => "expired",
            ChallengeRefusal::TooEarly => "too_early",
            ChallengeRefusal::Work => "work",
            ChallengeRefusal::Replayed => "replayed",
            ChallengeRefusal::Busy => "busy",
        }
    }
}

/// The kind of challenge a token asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// SHA-256 proof of work, solved by the page's JavaScript.
    Work { bits: u8 },
    /// Wait, then follow the page's meta refresh (no JavaScript needed).
    Wait { ms: u64 },
}

/// A challenge token that verified: what it was and the nonce to claim.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verified {
    pub kind: Kind,
    pub issued: u64,
    pub nonce: [u8; 16],
}

/// Signs and checks tokens and cookies with one secret (shared by every proxy instance that
/// should accept each other's cookies).
#[derive(Clone)]
pub struct Signer {
    /// HMAC-SHA256 keyed once (its inner and outer pads hashed); each MAC starts from a copy.
    keyed: HmacSha256,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Signer(..)")
    }
}

impl Signer {
    /// A signer whose key is derived from `secret` (any length; 32 random bytes are plenty).
    pub fn new(secret: &[u8]) -> Signer {
        let key: [u8; 32] = Sha256::new_with_prefix(b"roost-proxy key v1\0").chain_update(secret).finalize().into();
        Signer { keyed: HmacSha256::new_from_slice(&key).expect("HMAC takes any key length") }
    }

    fn mac(&self, parts: &[&[u8]]) -> HmacSha256 {
        let mut m = self.keyed.clone();
        for p in parts {
            m.update(&(p.len() as u32).to_be_bytes());
            m.update(p);
        }
        m
    }

    /// A new challenge token for a client bound as `bind`.
    pub fn issue(&self, kind: Kind, bind: &str, now: u64, nonce: [u8; 16]) -> String {
        let (k, param) = match kind {
            Kind::Work { bits } => ("p", u64::from(bits)),
            Kind::Wait { ms } => ("w", ms),
        };
        let head = format!("{k}.{now}.{param}.{}", hex(&nonce));
        let tag = self.mac(&[b"challenge", bind.as_bytes(), head.as_bytes()]).finalize().into_bytes();
        format!("{head}.{}", B64.encode(&tag[..16]))
    }

    /// Checks a token's signature (for this binding) and age; not the work, not replay.
    pub fn check(&self, token: &str, bind: &str, now: u64, valid_for: u64) -> Result<Verified, ChallengeRefusal> {
        if token.len() > 200 {
            return Err(ChallengeRefusal::Malformed);
        }
        let (head, tag) = token.rsplit_once('.').ok_or(ChallengeRefusal::Malformed)?;
        let mut it = head.split('.');
        let (k, issued, param, nonce) = match (it.next(), it.next(), it.next(), it.next(), it.next()) {
            (Some(k), Some(i), Some(p), Some(n), None) => (k, i, p, n),
            _ => return Err(ChallengeRefusal::Malformed),
        };
        let issued: u64 = issued.parse().map_err(|_| ChallengeRefusal::Malformed)?;
        let param: u64 = param.parse().map_err(|_| ChallengeRefusal::Malformed)?;
        let nonce: [u8; 16] = unhex(nonce).ok_or(ChallengeRefusal::Malformed)?;
        let kind = match k {
            "p" if param <= 64 => Kind::Work { bits: param as u8 },
            "w" => Kind::Wait { ms: param },
            _ => return Err(ChallengeRefusal::Malformed),
        };
        let tag = B64.decode(tag).map_err(|_| ChallengeRefusal::Malformed)?;
        if tag.len() != 16 {
            return Err(ChallengeRefusal::Malformed);
        }
        self.mac(&[b"challenge", bind.as_bytes(), head.as_bytes()])
            .verify_truncated_left(&tag)
            .map_err(|_| ChallengeRefusal::Signature)?;
        if now > issued.saturating_add(valid_for) || issued > now.saturating_add(60_000) {
            return Err(ChallengeRefusal::Expired);
        }
        Ok(Verified { kind, issued, nonce })
    }

    /// Checks an answer to a token: signature, age, and the work done or the time waited.
    pub fn verify(
        &self,
        token: &str,
        counter: &str,
        bind: &str,
        now: u64,
        valid_for: u64,
    ) -> Result<Verified, ChallengeRefusal> {
        let v = self.check(token, bind, now, valid_for)?;
        match v.kind {
            Kind::Work { bits } => {
                if counter.is_empty() || counter.len() > 20 || !counter.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(ChallengeRefusal::Work);
                }
                if leading_zero_bits(&work_hash(token, counter)) < u32::from(bits) {
                    return Err(ChallengeRefusal::Work);
                }
            }
            Kind::Wait { ms } => {
                if now < v.issued.saturating_add(ms) {
                    return Err(ChallengeRefusal::TooEarly);
                }
            }
        }
        Ok(v)
    }

    /// A clearance cookie value for `bind`, valid until `expires` (Unix ms).
    pub fn clearance(&self, bind: &str, expires: u64) -> String {
        let e = expires.to_string();
        let tag = self.mac(&[b"clearance", bind.as_bytes(), e.as_bytes()]).finalize().into_bytes();
        format!("{e}.{}", B64.encode(&tag[..16]))
    }

    /// Whether a clearance cookie is genuine, for this binding, and unexpired.
    pub fn check_clearance(&self, value: &str, bind: &str, now: u64) -> Result<u64, ChallengeRefusal> {
        if value.len() > 100 {
            return Err(ChallengeRefusal::Malformed);
        }
        let (e, tag) = value.split_once('.').ok_or(ChallengeRefusal::Malformed)?;
        let expires: u64 = e.parse().map_err(|_| ChallengeRefusal::Malformed)?;
        let tag = B64.decode(tag).map_err(|_| ChallengeRefusal::Malformed)?;
        if tag.len() != 16 {
            return Err(ChallengeRefusal::Malformed);
        }
        self.mac(&[b"clearance", bind.as_bytes(), e.as_bytes()])
            .verify_truncated_left(&tag)
            .map_err(|_| ChallengeRefusal::Signature)?;
        if now >= expires {
            return Err(ChallengeRefusal::Expired);
        }
        Ok(expires)
    }

    /// A short reference for a verdict (shown on error pages, written to the access log): the
    /// admin UI finds the verdict by it, the visitor learns nothing from it.
    pub fn reference(&self, subject: &str, at: i64) -> String {
        let tag = self.mac(&[b"reference", subject.as_bytes(), at.to_string().as_bytes()]).finalize().into_bytes();
        let n = u64::from_be_bytes(tag[..8].try_into().expect("8 bytes"));
        // Crockford base32, 10 characters
        const A: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
        (0..10).map(|i| A[((n >> (i * 5)) & 31) as usize] as char).collect()
    }
}

/// SHA-256 of `token ":" counter`: what the page's JavaScript computes.
pub fn work_hash(token: &str, counter: &str) -> [u8; 32] {
    Sha256::new().chain_update(token).chain_update(b":").chain_update(counter).finalize().into()
}

pub fn leading_zero_bits(h: &[u8]) -> u32 {
    let mut n = 0;
    for b in h {
        if *b == 0 {
            n += 8;
        } else {
            return n + b.leading_zeros();
        }
    }
    n
}

/// Solves a work token (what a browser does; used by tests and the `roost proxy` self-check).
pub fn solve(token: &str, bits: u8) -> u64 {
    (0u64..).find(|n| leading_zero_bits(&work_hash(token, &n.to_string())) >= u32::from(bits)).expect("found")
}

/// Difficulty for a verdict's reputation (−1 worst … +1 best): `min` bits at the dubious edge,
/// up to `max` for the worst reputations.
pub fn difficulty(reputation: f32, min: u8, max: u8) -> u8 {
    let max = max.max(min);
    let badness = ((1.0 - reputation.clamp(-1.0, 1.0)) / 2.0).clamp(0.0, 1.0);
    min + (f32::from(max - min) * badness).round() as u8
}

/// Nonces already redeemed, per client (by binding), each kept until its token could no longer
/// be valid anyway. Bounded per client: a client with [`ReplayGuard::PER_CLIENT`] live
/// redemptions is refused more ([`ChallengeRefusal::Busy`]) rather than forgetting one of its
/// own that could then be replayed, and no other client notices. Bounded in clients too: when
/// `capacity` clients are remembered, the expired are dropped, then the client whose last
/// redemption ends soonest (all it could replay is its own solved token, for its own address).
pub struct ReplayGuard {
    seen: Mutex<HashMap<String, Claims>>,
    capacity: usize,
}

/// One client's redeemed nonces, each with the time its token lapses (Unix ms).
type Claims = Vec<([u8; 16], u64)>;

impl ReplayGuard {
    /// Live redemptions one client may have at once.
    pub const PER_CLIENT: usize = 64;

    /// A guard remembering at most `capacity` clients.
    pub fn new(capacity: usize) -> ReplayGuard {
        ReplayGuard { seen: Mutex::new(HashMap::new()), capacity: capacity.max(1) }
    }

    /// Claims a nonce for the client bound as `bind` until `until` (Unix ms). Fails if it was
    /// claimed before, or if this client has too many live claims.
    pub fn claim(&self, bind: &str, nonce: [u8; 16], until: u64, now: u64) -> Result<(), ChallengeRefusal> {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if !seen.contains_key(bind) && seen.len() >= self.capacity {
            seen.retain(|_, v| {
                v.retain(|(_, u)| *u > now);
                !v.is_empty()
            });
            if seen.len() >= self.capacity
                && let Some(k) = seen
                    .iter()
                    .min_by_key(|(_, v)| v.iter().map(|(_, u)| *u).max().unwrap_or(0))
                    .map(|(k, _)| k.clone())
            {
                seen.remove(&k);
            }
        }
        let mine = seen.entry(bind.to_owned()).or_default();
        if mine.iter().any(|(n, u)| *n == nonce && *u > now) {
            return Err(ChallengeRefusal::Replayed);
        }
        mine.retain(|(_, u)| *u > now);
        if mine.len() >= Self::PER_CLIENT {
            return Err(ChallengeRefusal::Busy);
        }
        mine.push((nonce, until));
        Ok(())
    }

    /// Live claims remembered, over every client.
    pub fn len(&self) -> usize {
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).values().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

pub fn hex_nonce(b: &[u8; 16]) -> String {
    hex(b)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != N * 2 {
        return None;
    }
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(i * 2..i * 2 + 2)?, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_764_650_000_000;

    #[test]
    fn a_solved_work_token_verifies_once_and_only_for_its_address() {
        let s = Signer::new(b"secret");
        let t = s.issue(Kind::Work { bits: 8 }, "203.0.113.7", T0, [7; 16]);
        let n = solve(&t, 8).to_string();
        let v = s.verify(&t, &n, "203.0.113.7", T0 + 1000, 300_000).unwrap();
        assert_eq!(v.kind, Kind::Work { bits: 8 });
        assert_eq!(s.verify(&t, &n, "203.0.113.8", T0 + 1000, 300_000), Err(ChallengeRefusal::Signature));
        assert_eq!(s.verify(&t, &n, "203.0.113.7", T0 + 400_000, 300_000), Err(ChallengeRefusal::Expired));
        // a wrong counter: find one that does not meet the difficulty
        let wrong = (0u64..).find(|c| leading_zero_bits(&work_hash(&t, &c.to_string())) < 8).unwrap();
        assert_eq!(s.verify(&t, &wrong.to_string(), "203.0.113.7", T0, 300_000), Err(ChallengeRefusal::Work));
        assert_eq!(s.verify(&t, "-1", "203.0.113.7", T0, 300_000), Err(ChallengeRefusal::Work));
        let g = ReplayGuard::new(10);
        assert_eq!(g.claim("203.0.113.7", v.nonce, T0 + 300_000, T0), Ok(()));
        assert_eq!(g.claim("203.0.113.7", v.nonce, T0 + 300_000, T0), Err(ChallengeRefusal::Replayed));
    }

    #[test]
    fn tampering_with_any_part_breaks_the_signature() {
        let s = Signer::new(b"secret");
        let t = s.issue(Kind::Work { bits: 20 }, "2001:db8::/64", T0, [1; 16]);
        let easier = t.replacen(".20.", ".1.", 1);
        assert_eq!(s.check(&easier, "2001:db8::/64", T0, 300_000), Err(ChallengeRefusal::Signature));
        let other_key = Signer::new(b"other");
        assert_eq!(other_key.check(&t, "2001:db8::/64", T0, 300_000), Err(ChallengeRefusal::Signature));
        for bad in ["", "p.1.2", "p.x.20.00.AAAA", "q.1.2.00112233445566778899aabbccddeeff.AAAAAAAAAAAAAAAAAAAAAA"] {
            assert_eq!(s.check(bad, "2001:db8::/64", T0, 300_000), Err(ChallengeRefusal::Malformed), "{bad}");
        }
    }

    #[test]
    fn the_wait_path_needs_the_wait() {
        let s = Signer::new(b"secret");
        let t = s.issue(Kind::Wait { ms: 5000 }, "198.51.100.1", T0, [2; 16]);
        assert_eq!(s.verify(&t, "", "198.51.100.1", T0 + 4999, 300_000), Err(ChallengeRefusal::TooEarly));
        assert!(s.verify(&t, "", "198.51.100.1", T0 + 5000, 300_000).is_ok());
    }

    #[test]
    fn clearance_cookies_are_bound_signed_and_expire() {
        let s = Signer::new(b"secret");
        let c = s.clearance("203.0.113.7", T0 + 3_600_000);
        assert_eq!(s.check_clearance(&c, "203.0.113.7", T0), Ok(T0 + 3_600_000));
        assert_eq!(s.check_clearance(&c, "203.0.113.8", T0), Err(ChallengeRefusal::Signature));
        assert_eq!(s.check_clearance(&c, "203.0.113.7", T0 + 3_600_000), Err(ChallengeRefusal::Expired));
        let later = c.replacen(&(T0 + 3_600_000).to_string(), &(T0 + 7_200_000).to_string(), 1);
        assert_eq!(s.check_clearance(&later, "203.0.113.7", T0), Err(ChallengeRefusal::Signature));
        assert_eq!(Signer::new(b"x").check_clearance(&c, "203.0.113.7", T0), Err(ChallengeRefusal::Signature));
        assert_eq!(s.check_clearance("garbage", "203.0.113.7", T0), Err(ChallengeRefusal::Malformed));
    }

    #[test]
    fn difficulty_follows_severity_and_replays_are_bounded() {
        assert_eq!(difficulty(1.0, 14, 20), 14);
        assert_eq!(difficulty(-1.0, 14, 20), 20);
        assert!(difficulty(-0.2, 14, 20) > difficulty(0.2, 14, 20));
        let s = Signer::new(b"k");
        assert_eq!(s.reference("203.0.113.7", 5).len(), 10);
        assert_ne!(s.reference("203.0.113.7", 5), s.reference("203.0.113.7", 6));
    }

    #[test]
    fn one_client_filling_its_replay_memory_does_not_stop_another_redeeming() {
        let g = ReplayGuard::new(1000);
        let nonce = |i: usize| {
            let mut n = [0u8; 16];
            n[..8].copy_from_slice(&(i as u64).to_be_bytes());
            n
        };
        for i in 0..ReplayGuard::PER_CLIENT {
            g.claim("198.51.100.9", nonce(i), T0 + 300_000, T0).unwrap();
        }
        // the flooder is refused more…
        assert_eq!(g.claim("198.51.100.9", nonce(9999), T0 + 300_000, T0), Err(ChallengeRefusal::Busy));
        // …and everyone else redeems as before
        assert_eq!(g.claim("203.0.113.7", nonce(1), T0 + 300_000, T0), Ok(()));
        assert_eq!(g.claim("203.0.113.7", nonce(1), T0 + 300_000, T0), Err(ChallengeRefusal::Replayed));
        // once the flooder's claims lapse, it has room again
        g.claim("198.51.100.9", nonce(9999), T0 + 700_000, T0 + 300_001).unwrap();
        assert_eq!(g.len(), 2);
    }

    #[test]
    fn many_clients_are_bounded_and_never_refused_for_each_other() {
        let g = ReplayGuard::new(3);
        for (i, who) in ["a", "b", "c", "d", "e"].iter().enumerate() {
            g.claim(who, [i as u8; 16], T0 + 10 + i as u64, T0).unwrap();
        }
        assert!(g.len() <= 3, "{}", g.len());
        // the newest client's claim is still remembered
        assert_eq!(g.claim("e", [4; 16], T0 + 20, T0), Err(ChallengeRefusal::Replayed));
    }
}
