//! What differs between kinds on a write, in one place per kind (Kubernetes'
//! `RESTCreateStrategy` / `RESTUpdateStrategy` / `RESTDeleteStrategy`): the
//! status a new object starts with, defaults, what it claims from the
//! allocators, how it is deleted. The registry is generic over this trait
//! and never asks which kind it has.

use std::collections::BTreeSet;

use skiff_api::Resource;
use skiff_api::v1::*;
use skiff_api::validation::FieldError;

use crate::alloc::{Allocation, Allocators, Avoid, Claim};
use crate::authz::admission::{self, Admission, Op};
use crate::error::ApiResult;

/// Namespaces that exist from the start and cannot be deleted.
pub const SYSTEM_NAMESPACES: [&str; 4] =
    ["default", "kube-system", "kube-public", "kube-node-lease"];

pub trait Strategy: Resource {
    /// Other objects name objects of this kind as their owner, so the
    /// garbage collector follows its deletion (propagation finalizers
    /// apply).
    const OWNS_DEPENDENTS: bool = true;

    /// The object lives only so long after its last write (the server's
    /// event TTL, kube-apiserver's `--event-ttl`); otherwise until it is
    /// deleted.
    const EXPIRES: bool = false;

    /// The status a new object starts with (none unless the kind says).
    fn initial_status(&mut self) {
        self.clear_status();
    }

    /// Kubernetes' defaults for unset fields, on create and update.
    fn defaults(&mut self) {}

    /// Fills in what the allocators hand out (keeping `old`'s on update)
    /// and returns what this write must claim.
    fn claims(
        &mut self,
        _old: Option<&Self>,
        _alloc: &Allocators,
        _avoid: &Avoid,
    ) -> Result<Vec<Claim>, Vec<FieldError>> {
        Ok(Vec::new())
    }

    /// The allocations a stored object holds (released when it goes).
    fn held(&self) -> BTreeSet<Allocation> {
        BTreeSet::new()
    }

    /// Refuses the deletion of objects that must stay.
    fn check_delete(&self) -> Result<(), &'static str> {
        Ok(())
    }

    /// Seconds the object gets before it is removed (0: at once).
    fn delete_grace(&self, _requested: Option<i64>) -> i64 {
        0
    }

    /// What marks it as being deleted, besides its deletionTimestamp.
    fn mark_terminating(&mut self) {}

    /// What an update may not change (beyond what every object keeps).
    fn validate_update(&self, _old: &Self) -> Vec<FieldError> {
        Vec::new()
    }

    /// Admission that depends on the object and its writer (the server's
    /// own writes skip it): `self` is the object as it would be stored (for
    /// a delete, as it is), `old` what an update replaces.
    fn admit(&self, _old: Option<&Self>, _op: Op, _a: &Admission) -> ApiResult<()> {
        Ok(())
    }

    /// A deleted object whose last finalizer went is removed by that update.
    fn finished(&self) -> bool {
        let meta = self.meta();
        meta.deletion_timestamp.is_some() && meta.finalizers.is_empty()
    }
}

impl Strategy for Pod {
    fn admit(&self, old: Option<&Self>, op: Op, a: &Admission) -> ApiResult<()> {
        admission::pod(self, old, op, a)
    }

    fn initial_status(&mut self) {
        self.status = Some(PodStatus {
            phase: "Pending".into(),
            ..Default::default()
        });
    }

    fn defaults(&mut self) {
        if let Some(spec) = &mut self.spec {
            crate::defaults::pod_spec(spec);
            // Kubernetes' ServiceAccount admission: pods run as their
            // namespace's `default` account unless they name one.
            if spec.service_account_name.is_empty() {
                spec.service_account_name = "default".into();
            }
        }
    }

    /// A pod on a node gets its grace period: the node stops it, then
    /// deletes it. One never bound, or already finished, goes at once.
    fn delete_grace(&self, requested: Option<i64>) -> i64 {
        let Some(spec) = &self.spec else { return 0 };
        let phase = self.status.as_ref().map(|s| s.phase.as_str()).unwrap_or("");
        if spec.node_name.is_empty() || phase == "Succeeded" || phase == "Failed" {
            return 0;
        }
        requested
            .unwrap_or(spec.termination_grace_period_seconds.unwrap_or(30))
            .max(0)
    }

    /// Except that a bound pod waits for its node to confirm it stopped.
    fn finished(&self) -> bool {
        let meta = self.meta();
        if meta.deletion_timestamp.is_none() || !meta.finalizers.is_empty() {
            return false;
        }
        let bound = self.spec.as_ref().is_some_and(|s| !s.node_name.is_empty());
        !bound || meta.deletion_grace_period_seconds.unwrap_or(0) == 0
    }
}

impl Strategy for Namespace {
    const OWNS_DEPENDENTS: bool = false;

    fn initial_status(&mut self) {
        self.status = Some(NamespaceStatus {
            phase: "Active".into(),
            ..Default::default()
        });
    }

    fn check_delete(&self) -> Result<(), &'static str> {
        if SYSTEM_NAMESPACES.contains(&self.meta().name.as_str()) {
            return Err("this namespace may not be deleted");
        }
        Ok(())
    }

    /// Its content is removed first, so it always gets a grace period.
    fn delete_grace(&self, _requested: Option<i64>) -> i64 {
        1
    }

    fn mark_terminating(&mut self) {
        self.status.get_or_insert_with(Default::default).phase = "Terminating".into();
    }
}

impl Strategy for Node {
    fn admit(&self, old: Option<&Self>, op: Op, a: &Admission) -> ApiResult<()> {
        admission::node(self, old, op, a)
    }

    const OWNS_DEPENDENTS: bool = false;

    /// A node registers with its status (capacity, addresses).
    fn initial_status(&mut self) {}

    fn claims(
        &mut self,
        old: Option<&Self>,
        alloc: &Allocators,
        avoid: &Avoid,
    ) -> Result<Vec<Claim>, Vec<FieldError>> {
        let old = old.and_then(|o| o.spec.as_ref());
        let spec = self.spec.get_or_insert_with(Default::default);
        crate::node_claims::assign(spec, old, alloc, avoid)
    }

    fn held(&self) -> BTreeSet<Allocation> {
        crate::node_claims::held(self)
    }
}

impl Strategy for Service {
    fn defaults(&mut self) {
        if let Some(spec) = &mut self.spec {
            crate::defaults::service(spec);
        }
    }

    fn claims(
        &mut self,
        old: Option<&Self>,
        alloc: &Allocators,
        avoid: &Avoid,
    ) -> Result<Vec<Claim>, Vec<FieldError>> {
        let old = old.and_then(|o| o.spec.as_ref());
        let spec = self.spec.get_or_insert_with(Default::default);
        crate::service_claims::assign(spec, old, alloc, avoid)
    }

    fn held(&self) -> BTreeSet<Allocation> {
        crate::service_claims::held(self)
    }
}

impl Strategy for Deployment {
    fn defaults(&mut self) {
        if let Some(spec) = &mut self.spec {
            crate::defaults::deployment(spec);
        }
    }
}

impl Strategy for ReplicaSet {
    fn defaults(&mut self) {
        if let Some(spec) = &mut self.spec {
            crate::defaults::replica_set(spec);
        }
    }
}

impl Strategy for EndpointSlice {
    fn defaults(&mut self) {
        crate::defaults::endpoint_slice(self);
    }
}

impl Strategy for ConfigMap {}

impl Strategy for Lease {
    fn admit(&self, old: Option<&Self>, op: Op, a: &Admission) -> ApiResult<()> {
        admission::lease(self, old, op, a)
    }
}

impl Strategy for Secret {
    /// `stringData` is write-only: merged into `data` (base64), then gone.
    fn defaults(&mut self) {
        use base64::Engine;
        for (k, v) in std::mem::take(&mut self.string_data) {
            self.data
                .insert(k, base64::engine::general_purpose::STANDARD.encode(v));
        }
        if self.r#type.is_empty() {
            self.r#type = "Opaque".into();
        }
    }

    fn validate_update(&self, old: &Self) -> Vec<FieldError> {
        let mut errors = Vec::new();
        if self.r#type != old.r#type {
            errors.push(FieldError::invalid(
                "type",
                &self.r#type,
                "field is immutable",
            ));
        }
        if old.immutable == Some(true) {
            if self.data != old.data {
                errors.push(FieldError::forbidden(
                    "data",
                    "field is immutable when `immutable` is set",
                ));
            }
            if self.immutable != Some(true) {
                errors.push(FieldError::forbidden(
                    "immutable",
                    "field is immutable when `immutable` is set",
                ));
            }
        }
        errors
    }
}

impl Strategy for Role {
    const OWNS_DEPENDENTS: bool = false;

    fn admit(&self, _old: Option<&Self>, op: Op, a: &Admission) -> ApiResult<()> {
        admission::role(
            Self::KIND,
            self.namespace(),
            self.name(),
            &self.rules,
            op,
            a,
        )
    }
}

impl Strategy for ClusterRole {
    const OWNS_DEPENDENTS: bool = false;

    fn admit(&self, _old: Option<&Self>, op: Op, a: &Admission) -> ApiResult<()> {
        admission::role(Self::KIND, "", self.name(), &self.rules, op, a)
    }
}

impl Strategy for RoleBinding {
    const OWNS_DEPENDENTS: bool = false;

    fn validate_update(&self, old: &Self) -> Vec<FieldError> {
        skiff_api::validation::role_ref_change(old.role_ref.as_ref(), self.role_ref.as_ref())
    }

    fn admit(&self, _old: Option<&Self>, op: Op, a: &Admission) -> ApiResult<()> {
        let r = self.role_ref.as_ref();
        admission::binding(Self::KIND, self.namespace(), self.name(), r, op, a)
    }
}

impl Strategy for ClusterRoleBinding {
    const OWNS_DEPENDENTS: bool = false;

    fn validate_update(&self, old: &Self) -> Vec<FieldError> {
        skiff_api::validation::role_ref_change(old.role_ref.as_ref(), self.role_ref.as_ref())
    }

    fn admit(&self, _old: Option<&Self>, op: Op, a: &Admission) -> ApiResult<()> {
        let r = self.role_ref.as_ref();
        admission::binding(Self::KIND, "", self.name(), r, op, a)
    }
}

impl Strategy for Event {
    const OWNS_DEPENDENTS: bool = false;
    /// Events do not pile up forever.
    const EXPIRES: bool = true;
}

impl Strategy for ServiceAccount {}

impl Strategy for Endpoints {
    fn defaults(&mut self) {
        crate::defaults::endpoints(self);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bound_pod(phase: &str) -> Pod {
        Pod {
            spec: Some(PodSpec {
                node_name: "n1".into(),
                termination_grace_period_seconds: Some(7),
                ..Default::default()
            }),
            status: Some(PodStatus {
                phase: phase.into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn pods_on_a_node_get_their_grace_and_wait_for_it() {
        assert_eq!(bound_pod("Running").delete_grace(None), 7);
        assert_eq!(bound_pod("Running").delete_grace(Some(0)), 0);
        assert_eq!(bound_pod("Running").delete_grace(Some(-3)), 0);
        assert_eq!(bound_pod("Succeeded").delete_grace(None), 0);
        assert_eq!(Pod::default().delete_grace(Some(30)), 0, "never bound");

        let mut p = bound_pod("Running");
        p.meta_mut().deletion_timestamp = Some(skiff_api::wire::Time::now_seconds());
        p.meta_mut().deletion_grace_period_seconds = Some(7);
        assert!(!p.finished(), "the node has not confirmed it stopped");
        p.meta_mut().deletion_grace_period_seconds = Some(0);
        assert!(p.finished());
        p.meta_mut().finalizers.push("x".into());
        assert!(!p.finished(), "a finalizer holds it");
    }

    #[test]
    fn system_namespaces_stay() {
        let mut ns = Namespace::default();
        ns.meta_mut().name = "kube-system".into();
        assert!(ns.check_delete().is_err());
        ns.meta_mut().name = "team-a".into();
        assert!(ns.check_delete().is_ok());
        ns.mark_terminating();
        assert_eq!(ns.status.unwrap().phase, "Terminating");
    }
}
