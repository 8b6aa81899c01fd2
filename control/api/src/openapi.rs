//! The OpenAPI v3 documents kube-apiserver serves at `/openapi/v3`,
//! derived from the .proto descriptors (their comments become the
//! descriptions): one document per group-version with its kinds' paths and
//! the schemas they reach, named as Kubernetes names them
//! (`io.k8s.api.core.v1.PodSpec`), each kind's schema carrying
//! `x-kubernetes-group-version-kind`. `kubectl explain` reads them; the
//! PATCH operations list the query parameters served, `fieldValidation`
//! only on kinds whose every Kubernetes field skiff models (elsewhere a
//! field skiff lacks may be a valid Kubernetes field: a warning, not an
//! error).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::OnceLock;

use prost::Message;
use prost_types::field_descriptor_proto::{Label, Type};
use prost_types::{DescriptorProto, FieldDescriptorProto, FileDescriptorSet};
use serde_json::{Map, Value, json};

use crate::Kind;

/// The descriptors build.rs compiled (with their comments).
const DESCRIPTORS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/skiff.fds"));
const TYPES_FILE: &str = "skiff/v1/types.proto";
const PACKAGE_PREFIX: &str = ".skiff.v1.";
const META: &str = "io.k8s.apimachinery.pkg.apis.meta.v1";

/// Types apimachinery defines, not an API group.
fn apimachinery(message: &str) -> Option<String> {
    Some(match message {
        "ObjectMeta"
        | "OwnerReference"
        | "ManagedFieldsEntry"
        | "FieldsV1"
        | "Time"
        | "LabelSelector"
        | "LabelSelectorRequirement"
        | "Condition" => {
            format!("{META}.{message}")
        }
        "Quantity" => "io.k8s.apimachinery.pkg.api.resource.Quantity".into(),
        "IntOrString" => "io.k8s.apimachinery.pkg.util.intstr.IntOrString".into(),
        _ => return None,
    })
}

/// `core` for the legacy group, else the group's first label.
fn group_package(group: &str) -> &str {
    if group.is_empty() {
        "core"
    } else {
        group.split('.').next().unwrap_or(group)
    }
}

/// The URL path of a group-version's document, as `/openapi/v3` lists it.
pub fn group_version_path(group: &str) -> String {
    if group.is_empty() {
        "api/v1".into()
    } else {
        format!("apis/{group}/v1")
    }
}

/// The group-versions served, by document path.
pub fn group_versions() -> Vec<(String, &'static str)> {
    let mut seen = BTreeSet::new();
    Kind::ALL
        .iter()
        .map(|k| k.group())
        .filter(|g| seen.insert(*g))
        .map(|g| (group_version_path(g), g))
        .collect()
}

struct Model {
    /// Full schema name → schema.
    schemas: BTreeMap<String, Value>,
    /// Message name → full schema name.
    names: HashMap<String, String>,
}

fn model() -> &'static Model {
    static MODEL: OnceLock<Model> = OnceLock::new();
    MODEL.get_or_init(|| {
        let fds = FileDescriptorSet::decode(DESCRIPTORS).expect("build.rs wrote the descriptors");
        let file = fds
            .file
            .into_iter()
            .find(|f| f.name() == TYPES_FILE)
            .expect("types.proto is compiled");
        build(&file)
    })
}

/// Comments of messages (`[4, i]`) and fields (`[4, i, 2, j]`).
fn comments(file: &prost_types::FileDescriptorProto) -> HashMap<Vec<i32>, String> {
    let mut out = HashMap::new();
    for loc in file.source_code_info.iter().flat_map(|s| s.location.iter()) {
        let text = loc.leading_comments();
        if text.trim().is_empty() {
            continue;
        }
        let joined = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join(" ");
        out.insert(loc.path.clone(), joined);
    }
    out
}

fn short(type_name: &str) -> &str {
    type_name.strip_prefix(PACKAGE_PREFIX).unwrap_or(type_name)
}

/// The message types a message's fields name (map values included).
fn referenced<'a>(msg: &'a DescriptorProto) -> impl Iterator<Item = &'a str> + 'a {
    msg.field.iter().filter_map(move |f| {
        if f.r#type() != Type::Message {
            return None;
        }
        match map_entry(msg, f) {
            Some(entry) => entry
                .field
                .iter()
                .find(|v| v.number() == 2)
                .filter(|v| v.r#type() == Type::Message)
                .map(|v| short(v.type_name())),
            None => Some(short(f.type_name())),
        }
    })
}

fn map_entry<'a>(
    msg: &'a DescriptorProto,
    f: &FieldDescriptorProto,
) -> Option<&'a DescriptorProto> {
    let name = f.type_name().rsplit('.').next()?;
    msg.nested_type
        .iter()
        .find(|n| n.name() == name && n.options.as_ref().is_some_and(|o| o.map_entry()))
}

fn build(file: &prost_types::FileDescriptorProto) -> Model {
    let by_name: HashMap<&str, (usize, &DescriptorProto)> = file
        .message_type
        .iter()
        .enumerate()
        .map(|(i, m)| (m.name(), (i, m)))
        .collect();
    // A message belongs to the group of the first kind that reaches it.
    let mut names: HashMap<String, String> = HashMap::new();
    for kind in Kind::ALL {
        let mut queue = VecDeque::from([kind.name()]);
        while let Some(m) = queue.pop_front() {
            if names.contains_key(m) {
                continue;
            }
            let Some((_, desc)) = by_name.get(m) else {
                continue;
            };
            // core/v1 defines the pod template the apps kinds embed.
            let group = if m == "PodTemplateSpec" {
                ""
            } else {
                kind.group()
            };
            let full = apimachinery(m)
                .unwrap_or_else(|| format!("io.k8s.api.{}.v1.{m}", group_package(group)));
            names.insert(m.to_string(), full);
            queue.extend(referenced(desc));
        }
    }
    let notes = comments(file);
    let mut schemas = BTreeMap::new();
    for (m, full) in &names {
        let (i, desc) = by_name[m.as_str()];
        let mut schema = message_schema(desc, i as i32, &notes, &names);
        if let Some(kind) = Kind::from_name(m) {
            schema["x-kubernetes-group-version-kind"] = json!([gvk(kind, kind.name())]);
            let common = [
                (
                    "apiVersion",
                    "The versioned schema of this representation of an object (v1, apps/v1).",
                ),
                ("kind", "The kind of object this is (Pod, Service)."),
                (
                    "metadata",
                    "The object's name, namespace, labels and annotations, and what the server records about it.",
                ),
            ];
            for (field, text) in common {
                if let Some(p) = schema["properties"].get_mut(field)
                    && p.get("description").is_none()
                {
                    p["description"] = json!(text);
                }
            }
        }
        schemas.insert(full.clone(), schema);
    }
    schemas.insert(
        format!("{META}.ListMeta"),
        json!({
            "description": "What a list carries besides its items: the revision it was read at, and where the next page starts.",
            "type": "object",
            "properties": {
                "resourceVersion": {"type": "string", "description": "The store revision the list was read at; a watch from it misses nothing."},
                "continue": {"type": "string", "description": "Set when more items remain: pass it as `continue` to read the next page."},
                "remainingItemCount": {"type": "integer", "format": "int64", "description": "How many items the next pages hold, when known."},
            },
        }),
    );
    schemas.insert(
        format!("{META}.Patch"),
        json!({"description": "A patch: its form is given by the request's Content-Type.", "type": "object"}),
    );
    for kind in Kind::ALL {
        let item = &names[kind.name()];
        let list = list_name(item);
        schemas.insert(
            list,
            json!({
                "description": format!("A list of {}.", kind.plural()),
                "type": "object",
                "required": ["items"],
                "properties": {
                    "apiVersion": {"type": "string", "description": "The versioned schema of this representation of an object."},
                    "kind": {"type": "string", "description": "The REST resource this object represents."},
                    "metadata": {"allOf": [reference(&format!("{META}.ListMeta"))], "default": {}},
                    "items": {"type": "array", "items": {"allOf": [reference(item)], "default": {}}},
                },
                "x-kubernetes-group-version-kind": [gvk(kind, &format!("{}List", kind.name()))],
            }),
        );
    }
    Model { schemas, names }
}

fn list_name(item: &str) -> String {
    format!("{item}List")
}

fn gvk(kind: Kind, name: &str) -> Value {
    json!({"group": kind.group(), "version": kind.version(), "kind": name})
}

fn reference(full: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{full}")})
}

fn message_schema(
    desc: &DescriptorProto,
    index: i32,
    notes: &HashMap<Vec<i32>, String>,
    names: &HashMap<String, String>,
) -> Value {
    let described = |mut v: Value, path: &[i32]| {
        if let Some(d) = notes.get(path) {
            v["description"] = json!(d);
        }
        v
    };
    // The hand-written JSON forms (`wire.rs`).
    let special = match desc.name() {
        "Time" => Some(json!({"type": "string", "format": "date-time",
            "description": "A time in RFC 3339 form, to the second (2026-01-02T15:04:05Z)."})),
        "Quantity" => Some(json!({"oneOf": [{"type": "string"}, {"type": "number"}],
            "description": "A quantity with an optional suffix: 250m (thousandths), 64Mi (binary), 1G (decimal), 2."})),
        "IntOrString" => Some(
            json!({"format": "int-or-string", "oneOf": [{"type": "integer"}, {"type": "string"}],
            "x-kubernetes-int-or-string": true,
            "description": "A number or a string: a port number or name, a count or a percentage."}),
        ),
        "FieldsV1" => Some(json!({"type": "object",
            "description": "A set of fields, as managedFields records them (f:name, k:{\"key\":\"value\"}, v:value, .)."})),
        _ => None,
    };
    if let Some(s) = special {
        return s;
    }
    let mut props = Map::new();
    for (j, f) in desc.field.iter().enumerate() {
        let schema = field_schema(desc, f, names);
        props.insert(
            f.json_name().to_string(),
            described(schema, &[4, index, 2, j as i32]),
        );
    }
    described(json!({"type": "object", "properties": props}), &[4, index])
}

fn scalar(t: Type) -> Value {
    match t {
        Type::Bool => json!({"type": "boolean"}),
        Type::Int32 | Type::Sint32 | Type::Sfixed32 | Type::Uint32 | Type::Fixed32 => {
            json!({"type": "integer", "format": "int32"})
        }
        Type::Int64 | Type::Sint64 | Type::Sfixed64 | Type::Uint64 | Type::Fixed64 => {
            json!({"type": "integer", "format": "int64"})
        }
        Type::Double | Type::Float => json!({"type": "number", "format": "double"}),
        Type::Bytes => json!({"type": "string", "format": "byte"}),
        _ => json!({"type": "string"}),
    }
}

fn field_schema(
    msg: &DescriptorProto,
    f: &FieldDescriptorProto,
    names: &HashMap<String, String>,
) -> Value {
    let one = |f: &FieldDescriptorProto| -> Value {
        if f.r#type() == Type::Message {
            let full = names
                .get(short(f.type_name()))
                .cloned()
                .unwrap_or_else(|| short(f.type_name()).to_string());
            json!({"allOf": [reference(&full)], "default": {}})
        } else {
            scalar(f.r#type())
        }
    };
    if f.r#type() == Type::Message
        && let Some(entry) = map_entry(msg, f)
    {
        let value = entry
            .field
            .iter()
            .find(|v| v.number() == 2)
            .map(one)
            .unwrap_or_else(|| json!({"type": "string"}));
        return json!({"type": "object", "additionalProperties": value});
    }
    if f.label() == Label::Repeated {
        return json!({"type": "array", "items": one(f)});
    }
    one(f)
}

/// Whether skiff models every field Kubernetes has for `kind`, so that
/// `fieldValidation=Strict` may refuse whatever it does not know.
pub fn strict_capable(kind: Kind) -> bool {
    matches!(
        kind,
        Kind::ConfigMap
            | Kind::Namespace
            | Kind::ServiceAccount
            | Kind::Endpoints
            | Kind::Role
            | Kind::RoleBinding
            | Kind::ClusterRoleBinding
            | Kind::Secret
    )
}

/// The full schema name of a kind.
pub fn schema_name(kind: Kind) -> &'static str {
    &model().names[kind.name()]
}

/// `/openapi/v3`: each group-version's document, at a URL carrying its
/// hash so clients may cache it for good.
pub fn root() -> Value {
    let paths: Map<String, Value> = group_versions()
        .into_iter()
        .map(|(path, _)| {
            let url = format!(
                "/openapi/v3/{path}?hash={}",
                document_hash(&path).unwrap_or_default()
            );
            (path, json!({"serverRelativeURL": url}))
        })
        .collect();
    json!({"paths": paths})
}

/// The document at `/openapi/v3/{path}` (`api/v1`, `apis/apps/v1`),
/// serialized once.
pub fn document(path: &str) -> Option<&'static str> {
    documents().get(path).map(|d| d.text.as_str())
}

/// A stable digest of a document (the cache key of its URL), computed
/// with it.
pub fn document_hash(path: &str) -> Option<&'static str> {
    documents().get(path).map(|d| d.hash.as_str())
}

struct Document {
    text: String,
    hash: String,
}

fn documents() -> &'static BTreeMap<String, Document> {
    static DOCS: OnceLock<BTreeMap<String, Document>> = OnceLock::new();
    DOCS.get_or_init(|| {
        group_versions()
            .into_iter()
            .map(|(path, group)| {
                let text = group_document(group).to_string();
                // FNV-1a, 64 bits: stable across builds and runs.
                let mut h: u64 = 0xcbf2_9ce4_8422_2325;
                for b in text.as_bytes() {
                    h ^= u64::from(*b);
                    h = h.wrapping_mul(0x0100_0000_01b3);
                }
                let hash = format!("{h:016X}");
                (path, Document { text, hash })
            })
            .collect()
    })
}

fn group_document(group: &str) -> Value {
    let m = model();
    let kinds: Vec<Kind> = Kind::ALL
        .into_iter()
        .filter(|k| k.group() == group)
        .collect();
    let mut paths = Map::new();
    for &kind in &kinds {
        for (path, item) in kind_paths(kind) {
            paths.insert(path, item);
        }
    }
    // The schemas the paths reach, and what those reach.
    let mut wanted: BTreeSet<String> = BTreeSet::new();
    let mut queue: Vec<String> = Vec::new();
    collect_refs(&Value::Object(paths.clone()), &mut queue);
    while let Some(name) = queue.pop() {
        if !wanted.insert(name.clone()) {
            continue;
        }
        if let Some(s) = m.schemas.get(&name) {
            collect_refs(s, &mut queue);
        }
    }
    let schemas: Map<String, Value> = wanted
        .into_iter()
        .filter_map(|n| m.schemas.get(&n).map(|s| (n, s.clone())))
        .collect();
    json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "v1.32.0"},
        "paths": paths,
        "components": {"schemas": schemas},
    })
}

fn collect_refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            for (k, x) in map {
                if k == "$ref"
                    && let Some(name) = x
                        .as_str()
                        .and_then(|r| r.strip_prefix("#/components/schemas/"))
                {
                    out.push(name.to_string());
                } else {
                    collect_refs(x, out);
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| collect_refs(x, out)),
        _ => {}
    }
}

fn query_param(name: &str, description: &str, kind: &str) -> Value {
    json!({"name": name, "in": "query", "description": description,
        "schema": {"type": kind}, "uniqueItems": true})
}

fn path_param(name: &str, description: &str) -> Value {
    json!({"name": name, "in": "path", "required": true, "description": description,
        "schema": {"type": "string"}, "uniqueItems": true})
}

fn operation(
    kind: Kind,
    action: &str,
    id: String,
    params: Vec<Value>,
    body: Option<Value>,
    response: &str,
    codes: &[&str],
) -> Value {
    let content = json!({"application/json": {"schema": reference(response)},
        "application/yaml": {"schema": reference(response)}});
    let responses: Map<String, Value> = codes
        .iter()
        .map(|c| (c.to_string(), json!({"description": if *c == "201" { "Created" } else if *c == "202" { "Accepted" } else { "OK" }, "content": content.clone()})))
        .collect();
    let mut op = json!({
        "operationId": id,
        "tags": [format!("{}_v1", group_package(kind.group()))],
        "parameters": params,
        "responses": responses,
        "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": gvk(kind, kind.name()),
    });
    if let Some(b) = body {
        op["requestBody"] = b;
    }
    op
}

/// The paths of a kind: its collection (and, namespaced, the collection
/// across namespaces), each object, and its status.
fn kind_paths(kind: Kind) -> Vec<(String, Value)> {
    let item = schema_name(kind);
    let list = list_name(item);
    let base = format!("/{}", group_version_path(kind.group()));
    let scoped = if kind.namespaced() {
        format!("{base}/namespaces/{{namespace}}/{}", kind.plural())
    } else {
        format!("{base}/{}", kind.plural())
    };
    let id = |verb: &str, suffix: &str| {
        let g = group_package(kind.group());
        let mut g = g.to_string();
        if let Some(c) = g.get_mut(0..1) {
            c.make_ascii_uppercase();
        }
        let ns = if kind.namespaced() && verb != "listForAllNamespaces" {
            "Namespaced"
        } else {
            ""
        };
        match verb {
            "listForAllNamespaces" => format!("list{g}V1{}ForAllNamespaces", kind.name()),
            v => format!("{v}{g}V1{ns}{}{suffix}", kind.name()),
        }
    };
    let dry_run = query_param("dryRun", "All: check everything, write nothing.", "string");
    let manager = query_param(
        "fieldManager",
        "The manager the change is recorded under in managedFields.",
        "string",
    );
    let pretty = query_param("pretty", "Indent the output.", "string");
    let mut write = vec![dry_run, manager];
    if strict_capable(kind) {
        write.push(query_param(
            "fieldValidation",
            "What to do with fields the server does not know: Ignore, Warn (the default: a Warning header each) or Strict (refuse the request, naming them).",
            "string",
        ));
    }
    let mut patch_params = write.clone();
    patch_params.push(query_param(
        "force",
        "Server-side apply: take fields other managers own.",
        "boolean",
    ));
    let list_params: Vec<Value> = [
        (
            "labelSelector",
            "Only objects with these labels (app=web,tier!=db).",
            "string",
        ),
        (
            "fieldSelector",
            "Only objects with these field values (spec.nodeName=n1).",
            "string",
        ),
        (
            "limit",
            "At most this many items; continue reads the rest.",
            "integer",
        ),
        ("continue", "Where the previous page ended.", "string"),
        (
            "resourceVersion",
            "Read at (or, watching, from) this revision.",
            "string",
        ),
        ("watch", "Stream changes instead of listing.", "boolean"),
        (
            "timeoutSeconds",
            "End the list or watch after this long.",
            "integer",
        ),
    ]
    .iter()
    .map(|(n, d, t)| query_param(n, d, t))
    .collect();
    let body =
        |schema: &str| json!({"content": {"*/*": {"schema": reference(schema)}}, "required": true});
    let patch_types: Map<String, Value> = [
        "application/apply-patch+yaml",
        "application/json-patch+json",
        "application/merge-patch+json",
        "application/strategic-merge-patch+json",
    ]
    .iter()
    .map(|t| {
        let schema = json!({"schema": reference(&format!("{META}.Patch"))});
        (t.to_string(), schema)
    })
    .collect();
    let patch_body = json!({"content": patch_types, "required": true});
    let mut scope_params = vec![pretty.clone()];
    if kind.namespaced() {
        scope_params.push(path_param("namespace", "The object's namespace."));
    }
    let mut named = scope_params.clone();
    named.push(path_param("name", &format!("The {}'s name.", kind.name())));
    let mut out = vec![(
        scoped.clone(),
        json!({
            "parameters": scope_params,
            "get": operation(kind, "list", id("list", ""), list_params.clone(), None, &list, &["200"]),
            "post": operation(kind, "post", id("create", ""), write.clone(), Some(body(item)), item, &["200", "201", "202"]),
        }),
    )];
    if kind.namespaced() {
        out.push((
            format!("{base}/{}", kind.plural()),
            json!({
                "parameters": [pretty],
                "get": operation(kind, "list", id("listForAllNamespaces", ""), list_params, None, &list, &["200"]),
            }),
        ));
    }
    out.push((
        format!("{scoped}/{{name}}"),
        json!({
            "parameters": named.clone(),
            "get": operation(kind, "get", id("read", ""), vec![], None, item, &["200"]),
            "put": operation(kind, "put", id("replace", ""), write.clone(), Some(body(item)), item, &["200", "201"]),
            "patch": operation(kind, "patch", id("patch", ""), patch_params.clone(), Some(patch_body.clone()), item, &["200", "201"]),
            "delete": operation(kind, "delete", id("delete", ""), vec![
                query_param("dryRun", "All: check everything, delete nothing.", "string"),
                query_param("gracePeriodSeconds", "How long the object may take to go.", "integer"),
                query_param("propagationPolicy", "Orphan, Background or Foreground: what happens to dependents.", "string"),
            ], None, item, &["200", "202"]),
        }),
    ));
    if kind.has_status() {
        out.push((
            format!("{scoped}/{{name}}/status"),
            json!({
                "parameters": named,
                "get": operation(kind, "get", id("read", "Status"), vec![], None, item, &["200"]),
                "put": operation(kind, "put", id("replace", "Status"), write, Some(body(item)), item, &["200", "201"]),
                "patch": operation(kind, "patch", id("patch", "Status"), patch_params, Some(patch_body), item, &["200", "201"]),
            }),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(path: &str) -> Value {
        serde_json::from_str(document(path).expect("a document")).unwrap()
    }

    #[test]
    fn every_group_version_has_a_document_listed_with_its_hash() {
        let root = root();
        let paths = root["paths"].as_object().unwrap();
        assert_eq!(paths.len(), group_versions().len());
        for (path, entry) in paths {
            let url = entry["serverRelativeURL"].as_str().unwrap();
            assert!(
                url.starts_with(&format!("/openapi/v3/{path}?hash=")),
                "{url}"
            );
            assert!(document(path).is_some());
        }
        assert!(paths.contains_key("api/v1") && paths.contains_key("apis/apps/v1"));
    }

    #[test]
    fn kinds_have_their_gvk_and_fields_by_json_name_with_descriptions() {
        let d = doc("api/v1");
        let schemas = &d["components"]["schemas"];
        let pod = &schemas["io.k8s.api.core.v1.Pod"];
        assert_eq!(
            pod["x-kubernetes-group-version-kind"],
            json!([{"group": "", "version": "v1", "kind": "Pod"}])
        );
        assert_eq!(
            pod["properties"]["spec"]["allOf"][0]["$ref"],
            "#/components/schemas/io.k8s.api.core.v1.PodSpec"
        );
        let spec = &schemas["io.k8s.api.core.v1.PodSpec"]["properties"];
        assert_eq!(spec["containers"]["type"], "array");
        assert_eq!(
            spec["containers"]["items"]["allOf"][0]["$ref"],
            "#/components/schemas/io.k8s.api.core.v1.Container"
        );
        assert_eq!(
            spec["nodeSelector"]["additionalProperties"]["type"],
            "string"
        );
        assert_eq!(spec["terminationGracePeriodSeconds"]["format"], "int64");
        assert!(
            spec["containers"]["description"]
                .as_str()
                .is_some_and(|d| !d.is_empty()),
            "proto comments become descriptions: {}",
            spec["containers"]
        );
        let meta = &schemas["io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"];
        assert_eq!(meta["properties"]["ownerReferences"]["type"], "array");
        assert_eq!(
            schemas["io.k8s.apimachinery.pkg.apis.meta.v1.Time"]["format"],
            "date-time"
        );
        assert!(
            schemas.get("io.k8s.api.apps.v1.Deployment").is_none(),
            "apps has its own document"
        );
        let apps = doc("apis/apps/v1");
        assert!(apps["components"]["schemas"]["io.k8s.api.apps.v1.DeploymentSpec"].is_object());
        assert!(
            apps["components"]["schemas"]["io.k8s.api.core.v1.PodTemplateSpec"].is_object(),
            "schemas another group defines travel with the document that reaches them"
        );
    }

    #[test]
    fn every_reference_resolves_within_its_document() {
        for (path, _) in group_versions() {
            let d = doc(&path);
            let mut refs = Vec::new();
            collect_refs(&d, &mut refs);
            for r in refs {
                assert!(d["components"]["schemas"].get(&r).is_some(), "{path}: {r}");
            }
        }
    }

    #[test]
    fn patch_operations_advertise_field_validation_only_where_strict_is_exact() {
        let d = doc("api/v1");
        let patch = |p: &str| -> Vec<String> {
            d["paths"][p]["patch"]["parameters"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x["name"].as_str().unwrap().to_string())
                .collect()
        };
        let cm = patch("/api/v1/namespaces/{namespace}/configmaps/{name}");
        assert!(cm.contains(&"fieldValidation".to_string()) && cm.contains(&"force".to_string()));
        let pod = patch("/api/v1/namespaces/{namespace}/pods/{name}");
        assert!(!pod.contains(&"fieldValidation".to_string()), "{pod:?}");
        assert_eq!(
            d["paths"]["/api/v1/namespaces/{namespace}/configmaps/{name}"]["patch"]["x-kubernetes-group-version-kind"],
            json!({"group": "", "version": "v1", "kind": "ConfigMap"})
        );
        assert!(d["paths"]["/api/v1/nodes/{name}/status"]["put"].is_object());
        assert!(d["paths"]["/api/v1/pods"]["get"].is_object());
    }
}
