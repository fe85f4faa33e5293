//! The HTTP/1 data path: one task per downstream connection, on pingora's listeners and
//! runtimes (TLS, PROXY protocol, graceful upgrade and daemon stay pingora's), with the
//! upstream keep-alive connection bound to it (no pool round trip per request). Heads are
//! parsed by [`crate::framing`] (strict: what two servers could frame differently is refused)
//! and re-serialized, never copied raw; bodies are copied by length or re-chunked.
//!
//! The decisions (verdict, challenge, redemption, access log) are [`Waffles`]'; HTTP/2 takes
//! [`crate::http2`] with the same decisions.

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::time::{Duration, Instant};

use bytes::BufMut as _;
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

use crate::framing::{self, Body, Chunked, Piece, Refusal};
use crate::metrics::{OutcomeLabels, RouteLabels};
use crate::now_ms;
use crate::service::{CLIENT_CLOSED, Ctx, Front, MAX_FORM, Reply, Waffles};

/// Bytes read from a socket at once.
pub(crate) const READ: usize = 16 * 1024;

/// Why a request's exchange ended early.
pub(crate) enum Fail {
    /// The client went away or broke the exchange: nothing more can be said to it.
    Client,
    /// The client closed its connection while the app's response was awaited (logged as 499).
    Abandoned,
    /// The client sent something refused (answered with its status, then closed).
    Refused(Refusal),
    /// The client was too slow with its body.
    ClientTimeout,
    /// No upstream could be had, or it broke before its response head: 502; too slow: 504.
    Upstream(u16),
}

/// One downstream connection's buffers and its upstream connection.
struct Conn {
    /// Bytes read from the client and not used yet (a pipelined next request stays here).
    buf: Vec<u8>,
    /// Bytes read from the upstream and not used yet.
    ubuf: Vec<u8>,
    /// What is written next (a head, often with its body).
    out: Vec<u8>,
    up: Option<TcpStream>,
    /// How long a write to the client, or to the app, may take.
    client_wait: Duration,
    up_wait: Duration,
    peer: Option<IpAddr>,
    /// The current request is HTTP/1.1 (else 1.0: a kept connection says so).
    http11: bool,
    /// The peer's address as text, for `X-Forwarded-For`.
    peer_text: Vec<u8>,
    tls: bool,
    /// A refusal was the last word while the client may still be sending: close lingering.
    linger: bool,
}

/// What a request head asked for, kept beyond the borrow of the buffer it was parsed from.
struct Asked {
    framing: framing::RequestFraming,
    head: bool,
    post: bool,
    /// GET, HEAD or OPTIONS: safe to send again.
    idempotent: bool,
    /// For the access log (only when it is on), and the redemption endpoints.
    method: String,
    target: String,
    referer: Option<Vec<u8>>,
    user_agent: Option<Vec<u8>>,
}

/// Serves every HTTP/1 request of a connection.
pub async fn serve(w: &Waffles, mut down: Stream, shutdown: &ShutdownWatch) {
    let peer = down.get_socket_digest().and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).map(|a| a.ip()));
    let mut c = Conn {
        buf: Vec::with_capacity(4096),
        ubuf: Vec::with_capacity(4096),
        out: Vec::with_capacity(4096),
        up: None,
        client_wait: w.cfg.client_timeout,
        up_wait: w.cfg.upstream_timeout,
        peer,
        http11: true,
        peer_text: peer.map(|p| crate::clientip::canonical(p).to_string().into_bytes()).unwrap_or_default(),
        tls: down.get_ssl().is_some(),
        linger: false,
    };
    let header_timeout = w.cfg.client_timeout.min(w.cfg.keepalive_timeout);
    let mut idle = header_timeout;
    // one wait for shutdown per connection, not one per request
    let mut sd = shutdown.clone();
    let stop = sd.changed();
    tokio::pin!(stop);
    while let Some(true) = exchange(w, &mut c, &mut down, idle, shutdown, &mut stop).await {
        idle = w.cfg.keepalive_timeout;
    }
    let _ = down.shutdown().await;
    if c.linger {
        linger(&mut down, &mut c.buf).await;
    }
}

/// How long a closing connection's unread input is drained, at most, in all and per read, and
/// how much of it.
const LINGER_TIME: Duration = Duration::from_secs(5);
const LINGER_WAIT: Duration = Duration::from_secs(1);
const LINGER_BYTES: usize = 1 << 20;

/// After a refusal that ends the connection, with the client perhaps still sending (the rest of
/// a head, a body): the write side is shut, and what the client still sends is read and dropped
/// for a while (nginx's `lingering_close`). Closed with unread input, the kernel would answer
/// with a reset, and a client that was still writing could lose the 400 before reading it.
async fn linger(down: &mut Stream, buf: &mut Vec<u8>) {
    let until = Instant::now() + LINGER_TIME;
    let mut left = LINGER_BYTES;
    while left > 0 {
        let wait = until.saturating_duration_since(Instant::now()).min(LINGER_WAIT);
        if wait.is_zero() {
            break;
        }
        buf.clear();
        match read_some(down, buf, left, wait).await {
            Ok(n) if n > 0 => left = left.saturating_sub(n),
            _ => break,
        }
    }
}

/// Reads at most `limit` more bytes into `buf`, within `wait`. `Ok(0)`: the peer closed.
pub(crate) async fn read_some<S: AsyncRead + Unpin>(
    s: &mut S,
    buf: &mut Vec<u8>,
    limit: usize,
    wait: Duration,
) -> std::io::Result<usize> {
    match timeout(wait, read_more(s, buf, limit)).await {
        Ok(r) => r,
        Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
    }
}

/// [`read_some`] with no deadline of its own.
async fn read_more<S: AsyncRead + Unpin>(s: &mut S, buf: &mut Vec<u8>, limit: usize) -> std::io::Result<usize> {
    buf.reserve(limit.min(READ));
    let mut lim = buf.limit(limit.min(READ));
    s.read_buf(&mut lim).await
}

/// [`read_some`] of a request body from the client: the client gone (0 bytes, an error) or late
/// (`wait` passed) is the request's [`Fail`].
async fn read_body(down: &mut Stream, buf: &mut Vec<u8>, limit: usize, wait: Duration) -> Result<usize, Fail> {
    match read_some(down, buf, limit, wait).await {
        Ok(0) => Err(Fail::Client),
        Ok(n) => Ok(n),
        Err(e) if e.kind() == std::io::ErrorKind::TimedOut => Err(Fail::ClientTimeout),
        Err(_) => Err(Fail::Client),
    }
}

/// Writes all of `buf` and flushes it, within `wait`: a peer that stops reading is let go.
pub(crate) async fn put<S: tokio::io::AsyncWrite + Unpin + ?Sized>(
    s: &mut S,
    buf: &[u8],
    wait: Duration,
) -> std::io::Result<()> {
    let write = async {
        s.write_all(buf).await?;
        s.flush().await
    };
    match timeout(wait, write).await {
        Ok(r) => r,
        Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
    }
}

fn count_refusal(w: &Waffles, r: Refusal) {
    w.metrics.refused.get_or_create(&OutcomeLabels { outcome: r.as_str() }).inc();
}

/// Reads one request's head, within `idle` for its first byte and `header_timeout` for all of
/// it, bounded by `max_header_bytes` before anything is buffered past it. `Ok(false)`: the
/// connection ended cleanly (or shutdown came while it was idle).
async fn read_head(
    w: &Waffles,
    c: &mut Conn,
    down: &mut Stream,
    idle: Duration,
    stop: &mut Pin<&mut impl Future>,
) -> Result<bool, Fail> {
    let max = w.cfg.max_header_bytes;
    let total = w.cfg.client_timeout.min(w.cfg.keepalive_timeout);
    let mut deadline: Option<Instant> = (!c.buf.is_empty()).then(|| Instant::now() + total);
    loop {
        if !c.buf.is_empty() {
            // the head is parsed once, by the caller, when it is all here
            match framing::head_end(&c.buf) {
                Some(n) if n > max => return Err(Fail::Refused(Refusal::TooLarge)),
                Some(_) => return Ok(true),
                None => {}
            }
            if c.buf.len() > max {
                return Err(Fail::Refused(Refusal::TooLarge));
            }
        }
        let room = max + 1 - c.buf.len().min(max);
        let read = match deadline {
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                read_some(down, &mut c.buf, room, left).await
            }
            None => {
                // idle between requests: a shutdown closes the connection
                tokio::select! {
                    r = read_some(down, &mut c.buf, room, idle) => r,
                    _ = stop.as_mut() => return Ok(false),
                }
            }
        };
        match read {
            Ok(0) if c.buf.is_empty() => return Ok(false),
            Ok(0) => return Err(Fail::Client),
            Ok(_) => {
                if deadline.is_none() {
                    deadline = Some(Instant::now() + total);
                }
            }
            // idle too long, or the head not complete in time: closed without a word, as
            // nginx does (a 408 to a client that sent nothing is noise)
            Err(_) => return Err(Fail::Client),
        }
    }
}

/// One request and its response. `Some(true)`: the connection goes on to the next request.
async fn exchange(
    w: &Waffles,
    c: &mut Conn,
    down: &mut Stream,
    idle: Duration,
    shutdown: &ShutdownWatch,
    stop: &mut Pin<&mut impl Future>,
) -> Option<bool> {
    match read_head(w, c, down, idle, stop).await {
        Ok(true) => {}
        Ok(false) => return None,
        Err(Fail::Refused(r)) => {
            refuse(w, c, down, r).await;
            w.metrics.requests.get_or_create(&RouteLabels { route: "refused", verdict: "-" }).inc();
            return None;
        }
        Err(_) => return None,
    }
    let mut ctx = Ctx::new(Instant::now());
    ctx.now = now_ms();
    // everything the head says, while it is borrowed from the buffer
    let decided = {
        let mut f = [httparse::EMPTY_HEADER; framing::MAX_HEADERS];
        match framing::request(&c.buf, &mut f) {
            Ok(Some((req, fr))) if fr.head_len <= w.cfg.max_header_bytes => {
                Ok(decide(w, &mut c.out, c.peer.map(|p| (p, c.peer_text.as_slice())), &mut ctx, &req, fr))
            }
            Ok(Some(_)) => Err(Refusal::TooLarge),
            // an end of head httparse does not see as one (empty lines first)
            Ok(None) => Err(Refusal::Malformed),
            Err(r) => Err(r),
        }
    };
    let (asked, front) = match decided {
        Ok(d) => d,
        Err(r) => {
            refuse(w, c, down, r).await;
            w.metrics.requests.get_or_create(&RouteLabels { route: "refused", verdict: "-" }).inc();
            return None;
        }
    };
    c.buf.drain(..asked.framing.head_len);
    c.http11 = asked.framing.http11;
    let keep = asked.framing.keep_alive && !*shutdown.borrow();
    let protocol = if asked.framing.http11 { "HTTP/1.1" } else { "HTTP/1.0" };
    let (status, bytes, keep) = match front {
        Front::App => match to_app(w, c, down, &asked, keep).await {
            Ok((status, bytes, keep)) => (status, bytes, keep),
            Err(Fail::Refused(r)) => {
                ctx.route = "refused";
                let (s, b) = refuse(w, c, down, r).await;
                (s, b, false)
            }
            Err(Fail::Upstream(status)) => {
                let r = Reply::text(status, if status == 504 { "Gateway timeout\n" } else { "Bad gateway\n" });
                let b = write_reply(c, down, &r, asked.head, false).await;
                (status, b, false)
            }
            Err(Fail::ClientTimeout) => {
                let r = Reply::text(408, "Request timeout\n");
                let b = write_reply(c, down, &r, asked.head, false).await;
                (408, b, false)
            }
            Err(Fail::Client) => (0, 0, false),
            Err(Fail::Abandoned) => (CLIENT_CLOSED, 0, false),
        },
        Front::Reply(r) => {
            // a body the client sent with a request answered here is read past (unless it
            // waits for 100 Continue: then it is not asked for, and the connection ends)
            let keep = keep && !waits_continue(&asked.framing) && skip_body(w, c, down, &asked.framing.body).await;
            let b = write_reply(c, down, &r, asked.head, keep).await;
            (r.status, b, keep && !r.close)
        }
        Front::Redeem => {
            let (path, query) = asked.target.split_once('?').unwrap_or((&asked.target, ""));
            let form = if asked.post && path == crate::pages::VERIFY {
                if waits_continue(&asked.framing) {
                    let _ = put(down, b"HTTP/1.1 100 Continue\r\n\r\n", c.client_wait).await;
                }
                match read_form(w, c, down, &asked.framing.body).await {
                    Ok(f) => f,
                    Err(e) => {
                        let r = match e {
                            Fail::Refused(r) => {
                                count_refusal(w, r);
                                Reply::text(400, "Bad request\n")
                            }
                            _ => Reply::text(408, "Request timeout\n"),
                        };
                        ctx.served = Some((r.status, r.body.len()));
                        let b = write_reply(c, down, &r, asked.head, false).await;
                        finish(w, &mut ctx, &asked, protocol, r.status, b);
                        return None;
                    }
                }
            } else {
                let ok = !waits_continue(&asked.framing) && skip_body(w, c, down, &asked.framing.body).await;
                ok.then(Vec::new)
            };
            let too_long = form.as_ref().is_none_or(|f| f.len() > MAX_FORM);
            let ip = ctx.client.unwrap_or(IpAddr::from([0, 0, 0, 0]));
            let r = w.redeem(&mut ctx, ip, path, query, asked.post, form.as_deref().filter(|_| !too_long), c.tls).await;
            let keep = keep && !too_long;
            let b = write_reply(c, down, &r, asked.head, keep).await;
            (r.status, b, keep && !r.close)
        }
    };
    finish(w, &mut ctx, &asked, protocol, status, bytes);
    keep.then_some(true)
}

/// Everything a parsed head says, while it is borrowed from the buffer: what was asked, where
/// it goes, and (for the app) the head to send it, in `out`.
fn decide(
    w: &Waffles,
    out: &mut Vec<u8>,
    peer: Option<(IpAddr, &[u8])>,
    ctx: &mut Ctx,
    req: &httparse::Request<'_, '_>,
    fr: framing::RequestFraming,
) -> (Asked, Front) {
    let method = req.method.unwrap_or("GET");
    let target = req.path.unwrap_or("/");
    let field =
        |name: &'static str| req.headers.iter().filter(move |h| h.name.eq_ignore_ascii_case(name)).map(|h| h.value);
    let log = w.log.enabled();
    let ours = target.starts_with(crate::pages::PREFIX);
    let asked = Asked {
        framing: fr,
        head: method == "HEAD",
        post: method == "POST",
        idempotent: matches!(method, "GET" | "HEAD" | "OPTIONS"),
        method: if log || ours { method.to_owned() } else { String::new() },
        target: if log || ours { target.to_owned() } else { String::new() },
        referer: if log { field("referer").next().map(<[u8]>::to_vec) } else { None },
        user_agent: if log { field("user-agent").next().map(<[u8]>::to_vec) } else { None },
    };
    let front = match peer {
        None => {
            ctx.route = "app";
            ctx.verdict = "unknown";
            Front::App
        }
        Some((peer, _)) => {
            let ip = w.client(peer, field("x-forwarded-for").collect::<Vec<_>>().into_iter());
            w.front(ctx, ip, origin_form(target), field("cookie"))
        }
    };
    if let Front::App = front {
        upstream_head(w, out, peer, req, &fr, ctx);
    }
    (asked, front)
}

/// The client waits for `100 Continue` before it sends its body.
fn waits_continue(fr: &framing::RequestFraming) -> bool {
    fr.expect_continue && fr.body != Body::None
}

fn finish(w: &Waffles, ctx: &mut Ctx, asked: &Asked, protocol: &'static str, status: u16, bytes: usize) {
    w.finish(
        ctx,
        status,
        bytes,
        &asked.method,
        &asked.target,
        protocol,
        asked.referer.as_deref(),
        asked.user_agent.as_deref(),
    );
}

/// Answers a refused request (400 or 431) and counts why.
async fn refuse(w: &Waffles, c: &mut Conn, down: &mut Stream, r: Refusal) -> (u16, usize) {
    count_refusal(w, r);
    c.linger = true;
    tracing::debug!(peer = ?c.peer, refusal = %r, "refusing a request");
    let reply =
        Reply::text(r.status(), if r.status() == 431 { "Request header fields too large\n" } else { "Bad request\n" });
    (reply.status, write_reply(c, down, &reply, false, false).await)
}

/// The request-target as a path and query (an absolute-form target loses its scheme and host).
fn origin_form(target: &str) -> &str {
    for scheme in ["http://", "https://"] {
        if let Some(rest) = target.strip_prefix(scheme) {
            return rest.find('/').map_or("/", |i| &rest[i..]);
        }
    }
    target
}

pub(crate) fn field_line(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// The head sent to the app, in `c.out`: the request line as HTTP/1.1, every end-to-end field
/// as received (hop-by-hop, `Connection`-named and internal fields dropped), then
/// `X-Roost-Verdict`, `X-Forwarded-For` and the body's framing.
fn upstream_head(
    w: &Waffles,
    out: &mut Vec<u8>,
    peer: Option<(IpAddr, &[u8])>,
    req: &httparse::Request<'_, '_>,
    fr: &framing::RequestFraming,
    ctx: &Ctx,
) {
    out.clear();
    out.extend_from_slice(req.method.unwrap_or("GET").as_bytes());
    out.push(b' ');
    out.extend_from_slice(req.path.unwrap_or("/").as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let mut host = false;
    let hop = framing::Hop::new(req.headers);
    for h in req.headers.iter() {
        let n = h.name.as_bytes();
        if hop.drops(h.name)
            || framing::same_name(n, b"x-forwarded-for")
            || (fr.expect_continue && n.eq_ignore_ascii_case(b"expect"))
        {
            continue;
        }
        host |= n.eq_ignore_ascii_case(b"host");
        field_line(out, n, h.value);
    }
    if !host {
        // HTTP/1.0 without Host: the app still gets one
        field_line(out, b"host", b"localhost");
    }
    if fr.upgrade
        && let Some(u) = req.headers.iter().find(|h| h.name.eq_ignore_ascii_case("upgrade"))
    {
        field_line(out, b"connection", b"upgrade");
        field_line(out, b"upgrade", u.value);
    }
    field_line(out, b"x-roost-verdict", ctx.verdict_header().as_bytes());
    if let Some((peer, text)) = peer {
        out.extend_from_slice(b"x-forwarded-for: ");
        let prior = req.headers.iter().filter(|h| h.name.eq_ignore_ascii_case("x-forwarded-for")).map(|h| h.value);
        w.forwarded_for(peer, text, prior, out);
        out.extend_from_slice(b"\r\n");
    }
    if fr.body == Body::Chunked {
        field_line(out, b"transfer-encoding", b"chunked");
    }
    out.extend_from_slice(b"\r\n");
}

/// Writes a reply the proxy makes itself; returns the body bytes sent.
async fn write_reply(c: &mut Conn, down: &mut Stream, r: &Reply, head: bool, keep: bool) -> usize {
    c.out.clear();
    r.write_head(&mut c.out, keep, c.http11);
    if !head {
        c.out.extend_from_slice(&r.body);
    }
    if put(down, &c.out, c.client_wait).await.is_err() {
        return 0;
    }
    if head { 0 } else { r.body.len() }
}

/// Reads past a request body nobody will use (bounded like a form); `false` if it could not.
async fn skip_body(w: &Waffles, c: &mut Conn, down: &mut Stream, body: &Body) -> bool {
    match body {
        Body::None => true,
        _ => read_form(w, c, down, body).await.is_ok_and(|f| f.is_some_and(|f| f.len() <= MAX_FORM)),
    }
}

/// Reads a request body of at most [`MAX_FORM`] bytes: `None` if it is longer (left unread:
/// the connection then closes).
async fn read_form(w: &Waffles, c: &mut Conn, down: &mut Stream, body: &Body) -> Result<Option<Vec<u8>>, Fail> {
    let wait = w.cfg.client_timeout;
    match *body {
        Body::None | Body::UntilClose => Ok(Some(Vec::new())),
        Body::Length(n) if n > MAX_FORM as u64 => Ok(None),
        Body::Length(n) => {
            let n = n as usize;
            while c.buf.len() < n {
                let want = n - c.buf.len();
                read_body(down, &mut c.buf, want, wait).await?;
            }
            Ok(Some(c.buf.drain(..n).collect()))
        }
        Body::Chunked => {
            let mut dec = Chunked::default();
            let mut form = Vec::new();
            loop {
                let mut err = None;
                let used = dec
                    .feed(&c.buf, |p| {
                        if let Piece::Data(r) = p {
                            if form.len() + r.len() > MAX_FORM {
                                err = Some(());
                            } else {
                                form.extend_from_slice(&c.buf[r]);
                            }
                        }
                    })
                    .map_err(Fail::Refused)?;
                c.buf.drain(..used);
                if err.is_some() {
                    return Ok(None);
                }
                if dec.done() {
                    return Ok(Some(form));
                }
                read_body(down, &mut c.buf, READ, wait).await?;
            }
        }
    }
}

/// Connects to the next healthy upstream.
pub(crate) async fn connect(w: &Waffles) -> Result<TcpStream, Fail> {
    connect_to(w, next_upstream(w)?).await
}

/// The next healthy upstream, round-robin.
pub(crate) fn next_upstream(w: &Waffles) -> Result<std::net::SocketAddr, Fail> {
    let backend = w.upstreams.select(b"", 256).ok_or(Fail::Upstream(502))?;
    backend.addr.as_inet().copied().ok_or(Fail::Upstream(502))
}

/// Connects to the upstream at `addr`.
pub(crate) async fn connect_to(w: &Waffles, addr: std::net::SocketAddr) -> Result<TcpStream, Fail> {
    match timeout(w.cfg.connect_timeout, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => {
            let _ = s.set_nodelay(true);
            Ok(s)
        }
        Ok(Err(e)) => {
            tracing::warn!(upstream = %addr, error = %e, "connecting to the upstream");
            Err(Fail::Upstream(502))
        }
        Err(_) => Err(Fail::Upstream(504)),
    }
}

/// Sends the request (head in `c.out`, body from the client) to the app and its response back.
/// Returns the status, the body bytes sent and whether the client connection goes on.
async fn to_app(
    w: &Waffles,
    c: &mut Conn,
    down: &mut Stream,
    asked: &Asked,
    keep: bool,
) -> Result<(u16, usize, bool), Fail> {
    let fr = &asked.framing;
    if fr.expect_continue && fr.body != Body::None {
        // answered here: the app gets the request without Expect
        put(down, b"HTTP/1.1 100 Continue\r\n\r\n", c.client_wait).await.map_err(|_| Fail::Client)?;
    }
    // a request with no body can be sent again on a fresh connection if a kept one turns out
    // to have been closed by the app meanwhile
    // a kept connection the app closed, or sent anything on while idle, is not used again:
    // what it sent would be read as this request's response
    if c.up.as_ref().is_some_and(|u| !crate::http2::quiet(u)) {
        c.up = None;
    }
    let mut retry = fr.body == Body::None && asked.idempotent && c.up.is_some();
    let head_len = c.out.len();
    loop {
        let up = match c.up.as_mut() {
            Some(u) => u,
            None => c.up.insert(connect(w).await?),
        };
        let sent = send_request(w, &mut c.buf, &mut c.out, up, down, fr.body).await;
        let got = match sent {
            Ok(()) => head_unless_gone(w, &mut c.ubuf, up, down, &mut c.buf).await,
            Err(e) => Err(e),
        };
        match got {
            Ok(()) => return from_app(w, c, down, asked, keep).await,
            // only when nothing at all came back: the app never saw the request
            Err(Fail::Upstream(502)) if retry && c.ubuf.is_empty() => {
                retry = false;
                c.up = None;
                c.ubuf.clear();
                c.out.truncate(head_len);
            }
            Err(e) => {
                c.up = None;
                return Err(e);
            }
        }
    }
}

/// Writes the head in `out` and the request body to the upstream.
async fn send_request(
    w: &Waffles,
    buf: &mut Vec<u8>,
    out: &mut Vec<u8>,
    up: &mut TcpStream,
    down: &mut Stream,
    body: Body,
) -> Result<(), Fail> {
    let upstream_err = |_| Fail::Upstream(502);
    let wait = w.cfg.client_timeout;
    match body {
        Body::None | Body::UntilClose => put(up, out, w.cfg.upstream_timeout).await.map_err(upstream_err),
        Body::Length(n) => {
            let mut left = n;
            let have = (buf.len() as u64).min(left) as usize;
            out.extend_from_slice(&buf[..have]);
            buf.drain(..have);
            left -= have as u64;
            put(up, out, w.cfg.upstream_timeout).await.map_err(upstream_err)?;
            while left > 0 {
                read_body(down, buf, left.min(READ as u64) as usize, wait).await?;
                put(up, buf, w.cfg.upstream_timeout).await.map_err(upstream_err)?;
                left -= buf.len() as u64;
                buf.clear();
            }
            Ok(())
        }
        Body::Chunked => {
            let mut dec = Chunked::default();
            loop {
                // each piece of data its own chunk, sized by what arrived: the client's chunk
                // sizes (up to 16 hex digits) never reach the app
                let used = dec
                    .feed(buf, |p| {
                        if let Piece::Data(r) = p {
                            framing::chunk_line(out, r.len() as u64);
                            out.extend_from_slice(&buf[r]);
                            out.extend_from_slice(b"\r\n");
                        }
                    })
                    .map_err(Fail::Refused)?;
                buf.drain(..used);
                if dec.done() {
                    out.extend_from_slice(b"0\r\n\r\n");
                }
                if !out.is_empty() {
                    put(up, out, w.cfg.upstream_timeout).await.map_err(upstream_err)?;
                    out.clear();
                }
                if dec.done() {
                    return Ok(());
                }
                read_body(down, buf, READ, wait).await?;
            }
        }
    }
}

/// Reads until the upstream's response head is all in `ubuf` (parsed once, by the caller).
pub(crate) async fn read_response_head(w: &Waffles, ubuf: &mut Vec<u8>, up: &mut TcpStream) -> Result<(), Fail> {
    loop {
        if framing::head_end(ubuf).is_some() {
            return Ok(());
        }
        if ubuf.len() > MAX_RESPONSE_HEAD {
            return Err(Fail::Upstream(502));
        }
        match read_some(up, ubuf, READ, w.cfg.upstream_timeout).await {
            Ok(0) => return Err(Fail::Upstream(502)),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => return Err(Fail::Upstream(504)),
            Err(_) => return Err(Fail::Upstream(502)),
        }
    }
}

/// [`read_response_head`], unless the client closes its connection first (as nginx does, a
/// client's end of stream counts as gone, even if only half closed): then [`Fail::Abandoned`],
/// and the app connection is dropped with the request. A client that closes each request's
/// connection at once would otherwise leave the app a connection, and a request at work, for
/// up to `upstream_timeout` each. What the client sends meanwhile (a pipelined request) stays
/// in `buf`; once that holds more than a request head may, the client is no longer watched.
/// The client is watched only from [`WATCH_AFTER`] on (most answers come sooner, and a read of
/// its socket is a system call), and one timer serves for both that moment and the deadline.
async fn head_unless_gone(
    w: &Waffles,
    ubuf: &mut Vec<u8>,
    up: &mut TcpStream,
    down: &mut Stream,
    buf: &mut Vec<u8>,
) -> Result<(), Fail> {
    let start = tokio::time::Instant::now();
    let deadline = start + w.cfg.upstream_timeout;
    let timer = tokio::time::sleep_until((start + WATCH_AFTER).min(deadline));
    tokio::pin!(timer);
    let mut watching = false;
    loop {
        if framing::head_end(ubuf).is_some() {
            return Ok(());
        }
        if ubuf.len() > MAX_RESPONSE_HEAD {
            return Err(Fail::Upstream(502));
        }
        let watch = watching && buf.len() <= w.cfg.max_header_bytes;
        tokio::select! {
            biased;
            read = read_more(up, ubuf, READ) => match read {
                Ok(0) | Err(_) => return Err(Fail::Upstream(502)),
                Ok(_) => {}
            },
            () = &mut timer => {
                if tokio::time::Instant::now() >= deadline {
                    return Err(Fail::Upstream(504));
                }
                watching = true;
                timer.as_mut().reset(deadline);
            }
            read = read_more(down, buf, READ), if watch => match read {
                Ok(0) | Err(_) => {
                    w.metrics.abandoned.inc();
                    return Err(Fail::Abandoned);
                }
                Ok(_) => {}
            },
        }
    }
}

/// Bytes of an app's response head at most (beyond, a 502).
const MAX_RESPONSE_HEAD: usize = 64 * 1024;

/// How long the app may take to answer before the client is watched for having gone.
const WATCH_AFTER: Duration = Duration::from_millis(50);

/// What the client gets of a response: the same framing where it can read it, else until close.
struct Sending {
    rf: framing::ResponseFraming,
    rechunk: bool,
    keep: bool,
}

/// Sends the app's response (its head in `c.ubuf`) to the client.
async fn from_app(
    w: &Waffles,
    c: &mut Conn,
    down: &mut Stream,
    asked: &Asked,
    keep: bool,
) -> Result<(u16, usize, bool), Fail> {
    let fr = &asked.framing;
    let client_err = |_| Fail::Client;
    let Sending { rf, rechunk, keep } = loop {
        let s = response_head(c, asked, keep)?;
        c.ubuf.drain(..s.rf.head_len);
        if !(100..200).contains(&s.rf.status) || s.rf.status == 101 {
            break s;
        }
        // interim responses: 100 Continue was answered here already; others pass on (HTTP/1.1)
        if fr.http11 && s.rf.status != 100 {
            put(down, &c.out, c.client_wait).await.map_err(client_err)?;
        }
        let up = c.up.as_mut().ok_or(Fail::Upstream(502))?;
        read_response_head(w, &mut c.ubuf, up).await?;
    };
    if rf.status == 101 {
        if !fr.upgrade {
            return Err(Fail::Upstream(502));
        }
        return tunnel(c, down).await;
    }
    let up = c.up.as_mut().ok_or(Fail::Upstream(502))?;
    let wait = w.cfg.upstream_timeout;
    let mut sent = 0usize;
    let mut reuse = rf.keep_alive;
    match rf.body {
        Body::None => {
            put(down, &c.out, c.client_wait).await.map_err(client_err)?;
        }
        Body::Length(n) => {
            let mut left = n;
            let have = (c.ubuf.len() as u64).min(left) as usize;
            c.out.extend_from_slice(&c.ubuf[..have]);
            c.ubuf.drain(..have);
            left -= have as u64;
            sent += have;
            put(down, &c.out, c.client_wait).await.map_err(client_err)?;
            while left > 0 {
                match read_some(up, &mut c.ubuf, left.min(READ as u64) as usize, wait).await {
                    Ok(r) if r > 0 => {}
                    // the response is cut short: the client's connection cannot go on either
                    _ => {
                        c.up = None;
                        return Ok((rf.status, sent, false));
                    }
                }
                put(down, &c.ubuf, c.client_wait).await.map_err(client_err)?;
                left -= c.ubuf.len() as u64;
                sent += c.ubuf.len();
                c.ubuf.clear();
            }
        }
        Body::Chunked => {
            let mut dec = Chunked::default();
            loop {
                let mut n = 0;
                let used = dec
                    .feed(&c.ubuf, |p| {
                        if let Piece::Data(r) = p {
                            n += r.len();
                            if rechunk {
                                framing::chunk_line(&mut c.out, r.len() as u64);
                            }
                            c.out.extend_from_slice(&c.ubuf[r]);
                            if rechunk {
                                c.out.extend_from_slice(b"\r\n");
                            }
                        }
                    })
                    .map_err(|_| Fail::Upstream(502));
                let used = match used {
                    Ok(u) => u,
                    Err(_) => {
                        c.up = None;
                        return Ok((rf.status, sent, false));
                    }
                };
                sent += n;
                c.ubuf.drain(..used);
                if dec.done() {
                    if rechunk {
                        c.out.extend_from_slice(b"0\r\n\r\n");
                    }
                    put(down, &c.out, c.client_wait).await.map_err(client_err)?;
                    break;
                }
                // what arrived goes on now (a stream, server-sent events): nothing waits for more
                if !c.out.is_empty() {
                    put(down, &c.out, c.client_wait).await.map_err(client_err)?;
                    c.out.clear();
                }
                match read_some(up, &mut c.ubuf, READ, wait).await {
                    Ok(r) if r > 0 => {}
                    _ => {
                        if !c.out.is_empty() {
                            let _ = put(down, &c.out, c.client_wait).await;
                        }
                        c.up = None;
                        return Ok((rf.status, sent, false));
                    }
                }
            }
        }
        Body::UntilClose => {
            put(down, &c.out, c.client_wait).await.map_err(client_err)?;
            sent += c.ubuf.len();
            put(down, &c.ubuf, c.client_wait).await.map_err(client_err)?;
            c.ubuf.clear();
            reuse = false;
            loop {
                match read_some(up, &mut c.ubuf, READ, wait).await {
                    Ok(r) if r > 0 => {}
                    _ => break,
                }
                put(down, &c.ubuf, c.client_wait).await.map_err(client_err)?;
                sent += c.ubuf.len();
                c.ubuf.clear();
            }
        }
    }
    if !reuse || !c.ubuf.is_empty() {
        // closed by the app, or it sent more than its response: not used again
        c.up = None;
        c.ubuf.clear();
    }
    Ok((rf.status, sent, keep))
}

/// Parses the app's response head (at the start of `c.ubuf`) and writes the one the client
/// gets into `c.out`: the status line as HTTP/1.1, its end-to-end fields, and its framing.
fn response_head(c: &mut Conn, asked: &Asked, keep: bool) -> Result<Sending, Fail> {
    let fr = &asked.framing;
    let mut f = [httparse::EMPTY_HEADER; framing::MAX_HEADERS];
    let (resp, rf) = match framing::response(&c.ubuf, &mut f, asked.head) {
        Ok(Some(r)) => r,
        Ok(None) => return Err(Fail::Upstream(502)),
        Err(r) => {
            tracing::warn!(refusal = %r, "the upstream's response head");
            return Err(Fail::Upstream(502));
        }
    };
    let interim = (100..200).contains(&rf.status) && rf.status != 101;
    let rechunk = rf.body == Body::Chunked && fr.http11;
    let keep = keep && rf.body != Body::UntilClose && (rf.body != Body::Chunked || fr.http11);
    let out = &mut c.out;
    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(&status_digits(rf.status));
    out.push(b' ');
    out.extend_from_slice(resp.reason.unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    let hop = framing::Hop::new(resp.headers);
    for h in resp.headers.iter() {
        if hop.drops(h.name) && !(rf.status == 101 && is_upgrade_field(h.name)) {
            continue;
        }
        field_line(out, h.name.as_bytes(), h.value);
    }
    if rechunk && !interim {
        field_line(out, b"transfer-encoding", b"chunked");
    }
    if rf.status == 101 {
        field_line(out, b"connection", b"upgrade");
    } else if !interim && !keep {
        field_line(out, b"connection", b"close");
    } else if !interim && !fr.http11 {
        field_line(out, b"connection", b"keep-alive");
    }
    out.extend_from_slice(b"\r\n");
    Ok(Sending { rf, rechunk, keep })
}

fn is_upgrade_field(name: &str) -> bool {
    name.eq_ignore_ascii_case("upgrade")
}

fn status_digits(s: u16) -> [u8; 3] {
    let s = s.min(999);
    [b'0' + (s / 100) as u8, b'0' + (s / 10 % 10) as u8, b'0' + (s % 10) as u8]
}

/// After a 101: the client and the app talk directly until either side closes.
async fn tunnel(c: &mut Conn, down: &mut Stream) -> Result<(u16, usize, bool), Fail> {
    // the 101's head is in `c.out` (`response_head`), what followed it in `c.ubuf`
    c.out.extend_from_slice(&c.ubuf);
    c.ubuf.clear();
    put(down, &c.out, c.client_wait).await.map_err(|_| Fail::Client)?;
    let Some(mut up) = c.up.take() else { return Err(Fail::Upstream(502)) };
    if !c.buf.is_empty() {
        put(&mut up, &c.buf, c.up_wait).await.map_err(|_| Fail::Upstream(502))?;
        c.buf.clear();
    }
    let copied = tokio::io::copy_bidirectional(down, &mut up).await.map(|(_, b)| b as usize).unwrap_or(0);
    Ok((101, copied, false))
}
