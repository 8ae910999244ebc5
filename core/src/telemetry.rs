//! Internal events: one type per thing that happens inside Weir, whose
//! `emit()` writes the log line and the metric together, so that a log and
//! its counter can never disagree (Vector's way).
//!
//! Two shapes:
//! - [`InternalEvent`]: a one-off event, built and emitted at its site
//!   (`BatchCommitted { records, .. }.emit()`).
//! - [`RegisterInternalEvent`] + [`InternalEventHandle`]: an event on a hot
//!   path, whose metric handles are looked up once (at registration, with
//!   their labels) and cached in the handle, rather than re-registered in the
//!   metrics registry on every call.

/// An event that writes its log line and its metrics when emitted.
pub trait InternalEvent: Sized {
    /// Writes the log line (if any) and updates the metrics.
    fn emit(self);
}

/// An event registered once with its labels; its handle emits cheaply.
pub trait RegisterInternalEvent: Sized {
    /// The handle holding the cached metric handles.
    type Handle: InternalEventHandle;
    /// Looks the metric handles up in the registry, once.
    fn register(self) -> Self::Handle;
}

/// The cached form of a registered event.
pub trait InternalEventHandle: Sized {
    /// What one emission carries (a count, a duration, …).
    type Data;
    /// Writes the log line (if any) and updates the cached metrics.
    fn emit(&self, data: Self::Data);
}

/// Counters of one metric by their label values, each registered once and
/// then kept, for hot paths whose labels are a small set known only at run
/// time (an event kind and an outcome, say).
pub struct CounterCache<const N: usize> {
    name: &'static str,
    labels: [&'static str; N],
    counters: std::sync::RwLock<Vec<([&'static str; N], metrics::Counter)>>,
}

impl<const N: usize> CounterCache<N> {
    /// A cache for the metric `name` with label names `labels`.
    pub const fn new(name: &'static str, labels: [&'static str; N]) -> Self {
        CounterCache {
            name,
            labels,
            counters: std::sync::RwLock::new(Vec::new()),
        }
    }

    /// The counter for these label values, registered on first use.
    pub fn get(&self, values: [&'static str; N]) -> metrics::Counter {
        if let Some((_, c)) = self
            .counters
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .find(|(v, _)| *v == values)
        {
            return c.clone();
        }
        let labels: Vec<metrics::Label> = self
            .labels
            .iter()
            .zip(values)
            .map(|(k, v)| metrics::Label::from_static_parts(k, v))
            .collect();
        let c = metrics::counter!(self.name, labels);
        self.counters
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .push((values, c.clone()));
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    static SEEN: AtomicU64 = AtomicU64::new(0);

    struct Counted(u64);
    impl InternalEvent for Counted {
        fn emit(self) {
            SEEN.fetch_add(self.0, Ordering::Relaxed);
        }
    }

    struct Registered;
    struct Handle(metrics::Counter);
    impl RegisterInternalEvent for Registered {
        type Handle = Handle;
        fn register(self) -> Handle {
            Handle(metrics::counter!("weir_test_total"))
        }
    }
    impl InternalEventHandle for Handle {
        type Data = u64;
        fn emit(&self, n: u64) {
            self.0.increment(n);
            SEEN.fetch_add(n, Ordering::Relaxed);
        }
    }

    #[test]
    fn the_cache_registers_each_label_set_once() {
        static CACHE: CounterCache<2> = CounterCache::new("weir_test_cache_total", ["a", "b"]);
        CACHE.get(["x", "y"]).increment(1);
        CACHE.get(["x", "y"]).increment(1);
        CACHE.get(["x", "z"]).increment(1);
        assert_eq!(CACHE.counters.read().expect("lock").len(), 2);
    }

    #[test]
    fn events_and_handles_emit() {
        Counted(2).emit();
        let h = Registered.register();
        h.emit(3);
        h.emit(4);
        assert_eq!(SEEN.load(Ordering::Relaxed), 9);
    }
}
