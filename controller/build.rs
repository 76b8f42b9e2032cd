//! Generates the KEDA external scaler API (server, and the client the tests
//! use) from proto/externalscaler.proto. protox compiles the proto in Rust,
//! so no `protoc` is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/externalscaler.proto");
    let fds = protox::compile(["proto/externalscaler.proto"], ["proto"])?;
    tonic_prost_build::configure()
        // The client is generic over its transport; the tests bring theirs.
        .build_transport(false)
        .compile_fds(fds)?;
    Ok(())
}
