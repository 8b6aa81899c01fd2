//! Admission that depends on the object written, after authorization:
//! NodeRestriction (a node changes only its own Node — no taints, no
//! restricted labels — its own Lease, the status of pods bound to it, and
//! deletes only those pods) and RBAC's escalation check (a role grants, and
//! a binding hands out, only what its writer holds, unless the writer may
//! `escalate` / `bind`). Each kind's `Strategy::admit` calls in here.

use skiff_api::v1::{Lease, Node, Pod, PolicyRule, RoleRef};
use skiff_api::{Kind, Resource as _};

use super::{Authorizer, MASTERS, node, rules};
use crate::authn::UserInfo;
use crate::error::{ApiError, ApiResult};

/// What a write does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Create,
    Update,
    UpdateStatus,
    Delete,
}

/// Who writes, and the policy to judge them by.
pub struct Admission<'a> {
    pub user: &'a UserInfo,
    pub authz: &'a Authorizer,
}

impl Admission<'_> {
    fn node(&self) -> Option<&str> {
        node::node_name(self.user)
    }

    fn master(&self) -> bool {
        self.user.groups.iter().any(|g| g == MASTERS)
    }
}

fn refuse(kind: Kind, name: &str, message: String) -> ApiError {
    ApiError::forbidden(kind, name, message)
}

/// Labels a node may not give itself (Kubernetes' NodeRestriction): the
/// `node-restriction.kubernetes.io/` prefix, and the `kubernetes.io` and
/// `k8s.io` namespaces but for the labels kubelets set.
pub fn restricted_label(key: &str) -> bool {
    let Some((prefix, name)) = key.split_once('/') else {
        return false;
    };
    if prefix == "node-restriction.kubernetes.io"
        || prefix.ends_with(".node-restriction.kubernetes.io")
    {
        return true;
    }
    let kube = ["kubernetes.io", "k8s.io"]
        .iter()
        .any(|d| prefix == *d || prefix.ends_with(&format!(".{d}")));
    if !kube {
        return false;
    }
    let allowed = matches!(
        (prefix, name),
        ("kubernetes.io", "hostname" | "arch" | "os")
            | ("beta.kubernetes.io", "arch" | "os" | "instance-type")
            | ("node.kubernetes.io", "instance-type")
            | ("topology.kubernetes.io", "region" | "zone")
            | ("failure-domain.beta.kubernetes.io", "region" | "zone")
    ) || prefix == "kubelet.kubernetes.io"
        || prefix.ends_with(".kubelet.kubernetes.io")
        || prefix == "node.kubernetes.io"
        || prefix.ends_with(".node.kubernetes.io");
    !allowed
}

/// NodeRestriction for Nodes.
pub fn node(new: &Node, old: Option<&Node>, op: Op, a: &Admission) -> ApiResult<()> {
    let Some(me) = a.node() else { return Ok(()) };
    let name = new.name();
    if name != me {
        return Err(refuse(
            Kind::Node,
            name,
            format!("node {me:?} is not allowed to modify node {name:?}"),
        ));
    }
    if op == Op::Delete {
        return Ok(());
    }
    let labels = &new.meta().labels;
    let old_labels = old.map(|o| &o.meta().labels);
    let changed = labels
        .iter()
        .filter(|(k, v)| old_labels.is_none_or(|o| o.get(*k) != Some(*v)))
        .map(|(k, _)| k)
        .chain(
            old_labels
                .into_iter()
                .flatten()
                .filter(|(k, _)| !labels.contains_key(*k))
                .map(|(k, _)| k),
        );
    let mut bad: Vec<&String> = changed.filter(|k| restricted_label(k)).collect();
    bad.sort();
    bad.dedup();
    if !bad.is_empty() {
        let shown: Vec<&str> = bad.iter().map(|s| s.as_str()).collect();
        return Err(refuse(
            Kind::Node,
            name,
            format!(
                "node {me:?} is not allowed to modify labels: {}",
                shown.join(", ")
            ),
        ));
    }
    if let Some(old) = old {
        let taints = |n: &Node| {
            n.spec
                .as_ref()
                .map(|s| s.taints.clone())
                .unwrap_or_default()
        };
        if taints(new) != taints(old) {
            return Err(refuse(
                Kind::Node,
                name,
                format!("node {me:?} is not allowed to modify taints"),
            ));
        }
    }
    Ok(())
}

/// NodeRestriction for pods.
pub fn pod(pod: &Pod, old: Option<&Pod>, op: Op, a: &Admission) -> ApiResult<()> {
    let Some(me) = a.node() else { return Ok(()) };
    let name = pod.name();
    fn bound(p: &Pod) -> &str {
        p.spec.as_ref().map(|s| s.node_name.as_str()).unwrap_or("")
    }
    match op {
        Op::Create => Err(refuse(
            Kind::Pod,
            name,
            format!("node {me:?} can only create mirror pods, and skiff has none"),
        )),
        Op::Update => Err(refuse(
            Kind::Pod,
            name,
            format!("node {me:?} can only update pod status"),
        )),
        Op::UpdateStatus if old.map(bound) != Some(me) => Err(refuse(
            Kind::Pod,
            name,
            format!(
                "node {me:?} can only update pod status for pods with spec.nodeName set to itself"
            ),
        )),
        Op::Delete if bound(pod) != me => Err(refuse(
            Kind::Pod,
            name,
            format!("node {me:?} can only delete pods with spec.nodeName set to itself"),
        )),
        _ => Ok(()),
    }
}

/// NodeRestriction for Leases: a node's own, in `kube-node-lease`.
pub fn lease(lease: &Lease, _old: Option<&Lease>, _op: Op, a: &Admission) -> ApiResult<()> {
    let Some(me) = a.node() else { return Ok(()) };
    if lease.namespace() != skiff_api::nodes::LEASE_NAMESPACE || lease.name() != me {
        return Err(refuse(
            Kind::Lease,
            lease.name(),
            format!("node {me:?} can only access its own node lease (kube-node-lease/{me})"),
        ));
    }
    Ok(())
}

fn groups(user: &UserInfo) -> String {
    let shown: Vec<String> = user.groups.iter().map(|g| format!("{g:?}")).collect();
    format!("[{}]", shown.join(" "))
}

/// Ok when the writer holds (in `namespace`) every grant of `wanted`, else
/// Kubernetes' refusal naming the first it lacks.
fn within_held(
    kind: Kind,
    namespace: &str,
    name: &str,
    wanted: &[PolicyRule],
    a: &Admission,
) -> ApiResult<()> {
    let held = a.authz.rules_for(a.user, namespace);
    match rules::uncovered(&held, wanted) {
        None => Ok(()),
        Some(missing) => Err(refuse(
            kind,
            name,
            format!(
                "user {:?} (groups={}) is attempting to grant RBAC permissions not currently held:\n{missing}",
                a.user.name,
                groups(a.user)
            ),
        )),
    }
}

/// A Role or ClusterRole grants only what its writer holds (in its
/// namespace), unless the writer may `escalate` it.
pub fn role(
    kind: Kind,
    namespace: &str,
    name: &str,
    rules: &[PolicyRule],
    op: Op,
    a: &Admission,
) -> ApiResult<()> {
    if op == Op::Delete || a.master() {
        return Ok(());
    }
    if a.authz
        .allowed(a.user, &super::on(kind, "escalate", "", namespace, name))
    {
        return Ok(());
    }
    within_held(kind, namespace, name, rules, a)
}

/// A binding hands out a role only to someone who holds what it grants, or
/// who may `bind` it.
pub fn binding(
    kind: Kind,
    namespace: &str,
    name: &str,
    role_ref: Option<&RoleRef>,
    op: Op,
    a: &Admission,
) -> ApiResult<()> {
    if op == Op::Delete || a.master() {
        return Ok(());
    }
    let Some(role_ref) = role_ref else {
        return Ok(());
    };
    let role_kind = if role_ref.kind == "Role" {
        Kind::Role
    } else {
        Kind::ClusterRole
    };
    let bind = super::on(role_kind, "bind", "", namespace, &role_ref.name);
    if a.authz.allowed(a.user, &bind) {
        return Ok(());
    }
    let Some(granted) = a.authz.role_rules(namespace, role_ref) else {
        return Err(refuse(
            kind,
            name,
            format!(
                "user {:?} cannot bind {} {:?}: it does not exist (and only who may bind it may name it before it does)",
                a.user.name, role_ref.kind, role_ref.name
            ),
        ));
    };
    within_held(kind, namespace, name, &granted, a)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restricted_labels() {
        for ok in [
            "kubernetes.io/hostname",
            "kubernetes.io/os",
            "topology.kubernetes.io/zone",
            "node.kubernetes.io/instance-type",
            "kubelet.kubernetes.io/anything",
            "example.com/role",
            "plain",
        ] {
            assert!(!restricted_label(ok), "{ok}");
        }
        for bad in [
            "node-restriction.kubernetes.io/secure",
            "node-role.kubernetes.io/control-plane",
            "kubernetes.io/other",
            "k8s.io/x",
            "foo.k8s.io/x",
        ] {
            assert!(restricted_label(bad), "{bad}");
        }
    }
}
