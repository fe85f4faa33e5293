//! The floor under `roost proxy`: a pingora 0.9 proxy that does nothing but pick the upstream
//! (no verdicts, no headers, no log), built the way `roost proxy` builds its server (one
//! thread, no work stealing, mimalloc). `benches/proxy.sh` runs it beside roost and nginx, so
//! what roost adds and what pingora costs are told apart.
//!   pingora-bare LISTEN UPSTREAM

use async_trait::async_trait;
use pingora::prelude::*;
use pingora::proxy::{ProxyHttp, Session};
use pingora::server::configuration::{Opt, ServerConf};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Bare(String);

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();
    fn new_ctx(&self) {}
    async fn upstream_peer(&self, _s: &mut Session, _c: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(self.0.as_str(), false, String::new())))
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let (listen, upstream) = (args.next().expect("LISTEN"), args.next().expect("UPSTREAM"));
    let mut conf = ServerConf { threads: 1, ..ServerConf::default() };
    conf.work_stealing = false;
    let mut server = Server::new_with_opt_and_conf(Opt::default(), conf);
    server.bootstrap();
    let mut svc = pingora::proxy::http_proxy_service(&server.configuration, Bare(upstream));
    svc.add_tcp(&listen);
    server.add_service(svc);
    server.run_forever();
}
