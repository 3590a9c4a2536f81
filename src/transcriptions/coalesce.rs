//! Request coalescing ("single flight"): concurrent reads of one key share one query.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Shared};

type InFlight<K, V> = Arc<Mutex<HashMap<K, Shared<BoxFuture<'static, V>>>>>;

/// Runs at most one computation per key at a time; callers that arrive while
/// it runs wait for the same result instead of starting their own. Clones
/// share the computations in flight (one coalescer serves every worker).
pub(crate) struct Coalescer<K, V: Clone> {
    in_flight: InFlight<K, V>,
}

impl<K, V: Clone> Clone for Coalescer<K, V> {
    fn clone(&self) -> Self {
        Self {
            in_flight: Arc::clone(&self.in_flight),
        }
    }
}

impl<K, V> Coalescer<K, V>
where
    K: Eq + Hash + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    /// A coalescer with nothing in flight.
    pub(crate) fn new() -> Self {
        Self {
            in_flight: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// The result for `key`, computed by `start` unless a computation for
    /// `key` is already running. The flag says whether this call joined one.
    ///
    /// The computation runs in its own task, on the caller's thread (an HTTP
    /// worker's, inside its `LocalSet`: its pool lives there): a caller that goes
    /// away (client disconnect) never cancels a query that others are waiting
    /// on, and a query is never cut off mid-protocol on its connection.
    pub(crate) async fn run<F, Fut>(
        &self,
        key: K,
        start: F,
        on_panic: impl FnOnce() -> V + Send + 'static,
    ) -> (V, bool)
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = V> + 'static,
    {
        let (shared, joined) = {
            let mut map = self
                .in_flight
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            match map.get(&key) {
                Some(running) => (running.clone(), true),
                None => {
                    let task = tokio::task::spawn_local(start());
                    let in_flight = Arc::clone(&self.in_flight);
                    let task_key = key.clone();
                    let shared = async move {
                        let value = task.await.unwrap_or_else(|_| on_panic());
                        // Later callers must start a fresh read: remove before answering.
                        in_flight
                            .lock()
                            .unwrap_or_else(|poisoned| poisoned.into_inner())
                            .remove(&task_key);
                        value
                    }
                    .boxed()
                    .shared();
                    map.insert(key, shared.clone());
                    (shared, false)
                }
            }
        };
        (shared.await, joined)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[tokio::test]
    async fn concurrent_calls_for_one_key_share_one_computation() {
        tokio::task::LocalSet::new()
            .run_until(share_one_computation())
            .await;
    }

    async fn share_one_computation() {
        let coalescer = Arc::new(Coalescer::<u64, u64>::new());
        let runs = Arc::new(AtomicUsize::new(0));
        let mut calls = Vec::new();
        for _ in 0..50 {
            let (coalescer, runs) = (Arc::clone(&coalescer), Arc::clone(&runs));
            calls.push(tokio::task::spawn_local(async move {
                coalescer
                    .run(
                        7,
                        || async move {
                            runs.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            99
                        },
                        || 0,
                    )
                    .await
            }));
        }
        for call in calls {
            assert_eq!(call.await.unwrap().0, 99);
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        // Once finished, the next call computes afresh.
        let (value, joined) = coalescer.run(7, || async { 100 }, || 0).await;
        assert_eq!((value, joined), (100, false));
    }
}
