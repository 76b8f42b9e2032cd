//! A Knative-KPA-like baseline, written from Knative Serving's autoscaling
//! documentation (the KPA algorithm, its config-autoscaler defaults and the
//! scale-to-zero settings):
//! - each replica's queue-proxy measures the average number of requests it
//!   holds (in service or queued) over each second; the autoscaler collects
//!   one such sample per second, summed over replicas, plus what the
//!   activator holds while the service has no ready replica;
//! - every 2 s (the autoscaler tick) it averages the samples over the stable
//!   window (60 s) and the panic window (10 % of it: 6 s); while less than a
//!   window of data exists since the first sample (or since a window-long gap
//!   without samples), the average is over the data there is;
//! - desired = ceil(average / target) for each window, kept within
//!   [floor(ready / max scale-down rate 2), ceil(ready × max scale-up rate
//!   1000)], where ready counts at least 1;
//! - panic starts when the panic-window desire is ≥ 200 % of the ready
//!   replicas and is extended each tick that stays over it; in panic the
//!   count follows the panic desire and never goes down; panic ends once a
//!   whole stable window has passed since the last tick over the threshold;
//! - scale to zero: once the desire is 0, the service must have been active
//!   for a stable window, then the activator is put in the path and the last
//!   replica goes after the scale-to-zero grace period (30 s);
//! - from zero: the activator's first request triggers an immediate decision
//!   (a "poke") instead of waiting for the tick.
//!
//! The target is the same requests-in-flight target every policy gets
//! (Knative's default 70 % of the container concurrency: 7 of 10).

use std::collections::VecDeque;

use super::{Common, Every, Policy};
use crate::model::View;

#[derive(Debug, Clone)]
pub struct KpaConfig {
    pub tick_ms: u64,
    pub stable_window_s: u64,
    pub panic_window_s: u64,
    pub panic_threshold: f64,
    pub max_scale_up_rate: f64,
    pub max_scale_down_rate: f64,
    pub scale_to_zero_grace_ms: u64,
    pub target: f64,
    pub max_replicas: u32,
}

impl KpaConfig {
    /// Knative's defaults, with the shared target and maximum.
    pub fn knative_defaults(common: &Common) -> Self {
        Self {
            tick_ms: 2_000,
            stable_window_s: 60,
            panic_window_s: 6, // panic-window-percentage 10 % of 60 s
            panic_threshold: 2.0,
            max_scale_up_rate: 1000.0,
            max_scale_down_rate: 2.0,
            scale_to_zero_grace_ms: 30_000,
            target: common.target_concurrency,
            max_replicas: common.max_replicas,
        }
    }
}

/// Per-second samples with Knative's averaging: a window's average is its
/// sum over the window's length, or over the time since the first sample when
/// that is shorter; a window-long gap with no sample starts afresh.
#[derive(Debug, Clone)]
pub struct Window {
    seconds: u64,
    /// (second index, value), oldest first, at most `seconds` long.
    samples: VecDeque<(u64, f64)>,
    first: Option<u64>,
}

impl Window {
    pub fn new(seconds: u64) -> Self {
        Self {
            seconds: seconds.max(1),
            samples: VecDeque::new(),
            first: None,
        }
    }

    /// Records the sample of second `second` (covering [second, second+1)).
    pub fn record(&mut self, second: u64, value: f64) {
        let gap = self
            .samples
            .back()
            .map_or(u64::MAX, |(last, _)| second.saturating_sub(*last));
        if gap >= self.seconds {
            self.samples.clear();
            self.first = Some(second);
        }
        self.samples.push_back((second, value));
        while self
            .samples
            .front()
            .is_some_and(|(s, _)| *s + self.seconds <= second)
        {
            self.samples.pop_front();
        }
    }

    /// Average over the window ending just before second `upto` (exclusive).
    pub fn average(&self, upto: u64) -> f64 {
        let Some(first) = self.first else {
            return 0.0;
        };
        let start = upto.saturating_sub(self.seconds);
        let sum: f64 = self
            .samples
            .iter()
            .filter(|(s, _)| *s >= start && *s < upto)
            .map(|(_, v)| v)
            .sum();
        let span = upto.saturating_sub(first.max(start)).max(1);
        sum / span as f64
    }
}

/// The decider: desired replicas from the window averages.
#[derive(Debug, Clone)]
pub struct Decider {
    config: KpaConfig,
    /// The last tick over the panic threshold; `None` when not panicking.
    panic_since: Option<u64>,
    max_panic_pods: u32,
}

impl Decider {
    pub fn new(config: KpaConfig) -> Self {
        Self {
            config,
            panic_since: None,
            max_panic_pods: 0,
        }
    }

    #[cfg(test)]
    pub fn panicking(&self) -> bool {
        self.panic_since.is_some()
    }

    /// One evaluation at `now_ms` with `ready` ready replicas.
    pub fn decide(&mut self, now_ms: u64, ready: u32, stable: f64, panic: f64) -> u32 {
        let c = &self.config;
        let ready = f64::from(ready.max(1));
        let max_up = (ready * c.max_scale_up_rate).ceil();
        let max_down = (ready / c.max_scale_down_rate).floor();
        let stable_want = (stable / c.target).ceil();
        let panic_want = (panic / c.target).ceil();
        let desired_stable = stable_want.max(max_down).min(max_up) as u32;
        let desired_panic = panic_want.max(max_down).min(max_up) as u32;
        let over_threshold = panic_want / ready >= c.panic_threshold;
        if over_threshold {
            // Start panicking, or extend the panic.
            self.panic_since = Some(now_ms);
        } else if let Some(since) = self.panic_since {
            if now_ms > since + c.stable_window_s * 1000 {
                self.panic_since = None;
                self.max_panic_pods = 0;
            }
        }
        let desired = if self.panic_since.is_some() {
            // No scale-down while panicking.
            self.max_panic_pods = self.max_panic_pods.max(desired_panic);
            self.max_panic_pods
        } else {
            desired_stable
        };
        desired.min(c.max_replicas)
    }
}

pub struct Kpa {
    config: KpaConfig,
    step_ms: u64,
    decider: Decider,
    stable: Window,
    panic: Window,
    tick: Every,
    /// Sum of outstanding requests over the steps of the current second.
    second_sum: f64,
    second_steps: u64,
    /// A ready replica existed during the current second (so it was scraped).
    second_scraped: bool,
    current_second: u64,
    /// The scale last applied.
    applied: u32,
    /// Since when the decider has wanted zero.
    zero_since: Option<u64>,
    /// Since when the service has been scaled above zero.
    active_since: Option<u64>,
}

impl Kpa {
    pub fn new(config: KpaConfig, common: &Common) -> Self {
        Self {
            decider: Decider::new(config.clone()),
            stable: Window::new(config.stable_window_s),
            panic: Window::new(config.panic_window_s),
            tick: Every::new(config.tick_ms, config.tick_ms),
            step_ms: common.step_ms,
            config,
            second_sum: 0.0,
            second_steps: 0,
            second_scraped: false,
            current_second: 0,
            applied: 0,
            zero_since: None,
            active_since: None,
        }
    }

    /// The PodAutoscaler reconciler: applies a desire, with the scale-to-zero
    /// rules. Returns the scale to set.
    fn apply(&mut self, now_ms: u64, want: u32) -> u32 {
        if want > 0 {
            self.zero_since = None;
            if self.applied == 0 {
                self.active_since = Some(now_ms);
            }
            self.applied = want;
            return want;
        }
        if self.applied == 0 {
            return 0;
        }
        let zero_since = *self.zero_since.get_or_insert(now_ms);
        let active_for = now_ms.saturating_sub(self.active_since.unwrap_or(0));
        if active_for < self.config.stable_window_s * 1000 {
            // Not active for a stable window yet: at most one replica.
            self.applied = 1;
        } else if now_ms.saturating_sub(zero_since) >= self.config.scale_to_zero_grace_ms {
            self.applied = 0;
            self.active_since = None;
            self.zero_since = None;
        }
        self.applied
    }
}

impl Policy for Kpa {
    fn name(&self) -> &'static str {
        "kpa"
    }

    fn on_step(&mut self, view: &View) -> Option<u32> {
        let now_ms = view.step * self.step_ms;
        let second = now_ms / 1000;
        if second != self.current_second {
            // Close the previous second's sample: scraped from ready replicas,
            // or reported by the activator while it holds requests.
            if self.second_scraped || self.second_sum > 0.0 {
                let value = self.second_sum / self.second_steps.max(1) as f64;
                self.stable.record(self.current_second, value);
                self.panic.record(self.current_second, value);
            }
            self.current_second = second;
            self.second_sum = 0.0;
            self.second_steps = 0;
            self.second_scraped = false;
        }
        self.second_sum += view.outstanding() as f64;
        self.second_steps += 1;
        self.second_scraped |= view.ready > 0;

        if view.active() == 0 && self.applied == 0 && view.newly_held {
            // The activator pokes the autoscaler with what it holds now; the
            // decision sees it as the current second's sample.
            let mut stable = self.stable.clone();
            let mut panic = self.panic.clone();
            stable.record(second, view.outstanding() as f64);
            panic.record(second, view.outstanding() as f64);
            let want = self.decider.decide(
                now_ms,
                view.ready,
                stable.average(second + 1),
                panic.average(second + 1),
            );
            return Some(self.apply(now_ms, want));
        }
        if !self.tick.due(now_ms) {
            return None;
        }
        let want = self.decider.decide(
            now_ms,
            view.ready,
            self.stable.average(second),
            self.panic.average(second),
        );
        Some(self.apply(now_ms, want))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> KpaConfig {
        KpaConfig::knative_defaults(&Common {
            step_ms: 10,
            target_concurrency: 10.0,
            max_replicas: 1000,
        })
    }

    #[test]
    fn window_averages_over_partial_data_then_the_full_window() {
        let mut w = Window::new(6);
        assert_eq!(w.average(10), 0.0);
        w.record(10, 12.0);
        assert_eq!(w.average(11), 12.0);
        w.record(11, 0.0);
        assert_eq!(w.average(12), 6.0);
        for s in 12..20 {
            w.record(s, 6.0);
        }
        // Full window: seconds 14..20.
        assert_eq!(w.average(20), 6.0);
        // Missing seconds count as zero.
        assert_eq!(w.average(23), 3.0);
        // A window-long gap starts afresh.
        w.record(40, 1.0);
        assert_eq!(w.average(41), 1.0);
    }

    #[test]
    fn panic_entry_needs_twice_the_ready_replicas() {
        let mut d = Decider::new(config());
        // 4 ready; panic desire 7 < 8: no panic, stable desire rules.
        assert_eq!(d.decide(0, 4, 40.0, 70.0), 4);
        assert!(!d.panicking());
        // Panic desire 8 = 2 × 4: panic, follow the panic desire.
        assert_eq!(d.decide(2_000, 4, 40.0, 80.0), 8);
        assert!(d.panicking());
    }

    #[test]
    fn no_scale_down_in_panic_and_exit_after_a_stable_window() {
        let mut d = Decider::new(config());
        assert_eq!(d.decide(0, 2, 20.0, 100.0), 10);
        // The burst fades but panic holds the maximum.
        assert_eq!(d.decide(2_000, 10, 20.0, 30.0), 10);
        // Under the threshold since 0 s, but a stable window has not passed...
        assert_eq!(d.decide(60_000, 10, 20.0, 10.0), 10);
        // ...60 s after the last tick over the threshold, panic ends and the
        // stable desire (2) applies, limited to halving 10 → 5.
        assert_eq!(d.decide(60_001, 10, 20.0, 10.0), 5);
        assert!(!d.panicking());
    }

    #[test]
    fn panic_is_extended_while_over_threshold() {
        let mut d = Decider::new(config());
        d.decide(0, 1, 10.0, 30.0);
        d.decide(50_000, 1, 10.0, 30.0); // still over: extends to 50 s
        assert_eq!(d.decide(100_000, 3, 10.0, 10.0), 3);
        assert!(d.panicking());
        assert_eq!(d.decide(110_001, 3, 10.0, 10.0), 1);
        assert!(!d.panicking());
    }

    #[test]
    fn scale_down_is_at_most_halving_per_tick() {
        let mut d = Decider::new(config());
        assert_eq!(d.decide(0, 20, 10.0, 10.0), 10);
        assert_eq!(d.decide(2_000, 10, 0.0, 0.0), 5);
        assert_eq!(d.decide(4_000, 5, 0.0, 0.0), 2);
        assert_eq!(d.decide(6_000, 2, 0.0, 0.0), 1);
        assert_eq!(d.decide(8_000, 1, 0.0, 0.0), 0);
    }

    #[test]
    fn zero_waits_for_the_grace_period_after_the_desire_drops() {
        let common = Common {
            step_ms: 10,
            target_concurrency: 10.0,
            max_replicas: 10,
        };
        let mut kpa = Kpa::new(config(), &common);
        assert_eq!(kpa.apply(0, 2), 2);
        assert_eq!(kpa.apply(70_000, 0), 2);
        assert_eq!(kpa.apply(99_990, 0), 2);
        assert_eq!(kpa.apply(100_000, 0), 0);
        // Before a stable window of activity, at most 1 is kept.
        assert_eq!(kpa.apply(110_000, 3), 3);
        assert_eq!(kpa.apply(120_000, 0), 1);
    }

    #[test]
    fn first_request_at_zero_pokes_at_once() {
        let common = Common {
            step_ms: 10,
            target_concurrency: 10.0,
            max_replicas: 10,
        };
        let mut kpa = Kpa::new(config(), &common);
        let idle = View::default();
        assert_eq!(kpa.on_step(&View { step: 1, ..idle }), None);
        let burst = View {
            step: 55,
            arrivals: 35,
            queued: 35,
            newly_held: true,
            ..idle
        };
        // 35 held at a target of 10: 4 replicas, at once.
        assert_eq!(kpa.on_step(&burst), Some(4));
    }
}
