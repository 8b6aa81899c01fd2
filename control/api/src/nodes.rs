//! What every component agrees on about nodes' heartbeats: the namespace
//! of their Leases and a node's Lease as first created (by `skiff node` and
//! by simulated nodes alike).

use crate::v1::{LeaseSpec, Time};
use crate::{Lease, ObjectMeta};

/// Where nodes renew their Leases (as Kubernetes).
pub const LEASE_NAMESPACE: &str = "kube-node-lease";
/// How long a node's Lease holds without renewal.
pub const LEASE_SECONDS: i32 = 40;

/// A node's heartbeat Lease as first created.
pub fn node_lease(name: &str, now: Time) -> Lease {
    Lease {
        api_version: "coordination.k8s.io/v1".into(),
        kind: "Lease".into(),
        metadata: Some(ObjectMeta {
            name: name.to_string(),
            namespace: LEASE_NAMESPACE.into(),
            ..Default::default()
        }),
        spec: Some(LeaseSpec {
            holder_identity: Some(name.to_string()),
            lease_duration_seconds: Some(LEASE_SECONDS),
            acquire_time: Some(now),
            renew_time: Some(now),
            lease_transitions: Some(0),
        }),
    }
}
