//! Whether a watch is failing, so that a failure is logged once per episode and what
//! depends on it (a status message) does not flap while it retries.
//!
//! kube's watcher emits `Event::Init` at the start of every list, also of the attempts
//! that then fail: with a CRD that is not installed, each retry yields `Init` and then
//! the same error. Only a list that completes (`InitApply`, `InitDone`) or a change
//! (`Apply`, `Delete`) says the watch works again.

use kube::runtime::watcher;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WatchFailure(Option<String>);

impl WatchFailure {
    /// Notes that the watch failed with `error`. True when it was not failing before:
    /// the caller logs it then, and only then.
    pub fn failed(&mut self, error: &impl std::fmt::Display) -> bool {
        self.0.replace(error.to_string()).is_none()
    }

    /// Notes an event of the watch. True when it was failing and this event says it works
    /// again: the caller logs the recovery then.
    pub fn observed<K>(&mut self, event: &watcher::Event<K>) -> bool {
        !matches!(event, watcher::Event::Init) && self.0.take().is_some()
    }

    /// Why the watch fails, while it does.
    pub fn why(&self) -> Option<&str> {
        self.0.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use watcher::Event;

    use super::*;

    #[test]
    fn a_watch_retrying_a_list_that_fails_stays_failing_and_is_reported_once() {
        let mut failure = WatchFailure::default();
        assert!(failure.failed(&"404 page not found"));
        // Each retry starts a list (`Init`), which then fails the same way.
        for _ in 0..50 {
            assert!(!failure.observed(&Event::<()>::Init));
            assert!(!failure.failed(&"404 page not found"));
            assert_eq!(failure.why(), Some("404 page not found"));
        }
        // A list that completes: working again, said once.
        assert!(!failure.observed(&Event::<()>::Init));
        assert!(failure.observed(&Event::<()>::InitDone));
        assert_eq!(failure.why(), None);
        assert!(!failure.observed(&Event::<()>::InitDone));
        assert!(failure.failed(&"connection refused"));
        assert!(failure.observed(&Event::Apply(())));
    }
}
