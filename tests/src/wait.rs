//! Waiting for something to happen: the one polling loop of the harness and the tests.
//!
//! [`eventually`] checks a condition until it holds or a patience has passed. The
//! condition is a closure returning either `bool` (a check that needs no waiting, such
//! as a look at what a [`Receiver`](crate::Receiver) got) or a future of one (a check
//! that makes a request, such as reading a process's metrics).

use std::future::{ready, Future, Ready};
use std::time::Duration;

/// How long [`eventually`] waits between two checks.
pub const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// Checks `condition` at once, then every [`POLL_INTERVAL`] until it holds or `patience`
/// has passed; returns whether it held. The last check starts when the patience is up
/// (a check running then is not cut short), so whatever holds by then is seen.
pub async fn eventually<Kind>(patience: Duration, mut condition: impl Condition<Kind>) -> bool {
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        if condition.check().await {
            return true;
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return false;
        }
        tokio::time::sleep(POLL_INTERVAL.min(deadline - now)).await;
    }
}

/// A condition [`eventually`] can poll: any `FnMut() -> bool` ([`Immediate`]) and any
/// `FnMut() -> impl Future<Output = bool>` ([`Awaited`]), e.g. `|| async { … }`.
pub trait Condition<Kind> {
    /// One check under way.
    type Check: Future<Output = bool>;

    /// Starts one check.
    fn check(&mut self) -> Self::Check;
}

/// The kind of a condition that is a closure returning `bool`.
pub enum Immediate {}

/// The kind of a condition that is a closure returning a future of `bool`.
pub enum Awaited {}

impl<F> Condition<Immediate> for F
where
    F: FnMut() -> bool,
{
    type Check = Ready<bool>;

    fn check(&mut self) -> Ready<bool> {
        ready(self())
    }
}

impl<F, Fut> Condition<Awaited> for F
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    type Check = Fut;

    fn check(&mut self) -> Fut {
        self()
    }
}
