//! The `[bgp]` config section.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};

use crate::flowspec::Action;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BgpConfig {
    /// Our AS and BGP identifier.
    pub asn: u32,
    pub router_id: Ipv4Addr,
    /// Hold time offered (the smaller of ours and the peer's applies; 0 or at least 3).
    pub hold_time: u16,
    /// The routers: roost connects to each (they peer passively).
    pub peers: Vec<PeerConfig>,
    /// Destination prefixes the diversions apply to (your sites). Required when there are
    /// peers: a rule without a destination would divert the source's traffic to everything the
    /// routers carry.
    pub protect: Vec<IpNetwork>,
    /// Match only this IP protocol (6 = TCP; 0 = any) and these destination ports ([] = any).
    pub protocol: u8,
    pub ports: Vec<u16>,
    /// What routers do with a dubious / bad client's traffic; none: no rule for that verdict.
    pub dubious: Option<Action>,
    pub bad: Option<Action>,
    /// Source prefix length of the rules (32/128: one rule per client; shorter aggregates).
    pub aggregate_v4: u8,
    pub aggregate_v6: u8,
    /// Never a rule whose source prefix is shorter than this.
    pub min_prefix_v4: u8,
    pub min_prefix_v6: u8,
    /// Never a rule touching these prefixes. The routers' addresses and roost's own session
    /// addresses are added ([`BgpConfig::never_divert`]), and `roost bgp`/`roost up` add the
    /// proxy's listeners and upstreams.
    pub allowlist: Vec<IpNetwork>,
    /// Rules per peer at most, worst verdicts first.
    pub max_rules: usize,
    /// Compute and show the rules, announce nothing.
    pub dry_run: bool,
    /// /metrics, /healthz and /rules (`roost bgp show`).
    pub listen: SocketAddr,
    /// Where routers that connect to roost (peers with `passive = true`) reach it; none: no
    /// passive peers.
    pub bgp_listen: Option<SocketAddr>,
    /// Waiting before a reconnect grows from this up to a minute.
    #[serde(with = "humantime_serde")]
    pub connect_retry: Duration,
}

impl Default for BgpConfig {
    fn default() -> Self {
        BgpConfig {
            asn: 65003,
            router_id: Ipv4Addr::new(127, 0, 0, 4),
            hold_time: 90,
            peers: Vec::new(),
            protect: Vec::new(),
            protocol: 6,
            ports: vec![80, 443],
            dubious: Some(Action::RedirectVrf { asn: 65003, value: 100 }),
            bad: Some(Action::RedirectVrf { asn: 65003, value: 100 }),
            aggregate_v4: 32,
            aggregate_v6: 64,
            min_prefix_v4: 24,
            min_prefix_v6: 48,
            allowlist: vec!["127.0.0.0/8".parse().expect("valid"), "::1/128".parse().expect("valid")],
            max_rules: 10_000,
            dry_run: false,
            listen: "127.0.0.1:9755".parse().expect("valid"),
            bgp_listen: None,
            connect_retry: Duration::from_secs(1),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    /// The router's BGP address and port (for a passive peer, the port is not used).
    pub address: SocketAddr,
    /// The router connects to us (on `bgp.bgp_listen`) instead of us to it.
    #[serde(default)]
    pub passive: bool,
    /// Our address on that session (bound before connecting).
    #[serde(default)]
    pub local_address: Option<IpAddr>,
    /// The router's AS; 0: any.
    #[serde(default)]
    pub peer_as: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("bgp.{0}: {1}")]
    Invalid(&'static str, String),
}

impl BgpConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |k, m: &str| Err(ConfigError::Invalid(k, m.into()));
        if self.hold_time != 0 && self.hold_time < 3 {
            return bad("hold_time", "0 or at least 3 seconds");
        }
        if self.min_prefix_v4 > 32 || self.aggregate_v4 > 32 || self.aggregate_v4 < self.min_prefix_v4 {
            return bad("aggregate_v4", "needs min_prefix_v4 <= aggregate_v4 <= 32");
        }
        if self.min_prefix_v6 > 128 || self.aggregate_v6 > 128 || self.aggregate_v6 < self.min_prefix_v6 {
            return bad("aggregate_v6", "needs min_prefix_v6 <= aggregate_v6 <= 128");
        }
        if self.peers.iter().any(|p| p.passive) && self.bgp_listen.is_none() {
            return bad("bgp_listen", "passive peers connect to bgp.bgp_listen: set it");
        }
        if self.min_prefix_v4 < 8 || self.min_prefix_v6 < 19 {
            return bad("min_prefix_v4", "a minimum shorter than /8 (/19 for IPv6) could divert whole networks");
        }
        if !self.peers.is_empty() && self.protect.is_empty() {
            return bad(
                "protect",
                "empty with peers configured: every rule would divert its source's traffic to every destination the routers carry; list your sites' prefixes",
            );
        }
        Ok(())
    }

    /// What no rule may touch: the allowlist, every router's address and roost's own address
    /// on each session (a forged flood "from" a router must never divert the router).
    pub fn never_divert(&self) -> Vec<IpNetwork> {
        let host = |a: IpAddr| IpNetwork::from(a);
        let mut out = self.allowlist.clone();
        for p in &self.peers {
            out.push(host(p.address.ip()));
            out.extend(p.local_address.map(host));
        }
        out.extend(self.bgp_listen.map(|l| l.ip()).filter(|a| !a.is_unspecified()).map(host));
        out.sort();
        out.dedup();
        out
    }
}
