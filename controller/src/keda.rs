//! KEDA's external scaler gRPC API (proto/externalscaler.proto), served on
//! `controller.keda_listen`, so a ScaledObject with an `external-push`
//! trigger can scale a workload on what rouse's proxies see.
//!
//! It exists because KEDA cannot see a request that is held for a service at
//! zero: rouse can, at once (the proxy's `wake`), and tells KEDA through a
//! stream that stays open. Every answer is read from the same per-service
//! [`Inbox`] the reconcile loop reads, without consuming anything the loop
//! decides on, so asking never changes rouse's own scaling.
//!
//! - **Which service.** The trigger's metadata `service`, else the
//!   ScaledObject's name; the namespace is ignored. The services are those
//!   in force: the config file's and the catalog's (`rouse deploy`),
//!   followed as they change ([`targets`]). A name not in
//!   force is `NOT_FOUND`, naming it. Any service can be asked, whatever
//!   its `scaling.driver`, so KEDA can also just watch.
//! - **IsActive** is true while live proxies hold or forward requests for
//!   the service, or while its last arrival (or wake) is younger than its
//!   `scaling.scale_to_zero_after`: rouse's own rule for going to zero.
//!   KEDA's `cooldownPeriod` then waits on top of that, so it should be low.
//!   A controller that just started knows no arrival from before its start
//!   and says false until the proxies report (a start floor like the
//!   autoscaler's would wake every service at zero on each restart).
//! - **StreamIsActive** sends the current answer at once, then one message
//!   per change: a delivered `wake` or `load` is looked at as it lands
//!   ([`Inbox::watch`]), and the answer is looked at again every
//!   [`RECHECK`] and at the instant `scale_to_zero_after` runs out, so the
//!   turn to false is pushed too. A changed definition applies to open
//!   streams from their next look. The stream ends when the client goes
//!   away (hyper drops it; HTTP/2 pings find a peer that vanished
//!   silently), or when the service is removed (KEDA, asking again, is
//!   told `NOT_FOUND`).
//! - **GetMetricSpec** names `concurrency` (target
//!   `scaling.target_concurrency`) and, when `scaling.target_rps` is set,
//!   `rps`. KEDA hands them to the HPA as `s<trigger index>-<name>` and
//!   strips the prefix again before GetMetrics; both spellings are accepted.
//! - **GetMetrics**: `concurrency` is in flight + held, summed over live
//!   proxies (the HPA divides it by the replicas: an `AverageValue` target);
//!   `rps` is the arrival rate over the proxies' last report intervals.

mod targets;

pub use targets::{KedaCatalog, Targets};

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::Stream;
use prometheus_client::metrics::gauge::Gauge;
use rouse_nats::config::ServiceConfig;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};

use crate::intake::Inbox;
use crate::metrics::{ControllerMetrics, MethodLabel};
use crate::reconcile::now;

/// The code generated from proto/externalscaler.proto: the server, and a
/// client for tests.
pub mod proto {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("externalscaler");
}

use proto::external_scaler_server::{ExternalScaler, ExternalScalerServer};
use proto::{
    GetMetricSpecResponse, GetMetricsRequest, GetMetricsResponse, IsActiveResponse, MetricSpec,
    MetricValue, ScaledObjectRef,
};

/// A stream looks at the answer again at least this often, for changes that
/// no message announces (a proxy that went silent).
pub const RECHECK: Duration = Duration::from_secs(1);

/// The trigger metadata key that names the rouse service.
const SERVICE_KEY: &str = "service";

/// Service names in error messages are cut to this many characters.
const NAME_IN_ERRORS: usize = 64;

/// HTTP/2 pings: a KEDA that vanished without closing its connection is
/// noticed after about this long, and its streams end.
const PING_INTERVAL: Duration = Duration::from_secs(30);
const PING_TIMEOUT: Duration = Duration::from_secs(10);
const TCP_KEEPALIVE: Duration = Duration::from_secs(60);

/// Serves the API on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, scaler: Scaler) {
    match listener.local_addr() {
        Ok(addr) => tracing::info!(%addr, "serving KEDA's external scaler API"),
        Err(err) => tracing::warn!(error = %err, "KEDA listener has no local address"),
    }
    let incoming = TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .with_keepalive(Some(TCP_KEEPALIVE));
    let result = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(PING_INTERVAL))
        .http2_keepalive_timeout(Some(PING_TIMEOUT))
        .add_service(ExternalScalerServer::new(scaler))
        .serve_with_incoming(incoming)
        .await;
    if let Err(err) = result {
        tracing::error!(error = %err, "KEDA external scaler API stopped");
    }
}

/// Keeps `catalog` in step with the bucket and with the file's services
/// (`file`, sent anew on SIGHUP), for as long as the process lives.
pub async fn follow_services(
    bus: rouse_nats::bus::Bus,
    mut file: watch::Receiver<Vec<ServiceConfig>>,
    catalog: Arc<KedaCatalog>,
) {
    let sink = Arc::clone(&catalog) as Arc<dyn rouse_nats::catalog::Sink>;
    tokio::spawn(rouse_nats::catalog::follow(bus, sink));
    while file.changed().await.is_ok() {
        let services = file.borrow_and_update().clone();
        catalog.set_file(services);
    }
}

/// The API over the services of one controller.
#[derive(Clone)]
pub struct Scaler {
    targets: Arc<Targets>,
    metrics: Arc<ControllerMetrics>,
    /// [`RECHECK`]; tests set it out of reach to show what is pushed without it.
    recheck: Duration,
}

/// What the API needs of one service.
struct Target {
    inbox: Arc<Inbox>,
    target_concurrency: f64,
    target_rps: Option<f64>,
    scale_to_zero_after: Duration,
}

impl Scaler {
    /// Answers for whatever `targets` holds at each call (see
    /// [`KedaCatalog`]).
    pub fn over(targets: Arc<Targets>, metrics: Arc<ControllerMetrics>) -> Self {
        Self {
            targets,
            metrics,
            recheck: RECHECK,
        }
    }

    #[cfg(test)]
    fn with_recheck(self, recheck: Duration) -> Self {
        Self { recheck, ..self }
    }

    fn count(&self, method: &'static str) {
        self.metrics
            .keda_requests
            .get_or_create(&MethodLabel { method })
            .inc();
    }

    /// The service `object` means, or the status that says why there is none.
    fn target(&self, object: &ScaledObjectRef) -> Result<Arc<Target>, Status> {
        let name = service_name(object);
        if name.is_empty() {
            return Err(Status::invalid_argument(format!(
                "no service named: set the trigger's metadata `{SERVICE_KEY}` \
                 (or name the ScaledObject after the rouse service)"
            )));
        }
        self.targets.get(name).ok_or_else(|| {
            Status::not_found(format!(
                "no service `{}` in this rouse controller's config or catalog",
                shortened(name)
            ))
        })
    }
}

/// The trigger's metadata `service`, else the ScaledObject's name.
fn service_name(object: &ScaledObjectRef) -> &str {
    object
        .scaler_metadata
        .get(SERVICE_KEY)
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
        .unwrap_or(object.name.trim())
}

/// `name`, cut short enough for an error message.
fn shortened(name: &str) -> String {
    let mut chars = name.chars();
    let mut out: String = chars.by_ref().take(NAME_IN_ERRORS).collect();
    if chars.next().is_some() {
        out.push('…');
    }
    out
}

/// The metrics the API serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Metric {
    Concurrency,
    Rps,
}

impl Metric {
    const ALL: [Metric; 2] = [Metric::Concurrency, Metric::Rps];

    fn name(self) -> &'static str {
        match self {
            Metric::Concurrency => "concurrency",
            Metric::Rps => "rps",
        }
    }

    /// `concurrency` or `rps`, bare or with KEDA's `s<index>-` prefix, in
    /// any case.
    fn parse(name: &str) -> Option<Metric> {
        let bare = without_trigger_index(name.trim());
        Metric::ALL
            .into_iter()
            .find(|metric| bare.eq_ignore_ascii_case(metric.name()))
    }
}

/// `s0-concurrency` → `concurrency`; anything else unchanged.
fn without_trigger_index(name: &str) -> &str {
    let Some((prefix, rest)) = name.split_once('-') else {
        return name;
    };
    match prefix.strip_prefix('s') {
        Some(index) if !index.is_empty() && index.bytes().all(|b| b.is_ascii_digit()) => rest,
        _ => name,
    }
}

/// One look at a service's observations.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Reading {
    in_flight: u64,
    held: u64,
    arrival_rate: f64,
    last_activity: Option<Instant>,
}

/// Whether a service is active, and until when that holds if nothing is
/// reported meanwhile (`None`: until a report changes it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Activity {
    active: bool,
    until: Option<Instant>,
}

impl Reading {
    /// Requests forwarded or waiting now.
    fn concurrency(&self) -> u64 {
        self.in_flight.saturating_add(self.held)
    }

    /// rouse's own to-zero rule: nothing in flight or held, and no arrival
    /// for `idle_after`.
    fn activity(&self, idle_after: Duration, now: Instant) -> Activity {
        if self.concurrency() > 0 {
            return Activity {
                active: true,
                until: None,
            };
        }
        match self.last_activity {
            Some(at) if now.saturating_duration_since(at) < idle_after => Activity {
                active: true,
                until: at.checked_add(idle_after),
            },
            _ => Activity {
                active: false,
                until: None,
            },
        }
    }
}

impl Target {
    /// The same settings over the same inbox.
    fn same_as(&self, other: &Target) -> bool {
        Arc::ptr_eq(&self.inbox, &other.inbox)
            && self.target_concurrency == other.target_concurrency
            && self.target_rps == other.target_rps
            && self.scale_to_zero_after == other.scale_to_zero_after
    }

    fn read(&self, now: Instant) -> Reading {
        let observations = self.inbox.observations();
        let totals = observations.totals(now);
        Reading {
            in_flight: totals.in_flight,
            held: totals.held,
            arrival_rate: observations.arrival_rate(now),
            last_activity: observations.last_activity(),
        }
    }

    fn activity(&self, now: Instant) -> Activity {
        self.read(now).activity(self.scale_to_zero_after, now)
    }

    fn metric_specs(&self) -> Vec<MetricSpec> {
        let mut specs = vec![metric_spec(Metric::Concurrency, self.target_concurrency)];
        if let Some(rps) = self.target_rps {
            specs.push(metric_spec(Metric::Rps, rps));
        }
        specs
    }

    fn metric_value(&self, metric: Metric, asked_as: &str, now: Instant) -> MetricValue {
        let reading = self.read(now);
        let value = match metric {
            Metric::Concurrency => reading.concurrency() as f64,
            Metric::Rps => reading.arrival_rate,
        };
        MetricValue {
            metric_name: asked_as.to_string(),
            // `as` saturates; the value is never negative.
            metric_value: value.ceil() as i64,
            metric_value_float: value,
        }
    }
}

/// A target for KEDA: the float, and for KEDA versions that read only the
/// integer, the target rounded (at least 1: the HPA divides by it).
fn metric_spec(metric: Metric, target: f64) -> MetricSpec {
    MetricSpec {
        metric_name: metric.name().to_string(),
        target_size: (target.round() as i64).max(1),
        target_size_float: target,
    }
}

/// Counts an open `StreamIsActive` while it lives.
struct OpenStream(Gauge);

impl OpenStream {
    fn new(gauge: &Gauge) -> Self {
        gauge.inc();
        Self(gauge.clone())
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The state of one `StreamIsActive`.
struct Watcher {
    /// The service asked about, looked up again on every look.
    name: String,
    targets: Arc<Targets>,
    target: Arc<Target>,
    changes: watch::Receiver<u64>,
    recheck: Duration,
    sent: Option<bool>,
    _open: OpenStream,
}

impl Watcher {
    /// The next answer that differs from the last one sent (the first one at
    /// once); `None` ends the stream.
    async fn next(mut self) -> Option<(Result<IsActiveResponse, Status>, Watcher)> {
        loop {
            match self.targets.get(&self.name) {
                // Removed: end the stream; asked again, KEDA hears why.
                None => return None,
                Some(current) if !Arc::ptr_eq(&current, &self.target) => {
                    self.changes = current.inbox.watch();
                    self.changes.mark_unchanged();
                    self.target = current;
                }
                Some(_) => {}
            }
            let now = now();
            let activity = self.target.activity(now);
            if self.sent != Some(activity.active) {
                self.sent = Some(activity.active);
                let answer = IsActiveResponse {
                    result: activity.active,
                };
                return Some((Ok(answer), self));
            }
            let recheck = now + self.recheck;
            let wake_at = activity.until.map_or(recheck, |until| until.min(recheck));
            tokio::select! {
                changed = self.changes.changed() => {
                    // The inbox is gone: so is the controller.
                    changed.ok()?;
                }
                _ = tokio::time::sleep_until(wake_at.into()) => {}
            }
        }
    }
}

type ActivityStream = Pin<Box<dyn Stream<Item = Result<IsActiveResponse, Status>> + Send>>;

#[tonic::async_trait]
impl ExternalScaler for Scaler {
    async fn is_active(
        &self,
        request: Request<ScaledObjectRef>,
    ) -> Result<Response<IsActiveResponse>, Status> {
        self.count("IsActive");
        let target = self.target(request.get_ref())?;
        let result = target.activity(now()).active;
        Ok(Response::new(IsActiveResponse { result }))
    }

    type StreamIsActiveStream = ActivityStream;

    async fn stream_is_active(
        &self,
        request: Request<ScaledObjectRef>,
    ) -> Result<Response<Self::StreamIsActiveStream>, Status> {
        self.count("StreamIsActive");
        let object = request.get_ref();
        let target = self.target(object)?;
        let mut changes = target.inbox.watch();
        changes.mark_unchanged();
        let watcher = Watcher {
            name: service_name(object).to_string(),
            targets: Arc::clone(&self.targets),
            target,
            changes,
            recheck: self.recheck,
            sent: None,
            _open: OpenStream::new(&self.metrics.keda_streams),
        };
        let stream = futures::stream::unfold(watcher, Watcher::next);
        Ok(Response::new(Box::pin(stream)))
    }

    async fn get_metric_spec(
        &self,
        request: Request<ScaledObjectRef>,
    ) -> Result<Response<GetMetricSpecResponse>, Status> {
        self.count("GetMetricSpec");
        let target = self.target(request.get_ref())?;
        Ok(Response::new(GetMetricSpecResponse {
            metric_specs: target.metric_specs(),
        }))
    }

    async fn get_metrics(
        &self,
        request: Request<GetMetricsRequest>,
    ) -> Result<Response<GetMetricsResponse>, Status> {
        self.count("GetMetrics");
        let request = request.get_ref();
        let object = request
            .scaled_object_ref
            .as_ref()
            .ok_or_else(|| Status::invalid_argument("GetMetricsRequest has no scaledObjectRef"))?;
        let target = self.target(object)?;
        let metric = Metric::parse(&request.metric_name).ok_or_else(|| {
            Status::not_found(format!(
                "no metric `{}`: rouse serves `concurrency` and `rps`",
                shortened(&request.metric_name)
            ))
        })?;
        let value = target.metric_value(metric, &request.metric_name, now());
        Ok(Response::new(GetMetricsResponse {
            metric_values: vec![value],
        }))
    }
}

#[cfg(test)]
mod tests;
