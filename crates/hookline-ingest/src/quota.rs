//! The per-tenant event rate of tenant API keys: one token bucket per tenant, sized by
//! [`TenantQuotas`]. Only tenants that hold keys are metered, so the buckets are as
//! many as those tenants.

use std::num::NonZeroU32;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use hookline_domain::quota::{retry_after_secs, TenantQuotas};

use crate::error::ApiError;

/// Meters the events each tenant publishes.
pub struct EventRate {
    limiter: DefaultKeyedRateLimiter<String>,
    clock: DefaultClock,
    per_second: u32,
}

impl EventRate {
    /// A meter allowing `quotas.events_per_second`, in bursts of `quotas.events_burst`.
    pub fn new(quotas: &TenantQuotas) -> Self {
        let per_second = NonZeroU32::new(quotas.events_per_second).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(quotas.events_burst).unwrap_or(per_second);
        Self {
            limiter: RateLimiter::keyed(Quota::per_second(per_second).allow_burst(burst)),
            clock: DefaultClock::default(),
            per_second: per_second.get(),
        }
    }

    /// Takes `events` from `tenant`'s bucket, or answers `429` with the time until they
    /// fit. A refused request takes nothing.
    pub fn admit(&self, tenant: &str, events: usize) -> Result<(), ApiError> {
        let Some(n) = u32::try_from(events).ok().and_then(NonZeroU32::new) else {
            return Ok(());
        };
        let refused = |wait| {
            ApiError::rate_limited(
                format!(
                    "tenant `{tenant}` is over its quota of {} events per second",
                    self.per_second
                ),
                retry_after_secs(wait),
            )
        };
        match self.limiter.check_key_n(&tenant.to_owned(), n) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(not_until)) => Err(refused(not_until.wait_time_from(self.clock.now()))),
            // More than a burst: start-up checks make the batch limit fit a burst, so
            // this is only reached with a limit raised past it; retry cannot help.
            Err(_) => Err(refused(std::time::Duration::from_secs(1))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_tenant_has_its_own_bucket() {
        let rate = EventRate::new(&TenantQuotas {
            max_subscriptions: 10,
            events_per_second: 1,
            events_burst: 5,
            max_batch_events: 5,
        });
        assert!(rate.admit("acme", 5).is_ok());
        let refused = rate.admit("acme", 1).unwrap_err();
        assert_eq!(refused.status(), axum::http::StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(refused.retry_after, Some(1));
        assert!(
            rate.admit("globex", 5).is_ok(),
            "another tenant is not slowed"
        );
        assert!(rate.admit("acme", 0).is_ok());
    }
}
