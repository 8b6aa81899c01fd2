//! Kubernetes' strategic merge patch
//! (`application/strategic-merge-patch+json`): a JSON merge patch in which
//! the lists the [`schema`](super::schema) names merge by key instead of
//! being replaced, with the directives kubectl sends: `$patch`
//! (`replace`, `delete`, `merge`), `$retainKeys`, `$setElementOrder/<list>`
//! and `$deleteFromPrimitiveList/<list>`. Also the other direction:
//! [`three_way`], the patch `skiff apply` sends.

use serde_json::{Map, Value};

use super::PatchError;
use super::schema::{List, PLAIN, Schema};

const PATCH: &str = "$patch";
const RETAIN_KEYS: &str = "$retainKeys";
const SET_ORDER: &str = "$setElementOrder/";
const DELETE_PRIMITIVE: &str = "$deleteFromPrimitiveList/";

fn err(message: impl Into<String>) -> PatchError {
    PatchError(message.into())
}

/// Applies `patch` to `target`, an object of the kind `schema` describes.
pub fn apply(target: &mut Value, patch: &Value, schema: &Schema) -> Result<(), PatchError> {
    let Value::Object(patch) = patch else {
        return Err(err("a strategic merge patch must be a JSON object"));
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Value::Object(map) = target else {
        unreachable!()
    };
    merge_map(map, patch, schema)
}

fn merge_map(
    original: &mut Map<String, Value>,
    patch: &Map<String, Value>,
    schema: &Schema,
) -> Result<(), PatchError> {
    match patch.get(PATCH) {
        None => {}
        Some(Value::String(d)) if d == "merge" => {}
        Some(Value::String(d)) if d == "replace" => {
            *original = strip_directives(patch);
            return Ok(());
        }
        Some(Value::String(d)) if d == "delete" => {
            original.clear();
            return Ok(());
        }
        Some(other) => return Err(err(format!("unknown patch type: {other} in map"))),
    }
    if let Some(keys) = patch.get(RETAIN_KEYS) {
        let Value::Array(keys) = keys else {
            return Err(err("$retainKeys must be a list of field names"));
        };
        let keep: Vec<&str> = keys.iter().filter_map(Value::as_str).collect();
        for k in patch.keys().filter(|k| !k.starts_with('$')) {
            if !keep.contains(&k.as_str()) {
                return Err(err(format!(
                    "the patch has field {k:?}, which is not in its $retainKeys list"
                )));
            }
        }
        original.retain(|k, _| keep.contains(&k.as_str()));
    }
    for (k, v) in patch {
        if let Some(field) = k.strip_prefix(DELETE_PRIMITIVE) {
            let Value::Array(gone) = v else {
                return Err(err(format!("{k} must be a list")));
            };
            if let Some(Value::Array(list)) = original.get_mut(field) {
                list.retain(|x| !gone.contains(x));
            }
            continue;
        }
        if k.starts_with('$') {
            continue;
        }
        if v.is_null() {
            original.remove(k);
            continue;
        }
        let field = schema.field(k);
        let child = field.and_then(|f| f.schema).unwrap_or(&PLAIN);
        match (original.get_mut(k), v) {
            (Some(Value::Object(o)), Value::Object(p)) => merge_map(o, p, child)?,
            (_, Value::Object(p)) => {
                // A new object: built by merging, so its directives act.
                let mut fresh = Map::new();
                merge_map(&mut fresh, p, child)?;
                original.insert(k.clone(), Value::Object(fresh));
            }
            (cur, Value::Array(p)) => {
                let list = match field.and_then(|f| f.list) {
                    Some(how) => {
                        let original = match cur {
                            Some(Value::Array(o)) => std::mem::take(o),
                            _ => Vec::new(),
                        };
                        let order = element_order(patch, k)?;
                        merge_list(original, p, order, how, child)?
                    }
                    None => p.clone(),
                };
                original.insert(k.clone(), Value::Array(list));
            }
            (_, scalar) => {
                original.insert(k.clone(), scalar.clone());
            }
        }
    }
    // An order for a list the patch does not otherwise touch.
    for (k, _) in patch {
        let Some(name) = k.strip_prefix(SET_ORDER) else {
            continue;
        };
        let Some(how) = schema.field(name).and_then(|f| f.list) else {
            return Err(err(format!("{k}: {name} is not a merging list")));
        };
        if patch.contains_key(name) {
            continue;
        }
        if let Some(Value::Array(list)) = original.get_mut(name) {
            let order = element_order(patch, name)?;
            *list = merge_list(std::mem::take(list), &[], order, how, &PLAIN)?;
        }
    }
    Ok(())
}

/// The `$setElementOrder/<name>` list of a patch, if it has one.
fn element_order<'a>(
    patch: &'a Map<String, Value>,
    name: &str,
) -> Result<Option<&'a [Value]>, PatchError> {
    match patch.get(&format!("{SET_ORDER}{name}")) {
        None => Ok(None),
        Some(Value::Array(order)) => Ok(Some(order)),
        Some(_) => Err(err(format!("{SET_ORDER}{name} must be a list"))),
    }
}

/// Merges a patch list into a merging list, then orders the result as
/// Kubernetes does: the elements the patch names in the patch's order (or
/// its `$setElementOrder`), the others interleaved by their old places.
fn merge_list(
    mut merged: Vec<Value>,
    patch: &[Value],
    order: Option<&[Value]>,
    how: List,
    element: &Schema,
) -> Result<Vec<Value>, PatchError> {
    let replace = patch
        .iter()
        .any(|p| p.get(PATCH).and_then(Value::as_str) == Some("replace"));
    if replace {
        return Ok(patch
            .iter()
            .filter(|p| p.get(PATCH).is_none())
            .map(|p| match p {
                Value::Object(m) => Value::Object(strip_directives(m)),
                other => other.clone(),
            })
            .collect());
    }
    let key = match how {
        List::ByKey(key) => Some(key),
        List::Set => None,
    };
    let id = |v: &Value| -> Option<Value> {
        match key {
            Some(k) => v.get(k).cloned(),
            None => Some(v.clone()),
        }
    };
    let server_order: Vec<Value> = merged.iter().filter_map(id).collect();
    let mut named: Vec<Value> = Vec::new();
    for p in patch {
        match key {
            None => {
                if p.is_object() || p.is_array() {
                    return Err(err(format!(
                        "a list of scalars may not hold {p} in a patch"
                    )));
                }
                if !merged.contains(p) {
                    merged.push(p.clone());
                }
                named.push(p.clone());
            }
            Some(key) => {
                let Value::Object(pm) = p else {
                    return Err(err(format!(
                        "the list merges by {key:?}: element {p} is not an object"
                    )));
                };
                let Some(pid) = pm.get(key) else {
                    return Err(err(format!(
                        "map: {p} does not contain declared merge key: {key}"
                    )));
                };
                match pm.get(PATCH).and_then(Value::as_str) {
                    Some("delete") => {
                        merged.retain(|o| o.get(key) != Some(pid));
                        continue;
                    }
                    Some("merge") | None => {}
                    Some(other) => {
                        return Err(err(format!("unknown patch type: {other:?} in a list")));
                    }
                }
                match merged.iter_mut().find(|o| o.get(key) == Some(pid)) {
                    Some(Value::Object(o)) => merge_map(o, pm, element)?,
                    _ => {
                        let mut fresh = Map::new();
                        merge_map(&mut fresh, pm, element)?;
                        merged.push(Value::Object(fresh));
                    }
                }
                named.push(pid.clone());
            }
        }
    }
    let patch_order: Vec<Value> = match order {
        Some(o) => o.iter().filter_map(id).collect(),
        None => named.clone(),
    };
    if patch_order.is_empty() && named.is_empty() {
        return Ok(merged);
    }
    let (mut patched, server_only): (Vec<Value>, Vec<Value>) = merged
        .into_iter()
        .partition(|v| id(v).is_some_and(|i| named.contains(&i) || patch_order.contains(&i)));
    let rank = |v: &Value, order: &[Value]| id(v).and_then(|i| order.iter().position(|o| *o == i));
    patched.sort_by_key(|v| rank(v, &patch_order).unwrap_or(usize::MAX));
    // Interleave: a server-only element goes before a patched one when
    // both had places and its place was earlier.
    let mut out = Vec::with_capacity(patched.len() + server_only.len());
    let (mut left, mut right) = (
        server_only.into_iter().peekable(),
        patched.into_iter().peekable(),
    );
    loop {
        match (left.peek(), right.peek()) {
            (Some(l), Some(r)) => {
                let earlier = match (rank(l, &server_order), rank(r, &server_order)) {
                    (Some(a), Some(b)) => a < b,
                    _ => false,
                };
                let next = if earlier { left.next() } else { right.next() };
                out.extend(next);
            }
            (Some(_), None) => out.extend(left.next()),
            (None, Some(_)) => out.extend(right.next()),
            (None, None) => break,
        }
    }
    Ok(out)
}

fn strip_directives(m: &Map<String, Value>) -> Map<String, Value> {
    m.iter()
        .filter(|(k, _)| !k.starts_with('$'))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// The patch that takes a live object to `config` as kubectl's client-side
/// apply does: `config` itself (it wins where it speaks), plus the removal
/// of what `last` (the previously applied configuration) had and `config`
/// no longer has — `null` for fields, `$patch: delete` for keyed list
/// elements, `$deleteFromPrimitiveList` for scalars — plus the order of
/// each merging list. What others set stays.
pub fn three_way(last: Option<&Value>, config: &Value, schema: &Schema) -> Value {
    let mut patch = config.clone();
    if let (Some(Value::Object(last)), Value::Object(config), Value::Object(out)) =
        (last, config, &mut patch)
    {
        removals(out, last, config, schema);
    }
    patch
}

fn removals(
    out: &mut Map<String, Value>,
    last: &Map<String, Value>,
    config: &Map<String, Value>,
    schema: &Schema,
) {
    for (k, lv) in last {
        let Some(cv) = config.get(k) else {
            out.insert(k.clone(), Value::Null);
            continue;
        };
        let field = schema.field(k);
        let child = field.and_then(|f| f.schema).unwrap_or(&PLAIN);
        match (lv, cv, field.and_then(|f| f.list)) {
            (Value::Object(l), Value::Object(c), _) => {
                if let Some(Value::Object(o)) = out.get_mut(k) {
                    removals(o, l, c, child);
                }
            }
            (Value::Array(l), Value::Array(c), Some(List::ByKey(key))) => {
                let Some(Value::Array(o)) = out.get_mut(k) else {
                    continue;
                };
                let order: Vec<Value> = c
                    .iter()
                    .filter_map(|e| e.get(key))
                    .map(|id| serde_json::json!({ key: id }))
                    .collect();
                for le in l {
                    let Some(id) = le.get(key) else { continue };
                    match c.iter().position(|ce| ce.get(key) == Some(id)) {
                        None => o.push(serde_json::json!({ key: id, PATCH: "delete" })),
                        Some(i) => {
                            if let (Value::Object(lm), Value::Object(cm), Some(Value::Object(om))) =
                                (le, &c[i], o.get_mut(i))
                            {
                                removals(om, lm, cm, child);
                            }
                        }
                    }
                }
                out.insert(format!("{SET_ORDER}{k}"), Value::Array(order));
            }
            (Value::Array(l), Value::Array(c), Some(List::Set)) => {
                let gone: Vec<Value> = l.iter().filter(|x| !c.contains(x)).cloned().collect();
                if !gone.is_empty() {
                    out.insert(format!("{DELETE_PRIMITIVE}{k}"), Value::Array(gone));
                }
            }
            _ => {}
        }
    }
}
