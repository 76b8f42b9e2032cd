//! A client of the controller's KEDA external scaler API
//! (`controller.keda_listen`), generated from
//! controller/proto/externalscaler.proto: what KEDA itself would send.

use std::collections::HashMap;
use std::net::SocketAddr;

use tonic::transport::{Channel, Endpoint};

/// The generated messages and client.
pub mod proto {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("externalscaler");
}

pub use proto::external_scaler_client::ExternalScalerClient;
pub use proto::{GetMetricsRequest, IsActiveResponse, ScaledObjectRef};

/// Connects to the API at `addr`.
pub async fn connect(addr: SocketAddr) -> anyhow::Result<ExternalScalerClient<Channel>> {
    let channel = Endpoint::from_shared(format!("http://{addr}"))?
        .connect()
        .await?;
    Ok(ExternalScalerClient::new(channel))
}

/// What KEDA sends for a ScaledObject `name` in `default` whose trigger's
/// metadata names rouse service `service`.
pub fn scaled_object(name: &str, service: &str) -> ScaledObjectRef {
    ScaledObjectRef {
        name: name.to_string(),
        namespace: "default".to_string(),
        scaler_metadata: HashMap::from([
            ("scalerAddress".to_string(), "rouse:9095".to_string()),
            ("service".to_string(), service.to_string()),
        ]),
    }
}
