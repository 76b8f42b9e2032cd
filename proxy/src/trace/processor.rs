//! Where `proxy.tracing`'s ended spans go: onto a [`BatchQueue`], from
//! which one task on the control-plane runtime exports them in batches.
//!
//! OpenTelemetry's batch processors hand each span to their task through a
//! channel, which wakes the task once per span: with every request traced
//! that cost about half of tracing's price in kernel time (bench/README.md,
//! "What the access log and tracing cost"). Here a data thread only pushes
//! onto the lock-free queue; the task is woken when it has gone idle and
//! otherwise takes what gathered every [`BATCH_PAUSE`]. A full queue drops
//! the span and counts it (`rouse_trace_spans_dropped_total`): a request
//! never waits for its trace.
//!
//! Flush and shutdown (the SDK's calls are blocking) are messages to the
//! task, answered once everything queued before them is exported.

use std::sync::mpsc as sync_mpsc;
use std::sync::Arc;
use std::time::Duration;

use opentelemetry::Context;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{Span, SpanData, SpanExporter, SpanProcessor};
use opentelemetry_sdk::Resource;
use prometheus_client::metrics::counter::Counter;
use tokio::sync::mpsc;

use crate::batch_queue::BatchQueue;

/// Spans the queue holds: a quarter of a second of a proxy tracing every
/// one of 66,000 requests a second (bench/run), the longest an export to a
/// collector on a busy machine was seen to keep the task away.
const QUEUE_CAPACITY: usize = 32_768;
/// Most spans in one export: few round trips at high rates, and well under
/// gRPC's 4 MiB message limit (a span is a few hundred bytes encoded).
const MAX_BATCH: usize = 2048;
/// The task's pause between batches while spans keep coming.
const BATCH_PAUSE: Duration = Duration::from_millis(20);
/// How long `force_flush` waits for the task.
const FLUSH_LIMIT: Duration = Duration::from_secs(10);

/// What the SDK asks of the task besides exporting.
enum Control {
    Resource(Resource),
    Flush(sync_mpsc::Sender<OTelSdkResult>),
    Shutdown(sync_mpsc::Sender<OTelSdkResult>),
}

/// The span processor; the export task runs as long as it does.
pub struct QueuedProcessor {
    queue: Arc<BatchQueue<Box<SpanData>>>,
    dropped: Counter,
    control: mpsc::UnboundedSender<Control>,
}

impl std::fmt::Debug for QueuedProcessor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueuedProcessor")
            .field("capacity", &self.queue.capacity())
            .finish_non_exhaustive()
    }
}

impl QueuedProcessor {
    /// Starts the export task on the current runtime.
    pub fn start<E: SpanExporter + 'static>(exporter: E, dropped: Counter) -> Self {
        Self::with_capacity(exporter, dropped, QUEUE_CAPACITY)
    }

    fn with_capacity<E: SpanExporter + 'static>(
        exporter: E,
        dropped: Counter,
        capacity: usize,
    ) -> Self {
        let queue = Arc::new(BatchQueue::new(capacity));
        let (control, commands) = mpsc::unbounded_channel();
        tokio::spawn(export(exporter, Arc::clone(&queue), commands));
        Self {
            queue,
            dropped,
            control,
        }
    }

    /// Sends `command` to the task and waits up to `limit` for its answer.
    fn ask(
        &self,
        command: impl FnOnce(sync_mpsc::Sender<OTelSdkResult>) -> Control,
        limit: Duration,
    ) -> OTelSdkResult {
        let (reply, answer) = sync_mpsc::channel();
        self.control
            .send(command(reply))
            .map_err(|_| OTelSdkError::AlreadyShutdown)?;
        match answer.recv_timeout(limit) {
            Ok(result) => result,
            Err(sync_mpsc::RecvTimeoutError::Timeout) => Err(OTelSdkError::Timeout(limit)),
            Err(sync_mpsc::RecvTimeoutError::Disconnected) => Err(OTelSdkError::AlreadyShutdown),
        }
    }
}

impl SpanProcessor for QueuedProcessor {
    fn on_start(&self, _span: &mut Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        if !span.span_context.is_sampled() {
            return;
        }
        // Boxed: the queue's slots are allocated up front, and a span is a
        // few hundred bytes; a box is 8 of them per slot.
        if self.queue.push(Box::new(span)).is_err() {
            self.dropped.inc();
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.ask(Control::Flush, FLUSH_LIMIT)
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.ask(Control::Shutdown, timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        let _ = self.control.send(Control::Resource(resource.clone()));
    }
}

/// The export task: batches while spans come, idle (woken by the next
/// span) when none do, until shutdown or the processor is dropped.
async fn export<E: SpanExporter>(
    mut exporter: E,
    queue: Arc<BatchQueue<Box<SpanData>>>,
    mut commands: mpsc::UnboundedReceiver<Control>,
) {
    loop {
        let exported = export_queued(&exporter, &queue).await;
        let command = tokio::select! {
            // Spans keep coming: let the next batch gather.
            () = tokio::time::sleep(BATCH_PAUSE), if exported > 0 => continue,
            () = queue.queued(), if exported == 0 => continue,
            command = commands.recv() => command,
        };
        match command {
            Some(Control::Resource(resource)) => exporter.set_resource(&resource),
            Some(Control::Flush(reply)) => {
                export_queued(&exporter, &queue).await;
                let _ = reply.send(Ok(()));
            }
            Some(Control::Shutdown(reply)) => {
                export_queued(&exporter, &queue).await;
                let _ = reply.send(exporter.shutdown());
                return;
            }
            None => return,
        }
    }
}

/// Exports what is queued now, in batches of at most [`MAX_BATCH`], and
/// at most a queue's worth (so that spans coming as fast as they go still
/// let commands in); returns how many spans it took.
async fn export_queued<E: SpanExporter>(exporter: &E, queue: &BatchQueue<Box<SpanData>>) -> usize {
    let mut taken = 0;
    while taken < queue.capacity() {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        while batch.len() < MAX_BATCH {
            let Some(span) = queue.pop() else { break };
            batch.push(*span);
        }
        if batch.is_empty() {
            break;
        }
        let count = batch.len();
        taken += count;
        if let Err(err) = exporter.export(batch).await {
            tracing::warn!(spans = count, error = %err, "exporting spans failed; they are lost");
        }
        if count < MAX_BATCH {
            break;
        }
    }
    taken
}

#[cfg(test)]
mod tests;
