//! Connecting to NATS and setting up the JetStream objects rouse relies on.
//!
//! Both binaries connect the same way: retry the first connection, reconnect
//! forever with capped backoff, log every state change. Both also ensure the
//! KV bucket and the events stream exist, so either may start first. The
//! bucket's stream is created by hand rather than with `create_key_value`,
//! whose account-info parsing fails on nats-server 2.9.
//!
//! On a NATS cluster (`nats.url` lists several servers) every bucket and
//! stream is created with `nats.replicas` JetStream replicas. One found with
//! fewer is raised to that count with a stream update (the rest of its
//! config as the server has it); if the server refuses, rouse logs a warning
//! and uses it as it is, since a smaller replica count still works, only
//! with less redundancy. One with more replicas is left alone.

use std::time::Duration;

use async_nats::jetstream::{self, kv, stream};
use async_nats::{Client, ConnectOptions, Event};
use tokio::sync::watch;

use crate::config::NatsConfig;
use crate::subjects::{
    ENDPOINTS_BUCKET, EVENTS_STREAM, LEASES_BUCKET, PINS_BUCKET, REMOVALS_BUCKET, SERVICES_BUCKET,
};

/// Why talking to NATS failed.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("cannot use NATS credentials {path}: {source}")]
    Credentials {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot use nats.url `{url}`: {reason}")]
    Url { url: String, reason: String },
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
    /// `nats.replicas`: what every bucket and stream is created with.
    pub replicas: usize,
}

/// Connects as `client_name`; returns at once even when NATS is down, and keeps
/// reconnecting for as long as the process lives.
pub async fn connect(config: &NatsConfig, client_name: &str) -> Result<Bus, BusError> {
    let servers = config.servers().map_err(|reason| BusError::Url {
        url: config.url.clone(),
        reason,
    })?;
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
        .connect(servers)
        .await
        .map_err(|source| BusError::Connect {
            url: config.url.clone(),
            source,
        })?;
    Ok(Bus {
        client,
        connects,
        replicas: config.replicas,
    })
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

/// JetStream request timeout of the sessions that follow a bucket (a KV
/// watch). With a node of a NATS cluster down, nats-server 2.9 places
/// about one in three new watch consumers (R1, ephemeral) on the missing
/// node, and their creation is never answered; a short timeout brings the
/// retry sooner (a consumer is created in milliseconds otherwise).
pub const WATCH_REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// A JetStream context for a session that follows a bucket and writes
/// nothing (see [`WATCH_REQUEST_TIMEOUT`]).
pub fn watch_context(bus: &Bus) -> jetstream::Context {
    let mut js = jetstream::new(bus.client.clone());
    js.set_timeout(WATCH_REQUEST_TIMEOUT);
    js
}

/// The endpoints bucket, created if missing.
pub async fn endpoints_bucket(
    js: &jetstream::Context,
    replicas: usize,
) -> Result<kv::Store, BusError> {
    kv_bucket(js, ENDPOINTS_BUCKET, "endpoints bucket", replicas).await
}

/// The bucket of controller leases (leader election), created if missing.
pub async fn leases_bucket(
    js: &jetstream::Context,
    replicas: usize,
) -> Result<kv::Store, BusError> {
    kv_bucket(js, LEASES_BUCKET, "leases bucket", replicas).await
}

/// The service catalog (`rouse-services`), created if missing.
pub async fn services_bucket(
    js: &jetstream::Context,
    replicas: usize,
) -> Result<kv::Store, BusError> {
    kv_bucket(js, SERVICES_BUCKET, "services bucket", replicas).await
}

/// The pins bucket (`rouse-pins`), created if missing.
pub async fn pins_bucket(js: &jetstream::Context, replicas: usize) -> Result<kv::Store, BusError> {
    kv_bucket(js, PINS_BUCKET, "pins bucket", replicas).await
}

/// The bucket of removals under way (`rouse-removals`), created if missing.
pub async fn removals_bucket(
    js: &jetstream::Context,
    replicas: usize,
) -> Result<kv::Store, BusError> {
    kv_bucket(js, REMOVALS_BUCKET, "removals bucket", replicas).await
}

/// A KV bucket, its stream created by hand (see the module doc).
async fn kv_bucket(
    js: &jetstream::Context,
    bucket: &str,
    what: &'static str,
    replicas: usize,
) -> Result<kv::Store, BusError> {
    let config = stream::Config {
        name: format!("KV_{bucket}"),
        subjects: vec![format!("$KV.{bucket}.>")],
        max_messages_per_subject: 1,
        allow_rollup: true,
        deny_delete: true,
        // Direct gets are answered by any replica, a lagging one too; on a
        // cluster, reads go to the leader so that a controller continuing
        // an endpoint set's generation never reads an older one.
        allow_direct: replicas <= 1,
        discard: stream::DiscardPolicy::New,
        num_replicas: replicas,
        ..Default::default()
    };
    ensure_stream(js, config, what).await?;
    js.get_key_value(bucket)
        .await
        .map_err(|e| BusError::JetStream {
            what,
            source: e.into(),
        })
}

/// The stream that keeps `scaled` events, created if missing.
pub async fn events_stream(
    js: &jetstream::Context,
    prefix: &str,
    replicas: usize,
) -> Result<(), BusError> {
    let config = stream::Config {
        name: EVENTS_STREAM.into(),
        subjects: vec![format!("{prefix}.scaled.>")],
        max_messages: 100_000,
        max_age: Duration::from_secs(7 * 24 * 3600),
        num_replicas: replicas,
        ..Default::default()
    };
    ensure_stream(js, config, "events stream").await
}

/// How long a stream without a leader is waited for, and how often it is
/// asked again meanwhile.
const LEADER_WAIT: Duration = Duration::from_secs(5);
const LEADER_POLL: Duration = Duration::from_millis(50);

/// Waits (at most [`LEADER_WAIT`], whatever the server does) until a
/// clustered stream has a leader. One that another client is creating at
/// the same moment is answered for before its replicas have elected one,
/// and every request to it meanwhile goes unanswered until its timeout:
/// the first read of a bucket would wait 5 s for nothing. Past the bound
/// it is the callers' retries that wait.
async fn wait_for_leader(stream: &mut stream::Stream) {
    let deadline = tokio::time::Instant::now() + LEADER_WAIT;
    // Bounded in count too: every round sleeps one poll.
    for _ in 0..LEADER_WAIT.as_millis() / LEADER_POLL.as_millis() {
        let leaderless = stream
            .cached_info()
            .cluster
            .as_ref()
            .is_some_and(|cluster| cluster.leader.is_none());
        if !leaderless || tokio::time::Instant::now() >= deadline {
            return;
        }
        tokio::time::sleep(LEADER_POLL).await;
        match tokio::time::timeout_at(deadline, stream.info()).await {
            Ok(Ok(_)) => {}
            Ok(Err(err)) => {
                tracing::debug!(error = %err, "stream info while waiting for its leader")
            }
            Err(_) => return,
        }
    }
}

/// Creates the stream `wanted` describes if it is missing; one that exists
/// keeps its config, except that too few replicas are raised to
/// `wanted.num_replicas` (see the module doc).
async fn ensure_stream(
    js: &jetstream::Context,
    wanted: stream::Config,
    what: &'static str,
) -> Result<(), BusError> {
    let replicas = wanted.num_replicas;
    let name = wanted.name.clone();
    let mut stream = js
        .get_or_create_stream(wanted)
        .await
        .map_err(|e| BusError::JetStream {
            what,
            source: e.into(),
        })?;
    wait_for_leader(&mut stream).await;
    let have = stream.cached_info().config.num_replicas;
    // The server reports 0 for "not set", which it treats as 1.
    if have.max(1) >= replicas {
        return Ok(());
    }
    // The info is the server's answer of a moment ago: its config as is.
    let mut raised = stream.cached_info().config.clone();
    raised.num_replicas = replicas;
    match js.update_stream(raised).await {
        Ok(_) => tracing::info!(
            stream = %name,
            from = have,
            to = replicas,
            "raised the JetStream replicas of an existing stream to nats.replicas"
        ),
        Err(err) => tracing::warn!(
            stream = %name,
            have,
            want = replicas,
            error = %err,
            "cannot raise the JetStream replicas of an existing stream; using it with fewer"
        ),
    }
    Ok(())
}
