//! The pure half of the docker backend: what a replica's container looks
//! like when it is created (from the service's config), and what a listed
//! container means to the reconcile loop (id, address, health, readiness).
//! No engine calls here, so all of it is unit-tested.

use std::collections::HashMap;

use bollard::models::{
    ContainerCreateBody, ContainerSummary, ContainerSummaryStateEnum, HealthConfig, HostConfig,
    NetworkingConfig, PortBinding, RestartPolicy, RestartPolicyNameEnum,
};
use rouse_nats::config::{DockerAddress, DockerBackend as DockerConfig};

use crate::backend::{Health, Readiness, Replica};

/// Label naming the service a container serves.
pub const SERVICE_LABEL: &str = "rouse.service";
/// Label naming the replica (the id the loop and the endpoint set use).
pub const REPLICA_LABEL: &str = "rouse.replica";
/// Label naming the controller (`controller.id`) that owns the container.
pub const CONTROLLER_LABEL: &str = "rouse.controller";
/// Label naming the pool (`backend.pools`) a container belongs to, so
/// two pools of one service on one engine each list only their own.
pub const POOL_LABEL: &str = "rouse.pool";
/// Label holding the replica's port on the `host` network, where each
/// replica listens on its own port, so a restarted controller knows it.
pub const PORT_LABEL: &str = "rouse.port";

/// The network name that means "share the host's network stack".
pub const HOST_NETWORK: &str = "host";

/// Who a container belongs to: the labels that find it again.
#[derive(Debug, Clone)]
pub struct Owner {
    pub service: String,
    pub controller: String,
    /// The pool, for a service with `backend.pools`.
    pub pool: Option<String>,
}

/// The engine's `label=k=v` filter for the containers of `controller`.
pub fn controller_filters(controller: &str) -> HashMap<String, Vec<String>> {
    HashMap::from([(
        "label".to_string(),
        vec![format!("{CONTROLLER_LABEL}={controller}")],
    )])
}

impl Owner {
    /// Whether a container of this controller serves this service (and
    /// this pool). Without a pool every container of the service is ours,
    /// so a service that no longer has pools adopts what they ran.
    pub fn owns(&self, summary: &ContainerSummary) -> bool {
        let Some(labels) = summary.labels.as_ref() else {
            return false;
        };
        let label = |key: &str| labels.get(key).map(String::as_str);
        label(SERVICE_LABEL) == Some(self.service.as_str())
            && self
                .pool
                .as_deref()
                .is_none_or(|pool| label(POOL_LABEL) == Some(pool))
    }

    /// What its replicas' ids start with: `<service>` or `<service>-<pool>`.
    pub fn prefix(&self) -> String {
        match &self.pool {
            Some(pool) => format!("{}-{pool}", self.service),
            None => self.service.clone(),
        }
    }

    /// The engine's name for a replica's container: `docker ps` shows it.
    pub fn container_name(replica: &str) -> String {
        format!("rouse-{replica}")
    }
}

/// The container of replica `replica`, listening on `port`: the image's
/// port, or on the host network a free port of the host.
pub fn create_body(
    config: &DockerConfig,
    owner: &Owner,
    replica: &str,
    port: u16,
) -> ContainerCreateBody {
    let on_host = config.network == HOST_NETWORK;
    let substitute = |argv: &Vec<String>| -> Vec<String> {
        argv.iter()
            .map(|arg| arg.replace("{port}", &port.to_string()))
            .collect()
    };
    let mut env: Vec<String> = config.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    env.push(format!("PORT={port}"));
    env.push(format!("ROUSE_REPLICA_ID={replica}"));
    env.push(format!("ROUSE_SERVICE={}", owner.service));

    let mut labels: HashMap<String, String> = config
        .labels
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    labels.insert(SERVICE_LABEL.into(), owner.service.clone());
    labels.insert(REPLICA_LABEL.into(), replica.into());
    labels.insert(CONTROLLER_LABEL.into(), owner.controller.clone());
    labels.insert(PORT_LABEL.into(), port.to_string());
    if let Some(pool) = &owner.pool {
        labels.insert(POOL_LABEL.into(), pool.clone());
    }

    let container_port = format!("{port}/tcp");
    let publish = !on_host && config.address == DockerAddress::Published;
    let port_bindings = publish.then(|| {
        HashMap::from([(
            container_port.clone(),
            Some(vec![PortBinding {
                host_ip: Some(config.publish_ip.to_string()),
                // Empty: the engine picks a free port, so replicas never clash.
                host_port: Some(String::new()),
            }]),
        )])
    });
    let host_config = HostConfig {
        network_mode: Some(config.network.clone()),
        port_bindings,
        binds: (!config.volumes.is_empty()).then(|| config.volumes.clone()),
        memory: config
            .memory
            .map(|m| i64::try_from(m.as_u64()).unwrap_or(i64::MAX)),
        nano_cpus: config.cpus.map(|c| (c * 1e9) as i64),
        // rouse replaces failed replicas itself; an engine restart would hide
        // the failure from it.
        restart_policy: Some(RestartPolicy {
            name: Some(RestartPolicyNameEnum::NO),
            maximum_retry_count: None,
        }),
        ..Default::default()
    };
    let networking_config = (!on_host).then(|| NetworkingConfig {
        endpoints_config: Some(HashMap::from([(
            config.network.clone(),
            Default::default(),
        )])),
    });
    ContainerCreateBody {
        image: Some(config.image.clone()),
        entrypoint: config.command.as_ref().map(substitute),
        cmd: config.args.as_ref().map(substitute),
        env: Some(env),
        labels: Some(labels),
        exposed_ports: (!on_host).then(|| vec![container_port]),
        stop_timeout: Some(config.stop_timeout.as_secs() as i64),
        healthcheck: (!config.healthcheck).then(|| HealthConfig {
            test: Some(vec!["NONE".into()]),
            ..Default::default()
        }),
        host_config: Some(host_config),
        networking_config,
        ..Default::default()
    }
}

/// What a listed container is, for the loop; `None` for one that carries no
/// replica label (not made by rouse, or edited by hand).
pub fn replica_of(config: &DockerConfig, summary: &ContainerSummary) -> Option<Listed> {
    let labels = summary.labels.as_ref()?;
    let id = labels.get(REPLICA_LABEL)?.clone();
    let container = summary.id.clone().unwrap_or_default();
    let running = matches!(
        summary.state,
        Some(
            ContainerSummaryStateEnum::RUNNING
                | ContainerSummaryStateEnum::PAUSED
                | ContainerSummaryStateEnum::RESTARTING
        )
    );
    if !running {
        return Some(Listed {
            container,
            replica: Replica {
                id,
                addr: String::new(),
                health: Health::Exited(state_word(summary)),
                readiness: Readiness::Probe,
            },
            exited: true,
        });
    }
    let health = match address_of(config, summary, labels) {
        Ok(addr) => (addr, Health::Running),
        Err(why) => (String::new(), Health::Exited(why)),
    };
    Some(Listed {
        container,
        replica: Replica {
            id,
            addr: health.0,
            health: health.1,
            readiness: readiness_of(summary.status.as_deref().unwrap_or("")),
        },
        exited: false,
    })
}

/// One listed container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// The engine's container id.
    pub container: String,
    pub replica: Replica,
    /// Stopped by itself (its exit reason is worth asking the engine for).
    pub exited: bool,
}

fn state_word(summary: &ContainerSummary) -> String {
    let state = summary
        .state
        .map(|s| s.to_string())
        .unwrap_or_else(|| "gone".into());
    match summary.status.as_deref() {
        Some(status) if !status.is_empty() => format!("container {state}: {status}"),
        _ => format!("container {state}"),
    }
}

/// `host:port` the proxies connect to.
fn address_of(
    config: &DockerConfig,
    summary: &ContainerSummary,
    labels: &HashMap<String, String>,
) -> Result<String, String> {
    if config.network == HOST_NETWORK {
        let port = labels
            .get(PORT_LABEL)
            .ok_or_else(|| format!("no {PORT_LABEL} label"))?;
        return Ok(format!("127.0.0.1:{port}"));
    }
    match config.address {
        DockerAddress::Published => summary
            .ports
            .iter()
            .flatten()
            .find(|p| p.private_port == config.port && p.public_port.is_some())
            .and_then(|p| {
                let ip = match p.ip.as_deref() {
                    // Published on every address: loopback is one of them.
                    None | Some("") | Some("0.0.0.0") => "127.0.0.1".to_string(),
                    Some("::") => "[::1]".to_string(),
                    Some(ip) if ip.contains(':') => format!("[{ip}]"),
                    Some(ip) => ip.to_string(),
                };
                p.public_port.map(|port| format!("{ip}:{port}"))
            })
            .ok_or_else(|| format!("port {}/tcp is not published", config.port)),
        DockerAddress::Container => summary
            .network_settings
            .as_ref()
            .and_then(|n| n.networks.as_ref())
            .and_then(|n| n.get(&config.network))
            .and_then(|e| e.ip_address.as_deref())
            .filter(|ip| !ip.is_empty())
            .map(|ip| format!("{ip}:{}", config.port))
            .ok_or_else(|| format!("no address on network {}", config.network)),
    }
}

/// The engine's health of a container with a HEALTHCHECK, as `docker ps`
/// shows it (`Up 3 seconds (healthy)`). Until the engine's first check
/// (which comes only after the check's interval) and for images without
/// one, the controller's probe decides, so a cold start is not held for the
/// interval; once the engine has a verdict, it stands.
fn readiness_of(status: &str) -> Readiness {
    if status.contains("(healthy)") {
        Readiness::Reported(true)
    } else if status.contains("(unhealthy)") {
        Readiness::Reported(false)
    } else {
        Readiness::Probe
    }
}

/// `name[:tag]` split for the engine's pull, which pulls every tag when
/// given none. A digest (`name@sha256:...`) stays whole.
pub fn split_reference(image: &str) -> (&str, &str) {
    if image.contains('@') {
        return (image, "");
    }
    let after_registry = image.rfind('/').map(|i| i + 1).unwrap_or(0);
    match image[after_registry..].rfind(':') {
        Some(i) => (
            &image[..after_registry + i],
            &image[after_registry + i + 1..],
        ),
        None => (image, "latest"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bollard::models::{ContainerSummaryNetworkSettings, EndpointSettings, PortSummary};

    fn config(yaml: &str) -> DockerConfig {
        serde_norway::from_str(yaml).expect("docker config")
    }

    fn owner() -> Owner {
        Owner {
            service: "echo".into(),
            controller: "ctl".into(),
            pool: None,
        }
    }

    #[test]
    fn containers_carry_the_labels_adoption_relies_on() {
        let cfg = config("{image: 'rouse:dev', port: 8080, labels: {team: web}}");
        let body = create_body(&cfg, &owner(), "echo-1", 8080);
        let labels = body.labels.expect("labels");
        assert_eq!(labels[SERVICE_LABEL], "echo");
        assert_eq!(labels[REPLICA_LABEL], "echo-1");
        assert_eq!(labels[CONTROLLER_LABEL], "ctl");
        assert_eq!(labels["team"], "web");
        assert_eq!(
            controller_filters("ctl")["label"],
            vec!["rouse.controller=ctl"]
        );
        let mine = ContainerSummary {
            labels: Some(labels.clone()),
            ..Default::default()
        };
        assert!(owner().owns(&mine));
        let other = Owner {
            service: "other".into(),
            controller: "ctl".into(),
            pool: None,
        };
        assert!(!other.owns(&mine));
    }

    #[test]
    fn pools_of_one_service_own_only_their_containers() {
        let cfg = config("{image: 'rouse:dev', port: 8080}");
        let pool = |name: &str| Owner {
            pool: Some(name.into()),
            ..owner()
        };
        let body = create_body(&cfg, &pool("b"), "echo-b-1", 8080);
        let labels = body.labels.expect("labels");
        assert_eq!(labels[POOL_LABEL], "b");
        assert!(body
            .env
            .expect("env")
            .contains(&"ROUSE_SERVICE=echo".to_string()));
        let in_b = ContainerSummary {
            labels: Some(labels),
            ..Default::default()
        };
        assert!(pool("b").owns(&in_b));
        assert!(!pool("a").owns(&in_b));
        // The service without pools takes every container it finds.
        assert!(owner().owns(&in_b));
        let plain = ContainerSummary {
            labels: create_body(&cfg, &owner(), "echo-1", 8080).labels,
            ..Default::default()
        };
        assert!(!pool("a").owns(&plain));
        assert_eq!(pool("b").prefix(), "echo-b");
        assert_eq!(owner().prefix(), "echo");
    }

    #[test]
    fn docker_run_keys_map_onto_the_create_call() {
        let cfg = config(
            "{image: x, port: 8080, command: [/bin/app, '--port={port}'], args: [serve],
              memory: 256MiB, cpus: 0.5, volumes: ['data:/data:ro'], env: {A: b},
              healthcheck: false, stop_timeout: 3s}",
        );
        let body = create_body(&cfg, &owner(), "echo-1", 8080);
        assert_eq!(
            body.entrypoint,
            Some(vec!["/bin/app".to_string(), "--port=8080".to_string()])
        );
        assert_eq!(body.cmd, Some(vec!["serve".to_string()]));
        let env = body.env.expect("env");
        assert!(env.contains(&"A=b".to_string()) && env.contains(&"PORT=8080".to_string()));
        assert_eq!(body.stop_timeout, Some(3));
        assert_eq!(
            body.healthcheck.and_then(|h| h.test),
            Some(vec!["NONE".to_string()])
        );
        let host = body.host_config.expect("host config");
        assert_eq!(host.memory, Some(256 * 1024 * 1024));
        assert_eq!(host.nano_cpus, Some(500_000_000));
        assert_eq!(host.binds, Some(vec!["data:/data:ro".to_string()]));
        assert_eq!(host.network_mode.as_deref(), Some("rouse"));
        let bindings = host.port_bindings.expect("published");
        let binding = &bindings["8080/tcp"].as_ref().expect("binding")[0];
        assert_eq!(binding.host_ip.as_deref(), Some("127.0.0.1"));
        assert_eq!(binding.host_port.as_deref(), Some(""));
    }

    #[test]
    fn the_host_network_publishes_nothing_and_uses_the_replica_port() {
        let cfg = config("{image: x, port: 8080, network: host, args: ['--port', '{port}']}");
        let body = create_body(&cfg, &owner(), "echo-1", 41000);
        assert_eq!(
            body.cmd,
            Some(vec!["--port".to_string(), "41000".to_string()])
        );
        let host = body.host_config.expect("host config");
        assert!(host.port_bindings.is_none());
        assert!(body.networking_config.is_none());
        assert_eq!(body.labels.expect("labels")[PORT_LABEL], "41000");
    }

    fn summary(state: ContainerSummaryStateEnum, status: &str) -> ContainerSummary {
        ContainerSummary {
            id: Some("c0ffee".into()),
            labels: Some(HashMap::from([
                (REPLICA_LABEL.to_string(), "echo-1".to_string()),
                (PORT_LABEL.to_string(), "41000".to_string()),
            ])),
            state: Some(state),
            status: Some(status.into()),
            ports: Some(vec![PortSummary {
                ip: Some("127.0.0.1".into()),
                private_port: 8080,
                public_port: Some(32768),
                typ: None,
            }]),
            network_settings: Some(ContainerSummaryNetworkSettings {
                networks: Some(HashMap::from([(
                    "rouse".to_string(),
                    EndpointSettings {
                        ip_address: Some("172.17.0.2".into()),
                        ..Default::default()
                    },
                )])),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_running_container_is_reached_as_configured() {
        let running = summary(ContainerSummaryStateEnum::RUNNING, "Up 2 seconds");
        let published = config("{image: x, port: 8080}");
        let listed = replica_of(&published, &running).expect("a replica");
        assert_eq!(listed.replica.addr, "127.0.0.1:32768");
        assert_eq!(listed.replica.health, Health::Running);
        assert_eq!(listed.replica.readiness, Readiness::Probe);

        let direct = config("{image: x, port: 8080, address: container}");
        let listed = replica_of(&direct, &running).expect("a replica");
        assert_eq!(listed.replica.addr, "172.17.0.2:8080");

        let host = config("{image: x, port: 8080, network: host}");
        let listed = replica_of(&host, &running).expect("a replica");
        assert_eq!(listed.replica.addr, "127.0.0.1:41000");

        let elsewhere = config("{image: x, port: 8080, address: container, network: other}");
        let listed = replica_of(&elsewhere, &running).expect("a replica");
        assert!(
            matches!(&listed.replica.health, Health::Exited(why) if why.contains("network other")),
            "{listed:?}"
        );
    }

    #[test]
    fn the_images_healthcheck_decides_once_the_engine_has_checked() {
        let cfg = config("{image: x, port: 8080}");
        for (status, readiness) in [
            ("Up 1 second (health: starting)", Readiness::Probe),
            ("Up 9 seconds (healthy)", Readiness::Reported(true)),
            ("Up 2 minutes (unhealthy)", Readiness::Reported(false)),
            ("Up 2 minutes", Readiness::Probe),
        ] {
            let listed = replica_of(&cfg, &summary(ContainerSummaryStateEnum::RUNNING, status))
                .expect("a replica");
            assert_eq!(listed.replica.readiness, readiness, "{status}");
        }
    }

    #[test]
    fn an_exited_container_is_reported_with_its_status() {
        let cfg = config("{image: x, port: 8080}");
        let listed = replica_of(
            &cfg,
            &summary(
                ContainerSummaryStateEnum::EXITED,
                "Exited (3) 2 seconds ago",
            ),
        )
        .expect("a replica");
        assert!(listed.exited);
        assert_eq!(
            listed.replica.health,
            Health::Exited("container exited: Exited (3) 2 seconds ago".into())
        );
        let mut foreign = summary(ContainerSummaryStateEnum::RUNNING, "Up");
        foreign.labels = Some(HashMap::new());
        assert_eq!(replica_of(&cfg, &foreign), None);
    }

    #[test]
    fn image_references_split_into_name_and_tag() {
        assert_eq!(split_reference("rouse"), ("rouse", "latest"));
        assert_eq!(split_reference("rouse:dev"), ("rouse", "dev"));
        assert_eq!(
            split_reference("localhost:5000/team/rouse"),
            ("localhost:5000/team/rouse", "latest")
        );
        assert_eq!(
            split_reference("localhost:5000/rouse:1.2"),
            ("localhost:5000/rouse", "1.2")
        );
        assert_eq!(
            split_reference("rouse@sha256:abc"),
            ("rouse@sha256:abc", "")
        );
    }
}
