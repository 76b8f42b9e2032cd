//! The last hour of each service's replica counts and the last scale
//! events, for the status page's chart and event list (`/api/v1/history`).
//!
//! Metrics already hold this history, but only for whoever runs
//! Prometheus; the page must work on a bare controller. So the board keeps
//! a small ring per service: a sample when desired or ready changes, else
//! at most one per [`SAMPLE_EVERY_MS`], nothing older than [`WINDOW_MS`],
//! and never more than [`MAX_SAMPLES`] (a flapping service cannot grow it).
//! Scale events go to one shared ring of the last [`MAX_EVENTS`]. Every
//! function takes the time as an argument, so the tests run on a fake clock.

use std::collections::VecDeque;

use serde::Serialize;

use super::ScaleEvent;

/// How far back the chart looks.
pub const WINDOW_MS: u64 = 60 * 60 * 1000;
/// The steady-state sampling period: one sample per this while nothing changes.
pub const SAMPLE_EVERY_MS: u64 = 10_000;
/// Samples kept per service at most: a steady hour needs 360, the rest is
/// room for changes.
pub const MAX_SAMPLES: usize = 1024;
/// Scale events kept, of all services together.
pub const MAX_EVENTS: usize = 50;

/// Replica counts at one moment.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct Sample {
    pub at_ms: u64,
    pub desired: u32,
    pub ready: u32,
}

/// One service's samples, oldest first.
#[derive(Debug, Default, Clone)]
pub struct Samples(VecDeque<Sample>);

impl Samples {
    /// Records `desired`/`ready` at `at_ms` if they changed or the last
    /// sample is [`SAMPLE_EVERY_MS`] old; drops what left the window or
    /// overflows the ring.
    pub fn record(&mut self, at_ms: u64, desired: u32, ready: u32) {
        let due = match self.0.back() {
            None => true,
            Some(last) => {
                (last.desired, last.ready) != (desired, ready)
                    || at_ms.saturating_sub(last.at_ms) >= SAMPLE_EVERY_MS
            }
        };
        if due {
            self.0.push_back(Sample {
                at_ms,
                desired,
                ready,
            });
        }
        while self.0.len() > MAX_SAMPLES {
            self.0.pop_front();
        }
        self.prune(at_ms);
    }

    fn prune(&mut self, now_ms: u64) {
        let start = now_ms.saturating_sub(WINDOW_MS);
        while self.0.front().is_some_and(|s| s.at_ms < start) {
            self.0.pop_front();
        }
    }

    /// The samples inside the window ending at `now_ms`, oldest first.
    pub fn within(&self, now_ms: u64) -> Vec<Sample> {
        let start = now_ms.saturating_sub(WINDOW_MS);
        self.0
            .iter()
            .filter(|s| s.at_ms >= start)
            .copied()
            .collect()
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.0.len()
    }
}

/// A scale event and the service it happened to.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ServiceEvent {
    pub service: String,
    #[serde(flatten)]
    pub event: ScaleEvent,
}

/// The last [`MAX_EVENTS`] scale events, oldest first.
#[derive(Debug, Default)]
pub struct Events(VecDeque<ServiceEvent>);

impl Events {
    pub fn push(&mut self, service: &str, event: ScaleEvent) {
        if self.0.len() == MAX_EVENTS {
            self.0.pop_front();
        }
        self.0.push_back(ServiceEvent {
            service: service.to_string(),
            event,
        });
    }

    /// Newest first, as the page lists them.
    pub fn newest_first(&self) -> Vec<ServiceEvent> {
        self.0.iter().rev().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_700_000_000_000;

    #[test]
    fn steady_counts_are_sampled_once_per_period() {
        let mut samples = Samples::default();
        // A reconcile pass every 500 ms for a minute.
        for tick in 0..120 {
            samples.record(T0 + tick * 500, 1, 1);
        }
        let kept = samples.within(T0 + 60_000);
        let times: Vec<u64> = kept.iter().map(|s| s.at_ms - T0).collect();
        assert_eq!(times, vec![0, 10_000, 20_000, 30_000, 40_000, 50_000]);
    }

    #[test]
    fn a_change_is_sampled_at_once() {
        let mut samples = Samples::default();
        samples.record(T0, 0, 0);
        samples.record(T0 + 100, 1, 0);
        samples.record(T0 + 900, 1, 1);
        samples.record(T0 + 1_000, 1, 1);
        assert_eq!(
            samples.within(T0 + 1_000),
            vec![
                Sample {
                    at_ms: T0,
                    desired: 0,
                    ready: 0
                },
                Sample {
                    at_ms: T0 + 100,
                    desired: 1,
                    ready: 0
                },
                Sample {
                    at_ms: T0 + 900,
                    desired: 1,
                    ready: 1
                },
            ]
        );
    }

    #[test]
    fn nothing_older_than_the_window_is_kept() {
        let mut samples = Samples::default();
        // Two hours of steady passes, one a second.
        for second in 0..7_200 {
            samples.record(T0 + second * 1_000, 2, 2);
        }
        let now = T0 + 7_199_000;
        let kept = samples.within(now);
        assert!(kept.iter().all(|s| s.at_ms >= now - WINDOW_MS));
        assert_eq!(samples.len(), kept.len(), "pruned, not only filtered");
        // 3600 s / 10 s, the oldest one right at the window's start or after.
        assert_eq!(kept.len(), 360);
    }

    #[test]
    fn the_window_also_applies_when_reading_later() {
        let mut samples = Samples::default();
        samples.record(T0, 1, 1);
        assert_eq!(samples.within(T0 + WINDOW_MS).len(), 1);
        assert!(samples.within(T0 + WINDOW_MS + 1).is_empty());
    }

    #[test]
    fn a_flapping_service_stays_bounded() {
        let mut samples = Samples::default();
        for i in 0..10_000u64 {
            samples.record(T0 + i, (i % 2) as u32, 0);
        }
        assert_eq!(samples.len(), MAX_SAMPLES);
        let kept = samples.within(T0 + 10_000);
        assert_eq!(
            kept.last().map(|s| s.at_ms),
            Some(T0 + 9_999),
            "the newest stay"
        );
    }

    #[test]
    fn events_keep_the_last_fifty_newest_first() {
        let mut events = Events::default();
        for i in 0..(MAX_EVENTS as u32 + 10) {
            let event = ScaleEvent {
                from: i,
                to: i + 1,
                reason: "test".into(),
                at_ms: T0 + u64::from(i),
            };
            events.push("echo", event);
        }
        let listed = events.newest_first();
        assert_eq!(listed.len(), MAX_EVENTS);
        assert_eq!(listed[0].event.from, MAX_EVENTS as u32 + 9);
        assert_eq!(listed[MAX_EVENTS - 1].event.from, 10);
    }

    #[test]
    fn an_event_serializes_flat_with_its_service() {
        let mut events = Events::default();
        events.push(
            "echo",
            ScaleEvent {
                from: 0,
                to: 1,
                reason: "wake".into(),
                at_ms: 5,
            },
        );
        let json = serde_json::to_value(events.newest_first()).unwrap_or_default();
        assert_eq!(
            json,
            serde_json::json!([{"service": "echo", "from": 0, "to": 1, "reason": "wake", "at_ms": 5}])
        );
    }
}
