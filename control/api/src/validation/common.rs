//! What every group's validation shares: the error type, field checks,
//! and object metadata.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use crate::Kind;
pub(crate) use crate::names::*;
pub(crate) use crate::v1::*;

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
    pub(crate) fn new(
        field: impl Into<String>,
        t: ErrorType,
        value: Option<String>,
        detail: impl Into<String>,
    ) -> Self {
        FieldError {
            field: field.into(),
            error_type: t,
            value: value.map(truncated),
            detail: detail.into(),
        }
    }
}

/// The longest offending value an error repeats: a 2 MB label value is
/// not echoed back whole.
const MAX_ECHOED: usize = 256;

fn truncated(v: String) -> String {
    if v.len() <= MAX_ECHOED {
        return v;
    }
    let mut end = MAX_ECHOED;
    while !v.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...(truncated: {} bytes)", &v[..end], v.len())
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

pub type Errors = Vec<FieldError>;

pub(super) fn check_port(errors: &mut Errors, field: String, port: i32) {
    if !(1..=65535).contains(&port) {
        errors.push(FieldError::invalid(
            field,
            port,
            "must be between 1 and 65535, inclusive",
        ));
    }
}

pub(super) fn check_protocol(errors: &mut Errors, field: String, protocol: &str) {
    if !protocol.is_empty() && !["TCP", "UDP", "SCTP"].contains(&protocol) {
        errors.push(FieldError::not_supported(
            field,
            protocol,
            &["SCTP", "TCP", "UDP"],
        ));
    }
}

pub(super) fn check_one_of(errors: &mut Errors, field: String, value: &str, allowed: &[&str]) {
    if !value.is_empty() && !allowed.contains(&value) {
        errors.push(FieldError::not_supported(field, value, allowed));
    }
}

pub(super) fn check_ip(errors: &mut Errors, field: String, ip: &str) {
    if ip.parse::<IpAddr>().is_err() {
        errors.push(FieldError::invalid(
            field,
            ip,
            "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)",
        ));
    }
}

pub(super) fn check_cidr(errors: &mut Errors, field: String, cidr: &str) {
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

pub(super) fn check_labels(errors: &mut Errors, field: &str, labels: &BTreeMap<String, String>) {
    for (k, v) in labels {
        if let Some(d) = label_key_error(k) {
            errors.push(FieldError::invalid(field, k, d));
        }
        if let Some(d) = label_value_error(v) {
            errors.push(FieldError::invalid(format!("{field}[{k}]"), v, d));
        }
    }
}

pub(super) fn check_quantities(errors: &mut Errors, field: &str, map: &BTreeMap<String, Quantity>) {
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
            Kind::Role | Kind::ClusterRole | Kind::RoleBinding | Kind::ClusterRoleBinding => {
                path_segment_error(&meta.name)
            }
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
