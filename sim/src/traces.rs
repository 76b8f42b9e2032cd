//! Load shapes: arrival rate as a function of time, and seeded arrivals drawn
//! from it.

use std::f64::consts::PI;

/// How arrivals are drawn from the rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrivals {
    /// A Poisson count per step with mean rate × step.
    Poisson,
    /// Exactly the expected count, carried over between steps.
    Deterministic,
}

/// The shape of the load over time; rates in requests per second.
#[derive(Debug, Clone, PartialEq)]
pub enum Shape {
    /// `low`, then `high` from `up_at` until `down_at` (seconds), then `low`.
    Step {
        low: f64,
        high: f64,
        up_at: f64,
        down_at: f64,
    },
    /// `base`, with `base × factor` for `length` seconds from `at`.
    Spike {
        base: f64,
        factor: f64,
        at: f64,
        length: f64,
    },
    /// Ramps linearly from `low` to `high` over each `period`, then drops.
    Sawtooth { low: f64, high: f64, period: f64 },
    /// A smooth day compressed into `period`: `low` at the start of each
    /// period, `high` half-way.
    Diurnal { low: f64, high: f64, period: f64 },
    /// Cycles of `idle` seconds with no request, then `burst` seconds at `rate`.
    OnOff { idle: f64, burst: f64, rate: f64 },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Trace {
    pub name: &'static str,
    /// Seconds.
    pub duration: f64,
    pub shape: Shape,
}

impl Trace {
    /// Requests per second at `t` seconds.
    pub fn rate(&self, t: f64) -> f64 {
        if !(0.0..self.duration).contains(&t) {
            return 0.0;
        }
        match self.shape {
            Shape::Step {
                low,
                high,
                up_at,
                down_at,
            } => {
                if (up_at..down_at).contains(&t) {
                    high
                } else {
                    low
                }
            }
            Shape::Spike {
                base,
                factor,
                at,
                length,
            } => {
                if (at..at + length).contains(&t) {
                    base * factor
                } else {
                    base
                }
            }
            Shape::Sawtooth { low, high, period } => {
                let phase = (t / period).fract();
                low + (high - low) * phase
            }
            Shape::Diurnal { low, high, period } => {
                let phase = (t / period).fract();
                low + (high - low) * (1.0 - (2.0 * PI * phase).cos()) / 2.0
            }
            Shape::OnOff { idle, burst, rate } => {
                let within = t % (idle + burst);
                if within >= idle {
                    rate
                } else {
                    0.0
                }
            }
        }
    }

    /// The same trace with every rate multiplied by `factor`.
    pub fn scaled(&self, factor: f64) -> Trace {
        let shape = match self.shape.clone() {
            Shape::Step {
                low,
                high,
                up_at,
                down_at,
            } => Shape::Step {
                low: low * factor,
                high: high * factor,
                up_at,
                down_at,
            },
            Shape::Spike {
                base,
                factor: f,
                at,
                length,
            } => Shape::Spike {
                base: base * factor,
                factor: f,
                at,
                length,
            },
            Shape::Sawtooth { low, high, period } => Shape::Sawtooth {
                low: low * factor,
                high: high * factor,
                period,
            },
            Shape::Diurnal { low, high, period } => Shape::Diurnal {
                low: low * factor,
                high: high * factor,
                period,
            },
            Shape::OnOff { idle, burst, rate } => Shape::OnOff {
                idle,
                burst,
                rate: rate * factor,
            },
        };
        Trace {
            shape,
            ..self.clone()
        }
    }

    /// Number of steps of `step_secs` in the trace.
    pub fn steps(&self, step_secs: f64) -> u64 {
        (self.duration / step_secs).ceil() as u64
    }

    /// Arrivals per step, drawn with `rng`; the rate is read at each step's
    /// middle.
    pub fn arrivals(&self, step_secs: f64, mode: Arrivals, rng: &mut fastrand::Rng) -> Vec<u32> {
        let steps = self.steps(step_secs);
        let mut carried = 0.0;
        (0..steps)
            .map(|k| {
                let mean = self.rate((k as f64 + 0.5) * step_secs) * step_secs;
                match mode {
                    Arrivals::Poisson => poisson(mean, rng),
                    Arrivals::Deterministic => {
                        carried += mean;
                        let whole = carried.floor();
                        carried -= whole;
                        whole as u32
                    }
                }
            })
            .collect()
    }
}

/// A Poisson draw. Knuth's product method for small means (one step rarely
/// holds more than a few requests), a rounded normal approximation above 30.
pub fn poisson(mean: f64, rng: &mut fastrand::Rng) -> u32 {
    if mean <= 0.0 {
        return 0;
    }
    if mean > 30.0 {
        // Box-Muller.
        let u1 = rng.f64().max(f64::MIN_POSITIVE);
        let u2 = rng.f64();
        let z = (-2.0 * u1.ln()).sqrt() * (2.0 * PI * u2).cos();
        return (mean + z * mean.sqrt()).round().max(0.0) as u32;
    }
    let limit = (-mean).exp();
    let mut product = rng.f64();
    let mut count = 0;
    // The expected number of rounds is mean + 1; the bound only stops a
    // pathological generator.
    while product > limit && count < 1_000 {
        product *= rng.f64();
        count += 1;
    }
    count
}

/// The traces of the report. Rates are sized for the default model: at a
/// target of 7 requests in flight per replica and 150 ms of service, one
/// replica carries about 47 req/s.
pub fn standard() -> Vec<Trace> {
    vec![
        Trace {
            name: "step",
            duration: 1200.0,
            shape: Shape::Step {
                low: 20.0,
                high: 300.0,
                up_at: 300.0,
                down_at: 720.0,
            },
        },
        Trace {
            name: "spike",
            duration: 1200.0,
            shape: Shape::Spike {
                base: 30.0,
                factor: 10.0,
                at: 480.0,
                length: 60.0,
            },
        },
        Trace {
            name: "sawtooth",
            duration: 1200.0,
            shape: Shape::Sawtooth {
                low: 20.0,
                high: 300.0,
                period: 240.0,
            },
        },
        Trace {
            name: "diurnal",
            duration: 1800.0,
            shape: Shape::Diurnal {
                low: 5.0,
                high: 300.0,
                period: 900.0,
            },
        },
        Trace {
            name: "on-off",
            duration: 1800.0,
            shape: Shape::OnOff {
                idle: 240.0,
                burst: 60.0,
                rate: 200.0,
            },
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_have_the_advertised_rates() {
        let traces = standard();
        let by_name = |n: &str| traces.iter().find(|t| t.name == n).cloned();
        let step = by_name("step").unwrap();
        assert_eq!(
            (step.rate(10.0), step.rate(400.0), step.rate(800.0)),
            (20.0, 300.0, 20.0)
        );
        let spike = by_name("spike").unwrap();
        assert_eq!((spike.rate(479.0), spike.rate(500.0)), (30.0, 300.0));
        let on_off = by_name("on-off").unwrap();
        assert_eq!((on_off.rate(100.0), on_off.rate(250.0)), (0.0, 200.0));
        assert_eq!(on_off.rate(310.0), 0.0);
        let diurnal = by_name("diurnal").unwrap();
        assert!((diurnal.rate(450.0) - 300.0).abs() < 1e-9);
        assert!((diurnal.rate(0.0) - 5.0).abs() < 1e-9);
        assert_eq!(step.rate(-1.0), 0.0);
        assert_eq!(step.rate(1200.0), 0.0);
        assert_eq!(step.scaled(2.0).rate(400.0), 600.0);
    }

    #[test]
    fn arrivals_match_the_rate_and_are_reproducible() {
        let trace = Trace {
            name: "flat",
            duration: 600.0,
            shape: Shape::Step {
                low: 100.0,
                high: 100.0,
                up_at: 0.0,
                down_at: 600.0,
            },
        };
        let a = trace.arrivals(0.01, Arrivals::Poisson, &mut fastrand::Rng::with_seed(1));
        let b = trace.arrivals(0.01, Arrivals::Poisson, &mut fastrand::Rng::with_seed(1));
        assert_eq!(a, b);
        let total: u64 = a.iter().map(|n| u64::from(*n)).sum();
        assert!((59_000..61_000).contains(&total), "{total}");
        let exact = trace.arrivals(0.01, Arrivals::Deterministic, &mut fastrand::Rng::new());
        let total: u64 = exact.iter().map(|n| u64::from(*n)).sum();
        assert!((59_999..=60_000).contains(&total), "{total}");
    }

    #[test]
    fn poisson_mean_and_large_means() {
        let mut rng = fastrand::Rng::with_seed(3);
        let n = 20_000;
        let small: u64 = (0..n).map(|_| u64::from(poisson(2.5, &mut rng))).sum();
        assert!((small as f64 / n as f64 - 2.5).abs() < 0.05);
        let large: u64 = (0..n).map(|_| u64::from(poisson(100.0, &mut rng))).sum();
        assert!((large as f64 / n as f64 - 100.0).abs() < 0.5);
        assert_eq!(poisson(0.0, &mut rng), 0);
    }
}
