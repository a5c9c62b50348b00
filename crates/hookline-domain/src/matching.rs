//! The routing index: subscriptions by tenant and type pattern, so that matching an
//! event costs a few hash look-ups however many subscriptions exist.

use std::collections::HashMap;
use std::sync::Arc;

use crate::event::Event;
use crate::ids::SubscriptionId;
use crate::subscription::{EventTypePattern, Subscription};

/// Enabled subscriptions, indexed by tenant then by pattern.
#[derive(Debug, Default, Clone)]
pub struct SubscriptionIndex {
    by_id: HashMap<SubscriptionId, Arc<Subscription>>,
    tenants: HashMap<String, TenantRoutes>,
}

#[derive(Debug, Default, Clone)]
struct TenantRoutes {
    exact: HashMap<String, Vec<Arc<Subscription>>>,
    prefix: HashMap<String, Vec<Arc<Subscription>>>,
    all: Vec<Arc<Subscription>>,
}

impl TenantRoutes {
    fn slot(&mut self, pattern: &EventTypePattern) -> &mut Vec<Arc<Subscription>> {
        match pattern {
            EventTypePattern::Exact(t) => self.exact.entry(t.clone()).or_default(),
            EventTypePattern::Prefix(p) => self.prefix.entry(p.clone()).or_default(),
            EventTypePattern::All => &mut self.all,
        }
    }

    fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.prefix.is_empty() && self.all.is_empty()
    }
}

impl SubscriptionIndex {
    /// An empty index.
    pub fn new() -> Self {
        Self::default()
    }

    /// Every subscription held, enabled or not.
    pub fn get(&self, id: &str) -> Option<&Arc<Subscription>> {
        self.by_id.get(id)
    }

    /// All subscriptions held, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Subscription>> {
        self.by_id.values()
    }

    /// Number of subscriptions held.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Whether the index holds nothing.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// Adds or replaces a subscription.
    pub fn upsert(&mut self, subscription: Subscription) {
        self.remove(subscription.id());
        let subscription = Arc::new(subscription);
        // Only active subscriptions are routed to: not those disabled by their operator
        // or by the pipeline (health).
        if subscription.is_active() {
            let routes = self
                .tenants
                .entry(subscription.tenant().to_owned())
                .or_default();
            for pattern in subscription.event_types() {
                routes.slot(pattern).push(Arc::clone(&subscription));
            }
        }
        self.by_id.insert(subscription.id().clone(), subscription);
    }

    /// Removes a subscription; returns it if it was there.
    pub fn remove(&mut self, id: &str) -> Option<Arc<Subscription>> {
        let old = self.by_id.remove(id)?;
        if let Some(routes) = self.tenants.get_mut(old.tenant()) {
            for pattern in old.event_types() {
                let slot = routes.slot(pattern);
                slot.retain(|s| s.id() != id);
                if slot.is_empty() {
                    match pattern {
                        EventTypePattern::Exact(t) => drop(routes.exact.remove(t)),
                        EventTypePattern::Prefix(p) => drop(routes.prefix.remove(p)),
                        EventTypePattern::All => {}
                    }
                }
            }
            if routes.is_empty() {
                self.tenants.remove(old.tenant());
            }
        }
        Some(old)
    }

    /// Enabled subscriptions that receive `event`: the type index narrows them down,
    /// then channels and payload filters decide. Each once, ordered by id.
    pub fn matching_event(&self, event: &Event) -> Vec<Arc<Subscription>> {
        let mut found = self.matching(&event.tenant, &event.event_type);
        found.retain(|s| s.accepts_content(event));
        found
    }

    /// Enabled subscriptions of `tenant` whose type patterns match `event_type`, each
    /// once, ordered by id.
    pub fn matching(&self, tenant: &str, event_type: &str) -> Vec<Arc<Subscription>> {
        let Some(routes) = self.tenants.get(tenant) else {
            return Vec::new();
        };
        let mut found: Vec<Arc<Subscription>> = routes.all.clone();
        if let Some(subs) = routes.exact.get(event_type) {
            found.extend(subs.iter().cloned());
        }
        // Each dotted prefix of the type: "a.b.c" looks up "a" and "a.b".
        for (i, _) in event_type.match_indices('.') {
            if let Some(subs) = routes.prefix.get(&event_type[..i]) {
                found.extend(subs.iter().cloned());
            }
        }
        found.sort_by(|a, b| a.id().cmp(b.id()));
        found.dedup_by(|a, b| a.id() == b.id());
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sub(id: &str, tenant: &str, patterns: &[&str], enabled: bool) -> Subscription {
        let patterns = patterns
            .iter()
            .map(|p| EventTypePattern::parse(p).unwrap())
            .collect();
        Subscription::basic(
            id,
            tenant,
            "https://erp.example/hooks".parse().unwrap(),
            patterns,
        )
        .with_enabled(enabled)
    }

    fn ids(found: Vec<Arc<Subscription>>) -> Vec<String> {
        found.iter().map(|s| s.id().to_string()).collect()
    }

    #[test]
    fn matches_by_tenant_and_pattern_each_subscription_once() {
        let mut index = SubscriptionIndex::new();
        index.upsert(sub("s1", "acme", &["invoice.*", "invoice.paid"], true));
        index.upsert(sub("s2", "acme", &["payment.succeeded"], true));
        index.upsert(sub("s3", "acme", &["*"], true));
        index.upsert(sub("s4", "globex", &["invoice.paid"], true));
        index.upsert(sub("s5", "acme", &["invoice.paid"], false));
        assert_eq!(ids(index.matching("acme", "invoice.paid")), ["s1", "s3"]);
        assert_eq!(
            ids(index.matching("acme", "payment.succeeded")),
            ["s2", "s3"]
        );
        assert_eq!(ids(index.matching("acme", "expense.created")), ["s3"]);
        assert_eq!(ids(index.matching("globex", "invoice.paid")), ["s4"]);
        assert!(index.matching("initech", "invoice.paid").is_empty());
        assert_eq!(index.len(), 5);
    }

    #[test]
    fn replacing_and_removing_update_the_routes() {
        let mut index = SubscriptionIndex::new();
        index.upsert(sub("s1", "acme", &["invoice.*"], true));
        index.upsert(sub("s1", "acme", &["payment.*"], true));
        assert!(index.matching("acme", "invoice.paid").is_empty());
        assert_eq!(ids(index.matching("acme", "payment.failed")), ["s1"]);
        index.upsert(sub("s1", "acme", &["payment.*"], false));
        assert!(index.matching("acme", "payment.failed").is_empty());
        assert!(index.get("s1").is_some());
        assert!(index.remove("s1").is_some());
        assert!(index.is_empty());
        assert!(index.tenants.is_empty());
    }

    /// The index agrees with the plain definition (`Subscription::wants`) on a grid of
    /// tenants, patterns and types.
    #[test]
    fn index_agrees_with_linear_scan() {
        let patterns = ["*", "a.*", "a.b.*", "a.b", "a.b.c", "b.*", "b", "ab.*"];
        let types = ["a", "a.b", "a.b.c", "a.b.c.d", "ab.c", "b", "b.x", "c"];
        let mut index = SubscriptionIndex::new();
        let mut all = Vec::new();
        for (i, p) in patterns.iter().enumerate() {
            for tenant in ["t1", "t2"] {
                let s = sub(
                    &format!("s{i}{tenant}"),
                    tenant,
                    &[p, patterns[(i + 3) % patterns.len()]],
                    i % 5 != 4,
                );
                all.push(s.clone());
                index.upsert(s);
            }
        }
        for tenant in ["t1", "t2", "t3"] {
            for t in types {
                let mut expected: Vec<String> = all
                    .iter()
                    .filter(|s| s.wants(tenant, t))
                    .map(|s| s.id().to_string())
                    .collect();
                expected.sort();
                assert_eq!(ids(index.matching(tenant, t)), expected, "{tenant} {t}");
            }
        }
    }
}
