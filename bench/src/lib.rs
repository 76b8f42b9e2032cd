//! Benchmark and demo tooling for rouse.
//!
//! Each tool lives in its own module; the binaries under `src/bin/` are thin
//! wrappers around them so that the logic stays testable.

pub mod burst;
pub mod coldstart;
pub mod compare;
pub mod echo;
pub mod footprint;
pub mod sim;
pub mod step;

/// Runs a benchmark client on one thread (so it adds as little scheduling
/// noise as possible to what it measures) and turns its outcome into the
/// exit code.
pub fn run_single_threaded<T>(
    name: &str,
    client: impl std::future::Future<Output = anyhow::Result<T>>,
) -> std::process::ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("{name}: cannot start the runtime: {err}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(client) {
        Ok(_) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("{name}: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
