//! Sidecar output capture: each sidecar's stdout and stderr, and the supervisor's own notes
//! about it, go to a size-capped, rotated file under `<data dir>/logs/` and to an in-memory
//! tail (served as `GET /system/sidecars/{name}/logs?tail=N`).
//!
//! Why it is built this way:
//! - Each line is written to the file with one `write`, under the same mutex as the tail,
//!   rather than through a writer task or a `BufWriter`: a line is small and lands in the page
//!   cache in microseconds, nothing already pushed is lost if the server dies, and the file's
//!   order is the tail's order.
//! - Rotation renames (`<name>.log` → `.log.1` → `.log.2` …) instead of truncating, so the
//!   lines before a crash survive the restart's chatter, while disk use stays below
//!   `(keep_files + 1) × max_file_bytes`.
//! - Secrets are replaced before a line reaches either sink, so neither the file nor the HTTP
//!   tail ever holds one. A secret that straddles a split of an over-long line (see
//!   [`MAX_LINE_BYTES`]) is not caught.
//! - A failing disk must not stop a sidecar: its pipes have to keep being drained or it blocks
//!   on a full pipe. After the first write error the log says so once and keeps only the tail.

use std::collections::VecDeque;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::task::JoinHandle;

/// The longest line kept whole; a longer one becomes several lines of at most this many bytes,
/// so a sidecar that never writes a newline cannot make the capture buffer grow without bound.
pub const MAX_LINE_BYTES: usize = 64 * 1024;

/// What a secret is replaced with.
pub const REDACTED: &str = "[redacted]";

/// How many secrets are remembered. The opencode password changes on every start, and a server
/// that restarts its sidecar for weeks must neither grow nor slow down with each restart; the
/// oldest goes first, since the process that knew it is gone.
const MAX_SECRETS: usize = 32;

/// Sees each line a sidecar writes until it returns true (see [`SidecarLog::attach_watching`]).
pub type LineWatch = Box<dyn FnMut(&[u8]) -> bool + Send>;

/// Size limits of one sidecar's log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogLimits {
    /// A log file is rotated before it would pass this size (default 5 MiB).
    pub max_file_bytes: u64,
    /// Rotated files kept besides the current one (default 3).
    pub keep_files: usize,
    /// Lines kept in memory for [`SidecarLog::tail`] (default 1000).
    pub tail_lines: usize,
}

impl Default for LogLimits {
    fn default() -> Self {
        LogLimits {
            max_file_bytes: 5 * 1024 * 1024,
            keep_files: 3,
            tail_lines: 1000,
        }
    }
}

/// Where a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    /// The sidecar's standard output.
    Stdout,
    /// The sidecar's standard error.
    Stderr,
    /// The supervisor, about this sidecar ("started pid 123", "exited with code 1").
    Supervisor,
}

impl Stream {
    /// The name used in the log file and in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
            Stream::Supervisor => "supervisor",
        }
    }
}

impl fmt::Display for Stream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One captured line, secrets already redacted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
#[serde(deny_unknown_fields)]
pub struct LogLine {
    /// When it was captured, in milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// Where it came from.
    pub stream: Stream,
    /// The line, without its line ending.
    pub text: String,
}

/// One sidecar's log: a rotated file and an in-memory tail. Cheap to clone (shared inside).
#[derive(Clone)]
pub struct SidecarLog {
    inner: Arc<Inner>,
}

struct Inner {
    name: String,
    path: PathBuf,
    limits: LogLimits,
    state: Mutex<State>,
}

struct State {
    /// `None` once a write failed: from then on only the tail is kept.
    file: Option<File>,
    file_bytes: u64,
    tail: VecDeque<LogLine>,
    /// Oldest first.
    secrets: Vec<String>,
}

// By hand, so that the secrets can never reach a log through `{:?}`.
impl fmt::Debug for SidecarLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SidecarLog")
            .field("name", &self.inner.name)
            .field("path", &self.inner.path)
            .field("limits", &self.inner.limits)
            .finish_non_exhaustive()
    }
}

impl SidecarLog {
    /// Creates `logs_dir` if needed and opens `<logs_dir>/<name>.log` for appending (mode 0600
    /// on unix, also when the file already existed). `name` must be a plain file name.
    pub fn open(logs_dir: &Path, name: &str, limits: LogLimits) -> io::Result<SidecarLog> {
        if name.is_empty() || name.contains(['/', '\\']) || name.starts_with('.') {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{name:?} is not a valid sidecar log name"),
            ));
        }
        create_private_dir(logs_dir).map_err(|e| with_path(e, logs_dir))?;
        let path = logs_dir.join(format!("{name}.log"));
        let file = open_log_file(&path)?;
        let file_bytes = file.metadata().map_err(|e| with_path(e, &path))?.len();
        Ok(SidecarLog {
            inner: Arc::new(Inner {
                name: name.to_owned(),
                path,
                limits,
                state: Mutex::new(State {
                    file: Some(file),
                    file_bytes,
                    tail: VecDeque::with_capacity(limits.tail_lines.min(1024)),
                    secrets: Vec::new(),
                }),
            }),
        })
    }

    /// Redacts `secret` from every line pushed from now on. The most recent 32 secrets are
    /// kept; adding one again makes it the most recent, so a secret that must never expire can
    /// be re-added at each start. An empty secret is ignored.
    pub fn add_secret(&self, secret: &str) {
        if secret.is_empty() {
            return;
        }
        let mut state = self.lock();
        state.secrets.retain(|s| s != secret);
        state.secrets.push(secret.to_owned());
        if state.secrets.len() > MAX_SECRETS {
            state.secrets.remove(0);
        }
    }

    /// Records a line from the sidecar. Invalid UTF-8 is replaced, a trailing `\r` dropped,
    /// embedded newlines start new lines and over-long lines are split (so the file keeps one
    /// record per line), secrets are redacted; then each line is appended to the file as
    /// `<RFC 3339 UTC, ms> <stream> <text>` (rotating first if the file would pass its cap) and
    /// to the tail. Never panics; a write error is reported once and capture goes on in memory.
    pub fn push(&self, stream: Stream, line: &[u8]) {
        let text = String::from_utf8_lossy(line);
        let at_ms = now_ms();
        let mut state = self.lock();
        let body = text.strip_suffix('\n').unwrap_or(&text);
        for one in body.split('\n') {
            let one = one.strip_suffix('\r').unwrap_or(one);
            let redacted = redact(one, &state.secrets);
            for piece in split_at_char_boundaries(&redacted, MAX_LINE_BYTES) {
                state.record(
                    &self.inner,
                    LogLine {
                        at_ms,
                        stream,
                        text: piece.to_owned(),
                    },
                );
            }
        }
    }

    /// Records the supervisor's own note about this sidecar.
    pub fn note(&self, text: &str) {
        self.push(Stream::Supervisor, text.as_bytes());
    }

    /// The last `n` lines, oldest first.
    pub fn tail(&self, n: usize) -> Vec<LogLine> {
        let state = self.lock();
        let skip = state.tail.len().saturating_sub(n);
        state.tail.iter().skip(skip).cloned().collect()
    }

    /// Reads `reader` (a child's stdout or stderr) until EOF or a read error, pushing each line;
    /// a last line without a newline is pushed at EOF. Must be called inside a tokio runtime.
    pub fn attach<R>(&self, stream: Stream, reader: R) -> JoinHandle<()>
    where
        R: AsyncRead + Unpin + Send + 'static,
    {
        let log = self.clone();
        tokio::spawn(async move { log.read_lines(stream, reader, None).await })
    }

    /// Like [`SidecarLog::attach`], and also shows every line, as the sidecar wrote it (before
    /// redaction and splitting), to `watch` until `watch` returns true: how the supervisor
    /// learns the address a sidecar announces on its stdout.
    pub fn attach_watching<R>(&self, stream: Stream, reader: R, watch: LineWatch) -> JoinHandle<()>
    where
        R: AsyncRead + Unpin + Send + 'static,
    {
        let log = self.clone();
        tokio::spawn(async move { log.read_lines(stream, reader, Some(watch)).await })
    }

    /// The current log file, `<logs_dir>/<name>.log`.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The sidecar's name, as given to [`SidecarLog::open`].
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    async fn read_lines<R: AsyncRead + Unpin>(
        &self,
        stream: Stream,
        reader: R,
        mut watch: Option<LineWatch>,
    ) {
        let mut reader = BufReader::with_capacity(16 * 1024, reader);
        let mut line = Vec::new();
        loop {
            let buf = match reader.fill_buf().await {
                Ok([]) => break,
                Ok(buf) => buf,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::debug!(sidecar = %self.inner.name, %stream, error = %e, "stopped reading sidecar output");
                    break;
                }
            };
            let window = &buf[..buf.len().min(MAX_LINE_BYTES - line.len())];
            if let Some(end) = window.iter().position(|&b| b == b'\n') {
                line.extend_from_slice(&window[..end]);
                reader.consume(end + 1);
                if let Some(seen) = &mut watch
                    && seen(&line)
                {
                    watch = None;
                }
                self.push(stream, &line);
                line.clear();
            } else {
                let taken = window.len();
                line.extend_from_slice(window);
                reader.consume(taken);
                if line.len() == MAX_LINE_BYTES {
                    let cut = complete_utf8_prefix(&line);
                    self.push(stream, &line[..cut]);
                    line.drain(..cut);
                }
            }
        }
        if !line.is_empty() {
            self.push(stream, &line);
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere while holding the lock leaves the state usable: at worst one line
        // is half-recorded. Capture must go on, or the sidecar blocks on a full pipe.
        self.inner
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl State {
    fn record(&mut self, inner: &Inner, line: LogLine) {
        if self.file.is_some()
            && let Err(e) = self.write_file(inner, &line)
        {
            self.file = None;
            tracing::warn!(
                sidecar = %inner.name,
                path = %inner.path.display(),
                error = %e,
                "cannot write the sidecar log file; from now on its output is kept in memory only"
            );
        }
        if inner.limits.tail_lines == 0 {
            return;
        }
        if self.tail.len() == inner.limits.tail_lines {
            self.tail.pop_front();
        }
        self.tail.push_back(line);
    }

    fn write_file(&mut self, inner: &Inner, line: &LogLine) -> io::Result<()> {
        let max = inner.limits.max_file_bytes;
        if max == 0 {
            return Ok(());
        }
        let mut record = format!("{} {} {}", rfc3339_ms(line.at_ms), line.stream, line.text);
        // Only a cap smaller than one line gets here. The cap is what was promised about the
        // disk, and the tail still holds the whole line.
        if record.len() as u64 >= max {
            let mut keep = (max - 1) as usize;
            while !record.is_char_boundary(keep) {
                keep -= 1;
            }
            record.truncate(keep);
        }
        record.push('\n');
        let len = record.len() as u64;
        if self.file_bytes > 0 && self.file_bytes + len > max {
            self.rotate(inner)?;
        }
        if let Some(file) = self.file.as_mut() {
            file.write_all(record.as_bytes())
                .map_err(|e| with_path(e, &inner.path))?;
            self.file_bytes += len;
        }
        Ok(())
    }

    fn rotate(&mut self, inner: &Inner) -> io::Result<()> {
        // Closed first so that no handle is left writing to a file that now has another name.
        self.file = None;
        let keep = inner.limits.keep_files;
        let rotated = |k: usize| {
            let mut name = inner.path.clone().into_os_string();
            name.push(format!(".{k}"));
            PathBuf::from(name)
        };
        // Also drops what an earlier run with a larger `keep_files` left beyond ours. Removing
        // before renaming because Windows will not rename onto an existing file.
        let mut k = keep.max(1);
        loop {
            match fs::remove_file(rotated(k)) {
                Ok(()) => k += 1,
                Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                Err(e) => return Err(with_path(e, &rotated(k))),
            }
        }
        for k in (1..keep).rev() {
            match fs::rename(rotated(k), rotated(k + 1)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(with_path(e, &rotated(k))),
            }
        }
        let moved = if keep > 0 {
            fs::rename(&inner.path, rotated(1))
        } else {
            fs::remove_file(&inner.path)
        };
        match moved {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(with_path(e, &inner.path)),
        }
        self.file = Some(open_log_file(&inner.path)?);
        self.file_bytes = 0;
        Ok(())
    }
}

fn open_log_file(path: &Path) -> io::Result<File> {
    let mut options = OpenOptions::new();
    options.create(true).append(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        options.mode(0o600);
        // Never through a link planted in the log's place.
        crate::trust::no_follow(&mut options);
        let file = options.open(path).map_err(|e| with_path(e, path))?;
        // `mode` only applies to a new file; one left by an older version may be readable by
        // others, and sidecar output can hold prompts and file contents.
        file.set_permissions(fs::Permissions::from_mode(0o600))
            .map_err(|e| with_path(e, path))?;
        Ok(file)
    }
    #[cfg(not(unix))]
    options.open(path).map_err(|e| with_path(e, path))
}

fn create_private_dir(dir: &Path) -> io::Result<()> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
}

/// `io::Error` names no file; this one does, like `fs-err`.
fn with_path(e: io::Error, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

fn redact(text: &str, secrets: &[String]) -> String {
    let mut out = text.to_owned();
    // Longest first, so that a secret containing another is replaced whole.
    let mut by_length: Vec<&String> = secrets.iter().collect();
    by_length.sort_by_key(|s| std::cmp::Reverse(s.len()));
    for secret in by_length {
        if out.contains(secret.as_str()) {
            out = out.replace(secret.as_str(), REDACTED);
        }
    }
    out
}

/// Pieces of at most `max` bytes (at least one character each), cut at character boundaries.
/// An empty `text` gives one empty piece, so an empty line is kept.
fn split_at_char_boundaries(text: &str, max: usize) -> impl Iterator<Item = &str> {
    let mut rest = Some(text);
    std::iter::from_fn(move || {
        let current = rest?;
        if current.len() <= max {
            rest = None;
            return Some(current);
        }
        let mut cut = max;
        while !current.is_char_boundary(cut) {
            cut -= 1;
        }
        if cut == 0 {
            cut = current
                .char_indices()
                .nth(1)
                .map_or(current.len(), |(i, _)| i);
        }
        let (piece, tail) = current.split_at(cut);
        rest = (!tail.is_empty()).then_some(tail);
        Some(piece)
    })
}

/// The length of `bytes` without a UTF-8 sequence cut short at its end, so that splitting a
/// long line there does not turn one character into two replacement characters.
fn complete_utf8_prefix(bytes: &[u8]) -> usize {
    let len = bytes.len();
    for back in 1..=3.min(len) {
        let b = bytes[len - back];
        if b & 0xC0 == 0x80 {
            continue;
        }
        let width = match b {
            0xC0..=0xDF => 2,
            0xE0..=0xEF => 3,
            0xF0..=0xF7 => 4,
            _ => 1,
        };
        return if width > back { len - back } else { len };
    }
    len
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// `2024-02-29T23:59:59.999Z`. By hand because the workspace has no date crate, and one
/// conversion does not justify adding one.
fn rfc3339_ms(unix_ms: u64) -> String {
    let secs = unix_ms / 1000;
    let (year, month, day) = civil_from_days((secs / 86_400) as i64);
    let of_day = secs % 86_400;
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        of_day / 3600,
        of_day % 3600 / 60,
        of_day % 60,
        unix_ms % 1000
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian (year, month, day): Howard Hinnant's
/// `civil_from_days` (<https://howardhinnant.github.io/date_algorithms.html>), which counts in
/// 400-year eras starting on 1 March so that leap days fall at the end of a year.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max_file_bytes: u64, keep_files: usize, tail_lines: usize) -> LogLimits {
        LogLimits {
            max_file_bytes,
            keep_files,
            tail_lines,
        }
    }

    fn texts(lines: &[LogLine]) -> Vec<&str> {
        lines.iter().map(|l| l.text.as_str()).collect()
    }

    fn block_on<F: std::future::Future>(future: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(future)
    }

    fn rotated(log: &SidecarLog, k: usize) -> PathBuf {
        PathBuf::from(format!("{}.{k}", log.path().display()))
    }

    #[test]
    fn rotation_keeps_at_most_keep_files_under_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let max = 300;
        let log = SidecarLog::open(dir.path(), "opencode", limits(max, 2, 10)).unwrap();
        for i in 0..200 {
            log.push(Stream::Stdout, format!("line {i:03}").as_bytes());
        }
        assert!(
            !rotated(&log, 3).exists(),
            "more than keep_files rotated files"
        );
        let mut kept = Vec::new();
        for path in [rotated(&log, 2), rotated(&log, 1), log.path().to_path_buf()] {
            let content = fs::read_to_string(&path).unwrap();
            assert!(
                content.len() as u64 <= max,
                "{} is {} bytes",
                path.display(),
                content.len()
            );
            assert!(!content.is_empty(), "{} is empty", path.display());
            kept.extend(
                content
                    .lines()
                    .map(|l| l.rsplit(' ').next().unwrap().to_owned()),
            );
        }
        // What the three files hold together is the newest lines, in order, with no gap.
        let first: usize = kept[0].parse().unwrap();
        let expected: Vec<String> = (first..200).map(|i| format!("{i:03}")).collect();
        assert_eq!(kept, expected);
        assert!(
            first > 150,
            "only {} of 200 lines should fit in 3 files",
            200 - first
        );
    }

    #[test]
    fn rotation_with_no_kept_files_starts_the_file_afresh() {
        let dir = tempfile::tempdir().unwrap();
        let log = SidecarLog::open(dir.path(), "router", limits(100, 0, 10)).unwrap();
        for i in 0..20 {
            log.push(Stream::Stderr, format!("line {i}").as_bytes());
        }
        let content = fs::read_to_string(log.path()).unwrap();
        assert!(content.len() <= 100);
        assert!(content.ends_with(" stderr line 19\n"), "{content:?}");
        assert!(!rotated(&log, 1).exists());
    }

    #[test]
    fn a_file_left_over_the_cap_is_rotated_on_the_first_line() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("opencode.log"), "x".repeat(500)).unwrap();
        let log = SidecarLog::open(dir.path(), "opencode", limits(200, 1, 10)).unwrap();
        log.note("started pid 1");
        assert_eq!(
            fs::read_to_string(rotated(&log, 1)).unwrap(),
            "x".repeat(500)
        );
        let content = fs::read_to_string(log.path()).unwrap();
        assert!(
            content.ends_with(" supervisor started pid 1\n"),
            "{content:?}"
        );
    }

    #[test]
    fn a_line_longer_than_the_cap_is_cut_to_fit() {
        let dir = tempfile::tempdir().unwrap();
        let log = SidecarLog::open(dir.path(), "opencode", limits(64, 1, 10)).unwrap();
        log.push(Stream::Stdout, "é".repeat(100).as_bytes());
        let content = fs::read_to_string(log.path()).unwrap();
        assert!(
            content.len() <= 64 && content.ends_with('\n'),
            "{content:?}"
        );
        assert_eq!(
            log.tail(1)[0].text,
            "é".repeat(100),
            "the tail keeps the whole line"
        );
    }

    #[test]
    fn file_lines_have_timestamp_stream_and_text() {
        let dir = tempfile::tempdir().unwrap();
        let log = SidecarLog::open(dir.path(), "opencode", LogLimits::default()).unwrap();
        log.push(Stream::Stderr, b"boom\r\n");
        let content = fs::read_to_string(log.path()).unwrap();
        let (stamp, rest) = content.split_once(' ').unwrap();
        assert_eq!(rest, "stderr boom\n");
        assert_eq!(stamp, rfc3339_ms(log.tail(1)[0].at_ms));
        assert_eq!(stamp.len(), "2024-02-29T23:59:59.999Z".len(), "{stamp}");
    }

    #[test]
    fn tail_is_oldest_first_and_capped() {
        let dir = tempfile::tempdir().unwrap();
        let log = SidecarLog::open(dir.path(), "opencode", limits(1 << 20, 1, 3)).unwrap();
        for text in ["a", "b", "c", "d", "e"] {
            log.push(Stream::Stdout, text.as_bytes());
        }
        assert_eq!(texts(&log.tail(10)), ["c", "d", "e"]);
        assert_eq!(texts(&log.tail(2)), ["d", "e"]);
        assert!(log.tail(0).is_empty());
        // The file is not the tail: it keeps everything.
        assert_eq!(fs::read_to_string(log.path()).unwrap().lines().count(), 5);
    }

    #[test]
    fn push_splits_embedded_newlines_and_keeps_streams() {
        let dir = tempfile::tempdir().unwrap();
        let log = SidecarLog::open(dir.path(), "opencode", LogLimits::default()).unwrap();
        log.push(Stream::Stdout, b"one\r\ntwo\n\nfour");
        log.note("exited with code 1");
        let tail = log.tail(10);
        assert_eq!(
            texts(&tail),
            ["one", "two", "", "four", "exited with code 1"]
        );
        assert_eq!(tail[0].stream, Stream::Stdout);
        assert_eq!(tail[4].stream, Stream::Supervisor);
        let json = serde_json::to_value(&tail[4]).unwrap();
        assert_eq!(json["stream"], "supervisor");
        assert_eq!(json["text"], "exited with code 1");
        assert!(json["atMs"].as_u64().unwrap() > 1_600_000_000_000);
    }

    #[test]
    fn secrets_are_redacted_in_file_and_tail_including_ones_added_later() {
        let dir = tempfile::tempdir().unwrap();
        let log = SidecarLog::open(dir.path(), "opencode", LogLimits::default()).unwrap();
        log.add_secret("hunter2");
        log.push(Stream::Stdout, b"password=hunter2 again hunter2");
        log.push(Stream::Stdout, b"before: s3cret-later");
        log.add_secret("s3cret-later");
        log.add_secret("");
        log.push(Stream::Stderr, b"after: s3cret-later, hunter2");
        // A secret containing another is replaced whole, not as "[redacted]-long".
        log.add_secret("hunter2-long");
        log.push(Stream::Stdout, b"hunter2-long");

        let tail = texts(&log.tail(10)).join("\n");
        let expected = "password=[redacted] again [redacted]\n\
                        before: s3cret-later\n\
                        after: [redacted], [redacted]\n\
                        [redacted]";
        assert_eq!(tail, expected);
        let file = fs::read_to_string(log.path()).unwrap();
        assert!(!file.contains("hunter2"), "{file}");
        assert_eq!(file.matches("[redacted]").count(), 5, "{file}");
        assert!(!format!("{log:?}").contains("hunter2"));
    }

    #[test]
    fn only_the_most_recent_secrets_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let log = SidecarLog::open(dir.path(), "opencode", LogLimits::default()).unwrap();
        log.add_secret("permanent");
        for i in 0..MAX_SECRETS + 5 {
            log.add_secret(&format!("password-{i:02}"));
            if i == MAX_SECRETS - 2 {
                log.add_secret("permanent");
            }
        }
        log.push(Stream::Stdout, b"password-00 permanent password-36");
        assert_eq!(log.tail(1)[0].text, "password-00 [redacted] [redacted]");
    }

    #[test]
    fn attach_reads_until_eof() {
        let dir = tempfile::tempdir().unwrap();
        let log = SidecarLog::open(dir.path(), "opencode", LogLimits::default()).unwrap();
        block_on(async {
            let (mut writer, reader) = tokio::io::duplex(8);
            let task = log.attach(Stream::Stderr, reader);
            tokio::io::AsyncWriteExt::write_all(&mut writer, b"first\nsec")
                .await
                .unwrap();
            tokio::io::AsyncWriteExt::write_all(
                &mut writer,
                b"ond\r\nbad \xff\xfe byte\nno newline",
            )
            .await
            .unwrap();
            drop(writer);
            task.await.unwrap();
        });
        let tail = log.tail(10);
        assert_eq!(
            texts(&tail),
            ["first", "second", "bad \u{fffd}\u{fffd} byte", "no newline"]
        );
        assert!(tail.iter().all(|l| l.stream == Stream::Stderr));
    }

    #[test]
    fn attach_splits_long_lines_without_breaking_characters() {
        let dir = tempfile::tempdir().unwrap();
        let log = SidecarLog::open(dir.path(), "opencode", LogLimits::default()).unwrap();
        let ascii = "a".repeat(2 * MAX_LINE_BYTES + 10);
        // One byte of offset puts every 64 KiB boundary inside a two-byte character.
        let wide = format!("x{}", "é".repeat(MAX_LINE_BYTES));
        let input = format!("{ascii}\n{wide}\nend\n");
        let reader = io::Cursor::new(input.into_bytes());
        block_on(async { log.attach(Stream::Stdout, reader).await.unwrap() });
        let tail = log.tail(10);
        let lengths: Vec<usize> = tail.iter().map(|l| l.text.len()).collect();
        assert_eq!(lengths[..3], [MAX_LINE_BYTES, MAX_LINE_BYTES, 10]);
        assert!(lengths.iter().all(|&n| n <= MAX_LINE_BYTES));
        let rejoined: String = tail[3..tail.len() - 1]
            .iter()
            .map(|l| l.text.as_str())
            .collect();
        assert_eq!(rejoined, wide, "a character was broken at a split");
        assert_eq!(tail.last().unwrap().text, "end");
    }

    #[test]
    fn push_splits_long_lines_too() {
        let dir = tempfile::tempdir().unwrap();
        let log = SidecarLog::open(dir.path(), "opencode", LogLimits::default()).unwrap();
        log.push(Stream::Stdout, "€".repeat(MAX_LINE_BYTES).as_bytes());
        let tail = log.tail(10);
        assert!(tail.len() > 1);
        assert!(tail.iter().all(|l| l.text.len() <= MAX_LINE_BYTES));
        assert_eq!(texts(&tail).concat(), "€".repeat(MAX_LINE_BYTES));
    }

    /// What `tracing` printed while `f` ran.
    fn capture_warnings(f: impl FnOnce()) -> String {
        #[derive(Clone, Default)]
        struct Captured(Arc<Mutex<Vec<u8>>>);
        impl Write for Captured {
            fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(subscriber, f);
        String::from_utf8(captured.0.lock().unwrap().clone()).unwrap()
    }

    #[test]
    fn a_write_error_is_reported_once_and_capture_goes_on_in_memory() {
        let dir = tempfile::tempdir().unwrap();
        let log = SidecarLog::open(dir.path(), "opencode", limits(100, 1, 100)).unwrap();
        // A directory where the rotated file must go makes rotation fail on every platform.
        fs::create_dir(rotated(&log, 1)).unwrap();
        let warnings = capture_warnings(|| {
            for i in 0..30 {
                log.push(Stream::Stdout, format!("line {i:02}").as_bytes());
            }
        });
        assert_eq!(
            warnings
                .matches("cannot write the sidecar log file")
                .count(),
            1,
            "{warnings}"
        );
        assert_eq!(log.tail(100).len(), 30);
        assert_eq!(log.tail(1)[0].text, "line 29");
        let content = fs::read_to_string(log.path()).unwrap();
        assert!(
            content.len() <= 100 && !content.contains("line 29"),
            "{content}"
        );
    }

    #[test]
    fn a_failed_write_is_reported_once() {
        let dir = tempfile::tempdir().unwrap();
        let log = SidecarLog::open(dir.path(), "opencode", LogLimits::default()).unwrap();
        // A read-only handle makes every write fail, on every platform.
        log.lock().file = Some(File::open(log.path()).unwrap());
        let warnings = capture_warnings(|| {
            for i in 0..5 {
                log.push(Stream::Stdout, format!("line {i}").as_bytes());
            }
        });
        assert_eq!(
            warnings
                .matches("cannot write the sidecar log file")
                .count(),
            1,
            "{warnings}"
        );
        assert_eq!(
            texts(&log.tail(10)),
            ["line 0", "line 1", "line 2", "line 3", "line 4"]
        );
    }

    #[test]
    fn rotation_drops_files_beyond_keep_files_left_by_an_earlier_run() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("opencode.log");
        fs::write(&base, "current\n".repeat(20)).unwrap();
        for k in 1..=4 {
            fs::write(format!("{}.{k}", base.display()), format!("old {k}\n")).unwrap();
        }
        let log = SidecarLog::open(dir.path(), "opencode", limits(100, 2, 10)).unwrap();
        log.note("restarted");
        assert_eq!(
            fs::read_to_string(rotated(&log, 1)).unwrap(),
            "current\n".repeat(20)
        );
        assert_eq!(fs::read_to_string(rotated(&log, 2)).unwrap(), "old 1\n");
        assert!(!rotated(&log, 3).exists() && !rotated(&log, 4).exists());
    }

    #[cfg(unix)]
    #[test]
    fn log_files_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("logs");
        fs::create_dir(&path).unwrap();
        fs::write(path.join("opencode.log"), "old\n").unwrap();
        fs::set_permissions(path.join("opencode.log"), fs::Permissions::from_mode(0o644)).unwrap();
        let log = SidecarLog::open(&path, "opencode", limits(20, 1, 10)).unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(log.path()), 0o600);
        log.push(Stream::Stdout, b"enough text to rotate the file");
        assert!(rotated(&log, 1).exists());
        assert_eq!(mode(log.path()), 0o600);
    }

    #[test]
    fn bad_names_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["", "../x", "a/b", "a\\b", ".hidden"] {
            let err = SidecarLog::open(dir.path(), name, LogLimits::default()).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{name:?}");
        }
    }

    #[test]
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_ms(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(rfc3339_ms(1_709_251_199_999), "2024-02-29T23:59:59.999Z");
        assert_eq!(rfc3339_ms(1_735_689_600_123), "2025-01-01T00:00:00.123Z");
        assert_eq!(rfc3339_ms(4_107_542_400_000), "2100-03-01T00:00:00.000Z");
    }

    #[test]
    fn utf8_cut_keeps_only_complete_characters() {
        assert_eq!(complete_utf8_prefix(b"abc"), 3);
        assert_eq!(complete_utf8_prefix("aé".as_bytes()), 3);
        assert_eq!(complete_utf8_prefix(&"aé".as_bytes()[..2]), 1);
        assert_eq!(complete_utf8_prefix(&"a€".as_bytes()[..3]), 1);
        assert_eq!(complete_utf8_prefix(&"a😀".as_bytes()[..4]), 1);
        assert_eq!(complete_utf8_prefix("a😀".as_bytes()), 5);
        assert_eq!(complete_utf8_prefix(b"a\xff"), 2);
    }
}
