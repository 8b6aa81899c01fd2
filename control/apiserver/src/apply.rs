//! Server-side apply (`PATCH` with `application/apply-patch+yaml`, and the
//! gRPC `Apply`): the configuration is merged into the live object by its
//! manager's field ownership — created when absent — and refused with 409
//! naming every conflicting manager and field unless forced.

use serde_json::Value;
use skiff_api::patch::fields;
use skiff_api::{Object, Resource};

use crate::error::{ApiError, ApiResult};
use crate::registry::{Registry, WriteOptions};
use crate::strategy::Strategy;

/// One apply request.
pub struct Apply<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    pub config: Value,
    pub manager: &'a str,
    pub force: bool,
    pub dry_run: bool,
    pub user: Option<std::sync::Arc<crate::authn::UserInfo>>,
}

/// Reads an apply body: YAML (JSON is YAML too), one object.
pub fn parse_config(body: &[u8]) -> ApiResult<Value> {
    let text = std::str::from_utf8(body)
        .map_err(|_| ApiError::bad_request("the apply configuration is not UTF-8"))?;
    let v: Value = serde_yaml_ng::from_str(text)
        .map_err(|e| ApiError::bad_request(format!("malformed apply configuration: {e}")))?;
    if !v.is_object() {
        return Err(ApiError::bad_request(
            "the apply configuration must be an object",
        ));
    }
    Ok(v)
}

fn check_config<R: Resource>(a: &Apply<'_>) -> ApiResult<()> {
    let kind = R::KIND;
    if a.manager.is_empty() {
        return Err(ApiError::bad_request(
            "PATCH, application/apply-patch+yaml: fieldManager is required for apply requests",
        ));
    }
    if a.manager.len() > 128 {
        return Err(ApiError::bad_request(
            "fieldManager: Too long: may not be more than 128 bytes",
        ));
    }
    let api_version = a.config.get("apiVersion").and_then(Value::as_str);
    let kind_name = a.config.get("kind").and_then(Value::as_str);
    if api_version != Some(kind.api_version().as_str()) || kind_name != Some(kind.name()) {
        return Err(ApiError::bad_request(format!(
            "the apply configuration is {} {}, but the path is for {} {kind}",
            api_version.unwrap_or("(no apiVersion)"),
            kind_name.unwrap_or("(no kind)"),
            kind.api_version()
        )));
    }
    let meta = a.config.get("metadata");
    match meta.and_then(|m| m.get("name")).and_then(Value::as_str) {
        Some(n) if n == a.name => {}
        Some(n) => {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({n}) does not match the name on the URL ({})",
                a.name
            )));
        }
        None => return Err(ApiError::bad_request("metadata.name: Required value")),
    }
    if let Some(ns) = meta
        .and_then(|m| m.get("namespace"))
        .and_then(Value::as_str)
        && kind.namespaced()
        && ns != a.namespace
    {
        return Err(ApiError::bad_request(
            "the namespace of the provided object does not match the namespace sent on the request",
        ));
    }
    Ok(())
}

fn typed<R: Resource>(v: Value) -> ApiResult<R> {
    let (obj, _) = Object::from_json(v).map_err(|e| {
        ApiError::unprocessable(format!("the apply gives a malformed {}: {e}", R::KIND))
    })?;
    R::from_object(obj).ok_or_else(|| ApiError::bad_request("an apply may not change the kind"))
}

/// Applies; returns the stored (or, dry, the would-be) object and whether
/// it was created.
pub async fn apply<R: Strategy>(registry: &Registry, a: Apply<'_>) -> ApiResult<(R, bool)> {
    check_config::<R>(&a)?;
    let kind = R::KIND;
    let schema = skiff_api::patch::schema::of(kind);
    let opts = WriteOptions {
        dry_run: a.dry_run,
        field_manager: None,
        user: a.user.clone(),
    };
    for _ in 0..8 {
        let live = match registry.get::<R>(a.namespace, a.name).await {
            Ok(o) => Some(o),
            Err(e) if e.code == 404 => None,
            Err(e) => return Err(e),
        };
        let Some(live) = live else {
            let (value, entries) = fields::apply(None, &a.config, schema, &[], a.manager, a.force)
                .map_err(|c| ApiError::apply_conflicts(kind, a.name, &c))?;
            let mut obj: R = typed(value)?;
            if kind.namespaced() {
                obj.meta_mut().namespace = a.namespace.to_string();
            }
            obj.meta_mut().managed_fields = crate::managed::to_meta(kind, &[], entries);
            match registry.create(obj, opts.clone()).await {
                // Created meanwhile: apply to it.
                Err(e) if e.reason == "AlreadyExists" => continue,
                r => return r.map(|o| (o, true)),
            }
        };
        let live_json =
            serde_json::to_value(&live).map_err(|e| ApiError::internal(e.to_string()))?;
        let entries = crate::managed::entries(live.meta());
        let config = with_last_applied(&live_json, &a.config, a.manager);
        let config = config.as_ref().unwrap_or(&a.config);
        let applied = match fields::apply(
            Some(&live_json),
            config,
            schema,
            &entries,
            a.manager,
            a.force,
        ) {
            Err(fields::Conflicts(found)) if a.manager == KUBECTL => {
                // Upgrading from client-side apply: what the last-applied
                // annotation set, and live still holds, kubectl may take.
                let allowed = from_last_applied(&live_json, schema);
                let left: Vec<_> = found
                    .into_iter()
                    .filter(|c| !allowed.contains(&c.path))
                    .collect();
                if left.is_empty() {
                    fields::apply(Some(&live_json), config, schema, &entries, a.manager, true)
                } else {
                    Err(fields::Conflicts(left))
                }
            }
            r => r,
        };
        let (value, entries) = applied.map_err(|c| ApiError::apply_conflicts(kind, a.name, &c))?;
        let mut obj: R = typed(value)?;
        let before = &live.meta().managed_fields;
        let managed = crate::managed::to_meta(kind, before, entries);
        let meta = obj.meta_mut();
        meta.managed_fields = managed;
        // Compare-and-set on what the ownership was computed from.
        meta.resource_version = live.meta().resource_version.clone();
        match registry.update(obj, false, opts.clone()).await {
            Err(e) if e.reason == "Conflict" && e.other_causes.is_empty() => continue,
            r => return r.map(|o| (o, false)),
        }
    }
    Err(ApiError::conflict(kind, a.name))
}

/// The manager whose applies upgrade objects from client-side apply, as in
/// Kubernetes.
const KUBECTL: &str = "kubectl";
/// Client-side apply's record of the last configuration.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// The fields client-side apply last set that live still holds as it set
/// them: an applier named `kubectl` takes them without conflict.
fn from_last_applied(live: &Value, schema: &skiff_api::patch::schema::Schema) -> fields::FieldSet {
    let Some(last) = live
        .pointer("/metadata/annotations")
        .and_then(|a| a.get(LAST_APPLIED))
        .and_then(Value::as_str)
        .and_then(|s| serde_json::from_str::<Value>(s).ok())
    else {
        return fields::FieldSet::new();
    };
    let mut set: fields::FieldSet = fields::fields_of(&last, schema)
        .into_iter()
        .filter(|p| fields::value_at(live, p) == fields::value_at(&last, p))
        .collect();
    // The record itself, which the apply brings up to date.
    set.insert(vec![
        "f:metadata".into(),
        "f:annotations".into(),
        format!("f:{LAST_APPLIED}"),
    ]);
    set
}

/// For `kubectl` applying to an object client-side apply manages, the
/// configuration with its last-applied annotation brought up to date, so
/// a later client-side apply sees what server-side apply set (Kubernetes'
/// last-applied updater). `None`: the configuration as sent.
fn with_last_applied(live: &Value, config: &Value, manager: &str) -> Option<Value> {
    let has = live
        .pointer("/metadata/annotations")
        .and_then(|a| a.get(LAST_APPLIED))
        .is_some();
    if manager != KUBECTL || !has {
        return None;
    }
    let mut bare = config.clone();
    if let Some(a) = bare
        .pointer_mut("/metadata/annotations")
        .and_then(Value::as_object_mut)
    {
        a.remove(LAST_APPLIED);
        if a.is_empty() {
            bare["metadata"].as_object_mut()?.remove("annotations");
        }
    }
    let text = serde_json::to_string(&bare).ok()?;
    let mut out = config.clone();
    let meta = out.get_mut("metadata")?.as_object_mut()?;
    let annotations = meta
        .entry("annotations")
        .or_insert_with(|| Value::Object(Default::default()));
    annotations
        .as_object_mut()?
        .insert(LAST_APPLIED.into(), Value::String(text));
    Some(out)
}
