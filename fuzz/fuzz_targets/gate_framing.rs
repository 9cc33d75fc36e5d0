//! Differential: the gate's framing decision (`downstream::scan`) against
//! httparse's reading of the same bytes. The gate may only hand hyper a
//! body length it is sure of; whenever it is unsure it must say `All` and
//! let hyper frame the connection itself.
#![no_main]
use bluegreen_router::downstream::{scan, Allow, Scan, MAX_HEADERS};
use libfuzzer_sys::fuzz_target;

const MAX_HEAD: usize = 4096;

fuzz_target!(|data: &[u8]| {
    let mut headers = vec![httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let parsed = req.parse(data);
    match scan(data, MAX_HEAD) {
        Scan::Partial => {
            assert!(data.len() < MAX_HEAD, "partial past the head limit");
            assert!(
                matches!(parsed, Ok(httparse::Status::Partial)),
                "gate waits but httparse says {parsed:?}"
            );
        }
        Scan::Ready(Allow::Body(total)) => {
            let Ok(httparse::Status::Complete(head)) = parsed else {
                panic!("gate framed a body but httparse says {parsed:?}");
            };
            assert_ne!(req.method, Some("CONNECT"));
            let mut length = None;
            for h in req.headers.iter() {
                let name = h.name.to_ascii_lowercase();
                assert!(
                    name != "transfer-encoding" && name != "upgrade",
                    "gate framed a request with {name}"
                );
                if name == "content-length" {
                    assert!(length.is_none(), "two Content-Lengths framed");
                    let text = std::str::from_utf8(h.value).expect("digits");
                    assert!(!text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()));
                    length = Some(text.parse::<u64>().expect("fits"));
                }
            }
            assert_eq!(total, head as u64 + length.unwrap_or(0), "framed length");
        }
        Scan::Ready(Allow::All) | Scan::Ready(Allow::Head) => {}
    }
});
