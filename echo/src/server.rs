//! The process around the handler: command line, start-up delay, the
//! HTTP/1.1 + h2c accept loop (with `--grpc`, gRPC calls go to `grpc`), the
//! queue worker beside it, and graceful shutdown on SIGTERM / SIGINT.

use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use http_body_util::Either;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tonic::codegen::Service as _;

use crate::grpc::{self, GrpcService};
use crate::handler::{handle, Echo};
use crate::healthcheck::HealthcheckArgs;
use crate::publish::PublishArgs;
use crate::shutdown::Stop;
use crate::worker::{Worker, WorkerArgs};

/// How long in-flight requests get to finish after SIGTERM / SIGINT.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// Pause after a failed `accept` (e.g. out of file descriptors) so the accept
/// loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// The command line: serve (`rouse-echo --port N ...`), or a subcommand.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "rouse-echo",
    version,
    about = "Demo HTTP backend for rouse",
    subcommand_negates_reqs = true,
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(flatten)]
    pub serve: Args,

    #[command(subcommand)]
    pub command: Option<Command>,
}

/// What rouse-echo can do besides serving.
#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// GET a health URL once; exit 0 on a 2xx answer, 1 otherwise (the
    /// rouse image's HEALTHCHECK).
    Healthcheck(HealthcheckArgs),
    /// Publish N test messages to a JetStream stream (and with --create,
    /// create the stream and its pull consumer first).
    Publish(PublishArgs),
}

/// How to serve.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Port to listen on (0 picks a free one); required to serve.
    #[arg(long, env = "PORT", required = true)]
    pub port: Option<u16>,

    /// Address to listen on.
    #[arg(long, default_value_t = IpAddr::V4(Ipv4Addr::LOCALHOST))]
    pub bind: IpAddr,

    /// Replica id reported by `GET /` and `/stats` (defaults to the pid).
    #[arg(long, env = "ROUSE_REPLICA_ID")]
    pub id: Option<String>,

    /// Wait this long before binding, to stand in for a slow cold start
    /// (e.g. `500ms`, `2s`).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub startup_delay: Option<Duration>,

    /// Also serve the gRPC service of proto/echo.proto (h2c) on the same
    /// port: calls with a gRPC content type go to it, the rest to HTTP.
    #[arg(long)]
    pub grpc: bool,

    /// The queue worker, off unless a stream and a consumer are named.
    #[command(flatten)]
    pub worker: WorkerArgs,
}

impl Args {
    /// The replica id: `--id`, else `ROUSE_REPLICA_ID`, else the pid.
    pub fn replica_id(&self) -> String {
        match self.id.as_deref().map(str::trim) {
            Some(id) if !id.is_empty() => id.to_owned(),
            _ => std::process::id().to_string(),
        }
    }
}

/// Runs `rouse-echo` (and its queue worker, when asked for) until SIGTERM /
/// SIGINT.
pub async fn run(args: Args) -> anyhow::Result<()> {
    // Install the handlers first so that a signal during startup (or right
    // after the port opens) is a graceful stop, not the default kill.
    let stop = Stop::on_signals().context("installing signal handlers")?;
    let echo = Arc::new(Echo::new(args.replica_id()));
    if let Some(delay) = args.startup_delay {
        if stop.sleep(delay).await {
            return Ok(());
        }
    }
    // Only a subcommand lifts clap's requirement, and none gets here.
    let port = args.port.context("--port (or PORT) is required")?;
    let addr = SocketAddr::new(args.bind, port);
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))?;
    let local = listener.local_addr().context("reading the bound address")?;
    eprintln!("rouse-echo {} listening on {local}", echo.id());
    let worker = Worker::from_args(&args.worker, &echo);
    let work = async {
        if let Some(worker) = worker {
            worker.run(stop.clone()).await;
        }
    };
    let grpc = args.grpc.then(|| grpc::service(&echo));
    tokio::join!(serve(listener, echo, grpc, stop.clone().stopped()), work);
    Ok(())
}

/// Serves `listener` (and gRPC calls on it with `grpc`) until `shutdown`
/// completes, then stops accepting and gives in-flight requests up to
/// [`SHUTDOWN_GRACE`] to finish.
pub async fn serve(
    listener: TcpListener,
    echo: Arc<Echo>,
    grpc: Option<GrpcService>,
    shutdown: impl Future<Output = ()>,
) {
    let builder = server_builder();
    let graceful = GracefulShutdown::new();
    let mut shutdown = pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => serve_connection(&builder, &graceful, stream, &echo, grpc.as_ref()),
                Err(err) => {
                    tracing::warn!(%err, "accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("in-flight requests still running after {SHUTDOWN_GRACE:?}");
    }
}

fn server_builder() -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new());
    builder.http2().timer(TokioTimer::new());
    builder
}

fn serve_connection(
    builder: &auto::Builder<TokioExecutor>,
    graceful: &GracefulShutdown,
    stream: TcpStream,
    echo: &Arc<Echo>,
    grpc: Option<&GrpcService>,
) {
    if let Err(err) = stream.set_nodelay(true) {
        tracing::debug!(%err, "could not set TCP_NODELAY");
    }
    let echo = Arc::clone(echo);
    let grpc = grpc.cloned();
    let service = service_fn(move |req| {
        let echo = Arc::clone(&echo);
        let grpc = grpc.clone().filter(|_| grpc::is_grpc(&req));
        async move {
            match grpc {
                Some(mut grpc) => match grpc.call(req).await {
                    Ok(response) => Ok(response.map(Either::Right)),
                    Err(never) => match never {},
                },
                None => Ok::<_, Infallible>(handle(&echo, req).await.map(Either::Left)),
            }
        }
    });
    let conn = builder
        .serve_connection_with_upgrades(TokioIo::new(stream), service)
        .into_owned();
    let conn = graceful.watch(conn);
    tokio::spawn(async move {
        if let Err(err) = conn.await {
            tracing::debug!(%err, "connection ended with an error");
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replica_id_falls_back_to_pid() {
        let args = |id: Option<&str>| Args {
            port: Some(0),
            bind: IpAddr::V4(Ipv4Addr::LOCALHOST),
            id: id.map(str::to_owned),
            startup_delay: None,
            grpc: false,
            worker: WorkerArgs {
                nats_url: crate::worker::DEFAULT_NATS_URL.to_owned(),
                queue_stream: None,
                queue_consumer: None,
                work_ms: 0,
                done_subject: None,
            },
        };
        assert_eq!(args(Some("r-1")).replica_id(), "r-1");
        let pid = std::process::id().to_string();
        assert_eq!(args(None).replica_id(), pid);
        assert_eq!(args(Some(" ")).replica_id(), pid);
    }
}
