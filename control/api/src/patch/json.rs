//! JSON patch (RFC 6902, `application/json-patch+json`): a list of `add`,
//! `remove`, `replace`, `move`, `copy` and `test` operations on JSON
//! pointers (RFC 6901), applied in order, all or nothing.

use serde_json::Value;

use super::PatchError;

/// One operation, checked when the patch is parsed.
#[derive(Clone, Debug, PartialEq)]
pub enum Operation {
    Add { path: String, value: Value },
    Remove { path: String },
    Replace { path: String, value: Value },
    Move { from: String, path: String },
    Copy { from: String, path: String },
    Test { path: String, value: Value },
}

impl Operation {
    /// The path it writes or tests.
    pub fn path(&self) -> &str {
        match self {
            Operation::Add { path, .. }
            | Operation::Remove { path }
            | Operation::Replace { path, .. }
            | Operation::Move { path, .. }
            | Operation::Copy { path, .. }
            | Operation::Test { path, .. } => path,
        }
    }
}

/// Parses a JSON patch document.
pub fn parse(doc: &Value) -> Result<Vec<Operation>, PatchError> {
    let Value::Array(ops) = doc else {
        return Err(PatchError(
            "a JSON patch must be a list of operations".into(),
        ));
    };
    ops.iter()
        .enumerate()
        .map(|(i, op)| {
            let at = |m: &str| PatchError(format!("operation {i}: {m}"));
            let text = |name: &str| -> Result<String, PatchError> {
                let s = op
                    .get(name)
                    .and_then(Value::as_str)
                    .ok_or_else(|| at(&format!("missing {name:?}")))?;
                if !s.is_empty() && !s.starts_with('/') {
                    return Err(at(&format!("{name} {s:?} is not a JSON pointer")));
                }
                Ok(s.to_string())
            };
            let value = || {
                op.get("value")
                    .cloned()
                    .ok_or_else(|| at("missing \"value\""))
            };
            match op.get("op").and_then(Value::as_str) {
                Some("add") => Ok(Operation::Add {
                    path: text("path")?,
                    value: value()?,
                }),
                Some("remove") => Ok(Operation::Remove {
                    path: text("path")?,
                }),
                Some("replace") => Ok(Operation::Replace {
                    path: text("path")?,
                    value: value()?,
                }),
                Some("move") => Ok(Operation::Move {
                    from: text("from")?,
                    path: text("path")?,
                }),
                Some("copy") => Ok(Operation::Copy {
                    from: text("from")?,
                    path: text("path")?,
                }),
                Some("test") => Ok(Operation::Test {
                    path: text("path")?,
                    value: value()?,
                }),
                Some(other) => Err(at(&format!("unknown op {other:?}"))),
                None => Err(at("missing \"op\"")),
            }
        })
        .collect()
}

/// Applies the operations in order; on any failure `target` is unchanged.
pub fn apply(target: &mut Value, ops: &[Operation]) -> Result<(), PatchError> {
    let mut doc = target.clone();
    for (i, op) in ops.iter().enumerate() {
        step(&mut doc, op)
            .map_err(|e| PatchError(format!("operation {i} ({}): {e}", op.path())))?;
    }
    *target = doc;
    Ok(())
}

fn step(doc: &mut Value, op: &Operation) -> Result<(), String> {
    match op {
        Operation::Add { path, value } => add(doc, path, value.clone()),
        Operation::Remove { path } => remove(doc, path).map(drop),
        Operation::Replace { path, value } => {
            let slot = doc
                .pointer_mut(path)
                .ok_or_else(|| format!("{path:?} does not exist"))?;
            *slot = value.clone();
            Ok(())
        }
        Operation::Move { from, path } => {
            if path.starts_with(&format!("{from}/")) {
                return Err(format!("cannot move {from:?} into itself"));
            }
            let v = remove(doc, from)?;
            add(doc, path, v)
        }
        Operation::Copy { from, path } => {
            let v = doc
                .pointer(from)
                .cloned()
                .ok_or_else(|| format!("{from:?} does not exist"))?;
            add(doc, path, v)
        }
        Operation::Test { path, value } => match doc.pointer(path) {
            Some(v) if v == value => Ok(()),
            Some(v) => Err(format!("test failed: the value is {v}, not {value}")),
            None => Err(format!("test failed: {path:?} does not exist")),
        },
    }
}

/// The parent's pointer and the last reference token, unescaped.
fn split(path: &str) -> Result<(&str, String), String> {
    let i = path
        .rfind('/')
        .ok_or_else(|| "the whole document cannot be added or removed".to_string())?;
    let token = path[i + 1..].replace("~1", "/").replace("~0", "~");
    Ok((&path[..i], token))
}

fn add(doc: &mut Value, path: &str, value: Value) -> Result<(), String> {
    if path.is_empty() {
        *doc = value;
        return Ok(());
    }
    let (parent, token) = split(path)?;
    match doc.pointer_mut(parent) {
        Some(Value::Object(m)) => {
            m.insert(token, value);
            Ok(())
        }
        Some(Value::Array(a)) => {
            let at = if token == "-" {
                a.len()
            } else {
                index(&token, a.len() + 1)?
            };
            a.insert(at, value);
            Ok(())
        }
        Some(_) => Err(format!("{parent:?} is neither an object nor a list")),
        None => Err(format!("{parent:?} does not exist")),
    }
}

fn remove(doc: &mut Value, path: &str) -> Result<Value, String> {
    let (parent, token) = split(path)?;
    match doc.pointer_mut(parent) {
        Some(Value::Object(m)) => m
            .remove(&token)
            .ok_or_else(|| format!("{path:?} does not exist")),
        Some(Value::Array(a)) => {
            let at = index(&token, a.len())?;
            Ok(a.remove(at))
        }
        _ => Err(format!("{path:?} does not exist")),
    }
}

fn index(token: &str, len: usize) -> Result<usize, String> {
    let valid = !token.is_empty() && (token == "0" || !token.starts_with('0'));
    match token.parse::<usize>() {
        Ok(i) if valid && i < len => Ok(i),
        _ => Err(format!("index {token:?} is out of range")),
    }
}
