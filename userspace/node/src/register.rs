//! The node's own objects: its Node (capacity, addresses, info, the Ready
//! condition) and its heartbeat Lease in `kube-node-lease`.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::Duration;

use anyhow::{Context, Result};
use skiff_api::v1::{
    Condition, DaemonEndpoint, NodeAddress, NodeDaemonEndpoints, NodeSpec, NodeStatus,
    NodeSystemInfo, Quantity, Time,
};
use skiff_api::{Lease, Node, ObjectMeta};
use skiff_client::Client;

use crate::host;

pub use skiff_api::nodes::{LEASE_NAMESPACE, LEASE_SECONDS, node_lease as new_lease};
pub const RENEW_EVERY: Duration = Duration::from_secs(10);
const MAX_PODS: u32 = 110;

fn quantities(m: BTreeMap<String, String>) -> BTreeMap<String, Quantity> {
    m.into_iter()
        .map(|(k, v)| (k, Quantity { value: v }))
        .collect()
}

/// What the node says about itself besides host facts.
#[derive(Debug, Clone)]
pub struct Identity {
    pub name: String,
    pub node_ip: Ipv4Addr,
    /// Port of the node's logs/exec endpoint.
    pub port: u16,
    pub runtime_version: String,
}

/// The status this node reports now.
pub fn node_status(id: &Identity, previous: Option<&NodeStatus>) -> NodeStatus {
    let (node_ip, runtime_version) = (id.node_ip, id.runtime_version.as_str());
    let (cpus, mem) = (host::cpus(), host::read_mem_total());
    let now = Time::now_seconds();
    let ready_since = previous
        .and_then(|s| {
            s.conditions
                .iter()
                .find(|c| c.r#type == "Ready" && c.status == "True")
        })
        .and_then(|c| c.last_transition_time)
        .unwrap_or(now);
    NodeStatus {
        capacity: quantities(host::capacity(cpus, mem, MAX_PODS)),
        allocatable: quantities(host::allocatable(cpus, mem, MAX_PODS)),
        phase: String::new(),
        conditions: vec![Condition {
            r#type: "Ready".into(),
            status: "True".into(),
            last_heartbeat_time: Some(now),
            last_transition_time: Some(ready_since),
            reason: "KubeletReady".into(),
            message: "skiff node is posting ready status".into(),
            ..Default::default()
        }],
        addresses: vec![
            NodeAddress {
                r#type: "InternalIP".into(),
                address: node_ip.to_string(),
            },
            NodeAddress {
                r#type: "Hostname".into(),
                address: host::hostname(),
            },
        ],
        node_info: Some(NodeSystemInfo {
            machine_id: host::machine_id(),
            system_uuid: String::new(),
            boot_id: host::boot_id(),
            kernel_version: host::kernel_version(),
            os_image: host::read_os_image(),
            container_runtime_version: format!("containerd://{runtime_version}"),
            kubelet_version: format!("skiff-v{}", env!("CARGO_PKG_VERSION")),
            kube_proxy_version: format!("skiff-ebpf-v{}", env!("CARGO_PKG_VERSION")),
            operating_system: "linux".into(),
            architecture: crate::image::oci::host_platform().architecture,
        }),
        daemon_endpoints: Some(NodeDaemonEndpoints {
            kubelet_endpoint: Some(DaemonEndpoint {
                port: i32::from(id.port),
            }),
        }),
    }
}

/// Creates or refreshes the Node; returns it as stored.
pub async fn register(client: &Client, id: &Identity, pod_cidr: Option<&str>) -> Result<Node> {
    let name = id.name.as_str();
    let existing = match client.get::<Node>("", name).await {
        Ok(n) => Some(n),
        Err(e) if e.is_not_found() => None,
        Err(e) => return Err(e).context("reading this node's Node"),
    };
    let node = match existing {
        Some(n) => n,
        None => {
            let mut labels = BTreeMap::new();
            labels.insert("kubernetes.io/hostname".to_string(), name.to_string());
            labels.insert("kubernetes.io/os".to_string(), "linux".to_string());
            labels.insert(
                "kubernetes.io/arch".to_string(),
                crate::image::oci::host_platform().architecture,
            );
            let node = Node {
                api_version: "v1".into(),
                kind: "Node".into(),
                metadata: Some(ObjectMeta {
                    name: name.to_string(),
                    labels,
                    ..Default::default()
                }),
                spec: Some(NodeSpec {
                    pod_cidr: pod_cidr.unwrap_or_default().to_string(),
                    pod_cidrs: pod_cidr.map(|c| vec![c.to_string()]).unwrap_or_default(),
                    ..Default::default()
                }),
                status: None,
            };
            match client.create(&node).await {
                Ok(n) => n,
                Err(e) if e.is_already_exists() => client.get::<Node>("", name).await?,
                Err(e) => return Err(e).context("registering this node"),
            }
        }
    };
    update_status(client, node, id).await
}

pub async fn update_status(client: &Client, mut node: Node, id: &Identity) -> Result<Node> {
    node.status = Some(node_status(id, node.status.as_ref()));
    Ok(client.update_status(&node).await?)
}

/// Renews the node's Lease: creates it when missing.
pub async fn renew_lease(client: &Client, name: &str) -> Result<()> {
    let now = Time::now();
    match client.get::<Lease>(LEASE_NAMESPACE, name).await {
        Ok(mut lease) => {
            let spec = lease.spec.get_or_insert_with(Default::default);
            spec.renew_time = Some(now);
            spec.holder_identity = Some(name.to_string());
            spec.lease_duration_seconds = Some(LEASE_SECONDS);
            client.update(&lease).await?;
        }
        Err(e) if e.is_not_found() => {
            client.create(&new_lease(name, now)).await?;
        }
        Err(e) => return Err(e.into()),
    }
    Ok(())
}
