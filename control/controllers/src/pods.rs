//! Facts about pods every controller asks: active, ready, owned by whom.

use skiff_api::Pod;
use skiff_api::v1::{OwnerReference, PodTemplateSpec};

/// Not finished and not being deleted: it counts toward replicas.
pub fn active(p: &Pod) -> bool {
    !finished(p) && !terminating(p)
}

/// Succeeded or Failed: its containers are done.
pub fn finished(p: &Pod) -> bool {
    let phase = p.status.as_ref().map(|s| s.phase.as_str()).unwrap_or("");
    phase == "Succeeded" || phase == "Failed"
}

pub fn terminating(p: &Pod) -> bool {
    p.metadata
        .as_ref()
        .is_some_and(|m| m.deletion_timestamp.is_some())
}

pub fn ready(p: &Pod) -> bool {
    p.status.as_ref().is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.r#type == "Ready" && c.status == "True")
    })
}

pub fn scheduled(p: &Pod) -> bool {
    p.spec.as_ref().is_some_and(|s| !s.node_name.is_empty())
}

/// The controller owner reference of an object, if any.
pub fn controller_of(refs: &[OwnerReference]) -> Option<&OwnerReference> {
    refs.iter().find(|r| r.controller == Some(true))
}

pub fn owner_ref(kind: &str, api_version: &str, name: &str, uid: &str) -> OwnerReference {
    OwnerReference {
        api_version: api_version.to_string(),
        kind: kind.to_string(),
        name: name.to_string(),
        uid: uid.to_string(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// A stable hash of a pod template (FNV-1a of its JSON form, whose maps
/// are ordered), written as Kubernetes writes `pod-template-hash`.
pub fn template_hash(t: &PodTemplateSpec) -> String {
    let bytes = serde_json::to_vec(t).unwrap_or_default();
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut out = String::new();
    let mut v = h;
    for _ in 0..10 {
        out.push(ALPHABET[(v % ALPHABET.len() as u64) as usize] as char);
        v /= ALPHABET.len() as u64;
    }
    out
}
