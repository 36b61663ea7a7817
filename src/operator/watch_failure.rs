//! Whether a watch is failing, so that a failure is logged once per episode and what
//! depends on it (a status message) does not flap while it retries.
//!
//! kube's watcher emits `Event::Init` at the start of every list, also of the attempts
//! that then fail: with a CRD that is not installed, each retry yields `Init` and then
//! the same error. Only a list that completes (`InitApply`, `InitDone`) or a change
//! (`Apply`, `Delete`) says the watch works again.
//!
//! Errors after a list are of two kinds. A watch that breaks mid-stream, or an error
//! event that does not end it, is resumed from the last version seen, and nothing is
//! emitted when that works: counted as failing, such a watch would stay "failing" until
//! the next change (a mesh ConfigMap that never changes: for ever), though what it listed
//! still holds. Those are not failures here. A watch that cannot be started again (the
//! apiserver restarting, the CRD gone) is one; kube would retry it silently too, so
//! [`watch`] starts over from a list then, whose completion says it works again.

use std::sync::Arc;
use std::time::Duration;

use futures::stream::{BoxStream, StreamExt};
use kube::Api;
use kube::runtime::{WatchStreamExt, watcher};
use serde::de::DeserializeOwned;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WatchFailure(Option<String>);

impl WatchFailure {
    /// Notes that the watch failed with `error`. True when it was not failing before:
    /// the caller logs it then, and only then. A break that the watcher resumes from
    /// (see the module's comment) is not a failure: false, nothing noted.
    pub fn failed(&mut self, error: &watcher::Error) -> bool {
        if !in_doubt(error) {
            tracing::debug!("a watch broke and resumes: {error}");
            return false;
        }
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

/// Whether what a watch listed is in doubt after `error`: not after a break the watcher
/// resumes from the version it had (a stream that failed, an error event other than 410
/// Gone, which makes it list again).
fn in_doubt(error: &watcher::Error) -> bool {
    match error {
        watcher::Error::WatchFailed(_) => false,
        watcher::Error::WatchError(status) => status.code == 410,
        _ => true,
    }
}

/// kube's watcher of `api` with its default backoff, started over from a list each time
/// it fails to start a watch (see the module's comment): the list that completes then
/// says the watch works again.
pub fn watch<K>(
    api: Api<K>,
    config: watcher::Config,
) -> BoxStream<'static, Result<watcher::Event<K>, watcher::Error>>
where
    K: kube::Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    restarted_after_start_failure(Arc::new(move || {
        watcher::watcher(api.clone(), config.clone())
            .default_backoff()
            .boxed()
    }))
}

type Events<K> = BoxStream<'static, Result<watcher::Event<K>, watcher::Error>>;
/// Starts a watcher's stream.
type Start<K> = Arc<dyn Fn() -> Events<K> + Send + Sync>;

/// The first wait before a watcher is started over, doubled at each start failure in a
/// row up to [`MOST_BEFORE_RESTART`]: a watch the apiserver refuses while it allows the
/// list (RBAC granting `list` without `watch`) must not make a list a second.
const FIRST_BEFORE_RESTART: Duration = Duration::from_secs(1);
const MOST_BEFORE_RESTART: Duration = Duration::from_secs(60);

/// The stream `start` makes, made again (after a wait) after each `WatchStartFailed` it
/// yields, which is passed on. The wait is back to its first once the watch delivers a
/// change.
fn restarted_after_start_failure<K: Send + 'static>(start: Start<K>) -> Events<K> {
    let first = start();
    futures::stream::unfold(
        (first, start, FIRST_BEFORE_RESTART),
        |(mut current, start, mut wait)| async move {
            let item = current.next().await?;
            match &item {
                Err(watcher::Error::WatchStartFailed(_)) => {
                    let again = Arc::clone(&start);
                    current = futures::stream::once(tokio::time::sleep(wait))
                        .flat_map(move |()| again())
                        .boxed();
                    wait = (wait * 2).min(MOST_BEFORE_RESTART);
                }
                Ok(watcher::Event::Apply(_) | watcher::Event::Delete(_)) => {
                    wait = FIRST_BEFORE_RESTART;
                }
                _ => {}
            }
            Some((item, (current, start, wait)))
        },
    )
    .boxed()
}

#[cfg(test)]
mod tests {
    use watcher::Event;

    use super::*;

    #[test]
    fn a_watch_retrying_a_list_that_fails_stays_failing_and_is_reported_once() {
        let mut failure = WatchFailure::default();
        let not_found =
            || watcher::Error::InitialListFailed(kube::Error::LinesCodecMaxLineLengthExceeded);
        assert!(failure.failed(&not_found()));
        // Each retry starts a list (`Init`), which then fails the same way.
        for _ in 0..50 {
            assert!(!failure.observed(&Event::<()>::Init));
            assert!(!failure.failed(&not_found()));
            assert_eq!(failure.why(), Some(not_found().to_string().as_str()));
        }
        // A list that completes: working again, said once.
        assert!(!failure.observed(&Event::<()>::Init));
        assert!(failure.observed(&Event::<()>::InitDone));
        assert_eq!(failure.why(), None);
        assert!(!failure.observed(&Event::<()>::InitDone));
        assert!(failure.failed(&start_failed()));
        assert!(failure.observed(&Event::Apply(())));
    }

    fn start_failed() -> watcher::Error {
        watcher::Error::WatchStartFailed(kube::Error::LinesCodecMaxLineLengthExceeded)
    }

    fn status(code: u16) -> watcher::Error {
        watcher::Error::WatchError(Box::new(kube::core::Status {
            code,
            ..Default::default()
        }))
    }

    /// A watch that breaks mid-stream resumes silently: counted as failing, it would
    /// stay so until the next change.
    #[test]
    fn a_break_the_watcher_resumes_from_is_not_a_failure() {
        let mut failure = WatchFailure::default();
        let broke = watcher::Error::WatchFailed(kube::Error::LinesCodecMaxLineLengthExceeded);
        assert!(!failure.failed(&broke));
        assert!(!failure.failed(&status(500)));
        assert_eq!(failure.why(), None);
        // 410 Gone: a list follows, and says when it works again.
        assert!(failure.failed(&status(410)));
        assert!(failure.observed(&Event::<()>::InitDone));
        assert!(failure.failed(&start_failed()));
    }

    /// Scripted watcher streams, one per start.
    fn scripted(runs: Vec<Vec<Result<Event<u32>, watcher::Error>>>) -> Start<u32> {
        let runs = std::sync::Mutex::new(runs.into_iter());
        let start = move || {
            let run = runs.lock().unwrap().next().unwrap_or_default();
            futures::stream::iter(run)
                .chain(futures::stream::pending())
                .boxed()
        };
        Arc::new(start)
    }

    /// A watch that cannot be started again is started over from a list (after a wait),
    /// whose completion says it works again: kube alone would retry the watch silently,
    /// and the watch would stay "failing" until the next change.
    #[tokio::test(start_paused = true)]
    async fn a_watch_that_cannot_be_started_again_starts_over_from_a_list() {
        let start = scripted(vec![
            vec![Ok(Event::Init), Ok(Event::InitDone), Err(start_failed())],
            vec![
                Ok(Event::Init),
                Ok(Event::InitApply(7)),
                Ok(Event::InitDone),
            ],
        ]);
        let mut events = restarted_after_start_failure(start);
        let mut failure = WatchFailure::default();
        let mut next = async || events.next().await.unwrap();
        assert!(matches!(next().await, Ok(Event::Init)));
        assert!(matches!(next().await, Ok(Event::InitDone)));
        let Err(e) = next().await else {
            panic!("expected the start failure")
        };
        assert!(failure.failed(&e));
        let waited = tokio::time::Instant::now();
        assert!(!failure.observed(&next().await.unwrap()));
        assert!(waited.elapsed() >= FIRST_BEFORE_RESTART);
        assert!(matches!(next().await, Ok(Event::InitApply(7))));
        assert!(failure.observed(&next().await.unwrap()));
        assert_eq!(failure.why(), None);
    }

    /// Start failures in a row wait longer each time (a watch refused while its list is
    /// allowed must not make a list a second), up to a bound; a change resets the wait.
    #[tokio::test(start_paused = true)]
    async fn restarts_back_off_until_the_watch_delivers_a_change() {
        let failing_run = || vec![Ok(Event::Init), Ok(Event::InitDone), Err(start_failed())];
        let mut runs: Vec<_> = (0..9).map(|_| failing_run()).collect();
        runs.push(vec![
            Ok(Event::Init),
            Ok(Event::InitDone),
            Ok(Event::Apply(1)),
            Err(start_failed()),
        ]);
        runs.push(vec![Ok(Event::Init)]);
        let start = scripted(runs);
        let mut events = restarted_after_start_failure(start);
        let mut waits = Vec::new();
        let mut since = tokio::time::Instant::now();
        loop {
            match events.next().await.unwrap() {
                Ok(Event::Init) => {
                    waits.push(since.elapsed().as_secs());
                    if waits.len() == 11 {
                        break;
                    }
                }
                Err(_) => since = tokio::time::Instant::now(),
                Ok(_) => {}
            }
        }
        assert_eq!(waits, [0, 1, 2, 4, 8, 16, 32, 60, 60, 60, 1]);
    }
}
