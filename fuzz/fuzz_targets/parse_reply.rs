//! The feed's reply parser on arbitrary bodies and statuses: never a panic, and what it accepts
//! keeps its promises (an ID never behind the cursor; a batch either ends or says where to go on).
#![no_main]
use apiban::fuzz_api::{parse_reply, START_ID};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (status, body) = match data.split_first() {
        Some((s, rest)) => ([200u16, 200, 200, 400, 401, 403, 404, 429, 500, 503][*s as usize % 10], rest),
        None => (200, data),
    };
    let cursor = if body.len() % 2 == 0 { START_ID } else { 1_700_000_000 };
    if let Ok(b) = parse_reply(status, body, Some("30"), cursor) {
        assert!(b.id.is_none_or(|id| id >= cursor));
        assert!(b.end || b.id.is_some());
    }
});
