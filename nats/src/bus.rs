//! Connecting to NATS and setting up the JetStream objects rouse relies on.
//!
//! Both binaries connect the same way: retry the first connection, reconnect
//! forever with capped backoff, log every state change. Both also ensure the
//! KV bucket and the events stream exist, so either may start first. The
//! bucket's stream is created by hand rather than with `create_key_value`,
//! whose account-info parsing fails on nats-server 2.9.

use std::time::Duration;

use async_nats::jetstream::{self, kv, stream};
use async_nats::{Client, ConnectOptions, Event};
use tokio::sync::watch;

use crate::config::NatsConfig;
use crate::subjects::{
    ENDPOINTS_BUCKET, EVENTS_STREAM, LEASES_BUCKET, PINS_BUCKET, SERVICES_BUCKET,
};

/// Why talking to NATS failed.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("cannot use NATS credentials {path}: {source}")]
    Credentials {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot connect to NATS at {url}: {source}")]
    Connect {
        url: String,
        source: async_nats::ConnectError,
    },
    #[error("cannot set up JetStream {what}: {source}")]
    JetStream {
        what: &'static str,
        source: async_nats::Error,
    },
}

/// Delay before reconnect attempt `attempt` (async-nats counts from 1).
fn reconnect_delay(attempt: usize) -> Duration {
    crate::backoff::RECONNECT.nth(attempt.saturating_sub(1))
}

/// A NATS client and a counter of its (re)connections.
///
/// Subscriptions survive a reconnect, but JetStream consumers (a KV watch)
/// may not: their owners restart them when `connects` changes.
#[derive(Clone)]
pub struct Bus {
    pub client: Client,
    pub connects: watch::Receiver<u64>,
}

/// Connects as `client_name`; returns at once even when NATS is down, and keeps
/// reconnecting for as long as the process lives.
pub async fn connect(config: &NatsConfig, client_name: &str) -> Result<Bus, BusError> {
    let (connected_tx, connects) = watch::channel(0u64);
    let mut options = ConnectOptions::new()
        .name(client_name)
        .retry_on_initial_connect()
        .max_reconnects(None)
        .reconnect_delay_callback(reconnect_delay)
        .event_callback(move |event| {
            let connected_tx = connected_tx.clone();
            async move { on_event(event, &connected_tx) }
        });
    if let (Some(user), Some(password)) = (&config.user, &config.password) {
        options = options.user_and_password(user.clone(), password.clone());
    }
    if let Some(token) = &config.token {
        options = options.token(token.clone());
    }
    if let Some(path) = &config.creds_file {
        options = options
            .credentials_file(path)
            .await
            .map_err(|source| BusError::Credentials {
                path: path.display().to_string(),
                source,
            })?;
    }
    if let Some(tls) = &config.tls {
        options = options.require_tls(tls.required);
        if let Some(ca) = &tls.ca_file {
            options = options.add_root_certificates(ca.clone());
        }
        if let (Some(cert), Some(key)) = (&tls.cert_file, &tls.key_file) {
            options = options.add_client_certificate(cert.clone(), key.clone());
        }
    }
    let client = options
        .connect(config.url.as_str())
        .await
        .map_err(|source| BusError::Connect {
            url: config.url.clone(),
            source,
        })?;
    Ok(Bus { client, connects })
}

/// Runs `session` once per NATS connection for as long as the process
/// lives: first once connected, again after every reconnect (`session`
/// gets `connects` and returns `Ok` when it changes), and after a failure
/// on the RESUBSCRIBE schedule, logged with `what`. For what follows a KV
/// watch: consumers do not reliably survive a server restart.
pub async fn each_connection<F, Fut, E>(bus: &Bus, what: &str, mut session: F)
where
    F: FnMut(watch::Receiver<u64>) -> Fut,
    Fut: std::future::Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    let mut connects = bus.connects.clone();
    let mut delays = crate::backoff::RESUBSCRIBE.delays();
    loop {
        if *connects.borrow_and_update() == 0 && connects.changed().await.is_err() {
            return;
        }
        connects.borrow_and_update();
        match session(connects.clone()).await {
            Ok(()) => delays.reset(),
            Err(err) => {
                let delay = delays.next().unwrap_or_default();
                tracing::warn!(error = %err, ?delay, "{what} failed; retrying");
                tokio::time::sleep(delay).await;
            }
        }
    }
}

fn on_event(event: Event, connected: &watch::Sender<u64>) {
    match event {
        Event::Connected => {
            tracing::info!("NATS connected");
            connected.send_modify(|n| *n += 1);
        }
        Event::Disconnected => tracing::warn!("NATS disconnected; reconnecting"),
        other => tracing::warn!(event = %other, "NATS event"),
    }
}

/// The endpoints bucket, created if missing.
pub async fn endpoints_bucket(js: &jetstream::Context) -> Result<kv::Store, BusError> {
    kv_bucket(js, ENDPOINTS_BUCKET, "endpoints bucket").await
}

/// The bucket of controller leases (leader election), created if missing.
pub async fn leases_bucket(js: &jetstream::Context) -> Result<kv::Store, BusError> {
    kv_bucket(js, LEASES_BUCKET, "leases bucket").await
}

/// The service catalog (`rouse-services`), created if missing.
pub async fn services_bucket(js: &jetstream::Context) -> Result<kv::Store, BusError> {
    kv_bucket(js, SERVICES_BUCKET, "services bucket").await
}

/// The pins bucket (`rouse-pins`), created if missing.
pub async fn pins_bucket(js: &jetstream::Context) -> Result<kv::Store, BusError> {
    kv_bucket(js, PINS_BUCKET, "pins bucket").await
}

/// A KV bucket, its stream created by hand (see the module doc).
async fn kv_bucket(
    js: &jetstream::Context,
    bucket: &str,
    what: &'static str,
) -> Result<kv::Store, BusError> {
    let config = stream::Config {
        name: format!("KV_{bucket}"),
        subjects: vec![format!("$KV.{bucket}.>")],
        max_messages_per_subject: 1,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        discard: stream::DiscardPolicy::New,
        ..Default::default()
    };
    js.get_or_create_stream(config)
        .await
        .map_err(|e| BusError::JetStream {
            what,
            source: e.into(),
        })?;
    js.get_key_value(bucket)
        .await
        .map_err(|e| BusError::JetStream {
            what,
            source: e.into(),
        })
}

/// The stream that keeps `scaled` events, created if missing.
pub async fn events_stream(js: &jetstream::Context, prefix: &str) -> Result<(), BusError> {
    let config = stream::Config {
        name: EVENTS_STREAM.into(),
        subjects: vec![format!("{prefix}.scaled.>")],
        max_messages: 100_000,
        max_age: Duration::from_secs(7 * 24 * 3600),
        ..Default::default()
    };
    js.get_or_create_stream(config)
        .await
        .map(drop)
        .map_err(|e| BusError::JetStream {
            what: "events stream",
            source: e.into(),
        })
}
