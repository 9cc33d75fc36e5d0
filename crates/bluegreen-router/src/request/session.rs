//! Sessions across a switch (`[sessions]`) and preview links: our own
//! cookies, signed with HMAC-SHA256 (a key in the state dir), name the
//! side that served a client. After a switch, a client whose cookie names
//! the old side stays there while the window lasts and that side has a
//! healthy upstream; new clients go to the new side. After a rollback no
//! one is pinned to the rejected side. A preview cookie (from a link made
//! by `bluegreen preview-link`) sends one browser to the idle side.

use bluegreen_core::Side;
use http::header::{self, HeaderMap, HeaderValue};
use ring::hmac;
use std::time::{SystemTime, UNIX_EPOCH};

/// The path a preview link points at on the live listener.
pub const PREVIEW_PATH: &str = "/.bluegreen/preview";

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

    fn sign(&self, payload: &str) -> String {
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

/// The value of cookie `name` in a request, if sent.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|kv| {
            let (k, v) = kv.trim().split_once('=')?;
            (k == name).then_some(v)
        })
}

/// `Set-Cookie` for one of our cookies.
pub fn set_cookie(name: &str, value: &str, max_age: u64, secure: bool) -> Option<HeaderValue> {
    let secure = if secure { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{name}={value}; Path=/; Max-Age={max_age}; HttpOnly; SameSite=Lax{secure}"
    ))
    .ok()
}

/// Where a live request goes with sessions on, and the cookie to set:
/// a genuine preview cookie for a side that is idle sends it there; a
/// genuine session cookie naming the pinned (old) side from before the
/// switch keeps it there while the pin lasts and that side has a healthy
/// upstream (and, with `app_cookie`, only when the app's cookie is sent).
pub fn route(
    router: &crate::control::Router,
    snap: &crate::snapshot::Snapshot,
    policy: &crate::snapshot::SessionPolicy,
    headers: &HeaderMap,
    chosen: Side,
    secure: bool,
) -> (Side, Option<HeaderValue>) {
    let signer = &router.signer;
    if let Some(side) = cookie(headers, &policy.preview_cookie).and_then(|v| signer.preview_of(v)) {
        if side != snap.live {
            return (side, None);
        }
    }
    let raw = cookie(headers, &policy.cookie);
    let ours = raw.and_then(|v| signer.session_of(v));
    // Signed by the previous key (before a rotation): given again, same
    // content, new key, so the next rotation does not drop it.
    let stale_key = raw.is_some_and(|v| ours.is_some() && !signer.signed_by_current(v));
    if let (Some(pin), Some((side, generation))) = (snap.pin, ours) {
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let app_session = policy
            .app_cookie
            .as_deref()
            .is_none_or(|name| cookie(headers, name).is_some());
        if side == pin.side
            && generation < pin.generation
            && now_ms < pin.until_ms
            && app_session
            && snap.pools[side].healthy_count() > 0
        {
            router.pinned[side as usize].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let again = stale_key
                .then(|| {
                    set_cookie(
                        &policy.cookie,
                        &signer.session_value(side, generation),
                        policy.window.as_secs().max(60) * 4,
                        secure,
                    )
                })
                .flatten();
            return (side, again);
        }
    }
    // The cookie says who served this client last; set when it says
    // otherwise (absent, forged, another side or generation).
    let current = (chosen, snap.generation);
    let set = (ours != Some(current) || stale_key)
        .then(|| {
            set_cookie(
                &policy.cookie,
                &signer.session_value(chosen, snap.generation),
                policy.window.as_secs().max(60) * 4,
                secure,
            )
        })
        .flatten();
    (chosen, set)
}

/// `GET /.bluegreen/preview?t=TOKEN`: a genuine token sets the preview
/// cookie and sends the browser to `/`; anything else is a 404 that says
/// why (the app never sees this path).
pub fn preview_landing<B>(
    router: &crate::control::Router,
    req: &http::Request<B>,
    secure: bool,
) -> http::Response<super::body::ResponseBody> {
    use super::body::ResponseBody;
    use http::StatusCode;
    let token = req
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .find_map(|kv| kv.strip_prefix("t="))
        .unwrap_or("");
    let snap = router.snapshot.load();
    let name = snap
        .sessions
        .as_ref()
        .map(|p| p.preview_cookie.clone())
        .unwrap_or_else(|| "bluegreen_preview".into());
    match router.signer.preview_of(token) {
        Some(side) => {
            let left = router.signer.preview_left(token);
            let mut resp = ResponseBody::plain(
                StatusCode::SEE_OTHER,
                format!("previewing {side} for {left} s\n"),
            );
            resp.headers_mut()
                .insert(header::LOCATION, HeaderValue::from_static("/"));
            if let Some(c) = set_cookie(&name, token, left, secure) {
                resp.headers_mut().append(header::SET_COOKIE, c);
            }
            resp
        }
        None => ResponseBody::plain(
            StatusCode::NOT_FOUND,
            "404: this preview link is not valid here or has expired\n".into(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_values_round_trip_and_forgeries_do_not() {
        let dir = tempfile::tempdir().unwrap();
        let s = Signer::load_or_create(dir.path()).unwrap();
        let v = s.session_value(Side::Blue, 7);
        assert_eq!(s.session_of(&v), Some((Side::Blue, 7)));
        let forged = v.replacen("blue", "green", 1);
        assert_eq!(s.session_of(&forged), None);
        assert_eq!(s.session_of("blue~7.00"), None);
        // The key is kept: the same dir signs the same.
        let again = Signer::load_or_create(dir.path()).unwrap();
        assert_eq!(again.session_of(&v), Some((Side::Blue, 7)));
        let other = Signer::load_or_create(tempfile::tempdir().unwrap().path()).unwrap();
        assert_eq!(other.session_of(&v), None);
        // A rotation keeps the previous key for verifying; two rotations
        // retire it. A restart after a rotation still knows both.
        s.rotate().unwrap();
        assert_eq!(s.session_of(&v), Some((Side::Blue, 7)));
        let after = s.session_value(Side::Green, 8);
        assert_ne!(
            after.rsplit_once('.').unwrap().1,
            v.rsplit_once('.').unwrap().1
        );
        let restarted = Signer::load_or_create(dir.path()).unwrap();
        assert_eq!(restarted.session_of(&v), Some((Side::Blue, 7)));
        assert_eq!(restarted.session_of(&after), Some((Side::Green, 8)));
        s.rotate().unwrap();
        assert_eq!(s.session_of(&v), None);
        assert_eq!(s.session_of(&after), Some((Side::Green, 8)));
        let t = s.preview_token(Side::Green, 60);
        assert_eq!(s.preview_of(&t), Some(Side::Green));
        assert!(s.preview_left(&t) <= 60);
        let expired = s.sign("preview~green~1");
        assert_eq!(s.preview_of(&expired), None);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("session.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    /// A key is replaced only once it is old: every reload asks, and a young
    /// key (whatever it signed) stays.
    #[test]
    fn only_an_old_key_is_rotated() {
        let dir = tempfile::tempdir().unwrap();
        let s = Signer::load_or_create(dir.path()).unwrap();
        let link = s.preview_token(Side::Green, 7 * 86_400);
        for _ in 0..5 {
            assert!(!s.rotate_if_due().unwrap(), "a young key stays");
        }
        assert_eq!(s.preview_of(&link), Some(Side::Green));
        let old = std::time::SystemTime::now() - ROTATE_AFTER - std::time::Duration::from_secs(60);
        std::fs::File::options()
            .write(true)
            .open(dir.path().join("session.key"))
            .unwrap()
            .set_modified(old)
            .unwrap();
        assert!(s.rotate_if_due().unwrap());
        assert!(!s.rotate_if_due().unwrap(), "the new key is young");
        assert_eq!(
            s.preview_of(&link),
            Some(Side::Green),
            "the previous key verifies"
        );
    }

    #[test]
    fn cookies_are_found_among_others() {
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, "a=1; bluegreen=x.y".parse().unwrap());
        h.append(header::COOKIE, "session_id=42".parse().unwrap());
        assert_eq!(cookie(&h, "bluegreen"), Some("x.y"));
        assert_eq!(cookie(&h, "session_id"), Some("42"));
        assert_eq!(cookie(&h, "none"), None);
    }
}
