//! RBAC's rule matching, pure: whether a rule allows a request, and
//! whether one set of rules covers another (the escalation check: nobody
//! grants what they do not hold). Kubernetes' semantics: `*` in a rule
//! matches anything, `*/sub` any resource's subresource `sub`, a
//! non-resource URL ending in `*` any path it prefixes; an empty
//! `resourceNames` means every name.

use skiff_api::v1::PolicyRule;

/// What a request asks to do, as the authorizer sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    Resource(Resource),
    /// A path that names no resource (`/healthz`, `/metrics`, `/apis`).
    NonResource {
        verb: String,
        path: String,
    },
}

/// A request on a resource: `verb` on `resource[/subresource]` of
/// `api_group`, in `namespace` (empty: cluster-wide or a cluster-scoped
/// kind), naming `name` (empty: a collection).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Resource {
    pub verb: String,
    pub api_group: String,
    pub resource: String,
    pub subresource: String,
    pub namespace: String,
    pub name: String,
}

impl Resource {
    /// `pods` or `pods/exec`, as rules name it.
    pub fn combined(&self) -> String {
        if self.subresource.is_empty() {
            self.resource.clone()
        } else {
            format!("{}/{}", self.resource, self.subresource)
        }
    }
}

impl Request {
    pub fn verb(&self) -> &str {
        match self {
            Request::Resource(r) => &r.verb,
            Request::NonResource { verb, .. } => verb,
        }
    }

    /// The namespace a binding must be in to apply: non-resource requests
    /// and cluster-wide ones only through cluster bindings.
    pub fn namespace(&self) -> &str {
        match self {
            Request::Resource(r) => &r.namespace,
            Request::NonResource { .. } => "",
        }
    }
}

fn has(list: &[String], want: &str) -> bool {
    list.iter().any(|x| x == "*" || x == want)
}

fn resource_matches(rule: &PolicyRule, r: &Resource) -> bool {
    let combined = r.combined();
    rule.resources.iter().any(|x| {
        x == "*"
            || *x == combined
            || (!r.subresource.is_empty()
                && x.strip_prefix("*/").is_some_and(|s| s == r.subresource))
    })
}

fn url_matches(pattern: &str, path: &str) -> bool {
    pattern == "*"
        || pattern == path
        || pattern
            .strip_suffix('*')
            .is_some_and(|prefix| path.starts_with(prefix))
}

/// Whether one rule allows the request.
pub fn allows(rule: &PolicyRule, req: &Request) -> bool {
    match req {
        Request::Resource(r) => {
            has(&rule.verbs, &r.verb)
                && rule.non_resource_urls.is_empty()
                && has(&rule.api_groups, &r.api_group)
                && resource_matches(rule, r)
                && (rule.resource_names.is_empty()
                    || (!r.name.is_empty() && rule.resource_names.contains(&r.name)))
        }
        Request::NonResource { verb, path } => {
            has(&rule.verbs, verb)
                && rule.resources.is_empty()
                && rule.non_resource_urls.iter().any(|p| url_matches(p, path))
        }
    }
}

/// One grant a rule makes: a verb on one group's resource, maybe by name,
/// or on one URL. `*` stays literal: only an owner's `*` covers it.
#[derive(Debug, PartialEq, Eq)]
enum Grant<'a> {
    Resource {
        verb: &'a str,
        group: &'a str,
        resource: &'a str,
        name: Option<&'a str>,
    },
    Url {
        verb: &'a str,
        url: &'a str,
    },
}

fn grants(rule: &PolicyRule) -> Vec<Grant<'_>> {
    let mut out = Vec::new();
    for verb in &rule.verbs {
        for url in &rule.non_resource_urls {
            out.push(Grant::Url { verb, url });
        }
        for group in &rule.api_groups {
            for resource in &rule.resources {
                if rule.resource_names.is_empty() {
                    out.push(Grant::Resource {
                        verb,
                        group,
                        resource,
                        name: None,
                    });
                }
                for name in &rule.resource_names {
                    out.push(Grant::Resource {
                        verb,
                        group,
                        resource,
                        name: Some(name),
                    });
                }
            }
        }
    }
    out
}

fn covers_grant(owner: &PolicyRule, g: &Grant) -> bool {
    match *g {
        Grant::Url { verb, url } => {
            has(&owner.verbs, verb)
                && owner.non_resource_urls.iter().any(|p| {
                    p == "*"
                        || p == url
                        || p.strip_suffix('*').is_some_and(|prefix| {
                            url.strip_suffix('*').unwrap_or(url).starts_with(prefix)
                        })
                })
        }
        Grant::Resource {
            verb,
            group,
            resource,
            name,
        } => {
            let sub = resource.split_once('/').map(|(_, s)| s);
            has(&owner.verbs, verb)
                && has(&owner.api_groups, group)
                && owner.resources.iter().any(|x| {
                    x == "*"
                        || x == resource
                        || sub.is_some_and(|s| x.strip_prefix("*/") == Some(s))
                })
                && (owner.resource_names.is_empty()
                    || name.is_some_and(|n| owner.resource_names.iter().any(|o| o == n)))
        }
    }
}

/// The first grant of `wanted` that no rule of `owner` covers, shown as
/// Kubernetes lists them; `None` when `owner` covers everything.
pub fn uncovered(owner: &[PolicyRule], wanted: &[PolicyRule]) -> Option<String> {
    for rule in wanted {
        for g in grants(rule) {
            if !owner.iter().any(|o| covers_grant(o, &g)) {
                return Some(match g {
                    Grant::Url { verb, url } => {
                        format!("{{NonResourceURLs:[{url}], Verbs:[{verb}]}}")
                    }
                    Grant::Resource {
                        verb,
                        group,
                        resource,
                        name,
                    } => {
                        let names = name
                            .map(|n| format!(" ResourceNames:[{n}],"))
                            .unwrap_or_default();
                        format!(
                            "{{APIGroups:[{group:?}], Resources:[{resource:?}],{names} Verbs:[{verb:?}]}}"
                        )
                    }
                });
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn rule(verbs: &[&str], groups: &[&str], resources: &[&str]) -> PolicyRule {
        let v = |l: &[&str]| l.iter().map(|s| s.to_string()).collect();
        PolicyRule {
            verbs: v(verbs),
            api_groups: v(groups),
            resources: v(resources),
            ..Default::default()
        }
    }

    fn res(verb: &str, group: &str, resource: &str, sub: &str, name: &str) -> Request {
        Request::Resource(Resource {
            verb: verb.into(),
            api_group: group.into(),
            resource: resource.into(),
            subresource: sub.into(),
            namespace: "ns".into(),
            name: name.into(),
        })
    }

    #[test]
    fn matching() {
        let pods = rule(&["get", "list"], &[""], &["pods"]);
        assert!(allows(&pods, &res("get", "", "pods", "", "p")));
        assert!(allows(&pods, &res("list", "", "pods", "", "")));
        assert!(!allows(&pods, &res("delete", "", "pods", "", "p")));
        assert!(!allows(&pods, &res("get", "apps", "pods", "", "p")));
        // A subresource is its own resource.
        assert!(!allows(&pods, &res("get", "", "pods", "log", "p")));
        assert!(allows(
            &rule(&["get"], &[""], &["pods/log"]),
            &res("get", "", "pods", "log", "p")
        ));
        assert!(allows(
            &rule(&["*"], &["*"], &["*"]),
            &res("create", "apps", "deployments", "scale", "d")
        ));
        assert!(allows(
            &rule(&["get"], &["apps"], &["*/scale"]),
            &res("get", "apps", "deployments", "scale", "d")
        ));
        assert!(!allows(
            &rule(&["get"], &["apps"], &["*/scale"]),
            &res("get", "apps", "deployments", "", "d")
        ));
        let mut named = rule(&["get"], &[""], &["configmaps"]);
        named.resource_names = vec!["one".into()];
        assert!(allows(&named, &res("get", "", "configmaps", "", "one")));
        assert!(!allows(&named, &res("get", "", "configmaps", "", "two")));
        // A list names nothing, so a named rule cannot allow it.
        assert!(!allows(&named, &res("list", "", "configmaps", "", "")));

        let urls = PolicyRule {
            verbs: vec!["get".into()],
            non_resource_urls: vec!["/healthz".into(), "/apis/*".into()],
            ..Default::default()
        };
        let path = |p: &str| Request::NonResource {
            verb: "get".into(),
            path: p.into(),
        };
        assert!(allows(&urls, &path("/healthz")));
        assert!(allows(&urls, &path("/apis/apps/v1")));
        assert!(!allows(&urls, &path("/apis")));
        assert!(!allows(&urls, &path("/metrics")));
        // Resource rules never allow paths, nor URL rules resources.
        assert!(!allows(&rule(&["*"], &["*"], &["*"]), &path("/healthz")));
        assert!(!allows(&urls, &res("get", "", "pods", "", "")));
    }

    #[test]
    fn coverage() {
        let owner = vec![
            rule(&["get", "list", "watch"], &[""], &["pods", "services"]),
            rule(&["*"], &["apps"], &["deployments"]),
        ];
        assert_eq!(uncovered(&owner, &[rule(&["get"], &[""], &["pods"])]), None);
        assert_eq!(
            uncovered(
                &owner,
                &[rule(&["create", "get"], &["apps"], &["deployments"])]
            ),
            None
        );
        assert!(
            uncovered(&owner, &[rule(&["delete"], &[""], &["pods"])])
                .unwrap()
                .contains("\"delete\"")
        );
        // A wildcard is granted only by a wildcard.
        assert!(uncovered(&owner, &[rule(&["get"], &[""], &["*"])]).is_some());
        assert!(uncovered(&owner, &[rule(&["*"], &[""], &["pods"])]).is_some());
        assert!(uncovered(&owner, &[rule(&["get"], &[""], &["pods/log"])]).is_some());
        let admin = vec![rule(&["*"], &["*"], &["*"])];
        assert_eq!(
            uncovered(
                &admin,
                &[
                    rule(&["*"], &["*"], &["*"]),
                    rule(&["get"], &[""], &["pods/exec"])
                ]
            ),
            None
        );
        let mut named = rule(&["get"], &[""], &["configmaps"]);
        named.resource_names = vec!["a".into()];
        assert_eq!(
            uncovered(&[named.clone()], std::slice::from_ref(&named)),
            None
        );
        assert!(uncovered(&[named], &[rule(&["get"], &[""], &["configmaps"])]).is_some());
        let urls = |u: &[&str]| PolicyRule {
            verbs: vec!["get".into()],
            non_resource_urls: u.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        assert_eq!(
            uncovered(&[urls(&["/apis/*"])], &[urls(&["/apis/apps*"])]),
            None
        );
        assert!(uncovered(&[urls(&["/apis/*"])], &[urls(&["/metrics"])]).is_some());
    }
}
