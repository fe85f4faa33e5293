//! Flowspec rules and their NLRI (RFC 8955 for IPv4, RFC 8956 for IPv6) and actions (extended
//! communities). Components are written in type order (BIRD resets a session otherwise), and one
//! rule's NLRI stays under 240 bytes (its length in one byte: gobgpd 3.10 cannot read the
//! two-byte form).

use std::net::IpAddr;

use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};

/// What routers do with matching traffic.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Action {
    /// traffic-rate 0: drop.
    Discard,
    /// traffic-rate: at most this many bytes per second.
    RateLimit { bytes_per_second: f32 },
    /// redirect to the VRF with this route target (`AS:value`), where the proxy is reachable.
    RedirectVrf { asn: u16, value: u32 },
    /// redirect-to-IP (RFC 7674 / draft-ietf-idr-flowspec-redirect-ip): next hop = the proxy.
    RedirectIp { ip: std::net::Ipv4Addr },
}

impl Action {
    /// The action as an extended community (8 bytes).
    pub fn community(&self) -> [u8; 8] {
        let mut c = [0u8; 8];
        match *self {
            Action::Discard => {
                c[0] = 0x80;
                c[1] = 0x06;
            }
            Action::RateLimit { bytes_per_second } => {
                c[0] = 0x80;
                c[1] = 0x06;
                c[4..8].copy_from_slice(&bytes_per_second.max(0.0).to_be_bytes());
            }
            Action::RedirectVrf { asn, value } => {
                c[0] = 0x80;
                c[1] = 0x08;
                c[2..4].copy_from_slice(&asn.to_be_bytes());
                c[4..8].copy_from_slice(&value.to_be_bytes());
            }
            Action::RedirectIp { ip } => {
                c[0] = 0x01;
                c[1] = 0x0c;
                c[2..6].copy_from_slice(&ip.octets());
            }
        }
        c
    }
}

/// One diversion: traffic from `source` to `destination` (optionally one protocol and some
/// destination ports) gets `action`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FlowRule {
    pub source: IpNetwork,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<IpNetwork>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<u8>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<u16>,
    pub action: Action,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    #[error("source {0} and destination {1} are not the same address family")]
    Family(IpNetwork, IpNetwork),
    #[error("the rule's NLRI would be {0} bytes (at most 239)")]
    TooLong(usize),
}

impl FlowRule {
    pub fn is_ipv6(&self) -> bool {
        self.source.is_ipv6()
    }

    /// The NLRI: length byte, then the components in type order.
    pub fn nlri(&self) -> Result<Vec<u8>, RuleError> {
        let v6 = self.is_ipv6();
        if let Some(d) = self.destination
            && d.is_ipv6() != v6
        {
            return Err(RuleError::Family(self.source, d));
        }
        let mut body = Vec::with_capacity(48);
        if let Some(d) = self.destination {
            prefix_component(&mut body, 1, d);
        }
        prefix_component(&mut body, 2, self.source);
        if let Some(p) = self.protocol {
            body.extend_from_slice(&[3, 0x81, p]); // end of list, ==, one byte
        }
        if !self.ports.is_empty() {
            body.push(5);
            let mut ports = self.ports.clone();
            ports.sort_unstable();
            ports.dedup();
            for (i, p) in ports.iter().enumerate() {
                let end = if i + 1 == ports.len() { 0x80 } else { 0 };
                if *p <= 0xff {
                    body.extend_from_slice(&[end | 0x01, *p as u8]);
                } else {
                    body.push(end | 0x10 | 0x01);
                    body.extend_from_slice(&p.to_be_bytes());
                }
            }
        }
        if body.len() >= 240 {
            return Err(RuleError::TooLong(body.len()));
        }
        let mut out = Vec::with_capacity(body.len() + 1);
        out.push(body.len() as u8);
        out.extend_from_slice(&body);
        Ok(out)
    }
}

/// Destination (1) or source (2) prefix: IPv4 `type len prefix…`, IPv6 `type len offset prefix…`.
fn prefix_component(out: &mut Vec<u8>, kind: u8, net: IpNetwork) {
    let len = net.prefix();
    out.push(kind);
    out.push(len);
    let bytes = (len as usize).div_ceil(8);
    match net.network() {
        IpAddr::V4(a) => out.extend_from_slice(&a.octets()[..bytes]),
        IpAddr::V6(a) => {
            out.push(0); // offset
            out.extend_from_slice(&a.octets()[..bytes]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(src: &str, dst: Option<&str>) -> FlowRule {
        FlowRule {
            source: src.parse().unwrap(),
            destination: dst.map(|d| d.parse().unwrap()),
            protocol: Some(6),
            ports: vec![443, 80],
            action: Action::Discard,
        }
    }

    #[test]
    fn ipv4_nlri_matches_the_bytes_routers_accepted_and_bgpkit_parses_it() {
        let r = FlowRule {
            source: "198.18.0.1/32".parse().unwrap(),
            destination: Some("192.0.2.10/32".parse().unwrap()),
            protocol: None,
            ports: vec![],
            action: Action::Discard,
        };
        // the bytes gobgpd 3.10 and BIRD 2.0.12 accepted
        assert_eq!(r.nlri().unwrap(), [0x0c, 0x01, 0x20, 0xc0, 0x00, 0x02, 0x0a, 0x02, 0x20, 0xc6, 0x12, 0x00, 0x01]);
        let full = rule("203.0.113.7/32", Some("192.0.2.0/24")).nlri().unwrap();
        let parsed = bgpkit_parser::models::parse_flowspec_nlri(&full).unwrap();
        assert_eq!(parsed.components.len(), 4, "{parsed:?}");
        let again = bgpkit_parser::models::encode_flowspec_nlri(&parsed).unwrap();
        assert_eq!(again, full);
        assert_eq!(Action::Discard.community(), [0x80, 0x06, 0, 0, 0, 0, 0, 0]);
        assert_eq!(Action::RateLimit { bytes_per_second: 1000.0 }.community()[4..], [0x44, 0x7a, 0, 0]);
    }

    #[test]
    fn ipv6_components_carry_an_offset_and_families_do_not_mix() {
        let r = rule("2001:db8:1:2::/64", Some("2001:db8:ffff::/48"));
        let n = r.nlri().unwrap();
        assert_eq!(&n[1..4], &[1, 48, 0]);
        assert_eq!(n[0] as usize, n.len() - 1);
        let mixed = rule("2001:db8::/64", Some("192.0.2.0/24"));
        assert!(matches!(mixed.nlri(), Err(RuleError::Family(_, _))));
    }
}
