//! Every rule of the autoscaler, on a fake clock.

use super::*;

fn config() -> ScalingConfig {
    ScalingConfig {
        min_replicas: 0,
        max_replicas: 20,
        target_concurrency: 10.0,
        scale_to_zero_after: Duration::from_secs(30),
        ..Default::default()
    }
}

/// A fake clock: instants derived from one origin.
struct Clock(Instant);

impl Clock {
    fn new() -> Self {
        Clock(Instant::now())
    }
    fn at(&self, secs: f64) -> Instant {
        self.0 + Duration::from_secs_f64(secs)
    }
}

fn busy(in_flight: u64, at: Instant) -> Observation {
    Observation {
        in_flight,
        last_activity: Some(at),
        ..Default::default()
    }
}

/// Feeds one observation per second from `from` to `to` (inclusive) and
/// returns the last decision, keeping `current` in step with decisions.
fn run(
    scaler: &mut Autoscaler,
    clock: &Clock,
    from: u32,
    to: u32,
    current: &mut u32,
    observe: impl Fn(Instant) -> Observation,
) -> Decision {
    let mut last = Decision {
        replicas: *current,
        reason: Reason::Stable,
    };
    for second in from..=to {
        let now = clock.at(f64::from(second));
        last = scaler.decide(now, &observe(now), *current);
        *current = last.replicas;
    }
    last
}

/// An autoscaler past its first stable window, settled at `replicas` under a
/// steady concurrency of `in_flight`.
fn settled(clock: &Clock, in_flight: u64, replicas: &mut u32) -> Autoscaler {
    let mut scaler = Autoscaler::new(config(), clock.at(0.0));
    run(&mut scaler, clock, 0, 120, replicas, |t| busy(in_flight, t));
    scaler
}

#[test]
fn wake_at_zero_asks_for_one_at_once() {
    let clock = Clock::new();
    let mut scaler = Autoscaler::new(config(), clock.at(0.0));
    let woken = Observation {
        woken: true,
        held: 1,
        ..Default::default()
    };
    let decision = scaler.decide(clock.at(0.0), &woken, 0);
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
    let clock = Clock::new();
    let mut cfg = config();
    cfg.min_replicas = 2;
    let mut scaler = Autoscaler::new(cfg, clock.at(0.0));
    let woken = Observation {
        woken: true,
        ..Default::default()
    };
    assert_eq!(scaler.decide(clock.at(0.0), &woken, 0).replicas, 2);
}

#[test]
fn a_held_burst_at_zero_asks_for_its_whole_need() {
    let clock = Clock::new();
    let mut scaler = Autoscaler::new(config(), clock.at(0.0));
    let burst = Observation {
        held: 45,
        woken: true,
        ..Default::default()
    };
    assert_eq!(scaler.decide(clock.at(0.0), &burst, 0).replicas, 5);
}

#[test]
fn nothing_starts_without_traffic() {
    let clock = Clock::new();
    let mut scaler = Autoscaler::new(config(), clock.at(0.0));
    assert_eq!(
        scaler
            .decide(clock.at(1.0), &Observation::default(), 0)
            .replicas,
        0
    );
    assert_eq!(
        scaler
            .decide(clock.at(100.0), &Observation::default(), 0)
            .replicas,
        0
    );
}

#[test]
fn stable_need_is_the_time_weighted_average() {
    let clock = Clock::new();
    let mut current = 1;
    let mut scaler = settled(&clock, 25, &mut current);
    // 120 s at 25 in flight with target 10: 3 replicas.
    assert_eq!(current, 3);
    // Half the window at 25, half at 5: average 15 → 2 replicas.
    let d = run(&mut scaler, &clock, 121, 150, &mut current, |t| busy(5, t));
    assert_eq!(d.replicas, 2);
    // A full window at 5 → 1 replica.
    let d = run(&mut scaler, &clock, 151, 190, &mut current, |t| busy(5, t));
    assert_eq!(d.replicas, 1);
}

#[test]
fn a_queue_that_lasts_scales_up_and_a_blip_does_not() {
    let clock = Clock::new();
    let mut current = 1;
    let mut scaler = settled(&clock, 5, &mut current);
    assert_eq!(current, 1);
    let queue = |t: f64| Observation {
        in_flight: 10,
        held: 30,
        last_activity: Some(clock.at(t)),
        ..Default::default()
    };
    // A queue seen once is a blip: a slot may free any moment.
    assert_eq!(
        scaler
            .decide(clock.at(121.0), &queue(121.0), current)
            .replicas,
        1
    );
    // Still there a second later: capacity is missing.
    let d = scaler.decide(clock.at(122.0), &queue(122.0), current);
    assert_eq!(
        d,
        Decision {
            replicas: 4,
            reason: Reason::Load
        },
        "40 in flight or waiting / target 10"
    );
    // The queue drains: it never entered the averages, so it is not paid for.
    let mut current = 4;
    let d = run(&mut scaler, &clock, 123, 200, &mut current, |t| busy(5, t));
    assert_eq!(d.replicas, 1);
}

#[test]
fn rate_target_wins_when_larger() {
    let clock = Clock::new();
    let mut cfg = config();
    cfg.target_rps = Some(100.0);
    let mut scaler = Autoscaler::new(cfg, clock.at(0.0));
    let mut current = 1;
    let d = run(&mut scaler, &clock, 0, 70, &mut current, |t| Observation {
        in_flight: 5,
        arrival_rate: 450.0,
        last_activity: Some(t),
        ..Default::default()
    });
    assert_eq!(d.replicas, 5);
}

#[test]
fn a_burst_panics_scales_up_at_once_and_holds() {
    let clock = Clock::new();
    let mut current = 1;
    let mut scaler = settled(&clock, 5, &mut current);
    // One report of 200 in flight: the panic-window (6 s) need is
    // ceil(200 × 1 s / 6 s / 10) = 4 ≥ 2 × 1 replica → panic.
    let d = scaler.decide(clock.at(121.0), &busy(200, clock.at(121.0)), current);
    assert_eq!(d.reason, Reason::Panic);
    assert!(d.replicas >= 4, "{d:?}");
    current = d.replicas;
    // While the burst lasts the need keeps growing and is followed.
    let d = run(&mut scaler, &clock, 122, 126, &mut current, |t| {
        busy(200, t)
    });
    assert_eq!(d.replicas, 20);
    // Load drops: a scale-up is not taken back at once.
    let d = scaler.decide(clock.at(127.0), &busy(5, clock.at(127.0)), current);
    assert_eq!(d.replicas, 20);
}

#[test]
fn panic_ends_a_panic_window_after_the_burst_and_scale_down_is_bounded() {
    let clock = Clock::new();
    let mut current = 1;
    let mut scaler = settled(&clock, 5, &mut current);
    run(&mut scaler, &clock, 121, 126, &mut current, |t| {
        busy(200, t)
    });
    assert_eq!(current, 20);
    let mut previous = current;
    let mut steps = Vec::new();
    for second in 127..=300 {
        let now = clock.at(f64::from(second));
        let d = scaler.decide(now, &busy(5, now), current);
        if d.replicas < previous {
            // Never more than halved in one step, never two steps within 2 s.
            assert!(d.replicas * 2 >= previous, "{previous} → {}", d.replicas);
            if let Some(&(last_step, _)) = steps.last() {
                assert!(second - last_step >= 2, "steps at {last_step} and {second}");
            }
            steps.push((second, d.replicas));
        }
        previous = d.replicas;
        current = d.replicas;
    }
    assert!(!scaler.panicking(clock.at(300.0)));
    assert_eq!(
        current, 1,
        "steady 5 in flight needs one replica: {steps:?}"
    );
    // The first step came no sooner than a step after the last scale-up,
    // and kept at least half (and the panic-window need).
    assert!(
        steps.first().is_some_and(|(s, n)| *s >= 128 && *n >= 10),
        "{steps:?}"
    );
}

#[test]
fn scale_down_follows_the_stable_window_not_the_instant() {
    let clock = Clock::new();
    let mut current = 1;
    let mut scaler = settled(&clock, 40, &mut current);
    assert_eq!(current, 4);
    // Ten seconds of near silence barely move a 60 s average of 40.
    let d = run(&mut scaler, &clock, 121, 130, &mut current, |t| busy(1, t));
    assert_eq!(d.replicas, 4);
}

#[test]
fn stays_at_one_while_traffic_trickles() {
    let clock = Clock::new();
    let mut current = 1;
    let mut scaler = settled(&clock, 0, &mut current);
    let trickle = |t| Observation {
        arrival_rate: 0.5,
        last_activity: Some(t),
        ..Default::default()
    };
    let d = run(&mut scaler, &clock, 121, 200, &mut current, trickle);
    assert_eq!(d.replicas, 1);
}

#[test]
fn zero_only_after_idle_period_with_nothing_in_flight_or_held() {
    let clock = Clock::new();
    let mut current = 1;
    let mut scaler = settled(&clock, 3, &mut current);
    let quiet_since_120 = Observation {
        last_activity: Some(clock.at(120.0)),
        ..Default::default()
    };
    assert_eq!(
        scaler.decide(clock.at(149.0), &quiet_since_120, 1).replicas,
        1
    );
    let d = scaler.decide(clock.at(150.0), &quiet_since_120, 1);
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
        last_activity: Some(clock.at(120.0)),
        ..Default::default()
    };
    assert_eq!(scaler.decide(clock.at(200.0), &long_request, 1).replicas, 1);
    let held = Observation {
        held: 1,
        last_activity: Some(clock.at(120.0)),
        ..Default::default()
    };
    assert_eq!(scaler.decide(clock.at(200.0), &held, 1).replicas, 1);
}

#[test]
fn restarted_controller_does_not_scale_down_for_a_stable_window() {
    let clock = Clock::new();
    let mut scaler = Autoscaler::new(config(), clock.at(100.0));
    let mut current = 6;
    // Light traffic right after a restart: keep the 6 replicas found running.
    let d = run(&mut scaler, &clock, 100, 159, &mut current, |t| busy(5, t));
    assert_eq!(d.replicas, 6);
    // After a full window of reports, scale-down resumes.
    let d = run(&mut scaler, &clock, 160, 240, &mut current, |t| busy(5, t));
    assert_eq!(d.replicas, 1);
}

#[test]
fn restarted_controller_waits_a_full_idle_period_for_zero() {
    let clock = Clock::new();
    let mut scaler = Autoscaler::new(config(), clock.at(100.0));
    let unknown = Observation::default();
    assert_eq!(scaler.decide(clock.at(110.0), &unknown, 2).replicas, 2);
    assert_eq!(scaler.decide(clock.at(131.0), &unknown, 2).replicas, 0);
}

#[test]
fn min_and_max_bound_every_decision() {
    let clock = Clock::new();
    let mut cfg = config();
    cfg.min_replicas = 1;
    cfg.max_replicas = 3;
    let mut scaler = Autoscaler::new(cfg, clock.at(0.0));
    let d = scaler.decide(clock.at(1000.0), &Observation::default(), 1);
    assert_eq!(
        d,
        Decision {
            replicas: 1,
            reason: Reason::Minimum
        }
    );
    let flood = Observation {
        held: 1000,
        woken: true,
        ..Default::default()
    };
    scaler.decide(clock.at(1001.0), &flood, 1);
    let d = scaler.decide(clock.at(1002.0), &flood, 1);
    assert_eq!(
        d,
        Decision {
            replicas: 3,
            reason: Reason::Maximum
        }
    );
}

#[test]
fn absurd_reports_do_not_overflow() {
    let clock = Clock::new();
    let mut scaler = Autoscaler::new(config(), clock.at(0.0));
    let absurd = Observation {
        in_flight: u64::MAX,
        held: u64::MAX,
        arrival_rate: f64::MAX,
        woken: true,
        ..Default::default()
    };
    assert_eq!(scaler.decide(clock.at(0.0), &absurd, 0).replicas, 20);
}
