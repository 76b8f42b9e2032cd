//! The HTTP side: kube-rs's requests parsed into (resource, namespace, name,
//! subresource, verb), answered from the store, with watches streamed as
//! newline-delimited JSON on a chunked response, as the real server does.
//!
//! A fake that takes shortcuts here (a watch that ends after one batch, a
//! list without a resourceVersion, an error without a `Status` body) would
//! let a backend pass tests that the real API would fail, so the paths,
//! query parameters and bodies follow what kube-runtime's watcher and
//! kube-client's `Api` send (see the crate doc for the list).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Either, Full, Limited};
use hyper::body::{Frame, Incoming};
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::cluster::{stopped, NsName, RecordedRequest, ResInfo, Role, Shared, State};
use crate::kubelet::DELETION_COST;
use crate::metrics;
use crate::patch::{self, PatchError};
use crate::selector::Selector;
use crate::status::{self, ApiError};
use crate::store::{parse_rv, random_suffix, rv_of, Change, Res};

/// Largest request body read.
const MAX_BODY: usize = 8 * 1024 * 1024;
/// How often a watch that asked for bookmarks gets one.
const BOOKMARK_EVERY: Duration = Duration::from_secs(1);
/// A watch's lifetime when the client gives no `timeoutSeconds` (the real
/// server picks 30..60 min); requests for more are capped at [`MAX_WATCH`].
const DEFAULT_WATCH: Duration = Duration::from_secs(1800);
const MAX_WATCH: Duration = Duration::from_secs(3600);
/// Events buffered towards a slow watch client before the watch waits.
const WATCH_BUFFER: usize = 256;
/// The Kubernetes version the fake claims to be (k8s-openapi's `latest`).
const VERSION: (&str, &str) = ("1", "37");

/// A response body: a whole JSON document, or a watch stream.
pub(crate) type Body = Either<Full<Bytes>, ChannelBody>;

/// A watch's body: the lines its task sends, until the task drops the
/// sender (timeout, shutdown, 410).
pub(crate) struct ChannelBody {
    rx: mpsc::Receiver<Bytes>,
}

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.rx
            .poll_recv(cx)
            .map(|line| line.map(|l| Ok(Frame::data(l))))
    }
}

/// Accepts connections until the cluster shuts down.
pub(crate) async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let mut shutdown = shared.shutdown.subscribe();
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors and the like: pause instead of
                    // spinning, as a real server would.
                    tracing::warn!("accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stopped(&mut shutdown) => return,
        };
        let shared = shared.clone();
        let mut conn_shutdown = shared.shutdown.subscribe();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(handle(shared, req).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                result = conn => {
                    if let Err(e) = result {
                        tracing::debug!("connection: {e}");
                    }
                }
                _ = stopped(&mut conn_shutdown) => {}
            }
        });
    }
}

/// The query parameters, decoded.
struct Params(Vec<(String, String)>);

impl Params {
    fn parse(query: &str) -> Params {
        Params(
            form_urlencoded::parse(query.as_bytes())
                .filter(|(k, _)| !k.is_empty())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        )
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// A boolean parameter (`true`/`1`, `false`/`0`, absent = false).
    fn flag(&self, name: &str) -> Result<bool, ApiError> {
        match self.get(name) {
            None | Some("" | "false" | "0") => Ok(false),
            Some("true" | "1") => Ok(true),
            Some(other) => Err(ApiError::bad_request(format!(
                "invalid value {other:?} for {name}: want true or false"
            ))),
        }
    }

    fn number<T: std::str::FromStr>(&self, name: &str) -> Result<Option<T>, ApiError> {
        match self.get(name) {
            None | Some("") => Ok(None),
            Some(text) => text.parse().map(Some).map_err(|_| {
                ApiError::bad_request(format!("invalid value {text:?} for {name}: want a number"))
            }),
        }
    }
}

/// One request, read.
struct Call<'a> {
    method: &'a Method,
    path: &'a str,
    params: &'a Params,
    content_type: &'a str,
    body: &'a [u8],
}

/// What a handler answers.
enum Reply {
    Json(StatusCode, Value),
    Watch(Box<WatchSpec>),
}

async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Response<Body> {
    let at = std::time::Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let content_type = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let params = Params::parse(&query);
    let watch = matches!(params.get("watch"), Some("true" | "1"));
    let body = Limited::new(req.into_body(), MAX_BODY).collect().await;
    let reply = match body {
        Err(_) => Err(ApiError::new(
            413,
            "RequestEntityTooLarge",
            format!("request body larger than {MAX_BODY} bytes or broken"),
        )),
        Ok(body) => {
            let body = body.to_bytes();
            let call = Call {
                method: &method,
                path: &path,
                params: &params,
                content_type: &content_type,
                body: &body,
            };
            let mut state = shared.lock();
            match state.take_fault(method.as_str(), &path) {
                Some(code) => Err(ApiError::injected(code)),
                None => route(&mut state, &call),
            }
        }
    };
    let response = match reply {
        Ok(Reply::Json(code, value)) => json_response(code, &value),
        Ok(Reply::Watch(spec)) => {
            let (tx, rx) = mpsc::channel(WATCH_BUFFER);
            tokio::spawn(stream_watch(shared.clone(), *spec, tx));
            let mut response = Response::new(Either::Right(ChannelBody { rx }));
            response
                .headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            response
        }
        Err(error) => {
            let code =
                StatusCode::from_u16(error.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            json_response(code, &error.to_status())
        }
    };
    shared.lock().record(RecordedRequest {
        method: method.to_string(),
        path,
        query,
        watch,
        status: response.status().as_u16(),
        at,
    });
    response
}

fn json_response(code: StatusCode, value: &Value) -> Response<Body> {
    let body = serde_json::to_vec(value).unwrap_or_default();
    let mut response = Response::new(Either::Left(Full::new(Bytes::from(body))));
    *response.status_mut() = code;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// Resource, namespace, name and subresource of a path.
struct Target {
    res: Res,
    namespace: Option<String>,
    name: Option<String>,
    sub: Option<String>,
}

fn parse_target(path: &str) -> Option<Target> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match segments.as_slice() {
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return None,
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, rest @ ..] if !rest.is_empty() => (Some(ns.to_string()), rest),
        _ => (None, rest),
    };
    let (plural, name, sub) = match rest {
        [plural] => (*plural, None, None),
        [plural, name] => (*plural, Some(name.to_string()), None),
        [plural, name, sub] => (*plural, Some(name.to_string()), Some(sub.to_string())),
        _ => return None,
    };
    if plural.is_empty() || name.as_deref() == Some("") {
        return None;
    }
    Some(Target {
        res: Res::new(group, version, plural),
        namespace,
        name,
        sub,
    })
}

fn route(state: &mut State, call: &Call) -> Result<Reply, ApiError> {
    if call.path == "/version" {
        return match *call.method {
            Method::GET => Ok(Reply::Json(StatusCode::OK, version())),
            _ => Err(ApiError::method_not_allowed(
                call.method.as_str(),
                call.path,
            )),
        };
    }
    if call.path.starts_with(&format!("/apis/{}/", metrics::GROUP)) {
        let value = metrics::route(
            state,
            call.method,
            call.path,
            call.params.get("labelSelector").unwrap_or(""),
            call.params.get("fieldSelector").unwrap_or(""),
            call.params.flag("watch")?,
        )?;
        return Ok(Reply::Json(StatusCode::OK, value));
    }
    let target = parse_target(call.path).ok_or_else(|| ApiError::no_such_path(call.path))?;
    let info = state
        .resources
        .get(&target.res)
        .cloned()
        .ok_or_else(|| ApiError::no_such_path(call.path))?;
    // A namespaced kind has no cluster-wide object paths, and a
    // cluster-scoped one no namespaced paths.
    let scope_fits = if info.namespaced {
        target.namespace.is_some() || target.name.is_none()
    } else {
        target.namespace.is_none()
    };
    if !scope_fits {
        return Err(ApiError::no_such_path(call.path));
    }
    if call.params.get("dryRun").is_some_and(|v| !v.is_empty()) {
        return Err(ApiError::bad_request("dryRun is not modelled by this fake"));
    }
    let ns = target.namespace.clone().unwrap_or_default();
    match (&target.name, target.sub.as_deref()) {
        (None, _) => collection(state, call, &target, &info),
        (Some(name), None) => item(state, call, &target.res, &info, &ns, name),
        (Some(name), Some("scale")) if info.role == Role::Workload => {
            scale(state, call, &target.res, &ns, name)
        }
        (Some(name), Some("status")) if info.role == Role::Full => {
            status_sub(state, call, &target.res, &ns, name)
        }
        _ => Err(ApiError::no_such_path(call.path)),
    }
}

fn version() -> Value {
    json!({
        "major": VERSION.0,
        "minor": VERSION.1,
        "gitVersion": format!("v{}.{}.0-kubefake", VERSION.0, VERSION.1),
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2026-01-01T00:00:00Z",
        "goVersion": "go1.25",
        "compiler": "gc",
        "platform": "linux/amd64",
    })
}

fn selectors(params: &Params) -> Result<(Selector, Selector), ApiError> {
    let labels = Selector::labels(params.get("labelSelector").unwrap_or(""))
        .map_err(ApiError::bad_request)?;
    let fields = Selector::fields(params.get("fieldSelector").unwrap_or(""))
        .map_err(ApiError::bad_request)?;
    Ok((labels, fields))
}

/// The list/watch parameters every collection GET checks, so that a
/// malformed one is a 400 rather than silently ignored.
fn check_list_params(params: &Params) -> Result<Option<u64>, ApiError> {
    params.number::<i64>("limit")?;
    if params.get("continue").is_some_and(|c| !c.is_empty()) {
        // No list is ever paginated, so no token was ever handed out.
        return Err(ApiError::new(
            410,
            "Expired",
            "the provided continue parameter is too old; lists are never paginated here",
        ));
    }
    match params.get("resourceVersionMatch") {
        None | Some("" | "NotOlderThan" | "Exact") => {}
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "invalid resourceVersionMatch {other:?}"
            )))
        }
    }
    match params.get("resourceVersion") {
        None | Some("") => Ok(None),
        Some(rv) => parse_rv(rv).map(Some).ok_or_else(|| {
            ApiError::bad_request(format!("invalid resourceVersion {rv:?}: want an integer"))
        }),
    }
}

fn collection(
    state: &mut State,
    call: &Call,
    target: &Target,
    info: &ResInfo,
) -> Result<Reply, ApiError> {
    let ns = target.namespace.as_deref();
    match *call.method {
        Method::GET => {
            let rv = check_list_params(call.params)?;
            let (labels, fields) = selectors(call.params)?;
            if call.params.flag("watch")? {
                return watch(state, call.params, target, info, rv, labels, fields);
            }
            let items: Vec<Value> = state
                .store
                .list(&target.res, ns)
                .into_iter()
                .filter(|o| labels.matches_labels(o) && fields.matches_fields(o))
                .cloned()
                .collect();
            Ok(Reply::Json(
                StatusCode::OK,
                json!({
                    "apiVersion": target.res.api_version(),
                    "kind": format!("{}List", info.kind),
                    "metadata": {"resourceVersion": state.store.rv().to_string()},
                    "items": items,
                }),
            ))
        }
        Method::POST if info.role == Role::Full => match (info.namespaced, ns) {
            (false, _) => create(state, call, &target.res, info, ""),
            (true, Some(ns)) => create(state, call, &target.res, info, ns),
            (true, None) => Err(ApiError::method_not_allowed(
                "POST",
                "a namespaced kind without a namespace",
            )),
        },
        _ => Err(ApiError::method_not_allowed(
            call.method.as_str(),
            &target.res.plural,
        )),
    }
}

fn body_object(call: &Call) -> Result<Value, ApiError> {
    let value: Value = serde_json::from_slice(call.body)
        .map_err(|e| ApiError::bad_request(format!("request body is not JSON: {e}")))?;
    if !value.is_object() {
        return Err(ApiError::bad_request("request body must be a JSON object"));
    }
    Ok(value)
}

/// `apiVersion` and `kind` filled in when the client left them out, and a
/// mismatch refused as the real server does.
fn type_meta(object: &mut Value, res: &Res, info: &ResInfo) -> Result<(), ApiError> {
    let api_version = res.api_version();
    for (field, want) in [
        ("apiVersion", api_version.as_str()),
        ("kind", info.kind.as_str()),
    ] {
        match object.get(field).and_then(Value::as_str) {
            None | Some("") => object[field] = want.into(),
            Some(have) if have == want => {}
            Some(have) => {
                return Err(ApiError::bad_request(format!(
                    "{field} {have:?} does not match the path's {want:?}"
                )))
            }
        }
    }
    Ok(())
}

/// The body's `metadata.name`/`namespace` must match the URL's.
fn check_identity(object: &Value, ns: &str, name: &str) -> Result<(), ApiError> {
    if let Some(have) = object.pointer("/metadata/name").and_then(Value::as_str) {
        if have != name {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({have}) does not match the name on the URL ({name})"
            )));
        }
    }
    if let Some(have) = object
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
    {
        if !have.is_empty() && have != ns {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
    }
    Ok(())
}

/// Optimistic concurrency: a `resourceVersion` in the new object must be
/// the stored one.
fn check_rv(stored: &Value, candidate: &Value, res: &Res, name: &str) -> Result<(), ApiError> {
    match rv_of(candidate) {
        Some(rv) if Some(rv) != rv_of(stored) => {
            Err(ApiError::conflict(&res.group, &res.plural, name))
        }
        _ => Ok(()),
    }
}

/// The stored object with the request's patch applied.
fn patched(stored: &Value, call: &Call, res: &Res, name: &str) -> Result<Value, ApiError> {
    let kind = patch::kind_of(call.content_type).ok_or_else(|| {
        ApiError::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format: {}",
                call.content_type
            ),
        )
    })?;
    let body: Value = serde_json::from_slice(call.body)
        .map_err(|e| ApiError::bad_request(format!("patch body is not JSON: {e}")))?;
    let mut object = stored.clone();
    match patch::apply(kind, &mut object, &body) {
        Ok(()) => Ok(object),
        Err(PatchError::Malformed(msg)) => Err(ApiError::bad_request(msg)),
        Err(PatchError::DoesNotApply(msg)) => {
            Err(ApiError::invalid(&res.group, &res.plural, name, msg))
        }
    }
}

fn stored<'a>(state: &'a State, res: &Res, ns: &str, name: &str) -> Result<&'a Value, ApiError> {
    state
        .store
        .get(res, ns, name)
        .ok_or_else(|| ApiError::not_found(&res.group, &res.plural, name))
}

fn item(
    state: &mut State,
    call: &Call,
    res: &Res,
    info: &ResInfo,
    ns: &str,
    name: &str,
) -> Result<Reply, ApiError> {
    let current = stored(state, res, ns, name)?.clone();
    let ok = |value| Ok(Reply::Json(StatusCode::OK, value));
    let not_allowed = || {
        Err(ApiError::method_not_allowed(
            call.method.as_str(),
            &res.plural,
        ))
    };
    match (call.method, info.role) {
        (&Method::GET, _) => ok(current),
        (&Method::PUT | &Method::PATCH, Role::ReadOnly) => not_allowed(),
        (&Method::PUT | &Method::PATCH, role) => {
            let mut candidate = if call.method == Method::PUT {
                body_object(call)?
            } else {
                patched(&current, call, res, name)?
            };
            check_identity(&candidate, ns, name)?;
            check_rv(&current, &candidate, res, name)?;
            match role {
                Role::Full => {
                    type_meta(&mut candidate, res, info)?;
                    ok(state.store.put(res, ns, name, candidate))
                }
                Role::Pods => ok(write_pod_meta(state, res, ns, name, &current, &candidate)?),
                _ => {
                    let owner = (res.clone(), (ns.to_string(), name.to_string()));
                    if let Some(replicas) = replicas_in(&candidate, res, name)? {
                        state.write_replicas(&owner, replicas);
                    }
                    let current = stored(state, res, ns, name)?.clone();
                    ok(write_meta(state, res, ns, name, &current, &candidate))
                }
            }
        }
        (&Method::DELETE, Role::Full) => {
            check_preconditions(call, &current)?;
            state.store.remove(res, ns, name);
            let uid = current.pointer("/metadata/uid").and_then(Value::as_str);
            ok(status::success(&res.group, &res.plural, name, uid))
        }
        (&Method::DELETE, Role::Pods) => {
            check_preconditions(call, &current)?;
            let grace = grace_period(call)?;
            let key: NsName = (ns.to_string(), name.to_string());
            let grace = match grace {
                Some(grace) => grace,
                None => state
                    .pods
                    .get(&key)
                    .and_then(|p| state.workloads.get(&p.owner))
                    .map_or(Duration::from_secs(30), |w| w.spec.termination_grace),
            };
            state.terminate(&key, grace);
            ok(stored(state, res, ns, name)?.clone())
        }
        _ => not_allowed(),
    }
}

/// `gracePeriodSeconds` from the query or the DeleteOptions body.
fn grace_period(call: &Call) -> Result<Option<Duration>, ApiError> {
    let from_query = call.params.number::<u64>("gracePeriodSeconds")?;
    let from_body = delete_options(call)?
        .get("gracePeriodSeconds")
        .and_then(Value::as_u64);
    Ok(from_query.or(from_body).map(Duration::from_secs))
}

fn delete_options(call: &Call) -> Result<Value, ApiError> {
    if call.body.iter().all(u8::is_ascii_whitespace) {
        return Ok(json!({}));
    }
    serde_json::from_slice(call.body)
        .map_err(|e| ApiError::bad_request(format!("DeleteOptions body is not JSON: {e}")))
}

/// DeleteOptions `preconditions` (uid, resourceVersion): 409 on mismatch.
fn check_preconditions(call: &Call, current: &Value) -> Result<(), ApiError> {
    let options = delete_options(call)?;
    for field in ["uid", "resourceVersion"] {
        let Some(want) = options
            .pointer(&format!("/preconditions/{field}"))
            .and_then(Value::as_str)
        else {
            continue;
        };
        let have = current
            .pointer(&format!("/metadata/{field}"))
            .and_then(Value::as_str);
        if have != Some(want) {
            return Err(ApiError::new(
                409,
                "Conflict",
                format!(
                    "Precondition failed: {field} in precondition: {want}, {field} in object meta: {}",
                    have.unwrap_or("")
                ),
            ));
        }
    }
    Ok(())
}

/// A pod write: only labels and annotations are the client's; the rest is
/// the kubelet's. The deletion cost is validated like the real server does.
fn write_pod_meta(
    state: &mut State,
    res: &Res,
    ns: &str,
    name: &str,
    current: &Value,
    candidate: &Value,
) -> Result<Value, ApiError> {
    if let Some(cost) = candidate
        .pointer("/metadata/annotations")
        .and_then(|a| a.get(DELETION_COST))
    {
        let valid = cost.as_str().is_some_and(|c| c.parse::<i32>().is_ok());
        if !valid {
            return Err(ApiError::invalid(
                &res.group,
                &res.plural,
                name,
                format!("metadata.annotations[{DELETION_COST}]: Invalid value: {cost}: must be a 32bit integer"),
            ));
        }
    }
    Ok(write_meta(state, res, ns, name, current, candidate))
}

/// Stores `current` with the candidate's labels and annotations.
fn write_meta(
    state: &mut State,
    res: &Res,
    ns: &str,
    name: &str,
    current: &Value,
    candidate: &Value,
) -> Value {
    let mut object = current.clone();
    for field in ["labels", "annotations"] {
        let new = candidate
            .pointer(&format!("/metadata/{field}"))
            .filter(|v| v.is_object());
        match (new, object["metadata"].as_object_mut()) {
            (Some(v), Some(meta)) => {
                meta.insert(field.into(), v.clone());
            }
            (None, Some(meta)) => {
                meta.remove(field);
            }
            _ => {}
        }
    }
    // The victim ranking reads a pod's annotations from here: nothing else
    // to recompute.
    state.store.put_if_changed(res, ns, name, object);
    state
        .store
        .get(res, ns, name)
        .cloned()
        .unwrap_or(Value::Null)
}

/// `spec.replicas` of a written object: absent, or an int32 ≥ 0 (422
/// otherwise, as validation would say).
fn replicas_in(candidate: &Value, res: &Res, name: &str) -> Result<Option<i32>, ApiError> {
    match candidate.pointer("/spec/replicas") {
        None | Some(Value::Null) => Ok(None),
        Some(value) => {
            let n = value.as_i64().ok_or_else(|| {
                ApiError::invalid(
                    &res.group,
                    &res.plural,
                    name,
                    format!("spec.replicas: Invalid value: {value}: must be an integer"),
                )
            })?;
            if n < 0 {
                return Err(ApiError::invalid(
                    &res.group,
                    &res.plural,
                    name,
                    format!(
                        "spec.replicas: Invalid value: {n}: must be greater than or equal to 0"
                    ),
                ));
            }
            i32::try_from(n).map(Some).map_err(|_| {
                ApiError::invalid(
                    &res.group,
                    &res.plural,
                    name,
                    format!("spec.replicas: Invalid value: {n}: must be an int32"),
                )
            })
        }
    }
}

fn scale(
    state: &mut State,
    call: &Call,
    res: &Res,
    ns: &str,
    name: &str,
) -> Result<Reply, ApiError> {
    let owner = (res.clone(), (ns.to_string(), name.to_string()));
    let current = state
        .scale_of(&owner)
        .ok_or_else(|| ApiError::not_found(&res.group, &res.plural, name))?;
    let candidate = match *call.method {
        Method::GET => return Ok(Reply::Json(StatusCode::OK, current)),
        Method::PUT => {
            let mut body = body_object(call)?;
            // In a replace, a missing replicas is the Go zero value.
            if body.pointer("/spec/replicas").is_none() {
                body["spec"] = json!({"replicas": 0});
            }
            body
        }
        Method::PATCH => patched(&current, call, res, name)?,
        _ => return Err(ApiError::method_not_allowed(call.method.as_str(), "scale")),
    };
    check_identity(&candidate, ns, name)?;
    check_rv(&current, &candidate, res, name)?;
    if let Some(replicas) = replicas_in(&candidate, res, name)? {
        state.write_replicas(&owner, replicas);
    }
    let scale = state
        .scale_of(&owner)
        .ok_or_else(|| ApiError::not_found(&res.group, &res.plural, name))?;
    Ok(Reply::Json(StatusCode::OK, scale))
}

/// `/status` of a generic object: reads the object, writes only `status`.
fn status_sub(
    state: &mut State,
    call: &Call,
    res: &Res,
    ns: &str,
    name: &str,
) -> Result<Reply, ApiError> {
    let current = stored(state, res, ns, name)?.clone();
    let candidate = match *call.method {
        Method::GET => return Ok(Reply::Json(StatusCode::OK, current)),
        Method::PUT => body_object(call)?,
        Method::PATCH => patched(&current, call, res, name)?,
        _ => return Err(ApiError::method_not_allowed(call.method.as_str(), "status")),
    };
    check_identity(&candidate, ns, name)?;
    check_rv(&current, &candidate, res, name)?;
    let mut object = current;
    match candidate.get("status") {
        Some(status) => object["status"] = status.clone(),
        None => {
            if let Some(map) = object.as_object_mut() {
                map.remove("status");
            }
        }
    }
    Ok(Reply::Json(
        StatusCode::OK,
        state.store.put(res, ns, name, object),
    ))
}

fn create(
    state: &mut State,
    call: &Call,
    res: &Res,
    info: &ResInfo,
    ns: &str,
) -> Result<Reply, ApiError> {
    let mut object = body_object(call)?;
    type_meta(&mut object, res, info)?;
    let name = match object.pointer("/metadata/name").and_then(Value::as_str) {
        Some(name) if !name.is_empty() => name.to_string(),
        _ => match object
            .pointer("/metadata/generateName")
            .and_then(Value::as_str)
        {
            Some(prefix) if !prefix.is_empty() => format!("{prefix}{}", random_suffix(5)),
            _ => {
                return Err(ApiError::invalid(
                    &res.group,
                    &res.plural,
                    "",
                    "metadata.name: Required value: name or generateName is required",
                ))
            }
        },
    };
    check_identity(&object, ns, &name)?;
    if state.store.get(res, ns, &name).is_some() {
        return Err(ApiError::already_exists(&res.group, &res.plural, &name));
    }
    if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        // Set by the server alone; a client's values are dropped.
        for field in [
            "resourceVersion",
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
        ] {
            meta.remove(field);
        }
    }
    let created = state.store.put(res, ns, &name, object);
    Ok(Reply::Json(StatusCode::CREATED, created))
}

/// A watch, resolved under the lock of its request: the snapshot it starts
/// with and the resourceVersion it continues from.
pub(crate) struct WatchSpec {
    res: Res,
    namespace: Option<String>,
    labels: Selector,
    fields: Selector,
    kind: String,
    /// Objects sent as ADDED first (watch from "now", or sendInitialEvents).
    initial: Vec<Value>,
    /// sendInitialEvents: a bookmark annotated `k8s.io/initial-events-end`
    /// follows the initial objects.
    initial_end: bool,
    /// The RV the events continue after, or `Err(requested)` when that RV
    /// is older than the kept history (410 Gone).
    from: Result<u64, u64>,
    bookmarks: bool,
    timeout: Duration,
}

fn watch(
    state: &State,
    params: &Params,
    target: &Target,
    info: &ResInfo,
    rv: Option<u64>,
    labels: Selector,
    fields: Selector,
) -> Result<Reply, ApiError> {
    let bookmarks = params.flag("allowWatchBookmarks")?;
    let send_initial = params.flag("sendInitialEvents")?;
    let timeout = params
        .number::<u64>("timeoutSeconds")?
        .map_or(DEFAULT_WATCH, Duration::from_secs)
        .min(MAX_WATCH);
    let ns = target.namespace.as_deref();
    let current = state.store.rv();
    // Unset or "0" (and sendInitialEvents): the current state as ADDED
    // events first, then changes; an RV: the changes since it.
    let snapshot = send_initial || rv.unwrap_or(0) == 0;
    let (initial, from) = if snapshot {
        let objects = state
            .store
            .list(&target.res, ns)
            .into_iter()
            .filter(|o| labels.matches_labels(o) && fields.matches_fields(o))
            .cloned()
            .collect();
        (objects, Ok(current))
    } else {
        let rv = rv.unwrap_or(0);
        let kept = state.store.events_after(rv).is_some();
        (Vec::new(), if kept { Ok(rv) } else { Err(rv) })
    };
    Ok(Reply::Watch(Box::new(WatchSpec {
        res: target.res.clone(),
        namespace: target.namespace.clone(),
        labels,
        fields,
        kind: info.kind.clone(),
        initial,
        initial_end: send_initial,
        from,
        bookmarks,
        timeout,
    })))
}

fn line(kind: &str, object: &Value) -> Bytes {
    let mut text =
        serde_json::to_string(&json!({"type": kind, "object": object})).unwrap_or_default();
    text.push('\n');
    Bytes::from(text)
}

fn bookmark(spec: &WatchSpec, rv: u64, initial_end: bool) -> Bytes {
    let mut metadata = json!({"resourceVersion": rv.to_string()});
    if initial_end {
        metadata["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    line(
        "BOOKMARK",
        &json!({"kind": spec.kind, "apiVersion": spec.res.api_version(), "metadata": metadata}),
    )
}

fn gone(requested: u64) -> Bytes {
    let error = ApiError::new(
        410,
        "Expired",
        format!("too old resource version: {requested}"),
    );
    line("ERROR", &error.to_status())
}

/// Streams one watch until its timeout, the client going away, the
/// cluster stopping, or a 410.
async fn stream_watch(shared: Arc<Shared>, spec: WatchSpec, tx: mpsc::Sender<Bytes>) {
    let deadline = Instant::now() + spec.timeout;
    let mut shutdown = shared.shutdown.subscribe();
    let mut changed = shared.lock().store.subscribe();
    let send = |bytes: Bytes| {
        let tx = tx.clone();
        async move {
            matches!(
                tokio::time::timeout_at(deadline, tx.send(bytes)).await,
                Ok(Ok(()))
            )
        }
    };
    for object in &spec.initial {
        if !send(line("ADDED", object)).await {
            return;
        }
    }
    let mut last = match spec.from {
        Ok(rv) => rv,
        Err(requested) => {
            send(gone(requested)).await;
            return;
        }
    };
    if spec.initial_end && !send(bookmark(&spec, last, true)).await {
        return;
    }
    let mut ticks = tokio::time::interval_at(Instant::now() + BOOKMARK_EVERY, BOOKMARK_EVERY);
    let mut bookmark_due = false;
    loop {
        let lines = {
            let state = shared.lock();
            let lines = state.store.events_after(last).map(|events| {
                events
                    .filter_map(|event| translate(&spec, event))
                    .collect::<Vec<_>>()
            });
            if lines.is_some() {
                last = state.store.rv();
            }
            lines
        };
        let Some(lines) = lines else {
            send(gone(last)).await;
            return;
        };
        for l in lines {
            if !send(l).await {
                return;
            }
        }
        if bookmark_due && !send(bookmark(&spec, last, false)).await {
            return;
        }
        bookmark_due = tokio::select! {
            _ = tokio::time::sleep_until(deadline) => return,
            _ = stopped(&mut shutdown) => return,
            _ = tx.closed() => return,
            changed = changed.changed() => {
                if changed.is_err() {
                    return;
                }
                false
            }
            _ = ticks.tick(), if spec.bookmarks => true,
        };
    }
}

/// One store event as this watch sees it: filtered by resource, namespace
/// and selectors; a modification that makes an object (stop) match is an
/// ADDED (DELETED) for this watch, as for the real server.
fn translate(spec: &WatchSpec, event: &crate::store::Event) -> Option<Bytes> {
    if event.res != spec.res {
        return None;
    }
    if let Some(ns) = &spec.namespace {
        if &event.namespace != ns {
            return None;
        }
    }
    let matches = |o: &Value| spec.labels.matches_labels(o) && spec.fields.matches_fields(o);
    let kind = match event.change {
        Change::Added => matches(&event.object).then_some("ADDED"),
        Change::Deleted => matches(&event.object).then_some("DELETED"),
        Change::Modified => {
            let before = event.prev.as_ref().is_some_and(matches);
            match (before, matches(&event.object)) {
                (true, true) => Some("MODIFIED"),
                (false, true) => Some("ADDED"),
                (true, false) => Some("DELETED"),
                (false, false) => None,
            }
        }
    }?;
    Some(line(kind, &event.object))
}

/// The address a listener got, for the kubeconfig.
pub(crate) fn url(addr: SocketAddr) -> String {
    format!("http://{addr}")
}
