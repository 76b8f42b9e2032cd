//! `rouse remove NAME`: deletes a service from the catalog (and its pin).
//!
//! The controller drains and stops its replicas as for a scale-down, and
//! the proxies stop routing it. A service of the config file is refused:
//! the file would bring it back. The delete expects the revision read, so
//! a deploy landing in between is not silently undone.

use std::time::Duration;

use rouse_nats::catalog::Source;
use serde::Serialize;

use crate::connect::Endpoints;
use crate::exit::{fail, Code, Outcome};
use crate::output::{self, Format};
use crate::store::Store;
use crate::wait::{self, Step};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The service's name.
    #[arg(value_parser = crate::service_name)]
    pub name: String,
    /// Wait until the controller no longer lists the service.
    #[arg(long)]
    pub wait: bool,
    /// How long --wait waits.
    #[arg(long, default_value = "2m", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

#[derive(Debug, Serialize)]
struct Done<'a> {
    service: &'a str,
    action: &'static str,
    /// Whether a pin was removed with it.
    unpinned: bool,
}

pub async fn run(args: &Args, endpoints: &Endpoints, format: Format) -> Outcome {
    let name = args.name.as_str();
    let store = Store::open(endpoints).await?;
    let found = store.existing(name).await?;
    if let Ok(record) = &found.record {
        if record.source == Source::File {
            return Err(fail(
                Code::Conflict,
                format!("service `{name}` is defined in the config file; remove it there"),
            ));
        }
    }
    if let Err(err) = store
        .services
        .delete_expect_revision(name, Some(found.revision))
        .await
    {
        return Err(store
            .write_failed(name, Some(found.revision), err.into())
            .await);
    }
    let unpinned = unpin(&store, name).await;
    match format {
        Format::Json => output::json(&Done {
            service: name,
            action: "removed",
            unpinned,
        })?,
        Format::Table => {
            let pin = if unpinned { " (and its pin)" } else { "" };
            output::print(&format!("service {name} removed{pin}\n"))?
        }
    }
    if args.wait {
        wait::until(
            &endpoints.controller,
            name,
            args.timeout,
            |look| match look {
                Err(reason) => Step::Waiting(format!("{name}: the controller: {reason}")),
                Ok(Some(row)) => {
                    Step::Waiting(format!("{name}: stopping, {}", wait::replicas(row)))
                }
                Ok(None) => Step::Done(format!("{name}: gone")),
            },
        )
        .await?;
    }
    Ok(())
}

/// Drops the service's pin, if any: a later service of the same name must
/// not inherit it. The service is already gone, so a failure here is only
/// reported.
async fn unpin(store: &Store, name: &str) -> bool {
    match store.pins.entry(name).await {
        Ok(Some(entry)) if entry.operation == async_nats::jetstream::kv::Operation::Put => {
            match store.pins.delete(name).await {
                Ok(()) => true,
                Err(err) => {
                    eprintln!("rouse: warning: the pin of `{name}` stays: {err}");
                    false
                }
            }
        }
        Ok(_) => false,
        Err(err) => {
            eprintln!("rouse: warning: cannot read the pin of `{name}`: {err}");
            false
        }
    }
}
