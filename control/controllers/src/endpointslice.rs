//! EndpointSlices for every Service with a selector: the pods it selects,
//! with their readiness (ready / serving / terminating), in slices of at
//! most 100 endpoints grouped by resolved ports (a named targetPort may
//! resolve differently per pod). Changes are minimal: an endpoint stays in
//! its slice, new ones fill slices with room, and only slices whose content
//! changed are written.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use skiff_api::selector::Selector;
use skiff_api::v1::{
    Endpoint, EndpointConditions, EndpointPort, LabelSelector, ObjectMeta, ObjectReference,
};
use skiff_api::{EndpointSlice, Pod, Resource, Service};
use skiff_client::{Client, ListParams};
use skiff_runtime::{Event, Inbox, Informers, Queue, Reconcile, Store};

use crate::pods::{self, owner_ref};

pub const MAX_ENDPOINTS: usize = 100;
pub use skiff_api::SERVICE_NAME_LABEL as SERVICE_NAME;
pub const MANAGED_BY: &str = "endpointslice.kubernetes.io/managed-by";
pub const CONTROLLER: &str = "endpointslice-controller.skiff.io";

type Key = (String, String);
type Ports = Vec<EndpointPort>;

fn service_selector(svc: &Service) -> Option<Selector> {
    let spec = svc.spec.as_ref()?;
    if spec.selector.is_empty() || spec.r#type == "ExternalName" {
        return None;
    }
    Selector::from_label_selector(&LabelSelector {
        match_labels: spec.selector.clone(),
        match_expressions: vec![],
    })
    .ok()
}

/// The service's ports as this pod serves them; `None` when a named
/// targetPort is not among the pod's container ports.
pub fn pod_ports(svc: &Service, pod: &Pod) -> Ports {
    let spec = svc.spec.clone().unwrap_or_default();
    let mut out = Vec::new();
    for p in &spec.ports {
        let target = p.target_port.clone().unwrap_or_default();
        let number = if target.is_string || !target.str_val.is_empty() {
            let found = pod
                .spec
                .iter()
                .flat_map(|s| s.containers.iter())
                .flat_map(|c| c.ports.iter())
                .find(|cp| cp.name == target.str_val);
            match found {
                Some(cp) => cp.container_port,
                None => continue,
            }
        } else if target.int_val > 0 {
            target.int_val
        } else {
            p.port
        };
        out.push(EndpointPort {
            name: Some(p.name.clone()),
            protocol: Some(if p.protocol.is_empty() {
                "TCP".into()
            } else {
                p.protocol.clone()
            }),
            port: Some(number),
            app_protocol: p.app_protocol.clone(),
        });
    }
    out
}

/// The endpoint of a selected pod, or `None` while it has no address.
pub fn endpoint(svc: &Service, pod: &Pod) -> Option<Endpoint> {
    let ip = pod
        .status
        .as_ref()
        .map(|s| s.pod_ip.clone())
        .filter(|ip| !ip.is_empty())?;
    let publish_not_ready = svc
        .spec
        .as_ref()
        .is_some_and(|s| s.publish_not_ready_addresses);
    let terminating = pods::terminating(pod);
    let serving = pods::ready(pod) || publish_not_ready;
    let meta = pod.metadata.clone().unwrap_or_default();
    let spec = pod.spec.clone().unwrap_or_default();
    Some(Endpoint {
        addresses: vec![ip],
        conditions: Some(EndpointConditions {
            ready: Some(serving && !terminating),
            serving: Some(serving),
            terminating: Some(terminating),
        }),
        hostname: (!spec.hostname.is_empty() && !spec.subdomain.is_empty())
            .then(|| spec.hostname.clone()),
        target_ref: Some(ObjectReference {
            kind: "Pod".into(),
            namespace: meta.namespace.clone(),
            name: meta.name.clone(),
            uid: meta.uid.clone(),
            ..Default::default()
        }),
        node_name: (!spec.node_name.is_empty()).then(|| spec.node_name.clone()),
        zone: None,
    })
}

fn ep_key(e: &Endpoint) -> String {
    e.target_ref
        .as_ref()
        .map(|r| r.uid.clone())
        .unwrap_or_else(|| e.addresses.join(","))
}

/// What to write to bring a Service's slices to its pods.
#[derive(Debug, Default)]
pub struct Changes {
    pub create: Vec<EndpointSlice>,
    pub update: Vec<EndpointSlice>,
    pub delete: Vec<String>,
}

pub fn reconcile(svc: &Service, selected: &[&Pod], existing: &[&EndpointSlice]) -> Changes {
    // Desired endpoints, grouped by their ports.
    let mut want: BTreeMap<String, (Ports, BTreeMap<String, Endpoint>)> = BTreeMap::new();
    for pod in selected {
        if !pods::active(pod) && !pods::terminating(pod) {
            continue;
        }
        let Some(ep) = endpoint(svc, pod) else {
            continue;
        };
        let ports = pod_ports(svc, pod);
        let group = serde_json::to_string(&ports).unwrap_or_default();
        want.entry(group)
            .or_insert_with(|| (ports, BTreeMap::new()))
            .1
            .insert(ep_key(&ep), ep);
    }
    let mut changes = Changes::default();
    let mut placed: BTreeSet<(String, String)> = BTreeSet::new();
    // Existing slices keep the endpoints still wanted with the same ports.
    let mut kept: Vec<(EndpointSlice, bool)> = Vec::new();
    for slice in existing {
        let group = serde_json::to_string(&slice.ports).unwrap_or_default();
        let mut s = (*slice).clone();
        let before = s.endpoints.clone();
        s.endpoints = before
            .iter()
            .filter_map(|e| {
                let k = ep_key(e);
                let wanted = want.get(&group)?.1.get(&k)?;
                if !placed.insert((group.clone(), k)) {
                    return None;
                }
                Some(wanted.clone())
            })
            .collect();
        let changed = s.endpoints != before;
        kept.push((s, changed));
    }
    // New endpoints fill slices of their group that have room.
    for (group, (ports, eps)) in &want {
        let mut fresh: Vec<Endpoint> = eps
            .iter()
            .filter(|(k, _)| !placed.contains(&(group.clone(), (*k).clone())))
            .map(|(_, e)| e.clone())
            .collect();
        for (s, changed) in kept.iter_mut() {
            if fresh.is_empty() {
                break;
            }
            if serde_json::to_string(&s.ports).unwrap_or_default() != *group {
                continue;
            }
            let room = MAX_ENDPOINTS.saturating_sub(s.endpoints.len());
            if room == 0 {
                continue;
            }
            let take: Vec<Endpoint> = fresh.drain(..room.min(fresh.len())).collect();
            s.endpoints.extend(take);
            *changed = true;
        }
        for chunk in fresh.chunks(MAX_ENDPOINTS) {
            changes
                .create
                .push(new_slice(svc, ports.clone(), chunk.to_vec()));
        }
    }
    for (s, changed) in kept {
        if s.endpoints.is_empty() {
            changes.delete.push(s.name().to_string());
        } else if changed {
            changes.update.push(s);
        }
    }
    changes
}

fn new_slice(svc: &Service, ports: Ports, endpoints: Vec<Endpoint>) -> EndpointSlice {
    let meta = svc.metadata.clone().unwrap_or_default();
    let mut name = meta.name.clone();
    name.truncate(57);
    EndpointSlice {
        api_version: "discovery.k8s.io/v1".into(),
        kind: "EndpointSlice".into(),
        metadata: Some(ObjectMeta {
            generate_name: format!("{name}-"),
            namespace: meta.namespace.clone(),
            labels: [
                (SERVICE_NAME.to_string(), meta.name.clone()),
                (MANAGED_BY.to_string(), CONTROLLER.to_string()),
            ]
            .into(),
            owner_references: vec![owner_ref("Service", "v1", &meta.name, &meta.uid)],
            ..Default::default()
        }),
        address_type: "IPv4".into(),
        endpoints,
        ports,
    }
}

fn managed_service(s: &EndpointSlice) -> Option<Key> {
    let m = s.metadata.as_ref()?;
    if m.labels.get(MANAGED_BY).map(String::as_str) != Some(CONTROLLER) {
        return None;
    }
    Some((m.namespace.clone(), m.labels.get(SERVICE_NAME)?.clone()))
}

struct Controller {
    client: Client,
    services: Store<Service>,
    pods: Store<Pod>,
    slices: Store<EndpointSlice>,
    /// Service → its managed slices' names.
    by_service: HashMap<Key, BTreeSet<String>>,
}

/// The slices this controller manages (its watch is filtered to them).
pub fn managed() -> ListParams {
    ListParams::default().labels(&format!("{MANAGED_BY}={CONTROLLER}"))
}

pub enum Ev {
    Service(Event<Service>),
    Pod(Event<Pod>),
    Slice(Event<EndpointSlice>),
}

/// The controller on the shared informers.
pub fn start(client: Client, inf: &mut Informers) -> tokio::task::JoinHandle<()> {
    let mut inbox = Inbox::new();
    let c = Controller {
        client,
        services: inf.watch_all(&mut inbox, Ev::Service),
        pods: inf.watch_all(&mut inbox, Ev::Pod),
        slices: inf.watch(&mut inbox, "", managed(), Ev::Slice),
        by_service: HashMap::new(),
    };
    tokio::spawn(skiff_runtime::drive("endpoint slices", c, inbox))
}

impl Reconcile for Controller {
    type Key = Key;
    type Event = Ev;

    fn on_event(&mut self, ev: Ev, q: &mut Queue<Key>) {
        match ev {
            Ev::Service(ev) => {
                let (old, new) = ev.split();
                if let Some(s) = new.or(old) {
                    q.add((s.namespace().to_string(), s.name().to_string()));
                }
            }
            Ev::Pod(ev) => self.on_pod(ev, q),
            // A slice changed or removed by someone else is put right.
            Ev::Slice(ev) => {
                let (old, new) = ev.split();
                if let Some(k) = self.file(old.map(|s| &**s), new.map(|s| &**s)) {
                    q.add(k);
                }
            }
        }
    }

    async fn sync(&mut self, key: &Key, q: &mut Queue<Key>) -> anyhow::Result<()> {
        self.sync_service(key, q).await
    }
}

impl Controller {
    /// Queues the services selecting the pod before or after the change.
    fn on_pod(&mut self, ev: Event<Pod>, q: &mut Queue<Key>) {
        let (old, new) = ev.split();
        let mut keys = BTreeSet::new();
        let services = self.services.read();
        for p in [old, new].into_iter().flatten() {
            let Some(labels) = p.metadata.as_ref().map(|m| &m.labels) else {
                continue;
            };
            for s in services.in_namespace(p.namespace()) {
                if service_selector(s).is_some_and(|sel| sel.matches(labels)) {
                    keys.insert((s.namespace().to_string(), s.name().to_string()));
                }
            }
        }
        drop(services);
        for k in keys {
            q.add(k);
        }
    }

    /// Files a slice change (from the watch, or our own write, so the next
    /// sync sees what we wrote even before the watch does) under its
    /// service; returns that service.
    fn file(&mut self, old: Option<&EndpointSlice>, new: Option<&EndpointSlice>) -> Option<Key> {
        if let Some(s) = old
            && let Some(k) = managed_service(s)
            && let Some(set) = self.by_service.get_mut(&k)
        {
            set.remove(s.name());
        }
        if let Some(s) = new
            && let Some(k) = managed_service(s)
        {
            self.by_service
                .entry(k.clone())
                .or_default()
                .insert(s.name().to_string());
        }
        new.or(old).and_then(managed_service)
    }

    fn own_write(&mut self, before: &EndpointSlice, written: EndpointSlice) {
        let written = self.slices.write_through(written);
        self.file(Some(before), Some(&written));
    }

    async fn sync_service(&mut self, k: &Key, q: &mut Queue<Key>) -> anyhow::Result<()> {
        let existing: Vec<Arc<EndpointSlice>> = self
            .by_service
            .get(k)
            .into_iter()
            .flatten()
            .filter_map(|n| self.slices.get(&k.0, n))
            .collect();
        let svc = self.services.get(&k.0, &k.1);
        let Some(sel) = svc.as_deref().and_then(service_selector) else {
            // No service (or no selector): its managed slices go.
            for s in existing {
                if let Err(e) = self.client.delete::<EndpointSlice>(&k.0, s.name()).await
                    && !e.is_not_found()
                {
                    return Err(e.into());
                }
            }
            return Ok(());
        };
        let svc = svc.expect("checked");
        let changes = {
            let pods = self.pods.read();
            let selected: Vec<&Pod> = pods
                .in_namespace(&k.0)
                .filter(|p| p.metadata.as_ref().is_some_and(|m| sel.matches(&m.labels)))
                .map(|p| &**p)
                .collect();
            let slices: Vec<&EndpointSlice> = existing.iter().map(|s| &**s).collect();
            reconcile(&svc, &selected, &slices)
        };
        for s in changes.update {
            match self.client.update(&s).await {
                Ok(written) => self.own_write(&s, written),
                Err(e) if e.is_conflict() || e.is_not_found() => {
                    // Our copy is stale: the watch brings the news, then we retry.
                    q.retry(k.clone());
                }
                Err(e) => return Err(e.into()),
            }
        }
        for s in changes.create {
            let written = self.client.create(&s).await?;
            let written = self.slices.write_through(written);
            self.file(None, Some(&written));
        }
        for name in changes.delete {
            match self.client.delete::<EndpointSlice>(&k.0, &name).await {
                Ok(gone) => {
                    self.slices.forget(&gone);
                    self.file(Some(&gone), None);
                }
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff_api::v1::{
        Condition, Container, ContainerPort, IntOrString, PodSpec, PodStatus, ServicePort,
        ServiceSpec,
    };

    fn svc(target: IntOrString) -> Service {
        Service {
            metadata: Some(ObjectMeta {
                name: "web".into(),
                namespace: "default".into(),
                uid: "svc-uid".into(),
                ..Default::default()
            }),
            spec: Some(ServiceSpec {
                selector: [("app".to_string(), "web".to_string())].into(),
                ports: vec![ServicePort {
                    name: "http".into(),
                    port: 80,
                    target_port: Some(target),
                    protocol: "TCP".into(),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn pod(i: usize, ready: bool, port_name: &str, port: i32) -> Pod {
        Pod {
            metadata: Some(ObjectMeta {
                name: format!("p{i}"),
                namespace: "default".into(),
                uid: format!("uid{i}"),
                labels: [("app".to_string(), "web".to_string())].into(),
                ..Default::default()
            }),
            spec: Some(PodSpec {
                node_name: "n1".into(),
                containers: vec![Container {
                    ports: vec![ContainerPort {
                        name: port_name.into(),
                        container_port: port,
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }),
            status: Some(PodStatus {
                phase: "Running".into(),
                pod_ip: format!("10.244.{}.{}", i / 250, i % 250 + 2),
                conditions: vec![Condition {
                    r#type: "Ready".into(),
                    status: if ready { "True" } else { "False" }.into(),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn named(n: &str) -> IntOrString {
        IntOrString {
            str_val: n.into(),
            is_string: true,
            ..Default::default()
        }
    }

    #[test]
    fn slices_of_at_most_100_and_conditions() {
        let s = svc(IntOrString {
            int_val: 8080,
            ..Default::default()
        });
        let pods: Vec<Pod> = (0..250).map(|i| pod(i, i % 2 == 0, "http", 8080)).collect();
        let refs: Vec<&Pod> = pods.iter().collect();
        let c = reconcile(&s, &refs, &[]);
        assert_eq!(c.create.len(), 3);
        assert_eq!(
            c.create.iter().map(|s| s.endpoints.len()).sum::<usize>(),
            250
        );
        assert!(c.create.iter().all(|s| s.endpoints.len() <= MAX_ENDPOINTS));
        let e = &c.create[0].endpoints[1];
        assert_eq!(e.conditions.as_ref().unwrap().ready, Some(false));
        assert_eq!(c.create[0].ports[0].port, Some(8080));
        assert_eq!(
            c.create[0].metadata.as_ref().unwrap().labels[SERVICE_NAME],
            "web"
        );
    }

    #[test]
    fn one_pod_change_rewrites_one_slice() {
        let s = svc(IntOrString {
            int_val: 8080,
            ..Default::default()
        });
        let mut pods: Vec<Pod> = (0..250).map(|i| pod(i, true, "http", 8080)).collect();
        let refs: Vec<&Pod> = pods.iter().collect();
        let mut slices = reconcile(&s, &refs, &[]).create;
        for (i, sl) in slices.iter_mut().enumerate() {
            sl.metadata.as_mut().unwrap().name = format!("web-{i}");
        }
        // One pod turns not ready.
        pods[120].status.as_mut().unwrap().conditions[0].status = "False".into();
        let refs: Vec<&Pod> = pods.iter().collect();
        let existing: Vec<&EndpointSlice> = slices.iter().collect();
        let c = reconcile(&s, &refs, &existing);
        assert!(c.create.is_empty() && c.delete.is_empty());
        assert_eq!(
            c.update.len(),
            1,
            "only the slice holding that pod is written"
        );
        // One pod goes: again one slice; a new one fills that room.
        pods.remove(10);
        pods.push(pod(999, true, "http", 8080));
        let refs: Vec<&Pod> = pods.iter().collect();
        let c = reconcile(&s, &refs, &existing);
        assert!(
            c.create.is_empty(),
            "the new endpoint goes where there is room"
        );
        assert!(c.update.len() <= 2);
    }

    #[test]
    fn named_target_ports_resolve_per_pod() {
        let s = svc(named("web"));
        let a = pod(1, true, "web", 8080);
        let b = pod(2, true, "web", 9090);
        let none = pod(3, true, "other", 7000);
        let c = reconcile(&s, &[&a, &b, &none], &[]);
        let mut ports: Vec<Option<i32>> = c
            .create
            .iter()
            .map(|s| s.ports.first().and_then(|p| p.port))
            .collect();
        ports.sort();
        // The pod without the named port gets an endpoint without ports.
        assert_eq!(ports, [None, Some(8080), Some(9090)]);
    }
}
