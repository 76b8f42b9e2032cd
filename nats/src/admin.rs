//! The admin HTTP server both binaries run beside their real work: the
//! accept loop, the plain responses, and `/metrics` in the OpenMetrics text
//! format. Each binary supplies only its routes.
//!
//! `/api/...` may be closed with a bearer token (`admin_token_file`, or
//! `ROUSE_ADMIN_TOKEN`): it shows every service and will change them, while
//! `/metrics` and the probes stay open to Prometheus and the kubelet. The
//! admin server never shares the data port, so the token never passes
//! through the proxy's traffic.

use std::convert::Infallible;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

/// The one label of rouse's metrics: service names, never host, path or client.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceLabel {
    pub service: String,
}

impl ServiceLabel {
    pub fn new(service: &str) -> Self {
        Self {
            service: service.to_string(),
        }
    }
}

/// The environment variable that sets the token when no file does.
pub const TOKEN_ENV: &str = "ROUSE_ADMIN_TOKEN";

/// Who may call `/api/...`: anyone, or whoever presents the token.
#[derive(Clone, Default)]
pub struct ApiToken(Option<Arc<[u8]>>);

impl std::fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = if self.0.is_some() { "set" } else { "none" };
        f.debug_tuple("ApiToken").field(&state).finish()
    }
}

impl ApiToken {
    /// The token in `file` (surrounding whitespace trimmed), else in
    /// `ROUSE_ADMIN_TOKEN`, else none: `/api` open.
    pub fn load(file: Option<&Path>) -> std::io::Result<Self> {
        let token = match file {
            Some(file) => Some(read_token(file)?),
            None => std::env::var(TOKEN_ENV)
                .ok()
                .map(|t| t.trim().to_string())
                .filter(|t| !t.is_empty()),
        };
        Ok(Self(token.map(|t| Arc::from(t.into_bytes()))))
    }

    /// A token given directly (tests, embedding).
    pub fn new(token: &str) -> Self {
        Self(Some(Arc::from(token.as_bytes())))
    }

    pub fn is_set(&self) -> bool {
        self.0.is_some()
    }

    /// Whether `request` may reach `/api/...`: no token is set, or it
    /// carries `Authorization: Bearer <token>` (compared in constant time).
    pub fn allows<B>(&self, request: &Request<B>) -> bool {
        use subtle::ConstantTimeEq;
        let Some(token) = &self.0 else {
            return true;
        };
        request
            .headers()
            .get_all(header::AUTHORIZATION)
            .iter()
            .filter_map(|value| {
                let value = value.as_bytes();
                let scheme = value.get(..7)?;
                scheme
                    .eq_ignore_ascii_case(b"bearer ")
                    .then(|| value[7..].trim_ascii())
            })
            .any(|given| bool::from(given.ct_eq(token)))
    }
}

/// The token of `admin_token_file`: its content, trimmed; empty is an error.
pub fn read_token(file: &Path) -> std::io::Result<String> {
    let token = std::fs::read_to_string(file)?.trim().to_string();
    if token.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "the file is empty",
        ));
    }
    Ok(token)
}

fn unauthorized() -> Response<Full<Bytes>> {
    let mut response = text(
        StatusCode::UNAUTHORIZED,
        "a bearer token is needed for /api\n",
    );
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"rouse\""),
    );
    response
}

/// Serves admin requests with `route` until the task is dropped; `/api/...`
/// only with `token`.
pub async fn serve<R>(listener: TcpListener, token: ApiToken, route: Arc<R>)
where
    R: Fn(&Request<Incoming>) -> Response<Full<Bytes>> + Send + Sync + 'static,
{
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            // Out of file descriptors and the like: do not spin.
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let route = Arc::clone(&route);
        let token = token.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request: Request<Incoming>| {
                let api = request.uri().path().starts_with("/api/");
                let response = if api && !token.allows(&request) {
                    unauthorized()
                } else {
                    route(&request)
                };
                async move { Ok::<_, Infallible>(response) }
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// A response with a body and its content type.
pub fn respond(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// A short plain-text answer (`ok`, `not found`).
pub fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    respond(status, "text/plain; charset=utf-8", body)
}

/// Every metric of `registry` in the OpenMetrics text format.
pub fn encode(registry: &Registry) -> String {
    let mut out = String::with_capacity(16 * 1024);
    if prometheus_client::encoding::text::encode(&mut out, registry).is_err() {
        out.clear();
    }
    out
}

/// `/metrics`: every metric of `registry`.
pub fn metrics(registry: &Registry) -> Response<Full<Bytes>> {
    let out = encode(registry);
    respond(
        StatusCode::OK,
        "application/openmetrics-text; version=1.0.0; charset=utf-8",
        out,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(authorization: &[&str]) -> Request<()> {
        let mut builder = Request::builder().uri("/api/v1/services");
        for value in authorization {
            builder = builder.header(header::AUTHORIZATION, *value);
        }
        builder.body(()).expect("request")
    }

    #[test]
    fn only_the_bearer_token_opens_the_api() {
        let token = ApiToken::new("s3cret");
        assert!(token.allows(&request(&["Bearer s3cret"])));
        assert!(token.allows(&request(&["bearer  s3cret "])));
        assert!(token.allows(&request(&["Basic eDp5", "Bearer s3cret"])));
        for wrong in [
            &[][..],
            &["Bearer s3cre"],
            &["Bearer s3cret2"],
            &["s3cret"],
            &["Basic s3cret"],
        ] {
            assert!(!token.allows(&request(wrong)), "{wrong:?}");
        }
        assert!(ApiToken::default().allows(&request(&[])), "no token: open");
    }

    #[test]
    fn a_token_file_is_trimmed_and_must_not_be_empty() {
        let dir = tempfile::tempdir().expect("dir");
        let file = dir.path().join("token");
        std::fs::write(&file, "  abc\n").expect("write");
        let token = ApiToken::load(Some(&file)).expect("load");
        assert!(token.allows(&request(&["Bearer abc"])));
        std::fs::write(&file, "\n").expect("write");
        assert!(ApiToken::load(Some(&file)).is_err());
        assert!(ApiToken::load(Some(&dir.path().join("missing"))).is_err());
    }
}
