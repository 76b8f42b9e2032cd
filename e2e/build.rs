//! Generates a client of KEDA's external scaler API from the controller's
//! proto, the wire contract (no Rust type of the controller is used).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "../controller/proto/externalscaler.proto";
    println!("cargo:rerun-if-changed={proto}");
    let fds = protox::compile([proto], ["../controller/proto"])?;
    tonic_prost_build::configure()
        .build_server(false)
        .build_transport(false)
        .compile_fds(fds)?;
    Ok(())
}
