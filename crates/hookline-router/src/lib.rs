//! The router as a library: the routing loop ([`router`]). The binary wires it.
#![warn(missing_docs)]

pub mod end_probe;
pub mod fetch_watch;
pub mod router;
