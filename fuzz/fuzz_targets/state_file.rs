//! State files as found on disk after anything (a crash, a bad edit): the
//! loaders answer with the state or a clear error, never a panic.
#![no_main]
use bluegreen_store::{load_json, load_router, StateStore, StoreError};
use libfuzzer_sys::fuzz_target;
use std::path::PathBuf;

struct Bytes(Vec<u8>);

impl StateStore for Bytes {
    fn get(&self, _key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(Some(self.0.clone()))
    }
    fn put(&self, _key: &str, _value: &[u8]) -> Result<(), StoreError> {
        Ok(())
    }
    fn locate(&self, key: &str) -> PathBuf {
        PathBuf::from(format!("/state/{key}.json"))
    }
}

fuzz_target!(|data: &[u8]| {
    let store = Bytes(data.to_vec());
    if let Err(e) = load_router(&store) {
        assert!(e.to_string().contains("state.json"), "{e}");
    }
    let _ = load_json::<bluegreen_core::deploy::DeployBook>(&store, "deploys");
    let _ = load_json::<serde_json::Value>(&store, "processes");
});
