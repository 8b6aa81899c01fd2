//! Kubernetes' default roles and bindings (its bootstrap policy, for the
//! kinds skiff serves), put in place at every start: missing ones are
//! created, and those still marked `rbac.authorization.kubernetes.io/autoupdate`
//! get back any rule or subject they lack (what an operator added stays).

use std::collections::BTreeMap;

use skiff_api::RBAC_GROUP;
use skiff_api::v1::*;

use crate::error::ApiResult;
use crate::registry::{Registry, WriteOptions};

pub const AUTOUPDATE: &str = "rbac.authorization.kubernetes.io/autoupdate";

fn strings(l: &[&str]) -> Vec<String> {
    l.iter().map(|s| s.to_string()).collect()
}

fn r(verbs: &[&str], groups: &[&str], resources: &[&str]) -> PolicyRule {
    PolicyRule {
        verbs: strings(verbs),
        api_groups: strings(groups),
        resources: strings(resources),
        ..Default::default()
    }
}

fn urls(verbs: &[&str], urls: &[&str]) -> PolicyRule {
    PolicyRule {
        verbs: strings(verbs),
        non_resource_urls: strings(urls),
        ..Default::default()
    }
}

const READ: &[&str] = &["get", "list", "watch"];
const WRITE: &[&str] = &["create", "delete", "deletecollection", "patch", "update"];

fn meta(name: &str) -> ObjectMeta {
    ObjectMeta {
        name: name.into(),
        labels: BTreeMap::from([("kubernetes.io/bootstrapping".into(), "rbac-defaults".into())]),
        annotations: BTreeMap::from([(AUTOUPDATE.into(), "true".into())]),
        ..Default::default()
    }
}

fn role(name: &str, rules: Vec<PolicyRule>) -> ClusterRole {
    ClusterRole {
        metadata: Some(meta(name)),
        rules,
        ..Default::default()
    }
}

/// `cluster-admin`'s rules: everything.
pub fn cluster_admin_rules() -> Vec<PolicyRule> {
    vec![r(&["*"], &["*"], &["*"]), urls(&["*"], &["*"])]
}

/// What `view` reads (Secrets excepted, as in Kubernetes).
fn view_rules() -> Vec<PolicyRule> {
    vec![
        r(
            READ,
            &[""],
            &[
                "pods",
                "pods/log",
                "pods/status",
                "services",
                "services/status",
                "endpoints",
                "configmaps",
                "serviceaccounts",
                "events",
                "namespaces",
                "namespaces/status",
            ],
        ),
        r(
            READ,
            &["apps"],
            &[
                "deployments",
                "deployments/scale",
                "deployments/status",
                "replicasets",
                "replicasets/scale",
                "replicasets/status",
            ],
        ),
        r(READ, &["discovery.k8s.io"], &["endpointslices"]),
        r(READ, &["events.k8s.io"], &["events"]),
    ]
}

/// What `edit` adds: changing workloads and their configuration, and
/// reaching into pods.
fn edit_rules() -> Vec<PolicyRule> {
    let mut rules = view_rules();
    rules.extend([
        r(
            &["create"],
            &[""],
            &[
                "pods/exec",
                "pods/attach",
                "pods/portforward",
                "pods/eviction",
            ],
        ),
        r(
            &["get"],
            &[""],
            &["pods/exec", "pods/attach", "pods/portforward"],
        ),
        r(
            WRITE,
            &[""],
            &[
                "pods",
                "services",
                "endpoints",
                "configmaps",
                "serviceaccounts",
                "secrets",
            ],
        ),
        r(READ, &[""], &["secrets"]),
        r(&["create"], &[""], &["serviceaccounts/token"]),
        r(
            WRITE,
            &["apps"],
            &[
                "deployments",
                "deployments/scale",
                "replicasets",
                "replicasets/scale",
            ],
        ),
        r(WRITE, &["discovery.k8s.io"], &["endpointslices"]),
        r(READ, &["coordination.k8s.io"], &["leases"]),
        r(WRITE, &["coordination.k8s.io"], &["leases"]),
    ]);
    rules
}

/// What `admin` adds: roles and bindings in its namespace.
fn admin_rules() -> Vec<PolicyRule> {
    let mut rules = edit_rules();
    rules.extend([
        r(READ, &[RBAC_GROUP], &["roles", "rolebindings"]),
        r(WRITE, &[RBAC_GROUP], &["roles", "rolebindings"]),
        r(
            &["create"],
            &["authorization.k8s.io"],
            &["localsubjectaccessreviews"],
        ),
    ]);
    rules
}

pub fn cluster_roles() -> Vec<ClusterRole> {
    vec![
        role("cluster-admin", cluster_admin_rules()),
        role("admin", admin_rules()),
        role("edit", edit_rules()),
        role("view", view_rules()),
        role(
            "system:discovery",
            vec![urls(
                &["get"],
                &[
                    "/api",
                    "/api/*",
                    "/apis",
                    "/apis/*",
                    "/healthz",
                    "/livez",
                    "/openapi",
                    "/openapi/*",
                    "/readyz",
                    "/version",
                    "/version/",
                ],
            )],
        ),
        role(
            "system:public-info-viewer",
            vec![urls(
                &["get"],
                &[
                    "/healthz",
                    "/livez",
                    "/readyz",
                    "/version",
                    "/version/",
                    "/cacerts",
                ],
            )],
        ),
        role(
            "system:basic-user",
            vec![
                r(
                    &["create"],
                    &["authorization.k8s.io"],
                    &["selfsubjectaccessreviews", "selfsubjectrulesreviews"],
                ),
                r(
                    &["create"],
                    &["authentication.k8s.io"],
                    &["selfsubjectreviews"],
                ),
            ],
        ),
        role(
            "system:monitoring",
            vec![urls(
                &["get"],
                &[
                    "/metrics",
                    "/metrics/slis",
                    "/livez",
                    "/readyz",
                    "/healthz",
                    "/livez/*",
                    "/readyz/*",
                    "/healthz/*",
                ],
            )],
        ),
        role("system:node", super::node::node_rules()),
        role(
            "system:kube-scheduler",
            vec![
                r(READ, &[""], &["pods", "nodes", "namespaces"]),
                r(&["update", "patch"], &[""], &["pods", "pods/status"]),
                r(&["create"], &[""], &["pods/binding", "bindings"]),
                r(
                    &["create", "patch", "update"],
                    &["", "events.k8s.io"],
                    &["events"],
                ),
                r(
                    &["get", "create", "update"],
                    &["coordination.k8s.io"],
                    &["leases"],
                ),
            ],
        ),
        role(
            "system:kube-controller-manager",
            vec![
                // The garbage collector follows and cleans up every kind.
                r(
                    &["get", "list", "watch", "update", "patch", "delete"],
                    &["*"],
                    &["*"],
                ),
                r(
                    &["create"],
                    &[""],
                    &["pods", "endpoints", "events", "serviceaccounts"],
                ),
                r(&["create"], &["apps"], &["replicasets"]),
                r(&["create"], &["discovery.k8s.io"], &["endpointslices"]),
                r(&["create"], &["events.k8s.io"], &["events"]),
                r(&["create"], &["coordination.k8s.io"], &["leases"]),
            ],
        ),
        role(
            "system:kube-dns",
            vec![
                r(&["list", "watch"], &[""], &["services", "endpoints"]),
                r(
                    &["list", "watch"],
                    &["discovery.k8s.io"],
                    &["endpointslices"],
                ),
                // Registering its own Service and EndpointSlice (skiff's
                // addon does what kubeadm's manifests do for CoreDNS).
                r(&["get"], &[""], &["namespaces"]),
                r(&["get", "create"], &[""], &["services"]),
                r(
                    &["get", "create", "update"],
                    &["discovery.k8s.io"],
                    &["endpointslices"],
                ),
            ],
        ),
    ]
}

fn subject(kind: &str, name: &str) -> Subject {
    match kind.split_once('/') {
        Some((namespace, sa)) => Subject {
            kind: "ServiceAccount".into(),
            api_group: String::new(),
            name: sa.into(),
            namespace: namespace.into(),
        },
        None => Subject {
            kind: kind.into(),
            api_group: RBAC_GROUP.into(),
            name: name.into(),
            namespace: String::new(),
        },
    }
}

fn binding(role: &str, subjects: Vec<Subject>) -> ClusterRoleBinding {
    ClusterRoleBinding {
        metadata: Some(meta(role)),
        subjects,
        role_ref: Some(RoleRef {
            api_group: RBAC_GROUP.into(),
            kind: "ClusterRole".into(),
            name: role.into(),
        }),
        ..Default::default()
    }
}

pub fn cluster_role_bindings() -> Vec<ClusterRoleBinding> {
    vec![
        binding("cluster-admin", vec![subject("Group", "system:masters")]),
        binding(
            "system:discovery",
            vec![subject("Group", "system:authenticated")],
        ),
        binding(
            "system:basic-user",
            vec![subject("Group", "system:authenticated")],
        ),
        binding(
            "system:public-info-viewer",
            vec![
                subject("Group", "system:authenticated"),
                subject("Group", "system:unauthenticated"),
            ],
        ),
        binding(
            "system:monitoring",
            vec![subject("Group", "system:monitoring")],
        ),
        binding(
            "system:kube-scheduler",
            vec![subject("User", "system:kube-scheduler")],
        ),
        binding(
            "system:kube-controller-manager",
            vec![subject("User", "system:kube-controller-manager")],
        ),
        binding(
            "system:kube-dns",
            vec![
                subject("User", "system:kube-dns"),
                subject("kube-system/kube-dns", ""),
            ],
        ),
    ]
}

fn autoupdate(meta: &ObjectMeta) -> bool {
    meta.annotations.get(AUTOUPDATE).map(String::as_str) != Some("false")
}

/// Puts one default in place: creates it when missing; when present and
/// still marked for autoupdate, `merge` gives it what it lacks (and says
/// whether it changed). Another server doing the same at once costs a retry.
async fn reconcile<R: crate::strategy::Strategy>(
    registry: &Registry,
    want: R,
    merge: impl Fn(&mut R, &R) -> bool,
) -> ApiResult<()> {
    let name = want.meta().name.clone();
    for _ in 0..3 {
        let written = match registry.get::<R>("", &name).await {
            Err(e) if e.code == 404 => registry
                .create(want.clone(), WriteOptions::default())
                .await
                .map(|_| ()),
            Err(e) => return Err(e),
            Ok(mut cur) => {
                if !autoupdate(cur.meta()) || !merge(&mut cur, &want) {
                    return Ok(());
                }
                registry
                    .update(cur, false, WriteOptions::default())
                    .await
                    .map(|_| ())
            }
        };
        match written {
            Err(e) if e.code == 409 => continue,
            r => return r,
        }
    }
    Ok(())
}

/// Appends what `want` has and `cur` lacks; whether anything was.
fn add_missing<T: Clone + PartialEq>(cur: &mut Vec<T>, want: &[T]) -> bool {
    let missing: Vec<T> = want.iter().filter(|x| !cur.contains(x)).cloned().collect();
    cur.extend_from_slice(&missing);
    !missing.is_empty()
}

/// Creates the defaults that are missing; gives back to those still
/// marked for it the rules (or subjects) they lack.
pub async fn ensure(registry: &Registry) -> ApiResult<()> {
    for want in cluster_roles() {
        reconcile(registry, want, |cur, want| {
            add_missing(&mut cur.rules, &want.rules)
        })
        .await?;
    }
    for want in cluster_role_bindings() {
        reconcile(registry, want, |cur, want| {
            add_missing(&mut cur.subjects, &want.subjects)
        })
        .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bound() {
        use skiff_api::Resource;
        let roles = cluster_roles();
        for role in &roles {
            assert!(
                role.validate().is_empty(),
                "{:?}: {:?}",
                role.metadata,
                role.validate()
            );
        }
        for b in cluster_role_bindings() {
            assert!(
                b.validate().is_empty(),
                "{:?}: {:?}",
                b.metadata,
                b.validate()
            );
            let target = &b.role_ref.as_ref().unwrap().name;
            assert!(
                roles
                    .iter()
                    .any(|r| &r.metadata.as_ref().unwrap().name == target),
                "{target}"
            );
        }
        // Each level holds the one below it.
        let rules = |n: &str| {
            roles
                .iter()
                .find(|r| r.metadata.as_ref().unwrap().name == n)
                .unwrap()
                .rules
                .clone()
        };
        use crate::authz::rules::uncovered;
        assert_eq!(uncovered(&rules("edit"), &rules("view")), None);
        assert_eq!(uncovered(&rules("admin"), &rules("edit")), None);
        assert_eq!(uncovered(&rules("cluster-admin"), &rules("admin")), None);
        assert!(uncovered(&rules("view"), &rules("edit")).is_some());
    }
}
