//! The appliance's configuration: one typed struct per component, defaults in code, spelled out
//! in the reference file `deploy/roost.toml`; a TOML file and `ROOST_…` environment variables
//! override them (`ROOST_ENGINE__HALF_LIFE=5m` sets `engine.half_life`).

use std::path::Path;

use anyhow::Context;
use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use roost_engine::EngineConfig;
use roost_logformat::LogFormatConfig;
use serde::{Deserialize, Serialize};

/// The top-level sections, as environment variables spell them (`ROOST_ENGINE__…`).
const SECTIONS: &[&str] = &[
    "engine", "logs", "rules", "up", "feeds", "geo", "kafka", "redis", "tail", "score", "proxy", "bgp", "alert",
    "flows", "admin",
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
    pub feeds: crate::feeds::FeedsConfig,
    /// GeoIP/ASN databases and the policy that turns countries and networks into evidence.
    pub geo: roost_geo::GeoConfig,
    /// Kafka (unused while `brokers` is empty).
    pub kafka: roost_kafka::KafkaConfig,
    /// The verdict store (`roost score` writes, proxies read).
    pub redis: roost_verdicts::RedisConfig,
    /// `roost tail`: logs to Kafka.
    pub tail: crate::tail::TailConfig,
    /// `roost score`: the scorer consumer group.
    pub score: roost_scorer::Settings,
    /// `roost proxy`: Waffles, routing each request by its client's verdict.
    pub proxy: roost_proxy::ProxyConfig,
    /// `roost bgp`: the flowspec controller.
    pub bgp: roost_bgp::BgpConfig,
    /// `roost up`'s own average-reputation drop alert.
    pub alert: crate::alert::AlertConfig,
    /// `roost flows`: the NetFlow/IPFIX collector.
    pub flows: crate::flows::FlowsConfig,
    /// `roost admin`: the admin UI.
    pub admin: roost_admin::AdminConfig,
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
    /// Clients with sliding-window state, at most.
    pub max_clients: usize,
}

impl Default for RulesConfig {
    fn default() -> Self {
        RulesConfig { dir: String::new(), disable: Vec::new(), disable_tags: Vec::new(), max_clients: 100_000 }
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
