//! The session key every node of a cluster signs with, kept in the shared
//! store (created once, by whichever node starts first).

use super::*;

/// Key of the shared session-cookie keys, relative to the prefix.
pub(crate) const SESSION_KEYS: &str = "session.keys";

/// The session keys every node signs and verifies with.
#[derive(Serialize, Deserialize)]
pub(crate) struct SessionKeys {
    /// Hex, 32 bytes.
    current: String,
    previous: Option<String>,
}

pub(crate) fn unhex(s: &str) -> Option<Vec<u8>> {
    (s.len() == 64)
        .then(|| {
            (0..32)
                .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok())
                .collect()
        })
        .flatten()
}

pub(crate) fn hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}

impl SessionKeys {
    pub(crate) fn parse(bytes: &[u8]) -> Option<(Vec<u8>, Option<Vec<u8>>)> {
        let k: SessionKeys = serde_json::from_slice(bytes).ok()?;
        Some((unhex(&k.current)?, k.previous.as_deref().and_then(unhex)))
    }
}

/// The cluster's session keys: read from the shared store, or made by the
/// first node that finds none (a race with another first node is lost
/// gracefully: its keys are read instead). Blocking: called at start.
pub(crate) fn shared_signer(
    store: &dyn bluegreen_store::StateStore,
) -> Result<crate::plane::signer::Signer, crate::control::RouterError> {
    use crate::plane::signer::Signer;
    for _ in 0..3 {
        if let Some(bytes) = store.get(SESSION_KEYS)? {
            let (current, previous) =
                SessionKeys::parse(&bytes).ok_or_else(|| bluegreen_store::StoreError::Corrupt {
                    path: store.locate(SESSION_KEYS),
                    reason: "not {\"current\": \"<64 hex digits>\", \"previous\": ...}".into(),
                })?;
            return Ok(Signer::from_keys(&current, previous.as_deref()));
        }
        let fresh =
            Signer::fresh_key().map_err(|e| crate::control::RouterError::Config(e.to_string()))?;
        let doc = serde_json::to_vec(&SessionKeys {
            current: hex(&fresh),
            previous: None,
        })
        .expect("keys serialise");
        match store.put(SESSION_KEYS, &doc) {
            Ok(()) => return Ok(Signer::from_keys(&fresh, None)),
            Err(bluegreen_store::StoreError::Conflict { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(crate::control::RouterError::Config(
        "could not agree on the shared session keys with the other nodes".into(),
    ))
}
