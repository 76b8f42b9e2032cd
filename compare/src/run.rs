//! The three parts of the comparison, each on a fresh stack, in the order
//! `bench/run` documents them, then the report.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::Parser as _;
use rouse_nats::runtime::Threads;
use rouse_stack::{ensure_free, http_get, poll, procfs, Bins, Proc, Service, Stack, StackBuilder};
use serde_json::Value;

use super::loadgen::{find_tool, first_line, measure, Loadgen, MeasureArgs, RoundResult};
use super::report::{mib, publish, throughput, BurstResult, Footprint, FootprintResult, Results};
use super::{Cli, Part, Target};
use rouse_bench::results::Machine;
use rouse_bench::until_interrupted;

/// How long each process gets after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// How long a started proxy or backend gets to answer its first `GET /`.
const ANSWER_DEADLINE: Duration = Duration::from_secs(10);

/// The seven ports, from `--base-port` up.
#[derive(Debug, Clone, Copy)]
struct Ports {
    nats: u16,
    proxy: SocketAddr,
    admin: SocketAddr,
    controller: SocketAddr,
    nginx: SocketAddr,
    haproxy: SocketAddr,
    floor: SocketAddr,
}

impl Ports {
    fn from_base(base: u16) -> Self {
        let at = |i: u16| SocketAddr::from(([127, 0, 0, 1], base + i));
        Self {
            nats: base,
            proxy: at(1),
            admin: at(2),
            controller: at(3),
            nginx: at(4),
            haproxy: at(5),
            floor: at(6),
        }
    }
}

/// What the whole run shares.
struct Bench {
    cli: Cli,
    threads: u32,
    ports: Ports,
    bins: Bins,
    work: PathBuf,
    /// Facts about the run for the report, `key → value`.
    setup: BTreeMap<String, String>,
    /// Where the `rouse-trace` proxy exports to, once started.
    collector: Option<crate::collector::Collector>,
}

/// Runs the parts `cli` asks for and reports them (or only checks their
/// configs).
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let nproc = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
    let threads = cli.threads.unwrap_or(nproc);
    let ports = Ports::from_base(cli.base_port);
    let temp = tempfile::Builder::new()
        .prefix("rouse-compare-")
        .tempdir()
        .context("create a temp dir")?;
    let setup = [("threads", threads), ("nproc", nproc)]
        .map(|(k, v)| (k.to_owned(), v.to_string()))
        .into();
    let keep = cli.keep.clone();
    let mut bench = Bench {
        cli,
        threads,
        ports,
        bins: Bins::beside_current_exe()?,
        work: temp.path().to_path_buf(),
        setup,
        collector: None,
    };
    let result = until_interrupted(bench.parts()).await;
    if let Some(keep) = keep {
        copy_dir(temp.path(), &keep)?;
        println!("configs, logs and raw outputs copied to {}", keep.display());
    }
    let measured = result?;
    if bench.cli.check_config {
        return Ok(());
    }
    println!("\n== report");
    let machine = Machine::detect();
    let setup = &bench.setup;
    let results = Results {
        throughput: measured
            .rounds
            .map(|rounds| throughput(machine.clone(), setup.clone(), rounds)),
        burst: measured
            .burst
            .map(|report| BurstResult::new(machine.clone(), setup.clone(), report)),
        footprint: measured
            .footprint
            .map(|footprint| FootprintResult::new(machine.clone(), footprint)),
    };
    let readme = (!bench.cli.no_readme).then_some(bench.cli.readme.as_path());
    std::fs::create_dir_all(&bench.cli.out)
        .with_context(|| format!("creating {}", bench.cli.out.display()))?;
    publish(&results, &bench.cli.out, readme)
}

/// What the parts measured.
#[derive(Default)]
struct Measured {
    rounds: Option<Vec<RoundResult>>,
    /// What `rouse-burst` reported.
    burst: Option<Value>,
    footprint: Option<Footprint>,
}

impl Bench {
    async fn parts(&mut self) -> anyhow::Result<Measured> {
        let mut measured = Measured::default();
        if !self.cli.check_config {
            let p = self.ports;
            for addr in [p.proxy, p.admin, p.controller, p.nginx, p.haproxy, p.floor] {
                ensure_free(addr).context("set ROUSE_BENCH_BASE_PORT to free ports")?;
            }
            let builds = procfs::count_processes(&["rustc"]);
            if builds > 0 {
                eprintln!("bench/run: note: {builds} rustc processes are running (other builds); figures will be noisy");
            }
            self.setup.insert("other_builds".into(), builds.to_string());
        }
        if self.cli.wants(Part::Throughput) {
            let mut stack = self.stack("throughput").service(
                service("echo", "*")
                    .min_replicas(1)
                    .max_replicas(1)
                    .target_concurrency(1000),
            );
            stack = self.with_variants(stack).await?;
            if self.checked("throughput", &stack)? {
                measured.rounds = Some(self.throughput(stack).await?);
            }
        }
        if self.cli.wants(Part::Burst) {
            let delay = self.cli.burst_startup_delay.clone();
            let stack = self.stack("burst").service(
                service("burst", "burst.localhost")
                    .echo_args(&["--startup-delay", &delay])
                    .max_replicas(4)
                    .target_concurrency(1000)
                    .hold_timeout("60s")
                    .hold_max_requests(self.cli.burst_requests * 2),
            );
            if self.checked("burst", &stack)? {
                measured.burst = Some(self.burst(stack).await?);
                self.setup.insert("startup_delay".into(), delay);
            }
        }
        if self.cli.wants(Part::Footprint) {
            let stack = (1..=self.cli.footprint_services)
                .map(|i| service(&format!("svc-{i}"), &format!("svc-{i}.localhost")))
                .fold(self.stack("footprint"), StackBuilder::service);
            if self.checked("footprint", &stack)? {
                measured.footprint = Some(self.footprint(stack).await?);
            }
        }
        Ok(measured)
    }

    /// The throughput stack with a proxy of its own for each rouse-proxy
    /// variant asked for (proxies 1, 2, ..., in [`variants`] order): the
    /// same config as proxy 0 plus the one key the variant is about. The
    /// tracing one gets its collector started here.
    async fn with_variants(&mut self, stack: StackBuilder) -> anyhow::Result<StackBuilder> {
        let variants = variants(&self.cli.targets);
        if variants.is_empty() {
            return Ok(stack);
        }
        let mut stack = stack.proxies(1 + variants.len());
        // The access log's directory must exist for its config to be valid.
        let dir = self.work.join("throughput");
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        for (i, variant) in variants.iter().enumerate() {
            let (key, value) = match variant {
                Target::RouseLog => (
                    "access_log",
                    format!(
                        "{{path: {}, format: json}}",
                        serde_json::to_string(&self.access_log())?
                    ),
                ),
                _ => {
                    let endpoint = if self.cli.check_config {
                        "http://127.0.0.1:4317".to_owned()
                    } else {
                        let collector = crate::collector::Collector::start().await?;
                        let endpoint = collector.endpoint();
                        self.collector = Some(collector);
                        endpoint
                    };
                    let value = format!(
                        "{{otlp_endpoint: \"{endpoint}\", protocol: grpc, sample_ratio: 1.0}}"
                    );
                    ("tracing", value)
                }
            };
            stack = stack.proxy_key_for(1 + i, key, &value);
        }
        Ok(stack)
    }

    /// Where the `rouse-log` proxy writes its access log.
    fn access_log(&self) -> PathBuf {
        self.work.join("throughput").join("access.log")
    }

    /// The stack of one part, in its own directory under the work dir.
    fn stack(&self, part: &str) -> StackBuilder {
        let p = self.ports;
        Stack::builder()
            .bins(self.bins.clone())
            .dir(&self.work.join(part))
            .proxy_listen(p.proxy)
            .proxy_admin(p.admin)
            .controller_admin(p.controller)
            .nats_port(p.nats)
            .worker_threads(self.threads)
            .report_interval("1s")
    }

    /// In `--check-config` mode: validates the part's config and says so,
    /// `false` (nothing to run). Otherwise `true`.
    fn checked(&self, part: &str, stack: &StackBuilder) -> anyhow::Result<bool> {
        if !self.cli.check_config {
            return Ok(true);
        }
        stack.check()?;
        println!("rouse-compare: the generated {part} config is valid");
        Ok(false)
    }

    async fn throughput(&mut self, stack: StackBuilder) -> anyhow::Result<Vec<RoundResult>> {
        let cli = &self.cli;
        let loadgen = Loadgen::find(&cli.loadgen)?;
        let dir = self.work.join("throughput");
        let targets = &cli.targets;
        let nginx = targets
            .contains(&Target::Nginx)
            .then(|| {
                find_tool("nginx").context(
                    "nginx not found (apt-get install nginx-light), or drop it from TARGETS",
                )
            })
            .transpose()?;
        let haproxy = targets
            .contains(&Target::Haproxy)
            .then(|| {
                find_tool("haproxy")
                    .context("haproxy not found (apt-get install haproxy), or drop it from TARGETS")
            })
            .transpose()?;
        let names: Vec<&str> = targets.iter().map(|t| t.name()).collect();
        println!(
            "\n== throughput: {}; {} ({}), {} connections, {}s, {} rounds, {} threads per proxy",
            names.join(" "),
            loadgen.tool.name(),
            loadgen.version,
            cli.connections,
            cli.duration.as_secs(),
            cli.rounds,
            self.threads
        );
        let mut stack = stack.start().await?;

        // The one replica rouse started: every path goes to it.
        let (backend, backend_pid) = ready_backend(&stack, "echo").await?;
        let pid = backend_pid.map_or("-".to_owned(), |p| p.to_string());
        println!("backend: rouse-echo at {backend} (pid {pid})");
        answers(backend, None).await?;
        for proxy in &mut stack.proxies {
            answers(proxy.listen, Some(&mut proxy.proc)).await?;
        }

        let mut side = Vec::new();
        let mut endpoints = Vec::new();
        for target in targets {
            let (url, pid) = match target {
                Target::Direct => (format!("http://{backend}/"), None),
                Target::Rouse => (
                    format!("http://{}/", self.ports.proxy),
                    Some(stack.proxies[0].proc.pid()),
                ),
                Target::RouseLog | Target::RouseTrace => {
                    let proxy = &mut stack.proxies[variant_proxy(targets, *target)];
                    (format!("http://{}/", proxy.listen), Some(proxy.proc.pid()))
                }
                Target::Nginx => {
                    let bin = nginx.as_deref().expect("found above");
                    let proc =
                        start_nginx(bin, &dir, self.ports.nginx, backend, self.threads).await?;
                    let pid = proc.pid();
                    side.push(proc);
                    (format!("http://{}/", self.ports.nginx), Some(pid))
                }
                Target::Haproxy => {
                    let bin = haproxy.as_deref().expect("found above");
                    let proc =
                        start_haproxy(bin, &dir, self.ports.haproxy, backend, self.threads).await?;
                    let pid = proc.pid();
                    side.push(proc);
                    (format!("http://{}/", self.ports.haproxy), Some(pid))
                }
                Target::Floor => {
                    let bin = self.bins.path("rouse-floor");
                    let proc =
                        start_floor(&bin, &dir, self.ports.floor, backend, self.threads).await?;
                    let pid = proc.pid();
                    side.push(proc);
                    (format!("http://{}/", self.ports.floor), Some(pid))
                }
            };
            endpoints.push((target.name(), url, pid));
        }
        let measure_one = |(target, url, pid): &(&str, String, Option<u32>), round, duration| {
            let args = MeasureArgs {
                target: target.to_string(),
                round,
                loadgen: loadgen.clone(),
                url: url.clone(),
                connections: cli.connections,
                duration,
                pids: pid.iter().copied().collect(),
                backend_pid,
                raw_dir: dir.join("raw"),
            };
            async move { tokio::task::spawn_blocking(move || measure(&args)).await? }
        };
        println!(
            "\n== warm-up ({}s per path, not recorded)",
            cli.warmup.as_secs()
        );
        for endpoint in &endpoints {
            measure_one(endpoint, 0, cli.warmup).await?;
        }
        let loadavg = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
        let loadavg: Vec<&str> = loadavg.split_whitespace().take(3).collect();
        let mut rounds = Vec::new();
        for round in 1..=cli.rounds {
            println!("\n== round {round} of {}", cli.rounds);
            // Round-robin, starting one path later each round, so that no
            // path always runs first or right after the same neighbour.
            for i in 0..endpoints.len() {
                let endpoint = &endpoints[(i + round as usize - 1) % endpoints.len()];
                rounds.push(measure_one(endpoint, round, cli.duration).await?);
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
        for mut proc in side {
            proc.terminate(STOP_GRACE).await;
        }
        let variant_facts = self.variant_facts(&stack).await;
        stack.shutdown(STOP_GRACE).await;
        self.setup.extend(variant_facts);

        let version = |bin: Option<&Path>, arg, pick: fn(&str) -> Option<&str>| {
            bin.map_or("not run".to_owned(), |bin| {
                pick(&first_line(bin, arg)).unwrap_or_default().to_owned()
            })
        };
        let facts = [
            ("tool", loadgen.tool.name().to_owned()),
            ("tool_version", loadgen.version.clone()),
            ("connections", cli.connections.to_string()),
            ("duration", format!("{}s", cli.duration.as_secs())),
            ("rounds", cli.rounds.to_string()),
            ("warmup", format!("{}s", cli.warmup.as_secs())),
            (
                "nginx_version",
                version(nginx.as_deref(), "-v", |l| l.split("nginx/").nth(1)),
            ),
            (
                "haproxy_version",
                version(haproxy.as_deref(), "-v", |l| l.split_whitespace().nth(2)),
            ),
            ("loadavg", loadavg.join(" ")),
        ];
        self.setup
            .extend(facts.map(|(k, v)| (k.to_owned(), v.to_string())));
        Ok(rounds)
    }

    /// What the variants' extra work came to, for the report: the access
    /// log's bytes written and lines dropped (`access_log_bytes`,
    /// `access_log_dropped`), and the spans the collector received per
    /// request the tracing proxy answered (`spans_per_request`) and those
    /// it dropped (`trace_spans_dropped`). A line or
    /// span dropped is work not done, so a variant's CPU per request is
    /// only the full cost if none was.
    async fn variant_facts(&self, stack: &Stack) -> Vec<(String, String)> {
        let targets = &self.cli.targets;
        let mut facts = Vec::new();
        let metrics_of = |i: usize| {
            let admin = stack.proxies[i].admin;
            async move {
                http_get(admin, "/metrics", Duration::from_secs(5))
                    .await
                    .map(|(_, text)| text)
                    .unwrap_or_default()
            }
        };
        if variants(targets).contains(&Target::RouseLog) {
            let text = metrics_of(variant_proxy(targets, Target::RouseLog)).await;
            let dropped = text
                .lines()
                .find_map(|l| l.strip_prefix("rouse_access_log_dropped_total "))
                .map_or("?".to_owned(), |v| v.trim().to_owned());
            let log = self.access_log();
            let bytes = std::fs::metadata(&log).map_or(0, |m| m.len());
            // Hundreds of bytes per request, and read by no one.
            let _ = std::fs::remove_file(&log);
            facts.push(("access_log_bytes".to_owned(), bytes.to_string()));
            facts.push(("access_log_dropped".to_owned(), dropped));
        }
        if let Some(collector) = &self.collector {
            let text = metrics_of(variant_proxy(targets, Target::RouseTrace)).await;
            let answered: f64 = text
                .lines()
                .filter(|l| l.starts_with("rouse_requests_total{"))
                .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
                .sum();
            // The last batch is exported within the SDK's delay.
            tokio::time::sleep(Duration::from_secs(6)).await;
            let spans = collector.spans() as f64;
            let per_request = if answered > 0.0 {
                spans / answered
            } else {
                0.0
            };
            facts.push(("spans_per_request".to_owned(), format!("{per_request:.2}")));
            let dropped = text
                .lines()
                .find_map(|l| l.strip_prefix("rouse_trace_spans_dropped_total "))
                .map_or("?".to_owned(), |v| v.trim().to_owned());
            facts.push(("trace_spans_dropped".to_owned(), dropped));
        }
        facts
    }

    async fn burst(&mut self, stack: StackBuilder) -> anyhow::Result<Value> {
        let cli = &self.cli;
        println!(
            "\n== burst: {} concurrent requests at zero replicas (replica start-up delay {})",
            cli.burst_requests, cli.burst_startup_delay
        );
        let mut stack = stack.start().await?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let json = self.work.join("burst").join("burst.json");
        let args = crate::burst::Args::try_parse_from([
            "rouse-burst".to_owned(),
            format!("--proxy={}", self.ports.proxy),
            "--host=burst.localhost".to_owned(),
            format!("--requests={}", cli.burst_requests),
            format!("--timeout={}", cli.burst_timeout),
            format!("--proxy-pid={}", stack.proxies[0].proc.pid()),
            format!("--metrics={}", self.ports.admin),
            "--service=burst".to_owned(),
            format!("--json={}", json.display()),
        ])?;
        // Two threads, as `rouse-burst` has: enough to open thousands of
        // connections quickly without taking every core from the proxy.
        let report = tokio::task::spawn_blocking(move || {
            rouse_nats::runtime::build(Threads::Pool(Some(2)))?.block_on(crate::burst::run(args))
        })
        .await??;
        if !stack.is_running() {
            bail!("the proxy or the controller died during the burst");
        }
        stack.shutdown(STOP_GRACE).await;
        Ok(serde_json::to_value(report)?)
    }

    async fn footprint(&mut self, stack: StackBuilder) -> anyhow::Result<Footprint> {
        let (services, settle) = (self.cli.footprint_services, self.cli.footprint_settle);
        println!("\n== footprint: {services} services at zero, read after {settle}s");
        let mut stack = stack.start().await?;
        tokio::time::sleep(Duration::from_secs(settle)).await;
        if !stack.is_running() {
            bail!("the proxy or the controller exited");
        }
        let proxy = stack.proxies[0].proc.pid();
        let controller = stack.controller_proc().pid();
        let nats = stack.nats.proc_mut().pid();
        let read = |pid: u32, key: &str, what: &str| {
            procfs::proc_status_kib(pid, key)
                .with_context(|| format!("cannot read {key} of the {what} (pid {pid})"))
        };
        let footprint = Footprint {
            services,
            settle_s: settle as f64,
            proxy_rss_kib: read(proxy, "VmRSS", "proxy")?,
            proxy_hwm_kib: read(proxy, "VmHWM", "proxy")?,
            controller_rss_kib: read(controller, "VmRSS", "controller")?,
            controller_hwm_kib: read(controller, "VmHWM", "controller")?,
            nats_rss_kib: procfs::proc_status_kib(nats, "VmRSS"),
        };
        println!(
            "idle with {services} services: proxy {:.1} MiB, controller {:.1} MiB (VmRSS)",
            mib(footprint.proxy_rss_kib),
            mib(footprint.controller_rss_kib)
        );
        stack.shutdown(STOP_GRACE).await;
        Ok(footprint)
    }
}

/// The rouse-proxy variants among `targets`, each once, in order: proxy
/// `1 + i` of the throughput stack is variant `i`.
fn variants(targets: &[Target]) -> Vec<Target> {
    let mut found = Vec::new();
    for target in targets {
        if matches!(target, Target::RouseLog | Target::RouseTrace) && !found.contains(target) {
            found.push(*target);
        }
    }
    found
}

/// The stack's proxy index of `variant` (see [`variants`]).
fn variant_proxy(targets: &[Target], variant: Target) -> usize {
    1 + variants(targets)
        .iter()
        .position(|v| *v == variant)
        .unwrap_or(0)
}

/// A rouse-echo service with rouse's own defaults for what it does not set
/// (`Service::new` has the end-to-end tests' defaults).
fn service(name: &str, host: &str) -> Service {
    Service::new(name, host)
        .max_replicas(10)
        .scale_to_zero_after("60s")
        .drain_timeout("30s")
        .hold_max_requests(10_000)
}

/// Address and pid of the ready replica of `service`, within 30 s.
async fn ready_backend(stack: &Stack, service: &str) -> anyhow::Result<(SocketAddr, Option<u32>)> {
    let controller = stack.controller_admin();
    let state_dir = stack.state_dir();
    let found = poll(Duration::from_secs(30), || async move {
        let (_, body) = http_get(controller, "/api/v1/services", Duration::from_secs(2))
            .await
            .ok()?;
        let ready = ready_replicas(&body, service, Some(state_dir)).ok()?;
        let (addr, pid) = ready.into_iter().next()?;
        Some((addr.parse().ok()?, pid))
    })
    .await;
    found.with_context(|| format!("no ready replica of service {service} after 30s"))
}

/// Waits until `GET /` on `addr` answers 200, while `proc` (if any) runs.
async fn answers(addr: SocketAddr, proc: Option<&mut Proc>) -> anyhow::Result<()> {
    rouse_stack::wait_http_ok(addr, "/", ANSWER_DEADLINE, proc).await
}

/// Starts a side process (nginx, HAProxy) after `check` accepted its
/// config, and waits until it answers.
async fn start_side(
    name: &str,
    bin: &Path,
    dir: &Path,
    check: &[&str],
    args: &[&str],
    addr: SocketAddr,
) -> anyhow::Result<Proc> {
    let out = std::process::Command::new(bin).args(check).output()?;
    if !out.status.success() {
        let text = String::from_utf8_lossy(&out.stderr) + String::from_utf8_lossy(&out.stdout);
        bail!("{name} rejects its config: {}", rouse_stack::tail(&text, 3));
    }
    let args: Vec<_> = args.iter().map(Into::into).collect();
    let log = dir.join(format!("{name}.log"));
    let mut proc = Proc::try_spawn(name, bin, &args, &BTreeMap::new(), &log)?;
    answers(addr, Some(&mut proc)).await?;
    Ok(proc)
}

/// `rouse-floor` in front of `backend`: hyper's codecs and tokio, nothing
/// of rouse's own.
async fn start_floor(
    bin: &Path,
    dir: &Path,
    listen: SocketAddr,
    backend: SocketAddr,
    threads: u32,
) -> anyhow::Result<Proc> {
    let listen_arg = listen.to_string();
    let backend = backend.to_string();
    let threads = threads.to_string();
    let args = [
        "--listen",
        &listen_arg,
        "--upstream",
        &backend,
        "--threads",
        &threads,
    ];
    start_side("rouse-floor", bin, dir, &["--help"], &args, listen).await
}

/// nginx in front of `backend`, configured like rouse: keep-alive upstream,
/// the same forwarding headers, no access log.
async fn start_nginx(
    bin: &Path,
    dir: &Path,
    listen: SocketAddr,
    backend: SocketAddr,
    threads: u32,
) -> anyhow::Result<Proc> {
    let d = dir.join("nginx");
    std::fs::create_dir_all(&d)?;
    let user = if nix::unistd::Uid::effective().is_root() {
        "user root;"
    } else {
        ""
    };
    let (nofile, _) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)?;
    let d = d.display();
    let conf = format!(
        r#"{user}
worker_processes {threads};
daemon off;
master_process on;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
worker_rlimit_nofile {nofile};
events {{
    worker_connections 16384;
}}
http {{
    access_log off;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    upstream backend {{
        server {backend};
        keepalive 64;
    }}
    server {{
        listen {listen};
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            # The same forwarding headers rouse sets.
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Host $host;
            proxy_set_header X-Forwarded-Proto $scheme;
        }}
    }}
}}
"#
    );
    let (prefix, path) = (format!("{d}"), format!("{d}/nginx.conf"));
    std::fs::write(&path, conf)?;
    let check = ["-t", "-q", "-p", &prefix, "-c", &path];
    start_side("nginx", bin, dir, &check, &check[2..], listen).await
}

/// HAProxy in front of `backend`, configured like rouse: connection reuse,
/// the same forwarding headers, no logging.
async fn start_haproxy(
    bin: &Path,
    dir: &Path,
    bind: SocketAddr,
    backend: SocketAddr,
    threads: u32,
) -> anyhow::Result<Proc> {
    let conf = format!(
        "global
    nbthread {threads}
    maxconn 4096
defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    http-reuse always
frontend bench
    bind {bind}
    # The same forwarding headers rouse sets.
    option forwardfor
    http-request set-header X-Forwarded-Host %[req.hdr(host)]
    http-request set-header X-Forwarded-Proto http
    default_backend echo
backend echo
    server replica {backend}
"
    );
    let path = dir.join("haproxy.cfg");
    std::fs::write(&path, conf)?;
    let path = path.to_string_lossy();
    start_side(
        "haproxy",
        bin,
        dir,
        &["-c", "-f", &path],
        &["-db", "-f", &path],
        bind,
    )
    .await
}

/// Copies the files under `from` into `to`, keeping the tree.
pub(crate) fn copy_dir(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

/// `(addr, pid)` of the ready replicas of `service` in a status listing.
pub(crate) fn ready_replicas(
    listing: &str,
    service: &str,
    state_dir: Option<&Path>,
) -> anyhow::Result<Vec<(String, Option<u32>)>> {
    let json: Value = serde_json::from_str(listing).context("the status is not JSON")?;
    let services = json
        .get("services")
        .and_then(Value::as_array)
        .context("no `services` array in the status")?;
    let Some(entry) = services
        .iter()
        .find(|s| s.get("name").and_then(Value::as_str) == Some(service))
    else {
        bail!("no service `{service}` in the status");
    };
    let replicas = entry
        .get("replicas")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    Ok(replicas
        .iter()
        .filter(|r| r.get("state").and_then(Value::as_str) == Some("ready"))
        .filter_map(|r| {
            let addr = r.get("addr")?.as_str()?.to_owned();
            let pid = match (state_dir, r.get("id").and_then(Value::as_str)) {
                (Some(dir), Some(id)) => {
                    let file = dir.join("process").join(service).join(format!("{id}.pid"));
                    std::fs::read(file)
                        .ok()
                        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
                        .and_then(|v| v.get("pid")?.as_u64())
                        .and_then(|p| u32::try_from(p).ok())
                }
                _ => None,
            };
            Some((addr, pid))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_ready_replicas() {
        let listing = r#"{"services":[{"name":"echo","replicas":[
            {"id":"echo-1","addr":"127.0.0.1:4000","state":"ready"},
            {"id":"echo-2","addr":"127.0.0.1:4001","state":"starting"}]}]}"#;
        let ready = ready_replicas(listing, "echo", None).unwrap();
        assert_eq!(ready, vec![("127.0.0.1:4000".to_owned(), None)]);
        assert!(ready_replicas(listing, "other", None).is_err());
    }
}
