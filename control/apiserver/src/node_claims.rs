//! What a Node claims: its podCIDR, allocated from the cluster CIDR when it
//! registers without one (a /24 by default), or the one it brings. Once set
//! a podCIDR never changes. Pure logic, like `service_claims`.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use skiff_api::v1::{Node, NodeSpec};
use skiff_api::validation::FieldError;

use crate::alloc::{Allocation, Allocators, Avoid, Cidr, Claim};

fn network(cidr: &str) -> Option<Ipv4Addr> {
    Cidr::parse(cidr).ok().map(|c| c.network())
}

/// The allocations a stored Node holds.
pub fn held(node: &Node) -> BTreeSet<Allocation> {
    node.spec
        .as_ref()
        .and_then(|s| network(&s.pod_cidr))
        .map(Allocation::PodCidr)
        .into_iter()
        .collect()
}

/// Fills in the podCIDR (keeping the old Node's) and returns the keys to
/// claim. `avoid` holds networks that lost a race in an earlier attempt.
pub fn assign(
    spec: &mut NodeSpec,
    old: Option<&NodeSpec>,
    alloc: &Allocators,
    avoid: &Avoid,
) -> Result<Vec<Claim>, Vec<FieldError>> {
    let old_cidr = old.map(|o| o.pod_cidr.clone()).unwrap_or_default();
    if !old_cidr.is_empty() {
        if spec.pod_cidr.is_empty() {
            spec.pod_cidr = old_cidr.clone();
        } else if spec.pod_cidr != old_cidr {
            return Err(vec![FieldError::invalid(
                "spec.podCIDR",
                &spec.pod_cidr,
                "may not change once set",
            )]);
        }
        if spec.pod_cidrs.is_empty() {
            spec.pod_cidrs = vec![old_cidr];
        }
        return Ok(Vec::new());
    }
    let explicit = !spec.pod_cidr.is_empty();
    if !explicit {
        match alloc.pick_pod_cidr(avoid) {
            Some(c) => spec.pod_cidr = c,
            None => {
                if alloc.cluster_cidr.is_some() {
                    // Once per server: every further node would say it again.
                    static SAID: std::sync::atomic::AtomicBool =
                        std::sync::atomic::AtomicBool::new(false);
                    if !SAID.swap(true, std::sync::atomic::Ordering::Relaxed) {
                        tracing::warn!("the cluster CIDR has no podCIDR left for new nodes");
                    }
                }
                return Ok(Vec::new());
            }
        }
    }
    if spec.pod_cidrs.is_empty() {
        spec.pod_cidrs = vec![spec.pod_cidr.clone()];
    }
    let Some(net) = network(&spec.pod_cidr) else {
        // Validation names the field.
        return Ok(Vec::new());
    };
    Ok(vec![Claim {
        allocation: Allocation::PodCidr(net),
        explicit,
        field: "spec.podCIDR".into(),
        value: spec.pod_cidr.clone(),
    }])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alloc() -> Allocators {
        Allocators::new(Cidr::parse("10.96.0.0/16").unwrap(), 30000..=30001)
            .with_cluster_cidr(Cidr::parse("10.244.0.0/16").unwrap(), 24)
    }

    #[test]
    fn allocates_keeps_and_refuses_changes() {
        let a = alloc();
        let mut spec = NodeSpec::default();
        let claims = assign(&mut spec, None, &a, &Avoid::new()).unwrap();
        assert_eq!(spec.pod_cidr, "10.244.0.0/24");
        assert_eq!(spec.pod_cidrs, ["10.244.0.0/24"]);
        assert_eq!(claims.len(), 1);
        assert!(!claims[0].explicit);

        let old = spec.clone();
        let mut update = NodeSpec::default();
        assert!(
            assign(&mut update, Some(&old), &a, &Avoid::new())
                .unwrap()
                .is_empty()
        );
        assert_eq!(
            update.pod_cidr, "10.244.0.0/24",
            "an update without podCIDR keeps it"
        );

        let mut changed = NodeSpec {
            pod_cidr: "10.244.9.0/24".into(),
            ..Default::default()
        };
        let err = assign(&mut changed, Some(&old), &a, &Avoid::new()).unwrap_err();
        assert_eq!(err[0].field, "spec.podCIDR");

        let mut own = NodeSpec {
            pod_cidr: "10.200.3.0/24".into(),
            ..Default::default()
        };
        let claims = assign(&mut own, None, &a, &Avoid::new()).unwrap();
        assert!(claims[0].explicit);
        assert_eq!(
            claims[0].allocation,
            Allocation::PodCidr("10.200.3.0".parse().unwrap())
        );
    }
}
