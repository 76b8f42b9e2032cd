//! What a subject carries, collected from a core NATS subscription: the
//! `scaled` events a controller publishes (`<prefix>.scaled.<service>`), as
//! a user tailing the subject would see them, and anything else a test
//! listens to (a queue worker's done ids).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Deserialize;

/// One `scaled` event.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct Scaled {
    pub service: String,
    pub from: u32,
    pub to: u32,
    pub reason: String,
    /// The controller's wall clock, ms since the epoch.
    pub at_ms: u64,
}

/// Every message of one subject since [`Collected::subscribe`] that
/// `parse` accepts, in arrival order.
pub struct Collected<T> {
    seen: Arc<Mutex<Vec<T>>>,
    task: tokio::task::JoinHandle<()>,
}

impl<T: Clone + Send + 'static> Collected<T> {
    /// Subscribes to `subject` on `nats_url`; returns once the server has
    /// the subscription.
    pub async fn subscribe(
        nats_url: &str,
        subject: &str,
        parse: fn(&[u8]) -> Option<T>,
    ) -> anyhow::Result<Self> {
        let client = async_nats::connect(nats_url).await?;
        let mut subscriber = client.subscribe(subject.to_string()).await?;
        client.flush().await?;
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&seen);
        let task = tokio::spawn(async move {
            use futures::StreamExt;
            let _client = client;
            while let Some(message) = subscriber.next().await {
                if let Some(item) = parse(&message.payload) {
                    sink.lock().unwrap_or_else(|p| p.into_inner()).push(item);
                }
            }
        });
        Ok(Self { seen, task })
    }

    pub fn snapshot(&self) -> Vec<T> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Waits (at most `timeout`) for an item matching `predicate`.
    pub async fn wait_for(
        &self,
        desc: &str,
        timeout: Duration,
        predicate: impl Fn(&T) -> bool,
    ) -> anyhow::Result<T>
    where
        T: std::fmt::Debug,
    {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(found) = self.snapshot().into_iter().find(|e| predicate(e)) {
                return Ok(found);
            }
            if tokio::time::Instant::now() >= deadline {
                anyhow::bail!(
                    "{desc}: not within {timeout:?}; seen: {:?}",
                    self.snapshot()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl<T> Drop for Collected<T> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The `scaled` events of one service.
pub type ScaleEvents = Collected<Scaled>;

impl Collected<Scaled> {
    /// Subscribes to `rouse.scaled.<service>`.
    pub async fn scaled(nats_url: &str, service: &str) -> anyhow::Result<Self> {
        Self::subscribe(nats_url, &format!("rouse.scaled.{service}"), |payload| {
            serde_json::from_slice(payload).ok()
        })
        .await
    }
}
