//! Events the control loops record about the objects they act on
//! (Scheduled, FailedScheduling, SuccessfulCreate, ScalingReplicaSet,
//! NodeNotReady, TaintManagerEviction, ...). Best effort, in the
//! background: an event that cannot be written never blocks a decision.

use skiff_api::Resource;
use skiff_api::v1::{Event, EventSource, ObjectMeta, ObjectReference, Time};
use skiff_client::Client;

#[derive(Clone)]
pub struct Recorder {
    client: Client,
    component: &'static str,
}

pub const NORMAL: &str = "Normal";
pub const WARNING: &str = "Warning";

impl Recorder {
    pub fn new(client: Client, component: &'static str) -> Recorder {
        Recorder { client, component }
    }

    /// Records `reason: message` about `obj`.
    pub fn record<R: Resource>(&self, obj: &R, kind: &str, reason: &str, message: &str) {
        let ev = event(obj, self.component, kind, reason, message);
        let client = self.client.clone();
        tokio::spawn(async move {
            if let Err(e) = client.create(&ev).await {
                tracing::debug!("recording an event: {e}");
            }
        });
    }
}

/// The Event object, named as Kubernetes names them (`<object>.<unique hex>`),
/// in the object's namespace (`default` for cluster-scoped objects).
pub fn event<R: Resource>(
    obj: &R,
    component: &str,
    kind: &str,
    reason: &str,
    message: &str,
) -> Event {
    let meta = obj.meta();
    let now = Time::now_seconds();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let namespace = if R::KIND.namespaced() {
        meta.namespace.clone()
    } else {
        "default".to_string()
    };
    Event {
        api_version: "v1".into(),
        kind: "Event".into(),
        metadata: Some(ObjectMeta {
            name: format!("{}.{:x}", meta.name, nanos),
            namespace: namespace.clone(),
            ..Default::default()
        }),
        involved_object: Some(ObjectReference {
            kind: R::KIND.name().into(),
            namespace: if R::KIND.namespaced() {
                namespace
            } else {
                String::new()
            },
            name: meta.name.clone(),
            uid: meta.uid.clone(),
            api_version: R::KIND.api_version(),
            resource_version: meta.resource_version.clone(),
            ..Default::default()
        }),
        reason: reason.into(),
        message: message.into(),
        source: Some(EventSource {
            component: component.into(),
            host: String::new(),
        }),
        first_timestamp: Some(now),
        last_timestamp: Some(now),
        count: 1,
        r#type: kind.into(),
        reporting_component: component.into(),
        ..Default::default()
    }
}
