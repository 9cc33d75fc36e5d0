//! The embedded store: one JSON file, replaced by temp file + fsync + rename.

use crate::{StateStore, StoreError};
use bluegreen_core::state::RouterState;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

const STATE_FILE: &str = "state.json";
const LOCK_FILE: &str = "lock";

/// State in a directory on local disk. Holds an exclusive lock on the
/// directory for its lifetime so two routers never share one state.
pub struct FileStore {
    dir: PathBuf,
    /// Serialises writers inside this process; the lock file excludes others.
    write: Mutex<()>,
    _lock: File,
}

impl FileStore {
    /// Opens (creating if needed) a state directory and locks it.
    pub fn open(dir: &Path) -> Result<FileStore, StoreError> {
        let io = |source| StoreError::Io {
            path: dir.to_path_buf(),
            source,
        };
        fs::create_dir_all(dir).map_err(io)?;
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
            write: Mutex::new(()),
            _lock: lock,
        })
    }

    /// Path of the state file.
    pub fn state_path(&self) -> PathBuf {
        self.dir.join(STATE_FILE)
    }
}

impl StateStore for FileStore {
    fn load(&self) -> Result<Option<RouterState>, StoreError> {
        let path = self.state_path();
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(StoreError::Io { path, source }),
        };
        let state: RouterState =
            serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt {
                path: path.clone(),
                reason: e.to_string(),
            })?;
        state
            .validate()
            .map_err(|source| StoreError::Invalid { path, source })?;
        Ok(Some(state))
    }

    fn save(&self, state: &RouterState) -> Result<(), StoreError> {
        let _guard = self.write.lock().unwrap_or_else(|p| p.into_inner());
        let path = self.state_path();
        let tmp = self.dir.join(format!(".{STATE_FILE}.tmp"));
        let io = |source| StoreError::Io {
            path: path.clone(),
            source,
        };
        let mut bytes = serde_json::to_vec_pretty(state).expect("state serialises");
        bytes.push(b'\n');
        let mut f = File::create(&tmp).map_err(io)?;
        f.write_all(&bytes).map_err(io)?;
        f.sync_all().map_err(io)?;
        drop(f);
        fs::rename(&tmp, &path).map_err(io)?;
        // The rename is durable only once the directory entry is on disk.
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io)?;
        Ok(())
    }

    fn describe(&self) -> String {
        self.state_path().display().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bluegreen_core::state::{SwitchKind, SwitchRequest};
    use bluegreen_core::Side;

    #[test]
    fn save_then_load_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::open(dir.path()).unwrap();
        assert_eq!(store.load().unwrap(), None);
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
        store.save(&s).unwrap();
        assert_eq!(store.load().unwrap(), Some(s));
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
        fs::write(store.state_path(), b"{\"format\":1,\"live\":\"bl").unwrap();
        let err = store.load().unwrap_err();
        assert!(matches!(err, StoreError::Corrupt { .. }));
        let msg = err.to_string();
        assert!(
            msg.contains("state.json") && msg.contains("corrupt"),
            "{msg}"
        );
    }
}
