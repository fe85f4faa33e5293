//! The HTTP/2 data path (TLS with ALPN h2, and h2c on a plain listener when `h2c` is on): the
//! `h2` crate's server on pingora's listeners, a task per stream on the worker's own runtime,
//! and HTTP/1.1 to the app over idle connections kept per worker thread
//! (`proxy.upstream_keepalive`). The decisions (verdict, challenge, redemption, access log) are
//! [`Waffles`]', as on the HTTP/1 path ([`crate::h1`]); the app's response head is read by
//! [`crate::framing`] and its body copied by length, de-chunked, or until close, under HTTP/2
//! flow control (no more is read from the app than the client has room for).

use std::cell::RefCell;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use h2::server::SendResponse;
use h2::{Reason, RecvStream, SendStream};
use http::header::{HeaderName, HeaderValue};
use http::request::Parts;
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;
use tokio::net::TcpStream;
use tokio::time::timeout;

use crate::framing::{self, Body, Chunked, Piece};
use crate::h1::{Fail, READ, connect_to, field_line, next_upstream, put, read_response_head, read_some};
use crate::metrics::OutcomeLabels;
use crate::now_ms;
use crate::service::{CLIENT_CLOSED, Ctx, Front, MAX_FORM, Reply, Waffles};

/// Streams a client may have open at once on one connection.
const MAX_STREAMS: u32 = 128;

/// Serves every stream of an HTTP/2 connection (its preface not read yet).
pub async fn serve(w: &Arc<Waffles>, down: Stream, shutdown: &ShutdownWatch) {
    let peer = down.get_socket_digest().and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).map(|a| a.ip()));
    let tls = down.get_ssl().is_some();
    let header_timeout = w.cfg.client_timeout.min(w.cfg.keepalive_timeout);
    let handshake = h2::server::Builder::new()
        .max_concurrent_streams(MAX_STREAMS)
        // HPACK-decoded fields beyond this are refused by h2 itself; `max_header_bytes` is
        // checked per request below (431), as on HTTP/1
        .max_header_list_size(u32::try_from(w.cfg.max_header_bytes.saturating_mul(2)).unwrap_or(u32::MAX))
        .handshake::<_, Bytes>(down);
    let mut conn = match timeout(header_timeout, handshake).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            tracing::debug!(?peer, error = %e, "HTTP/2 handshake");
            return;
        }
        Err(_) => return,
    };
    let conn_info = Arc::new(Client { peer: peer.map(|p| (p, crate::clientip::canonical(p).to_string())), tls });
    // streams in flight: each task holds a count, and the last to finish says so
    let open = Arc::new(Open::default());
    let mut sd = shutdown.clone();
    let stop = sd.changed();
    tokio::pin!(stop);
    // after a GOAWAY, the connection is dropped at `idle` whatever its client does: a client
    // that never acknowledges the GOAWAY's PING, or never closes, does not hold it
    let mut stopping = false;
    let idle = tokio::time::sleep(header_timeout);
    tokio::pin!(idle);
    let later = |d: Duration| tokio::time::Instant::now() + d;
    loop {
        tokio::select! {
            // the last open stream finished: an idle connection's clock starts anew
            () = open.none.notified() => {
                if open.count() == 0 && !stopping {
                    idle.as_mut().reset(later(w.cfg.keepalive_timeout));
                }
            }
            next = conn.accept() => match next {
                Some(Ok((req, tx))) => {
                    let held = Held::new(&open);
                    let (w, client) = (w.clone(), conn_info.clone());
                    tokio::spawn(async move {
                        stream(w, client, req, tx).await;
                        drop(held);
                    });
                }
                Some(Err(e)) => {
                    tracing::debug!(?peer, error = %e, "HTTP/2 connection");
                    break;
                }
                None => break,
            },
            () = idle.as_mut(), if stopping || open.count() == 0 => {
                if stopping {
                    break;
                }
                stopping = true;
                conn.graceful_shutdown();
                idle.as_mut().reset(later(w.cfg.client_timeout));
            }
            _ = stop.as_mut(), if !stopping => {
                stopping = true;
                conn.graceful_shutdown();
                idle.as_mut().reset(later(w.cfg.shutdown_timeout));
            }
        }
    }
    // streams still in flight end on their own: their writes to the client fail, and a wait on
    // the app is bounded by upstream_timeout
}

/// How many of a connection's streams are in flight.
#[derive(Default)]
struct Open {
    n: std::sync::atomic::AtomicUsize,
    none: tokio::sync::Notify,
}

impl Open {
    fn count(&self) -> usize {
        self.n.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// One stream's share of [`Open`], given back when its task ends (however it ends).
struct Held(Arc<Open>);

impl Held {
    fn new(open: &Arc<Open>) -> Held {
        open.n.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Held(open.clone())
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if self.0.n.fetch_sub(1, std::sync::atomic::Ordering::Relaxed) == 1 {
            self.0.none.notify_one();
        }
    }
}

/// What every stream of a connection shares.
struct Client {
    /// The peer (after a PROXY header), and as text for `X-Forwarded-For`.
    peer: Option<(IpAddr, String)>,
    tls: bool,
}

/// One request and its response.
async fn stream(w: Arc<Waffles>, client: Arc<Client>, req: http::Request<RecvStream>, mut tx: SendResponse<Bytes>) {
    let mut ctx = Ctx::new(Instant::now());
    ctx.now = now_ms();
    let (parts, body) = req.into_parts();
    let head = parts.method == http::Method::HEAD;
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let (status, bytes) = if parts.method == http::Method::CONNECT {
        // no tunnels through the proxy (h2 passes a CONNECT on only with its extended form off)
        ctx.route = "refused";
        let r = Reply::text(405, "Method not allowed\n");
        (r.status, reply(&w, &mut tx, &r, head).await)
    } else if header_bytes(&parts) > w.cfg.max_header_bytes {
        w.metrics.refused.get_or_create(&OutcomeLabels { outcome: "header_too_large" }).inc();
        ctx.route = "refused";
        let r = Reply::text(431, "Request header fields too large\n");
        (r.status, reply(&w, &mut tx, &r, head).await)
    } else {
        let front = match &client.peer {
            // not an IP socket (a Unix socket in front): nothing to judge by
            None => {
                ctx.route = "app";
                ctx.verdict = "unknown";
                Front::App
            }
            Some((peer, _)) => {
                let ip = w.client(*peer, parts.headers.get_all("x-forwarded-for").iter().map(|v| v.as_bytes()));
                w.front(&mut ctx, ip, target, parts.headers.get_all("cookie").iter().map(|v| v.as_bytes()))
            }
        };
        match front {
            Front::Reply(r) => (r.status, reply(&w, &mut tx, &r, head).await),
            Front::Redeem => {
                let (path, query) = (parts.uri.path(), parts.uri.query().unwrap_or(""));
                let post = parts.method == http::Method::POST;
                let form =
                    if post && path == crate::pages::VERIFY { read_form(&w, body).await } else { Some(Vec::new()) };
                let ip = ctx.client.unwrap_or(IpAddr::from([0, 0, 0, 0]));
                let r = w.redeem(&mut ctx, ip, path, query, post, form.as_deref(), client.tls).await;
                (r.status, reply(&w, &mut tx, &r, head).await)
            }
            Front::App => match to_app(&w, &client, &ctx, &parts, body, &mut tx).await {
                Ok(done) => done,
                Err(status) => {
                    let text = match status {
                        408 => "Request timeout\n",
                        504 => "Gateway timeout\n",
                        _ => "Bad gateway\n",
                    };
                    let r = Reply::text(status, text);
                    ctx.served = Some((status, r.body.len()));
                    (status, reply(&w, &mut tx, &r, head).await)
                }
            },
        }
    };
    let field = |k: &str| parts.headers.get(k).map(HeaderValue::as_bytes);
    w.finish(&mut ctx, status, bytes, parts.method.as_str(), target, "HTTP/2.0", field("referer"), field("user-agent"));
}

/// Bytes of the request's pseudo-fields and fields, counted as HPACK's table does.
fn header_bytes(parts: &Parts) -> usize {
    let target = parts.uri.path_and_query().map_or(1, |p| p.as_str().len())
        + parts.uri.authority().map_or(0, |a| a.as_str().len());
    let line = parts.method.as_str().len() + target + 12;
    line + parts.headers.iter().map(|(k, v)| k.as_str().len() + v.len() + 4).sum::<usize>()
}

/// Reads a form of at most [`MAX_FORM`] bytes: `None` if it is longer, or does not come in time.
async fn read_form(w: &Waffles, mut body: RecvStream) -> Option<Vec<u8>> {
    let mut form = Vec::new();
    loop {
        match timeout(w.cfg.client_timeout, body.data()).await {
            Ok(Some(Ok(chunk))) => {
                let _ = body.flow_control().release_capacity(chunk.len());
                if form.len() + chunk.len() > MAX_FORM {
                    return None;
                }
                form.extend_from_slice(&chunk);
            }
            Ok(None) => return Some(form),
            _ => return None,
        }
    }
}

/// Sends a reply the proxy makes itself; returns the body bytes sent.
async fn reply(w: &Waffles, tx: &mut SendResponse<Bytes>, r: &Reply, head: bool) -> usize {
    let mut resp = http::Response::builder().status(r.status);
    for (k, v) in r.fields() {
        resp = resp.header(k, v);
    }
    let Ok(resp) = resp.header("content-length", r.body.len()).body(()) else {
        tx.send_reset(Reason::INTERNAL_ERROR);
        return 0;
    };
    let no_body = head || r.body.is_empty();
    let Ok(mut out) = tx.send_response(resp, no_body) else { return 0 };
    if no_body {
        return 0;
    }
    match send(&mut out, r.body.clone(), true, w.cfg.client_timeout).await {
        Ok(()) => r.body.len(),
        Err(()) => 0,
    }
}

/// Sends `data` as the client makes room for it (its flow-control window), each wait for room
/// within `wait`; `end` ends the stream with it. `Err`: the client went away, or did not read.
async fn send(out: &mut SendStream<Bytes>, mut data: Bytes, end: bool, wait: Duration) -> Result<(), ()> {
    if data.is_empty() {
        return if end { out.send_data(data, true).map_err(drop) } else { Ok(()) };
    }
    while !data.is_empty() {
        out.reserve_capacity(data.len());
        let room = match out.capacity() {
            0 => match timeout(wait, std::future::poll_fn(|cx| out.poll_capacity(cx))).await {
                Ok(Some(Ok(n))) => n,
                Ok(_) => return Err(()),
                Err(_) => {
                    out.send_reset(Reason::CANCEL);
                    return Err(());
                }
            },
            n => n,
        };
        let piece = data.split_to(room.min(data.len()));
        out.send_data(piece, end && data.is_empty()).map_err(drop)?;
    }
    Ok(())
}

/// An upstream connection with nothing in flight, since when.
struct Idle {
    addr: SocketAddr,
    conn: TcpStream,
    since: Instant,
}

thread_local! {
    /// Each worker thread's idle upstream connections (a worker is one runtime: a connection
    /// stays with the thread whose reactor it is registered with).
    static POOL: RefCell<Vec<Idle>> = const { RefCell::new(Vec::new()) };
}

/// An idle connection to the next healthy upstream, or a new one; `true` when it was kept.
async fn checkout(w: &Waffles) -> Result<(TcpStream, SocketAddr, bool), u16> {
    let addr = next_upstream(w).map_err(status)?;
    let max_idle = w.cfg.keepalive_timeout;
    let kept = POOL.with_borrow_mut(|pool| {
        while let Some(i) = pool.iter().rposition(|i| i.addr == addr) {
            let idle = pool.swap_remove(i);
            // one the app closed, or sent anything on while idle, is not used again: what it
            // sent would be read as the next request's response
            if idle.since.elapsed() < max_idle && quiet(&idle.conn) {
                return Some(idle.conn);
            }
        }
        None
    });
    if let Some(conn) = kept {
        return Ok((conn, addr, true));
    }
    Ok((connect_to(w, addr).await.map_err(status)?, addr, false))
}

/// The status a client gets for a failure on the way to the app.
fn status(f: Fail) -> u16 {
    match f {
        Fail::Upstream(s) => s,
        _ => 502,
    }
}

/// An idle app connection nothing has arrived on, not even its close. Usually the reactor knows
/// (no system call); after a read that filled its buffer exactly it does not, and one
/// non-blocking read looks.
pub(crate) fn quiet(conn: &TcpStream) -> bool {
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    if conn.poll_read_ready(&mut cx).is_pending() {
        return true;
    }
    matches!(conn.try_read(&mut [0u8; 1]), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

/// Keeps a connection whose exchange ended cleanly for the next request, up to the bound.
fn checkin(w: &Waffles, addr: SocketAddr, conn: TcpStream) {
    POOL.with_borrow_mut(|pool| {
        if pool.len() >= w.cfg.upstream_keepalive {
            // the oldest goes
            if w.cfg.upstream_keepalive == 0 {
                return;
            }
            pool.remove(0);
        }
        pool.push(Idle { addr, conn, since: Instant::now() });
    });
}

/// The head sent to the app: the request line as HTTP/1.1, `Host` from `:authority`, every
/// end-to-end field (cookies joined in one, as HTTP/1.1 has them), then `X-Roost-Verdict`,
/// `X-Forwarded-For` and the body's framing.
fn upstream_head(w: &Waffles, client: &Client, ctx: &Ctx, parts: &Parts, length: Option<u64>, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(parts.method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(parts.uri.path_and_query().map_or("/", |p| p.as_str()).as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\nhost: ");
    match (parts.uri.authority(), parts.headers.get(http::header::HOST)) {
        (Some(a), _) => out.extend_from_slice(a.as_str().as_bytes()),
        (None, Some(h)) => out.extend_from_slice(h.as_bytes()),
        (None, None) => out.extend_from_slice(b"localhost"),
    }
    out.extend_from_slice(b"\r\n");
    let mut cookies = 0;
    for (k, v) in &parts.headers {
        let n = k.as_str().as_bytes();
        if n == b"cookie" {
            cookies += 1;
            continue;
        }
        if n == b"host"
            || n == b"content-length"
            || n == b"expect"
            || framing::same_name(n, b"x-forwarded-for")
            || framing::is_hop_or_internal(k.as_str(), &[])
        {
            continue;
        }
        field_line(out, n, v.as_bytes());
    }
    if cookies > 0 {
        out.extend_from_slice(b"cookie: ");
        for (i, v) in parts.headers.get_all(http::header::COOKIE).iter().enumerate() {
            if i > 0 {
                out.extend_from_slice(b"; ");
            }
            out.extend_from_slice(v.as_bytes());
        }
        out.extend_from_slice(b"\r\n");
    }
    field_line(out, b"x-roost-verdict", ctx.verdict_header().as_bytes());
    if let Some((peer, text)) = &client.peer {
        out.extend_from_slice(b"x-forwarded-for: ");
        let prior = parts.headers.get_all("x-forwarded-for");
        w.forwarded_for(*peer, text.as_bytes(), prior.iter().map(HeaderValue::as_bytes), out);
        out.extend_from_slice(b"\r\n");
    }
    match length {
        Some(0) => {}
        Some(n) => {
            out.extend_from_slice(b"content-length: ");
            out.extend_from_slice(n.to_string().as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        None => field_line(out, b"transfer-encoding", b"chunked"),
    }
    out.extend_from_slice(b"\r\n");
}

/// Sends the request to the app and its response to the client: `Ok((status, body bytes))`
/// once the response has begun, `Err(status)` when the client should get 502 or 504 instead.
async fn to_app(
    w: &Waffles,
    client: &Client,
    ctx: &Ctx,
    parts: &Parts,
    mut body: RecvStream,
    tx: &mut SendResponse<Bytes>,
) -> Result<(u16, usize), u16> {
    // the body's length as the client declared it (h2 holds the DATA frames to it); none with
    // a body still to come: chunked
    let declared =
        parts.headers.get(http::header::CONTENT_LENGTH).map(|v| v.to_str().ok().and_then(|s| s.parse().ok()));
    let length = match declared {
        // not a number, or a length with no body to come (the app would wait for it)
        Some(None) => None,
        Some(Some(n)) if n > 0 && body.is_end_stream() => None,
        Some(Some(n)) => Some(Some(n)),
        None if body.is_end_stream() => Some(Some(0)),
        None => Some(None),
    };
    let Some(length) = length else {
        w.metrics.refused.get_or_create(&OutcomeLabels { outcome: framing::Refusal::BadLength.as_str() }).inc();
        tx.send_reset(Reason::PROTOCOL_ERROR);
        return Ok((400, 0));
    };
    let mut out = Vec::with_capacity(1024);
    upstream_head(w, client, ctx, parts, length, &mut out);
    let head_only = body.is_end_stream();
    // a request with no body can be sent again on a fresh connection if a kept one turns out to
    // have been closed by the app meanwhile
    let mut retry = head_only && matches!(parts.method, http::Method::GET | http::Method::HEAD | http::Method::OPTIONS);
    let mut ubuf = Vec::with_capacity(4096);
    loop {
        let attempt = async {
            let (mut up, addr, kept) = checkout(w).await?;
            let sent = if head_only {
                put(&mut up, &out, w.cfg.upstream_timeout).await.map_err(|_| 502)
            } else {
                send_body(w, &mut up, &mut out, &mut body, length.is_none()).await
            };
            let got = match sent {
                Ok(()) => read_head(w, &mut ubuf, &mut up).await,
                Err(e) => Err(e),
            };
            Ok::<_, u16>((up, addr, kept, got))
        };
        // a client that resets its stream (or whose connection ends) while the app is at work
        // takes the app's connection with it: a stream opened and reset at once, again and
        // again ("rapid reset"), must not leave the app a request in flight for each
        let Some(attempt) = unless_reset(w, |cx| tx.poll_reset(cx), attempt).await else {
            return Ok((CLIENT_CLOSED, 0));
        };
        let (up, addr, kept, got) = attempt?;
        match got {
            Ok(()) => return from_app(w, parts, tx, up, addr, ubuf).await,
            Err(502) if retry && kept && ubuf.is_empty() => retry = false,
            Err(s) => return Err(s),
        }
    }
}

/// `work`, unless the client resets the stream (or the connection ends) first: `None` then
/// (counted as abandoned), `work` dropped with whatever it holds.
async fn unless_reset<T>(
    w: &Waffles,
    reset: impl FnMut(&mut std::task::Context<'_>) -> std::task::Poll<Result<Reason, h2::Error>>,
    work: impl std::future::Future<Output = T>,
) -> Option<T> {
    tokio::select! {
        biased;
        done = work => Some(done),
        _ = std::future::poll_fn(reset) => {
            w.metrics.abandoned.inc();
            None
        }
    }
}

/// Writes the head in `out` and the client's body after it, as it comes (chunked when no length
/// was declared).
async fn send_body(
    w: &Waffles,
    up: &mut TcpStream,
    out: &mut Vec<u8>,
    body: &mut RecvStream,
    chunked: bool,
) -> Result<(), u16> {
    loop {
        let data = match timeout(w.cfg.client_timeout, body.data()).await {
            Ok(Some(Ok(d))) => Some(d),
            Ok(None) => None,
            // the client reset its stream, or is too slow with its body: nothing can be sent
            // back to it that it would read
            Ok(Some(Err(_))) | Err(_) => return Err(408),
        };
        match &data {
            // an empty DATA frame: nothing to send (as a chunk it would be the body's last, and
            // what follows it a request the app reads apart from this one)
            Some(d) if d.is_empty() => continue,
            Some(d) => {
                let _ = body.flow_control().release_capacity(d.len());
                if chunked {
                    framing::chunk_line(out, d.len() as u64);
                    out.extend_from_slice(d);
                    out.extend_from_slice(b"\r\n");
                } else {
                    out.extend_from_slice(d);
                }
            }
            None if chunked => out.extend_from_slice(b"0\r\n\r\n"),
            None => {}
        }
        if !out.is_empty() {
            put(up, out, w.cfg.upstream_timeout).await.map_err(|_| 502u16)?;
            out.clear();
        }
        if data.is_none() {
            return Ok(());
        }
    }
}

/// Reads until the app's response head is all in `ubuf`.
async fn read_head(w: &Waffles, ubuf: &mut Vec<u8>, up: &mut TcpStream) -> Result<(), u16> {
    read_response_head(w, ubuf, up).await.map_err(status)
}

/// A response head from the app, as the client gets it.
enum Head {
    Final(http::Response<()>, framing::ResponseFraming),
    /// A 1xx other than 101, of this many bytes.
    Interim(usize),
}

/// Parses the app's response head at the start of `ubuf` (its fields array lives here, not in
/// the stream's future, which every task spawn and completion moves).
fn response_head(ubuf: &[u8], head: bool) -> Result<Head, u16> {
    let mut f = [httparse::EMPTY_HEADER; framing::MAX_HEADERS];
    let (r, rf) = match framing::response(ubuf, &mut f, head) {
        Ok(Some(r)) => r,
        Ok(None) => return Err(502),
        Err(r) => {
            tracing::warn!(refusal = %r, "the upstream's response head");
            return Err(502);
        }
    };
    // 101 has no place in HTTP/2
    if rf.status == 101 {
        return Err(502);
    }
    if (100..200).contains(&rf.status) {
        return Ok(Head::Interim(rf.head_len));
    }
    let mut resp = http::Response::builder().status(rf.status);
    let hop = framing::Hop::new(r.headers);
    for h in r.headers.iter() {
        if hop.drops(h.name) {
            continue;
        }
        match (HeaderName::from_bytes(h.name.as_bytes()), HeaderValue::from_bytes(h.value)) {
            (Ok(k), Ok(v)) => resp = resp.header(k, v),
            _ => return Err(502),
        }
    }
    resp.body(()).map(|r| Head::Final(r, rf)).map_err(|_| 502)
}

/// The app's response (its head at the start of `ubuf`) to the client.
async fn from_app(
    w: &Waffles,
    parts: &Parts,
    tx: &mut SendResponse<Bytes>,
    mut up: TcpStream,
    addr: SocketAddr,
    mut ubuf: Vec<u8>,
) -> Result<(u16, usize), u16> {
    let head = parts.method == http::Method::HEAD;
    let (resp, rf) = loop {
        match response_head(&ubuf, head)? {
            Head::Final(resp, rf) => break (resp, rf),
            // interim responses are the app's business with us
            Head::Interim(n) => {
                ubuf.drain(..n);
                let Some(got) = unless_reset(w, |cx| tx.poll_reset(cx), read_head(w, &mut ubuf, &mut up)).await else {
                    return Ok((CLIENT_CLOSED, 0));
                };
                got?;
            }
        }
    };
    ubuf.drain(..rf.head_len);
    let client_wait = w.cfg.client_timeout;
    let end_now = rf.body == Body::None || rf.body == Body::Length(0);
    let mut out = match tx.send_response(resp, end_now) {
        Ok(out) => out,
        Err(_) => {
            // the client is gone: the app connection goes too, unless its response was all read
            if end_now && ubuf.is_empty() && rf.keep_alive {
                checkin(w, addr, up);
            }
            return Ok((rf.status, 0));
        }
    };
    let out = &mut out;
    let mut sent = 0usize;
    let mut reuse = rf.keep_alive;
    match rf.body {
        Body::None | Body::Length(0) => {}
        Body::Length(n) => {
            let mut left = n;
            loop {
                let take = (ubuf.len() as u64).min(left) as usize;
                if take > 0 {
                    let piece = Bytes::copy_from_slice(&ubuf[..take]);
                    ubuf.drain(..take);
                    left -= take as u64;
                    if send(out, piece, left == 0, client_wait).await.is_err() {
                        return Ok((rf.status, sent));
                    }
                    sent += take;
                }
                if left == 0 {
                    break;
                }
                match app_read(w, out, &mut up, &mut ubuf, left.min(READ as u64) as usize).await {
                    Ok(r) if r > 0 => {}
                    _ => {
                        out.send_reset(Reason::INTERNAL_ERROR);
                        return Ok((rf.status, sent));
                    }
                }
            }
        }
        Body::Chunked => {
            let mut dec = Chunked::default();
            loop {
                let mut data = Vec::new();
                let used = dec.feed(&ubuf, |p| {
                    if let Piece::Data(r) = p {
                        data.extend_from_slice(&ubuf[r]);
                    }
                });
                let Ok(used) = used else {
                    out.send_reset(Reason::INTERNAL_ERROR);
                    return Ok((rf.status, sent));
                };
                ubuf.drain(..used);
                let n = data.len();
                if (n > 0 || dec.done()) && send(out, Bytes::from(data), dec.done(), client_wait).await.is_err() {
                    return Ok((rf.status, sent));
                }
                sent += n;
                if dec.done() {
                    break;
                }
                match app_read(w, out, &mut up, &mut ubuf, READ).await {
                    Ok(r) if r > 0 => {}
                    _ => {
                        out.send_reset(Reason::INTERNAL_ERROR);
                        return Ok((rf.status, sent));
                    }
                }
            }
        }
        Body::UntilClose => {
            reuse = false;
            loop {
                if !ubuf.is_empty() {
                    let piece = Bytes::copy_from_slice(&ubuf);
                    sent += ubuf.len();
                    ubuf.clear();
                    if send(out, piece, false, client_wait).await.is_err() {
                        return Ok((rf.status, sent));
                    }
                }
                match app_read(w, out, &mut up, &mut ubuf, READ).await {
                    Ok(r) if r > 0 => {}
                    Ok(_) => break,
                    Err(_) => {
                        out.send_reset(Reason::INTERNAL_ERROR);
                        return Ok((rf.status, sent));
                    }
                }
            }
            let _ = send(out, Bytes::new(), true, client_wait).await;
        }
    }
    if reuse && ubuf.is_empty() {
        checkin(w, addr, up);
    }
    Ok((rf.status, sent))
}

/// Reads up to `limit` more bytes of the app's response (within `upstream_timeout`): `Ok(0)`
/// at its end of stream, `Err` when it is late or failed, or when the client has reset the
/// stream meanwhile (then the response goes no further, and the app connection is closed).
async fn app_read(
    w: &Waffles,
    out: &mut SendStream<Bytes>,
    up: &mut TcpStream,
    ubuf: &mut Vec<u8>,
    limit: usize,
) -> std::io::Result<usize> {
    unless_reset(w, |cx| out.poll_reset(cx), read_some(up, ubuf, limit, w.cfg.upstream_timeout))
        .await
        .unwrap_or_else(|| Err(std::io::ErrorKind::ConnectionReset.into()))
}
