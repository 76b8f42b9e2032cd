//! An HPA + KEDA (HTTP add-on)-like baseline, written from the Kubernetes
//! Horizontal Pod Autoscaler documentation (algorithm details, tolerance,
//! default scaling behaviour) and KEDA's documentation (ScaledObject
//! activation, `pollingInterval`, `cooldownPeriod`, the HTTP add-on's
//! external scaler):
//! - the HTTP add-on's interceptor counts pending requests (received, not yet
//!   answered: in service or queued); its scaler polls that count every
//!   500 ms;
//! - 0 → 1 is KEDA's job: the add-on's scaler pushes "active" to KEDA as soon
//!   as a poll sees a pending request, and KEDA scales the workload to 1;
//! - 1 → 0 is KEDA's job too: its loop runs every `pollingInterval` (30 s)
//!   and scales to zero once no poll has seen a pending request for
//!   `cooldownPeriod` (300 s);
//! - 1 ↔ N is the HPA's, every sync period (15 s), on the latest count as an
//!   external metric with an average-value target per replica:
//!   ratio = count / (target × current); within 10 % of 1 nothing changes,
//!   else recommendation = ceil(count / target);
//! - the HPA's default behaviour: scale-up may add max(100 %, 4 pods) per
//!   15 s (relative to the count at the start of that period), with no
//!   stabilisation; scale-down uses the highest recommendation of the last
//!   300 s (stabilisation window) and may remove up to 100 % per 15 s, down
//!   to the HPA's minimum of 1;
//! - the HPA does nothing while the workload is at zero.
//!
//! The same machinery on other signals ([`KedaMetric`]): the add-on's
//! request rate (its `requestRate` metric: requests over the last minute in
//! 1 s buckets, divided by 60 s; active while above zero), and a queue
//! scaler (KEDA's NATS JetStream trigger: activation checked on KEDA's own
//! `pollingInterval`, 30 s, when the backlog is above
//! `activationLagThreshold`, 0; the HPA's metric query reads the backlog at
//! each sync). HPA on CPU is in [`super::hpa_cpu`].

use std::collections::VecDeque;

use super::{Common, Every, Policy};
use crate::model::View;
use crate::signals::RateWindow;

#[derive(Debug, Clone)]
pub struct HpaConfig {
    pub poll_ms: u64,
    pub sync_ms: u64,
    pub keda_polling_ms: u64,
    pub cooldown_ms: u64,
    pub tolerance: f64,
    pub scale_up_percent: f64,
    pub scale_up_pods: u32,
    pub scale_up_period_ms: u64,
    pub scale_down_window_ms: u64,
    pub scale_down_percent: f64,
    pub scale_down_period_ms: u64,
    pub target: f64,
    pub min_replicas: u32,
    pub max_replicas: u32,
}

impl HpaConfig {
    /// Kubernetes' and KEDA's defaults, with the shared target and maximum.
    pub fn defaults(common: &Common) -> Self {
        Self {
            poll_ms: 500,
            sync_ms: 15_000,
            keda_polling_ms: 30_000,
            cooldown_ms: 300_000,
            tolerance: 0.1,
            scale_up_percent: 100.0,
            scale_up_pods: 4,
            scale_up_period_ms: 15_000,
            scale_down_window_ms: 300_000,
            scale_down_percent: 100.0,
            scale_down_period_ms: 15_000,
            target: common.target_concurrency,
            min_replicas: 1,
            max_replicas: common.max_replicas,
        }
    }
}

/// The HPA's replica calculation for an average-value external metric.
pub fn recommend(current: u32, usage: f64, target: f64, tolerance: f64) -> u32 {
    let ratio = usage / (target * f64::from(current));
    if (1.0 - ratio).abs() <= tolerance {
        current
    } else {
        (usage / target).ceil().min(f64::from(u32::MAX)) as u32
    }
}

/// The HPA's state for one workload: stabilisation and rate limits.
#[derive(Debug, Clone)]
pub struct Hpa {
    config: HpaConfig,
    /// Raw recommendations, oldest first.
    recommendations: VecDeque<(u64, u32)>,
    /// Replicas added (+) or removed (−) by the HPA, with when.
    events: VecDeque<(u64, i64)>,
}

impl Hpa {
    pub fn new(config: HpaConfig) -> Self {
        Self {
            config,
            recommendations: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    /// One sync at `now_ms` with `current` replicas and the metric `usage`
    /// (an average-value metric); returns the new replica count.
    pub fn sync(&mut self, now_ms: u64, current: u32, usage: f64) -> u32 {
        let raw = recommend(current, usage, self.config.target, self.config.tolerance);
        self.sync_raw(now_ms, current, raw)
    }

    /// One sync with the metric's raw recommendation already computed (a
    /// utilization metric has its own formula); stabilisation and rate limits
    /// as for any metric.
    pub fn sync_raw(&mut self, now_ms: u64, current: u32, raw: u32) -> u32 {
        let c = self.config.clone();
        // Stabilisation: up follows the current recommendation (window 0);
        // down goes no lower than the highest recommendation in the window.
        while self
            .recommendations
            .front()
            .is_some_and(|(at, _)| *at + c.scale_down_window_ms <= now_ms)
        {
            self.recommendations.pop_front();
        }
        let down_limit = self
            .recommendations
            .iter()
            .map(|(_, r)| *r)
            .fold(raw, u32::max);
        self.recommendations.push_back((now_ms, raw));
        let mut stabilised = current;
        if stabilised < raw {
            stabilised = raw;
        }
        if stabilised > down_limit {
            stabilised = down_limit;
        }

        // Rate limits, relative to the count at the start of each period.
        let desired = if stabilised > current {
            let start = self.period_start(now_ms, current, c.scale_up_period_ms);
            let by_percent = (start * (1.0 + c.scale_up_percent / 100.0)).ceil();
            let by_pods = start + f64::from(c.scale_up_pods);
            let limit = (by_percent.max(by_pods) as u32).max(current);
            stabilised.min(limit).min(c.max_replicas)
        } else if stabilised < current {
            let start = self.period_start(now_ms, current, c.scale_down_period_ms);
            let limit = (start * (1.0 - c.scale_down_percent / 100.0))
                .ceil()
                .max(0.0) as u32;
            stabilised.max(limit).max(c.min_replicas)
        } else {
            stabilised
        };
        let desired = desired.clamp(c.min_replicas, c.max_replicas.max(c.min_replicas));
        if desired != current {
            self.events
                .push_back((now_ms, i64::from(desired) - i64::from(current)));
        }
        desired
    }

    /// Replicas at the start of the period of `period_ms` ending now.
    fn period_start(&mut self, now_ms: u64, current: u32, period_ms: u64) -> f64 {
        let horizon = self
            .config
            .scale_up_period_ms
            .max(self.config.scale_down_period_ms);
        while self
            .events
            .front()
            .is_some_and(|(at, _)| *at + horizon <= now_ms)
        {
            self.events.pop_front();
        }
        let changed: i64 = self
            .events
            .iter()
            .filter(|(at, _)| *at + period_ms > now_ms)
            .map(|(_, d)| d)
            .sum();
        (i64::from(current) - changed).max(0) as f64
    }
}

/// What the HPA reads as its external metric, and what counts as activity
/// for KEDA's activation and cooldown.
#[derive(Debug, Clone)]
pub enum KedaMetric {
    /// The HTTP add-on's pending requests (in service + queued), as of the
    /// scaler's last poll.
    Pending,
    /// The HTTP add-on's request rate over a sliding window (`requestRate`,
    /// window 1 min, granularity 1 s), as of the last poll; active while it
    /// is above zero.
    RequestRate(RateWindow),
    /// A queue consumer's backlog (waiting + in service). KEDA polls it every
    /// `pollingInterval` for activation; the HPA's metric query asks the
    /// scaler for the current value.
    Backlog,
}

impl KedaMetric {
    /// The HTTP add-on's default request-rate window.
    pub fn request_rate() -> Self {
        KedaMetric::RequestRate(RateWindow::new(60))
    }
}

/// KEDA (with the HTTP add-on, or a queue scaler) driving an HPA.
pub struct Keda {
    name: &'static str,
    config: HpaConfig,
    step_ms: u64,
    hpa: Hpa,
    metric: KedaMetric,
    poll: Every,
    sync: Every,
    keda_loop: Every,
    /// The metric at the last poll.
    polled: f64,
    /// The last poll that saw activity.
    last_active_ms: Option<u64>,
}

impl Keda {
    /// The HTTP add-on on pending requests: the main baseline.
    pub fn new(config: HpaConfig, common: &Common) -> Self {
        Self::on_metric("hpa", KedaMetric::Pending, config, common)
    }

    /// KEDA on `metric`, polled every `config.poll_ms`.
    pub fn on_metric(
        name: &'static str,
        metric: KedaMetric,
        config: HpaConfig,
        common: &Common,
    ) -> Self {
        Self {
            name,
            hpa: Hpa::new(config.clone()),
            metric,
            poll: Every::new(config.poll_ms, 0),
            sync: Every::new(config.sync_ms, config.sync_ms),
            keda_loop: Every::new(config.keda_polling_ms, config.keda_polling_ms),
            step_ms: common.step_ms,
            config,
            polled: 0.0,
            last_active_ms: None,
        }
    }

    /// The metric's value now.
    fn read(&self, view: &View) -> f64 {
        match &self.metric {
            KedaMetric::Pending | KedaMetric::Backlog => view.outstanding() as f64,
            KedaMetric::RequestRate(window) => window.rate(),
        }
    }
}

impl Policy for Keda {
    fn name(&self) -> &'static str {
        self.name
    }

    fn on_step(&mut self, view: &View) -> Option<u32> {
        let now_ms = view.step * self.step_ms;
        let current = view.active();
        if let KedaMetric::RequestRate(window) = &mut self.metric {
            window.record(view.arrivals, (now_ms + self.step_ms).is_multiple_of(1000));
        }
        let mut decided = None;
        if self.poll.due(now_ms) {
            self.polled = self.read(view);
            if self.polled > 0.0 {
                self.last_active_ms = Some(now_ms);
                if current == 0 {
                    // Activation.
                    return Some(1);
                }
            }
        }
        if self.keda_loop.due(now_ms) && current > 0 {
            let idle_since = self.last_active_ms.unwrap_or(0);
            if now_ms.saturating_sub(idle_since) >= self.config.cooldown_ms {
                return Some(0);
            }
        }
        if self.sync.due(now_ms) && current > 0 {
            let usage = match self.metric {
                KedaMetric::Backlog => self.read(view),
                _ => self.polled,
            };
            decided = Some(self.hpa.sync(now_ms, current, usage));
        }
        decided
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> HpaConfig {
        HpaConfig::defaults(&Common {
            step_ms: 10,
            target_concurrency: 10.0,
            max_replicas: 100,
        })
    }

    #[test]
    fn tolerance_keeps_the_count() {
        assert_eq!(recommend(4, 43.0, 10.0, 0.1), 4);
        assert_eq!(recommend(4, 37.0, 10.0, 0.1), 4);
        assert_eq!(recommend(4, 45.0, 10.0, 0.1), 5);
        assert_eq!(recommend(4, 12.0, 10.0, 0.1), 2);
    }

    #[test]
    fn scale_up_is_the_larger_of_double_and_plus_four() {
        let mut hpa = Hpa::new(config());
        // From 1: +4 beats ×2.
        assert_eq!(hpa.sync(15_000, 1, 1000.0), 5);
        // From 5: ×2 = 10 beats +4 = 9.
        assert_eq!(hpa.sync(30_000, 5, 1000.0), 10);
        assert_eq!(hpa.sync(45_000, 10, 1000.0), 20);
        assert_eq!(hpa.sync(60_000, 20, 1000.0), 40);
        assert_eq!(hpa.sync(75_000, 40, 1000.0), 80);
        assert_eq!(hpa.sync(90_000, 80, 1000.0), 100);
    }

    #[test]
    fn scale_up_limit_counts_from_the_period_start() {
        let mut hpa = Hpa::new(config());
        assert_eq!(hpa.sync(0, 2, 1000.0), 6);
        // 5 s later, still in the same 15 s period: the limit is from 2.
        assert_eq!(hpa.sync(5_000, 6, 1000.0), 6);
        assert_eq!(hpa.sync(15_000, 6, 1000.0), 12);
    }

    #[test]
    fn scale_down_waits_for_the_300_s_window() {
        let mut hpa = Hpa::new(config());
        assert_eq!(hpa.sync(0, 8, 80.0), 8);
        // Load drops: the recommendation of 8 at 0 s holds for 300 s.
        assert_eq!(hpa.sync(15_000, 8, 10.0), 8);
        assert_eq!(hpa.sync(285_000, 8, 10.0), 8);
        assert_eq!(hpa.sync(299_999, 8, 10.0), 8);
        // At 300 s the 8 left the window; the rest asked for 1.
        assert_eq!(hpa.sync(300_000, 8, 10.0), 1);
    }

    #[test]
    fn scale_down_takes_the_highest_recent_recommendation() {
        let mut hpa = Hpa::new(config());
        assert_eq!(hpa.sync(0, 10, 100.0), 10);
        assert_eq!(hpa.sync(100_000, 10, 60.0), 10); // 6 recorded
        assert_eq!(hpa.sync(300_000, 10, 20.0), 6); // 10 expired, 6 still in
        assert_eq!(hpa.sync(400_000, 6, 20.0), 2);
    }

    #[test]
    fn keda_activates_on_the_first_poll_and_deactivates_after_cooldown() {
        let common = Common {
            step_ms: 10,
            target_concurrency: 10.0,
            max_replicas: 10,
        };
        let mut keda = Keda::new(config(), &common);
        let view = |step, queued, ready| View {
            step,
            queued,
            ready,
            ..View::default()
        };
        assert_eq!(keda.on_step(&view(0, 0, 0)), None);
        // Between polls nothing happens; the poll at 500 ms activates.
        assert_eq!(keda.on_step(&view(30, 3, 0)), None);
        assert_eq!(keda.on_step(&view(50, 3, 0)), Some(1));
        // Last active at 500 ms: zero at the first KEDA loop ≥ 300.5 s (330 s);
        // until then the HPA keeps its minimum of 1.
        assert_eq!(keda.on_step(&view(30_000, 0, 1)), Some(1));
        assert_eq!(keda.on_step(&view(33_000, 0, 1)), Some(0));
    }

    #[test]
    fn the_queue_scaler_activates_on_keda_s_first_poll_that_sees_a_backlog() {
        let common = Common {
            step_ms: 10,
            target_concurrency: 7.0,
            max_replicas: 10,
        };
        let config = HpaConfig {
            poll_ms: 30_000,
            ..HpaConfig::defaults(&common)
        };
        let mut keda = Keda::on_metric("hpa-queue", KedaMetric::Backlog, config, &common);
        let view = |step, queued, ready| View {
            step,
            queued,
            ready,
            ..View::default()
        };
        // The poll at 0 s sees nothing; messages at 1 s wait for the next
        // poll, at 30 s, which activates.
        assert_eq!(keda.on_step(&view(0, 0, 0)), None);
        assert_eq!(keda.on_step(&view(100, 50, 0)), None);
        assert_eq!(keda.on_step(&view(2_999, 400, 0)), None);
        assert_eq!(keda.on_step(&view(3_000, 400, 0)), Some(1));
        // The HPA reads the backlog at its sync (45 s), not the poll's
        // figure: 70 waiting at 7 per replica, from 1, limited to +4.
        assert_eq!(keda.on_step(&view(4_500, 70, 1)), Some(5));
    }

    #[test]
    fn the_request_rate_is_averaged_over_a_minute() {
        let common = Common {
            step_ms: 10,
            target_concurrency: 10.0,
            max_replicas: 10,
        };
        let mut keda = Keda::on_metric(
            "hpa-rps",
            KedaMetric::request_rate(),
            HpaConfig::defaults(&common),
            &common,
        );
        // One request at zero: a non-zero rate, active at the next poll.
        let arrival = View {
            step: 10,
            arrivals: 1,
            in_service: 0,
            queued: 1,
            ..View::default()
        };
        assert_eq!(keda.on_step(&View::default()), None);
        assert_eq!(keda.on_step(&arrival), None);
        assert_eq!(
            keda.on_step(&View {
                step: 50,
                ..View::default()
            }),
            Some(1)
        );
        // About 5,700 requests in the first 10 s: some 95 req/s over the
        // minute, 10 replicas at 10 each, from 1 limited to 5.
        let mut decided = None;
        for step in 51..=1_500 {
            let busy = View {
                step,
                arrivals: if step < 1_000 { 6 } else { 0 },
                ready: 1,
                ..View::default()
            };
            decided = keda.on_step(&busy).or(decided);
        }
        assert_eq!(decided, Some(5));
    }
}
