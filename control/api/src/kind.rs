//! The table of kinds: names, groups, REST plurals, scope, short names.

use std::fmt;

/// Every kind the API serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Namespace,
    Node,
    Pod,
    Service,
    EndpointSlice,
    Deployment,
    ReplicaSet,
    ConfigMap,
    Lease,
    Event,
    ServiceAccount,
    Endpoints,
    Role,
    ClusterRole,
    RoleBinding,
    ClusterRoleBinding,
    Secret,
}

/// The RBAC group.
pub const RBAC_GROUP: &str = "rbac.authorization.k8s.io";

struct Info {
    name: &'static str,
    group: &'static str,
    plural: &'static str,
    namespaced: bool,
    has_status: bool,
    short: &'static [&'static str],
}

const fn info(kind: Kind) -> Info {
    let (name, group, plural, namespaced, has_status, short): (_, _, _, _, _, &[&str]) = match kind
    {
        Kind::Namespace => ("Namespace", "", "namespaces", false, true, &["ns"]),
        Kind::Node => ("Node", "", "nodes", false, true, &["no"]),
        Kind::Pod => ("Pod", "", "pods", true, true, &["po"]),
        Kind::Service => ("Service", "", "services", true, true, &["svc"]),
        Kind::EndpointSlice => (
            "EndpointSlice",
            "discovery.k8s.io",
            "endpointslices",
            true,
            false,
            &["eps"],
        ),
        Kind::Deployment => ("Deployment", "apps", "deployments", true, true, &["deploy"]),
        Kind::ReplicaSet => ("ReplicaSet", "apps", "replicasets", true, true, &["rs"]),
        Kind::ConfigMap => ("ConfigMap", "", "configmaps", true, false, &["cm"]),
        Kind::Lease => ("Lease", "coordination.k8s.io", "leases", true, false, &[]),
        Kind::Event => ("Event", "", "events", true, false, &["ev"]),
        Kind::ServiceAccount => (
            "ServiceAccount",
            "",
            "serviceaccounts",
            true,
            false,
            &["sa"],
        ),
        Kind::Endpoints => ("Endpoints", "", "endpoints", true, false, &["ep"]),
        Kind::Role => ("Role", RBAC_GROUP, "roles", true, false, &[]),
        Kind::ClusterRole => ("ClusterRole", RBAC_GROUP, "clusterroles", false, false, &[]),
        Kind::RoleBinding => ("RoleBinding", RBAC_GROUP, "rolebindings", true, false, &[]),
        Kind::ClusterRoleBinding => (
            "ClusterRoleBinding",
            RBAC_GROUP,
            "clusterrolebindings",
            false,
            false,
            &[],
        ),
        Kind::Secret => ("Secret", "", "secrets", true, false, &[]),
    };
    Info {
        name,
        group,
        plural,
        namespaced,
        has_status,
        short,
    }
}

impl Kind {
    pub const ALL: [Kind; 17] = [
        Kind::Namespace,
        Kind::Node,
        Kind::Pod,
        Kind::Service,
        Kind::EndpointSlice,
        Kind::Deployment,
        Kind::ReplicaSet,
        Kind::ConfigMap,
        Kind::Lease,
        Kind::Event,
        Kind::ServiceAccount,
        Kind::Endpoints,
        Kind::Role,
        Kind::ClusterRole,
        Kind::RoleBinding,
        Kind::ClusterRoleBinding,
        Kind::Secret,
    ];

    /// The kind's name as in a manifest's `kind:` field.
    pub const fn name(self) -> &'static str {
        info(self).name
    }

    /// The API group; empty for the core group.
    pub const fn group(self) -> &'static str {
        info(self).group
    }

    /// Every kind is served at version v1 of its group.
    pub const fn version(self) -> &'static str {
        "v1"
    }

    /// `v1` for the core group, `group/v1` otherwise.
    pub fn api_version(self) -> String {
        match self.group() {
            "" => "v1".to_string(),
            g => format!("{g}/v1"),
        }
    }

    /// The lower-case plural used in REST paths (`pods`).
    pub const fn plural(self) -> &'static str {
        info(self).plural
    }

    pub const fn namespaced(self) -> bool {
        info(self).namespaced
    }

    /// Whether the kind has a `/status` subresource: then a plain update
    /// leaves the status alone and a status update leaves the rest alone.
    pub const fn has_status(self) -> bool {
        info(self).has_status
    }

    pub const fn short_names(self) -> &'static [&'static str] {
        info(self).short
    }

    /// Whether the kind has a `/scale` subresource (its spec.replicas).
    pub const fn has_scale(self) -> bool {
        matches!(self, Kind::Deployment | Kind::ReplicaSet)
    }

    /// Discovery categories: `all` for the kinds `kubectl get all` shows
    /// (the workload kinds and Services, as in Kubernetes).
    pub const fn categories(self) -> &'static [&'static str] {
        match self {
            Kind::Pod | Kind::Service | Kind::Deployment | Kind::ReplicaSet => &["all"],
            _ => &[],
        }
    }

    /// `deployment.apps`-style name for CLI output; the bare lower-case name
    /// for the core group.
    pub fn qualified_name(self) -> String {
        let lower = self.name().to_ascii_lowercase();
        match self.group() {
            "" => lower,
            g => format!("{lower}.{g}"),
        }
    }

    /// The store key prefix of the kind: `<group>/<plural>/` with `core` for
    /// the core group.
    pub const fn key_prefix(self) -> &'static str {
        match self {
            Kind::Namespace => "core/namespaces/",
            Kind::Node => "core/nodes/",
            Kind::Pod => "core/pods/",
            Kind::Service => "core/services/",
            Kind::EndpointSlice => "discovery.k8s.io/endpointslices/",
            Kind::Deployment => "apps/deployments/",
            Kind::ReplicaSet => "apps/replicasets/",
            Kind::ConfigMap => "core/configmaps/",
            Kind::Lease => "coordination.k8s.io/leases/",
            Kind::Event => "core/events/",
            Kind::ServiceAccount => "core/serviceaccounts/",
            Kind::Endpoints => "core/endpoints/",
            Kind::Role => "rbac.authorization.k8s.io/roles/",
            Kind::ClusterRole => "rbac.authorization.k8s.io/clusterroles/",
            Kind::RoleBinding => "rbac.authorization.k8s.io/rolebindings/",
            Kind::ClusterRoleBinding => "rbac.authorization.k8s.io/clusterrolebindings/",
            Kind::Secret => "core/secrets/",
        }
    }

    /// The store key of one object.
    pub fn key(self, namespace: &str, name: &str) -> String {
        if self.namespaced() {
            format!("{}{namespace}/{name}", self.key_prefix())
        } else {
            format!("{}{name}", self.key_prefix())
        }
    }

    /// The kind named by a manifest's `apiVersion` and `kind`.
    pub fn from_type(api_version: &str, kind: &str) -> Option<Kind> {
        Kind::ALL
            .into_iter()
            .find(|k| k.name() == kind && k.api_version() == api_version)
    }

    /// The kind with this exact name (`Pod`).
    pub fn from_name(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == name)
    }

    /// The kind named on a command line: `pod`, `pods`, `po`, `Pod`,
    /// `deployment.apps`, `endpointslices.discovery.k8s.io`, ...
    pub fn parse(word: &str) -> Option<Kind> {
        let word = word.to_ascii_lowercase();
        let (base, group) = match word.split_once('.') {
            Some((b, g)) => (b.to_string(), Some(g.to_string())),
            None => (word, None),
        };
        Kind::ALL.into_iter().find(|k| {
            let lower = k.name().to_ascii_lowercase();
            let matches =
                base == lower || base == k.plural() || k.short_names().contains(&base.as_str());
            matches && group.as_deref().is_none_or(|g| g == k.group())
        })
    }

    /// The kind served at this REST group and plural.
    pub fn from_rest(group: &str, plural: &str) -> Option<Kind> {
        Kind::ALL
            .into_iter()
            .find(|k| k.group() == group && k.plural() == plural)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_names_resolve() {
        assert_eq!(Kind::parse("po"), Some(Kind::Pod));
        assert_eq!(Kind::parse("deploy"), Some(Kind::Deployment));
        assert_eq!(Kind::parse("deployment.apps"), Some(Kind::Deployment));
        assert_eq!(Kind::parse("deployment.core"), None);
        assert_eq!(Kind::parse("Services"), Some(Kind::Service));
        assert_eq!(Kind::parse("ep"), Some(Kind::Endpoints));
        assert_eq!(Kind::parse("endpoints"), Some(Kind::Endpoints));
        assert_eq!(Kind::parse("eps"), Some(Kind::EndpointSlice));
        assert_eq!(Kind::parse("sa"), Some(Kind::ServiceAccount));
        assert_eq!(Kind::parse("no"), Some(Kind::Node));
        assert_eq!(Kind::parse("gadget"), None);
    }

    #[test]
    fn keys_separate_scope() {
        assert_eq!(Kind::Pod.key("default", "web"), "core/pods/default/web");
        assert_eq!(Kind::Node.key("", "n1"), "core/nodes/n1");
        assert_eq!(Kind::Deployment.key("a", "b"), "apps/deployments/a/b");
        assert_eq!(
            Kind::from_type("apps/v1", "Deployment"),
            Some(Kind::Deployment)
        );
        assert_eq!(Kind::from_type("v1", "Deployment"), None);
    }
}
