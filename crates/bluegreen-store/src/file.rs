//! The embedded store: one JSON file per key, each replaced by temp file +
//! fsync + rename + directory fsync, never written in place.

use crate::{StateStore, StoreError};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

const LOCK_FILE: &str = "lock";

/// State in a directory on local disk. Holds an exclusive lock on the
/// directory for its lifetime so two routers never share one state.
pub struct FileStore {
    dir: PathBuf,
    /// Serialises writers inside this process; the lock file excludes
    /// others. `false` once the lock was handed to a new process (a hitless
    /// upgrade): nothing may be written then.
    write: Mutex<bool>,
    lock: File,
}

impl FileStore {
    /// Opens a state directory, waiting up to `patience` for its lock (a
    /// process handing over to us releases it in a moment).
    pub fn open_waiting(
        dir: &Path,
        patience: std::time::Duration,
    ) -> Result<FileStore, StoreError> {
        let deadline = std::time::Instant::now() + patience;
        loop {
            match FileStore::open(dir) {
                Err(StoreError::Locked { .. }) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                other => return other,
            }
        }
    }

    /// Opens (creating if needed) a state directory and locks it.
    pub fn open(dir: &Path) -> Result<FileStore, StoreError> {
        let io = |source| StoreError::Io {
            path: dir.to_path_buf(),
            source,
        };
        // Private from the start: it will hold ACME keys.
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io)?;
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(LOCK_FILE))
            .map_err(io)?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                return Err(StoreError::Locked {
                    path: dir.to_path_buf(),
                })
            }
            Err(fs::TryLockError::Error(e)) => return Err(io(e)),
        }
        Ok(FileStore {
            dir: dir.to_path_buf(),
            write: Mutex::new(true),
            lock,
        })
    }

    /// The state directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl StateStore for FileStore {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let path = self.locate(key);
        match fs::read(&path) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(StoreError::Io { path, source }),
        }
    }

    fn put(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        let guard = self.write.lock().unwrap_or_else(|p| p.into_inner());
        let path = self.locate(key);
        if !*guard {
            return Err(StoreError::HandedOver { path });
        }
        let tmp = self.dir.join(format!(".{key}.json.tmp"));
        let io = |source| StoreError::Io {
            path: path.clone(),
            source,
        };
        let _ = fs::remove_file(&tmp);
        // 0600: state holds ACME account and certificate keys.
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io)?;
        f.write_all(value).map_err(io)?;
        f.sync_all().map_err(io)?;
        drop(f);
        fs::rename(&tmp, &path).map_err(io)?;
        // The rename is durable only once the directory entry is on disk.
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io)?;
        Ok(())
    }

    fn locate(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{key}.json"))
    }

    fn release(&self) -> Result<(), StoreError> {
        let mut writable = self.write.lock().unwrap_or_else(|p| p.into_inner());
        *writable = false;
        self.lock.unlock().map_err(|source| StoreError::Io {
            path: self.dir.join(LOCK_FILE),
            source,
        })
    }

    fn reacquire(&self) -> Result<(), StoreError> {
        let mut writable = self.write.lock().unwrap_or_else(|p| p.into_inner());
        match self.lock.try_lock() {
            Ok(()) => {
                *writable = true;
                Ok(())
            }
            Err(fs::TryLockError::WouldBlock) => Err(StoreError::Locked {
                path: self.dir.clone(),
            }),
            Err(fs::TryLockError::Error(source)) => Err(StoreError::Io {
                path: self.dir.join(LOCK_FILE),
                source,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{load_router, save_router, ROUTER_KEY};
    use bluegreen_core::state::{RouterState, SwitchKind, SwitchRequest};
    use bluegreen_core::Side;

    #[test]
    fn a_released_store_writes_nothing_until_it_is_reacquired() {
        let dir = tempfile::tempdir().unwrap();
        let old = FileStore::open(dir.path()).unwrap();
        old.put("k", b"1").unwrap();
        old.release().unwrap();
        assert!(matches!(
            old.put("k", b"2"),
            Err(StoreError::HandedOver { .. })
        ));
        // The next process gets the lock; while it holds it, the old cannot.
        let new = FileStore::open_waiting(dir.path(), std::time::Duration::from_secs(1)).unwrap();
        assert_eq!(new.get("k").unwrap().as_deref(), Some(&b"1"[..]));
        assert!(matches!(old.reacquire(), Err(StoreError::Locked { .. })));
        drop(new);
        old.reacquire().unwrap();
        old.put("k", b"3").unwrap();
    }

    #[test]
    fn save_then_load_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::open(dir.path()).unwrap();
        assert_eq!(load_router(&store).unwrap(), None);
        let s = RouterState::initial(Side::Blue)
            .switched(
                &SwitchRequest {
                    to: Side::Green,
                    kind: SwitchKind::Switch,
                    forced: false,
                    actor: "t".into(),
                    reason: "r".into(),
                },
                "now".into(),
                5,
            )
            .unwrap();
        save_router(&store, &s).unwrap();
        assert_eq!(load_router(&store).unwrap(), Some(s));
        assert!(dir.path().join("state.json").exists());
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(dir.path().join("state.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "state files are private");
    }

    #[test]
    fn second_open_of_same_dir_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let _first = FileStore::open(dir.path()).unwrap();
        let err = FileStore::open(dir.path()).err().expect("locked");
        assert!(matches!(err, StoreError::Locked { .. }), "{err}");
        assert!(err.to_string().contains("in use"));
    }

    #[test]
    fn corrupt_file_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::open(dir.path()).unwrap();
        fs::write(store.locate(ROUTER_KEY), b"{\"format\":1,\"live\":\"bl").unwrap();
        let err = load_router(&store).unwrap_err();
        assert!(matches!(err, StoreError::Corrupt { .. }));
        let msg = err.to_string();
        assert!(
            msg.contains("state.json") && msg.contains("corrupt"),
            "{msg}"
        );
    }
}
