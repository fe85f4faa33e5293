//! Feed definitions: one TOML file per feed in `feeds/` (built into the binary), or a directory
//! of the operator's own.

use std::path::Path;
use std::time::Duration;

use roost_engine::Class;
use serde::{Deserialize, Serialize};

use crate::Error;

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/embedded_feeds.rs"));
}

/// How a feed's body is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FeedFormat {
    /// One address or CIDR per line; `#` or `;` comments, also after an entry (FireHOL netset
    /// and ipset files, Tor's bulk exit list, blocklist.de, Emerging Threats).
    #[serde(alias = "ipset", alias = "list")]
    Netset,
    /// Spamhaus DROP/EDROP text: `; ` comment lines, then `CIDR ; SBLnnnnnn`.
    Spamhaus,
    /// Spamhaus JSON lines: `{"cidr":…,"sblid":…,"rir":…}`, then a metadata line.
    SpamhausJson,
    /// CSV with `#` comment lines (abuse.ch): the address in `column`.
    Csv,
    /// Facebook ThreatExchange Graph API `threat_descriptors` pages (`data[]`, `paging.next`).
    Threatexchange,
    /// The JSON in which Google and Bing publish their crawlers' ranges:
    /// `{"creationTime":…,"prefixes":[{"ipv4Prefix":"66.249.64.0/27"},{"ipv6Prefix":…}]}`.
    #[serde(rename = "ipranges")]
    IpRanges,
}

/// What a listing does to a client's reputation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeedEffect {
    /// Negative evidence in pseudo-requests, entering the reputation average and decaying with it.
    #[serde(default)]
    pub penalty: f32,
    /// An immediate verdict of at least this class while listed (`good`: held good, whatever
    /// else the evidence says: a search engine's published crawler ranges)…
    #[serde(default)]
    pub verdict: Option<Class>,
    /// …for this long after each episode in which the client shows up.
    #[serde(default, with = "humantime_serde")]
    pub ttl: Option<Duration>,
}

/// CSV layout.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CsvLayout {
    /// Zero-based column holding the address or CIDR.
    pub column: usize,
    /// Zero-based column quoted in reasons (e.g. the malware family), if any.
    #[serde(default)]
    pub detail_column: Option<usize>,
}

/// One feed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeedDef {
    /// Lowercase letters, digits and `_`: used in keys, metrics and reasons.
    pub name: String,
    pub description: String,
    /// Where to fetch it. `{token}` is replaced by the value of `token_env`.
    pub url: String,
    pub format: FeedFormat,
    #[serde(default)]
    pub csv: Option<CsvLayout>,
    /// How often to fetch it.
    #[serde(with = "humantime_serde")]
    pub refresh: Duration,
    /// Listings stop counting when the last successful fetch is older than this.
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
    pub effect: FeedEffect,
    /// The publisher's terms, in a line.
    pub licence: String,
    /// Fetched by `roost feeds` unless disabled here or in the config.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// The environment variable holding the API token substituted for `{token}` in `url`.
    #[serde(default)]
    pub token_env: Option<String>,
    /// Refuse an update that shrinks the feed by more than this share (overrides the config).
    #[serde(default)]
    pub max_shrink: Option<f64>,
    /// Whether an empty list is a legitimate state of this feed (otherwise it is refused).
    #[serde(default)]
    pub allow_empty: bool,
    /// Pages followed at most (paged APIs).
    #[serde(default = "default_pages")]
    pub max_pages: u32,
}

fn yes() -> bool {
    true
}

fn default_pages() -> u32 {
    100
}

impl FeedDef {
    pub fn parse(name: &str, text: &str) -> Result<FeedDef, Error> {
        let def: FeedDef = toml::from_str(text).map_err(|e| Error::Definition(name.to_owned(), e.to_string()))?;
        def.check().map_err(|why| Error::Definition(name.to_owned(), why))?;
        Ok(def)
    }

    fn check(&self) -> Result<(), String> {
        if self.name.is_empty()
            || self.name.len() > 64
            || !self.name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            return Err(format!("name {:?}: use 1 to 64 lowercase letters, digits and _", self.name));
        }
        if self.format == FeedFormat::Csv && self.csv.is_none() {
            return Err("format = \"csv\" needs a [csv] table with `column`".into());
        }
        if !(self.url.starts_with("http://") || self.url.starts_with("https://")) {
            return Err(format!("url {:?}: only http:// and https:// are fetched", self.url));
        }
        if self.url.contains("{token}") && self.token_env.is_none() {
            return Err("url has {token} but no token_env names where the token comes from".into());
        }
        if self.refresh < Duration::from_secs(60) {
            return Err("refresh: at least 1m (be kind to publishers)".into());
        }
        if !self.effect.penalty.is_finite() || self.effect.penalty.abs() > 100.0 {
            return Err("effect.penalty: a number between -100 and 100".into());
        }
        if self.effect.verdict.is_some() && self.effect.ttl.is_none() {
            return Err("effect.verdict needs effect.ttl".into());
        }
        if let Some(s) = self.max_shrink
            && !(0.0..=1.0).contains(&s)
        {
            return Err("max_shrink: a share between 0 and 1".into());
        }
        Ok(())
    }

    /// The verdict part of the effect, when it has one.
    pub fn verdict(&self) -> Option<(Class, Duration)> {
        match (self.effect.verdict, self.effect.ttl) {
            (Some(c), Some(ttl)) => Some((c, ttl)),
            _ => None,
        }
    }
}

/// The feed definitions built into the binary (this repository's `feeds/`).
pub fn embedded() -> Result<Vec<FeedDef>, Error> {
    collect(embedded::FILES.iter().map(|(n, t)| ((*n).to_owned(), (*t).to_owned())))
}

/// Every `*.toml` in `dir`, in name order.
pub fn from_dir(dir: &Path) -> Result<Vec<FeedDef>, Error> {
    let io = |e: std::io::Error| Error::Io(dir.display().to_string(), e);
    let mut paths: Vec<_> = std::fs::read_dir(dir)
        .map_err(io)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml") && p.is_file())
        .collect();
    paths.sort();
    let mut files = Vec::new();
    for p in paths {
        let text = std::fs::read_to_string(&p).map_err(|e| Error::Io(p.display().to_string(), e))?;
        files.push((p.display().to_string(), text));
    }
    collect(files.into_iter())
}

fn collect(files: impl Iterator<Item = (String, String)>) -> Result<Vec<FeedDef>, Error> {
    let mut defs: Vec<FeedDef> = Vec::new();
    for (name, text) in files {
        let def = FeedDef::parse(&name, &text)?;
        if defs.iter().any(|d| d.name == def.name) {
            return Err(Error::Definition(name, format!("feed {:?} is defined twice", def.name)));
        }
        defs.push(def);
    }
    if defs.len() > u16::MAX as usize {
        return Err(Error::Definition("feeds".into(), "too many feeds".into()));
    }
    Ok(defs)
}
