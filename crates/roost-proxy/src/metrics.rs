//! The proxy's Prometheus metrics (`roost_proxy_*`).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: &'static str,
    pub verdict: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamLabels {
    pub upstream: String,
}

#[derive(Default)]
pub struct ProxyMetrics {
    pub requests: Family<RouteLabels, Counter>,
    /// issued, passed, failed_{reason}
    pub challenges: Family<OutcomeLabels, Counter>,
    /// Clearance cookies refused, by reason.
    pub cookies_refused: Family<OutcomeLabels, Counter>,
    pub cache_entries: Gauge,
    pub redis_up: Gauge,
    pub sync_lag_ms: Gauge,
    pub sync_loads: Counter,
    pub sync_changes: Counter,
    pub sync_errors: Counter,
    pub sync_bad_records: Counter,
    pub upstream_healthy: Family<UpstreamLabels, Gauge>,
    /// Requests refused before routing (oversized headers, bad forwarding headers…), by reason.
    pub refused: Family<OutcomeLabels, Counter>,
    /// PROXY protocol headers from trusted peers, by outcome (client, local, missing, malformed, truncated, timeout).
    pub proxy_protocol: Family<OutcomeLabels, Counter>,
    pub access_log_dropped: Counter,
    pub access_log_errors: Counter,
    /// Requests whose client went away (an HTTP/2 stream reset, or its connection ended) while
    /// the app's answer was awaited or under way.
    pub abandoned: Counter,
}

impl ProxyMetrics {
    pub fn register(&self, r: &mut Registry) {
        let r = r.sub_registry_with_prefix("roost_proxy");
        r.register("requests", "Requests by route taken and the client's verdict", self.requests.clone());
        r.register("challenges", "Challenges issued, passed and failed (by reason)", self.challenges.clone());
        r.register(
            "cookies_refused",
            "Clearance cookies refused (forged, expired, other address)",
            self.cookies_refused.clone(),
        );
        r.register("cache_entries", "Verdicts held in the proxy's cache", self.cache_entries.clone());
        r.register("redis_up", "1 while the verdict store is reachable and followed", self.redis_up.clone());
        r.register(
            "sync_lag_milliseconds",
            "Age of the last change applied from the change stream when it was applied",
            self.sync_lag_ms.clone(),
        );
        r.register("sync_loads", "Full loads of every verdict from Redis", self.sync_loads.clone());
        r.register("sync_changes", "Changes applied from the change stream", self.sync_changes.clone());
        r.register("sync_errors", "Failures talking to Redis", self.sync_errors.clone());
        r.register("sync_bad_records", "Stored verdicts that could not be read", self.sync_bad_records.clone());
        r.register("upstream_healthy", "1 while the upstream passes its health check", self.upstream_healthy.clone());
        r.register("refused", "Requests refused before routing, by reason", self.refused.clone());
        r.register(
            "proxy_protocol_headers",
            "PROXY protocol headers read from trusted peers, by outcome",
            self.proxy_protocol.clone(),
        );
        r.register(
            "access_log_dropped",
            "Access-log lines dropped because the writer fell behind",
            self.access_log_dropped.clone(),
        );
        r.register("access_log_errors", "Failures writing the access log", self.access_log_errors.clone());
        r.register(
            "abandoned",
            "Requests whose client went away while the app's answer was awaited or under way (the app connection is closed)",
            self.abandoned.clone(),
        );
    }
}
