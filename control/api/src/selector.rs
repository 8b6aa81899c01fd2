//! Label selectors (`app=web,tier!=db,env in (a,b),!canary`) and field
//! selectors (`spec.nodeName=n1`), parsed from their text form or from a
//! `LabelSelector` object, and matched against objects.

use std::collections::BTreeMap;
use std::fmt;

use crate::Resource;
use crate::v1::LabelSelector;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    DoesNotExist(String),
}

impl Requirement {
    fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        match self {
            Requirement::Equals(k, v) => labels.get(k) == Some(v),
            Requirement::NotEquals(k, v) => labels.get(k) != Some(v),
            Requirement::In(k, vs) => labels.get(k).is_some_and(|v| vs.contains(v)),
            Requirement::NotIn(k, vs) => labels.get(k).is_none_or(|v| !vs.contains(v)),
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::DoesNotExist(k) => !labels.contains_key(k),
        }
    }
}

/// A conjunction of requirements; the empty selector matches everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selector {
    requirements: Vec<Requirement>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SelectorError(pub String);

impl fmt::Display for SelectorError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SelectorError {}

/// Splits on commas that are not inside parentheses.
fn split_top_level(text: &str) -> Result<Vec<&str>, SelectorError> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0i32, 0usize);
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth < 0 {
                    return Err(SelectorError(format!("unbalanced ')' in {text:?}")));
                }
            }
            ',' if depth == 0 => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err(SelectorError(format!("unbalanced '(' in {text:?}")));
    }
    parts.push(&text[start..]);
    Ok(parts)
}

fn check_key(key: &str, whole: &str) -> Result<String, SelectorError> {
    let key = key.trim();
    if crate::names::label_key_error(key).is_some() {
        return Err(SelectorError(format!(
            "invalid label key {key:?} in selector {whole:?}"
        )));
    }
    Ok(key.to_string())
}

fn check_value(value: &str, whole: &str) -> Result<String, SelectorError> {
    let value = value.trim();
    if crate::names::label_value_error(value).is_some() {
        return Err(SelectorError(format!(
            "invalid label value {value:?} in selector {whole:?}"
        )));
    }
    Ok(value.to_string())
}

fn parse_set(rest: &str, whole: &str) -> Result<Vec<String>, SelectorError> {
    let inner = rest
        .trim()
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .ok_or_else(|| {
            SelectorError(format!(
                "expected a parenthesized set of values in {whole:?}"
            ))
        })?;
    inner.split(',').map(|v| check_value(v, whole)).collect()
}

impl Selector {
    pub fn everything() -> Selector {
        Selector::default()
    }

    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    pub fn requirements(&self) -> &[Requirement] {
        &self.requirements
    }

    pub fn parse(text: &str) -> Result<Selector, SelectorError> {
        let mut requirements = Vec::new();
        if text.trim().is_empty() {
            return Ok(Selector { requirements });
        }
        for part in split_top_level(text)? {
            let part = part.trim();
            let req = if let Some(key) = part.strip_prefix('!') {
                Requirement::DoesNotExist(check_key(key, text)?)
            } else if let Some((k, v)) = part.split_once("!=") {
                Requirement::NotEquals(check_key(k, text)?, check_value(v, text)?)
            } else if let Some((k, v)) = part.split_once("==") {
                Requirement::Equals(check_key(k, text)?, check_value(v, text)?)
            } else if let Some((k, v)) = part.split_once('=') {
                Requirement::Equals(check_key(k, text)?, check_value(v, text)?)
            } else if let Some((k, rest)) = part.split_once(" notin ") {
                Requirement::NotIn(check_key(k, text)?, parse_set(rest, text)?)
            } else if let Some((k, rest)) = part.split_once(" in ") {
                Requirement::In(check_key(k, text)?, parse_set(rest, text)?)
            } else {
                Requirement::Exists(check_key(part, text)?)
            };
            requirements.push(req);
        }
        Ok(Selector { requirements })
    }

    /// A `LabelSelector` object (matchLabels and matchExpressions).
    pub fn from_label_selector(sel: &LabelSelector) -> Result<Selector, SelectorError> {
        let mut requirements: Vec<Requirement> = sel
            .match_labels
            .iter()
            .map(|(k, v)| Requirement::Equals(k.clone(), v.clone()))
            .collect();
        for expr in &sel.match_expressions {
            let key = expr.key.clone();
            requirements.push(match expr.operator.as_str() {
                "In" => Requirement::In(key, expr.values.clone()),
                "NotIn" => Requirement::NotIn(key, expr.values.clone()),
                "Exists" => Requirement::Exists(key),
                "DoesNotExist" => Requirement::DoesNotExist(key),
                other => {
                    return Err(SelectorError(format!(
                        "unsupported operator {other:?}: must be In, NotIn, Exists or DoesNotExist"
                    )));
                }
            });
        }
        Ok(Selector { requirements })
    }

    /// A `map<string,string>` selector such as a Service's.
    pub fn from_map(map: &BTreeMap<String, String>) -> Selector {
        Selector {
            requirements: map
                .iter()
                .map(|(k, v)| Requirement::Equals(k.clone(), v.clone()))
                .collect(),
        }
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.requirements.iter().all(|r| r.matches(labels))
    }
}

/// `field=value` / `field==value` / `field!=value` terms, comma-separated.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FieldSelector {
    terms: Vec<(String, String, bool)>,
}

impl FieldSelector {
    pub fn parse(text: &str) -> Result<FieldSelector, SelectorError> {
        let mut terms = Vec::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (field, value, equal) = if let Some((f, v)) = part.split_once("!=") {
                (f, v, false)
            } else if let Some((f, v)) = part.split_once("==") {
                (f, v, true)
            } else if let Some((f, v)) = part.split_once('=') {
                (f, v, true)
            } else {
                return Err(SelectorError(format!(
                    "invalid field selector term {part:?}: expected field=value or field!=value"
                )));
            };
            terms.push((field.trim().to_string(), value.trim().to_string(), equal));
        }
        Ok(FieldSelector { terms })
    }

    pub fn is_empty(&self) -> bool {
        self.terms.is_empty()
    }

    /// Checks that every field is one the kind supports.
    pub fn check_fields<R: Resource>(&self, sample: &R) -> Result<(), SelectorError> {
        for (field, _, _) in &self.terms {
            if sample.field(field).is_none() {
                return Err(SelectorError(format!(
                    "field label not supported: {field:?} is not a selectable field of {}",
                    R::KIND
                )));
            }
        }
        Ok(())
    }

    pub fn matches<R: Resource>(&self, obj: &R) -> bool {
        self.matches_with(|f| obj.field(f))
    }

    /// Matches through a field accessor (for an [`crate::Object`]).
    pub fn matches_with(&self, field: impl Fn(&str) -> Option<String>) -> bool {
        self.terms.iter().all(|(f, value, equal)| {
            let actual = field(f).unwrap_or_default();
            (actual == *value) == *equal
        })
    }

    /// The value a `field=value` term requires, if any: lets callers narrow
    /// a scan (`spec.nodeName`).
    pub fn required_value(&self, field: &str) -> Option<&str> {
        self.terms
            .iter()
            .find(|(f, _, eq)| f == field && *eq)
            .map(|(_, v, _)| v.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1::{Pod, PodSpec};

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn label_selector_syntax() {
        let s = Selector::parse("app=web, tier!=db,env in (prod, staging),!canary,team").unwrap();
        assert_eq!(s.requirements().len(), 5);
        assert!(s.matches(&labels(&[("app", "web"), ("env", "prod"), ("team", "x")])));
        assert!(!s.matches(&labels(&[("app", "web"), ("env", "dev"), ("team", "x")])));
        assert!(!s.matches(&labels(&[
            ("app", "web"),
            ("env", "prod"),
            ("team", "x"),
            ("canary", "")
        ])));
        assert!(!s.matches(&labels(&[
            ("app", "web"),
            ("env", "prod"),
            ("tier", "db"),
            ("team", "x")
        ])));
        let n = Selector::parse("env notin (a,b)").unwrap();
        assert!(n.matches(&labels(&[])));
        assert!(!n.matches(&labels(&[("env", "a")])));
        assert!(Selector::parse("").unwrap().matches(&labels(&[("x", "y")])));
        for bad in ["a=b=c", "env in (a", "-bad=x", "env in a", "a=b)"] {
            assert!(Selector::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn field_selector() {
        let pod = Pod {
            spec: Some(PodSpec {
                node_name: "n1".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let f = FieldSelector::parse("spec.nodeName=n1").unwrap();
        assert!(f.matches(&pod));
        assert_eq!(f.required_value("spec.nodeName"), Some("n1"));
        assert!(
            !FieldSelector::parse("spec.nodeName!=n1")
                .unwrap()
                .matches(&pod)
        );
        assert!(
            FieldSelector::parse("spec.color=red")
                .unwrap()
                .check_fields(&pod)
                .is_err()
        );
        assert!(FieldSelector::parse("nonsense").is_err());
    }
}
