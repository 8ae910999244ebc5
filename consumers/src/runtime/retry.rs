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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_from_100ms_up_to_the_maximum() {
        let mut b = Backoff::new(Duration::from_millis(500));
        let got: Vec<u128> = (0..5).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(got, [100, 200, 400, 500, 500]);
    }

    #[test]
    fn a_maximum_below_the_first_pause_caps_it() {
        let mut b = Backoff::new(Duration::from_millis(30));
        assert_eq!(b.next_delay(), Duration::from_millis(30));
        assert_eq!(b.next_delay(), Duration::from_millis(30));
    }
}
