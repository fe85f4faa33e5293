//! The appliance's configuration: one typed struct per component, defaults in code, spelled out
//! in the reference file `deploy/roost.toml`; a TOML file and `ROOST_…` environment variables
//! override them (`ROOST_ENGINE__HALF_LIFE=5m` sets `engine.half_life`).
//!
//! Every section type lives here or in its library crate; the subcommand modules depend on this
//! module, never it on them.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use roost_engine::EngineConfig;
use roost_engine::alarm::DropConfig;
use roost_feeds::Policy;
use roost_feeds::fetch::FetchConfig;
use roost_logformat::LogFormatConfig;
use serde::{Deserialize, Serialize};

/// The top-level sections, as environment variables spell them (`ROOST_ENGINE__…`).
const SECTIONS: &[&str] = &[
    "engine", "logs", "rules", "up", "feeds", "geo", "kafka", "redis", "tail", "score", "proxy", "bgp", "alert",
    "flows", "admin", "crawlers",
];

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub engine: EngineConfig,
    /// The access logs to read (`roost up`, and the default format for `roost replay`).
    pub logs: Vec<LogSource>,
    pub rules: RulesConfig,
    pub up: UpConfig,
    /// Threat feeds: definitions, local files, validation, fetching.
    pub feeds: FeedsConfig,
    /// GeoIP/ASN databases and the policy that turns countries and networks into evidence.
    pub geo: roost_geo::GeoConfig,
    /// Kafka (unused while `brokers` is empty).
    pub kafka: roost_kafka::KafkaConfig,
    /// The verdict store (`roost score` writes, proxies read).
    pub redis: roost_verdicts::RedisConfig,
    /// `roost tail`: logs to Kafka.
    pub tail: TailConfig,
    /// `roost score`: the scorer consumer group.
    pub score: roost_scorer::Settings,
    /// `roost proxy`: Waffles, routing each request by its client's verdict.
    pub proxy: roost_proxy::ProxyConfig,
    /// `roost bgp`: the flowspec controller.
    pub bgp: roost_bgp::BgpConfig,
    /// `roost up`'s own average-reputation drop alert.
    pub alert: AlertConfig,
    /// `roost flows`: the NetFlow/IPFIX collector.
    pub flows: FlowsConfig,
    /// `roost admin`: the admin UI.
    pub admin: roost_admin::AdminConfig,
    /// Search-engine crawler verification (forward-confirmed reverse DNS).
    pub crawlers: crate::crawlers::CrawlersConfig,
}

/// Known-bad behaviour rules.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RulesConfig {
    /// A directory of rule files (`*.toml`), reloaded when they change; empty: the rules built
    /// into roost (the repository's `rules/`).
    pub dir: String,
    /// Rule ids to leave out.
    pub disable: Vec<String>,
    /// Tags to leave out: `not-wordpress` on a WordPress site, `not-webdav` on a WebDAV server.
    pub disable_tags: Vec<String>,
    /// Rule ids to run in shadow mode: their verdicts are recorded and shown as "would block",
    /// never enforced (a rule file can say `mode = "shadow"` itself).
    pub shadow: Vec<String>,
    /// Tags whose rules run in shadow mode.
    pub shadow_tags: Vec<String>,
    /// Clients with sliding-window state, at most.
    pub max_clients: usize,
}

impl Default for RulesConfig {
    fn default() -> Self {
        RulesConfig {
            dir: String::new(),
            disable: Vec::new(),
            disable_tags: Vec::new(),
            shadow: Vec::new(),
            shadow_tags: Vec::new(),
            max_clients: 100_000,
        }
    }
}

/// `roost up`: the whole appliance in one process.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UpConfig {
    /// Where the HTTP API and /metrics listen. Loopback by default: the API shows client
    /// addresses and requests, and has no authentication (the admin UI is the signed-in way in).
    pub listen: std::net::SocketAddr,
    /// Read logs that already exist from their `end` (only new lines) or `beginning`.
    pub start: LogStart,
    /// How often logs are checked for new lines.
    #[serde(with = "humantime_serde")]
    pub poll_interval: std::time::Duration,
    /// Serve the proxy (`[proxy]`: listeners, upstreams) in this process, its verdicts straight
    /// from the engine.
    pub proxy: bool,
    /// Serve the admin UI (`[admin]`) in this process, over this engine's verdicts.
    pub admin: bool,
    /// Host names the API may be reached by, besides IP addresses and `localhost` (a name a
    /// reverse proxy in front of it uses). Any other `Host` is refused: a web page cannot read
    /// the API by pointing a name of its own at this machine (DNS rebinding).
    pub hosts: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogStart {
    End,
    Beginning,
}

impl Default for UpConfig {
    fn default() -> Self {
        UpConfig {
            listen: "127.0.0.1:9750".parse().expect("valid"),
            start: LogStart::End,
            poll_interval: std::time::Duration::from_millis(250),
            proxy: true,
            admin: true,
            hosts: Vec::new(),
        }
    }
}

/// One access log (a path or a glob) and how it is written.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogSource {
    pub path: String,
    #[serde(flatten)]
    pub format: LogFormatConfig,
}

impl Default for LogSource {
    fn default() -> Self {
        LogSource { path: "/var/log/nginx/access.log".into(), format: LogFormatConfig::default() }
    }
}

/// The `[tail]` config section.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TailConfig {
    /// Where reading positions are kept.
    pub checkpoint: PathBuf,
    /// Files that exist at the first start (no checkpoint yet) are read from their `end` or
    /// `beginning`; files that appear later are always read whole.
    pub start: LogStart,
    /// How often files are checked for new lines.
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// Bytes read from each file per batch, about (one batch is in flight at a time: this bounds
    /// memory while Kafka is away).
    pub batch_bytes: u64,
    /// Where /metrics listens.
    pub listen: SocketAddr,
}

impl Default for TailConfig {
    fn default() -> Self {
        TailConfig {
            checkpoint: PathBuf::from("/var/lib/roost/tail.json"),
            start: LogStart::End,
            poll_interval: Duration::from_millis(100),
            batch_bytes: 1024 * 1024,
            listen: "127.0.0.1:9753".parse().expect("valid"),
        }
    }
}

/// The `[flows]` config section.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FlowsConfig {
    /// UDP addresses to receive exports on (each takes v5, v9 and IPFIX).
    pub listen: Vec<SocketAddr>,
    /// Sockets (each with a receiving and a decoding thread) per address, bound with
    /// SO_REUSEPORT; 0: one per core.
    pub receivers: usize,
    /// The sockets' receive buffer (the kernel caps it at net.core.rmem_max).
    pub receive_buffer_bytes: usize,
    /// Datagrams read but not decoded yet, per socket, at most: a socket's receiving thread
    /// only reads, and its decoding thread catches up from this backlog when it falls behind.
    pub backlog_bytes: usize,
    /// Templates not refreshed within this time are forgotten.
    #[serde(with = "humantime_serde")]
    pub template_ttl: Duration,
    /// Exporters (address and observation domain) tracked at most.
    pub max_exporters: usize,
    /// Records waiting for Kafka at most; beyond, records are dropped and counted.
    pub queue: usize,
    /// Partitions of the flows topic when roost creates it.
    pub partitions: i32,
    /// Where /metrics listens.
    pub metrics_listen: SocketAddr,
    /// The routers (addresses or prefixes) whose exports are accepted; datagrams from any other
    /// address are counted (`roost_flows_foreign_datagrams_total`) and dropped. Empty: any
    /// address (a warning at start: anyone who can reach the port can make evidence).
    pub exporters: Vec<ipnetwork::IpNetwork>,
    /// How far an exporter's clock may run ahead: flows ending later than their datagram's
    /// arrival plus this get the arrival time (`roost_flows_clamped_times_total`).
    #[serde(with = "humantime_serde")]
    pub max_clock_skew: Duration,
    /// How the producer compresses the flows topic's batches (`lz4`, `none`, `zstd`, `snappy`,
    /// `gzip`). LZ4 costs the collector about 0.07 µs of CPU per flow, and saved the broker
    /// more than that on this machine (tansu took 2.5× the CPU for uncompressed batches); `none`
    /// suits a broker that is not short of CPU or network.
    pub compression: Compression,
    /// Network-level evidence from the flows.
    pub features: roost_flows::features::FeaturesConfig,
}

/// A Kafka producer's `compression.type`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    None,
    #[default]
    Lz4,
    Zstd,
    Snappy,
    Gzip,
}

impl Compression {
    /// librdkafka's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
            Compression::Snappy => "snappy",
            Compression::Gzip => "gzip",
        }
    }
}

impl Default for FlowsConfig {
    fn default() -> Self {
        FlowsConfig {
            listen: vec!["127.0.0.1:2055".parse().expect("valid")],
            receivers: 0,
            receive_buffer_bytes: 32 << 20,
            backlog_bytes: 64 << 20,
            template_ttl: Duration::from_secs(30 * 60),
            max_exporters: 1024,
            queue: 1_000_000,
            partitions: 8,
            metrics_listen: "127.0.0.1:9756".parse().expect("valid"),
            exporters: Vec::new(),
            max_clock_skew: Duration::from_secs(10),
            compression: Compression::Lz4,
            features: roost_flows::features::FeaturesConfig::default(),
        }
    }
}

/// The `[feeds]` config section.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FeedsConfig {
    /// A directory of feed definitions (`*.toml`); empty: the built-in ones (`feeds/`).
    pub dir: String,
    /// Feeds to switch on that are off by default (e.g. `threatexchange`, which needs a token).
    pub enable: Vec<String>,
    /// Feeds to switch off.
    pub disable: Vec<String>,
    /// Feeds in shadow mode: their listings make "would block" verdicts, never enforced ones.
    pub shadow: Vec<String>,
    /// Feed files on disk, by feed name, loaded directly by `roost up` and `roost replay`.
    pub files: BTreeMap<String, PathBuf>,
    /// Where `roost feeds run` writes each accepted feed (`NAME.feed`) and `roost up` reads
    /// them; empty: nowhere.
    pub cache_dir: String,
    /// Where `roost feeds run` serves /metrics.
    pub listen: SocketAddr,
    pub validation: Policy,
    pub fetch: FetchConfig,
}

impl Default for FeedsConfig {
    fn default() -> Self {
        FeedsConfig {
            dir: String::new(),
            enable: Vec::new(),
            disable: Vec::new(),
            shadow: Vec::new(),
            files: BTreeMap::new(),
            cache_dir: String::new(),
            listen: "127.0.0.1:9752".parse().expect("valid"),
            validation: Policy::default(),
            fetch: FetchConfig::default(),
        }
    }
}

/// The `[alert]` config section.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AlertConfig {
    /// Track the drop signal in `roost up`.
    pub enabled: bool,
    /// How often the population is sampled (Prometheus' evaluation interval, in effect).
    #[serde(with = "humantime_serde")]
    pub sample_interval: Duration,
    pub drop: DropConfig,
    /// Where notifications go; none by default.
    pub receivers: Vec<Receiver>,
    /// While firing, the alert is sent again this often (an Alertmanager forgets alerts that
    /// are not re-sent).
    #[serde(with = "humantime_serde")]
    pub resend: Duration,
    /// The admin UI's base URL, for the link to the offending clients. Empty: this process's
    /// own API (`http://{up.listen}`).
    pub admin_url: String,
    /// Labels added to the alert (`severity`, `team`…).
    pub labels: BTreeMap<String, String>,
}

impl Default for AlertConfig {
    fn default() -> Self {
        AlertConfig {
            enabled: true,
            sample_interval: Duration::from_secs(15),
            drop: DropConfig::default(),
            receivers: Vec::new(),
            resend: Duration::from_secs(60),
            admin_url: String::new(),
            labels: [("severity".to_owned(), "page".to_owned())].into(),
        }
    }
}

/// A notification target.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Receiver {
    /// For `alertmanager`: the base URL (`http://127.0.0.1:9093`); for `webhook`: the URL.
    pub url: String,
    #[serde(default)]
    pub format: ReceiverFormat,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReceiverFormat {
    /// Alertmanager's API: `POST {url}/api/v2/alerts`.
    #[default]
    Alertmanager,
    /// The payload Alertmanager's `webhook_config` sends (`"version": "4"`).
    Webhook,
}

impl Config {
    /// Defaults, then the file (if any), then the environment.
    pub fn load(file: Option<&Path>) -> anyhow::Result<Config> {
        let mut fig =
            Figment::from(Serialized::defaults(Config { logs: vec![LogSource::default()], ..Config::default() }));
        if let Some(f) = file {
            anyhow::ensure!(f.exists(), "config file {} does not exist", f.display());
            fig = fig.merge(Toml::file(f));
        }
        // Only variables naming a section are configuration; ROOST_CONFIG, ROOST_LOG and the
        // like are not.
        fig = fig.merge(Env::prefixed("ROOST_").split("__").filter(|k| {
            let k = k.as_str().to_ascii_lowercase();
            SECTIONS.iter().any(|s| k == *s || k.starts_with(&format!("{s}.")))
        }));
        let mut cfg: Config = fig.extract().map_err(|e| anyhow::anyhow!("{e}")).with_context(|| match file {
            Some(f) => format!("reading configuration from {} and ROOST_* variables", f.display()),
            None => "reading configuration from ROOST_* variables".to_owned(),
        })?;
        cfg.engine.profile_defs = crate::profiles::built_in()?;
        cfg.engine.validate()?;
        // the admin names IPv6 clients as the engine keys them
        cfg.admin.ipv6_prefix = cfg.engine.ipv6_prefix;
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reference config spells out exactly the defaults.
    #[test]
    fn reference_config_is_the_defaults() {
        let text = include_str!("../../../deploy/roost.toml");
        let parsed: Config = toml::from_str(text).expect("deploy/roost.toml parses");
        let defaults = Config { logs: vec![LogSource::default()], ..Config::default() };
        assert_eq!(parsed, defaults);
    }
}
