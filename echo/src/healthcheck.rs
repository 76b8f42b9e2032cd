//! `rouse-echo healthcheck`: one `GET` for an image's `HEALTHCHECK`.
//!
//! The rouse image starts `FROM scratch`, so it has no shell and no curl;
//! this mode is what its `HEALTHCHECK` runs, for every program in it: the
//! URL comes from `ROUSE_HEALTHCHECK_URL` (the proxy's or the controller's
//! admin `/healthz`), else it is rouse-echo's own
//! `http://127.0.0.1:$PORT/healthz` (`PORT` defaulting to 8080).
//!
//! Exit status as Docker reads it: 0 when the answer is 2xx, 1 for anything
//! else (another status, a refused connection, a timeout, a bad URL), with
//! the reason on stderr.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context as _};
use bytes::Bytes;
use http::header::{CONNECTION, HOST};
use http::uri::{Authority, Scheme};
use http::{Request, StatusCode, Uri};
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// The environment variable naming the URL to check.
pub const URL_ENV: &str = "ROUSE_HEALTHCHECK_URL";
/// The port of the default URL when `PORT` is not set.
pub const DEFAULT_PORT: u16 = 8080;

/// `rouse-echo healthcheck [--url URL] [--timeout DURATION]`.
#[derive(Debug, Clone, clap::Args)]
pub struct HealthcheckArgs {
    /// URL to GET (`http://` only) [default: http://127.0.0.1:$PORT/healthz,
    /// PORT defaulting to 8080]
    #[arg(long, env = URL_ENV)]
    pub url: Option<String>,

    /// Give up after this long: connecting, sending and the response head
    /// together (e.g. `500ms`, `2s`).
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

/// Runs the check on a small runtime of its own: 0 on a 2xx answer, 1
/// otherwise, with the reason on stderr.
pub fn main(args: &HealthcheckArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("rouse-echo healthcheck: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let url = match target(args.url.as_deref(), std::env::var("PORT").ok().as_deref()) {
        Ok(url) => url,
        Err(err) => {
            eprintln!("rouse-echo healthcheck: {err:#}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(check(&url, args.timeout)) {
        Ok(status) => {
            println!("{url}: {status}");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("rouse-echo healthcheck: {url}: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// The URL to check: `url` when given and not empty, else rouse-echo's own
/// `/healthz` on `port` (the value of `PORT`; 8080 when unset or empty).
pub fn target(url: Option<&str>, port: Option<&str>) -> anyhow::Result<Uri> {
    let text = match url.map(str::trim) {
        Some(url) if !url.is_empty() => url.to_owned(),
        _ => {
            let port = match port.map(str::trim) {
                Some(port) if !port.is_empty() => port
                    .parse::<u16>()
                    .ok()
                    .filter(|&p| p != 0)
                    .with_context(|| format!("PORT={port:?} is not a port"))?,
                _ => DEFAULT_PORT,
            };
            format!("http://127.0.0.1:{port}/healthz")
        }
    };
    let uri: Uri = text
        .parse()
        .with_context(|| format!("{text:?} is not a URL"))?;
    if uri.scheme() != Some(&Scheme::HTTP) {
        bail!("{text:?}: only http:// URLs can be checked");
    }
    if uri.authority().is_none() {
        bail!("{text:?} names no host");
    }
    Ok(uri)
}

/// `GET uri`, bounded by `timeout`: the status when it is 2xx, an error
/// saying what happened otherwise.
pub async fn check(uri: &Uri, timeout: Duration) -> anyhow::Result<StatusCode> {
    let status = tokio::time::timeout(timeout, get_status(uri))
        .await
        .map_err(|_| anyhow::anyhow!("no answer within {timeout:?}"))??;
    if !status.is_success() {
        bail!("answered {status}");
    }
    Ok(status)
}

async fn get_status(uri: &Uri) -> anyhow::Result<StatusCode> {
    let authority = uri.authority().context("the URL names no host")?;
    let stream = TcpStream::connect(socket_addr(authority))
        .await
        .with_context(|| format!("connecting to {authority}"))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .context("starting HTTP/1.1")?;
    // The connection is driven until the response head is in; dropping it
    // afterwards closes the socket.
    let driver = tokio::spawn(connection);
    let target = uri.path_and_query().map_or("/", |pq| pq.as_str());
    let request = Request::get(target)
        .header(HOST, authority.as_str())
        .header(CONNECTION, "close")
        .body(Empty::<Bytes>::new())
        .context("building the request")?;
    let response = sender
        .send_request(request)
        .await
        .context("sending the request");
    driver.abort();
    Ok(response?.status())
}

/// `host:port` to connect to; port 80 when the URL names none.
fn socket_addr(authority: &Authority) -> String {
    let port = authority.port_u16().unwrap_or(80);
    format!("{}:{port}", authority.host())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_url_follows_port() {
        let url = |port| target(None, port).map(|u| u.to_string()).ok();
        let own = |port: u16| Some(format!("http://127.0.0.1:{port}/healthz"));
        assert_eq!(url(None), own(8080));
        assert_eq!(url(Some("")), own(8080));
        assert_eq!(url(Some("9000")), own(9000));
        assert!(target(None, Some("http")).is_err());
        assert!(target(None, Some("0")).is_err());
        assert!(target(None, Some("70000")).is_err());
    }

    #[test]
    fn a_given_url_wins_and_must_be_plain_http() {
        let given = target(Some("http://127.0.0.1:9091/healthz"), Some("1")).ok();
        assert_eq!(
            given.map(|u| u.to_string()),
            Some("http://127.0.0.1:9091/healthz".to_string())
        );
        // Empty means unset, as `ENV ROUSE_HEALTHCHECK_URL=` would say.
        assert!(target(Some(" "), None).is_ok());
        assert!(target(Some("https://127.0.0.1/healthz"), None).is_err());
        assert!(target(Some("/healthz"), None).is_err());
        assert!(target(Some("not a url"), None).is_err());
    }

    #[test]
    fn ipv6_hosts_keep_their_brackets() {
        let uri = target(Some("http://[::1]:8080/healthz"), None).ok();
        let authority = uri.as_ref().and_then(Uri::authority);
        assert_eq!(authority.map(socket_addr).as_deref(), Some("[::1]:8080"));
    }
}
