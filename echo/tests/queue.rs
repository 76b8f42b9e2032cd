//! The queue worker and `rouse-echo publish` against a real nats-server
//! (JetStream, on a free loopback port): real `rouse-echo` processes, the
//! ids they report on their done subject, and what the consumer and the
//! stream say afterwards.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::net::SocketAddr;
use std::process::{ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, stream};
use futures::StreamExt as _;
use rouse_stack::{free_port, http_get, poll, wait_http_ok, NatsServer, Proc};
use tempfile::TempDir;

/// Generous bound for anything that should happen "soon".
const DEADLINE: Duration = Duration::from_secs(60);
/// Bound for one `rouse-echo publish` run.
const PUBLISH_DEADLINE: Duration = Duration::from_secs(60);
const STREAM: &str = "JOBS";
const SUBJECT: &str = "jobs.new";
const CONSUMER: &str = "workers";
const DONE: &str = "jobs.done";

fn echo_bin() -> &'static str {
    env!("CARGO_BIN_EXE_rouse-echo")
}

/// A private nats-server, and a client of it for the test's own checks.
struct Nats {
    // Dropped in this order: the server is gone before its store dir.
    client: async_nats::Client,
    server: NatsServer,
    dir: TempDir,
}

impl Nats {
    async fn start() -> Nats {
        let dir = tempfile::tempdir().expect("temp dir");
        let server = NatsServer::start_in(dir.path()).await;
        let client = async_nats::connect(server.url())
            .await
            .expect("connecting the test client");
        Nats {
            dir,
            server,
            client,
        }
    }

    fn url(&self) -> String {
        self.server.url()
    }

    fn js(&self) -> jetstream::Context {
        jetstream::new(self.client.clone())
    }

    /// `rouse-echo publish --nats-url <this server> <args>`, which must
    /// succeed.
    async fn publish(&self, args: &[&str]) {
        let url = self.url();
        let mut all = vec!["--nats-url", url.as_str()];
        all.extend_from_slice(args);
        let out = publish(&all).await;
        assert_eq!(
            out.status.code(),
            Some(0),
            "publish {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Creates the queue (stream and consumer) with no messages in it.
    async fn create_queue(&self, ack_wait: &str) {
        self.publish(&[
            "--stream",
            STREAM,
            "--subject",
            SUBJECT,
            "--consumer",
            CONSUMER,
            "--create",
            "--ack-wait",
            ack_wait,
            "--count",
            "0",
        ])
        .await;
    }

    async fn publish_ids(&self, count: u64, extra: &[&str]) {
        let count = count.to_string();
        let mut args = vec!["--stream", STREAM, "--subject", SUBJECT, "--count", &count];
        args.extend_from_slice(extra);
        self.publish(&args).await;
    }

    async fn consumer_info(&self) -> consumer::Info {
        let stream = self.js().get_stream(STREAM).await.expect("the stream");
        stream.consumer_info(CONSUMER).await.expect("consumer info")
    }

    async fn stream_info(&self) -> stream::Info {
        let mut stream = self.js().get_stream(STREAM).await.expect("the stream");
        stream.info().await.expect("stream info").clone()
    }

    /// Waits until `count` workers have a pull waiting on the consumer, so
    /// that what is published next is spread over all of them.
    async fn wait_for_pulls(&self, count: usize) {
        let waiting = poll(DEADLINE, || async {
            let info = self.consumer_info().await;
            (info.num_waiting >= count).then_some(())
        })
        .await;
        assert!(waiting.is_some(), "never {count} pulls waiting");
    }

    /// Waits until the consumer has nothing pending or unacked and the
    /// (WorkQueue) stream holds no message.
    async fn wait_drained(&self) {
        let drained = poll(DEADLINE, || async {
            let info = self.consumer_info().await;
            let messages = self.stream_info().await.state.messages;
            (info.num_pending == 0 && info.num_ack_pending == 0 && messages == 0).then_some(())
        })
        .await;
        if drained.is_none() {
            let info = self.consumer_info().await;
            let messages = self.stream_info().await.state.messages;
            panic!(
                "not drained: num_pending {}, num_ack_pending {}, stream messages {messages}",
                info.num_pending, info.num_ack_pending
            );
        }
    }
}

/// Every payload seen on the done subject, collected in the background.
struct Done {
    seen: Arc<Mutex<Vec<u64>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Done {
    async fn subscribe(nats: &Nats) -> Done {
        let mut subscriber = nats
            .client
            .subscribe(DONE)
            .await
            .expect("subscribing to the done subject");
        // The subscription is registered on the server before any worker
        // can publish to it.
        nats.client.flush().await.expect("flush");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&seen);
        let task = tokio::spawn(async move {
            while let Some(message) = subscriber.next().await {
                let text = String::from_utf8_lossy(&message.payload).into_owned();
                let id = text
                    .parse()
                    .unwrap_or_else(|_| panic!("done payload {text:?}"));
                sink.lock().expect("done list").push(id);
            }
        });
        Done { seen, task }
    }

    fn distinct(&self) -> BTreeSet<u64> {
        self.seen
            .lock()
            .expect("done list")
            .iter()
            .copied()
            .collect()
    }

    fn total(&self) -> usize {
        self.seen.lock().expect("done list").len()
    }

    /// Waits until every id in `0..count` was seen at least once.
    async fn wait_for_all(&self, count: u64) {
        let all = poll(DEADLINE, || async {
            (self.distinct().len() as u64 >= count).then_some(())
        })
        .await;
        let distinct = self.distinct();
        let missing: Vec<u64> = (0..count).filter(|id| !distinct.contains(id)).collect();
        assert!(
            all.is_some() && missing.is_empty(),
            "ids never processed: {missing:?}"
        );
        assert!(distinct.iter().all(|&id| id < count), "{distinct:?}");
    }
}

impl Drop for Done {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A `rouse-echo` queue worker process (killed on drop).
struct Worker {
    proc: Proc,
    http: SocketAddr,
}

impl Worker {
    /// Spawns a worker of the test queue; does not wait for it.
    fn spawn(dir: &std::path::Path, nats_url: &str, id: &str, work_ms: u64) -> Worker {
        let port = free_port();
        let args: Vec<OsString> = [
            "--port",
            &port.to_string(),
            "--id",
            id,
            "--nats-url",
            nats_url,
            "--queue-stream",
            STREAM,
            "--queue-consumer",
            CONSUMER,
            "--work-ms",
            &work_ms.to_string(),
            "--done-subject",
            DONE,
        ]
        .iter()
        .map(OsString::from)
        .collect();
        let log = dir.join(format!("{id}.log"));
        let proc = Proc::spawn(id, echo_bin().as_ref(), &args, &BTreeMap::new(), &log);
        Worker {
            proc,
            http: SocketAddr::from(([127, 0, 0, 1], port)),
        }
    }

    /// Spawns a worker and waits until it serves `/healthz`.
    async fn start(nats: &Nats, id: &str, work_ms: u64) -> Worker {
        let mut worker = Worker::spawn(nats.dir.path(), &nats.url(), id, work_ms);
        worker.wait_healthy().await;
        worker
    }

    async fn wait_healthy(&mut self) {
        let ready = wait_http_ok(self.http, "/healthz", DEADLINE, Some(&mut self.proc)).await;
        if let Err(err) = ready {
            panic!("{err:#}\n{}", self.proc.logs());
        }
    }

    /// `processed` from `/stats`.
    async fn processed(&self) -> u64 {
        let (status, body) = http_get(self.http, "/stats", Duration::from_secs(10))
            .await
            .expect("GET /stats");
        assert_eq!(status, 200, "{body}");
        let stats: serde_json::Value = serde_json::from_str(&body).expect("stats json");
        stats["processed"].as_u64().expect("a processed count")
    }

    /// Waits until the worker's log contains `text`.
    async fn wait_for_log(&self, text: &str) {
        let found = poll(DEADLINE, || async {
            self.proc.logs().contains(text).then_some(())
        })
        .await;
        assert!(
            found.is_some(),
            "{text:?} never logged; log:\n{}",
            self.proc.logs()
        );
    }

    /// SIGTERM, then the exit status and how long the exit took.
    async fn terminate(&mut self) -> (ExitStatus, Duration) {
        let start = Instant::now();
        self.proc.sigterm();
        let status = self.proc.wait_exit(DEADLINE).await;
        (status, start.elapsed())
    }
}

/// Runs `rouse-echo publish <args>`, bounded by [`PUBLISH_DEADLINE`].
async fn publish(args: &[&str]) -> Output {
    let child = tokio::process::Command::new(echo_bin())
        .arg("publish")
        .args(args)
        .env_remove("NATS_URL")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(PUBLISH_DEADLINE, child)
        .await
        .expect("rouse-echo publish did not finish in time")
        .expect("running rouse-echo publish")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_process_every_message_once_and_drain_the_queue() {
    const COUNT: u64 = 300;
    let nats = Nats::start().await;
    let done = Done::subscribe(&nats).await;

    // publish --create: the stream and the consumer, and its summary line.
    let url = nats.url();
    let out = publish(&[
        "--nats-url",
        &url,
        "--stream",
        STREAM,
        "--subject",
        SUBJECT,
        "--consumer",
        CONSUMER,
        "--create",
        "--count",
        "0",
    ])
    .await;
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let summary: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("one JSON summary line");
    assert_eq!(
        summary,
        serde_json::json!({"published": 0, "stream": STREAM, "subject": SUBJECT})
    );
    let stream = nats.stream_info().await;
    assert_eq!(stream.config.retention, stream::RetentionPolicy::WorkQueue);
    assert_eq!(stream.config.subjects, [SUBJECT]);
    let consumer = nats.consumer_info().await;
    assert_eq!(consumer.config.durable_name.as_deref(), Some(CONSUMER));
    assert_eq!(consumer.config.ack_policy, consumer::AckPolicy::Explicit);
    assert_eq!(consumer.config.ack_wait, Duration::from_secs(30));

    let a = Worker::start(&nats, "worker-a", 0).await;
    let b = Worker::start(&nats, "worker-b", 0).await;
    nats.wait_for_pulls(2).await;
    // A Work-Ms header on every message: a little work, so both share it.
    nats.publish_ids(COUNT, &["--work-ms", "2"]).await;

    done.wait_for_all(COUNT).await;
    nats.wait_drained().await;
    let (processed_a, processed_b) = (a.processed().await, b.processed().await);
    assert_eq!(
        processed_a + processed_b,
        COUNT,
        "a {processed_a}, b {processed_b}"
    );
    assert!(
        processed_a > 0 && processed_b > 0,
        "a {processed_a}, b {processed_b}"
    );
    assert_eq!(done.total() as u64, COUNT, "every id reported exactly once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_queue_exits_zero_and_loses_nothing() {
    const COUNT: u64 = 300;
    let nats = Nats::start().await;
    let done = Done::subscribe(&nats).await;
    nats.create_queue("2s").await;
    let mut a = Worker::start(&nats, "worker-a", 20).await;
    let b = Worker::start(&nats, "worker-b", 20).await;
    nats.wait_for_pulls(2).await;
    nats.publish_ids(COUNT, &[]).await;

    // Condition, not timing: work is under way (and far from over).
    let under_way = poll(DEADLINE, || async { (done.total() >= 30).then_some(()) }).await;
    assert!(under_way.is_some(), "processing never started");
    let (status, took) = a.terminate().await;
    assert_eq!(status.code(), Some(0), "{status:?}\n{}", a.proc.logs());
    assert!(took < Duration::from_secs(10), "exit took {took:?}");
    let seen_at_exit = done.distinct().len() as u64;
    assert!(
        seen_at_exit < COUNT,
        "the queue was drained before the SIGTERM landed; nothing tested"
    );

    done.wait_for_all(COUNT).await;
    nats.wait_drained().await;
    assert!(b.processed().await > 0);
    assert!(
        a.proc.logs().contains("queue worker stopped"),
        "{}",
        a.proc.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_and_acks_the_message_in_hand() {
    const WORK: Duration = Duration::from_millis(3000);
    let nats = Nats::start().await;
    let done = Done::subscribe(&nats).await;
    nats.create_queue("30s").await;
    let mut worker = Worker::start(&nats, "worker-slow", 0).await;
    nats.wait_for_pulls(1).await;
    // Taken before publishing: the worker may start its work before the
    // publisher has even exited.
    let published = Instant::now();
    nats.publish_ids(1, &["--work-ms", &WORK.as_millis().to_string()])
        .await;

    // Delivered and not acked while it is being worked on.
    let in_hand = poll(DEADLINE, || async {
        (nats.consumer_info().await.num_ack_pending == 1).then_some(())
    })
    .await;
    assert!(in_hand.is_some(), "the message was never held unacked");
    // Not done yet: SIGTERM comes with the message in hand.
    assert_eq!(done.total(), 0);

    let (status, _) = worker.terminate().await;
    assert_eq!(status.code(), Some(0), "{status:?}\n{}", worker.proc.logs());
    // A lower bound the worker cannot beat unless it cut the work short.
    assert!(
        published.elapsed() >= WORK,
        "exited after {:?}, before the {WORK:?} of work",
        published.elapsed()
    );
    done.wait_for_all(1).await;
    nats.wait_drained().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_waits_for_nats_and_the_consumer() {
    const COUNT: u64 = 20;
    let dir = tempfile::tempdir().expect("temp dir");
    let port = free_port();
    let url = format!("nats://127.0.0.1:{port}");
    let mut worker = Worker::spawn(dir.path(), &url, "worker-early", 0);
    worker.wait_healthy().await;
    worker.wait_for_log("connecting to NATS").await;
    assert!(worker.proc.is_running());

    // NATS comes up on that port: the worker connects and finds no consumer.
    let server = NatsServer::try_start(dir.path(), Some(port))
        .await
        .expect("nats-server on the worker's port");
    let client = async_nats::connect(server.url())
        .await
        .expect("test client");
    let nats = Nats {
        dir,
        server,
        client,
    };
    worker
        .wait_for_log("binding to pull consumer workers of stream JOBS")
        .await;
    worker.wait_for_log("not found").await;
    assert!(worker.proc.is_running());
    let done = Done::subscribe(&nats).await;

    // Someone else creates the queue: the worker starts consuming.
    nats.create_queue("30s").await;
    nats.publish_ids(COUNT, &[]).await;
    done.wait_for_all(COUNT).await;
    nats.wait_drained().await;
    assert_eq!(worker.processed().await, COUNT);
    worker.wait_for_log("bound to consumer").await;
}

#[tokio::test]
async fn publish_refuses_bad_arguments_with_2() {
    let cases: [&[&str]; 7] = [
        &["--subject", SUBJECT, "--count", "1"],
        &["--stream", STREAM, "--count", "1"],
        &["--stream", STREAM, "--subject", SUBJECT],
        &["--stream", STREAM, "--subject", SUBJECT, "--count", "many"],
        &["--stream", "a.b", "--subject", SUBJECT, "--count", "1"],
        &["--stream", STREAM, "--subject", "jobs.*", "--count", "1"],
        &[
            "--stream",
            STREAM,
            "--subject",
            SUBJECT,
            "--count",
            "1",
            "--rate",
            "0",
        ],
    ];
    for args in cases {
        let out = publish(args).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains("error:"), "{args:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{args:?}");
    }
}

#[tokio::test]
async fn publish_to_unreachable_nats_fails_with_1_and_says_why() {
    let url = format!("nats://127.0.0.1:{}", free_port());
    let start = Instant::now();
    let out = publish(&[
        "--nats-url",
        &url,
        "--stream",
        STREAM,
        "--subject",
        SUBJECT,
        "--count",
        "3",
    ])
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("connecting to NATS at {url}")),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(out.stdout.is_empty());
    assert!(
        start.elapsed() < Duration::from_secs(30),
        "{:?}",
        start.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_without_create_needs_the_stream_and_consumer() {
    let nats = Nats::start().await;
    let url = nats.url();
    let base = ["--nats-url", &url, "--subject", SUBJECT, "--count", "1"];
    let run = |extra: &'static [&'static str]| {
        let mut args = base.to_vec();
        args.extend_from_slice(extra);
        async move { publish(&args).await }
    };
    let out = run(&["--stream", STREAM]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("stream JOBS (--create makes it)"),
        "{stderr}"
    );

    // With the stream but not the named consumer.
    nats.publish(&[
        "--stream",
        STREAM,
        "--subject",
        SUBJECT,
        "--create",
        "--count",
        "0",
    ])
    .await;
    let out = run(&["--stream", STREAM, "--consumer", "missing"]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("consumer missing of stream JOBS"),
        "{stderr}"
    );
    assert_eq!(
        nats.stream_info().await.state.messages,
        0,
        "nothing published"
    );

    // A message that another stream stored is a failure, not a success.
    nats.publish(&[
        "--stream",
        "OTHER",
        "--subject",
        "other",
        "--create",
        "--count",
        "0",
    ])
    .await;
    let out = publish(&[
        "--nats-url",
        &url,
        "--stream",
        STREAM,
        "--subject",
        "other",
        "--count",
        "1",
    ])
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("other is stored by stream OTHER, not JOBS"),
        "{stderr}"
    );

    let out = run(&["--stream", STREAM]).await;
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(nats.stream_info().await.state.messages, 1);
}

#[test]
fn the_worker_needs_both_a_stream_and_a_consumer() {
    for args in [
        ["--port", "1", "--queue-stream", STREAM],
        ["--port", "1", "--queue-consumer", CONSUMER],
    ] {
        let out = std::process::Command::new(echo_bin())
            .args(args)
            .env_remove("ROUSE_QUEUE_STREAM")
            .env_remove("ROUSE_QUEUE_CONSUMER")
            .stdin(Stdio::null())
            .output()
            .expect("running rouse-echo");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains("--queue-"), "{stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_sends_the_ids_in_order_with_the_header_and_the_pace() {
    const COUNT: u64 = 10;
    let nats = Nats::start().await;
    nats.publish(&[
        "--stream",
        STREAM,
        "--subject",
        SUBJECT,
        "--create",
        "--count",
        "0",
    ])
    .await;
    let start = Instant::now();
    nats.publish_ids(COUNT, &["--work-ms", "15", "--rate", "20"])
        .await;
    // Ten messages at 20 per second: nine gaps of 50 ms at least.
    let took = start.elapsed();
    assert!(took >= Duration::from_millis(450), "took {took:?}");

    let stream = nats.js().get_stream(STREAM).await.expect("the stream");
    assert_eq!(nats.stream_info().await.state.messages, COUNT);
    for (seq, id) in (1..=COUNT).zip(0..COUNT) {
        let message = stream.get_raw_message(seq).await.expect("stored message");
        assert_eq!(message.payload, id.to_string(), "message {seq}");
        let work = message
            .headers
            .get("Work-Ms")
            .map(|v| v.as_str().to_owned());
        assert_eq!(work.as_deref(), Some("15"), "message {seq}");
    }
}
