//! The would-deny ratio of audited requests, which can hold a stepped rollout. Requests
//! only bump two atomics; a driver samples them and measures over a sliding window.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};

use jiff::Timestamp;

use crate::api::DenyRatioPause;
use crate::keys::lifecycle::add;

/// Counts of audited requests (outside enforcement) and of those among them that would
/// have been refused. Kept across recompiles of a policy.
#[derive(Default, Debug)]
pub struct AuditCounters {
    audited: AtomicU64,
    would_deny: AtomicU64,
}

impl AuditCounters {
    pub fn record(&self, would_deny: bool) {
        self.audited.fetch_add(1, Ordering::Relaxed);
        if would_deny {
            self.would_deny.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// (audited, would deny) so far.
    pub fn totals(&self) -> (u64, u64) {
        (
            self.audited.load(Ordering::Relaxed),
            self.would_deny.load(Ordering::Relaxed),
        )
    }
}

/// Samples of the counters, enough to span the window.
#[derive(Default, Debug)]
pub struct DenyWindow {
    samples: VecDeque<(Timestamp, u64, u64)>,
}

impl DenyWindow {
    /// When the newest sample was taken.
    pub fn last_sample(&self) -> Option<Timestamp> {
        self.samples.back().map(|(t, _, _)| *t)
    }

    /// Records the totals at `now`; `Some(Some(why))` when the ratio over the window is
    /// above the rule's, `Some(None)` when it is not, `None` when too few audited requests
    /// say either way (a held rollout stays held until traffic shows it may go on).
    pub fn observe(
        &mut self,
        now: Timestamp,
        totals: (u64, u64),
        rule: &DenyRatioPause,
    ) -> Option<Option<String>> {
        self.samples.push_back((now, totals.0, totals.1));
        let window = rule.window.value();
        let start = add(now, -window);
        // Keep the newest sample at or before the window's start: the base to subtract.
        while self.samples.len() > 1 && self.samples[1].0 <= start {
            self.samples.pop_front();
        }
        let (base, audited0, denied0) = *self.samples.front()?;
        // Sampling stopped for a while (a lost lease, a stopped driver): a base far older
        // than the window would measure hours, not the window. Start again from here.
        if base < add(start, -window) {
            self.samples.retain(|(t, _, _)| *t == now);
            return None;
        }
        let audited = totals.0.saturating_sub(audited0);
        let denied = totals.1.saturating_sub(denied0);
        if audited == 0 || audited < u64::from(rule.min_requests) {
            return None;
        }
        let ratio = denied as f64 / audited as f64;
        Some((ratio > rule.ratio).then(|| {
            format!(
                "{:.1}% of {audited} audited requests in the last {} would be refused, above {:.1}%",
                ratio * 100.0,
                rule.window,
                rule.ratio * 100.0
            )
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule() -> DenyRatioPause {
        serde_yaml::from_str("{ratio: 0.1, window: 1m, minRequests: 10}").unwrap()
    }

    #[test]
    fn holds_above_the_ratio_within_the_window_only() {
        let t0: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let at = |s: i64| add(t0, jiff::SignedDuration::from_secs(s));
        let mut window = DenyWindow::default();
        assert_eq!(window.observe(at(0), (0, 0), &rule()), None);
        // 5 of 20 would be refused: 25% > 10%.
        assert!(
            window
                .observe(at(10), (20, 5), &rule())
                .is_some_and(|h| h.is_some())
        );
        // Too few requests say nothing.
        let mut fresh = DenyWindow::default();
        fresh.observe(at(0), (0, 0), &rule());
        assert_eq!(fresh.observe(at(1), (5, 5), &rule()), None);
        // A minute later only clean traffic is in the window.
        assert_eq!(window.observe(at(75), (120, 5), &rule()), Some(None));
        // After an hour without samples nothing is measured until the window refills.
        assert_eq!(window.observe(at(3675), (500, 300), &rule()), None);
        assert!(
            window
                .observe(at(3685), (520, 310), &rule())
                .is_some_and(|h| h.is_some())
        );
    }
}
