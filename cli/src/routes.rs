//! `rouse routes`: which host and path goes to which service, from the
//! catalog, with the source of each definition (`file` or `api`).
//!
//! The catalog is merged by the rules every proxy applies
//! (`catalog::merge`), so a definition the proxies reject (a route another
//! service took first, a definition failing the checks) is listed apart
//! with the reason instead of as a route.

use rouse_nats::catalog::{self, Origin};
use serde::Serialize;

use crate::connect::Endpoints;
use crate::exit::Outcome;
use crate::output::{self, Format};
use crate::store::Store;
use crate::table::{self, text};

#[derive(Debug, clap::Args)]
pub struct Args {}

/// One host+path pair, as `--output json` prints it.
#[derive(Debug, Serialize, PartialEq, Eq, PartialOrd, Ord)]
struct Route {
    host: String,
    path: String,
    service: String,
    source: &'static str,
}

#[derive(Debug, Serialize)]
struct Rejected {
    service: String,
    reason: String,
}

#[derive(Debug, Serialize)]
struct Document {
    routes: Vec<Route>,
    rejected: Vec<Rejected>,
}

pub async fn run(_args: &Args, endpoints: &Endpoints, format: Format) -> Outcome {
    let store = Store::open(endpoints).await?;
    let entries = store.list().await?;
    let merged = catalog::merge(&[], &entries);
    let mut routes = Vec::new();
    for (spec, origin) in &merged.services {
        let source = match origin {
            Origin::Bucket { source, .. } => source.as_str(),
            Origin::LocalFile => "file",
        };
        for host in &spec.hosts {
            for path in &spec.paths {
                routes.push(Route {
                    host: host.clone(),
                    path: path.clone(),
                    service: spec.name.clone(),
                    source,
                });
            }
        }
    }
    routes.sort();
    let rejected = merged
        .rejected
        .into_iter()
        .map(|r| Rejected {
            service: r.name,
            reason: r.reason,
        })
        .collect();
    let document = Document { routes, rejected };
    match format {
        Format::Json => output::json(&document),
        Format::Table => output::print(&render(&document)),
    }
}

fn render(document: &Document) -> String {
    let rows = document
        .routes
        .iter()
        .map(|r| {
            vec![
                r.host.clone(),
                r.path.clone(),
                r.service.clone(),
                r.source.to_string(),
            ]
        })
        .collect();
    let mut out = table::render(
        &[text("HOST"), text("PATH"), text("SERVICE"), text("SOURCE")],
        rows,
    );
    for rejected in &document.rejected {
        out.push_str(&format!(
            "{}: rejected: {}\n",
            rejected.service, rejected.reason
        ));
    }
    out
}
