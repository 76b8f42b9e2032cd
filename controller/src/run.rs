//! Assembles a running controller: the fleet (one backend and one reconcile
//! loop per service in force: file, catalog, SIGHUP), the catalog's seed,
//! the NATS intake, the admin server, and the SIGTERM sequence
//! (stop loops → stop or keep replicas per `controller.on_shutdown` → exit).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use async_nats::jetstream;
use dashmap::DashMap;
use futures::StreamExt;
use rouse_nats::config::{Backend as BackendSpec, LeaderElection, LeaseKind};
use rouse_nats::subjects::LEASES_BUCKET;
use rouse_nats::{bus, process, Config, Subjects};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

use crate::admin::{self, AdminState};
use crate::backend::{
    Backend, Cluster, DockerBackend, Engine, KubernetesBackend, Pool, PooledBackend, ProcessBackend,
};
use crate::fleet::{self, Command, Fleet, FleetSink};
use crate::intake::{self, Inbox, Inboxes};
use crate::keda;
use crate::leader::kube::KubeLease;
use crate::leader::nats::NatsLease;
use crate::leader::{Elector, LeaseStore};
use crate::meter::{BacklogSource, JetStreamBacklog};
use crate::metrics::ControllerMetrics;
use crate::reconcile::{NatsPublisher, Publisher, Wiring};
use crate::status::StatusBoard;

/// How long stopping replicas may take on SIGTERM before the process exits anyway.
const SHUTDOWN_LIMIT: Duration = Duration::from_secs(60);

/// Runs the controller until SIGTERM or SIGINT.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let metrics = Arc::new(ControllerMetrics::new());
    let status = Arc::new(StatusBoard::new());
    let subjects = Subjects::new(config.nats.prefix.clone());

    // The file's services have inboxes before the first report can come;
    // the fleet adds and removes the rest.
    let inboxes = Arc::new(Inboxes::with(
        config.proxy.report_interval,
        config.services.iter().map(|s| s.name.as_str()),
    ));

    let admin_listener = TcpListener::bind(config.controller.admin_listen)
        .await
        .with_context(|| {
            format!(
                "binding controller.admin_listen {}",
                config.controller.admin_listen
            )
        })?;
    let keda_listener = match config.controller.keda_listen {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding controller.keda_listen {addr}"))?,
        ),
        None => None,
    };
    let bus = bus::connect(&config.nats, "rouse-controller").await?;
    let js = jetstream::new(bus.client.clone());
    tokio::spawn({
        let prefix = config.nats.prefix.clone();
        let js = js.clone();
        let replicas = bus.replicas;
        async move {
            // Best effort: if NATS is down now, the first event that finds
            // no stream sets it up (see reconcile::publish).
            if let Err(err) = bus::events_stream(&js, &prefix, replicas).await {
                tracing::warn!(error = %err, "cannot set up the events stream");
            }
        }
    });

    tokio::spawn(intake_forever(
        bus.client.clone(),
        subjects.clone(),
        Arc::clone(&inboxes),
        Arc::clone(&metrics),
    ));

    let token = rouse_nats::admin::ApiToken::load(config.controller.admin_token_file.as_deref())
        .context("reading controller.admin_token_file")?;
    tokio::spawn(admin::serve(
        admin_listener,
        token,
        Arc::new(AdminState {
            metrics: Arc::clone(&metrics),
            status: Arc::clone(&status),
        }),
    ));
    tracing::info!(
        admin = %config.controller.admin_listen,
        services = config.services.len(),
        state_dir = %config.controller.state_dir.display(),
        "rouse-controller started"
    );

    // The file's services as SIGHUP last read them. SIGHUP is handled from
    // here on, standing by or leading (unhandled, it would end the process):
    // a standby's KEDA answers follow the file, and the fleet, once it
    // runs, takes in whatever reloads came before.
    let (file_tx, file_rx) = watch::channel(config.services.clone());
    let (commands, command_rx) = mpsc::unbounded_channel();
    if let Some(path) = config.file.clone() {
        tokio::spawn(reload_on_hangup(path, commands.clone(), file_tx));
    }
    // Standbys serve KEDA too: every controller gets every report, and
    // follows the catalog for KEDA's sake.
    if let Some(listener) = keda_listener {
        let catalog = Arc::new(keda::KedaCatalog::new(
            config.services.clone(),
            Arc::clone(&inboxes),
        ));
        let scaler = keda::Scaler::over(catalog.targets(), Arc::clone(&metrics));
        tokio::spawn(keda::serve(listener, scaler));
        tokio::spawn(keda::follow_services(bus.clone(), file_rx.clone(), catalog));
    }

    let mut platforms = Platforms::default();
    let (stop_leading, election) = match &config.controller.leader_election {
        None => {
            metrics.leader.set(1);
            (None, None)
        }
        Some(settings) => {
            let (stop_tx, stop_rx) = watch::channel(false);
            let (leading_tx, mut leading_rx) = watch::channel(false);
            let store = lease_store(settings, &mut platforms, &js, bus.replicas).await?;
            let elector = Elector::new(settings, store);
            tracing::info!(identity = %elector.identity(), "standing by for the lease");
            let mut election = tokio::spawn(elector.lead(leading_tx, stop_rx));
            tokio::select! {
                _ = leading_rx.wait_for(|leading| *leading) => {}
                ended = &mut election => {
                    anyhow::bail!("the leader election ended before this controller led: {ended:?}");
                }
                _ = process::terminated() => {
                    tracing::info!("stopped while standing by");
                    let _ = stop_tx.send(true);
                    let _ = election.await;
                    return Ok(());
                }
            }
            metrics.leader.set(1);
            (Some(stop_tx), Some(election))
        }
    };

    // Built only once leading: a standby must not adopt (or clean up) what
    // the leader runs, nor seed the catalog.
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let publisher: Arc<dyn Publisher> = Arc::new(NatsPublisher::new(
        bus.client.clone(),
        subjects.clone(),
        bus.replicas,
    ));
    let pins = Arc::new(DashMap::new());
    let builder = LoopBuilder {
        config: config.clone(),
        platforms,
        publisher,
        status: Arc::clone(&status),
        metrics: Arc::clone(&metrics),
        shutdown: shutdown_rx.clone(),
        js: js.clone(),
    };
    let fleet = Fleet::new(
        &config,
        Arc::clone(&inboxes),
        Arc::clone(&pins),
        Box::new(builder),
        crate::removals::Removals::new(
            js.clone(),
            bus.replicas,
            format!("rouse-controller {}", config.controller.id),
            metrics.bus_rejected.clone(),
        ),
    );
    let fleet = tokio::spawn(fleet.run(command_rx, shutdown_rx));
    tokio::spawn(fleet::follow_pins(bus.clone(), pins, Arc::clone(&inboxes)));
    tokio::spawn(fleet::seed_forever(
        bus.clone(),
        file_rx,
        format!("rouse-controller {}", config.controller.id),
    ));
    tokio::spawn(rouse_nats::catalog::follow(
        bus.clone(),
        Arc::new(FleetSink(commands.clone())) as Arc<dyn rouse_nats::catalog::Sink>,
    ));

    let mut election = election;
    match election.as_mut() {
        Some(election) => tokio::select! {
            _ = process::terminated() => {}
            ended = election => {
                // Another controller may act now: stop at once, touching
                // nothing, and let the supervisor restart this one.
                metrics.leader.set(0);
                anyhow::bail!("lost the lease ({ended:?}); exiting so that only the new leader acts");
            }
        },
        None => process::terminated().await,
    }
    tracing::info!(policy = ?config.controller.on_shutdown, "shutting down");
    let _ = shutdown_tx.send(true);
    // The fleet ends once every loop has stopped.
    if tokio::time::timeout(SHUTDOWN_LIMIT, fleet).await.is_err() {
        tracing::warn!("replicas did not stop in time; exiting anyway");
    }
    if let (Some(stop_leading), Some(election)) = (stop_leading, election) {
        // Only now: the loops have stopped acting. Wait for the release to
        // land, or the runtime's end would cut it off.
        let _ = stop_leading.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(5), election).await;
    }
    match tokio::time::timeout(Duration::from_secs(2), bus.client.flush()).await {
        Ok(Err(err)) => tracing::debug!(error = %err, "flush on exit failed"),
        Err(_) => tracing::debug!("flush on exit timed out"),
        Ok(Ok(())) => {}
    }
    Ok(())
}

/// Reloads the file's services on every SIGHUP: into the fleet, and into
/// the catalog's seed. A file that does not load changes nothing.
async fn reload_on_hangup(
    path: std::path::PathBuf,
    commands: mpsc::UnboundedSender<Command>,
    seed: watch::Sender<Vec<rouse_nats::config::ServiceConfig>>,
) {
    let mut hangups = std::pin::pin!(process::hangups());
    while hangups.next().await.is_some() {
        match Config::load(&path) {
            Ok(config) => {
                tracing::info!(file = %path.display(), services = config.services.len(), "config file services reloaded (other settings need a restart)");
                let _ = seed.send(config.services.clone());
                let _ = commands.send(Command::File(config.services));
            }
            Err(err) => {
                for line in err.to_string().lines() {
                    tracing::error!(problem = %line, "config reload refused; keeping the services in force");
                }
            }
        }
    }
}

/// What the fleet needs to start a loop: the controller's clients and
/// everything the loops share.
struct LoopBuilder {
    config: Config,
    platforms: Platforms,
    publisher: Arc<dyn Publisher>,
    status: Arc<StatusBoard>,
    metrics: Arc<ControllerMetrics>,
    shutdown: watch::Receiver<bool>,
    js: jetstream::Context,
}

#[async_trait::async_trait]
impl fleet::Builder for LoopBuilder {
    async fn backend(
        &mut self,
        spec: &rouse_nats::config::ServiceConfig,
        inbox: &Arc<Inbox>,
    ) -> anyhow::Result<Arc<dyn Backend>> {
        build_backend(spec, &self.config, &mut self.platforms, Arc::clone(inbox))
            .await
            .with_context(|| format!("service {}", spec.name))
    }

    fn wiring(&self, spec: &rouse_nats::config::ServiceConfig) -> Wiring {
        Wiring {
            publisher: Arc::clone(&self.publisher),
            prober: Arc::new(spec.readiness.probe()),
            status: Arc::clone(&self.status),
            metrics: Arc::clone(&self.metrics),
            tick: self.config.controller.tick,
            shutdown: self.shutdown.clone(),
            on_shutdown: self.config.controller.on_shutdown,
            backlog: spec.scaling.queue().map(|(stream, consumer, _)| {
                Arc::new(JetStreamBacklog::new(self.js.clone(), stream, consumer))
                    as Arc<dyn BacklogSource>
            }),
        }
    }
}

/// Keeps the report subscriptions alive: a controller without them would
/// scale blind.
async fn intake_forever(
    client: async_nats::Client,
    subjects: Subjects,
    inboxes: Arc<Inboxes>,
    metrics: Arc<ControllerMetrics>,
) {
    let mut delays = rouse_nats::backoff::RESUBSCRIBE.delays();
    loop {
        let result = intake::run(
            client.clone(),
            subjects.clone(),
            Arc::clone(&inboxes),
            Arc::clone(&metrics),
        )
        .await;
        match result {
            // They had been working: a new failure starts the schedule over.
            Ok(()) => {
                tracing::warn!("report subscriptions ended; resubscribing");
                delays.reset();
            }
            Err(err) => {
                tracing::error!(error = %err, "cannot subscribe to proxy reports; retrying")
            }
        }
        tokio::time::sleep(delays.next().unwrap_or_default()).await;
    }
}

/// The API clients backends share, made for the first service that needs
/// each: one Docker engine connection (`DOCKER_HOST`), one Kubernetes client.
#[derive(Default)]
struct Platforms {
    engine: Option<Arc<Engine>>,
    cluster: Option<Cluster>,
}

impl Platforms {
    fn engine(&mut self, controller: &str) -> anyhow::Result<Arc<Engine>> {
        if let Some(engine) = &self.engine {
            return Ok(Arc::clone(engine));
        }
        let engine = Arc::new(Engine::from_env(controller)?);
        Ok(Arc::clone(self.engine.insert(engine)))
    }

    async fn cluster(&mut self) -> anyhow::Result<Cluster> {
        if let Some(cluster) = &self.cluster {
            return Ok(cluster.clone());
        }
        let cluster = Cluster::from_env().await.context(
            "no Kubernetes API to talk to: set KUBECONFIG, or run in a pod with a service account",
        )?;
        Ok(self.cluster.insert(cluster).clone())
    }
}

/// Where `controller.leader_election` keeps its lease. The NATS bucket is
/// created if missing, waiting for NATS if it is down.
async fn lease_store(
    settings: &LeaderElection,
    platforms: &mut Platforms,
    js: &jetstream::Context,
    replicas: usize,
) -> anyhow::Result<Box<dyn LeaseStore>> {
    match settings.lease {
        LeaseKind::Kubernetes => {
            let client = platforms.cluster().await?.client();
            Ok(Box::new(KubeLease::new(
                client,
                &settings.namespace,
                &settings.name,
            )))
        }
        LeaseKind::Nats => {
            let mut delays = rouse_nats::backoff::RESUBSCRIBE.delays();
            let bucket = loop {
                match bus::leases_bucket(js, replicas).await {
                    Ok(bucket) => break bucket,
                    Err(err) => tracing::warn!(error = %err, "cannot reach the leases bucket yet"),
                }
                tokio::time::sleep(delays.next().unwrap_or_default()).await;
            };
            Ok(Box::new(NatsLease::new(
                bucket,
                LEASES_BUCKET,
                &settings.name,
            )))
        }
    }
}

/// The backend a service's config names: its one backend, or a pooled one
/// over a backend per pool. Validation admits only complete backends, so a
/// missing one here is a config that bypassed it.
async fn build_backend(
    service: &rouse_nats::config::ServiceConfig,
    config: &Config,
    platforms: &mut Platforms,
    inbox: Arc<Inbox>,
) -> anyhow::Result<Arc<dyn Backend>> {
    match service.backend.selected() {
        Some(BackendSpec::Pools(pools)) => {
            let mut built = Vec::with_capacity(pools.len());
            for pool in pools {
                let spec = pool
                    .selected()
                    .with_context(|| format!("pool {} needs exactly one backend", pool.name))?;
                let backend = build_one(spec, service, Some(&pool.name), config, platforms, &inbox)
                    .await
                    .with_context(|| format!("pool {}", pool.name))?;
                built.push(Pool {
                    name: pool.name.clone(),
                    max_replicas: pool.max_replicas,
                    backend,
                });
            }
            Ok(Arc::new(PooledBackend::new(&service.name, built)))
        }
        Some(spec) => Ok(Arc::from(
            build_one(spec, service, None, config, platforms, &inbox).await?,
        )),
        None => anyhow::bail!("needs exactly one backend"),
    }
}

/// One backend of `service`, or of its pool `pool`.
async fn build_one(
    spec: BackendSpec<'_>,
    service: &rouse_nats::config::ServiceConfig,
    pool: Option<&str>,
    config: &Config,
    platforms: &mut Platforms,
    inbox: &Arc<Inbox>,
) -> anyhow::Result<Box<dyn Backend>> {
    let state_dir = &config.controller.state_dir;
    match spec {
        BackendSpec::Process(process) => {
            let process = process.clone();
            let backend = match pool {
                Some(pool) => ProcessBackend::for_pool(&service.name, pool, process, state_dir)?,
                None => ProcessBackend::new(&service.name, process, state_dir)?,
            };
            Ok(Box::new(backend))
        }
        BackendSpec::Docker(docker) => {
            let engine = platforms.engine(&config.controller.id)?;
            let backend =
                DockerBackend::new(&service.name, &config.controller.id, docker.clone(), engine);
            Ok(Box::new(match pool {
                Some(pool) => backend.in_pool(pool),
                None => backend,
            }))
        }
        BackendSpec::Kubernetes(kubernetes) => {
            let cluster = platforms.cluster().await?;
            let backend =
                KubernetesBackend::new(kubernetes.clone(), &cluster, Arc::clone(&inbox.wakeup))?;
            Ok(Box::new(backend))
        }
        BackendSpec::Pools(_) => anyhow::bail!("a pool cannot hold pools"),
    }
}
