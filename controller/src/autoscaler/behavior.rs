//! HPA's `behavior`, as a pure limiter between a desired count and the
//! count acted on: stabilization windows and rate policies, with the
//! semantics Kubernetes users know (autoscaling/v2 `HPAScalingRules`).
//!
//! - Stabilization: a scale-up goes only as high as the *lowest*
//!   recommendation within the up window; a scale-down only as low as the
//!   *highest* within the down window (flapping is smoothed away).
//! - Policies limit the change over a sliding `period`: `pods` by a
//!   number, `percent` by a share of the count at the period's start;
//!   `select: max` takes the policy allowing the most change, `min` the
//!   least, `disabled` forbids that direction.
//!
//! Built from `scaling.behavior`; the autoscaler passes each decision
//! through it.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use rouse_nats::config::{PolicyType, ScalingRules, SelectPolicy};

/// What a policy limits by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyKind {
    Pods,
    Percent,
}

/// One rate policy: at most `value` (pods, or percent) per `period`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub kind: PolicyKind,
    pub value: u32,
    pub period: Duration,
}

/// Which policy wins when several apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Select {
    /// The one allowing the most change.
    Max,
    /// The one allowing the least change.
    Min,
    /// No change in this direction at all.
    Disabled,
}

/// The rules of one direction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rules {
    pub stabilization_window: Duration,
    pub policies: Vec<Policy>,
    pub select: Select,
}

impl Rules {
    /// HPA's default scale-up: no window; 4 pods or 100% per 15 s, max.
    pub fn hpa_scale_up() -> Self {
        let period = Duration::from_secs(15);
        Rules {
            stabilization_window: Duration::ZERO,
            policies: vec![
                Policy {
                    kind: PolicyKind::Pods,
                    value: 4,
                    period,
                },
                Policy {
                    kind: PolicyKind::Percent,
                    value: 100,
                    period,
                },
            ],
            select: Select::Max,
        }
    }

    /// HPA's default scale-down: a 300 s window; 100% per 15 s.
    pub fn hpa_scale_down() -> Self {
        Rules {
            stabilization_window: Duration::from_secs(300),
            policies: vec![Policy {
                kind: PolicyKind::Percent,
                value: 100,
                period: Duration::from_secs(15),
            }],
            select: Select::Max,
        }
    }

    /// No window and no policy: every change allowed at once.
    pub fn unlimited() -> Self {
        Rules {
            stabilization_window: Duration::ZERO,
            policies: Vec::new(),
            select: Select::Max,
        }
    }

    fn longest_period(&self) -> Duration {
        self.policies
            .iter()
            .map(|p| p.period)
            .max()
            .unwrap_or_default()
    }
}

impl From<&ScalingRules> for Rules {
    fn from(rules: &ScalingRules) -> Self {
        Rules {
            stabilization_window: rules.stabilization_window,
            policies: rules
                .policies
                .iter()
                .map(|policy| Policy {
                    kind: match policy.kind {
                        PolicyType::Pods => PolicyKind::Pods,
                        PolicyType::Percent => PolicyKind::Percent,
                    },
                    value: policy.value,
                    period: policy.period,
                })
                .collect(),
            select: match rules.select {
                SelectPolicy::Max => Select::Max,
                SelectPolicy::Min => Select::Min,
                SelectPolicy::Disabled => Select::Disabled,
            },
        }
    }
}

/// The limiter of one service: remembers recommendations and changes.
#[derive(Debug)]
pub struct Behavior {
    up: Rules,
    down: Rules,
    recommendations: VecDeque<(Instant, u32)>,
    /// Changes acted on: when, and by how much (+ up, - down).
    changes: VecDeque<(Instant, i64)>,
}

impl Behavior {
    pub fn new(up: Rules, down: Rules) -> Self {
        Self {
            up,
            down,
            recommendations: VecDeque::new(),
            changes: VecDeque::new(),
        }
    }

    /// The count to act on now, given the current count and the desired
    /// one; records the change it allows.
    pub fn next(&mut self, now: Instant, current: u32, desired: u32) -> u32 {
        self.forget_before(now);
        self.recommendations.push_back((now, desired));
        let stabilized = self.stabilize(now, current, desired);
        let limited = if stabilized > current {
            stabilized.min(self.up_limit(now, current))
        } else if stabilized < current {
            stabilized.max(self.down_limit(now, current))
        } else {
            current
        };
        if limited != current {
            self.changes
                .push_back((now, i64::from(limited) - i64::from(current)));
        }
        limited
    }

    /// Records a change made without limits (a wake from zero), so that
    /// the policies' periods count it.
    pub fn bypass(&mut self, now: Instant, current: u32, to: u32) {
        self.forget_before(now);
        self.recommendations.push_back((now, to));
        if to != current {
            self.changes
                .push_back((now, i64::from(to) - i64::from(current)));
        }
    }

    fn forget_before(&mut self, now: Instant) {
        let keep = self
            .up
            .stabilization_window
            .max(self.down.stabilization_window);
        while self
            .recommendations
            .front()
            .is_some_and(|(at, _)| now.saturating_duration_since(*at) > keep)
        {
            self.recommendations.pop_front();
        }
        let keep = self.up.longest_period().max(self.down.longest_period());
        while self
            .changes
            .front()
            .is_some_and(|(at, _)| now.saturating_duration_since(*at) > keep)
        {
            self.changes.pop_front();
        }
    }

    fn stabilize(&self, now: Instant, current: u32, desired: u32) -> u32 {
        let within = |window: Duration| {
            self.recommendations
                .iter()
                .filter(move |(at, _)| now.saturating_duration_since(*at) <= window)
                .map(|(_, n)| *n)
        };
        let up = within(self.up.stabilization_window)
            .min()
            .unwrap_or(desired);
        let down = within(self.down.stabilization_window)
            .max()
            .unwrap_or(desired);
        if desired > current {
            up.max(current)
        } else if desired < current {
            down.min(current)
        } else {
            current
        }
    }

    /// Replicas added (or, negative, removed) within `period` before `now`.
    fn changed_within(&self, now: Instant, period: Duration, up: bool) -> u32 {
        let total: i64 = self
            .changes
            .iter()
            .filter(|(at, change)| {
                now.saturating_duration_since(*at) < period && (*change > 0) == up
            })
            .map(|(_, change)| change.abs())
            .sum();
        u32::try_from(total).unwrap_or(u32::MAX)
    }

    fn up_limit(&self, now: Instant, current: u32) -> u32 {
        let limits = self.up.policies.iter().map(|policy| {
            let start = current.saturating_sub(self.changed_within(now, policy.period, true));
            match policy.kind {
                PolicyKind::Pods => start.saturating_add(policy.value),
                PolicyKind::Percent => {
                    let grown = (f64::from(start) * (1.0 + f64::from(policy.value) / 100.0)).ceil();
                    grown.min(f64::from(u32::MAX)) as u32
                }
            }
        });
        match self.up.select {
            Select::Max => limits.max().unwrap_or(u32::MAX),
            Select::Min => limits.min().unwrap_or(u32::MAX),
            Select::Disabled => current,
        }
    }

    fn down_limit(&self, now: Instant, current: u32) -> u32 {
        let limits = self.down.policies.iter().map(|policy| {
            let start = current.saturating_add(self.changed_within(now, policy.period, false));
            match policy.kind {
                PolicyKind::Pods => start.saturating_sub(policy.value),
                PolicyKind::Percent => {
                    let kept = (f64::from(start) * (1.0 - f64::from(policy.value) / 100.0)).floor();
                    kept.max(0.0) as u32
                }
            }
        });
        match self.down.select {
            // The most change is the lowest floor.
            Select::Max => limits.min().unwrap_or(0),
            Select::Min => limits.max().unwrap_or(0),
            Select::Disabled => current,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    fn rules(window: u64, policies: &[(PolicyKind, u32, u64)], select: Select) -> Rules {
        Rules {
            stabilization_window: secs(window),
            policies: policies
                .iter()
                .map(|&(kind, value, period)| Policy {
                    kind,
                    value,
                    period: secs(period),
                })
                .collect(),
            select,
        }
    }

    #[test]
    fn hpa_defaults_double_or_add_four_per_period_whichever_is_more() {
        let t0 = Instant::now();
        let mut b = Behavior::new(Rules::hpa_scale_up(), Rules::hpa_scale_down());
        // From 1: +4 beats +100%.
        assert_eq!(b.next(t0, 1, 20), 5);
        // Within the same 15 s, nothing more: the period started at 1.
        assert_eq!(b.next(t0 + secs(5), 5, 20), 5);
        // A new period from 5: +100% (10) beats +4 (9).
        assert_eq!(b.next(t0 + secs(16), 5, 20), 10);
        assert_eq!(b.next(t0 + secs(32), 10, 20), 20);
    }

    #[test]
    fn scale_down_waits_for_the_highest_recommendation_in_its_window() {
        let t0 = Instant::now();
        let mut b = Behavior::new(Rules::hpa_scale_up(), Rules::hpa_scale_down());
        assert_eq!(b.next(t0, 10, 10), 10);
        // Load fell: the 10 of a moment ago still stands for 300 s.
        assert_eq!(b.next(t0 + secs(60), 10, 2), 10);
        assert_eq!(b.next(t0 + secs(299), 10, 2), 10);
        // Once it left the window, the highest left is 2: down at once
        // (100% per 15 s allows it).
        assert_eq!(b.next(t0 + secs(301), 10, 2), 2);
    }

    #[test]
    fn an_up_window_takes_the_lowest_recent_recommendation() {
        let t0 = Instant::now();
        let up = rules(30, &[(PolicyKind::Percent, 1000, 15)], Select::Max);
        let mut b = Behavior::new(up, Rules::hpa_scale_down());
        assert_eq!(b.next(t0, 2, 2), 2);
        // A spike to 8 is not believed while 2 was asked within 30 s.
        assert_eq!(b.next(t0 + secs(10), 2, 8), 2);
        assert_eq!(b.next(t0 + secs(41), 2, 8), 8);
    }

    #[test]
    fn pods_policies_limit_scale_down_per_period_and_min_picks_the_least() {
        let t0 = Instant::now();
        let down = rules(
            0,
            &[(PolicyKind::Pods, 1, 60), (PolicyKind::Percent, 50, 60)],
            Select::Min,
        );
        let mut b = Behavior::new(Rules::hpa_scale_up(), down);
        // Min: 1 pod (to 9) allows less change than 50% (to 5).
        assert_eq!(b.next(t0, 10, 0), 9);
        // The period started at 10: no more until it passes.
        assert_eq!(b.next(t0 + secs(30), 9, 0), 9);
        assert_eq!(b.next(t0 + secs(61), 9, 0), 8);
    }

    #[test]
    fn a_disabled_direction_never_moves() {
        let t0 = Instant::now();
        let down = rules(0, &[(PolicyKind::Percent, 100, 15)], Select::Disabled);
        let mut b = Behavior::new(Rules::hpa_scale_up(), down);
        assert_eq!(b.next(t0, 4, 0), 4);
        assert_eq!(b.next(t0 + secs(3600), 4, 0), 4);
        assert_eq!(b.next(t0 + secs(3601), 4, 6), 6, "up still works");
    }
}
