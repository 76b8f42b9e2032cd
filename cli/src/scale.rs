//! `rouse scale NAME --pin N | --unpin`: fixes a service's replica count,
//! or gives it back to the autoscaler.
//!
//! A pin is key NAME of KV `rouse-pins` (`catalog::Pin`); the controller
//! holds desired at N while it is there. Any service in the catalog may be
//! pinned, whichever source defines it: a pin changes no definition.

use rouse_nats::catalog::{self, Pin};
use serde::Serialize;

use crate::connect::Endpoints;
use crate::exit::{fail, Code, OrExit, Outcome};
use crate::output::{self, Format};
use crate::store::{self, Store};

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("how").required(true).args(["pin", "unpin"])))]
pub struct Args {
    /// The service's name.
    #[arg(value_parser = crate::service_name)]
    pub name: String,
    /// Hold the service at N replicas, whatever its load.
    #[arg(long, value_name = "N")]
    pub pin: Option<u32>,
    /// Let the autoscaler decide again.
    #[arg(long)]
    pub unpin: bool,
}

#[derive(Debug, Serialize)]
struct Done<'a> {
    service: &'a str,
    /// The pinned count; `null` after --unpin.
    pinned: Option<u32>,
    /// Whether anything changed (`--unpin` of an unpinned service: no).
    changed: bool,
}

pub async fn run(args: &Args, endpoints: &Endpoints, format: Format) -> Outcome {
    let name = args.name.as_str();
    let store = Store::open(endpoints).await?;
    let found = store.existing(name).await?;
    let done = match args.pin {
        Some(replicas) => {
            if let Ok(record) = &found.record {
                let max = record.spec.scaling.max_replicas;
                if replicas > max {
                    eprintln!("rouse: note: {replicas} is above `{name}`'s max_replicas ({max})");
                }
            }
            pin(&store, name, replicas).await?
        }
        None => unpin(&store, name).await?,
    };
    match format {
        Format::Json => output::json(&done),
        Format::Table => output::print(&match (done.pinned, done.changed) {
            (Some(n), _) => format!("service {name} pinned at {n} replicas\n"),
            (None, true) => format!("service {name} unpinned\n"),
            (None, false) => format!("service {name} was not pinned\n"),
        }),
    }
}

async fn pin<'a>(store: &Store, name: &'a str, replicas: u32) -> Outcome<Done<'a>> {
    let value = catalog::encode_pin(&Pin::new(replicas, store::writer()));
    store.pins.put(name, value).await.map_err(|e| {
        fail(
            Code::Unreachable,
            format!("cannot pin `{name}` on NATS at {}: {e}", store.nats.url),
        )
    })?;
    Ok(Done {
        service: name,
        pinned: Some(replicas),
        changed: true,
    })
}

async fn unpin<'a>(store: &Store, name: &'a str) -> Outcome<Done<'a>> {
    let pinned = store
        .pins
        .get(name)
        .await
        .or_exit(Code::Unreachable)?
        .is_some();
    if pinned {
        store.pins.delete(name).await.map_err(|e| {
            fail(
                Code::Unreachable,
                format!("cannot unpin `{name}` on NATS at {}: {e}", store.nats.url),
            )
        })?;
    }
    Ok(Done {
        service: name,
        pinned: None,
        changed: pinned,
    })
}
