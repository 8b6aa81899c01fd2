//! apps/v1: Deployments and ReplicaSets.

use super::core::pod_spec;
use std::collections::BTreeMap;

use super::common::*;
use crate::selector::Selector;

/// A workload's selector and template: the selector must be non-empty and
/// select the template's labels, and the template must be a valid pod that
/// restarts always.
pub(super) fn workload(
    errors: &mut Errors,
    replicas: Option<i32>,
    selector: &Option<LabelSelector>,
    template: &Option<PodTemplateSpec>,
) {
    if let Some(r) = replicas
        && r < 0
    {
        errors.push(FieldError::invalid(
            "spec.replicas",
            r,
            "must be greater than or equal to 0",
        ));
    }
    let selector = match selector {
        Some(s) if !s.match_labels.is_empty() || !s.match_expressions.is_empty() => s,
        _ => {
            errors.push(FieldError::required("spec.selector", ""));
            return;
        }
    };
    check_labels(errors, "spec.selector.matchLabels", &selector.match_labels);
    let parsed = match Selector::from_label_selector(selector) {
        Ok(s) => s,
        Err(e) => {
            errors.push(FieldError::invalid("spec.selector", "", e.to_string()));
            return;
        }
    };
    let Some(template) = template else {
        errors.push(FieldError::required("spec.template", ""));
        return;
    };
    let labels = template.metadata.as_ref().map(|m| &m.labels);
    let empty = BTreeMap::new();
    let labels = labels.unwrap_or(&empty);
    check_labels(errors, "spec.template.metadata.labels", labels);
    if !parsed.matches(labels) {
        let rendered: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        errors.push(FieldError::invalid(
            "spec.template.metadata.labels",
            rendered.join(","),
            "`selector` does not match template `labels`",
        ));
    }
    match &template.spec {
        Some(spec) => {
            pod_spec(errors, "spec.template.spec", spec);
            if !spec.restart_policy.is_empty() && spec.restart_policy != "Always" {
                errors.push(FieldError::not_supported(
                    "spec.template.spec.restartPolicy",
                    &spec.restart_policy,
                    &["Always"],
                ));
            }
        }
        None => errors.push(FieldError::required("spec.template.spec", "")),
    }
}

pub(super) fn check_int_or_percent(
    errors: &mut Errors,
    field: &str,
    v: &Option<IntOrString>,
) -> bool {
    match v {
        None => false,
        Some(v) if v.is_string => {
            let ok = v
                .str_val
                .strip_suffix('%')
                .and_then(|n| n.parse::<u32>().ok())
                .is_some();
            if !ok {
                errors.push(FieldError::invalid(field, &v.str_val, "a valid percent string must be a numeric string followed by an ending '%' (e.g. '10%')"));
            }
            v.str_val
                .trim_end_matches('%')
                .parse::<u32>()
                .is_ok_and(|n| n > 0)
        }
        Some(v) => {
            if v.int_val < 0 {
                errors.push(FieldError::invalid(
                    field,
                    v.int_val,
                    "must be greater than or equal to 0",
                ));
            }
            v.int_val > 0
        }
    }
}

pub fn deployment(d: &Deployment) -> Errors {
    let mut errors = Vec::new();
    let Some(spec) = &d.spec else {
        errors.push(FieldError::required("spec.selector", ""));
        return errors;
    };
    workload(&mut errors, spec.replicas, &spec.selector, &spec.template);
    if let Some(s) = &spec.strategy {
        check_one_of(
            &mut errors,
            "spec.strategy.type".into(),
            &s.r#type,
            &["Recreate", "RollingUpdate"],
        );
        if let Some(ru) = &s.rolling_update {
            if s.r#type == "Recreate" {
                errors.push(FieldError::forbidden(
                    "spec.strategy.rollingUpdate",
                    "may not be specified when strategy `type` is 'Recreate'",
                ));
            }
            let surge = check_int_or_percent(
                &mut errors,
                "spec.strategy.rollingUpdate.maxSurge",
                &ru.max_surge,
            );
            let unavailable = check_int_or_percent(
                &mut errors,
                "spec.strategy.rollingUpdate.maxUnavailable",
                &ru.max_unavailable,
            );
            if ru.max_surge.is_some() && ru.max_unavailable.is_some() && !surge && !unavailable {
                errors.push(FieldError::invalid(
                    "spec.strategy.rollingUpdate.maxUnavailable",
                    0,
                    "may not be 0 when `maxSurge` is 0",
                ));
            }
        }
    }
    if let Some(r) = spec.revision_history_limit
        && r < 0
    {
        errors.push(FieldError::invalid(
            "spec.revisionHistoryLimit",
            r,
            "must be greater than or equal to 0",
        ));
    }
    if spec.min_ready_seconds < 0 {
        errors.push(FieldError::invalid(
            "spec.minReadySeconds",
            spec.min_ready_seconds,
            "must be greater than or equal to 0",
        ));
    }
    errors
}

pub fn replica_set(rs: &ReplicaSet) -> Errors {
    let mut errors = Vec::new();
    match &rs.spec {
        Some(spec) => workload(&mut errors, spec.replicas, &spec.selector, &spec.template),
        None => errors.push(FieldError::required("spec.selector", "")),
    }
    errors
}
