//! Per-tenant quotas on what tenant API keys may do: how many subscriptions a tenant
//! holds, how many events it publishes per request and per second. The rate itself is
//! metered by the API (a token bucket per tenant); the policy is here.

use std::time::Duration;

/// The limits every tenant gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TenantQuotas {
    /// Most subscriptions one tenant may hold.
    pub max_subscriptions: usize,
    /// Sustained events per second one tenant may publish.
    pub events_per_second: u32,
    /// Most events one tenant may publish in a burst; at least `max_batch_events`, so
    /// that every allowed batch can pass.
    pub events_burst: u32,
    /// Most events in one request.
    pub max_batch_events: usize,
}

/// A quota a request would exceed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuotaExceeded {
    /// The tenant holds its most subscriptions already.
    #[error("tenant `{tenant}` already holds {max} subscriptions, its most")]
    Subscriptions {
        /// The tenant.
        tenant: String,
        /// Its limit.
        max: usize,
    },
    /// The request holds more events than a tenant may send at once.
    #[error("at most {max} events per request for a tenant API key; this one holds {got}")]
    Batch {
        /// The limit.
        max: usize,
        /// Events in the request.
        got: usize,
    },
}

impl TenantQuotas {
    /// Checks that the limits can all be met together; the message names the settings.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_batch_events as u64 > u64::from(self.events_burst) {
            return Err(format!(
                "the tenant batch limit ({}) exceeds the tenant burst ({}): such a batch \
                 could never pass the rate limit",
                self.max_batch_events, self.events_burst
            ));
        }
        Ok(())
    }

    /// Passes when `tenant`, holding `existing` subscriptions, may create one more.
    pub fn allow_new_subscription(
        &self,
        tenant: &str,
        existing: usize,
    ) -> Result<(), QuotaExceeded> {
        if existing >= self.max_subscriptions {
            return Err(QuotaExceeded::Subscriptions {
                tenant: tenant.to_owned(),
                max: self.max_subscriptions,
            });
        }
        Ok(())
    }

    /// Passes when a request of `events` events is within the batch limit.
    pub fn allow_batch(&self, events: usize) -> Result<(), QuotaExceeded> {
        if events > self.max_batch_events {
            return Err(QuotaExceeded::Batch {
                max: self.max_batch_events,
                got: events,
            });
        }
        Ok(())
    }
}

/// The `Retry-After` (whole seconds, at least 1) of a request refused for `wait`.
pub fn retry_after_secs(wait: Duration) -> u64 {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    secs.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const QUOTAS: TenantQuotas = TenantQuotas {
        max_subscriptions: 2,
        events_per_second: 10,
        events_burst: 20,
        max_batch_events: 5,
    };

    #[test]
    fn subscriptions_stop_at_the_limit() {
        assert_eq!(QUOTAS.allow_new_subscription("acme", 0), Ok(()));
        assert_eq!(QUOTAS.allow_new_subscription("acme", 1), Ok(()));
        assert_eq!(
            QUOTAS.allow_new_subscription("acme", 2),
            Err(QuotaExceeded::Subscriptions {
                tenant: "acme".into(),
                max: 2
            })
        );
    }

    #[test]
    fn batches_stop_at_the_limit() {
        assert_eq!(QUOTAS.allow_batch(5), Ok(()));
        assert_eq!(
            QUOTAS.allow_batch(6),
            Err(QuotaExceeded::Batch { max: 5, got: 6 })
        );
    }

    #[test]
    fn a_batch_larger_than_the_burst_is_refused_at_start() {
        assert_eq!(QUOTAS.validate(), Ok(()));
        let never = TenantQuotas {
            events_burst: 4,
            ..QUOTAS
        };
        assert!(never.validate().unwrap_err().contains("burst"));
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(100)), 1);
        assert_eq!(retry_after_secs(Duration::from_secs(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1001)), 2);
    }
}
