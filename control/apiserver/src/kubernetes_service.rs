//! The `kubernetes` Service in `default`, as kube-apiserver keeps it: the
//! service range's first address, port 443 (`https`), and an EndpointSlice
//! naming the API servers' advertised addresses, so in-cluster clients
//! reach the API at `https://kubernetes.default.svc`. Each server adds its
//! own address when it starts.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use skiff_api::ObjectMeta;
use skiff_api::v1::{
    Endpoint, EndpointConditions, EndpointPort, EndpointSlice, IntOrString, Service, ServicePort,
    ServiceSpec,
};

use crate::error::ApiResult;
use crate::registry::{Registry, WriteOptions};

pub const NAME: &str = "kubernetes";
pub const NAMESPACE: &str = "default";
const MANAGED_BY: &str = "skiff-apiserver";

fn meta(labels: &[(&str, &str)]) -> Option<ObjectMeta> {
    Some(ObjectMeta {
        name: NAME.into(),
        namespace: NAMESPACE.into(),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<BTreeMap<_, _>>(),
        ..Default::default()
    })
}

pub fn service(cluster_ip: &str, target_port: u16) -> Service {
    Service {
        metadata: meta(&[("component", "apiserver"), ("provider", "kubernetes")]),
        spec: Some(ServiceSpec {
            cluster_ip: cluster_ip.into(),
            ports: vec![ServicePort {
                name: "https".into(),
                protocol: "TCP".into(),
                port: 443,
                target_port: Some(IntOrString::int(i32::from(target_port))),
                ..Default::default()
            }],
            r#type: "ClusterIP".into(),
            session_affinity: "None".into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn endpoint(addr: SocketAddr) -> Endpoint {
    Endpoint {
        addresses: vec![addr.ip().to_string()],
        conditions: Some(EndpointConditions {
            ready: Some(true),
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub fn slice(addr: SocketAddr) -> EndpointSlice {
    EndpointSlice {
        metadata: meta(&[
            ("kubernetes.io/service-name", NAME),
            ("endpointslice.kubernetes.io/managed-by", MANAGED_BY),
        ]),
        address_type: if addr.is_ipv4() { "IPv4" } else { "IPv6" }.into(),
        endpoints: vec![endpoint(addr)],
        ports: vec![EndpointPort {
            name: Some("https".into()),
            protocol: Some("TCP".into()),
            port: Some(i32::from(addr.port())),
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// Creates the Service when it is missing (an operator's edits stay) and
/// puts `advertised` in its EndpointSlice.
pub async fn ensure(
    registry: &Registry,
    cluster_ip: &str,
    advertised: Option<SocketAddr>,
    port: u16,
) -> ApiResult<()> {
    match registry.get::<Service>(NAMESPACE, NAME).await {
        Ok(_) => {}
        Err(e) if e.code == 404 => {
            match registry
                .create(service(cluster_ip, port), WriteOptions::default())
                .await
            {
                Ok(_) => {}
                Err(e) if e.code == 409 => {}
                Err(e) => return Err(e),
            }
        }
        Err(e) => return Err(e),
    }
    let Some(addr) = advertised else {
        return Ok(());
    };
    for _ in 0..5 {
        let out = match registry.get::<EndpointSlice>(NAMESPACE, NAME).await {
            Err(e) if e.code == 404 => registry
                .create(slice(addr), WriteOptions::default())
                .await
                .map(|_| ()),
            Err(e) => return Err(e),
            Ok(mut cur) => {
                let ip = addr.ip().to_string();
                let port_ok = cur
                    .ports
                    .iter()
                    .any(|p| p.port == Some(i32::from(addr.port())));
                if cur.endpoints.iter().any(|e| e.addresses.contains(&ip)) && port_ok {
                    return Ok(());
                }
                if !port_ok {
                    // Servers of one cluster share a port; a new one wins.
                    cur.ports = slice(addr).ports;
                    cur.endpoints.clear();
                }
                cur.endpoints.push(endpoint(addr));
                registry
                    .update(cur, false, WriteOptions::default())
                    .await
                    .map(|_| ())
            }
        };
        match out {
            Err(e) if e.code == 409 => continue,
            r => return r,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff_api::Resource;

    #[test]
    fn the_service_and_its_slice_are_valid() {
        let s = service("10.96.0.1", 6443);
        assert!(s.validate().is_empty(), "{:?}", s.validate());
        let e = slice("192.0.2.7:6443".parse().unwrap());
        assert!(e.validate().is_empty(), "{:?}", e.validate());
        assert_eq!(e.endpoints[0].addresses, ["192.0.2.7"]);
    }
}
