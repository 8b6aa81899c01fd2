//! A JSON `[target, patch]` through the three patch types Kubernetes has:
//! JSON merge patch, strategic merge patch (with a Deployment's and a
//! Pod's list semantics) and JSON patch. None may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use skiff_api::Kind;
use skiff_api::patch::{json, merge_patch, schema, strategic};

fuzz_target!(|data: &[u8]| {
    let Ok(Value::Array(pair)) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let [target, patch] = <[Value; 2]>::try_from(pair).unwrap_or_else(|p| {
        let mut p = p.into_iter();
        [
            p.next().unwrap_or(Value::Null),
            p.next().unwrap_or(Value::Null),
        ]
    });
    let mut merged = target.clone();
    merge_patch(&mut merged, &patch);
    for kind in [Kind::Deployment, Kind::Pod, Kind::Service] {
        let mut t = target.clone();
        let _ = strategic::apply(&mut t, &patch, schema::of(kind));
        let _ = strategic::three_way(Some(&target), &patch, schema::of(kind));
    }
    if let Ok(ops) = json::parse(&patch) {
        let mut t = target.clone();
        let _ = json::apply(&mut t, &ops);
    }
});
