//! The RBAC policy in memory: roles by name, bindings by the subjects they
//! name, kept equal to the store one event at a time (never rebuilt), so
//! a decision looks only at the bindings of the caller's user name and
//! groups.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use skiff_api::v1::{PolicyRule, RoleRef, Subject};

use super::rules::{self, Request};
use crate::authn::UserInfo;

/// Whom a binding names.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum SubjectKey {
    User(String),
    Group(String),
    ServiceAccount { namespace: String, name: String },
}

/// A binding's place: its namespace (empty for a ClusterRoleBinding) and
/// name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BindingId {
    pub namespace: String,
    pub name: String,
}

#[derive(Debug)]
struct Binding {
    role_ref: RoleRef,
    subjects: Vec<SubjectKey>,
}

/// The prefix of a ServiceAccount's user name.
pub const SERVICE_ACCOUNT_PREFIX: &str = "system:serviceaccount:";

/// The ServiceAccount a user name stands for, if it is one.
pub fn service_account(user: &str) -> Option<(&str, &str)> {
    user.strip_prefix(SERVICE_ACCOUNT_PREFIX)?.split_once(':')
}

fn subject_key(s: &Subject, binding_namespace: &str) -> Option<SubjectKey> {
    match s.kind.as_str() {
        "User" => Some(SubjectKey::User(s.name.clone())),
        "Group" => Some(SubjectKey::Group(s.name.clone())),
        "ServiceAccount" => Some(SubjectKey::ServiceAccount {
            namespace: if s.namespace.is_empty() {
                binding_namespace.to_string()
            } else {
                s.namespace.clone()
            },
            name: s.name.clone(),
        }),
        _ => None,
    }
}

/// The subjects a user is: its name, its groups, its ServiceAccount.
fn keys(user: &UserInfo) -> Vec<SubjectKey> {
    let mut out = vec![SubjectKey::User(user.name.clone())];
    out.extend(user.groups.iter().cloned().map(SubjectKey::Group));
    if let Some((namespace, name)) = service_account(&user.name) {
        out.push(SubjectKey::ServiceAccount {
            namespace: namespace.into(),
            name: name.into(),
        });
    }
    out
}

fn describe(key: &SubjectKey) -> String {
    match key {
        SubjectKey::User(n) => format!("User {n:?}"),
        SubjectKey::Group(n) => format!("Group {n:?}"),
        SubjectKey::ServiceAccount { namespace, name } => {
            format!("ServiceAccount \"{namespace}/{name}\"")
        }
    }
}

#[derive(Debug, Default)]
pub struct Index {
    /// Roles by (namespace, name); ClusterRoles under the empty namespace.
    roles: HashMap<(String, String), Arc<[PolicyRule]>>,
    bindings: HashMap<BindingId, Binding>,
    by_subject: HashMap<SubjectKey, HashSet<BindingId>>,
}

impl Index {
    pub fn clear(&mut self) {
        *self = Index::default();
    }

    /// A Role (namespace set) or ClusterRole (namespace empty) as stored now.
    pub fn set_role(&mut self, namespace: &str, name: &str, rules: &[PolicyRule]) {
        self.roles
            .insert((namespace.into(), name.into()), rules.to_vec().into());
    }

    pub fn remove_role(&mut self, namespace: &str, name: &str) {
        self.roles
            .remove(&(namespace.to_string(), name.to_string()));
    }

    /// A RoleBinding (namespace set) or ClusterRoleBinding as stored now.
    pub fn set_binding(&mut self, id: BindingId, role_ref: RoleRef, subjects: &[Subject]) {
        self.remove_binding(&id);
        let subjects: Vec<SubjectKey> = subjects
            .iter()
            .filter_map(|s| subject_key(s, &id.namespace))
            .collect();
        for s in &subjects {
            self.by_subject
                .entry(s.clone())
                .or_default()
                .insert(id.clone());
        }
        self.bindings.insert(id, Binding { role_ref, subjects });
    }

    pub fn remove_binding(&mut self, id: &BindingId) {
        let Some(old) = self.bindings.remove(id) else {
            return;
        };
        for s in &old.subjects {
            if let Some(set) = self.by_subject.get_mut(s) {
                set.remove(id);
                if set.is_empty() {
                    self.by_subject.remove(s);
                }
            }
        }
    }

    /// The rules a binding grants (none when its role is missing).
    fn granted(&self, id: &BindingId, b: &Binding) -> Option<&Arc<[PolicyRule]>> {
        let namespace = match b.role_ref.kind.as_str() {
            "Role" => id.namespace.clone(),
            _ => String::new(),
        };
        self.roles.get(&(namespace, b.role_ref.name.clone()))
    }

    /// The bindings that apply to `user` in `namespace` (cluster bindings
    /// always; role bindings of that namespace).
    fn applicable<'a>(
        &'a self,
        user: &UserInfo,
        namespace: &'a str,
    ) -> impl Iterator<Item = (&'a SubjectKey, &'a BindingId, &'a Binding)> + 'a {
        let keys = keys(user);
        let found: Vec<(&SubjectKey, &BindingId)> = keys
            .iter()
            .filter_map(|k| self.by_subject.get_key_value(k))
            .flat_map(|(k, ids)| ids.iter().map(move |id| (k, id)))
            .collect();
        found.into_iter().filter_map(move |(k, id)| {
            let b = self.bindings.get(id)?;
            (id.namespace.is_empty() || id.namespace == namespace).then_some((k, id, b))
        })
    }

    /// Why RBAC allows the request, or `None` when no binding does.
    pub fn allows(&self, user: &UserInfo, req: &Request) -> Option<String> {
        for (key, id, b) in self.applicable(user, req.namespace()) {
            let Some(rules) = self.granted(id, b) else {
                continue;
            };
            if rules.iter().any(|r| rules::allows(r, req)) {
                let by = if id.namespace.is_empty() {
                    format!("ClusterRoleBinding {:?}", id.name)
                } else {
                    format!("RoleBinding \"{}/{}\"", id.namespace, id.name)
                };
                return Some(format!(
                    "RBAC: allowed by {by} of {} {:?} to {}",
                    b.role_ref.kind,
                    b.role_ref.name,
                    describe(key)
                ));
            }
        }
        None
    }

    /// Every rule RBAC grants `user` in `namespace` (empty: cluster-wide).
    pub fn rules_for(&self, user: &UserInfo, namespace: &str) -> Vec<PolicyRule> {
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for (_, id, b) in self.applicable(user, namespace) {
            if !seen.insert(id) {
                continue;
            }
            if let Some(rules) = self.granted(id, b) {
                out.extend(rules.iter().cloned());
            }
        }
        out
    }

    /// The rules of a role a binding names, if it exists.
    pub fn role_rules(&self, namespace: &str, role_ref: &RoleRef) -> Option<Arc<[PolicyRule]>> {
        let namespace = if role_ref.kind == "Role" {
            namespace
        } else {
            ""
        };
        self.roles
            .get(&(namespace.to_string(), role_ref.name.clone()))
            .cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authz::rules::Resource;
    use skiff_api::RBAC_GROUP;

    fn rule(verbs: &[&str], resources: &[&str]) -> PolicyRule {
        PolicyRule {
            verbs: verbs.iter().map(|s| s.to_string()).collect(),
            api_groups: vec![String::new()],
            resources: resources.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    fn subject(kind: &str, name: &str, ns: &str) -> Subject {
        Subject {
            kind: kind.into(),
            api_group: if kind == "ServiceAccount" {
                String::new()
            } else {
                RBAC_GROUP.into()
            },
            name: name.into(),
            namespace: ns.into(),
        }
    }

    fn role_ref(kind: &str, name: &str) -> RoleRef {
        RoleRef {
            api_group: RBAC_GROUP.into(),
            kind: kind.into(),
            name: name.into(),
        }
    }

    fn get(ns: &str) -> Request {
        Request::Resource(Resource {
            verb: "get".into(),
            resource: "pods".into(),
            namespace: ns.into(),
            name: "p".into(),
            ..Default::default()
        })
    }

    fn id(ns: &str, name: &str) -> BindingId {
        BindingId {
            namespace: ns.into(),
            name: name.into(),
        }
    }

    #[test]
    fn bindings_grant_their_roles_where_they_apply() {
        let mut idx = Index::default();
        let alice = UserInfo::authenticated("alice".into(), vec!["dev".into()]);
        assert_eq!(idx.allows(&alice, &get("a")), None);
        idx.set_role("", "reader", &[rule(&["get"], &["pods"])]);
        idx.set_binding(
            id("a", "b"),
            role_ref("ClusterRole", "reader"),
            &[subject("User", "alice", "")],
        );
        let why = idx.allows(&alice, &get("a")).unwrap();
        assert!(
            why.contains("RoleBinding \"a/b\"") && why.contains("User \"alice\""),
            "{why}"
        );
        // A RoleBinding grants in its namespace only, never cluster-wide.
        assert_eq!(idx.allows(&alice, &get("b")), None);
        assert_eq!(idx.allows(&alice, &get("")), None);
        // Through a group, cluster-wide.
        idx.set_binding(
            id("", "c"),
            role_ref("ClusterRole", "reader"),
            &[subject("Group", "dev", "")],
        );
        assert!(
            idx.allows(&alice, &get("b"))
                .unwrap()
                .contains("Group \"dev\"")
        );
        assert!(idx.allows(&alice, &get("")).is_some());
        // Removing the binding takes the grant away; so does a changed one.
        idx.remove_binding(&id("", "c"));
        assert_eq!(idx.allows(&alice, &get("b")), None);
        idx.set_binding(
            id("a", "b"),
            role_ref("ClusterRole", "reader"),
            &[subject("User", "bob", "")],
        );
        assert_eq!(idx.allows(&alice, &get("a")), None);
        assert!(
            !idx.by_subject
                .contains_key(&SubjectKey::User("alice".into()))
        );
        // A Role is looked up in the binding's namespace; a missing role grants nothing.
        idx.set_role("a", "local", &[rule(&["get"], &["pods"])]);
        idx.set_binding(
            id("a", "l"),
            role_ref("Role", "local"),
            &[subject("User", "alice", "")],
        );
        assert!(idx.allows(&alice, &get("a")).is_some());
        idx.remove_role("a", "local");
        assert_eq!(idx.allows(&alice, &get("a")), None);
    }

    #[test]
    fn service_accounts_match_by_namespace() {
        let mut idx = Index::default();
        idx.set_role("", "reader", &[rule(&["get"], &["pods"])]);
        // No namespace in a RoleBinding's subject: the binding's.
        idx.set_binding(
            id("a", "b"),
            role_ref("ClusterRole", "reader"),
            &[subject("ServiceAccount", "bot", "")],
        );
        let bot = UserInfo::authenticated("system:serviceaccount:a:bot".into(), vec![]);
        let other = UserInfo::authenticated("system:serviceaccount:c:bot".into(), vec![]);
        assert!(idx.allows(&bot, &get("a")).is_some());
        assert_eq!(idx.allows(&other, &get("a")), None);
        assert_eq!(
            service_account("system:serviceaccount:a:bot"),
            Some(("a", "bot"))
        );
        assert_eq!(service_account("bot"), None);
        assert_eq!(idx.rules_for(&bot, "a").len(), 1);
        assert!(idx.rules_for(&bot, "b").is_empty());
    }
}
