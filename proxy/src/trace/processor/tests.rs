//! The processor with a real SDK tracer in front and an exporter that
//! records its batches and can be held shut, so that what gathers while
//! an export is under way is known exactly.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

use opentelemetry::trace::{Span as _, Tracer as _, TracerProvider as _};
use opentelemetry_sdk::trace::SdkTracerProvider;
use tokio::sync::watch;

use super::*;

const BOUND: Duration = Duration::from_secs(20);

#[derive(Debug, Clone)]
struct Recording {
    batches: Arc<Mutex<Vec<usize>>>,
    entered: Arc<AtomicUsize>,
    open: watch::Receiver<bool>,
    shut: Arc<AtomicBool>,
}

impl Recording {
    /// An exporter whose exports wait until the sender says `true`.
    fn gated() -> (Self, watch::Sender<bool>) {
        let (gate, open) = watch::channel(false);
        let exporter = Self {
            batches: Arc::default(),
            entered: Arc::default(),
            open,
            shut: Arc::default(),
        };
        (exporter, gate)
    }

    fn batches(&self) -> Vec<usize> {
        self.batches
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    async fn until_entered(&self, exports: usize) {
        let entered = tokio::time::timeout(BOUND, async {
            while self.entered.load(Ordering::SeqCst) < exports {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
        .await;
        assert!(entered.is_ok(), "{exports} exports began");
    }
}

impl SpanExporter for Recording {
    fn export(
        &self,
        batch: Vec<SpanData>,
    ) -> impl std::future::Future<Output = OTelSdkResult> + Send {
        let me = self.clone();
        async move {
            me.entered.fetch_add(1, Ordering::SeqCst);
            let mut open = me.open.clone();
            let _ = open.wait_for(|open| *open).await;
            me.batches
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(batch.len());
            Ok(())
        }
    }

    fn shutdown_with_timeout(&mut self, _timeout: Duration) -> OTelSdkResult {
        self.shut.store(true, Ordering::SeqCst);
        Ok(())
    }
}

fn provider(processor: QueuedProcessor) -> SdkTracerProvider {
    SdkTracerProvider::builder()
        .with_span_processor(processor)
        .build()
}

fn end_spans(provider: &SdkTracerProvider, count: usize) {
    let tracer = provider.tracer("test");
    for _ in 0..count {
        tracer.start("span").end();
    }
}

async fn shut_down(provider: SdkTracerProvider) -> OTelSdkResult {
    tokio::task::spawn_blocking(move || provider.shutdown_with_timeout(BOUND))
        .await
        .expect("shutdown task")
}

/// Spans ended while an export is under way wait in the queue and go out
/// together, at most [`MAX_BATCH`] to a batch; shutdown exports what is
/// left and shuts the exporter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_gather_into_batches_and_shutdown_exports_the_rest() {
    let (exporter, gate) = Recording::gated();
    let provider = provider(QueuedProcessor::start(exporter.clone(), Counter::default()));
    end_spans(&provider, 1);
    exporter.until_entered(1).await;
    // The task is held in the first export: these all queue.
    end_spans(&provider, MAX_BATCH + 88);
    gate.send_replace(true);
    exporter.until_entered(3).await;
    let batches = tokio::time::timeout(BOUND, async {
        loop {
            let batches = exporter.batches();
            if batches.iter().sum::<usize>() == MAX_BATCH + 89 {
                return batches;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await
    .expect("every span exported");
    assert_eq!(batches, vec![1, MAX_BATCH, 88]);

    end_spans(&provider, 5);
    assert!(shut_down(provider).await.is_ok());
    assert_eq!(
        exporter.batches().iter().sum::<usize>(),
        MAX_BATCH + 94,
        "{:?}",
        exporter.batches()
    );
    assert!(exporter.shut.load(Ordering::SeqCst));
}

/// With the exporter stuck, a full queue drops spans and counts them; the
/// spans it held are exported once the exporter moves again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_drops_and_counts_without_waiting() {
    let (exporter, gate) = Recording::gated();
    let dropped = Counter::default();
    let processor = QueuedProcessor::with_capacity(exporter.clone(), dropped.clone(), 4);
    let provider = provider(processor);
    end_spans(&provider, 1);
    exporter.until_entered(1).await;
    end_spans(&provider, 10);
    assert_eq!(dropped.get(), 6, "4 queued, 6 dropped");
    gate.send_replace(true);
    assert!(shut_down(provider).await.is_ok());
    assert_eq!(exporter.batches().iter().sum::<usize>(), 5);
}

/// Flush answers once what was queued before it is exported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flush_exports_what_was_queued() {
    let (exporter, gate) = Recording::gated();
    gate.send_replace(true);
    let provider = provider(QueuedProcessor::start(exporter.clone(), Counter::default()));
    end_spans(&provider, 3);
    let flushing = provider.clone();
    let flushed = tokio::task::spawn_blocking(move || flushing.force_flush())
        .await
        .expect("flush task");
    assert!(flushed.is_ok(), "{flushed:?}");
    assert_eq!(exporter.batches().iter().sum::<usize>(), 3);
    assert!(shut_down(provider).await.is_ok());
}
