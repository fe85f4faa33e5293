//! The flows topic's encoding, version 2: protobuf `FlowMessage`s with goflow2's field numbers
//! (`pb/flow.proto` of goflow2 v2), length-delimited (a varint length before each message, as
//! goflow2 writes with `-format.protobuf.fixedlen`), many to a Kafka record (`roost flows` fills
//! one per bucket of source addresses, keyed by the bucket, so a source's flows stay in order on
//! one partition: ARCHITECTURE.md has the schema). A consumer that reads goflow2's messages
//! reads these; roost's own fields use numbers goflow2 leaves free (1001: the exporter's port,
//! 1002: the v9 source ID or IPFIX observation domain). Version 1 (one JSON object per record)
//! is gone.
//!
//! Encoding writes straight from [`FlowRecord`]s into one buffer (no allocation per flow);
//! decoding, for consumers and tests, goes through the derived [`FlowMessage`].

use std::net::{IpAddr, SocketAddr};

use prost::Message;
use prost::encoding::{WireType, encoded_len_varint, key_len};

use crate::FlowRecord;

/// goflow2's `FlowMessage`, the fields roost fills.
#[derive(Clone, PartialEq, Message)]
pub struct FlowMessage {
    /// 2 NetFlow v5, 3 NetFlow v9, 4 IPFIX.
    #[prost(int32, tag = "1")]
    pub r#type: i32,
    #[prost(uint64, tag = "3")]
    pub sampling_rate: u64,
    #[prost(bytes = "vec", tag = "6")]
    pub src_addr: Vec<u8>,
    #[prost(bytes = "vec", tag = "7")]
    pub dst_addr: Vec<u8>,
    #[prost(uint64, tag = "9")]
    pub bytes: u64,
    #[prost(uint64, tag = "10")]
    pub packets: u64,
    /// The exporter's address (4 or 16 bytes).
    #[prost(bytes = "vec", tag = "11")]
    pub sampler_address: Vec<u8>,
    #[prost(uint32, tag = "20")]
    pub proto: u32,
    #[prost(uint32, tag = "21")]
    pub src_port: u32,
    #[prost(uint32, tag = "22")]
    pub dst_port: u32,
    #[prost(uint32, tag = "26")]
    pub tcp_flags: u32,
    /// 0x0800 IPv4, 0x86dd IPv6.
    #[prost(uint32, tag = "30")]
    pub etype: u32,
    #[prost(uint64, tag = "110")]
    pub time_received_ns: u64,
    /// 0: the export did not say.
    #[prost(uint64, tag = "111")]
    pub time_flow_start_ns: u64,
    #[prost(uint64, tag = "112")]
    pub time_flow_end_ns: u64,
    #[prost(uint32, tag = "1001")]
    pub sampler_port: u32,
    #[prost(uint32, tag = "1002")]
    pub observation_domain: u32,
}

/// Why a flows-topic value did not decode.
#[derive(Debug, thiserror::Error)]
pub enum TopicError {
    #[error("not a length-delimited FlowMessage: {0}")]
    Protobuf(#[from] prost::DecodeError),
    #[error("an address of {0} bytes (4 or 16 expected)")]
    Address(usize),
    #[error("flow type {0} (2, 3 or 4 expected)")]
    Type(i32),
    #[error("a time past what a Unix millisecond count holds")]
    Time,
}

const NS: u64 = 1_000_000;

fn flow_type(version: u16) -> u64 {
    match version {
        5 => 2,
        9 => 3,
        _ => 4,
    }
}

/// Unix ms as goflow2's unsigned nanoseconds (0 for none, and for times before 1970).
fn ns(ms: Option<i64>) -> u64 {
    ms.and_then(|m| u64::try_from(m).ok()).map_or(0, |m| m.saturating_mul(NS))
}

/// Appends `records` to `out`, each a length-delimited `FlowMessage`.
pub fn encode_into(records: &[FlowRecord], out: &mut Vec<u8>) {
    let mut e = Encoder::default();
    for r in records {
        e.encode(r, out);
    }
}

/// Encodes records one at a time, in the same bytes as [`encode_into`]. The fields a
/// datagram's records share (type, sampling, exporter, arrival, observation domain) are
/// encoded once per run of records that share them and copied after that: the arrival time
/// alone is a nine-byte varint.
#[derive(Default)]
pub struct Encoder {
    buf: Buf,
    shared: Option<Shared>,
}

/// The fields of a run of records, and their bytes: `head` (fields 1 and 3), `exporter` (11),
/// `received` (110), `tail` (1001, 1002).
struct Shared {
    of: (u16, u32, SocketAddr, i64, u32),
    head: Piece,
    exporter: Piece,
    received: Piece,
    tail: Piece,
}

/// A few encoded bytes.
#[derive(Clone, Copy, Default)]
struct Piece {
    b: [u8; 24],
    n: u8,
}

impl Piece {
    fn of(f: impl FnOnce(&mut MessageBuf)) -> Piece {
        let mut b = Buf::default();
        let mut m = MessageBuf { b: &mut b.0, n: 0 };
        f(&mut m);
        let mut p = Piece { n: m.n as u8, ..Piece::default() };
        p.b[..m.n].copy_from_slice(&m.b[..m.n]);
        p
    }
}

impl Encoder {
    /// Appends `r` to `out`, a length-delimited `FlowMessage`.
    pub fn encode(&mut self, r: &FlowRecord, out: &mut Vec<u8>) {
        let of = (r.version, r.sampling, r.exporter, r.received, r.domain);
        let s = match &self.shared {
            Some(s) if s.of == of => s,
            _ => self.shared.insert(Shared {
                of,
                head: Piece::of(|m| {
                    uint(1, flow_type(r.version), m);
                    uint(3, u64::from(r.sampling), m);
                }),
                exporter: Piece::of(|m| addr(11, r.exporter.ip(), m)),
                received: Piece::of(|m| uint(110, ns(Some(r.received)), m)),
                tail: Piece::of(|m| {
                    uint(1001, u64::from(r.exporter.port()), m);
                    uint(1002, u64::from(r.domain), m);
                }),
            }),
        };
        // the writer is a local: its length stays in a register
        let m = &mut MessageBuf { b: &mut self.buf.0, n: 2 };
        m.piece(&s.head);
        addr(6, r.src, m);
        addr(7, r.dst, m);
        uint(9, r.bytes, m);
        uint(10, r.packets, m);
        m.piece(&s.exporter);
        uint(20, u64::from(r.proto), m);
        uint(21, u64::from(r.src_port), m);
        uint(22, u64::from(r.dst_port), m);
        uint(26, u64::from(r.tcp_flags), m);
        uint(30, if r.src.is_ipv4() { 0x0800 } else { 0x86dd }, m);
        m.piece(&s.received);
        uint(111, ns(r.start), m);
        uint(112, ns(r.end), m);
        m.piece(&s.tail);
        out.extend_from_slice(m.length_delimited());
    }
}

/// `records` as one flows-topic value.
pub fn encode(records: &[FlowRecord]) -> Vec<u8> {
    let mut out = Vec::with_capacity(records.len() * 72);
    encode_into(records, &mut out);
    out
}

/// One message is built in a fixed buffer, two bytes left free before it for its length:
/// appending a few bytes at a time to a `Vec` (prost's way) costs a capacity check and a
/// `memmove` call each, most of the encoder's time at line rate.
struct Buf([u8; MESSAGE_BYTES]);

impl Default for Buf {
    fn default() -> Buf {
        Buf([0; MESSAGE_BYTES])
    }
}

/// Writes into a [`Buf`].
struct MessageBuf<'a> {
    b: &'a mut [u8; MESSAGE_BYTES],
    n: usize,
}

/// Two bytes of length, then the longest message (checked by a test against
/// [`max_encoded_len`]), then room for a whole [`Piece`] or varint written past its end.
const MESSAGE_BYTES: usize = 256 + 32;

impl MessageBuf<'_> {
    /// The whole piece is copied (a fixed size: no `memmove` call), its length kept.
    #[inline]
    fn piece(&mut self, p: &Piece) {
        self.b[self.n..self.n + p.b.len()].copy_from_slice(&p.b);
        self.n += usize::from(p.n);
    }

    #[inline]
    fn byte(&mut self, x: u8) {
        self.b[self.n] = x;
        self.n += 1;
    }

    /// One bounds check for the whole varint, not one a byte.
    #[inline]
    fn varint(&mut self, mut v: u64) {
        let len = encoded_len_varint(v);
        let out = &mut self.b[self.n..self.n + 10];
        for b in &mut out[..len - 1] {
            *b = v as u8 | 0x80;
            v >>= 7;
        }
        out[len - 1] = v as u8;
        self.n += len;
    }

    #[inline]
    fn bytes<const N: usize>(&mut self, x: [u8; N]) {
        self.b[self.n..self.n + N].copy_from_slice(&x);
        self.n += N;
    }

    /// The message with its varint length before it (a message is below 2^14 bytes).
    fn length_delimited(&mut self) -> &[u8] {
        let len = self.n - 2;
        if len < 0x80 {
            self.b[1] = len as u8;
            &self.b[1..self.n]
        } else {
            self.b[0] = len as u8 | 0x80;
            self.b[1] = (len >> 7) as u8;
            &self.b[..self.n]
        }
    }
}

#[inline]
fn key(tag: u32, wire: WireType, m: &mut MessageBuf) {
    m.varint(u64::from(tag) << 3 | wire as u64);
}

#[inline]
fn uint(tag: u32, v: u64, m: &mut MessageBuf) {
    // proto3: zero is the default, left out
    if v != 0 {
        key(tag, WireType::Varint, m);
        m.varint(v);
    }
}

#[inline]
fn addr(tag: u32, a: IpAddr, m: &mut MessageBuf) {
    key(tag, WireType::LengthDelimited, m);
    match a {
        IpAddr::V4(v4) => {
            m.byte(4);
            m.bytes(v4.octets());
        }
        IpAddr::V6(v6) => {
            m.byte(16);
            m.bytes(v6.octets());
        }
    }
}

/// An upper bound of one record's encoded size, length prefix included (for buffer sizing).
pub fn max_encoded_len() -> usize {
    let varint = |tag: u32| key_len(tag) + encoded_len_varint(u64::MAX);
    let addr = |tag: u32| key_len(tag) + 1 + 16;
    let body = [1, 3, 9, 10, 20, 21, 22, 26, 30, 110, 111, 112, 1001, 1002].map(varint).iter().sum::<usize>()
        + [6, 7, 11].map(addr).iter().sum::<usize>();
    body + encoded_len_varint(body as u64)
}

fn ip(b: &[u8]) -> Result<IpAddr, TopicError> {
    crate::template::ip(b).ok_or(TopicError::Address(b.len()))
}

fn ms(ns: u64) -> Result<Option<i64>, TopicError> {
    if ns == 0 {
        return Ok(None);
    }
    i64::try_from(ns / NS).map(Some).map_err(|_| TopicError::Time)
}

/// Reads a flows-topic value back into records.
pub fn decode(mut value: &[u8]) -> Result<Vec<FlowRecord>, TopicError> {
    let mut out = Vec::new();
    while !value.is_empty() {
        let m = FlowMessage::decode_length_delimited(&mut value)?;
        let version = match m.r#type {
            2 => 5,
            3 => 9,
            4 => 10,
            t => return Err(TopicError::Type(t)),
        };
        out.push(FlowRecord {
            exporter: SocketAddr::new(ip(&m.sampler_address)?, m.sampler_port as u16),
            version,
            domain: m.observation_domain,
            received: ms(m.time_received_ns)?.unwrap_or(0),
            start: ms(m.time_flow_start_ns)?,
            end: ms(m.time_flow_end_ns)?,
            src: ip(&m.src_addr)?,
            dst: ip(&m.dst_addr)?,
            src_port: m.src_port as u16,
            dst_port: m.dst_port as u16,
            proto: m.proto as u8,
            tcp_flags: m.tcp_flags as u16,
            packets: m.packets,
            bytes: m.bytes,
            sampling: m.sampling_rate.min(u64::from(u32::MAX)) as u32,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(src: &str, start: Option<i64>) -> FlowRecord {
        FlowRecord {
            exporter: "192.0.2.1:9995".parse().unwrap(),
            version: 9,
            domain: 7,
            received: 1_700_000_000_123,
            start,
            end: start.map(|s| s + 500),
            src: src.parse().unwrap(),
            dst: "2001:db8::10".parse().unwrap(),
            src_port: 40000,
            dst_port: 443,
            proto: 6,
            tcp_flags: 0x1b,
            packets: 12,
            bytes: u64::MAX,
            sampling: 100,
        }
    }

    #[test]
    fn records_round_trip_many_to_a_value() {
        let rs = vec![
            record("203.0.113.5", Some(1_700_000_000_000)),
            record("2001:db8::5", None),
            FlowRecord { version: 5, domain: 0, tcp_flags: 0, sampling: 1, ..record("198.51.100.1", Some(0)) },
        ];
        let v = encode(&rs);
        assert!(v.len() < rs.len() * max_encoded_len());
        let mut back = decode(&v).unwrap();
        // a start at the epoch reads as "not said" (goflow2's 0)
        assert_eq!(back[2].start, None);
        back[2].start = Some(0);
        assert_eq!(back, rs);
        assert!(decode(&[]).unwrap().is_empty());
    }

    /// The bytes are goflow2's: the derived message (what a goflow2 consumer's generated code
    /// is) reads every field at its number.
    #[test]
    fn a_goflow2_reader_sees_the_fields_at_their_numbers() {
        let v = encode(&[record("203.0.113.5", Some(1_700_000_000_000))]);
        let m = FlowMessage::decode_length_delimited(&v[..]).unwrap();
        assert_eq!((m.r#type, m.etype, m.proto, m.dst_port), (3, 0x0800, 6, 443));
        assert_eq!(m.src_addr, [203, 0, 113, 5]);
        assert_eq!(m.time_flow_start_ns, 1_700_000_000_000 * NS);
        assert_eq!(m.sampler_address, [192, 0, 2, 1]);
        assert_eq!(m.encode_length_delimited_to_vec(), v, "the same bytes as prost's own encoder");
    }

    /// A message of 128 bytes or more takes a two-byte length: the in-place encoder moves it up
    /// a byte, and the bytes stay prost's.
    #[test]
    fn a_long_message_takes_a_two_byte_length() {
        let big = FlowRecord {
            exporter: "[2001:db8::1]:9995".parse().unwrap(),
            domain: u32::MAX,
            packets: u64::MAX,
            sampling: u32::MAX,
            ..record("2001:db8::5", Some(i64::MAX / 1_000_000))
        };
        let small = record("203.0.113.5", Some(1_700_000_000_000));
        let v = encode(&[small.clone(), big.clone(), small.clone()]);
        let mut m = FlowMessage::decode_length_delimited(&v[..]).unwrap().encode_length_delimited_to_vec();
        let at = m.len();
        let long = FlowMessage::decode_length_delimited(&v[at..]).unwrap();
        assert!(long.encoded_len() >= 0x80, "{} bytes", long.encoded_len());
        m.extend(long.encode_length_delimited_to_vec());
        m.extend(FlowMessage::decode_length_delimited(&v[m.len()..]).unwrap().encode_length_delimited_to_vec());
        assert_eq!(m, v, "the same bytes as prost's own encoder");
        // any message after two bytes of length, and a whole piece or varint written at its end
        let piece = Piece::default().b.len();
        assert!(2 + max_encoded_len() + piece.max(10) <= MESSAGE_BYTES, "the buffer holds any message");
        assert_eq!(decode(&v).unwrap(), vec![small.clone(), big, small]);
    }

    /// The shared fields are encoded once per run of records that share them: a record whose
    /// exporter, arrival, version, sampling or domain differs from the one before gets its own.
    #[test]
    fn records_that_share_less_each_get_their_own_fields() {
        let a = record("203.0.113.5", Some(1_700_000_000_000));
        let rs = vec![
            a.clone(),
            a.clone(),
            FlowRecord { exporter: "192.0.2.2:9995".parse().unwrap(), ..a.clone() },
            FlowRecord { exporter: "192.0.2.2:9996".parse().unwrap(), ..a.clone() },
            FlowRecord { received: a.received + 1, ..a.clone() },
            FlowRecord { version: 10, ..a.clone() },
            FlowRecord { sampling: 1, ..a.clone() },
            FlowRecord { domain: 8, ..a.clone() },
            a.clone(),
        ];
        let mut e = Encoder::default();
        let mut v = Vec::new();
        for r in &rs {
            e.encode(r, &mut v);
        }
        assert_eq!(decode(&v).unwrap(), rs);
        let mut prost = Vec::new();
        let mut rest = &v[..];
        while !rest.is_empty() {
            prost.extend(FlowMessage::decode_length_delimited(&mut rest).unwrap().encode_length_delimited_to_vec());
        }
        assert_eq!(prost, v, "the same bytes as prost's own encoder");
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bad in [&b"\x05\x08"[..], b"{\"v\":1}", &[0x03, 0x32, 0x01, 0x01], &[0xff; 12]] {
            assert!(decode(bad).is_err(), "{bad:?}");
        }
    }
}
