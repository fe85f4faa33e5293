//! The flowspec controller's wiring, the same under `roost bgp` and `roost up`: the controller
//! (`roost_bgp::Controller`) with one BGP session per router, its planner on a thread of its own
//! fed [`Input`]s over a channel, and `/rules` (what `roost bgp show` prints), `/metrics` and
//! `/healthz` on `bgp.listen`. Only where the inputs come from differs: the verdicts and
//! overrides topics (`roost bgp`) or the engine and the admin (`roost up`).

use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::time::Duration;

use prometheus_client::registry::Registry;
use roost_bgp::{BgpConfig, Controller, Input, Planner};

use crate::runtime::{self, Shutdown};

/// `bgp` with the proxy's own addresses added to its allowlist: its listeners (when bound to an
/// address) and its upstreams (when written as addresses). With the routers' and the session
/// addresses ([`BgpConfig::never_divert`]) no forged flood can divert roost's own path.
pub fn with_own_addresses(cfg: &crate::config::Config) -> BgpConfig {
    let mut b = cfg.bgp.clone();
    let p = &cfg.proxy;
    let listeners = p.listen.iter().chain(p.tls.iter().map(|t| &t.listen));
    let addrs = listeners
        .chain(p.upstreams.iter())
        .filter_map(|s| s.parse::<std::net::SocketAddr>().ok())
        .map(|a| a.ip())
        .filter(|ip| !ip.is_unspecified());
    b.allowlist.extend(addrs.map(ipnetwork::IpNetwork::from));
    b
}

/// A running controller.
pub struct Flowspec {
    /// Verdicts and overrides for the planner, a batch at a time (planned after each batch).
    pub inputs: Sender<Vec<Input>>,
    pub controller: Arc<Controller>,
    planner: std::thread::JoinHandle<()>,
}

impl Flowspec {
    /// Binds `bgp.listen` (an error when taken), starts the sessions and the planner on `rt`.
    /// With `source_up` false nothing is planned until the caller says its verdict source
    /// answers (`Controller::set_source_up`): a controller that has not read the verdicts yet
    /// withdraws nothing.
    pub fn start(
        b: &BgpConfig,
        rt: &tokio::runtime::Runtime,
        shutdown: &Shutdown,
        source_up: bool,
    ) -> anyhow::Result<Flowspec> {
        b.validate()?;
        let b = Arc::new(b.clone());
        let controller = Controller::new(&b);
        controller.set_source_up(source_up);
        let listener = rt.block_on(runtime::bind(b.listen))?;
        let mut registry = Registry::default();
        controller.register(&mut registry);
        let ctl = controller.clone();
        let app = runtime::metrics_router(Arc::new(registry))
            .route("/rules", axum::routing::get(move || std::future::ready(axum::Json(ctl.rules_json()))));
        {
            let _guard = rt.enter();
            controller.start_sessions(&b);
            runtime::serve("flowspec controller: /rules and /metrics", listener, app, shutdown);
        }
        let (inputs, rx) = std::sync::mpsc::channel::<Vec<Input>>();
        let planner = {
            let (b, controller, shutdown) = (b.clone(), controller.clone(), shutdown.clone());
            std::thread::Builder::new()
                .name("roost-bgp-plan".into())
                .spawn(move || plan_loop(&b, &controller, &rx, &shutdown))?
        };
        tracing::info!(peers = b.peers.len(), listen = %b.listen, "flowspec controller running");
        Ok(Flowspec { inputs, controller, planner })
    }

    /// Waits for the planner to end (after the shutdown).
    pub fn join(self) {
        drop(self.inputs);
        let _ = self.planner.join();
    }
}

/// Takes what arrives, then plans: on change, and once a second (verdicts expire). While the
/// verdict source is away nothing is planned: the announced set stays as it is.
fn plan_loop(b: &BgpConfig, controller: &Controller, rx: &Receiver<Vec<Input>>, shutdown: &Shutdown) {
    let mut planner = Planner::default();
    while !shutdown.is_stopping() {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(batch) => {
                batch.into_iter().for_each(|i| planner.input(i));
                while let Ok(batch) = rx.try_recv() {
                    batch.into_iter().for_each(|i| planner.input(i));
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        if controller.source_up()
            && let Some(plan) = planner.plan(b, runtime::wall_now().0)
        {
            controller.publish(plan);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_proxys_listeners_and_upstreams_are_never_diverted() {
        let mut cfg = crate::config::Config::default();
        cfg.proxy.listen = vec!["198.51.100.10:80".into(), "0.0.0.0:8080".into()];
        cfg.proxy.upstreams = vec!["198.51.100.20:8080".into(), "app.internal:80".into()];
        let b = with_own_addresses(&cfg);
        let hosts: Vec<String> = b.allowlist[cfg.bgp.allowlist.len()..].iter().map(|n| n.to_string()).collect();
        assert_eq!(hosts, ["198.51.100.10/32", "198.51.100.20/32"]);
    }
}
