//! Every answer the proxy writes itself, and the one place it is written.
//!
//! The contract fixes what a client gets when the proxy cannot forward its
//! request (404, 502, 503 with `Retry-After`, 504) and what each of those
//! counts. Stages therefore do not build error responses: they return a
//! `ProxyError`, and [`ProxyError::respond`] turns it into the response and
//! the metrics, like Pingora's `fail_to_proxy`. The whole table is the
//! `match`es below, which the tests pin down case by case.
//!
//! Requests hyper cannot parse (400) and oversized headers (431) never get
//! this far: hyper answers those itself while reading the request (stage 1,
//! `server`). What hyper accepts but a trusted edge refuses (a second Host,
//! an over-long target, an oversized or malformed body) is answered here.
//!
//! An error borrows what its message names (the service, the request's
//! host), so making one costs nothing; answering one formats its body.

use std::time::Duration;

use http::header::{self, HeaderValue};
use http::{Response, StatusCode};

use crate::metrics::ProxyMetrics;
use crate::request_body::BodyError;
use crate::response_body::ProxyBody;
use crate::service::Service;

/// Seconds a client should wait after a hold timeout: the replica is still
/// coming up, so an immediate retry would likely be held again.
const RETRY_AFTER_TIMEOUT: HeaderValue = HeaderValue::from_static("5");
/// After a full queue the pressure may pass quickly.
const RETRY_AFTER_FULL: HeaderValue = HeaderValue::from_static("1");
/// A client over its share of the queue waits for its own requests.
const RETRY_AFTER_CLIENT: HeaderValue = HeaderValue::from_static("1");

/// Why the proxy answers a request itself. The message is the body.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError<'a> {
    /// Parsed, but not a request an edge may pass on (RFC 9112 §3.2: a
    /// second Host, none on HTTP/1.1, an invalid one; a malformed body).
    #[error("bad request: {reason}")]
    BadRequest { reason: &'static str },
    /// The request target is longer than `proxy.limits.max_request_line`.
    #[error("the request target is longer than {limit} bytes")]
    UriTooLong { limit: u64 },
    /// The body is larger than the service's `max_body`.
    #[error("the request body is larger than {limit} bytes, the most {} accepts", .service.name)]
    BodyTooLarge { service: &'a Service, limit: u64 },
    /// This client already has `hold.max_requests_per_client` held.
    #[error("service {} is starting and this client already has {limit} requests waiting", .service.name)]
    ClientHoldFull { service: &'a Service, limit: usize },
    /// No service matches the host and path.
    #[error("no service for host {host:?} and path {path:?}")]
    NoRoute { host: &'a str, path: &'a str },
    /// The service was removed while the request was held: to the client
    /// the same as no service at all.
    #[error("service {} was removed while this request waited", .service.name)]
    Removed { service: &'a Service },
    /// `hold.max_requests` are already waiting.
    #[error("service {} is starting and its queue is full", .service.name)]
    QueueFull { service: &'a Service },
    /// Held for `hold.timeout` without a replica turning ready.
    #[error("service {} did not become ready within {:?}", .service.name, .service.hold_timeout())]
    HoldTimeout { service: &'a Service },
    /// Replicas were listed ready for all of `hold.timeout`, yet none could
    /// be leased; to the client the same as a hold timeout.
    #[error("service {} has no usable replica", .service.name)]
    NoUsableReplica { service: &'a Service },
    /// No connection to the replica (refused, unreachable, timed out), and
    /// no other ready replica could take the request instead.
    #[error("no replica of {} accepted the connection", .service.name)]
    Refused { service: &'a Service },
    /// The replica broke off the exchange.
    #[error("{} failed the request", .service.name)]
    UpstreamFailed { service: &'a Service },
    /// No response headers within the response timeout.
    #[error("{} did not answer within {after:?}", .service.name)]
    ResponseTimeout {
        service: &'a Service,
        after: Duration,
    },
}

impl<'a> ProxyError<'a> {
    /// The answer to a request body that could not be passed on.
    pub fn of_body(service: &'a Service, error: &BodyError) -> Self {
        match error {
            BodyError::Client(_) => Self::BadRequest {
                reason: "the request body was malformed or cut off",
            },
            BodyError::TooLarge { limit } => Self::BodyTooLarge {
                service,
                limit: *limit,
            },
        }
    }
}

/// The hold counter an error adds to, besides `rouse_requests_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldCounter {
    /// `rouse_hold_timeouts_total`
    Timeouts,
    /// `rouse_hold_rejected_total`
    Rejected,
}

impl ProxyError<'_> {
    /// How a wait in the hold queue ended, when this error ended it (for
    /// the `rouse.hold` span's `outcome`).
    pub fn hold_outcome(&self) -> &'static str {
        match self {
            Self::QueueFull { .. } => "queue_full",
            Self::ClientHoldFull { .. } => "client_limit",
            Self::HoldTimeout { .. } => "timeout",
            Self::NoUsableReplica { .. } => "no_usable_replica",
            Self::Removed { .. } => "removed",
            _ => "error",
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest { .. } => StatusCode::BAD_REQUEST,
            Self::UriTooLong { .. } => StatusCode::URI_TOO_LONG,
            Self::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::ClientHoldFull { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::NoRoute { .. } | Self::Removed { .. } => StatusCode::NOT_FOUND,
            Self::QueueFull { .. } | Self::HoldTimeout { .. } | Self::NoUsableReplica { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::Refused { .. } | Self::UpstreamFailed { .. } => StatusCode::BAD_GATEWAY,
            Self::ResponseTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// The `Retry-After` the answer carries: a 503 says when to come back.
    pub fn retry_after(&self) -> Option<HeaderValue> {
        match self {
            Self::QueueFull { .. } => Some(RETRY_AFTER_FULL),
            Self::ClientHoldFull { .. } => Some(RETRY_AFTER_CLIENT),
            Self::HoldTimeout { .. } | Self::NoUsableReplica { .. } => Some(RETRY_AFTER_TIMEOUT),
            Self::BadRequest { .. }
            | Self::UriTooLong { .. }
            | Self::BodyTooLarge { .. }
            | Self::NoRoute { .. }
            | Self::Removed { .. }
            | Self::Refused { .. }
            | Self::UpstreamFailed { .. }
            | Self::ResponseTimeout { .. } => None,
        }
    }

    pub fn hold_counter(&self) -> Option<HoldCounter> {
        match self {
            Self::QueueFull { .. } | Self::ClientHoldFull { .. } => Some(HoldCounter::Rejected),
            Self::HoldTimeout { .. } | Self::NoUsableReplica { .. } => Some(HoldCounter::Timeouts),
            Self::BadRequest { .. }
            | Self::UriTooLong { .. }
            | Self::BodyTooLarge { .. }
            | Self::NoRoute { .. }
            | Self::Removed { .. }
            | Self::Refused { .. }
            | Self::UpstreamFailed { .. }
            | Self::ResponseTimeout { .. } => None,
        }
    }

    /// The service whose metrics count the answer; `None` counts it in
    /// `rouse_requests_total` with an empty service label.
    fn service(&self) -> Option<&Service> {
        match self {
            Self::BadRequest { .. } | Self::UriTooLong { .. } | Self::NoRoute { .. } => None,
            Self::BodyTooLarge { service, .. } | Self::ClientHoldFull { service, .. } => {
                Some(service)
            }
            Self::QueueFull { service }
            | Self::Removed { service }
            | Self::HoldTimeout { service }
            | Self::NoUsableReplica { service }
            | Self::Refused { service }
            | Self::UpstreamFailed { service }
            | Self::ResponseTimeout { service, .. } => Some(service),
        }
    }

    /// The answer to the client, counted: the only place the proxy turns a
    /// failure into a response.
    pub fn respond(self, metrics: &ProxyMetrics) -> Response<ProxyBody> {
        let status = self.status();
        match self.service() {
            None => metrics.unmatched(status.as_u16()),
            Some(service) => {
                let counters = &service.metrics;
                match self.hold_counter() {
                    Some(HoldCounter::Timeouts) => {
                        counters.hold_timeouts.inc();
                    }
                    Some(HoldCounter::Rejected) => {
                        counters.hold_rejected.inc();
                    }
                    None => {}
                }
                counters.count_response(status.as_u16());
            }
        }
        let mut response = Response::new(ProxyBody::text(format!("{self}\n")));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        if let Some(retry_after) = self.retry_after() {
            headers.insert(header::RETRY_AFTER, retry_after);
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use rouse_nats::config::ServiceConfig;

    fn service(metrics: &ProxyMetrics) -> Service {
        let yaml = "name: app\nhosts: [app.test]\nbackend: {process: {command: [x]}}\nhold: {timeout: 2s}\n";
        let config: ServiceConfig = serde_norway::from_str(yaml).expect("config");
        Service::new(&config, Duration::from_secs(1), metrics.for_service("app"))
    }

    /// Every case with what the contract says it answers and counts:
    /// (error, status, Retry-After, hold counter).
    fn cases(
        service: &Service,
    ) -> Vec<(
        ProxyError<'_>,
        u16,
        Option<&'static str>,
        Option<HoldCounter>,
    )> {
        let after = Duration::from_secs(1);
        vec![
            (
                ProxyError::BadRequest {
                    reason: "two Host headers",
                },
                400,
                None,
                None,
            ),
            (ProxyError::UriTooLong { limit: 16 }, 414, None, None),
            (
                ProxyError::BodyTooLarge { service, limit: 8 },
                413,
                None,
                None,
            ),
            (
                ProxyError::ClientHoldFull { service, limit: 3 },
                429,
                Some("1"),
                Some(HoldCounter::Rejected),
            ),
            (
                ProxyError::NoRoute {
                    host: "other.test",
                    path: "/x",
                },
                404,
                None,
                None,
            ),
            (
                ProxyError::QueueFull { service },
                503,
                Some("1"),
                Some(HoldCounter::Rejected),
            ),
            (
                ProxyError::HoldTimeout { service },
                503,
                Some("5"),
                Some(HoldCounter::Timeouts),
            ),
            (
                ProxyError::NoUsableReplica { service },
                503,
                Some("5"),
                Some(HoldCounter::Timeouts),
            ),
            (ProxyError::Refused { service }, 502, None, None),
            (ProxyError::UpstreamFailed { service }, 502, None, None),
            (
                ProxyError::ResponseTimeout { service, after },
                504,
                None,
                None,
            ),
        ]
    }

    /// The value of the sample `name` in the text exposition, 0 if absent.
    fn sample(metrics: &ProxyMetrics, name: &str) -> u64 {
        let text = rouse_nats::admin::encode(&metrics.registry);
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0)
    }

    #[test]
    fn each_case_has_the_contracts_status_retry_after_and_hold_counter() {
        let metrics = ProxyMetrics::new();
        let service = service(&metrics);
        for (error, status, retry_after, counter) in cases(&service) {
            let name = format!("{error:?}");
            assert_eq!(error.status().as_u16(), status, "{name}");
            assert_eq!(
                error
                    .retry_after()
                    .as_ref()
                    .map(|v| v.to_str().expect("ascii")),
                retry_after,
                "{name}"
            );
            assert_eq!(error.hold_counter(), counter, "{name}");
        }
    }

    #[tokio::test]
    async fn the_response_carries_status_retry_after_and_the_message() {
        let metrics = ProxyMetrics::new();
        let service = service(&metrics);
        for (error, status, retry_after, _) in cases(&service) {
            let name = format!("{error:?}");
            let message = format!("{error}\n");
            let response = error.respond(&metrics);
            assert_eq!(response.status().as_u16(), status, "{name}");
            let headers = response.headers();
            assert_eq!(
                headers
                    .get(header::RETRY_AFTER)
                    .map(|v| v.to_str().expect("ascii")),
                retry_after,
                "{name}"
            );
            assert_eq!(headers[header::CONTENT_TYPE], "text/plain; charset=utf-8");
            let body = response
                .into_body()
                .collect()
                .await
                .expect("body")
                .to_bytes();
            assert_eq!(body, message.as_bytes(), "{name}");
        }
    }

    #[test]
    fn messages_name_the_host_or_the_service() {
        let metrics = ProxyMetrics::new();
        let service = service(&metrics);
        for (error, ..) in cases(&service) {
            let message = error.to_string();
            let named = match error {
                ProxyError::NoRoute { .. } => "\"other.test\"",
                ProxyError::BadRequest { .. } => "two Host headers",
                ProxyError::UriTooLong { .. } => "16 bytes",
                _ => "app",
            };
            assert!(message.contains(named), "{message:?} names {named}");
        }
        let timeout = ProxyError::HoldTimeout { service: &service }.to_string();
        assert!(timeout.contains("2s"), "{timeout:?} names hold.timeout");
        let after = Duration::from_millis(1500);
        let slow = ProxyError::ResponseTimeout {
            service: &service,
            after,
        }
        .to_string();
        assert!(slow.contains("1.5s"), "{slow:?} names the response timeout");
    }

    #[test]
    fn each_case_counts_its_code_and_only_its_hold_counter() {
        for index in 0..cases(&service(&ProxyMetrics::new())).len() {
            let metrics = ProxyMetrics::new();
            let service = service(&metrics);
            let (error, status, _, counter) = cases(&service).swap_remove(index);
            let name = format!("{error:?}");
            let label = match error {
                ProxyError::NoRoute { .. }
                | ProxyError::BadRequest { .. }
                | ProxyError::UriTooLong { .. } => "",
                _ => "app",
            };
            drop(error.respond(&metrics));
            let requests = format!("rouse_requests_total{{service=\"{label}\",code=\"{status}\"}}");
            assert_eq!(sample(&metrics, &requests), 1, "{name}: {requests}");
            let timeouts = sample(&metrics, "rouse_hold_timeouts_total{service=\"app\"}");
            let rejected = sample(&metrics, "rouse_hold_rejected_total{service=\"app\"}");
            let expected = match counter {
                Some(HoldCounter::Timeouts) => (1, 0),
                Some(HoldCounter::Rejected) => (0, 1),
                None => (0, 0),
            };
            assert_eq!((timeouts, rejected), expected, "{name}");
        }
    }
}
