//! Reference behaviour: the cases of Kubernetes' own strategic merge patch
//! tests (k8s.io/apimachinery/pkg/util/strategicpatch, on its `MergeItem`
//! test type, rebuilt here as a schema), kubectl's everyday patches on a
//! Pod, and RFC 6902's examples.

use serde_json::{Value, json};

use super::schema::{self, Schema, keyed, object, set};
use super::{json as json_patch, strategic};
use crate::Kind;

static ITEM: Schema = Schema {
    fields: &[
        keyed("mergingList", "name", Some(&ITEM)),
        set("mergingIntList"),
        object("retainKeysMap", &ITEM),
        keyed("retainKeysMergingList", "name", Some(&ITEM)),
    ],
};

fn smp(original: Value, patch: Value) -> Value {
    let mut v = original;
    strategic::apply(&mut v, &patch, &ITEM).unwrap();
    v
}

#[test]
fn kubernetes_custom_cases() {
    // "unique scalars when merging lists"
    assert_eq!(
        smp(
            json!({"mergingIntList": [1, 2]}),
            json!({"mergingIntList": [2, 3]})
        ),
        json!({"mergingIntList": [1, 2, 3]})
    );
    // "delete map from nested map"
    assert_eq!(
        smp(
            json!({"simpleMap": {"key1": 1, "key2": 1}}),
            json!({"simpleMap": {"$patch": "delete"}})
        ),
        json!({"simpleMap": {}})
    );
    // "delete all items from merging list"
    assert_eq!(
        smp(
            json!({"mergingList": [{"name": 1}, {"name": 2}]}),
            json!({"mergingList": [{"$patch": "replace"}]})
        ),
        json!({"mergingList": []})
    );
    // "merge empty merging lists"
    assert_eq!(
        smp(json!({"mergingList": []}), json!({"mergingList": []})),
        json!({"mergingList": []})
    );
    // "delete all keys from map" / "add key and delete all keys from map"
    assert_eq!(
        smp(json!({"name": 1, "value": 1}), json!({"$patch": "replace"})),
        json!({})
    );
    assert_eq!(
        smp(
            json!({"name": 1, "value": 1}),
            json!({"other": "a", "$patch": "replace"})
        ),
        json!({"other": "a"})
    );
    // "delete all duplicate entries in a merging list"
    assert_eq!(
        smp(
            json!({"mergingList": [{"name": 1}, {"name": 1}, {"name": 2, "value": "a"}, {"name": 3}, {"name": 3}]}),
            json!({"mergingList": [{"name": 1, "$patch": "delete"}, {"name": 3, "$patch": "delete"}]})
        ),
        json!({"mergingList": [{"name": 2, "value": "a"}]})
    );
    // "retainKeys map can add / change / delete a field when no retainKeys
    // directive present", "retainKeys map merge an empty map"
    assert_eq!(
        smp(
            json!({"retainKeysMap": {"name": "foo"}}),
            json!({"retainKeysMap": {"value": "bar"}})
        ),
        json!({"retainKeysMap": {"name": "foo", "value": "bar"}})
    );
    assert_eq!(
        smp(
            json!({"retainKeysMap": {"name": "foo", "value": "a"}}),
            json!({"retainKeysMap": {"value": null}})
        ),
        json!({"retainKeysMap": {"name": "foo"}})
    );
    assert_eq!(
        smp(
            json!({"retainKeysMap": {"name": "foo", "value": "a"}}),
            json!({"retainKeysMap": {}})
        ),
        json!({"retainKeysMap": {"name": "foo", "value": "a"}})
    );
    // "retainKeys list can change a field when no retainKeys directive present"
    assert_eq!(
        smp(
            json!({"retainKeysMergingList": [{"name": "bar"}, {"name": "foo", "value": "a"}]}),
            json!({"retainKeysMergingList": [{"name": "foo", "value": "b"}]})
        ),
        json!({"retainKeysMergingList": [{"name": "bar"}, {"name": "foo", "value": "b"}]})
    );
    // "preserve the order from the patch in a merging list" (1 and 2)
    assert_eq!(
        smp(
            json!({"mergingList": [{"name": 1}, {"name": 2, "value": "b"}, {"name": 3}]}),
            json!({"mergingList": [{"name": 3, "value": "c"}, {"name": 1, "value": "a"}, {"name": 2, "other": "x"}]})
        ),
        json!({"mergingList": [{"name": 3, "value": "c"}, {"name": 1, "value": "a"}, {"name": 2, "value": "b", "other": "x"}]})
    );
    assert_eq!(
        smp(
            json!({"mergingList": [{"name": 1}, {"name": 2, "value": "b"}, {"name": 3}]}),
            json!({"mergingList": [{"name": 3, "value": "c"}, {"name": 1, "value": "a"}]})
        ),
        json!({"mergingList": [{"name": 2, "value": "b"}, {"name": 3, "value": "c"}, {"name": 1, "value": "a"}]})
    );
    // "preserve the order from the patch in a merging int list" (both)
    assert_eq!(
        smp(
            json!({"mergingIntList": [1, 2, 3]}),
            json!({"mergingIntList": [3, 1, 2]})
        ),
        json!({"mergingIntList": [3, 1, 2]})
    );
    assert_eq!(
        smp(
            json!({"mergingIntList": [1, 2, 3]}),
            json!({"mergingIntList": [3, 1]})
        ),
        json!({"mergingIntList": [2, 3, 1]})
    );
    // "$setElementOrder contains item that is not present in the list to
    // be merged" (maps and ints)
    assert_eq!(
        smp(
            json!({"mergingList": [{"name": 1}, {"name": 3}]}),
            json!({
                "$setElementOrder/mergingList": [{"name": 3}, {"name": 2}, {"name": 1}],
                "mergingList": [{"name": 3, "value": 3}, {"name": 1, "value": 1}]
            })
        ),
        json!({"mergingList": [{"name": 3, "value": 3}, {"name": 1, "value": 1}]})
    );
    assert_eq!(
        smp(
            json!({"mergingIntList": [1, 3]}),
            json!({"$setElementOrder/mergingIntList": [3, 2, 1]})
        ),
        json!({"mergingIntList": [3, 1]})
    );
}

#[test]
fn directives_on_scalars_and_keys() {
    assert_eq!(
        smp(
            json!({"mergingIntList": [1, 2, 3], "name": "a"}),
            json!({"$deleteFromPrimitiveList/mergingIntList": [2, 9]})
        ),
        json!({"mergingIntList": [1, 3], "name": "a"})
    );
    assert_eq!(
        smp(
            json!({"retainKeysMap": {"name": "a", "value": "b", "other": "c"}}),
            json!({"retainKeysMap": {"$retainKeys": ["name", "other"], "other": "d"}})
        ),
        json!({"retainKeysMap": {"name": "a", "other": "d"}})
    );
    // A list the schema does not name is atomic, as JSON merge patch.
    assert_eq!(
        smp(
            json!({"nonMergingList": [{"name": 1}, {"name": 2}]}),
            json!({"nonMergingList": [{"name": 3}]})
        ),
        json!({"nonMergingList": [{"name": 3}]})
    );
    for bad in [
        json!({"mergingList": [{"value": 1}]}),
        json!({"mergingList": [1]}),
        json!({"mergingIntList": [{"a": 1}]}),
        json!({"$patch": "explode"}),
        json!({"retainKeysMap": {"$retainKeys": ["name"], "value": 1}}),
        json!({"$setElementOrder/simpleMap": []}),
        json!([1]),
    ] {
        let mut v = json!({"mergingList": [{"name": 1}]});
        assert!(
            strategic::apply(&mut v, &bad, &ITEM).is_err(),
            "{bad} should be refused"
        );
    }
}

fn pod() -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "web", "finalizers": ["a"]},
        "spec": {"containers": [
            {"name": "web", "image": "nginx:1", "ports": [{"containerPort": 80, "protocol": "TCP"}],
             "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]}
        ], "tolerations": [{"key": "x", "operator": "Exists"}]}
    })
}

#[test]
fn kubectl_set_image_keeps_the_ports() {
    // What kubectl set image sends.
    let patch = json!({"spec": {
        "$setElementOrder/containers": [{"name": "web"}],
        "containers": [{"image": "nginx:2", "name": "web"}]
    }});
    let mut p = pod();
    strategic::apply(&mut p, &patch, schema::of(Kind::Pod)).unwrap();
    let c = &p["spec"]["containers"][0];
    assert_eq!(c["image"], "nginx:2");
    assert_eq!(
        c["ports"],
        json!([{"containerPort": 80, "protocol": "TCP"}])
    );
    assert_eq!(c["env"].as_array().unwrap().len(), 2);
}

#[test]
fn a_patched_in_sidecar_keeps_the_first_container() {
    let patch = json!({"spec": {"containers": [{"name": "sidecar", "image": "busybox"}]}});
    let mut p = pod();
    strategic::apply(&mut p, &patch, schema::of(Kind::Pod)).unwrap();
    let names: Vec<&str> = p["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    // Kubernetes puts a new element before the ones the patch did not name.
    assert_eq!(names, ["sidecar", "web"]);
    assert_eq!(p["spec"]["containers"][1]["image"], "nginx:1");
    // Tolerations are atomic in Kubernetes: replaced, not merged.
    let patch = json!({"spec": {"tolerations": [{"key": "y", "operator": "Exists"}]}});
    strategic::apply(&mut p, &patch, schema::of(Kind::Pod)).unwrap();
    assert_eq!(
        p["spec"]["tolerations"],
        json!([{"key": "y", "operator": "Exists"}])
    );
}

#[test]
fn three_way_removes_what_the_manifest_dropped_and_keeps_what_others_set() {
    let last = json!({"metadata": {"name": "web", "labels": {"a": "1", "b": "2"}, "finalizers": ["a"]},
    "spec": {"containers": [
        {"name": "web", "image": "nginx:1", "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]},
        {"name": "old", "image": "busybox"}
    ]}});
    let config = json!({"metadata": {"name": "web", "labels": {"a": "1"}, "finalizers": ["b"]},
    "spec": {"containers": [
        {"name": "web", "image": "nginx:2", "env": [{"name": "A", "value": "1"}]}
    ]}});
    let schema = schema::of(Kind::Pod);
    let patch = strategic::three_way(Some(&last), &config, schema);
    assert_eq!(patch["metadata"]["labels"]["b"], Value::Null);
    assert_eq!(
        patch["metadata"]["$deleteFromPrimitiveList/finalizers"],
        json!(["a"])
    );
    let mut live = json!({"metadata": {"name": "web", "labels": {"a": "1", "b": "2", "team": "x"},
        "finalizers": ["a", "gc"]},
    "spec": {"containers": [
        {"name": "web", "image": "nginx:1", "ports": [{"containerPort": 80}],
         "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]},
        {"name": "old", "image": "busybox"},
        {"name": "injected", "image": "proxy"}
    ]}});
    strategic::apply(&mut live, &patch, schema).unwrap();
    assert_eq!(
        live,
        json!({"metadata": {"name": "web", "labels": {"a": "1", "team": "x"}, "finalizers": ["b", "gc"]},
        "spec": {"containers": [
            {"name": "web", "image": "nginx:2", "ports": [{"containerPort": 80}],
             "env": [{"name": "A", "value": "1"}]},
            {"name": "injected", "image": "proxy"}
        ]}})
    );
    // Without a last configuration nothing is removed.
    assert_eq!(strategic::three_way(None, &config, schema), config);
}

fn jp(doc: Value, ops: Value) -> Result<Value, String> {
    let ops = json_patch::parse(&ops).map_err(|e| e.0)?;
    let mut d = doc;
    json_patch::apply(&mut d, &ops).map_err(|e| e.0)?;
    Ok(d)
}

#[test]
fn rfc6902_examples() {
    // A.1, A.2, A.3, A.4, A.6, A.7, A.8, A.10, A.16
    assert_eq!(
        jp(
            json!({"foo": "bar"}),
            json!([{"op": "add", "path": "/baz", "value": "qux"}])
        ),
        Ok(json!({"baz": "qux", "foo": "bar"}))
    );
    assert_eq!(
        jp(
            json!({"foo": ["bar", "baz"]}),
            json!([{"op": "add", "path": "/foo/1", "value": "qux"}])
        ),
        Ok(json!({"foo": ["bar", "qux", "baz"]}))
    );
    assert_eq!(
        jp(
            json!({"baz": "qux", "foo": "bar"}),
            json!([{"op": "remove", "path": "/baz"}])
        ),
        Ok(json!({"foo": "bar"}))
    );
    assert_eq!(
        jp(
            json!({"foo": ["bar", "qux", "baz"]}),
            json!([{"op": "remove", "path": "/foo/1"}])
        ),
        Ok(json!({"foo": ["bar", "baz"]}))
    );
    assert_eq!(
        jp(
            json!({"foo": {"bar": "baz", "waldo": "fred"}, "qux": {"corge": "grault"}}),
            json!([{"op": "move", "from": "/foo/waldo", "path": "/qux/thud"}])
        ),
        Ok(json!({"foo": {"bar": "baz"}, "qux": {"corge": "grault", "thud": "fred"}}))
    );
    assert_eq!(
        jp(
            json!({"foo": ["all", "grass", "cows", "eat"]}),
            json!([{"op": "move", "from": "/foo/1", "path": "/foo/3"}])
        ),
        Ok(json!({"foo": ["all", "cows", "eat", "grass"]}))
    );
    assert_eq!(
        jp(
            json!({"baz": "qux", "foo": ["a", 2, "c"]}),
            json!([{"op": "test", "path": "/baz", "value": "qux"}, {"op": "test", "path": "/foo/1", "value": 2}])
        ),
        Ok(json!({"baz": "qux", "foo": ["a", 2, "c"]}))
    );
    assert!(
        jp(
            json!({"baz": "qux"}),
            json!([{"op": "test", "path": "/baz", "value": "bar"}])
        )
        .is_err()
    );
    assert_eq!(
        jp(
            json!({"foo": ["bar"]}),
            json!([{"op": "add", "path": "/foo/-", "value": ["abc", "def"]}])
        ),
        Ok(json!({"foo": ["bar", ["abc", "def"]]}))
    );
    // A.12: adding to a missing parent fails; ~1 escapes a slash.
    assert!(
        jp(
            json!({"foo": "bar"}),
            json!([{"op": "add", "path": "/baz/bat", "value": "qux"}])
        )
        .is_err()
    );
    assert_eq!(
        jp(
            json!({"metadata": {"labels": {"app.kubernetes.io/name": "a"}}}),
            json!([{"op": "replace", "path": "/metadata/labels/app.kubernetes.io~1name", "value": "b"}])
        ),
        Ok(json!({"metadata": {"labels": {"app.kubernetes.io/name": "b"}}}))
    );
}

#[test]
fn a_failing_json_patch_changes_nothing() {
    let doc = json!({"a": 1, "l": [1, 2]});
    let ops = json_patch::parse(&json!([
        {"op": "replace", "path": "/a", "value": 2},
        {"op": "remove", "path": "/l/5"}
    ]))
    .unwrap();
    let mut d = doc.clone();
    let e = json_patch::apply(&mut d, &ops).unwrap_err();
    assert!(e.0.starts_with("operation 1 (/l/5)"), "{e}");
    assert_eq!(d, doc);
    for bad in [
        json!({"op": "add"}),
        json!([{"op": "add", "path": "/a"}]),
        json!([{"op": "frobnicate", "path": "/a"}]),
        json!([{"op": "remove", "path": "a"}]),
        json!([{"op": "move", "path": "/b"}]),
    ] {
        assert!(json_patch::parse(&bad).is_err(), "{bad}");
    }
    // Leading zeros are not indexes.
    assert!(
        jp(
            json!({"l": [1, 2]}),
            json!([{"op": "remove", "path": "/l/01"}])
        )
        .is_err()
    );
}
