//! The script's address parser on arbitrary bytes: never a panic; what parses round-trips.
#![no_main]
use apiban::fuzz_api::parse_text;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(k) = parse_text(data) {
        assert_eq!(parse_text(k.to_ip().to_string().as_bytes()), Some(k));
    }
});
