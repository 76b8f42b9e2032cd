//! Building the tokio runtime of a binary and turning its outcome into the
//! exit code: the one `main` every rouse binary (proxy, controller, demo
//! backend, benchmark clients) and every proxy data thread share.

use std::future::Future;
use std::process::ExitCode;
use std::time::Duration;

use tokio::runtime::{Builder, Runtime};

/// How many threads a runtime gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Threads {
    /// Everything on the calling thread: benchmark clients (least noise in
    /// what they measure) and the proxy's per-core data threads.
    Current,
    /// A work-stealing pool of this many threads, or one per core.
    Pool(Option<usize>),
}

/// A runtime with every driver (I/O, time) enabled.
pub fn build(threads: Threads) -> std::io::Result<Runtime> {
    let mut builder = match threads {
        Threads::Current => Builder::new_current_thread(),
        Threads::Pool(count) => {
            let mut builder = Builder::new_multi_thread();
            if let Some(count) = count {
                builder.worker_threads(count);
            }
            builder
        }
    };
    builder.enable_all().build()
}

/// Runs `app` on a new runtime and maps its outcome to the exit code: 0 on
/// success, 1 with the error on stderr (and in the log) otherwise. Tasks
/// still running afterwards get `linger` to finish before the runtime is
/// dropped.
pub fn run<T>(
    name: &str,
    threads: Threads,
    linger: Option<Duration>,
    app: impl Future<Output = anyhow::Result<T>>,
) -> ExitCode {
    let runtime = match build(threads) {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("{name}: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(app);
    if let Some(linger) = linger {
        runtime.shutdown_timeout(linger);
    }
    match outcome {
        Ok(_) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("{err:#}");
            eprintln!("{name}: {err:#}");
            ExitCode::FAILURE
        }
    }
}
