//! Generates clients from the protos that are wire contracts: KEDA's
//! external scaler API (the controller's proto) and rouse-echo's gRPC API
//! (`rouse-echo --grpc`). No Rust type of the crates under test is used.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for (proto, dir) in [
        (
            "../controller/proto/externalscaler.proto",
            "../controller/proto",
        ),
        ("../echo/proto/echo.proto", "../echo/proto"),
    ] {
        println!("cargo:rerun-if-changed={proto}");
        let fds = protox::compile([proto], [dir])?;
        tonic_prost_build::configure()
            .build_server(false)
            .build_transport(false)
            .compile_fds(fds)?;
    }
    Ok(())
}
