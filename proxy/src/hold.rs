//! Stage 3 of the data path: hold a request while its service is cold.
//!
//! A warm service leases a replica at once (stage 4, `balance`) and the
//! request never notices this stage. A cold one has no ready replica: the
//! request waits in the service's bounded queue (`queue`) for the KV watcher
//! to publish a ready set, and the first request held wakes the controller.
//! Waiting ends with a lease, or with the 503 the contract sets for a full
//! queue or for `hold.timeout`, or a 429 for a client over its share, or
//! the 404 of a service removed while its requests waited.
//!
//! This future is what hyper keeps, per connection, for every held request
//! (10,000 at once in the burst benchmark), so it holds references and a
//! deadline, nothing more.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use crate::balance::{self, Lease};
use crate::error::ProxyError;
use crate::queue::Admission;
use crate::report::Signals;
use crate::service::Service;

/// A lease on a ready endpoint, holding the request while there is none.
/// Returns whether the request had to wait (a cold start); `woke` turns
/// true if this request was the one that asked the controller to wake the
/// service (for its trace).
pub async fn wait_for_endpoint<'a>(
    service: &'a Arc<Service>,
    client: IpAddr,
    signals: &Signals,
    started: Instant,
    woke: &mut bool,
) -> Result<(Lease, bool), ProxyError<'a>> {
    if let Some(lease) = balance::lease(service, &[]) {
        return Ok((lease, false));
    }
    let deadline = started + service.hold_timeout();
    let mut held = false;
    loop {
        if service.is_retired() {
            return Err(ProxyError::Removed { service });
        }
        let admission = if held {
            service.hold.readmit(client, || service.has_ready())
        } else {
            service.hold.admit(client, || service.has_ready())
        };
        match admission {
            Admission::Full => return Err(ProxyError::QueueFull { service }),
            Admission::ClientFull => {
                return Err(ProxyError::ClientHoldFull {
                    service,
                    limit: service.hold.max_per_client(),
                })
            }
            Admission::ReadyNow => {
                // Replicas are listed ready, yet none could be leased
                // (a set being swapped): let the swap finish.
                if Instant::now() >= deadline {
                    return Err(ProxyError::NoUsableReplica { service });
                }
                tokio::task::yield_now().await;
            }
            Admission::Held(mut ticket) => {
                held = true;
                // Joined after a removal released the queue: nobody will.
                if service.is_retired() {
                    return Err(ProxyError::Removed { service });
                }
                if ticket.first {
                    signals.wake(service);
                    *woke = true;
                }
                let left = deadline.saturating_duration_since(Instant::now());
                if ticket.wait(left).await.is_err() {
                    return Err(ProxyError::HoldTimeout { service });
                }
            }
        }
        if let Some(lease) = balance::lease(service, &[]) {
            if held {
                service
                    .metrics
                    .cold_start_wait
                    .observe(started.elapsed().as_secs_f64());
            }
            return Ok((lease, held));
        }
    }
}
