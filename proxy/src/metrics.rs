//! The proxy's Prometheus metrics, named by the contract.
//!
//! Label values are service names only. Each service resolves its metric
//! handles once at start, so the hot path increments an atomic instead of
//! hashing a label set; only rare status codes go through the family lookup.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
pub use rouse_nats::admin::ServiceLabel;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceCode {
    pub service: String,
    pub code: u16,
}

type HistogramFamily = Family<ServiceLabel, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 1 ms .. ~65 s
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

/// Every metric family of the proxy, and the registry that exposes them.
pub struct ProxyMetrics {
    pub registry: Registry,
    requests: Family<ServiceCode, Counter>,
    duration: HistogramFamily,
    in_flight: Family<ServiceLabel, Gauge>,
    held: Family<ServiceLabel, Gauge>,
    cold_start_wait: HistogramFamily,
    hold_timeouts: Family<ServiceLabel, Counter>,
    hold_rejected: Family<ServiceLabel, Counter>,
    browser_pages: Family<ServiceLabel, Counter>,
    /// Malformed messages from NATS (endpoint sets that do not decode).
    pub bus_rejected: Counter,
    /// `proxy.tls` certificate files changed and were taken, or refused.
    pub tls_reloads: Counter,
    pub tls_reload_errors: Counter,
    /// Access log lines dropped because the writer was behind.
    pub access_log_dropped: Counter,
    /// Spans dropped because the exporter was behind.
    pub trace_spans_dropped: Counter,
}

impl Default for ProxyMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl ProxyMetrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<ServiceCode, Counter>::default();
        let duration = HistogramFamily::new_with_constructor(latency_histogram);
        let in_flight = Family::<ServiceLabel, Gauge>::default();
        let held = Family::<ServiceLabel, Gauge>::default();
        let cold_start_wait = HistogramFamily::new_with_constructor(latency_histogram);
        let hold_timeouts = Family::<ServiceLabel, Counter>::default();
        let hold_rejected = Family::<ServiceLabel, Counter>::default();
        let browser_pages = Family::<ServiceLabel, Counter>::default();
        let bus_rejected = Counter::default();
        let tls_reloads = Counter::default();
        let tls_reload_errors = Counter::default();
        let access_log_dropped = Counter::default();
        let trace_spans_dropped = Counter::default();
        registry.register(
            "rouse_requests",
            "Requests answered, by service and status code",
            requests.clone(),
        );
        registry.register(
            "rouse_request_duration_seconds",
            "Time from request arrival to the end of the response",
            duration.clone(),
        );
        registry.register(
            "rouse_in_flight",
            "Requests being forwarded",
            in_flight.clone(),
        );
        registry.register(
            "rouse_held",
            "Requests waiting for a ready replica",
            held.clone(),
        );
        registry.register(
            "rouse_cold_start_wait_seconds",
            "Time held requests waited for a ready replica",
            cold_start_wait.clone(),
        );
        registry.register(
            "rouse_hold_timeouts",
            "Held requests answered 503 after hold.timeout",
            hold_timeouts.clone(),
        );
        registry.register(
            "rouse_hold_rejected",
            "Requests answered 503 at once because the wait queue was full",
            hold_rejected.clone(),
        );
        registry.register(
            "rouse_browser_pages",
            "Waiting pages served to browsers at a cold service (hold.browser_page)",
            browser_pages.clone(),
        );
        registry.register(
            "rouse_bus_rejected",
            "Malformed messages received from NATS and dropped",
            bus_rejected.clone(),
        );
        registry.register(
            "rouse_tls_reloads",
            "Changed TLS certificate files taken into use",
            tls_reloads.clone(),
        );
        registry.register(
            "rouse_tls_reload_errors",
            "Changed TLS certificate files refused (the previous ones stay in use)",
            tls_reload_errors.clone(),
        );
        registry.register(
            "rouse_access_log_dropped",
            "Access log lines dropped because the writer was behind (requests never wait for it)",
            access_log_dropped.clone(),
        );
        registry.register(
            "rouse_trace_spans_dropped",
            "Spans dropped because the exporter was behind (requests never wait for it)",
            trace_spans_dropped.clone(),
        );
        Self {
            registry,
            requests,
            duration,
            in_flight,
            held,
            cold_start_wait,
            hold_timeouts,
            hold_rejected,
            browser_pages,
            bus_rejected,
            tls_reloads,
            tls_reload_errors,
            access_log_dropped,
            trace_spans_dropped,
        }
    }

    /// Handles for one service, resolved once.
    pub fn for_service(&self, name: &str) -> ServiceMetrics {
        let label = ServiceLabel {
            service: name.to_string(),
        };
        ServiceMetrics {
            name: name.into(),
            requests: self.requests.clone(),
            ok: self
                .requests
                .get_or_create(&ServiceCode {
                    service: name.to_string(),
                    code: 200,
                })
                .clone(),
            duration: self.duration.get_or_create(&label).clone(),
            in_flight: self.in_flight.get_or_create(&label).clone(),
            held: self.held.get_or_create(&label).clone(),
            cold_start_wait: self.cold_start_wait.get_or_create(&label).clone(),
            hold_timeouts: self.hold_timeouts.get_or_create(&label).clone(),
            hold_rejected: self.hold_rejected.get_or_create(&label).clone(),
            browser_pages: self.browser_pages.get_or_create(&label).clone(),
        }
    }

    /// Counts a response that matched no service.
    pub fn unmatched(&self, code: u16) {
        self.requests
            .get_or_create(&ServiceCode {
                service: String::new(),
                code,
            })
            .inc();
    }
}

/// One service's metric handles.
#[derive(Clone)]
pub struct ServiceMetrics {
    name: Arc<str>,
    requests: Family<ServiceCode, Counter>,
    ok: Counter,
    pub duration: Histogram,
    pub in_flight: Gauge,
    pub held: Gauge,
    pub cold_start_wait: Histogram,
    pub hold_timeouts: Counter,
    pub hold_rejected: Counter,
    pub browser_pages: Counter,
}

impl ServiceMetrics {
    pub fn count_response(&self, code: u16) {
        if code == 200 {
            self.ok.inc();
        } else {
            self.requests
                .get_or_create(&ServiceCode {
                    service: self.name.to_string(),
                    code,
                })
                .inc();
        }
    }
}
