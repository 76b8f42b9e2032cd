//! The retry delays rouse uses, in one place.
//!
//! Every loop that retries something outside the process (connecting to
//! NATS, re-opening a KV watch, re-subscribing, restarting a replica that
//! failed) waits on one of these schedules. They are backon's exponential
//! backoff with rouse's bounds; a [`Schedule`] is a description, so a loop
//! can restart its sequence after a success and a pure decision can ask for
//! the delay of attempt `n` without keeping an iterator.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};

/// An exponential schedule: `first`, doubling, capped at `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    pub first: Duration,
    pub max: Duration,
    /// Adds up to one more delay at random, so many proxies that lost the
    /// same server do not come back in lockstep.
    pub jitter: bool,
}

/// Reconnecting to NATS: 100 ms doubling to 2 s, jittered.
pub const RECONNECT: Schedule = Schedule {
    first: Duration::from_millis(100),
    max: Duration::from_secs(2),
    jitter: true,
};

/// Re-opening a subscription or a KV watch that failed: 250 ms doubling to 5 s.
pub const RESUBSCRIBE: Schedule = Schedule {
    first: Duration::from_millis(250),
    max: Duration::from_secs(5),
    jitter: false,
};

/// Starting a replica again after a failed start: 1 s doubling to 30 s.
pub const RESTART: Schedule = Schedule {
    first: Duration::from_secs(1),
    max: Duration::from_secs(30),
    jitter: false,
};

impl Schedule {
    /// The endless sequence of delays, from the first.
    pub fn delays(&self) -> Delays {
        let mut builder = ExponentialBuilder::new()
            .with_min_delay(self.first)
            .with_max_delay(self.max)
            .without_max_times();
        if self.jitter {
            builder = builder.with_jitter();
        }
        Delays {
            schedule: *self,
            inner: builder.build(),
        }
    }

    /// The delay before retry number `attempt` (0 for the first retry).
    pub fn nth(&self, attempt: usize) -> Duration {
        // Bounded: past 16 doublings any schedule here sits at its cap.
        self.delays().nth(attempt.min(16)).unwrap_or(self.max)
    }
}

/// The delays of a [`Schedule`], one per failed attempt; `reset` after a
/// success starts again from the first.
#[derive(Debug)]
pub struct Delays {
    schedule: Schedule,
    inner: ExponentialBackoff,
}

impl Delays {
    pub fn reset(&mut self) {
        *self = self.schedule.delays();
    }
}

impl Iterator for Delays {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        // The schedule has no limit on attempts, so `None` never comes; the
        // cap is a safe answer if it ever did.
        Some(self.inner.next().unwrap_or(self.schedule.max))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap() {
        let delays: Vec<_> = RESUBSCRIBE.delays().take(7).collect();
        let ms: Vec<u128> = delays.iter().map(Duration::as_millis).collect();
        assert_eq!(ms, [250, 500, 1000, 2000, 4000, 5000, 5000]);
        assert_eq!(RESTART.nth(0), Duration::from_secs(1));
        assert_eq!(RESTART.nth(5), Duration::from_secs(30));
        assert_eq!(RESTART.nth(usize::MAX), Duration::from_secs(30));
    }

    #[test]
    fn reset_starts_over() {
        let mut delays = RESUBSCRIBE.delays();
        delays.next();
        delays.next();
        delays.reset();
        assert_eq!(delays.next(), Some(Duration::from_millis(250)));
    }

    #[test]
    fn jitter_stays_within_one_more_delay() {
        for attempt in 0..8 {
            let base = Schedule {
                jitter: false,
                ..RECONNECT
            }
            .nth(attempt);
            let jittered = RECONNECT.nth(attempt);
            assert!(
                jittered >= base && jittered <= base * 2,
                "{attempt}: {jittered:?}"
            );
        }
    }
}
