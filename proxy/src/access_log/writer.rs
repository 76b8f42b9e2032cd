//! The one task that writes the access log.
//!
//! Lines arrive on the bounded queue the data threads push onto; the task
//! takes whatever is queued, then pauses [`BATCH_PAUSE`] to let the next
//! batch gather, and once a pass finds nothing it waits to be woken by the
//! next line. They are rendered into a `BufWriter`, which reaches the file
//! when it fills, on a timer (`flush_interval`) and at shutdown. At
//! shutdown every line already queued is written before the task ends, so
//! SIGTERM loses none.
//! A write error is logged and the task goes on: the log is never a reason
//! for the proxy to stop.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use rouse_nats::config::AccessLogConfig;
use tokio::io::{AsyncWrite, AsyncWriteExt, BufWriter};

use super::format::Format;
use super::{Entry, Queue};

/// The buffer in front of the file.
const BUFFER_BYTES: usize = 64 * 1024;

/// The writer's pause between batches while lines keep coming: short
/// against `flush_interval`, long enough that a busy proxy queues hundreds
/// of lines per wake instead of one. The queue (`buffer`, 8,192 by
/// default) holds 5 ms of 1.6 million requests a second.
const BATCH_PAUSE: Duration = Duration::from_millis(5);

type Sink = Box<dyn AsyncWrite + Send + Unpin>;

/// The writer task, not started yet ([`Writer::run`]).
pub struct Writer {
    queue: Arc<Queue>,
    out: BufWriter<Sink>,
    format: Format,
    flush_every: Duration,
    /// Where the log goes, for error messages.
    path: String,
}

impl Writer {
    /// Opens `config.path` for appending (created if missing); `-` is
    /// standard output.
    pub fn open(config: &AccessLogConfig, queue: Arc<Queue>) -> std::io::Result<Self> {
        let sink: Sink = if config.path.as_os_str() == "-" {
            Box::new(tokio::io::stdout())
        } else {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&config.path)?;
            Box::new(tokio::fs::File::from_std(file))
        };
        Ok(Self {
            queue,
            out: BufWriter::with_capacity(BUFFER_BYTES, sink),
            format: Format {
                kind: config.format,
                query: config.query,
            },
            flush_every: config.flush_interval,
            path: config.path.display().to_string(),
        })
    }

    /// Writes lines until `stop` resolves, then writes what is still
    /// queued and flushes.
    pub async fn run(mut self, stop: impl Future<Output = ()>) {
        tokio::pin!(stop);
        let mut tick = tokio::time::interval(self.flush_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut line = Vec::with_capacity(512);
        let queue = Arc::clone(&self.queue);
        loop {
            let wrote = self.write_queued(&mut line).await;
            tokio::select! {
                // Lines keep coming: let the next batch gather.
                () = tokio::time::sleep(BATCH_PAUSE), if wrote > 0 => {}
                () = queue.queued(), if wrote == 0 => {}
                _ = tick.tick() => self.flush().await,
                () = &mut stop => break,
            }
        }
        self.write_queued(&mut line).await;
        self.flush().await;
    }

    /// Writes the lines queued now, at most a queue's worth (so that lines
    /// coming as fast as they are written still let the timer and `stop`
    /// in); returns how many.
    async fn write_queued(&mut self, line: &mut Vec<u8>) -> usize {
        let mut wrote = 0;
        while wrote < self.queue.capacity() {
            let Some(entry) = self.queue.pop() else { break };
            self.write(&entry, line).await;
            wrote += 1;
        }
        wrote
    }

    async fn write(&mut self, entry: &Entry, line: &mut Vec<u8>) {
        line.clear();
        self.format.write(entry, line);
        if let Err(err) = self.out.write_all(line).await {
            tracing::warn!(path = %self.path, error = %err, "cannot write the access log");
        }
    }

    async fn flush(&mut self) {
        if let Err(err) = self.out.flush().await {
            tracing::warn!(path = %self.path, error = %err, "cannot write the access log");
        }
    }
}
