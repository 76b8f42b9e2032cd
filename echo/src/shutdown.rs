//! One stop signal for everything a `rouse-echo` process runs.
//!
//! The HTTP server and the queue worker both have to notice SIGTERM /
//! SIGINT, and each at its own pace (the server drains requests, the worker
//! finishes the message in hand), so the signal is turned into a [`Stop`]
//! that any number of tasks can clone and wait on.

use std::io;
use std::time::Duration;

use tokio::sync::watch;

/// Tells whether the process was asked to stop, and waits until it is.
#[derive(Debug, Clone)]
pub struct Stop(watch::Receiver<bool>);

impl Stop {
    /// Installs the SIGTERM / SIGINT handlers (at once, so that a signal
    /// during start-up is a graceful stop, not the default kill) and returns
    /// the [`Stop`] they trigger.
    pub fn on_signals() -> io::Result<Stop> {
        let signal = shutdown_signal()?;
        let (stop, trigger) = Stop::new();
        tokio::spawn(async move {
            signal.await;
            trigger();
        });
        Ok(stop)
    }

    /// A [`Stop`] and the function that triggers it.
    pub fn new() -> (Stop, impl FnOnce()) {
        let (sender, receiver) = watch::channel(false);
        let trigger = move || {
            // Nobody left to tell is fine.
            let _ = sender.send(true);
        };
        (Stop(receiver), trigger)
    }

    /// Whether the stop was triggered.
    pub fn is_stopped(&self) -> bool {
        *self.0.borrow()
    }

    /// Completes once the stop is triggered (at once if it was). A trigger
    /// dropped without firing never completes it.
    pub async fn stopped(mut self) {
        if self.0.wait_for(|stopped| *stopped).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// Sleeps for `delay` unless the stop comes first; true when it did.
    pub async fn sleep(&self, delay: Duration) -> bool {
        tokio::select! {
            () = tokio::time::sleep(delay) => self.is_stopped(),
            () = self.clone().stopped() => true,
        }
    }
}

#[cfg(unix)]
fn shutdown_signal() -> io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = terminate.recv() => {}
            _ = interrupt.recv() => {}
        }
    })
}

#[cfg(not(unix))]
fn shutdown_signal() -> io::Result<impl std::future::Future<Output = ()>> {
    Ok(async {
        if let Err(err) = tokio::signal::ctrl_c().await {
            tracing::warn!(%err, "cannot listen for ctrl-c");
            std::future::pending::<()>().await;
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_clone_sees_the_trigger() {
        let (stop, trigger) = Stop::new();
        let other = stop.clone();
        assert!(!stop.is_stopped());
        assert!(!stop.sleep(Duration::from_millis(1)).await);
        trigger();
        assert!(other.is_stopped());
        other.clone().stopped().await;
        assert!(stop.sleep(Duration::from_secs(600)).await);
    }
}
