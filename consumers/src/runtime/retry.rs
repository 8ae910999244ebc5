//! Pauses between attempts while a store is unavailable: exponential, from
//! 100 ms up to `consumer.retry_backoff_max`.

use std::time::Duration;

/// The next pause of a sequence of retries.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    /// First pause of every sequence.
    pub const FIRST: Duration = Duration::from_millis(100);

    pub fn new(max: Duration) -> Self {
        Backoff {
            next: Self::FIRST.min(max),
            max,
        }
    }

    /// The pause to take now; the following one doubles, up to the maximum.
    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        d
    }
}
