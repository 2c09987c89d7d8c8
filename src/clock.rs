//! Wall time, for what it is used: a listing's expiry and the times shown to operators. Every
//! schedule runs on the monotonic clock (`Instant`); a wall clock stepped back or forward must
//! not stop or hurry the pulls.

pub fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Unix time in milliseconds: orders the records of one address across nodes.
pub fn unix_now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}
