//! What every benchmark's results share: the machine they ran on, the
//! statistics over repeated measurements, the measuring loop, the summary
//! table and the JSON file.

use std::fmt::Write as _;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

/// Where a benchmark ran.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Machine {
    pub nproc: usize,
    pub cpu_model: String,
    pub kernel: String,
    /// RFC 3339, UTC.
    pub date: String,
}

impl Machine {
    pub fn detect() -> Self {
        let nproc = std::thread::available_parallelism().map_or(0, usize::from);
        let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|text| cpu_model(&text))
            .unwrap_or_else(|| "unknown".into());
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|_| "unknown".into());
        let date = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
        Self {
            nproc,
            cpu_model,
            kernel,
            date,
        }
    }

    /// [`Machine::detect`], printed on one line under a result table.
    pub fn detect_and_print() -> Self {
        let machine = Self::detect();
        println!(
            "machine: {} cpus, {}, kernel {}, {}",
            machine.nproc, machine.cpu_model, machine.kernel, machine.date
        );
        machine
    }

    /// `2 × <cpu>, Linux <kernel>, <day>`: the first line of a README block.
    pub fn line(&self) -> String {
        format!(
            "{} × {}, Linux {}, {}",
            self.nproc,
            self.cpu_model,
            self.kernel,
            self.date.get(..10).unwrap_or(&self.date)
        )
    }
}

/// The `model name` of the first CPU in `/proc/cpuinfo`.
pub(crate) fn cpu_model(cpuinfo: &str) -> Option<String> {
    cpuinfo.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        let key = key.trim();
        (key == "model name" || key == "Model" || key == "cpu model")
            .then(|| value.trim().to_owned())
            .filter(|v| !v.is_empty())
    })
}

/// Microseconds since the Unix epoch on the wall clock.
pub(crate) fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// `to − from` in milliseconds, negative when `to` is earlier.
pub(crate) fn micros_between(from: u64, to: u64) -> f64 {
    (i128::from(to) - i128::from(from)) as f64 / 1000.0
}

/// Nearest-rank percentile of ascending `sorted` values: the value at rank
/// `ceil(p/100 · n)` (at least 1). `None` when there are no values.
pub(crate) fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    let n = sorted.len();
    if n == 0 {
        return None;
    }
    let rank = (p.clamp(0.0, 100.0) / 100.0 * n as f64).ceil() as usize;
    sorted.get(rank.clamp(1, n) - 1).copied()
}

/// The median; the mean of the two middle values for an even count.
/// Non-finite values are ignored.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    })
}

/// Distribution of one metric, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub(crate) struct Summary {
    pub n: usize,
    pub median: f64,
    pub p90: f64,
    pub p99: f64,
    pub min: f64,
    pub max: f64,
    pub mean: f64,
}

/// Summary of `values` (in any order); `None` when empty. NaNs are ignored.
pub(crate) fn summarize(values: &[f64]) -> Option<Summary> {
    let mut sorted: Vec<f64> = values.iter().copied().filter(|v| !v.is_nan()).collect();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    Some(Summary {
        n,
        median: percentile(&sorted, 50.0)?,
        p90: percentile(&sorted, 90.0)?,
        p99: percentile(&sorted, 99.0)?,
        min: *sorted.first()?,
        max: *sorted.last()?,
        mean: sorted.iter().sum::<f64>() / n as f64,
    })
}

/// A metric of one kind of measurement: its name and how to read it.
pub(crate) type Metric<T> = (&'static str, fn(&T) -> Option<f64>);

/// The summary of each metric over the good `items`.
pub(crate) fn summaries<T, const N: usize>(
    metrics: &[Metric<T>; N],
    good: &[&T],
) -> [(&'static str, Option<Summary>); N] {
    metrics.map(|(name, get)| {
        let values: Vec<f64> = good.iter().filter_map(|item| get(item)).collect();
        (name, summarize(&values))
    })
}

/// The summary table: one row per metric, `decimals` digits, with or
/// without a p99 column.
pub(crate) fn render(rows: &[(&str, Option<Summary>)], decimals: usize, p99: bool) -> String {
    let mut out = String::new();
    let p99_head = if p99 {
        format!(" {:>9}", "p99")
    } else {
        String::new()
    };
    let _ = writeln!(
        out,
        "{:<18} {:>5} {:>9} {:>9}{p99_head} {:>9} {:>9} {:>9}",
        "metric (ms)", "n", "median", "p90", "min", "max", "mean"
    );
    for (name, summary) in rows {
        let Some(s) = summary else {
            let _ = writeln!(out, "{name:<18} {:>5} (no data)", 0);
            continue;
        };
        let d = decimals;
        let p99 = if p99 {
            format!(" {:>9.d$}", s.p99)
        } else {
            String::new()
        };
        let _ = writeln!(
            out,
            "{name:<18} {:>5} {:>9.d$} {:>9.d$}{p99} {:>9.d$} {:>9.d$} {:>9.d$}",
            s.n, s.median, s.p90, s.min, s.max, s.mean
        );
    }
    out
}

/// Runs `measure` for 1..=`count`, printing each result's table row as it
/// comes. Stops at the first error, returned as the reason the run was cut
/// short, with the results so far.
pub(crate) async fn measure_each<T, Fut>(
    count: u32,
    mut measure: impl FnMut(u32) -> Fut,
    row: impl Fn(&T) -> String,
) -> (Vec<T>, Option<String>)
where
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    let mut results = Vec::new();
    for n in 1..=count {
        match measure(n).await {
            Ok(result) => {
                println!("{}", row(&result));
                results.push(result);
            }
            Err(err) => return (results, Some(format!("{err:#}"))),
        }
    }
    (results, None)
}

/// The `--json` document of a repeated measurement; `items` is flattened
/// in last, e.g. `{"cycles": [...]}`.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Output<S, R> {
    pub benchmark: &'static str,
    pub setup: S,
    pub machine: Machine,
    /// Set when the run stopped early.
    pub aborted: Option<String>,
    pub summary: R,
    #[serde(flatten)]
    pub items: serde_json::Value,
}

impl<S: Serialize, R: Serialize> Output<S, R> {
    /// Writes the document to `path`, if there is one, and says so.
    pub fn write(&self, path: Option<&Path>) -> anyhow::Result<()> {
        if let Some(path) = path {
            write_json(path, self)?;
            println!("results written to {}", path.display());
        }
        Ok(())
    }
}

/// Writes `value` as pretty JSON, creating the parent directory.
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> anyhow::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut text = serde_json::to_string_pretty(value).context("serializing the results")?;
    text.push('\n');
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let sorted: Vec<f64> = (1..=10).map(f64::from).collect();
        assert_eq!(percentile(&sorted, 50.0), Some(5.0));
        assert_eq!(percentile(&sorted, 90.0), Some(9.0));
        assert_eq!(percentile(&sorted, 91.0), Some(10.0));
        assert_eq!(percentile(&sorted, 99.0), Some(10.0));
        assert_eq!(percentile(&sorted, 100.0), Some(10.0));
        assert_eq!(percentile(&sorted, 0.0), Some(1.0));
        assert_eq!(percentile(&[7.0], 99.0), Some(7.0));
        assert_eq!(percentile(&[], 50.0), None);
        // n = 20: median is rank 10, p90 rank 18, p99 rank 20.
        let twenty: Vec<f64> = (1..=20).map(f64::from).collect();
        assert_eq!(percentile(&twenty, 50.0), Some(10.0));
        assert_eq!(percentile(&twenty, 90.0), Some(18.0));
        assert_eq!(percentile(&twenty, 99.0), Some(20.0));
    }

    #[test]
    fn summary_sorts_and_ignores_nan() {
        let s = summarize(&[30.0, 10.0, f64::NAN, 20.0, 40.0]).expect("values");
        assert_eq!(s.n, 4);
        assert_eq!(s.median, 20.0);
        assert_eq!(s.p90, 40.0);
        assert_eq!(s.p99, 40.0);
        assert_eq!(s.min, 10.0);
        assert_eq!(s.max, 40.0);
        assert_eq!(s.mean, 25.0);
        assert_eq!(summarize(&[]), None);
        assert_eq!(summarize(&[f64::NAN]), None);
    }

    #[test]
    fn medians() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0]), Some(3.0));
        assert_eq!(median(&[5.0, 1.0, 3.0]), Some(3.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
    }

    #[test]
    fn reads_the_cpu_model() {
        let cpuinfo = "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) CPU @ 2.20GHz\n";
        assert_eq!(
            cpu_model(cpuinfo).as_deref(),
            Some("Intel(R) Xeon(R) CPU @ 2.20GHz")
        );
        assert_eq!(cpu_model("processor : 0\n"), None);
    }
}
