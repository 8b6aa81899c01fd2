//! v1 Endpoints for every Service with a selector, mirrored from the
//! EndpointSlices this cluster manages (clients and tools still read
//! Endpoints): one object named after the Service, its subsets grouped by
//! port set with addresses sorted by IP, ready endpoints in `addresses` and
//! the others — not terminating — in `notReadyAddresses`, at most 1,000
//! addresses as Kubernetes caps them. The objects carry
//! `endpointslice.kubernetes.io/skip-mirror: "true"`, Kubernetes' mark of
//! controller-made Endpoints; only those are ever deleted.

use std::collections::BTreeMap;

use skiff_api::v1::{EndpointAddress, EndpointSubset, EndpointsPort, ObjectMeta};
use skiff_api::{EndpointSlice, Endpoints, Resource, Service};
use skiff_client::Client;
use skiff_runtime::{Event, Inbox, Informers, Queue, Reconcile, ServiceIndex, ServiceKey, Store};

use crate::endpointslice::managed;

pub const SKIP_MIRROR: &str = "endpointslice.kubernetes.io/skip-mirror";
pub const OVER_CAPACITY: &str = "endpoints.kubernetes.io/over-capacity";
pub const HEADLESS: &str = "service.kubernetes.io/headless";
pub const MAX_ADDRESSES: usize = 1000;

fn has_selector(svc: &Service) -> bool {
    svc.spec
        .as_ref()
        .is_some_and(|s| !s.selector.is_empty() && s.r#type != "ExternalName")
}

/// Whether this controller made the Endpoints (and may delete them).
pub fn managed_by_us(ep: &Endpoints) -> bool {
    ep.meta().labels.get(SKIP_MIRROR).map(String::as_str) == Some("true")
}

/// The Endpoints a Service with a selector should have, from its slices;
/// `None` for a Service without a selector (its Endpoints are the user's).
pub fn desired(svc: &Service, slices: &[&EndpointSlice]) -> Option<Endpoints> {
    if !has_selector(svc) {
        return None;
    }
    // Port set → (its ports, ip → ready address, ip → not-ready address).
    type Addrs = BTreeMap<String, EndpointAddress>;
    type PortSet = Vec<(String, i32, String)>;
    let mut subsets: BTreeMap<PortSet, (Vec<EndpointsPort>, Addrs, Addrs)> = BTreeMap::new();
    for slice in slices {
        let mut ports: Vec<EndpointsPort> = slice
            .ports
            .iter()
            .filter_map(|p| {
                Some(EndpointsPort {
                    name: p.name.clone().unwrap_or_default(),
                    port: p.port?,
                    protocol: p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                    app_protocol: p.app_protocol.clone(),
                })
            })
            .collect();
        ports.sort_by(|a, b| a.name.cmp(&b.name));
        let key: Vec<_> = ports
            .iter()
            .map(|p| (p.name.clone(), p.port, p.protocol.clone()))
            .collect();
        let entry = subsets
            .entry(key)
            .or_insert_with(|| (ports, BTreeMap::new(), BTreeMap::new()));
        for ep in &slice.endpoints {
            let cond = ep.conditions.unwrap_or_default();
            // As in Kubernetes, an unset `ready` means ready.
            let ready = cond.ready != Some(false);
            if !ready && cond.terminating == Some(true) {
                continue;
            }
            for ip in &ep.addresses {
                let addr = EndpointAddress {
                    ip: ip.clone(),
                    hostname: ep.hostname.clone().unwrap_or_default(),
                    node_name: ep.node_name.clone(),
                    target_ref: ep.target_ref.clone(),
                };
                let list = if ready { &mut entry.1 } else { &mut entry.2 };
                list.insert(ip.clone(), addr);
            }
        }
    }
    let mut budget = MAX_ADDRESSES;
    let mut truncated = false;
    let mut out = Vec::new();
    for (_, (ports, ready, not_ready)) in subsets {
        let mut take = |m: Addrs| -> Vec<EndpointAddress> {
            let n = m.len().min(budget);
            truncated |= n < m.len();
            budget -= n;
            m.into_values().take(n).collect()
        };
        let subset = EndpointSubset {
            addresses: take(ready),
            not_ready_addresses: take(not_ready),
            ports,
        };
        if !subset.addresses.is_empty() || !subset.not_ready_addresses.is_empty() {
            out.push(subset);
        }
    }
    let meta = svc.meta();
    let mut labels = meta.labels.clone();
    labels.insert(SKIP_MIRROR.into(), "true".into());
    if svc.spec.as_ref().is_some_and(|s| s.cluster_ip == "None") {
        labels.insert(HEADLESS.into(), String::new());
    }
    let mut annotations = BTreeMap::new();
    if truncated {
        annotations.insert(OVER_CAPACITY.into(), "truncated".into());
    }
    Some(Endpoints {
        metadata: Some(ObjectMeta {
            name: meta.name.clone(),
            namespace: meta.namespace.clone(),
            labels,
            annotations,
            ..Default::default()
        }),
        subsets: out,
        ..Default::default()
    })
}

/// Whether `current` already says what `want` says (subsets, our labels
/// and the over-capacity mark).
pub fn up_to_date(current: &Endpoints, want: &Endpoints) -> bool {
    current.subsets == want.subsets
        && current.meta().labels == want.meta().labels
        && current.meta().annotations.get(OVER_CAPACITY)
            == want.meta().annotations.get(OVER_CAPACITY)
}

struct Controller {
    client: Client,
    index: ServiceIndex,
    endpoints: Store<Endpoints>,
}

pub enum Ev {
    Service(Event<Service>),
    Slice(Event<EndpointSlice>),
    Endpoints(Event<Endpoints>),
}

pub fn start(client: Client, inf: &mut Informers) -> tokio::task::JoinHandle<()> {
    let mut inbox = Inbox::new();
    // Services and slices arrive as events into our own index; only the
    // Endpoints are read back from their store.
    let _ = inf.watch_all::<Service, _>(&mut inbox, Ev::Service);
    let _ = inf.watch::<EndpointSlice, _>(&mut inbox, "", managed(), Ev::Slice);
    let c = Controller {
        client,
        index: ServiceIndex::new(),
        endpoints: inf.watch_all(&mut inbox, Ev::Endpoints),
    };
    tokio::spawn(skiff_runtime::drive("endpoints", c, inbox))
}

impl Reconcile for Controller {
    type Key = ServiceKey;
    type Event = Ev;

    fn on_event(&mut self, ev: Ev, q: &mut Queue<ServiceKey>) {
        match ev {
            Ev::Service(ev) => {
                if let Some(k) = self.index.on_service(ev) {
                    q.add(k);
                }
            }
            Ev::Slice(ev) => {
                for k in self.index.on_slice(ev) {
                    q.add(k);
                }
            }
            // Changed or removed by someone else: put right.
            Ev::Endpoints(ev) => {
                let (old, new) = ev.split();
                if let Some(e) = new.or(old) {
                    q.add((e.namespace().to_string(), e.name().to_string()));
                }
            }
        }
    }

    async fn sync(&mut self, key: &ServiceKey, q: &mut Queue<ServiceKey>) -> anyhow::Result<()> {
        let (ns, name) = key;
        let current = self.endpoints.get(ns, name);
        let want = self.index.service(key).and_then(|svc| {
            let slices: Vec<&EndpointSlice> = self.index.slices(key).map(|s| &**s).collect();
            desired(svc, &slices)
        });
        match (want, current) {
            (None, Some(cur)) if managed_by_us(&cur) => {
                match self.client.delete::<Endpoints>(ns, name).await {
                    Ok(gone) => self.endpoints.forget(&gone),
                    Err(e) if e.is_not_found() => {}
                    Err(e) => return Err(e.into()),
                }
            }
            (None, _) => {}
            (Some(want), None) => match self.client.create(&want).await {
                Ok(made) => {
                    self.endpoints.write_through(made);
                }
                // Ours is stale: the watch brings it, and the key again.
                Err(e) if e.is_already_exists() => q.retry(key.clone()),
                Err(e) => return Err(e.into()),
            },
            (Some(mut want), Some(cur)) => {
                if up_to_date(&cur, &want) {
                    return Ok(());
                }
                // Keep what others set in metadata; ours wins on labels.
                let mut meta = cur.meta().clone();
                let w = want.meta_mut();
                meta.labels = std::mem::take(&mut w.labels);
                meta.annotations.remove(OVER_CAPACITY);
                meta.annotations.append(&mut w.annotations);
                want.metadata = Some(meta);
                match self.client.update(&want).await {
                    Ok(written) => {
                        self.endpoints.write_through(written);
                    }
                    Err(e) if e.is_conflict() || e.is_not_found() => q.retry(key.clone()),
                    Err(e) => return Err(e.into()),
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff_api::v1::{Endpoint, EndpointConditions, EndpointPort, ServiceSpec};

    fn svc(selector: bool) -> Service {
        let mut s = Service {
            spec: Some(ServiceSpec {
                selector: if selector {
                    [("app".to_string(), "web".to_string())].into()
                } else {
                    Default::default()
                },
                ..Default::default()
            }),
            ..Default::default()
        };
        s.meta_mut().name = "web".into();
        s.meta_mut().namespace = "ns".into();
        s.meta_mut().labels.insert("team".into(), "a".into());
        s
    }

    fn ep(ip: &str, ready: Option<bool>, terminating: bool) -> Endpoint {
        Endpoint {
            addresses: vec![ip.into()],
            conditions: Some(EndpointConditions {
                ready,
                serving: ready,
                terminating: Some(terminating),
            }),
            node_name: Some("n1".into()),
            ..Default::default()
        }
    }

    fn slice(port: Option<i32>, eps: Vec<Endpoint>) -> EndpointSlice {
        EndpointSlice {
            address_type: "IPv4".into(),
            endpoints: eps,
            ports: vec![EndpointPort {
                name: Some("http".into()),
                protocol: Some("TCP".into()),
                port,
                app_protocol: None,
            }],
            ..Default::default()
        }
    }

    #[test]
    fn slices_become_subsets_by_port_sorted_by_ip() {
        let a = slice(
            Some(8080),
            vec![
                ep("10.0.0.9", Some(true), false),
                ep("10.0.0.2", None, false),
                ep("10.0.0.5", Some(false), false),
                ep("10.0.0.7", Some(false), true),
            ],
        );
        let b = slice(Some(8080), vec![ep("10.0.0.3", Some(true), false)]);
        let c = slice(Some(9090), vec![ep("10.0.1.1", Some(true), false)]);
        let e = desired(&svc(true), &[&a, &b, &c]).unwrap();
        assert_eq!(e.subsets.len(), 2, "one subset a port set");
        let s = &e.subsets[0];
        assert_eq!(s.ports[0].port, 8080);
        let ips: Vec<&str> = s.addresses.iter().map(|a| a.ip.as_str()).collect();
        assert_eq!(ips, ["10.0.0.2", "10.0.0.3", "10.0.0.9"]);
        assert_eq!(
            s.not_ready_addresses.len(),
            1,
            "terminating ones are left out"
        );
        assert_eq!(s.not_ready_addresses[0].ip, "10.0.0.5");
        assert_eq!(s.addresses[0].node_name.as_deref(), Some("n1"));
        let labels = &e.meta().labels;
        assert_eq!(labels[SKIP_MIRROR], "true");
        assert_eq!(labels["team"], "a", "the service's labels are copied");
        assert!(managed_by_us(&e));
        assert!(up_to_date(&e, &e.clone()));
    }

    #[test]
    fn no_selector_is_not_ours_and_the_cap_truncates() {
        assert!(desired(&svc(false), &[]).is_none());
        let many = slice(
            Some(80),
            (0..1200)
                .map(|i| ep(&format!("10.1.{}.{}", i / 250, i % 250), Some(true), false))
                .collect(),
        );
        let e = desired(&svc(true), &[&many]).unwrap();
        assert_eq!(e.subsets[0].addresses.len(), MAX_ADDRESSES);
        assert_eq!(e.meta().annotations[OVER_CAPACITY], "truncated");
        let empty = desired(&svc(true), &[]).unwrap();
        assert!(empty.subsets.is_empty());
        assert!(!up_to_date(&empty, &e));
    }
}
