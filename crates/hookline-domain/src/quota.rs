//! Per-tenant quotas on what tenant API keys may do: how many subscriptions a tenant
//! holds, how many events it publishes per request and per second. The rate itself is
//! metered by the API (a token bucket per tenant); the policy is here.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::event::validate_name;

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

/// The quotas of every tenant: the defaults, and tenants given other limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaPlan {
    /// The limits of every tenant not named in `tenants`.
    pub default: TenantQuotas,
    /// Tenants with limits of their own.
    pub tenants: BTreeMap<String, TenantQuotas>,
}

impl QuotaPlan {
    /// The same limits for every tenant.
    pub fn uniform(default: TenantQuotas) -> Self {
        Self {
            default,
            tenants: BTreeMap::new(),
        }
    }

    /// The limits of `tenant`.
    pub fn of(&self, tenant: &str) -> &TenantQuotas {
        self.tenants.get(tenant).unwrap_or(&self.default)
    }

    /// Reads overrides of the defaults, `;`-separated, each
    /// `<tenant>:<name>=<value>[,<name>=<value>…]` with names `max_subscriptions`,
    /// `events_per_second`, `events_burst`, `max_batch_events`, e.g.
    /// `acme:events_per_second=5000,events_burst=10000;globex:max_subscriptions=50`.
    /// A limit not named keeps its default. Every tenant's limits must fit together.
    pub fn with_overrides(default: TenantQuotas, text: &str) -> Result<Self, String> {
        let mut plan = Self::uniform(default);
        for entry in text.split(';').map(str::trim).filter(|e| !e.is_empty()) {
            let (tenant, limits) = entry
                .split_once(':')
                .ok_or_else(|| format!("`{entry}`: expected <tenant>:<name>=<value>,…"))?;
            let tenant = tenant.trim();
            validate_name(tenant).map_err(|reason| format!("`{entry}`: tenant {reason}"))?;
            if plan.tenants.contains_key(tenant) {
                return Err(format!("tenant `{tenant}` is given twice"));
            }
            let mut quotas = default;
            for limit in limits.split(',').map(str::trim) {
                let (name, value) = limit
                    .split_once('=')
                    .ok_or_else(|| format!("`{limit}` of `{tenant}`: expected <name>=<value>"))?;
                let value: u32 =
                    value
                        .trim()
                        .parse()
                        .ok()
                        .filter(|v| *v >= 1)
                        .ok_or_else(|| {
                            format!("`{limit}` of `{tenant}`: expected a number of at least 1")
                        })?;
                match name.trim() {
                    "max_subscriptions" => quotas.max_subscriptions = value as usize,
                    "events_per_second" => quotas.events_per_second = value,
                    "events_burst" => quotas.events_burst = value,
                    "max_batch_events" => quotas.max_batch_events = value as usize,
                    other => {
                        return Err(format!(
                            "`{other}` of `{tenant}` is no quota: expected max_subscriptions, \
                             events_per_second, events_burst or max_batch_events"
                        ))
                    }
                }
            }
            quotas
                .validate()
                .map_err(|reason| format!("tenant `{tenant}`: {reason}"))?;
            plan.tenants.insert(tenant.to_owned(), quotas);
        }
        Ok(plan)
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
    fn overrides_change_the_named_limits_of_the_named_tenants() {
        let plan = QuotaPlan::with_overrides(
            QUOTAS,
            " acme:events_per_second=500, events_burst=600 ; globex:max_subscriptions=1",
        )
        .unwrap();
        assert_eq!(plan.of("acme").events_per_second, 500);
        assert_eq!(plan.of("acme").events_burst, 600);
        assert_eq!(
            plan.of("acme").max_subscriptions,
            2,
            "unnamed limits keep the default"
        );
        assert_eq!(plan.of("globex").max_subscriptions, 1);
        assert_eq!(plan.of("initech"), &QUOTAS);
        assert_eq!(
            QuotaPlan::with_overrides(QUOTAS, "").unwrap(),
            QuotaPlan::uniform(QUOTAS)
        );
    }

    #[test]
    fn bad_overrides_are_refused_with_the_reason() {
        for (text, reason) in [
            ("acme", "expected <tenant>"),
            ("acme:events_per_second", "expected <name>=<value>"),
            ("acme:events_per_second=0", "at least 1"),
            ("acme:events_per_second=many", "at least 1"),
            ("acme:speed=5", "no quota"),
            ("acme:max_subscriptions=5;acme:max_subscriptions=6", "twice"),
            (":max_subscriptions=5", "tenant must not be empty"),
            ("acme:max_batch_events=50", "burst"),
        ] {
            let refused = QuotaPlan::with_overrides(QUOTAS, text).unwrap_err();
            assert!(refused.contains(reason), "{text}: {refused}");
        }
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(100)), 1);
        assert_eq!(retry_after_secs(Duration::from_secs(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1001)), 2);
    }
}
