//! Per-subscription concurrency and rate limits, and per-endpoint circuit breakers.
//!
//! Tasks are keyed by subscription, so all of one subscription's tasks reach one worker
//! at a time: these in-process limits are the subscription's limits cluster-wide.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use hookline_domain::breaker::{Admission, BreakerState, CircuitBreaker};
use hookline_domain::ids::SubscriptionId;
use hookline_domain::retry::OpenCircuit;
use hookline_domain::subscription::Subscription;
use prometheus::{IntCounterVec, IntGauge, Opts, Registry};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// A subscription whose slots are all taken and whose endpoint answered none of its
/// requests for this long has stalled (hanging, or far slower than its traffic): its
/// tasks are deferred instead of waiting in their partition's window, where they would
/// hold back every other subscription sharing the partition.
pub const STALL_AFTER: Duration = Duration::from_secs(1);

/// One subscription's limiters, rebuilt when its configured limits change.
struct SubscriptionLimits {
    configured: (u32, Option<u32>),
    in_flight: Arc<Semaphore>,
    rate: Option<Arc<DefaultDirectRateLimiter>>,
    /// When the endpoint last answered a request (or the limiters were built). A
    /// request that timed out or never connected is no answer: it leaves a hanging
    /// endpoint stalled when its slot comes free.
    last_answer: Mutex<Instant>,
}

impl SubscriptionLimits {
    /// How long the endpoint has been stalled, if it is: every slot taken and no
    /// answer for [`STALL_AFTER`] or more.
    fn stalled_for(&self) -> Option<Duration> {
        if self.in_flight.available_permits() > 0 {
            return None;
        }
        Some(lock(&self.last_answer).elapsed()).filter(|quiet| *quiet >= STALL_AFTER)
    }
}

/// A subscription's concurrency slot, held for one request; released on drop.
pub struct Slot {
    _permit: OwnedSemaphorePermit,
    limits: Arc<SubscriptionLimits>,
}

impl Slot {
    /// Releases the slot after the endpoint answered (any status): it is not stalled.
    pub fn answered(self) {
        *lock(&self.limits.last_answer) = Instant::now();
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// Limits of every subscription this worker has seen.
pub struct Limits {
    default_in_flight: u32,
    by_subscription: Mutex<HashMap<SubscriptionId, Arc<SubscriptionLimits>>>,
}

impl Limits {
    /// Limits with `default_in_flight` concurrent requests per subscription unless the
    /// subscription sets its own.
    pub fn new(default_in_flight: u32) -> Self {
        Self {
            default_in_flight: default_in_flight.max(1),
            by_subscription: Mutex::new(HashMap::new()),
        }
    }

    /// Waits for a concurrency slot and a rate token of `subscription`; the slot is
    /// held until the returned [`Slot`] drops. With `may_defer`, gives up as soon as
    /// the subscription's endpoint has stalled (see [`STALL_AFTER`]), checked on
    /// arrival and every [`STALL_AFTER`] while waiting: `Err` with how long it has
    /// been stalled.
    pub async fn acquire(
        &self,
        subscription: &Subscription,
        may_defer: bool,
    ) -> Result<Slot, Duration> {
        let limits = self.of(subscription);
        // One place in the queue, kept while the endpoint keeps releasing slots: giving it
        // up to look again would let later tasks overtake this one.
        let acquire = Arc::clone(&limits.in_flight).acquire_owned();
        tokio::pin!(acquire);
        let permit = loop {
            if let Some(stalled) = limits.stalled_for().filter(|_| may_defer) {
                return Err(stalled);
            }
            tokio::select! {
                permit = &mut acquire => match permit {
                    Ok(permit) => break permit,
                    Err(_) => unreachable!("subscription semaphores are never closed"),
                },
                () = tokio::time::sleep(STALL_AFTER), if may_defer => {}
            }
        };
        if let Some(rate) = &limits.rate {
            rate.until_ready().await;
        }
        Ok(Slot {
            _permit: permit,
            limits,
        })
    }

    fn of(&self, subscription: &Subscription) -> Arc<SubscriptionLimits> {
        let configured = (
            subscription
                .max_in_flight()
                .unwrap_or(self.default_in_flight)
                .max(1),
            subscription.rate_limit(),
        );
        let mut map = lock(&self.by_subscription);
        if let Some(existing) = map
            .get(subscription.id())
            .filter(|l| l.configured == configured)
        {
            return Arc::clone(existing);
        }
        let limits = Arc::new(SubscriptionLimits {
            configured,
            in_flight: Arc::new(Semaphore::new(configured.0 as usize)),
            last_answer: Mutex::new(Instant::now()),
            rate: configured
                .1
                .and_then(NonZeroU32::new)
                .map(|per_second| Arc::new(RateLimiter::direct(Quota::per_second(per_second)))),
        });
        map.insert(subscription.id().clone(), Arc::clone(&limits));
        limits
    }
}

/// Circuit breakers by endpoint URL.
pub struct Breakers {
    threshold: u32,
    cooldown: Duration,
    max_cooldown: Duration,
    by_endpoint: Mutex<HashMap<String, CircuitBreaker>>,
    open: IntGauge,
    transitions: IntCounterVec,
}

impl Breakers {
    /// Breakers opening after `threshold` consecutive failures for `cooldown`, for
    /// twice as long after each failed probe up to `max_cooldown`.
    pub fn new(
        threshold: u32,
        cooldown: Duration,
        max_cooldown: Duration,
        registry: &Registry,
    ) -> anyhow::Result<Self> {
        let open = IntGauge::new(
            "hookline_delivery_circuit_open",
            "Endpoints whose circuit breaker is open or half-open.",
        )?;
        let transitions = IntCounterVec::new(
            Opts::new(
                "hookline_delivery_circuit_transitions_total",
                "Circuit breaker state changes, by new state.",
            ),
            &["state"],
        )?;
        registry.register(Box::new(open.clone()))?;
        registry.register(Box::new(transitions.clone()))?;
        Ok(Self {
            threshold,
            cooldown,
            max_cooldown,
            by_endpoint: Mutex::new(HashMap::new()),
            open,
            transitions,
        })
    }

    /// The endpoint key of a URL: the URL itself, so two subscriptions on one host
    /// with different paths (often different tenants' handlers) trip separately.
    pub fn endpoint(url: &str) -> String {
        url.to_owned()
    }

    /// Whether a request to `endpoint` may go out now.
    pub fn admit(&self, endpoint: &str) -> Admission {
        let mut map = lock(&self.by_endpoint);
        match map.get_mut(endpoint) {
            Some(breaker) => breaker.admit(Instant::now()),
            None => Admission::Allow,
        }
    }

    /// `endpoint`'s circuit as a request refused now sees it (see
    /// [`CircuitBreaker::open_circuit`]); `None` when it has no breaker (closed).
    pub fn open_circuit(&self, endpoint: &str) -> Option<OpenCircuit> {
        let map = lock(&self.by_endpoint);
        map.get(endpoint).map(|b| b.open_circuit(Instant::now()))
    }

    /// Records a request's result.
    pub fn record(&self, endpoint: &str, success: bool) {
        let now = Instant::now();
        let mut map = lock(&self.by_endpoint);
        if success && !map.contains_key(endpoint) {
            return;
        }
        let breaker = map.entry(endpoint.to_owned()).or_insert_with(|| {
            CircuitBreaker::new(self.threshold, self.cooldown, self.max_cooldown)
        });
        let before = breaker.state(now);
        let after = breaker.record(success, now);
        if before != after {
            let name = match after {
                BreakerState::Closed => "closed",
                BreakerState::Open => "open",
                BreakerState::HalfOpen => "half_open",
            };
            self.transitions.with_label_values(&[name]).inc();
            tracing::info!(endpoint, state = name, "circuit breaker");
        }
        if success {
            // A healthy endpoint needs no breaker state.
            map.remove(endpoint);
        }
        let open = map
            .values()
            .filter(|b| b.state(now) != BreakerState::Closed)
            .count();
        self.open.set(open as i64);
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::pin::{pin, Pin};
    use std::task::{Context, Poll, Waker};

    use super::*;

    /// Polls `future` once, without waiting: whether it could finish right now.
    fn poll_once<F: Future>(future: Pin<&mut F>) -> Poll<F::Output> {
        future.poll(&mut Context::from_waker(Waker::noop()))
    }

    fn subscription() -> Subscription {
        let url = "https://erp.example/hooks".parse().expect("a valid URL");
        Subscription::basic("sub_a", "acme", url, Vec::new())
    }

    #[tokio::test]
    async fn a_slot_bounds_requests_and_is_free_again_once_released() {
        let limits = Limits::new(2);
        let subscription = subscription();
        let first = limits.acquire(&subscription, false).await.ok();
        let second = limits.acquire(&subscription, false).await.ok();
        assert!(first.is_some() && second.is_some(), "two slots");

        let mut third = pin!(limits.acquire(&subscription, false));
        assert!(
            poll_once(third.as_mut()).is_pending(),
            "a third request waits while two are in flight"
        );
        // The pipeline releases a slot when the answer is in, before its bookkeeping:
        // the next request may go out while the first one's records are still being
        // written.
        if let Some(first) = first {
            first.answered();
        }
        let Poll::Ready(Ok(third)) = poll_once(third.as_mut()) else {
            panic!("a released slot is taken by the request waiting for it");
        };
        let mut fourth = pin!(limits.acquire(&subscription, false));
        assert!(
            poll_once(fourth.as_mut()).is_pending(),
            "still two in flight at most"
        );
        drop(second);
        assert!(matches!(poll_once(fourth.as_mut()), Poll::Ready(Ok(_))));
        drop(third);
    }

    #[tokio::test]
    async fn a_subscription_of_its_own_limit_gets_that_many_slots() {
        let limits = Limits::new(8);
        let request: hookline_domain::subscription::NewSubscription = serde_json::from_value(
            serde_json::json!({"tenant": "acme", "url": "https://erp.example/hooks",
                               "event_types": ["*"], "max_in_flight": 1}),
        )
        .expect("a valid subscription request");
        let keyring = hookline_domain::sealing::Keyring::parse(
            &hookline_domain::sealing::Keyring::generate_entry("k"),
        )
        .expect("a generated key");
        let saving = hookline_domain::subscription::Saving {
            rules: &Default::default(),
            keyring: &keyring,
        };
        let (narrow, _) = request
            .into_subscription("sub_n".into(), chrono::Utc::now(), saving)
            .expect("a valid subscription");
        let only = limits.acquire(&narrow, false).await.ok();
        assert!(only.is_some());
        let mut next = pin!(limits.acquire(&narrow, false));
        assert!(poll_once(next.as_mut()).is_pending(), "max_in_flight 1");
        drop(only);
        assert!(matches!(poll_once(next.as_mut()), Poll::Ready(Ok(_))));
    }
}
