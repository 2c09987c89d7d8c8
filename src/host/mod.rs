//! The symbols a host's module loader looks up by name. One file per host, chosen by feature.

#[cfg(feature = "kamailio")]
mod kamailio;
#[cfg(feature = "opensips")]
mod opensips;
