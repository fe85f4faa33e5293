//! HTTP/1.x framing, strictly, with no I/O: where a request or response head ends, where its
//! body ends, and every message whose end two servers could read differently refused.
//!
//! A proxy that disagrees with the app about where a request ends lets an attacker smuggle a
//! second request inside the first (CL.TE, TE.CL, TE.TE). So this module refuses, before
//! anything is forwarded:
//! - a request with both `Content-Length` and `Transfer-Encoding`;
//! - more than one `Content-Length` (even equal ones), or one that is not plain digits;
//! - any `Transfer-Encoding` but exactly `chunked` (no lists, no `xchunked`, no `chunked, x`,
//!   no quoting), and any `Transfer-Encoding` in an HTTP/1.0 request;
//! - obs-folded header lines, whitespace before a header's colon, control bytes in values (via
//!   `httparse`'s strict parser);
//! - a missing or repeated `Host` in HTTP/1.1;
//! - chunk sizes that are not 1–16 hex digits, chunk lines ended by a bare LF, chunk data not
//!   followed by CRLF, control bytes in chunk extensions, oversized trailers.
//!
//! What is forwarded is re-serialized from what was parsed (CRLF line ends, one space after each
//! colon, chunk extensions and trailers dropped), never copied raw, so a tolerance of the parser
//! here (a bare LF ending a header line) cannot reach the app as something else.

/// Why a message was refused: a bounded set (metric label and log field).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the head is not HTTP/1.x (bad token, folded line, space before a colon, control byte)")]
    Malformed,
    #[error("the head is larger than allowed")]
    TooLarge,
    #[error("more header fields than allowed")]
    TooManyHeaders,
    #[error("both Content-Length and Transfer-Encoding")]
    BothLengths,
    #[error("more than one Content-Length")]
    DuplicateLength,
    #[error("Content-Length is not a plain number")]
    BadLength,
    #[error("a Transfer-Encoding other than chunked")]
    BadTransferEncoding,
    #[error("no Host, or more than one")]
    BadHost,
    #[error("the request target is not a path or an absolute URL")]
    BadTarget,
    #[error("a chunk size, chunk line end or trailer is invalid")]
    BadChunk,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Malformed => "malformed",
            Refusal::TooLarge => "header_too_large",
            Refusal::TooManyHeaders => "too_many_headers",
            Refusal::BothLengths => "both_lengths",
            Refusal::DuplicateLength => "duplicate_length",
            Refusal::BadLength => "bad_length",
            Refusal::BadTransferEncoding => "bad_transfer_encoding",
            Refusal::BadHost => "bad_host",
            Refusal::BadTarget => "bad_target",
            Refusal::BadChunk => "bad_chunk",
        }
    }

    /// Every refusal, for metrics that are created up front.
    pub const ALL: [Refusal; 10] = [
        Refusal::Malformed,
        Refusal::TooLarge,
        Refusal::TooManyHeaders,
        Refusal::BothLengths,
        Refusal::DuplicateLength,
        Refusal::BadLength,
        Refusal::BadTransferEncoding,
        Refusal::BadHost,
        Refusal::BadTarget,
        Refusal::BadChunk,
    ];

    /// The status a client is answered with.
    pub fn status(self) -> u16 {
        match self {
            Refusal::TooLarge | Refusal::TooManyHeaders => 431,
            _ => 400,
        }
    }
}

/// How a message's body is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Body {
    None,
    Length(u64),
    Chunked,
    /// Until the connection closes (responses only).
    UntilClose,
}

/// Header fields per message at most.
pub const MAX_HEADERS: usize = 128;

/// What the framing of a request says, beside its fields (which stay in the caller's
/// `httparse` array).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestFraming {
    /// Length of the head in the buffer (request line, fields, empty line).
    pub head_len: usize,
    pub body: Body,
    /// HTTP/1.1 (else 1.0).
    pub http11: bool,
    /// The client wants the connection kept open after this request.
    pub keep_alive: bool,
    pub expect_continue: bool,
    /// An `Upgrade` (WebSocket) was asked for with `Connection: upgrade`.
    pub upgrade: bool,
}

/// Parses a request head at the start of `buf`. `Ok(None)`: not complete yet (the caller reads
/// more, up to its limit on head bytes).
pub fn request<'b, 'h>(
    buf: &'b [u8],
    fields: &'h mut [httparse::Header<'b>],
) -> Result<Option<(httparse::Request<'h, 'b>, RequestFraming)>, Refusal> {
    let mut req = httparse::Request::new(fields);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(Refusal::TooManyHeaders),
        Err(_) => return Err(Refusal::Malformed),
    };
    let http11 = req.version == Some(1);
    let target = req.path.unwrap_or("");
    let method = req.method.unwrap_or("");
    let target_ok = target.starts_with('/')
        || (target == "*" && method == "OPTIONS")
        || target.starts_with("http://")
        || target.starts_with("https://");
    if !target_ok || method == "CONNECT" {
        return Err(Refusal::BadTarget);
    }
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut te_seen = false;
    let mut hosts = 0;
    let conn = connection_tokens(req.headers);
    let mut expect_continue = false;
    let mut upgrade_field = false;
    for f in req.headers.iter() {
        let name = f.name.as_bytes();
        if name.eq_ignore_ascii_case(b"content-length") {
            if length.is_some() {
                return Err(Refusal::DuplicateLength);
            }
            length = Some(parse_length(f.value).ok_or(Refusal::BadLength)?);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            // several fields are one list: any second one means a coding besides chunked
            if te_seen || !trim(f.value).eq_ignore_ascii_case(b"chunked") {
                return Err(Refusal::BadTransferEncoding);
            }
            te_seen = true;
            chunked = true;
        } else if name.eq_ignore_ascii_case(b"host") {
            hosts += 1;
        } else if name.eq_ignore_ascii_case(b"expect") {
            expect_continue = trim(f.value).eq_ignore_ascii_case(b"100-continue");
        } else if name.eq_ignore_ascii_case(b"upgrade") {
            // WebSocket only: an `h2c` upgrade would take the connection past every later verdict
            upgrade_field = trim(f.value).eq_ignore_ascii_case(b"websocket");
        } else if name.contains(&b'_') {
            // `Transfer_Encoding` is `Transfer-Encoding` to servers that fold `_` into `-`
            if same_name(name, b"transfer-encoding") {
                return Err(Refusal::BadTransferEncoding);
            }
            if same_name(name, b"content-length") {
                return Err(Refusal::BadLength);
            }
        }
    }
    if te_seen && !http11 {
        return Err(Refusal::BadTransferEncoding);
    }
    if te_seen && length.is_some() {
        return Err(Refusal::BothLengths);
    }
    if hosts > 1 || (http11 && hosts == 0) {
        return Err(Refusal::BadHost);
    }
    let body = match (chunked, length) {
        (true, _) => Body::Chunked,
        (false, Some(0) | None) => Body::None,
        (false, Some(n)) => Body::Length(n),
    };
    let keep_alive = if http11 { !conn.close } else { conn.keep_alive && !conn.close };
    Ok(Some((
        req,
        RequestFraming {
            head_len,
            body,
            http11,
            keep_alive,
            expect_continue: expect_continue && http11,
            upgrade: upgrade_field && conn.upgrade && http11,
        },
    )))
}

/// What a response's framing says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResponseFraming {
    pub head_len: usize,
    pub status: u16,
    pub body: Body,
    /// The upstream will keep the connection open after this response.
    pub keep_alive: bool,
}

/// Parses a response head at the start of `buf`, for a request that was a HEAD or not.
pub fn response<'b, 'h>(
    buf: &'b [u8],
    fields: &'h mut [httparse::Header<'b>],
    head_request: bool,
) -> Result<Option<(httparse::Response<'h, 'b>, ResponseFraming)>, Refusal> {
    let mut resp = httparse::Response::new(fields);
    let head_len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(Refusal::TooManyHeaders),
        Err(_) => return Err(Refusal::Malformed),
    };
    let status = resp.code.unwrap_or(0);
    let http11 = resp.version == Some(1);
    let conn = connection_tokens(resp.headers);
    let mut length: Option<u64> = None;
    let mut te: Option<bool> = None;
    for f in resp.headers.iter() {
        let name = f.name.as_bytes();
        if name.eq_ignore_ascii_case(b"content-length") {
            let n = parse_length(f.value).ok_or(Refusal::BadLength)?;
            if length.is_some_and(|l| l != n) {
                return Err(Refusal::DuplicateLength);
            }
            length = Some(n);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            // only a lone `chunked` is decoded; another coding (`gzip, chunked`) would reach the
            // client without the field that names it
            if te.is_some() || !trim(f.value).eq_ignore_ascii_case(b"chunked") {
                return Err(Refusal::BadTransferEncoding);
            }
            te = Some(true);
        }
    }
    if te.is_some() && length.is_some() {
        return Err(Refusal::BothLengths);
    }
    let body = if head_request || (100..200).contains(&status) || status == 204 || status == 304 {
        Body::None
    } else {
        match (te, length) {
            (Some(_), _) => Body::Chunked,
            (None, Some(0)) => Body::None,
            (None, Some(n)) => Body::Length(n),
            (None, None) => Body::UntilClose,
        }
    };
    let keep_alive = body != Body::UntilClose && if http11 { !conn.close } else { conn.keep_alive && !conn.close };
    Ok(Some((resp, ResponseFraming { head_len, status, body, keep_alive })))
}

/// The tokens of the `Connection` fields that matter here.
#[derive(Default)]
struct ConnectionTokens {
    close: bool,
    keep_alive: bool,
    upgrade: bool,
}

fn connection_tokens(fields: &[httparse::Header<'_>]) -> ConnectionTokens {
    let mut t = ConnectionTokens::default();
    for f in fields.iter().filter(|f| f.name.eq_ignore_ascii_case("connection")) {
        for tok in f.value.split(|&b| b == b',').map(trim) {
            t.close |= tok.eq_ignore_ascii_case(b"close");
            t.keep_alive |= tok.eq_ignore_ascii_case(b"keep-alive");
            t.upgrade |= tok.eq_ignore_ascii_case(b"upgrade");
        }
    }
    t
}

/// Which fields of one message must not be forwarded: hop-by-hop fields, any field the
/// message's own `Connection` names, and the proxy's internal fields in any spelling a server
/// could take for them (`X-Roost-*`, `x_roost_*`, any case). Made once per message.
pub struct Hop<'b> {
    named: [&'b [u8]; 8],
    n: usize,
    /// More tokens than `named` holds: looked up in the fields again.
    overflow: bool,
    fields: &'b [httparse::Header<'b>],
}

impl<'b> Hop<'b> {
    pub fn new(fields: &'b [httparse::Header<'b>]) -> Hop<'b> {
        let mut h = Hop { named: [&[]; 8], n: 0, overflow: false, fields };
        for f in fields.iter().filter(|f| f.name.eq_ignore_ascii_case("connection")) {
            for tok in f.value.split(|&b| b == b',').map(trim).filter(|t| !t.is_empty()) {
                if h.n < h.named.len() {
                    h.named[h.n] = tok;
                    h.n += 1;
                } else {
                    h.overflow = true;
                }
            }
        }
        h
    }

    /// Whether the field `name` stays behind.
    pub fn drops(&self, name: &str) -> bool {
        let n = name.as_bytes();
        if let Some(drop) = fixed(n) {
            return drop;
        }
        self.named[..self.n].iter().any(|t| t.eq_ignore_ascii_case(n)) || self.overflow && named(n, self.fields)
    }
}

/// Fields a `Connection` cannot name away: the message's framing and its host. (`Connection:
/// Content-Length` would otherwise send the app a request without its length, and the body as
/// the next request.)
const KEPT: [&str; 2] = ["content-length", "host"];

/// [`Hop::drops`] for a single field (looks the `Connection` fields up each time).
pub fn is_hop_or_internal(name: &str, fields: &[httparse::Header<'_>]) -> bool {
    let n = name.as_bytes();
    fixed(n).unwrap_or_else(|| named(n, fields))
}

/// Hop-by-hop fields (RFC 9110 7.6.1, and what proxies and HTTP/2 upgrades add).
const HOP: [&str; 8] =
    ["connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade", "http2-settings"];

/// Whether field `n` goes (`Some(true)`: hop-by-hop or internal) or stays (`Some(false)`:
/// [`KEPT`]) whatever `Connection` says; `None` when that depends on `Connection`.
fn fixed(n: &[u8]) -> Option<bool> {
    if HOP.iter().any(|h| n.eq_ignore_ascii_case(h.as_bytes())) || is_internal(n) {
        Some(true)
    } else if KEPT.iter().any(|k| n.eq_ignore_ascii_case(k.as_bytes())) {
        Some(false)
    } else {
        None
    }
}

/// Whether a `Connection` field among `fields` names `n`.
fn named(n: &[u8], fields: &[httparse::Header<'_>]) -> bool {
    fields
        .iter()
        .filter(|f| f.name.eq_ignore_ascii_case("connection"))
        .any(|f| f.value.split(|&b| b == b',').map(trim).any(|tok| !tok.is_empty() && tok.eq_ignore_ascii_case(n)))
}

/// Where a head ends in `buf` (after its empty line, CRLF or bare LF), if it is all there.
pub fn head_end(buf: &[u8]) -> Option<usize> {
    let mut at = 0;
    while let Some(i) = memchr::memchr(b'\n', &buf[at..]) {
        let nl = at + i;
        match buf.get(nl + 1) {
            Some(b'\n') => return Some(nl + 2),
            Some(b'\r') if buf.get(nl + 2) == Some(&b'\n') => return Some(nl + 3),
            _ => at = nl + 1,
        }
    }
    None
}

/// `X-Roost-…` in any case, with `_` for `-` (servers that map fields to CGI-style variables
/// read `X_Roost_Verdict` as `X-Roost-Verdict`).
pub fn is_internal(name: &[u8]) -> bool {
    const P: &[u8] = b"x-roost-";
    name.len() >= P.len()
        && name[..P.len()].iter().zip(P).all(|(&a, &b)| a.to_ascii_lowercase() == b || (b == b'-' && a == b'_'))
}

/// Equal names when `_` is read as `-` (`want` is lowercase).
pub fn same_name(name: &[u8], want: &[u8]) -> bool {
    name.len() == want.len()
        && name.iter().zip(want).all(|(&a, &b)| a.to_ascii_lowercase() == b || (a == b'_' && b == b'-'))
}

fn trim(v: &[u8]) -> &[u8] {
    v.trim_ascii()
}

/// A `Content-Length` value: 1–18 ASCII digits and nothing else (no sign, no list).
fn parse_length(v: &[u8]) -> Option<u64> {
    let v = trim(v);
    if v.is_empty() || v.len() > 18 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(v.iter().fold(0u64, |n, &d| n * 10 + u64::from(d - b'0')))
}

/// Trailer bytes after the last chunk at most.
const MAX_TRAILER: usize = 8 * 1024;

/// A chunked body decoder fed bytes as they arrive; it hands on the data and says where the
/// body ends.
#[derive(Clone, Debug, Default)]
pub struct Chunked {
    state: ChunkState,
    size: u64,
    digits: u8,
    trailer: usize,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum ChunkState {
    #[default]
    Size,
    Ext,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    /// At the start of a trailer line (or the final empty line).
    TrailerStart,
    Trailer,
    TrailerLf,
    EndLf,
    Done,
}

/// What [`Chunked::feed`] found in its input.
#[derive(Debug, PartialEq, Eq)]
pub enum Piece {
    /// Body data: `input[range]`.
    Data(std::ops::Range<usize>),
    /// A new chunk of this size starts (its data follows in `Data` pieces).
    Chunk(u64),
    /// The body ended after `consumed` bytes of the input; the rest belongs to what follows.
    End { consumed: usize },
}

impl Chunked {
    pub fn done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// Decodes as much of `input` as it can, calling `out` for each piece; returns the bytes
    /// consumed (all of `input`, unless the body ended inside it).
    pub fn feed(&mut self, input: &[u8], mut out: impl FnMut(Piece)) -> Result<usize, Refusal> {
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            match self.state {
                ChunkState::Size => match b {
                    b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                        if self.digits == 16 {
                            return Err(Refusal::BadChunk);
                        }
                        self.size = self.size << 4 | u64::from((b as char).to_digit(16).unwrap_or(0));
                        self.digits += 1;
                    }
                    b';' if self.digits > 0 => self.state = ChunkState::Ext,
                    b'\r' if self.digits > 0 => self.state = ChunkState::SizeLf,
                    _ => return Err(Refusal::BadChunk),
                },
                ChunkState::Ext => match b {
                    b'\r' => self.state = ChunkState::SizeLf,
                    b'\t' | 0x20..=0x7e | 0x80..=0xff => {}
                    _ => return Err(Refusal::BadChunk),
                },
                ChunkState::SizeLf => {
                    if b != b'\n' {
                        return Err(Refusal::BadChunk);
                    }
                    if self.size == 0 {
                        self.state = ChunkState::TrailerStart;
                    } else {
                        out(Piece::Chunk(self.size));
                        self.state = ChunkState::Data;
                    }
                }
                ChunkState::Data => {
                    let n = (input.len() - i).min(usize::try_from(self.size).unwrap_or(usize::MAX));
                    out(Piece::Data(i..i + n));
                    self.size -= n as u64;
                    i += n;
                    if self.size == 0 {
                        self.state = ChunkState::DataCr;
                    }
                    continue;
                }
                ChunkState::DataCr => {
                    if b != b'\r' {
                        return Err(Refusal::BadChunk);
                    }
                    self.state = ChunkState::DataLf;
                }
                ChunkState::DataLf => {
                    if b != b'\n' {
                        return Err(Refusal::BadChunk);
                    }
                    self.state = ChunkState::Size;
                    self.digits = 0;
                }
                ChunkState::TrailerStart => match b {
                    b'\r' => self.state = ChunkState::EndLf,
                    b'\t' | 0x20..=0x7e | 0x80..=0xff => self.state = ChunkState::Trailer,
                    _ => return Err(Refusal::BadChunk),
                },
                ChunkState::Trailer => match b {
                    b'\r' => self.state = ChunkState::TrailerLf,
                    b'\t' | 0x20..=0x7e | 0x80..=0xff => {}
                    _ => return Err(Refusal::BadChunk),
                },
                ChunkState::TrailerLf => {
                    if b != b'\n' {
                        return Err(Refusal::BadChunk);
                    }
                    self.state = ChunkState::TrailerStart;
                }
                ChunkState::EndLf => {
                    if b != b'\n' {
                        return Err(Refusal::BadChunk);
                    }
                    self.state = ChunkState::Done;
                    out(Piece::End { consumed: i + 1 });
                    return Ok(i + 1);
                }
                ChunkState::Done => return Ok(i),
            }
            if matches!(self.state, ChunkState::Trailer | ChunkState::TrailerStart | ChunkState::TrailerLf) {
                self.trailer += 1;
                if self.trailer > MAX_TRAILER {
                    return Err(Refusal::BadChunk);
                }
            }
            i += 1;
        }
        Ok(i)
    }
}

/// Appends a chunk-size line for `n` bytes of data.
pub fn chunk_line(out: &mut Vec<u8>, n: u64) {
    let mut digits = [0u8; 16];
    let mut k = 16;
    let mut v = n;
    loop {
        k -= 1;
        digits[k] = b"0123456789abcdef"[(v & 15) as usize];
        v >>= 4;
        if v == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[k..]);
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(raw: &str) -> Result<RequestFraming, Refusal> {
        let mut f = [httparse::EMPTY_HEADER; MAX_HEADERS];
        request(raw.as_bytes(), &mut f).map(|r| r.expect("a complete head").1)
    }

    #[test]
    fn plain_requests_are_framed() {
        let r = req("GET / HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
        assert_eq!((r.body, r.keep_alive, r.http11), (Body::None, true, true));
        let r = req("POST /f HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello").unwrap();
        assert_eq!((r.body, r.head_len), (Body::Length(5), 48));
        let r = req("POST /f HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\n\r\n").unwrap();
        assert_eq!(r.body, Body::Chunked);
        let r = req("GET / HTTP/1.0\r\n\r\n").unwrap();
        assert!(!r.keep_alive);
        let r = req("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").unwrap();
        assert!(r.keep_alive);
        let r = req("GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, close\r\n\r\n").unwrap();
        assert!(!r.keep_alive);
        let mut f = [httparse::EMPTY_HEADER; MAX_HEADERS];
        assert!(request(b"GET / HTTP/1.1\r\nHost: a\r\n", &mut f).unwrap().is_none());
    }

    #[test]
    fn ambiguous_requests_are_refused() {
        let cases = [
            (
                "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n",
                Refusal::BothLengths,
            ),
            (
                "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n",
                Refusal::BothLengths,
            ),
            ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nContent-Length: 4\r\n\r\n", Refusal::DuplicateLength),
            ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4, 4\r\n\r\n", Refusal::BadLength),
            ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +4\r\n\r\n", Refusal::BadLength),
            ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x4\r\n\r\n", Refusal::BadLength),
            ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999\r\n\r\n", Refusal::BadLength),
            ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n", Refusal::BadTransferEncoding),
            (
                "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, identity\r\n\r\n",
                Refusal::BadTransferEncoding,
            ),
            (
                "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity, chunked\r\n\r\n",
                Refusal::BadTransferEncoding,
            ),
            ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: \"chunked\"\r\n\r\n", Refusal::BadTransferEncoding),
            (
                "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: x\r\n\r\n",
                Refusal::BadTransferEncoding,
            ),
            ("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", Refusal::BadTransferEncoding),
            ("POST / HTTP/1.1\r\nHost: a\r\nTransfer_Encoding: chunked\r\n\r\n", Refusal::BadTransferEncoding),
            ("POST / HTTP/1.1\r\nHost: a\r\nContent_Length: 4\r\n\r\n", Refusal::BadLength),
            ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n", Refusal::Malformed),
            ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\r\n chunked\r\n\r\n", Refusal::Malformed),
            ("POST / HTTP/1.1\r\nHost: a\r\n Transfer-Encoding: chunked\r\n\r\n", Refusal::Malformed),
            ("POST / HTTP/1.1\r\nHost: a\r\nX: a\0b\r\n\r\n", Refusal::Malformed),
            ("GET / HTTP/1.1\r\n\r\n", Refusal::BadHost),
            ("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", Refusal::BadHost),
            ("GET x HTTP/1.1\r\nHost: a\r\n\r\n", Refusal::BadTarget),
            ("CONNECT a:443 HTTP/1.1\r\nHost: a\r\n\r\n", Refusal::BadTarget),
        ];
        for (raw, want) in cases {
            assert_eq!(req(raw), Err(want), "{raw:?}");
        }
    }

    fn dechunk(body: &[u8], split: usize) -> Result<(Vec<u8>, usize), Refusal> {
        let mut c = Chunked::default();
        let mut out = Vec::new();
        let mut used = 0;
        for part in [&body[..split.min(body.len())], &body[split.min(body.len())..]] {
            let n = c.feed(part, |p| {
                if let Piece::Data(r) = p {
                    out.extend_from_slice(&part[r]);
                }
            })?;
            used += n;
            if c.done() {
                break;
            }
        }
        Ok((out, used))
    }

    #[test]
    fn chunked_bodies_decode_at_any_split() {
        let body = b"5;name=v\r\nhello\r\n0a\r\n0123456789\r\n0\r\nX-T: 1\r\n\r\nGET /next";
        for split in 0..body.len() {
            let (data, used) = dechunk(body, split).unwrap();
            assert_eq!(data, b"hello0123456789");
            assert_eq!(&body[used..], b"GET /next", "split {split}");
        }
    }

    #[test]
    fn bad_chunks_are_refused() {
        for bad in [
            &b"5\nhello\r\n0\r\n\r\n"[..],
            b"5\r\nhello\n0\r\n\r\n",
            b"5\r\nhelloX\r\n0\r\n\r\n",
            b"-5\r\nhello\r\n0\r\n\r\n",
            b"0x5\r\nhello\r\n0\r\n\r\n",
            b" 5\r\nhello\r\n0\r\n\r\n",
            b"5 \r\nhello\r\n0\r\n\r\n",
            b"\r\nhello\r\n0\r\n\r\n",
            b"11111111111111111\r\n",
            b"5;a\nb\r\nhello\r\n0\r\n\r\n",
            b"0\r\n\n",
        ] {
            assert_eq!(dechunk(bad, bad.len()).err(), Some(Refusal::BadChunk), "{:?}", String::from_utf8_lossy(bad));
        }
        let huge = [b"0\r\n".to_vec(), b"X: ".to_vec(), vec![b'a'; MAX_TRAILER], b"\r\n\r\n".to_vec()].concat();
        assert_eq!(dechunk(&huge, 7).err(), Some(Refusal::BadChunk));
    }

    #[test]
    fn responses_are_framed() {
        let resp = |raw: &str, head: bool| {
            let mut f = [httparse::EMPTY_HEADER; MAX_HEADERS];
            response(raw.as_bytes(), &mut f, head).map(|r| r.expect("complete").1)
        };
        assert_eq!(resp("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n", false).unwrap().body, Body::Length(3));
        assert_eq!(resp("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n", true).unwrap().body, Body::None);
        assert_eq!(resp("HTTP/1.1 304 Not Modified\r\nContent-Length: 3\r\n\r\n", false).unwrap().body, Body::None);
        assert_eq!(resp("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", false).unwrap().body, Body::Chunked);
        for te in ["gzip, chunked", "gzip", "chunked\r\nTransfer-Encoding: chunked"] {
            let raw = format!("HTTP/1.1 200 OK\r\nTransfer-Encoding: {te}\r\n\r\n");
            assert_eq!(resp(&raw, false), Err(Refusal::BadTransferEncoding), "{te}");
        }
        let r = resp("HTTP/1.1 200 OK\r\n\r\n", false).unwrap();
        assert_eq!((r.body, r.keep_alive), (Body::UntilClose, false));
        assert!(!resp("HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n", false).unwrap().keep_alive);
        assert_eq!(
            resp("HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n", false),
            Err(Refusal::BothLengths)
        );
        assert_eq!(
            resp("HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", false),
            Err(Refusal::DuplicateLength)
        );
    }

    #[test]
    fn internal_and_connection_named_fields_are_not_forwarded() {
        let mut f = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let raw = b"GET / HTTP/1.1\r\nHost: a\r\nConnection: X-Secret, keep-alive, Content-Length, Host\r\nX-Secret: 1\r\n\r\n";
        let (r, _) = request(raw, &mut f).unwrap().unwrap();
        let hop = Hop::new(r.headers);
        for name in [
            "X-Roost-Verdict",
            "x_roost_verdict",
            "X_ROOST-Verdict",
            "x-roost-anything",
            "X-Secret",
            "TE",
            "Keep-Alive",
        ] {
            assert!(is_hop_or_internal(name, r.headers), "{name}");
            assert!(hop.drops(name), "{name}");
        }
        for name in ["Host", "Content-Length", "X-Roost", "X-Roostverdict", "Cookie", "Keep"] {
            assert!(!is_hop_or_internal(name, r.headers), "{name}");
            assert!(!hop.drops(name), "{name}");
        }
        // more Connection tokens than the filter holds: the rest are still found
        let many = b"GET / HTTP/1.1\r\nHost: a\r\nConnection: a, b, c, d, e, f, g, h, i, X-Late\r\n\r\n";
        let mut f = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let (r, _) = request(many, &mut f).unwrap().unwrap();
        assert!(Hop::new(r.headers).drops("x-late") && !Hop::new(r.headers).drops("x-early"));
    }

    #[test]
    fn head_ends_are_found_as_httparse_finds_them() {
        for raw in [
            &b"GET / HTTP/1.1\r\nHost: a\r\n\r\nrest"[..],
            b"GET / HTTP/1.1\nHost: a\n\nrest",
            b"GET / HTTP/1.1\r\nHost: a\n\r\nrest",
        ] {
            let mut f = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let (_, fr) = request(raw, &mut f).unwrap().unwrap();
            assert_eq!(head_end(raw), Some(fr.head_len), "{:?}", String::from_utf8_lossy(raw));
        }
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: a\r\n"), None);
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: a\r\n\r"), None);
    }

    #[test]
    fn chunk_lines_are_lowercase_hex() {
        for (n, want) in [(0u64, "0\r\n"), (10, "a\r\n"), (4096, "1000\r\n"), (u64::MAX, "ffffffffffffffff\r\n")] {
            let mut out = Vec::new();
            chunk_line(&mut out, n);
            assert_eq!(out, want.as_bytes());
        }
    }
}
