//! The lease as a `coordination.k8s.io/v1` Lease, as Kubernetes' own
//! controllers elect leaders; conflicts are the API server's optimistic
//! concurrency (a replace with a stale `resourceVersion` answers 409).

use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::PostParams;
use kube::{Api, Client};

use super::{LeaseError, LeaseStore, Record, Written};

pub struct KubeLease {
    api: Api<Lease>,
    name: String,
    namespace: String,
    /// The spec last read, so a renewal keeps its acquire time.
    last: Mutex<Option<LeaseSpec>>,
}

impl KubeLease {
    pub fn new(client: Client, namespace: &str, name: &str) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            name: name.into(),
            namespace: namespace.into(),
            last: Mutex::new(None),
        }
    }

    fn lease(&self, record: &Record, version: Option<&str>) -> Lease {
        let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
        let last = self.last.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let same_holder = last
            .as_ref()
            .is_some_and(|spec| spec.holder_identity.as_deref() == Some(record.holder.as_str()));
        let acquire_time = match last {
            Some(spec) if same_holder => spec.acquire_time,
            _ => Some(now.clone()),
        };
        Lease {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                namespace: Some(self.namespace.clone()),
                resource_version: version.map(String::from),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(record.holder.clone()),
                lease_duration_seconds: Some(
                    i32::try_from(record.duration.as_secs().max(1)).unwrap_or(i32::MAX),
                ),
                lease_transitions: Some(i32::try_from(record.transitions).unwrap_or(i32::MAX)),
                acquire_time,
                renew_time: Some(now),
                ..Default::default()
            }),
        }
    }

    fn error(&self, doing: &str, err: kube::Error) -> LeaseError {
        LeaseError {
            what: format!("{doing} Lease {}/{}", self.namespace, self.name),
            message: err.to_string(),
        }
    }
}

fn conflict(err: &kube::Error) -> bool {
    matches!(err, kube::Error::Api(status) if status.code == 409)
}

#[async_trait]
impl LeaseStore for KubeLease {
    async fn get(&self) -> Result<Option<(Record, String)>, LeaseError> {
        let lease = self
            .api
            .get_opt(&self.name)
            .await
            .map_err(|e| self.error("reading", e))?;
        let Some(lease) = lease else {
            return Ok(None);
        };
        let spec = lease.spec.unwrap_or_default();
        let record = Record {
            holder: spec.holder_identity.clone().unwrap_or_default(),
            duration: Duration::from_secs(
                u64::try_from(spec.lease_duration_seconds.unwrap_or(0)).unwrap_or(0),
            ),
            transitions: u32::try_from(spec.lease_transitions.unwrap_or(0)).unwrap_or(0),
        };
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Some(spec);
        Ok(Some((
            record,
            lease.metadata.resource_version.unwrap_or_default(),
        )))
    }

    async fn create(&self, record: &Record) -> Result<Written, LeaseError> {
        match self
            .api
            .create(&PostParams::default(), &self.lease(record, None))
            .await
        {
            Ok(lease) => Ok(Written::Done(
                lease.metadata.resource_version.unwrap_or_default(),
            )),
            Err(err) if conflict(&err) => Ok(Written::Conflict),
            Err(err) => Err(self.error("creating", err)),
        }
    }

    async fn update(&self, record: &Record, version: &str) -> Result<Written, LeaseError> {
        let lease = self.lease(record, Some(version));
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(lease) => Ok(Written::Done(
                lease.metadata.resource_version.unwrap_or_default(),
            )),
            Err(err) if conflict(&err) => Ok(Written::Conflict),
            Err(err) => Err(self.error("renewing", err)),
        }
    }

    fn describe(&self) -> String {
        format!("Lease {}/{}", self.namespace, self.name)
    }
}
