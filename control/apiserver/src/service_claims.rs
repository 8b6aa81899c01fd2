//! What a Service claims — its ClusterIP and NodePorts — worked out from
//! the Service being written and the one it replaces. Pure logic: the
//! registry turns the claims into create-if-absent keys in its transaction.

use std::collections::{BTreeSet, HashSet};
use std::net::Ipv4Addr;

use skiff_api::v1::{Service, ServiceSpec};
use skiff_api::validation::FieldError;

use crate::alloc::{Allocation, Allocators, Avoid, Claim};

/// The allocations a stored Service holds.
pub fn held(svc: &Service) -> BTreeSet<Allocation> {
    let mut keys = BTreeSet::new();
    if let Some(spec) = &svc.spec {
        if let Ok(ip) = spec.cluster_ip.parse::<Ipv4Addr>() {
            keys.insert(Allocation::ClusterIp(ip));
        }
        for p in &spec.ports {
            if let Ok(port) = u16::try_from(p.node_port)
                && port != 0
            {
                keys.insert(Allocation::NodePort(port));
            }
        }
    }
    keys
}

fn needs_node_ports(ty: &str) -> bool {
    ty == "NodePort" || ty == "LoadBalancer"
}

/// Fills in the ClusterIP and NodePorts of `spec` (keeping the old
/// Service's where the new one leaves them out, as Kubernetes does on
/// update) and returns the keys to claim. `avoid` holds candidates that lost
/// a race in an earlier attempt.
pub fn assign(
    spec: &mut ServiceSpec,
    old: Option<&ServiceSpec>,
    alloc: &Allocators,
    avoid: &Avoid,
) -> Result<Vec<Claim>, Vec<FieldError>> {
    let mut claims = Vec::new();
    let mut errors = Vec::new();
    let ty = spec.r#type.clone();
    let old_ip = old.map(|o| o.cluster_ip.clone()).unwrap_or_default();

    if ty == "ExternalName" {
        spec.cluster_ip.clear();
        spec.cluster_ips.clear();
        spec.ip_families.clear();
        spec.ip_family_policy = None;
    } else {
        if spec.cluster_ip.is_empty() && !old_ip.is_empty() {
            spec.cluster_ip = old_ip.clone();
        }
        if !old_ip.is_empty() && spec.cluster_ip != old_ip {
            errors.push(FieldError::invalid(
                "spec.clusterIP",
                &spec.cluster_ip,
                "field is immutable",
            ));
        } else if spec.cluster_ip.is_empty() {
            match alloc.pick_ip(avoid) {
                Some(ip) => {
                    spec.cluster_ip = ip.to_string();
                    claims.push(Claim {
                        allocation: Allocation::ClusterIp(ip),
                        explicit: false,
                        field: "spec.clusterIP".into(),
                        value: spec.cluster_ip.clone(),
                    });
                }
                None => errors.push(FieldError::invalid(
                    "spec.clusterIP",
                    "",
                    format!("no addresses left in the service range {}", alloc.cidr),
                )),
            }
        } else if spec.cluster_ip != "None" {
            match spec.cluster_ip.parse::<Ipv4Addr>() {
                Ok(ip) if alloc.cidr.usable(ip) => {
                    if old_ip != spec.cluster_ip {
                        claims.push(Claim {
                            allocation: Allocation::ClusterIp(ip),
                            explicit: true,
                            field: "spec.clusterIP".into(),
                            value: spec.cluster_ip.clone(),
                        });
                    }
                }
                Ok(_) => errors.push(FieldError::invalid(
                    "spec.clusterIP",
                    &spec.cluster_ip,
                    format!(
                        "provided IP is not in the valid range. The range of valid IPs is {}",
                        alloc.cidr
                    ),
                )),
                // The validation step names a malformed address.
                Err(_) => {}
            }
        }
        if !spec.cluster_ip.is_empty() {
            spec.cluster_ips = vec![spec.cluster_ip.clone()];
            if spec.cluster_ip != "None" || spec.ip_families.is_empty() {
                spec.ip_families = vec!["IPv4".into()];
            }
            spec.ip_family_policy
                .get_or_insert_with(|| "SingleStack".into());
        }
    }

    let old_ports: Vec<_> = old.map(|o| o.ports.clone()).unwrap_or_default();
    let old_held: HashSet<i32> = old_ports
        .iter()
        .map(|p| p.node_port)
        .filter(|p| *p != 0)
        .collect();
    let mut taken_here: HashSet<u16> = HashSet::new();
    let range = alloc.node_ports.clone();
    if needs_node_ports(&ty) {
        for (i, p) in spec.ports.iter_mut().enumerate() {
            let field = format!("spec.ports[{i}].nodePort");
            if p.node_port == 0
                && let Some(o) = old_ports
                    .iter()
                    .find(|o| o.port == p.port && o.protocol == p.protocol && o.node_port != 0)
            {
                p.node_port = o.node_port;
            }
            if p.node_port == 0 {
                let mut avoid = avoid.clone();
                avoid.extend(taken_here.iter().map(|p| Allocation::NodePort(*p)));
                match alloc.pick_port(&avoid) {
                    Some(port) => {
                        p.node_port = i32::from(port);
                        taken_here.insert(port);
                        claims.push(Claim {
                            allocation: Allocation::NodePort(port),
                            explicit: false,
                            field,
                            value: port.to_string(),
                        });
                    }
                    None => errors.push(FieldError::invalid(
                        field,
                        0,
                        "no node ports left in the range",
                    )),
                }
                continue;
            }
            let Ok(port) = u16::try_from(p.node_port) else {
                continue;
            };
            if !range.contains(&port) {
                errors.push(FieldError::invalid(
                    field,
                    p.node_port,
                    format!("provided port is not in the valid range. The range of valid ports is {}-{}", range.start(), range.end()),
                ));
            } else if !old_held.contains(&p.node_port) && taken_here.insert(port) {
                claims.push(Claim {
                    allocation: Allocation::NodePort(port),
                    explicit: true,
                    field,
                    value: port.to_string(),
                });
            }
        }
    }
    if errors.is_empty() {
        Ok(claims)
    } else {
        Err(errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alloc::Cidr;
    use skiff_api::v1::ServicePort;

    fn alloc() -> Allocators {
        Allocators::new(Cidr::parse("10.96.0.0/16").unwrap(), 30000..=32767)
    }

    fn spec(ty: &str, ports: &[(i32, i32)]) -> ServiceSpec {
        ServiceSpec {
            r#type: ty.into(),
            ports: ports
                .iter()
                .map(|(port, node_port)| ServicePort {
                    port: *port,
                    node_port: *node_port,
                    protocol: "TCP".into(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn create_picks_what_is_missing() {
        let a = alloc();
        let mut s = spec("NodePort", &[(80, 0), (443, 30443)]);
        let claims = assign(&mut s, None, &a, &Avoid::new()).unwrap();
        assert_eq!(claims.len(), 3);
        assert!(!claims[0].explicit && matches!(claims[0].allocation, Allocation::ClusterIp(_)));
        assert!(a.cidr.usable(s.cluster_ip.parse().unwrap()));
        assert!((30000..=32767).contains(&s.ports[0].node_port));
        assert!(claims[2].explicit && claims[2].allocation == Allocation::NodePort(30443));
        assert_eq!(s.cluster_ips, vec![s.cluster_ip.clone()]);
    }

    #[test]
    fn update_keeps_allocations_and_refuses_changes() {
        let a = alloc();
        let mut old = spec("NodePort", &[(80, 0)]);
        assign(&mut old, None, &a, &Avoid::new()).unwrap();
        let mut new = spec("NodePort", &[(80, 0)]);
        let claims = assign(&mut new, Some(&old), &a, &Avoid::new()).unwrap();
        assert!(claims.is_empty(), "{claims:?}");
        assert_eq!(
            (new.cluster_ip.as_str(), new.ports[0].node_port),
            (old.cluster_ip.as_str(), old.ports[0].node_port)
        );
        let mut moved = spec("NodePort", &[(80, 0)]);
        moved.cluster_ip = "10.96.9.9".into();
        let errs = assign(&mut moved, Some(&old), &a, &Avoid::new()).unwrap_err();
        assert_eq!(
            errs[0].to_string(),
            "spec.clusterIP: Invalid value: \"10.96.9.9\": field is immutable"
        );
    }

    #[test]
    fn out_of_range_requests_are_field_errors() {
        let a = alloc();
        let mut s = spec("NodePort", &[(80, 80)]);
        s.cluster_ip = "192.168.1.1".into();
        let errs: Vec<String> = assign(&mut s, None, &a, &Avoid::new())
            .unwrap_err()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert!(errs[0].starts_with(
            "spec.clusterIP: Invalid value: \"192.168.1.1\": provided IP is not in the valid range"
        ));
        assert!(errs[1].starts_with(
            "spec.ports[0].nodePort: Invalid value: 80: provided port is not in the valid range"
        ));
    }

    #[test]
    fn headless_and_external_name_claim_nothing() {
        let a = alloc();
        let mut h = spec("ClusterIP", &[(80, 0)]);
        h.cluster_ip = "None".into();
        assert!(assign(&mut h, None, &a, &Avoid::new()).unwrap().is_empty());
        let mut e = spec("ExternalName", &[]);
        assert!(assign(&mut e, None, &a, &Avoid::new()).unwrap().is_empty());
        assert!(e.cluster_ip.is_empty());
    }
}
