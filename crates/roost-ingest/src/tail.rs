//! Following access logs as web servers write and rotate them.
//!
//! A [`FileFollower`] reads one path from where it left off each time it is polled, and copes with
//! both rotation styles: rename-and-create (logrotate's default; the old file is read to its end
//! before the new one is opened) and copytruncate (the file shrinks or its first bytes change
//! under us: what we had not read yet is read from the copy, found beside it by its first bytes,
//! then the truncated file from 0). A checkpointed [`Position`] names the file by device, inode
//! and a checksum of its first bytes, so a follower resumed after a stop finds the file again
//! even if it was renamed or copied away meanwhile.
//! A [`Tail`] follows every file matching a glob, picking up files that appear later.
//! Polling rather than inotify: it works on every filesystem, and one stat per poll is cheap.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom};
#[cfg(unix)]
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Lines longer than this are cut (and counted): a log line is never this long unless
/// something is wrong, and memory stays bounded.
pub const MAX_LINE: usize = 64 * 1024;

/// Where to start reading a file that already exists when following begins.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Start {
    /// Only lines written from now on.
    End,
    /// Everything already in the file, then what follows.
    Beginning,
}

/// A file by device and inode: it keeps its identity when renamed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
pub struct FileId {
    pub dev: u64,
    pub ino: u64,
}

/// Where a line handed to a sink began: in which file, at which byte. Stable across restarts
/// (a resumed follower hands the same line with the same `LineAt`), so it identifies a line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LineAt {
    pub file: FileId,
    pub offset: u64,
}

/// Where a follower stands: in which file (device and inode, so a renamed file is still
/// recognised) and how far every line before was handed over. This is what a checkpoint keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    pub dev: u64,
    pub ino: u64,
    pub offset: u64,
    /// The bytes from `offset` on finish a line already cut at [`MAX_LINE`]: skip to its end.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub skip_line: bool,
    /// A checksum of the file's first `head_len` bytes (up to [`HEAD`]): an inode number can be
    /// reused by a new file once the old one is deleted; its first bytes tell them apart.
    #[serde(default)]
    pub head_len: u32,
    #[serde(default)]
    pub head_crc: u32,
    /// Reading the copy of a file truncated under us (copytruncate): the file its lines are
    /// reported as ([`LineAt::file`]), the original, so a line has one identity in both.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alias: Option<FileId>,
}

/// How many leading bytes identify a file's content.
pub const HEAD: usize = 1024;

/// The checksum of a file's first bytes (at most [`HEAD`]), and how many there were.
fn head_of(f: &File, upto: usize) -> io::Result<(u32, u32)> {
    use std::os::unix::fs::FileExt;
    let mut buf = [0u8; HEAD];
    let want = upto.min(HEAD);
    let mut got = 0;
    while got < want {
        let n = f.read_at(&mut buf[got..want], got as u64)?;
        if n == 0 {
            break;
        }
        got += n;
    }
    Ok((got as u32, crc32fast::hash(&buf[..got])))
}

/// Whether `f` starts with the bytes `pos` saw.
fn same_head(f: &File, pos: &Position) -> bool {
    pos.head_len == 0 || head_of(f, pos.head_len as usize).is_ok_and(|h| h == (pos.head_len, pos.head_crc))
}

impl Position {
    fn id(&self) -> FileId {
        FileId { dev: self.dev, ino: self.ino }
    }
}

fn id_of(m: &fs::Metadata) -> FileId {
    #[cfg(unix)]
    {
        FileId { dev: m.dev(), ino: m.ino() }
    }
    #[cfg(not(unix))]
    {
        let _ = m;
        FileId::default()
    }
}

/// What a poll saw, for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PollStats {
    pub lines: u64,
    pub bytes: u64,
    pub rotations: u64,
    pub truncations: u64,
    /// Lines cut at [`MAX_LINE`].
    pub cut: u64,
    /// Files that rotated away while nobody was reading and could not be found again: the rest
    /// of them was not read.
    pub lost_rotations: u64,
}

impl PollStats {
    fn add(&mut self, s: &PollStats) {
        self.lines += s.lines;
        self.bytes += s.bytes;
        self.rotations += s.rotations;
        self.truncations += s.truncations;
        self.cut += s.cut;
        self.lost_rotations += s.lost_rotations;
    }
}

/// Follows one path.
pub struct FileFollower {
    path: PathBuf,
    file: Option<(File, FileId)>,
    offset: u64,
    start: Start,
    partial: Vec<u8>,
    /// Where the line in `partial` began.
    partial_at: u64,
    cutting: bool,
    buf: Box<[u8]>,
    /// Set by [`FileFollower::resume`] when the checkpointed file could not be found; reported once.
    lost_at_start: bool,
    /// Length and checksum of the current file's first bytes (up to [`HEAD`]) as last read:
    /// if they change, the file was truncated and rewritten (copytruncate).
    head: (u32, u32),
    /// Set while reading the copy of a truncated file: its lines are reported as the original's
    /// (the same bytes at the same offsets), see [`Position::alias`].
    alias: Option<FileId>,
}

impl FileFollower {
    /// Follows `path`. `start` applies if the file exists now; files that appear later (after a
    /// rotation, say) are always read from their beginning.
    /// The file is opened (and, for [`Start::End`], its end noted) right away.
    pub fn new(path: impl Into<PathBuf>, start: Start) -> FileFollower {
        let mut f = FileFollower {
            path: path.into(),
            file: None,
            offset: 0,
            start,
            partial: Vec::new(),
            partial_at: 0,
            cutting: false,
            buf: vec![0; 64 * 1024].into(),
            lost_at_start: false,
            head: (0, 0),
            alias: None,
        };
        match f.open() {
            Ok(true) => {}
            // not there yet: when it appears, all of it is new
            Ok(false) => f.start = Start::Beginning,
            Err(e) => tracing::warn!(path = %f.path.display(), error = %e, "cannot open log yet"),
        }
        f
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The byte offset read up to in the current file.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Where this follower stands (`None` while its file does not exist). Every line before
    /// the position has been handed to a sink; a partial line at the end is not counted.
    pub fn position(&self) -> Option<Position> {
        let (f, id) = self.file.as_ref()?;
        let offset = self.offset - self.partial.len() as u64;
        let (head_len, head_crc) = if self.head.0 as u64 >= offset.min(HEAD as u64) {
            self.head
        } else {
            head_of(f, offset as usize).unwrap_or((0, 0))
        };
        Some(Position {
            dev: id.dev,
            ino: id.ino,
            offset,
            skip_line: self.cutting,
            head_len,
            head_crc,
            alias: self.alias,
        })
    }

    /// Notes the first bytes read so far (until [`HEAD`] of them are known).
    fn note_head(&mut self) {
        if let Some((f, _)) = &self.file
            && (self.head.0 as usize) < HEAD
            && self.offset > self.head.0 as u64
            && let Ok(h) = head_of(f, self.offset.min(HEAD as u64) as usize)
        {
            self.head = h;
        }
    }

    /// Whether the current file still starts with the bytes read from it.
    fn head_unchanged(&self, f: &File) -> bool {
        self.head.0 == 0 || head_of(f, self.head.0 as usize).is_ok_and(|h| h == self.head)
    }

    /// Follows `path` again from a checkpointed position. If the file at `path` is no longer the
    /// one the position names (it rotated while nobody was reading), the old file is looked for
    /// in the same directory by its inode and read to its end first; then the file now at `path`
    /// is read from its beginning.
    pub fn resume(path: impl Into<PathBuf>, pos: Position) -> FileFollower {
        let mut f = FileFollower {
            path: path.into(),
            file: None,
            offset: 0,
            start: Start::Beginning,
            partial: Vec::new(),
            partial_at: 0,
            cutting: false,
            buf: vec![0; 64 * 1024].into(),
            lost_at_start: false,
            head: (0, 0),
            alias: None,
        };
        let current = File::open(&f.path).ok().and_then(|file| {
            let m = file.metadata().ok()?;
            (id_of(&m) == pos.id() && m.len() >= pos.offset && same_head(&file, &pos)).then_some(file)
        });
        let file = match current {
            Some(file) => Some((file, pos.id())),
            None => {
                // Rotated (renamed away) or copied and truncated while nobody was reading: the
                // checkpointed bytes live on in another file of the directory.
                let found = f.path.parent().and_then(|dir| find_file(dir, &pos, None));
                match &found {
                    Some((p, _, _)) => tracing::info!(path = %f.path.display(), rotated = %p.display(),
                        "resuming a log that rotated while stopped: reading the old file to its end first"),
                    None => {
                        tracing::warn!(path = %f.path.display(), "the file being read rotated away while stopped and is gone: lines written to it after the checkpoint are lost");
                        f.lost_at_start = true;
                    }
                }
                found.map(|(_, file, id)| (file, id))
            }
        };
        if let Some((file, id)) = file {
            f.offset = pos.offset;
            f.cutting = pos.skip_line;
            f.head = (pos.head_len, pos.head_crc);
            // a copy of the checkpointed file carries on its identity; a renamed file is itself
            f.alias = if id != pos.id() { Some(pos.alias.unwrap_or(pos.id())) } else { pos.alias };
            f.file = Some((file, id));
        }
        f
    }

    fn open(&mut self) -> io::Result<bool> {
        let f = match File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e),
        };
        let m = f.metadata()?;
        let mut f = f;
        self.offset = if self.start == Start::End { f.seek(SeekFrom::End(0))? } else { 0 };
        // Whatever comes next (a rotated-in file) is new: read it whole.
        self.start = Start::Beginning;
        self.file = Some((f, id_of(&m)));
        self.head = (0, 0);
        self.alias = None;
        self.partial.clear();
        self.cutting = false;
        Ok(true)
    }

    /// Reads everything new and hands each complete line (without its newline) to `sink`.
    pub fn poll(&mut self, sink: &mut dyn FnMut(&[u8])) -> io::Result<PollStats> {
        self.poll_max(u64::MAX, sink)
    }

    /// Like [`FileFollower::poll`], but stops after reading about `max_bytes` (whole 64 KiB reads):
    /// callers that must hold what they read until it is safe elsewhere stay bounded.
    pub fn poll_max(&mut self, max_bytes: u64, sink: &mut dyn FnMut(&[u8])) -> io::Result<PollStats> {
        self.poll_lines(max_bytes, &mut |_, l| sink(l))
    }

    /// Like [`FileFollower::poll_max`], also telling where each line began.
    pub fn poll_lines(&mut self, max_bytes: u64, sink: &mut dyn FnMut(LineAt, &[u8])) -> io::Result<PollStats> {
        let mut stats = PollStats::default();
        if std::mem::take(&mut self.lost_at_start) {
            stats.lost_rotations += 1;
        }
        if self.file.is_none() && !self.open()? {
            return Ok(stats);
        }
        // copytruncate: the file is now shorter than what we read, or starts differently
        if let Some((f, id)) = &self.file {
            let id = *id;
            let len = f.metadata()?.len();
            if len < self.offset || !self.head_unchanged(f) {
                stats.truncations += 1;
                let pos = Position {
                    dev: id.dev,
                    ino: id.ino,
                    offset: self.offset,
                    skip_line: false,
                    head_len: self.head.0,
                    head_crc: self.head.1,
                    alias: None,
                };
                match self.path.parent().and_then(|dir| find_file(dir, &pos, Some(id))) {
                    Some((copy, file, copy_id)) if self.head.0 > 0 => {
                        // what was not read yet is in the copy: finish it, then the path from 0
                        tracing::info!(path = %self.path.display(), copy = %copy.display(), "log truncated; reading the rest from its copy first");
                        self.file = Some((file, copy_id));
                        self.alias = Some(self.alias.unwrap_or(id));
                    }
                    _ => {
                        tracing::info!(path = %self.path.display(), "log truncated; reading from the start");
                        self.offset = 0;
                        self.head = (0, 0);
                        self.alias = None;
                        self.partial.clear();
                        self.cutting = false;
                    }
                }
            }
        }
        let at_end = self.drain(max_bytes, sink, &mut stats)?;
        self.note_head();
        if !at_end {
            return Ok(stats); // more to read in this file: the next poll goes on
        }
        // rename-and-create: the path now names another file. The old one was just read to its
        // end; whatever it lacks a newline for is a whole line now.
        match fs::metadata(&self.path) {
            Ok(m) if Some(id_of(&m)) != self.file.as_ref().map(|(_, id)| *id) => {
                stats.rotations += 1;
                self.flush_partial(sink, &mut stats);
                let finished = self.file.take();
                // Rotated more than once since this file was read (while stopped, or while
                // Kafka held reading back): the files rotated in between come first, oldest first.
                let between = finished.as_ref().and_then(|(f, _)| self.rotated_after(f, id_of(&m)));
                let more = match between {
                    Some((p, file, id)) => {
                        tracing::info!(path = %self.path.display(), next = %p.display(), "log rotated more than once; reading the file rotated in between first");
                        self.file = Some((file, id));
                        self.offset = 0;
                        self.head = (0, 0);
                        self.alias = None;
                        true
                    }
                    None => {
                        tracing::info!(path = %self.path.display(), "log rotated; following the new file");
                        self.open()?
                    }
                };
                if more {
                    self.drain(max_bytes.saturating_sub(stats.bytes), sink, &mut stats)?;
                    self.note_head();
                }
            }
            _ => {}
        }
        Ok(stats)
    }

    /// The oldest file rotated after `finished` that is not the one at the path now (`current`):
    /// a sibling named after the path (`access.log.1`, `access.log-20261201`; compressed ones
    /// are left alone) last written no earlier than `finished` was.
    fn rotated_after(&self, finished: &File, current: FileId) -> Option<(PathBuf, File, FileId)> {
        let fm = finished.metadata().ok()?;
        let (done, since) = (id_of(&fm), fm.modified().ok()?);
        let dir = self.path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let base = self.path.file_name()?.to_str()?;
        let mut best: Option<(std::time::SystemTime, PathBuf)> = None;
        for e in fs::read_dir(dir).ok()?.flatten() {
            let name = e.file_name();
            let Some(name) = name.to_str() else { continue };
            let Some(rest) = name.strip_prefix(base) else { continue };
            if !rest.starts_with(['.', '-', '_'])
                || [".gz", ".bz2", ".xz", ".zst", ".lz4", ".Z"].iter().any(|z| rest.ends_with(z))
            {
                continue;
            }
            let Ok(m) = e.metadata() else { continue };
            let id = id_of(&m);
            let Ok(mtime) = m.modified() else { continue };
            if !m.is_file() || m.len() == 0 || id == done || id == current || id.dev != done.dev || mtime < since {
                continue;
            }
            if best.as_ref().is_none_or(|(t, p)| (mtime, e.path()) < (*t, p.clone())) {
                best = Some((mtime, e.path()));
            }
        }
        let (_, p) = best?;
        let file = File::open(&p).ok()?;
        let id = id_of(&file.metadata().ok()?);
        Some((p, file, id))
    }

    /// Reads to the end of the file, or until `max_bytes` were read; true at the end.
    fn drain(
        &mut self,
        max_bytes: u64,
        sink: &mut dyn FnMut(LineAt, &[u8]),
        stats: &mut PollStats,
    ) -> io::Result<bool> {
        let Some((f, file)) = &mut self.file else { return Ok(true) };
        let file = self.alias.unwrap_or(*file);
        f.seek(SeekFrom::Start(self.offset))?;
        let mut read = 0u64;
        loop {
            if read >= max_bytes {
                return Ok(false);
            }
            let n = f.read(&mut self.buf)?;
            if n == 0 {
                return Ok(true);
            }
            read += n as u64;
            let base = self.offset;
            self.offset += n as u64;
            stats.bytes += n as u64;
            let mut start = 0;
            let chunk = &self.buf[..n];
            while let Some(i) = chunk[start..].iter().position(|&b| b == b'\n') {
                let piece = &chunk[start..start + i];
                if self.cutting {
                    self.cutting = false;
                } else if self.partial.is_empty() {
                    sink(LineAt { file, offset: base + start as u64 }, strip_cr(piece));
                    stats.lines += 1;
                } else {
                    let room = MAX_LINE - self.partial.len();
                    self.partial.extend_from_slice(&piece[..piece.len().min(room)]);
                    sink(LineAt { file, offset: self.partial_at }, strip_cr(&self.partial));
                    stats.lines += 1;
                    self.partial.clear();
                }
                start += i + 1;
            }
            let rest = &chunk[start..];
            if !self.cutting && !rest.is_empty() {
                if self.partial.is_empty() {
                    self.partial_at = base + start as u64;
                }
                let room = MAX_LINE - self.partial.len();
                self.partial.extend_from_slice(&rest[..rest.len().min(room)]);
                if self.partial.len() >= MAX_LINE {
                    // hand over what fits, drop the rest of the line
                    sink(LineAt { file, offset: self.partial_at }, &self.partial);
                    stats.lines += 1;
                    stats.cut += 1;
                    self.partial.clear();
                    self.cutting = true;
                }
            }
        }
    }

    fn flush_partial(&mut self, sink: &mut dyn FnMut(LineAt, &[u8]), stats: &mut PollStats) {
        if !self.partial.is_empty() && !self.cutting {
            let file = self.file.as_ref().map(|(_, id)| *id).unwrap_or_default();
            sink(LineAt { file, offset: self.partial_at }, strip_cr(&self.partial));
            stats.lines += 1;
        }
        self.partial.clear();
        self.cutting = false;
    }
}

/// The file in `dir` that holds the bytes `pos` names: the same inode with the same first bytes
/// (renamed), or else another file with the same first bytes and at least `pos.offset` of them
/// (a copy). `not` is left out (the truncated original itself). Opened, with its id.
fn find_file(dir: &Path, pos: &Position, not: Option<FileId>) -> Option<(PathBuf, File, FileId)> {
    let dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
    let mut copy = None;
    for e in fs::read_dir(dir).ok()?.flatten() {
        let p = e.path();
        let Ok(m) = fs::metadata(&p) else { continue };
        let id = id_of(&m);
        if !m.is_file() || Some(id) == not || m.len() < pos.offset {
            continue;
        }
        let Ok(f) = File::open(&p) else { continue };
        if !same_head(&f, pos) {
            continue;
        }
        if id == pos.id() {
            return Some((p, f, id));
        }
        if copy.is_none() && pos.head_len > 0 {
            copy = Some((p, f, id));
        }
    }
    copy
}

fn strip_cr(b: &[u8]) -> &[u8] {
    b.strip_suffix(b"\r").unwrap_or(b)
}

/// Follows every file matching a glob (or one plain path).
pub struct Tail {
    pattern: String,
    start: Start,
    followers: BTreeMap<PathBuf, FileFollower>,
    first_scan: bool,
    /// Checkpointed positions, used by the first scan.
    resume: BTreeMap<PathBuf, Position>,
}

impl Tail {
    pub fn new(pattern: impl Into<String>, start: Start) -> Result<Tail, glob::PatternError> {
        Tail::resume(pattern, start, BTreeMap::new())
    }

    /// Follows the glob again from checkpointed positions (see [`Tail::positions`]): files with a
    /// position go on from it (even if they rotated meanwhile, see [`FileFollower::resume`]); other
    /// files that exist now start at `start`.
    pub fn resume(
        pattern: impl Into<String>,
        start: Start,
        positions: BTreeMap<PathBuf, Position>,
    ) -> Result<Tail, glob::PatternError> {
        let pattern = pattern.into();
        let compiled = glob::Pattern::new(&pattern)?;
        let resume =
            positions.into_iter().filter(|(p, _)| compiled.matches_path(p) || p == Path::new(&pattern)).collect();
        Ok(Tail { pattern, start, followers: BTreeMap::new(), first_scan: true, resume })
    }

    /// Where every followed file stands, by path.
    pub fn positions(&self) -> BTreeMap<PathBuf, Position> {
        self.followers.iter().filter_map(|(p, f)| Some((p.clone(), f.position()?))).collect()
    }

    /// Picks up files that now match the pattern.
    pub fn rescan(&mut self) {
        let start = if self.first_scan { self.start } else { Start::Beginning };
        if self.first_scan {
            // checkpointed files first, whether or not their path exists right now
            for (p, pos) in std::mem::take(&mut self.resume) {
                tracing::info!(path = %p.display(), offset = pos.offset, "resuming log");
                self.followers.insert(p.clone(), FileFollower::resume(p, pos));
            }
        }
        self.first_scan = false;
        let paths: Vec<PathBuf> = match glob::glob(&self.pattern) {
            Ok(p) => p.filter_map(Result::ok).collect(),
            Err(_) => return,
        };
        let literal = !self.pattern.contains(['*', '?', '[']);
        if literal && !self.followers.contains_key(Path::new(&self.pattern)) {
            // a plain path is followed even before it exists
            self.followers.insert(PathBuf::from(&self.pattern), FileFollower::new(&self.pattern, start));
        }
        for p in paths {
            if !self.followers.contains_key(&p) {
                tracing::info!(path = %p.display(), "following log");
                self.followers.insert(p.clone(), FileFollower::new(p, start));
            }
        }
    }

    /// Polls every file; `sink` gets each line with the path it came from.
    pub fn poll(&mut self, sink: &mut dyn FnMut(&Path, &[u8])) -> PollStats {
        self.poll_max(u64::MAX, sink)
    }

    /// Like [`Tail::poll`], reading about `max_bytes` at most from each file.
    pub fn poll_max(&mut self, max_bytes: u64, sink: &mut dyn FnMut(&Path, &[u8])) -> PollStats {
        self.poll_lines(max_bytes, &mut |p, _, l| sink(p, l))
    }

    /// Like [`Tail::poll_max`], also telling where each line began.
    pub fn poll_lines(&mut self, max_bytes: u64, sink: &mut dyn FnMut(&Path, LineAt, &[u8])) -> PollStats {
        let mut total = PollStats::default();
        for (path, f) in &mut self.followers {
            match f.poll_lines(max_bytes, &mut |at, l| sink(path, at, l)) {
                Ok(s) => total.add(&s),
                Err(e) => tracing::warn!(path = %path.display(), error = %e, "cannot read log"),
            }
        }
        total
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn lines(f: &mut FileFollower) -> Vec<String> {
        let mut out = Vec::new();
        f.poll(&mut |l| out.push(String::from_utf8_lossy(l).into_owned())).unwrap();
        out
    }

    fn append(p: &Path, s: &str) {
        fs::OpenOptions::new().create(true).append(true).open(p).unwrap().write_all(s.as_bytes()).unwrap();
    }

    #[test]
    fn follows_appends_and_partial_lines() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("access.log");
        append(&p, "old 1\nold 2\n");
        let mut f = FileFollower::new(&p, Start::End);
        assert!(lines(&mut f).is_empty());
        append(&p, "new 1\nnew ");
        assert_eq!(lines(&mut f), ["new 1"]);
        append(&p, "2\r\n");
        assert_eq!(lines(&mut f), ["new 2"]);
        let mut g = FileFollower::new(&p, Start::Beginning);
        assert_eq!(lines(&mut g), ["old 1", "old 2", "new 1", "new 2"]);
    }

    #[test]
    fn waits_for_a_file_that_does_not_exist_yet() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("later.log");
        let mut f = FileFollower::new(&p, Start::End);
        assert!(lines(&mut f).is_empty());
        append(&p, "first\n");
        assert_eq!(lines(&mut f), ["first"], "a file created after start is read from its beginning");
    }

    #[test]
    fn rename_and_create_rotation_loses_nothing() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("access.log");
        append(&p, "");
        let mut f = FileFollower::new(&p, Start::End);
        append(&p, "a\n");
        assert_eq!(lines(&mut f), ["a"]);
        // the server writes more to the old file after it was renamed, then reopens
        fs::rename(&p, d.path().join("access.log.1")).unwrap();
        append(&d.path().join("access.log.1"), "b\nc-unterminated");
        append(&p, "d\n");
        assert_eq!(lines(&mut f), ["b", "c-unterminated", "d"]);
        append(&p, "e\n");
        assert_eq!(lines(&mut f), ["e"]);
    }

    #[test]
    fn copytruncate_rotation_starts_over() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("access.log");
        append(&p, "a\nb\n");
        let mut f = FileFollower::new(&p, Start::Beginning);
        assert_eq!(lines(&mut f), ["a", "b"]);
        fs::File::create(&p).unwrap(); // truncate in place
        append(&p, "c\n");
        assert_eq!(lines(&mut f), ["c"]);
    }

    /// logrotate's copytruncate: copy the file aside, then truncate it in place.
    fn copytruncate(p: &Path, to: &Path) {
        fs::copy(p, to).unwrap();
        fs::OpenOptions::new().write(true).open(p).unwrap().set_len(0).unwrap();
    }

    #[test]
    fn copytruncate_reads_what_was_not_read_yet_from_the_copy() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("access.log");
        append(&p, "a\nb\n");
        let mut f = FileFollower::new(&p, Start::Beginning);
        assert_eq!(lines(&mut f), ["a", "b"]);
        append(&p, "c\nd\n"); // written, not read yet, when the copy is taken
        copytruncate(&p, &d.path().join("access.log.1"));
        append(&p, "e\n");
        let mut got = Vec::new();
        let st = f.poll(&mut |l| got.push(String::from_utf8_lossy(l).into_owned())).unwrap();
        assert_eq!(got, ["c", "d", "e"]);
        assert_eq!(st.truncations, 1);
    }

    #[test]
    fn a_truncated_file_that_grew_past_the_offset_is_noticed_by_its_first_bytes() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("access.log");
        append(&p, "first line of the old file\n");
        let mut f = FileFollower::new(&p, Start::Beginning);
        assert_eq!(lines(&mut f), ["first line of the old file"]);
        copytruncate(&p, &d.path().join("access.log.1"));
        // between two polls the new file grows longer than what was read of the old one
        append(&p, "new 1 ........................\nnew 2\n");
        assert_eq!(lines(&mut f), ["new 1 ........................", "new 2"]);
    }

    #[test]
    fn copytruncate_while_stopped_resumes_from_the_copy() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("access.log");
        append(&p, "a\nb\n");
        let mut f = FileFollower::new(&p, Start::Beginning);
        assert_eq!(lines(&mut f), ["a", "b"]);
        let pos = f.position().unwrap();
        drop(f);
        append(&p, "c\n");
        copytruncate(&p, &d.path().join("access.log.1"));
        append(&p, "d is longer than what was read before\n");
        let mut f = FileFollower::resume(&p, pos);
        let mut got = Vec::new();
        let st = f.poll(&mut |l| got.push(String::from_utf8_lossy(l).into_owned())).unwrap();
        assert_eq!(got, ["c", "d is longer than what was read before"]);
        assert_eq!(st.lost_rotations, 0);
    }

    /// A line has one identity whether read from the file or from its copy after a copytruncate,
    /// live or after a restart: a restarted tail recognises what it already sent.
    #[test]
    fn lines_read_from_a_copy_keep_the_originals_identity() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("access.log");
        append(&p, "a\nb\n");
        let mut f = FileFollower::new(&p, Start::Beginning);
        let mut first = Vec::new();
        f.poll_lines(u64::MAX, &mut |at, _| first.push(at)).unwrap();
        let original = first[0].file;
        let pos = f.position().unwrap();
        append(&p, "c\nd\n");
        copytruncate(&p, &d.path().join("access.log.1"));
        let mut live = Vec::new();
        f.poll_lines(u64::MAX, &mut |at, l| live.push((at, String::from_utf8_lossy(l).into_owned()))).unwrap();
        assert_eq!(live.iter().map(|(_, l)| l.as_str()).collect::<Vec<_>>(), ["c", "d"]);
        assert!(live.iter().all(|(at, _)| at.file == original), "{live:?}");
        // the same lines after a restart from the position before them
        let mut again = Vec::new();
        let mut r = FileFollower::resume(&p, pos);
        r.poll_lines(u64::MAX, &mut |at, l| again.push((at, String::from_utf8_lossy(l).into_owned()))).unwrap();
        assert_eq!(again, live);
        // and from a position taken while reading the copy (more than one read's worth in it)
        let q = d.path().join("big.log");
        append(&q, "first\n");
        let mut f = FileFollower::new(&q, Start::Beginning);
        let mut seen = Vec::new();
        f.poll_lines(u64::MAX, &mut |at, _| seen.push(at)).unwrap();
        let original = seen[0].file;
        append(&q, &"x".repeat(99).repeat(2000).replace(&"x".repeat(99), &format!("{}\n", "x".repeat(98))));
        copytruncate(&q, &d.path().join("big.log.1"));
        f.poll_lines(1, &mut |at, _| assert_eq!(at.file, original)).unwrap();
        let mid = f.position().unwrap();
        assert_eq!(mid.alias, Some(original));
        let mut rest = 0;
        FileFollower::resume(&q, mid)
            .poll_lines(u64::MAX, &mut |at, _| {
                assert_eq!(at.file, original);
                rest += 1;
            })
            .unwrap();
        assert!(rest > 0);
    }

    /// Sets a file's modification time `secs` after the epoch (file times are the chain's order).
    fn touch(p: &Path, secs: u64) {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs);
        fs::File::options().write(true).open(p).unwrap().set_modified(t).unwrap();
    }

    #[test]
    fn two_rotations_while_stopped_lose_nothing_in_between() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("access.log");
        append(&p, "g1 a\n");
        let mut f = FileFollower::new(&p, Start::Beginning);
        assert_eq!(lines(&mut f), ["g1 a"]);
        let pos = f.position().unwrap();
        drop(f);
        append(&p, "g1 b\n");
        touch(&p, 1_000);
        // logrotate twice: access.log → .1 → .2, with a generation written in between
        fs::rename(&p, d.path().join("access.log.1")).unwrap();
        append(&p, "g2 a\n");
        touch(&p, 2_000);
        fs::rename(d.path().join("access.log.1"), d.path().join("access.log.2")).unwrap();
        fs::rename(&p, d.path().join("access.log.1")).unwrap();
        append(&p, "g3 a\n");
        // an old compressed generation and an older one are left alone
        append(&d.path().join("access.log.3.gz"), "zz\n");
        append(&d.path().join("access.log.4"), "old\n");
        touch(&d.path().join("access.log.4"), 500);
        let mut f = FileFollower::resume(&p, pos);
        let mut got = Vec::new();
        for _ in 0..4 {
            f.poll(&mut |l| got.push(String::from_utf8_lossy(l).into_owned())).unwrap();
        }
        assert_eq!(got, ["g1 b", "g2 a", "g3 a"]);
    }

    #[test]
    fn lines_are_told_with_where_they_began_and_a_resume_tells_the_same() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("access.log");
        append(&p, "aa\nbbbb\ncc");
        let mut f = FileFollower::new(&p, Start::Beginning);
        let mut got = Vec::new();
        f.poll_lines(u64::MAX, &mut |at, l| got.push((at.offset, String::from_utf8_lossy(l).into_owned()))).unwrap();
        assert_eq!(got, [(0, "aa".to_owned()), (3, "bbbb".to_owned())]);
        let pos = f.position().unwrap();
        append(&p, "c\ndd\n");
        let mut first = Vec::new();
        f.poll_lines(u64::MAX, &mut |at, l| first.push((at, String::from_utf8_lossy(l).into_owned()))).unwrap();
        assert_eq!(first.iter().map(|(at, _)| at.offset).collect::<Vec<_>>(), [8, 12], "the partial line began at 8");
        let mut again = Vec::new();
        FileFollower::resume(&p, pos)
            .poll_lines(u64::MAX, &mut |at, l| again.push((at, String::from_utf8_lossy(l).into_owned())))
            .unwrap();
        assert_eq!(again, first);
    }

    #[test]
    fn overlong_lines_are_cut_not_buffered_forever() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("access.log");
        let mut f = FileFollower::new(&p, Start::Beginning);
        append(&p, &"x".repeat(MAX_LINE * 2 + 10));
        append(&p, "\nnext\n");
        let mut got = Vec::new();
        let stats = f.poll(&mut |l| got.push(l.len())).unwrap();
        assert_eq!(got, [MAX_LINE, 4]);
        assert_eq!(stats.cut, 1);
    }

    #[test]
    fn glob_picks_up_new_files() {
        let d = tempfile::tempdir().unwrap();
        append(&d.path().join("a.log"), "a1\n");
        let mut t = Tail::new(format!("{}/*.log", d.path().display()), Start::Beginning).unwrap();
        t.rescan();
        let mut got = Vec::new();
        t.poll(&mut |p, l| {
            got.push(format!("{}:{}", p.file_name().unwrap().to_string_lossy(), String::from_utf8_lossy(l)))
        });
        append(&d.path().join("b.log"), "b1\n");
        t.rescan();
        t.poll(&mut |p, l| {
            got.push(format!("{}:{}", p.file_name().unwrap().to_string_lossy(), String::from_utf8_lossy(l)))
        });
        assert_eq!(got, ["a.log:a1", "b.log:b1"]);
    }

    #[test]
    fn resumes_from_a_position_even_across_a_rotation_while_stopped() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("access.log");
        append(&p, "a\nb\npart");
        let mut f = FileFollower::new(&p, Start::Beginning);
        assert_eq!(lines(&mut f), ["a", "b"]);
        let pos = f.position().unwrap();
        assert_eq!(pos.offset, 4, "the partial line is not past the position");
        drop(f);
        // same file, more written
        append(&p, "ial\nc\n");
        let mut f = FileFollower::resume(&p, pos);
        assert_eq!(lines(&mut f), ["partial", "c"]);
        let pos = f.position().unwrap();
        drop(f);
        // rotated while stopped: the old file's rest comes first, then the new file whole
        append(&p, "d\n");
        fs::rename(&p, d.path().join("access.log.1")).unwrap();
        append(&p, "e\n");
        let mut f = FileFollower::resume(&p, pos);
        assert_eq!(lines(&mut f), ["d", "e"]);
        // copytruncate while stopped: start over (noticed when the file is now shorter)
        let pos = f.position().unwrap();
        drop(f);
        fs::File::create(&p).unwrap();
        append(&p, "f\n");
        let mut f = FileFollower::resume(&p, Position { offset: pos.offset + 1, ..pos });
        assert_eq!(lines(&mut f), ["f"]);
        // the old file is gone: counted, and the new one is read whole
        let pos = f.position().unwrap();
        drop(f);
        fs::remove_file(&p).unwrap();
        append(&p, "g\n");
        let mut f = FileFollower::resume(&p, pos);
        let mut got = Vec::new();
        let stats = f.poll(&mut |l| got.push(String::from_utf8_lossy(l).into_owned())).unwrap();
        assert_eq!(got, ["g"]);
        assert_eq!(stats.lost_rotations, 1);
    }

    #[test]
    fn bounded_polls_read_a_little_at_a_time_and_lose_nothing() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("access.log");
        let body: String = (0..50_000).map(|i| format!("line {i}\n")).collect();
        append(&p, &body);
        let mut f = FileFollower::new(&p, Start::Beginning);
        let mut got = Vec::new();
        let mut polls = 0;
        loop {
            let s = f.poll_max(64 * 1024, &mut |l| got.push(String::from_utf8_lossy(l).into_owned())).unwrap();
            polls += 1;
            if s.lines == 0 {
                break;
            }
        }
        assert!(polls > 5);
        assert_eq!(got.len(), 50_000);
        assert_eq!(got[49_999], "line 49999");
    }

    #[test]
    fn a_glob_resumes_checkpointed_files_and_starts_new_ones_per_config() {
        let d = tempfile::tempdir().unwrap();
        let pattern = format!("{}/*.log", d.path().display());
        append(&d.path().join("a.log"), "a1\n");
        let mut t = Tail::new(&pattern, Start::Beginning).unwrap();
        t.rescan();
        t.poll(&mut |_, _| {});
        let positions = t.positions();
        drop(t);
        append(&d.path().join("a.log"), "a2\n");
        append(&d.path().join("b.log"), "b-old\n");
        let mut t = Tail::resume(&pattern, Start::End, positions).unwrap();
        t.rescan();
        let mut got = Vec::new();
        t.poll(&mut |_, l| got.push(String::from_utf8_lossy(l).into_owned()));
        assert_eq!(got, ["a2"], "a.log goes on from its position; b.log existed already and starts at the end");
    }
}
