//! `rouse status [NAME...] [--watch]`: every service as the controller sees
//! it, from `GET /api/v1/services`.
//!
//! The controller's document is read leniently (fields it lacks default,
//! fields it adds are ignored) and turned into [`Row`]s: the table's
//! columns, and the stable JSON of `--output json`. `deploy --wait` and
//! `remove --wait` poll through [`fetch`] too.

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::connect::{Controller, Endpoints};
use crate::exit::{fail, Code, Outcome};
use crate::output::{self, Format};
use crate::table::{self, number, text};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Only these services (all when none is named).
    pub names: Vec<String>,
    /// Redraw every --interval until Ctrl-C.
    #[arg(long, short)]
    pub watch: bool,
    /// Time between redraws with --watch.
    #[arg(long, default_value = "2s", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub interval: Duration,
}

/// One service in the controller's document (only what the CLI shows).
#[derive(Debug, Clone, Deserialize)]
struct ServiceDoc {
    name: String,
    #[serde(default)]
    backend: String,
    #[serde(default)]
    desired: u32,
    #[serde(default)]
    ready: u32,
    #[serde(default)]
    held: u64,
    #[serde(default)]
    in_flight: u64,
    #[serde(default)]
    rps: Option<f64>,
    /// A pin (`rouse scale --pin`): a count, or an object with `replicas`.
    #[serde(default)]
    pinned: serde_json::Value,
    #[serde(default)]
    proxies: u64,
    #[serde(default)]
    replicas: Vec<ReplicaDoc>,
    #[serde(default)]
    last_scale: Option<ScaleEvent>,
    #[serde(default)]
    last_error: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
struct ReplicaDoc {
    #[serde(default)]
    state: String,
}

#[derive(Debug, Clone, Deserialize)]
struct Listing {
    services: Vec<ServiceDoc>,
}

/// A scale event as the status shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScaleEvent {
    pub from: u32,
    pub to: u32,
    pub reason: String,
    pub at_ms: u64,
}

/// One service, as `rouse status -o json` prints it (stable).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Row {
    pub name: String,
    pub backend: String,
    pub desired: u32,
    pub ready: u32,
    /// Replicas started but not ready yet.
    pub starting: u32,
    pub held: u64,
    pub in_flight: u64,
    /// Arrivals per second over the proxies' last reports; `null` when the
    /// controller does not report it.
    pub rps: Option<f64>,
    /// The pinned replica count, `null` when not pinned (or not reported).
    pub pinned: Option<u32>,
    pub proxies: u64,
    pub last_scale: Option<ScaleEvent>,
    pub last_error: Option<String>,
}

impl From<ServiceDoc> for Row {
    fn from(doc: ServiceDoc) -> Self {
        let pinned = match &doc.pinned {
            serde_json::Value::Number(n) => n.as_u64(),
            serde_json::Value::Object(o) => o.get("replicas").and_then(|r| r.as_u64()),
            _ => None,
        }
        .and_then(|n| u32::try_from(n).ok());
        let starting = doc
            .replicas
            .iter()
            .filter(|r| r.state == "starting")
            .count() as u32;
        Row {
            name: doc.name,
            backend: doc.backend,
            desired: doc.desired,
            ready: doc.ready,
            starting,
            held: doc.held,
            in_flight: doc.in_flight,
            rps: doc.rps,
            pinned,
            proxies: doc.proxies,
            last_scale: doc.last_scale,
            last_error: doc.last_error,
        }
    }
}

#[derive(Serialize)]
struct Document<'a> {
    services: &'a [Row],
}

/// Every service the controller lists, sorted by name.
pub async fn fetch(controller: &Controller) -> Outcome<Vec<Row>> {
    let doc = controller.get_json("/api/v1/services").await?;
    let listing: Listing = serde_json::from_value(doc).map_err(|e| {
        fail(
            Code::Unreachable,
            format!(
                "{}/api/v1/services: not a service listing: {e}",
                controller.base
            ),
        )
    })?;
    let mut rows: Vec<Row> = listing.services.into_iter().map(Row::from).collect();
    rows.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(rows)
}

pub async fn run(args: &Args, endpoints: &Endpoints, format: Format) -> Outcome {
    if !args.watch {
        let rows = select(fetch(&endpoints.controller).await?, &args.names)?;
        return show(&rows, format);
    }
    watch(args, endpoints, format).await
}

/// Redraws until Ctrl-C. A failed fetch is shown in place of the table and
/// tried again next round: a watcher outlives a controller restart.
async fn watch(args: &Args, endpoints: &Endpoints, format: Format) -> Outcome {
    let terminal = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let mut ticker = tokio::time::interval(args.interval.max(Duration::from_millis(100)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        tokio::select! {
            _ = &mut ctrl_c => return Ok(()),
            _ = ticker.tick() => {}
        }
        let fetched = fetch(&endpoints.controller)
            .await
            .and_then(|rows| select(rows, &args.names));
        match (format, fetched) {
            (Format::Json, Ok(rows)) => output::json_line(&Document { services: &rows })?,
            (Format::Json, Err(err)) => {
                output::json_line(&serde_json::json!({ "error": err.to_string() }))?
            }
            (Format::Table, fetched) => {
                let body = match fetched {
                    Ok(rows) => render(&rows, now_ms()),
                    Err(err) => format!("error: {err}\n"),
                };
                let stamp = humantime::format_rfc3339_seconds(SystemTime::now());
                // On a terminal the table is redrawn in place; in a pipe
                // each round follows the last.
                let clear = if terminal { "\x1b[H\x1b[2J" } else { "" };
                output::print(&format!(
                    "{clear}every {} at {stamp} (Ctrl-C to stop)\n\n{body}\n",
                    humantime::format_duration(args.interval)
                ))?;
            }
        }
    }
}

/// The rows named in `names` (all when empty); naming an unknown service is
/// a usage error that lists the known ones.
fn select(rows: Vec<Row>, names: &[String]) -> Outcome<Vec<Row>> {
    if names.is_empty() {
        return Ok(rows);
    }
    let known: BTreeSet<&str> = rows.iter().map(|r| r.name.as_str()).collect();
    let unknown: Vec<&str> = names
        .iter()
        .map(String::as_str)
        .filter(|n| !known.contains(n))
        .collect();
    if !unknown.is_empty() {
        let listed = if known.is_empty() {
            "none".to_string()
        } else {
            known.into_iter().collect::<Vec<_>>().join(", ")
        };
        return Err(fail(
            Code::Usage,
            format!(
                "the controller has no service named {} (it has: {listed})",
                unknown.join(", ")
            ),
        ));
    }
    Ok(rows
        .into_iter()
        .filter(|r| names.contains(&r.name))
        .collect())
}

fn show(rows: &[Row], format: Format) -> Outcome {
    match format {
        Format::Json => output::json(&Document { services: rows }),
        Format::Table => output::print(&render(rows, now_ms())),
    }
}

/// The table, then one line per service with a backend error.
pub fn render(rows: &[Row], now_ms: u64) -> String {
    let columns = [
        text("NAME"),
        text("BACKEND"),
        number("DESIRED"),
        number("READY"),
        text("PINNED"),
        number("HELD"),
        number("IN-FLIGHT"),
        number("RPS"),
        text("LAST SCALE"),
    ];
    let cells = rows
        .iter()
        .map(|row| {
            vec![
                row.name.clone(),
                row.backend.clone(),
                row.desired.to_string(),
                ready_cell(row),
                table::or_dash(row.pinned),
                row.held.to_string(),
                row.in_flight.to_string(),
                table::or_dash(row.rps.map(|r| format!("{r:.1}"))),
                table::or_dash(row.last_scale.as_ref().map(|e| scale_cell(e, now_ms))),
            ]
        })
        .collect();
    let mut out = table::render(&columns, cells);
    for row in rows {
        if let Some(error) = &row.last_error {
            out.push_str(&format!("{}: error: {error}\n", row.name));
        }
    }
    out
}

/// `2`, or `1 (+1 starting)` while replicas come up.
fn ready_cell(row: &Row) -> String {
    if row.starting == 0 {
        row.ready.to_string()
    } else {
        format!("{} (+{} starting)", row.ready, row.starting)
    }
}

/// `0→1 wake, 12s ago`.
fn scale_cell(event: &ScaleEvent, now_ms: u64) -> String {
    format!(
        "{}→{} {}, {}",
        event.from,
        event.to,
        event.reason,
        ago(now_ms.saturating_sub(event.at_ms))
    )
}

/// `3s ago`, `4m ago`, `2h ago`, `5d ago`: one unit is enough at a glance.
pub fn ago(elapsed_ms: u64) -> String {
    let s = elapsed_ms / 1000;
    match s {
        0..=59 => format!("{s}s ago"),
        60..=3599 => format!("{}m ago", s / 60),
        3600..=86_399 => format!("{}h ago", s / 3600),
        _ => format!("{}d ago", s / 86_400),
    }
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(doc: serde_json::Value) -> Row {
        Row::from(serde_json::from_value::<ServiceDoc>(doc).unwrap_or_else(|e| panic!("{e}")))
    }

    #[test]
    fn reads_the_controller_document_leniently() {
        let r = row(serde_json::json!({
            "name": "web", "backend": "process", "desired": 2, "ready": 1,
            "replicas": [{"state": "ready"}, {"state": "starting"}],
            "held": 3, "in_flight": 4, "proxies": 1, "metrics": [],
            "last_scale": {"from": 1, "to": 2, "reason": "load", "at_ms": 1000},
            "last_error": null, "something_new": true
        }));
        assert_eq!(r.starting, 1);
        assert_eq!(r.rps, None);
        assert_eq!(r.pinned, None);
        let pinned = row(serde_json::json!({"name": "a", "pinned": {"replicas": 3}}));
        assert_eq!(pinned.pinned, Some(3));
        assert_eq!(
            row(serde_json::json!({"name": "a", "pinned": 2})).pinned,
            Some(2)
        );
    }

    #[test]
    fn the_table_shows_each_column() {
        let r = row(serde_json::json!({
            "name": "web", "backend": "process", "desired": 2, "ready": 1,
            "replicas": [{"state": "ready"}, {"state": "starting"}],
            "held": 3, "in_flight": 4, "rps": 12.34,
            "last_scale": {"from": 1, "to": 2, "reason": "load", "at_ms": 1000},
            "last_error": "spawn failed"
        }));
        let out = render(&[r], 61_000);
        let lines: Vec<&str> = out.lines().collect();
        assert!(lines[0].starts_with("NAME"), "{out}");
        assert!(lines[1].contains("1 (+1 starting)"), "{out}");
        assert!(lines[1].contains("12.3"), "{out}");
        assert!(lines[1].contains("1→2 load, 1m ago"), "{out}");
        assert_eq!(lines[2], "web: error: spawn failed");
    }

    #[test]
    fn unknown_names_are_usage_errors() {
        let rows = vec![row(serde_json::json!({"name": "a"}))];
        let err = select(rows, &["b".into()])
            .err()
            .map(|e| (e.code, e.to_string()));
        assert_eq!(
            err,
            Some((
                Code::Usage,
                "the controller has no service named b (it has: a)".into()
            ))
        );
    }

    #[test]
    fn ago_uses_one_unit() {
        assert_eq!(ago(59_999), "59s ago");
        assert_eq!(ago(60_000), "1m ago");
        assert_eq!(ago(7_200_000), "2h ago");
        assert_eq!(ago(172_800_000), "2d ago");
    }
}
