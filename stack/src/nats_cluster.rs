//! A routed cluster of nats-servers with clustered JetStream on 127.0.0.1,
//! for the tests that take a NATS node away under load.
//!
//! Every node is a [`NatsServer`] of its own (client, monitoring and route
//! port, store dir, log, server name `n<i>`), routed to all the others
//! under one cluster name; the flags say it all, so no config file is
//! written. The nodes start together and are waited for together: none is
//! healthy before a JetStream meta leader is elected, and that takes a
//! quorum of them. What is asked of the monitoring ports (`/jsz`,
//! `/connz`) counts only the nodes that answer, so it keeps working with a
//! node down, which is the point.
//!
//! A [`Stack`] built with [`StackBuilder::nats_cluster`] runs on such a
//! cluster: node 0 is its `nats` (the field every test knows), the cluster
//! keeps the others, and the proxies and the controller get every node's
//! URL in `nats.url` and `nats.replicas` of at most 3.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use serde_json::Value;

use crate::config::Config;
use crate::nats::NatsServer;
use crate::stack::{Stack, StackBuilder};

/// The `--cluster_name` of every cluster started here.
pub const CLUSTER_NAME: &str = "rouse-e2e";

/// How long a cluster gets to come up and elect its meta leader.
const CLUSTER_DEADLINE: Duration = Duration::from_secs(60);
/// How long a killed node gets to be gone.
const EXIT_DEADLINE: Duration = Duration::from_secs(30);
/// Time one monitoring request may take.
const MONITOR_TIMEOUT: Duration = Duration::from_secs(3);

/// A running cluster; see the module docs.
pub struct NatsCluster {
    /// `None` for the node a [`Stack`] holds as its `nats`.
    nodes: Vec<Option<NatsServer>>,
    names: Vec<String>,
    ports: Vec<u16>,
    monitors: Vec<SocketAddr>,
}

impl NatsCluster {
    /// Starts `n` routed nodes with their stores and logs under `dir`, and
    /// waits until every one is healthy and they agree on a meta leader.
    pub async fn start(dir: &Path, n: usize) -> anyhow::Result<NatsCluster> {
        anyhow::ensure!(n >= 1, "a NATS cluster needs at least one node");
        let ports: Vec<u16> = (0..n).map(|_| crate::free_port()).collect();
        let monitor_ports: Vec<u16> = (0..n).map(|_| crate::free_port()).collect();
        let route_ports: Vec<u16> = (0..n).map(|_| crate::free_port()).collect();
        let names: Vec<String> = (0..n).map(|i| format!("n{i}")).collect();
        let mut nodes = Vec::with_capacity(n);
        for i in 0..n {
            let node_dir = dir.join(format!("nats-{i}"));
            let store_dir = node_dir.join("store");
            std::fs::create_dir_all(&store_dir)
                .with_context(|| format!("create {}", store_dir.display()))?;
            let routes: Vec<String> = (0..n)
                .filter(|&j| j != i)
                .map(|j| format!("nats://127.0.0.1:{}", route_ports[j]))
                .collect();
            let mut args: Vec<String> = vec![
                "--server_name".into(),
                names[i].clone(),
                "-a".into(),
                "127.0.0.1".into(),
                "-p".into(),
                ports[i].to_string(),
                "-m".into(),
                monitor_ports[i].to_string(),
                "-js".into(),
                "-sd".into(),
                store_dir.to_string_lossy().into_owned(),
                "--cluster_name".into(),
                CLUSTER_NAME.into(),
                "--cluster".into(),
                format!("nats://127.0.0.1:{}", route_ports[i]),
            ];
            if !routes.is_empty() {
                args.push("--routes".into());
                args.push(routes.join(","));
            }
            let args: Vec<OsString> = args.into_iter().map(OsString::from).collect();
            let log = dir.join(format!("nats-server-{i}.log"));
            nodes.push(Some(NatsServer::spawn_node(
                &format!("nats-server-{i}"),
                &args,
                (ports[i], monitor_ports[i]),
                store_dir,
                &log,
            )?));
        }
        let mut cluster = NatsCluster {
            nodes,
            names,
            ports,
            monitors: monitor_ports
                .iter()
                .map(|&p| SocketAddr::from(([127, 0, 0, 1], p)))
                .collect(),
        };
        for node in cluster.nodes.iter_mut().flatten() {
            node.wait_node_ready().await?;
        }
        cluster.wait_meta_leader(CLUSTER_DEADLINE).await?;
        Ok(cluster)
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// Every node's URL, comma-separated: a `nats.url` for the cluster.
    pub fn urls(&self) -> String {
        (0..self.len())
            .map(|i| self.url(i))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// `nats://127.0.0.1:<port>` of node `i`.
    pub fn url(&self, i: usize) -> String {
        format!("nats://127.0.0.1:{}", self.ports[i])
    }

    /// The server name of node `i` (`n<i>`), as `/jsz` names leaders.
    pub fn name(&self, i: usize) -> &str {
        &self.names[i]
    }

    /// The node called `name`.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.names.iter().position(|n| n == name)
    }

    /// The monitoring address of node `i`.
    pub fn monitor(&self, i: usize) -> SocketAddr {
        self.monitors[i]
    }

    /// Node `i`; panics for the one a stack holds (use
    /// [`Stack::nats_node`]).
    pub fn node(&mut self, i: usize) -> &mut NatsServer {
        self.nodes[i]
            .as_mut()
            .unwrap_or_else(|| panic!("NATS node {i} is the stack's `nats`"))
    }

    /// Takes node `i` out, leaving its slot to whoever holds it now.
    fn lend(&mut self, i: usize) -> Option<NatsServer> {
        self.nodes[i].take()
    }

    /// SIGKILLs node `i` and waits until it is gone.
    pub async fn kill(&mut self, i: usize) {
        kill_node(self.node(i)).await;
    }

    /// Starts node `i` again (same ports, store and name) and waits until
    /// it is healthy, which includes having caught up with JetStream.
    pub async fn restart(&mut self, i: usize) -> anyhow::Result<()> {
        restart_node(self.node(i)).await
    }

    /// `GET <path>` on the monitoring port of every node that answers, as
    /// (node, JSON).
    async fn ask_all(&self, path: &str) -> Vec<(usize, Value)> {
        let mut answers = Vec::new();
        for (i, monitor) in self.monitors.iter().enumerate() {
            let Ok((200, body)) = crate::http_get(*monitor, path, MONITOR_TIMEOUT).await else {
                continue;
            };
            if let Ok(doc) = serde_json::from_str::<Value>(&body) {
                answers.push((i, doc));
            }
        }
        answers
    }

    /// The one name every answering node gives (`pick` reads it from a
    /// node's document), if they all give one and it is a node that
    /// answered: a node that is gone is no leader any more.
    async fn agreed(&self, path: &str, pick: impl Fn(&Value) -> Option<String>) -> Option<String> {
        let answers = self.ask_all(path).await;
        let mut named = answers.iter().map(|(_, doc)| pick(doc));
        let first = named.next()??;
        if !named.all(|n| n.as_deref() == Some(first.as_str())) {
            return None;
        }
        let leader = self.index_of(&first)?;
        answers.iter().any(|(i, _)| *i == leader).then_some(first)
    }

    /// The JetStream meta leader, when the nodes that answer agree on a
    /// live one.
    pub async fn meta_leader(&self) -> Option<String> {
        self.agreed("/jsz", |doc| {
            let leader = doc.get("meta_cluster")?.get("leader")?.as_str()?;
            (!leader.is_empty()).then(|| leader.to_string())
        })
        .await
    }

    /// Waits until [`NatsCluster::meta_leader`] names one; returns it.
    pub async fn wait_meta_leader(&self, timeout: Duration) -> anyhow::Result<String> {
        match crate::poll(timeout, || self.meta_leader()).await {
            Some(leader) => Ok(leader),
            None => anyhow::bail!(
                "the NATS cluster elected no JetStream meta leader within {timeout:?}; logs:\n{}",
                self.logs_tail(20)
            ),
        }
    }

    /// The leader of stream `stream` (e.g. `ROUSE_EVENTS`,
    /// `KV_rouse-endpoints`), when the nodes that answer agree on a live one.
    pub async fn stream_leader(&self, stream: &str) -> Option<String> {
        self.agreed("/jsz?accounts=true&streams=true", |doc| {
            let accounts = doc.get("account_details")?.as_array()?;
            accounts
                .iter()
                .filter_map(|a| a.get("stream_detail")?.as_array())
                .flatten()
                .find(|s| s.get("name").and_then(Value::as_str) == Some(stream))?
                .get("cluster")?
                .get("leader")?
                .as_str()
                .filter(|l| !l.is_empty())
                .map(str::to_string)
        })
        .await
    }

    /// The nodes that have a client connection whose name starts with
    /// `client` (`rouse-controller`, `rouse-proxy`), by their `/connz`.
    pub async fn serving(&self, client: &str) -> Vec<usize> {
        let answers = self.ask_all("/connz?limit=1024").await;
        answers
            .into_iter()
            .filter(|(_, doc)| {
                doc.get("connections")
                    .and_then(Value::as_array)
                    .is_some_and(|conns| {
                        conns.iter().any(|c| {
                            c.get("name")
                                .and_then(Value::as_str)
                                .is_some_and(|n| n.starts_with(client))
                        })
                    })
            })
            .map(|(i, _)| i)
            .collect()
    }

    /// The last `lines` lines of every node's log this cluster holds.
    fn logs_tail(&self, lines: usize) -> String {
        let mut out = String::new();
        for (i, node) in self.nodes.iter().enumerate() {
            if let Some(node) = node {
                out.push_str(&format!("\n=== nats-server-{i} ===\n"));
                out.push_str(&crate::tail(&node.logs(), lines));
                out.push('\n');
            }
        }
        out
    }
}

async fn kill_node(node: &mut NatsServer) {
    node.proc_mut().sigkill();
    node.proc_mut().wait_exit(EXIT_DEADLINE).await;
}

async fn restart_node(node: &mut NatsServer) -> anyhow::Result<()> {
    anyhow::ensure!(
        !node.proc_mut().is_running(),
        "nats node on port {} is still running",
        node.port()
    );
    node.proc_mut().restart();
    node.wait_node_ready().await
}

impl StackBuilder {
    /// Runs the stack on a routed cluster of `nodes` nats-servers instead of
    /// one (see the module docs); at least 1.
    pub fn nats_cluster(mut self, nodes: usize) -> Self {
        assert!(nodes >= 1, "a NATS cluster needs at least one node");
        self.nats_cluster = Some(nodes);
        self
    }
}

/// The NATS of a stack being started: one server, or a cluster whose node
/// 0 is handed out as the stack's `nats`; `config` gets the URL(s) and, for
/// a cluster, the replicas.
pub(crate) async fn start_for_stack(
    dir: &Path,
    port: Option<u16>,
    cluster_nodes: Option<usize>,
    config: &mut Config,
) -> anyhow::Result<(NatsServer, Option<NatsCluster>)> {
    let Some(n) = cluster_nodes else {
        let nats = NatsServer::try_start(dir, port).await?;
        config.nats_url = nats.url();
        return Ok((nats, None));
    };
    anyhow::ensure!(
        port.is_none(),
        "a stack on a NATS cluster takes free ports, not a fixed one"
    );
    let mut cluster = NatsCluster::start(dir, n).await?;
    config.nats_url = cluster.urls();
    config.nats_replicas = Some(n.min(3));
    let first = cluster
        .lend(0)
        .context("a new cluster holds all its nodes")?;
    Ok((first, Some(cluster)))
}

impl Stack {
    /// The NATS cluster the stack runs on, if it was built with
    /// [`StackBuilder::nats_cluster`].
    pub fn nats_cluster(&self) -> Option<&NatsCluster> {
        self.nats_cluster.as_ref()
    }

    /// NATS node `i`: 0 is `nats`, the others are the cluster's.
    pub fn nats_node(&mut self, i: usize) -> &mut NatsServer {
        match (i, self.nats_cluster.as_mut()) {
            (0, _) => &mut self.nats,
            (_, Some(cluster)) => cluster.node(i),
            (_, None) => panic!("the stack runs on one NATS server, not a cluster"),
        }
    }

    /// SIGKILLs NATS node `i` and waits until it is gone.
    pub async fn kill_nats_node(&mut self, i: usize) {
        kill_node(self.nats_node(i)).await;
    }

    /// Starts NATS node `i` again and waits until it is healthy.
    pub async fn restart_nats_node(&mut self, i: usize) -> anyhow::Result<()> {
        restart_node(self.nats_node(i)).await
    }

    /// The logs of the cluster's nodes other than `nats`, for failure
    /// messages.
    pub(crate) fn nats_peer_logs(&self) -> Vec<(String, String)> {
        let Some(cluster) = &self.nats_cluster else {
            return Vec::new();
        };
        cluster
            .nodes
            .iter()
            .enumerate()
            .filter_map(|(i, node)| Some((format!("nats-server-{i}"), node.as_ref()?.logs())))
            .collect()
    }

    /// SIGTERMs the cluster's nodes other than `nats`, each with `grace`.
    pub(crate) async fn terminate_nats_peers(&mut self, grace: Duration) {
        if let Some(cluster) = &mut self.nats_cluster {
            for node in cluster.nodes.iter_mut().flatten() {
                node.proc_mut().terminate(grace).await;
            }
        }
    }
}
