//! The per-request score: what a response says about the client, weighted by what it asked for.

use hashbrown::HashSet;

use crate::config::{EngineConfig, parse_score_key};

/// What a response status says, for counting and for reasons.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Category {
    /// 1xx, 2xx, 3xx.
    Ok = 0,
    /// 404 and 410: asked for something that is not there.
    NotFound = 1,
    /// 401, 403, 407: failed authentication or forbidden.
    Auth = 2,
    /// Other 4xx: rejected (400, 405, 429, …).
    Rejected = 3,
    /// 5xx: the server's fault.
    ServerError = 4,
    /// No status (0) or nonsense.
    Unknown = 5,
}

pub const N_CATEGORIES: usize = 5;

impl Category {
    pub fn of(status: u16) -> Category {
        match status {
            100..=399 => Category::Ok,
            404 | 410 => Category::NotFound,
            401 | 403 | 407 => Category::Auth,
            400..=499 => Category::Rejected,
            500..=599 => Category::ServerError,
            _ => Category::Unknown,
        }
    }
}

/// What a request asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathClass {
    /// A page or API call: full weight.
    Page,
    /// A static asset (by extension): little weight.
    Static,
    /// Something clients fetch on their own (`/favicon.ico`): no weight.
    Benign,
}

/// The compiled scoring tables.
#[derive(Clone, Debug)]
pub struct Scoring {
    status: Box<[f32; 600]>,
    static_ext: HashSet<Box<str>>,
    benign_exact: HashSet<Box<str>>,
    benign_prefix: Vec<Box<str>>,
    pub static_weight: f32,
    /// The app profiles in force: their path patterns, and per pattern the methods and answers
    /// that are normal.
    profiles: Option<Profiles>,
}

#[derive(Clone, Debug)]
struct Profiles {
    set: regex::bytes::RegexSet,
    /// Per pattern: (methods, or empty for any; normal statuses).
    normal: Vec<(Vec<String>, Vec<u16>)>,
    /// Every status some pattern calls normal (a quick test before the set).
    statuses: HashSet<u16>,
}

impl Scoring {
    pub fn new(cfg: &EngineConfig) -> Scoring {
        let mut status = Box::new([0.0f32; 600]);
        // classes first, then single codes override them
        let mut keys: Vec<_> = cfg.scores.iter().filter_map(|(k, v)| parse_score_key(k).map(|r| (r, *v))).collect();
        keys.sort_by_key(|((lo, hi), _)| std::cmp::Reverse(hi - lo));
        for ((lo, hi), v) in keys {
            for s in lo..=hi {
                status[s as usize] = v;
            }
        }
        let mut benign_exact = HashSet::new();
        let mut benign_prefix = Vec::new();
        for b in &cfg.paths.benign {
            match b.strip_suffix('*') {
                Some(p) => benign_prefix.push(p.into()),
                None => {
                    benign_exact.insert(b.as_str().into());
                }
            }
        }
        let mut pats = Vec::new();
        let mut normal = Vec::new();
        for def in cfg.profile_defs.iter().filter(|d| cfg.profiles.contains(&d.name)) {
            for n in &def.normal {
                for p in &n.paths {
                    pats.push(format!("(?i:{p})"));
                    normal.push((n.methods.iter().map(|m| m.to_ascii_uppercase()).collect(), n.statuses.clone()));
                }
            }
        }
        let profiles = (!pats.is_empty()).then(|| Profiles {
            // validated by EngineConfig::validate
            set: regex::bytes::RegexSetBuilder::new(&pats).unicode(false).build().expect("validated profile patterns"),
            statuses: normal.iter().flat_map(|(_, s)| s.iter().copied()).collect(),
            normal,
        });
        Scoring {
            profiles,
            status,
            static_ext: cfg.paths.static_extensions.iter().map(|e| e.to_ascii_lowercase().into_boxed_str()).collect(),
            benign_exact,
            benign_prefix,
            static_weight: cfg.paths.static_weight,
        }
    }

    /// The score of a status code, −1..=1.
    #[inline]
    pub fn status_score(&self, status: u16) -> f32 {
        self.status.get(status as usize).copied().unwrap_or(0.0)
    }

    /// Page, static asset or benign, for a request: a request an app profile in force calls
    /// normal, answered as it says is normal, is benign.
    pub fn classify_request(&self, method: &str, path: &str, status: u16) -> PathClass {
        if let Some(p) = &self.profiles
            && p.statuses.contains(&status)
            && p.set.matches(path.as_bytes()).iter().any(|i| {
                let (methods, statuses) = &p.normal[i];
                statuses.contains(&status)
                    && (methods.is_empty() || methods.iter().any(|m| m.eq_ignore_ascii_case(method)))
            })
        {
            return PathClass::Benign;
        }
        self.classify(path)
    }

    /// Page, static asset or benign.
    pub fn classify(&self, path: &str) -> PathClass {
        if self.benign_exact.contains(path) || self.benign_prefix.iter().any(|p| path.starts_with(&**p)) {
            return PathClass::Benign;
        }
        let last = path.rsplit('/').next().unwrap_or(path);
        if let Some(dot) = last.rfind('.') {
            let ext = &last[dot + 1..];
            if (1..=11).contains(&ext.len()) {
                let mut buf = [0u8; 11];
                buf[..ext.len()].copy_from_slice(ext.as_bytes());
                buf[..ext.len()].make_ascii_lowercase();
                if let Ok(lower) = std::str::from_utf8(&buf[..ext.len()])
                    && self.static_ext.contains(lower)
                {
                    return PathClass::Static;
                }
            }
        }
        PathClass::Page
    }

    /// The weight of a request for this kind of path.
    #[inline]
    pub fn weight(&self, class: PathClass) -> f32 {
        match class {
            PathClass::Page => 1.0,
            PathClass::Static => self.static_weight,
            PathClass::Benign => 0.0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults() {
        let s = Scoring::new(&EngineConfig::default());
        assert_eq!(s.status_score(200), 1.0);
        assert_eq!(s.status_score(302), 0.5);
        assert_eq!(s.status_score(304), 1.0);
        assert_eq!(s.status_score(404), -1.0);
        assert_eq!(s.status_score(418), -0.5);
        assert_eq!(s.status_score(503), -0.1);
        assert_eq!(s.status_score(0), 0.0);
        assert_eq!(s.status_score(999), 0.0);
        assert_eq!(s.classify("/"), PathClass::Page);
        assert_eq!(s.classify("/wp-login.php"), PathClass::Page);
        assert_eq!(s.classify("/static/app.CSS"), PathClass::Static);
        assert_eq!(s.classify("/a.b/c"), PathClass::Page);
        assert_eq!(s.classify("/favicon.ico"), PathClass::Benign);
        assert_eq!(s.classify("/apple-touch-icon-120x120.png"), PathClass::Benign);
        assert_eq!(s.classify("/.well-known/acme-challenge/x"), PathClass::Benign);
        assert_eq!(s.classify("/.env"), PathClass::Page);
        assert_eq!(Category::of(404), Category::NotFound);
        assert_eq!(Category::of(429), Category::Rejected);
        assert_eq!(Category::of(0), Category::Unknown);
    }
}
