//! `labelSelector` and `fieldSelector` query parameters.
//!
//! The Kubernetes backend finds its EndpointSlices by
//! `kubernetes.io/service-name=<svc>` and its pods by `app=<name>`, and
//! kube-runtime's `watch_object` uses `metadata.name=<name>`, so equality
//! selectors are what matter. Set-based label selectors (`in`, `notin`) are
//! answered with 400 rather than silently matching everything.

use serde_json::Value;

/// One requirement of a selector.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    Exists(String),
    NotExists(String),
}

/// A parsed label or field selector; the empty selector matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Selector {
    requirements: Vec<Requirement>,
}

impl Selector {
    /// Parses a label selector (`a=b,c==d,e!=f,g,!h`).
    pub fn labels(text: &str) -> Result<Selector, String> {
        Self::parse(text, true)
    }

    /// Parses a field selector; only `metadata.name` and `metadata.namespace`
    /// are fields the fake indexes, like most kinds of the real server.
    pub fn fields(text: &str) -> Result<Selector, String> {
        let selector = Self::parse(text, false)?;
        for req in &selector.requirements {
            let (Requirement::Equals(key, _) | Requirement::NotEquals(key, _)) = req else {
                return Err(format!("invalid field selector {text:?}"));
            };
            if key != "metadata.name" && key != "metadata.namespace" {
                return Err(format!("field label not supported: {key}"));
            }
        }
        Ok(selector)
    }

    fn parse(text: &str, labels: bool) -> Result<Selector, String> {
        let mut requirements = Vec::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            if part.contains('(') || part.contains(' ') {
                return Err(format!(
                    "unsupported selector {part:?}: the fake takes only =, ==, != and existence"
                ));
            }
            let req = if let Some((k, v)) = part.split_once("!=") {
                Requirement::NotEquals(k.to_string(), v.to_string())
            } else if let Some((k, v)) = part.split_once("==") {
                Requirement::Equals(k.to_string(), v.to_string())
            } else if let Some((k, v)) = part.split_once('=') {
                Requirement::Equals(k.to_string(), v.to_string())
            } else if let Some(k) = part.strip_prefix('!') {
                Requirement::NotExists(k.to_string())
            } else {
                Requirement::Exists(part.to_string())
            };
            let key = match &req {
                Requirement::Equals(k, _)
                | Requirement::NotEquals(k, _)
                | Requirement::Exists(k)
                | Requirement::NotExists(k) => k,
            };
            if key.is_empty() || (!labels && matches!(req, Requirement::Exists(_))) {
                return Err(format!("invalid selector {text:?}"));
            }
            requirements.push(req);
        }
        Ok(Selector { requirements })
    }

    /// Whether the object's labels satisfy this label selector.
    pub fn matches_labels(&self, object: &Value) -> bool {
        let labels = object.pointer("/metadata/labels");
        self.matches(|key| labels.and_then(|l| l.get(key)).and_then(Value::as_str))
    }

    /// Whether the object's fields satisfy this field selector.
    pub fn matches_fields(&self, object: &Value) -> bool {
        self.matches(|key| match key {
            "metadata.name" => object.pointer("/metadata/name").and_then(Value::as_str),
            "metadata.namespace" => object
                .pointer("/metadata/namespace")
                .and_then(Value::as_str),
            _ => None,
        })
    }

    fn matches<'a>(&self, get: impl Fn(&str) -> Option<&'a str>) -> bool {
        self.requirements.iter().all(|req| match req {
            Requirement::Equals(k, v) => get(k) == Some(v.as_str()),
            Requirement::NotEquals(k, v) => get(k) != Some(v.as_str()),
            Requirement::Exists(k) => get(k).is_some(),
            Requirement::NotExists(k) => get(k).is_none(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn equality_and_existence() {
        let obj = json!({"metadata": {"name": "x", "labels": {"app": "echo", "tier": "web"}}});
        assert!(Selector::labels("app=echo").unwrap().matches_labels(&obj));
        assert!(Selector::labels("app==echo,tier")
            .unwrap()
            .matches_labels(&obj));
        assert!(!Selector::labels("app=echo,tier!=web")
            .unwrap()
            .matches_labels(&obj));
        assert!(Selector::labels("!gone").unwrap().matches_labels(&obj));
        assert!(Selector::labels("").unwrap().matches_labels(&obj));
        assert!(Selector::labels("app in (echo)").is_err());
        assert!(Selector::fields("metadata.name=x")
            .unwrap()
            .matches_fields(&obj));
        assert!(Selector::fields("spec.nodeName=x").is_err());
    }
}
