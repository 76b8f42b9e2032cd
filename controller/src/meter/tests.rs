//! The meter's arithmetic on a fake clock.

use super::*;

fn spec(yaml: &str) -> ServiceConfig {
    let config = rouse_nats::Config::parse(std::path::Path::new("t.yaml"), yaml)
        .unwrap_or_else(|e| panic!("{e}"));
    config.services[0].clone()
}

const CPU_SERVICE: &str = "
services:
  - name: web
    hosts: [web.localhost]
    backend:
      process: {command: [app]}
    resources: {cpus: 0.5, memory: 100MiB}
    scaling:
      metrics: [{type: cpu, target: 50}, {type: memory, target: 80}]
";

fn usage(id: &str, cpu_ms: u64, memory: u64) -> Usage {
    Usage {
        id: id.into(),
        cpu: CpuUsage::Total(Duration::from_millis(cpu_ms)),
        memory_bytes: Some(memory),
    }
}

#[test]
fn cpu_counters_become_shares_of_the_replica_size() {
    let meter = Meter::for_service(&spec(CPU_SERVICE)).expect("a meter");
    let t0 = Instant::now();
    meter.record_usage(t0, vec![usage("a", 1_000, 50 << 20)]);
    // One counter is no rate yet.
    let first = meter.measured(t0, &["a"]);
    assert_eq!(first.ready[0].cpu, None);
    assert_eq!(first.ready[0].memory, Some(0.5));
    // 250 ms of CPU in 1 s is 0.25 cores: half of 0.5 cores.
    let t1 = t0 + Duration::from_secs(1);
    meter.record_usage(t1, vec![usage("a", 1_250, 50 << 20)]);
    let cpu = meter.measured(t1, &["a"]).ready[0].cpu.expect("a rate");
    assert!((cpu - 0.5).abs() < 1e-9, "{cpu}");
}

#[test]
fn rates_cover_a_sliding_window_and_restarted_counters_start_over() {
    let mut history = VecDeque::new();
    let t0 = Instant::now();
    let at = |s: u64| t0 + Duration::from_secs(s);
    let ms = Duration::from_millis;
    for s in 0..=10 {
        rate(&mut history, at(s), ms(s * 100));
    }
    // Kept: about RATE_WINDOW of history, not all of it.
    assert!(history.len() <= 7, "{}", history.len());
    let steady = rate(&mut history, at(11), ms(1_100)).expect("rate");
    assert!((steady - 0.1).abs() < 1e-9);
    // A counter that goes back is a new process: no rate until it has two.
    assert_eq!(rate(&mut history, at(12), ms(10)), None);
    let fresh = rate(&mut history, at(13), ms(510)).expect("rate");
    assert!((fresh - 0.5).abs() < 1e-9);
}

#[test]
fn stale_or_unknown_figures_are_missing_not_zero() {
    let meter = Meter::for_service(&spec(CPU_SERVICE)).expect("a meter");
    let t0 = Instant::now();
    meter.record_usage(t0, vec![usage("a", 0, 1)]);
    meter.record_usage(t0 + Duration::from_secs(1), vec![usage("a", 100, 1)]);
    let later = t0 + Duration::from_secs(60);
    let measured = meter.measured(later, &["a", "never-sampled"]);
    assert_eq!(measured.ready, vec![ReplicaUsage::default(); 2]);
}

#[test]
fn replicas_gone_from_the_backend_are_forgotten() {
    let meter = Meter::for_service(&spec(CPU_SERVICE)).expect("a meter");
    let t0 = Instant::now();
    meter.record_usage(t0, vec![usage("a", 0, 1), usage("b", 0, 1)]);
    meter.record_usage(t0 + Duration::from_secs(1), vec![usage("a", 10, 1)]);
    assert_eq!(meter.figures("b"), ReplicaFigures::default());
    assert_eq!(meter.figures("a").memory_bytes, Some(1));
}

#[test]
fn a_backlog_appearing_is_reported_once() {
    let meter = Meter::for_service(&spec(
        "
services:
  - name: worker
    backend:
      process: {command: [app]}
    scaling:
      metrics: [{type: queue, stream: JOBS, consumer: workers, target: 100}]
",
    ))
    .expect("a meter");
    let t0 = Instant::now();
    assert!(!meter.record_backlog(t0, Ok(0)));
    assert!(meter.record_backlog(t0, Ok(5)));
    assert!(!meter.record_backlog(t0, Ok(9)));
    assert!(!meter.record_backlog(t0, Err("down".into())));
    assert_eq!(meter.error().as_deref(), Some("down"));
    assert_eq!(meter.measured(t0, &[]).backlog, Some(9));
}

#[test]
fn sizing_falls_back_to_docker_limits_then_one_core() {
    let docker = spec(
        "
services:
  - name: web
    hosts: [web.localhost]
    backend:
      docker: {image: app, port: 80, cpus: 0.25, memory: 64MiB}
",
    );
    assert_eq!(
        Sizing::of(&docker),
        Sizing {
            cpus: 0.25,
            memory_bytes: Some(64 << 20)
        }
    );
    let bare = spec(
        "
services:
  - name: web
    hosts: [web.localhost]
    backend:
      process: {command: [app]}
",
    );
    assert_eq!(
        Sizing::of(&bare),
        Sizing {
            cpus: 1.0,
            memory_bytes: None
        }
    );
    assert!(Meter::for_service(&bare).is_none(), "nothing measured");
}
