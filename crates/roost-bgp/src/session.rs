//! One BGP session per router (RFC 4271's state machine, active side): connect, OPEN, wait for
//! the peer's OPEN and KEEPALIVE, then Established: announce the whole plan and End-of-RIB, and
//! from then on send only what changed. KEEPALIVEs every third of the hold time; the hold timer
//! ends a silent session with a NOTIFICATION. Any error ends the session; it is re-established
//! with a growing wait, and a new session starts from nothing (the full set again).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::watch;

use crate::config::{BgpConfig, PeerConfig};
use crate::flowspec::FlowRule;
use crate::policy::Plan;
use crate::wire::{self, Incoming as Msg};

/// What one session is doing: its metrics, each also a series of the controller's registry
/// (`crate::controller::Controller::register`), read by `roost bgp show` too.
#[derive(Default)]
pub struct PeerState {
    /// 1 while Established.
    pub established: Gauge,
    /// Rules in the peer's table now.
    pub announced: Gauge,
    pub announces: Counter,
    pub withdraws: Counter,
    pub resets: Counter,
    pub updates_received: Counter,
    /// ROUTE-REFRESH requests answered (every rule sent again).
    pub route_refreshes: Counter,
}

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Wire(#[from] wire::WireError),
    #[error("peer sent NOTIFICATION {code}/{subcode}")]
    Notified { code: u8, subcode: u8 },
    #[error("{0}")]
    Fsm(String),
    #[error("hold timer expired")]
    HoldExpired,
}

/// Connections routers opened to us (passive peering), each handed to its peer's session.
pub type Connections = tokio::sync::mpsc::Receiver<TcpStream>;

/// Accepts BGP connections on `listen` and hands each to the passive peer whose address it comes
/// from; connections from anyone else are closed at once.
pub async fn listen(
    listen: std::net::SocketAddr,
    peers: Vec<(std::net::IpAddr, tokio::sync::mpsc::Sender<TcpStream>)>,
) -> std::io::Result<()> {
    let l = tokio::net::TcpListener::bind(listen).await?;
    tracing::info!(%listen, "accepting BGP connections from passive peers");
    loop {
        let (s, from) = l.accept().await?;
        match peers.iter().find(|(ip, _)| *ip == from.ip()) {
            Some((_, tx)) => {
                if tx.try_send(s).is_err() {
                    tracing::warn!(%from, "a second connection from a peer whose session is up: closed");
                }
            }
            None => tracing::warn!(%from, "BGP connection from an address that is not a configured peer: closed"),
        }
    }
}

/// Runs the session to `peer` until the process ends, re-establishing it after failures. A
/// passive peer's sessions start from the connections `incoming` hands over.
pub async fn run(
    cfg: Arc<BgpConfig>,
    peer: PeerConfig,
    plan: watch::Receiver<Arc<Plan>>,
    state: Arc<PeerState>,
    mut incoming: Option<Connections>,
) {
    let mut wait = cfg.connect_retry;
    loop {
        let started = Instant::now();
        let stream = match incoming.as_mut() {
            Some(rx) => match rx.recv().await {
                Some(s) => Ok(s),
                None => return,
            },
            None => connect(&peer).await,
        };
        let r = match stream {
            Ok(s) => session(s, &cfg, &peer, plan.clone(), &state).await,
            Err(e) => Err(e),
        };
        state.established.set(0);
        state.announced.set(0);
        state.resets.inc();
        if let Err(e) = r {
            tracing::warn!(peer = %peer.address, error = %e, retry_in = ?wait, "BGP session down");
        }
        if started.elapsed() > Duration::from_secs(60) {
            wait = cfg.connect_retry; // it had been up a while: start the backoff over
        }
        if incoming.is_none() {
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(60));
        }
    }
}

async fn connect(peer: &PeerConfig) -> Result<TcpStream, SessionError> {
    let sock = if peer.address.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    if let Some(local) = peer.local_address {
        sock.bind((local, 0).into())?;
    }
    let s = tokio::time::timeout(Duration::from_secs(10), sock.connect(peer.address))
        .await
        .map_err(|_| SessionError::Fsm("connect timed out".into()))??;
    s.set_nodelay(true)?;
    Ok(s)
}

/// Reads the next whole message into `buf`'s front and returns it.
async fn next(s: &mut TcpStream, buf: &mut BytesMut) -> Result<Msg, SessionError> {
    loop {
        if let Some(len) = wire::frame_len(buf)? {
            let msg = buf.split_to(len);
            return Ok(wire::parse(&msg)?);
        }
        if s.read_buf(buf).await? == 0 {
            return Err(SessionError::Fsm("peer closed the connection".into()));
        }
    }
}

async fn session(
    mut s: TcpStream,
    cfg: &BgpConfig,
    peer: &PeerConfig,
    mut plan: watch::Receiver<Arc<Plan>>,
    state: &PeerState,
) -> Result<(), SessionError> {
    s.set_nodelay(true)?;
    s.write_all(&wire::open(cfg.asn, cfg.hold_time, cfg.router_id)).await?;
    let mut buf = BytesMut::with_capacity(8192);
    let (hold, families) = match tokio::time::timeout(Duration::from_secs(30), next(&mut s, &mut buf)).await {
        Err(_) => return Err(SessionError::Fsm("no OPEN from the peer".into())),
        Ok(Ok(Msg::Open { asn, hold, flow4, flow6 })) => {
            if peer.peer_as != 0 && asn != peer.peer_as {
                let _ = s.write_all(&wire::notification(2, 2)).await; // bad peer AS
                return Err(SessionError::Fsm(format!("peer is AS {asn}, expected {}", peer.peer_as)));
            }
            let h = hold.min(cfg.hold_time);
            if h != 0 && h < 3 {
                let _ = s.write_all(&wire::notification(2, 6)).await; // unacceptable hold time
                return Err(SessionError::Fsm(format!("hold time {h}")));
            }
            if !flow4 && !flow6 {
                let _ = s.write_all(&wire::notification(2, 7)).await; // unsupported capability
                return Err(SessionError::Fsm("the peer offers neither IPv4 nor IPv6 flowspec".into()));
            }
            (h, Families { v4: flow4, v6: flow6 })
        }
        Ok(Ok(Msg::Notification { code, subcode })) => return Err(SessionError::Notified { code, subcode }),
        Ok(Ok(other)) => {
            let _ = s.write_all(&wire::notification(5, 1)).await;
            return Err(SessionError::Fsm(format!("expected OPEN, got {other:?}")));
        }
        Ok(Err(e)) => return Err(e),
    };
    s.write_all(&wire::keepalive()).await?;
    // OpenConfirm: the peer's KEEPALIVE
    match tokio::time::timeout(Duration::from_secs(u64::from(hold.max(30))), next(&mut s, &mut buf)).await {
        Err(_) => return Err(SessionError::HoldExpired),
        Ok(Ok(Msg::Keepalive)) => {}
        Ok(Ok(Msg::Notification { code, subcode })) => return Err(SessionError::Notified { code, subcode }),
        Ok(Ok(other)) => return Err(SessionError::Fsm(format!("expected KEEPALIVE, got {other:?}"))),
        Ok(Err(e)) => return Err(e),
    }
    state.established.set(1);
    tracing::info!(peer = %peer.address, hold, "BGP session established");

    let mut announced: HashMap<Vec<u8>, FlowRule> = HashMap::new();
    let current = plan.borrow_and_update().clone();
    sync(&mut s, cfg, families, &current, &mut announced, state).await?;
    // End-of-RIB only for the families the peer took (others it may treat as an error)
    for (v6, on) in [(false, families.v4), (true, families.v6)] {
        if on {
            s.write_all(&wire::end_of_rib(v6)).await?;
        }
    }

    let keepalive_every = if hold == 0 { Duration::from_secs(3600) } else { Duration::from_secs(u64::from(hold) / 3) };
    let mut ticker = tokio::time::interval(keepalive_every);
    ticker.tick().await;
    let mut heard = Instant::now();
    loop {
        tokio::select! {
            changed = plan.changed() => {
                if changed.is_err() {
                    return Ok(()); // the controller is stopping
                }
                let p = plan.borrow_and_update().clone();
                sync(&mut s, cfg, families, &p, &mut announced, state).await?;
            }
            _ = ticker.tick() => {
                if hold != 0 && heard.elapsed() > Duration::from_secs(u64::from(hold)) {
                    let _ = s.write_all(&wire::notification(4, 0)).await;
                    return Err(SessionError::HoldExpired);
                }
                s.write_all(&wire::keepalive()).await?;
            }
            r = s.read_buf(&mut buf) => {
                if r? == 0 {
                    return Err(SessionError::Fsm("peer closed the connection".into()));
                }
                while let Some(len) = wire::frame_len(&buf)? {
                    let msg = buf.split_to(len);
                    heard = Instant::now();
                    match wire::parse(&msg)? {
                        Msg::Keepalive => {}
                        Msg::Update => { state.updates_received.inc(); }
                        Msg::RouteRefresh => {
                            state.route_refreshes.inc();
                            tracing::info!(peer = %peer.address, rules = announced.len(), "ROUTE-REFRESH: sending every rule again");
                            let all: Vec<&FlowRule> = announced.values().collect();
                            send(&mut s, cfg, &all, &[]).await?;
                        }
                        Msg::Notification { code, subcode } => return Err(SessionError::Notified { code, subcode }),
                        Msg::Open { .. } => {
                            let _ = s.write_all(&wire::notification(5, 3)).await;
                            return Err(SessionError::Fsm("OPEN while established".into()));
                        }
                    }
                }
            }
        }
    }
}

/// The flowspec families a session negotiated.
#[derive(Clone, Copy, Debug)]
struct Families {
    v4: bool,
    v6: bool,
}

/// Makes the peer's table equal to the plan (for the families it took): withdraw what is no
/// longer wanted, announce what is new or changed.
async fn sync(
    s: &mut TcpStream,
    cfg: &BgpConfig,
    families: Families,
    plan: &Plan,
    announced: &mut HashMap<Vec<u8>, FlowRule>,
    state: &PeerState,
) -> Result<(), SessionError> {
    let mut wanted: HashMap<Vec<u8>, &FlowRule> = HashMap::with_capacity(plan.rules.len());
    for p in plan.rules.iter().filter(|p| if p.rule.is_ipv6() { families.v6 } else { families.v4 }) {
        if let Ok(n) = p.rule.nlri() {
            wanted.insert(n, &p.rule);
        }
    }
    let gone: Vec<Vec<u8>> = announced.keys().filter(|k| !wanted.contains_key(*k)).cloned().collect();
    let gone_rules: Vec<FlowRule> = gone.iter().filter_map(|k| announced.remove(k)).collect();
    let new: Vec<&FlowRule> = wanted.iter().filter(|(k, r)| announced.get(*k) != Some(**r)).map(|(_, r)| *r).collect();
    let gone_refs: Vec<&FlowRule> = gone_rules.iter().collect();
    send(s, cfg, &new, &gone_refs).await?;
    let announced_now = new.len();
    for r in new {
        announced.insert(r.nlri().expect("encoded above"), r.clone());
    }
    state.announces.inc_by(announced_now as u64);
    state.withdraws.inc_by(gone_rules.len() as u64);
    state.announced.set(announced.len() as i64);
    Ok(())
}

async fn send(
    s: &mut TcpStream,
    cfg: &BgpConfig,
    announce: &[&FlowRule],
    withdraw: &[&FlowRule],
) -> Result<(), SessionError> {
    let mut out = Vec::new();
    for v6 in [false, true] {
        let w: Vec<&FlowRule> = withdraw.iter().copied().filter(|r| r.is_ipv6() == v6).collect();
        for m in wire::withdraw(&w) {
            out.extend_from_slice(&m);
        }
        // one UPDATE stream per action
        let mut by_action: Vec<(crate::flowspec::Action, Vec<&FlowRule>)> = Vec::new();
        for r in announce.iter().copied().filter(|r| r.is_ipv6() == v6) {
            match by_action.iter_mut().find(|(a, _)| *a == r.action) {
                Some((_, v)) => v.push(r),
                None => by_action.push((r.action, vec![r])),
            }
        }
        for (_, rules) in by_action {
            for m in wire::announce(cfg.asn, &rules) {
                out.extend_from_slice(&m);
            }
        }
    }
    if !out.is_empty() {
        s.write_all(&out).await?;
    }
    Ok(())
}
