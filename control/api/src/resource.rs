//! The [`Resource`] trait: what generic code (the API server, the client,
//! informers) needs to know of any kind.

use std::sync::LazyLock;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::v1::*;
use crate::validation::{self, FieldError};
use crate::{Kind, Object};

static EMPTY_META: LazyLock<ObjectMeta> = LazyLock::new(ObjectMeta::default);

pub trait Resource:
    prost::Message + Default + Clone + PartialEq + Serialize + DeserializeOwned + Send + Sync + 'static
{
    const KIND: Kind;

    fn meta_slot(&mut self) -> &mut Option<ObjectMeta>;
    /// Sets `apiVersion` and `kind` to the kind's own.
    fn set_type_meta(&mut self);
    fn meta_ref(&self) -> Option<&ObjectMeta>;

    /// Drops the status (a status-less kind has nothing to drop).
    fn clear_status(&mut self);
    /// Takes `other`'s status, keeping everything else.
    fn copy_status_from(&mut self, other: &Self);

    /// Kind-specific field selector values (`spec.nodeName` on a Pod).
    fn extra_field(&self, _path: &str) -> Option<String> {
        None
    }

    /// Kind-specific validation, field by field.
    fn validate_fields(&self) -> Vec<FieldError>;

    fn into_object(self) -> Object;
    fn from_object(object: Object) -> Option<Self>;

    fn meta(&self) -> &ObjectMeta {
        self.meta_ref().unwrap_or(&EMPTY_META)
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        self.meta_slot().get_or_insert_with(ObjectMeta::default)
    }

    fn name(&self) -> &str {
        &self.meta().name
    }

    fn namespace(&self) -> &str {
        &self.meta().namespace
    }

    /// The store key of this object.
    fn key(&self) -> String {
        Self::KIND.key(self.namespace(), self.name())
    }

    /// `namespace/name`, or `name` for a cluster-scoped kind.
    fn full_name(&self) -> String {
        if Self::KIND.namespaced() {
            format!("{}/{}", self.namespace(), self.name())
        } else {
            self.name().to_string()
        }
    }

    /// Everything but metadata and status, encoded: two objects with equal
    /// fingerprints have the same spec (the generation stays).
    fn spec_fingerprint(&self) -> Vec<u8> {
        let mut copy = self.clone();
        *copy.meta_slot() = None;
        copy.clear_status();
        copy.encode_to_vec()
    }

    /// Value of a field for field selectors.
    fn field(&self, path: &str) -> Option<String> {
        match path {
            "metadata.name" => Some(self.name().to_string()),
            "metadata.namespace" => Some(self.namespace().to_string()),
            _ => self.extra_field(path),
        }
    }

    /// The metadata checks shared by every kind, then the kind's own.
    fn validate(&self) -> Vec<FieldError> {
        let mut errors = validation::validate_meta(self.meta(), Self::KIND);
        errors.extend(self.validate_fields());
        errors
    }
}

macro_rules! resource {
    ($ty:ident, $kind:ident, status: $($status:ident)?, validate: $validate:path) => {
        impl Resource for $ty {
            const KIND: Kind = Kind::$kind;

            fn meta_slot(&mut self) -> &mut Option<ObjectMeta> {
                &mut self.metadata
            }
            fn meta_ref(&self) -> Option<&ObjectMeta> {
                self.metadata.as_ref()
            }
            fn set_type_meta(&mut self) {
                self.api_version = Kind::$kind.api_version();
                self.kind = Kind::$kind.name().to_string();
            }
            fn clear_status(&mut self) {
                $(self.$status = None;)?
            }
            #[allow(unused_variables, reason = "status-less kinds ignore `other`")]
            fn copy_status_from(&mut self, other: &Self) {
                $(self.$status = other.$status.clone();)?
            }
            fn validate_fields(&self) -> Vec<FieldError> {
                $validate(self)
            }
            fn into_object(self) -> Object {
                Object::$kind(self)
            }
            fn from_object(object: Object) -> Option<Self> {
                match object {
                    Object::$kind(o) => Some(o),
                    _ => None,
                }
            }
            fn extra_field(&self, path: &str) -> Option<String> {
                extra_field::$kind(self, path)
            }
        }
    };
}

resource!(Namespace, Namespace, status: status, validate: validation::namespace);
resource!(Node, Node, status: status, validate: validation::node);
resource!(Pod, Pod, status: status, validate: validation::pod);
resource!(Service, Service, status: status, validate: validation::service);
resource!(EndpointSlice, EndpointSlice, status:, validate: validation::endpoint_slice);
resource!(Deployment, Deployment, status: status, validate: validation::deployment);
resource!(ReplicaSet, ReplicaSet, status: status, validate: validation::replica_set);
resource!(ConfigMap, ConfigMap, status:, validate: validation::config_map);
resource!(Lease, Lease, status:, validate: validation::lease);
resource!(Event, Event, status:, validate: validation::event);
resource!(ServiceAccount, ServiceAccount, status:, validate: validation::service_account);
resource!(Endpoints, Endpoints, status:, validate: validation::endpoints);
resource!(Role, Role, status:, validate: validation::role);
resource!(ClusterRole, ClusterRole, status:, validate: validation::cluster_role);
resource!(RoleBinding, RoleBinding, status:, validate: validation::role_binding);
resource!(ClusterRoleBinding, ClusterRoleBinding, status:, validate: validation::cluster_role_binding);
resource!(Secret, Secret, status:, validate: validation::secret);

/// Field selector values beyond `metadata.name` and `metadata.namespace`,
/// the ones Kubernetes supports and components use.
#[expect(non_snake_case, reason = "one function a kind, named after it")]
mod extra_field {
    use crate::v1::*;

    pub fn Pod(pod: &Pod, path: &str) -> Option<String> {
        let spec = |f: fn(&PodSpec) -> String| Some(pod.spec.as_ref().map(f).unwrap_or_default());
        let status =
            |f: fn(&PodStatus) -> String| Some(pod.status.as_ref().map(f).unwrap_or_default());
        match path {
            "spec.nodeName" => spec(|s| s.node_name.clone()),
            "spec.restartPolicy" => spec(|s| s.restart_policy.clone()),
            "spec.schedulerName" => spec(|s| s.scheduler_name.clone()),
            "spec.serviceAccountName" => spec(|s| s.service_account_name.clone()),
            "spec.hostNetwork" => Some(
                pod.spec
                    .as_ref()
                    .is_some_and(|s| s.host_network)
                    .to_string(),
            ),
            "status.phase" => status(|s| s.phase.clone()),
            "status.podIP" => status(|s| s.pod_ip.clone()),
            _ => None,
        }
    }

    pub fn Node(node: &Node, path: &str) -> Option<String> {
        match path {
            "spec.unschedulable" => Some(
                node.spec
                    .as_ref()
                    .is_some_and(|s| s.unschedulable)
                    .to_string(),
            ),
            _ => None,
        }
    }

    pub fn Event(ev: &Event, path: &str) -> Option<String> {
        let obj = |f: fn(&ObjectReference) -> String| {
            Some(ev.involved_object.as_ref().map(f).unwrap_or_default())
        };
        match path {
            "involvedObject.kind" => obj(|o| o.kind.clone()),
            "involvedObject.name" => obj(|o| o.name.clone()),
            "involvedObject.namespace" => obj(|o| o.namespace.clone()),
            "involvedObject.uid" => obj(|o| o.uid.clone()),
            "reason" => Some(ev.reason.clone()),
            "type" => Some(ev.r#type.clone()),
            _ => None,
        }
    }

    pub fn Namespace(ns: &Namespace, path: &str) -> Option<String> {
        match path {
            "status.phase" => Some(
                ns.status
                    .as_ref()
                    .map(|s| s.phase.clone())
                    .unwrap_or_default(),
            ),
            _ => None,
        }
    }

    pub fn Service(svc: &Service, path: &str) -> Option<String> {
        match path {
            "spec.clusterIP" => Some(
                svc.spec
                    .as_ref()
                    .map(|s| s.cluster_ip.clone())
                    .unwrap_or_default(),
            ),
            "spec.type" => Some(
                svc.spec
                    .as_ref()
                    .map(|s| s.r#type.clone())
                    .unwrap_or_default(),
            ),
            _ => None,
        }
    }

    pub fn EndpointSlice(_: &EndpointSlice, _: &str) -> Option<String> {
        None
    }
    pub fn Deployment(_: &Deployment, _: &str) -> Option<String> {
        None
    }
    pub fn ReplicaSet(_: &ReplicaSet, _: &str) -> Option<String> {
        None
    }
    pub fn ConfigMap(_: &ConfigMap, _: &str) -> Option<String> {
        None
    }
    pub fn Lease(_: &Lease, _: &str) -> Option<String> {
        None
    }
    pub fn ServiceAccount(_: &ServiceAccount, _: &str) -> Option<String> {
        None
    }
    pub fn Endpoints(_: &Endpoints, _: &str) -> Option<String> {
        None
    }
    pub fn Role(_: &Role, _: &str) -> Option<String> {
        None
    }
    pub fn ClusterRole(_: &ClusterRole, _: &str) -> Option<String> {
        None
    }
    pub fn RoleBinding(_: &RoleBinding, _: &str) -> Option<String> {
        None
    }
    pub fn ClusterRoleBinding(_: &ClusterRoleBinding, _: &str) -> Option<String> {
        None
    }
    pub fn Secret(s: &Secret, path: &str) -> Option<String> {
        (path == "type").then(|| s.r#type.clone())
    }
}
