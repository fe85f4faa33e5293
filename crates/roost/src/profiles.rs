//! Legitimate-app profiles (`profiles/*.toml`, built in): request patterns that are normal for
//! common self-hosted apps, whose 401/403/404 answers say nothing about the client. Enabled by
//! name in `[engine] profiles`; the engine gets the definitions with its configuration.

use anyhow::Context;
use roost_engine::AppProfile;

const EMBEDDED: &[(&str, &str)] = &[
    ("gitlab.toml", include_str!("../../../profiles/gitlab.toml")),
    ("grafana.toml", include_str!("../../../profiles/grafana.toml")),
    ("homeassistant.toml", include_str!("../../../profiles/homeassistant.toml")),
    ("jellyfin.toml", include_str!("../../../profiles/jellyfin.toml")),
    ("nextcloud.toml", include_str!("../../../profiles/nextcloud.toml")),
    ("wordpress-admin.toml", include_str!("../../../profiles/wordpress-admin.toml")),
];

/// Every built-in profile, in name order.
pub fn built_in() -> anyhow::Result<Vec<AppProfile>> {
    let mut out = Vec::new();
    for (file, text) in EMBEDDED {
        let p: AppProfile = toml::from_str(text).with_context(|| format!("profiles/{file}"))?;
        anyhow::ensure!(
            format!("{}.toml", p.name) == *file,
            "profiles/{file}: the name {:?} is not the file's",
            p.name
        );
        out.push(p);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use roost_engine::{EngineConfig, PathClass, Scoring};

    /// Every profile's examples are normal with it on and pages without it; its counter-examples
    /// stay pages either way.
    #[test]
    fn built_in_profiles_do_what_their_examples_say() {
        let defs = super::built_in().unwrap();
        assert_eq!(defs.len(), super::EMBEDDED.len());
        let off = Scoring::new(&EngineConfig::default());
        for def in &defs {
            let cfg = EngineConfig {
                profiles: vec![def.name.clone()],
                profile_defs: defs.clone(),
                ..EngineConfig::default()
            };
            cfg.validate().unwrap();
            let on = Scoring::new(&cfg);
            let class = |s: &Scoring, line: &str| {
                let mut it = line.split(' ');
                let (m, target, status) = (it.next().unwrap(), it.next().unwrap(), it.next().unwrap());
                let path = target.split('?').next().unwrap();
                s.classify_request(m, path, status.parse().unwrap())
            };
            let mut n = 0;
            for normal in &def.normal {
                for ex in &normal.examples {
                    assert_eq!(class(&on, ex), PathClass::Benign, "{}: {ex}", def.name);
                    assert_ne!(class(&off, ex), PathClass::Benign, "{}: {ex} needs no profile", def.name);
                    n += 1;
                }
                for ex in &normal.not_examples {
                    assert_ne!(class(&on, ex), PathClass::Benign, "{}: {ex} must stay evidence", def.name);
                }
            }
            assert!(n >= 2, "{} has examples", def.name);
        }
    }
}
