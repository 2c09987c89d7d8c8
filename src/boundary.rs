//! The C boundary as bindgen reads it from `c-shim/apiban.h`: one definition for both sides.
#![allow(non_camel_case_types, non_upper_case_globals, dead_code, clippy::all)]
include!(concat!(env!("OUT_DIR"), "/boundary.rs"));
