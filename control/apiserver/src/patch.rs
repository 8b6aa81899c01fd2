//! `PATCH` bodies by media type, as kube-apiserver takes them: JSON merge
//! patch, strategic merge patch (lists merge by the kind's keys), JSON
//! patch, and server-side apply's configuration (carried out by
//! `crate::apply`).

use serde_json::Value;
use skiff_api::patch::schema::Schema;
use skiff_api::patch::{self, json, strategic};

use crate::error::{ApiError, ApiResult};

pub enum Patch {
    Merge(Value),
    Strategic(Value),
    Json(Vec<json::Operation>),
    /// A server-side apply configuration.
    Apply(Value),
}

const MEDIA_TYPES: &str = "application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml, application/strategic-merge-patch+json";

impl Patch {
    pub fn parse(content_type: &str, body: &[u8]) -> ApiResult<Patch> {
        let media = content_type
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        let doc = || -> ApiResult<Value> {
            serde_json::from_slice(body)
                .map_err(|e| ApiError::bad_request(format!("malformed patch: {e}")))
        };
        match media.as_str() {
            "application/merge-patch+json" => Ok(Patch::Merge(doc()?)),
            "application/strategic-merge-patch+json" => {
                let v = doc()?;
                if !v.is_object() {
                    return Err(ApiError::bad_request(
                        "a strategic merge patch must be a JSON object",
                    ));
                }
                Ok(Patch::Strategic(v))
            }
            "application/json-patch+json" => json::parse(&doc()?)
                .map(Patch::Json)
                .map_err(|e| ApiError::bad_request(format!("malformed JSON patch: {e}"))),
            "application/apply-patch+yaml" => crate::apply::parse_config(body).map(Patch::Apply),
            _ => Err(ApiError::unsupported_media(format!(
                "the body of the request was in an unknown format - accepted media types include: {MEDIA_TYPES}"
            ))),
        }
    }

    /// The patched object, from the current one as JSON (`schema`: how
    /// its lists merge).
    pub fn apply(&self, schema: &Schema, mut value: Value) -> ApiResult<Value> {
        match self {
            Patch::Merge(p) => patch::merge_patch(&mut value, p),
            Patch::Strategic(p) => strategic::apply(&mut value, p, schema)
                .map_err(|e| ApiError::bad_request(format!("the strategic merge patch: {e}")))?,
            Patch::Json(ops) => json::apply(&mut value, ops)
                .map_err(|e| ApiError::unprocessable(format!("the JSON patch: {e}")))?,
            Patch::Apply(_) => {
                return Err(ApiError::internal(
                    "server-side apply is not a patch of the object",
                ));
            }
        }
        Ok(value)
    }

    /// Whether the patch pins a resourceVersion (then a conflict is the
    /// client's; otherwise a lost race is retried on the new object).
    pub fn names_resource_version(&self) -> bool {
        match self {
            Patch::Merge(p) | Patch::Strategic(p) | Patch::Apply(p) => {
                p.pointer("/metadata/resourceVersion").is_some()
            }
            Patch::Json(ops) => ops
                .iter()
                .any(|op| op.path().starts_with("/metadata/resourceVersion")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_types() {
        assert!(matches!(
            Patch::parse("application/merge-patch+json", b"{}"),
            Ok(Patch::Merge(_))
        ));
        assert!(matches!(
            Patch::parse(
                "application/strategic-merge-patch+json; charset=utf-8",
                b"{}"
            ),
            Ok(Patch::Strategic(_))
        ));
        assert!(matches!(
            Patch::parse(
                "application/json-patch+json",
                br#"[{"op":"remove","path":"/a"}]"#
            ),
            Ok(Patch::Json(_))
        ));
        for (ct, body, code) in [
            ("application/json", &b"{}"[..], 415),
            ("application/apply-patch+yaml", b"- a", 400),
            ("application/strategic-merge-patch+json", b"[]", 400),
            ("application/json-patch+json", b"{}", 400),
            ("application/merge-patch+json", b"{", 400),
        ] {
            let e = Patch::parse(ct, body).err().unwrap();
            assert_eq!(e.code, code, "{ct}: {}", e.message);
        }
    }

    #[test]
    fn a_pinned_resource_version_is_seen() {
        let p = Patch::parse(
            "application/json-patch+json",
            br#"[{"op":"test","path":"/metadata/resourceVersion","value":"5"}]"#,
        )
        .unwrap();
        assert!(p.names_resource_version());
        let p = Patch::parse("application/merge-patch+json", br#"{"spec":{}}"#).unwrap();
        assert!(!p.names_resource_version());
    }
}
