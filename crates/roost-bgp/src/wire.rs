//! BGP-4 messages (RFC 4271) as roost sends them, and the reading of what a peer sends.
//! Outgoing: OPEN with multiprotocol capabilities for IPv4/IPv6 flowspec (AFI 1/2, SAFI 133),
//! route refresh and 4-octet AS; KEEPALIVE; NOTIFICATION; UPDATEs carrying flowspec in
//! MP_REACH_NLRI / MP_UNREACH_NLRI (RFC 4760) with the action as an extended community; End-of-RIB.
//! Incoming messages are framed here and parsed with bgpkit-parser.

use std::net::Ipv4Addr;

use bgpkit_parser::models::{AsnLength, BgpMessage};

use crate::flowspec::{Action, FlowRule};

pub const HEADER: usize = 19;
pub const MAX_MESSAGE: usize = 4096;
pub const SAFI_FLOWSPEC: u8 = 133;

pub const OPEN: u8 = 1;
pub const UPDATE: u8 = 2;
pub const NOTIFICATION: u8 = 3;
pub const KEEPALIVE: u8 = 4;
pub const ROUTE_REFRESH: u8 = 5;

fn message(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(HEADER + body.len());
    m.extend_from_slice(&[0xff; 16]);
    m.extend_from_slice(&((HEADER + body.len()) as u16).to_be_bytes());
    m.push(kind);
    m.extend_from_slice(body);
    m
}

/// OPEN: version 4, our AS (AS_TRANS 23456 in the 2-byte field when it does not fit), hold time,
/// router id, capabilities: MP IPv4 flowspec, MP IPv6 flowspec, route refresh, 4-octet AS.
pub fn open(asn: u32, hold: u16, id: Ipv4Addr) -> Vec<u8> {
    let mut caps = Vec::new();
    for afi in [1u16, 2] {
        caps.extend_from_slice(&[1, 4]);
        caps.extend_from_slice(&afi.to_be_bytes());
        caps.extend_from_slice(&[0, SAFI_FLOWSPEC]);
    }
    caps.extend_from_slice(&[2, 0]); // route refresh
    caps.extend_from_slice(&[65, 4]);
    caps.extend_from_slice(&asn.to_be_bytes());
    let mut body = vec![4];
    let two = if asn > u32::from(u16::MAX) { 23456 } else { asn as u16 };
    body.extend_from_slice(&two.to_be_bytes());
    body.extend_from_slice(&hold.to_be_bytes());
    body.extend_from_slice(&id.octets());
    body.push((caps.len() + 2) as u8);
    body.push(2); // capabilities parameter
    body.push(caps.len() as u8);
    body.extend_from_slice(&caps);
    message(OPEN, &body)
}

pub fn keepalive() -> Vec<u8> {
    message(KEEPALIVE, &[])
}

pub fn notification(code: u8, subcode: u8) -> Vec<u8> {
    message(NOTIFICATION, &[code, subcode])
}

/// End-of-RIB for IPv4 or IPv6 flowspec: an UPDATE with an empty MP_UNREACH_NLRI.
pub fn end_of_rib(v6: bool) -> Vec<u8> {
    let mut attrs = Vec::new();
    attr(&mut attrs, 0x80, 15, &[0, if v6 { 2 } else { 1 }, SAFI_FLOWSPEC]);
    update(&attrs)
}

fn attr(out: &mut Vec<u8>, flags: u8, kind: u8, value: &[u8]) {
    if value.len() > 255 {
        out.extend_from_slice(&[flags | 0x10, kind]);
        out.extend_from_slice(&(value.len() as u16).to_be_bytes());
    } else {
        out.extend_from_slice(&[flags, kind, value.len() as u8]);
    }
    out.extend_from_slice(value);
}

fn update(path_attrs: &[u8]) -> Vec<u8> {
    let mut body = vec![0, 0]; // no withdrawn IPv4 unicast routes
    body.extend_from_slice(&(path_attrs.len() as u16).to_be_bytes());
    body.extend_from_slice(path_attrs);
    message(UPDATE, &body)
}

/// UPDATEs announcing these rules (all of one family and one action), packed to fit 4096 bytes.
pub fn announce(asn: u32, rules: &[&FlowRule]) -> Vec<Vec<u8>> {
    let Some(first) = rules.first() else { return Vec::new() };
    let v6 = first.is_ipv6();
    let action: Action = first.action;
    let mut fixed = Vec::new();
    attr(&mut fixed, 0x40, 1, &[0]); // ORIGIN IGP
    let mut path = vec![2, 1]; // AS_SEQUENCE of one
    path.extend_from_slice(&asn.to_be_bytes());
    attr(&mut fixed, 0x40, 2, &path);
    let mut ext = Vec::new();
    attr(&mut ext, 0xc0, 16, &action.community());
    // MP_REACH header: AFI, SAFI, next hop (length 0), reserved
    let head = [0, if v6 { 2 } else { 1 }, SAFI_FLOWSPEC, 0, 0];
    let budget = MAX_MESSAGE - HEADER - 4 - fixed.len() - ext.len() - 4 - head.len();
    pack(rules, budget, |nlri| {
        let mut reach = head.to_vec();
        reach.extend_from_slice(nlri);
        let mut attrs = fixed.clone();
        attr(&mut attrs, 0x80, 14, &reach);
        attrs.extend_from_slice(&ext);
        update(&attrs)
    })
}

/// UPDATEs withdrawing these rules (all of one family).
pub fn withdraw(rules: &[&FlowRule]) -> Vec<Vec<u8>> {
    let Some(first) = rules.first() else { return Vec::new() };
    let head = [0, if first.is_ipv6() { 2 } else { 1 }, SAFI_FLOWSPEC];
    pack(rules, MAX_MESSAGE - HEADER - 4 - 4 - head.len(), |nlri| {
        let mut un = head.to_vec();
        un.extend_from_slice(nlri);
        let mut attrs = Vec::new();
        attr(&mut attrs, 0x80, 15, &un);
        update(&attrs)
    })
}

/// The rules' NLRI in runs of at most `budget` bytes, each made into one message by `message`.
fn pack(rules: &[&FlowRule], budget: usize, message: impl Fn(&[u8]) -> Vec<u8>) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut nlri = Vec::new();
    for r in rules {
        let Ok(n) = r.nlri() else { continue };
        if !nlri.is_empty() && nlri.len() + n.len() > budget {
            out.push(message(&nlri));
            nlri.clear();
        }
        nlri.extend_from_slice(&n);
    }
    if !nlri.is_empty() {
        out.push(message(&nlri));
    }
    out
}

/// What a peer sent, as far as the session needs it.
#[derive(Debug, PartialEq)]
pub enum Incoming {
    /// `flow4`/`flow6`: whether the peer offers IPv4 / IPv6 flowspec (its MP capabilities).
    Open {
        asn: u32,
        hold: u16,
        flow4: bool,
        flow6: bool,
    },
    Keepalive,
    Update,
    Notification {
        code: u8,
        subcode: u8,
    },
    RouteRefresh,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("bad BGP header (marker or length {0})")]
    Header(usize),
    #[error("unknown message type {0}")]
    Type(u8),
    #[error("malformed {kind} message: {msg}")]
    Malformed { kind: &'static str, msg: String },
}

/// The length of the message that starts `buf` once its header is there (`None`: need more).
pub fn frame_len(buf: &[u8]) -> Result<Option<usize>, WireError> {
    if buf.len() < HEADER {
        return Ok(None);
    }
    let len = u16::from_be_bytes([buf[16], buf[17]]) as usize;
    if buf[..16] != [0xff; 16] || !(HEADER..=MAX_MESSAGE).contains(&len) {
        return Err(WireError::Header(len));
    }
    Ok((buf.len() >= len).then_some(len))
}

/// Parses one whole message (see [`frame_len`]).
pub fn parse(msg: &[u8]) -> Result<Incoming, WireError> {
    let kind = *msg.get(18).ok_or(WireError::Header(msg.len()))?;
    match kind {
        KEEPALIVE if msg.len() == HEADER => Ok(Incoming::Keepalive),
        KEEPALIVE => Err(WireError::Malformed { kind: "KEEPALIVE", msg: format!("length {}", msg.len()) }),
        ROUTE_REFRESH => Ok(Incoming::RouteRefresh),
        UPDATE => Ok(Incoming::Update), // roost announces; what routers send is not used
        NOTIFICATION => {
            let (code, subcode) = (msg.get(19).copied().unwrap_or(0), msg.get(20).copied().unwrap_or(0));
            Ok(Incoming::Notification { code, subcode })
        }
        OPEN => {
            let mut b = bytes::Bytes::copy_from_slice(msg);
            match bgpkit_parser::parser::bgp::parse_bgp_message(&mut b, false, &AsnLength::Bits32) {
                Ok(BgpMessage::Open(o)) => {
                    // the 4-octet AS capability (65), when present, names the real AS
                    let mut asn = o.asn.to_u32();
                    if let Some(four) = four_octet_as(msg) {
                        asn = four;
                    }
                    let mp = capabilities(msg, 1);
                    let has = |afi: u16| {
                        mp.iter().any(|v| v.len() == 4 && v[..2] == afi.to_be_bytes() && v[3] == SAFI_FLOWSPEC)
                    };
                    Ok(Incoming::Open { asn, hold: o.hold_time, flow4: has(1), flow6: has(2) })
                }
                Ok(other) => Err(WireError::Malformed { kind: "OPEN", msg: format!("parsed as {other:?}") }),
                Err(e) => Err(WireError::Malformed { kind: "OPEN", msg: e.to_string() }),
            }
        }
        t => Err(WireError::Type(t)),
    }
}

/// The AS in an OPEN's 4-octet AS capability.
fn four_octet_as(msg: &[u8]) -> Option<u32> {
    let v = capabilities(msg, 65).into_iter().find(|v| v.len() == 4)?;
    Some(u32::from_be_bytes(v.try_into().ok()?))
}

/// The values of every capability of `code` in an OPEN (malformed parameters end the walk).
fn capabilities(msg: &[u8], code: u8) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let Some(&params_len) = msg.get(28) else { return out };
    let Some(mut p) = msg.get(29..29 + params_len as usize) else { return out };
    while p.len() >= 2 {
        let (t, l) = (p[0], p[1] as usize);
        let Some(v) = p.get(2..2 + l) else { break };
        if t == 2 {
            let mut c = v;
            while c.len() >= 2 {
                let (ct, cl) = (c[0], c[1] as usize);
                let Some(cv) = c.get(2..2 + cl) else { break };
                if ct == code {
                    out.push(cv);
                }
                c = &c[2 + cl..];
            }
        }
        p = &p[2 + l..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_open_is_what_routers_accepted_and_parses_back() {
        let o = open(65003, 90, "127.0.0.4".parse().unwrap());
        let want = "ffffffffffffffffffffffffffffffff003301".to_owned()
            + "04fdeb005a7f0000041602140104000100850104000200850200410400"
            + "00fdeb";
        let hex: String = o.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, want);
        assert_eq!(frame_len(&o), Ok(Some(o.len())));
        assert_eq!(parse(&o), Ok(Incoming::Open { asn: 65003, hold: 90, flow4: true, flow6: true }));
        let big = open(4_200_000_000, 90, "127.0.0.4".parse().unwrap());
        assert_eq!(parse(&big), Ok(Incoming::Open { asn: 4_200_000_000, hold: 90, flow4: true, flow6: true }));
        assert_eq!(parse(&keepalive()), Ok(Incoming::Keepalive));
        assert_eq!(parse(&notification(6, 2)), Ok(Incoming::Notification { code: 6, subcode: 2 }));
        assert!(frame_len(&[0u8; 19]).is_err());
        assert_eq!(frame_len(&o[..10]), Ok(None));
    }

    #[test]
    fn updates_pack_many_rules_and_withdraws_mirror_them() {
        let rules: Vec<FlowRule> = (0..1000u32)
            .map(|i| FlowRule {
                source: format!("10.{}.{}.{}/32", i >> 16 & 255, i >> 8 & 255, i & 255).parse().unwrap(),
                destination: Some("192.0.2.0/24".parse().unwrap()),
                protocol: Some(6),
                ports: vec![80, 443],
                action: Action::Discard,
            })
            .collect();
        let refs: Vec<&FlowRule> = rules.iter().collect();
        let ups = announce(65003, &refs);
        assert!(ups.len() > 1 && ups.len() < 20, "{}", ups.len());
        for u in &ups {
            assert!(u.len() <= MAX_MESSAGE);
            assert_eq!(frame_len(u), Ok(Some(u.len())));
            let mut b = bytes::Bytes::copy_from_slice(u);
            assert!(bgpkit_parser::parser::bgp::parse_bgp_message(&mut b, false, &AsnLength::Bits32).is_ok());
        }
        let w = withdraw(&refs);
        assert!(!w.is_empty());
        assert_eq!(end_of_rib(false), {
            let mut m = vec![0xff; 16];
            m.extend_from_slice(&[0, 29, 2, 0, 0, 0, 6, 0x80, 15, 3, 0, 1, 133]);
            m
        });
    }
}
