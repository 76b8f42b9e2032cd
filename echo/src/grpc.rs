//! `--grpc`: a gRPC service beside the HTTP routes, on the same port.
//!
//! rouse forwards gRPC like any HTTP/2 traffic, but only a real gRPC server
//! shows that what matters to gRPC survives the proxy: HTTP/2 end to end,
//! `te: trailers`, and the status in the response trailers. So the demo
//! backend can be one (proto/echo.proto): `Hello` answers which replica
//! handled the call, `Count` streams numbered replies a given interval
//! apart; both can be asked to end with a chosen non-OK status.
//!
//! Requests whose `content-type` is `application/grpc...` go to the gRPC
//! service; every other request to the HTTP handler, so `/healthz`
//! readiness probes and `GET /` keep working on a gRPC replica.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use http::header;
use tonic::{Code, Request, Response, Status};

use crate::handler::Echo;

/// The code generated from proto/echo.proto (the server side).
pub mod proto {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("rouse.echo.v1");
}

use proto::echo_server::{self, EchoServer};
use proto::{CountReply, CountRequest, HelloReply, HelloRequest};

/// Most replies one `Count` call may ask for.
pub const MAX_COUNT: u32 = 100_000;
/// Longest interval between two `Count` replies (one minute).
pub const MAX_INTERVAL_MS: u32 = 60_000;

/// The gRPC service, ready to be called as a tower service.
pub type GrpcService = EchoServer<GrpcEcho>;

/// Implements proto/echo.proto for one replica.
#[derive(Debug, Clone)]
pub struct GrpcEcho {
    echo: Arc<Echo>,
}

/// The gRPC service of the replica `echo`.
pub fn service(echo: &Arc<Echo>) -> GrpcService {
    EchoServer::new(GrpcEcho {
        echo: Arc::clone(echo),
    })
}

/// Whether a request is a gRPC call (`application/grpc`, `+proto` etc.).
pub fn is_grpc<B>(request: &http::Request<B>) -> bool {
    request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
}

/// The status a request asks to end with: `None` for OK (`fail_code` 0).
fn requested_failure(code: u32, message: &str) -> Option<Status> {
    if code == 0 {
        return None;
    }
    let code = i32::try_from(code).map_or(Code::Unknown, Code::from_i32);
    Some(Status::new(code, message))
}

type CountStream = Pin<Box<dyn Stream<Item = Result<CountReply, Status>> + Send>>;

#[tonic::async_trait]
impl echo_server::Echo for GrpcEcho {
    async fn hello(&self, request: Request<HelloRequest>) -> Result<Response<HelloReply>, Status> {
        let request = request.into_inner();
        if let Some(status) = requested_failure(request.fail_code, &request.fail_message) {
            return Err(status);
        }
        Ok(Response::new(HelloReply {
            replica: self.echo.id().to_owned(),
        }))
    }

    type CountStream = CountStream;

    async fn count(
        &self,
        request: Request<CountRequest>,
    ) -> Result<Response<Self::CountStream>, Status> {
        let request = request.into_inner();
        if request.count > MAX_COUNT || request.interval_ms > MAX_INTERVAL_MS {
            return Err(Status::invalid_argument(format!(
                "count must be at most {MAX_COUNT} and interval_ms at most {MAX_INTERVAL_MS}"
            )));
        }
        let interval = Duration::from_millis(u64::from(request.interval_ms));
        let failure = requested_failure(request.fail_code, &request.fail_message);
        let replica = self.echo.id().to_owned();
        let total = request.count;
        // State: the next sequence number, and the failure still to send.
        let replies = futures::stream::unfold((0u32, failure), move |(seq, failure)| {
            let replica = replica.clone();
            async move {
                if seq >= total {
                    return failure.map(|status| (Err(status), (seq, None)));
                }
                if seq > 0 {
                    tokio::time::sleep(interval).await;
                }
                let reply = CountReply { seq, replica };
                Some((Ok(reply), (seq + 1, failure)))
            }
        });
        Ok(Response::new(Box::pin(replies)))
    }
}
