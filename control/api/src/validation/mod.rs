//! Validation with field-precise errors, worded like Kubernetes'
//! (`spec.ports[0].port: Invalid value: 70000: must be between 1 and 65535,
//! inclusive`). Pure functions over the typed objects: cluster-dependent
//! checks (CIDRs, the NodePort range) are the API server's. One module per
//! API group (`core`, `apps`, `discovery`, `coordination`, `rbac`); what they
//! share (field checks, metadata) is in `common`.

mod apps;
mod common;
mod coordination;
mod core;
mod discovery;
mod rbac;
#[cfg(test)]
mod tests;

pub use crate::names::{
    dns_label_error, dns_subdomain_error, dns1035_label_error, label_key_error, label_value_error,
    port_name_error,
};
pub use apps::{deployment, replica_set};
pub use common::{ErrorType, FieldError, validate_meta};
pub use coordination::lease;
pub use core::{
    config_map, endpoints, event, namespace, node, pod, secret, service, service_account,
};
pub use discovery::endpoint_slice;
pub use rbac::{cluster_role, cluster_role_binding, role, role_binding, role_ref_change};
