//! rbac.authorization.k8s.io/v1: Roles, ClusterRoles and their bindings,
//! with Kubernetes' rules: a rule names verbs and either resources (with
//! their API groups) or non-resource URLs (cluster roles only); a binding
//! names a role of a kind it may reference and subjects of known kinds.

use super::common::*;
use crate::RBAC_GROUP;

fn rules(errors: &mut Errors, rules: &[PolicyRule], namespaced: bool) {
    for (i, r) in rules.iter().enumerate() {
        let p = format!("rules[{i}]");
        if r.verbs.is_empty() {
            errors.push(FieldError::required(
                format!("{p}.verbs"),
                "verbs must contain at least one value",
            ));
        }
        if !r.non_resource_urls.is_empty() {
            if namespaced {
                errors.push(FieldError::invalid(
                    format!("{p}.nonResourceURLs"),
                    r.non_resource_urls.join(","),
                    "namespaced rules cannot apply to non-resource URLs",
                ));
            }
            if !r.api_groups.is_empty() || !r.resources.is_empty() || !r.resource_names.is_empty() {
                errors.push(FieldError::invalid(
                    format!("{p}.nonResourceURLs"),
                    r.non_resource_urls.join(","),
                    "rules cannot apply to both regular resources and non-resource URLs",
                ));
            }
            for (j, u) in r.non_resource_urls.iter().enumerate() {
                if !u.starts_with('/') && u != "*" {
                    errors.push(FieldError::invalid(
                        format!("{p}.nonResourceURLs[{j}]"),
                        u,
                        "must start with '/' (or be '*')",
                    ));
                }
            }
            continue;
        }
        if r.api_groups.is_empty() {
            errors.push(FieldError::required(
                format!("{p}.apiGroups"),
                "resource rules must supply at least one api group",
            ));
        }
        if r.resources.is_empty() {
            errors.push(FieldError::required(
                format!("{p}.resources"),
                "resource rules must supply at least one resource",
            ));
        }
    }
}

pub fn role(r: &Role) -> Errors {
    let mut errors = Vec::new();
    rules(&mut errors, &r.rules, true);
    errors
}

pub fn cluster_role(r: &ClusterRole) -> Errors {
    let mut errors = Vec::new();
    rules(&mut errors, &r.rules, false);
    errors
}

fn binding(
    errors: &mut Errors,
    subjects: &[Subject],
    role_ref: Option<&RoleRef>,
    kinds: &[&str],
    namespaced: bool,
) {
    match role_ref {
        None => errors.push(FieldError::required("roleRef", "")),
        Some(r) => {
            if r.api_group != RBAC_GROUP {
                errors.push(FieldError::not_supported(
                    "roleRef.apiGroup",
                    &r.api_group,
                    &[RBAC_GROUP],
                ));
            }
            if !kinds.contains(&r.kind.as_str()) {
                errors.push(FieldError::not_supported("roleRef.kind", &r.kind, kinds));
            }
            if r.name.is_empty() {
                errors.push(FieldError::required("roleRef.name", ""));
            } else if let Some(d) = path_segment_error(&r.name) {
                errors.push(FieldError::invalid("roleRef.name", &r.name, d));
            }
        }
    }
    for (i, s) in subjects.iter().enumerate() {
        let p = format!("subjects[{i}]");
        if s.name.is_empty() {
            errors.push(FieldError::required(format!("{p}.name"), ""));
        }
        match s.kind.as_str() {
            "ServiceAccount" => {
                if !s.api_group.is_empty() {
                    errors.push(FieldError::not_supported(
                        format!("{p}.apiGroup"),
                        &s.api_group,
                        &[""],
                    ));
                }
                if let Some(d) = dns_label_error(&s.name).filter(|_| !s.name.is_empty()) {
                    errors.push(FieldError::invalid(format!("{p}.name"), &s.name, d));
                }
                if s.namespace.is_empty() && !namespaced {
                    errors.push(FieldError::required(format!("{p}.namespace"), ""));
                }
            }
            "User" | "Group" => {
                if s.api_group != RBAC_GROUP {
                    errors.push(FieldError::not_supported(
                        format!("{p}.apiGroup"),
                        &s.api_group,
                        &[RBAC_GROUP],
                    ));
                }
            }
            other => errors.push(FieldError::not_supported(
                format!("{p}.kind"),
                other,
                &["ServiceAccount", "User", "Group"],
            )),
        }
    }
}

pub fn role_binding(b: &RoleBinding) -> Errors {
    let mut errors = Vec::new();
    binding(
        &mut errors,
        &b.subjects,
        b.role_ref.as_ref(),
        &["Role", "ClusterRole"],
        true,
    );
    errors
}

pub fn cluster_role_binding(b: &ClusterRoleBinding) -> Errors {
    let mut errors = Vec::new();
    binding(
        &mut errors,
        &b.subjects,
        b.role_ref.as_ref(),
        &["ClusterRole"],
        false,
    );
    errors
}

/// A binding's role cannot change (delete and recreate it instead).
pub fn role_ref_change(old: Option<&RoleRef>, new: Option<&RoleRef>) -> Errors {
    if old == new {
        return Vec::new();
    }
    let shown = new
        .map(|r| format!("{}/{}", r.kind, r.name))
        .unwrap_or_default();
    vec![FieldError::invalid(
        "roleRef",
        shown,
        "cannot change roleRef",
    )]
}
