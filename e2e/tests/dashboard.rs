//! The Grafana dashboard (`deploy/grafana/rouse.json`) and the scrape
//! config (`deploy/prometheus/prometheus.yml`) against a real Prometheus.
//!
//! A dashboard whose queries name a metric wrongly (a missing `_total`, a
//! histogram without `_bucket`) imports fine and shows "No data" forever,
//! so the test reads the shipped file and runs every panel's queries and
//! the annotation through Prometheus's HTTP API, while a real cluster is
//! under load that gives every panel something to show: a cold start,
//! warm traffic, unrouted 404s, and a service that cannot start (backend
//! errors, 503s after its hold timeout).
//!
//! Grafana's variables are put in as Grafana would with `service` = All:
//! `$service` → `.*`, `$__rate_interval` → 30s, `$__interval` → 5s. The
//! queries are range queries over the test's span, as the time-series
//! panels ask, and count as data only with a finite value somewhere (a
//! quantile over no traffic is NaN).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::Method;
use rouse_e2e::bins::workspace_root;
use rouse_e2e::prometheus::{has_finite_value, scrape_config, Prometheus};
use rouse_e2e::{Cluster, Service};
use serde_json::Value;

const ECHO: &str = "echo.localhost";
const BROKEN: &str = "broken.localhost";
/// How long one panel may take to show data.
const PANEL_DEADLINE: Duration = Duration::from_secs(60);
/// Upper bound of the background load, whatever happens to the test.
const LOAD_LIMIT: Duration = Duration::from_secs(300);

fn read(path: &str) -> String {
    let path = workspace_root().join(path);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Grafana's variables, as it puts them in with `service` = All.
fn substitute(expr: &str) -> String {
    expr.replace("${service}", ".*")
        .replace("$service", ".*")
        .replace("$__rate_interval", "30s")
        .replace("$__interval", "5s")
        .replace("$__range", "1h")
}

/// Every query of the dashboard, named for the failure message: each
/// panel's targets (rows' nested panels too) and each Prometheus
/// annotation.
fn queries(dashboard: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut panels: Vec<&Value> = dashboard["panels"]
        .as_array()
        .into_iter()
        .flatten()
        .collect();
    while let Some(panel) = panels.pop() {
        panels.extend(panel["panels"].as_array().into_iter().flatten());
        for target in panel["targets"].as_array().into_iter().flatten() {
            let title = format!(
                "panel {:?} target {}",
                panel["title"].as_str().unwrap_or("?"),
                target["refId"].as_str().unwrap_or("?")
            );
            out.push((title, target["expr"].as_str().unwrap_or("").to_string()));
        }
    }
    for annotation in dashboard["annotations"]["list"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|a| a["datasource"]["type"] == "prometheus")
    {
        let title = format!(
            "annotation {:?}",
            annotation["name"].as_str().unwrap_or("?")
        );
        out.push((title, annotation["expr"].as_str().unwrap_or("").to_string()));
    }
    out
}

/// What makes the file an importable dashboard on any Grafana: its schema,
/// the datasource variable every query goes through, and the `service`
/// variable.
fn check_shape(dashboard: &Value) {
    let schema = dashboard["schemaVersion"].as_u64().unwrap_or(0);
    assert!((36..=41).contains(&schema), "schemaVersion {schema}");
    let variables = dashboard["templating"]["list"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let variable = |name: &str| {
        variables
            .iter()
            .find(|v| v["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no template variable {name}"))
    };
    let ds = variable("DS_PROMETHEUS");
    assert_eq!(ds["type"], "datasource");
    assert_eq!(ds["query"], "prometheus");
    let service = variable("service");
    assert_eq!(
        service["query"]["query"],
        "label_values(rouse_requests_total, service)"
    );
    assert_eq!(service["allValue"], ".*");
    let mut panels: Vec<&Value> = dashboard["panels"]
        .as_array()
        .into_iter()
        .flatten()
        .collect();
    let mut ids = std::collections::HashSet::new();
    while let Some(panel) = panels.pop() {
        panels.extend(panel["panels"].as_array().into_iter().flatten());
        let title = panel["title"].as_str().unwrap_or("?");
        assert!(
            ids.insert(panel["id"].as_u64()),
            "duplicate panel id: {title}"
        );
        if panel["type"] == "row" {
            continue;
        }
        assert_eq!(
            panel["datasource"]["uid"], "${DS_PROMETHEUS}",
            "panel {title:?} must use the datasource variable"
        );
        let targets = panel["targets"].as_array().cloned().unwrap_or_default();
        assert!(!targets.is_empty(), "panel {title:?} has no query");
        for target in targets {
            let expr = target["expr"].as_str().unwrap_or("");
            assert!(
                expr.contains("$service"),
                "panel {title:?} ignores the service variable: {expr}"
            );
        }
    }
}

/// Warm requests, unrouted ones (404) and requests for the service that
/// cannot start (503 after its hold timeout), until `stop`; counts by code.
async fn load(
    client: reqwest::Client,
    proxy: std::net::SocketAddr,
    stop: Arc<AtomicBool>,
) -> Vec<u16> {
    let started = Instant::now();
    let mut codes = Vec::new();
    let broken = {
        let (client, stop) = (client.clone(), Arc::clone(&stop));
        tokio::spawn(async move {
            let mut codes = Vec::new();
            while !stop.load(Ordering::SeqCst) && started.elapsed() < LOAD_LIMIT {
                if let Ok(resp) =
                    rouse_e2e::request(&client, Method::GET, proxy, BROKEN, "/", None).await
                {
                    codes.push(resp.status);
                }
            }
            codes
        })
    };
    let mut i = 0u64;
    while !stop.load(Ordering::SeqCst) && started.elapsed() < LOAD_LIMIT {
        i += 1;
        let (host, path) = if i.is_multiple_of(5) {
            ("nowhere.localhost", "/")
        } else {
            (ECHO, "/sleep/20")
        };
        if let Ok(resp) = rouse_e2e::request(&client, Method::GET, proxy, host, path, None).await {
            codes.push(resp.status);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    codes.extend(broken.await.unwrap_or_default());
    codes
}

/// Every panel of the shipped dashboard shows data from a real Prometheus
/// scraping a proxy and a controller under load; the scrape config is the
/// shipped one; the `service` variable lists the services.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_panel_has_data_from_a_real_prometheus() {
    let dashboard: Value = serde_json::from_str(&read("deploy/grafana/rouse.json"))
        .unwrap_or_else(|e| panic!("deploy/grafana/rouse.json: {e}"));
    check_shape(&dashboard);
    let queries = queries(&dashboard);
    assert!(queries.len() >= 10, "too few queries: {queries:?}");

    let test_start = Instant::now();
    let cluster = Cluster::start(vec![
        Service::new("echo", ECHO),
        Service::new("broken", BROKEN)
            .command(&["/nonexistent/rouse-dashboard-test"])
            .hold_timeout("1s"),
    ])
    .await;
    let proxies: Vec<_> = cluster.proxies.iter().map(|p| p.admin).collect();
    let config = scrape_config(
        &read("deploy/prometheus/prometheus.yml"),
        &proxies,
        cluster.controller_admin(),
    )
    .unwrap_or_else(|e| panic!("{e:#}"));
    let prometheus = match Prometheus::start(cluster.dir(), &config).await {
        Ok(p) => p,
        Err(e) => cluster.fail(&format!("{e:#}")).await,
    };
    let prometheus = &prometheus;

    // Both jobs up, and the zero-valued series scraped before anything
    // happens: the first increments must count as changes.
    cluster
        .wait_until(
            "prometheus scrapes the proxy and the controller",
            Duration::from_secs(60),
            || async move {
                let up = prometheus.query("up == 1").await.unwrap_or_default();
                let mut scraped = up.len() == 2;
                for zero in [
                    "rouse_scale_events_total",
                    "rouse_cold_start_wait_seconds_count",
                ] {
                    scraped &= !prometheus.query(zero).await.unwrap_or_default().is_empty();
                }
                scraped
            },
        )
        .await;

    let cold = cluster.get_ok(ECHO, "/").await;
    assert!(
        cold.cold_start(),
        "the first request must be a cold start: {cold}"
    );
    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn(load(
        cluster.client.clone(),
        cluster.proxy_addr(0),
        Arc::clone(&stop),
    ));

    let mut failures = Vec::new();
    for (title, expr) in &queries {
        let expr = substitute(expr);
        let expr = &expr;
        let shown = rouse_stack::poll(PANEL_DEADLINE, || async move {
            let range = test_start.elapsed() + Duration::from_secs(5);
            let series = prometheus
                .query_range(expr, range, Duration::from_secs(1))
                .await
                .ok()?;
            has_finite_value(&series).then_some(series.len())
        })
        .await;
        match shown {
            Some(series) => eprintln!("{title}: {series} series"),
            None => {
                let last = prometheus
                    .query(expr)
                    .await
                    .map(|r| Value::Array(r).to_string())
                    .unwrap_or_else(|e| format!("{e:#}"));
                failures.push(format!("{title}: no data for {expr} (now: {last})"));
            }
        }
    }
    // The codes panel splits by code: the 404s and 503s show as their own
    // series, not only in the total.
    let by_code = queries
        .iter()
        .find(|(title, expr)| title.contains("and code") && expr.contains("code"))
        .map(|(_, expr)| substitute(expr))
        .unwrap_or_else(|| panic!("no panel of requests by service and code"));
    let by_code = &by_code;
    let codes_shown = rouse_stack::poll(PANEL_DEADLINE, || async move {
        let series = prometheus
            .query_range(by_code, test_start.elapsed(), Duration::from_secs(1))
            .await
            .ok()?;
        let codes: Vec<&str> = series
            .iter()
            .filter_map(|s| s["metric"]["code"].as_str())
            .collect();
        ["200", "404", "503"]
            .iter()
            .all(|c| codes.contains(c))
            .then_some(())
    })
    .await;
    if codes_shown.is_none() {
        failures.push(format!(
            "requests by code: no 200, 404 and 503 series from {by_code}"
        ));
    }
    let services = prometheus
        .label_values("service", "rouse_requests_total")
        .await
        .unwrap_or_default();
    stop.store(true, Ordering::SeqCst);
    let codes = load.await.unwrap_or_default();

    if !failures.is_empty() {
        cluster
            .fail(&format!(
                "{} of {} dashboard queries show no data:\n{}\n\nprometheus:\n{}",
                failures.len(),
                queries.len(),
                failures.join("\n"),
                prometheus.logs()
            ))
            .await;
    }
    for service in ["echo", "broken"] {
        assert!(
            services.iter().any(|s| s == service),
            "label_values(rouse_requests_total, service) lacks {service}: {services:?}"
        );
    }
    for code in [200, 404, 503] {
        assert!(
            codes.contains(&code),
            "the load should have seen a {code}: {codes:?}"
        );
    }
}
