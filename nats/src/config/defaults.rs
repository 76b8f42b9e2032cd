//! The default of every config key that has one; README.md's key table
//! lists the same values.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::ShutdownPolicy;

pub fn nats_url() -> String {
    "nats://127.0.0.1:4222".into()
}
pub fn nats_replicas() -> usize {
    1
}
pub fn prefix() -> String {
    "rouse".into()
}
pub fn yes() -> bool {
    true
}
pub fn proxy_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 8080))
}
pub fn proxy_admin() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9090))
}
pub fn controller_admin() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9091))
}
pub fn report_interval() -> Duration {
    Duration::from_secs(1)
}
pub fn response_timeout() -> Duration {
    Duration::from_secs(60)
}
pub fn connect_timeout() -> Duration {
    Duration::from_secs(5)
}
pub fn pool_idle_timeout() -> Duration {
    Duration::from_secs(90)
}
pub fn header_read_timeout() -> Duration {
    Duration::from_secs(30)
}
pub fn shutdown_timeout() -> Duration {
    Duration::from_secs(30)
}
pub fn state_dir() -> PathBuf {
    std::env::var_os("STATE_DIRECTORY")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(".rouse-state"))
}
pub fn tick() -> Duration {
    Duration::from_millis(500)
}
pub fn on_shutdown() -> ShutdownPolicy {
    ShutdownPolicy::Stop
}
pub fn paths() -> Vec<String> {
    vec!["/".into()]
}
pub fn grace_period() -> Duration {
    Duration::from_secs(10)
}
pub fn startup_timeout() -> Duration {
    Duration::from_secs(60)
}
pub fn namespace() -> String {
    "default".into()
}
pub fn probe_period() -> Duration {
    Duration::from_secs(2)
}
pub fn max_replicas() -> u32 {
    10
}
pub fn tolerance() -> f64 {
    0.1
}
pub fn target_concurrency() -> f64 {
    10.0
}
pub fn scale_to_zero_after() -> Duration {
    Duration::from_secs(60)
}
pub fn drain_timeout() -> Duration {
    Duration::from_secs(30)
}
pub fn stable_window() -> Duration {
    Duration::from_secs(60)
}
/// The panic window is this fraction of the stable window by default.
pub const PANIC_WINDOW_DIVISOR: u32 = 10;
pub fn panic_threshold() -> f64 {
    2.0
}
pub fn max_scale_down_rate() -> f64 {
    2.0
}
pub fn scale_down_step() -> Duration {
    Duration::from_secs(2)
}
pub fn hold_timeout() -> Duration {
    Duration::from_secs(30)
}
pub fn hold_max_requests() -> usize {
    10_000
}
pub fn docker_network() -> String {
    "rouse".into()
}
pub fn publish_ip() -> std::net::IpAddr {
    std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)
}
pub fn controller_id() -> String {
    "rouse".into()
}
pub fn kubernetes_startup_timeout() -> Duration {
    // Pulling an image and scheduling a pod take longer than a process.
    Duration::from_secs(300)
}
pub fn lease_name() -> String {
    "rouse-controller".into()
}
pub fn lease_duration() -> Duration {
    Duration::from_secs(10)
}
pub fn lease_retry() -> Duration {
    Duration::from_secs(2)
}
