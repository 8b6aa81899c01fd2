//! The cluster's DNS Service: `kube-system/kube-dns` with the fixed
//! ClusterIP pods' resolv.conf names (10.96.0.10 by default), ports 53/UDP
//! and 53/TCP, and an EndpointSlice naming this server — what kubeadm's
//! CoreDNS manifests give a cluster, so the datapath sends pods' queries
//! here.

use std::net::SocketAddr;

use anyhow::{Context, Result};
use skiff_api::v1::{
    Endpoint, EndpointConditions, EndpointPort, IntOrString, ServicePort, ServiceSpec,
};
use skiff_api::{EndpointSlice, Namespace, ObjectMeta, Service};
use skiff_client::Client;

pub const NAMESPACE: &str = "kube-system";
pub const SERVICE: &str = "kube-dns";

fn meta(name: &str, namespace: &str, labels: &[(&str, &str)]) -> Option<ObjectMeta> {
    Some(ObjectMeta {
        name: name.to_string(),
        namespace: namespace.to_string(),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..Default::default()
    })
}

/// Creates what is missing; an existing Service is left as it is (an
/// operator's edits win), a different ClusterIP is reported.
pub async fn ensure(
    client: &Client,
    cluster_ip: &str,
    served: SocketAddr,
    instance: &str,
) -> Result<()> {
    let ns = Namespace {
        metadata: meta(NAMESPACE, "", &[]),
        ..Default::default()
    };
    // kube-system is there on any skiff server; create it only when an
    // older one lacks it (the addon's role may read it, not make it).
    match client.get::<Namespace>("", NAMESPACE).await {
        Ok(_) => {}
        Err(e) if e.is_not_found() => match client.create(&ns).await {
            Ok(_) => {}
            Err(e) if e.is_already_exists() => {}
            Err(e) => return Err(anyhow::anyhow!("create namespace {NAMESPACE}: {e}")),
        },
        Err(e) => return Err(anyhow::anyhow!("read namespace {NAMESPACE}: {e}")),
    }
    let port = |name: &str, protocol: &str| ServicePort {
        name: name.to_string(),
        protocol: protocol.to_string(),
        port: 53,
        target_port: Some(IntOrString::int(served.port() as i32)),
        ..Default::default()
    };
    let svc = Service {
        metadata: meta(
            SERVICE,
            NAMESPACE,
            &[("k8s-app", "kube-dns"), ("kubernetes.io/name", "skiff-dns")],
        ),
        spec: Some(ServiceSpec {
            cluster_ip: cluster_ip.to_string(),
            ports: vec![port("dns", "UDP"), port("dns-tcp", "TCP")],
            selector: [("k8s-app".to_string(), "kube-dns".to_string())].into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    match client.create(&svc).await {
        Ok(_) => tracing::info!("created Service {NAMESPACE}/{SERVICE} at {cluster_ip}"),
        Err(e) if e.is_already_exists() => {
            let existing: Service = client
                .get(NAMESPACE, SERVICE)
                .await
                .context("read the DNS Service")?;
            let ip = existing
                .spec
                .as_ref()
                .map(|s| s.cluster_ip.as_str())
                .unwrap_or("");
            if ip != cluster_ip {
                tracing::warn!(
                    "Service {NAMESPACE}/{SERVICE} has ClusterIP {ip}, not {cluster_ip}: left as it is"
                );
            }
        }
        Err(e) => {
            return Err(anyhow::anyhow!(
                "create Service {NAMESPACE}/{SERVICE} ({cluster_ip}): {e}"
            ));
        }
    }
    if served.ip().is_unspecified() {
        return Ok(());
    }
    let name = format!("{SERVICE}-{instance}");
    let eport = |name: &str, protocol: &str| EndpointPort {
        name: Some(name.to_string()),
        protocol: Some(protocol.to_string()),
        port: Some(served.port() as i32),
        ..Default::default()
    };
    let mut slice = EndpointSlice {
        metadata: meta(&name, NAMESPACE, &[("kubernetes.io/service-name", SERVICE)]),
        address_type: if served.is_ipv4() {
            "IPv4".into()
        } else {
            "IPv6".into()
        },
        endpoints: vec![Endpoint {
            addresses: vec![served.ip().to_string()],
            conditions: Some(EndpointConditions {
                ready: Some(true),
                serving: Some(true),
                terminating: Some(false),
            }),
            ..Default::default()
        }],
        ports: vec![eport("dns", "UDP"), eport("dns-tcp", "TCP")],
        ..Default::default()
    };
    match client.create(&slice).await {
        Ok(_) => {}
        Err(e) if e.is_already_exists() => {
            let existing: EndpointSlice = client
                .get(NAMESPACE, &name)
                .await
                .context("read the DNS EndpointSlice")?;
            slice.metadata = existing.metadata;
            client
                .update(&slice)
                .await
                .map_err(|e| anyhow::anyhow!("update EndpointSlice {name}: {e}"))?;
        }
        Err(e) => return Err(anyhow::anyhow!("create EndpointSlice {name}: {e}")),
    }
    Ok(())
}
