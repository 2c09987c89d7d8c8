//! apiban: the APIBAN ban list inside Kamailio and OpenSIPS.
//!
//! A shared-memory table made before the server forks, read lock-free by every SIP worker and
//! republished whole by one refresher process that pulls the feed. The core below knows nothing
//! of its host; `ffi` is the only boundary with C, and `host` holds the few symbols a host's
//! loader looks up by name.

mod addr;
mod allow;
mod bans;
mod boundary;
mod clock;
mod config;
mod feed;
mod ffi;
mod fleet;
mod held;
mod log;
mod module;
mod os;
#[cfg(test)]
mod mutate;
mod proxy;
mod refresher;
mod snapshot;
mod stats;
mod table;
mod tls;

// The host symbols reference the C shim, which only the cdylib links (see build.rs); a bench
// binary links the rlib and must not pull them in.
#[cfg(not(any(test, feature = "bench", feature = "fuzz")))]
mod host;

/// The core's inner parts, for `benches/` only (cargo feature `bench`, never in a module build).
#[cfg(feature = "bench")]
#[doc(hidden)]
pub mod bench_api {
    pub use crate::addr::{parse_text, Key};
    pub use crate::bans::ban_request;
    pub use crate::bans::ring::{Request, Ring};
    pub use crate::feed::{parse_reply, Batch, START_ID};
    pub use crate::held::{keep_newest, live, merge, Held};
    pub use crate::table::{Entries, Table};
}

/// The parsers that read untrusted bytes, for the fuzz targets in fuzz/ only (cargo feature
/// `fuzz`, never in a module build).
#[cfg(feature = "fuzz")]
#[doc(hidden)]
pub mod fuzz_api {
    pub use crate::addr::{parse_text, parse_text_reference};
    pub use crate::feed::{parse_reply, parse_reply_general, START_ID};
    pub use crate::snapshot::{decode as decode_snapshot, encode as encode_snapshot, seal as seal_snapshot};
}
