//! Reading an instance's maps back into services: what the reconciler
//! adopts on start and what `skiff bpf` prints.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;

use serde::Serialize;
use skiff_ebpf_common::{flags, *};

use crate::Error;
use crate::maps::{self, Maps};
use crate::model::*;

#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Snapshot {
    pub services: Vec<ServiceView>,
    /// Master entries whose id has no name (left by a crash mid-write).
    pub orphan_frontends: Vec<OrphanFrontend>,
    /// Backends no service slot points to.
    pub orphan_backends: Vec<u32>,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceView {
    pub id: u32,
    pub name: String,
    pub proto: Proto,
    pub frontends: Vec<FrontendView>,
    /// In slot order (slot 1 first).
    pub backends: Vec<BackendView>,
    pub algorithm: Algorithm,
    pub affinity_timeout: Option<u32>,
    pub maglev_size: Option<u32>,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FrontendView {
    pub frontend: Frontend,
    pub kind: FrontendKind,
    pub count: u16,
    pub flags: u16,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BackendView {
    pub id: u32,
    pub addr: BackendAddr,
    pub terminating: bool,
    /// On this node.
    pub local: bool,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OrphanFrontend {
    #[serde(skip)]
    pub key: ServiceKey,
    pub id: u32,
}

pub fn key_of(f: &Frontend, slot: u16) -> ServiceKey {
    ServiceKey {
        addr_be: u32::from(f.addr).to_be(),
        port_be: f.port.to_be(),
        slot,
        proto: f.proto.number(),
        scope: f.scope(),
        pad: [0; 2],
    }
}

pub fn frontend_of(key: &ServiceKey) -> Option<Frontend> {
    Some(Frontend {
        addr: Ipv4Addr::from(u32::from_be(key.addr_be)),
        port: u16::from_be(key.port_be),
        proto: Proto::from_number(key.proto)?,
        local: key.scope == SCOPE_LOCAL,
    })
}

pub fn backend_addr(b: &Backend) -> BackendAddr {
    BackendAddr {
        addr: Ipv4Addr::from(u32::from_be(b.addr_be)),
        port: u16::from_be(b.port_be),
    }
}

pub fn kind_of(flags_: u16) -> FrontendKind {
    if flags_ & flags::NODE_PORT != 0 {
        FrontendKind::NodePort
    } else if flags_ & flags::EXTERNAL_IP != 0 {
        FrontendKind::ExternalIp
    } else {
        FrontendKind::ClusterIp
    }
}

fn iter_err(map: &str, e: aya::maps::MapError) -> Error {
    Error::Map {
        map: map.to_string(),
        what: "iterate".into(),
        source: Box::new(e),
    }
}

impl Snapshot {
    pub fn read(m: &Maps) -> Result<Snapshot, Error> {
        let mut names = HashMap::new();
        for item in m.names.iter() {
            let (id, name) = item.map_err(|e| iter_err(maps::SVC_NAMES, e))?;
            names.insert(id, maps::name_of(&name));
        }
        let mut masters: BTreeMap<u32, Vec<(ServiceKey, ServiceEntry)>> = BTreeMap::new();
        let mut slots: HashMap<ServiceKey, u32> = HashMap::new();
        for item in m.services.iter() {
            let (key, entry) = item.map_err(|e| iter_err(maps::SERVICES, e))?;
            if key.slot == 0 {
                masters.entry(entry.id).or_default().push((key, entry));
            } else {
                slots.insert(key, entry.backend_id);
            }
        }
        let mut backends = HashMap::new();
        for item in m.backends.iter() {
            let (id, b) = item.map_err(|e| iter_err(maps::BACKENDS, e))?;
            backends.insert(id, b);
        }
        let mut snap = Snapshot::default();
        let mut referenced = std::collections::HashSet::new();
        for (id, name) in &names {
            let mut fronts = masters.remove(id).unwrap_or_default();
            fronts.sort_by_key(|(k, _)| *k);
            let mut view = ServiceView {
                id: *id,
                name: name.clone(),
                // Known from any frontend; irrelevant without one.
                proto: Proto::Tcp,
                frontends: Vec::new(),
                backends: Vec::new(),
                algorithm: Algorithm::Random,
                affinity_timeout: None,
                maglev_size: None,
            };
            if let Some((key, entry)) = fronts.first() {
                view.algorithm = if entry.flags & flags::MAGLEV != 0 {
                    view.maglev_size = Some(entry.maglev_size);
                    Algorithm::Maglev
                } else {
                    Algorithm::Random
                };
                view.affinity_timeout =
                    (entry.flags & flags::AFFINITY != 0).then_some(entry.affinity_timeout);
                for slot in 1..=entry.count {
                    let Some(bid) = slots.get(&ServiceKey { slot, ..*key }) else {
                        continue;
                    };
                    if let Some(b) = backends.get(bid) {
                        referenced.insert(*bid);
                        view.backends.push(BackendView {
                            id: *bid,
                            addr: backend_addr(b),
                            terminating: b.flags & backend_flags::TERMINATING != 0,
                            local: b.flags & backend_flags::LOCAL != 0,
                        });
                    }
                }
            }
            for (key, entry) in fronts {
                if let Some(frontend) = frontend_of(&key) {
                    view.proto = frontend.proto;
                    view.frontends.push(FrontendView {
                        frontend,
                        kind: kind_of(entry.flags),
                        count: entry.count,
                        flags: entry.flags,
                    });
                }
            }
            snap.services.push(view);
        }
        snap.services.sort_by(|a, b| a.name.cmp(&b.name));
        for (id, fronts) in masters {
            for (key, _) in fronts {
                snap.orphan_frontends.push(OrphanFrontend { key, id });
            }
        }
        let mut orphans: Vec<u32> = backends
            .keys()
            .filter(|id| !referenced.contains(id))
            .copied()
            .collect();
        orphans.sort();
        snap.orphan_backends = orphans;
        Ok(snap)
    }
}
