//! A StatefulSet's scale-down through a real `kube::Client` against
//! kubefake (real `rouse-echo` pods). A StatefulSet removes its highest
//! ordinals whatever rouse asks, so stopping two drained pods must remove
//! exactly those two, in whichever order their stops run.

use std::time::{Duration, Instant};

use rouse_kubefake::{FakeCluster, Kind, Workload};

use super::KubernetesBackend;
use crate::backend::Backend;

/// Every wait's bound.
const PATIENCE: Duration = Duration::from_secs(30);

/// A fake cluster running StatefulSet `web` with `replicas` pods, and the
/// backend on it.
async fn statefulset(replicas: i32) -> (FakeCluster, KubernetesBackend) {
    let fake = FakeCluster::start().await.expect("fake cluster");
    let mut workload = Workload::echo("web");
    workload.kind = Kind::StatefulSet;
    workload.replicas = replicas;
    fake.add_workload(workload).expect("workload");
    let backend = super::usage_tests::backend_for(
        &fake,
        "{target: {kind: StatefulSet, name: web}, service: web}",
    )
    .await;
    let want = usize::try_from(replicas).unwrap_or(0);
    until("every pod is created", || serving(&fake).len() == want).await;
    (fake, backend)
}

/// The names of the pods not terminating.
fn serving(fake: &FakeCluster) -> Vec<String> {
    let mut names: Vec<String> = fake
        .pods("default")
        .into_iter()
        .filter(|p| !p.terminating)
        .map(|p| p.name)
        .collect();
    names.sort();
    names
}

async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !done() {
        assert!(Instant::now() < deadline, "not within {PATIENCE:?}: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn replicas(fake: &FakeCluster) -> Option<i32> {
    fake.replicas("default", &Kind::StatefulSet, "web")
}

/// The order CI once saw: the lower pod's stop first. It must wait for
/// the top one (removing `web-3` now would remove a pod not marked as
/// drained, and the second stop would then remove nothing), and the top
/// one's stop takes both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_drained_pods_stopped_lowest_first_are_the_two_removed() {
    let (fake, backend) = statefulset(4).await;
    backend.stop("web-2").await.expect("stop web-2");
    assert_eq!(replicas(&fake), Some(4), "web-3 still serves above it");
    let web2 = fake
        .pods("default")
        .into_iter()
        .find(|p| p.name == "web-2")
        .expect("web-2");
    assert_eq!(web2.deletion_cost, Some(i32::MIN), "marked meanwhile");
    assert!(!web2.terminating);

    backend.stop("web-3").await.expect("stop web-3");
    assert_eq!(replicas(&fake), Some(2));
    until("web-2 and web-3 are removed", || {
        serving(&fake) == ["web-0", "web-1"]
    })
    .await;
    let deleted = fake.deleted_pods();
    let mut names: Vec<&str> = deleted.iter().map(|p| p.name.as_str()).collect();
    names.sort();
    assert_eq!(names, ["web-2", "web-3"], "{deleted:?}");
    for pod in &deleted {
        assert_eq!(pod.deletion_cost, Some(i32::MIN), "{pod:?}");
    }
}

/// The other order lowers the count one pod at a time; a stop for a pod
/// already gone changes nothing more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_drained_pods_stopped_highest_first_go_one_by_one() {
    let (fake, backend) = statefulset(3).await;
    backend.stop("web-2").await.expect("stop web-2");
    assert_eq!(replicas(&fake), Some(2));
    backend.stop("web-1").await.expect("stop web-1");
    assert_eq!(replicas(&fake), Some(1));
    until("only web-0 serves", || serving(&fake) == ["web-0"]).await;
    backend.stop("web-2").await.expect("stop web-2 again");
    assert_eq!(replicas(&fake), Some(1), "nothing removed twice");
    assert_eq!(fake.deleted_pods().len(), 2);
}
