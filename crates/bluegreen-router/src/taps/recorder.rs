//! Recording live traffic to a file for replay. Requests are sampled on the
//! request path with one atomic add; a bounded queue hands them to a writer
//! task, and when the queue is full the record is dropped and counted, so a
//! slow disk never slows live traffic.

use bluegreen_core::record::Recorded;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

/// Records waiting for the writer at most; more are dropped and counted.
const QUEUE: usize = 4096;

/// What a recording is asked to do.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RecordOptions {
    /// Percentage of live requests recorded (0–100).
    pub percent: f64,
    /// The recording stops by itself after writing this many bytes.
    pub max_bytes: u64,
    /// Request bodies larger than this are left out (the record says so).
    pub max_body: usize,
    /// Headers whose values are replaced by `[redacted]`.
    pub redact: Vec<String>,
}

/// A recording in progress.
pub struct Recorder {
    pub path: PathBuf,
    pub options: RecordOptions,
    tx: mpsc::Sender<Recorded>,
    seen: AtomicU64,
    written: Arc<AtomicU64>,
    bytes: Arc<AtomicU64>,
    dropped: AtomicU64,
    full: Arc<AtomicBool>,
    /// Records handed to the writer.
    accepted: AtomicU64,
    /// Records the writer has flushed to the file.
    flushed: Arc<AtomicU64>,
    /// Set when the writer stopped (file full or an I/O error).
    done: Arc<AtomicBool>,
    closing: AtomicBool,
}

/// A recording's file name: 1 to 128 of `A-Z a-z 0-9 . _ -`, not starting
/// with a dot (so no `..`, no hidden files, no path of any kind).
pub fn check_name(name: &str) -> Result<(), String> {
    let ok = (1..=128).contains(&name.len())
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a valid recording name: use 1 to 128 letters, digits, '.', '_' or '-', not starting with '.' (files go into [record] dir)"
        ))
    }
}

/// The directory (0700) and a fresh file in it (0600). `create_new` fails on
/// anything already there, a symlink or FIFO included, so opening never blocks.
async fn create_new(dir: &Path, path: &Path) -> std::io::Result<tokio::fs::File> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let (dir, path) = (dir.to_path_buf(), path.to_path_buf());
    let file = tokio::task::spawn_blocking(move || {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)?;
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
    })
    .await
    .map_err(std::io::Error::other)??;
    Ok(tokio::fs::File::from_std(file))
}

/// Progress of a recording, for the API.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RecordStatus {
    pub path: String,
    pub options: RecordOptions,
    pub written: u64,
    pub bytes: u64,
    pub dropped: u64,
    /// True once `max_bytes` was reached.
    pub full: bool,
}

impl Recorder {
    /// Creates `name` in `dir` (a new file, mode 0600: never an existing
    /// file, link or FIFO) and starts the writer.
    pub async fn start(
        dir: &Path,
        name: &str,
        options: RecordOptions,
    ) -> Result<Arc<Recorder>, String> {
        check_name(name)?;
        let path = dir.join(name);
        let file = create_new(dir, &path)
            .await
            .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
        let (tx, mut rx) = mpsc::channel::<Recorded>(QUEUE);
        let written = Arc::new(AtomicU64::new(0));
        let bytes = Arc::new(AtomicU64::new(0));
        let full = Arc::new(AtomicBool::new(false));
        let flushed = Arc::new(AtomicU64::new(0));
        let done = Arc::new(AtomicBool::new(false));
        let (w, b, f, fl, d, max) = (
            written.clone(),
            bytes.clone(),
            full.clone(),
            flushed.clone(),
            done.clone(),
            options.max_bytes,
        );
        tokio::spawn(async move {
            let mut out = tokio::io::BufWriter::new(file);
            let mut handled = 0u64;
            while let Some(r) = rx.recv().await {
                handled += 1;
                let mut line = r.to_line();
                line.push('\n');
                if b.load(Ordering::Relaxed) + line.len() as u64 > max {
                    f.store(true, Ordering::Relaxed);
                    break;
                }
                if out.write_all(line.as_bytes()).await.is_err() {
                    break;
                }
                w.fetch_add(1, Ordering::Relaxed);
                b.fetch_add(line.len() as u64, Ordering::Relaxed);
                if rx.is_empty() && out.flush().await.is_ok() {
                    fl.store(handled, Ordering::Release);
                }
            }
            let _ = out.flush().await;
            d.store(true, Ordering::Release);
        });
        Ok(Arc::new(Recorder {
            path,
            options,
            tx,
            seen: AtomicU64::new(0),
            written,
            bytes,
            dropped: AtomicU64::new(0),
            full,
            accepted: AtomicU64::new(0),
            flushed,
            done,
            closing: AtomicBool::new(false),
        }))
    }

    /// Whether this request is in the sample: every request counts, and the
    /// share taken is exact over any run of 10,000.
    pub fn sample(&self) -> bool {
        let n = self.seen.fetch_add(1, Ordering::Relaxed);
        let per_10k = (self.options.percent * 100.0).round() as u64;
        // Spread the taken ones evenly instead of taking the first k of each 10,000.
        (n * per_10k) % 10_000 < per_10k
    }

    /// Hands a record to the writer, or drops and counts it.
    pub fn submit(&self, r: Recorded) {
        if self.closing.load(Ordering::Relaxed) || self.full.load(Ordering::Relaxed) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        } else if self.tx.try_send(r).is_ok() {
            self.accepted.fetch_add(1, Ordering::Release);
        } else {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Progress so far.
    pub fn status(&self) -> RecordStatus {
        RecordStatus {
            path: self.path.display().to_string(),
            options: self.options.clone(),
            written: self.written.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            full: self.full.load(Ordering::Relaxed),
        }
    }

    /// Stops taking records and waits (up to 5 s) until every record taken
    /// is flushed to the file.
    pub async fn finish(&self) {
        self.closing.store(true, Ordering::Relaxed);
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        while self.flushed.load(Ordering::Acquire) < self.accepted.load(Ordering::Acquire)
            && !self.done.load(Ordering::Acquire)
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> RecordOptions {
        RecordOptions {
            percent: 25.0,
            max_bytes: 1 << 20,
            max_body: 1024,
            redact: vec![],
        }
    }

    #[tokio::test]
    async fn sampling_takes_the_asked_share() {
        let dir = tempfile::tempdir().unwrap();
        let r = Recorder::start(dir.path(), "a.jsonl", options())
            .await
            .unwrap();
        let taken = (0..1000).filter(|_| r.sample()).count();
        assert_eq!(taken, 250);
    }

    #[tokio::test]
    async fn recordings_are_new_private_files_with_plain_names_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let records = dir.path().join("records");
        for bad in [
            "",
            "../x",
            "a/b",
            ".hidden",
            "..",
            "a\0b",
            "a b",
            &"x".repeat(129),
        ] {
            let e = Recorder::start(&records, bad, options()).await.err();
            assert!(
                e.is_some_and(|e| e.contains("not a valid recording name")),
                "{bad:?}"
            );
        }
        let r = Recorder::start(&records, "t.jsonl", options())
            .await
            .unwrap();
        let mode = std::fs::metadata(&r.path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let dmode = std::fs::metadata(&records).unwrap().permissions().mode();
        assert_eq!(dmode & 0o777, 0o700);
        // Never appended to, and never anything that is already there.
        let again = Recorder::start(&records, "t.jsonl", options())
            .await
            .err()
            .unwrap();
        assert!(again.contains("File exists"), "{again}");
        std::os::unix::fs::symlink("/etc/passwd", records.join("link")).unwrap();
        assert!(Recorder::start(&records, "link", options()).await.is_err());
        let fifo = records.join("fifo");
        assert!(std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success());
        let started = std::time::Instant::now();
        assert!(Recorder::start(&records, "fifo", options()).await.is_err());
        assert!(
            started.elapsed() < std::time::Duration::from_secs(1),
            "a FIFO never blocks"
        );
    }
}
