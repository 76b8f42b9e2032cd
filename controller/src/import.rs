//! `rouse-controller import`: the KEDA HTTP add-on's `HTTPScaledObject`s
//! (`http.keda.sh/v1alpha1`) as rouse services.
//!
//! A cluster moving from the add-on to rouse already has its routing
//! (hosts, path prefixes) and scaling (replica bounds, targets, cooldown)
//! written down in those objects. This turns them into the `services:` of a
//! rouse config, so nobody retypes them, and names every field it could not
//! carry over in a warning: a migration that silently loses header routing
//! or a failover service would only show up as wrong behaviour later.
//!
//! Everything here is pure: objects in (parsed YAML or JSON, from files or
//! from the API server), services and warnings out, so that each rule of the
//! mapping is tested on fixtures. The binary reads the files or the cluster
//! and prints.

use std::collections::{BTreeSet, HashSet};
use std::fmt;
use std::path::Path;
use std::time::Duration;

use serde::{Serialize, Serializer};
use serde_json::{Map, Value};

/// The add-on's API group.
pub const GROUP: &str = "http.keda.sh";
/// The only version of `HTTPScaledObject` there is.
pub const VERSION: &str = "v1alpha1";
pub const KIND: &str = "HTTPScaledObject";
pub const PLURAL: &str = "httpscaledobjects";

/// The add-on's own defaults, which its CRD fills in when a field's parent
/// is given: `scalingMetric.concurrency: {}` means a target of 100.
const DEFAULT_TARGET_VALUE: u64 = 100;
const DEFAULT_GRANULARITY: Duration = Duration::from_secs(1);
const DEFAULT_FAILOVER_SECONDS: u32 = 30;

/// Annotations on an `HTTPScaledObject` that change what the add-on does.
const ANNOTATION_PREFIX: &str = "httpscaledobject.keda.sh/";

/// What an import cannot do without: input that is not YAML, or not
/// Kubernetes objects, or an `HTTPScaledObject` that breaks the add-on's own
/// schema (so the API server would not have stored it either).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImportError {
    #[error("document {document}{}: not YAML or JSON: {reason}", at_line(*.line))]
    Syntax {
        document: usize,
        line: Option<usize>,
        reason: String,
    },
    #[error("document {document}: {found}, not a Kubernetes object (a mapping with `apiVersion` and `kind`)")]
    NotAnObject {
        document: usize,
        found: &'static str,
    },
    #[error("{object}: {field}: {reason}")]
    Invalid {
        object: String,
        field: String,
        reason: String,
    },
    #[error("no HTTPScaledObject in the input{}", skipped_note(*.skipped))]
    Nothing { skipped: usize },
}

fn skipped_note(skipped: usize) -> String {
    match skipped {
        0 => String::new(),
        1 => " (1 object of another kind)".into(),
        n => format!(" ({n} objects of other kinds)"),
    }
}

fn at_line(line: Option<usize>) -> String {
    line.map(|l| format!(", line {l}")).unwrap_or_default()
}

/// Something of an object that rouse does not carry over, or carries over
/// differently.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    /// `namespace/name`, or the kind and name of an object that was skipped.
    pub object: String,
    /// The object's field, e.g. `spec.headers`; empty for the whole object.
    pub field: String,
    pub message: String,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            write!(f, "{}: {}", self.object, self.message)
        } else {
            write!(f, "{}: {}: {}", self.object, self.field, self.message)
        }
    }
}

/// How to read objects.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// The namespace of objects that name none (as `kubectl apply -n`);
    /// unset, such objects are in `default`.
    pub default_namespace: Option<String>,
}

/// The result: one service per `HTTPScaledObject`, in input order.
#[derive(Debug, Clone, PartialEq)]
pub struct Import {
    pub services: Vec<Imported>,
    pub warnings: Vec<Warning>,
}

/// A service and the object it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Imported {
    /// `namespace/name` of the `HTTPScaledObject`.
    pub object: String,
    pub service: Service,
}

/// A rouse service with only the keys the object gave a value for; rouse's
/// defaults fill in the rest when the config is read.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Service {
    pub name: String,
    pub hosts: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub paths: Option<Vec<String>>,
    pub backend: Backend,
    #[serde(skip_serializing_if = "Scaling::is_empty")]
    pub scaling: Scaling,
    #[serde(skip_serializing_if = "Hold::is_empty")]
    pub hold: Hold,
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "optional_duration"
    )]
    pub response_timeout: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Backend {
    pub kubernetes: Kubernetes,
}

/// `backend.kubernetes`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Kubernetes {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deployment: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<Target>,
    pub service: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<Port>,
}

/// `backend.kubernetes.target`: a workload other than a Deployment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Target {
    pub kind: String,
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Port {
    Number(u16),
    Name(String),
}

/// `scaling`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Scaling {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_replicas: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_replicas: Option<u32>,
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "optional_number"
    )]
    pub target_concurrency: Option<f64>,
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "optional_number"
    )]
    pub target_rps: Option<f64>,
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "optional_duration"
    )]
    pub scale_to_zero_after: Option<Duration>,
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "optional_duration"
    )]
    pub stable_window: Option<Duration>,
}

impl Scaling {
    fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// `hold`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Hold {
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "optional_duration"
    )]
    pub timeout: Option<Duration>,
}

impl Hold {
    fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

fn optional_duration<S: Serializer>(value: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match value {
        Some(d) => s.serialize_str(&format_duration(*d)),
        None => s.serialize_none(),
    }
}

/// Whole numbers print as `100`, not `100.0`.
fn optional_number<S: Serializer>(value: &Option<f64>, s: S) -> Result<S::Ok, S::Error> {
    match value {
        Some(n) if n.fract() == 0.0 && (0.0..9.0e15).contains(n) => s.serialize_u64(*n as u64),
        Some(n) => s.serialize_f64(*n),
        None => s.serialize_none(),
    }
}

/// A duration as rouse's config writes it, in the largest unit that is
/// exact: `5m`, `90s`, `1500ms`.
pub fn format_duration(d: Duration) -> String {
    let nanos = d.as_nanos();
    const UNITS: [(u128, &str); 6] = [
        (3_600_000_000_000, "h"),
        (60_000_000_000, "m"),
        (1_000_000_000, "s"),
        (1_000_000, "ms"),
        (1_000, "us"),
        (1, "ns"),
    ];
    if nanos == 0 {
        return "0s".into();
    }
    for (size, unit) in UNITS {
        if nanos.is_multiple_of(size) {
            return format!("{}{unit}", nanos / size);
        }
    }
    unreachable!("every duration is a whole number of nanoseconds")
}

/// A Go duration (`metav1.Duration`, as the add-on's `window` and timeouts
/// are written): `1m`, `1m30s`, `1.5s`, `300ms`, `0`.
pub fn parse_go_duration(text: &str) -> Result<Duration, String> {
    let invalid = || format!("`{text}` is not a duration (e.g. `30s`, `1m30s`, `500ms`)");
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    if text.starts_with('-') {
        return Err(format!("`{text}` is negative"));
    }
    let mut rest = text.strip_prefix('+').unwrap_or(text);
    if rest.is_empty() {
        return Err(invalid());
    }
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(invalid)?;
        let (number, tail) = rest.split_at(number_len);
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let size: u128 = match unit {
            "ns" => 1,
            "us" | "\u{b5}s" | "\u{3bc}s" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return Err(invalid()),
        };
        let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
        if whole.is_empty() && fraction.is_empty() {
            return Err(invalid());
        }
        let whole: u128 = if whole.is_empty() {
            0
        } else {
            whole.parse().map_err(|_| invalid())?
        };
        let mut part = whole.checked_mul(size).ok_or_else(invalid)?;
        let mut scale = size;
        for digit in fraction.chars() {
            let digit = u128::from(digit.to_digit(10).ok_or_else(invalid)?);
            scale /= 10;
            part += digit * scale;
        }
        total = total.checked_add(part).ok_or_else(invalid)?;
        rest = tail;
    }
    let secs = u64::try_from(total / 1_000_000_000).map_err(|_| invalid())?;
    // The remainder of a division by 10^9 fits in u32.
    Ok(Duration::new(secs, (total % 1_000_000_000) as u32))
}

/// Every document of a YAML (or JSON) stream, as JSON values. Empty
/// documents (`---` twice) are skipped; anything else that is not a mapping
/// is an error, as is a stream with no object at all.
pub fn parse_documents(source: &str) -> Result<Vec<Value>, ImportError> {
    use serde::Deserialize;
    let mut documents = Vec::new();
    for (i, document) in serde_norway::Deserializer::from_str(source).enumerate() {
        let number = i + 1;
        let value = Value::deserialize(document).map_err(|err| ImportError::Syntax {
            document: number,
            line: err.location().map(|l| l.line()),
            reason: strip_location(&err.to_string()),
        })?;
        match value {
            Value::Null => {}
            Value::Object(_) => documents.push(value),
            other => {
                return Err(ImportError::NotAnObject {
                    document: number,
                    found: kind_of(&other),
                })
            }
        }
    }
    if documents.is_empty() {
        return Err(ImportError::Nothing { skipped: 0 });
    }
    Ok(documents)
}

/// serde_norway ends its messages with " at line L column C"; the error
/// carries the line itself.
fn strip_location(message: &str) -> String {
    match message.find(" at line ") {
        Some(cut) => message[..cut].to_string(),
        None => message.to_string(),
    }
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

/// The services of every `HTTPScaledObject` among `objects` (lists, `kind:
/// List` or `HTTPScaledObjectList`, are opened; other kinds are skipped
/// with a warning).
pub fn import(objects: &[Value], options: &Options) -> Result<Import, ImportError> {
    let mut warnings = Vec::new();
    let mut found = Vec::new();
    for object in objects {
        collect(object, options, &mut found, &mut warnings)?;
    }
    if found.is_empty() {
        return Err(ImportError::Nothing {
            skipped: warnings.len(),
        });
    }
    let mut taken = HashSet::new();
    let mut services = Vec::new();
    for mapped in found {
        let name = unique_name(&mapped, &taken);
        if name != mapped.name {
            let reason = if sanitise(&mapped.name) == name {
                "is not a rouse service name ([a-z0-9-], at most 63)".to_string()
            } else {
                "is already taken by another imported service".to_string()
            };
            warnings.push(Warning {
                object: mapped.object.clone(),
                field: "metadata.name".into(),
                message: format!("`{}` {reason}; named `{name}`", mapped.name),
            });
        }
        taken.insert(name.clone());
        let mut service = mapped.service;
        service.name = name;
        services.push(Imported {
            object: mapped.object,
            service,
        });
    }
    Ok(Import { services, warnings })
}

/// One `HTTPScaledObject`, mapped, before its service is named.
struct Mapped {
    object: String,
    name: String,
    namespace: String,
    service: Service,
}

fn collect(
    value: &Value,
    options: &Options,
    found: &mut Vec<Mapped>,
    warnings: &mut Vec<Warning>,
) -> Result<(), ImportError> {
    let Some(object) = value.as_object() else {
        return Err(ImportError::Invalid {
            object: "a list's item".into(),
            field: String::new(),
            reason: format!("{}, not a Kubernetes object", kind_of(value)),
        });
    };
    let invalid = |field: &str, reason: String| ImportError::Invalid {
        object: label(object, options),
        field: field.into(),
        reason,
    };
    let kind = object.get("kind").and_then(Value::as_str).unwrap_or("");
    let api_version = object.get("apiVersion").and_then(Value::as_str);
    if kind.is_empty() {
        return Err(invalid("kind", "missing: not a Kubernetes object".into()));
    }
    if kind == "List" || kind.ends_with("List") {
        let items = object
            .get("items")
            .and_then(Value::as_array)
            .ok_or_else(|| invalid("items", format!("a `{kind}` needs a list of `items`")))?;
        for item in items {
            collect(item, options, found, warnings)?;
        }
        return Ok(());
    }
    let group = api_version.and_then(|v| v.split_once('/')).map(|(g, _)| g);
    if kind != KIND || group.is_some_and(|g| g != GROUP) {
        warnings.push(Warning {
            object: format!("{kind} {}", label(object, options)),
            field: String::new(),
            message: format!("not an {KIND} ({GROUP}/{VERSION}); skipped"),
        });
        return Ok(());
    }
    let mapped = map_object(object, options, warnings)?;
    found.push(mapped);
    Ok(())
}

/// `namespace/name`, for messages.
fn label(object: &Map<String, Value>, options: &Options) -> String {
    let metadata = object.get("metadata");
    let name = metadata
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .unwrap_or("<no name>");
    format!("{}/{name}", namespace_of(object, options))
}

fn namespace_of(object: &Map<String, Value>, options: &Options) -> String {
    object
        .get("metadata")
        .and_then(|m| m.get("namespace"))
        .and_then(Value::as_str)
        .map(str::to_string)
        .or_else(|| options.default_namespace.clone())
        .unwrap_or_else(|| "default".into())
}

/// The keys of one mapping of the object, read one by one: whatever is
/// left unread at the end is reported, so no field is dropped unnamed.
struct Fields<'a> {
    path: String,
    map: &'a Map<String, Value>,
    read: BTreeSet<&'static str>,
}

impl<'a> Fields<'a> {
    fn new(path: impl Into<String>, map: &'a Map<String, Value>) -> Self {
        Self {
            path: path.into(),
            map,
            read: BTreeSet::new(),
        }
    }

    fn at(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    /// The value of `key`, `None` when absent or null.
    fn take(&mut self, key: &'static str) -> Option<&'a Value> {
        self.read.insert(key);
        self.map.get(key).filter(|v| !v.is_null())
    }

    /// The path of every key not read.
    fn unread(&self) -> Vec<String> {
        self.map
            .keys()
            .filter(|k| !self.read.contains(k.as_str()))
            .map(|k| self.at(k))
            .collect()
    }
}

/// What mapping one object needs at hand.
struct Context<'w> {
    object: String,
    warnings: &'w mut Vec<Warning>,
}

impl Context<'_> {
    fn warn(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.warnings.push(Warning {
            object: self.object.clone(),
            field: field.into(),
            message: message.into(),
        });
    }

    fn invalid(&self, field: impl Into<String>, reason: impl Into<String>) -> ImportError {
        ImportError::Invalid {
            object: self.object.clone(),
            field: field.into(),
            reason: reason.into(),
        }
    }

    fn unknown(&mut self, fields: &Fields<'_>) {
        for path in fields.unread() {
            self.warn(path, "not a field this import knows; ignored");
        }
    }

    fn map<'v>(
        &self,
        field: &str,
        value: &'v Value,
    ) -> Result<&'v Map<String, Value>, ImportError> {
        value
            .as_object()
            .ok_or_else(|| self.invalid(field, format!("{}, expected a mapping", kind_of(value))))
    }

    fn string<'v>(&self, field: &str, value: &'v Value) -> Result<&'v str, ImportError> {
        value
            .as_str()
            .ok_or_else(|| self.invalid(field, format!("{}, expected a string", kind_of(value))))
    }

    fn strings(&self, field: &str, value: &Value) -> Result<Vec<String>, ImportError> {
        let items = value
            .as_array()
            .ok_or_else(|| self.invalid(field, format!("{}, expected a list", kind_of(value))))?;
        items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                self.string(&format!("{field}[{i}]"), item)
                    .map(str::to_string)
            })
            .collect()
    }

    /// A non-negative integer (the add-on's int32 fields).
    fn count(&self, field: &str, value: &Value) -> Result<u32, ImportError> {
        value
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .filter(|n| i32::try_from(*n).is_ok())
            .ok_or_else(|| {
                self.invalid(
                    field,
                    format!("{value}: expected an integer from 0 to {}", i32::MAX),
                )
            })
    }

    /// A string field; empty counts as absent (Go's zero value).
    fn take_string(
        &self,
        fields: &mut Fields<'_>,
        key: &'static str,
    ) -> Result<Option<String>, ImportError> {
        match fields.take(key) {
            Some(v) => {
                Ok(Some(self.string(&fields.at(key), v)?.to_string()).filter(|s| !s.is_empty()))
            }
            None => Ok(None),
        }
    }

    fn duration(&self, field: &str, value: &Value) -> Result<Duration, ImportError> {
        let text = self.string(field, value)?;
        parse_go_duration(text).map_err(|reason| self.invalid(field, reason))
    }
}

fn map_object(
    object: &Map<String, Value>,
    options: &Options,
    warnings: &mut Vec<Warning>,
) -> Result<Mapped, ImportError> {
    let namespace = namespace_of(object, options);
    let mut top = Fields::new("", object);
    let mut cx = Context {
        object: label(object, options),
        warnings,
    };
    let metadata = top
        .take("metadata")
        .ok_or_else(|| cx.invalid("metadata", "missing"))?;
    let metadata = cx.map("metadata", metadata)?;
    let name = metadata
        .get("name")
        .ok_or_else(|| cx.invalid("metadata.name", "missing"))?;
    let name = cx.string("metadata.name", name)?.to_string();
    if let Some(ns) = metadata.get("namespace").filter(|v| !v.is_null()) {
        cx.string("metadata.namespace", ns)?;
    }
    cx.object = format!("{namespace}/{name}");
    let api_version = top.take("apiVersion").and_then(Value::as_str);
    if let Some(version) = api_version.filter(|v| *v != format!("{GROUP}/{VERSION}")) {
        cx.warn(
            "apiVersion",
            format!("`{version}`: read as {GROUP}/{VERSION}, the only version this import knows"),
        );
    }
    top.take("kind");
    // The object's state, not its configuration.
    top.take("status");
    annotations(&mut cx, metadata)?;
    let spec = top
        .take("spec")
        .ok_or_else(|| cx.invalid("spec", "missing"))?;
    let spec = cx.map("spec", spec)?;
    cx.unknown(&top);

    let explicit_namespace = metadata
        .get("namespace")
        .and_then(Value::as_str)
        .map(str::to_string)
        .or_else(|| options.default_namespace.clone());
    let service = map_spec(&mut cx, spec, explicit_namespace, name.clone())?;
    Ok(Mapped {
        object: cx.object,
        name,
        namespace,
        service,
    })
}

/// The add-on's own annotations change its behaviour; other metadata
/// (labels, other annotations, uid, timestamps) is the object's
/// bookkeeping, not configuration, and is not reported.
fn annotations(cx: &mut Context<'_>, metadata: &Map<String, Value>) -> Result<(), ImportError> {
    let Some(annotations) = metadata.get("annotations").filter(|v| !v.is_null()) else {
        return Ok(());
    };
    let annotations = cx.map("metadata.annotations", annotations)?;
    for (key, value) in annotations {
        let Some(which) = key.strip_prefix(ANNOTATION_PREFIX) else {
            continue;
        };
        let field = format!("metadata.annotations.{key}");
        let value = value.as_str().unwrap_or_default();
        let message = match which {
            "skip-scaledobject-creation" => format!(
                "`{value}`: with it the add-on leaves scaling to a ScaledObject of your own; \
                 rouse scales the workload itself (or follows KEDA with `scaling.driver: keda` \
                 and `controller.keda_listen`): ignored"
            ),
            "orphan-scaledobject" => format!(
                "`{value}`: rouse creates no ScaledObject, so there is none to orphan: ignored"
            ),
            _ => format!("`{value}`: an add-on annotation rouse has no equivalent for: ignored"),
        };
        cx.warn(field, message);
    }
    Ok(())
}

fn map_spec(
    cx: &mut Context<'_>,
    spec: &Map<String, Value>,
    namespace: Option<String>,
    name: String,
) -> Result<Service, ImportError> {
    let mut fields = Fields::new("spec", spec);
    let hosts = hosts(cx, &mut fields)?;
    let paths = match fields.take("pathPrefixes") {
        Some(value) => paths(cx, "spec.pathPrefixes", value)?,
        None => None,
    };
    if let Some(headers) = fields.take("headers") {
        let headers = header_names(cx, headers)?;
        cx.warn(
            "spec.headers",
            format!(
                "rouse does not route on headers; ignored ({headers}): every request to the \
                 hosts and paths reaches this service"
            ),
        );
    }
    let target_ref = fields
        .take("scaleTargetRef")
        .ok_or_else(|| cx.invalid("spec.scaleTargetRef", "missing"))?;
    let kubernetes = scale_target(cx, target_ref, namespace)?;

    let mut scaling = Scaling::default();
    let mut hold = Hold::default();
    if let Some(replicas) = fields.take("replicas") {
        let replicas = cx.map("spec.replicas", replicas)?;
        let mut r = Fields::new("spec.replicas", replicas);
        if let Some(min) = r.take("min") {
            scaling.min_replicas = Some(cx.count("spec.replicas.min", min)?);
        }
        if let Some(max) = r.take("max") {
            scaling.max_replicas = Some(cx.count("spec.replicas.max", max)?);
        }
        cx.unknown(&r);
    }
    let has_metric = match fields.take("scalingMetric") {
        Some(metric) => scaling_metric(cx, metric, &mut scaling)?,
        None => false,
    };
    if let Some(pending) = fields.take("targetPendingRequests") {
        let pending = cx.count("spec.targetPendingRequests", pending)?;
        if has_metric {
            cx.warn(
                "spec.targetPendingRequests",
                "ignored, as by the add-on: `spec.scalingMetric` sets the target",
            );
        } else {
            scaling.target_concurrency = Some(f64::from(pending));
        }
    }
    if let Some(period) = fields.take("scaledownPeriod") {
        let seconds = cx.count("spec.scaledownPeriod", period)?;
        scaling.scale_to_zero_after = Some(Duration::from_secs(u64::from(seconds)));
    }
    if let Some(initial) = fields.take("initialCooldownPeriod") {
        let seconds = cx.count("spec.initialCooldownPeriod", initial)?;
        cx.warn(
            "spec.initialCooldownPeriod",
            format!(
                "{seconds}: rouse has no initial cooldown (a started controller waits one \
                 `scale_to_zero_after` before scaling to zero); ignored"
            ),
        );
    }
    let mut response_timeout = None;
    if let Some(timeouts) = fields.take("timeouts") {
        let timeouts = cx.map("spec.timeouts", timeouts)?;
        let mut t = Fields::new("spec.timeouts", timeouts);
        // Zero is the add-on's "unset": its global default applies.
        if let Some(wait) = t.take("conditionWait") {
            let wait = cx.duration("spec.timeouts.conditionWait", wait)?;
            hold.timeout = Some(wait).filter(|d| !d.is_zero());
        }
        if let Some(header) = t.take("responseHeader") {
            let header = cx.duration("spec.timeouts.responseHeader", header)?;
            response_timeout = Some(header).filter(|d| !d.is_zero());
        }
        cx.unknown(&t);
    }
    if let Some(failover) = fields.take("coldStartTimeoutFailoverRef") {
        cold_start_failover(cx, failover, &mut hold)?;
    }
    cx.unknown(&fields);

    Ok(Service {
        name,
        hosts,
        paths,
        backend: Backend { kubernetes },
        scaling,
        hold,
        response_timeout,
    })
}

/// `spec.hosts` (and the single `spec.host` of add-on versions before
/// 0.6). No host at all, `""` and `*` all match every host in the add-on,
/// as `*` does in rouse. A port is stripped: the add-on matches the host
/// alone, and rouse takes no port.
fn hosts(cx: &mut Context<'_>, fields: &mut Fields<'_>) -> Result<Vec<String>, ImportError> {
    let mut given = Vec::new();
    if let Some(hosts) = fields.take("hosts") {
        for (i, host) in cx.strings("spec.hosts", hosts)?.into_iter().enumerate() {
            given.push((format!("spec.hosts[{i}]"), host));
        }
    }
    if let Some(host) = fields.take("host") {
        given.push((
            "spec.host".into(),
            cx.string("spec.host", host)?.to_string(),
        ));
    }
    let mut hosts: Vec<String> = Vec::new();
    for (field, host) in given {
        let bare = strip_port(&host);
        if bare != host {
            cx.warn(
                field,
                format!("`{host}`: imported as `{bare}` (hosts are matched without their port)"),
            );
        }
        let host = if bare.is_empty() { "*" } else { bare };
        if !hosts.iter().any(|h| h == host) {
            hosts.push(host.to_string());
        }
    }
    if hosts.is_empty() {
        hosts.push("*".into());
    }
    Ok(hosts)
}

/// `example.com:8080` → `example.com`, `[::1]:80` → `::1`; no port, as is.
fn strip_port(host: &str) -> &str {
    if let Some(inner) = host.strip_prefix('[') {
        return inner.split(']').next().unwrap_or(inner);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if !name.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => {
            name
        }
        _ => host,
    }
}

/// Path prefixes, with the leading `/` rouse requires (the add-on trims
/// slashes before matching, so `api` and `/api` are the same there).
fn paths(
    cx: &mut Context<'_>,
    field: &str,
    value: &Value,
) -> Result<Option<Vec<String>>, ImportError> {
    let mut paths: Vec<String> = Vec::new();
    for path in cx.strings(field, value)? {
        let path = if path.starts_with('/') {
            path
        } else {
            format!("/{path}")
        };
        if !paths.contains(&path) {
            paths.push(path);
        }
    }
    Ok(Some(paths).filter(|p| !p.is_empty()))
}

fn header_names(cx: &Context<'_>, value: &Value) -> Result<String, ImportError> {
    let items = value.as_array().ok_or_else(|| {
        cx.invalid(
            "spec.headers",
            format!("{}, expected a list", kind_of(value)),
        )
    })?;
    let mut names = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let at = format!("spec.headers[{i}]");
        let header = cx.map(&at, item)?;
        let name = header
            .get("name")
            .ok_or_else(|| cx.invalid(format!("{at}.name"), "missing"))?;
        let name = cx.string(&format!("{at}.name"), name)?;
        match header.get("value").and_then(Value::as_str) {
            Some(value) => names.push(format!("{name}: {value}")),
            None => names.push(name.to_string()),
        }
    }
    Ok(names.join(", "))
}

/// `spec.scaleTargetRef` → `backend.kubernetes`.
fn scale_target(
    cx: &mut Context<'_>,
    value: &Value,
    namespace: Option<String>,
) -> Result<Kubernetes, ImportError> {
    let at = "spec.scaleTargetRef";
    let map = cx.map(at, value)?;
    let mut fields = Fields::new(at, map);
    let name = cx.take_string(&mut fields, "name")?;
    // Add-on versions before 0.9 named the Deployment here; the add-on
    // itself migrated it to `name` with kind Deployment.
    let deployment = cx.take_string(&mut fields, "deployment")?;
    let kind = cx.take_string(&mut fields, "kind")?;
    let api_version = cx.take_string(&mut fields, "apiVersion")?;
    let service = cx
        .take_string(&mut fields, "service")?
        .ok_or_else(|| cx.invalid(format!("{at}.service"), "missing"))?;
    let port_name = cx.take_string(&mut fields, "portName")?;
    let port_number = match fields.take("port") {
        Some(v) => Some(
            v.as_u64()
                .and_then(|p| u16::try_from(p).ok())
                .filter(|p| *p > 0)
                .ok_or_else(|| {
                    cx.invalid(
                        format!("{at}.port"),
                        format!("{v}: expected a port from 1 to 65535"),
                    )
                })?,
        ),
        None => None,
    };
    cx.unknown(&fields);

    let workload = match (name, deployment) {
        (Some(name), Some(old)) if name != old => {
            return Err(cx.invalid(
                at,
                format!("`name` ({name}) and the old `deployment` ({old}) differ: set one"),
            ))
        }
        (Some(name), _) | (None, Some(name)) => name,
        (None, None) => return Err(cx.invalid(format!("{at}.name"), "missing")),
    };
    let (deployment, target) = match (kind.as_deref(), api_version.as_deref()) {
        // The add-on's default kind, as KEDA's.
        (None | Some("Deployment"), None | Some("apps/v1")) => (Some(workload), None),
        (kind, api_version) => (
            None,
            Some(Target {
                kind: kind.unwrap_or("Deployment").to_string(),
                name: workload,
                api_version: api_version.map(str::to_string),
            }),
        ),
    };
    let port = match (port_number, port_name) {
        (Some(number), Some(name)) => {
            cx.warn(
                format!("{at}.portName"),
                format!("`{name}`: ignored, `port` ({number}) is set too (the add-on takes one)"),
            );
            Some(Port::Number(number))
        }
        (Some(number), None) => Some(Port::Number(number)),
        (None, Some(name)) => Some(Port::Name(name)),
        (None, None) => None,
    };
    Ok(Kubernetes {
        namespace,
        deployment,
        target,
        service,
        port,
    })
}

/// `spec.scalingMetric` → `target_concurrency`, `target_rps` and the
/// window they are averaged over. Whether it sets a target: an empty one
/// leaves `targetPendingRequests` in force, in the add-on too.
fn scaling_metric(
    cx: &mut Context<'_>,
    value: &Value,
    scaling: &mut Scaling,
) -> Result<bool, ImportError> {
    let at = "spec.scalingMetric";
    let map = cx.map(at, value)?;
    let mut fields = Fields::new(at, map);
    let concurrency = fields.take("concurrency");
    let rate = fields.take("requestRate");
    if let Some(concurrency) = concurrency {
        let at = "spec.scalingMetric.concurrency";
        let map = cx.map(at, concurrency)?;
        let mut c = Fields::new(at, map);
        let target = match c.take("targetValue") {
            Some(v) => cx.count(&format!("{at}.targetValue"), v)?,
            None => DEFAULT_TARGET_VALUE as u32,
        };
        scaling.target_concurrency = Some(f64::from(target));
        cx.unknown(&c);
    }
    if let Some(rate) = rate {
        let at = "spec.scalingMetric.requestRate";
        let map = cx.map(at, rate)?;
        let mut r = Fields::new(at, map);
        let target = match r.take("targetValue") {
            Some(v) => cx.count(&format!("{at}.targetValue"), v)?,
            None => DEFAULT_TARGET_VALUE as u32,
        };
        // The add-on counts requests per `granularity` bucket; rouse's
        // target is per second.
        let granularity = match r.take("granularity") {
            Some(v) => cx.duration(&format!("{at}.granularity"), v)?,
            None => DEFAULT_GRANULARITY,
        };
        if granularity.is_zero() {
            return Err(cx.invalid(format!("{at}.granularity"), "must be above 0"));
        }
        scaling.target_rps = Some(f64::from(target) / granularity.as_secs_f64());
        // The add-on averages the rate over `window`; rouse averages
        // concurrency and rate over `stable_window` to scale down (and a
        // tenth of it to scale up at once), 60s by default like `window`.
        if let Some(window) = r.take("window") {
            scaling.stable_window = Some(cx.duration(&format!("{at}.window"), window)?);
        }
        cx.unknown(&r);
        if concurrency.is_none() {
            cx.warn(
                at,
                "rouse scales on concurrency too (`target_concurrency`, default 10), \
                 whichever needs more replicas; raise it to scale on the rate alone",
            );
        }
    }
    if concurrency.is_some() && rate.is_some() {
        cx.warn(
            at,
            "the add-on refuses both `concurrency` and `requestRate`; rouse scales on both, \
             whichever needs more replicas",
        );
    }
    cx.unknown(&fields);
    Ok(concurrency.is_some() || rate.is_some())
}

/// `spec.coldStartTimeoutFailoverRef`: rouse has nowhere else to send a
/// request held too long and answers 503, but the wait itself
/// (`timeoutSeconds`, which overrides `conditionWait` in the add-on too) is
/// `hold.timeout`.
fn cold_start_failover(
    cx: &mut Context<'_>,
    value: &Value,
    hold: &mut Hold,
) -> Result<(), ImportError> {
    let at = "spec.coldStartTimeoutFailoverRef";
    let map = cx.map(at, value)?;
    let mut fields = Fields::new(at, map);
    let service = cx
        .take_string(&mut fields, "service")?
        .ok_or_else(|| cx.invalid(format!("{at}.service"), "missing"))?;
    fields.take("port");
    fields.take("portName");
    let seconds = match fields.take("timeoutSeconds") {
        Some(v) => cx.count(&format!("{at}.timeoutSeconds"), v)?,
        None => DEFAULT_FAILOVER_SECONDS,
    };
    // 0 is the add-on's "unset": `conditionWait` stays.
    if seconds > 0 {
        hold.timeout = Some(Duration::from_secs(u64::from(seconds)));
    }
    let wait = hold
        .timeout
        .map(|d| format!(" ({})", format_duration(d)))
        .unwrap_or_default();
    cx.warn(
        at,
        format!(
            "rouse has no failover service: a request held past `hold.timeout`{wait} gets 503 \
             with Retry-After instead of going to `{service}`; ignored"
        ),
    );
    cx.unknown(&fields);
    Ok(())
}

/// A rouse service name for `name`: lowercase, runs of anything but
/// `[a-z0-9]` as one `-`, at most 63 characters.
pub fn sanitise(name: &str) -> String {
    let mut out = String::new();
    for c in name.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            out.push(c);
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    let mut out = out.trim_matches('-').to_string();
    out.truncate(63);
    let out = out.trim_end_matches('-').to_string();
    if out.is_empty() {
        "service".into()
    } else {
        out
    }
}

/// The sanitised name, else `<name>-<namespace>` (objects of the same name
/// in two namespaces), else a numbered one.
fn unique_name(mapped: &Mapped, taken: &HashSet<String>) -> String {
    let base = sanitise(&mapped.name);
    if !taken.contains(&base) {
        return base;
    }
    let with_namespace = sanitise(&format!("{}-{}", mapped.name, mapped.namespace));
    if !taken.contains(&with_namespace) {
        return with_namespace;
    }
    (2..)
        .map(|n| {
            let suffix = format!("-{n}");
            let mut stem = base.clone();
            stem.truncate(63 - suffix.len());
            format!("{}{suffix}", stem.trim_end_matches('-'))
        })
        .find(|candidate| !taken.contains(candidate))
        .unwrap_or(base)
}

impl Import {
    /// The `services:` of a rouse config, each under a comment naming its
    /// object.
    pub fn to_yaml(&self) -> Result<String, serde_norway::Error> {
        let mut out = String::from("services:\n");
        for imported in &self.services {
            out.push_str(&format!("  # from {KIND} {}\n", imported.object));
            let item = serde_norway::to_string(&[&imported.service])?;
            for line in item.lines() {
                out.push_str("  ");
                out.push_str(line);
                out.push('\n');
            }
        }
        Ok(out)
    }

    /// Whether the services, alone in a config, pass rouse's validation:
    /// the problems, each naming the object of the service it is about.
    /// (Two objects routing the same host and path, a `min` above `max`, a
    /// target of 0: valid for the add-on's schema, not for rouse.)
    pub fn check(&self) -> Result<(), Vec<String>> {
        let yaml = self.to_yaml().map_err(|e| vec![e.to_string()])?;
        match rouse_nats::Config::parse(Path::new("imported"), &yaml) {
            Ok(_) => Ok(()),
            Err(rouse_nats::config::ConfigError::Invalid(issues)) => Err(issues
                .iter()
                .map(|issue| {
                    let object = issue
                        .key
                        .strip_prefix("services[")
                        .and_then(|rest| rest.split(']').next())
                        .and_then(|i| i.parse::<usize>().ok())
                        .and_then(|i| self.services.get(i))
                        .map(|s| format!("{} (service `{}`)", s.object, s.service.name))
                        .unwrap_or_else(|| "imported".into());
                    format!("{object}: key `{}`: {}", issue.key, issue.reason)
                })
                .collect()),
            Err(other) => Err(vec![other.to_string()]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        let ok = [
            ("0", Duration::ZERO),
            ("0s", Duration::ZERO),
            ("1s", Duration::from_secs(1)),
            ("1m", Duration::from_secs(60)),
            ("1m30s", Duration::from_secs(90)),
            ("1h0m0s", Duration::from_secs(3600)),
            ("1.5s", Duration::from_millis(1500)),
            (".5s", Duration::from_millis(500)),
            ("300ms", Duration::from_millis(300)),
            ("2us", Duration::from_micros(2)),
            ("2\u{b5}s", Duration::from_micros(2)),
            ("7ns", Duration::from_nanos(7)),
            ("+10s", Duration::from_secs(10)),
        ];
        for (text, expected) in ok {
            assert_eq!(parse_go_duration(text), Ok(expected), "{text}");
        }
        for bad in ["", "1", "s", "1x", "1 s", "-1s", "1..5s", "1s2", ".s"] {
            assert!(parse_go_duration(bad).is_err(), "{bad} should not parse");
        }
    }

    #[test]
    fn durations_print_in_their_largest_exact_unit() {
        let cases = [
            (Duration::ZERO, "0s"),
            (Duration::from_secs(300), "5m"),
            (Duration::from_secs(7200), "2h"),
            (Duration::from_secs(90), "90s"),
            (Duration::from_millis(1500), "1500ms"),
            (Duration::from_micros(3), "3us"),
        ];
        for (d, text) in cases {
            assert_eq!(format_duration(d), text);
            // And rouse's config reads them back.
            assert_eq!(humantime::parse_duration(text).ok(), Some(d), "{text}");
        }
    }

    #[test]
    fn names_are_sanitised() {
        assert_eq!(sanitise("xkcd"), "xkcd");
        assert_eq!(sanitise("My.App_v2"), "my-app-v2");
        assert_eq!(sanitise("--a..b--"), "a-b");
        assert_eq!(sanitise("..."), "service");
        let long = "a".repeat(70);
        assert_eq!(sanitise(&long).len(), 63);
        let dotted = format!("{}.b", "a".repeat(62));
        assert_eq!(
            sanitise(&dotted),
            "a".repeat(62),
            "no trailing `-` after the cut"
        );
    }

    #[test]
    fn ports_are_stripped_from_hosts() {
        assert_eq!(strip_port("example.com:8080"), "example.com");
        assert_eq!(strip_port("example.com"), "example.com");
        assert_eq!(strip_port("[::1]:80"), "::1");
        assert_eq!(strip_port("*.example.com"), "*.example.com");
    }
}
