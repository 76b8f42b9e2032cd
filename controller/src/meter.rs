//! What the controller measures about a service itself, next to what the
//! proxies report: each ready replica's CPU and memory (from its backend,
//! about once a second) and a queue's backlog (a JetStream consumer's
//! unfinished messages). The autoscaler reads them as [`Measured`].
//!
//! Sampling runs in its own task, so a slow engine or a slow NATS never
//! stalls the reconcile loop; the loop reads the latest figures. A backlog
//! appearing while nothing runs wakes the loop at once, as a held request
//! does.
//!
//! CPU counters become rates here: cores = CPU time between two samples /
//! the time between them, over the last [`RATE_WINDOW`]. Shares are of
//! `resources` (or the docker backend's limits; one core for CPU when
//! neither is set).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use async_trait::async_trait;
use rouse_nats::config::{MetricSpec, ServiceConfig};
use tokio::sync::{watch, Notify};

use crate::autoscaler::{Measured, ReplicaUsage};
use crate::backend::{Backend, CpuUsage, Usage};

/// How often usage and backlog are sampled.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(1);

/// CPU rates are taken over about this much history.
pub const RATE_WINDOW: Duration = Duration::from_secs(5);

/// A rate needs samples at least this far apart.
const MIN_RATE_SPAN: Duration = Duration::from_millis(800);

/// A sample older than this is no sample (the sampler is stuck or failing).
const STALE_AFTER: Duration = Duration::from_secs(10);

/// One sampling call may take this long before it is given up.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// Where a queue's backlog comes from.
#[async_trait]
pub trait BacklogSource: Send + Sync {
    /// Messages not yet finished: pending delivery plus delivered, unacked.
    async fn backlog(&self) -> Result<u64, String>;
}

/// A durable JetStream consumer's backlog.
pub struct JetStreamBacklog {
    js: jetstream::Context,
    stream: String,
    consumer: String,
}

impl JetStreamBacklog {
    pub fn new(js: jetstream::Context, stream: &str, consumer: &str) -> Self {
        Self {
            js,
            stream: stream.to_string(),
            consumer: consumer.to_string(),
        }
    }
}

#[async_trait]
impl BacklogSource for JetStreamBacklog {
    async fn backlog(&self) -> Result<u64, String> {
        let stream = self
            .js
            .get_stream_no_info(&self.stream)
            .await
            .map_err(|err| format!("stream `{}`: {err}", self.stream))?;
        let info = stream.consumer_info(&self.consumer).await.map_err(|err| {
            format!(
                "consumer `{}` of stream `{}`: {err}",
                self.consumer, self.stream
            )
        })?;
        Ok(info
            .num_pending
            .saturating_add(u64::try_from(info.num_ack_pending).unwrap_or(u64::MAX)))
    }
}

/// What each replica is sized for.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sizing {
    pub cpus: f64,
    pub memory_bytes: Option<u64>,
}

impl Sizing {
    /// What `resources` (or the docker backends' limits) say; see
    /// [`ServiceConfig::replica_cpus`] and [`ServiceConfig::replica_memory`].
    pub fn of(spec: &ServiceConfig) -> Self {
        Sizing {
            cpus: spec.replica_cpus(),
            memory_bytes: spec.replica_memory(),
        }
    }
}

/// The latest figures of one replica.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ReplicaFigures {
    pub cores: Option<f64>,
    pub memory_bytes: Option<u64>,
}

#[derive(Debug, Default)]
struct State {
    /// CPU counters per replica, oldest first.
    counters: HashMap<String, VecDeque<(Instant, Duration)>>,
    latest: HashMap<String, (Instant, ReplicaFigures)>,
    usage_at: Option<Instant>,
    backlog: Option<(Instant, u64)>,
    usage_error: Option<String>,
    queue_error: Option<String>,
}

/// The measured signals of one service.
#[derive(Debug)]
pub struct Meter {
    sizing: Sizing,
    wants_usage: bool,
    state: Mutex<State>,
}

impl Meter {
    /// A meter for `spec`, or `None` when it scales on nothing measured.
    pub fn for_service(spec: &ServiceConfig) -> Option<Self> {
        let signals = spec.scaling.signals();
        let wants_usage = signals
            .iter()
            .any(|s| matches!(s, MetricSpec::Cpu { .. } | MetricSpec::Memory { .. }));
        let wants_queue = spec.scaling.queue().is_some();
        (wants_usage || wants_queue).then(|| Meter {
            sizing: Sizing::of(spec),
            wants_usage,
            state: Mutex::new(State::default()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes in one usage sample of every running replica.
    pub fn record_usage(&self, now: Instant, usages: Vec<Usage>) {
        let mut state = self.lock();
        state.usage_at = Some(now);
        state.usage_error = None;
        let seen: Vec<String> = usages.iter().map(|u| u.id.clone()).collect();
        for usage in usages {
            let cores = match usage.cpu {
                CpuUsage::Cores(cores) => Some(cores),
                CpuUsage::Total(total) => {
                    let history = state.counters.entry(usage.id.clone()).or_default();
                    rate(history, now, total)
                }
                CpuUsage::Unknown => None,
            };
            let figures = ReplicaFigures {
                cores,
                memory_bytes: usage.memory_bytes,
            };
            state.latest.insert(usage.id, (now, figures));
        }
        // Replicas gone from the backend are forgotten.
        state.counters.retain(|id, _| seen.contains(id));
        state.latest.retain(|id, _| seen.contains(id));
    }

    pub fn usage_failed(&self, error: String) {
        self.lock().usage_error = Some(error);
    }

    /// Takes in one backlog reading; true if a backlog just appeared.
    pub fn record_backlog(&self, now: Instant, reading: Result<u64, String>) -> bool {
        let mut state = self.lock();
        match reading {
            Ok(backlog) => {
                let before = state.backlog.map_or(0, |(_, b)| b);
                state.backlog = Some((now, backlog));
                state.queue_error = None;
                before == 0 && backlog > 0
            }
            Err(error) => {
                state.queue_error = Some(error);
                false
            }
        }
    }

    /// The autoscaler's input for these ready replicas.
    pub fn measured(&self, now: Instant, ready: &[&str]) -> Measured {
        let state = self.lock();
        let fresh = |at: Instant| now.saturating_duration_since(at) <= STALE_AFTER;
        let ready = ready
            .iter()
            .map(|id| {
                let figures = state
                    .latest
                    .get(*id)
                    .filter(|(at, _)| fresh(*at))
                    .map(|(_, f)| *f)
                    .unwrap_or_default();
                ReplicaUsage {
                    cpu: figures.cores.map(|c| c / self.sizing.cpus),
                    memory: match (figures.memory_bytes, self.sizing.memory_bytes) {
                        (Some(used), Some(size)) if size > 0 => Some(used as f64 / size as f64),
                        _ => None,
                    },
                }
            })
            .collect();
        Measured {
            ready,
            backlog: state.backlog.filter(|(at, _)| fresh(*at)).map(|(_, b)| b),
        }
    }

    /// The latest figures of one replica, for the status API.
    pub fn figures(&self, id: &str) -> ReplicaFigures {
        self.lock()
            .latest
            .get(id)
            .map(|(_, f)| *f)
            .unwrap_or_default()
    }

    /// Why a measured signal is missing, if it is.
    pub fn error(&self) -> Option<String> {
        let state = self.lock();
        state.usage_error.clone().or(state.queue_error.clone())
    }

    /// Samples until shutdown: usage when a cpu or memory target needs it,
    /// the backlog when there is a queue.
    pub async fn sample(
        self: Arc<Self>,
        backend: Arc<dyn Backend>,
        backlog: Option<Arc<dyn BacklogSource>>,
        wakeup: Arc<Notify>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut every = tokio::time::interval(SAMPLE_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = every.tick() => {}
            }
            if self.wants_usage {
                match tokio::time::timeout(CALL_TIMEOUT, backend.usage()).await {
                    Ok(Ok(usages)) => self.record_usage(crate::reconcile::now(), usages),
                    Ok(Err(err)) => self.usage_failed(err.to_string()),
                    Err(_) => self
                        .usage_failed("resource usage: the backend did not answer in time".into()),
                }
            }
            if let Some(source) = &backlog {
                let reading = match tokio::time::timeout(CALL_TIMEOUT, source.backlog()).await {
                    Ok(reading) => reading,
                    Err(_) => Err("queue backlog: NATS did not answer in time".into()),
                };
                if self.record_backlog(crate::reconcile::now(), reading) {
                    wakeup.notify_one();
                }
            }
        }
    }
}

/// Cores used between the oldest kept counter and `total` now.
fn rate(history: &mut VecDeque<(Instant, Duration)>, now: Instant, total: Duration) -> Option<f64> {
    // A counter that went backwards is a new process under the same id.
    if history.back().is_some_and(|(_, last)| total < *last) {
        history.clear();
    }
    history.push_back((now, total));
    while history.len() > 2
        && history
            .get(1)
            .is_some_and(|(at, _)| now.saturating_duration_since(*at) >= RATE_WINDOW)
    {
        history.pop_front();
    }
    let (from_at, from_total) = *history.front()?;
    let span = now.saturating_duration_since(from_at);
    if span < MIN_RATE_SPAN {
        return None;
    }
    Some(total.saturating_sub(from_total).as_secs_f64() / span.as_secs_f64())
}

#[cfg(test)]
mod tests;
