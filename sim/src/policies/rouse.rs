//! rouse: the real autoscaler (`rouse_controller::autoscaler`), fed the way
//! the real proxy and controller feed it.
//!
//! Modelled on rouse's own code (proxy `report.rs`, controller
//! `observations.rs` and `reconcile.rs`):
//! - the proxy reports every `report_interval` (1 s): arrivals since its last
//!   report, in flight (here: in service), held (here: queued);
//! - the first arrival at a service whose last report was idle triggers a
//!   report at once ("busy" edge), and so does an arrival that finds in
//!   flight + held at least 4 and at least twice what the last report said
//!   (a "surge", at most once per report);
//! - the first request held while nothing was held publishes `wake` at once,
//!   followed by a report; `wake` repeats every second while requests are held;
//! - the controller keeps the latest report, sets `last_activity` to the time
//!   of any report with arrivals, in-flight or held requests and of any wake,
//!   and decides on every report, every wake, and on its own tick (500 ms),
//!   with `current` = replicas ready or starting.
//!
//! Messages travel with no delay: NATS on one host takes well under a step.
//!
//! On the other signals, the controller also measures (its meter, beside the
//! decision loop) and passes what it measured to `decide_with`:
//! - cpu: each replica's CPU counter sampled every second, as a rate over the
//!   last 5 s ([`CpuMeter`]), one entry per ready replica;
//! - queue: the consumer's backlog polled every second; a backlog appearing
//!   wakes the loop at once (the meter's notify). A queue worker has no HTTP
//!   route, so no proxy reports or wakes: the observation stays empty.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use rouse_controller::autoscaler::{Autoscaler, Decision, Measured, Observation, ReplicaUsage};
use rouse_nats::config::ScalingConfig;

use super::{Common, Every, Policy};
use crate::model::{ReplicaPhase, ReplicaStat, View};
use crate::signals::CpuMeter;

/// The proxy's report and wake-repeat periods, and the controller's tick.
#[derive(Debug, Clone)]
pub struct RouseTiming {
    pub report_interval: Duration,
    pub wake_repeat: Duration,
    pub controller_tick: Duration,
    /// How long the controller has been running when the trace starts. The
    /// autoscaler holds off scale-down for a stable window after it starts
    /// (a restarted controller has no history); a controller that has been
    /// up for a while, like the baselines' controllers here, has none of that.
    pub controller_uptime: Duration,
}

impl Default for RouseTiming {
    fn default() -> Self {
        Self {
            report_interval: Duration::from_secs(1),
            wake_repeat: Duration::from_secs(1),
            controller_tick: Duration::from_millis(500),
            controller_uptime: Duration::from_secs(300),
        }
    }
}

/// In flight + held below which a surge is not reported (the proxy's
/// `SURGE_MIN`).
const SURGE_MIN: u64 = 4;

/// One load report as the controller keeps it.
#[derive(Debug, Clone, Copy, Default)]
struct Report {
    in_flight: u64,
    held: u64,
    arrival_rate: f64,
}

/// What the controller measures itself, beside the proxies' reports.
enum Metering {
    Nothing,
    /// Each ready replica's CPU, from the meter's latest rates.
    Cpu {
        meter: CpuMeter,
        ready: Vec<ReplicaUsage>,
    },
    /// A queue's backlog at the last poll.
    Backlog {
        poll: Every,
        latest: Option<u64>,
    },
}

/// One decision with its inputs.
type Logged = (u64, Observation, u32, Decision, Measured);

pub struct Rouse {
    name: &'static str,
    step_ms: u64,
    /// The instant the trace starts (fake clock: simulated time is added to it).
    base: Instant,
    scaler: Autoscaler,
    // Proxy side; absent for a queue worker.
    proxy: bool,
    arrivals_since_report: u64,
    last_report_ms: u64,
    /// The last report showed no arrival, nothing in flight and nothing held.
    idle: bool,
    /// In flight + held at the last report.
    reported_concurrency: u64,
    /// A surge report was sent since the last periodic report.
    surge_signalled: bool,
    report: Every,
    wake_repeat: Every,
    // Controller side.
    tick: Every,
    latest: Report,
    last_activity: Option<Instant>,
    woken: bool,
    metering: Metering,
    /// Every decision, when asked for.
    log: Option<Vec<Logged>>,
}

impl Rouse {
    /// `scaling` is used as given; `common` only sets the clock.
    pub fn new(scaling: ScalingConfig, timing: RouseTiming, common: &Common) -> Self {
        let started = Instant::now();
        let base = started + timing.controller_uptime;
        let ms = |d: Duration| d.as_millis() as u64;
        Self {
            name: "rouse",
            step_ms: common.step_ms,
            base,
            scaler: Autoscaler::new(scaling, started),
            proxy: true,
            arrivals_since_report: 0,
            last_report_ms: 0,
            idle: true,
            reported_concurrency: 0,
            surge_signalled: false,
            report: Every::new(ms(timing.report_interval), ms(timing.report_interval)),
            wake_repeat: Every::new(ms(timing.wake_repeat), ms(timing.wake_repeat)),
            tick: Every::new(ms(timing.controller_tick), 0),
            latest: Report::default(),
            last_activity: None,
            woken: false,
            metering: Metering::Nothing,
            log: None,
        }
    }

    /// Renamed, for a variant.
    pub fn named(mut self, name: &'static str) -> Self {
        self.name = name;
        self
    }

    /// Also measures each ready replica's CPU with `meter`.
    pub fn with_cpu(mut self, meter: CpuMeter) -> Self {
        self.metering = Metering::Cpu {
            meter,
            ready: Vec::new(),
        };
        self
    }

    /// A queue worker: no proxy in front of it; the backlog is polled every
    /// `poll`.
    pub fn queue_worker(mut self, poll: Duration) -> Self {
        self.proxy = false;
        self.metering = Metering::Backlog {
            poll: Every::new(poll.as_millis() as u64, 0),
            latest: None,
        };
        self
    }

    /// Keeps every decision for [`Rouse::decision_csv`].
    pub fn with_log(mut self) -> Self {
        self.log = Some(Vec::new());
        self
    }

    fn at(&self, now_ms: u64) -> Instant {
        self.base + Duration::from_millis(now_ms)
    }

    /// The proxy publishes a load report; the controller records it.
    fn send_report(&mut self, now_ms: u64, view: &View) {
        let interval_ms = now_ms - self.last_report_ms;
        let arrivals = std::mem::take(&mut self.arrivals_since_report);
        self.last_report_ms = now_ms;
        let report = Report {
            in_flight: view.in_service,
            held: view.queued,
            arrival_rate: if interval_ms > 0 {
                arrivals as f64 * 1000.0 / interval_ms as f64
            } else {
                0.0
            },
        };
        self.idle = arrivals == 0 && report.in_flight == 0 && report.held == 0;
        self.reported_concurrency = report.in_flight + report.held;
        self.surge_signalled = false;
        if !self.idle {
            self.last_activity = Some(self.at(now_ms));
        }
        self.latest = report;
    }

    /// The proxy publishes `wake`; the controller records it.
    fn send_wake(&mut self, now_ms: u64) {
        self.last_activity = Some(self.at(now_ms));
        self.woken = true;
    }
}

impl Rouse {
    /// What the proxy sends this step; true if the controller heard anything.
    fn proxy_step(&mut self, now_ms: u64, view: &View) -> bool {
        let mut heard = false;
        let was_idle = self.idle;
        self.arrivals_since_report += u64::from(view.arrivals);
        if view.newly_held {
            self.send_wake(now_ms);
            self.send_report(now_ms, view);
            heard = true;
        } else if view.arrivals > 0 && was_idle {
            self.send_report(now_ms, view);
            heard = true;
        } else if view.arrivals > 0
            && !self.surge_signalled
            && view.outstanding() >= SURGE_MIN
            && view.outstanding() >= 2 * self.reported_concurrency
        {
            self.send_report(now_ms, view);
            self.surge_signalled = true;
            heard = true;
        }
        if self.report.due(now_ms) {
            self.send_report(now_ms, view);
            heard = true;
        }
        if self.wake_repeat.due(now_ms) && view.queued > 0 {
            self.send_wake(now_ms);
            heard = true;
        }
        heard
    }

    /// Polls the backlog when due; true if one just appeared (the meter
    /// wakes the decision loop).
    fn poll_backlog(&mut self, now_ms: u64, view: &View) -> bool {
        let Metering::Backlog { poll, latest } = &mut self.metering else {
            return false;
        };
        if !poll.due(now_ms) {
            return false;
        }
        let before = latest.unwrap_or(0);
        let backlog = view.outstanding();
        *latest = Some(backlog);
        before == 0 && backlog > 0
    }

    fn measured(&self) -> Measured {
        match &self.metering {
            Metering::Nothing => Measured::default(),
            Metering::Cpu { ready, .. } => Measured {
                ready: ready.clone(),
                backlog: None,
            },
            Metering::Backlog { latest, .. } => Measured {
                ready: Vec::new(),
                backlog: *latest,
            },
        }
    }
}

impl Policy for Rouse {
    fn name(&self) -> &'static str {
        self.name
    }

    fn wants_replicas(&self) -> bool {
        matches!(self.metering, Metering::Cpu { .. })
    }

    fn meter(&mut self, step: u64, replicas: &[ReplicaStat]) {
        let Metering::Cpu { meter, ready } = &mut self.metering else {
            return;
        };
        meter.observe(step, replicas);
        ready.clear();
        ready.extend(
            replicas
                .iter()
                .filter(|r| r.phase == ReplicaPhase::Ready)
                .map(|r| ReplicaUsage {
                    cpu: meter.point(r.id).map(|p| p.share),
                    memory: None,
                }),
        );
    }

    fn on_step(&mut self, view: &View) -> Option<u32> {
        let now_ms = view.step * self.step_ms;
        let mut heard = self.proxy && self.proxy_step(now_ms, view);
        heard |= self.poll_backlog(now_ms, view);
        if !(self.tick.due(now_ms) || heard) {
            return None;
        }
        let observation = Observation {
            in_flight: self.latest.in_flight,
            held: self.latest.held,
            arrival_rate: self.latest.arrival_rate,
            last_activity: self.last_activity,
            woken: std::mem::take(&mut self.woken),
        };
        let measured = self.measured();
        let decision =
            self.scaler
                .decide_with(self.at(now_ms), &observation, view.active(), &measured);
        if let Some(log) = &mut self.log {
            log.push((now_ms, observation, view.active(), decision, measured));
        }
        Some(decision.replicas)
    }

    fn decision_csv(&self) -> Option<String> {
        let log = self.log.as_ref()?;
        let metered = !matches!(self.metering, Metering::Nothing);
        let mut out =
            String::from("t_ms,in_flight,held,arrival_rate,idle_ms,woken,current,replicas,reason");
        out.push_str(if metered {
            ",backlog,cpu_ready\n"
        } else {
            "\n"
        });
        for (at_ms, o, current, d, m) in log {
            let idle_ms = o.last_activity.map_or(String::new(), |at| {
                self.at(*at_ms)
                    .saturating_duration_since(at)
                    .as_millis()
                    .to_string()
            });
            let _ = write!(
                out,
                "{at_ms},{},{},{:.1},{idle_ms},{},{current},{},{}",
                o.in_flight,
                o.held,
                o.arrival_rate,
                o.woken,
                d.replicas,
                d.reason.as_str()
            );
            if metered {
                let _ = write!(out, ",{},{}", optional(m.backlog), cpu_column(&m.ready));
            }
            out.push('\n');
        }
        Some(out)
    }
}

fn optional(value: Option<u64>) -> String {
    value.map_or(String::new(), |v| v.to_string())
}

/// Ready replicas' CPU in percent, `;`-separated (`-` without a sample).
fn cpu_column(ready: &[ReplicaUsage]) -> String {
    ready
        .iter()
        .map(|r| {
            r.cpu
                .map_or("-".to_string(), |c| format!("{:.0}", c * 100.0))
        })
        .collect::<Vec<_>>()
        .join(";")
}
