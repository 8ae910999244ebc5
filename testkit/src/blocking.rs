//! Async work from synchronous places (`Drop`, a readiness probe): blocking
//! on a future is not allowed inside a tokio runtime, and a drop may run in
//! one or not, so the work runs to completion on a thread of its own with a
//! small runtime.

use std::future::Future;

/// Runs `work` to completion on a fresh thread and runtime; `None` when the
/// runtime could not be built or the work panicked. Cleanups ignore the
/// result: one that cannot run leaves a uniquely named leftover, not a
/// broken test.
pub(crate) fn on_own_thread<T, F, Fut>(work: F) -> Option<T>
where
    T: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = T>,
{
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .ok()
            .map(|rt| rt.block_on(work()))
    })
    .join()
    .ok()
    .flatten()
}
