//! Manifests: multi-document YAML or JSON text into typed objects, with a
//! warning for every field that is not understood and a precise error for
//! everything that cannot be read.

use serde::Deserialize;
use serde_json::Value;
use thiserror::Error;

use crate::Object;

#[derive(Debug, Error)]
pub enum ManifestError {
    #[error("malformed YAML/JSON: {0}")]
    Syntax(String),
    #[error("a document must be a mapping (an object), not {0}")]
    NotAnObject(&'static str),
    #[error("missing required field {0:?}")]
    MissingField(&'static str),
    #[error("unknown kind {kind:?} in apiVersion {api_version:?}")]
    UnknownKind { api_version: String, kind: String },
    #[error("{path}: {message}")]
    Schema { path: String, message: String },
}

/// One object read from a manifest.
#[derive(Debug)]
pub struct Document {
    pub object: Object,
    /// Paths of fields that were ignored (`spec.loadBalancerIP`).
    pub warnings: Vec<String>,
}

/// Every document of a manifest, in order, each an object or the reason it
/// is not one; empty documents are skipped and a `List` is expanded into its
/// items. A syntax error ends the sequence, as nothing after it can be read
/// reliably.
pub fn parse(text: &str) -> Vec<Result<Document, ManifestError>> {
    let mut out = Vec::new();
    for doc in serde_yaml_ng::Deserializer::from_str(text) {
        match Value::deserialize(doc) {
            Ok(Value::Null) => {}
            Ok(value) => push_value(value, &mut out),
            Err(e) => {
                out.push(Err(ManifestError::Syntax(e.to_string())));
                break;
            }
        }
    }
    out
}

fn push_value(value: Value, out: &mut Vec<Result<Document, ManifestError>>) {
    let is_list = value.get("kind").and_then(Value::as_str) == Some("List");
    match value {
        Value::Object(mut map) if is_list => {
            let items = map.remove("items").unwrap_or(Value::Array(Vec::new()));
            match items {
                Value::Array(items) => items.into_iter().for_each(|v| push_value(v, out)),
                _ => out.push(Err(ManifestError::Schema {
                    path: "items".into(),
                    message: "a List's items must be a sequence".into(),
                })),
            }
        }
        Value::Object(_) => out
            .push(Object::from_json(value).map(|(object, warnings)| Document { object, warnings })),
        other => out.push(Err(ManifestError::NotAnObject(type_name(&other)))),
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a sequence",
        Value::Object(_) => "a mapping",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Kind;

    #[test]
    fn multi_document_yaml() {
        let docs = parse(
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: a\n---\n---\n\
             apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: c\n  namespace: a\ndata:\n  k: v\nextra: 1\n",
        );
        assert_eq!(docs.len(), 2);
        let first = docs[0].as_ref().unwrap();
        assert_eq!(first.object.kind(), Kind::Namespace);
        let second = docs[1].as_ref().unwrap();
        assert_eq!(second.warnings, vec!["extra".to_string()]);
    }

    #[test]
    fn json_and_lists() {
        let docs = parse(
            r#"{"apiVersion":"v1","kind":"List","items":[
                {"apiVersion":"v1","kind":"Namespace","metadata":{"name":"x"}},
                {"apiVersion":"v1","kind":"Gadget"}]}"#,
        );
        assert_eq!(docs.len(), 2);
        assert!(docs[0].is_ok());
        assert!(matches!(docs[1], Err(ManifestError::UnknownKind { .. })));
    }

    /// Every prefix of a real manifest, and the manifest with characters
    /// replaced at many places, parse to objects or errors: never a panic.
    #[test]
    fn mangled_manifests_never_panic() {
        let text = include_str!("../../../../shared/manifests/guestbook-all-in-one.yaml");
        assert_eq!(parse(text).iter().filter(|d| d.is_ok()).count(), 6);
        for end in (0..text.len()).filter(|i| text.is_char_boundary(*i)) {
            let _ = parse(&text[..end]);
        }
        let bytes = text.as_bytes();
        for (i, replacement) in (0..bytes.len()).step_by(5).zip(
            [
                ":", "-", "[", "{", "'", "\"", "\t", "\n", "9", "&", "*", "!",
            ]
            .iter()
            .cycle(),
        ) {
            let mut mangled = String::from_utf8_lossy(&bytes[..i]).into_owned();
            mangled.push_str(replacement);
            mangled.push_str(&String::from_utf8_lossy(&bytes[i + 1..]));
            let _ = parse(&mangled);
        }
    }

    #[test]
    fn malformed_input_is_an_error_not_a_panic() {
        for bad in [
            "a: [",
            "- 1\n- 2",
            "\"text\"",
            "kind: Pod\n",
            ":\n  - : :",
            "{{{",
        ] {
            let docs = parse(bad);
            assert!(docs.iter().any(Result::is_err), "{bad:?} gave {docs:?}");
        }
    }
}
