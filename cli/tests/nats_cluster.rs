//! rouse's JetStream set-up and the CLI on a three-node NATS cluster: what
//! `nats.replicas` does to streams that exist already, a bucket two clients
//! create at once (a proxy and a controller starting together), and `rouse
//! events` given every node's URL while the events stream's leader is down.

mod support;

use std::time::Duration;

use async_nats::jetstream;
use rouse_nats::bus;
use rouse_nats::config::NatsConfig;
use rouse_nats::messages::{self, Scaled, VERSION};
use rouse_nats::subjects::{EVENTS_STREAM, SERVICES_BUCKET};
use rouse_stack::NatsCluster;
use support::run;

async fn start() -> (NatsCluster, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let cluster = NatsCluster::start(dir.path(), 3)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    (cluster, dir)
}

/// A JetStream client of the whole cluster, connected as rouse connects.
async fn client(cluster: &NatsCluster) -> jetstream::Context {
    let config = NatsConfig {
        url: cluster.urls(),
        ..NatsConfig::default()
    };
    let bus = bus::connect(&config, "rouse-cli-test")
        .await
        .expect("connect");
    let mut connects = bus.connects.clone();
    tokio::time::timeout(Duration::from_secs(30), connects.wait_for(|n| *n > 0))
        .await
        .expect("connected within 30 s")
        .expect("connection events");
    jetstream::new(bus.client)
}

async fn replicas(js: &jetstream::Context, stream: &str) -> usize {
    let mut stream = js.get_stream(stream).await.expect("stream");
    stream
        .info()
        .await
        .expect("stream info")
        .config
        .num_replicas
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_found_with_fewer_replicas_are_raised_to_nats_replicas() {
    let (cluster, _dir) = start().await;
    let js = client(&cluster).await;

    bus::events_stream(&js, "rouse", 1)
        .await
        .expect("R1 events");
    bus::services_bucket(&js, 1).await.expect("R1 bucket");
    let kv_stream = format!("KV_{SERVICES_BUCKET}");
    assert_eq!(replicas(&js, EVENTS_STREAM).await, 1);
    assert_eq!(replicas(&js, &kv_stream).await, 1);

    bus::events_stream(&js, "rouse", 3)
        .await
        .expect("R3 events");
    bus::services_bucket(&js, 3).await.expect("R3 bucket");
    assert_eq!(replicas(&js, EVENTS_STREAM).await, 3);
    assert_eq!(replicas(&js, &kv_stream).await, 3);

    // Asking for fewer never lowers what is there.
    bus::events_stream(&js, "rouse", 1)
        .await
        .expect("events again");
    assert_eq!(replicas(&js, EVENTS_STREAM).await, 3);
}

/// The client whose create the server answers second used to get the
/// stream before its replicas had elected a leader, and its first read was
/// never answered: one of the two clients lost it every time it was tried
/// (about half of all first reads). Waiting for the leader leaves it rare (about
/// one in fifty on a loaded machine: the server can still drop one), and
/// the binaries retry their reads; so this asserts "rare", as a bound well
/// below half. (nats-server 2.9 also drops the answer to one of two racing
/// creates now and then; the binaries retry the open, and so does this.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bucket_two_clients_create_at_once_answers_their_first_reads() {
    /// Whether the first read after opening was answered.
    async fn open_and_read(url: String) -> Result<bool, String> {
        let client = async_nats::connect(url).await.map_err(|e| e.to_string())?;
        let mut js = jetstream::new(client);
        // A lost read is never answered, however long it waits: a generous
        // timeout still sees it, and spares a loaded machine.
        js.set_timeout(Duration::from_secs(10));
        let mut opened = Err(String::new());
        for _ in 0..3 {
            opened = bus::endpoints_bucket(&js, 3)
                .await
                .map_err(|e| e.to_string());
            if opened.is_ok() {
                break;
            }
        }
        Ok(opened?.entry("echo").await.is_ok())
    }
    const ROUNDS: usize = 5;
    let mut lost = Vec::new();
    for round in 0..ROUNDS {
        let (cluster, _dir) = start().await;
        let (a, b) = tokio::join!(
            open_and_read(cluster.url(round % 3)),
            open_and_read(cluster.url((round + 1) % 3)),
        );
        for (client, answered) in [("first", a), ("second", b)] {
            match answered {
                Ok(true) => {}
                Ok(false) => lost.push(format!("round {round}, {client} client")),
                Err(e) => panic!("round {round}, {client} client: cannot open: {e}"),
            }
        }
    }
    assert!(
        lost.len() <= 2,
        "{} of {} first reads lost (without the wait: about half): {lost:?}",
        lost.len(),
        2 * ROUNDS
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_reads_the_stream_with_its_leader_down() {
    let (mut cluster, _dir) = start().await;
    let js = client(&cluster).await;
    bus::events_stream(&js, "rouse", 3)
        .await
        .expect("R3 events");
    let event = Scaled {
        v: VERSION,
        service: "web".into(),
        from: 0,
        to: 1,
        reason: "wake".into(),
        at_ms: 1_796_220_000_000,
    };
    js.publish("rouse.scaled.web", messages::encode(&event))
        .await
        .expect("publish")
        .await
        .expect("stored");

    let leader = rouse_stack::poll(Duration::from_secs(30), || {
        cluster.stream_leader(EVENTS_STREAM)
    })
    .await
    .expect("the events stream has a leader");
    let victim = cluster.index_of(&leader).expect("the leader is a node");
    cluster.kill(victim).await;

    // Every URL, the dead node's too: the client skips it.
    let all = run(&cluster.urls(), &["events", "--from-start", "-o", "json"])
        .await
        .expect_code(0);
    assert!(
        all.stdout.contains("\"service\":\"web\"") && all.stdout.contains("\"reason\":\"wake\""),
        "{all:#?}"
    );
}
