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

// ---- measured signals and behavior ------------------------------------------

use rouse_nats::config::{PolicySpec, PolicyType, ScalingRules};

fn with_metrics(metrics: Vec<MetricSpec>) -> ScalingConfig {
    ScalingConfig {
        metrics,
        ..config()
    }
}

fn cpu_at(shares: &[f64]) -> Measured {
    Measured {
        ready: shares
            .iter()
            .map(|&cpu| ReplicaUsage {
                cpu: Some(cpu),
                memory: None,
            })
            .collect(),
        backlog: None,
    }
}

#[test]
fn cpu_above_target_scales_out_by_hpa_formula_at_once() {
    let clock = Clock::new();
    let cfg = with_metrics(vec![MetricSpec::Cpu { target: 50.0 }]);
    let mut scaler = Autoscaler::new(cfg, clock.at(0.0));
    let decision = scaler.decide_with(
        clock.at(1.0),
        &busy(1, clock.at(1.0)),
        2,
        &cpu_at(&[0.9, 0.9]),
    );
    assert_eq!(
        decision,
        Decision {
            replicas: 4,
            reason: Reason::Cpu
        }
    );
}

#[test]
fn cpu_within_tolerance_keeps_the_count_even_past_the_stable_window() {
    let clock = Clock::new();
    let cfg = with_metrics(vec![MetricSpec::Cpu { target: 50.0 }]);
    let mut scaler = Autoscaler::new(cfg, clock.at(0.0));
    for second in 0..200 {
        let now = clock.at(f64::from(second));
        let decision = scaler.decide_with(now, &busy(1, now), 3, &cpu_at(&[0.47, 0.53, 0.5]));
        assert_eq!(decision.replicas, 3, "at {second}s");
    }
}

#[test]
fn missing_cpu_samples_never_scale_down_but_idle_still_goes_to_zero() {
    let clock = Clock::new();
    let cfg = with_metrics(vec![MetricSpec::Cpu { target: 50.0 }]);
    let mut scaler = Autoscaler::new(cfg, clock.at(0.0));
    let missing = Measured {
        ready: vec![ReplicaUsage::default(); 3],
        backlog: None,
    };
    let mut current = 3;
    for second in 0..100 {
        let now = clock.at(f64::from(second));
        // Traffic keeps coming (so not idle), and no concurrency target.
        current = scaler
            .decide_with(now, &busy(0, now), current, &missing)
            .replicas;
    }
    assert_eq!(current, 3, "no sample, no scale-down");
    // Traffic stops: zero after scale_to_zero_after (30 s).
    let quiet = Observation {
        last_activity: Some(clock.at(99.0)),
        ..Default::default()
    };
    let decision = scaler.decide_with(clock.at(130.0), &quiet, current, &missing);
    assert_eq!(decision.replicas, 0);
    assert_eq!(decision.reason, Reason::Idle);
}

#[test]
fn low_cpu_scales_down_with_rouse_pacing() {
    let clock = Clock::new();
    let cfg = with_metrics(vec![MetricSpec::Cpu { target: 50.0 }]);
    let mut scaler = Autoscaler::new(cfg, clock.at(0.0));
    let mut current = 8;
    let mut seen = vec![];
    for second in 61..120 {
        let now = clock.at(f64::from(second));
        let shares = vec![0.05; current as usize];
        current = scaler
            .decide_with(now, &busy(0, now), current, &cpu_at(&shares))
            .replicas;
        seen.push(current);
    }
    assert_eq!(current, 1);
    // Halved at most per step (max_scale_down_rate 2): 8 → 4 → 2 → 1.
    seen.dedup();
    assert_eq!(seen, vec![4, 2, 1]);
}

#[test]
fn the_largest_need_wins_across_signals() {
    let clock = Clock::new();
    let cfg = with_metrics(vec![
        MetricSpec::Cpu { target: 50.0 },
        MetricSpec::Memory { target: 50.0 },
    ]);
    let mut scaler = Autoscaler::new(cfg, clock.at(0.0));
    let measured = Measured {
        ready: vec![
            ReplicaUsage {
                cpu: Some(0.6),
                memory: Some(1.5),
            };
            2
        ],
        backlog: None,
    };
    let decision = scaler.decide_with(clock.at(1.0), &busy(0, clock.at(1.0)), 2, &measured);
    assert_eq!(
        decision,
        Decision {
            replicas: 6,
            reason: Reason::Memory
        }
    );
}

fn queue_config(target: f64) -> ScalingConfig {
    with_metrics(vec![MetricSpec::Queue {
        stream: "JOBS".into(),
        consumer: "workers".into(),
        target,
    }])
}

fn backlog(n: u64) -> Measured {
    Measured {
        ready: vec![],
        backlog: Some(n),
    }
}

#[test]
fn a_backlog_at_zero_wakes_with_its_whole_need() {
    let clock = Clock::new();
    let mut scaler = Autoscaler::new(queue_config(100.0), clock.at(0.0));
    let idle = Observation::default();
    assert_eq!(
        scaler
            .decide_with(clock.at(0.0), &idle, 0, &backlog(0))
            .replicas,
        0
    );
    assert_eq!(
        scaler.decide_with(clock.at(1.0), &idle, 0, &backlog(1000)),
        Decision {
            replicas: 10,
            reason: Reason::Wake
        }
    );
    // One message is enough to start one worker.
    let mut scaler = Autoscaler::new(queue_config(100.0), clock.at(0.0));
    assert_eq!(
        scaler
            .decide_with(clock.at(1.0), &idle, 0, &backlog(1))
            .replicas,
        1
    );
}

#[test]
fn a_drained_queue_goes_to_zero_after_the_idle_period() {
    let clock = Clock::new();
    let mut scaler = Autoscaler::new(queue_config(100.0), clock.at(0.0));
    let idle = Observation::default();
    let mut current = scaler
        .decide_with(clock.at(0.0), &idle, 0, &backlog(300))
        .replicas;
    assert_eq!(current, 3);
    // Draining: the backlog falls, the count follows down, not to zero.
    for second in 1..=20 {
        let left = 300u64.saturating_sub(second * 20);
        current = scaler
            .decide_with(clock.at(second as f64), &idle, current, &backlog(left))
            .replicas;
        assert!(current >= 1, "not idle yet at {second}s");
    }
    // Last seen non-empty at 14 s: zero once 30 s (scale_to_zero_after)
    // have passed since.
    let at_43 = scaler.decide_with(clock.at(43.0), &idle, current, &backlog(0));
    assert!(at_43.replicas >= 1);
    let at_44 = scaler.decide_with(clock.at(44.0), &idle, current, &backlog(0));
    assert_eq!(at_44.replicas, 0);
    assert_eq!(at_44.reason, Reason::Idle);
}

fn one_pod_per(period: u64) -> ScalingRules {
    ScalingRules {
        stabilization_window: Duration::ZERO,
        policies: vec![PolicySpec {
            kind: PolicyType::Pods,
            value: 1,
            period: Duration::from_secs(period),
        }],
        select: Default::default(),
    }
}

#[test]
fn a_scale_down_policy_of_one_pod_per_10s_is_obeyed_exactly() {
    let clock = Clock::new();
    let mut cfg = config();
    cfg.behavior.scale_down = Some(one_pod_per(10));
    let mut scaler = Autoscaler::new(cfg, clock.at(0.0));
    // Settle at 5 under load, past a stable window.
    let mut current = 0;
    run(&mut scaler, &clock, 0, 100, &mut current, |t| busy(50, t));
    assert_eq!(current, 5);
    // Load stops at 100 s; decide every 100 ms for 5 minutes.
    let mut changes = vec![];
    for tenth in 1001..=4000 {
        let now = clock.at(f64::from(tenth) / 10.0);
        let quiet = Observation {
            last_activity: Some(clock.at(100.0)),
            ..Default::default()
        };
        let next = scaler.decide(now, &quiet, current).replicas;
        if next != current {
            changes.push((f64::from(tenth) / 10.0, current, next));
            current = next;
        }
    }
    assert_eq!(current, 0, "{changes:?}");
    assert_eq!(changes.len(), 5, "one pod at a time: {changes:?}");
    for pair in changes.windows(2) {
        let ((at, from, to), (next_at, _, _)) = (pair[0], pair[1]);
        assert_eq!(from - to, 1, "{changes:?}");
        assert!(next_at - at >= 10.0, "{changes:?}");
        // Once idle (130 s) every recommendation is 0: then the policy
        // alone sets the pace, one step as soon as each period allows.
        if at >= 130.0 {
            assert!(next_at - at <= 10.1 + 1e-9, "{changes:?}");
        }
    }
}

#[test]
fn a_wake_from_zero_is_not_delayed_by_a_scale_up_policy() {
    let clock = Clock::new();
    let mut cfg = config();
    cfg.behavior.scale_up = Some(one_pod_per(60));
    let mut scaler = Autoscaler::new(cfg, clock.at(0.0));
    let burst = Observation {
        held: 45,
        woken: true,
        ..Default::default()
    };
    assert_eq!(scaler.decide(clock.at(0.0), &burst, 0).replicas, 5);
    // But the next scale-up waits out the policy period the wake used.
    let heavy = busy(200, clock.at(1.0));
    assert_eq!(scaler.decide(clock.at(1.0), &heavy, 5).replicas, 5);
    assert_eq!(
        scaler
            .decide(clock.at(61.0), &busy(200, clock.at(61.0)), 5)
            .replicas,
        6
    );
}

#[test]
fn a_rate_within_tolerance_of_the_current_replicas_keeps_them() {
    let clock = Clock::new();
    let cfg = with_metrics(vec![MetricSpec::Rps { target: 10.0 }]);
    let mut scaler = Autoscaler::new(cfg, clock.at(0.0));
    let mut current = 5;
    for second in 0..=120 {
        let now = clock.at(f64::from(second));
        // 50.5 req/s would be ceil(5.05) = 6 without the tolerance.
        let rate = Observation {
            arrival_rate: 50.5,
            ..busy(0, now)
        };
        current = scaler.decide(now, &rate, current).replicas;
        assert_eq!(current, 5, "at {second}s");
    }
    // 80 req/s for a stable window is 60% more: 8 replicas.
    for second in 121..=181 {
        let now = clock.at(f64::from(second));
        let more = Observation {
            arrival_rate: 80.0,
            ..busy(0, now)
        };
        current = scaler.decide(now, &more, current).replicas;
    }
    assert_eq!(current, 8);
}

#[test]
fn a_jittery_backlog_does_not_flap_the_count() {
    let clock = Clock::new();
    let cfg = queue_config(7.0);
    let mut scaler = Autoscaler::new(cfg, clock.at(0.0));
    let idle = Observation::default();
    let mut current = 0;
    let mut changes = 0;
    // A steady stream read once a second: 70 waiting, then 14, and again.
    for second in 0..300 {
        let backlog_now = if second % 2 == 0 { 70 } else { 14 };
        let next = scaler
            .decide_with(
                clock.at(f64::from(second)),
                &idle,
                current,
                &backlog(backlog_now),
            )
            .replicas;
        if next != current {
            changes += 1;
            current = next;
        }
    }
    assert_eq!(current, 10);
    assert_eq!(changes, 1, "up once to 10, and no flapping after");
}
