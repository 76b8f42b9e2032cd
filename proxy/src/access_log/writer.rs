//! The one task that writes the access log.
//!
//! Lines arrive over the bounded channel the data threads `try_send` into;
//! they are rendered into a `BufWriter`, which reaches the file when it
//! fills, on a timer (`flush_interval`) and at shutdown. At shutdown every line
//! already queued is written before the task ends, so SIGTERM loses none.
//! A write error is logged and the task goes on: the log is never a reason
//! for the proxy to stop.

use std::future::Future;
use std::time::Duration;

use rouse_nats::config::AccessLogConfig;
use tokio::io::{AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::sync::mpsc;

use super::format::Format;
use super::Entry;

/// The buffer in front of the file.
const BUFFER_BYTES: usize = 64 * 1024;

type Sink = Box<dyn AsyncWrite + Send + Unpin>;

/// The writer task, not started yet ([`Writer::run`]).
pub struct Writer {
    queue: mpsc::Receiver<Box<Entry>>,
    out: BufWriter<Sink>,
    format: Format,
    flush_every: Duration,
    /// Where the log goes, for error messages.
    path: String,
}

impl Writer {
    /// Opens `config.path` for appending (created if missing); `-` is
    /// standard output.
    pub fn open(
        config: &AccessLogConfig,
        queue: mpsc::Receiver<Box<Entry>>,
    ) -> std::io::Result<Self> {
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

    /// Writes lines until `stop` resolves or every sender is gone, then
    /// writes what is still queued and flushes.
    pub async fn run(mut self, stop: impl Future<Output = ()>) {
        tokio::pin!(stop);
        let mut tick = tokio::time::interval(self.flush_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut line = Vec::with_capacity(512);
        loop {
            tokio::select! {
                next = self.queue.recv() => match next {
                    Some(entry) => self.write(&entry, &mut line).await,
                    None => break,
                },
                _ = tick.tick() => self.flush().await,
                () = &mut stop => break,
            }
        }
        self.queue.close();
        while let Ok(entry) = self.queue.try_recv() {
            self.write(&entry, &mut line).await;
        }
        self.flush().await;
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
