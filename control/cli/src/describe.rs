//! `skiff describe`: an object's identity, its spec and status, and the
//! events about it.

use anyhow::Result;
use serde_json::Value;
use skiff_api::Kind;
use skiff_client::{Client, ListParams};

use crate::args::DescribeArgs;
use crate::get::{parse_kind, to_yaml};
use crate::table;

fn map_text(v: Option<&Value>) -> String {
    match v.and_then(Value::as_object) {
        Some(m) if !m.is_empty() => m
            .iter()
            .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
            .collect::<Vec<_>>()
            .join("\n              "),
        _ => "<none>".into(),
    }
}

fn indent(text: &str) -> String {
    text.lines()
        .map(|l| format!("  {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

pub async fn describe(client: &Client, namespace: Option<&str>, args: &DescribeArgs) -> Result<()> {
    let kind = parse_kind(&args.kind)?;
    let ns = if kind.namespaced() {
        namespace.unwrap_or("default")
    } else {
        ""
    };
    let obj = client.get_object(kind, ns, &args.name).await?;
    let json = obj.to_json();
    let meta = &json["metadata"];
    println!("Name:         {}", args.name);
    if kind.namespaced() {
        println!("Namespace:    {ns}");
    }
    println!("Labels:       {}", map_text(meta.get("labels")));
    println!("Annotations:  {}", map_text(meta.get("annotations")));
    println!(
        "Created:      {} ({} ago)",
        meta["creationTimestamp"].as_str().unwrap_or("<unknown>"),
        table::age(obj.meta().creation_timestamp.as_ref())
    );
    if let Some(t) = meta.get("deletionTimestamp").and_then(Value::as_str) {
        println!("Deleting:     since {t}");
    }
    for section in ["spec", "status", "data", "endpoints", "ports"] {
        if let Some(v) = json.get(section) {
            println!("{}{}:", section[..1].to_uppercase(), &section[1..]);
            println!("{}", indent(to_yaml(v)?.trim_end()));
        }
    }
    let params = ListParams::default().fields(&format!(
        "involvedObject.name={},involvedObject.kind={}",
        args.name,
        kind.name()
    ));
    let events_ns = if kind.namespaced() { ns } else { "" };
    let (events, _) = client.list_objects(Kind::Event, events_ns, &params).await?;
    if events.is_empty() {
        println!("Events:       <none>");
    } else {
        println!("Events:");
        let rows: Vec<Vec<String>> = events.iter().map(|e| table::row(e, false)).collect();
        println!(
            "{}",
            indent(&table::render(&table::headers(Kind::Event, false), &rows))
        );
    }
    Ok(())
}
