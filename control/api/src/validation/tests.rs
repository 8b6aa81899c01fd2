use crate::Object;
use serde_json::json;

fn errors_of(value: serde_json::Value) -> Vec<String> {
    let (obj, _) = Object::from_json(value).unwrap();
    obj.validate().iter().map(ToString::to_string).collect()
}

#[test]
fn service_errors_name_the_field() {
    let errs = errors_of(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "Web", "namespace": "default"},
        "spec": {"ports": [
            {"name": "http", "port": 70000},
            {"name": "http", "port": 80, "targetPort": "not_a_name"}
        ], "type": "Balloon"}
    }));
    assert!(
        errs.iter()
            .any(|e| e.starts_with("metadata.name: Invalid value: \"Web\"")),
        "{errs:?}"
    );
    assert!(
        errs.contains(
            &"spec.ports[0].port: Invalid value: 70000: must be between 1 and 65535, inclusive"
                .to_string()
        ),
        "{errs:?}"
    );
    assert!(
        errs.contains(&"spec.ports[1].name: Duplicate value: \"http\"".to_string()),
        "{errs:?}"
    );
    assert!(
        errs.iter()
            .any(|e| e.starts_with("spec.ports[1].targetPort: Invalid value: \"not_a_name\"")),
        "{errs:?}"
    );
    assert!(
        errs.iter()
            .any(|e| e.starts_with("spec.type: Unsupported value: \"Balloon\"")),
        "{errs:?}"
    );
}

#[test]
fn deployment_selector_must_match_template() {
    let errs = errors_of(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {"selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "db"}},
                "spec": {"containers": [{"name": "c", "image": "busybox"}]}}}
    }));
    assert_eq!(errs, vec!["spec.template.metadata.labels: Invalid value: \"app=db\": `selector` does not match template `labels`".to_string()]);
}

#[test]
fn pod_errors() {
    let errs = errors_of(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "p", "namespace": "default", "labels": {"bad key!": "x"}},
        "spec": {"containers": [
            {"name": "a", "image": "x", "ports": [{"containerPort": 0}],
             "resources": {"requests": {"cpu": "2"}, "limits": {"cpu": "1"}}},
            {"name": "a"}
        ], "restartPolicy": "Sometimes"}
    }));
    for want in [
        "metadata.labels: Invalid value: \"bad key!\"",
        "spec.containers[0].ports[0].containerPort: Invalid value: 0",
        "spec.containers[0].resources.requests[cpu]: Invalid value: \"2\"",
        "spec.containers[1].name: Duplicate value: \"a\"",
        "spec.containers[1].image: Required value",
        "spec.restartPolicy: Unsupported value: \"Sometimes\"",
    ] {
        assert!(
            errs.iter().any(|e| e.starts_with(want)),
            "missing {want} in {errs:?}"
        );
    }
}

#[test]
fn valid_objects_pass() {
    assert!(errors_of(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "web", "namespace": "default", "labels": {"app.kubernetes.io/name": "web"}},
        "spec": {"type": "NodePort", "ports": [{"port": 80, "targetPort": "http", "nodePort": 30080}],
            "selector": {"app": "web"}}
    }))
    .is_empty());
}

#[test]
fn long_values_are_not_echoed_whole() {
    let big = "é".repeat(1_000_000);
    let e = crate::validation::FieldError::invalid(
        "metadata.labels[x]",
        &big,
        "must be no more than 63 characters",
    );
    let text = e.to_string();
    assert!(text.len() < 400, "{} bytes", text.len());
    assert!(
        text.contains("(truncated: 2000002 bytes)"),
        "{}",
        &text[text.len() - 80..]
    );
    assert!(text.ends_with("must be no more than 63 characters"));
}
