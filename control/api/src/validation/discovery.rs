//! discovery.k8s.io/v1: EndpointSlices.

use super::common::*;
use std::collections::BTreeSet;

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
