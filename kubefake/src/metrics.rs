//! `metrics.k8s.io/v1beta1` PodMetrics, computed from the real processes
//! the kubelet runs, the way metrics-server computes them from the
//! kubelet's own samples: CPU as the rate between the oldest and newest
//! sample of the last few seconds, memory as the latest resident set.
//!
//! A sampler task reads `/proc` once every [`SAMPLE_EVERY`] for all pods
//! (each pod's process and its descendants, summed), outside the state
//! lock, and keeps [`WINDOW`] of samples per pod. A pod appears in the API
//! once its samples span [`MIN_WINDOW`], as a pod that metrics-server has
//! not scraped twice yet is missing from its answers.
//!
//! Served: `GET /apis/metrics.k8s.io/v1beta1/namespaces/{ns}/pods` (and
//! cluster-wide `/apis/metrics.k8s.io/v1beta1/pods`) with `labelSelector`
//! (the pod's labels, as metrics-server copies them) and `fieldSelector`,
//! and `.../pods/{name}`. [`crate::FakeCluster::serve_metrics`] turns the
//! group off: every path of it is then a 404, as on a cluster without
//! metrics-server.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use serde_json::{json, Value};

use crate::cluster::{stopped, NsName, Shared, State};
use crate::kubelet::pods;
use crate::selector::Selector;
use crate::status::ApiError;
use crate::store::now_ts;

/// How often the pods' processes are sampled.
pub(crate) const SAMPLE_EVERY: Duration = Duration::from_millis(500);
/// Samples older than this are dropped: the rate is over at most this.
const WINDOW: Duration = Duration::from_secs(3);
/// A pod is reported once its samples span this much.
const MIN_WINDOW: Duration = Duration::from_secs(1);
pub(crate) const GROUP: &str = "metrics.k8s.io";
const VERSION: &str = "v1beta1";

/// One reading of a pod's process tree.
#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Instant,
    wall: Timestamp,
    /// CPU time of the tree (user + system, with reaped children), in
    /// clock ticks.
    ticks: u64,
    rss_bytes: u64,
}

/// The recent samples of one pod's current process.
#[derive(Debug, Default)]
pub(crate) struct PodSamples {
    pid: u32,
    samples: VecDeque<Sample>,
}

impl PodSamples {
    fn push(&mut self, pid: u32, sample: Sample) {
        // A restarted container's counters start again from zero.
        if pid != self.pid {
            self.pid = pid;
            self.samples.clear();
        }
        self.samples.push_back(sample);
        while self
            .samples
            .front()
            .is_some_and(|s| sample.at.duration_since(s.at) > WINDOW)
        {
            self.samples.pop_front();
        }
    }

    /// Cores and bytes in use, the window they cover and its end; `None`
    /// until the samples span [`MIN_WINDOW`].
    fn usage(&self, ticks_per_second: u64) -> Option<(f64, u64, Duration, Timestamp)> {
        let (first, last) = (self.samples.front()?, self.samples.back()?);
        let window = last.at.duration_since(first.at);
        if window < MIN_WINDOW {
            return None;
        }
        let cpu_seconds =
            last.ticks.saturating_sub(first.ticks) as f64 / ticks_per_second.max(1) as f64;
        Some((
            cpu_seconds / window.as_secs_f64(),
            last.rss_bytes,
            window,
            last.wall,
        ))
    }
}

/// The sampler: runs until the cluster shuts down.
pub(crate) async fn run(shared: Arc<Shared>) {
    let mut shutdown = shared.shutdown.subscribe();
    loop {
        let roots: Vec<(NsName, u32)> = {
            let mut state = shared.lock();
            let running: Vec<(NsName, u32)> = state
                .pods
                .iter_mut()
                .filter_map(|(key, pod)| {
                    let proc = pod.proc.as_mut()?;
                    proc.is_running().then(|| (key.clone(), proc.pid()))
                })
                .collect();
            state
                .usage
                .retain(|key, _| running.iter().any(|(k, _)| k == key));
            running
        };
        let pids: Vec<u32> = roots.iter().map(|(_, pid)| *pid).collect();
        // /proc is blocking file I/O: off the runtime's workers.
        let measured = tokio::task::spawn_blocking(move || measure(&pids))
            .await
            .unwrap_or_default();
        let (at, wall) = (Instant::now(), now_ts());
        {
            let mut state = shared.lock();
            for (key, pid) in roots {
                let Some(&(ticks, rss_bytes)) = measured.get(&pid) else {
                    continue;
                };
                let sample = Sample {
                    at,
                    wall,
                    ticks,
                    rss_bytes,
                };
                state.usage.entry(key).or_default().push(pid, sample);
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(SAMPLE_EVERY) => {}
            _ = stopped(&mut shutdown) => return,
        }
    }
}

/// CPU ticks and resident bytes of each root's process tree, from one pass
/// over /proc. Roots that are gone are missing from the answer.
fn measure(roots: &[u32]) -> HashMap<u32, (u64, u64)> {
    let Ok(all) = procfs::process::all_processes() else {
        return HashMap::new();
    };
    let page_size = procfs::page_size();
    // pid -> (parent, ticks, rss bytes)
    let mut table: HashMap<i32, (i32, u64, u64)> = HashMap::new();
    for stat in all.filter_map(|p| p.and_then(|p| p.stat()).ok()) {
        let reaped = u64::try_from(stat.cutime.saturating_add(stat.cstime)).unwrap_or(0);
        let ticks = stat.utime.saturating_add(stat.stime).saturating_add(reaped);
        table.insert(
            stat.pid,
            (stat.ppid, ticks, stat.rss.saturating_mul(page_size)),
        );
    }
    let mut children: HashMap<i32, Vec<i32>> = HashMap::new();
    for (&pid, &(parent, _, _)) in &table {
        children.entry(parent).or_default().push(pid);
    }
    roots
        .iter()
        .filter_map(|&root| {
            let root = i32::try_from(root).ok()?;
            table.get(&root)?;
            let (mut ticks, mut rss) = (0u64, 0u64);
            let mut stack = vec![root];
            // Each pid has one parent, so the walk visits each once and ends.
            while let Some(pid) = stack.pop() {
                if let Some(&(_, t, r)) = table.get(&pid) {
                    ticks = ticks.saturating_add(t);
                    rss = rss.saturating_add(r);
                }
                stack.extend(children.get(&pid).into_iter().flatten().copied());
            }
            Some((u32::try_from(root).ok()?, (ticks, rss)))
        })
        .collect()
}

/// A GET under `/apis/metrics.k8s.io/`: the version's discovery document,
/// a list or one pod's metrics.
pub(crate) fn route(
    state: &State,
    method: &hyper::Method,
    path: &str,
    label_selector: &str,
    field_selector: &str,
    watch: bool,
) -> Result<Value, ApiError> {
    if !state.metrics_served {
        return Err(ApiError::no_such_path(path));
    }
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let rest = match segments.as_slice() {
        ["apis", GROUP, VERSION, rest @ ..] => rest,
        _ => return Err(ApiError::no_such_path(path)),
    };
    let (namespace, name) = match rest {
        ["pods"] => (None, None),
        ["namespaces", ns, "pods"] => (Some(*ns), None),
        ["namespaces", ns, "pods", name] => (Some(*ns), Some(*name)),
        _ => return Err(ApiError::no_such_path(path)),
    };
    if method != hyper::Method::GET || watch {
        // metrics-server serves get and list only.
        return Err(ApiError::method_not_allowed(method.as_str(), "podmetrics"));
    }
    if let (Some(ns), Some(name)) = (namespace, name) {
        let key = (ns.to_string(), name.to_string());
        return pod_metrics(state, &key)
            .ok_or_else(|| ApiError::not_found(GROUP, "podmetrics", name));
    }
    let labels = Selector::labels(label_selector).map_err(ApiError::bad_request)?;
    let fields = Selector::fields(field_selector).map_err(ApiError::bad_request)?;
    let items: Vec<Value> = state
        .usage
        .keys()
        .filter(|(ns, _)| namespace.is_none_or(|want| want == ns))
        .filter_map(|key| pod_metrics(state, key))
        .filter(|m| labels.matches_labels(m) && fields.matches_fields(m))
        .collect();
    Ok(json!({
        "kind": "PodMetricsList",
        "apiVersion": format!("{GROUP}/{VERSION}"),
        "metadata": {},
        "items": items,
    }))
}

/// One pod's PodMetrics, as metrics-server renders it (CPU in nanocores,
/// memory in KiB), or `None` while it has too few samples.
fn pod_metrics(state: &State, key: &NsName) -> Option<Value> {
    let (cores, bytes, window, at) = state.usage.get(key)?.usage(procfs::ticks_per_second())?;
    let pod = state.store.get(&pods(), &key.0, &key.1)?;
    let labels = pod
        .pointer("/metadata/labels")
        .cloned()
        .unwrap_or_else(|| json!({}));
    let container = pod
        .pointer("/spec/containers/0/name")
        .and_then(Value::as_str)
        .unwrap_or("app");
    let nanocores = (cores * 1e9).round().max(0.0) as u64;
    Some(json!({
        "kind": "PodMetrics",
        "apiVersion": format!("{GROUP}/{VERSION}"),
        "metadata": {
            "name": key.1,
            "namespace": key.0,
            "labels": labels,
            "creationTimestamp": serde_json::to_value(Time(now_ts())).unwrap_or(Value::Null),
        },
        "timestamp": serde_json::to_value(Time(at)).unwrap_or(Value::Null),
        "window": go_duration(window),
        "containers": [{
            "name": container,
            "usage": {"cpu": format!("{nanocores}n"), "memory": format!("{}Ki", bytes / 1024)},
        }],
    }))
}

/// `1.5s`, `2s`: a duration as Go's `time.Duration` prints it (to the ms).
fn go_duration(window: Duration) -> String {
    let millis = window.as_millis();
    let text = format!("{}.{:03}", millis / 1000, millis % 1000);
    format!("{}s", text.trim_end_matches('0').trim_end_matches('.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(at: Instant, ticks: u64, rss_bytes: u64) -> Sample {
        Sample {
            at,
            wall: Timestamp::UNIX_EPOCH,
            ticks,
            rss_bytes,
        }
    }

    #[test]
    fn the_rate_is_over_the_kept_window_and_a_restart_starts_over() {
        let t0 = Instant::now();
        let mut pod = PodSamples::default();
        pod.push(7, sample(t0, 0, 1));
        pod.push(7, sample(t0 + Duration::from_millis(500), 50, 2));
        assert!(pod.usage(100).is_none(), "less than MIN_WINDOW of samples");
        pod.push(7, sample(t0 + Duration::from_secs(1), 100, 3));
        let (cores, bytes, window, _) = pod.usage(100).expect("usage");
        assert!((cores - 1.0).abs() < 1e-9, "{cores}");
        assert_eq!((bytes, window), (3, Duration::from_secs(1)));

        // Four seconds on at half a core: the first samples age out.
        for i in 1..=8u64 {
            pod.push(
                7,
                sample(t0 + Duration::from_millis(1000 + 500 * i), 100 + 25 * i, 4),
            );
        }
        let (cores, _, window, _) = pod.usage(100).expect("usage");
        assert!((cores - 0.5).abs() < 1e-9, "{cores}");
        assert_eq!(window, WINDOW);

        // A new process: nothing until it has its own window.
        pod.push(8, sample(t0 + Duration::from_secs(6), 3, 4));
        assert!(pod.usage(100).is_none());
    }

    #[test]
    fn windows_print_as_go_durations() {
        assert_eq!(go_duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(go_duration(Duration::from_secs(2)), "2s");
        assert_eq!(go_duration(Duration::from_millis(2005)), "2.005s");
    }

    #[test]
    fn our_own_process_tree_is_measured() {
        let me = std::process::id();
        let measured = measure(&[me, u32::MAX]);
        let (_, rss) = measured.get(&me).copied().expect("this process");
        assert!(rss > 0);
        assert!(!measured.contains_key(&u32::MAX));
    }
}
