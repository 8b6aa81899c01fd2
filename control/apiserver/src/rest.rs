//! The REST/JSON front end with Kubernetes' paths:
//! `/api/v1/namespaces/{ns}/pods/{name}`, `/apis/apps/v1/...`, the
//! `/status` subresource, `?watch=1` streams, patches (JSON merge,
//! strategic merge, JSON patch), `dryRun=All`, discovery, and errors as
//! `Status` objects.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde_json::{Value, json};
use skiff_api::selector::{FieldSelector, Selector};
use skiff_api::{Kind, Object, Resource, with_resource};

use crate::AppState;
use crate::authn::UserInfo;
use crate::error::{ApiError, ApiResult};
use crate::patch::Patch;
use crate::registry::{
    DeleteOptions, ListOptions, Propagation, WatchParams, Watched, WriteOptions, watch_timeout,
};
use crate::strategy::Strategy;
use crate::table::{self, Include, Shape};
use crate::watch_cache::Filter;

/// What a path names.
#[derive(Debug, PartialEq, Eq)]
pub enum Target {
    /// `/api`, `/apis`, `/api/v1`, `/apis/apps/v1`.
    Discovery(Value),
    Resource {
        kind: Kind,
        namespace: String,
        name: Option<String>,
        sub: Sub,
    },
}

/// Which part of an object a path names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sub {
    Whole,
    /// `/status`: writes change only the status.
    Status,
    /// `/scale`: the autoscaling/v1 Scale view of the replicas.
    Scale,
    /// A pod's `/log`.
    Log,
    /// A pod's `/eviction`: a policy/v1 Eviction deletes it.
    Eviction,
}

fn not_found(path: &str) -> ApiError {
    let mut e = ApiError::bad_request(format!(
        "the server could not find the requested resource ({path})"
    ));
    e.code = 404;
    e.reason = "NotFound";
    e
}

/// The answer to a path nothing serves: 404 with a Status, as
/// kube-apiserver gives.
pub fn unknown_path(path: &str) -> Response {
    error_response(&not_found(path))
}

pub fn parse_path(path: &str) -> ApiResult<Target> {
    let segs: Vec<&str> = path
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    let (group, rest): (&str, &[&str]) = match segs.as_slice() {
        ["api"] => {
            return Ok(Target::Discovery(
                json!({"kind": "APIVersions", "versions": ["v1"]}),
            ));
        }
        ["apis"] => {
            let groups: Vec<Value> = crate::discovery::groups()
                .into_iter()
                .map(|g| {
                    let gv = json!({"groupVersion": format!("{g}/v1"), "version": "v1"});
                    json!({"name": g, "versions": [gv.clone()], "preferredVersion": gv})
                })
                .collect();
            return Ok(Target::Discovery(
                json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}),
            ));
        }
        ["api", "v1", rest @ ..] => ("", rest),
        ["apis", g, "v1", rest @ ..] if crate::discovery::groups().contains(g) => (g, rest),
        _ => return Err(not_found(path)),
    };
    let resource = |kind: Option<Kind>,
                    namespace: &str,
                    name: Option<&str>,
                    sub: Option<&str>|
     -> ApiResult<Target> {
        let kind = kind.ok_or_else(|| not_found(path))?;
        if namespace.is_empty() && name.is_some() && kind.namespaced() {
            return Err(not_found(path));
        }
        let sub = match sub {
            None => Sub::Whole,
            Some("status") if kind.has_status() => Sub::Status,
            Some("scale") if kind.has_scale() => Sub::Scale,
            Some("log") if kind == Kind::Pod => Sub::Log,
            Some("eviction") if kind == Kind::Pod => Sub::Eviction,
            Some(_) => return Err(not_found(path)),
        };
        Ok(Target::Resource {
            kind,
            namespace: namespace.to_string(),
            name: name.map(str::to_string),
            sub,
        })
    };
    match rest {
        [] => Ok(Target::Discovery(crate::discovery::resource_list(group))),
        ["namespaces", ns, plural, tail @ ..] if *plural != "status" => {
            let kind = Kind::from_rest(group, plural).filter(|k| k.namespaced());
            match tail {
                [] => resource(kind, ns, None, None),
                [name] => resource(kind, ns, Some(name), None),
                [name, sub] => resource(kind, ns, Some(name), Some(sub)),
                _ => Err(not_found(path)),
            }
        }
        [plural] => resource(Kind::from_rest(group, plural), "", None, None),
        [plural, name] => resource(Kind::from_rest(group, plural), "", Some(name), None),
        [plural, name, sub] => resource(Kind::from_rest(group, plural), "", Some(name), Some(sub)),
        _ => Err(not_found(path)),
    }
}

pub(crate) fn error_response(e: &ApiError) -> Response {
    let code = StatusCode::from_u16(e.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        e.to_status().to_string(),
    )
        .into_response()
}

pub(crate) fn json_response(code: StatusCode, body: &Value, warnings: &[String]) -> Response {
    let mut resp = (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response();
    for w in warnings {
        // RFC 7234's warn-text is a quoted string: inner quotes escaped.
        let text = format!("unknown field \"{w}\"")
            .replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', " ");
        let text = format!("299 - \"{text}\"");
        if let Ok(v) = HeaderValue::from_str(&text) {
            resp.headers_mut().append(header::WARNING, v);
        }
    }
    resp
}

fn object_json<R: Resource>(obj: R) -> Value {
    obj.into_object().to_json()
}

/// Reads a request body (JSON, or YAML by content type) as an object of
/// kind `R`, with the paths of fields that were not understood.
fn read_body<R: Resource>(headers: &HeaderMap, body: &[u8]) -> ApiResult<(R, Vec<String>)> {
    let mut value = parse_value(R::KIND, headers, body)?;
    if let Value::Object(map) = &mut value {
        let kind = R::KIND;
        let api_version = map
            .entry("apiVersion")
            .or_insert_with(|| json!(kind.api_version()))
            .clone();
        let kind_name = map
            .entry("kind")
            .or_insert_with(|| json!(kind.name()))
            .clone();
        if api_version != json!(kind.api_version()) || kind_name != json!(kind.name()) {
            return Err(ApiError::bad_request(format!(
                "the body is a {} {}, but the path is for {} {}",
                api_version,
                kind_name,
                kind.api_version(),
                kind.name()
            )));
        }
    }
    let (obj, warnings) = Object::from_json(value)
        .map_err(|e| ApiError::bad_request(format!("malformed {}: {e}", R::KIND)))?;
    let obj = R::from_object(obj).ok_or_else(|| ApiError::bad_request("kind mismatch"))?;
    Ok((obj, warnings))
}

/// A request body as JSON, by its content type: JSON, YAML, or
/// Kubernetes' protobuf (decoded for `kind`).
fn parse_value(kind: Kind, headers: &HeaderMap, body: &[u8]) -> ApiResult<Value> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let media = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match media.as_str() {
        "application/yaml" | "application/x-yaml" | "text/yaml" => serde_yaml_ng::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("malformed YAML: {e}"))),
        "" | "application/json" | "text/json" => serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("malformed JSON: {e}"))),
        crate::k8s_protobuf::MEDIA_TYPE => crate::k8s_protobuf::decode(kind, body),
        other => Err(ApiError::unsupported_media(format!(
            "the body of the request was in an unknown format ({other}) - accepted media types include: application/json, application/yaml"
        ))),
    }
}

/// A list's JSON, written object by object: one decoded object at a time,
/// whatever the list's size.
fn list_response<R: Resource>(
    chunk: &crate::registry::ListChunk<R>,
    metadata: &Value,
) -> ApiResult<Response> {
    let stored: usize = chunk.kvs.iter().map(|kv| kv.value.len()).sum();
    let mut out = Vec::with_capacity(stored + stored / 2 + 256);
    out.extend_from_slice(
        format!(
            r#"{{"kind":"{}List","apiVersion":"{}","metadata":{metadata},"items":["#,
            R::KIND.name(),
            R::KIND.api_version()
        )
        .as_bytes(),
    );
    for (i, obj) in chunk.items().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        serde_json::to_writer(&mut out, &object_json(obj?))
            .map_err(|e| ApiError::internal(format!("encode a list: {e}")))?;
    }
    out.extend_from_slice(b"]}");
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        out,
    )
        .into_response())
}

fn query_flag(q: &HashMap<String, String>, name: &str) -> bool {
    q.get(name)
        .is_some_and(|v| v == "1" || v == "true" || v.is_empty())
}

fn selectors(q: &HashMap<String, String>) -> ApiResult<(Selector, FieldSelector)> {
    let get = |name: &str| q.get(name).map_or("", String::as_str);
    crate::registry::parse_selectors(get("labelSelector"), get("fieldSelector"))
}

fn query_rv(q: &HashMap<String, String>) -> ApiResult<Option<i64>> {
    match q.get("resourceVersion").map(String::as_str) {
        None | Some("") => Ok(None),
        Some(v) => v
            .parse()
            .map(Some)
            .map_err(|_| ApiError::bad_request(format!("resourceVersion {v:?} must be a number"))),
    }
}

/// Fills in (or checks) the namespace of a body against the path's.
/// Kubernetes' `dryRun` parameter: absent, or `All`.
fn dry_run(values: &[&str]) -> ApiResult<bool> {
    match values {
        [] => Ok(false),
        ["All"] => Ok(true),
        [other, ..] => Err(ApiError::bad_request(format!(
            "dryRun: Unsupported value: \"{other}\": supported values: \"All\""
        ))),
    }
}

pub(crate) fn write_options(
    query: &HashMap<String, String>,
    headers: &HeaderMap,
    user: Option<&Arc<UserInfo>>,
) -> ApiResult<WriteOptions> {
    let given: Vec<&str> = query
        .get("dryRun")
        .map(String::as_str)
        .into_iter()
        .collect();
    Ok(WriteOptions {
        dry_run: dry_run(&given)?,
        field_manager: Some(field_manager(query, headers)?),
        user: user.cloned(),
    })
}

/// `fieldValidation`: what a write does with fields the server does not
/// know.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FieldValidation {
    Ignore,
    /// The default: a Warning header each.
    Warn,
    /// Refuse the request, naming them.
    Strict,
}

fn field_validation(query: &HashMap<String, String>) -> ApiResult<FieldValidation> {
    match query.get("fieldValidation").map(String::as_str) {
        None | Some("") | Some("Warn") => Ok(FieldValidation::Warn),
        Some("Ignore") => Ok(FieldValidation::Ignore),
        Some("Strict") => Ok(FieldValidation::Strict),
        Some(other) => Err(ApiError::bad_request(format!(
            "fieldValidation: Unsupported value: \"{other}\": supported values: \"Ignore\", \"Strict\", \"Warn\""
        ))),
    }
}

/// Paths skiff does not model that Kubernetes' own decoder also lets by
/// even when strict (`selfLink`, gone from objects since 1.20, still in
/// old `kubectl get -o yaml` output).
const TOLERATED: &[&str] = &["metadata.selfLink"];

/// The warnings a write sends, or, strict, its refusal. Strict holds
/// only for kinds whose every Kubernetes field skiff models (as OpenAPI
/// advertises): elsewhere a field skiff lacks may be a valid Kubernetes
/// field, and kubectl asks for Strict by default, so it stays a warning.
pub(crate) fn settle_unknown(
    kind: Kind,
    validation: FieldValidation,
    unknown: Vec<String>,
) -> ApiResult<Vec<String>> {
    let validation = match validation {
        FieldValidation::Strict if !skiff_api::openapi::strict_capable(kind) => {
            FieldValidation::Warn
        }
        v => v,
    };
    match validation {
        FieldValidation::Ignore => Ok(Vec::new()),
        FieldValidation::Warn => Ok(unknown),
        FieldValidation::Strict => {
            let refused: Vec<String> = unknown
                .iter()
                .filter(|p| !TOLERATED.contains(&p.as_str()))
                .map(|p| format!("unknown field \"{p}\""))
                .collect();
            if refused.is_empty() {
                return Ok(unknown);
            }
            Err(ApiError::bad_request(format!(
                "{kind} in version \"{}\" cannot be handled as a {kind}: strict decoding error: {}",
                kind.version(),
                refused.join(", ")
            )))
        }
    }
}

/// `fieldManager`, else the manager Kubernetes infers from the
/// User-Agent.
fn field_manager(query: &HashMap<String, String>, headers: &HeaderMap) -> ApiResult<String> {
    match query.get("fieldManager") {
        Some(m) if m.len() > 128 => Err(ApiError::bad_request(
            "fieldManager: Too long: may not be more than 128 bytes",
        )),
        Some(m) if !m.is_empty() => Ok(m.clone()),
        _ => Ok(crate::managed::from_user_agent(
            headers
                .get(header::USER_AGENT)
                .and_then(|v| v.to_str().ok())
                .unwrap_or(""),
        )),
    }
}

fn settle_namespace<R: Resource>(obj: &mut R, path_ns: &str) -> ApiResult<()> {
    if !R::KIND.namespaced() {
        return Ok(());
    }
    let meta = obj.meta_mut();
    if meta.namespace.is_empty() {
        meta.namespace = path_ns.to_string();
    } else if !path_ns.is_empty() && meta.namespace != path_ns {
        return Err(ApiError::bad_request(
            "the namespace of the provided object does not match the namespace sent on the request",
        ));
    }
    if meta.namespace.is_empty() {
        meta.namespace = "default".into();
    }
    Ok(())
}

pub(crate) fn check_name<R: Resource>(obj: &mut R, name: &str) -> ApiResult<()> {
    let meta = obj.meta_mut();
    if meta.name.is_empty() {
        meta.name = name.to_string();
    } else if meta.name != name {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({}) does not match the name on the URL ({name})",
            meta.name
        )));
    }
    Ok(())
}

pub async fn handle(
    State(state): State<Arc<AppState>>,
    user: Option<axum::Extension<Arc<UserInfo>>>,
    method: Method,
    uri: Uri,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let user = user.map(|axum::Extension(u)| u);
    let user = user.as_ref();
    let path = uri.path().trim_end_matches('/');
    if method == Method::GET
        && (path == "/api" || path == "/apis")
        && crate::discovery::wants_aggregated(
            headers
                .get(header::ACCEPT)
                .and_then(|v| v.to_str().ok())
                .unwrap_or(""),
        )
    {
        let body = crate::discovery::aggregated(path == "/api");
        return (
            [
                (header::CONTENT_TYPE, crate::discovery::AGGREGATED),
                (header::VARY, "Accept"),
            ],
            body.to_string(),
        )
            .into_response();
    }
    let target = match parse_path(uri.path()) {
        Ok(t) => t,
        Err(e) => return error_response(&e),
    };
    let (kind, namespace, name, sub) = match target {
        Target::Discovery(v) if method == Method::GET => {
            return json_response(StatusCode::OK, &v, &[]);
        }
        Target::Discovery(_) => {
            return error_response(&ApiError::method_not_allowed("discovery is read-only"));
        }
        Target::Resource {
            kind,
            namespace,
            name,
            sub,
        } => (kind, namespace, name, sub),
    };
    let verb = match (&method, &name) {
        (&Method::GET, None) if query_flag(&query, "watch") => "watch",
        (&Method::GET, None) => "list",
        (&Method::GET, Some(_)) => "get",
        (&Method::POST, None) => "create",
        (&Method::POST, Some(_)) if sub == Sub::Eviction => "create",
        (&Method::PUT, Some(_)) => "update",
        (&Method::PATCH, Some(_)) => "patch",
        (&Method::DELETE, Some(_)) => "delete",
        _ => {
            return error_response(&ApiError::method_not_allowed(format!(
                "{method} is not supported on {}",
                uri.path()
            )));
        }
    };
    let result = match (sub, name.as_deref()) {
        (Sub::Log, Some(name)) if verb == "get" => {
            crate::pods_proxy::rest_log(&state.registry, &state.nodes, &namespace, name, &query)
                .await
        }
        (Sub::Log, _) => Err(ApiError::method_not_allowed("pods/log is read-only")),
        (Sub::Eviction, Some(name)) => evict(&state.registry, &namespace, name, &body, user).await,
        (Sub::Eviction, None) => Err(ApiError::method_not_allowed("an eviction names its pod")),
        (Sub::Scale, Some(name)) => {
            crate::scale::handle(
                &state.registry,
                kind,
                verb,
                &namespace,
                name,
                (&query, &headers, user),
                &body,
            )
            .await
        }
        _ => with_resource!(kind, R => {
            dispatch::<R>(&state, verb, &namespace, name.as_deref(), sub == Sub::Status, (&query, &headers, user), &body).await
        }),
    };
    let code = match &result {
        Ok(r) => r.status().as_u16(),
        Err(e) => e.code,
    };
    state.metrics.request("rest", verb, kind, code);
    result.unwrap_or_else(|e| error_response(&e))
}

/// `POST .../pods/{name}/eviction`: a policy/v1 Eviction deletes the pod
/// with its deleteOptions (there are no PodDisruptionBudgets to refuse
/// it); the answer is a Success Status, as kube-apiserver's.
async fn evict(
    registry: &crate::registry::Registry,
    namespace: &str,
    name: &str,
    body: &[u8],
    user: Option<&Arc<UserInfo>>,
) -> ApiResult<Response> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("malformed Eviction: {e}")))?;
    match (
        v.get("apiVersion").and_then(Value::as_str),
        v.get("kind").and_then(Value::as_str),
    ) {
        (Some("policy/v1" | "policy/v1beta1") | None, Some("Eviction") | None) => {}
        (a, k) => {
            return Err(ApiError::bad_request(format!(
                "the body is a {} {}, but the path is for policy/v1 Eviction",
                a.unwrap_or(""),
                k.unwrap_or("")
            )));
        }
    }
    if let Some(n) = v.pointer("/metadata/name").and_then(Value::as_str)
        && n != name
    {
        return Err(ApiError::bad_request(format!(
            "name in URL does not match name in Eviction object: {name} != {n}"
        )));
    }
    let o = v.get("deleteOptions").cloned().unwrap_or(Value::Null);
    let dry: Vec<&str> = o
        .get("dryRun")
        .and_then(Value::as_array)
        .map(|l| l.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let opts = DeleteOptions {
        resource_version: o
            .pointer("/preconditions/resourceVersion")
            .and_then(Value::as_str)
            .and_then(|rv| rv.parse().ok()),
        grace_period_seconds: o.get("gracePeriodSeconds").and_then(Value::as_i64),
        propagation: Propagation::parse(
            o.get("propagationPolicy")
                .and_then(Value::as_str)
                .unwrap_or(""),
        )?,
        dry_run: dry_run(&dry)?,
        user: user.cloned(),
    };
    registry
        .delete::<skiff_api::v1::Pod>(namespace, name, &opts)
        .await?;
    Ok(json_response(
        StatusCode::CREATED,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
        &[],
    ))
}

/// A request's query, headers and caller.
pub(crate) type Parts<'a> = (
    &'a HashMap<String, String>,
    &'a HeaderMap,
    Option<&'a Arc<UserInfo>>,
);

async fn dispatch<R: Strategy>(
    state: &Arc<AppState>,
    verb: &str,
    namespace: &str,
    name: Option<&str>,
    status: bool,
    (query, headers, user): Parts<'_>,
    body: &[u8],
) -> ApiResult<Response> {
    let registry = &state.registry;
    let name = name.unwrap_or("");
    let shape = table::negotiate(headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()))?;
    let include = Include::parse(query.get("includeObject").map(String::as_str))?;
    match verb {
        "get" => {
            let obj = registry.get::<R>(namespace, name).await?;
            let body = match shape {
                Shape::Object => object_json(obj),
                Shape::Table(version) => {
                    let rv = obj.meta().resource_version.clone();
                    let obj = obj.into_object();
                    let json = obj.to_json();
                    table::table(R::KIND, [(&obj, json)], &rv, include, version)
                }
            };
            Ok(json_response(StatusCode::OK, &body, &[]))
        }
        "list" => {
            let (labels, fields) = selectors(query)?;
            let opts = ListOptions {
                namespace: namespace.to_string(),
                labels,
                fields,
            };
            let limit = match query.get("limit").map(String::as_str) {
                None | Some("") => 0,
                Some(l) => l.parse::<usize>().map_err(|_| {
                    ApiError::bad_request(format!(
                        "limit: Invalid value: {l:?}: must be a whole number, 0 or more"
                    ))
                })?,
            };
            let token = query.get("continue").map_or("", String::as_str);
            let chunk = if limit == 0 && token.is_empty() {
                registry.list_stored::<R>(&opts).await?
            } else {
                registry
                    .list_chunk::<R>(&opts, limit, token, crate::registry::CHUNK_BYTES)
                    .await?
            };
            let mut metadata = json!({"resourceVersion": chunk.revision.to_string()});
            if let Some(token) = &chunk.token {
                metadata["continue"] = json!(token);
            }
            if let Some(n) = chunk.remaining {
                metadata["remainingItemCount"] = json!(n);
            }
            match shape {
                Shape::Object => list_response(&chunk, &metadata),
                Shape::Table(version) => {
                    let objects: Vec<Object> = chunk
                        .items()
                        .map(|o| o.map(Resource::into_object))
                        .collect::<ApiResult<_>>()?;
                    let rows = objects.iter().map(|o| (o, o.to_json()));
                    let mut body =
                        table::table(R::KIND, rows, &chunk.revision.to_string(), include, version);
                    body["metadata"] = metadata;
                    Ok(json_response(StatusCode::OK, &body, &[]))
                }
            }
        }
        "watch" => watch::<R>(state, namespace, query, shape, include).await,
        "create" => {
            let (mut obj, warnings) = read_body::<R>(headers, body)?;
            let warnings = settle_unknown(R::KIND, field_validation(query)?, warnings)?;
            settle_namespace(&mut obj, namespace)?;
            let created = registry
                .create(obj, write_options(query, headers, user)?)
                .await?;
            Ok(json_response(
                StatusCode::CREATED,
                &object_json(created),
                &warnings,
            ))
        }
        "update" => {
            let (mut obj, warnings) = read_body::<R>(headers, body)?;
            let warnings = settle_unknown(R::KIND, field_validation(query)?, warnings)?;
            settle_namespace(&mut obj, namespace)?;
            check_name(&mut obj, name)?;
            let updated = registry
                .update(obj, status, write_options(query, headers, user)?)
                .await?;
            Ok(json_response(
                StatusCode::OK,
                &object_json(updated),
                &warnings,
            ))
        }
        "patch" => {
            let content_type = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            let patch = Patch::parse(content_type, body)?;
            let schema = skiff_api::patch::schema::of(R::KIND);
            let opts = write_options(query, headers, user)?;
            let validation = field_validation(query)?;
            if let Patch::Apply(config) = patch {
                // What the configuration names that no field is.
                let unknown = Object::from_json(config.clone())
                    .map(|(_, w)| w)
                    .unwrap_or_default();
                let warnings = settle_unknown(R::KIND, validation, unknown)?;
                if status {
                    return Err(ApiError::unsupported_media(
                        "server-side apply of the status subresource is not supported",
                    ));
                }
                let (obj, created) = crate::apply::apply::<R>(
                    registry,
                    crate::apply::Apply {
                        namespace,
                        name,
                        config,
                        // Apply needs the parameter; no User-Agent default.
                        manager: query.get("fieldManager").map(String::as_str).unwrap_or(""),
                        force: query_flag(query, "force"),
                        dry_run: opts.dry_run,
                        user: user.cloned(),
                    },
                )
                .await?;
                let code = if created {
                    StatusCode::CREATED
                } else {
                    StatusCode::OK
                };
                return Ok(json_response(code, &object_json(obj), &warnings));
            }
            // A patch applies to the current object; without a
            // resourceVersion in the patch a lost race is retried.
            for _ in 0..8 {
                let cur = registry.get::<R>(namespace, name).await?;
                let value = patch.apply(schema, object_json(cur))?;
                let (obj, warnings) = Object::from_json(value).map_err(|e| {
                    ApiError::unprocessable(format!("the patch gives a malformed {}: {e}", R::KIND))
                })?;
                let warnings = settle_unknown(R::KIND, validation, warnings)?;
                let mut obj = R::from_object(obj)
                    .ok_or_else(|| ApiError::bad_request("the patch may not change the kind"))?;
                check_name(&mut obj, name)?;
                match registry.update(obj, status, opts.clone()).await {
                    Err(e) if e.reason == "Conflict" && !patch.names_resource_version() => {
                        continue;
                    }
                    r => return Ok(json_response(StatusCode::OK, &object_json(r?), &warnings)),
                }
            }
            Err(ApiError::conflict(R::KIND, name))
        }
        "delete" => {
            let mut opts = DeleteOptions {
                resource_version: None,
                grace_period_seconds: query.get("gracePeriodSeconds").and_then(|g| g.parse().ok()),
                propagation: Propagation::parse(
                    query
                        .get("propagationPolicy")
                        .map(String::as_str)
                        .unwrap_or(""),
                )?,
                dry_run: write_options(query, headers, user)?.dry_run,
                user: user.cloned(),
            };
            if !body.is_empty()
                && let Ok(v) = serde_json::from_slice::<Value>(body)
            {
                if let Some(p) = v.get("propagationPolicy").and_then(Value::as_str) {
                    opts.propagation = Propagation::parse(p)?;
                }
                if v.get("orphanDependents").and_then(Value::as_bool) == Some(true) {
                    opts.propagation = Propagation::Orphan;
                }
                if let Some(g) = v.get("gracePeriodSeconds").and_then(Value::as_i64) {
                    opts.grace_period_seconds = Some(g);
                }
                if let Some(rv) = v
                    .pointer("/preconditions/resourceVersion")
                    .and_then(Value::as_str)
                {
                    opts.resource_version = rv.parse().ok();
                }
                // kubectl sends DeleteOptions' dryRun in the body.
                if let Some(list) = v.get("dryRun").and_then(Value::as_array) {
                    let given: Vec<&str> = list.iter().filter_map(Value::as_str).collect();
                    opts.dry_run |= dry_run(&given)?;
                }
            }
            let (obj, gone) = registry.delete::<R>(namespace, name, &opts).await?;
            let code = if gone {
                StatusCode::OK
            } else {
                StatusCode::ACCEPTED
            };
            Ok(json_response(code, &object_json(obj), &[]))
        }
        _ => Err(ApiError::method_not_allowed(verb.to_string())),
    }
}

async fn watch<R: Resource>(
    state: &Arc<AppState>,
    namespace: &str,
    query: &HashMap<String, String>,
    shape: Shape,
    include: Include,
) -> ApiResult<Response> {
    if query.get("sendInitialEvents").is_some_and(|v| v == "true") {
        // Watch-list is not implemented: kubectl falls back to list+watch.
        return Err(ApiError::unprocessable(
            "sendInitialEvents: Forbidden: sendInitialEvents is not supported by this server (watch-list); list, then watch",
        ));
    }
    let (labels, fields) = selectors(query)?;
    let filter = Filter {
        kind: R::KIND,
        namespace: namespace.to_string(),
        labels,
        fields,
    };
    let timeout = match query.get("timeoutSeconds").map(String::as_str) {
        None | Some("") => None,
        Some(t) => Some(t.parse::<i64>().map_err(|_| {
            ApiError::bad_request(format!(
                "timeoutSeconds: Invalid value: {t:?}: must be a whole number of seconds"
            ))
        })?),
    };
    let params = WatchParams {
        bookmarks: query
            .get("allowWatchBookmarks")
            .is_some_and(|v| v == "true"),
        timeout: watch_timeout(timeout)?,
    };
    let events = state
        .registry
        .watch(filter, query_rv(query)?, params)
        .await?;
    let guard = state.metrics.watcher();
    let lines = events.map(move |item| {
        let _held = &guard;
        // The object's JSON is rendered once for all watchers; a Table of
        // its one row per watcher that asks for one.
        let (t, object) = match item {
            Ok(Watched::Event(t, obj)) => match shape {
                Shape::Object => (t.as_str(), obj.json()),
                Shape::Table(version) => {
                    let o = &obj.object;
                    let rv = o.meta().resource_version.clone();
                    let t_json = table::table(R::KIND, [(o, o.to_json())], &rv, include, version);
                    (t.as_str(), Bytes::from(t_json.to_string()))
                }
            },
            // An object of the kind with only its resourceVersion, as
            // kube-apiserver sends.
            Ok(Watched::Bookmark(rv)) => (
                "BOOKMARK",
                Bytes::from(
                    json!({
                        "kind": R::KIND.name(),
                        "apiVersion": R::KIND.api_version(),
                        "metadata": {"resourceVersion": rv.to_string()},
                    })
                    .to_string(),
                ),
            ),
            Err(e) => ("ERROR", Bytes::from(e.to_status().to_string())),
        };
        let mut line = Vec::with_capacity(object.len() + 32);
        line.extend_from_slice(format!("{{\"type\":\"{t}\",\"object\":").as_bytes());
        line.extend_from_slice(&object);
        line.extend_from_slice(b"}\n");
        Ok::<_, Infallible>(Bytes::from(line))
    });
    let body = Body::from_stream(lines);
    Ok(Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::TRANSFER_ENCODING, "chunked")
        .body(body)
        .expect("static response parts"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res(path: &str) -> (Kind, String, Option<String>, bool) {
        match parse_path(path).unwrap() {
            Target::Resource {
                kind,
                namespace,
                name,
                sub,
            } => (kind, namespace, name, sub == Sub::Status),
            Target::Discovery(_) => panic!("{path} is not a resource"),
        }
    }

    #[test]
    fn field_validation_refuses_warns_or_ignores() {
        let q = |v: &str| HashMap::from([("fieldValidation".to_string(), v.to_string())]);
        assert_eq!(
            field_validation(&HashMap::new()).unwrap(),
            FieldValidation::Warn
        );
        assert!(
            field_validation(&q("strict")).is_err(),
            "values are case-sensitive"
        );
        let unknown = || vec!["datta".to_string()];
        let strict = field_validation(&q("Strict")).unwrap();
        let e = settle_unknown(Kind::ConfigMap, strict, unknown()).unwrap_err();
        assert_eq!(e.code, 400);
        assert!(
            e.message
                .ends_with("strict decoding error: unknown field \"datta\""),
            "{}",
            e.message
        );
        assert_eq!(
            settle_unknown(Kind::Pod, strict, unknown()).unwrap(),
            unknown(),
            "a kind skiff models in part only warns"
        );
        assert_eq!(
            settle_unknown(Kind::ConfigMap, strict, vec!["metadata.selfLink".into()])
                .unwrap()
                .len(),
            1
        );
        assert!(
            settle_unknown(Kind::ConfigMap, FieldValidation::Ignore, unknown())
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn warnings_are_rfc7234_quoted_strings() {
        let resp = json_response(StatusCode::OK, &json!({}), &["spec.x\"y".to_string()]);
        let w: Vec<&str> = resp
            .headers()
            .get_all(header::WARNING)
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect();
        assert_eq!(w, [r#"299 - "unknown field \"spec.x\"y\"""#]);
    }

    #[test]
    fn kubernetes_paths() {
        assert_eq!(
            res("/api/v1/namespaces/default/pods"),
            (Kind::Pod, "default".into(), None, false)
        );
        assert_eq!(
            res("/api/v1/namespaces/default/pods/web/status"),
            (Kind::Pod, "default".into(), Some("web".into()), true)
        );
        assert_eq!(res("/api/v1/pods"), (Kind::Pod, "".into(), None, false));
        assert_eq!(
            res("/api/v1/nodes/n1"),
            (Kind::Node, "".into(), Some("n1".into()), false)
        );
        assert_eq!(
            res("/api/v1/namespaces/kube-system"),
            (
                Kind::Namespace,
                "".into(),
                Some("kube-system".into()),
                false
            )
        );
        assert_eq!(
            res("/api/v1/namespaces/x/status"),
            (Kind::Namespace, "".into(), Some("x".into()), true)
        );
        assert_eq!(
            res("/apis/apps/v1/namespaces/a/deployments/d"),
            (Kind::Deployment, "a".into(), Some("d".into()), false)
        );
        assert_eq!(
            res("/apis/discovery.k8s.io/v1/endpointslices"),
            (Kind::EndpointSlice, "".into(), None, false)
        );
        for bad in [
            "/api/v2/pods",
            "/api/v1/pods/x",
            "/apis/apps/v1/namespaces/a/pods",
            "/api/v1/gadgets",
            "/api/v1/namespaces/a/pods/p/scale",
            "/api/v1/configmaps/x/status",
        ] {
            assert!(parse_path(bad).is_err(), "{bad}");
        }
        assert!(matches!(parse_path("/apis").unwrap(), Target::Discovery(_)));
    }
}
