//! `rouse events`: the controller's `scaled` events, from JetStream stream
//! `ROUSE_EVENTS` (subjects `<prefix>.scaled.<service>`).
//!
//! An ordered consumer (ephemeral, no acks, recreated by the client when a
//! message is missed) reads the stream from a start time or from its start;
//! without `--follow` it stops at the last message the stream had when the
//! consumer was made (the server's pending count reaching zero), with
//! `--follow` it keeps tailing until Ctrl-C. Messages that do not decode as
//! `Scaled` are reported on stderr and skipped, as the binaries drop them.

use std::time::Duration;

use anyhow::Context;
use async_nats::jetstream::consumer::{pull::OrderedConfig, DeliverPolicy};
use futures::StreamExt;
use rouse_nats::messages::{self, Scaled};
use rouse_nats::subjects::EVENTS_STREAM;
use serde::Serialize;
use time::OffsetDateTime;

use crate::connect::Endpoints;
use crate::exit::{fail, Code, OrExit, Outcome};
use crate::output::{self, Format};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Only this service's events.
    #[arg(long, value_name = "NAME", value_parser = crate::service_name)]
    pub service: Option<String>,
    /// Events since this long ago (`10m`, `2h`) or this time (RFC 3339,
    /// `2026-12-02T15:00:00Z`) [default: 1h].
    #[arg(long, value_name = "AGO|TIME", value_parser = parse_since, conflicts_with = "from_start")]
    pub since: Option<Since>,
    /// Every event the stream still keeps.
    #[arg(long)]
    pub from_start: bool,
    /// Keep printing new events until Ctrl-C.
    #[arg(long, short)]
    pub follow: bool,
}

/// Where to start reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Since {
    Ago(Duration),
    At(OffsetDateTime),
}

/// The default window without `--since` or `--from-start`.
const DEFAULT_SINCE: Duration = Duration::from_secs(3600);

fn parse_since(value: &str) -> Result<Since, String> {
    if let Ok(ago) = humantime::parse_duration(value) {
        return Ok(Since::Ago(ago));
    }
    OffsetDateTime::parse(value, &time::format_description::well_known::Rfc3339)
        .map(Since::At)
        .map_err(|_| {
            format!("`{value}` is neither a duration (`10m`) nor an RFC 3339 time (`2026-12-02T15:00:00Z`)")
        })
}

impl Args {
    fn deliver_policy(&self) -> Outcome<DeliverPolicy> {
        if self.from_start {
            return Ok(DeliverPolicy::All);
        }
        let start = match self.since.unwrap_or(Since::Ago(DEFAULT_SINCE)) {
            Since::At(at) => at,
            Since::Ago(ago) => time::Duration::try_from(ago)
                .ok()
                .and_then(|ago| OffsetDateTime::now_utc().checked_sub(ago))
                .ok_or_else(|| fail(Code::Usage, "--since is too far back"))?,
        };
        Ok(DeliverPolicy::ByStartTime { start_time: start })
    }
}

/// One event as printed with `--output json` (one object per line).
#[derive(Debug, Serialize)]
struct Event<'a> {
    service: &'a str,
    from: u32,
    to: u32,
    reason: &'a str,
    at_ms: u64,
    /// `at_ms` as RFC 3339, UTC.
    at: String,
    /// The stream sequence: a script resumes after it.
    seq: u64,
}

pub async fn run(args: &Args, endpoints: &Endpoints, format: Format) -> Outcome {
    let policy = args.deliver_policy()?;
    let nats = endpoints.nats().await?;
    // Created if missing, as the controller does: a `--follow` started
    // before any controller still sees its first events.
    let budget = crate::retry::budget(nats.timeout);
    crate::retry::idempotent(budget, || {
        rouse_nats::bus::events_stream(&nats.js, &nats.prefix, nats.replicas)
    })
    .await
    .or_exit(Code::Unreachable)?;
    let stream = crate::retry::idempotent(budget, || nats.js.get_stream(EVENTS_STREAM))
        .await
        .with_context(|| format!("cannot open stream {EVENTS_STREAM} on {}", nats.url))
        .or_exit(Code::Unreachable)?;
    let filter = match &args.service {
        Some(service) => format!("{}.scaled.{service}", nats.prefix),
        None => format!("{}.scaled.*", nats.prefix),
    };
    // An ordered consumer is ephemeral: one left by a lost answer expires.
    let consumer = crate::retry::idempotent(budget, || {
        stream.create_consumer(OrderedConfig {
            filter_subject: filter.clone(),
            deliver_policy: policy,
            ..Default::default()
        })
    })
    .await
    .with_context(|| format!("cannot read stream {EVENTS_STREAM} on {}", nats.url))
    .or_exit(Code::Unreachable)?;
    let pending = consumer.cached_info().num_pending;
    if format == Format::Table {
        output::print(&header())?;
    }
    if pending == 0 && !args.follow {
        return Ok(());
    }
    let mut messages = consumer
        .messages()
        .await
        .with_context(|| format!("cannot read stream {EVENTS_STREAM} on {}", nats.url))
        .or_exit(Code::Unreachable)?;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        // Without --follow every pending message is already stored: one
        // that takes longer than the timeout means NATS went away.
        let next = async {
            if args.follow {
                Ok(messages.next().await)
            } else {
                tokio::time::timeout(endpoints.timeout, messages.next()).await
            }
        };
        let message = tokio::select! {
            _ = &mut ctrl_c => return Ok(()),
            next = next => next,
        };
        let message = match message {
            Ok(Some(Ok(message))) => message,
            Ok(Some(Err(err))) => {
                return Err(fail(
                    Code::Unreachable,
                    format!("reading stream {EVENTS_STREAM} failed: {err}"),
                ))
            }
            Ok(None) => return Ok(()),
            Err(_) => {
                return Err(fail(
                    Code::Unreachable,
                    format!(
                        "NATS at {} stopped delivering {EVENTS_STREAM} before its end",
                        nats.url
                    ),
                ))
            }
        };
        let (seq, left) = message
            .info()
            .map(|info| (info.stream_sequence, info.pending))
            .unwrap_or((0, 0));
        match messages::decode::<Scaled>(&message.payload) {
            Ok(event) => print_event(&event, seq, format)?,
            Err(err) => eprintln!("rouse: skipped message {seq} on {}: {err}", message.subject),
        }
        if left == 0 && !args.follow {
            return Ok(());
        }
    }
}

fn header() -> String {
    format!(
        "{:<24}  {:<20}  {:>4}  {:>4}  REASON\n",
        "TIME", "SERVICE", "FROM", "TO"
    )
}

fn print_event(event: &Scaled, seq: u64, format: Format) -> Outcome {
    let at = rfc3339_ms(event.at_ms);
    match format {
        Format::Json => output::json_line(&Event {
            service: &event.service,
            from: event.from,
            to: event.to,
            reason: &event.reason,
            at_ms: event.at_ms,
            at,
            seq,
        }),
        // Fixed widths rather than a table: rows arrive one at a time.
        Format::Table => output::print(&format!(
            "{at:<24}  {:<20}  {:>4}  {:>4}  {}\n",
            event.service, event.from, event.to, event.reason
        )),
    }
}

/// `at_ms` as `2026-12-02T15:16:58.123Z`; a time past what a calendar
/// shows (a publisher's bug) as the number it is.
fn rfc3339_ms(at_ms: u64) -> String {
    let at = i128::from(at_ms) * 1_000_000;
    match OffsetDateTime::from_unix_timestamp_nanos(at) {
        Ok(t) => format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second(),
            t.millisecond()
        ),
        Err(_) => format!("at_ms={at_ms}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_a_duration_or_a_time() {
        assert_eq!(parse_since("10m"), Ok(Since::Ago(Duration::from_secs(600))));
        let Ok(Since::At(at)) = parse_since("2026-12-02T15:00:00+01:00") else {
            panic!("an RFC 3339 time with an offset parses");
        };
        assert_eq!(at.unix_timestamp(), 1_796_220_000);
        assert!(parse_since("yesterday").is_err());
    }

    #[test]
    fn times_are_utc_with_milliseconds() {
        assert_eq!(rfc3339_ms(1_796_220_000_123), "2026-12-02T14:00:00.123Z");
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_ms(u64::MAX), format!("at_ms={}", u64::MAX));
    }
}
