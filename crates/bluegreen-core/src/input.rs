//! Limits on text that operators and API clients hand us: versions end up in
//! paths and commands, reasons and actors in the persisted history, deploy
//! environment variables in app processes. Each check names the field and
//! what is wrong; nothing is truncated or altered silently. Text shown in the
//! history carries no bidirectional controls (see [`bidi_control`]).

/// Longest accepted reason (bytes).
pub const MAX_REASON: usize = 1024;
/// Longest accepted actor or version (bytes).
pub const MAX_NAME: usize = 128;

/// A version: 1 to 128 of `A-Z a-z 0-9 . _ + -`, starting with a letter or
/// digit, no `..` (it becomes part of paths like `releases/{version}`).
pub fn version(v: &str) -> Result<(), String> {
    let ok = (1..=MAX_NAME).contains(&v.len())
        && v.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._+-".contains(&b))
        && !v.contains("..");
    if ok {
        Ok(())
    } else {
        Err(format!(
            "version {:?} is not valid: use 1 to {MAX_NAME} letters, digits, '.', '_', '+' or '-', starting with a letter or digit, without '..'",
            shorten(v)
        ))
    }
}

/// Free text kept in the history (a reason): at most 1024 bytes, no control
/// characters but tab, no bidirectional controls.
pub fn reason(field: &str, v: &str) -> Result<(), String> {
    text(field, v, MAX_REASON)
}

/// Who did it: at most 128 bytes, no control characters, no bidirectional
/// controls.
pub fn actor(v: &str) -> Result<(), String> {
    text("actor", v, MAX_NAME)
}

/// The Unicode bidirectional controls: embeddings and overrides (U+202A to
/// U+202E), isolates (U+2066 to U+2069) and the marks (U+200E, U+200F,
/// U+061C). In a history line they reorder what a dashboard or a terminal
/// shows, so that it reads differently from what it holds ("Trojan Source").
pub fn bidi_control(c: char) -> Option<&'static str> {
    Some(match c {
        '\u{202A}' => "LEFT-TO-RIGHT EMBEDDING",
        '\u{202B}' => "RIGHT-TO-LEFT EMBEDDING",
        '\u{202C}' => "POP DIRECTIONAL FORMATTING",
        '\u{202D}' => "LEFT-TO-RIGHT OVERRIDE",
        '\u{202E}' => "RIGHT-TO-LEFT OVERRIDE",
        '\u{2066}' => "LEFT-TO-RIGHT ISOLATE",
        '\u{2067}' => "RIGHT-TO-LEFT ISOLATE",
        '\u{2068}' => "FIRST STRONG ISOLATE",
        '\u{2069}' => "POP DIRECTIONAL ISOLATE",
        '\u{200E}' => "LEFT-TO-RIGHT MARK",
        '\u{200F}' => "RIGHT-TO-LEFT MARK",
        '\u{061C}' => "ARABIC LETTER MARK",
        _ => return None,
    })
}

/// Refuses bidirectional controls in `v`, naming `field` and the code point.
pub fn no_bidi(field: &str, v: &str) -> Result<(), String> {
    match v.chars().find_map(|c| bidi_control(c).map(|name| (c, name))) {
        Some((c, name)) => Err(format!(
            "{field} contains the bidirectional control U+{:04X} ({name}), which would make it display differently from what it says",
            c as u32
        )),
        None => Ok(()),
    }
}

fn text(field: &str, v: &str, max: usize) -> Result<(), String> {
    if v.len() > max {
        return Err(format!("{field} is {} bytes long: at most {max}", v.len()));
    }
    if v.chars().any(|c| c.is_control() && c != '\t') {
        return Err(format!(
            "{field} {:?} contains control characters",
            shorten(v)
        ));
    }
    no_bidi(field, v)
}

/// Variables that change how every program loads: never settable per deploy.
fn is_loader_variable(name: &str) -> bool {
    name.starts_with("LD_")
        || name.starts_with("DYLD_")
        || matches!(
            name,
            "GCONV_PATH" | "MALLOC_CONF" | "HOSTALIASES" | "LOCPATH" | "NLSPATH"
        )
}

/// Variables bluegreen itself sets for deploy hooks and apps.
pub const RESERVED_ENV: [&str; 3] = ["BLUEGREEN_ENV", "BLUEGREEN_VERSION", "BLUEGREEN_UPSTREAMS"];

/// A deploy `env` entry: a portable name (`[A-Za-z_][A-Za-z0-9_]*`), not a
/// loader variable or one of ours, a value without NUL.
pub fn env_var(name: &str, value: &str) -> Result<(), String> {
    let portable = (1..=MAX_NAME).contains(&name.len())
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if !portable {
        return Err(format!(
            "env {:?}: not a valid variable name (letters, digits and '_', not starting with a digit)",
            shorten(name)
        ));
    }
    if is_loader_variable(name) {
        return Err(format!(
            "env {name}: loader variables (LD_*, DYLD_*, GCONV_PATH, ...) cannot be set by a deploy"
        ));
    }
    if RESERVED_ENV.contains(&name) {
        return Err(format!("env {name}: set by bluegreen itself"));
    }
    if value.contains('\0') {
        return Err(format!("env {name}: the value contains a NUL byte"));
    }
    if value.len() > 64 * 1024 {
        return Err(format!("env {name}: the value is longer than 64 KiB"));
    }
    Ok(())
}

/// At most the first 40 characters, for messages about oversized input.
fn shorten(v: &str) -> String {
    match v.char_indices().nth(40) {
        Some((i, _)) => format!("{}...", &v[..i]),
        None => v.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_that_could_be_paths_or_flags_are_refused() {
        for good in ["v1", "1.2.3", "2024-01-01_rc+build.7", "V"] {
            assert!(version(good).is_ok(), "{good}");
        }
        let long = "v".repeat(129);
        for bad in [
            "",
            "..",
            "../etc",
            "a/b",
            "-rf",
            ".hidden",
            "v1..2",
            "v 1",
            "v1\n",
            long.as_str(),
        ] {
            assert!(version(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn reasons_and_actors_are_bounded_and_printable() {
        assert!(reason("reason", "rolled back: p99 300ms\tover 100ms").is_ok());
        let huge = "x".repeat(1_500_000);
        let e = reason("reason", &huge).unwrap_err();
        assert!(e.contains("at most 1024") && e.len() < 200, "{e}");
        assert!(reason("reason", "line\nbreak").is_err());
        assert!(actor("alice@host").is_ok());
        assert!(actor(&"a".repeat(129)).is_err());
        assert!(actor("esc\u{1b}[31m").is_err());
    }

    #[test]
    fn bidirectional_controls_are_refused_by_name_and_code_point() {
        // "Trojan Source": the override makes this read "rollback: fine".
        let e = reason("reason", "rollback: \u{202E}enif").unwrap_err();
        assert!(
            e.starts_with("reason ")
                && e.contains("U+202E")
                && e.contains("RIGHT-TO-LEFT OVERRIDE"),
            "{e}"
        );
        let e = actor("alice\u{2066}").unwrap_err();
        assert!(e.starts_with("actor ") && e.contains("U+2066"), "{e}");
        let e = reason("message", "x\u{061C}y").unwrap_err();
        assert!(e.starts_with("message ") && e.contains("U+061C"), "{e}");
        for c in ('\u{202A}'..='\u{202E}')
            .chain('\u{2066}'..='\u{2069}')
            .chain(['\u{200E}', '\u{200F}', '\u{061C}'])
        {
            let text = format!("a{c}b");
            assert!(reason("reason", &text).is_err(), "U+{:04X}", c as u32);
            assert!(actor(&text).is_err(), "U+{:04X}", c as u32);
        }
        // Right-to-left text itself is fine; so are other format characters.
        assert!(reason("reason", "שלום, مرحبا").is_ok());
        assert!(actor("zoë\u{200D}").is_ok());
        assert!(no_bidi("field", "/items/*/currency").is_ok());
    }

    #[test]
    fn loader_and_reserved_variables_cannot_be_set() {
        assert!(env_var("FEATURE_X", "on").is_ok());
        assert!(env_var("BLUEGREEN_APP_FAIL_HEALTH", "1").is_ok());
        for bad in [
            "LD_PRELOAD",
            "LD_LIBRARY_PATH",
            "DYLD_INSERT_LIBRARIES",
            "GCONV_PATH",
            "BLUEGREEN_VERSION",
            "1X",
            "A-B",
            "",
            "A=B",
        ] {
            assert!(env_var(bad, "x").is_err(), "{bad}");
        }
        assert!(env_var("A", "a\0b").is_err());
    }
}
