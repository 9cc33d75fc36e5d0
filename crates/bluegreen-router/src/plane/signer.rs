//! Signs session and preview cookies with HMAC-SHA256, with a key kept in
//! the state dir (shared by every node of a cluster) and rotated by time.

use bluegreen_core::Side;
use ring::hmac;
use std::time::{SystemTime, UNIX_EPOCH};

/// The signing keys: the current one (32 random bytes in
/// `state.dir/session.key`) signs; the previous one (`session.key.previous`)
/// still verifies, so a rotation moves nobody.
///
/// Rotated by time, never more often than [`ROTATE_AFTER`], which is longer
/// than anything we sign lives (a preview link: 7 days at most). A token
/// signed by a key while it was current therefore expires before that key
/// is dropped (one more rotation later), however many reloads or upgrades
/// come between.
pub struct Signer {
    keys: arc_swap::ArcSwap<Keys>,
    dir: Option<std::path::PathBuf>,
}

struct Keys {
    current: hmac::Key,
    previous: Option<hmac::Key>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Signer")
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The youngest a signing key may be when it is replaced: the longest a
/// preview link lives (7 days), and a day more.
pub const ROTATE_AFTER: std::time::Duration = std::time::Duration::from_secs(8 * 86_400);

impl Signer {
    /// Rotates when the current key has signed for [`ROTATE_AFTER`] (its
    /// file's age); true when it did. Blocking file I/O: off the async threads.
    pub fn rotate_if_due(&self) -> std::io::Result<bool> {
        let Some(dir) = &self.dir else {
            return Ok(false);
        };
        let age = std::fs::metadata(dir.join("session.key"))?
            .modified()?
            .elapsed()
            .unwrap_or_default();
        if age < ROTATE_AFTER {
            return Ok(false);
        }
        self.rotate()?;
        Ok(true)
    }

    /// The key of `dir` (created, 0600, on first use: blocking file I/O at
    /// start).
    pub fn load_or_create(dir: &std::path::Path) -> std::io::Result<Signer> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let path = dir.join("session.key");
        let bytes = match std::fs::read(&path) {
            Ok(b) if b.len() == 32 => b,
            Ok(_) => {
                return Err(std::io::Error::other(format!(
                    "{}: not a 32-byte key; move it aside to make a new one",
                    path.display()
                )))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut b = [0u8; 32];
                ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b)
                    .map_err(|_| std::io::Error::other("no randomness for the session key"))?;
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&path)?;
                f.write_all(&b)?;
                f.sync_all()?;
                b.to_vec()
            }
            Err(e) => return Err(e),
        };
        let previous = std::fs::read(dir.join("session.key.previous"))
            .ok()
            .filter(|b| b.len() == 32)
            .map(|b| hmac::Key::new(hmac::HMAC_SHA256, &b));
        Ok(Signer {
            keys: arc_swap::ArcSwap::from_pointee(Keys {
                current: hmac::Key::new(hmac::HMAC_SHA256, &bytes),
                previous,
            }),
            dir: Some(dir.to_path_buf()),
        })
    }

    /// A new signing key; the current one becomes the previous one, which
    /// still verifies. Written atomically (blocking file I/O: call it off
    /// the async threads).
    pub fn rotate(&self) -> std::io::Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let Some(dir) = &self.dir else {
            return Ok(());
        };
        let mut fresh = [0u8; 32];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut fresh)
            .map_err(|_| std::io::Error::other("no randomness for the session key"))?;
        let old = std::fs::read(dir.join("session.key"))?;
        let write = |name: &str, bytes: &[u8]| -> std::io::Result<()> {
            let tmp = dir.join(format!(".{name}.tmp"));
            let _ = std::fs::remove_file(&tmp);
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(bytes)?;
            f.sync_all()?;
            std::fs::rename(&tmp, dir.join(name))
        };
        write("session.key.previous", &old)?;
        write("session.key", &fresh)?;
        std::fs::File::open(dir)?.sync_all()?;
        self.keys.store(std::sync::Arc::new(Keys {
            current: hmac::Key::new(hmac::HMAC_SHA256, &fresh),
            previous: Some(hmac::Key::new(hmac::HMAC_SHA256, &old)),
        }));
        Ok(())
    }

    /// Keys shared by the nodes of a cluster (kept in the shared store).
    pub fn from_keys(current: &[u8], previous: Option<&[u8]>) -> Signer {
        let signer = Signer::ephemeral();
        signer.adopt(current, previous);
        signer
    }

    /// Another node (or the operator) changed the shared keys.
    pub fn adopt(&self, current: &[u8], previous: Option<&[u8]>) {
        self.keys.store(std::sync::Arc::new(Keys {
            current: hmac::Key::new(hmac::HMAC_SHA256, current),
            previous: previous.map(|p| hmac::Key::new(hmac::HMAC_SHA256, p)),
        }));
    }

    /// 32 random bytes for a new key.
    pub fn fresh_key() -> std::io::Result<[u8; 32]> {
        let mut b = [0u8; 32];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b)
            .map_err(|_| std::io::Error::other("no randomness for the session key"))?;
        Ok(b)
    }

    /// A key for this process only.
    pub fn ephemeral() -> Signer {
        let mut b = [0u8; 32];
        let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
        Signer {
            keys: arc_swap::ArcSwap::from_pointee(Keys {
                current: hmac::Key::new(hmac::HMAC_SHA256, &b),
                previous: None,
            }),
            dir: None,
        }
    }

    pub(crate) fn sign(&self, payload: &str) -> String {
        let tag = hmac::sign(&self.keys.load().current, payload.as_bytes());
        format!("{payload}.{}", hex(&tag.as_ref()[..16]))
    }

    /// The payload of a value the current or the previous key signed.
    fn verify<'a>(&self, value: &'a str) -> Option<&'a str> {
        let (payload, tag) = value.rsplit_once('.')?;
        let keys = self.keys.load();
        let matches = |key: &hmac::Key| {
            let expected = hmac::sign(key, payload.as_bytes());
            // Constant time: the comparison must not reveal how much matched.
            let want = hex(&expected.as_ref()[..16]);
            tag.len() == want.len()
                && tag
                    .bytes()
                    .zip(want.bytes())
                    .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                    == 0
        };
        (matches(&keys.current) || keys.previous.as_ref().is_some_and(matches)).then_some(payload)
    }

    /// A session cookie value: this side served at this generation.
    pub fn session_value(&self, side: Side, generation: u64) -> String {
        self.sign(&format!("{side}~{generation}"))
    }

    /// (side, generation) of a genuine session cookie value.
    pub fn session_of(&self, value: &str) -> Option<(Side, u64)> {
        let (side, generation) = self.verify(value)?.split_once('~')?;
        Some((side.parse().ok()?, generation.parse().ok()?))
    }

    /// True when the current key (not only the previous one) signed it.
    pub fn signed_by_current(&self, value: &str) -> bool {
        let Some((payload, _)) = value.rsplit_once('.') else {
            return false;
        };
        let tag = hmac::sign(&self.keys.load().current, payload.as_bytes());
        value == format!("{payload}.{}", hex(&tag.as_ref()[..16]))
    }

    /// A preview token for `side`, valid for `secs`.
    pub fn preview_token(&self, side: Side, secs: u64) -> String {
        self.sign(&format!("preview~{side}~{}", now_secs() + secs))
    }

    /// The side of a genuine, unexpired preview token.
    pub fn preview_of(&self, value: &str) -> Option<Side> {
        let rest = self.verify(value)?.strip_prefix("preview~")?;
        let (side, expires) = rest.split_once('~')?;
        (expires.parse::<u64>().ok()? > now_secs())
            .then(|| side.parse().ok())
            .flatten()
    }

    /// Seconds a preview token still has.
    pub fn preview_left(&self, value: &str) -> u64 {
        self.verify(value)
            .and_then(|p| p.rsplit_once('~'))
            .and_then(|(_, e)| e.parse::<u64>().ok())
            .map_or(0, |e| e.saturating_sub(now_secs()))
    }
}
