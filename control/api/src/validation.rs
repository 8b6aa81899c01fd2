//! Validation with field-precise errors, worded like Kubernetes'
//! (`spec.ports[0].port: Invalid value: 70000: must be between 1 and 65535,
//! inclusive`). Pure functions over the typed objects: cluster-dependent
//! checks (CIDRs, the NodePort range) are the API server's.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

use crate::Kind;
use crate::selector::Selector;
use crate::v1::*;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ErrorType {
    Required,
    Invalid,
    Duplicate,
    NotSupported,
    Forbidden,
    TooLong,
}

impl ErrorType {
    fn as_str(&self) -> &'static str {
        match self {
            ErrorType::Required => "Required value",
            ErrorType::Invalid => "Invalid value",
            ErrorType::Duplicate => "Duplicate value",
            ErrorType::NotSupported => "Unsupported value",
            ErrorType::Forbidden => "Forbidden",
            ErrorType::TooLong => "Too long",
        }
    }

    /// The reason name Kubernetes puts in a Status's `details.causes`.
    pub fn reason(&self) -> &'static str {
        match self {
            ErrorType::Required => "FieldValueRequired",
            ErrorType::Invalid => "FieldValueInvalid",
            ErrorType::Duplicate => "FieldValueDuplicate",
            ErrorType::NotSupported => "FieldValueNotSupported",
            ErrorType::Forbidden => "FieldValueForbidden",
            ErrorType::TooLong => "FieldValueTooLong",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub error_type: ErrorType,
    /// The offending value, rendered as Kubernetes does (strings quoted).
    pub value: Option<String>,
    pub detail: String,
}

impl FieldError {
    pub fn required(field: impl Into<String>, detail: impl Into<String>) -> Self {
        Self::new(field, ErrorType::Required, None, detail)
    }
    pub fn invalid(
        field: impl Into<String>,
        value: impl fmt::Debug,
        detail: impl Into<String>,
    ) -> Self {
        Self::new(
            field,
            ErrorType::Invalid,
            Some(format!("{value:?}")),
            detail,
        )
    }
    pub fn duplicate(field: impl Into<String>, value: impl fmt::Debug) -> Self {
        Self::new(field, ErrorType::Duplicate, Some(format!("{value:?}")), "")
    }
    pub fn not_supported(field: impl Into<String>, value: &str, supported: &[&str]) -> Self {
        let list: Vec<String> = supported.iter().map(|s| format!("{s:?}")).collect();
        Self::new(
            field,
            ErrorType::NotSupported,
            Some(format!("{value:?}")),
            format!("supported values: {}", list.join(", ")),
        )
    }
    pub fn forbidden(field: impl Into<String>, detail: impl Into<String>) -> Self {
        Self::new(field, ErrorType::Forbidden, None, detail)
    }
    pub fn too_long(field: impl Into<String>, max: usize) -> Self {
        Self::new(
            field,
            ErrorType::TooLong,
            None,
            format!("must have at most {max} bytes"),
        )
    }
    fn new(
        field: impl Into<String>,
        t: ErrorType,
        value: Option<String>,
        detail: impl Into<String>,
    ) -> Self {
        FieldError {
            field: field.into(),
            error_type: t,
            value,
            detail: detail.into(),
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.error_type.as_str())?;
        if let Some(v) = &self.value {
            write!(f, ": {v}")?;
        }
        if !self.detail.is_empty() {
            write!(f, ": {}", self.detail)?;
        }
        Ok(())
    }
}

type Errors = Vec<FieldError>;

// ----------------------------------------------------------- name formats

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns_label)
}

/// RFC 1123 label: what a namespace, a container or a volume is called.
pub fn dns_label_error(s: &str) -> Option<String> {
    (!is_dns_label(s)).then(|| {
        "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', \
         and must start and end with an alphanumeric character (at most 63 characters)"
            .to_string()
    })
}

/// RFC 1123 subdomain: what most objects are called.
pub fn dns_subdomain_error(s: &str) -> Option<String> {
    (!is_dns_subdomain(s)).then(|| {
        "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' \
         or '.', and must start and end with an alphanumeric character (at most 253 characters)"
            .to_string()
    })
}

/// RFC 1035 label: what a Service is called (it must start with a letter,
/// since it becomes a DNS name).
pub fn dns1035_label_error(s: &str) -> Option<String> {
    let ok = is_dns_label(s) && s.as_bytes()[0].is_ascii_lowercase();
    (!ok).then(|| {
        "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with \
         an alphabetic character, and end with an alphanumeric character (at most 63 characters)"
            .to_string()
    })
}

fn is_qualified_name_part(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        && s.as_bytes()[0].is_ascii_alphanumeric()
        && s.as_bytes()[s.len() - 1].is_ascii_alphanumeric()
}

/// A label key: an optional DNS subdomain prefix and `/`, then a name.
pub fn label_key_error(key: &str) -> Option<String> {
    let ok = match key.split_once('/') {
        Some((prefix, name)) => is_dns_subdomain(prefix) && is_qualified_name_part(name),
        None => is_qualified_name_part(key),
    };
    (!ok).then(|| {
        "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and \
         end with an alphanumeric character (at most 63 characters), with an optional DNS \
         subdomain prefix and '/'"
            .to_string()
    })
}

pub fn label_value_error(value: &str) -> Option<String> {
    (!value.is_empty() && !is_qualified_name_part(value)).then(|| {
        "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' \
         or '.', and must start and end with an alphanumeric character (at most 63 characters)"
            .to_string()
    })
}

/// IANA service name (a named port): at most 15 characters, lower case
/// alphanumerics and '-', at least one letter, no leading, trailing or
/// doubled '-'.
pub fn port_name_error(name: &str) -> Option<String> {
    let ok = !name.is_empty()
        && name.len() <= 15
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && name.bytes().any(|b| b.is_ascii_lowercase())
        && !name.starts_with('-')
        && !name.ends_with('-')
        && !name.contains("--");
    (!ok).then(|| {
        "must be no more than 15 characters, contain only lowercase alphanumerics and '-', \
         contain at least one letter, and not begin, end or double '-'"
            .to_string()
    })
}

fn check_port(errors: &mut Errors, field: String, port: i32) {
    if !(1..=65535).contains(&port) {
        errors.push(FieldError::invalid(
            field,
            port,
            "must be between 1 and 65535, inclusive",
        ));
    }
}

fn check_protocol(errors: &mut Errors, field: String, protocol: &str) {
    if !protocol.is_empty() && !["TCP", "UDP", "SCTP"].contains(&protocol) {
        errors.push(FieldError::not_supported(
            field,
            protocol,
            &["SCTP", "TCP", "UDP"],
        ));
    }
}

fn check_one_of(errors: &mut Errors, field: String, value: &str, allowed: &[&str]) {
    if !value.is_empty() && !allowed.contains(&value) {
        errors.push(FieldError::not_supported(field, value, allowed));
    }
}

fn check_ip(errors: &mut Errors, field: String, ip: &str) {
    if ip.parse::<IpAddr>().is_err() {
        errors.push(FieldError::invalid(
            field,
            ip,
            "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)",
        ));
    }
}

fn check_cidr(errors: &mut Errors, field: String, cidr: &str) {
    let ok = cidr.split_once('/').is_some_and(|(ip, len)| {
        let Ok(ip) = ip.parse::<IpAddr>() else {
            return false;
        };
        let max = if ip.is_ipv4() { 32 } else { 128 };
        len.parse::<u8>().is_ok_and(|l| l <= max)
    });
    if !ok {
        errors.push(FieldError::invalid(
            field,
            cidr,
            "must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)",
        ));
    }
}

fn check_labels(errors: &mut Errors, field: &str, labels: &BTreeMap<String, String>) {
    for (k, v) in labels {
        if let Some(d) = label_key_error(k) {
            errors.push(FieldError::invalid(field, k, d));
        }
        if let Some(d) = label_value_error(v) {
            errors.push(FieldError::invalid(format!("{field}[{k}]"), v, d));
        }
    }
}

fn check_quantities(errors: &mut Errors, field: &str, map: &BTreeMap<String, Quantity>) {
    for (k, q) in map {
        match crate::quantity::Quantity::parse(&q.value) {
            Ok(v) if v.compare(&crate::quantity::Quantity::from_milli(0)).is_lt() => {
                errors.push(FieldError::invalid(
                    format!("{field}[{k}]"),
                    &q.value,
                    "must be greater than or equal to 0",
                ));
            }
            Ok(_) => {}
            Err(e) => errors.push(FieldError::invalid(
                format!("{field}[{k}]"),
                &q.value,
                e.to_string(),
            )),
        }
    }
}

// -------------------------------------------------------------- metadata

/// The checks every object gets: its name, namespace, labels, annotations.
pub fn validate_meta(meta: &ObjectMeta, kind: Kind) -> Errors {
    let mut errors = Vec::new();
    if meta.name.is_empty() {
        errors.push(FieldError::required(
            "metadata.name",
            "name or generateName is required",
        ));
    } else {
        let problem = match kind {
            Kind::Namespace => dns_label_error(&meta.name),
            Kind::Service => dns1035_label_error(&meta.name),
            _ => dns_subdomain_error(&meta.name),
        };
        if let Some(d) = problem {
            errors.push(FieldError::invalid("metadata.name", &meta.name, d));
        }
    }
    if kind.namespaced() {
        if meta.namespace.is_empty() {
            errors.push(FieldError::required("metadata.namespace", ""));
        } else if let Some(d) = dns_label_error(&meta.namespace) {
            errors.push(FieldError::invalid(
                "metadata.namespace",
                &meta.namespace,
                d,
            ));
        }
    } else if !meta.namespace.is_empty() {
        errors.push(FieldError::forbidden(
            "metadata.namespace",
            "not allowed on this type",
        ));
    }
    check_labels(&mut errors, "metadata.labels", &meta.labels);
    let annotation_bytes: usize = meta
        .annotations
        .iter()
        .map(|(k, v)| k.len() + v.len())
        .sum();
    for k in meta.annotations.keys() {
        if let Some(d) = label_key_error(k) {
            errors.push(FieldError::invalid("metadata.annotations", k, d));
        }
    }
    if annotation_bytes > 256 * 1024 {
        errors.push(FieldError::too_long("metadata.annotations", 256 * 1024));
    }
    for (i, f) in meta.finalizers.iter().enumerate() {
        if label_key_error(f).is_some() {
            errors.push(FieldError::invalid(
                format!("metadata.finalizers[{i}]"),
                f,
                "must be a qualified name",
            ));
        }
    }
    for (i, o) in meta.owner_references.iter().enumerate() {
        let p = format!("metadata.ownerReferences[{i}]");
        if o.api_version.is_empty() {
            errors.push(FieldError::invalid(
                format!("{p}.apiVersion"),
                "",
                "version must not be empty",
            ));
        }
        if o.kind.is_empty() {
            errors.push(FieldError::invalid(
                format!("{p}.kind"),
                "",
                "kind must not be empty",
            ));
        }
        if o.name.is_empty() {
            errors.push(FieldError::invalid(
                format!("{p}.name"),
                "",
                "name must not be empty",
            ));
        }
        if o.uid.is_empty() {
            errors.push(FieldError::invalid(
                format!("{p}.uid"),
                "",
                "uid must not be empty",
            ));
        }
    }
    errors
}

// ----------------------------------------------------------------- kinds

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

fn container(
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

fn check_probe_port(
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

fn check_probe(errors: &mut Errors, p: &str, probe: &Probe, port_names: &BTreeSet<String>) {
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

fn pod_spec(errors: &mut Errors, p: &str, spec: &PodSpec) {
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
        ]
        .iter()
        .filter(|s| **s)
        .count();
        if sources == 0 {
            errors.push(FieldError::required(
                vp.clone(),
                "must specify a volume type (configMap, emptyDir or hostPath)",
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

pub fn endpoint_slice(slice: &EndpointSlice) -> Errors {
    let mut errors = Vec::new();
    check_one_of(
        &mut errors,
        "addressType".into(),
        &slice.address_type,
        &["IPv4", "IPv6", "FQDN"],
    );
    if slice.address_type.is_empty() {
        errors.push(FieldError::required("addressType", ""));
    }
    if slice.endpoints.len() > 1000 {
        errors.push(FieldError::too_long("endpoints", 1000));
    }
    for (i, ep) in slice.endpoints.iter().enumerate() {
        let p = format!("endpoints[{i}]");
        if ep.addresses.is_empty() || ep.addresses.len() > 100 {
            errors.push(FieldError::invalid(
                format!("{p}.addresses"),
                ep.addresses.len(),
                "must contain between 1 and 100 addresses",
            ));
        }
        for (j, a) in ep.addresses.iter().enumerate() {
            let field = format!("{p}.addresses[{j}]");
            match slice.address_type.as_str() {
                "IPv4" if a.parse::<std::net::Ipv4Addr>().is_err() => {
                    errors.push(FieldError::invalid(
                        field,
                        a,
                        "must be a valid IPv4 address",
                    ));
                }
                "IPv6" if a.parse::<std::net::Ipv6Addr>().is_err() => {
                    errors.push(FieldError::invalid(
                        field,
                        a,
                        "must be a valid IPv6 address",
                    ));
                }
                "FQDN" if dns_subdomain_error(a).is_some() => {
                    errors.push(FieldError::invalid(field, a, "must be a valid FQDN"));
                }
                _ => {}
            }
        }
        if let Some(h) = &ep.hostname
            && let Some(d) = dns_label_error(h)
        {
            errors.push(FieldError::invalid(format!("{p}.hostname"), h, d));
        }
    }
    if slice.ports.len() > 100 {
        errors.push(FieldError::too_long("ports", 100));
    }
    let mut names = BTreeSet::new();
    for (i, port) in slice.ports.iter().enumerate() {
        let p = format!("ports[{i}]");
        let name = port.name.clone().unwrap_or_default();
        if !name.is_empty()
            && let Some(d) = dns_label_error(&name)
        {
            errors.push(FieldError::invalid(format!("{p}.name"), &name, d));
        }
        if !names.insert(name.clone()) {
            errors.push(FieldError::duplicate(format!("{p}.name"), &name));
        }
        if let Some(n) = port.port {
            check_port(&mut errors, format!("{p}.port"), n);
        }
        if let Some(proto) = &port.protocol {
            check_protocol(&mut errors, format!("{p}.protocol"), proto);
        }
    }
    errors
}

/// A workload's selector and template: the selector must be non-empty and
/// select the template's labels, and the template must be a valid pod that
/// restarts always.
fn workload(
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

fn check_int_or_percent(errors: &mut Errors, field: &str, v: &Option<IntOrString>) -> bool {
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

fn config_key_error(key: &str) -> Option<String> {
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

pub fn lease(lease: &Lease) -> Errors {
    let mut errors = Vec::new();
    if let Some(d) = lease.spec.as_ref().and_then(|s| s.lease_duration_seconds)
        && d <= 0
    {
        errors.push(FieldError::invalid(
            "spec.leaseDurationSeconds",
            d,
            "must be greater than 0",
        ));
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

#[cfg(test)]
mod tests {
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
}
