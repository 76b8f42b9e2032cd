//! What a service scales on (`scaling.metrics`), how fast it may change
//! (`scaling.behavior`, HPA's shape), and what one replica is sized for
//! (`resources`, the denominators of CPU and memory utilization).
//!
//! The shorthands `scaling.target_concurrency` and `scaling.target_rps`
//! keep working: [`super::ScalingConfig::signals`] folds them and the list
//! into the one set of signals the autoscaler follows.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// One scaling signal, each with its per-replica target.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum MetricSpec {
    /// In-flight requests per replica (the proxies' reports).
    Concurrency { target: f64 },
    /// Requests per second per replica (the proxies' reports).
    Rps { target: f64 },
    /// CPU in use per replica, in percent of `resources.cpus` (one core
    /// when unset), as HPA's `averageUtilization`.
    Cpu { target: f64 },
    /// Memory in use per replica, in percent of `resources.memory`.
    Memory { target: f64 },
    /// Messages a JetStream consumer has not finished (pending + unacked),
    /// per replica: queue workers scale from zero on messages.
    Queue {
        stream: String,
        consumer: String,
        target: f64,
    },
}

impl MetricSpec {
    /// The `type` key's value, for messages and the status API.
    pub fn kind(&self) -> &'static str {
        match self {
            MetricSpec::Concurrency { .. } => "concurrency",
            MetricSpec::Rps { .. } => "rps",
            MetricSpec::Cpu { .. } => "cpu",
            MetricSpec::Memory { .. } => "memory",
            MetricSpec::Queue { .. } => "queue",
        }
    }

    pub fn target(&self) -> f64 {
        match self {
            MetricSpec::Concurrency { target }
            | MetricSpec::Rps { target }
            | MetricSpec::Cpu { target }
            | MetricSpec::Memory { target }
            | MetricSpec::Queue { target, .. } => *target,
        }
    }
}

/// What one replica is sized for. For the docker backend the container's
/// own `cpus` and `memory` limits are the default.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ResourcesConfig {
    /// Cores one replica may use, e.g. `0.5`.
    #[serde(default)]
    pub cpus: Option<f64>,
    /// Memory one replica may use, e.g. `256MiB`.
    #[serde(default)]
    pub memory: Option<bytesize::ByteSize>,
}

/// HPA's `behavior`: each direction left out keeps rouse's own rules.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BehaviorConfig {
    #[serde(default)]
    pub scale_up: Option<ScalingRules>,
    #[serde(default)]
    pub scale_down: Option<ScalingRules>,
}

/// The rules of one direction (autoscaling/v2 `HPAScalingRules`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ScalingRules {
    /// Act on the least extreme recommendation of this window: the lowest
    /// for scale-up, the highest for scale-down.
    #[serde(default, with = "humantime_serde")]
    pub stabilization_window: Duration,
    /// Rate limits; none means unlimited.
    #[serde(default)]
    pub policies: Vec<PolicySpec>,
    #[serde(default)]
    pub select: SelectPolicy,
}

/// At most `value` pods (or percent of the count at the period's start)
/// per `period`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PolicySpec {
    #[serde(rename = "type")]
    pub kind: PolicyType,
    pub value: u32,
    #[serde(with = "humantime_serde")]
    pub period: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PolicyType {
    Pods,
    Percent,
}

/// Which policy wins: the one allowing the most change, the least, or no
/// change in this direction at all.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SelectPolicy {
    #[default]
    Max,
    Min,
    Disabled,
}
