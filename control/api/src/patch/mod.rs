//! Patches, as Kubernetes applies them: JSON merge patch (RFC 7386),
//! strategic merge patch (lists merge by the keys in [`schema`]) and JSON
//! patch (RFC 6902); and server-side apply's field ownership ([`fields`]).
//! Pure functions on JSON values, used by the API server
//! for `PATCH` and by `skiff apply` for its three-way merge.

pub mod fields;
pub mod json;
pub mod schema;
pub mod strategic;

#[cfg(test)]
mod tests;

use serde_json::Value;

/// Why a patch could not be applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PatchError(pub String);

impl std::fmt::Display for PatchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for PatchError {}

/// Applies a JSON merge patch (RFC 7386) to `target`: objects merge key by
/// key, `null` removes a key, anything else (lists too) replaces.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(serde_json::Map::new());
    }
    let Value::Object(map) = target else { return };
    for (k, v) in patch {
        if v.is_null() {
            map.remove(k);
        } else {
            merge_patch(map.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}
