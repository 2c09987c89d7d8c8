//! apiban: the APIBAN ban list inside Kamailio and OpenSIPS.
//!
//! A shared-memory table made before the server forks, read lock-free by every SIP worker and
//! republished whole by one refresher process that pulls the feed. The core below knows nothing
//! of its host; `ffi` is the only boundary with C, and `host` holds the few symbols a host's
//! loader looks up by name.

mod addr;
mod allow;
mod boundary;
mod config;
mod feed;
mod ffi;
mod log;
mod module;
mod refresher;
mod shm;
mod snapshot;
mod stats;
mod table;

// The host symbols reference the C shim, which only the cdylib links (see build.rs).
#[cfg(not(test))]
mod host;
