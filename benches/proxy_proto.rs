//! Prototypes of an HTTP/1 data path for `roost proxy`, measured by `benches/proxy.sh` beside
//! nginx and a bare pingora proxy before one was chosen (issue 25; ARCHITECTURE.md says why):
//!
//! - `raw-pingora LISTEN UPSTREAM`: pingora's listener and runtime (`ServerApp`), one task per
//!   downstream connection, one upstream keep-alive connection bound to it, heads parsed with
//!   `httparse`, bodies copied by length;
//! - `raw-tokio LISTEN UPSTREAM`: the same forwarder on a current-thread tokio runtime, with no
//!   pingora in the way;
//! - `hyper LISTEN UPSTREAM`: a hyper 1.x server connection and a hyper client connection bound
//!   to it, on a current-thread tokio runtime.
//!
//! Each does what a bare proxy must (strip hop-by-hop headers, add X-Forwarded-For) and nothing
//! of roost's: they measure the floor each path sets. One thread each, as in the benchmark.

use std::sync::Arc;

use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;
use pingora::server::configuration::{Opt, ServerConf};
use pingora::services::listening::Service;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const HOP: [&str; 7] =
    ["connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade"];

/// Reads until a full head is in `buf`; returns its length, or None at a clean end.
async fn read_head<S: AsyncRead + Unpin>(s: &mut S, buf: &mut Vec<u8>, response: bool) -> Option<usize> {
    loop {
        if !buf.is_empty() {
            let mut h = [httparse::EMPTY_HEADER; 64];
            let st = if response {
                httparse::Response::new(&mut h).parse(buf)
            } else {
                httparse::Request::new(&mut h).parse(buf)
            };
            match st {
                Ok(httparse::Status::Complete(n)) => return Some(n),
                Ok(httparse::Status::Partial) => {}
                Err(_) => return None,
            }
        }
        if buf.len() > 64 * 1024 {
            return None;
        }
        let old = buf.len();
        buf.reserve(8192);
        let n = s.read_buf(buf).await.ok()?;
        if n == 0 || buf.len() == old {
            return None;
        }
    }
}

/// Copies `n` body bytes: first what is already in `buf` past `at`, then from `from`.
async fn copy_body<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    from: &mut R,
    to: &mut W,
    buf: &mut Vec<u8>,
    at: usize,
    mut n: usize,
) -> Option<()> {
    let have = (buf.len() - at).min(n);
    to.write_all(&buf[at..at + have]).await.ok()?;
    buf.drain(..at + have);
    n -= have;
    let mut tmp = [0u8; 16 * 1024];
    while n > 0 {
        let r = from.read(&mut tmp[..n.min(16 * 1024)]).await.ok()?;
        if r == 0 {
            return None;
        }
        to.write_all(&tmp[..r]).await.ok()?;
        n -= r;
    }
    Some(())
}

/// Serves one downstream connection, forwarding each request on its own upstream connection.
async fn forward<D: AsyncRead + AsyncWrite + Unpin>(mut down: D, peer: String, upstream: &str) -> Option<()> {
    let mut up: Option<TcpStream> = None;
    let mut dbuf = Vec::with_capacity(8192);
    let mut ubuf = Vec::with_capacity(8192);
    let mut out = Vec::with_capacity(4096);
    loop {
        let n = read_head(&mut down, &mut dbuf, false).await?;
        let mut h = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut h);
        req.parse(&dbuf[..n]).ok()?;
        out.clear();
        out.extend_from_slice(req.method?.as_bytes());
        out.push(b' ');
        out.extend_from_slice(req.path?.as_bytes());
        out.extend_from_slice(b" HTTP/1.1\r\n");
        let mut body = 0usize;
        for hd in req.headers.iter() {
            if HOP.iter().any(|x| hd.name.eq_ignore_ascii_case(x)) || hd.name.eq_ignore_ascii_case("x-forwarded-for") {
                continue;
            }
            if hd.name.eq_ignore_ascii_case("content-length") {
                body = std::str::from_utf8(hd.value).ok()?.parse().ok()?;
            }
            out.extend_from_slice(hd.name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(hd.value);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"X-Forwarded-For: ");
        out.extend_from_slice(peer.as_bytes());
        out.extend_from_slice(b"\r\n\r\n");
        if up.is_none() {
            let s = TcpStream::connect(upstream).await.ok()?;
            s.set_nodelay(true).ok()?;
            up = Some(s);
        }
        let u = up.as_mut()?;
        u.write_all(&out).await.ok()?;
        copy_body(&mut down, u, &mut dbuf, n, body).await?;
        ubuf.clear();
        let n = read_head(u, &mut ubuf, true).await?;
        let mut h = [httparse::EMPTY_HEADER; 64];
        let mut resp = httparse::Response::new(&mut h);
        resp.parse(&ubuf[..n]).ok()?;
        out.clear();
        out.extend_from_slice(b"HTTP/1.1 ");
        out.extend_from_slice(resp.code?.to_string().as_bytes());
        out.push(b' ');
        out.extend_from_slice(resp.reason.unwrap_or("").as_bytes());
        out.extend_from_slice(b"\r\n");
        let mut rbody = 0usize;
        for hd in resp.headers.iter() {
            if HOP.iter().any(|x| hd.name.eq_ignore_ascii_case(x)) {
                continue;
            }
            if hd.name.eq_ignore_ascii_case("content-length") {
                rbody = std::str::from_utf8(hd.value).ok()?.parse().ok()?;
            }
            out.extend_from_slice(hd.name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(hd.value);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
        // a small response goes out in one write, head and body together
        let have = (ubuf.len() - n).min(rbody);
        if have == rbody {
            out.extend_from_slice(&ubuf[n..n + have]);
            down.write_all(&out).await.ok()?;
        } else {
            down.write_all(&out).await.ok()?;
            copy_body(u, &mut down, &mut ubuf, n, rbody).await?;
        }
        down.flush().await.ok()?;
    }
}

struct RawApp(Arc<str>);

#[async_trait]
impl ServerApp for RawApp {
    async fn process_new(self: &Arc<Self>, stream: Stream, _shutdown: &ShutdownWatch) -> Option<Stream> {
        let peer = stream
            .get_socket_digest()
            .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).map(|a| a.ip().to_string()))
            .unwrap_or_default();
        forward(stream, peer, &self.0).await;
        None
    }
}

fn raw_pingora(listen: &str, upstream: &str) {
    let mut conf = ServerConf { threads: 1, ..ServerConf::default() };
    conf.work_stealing = false;
    let mut server = pingora::server::Server::new_with_opt_and_conf(Opt::default(), conf);
    server.bootstrap();
    let mut svc = Service::new("raw".into(), RawApp(upstream.into()));
    svc.add_tcp(listen);
    server.add_service(svc);
    server.run_forever();
}

fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime")
}

fn raw_tokio(listen: &str, upstream: &str) {
    let upstream: Arc<str> = upstream.into();
    current_thread().block_on(async {
        let l = tokio::net::TcpListener::bind(listen).await.expect("listen");
        loop {
            let Ok((s, peer)) = l.accept().await else { continue };
            let _ = s.set_nodelay(true);
            let up = upstream.clone();
            tokio::spawn(async move { forward(s, peer.ip().to_string(), &up).await });
        }
    });
}

fn hyper(listen: &str, upstream: &str) {
    use http_body_util::BodyExt;
    use hyper_util::rt::TokioIo;
    let upstream: Arc<str> = upstream.into();
    current_thread().block_on(async {
        let l = tokio::net::TcpListener::bind(listen).await.expect("listen");
        loop {
            let Ok((s, peer)) = l.accept().await else { continue };
            let _ = s.set_nodelay(true);
            let up = upstream.clone();
            tokio::spawn(async move {
                let Ok(u) = TcpStream::connect(&*up).await else { return };
                let _ = u.set_nodelay(true);
                let Ok((sender, conn)) = hyper::client::conn::http1::handshake(TokioIo::new(u)).await else { return };
                tokio::spawn(conn);
                let sender = Arc::new(tokio::sync::Mutex::new(sender));
                let xff = peer.ip().to_string();
                let svc = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                    let sender = sender.clone();
                    let xff = xff.clone();
                    async move {
                        for h in HOP {
                            req.headers_mut().remove(h);
                        }
                        req.headers_mut().insert("x-forwarded-for", xff.parse().expect("an address"));
                        let mut s = sender.lock().await;
                        let resp = s.send_request(req).await?;
                        let (mut parts, body) = resp.into_parts();
                        for h in HOP {
                            parts.headers.remove(h);
                        }
                        Ok::<_, hyper::Error>(hyper::Response::from_parts(parts, body.boxed()))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(s), svc).await;
            });
        }
    });
}

fn main() {
    let mut args = std::env::args().skip(1);
    let (mode, listen, upstream) =
        (args.next().expect("MODE"), args.next().expect("LISTEN"), args.next().expect("UPSTREAM"));
    match mode.as_str() {
        "raw-pingora" => raw_pingora(&listen, &upstream),
        "raw-tokio" => raw_tokio(&listen, &upstream),
        "hyper" => hyper(&listen, &upstream),
        m => panic!("unknown mode {m}: raw-pingora, raw-tokio or hyper"),
    }
}
