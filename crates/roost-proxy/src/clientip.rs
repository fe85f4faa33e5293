//! Who the client is: the socket's peer, unless that peer is a configured trusted proxy, in
//! which case `X-Forwarded-For` is read from the right, skipping trusted hops; the first
//! address not trusted is the client. The header from anyone else is ignored (it is whatever the
//! client chose to write).

use std::net::IpAddr;

use ipnetwork::IpNetwork;

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ForwardedError {
    #[error("X-Forwarded-For from a trusted proxy holds something that is not an address")]
    Malformed,
}

pub fn is_trusted(ip: IpAddr, trusted: &[IpNetwork]) -> bool {
    trusted.iter().any(|n| n.contains(ip))
}

/// The client address for a request from `peer` carrying these `X-Forwarded-For` header values
/// (in the order they appeared). A trusted peer with a malformed header is an error: the caller
/// counts it and falls back to the peer.
pub fn client_ip<'a>(
    peer: IpAddr,
    forwarded_for: impl DoubleEndedIterator<Item = &'a [u8]>,
    trusted: &[IpNetwork],
) -> Result<IpAddr, ForwardedError> {
    let peer = canonical(peer);
    if !is_trusted(peer, trusted) {
        return Ok(peer);
    }
    let mut client = peer;
    for value in forwarded_for.rev() {
        let value = std::str::from_utf8(value).map_err(|_| ForwardedError::Malformed)?;
        for hop in value.rsplit(',') {
            let hop = hop.trim();
            if hop.is_empty() {
                continue;
            }
            let ip = parse_hop(hop).ok_or(ForwardedError::Malformed)?;
            client = ip;
            if !is_trusted(ip, trusted) {
                return Ok(ip);
            }
        }
    }
    Ok(client)
}

/// `203.0.113.7`, `2001:db8::1`, `[2001:db8::1]:443`, `203.0.113.7:5555`.
fn parse_hop(s: &str) -> Option<IpAddr> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(canonical(ip));
    }
    if let Ok(sa) = s.parse::<std::net::SocketAddr>() {
        return Some(canonical(sa.ip()));
    }
    None
}

/// IPv4-mapped IPv6 addresses (`::ffff:203.0.113.7`, what a dual-stack socket reports) as IPv4.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn only_trusted_peers_are_believed() {
        let trusted: Vec<IpNetwork> = vec!["10.0.0.0/8".parse().unwrap()];
        let h: Vec<&[u8]> = vec![b"198.51.100.9, 203.0.113.7"];
        assert_eq!(client_ip(ip("192.0.2.1"), h.iter().copied(), &trusted), Ok(ip("192.0.2.1")));
        assert_eq!(client_ip(ip("10.1.1.1"), h.iter().copied(), &trusted), Ok(ip("203.0.113.7")));
        // trusted hops on the right are skipped
        let h2: Vec<&[u8]> = vec![b"203.0.113.7, 10.2.2.2", b"10.3.3.3"];
        assert_eq!(client_ip(ip("10.1.1.1"), h2.iter().copied(), &trusted), Ok(ip("203.0.113.7")));
        assert_eq!(client_ip(ip("10.1.1.1"), std::iter::empty(), &trusted), Ok(ip("10.1.1.1")));
        let bad: Vec<&[u8]> = vec![b"203.0.113.7, nonsense"];
        assert_eq!(client_ip(ip("10.1.1.1"), bad.iter().copied(), &trusted), Err(ForwardedError::Malformed));
        let ported: Vec<&[u8]> = vec![b"[2001:db8::1]:443"];
        assert_eq!(client_ip(ip("10.1.1.1"), ported.iter().copied(), &trusted), Ok(ip("2001:db8::1")));
        assert_eq!(canonical(ip("::ffff:203.0.113.7")), ip("203.0.113.7"));
    }
}
