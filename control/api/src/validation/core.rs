//! The core group: Namespaces, Nodes, Pods, Services, ConfigMaps, Events,
//! ServiceAccounts, Endpoints.

use std::collections::BTreeSet;

use super::common::*;

pub fn namespace(_: &Namespace) -> Errors {
    Vec::new()
}

pub fn node(node: &Node) -> Errors {
    let mut errors = Vec::new();
    if let Some(spec) = &node.spec {
        if !spec.pod_cidr.is_empty() {
            check_cidr(&mut errors, "spec.podCIDR".into(), &spec.pod_cidr);
        }
        for (i, c) in spec.pod_cidrs.iter().enumerate() {
            check_cidr(&mut errors, format!("spec.podCIDRs[{i}]"), c);
        }
        for (i, t) in spec.taints.iter().enumerate() {
            let p = format!("spec.taints[{i}]");
            if let Some(d) = label_key_error(&t.key) {
                errors.push(FieldError::invalid(format!("{p}.key"), &t.key, d));
            }
            if t.effect.is_empty() {
                errors.push(FieldError::required(format!("{p}.effect"), ""));
            }
            check_one_of(
                &mut errors,
                format!("{p}.effect"),
                &t.effect,
                &["NoSchedule", "PreferNoSchedule", "NoExecute"],
            );
        }
    }
    if let Some(status) = &node.status {
        check_quantities(&mut errors, "status.capacity", &status.capacity);
        check_quantities(&mut errors, "status.allocatable", &status.allocatable);
    }
    errors
}

pub fn pod(pod: &Pod) -> Errors {
    let mut errors = Vec::new();
    match &pod.spec {
        Some(spec) => pod_spec(&mut errors, "spec", spec),
        None => errors.push(FieldError::required("spec.containers", "")),
    }
    errors
}

pub(super) fn container(
    errors: &mut Errors,
    p: &str,
    c: &Container,
    names: &mut BTreeSet<String>,
    volumes: &BTreeSet<&str>,
) {
    if c.name.is_empty() {
        errors.push(FieldError::required(format!("{p}.name"), ""));
    } else if let Some(d) = dns_label_error(&c.name) {
        errors.push(FieldError::invalid(format!("{p}.name"), &c.name, d));
    } else if !names.insert(c.name.clone()) {
        errors.push(FieldError::duplicate(format!("{p}.name"), &c.name));
    }
    if c.image.trim().is_empty() {
        errors.push(FieldError::required(format!("{p}.image"), ""));
    }
    let mut port_names = BTreeSet::new();
    for (i, port) in c.ports.iter().enumerate() {
        let pp = format!("{p}.ports[{i}]");
        check_port(errors, format!("{pp}.containerPort"), port.container_port);
        if port.host_port != 0 {
            check_port(errors, format!("{pp}.hostPort"), port.host_port);
        }
        check_protocol(errors, format!("{pp}.protocol"), &port.protocol);
        if !port.name.is_empty() {
            if let Some(d) = port_name_error(&port.name) {
                errors.push(FieldError::invalid(format!("{pp}.name"), &port.name, d));
            } else if !port_names.insert(port.name.clone()) {
                errors.push(FieldError::duplicate(format!("{pp}.name"), &port.name));
            }
        }
    }
    for (i, e) in c.env.iter().enumerate() {
        if e.name.is_empty() {
            errors.push(FieldError::required(format!("{p}.env[{i}].name"), ""));
        }
    }
    if let Some(r) = &c.resources {
        check_quantities(errors, &format!("{p}.resources.requests"), &r.requests);
        check_quantities(errors, &format!("{p}.resources.limits"), &r.limits);
        for (name, req) in &r.requests {
            let (Some(limit), Ok(req_q)) = (
                r.limits.get(name),
                crate::quantity::Quantity::parse(&req.value),
            ) else {
                continue;
            };
            if let Ok(limit_q) = crate::quantity::Quantity::parse(&limit.value)
                && req_q > limit_q
            {
                errors.push(FieldError::invalid(
                    format!("{p}.resources.requests[{name}]"),
                    &req.value,
                    format!(
                        "must be less than or equal to {name} limit of {}",
                        limit.value
                    ),
                ));
            }
        }
    }
    for (i, m) in c.volume_mounts.iter().enumerate() {
        let mp = format!("{p}.volumeMounts[{i}]");
        if !volumes.contains(m.name.as_str()) {
            errors.push(FieldError::new(
                format!("{mp}.name"),
                ErrorType::Invalid,
                Some(format!("{:?}", m.name)),
                "volume not found",
            ));
        }
        if m.mount_path.is_empty() {
            errors.push(FieldError::required(format!("{mp}.mountPath"), ""));
        }
    }
    for (probe, field) in [
        (&c.liveness_probe, "livenessProbe"),
        (&c.readiness_probe, "readinessProbe"),
        (&c.startup_probe, "startupProbe"),
    ] {
        if let Some(probe) = probe {
            check_probe(errors, &format!("{p}.{field}"), probe, &port_names);
        }
    }
}

pub(super) fn check_probe_port(
    errors: &mut Errors,
    field: String,
    port: &Option<IntOrString>,
    names: &BTreeSet<String>,
) {
    match port {
        None => errors.push(FieldError::required(field, "")),
        Some(p) if p.is_string => {
            if let Some(d) = port_name_error(&p.str_val) {
                errors.push(FieldError::invalid(field, &p.str_val, d));
            } else if !names.contains(&p.str_val) {
                errors.push(FieldError::invalid(
                    field,
                    &p.str_val,
                    "must be the name of a port of the container",
                ));
            }
        }
        Some(p) => check_port(errors, field, p.int_val),
    }
}

pub(super) fn check_probe(
    errors: &mut Errors,
    p: &str,
    probe: &Probe,
    port_names: &BTreeSet<String>,
) {
    let handlers = [
        probe.exec.is_some(),
        probe.http_get.is_some(),
        probe.tcp_socket.is_some(),
    ]
    .iter()
    .filter(|h| **h)
    .count();
    match handlers {
        0 => errors.push(FieldError::required(
            p,
            "must specify a handler type (exec, httpGet or tcpSocket)",
        )),
        1 => {}
        _ => errors.push(FieldError::forbidden(
            p,
            "may not specify more than 1 handler type",
        )),
    }
    if let Some(h) = &probe.http_get {
        check_probe_port(errors, format!("{p}.httpGet.port"), &h.port, port_names);
        check_one_of(
            errors,
            format!("{p}.httpGet.scheme"),
            &h.scheme,
            &["HTTP", "HTTPS"],
        );
    }
    if let Some(t) = &probe.tcp_socket {
        check_probe_port(errors, format!("{p}.tcpSocket.port"), &t.port, port_names);
    }
    if let Some(e) = &probe.exec
        && e.command.is_empty()
    {
        errors.push(FieldError::required(format!("{p}.exec.command"), ""));
    }
    for (v, f) in [
        (probe.initial_delay_seconds, "initialDelaySeconds"),
        (probe.timeout_seconds, "timeoutSeconds"),
        (probe.period_seconds, "periodSeconds"),
        (probe.success_threshold, "successThreshold"),
        (probe.failure_threshold, "failureThreshold"),
    ] {
        if v < 0 {
            errors.push(FieldError::invalid(
                format!("{p}.{f}"),
                v,
                "must be greater than or equal to 0",
            ));
        }
    }
}

pub(super) fn pod_spec(errors: &mut Errors, p: &str, spec: &PodSpec) {
    let mut volume_names = BTreeSet::new();
    for (i, v) in spec.volumes.iter().enumerate() {
        let vp = format!("{p}.volumes[{i}]");
        if let Some(d) = dns_label_error(&v.name) {
            errors.push(FieldError::invalid(format!("{vp}.name"), &v.name, d));
        } else if !volume_names.insert(v.name.as_str()) {
            errors.push(FieldError::duplicate(format!("{vp}.name"), &v.name));
        }
        let sources = [
            v.config_map.is_some(),
            v.empty_dir.is_some(),
            v.host_path.is_some(),
            v.secret.is_some(),
        ]
        .iter()
        .filter(|s| **s)
        .count();
        if sources == 0 {
            errors.push(FieldError::required(
                vp.clone(),
                "must specify a volume type (configMap, secret, emptyDir or hostPath)",
            ));
        } else if sources > 1 {
            errors.push(FieldError::forbidden(
                vp.clone(),
                "may not specify more than 1 volume type",
            ));
        }
        if let Some(cm) = &v.config_map
            && cm.name.is_empty()
        {
            errors.push(FieldError::required(format!("{vp}.configMap.name"), ""));
        }
        if let Some(sv) = &v.secret {
            if sv.secret_name.is_empty() {
                errors.push(FieldError::required(format!("{vp}.secret.secretName"), ""));
            }
            for (field, mode) in std::iter::once(("defaultMode".to_string(), sv.default_mode))
                .chain(
                    sv.items
                        .iter()
                        .enumerate()
                        .map(|(j, it)| (format!("items[{j}].mode"), it.mode)),
                )
            {
                if let Some(m) = mode
                    && !(0..=0o777).contains(&m)
                {
                    errors.push(FieldError::invalid(
                        format!("{vp}.secret.{field}"),
                        m,
                        "must be a number between 0 and 0777 (octal), both inclusive",
                    ));
                }
            }
        }
    }
    if spec.containers.is_empty() {
        errors.push(FieldError::required(format!("{p}.containers"), ""));
    }
    let mut names = BTreeSet::new();
    for (i, c) in spec.init_containers.iter().enumerate() {
        container(
            errors,
            &format!("{p}.initContainers[{i}]"),
            c,
            &mut names,
            &volume_names,
        );
    }
    for (i, c) in spec.containers.iter().enumerate() {
        container(
            errors,
            &format!("{p}.containers[{i}]"),
            c,
            &mut names,
            &volume_names,
        );
    }
    check_one_of(
        errors,
        format!("{p}.restartPolicy"),
        &spec.restart_policy,
        &["Always", "OnFailure", "Never"],
    );
    check_one_of(
        errors,
        format!("{p}.dnsPolicy"),
        &spec.dns_policy,
        &["ClusterFirst", "ClusterFirstWithHostNet", "Default", "None"],
    );
    if let Some(g) = spec.termination_grace_period_seconds
        && g < 0
    {
        errors.push(FieldError::invalid(
            format!("{p}.terminationGracePeriodSeconds"),
            g,
            "must be greater than or equal to 0",
        ));
    }
    check_labels(errors, &format!("{p}.nodeSelector"), &spec.node_selector);
    if !spec.node_name.is_empty()
        && let Some(d) = dns_subdomain_error(&spec.node_name)
    {
        errors.push(FieldError::invalid(
            format!("{p}.nodeName"),
            &spec.node_name,
            d,
        ));
    }
    for (i, t) in spec.tolerations.iter().enumerate() {
        let tp = format!("{p}.tolerations[{i}]");
        check_one_of(
            errors,
            format!("{tp}.operator"),
            &t.operator,
            &["Equal", "Exists"],
        );
        check_one_of(
            errors,
            format!("{tp}.effect"),
            &t.effect,
            &["NoSchedule", "PreferNoSchedule", "NoExecute"],
        );
        if t.operator == "Exists" && !t.value.is_empty() {
            errors.push(FieldError::invalid(
                format!("{tp}.operator"),
                &t.value,
                "value must be empty when `operator` is 'Exists'",
            ));
        }
        if t.key.is_empty() && t.operator != "Exists" {
            errors.push(FieldError::invalid(
                format!("{tp}.operator"),
                &t.operator,
                "operator must be Exists when `key` is empty",
            ));
        }
    }
}

const SERVICE_TYPES: &[&str] = &["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"];

pub fn service(svc: &Service) -> Errors {
    let mut errors = Vec::new();
    let Some(spec) = &svc.spec else {
        return errors;
    };
    check_one_of(&mut errors, "spec.type".into(), &spec.r#type, SERVICE_TYPES);
    let ty = if spec.r#type.is_empty() {
        "ClusterIP"
    } else {
        spec.r#type.as_str()
    };
    if ty == "ExternalName" {
        if let Some(d) = dns_subdomain_error(spec.external_name.trim_end_matches('.')) {
            errors.push(FieldError::invalid(
                "spec.externalName",
                &spec.external_name,
                d,
            ));
        }
    } else if spec.ports.is_empty() && spec.cluster_ip != "None" {
        errors.push(FieldError::required("spec.ports", ""));
    }
    let mut names = BTreeSet::new();
    let mut port_protocols = BTreeSet::new();
    for (i, port) in spec.ports.iter().enumerate() {
        let p = format!("spec.ports[{i}]");
        if port.name.is_empty() {
            if spec.ports.len() > 1 {
                errors.push(FieldError::required(
                    format!("{p}.name"),
                    "when more than one port is given, each must have a name",
                ));
            }
        } else if let Some(d) = dns_label_error(&port.name) {
            errors.push(FieldError::invalid(format!("{p}.name"), &port.name, d));
        } else if !names.insert(port.name.as_str()) {
            errors.push(FieldError::duplicate(format!("{p}.name"), &port.name));
        }
        check_port(&mut errors, format!("{p}.port"), port.port);
        check_protocol(&mut errors, format!("{p}.protocol"), &port.protocol);
        let protocol = if port.protocol.is_empty() {
            "TCP"
        } else {
            port.protocol.as_str()
        };
        if !port_protocols.insert((port.port, protocol)) {
            errors.push(FieldError::duplicate(
                p.clone(),
                format!("{}/{protocol}", port.port),
            ));
        }
        if let Some(t) = &port.target_port {
            if t.is_string {
                if let Some(d) = port_name_error(&t.str_val) {
                    errors.push(FieldError::invalid(
                        format!("{p}.targetPort"),
                        &t.str_val,
                        d,
                    ));
                }
            } else if t.int_val != 0 {
                check_port(&mut errors, format!("{p}.targetPort"), t.int_val);
            }
        }
        if port.node_port != 0 {
            if !["NodePort", "LoadBalancer"].contains(&ty) {
                errors.push(FieldError::forbidden(
                    format!("{p}.nodePort"),
                    "may not be used when `type` is 'ClusterIP'",
                ));
            }
            check_port(&mut errors, format!("{p}.nodePort"), port.node_port);
        }
    }
    if !spec.cluster_ip.is_empty() && spec.cluster_ip != "None" {
        check_ip(&mut errors, "spec.clusterIP".into(), &spec.cluster_ip);
    }
    if spec.cluster_ip == "None" && ["NodePort", "LoadBalancer"].contains(&ty) {
        errors.push(FieldError::invalid(
            "spec.clusterIP",
            "None",
            format!("may not be set to 'None' for {ty} services"),
        ));
    }
    for (i, ip) in spec.external_ips.iter().enumerate() {
        check_ip(&mut errors, format!("spec.externalIPs[{i}]"), ip);
    }
    check_labels(&mut errors, "spec.selector", &spec.selector);
    check_one_of(
        &mut errors,
        "spec.sessionAffinity".into(),
        &spec.session_affinity,
        &["ClientIP", "None"],
    );
    if let Some(t) = spec
        .session_affinity_config
        .as_ref()
        .and_then(|c| c.client_ip.as_ref())
        .and_then(|c| c.timeout_seconds)
        && !(1..=86400).contains(&t)
    {
        errors.push(FieldError::invalid(
            "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
            t,
            "must be greater than 0 and less than or equal to 86400",
        ));
    }
    check_one_of(
        &mut errors,
        "spec.externalTrafficPolicy".into(),
        &spec.external_traffic_policy,
        &["Cluster", "Local"],
    );
    if !spec.external_traffic_policy.is_empty() && !["NodePort", "LoadBalancer"].contains(&ty) {
        errors.push(FieldError::invalid(
            "spec.externalTrafficPolicy",
            &spec.external_traffic_policy,
            "may only be set when `type` is 'NodePort' or 'LoadBalancer'",
        ));
    }
    if let Some(p) = &spec.internal_traffic_policy {
        check_one_of(
            &mut errors,
            "spec.internalTrafficPolicy".into(),
            p,
            &["Cluster", "Local"],
        );
    }
    errors
}

pub(super) fn config_key_error(key: &str) -> Option<String> {
    let ok = !key.is_empty()
        && key.len() <= 253
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        && key != "."
        && key != "..";
    (!ok).then(|| {
        "a valid config key must consist of alphanumeric characters, '-', '_' or '.'".to_string()
    })
}

pub fn config_map(cm: &ConfigMap) -> Errors {
    let mut errors = Vec::new();
    for k in cm.data.keys() {
        if let Some(d) = config_key_error(k) {
            errors.push(FieldError::invalid(format!("data[{k}]"), k, d));
        }
    }
    for k in cm.binary_data.keys() {
        if let Some(d) = config_key_error(k) {
            errors.push(FieldError::invalid(format!("binaryData[{k}]"), k, d));
        }
        if cm.data.contains_key(k) {
            errors.push(FieldError::duplicate(format!("data[{k}]"), k));
        }
    }
    errors
}

/// Kubernetes' limit on a Secret's data.
pub const MAX_SECRET_BYTES: usize = 1024 * 1024;

pub fn secret(s: &Secret) -> Errors {
    use base64::Engine;
    let mut errors = Vec::new();
    let mut total = 0usize;
    for (k, v) in &s.data {
        if let Some(d) = config_key_error(k) {
            errors.push(FieldError::invalid(format!("data[{k}]"), k, d));
        }
        match base64::engine::general_purpose::STANDARD.decode(v) {
            Ok(bytes) => total += bytes.len(),
            Err(_) => errors.push(FieldError::invalid(
                format!("data[{k}]"),
                "<value>",
                "must be base64 (the plain text goes in stringData)",
            )),
        }
    }
    for k in s.string_data.keys() {
        if let Some(d) = config_key_error(k) {
            errors.push(FieldError::invalid(format!("stringData[{k}]"), k, d));
        }
    }
    if total > MAX_SECRET_BYTES {
        errors.push(FieldError::too_long("data", MAX_SECRET_BYTES));
    }
    let need = |errors: &mut Errors, key: &str| {
        if !s.data.contains_key(key) && !s.string_data.contains_key(key) {
            errors.push(FieldError::required(format!("data[{key}]"), ""));
        }
    };
    match s.r#type.as_str() {
        "kubernetes.io/dockerconfigjson" => need(&mut errors, ".dockerconfigjson"),
        "kubernetes.io/dockercfg" => need(&mut errors, ".dockercfg"),
        "kubernetes.io/tls" => {
            need(&mut errors, "tls.crt");
            need(&mut errors, "tls.key");
        }
        "kubernetes.io/basic-auth"
            if !["username", "password"]
                .iter()
                .any(|k| s.data.contains_key(*k) || s.string_data.contains_key(*k)) =>
        {
            errors.push(FieldError::required(
                "data[username]",
                "username or password",
            ));
        }
        "kubernetes.io/ssh-auth" => need(&mut errors, "ssh-privatekey"),
        "kubernetes.io/service-account-token" => {
            let named = s.metadata.as_ref().is_some_and(|m| {
                m.annotations
                    .contains_key("kubernetes.io/service-account.name")
            });
            if !named {
                errors.push(FieldError::required(
                    "metadata.annotations[kubernetes.io/service-account.name]",
                    "",
                ));
            }
        }
        _ => {}
    }
    errors
}

pub fn event(ev: &Event) -> Errors {
    let mut errors = Vec::new();
    if ev.involved_object.is_none() {
        errors.push(FieldError::required("involvedObject", ""));
    }
    check_one_of(
        &mut errors,
        "type".into(),
        &ev.r#type,
        &["Normal", "Warning"],
    );
    errors
}

pub fn service_account(sa: &ServiceAccount) -> Errors {
    let mut errors = Vec::new();
    for (i, s) in sa.secrets.iter().enumerate() {
        if let Some(d) = dns_subdomain_error(&s.name) {
            errors.push(FieldError::invalid(
                format!("secrets[{i}].name"),
                &s.name,
                d,
            ));
        }
    }
    for (i, s) in sa.image_pull_secrets.iter().enumerate() {
        if let Some(d) = dns_subdomain_error(&s.name) {
            errors.push(FieldError::invalid(
                format!("imagePullSecrets[{i}].name"),
                &s.name,
                d,
            ));
        }
    }
    errors
}

/// v1 Endpoints, as Kubernetes validates them: IP addresses, DNS-label
/// hostnames, and named ports when a subset has more than one.
pub fn endpoints(ep: &Endpoints) -> Errors {
    let mut errors = Vec::new();
    for (i, subset) in ep.subsets.iter().enumerate() {
        let p = format!("subsets[{i}]");
        if subset.addresses.is_empty() && subset.not_ready_addresses.is_empty() {
            errors.push(FieldError::required(
                p.clone(),
                "must specify `addresses` or `notReadyAddresses`",
            ));
        }
        let lists = [
            ("addresses", &subset.addresses),
            ("notReadyAddresses", &subset.not_ready_addresses),
        ];
        for (list, addrs) in lists {
            for (j, a) in addrs.iter().enumerate() {
                let field = format!("{p}.{list}[{j}]");
                if a.ip.parse::<std::net::IpAddr>().is_err() {
                    errors.push(FieldError::invalid(
                        format!("{field}.ip"),
                        &a.ip,
                        "must be a valid IP address",
                    ));
                }
                if !a.hostname.is_empty()
                    && let Some(d) = dns_label_error(&a.hostname)
                {
                    errors.push(FieldError::invalid(
                        format!("{field}.hostname"),
                        &a.hostname,
                        d,
                    ));
                }
            }
        }
        let mut names = BTreeSet::new();
        for (j, port) in subset.ports.iter().enumerate() {
            let field = format!("{p}.ports[{j}]");
            if port.name.is_empty() {
                if subset.ports.len() > 1 {
                    errors.push(FieldError::required(format!("{field}.name"), ""));
                }
            } else if let Some(d) = dns_label_error(&port.name) {
                errors.push(FieldError::invalid(format!("{field}.name"), &port.name, d));
            }
            if !names.insert(port.name.as_str()) {
                errors.push(FieldError::duplicate(format!("{field}.name"), &port.name));
            }
            check_port(&mut errors, format!("{field}.port"), port.port);
            if !port.protocol.is_empty() {
                check_protocol(&mut errors, format!("{field}.protocol"), &port.protocol);
            }
        }
    }
    errors
}
