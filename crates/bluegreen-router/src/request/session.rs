//! Sessions across a switch (`[sessions]`) and preview links: our own
//! cookies, signed with HMAC-SHA256 (a key in the state dir), name the
//! side that served a client. After a switch, a client whose cookie names
//! the old side stays there while the window lasts and that side has a
//! healthy upstream; new clients go to the new side. After a rollback no
//! one is pinned to the rejected side. A preview cookie (from a link made
//! by `bluegreen preview-link`) sends one browser to the idle side.

use bluegreen_core::Side;
use http::header::{self, HeaderMap, HeaderValue};
use std::time::{SystemTime, UNIX_EPOCH};

/// The path a preview link points at on the live listener.
pub const PREVIEW_PATH: &str = "/.bluegreen/preview";

pub use crate::plane::signer::{Signer, ROTATE_AFTER};

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
    plane: &crate::plane::Plane,
    snap: &crate::snapshot::Snapshot,
    policy: &crate::snapshot::SessionPolicy,
    headers: &HeaderMap,
    chosen: Side,
    secure: bool,
) -> (Side, Option<HeaderValue>) {
    let signer = &plane.signer;
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
            plane.pinned[side as usize].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
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
    plane: &crate::plane::Plane,
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
    let snap = plane.snapshot.load();
    let name = snap
        .sessions
        .as_ref()
        .map(|p| p.preview_cookie.clone())
        .unwrap_or_else(|| "bluegreen_preview".into());
    match plane.signer.preview_of(token) {
        Some(side) => {
            let left = plane.signer.preview_left(token);
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
