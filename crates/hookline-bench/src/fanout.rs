//! The subscriptions of the many-subscriptions scenario: per tenant one `*`, one
//! `resource.*` per resource, and exact types for the rest, so that an event of a
//! random type matches a few subscriptions of its tenant (3.3 on average with 50 a
//! tenant), not dozens.

use crate::load::{catalogue, RESOURCES};

/// The type pattern of subscription `j` of tenant `t`.
pub fn pattern(t: usize, j: usize, types: &[String]) -> String {
    match j {
        0 => "*".to_owned(),
        j if j <= RESOURCES.len() => format!("{}.*", RESOURCES[j - 1]),
        // 7 is prime to the 32 types: consecutive subscriptions take distinct types.
        j => types[(j * 7 + t * 3) % types.len()].clone(),
    }
}

/// Whether `pattern` (exact, `prefix.*` or `*`) matches `event_type`, as the router
/// matches them.
pub fn matches(pattern: &str, event_type: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some("") => true,
        Some(prefix) => prefix.ends_with('.') && event_type.starts_with(prefix),
        None => pattern == event_type,
    }
}

/// Subscriptions of each tenant matching each type, `table[t][k]`, tenant `t` having
/// `counts[t]` subscriptions.
pub fn table(counts: &[usize], types: &[String]) -> Vec<Vec<u32>> {
    counts
        .iter()
        .enumerate()
        .map(|(t, &count)| {
            let patterns: Vec<String> = (0..count).map(|j| pattern(t, j, types)).collect();
            types
                .iter()
                .map(|ty| patterns.iter().filter(|p| matches(p, ty)).count() as u32)
                .collect()
        })
        .collect()
}

/// Mean matches per event over all tenants and types alike.
#[cfg(test)]
pub fn mean(table: &[Vec<u32>]) -> f64 {
    let cells: Vec<u32> = table.iter().flatten().copied().collect();
    if cells.is_empty() {
        return 0.0;
    }
    cells.iter().map(|&n| f64::from(n)).sum::<f64>() / cells.len() as f64
}

/// The default type list.
pub fn types() -> Vec<String> {
    catalogue()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_like_the_router() {
        assert!(matches("*", "invoice.paid"));
        assert!(matches("invoice.*", "invoice.paid"));
        assert!(matches("invoice.*", "invoice.payment.failed"));
        assert!(!matches("invoice.*", "invoice"));
        assert!(!matches("invoice.*", "invoices.paid"));
        assert!(matches("invoice.paid", "invoice.paid"));
        assert!(!matches("invoice.paid", "invoice.paid.late"));
    }

    #[test]
    fn fifty_a_tenant_fan_out_to_a_few() {
        let types = types();
        let table = table(&[50; 20], &types);
        // Every event reaches `*` and its resource's prefix, plus one or two exact types.
        assert!(table.iter().flatten().all(|&n| (3..=4).contains(&n)));
        let mean = mean(&table);
        assert!((mean - (2.0 + 41.0 / 32.0)).abs() < 1e-9, "{mean}");
        // A tenant of one subscription (`*`) matches every type once.
        assert_eq!(self::table(&[1], &types), vec![vec![1; 32]]);
    }
}
