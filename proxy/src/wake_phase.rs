//! How far a cold service has come back up, as this proxy can tell: the
//! progress the waiting page (`waiting`) shows a browser.
//!
//! Three phases, from what the proxy already receives, so no request adds
//! any NATS traffic:
//! - `waking`: no ready replica, and the controller has not said it is
//!   starting one (the page's own request has published the wake);
//! - `starting`: the controller published `scaled` with `to > 0` (it has
//!   started replicas) and none is ready yet;
//! - `ready`: the endpoint set from KV has a ready replica.
//!
//! And one end that is not a step up: `removed`, the service left the
//! catalog while the page waited (the page reloads into the proxy's 404).
//! It stays until the service is defined again.
//!
//! Each service keeps its phase in a `watch` channel: the endpoint watcher
//! and the `scaled` follower here write it, and every open event stream of
//! a waiting page reads it. The data path never touches it on a warm
//! service.

use std::sync::Arc;

use futures::StreamExt;
use rouse_nats::bus::Bus;
use rouse_nats::messages::{self, Scaled};
use rouse_nats::Subjects;

use crate::catalog::Registry;

/// One step of a cold service's way up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WakePhase {
    Waking,
    Starting,
    Ready,
    Removed,
}

impl WakePhase {
    /// The event name the page receives.
    pub fn name(self) -> &'static str {
        match self {
            WakePhase::Waking => "waking",
            WakePhase::Starting => "starting",
            WakePhase::Ready => "ready",
            WakePhase::Removed => "removed",
        }
    }

    /// The phase after an endpoint set with or without a ready replica.
    pub fn after_endpoints(self, has_ready: bool) -> WakePhase {
        match (has_ready, self) {
            (_, WakePhase::Removed) => WakePhase::Removed,
            (true, _) => WakePhase::Ready,
            // Back at zero (or every replica draining): waiting again.
            (false, WakePhase::Ready) => WakePhase::Waking,
            (false, other) => other,
        }
    }

    /// The phase after a `scaled` event to `to` replicas; only the endpoint
    /// set says ready.
    pub fn after_scaled(self, to: u32) -> WakePhase {
        match (self, to) {
            (WakePhase::Ready, _) => WakePhase::Ready,
            (WakePhase::Removed, _) => WakePhase::Removed,
            (_, 0) => WakePhase::Waking,
            (_, _) => WakePhase::Starting,
        }
    }
}

/// Follows the controller's `scaled` events for this proxy's services and
/// moves their phase to `starting` (or back to `waking`). Runs for the
/// life of the process; a subscription that ends (the client closed) or
/// cannot be made is retried with backoff.
pub async fn follow_scaled(bus: Bus, subjects: Subjects, registry: Arc<Registry>) {
    let subject = subjects.scaled("*");
    let mut delays = rouse_nats::backoff::RESUBSCRIBE.delays();
    loop {
        match bus.client.subscribe(subject.clone()).await {
            Ok(mut events) => {
                delays.reset();
                while let Some(message) = events.next().await {
                    apply(&registry, &message.payload);
                }
            }
            Err(err) => tracing::warn!(error = %err, "cannot follow scaled events"),
        }
        let delay = delays.next().unwrap_or_default();
        tokio::time::sleep(delay).await;
    }
}

/// One `scaled` event: the phase of the service it names, if it is ours.
fn apply(registry: &Registry, payload: &[u8]) {
    let Ok(event) = messages::decode::<Scaled>(payload) else {
        tracing::debug!("dropped a malformed scaled event");
        return;
    };
    if let Some(service) = registry.service(&event.service) {
        service.scaled(event.to);
    }
}

#[cfg(test)]
mod tests {
    use super::WakePhase::*;

    #[test]
    fn phases_follow_scaled_events_and_endpoint_sets() {
        assert_eq!(Waking.after_scaled(1), Starting);
        assert_eq!(Starting.after_scaled(0), Waking);
        assert_eq!(Ready.after_scaled(0), Ready, "only endpoints end ready");
        assert_eq!(Starting.after_endpoints(false), Starting);
        assert_eq!(Starting.after_endpoints(true), Ready);
        assert_eq!(Waking.after_endpoints(true), Ready);
        assert_eq!(Ready.after_endpoints(false), Waking);
        assert_eq!(
            Removed.after_endpoints(true),
            Removed,
            "only a new definition"
        );
        assert_eq!(Removed.after_scaled(1), Removed, "only a new definition");
    }
}
