//! `roost rules`: lint, test and list the known-bad behaviour rules; and loading them for the
//! daemons (built-in, or a directory that is watched for changes).

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::Context;
use roost_engine::{EngineConfig, Scoring};
use roost_rules::{Options, RuleSet, RuleSource, RulesError, examples, load};

use crate::config::RulesConfig;

/// Where rules come from: `--dir`, else `rules.dir`, else the built-in set.
pub fn sources(cfg: &RulesConfig, dir: Option<&Path>) -> anyhow::Result<(Vec<RuleSource>, String)> {
    let dir: Option<PathBuf> =
        dir.map(Path::to_path_buf).or_else(|| (!cfg.dir.is_empty()).then(|| PathBuf::from(&cfg.dir)));
    match dir {
        Some(d) => {
            let s = load::from_dir(&d).with_context(|| format!("reading rule files in {}", d.display()))?;
            anyhow::ensure!(!s.is_empty(), "{} holds no *.toml rule files", d.display());
            Ok((s, format!("rules in {}", d.display())))
        }
        None => Ok((load::embedded(), "built-in rules".to_owned())),
    }
}

pub fn options(cfg: &RulesConfig) -> Options {
    Options { disable: cfg.disable.clone(), disable_tags: cfg.disable_tags.clone() }
}

pub fn compile(cfg: &RulesConfig, dir: Option<&Path>) -> anyhow::Result<RuleSet> {
    let (src, from) = sources(cfg, dir)?;
    RuleSet::compile(&src, &options(cfg)).map_err(|e: RulesError| anyhow::anyhow!("{from} do not lint:\n{e}"))
}

pub fn lint(cfg: &RulesConfig, dir: Option<&Path>) -> anyhow::Result<String> {
    let set = compile(cfg, dir)?;
    Ok(format!("{} rules in {} files: no problems (version {})", set.rules().len(), set.files(), set.version()))
}

pub fn test(cfg: &RulesConfig, engine: &EngineConfig, dir: Option<&Path>) -> anyhow::Result<String> {
    // Disabled rules are tested too: their examples must stay true.
    let everything = RulesConfig { disable: Vec::new(), disable_tags: Vec::new(), ..cfg.clone() };
    let set = compile(&everything, dir)?;
    let (n, failures) = examples::run(&set, &Scoring::new(engine));
    if failures.is_empty() {
        return Ok(format!("{} rules, {n} examples: all pass (version {})", set.rules().len(), set.version()));
    }
    let list: Vec<String> = failures.iter().map(|f| format!("  {f}")).collect();
    anyhow::bail!("{} of {n} examples fail:\n{}", failures.len(), list.join("\n"))
}

pub fn list(cfg: &RulesConfig, dir: Option<&Path>) -> anyhow::Result<String> {
    let set = compile(cfg, dir)?;
    let mut out = String::new();
    for r in set.rules() {
        let effect = match r.effect.verdict {
            Some((c, ttl)) => format!(
                "{} +{} for {}",
                r.effect.penalty,
                if c == roost_engine::Class::Bad { "block" } else { "challenge" },
                humantime::format_duration(ttl)
            ),
            None => format!("{}", r.effect.penalty),
        };
        out.push_str(&format!(
            "{:<8} {:<9} {:<11} {:<28} {}\n",
            r.id,
            r.severity.as_str(),
            r.category,
            effect,
            r.title
        ));
    }
    Ok(out)
}

/// Watches a rule directory and hands out a new rule set when its files change.
pub struct Watcher {
    cfg: RulesConfig,
    dir: PathBuf,
    stamp: Option<SystemTime>,
}

impl Watcher {
    pub fn new(cfg: &RulesConfig) -> Option<Watcher> {
        (!cfg.dir.is_empty()).then(|| {
            let dir = PathBuf::from(&cfg.dir);
            Watcher { stamp: load::stamp(&dir), dir, cfg: cfg.clone() }
        })
    }

    /// `None` if nothing changed (and not `force`d); else the new rule set, or `Err` when the
    /// files do not lint (logged; the caller keeps the current set).
    pub fn poll(&mut self, force: bool) -> Option<Result<RuleSet, ()>> {
        let stamp = load::stamp(&self.dir);
        if !force && stamp == self.stamp {
            return None;
        }
        self.stamp = stamp;
        Some(compile(&self.cfg, Some(&self.dir)).map_err(|e| {
            tracing::error!(dir = %self.dir.display(), error = %format!("{e:#}"), "rule files changed but do not lint; keeping the current rules");
        }))
    }
}
