//! The PROXY protocol (HAProxy's, v1 text and v2 binary) from trusted load balancers: a
//! balancer in front of the proxy that passes TCP through (no HTTP of its own, TLS too) says
//! who its client is in a header before the first byte of the client's.
//!
//! With `proxy.proxy_protocol` on, a connection from a peer in `proxy.trusted_proxies` must
//! start with such a header, as with HAProxy's `accept-proxy` or nginx's `proxy_protocol`
//! listeners; the client address it names becomes the connection's peer address, which is
//! what the verdict, the clearance cookie's binding and the access log see. A connection from
//! anyone else is never read for one: whatever it sends is its request (a PROXY line from an
//! untrusted peer is a malformed request, refused with 400). A `LOCAL` (v2) or `UNKNOWN` (v1)
//! header, which balancers send for their own health checks, keeps the socket's address.
//!
//! [`frame`] finds the header's length from its first bytes and [`parse`] reads it (with the
//! `ppp` crate): both pure, and fuzzed (`fuzz/fuzz_targets/proxy_protocol.rs`). [`read`] reads
//! exactly one header from a stream, so nothing after it is taken from the HTTP parser.

use std::net::{IpAddr, SocketAddr};

use tokio::io::{AsyncRead, AsyncReadExt};

/// The v2 signature; a v1 header starts with `PROXY `.
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
const V1_PREFIX: &[u8; 6] = b"PROXY ";
/// The longest v1 line, CRLF included (the specification's bound).
pub const V1_MAX: usize = 107;
/// The longest v2 header taken (16 fixed bytes, then addresses and TLVs): balancers send a few
/// hundred bytes at most; anything longer is refused rather than buffered.
pub const V2_MAX: usize = 16 + 1024;
/// How many bytes [`frame`] needs before it can say anything.
pub const PREFIX_LEN: usize = 16;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("the connection does not start with a PROXY protocol header")]
    Missing,
    #[error("the PROXY protocol header is malformed: {0}")]
    Malformed(String),
    #[error("the PROXY protocol header is longer than {0} bytes")]
    TooLong(usize),
    #[error("the connection closed inside its PROXY protocol header")]
    Truncated,
    #[error("no complete PROXY protocol header within the client timeout")]
    Timeout,
}

impl Error {
    /// The metric label.
    pub fn label(&self) -> &'static str {
        match self {
            Error::Missing => "missing",
            Error::Malformed(_) | Error::TooLong(_) => "malformed",
            Error::Truncated => "truncated",
            Error::Timeout => "timeout",
        }
    }
}

/// How long the header starting `buf` is, from its first bytes.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    /// Read on: not enough bytes to tell yet (at least this many are needed in all).
    NeedMore(usize),
    /// The header is the first this many bytes.
    Complete(usize),
}

/// Where the header at the start of `buf` ends. `buf` may hold more than the header.
pub fn frame(buf: &[u8]) -> Result<Frame, Error> {
    let n = buf.len().min(V1_PREFIX.len());
    if buf[..n] == V1_PREFIX[..n] {
        if n < V1_PREFIX.len() {
            return Ok(Frame::NeedMore(V1_PREFIX.len()));
        }
        let window = &buf[..buf.len().min(V1_MAX)];
        return match window.windows(2).position(|w| w == b"\r\n") {
            Some(i) => Ok(Frame::Complete(i + 2)),
            None if buf.len() >= V1_MAX => Err(Error::TooLong(V1_MAX)),
            None => Ok(Frame::NeedMore(buf.len() + 1)),
        };
    }
    let n = buf.len().min(V2_SIGNATURE.len());
    if buf[..n] != V2_SIGNATURE[..n] {
        return Err(Error::Missing);
    }
    if buf.len() < PREFIX_LEN {
        return Ok(Frame::NeedMore(PREFIX_LEN));
    }
    let len = PREFIX_LEN + usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    if len > V2_MAX {
        return Err(Error::TooLong(V2_MAX));
    }
    Ok(if buf.len() >= len { Frame::Complete(len) } else { Frame::NeedMore(len) })
}

/// The client address a complete header (exactly the bytes [`frame`] counted) names; `None`
/// for a header that names none (v2 `LOCAL`, v1 `UNKNOWN`, v2 unspecified or UNIX families).
pub fn parse(header: &[u8]) -> Result<Option<SocketAddr>, Error> {
    if header.starts_with(V1_PREFIX) {
        let h = ppp::v1::Header::try_from(header).map_err(|e| Error::Malformed(e.to_string()))?;
        return Ok(match h.addresses {
            ppp::v1::Addresses::Tcp4(a) => Some(SocketAddr::new(IpAddr::V4(a.source_address), a.source_port)),
            ppp::v1::Addresses::Tcp6(a) => Some(SocketAddr::new(IpAddr::V6(a.source_address), a.source_port)),
            ppp::v1::Addresses::Unknown => None,
        });
    }
    let h = ppp::v2::Header::try_from(header).map_err(|e| Error::Malformed(e.to_string()))?;
    if h.command == ppp::v2::Command::Local {
        return Ok(None);
    }
    Ok(match h.addresses {
        ppp::v2::Addresses::IPv4(a) => Some(SocketAddr::new(IpAddr::V4(a.source_address), a.source_port)),
        ppp::v2::Addresses::IPv6(a) => Some(SocketAddr::new(IpAddr::V6(a.source_address), a.source_port)),
        ppp::v2::Addresses::Unspecified | ppp::v2::Addresses::Unix(_) => None,
    })
}

/// Reads exactly one header from `r` and returns the client address it names. Reads no byte
/// past the header: pingora's stream buffers what the socket gave beyond what was asked for,
/// so the request that follows is intact.
pub async fn read<R: AsyncRead + Unpin + ?Sized>(r: &mut R) -> Result<Option<SocketAddr>, Error> {
    let mut buf = Vec::with_capacity(PREFIX_LEN);
    // the shortest header ("PROXY UNKNOWN\r\n") is 15 bytes: ask for 6 first, then as framed
    let mut want = V1_PREFIX.len();
    loop {
        let have = buf.len();
        buf.resize(want, 0);
        if r.read_exact(&mut buf[have..]).await.is_err() {
            return Err(Error::Truncated);
        }
        match frame(&buf)? {
            Frame::Complete(n) => {
                debug_assert_eq!(n, buf.len());
                return parse(&buf[..n]);
            }
            Frame::NeedMore(n) => want = n.max(buf.len() + 1),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2(command: u8, family: u8, addrs: &[u8], tlvs: &[u8]) -> Vec<u8> {
        let mut h = V2_SIGNATURE.to_vec();
        h.push(0x20 | command);
        h.push(family);
        h.extend_from_slice(&((addrs.len() + tlvs.len()) as u16).to_be_bytes());
        h.extend_from_slice(addrs);
        h.extend_from_slice(tlvs);
        h
    }

    fn v2_tcp4(src: [u8; 4], sport: u16) -> Vec<u8> {
        let mut a = src.to_vec();
        a.extend_from_slice(&[192, 0, 2, 10]);
        a.extend_from_slice(&sport.to_be_bytes());
        a.extend_from_slice(&443u16.to_be_bytes());
        v2(1, 0x11, &a, &[])
    }

    #[test]
    fn v1_headers_name_the_client() {
        let h = b"PROXY TCP4 203.0.113.7 192.0.2.10 51234 80\r\nGET / HTTP/1.1\r\n";
        assert_eq!(frame(h), Ok(Frame::Complete(44)));
        assert_eq!(parse(&h[..44]), Ok(Some("203.0.113.7:51234".parse().unwrap())));
        let h6 = b"PROXY TCP6 2001:db8::1 2001:db8::2 1000 443\r\n";
        assert_eq!(parse(h6), Ok(Some("[2001:db8::1]:1000".parse().unwrap())));
        assert_eq!(parse(b"PROXY UNKNOWN\r\n"), Ok(None));
    }

    #[test]
    fn v2_headers_name_the_client_or_none() {
        let h = v2_tcp4([203, 0, 113, 7], 40000);
        assert_eq!(frame(&h), Ok(Frame::Complete(28)));
        assert_eq!(parse(&h), Ok(Some("203.0.113.7:40000".parse().unwrap())));
        // TLVs after the addresses are counted in the length and skipped
        let mut a = [203, 0, 113, 8, 192, 0, 2, 10].to_vec();
        a.extend_from_slice(&[0, 1, 1, 187]);
        let with_tlv = v2(1, 0x11, &a, &[0x04, 0x00, 0x02, 0xab, 0xcd]);
        assert_eq!(frame(&with_tlv), Ok(Frame::Complete(with_tlv.len())));
        assert_eq!(parse(&with_tlv), Ok(Some("203.0.113.8:1".parse().unwrap())));
        // a balancer's own health check
        assert_eq!(parse(&v2(0, 0x00, &[], &[])), Ok(None));
    }

    #[test]
    fn framing_asks_for_what_it_needs_and_refuses_the_rest() {
        assert_eq!(frame(b"PRO"), Ok(Frame::NeedMore(6)));
        assert_eq!(frame(b"PROXY TCP4 1"), Ok(Frame::NeedMore(13)));
        assert_eq!(frame(b"\r\n\r\n"), Ok(Frame::NeedMore(16)));
        assert_eq!(frame(b"GET / HTTP/1.1\r\n"), Err(Error::Missing));
        assert_eq!(frame(&[b'A'; 200][..]), Err(Error::Missing));
        let mut long = b"PROXY ".to_vec();
        long.resize(300, b'1');
        assert_eq!(frame(&long), Err(Error::TooLong(V1_MAX)));
        let mut big = V2_SIGNATURE.to_vec();
        big.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
        assert_eq!(frame(&big), Err(Error::TooLong(V2_MAX)));
        assert!(matches!(parse(b"PROXY TCP4 1.2.3 4.5.6.7 1 2\r\n"), Err(Error::Malformed(_))));
        assert!(matches!(parse(b"PROXY TCP4 1.2.3.4 5.6.7.8 99999 2\r\n"), Err(Error::Malformed(_))));
    }

    #[tokio::test]
    async fn reading_takes_the_header_and_nothing_more() {
        let mut input = b"PROXY TCP4 203.0.113.7 192.0.2.10 51234 80\r\nGET / HTTP/1.1\r\n\r\n".as_slice();
        assert_eq!(read(&mut input).await, Ok(Some("203.0.113.7:51234".parse().unwrap())));
        assert_eq!(input, b"GET / HTTP/1.1\r\n\r\n");
        let mut bin = v2_tcp4([198, 51, 100, 1], 9);
        bin.extend_from_slice(b"GET /");
        let mut input = bin.as_slice();
        assert_eq!(read(&mut input).await, Ok(Some("198.51.100.1:9".parse().unwrap())));
        assert_eq!(input, b"GET /");
        let mut short = b"PROXY UNKNOWN\r\n".as_slice();
        assert_eq!(read(&mut short).await, Ok(None));
        assert_eq!(read(&mut b"PROXY TCP4 1.2".as_slice()).await, Err(Error::Truncated));
        assert_eq!(read(&mut b"GET / HTTP/1.1\r\n".as_slice()).await, Err(Error::Missing));
    }
}
