//! Payload filters (work in progress).
