//! The queue worker: rouse-echo as the "queue worker" service that rouse's
//! `queue` scaling signal scales from zero.
//!
//! rouse scales such a service on a JetStream consumer's backlog, so the
//! demo needs a process that drains that backlog the way a real worker
//! would: it binds to an existing durable pull consumer (it never creates
//! one: at zero replicas the consumer must already be there for the
//! controller to read, so whoever owns the queue creates it), pulls one
//! message at a time (so many replicas share the work fairly), spends
//! `--work-ms` on it (a `Work-Ms` header overrides that per message), acks it
//! and waits for the server to confirm the ack, and only then counts it
//! (`/stats` `processed`) and republishes its payload on `--done-subject`,
//! so a test can see what was processed.
//!
//! Delivery is at least once: a message whose ack is not confirmed is
//! redelivered after the consumer's `ack_wait`. NATS being unreachable or
//! the consumer missing is logged and retried with a bounded backoff; on
//! SIGTERM / SIGINT the worker stops pulling, finishes and acks the message
//! in hand, and returns.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::{self, Message};
use async_nats::{Client, HeaderMap};
use futures::StreamExt as _;
use rouse_nats::backoff::{Delays, Schedule};

use crate::handler::{Echo, MAX_DURATION_MS};
use crate::shutdown::Stop;

/// The NATS server when neither `--nats-url` nor `NATS_URL` names one.
pub const DEFAULT_NATS_URL: &str = "nats://127.0.0.1:4222";
/// The message header that overrides `--work-ms` for one message.
pub const WORK_MS_HEADER: &str = "Work-Ms";

/// Retrying a lost connection or a missing consumer: 100 ms doubling to 5 s.
const RETRY: Schedule = Schedule {
    first: Duration::from_millis(100),
    max: Duration::from_secs(5),
    jitter: false,
};
/// How long one pull waits on the server for a message. A pull is never
/// cut short (a message the server delivers into a dropped pull would sit
/// unacked until `ack_wait`), so this also bounds how long an idle worker
/// takes to stop.
const PULL_EXPIRES: Duration = Duration::from_secs(1);
/// How much longer than [`PULL_EXPIRES`] a pull may take before it counts
/// as lost (the server is gone and never said the pull expired).
const PULL_GRACE: Duration = Duration::from_secs(2);
/// Giving up on one connection attempt.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Giving up on sending a done message.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// The queue worker's flags, on the serving command line.
#[derive(Debug, Clone, clap::Args)]
pub struct WorkerArgs {
    /// NATS server of the queue.
    #[arg(long, env = "NATS_URL", default_value = DEFAULT_NATS_URL)]
    pub nats_url: String,

    /// JetStream stream of the queue; with --queue-consumer, turns the
    /// queue worker on.
    #[arg(
        long,
        env = "ROUSE_QUEUE_STREAM",
        requires = "queue_consumer",
        value_parser = jetstream_name
    )]
    pub queue_stream: Option<String>,

    /// Existing durable pull consumer of --queue-stream to take messages
    /// from (never created by the worker).
    #[arg(
        long,
        env = "ROUSE_QUEUE_CONSUMER",
        requires = "queue_stream",
        value_parser = jetstream_name
    )]
    pub queue_consumer: Option<String>,

    /// Milliseconds spent on each message (a `Work-Ms` header overrides it).
    #[arg(
        long,
        env = "ROUSE_WORK_MS",
        default_value_t = 0,
        value_parser = clap::value_parser!(u64).range(..=MAX_DURATION_MS)
    )]
    pub work_ms: u64,

    /// Core NATS subject the payload of every processed (and acked)
    /// message is published to.
    #[arg(long, env = "ROUSE_DONE_SUBJECT")]
    pub done_subject: Option<String>,
}

/// A stream or consumer name JetStream accepts: not empty, and no
/// whitespace, `.`, `*`, `>`, `/` or `\`.
pub fn jetstream_name(name: &str) -> Result<String, String> {
    let bad = |c: char| c.is_whitespace() || matches!(c, '.' | '*' | '>' | '/' | '\\');
    match name.chars().find(|&c| bad(c)) {
        _ if name.is_empty() => Err("must not be empty".to_owned()),
        Some(c) => Err(format!("{c:?} is not allowed in a JetStream name")),
        None => Ok(name.to_owned()),
    }
}

/// How long to work on a message: its `Work-Ms` header when that is a
/// number (capped like `/sleep`), else `default_ms`.
pub fn work_time(headers: Option<&HeaderMap>, default_ms: u64) -> Duration {
    let header = headers.and_then(|headers| headers.get(WORK_MS_HEADER));
    let ms = match header.map(|value| value.as_str().trim().parse::<u64>()) {
        Some(Ok(ms)) => ms.min(MAX_DURATION_MS),
        Some(Err(_)) => {
            tracing::debug!("ignoring a {WORK_MS_HEADER} header that is not a number");
            default_ms
        }
        None => default_ms,
    };
    Duration::from_millis(ms)
}

/// The worker of one process.
#[derive(Debug)]
pub struct Worker {
    nats_url: String,
    stream: String,
    consumer: String,
    work_ms: u64,
    done_subject: Option<String>,
    echo: Arc<Echo>,
}

impl Worker {
    /// The worker `args` ask for, if they name a stream and a consumer.
    pub fn from_args(args: &WorkerArgs, echo: &Arc<Echo>) -> Option<Worker> {
        let stream = args.queue_stream.clone()?;
        let consumer = args.queue_consumer.clone()?;
        Some(Worker {
            nats_url: args.nats_url.clone(),
            stream,
            consumer,
            work_ms: args.work_ms,
            done_subject: args.done_subject.clone(),
            echo: Arc::clone(echo),
        })
    }

    /// Processes messages until `stop`, retrying whatever fails.
    pub async fn run(self, stop: Stop) {
        let mut delays = RETRY.delays();
        let mut client = None;
        while !stop.is_stopped() {
            let Err(err) = self.attempt(&mut client, &stop, &mut delays).await else {
                break;
            };
            let delay = delays.next().unwrap_or(RETRY.max);
            tracing::warn!("queue worker: {err:#}; retrying in {delay:?}");
            if stop.sleep(delay).await {
                break;
            }
        }
        tracing::info!("queue worker stopped");
    }

    /// Connects (once: the client reconnects by itself afterwards), binds
    /// the consumer and processes messages; `Ok` when stopped.
    async fn attempt(
        &self,
        client: &mut Option<Client>,
        stop: &Stop,
        delays: &mut Delays,
    ) -> anyhow::Result<()> {
        let connected = match client {
            Some(connected) => connected.clone(),
            None => {
                let Some(connected) = unless_stopped(stop, connect(&self.nats_url)).await else {
                    return Ok(());
                };
                client.insert(connected?).clone()
            }
        };
        let Some(consumer) = unless_stopped(stop, self.bind(&connected)).await else {
            return Ok(());
        };
        let consumer = consumer?;
        tracing::info!(
            "queue worker bound to consumer {} of stream {}",
            self.consumer,
            self.stream
        );
        self.consume(&connected, &consumer, stop, delays).await
    }

    async fn bind(&self, client: &Client) -> anyhow::Result<PullConsumer> {
        jetstream::new(client.clone())
            .get_consumer_from_stream(&self.consumer, &self.stream)
            .await
            .map_err(flat)
            .with_context(|| {
                format!(
                    "binding to pull consumer {} of stream {}",
                    self.consumer, self.stream
                )
            })
    }

    /// Pulls and processes one message at a time until `stop`.
    async fn consume(
        &self,
        client: &Client,
        consumer: &PullConsumer,
        stop: &Stop,
        delays: &mut Delays,
    ) -> anyhow::Result<()> {
        while !stop.is_stopped() {
            if let Some(message) = pull_one(consumer).await? {
                self.process(client, message).await;
            }
            delays.reset();
        }
        Ok(())
    }

    /// Works on `message`, acks it, and once the ack is confirmed counts it
    /// and publishes it on the done subject. Never cut short by a stop.
    async fn process(&self, client: &Client, message: Message) {
        tokio::time::sleep(work_time(message.headers.as_ref(), self.work_ms)).await;
        if let Err(err) = message.double_ack().await {
            tracing::warn!(
                "queue worker: ack not confirmed ({err}); the message comes back after ack_wait"
            );
            return;
        }
        self.echo.count_processed();
        if let Some(subject) = &self.done_subject {
            if let Err(err) = publish_done(client, subject, message.payload.clone()).await {
                tracing::warn!("queue worker: done message to {subject} not sent: {err:#}");
            }
        }
    }
}

/// A client of `url`, or why not (bounded by [`CONNECT_TIMEOUT`]).
pub(crate) async fn connect(url: &str) -> anyhow::Result<Client> {
    async_nats::ConnectOptions::new()
        .name("rouse-echo")
        .connection_timeout(CONNECT_TIMEOUT)
        .connect(url)
        .await
        .map_err(flat)
        .with_context(|| format!("connecting to NATS at {url}"))
}

/// An async-nats error as one message: their `Display` already ends with
/// the source, which `{:#}` would print a second time.
pub(crate) fn flat(err: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("{err}")
}

/// One message, or `None` when the pull expired without one.
async fn pull_one(consumer: &PullConsumer) -> anyhow::Result<Option<Message>> {
    let mut batch = consumer
        .batch()
        .max_messages(1)
        .expires(PULL_EXPIRES)
        .messages()
        .await
        .map_err(flat)
        .context("requesting a message")?;
    let limit = PULL_EXPIRES + PULL_GRACE;
    let next = tokio::time::timeout(limit, batch.next())
        .await
        .with_context(|| format!("a pull got no answer within {limit:?}"))?;
    match next {
        None => Ok(None),
        Some(Ok(message)) => Ok(Some(message)),
        Some(Err(err)) => Err(anyhow::anyhow!("pulling a message: {err}")),
    }
}

async fn publish_done(client: &Client, subject: &str, payload: bytes::Bytes) -> anyhow::Result<()> {
    client
        .publish(subject.to_owned(), payload)
        .await
        .context("publishing")?;
    tokio::time::timeout(FLUSH_TIMEOUT, client.flush())
        .await
        .with_context(|| format!("not flushed within {FLUSH_TIMEOUT:?}"))?
        .context("flushing")
}

/// `future`'s output, or `None` when `stop` comes first (`future` is then
/// dropped: only for steps that are safe to abandon).
async fn unless_stopped<T>(stop: &Stop, future: impl std::future::Future<Output = T>) -> Option<T> {
    tokio::select! {
        output = future => Some(output),
        () = stop.clone().stopped() => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_jetstream_rules() {
        assert_eq!(jetstream_name("JOBS-1_a").as_deref(), Ok("JOBS-1_a"));
        for bad in ["", "a.b", "a b", "a*", "a>", "a/b", "a\\b", "\t"] {
            assert!(jetstream_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_work_ms_header_overrides_the_default() {
        let with = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(WORK_MS_HEADER, value);
            work_time(Some(&headers), 7)
        };
        assert_eq!(work_time(None, 7), Duration::from_millis(7));
        assert_eq!(
            work_time(Some(&HeaderMap::new()), 7),
            Duration::from_millis(7)
        );
        assert_eq!(with("250"), Duration::from_millis(250));
        assert_eq!(with(" 3 "), Duration::from_millis(3));
        assert_eq!(with("soon"), Duration::from_millis(7));
        assert_eq!(with("-1"), Duration::from_millis(7));
        assert_eq!(with("99999999999"), Duration::from_millis(MAX_DURATION_MS));
    }
}
