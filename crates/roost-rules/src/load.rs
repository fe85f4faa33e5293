//! Where rule files come from: a directory (`*.toml`, in name order), or the rule set built into
//! the binary (this repository's `rules/`), so `roost` works without any files installed.

use std::path::Path;

use crate::compile::RuleSource;

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/embedded_rules.rs"));
}

/// The rule files built into the binary.
pub fn embedded() -> Vec<RuleSource> {
    embedded::FILES
        .iter()
        .map(|(name, text)| RuleSource { name: (*name).to_owned(), text: (*text).to_owned() })
        .collect()
}

/// Every `*.toml` in `dir`, in name order.
pub fn from_dir(dir: &Path) -> std::io::Result<Vec<RuleSource>> {
    let mut paths: Vec<_> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml") && p.is_file())
        .collect();
    paths.sort();
    paths
        .into_iter()
        .map(|p| Ok(RuleSource { name: p.display().to_string(), text: std::fs::read_to_string(&p)? }))
        .collect()
}

/// The newest modification time among the rule files, to notice edits.
pub fn stamp(dir: &Path) -> Option<std::time::SystemTime> {
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(Result::ok)
        .filter(|e| e.path().extension().is_some_and(|x| x == "toml"))
        .filter_map(|e| e.metadata().ok()?.modified().ok())
        .max()
        .into_iter()
        .chain(std::fs::metadata(dir).ok().and_then(|m| m.modified().ok()))
        .max()
}
