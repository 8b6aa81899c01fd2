//! The pure function from API Services and EndpointSlices to the datapath
//! state they ask for — what kube-proxy computes, without iptables.
//!
//! Rules (Kubernetes' own):
//! - ExternalName and headless Services (clusterIP None) get nothing.
//! - A Service port's backends are the endpoints of the Service's slices
//!   (label `kubernetes.io/service-name`) with the slice port of the same
//!   name; that port carries the resolved targetPort, so named targetPorts
//!   work per pod. A slice without ports (hand-written) falls back to a
//!   numeric targetPort, else the port.
//! - Ready endpoints (a missing `ready` counts as ready) are used; when none
//!   is ready, serving-and-terminating ones are (KEP-1669).
//! - Frontends: the ClusterIP, each ExternalIP and each load-balancer
//!   ingress IP, and the NodePort (address 0.0.0.0 = every node address).
//! - `externalTrafficPolicy: Local` gives the external frontends a backend
//!   set of this node's endpoints only; `internalTrafficPolicy: Local` does
//!   the same for the ClusterIP.
//! - `sessionAffinity: ClientIP` with `timeoutSeconds` (default 10800).
//! - The algorithm is the `skiff.io/lb-algorithm` annotation (`random`,
//!   `maglev`), else the configured default.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;

use skiff_api::{EndpointSlice, Service};
use thiserror::Error;

use crate::model::*;

pub use skiff_api::SERVICE_NAME_LABEL;
pub const ALGORITHM_ANNOTATION: &str = "skiff.io/lb-algorithm";
pub const DEFAULT_AFFINITY_TIMEOUT: u32 = 10_800;

#[derive(Clone, Debug, Default)]
pub struct Options {
    /// This node, for the `Local` traffic policies (None: no endpoint is
    /// local, so Local frontends refuse).
    pub node_name: Option<String>,
    pub default_algorithm: Algorithm,
}

/// A Service or EndpointSlice the datapath cannot program, named with the
/// field at fault.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
#[error("{kind} {namespace}/{name}: {field}: {message}")]
pub struct InputError {
    pub kind: &'static str,
    pub namespace: String,
    pub name: String,
    pub field: String,
    pub message: String,
}

/// The desired state, and the objects left out because they are invalid
/// (each with the reason). A caller that must not apply a partial state
/// (`skiff bpf sync`) refuses when the list is not empty.
pub fn desired(
    services: &[Service],
    slices: &[EndpointSlice],
    options: &Options,
) -> (Desired, Vec<InputError>) {
    let mut errors = Vec::new();
    let mut by_service: HashMap<(&str, &str), Vec<&EndpointSlice>> = HashMap::new();
    for slice in slices {
        let meta = slice.metadata.as_ref();
        let ns = meta.map(|m| m.namespace.as_str()).unwrap_or("");
        let Some(svc) = meta.and_then(|m| m.labels.get(SERVICE_NAME_LABEL)) else {
            continue;
        };
        if !ipv4(slice) {
            continue;
        }
        by_service
            .entry((ns, svc.as_str()))
            .or_default()
            .push(slice);
    }
    let mut out = Desired::default();
    for svc in services {
        let (ns, name) = service_key(svc);
        let slices = by_service
            .get(&(ns, name))
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        match service_defs(svc, ns, name, slices, options) {
            Ok(defs) => {
                for def in defs {
                    out.services.insert(def.name.clone(), def);
                }
            }
            Err(e) => errors.push(e),
        }
    }
    (out, errors)
}

/// The entries of one Service from its own slices (the node's incremental
/// sync: one event costs O(that service)). Slices of another address type
/// than IPv4 are skipped, as in [`desired`].
pub fn service_desired<'a>(
    svc: &Service,
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
    options: &Options,
) -> Result<Vec<ServiceDef>, InputError> {
    let (ns, name) = service_key(svc);
    let slices: Vec<&EndpointSlice> = slices.into_iter().filter(|s| ipv4(s)).collect();
    service_defs(svc, ns, name, &slices, options)
}

/// A Service's namespace (`default` when unset) and name.
fn service_key(svc: &Service) -> (&str, &str) {
    let (ns, name) = svc
        .metadata
        .as_ref()
        .map(|m| (m.namespace.as_str(), m.name.as_str()))
        .unwrap_or(("", ""));
    (if ns.is_empty() { "default" } else { ns }, name)
}

/// The slices the datapath serves (IPv4; an unset type counts as IPv4).
fn ipv4(slice: &EndpointSlice) -> bool {
    slice.address_type.is_empty() || slice.address_type == "IPv4"
}

fn service_defs(
    svc: &Service,
    ns: &str,
    name: &str,
    slices: &[&EndpointSlice],
    options: &Options,
) -> Result<Vec<ServiceDef>, InputError> {
    let err = |field: String, message: String| InputError {
        kind: "Service",
        namespace: ns.to_string(),
        name: name.to_string(),
        field,
        message,
    };
    let Some(spec) = svc.spec.as_ref() else {
        return Ok(Vec::new());
    };
    if spec.r#type == "ExternalName" || spec.cluster_ip == "None" {
        return Ok(Vec::new());
    }
    let cluster_ip = match spec.cluster_ip.as_str() {
        "" => None,
        ip => Some(ip.parse::<Ipv4Addr>().map_err(|_| {
            err(
                "spec.clusterIP".into(),
                format!("{ip:?} is not an IPv4 address"),
            )
        })?),
    };
    let mut external = Vec::new();
    for (i, ip) in spec.external_ips.iter().enumerate() {
        external.push(ip.parse::<Ipv4Addr>().map_err(|_| {
            err(
                format!("spec.externalIPs[{i}]"),
                format!("{ip:?} is not an IPv4 address"),
            )
        })?);
    }
    if let Some(lb) = svc.status.as_ref().and_then(|s| s.load_balancer.as_ref()) {
        external.extend(
            lb.ingress
                .iter()
                .filter_map(|i| i.ip.parse::<Ipv4Addr>().ok()),
        );
    }
    let node_port_type = matches!(spec.r#type.as_str(), "NodePort" | "LoadBalancer");
    let external_local = spec.external_traffic_policy == "Local";
    let internal_local = spec.internal_traffic_policy.as_deref() == Some("Local");
    let affinity_timeout = (spec.session_affinity == "ClientIP").then(|| {
        spec.session_affinity_config
            .as_ref()
            .and_then(|c| c.client_ip.as_ref())
            .and_then(|c| c.timeout_seconds)
            .filter(|t| *t > 0)
            .map_or(DEFAULT_AFFINITY_TIMEOUT, |t| t as u32)
    });
    let annotation = svc
        .metadata
        .as_ref()
        .and_then(|m| m.annotations.get(ALGORITHM_ANNOTATION));
    let algorithm = match annotation.map(String::as_str) {
        None => options.default_algorithm,
        Some("random") => Algorithm::Random,
        Some("maglev") => Algorithm::Maglev,
        Some(other) => {
            return Err(err(
                format!("metadata.annotations[{ALGORITHM_ANNOTATION}]"),
                format!("unknown algorithm {other:?} (random, maglev)"),
            ));
        }
    };

    let mut defs = Vec::new();
    for (i, port) in spec.ports.iter().enumerate() {
        let proto = Proto::parse(&port.protocol).ok_or_else(|| {
            err(
                format!("spec.ports[{i}].protocol"),
                format!("unsupported protocol {:?} (TCP, UDP)", port.protocol),
            )
        })?;
        let number = u16::try_from(port.port)
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| {
                err(
                    format!("spec.ports[{i}].port"),
                    format!("{} is not a port (1-65535)", port.port),
                )
            })?;
        let node_port = if node_port_type && port.node_port != 0 {
            Some(u16::try_from(port.node_port).map_err(|_| {
                err(
                    format!("spec.ports[{i}].nodePort"),
                    format!("{} is not a port (1-65535)", port.node_port),
                )
            })?)
        } else {
            None
        };
        let fallback_target = port
            .target_port
            .as_ref()
            .filter(|t| !t.is_string && t.int_val != 0)
            .map_or(Some(number), |t| u16::try_from(t.int_val).ok());
        let endpoints = endpoints_for(slices, &port.name, proto, fallback_target);

        let mut all = BTreeMap::new();
        let mut local = BTreeMap::new();
        let mut frontend = |addr: Ipv4Addr, port: u16, kind: FrontendKind, is_local: bool| {
            let f = Frontend {
                addr,
                port,
                proto,
                local: is_local,
            };
            if is_local {
                local.insert(f, kind);
            } else {
                all.insert(f, kind);
            }
        };
        if let Some(ip) = cluster_ip {
            frontend(ip, number, FrontendKind::ClusterIp, internal_local);
        }
        for ip in &external {
            frontend(*ip, number, FrontendKind::ExternalIp, external_local);
        }
        if let Some(np) = node_port {
            frontend(
                Ipv4Addr::UNSPECIFIED,
                np,
                FrontendKind::NodePort,
                external_local,
            );
        }
        let port_id = if port.name.is_empty() {
            number.to_string()
        } else {
            port.name.clone()
        };
        let base = format!("{ns}/{name}:{port_id}/{proto}");
        if base.len() + "#local".len() > MAX_NAME {
            return Err(err(
                format!("spec.ports[{i}]"),
                format!("service name {base:?} is longer than {MAX_NAME} bytes"),
            ));
        }
        for (suffix, frontends, only_local) in [("", all, false), ("#local", local, true)] {
            if frontends.is_empty() {
                continue;
            }
            let (backends, terminating) = choose(
                &endpoints,
                only_local.then_some(options.node_name.as_deref()),
            );
            let local: BTreeSet<BackendAddr> = endpoints
                .iter()
                .filter(|e| options.node_name.is_some() && e.node == options.node_name.as_deref())
                .map(|e| e.addr)
                .filter(|a| backends.contains(a))
                .collect();
            defs.push(ServiceDef {
                name: format!("{base}{suffix}"),
                proto,
                frontends,
                backends,
                terminating,
                local,
                algorithm,
                affinity_timeout,
            });
        }
    }
    Ok(defs)
}

struct Endpoint<'a> {
    addr: BackendAddr,
    ready: bool,
    serving: bool,
    terminating: bool,
    node: Option<&'a str>,
}

fn endpoints_for<'a>(
    slices: &[&'a EndpointSlice],
    port_name: &str,
    proto: Proto,
    fallback_target: Option<u16>,
) -> Vec<Endpoint<'a>> {
    let mut out = Vec::new();
    for slice in slices {
        let port = if slice.ports.is_empty() {
            fallback_target
        } else {
            slice
                .ports
                .iter()
                .find(|p| {
                    p.name.as_deref().unwrap_or("") == port_name
                        && Proto::parse(p.protocol.as_deref().unwrap_or("")) == Some(proto)
                })
                .and_then(|p| p.port)
                .and_then(|p| u16::try_from(p).ok())
                .filter(|p| *p != 0)
        };
        let Some(port) = port else { continue };
        for ep in &slice.endpoints {
            let c = ep.conditions.unwrap_or_default();
            let ready = c.ready.unwrap_or(true);
            for addr in &ep.addresses {
                let Ok(addr) = addr.parse::<Ipv4Addr>() else {
                    continue;
                };
                out.push(Endpoint {
                    addr: BackendAddr { addr, port },
                    ready,
                    serving: c.serving.unwrap_or(ready),
                    terminating: c.terminating.unwrap_or(false),
                    node: ep.node_name.as_deref(),
                });
            }
        }
    }
    out
}

/// The backends for new connections: the ready ones, else the serving and
/// terminating ones; `only_node` = Some(node) keeps that node's only.
fn choose(endpoints: &[Endpoint<'_>], only_node: Option<Option<&str>>) -> (Vec<BackendAddr>, bool) {
    let on_node = |e: &&Endpoint<'_>| match only_node {
        None => true,
        Some(node) => node.is_some() && e.node == node,
    };
    let mut ready: Vec<BackendAddr> = endpoints
        .iter()
        .filter(on_node)
        .filter(|e| e.ready && !e.terminating)
        .map(|e| e.addr)
        .collect();
    let mut terminating = false;
    if ready.is_empty() {
        ready = endpoints
            .iter()
            .filter(on_node)
            .filter(|e| e.serving && e.terminating)
            .map(|e| e.addr)
            .collect();
        terminating = !ready.is_empty();
    }
    ready.sort();
    ready.dedup();
    (ready, terminating)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn objects(docs: serde_json::Value) -> (Vec<Service>, Vec<EndpointSlice>) {
        let mut services = Vec::new();
        let mut slices = Vec::new();
        for d in docs.as_array().unwrap() {
            if d["kind"] == "Service" {
                services.push(serde_json::from_value(d.clone()).unwrap());
            } else {
                slices.push(serde_json::from_value(d.clone()).unwrap());
            }
        }
        (services, slices)
    }

    fn slice(
        svc: &str,
        ports: serde_json::Value,
        endpoints: serde_json::Value,
    ) -> serde_json::Value {
        json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": format!("{svc}-x"), "namespace": "ns", "labels": {SERVICE_NAME_LABEL: svc}},
            "addressType": "IPv4", "ports": ports, "endpoints": endpoints})
    }

    fn addrs(def: &ServiceDef) -> Vec<String> {
        def.backends.iter().map(|b| b.to_string()).collect()
    }

    #[test]
    fn named_target_ports_resolve_per_slice_and_conditions_pick_backends() {
        let (services, slices) = objects(json!([
            {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "ns"},
             "spec": {"clusterIP": "10.96.0.5", "ports": [
                {"name": "http", "port": 80, "targetPort": "web"},
                {"name": "metrics", "port": 9090, "protocol": "UDP", "targetPort": 9100}]}},
            // Two slices: pods whose "web" port differs.
            slice("web", json!([{"name": "http", "port": 8080, "protocol": "TCP"}]), json!([
                {"addresses": ["10.244.0.1"]},
                {"addresses": ["10.244.0.2"], "conditions": {"ready": false}},
                {"addresses": ["10.244.0.3"], "conditions": {"ready": false, "serving": true, "terminating": true}}])),
            slice("web", json!([{"name": "http", "port": 8081, "protocol": "TCP"},
                                {"name": "metrics", "port": 9100, "protocol": "UDP"}]), json!([
                {"addresses": ["10.244.1.1"], "conditions": {"ready": true}}])),
        ]));
        let (d, errors) = desired(&services, &slices, &Options::default());
        assert!(errors.is_empty(), "{errors:?}");
        let http = &d.services["ns/web:http/TCP"];
        assert_eq!(addrs(http), ["10.244.0.1:8080", "10.244.1.1:8081"]);
        assert!(!http.terminating);
        let f = http.frontends.keys().next().unwrap();
        assert_eq!(
            (f.addr.to_string(), f.port, f.proto),
            ("10.96.0.5".into(), 80, Proto::Tcp)
        );
        let metrics = &d.services["ns/web:metrics/UDP"];
        assert_eq!(
            addrs(metrics),
            ["10.244.1.1:9100"],
            "only the slice with the port"
        );
    }

    #[test]
    fn terminating_endpoints_serve_only_when_nothing_is_ready() {
        let (services, slices) = objects(json!([
            {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "t", "namespace": "ns"},
             "spec": {"clusterIP": "10.96.0.6", "ports": [{"port": 80, "targetPort": 8080}]}},
            slice("t", json!([{"port": 8080, "protocol": "TCP"}]), json!([
                {"addresses": ["10.244.0.1"], "conditions": {"ready": false, "serving": true, "terminating": true}},
                {"addresses": ["10.244.0.2"], "conditions": {"ready": false, "serving": false, "terminating": true}}])),
        ]));
        let (d, _) = desired(&services, &slices, &Options::default());
        let t = &d.services["ns/t:80/TCP"];
        assert_eq!(addrs(t), ["10.244.0.1:8080"]);
        assert!(t.terminating);
    }

    #[test]
    fn node_port_external_ips_and_local_policy() {
        let (services, slices) = objects(json!([
            {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "np", "namespace": "ns"},
             "spec": {"type": "NodePort", "clusterIP": "10.96.0.7", "externalIPs": ["192.0.2.10"],
                      "externalTrafficPolicy": "Local", "sessionAffinity": "ClientIP",
                      "ports": [{"port": 80, "targetPort": 8080, "nodePort": 30080}]}},
            slice("np", json!([{"port": 8080, "protocol": "TCP"}]), json!([
                {"addresses": ["10.244.0.1"], "nodeName": "n1"},
                {"addresses": ["10.244.1.1"], "nodeName": "n2"}])),
        ]));
        let options = Options {
            node_name: Some("n1".into()),
            ..Default::default()
        };
        let (d, _) = desired(&services, &slices, &options);
        let all = &d.services["ns/np:80/TCP"];
        assert_eq!(all.frontends.len(), 1, "the ClusterIP keeps every backend");
        assert_eq!(addrs(all), ["10.244.0.1:8080", "10.244.1.1:8080"]);
        assert_eq!(all.affinity_timeout, Some(DEFAULT_AFFINITY_TIMEOUT));
        let local = &d.services["ns/np:80/TCP#local"];
        assert_eq!(addrs(local), ["10.244.0.1:8080"], "this node's only");
        let kinds: Vec<FrontendKind> = local.frontends.values().copied().collect();
        assert_eq!(kinds, [FrontendKind::NodePort, FrontendKind::ExternalIp]);
        let np = local.frontends.keys().find(|f| f.port == 30080).unwrap();
        assert!(np.addr.is_unspecified() && np.local);
    }

    #[test]
    fn headless_external_name_and_bad_services() {
        let (services, slices) = objects(json!([
            {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "h", "namespace": "ns"},
             "spec": {"clusterIP": "None", "ports": [{"port": 80}]}},
            {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "x", "namespace": "ns"},
             "spec": {"type": "ExternalName", "externalName": "example.org"}},
            {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "bad", "namespace": "ns"},
             "spec": {"clusterIP": "10.96.0.9", "ports": [{"port": 80, "protocol": "SCTP"}]}},
            {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "nil", "namespace": "ns"},
             "spec": {"clusterIP": "10.96.0.10", "ports": [{"port": 0}]}},
        ]));
        let (d, errors) = desired(&services, &slices, &Options::default());
        assert!(d.services.is_empty(), "{d:?}");
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["spec.ports[0].protocol", "spec.ports[0].port"]);
        assert!(
            errors[0].to_string().contains("Service ns/bad"),
            "{}",
            errors[0]
        );
    }
}
