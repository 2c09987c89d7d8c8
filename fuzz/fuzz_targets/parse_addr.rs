//! The script's address parser on arbitrary bytes: never a panic; what parses round-trips; and
//! the same answer as the one-pass parser it replaced (kept as `parse_text_reference`).
#![no_main]
use apiban::fuzz_api::{parse_text, parse_text_reference};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let k = parse_text(data);
    assert_eq!(k, parse_text_reference(data));
    if let Some(k) = k {
        assert_eq!(parse_text(k.to_ip().to_string().as_bytes()), Some(k));
    }
});
