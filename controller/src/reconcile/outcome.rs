//! What the loop tells: failures (handled by their one policy), scale
//! events, the endpoint set, the status API and metrics, and the final stop
//! on shutdown.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rouse_nats::config::{MetricSpec, ShutdownPolicy};
use rouse_nats::messages::{self, Scaled, VERSION};

use super::error::ReconcileError;
use super::replicas::Phase;
use super::{now, ServiceLoop};
use crate::backend::PoolInfo;
use crate::metrics::{ControllerMetrics, PoolLabel, ScaleLabel};
use crate::status::{MetricStatus, PoolStatus, ScaleEvent, ServiceStatus};

/// How long a stopping controller tries to clear a service's endpoint set.
const SHUTDOWN_PUBLISH_LIMIT: Duration = Duration::from_secs(3);

impl ServiceLoop {
    /// The one place a failure is handled, by its [`Policy`](super::error::Policy).
    pub(super) fn fail(&mut self, err: ReconcileError, now: Instant) {
        let policy = err.policy();
        if policy.counted {
            tracing::error!(service = %self.name, error = %err, "backend error");
            self.wiring
                .metrics
                .backend_errors
                .get_or_create(&ControllerMetrics::label(&self.name))
                .inc();
            self.last_error = Some(err.to_string());
        } else {
            tracing::warn!(service = %self.name, error = %err, "will retry");
        }
        if policy.back_off {
            let delay = rouse_nats::backoff::RESTART.nth(self.start_failures as usize);
            self.start_failures += 1;
            self.retry_at = Some(now + delay);
        }
    }

    pub(super) fn record_scale(&mut self, from: u32, to: u32, reason: &str) {
        if from == to {
            return;
        }
        let direction = if to > from { "up" } else { "down" };
        tracing::info!(service = %self.name, from, to, reason, "scaling");
        self.wiring
            .metrics
            .scale_events
            .get_or_create(&ScaleLabel {
                service: self.name.clone(),
                direction,
            })
            .inc();
        let event = Scaled {
            v: VERSION,
            service: self.name.clone(),
            from,
            to,
            reason: reason.to_string(),
            at_ms: messages::now_ms(),
        };
        let recorded = ScaleEvent {
            from,
            to,
            reason: event.reason.clone(),
            at_ms: event.at_ms,
        };
        self.wiring.status.scaled(&self.name, recorded.clone());
        self.last_scale = Some(recorded);
        self.wiring.publisher.scaled(event);
    }

    pub(super) async fn publish_endpoints(&mut self, now: Instant) {
        let publisher = Arc::clone(&self.wiring.publisher);
        let written = self
            .published
            .sync(&self.name, &mut self.replicas, &*publisher, now)
            .await;
        if let Err(err) = written {
            self.fail(ReconcileError::Publish(err), now);
        }
    }

    pub(super) fn update_status(&self, now: Instant) {
        let totals = self.inbox.observations().totals(now);
        let ready = self.replicas.count(|p| p == Phase::Ready);
        let label = ControllerMetrics::label(&self.name);
        let metrics = &self.wiring.metrics;
        metrics
            .desired
            .get_or_create(&label)
            .set(self.desired as i64);
        metrics.ready.get_or_create(&label).set(ready as i64);
        let pools = self.backend.pools();
        let mut replicas = self.replicas.status(&pools);
        if let Some(meter) = &self.meter {
            for replica in &mut replicas {
                let figures = meter.figures(&replica.id);
                replica.cpu_cores = figures.cores;
                replica.memory_bytes = figures.memory_bytes;
            }
        }
        let status = ServiceStatus {
            name: self.name.clone(),
            backend: self.backend.kind(),
            desired: self.desired,
            ready,
            metrics: self.metric_status(now, ready),
            replicas,
            pools: self.pool_status(pools),
            held: totals.held,
            in_flight: totals.in_flight,
            rps: self.inbox.observations().arrival_rate(now),
            proxies: totals.proxies,
            last_scale: self.last_scale.clone(),
            pinned: self.inbox.pin(),
            last_error: self
                .last_error
                .clone()
                .or_else(|| self.meter.as_ref().and_then(|m| m.error())),
        };
        self.wiring.status.insert(self.name.clone(), status);
    }

    /// Each signal's target and its current per-replica value, as HPA's
    /// `currentMetrics`: utilization in percent of `resources`, the
    /// backlog in messages per replica.
    fn metric_status(&self, now: Instant, ready: u32) -> Vec<MetricStatus> {
        let per_replica = |total: f64| (ready > 0).then(|| total / f64::from(ready));
        let measured = self.measured(now);
        let average = |values: Vec<f64>| {
            (!values.is_empty()).then(|| 100.0 * values.iter().sum::<f64>() / values.len() as f64)
        };
        let observations = self.inbox.observations();
        self.spec
            .scaling
            .signals()
            .iter()
            .map(|signal| {
                let current = match signal {
                    MetricSpec::Concurrency { .. } => {
                        per_replica(observations.totals(now).in_flight as f64)
                    }
                    MetricSpec::Rps { .. } => per_replica(observations.arrival_rate(now)),
                    MetricSpec::Cpu { .. } => {
                        average(measured.ready.iter().filter_map(|r| r.cpu).collect())
                    }
                    MetricSpec::Memory { .. } => {
                        average(measured.ready.iter().filter_map(|r| r.memory).collect())
                    }
                    MetricSpec::Queue { .. } => {
                        measured.backlog.map(|b| b as f64 / f64::from(ready.max(1)))
                    }
                };
                MetricStatus {
                    kind: signal.kind(),
                    target: signal.target(),
                    current,
                }
            })
            .collect()
    }

    /// Each pool's replicas, as the status API and the pool metrics show.
    fn pool_status(&self, pools: Vec<PoolInfo>) -> Vec<PoolStatus> {
        let metrics = &self.wiring.metrics;
        pools
            .into_iter()
            .enumerate()
            .map(|(rank, pool)| {
                let (replicas, ready) = self.replicas.in_pool(rank);
                let label = PoolLabel {
                    service: self.name.clone(),
                    pool: pool.name.clone(),
                };
                metrics
                    .pool_replicas
                    .get_or_create(&label)
                    .set(replicas.into());
                metrics.pool_ready.get_or_create(&label).set(ready.into());
                PoolStatus {
                    name: pool.name,
                    backend: pool.backend,
                    max_replicas: pool.max_replicas,
                    replicas,
                    ready,
                    error: pool.error,
                }
            })
            .collect()
    }

    /// On SIGTERM with `on_shutdown: stop`: take every replica out of the
    /// endpoint set, then stop them all (but those a cluster pool runs).
    pub(super) async fn stop_everything(&mut self, policy: ShutdownPolicy) {
        if policy == ShutdownPolicy::Keep
            || self.backend.keeps_replicas_on_shutdown()
            || self.follows_keda()
        {
            tracing::info!(service = %self.name, replicas = self.replicas.len(), "leaving replicas running for the next controller");
            return;
        }
        let backend = Arc::clone(&self.backend);
        let ids = self.replicas.take(|id| !backend.keeps_on_shutdown(id));
        // With NATS gone, do not hang the shutdown on a write that cannot land.
        if tokio::time::timeout(SHUTDOWN_PUBLISH_LIMIT, self.publish_endpoints(now()))
            .await
            .is_err()
        {
            tracing::warn!(service = %self.name, "could not clear the endpoint set before stopping replicas");
        }
        let stops = ids.iter().map(|id| self.backend.stop(id));
        for result in futures::future::join_all(stops).await {
            if let Err(err) = result {
                tracing::warn!(service = %self.name, error = %err, "stopping replica failed");
            }
        }
        tracing::info!(service = %self.name, stopped = ids.len(), "replicas stopped");
    }
}
