//! How many replicas a service needs: a pure function of what the proxies
//! reported and of the time, with no I/O, so every rule is tested with a fake
//! clock.
//!
//! The rules:
//! - need = ceil((in flight + held) / target_concurrency), max'ed with
//!   ceil(arrival rate / target_rps) when that target is set;
//! - a wake, or anything held, while no replica exists asks for
//!   max(1, min_replicas) at once;
//! - scale up to the need at once; scale down only to the largest need seen
//!   over the stable window, and never below 1 while there is any traffic;
//! - no scale-down at all during the first stable window after start (a
//!   restarted controller has no history to justify one);
//! - zero only after `scale_to_zero_after` with no arrival, nothing in flight
//!   and nothing held;
//! - always within min/max.

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
    /// The largest need over the stable window.
    Stable,
    /// No traffic for `scale_to_zero_after`.
    Idle,
    /// Held up by `min_replicas`.
    Minimum,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Wake => "wake",
            Reason::Load => "load",
            Reason::Stable => "stable",
            Reason::Idle => "idle",
            Reason::Minimum => "min_replicas",
        }
    }
}

/// Decision state of one service.
#[derive(Debug)]
pub struct Autoscaler {
    config: ScalingConfig,
    /// Needs over the stable window, oldest first.
    needs: VecDeque<(Instant, u32)>,
    /// When this autoscaler started: until then, it counts as the last activity,
    /// so a restarted controller never scales to zero before a full idle period.
    started: Instant,
}

impl Autoscaler {
    pub fn new(config: ScalingConfig, now: Instant) -> Self {
        Self {
            config,
            needs: VecDeque::new(),
            started: now,
        }
    }

    pub fn config(&self) -> &ScalingConfig {
        &self.config
    }

    /// The replica count to aim for now, given `current` replicas (ready or starting).
    pub fn decide(&mut self, now: Instant, observation: &Observation, current: u32) -> Decision {
        let need = self.need(observation);
        self.remember(now, need);
        let min = self.config.min_replicas;
        let max = self.config.max_replicas.max(1);
        let decision = self.unclamped(now, observation, need, current);
        let replicas = decision.replicas.clamp(min, max);
        if replicas > decision.replicas {
            Decision {
                replicas,
                reason: Reason::Minimum,
            }
        } else {
            Decision {
                replicas,
                reason: decision.reason,
            }
        }
    }

    fn unclamped(
        &self,
        now: Instant,
        observation: &Observation,
        need: u32,
        current: u32,
    ) -> Decision {
        let waiting = observation.woken || observation.held > 0;
        if current == 0 && waiting {
            return Decision {
                replicas: need.max(1),
                reason: Reason::Wake,
            };
        }
        if self.idle_for(now, observation) >= self.config.scale_to_zero_after {
            return Decision {
                replicas: 0,
                reason: Reason::Idle,
            };
        }
        if need > current {
            return Decision {
                replicas: need,
                reason: Reason::Load,
            };
        }
        if now.saturating_duration_since(self.started) < self.config.stable_window {
            // Too little history to trust a scale-down (e.g. just restarted).
            return Decision {
                replicas: current,
                reason: Reason::Stable,
            };
        }
        // Traffic that is not idle yet keeps at least one replica up.
        let floor = u32::from(current > 0);
        let stable = self
            .needs
            .iter()
            .map(|(_, n)| *n)
            .max()
            .unwrap_or(0)
            .max(floor);
        Decision {
            replicas: stable.min(current),
            reason: Reason::Stable,
        }
    }

    /// Replicas the current load needs, before the window.
    fn need(&self, observation: &Observation) -> u32 {
        let concurrency = observation.in_flight.saturating_add(observation.held) as f64;
        let by_concurrency = (concurrency / self.config.target_concurrency).ceil();
        let by_rate = match self.config.target_rps {
            Some(target) => (observation.arrival_rate / target).ceil(),
            None => 0.0,
        };
        by_concurrency.max(by_rate).min(u32::MAX as f64) as u32
    }

    fn remember(&mut self, now: Instant, need: u32) {
        self.needs.push_back((now, need));
        let window = self.config.stable_window;
        while let Some((at, _)) = self.needs.front() {
            if now.duration_since(*at) > window {
                self.needs.pop_front();
            } else {
                break;
            }
        }
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
mod tests {
    use super::*;

    fn config() -> ScalingConfig {
        ScalingConfig {
            min_replicas: 0,
            max_replicas: 10,
            target_concurrency: 10.0,
            target_rps: None,
            scale_to_zero_after: Duration::from_secs(30),
            drain_timeout: Duration::from_secs(30),
            stable_window: Duration::from_secs(60),
        }
    }

    /// A fake clock: instants derived from one origin.
    struct Clock(Instant);
    impl Clock {
        fn at(&self, secs: u64) -> Instant {
            self.0 + Duration::from_secs(secs)
        }
    }

    fn busy(in_flight: u64, at: Instant) -> Observation {
        Observation {
            in_flight,
            last_activity: Some(at),
            ..Default::default()
        }
    }

    #[test]
    fn wake_at_zero_asks_for_one_at_once() {
        let clock = Clock(Instant::now());
        let mut scaler = Autoscaler::new(config(), clock.at(0));
        let woken = Observation {
            woken: true,
            held: 1,
            last_activity: Some(clock.at(0)),
            ..Default::default()
        };
        let decision = scaler.decide(clock.at(0), &woken, 0);
        assert_eq!(
            decision,
            Decision {
                replicas: 1,
                reason: Reason::Wake
            }
        );
    }

    #[test]
    fn wake_honours_min_replicas() {
        let clock = Clock(Instant::now());
        let mut cfg = config();
        cfg.min_replicas = 2;
        let mut scaler = Autoscaler::new(cfg, clock.at(0));
        let woken = Observation {
            woken: true,
            ..Default::default()
        };
        assert_eq!(scaler.decide(clock.at(0), &woken, 0).replicas, 2);
    }

    #[test]
    fn a_big_held_burst_asks_for_its_whole_need() {
        let clock = Clock(Instant::now());
        let mut scaler = Autoscaler::new(config(), clock.at(0));
        let burst = Observation {
            held: 45,
            woken: true,
            ..Default::default()
        };
        assert_eq!(scaler.decide(clock.at(0), &burst, 0).replicas, 5);
    }

    #[test]
    fn scales_up_to_concurrency_need_within_max() {
        let clock = Clock(Instant::now());
        let mut scaler = Autoscaler::new(config(), clock.at(0));
        let d = scaler.decide(clock.at(1), &busy(35, clock.at(1)), 1);
        assert_eq!(
            d,
            Decision {
                replicas: 4,
                reason: Reason::Load
            }
        );
        let d = scaler.decide(clock.at(2), &busy(500, clock.at(2)), 4);
        assert_eq!(d.replicas, 10);
    }

    #[test]
    fn rate_target_wins_when_larger() {
        let clock = Clock(Instant::now());
        let mut cfg = config();
        cfg.target_rps = Some(100.0);
        let mut scaler = Autoscaler::new(cfg, clock.at(0));
        let obs = Observation {
            in_flight: 5,
            arrival_rate: 450.0,
            last_activity: Some(clock.at(0)),
            ..Default::default()
        };
        assert_eq!(scaler.decide(clock.at(0), &obs, 1).replicas, 5);
    }

    #[test]
    fn scale_down_waits_for_the_stable_window() {
        let clock = Clock(Instant::now());
        let mut scaler = Autoscaler::new(config(), clock.at(0));
        scaler.decide(clock.at(0), &busy(0, clock.at(0)), 0);
        scaler.decide(clock.at(61), &busy(40, clock.at(61)), 1);
        // Load falls but traffic continues: hold 4 while the peak is in the window.
        let light = |t| busy(5, clock.at(t));
        assert_eq!(scaler.decide(clock.at(90), &light(90), 4).replicas, 4);
        assert_eq!(scaler.decide(clock.at(120), &light(120), 4).replicas, 4);
        // Past the window the peak is forgotten.
        assert_eq!(scaler.decide(clock.at(122), &light(122), 4).replicas, 1);
    }

    #[test]
    fn stays_at_one_while_traffic_trickles() {
        let clock = Clock(Instant::now());
        let mut scaler = Autoscaler::new(config(), clock.at(0));
        let trickle = Observation {
            arrival_rate: 0.5,
            last_activity: Some(clock.at(100)),
            ..Default::default()
        };
        assert_eq!(scaler.decide(clock.at(100), &trickle, 1).replicas, 1);
    }

    #[test]
    fn zero_only_after_idle_period_with_nothing_in_flight_or_held() {
        let clock = Clock(Instant::now());
        let mut scaler = Autoscaler::new(config(), clock.at(0));
        let quiet_since_10 = Observation {
            last_activity: Some(clock.at(10)),
            ..Default::default()
        };
        assert_eq!(scaler.decide(clock.at(39), &quiet_since_10, 1).replicas, 1);
        let d = scaler.decide(clock.at(40), &quiet_since_10, 1);
        assert_eq!(
            d,
            Decision {
                replicas: 0,
                reason: Reason::Idle
            }
        );
        // A long request still in flight keeps it up, however old the last arrival.
        let long_request = Observation {
            in_flight: 1,
            last_activity: Some(clock.at(10)),
            ..Default::default()
        };
        assert_eq!(scaler.decide(clock.at(100), &long_request, 1).replicas, 1);
        let held = Observation {
            held: 1,
            last_activity: Some(clock.at(10)),
            ..Default::default()
        };
        assert_eq!(scaler.decide(clock.at(100), &held, 1).replicas, 1);
    }

    #[test]
    fn restarted_controller_waits_a_full_idle_period() {
        let clock = Clock(Instant::now());
        let mut scaler = Autoscaler::new(config(), clock.at(100));
        // Nothing seen since start (the old activity is unknown): keep replicas.
        let unknown = Observation::default();
        assert_eq!(scaler.decide(clock.at(110), &unknown, 2).replicas, 2);
        assert_eq!(scaler.decide(clock.at(131), &unknown, 2).replicas, 0);
    }

    #[test]
    fn nothing_starts_without_traffic() {
        let clock = Clock(Instant::now());
        let mut scaler = Autoscaler::new(config(), clock.at(0));
        assert_eq!(
            scaler
                .decide(clock.at(1), &Observation::default(), 0)
                .replicas,
            0
        );
        assert_eq!(
            scaler
                .decide(clock.at(100), &Observation::default(), 0)
                .replicas,
            0
        );
    }

    #[test]
    fn min_replicas_floor_and_reason() {
        let clock = Clock(Instant::now());
        let mut cfg = config();
        cfg.min_replicas = 1;
        let mut scaler = Autoscaler::new(cfg, clock.at(0));
        let d = scaler.decide(clock.at(1000), &Observation::default(), 1);
        assert_eq!(
            d,
            Decision {
                replicas: 1,
                reason: Reason::Minimum
            }
        );
    }
}
