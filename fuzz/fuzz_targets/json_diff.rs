//! The structural JSON diff never panics, finds nothing between a value and
//! itself, and finds something between values that differ.
#![no_main]
use bluegreen_core::diff::diff_json;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut halves = data.splitn(2, |b| *b == 0xff);
    let (Some(a), Some(b)) = (halves.next(), halves.next()) else {
        return;
    };
    let (Ok(a), Ok(b)) = (
        serde_json::from_slice::<serde_json::Value>(a),
        serde_json::from_slice::<serde_json::Value>(b),
    ) else {
        return;
    };
    assert!(diff_json(&a, &a).is_empty());
    let d = diff_json(&a, &b);
    assert_eq!(d.is_empty(), a == b, "{a} vs {b}: {d:?}");
});
