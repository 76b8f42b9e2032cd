//! How many replicas a service needs: a pure function of what the proxies
//! reported and of the time, with no I/O, so every rule is tested with a fake
//! clock.
//!
//! Modelled on Knative's KPA, but built for a system that is *told* about
//! load (proxies push reports and wakes) instead of scraping it:
//! - concurrency in flight is averaged, time-weighted, over a stable window
//!   (60 s) and a panic window (6 s); need = ceil(average /
//!   `target_concurrency`), max'ed with ceil(rate / `target_rps`);
//! - held requests are a backlog, not load: a queue that lasts (1 s) asks for
//!   ceil((in flight + held) / target) at once, but never enters the averages;
//! - scale-up follows the stable and queued needs at once;
//! - panic: when the panic-window need reaches `panic_threshold` × current
//!   replicas, scale up to it at once and do not scale down for a panic
//!   window (KPA holds a whole stable window; rouse hears of the next burst
//!   within one report, so it need not);
//! - scale-down follows the stable-window need but never below the panic or
//!   queued needs, at most one step per `scale_down_step` (and not within one
//!   of a scale-up), each dividing the count by at most
//!   `max_scale_down_rate`, and never below 1 while there is any traffic;
//! - zero only after `scale_to_zero_after` with no arrival, nothing in flight
//!   and nothing held;
//! - a wake (or anything held) at zero asks for max(1, `min_replicas`, need)
//!   at once;
//! - a restarted controller does not scale down until it has a full stable
//!   window of reports;
//! - always within `min_replicas` and `max_replicas`.
//!
//! `scaling.metrics` adds what the controller measures itself (see
//! [`signals`]): per-replica CPU and memory utilization and a queue's
//! backlog, by HPA's formulas. Each is one more need: scale-up follows the
//! largest, scale-down goes no lower than any of them over the panic window
//! (a short scale-down stabilization), and a signal with no sample forbids
//! scale-down. A backlog at zero replicas wakes the service
//! like a held request, and counts as activity for `scale_to_zero_after`.
//!
//! `scaling.behavior` (see [`behavior`]) then limits each change the way
//! HPA's does; a direction it configures replaces rouse's own pacing
//! (`scale_down_step`, `max_scale_down_rate`) in that direction. A wake
//! from zero is never delayed by it: a held request must not wait out a
//! policy period.

pub mod behavior;
pub mod signals;

pub use signals::{Measured, ReplicaUsage};

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use rouse_nats::config::{MetricSpec, ScalingConfig};

use behavior::{Behavior, Rules};
use signals::Need;

/// What the live proxies reported, summed.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Observation {
    pub in_flight: u64,
    pub held: u64,
    /// Requests per second arriving, over the last report interval.
    pub arrival_rate: f64,
    /// The last time any proxy saw an arrival, in-flight or held request, or
    /// sent a wake; `None` if never since this controller started.
    pub last_activity: Option<Instant>,
    /// A wake arrived since the last decision.
    pub woken: bool,
}

/// The outcome of one decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub replicas: u32,
    pub reason: Reason,
}

/// Why the count is what it is; published in `scaled` events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Requests are waiting on a service with no replica.
    Wake,
    /// Concurrency or rate above what the current replicas should carry.
    Load,
    /// A burst: scaled up at once, scale-down suspended.
    Panic,
    /// Following the stable-window average (down, or unchanged).
    Stable,
    /// No traffic for `scale_to_zero_after`.
    Idle,
    /// Held up by `min_replicas`.
    Minimum,
    /// Capped by `max_replicas`.
    Maximum,
    /// CPU utilization above its target.
    Cpu,
    /// Memory utilization above its target.
    Memory,
    /// The queue's backlog above its target.
    Queue,
    /// Fixed by an operator (`rouse scale --pin`).
    Pinned,
    /// The service was removed: its replicas drain, then stop.
    Removed,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Wake => "wake",
            Reason::Pinned => "pinned",
            Reason::Removed => "removed",
            Reason::Load => "load",
            Reason::Panic => "panic",
            Reason::Stable => "stable",
            Reason::Idle => "idle",
            Reason::Minimum => "min_replicas",
            Reason::Maximum => "max_replicas",
            Reason::Cpu => "cpu",
            Reason::Memory => "memory",
            Reason::Queue => "queue",
        }
    }
}

/// The span the oldest kept sample stands for (about one report interval).
const FIRST_SAMPLE_SPAN: Duration = Duration::from_secs(1);

/// A queue must last this long to count as missing capacity: a request held
/// for an instant while a slot frees is not a reason to start a replica.
const QUEUE_PERSISTENCE: Duration = Duration::from_secs(1);

/// More than a stable window of decisions at 10 per second.
const MAX_SAMPLES: usize = 4096;

/// One observation, kept for the window averages.
#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Instant,
    concurrency: f64,
    rate: f64,
}

/// Needs derived from the windows at one instant.
#[derive(Debug, Clone, Copy)]
struct Needs {
    stable: u32,
    panic: u32,
    /// From a persisting queue: replicas for what is in flight and waiting now.
    queued: u32,
    /// The largest need of the measured signals, and which one it is.
    measured: u32,
    measured_reason: Reason,
    /// The fewest replicas the measured signals allow.
    measured_floor: u32,
    /// Replicas the queue's backlog asks for (0 without a backlog).
    backlog: u32,
}

/// The per-replica targets the service scales on.
#[derive(Debug, Clone, Copy, Default)]
struct Targets {
    concurrency: Option<f64>,
    rps: Option<f64>,
    /// Shares (0.5 = 50%), not percent.
    cpu: Option<f64>,
    memory: Option<f64>,
    queue: Option<f64>,
}

impl Targets {
    fn of(config: &ScalingConfig) -> Self {
        let mut targets = Targets::default();
        for signal in config.signals() {
            match signal {
                MetricSpec::Concurrency { target } => targets.concurrency = Some(target),
                MetricSpec::Rps { target } => targets.rps = Some(target),
                MetricSpec::Cpu { target } => targets.cpu = Some(target / 100.0),
                MetricSpec::Memory { target } => targets.memory = Some(target / 100.0),
                MetricSpec::Queue { target, .. } => targets.queue = Some(target),
            }
        }
        targets
    }
}

/// Decision state of one service.
#[derive(Debug)]
pub struct Autoscaler {
    config: ScalingConfig,
    targets: Targets,
    /// `scaling.behavior`, when it configures either direction.
    behavior: Option<Behavior>,
    /// The last time the queue had a backlog.
    backlog_at: Option<Instant>,
    /// The count the current decision starts from (for the rate's tolerance).
    current: u32,
    /// The measured signals' floors of the last panic window: scale-down
    /// goes no lower than the highest (a backlog read once a second would
    /// otherwise flap the count on every dip; a whole stable window would
    /// keep every burst's peak a minute, as the simulation showed).
    measured_floors: VecDeque<(Instant, u32)>,
    samples: VecDeque<Sample>,
    /// When this autoscaler started; also the earliest "last activity", so a
    /// restarted controller never scales to zero before a full idle period.
    started: Instant,
    /// Panic lasts until this instant (extended while the condition holds).
    panic_until: Option<Instant>,
    last_scale_down: Option<Instant>,
    last_scale_up: Option<Instant>,
    /// Since when requests have been waiting without a break.
    queue_since: Option<Instant>,
}

impl Autoscaler {
    pub fn new(config: ScalingConfig, now: Instant) -> Self {
        let rules = |rules: &Option<rouse_nats::config::ScalingRules>| {
            rules.as_ref().map_or_else(Rules::unlimited, Rules::from)
        };
        let configured = &config.behavior;
        let behavior = (configured.scale_up.is_some() || configured.scale_down.is_some())
            .then(|| Behavior::new(rules(&configured.scale_up), rules(&configured.scale_down)));
        Self {
            targets: Targets::of(&config),
            behavior,
            backlog_at: None,
            current: 0,
            measured_floors: VecDeque::new(),
            config,
            samples: VecDeque::new(),
            started: now,
            panic_until: None,
            last_scale_down: None,
            last_scale_up: None,
            queue_since: None,
        }
    }

    /// Whether the last decision found the service in panic mode.
    pub fn panicking(&self, now: Instant) -> bool {
        self.panic_until.is_some_and(|until| now < until)
    }

    /// The replica count to aim for now, given `current` replicas (ready or starting).
    pub fn decide(&mut self, now: Instant, observation: &Observation, current: u32) -> Decision {
        self.decide_with(now, observation, current, &Measured::default())
    }

    /// [`Autoscaler::decide`], with what the controller measured itself.
    pub fn decide_with(
        &mut self,
        now: Instant,
        observation: &Observation,
        current: u32,
        measured: &Measured,
    ) -> Decision {
        self.remember(now, observation);
        self.current = current;
        if measured.backlog.is_some_and(|backlog| backlog > 0) {
            self.backlog_at = Some(now);
        }
        let mut needs = self.needs(now, observation, current, measured);
        needs.measured_floor = self.stable_floor(now, needs.measured_floor);
        let decision = self.unclamped(now, observation, needs, current);
        let decision = self.limit(now, current, self.clamp(decision));
        self.clamp(decision)
    }

    /// The highest measured floor within the panic window, or `floor` as
    /// it is when `scaling.behavior.scale_down` paces scale-down instead.
    fn stable_floor(&mut self, now: Instant, floor: u32) -> u32 {
        if self.config.behavior.scale_down.is_some() {
            return floor;
        }
        let window = self.config.panic_window();
        while self
            .measured_floors
            .front()
            .is_some_and(|(at, _)| now.saturating_duration_since(*at) > window)
        {
            self.measured_floors.pop_front();
        }
        // Bounded like the samples: one entry per decision at most.
        while self.measured_floors.len() >= MAX_SAMPLES {
            self.measured_floors.pop_front();
        }
        self.measured_floors.push_back((now, floor));
        self.measured_floors
            .iter()
            .map(|(_, f)| *f)
            .max()
            .unwrap_or(floor)
    }

    /// Applies `scaling.behavior`; a wake from zero passes unlimited (and
    /// is remembered, so later policy periods count it).
    fn limit(&mut self, now: Instant, current: u32, decision: Decision) -> Decision {
        let Some(behavior) = self.behavior.as_mut() else {
            return decision;
        };
        if current == 0 && decision.replicas > 0 {
            behavior.bypass(now, current, decision.replicas);
            return decision;
        }
        Decision {
            replicas: behavior.next(now, current, decision.replicas),
            reason: decision.reason,
        }
    }

    fn clamp(&self, decision: Decision) -> Decision {
        let min = self.config.min_replicas;
        let max = self.config.max_replicas.max(1);
        if decision.replicas < min {
            Decision {
                replicas: min,
                reason: Reason::Minimum,
            }
        } else if decision.replicas > max {
            Decision {
                replicas: max,
                reason: Reason::Maximum,
            }
        } else {
            decision
        }
    }

    fn unclamped(
        &mut self,
        now: Instant,
        observation: &Observation,
        needs: Needs,
        current: u32,
    ) -> Decision {
        let waiting = observation.woken || observation.held > 0 || needs.backlog > 0;
        if current == 0 && waiting {
            // Nothing runs: whatever waits needs capacity now.
            let backlog = observation.in_flight.saturating_add(observation.held) as f64;
            let replicas = self
                .backlog_need(backlog)
                .max(needs.panic)
                .max(needs.backlog)
                .max(1);
            self.last_scale_up = Some(now);
            return Decision {
                replicas,
                reason: Reason::Wake,
            };
        }
        if self.idle_for(now, observation) >= self.config.scale_to_zero_after {
            return Decision {
                replicas: 0,
                reason: Reason::Idle,
            };
        }
        self.update_panic(now, needs.panic, current);
        let panicking = self.panicking(now);
        let requests = if panicking {
            needs.stable.max(needs.panic).max(needs.queued)
        } else {
            needs.stable.max(needs.queued)
        };
        let up = requests.max(needs.measured);
        if up > current {
            self.last_scale_up = Some(now);
            let reason = if needs.measured > requests {
                needs.measured_reason
            } else if panicking {
                Reason::Panic
            } else {
                Reason::Load
            };
            return Decision {
                replicas: up,
                reason,
            };
        }
        if panicking {
            return Decision {
                replicas: current,
                reason: Reason::Panic,
            };
        }
        self.scale_down_target(now, needs, current)
    }

    /// Enters panic when the panic-window need reaches `panic_threshold` ×
    /// current replicas; leaves a panic window after that was last true.
    fn update_panic(&mut self, now: Instant, panic_need: u32, current: u32) {
        let threshold = self.config.panic_threshold * f64::from(current.max(1));
        if current > 0 && f64::from(panic_need) >= threshold {
            self.panic_until = Some(now + self.config.panic_window());
        } else if self.panic_until.is_some_and(|until| now >= until) {
            self.panic_until = None;
        }
    }

    fn scale_down_target(&mut self, now: Instant, needs: Needs, current: u32) -> Decision {
        let unchanged = Decision {
            replicas: current,
            reason: Reason::Stable,
        };
        if now.saturating_duration_since(self.started) < self.config.stable_window {
            // Too little history to trust a scale-down (e.g. just restarted).
            return unchanged;
        }
        // `scaling.behavior.scale_down` paces scale-down instead of these.
        let floor = if self.config.behavior.scale_down.is_some() {
            0
        } else {
            let step = self.config.scale_down_step;
            let recent =
                |at: Option<Instant>| at.is_some_and(|at| now.saturating_duration_since(at) < step);
            // A scale-up is never taken back before its replicas could help.
            if recent(self.last_scale_down) || recent(self.last_scale_up) {
                return unchanged;
            }
            (f64::from(current) / self.config.max_scale_down_rate).ceil() as u32
        };
        // Not idle yet (checked before), so at least one replica stays; and
        // never below what the last few seconds, the queue or a measured
        // signal still need.
        let target = needs
            .stable
            .max(needs.panic)
            .max(needs.queued)
            .max(needs.measured_floor)
            .max(floor)
            .max(1)
            .min(current);
        if target < current {
            self.last_scale_down = Some(now);
        }
        Decision {
            replicas: target,
            reason: Reason::Stable,
        }
    }

    fn needs(
        &self,
        now: Instant,
        observation: &Observation,
        current: u32,
        measured: &Measured,
    ) -> Needs {
        let (stable_concurrency, stable_rate) = self.average(now, self.config.stable_window);
        let (panic_concurrency, panic_rate) = self.average(now, self.config.panic_window());
        let tolerance = self.config.tolerance;
        let mut measured_needs: Vec<(Need, Reason)> = Vec::new();
        let cpu: Vec<Option<f64>> = measured.ready.iter().map(|r| r.cpu).collect();
        let memory: Vec<Option<f64>> = measured.ready.iter().map(|r| r.memory).collect();
        if let Some(target) = self.targets.cpu {
            let need = signals::utilization(current, &cpu, target, tolerance);
            measured_needs.push((need, Reason::Cpu));
        }
        if let Some(target) = self.targets.memory {
            let need = signals::utilization(current, &memory, target, tolerance);
            measured_needs.push((need, Reason::Memory));
        }
        let mut backlog = 0;
        if let Some(target) = self.targets.queue {
            let need = signals::queue(current, measured.backlog, target, tolerance);
            backlog = need.up();
            measured_needs.push((need, Reason::Queue));
        }
        let (measured, measured_reason) = measured_needs
            .iter()
            .map(|(need, reason)| (need.up(), *reason))
            .max_by_key(|(up, _)| *up)
            .unwrap_or((0, Reason::Load));
        let measured_floor = measured_needs
            .iter()
            .map(|(need, _)| need.floor(current))
            .max()
            .unwrap_or(0);
        Needs {
            measured,
            measured_reason,
            measured_floor,
            backlog,
            stable: self.need(stable_concurrency, stable_rate),
            panic: self.need(panic_concurrency, panic_rate),
            queued: match self.queue_since {
                Some(since) if now.saturating_duration_since(since) >= QUEUE_PERSISTENCE => {
                    self.queue_need(observation)
                }
                _ => 0,
            },
        }
    }

    /// Replicas for requests waiting at zero: by the concurrency target when
    /// there is one, else by `target_concurrency` (which still sizes a wake
    /// when `metrics` lists no concurrency).
    fn backlog_need(&self, backlog: f64) -> u32 {
        let target = self
            .targets
            .concurrency
            .unwrap_or(self.config.target_concurrency);
        (backlog / target).ceil().clamp(0.0, f64::from(u32::MAX)) as u32
    }

    /// Replicas for everything in flight and waiting. With a per-replica cap
    /// the queue formed because replicas are full, and each new replica
    /// takes up to the cap, not just the target.
    fn queue_need(&self, observation: &Observation) -> u32 {
        let waiting = observation.in_flight.saturating_add(observation.held) as f64;
        let per_replica = self
            .targets
            .concurrency
            .unwrap_or(self.config.target_concurrency)
            .max(f64::from(self.config.container_concurrency));
        (waiting / per_replica)
            .ceil()
            .clamp(0.0, f64::from(u32::MAX)) as u32
    }

    /// Replicas for a concurrency and a request rate.
    fn need(&self, concurrency: f64, rate: f64) -> u32 {
        let by_concurrency = match self.targets.concurrency {
            Some(target) => (concurrency / target).ceil(),
            None => 0.0,
        };
        let by_rate = match self.targets.rps {
            // A rate is a utilization too: within `tolerance` of what the
            // current replicas carry at target, it asks for them (as HPA).
            Some(target) => {
                let current = f64::from(self.current);
                let ratio = rate / (target * current);
                if self.current > 0 && (ratio - 1.0).abs() <= self.config.tolerance {
                    current
                } else {
                    (rate / target).ceil()
                }
            }
            None => 0.0,
        };
        by_concurrency.max(by_rate).clamp(0.0, f64::from(u32::MAX)) as u32
    }

    fn remember(&mut self, now: Instant, observation: &Observation) {
        // Held requests are a backlog, not load: averaged in, a cold start's
        // queue would be paid for long after it drained. They act through
        // the queued need instead.
        self.samples.push_back(Sample {
            at: now,
            concurrency: observation.in_flight as f64,
            rate: observation.arrival_rate,
        });
        if observation.held == 0 {
            self.queue_since = None;
        } else if self.queue_since.is_none() {
            self.queue_since = Some(now);
        }
        let window = self.config.stable_window;
        // Keep one sample from before the window: it marks where the next
        // one's span starts.
        while self.samples.len() > 1
            && self
                .samples
                .get(1)
                .is_some_and(|s| now.saturating_duration_since(s.at) >= window)
        {
            self.samples.pop_front();
        }
        // Bounded even if decisions come faster than expected.
        while self.samples.len() > MAX_SAMPLES {
            self.samples.pop_front();
        }
    }

    /// Time-weighted averages of concurrency and rate over `window`.
    ///
    /// A sample stands for the time since the previous one (a report says
    /// what the last interval looked like), so a burst counts from the
    /// moment it is reported. Time before the first sample counts as zero:
    /// a controller with little history does not overestimate.
    fn average(&self, now: Instant, window: Duration) -> (f64, f64) {
        let total = window.as_secs_f64();
        if total <= 0.0 {
            return (0.0, 0.0);
        }
        let start = now.checked_sub(window).unwrap_or(self.started);
        let mut previous: Option<Instant> = None;
        let (mut concurrency, mut rate) = (0.0, 0.0);
        for sample in &self.samples {
            let from = previous
                .unwrap_or_else(|| {
                    sample
                        .at
                        .checked_sub(FIRST_SAMPLE_SPAN)
                        .unwrap_or(sample.at)
                })
                .max(start);
            previous = Some(sample.at);
            if sample.at <= from {
                continue;
            }
            let weight = sample.at.saturating_duration_since(from).as_secs_f64();
            concurrency += sample.concurrency * weight;
            rate += sample.rate * weight;
        }
        (concurrency / total, rate / total)
    }

    fn idle_for(&self, now: Instant, observation: &Observation) -> Duration {
        if observation.in_flight > 0 || observation.held > 0 || observation.woken {
            return Duration::ZERO;
        }
        let last = observation
            .last_activity
            .max(self.backlog_at)
            .map_or(self.started, |at| at.max(self.started));
        now.saturating_duration_since(last)
    }
}

#[cfg(test)]
mod tests;
