//! Discovery: what `/api`, `/apis` and each group-version list, from the
//! kind table — per group-version (`APIResourceList`) and aggregated
//! (`apidiscovery.k8s.io/v2` `APIGroupDiscoveryList`, which kubectl asks
//! for first and which saves it a request per group-version).

use serde_json::{Value, json};
use skiff_api::Kind;

const VERBS: [&str; 7] = [
    "create", "delete", "get", "list", "patch", "update", "watch",
];

/// The media type of the aggregated form.
pub const AGGREGATED: &str = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";

/// A subresource: its name, the group/version/kind it answers with, its
/// verbs.
struct Sub {
    name: &'static str,
    group: &'static str,
    version: &'static str,
    kind: &'static str,
    verbs: &'static [&'static str],
}

fn subresources(k: Kind) -> Vec<Sub> {
    let mut out = Vec::new();
    if k.has_status() {
        out.push(Sub {
            name: "status",
            group: k.group(),
            version: "v1",
            kind: k.name(),
            verbs: &["get", "patch", "update"],
        });
    }
    if k.has_scale() {
        out.push(Sub {
            name: "scale",
            group: "autoscaling",
            version: "v1",
            kind: "Scale",
            verbs: &["get", "patch", "update"],
        });
    }
    if k == Kind::Pod {
        out.push(Sub {
            name: "log",
            group: "",
            version: "v1",
            kind: "Pod",
            verbs: &["get"],
        });
        out.push(Sub {
            name: "exec",
            group: "",
            version: "v1",
            kind: "PodExecOptions",
            verbs: &["create", "get"],
        });
        out.push(Sub {
            name: "eviction",
            group: "policy",
            version: "v1",
            kind: "Eviction",
            verbs: &["create"],
        });
    }
    out
}

/// The group-versions' groups, sorted (the legacy group left out).
pub fn groups() -> Vec<&'static str> {
    let mut gs: Vec<&str> = Kind::ALL
        .iter()
        .map(|k| k.group())
        .filter(|g| !g.is_empty())
        .collect();
    gs.sort();
    gs.dedup();
    gs
}

/// `/api/v1`, `/apis/{group}/v1`: an `APIResourceList`.
pub fn resource_list(group: &str) -> Value {
    let group_version = if group.is_empty() {
        "v1".to_string()
    } else {
        format!("{group}/v1")
    };
    let resources: Vec<Value> = Kind::ALL
        .into_iter()
        .filter(|k| k.group() == group)
        .flat_map(|k| {
            let mut v = vec![json!({
                "name": k.plural(), "singularName": k.name().to_ascii_lowercase(), "namespaced": k.namespaced(),
                "kind": k.name(), "verbs": VERBS, "shortNames": k.short_names(),
                "categories": k.categories(),
            })];
            for s in subresources(k) {
                let mut r = json!({"name": format!("{}/{}", k.plural(), s.name), "singularName": "",
                    "namespaced": k.namespaced(), "kind": s.kind, "verbs": s.verbs});
                if s.group != k.group() {
                    r["group"] = json!(s.group);
                    r["version"] = json!(s.version);
                }
                v.push(r);
            }
            v
        })
        .collect();
    json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": resources})
}

/// `/api` (`legacy`) or `/apis` in the aggregated form.
pub fn aggregated(legacy: bool) -> Value {
    let wanted: Vec<&str> = if legacy { vec![""] } else { groups() };
    let items: Vec<Value> = wanted
        .into_iter()
        .map(|g| {
            let resources: Vec<Value> = Kind::ALL
                .into_iter()
                .filter(|k| k.group() == g)
                .map(|k| {
                    let subs: Vec<Value> = subresources(k)
                        .into_iter()
                        .map(|s| {
                            json!({"subresource": s.name, "verbs": s.verbs,
                                "responseKind": {"group": s.group, "version": s.version, "kind": s.kind}})
                        })
                        .collect();
                    json!({
                        "resource": k.plural(),
                        "responseKind": {"group": g, "version": "v1", "kind": k.name()},
                        "scope": if k.namespaced() { "Namespaced" } else { "Cluster" },
                        "singularResource": k.name().to_ascii_lowercase(),
                        "verbs": VERBS,
                        "shortNames": k.short_names(),
                        "categories": k.categories(),
                        "subresources": subs,
                    })
                })
                .collect();
            json!({
                "metadata": {"name": g, "creationTimestamp": null},
                "versions": [{"version": "v1", "resources": resources, "freshness": "Current"}],
            })
        })
        .collect();
    json!({"kind": "APIGroupDiscoveryList", "apiVersion": "apidiscovery.k8s.io/v2",
        "metadata": {}, "items": items})
}

/// Whether an Accept header asks for the aggregated form before any
/// other (the first entry that names a form skiff serves decides).
pub fn wants_aggregated(accept: &str) -> bool {
    for entry in accept.split(',') {
        let params: Vec<&str> = entry.split(';').map(str::trim).collect();
        let media = params.first().copied().unwrap_or("");
        let has = |p: &str| params.iter().any(|x| x.eq_ignore_ascii_case(p));
        if media == "application/json" && has("g=apidiscovery.k8s.io") {
            if has("v=v2") && has("as=APIGroupDiscoveryList") {
                return true;
            }
            continue;
        }
        if matches!(media, "application/json" | "*/*" | "application/*") {
            return false;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubectl_s_accept_gets_the_aggregated_form_and_others_the_plain_one() {
        assert!(wants_aggregated(
            "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json"
        ));
        assert!(wants_aggregated(
            "application/vnd.kubernetes.protobuf;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json"
        ));
        assert!(!wants_aggregated(
            "application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json"
        ));
        assert!(!wants_aggregated("application/json, */*"));
        assert!(!wants_aggregated(""));
    }

    #[test]
    fn the_aggregated_form_lists_kinds_with_their_subresources() {
        let apis = aggregated(false);
        let apps = apis["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["metadata"]["name"] == "apps")
            .expect("apps");
        let deploy = apps["versions"][0]["resources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["resource"] == "deployments")
            .expect("deployments");
        assert_eq!(deploy["scope"], "Namespaced");
        assert_eq!(deploy["shortNames"], json!(["deploy"]));
        let scale = deploy["subresources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["subresource"] == "scale")
            .expect("scale");
        assert_eq!(scale["responseKind"]["kind"], "Scale");
        let core = aggregated(true);
        assert_eq!(core["items"].as_array().unwrap().len(), 1);
        assert_eq!(core["items"][0]["metadata"]["name"], "");
        let plain = resource_list("");
        assert!(
            plain["resources"]
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r["name"] == "pods/exec")
        );
    }
}
