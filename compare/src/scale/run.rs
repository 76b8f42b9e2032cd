//! The parts of `rouse-scale`, each on a fresh stack, then the report.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use rouse_bench::results::Machine;
use rouse_bench::until_interrupted;
use rouse_stack::{poll, procfs, Bins, Service, Stack, StackBuilder};

use super::held::{self, HeldArgs};
use super::report::{self, ActiveResult, IdleResult, ScaleResults};
use super::sample::{self, measure};
use super::traffic::Traffic;
use super::{service_name, Cli, Part};

/// How long a stack with thousands of services gets to be ready.
const STARTUP_DEADLINE: Duration = Duration::from_secs(600);
/// How long the active services get to answer their first request (each
/// one's replica starts on it).
const WARM_DEADLINE: Duration = Duration::from_secs(300);
/// How long each process gets after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// Runs the parts `cli` asks for and reports them (or only checks their
/// configs, or only rewrites the report).
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    if cli.report_only {
        return report::republish(&cli);
    }
    let temp = tempfile::Builder::new()
        .prefix("rouse-scale-")
        .tempdir()
        .context("create a temp dir")?;
    let bench = Bench {
        bins: Bins::beside_current_exe()?,
        work: temp.path().to_path_buf(),
        cli,
    };
    let result = until_interrupted(bench.parts()).await;
    if let Some(keep) = &bench.cli.keep {
        crate::run::copy_dir(temp.path(), keep)?;
        println!("configs and logs copied to {}", keep.display());
    }
    let measured = result?;
    if bench.cli.check_config {
        return Ok(());
    }
    report::publish(&bench.cli, measured)
}

struct Bench {
    cli: Cli,
    bins: Bins,
    work: std::path::PathBuf,
}

impl Bench {
    async fn parts(&self) -> anyhow::Result<ScaleResults> {
        let cli = &self.cli;
        let builds = procfs::count_processes(&["rustc"]);
        if builds > 0 && !cli.check_config {
            eprintln!("bench/scale: note: {builds} rustc processes are running (other builds); figures will be noisy");
        }
        let mut results = ScaleResults {
            machine: Machine::detect(),
            other_builds: builds,
            ..ScaleResults::default()
        };
        if cli.wants(Part::Idle) || cli.wants(Part::Active) {
            let (idle, active) = self.idle_and_active().await?;
            results.idle = idle;
            results.active = active;
        }
        if cli.wants(Part::Held) {
            results.held = self.held().await?;
        }
        Ok(results)
    }

    /// A stack of `services` services behind the configured proxies.
    fn many(&self, part: &str, services: u32) -> StackBuilder {
        (1..=services)
            .map(|i| {
                let (name, host) = service_name(i);
                Service::new(&name, &host)
            })
            .fold(self.stack(part), StackBuilder::service)
            .proxies(self.cli.proxies as usize)
    }

    fn stack(&self, part: &str) -> StackBuilder {
        Stack::builder()
            .bins(self.bins.clone())
            .dir(&self.work.join(part))
            .report_interval(&self.cli.report_interval)
            .startup_deadline(STARTUP_DEADLINE)
    }

    async fn idle_and_active(&self) -> anyhow::Result<(Option<IdleResult>, Option<ActiveResult>)> {
        let cli = &self.cli;
        let baseline = self.many("baseline", cli.baseline_services);
        let main = self.many("idle", cli.services);
        if cli.check_config {
            baseline.check()?;
            main.check()?;
            println!("rouse-scale: the generated idle config is valid");
            println!("rouse-scale: the generated baseline config is valid");
            return Ok((None, None));
        }

        println!(
            "== baseline: {} services, {} proxies",
            cli.baseline_services, cli.proxies
        );
        let mut stack = baseline.start().await?;
        tokio::time::sleep(cli.settle).await;
        let base = sample::read(&mut stack).await?;
        stack.shutdown(STOP_GRACE).await;
        drop(stack);

        println!(
            "== idle: {} services, {} proxies",
            cli.services, cli.proxies
        );
        let started = Instant::now();
        let mut stack = main.start().await?;
        let ready_s = started.elapsed().as_secs_f64();
        println!("ready after {ready_s:.1} s; settling {:?}", cli.settle);
        tokio::time::sleep(cli.settle).await;
        let window = measure(&mut stack, cli.window).await?;
        let idle = IdleResult::new(cli, ready_s, &base, window);
        report::print_window("idle", &idle.window);

        let active = if cli.wants(Part::Active) {
            Some(self.active(&mut stack).await?)
        } else {
            None
        };
        stack.shutdown(STOP_GRACE).await;
        Ok((Some(idle), active))
    }

    async fn active(&self, stack: &mut Stack) -> anyhow::Result<ActiveResult> {
        let cli = &self.cli;
        let active = cli.active_services();
        println!(
            "== active: {active} of {} services at {} req/s each",
            cli.services, cli.active_rate
        );
        let targets = (1..=active)
            .map(|i| {
                let proxy = stack.proxies[i as usize % stack.proxies.len()].listen;
                (service_name(i).1, proxy)
            })
            .collect();
        let traffic = Traffic::start(targets, cli.active_rate);
        let warm = Instant::now();
        let answered = poll(WARM_DEADLINE, || async {
            (traffic.services_answered() >= u64::from(active)).then_some(())
        })
        .await;
        if answered.is_none() {
            let n = traffic.services_answered();
            traffic.stop().await;
            anyhow::bail!(
                "only {n} of {active} active services answered within {WARM_DEADLINE:?}\n{}",
                stack.dump_logs()
            );
        }
        let warm_s = warm.elapsed().as_secs_f64();
        println!(
            "every active service answered after {warm_s:.1} s; settling {:?}",
            cli.settle
        );
        tokio::time::sleep(cli.settle).await;
        let (ok_before, failed_before) = (traffic.ok(), traffic.failed());
        let window = measure(stack, cli.window).await;
        let (ok, failed) = (traffic.ok() - ok_before, traffic.failed() - failed_before);
        let failed_total = traffic.failed();
        traffic.stop().await;
        let window = window?;
        let result = ActiveResult {
            services: active,
            rate_per_service: cli.active_rate,
            warm_s,
            requests_per_s: ok as f64 / window.seconds,
            failed_in_window: failed,
            failed_total,
            window,
        };
        report::print_window("active", &result.window);
        Ok(result)
    }

    async fn held(&self) -> anyhow::Result<Option<held::HeldReport>> {
        let cli = &self.cli;
        let requests = cli.held_requests;
        let service = Service::new("held", "held.localhost")
            .echo_args(&["--startup-delay", &cli.held_startup_delay])
            .max_replicas(1)
            .target_concurrency(1000)
            .hold_timeout(&format!("{}s", cli.held_timeout.as_secs() + 60))
            // rouse-stack gives 127.0.0.1 the whole cap (one address for
            // every client).
            .hold_max_requests(requests);
        let stack = self.stack("held").service(service);
        if cli.check_config {
            stack.check()?;
            println!("rouse-scale: the generated held config is valid");
            return Ok(None);
        }
        println!(
            "== held: {requests} requests over h2c, {} streams per connection",
            cli.held_streams
        );
        let mut stack = stack.start().await?;
        let args = HeldArgs {
            proxy: stack.proxies[0].listen,
            admin: stack.proxies[0].admin,
            proxy_pid: stack.proxy_proc(0).pid(),
            service: "held".into(),
            host: "held.localhost".into(),
            requests,
            streams_per_connection: cli.held_streams,
            timeout: cli.held_timeout,
        };
        let report = held::run(args).await;
        stack.shutdown(STOP_GRACE).await;
        let report = report?;
        report::print_held(&report);
        Ok(Some(report))
    }
}
