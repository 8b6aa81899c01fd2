//! The node authorizer, as kube-apiserver's: a node's credentials
//! (`system:node:<name>` in `system:nodes`) may read the ConfigMaps (and,
//! once they exist, Secrets) that pods bound to it use — a graph of pods
//! by node, kept from pod events, answers in one lookup — and do what a
//! node daemon does (`system:node`'s rules); which Node, Lease and pods it
//! may change is NodeRestriction's, at admission.

use std::collections::HashMap;

use skiff_api::v1::{Pod, PolicyRule};

use super::rules::{self, Request};
use crate::authn::UserInfo;

pub const NODES_GROUP: &str = "system:nodes";
pub const NODE_PREFIX: &str = "system:node:";

/// The node a user is, if it is one.
pub fn node_name(user: &UserInfo) -> Option<&str> {
    let name = user.name.strip_prefix(NODE_PREFIX)?;
    (!name.is_empty() && user.groups.iter().any(|g| g == NODES_GROUP)).then_some(name)
}

/// What a pod makes its node read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Uses {
    ConfigMap,
    Secret,
    /// The account a pod runs as: the node asks for its tokens.
    ServiceAccount,
}

impl Uses {
    fn of(resource: &str) -> Option<Uses> {
        match resource {
            "configmaps" => Some(Uses::ConfigMap),
            "secrets" => Some(Uses::Secret),
            _ => None,
        }
    }
}

/// What one pod uses, by kind and name (in the pod's namespace).
pub fn references(pod: &Pod) -> Vec<(Uses, String)> {
    let Some(spec) = &pod.spec else {
        return Vec::new();
    };
    let mut out = Vec::new();
    if !spec.service_account_name.is_empty() {
        out.push((Uses::ServiceAccount, spec.service_account_name.clone()));
    }
    for s in &spec.image_pull_secrets {
        out.push((Uses::Secret, s.name.clone()));
    }
    for v in &spec.volumes {
        if let Some(cm) = &v.config_map {
            out.push((Uses::ConfigMap, cm.name.clone()));
        }
        if let Some(s) = &v.secret {
            out.push((Uses::Secret, s.secret_name.clone()));
        }
    }
    for c in spec.init_containers.iter().chain(&spec.containers) {
        for e in &c.env {
            let Some(from) = &e.value_from else { continue };
            if let Some(r) = &from.config_map_key_ref {
                out.push((Uses::ConfigMap, r.name.clone()));
            }
            if let Some(r) = &from.secret_key_ref {
                out.push((Uses::Secret, r.name.clone()));
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

type Use = (String, String, Uses, String);

/// A pod's node and what it uses.
type Placed = (String, Vec<(Uses, String)>);

/// Pods by the node they are bound to, and what each uses.
#[derive(Debug, Default)]
pub struct Graph {
    /// (namespace, pod) → (node, what it uses).
    pods: HashMap<(String, String), Placed>,
    /// (node, namespace, kind, name) → how many of its pods use it.
    uses: HashMap<Use, usize>,
}

impl Graph {
    pub fn clear(&mut self) {
        *self = Graph::default();
    }

    pub fn set_pod(&mut self, pod: &Pod) {
        let meta = pod.metadata.as_ref();
        let (ns, name) = meta
            .map(|m| (m.namespace.clone(), m.name.clone()))
            .unwrap_or_default();
        self.remove_pod(&ns, &name);
        let node = pod
            .spec
            .as_ref()
            .map(|s| s.node_name.clone())
            .unwrap_or_default();
        if node.is_empty() {
            return;
        }
        let refs = references(pod);
        for (kind, what) in &refs {
            *self
                .uses
                .entry((node.clone(), ns.clone(), *kind, what.clone()))
                .or_default() += 1;
        }
        self.pods.insert((ns, name), (node, refs));
    }

    pub fn remove_pod(&mut self, namespace: &str, name: &str) {
        let Some((node, refs)) = self.pods.remove(&(namespace.to_string(), name.to_string()))
        else {
            return;
        };
        for (kind, what) in refs {
            let key = (node.clone(), namespace.to_string(), kind, what);
            if let Some(n) = self.uses.get_mut(&key) {
                *n -= 1;
                if *n == 0 {
                    self.uses.remove(&key);
                }
            }
        }
    }

    fn used(&self, node: &str, namespace: &str, kind: Uses, name: &str) -> bool {
        self.uses.contains_key(&(
            node.to_string(),
            namespace.to_string(),
            kind,
            name.to_string(),
        ))
    }

    /// The node a pod is bound to, if it is known and bound.
    pub fn node_of(&self, namespace: &str, name: &str) -> Option<&str> {
        self.pods
            .get(&(namespace.to_string(), name.to_string()))
            .map(|(n, _)| n.as_str())
    }
}

/// A decision: allowed (why), or no opinion (why not, for the message).
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    Allow(String),
    NoOpinion(Option<String>),
}

fn r(verbs: &[&str], groups: &[&str], resources: &[&str]) -> PolicyRule {
    let v = |l: &[&str]| l.iter().map(|s| s.to_string()).collect();
    PolicyRule {
        verbs: v(verbs),
        api_groups: v(groups),
        resources: v(resources),
        ..Default::default()
    }
}

/// What every node may do (Kubernetes' `system:node` rules, for the kinds
/// skiff serves, plus the Service reads of its datapath — a node is its
/// own kube-proxy).
pub fn node_rules() -> Vec<PolicyRule> {
    const READ: &[&str] = &["get", "list", "watch"];
    vec![
        r(
            &[
                "create", "get", "list", "watch", "update", "patch", "delete",
            ],
            &[""],
            &["nodes"],
        ),
        r(&["update", "patch"], &[""], &["nodes/status"]),
        r(READ, &[""], &["pods", "services", "endpoints"]),
        r(&["delete"], &[""], &["pods"]),
        r(&["update", "patch"], &[""], &["pods/status"]),
        r(&["create"], &[""], &["pods/eviction"]),
        r(READ, &["discovery.k8s.io"], &["endpointslices"]),
        r(
            &["create", "update", "patch"],
            &["", "events.k8s.io"],
            &["events"],
        ),
        r(
            &["get", "create", "update", "patch", "delete"],
            &["coordination.k8s.io"],
            &["leases"],
        ),
        r(&["create"], &["authentication.k8s.io"], &["tokenreviews"]),
        r(
            &["create"],
            &["authorization.k8s.io"],
            &["subjectaccessreviews", "localsubjectaccessreviews"],
        ),
    ]
}

/// The node authorizer's answer for `node`.
pub fn decide(node: &str, req: &Request, graph: &Graph, rules: &[PolicyRule]) -> Decision {
    if let Request::Resource(res) = req
        && res.api_group.is_empty()
        && res.subresource.is_empty()
        && let Some(kind) = Uses::of(&res.resource)
    {
        if res.verb != "get" || res.name.is_empty() {
            return Decision::NoOpinion(Some(format!(
                "can only get individual resources of this type (node '{node}')"
            )));
        }
        if graph.used(node, &res.namespace, kind, &res.name) {
            return Decision::Allow(format!("node '{node}' runs a pod that uses this object"));
        }
        return Decision::NoOpinion(Some(format!(
            "no relationship found between node '{node}' and this object"
        )));
    }
    // A token of the account one of its pods runs as (the request's
    // object, bound to that pod, is checked when it is made).
    if let Request::Resource(res) = req
        && res.api_group.is_empty()
        && res.resource == "serviceaccounts"
        && res.subresource == "token"
    {
        if res.verb == "create" && graph.used(node, &res.namespace, Uses::ServiceAccount, &res.name)
        {
            return Decision::Allow(format!("node '{node}' runs a pod as this service account"));
        }
        return Decision::NoOpinion(Some(format!(
            "no relationship found between node '{node}' and this object"
        )));
    }
    if rules.iter().any(|r| rules::allows(r, req)) {
        Decision::Allow(format!("node '{node}' may do what nodes do"))
    } else {
        Decision::NoOpinion(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authz::rules::Resource;
    use skiff_api::v1::*;

    fn pod(ns: &str, name: &str, node: &str, cm: &str) -> Pod {
        Pod {
            metadata: Some(ObjectMeta {
                namespace: ns.into(),
                name: name.into(),
                ..Default::default()
            }),
            spec: Some(PodSpec {
                node_name: node.into(),
                volumes: vec![Volume {
                    name: "v".into(),
                    config_map: Some(ConfigMapVolumeSource {
                        name: cm.into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn get(resource: &str, ns: &str, name: &str) -> Request {
        Request::Resource(Resource {
            verb: "get".into(),
            resource: resource.into(),
            namespace: ns.into(),
            name: name.into(),
            ..Default::default()
        })
    }

    #[test]
    fn a_node_reads_what_its_pods_use() {
        let mut g = Graph::default();
        let rules = node_rules();
        g.set_pod(&pod("a", "p1", "n1", "conf"));
        g.set_pod(&pod("a", "p2", "n1", "conf"));
        g.set_pod(&pod("a", "p3", "n2", "other"));
        g.set_pod(&pod("a", "p4", "", "pending"));
        let allowed =
            |g: &Graph, n: &str, r: &Request| matches!(decide(n, r, g, &rules), Decision::Allow(_));
        assert!(allowed(&g, "n1", &get("configmaps", "a", "conf")));
        assert!(!allowed(&g, "n1", &get("configmaps", "a", "other")));
        assert!(!allowed(&g, "n1", &get("configmaps", "b", "conf")));
        assert!(!allowed(&g, "n1", &get("configmaps", "a", "pending")));
        assert!(allowed(&g, "n2", &get("configmaps", "a", "other")));
        // Two pods use it: it stays readable until both are gone.
        g.remove_pod("a", "p1");
        assert!(matches!(
            decide("n1", &get("configmaps", "a", "conf"), &g, &rules),
            Decision::Allow(_)
        ));
        // A pod moved (rebound) takes its uses along.
        g.set_pod(&pod("a", "p2", "n2", "conf"));
        assert!(matches!(
            decide("n1", &get("configmaps", "a", "conf"), &g, &rules),
            Decision::NoOpinion(Some(m)) if m.contains("no relationship found between node 'n1'")
        ));
        assert_eq!(g.node_of("a", "p2"), Some("n2"));
        let list = Request::Resource(Resource {
            verb: "list".into(),
            resource: "configmaps".into(),
            namespace: "a".into(),
            ..Default::default()
        });
        assert!(!matches!(
            decide("n2", &list, &g, &rules),
            Decision::Allow(_)
        ));
        // The rest follows the node rules.
        let token = |sa: &str| {
            Request::Resource(Resource {
                verb: "create".into(),
                resource: "serviceaccounts".into(),
                subresource: "token".into(),
                namespace: "a".into(),
                name: sa.into(),
                ..Default::default()
            })
        };
        assert!(
            !allowed(&g, "n1", &token("default")),
            "no pod of n1 runs as it"
        );
        let mut runner = pod("a", "p9", "n1", "conf");
        runner.spec.as_mut().unwrap().service_account_name = "bot".into();
        g.set_pod(&runner);
        assert!(allowed(&g, "n1", &token("bot")));
        assert!(!allowed(&g, "n2", &token("bot")));
        g.remove_pod("a", "p9");
        assert!(allowed(&g, "n1", &get("pods", "a", "p3")));
        assert!(allowed(&g, "n1", &get("services", "a", "s")));
        assert!(!allowed(&g, "n1", &get("serviceaccounts", "a", "s")));
        let mut del = get("namespaces", "", "a");
        if let Request::Resource(r) = &mut del {
            r.verb = "delete".into();
        }
        assert!(!allowed(&g, "n1", &del));
        g.remove_pod("a", "p2");
        g.remove_pod("a", "p3");
        g.remove_pod("a", "p4");
        assert!(g.uses.is_empty() && g.pods.is_empty());
    }

    #[test]
    fn node_names() {
        let node = UserInfo::authenticated("system:node:n1".into(), vec![NODES_GROUP.into()]);
        assert_eq!(node_name(&node), Some("n1"));
        let pretender = UserInfo::authenticated("system:node:n1".into(), vec![]);
        assert_eq!(node_name(&pretender), None);
    }
}
