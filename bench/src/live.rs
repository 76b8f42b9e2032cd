//! The stack a benchmark measures: one it starts itself through
//! `rouse-stack` (nats-server, rouse-controller and rouse-proxy next to the
//! benchmark's own binary, on the ports it is given, with its config), or
//! one already running at the addresses it is given.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::anyhow;
use rouse_stack::{Bins, Stack, StackBuilder};

/// How long each process gets after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(15);

/// Command-line flags of a benchmark that can start its own stack.
#[derive(Debug, Clone, clap::Args)]
pub struct StackArgs {
    /// Start nats-server, rouse-controller and rouse-proxy (the binaries
    /// next to this one) with this benchmark's config, listening on --proxy,
    /// --proxy-admin, --controller and --nats-port, and stop them at the end.
    #[arg(long)]
    pub start_stack: bool,

    /// With --start-stack: the proxy's admin address.
    #[arg(long, default_value = "127.0.0.1:9090")]
    pub proxy_admin: SocketAddr,

    /// With --start-stack: nats-server's port.
    #[arg(long, default_value_t = 4222)]
    pub nats_port: u16,

    /// Only write this benchmark's config and validate it
    /// (rouse-controller --check); start and measure nothing.
    #[arg(long)]
    pub check_config: bool,

    /// With --start-stack: copy the stack's logs here at the end.
    #[arg(long)]
    pub keep_logs: Option<PathBuf>,
}

impl StackArgs {
    /// A builder on the given ports, with binaries from next to this one.
    pub fn builder(
        &self,
        proxy: SocketAddr,
        controller: SocketAddr,
    ) -> anyhow::Result<StackBuilder> {
        Ok(Stack::builder()
            .bins(Bins::beside_current_exe()?)
            .proxy_listen(proxy)
            .proxy_admin(self.proxy_admin)
            .controller_admin(controller)
            .nats_port(self.nats_port))
    }

    /// Runs `measure` against the stack these flags ask for: checks the
    /// config of `stack` and returns, or starts it, measures and stops it
    /// (printing the logs' tails when `measure` failed), or measures the
    /// running one.
    pub async fn run(
        &self,
        name: &str,
        stack: StackBuilder,
        measure: impl Future<Output = anyhow::Result<()>>,
    ) -> anyhow::Result<()> {
        if self.check_config {
            stack.check()?;
            println!("{name}: the generated config is valid");
            return Ok(());
        }
        if !self.start_stack {
            return measure.await;
        }
        println!("{name}: starting nats-server, rouse-controller and rouse-proxy");
        let mut stack = stack.start().await?;
        let result = until_interrupted(measure).await;
        println!("{name}: stopping everything the benchmark started");
        stack.shutdown(STOP_GRACE).await;
        if result.is_err() {
            eprintln!("{}", stack.dump_logs());
        }
        if let Some(dir) = &self.keep_logs {
            stack.copy_logs(dir)?;
            println!("logs copied to {}", dir.display());
        }
        result
    }
}

/// `work`, or an error as soon as SIGINT or SIGTERM arrives, so that what
/// was started is stopped on Ctrl-C too.
pub async fn until_interrupted<T>(
    work: impl Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        result = work => result,
        _ = term.recv() => Err(anyhow!("interrupted (SIGTERM)")),
        _ = int.recv() => Err(anyhow!("interrupted (SIGINT)")),
    }
}
