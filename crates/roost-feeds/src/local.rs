//! Feed files on disk, loaded directly (for `roost up` and `roost replay`, no Kafka needed): a
//! snapshot per feed, as `roost feeds run --out DIR` writes them or as the operator downloads
//! them. Validation applies exactly as for fetches.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use ipnetwork::IpNetwork;
use roost_event::Timestamp;

use crate::Error;
use crate::def::FeedDef;
use crate::index::{FeedIndex, IndexedFeed};
use crate::parse::{Parsed, parse};
use crate::store::{FeedContents, Listed};
use crate::validate::{Policy, Refusal, validate};

/// One feed loaded from a file.
#[derive(Debug)]
pub struct Loaded {
    pub def: FeedDef,
    pub path: PathBuf,
    pub contents: FeedContents,
    pub parsed: Parsed,
    pub reserved: usize,
}

/// Why a file did not load.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Io(#[from] Error),
    #[error("{path}: refused: {why}")]
    Refused { path: String, why: Refusal },
}

/// Loads `path` as feed `def`: every entry listed since the file's modification time.
pub fn load_file(def: &FeedDef, path: &Path, policy: &Policy, allowlist: &[IpNetwork]) -> Result<Loaded, LoadError> {
    let body = std::fs::read(path).map_err(|e| Error::Io(path.display().to_string(), e))?;
    let mtime = std::fs::metadata(path).and_then(|m| m.modified()).ok();
    let since = mtime.map_or(Timestamp(0), system_time);
    let mut parsed = parse(def.format, def.csv.as_ref(), &body);
    let accepted = validate(&mut parsed, None, def.allow_empty, def.max_shrink, policy, allowlist)
        .map_err(|why| LoadError::Refused { path: path.display().to_string(), why })?;
    let mut contents = FeedContents::default();
    for e in &parsed.entries {
        contents.entries.insert(e.net, Listed { since, detail: e.detail.clone() });
    }
    Ok(Loaded { def: def.clone(), path: path.to_owned(), contents, parsed, reserved: accepted.reserved })
}

/// A timestamp from a system time.
pub fn system_time(t: SystemTime) -> Timestamp {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => Timestamp(d.as_millis().min(i64::MAX as u128) as i64),
        Err(_) => Timestamp(0),
    }
}

/// The index over loaded feeds.
pub fn index(loaded: &[Loaded]) -> FeedIndex {
    FeedIndex::build(loaded.iter().map(|l| {
        let mut info = IndexedFeed::from_def(&l.def);
        info.fetched_at = std::fs::metadata(&l.path).and_then(|m| m.modified()).ok().map(system_time);
        (info, &l.contents)
    }))
}
