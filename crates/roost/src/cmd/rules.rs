//! `roost rules`: lint, test and list the known-bad behaviour rules (as `crate::ruleset` loads
//! them for the daemons).

use std::path::Path;

use roost_engine::{EngineConfig, Scoring};
use roost_rules::examples;

use crate::config::RulesConfig;
use crate::ruleset::compile;

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
