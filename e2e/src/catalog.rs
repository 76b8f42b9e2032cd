//! The catalog as any NATS client sees it: service definitions in KV
//! `rouse-services` and pins in `rouse-pins`, written as JSON records (the
//! contract in README's *Services without restarts*), never through rouse's
//! own types. The controller creates both buckets at start; writers here
//! wait for them.

use std::time::Duration;

use async_nats::jetstream::{self, kv};
use serde_json::{json, Value};

/// The two buckets of one stack's NATS.
pub struct Catalog {
    pub services: kv::Store,
    pub pins: kv::Store,
}

impl Catalog {
    /// Connects to `nats_url` and waits (at most 30 s) for both buckets.
    pub async fn connect(nats_url: &str) -> anyhow::Result<Catalog> {
        let client = async_nats::connect(nats_url).await?;
        let js = jetstream::new(client);
        let stores = rouse_stack::poll(Duration::from_secs(30), || {
            let js = js.clone();
            async move {
                let services = js.get_key_value("rouse-services").await.ok()?;
                let pins = js.get_key_value("rouse-pins").await.ok()?;
                Some((services, pins))
            }
        })
        .await;
        let (services, pins) =
            stores.ok_or_else(|| anyhow::anyhow!("the catalog buckets never appeared"))?;
        Ok(Catalog { services, pins })
    }

    /// Writes `spec` (a `services[]` entry as JSON) as a deployed service;
    /// returns the KV revision.
    pub async fn deploy(&self, spec: &Value) -> anyhow::Result<u64> {
        let name = spec
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| anyhow::anyhow!("a spec needs a name"))?
            .to_string();
        let record = json!({"v": 1, "source": "api", "spec": spec, "updated_by": "e2e"});
        self.put_raw(&name, serde_json::to_vec(&record)?).await
    }

    /// Writes any bytes under `key` (for garbage tests).
    pub async fn put_raw(&self, key: &str, bytes: Vec<u8>) -> anyhow::Result<u64> {
        Ok(self.services.put(key, bytes.into()).await?)
    }

    pub async fn remove(&self, name: &str) -> anyhow::Result<()> {
        Ok(self.services.delete(name).await?)
    }

    /// The record under `name`, decoded as plain JSON.
    pub async fn record(&self, name: &str) -> anyhow::Result<Option<Value>> {
        match self.services.get(name).await? {
            Some(bytes) => Ok(Some(serde_json::from_slice(&bytes)?)),
            None => Ok(None),
        }
    }

    pub async fn pin(&self, name: &str, replicas: u32) -> anyhow::Result<()> {
        let pin = json!({"v": 1, "replicas": replicas, "by": "e2e"});
        self.pins
            .put(name, serde_json::to_vec(&pin)?.into())
            .await?;
        Ok(())
    }

    pub async fn unpin(&self, name: &str) -> anyhow::Result<()> {
        Ok(self.pins.delete(name).await?)
    }
}

/// A rouse-echo service at zero as a catalog spec: `name` on `host`, its
/// replicas carrying the stack's `marker` so the test can find them.
pub fn echo_spec(name: &str, host: &str, marker: &str) -> Value {
    json!({
        "name": name,
        "hosts": [host],
        "backend": {"process": {
            "command": [crate::bin("rouse-echo").to_string_lossy(), "--port", "{port}"],
            "env": {rouse_stack::MARKER_ENV: marker},
        }},
        "readiness": {"http_get": "/healthz"},
        "scaling": {"max_replicas": 2, "scale_to_zero_after": "3s", "drain_timeout": "5s"},
        "hold": {"timeout": "30s", "max_requests": 1000},
    })
}

/// A rouse-echo service at zero as a `services:` entry of a config file
/// (YAML, ending in a newline): appended to a file whose last section is
/// `services`, it adds `name` on `host`, its replicas carrying `marker`.
pub fn echo_service_yaml(name: &str, host: &str, marker: &str) -> String {
    let echo = crate::bin("rouse-echo");
    format!(
        "  - name: {name}\n    hosts: [{host}]\n    backend:\n      process:\n        command: [{:?}, --port, \"{{port}}\"]\n        env: {{{}: {marker:?}}}\n",
        echo.to_string_lossy(),
        rouse_stack::MARKER_ENV,
    )
}
