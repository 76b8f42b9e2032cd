//! The `scaled` events a controller publishes (`<prefix>.scaled.<service>`),
//! collected from a core NATS subscription, as a user tailing the subject
//! would see them: what the end-to-end tests judge scale decisions by.

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

/// Every event of one service since [`ScaleEvents::subscribe`].
pub struct ScaleEvents {
    seen: Arc<Mutex<Vec<Scaled>>>,
    task: tokio::task::JoinHandle<()>,
}

impl ScaleEvents {
    /// Subscribes to `rouse.scaled.<service>` on `nats_url`; returns once
    /// the server has the subscription.
    pub async fn subscribe(nats_url: &str, service: &str) -> anyhow::Result<Self> {
        let client = async_nats::connect(nats_url).await?;
        let mut subscriber = client.subscribe(format!("rouse.scaled.{service}")).await?;
        client.flush().await?;
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&seen);
        let task = tokio::spawn(async move {
            use futures::StreamExt;
            let _client = client;
            while let Some(message) = subscriber.next().await {
                if let Ok(event) = serde_json::from_slice::<Scaled>(&message.payload) {
                    sink.lock().unwrap_or_else(|p| p.into_inner()).push(event);
                }
            }
        });
        Ok(Self { seen, task })
    }

    pub fn snapshot(&self) -> Vec<Scaled> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Waits (at most `timeout`) for an event matching `predicate`.
    pub async fn wait_for(
        &self,
        desc: &str,
        timeout: Duration,
        predicate: impl Fn(&Scaled) -> bool,
    ) -> anyhow::Result<Scaled> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(found) = self.snapshot().into_iter().find(|e| predicate(e)) {
                return Ok(found);
            }
            if tokio::time::Instant::now() >= deadline {
                anyhow::bail!(
                    "{desc}: not within {timeout:?}; events: {:?}",
                    self.snapshot()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for ScaleEvents {
    fn drop(&mut self) {
        self.task.abort();
    }
}
