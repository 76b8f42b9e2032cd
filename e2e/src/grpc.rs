//! A gRPC client of `rouse-echo --grpc` (generated from echo/proto/echo.proto,
//! the wire contract), speaking h2c with prior knowledge to a proxy as any
//! gRPC client would.

use std::net::SocketAddr;
use std::time::Duration;

use tonic::transport::{Channel, Endpoint};

/// The generated messages and client.
pub mod proto {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("rouse.echo.v1");
}

pub use proto::echo_client::EchoClient;
pub use proto::{CountReply, CountRequest, HelloReply, HelloRequest};

/// A client of the proxy at `proxy` whose calls carry `:authority` `host`
/// (the proxy routes on it). Connects lazily, on the first call.
pub fn client(
    proxy: SocketAddr,
    host: &str,
    timeout: Duration,
) -> anyhow::Result<EchoClient<Channel>> {
    let origin = format!("http://{host}").parse()?;
    let channel = Endpoint::from_shared(format!("http://{proxy}"))?
        .origin(origin)
        .connect_timeout(timeout)
        .timeout(timeout)
        .connect_lazy();
    Ok(EchoClient::new(channel))
}
