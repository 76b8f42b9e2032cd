//! How many replicas a service needs: a pure function of what the proxies
//! reported and of the time, with no I/O, so every rule is tested with a fake
//! clock.
//!
//! Modelled on Knative's KPA, but built for a system that is *told* about
//! load (proxies push reports and wakes) instead of scraping it:
//! - concurrency (in flight + held) is averaged, time-weighted, over a stable
//!   window (60 s) and a panic window (6 s); need = ceil(average /
//!   `target_concurrency`), max'ed with ceil(rate / `target_rps`);
//! - scale-up follows the larger of the two needs at once, and requests
//!   waiting in a proxy's queue count at once (a queue means too few replicas);
//! - panic: when the panic-window need reaches `panic_threshold` × current
//!   replicas, scale up at once; no scale-down while the burst still needs
//!   every replica, nor for a panic window after (KPA holds a whole stable
//!   window; rouse hears of the next burst within one report, so it need not);
//! - scale-down follows the stable-window need, at most one step per
//!   `scale_down_step`, each dividing the count by at most
//!   `max_scale_down_rate`, and never below 1 while there is any traffic;
//! - zero only after `scale_to_zero_after` with no arrival, nothing in flight
//!   and nothing held;
//! - a wake (or anything held) at zero asks for max(1, `min_replicas`, need)
//!   at once;
//! - a restarted controller does not scale down until it has a full stable
//!   window of reports;
//! - always within `min_replicas` and `max_replicas`.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use rouse_nats::config::ScalingConfig;

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
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Wake => "wake",
            Reason::Load => "load",
            Reason::Panic => "panic",
            Reason::Stable => "stable",
            Reason::Idle => "idle",
            Reason::Minimum => "min_replicas",
            Reason::Maximum => "max_replicas",
        }
    }
}

/// The span the oldest kept sample stands for (about one report interval).
const FIRST_SAMPLE_SPAN: Duration = Duration::from_secs(1);

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
    /// From the instantaneous queue: replicas needed for what is waiting now.
    queued: u32,
}

/// Decision state of one service.
#[derive(Debug)]
pub struct Autoscaler {
    config: ScalingConfig,
    samples: VecDeque<Sample>,
    /// When this autoscaler started; also the earliest "last activity", so a
    /// restarted controller never scales to zero before a full idle period.
    started: Instant,
    /// Panic lasts until this instant (extended while the condition holds).
    panic_until: Option<Instant>,
    last_scale_down: Option<Instant>,
}

impl Autoscaler {
    pub fn new(config: ScalingConfig, now: Instant) -> Self {
        Self {
            config,
            samples: VecDeque::new(),
            started: now,
            panic_until: None,
            last_scale_down: None,
        }
    }

    pub fn config(&self) -> &ScalingConfig {
        &self.config
    }

    /// Whether the last decision found the service in panic mode.
    pub fn panicking(&self, now: Instant) -> bool {
        self.panic_until.is_some_and(|until| now < until)
    }

    /// The replica count to aim for now, given `current` replicas (ready or starting).
    pub fn decide(&mut self, now: Instant, observation: &Observation, current: u32) -> Decision {
        self.remember(now, observation);
        let needs = self.needs(now, observation);
        let decision = self.unclamped(now, observation, needs, current);
        self.clamp(decision)
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
        let waiting = observation.woken || observation.held > 0;
        if current == 0 {
            if waiting {
                let replicas = needs.queued.max(needs.panic).max(1);
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
        } else if self.idle_for(now, observation) >= self.config.scale_to_zero_after {
            return Decision {
                replicas: 0,
                reason: Reason::Idle,
            };
        }
        self.update_panic(now, needs.panic, current);
        let up = needs.stable.max(needs.panic).max(needs.queued);
        if self.panicking(now) {
            return Decision {
                replicas: up.max(current),
                reason: Reason::Panic,
            };
        }
        if up > current {
            return Decision {
                replicas: up,
                reason: Reason::Load,
            };
        }
        self.scale_down_target(now, needs, current)
    }

    /// Enters panic when the burst needs `panic_threshold` × current, stays
    /// in it while the burst still needs every current replica, and leaves a
    /// panic window after that stopped being true.
    fn update_panic(&mut self, now: Instant, panic_need: u32, current: u32) {
        let current_f = f64::from(current.max(1));
        let triggered = f64::from(panic_need) >= self.config.panic_threshold * current_f;
        let sustained = self.panicking(now) && panic_need >= current;
        if current > 0 && (triggered || sustained) {
            self.panic_until = Some(now + self.config.panic_window);
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
        if self
            .last_scale_down
            .is_some_and(|at| now.saturating_duration_since(at) < self.config.scale_down_step)
        {
            return unchanged;
        }
        // Not idle yet (checked before), so at least one replica stays.
        let floor = (f64::from(current) / self.config.max_scale_down_rate).ceil() as u32;
        let target = needs.stable.max(floor).max(1).min(current);
        if target < current {
            self.last_scale_down = Some(now);
        }
        Decision {
            replicas: target,
            reason: Reason::Stable,
        }
    }

    fn needs(&self, now: Instant, observation: &Observation) -> Needs {
        let (stable_concurrency, stable_rate) = self.average(now, self.config.stable_window);
        let (panic_concurrency, panic_rate) = self.average(now, self.config.panic_window);
        Needs {
            stable: self.need(stable_concurrency, stable_rate),
            panic: self.need(panic_concurrency, panic_rate),
            queued: if observation.held > 0 {
                let concurrency = observation.in_flight.saturating_add(observation.held) as f64;
                self.need(concurrency, 0.0)
            } else {
                0
            },
        }
    }

    /// Replicas for a concurrency and a request rate.
    fn need(&self, concurrency: f64, rate: f64) -> u32 {
        let by_concurrency = (concurrency / self.config.target_concurrency).ceil();
        let by_rate = match self.config.target_rps {
            Some(target) => (rate / target).ceil(),
            None => 0.0,
        };
        by_concurrency.max(by_rate).clamp(0.0, f64::from(u32::MAX)) as u32
    }

    fn remember(&mut self, now: Instant, observation: &Observation) {
        self.samples.push_back(Sample {
            at: now,
            concurrency: observation.in_flight.saturating_add(observation.held) as f64,
            rate: observation.arrival_rate,
        });
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
            .map_or(self.started, |at| at.max(self.started));
        now.saturating_duration_since(last)
    }
}

#[cfg(test)]
mod tests;
