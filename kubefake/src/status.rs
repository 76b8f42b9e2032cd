//! API errors as the API server reports them: a metav1 `Status` body with the
//! HTTP code, a machine-readable `reason` and `details`.
//!
//! kube-rs turns any 4xx/5xx whose body parses as a `Status` into
//! `Error::Api(status)` and callers branch on `code` and `reason` (a lease
//! client retries on 409, a watcher relists on 410), so the fake must answer
//! with the same shape, never with a bare text body.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ListMeta, Status, StatusDetails};
use serde_json::Value;

/// One failed API call: what the handler returns instead of an object.
#[derive(Debug, Clone)]
pub(crate) struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    /// Boxed: most errors have none, and results stay small.
    pub details: Option<Box<StatusDetails>>,
}

impl ApiError {
    pub fn new(code: u16, reason: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            reason,
            message: message.into(),
            details: None,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(400, "BadRequest", message)
    }

    /// `<plural>.<group> "<name>" not found`, the wording of the real server.
    pub fn not_found(group: &str, plural: &str, name: &str) -> ApiError {
        ApiError::new(
            404,
            "NotFound",
            format!("{} \"{name}\" not found", qualified(group, plural)),
        )
        .with_details(group, plural, name)
    }

    /// A path that names no resource this server knows.
    pub fn no_such_path(path: &str) -> ApiError {
        ApiError::new(
            404,
            "NotFound",
            format!("the server could not find the requested resource (path {path})"),
        )
    }

    pub fn already_exists(group: &str, plural: &str, name: &str) -> ApiError {
        ApiError::new(
            409,
            "AlreadyExists",
            format!("{} \"{name}\" already exists", qualified(group, plural)),
        )
        .with_details(group, plural, name)
    }

    /// A stale `resourceVersion` (optimistic concurrency), or a failed
    /// delete precondition.
    pub fn conflict(group: &str, plural: &str, name: &str) -> ApiError {
        ApiError::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; \
                 please apply your changes to the latest version and try again",
                qualified(group, plural)
            ),
        )
        .with_details(group, plural, name)
    }

    pub fn invalid(group: &str, plural: &str, name: &str, message: impl Into<String>) -> ApiError {
        ApiError::new(
            422,
            "Invalid",
            format!(
                "{} \"{name}\" is invalid: {}",
                qualified(group, plural),
                message.into()
            ),
        )
        .with_details(group, plural, name)
    }

    pub fn method_not_allowed(method: &str, what: &str) -> ApiError {
        ApiError::new(
            405,
            "MethodNotAllowed",
            format!(
                "the server does not allow this method on the requested resource ({method} {what})"
            ),
        )
    }

    /// An injected fault (`FakeCluster::fail_next`): the reason a real
    /// server would give with that code.
    pub fn injected(code: u16) -> ApiError {
        let reason = match code {
            400 => "BadRequest",
            401 => "Unauthorized",
            403 => "Forbidden",
            404 => "NotFound",
            405 => "MethodNotAllowed",
            409 => "Conflict",
            410 => "Expired",
            422 => "Invalid",
            429 => "TooManyRequests",
            503 => "ServiceUnavailable",
            504 => "Timeout",
            _ => "InternalError",
        };
        ApiError::new(code, reason, format!("injected fault: {code} {reason}"))
    }

    fn with_details(mut self, group: &str, plural: &str, name: &str) -> ApiError {
        self.details = Some(Box::new(StatusDetails {
            name: Some(name.to_string()),
            group: (!group.is_empty()).then(|| group.to_string()),
            kind: Some(plural.to_string()),
            ..StatusDetails::default()
        }));
        self
    }

    /// The `Status` object as JSON (also the `object` of a watch `ERROR`).
    pub fn to_status(&self) -> Value {
        let status = Status {
            code: Some(i32::from(self.code)),
            details: self.details.as_deref().cloned(),
            message: Some(self.message.clone()),
            metadata: ListMeta::default(),
            reason: Some(self.reason.to_string()),
            status: Some("Failure".to_string()),
        };
        serde_json::to_value(status).unwrap_or(Value::Null)
    }
}

/// `plural.group` (just `plural` for the core group), as in messages.
fn qualified(group: &str, plural: &str) -> String {
    if group.is_empty() {
        plural.to_string()
    } else {
        format!("{plural}.{group}")
    }
}

/// The `Status` a successful delete answers with, for kinds whose delete
/// does not return the object.
pub(crate) fn success(group: &str, plural: &str, name: &str, uid: Option<&str>) -> Value {
    let status = Status {
        details: Some(StatusDetails {
            name: Some(name.to_string()),
            group: (!group.is_empty()).then(|| group.to_string()),
            kind: Some(plural.to_string()),
            uid: uid.map(str::to_string),
            ..StatusDetails::default()
        }),
        status: Some("Success".to_string()),
        ..Status::default()
    };
    serde_json::to_value(status).unwrap_or(Value::Null)
}
