//! Following access logs as web servers write and rotate them.
//!
//! A [`Follower`] reads one path from where it left off each time it is polled, and copes with
//! both rotation styles: rename-and-create (logrotate's default; the old file is read to its end
//! before the new one is opened) and copytruncate (the file shrinks under us: start over at 0).
//! A [`Tail`] follows every file matching a glob, picking up files that appear later.
//! Polling rather than inotify: it works on every filesystem, and one stat per poll is cheap.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom};
#[cfg(unix)]
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

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

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
struct FileId {
    dev: u64,
    ino: u64,
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
}

/// Follows one path.
pub struct Follower {
    path: PathBuf,
    file: Option<(File, FileId)>,
    offset: u64,
    start: Start,
    partial: Vec<u8>,
    cutting: bool,
    buf: Box<[u8]>,
}

impl Follower {
    /// Follows `path`. `start` applies if the file exists now; files that appear later (after a
    /// rotation, say) are always read from their beginning.
    /// The file is opened (and, for [`Start::End`], its end noted) right away.
    pub fn new(path: impl Into<PathBuf>, start: Start) -> Follower {
        let mut f = Follower {
            path: path.into(),
            file: None,
            offset: 0,
            start,
            partial: Vec::new(),
            cutting: false,
            buf: vec![0; 64 * 1024].into(),
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
        self.partial.clear();
        self.cutting = false;
        Ok(true)
    }

    /// Reads everything new and hands each complete line (without its newline) to `sink`.
    pub fn poll(&mut self, sink: &mut dyn FnMut(&[u8])) -> io::Result<PollStats> {
        let mut stats = PollStats::default();
        if self.file.is_none() && !self.open()? {
            return Ok(stats);
        }
        // copytruncate: the file is now shorter than what we read
        if let Some((f, _)) = &self.file
            && f.metadata()?.len() < self.offset
        {
            tracing::info!(path = %self.path.display(), "log truncated; reading from the start");
            stats.truncations += 1;
            self.offset = 0;
            self.partial.clear();
            self.cutting = false;
        }
        self.drain(sink, &mut stats)?;
        // rename-and-create: the path now names another file. The old one was just read to its
        // end; whatever it lacks a newline for is a whole line now.
        match fs::metadata(&self.path) {
            Ok(m) if Some(id_of(&m)) != self.file.as_ref().map(|(_, id)| *id) => {
                tracing::info!(path = %self.path.display(), "log rotated; following the new file");
                stats.rotations += 1;
                self.flush_partial(sink, &mut stats);
                self.file = None;
                if self.open()? {
                    self.drain(sink, &mut stats)?;
                }
            }
            _ => {}
        }
        Ok(stats)
    }

    fn drain(&mut self, sink: &mut dyn FnMut(&[u8]), stats: &mut PollStats) -> io::Result<()> {
        let Some((f, _)) = &mut self.file else { return Ok(()) };
        f.seek(SeekFrom::Start(self.offset))?;
        loop {
            let n = f.read(&mut self.buf)?;
            if n == 0 {
                return Ok(());
            }
            self.offset += n as u64;
            stats.bytes += n as u64;
            let mut chunk = &self.buf[..n];
            while let Some(i) = chunk.iter().position(|&b| b == b'\n') {
                let piece = &chunk[..i];
                if self.cutting {
                    self.cutting = false;
                } else if self.partial.is_empty() {
                    sink(strip_cr(piece));
                    stats.lines += 1;
                } else {
                    let room = MAX_LINE - self.partial.len();
                    self.partial.extend_from_slice(&piece[..piece.len().min(room)]);
                    sink(strip_cr(&self.partial));
                    stats.lines += 1;
                    self.partial.clear();
                }
                chunk = &chunk[i + 1..];
            }
            if !self.cutting && !chunk.is_empty() {
                let room = MAX_LINE - self.partial.len();
                self.partial.extend_from_slice(&chunk[..chunk.len().min(room)]);
                if self.partial.len() >= MAX_LINE {
                    // hand over what fits, drop the rest of the line
                    sink(&self.partial);
                    stats.lines += 1;
                    stats.cut += 1;
                    self.partial.clear();
                    self.cutting = true;
                }
            }
        }
    }

    fn flush_partial(&mut self, sink: &mut dyn FnMut(&[u8]), stats: &mut PollStats) {
        if !self.partial.is_empty() && !self.cutting {
            sink(strip_cr(&self.partial));
            stats.lines += 1;
        }
        self.partial.clear();
        self.cutting = false;
    }
}

fn strip_cr(b: &[u8]) -> &[u8] {
    b.strip_suffix(b"\r").unwrap_or(b)
}

/// Follows every file matching a glob (or one plain path).
pub struct Tail {
    pattern: String,
    start: Start,
    followers: BTreeMap<PathBuf, Follower>,
    first_scan: bool,
}

impl Tail {
    pub fn new(pattern: impl Into<String>, start: Start) -> Result<Tail, glob::PatternError> {
        let pattern = pattern.into();
        glob::Pattern::new(&pattern)?;
        Ok(Tail { pattern, start, followers: BTreeMap::new(), first_scan: true })
    }

    /// Picks up files that now match the pattern.
    pub fn rescan(&mut self) {
        let start = if self.first_scan { self.start } else { Start::Beginning };
        self.first_scan = false;
        let paths: Vec<PathBuf> = match glob::glob(&self.pattern) {
            Ok(p) => p.filter_map(Result::ok).collect(),
            Err(_) => return,
        };
        let literal = !self.pattern.contains(['*', '?', '[']);
        if literal && !self.followers.contains_key(Path::new(&self.pattern)) {
            // a plain path is followed even before it exists
            self.followers.insert(PathBuf::from(&self.pattern), Follower::new(&self.pattern, start));
        }
        for p in paths {
            if !self.followers.contains_key(&p) {
                tracing::info!(path = %p.display(), "following log");
                self.followers.insert(p.clone(), Follower::new(p, start));
            }
        }
    }

    /// Polls every file; `sink` gets each line with the path it came from.
    pub fn poll(&mut self, sink: &mut dyn FnMut(&Path, &[u8])) -> PollStats {
        let mut total = PollStats::default();
        for (path, f) in &mut self.followers {
            match f.poll(&mut |l| sink(path, l)) {
                Ok(s) => {
                    total.lines += s.lines;
                    total.bytes += s.bytes;
                    total.rotations += s.rotations;
                    total.truncations += s.truncations;
                    total.cut += s.cut;
                }
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

    fn lines(f: &mut Follower) -> Vec<String> {
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
        let mut f = Follower::new(&p, Start::End);
        assert!(lines(&mut f).is_empty());
        append(&p, "new 1\nnew ");
        assert_eq!(lines(&mut f), ["new 1"]);
        append(&p, "2\r\n");
        assert_eq!(lines(&mut f), ["new 2"]);
        let mut g = Follower::new(&p, Start::Beginning);
        assert_eq!(lines(&mut g), ["old 1", "old 2", "new 1", "new 2"]);
    }

    #[test]
    fn waits_for_a_file_that_does_not_exist_yet() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("later.log");
        let mut f = Follower::new(&p, Start::End);
        assert!(lines(&mut f).is_empty());
        append(&p, "first\n");
        assert_eq!(lines(&mut f), ["first"], "a file created after start is read from its beginning");
    }

    #[test]
    fn rename_and_create_rotation_loses_nothing() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("access.log");
        append(&p, "");
        let mut f = Follower::new(&p, Start::End);
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
        let mut f = Follower::new(&p, Start::Beginning);
        assert_eq!(lines(&mut f), ["a", "b"]);
        fs::File::create(&p).unwrap(); // truncate in place
        append(&p, "c\n");
        assert_eq!(lines(&mut f), ["c"]);
    }

    #[test]
    fn overlong_lines_are_cut_not_buffered_forever() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("access.log");
        let mut f = Follower::new(&p, Start::Beginning);
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
}
