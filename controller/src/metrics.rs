//! The controller's Prometheus metrics, named by the contract. Labels are
//! service names only.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use rouse_nats::admin::ServiceLabel;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ScaleLabel {
    pub service: String,
    /// `up` or `down`.
    pub direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolLabel {
    pub service: String,
    /// A pool's name from `backend.pools`.
    pub pool: String,
}

/// Why a service loop ran a pass.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PassLabel {
    /// `tick` (a busy loop's period), `message` (a report, wake, pin or
    /// probe result), `resync` (an idle loop's slow look at its backend).
    pub cause: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabel {
    /// A method of KEDA's external scaler API (`IsActive`, ...).
    pub method: &'static str,
}

type HistogramFamily = Family<ServiceLabel, Histogram, fn() -> Histogram>;

fn start_histogram() -> Histogram {
    // 10 ms .. ~5 min
    Histogram::new(exponential_buckets(0.01, 2.0, 15))
}

pub struct ControllerMetrics {
    pub registry: Registry,
    pub desired: Family<ServiceLabel, Gauge>,
    pub ready: Family<ServiceLabel, Gauge>,
    pub scale_events: Family<ScaleLabel, Counter>,
    pub backend_start: HistogramFamily,
    pub backend_errors: Family<ServiceLabel, Counter>,
    /// Malformed or misaddressed messages from NATS, dropped.
    pub bus_rejected: Counter,
    /// 1 while this controller leads (always, without leader election).
    pub leader: Gauge,
    /// Calls to the KEDA external scaler API, by method.
    pub keda_requests: Family<MethodLabel, Counter>,
    /// `StreamIsActive` calls open now.
    pub keda_streams: Gauge,
    /// Replicas of each pool of a service with `backend.pools`, any state.
    pub pool_replicas: Family<PoolLabel, Gauge>,
    /// Of those, the ready ones.
    pub pool_ready: Family<PoolLabel, Gauge>,
    /// Reconcile passes of all service loops together, by cause: the
    /// controller's work grows with these, so an idle fleet should show
    /// only resyncs.
    pub passes: Family<PassLabel, Counter>,
}

impl Default for ControllerMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl ControllerMetrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let metrics = Self {
            desired: Family::default(),
            ready: Family::default(),
            scale_events: Family::default(),
            backend_start: HistogramFamily::new_with_constructor(start_histogram),
            backend_errors: Family::default(),
            bus_rejected: Counter::default(),
            leader: Gauge::default(),
            keda_requests: Family::default(),
            keda_streams: Gauge::default(),
            pool_replicas: Family::default(),
            pool_ready: Family::default(),
            passes: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "rouse_replicas_desired",
            "Replicas the autoscaler wants",
            metrics.desired.clone(),
        );
        registry.register(
            "rouse_replicas_ready",
            "Replicas passing readiness and routable",
            metrics.ready.clone(),
        );
        registry.register(
            "rouse_scale_events",
            "Scale decisions acted upon",
            metrics.scale_events.clone(),
        );
        registry.register(
            "rouse_backend_start_seconds",
            "Time from asking the backend for a replica to its first passing probe",
            metrics.backend_start.clone(),
        );
        registry.register(
            "rouse_backend_errors",
            "Backend failures: starts, exits, timeouts",
            metrics.backend_errors.clone(),
        );
        registry.register(
            "rouse_bus_rejected",
            "Malformed messages received from NATS and dropped",
            metrics.bus_rejected.clone(),
        );
        registry.register(
            "rouse_controller_leader",
            "1 while this controller leads and runs the services, 0 while it stands by",
            metrics.leader.clone(),
        );
        registry.register(
            "rouse_keda_requests",
            "Calls to the KEDA external scaler API, by method",
            metrics.keda_requests.clone(),
        );
        registry.register(
            "rouse_keda_streams",
            "StreamIsActive calls from KEDA open now",
            metrics.keda_streams.clone(),
        );
        registry.register(
            "rouse_controller_pool_replicas",
            "Replicas of each overflow pool (backend.pools), in any state",
            metrics.pool_replicas.clone(),
        );
        registry.register(
            "rouse_controller_pool_ready",
            "Ready replicas of each overflow pool (backend.pools)",
            metrics.pool_ready.clone(),
        );
        registry.register(
            "rouse_controller_reconcile_passes",
            "Reconcile passes of all service loops, by cause (tick, message, resync)",
            metrics.passes.clone(),
        );
        Self {
            registry,
            ..metrics
        }
    }

    /// Creates `service`'s counters and its start-time histogram at zero,
    /// so that Prometheus sees each one before its first increment: `rate`,
    /// `increase` and `changes` (the dashboard's panels and scale-event
    /// annotations) then count that increment too, and a quiet service
    /// shows 0 instead of no data.
    pub fn init_service(&self, service: &str) {
        for direction in ["up", "down"] {
            let _ = self.scale_events.get_or_create(&ScaleLabel {
                service: service.to_string(),
                direction,
            });
        }
        let _ = self.backend_errors.get_or_create(&Self::label(service));
        let _ = self.backend_start.get_or_create(&Self::label(service));
    }

    pub fn label(service: &str) -> ServiceLabel {
        ServiceLabel::new(service)
    }
}
