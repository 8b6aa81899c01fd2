//! Defaults the API server fills in, Kubernetes' own, so objects read back
//! the way operators expect (`protocol: TCP`, `restartPolicy: Always`, ...).
//! Each kind's [`crate::strategy::Strategy`] calls its own.

use skiff_api::v1::*;
use skiff_api::wire::IntOrString;

pub fn deployment(spec: &mut DeploymentSpec) {
    spec.replicas.get_or_insert(1);
    spec.revision_history_limit.get_or_insert(10);
    spec.progress_deadline_seconds.get_or_insert(600);
    let strategy = spec.strategy.get_or_insert_with(Default::default);
    if strategy.r#type.is_empty() {
        strategy.r#type = "RollingUpdate".into();
    }
    if strategy.r#type == "RollingUpdate" {
        let ru = strategy.rolling_update.get_or_insert_with(Default::default);
        ru.max_surge
            .get_or_insert_with(|| IntOrString::string("25%"));
        ru.max_unavailable
            .get_or_insert_with(|| IntOrString::string("25%"));
    }
    if let Some(t) = spec.template.as_mut().and_then(|t| t.spec.as_mut()) {
        pod_spec(t);
    }
}

pub fn replica_set(spec: &mut ReplicaSetSpec) {
    spec.replicas.get_or_insert(1);
    if let Some(t) = spec.template.as_mut().and_then(|t| t.spec.as_mut()) {
        pod_spec(t);
    }
}

pub fn endpoint_slice(e: &mut EndpointSlice) {
    for p in &mut e.ports {
        p.protocol.get_or_insert_with(|| "TCP".into());
    }
}

pub fn endpoints(e: &mut Endpoints) {
    for p in e.subsets.iter_mut().flat_map(|s| s.ports.iter_mut()) {
        if p.protocol.is_empty() {
            p.protocol = "TCP".into();
        }
    }
}

pub fn pod_spec(spec: &mut PodSpec) {
    if spec.restart_policy.is_empty() {
        spec.restart_policy = "Always".into();
    }
    if spec.dns_policy.is_empty() {
        spec.dns_policy = "ClusterFirst".into();
    }
    if spec.scheduler_name.is_empty() {
        spec.scheduler_name = "default-scheduler".into();
    }
    spec.termination_grace_period_seconds.get_or_insert(30);
    for c in spec
        .containers
        .iter_mut()
        .chain(spec.init_containers.iter_mut())
    {
        for p in &mut c.ports {
            if p.protocol.is_empty() {
                p.protocol = "TCP".into();
            }
        }
        if c.image_pull_policy.is_empty() {
            let latest = !c.image.contains(':') || c.image.ends_with(":latest");
            c.image_pull_policy = if latest { "Always" } else { "IfNotPresent" }.into();
        }
    }
}

pub fn service(spec: &mut ServiceSpec) {
    if spec.r#type.is_empty() {
        spec.r#type = "ClusterIP".into();
    }
    if spec.session_affinity.is_empty() {
        spec.session_affinity = "None".into();
    }
    if spec.session_affinity == "ClientIP" {
        let cfg = spec
            .session_affinity_config
            .get_or_insert_with(Default::default);
        let ip = cfg.client_ip.get_or_insert_with(Default::default);
        ip.timeout_seconds.get_or_insert(10800);
    }
    if spec.r#type == "ExternalName" {
        return;
    }
    if ["NodePort", "LoadBalancer"].contains(&spec.r#type.as_str())
        && spec.external_traffic_policy.is_empty()
    {
        spec.external_traffic_policy = "Cluster".into();
    }
    spec.internal_traffic_policy
        .get_or_insert_with(|| "Cluster".into());
    for p in &mut spec.ports {
        if p.protocol.is_empty() {
            p.protocol = "TCP".into();
        }
        if p.target_port.is_none() || p.target_port == Some(IntOrString::int(0)) {
            p.target_port = Some(IntOrString::int(p.port));
        }
    }
}
