//! `metadata.managedFields` on the objects the registry stores: plain
//! writes that name a field manager (REST requests always do: the
//! `fieldManager` parameter or the client's User-Agent) record what they
//! changed; server-side apply computes its own (`skiff_api::patch::fields`).
//! Entries for a subresource (`status`) that clients send are kept as
//! they are.

use serde_json::Value;
use skiff_api::patch::fields::{self, Entry};
use skiff_api::v1::{FieldsV1, ManagedFieldsEntry, ObjectMeta};
use skiff_api::wire::Time;
use skiff_api::{Kind, Resource};

/// The entries of the main resource, as field sets.
pub fn entries(meta: &ObjectMeta) -> Vec<Entry> {
    meta.managed_fields
        .iter()
        .filter(|e| e.subresource.is_empty())
        .map(|e| Entry {
            manager: e.manager.clone(),
            operation: e.operation.clone(),
            api_version: e.api_version.clone(),
            fields: e
                .fields_v1
                .as_ref()
                .and_then(|f| serde_json::from_str::<Value>(&f.raw).ok())
                .map(|v| fields::from_fields_v1(&v))
                .unwrap_or_default(),
        })
        .collect()
}

/// The entries to store: unchanged ones keep their time, changed and new
/// ones get now; subresource entries stay.
pub fn to_meta(
    kind: Kind,
    before: &[ManagedFieldsEntry],
    entries: Vec<Entry>,
) -> Vec<ManagedFieldsEntry> {
    let old = self::entries_by_key(before);
    let mut out: Vec<ManagedFieldsEntry> = entries
        .into_iter()
        .map(|e| {
            let v1 = fields::to_fields_v1(&e.fields).to_string();
            if let Some(prev) = old
                .iter()
                .find(|p| p.manager == e.manager && p.operation == e.operation)
                && prev.fields_v1.as_ref().is_some_and(|f| f.raw == v1)
            {
                return (*prev).clone();
            }
            ManagedFieldsEntry {
                manager: e.manager,
                operation: e.operation,
                api_version: kind.api_version(),
                time: Some(Time::now_seconds()),
                fields_type: "FieldsV1".into(),
                fields_v1: Some(FieldsV1 { raw: v1 }),
                subresource: String::new(),
            }
        })
        .collect();
    out.extend(before.iter().filter(|e| !e.subresource.is_empty()).cloned());
    out
}

fn entries_by_key(before: &[ManagedFieldsEntry]) -> Vec<&ManagedFieldsEntry> {
    before.iter().filter(|e| e.subresource.is_empty()).collect()
}

/// Records a plain write of `new` (over `old`, `None` on create) by
/// `manager` in `new`'s managedFields.
pub fn track<R: Resource>(old: Option<&R>, new: &mut R, manager: &str) {
    let schema = skiff_api::patch::schema::of(R::KIND);
    let before = old
        .map(|o| o.meta().managed_fields.clone())
        .unwrap_or_default();
    let old_json = old.and_then(|o| serde_json::to_value(o).ok());
    let Ok(new_json) = serde_json::to_value(&*new) else {
        return;
    };
    let updated = fields::update(
        old_json.as_ref(),
        &new_json,
        schema,
        &entries_by_meta(old),
        manager,
    );
    new.meta_mut().managed_fields = to_meta(R::KIND, &before, updated);
}

fn entries_by_meta<R: Resource>(old: Option<&R>) -> Vec<Entry> {
    old.map(|o| entries(o.meta())).unwrap_or_default()
}

/// The manager Kubernetes infers for a request without `fieldManager`:
/// the User-Agent up to its first `/` (`kubectl`), at most 128 bytes.
pub fn from_user_agent(agent: &str) -> String {
    let name = agent.split('/').next().unwrap_or("").trim();
    let name = if name.is_empty() { "unknown" } else { name };
    name.chars().take(128).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff_api::ConfigMap;

    #[test]
    fn a_write_records_its_manager_and_a_no_op_changes_nothing() {
        let mut cm = ConfigMap::default();
        cm.meta_mut().name = "c".into();
        cm.data.insert("a".into(), "1".into());
        track(None, &mut cm, "kubectl-create");
        let e = &cm.meta().managed_fields;
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].manager, "kubectl-create");
        assert_eq!(e[0].operation, "Update");
        assert_eq!(e[0].api_version, "v1");
        assert_eq!(
            e[0].fields_v1.as_ref().unwrap().raw,
            r#"{"f:data":{"f:a":{}}}"#
        );
        let mut same = cm.clone();
        track(Some(&cm), &mut same, "other");
        assert_eq!(same.meta().managed_fields, cm.meta().managed_fields);
        let mut changed = cm.clone();
        changed.data.insert("a".into(), "2".into());
        track(Some(&cm), &mut changed, "kubectl-edit");
        let managers: Vec<&str> = changed
            .meta()
            .managed_fields
            .iter()
            .map(|e| e.manager.as_str())
            .collect();
        assert_eq!(managers, ["kubectl-edit"], "the only field moved");
        assert_eq!(
            from_user_agent("kubectl/v1.32.0 (linux/amd64) kubernetes/abc"),
            "kubectl"
        );
        assert_eq!(from_user_agent(""), "unknown");
    }
}
