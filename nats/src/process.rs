//! Process plumbing both binaries share: `main` (config, logging, runtime)
//! and SIGTERM/SIGINT.

use std::future::Future;
use std::process::ExitCode;

/// The whole `main` of both binaries: read the config named by `args`
/// (exiting 0 for `--check`, 2 for a bad config), set up logging, and run
/// `app` with it on a runtime of `worker_threads` threads.
pub fn main<F, Fut>(
    name: &str,
    args: &crate::cli::CommonArgs,
    worker_threads: Option<usize>,
    app: F,
) -> ExitCode
where
    F: FnOnce(crate::Config) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let config = match crate::cli::load(args) {
        crate::cli::Loaded::Run(config) => config,
        crate::cli::Loaded::Exit(code) => return code,
    };
    crate::cli::init_logging(args.log_format);
    crate::runtime::run(
        name,
        crate::runtime::Threads::Pool(worker_threads),
        None,
        app(*config),
    )
}

/// Resolves on SIGTERM or SIGINT.
pub async fn terminated() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without handlers the default action (exit) still applies.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

/// Every SIGHUP, as a stream of `()`: both binaries reload their services
/// on it. Without a handler (it cannot be installed) nothing ever arrives.
pub fn hangups() -> impl futures::Stream<Item = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let hangup = signal(SignalKind::hangup()).ok();
    futures::stream::unfold(hangup, |hangup| async move {
        match hangup {
            Some(mut signal) => signal.recv().await.map(|()| ((), Some(signal))),
            None => std::future::pending().await,
        }
    })
}
