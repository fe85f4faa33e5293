//! Durable reading positions: where each followed file stands, written only once what was read
//! before it is safe elsewhere (for `roost tail`: acknowledged by Kafka).
//!
//! The file is JSON (`{"v":1,"files":{"/var/log/nginx/access.log":{"dev":…,"ino":…,"offset":…}},
//! "kafka":{"roost.requests":{"0":1234,…}}}`): where each file stands, and per topic and
//! partition the offset after the last record acknowledged when it was written (what a restart
//! reads back to recognise lines of the batch that was in flight). Replaced atomically: written beside, synced, renamed over, directory synced. A crash leaves
//! either the old checkpoint or the new one, never half of one.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::tail::Position;

const VERSION: u32 = 1;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub v: u32,
    pub files: BTreeMap<PathBuf, Position>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub kafka: BTreeMap<String, BTreeMap<i32, i64>>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("checkpoint {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("checkpoint {path} is not a roost checkpoint (remove it to start over): {source}")]
    Format {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("checkpoint {path} has version {found}; this roost writes version {VERSION}")]
    Version { path: PathBuf, found: u32 },
}

impl Checkpoint {
    pub fn new(files: BTreeMap<PathBuf, Position>) -> Checkpoint {
        Checkpoint { v: VERSION, files, kafka: BTreeMap::new() }
    }

    /// The checkpoint at `path`; `None` if there is none yet.
    pub fn load(path: &Path) -> Result<Option<Checkpoint>, Error> {
        let bytes = match fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(Error::Io { path: path.into(), source }),
        };
        let c: Checkpoint =
            serde_json::from_slice(&bytes).map_err(|source| Error::Format { path: path.into(), source })?;
        if c.v != VERSION {
            return Err(Error::Version { path: path.into(), found: c.v });
        }
        Ok(Some(c))
    }

    /// Replaces the checkpoint at `path` durably.
    pub fn store(&self, path: &Path) -> Result<(), Error> {
        let io = |source| Error::Io { path: path.into(), source };
        let tmp = path.with_extension("tmp");
        let mut f = File::create(&tmp).map_err(io)?;
        f.write_all(&serde_json::to_vec(self).expect("a checkpoint serializes")).map_err(io)?;
        f.sync_data().map_err(io)?;
        drop(f);
        fs::rename(&tmp, path).map_err(io)?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_garbage() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("tail.json");
        assert_eq!(Checkpoint::load(&p).unwrap(), None);
        let mut files = BTreeMap::new();
        files.insert(
            PathBuf::from("/var/log/a.log"),
            Position { dev: 1, ino: 2, offset: 3, skip_line: false, head_len: 3, head_crc: 7, alias: None },
        );
        let mut c = Checkpoint::new(files);
        c.kafka.insert("roost.requests".into(), [(0, 12), (3, 7)].into_iter().collect());
        c.store(&p).unwrap();
        assert_eq!(Checkpoint::load(&p).unwrap(), Some(c));
        fs::write(&p, "{not json").unwrap();
        assert!(matches!(Checkpoint::load(&p), Err(Error::Format { .. })));
        fs::write(&p, r#"{"v":9,"files":{}}"#).unwrap();
        assert!(matches!(Checkpoint::load(&p), Err(Error::Version { found: 9, .. })));
    }
}
