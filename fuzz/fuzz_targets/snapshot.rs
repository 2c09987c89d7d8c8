//! The snapshot loader on arbitrary files: never a panic, never an allocation beyond the bound;
//! whatever it accepts re-encodes to the very same bytes. Each input is tried as it is and with a
//! valid checksum appended, so the fuzzer gets past the checksum into the header and entries.
#![no_main]
use apiban::fuzz_api::{decode_snapshot, encode_snapshot, seal_snapshot};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for input in [data.to_vec(), seal_snapshot(data.to_vec())] {
        if let Ok(s) = decode_snapshot(&input, 10_000) {
            assert_eq!(encode_snapshot(&s), input);
        }
    }
});
