//! Stage 6 of the data path: a protocol switch (WebSocket and the like).
//!
//! An HTTP/1.1 request asking to upgrade is forwarded like any other (stage
//! 5, `forward`) with its `Upgrade` headers kept. If the replica answers 101,
//! the client gets the 101 and, once both sides have switched, the two
//! connections are spliced together in a task of their own. Bytes then flow
//! both ways untouched; the request stays in flight (and its replica
//! undrained) for as long as the tunnel lives.

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

use crate::completion::Completion;
use crate::headers;
use crate::response_body::ProxyBody;

/// The client's side of the switch, if the request asks for one. Taken
/// before the request is forwarded: hyper hands the upgraded connection
/// only to whoever asked for it while it still had the request.
pub fn requested(request: &mut Request<Incoming>) -> Option<OnUpgrade> {
    headers::is_upgrade(request.headers(), request.version()).then(|| hyper::upgrade::on(request))
}

/// Answers the client with the replica's 101 and splices the connections.
pub fn switch(
    mut response: Response<Incoming>,
    client: OnUpgrade,
    completion: Completion,
) -> Response<ProxyBody> {
    let upstream = hyper::upgrade::on(&mut response);
    let (mut parts, _) = response.into_parts();
    headers::strip_hop_by_hop(&mut parts.headers, true);
    tokio::spawn(splice(client, upstream, completion));
    Response::from_parts(parts, ProxyBody::empty())
}

/// Copies bytes both ways until either side closes.
async fn splice(client: OnUpgrade, upstream: OnUpgrade, completion: Completion) {
    let (client, upstream) = match tokio::try_join!(client, upstream) {
        Ok(pair) => pair,
        Err(err) => {
            tracing::debug!(error = %err, "upgrade failed");
            return;
        }
    };
    let mut client = TokioIo::new(client);
    let mut upstream = TokioIo::new(upstream);
    if let Err(err) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        tracing::debug!(error = %err, "upgraded connection ended with an error");
    }
    drop(completion);
}
