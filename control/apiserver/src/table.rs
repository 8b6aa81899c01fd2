//! What a REST answer is rendered as, by the client's `Accept` header: the
//! object (JSON), or a `meta.k8s.io` `Table` of kubectl's columns (what
//! `kubectl get` asks for), with each row's object as PartialObjectMetadata
//! unless `includeObject` says otherwise. Media types not served get 406.

use serde_json::{Value, json};
use skiff_api::{Kind, Object, columns};

use crate::error::{ApiError, ApiResult};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    Object,
    /// A Table of this meta.k8s.io version (`v1` or `v1beta1`).
    Table(&'static str),
}

const SERVED: &str = "application/json, application/json;as=Table;v=v1;g=meta.k8s.io";

/// The first media range of `accept` this server can answer with.
pub fn negotiate(accept: Option<&str>) -> ApiResult<Shape> {
    let Some(accept) = accept.map(str::trim).filter(|a| !a.is_empty()) else {
        return Ok(Shape::Object);
    };
    for range in accept.split(',') {
        let mut parts = range.split(';').map(str::trim);
        let media = parts.next().unwrap_or("").to_ascii_lowercase();
        let (mut r#as, mut v, mut g) = ("", "", "");
        for p in parts {
            match p.split_once('=') {
                Some(("as", x)) => r#as = x,
                Some(("v", x)) => v = x,
                Some(("g", x)) => g = x,
                _ => {}
            }
        }
        let json = matches!(media.as_str(), "application/json" | "application/*" | "*/*");
        match (json, r#as, g, v) {
            (true, "", _, _) => return Ok(Shape::Object),
            (true, "Table", "meta.k8s.io", "v1") => return Ok(Shape::Table("v1")),
            (true, "Table", "meta.k8s.io", "v1beta1") => return Ok(Shape::Table("v1beta1")),
            _ => continue,
        }
    }
    Err(ApiError::not_acceptable(format!(
        "only the following media types are accepted: {SERVED}"
    )))
}

/// `includeObject`: what each row carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Include {
    None,
    Metadata,
    Object,
}

impl Include {
    pub fn parse(v: Option<&str>) -> ApiResult<Include> {
        match v.unwrap_or("") {
            "" | "Metadata" => Ok(Include::Metadata),
            "None" => Ok(Include::None),
            "Object" => Ok(Include::Object),
            other => Err(ApiError::bad_request(format!(
                "includeObject: Unsupported value: \"{other}\": supported values: \"Metadata\", \"None\", \"Object\""
            ))),
        }
    }
}

fn column_definitions(kind: Kind) -> Vec<Value> {
    columns::of(kind)
        .iter()
        .map(|c| {
            json!({
                "name": c.name,
                "type": "string",
                "format": if c.name == "Name" { "name" } else { "" },
                "description": c.description,
                "priority": u8::from(c.wide),
            })
        })
        .collect()
}

fn row(obj: &Object, json: Value, include: Include, version: &str) -> Value {
    let mut row = json!({ "cells": columns::cells(obj) });
    match include {
        Include::None => {}
        Include::Metadata => {
            row["object"] = json!({
                "kind": "PartialObjectMetadata",
                "apiVersion": format!("meta.k8s.io/{version}"),
                "metadata": json.get("metadata").cloned().unwrap_or(Value::Null),
            });
        }
        Include::Object => row["object"] = json,
    }
    row
}

/// A Table of `objects` (with their JSON forms) at `resource_version`.
pub fn table<'a>(
    kind: Kind,
    objects: impl IntoIterator<Item = (&'a Object, Value)>,
    resource_version: &str,
    include: Include,
    version: &str,
) -> Value {
    let rows: Vec<Value> = objects
        .into_iter()
        .map(|(o, j)| row(o, j, include, version))
        .collect();
    json!({
        "kind": "Table",
        "apiVersion": format!("meta.k8s.io/{version}"),
        "metadata": {"resourceVersion": resource_version},
        "columnDefinitions": column_definitions(kind),
        "rows": rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubectl_get_asks_for_a_table() {
        let kubectl = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json";
        assert_eq!(negotiate(Some(kubectl)).unwrap(), Shape::Table("v1"));
        assert_eq!(
            negotiate(Some("application/json;as=Table;v=v1beta1;g=meta.k8s.io")).unwrap(),
            Shape::Table("v1beta1")
        );
        for plain in [
            None,
            Some(""),
            Some("*/*"),
            Some("application/json, text/plain"),
        ] {
            assert_eq!(negotiate(plain).unwrap(), Shape::Object, "{plain:?}");
        }
        // client-go's default for built-in types: protobuf first, JSON next.
        assert_eq!(
            negotiate(Some(
                "application/vnd.kubernetes.protobuf, application/json"
            ))
            .unwrap(),
            Shape::Object
        );
        for refused in [
            "application/yaml",
            "application/vnd.kubernetes.protobuf",
            "application/json;as=PartialObjectMetadataList;v=v1;g=meta.k8s.io",
            "application/json;as=Table;v=v2;g=meta.k8s.io",
        ] {
            assert_eq!(negotiate(Some(refused)).unwrap_err().code, 406, "{refused}");
        }
    }

    #[test]
    fn rows_carry_cells_and_partial_metadata() {
        let (pod, _) = Object::from_json(json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "web", "namespace": "default", "resourceVersion": "7"},
            "spec": {"containers": [{"name": "c", "image": "x"}]}}))
        .unwrap();
        let j = pod.to_json();
        let t = table(Kind::Pod, [(&pod, j.clone())], "9", Include::Metadata, "v1");
        assert_eq!(t["kind"], "Table");
        assert_eq!(t["metadata"]["resourceVersion"], "9");
        let names: Vec<&str> = t["columnDefinitions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            ["Name", "Ready", "Status", "Restarts", "Age", "IP", "Node"]
        );
        assert_eq!(t["columnDefinitions"][5]["priority"], 1);
        assert_eq!(t["rows"][0]["cells"][0], "web");
        assert_eq!(t["rows"][0]["cells"][1], "0/1");
        assert_eq!(t["rows"][0]["object"]["kind"], "PartialObjectMetadata");
        assert_eq!(t["rows"][0]["object"]["metadata"]["resourceVersion"], "7");
        let t = table(Kind::Pod, [(&pod, j.clone())], "9", Include::None, "v1");
        assert!(t["rows"][0].get("object").is_none());
        let t = table(Kind::Pod, [(&pod, j.clone())], "9", Include::Object, "v1");
        assert_eq!(t["rows"][0]["object"], j);
        assert!(Include::parse(Some("All")).is_err());
    }
}
