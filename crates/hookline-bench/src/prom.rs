//! The few parts of the Prometheus text exposition format the bench reads: samples
//! (`name{label="value",…} value [timestamp]`), the per-stage histograms
//! (`*_stage_duration_seconds_bucket{stage="…",le="…"}`), their deltas over a run, and
//! quantiles by linear interpolation within buckets, as `histogram_quantile` does.
//!
//! Pure functions over text; the scraping itself is in `main.rs`.

use std::collections::BTreeMap;

/// One sample line.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    /// The value of label `key`, if the sample has it.
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// Every sample of an exposition text; comments, blank and malformed lines are skipped.
pub fn parse(text: &str) -> Vec<Sample> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<Sample> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let name_end = line
        .find(|c: char| c == '{' || c.is_whitespace())
        .unwrap_or(line.len());
    let name = &line[..name_end];
    if name.is_empty() {
        return None;
    }
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(after_brace) = rest.strip_prefix('{') {
        let (parsed, after) = parse_labels(after_brace)?;
        labels = parsed;
        rest = after;
    }
    let value = parse_value(rest.split_whitespace().next()?)?;
    Some(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

/// Labels after the opening brace, up to and including the closing one; returns them
/// and the text after the brace.
fn parse_labels(mut s: &str) -> Option<(Vec<(String, String)>, &str)> {
    let mut labels = Vec::new();
    loop {
        s = s.trim_start_matches([' ', ',']);
        if let Some(after) = s.strip_prefix('}') {
            return Some((labels, after));
        }
        let eq = s.find('=')?;
        let key = s[..eq].trim().to_owned();
        s = s[eq + 1..].trim_start().strip_prefix('"')?;
        let mut value = String::new();
        let mut chars = s.char_indices();
        let end = loop {
            let (i, c) = chars.next()?;
            match c {
                '"' => break i,
                '\\' => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                other => value.push(other),
            }
        };
        labels.push((key, value));
        s = &s[end + 1..];
    }
}

fn parse_value(text: &str) -> Option<f64> {
    match text {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        _ => text.parse().ok(),
    }
}

/// Sum of the samples named `name` (over all their labels); `None` when there is none.
pub fn sum(samples: &[Sample], name: &str) -> Option<f64> {
    let mut found = false;
    let total = samples
        .iter()
        .filter(|s| s.name == name)
        .inspect(|_| found = true)
        .map(|s| s.value)
        .sum();
    found.then_some(total)
}

/// Cumulative buckets of one histogram: (upper bound `le`, count), sorted by bound.
pub type Buckets = Vec<(f64, f64)>;

/// Suffix of the per-stage histograms' names (before `_bucket`).
pub const STAGE_SUFFIX: &str = "_stage_duration_seconds";

/// The per-stage histograms of an exposition: (metric name, `stage` label) to their
/// buckets, summed over any other label (partition, outcome, …).
pub fn stage_histograms(samples: &[Sample]) -> BTreeMap<(String, String), Buckets> {
    let mut out: BTreeMap<(String, String), Buckets> = BTreeMap::new();
    for sample in samples {
        let Some(metric) = sample.name.strip_suffix("_bucket") else {
            continue;
        };
        if !metric.ends_with(STAGE_SUFFIX) {
            continue;
        }
        let (Some(stage), Some(le)) = (
            sample.label("stage"),
            sample.label("le").and_then(parse_value),
        ) else {
            continue;
        };
        let buckets = out
            .entry((metric.to_owned(), stage.to_owned()))
            .or_default();
        match buckets.iter_mut().find(|(bound, _)| *bound == le) {
            Some((_, count)) => *count += sample.value,
            None => buckets.push((le, sample.value)),
        }
    }
    for buckets in out.values_mut() {
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    out
}

/// What `after` counted since `before` (same bounds; a bound missing before counts
/// from zero). A counter that went down (the process restarted) yields `after` whole.
pub fn delta(before: Option<&Buckets>, after: &Buckets) -> Buckets {
    let Some(before) = before else {
        return after.clone();
    };
    let mut out = Vec::with_capacity(after.len());
    for &(le, count) in after {
        let earlier = before
            .iter()
            .find(|(bound, _)| *bound == le)
            .map_or(0.0, |(_, c)| *c);
        if count < earlier {
            return after.clone();
        }
        out.push((le, count - earlier));
    }
    out
}

/// Total observations of cumulative buckets (the `+Inf` bucket's count).
pub fn total(buckets: &Buckets) -> f64 {
    buckets.last().map_or(0.0, |(_, c)| *c)
}

/// The `q` quantile (0..=1) of cumulative `buckets`, as Prometheus' `histogram_quantile`:
/// the bucket holding the rank, linear interpolation within it (from 0 for the first
/// bucket), and the highest finite bound when the rank falls into `+Inf`. `None` without
/// a `+Inf` bucket, with fewer than two buckets, or without observations.
pub fn quantile(q: f64, buckets: &Buckets) -> Option<f64> {
    if buckets.len() < 2 || buckets.last().is_none_or(|(le, _)| !le.is_infinite()) {
        return None;
    }
    // Counts must not decrease with the bound (they may, slightly, when scraped while
    // being updated); Prometheus evens them out the same way.
    let mut counts: Vec<f64> = Vec::with_capacity(buckets.len());
    for &(_, c) in buckets {
        let floor = counts.last().copied().unwrap_or(0.0);
        counts.push(c.max(floor));
    }
    let total = counts[counts.len() - 1];
    if total <= 0.0 || total.is_nan() {
        return None;
    }
    let q = q.clamp(0.0, 1.0);
    let mut rank = q * total;
    let last = buckets.len() - 1;
    let b = (0..last).find(|&i| counts[i] >= rank).unwrap_or(last);
    if b == last {
        return Some(buckets[last - 1].0);
    }
    if b == 0 && buckets[0].0 <= 0.0 {
        return Some(buckets[0].0);
    }
    let end = buckets[b].0;
    let (start, mut count) = (if b > 0 { buckets[b - 1].0 } else { 0.0 }, counts[b]);
    if b > 0 {
        count -= counts[b - 1];
        rank -= counts[b - 1];
    }
    if count <= 0.0 {
        return Some(end);
    }
    Some(start + (end - start) * (rank / count))
}

/// p50 and p99 of one stage over a run.
#[derive(Debug, Clone, PartialEq)]
pub struct StageStat {
    /// The binary the histogram was scraped from (`ingest`, `router`, `delivery`).
    pub binary: String,
    /// The metric's name (`hookline_router_stage_duration_seconds`).
    pub metric: String,
    pub stage: String,
    /// Observations during the run.
    pub count: f64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

/// The stages of one binary observed between two scrapes of its `/metrics`; stages
/// without observations in between are left out.
pub fn stage_stats(binary: &str, before: &str, after: &str) -> Vec<StageStat> {
    let before = stage_histograms(&parse(before));
    let after = stage_histograms(&parse(after));
    after
        .iter()
        .filter_map(|(key, buckets)| {
            let run = delta(before.get(key), buckets);
            let count = total(&run);
            (count > 0.0).then(|| StageStat {
                binary: binary.to_owned(),
                metric: key.0.clone(),
                stage: key.1.clone(),
                count,
                p50_ms: quantile(0.50, &run).map(|s| s * 1000.0),
                p99_ms: quantile(0.99, &run).map(|s| s * 1000.0),
            })
        })
        .collect()
}

/// When a counter sampled over time (seconds, value) first reached `target`, linearly
/// interpolated between the two samples around it; `None` if it never did.
pub fn crossing_time(samples: &[(f64, f64)], target: f64) -> Option<f64> {
    let mut previous: Option<(f64, f64)> = None;
    for &(t, v) in samples {
        if v >= target {
            return Some(match previous {
                Some((t0, v0)) if v > v0 => t0 + (t - t0) * ((target - v0) / (v - v0)),
                _ => t,
            });
        }
        previous = Some((t, v));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const BEFORE: &str = r#"# HELP hookline_router_stage_duration_seconds Time spent per stage.
# TYPE hookline_router_stage_duration_seconds histogram
hookline_router_stage_duration_seconds_bucket{stage="produced_to_routed",le="0.005"} 5
hookline_router_stage_duration_seconds_bucket{stage="produced_to_routed",le="0.01"} 10
hookline_router_stage_duration_seconds_bucket{stage="produced_to_routed",le="0.025"} 10
hookline_router_stage_duration_seconds_bucket{stage="produced_to_routed",le="+Inf"} 10
hookline_router_stage_duration_seconds_sum{stage="produced_to_routed"} 0.05
hookline_router_stage_duration_seconds_count{stage="produced_to_routed"} 10
hookline_router_events_total{outcome="routed"} 10
"#;

    // 100 more observations: 10 under 5 ms, 50 in (5, 10], 30 in (10, 25], 10 above.
    const AFTER: &str = r#"# HELP hookline_router_stage_duration_seconds Time spent per stage.
# TYPE hookline_router_stage_duration_seconds histogram
hookline_router_stage_duration_seconds_bucket{stage="produced_to_routed",le="0.005"} 15
hookline_router_stage_duration_seconds_bucket{stage="produced_to_routed",le="0.01"} 70
hookline_router_stage_duration_seconds_bucket{stage="produced_to_routed",le="0.025"} 100
hookline_router_stage_duration_seconds_bucket{stage="produced_to_routed",le="+Inf"} 110
hookline_router_stage_duration_seconds_sum{stage="produced_to_routed"} 1.35
hookline_router_stage_duration_seconds_count{stage="produced_to_routed"} 110
hookline_router_stage_duration_seconds_bucket{stage="routed_to_committed",le="0.01"} 0
hookline_router_stage_duration_seconds_bucket{stage="routed_to_committed",le="+Inf"} 0
hookline_router_events_total{outcome="routed"} 110
hookline_router_events_total{outcome="unmatched"} 3
hookline_router_tasks_total 440 1700000000000
"#;

    #[test]
    fn parses_names_labels_values_and_timestamps() {
        let samples = parse(AFTER);
        assert_eq!(samples.len(), 11);
        assert_eq!(samples[3].label("le"), Some("+Inf"));
        assert_eq!(samples[3].value, 110.0);
        assert_eq!(sum(&samples, "hookline_router_events_total"), Some(113.0));
        assert_eq!(sum(&samples, "hookline_router_tasks_total"), Some(440.0));
        assert_eq!(sum(&samples, "absent"), None);
    }

    #[test]
    fn label_values_may_hold_escapes_commas_and_braces() {
        let samples =
            parse("m{a=\"x,\\\"y\\\"}\",b=\"line\\nnext\",} 2.5e1\nnot a sample\n{x=\"1\"} 3\n");
        assert_eq!(samples.len(), 1);
        assert_eq!(samples[0].label("a"), Some("x,\"y\"}"));
        assert_eq!(samples[0].label("b"), Some("line\nnext"));
        assert_eq!(samples[0].value, 25.0);
    }

    #[test]
    fn quantiles_interpolate_within_buckets_of_the_run() {
        let stats = stage_stats("router", BEFORE, AFTER);
        // The stage without observations in the run is left out.
        assert_eq!(stats.len(), 1);
        let s = &stats[0];
        assert_eq!(s.metric, "hookline_router_stage_duration_seconds");
        assert_eq!(s.stage, "produced_to_routed");
        assert_eq!(s.count, 100.0);
        // Rank 50 of 100: in (5 ms, 10 ms], 40 of that bucket's 50 -> 5 + 5 * 0.8 = 9 ms.
        let p50 = s.p50_ms.unwrap_or(f64::NAN);
        assert!((p50 - 9.0).abs() < 1e-9, "p50 {p50}");
        // Rank 99 falls into +Inf: the highest finite bound.
        assert_eq!(s.p99_ms, Some(25.0));
    }

    #[test]
    fn first_bucket_interpolates_from_zero_and_other_labels_are_summed() {
        let text = r#"x_stage_duration_seconds_bucket{stage="s",partition="0",le="0.1"} 30
x_stage_duration_seconds_bucket{stage="s",partition="1",le="0.1"} 10
x_stage_duration_seconds_bucket{stage="s",partition="0",le="+Inf"} 30
x_stage_duration_seconds_bucket{stage="s",partition="1",le="+Inf"} 10
"#;
        let hists = stage_histograms(&parse(text));
        let buckets = &hists[&("x_stage_duration_seconds".to_owned(), "s".to_owned())];
        assert_eq!(buckets, &vec![(0.1, 40.0), (f64::INFINITY, 40.0)]);
        let p50 = quantile(0.5, buckets).unwrap_or(f64::NAN);
        assert!((p50 - 0.05).abs() < 1e-12, "p50 {p50}");
    }

    #[test]
    fn quantile_needs_inf_and_observations() {
        assert_eq!(quantile(0.5, &vec![(0.1, 3.0)]), None);
        assert_eq!(quantile(0.5, &vec![(0.1, 3.0), (0.2, 3.0)]), None);
        assert_eq!(quantile(0.5, &vec![(0.1, 0.0), (f64::INFINITY, 0.0)]), None);
        assert_eq!(quantile(0.5, &Vec::new()), None);
    }

    #[test]
    fn a_counter_reset_counts_from_zero() {
        let before = vec![(0.1, 50.0), (f64::INFINITY, 60.0)];
        let after = vec![(0.1, 4.0), (f64::INFINITY, 5.0)];
        assert_eq!(delta(Some(&before), &after), after);
        assert_eq!(delta(None, &after), after);
    }

    #[test]
    fn no_stage_histograms_no_stages() {
        assert!(stage_stats("ingest", "", "").is_empty());
        assert!(stage_stats("ingest", "", "up 1\n").is_empty());
    }

    #[test]
    fn crossing_interpolates_between_samples() {
        let samples = [(0.0, 0.0), (1.0, 40.0), (2.0, 100.0)];
        assert_eq!(crossing_time(&samples, 70.0), Some(1.5));
        assert_eq!(crossing_time(&samples, 0.0), Some(0.0));
        assert_eq!(crossing_time(&samples, 101.0), None);
    }
}
