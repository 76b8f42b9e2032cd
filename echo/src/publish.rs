//! `rouse-echo publish`: test messages for the queue worker.
//!
//! The queue scaling signal and the queue worker need a backlog to work on,
//! and the tests, the demo and the benchmarks need to make one the same way:
//! N messages with the payloads `0`..`N-1`, each confirmed by JetStream, so
//! that what the workers report on their done subject can be checked
//! against what was sent. With `--create` it also sets up the queue (a
//! WorkQueue stream and a durable pull consumer) when it is missing, since
//! a worker never creates it.
//!
//! Prints one JSON line on success; exits 1 with the reason on stderr when
//! anything fails (clap's 2 stays for bad arguments).

use std::collections::VecDeque;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context as _};
use async_nats::jetstream::consumer::{pull, AckPolicy};
use async_nats::jetstream::context::PublishAckFuture;
use async_nats::jetstream::stream::{self, RetentionPolicy, StorageType};
use async_nats::jetstream::{self, Context};
use async_nats::HeaderMap;
use rouse_nats::runtime::Threads;

use crate::handler::MAX_DURATION_MS;
use crate::worker::{connect, flat, jetstream_name, DEFAULT_NATS_URL, WORK_MS_HEADER};

/// `max_ack_pending` of a consumer made by `--create`: enough for many
/// workers that each hold one message (and for redeliveries piling up).
pub const MAX_ACK_PENDING: i64 = 10_000;
/// Publishes whose ack is awaited at once; more wait for the oldest.
const ACK_WINDOW: usize = 256;
/// `--rate` bounds, in messages per second.
const RATE_RANGE: std::ops::RangeInclusive<f64> = 0.001..=1_000_000.0;

/// `rouse-echo publish --stream S --subject SUBJ --count N [...]`.
#[derive(Debug, Clone, clap::Args)]
pub struct PublishArgs {
    /// NATS server to publish to.
    #[arg(long, env = "NATS_URL", default_value = DEFAULT_NATS_URL)]
    pub nats_url: String,

    /// JetStream stream the messages must land in.
    #[arg(long, value_parser = jetstream_name)]
    pub stream: String,

    /// Subject to publish to (no wildcards).
    #[arg(long, value_parser = publish_subject)]
    pub subject: String,

    /// How many messages: their payloads are `0` .. `count-1`.
    #[arg(long)]
    pub count: u64,

    /// Durable pull consumer of the queue: made by --create when missing,
    /// else checked to exist.
    #[arg(long, value_parser = jetstream_name)]
    pub consumer: Option<String>,

    /// Create the stream (WorkQueue retention, file storage, the subject)
    /// and the consumer if they are missing; existing ones are kept as
    /// they are.
    #[arg(long)]
    pub create: bool,

    /// `ack_wait` of a consumer made by --create (e.g. `2s`, `30s`).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub ack_wait: Duration,

    /// A `Work-Ms` header on every message: how long a worker spends on it.
    #[arg(long, value_parser = clap::value_parser!(u64).range(..=MAX_DURATION_MS))]
    pub work_ms: Option<u64>,

    /// Publish at most this many messages per second (default: as fast as
    /// the acks come).
    #[arg(long, value_parser = rate)]
    pub rate: Option<f64>,
}

/// A subject one can publish to: dot-separated non-empty tokens, no
/// whitespace, no wildcards.
pub fn publish_subject(subject: &str) -> Result<String, String> {
    let bad_token = |token: &str| {
        token.is_empty() || token == "*" || token == ">" || token.contains(char::is_whitespace)
    };
    if subject.split('.').any(bad_token) {
        return Err(format!(
            "{subject:?} is not a subject to publish to (dot-separated tokens, no wildcards, no spaces)"
        ));
    }
    Ok(subject.to_owned())
}

fn rate(text: &str) -> Result<f64, String> {
    let rate: f64 = text.parse().map_err(|err| format!("{text:?}: {err}"))?;
    if !RATE_RANGE.contains(&rate) {
        return Err(format!(
            "{rate} is outside {}..={} messages per second",
            RATE_RANGE.start(),
            RATE_RANGE.end()
        ));
    }
    Ok(rate)
}

/// Runs `rouse-echo publish`: 0 with the summary on stdout, 1 with the
/// reason on stderr.
pub fn main(args: &PublishArgs) -> ExitCode {
    rouse_nats::runtime::run("rouse-echo publish", Threads::Current, None, async {
        let summary = publish(args).await?;
        println!("{summary}");
        Ok(())
    })
}

/// Sets up or checks the queue, publishes, and returns the summary line.
pub async fn publish(args: &PublishArgs) -> anyhow::Result<serde_json::Value> {
    let client = connect(&args.nats_url).await?;
    let js = jetstream::new(client);
    if args.create {
        create(&js, args).await?;
    } else {
        check(&js, args).await?;
    }
    send_all(&js, args).await?;
    // Acks prove the messages are stored; nothing else is left to send.
    Ok(serde_json::json!({
        "published": args.count,
        "stream": args.stream,
        "subject": args.subject,
    }))
}

/// The stream and (if named) the consumer, created when missing.
async fn create(js: &Context, args: &PublishArgs) -> anyhow::Result<()> {
    let stream = js
        .get_or_create_stream(stream::Config {
            name: args.stream.clone(),
            subjects: vec![args.subject.clone()],
            retention: RetentionPolicy::WorkQueue,
            storage: StorageType::File,
            ..Default::default()
        })
        .await
        .map_err(flat)
        .with_context(|| format!("creating stream {}", args.stream))?;
    let Some(consumer) = &args.consumer else {
        return Ok(());
    };
    let config = pull::Config {
        durable_name: Some(consumer.clone()),
        ack_policy: AckPolicy::Explicit,
        ack_wait: args.ack_wait,
        max_ack_pending: MAX_ACK_PENDING,
        ..Default::default()
    };
    stream
        .get_or_create_consumer(consumer, config)
        .await
        .map_err(flat)
        .with_context(|| format!("creating consumer {consumer} of stream {}", args.stream))?;
    Ok(())
}

/// Without `--create`: the stream (and the consumer, if named) must exist.
async fn check(js: &Context, args: &PublishArgs) -> anyhow::Result<()> {
    let stream = js
        .get_stream(&args.stream)
        .await
        .map_err(flat)
        .with_context(|| format!("stream {} (--create makes it)", args.stream))?;
    if let Some(consumer) = &args.consumer {
        stream
            .consumer_info(consumer)
            .await
            .map_err(flat)
            .with_context(|| {
                format!(
                    "consumer {consumer} of stream {} (--create makes it)",
                    args.stream
                )
            })?;
    }
    Ok(())
}

/// Publishes `0`..`count-1`, paced by `--rate`, and waits for every ack.
async fn send_all(js: &Context, args: &PublishArgs) -> anyhow::Result<()> {
    let mut pace = pacer(args.rate)?;
    let mut acks: VecDeque<(u64, PublishAckFuture)> = VecDeque::new();
    for id in 0..args.count {
        if let Some(pace) = pace.as_mut() {
            pace.tick().await;
        }
        let ack = js
            .publish_with_headers(
                args.subject.clone(),
                headers(args.work_ms),
                id.to_string().into(),
            )
            .await
            .map_err(flat)
            .with_context(|| format!("publishing message {id} to {}", args.subject))?;
        acks.push_back((id, ack));
        if acks.len() >= ACK_WINDOW {
            confirm(acks.pop_front(), args).await?;
        }
    }
    while !acks.is_empty() {
        confirm(acks.pop_front(), args).await?;
    }
    Ok(())
}

fn pacer(rate: Option<f64>) -> anyhow::Result<Option<tokio::time::Interval>> {
    let Some(rate) = rate else {
        return Ok(None);
    };
    let period = Duration::try_from_secs_f64(1.0 / rate).context("--rate")?;
    let mut interval = tokio::time::interval(period);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    Ok(Some(interval))
}

fn headers(work_ms: Option<u64>) -> HeaderMap {
    let mut headers = HeaderMap::new();
    if let Some(ms) = work_ms {
        headers.insert(WORK_MS_HEADER, ms.to_string().as_str());
    }
    headers
}

/// Waits for one publish ack and checks that `--stream` stored it.
async fn confirm(ack: Option<(u64, PublishAckFuture)>, args: &PublishArgs) -> anyhow::Result<()> {
    let Some((id, ack)) = ack else {
        return Ok(());
    };
    let ack = ack
        .await
        .map_err(flat)
        .with_context(|| format!("message {id} to {} not confirmed", args.subject))?;
    if ack.stream != args.stream {
        bail!(
            "{} is stored by stream {}, not {}",
            args.subject,
            ack.stream,
            args.stream
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_to_publish_to() {
        assert!(publish_subject("jobs").is_ok());
        assert!(publish_subject("jobs.new-1").is_ok());
        for bad in ["", "jobs.", ".jobs", "a..b", "jobs.*", "jobs.>", "a b"] {
            assert!(publish_subject(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn rates_are_bounded() {
        assert_eq!(rate("50"), Ok(50.0));
        assert_eq!(rate("0.5"), Ok(0.5));
        for bad in ["0", "-1", "NaN", "inf", "1e300", "fast"] {
            assert!(rate(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn work_ms_becomes_a_header() {
        assert!(headers(None).get(WORK_MS_HEADER).is_none());
        let with = headers(Some(20));
        assert_eq!(with.get(WORK_MS_HEADER).map(|v| v.as_str()), Some("20"));
    }
}
