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
    /// Opens (appending to) `path` and starts the writer.
    pub async fn start(path: &Path, options: RecordOptions) -> std::io::Result<Arc<Recorder>> {
        let file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .await?;
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
            path: path.to_path_buf(),
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

    #[tokio::test]
    async fn sampling_takes_the_asked_share() {
        let dir = std::env::temp_dir().join(format!("bg-rec-{}", std::process::id()));
        let r = Recorder::start(
            &dir,
            RecordOptions {
                percent: 25.0,
                max_bytes: 1 << 20,
                max_body: 1024,
                redact: vec![],
            },
        )
        .await
        .unwrap();
        let taken = (0..1000).filter(|_| r.sample()).count();
        assert_eq!(taken, 250);
        let _ = std::fs::remove_file(dir);
    }
}
