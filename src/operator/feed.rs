//! What the serving loop tells the leader's controllers: the objects it has just applied
//! and published. The controllers read the serving loop's caches instead of watching
//! the same objects again (one copy of each object in memory, not two), so this is how
//! they learn that something changed, and they learn it only once the change is served:
//! a SigningKey after its Secret is in the cache, an AuthPolicy after it is compiled.
//!
//! Announcements are sets, so a burst (a relist, a key named by many policies) asks for
//! each object once; and they are kept only while a controller listens (on the leader),
//! so a follower keeps nothing.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use futures::{Stream, StreamExt};
use kube::Resource;
use kube::runtime::reflector::ObjectRef;
use tokio::sync::Notify;

use crate::api::ObjectKey;

#[derive(Default)]
pub struct Feed {
    ids: Mutex<BTreeSet<ObjectKey>>,
    wake: Notify,
    listeners: AtomicUsize,
}

/// A listener's presence: counted while its trigger stream lives.
struct Listening(Arc<Feed>);

impl Drop for Listening {
    fn drop(&mut self) {
        if self.0.listeners.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.take();
        }
    }
}

impl Feed {
    pub fn announce(&self, ids: impl IntoIterator<Item = ObjectKey>) {
        if self.listeners.load(Ordering::SeqCst) == 0 {
            return;
        }
        let mut kept = self.ids.lock().unwrap_or_else(|e| e.into_inner());
        let before = kept.len();
        kept.extend(ids);
        if kept.len() != before {
            self.wake.notify_one();
        }
    }

    fn take(&self) -> BTreeSet<ObjectKey> {
        std::mem::take(&mut *self.ids.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// The objects announced from now on, for `Controller::reconcile_on`, until the
    /// stream is dropped (the lease is lost). A controller that starts reconciles every
    /// object anyway, so nothing from before is needed.
    pub fn triggers<K>(self: Arc<Self>) -> impl Stream<Item = ObjectRef<K>> + Send + 'static
    where
        K: Resource<DynamicType = ()> + 'static,
    {
        self.listeners.fetch_add(1, Ordering::SeqCst);
        let listening = Listening(self);
        futures::stream::unfold(listening, |listening| async move {
            loop {
                listening.0.wake.notified().await;
                let ids = listening.0.take();
                if !ids.is_empty() {
                    return Some((ids, listening));
                }
            }
        })
        .flat_map(|ids| {
            futures::stream::iter(
                ids.into_iter()
                    .map(|id| ObjectRef::new(&id.name).within(&id.namespace)),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::api::AuthPolicy;

    fn id(name: &str) -> ObjectKey {
        ObjectKey {
            namespace: "shop".into(),
            name: name.into(),
        }
    }

    #[tokio::test]
    async fn announcements_reach_the_controller_once_each_and_only_while_it_listens() {
        let feed = Arc::new(Feed::default());
        // Announced while no controller listened (a follower): nothing is kept, and a
        // new controller reconciles every object anyway.
        feed.announce([id("old")]);
        assert!(feed.take().is_empty(), "a follower keeps nothing");
        let mut triggers = Box::pin(feed.clone().triggers::<AuthPolicy>());
        feed.announce([id("pay"), id("cart")]);
        feed.announce([id("pay")]);
        let mut seen = Vec::new();
        for _ in 0..2 {
            let next = tokio::time::timeout(Duration::from_secs(10), triggers.next()).await;
            seen.push(next.expect("announced").expect("endless").name);
        }
        assert_eq!(
            seen,
            ["cart", "pay"],
            "each once, whatever the announcements"
        );
        assert!(
            futures::FutureExt::now_or_never(triggers.next()).is_none(),
            "nothing else"
        );
        // The lease is lost: the controller and its stream go, and nothing is kept.
        drop(triggers);
        feed.announce([id("later")]);
        assert!(feed.take().is_empty());
    }
}
