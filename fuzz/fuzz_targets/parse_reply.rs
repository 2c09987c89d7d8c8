//! The feed's reply parser on arbitrary bodies and statuses: never a panic, what it accepts
//! keeps its promises (an ID never behind the cursor; a batch either ends or says where to go
//! on), and its fast reader (no JSON tree) answers exactly as the general one through a
//! `serde_json::Value` on every input.
#![no_main]
use apiban::fuzz_api::{parse_reply, parse_reply_general, START_ID};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (status, body) = match data.split_first() {
        Some((s, rest)) => ([200u16, 200, 200, 400, 401, 403, 404, 429, 500, 503][*s as usize % 10], rest),
        None => (200, data),
    };
    let cursor = if body.len() % 2 == 0 { START_ID } else { 1_700_000_000 };
    let r = parse_reply(status, body, Some("30"), cursor);
    assert_eq!(r, parse_reply_general(status, body, Some("30"), cursor));
    if let Ok(b) = r {
        assert!(b.id.is_none_or(|id| id >= cursor));
        assert!(b.end || b.id.is_some());
    }
});
