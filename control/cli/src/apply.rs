//! `skiff apply`, `skiff diff`, `skiff delete` and `skiff create`.
//!
//! Apply reads every document of every manifest first and applies nothing
//! if any of them cannot be read. Then each object is created, or merged
//! onto the live one as kubectl's client-side apply does (a three-way
//! strategic merge patch: lists such as containers merge by their keys)
//! and updated at the live resourceVersion; an object the manifest would
//! not change is reported `unchanged` and not written. `--dry-run=server`
//! sends the same writes as server dry runs, `--dry-run=client` sends
//! none; `diff` shows what a server dry run of the apply would store.

use std::io::Read;
use std::path::Path;

use anyhow::{Context, Result, bail};
use serde_json::Value;
use skiff_api::manifest::{self, Document};
use skiff_api::patch::{schema, strategic};
use skiff_api::v1::Namespace;
use skiff_api::{Kind, Object};
use skiff_client::{Client, ClientError, DeleteParams};

use crate::args::{ApplyArgs, CreateCommand, DeleteArgs, DiffArgs, DryRun};
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

impl DryRun {
    /// What kubectl prints after the outcome.
    fn suffix(self) -> &'static str {
        match self {
            DryRun::None => "",
            DryRun::Client => " (dry run)",
            DryRun::Server => " (server dry run)",
        }
    }
}

pub async fn apply(client: &Client, namespace: Option<&str>, args: &ApplyArgs) -> Result<()> {
    if args.server_side && args.dry_run == DryRun::Client {
        bail!(
            "--dry-run=client doesn't work with --server-side (did you mean --dry-run=server instead?)"
        );
    }
    let docs = read_all(&args.files)?;
    let mut failed = 0;
    for Sourced { origin, doc } in docs {
        let mut obj = doc.object;
        let result = async {
            settle_namespace(&mut obj, namespace)?;
            if args.server_side {
                return server_side(client, &obj, args).await;
            }
            apply_one(client, &obj, args.dry_run).await
        }
        .await;
        match result {
            Ok(Applied { outcome, .. }) => {
                println!("{} {outcome}{}", object_name(&obj), args.dry_run.suffix())
            }
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

/// `--server-side`: the manifest is the manager's whole configuration.
async fn server_side(client: &Client, obj: &Object, args: &ApplyArgs) -> Result<Applied> {
    let meta = obj.meta();
    let (obj, _) = client
        .apply_object(
            obj.kind(),
            &meta.namespace,
            &configuration(obj),
            &args.field_manager,
            args.force_conflicts,
            args.dry_run == DryRun::Server,
        )
        .await?;
    Ok(Applied {
        outcome: "serverside-applied",
        stored: Some(obj),
        live: None,
    })
}

/// Where apply records what it applied, as kubectl does.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

fn annotations(v: &mut Value) -> Option<&mut serde_json::Map<String, Value>> {
    v.get_mut("metadata")?
        .as_object_mut()?
        .get_mut("annotations")?
        .as_object_mut()
}

/// What applying one manifest object takes.
enum Plan {
    Create(Object),
    Update { live: Object, target: Box<Object> },
    Unchanged(Object),
}

/// The manifest as apply records it: no resourceVersion (the live one
/// guards the update) and no copy of an older record.
fn configuration(obj: &Object) -> Value {
    let mut config = obj.to_json();
    if let Some(m) = config.get_mut("metadata").and_then(|m| m.as_object_mut()) {
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
    config
}

/// Reads the live object and works out the write: the manifest, with
/// its record, as a create; or the three-way patch over the live object.
async fn plan(client: &Client, obj: &Object) -> Result<Plan> {
    let (kind, meta) = (obj.kind(), obj.meta());
    let config = configuration(obj);
    let record = Value::String(config.to_string());
    let live = match client.get_object(kind, &meta.namespace, &meta.name).await {
        Ok(live) => live,
        Err(e) if e.is_not_found() => {
            let mut desired = config;
            desired["metadata"]["annotations"][LAST_APPLIED] = record;
            return Ok(Plan::Create(Object::from_json(desired)?.0));
        }
        Err(e) => return Err(e.into()),
    };
    let live_json = live.to_json();
    let last: Option<Value> = live
        .meta()
        .annotations
        .get(LAST_APPLIED)
        .and_then(|t| serde_json::from_str(t).ok());
    let schema = schema::of(kind);
    let mut patch = strategic::three_way(last.as_ref(), &config, schema);
    patch["metadata"]["annotations"][LAST_APPLIED] = record;
    let mut merged = live_json.clone();
    strategic::apply(&mut merged, &patch, schema)?;
    if merged == live_json {
        return Ok(Plan::Unchanged(live));
    }
    let (target, _) = Object::from_json(merged)?;
    Ok(Plan::Update {
        live,
        target: Box::new(target),
    })
}

/// What applying one object did.
struct Applied {
    outcome: &'static str,
    /// The object before (None: it did not exist).
    live: Option<Object>,
    /// What the server stored (or, in a server dry run, would have; in a
    /// client dry run, nothing).
    stored: Option<Object>,
}

/// Creates the object, or brings the live one to the manifest.
async fn apply_one(client: &Client, obj: &Object, dry_run: DryRun) -> Result<Applied> {
    let server_dry = dry_run == DryRun::Server;
    let done = |outcome, live, stored| {
        Ok(Applied {
            outcome,
            live,
            stored,
        })
    };
    for _ in 0..5 {
        match plan(client, obj).await? {
            Plan::Unchanged(live) => return done("unchanged", Some(live.clone()), Some(live)),
            Plan::Create(_) if dry_run == DryRun::Client => return done("created", None, None),
            Plan::Update { live, .. } if dry_run == DryRun::Client => {
                return done("configured", Some(live), None);
            }
            Plan::Create(new) => match client.create_object_with(&new, server_dry).await {
                Ok(stored) => return done("created", None, Some(stored)),
                Err(e) if e.is_already_exists() => continue,
                Err(e) => return Err(e.into()),
            },
            Plan::Update { live, target } => {
                match client.update_object_with(&target, server_dry).await {
                    Ok(stored) if stored.to_json() == live.to_json() => {
                        return done("unchanged", Some(live), Some(stored));
                    }
                    Ok(stored) => return done("configured", Some(live), Some(stored)),
                    Err(e) if e.is_conflict() => continue,
                    Err(e) => return Err(e.into()),
                }
            }
        }
    }
    bail!("the object kept changing under us; try again")
}

/// `skiff diff -f FILE`: the live objects against what applying the
/// manifests would store (a server dry run), as a unified diff by the
/// `diff` program, as kubectl does. Exits 1 when there are differences.
pub async fn diff(client: &Client, namespace: Option<&str>, args: &DiffArgs) -> Result<bool> {
    let docs = read_all(&args.files)?;
    let dir = tempfile::Builder::new().prefix("skiff-diff-").tempdir()?;
    let (live_dir, merged_dir) = (dir.path().join("LIVE"), dir.path().join("MERGED"));
    std::fs::create_dir(&live_dir)?;
    std::fs::create_dir(&merged_dir)?;
    for Sourced { doc, .. } in docs {
        let mut obj = doc.object;
        settle_namespace(&mut obj, namespace)?;
        let (kind, meta) = (obj.kind(), obj.meta());
        let Applied { live, stored, .. } = apply_one(client, &obj, DryRun::Server).await?;
        let file = format!(
            "{}.{}.{}.{}",
            kind.api_version().replace('/', "."),
            kind.name(),
            meta.namespace,
            meta.name
        );
        if let Some(live) = live {
            std::fs::write(live_dir.join(&file), diff_yaml(&live)?)?;
        }
        if let Some(merged) = stored {
            std::fs::write(merged_dir.join(&file), diff_yaml(&merged)?)?;
        }
    }
    let out = std::process::Command::new("diff")
        .args(["-u", "-N"])
        .arg(&live_dir)
        .arg(&merged_dir)
        .output()
        .context("run diff (from diffutils)")?;
    print!("{}", String::from_utf8_lossy(&out.stdout));
    match out.status.code() {
        Some(0) => Ok(false),
        Some(1) => Ok(true),
        _ => bail!(
            "diff failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ),
    }
}

fn diff_yaml(obj: &Object) -> Result<String> {
    let mut v = obj.to_json();
    if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove("managedFields");
    }
    Ok(serde_yaml_ng::to_string(&v)?)
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
        let params = DeleteParams {
            grace_seconds: args.grace_period.filter(|_| kind == Kind::Pod),
            propagation: propagation.into(),
            dry_run: args.dry_run == DryRun::Server,
            ..Default::default()
        };
        let result = if args.dry_run == DryRun::Client {
            // Only that it is there.
            client.get_object(kind, &ns, &name).await.map(|_| ())
        } else {
            client
                .delete_object_with(kind, &ns, &name, &params)
                .await
                .map(|_| ())
        };
        match result {
            Ok(()) => println!(
                "{} {name:?} deleted{}",
                kind.qualified_name(),
                args.dry_run.suffix()
            ),
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
