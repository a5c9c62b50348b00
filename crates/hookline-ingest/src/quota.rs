//! The per-tenant event rate of tenant API keys: one token bucket per tenant, sized by
//! its [`TenantQuotas`] (the defaults, or its own). Only tenants that hold keys are
//! metered, so the buckets are as many as those tenants.

use std::collections::HashMap;
use std::num::NonZeroU32;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};
use hookline_domain::quota::{retry_after_secs, QuotaPlan, TenantQuotas};

use crate::error::ApiError;

/// Meters the events each tenant publishes.
pub struct EventRate {
    /// One bucket per tenant on the default limits.
    default: DefaultKeyedRateLimiter<String>,
    /// The tenants with limits of their own, a bucket each.
    own: HashMap<String, DefaultDirectRateLimiter>,
    plan: QuotaPlan,
    clock: DefaultClock,
}

/// A token bucket of `quotas.events_per_second`, in bursts of `quotas.events_burst`.
fn bucket(quotas: &TenantQuotas) -> Quota {
    let per_second = NonZeroU32::new(quotas.events_per_second).unwrap_or(NonZeroU32::MIN);
    let burst = NonZeroU32::new(quotas.events_burst).unwrap_or(per_second);
    Quota::per_second(per_second).allow_burst(burst)
}

impl EventRate {
    /// A meter of every tenant's event rate under `plan`.
    pub fn new(plan: &QuotaPlan) -> Self {
        Self {
            default: RateLimiter::keyed(bucket(&plan.default)),
            own: plan
                .tenants
                .iter()
                .map(|(tenant, quotas)| (tenant.clone(), RateLimiter::direct(bucket(quotas))))
                .collect(),
            plan: plan.clone(),
            clock: DefaultClock::default(),
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
                    self.plan.of(tenant).events_per_second
                ),
                retry_after_secs(wait),
            )
        };
        let decision = match self.own.get(tenant) {
            Some(limiter) => limiter.check_n(n),
            None => self.default.check_key_n(&tenant.to_owned(), n),
        };
        match decision {
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

    const QUOTAS: TenantQuotas = TenantQuotas {
        max_subscriptions: 10,
        events_per_second: 1,
        events_burst: 5,
        max_batch_events: 5,
    };

    #[test]
    fn each_tenant_has_its_own_bucket() {
        let rate = EventRate::new(&QuotaPlan::uniform(QUOTAS));
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

    #[test]
    fn a_tenant_with_limits_of_its_own_gets_its_own_bucket() {
        let plan = QuotaPlan::with_overrides(QUOTAS, "big:events_burst=50").unwrap();
        let rate = EventRate::new(&plan);
        assert!(rate.admit("big", 50).is_ok());
        assert!(rate.admit("big", 1).is_err());
        assert!(rate.admit("small", 5).is_ok());
        assert!(rate.admit("small", 1).is_err());
    }
}
