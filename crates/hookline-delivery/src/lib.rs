//! The delivery worker as a library: the consumer loop ([`worker`]), the per-task
//! pipeline ([`pipeline`]), the HTTP sender ([`sender`]), per-subscription limits and
//! breakers ([`limits`]) and health write-backs ([`control`]). The binary wires them.
#![warn(missing_docs)]

pub mod control;
pub mod limits;
pub mod pipeline;
pub mod sender;
pub mod worker;
