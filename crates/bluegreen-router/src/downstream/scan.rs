//! Framing without parsing: where a request head ends and how much body
//! follows, or that the gate must leave the connection to hyper.

use super::*;

/// What the gate learned from the bytes before a request.
#[derive(Debug, PartialEq, Eq)]
pub enum Scan {
    /// Not a whole head yet.
    Partial,
    /// A whole head (or something hyper must judge): how much to hand over.
    Ready(Allow),
}

/// Finds the end of the request head in `bytes` and the body length after it.
pub fn scan(bytes: &[u8], max_head: usize) -> Scan {
    let mut headers = [MaybeUninit::<httparse::Header<'_>>::uninit(); MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let head_len = match req.parse_with_uninit_headers(bytes, &mut headers) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if bytes.len() < max_head => return Scan::Partial,
        // Too long, too many headers, malformed: hyper answers it.
        _ => return Scan::Ready(Allow::All),
    };
    if req.method == Some("CONNECT") {
        return Scan::Ready(Allow::All);
    }
    let mut body: Option<u64> = None;
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            let parsed = std::str::from_utf8(h.value)
                .ok()
                .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|v| v.parse::<u64>().ok());
            match (parsed, body) {
                (Some(n), None) => body = Some(n),
                _ => return Scan::Ready(Allow::All), // repeated or odd: hyper decides
            }
        } else if h.name.eq_ignore_ascii_case("transfer-encoding")
            || h.name.eq_ignore_ascii_case("upgrade")
        {
            return Scan::Ready(Allow::All);
        }
    }
    match (head_len as u64).checked_add(body.unwrap_or(0)) {
        Some(total) => Scan::Ready(Allow::Body(total)),
        None => Scan::Ready(Allow::All),
    }
}

/// Whether `bytes` may hold the end of a head (an empty line) at or after
/// `from` (`\n\n` or `\n\r\n`, as httparse accepts bare newlines).
pub(super) fn may_end_head(bytes: &[u8], from: usize) -> bool {
    let start = from.saturating_sub(2);
    bytes.get(start..).is_some_and(|tail| {
        tail.windows(2).any(|w| w == b"\n\n") || tail.windows(3).any(|w| w == b"\n\r\n")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_get_head_is_handed_over_alone() {
        let head = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        assert_eq!(
            scan(head, 8192),
            Scan::Ready(Allow::Body(head.len() as u64))
        );
        assert_eq!(scan(&head[..10], 8192), Scan::Partial);
    }

    #[test]
    fn a_content_length_body_is_counted_in() {
        let head = b"POST /x HTTP/1.1\r\nContent-Length: 5\r\n\r\n";
        assert_eq!(
            scan(head, 8192),
            Scan::Ready(Allow::Body(head.len() as u64 + 5))
        );
    }

    #[test]
    fn only_an_empty_line_can_end_a_head() {
        let head = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        assert!(may_end_head(head, 0));
        assert!(
            may_end_head(head, head.len() - 1),
            "the end straddles `from`"
        );
        assert!(!may_end_head(&head[..head.len() - 2], 0));
        assert!(may_end_head(b"GET / HTTP/1.1\nHost: a\n\n", 10));
        assert!(!may_end_head(head, head.len() + 5));
    }

    #[test]
    fn a_huge_content_length_is_left_to_hyper() {
        let head = b"POST / HTTP/1.1\r\nContent-Length: 18446744073709551600\r\n\r\n";
        assert_eq!(scan(head, 8192), Scan::Ready(Allow::All));
    }

    #[test]
    fn what_the_gate_cannot_frame_goes_to_hyper() {
        for head in [
            &b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
            b"GET /ws HTTP/1.1\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
            b"CONNECT a:443 HTTP/1.1\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: +5\r\n\r\n",
            b"GET / HTTP/1.1\r\nBad Header\r\n\r\n",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        ] {
            assert_eq!(scan(head, 8192), Scan::Ready(Allow::All), "{head:?}");
        }
        // A head that never ends within the limit.
        let long = [b'a'; 100];
        assert_eq!(scan(&long[..], 50), Scan::Ready(Allow::All));
    }
}
