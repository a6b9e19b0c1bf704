//! Quota counters as both sides see them: proxies add to them, the operator reads them
//! for `AIQuota` status. One place decides windows, keys and units, so the two agree.
//!
//! Windows are fixed and aligned to UTC: a minute starts at :00, a day at midnight UTC,
//! a month on the 1st. Counters are integers: requests and tokens as they are, US
//! dollars in millionths (micro-dollars), so that atomic integer increments add up
//! exactly where floats would drift.

use k8s_openapi::jiff::tz::TimeZone;
use k8s_openapi::jiff::{Timestamp, ToSpan};

use crate::snapshot::QuotaLimit;
use crate::v1alpha1::{QuotaMetric, QuotaWindow};

/// The scope of a `Shared` quota's counters.
pub const SHARED_SCOPE: &str = "*";

/// Micro-dollars per US dollar.
const MICROS: f64 = 1_000_000.0;

/// The window containing `now` (Unix seconds), as `[start, end)` in Unix seconds.
pub fn window_bounds(window: QuotaWindow, now: i64) -> (i64, i64) {
    let fixed = |length: i64| {
        let start = now.div_euclid(length) * length;
        (start, start + length)
    };
    match window {
        QuotaWindow::Second => fixed(1),
        QuotaWindow::Minute => fixed(60),
        QuotaWindow::Hour => fixed(3_600),
        QuotaWindow::Day => fixed(86_400),
        QuotaWindow::Month => month_bounds(now).unwrap_or_else(|| fixed(86_400 * 30)),
    }
}

/// The calendar month (UTC) containing `now`; `None` only outside jiff's range.
fn month_bounds(now: i64) -> Option<(i64, i64)> {
    let date = Timestamp::from_second(now)
        .ok()?
        .to_zoned(TimeZone::UTC)
        .date();
    let first = date.first_of_month();
    let next = first.checked_add(1.month()).ok()?;
    let start = first.to_zoned(TimeZone::UTC).ok()?.timestamp().as_second();
    let end = next.to_zoned(TimeZone::UTC).ok()?.timestamp().as_second();
    Some((start, end))
}

/// The name of a limit in keys, metrics and status: `Metric/Window`.
pub fn limit_name(limit: &QuotaLimit) -> &'static str {
    use QuotaMetric as M;
    use QuotaWindow as W;
    match (limit.metric, limit.window) {
        (M::Requests, W::Second) => "Requests/Second",
        (M::Requests, W::Minute) => "Requests/Minute",
        (M::Requests, W::Hour) => "Requests/Hour",
        (M::Requests, W::Day) => "Requests/Day",
        (M::Requests, W::Month) => "Requests/Month",
        (M::InputTokens, W::Second) => "InputTokens/Second",
        (M::InputTokens, W::Minute) => "InputTokens/Minute",
        (M::InputTokens, W::Hour) => "InputTokens/Hour",
        (M::InputTokens, W::Day) => "InputTokens/Day",
        (M::InputTokens, W::Month) => "InputTokens/Month",
        (M::OutputTokens, W::Second) => "OutputTokens/Second",
        (M::OutputTokens, W::Minute) => "OutputTokens/Minute",
        (M::OutputTokens, W::Hour) => "OutputTokens/Hour",
        (M::OutputTokens, W::Day) => "OutputTokens/Day",
        (M::OutputTokens, W::Month) => "OutputTokens/Month",
        (M::TotalTokens, W::Second) => "TotalTokens/Second",
        (M::TotalTokens, W::Minute) => "TotalTokens/Minute",
        (M::TotalTokens, W::Hour) => "TotalTokens/Hour",
        (M::TotalTokens, W::Day) => "TotalTokens/Day",
        (M::TotalTokens, W::Month) => "TotalTokens/Month",
        (M::CostUsd, W::Second) => "CostUSD/Second",
        (M::CostUsd, W::Minute) => "CostUSD/Minute",
        (M::CostUsd, W::Hour) => "CostUSD/Hour",
        (M::CostUsd, W::Day) => "CostUSD/Day",
        (M::CostUsd, W::Month) => "CostUSD/Month",
    }
}

/// The counter of `limit` of quota `quota` (`namespace/name`) for `scope` (a consumer
/// id, or `SHARED_SCOPE`) in the window starting at `window_start`. Two limits of one
/// quota with the same metric and window count the same thing, so they share a
/// counter. The `{sb}` hash tag keeps every counter in one Redis Cluster slot, so one
/// script can touch all of a request's counters.
pub fn counter_key(quota: &str, limit: &QuotaLimit, scope: &str, window_start: i64) -> String {
    format!(
        "{{sb}}:quota:{quota}:{}:{scope}:{window_start}",
        limit_name(limit)
    )
}

/// `amount` of `metric` in counter units (micro-dollars for cost), rounded up so that
/// a reservation never counts less than it stands for.
pub fn to_units(metric: QuotaMetric, amount: f64) -> i64 {
    let units = match metric {
        QuotaMetric::CostUsd => amount * MICROS,
        _ => amount,
    };
    // Saturating: a limit of 1e300 is "no limit", not an overflow.
    units.ceil().clamp(i64::MIN as f64, i64::MAX as f64) as i64
}

/// Counter units back in the limit's own unit.
pub fn from_units(metric: QuotaMetric, units: i64) -> f64 {
    match metric {
        QuotaMetric::CostUsd => units as f64 / MICROS,
        _ => units as f64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_are_aligned_to_utc() {
        // 2026-12-02T03:29:48Z
        let now = 1_796_182_188;
        assert_eq!(window_bounds(QuotaWindow::Second, now), (now, now + 1));
        assert_eq!(
            window_bounds(QuotaWindow::Minute, now),
            (1_796_182_140, 1_796_182_200)
        );
        assert_eq!(
            window_bounds(QuotaWindow::Day, now),
            (1_796_169_600, 1_796_256_000)
        );
        // December 2026: from the 1st to January 1st, 31 days.
        let (start, end) = window_bounds(QuotaWindow::Month, now);
        assert_eq!(start, 1_796_083_200, "2026-12-01T00:00:00Z");
        assert_eq!(end - start, 31 * 86_400);
        // February 2028 (a leap year) has 29 days.
        let (start, end) = window_bounds(QuotaWindow::Month, 1_832_976_000 + 86_400);
        assert_eq!(start, 1_832_976_000, "2028-02-01T00:00:00Z");
        assert_eq!(end - start, 29 * 86_400);
    }

    #[test]
    fn cost_counts_in_micro_dollars_rounded_up() {
        assert_eq!(to_units(QuotaMetric::CostUsd, 0.007), 7_000);
        assert_eq!(to_units(QuotaMetric::CostUsd, 0.000_000_1), 1);
        assert_eq!(from_units(QuotaMetric::CostUsd, 2_500_000), 2.5);
        assert_eq!(to_units(QuotaMetric::TotalTokens, 1024.0), 1024);
        assert_eq!(to_units(QuotaMetric::Requests, 1e300), i64::MAX);
    }

    #[test]
    fn limits_with_the_same_metric_and_window_share_a_counter() {
        let limit = |max| QuotaLimit {
            metric: QuotaMetric::TotalTokens,
            max,
            window: QuotaWindow::Day,
        };
        assert_eq!(
            counter_key("ns/q", &limit(10.0), "ns/app", 86_400),
            counter_key("ns/q", &limit(20.0), "ns/app", 86_400)
        );
        assert_eq!(
            counter_key("ns/q", &limit(10.0), SHARED_SCOPE, 86_400),
            "{sb}:quota:ns/q:TotalTokens/Day:*:86400"
        );
    }
}
