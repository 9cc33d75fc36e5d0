//! Record files: any line either parses or is refused with its line number,
//! never a panic; what parses writes back to a line that parses the same.
#![no_main]
use bluegreen_core::record::Recorded;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Recorded::parse(text, 7) {
        Ok(r) => {
            let again = Recorded::parse(&r.to_line(), 1).expect("a written line parses");
            assert_eq!(again.to_line(), r.to_line());
        }
        Err(e) => assert!(e.to_string().contains('7'), "{e}"),
    }
    let _ = Recorded::parse_all(text);
});
