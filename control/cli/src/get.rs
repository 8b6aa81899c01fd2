//! `skiff get`: tables, wide tables, JSON, YAML, names, and watching.

use anyhow::{Result, bail};
use futures::StreamExt;
use serde_json::{Value, json};
use skiff_api::{Kind, Object};
use skiff_client::{Client, ListParams};

use crate::args::{GetArgs, Output};
use crate::table;

pub fn parse_kind(word: &str) -> Result<Kind> {
    match Kind::parse(word) {
        Some(k) => Ok(k),
        None => bail!("the server doesn't have a resource type {word:?}"),
    }
}

/// `deployment.apps/web`, as kubectl names objects.
pub fn object_name(obj: &Object) -> String {
    format!("{}/{}", obj.kind().qualified_name(), obj.meta().name)
}

pub fn to_yaml(v: &Value) -> Result<String> {
    Ok(serde_yaml_ng::to_string(v)?)
}

fn list_value(items: Vec<Value>) -> Value {
    json!({"apiVersion": "v1", "kind": "List", "items": items, "metadata": {"resourceVersion": ""}})
}

pub async fn get(client: &Client, namespace: Option<&str>, args: &GetArgs) -> Result<()> {
    let kind = parse_kind(&args.kind)?;
    let ns = if !kind.namespaced() || args.all_namespaces {
        String::new()
    } else {
        namespace.unwrap_or("default").to_string()
    };
    let params = ListParams {
        label_selector: args.selector.clone().unwrap_or_default(),
        field_selector: args.field_selector.clone().unwrap_or_default(),
    };
    let mut objects = Vec::new();
    let mut resource_version = String::new();
    if args.names.is_empty() {
        let (items, rv) = client.list_objects(kind, &ns, &params).await?;
        objects = items;
        resource_version = rv;
    } else {
        for name in &args.names {
            objects.push(client.get_object(kind, &ns, name).await?);
        }
    }
    let show_ns = args.all_namespaces && kind.namespaced();
    // kubectl's shapes: one object when one was named, else a List.
    let single = args.names.len() == 1;
    print_objects(kind, &objects, args.output, show_ns, true, single)?;
    if args.names.is_empty() && objects.is_empty() && args.output.is_none() && !args.watch {
        if ns.is_empty() {
            eprintln!("No resources found");
        } else {
            eprintln!("No resources found in {ns} namespace.");
        }
    }
    if args.watch {
        let rv = if resource_version.is_empty() {
            None
        } else {
            Some(resource_version.as_str())
        };
        let mut events = client.watch_objects(kind, &ns, &params, rv).await?;
        while let Some(ev) = events.next().await {
            let (_, obj) = ev?;
            if !args.names.is_empty() && !args.names.contains(&obj.meta().name) {
                continue;
            }
            print_objects(
                kind,
                std::slice::from_ref(&obj),
                args.output,
                show_ns,
                false,
                true,
            )?;
        }
    }
    Ok(())
}

fn print_objects(
    kind: Kind,
    objects: &[Object],
    output: Option<Output>,
    show_ns: bool,
    header: bool,
    single: bool,
) -> Result<()> {
    match output {
        Some(Output::Json) | Some(Output::Yaml) => {
            let items: Vec<Value> = objects.iter().map(Object::to_json).collect();
            let v = if single && items.len() == 1 {
                items.into_iter().next().expect("one")
            } else {
                list_value(items)
            };
            if output == Some(Output::Json) {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print!("{}", to_yaml(&v)?);
            }
        }
        Some(Output::Name) => {
            for o in objects {
                println!("{}", object_name(o));
            }
        }
        Some(Output::Wide) | None => {
            if objects.is_empty() {
                return Ok(());
            }
            let wide = output == Some(Output::Wide);
            let mut headers = table::headers(kind, wide);
            if show_ns {
                headers.insert(0, "NAMESPACE".to_string());
            }
            let rows: Vec<Vec<String>> = objects
                .iter()
                .map(|o| {
                    let mut r = table::row(o, wide);
                    if show_ns {
                        r.insert(0, o.meta().namespace.clone());
                    }
                    r
                })
                .collect();
            let text = table::render(&headers, &rows);
            let text = if header {
                text
            } else {
                text.lines().skip(1).collect::<Vec<_>>().join("\n")
            };
            println!("{text}");
        }
    }
    Ok(())
}
