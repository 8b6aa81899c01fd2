//! coordination.k8s.io/v1: Leases.

use super::common::*;

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
