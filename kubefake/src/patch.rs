//! The PATCH bodies kube-rs sends, applied to an object's JSON.
//!
//! `Patch::Merge` and `Patch::Strategic` carry a JSON document merged into
//! the object (RFC 7386: `null` removes a key), `Patch::Json` an RFC 6902
//! operation list, and `Patch::Apply` (server-side apply) a JSON document.
//! The fake has no schemas, so a strategic merge is a plain merge (lists are
//! replaced whole, `$patch` directives are not understood) and an apply is a
//! merge with no field ownership.

use serde_json::Value;

/// Which kind of patch a `Content-Type` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PatchKind {
    Merge,
    Json,
}

/// The patch kind for a `Content-Type` header, or `None` when the server
/// does not take it (the caller answers 415).
pub(crate) fn kind_of(content_type: &str) -> Option<PatchKind> {
    let essence = content_type.split(';').next().unwrap_or("").trim();
    match essence.to_ascii_lowercase().as_str() {
        "application/merge-patch+json"
        | "application/strategic-merge-patch+json"
        | "application/apply-patch+yaml"
        | "application/apply-patch+json" => Some(PatchKind::Merge),
        "application/json-patch+json" => Some(PatchKind::Json),
        _ => None,
    }
}

/// Applies `patch` to `target`. Errors are messages for a 422 (a JSON patch
/// that does not fit the object) or a 400 (a body of the wrong shape): the
/// caller tells which by `PatchError`.
pub(crate) fn apply(kind: PatchKind, target: &mut Value, patch: &Value) -> Result<(), PatchError> {
    match kind {
        PatchKind::Merge => {
            if !patch.is_object() {
                return Err(PatchError::Malformed(
                    "a merge patch must be a JSON object".into(),
                ));
            }
            merge(target, patch);
            Ok(())
        }
        PatchKind::Json => json_patch(target, patch),
    }
}

/// Why a patch could not be applied.
#[derive(Debug)]
pub(crate) enum PatchError {
    /// The body is not a patch of its kind at all (400).
    Malformed(String),
    /// A well-formed JSON patch that does not apply to this object (422).
    DoesNotApply(String),
}

/// RFC 7386 JSON merge patch.
pub(crate) fn merge(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(serde_json::Map::new());
    }
    if let Value::Object(target) = target {
        for (key, value) in patch {
            if value.is_null() {
                target.remove(key);
            } else {
                merge(target.entry(key.clone()).or_insert(Value::Null), value);
            }
        }
    }
}

/// RFC 6902 JSON patch: add, remove, replace, move, copy, test.
fn json_patch(target: &mut Value, patch: &Value) -> Result<(), PatchError> {
    let Value::Array(ops) = patch else {
        return Err(PatchError::Malformed(
            "a JSON patch must be an array of operations".into(),
        ));
    };
    // Operations apply to a copy: a failing one leaves the object untouched,
    // as the whole patch is atomic.
    let mut doc = target.clone();
    for op in ops {
        let name = op.get("op").and_then(Value::as_str).ok_or_else(|| {
            PatchError::Malformed("each JSON patch operation needs an \"op\"".into())
        })?;
        let path = op.get("path").and_then(Value::as_str).ok_or_else(|| {
            PatchError::Malformed(format!("JSON patch operation {name} needs a \"path\""))
        })?;
        let value = || {
            op.get("value").cloned().ok_or_else(|| {
                PatchError::Malformed(format!("JSON patch {name} needs a \"value\""))
            })
        };
        let from = || {
            op.get("from")
                .and_then(Value::as_str)
                .ok_or_else(|| PatchError::Malformed(format!("JSON patch {name} needs a \"from\"")))
        };
        match name {
            "add" => add(&mut doc, path, value()?)?,
            "remove" => {
                remove(&mut doc, path)?;
            }
            "replace" => {
                remove(&mut doc, path)?;
                add(&mut doc, path, value()?)?;
            }
            "move" => {
                let moved = remove(&mut doc, from()?)?;
                add(&mut doc, path, moved)?;
            }
            "copy" => {
                let source = from()?;
                let copied = doc
                    .pointer(source)
                    .cloned()
                    .ok_or_else(|| missing(source))?;
                add(&mut doc, path, copied)?;
            }
            "test" => {
                let expected = value()?;
                if doc.pointer(path) != Some(&expected) {
                    return Err(PatchError::DoesNotApply(format!(
                        "test operation failed at {path}"
                    )));
                }
            }
            other => {
                return Err(PatchError::Malformed(format!(
                    "unknown JSON patch operation {other:?}"
                )))
            }
        }
    }
    *target = doc;
    Ok(())
}

fn missing(path: &str) -> PatchError {
    PatchError::DoesNotApply(format!("no value at {path}"))
}

/// Splits a JSON pointer into its parent pointer and unescaped last token.
fn split(path: &str) -> Result<(&str, String), PatchError> {
    if path.is_empty() {
        return Err(PatchError::DoesNotApply(
            "the fake does not replace a whole object by JSON patch".into(),
        ));
    }
    let cut = path
        .rfind('/')
        .ok_or_else(|| PatchError::Malformed(format!("{path:?} is not a JSON pointer")))?;
    let token = path[cut + 1..].replace("~1", "/").replace("~0", "~");
    Ok((&path[..cut], token))
}

fn add(doc: &mut Value, path: &str, value: Value) -> Result<(), PatchError> {
    let (parent, token) = split(path)?;
    match doc.pointer_mut(parent) {
        Some(Value::Object(map)) => {
            map.insert(token, value);
            Ok(())
        }
        Some(Value::Array(items)) => {
            if token == "-" {
                items.push(value);
                return Ok(());
            }
            match token.parse::<usize>() {
                Ok(i) if i <= items.len() => {
                    items.insert(i, value);
                    Ok(())
                }
                _ => Err(missing(path)),
            }
        }
        _ => Err(missing(parent)),
    }
}

fn remove(doc: &mut Value, path: &str) -> Result<Value, PatchError> {
    let (parent, token) = split(path)?;
    match doc.pointer_mut(parent) {
        Some(Value::Object(map)) => map.remove(&token).ok_or_else(|| missing(path)),
        Some(Value::Array(items)) => match token.parse::<usize>() {
            Ok(i) if i < items.len() => Ok(items.remove(i)),
            _ => Err(missing(path)),
        },
        _ => Err(missing(path)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_removes_nulls_and_merges_nested_objects() {
        let mut obj =
            json!({"metadata": {"annotations": {"a": "1", "b": "2"}}, "spec": {"replicas": 1}});
        merge(
            &mut obj,
            &json!({"metadata": {"annotations": {"a": null, "c": "3"}}, "spec": {"replicas": 4}}),
        );
        assert_eq!(
            obj,
            json!({"metadata": {"annotations": {"b": "2", "c": "3"}}, "spec": {"replicas": 4}})
        );
    }

    #[test]
    fn json_patch_replace_and_failed_test_leaves_object_alone() {
        let mut obj = json!({"spec": {"replicas": 1}});
        apply(
            PatchKind::Json,
            &mut obj,
            &json!([{"op": "replace", "path": "/spec/replicas", "value": 3}]),
        )
        .unwrap();
        assert_eq!(obj, json!({"spec": {"replicas": 3}}));
        let err = apply(
            PatchKind::Json,
            &mut obj,
            &json!([
                {"op": "replace", "path": "/spec/replicas", "value": 5},
                {"op": "test", "path": "/spec/replicas", "value": 4}
            ]),
        );
        assert!(matches!(err, Err(PatchError::DoesNotApply(_))));
        assert_eq!(obj, json!({"spec": {"replicas": 3}}));
        let err = apply(
            PatchKind::Json,
            &mut obj,
            &json!([{"op": "replace", "path": "/spec/nope", "value": 5}]),
        );
        assert!(matches!(err, Err(PatchError::DoesNotApply(_))));
    }

    #[test]
    fn content_types() {
        assert_eq!(
            kind_of("application/merge-patch+json"),
            Some(PatchKind::Merge)
        );
        assert_eq!(
            kind_of("application/strategic-merge-patch+json; charset=utf-8"),
            Some(PatchKind::Merge)
        );
        assert_eq!(
            kind_of("application/json-patch+json"),
            Some(PatchKind::Json)
        );
        assert_eq!(kind_of("text/plain"), None);
    }
}
