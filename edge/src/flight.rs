//! Single flight: however many requests miss the same object or slice at
//! once, one origin fetch runs and every waiter gets its result.
//!
//! The fetch runs in its own task, so a client that disconnects does not
//! cancel it for the others; waiters await a shared future (woken when it
//! completes, never polling), and the entry is removed by the task itself
//! once it is done, whoever is still waiting.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures::future::{BoxFuture, FutureExt, Shared};

use crate::origin::OriginError;

type Flight<T> = Shared<BoxFuture<'static, Result<T, OriginError>>>;

/// A running flight and its number, so that only it removes itself (a later
/// flight of the same key may have replaced it).
type Entry<T> = (u64, Flight<T>);

/// In-flight fetches by key.
pub struct Flights<K, T> {
    inflight: Arc<Mutex<HashMap<K, Entry<T>>>>,
    next: AtomicU64,
}

impl<K, T> Default for Flights<K, T> {
    fn default() -> Self {
        Flights {
            inflight: Arc::new(Mutex::new(HashMap::new())),
            next: AtomicU64::new(0),
        }
    }
}

/// Whether this caller started the fetch or joined one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Started it.
    Leader,
    /// Joined one already running.
    Waiter,
}

/// Removes a flight's entry when its task ends, however it ends: finished,
/// failed, cancelled or panicked. Without it a panicking fetch would leave
/// its entry behind, and every later request for the key would join a
/// flight that can only fail.
struct Landing<K: Eq + Hash, T> {
    inflight: Arc<Mutex<HashMap<K, Entry<T>>>>,
    key: Option<K>,
    id: u64,
}

impl<K: Eq + Hash, T> Drop for Landing<K, T> {
    fn drop(&mut self) {
        let Some(key) = self.key.take() else { return };
        let mut map = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
        if map.get(&key).is_some_and(|(id, _)| *id == self.id) {
            map.remove(&key);
        }
    }
}

impl<K, T> Flights<K, T>
where
    K: Eq + Hash + Clone + Send + 'static,
    T: Clone + Send + Sync + 'static,
{
    /// Runs `fetch` unless a fetch for `key` is already running, then waits
    /// for whichever runs.
    pub async fn run<F, Fut>(&self, key: K, fetch: F) -> (Result<T, OriginError>, Role)
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, OriginError>> + Send + 'static,
    {
        let (flight, role) = {
            let mut map = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((_, f)) = map.get(&key) {
                (f.clone(), Role::Waiter)
            } else {
                let fut = fetch();
                let id = self.next.fetch_add(1, Ordering::Relaxed);
                let landing = Landing {
                    inflight: self.inflight.clone(),
                    key: Some(key.clone()),
                    id,
                };
                let task = tokio::spawn(async move {
                    let _landing = landing;
                    fut.await
                });
                let flight: Flight<T> = async move {
                    task.await.unwrap_or_else(|e| {
                        Err(OriginError::Unavailable(format!("fetch task: {e}")))
                    })
                }
                .boxed()
                .shared();
                map.insert(key, (id, flight.clone()));
                (flight, Role::Leader)
            }
        };
        (flight.await, role)
    }

    /// Fetches running now.
    pub fn len(&self) -> usize {
        self.inflight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    /// True when nothing is being fetched.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    #[tokio::test]
    async fn one_fetch_for_many_waiters_errors_included() {
        let flights: Arc<Flights<String, u32>> = Arc::new(Flights::default());
        let runs = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..50 {
            let (f, runs) = (flights.clone(), runs.clone());
            tasks.push(tokio::spawn(async move {
                f.run("k".to_string(), || {
                    runs.fetch_add(1, Ordering::SeqCst);
                    async {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        Err::<u32, _>(OriginError::Timeout)
                    }
                })
                .await
            }));
        }
        let mut leaders = 0;
        for t in tasks {
            let (r, role) = t.await.expect("task");
            assert_eq!(r, Err(OriginError::Timeout));
            leaders += usize::from(role == Role::Leader);
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert_eq!(leaders, 1);
        assert!(flights.is_empty());
    }

    #[tokio::test]
    async fn a_cancelled_leader_does_not_cancel_the_fetch() {
        let flights: Arc<Flights<u8, u32>> = Arc::new(Flights::default());
        let f = flights.clone();
        let leader = tokio::spawn(async move {
            f.run(1, || async {
                tokio::time::sleep(Duration::from_millis(50)).await;
                Ok(7)
            })
            .await
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        leader.abort();
        let (r, role) = flights.run(1, || async { Ok(8) }).await;
        assert_eq!((r, role), (Ok(7), Role::Waiter));
    }

    #[tokio::test]
    async fn a_panicking_fetch_leaves_no_entry_behind() {
        let flights: Arc<Flights<u8, u32>> = Arc::new(Flights::default());
        let (r, _) = flights
            .run(1, || async {
                tokio::time::sleep(Duration::from_millis(10)).await;
                panic!("fill bug")
            })
            .await;
        assert!(matches!(r, Err(OriginError::Unavailable(_))), "{r:?}");
        assert!(flights.is_empty(), "the panicked flight is gone");
        let (r, role) = flights.run(1, || async { Ok(9) }).await;
        assert_eq!((r, role), (Ok(9), Role::Leader));
    }
}
