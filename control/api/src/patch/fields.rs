//! Field ownership for server-side apply, in the model of Kubernetes'
//! structured-merge-diff: every write records which fields its manager set
//! (`metadata.managedFields`, as `FieldsV1`); an apply sets the fields of
//! its configuration, removes the ones it set before and no longer names
//! (unless another manager owns them too), and is refused with the
//! conflicting fields when it would change a value another manager owns —
//! unless forced, when that ownership moves to it. Lists merge by the keys
//! of [`schema`] (`k:{"name":"web"}`), scalar sets by value (`v:"x"`), and
//! every other list is atomic, one field.
//!
//! Pure functions on JSON values; the API server decides what to store.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde_json::{Map, Value};

use super::schema::{List, PLAIN, Schema};

/// One step of a path: `f:name`, `k:{"name":"web"}` or `v:"x"`.
pub type Step = String;
/// A field, or a list element (ending in a `k:`/`v:` step).
pub type Path = Vec<Step>;
/// The fields one manager owns.
pub type FieldSet = BTreeSet<Path>;

/// Top-level and metadata fields no manager owns (the server sets them).
const UNOWNED_TOP: &[&str] = &["apiVersion", "kind", "status"];
const UNOWNED_META: &[&str] = &[
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "managedFields",
    "selfLink",
    "generateName",
];

fn field(name: &str) -> Step {
    format!("f:{name}")
}

fn key_step(key: &str, value: &Value) -> Step {
    let mut m = Map::new();
    m.insert(key.to_string(), value.clone());
    format!("k:{}", Value::Object(m))
}

fn value_step(value: &Value) -> Step {
    format!("v:{value}")
}

fn is_element(step: &str) -> bool {
    step.starts_with("k:") || step.starts_with("v:")
}

/// The fields an object (or an apply configuration) sets.
pub fn fields_of(obj: &Value, schema: &Schema) -> FieldSet {
    let mut out = FieldSet::new();
    let Value::Object(top) = obj else {
        return out;
    };
    let mut path = Vec::new();
    for (k, v) in top {
        if UNOWNED_TOP.contains(&k.as_str()) {
            continue;
        }
        if k == "metadata"
            && let Value::Object(meta) = v
        {
            let meta_schema = schema
                .field("metadata")
                .and_then(|f| f.schema)
                .unwrap_or(&PLAIN);
            path.push(field("metadata"));
            for (mk, mv) in meta {
                if !UNOWNED_META.contains(&mk.as_str()) {
                    walk_field(mk, mv, meta_schema, &mut path, &mut out);
                }
            }
            path.pop();
            continue;
        }
        walk_field(k, v, schema, &mut path, &mut out);
    }
    out
}

fn walk_field(name: &str, v: &Value, parent: &Schema, path: &mut Path, out: &mut FieldSet) {
    let spec = parent.field(name);
    let child = spec.and_then(|f| f.schema).unwrap_or(&PLAIN);
    path.push(field(name));
    match (v, spec.and_then(|f| f.list)) {
        (Value::Object(m), _) if !m.is_empty() => {
            for (k, cv) in m {
                walk_field(k, cv, child, path, out);
            }
        }
        (Value::Array(items), Some(List::ByKey(key))) if !items.is_empty() => {
            for item in items {
                let Some(id) = item.get(key) else {
                    // An element without its key: the list is one field.
                    out.insert(path.clone());
                    continue;
                };
                path.push(key_step(key, id));
                out.insert(path.clone());
                if let Value::Object(m) = item {
                    for (k, cv) in m {
                        walk_field(k, cv, child, path, out);
                    }
                }
                path.pop();
            }
        }
        (Value::Array(items), Some(List::Set)) if !items.is_empty() => {
            for item in items {
                path.push(value_step(item));
                out.insert(path.clone());
                path.pop();
            }
        }
        _ => {
            out.insert(path.clone());
        }
    }
    path.pop();
}

/// The value at a path (an element: the element), if the object has it.
pub fn value_at<'a>(obj: &'a Value, path: &[Step]) -> Option<&'a Value> {
    let mut cur = obj;
    for step in path {
        cur = if let Some(name) = step.strip_prefix("f:") {
            cur.get(name)?
        } else {
            let items = cur.as_array()?;
            find_element(items, step)?
        };
    }
    Some(cur)
}

fn find_element<'a>(items: &'a [Value], step: &str) -> Option<&'a Value> {
    if let Some(k) = step.strip_prefix("k:") {
        let want: Map<String, Value> = serde_json::from_str(k).ok()?;
        items
            .iter()
            .find(|i| want.iter().all(|(key, v)| i.get(key) == Some(v)))
    } else {
        let want: Value = serde_json::from_str(step.strip_prefix("v:")?).ok()?;
        items.iter().find(|i| **i == want)
    }
}

/// Removes a field or element.
fn remove_at(obj: &mut Value, path: &[Step]) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut cur = &mut *obj;
    for step in parents {
        let next = if let Some(name) = step.strip_prefix("f:") {
            cur.get_mut(name)
        } else {
            let Some(items) = cur.as_array_mut() else {
                return;
            };
            let Some(found) = find_element(items, step).cloned() else {
                return;
            };
            items.iter_mut().find(|i| **i == found)
        };
        match next {
            Some(n) => cur = n,
            None => return,
        }
    }
    if let Some(name) = last.strip_prefix("f:") {
        if let Some(m) = cur.as_object_mut() {
            m.remove(name);
        }
    } else if let Some(items) = cur.as_array_mut()
        && let Some(found) = find_element(items, last).cloned()
    {
        items.retain(|i| *i != found);
    }
}

/// Merges an apply configuration into the live object: objects field by
/// field, keyed lists element by element (the configuration's elements in
/// its order, the live object's others where they stood), everything else
/// replaced.
fn merge(live: &mut Value, config: &Value, schema: &Schema) {
    let (Value::Object(l), Value::Object(c)) = (&mut *live, config) else {
        *live = config.clone();
        return;
    };
    for (k, cv) in c {
        let spec = schema.field(k);
        let child = spec.and_then(|f| f.schema).unwrap_or(&PLAIN);
        match (l.get_mut(k), cv, spec.and_then(|f| f.list)) {
            (Some(lv @ Value::Object(_)), Value::Object(_), _) => merge(lv, cv, child),
            (Some(Value::Array(li)), Value::Array(ci), Some(how)) => {
                let id = |v: &Value| -> Option<Value> {
                    match how {
                        List::ByKey(key) => v.get(key).cloned(),
                        List::Set => Some(v.clone()),
                    }
                };
                let live: Vec<Value> = std::mem::take(li);
                let index = |items: &[Value]| -> HashMap<String, usize> {
                    items
                        .iter()
                        .enumerate()
                        .filter_map(|(i, v)| id(v).map(|k| (k.to_string(), i)))
                        .collect()
                };
                let (live_at, cfg_at) = (index(&live), index(ci));
                let mut used = vec![false; live.len()];
                let mut taken = vec![false; ci.len()];
                let mut out = Vec::with_capacity(live.len() + ci.len());
                let emit = |j: usize, used: &mut Vec<bool>, out: &mut Vec<Value>| {
                    let mut item = match id(&ci[j]).and_then(|k| live_at.get(&k.to_string())) {
                        Some(&i) => {
                            used[i] = true;
                            live[i].clone()
                        }
                        None => Value::Null,
                    };
                    merge(&mut item, &ci[j], child);
                    out.push(item);
                };
                let mut next = 0;
                for i in 0..live.len() {
                    if used[i] {
                        continue;
                    }
                    match id(&live[i]).and_then(|k| cfg_at.get(&k.to_string())) {
                        None => out.push(live[i].clone()),
                        // The configuration's elements up to this one
                        // come first, in its order.
                        Some(&at) => {
                            while next <= at {
                                if !taken[next] {
                                    taken[next] = true;
                                    emit(next, &mut used, &mut out);
                                }
                                next += 1;
                            }
                        }
                    }
                }
                for (j, _) in taken.iter().enumerate().filter(|(_, t)| !**t) {
                    emit(j, &mut used, &mut out);
                }
                *li = out;
            }
            _ => {
                l.insert(k.clone(), cv.clone());
            }
        }
    }
}

/// One `metadata.managedFields` entry, in its JSON form's terms.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    pub manager: String,
    /// `Apply` or `Update`.
    pub operation: String,
    /// The version its fields were written in (empty: the object's).
    pub api_version: String,
    pub fields: FieldSet,
}

impl Entry {
    /// How a conflict names it: `"kubectl"` for an applier, `"kubectl-set"
    /// using apps/v1` for an updater, as Kubernetes does.
    fn label(&self) -> String {
        if self.operation == "Update" && !self.api_version.is_empty() {
            format!("{:?} using {}", self.manager, self.api_version)
        } else {
            format!("{:?}", self.manager)
        }
    }
}

/// A field another manager owns that an apply would change.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Conflict {
    /// The manager as conflicts name it: `"kubectl-set" using apps/v1`.
    pub label: String,
    pub path: Path,
}

/// Every conflict of an apply, sorted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conflicts(pub Vec<Conflict>);

/// Kubernetes' wording: one conflict on a line, several grouped by
/// manager.
impl std::fmt::Display for Conflicts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.0.len();
        write!(
            f,
            "Apply failed with {n} conflict{}: ",
            if n == 1 { "" } else { "s" }
        )?;
        if let [c] = &self.0[..] {
            return write!(f, "conflict with {}: {}", c.label, render(&c.path));
        }
        let mut by: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        for c in &self.0 {
            by.entry(&c.label).or_default().push(render(&c.path));
        }
        let parts: Vec<String> = by
            .iter()
            .map(|(m, ps)| format!("conflicts with {m}:\n- {}", ps.join("\n- ")))
            .collect();
        f.write_str(&parts.join("\n"))
    }
}

/// `.spec.template.spec.containers[name="web"].image`, as Kubernetes
/// names a field in a conflict.
pub fn render(path: &[Step]) -> String {
    let mut out = String::new();
    for step in path {
        if let Some(name) = step.strip_prefix("f:") {
            out.push('.');
            out.push_str(name);
        } else if let Some(k) = step.strip_prefix("k:") {
            let m: Map<String, Value> = serde_json::from_str(k).unwrap_or_default();
            let parts: Vec<String> = m.iter().map(|(k, v)| format!("{k}={v}")).collect();
            out.push_str(&format!("[{}]", parts.join(",")));
        } else if let Some(v) = step.strip_prefix("v:") {
            out.push_str(&format!("[={v}]"));
        }
    }
    out
}

/// Server-side apply of `config` by `manager` to `live` (`None`: the object
/// is created). Returns the object to store and its managers' fields.
pub fn apply(
    live: Option<&Value>,
    config: &Value,
    schema: &Schema,
    managed: &[Entry],
    manager: &str,
    force: bool,
) -> Result<(Value, Vec<Entry>), Conflicts> {
    let wanted = fields_of(config, schema);
    let empty = Value::Object(Map::new());
    let live_v = live.unwrap_or(&empty);
    let mut entries: Vec<Entry> = managed.to_vec();
    // Fields of others whose value this apply changes.
    let mut conflicts = Vec::new();
    let mut taken: BTreeMap<usize, FieldSet> = BTreeMap::new();
    for (i, e) in entries.iter().enumerate() {
        if e.manager == manager && e.operation == "Apply" {
            continue;
        }
        for p in wanted.intersection(&e.fields) {
            let differs = if p.last().is_some_and(|s| is_element(s)) {
                value_at(live_v, p).is_none()
            } else {
                value_at(live_v, p) != value_at(config, p)
            };
            if differs {
                conflicts.push(Conflict {
                    label: e.label(),
                    path: p.clone(),
                });
                taken.entry(i).or_default().insert(p.clone());
            }
        }
    }
    if !conflicts.is_empty() && !force {
        conflicts.sort();
        conflicts.dedup();
        return Err(Conflicts(conflicts));
    }
    for (i, paths) in taken {
        entries[i].fields.retain(|p| !paths.contains(p));
    }
    let before: FieldSet = entries
        .iter()
        .find(|e| e.manager == manager && e.operation == "Apply")
        .map(|e| e.fields.clone())
        .unwrap_or_default();
    let others: FieldSet = entries
        .iter()
        .filter(|e| !(e.manager == manager && e.operation == "Apply"))
        .flat_map(|e| e.fields.iter().cloned())
        .collect();
    let mut out = live_v.clone();
    merge(&mut out, config, schema);
    // What this manager set before, no longer names, and no one else owns
    // (nor anything beneath it). A field inside a dropped one goes with
    // it: removed first, it could leave a keyed element unfindable.
    let below =
        |set: &FieldSet, p: &Path| set.iter().any(|w| w.len() > p.len() && w.starts_with(p));
    let dropped: Vec<&Path> = before
        .iter()
        .filter(|p| !wanted.contains(*p) && !others.contains(*p))
        .filter(|p| !below(&wanted, p) && !below(&others, p))
        .collect();
    let outermost = dropped.iter().filter(|p| {
        !dropped
            .iter()
            .any(|q| q.len() < p.len() && p.starts_with(q))
    });
    for p in outermost {
        remove_at(&mut out, p);
        // Containers the removal emptied go too, unless someone sets them.
        for end in (1..p.len()).rev() {
            let parent = &p[..end];
            let emptied = match value_at(&out, parent) {
                Some(Value::Object(m)) => m.is_empty(),
                Some(Value::Array(a)) => a.is_empty(),
                _ => false,
            };
            if !emptied || wanted.contains(parent) || others.contains(parent) {
                break;
            }
            remove_at(&mut out, parent);
        }
    }
    entries.retain(|e| !(e.manager == manager && e.operation == "Apply"));
    entries.push(Entry {
        manager: manager.to_string(),
        operation: "Apply".into(),
        api_version: String::new(),
        fields: wanted,
    });
    entries.retain(|e| !e.fields.is_empty());
    Ok((out, entries))
}

/// Records a plain write (create, update, patch) by `manager`: the fields
/// it added or changed become its own and leave every other manager;
/// fields the object no longer has leave everyone.
pub fn update(
    old: Option<&Value>,
    new: &Value,
    schema: &Schema,
    managed: &[Entry],
    manager: &str,
) -> Vec<Entry> {
    let after = fields_of(new, schema);
    let before = old.map(|o| fields_of(o, schema)).unwrap_or_default();
    let changed: FieldSet = after
        .iter()
        .filter(|p| {
            !before.contains(*p)
                || (!p.last().is_some_and(|s| is_element(s))
                    && old.and_then(|o| value_at(o, p)) != value_at(new, p))
        })
        .cloned()
        .collect();
    let mut entries: Vec<Entry> = managed
        .iter()
        .map(|e| Entry {
            manager: e.manager.clone(),
            operation: e.operation.clone(),
            api_version: e.api_version.clone(),
            fields: e
                .fields
                .iter()
                .filter(|p| {
                    let mine = e.manager == manager && e.operation == "Update";
                    after.contains(*p) && (mine || !changed.contains(*p))
                })
                .cloned()
                .collect(),
        })
        .collect();
    match entries
        .iter_mut()
        .find(|e| e.manager == manager && e.operation == "Update")
    {
        Some(e) => e.fields.extend(changed),
        None => entries.push(Entry {
            manager: manager.to_string(),
            operation: "Update".into(),
            api_version: String::new(),
            fields: changed,
        }),
    }
    entries.retain(|e| !e.fields.is_empty());
    entries
}

/// A field set as `FieldsV1` JSON (`{"f:spec":{"f:replicas":{}}}`, `"."`
/// marking an element owned as a whole).
pub fn to_fields_v1(set: &FieldSet) -> Value {
    let mut root = Map::new();
    for path in set {
        let mut cur = &mut root;
        for step in path {
            cur = cur
                .entry(step.clone())
                .or_insert_with(|| Value::Object(Map::new()))
                .as_object_mut()
                .expect("an object");
        }
        if path.last().is_some_and(|s| is_element(s)) {
            cur.insert(".".into(), Value::Object(Map::new()));
        }
    }
    Value::Object(root)
}

/// The field set a `FieldsV1` value names.
pub fn from_fields_v1(v: &Value) -> FieldSet {
    fn walk(m: &Map<String, Value>, path: &mut Path, out: &mut FieldSet) {
        for (k, v) in m {
            if k == "." {
                out.insert(path.clone());
                continue;
            }
            path.push(k.clone());
            match v.as_object() {
                Some(c) if !c.is_empty() => walk(c, path, out),
                _ => {
                    out.insert(path.clone());
                }
            }
            path.pop();
        }
    }
    let mut out = FieldSet::new();
    if let Some(m) = v.as_object() {
        walk(m, &mut Vec::new(), &mut out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Kind;
    use crate::patch::schema;
    use serde_json::json;

    fn deploy() -> &'static Schema {
        schema::of(Kind::Deployment)
    }

    fn config(image: &str, replicas: i64) -> Value {
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "labels": {"app": "web"}},
            "spec": {"replicas": replicas, "template": {"spec": {"containers": [
                {"name": "web", "image": image}
            ]}}}
        })
    }

    fn owner<'a>(entries: &'a [Entry], m: &str) -> &'a Entry {
        entries.iter().find(|e| e.manager == m).expect("an entry")
    }

    fn path(s: &[&str]) -> Path {
        s.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn field_sets_name_leaves_and_keyed_elements_and_round_trip() {
        let set = fields_of(&config("nginx:1", 2), deploy());
        let web = r#"k:{"name":"web"}"#;
        let containers = ["f:spec", "f:template", "f:spec", "f:containers"];
        let item: Path = path(&[&containers[..], &[web]].concat());
        assert!(set.contains(&item));
        assert!(set.contains(&path(&[&containers[..], &[web, "f:image"]].concat())));
        assert!(set.contains(&path(&["f:spec", "f:replicas"])));
        assert!(set.contains(&path(&["f:metadata", "f:labels", "f:app"])));
        assert!(
            !set.iter().any(|p| p == &path(&["f:metadata", "f:name"])),
            "the server's fields belong to no one"
        );
        let v1 = to_fields_v1(&set);
        assert_eq!(
            v1["f:spec"]["f:template"]["f:spec"]["f:containers"][web]["."],
            json!({})
        );
        assert_eq!(from_fields_v1(&v1), set);
        assert_eq!(
            render(&path(&[&containers[..], &[web, "f:image"]].concat())),
            r#".spec.template.spec.containers[name="web"].image"#
        );
    }

    #[test]
    fn an_apply_sets_removes_and_conflicts_as_kubernetes_does() {
        let (obj, entries) = apply(None, &config("nginx:1", 2), deploy(), &[], "a", false).unwrap();
        assert_eq!(obj["spec"]["replicas"], 2);
        // The same manager changes its own fields freely.
        let (obj, entries) = apply(
            Some(&obj),
            &config("nginx:2", 2),
            deploy(),
            &entries,
            "a",
            false,
        )
        .unwrap();
        assert_eq!(
            obj["spec"]["template"]["spec"]["containers"][0]["image"],
            "nginx:2"
        );
        // kubectl scale: the field moves to its writer.
        let mut scaled = obj.clone();
        scaled["spec"]["replicas"] = json!(5);
        let entries = update(Some(&obj), &scaled, deploy(), &entries, "kubectl");
        assert!(
            owner(&entries, "kubectl")
                .fields
                .contains(&path(&["f:spec", "f:replicas"]))
        );
        assert!(
            !owner(&entries, "a")
                .fields
                .contains(&path(&["f:spec", "f:replicas"]))
        );
        // Applying the old value again conflicts, naming the owner.
        let err = apply(
            Some(&scaled),
            &config("nginx:2", 2),
            deploy(),
            &entries,
            "a",
            false,
        )
        .unwrap_err();
        assert_eq!(
            err.0,
            [Conflict {
                label: "\"kubectl\"".into(),
                path: path(&["f:spec", "f:replicas"])
            }]
        );
        assert_eq!(
            err.to_string(),
            "Apply failed with 1 conflict: conflict with \"kubectl\": .spec.replicas"
        );
        // Applying the value it has now is no conflict; forcing takes it.
        apply(
            Some(&scaled),
            &config("nginx:2", 5),
            deploy(),
            &entries,
            "a",
            false,
        )
        .unwrap();
        let (obj, entries) = apply(
            Some(&scaled),
            &config("nginx:2", 2),
            deploy(),
            &entries,
            "a",
            true,
        )
        .unwrap();
        assert_eq!(obj["spec"]["replicas"], 2);
        assert!(
            entries.iter().all(|e| e.manager != "kubectl"),
            "{entries:?}"
        );
    }

    #[test]
    fn fields_an_apply_stops_naming_go_unless_someone_else_owns_them() {
        let mut cfg = config("nginx:1", 1);
        cfg["metadata"]["labels"] = json!({"app": "web", "tier": "front", "shared": "x"});
        let (obj, entries) = apply(None, &cfg, deploy(), &[], "a", false).unwrap();
        let other = json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "labels": {"shared": "x"}}});
        let (obj, entries) = apply(Some(&obj), &other, deploy(), &entries, "b", false).unwrap();
        let (obj, entries) = apply(
            Some(&obj),
            &config("nginx:1", 1),
            deploy(),
            &entries,
            "a",
            false,
        )
        .unwrap();
        assert_eq!(
            obj["metadata"]["labels"],
            json!({"app": "web", "shared": "x"}),
            "tier went; shared stays with b"
        );
        assert!(owner(&entries, "b").fields.contains(&path(&[
            "f:metadata",
            "f:labels",
            "f:shared"
        ])));
    }

    #[test]
    fn a_keyed_element_the_applier_stops_naming_goes_whole() {
        let mut cfg = config("nginx:1", 1);
        cfg["spec"]["template"]["spec"]["containers"][0]["env"] =
            json!([{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]);
        let (obj, entries) = apply(None, &cfg, deploy(), &[], "a", false).unwrap();
        cfg["spec"]["template"]["spec"]["containers"][0]["env"] =
            json!([{"name": "B", "value": "2"}]);
        let (obj, _) = apply(Some(&obj), &cfg, deploy(), &entries, "a", false).unwrap();
        assert_eq!(
            obj["spec"]["template"]["spec"]["containers"][0]["env"],
            json!([{"name": "B", "value": "2"}])
        );
        cfg["spec"]["template"]["spec"]["containers"][0]
            .as_object_mut()
            .unwrap()
            .remove("env");
        let (obj, entries) = apply(Some(&obj), &cfg, deploy(), &entries, "a", false).unwrap();
        let web = &obj["spec"]["template"]["spec"]["containers"][0];
        assert!(web.get("env").is_none(), "{web}");
        assert_eq!(web["image"], "nginx:1");
        assert!(
            !owner(&entries, "a")
                .fields
                .iter()
                .any(|p| p.iter().any(|s| s == "f:env"))
        );
    }

    #[test]
    fn keyed_lists_merge_by_key_and_keep_what_others_set() {
        let live = json!({"spec": {"template": {"spec": {"containers": [
            {"name": "web", "image": "nginx:1", "ports": [{"containerPort": 80}]},
            {"name": "side", "image": "busybox"}
        ]}}}});
        let entries = update(None, &live, deploy(), &[], "kubectl-create");
        let cfg = json!({"spec": {"template": {"spec": {"containers": [
            {"name": "log", "image": "fluent"},
            {"name": "web", "image": "nginx:2"}
        ]}}}});
        let (obj, _) = apply(Some(&live), &cfg, deploy(), &entries, "a", true).unwrap();
        let cs = &obj["spec"]["template"]["spec"]["containers"];
        let names: Vec<&str> = cs
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["log", "web", "side"]);
        assert_eq!(cs[1]["image"], "nginx:2");
        assert_eq!(cs[1]["ports"][0]["containerPort"], 80, "the port is kept");
    }

    #[test]
    fn an_update_owns_what_it_changed_and_drops_what_is_gone() {
        let a = json!({"metadata": {"labels": {"x": "1", "y": "2"}}, "data": {"k": "v"}});
        let entries = update(None, &a, &PLAIN, &[], "one");
        let b = json!({"metadata": {"labels": {"x": "1", "z": "3"}}, "data": {"k": "w"}});
        let entries = update(Some(&a), &b, &PLAIN, &entries, "two");
        let one = &owner(&entries, "one").fields;
        let two = &owner(&entries, "two").fields;
        assert!(one.contains(&path(&["f:metadata", "f:labels", "f:x"])));
        assert!(
            !one.iter().any(|p| p.last().unwrap() == "f:y"),
            "gone from the object"
        );
        assert!(
            two.contains(&path(&["f:data", "f:k"])) && !one.contains(&path(&["f:data", "f:k"]))
        );
        assert!(two.contains(&path(&["f:metadata", "f:labels", "f:z"])));
    }
}
