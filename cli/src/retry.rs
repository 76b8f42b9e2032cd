//! Bounded retries of the CLI's idempotent NATS calls.
//!
//! On a NATS cluster a JetStream request can go unanswered for a few
//! seconds while a stream elects a new leader (its node went down). A
//! daemon retries on its own schedule; a command retries only what is safe
//! to repeat (opening a bucket or the events stream, reading a key) for a
//! bounded time, and then fails as before. Writes are not retried: a
//! create or update whose answer was lost may have happened, and its
//! revision check would turn a retry into a false conflict.

use std::future::Future;
use std::time::Duration;

/// Most attempts of one call.
const MAX_ATTEMPTS: usize = 8;

/// How long a command keeps retrying one call: a few request timeouts,
/// past a typical leader election.
pub fn budget(timeout: Duration) -> Duration {
    (timeout * 4).max(Duration::from_secs(10))
}

/// Runs `call` until it succeeds, at most [`MAX_ATTEMPTS`] times and no
/// longer than `budget`; the last error when it never does.
pub async fn idempotent<T, E, F, Fut>(budget: Duration, mut call: F) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let deadline = tokio::time::Instant::now() + budget;
    let mut delays = rouse_nats::backoff::RESUBSCRIBE.delays();
    let mut attempt = 1;
    loop {
        let err = match call().await {
            Ok(value) => return Ok(value),
            Err(err) => err,
        };
        let delay = delays.next().unwrap_or_default();
        if attempt >= MAX_ATTEMPTS || tokio::time::Instant::now() + delay >= deadline {
            return Err(err);
        }
        attempt += 1;
        tokio::time::sleep(delay).await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_call_that_fails_twice_is_retried_until_it_succeeds() {
        let calls = AtomicUsize::new(0);
        let got: Result<usize, String> = idempotent(Duration::from_secs(10), || async {
            match calls.fetch_add(1, Ordering::SeqCst) {
                n if n < 2 => Err(format!("failure {n}")),
                n => Ok(n),
            }
        })
        .await;
        assert_eq!(got, Ok(2));
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_that_always_fails_gives_up_with_its_last_error() {
        let calls = AtomicUsize::new(0);
        let started = tokio::time::Instant::now();
        let got: Result<(), String> = idempotent(Duration::from_secs(600), || async {
            Err(format!("failure {}", calls.fetch_add(1, Ordering::SeqCst)))
        })
        .await;
        assert_eq!(got, Err(format!("failure {}", MAX_ATTEMPTS - 1)));
        assert_eq!(calls.load(Ordering::SeqCst), MAX_ATTEMPTS);
        assert!(started.elapsed() < Duration::from_secs(600));
    }

    #[tokio::test(start_paused = true)]
    async fn the_budget_bounds_the_retries() {
        let calls = AtomicUsize::new(0);
        let got: Result<(), &str> = idempotent(Duration::from_millis(600), || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err("down")
        })
        .await;
        assert_eq!(got, Err("down"));
        // 250 ms, then 500 ms would pass the 600 ms budget.
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn the_budget_is_a_few_timeouts_and_at_least_10s() {
        assert_eq!(budget(Duration::from_secs(5)), Duration::from_secs(20));
        assert_eq!(budget(Duration::from_secs(1)), Duration::from_secs(10));
    }
}
