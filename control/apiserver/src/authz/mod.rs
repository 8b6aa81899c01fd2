//! Authorization, as kube-apiserver's `--authorization-mode=Node,RBAC`:
//! `system:masters` may do anything; a node's credentials go to the node
//! authorizer; everyone else gets what RBAC's bindings grant. The policy
//! (roles, bindings, and the graph of pods by node) is kept in memory from
//! the watch cache's feed, so a decision is a few hash lookups. A refusal
//! is a 403 worded as Kubernetes words it.
//!
//! What depends on the object written (NodeRestriction, RBAC's escalation
//! check) is admission, in [`admission`].

pub mod admission;
pub mod defaults;
pub mod index;
pub mod node;
pub mod reviews;
pub mod rules;

use std::sync::{Arc, RwLock};

use axum::extract::Request as HttpRequest;
use axum::middleware::Next;
use axum::response::Response;
use skiff_api::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding};
use skiff_api::{Kind, Object};
use skiff_store::Store;

use crate::authn::UserInfo;
use crate::error::{ApiError, ApiResult};
use crate::watch_cache::{CachedEvent, WatchType};
use index::{BindingId, Index};
pub use node::Decision;
pub use rules::{Request, Resource};

pub const MASTERS: &str = "system:masters";

#[derive(Default)]
struct State {
    rbac: Index,
    graph: node::Graph,
}

/// The decisions' policy, shared by both front ends and admission.
#[derive(Default)]
pub struct Authorizer {
    state: RwLock<State>,
    node_rules: Vec<PolicyRule>,
}

/// The kinds the authorizer follows.
fn followed(kind: Kind) -> bool {
    matches!(
        kind,
        Kind::Role | Kind::ClusterRole | Kind::RoleBinding | Kind::ClusterRoleBinding | Kind::Pod
    )
}

fn apply(state: &mut State, object: &Object, deleted: bool) {
    let meta = object.meta();
    let (ns, name) = (meta.namespace.as_str(), meta.name.as_str());
    let id = || BindingId {
        namespace: ns.to_string(),
        name: name.to_string(),
    };
    match object {
        Object::Role(Role { rules, .. }) | Object::ClusterRole(ClusterRole { rules, .. }) => {
            if deleted {
                state.rbac.remove_role(ns, name);
            } else {
                state.rbac.set_role(ns, name, rules);
            }
        }
        Object::RoleBinding(RoleBinding {
            subjects, role_ref, ..
        })
        | Object::ClusterRoleBinding(ClusterRoleBinding {
            subjects, role_ref, ..
        }) => match (deleted, role_ref) {
            (false, Some(r)) => state.rbac.set_binding(id(), r.clone(), subjects),
            _ => state.rbac.remove_binding(&id()),
        },
        Object::Pod(p) if deleted => state.graph.remove_pod(ns, name),
        Object::Pod(p) => state.graph.set_pod(p),
        _ => {}
    }
}

impl Authorizer {
    pub fn new() -> Authorizer {
        Authorizer {
            state: RwLock::default(),
            node_rules: node::node_rules(),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().expect("authorizer state poisoned")
    }

    /// Follows one event of the watch cache's feed.
    pub fn observe(&self, ev: &CachedEvent) {
        if !followed(ev.kind) {
            return;
        }
        let Some(obj) = ev.peek() else { return };
        let mut state = self.state.write().expect("authorizer state poisoned");
        apply(&mut state, &obj, ev.event_type == WatchType::Deleted);
    }

    /// Loads the policy from the store, replacing what was known (at start,
    /// and when the feed missed history).
    pub async fn load(&self, store: &dyn Store) -> ApiResult<()> {
        let mut fresh = State::default();
        for kind in Kind::ALL.into_iter().filter(|k| followed(*k)) {
            let list = store.list(kind.key_prefix()).await?;
            for kv in &list.kvs {
                if let Some(obj) =
                    crate::codec::decode_object(kind, &kv.value, kv.mod_revision, &kv.key)
                {
                    apply(&mut fresh, &obj, false);
                }
            }
        }
        *self.state.write().expect("authorizer state poisoned") = fresh;
        Ok(())
    }

    /// The decision for one request, with its reason.
    pub fn decide(&self, user: &UserInfo, req: &Request) -> Decision {
        if user.groups.iter().any(|g| g == MASTERS) {
            return Decision::Allow(format!("{MASTERS} may do anything"));
        }
        let state = self.read();
        let mut why_not = None;
        if let Some(node) = node::node_name(user) {
            match node::decide(node, req, &state.graph, &self.node_rules) {
                Decision::Allow(why) => return Decision::Allow(why),
                Decision::NoOpinion(why) => why_not = why,
            }
        }
        match state.rbac.allows(user, req) {
            Some(why) => Decision::Allow(why),
            None => Decision::NoOpinion(why_not),
        }
    }

    pub fn allowed(&self, user: &UserInfo, req: &Request) -> bool {
        matches!(self.decide(user, req), Decision::Allow(_))
    }

    /// Ok, or the 403 Kubernetes answers.
    pub fn authorize(&self, user: &UserInfo, req: &Request) -> ApiResult<()> {
        match self.decide(user, req) {
            Decision::Allow(_) => Ok(()),
            Decision::NoOpinion(why) => Err(forbidden(user, req, why.as_deref())),
        }
    }

    /// Every rule that applies to `user` in `namespace`, for the
    /// escalation check and SelfSubjectRulesReview.
    pub fn rules_for(&self, user: &UserInfo, namespace: &str) -> Vec<PolicyRule> {
        if user.groups.iter().any(|g| g == MASTERS) {
            return defaults::cluster_admin_rules();
        }
        let mut rules = self.read().rbac.rules_for(user, namespace);
        if node::node_name(user).is_some() {
            rules.extend(self.node_rules.iter().cloned());
        }
        rules
    }

    /// The rules of the role a binding names, if it exists.
    pub fn role_rules(
        &self,
        namespace: &str,
        role_ref: &skiff_api::v1::RoleRef,
    ) -> Option<Arc<[PolicyRule]>> {
        self.read().rbac.role_rules(namespace, role_ref)
    }
}

/// A user as Kubernetes' messages show it.
pub fn describe_user(user: &UserInfo) -> String {
    format!("{:?}", user.name)
}

/// kube-apiserver's wording: `pods "p" is forbidden: User "u" cannot get
/// resource "pods" in API group "" in the namespace "n"`.
pub fn forbidden(user: &UserInfo, req: &Request, why: Option<&str>) -> ApiError {
    let reason = why.map(|w| format!(": {w}")).unwrap_or_default();
    match req {
        Request::NonResource { verb, path } => ApiError::forbidden_request(format!(
            "forbidden: User {} cannot {verb} path {path:?}{reason}",
            describe_user(user)
        )),
        Request::Resource(r) => {
            let scope = if r.namespace.is_empty() {
                "at the cluster scope".to_string()
            } else {
                format!("in the namespace {:?}", r.namespace)
            };
            let qualified = if r.api_group.is_empty() {
                r.resource.clone()
            } else {
                format!("{}.{}", r.resource, r.api_group)
            };
            let what = if r.name.is_empty() {
                qualified
            } else {
                format!("{qualified} {:?}", r.name)
            };
            let message = format!(
                "{what} is forbidden: User {} cannot {} resource {:?} in API group {:?} {scope}{reason}",
                describe_user(user),
                r.verb,
                r.combined(),
                r.api_group,
            );
            let kind = Kind::ALL
                .into_iter()
                .find(|k| k.plural() == r.resource && k.group() == r.api_group);
            let mut e = ApiError::forbidden_request(message);
            if let Some(k) = kind {
                e.kind = Some(k);
                e.name = r.name.clone();
            }
            e
        }
    }
}

/// What a REST request asks, as the authorizer sees it: a resource (by
/// its path), or the path itself.
pub fn rest_request(method: &str, path: &str, query: &str) -> Request {
    match crate::audit::request_info(method, path, query) {
        Some(info) => {
            // Reaching into a container is a create, whatever the method
            // (a WebSocket upgrade is a GET).
            let verb = if matches!(info.subresource.as_str(), "exec" | "attach" | "portforward") {
                "create".to_string()
            } else {
                info.verb
            };
            Request::Resource(Resource {
                verb,
                api_group: info.api_group,
                resource: info.resource,
                subresource: info.subresource,
                namespace: info.namespace,
                name: info.name,
            })
        }
        None => Request::NonResource {
            verb: method.to_ascii_lowercase(),
            path: path.to_string(),
        },
    }
}

/// The REST middleware (inside authentication): gRPC calls are
/// authorized by their handlers, which know the kind and object.
pub async fn authorize_rest(
    axum::extract::State(authz): axum::extract::State<Arc<Authorizer>>,
    req: HttpRequest,
    next: Next,
) -> Response {
    if crate::authn::is_grpc(&req) || crate::authn::public(req.uri().path()) {
        return next.run(req).await;
    }
    let Some(user) = req.extensions().get::<Arc<UserInfo>>().cloned() else {
        return crate::rest::error_response(&ApiError::unauthorized());
    };
    let r = rest_request(
        req.method().as_str(),
        req.uri().path(),
        req.uri().query().unwrap_or(""),
    );
    match authz.authorize(&user, &r) {
        Ok(()) => next.run(req).await,
        Err(e) => crate::rest::error_response(&e),
    }
}

/// A gRPC call's check: the caller (set by authentication) may do it.
pub fn check_grpc(
    authz: Option<&Authorizer>,
    user: Option<&UserInfo>,
    req: Request,
) -> Result<(), tonic::Status> {
    let Some(authz) = authz else { return Ok(()) };
    let Some(user) = user else {
        return Err(ApiError::unauthorized().to_grpc());
    };
    authz.authorize(user, &req).map_err(|e| e.to_grpc())
}

/// A resource request on a kind, as the gRPC handlers make them.
pub fn on(kind: Kind, verb: &str, subresource: &str, namespace: &str, name: &str) -> Request {
    Request::Resource(Resource {
        verb: verb.into(),
        api_group: kind.group().into(),
        resource: kind.plural().into(),
        subresource: subresource.into(),
        namespace: if kind.namespaced() {
            namespace.into()
        } else {
            String::new()
        },
        name: name.into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_as_kubernetes_words_them() {
        let bob = UserInfo::authenticated("bob".into(), vec![]);
        let e = forbidden(&bob, &on(Kind::Pod, "create", "", "y", ""), None);
        assert_eq!(
            e.message,
            "pods is forbidden: User \"bob\" cannot create resource \"pods\" in API group \"\" in the namespace \"y\""
        );
        assert_eq!(e.code, 403);
        let e = forbidden(&bob, &on(Kind::Deployment, "get", "scale", "y", "d"), None);
        assert_eq!(
            e.message,
            "deployments.apps \"d\" is forbidden: User \"bob\" cannot get resource \"deployments/scale\" in API group \"apps\" in the namespace \"y\""
        );
        let e = forbidden(&bob, &on(Kind::Node, "list", "", "", ""), None);
        assert!(e.message.ends_with("at the cluster scope"), "{}", e.message);
        let e = forbidden(
            &bob,
            &Request::NonResource {
                verb: "get".into(),
                path: "/metrics".into(),
            },
            None,
        );
        assert_eq!(
            e.message,
            "forbidden: User \"bob\" cannot get path \"/metrics\""
        );
    }

    #[test]
    fn rest_paths_name_their_requests() {
        let r = rest_request("GET", "/api/v1/namespaces/a/pods/p/exec", "command=ls");
        assert_eq!(r, on(Kind::Pod, "create", "exec", "a", "p"));
        let r = rest_request("GET", "/api/v1/pods", "watch=true");
        assert_eq!(r, on(Kind::Pod, "watch", "", "", ""));
        assert_eq!(
            rest_request("GET", "/apis/apps/v1", ""),
            Request::NonResource {
                verb: "get".into(),
                path: "/apis/apps/v1".into()
            }
        );
    }

    #[test]
    fn masters_nodes_and_bindings() {
        let authz = Authorizer::new();
        let admin = UserInfo::authenticated("admin".into(), vec![MASTERS.into()]);
        assert!(authz.allowed(&admin, &on(Kind::Node, "delete", "", "", "n")));
        let node = UserInfo::authenticated("system:node:n1".into(), vec![node::NODES_GROUP.into()]);
        assert!(authz.allowed(&node, &on(Kind::Pod, "list", "", "", "")));
        assert!(!authz.allowed(&node, &on(Kind::Namespace, "delete", "", "", "a")));
        let e = authz
            .authorize(&node, &on(Kind::ConfigMap, "get", "", "a", "c"))
            .unwrap_err();
        assert!(
            e.message
                .ends_with(": no relationship found between node 'n1' and this object"),
            "{}",
            e.message
        );
        let bob = UserInfo::authenticated("bob".into(), vec![]);
        assert!(!authz.allowed(&bob, &on(Kind::Pod, "get", "", "a", "p")));
        {
            let mut st = authz.state.write().unwrap();
            for r in defaults::cluster_roles() {
                apply(&mut st, &Object::ClusterRole(r), false);
            }
            for b in defaults::cluster_role_bindings() {
                apply(&mut st, &Object::ClusterRoleBinding(b), false);
            }
        }
        // Defaults: anyone authenticated may discover and ask about itself.
        assert!(authz.allowed(
            &bob,
            &Request::NonResource {
                verb: "get".into(),
                path: "/apis/apps/v1".into()
            }
        ));
        assert!(!authz.allowed(
            &bob,
            &Request::NonResource {
                verb: "get".into(),
                path: "/metrics".into()
            }
        ));
        assert!(!authz.allowed(&bob, &on(Kind::Pod, "create", "", "", "")));
        let cm = UserInfo::authenticated("system:kube-controller-manager".into(), vec![]);
        assert!(authz.allowed(&cm, &on(Kind::ReplicaSet, "create", "", "a", "")));
        assert!(!authz.allowed(&cm, &on(Kind::ClusterRoleBinding, "create", "", "", "")));
    }
}
