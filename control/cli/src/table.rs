//! kubectl-style tables: the columns of each kind, and ages.

use comfy_table::{ContentArrangement, Table, presets};
use skiff_api::v1::*;
use skiff_api::wire::Time;
use skiff_api::{Kind, Object};

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

pub fn headers(kind: Kind, wide: bool) -> Vec<&'static str> {
    let (mut base, extra): (Vec<&str>, Vec<&str>) = match kind {
        Kind::Pod => (
            vec!["NAME", "READY", "STATUS", "RESTARTS", "AGE"],
            vec!["IP", "NODE"],
        ),
        Kind::Service => (
            vec![
                "NAME",
                "TYPE",
                "CLUSTER-IP",
                "EXTERNAL-IP",
                "PORT(S)",
                "AGE",
            ],
            vec!["SELECTOR"],
        ),
        Kind::Deployment => (
            vec!["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"],
            vec!["CONTAINERS", "IMAGES", "SELECTOR"],
        ),
        Kind::ReplicaSet => (
            vec!["NAME", "DESIRED", "CURRENT", "READY", "AGE"],
            vec!["CONTAINERS", "IMAGES", "SELECTOR"],
        ),
        Kind::Namespace => (vec!["NAME", "STATUS", "AGE"], vec![]),
        Kind::Node => (
            vec!["NAME", "STATUS", "ROLES", "AGE", "VERSION"],
            vec![
                "INTERNAL-IP",
                "OS-IMAGE",
                "KERNEL-VERSION",
                "CONTAINER-RUNTIME",
            ],
        ),
        Kind::ConfigMap => (vec!["NAME", "DATA", "AGE"], vec![]),
        Kind::EndpointSlice => (
            vec!["NAME", "ADDRESSTYPE", "PORTS", "ENDPOINTS", "AGE"],
            vec![],
        ),
        Kind::Lease => (vec!["NAME", "HOLDER", "AGE"], vec![]),
        Kind::Event => (
            vec!["LAST SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"],
            vec![],
        ),
    };
    if wide {
        base.extend(extra);
    }
    base
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

pub fn row(obj: &Object, wide: bool) -> Vec<String> {
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
    if wide {
        base.extend(extra);
    }
    base
}

/// Renders rows under headers, columns separated by three spaces.
pub fn render(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut table = Table::new();
    table
        .load_preset(presets::NOTHING)
        .set_content_arrangement(ContentArrangement::Disabled)
        .set_header(headers.to_vec());
    for r in rows {
        table.add_row(r.clone());
    }
    for col in table.column_iter_mut() {
        col.set_padding((0, 3));
    }
    table
        .lines()
        .map(|l| l.trim_end().to_string())
        .collect::<Vec<_>>()
        .join("\n")
}
