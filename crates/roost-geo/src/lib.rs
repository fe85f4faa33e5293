//! GeoIP/ASN enrichment for roost.
//!
//! [`GeoDb`] opens MaxMind databases (GeoLite2/GeoIP2 Country, City and ASN or ISP),
//! memory-mapped; [`GeoHandle`] swaps in a fresh copy when a file changes, without pausing
//! lookups. What a country or ASN means is policy, written in the config ([`GeoRule`]): nothing
//! about any country or network is built in. Rules without a path pattern apply when a client
//! shows up ([`GeoAnnotator`]); rules with one apply to each matching request ([`GeoInspector`]),
//! e.g. "hosting-provider ASNs count as mildly dubious on login paths".

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use maxminddb::{Mmap, Reader};
use regex::Regex;
use roost_engine::{Annotator, Class, Evidence, Inspector, RequestContext, Source, SourceKind};
use roost_event::Timestamp;
use serde::{Deserialize, Serialize};

/// Where the databases are and what they mean (the `[geo]` config section).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GeoConfig {
    /// GeoLite2-Country / GeoIP2-Country (`.mmdb`).
    pub country_db: Option<PathBuf>,
    /// GeoLite2-City / GeoIP2-City: also answers the country when no country database is set.
    pub city_db: Option<PathBuf>,
    /// GeoLite2-ASN or GeoIP2-ISP.
    pub asn_db: Option<PathBuf>,
    /// How often `roost up` and the scorer check the files for changes.
    #[serde(with = "humantime_serde")]
    pub reload_interval: Option<Duration>,
    pub policy: Vec<GeoRule>,
}

/// One policy rule: clients from these countries or networks get this evidence.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GeoRule {
    /// Quoted in reasons: "hosting ASN on a login path".
    pub name: String,
    /// ISO 3166-1 alpha-2 codes (`"NL"`).
    pub countries: Vec<String>,
    /// Autonomous system numbers (`14061`).
    pub asns: Vec<u32>,
    /// Only requests whose path matches this regex (then the rule applies per request).
    pub paths: Option<String>,
    /// Only these methods (with `paths`); empty means any.
    pub methods: Vec<String>,
    pub penalty: f32,
    pub verdict: Option<Class>,
    #[serde(with = "humantime_serde")]
    pub ttl: Option<Duration>,
    /// `shadow`: on trial; its verdicts are recorded and shown, never enforced.
    pub mode: roost_engine::Mode,
}

/// Errors opening databases or compiling the policy.
#[derive(Debug, thiserror::Error)]
pub enum GeoError {
    #[error("{path}: {why}")]
    Open { path: String, why: String },
    #[error("geo policy rule {rule:?}: {why}")]
    Policy { rule: String, why: String },
}

/// What the databases say about an address.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct GeoInfo {
    pub country: Option<String>,
    pub city: Option<String>,
    pub asn: Option<u32>,
    pub as_org: Option<String>,
}

impl GeoInfo {
    /// "AS14061 DigitalOcean, LLC" / "country NL" / both.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(asn) = self.asn {
            parts.push(match &self.as_org {
                Some(org) => format!("AS{asn} {org}"),
                None => format!("AS{asn}"),
            });
        }
        if let Some(c) = &self.country {
            parts.push(match &self.city {
                Some(city) => format!("{city}, {c}"),
                None => format!("country {c}"),
            });
        }
        parts.join(", ")
    }
}

struct Db {
    path: PathBuf,
    modified: Option<SystemTime>,
    reader: Reader<Mmap>,
}

impl Db {
    fn open(path: &Path) -> Result<Db, GeoError> {
        let err = |why: String| GeoError::Open { path: path.display().to_string(), why };
        let modified = std::fs::metadata(path).and_then(|m| m.modified()).map_err(|e| err(e.to_string()))?;
        // SAFETY: the map is read-only and MaxMind's updater (geoipupdate) and roost's docs replace
        // database files by renaming a new file into place, so the mapped inode never changes
        // under us; a changed path is noticed by `reload` and mapped afresh.
        #[allow(unsafe_code)]
        let reader = unsafe { Reader::open_mmap(path) }.map_err(|e| err(e.to_string()))?;
        reader.verify().map_err(|e| err(format!("invalid database: {e}")))?;
        Ok(Db { path: path.to_owned(), modified: Some(modified), reader })
    }

    fn changed(&self) -> bool {
        std::fs::metadata(&self.path).and_then(|m| m.modified()).ok() != self.modified
    }

    fn database_type(&self) -> &str {
        &self.reader.metadata.database_type
    }
}

#[derive(Deserialize)]
struct CountryRecord<'a> {
    #[serde(borrow, default)]
    country: Option<Named<'a>>,
    #[serde(borrow, default)]
    registered_country: Option<Named<'a>>,
    #[serde(borrow, default)]
    city: Option<Named<'a>>,
}

#[derive(Deserialize)]
struct Named<'a> {
    #[serde(default)]
    iso_code: Option<&'a str>,
    #[serde(borrow, default)]
    names: Option<Names<'a>>,
}

#[derive(Deserialize)]
struct Names<'a> {
    #[serde(default)]
    en: Option<&'a str>,
}

#[derive(Deserialize)]
struct AsnRecord<'a> {
    #[serde(default)]
    autonomous_system_number: Option<u32>,
    #[serde(default)]
    autonomous_system_organization: Option<&'a str>,
}

/// The open databases.
#[derive(Default)]
pub struct GeoDb {
    country: Option<Db>,
    city: Option<Db>,
    asn: Option<Db>,
}

impl std::fmt::Debug for GeoDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = |d: &Option<Db>| d.as_ref().map(|d| d.path.display().to_string());
        f.debug_struct("GeoDb")
            .field("country", &name(&self.country))
            .field("city", &name(&self.city))
            .field("asn", &name(&self.asn))
            .finish()
    }
}

impl GeoDb {
    pub fn open(cfg: &GeoConfig) -> Result<GeoDb, GeoError> {
        let open = |p: &Option<PathBuf>| p.as_deref().map(Db::open).transpose();
        let db = GeoDb { country: open(&cfg.country_db)?, city: open(&cfg.city_db)?, asn: open(&cfg.asn_db)? };
        if let Some(a) = &db.asn
            && !(a.database_type().contains("ASN") || a.database_type().contains("ISP"))
        {
            return Err(GeoError::Open {
                path: a.path.display().to_string(),
                why: format!("a {} database, not an ASN or ISP one", a.database_type()),
            });
        }
        Ok(db)
    }

    pub fn is_empty(&self) -> bool {
        self.country.is_none() && self.city.is_none() && self.asn.is_none()
    }

    /// Whether any database file changed since it was opened.
    pub fn changed(&self) -> bool {
        [&self.country, &self.city, &self.asn].into_iter().flatten().any(Db::changed)
    }

    /// What the databases say about `ip` (empty fields where they know nothing).
    pub fn lookup(&self, ip: IpAddr) -> GeoInfo {
        let mut info = GeoInfo::default();
        for db in [&self.city, &self.country].into_iter().flatten() {
            if let Some(rec) = decode::<CountryRecord<'_>>(db, ip) {
                if info.country.is_none() {
                    info.country = rec
                        .country
                        .as_ref()
                        .or(rec.registered_country.as_ref())
                        .and_then(|c| c.iso_code)
                        .map(str::to_owned);
                }
                if info.city.is_none() {
                    info.city = rec.city.and_then(|c| c.names).and_then(|n| n.en).map(str::to_owned);
                }
            }
        }
        if let Some(db) = &self.asn
            && let Some(rec) = decode::<AsnRecord<'_>>(db, ip)
        {
            info.asn = rec.autonomous_system_number;
            info.as_org = rec.autonomous_system_organization.map(str::to_owned);
        }
        info
    }

    /// The ASN alone (the cheap lookup the per-request policy needs).
    pub fn asn(&self, ip: IpAddr) -> Option<u32> {
        self.asn.as_ref().and_then(|db| decode::<AsnRecord<'_>>(db, ip)).and_then(|r| r.autonomous_system_number)
    }
}

fn decode<'de, T: Deserialize<'de>>(db: &'de Db, ip: IpAddr) -> Option<T> {
    match db.reader.lookup(ip).and_then(|r| r.decode::<T>()) {
        Ok(v) => v,
        Err(e) => {
            tracing::debug!(db = %db.path.display(), %ip, error = %e, "geo lookup failed");
            None
        }
    }
}

/// The shared databases, replaced when their files change.
#[derive(Clone)]
pub struct GeoHandle {
    cfg: Arc<GeoConfig>,
    db: Arc<ArcSwap<GeoDb>>,
}

impl GeoHandle {
    pub fn open(cfg: GeoConfig) -> Result<GeoHandle, GeoError> {
        let db = GeoDb::open(&cfg)?;
        Ok(GeoHandle { cfg: Arc::new(cfg), db: Arc::new(ArcSwap::from_pointee(db)) })
    }

    pub fn load(&self) -> arc_swap::Guard<Arc<GeoDb>> {
        self.db.load()
    }

    /// Reopens the databases if a file changed. A broken new file leaves the old copy serving.
    pub fn reload_if_changed(&self) -> Result<bool, GeoError> {
        if !self.db.load().changed() {
            return Ok(false);
        }
        let fresh = GeoDb::open(&self.cfg)?;
        self.db.store(Arc::new(fresh));
        Ok(true)
    }
}

struct Compiled {
    rule: GeoRule,
    paths: Option<Regex>,
    countries: Vec<String>,
}

/// The compiled policy: which rules apply per client and which per request.
#[derive(Clone)]
pub struct GeoPolicy {
    per_client: Arc<[Compiled]>,
    per_request: Arc<[Compiled]>,
}

impl GeoPolicy {
    pub fn compile(rules: &[GeoRule]) -> Result<GeoPolicy, GeoError> {
        let mut per_client = Vec::new();
        let mut per_request = Vec::new();
        for r in rules {
            let bad = |why: &str| GeoError::Policy { rule: r.name.clone(), why: why.to_owned() };
            if r.name.is_empty() {
                return Err(bad("needs a name (quoted in reasons)"));
            }
            if r.countries.is_empty() && r.asns.is_empty() {
                return Err(bad("names no countries and no asns"));
            }
            if r.countries.iter().any(|c| c.len() != 2 || !c.bytes().all(|b| b.is_ascii_alphabetic())) {
                return Err(bad("countries are ISO 3166-1 alpha-2 codes such as \"NL\""));
            }
            if !r.penalty.is_finite() || r.penalty.abs() > 100.0 {
                return Err(bad("penalty: a number between -100 and 100"));
            }
            if r.verdict.is_some_and(|c| c != Class::Good) && r.ttl.is_none() {
                return Err(bad("a verdict needs a ttl"));
            }
            let paths = r.paths.as_deref().map(Regex::new).transpose().map_err(|e| bad(&e.to_string()))?;
            if paths.is_none() && !r.methods.is_empty() {
                return Err(bad("methods only apply together with paths"));
            }
            let c = Compiled {
                rule: r.clone(),
                countries: r.countries.iter().map(|c| c.to_ascii_uppercase()).collect(),
                paths,
            };
            if c.paths.is_some() { per_request.push(c) } else { per_client.push(c) }
        }
        Ok(GeoPolicy { per_client: per_client.into(), per_request: per_request.into() })
    }

    pub fn has_per_client(&self) -> bool {
        !self.per_client.is_empty()
    }

    pub fn has_per_request(&self) -> bool {
        !self.per_request.is_empty()
    }

    /// Whether any policy rule runs in shadow mode.
    pub fn has_shadow(&self) -> bool {
        self.per_client.iter().chain(self.per_request.iter()).any(|c| c.rule.mode.is_shadow())
    }
}

impl Compiled {
    fn matches(&self, info: &GeoInfo) -> bool {
        info.asn.is_some_and(|a| self.rule.asns.contains(&a))
            || info.country.as_deref().is_some_and(|c| self.countries.iter().any(|x| x == c))
    }

    fn evidence(&self, info: &GeoInfo, path: Option<&str>) -> Evidence {
        let mut detail = format!("{}: {}", self.rule.name, info.describe());
        if let Some(p) = path {
            detail.push_str(" on ");
            detail.extend(p.chars().take(80));
        }
        Evidence {
            source: Source::new(SourceKind::Geo, self.rule.name.as_str()).in_shadow(self.rule.mode.is_shadow()),
            penalty: self.rule.penalty,
            verdict: match (self.rule.verdict, self.rule.ttl) {
                (Some(c), Some(t)) if c != Class::Good => Some((c, t)),
                _ => None,
            },
            detail,
        }
    }
}

/// Per-client policy rules, consulted when a client shows up.
pub struct GeoAnnotator {
    handle: GeoHandle,
    policy: GeoPolicy,
}

impl GeoAnnotator {
    pub fn new(handle: GeoHandle, policy: GeoPolicy) -> GeoAnnotator {
        GeoAnnotator { handle, policy }
    }
}

impl Annotator for GeoAnnotator {
    fn name(&self) -> &str {
        "geo"
    }

    fn annotate(&self, ip: IpAddr, _now: Timestamp, out: &mut Vec<Evidence>) {
        let db = self.handle.load();
        let info = db.lookup(ip);
        for c in self.policy.per_client.iter().filter(|c| c.matches(&info)) {
            out.push(c.evidence(&info, None));
        }
    }
}

/// Per-request policy rules (with a path pattern): the database is only consulted for
/// requests whose path and method match some rule.
pub struct GeoInspector {
    handle: GeoHandle,
    policy: GeoPolicy,
}

impl GeoInspector {
    pub fn new(handle: GeoHandle, policy: GeoPolicy) -> GeoInspector {
        GeoInspector { handle, policy }
    }
}

impl Inspector for GeoInspector {
    fn name(&self) -> &str {
        "geo"
    }

    fn inspect(&mut self, ctx: &RequestContext<'_, '_>, out: &mut Vec<Evidence>) {
        let ev = ctx.event;
        let applies = |c: &&Compiled| {
            c.paths.as_ref().is_some_and(|p| p.is_match(&ev.path))
                && (c.rule.methods.is_empty() || c.rule.methods.iter().any(|m| m.eq_ignore_ascii_case(&ev.method)))
        };
        if !self.policy.per_request.iter().any(|c| applies(&c)) {
            return;
        }
        let db = self.handle.load();
        let info = db.lookup(ev.client);
        for c in self.policy.per_request.iter().filter(applies).filter(|c| c.matches(&info)) {
            out.push(c.evidence(&info, Some(&ev.path)));
        }
    }
}
