//! `skiff apply`, `skiff delete` and `skiff create`.
//!
//! Apply reads every document of every manifest first and applies nothing
//! if any of them cannot be read. Then each object is created, or merged
//! onto the live one (the manifest as a JSON merge patch over it) and
//! updated at the live resourceVersion; an object the manifest would not
//! change is reported `unchanged` and not written.

use std::io::Read;
use std::path::Path;

use anyhow::{Context, Result, bail};
use serde_json::Value;
use skiff_api::manifest::{self, Document};
use skiff_api::v1::Namespace;
use skiff_api::{Kind, Object};
use skiff_client::{Client, ClientError};

use crate::args::{ApplyArgs, CreateCommand, DeleteArgs};
use crate::get::{object_name, parse_kind};

/// A document, and where it came from for messages.
struct Sourced {
    origin: String,
    doc: Document,
}

/// The files a `-f` argument names: itself, or a directory's manifests.
fn expand(arg: &str) -> Result<Vec<String>> {
    if arg == "-" {
        return Ok(vec![arg.to_string()]);
    }
    let path = Path::new(arg);
    if path.is_dir() {
        let mut files: Vec<String> = std::fs::read_dir(path)
            .with_context(|| format!("read directory {arg}"))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.extension()
                    .is_some_and(|e| e == "yaml" || e == "yml" || e == "json")
            })
            .map(|p| p.display().to_string())
            .collect();
        files.sort();
        return Ok(files);
    }
    Ok(vec![arg.to_string()])
}

fn read_all(files: &[String]) -> Result<Vec<Sourced>> {
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for arg in files {
        for file in expand(arg)? {
            let text = if file == "-" {
                let mut s = String::new();
                std::io::stdin()
                    .read_to_string(&mut s)
                    .context("read standard input")?;
                s
            } else {
                std::fs::read_to_string(&file).with_context(|| format!("read {file}"))?
            };
            let name = if file == "-" {
                "<stdin>".to_string()
            } else {
                file.clone()
            };
            for (i, doc) in manifest::parse(&text).into_iter().enumerate() {
                let origin = format!("{name}: document {}", i + 1);
                match doc {
                    Ok(doc) => {
                        for w in &doc.warnings {
                            eprintln!(
                                "Warning: {origin} ({}): unknown field {w:?} ignored",
                                object_name(&doc.object)
                            );
                        }
                        out.push(Sourced { origin, doc });
                    }
                    Err(e) => errors.push(format!("{origin}: {e}")),
                }
            }
        }
    }
    if !errors.is_empty() {
        for e in &errors {
            eprintln!("error: {e}");
        }
        bail!(
            "{} document(s) could not be read; nothing was applied",
            errors.len()
        );
    }
    Ok(out)
}

/// Puts the object in the namespace of `-n`, the manifest's, or default;
/// a manifest namespace that contradicts `-n` is an error, as in kubectl.
fn settle_namespace(obj: &mut Object, flag: Option<&str>) -> Result<()> {
    if !obj.kind().namespaced() {
        return Ok(());
    }
    let meta = obj.meta_mut();
    match (flag, meta.namespace.is_empty()) {
        (Some(f), false) if f != meta.namespace => bail!(
            "the namespace from the provided object {:?} does not match the namespace {f:?}: pass --namespace={} to apply it",
            meta.namespace,
            meta.namespace
        ),
        (Some(f), true) => meta.namespace = f.to_string(),
        (None, true) => meta.namespace = "default".into(),
        _ => {}
    }
    Ok(())
}

fn describe_error(e: &anyhow::Error) -> String {
    match e.downcast_ref::<ClientError>() {
        Some(ClientError::Api { message, .. }) => message.clone(),
        _ => format!("{e:#}"),
    }
}

pub async fn apply(client: &Client, namespace: Option<&str>, args: &ApplyArgs) -> Result<()> {
    let docs = read_all(&args.files)?;
    let mut failed = 0;
    for Sourced { origin, doc } in docs {
        let mut obj = doc.object;
        let result = async {
            settle_namespace(&mut obj, namespace)?;
            apply_one(client, obj.clone()).await
        }
        .await;
        match result {
            Ok(outcome) => println!("{} {outcome}", object_name(&obj)),
            Err(e) => {
                failed += 1;
                eprintln!(
                    "error: {origin} ({}): {}",
                    object_name(&obj),
                    describe_error(&e)
                );
            }
        }
    }
    if failed > 0 {
        bail!("{failed} object(s) were not applied");
    }
    Ok(())
}

/// Where apply records what it applied, as kubectl does.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// A merge patch that removes what the last applied configuration had and
/// the new one no longer has (fields others set are left alone).
fn removals(last: &Value, now: &Value) -> Option<Value> {
    let (Value::Object(last), Value::Object(now)) = (last, now) else {
        return None;
    };
    let mut out = serde_json::Map::new();
    for (k, lv) in last {
        match now.get(k) {
            None => {
                out.insert(k.clone(), Value::Null);
            }
            Some(nv) => {
                if let Some(d) = removals(lv, nv) {
                    out.insert(k.clone(), d);
                }
            }
        }
    }
    (!out.is_empty()).then_some(Value::Object(out))
}

fn annotations(v: &mut Value) -> Option<&mut serde_json::Map<String, Value>> {
    v.get_mut("metadata")?
        .as_object_mut()?
        .get_mut("annotations")?
        .as_object_mut()
}

/// Creates the object, or brings the live one to the manifest with a
/// three-way merge: the manifest wins where it speaks, fields removed from
/// it since the last apply are removed, and fields set by others stay.
async fn apply_one(client: &Client, obj: Object) -> Result<&'static str> {
    let (kind, meta) = (obj.kind(), obj.meta().clone());
    let mut config = obj.to_json();
    if let Some(m) = config.get_mut("metadata").and_then(|m| m.as_object_mut()) {
        // The live resourceVersion guards the update, not the manifest's.
        m.remove("resourceVersion");
    }
    if let Some(a) = annotations(&mut config) {
        a.remove(LAST_APPLIED);
        if a.is_empty() {
            config["metadata"]
                .as_object_mut()
                .expect("metadata")
                .remove("annotations");
        }
    }
    let mut desired = config.clone();
    desired["metadata"]["annotations"][LAST_APPLIED] = Value::String(config.to_string());
    for _ in 0..5 {
        let live = match client.get_object(kind, &meta.namespace, &meta.name).await {
            Ok(live) => live,
            Err(e) if e.is_not_found() => {
                let (new, _) = Object::from_json(desired.clone())?;
                match client.create_object(&new).await {
                    Ok(_) => return Ok("created"),
                    Err(e) if e.is_already_exists() => continue,
                    Err(e) => return Err(e.into()),
                }
            }
            Err(e) => return Err(e.into()),
        };
        let live_json = live.to_json();
        let last: Option<Value> = live
            .meta()
            .annotations
            .get(LAST_APPLIED)
            .and_then(|t| serde_json::from_str(t).ok());
        let mut patch = last
            .as_ref()
            .and_then(|l| removals(l, &config))
            .unwrap_or(Value::Null);
        manifest::merge_patch(&mut patch, &desired);
        let mut merged = live_json.clone();
        manifest::merge_patch(&mut merged, &patch);
        if merged == live_json {
            return Ok("unchanged");
        }
        let (target, _) = Object::from_json(merged)?;
        match client.update_object(&target).await {
            Ok(updated) if updated.to_json() == live_json => return Ok("unchanged"),
            Ok(_) => return Ok("configured"),
            Err(e) if e.is_conflict() => continue,
            Err(e) => return Err(e.into()),
        }
    }
    bail!("the object kept changing under us; try again")
}

pub async fn delete(client: &Client, namespace: Option<&str>, args: &DeleteArgs) -> Result<()> {
    let mut targets: Vec<(Kind, String, String)> = Vec::new();
    if !args.files.is_empty() {
        for Sourced { doc, .. } in read_all(&args.files)? {
            let mut obj = doc.object;
            settle_namespace(&mut obj, namespace)?;
            targets.push((
                obj.kind(),
                obj.meta().namespace.clone(),
                obj.meta().name.clone(),
            ));
        }
    } else {
        let Some((kind_word, names)) = args.args.split_first() else {
            bail!("name the kind and objects to delete (`skiff delete pod web`) or pass -f FILE");
        };
        let (kind_word, names) = match kind_word.split_once('/') {
            Some((k, n)) => (k.to_string(), vec![n.to_string()]),
            None => (kind_word.clone(), names.to_vec()),
        };
        if names.is_empty() {
            bail!("name the {kind_word} to delete");
        }
        let kind = parse_kind(&kind_word)?;
        let ns = if kind.namespaced() {
            namespace.unwrap_or("default").to_string()
        } else {
            String::new()
        };
        targets.extend(names.into_iter().map(|n| (kind, ns.clone(), n)));
    }
    // kubectl's spelling: --cascade=true is background, false orphan.
    let propagation = match args.cascade.as_str() {
        "foreground" => "Foreground",
        "orphan" | "false" => "Orphan",
        _ => "Background",
    };
    let mut failed = 0;
    for (kind, ns, name) in targets {
        let grace = if kind == Kind::Pod {
            args.grace_period
        } else {
            None
        };
        let result = client
            .delete_object_with(kind, &ns, &name, grace, propagation)
            .await
            .map(|_| ());
        match result {
            Ok(()) => println!("{} {name:?} deleted", kind.qualified_name()),
            Err(e) => {
                failed += 1;
                eprintln!("error: {}", e);
            }
        }
    }
    if failed > 0 {
        bail!("{failed} object(s) were not deleted");
    }
    Ok(())
}

pub async fn create(client: &Client, command: &CreateCommand) -> Result<()> {
    match command {
        CreateCommand::Namespace { name } => {
            let ns = Namespace {
                metadata: Some(skiff_api::v1::ObjectMeta {
                    name: name.clone(),
                    ..Default::default()
                }),
                ..Default::default()
            };
            client.create(&ns).await?;
            println!("namespace/{name} created");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::removals;
    use serde_json::json;

    #[test]
    fn removals_are_what_the_manifest_dropped() {
        let last =
            json!({"metadata": {"labels": {"a": "1", "b": "2"}}, "spec": {"x": 1, "y": {"z": 1}}});
        let now = json!({"metadata": {"labels": {"a": "1"}}, "spec": {"x": 2}});
        assert_eq!(
            removals(&last, &now),
            Some(json!({"metadata": {"labels": {"b": null}}, "spec": {"y": null}}))
        );
        assert_eq!(removals(&now, &now), None);
    }
}
