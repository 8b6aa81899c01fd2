//! The columns kubectl prints for each kind, as kube-apiserver's table
//! printers define them: names, which ones `-o wide` adds, and each
//! object's cells. One definition for the API server's `Table` answers and
//! for `skiff get`. Pure: the only outside input is the clock, for ages.

use crate::v1::*;
use crate::wire::Time;
use crate::{Kind, Object};

/// One column of a kind's table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Column {
    /// As in kube-apiserver ("Name", "Cluster-IP"); kubectl prints it in
    /// capitals.
    pub name: &'static str,
    /// Shown only with `-o wide` (the Table's priority 1).
    pub wide: bool,
    pub description: &'static str,
}

const fn col(name: &'static str, description: &'static str) -> Column {
    Column {
        name,
        wide: false,
        description,
    }
}

const fn wide(name: &'static str, description: &'static str) -> Column {
    Column {
        name,
        wide: true,
        description,
    }
}

const NAME: Column = col(
    "Name",
    "Name must be unique within a namespace. More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/names#names",
);
const AGE: Column = col(
    "Age",
    "CreationTimestamp is a timestamp representing the server time when this object was created.",
);

/// The columns of a kind's table, in order.
pub fn of(kind: Kind) -> &'static [Column] {
    match kind {
        Kind::Pod => {
            const {
                &[
                    NAME,
                    col(
                        "Ready",
                        "The aggregate readiness state of this pod for accepting traffic.",
                    ),
                    col(
                        "Status",
                        "The aggregate status of the containers in this pod.",
                    ),
                    col(
                        "Restarts",
                        "The number of times the containers in this pod have been restarted.",
                    ),
                    AGE,
                    wide("IP", "IP address allocated to the pod."),
                    wide("Node", "Name of the Node this pod runs on."),
                ]
            }
        }
        Kind::Service => {
            const {
                &[
                    NAME,
                    col(
                        "Type",
                        "The type of the service: ClusterIP, NodePort, LoadBalancer or ExternalName.",
                    ),
                    col("Cluster-IP", "The IP address of the service."),
                    col("External-IP", "The external addresses of the service."),
                    col("Port(s)", "The ports the service exposes."),
                    AGE,
                    wide(
                        "Selector",
                        "Pods with these labels are the service's endpoints.",
                    ),
                ]
            }
        }
        Kind::Deployment => {
            const {
                &[
                    NAME,
                    col("Ready", "Ready replicas of the desired number."),
                    col("Up-to-date", "Replicas updated to the newest template."),
                    col("Available", "Replicas available to serve."),
                    AGE,
                    wide("Containers", "Names of each container in the template."),
                    wide(
                        "Images",
                        "Images referenced by each container in the template.",
                    ),
                    wide("Selector", "Label selector for pods."),
                ]
            }
        }
        Kind::ReplicaSet => {
            const {
                &[
                    NAME,
                    col("Desired", "Number of desired pods."),
                    col("Current", "Number of actual pods."),
                    col("Ready", "Number of ready pods."),
                    AGE,
                    wide("Containers", "Names of each container in the template."),
                    wide(
                        "Images",
                        "Images referenced by each container in the template.",
                    ),
                    wide("Selector", "Label selector for pods."),
                ]
            }
        }
        Kind::Namespace => const { &[NAME, col("Status", "The status of the namespace."), AGE] },
        Kind::Node => {
            const {
                &[
                    NAME,
                    col("Status", "The status of the node."),
                    col("Roles", "The roles of the node."),
                    AGE,
                    col("Version", "Kubelet version reported by the node."),
                    wide("Internal-IP", "The node's internal address."),
                    wide("OS-Image", "OS image reported by the node."),
                    wide("Kernel-Version", "Kernel version reported by the node."),
                    wide(
                        "Container-Runtime",
                        "Container runtime version reported by the node.",
                    ),
                ]
            }
        }
        Kind::ConfigMap => const { &[NAME, col("Data", "Number of data keys."), AGE] },
        Kind::Secret => {
            const {
                &[
                    NAME,
                    col("Type", "The type of secret."),
                    col("Data", "Number of data keys."),
                    AGE,
                ]
            }
        }
        Kind::Role | Kind::ClusterRole => {
            const {
                &[
                    NAME,
                    col("Created At", "When the role was created (RFC 3339)."),
                ]
            }
        }
        Kind::RoleBinding | Kind::ClusterRoleBinding => {
            const {
                &[
                    NAME,
                    col("Role", "The role the binding grants: kind/name."),
                    AGE,
                    wide("Users", "The users the binding names."),
                    wide("Groups", "The groups the binding names."),
                    wide(
                        "ServiceAccounts",
                        "The service accounts the binding names, as namespace/name.",
                    ),
                ]
            }
        }
        Kind::ServiceAccount => {
            const {
                &[
                    NAME,
                    col("Secrets", "Number of secrets the service account lists."),
                    AGE,
                ]
            }
        }
        Kind::Endpoints => {
            const {
                &[
                    NAME,
                    col("Endpoints", "The ready addresses with their ports."),
                    AGE,
                ]
            }
        }
        Kind::EndpointSlice => {
            const {
                &[
                    NAME,
                    col(
                        "AddressType",
                        "The type of address carried by this EndpointSlice.",
                    ),
                    col("Ports", "The ports of this EndpointSlice."),
                    col("Endpoints", "The addresses of this EndpointSlice."),
                    AGE,
                ]
            }
        }
        Kind::Lease => const { &[NAME, col("Holder", "The holder of the lease."), AGE] },
        Kind::Event => {
            const {
                &[
                    col("Last Seen", "Time since the event was last seen."),
                    col("Type", "The type of the event (Normal, Warning)."),
                    col("Reason", "Why the event happened."),
                    col("Object", "The object the event is about."),
                    col("Message", "A description of the event."),
                ]
            }
        }
    }
}

/// `5s`, `3m`, `2h`, `4d` since a timestamp, as kubectl prints ages.
pub fn age(t: Option<&Time>) -> String {
    let Some(t) = t else {
        return "<unknown>".into();
    };
    let secs = (Time::now().seconds - t.seconds).max(0);
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 3600 * 2 => format!("{}m", s / 60),
        s if s < 86400 * 2 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

fn none_if_empty(s: String) -> String {
    if s.is_empty() { "<none>".into() } else { s }
}

fn selector_text(map: &std::collections::BTreeMap<String, String>) -> String {
    none_if_empty(
        map.iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(","),
    )
}

fn images(spec: Option<&PodSpec>) -> (String, String) {
    let containers = spec.map(|s| s.containers.as_slice()).unwrap_or_default();
    (
        containers
            .iter()
            .map(|c| c.name.clone())
            .collect::<Vec<_>>()
            .join(","),
        containers
            .iter()
            .map(|c| c.image.clone())
            .collect::<Vec<_>>()
            .join(","),
    )
}

fn label_selector_text(sel: Option<&LabelSelector>) -> String {
    sel.map(|s| selector_text(&s.match_labels))
        .unwrap_or_else(|| "<none>".into())
}

fn created_at(meta: &ObjectMeta) -> String {
    meta.creation_timestamp
        .as_ref()
        .map(|t| t.to_rfc3339())
        .unwrap_or_else(|| "<unknown>".into())
}

fn binding_cells(
    name: String,
    created: String,
    role: Option<&RoleRef>,
    subjects: &[Subject],
) -> (Vec<String>, Vec<String>) {
    let of = |kind: &str| {
        let names: Vec<String> = subjects
            .iter()
            .filter(|s| s.kind == kind)
            .map(|s| match kind {
                "ServiceAccount" => format!("{}/{}", s.namespace, s.name),
                _ => s.name.clone(),
            })
            .collect();
        names.join(", ")
    };
    let role = role
        .map(|r| format!("{}/{}", r.kind, r.name))
        .unwrap_or_default();
    (
        vec![name, role, created],
        vec![of("User"), of("Group"), of("ServiceAccount")],
    )
}

/// The cells of one object's row: one per column of [`of`] its kind, the
/// wide ones included.
pub fn cells(obj: &Object) -> Vec<String> {
    let meta = obj.meta();
    let name = meta.name.clone();
    let created = age(meta.creation_timestamp.as_ref());
    let (mut base, extra): (Vec<String>, Vec<String>) = match obj {
        Object::Pod(p) => {
            let status = p.status.clone().unwrap_or_default();
            let total = p.spec.as_ref().map_or(0, |s| s.containers.len());
            let ready = status.container_statuses.iter().filter(|c| c.ready).count();
            let restarts: i32 = status
                .container_statuses
                .iter()
                .map(|c| c.restart_count)
                .sum();
            let mut phase = if status.phase.is_empty() {
                "Pending".to_string()
            } else {
                status.phase.clone()
            };
            if let Some(reason) = status
                .container_statuses
                .iter()
                .find_map(|c| {
                    c.state
                        .as_ref()
                        .and_then(|s| s.waiting.as_ref())
                        .map(|w| w.reason.clone())
                })
                .filter(|r| !r.is_empty())
            {
                phase = reason;
            }
            if meta.deletion_timestamp.is_some() {
                phase = "Terminating".into();
            }
            let node = p
                .spec
                .as_ref()
                .map(|s| s.node_name.clone())
                .unwrap_or_default();
            (
                vec![
                    name,
                    format!("{ready}/{total}"),
                    phase,
                    restarts.to_string(),
                    created,
                ],
                vec![none_if_empty(status.pod_ip), none_if_empty(node)],
            )
        }
        Object::Service(s) => {
            let spec = s.spec.clone().unwrap_or_default();
            let ports: Vec<String> = spec
                .ports
                .iter()
                .map(|p| {
                    let proto = if p.protocol.is_empty() {
                        "TCP"
                    } else {
                        &p.protocol
                    };
                    if p.node_port != 0 {
                        format!("{}:{}/{proto}", p.port, p.node_port)
                    } else {
                        format!("{}/{proto}", p.port)
                    }
                })
                .collect();
            let external = if spec.r#type == "ExternalName" {
                spec.external_name.clone()
            } else if !spec.external_ips.is_empty() {
                spec.external_ips.join(",")
            } else if spec.r#type == "LoadBalancer" {
                "<pending>".into()
            } else {
                "<none>".into()
            };
            (
                vec![
                    name,
                    spec.r#type.clone(),
                    none_if_empty(spec.cluster_ip.clone()),
                    external,
                    none_if_empty(ports.join(",")),
                    created,
                ],
                vec![selector_text(&spec.selector)],
            )
        }
        Object::Deployment(d) => {
            let status = d.status.clone().unwrap_or_default();
            let spec = d.spec.clone().unwrap_or_default();
            let (c, i) = images(spec.template.as_ref().and_then(|t| t.spec.as_ref()));
            (
                vec![
                    name,
                    format!("{}/{}", status.ready_replicas, spec.replicas.unwrap_or(1)),
                    status.updated_replicas.to_string(),
                    status.available_replicas.to_string(),
                    created,
                ],
                vec![c, i, label_selector_text(spec.selector.as_ref())],
            )
        }
        Object::ReplicaSet(r) => {
            let status = r.status.clone().unwrap_or_default();
            let spec = r.spec.clone().unwrap_or_default();
            let (c, i) = images(spec.template.as_ref().and_then(|t| t.spec.as_ref()));
            (
                vec![
                    name,
                    spec.replicas.unwrap_or(1).to_string(),
                    status.replicas.to_string(),
                    status.ready_replicas.to_string(),
                    created,
                ],
                vec![c, i, label_selector_text(spec.selector.as_ref())],
            )
        }
        Object::Namespace(n) => {
            let phase = n
                .status
                .as_ref()
                .map(|s| s.phase.clone())
                .unwrap_or_default();
            (
                vec![
                    name,
                    if phase.is_empty() {
                        "Active".into()
                    } else {
                        phase
                    },
                    created,
                ],
                vec![],
            )
        }
        Object::Node(n) => {
            let status = n.status.clone().unwrap_or_default();
            let ready = status.conditions.iter().find(|c| c.r#type == "Ready");
            let mut state = match ready {
                Some(c) if c.status == "True" => "Ready".to_string(),
                _ => "NotReady".to_string(),
            };
            if n.spec.as_ref().is_some_and(|s| s.unschedulable) {
                state.push_str(",SchedulingDisabled");
            }
            let roles: Vec<String> = meta
                .labels
                .keys()
                .filter_map(|k| {
                    k.strip_prefix("node-role.kubernetes.io/")
                        .map(str::to_string)
                })
                .collect();
            let info = status.node_info.clone().unwrap_or_default();
            let ip = status
                .addresses
                .iter()
                .find(|a| a.r#type == "InternalIP")
                .map(|a| a.address.clone());
            (
                vec![
                    name,
                    state,
                    none_if_empty(roles.join(",")),
                    created,
                    none_if_empty(info.kubelet_version.clone()),
                ],
                vec![
                    ip.unwrap_or_else(|| "<none>".into()),
                    none_if_empty(info.os_image),
                    none_if_empty(info.kernel_version),
                    none_if_empty(info.container_runtime_version),
                ],
            )
        }
        Object::ConfigMap(c) => (
            vec![
                name,
                (c.data.len() + c.binary_data.len()).to_string(),
                created,
            ],
            vec![],
        ),
        Object::ServiceAccount(s) => (vec![name, s.secrets.len().to_string(), created], vec![]),
        Object::Secret(x) => (
            vec![name, x.r#type.clone(), x.data.len().to_string(), created],
            vec![],
        ),
        Object::Role(_) | Object::ClusterRole(_) => (vec![name, created_at(meta)], vec![]),
        Object::RoleBinding(b) => binding_cells(name, created, b.role_ref.as_ref(), &b.subjects),
        Object::ClusterRoleBinding(b) => {
            binding_cells(name, created, b.role_ref.as_ref(), &b.subjects)
        }
        Object::Endpoints(e) => (vec![name, endpoints_cell(e), created], vec![]),
        Object::EndpointSlice(e) => {
            let ports: Vec<String> = e
                .ports
                .iter()
                .filter_map(|p| p.port.map(|n| n.to_string()))
                .collect();
            let addrs: Vec<String> = e
                .endpoints
                .iter()
                .flat_map(|ep| ep.addresses.clone())
                .collect();
            let shown = if addrs.len() > 3 {
                format!("{} + {} more...", addrs[..3].join(","), addrs.len() - 3)
            } else {
                addrs.join(",")
            };
            (
                vec![
                    name,
                    e.address_type.clone(),
                    none_if_empty(ports.join(",")),
                    none_if_empty(shown),
                    created,
                ],
                vec![],
            )
        }
        Object::Lease(l) => {
            let holder = l
                .spec
                .as_ref()
                .and_then(|s| s.holder_identity.clone())
                .unwrap_or_default();
            (vec![name, none_if_empty(holder), created], vec![])
        }
        Object::Event(e) => {
            let obj = e.involved_object.clone().unwrap_or_default();
            let last = e
                .last_timestamp
                .as_ref()
                .or(e.event_time.as_ref())
                .or(meta.creation_timestamp.as_ref());
            (
                vec![
                    age(last),
                    e.r#type.clone(),
                    e.reason.clone(),
                    format!("{}/{}", obj.kind.to_ascii_lowercase(), obj.name),
                    e.message.clone(),
                ],
                vec![],
            )
        }
    };
    base.extend(extra);
    base
}

/// The first three ready `ip:port`s of v1 Endpoints (bare IPs for a subset
/// without ports), then `+ N more...`, as kubectl prints them.
fn endpoints_cell(e: &crate::v1::Endpoints) -> String {
    const MAX: usize = 3;
    let mut shown = Vec::new();
    let mut count = 0;
    for ss in &e.subsets {
        let mut add = |s: String| {
            count += 1;
            if shown.len() < MAX {
                shown.push(s);
            }
        };
        if ss.ports.is_empty() {
            ss.addresses.iter().for_each(|a| add(a.ip.clone()));
        }
        for p in &ss.ports {
            for a in &ss.addresses {
                add(match a.ip.parse::<std::net::IpAddr>() {
                    Ok(ip) => std::net::SocketAddr::new(ip, p.port as u16).to_string(),
                    Err(_) => format!("{}:{}", a.ip, p.port),
                });
            }
        }
    }
    match (shown.is_empty(), count > MAX) {
        (true, _) => "<none>".into(),
        (false, true) => format!("{} + {} more...", shown.join(","), count - MAX),
        (false, false) => shown.join(","),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_row_has_a_cell_per_column() {
        for kind in Kind::ALL {
            let obj = crate::with_resource!(kind, R => crate::Resource::into_object(R::default()));
            assert_eq!(cells(&obj).len(), of(kind).len(), "{kind}");
        }
    }

    #[test]
    fn a_pod_row_reads_like_kubectl() {
        let (obj, _) = Object::from_json(serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"nodeName": "n1", "containers": [{"name": "a", "image": "x"}, {"name": "b", "image": "y"}]},
            "status": {"phase": "Running", "podIP": "10.244.0.5", "containerStatuses": [
                {"name": "a", "ready": true, "restartCount": 2},
                {"name": "b", "ready": false, "restartCount": 1,
                 "state": {"waiting": {"reason": "CrashLoopBackOff"}}}]}
        }))
        .unwrap();
        let c = cells(&obj);
        assert_eq!(&c[..4], ["web", "1/2", "CrashLoopBackOff", "3"]);
        assert_eq!(c[4], "<unknown>", "no creationTimestamp");
        assert_eq!(&c[5..], ["10.244.0.5", "n1"]);
    }
}
