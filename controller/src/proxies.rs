//! The proxies this controller hears from, one entry each, shared by every
//! service's [`Observations`](crate::observations::Observations).
//!
//! A proxy's periodic [`Report`] is its heartbeat: it says the proxy is
//! live, which of its messages completed a report (`seq`), and how far its
//! endpoint watch has come. Because a report lists only the services active
//! at that proxy, a service's latest entry from a proxy counts only if no
//! complete report has come from that proxy since: a later report that left
//! the service out means "nothing there". Reading that needs this table,
//! not a message per idle service.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rouse_nats::messages::Report;

/// What the last messages of one proxy said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    /// The `seq` of its latest complete report: service entries older than
    /// it are out of date.
    pub complete_seq: u64,
    /// When any message of its reports last arrived.
    pub received: Instant,
    /// The highest endpoints-bucket revision it has applied.
    pub endpoints_revision: u64,
}

/// Every proxy that sent a [`Report`].
#[derive(Debug, Default)]
pub struct Proxies {
    seen: Mutex<HashMap<String, Seen>>,
    /// Proxies forgotten so far (silent for longer than the liveness
    /// window), whoever noticed: the intake wakes every service when this
    /// moves, so that status counts a proxy that left at once.
    departures: AtomicU64,
}

impl Proxies {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Seen>> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes in one message (one part) of a report. The set of services
    /// counts as complete with the last part. Returns whether the proxy is
    /// new (not heard from before, or forgotten since).
    pub fn heard(&self, report: &Report, now: Instant) -> bool {
        let mut seen = self.lock();
        let new = !seen.contains_key(&report.proxy);
        let entry = seen.entry(report.proxy.clone()).or_insert(Seen {
            complete_seq: 0,
            received: now,
            endpoints_revision: 0,
        });
        entry.received = now;
        entry.endpoints_revision = entry.endpoints_revision.max(report.endpoints_revision);
        if report.is_last_part() {
            entry.complete_seq = entry.complete_seq.max(report.seq);
        }
        new
    }

    pub fn get(&self, proxy: &str) -> Option<Seen> {
        self.lock().get(proxy).copied()
    }

    /// Proxies heard from within `ttl`; forgets the others.
    pub fn live(&self, now: Instant, ttl: Duration) -> Vec<(String, Seen)> {
        let mut seen = self.lock();
        self.forget_silent(&mut seen, now, ttl);
        seen.iter().map(|(id, s)| (id.clone(), *s)).collect()
    }

    /// Forgets the proxies not heard from within `ttl`; returns how many
    /// proxies have been forgotten since the table was made.
    pub fn forget_departed(&self, now: Instant, ttl: Duration) -> u64 {
        let mut seen = self.lock();
        self.forget_silent(&mut seen, now, ttl);
        self.departures.load(Ordering::Relaxed)
    }

    fn forget_silent(&self, seen: &mut HashMap<String, Seen>, now: Instant, ttl: Duration) {
        let before = seen.len();
        seen.retain(|_, s| now.saturating_duration_since(s.received) <= ttl);
        let gone = (before - seen.len()) as u64;
        if gone > 0 {
            self.departures.fetch_add(gone, Ordering::Relaxed);
        }
    }

    /// How many proxies were heard from within `ttl`.
    pub fn live_count(&self, now: Instant, ttl: Duration) -> usize {
        self.lock()
            .values()
            .filter(|s| now.saturating_duration_since(s.received) <= ttl)
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rouse_nats::messages::VERSION;

    fn report(proxy: &str, seq: u64, revision: u64, part: u32, parts: u32) -> Report {
        Report {
            v: VERSION,
            proxy: proxy.into(),
            seq,
            interval_ms: 1000,
            endpoints_revision: revision,
            part,
            parts,
            services: Vec::new(),
            at_ms: 0,
        }
    }

    #[test]
    fn a_report_is_complete_with_its_last_part_and_revisions_only_grow() {
        let t0 = Instant::now();
        let proxies = Proxies::new();
        proxies.heard(&report("a", 10, 5, 0, 1), t0);
        assert_eq!(proxies.get("a").map(|s| s.complete_seq), Some(10));
        proxies.heard(&report("a", 11, 7, 0, 2), t0);
        assert_eq!(
            proxies.get("a").map(|s| s.complete_seq),
            Some(10),
            "first of two parts"
        );
        proxies.heard(&report("a", 11, 6, 1, 2), t0);
        let seen = proxies.get("a").expect("seen");
        assert_eq!((seen.complete_seq, seen.endpoints_revision), (11, 7));
    }

    #[test]
    fn silent_proxies_are_not_live() {
        let t0 = Instant::now();
        let proxies = Proxies::new();
        proxies.heard(&report("a", 1, 0, 0, 1), t0);
        proxies.heard(&report("b", 1, 0, 0, 1), t0 + Duration::from_secs(2));
        let now = t0 + Duration::from_millis(3500);
        let ttl = Duration::from_secs(3);
        assert_eq!(proxies.live_count(now, ttl), 1);
        let live = proxies.live(now, ttl);
        assert_eq!(live.len(), 1);
        assert_eq!(live[0].0, "b");
        assert_eq!(proxies.get("a"), None, "forgotten");
    }
}
