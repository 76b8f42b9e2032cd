//! `rouse events` against a real nats-server: events published into the
//! stream `ROUSE_EVENTS` as the controller publishes them, read back from
//! the start, by service, since a time, as a table and as JSON lines, and
//! followed as they arrive.

mod support;

use std::time::Duration;

use rouse_nats::messages::{self, Scaled, VERSION};
use support::{rouse, run, Background, Nats};

async fn publish(nats: &Nats, service: &str, from: u32, to: u32, reason: &str, at_ms: u64) {
    let event = Scaled {
        v: VERSION,
        service: service.into(),
        from,
        to,
        reason: reason.into(),
        at_ms,
    };
    nats.js
        .publish(format!("rouse.scaled.{service}"), messages::encode(&event))
        .await
        .expect("publish")
        .await
        .expect("stored");
}

async fn with_stream() -> Nats {
    let nats = Nats::start().await;
    rouse_nats::bus::events_stream(&nats.js, "rouse", 1)
        .await
        .expect("events stream");
    nats
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_reads_the_stream_as_a_table_and_as_json_lines() {
    let nats = with_stream().await;
    let url = nats.url();
    // 2026-12-02T14:00:00Z and later.
    let t0 = 1_796_220_000_000;
    publish(&nats, "web", 0, 1, "wake", t0).await;
    publish(&nats, "api", 0, 2, "load", t0 + 1_500).await;
    nats.js
        .publish("rouse.scaled.web", "not json".into())
        .await
        .expect("publish")
        .await
        .expect("stored");
    publish(&nats, "web", 1, 0, "idle", t0 + 61_000).await;

    let all = run(&url, &["events", "--from-start"]).await.expect_code(0);
    assert_eq!(
        all.stdout,
        "TIME                      SERVICE               FROM    TO  REASON\n\
         2026-12-02T14:00:00.000Z  web                      0     1  wake\n\
         2026-12-02T14:00:01.500Z  api                      0     2  load\n\
         2026-12-02T14:01:01.000Z  web                      1     0  idle\n"
    );
    assert!(
        all.stderr.contains("skipped message 3 on rouse.scaled.web"),
        "{all:#?}"
    );

    let web = run(
        &url,
        &["events", "--from-start", "--service", "web", "-o", "json"],
    )
    .await
    .expect_code(0);
    let lines: Vec<serde_json::Value> = web
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON object per line"))
        .collect();
    assert_eq!(lines.len(), 2, "{web:#?}");
    assert_eq!(
        lines[0],
        serde_json::json!({
            "service": "web", "from": 0, "to": 1, "reason": "wake",
            "at_ms": t0, "at": "2026-12-02T14:00:00.000Z", "seq": 1
        })
    );
    assert_eq!(lines[1]["seq"], 4);

    // --since picks by the time the stream stored them: all of these are
    // from the last minute, none from the future.
    let recent = run(&url, &["events", "--since", "10m"])
        .await
        .expect_code(0);
    assert_eq!(recent.stdout.lines().count(), 4, "{recent:#?}");
    let future = run(&url, &["events", "--since", "2099-01-01T00:00:00Z"])
        .await
        .expect_code(0);
    assert_eq!(
        future.stdout.lines().count(),
        1,
        "the header only: {future:#?}"
    );
    let nothing = run(&url, &["events", "--service", "other", "-o", "json"])
        .await
        .expect_code(0);
    assert_eq!(nothing.stdout, "", "{nothing:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_follow_prints_new_events_as_they_come() {
    let nats = Nats::start().await;
    let url = nats.url();
    // No stream yet: as the controller would, the CLI creates it.
    let mut follow = Background::spawn(rouse(&url, &["events", "--follow", "-o", "json"]));
    let stream = support::poll(Duration::from_secs(30), || async {
        nats.js.get_stream("ROUSE_EVENTS").await.ok()
    })
    .await;
    assert!(stream.is_some(), "rouse events created the stream");
    // The consumer may start after the first publish: publish until seen.
    let seen = {
        let nats = &nats;
        let publisher = async move {
            for i in 0..600u32 {
                publish(nats, "web", i, i + 1, "load", messages::now_ms()).await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        };
        tokio::select! {
            line = follow.wait_line(Duration::from_secs(60), |l| l.contains("\"service\":\"web\"")) => line,
            _ = publisher => panic!("no event seen while publishing for a minute"),
        }
    };
    assert!(seen.contains("\"reason\":\"load\""), "{seen}");
    assert!(follow.running(), "--follow keeps going");
    follow.kill().await;
}
