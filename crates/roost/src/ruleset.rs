//! The known-bad behaviour rules as every scoring process loads them: built in, or a directory
//! (`rules.dir`, `--rules`) that is watched for changes and reloaded on SIGHUP, with the
//! `roost_rules` and `roost_rule_reloads_total` metrics. `roost rules` (the subcommand) lints,
//! tests and lists what this loads.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use anyhow::Context;
use roost_rules::{Options, RuleSet, RuleSource, RulesError, load};

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
    Options {
        disable: cfg.disable.clone(),
        disable_tags: cfg.disable_tags.clone(),
        shadow: cfg.shadow.clone(),
        shadow_tags: cfg.shadow_tags.clone(),
    }
}

pub fn compile(cfg: &RulesConfig, dir: Option<&Path>) -> anyhow::Result<RuleSet> {
    let (src, from) = sources(cfg, dir)?;
    RuleSet::compile(&src, &options(cfg)).map_err(|e: RulesError| anyhow::anyhow!("{from} do not lint:\n{e}"))
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

/// `roost_rules` and `roost_rule_reloads_total{outcome}`, on every process that scores.
#[derive(Clone, Default)]
pub struct RuleMetrics {
    rules: prometheus_client::metrics::gauge::Gauge,
    reloads: prometheus_client::metrics::family::Family<OutcomeLabel, prometheus_client::metrics::counter::Counter>,
}

impl RuleMetrics {
    pub fn register(&self, r: &mut prometheus_client::registry::Registry) {
        r.register("roost_rules", "Known-bad rules in force", self.rules.clone());
        r.register("roost_rule_reloads", "Rule-file reloads, by outcome (ok, refused)", self.reloads.clone());
    }

    pub fn in_force(&self, set: &RuleSet) {
        self.rules.set(set.rules().len() as i64);
    }
}

/// Follows `rules.dir` (when set) every half second, and at once when `force` is raised
/// (SIGHUP): a new set that lints goes into `handle` between two requests; one that does not is
/// refused and logged, and the running set stays. A change that leaves the rules as they are
/// (a swap file, a touch) is no reload; SIGHUP always is. Returns `None` with the built-in rules.
pub fn spawn_watch(
    cfg: &RulesConfig,
    handle: roost_rules::RulesHandle,
    metrics: RuleMetrics,
    force: Arc<AtomicBool>,
    stopped: impl Fn() -> bool + Send + 'static,
) -> std::io::Result<Option<std::thread::JoinHandle<()>>> {
    let Some(mut watcher) = Watcher::new(cfg) else { return Ok(None) };
    let t = std::thread::Builder::new().name("roost-rules".into()).spawn(move || {
        // after a refusal, the next set that lints is a reload even if it is the one in force:
        // whoever watches the counters sees the files mended
        let mut refused = false;
        while !stopped() {
            let forced = force.swap(false, Ordering::Relaxed);
            match watcher.poll(forced) {
                // an editor's swap file, a touch: the same rules, nothing to put in force
                Some(Ok(set)) if !forced && !refused && set.version() == handle.load().version() => {
                    tracing::debug!(version = set.version(), "rule directory touched; rules unchanged");
                }
                Some(Ok(set)) => {
                    tracing::info!(
                        version = set.version(),
                        rules = set.rules().len(),
                        "rule files changed; new rules in force"
                    );
                    // in force before it is counted: whoever sees the count sees the set
                    metrics.in_force(&set);
                    handle.store(Arc::new(set));
                    metrics.reloads.get_or_create(&OutcomeLabel { outcome: "ok" }).inc();
                    refused = false;
                }
                Some(Err(())) => {
                    metrics.reloads.get_or_create(&OutcomeLabel { outcome: "refused" }).inc();
                    refused = true;
                }
                None => {}
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    })?;
    Ok(Some(t))
}

/// Raises `force` on every SIGHUP (a task on the caller's Tokio runtime). The handler is in place
/// when this returns: call it before announcing readiness, or an early SIGHUP ends the process.
pub fn reload_on_sighup(force: Arc<AtomicBool>) -> std::io::Result<()> {
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            tracing::info!("SIGHUP: reloading rule files");
            force.store(true, Ordering::Relaxed);
        }
    });
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    const RULE: &str = "[[rule]]\nid = \"T-1\"\ntitle = \"probe\"\nseverity = \"high\"\ncategory = \"test\"\n\
                        match.path = ['^/probe$']\nexamples.match = [\"GET /probe 404\"]\n";

    fn wait(what: &str, f: impl Fn() -> bool) {
        let t = std::time::Instant::now();
        while !f() {
            assert!(t.elapsed() < Duration::from_secs(10), "waited 10 s for {what}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    #[test]
    fn a_touch_is_no_reload_an_edit_is_and_sighup_always_is() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("site.toml"), RULE).unwrap();
        let cfg = RulesConfig { dir: dir.path().display().to_string(), ..RulesConfig::default() };
        let handle = roost_rules::handle(compile(&cfg, None).unwrap());
        let (metrics, force, stop) =
            (RuleMetrics::default(), Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
        let t = {
            let stop = stop.clone();
            spawn_watch(&cfg, handle.clone(), metrics.clone(), force.clone(), move || stop.load(Ordering::Relaxed))
        }
        .unwrap()
        .unwrap();
        let count = |outcome| metrics.reloads.get_or_create(&OutcomeLabel { outcome }).get();

        // an editor's swap file changes the directory, not the rules
        std::fs::write(dir.path().join(".site.toml.swp"), "x").unwrap();
        std::thread::sleep(Duration::from_millis(1200));
        assert_eq!(count("ok"), 0);

        let v1 = handle.load().version().to_owned();
        std::fs::write(dir.path().join("site.toml"), RULE.replace("^/probe$", "^/probe2$")).unwrap();
        wait("the edit to be put in force", || count("ok") == 1);
        assert_ne!(handle.load().version(), v1);
        assert_eq!(metrics.rules.get(), 1);

        // a broken file is refused; removing it is a reload of the same rules, so it is seen
        std::fs::write(dir.path().join("broken.toml"), "[[rule]]\nid = 3\n").unwrap();
        wait("the refusal", || count("refused") == 1);
        std::fs::remove_file(dir.path().join("broken.toml")).unwrap();
        wait("the mended set", || count("ok") == 2);

        force.store(true, Ordering::Relaxed);
        wait("the forced reload", || count("ok") == 3);
        stop.store(true, Ordering::Relaxed);
        t.join().unwrap();
    }
}
