//! Process plumbing both binaries share: `main` (config, logging, runtime),
//! SIGTERM/SIGINT, and the admin HTTP server's accept loop (each
//! binary supplies its own routes).

use std::convert::Infallible;
use std::future::Future;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

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

/// Serves admin requests with `route` until the task is dropped.
pub async fn serve_admin<R>(listener: TcpListener, route: Arc<R>)
where
    R: Fn(&Request<Incoming>) -> Response<Full<Bytes>> + Send + Sync + 'static,
{
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            // Out of file descriptors and the like: do not spin.
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let route = Arc::clone(&route);
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let response = route(&request);
                async move { Ok::<_, Infallible>(response) }
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
