//! [`Object`]: one value of any kind, for code that handles mixed kinds
//! (manifests, the CLI, the gRPC wire), and the [`with_resource!`] macro
//! that turns a runtime [`Kind`] into a static type.

use prost::Message;
use serde_json::Value;

use crate::manifest::ManifestError;
use crate::v1::*;
use crate::{Kind, Resource};

/// Runs `$body` with `$R` bound to the Rust type of the runtime kind `$kind`.
#[macro_export]
macro_rules! with_resource {
    ($kind:expr, $R:ident => $body:expr) => {
        match $kind {
            $crate::Kind::Namespace => {
                type $R = $crate::v1::Namespace;
                $body
            }
            $crate::Kind::Node => {
                type $R = $crate::v1::Node;
                $body
            }
            $crate::Kind::Pod => {
                type $R = $crate::v1::Pod;
                $body
            }
            $crate::Kind::Service => {
                type $R = $crate::v1::Service;
                $body
            }
            $crate::Kind::EndpointSlice => {
                type $R = $crate::v1::EndpointSlice;
                $body
            }
            $crate::Kind::Deployment => {
                type $R = $crate::v1::Deployment;
                $body
            }
            $crate::Kind::ReplicaSet => {
                type $R = $crate::v1::ReplicaSet;
                $body
            }
            $crate::Kind::ConfigMap => {
                type $R = $crate::v1::ConfigMap;
                $body
            }
            $crate::Kind::Lease => {
                type $R = $crate::v1::Lease;
                $body
            }
            $crate::Kind::Event => {
                type $R = $crate::v1::Event;
                $body
            }
            $crate::Kind::ServiceAccount => {
                type $R = $crate::v1::ServiceAccount;
                $body
            }
            $crate::Kind::Endpoints => {
                type $R = $crate::v1::Endpoints;
                $body
            }
            $crate::Kind::Role => {
                type $R = $crate::v1::Role;
                $body
            }
            $crate::Kind::ClusterRole => {
                type $R = $crate::v1::ClusterRole;
                $body
            }
            $crate::Kind::RoleBinding => {
                type $R = $crate::v1::RoleBinding;
                $body
            }
            $crate::Kind::ClusterRoleBinding => {
                type $R = $crate::v1::ClusterRoleBinding;
                $body
            }
            $crate::Kind::Secret => {
                type $R = $crate::v1::Secret;
                $body
            }
        }
    };
}

/// An object of any kind.
#[derive(Clone, Debug, PartialEq)]
pub enum Object {
    Namespace(Namespace),
    Node(Node),
    Pod(Pod),
    Service(Service),
    EndpointSlice(EndpointSlice),
    Deployment(Deployment),
    ReplicaSet(ReplicaSet),
    ConfigMap(ConfigMap),
    Lease(Lease),
    Event(Event),
    ServiceAccount(ServiceAccount),
    Endpoints(Endpoints),
    Role(Role),
    ClusterRole(ClusterRole),
    RoleBinding(RoleBinding),
    ClusterRoleBinding(ClusterRoleBinding),
    Secret(Secret),
}

macro_rules! each {
    ($self:expr, $o:ident => $body:expr) => {
        match $self {
            Object::Namespace($o) => $body,
            Object::Node($o) => $body,
            Object::Pod($o) => $body,
            Object::Service($o) => $body,
            Object::EndpointSlice($o) => $body,
            Object::Deployment($o) => $body,
            Object::ReplicaSet($o) => $body,
            Object::ConfigMap($o) => $body,
            Object::Lease($o) => $body,
            Object::Event($o) => $body,
            Object::ServiceAccount($o) => $body,
            Object::Endpoints($o) => $body,
            Object::Role($o) => $body,
            Object::ClusterRole($o) => $body,
            Object::RoleBinding($o) => $body,
            Object::ClusterRoleBinding($o) => $body,
            Object::Secret($o) => $body,
        }
    };
}

/// Deserializes a typed object, collecting the paths of fields it ignored.
/// A type error names the field's path (`spec.ports[0].port`).
pub(crate) fn from_value_warn<R: Resource>(
    value: Value,
) -> Result<(R, Vec<String>), ManifestError> {
    let mut unknown = Vec::new();
    let mut record = |path: serde_ignored::Path<'_>| unknown.push(render_path(&path));
    let ignoring = serde_ignored::Deserializer::new(value, &mut record);
    let obj: R = serde_path_to_error::deserialize(ignoring).map_err(|e| ManifestError::Schema {
        path: e.path().to_string(),
        message: e.inner().to_string(),
    })?;
    Ok((obj, unknown))
}

impl Object {
    pub fn kind(&self) -> Kind {
        each!(self, o => kind_of(o))
    }

    pub fn meta(&self) -> &ObjectMeta {
        each!(self, o => o.meta())
    }

    pub fn meta_mut(&mut self) -> &mut ObjectMeta {
        each!(self, o => o.meta_mut())
    }

    /// Sets `apiVersion` and `kind` from the variant.
    pub fn set_type_meta(&mut self) {
        each!(self, o => o.set_type_meta())
    }

    /// A field selector value (`metadata.name`, `spec.nodeName`, ...).
    pub fn field(&self, path: &str) -> Option<String> {
        each!(self, o => o.field(path))
    }

    pub fn to_json(&self) -> Value {
        let mut copy = self.clone();
        copy.set_type_meta();
        each!(&copy, o => serde_json::to_value(o).unwrap_or(Value::Null))
    }

    /// The protobuf encoding of the kind's message.
    pub fn encode(&self) -> Vec<u8> {
        each!(self, o => o.encode_to_vec())
    }

    pub fn decode(kind: Kind, raw: &[u8]) -> Result<Object, prost::DecodeError> {
        crate::with_resource!(kind, R => R::decode(raw).map(Resource::into_object))
    }

    pub fn to_raw(&self) -> RawObject {
        RawObject {
            kind: self.kind().name().to_string(),
            raw: self.encode(),
            dry_run: false,
            field_manager: String::new(),
        }
    }

    pub fn from_raw(raw: &RawObject) -> Result<Object, String> {
        let kind =
            Kind::from_name(&raw.kind).ok_or_else(|| format!("unknown kind {:?}", raw.kind))?;
        Object::decode(kind, &raw.raw).map_err(|e| format!("decode {kind}: {e}"))
    }

    /// Reads an object from its JSON form; the result's warnings name every
    /// field that was not understood.
    pub fn from_json(value: Value) -> Result<(Object, Vec<String>), ManifestError> {
        let api_version = value
            .get("apiVersion")
            .and_then(Value::as_str)
            .ok_or(ManifestError::MissingField("apiVersion"))?
            .to_string();
        let kind_name = value
            .get("kind")
            .and_then(Value::as_str)
            .ok_or(ManifestError::MissingField("kind"))?
            .to_string();
        let kind = Kind::from_type(&api_version, &kind_name).ok_or_else(|| {
            ManifestError::UnknownKind {
                api_version: api_version.clone(),
                kind: kind_name.clone(),
            }
        })?;
        crate::with_resource!(kind, R => {
            let (obj, warnings) = from_value_warn::<R>(value)?;
            Ok((obj.into_object(), warnings))
        })
    }

    pub fn validate(&self) -> Vec<crate::validation::FieldError> {
        each!(self, o => o.validate())
    }
}

/// `spec.ports[0].name`: serde_ignored's path without its `?` for options.
fn render_path(path: &serde_ignored::Path<'_>) -> String {
    use serde_ignored::Path;
    match path {
        Path::Root => String::new(),
        Path::Seq { parent, index } => format!("{}[{index}]", render_path(parent)),
        Path::Map { parent, key } => {
            let p = render_path(parent);
            if p.is_empty() {
                key.clone()
            } else {
                format!("{p}.{key}")
            }
        }
        Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => render_path(parent),
    }
}

fn kind_of<R: Resource>(_: &R) -> Kind {
    R::KIND
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn kubernetes_json_form() {
        let (obj, warnings) = Object::from_json(json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "web", "labels": {"app": "web"}},
            "spec": {
                "type": "NodePort",
                "clusterIP": "10.96.0.12",
                "ports": [
                    {"name": "http", "port": 80, "targetPort": "http"},
                    {"name": "alt", "port": 8080, "targetPort": 9090, "nodePort": 30080}
                ],
                "selector": {"app": "web"},
                "sessionAffinity": "ClientIP",
                "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 300}},
                "loadBalancerIP": "1.2.3.4"
            }
        }))
        .unwrap();
        assert_eq!(warnings, vec!["spec.loadBalancerIP".to_string()]);
        let Object::Service(svc) = &obj else {
            panic!("not a service")
        };
        let spec = svc.spec.as_ref().unwrap();
        assert_eq!(spec.cluster_ip, "10.96.0.12");
        assert_eq!(spec.ports[0].target_port, Some(IntOrString::string("http")));
        assert_eq!(spec.ports[1].target_port, Some(IntOrString::int(9090)));
        let back = obj.to_json();
        assert_eq!(back["spec"]["clusterIP"], "10.96.0.12");
        assert_eq!(back["spec"]["ports"][0]["targetPort"], "http");
        assert_eq!(back["spec"]["ports"][1]["targetPort"], 9090);
        assert_eq!(
            back["spec"]["sessionAffinityConfig"]["clientIP"]["timeoutSeconds"],
            300
        );
        // Empty fields are omitted: no nodePort on the first port, no status.
        assert!(back["spec"]["ports"][0].get("nodePort").is_none());
        assert!(back.get("status").is_none());
        assert!(back["metadata"].get("namespace").is_none());
        // Round trip through protobuf keeps everything.
        let decoded = Object::decode(Kind::Service, &obj.encode()).unwrap();
        assert_eq!(decoded, obj);
    }

    #[test]
    fn replicas_zero_is_kept() {
        let (obj, _) = Object::from_json(json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "d"},
            "spec": {"replicas": 0, "strategy": {"type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": 1}}}
        }))
        .unwrap();
        let json = obj.to_json();
        assert_eq!(json["spec"]["replicas"], 0);
        assert_eq!(json["spec"]["strategy"]["rollingUpdate"]["maxSurge"], "25%");
        assert_eq!(
            json["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"],
            1
        );
    }

    #[test]
    fn unknown_kind_and_bad_types_are_errors() {
        assert!(matches!(
            Object::from_json(json!({"apiVersion": "v1", "kind": "Gadget"})),
            Err(ManifestError::UnknownKind { .. })
        ));
        assert!(matches!(
            Object::from_json(json!({"apiVersion": "apps/v2", "kind": "Deployment"})),
            Err(ManifestError::UnknownKind { .. })
        ));
        let err = Object::from_json(json!({
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
            "spec": {"containers": [{"name": "c", "ports": [{"containerPort": "eighty"}]}]}
        }))
        .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("spec.containers[0].ports[0].containerPort: invalid type"),
            "{err}"
        );
    }
}
