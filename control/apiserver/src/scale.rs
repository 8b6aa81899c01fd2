//! The `/scale` subresource of Deployments and ReplicaSets: their replicas
//! as an autoscaling/v1 `Scale` (what `kubectl scale` and autoscalers read
//! and write). A write changes `spec.replicas` and nothing else, through
//! the registry's compare-and-set like any update.

use axum::body::Bytes;
use axum::http::{StatusCode, header};
use axum::response::Response;
use serde_json::{Value, json};
use skiff_api::Kind;
use skiff_api::v1::{Deployment, LabelSelector, ReplicaSet};

use crate::error::{ApiError, ApiResult};
use crate::patch::Patch;
use crate::registry::Registry;
use crate::rest::{json_response, write_options};
use crate::strategy::Strategy;

/// A kind with replicas.
trait Scalable: Strategy {
    fn replicas(&self) -> i32;
    fn set_replicas(&mut self, n: i32);
    fn observed(&self) -> i32;
    fn selector(&self) -> Option<&LabelSelector>;
}

impl Scalable for Deployment {
    fn replicas(&self) -> i32 {
        self.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
    }
    fn set_replicas(&mut self, n: i32) {
        self.spec.get_or_insert_with(Default::default).replicas = Some(n);
    }
    fn observed(&self) -> i32 {
        self.status.as_ref().map_or(0, |s| s.replicas)
    }
    fn selector(&self) -> Option<&LabelSelector> {
        self.spec.as_ref().and_then(|s| s.selector.as_ref())
    }
}

impl Scalable for ReplicaSet {
    fn replicas(&self) -> i32 {
        self.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
    }
    fn set_replicas(&mut self, n: i32) {
        self.spec.get_or_insert_with(Default::default).replicas = Some(n);
    }
    fn observed(&self) -> i32 {
        self.status.as_ref().map_or(0, |s| s.replicas)
    }
    fn selector(&self) -> Option<&LabelSelector> {
        self.spec.as_ref().and_then(|s| s.selector.as_ref())
    }
}

/// A label selector in its text form (`app=web,tier in (a,b)`).
fn selector_text(sel: Option<&LabelSelector>) -> String {
    let Some(sel) = sel else {
        return String::new();
    };
    let mut parts: Vec<String> = sel
        .match_labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    for e in &sel.match_expressions {
        parts.push(match e.operator.as_str() {
            "In" => format!("{} in ({})", e.key, e.values.join(",")),
            "NotIn" => format!("{} notin ({})", e.key, e.values.join(",")),
            "Exists" => e.key.clone(),
            _ => format!("!{}", e.key),
        });
    }
    parts.join(",")
}

fn scale_json<R: Scalable>(obj: &R) -> Value {
    let m = obj.meta();
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": m.name,
            "namespace": m.namespace,
            "uid": m.uid,
            "resourceVersion": m.resource_version,
            "creationTimestamp": m.creation_timestamp,
        },
        "spec": {"replicas": obj.replicas()},
        "status": {"replicas": obj.observed(), "selector": selector_text(obj.selector())},
    })
}

/// The replicas a Scale body asks for, and the resourceVersion it pins.
fn read_scale(v: &Value, name: &str) -> ApiResult<(i32, String)> {
    if let Some(k) = v.get("kind").and_then(Value::as_str)
        && k != "Scale"
    {
        return Err(ApiError::bad_request(format!(
            "the body is a {k}, but the path is for a Scale"
        )));
    }
    if let Some(n) = v.pointer("/metadata/name").and_then(Value::as_str)
        && n != name
    {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({n}) does not match the name on the URL ({name})"
        )));
    }
    let replicas = match v.pointer("/spec/replicas") {
        None | Some(Value::Null) => 0,
        Some(r) => r
            .as_i64()
            .and_then(|n| i32::try_from(n).ok())
            .filter(|n| *n >= 0)
            .ok_or_else(|| {
                ApiError::unprocessable(format!(
                    "Scale.autoscaling \"{name}\" is invalid: spec.replicas: Invalid value: {r}: must be greater than or equal to 0"
                ))
            })?,
    };
    let rv = v
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    Ok((replicas, rv))
}

pub async fn handle(
    registry: &Registry,
    kind: Kind,
    verb: &str,
    namespace: &str,
    name: &str,
    parts: crate::rest::Parts<'_>,
    body: &Bytes,
) -> ApiResult<Response> {
    match kind {
        Kind::Deployment => scale::<Deployment>(registry, verb, namespace, name, parts, body).await,
        Kind::ReplicaSet => scale::<ReplicaSet>(registry, verb, namespace, name, parts, body).await,
        other => Err(ApiError::bad_request(format!(
            "{other} has no scale subresource"
        ))),
    }
}

async fn scale<R: Scalable>(
    registry: &Registry,
    verb: &str,
    namespace: &str,
    name: &str,
    (query, headers, user): crate::rest::Parts<'_>,
    body: &Bytes,
) -> ApiResult<Response> {
    let opts = write_options(query, headers, user)?;
    let opts = &opts;
    let write = |mut cur: R, replicas: i32, rv: String| async move {
        cur.set_replicas(replicas);
        if !rv.is_empty() {
            cur.meta_mut().resource_version = rv;
        }
        registry.update(cur, false, opts.clone()).await
    };
    match verb {
        "get" => {
            let obj = registry.get::<R>(namespace, name).await?;
            Ok(json_response(StatusCode::OK, &scale_json(&obj), &[]))
        }
        "update" => {
            let v: Value = serde_json::from_slice(body)
                .map_err(|e| ApiError::bad_request(format!("malformed Scale: {e}")))?;
            let (replicas, rv) = read_scale(&v, name)?;
            let cur = registry.get::<R>(namespace, name).await?;
            let updated = write(cur, replicas, rv).await?;
            Ok(json_response(StatusCode::OK, &scale_json(&updated), &[]))
        }
        "patch" => {
            let content_type = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            let patch = Patch::parse(content_type, body)?;
            for _ in 0..8 {
                let cur = registry.get::<R>(namespace, name).await?;
                let patched = patch.apply(&skiff_api::patch::schema::PLAIN, scale_json(&cur))?;
                let (replicas, rv) = read_scale(&patched, name)?;
                match write(cur, replicas, rv).await {
                    Err(e) if e.reason == "Conflict" && !patch.names_resource_version() => continue,
                    r => return Ok(json_response(StatusCode::OK, &scale_json(&r?), &[])),
                }
            }
            Err(ApiError::conflict(R::KIND, name))
        }
        other => Err(ApiError::method_not_allowed(format!(
            "{other} is not supported on the scale subresource"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff_api::v1::LabelSelectorRequirement;

    #[test]
    fn selectors_read_as_text_and_scales_are_checked() {
        let sel = LabelSelector {
            match_labels: [("app".to_string(), "web".to_string())].into(),
            match_expressions: vec![
                LabelSelectorRequirement {
                    key: "tier".into(),
                    operator: "In".into(),
                    values: vec!["a".into(), "b".into()],
                },
                LabelSelectorRequirement {
                    key: "canary".into(),
                    operator: "DoesNotExist".into(),
                    values: vec![],
                },
            ],
        };
        assert_eq!(selector_text(Some(&sel)), "app=web,tier in (a,b),!canary");
        assert_eq!(
            read_scale(&json!({"spec": {"replicas": 3}}), "w").unwrap(),
            (3, String::new())
        );
        let pinned =
            json!({"metadata": {"name": "w", "resourceVersion": "7"}, "spec": {"replicas": 0}});
        assert_eq!(read_scale(&pinned, "w").unwrap(), (0, "7".to_string()));
        assert_eq!(
            read_scale(&json!({"spec": {"replicas": -1}}), "w")
                .unwrap_err()
                .code,
            422
        );
        assert_eq!(
            read_scale(&json!({"spec": {"replicas": "3"}}), "w")
                .unwrap_err()
                .code,
            422
        );
        assert_eq!(
            read_scale(&json!({"metadata": {"name": "x"}}), "w")
                .unwrap_err()
                .code,
            400
        );
        assert_eq!(
            read_scale(&json!({"kind": "Pod"}), "w").unwrap_err().code,
            400
        );
    }
}
