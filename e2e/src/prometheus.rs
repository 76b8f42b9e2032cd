//! A real Prometheus (Debian's `prometheus`, or `$PROMETHEUS_BIN`) scraping
//! one [`Cluster`](crate::Cluster), for the dashboard test: what the
//! dashboard shows is only as good as what a real Prometheus makes of the
//! metrics, so its queries are run there, not parsed by hand.
//!
//! The scrape config is the repository's `deploy/prometheus/prometheus.yml`
//! with the cluster's admin addresses and a 1 s interval put in, so a
//! broken shipped config fails the test too. Prometheus listens on a free
//! 127.0.0.1 port with its TSDB in a temp dir, and is killed on drop
//! (it is a [`Proc`](rouse_stack::Proc)).

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use serde_json::Value;

use rouse_stack::{free_addr, Proc};

/// The shipped config's placeholders: the default admin ports.
const PROXY_TARGET: &str = "127.0.0.1:9090";
const CONTROLLER_TARGET: &str = "127.0.0.1:9091";

/// The Prometheus binary: `$PROMETHEUS_BIN`, else `/usr/bin/prometheus`.
pub fn prometheus_bin() -> PathBuf {
    std::env::var_os("PROMETHEUS_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/prometheus"))
}

/// `deploy/prometheus/prometheus.yml` scraping `proxies` and `controller`
/// every second instead of the defaults' addresses every 5 s. Fails when
/// the file no longer has what is replaced, so the two cannot drift apart.
pub fn scrape_config(
    shipped: &str,
    proxies: &[SocketAddr],
    controller: SocketAddr,
) -> anyhow::Result<String> {
    for needle in [PROXY_TARGET, CONTROLLER_TARGET, "scrape_interval: 5s"] {
        anyhow::ensure!(
            shipped.contains(needle),
            "deploy/prometheus/prometheus.yml no longer contains {needle:?}"
        );
    }
    let proxies: Vec<String> = proxies.iter().map(|a| a.to_string()).collect();
    Ok(shipped
        .replace("scrape_interval: 5s", "scrape_interval: 1s")
        .replace("evaluation_interval: 5s", "evaluation_interval: 1s")
        .replace(
            &format!("[\"{PROXY_TARGET}\"]"),
            &format!("[\"{}\"]", proxies.join("\", \"")),
        )
        .replace(CONTROLLER_TARGET, &controller.to_string()))
}

/// A running Prometheus; killed on drop.
pub struct Prometheus {
    pub addr: SocketAddr,
    proc: Proc,
    client: reqwest::Client,
}

impl Prometheus {
    /// Starts Prometheus with `config` (YAML text) in `dir` and waits until
    /// `/-/ready` answers 200.
    pub async fn start(dir: &Path, config: &str) -> anyhow::Result<Prometheus> {
        let bin = prometheus_bin();
        anyhow::ensure!(
            bin.exists(),
            "{} not found: install Debian's prometheus or set PROMETHEUS_BIN",
            bin.display()
        );
        let config_path = dir.join("prometheus.yml");
        std::fs::write(&config_path, config)
            .with_context(|| format!("writing {}", config_path.display()))?;
        let data = dir.join("prometheus-data");
        let addr = free_addr();
        let args: Vec<OsString> = vec![
            format!("--config.file={}", config_path.display()).into(),
            format!("--storage.tsdb.path={}", data.display()).into(),
            format!("--web.listen-address={addr}").into(),
            "--log.level=warn".into(),
        ];
        let mut proc = Proc::try_spawn(
            "prometheus",
            &bin,
            &args,
            &BTreeMap::new(),
            &dir.join("prometheus.log"),
        )?;
        let ready =
            rouse_stack::wait_http_ok(addr, "/-/ready", Duration::from_secs(60), Some(&mut proc))
                .await;
        if let Err(err) = ready {
            anyhow::bail!(
                "prometheus did not get ready: {err:#}\n{}",
                rouse_stack::tail(&proc.logs(), 40)
            );
        }
        let prometheus = Prometheus {
            addr,
            proc,
            client: crate::http::client(),
        };
        Ok(prometheus)
    }

    pub fn logs(&self) -> String {
        rouse_stack::tail(&self.proc.logs(), 40)
    }

    /// `GET /api/v1/<path>` with `params`; the `data` of a `success` answer.
    pub async fn api(&self, path: &str, params: &[(&str, String)]) -> anyhow::Result<Value> {
        let url = format!("http://{}/api/v1/{path}", self.addr);
        let url = reqwest::Url::parse_with_params(&url, params)
            .with_context(|| format!("{url} {params:?}"))?;
        let response = self.client.get(url.clone()).send().await?;
        let status = response.status();
        let body: Value = response
            .json()
            .await
            .with_context(|| format!("{url}: {status}, not JSON"))?;
        anyhow::ensure!(
            body["status"] == "success",
            "{url} {params:?}: {status} {body}"
        );
        Ok(body["data"].clone())
    }

    /// The series of an instant query at now.
    pub async fn query(&self, expr: &str) -> anyhow::Result<Vec<Value>> {
        let data = self.api("query", &[("query", expr.to_string())]).await?;
        Ok(data["result"].as_array().cloned().unwrap_or_default())
    }

    /// The series of a range query over the last `range` with `step`, as
    /// Grafana's time-series panels ask.
    pub async fn query_range(
        &self,
        expr: &str,
        range: Duration,
        step: Duration,
    ) -> anyhow::Result<Vec<Value>> {
        let end = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .context("clock before 1970")?
            .as_secs_f64();
        let params = [
            ("query", expr.to_string()),
            ("start", format!("{:.3}", end - range.as_secs_f64())),
            ("end", format!("{end:.3}")),
            ("step", format!("{}s", step.as_secs().max(1))),
        ];
        let data = self.api("query_range", &params).await?;
        Ok(data["result"].as_array().cloned().unwrap_or_default())
    }

    /// The values of label `name` on the series of `matching`, as Grafana's
    /// `label_values(matching, name)` asks.
    pub async fn label_values(&self, name: &str, matching: &str) -> anyhow::Result<Vec<String>> {
        let data = self
            .api(
                &format!("label/{name}/values"),
                &[("match[]", matching.to_string())],
            )
            .await?;
        Ok(data
            .as_array()
            .map(|values| {
                values
                    .iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default())
    }
}

/// Whether any point of any series (instant `value` or range `values`) is a
/// number: a histogram quantile over no traffic is `NaN`, which is no data.
pub fn has_finite_value(series: &[Value]) -> bool {
    let finite = |point: &Value| {
        point[1]
            .as_str()
            .and_then(|v| v.parse::<f64>().ok())
            .is_some_and(f64::is_finite)
    };
    series.iter().any(|s| {
        finite(&s["value"])
            || s["values"]
                .as_array()
                .is_some_and(|points| points.iter().any(finite))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_config_gets_the_cluster_addresses() {
        let shipped = "global:\n  scrape_interval: 5s\n  evaluation_interval: 5s\n\
            scrape_configs:\n  - job_name: rouse-proxy\n    static_configs:\n      - targets: [\"127.0.0.1:9090\"]\n\
            \x20 - job_name: rouse-controller\n    static_configs:\n      - targets: [\"127.0.0.1:9091\"]\n";
        let proxies: Vec<SocketAddr> = vec![
            SocketAddr::from(([127, 0, 0, 1], 1001)),
            SocketAddr::from(([127, 0, 0, 1], 1002)),
        ];
        let config = scrape_config(shipped, &proxies, SocketAddr::from(([127, 0, 0, 1], 2001)))
            .unwrap_or_default();
        assert!(
            config.contains("[\"127.0.0.1:1001\", \"127.0.0.1:1002\"]"),
            "{config}"
        );
        assert!(config.contains("[\"127.0.0.1:2001\"]"), "{config}");
        assert!(config.contains("scrape_interval: 1s"), "{config}");
        assert!(scrape_config("nothing", &proxies, proxies[0]).is_err());
    }

    #[test]
    fn nan_is_no_data() {
        let nan = serde_json::json!([{"metric": {}, "values": [[1, "NaN"], [2, "NaN"]]}]);
        let some = serde_json::json!([{"metric": {}, "values": [[1, "NaN"], [2, "0.5"]]}]);
        let instant = serde_json::json!([{"metric": {}, "value": [1, "0"]}]);
        assert!(!has_finite_value(nan.as_array().map_or(&[], |v| v)));
        assert!(has_finite_value(some.as_array().map_or(&[], |v| v)));
        assert!(has_finite_value(instant.as_array().map_or(&[], |v| v)));
    }
}
