//! Typed handles on an instance's pinned maps, for the reconciler and for
//! `skiff bpf` (which works while no loader runs).

use std::path::Path;

use aya::maps::{HashMap, Map, MapData, PerCpuArray, PerCpuValues};
use skiff_ebpf_common::*;

use crate::{Error, pins};

/// Map names, as pinned.
pub const SERVICES: &str = "SKIFF_SERVICES";
pub const BACKENDS: &str = "SKIFF_BACKENDS";
pub const MAGLEV: &str = "SKIFF_MAGLEV";
pub const REV_SOCK: &str = "SKIFF_REV_SOCK";
pub const AFFINITY: &str = "SKIFF_AFFINITY";
pub const SVC_NAMES: &str = "SKIFF_SVC_NAMES";
pub const SVC_STATS: &str = "SKIFF_SVC_STATS";
pub const BE_STATS: &str = "SKIFF_BE_STATS";
pub const GLOBAL: &str = "SKIFF_GLOBAL";
pub const CT: &str = "SKIFF_CT";
pub const NODE_IPS: &str = "SKIFF_NODE_IPS";
pub const IFACES: &str = "SKIFF_IFACES";

pub struct Maps {
    pub instance: String,
    pub services: HashMap<MapData, ServiceKey, ServiceEntry>,
    pub backends: HashMap<MapData, u32, Backend>,
    pub maglev: HashMap<MapData, u32, MaglevTable>,
    pub rev_sock: HashMap<MapData, RevSockKey, RevSockValue>,
    pub affinity: HashMap<MapData, AffinityKey, AffinityValue>,
    pub names: HashMap<MapData, u32, ServiceName>,
    pub svc_stats: PerCpuArray<MapData, Counters>,
    pub be_stats: PerCpuArray<MapData, Counters>,
    pub global: PerCpuArray<MapData, u64>,
    pub ct: HashMap<MapData, CtKey, CtValue>,
    pub node_ips: HashMap<MapData, u32, u32>,
    /// Capacities, from the kernel's view of each map.
    pub capacity: Capacity,
}

#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Capacity {
    pub services: u32,
    pub backends: u32,
    pub maglev: u32,
    pub service_ids: u32,
    pub backend_ids: u32,
}

fn open(dir: &Path, name: &str) -> Result<Map, Error> {
    let path = dir.join(name);
    let data = MapData::from_pin(&path).map_err(|e| Error::Map {
        map: name.to_string(),
        what: format!("open pinned {}", path.display()),
        source: Box::new(e),
    })?;
    Map::from_map_data(data).map_err(|e| Error::Map {
        map: name.to_string(),
        what: "read map type".into(),
        source: Box::new(e),
    })
}

macro_rules! typed {
    ($dir:expr, $name:expr) => {
        open($dir, $name)?.try_into().map_err(|e| Error::Map {
            map: $name.to_string(),
            what: "the pinned map has another type or layout (an older skiff?)".into(),
            source: Box::new(e),
        })?
    };
}

fn max_entries(dir: &Path, name: &str) -> Result<u32, Error> {
    let info = aya::maps::MapInfo::from_pin(dir.join(name)).map_err(|e| Error::Map {
        map: name.to_string(),
        what: "read map info".into(),
        source: Box::new(e),
    })?;
    Ok(info.max_entries())
}

impl Maps {
    /// Opens the pinned maps of `instance`; a clear error when it is not
    /// attached.
    pub fn open(instance: &str) -> Result<Maps, Error> {
        let dir = pins::instance_dir(instance)?;
        if !dir.join(SERVICES).exists() {
            return Err(Error::NotAttached(instance.to_string()));
        }
        let capacity = Capacity {
            services: max_entries(&dir, SERVICES)?,
            backends: max_entries(&dir, BACKENDS)?,
            maglev: max_entries(&dir, MAGLEV)?,
            service_ids: max_entries(&dir, SVC_STATS)?.min(max_entries(&dir, SVC_NAMES)?),
            backend_ids: max_entries(&dir, BE_STATS)?,
        };
        Ok(Maps {
            instance: instance.to_string(),
            services: typed!(&dir, SERVICES),
            backends: typed!(&dir, BACKENDS),
            maglev: typed!(&dir, MAGLEV),
            rev_sock: typed!(&dir, REV_SOCK),
            affinity: typed!(&dir, AFFINITY),
            names: typed!(&dir, SVC_NAMES),
            svc_stats: typed!(&dir, SVC_STATS),
            be_stats: typed!(&dir, BE_STATS),
            global: typed!(&dir, GLOBAL),
            ct: typed!(&dir, CT),
            node_ips: typed!(&dir, NODE_IPS),
            capacity,
        })
    }

    /// Sum of a per-CPU counter slot over every CPU.
    pub fn service_counters(&self, id: u32) -> Counters {
        sum(self.svc_stats.get(&id, 0).ok())
    }

    pub fn backend_counters(&self, id: u32) -> Counters {
        sum(self.be_stats.get(&id, 0).ok())
    }

    pub fn global_counters(&self) -> Vec<u64> {
        (0..global::COUNT)
            .map(|i| self.global.get(&i, 0).map(|v| v.iter().sum()).unwrap_or(0))
            .collect()
    }

    /// Zeroes the counters of a freed id, so its next owner starts at 0.
    pub fn zero_counters(&mut self, service_id: Option<u32>, backend_id: Option<u32>) {
        let Ok(cpus) = aya::util::nr_cpus() else {
            return;
        };
        let zeros = || PerCpuValues::try_from(vec![Counters::default(); cpus]);
        if let (Some(id), Ok(z)) = (service_id, zeros()) {
            let _ = self.svc_stats.set(id, z, 0);
        }
        if let (Some(id), Ok(z)) = (backend_id, zeros()) {
            let _ = self.be_stats.set(id, z, 0);
        }
    }
}

fn sum(values: Option<PerCpuValues<Counters>>) -> Counters {
    let mut total = Counters::default();
    for c in values.iter().flat_map(|v| v.iter()) {
        total.packets += c.packets;
        total.bytes += c.bytes;
        total.connections += c.connections;
        total.refused += c.refused;
        total.dropped += c.dropped;
    }
    total
}

pub fn name_of(name: &ServiceName) -> String {
    let end = name
        .bytes
        .iter()
        .position(|b| *b == 0)
        .unwrap_or(name.bytes.len());
    String::from_utf8_lossy(&name.bytes[..end]).into_owned()
}

pub fn encode_name(name: &str) -> ServiceName {
    let mut out = ServiceName::default();
    let n = name.len().min(out.bytes.len() - 1);
    out.bytes[..n].copy_from_slice(&name.as_bytes()[..n]);
    out
}
