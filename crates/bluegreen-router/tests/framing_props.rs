//! Property tests of the gate's framing scan: for any well-formed request
//! with a Content-Length body it hands hyper exactly that request (head and
//! body), waits on any prefix of the head, and never reads into the next
//! pipelined request.

use bluegreen_router::downstream::{scan, Allow, Scan};
use proptest::prelude::*;

fn token() -> impl Strategy<Value = String> {
    "[A-Za-z][A-Za-z0-9-]{0,15}"
}

fn request() -> impl Strategy<Value = (Vec<u8>, usize)> {
    (
        prop_oneof![
            Just("GET"),
            Just("POST"),
            Just("PUT"),
            Just("DELETE"),
            Just("PATCH")
        ],
        "/[A-Za-z0-9/._~%-]{0,40}(\\?[A-Za-z0-9=&%-]{0,20})?",
        proptest::collection::vec((token(), "[ -~]{0,30}"), 0..12),
        proptest::collection::vec(any::<u8>(), 0..300),
    )
        .prop_filter("no framing headers of their own", |(_, _, h, _)| {
            h.iter().all(|(k, _)| {
                let k = k.to_ascii_lowercase();
                k != "content-length" && k != "transfer-encoding" && k != "upgrade"
            })
        })
        .prop_map(|(method, path, headers, body)| {
            let mut head = format!("{method} {path} HTTP/1.1\r\nHost: a.example\r\n");
            for (k, v) in &headers {
                head.push_str(&format!("{k}: {}\r\n", v.trim()));
            }
            head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
            let head_len = head.len();
            let mut bytes = head.into_bytes();
            bytes.extend_from_slice(&body);
            (bytes, head_len)
        })
}

proptest! {
    #[test]
    fn a_whole_request_is_framed_exactly(((req, head_len), (next, _)) in (request(), request())) {
        let total = req.len() as u64;
        prop_assert_eq!(scan(&req, 65536), Scan::Ready(Allow::Body(total)));
        // Pipelined: the next request's bytes are never part of this one.
        let mut both = req.clone();
        both.extend_from_slice(&next);
        prop_assert_eq!(scan(&both, 65536), Scan::Ready(Allow::Body(total)));
        // Any prefix of the head: wait for more.
        for cut in [0, 1, head_len / 2, head_len.saturating_sub(1)] {
            prop_assert_eq!(scan(&req[..cut], 65536), Scan::Partial, "cut at {}", cut);
        }
    }

    /// Arbitrary bytes never make the gate frame more than it was given a
    /// length for, and never panic.
    #[test]
    fn arbitrary_bytes_are_framed_safely(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        if let Scan::Ready(Allow::Body(total)) = scan(&bytes, 1024) {
            let head = bytes.windows(2).position(|w| w == b"\n\n" || w == b"\r\n");
            prop_assert!(head.is_some(), "a framed head has line ends");
            prop_assert!(total >= 16, "a framed request has a request line: {}", total);
        }
    }
}
