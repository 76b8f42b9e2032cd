//! A forwarded request's accounting, from its lease to its last byte.
//!
//! The load reports and the per-replica cap need to know when a request is
//! over, and "over" is not when the handler returns: a streamed response body
//! or an upgraded tunnel keeps the request in flight long after. So the
//! accounting is a value, `Completion`, that travels with the request (into
//! the response body or the tunnel task) and counts the request out when it
//! is dropped, however the request ends.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use crate::balance::Lease;
use crate::service::Service;

/// Counts a forwarded request in when made and out when dropped.
#[derive(Debug)]
pub struct Completion {
    /// The replica slot the request holds; a retry swaps it for another.
    ///
    /// Declared before `in_flight` on purpose: fields drop in declaration
    /// order, so the slot is given back before the request is counted out
    /// and a waiting request is released to take that slot.
    pub lease: Lease,
    _in_flight: InFlight,
}

/// The service-level half of the accounting.
#[derive(Debug)]
struct InFlight {
    service: Arc<Service>,
    started: Instant,
}

impl Completion {
    /// Counts the request in flight on `service`; `started` is its arrival.
    pub fn new(service: Arc<Service>, lease: Lease, started: Instant) -> Self {
        service.counters.in_flight.fetch_add(1, Ordering::Relaxed);
        Self {
            lease,
            _in_flight: InFlight { service, started },
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let service = &self.service;
        let counters = &service.counters;
        counters.completed.fetch_add(1, Ordering::Relaxed);
        counters.in_flight.fetch_sub(1, Ordering::Relaxed);
        service.slot_freed();
        service
            .metrics
            .duration
            .observe(self.started.elapsed().as_secs_f64());
    }
}
