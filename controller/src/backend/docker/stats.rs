//! What a container uses, from one answer of the engine's stats endpoint
//! (`GET /containers/{id}/stats?stream=false&one-shot=true`).
//!
//! CPU is the cgroup's cumulative CPU time (`cpu_stats.cpu_usage.total_usage`,
//! nanoseconds): a counter the controller takes rates of. Memory is the
//! cgroup's usage less its inactive page cache, the way `docker stats`
//! computes it, so a container that read big files is not taken for one
//! that holds memory.

use std::time::Duration;

use bollard::models::{ContainerMemoryStats, ContainerStatsResponse};

use crate::backend::{CpuUsage, Usage};

/// The usage of replica `id` in `stats`. Fields the engine left out (a
/// container that stopped meanwhile, an engine without cgroup access) are
/// Unknown, not zero.
pub fn usage_of(id: String, stats: &ContainerStatsResponse) -> Usage {
    let cpu = stats
        .cpu_stats
        .as_ref()
        .and_then(|cpu| cpu.cpu_usage.as_ref())
        .and_then(|usage| usage.total_usage)
        .map_or(CpuUsage::Unknown, |ns| {
            CpuUsage::Total(Duration::from_nanos(ns))
        });
    Usage {
        id,
        cpu,
        memory_bytes: stats.memory_stats.as_ref().and_then(memory_in_use),
    }
}

/// `usage` less the inactive page cache, as the docker CLI's
/// `calculateMemUsageUnixNoCache`: cgroup v1 names it
/// `total_inactive_file`, v2 `inactive_file`; engines older than both
/// reported only `cache`. A cache figure not below the usage is ignored.
fn memory_in_use(memory: &ContainerMemoryStats) -> Option<u64> {
    let usage = memory.usage?;
    let cache = memory.stats.as_ref().and_then(|stats| {
        ["total_inactive_file", "inactive_file", "cache"]
            .iter()
            .find_map(|key| stats.get(*key).copied())
    });
    match cache {
        Some(cache) if cache < usage => Some(usage - cache),
        _ => Some(usage),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bollard::models::{ContainerCpuStats, ContainerCpuUsage};
    use std::collections::HashMap;

    fn memory(usage: Option<u64>, stats: &[(&str, u64)]) -> ContainerMemoryStats {
        ContainerMemoryStats {
            usage,
            stats: Some(
                stats
                    .iter()
                    .map(|(k, v)| (k.to_string(), *v))
                    .collect::<HashMap<_, _>>(),
            ),
            ..Default::default()
        }
    }

    #[test]
    fn page_cache_is_taken_off_as_the_docker_cli_does() {
        // cgroup v2
        assert_eq!(
            memory_in_use(&memory(Some(100), &[("inactive_file", 30)])),
            Some(70)
        );
        // cgroup v1 names it total_inactive_file (and has inactive_file too).
        assert_eq!(
            memory_in_use(&memory(
                Some(100),
                &[("total_inactive_file", 40), ("inactive_file", 10)]
            )),
            Some(60)
        );
        // Old engines: only `cache`.
        assert_eq!(
            memory_in_use(&memory(Some(100), &[("cache", 25)])),
            Some(75)
        );
        // A cache figure at or above the usage would underflow: ignored.
        assert_eq!(
            memory_in_use(&memory(Some(100), &[("inactive_file", 100)])),
            Some(100)
        );
        assert_eq!(memory_in_use(&memory(Some(5), &[])), Some(5));
        assert_eq!(memory_in_use(&memory(None, &[("inactive_file", 1)])), None);
    }

    #[test]
    fn missing_fields_are_unknown_not_zero() {
        let empty = usage_of("a".into(), &ContainerStatsResponse::default());
        assert_eq!(empty.cpu, CpuUsage::Unknown);
        assert_eq!(empty.memory_bytes, None);

        let full = ContainerStatsResponse {
            cpu_stats: Some(ContainerCpuStats {
                cpu_usage: Some(ContainerCpuUsage {
                    total_usage: Some(1_500_000_000),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            memory_stats: Some(memory(Some(4096), &[("inactive_file", 1024)])),
            ..Default::default()
        };
        let usage = usage_of("b".into(), &full);
        assert_eq!(usage.id, "b");
        assert_eq!(usage.cpu, CpuUsage::Total(Duration::from_millis(1500)));
        assert_eq!(usage.memory_bytes, Some(3072));
    }

    #[test]
    fn an_engine_answer_parses() {
        // Trimmed from dockerd 20.10's answer for a running container
        // (cgroup v2).
        let json = r#"{
            "read": "2026-01-01T00:00:00.000000000Z",
            "preread": "0001-01-01T00:00:00Z",
            "pids_stats": {"current": 3},
            "cpu_stats": {"cpu_usage": {"total_usage": 81234000, "usage_in_kernelmode": 20000000,
                "usage_in_usermode": 61234000}, "system_cpu_usage": 9000000000000, "online_cpus": 2,
                "throttling_data": {"periods": 0, "throttled_periods": 0, "throttled_time": 0}},
            "precpu_stats": {"cpu_usage": {"total_usage": 0, "usage_in_kernelmode": 0,
                "usage_in_usermode": 0}, "throttling_data": {"periods": 0, "throttled_periods": 0,
                "throttled_time": 0}},
            "memory_stats": {"usage": 6000000, "stats": {"anon": 2000000, "file": 3000000,
                "inactive_file": 2500000, "active_file": 500000}, "limit": 25000000000},
            "name": "/rouse-echo-1", "id": "abc"
        }"#;
        let stats: ContainerStatsResponse = serde_json::from_str(json).expect("stats");
        let usage = usage_of("echo-1".into(), &stats);
        assert_eq!(usage.cpu, CpuUsage::Total(Duration::from_nanos(81_234_000)));
        assert_eq!(usage.memory_bytes, Some(3_500_000));
    }
}
