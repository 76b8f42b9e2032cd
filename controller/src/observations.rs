//! The sum of what every live proxy reports about one service.
//!
//! Each proxy's latest `load` entry is kept. It counts while the proxy is
//! live (heard from within three report intervals) and while it is
//! current: a proxy that speaks periodic reports ([`Proxies`]) leaves idle
//! services out of them, so once a complete report came without this
//! service, the proxy's older entry means "nothing here". A proxy that only
//! sends standalone `load` messages is judged by its entries alone. Like the
//! autoscaler this is pure: time is passed in, so expiry and drain checks
//! are tested without waiting.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rouse_nats::messages::{Load, Wake};

use crate::autoscaler::Observation;
use crate::proxies::Proxies;

/// A proxy is live while its last report is younger than this many intervals.
pub(crate) const LIVE_INTERVALS: u32 = 3;

#[derive(Debug)]
struct ProxyReport {
    load: Load,
    received: Instant,
    /// (arrivals, interval_ms) of this proxy's latest reports, newest last,
    /// covering about [`RATE_SPAN`]: a report sent early (a surge) covers a
    /// few milliseconds, and its rate alone would be a spike.
    recent: VecDeque<(u64, u64)>,
}

/// Arrival rates are taken over at least this much of each proxy's reports.
const RATE_SPAN: Duration = Duration::from_secs(1);

impl ProxyReport {
    /// Requests per second over the latest reports.
    fn rate(&self) -> f64 {
        let (arrivals, ms) = self
            .recent
            .iter()
            .fold((0u64, 0u64), |(a, m), (arrivals, ms)| {
                (a.saturating_add(*arrivals), m.saturating_add(*ms))
            });
        if ms == 0 {
            0.0
        } else {
            arrivals as f64 * 1000.0 / ms as f64
        }
    }
}

/// Reports about one service.
#[derive(Debug)]
pub struct Observations {
    report_interval: Duration,
    proxies: HashMap<String, ProxyReport>,
    /// Every proxy's heartbeat, shared with the other services.
    heard: Arc<Proxies>,
    last_activity: Option<Instant>,
    woken: bool,
}

/// Totals over live proxies, for the status API.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub proxies: usize,
    pub in_flight: u64,
    pub held: u64,
}

impl Observations {
    /// Observations with a heartbeat table of their own.
    #[cfg(test)]
    pub fn new(report_interval: Duration) -> Self {
        Self::sharing(report_interval, Arc::new(Proxies::new()))
    }

    /// Observations that judge proxies by the shared heartbeat table.
    pub fn sharing(report_interval: Duration, heard: Arc<Proxies>) -> Self {
        Self {
            report_interval,
            proxies: HashMap::new(),
            heard,
            last_activity: None,
            woken: false,
        }
    }

    /// How long a proxy counts as live after its last report.
    pub fn liveness(&self) -> Duration {
        self.report_interval * LIVE_INTERVALS
    }

    /// Whether `report` (about this service) still says something: its
    /// proxy is live and has sent no complete report without it since.
    fn counts(&self, proxy: &str, report: &ProxyReport, now: Instant) -> bool {
        if now.saturating_duration_since(report.received) > self.liveness() {
            return false;
        }
        self.heard
            .get(proxy)
            .is_none_or(|seen| report.load.seq >= seen.complete_seq)
    }

    /// Records a load report, replacing the proxy's previous one. A proxy
    /// that sends periodic reports numbers all its messages from one
    /// counter, so an entry older than the one held (the two subjects can be
    /// read out of order) is dropped; a proxy sending only standalone loads
    /// is taken as it comes (a restarted one starts its `seq` over).
    pub fn record_load(&mut self, load: Load, now: Instant) {
        if load.arrivals > 0 || load.in_flight > 0 || load.held > 0 {
            self.last_activity = Some(now);
        }
        let reports_periodically = self.heard.get(&load.proxy).is_some();
        let span = RATE_SPAN.max(self.report_interval * 2).as_millis() as u64;
        let previous = self.proxies.remove(&load.proxy);
        let mut recent = match previous {
            Some(previous) if reports_periodically && previous.load.seq > load.seq => {
                self.proxies.insert(load.proxy.clone(), previous);
                return;
            }
            // The history goes on while the entry does; after a gap (the
            // proxy idle or gone) or a restart it begins anew.
            Some(previous)
                if previous.load.seq < load.seq && self.counts(&load.proxy, &previous, now) =>
            {
                previous.recent
            }
            _ => VecDeque::new(),
        };
        recent.push_back((load.arrivals, load.interval_ms));
        while recent.len() > 1 && recent.iter().skip(1).map(|(_, ms)| *ms).sum::<u64>() >= span {
            recent.pop_front();
        }
        self.proxies.insert(
            load.proxy.clone(),
            ProxyReport {
                load,
                received: now,
                recent,
            },
        );
    }

    /// Records a wake: requests are held somewhere.
    pub fn record_wake(&mut self, _wake: &Wake, now: Instant) {
        self.last_activity = Some(now);
        self.woken = true;
    }

    /// Drops entries that no longer count (silent proxies, idle services).
    pub fn expire(&mut self, now: Instant) {
        let entries = std::mem::take(&mut self.proxies);
        self.proxies = entries
            .into_iter()
            .filter(|(proxy, report)| self.counts(proxy, report, now))
            .collect();
    }

    /// The entries that count now.
    fn current(&self, now: Instant) -> impl Iterator<Item = &ProxyReport> {
        self.proxies
            .iter()
            .filter(move |(proxy, report)| self.counts(proxy, report, now))
            .map(|(_, report)| report)
    }

    /// Whether nothing is known that the autoscaler could act on: no entry
    /// counts and no wake is pending. A loop at zero replicas then has
    /// nothing to do until a message arrives.
    pub fn quiet(&self, now: Instant) -> bool {
        !self.woken && self.current(now).next().is_none()
    }

    /// The autoscaler's input; consumes the wake flag.
    pub fn observe(&mut self, now: Instant) -> Observation {
        self.expire(now);
        let mut observation = Observation {
            last_activity: self.last_activity,
            woken: std::mem::take(&mut self.woken),
            ..Default::default()
        };
        for report in self.proxies.values() {
            let load = &report.load;
            observation.in_flight = observation.in_flight.saturating_add(load.in_flight);
            observation.held = observation.held.saturating_add(load.held);
            observation.arrival_rate += report.rate();
        }
        observation
    }

    /// In flight and held over the entries that count; `proxies` is every
    /// live proxy, whether it has traffic for this service or not.
    pub fn totals(&self, now: Instant) -> Totals {
        let mut totals = self
            .current(now)
            .fold(Totals::default(), |mut totals, report| {
                totals.in_flight = totals.in_flight.saturating_add(report.load.in_flight);
                totals.held = totals.held.saturating_add(report.load.held);
                totals
            });
        totals.proxies = self.heard.live_count(now, self.liveness()) + self.standalone(now).count();
        totals
    }

    /// The entries of live proxies known only by their standalone loads
    /// (no periodic report: judged by these alone).
    fn standalone(&self, now: Instant) -> impl Iterator<Item = &ProxyReport> {
        self.proxies
            .iter()
            .filter(move |(proxy, report)| {
                self.heard.get(proxy).is_none()
                    && now.saturating_duration_since(report.received) <= self.liveness()
            })
            .map(|(_, report)| report)
    }

    /// When any proxy last saw an arrival, in-flight or held request, or
    /// sent a wake (what [`Observations::observe`] reports, read without
    /// consuming anything).
    pub fn last_activity(&self) -> Option<Instant> {
        self.last_activity
    }

    /// Requests per second arriving over the live proxies' last report
    /// intervals, summed.
    pub fn arrival_rate(&self, now: Instant) -> f64 {
        self.current(now)
            .map(ProxyReport::rate)
            // Not `sum()`: over no proxy at all, f64's sum is -0.0, which
            // status shows as "-0.0".
            .fold(0.0, |total, rate| total + rate)
    }

    /// Whether endpoint `id`, marked draining in `generation` (written to KV
    /// as bucket revision `revision`, at `published`), can go: no live proxy
    /// can still send it a request. A proxy with a current entry for this
    /// service must have seen that generation and have nothing in flight on
    /// the endpoint; a live proxy without one (no traffic here) must have
    /// applied the bucket up to `revision`. With no live proxy at all, a full
    /// liveness period after the write must pass first: a proxy that was
    /// about to report is not missed.
    pub fn drained(
        &self,
        id: &str,
        generation: u64,
        revision: u64,
        published: Instant,
        now: Instant,
    ) -> bool {
        let entry_drained = |report: &ProxyReport| {
            report.load.endpoints_generation >= generation
                && report.load.per_endpoint.get(id).copied().unwrap_or(0) == 0
        };
        let heartbeats = self.heard.live(now, self.liveness());
        let mut standalone = self.standalone(now).peekable();
        if heartbeats.is_empty() && standalone.peek().is_none() {
            return now.saturating_duration_since(published) > self.liveness();
        }
        let periodic_drained =
            heartbeats
                .iter()
                .all(|(proxy, seen)| match self.proxies.get(proxy) {
                    Some(report) if self.counts(proxy, report, now) => entry_drained(report),
                    _ => seen.endpoints_revision >= revision,
                });
        periodic_drained && standalone.all(entry_drained)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rouse_nats::messages::VERSION;
    use std::collections::BTreeMap;

    fn load(proxy: &str, seq: u64, in_flight: u64, per: &[(&str, u64)], generation: u64) -> Load {
        Load {
            v: VERSION,
            service: "s".into(),
            proxy: proxy.into(),
            seq,
            interval_ms: 1000,
            arrivals: in_flight * 2,
            completed: 0,
            in_flight,
            held: 1,
            per_endpoint: per
                .iter()
                .map(|(k, v)| ((*k).into(), *v))
                .collect::<BTreeMap<_, _>>(),
            endpoints_generation: generation,
            at_ms: 0,
        }
    }

    #[test]
    fn an_early_report_does_not_make_a_rate_spike() {
        let t0 = Instant::now();
        let mut obs = Observations::new(Duration::from_millis(500));
        let report = |seq, arrivals, interval_ms| Load {
            arrivals,
            interval_ms,
            ..load("a", seq, 0, &[], 1)
        };
        // 50 req/s in regular reports...
        for seq in 1..=4 {
            obs.record_load(report(seq, 25, 500), t0);
        }
        assert!((obs.arrival_rate(t0) - 50.0).abs() < 1e-9);
        // ...then a surge report: 10 arrivals in 2 ms is not 5,000 req/s.
        obs.record_load(report(5, 10, 2), t0);
        let rate = obs.arrival_rate(t0);
        assert!(rate < 70.0, "{rate}");
        // A restarted proxy starts over.
        obs.record_load(report(1, 10, 500), t0);
        assert!((obs.arrival_rate(t0) - 20.0).abs() < 1e-9);
    }

    #[test]
    fn sums_live_proxies_and_drops_silent_ones() {
        let t0 = Instant::now();
        let mut obs = Observations::new(Duration::from_secs(1));
        obs.record_load(load("a", 1, 3, &[], 1), t0);
        obs.record_load(load("b", 1, 4, &[], 1), t0 + Duration::from_secs(2));
        let o = obs.observe(t0 + Duration::from_secs(2));
        assert_eq!((o.in_flight, o.held), (7, 2));
        assert!((o.arrival_rate - 14.0).abs() < 1e-9);
        assert_eq!(obs.totals(t0 + Duration::from_secs(2)).proxies, 2);
        // "a" has been silent for more than three intervals.
        let o = obs.observe(t0 + Duration::from_millis(3500));
        assert_eq!(o.in_flight, 4);
    }

    #[test]
    fn read_only_accessors_match_observe_and_consume_nothing() {
        let t0 = Instant::now();
        let mut obs = Observations::new(Duration::from_secs(1));
        assert_eq!(obs.last_activity(), None);
        obs.record_load(load("a", 1, 3, &[], 1), t0);
        obs.record_load(load("b", 1, 4, &[], 1), t0 + Duration::from_secs(2));
        let now = t0 + Duration::from_secs(2);
        assert!((obs.arrival_rate(now) - 14.0).abs() < 1e-9);
        assert_eq!(obs.last_activity(), Some(now));
        // "a" has been silent for more than three intervals.
        let later = t0 + Duration::from_millis(3500);
        assert!((obs.arrival_rate(later) - 8.0).abs() < 1e-9);
        let wake = Wake {
            v: VERSION,
            service: "s".into(),
            proxy: "a".into(),
            held: 1,
            at_ms: 0,
        };
        obs.record_wake(&wake, later);
        assert_eq!(obs.last_activity(), Some(later));
        assert!(
            obs.observe(later).woken,
            "reading left the wake for the loop"
        );
    }

    #[test]
    fn a_restarted_proxy_replaces_its_predecessor() {
        let t0 = Instant::now();
        let mut obs = Observations::new(Duration::from_secs(1));
        obs.record_load(load("a", 500, 3, &[], 1), t0);
        obs.record_load(load("a", 7, 0, &[], 1), t0);
        assert_eq!(obs.observe(t0).in_flight, 0);
    }

    #[test]
    fn wake_is_reported_once() {
        let t0 = Instant::now();
        let mut obs = Observations::new(Duration::from_secs(1));
        let wake = Wake {
            v: VERSION,
            service: "s".into(),
            proxy: "a".into(),
            held: 1,
            at_ms: 0,
        };
        obs.record_wake(&wake, t0);
        assert!(obs.observe(t0).woken);
        assert!(!obs.observe(t0).woken);
    }

    #[test]
    fn drained_needs_every_live_proxy_on_the_new_generation_with_zero_in_flight() {
        let t0 = Instant::now();
        let mut obs = Observations::new(Duration::from_secs(1));
        obs.record_load(load("a", 1, 0, &[("r1", 0)], 7), t0);
        obs.record_load(load("b", 1, 1, &[("r1", 1)], 7), t0);
        assert!(
            !obs.drained("r1", 7, 0, t0, t0),
            "b still has one in flight"
        );
        obs.record_load(load("b", 2, 0, &[("r1", 0)], 6), t0);
        assert!(
            !obs.drained("r1", 7, 0, t0, t0),
            "b has not seen generation 7"
        );
        obs.record_load(load("b", 3, 0, &[], 7), t0);
        assert!(obs.drained("r1", 7, 0, t0, t0));
    }

    #[test]
    fn without_live_proxies_a_drain_waits_a_liveness_period_after_publishing() {
        let t0 = Instant::now();
        let obs = Observations::new(Duration::from_secs(1));
        assert!(!obs.drained("r1", 1, 0, t0, t0 + Duration::from_secs(2)));
        assert!(obs.drained("r1", 1, 0, t0, t0 + Duration::from_secs(4)));
    }

    #[test]
    fn without_live_proxies_the_rate_is_plus_zero() {
        let obs = Observations::new(Duration::from_secs(1));
        let rate = obs.arrival_rate(Instant::now());
        assert_eq!(rate, 0.0);
        assert!(rate.is_sign_positive(), "{rate} would show as \"-0.0\"");
    }

    /// A proxy's heartbeat: a complete report of `seq` listing `services`.
    fn heartbeat(heard: &Proxies, proxy: &str, seq: u64, revision: u64, now: Instant) {
        heard.heard(
            &rouse_nats::messages::Report {
                v: VERSION,
                proxy: proxy.into(),
                seq,
                interval_ms: 1000,
                endpoints_revision: revision,
                part: 0,
                parts: 1,
                services: Vec::new(),
                at_ms: 0,
            },
            now,
        );
    }

    #[test]
    fn a_report_that_leaves_the_service_out_means_nothing_there() {
        let t0 = Instant::now();
        let heard = Arc::new(Proxies::new());
        let mut obs = Observations::sharing(Duration::from_secs(1), Arc::clone(&heard));
        heartbeat(&heard, "a", 10, 0, t0);
        obs.record_load(load("a", 10, 3, &[("r1", 3)], 1), t0);
        assert_eq!(obs.totals(t0).in_flight, 3);
        assert!(!obs.quiet(t0));
        // The next complete report does not list it: idle there.
        heartbeat(&heard, "a", 11, 0, t0);
        let totals = obs.totals(t0);
        assert_eq!((totals.in_flight, totals.proxies), (0, 1), "{totals:?}");
        assert_eq!(obs.arrival_rate(t0), 0.0);
        assert!(obs.quiet(t0));
        assert_eq!(obs.observe(t0).in_flight, 0);
        // An immediate load after that report counts again, with a fresh
        // rate history.
        obs.record_load(load("a", 12, 1, &[], 1), t0);
        assert_eq!(obs.totals(t0).in_flight, 1);
        assert!((obs.arrival_rate(t0) - 2.0).abs() < 1e-9);
    }

    #[test]
    fn an_older_entry_read_late_does_not_replace_a_newer_one() {
        let t0 = Instant::now();
        let heard = Arc::new(Proxies::new());
        let mut obs = Observations::sharing(Duration::from_secs(1), Arc::clone(&heard));
        heartbeat(&heard, "a", 20, 0, t0);
        obs.record_load(load("a", 20, 5, &[("r1", 5)], 1), t0);
        // An immediate load numbered before the report, read after it.
        obs.record_load(load("a", 19, 0, &[("r1", 0)], 1), t0);
        assert_eq!(obs.totals(t0).in_flight, 5);
        assert!(!obs.drained("r1", 1, 0, t0, t0));
    }

    #[test]
    fn an_idle_proxy_counts_as_drained_once_it_applied_the_revision() {
        let t0 = Instant::now();
        let heard = Arc::new(Proxies::new());
        let obs = Observations::sharing(Duration::from_secs(1), Arc::clone(&heard));
        // "a" has no traffic for this service and has applied revision 6.
        heartbeat(&heard, "a", 5, 6, t0);
        assert!(
            !obs.drained("r1", 2, 7, t0, t0),
            "revision 7 not applied yet"
        );
        heartbeat(&heard, "a", 6, 7, t0);
        assert!(obs.drained("r1", 2, 7, t0, t0));
        // A proxy that speaks only standalone loads is judged by them.
        let mut obs = obs;
        obs.record_load(load("old", 1, 1, &[("r1", 1)], 2), t0);
        assert!(
            !obs.drained("r1", 2, 7, t0, t0),
            "old still has one in flight"
        );
        obs.record_load(load("old", 2, 0, &[("r1", 0)], 2), t0);
        assert!(obs.drained("r1", 2, 7, t0, t0));
        assert_eq!(obs.totals(t0).proxies, 2);
    }

    #[test]
    fn a_busy_proxy_is_judged_by_its_entry_not_its_revision() {
        let t0 = Instant::now();
        let heard = Arc::new(Proxies::new());
        let mut obs = Observations::sharing(Duration::from_secs(1), Arc::clone(&heard));
        heartbeat(&heard, "a", 5, 100, t0);
        obs.record_load(load("a", 5, 1, &[("r1", 1)], 2), t0);
        assert!(!obs.drained("r1", 2, 7, t0, t0), "one in flight on r1");
        obs.record_load(load("a", 6, 1, &[("r1", 0), ("r2", 1)], 2), t0);
        assert!(obs.drained("r1", 2, 7, t0, t0));
    }
}
