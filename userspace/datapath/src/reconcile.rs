//! Make the maps say what [`Desired`] says, touching only what differs.
//!
//! Write order, so that no lookup ever sees a half-written service (a
//! master entry is the only way in, and everything it points to exists
//! before it and outlives it):
//! - add: backends → Maglev table → slots → master;
//! - change: new backends → new Maglev table → changed slots → master
//!   (new count, flags) → slots past the new count → removed backends;
//! - remove: masters → slots → Maglev table → backends → name.
//!
//! Slots keep their backend when the set changes (a removed backend's slot
//! takes a new backend, or the last slot's), so one endpoint change writes
//! O(1) entries, not the whole service.
//!
//! Established connections to a removed backend: socket-level load
//! balancing translates at connect() time, so a connected socket keeps its
//! backend until it closes (as with Cilium's socket LB); only new
//! connections and new UDP flows are kept from it — their lookups no longer
//! find it. Affinity entries naming it are deleted with it.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use serde::Serialize;
use skiff_ebpf_common::{flags, *};

use crate::Error;
use crate::maglev;
use crate::maps::{self, Maps};
use crate::model::*;
use crate::snapshot::{Snapshot, key_of};

#[derive(Clone, Debug)]
struct Installed {
    id: u32,
    frontends: BTreeMap<Frontend, FrontendKind>,
    /// Backend id of slot i+1.
    slots: Vec<u32>,
    backends: BTreeMap<BackendAddr, u32>,
    terminating: bool,
    local: BTreeSet<BackendAddr>,
    algorithm: Algorithm,
    affinity_timeout: Option<u32>,
}

impl Installed {
    fn master(&self, frontend: &Frontend, kind: FrontendKind, maglev_size: u32) -> ServiceEntry {
        let mut f = match kind {
            FrontendKind::ClusterIp => flags::CLUSTER_IP,
            FrontendKind::ExternalIp => flags::EXTERNAL_IP,
            FrontendKind::NodePort => flags::NODE_PORT,
        };
        if frontend.local {
            f |= flags::LOCAL;
        }
        if self.algorithm == Algorithm::Maglev {
            f |= flags::MAGLEV;
        }
        if self.affinity_timeout.is_some() {
            f |= flags::AFFINITY;
        }
        ServiceEntry {
            backend_id: 0,
            count: self.slots.len() as u16,
            flags: f,
            id: self.id,
            affinity_timeout: self.affinity_timeout.unwrap_or(0),
            maglev_size: if self.algorithm == Algorithm::Maglev {
                maglev_size
            } else {
                0
            },
            pad: 0,
        }
    }
}

/// Ids 1..=max, handed out lowest-never-used first, then freed ones oldest
/// first (so a just-freed id is reused as late as possible).
#[derive(Debug)]
struct IdPool {
    next: u32,
    max: u32,
    free: VecDeque<u32>,
}

impl IdPool {
    fn new(max: u32, used: &BTreeSet<u32>) -> IdPool {
        let next = used.last().map_or(1, |m| m + 1);
        let free = (1..next).filter(|i| !used.contains(i)).collect();
        IdPool { next, max, free }
    }

    fn take(&mut self) -> Option<u32> {
        if let Some(id) = self.free.pop_front() {
            return Some(id);
        }
        (self.next <= self.max).then(|| {
            self.next += 1;
            self.next - 1
        })
    }

    fn give(&mut self, id: u32) {
        self.free.push_back(id);
    }
}

#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ApplyReport {
    pub added: usize,
    pub changed: usize,
    pub removed: usize,
    pub unchanged: usize,
    /// Map entries written and deleted.
    pub writes: usize,
    pub deletes: usize,
}

pub struct Reconciler {
    maps: Maps,
    installed: BTreeMap<String, Installed>,
    service_ids: IdPool,
    backend_ids: IdPool,
    maglev_size: u32,
    maglev_seed: u64,
    /// Left by a crash mid-write: removed on the next apply.
    orphan_frontends: Vec<ServiceKey>,
    orphan_backends: Vec<u32>,
}

#[derive(Clone, Copy, Debug)]
pub struct MaglevConfig {
    pub size: u32,
    pub seed: u64,
}

impl Default for MaglevConfig {
    fn default() -> Self {
        MaglevConfig {
            size: maglev::DEFAULT_SIZE,
            seed: maglev::DEFAULT_SEED,
        }
    }
}

impl Reconciler {
    /// Adopts what the maps hold: nothing is flushed.
    pub fn adopt(maps: Maps, maglev: MaglevConfig) -> Result<Reconciler, Error> {
        if !maglev::SIZES.contains(&maglev.size) {
            return Err(Error::BadMaglevSize(maglev.size));
        }
        let snap = Snapshot::read(&maps)?;
        let mut installed = BTreeMap::new();
        let mut service_ids = BTreeSet::new();
        let mut backend_ids: BTreeSet<u32> = snap.orphan_backends.iter().copied().collect();
        for s in snap.services {
            service_ids.insert(s.id);
            backend_ids.extend(s.backends.iter().map(|b| b.id));
            installed.insert(
                s.name.clone(),
                Installed {
                    id: s.id,
                    frontends: s.frontends.iter().map(|f| (f.frontend, f.kind)).collect(),
                    slots: s.backends.iter().map(|b| b.id).collect(),
                    backends: s.backends.iter().map(|b| (b.addr, b.id)).collect(),
                    terminating: s.backends.iter().any(|b| b.terminating),
                    local: s
                        .backends
                        .iter()
                        .filter(|b| b.local)
                        .map(|b| b.addr)
                        .collect(),
                    algorithm: s.algorithm,
                    affinity_timeout: s.affinity_timeout,
                },
            );
        }
        for o in &snap.orphan_frontends {
            service_ids.insert(o.id);
        }
        let capacity = maps.capacity;
        Ok(Reconciler {
            service_ids: IdPool::new(capacity.service_ids.saturating_sub(1), &service_ids),
            backend_ids: IdPool::new(capacity.backend_ids.saturating_sub(1), &backend_ids),
            maps,
            installed,
            maglev_size: maglev.size,
            maglev_seed: maglev.seed,
            orphan_frontends: snap.orphan_frontends.iter().map(|o| o.key).collect(),
            orphan_backends: snap.orphan_backends,
        })
    }

    /// Names of the installed services.
    pub fn installed(&self) -> impl Iterator<Item = &str> {
        self.installed.keys().map(String::as_str)
    }

    /// Names of the installed services that start with `prefix` (one
    /// Service's ports: `ns/name:`), in O(log n + matches).
    pub fn installed_with_prefix<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = &'a str> {
        self.installed
            .range::<str, _>((
                std::ops::Bound::Included(prefix),
                std::ops::Bound::Unbounded,
            ))
            .map(|(k, _)| k.as_str())
            .take_while(move |k| k.starts_with(prefix))
    }

    /// Refuses, before writing anything, a state the maps cannot hold.
    fn check_capacity(&self, desired: &Desired) -> Result<(), Error> {
        let c = self.maps.capacity;
        let entries: u64 = desired
            .services
            .values()
            .map(|s| s.frontends.len() as u64 * (1 + s.backends.len() as u64))
            .sum();
        let backends = desired.backend_count() as u64;
        let maglev = desired
            .services
            .values()
            .filter(|s| s.algorithm == Algorithm::Maglev)
            .count() as u64;
        let ids = desired.services.len() as u64;
        for (map, need, max) in [
            (maps::SERVICES, entries, c.services as u64),
            (
                maps::BACKENDS,
                backends,
                c.backends.min(c.backend_ids.saturating_sub(1)) as u64,
            ),
            (maps::MAGLEV, maglev, c.maglev as u64),
            (maps::SVC_NAMES, ids, c.service_ids.saturating_sub(1) as u64),
        ] {
            if need > max {
                return Err(Error::MapFull {
                    map: map.to_string(),
                    need,
                    max,
                });
            }
        }
        for s in desired.services.values() {
            if s.backends.len() > u16::MAX as usize {
                return Err(Error::TooManyBackends(s.name.clone(), s.backends.len()));
            }
        }
        Ok(())
    }

    /// Brings the maps to `desired`. On an error the maps hold a mix of the
    /// old and new state in which every service is whole, and the next
    /// apply converges.
    pub fn apply(&mut self, desired: &Desired) -> Result<ApplyReport, Error> {
        self.check_capacity(desired)?;
        let mut report = ApplyReport::default();
        let result = self.apply_inner(desired, &mut report);
        if result.is_err() {
            // Re-read what is really there, so the next apply diffs against
            // the truth.
            self.readopt()?;
        }
        result.map(|()| report)
    }

    /// Brings one service to `def` (`None` removes it): the incremental
    /// path for watch events, O(that service) whatever the number of others.
    pub fn apply_one(
        &mut self,
        name: &str,
        def: Option<&ServiceDef>,
    ) -> Result<ApplyReport, Error> {
        let mut report = ApplyReport::default();
        let result = match (def, self.installed.contains_key(name)) {
            (Some(def), false) => self.add(def, &mut report).map(|()| report.added += 1),
            (Some(def), true) => self.change(def, &mut report).map(|changed| {
                if changed {
                    report.changed += 1
                } else {
                    report.unchanged += 1
                }
            }),
            (None, true) => self.remove(name, &mut report).map(|()| report.removed += 1),
            (None, false) => Ok(()),
        };
        if result.is_err() {
            self.readopt()?;
        }
        result.map(|()| report)
    }

    fn readopt(&mut self) -> Result<(), Error> {
        let maps = Maps::open(&self.maps.instance)?;
        let config = MaglevConfig {
            size: self.maglev_size,
            seed: self.maglev_seed,
        };
        *self = Reconciler::adopt(maps, config)?;
        Ok(())
    }

    fn apply_inner(&mut self, desired: &Desired, report: &mut ApplyReport) -> Result<(), Error> {
        for key in std::mem::take(&mut self.orphan_frontends) {
            self.delete_frontend_entries(&key, report)?;
        }
        for id in std::mem::take(&mut self.orphan_backends) {
            self.delete_backend(id, report)?;
        }
        // Removals first: they free the room additions may need.
        let gone: Vec<String> = self
            .installed
            .keys()
            .filter(|n| !desired.services.contains_key(*n))
            .cloned()
            .collect();
        for name in gone {
            self.remove(&name, report)?;
            report.removed += 1;
        }
        for (name, def) in &desired.services {
            match self.installed.contains_key(name) {
                false => {
                    self.add(def, report)?;
                    report.added += 1;
                }
                true => {
                    if self.change(def, report)? {
                        report.changed += 1;
                    } else {
                        report.unchanged += 1;
                    }
                }
            }
        }
        Ok(())
    }

    fn add(&mut self, def: &ServiceDef, report: &mut ApplyReport) -> Result<(), Error> {
        let id = self
            .service_ids
            .take()
            .ok_or_else(|| Error::MapFullOnWrite(maps::SVC_NAMES.into()))?;
        let mut inst = Installed {
            id,
            frontends: BTreeMap::new(),
            slots: Vec::new(),
            backends: BTreeMap::new(),
            terminating: def.terminating,
            local: def.local.clone(),
            algorithm: def.algorithm,
            affinity_timeout: def.affinity_timeout,
        };
        self.write(maps::SVC_NAMES, report, |m| {
            m.names.insert(id, maps::encode_name(&def.name), 0)
        })?;
        // Recorded before the rest, so an error leaves it for the next
        // apply to fix.
        self.installed.insert(def.name.clone(), inst.clone());
        for b in &def.backends {
            let bid = self.new_backend(b, def, report)?;
            inst.backends.insert(*b, bid);
            inst.slots.push(bid);
        }
        self.installed.insert(def.name.clone(), inst.clone());
        if def.algorithm == Algorithm::Maglev {
            self.write_maglev(&inst, report)?;
        }
        for (f, kind) in &def.frontends {
            self.write_slots(f, &inst, 0..inst.slots.len(), report)?;
            let master = inst.master(f, *kind, self.maglev_size);
            self.write(maps::SERVICES, report, |m| {
                m.services.insert(key_of(f, 0), master, 0)
            })?;
            inst.frontends.insert(*f, *kind);
            self.installed.insert(def.name.clone(), inst.clone());
        }
        Ok(())
    }

    /// Returns whether anything was written.
    fn change(&mut self, def: &ServiceDef, report: &mut ApplyReport) -> Result<bool, Error> {
        let old = self.installed[&def.name].clone();
        let want: BTreeSet<BackendAddr> = def.backends.iter().copied().collect();
        let removed: Vec<(BackendAddr, u32)> = old
            .backends
            .iter()
            .filter(|(a, _)| !want.contains(a))
            .map(|(a, id)| (*a, *id))
            .collect();
        let added: Vec<BackendAddr> = def
            .backends
            .iter()
            .filter(|a| !old.backends.contains_key(a))
            .copied()
            .collect();
        let settings_changed = old.algorithm != def.algorithm
            || old.affinity_timeout != def.affinity_timeout
            || old.terminating != def.terminating
            || old.local != def.local;
        if removed.is_empty()
            && added.is_empty()
            && !settings_changed
            && old.frontends == def.frontends
        {
            return Ok(false);
        }
        let mut inst = old.clone();
        inst.algorithm = def.algorithm;
        inst.affinity_timeout = def.affinity_timeout;
        inst.terminating = def.terminating;
        inst.local = def.local.clone();

        // 1. New backends; kept ones whose flags changed.
        let mut new_ids = Vec::new();
        for b in &added {
            let bid = self.new_backend(b, def, report)?;
            inst.backends.insert(*b, bid);
            new_ids.push(bid);
        }
        for (addr, id) in &old.backends {
            let flags_changed = old.terminating != def.terminating
                || old.local.contains(addr) != def.local.contains(addr);
            if want.contains(addr) && flags_changed {
                let value = backend_value(addr, def);
                self.write(maps::BACKENDS, report, |m| m.backends.insert(*id, value, 0))?;
            }
        }
        let removed_ids: BTreeSet<u32> = removed.iter().map(|(_, id)| *id).collect();
        let (slots, changed_slots) = relayout(&old.slots, &removed_ids, &new_ids);
        let old_count = old.slots.len();
        inst.slots = slots;
        for (addr, _) in &removed {
            inst.backends.remove(addr);
        }
        // 2. Maglev table for the new set (before any master points at it).
        if def.algorithm == Algorithm::Maglev
            && (old.algorithm != Algorithm::Maglev || !removed.is_empty() || !added.is_empty())
        {
            self.write_maglev(&inst, report)?;
        }
        // 3. Frontends: slots, master, then slots past the new count.
        for (f, kind) in &def.frontends {
            let existed = old.frontends.get(f);
            let range: Vec<usize> = if existed.is_some() {
                changed_slots
                    .iter()
                    .copied()
                    .filter(|s| *s < inst.slots.len())
                    .collect()
            } else {
                (0..inst.slots.len()).collect()
            };
            for s in range {
                self.write_slot(f, &inst, s, report)?;
            }
            let master = inst.master(f, *kind, self.maglev_size);
            if existed.is_none() || old.master(f, *kind, self.maglev_size) != master {
                self.write(maps::SERVICES, report, |m| {
                    m.services.insert(key_of(f, 0), master, 0)
                })?;
            }
            if existed.is_some() {
                for s in inst.slots.len()..old_count {
                    self.delete(maps::SERVICES, report, |m| {
                        m.services.remove(&key_of(f, s as u16 + 1))
                    })?;
                }
            }
        }
        for f in old
            .frontends
            .keys()
            .filter(|f| !def.frontends.contains_key(f))
        {
            self.delete_frontend(f, old_count, report)?;
        }
        inst.frontends = def.frontends.clone();
        self.installed.insert(def.name.clone(), inst.clone());
        // 4. Maglev table no longer used; removed backends and their
        //    affinity entries.
        if old.algorithm == Algorithm::Maglev && def.algorithm != Algorithm::Maglev {
            self.delete(maps::MAGLEV, report, |m| m.maglev.remove(&inst.id))?;
        }
        for (_, id) in &removed {
            self.delete_backend(*id, report)?;
        }
        if old.affinity_timeout.is_some() && !removed_ids.is_empty() {
            self.purge_affinity(inst.id, Some(&removed_ids));
        }
        Ok(true)
    }

    fn remove(&mut self, name: &str, report: &mut ApplyReport) -> Result<(), Error> {
        let inst = self.installed[name].clone();
        for f in inst.frontends.keys() {
            self.delete_frontend(f, inst.slots.len(), report)?;
        }
        if inst.algorithm == Algorithm::Maglev {
            self.delete(maps::MAGLEV, report, |m| m.maglev.remove(&inst.id))?;
        }
        for id in inst.backends.values() {
            self.delete_backend(*id, report)?;
        }
        if inst.affinity_timeout.is_some() {
            self.purge_affinity(inst.id, None);
        }
        self.delete(maps::SVC_NAMES, report, |m| m.names.remove(&inst.id))?;
        self.maps.zero_counters(Some(inst.id), None);
        self.service_ids.give(inst.id);
        self.installed.remove(name);
        Ok(())
    }

    fn new_backend(
        &mut self,
        addr: &BackendAddr,
        def: &ServiceDef,
        report: &mut ApplyReport,
    ) -> Result<u32, Error> {
        let bid = self
            .backend_ids
            .take()
            .ok_or_else(|| Error::MapFullOnWrite(maps::BACKENDS.into()))?;
        let value = backend_value(addr, def);
        if let Err(e) = self.write(maps::BACKENDS, report, |m| m.backends.insert(bid, value, 0)) {
            self.backend_ids.give(bid);
            return Err(e);
        }
        Ok(bid)
    }

    fn delete_backend(&mut self, id: u32, report: &mut ApplyReport) -> Result<(), Error> {
        self.delete(maps::BACKENDS, report, |m| m.backends.remove(&id))?;
        self.maps.zero_counters(None, Some(id));
        self.backend_ids.give(id);
        Ok(())
    }

    fn write_maglev(&mut self, inst: &Installed, report: &mut ApplyReport) -> Result<(), Error> {
        let order: Vec<(BackendAddr, u32)> = inst.backends.iter().map(|(a, i)| (*a, *i)).collect();
        let addrs: Vec<BackendAddr> = order.iter().map(|(a, _)| *a).collect();
        let indexes = maglev::table(&addrs, self.maglev_size, self.maglev_seed);
        let mut table = Box::new(MaglevTable {
            backend_ids: [0; MAGLEV_MAX],
        });
        for (slot, index) in indexes.iter().enumerate() {
            table.backend_ids[slot] = order[*index as usize].1;
        }
        let id = inst.id;
        self.write(maps::MAGLEV, report, |m| {
            m.maglev.insert(id, table.as_ref(), 0)
        })
    }

    fn write_slots(
        &mut self,
        f: &Frontend,
        inst: &Installed,
        range: std::ops::Range<usize>,
        report: &mut ApplyReport,
    ) -> Result<(), Error> {
        for s in range {
            self.write_slot(f, inst, s, report)?;
        }
        Ok(())
    }

    fn write_slot(
        &mut self,
        f: &Frontend,
        inst: &Installed,
        s: usize,
        report: &mut ApplyReport,
    ) -> Result<(), Error> {
        let entry = ServiceEntry {
            backend_id: inst.slots[s],
            id: inst.id,
            ..Default::default()
        };
        self.write(maps::SERVICES, report, |m| {
            m.services.insert(key_of(f, s as u16 + 1), entry, 0)
        })
    }

    /// Master first (the way in), then its slots.
    fn delete_frontend(
        &mut self,
        f: &Frontend,
        count: usize,
        report: &mut ApplyReport,
    ) -> Result<(), Error> {
        self.delete(maps::SERVICES, report, |m| m.services.remove(&key_of(f, 0)))?;
        for s in 1..=count {
            self.delete(maps::SERVICES, report, |m| {
                m.services.remove(&key_of(f, s as u16))
            })?;
        }
        Ok(())
    }

    fn delete_frontend_entries(
        &mut self,
        key: &ServiceKey,
        report: &mut ApplyReport,
    ) -> Result<(), Error> {
        let count = self.maps.services.get(key, 0).map(|e| e.count).unwrap_or(0);
        self.delete(maps::SERVICES, report, |m| m.services.remove(key))?;
        for slot in 1..=count {
            let k = ServiceKey { slot, ..*key };
            self.delete(maps::SERVICES, report, |m| m.services.remove(&k))?;
        }
        Ok(())
    }

    /// Deletes the affinity entries of service `id` (pointing to one of
    /// `backends`, or all). O(affinity entries): only on removals from a
    /// service with affinity.
    fn purge_affinity(&mut self, id: u32, backends: Option<&BTreeSet<u32>>) {
        let doomed: Vec<AffinityKey> = self
            .maps
            .affinity
            .iter()
            .filter_map(Result::ok)
            .filter(|(k, v)| {
                k.service_id == id && backends.is_none_or(|b| b.contains(&v.backend_id))
            })
            .map(|(k, _)| k)
            .collect();
        for k in doomed {
            let _ = self.maps.affinity.remove(&k);
        }
    }

    fn write(
        &mut self,
        map: &str,
        report: &mut ApplyReport,
        op: impl FnOnce(&mut Maps) -> Result<(), aya::maps::MapError>,
    ) -> Result<(), Error> {
        op(&mut self.maps).map_err(|e| Error::from_map_write(map, e))?;
        report.writes += 1;
        Ok(())
    }

    /// A delete of what is already gone is fine (a crash may have done it).
    fn delete(
        &mut self,
        map: &str,
        report: &mut ApplyReport,
        op: impl FnOnce(&mut Maps) -> Result<(), aya::maps::MapError>,
    ) -> Result<(), Error> {
        match op(&mut self.maps) {
            Ok(()) => {
                report.deletes += 1;
                Ok(())
            }
            Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(aya::maps::MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(2) => {
                Ok(())
            }
            Err(e) => Err(Error::from_map_write(map, e)),
        }
    }
}

/// The new slot layout when `removed` backends leave and `added` ones join:
/// a removed backend's slot takes a new backend, else the last slot's
/// backend; remaining new backends go at the end. Returns the slots and the
/// indexes that changed (to be written); slots past the new length are the
/// caller's to delete.
fn relayout(old: &[u32], removed: &BTreeSet<u32>, added: &[u32]) -> (Vec<u32>, BTreeSet<usize>) {
    let mut changed = BTreeSet::new();
    let mut slots = old.to_vec();
    let mut new_iter = added.iter().copied();
    let mut i = 0;
    while i < slots.len() {
        if removed.contains(&slots[i]) {
            if let Some(n) = new_iter.next() {
                slots[i] = n;
                changed.insert(i);
            } else {
                let last = slots.pop().expect("non-empty");
                if i < slots.len() {
                    slots[i] = last;
                    changed.insert(i);
                }
                continue; // slot i again: `last` may be a removed one too
            }
        }
        i += 1;
    }
    changed.retain(|i| *i < slots.len());
    for n in new_iter {
        changed.insert(slots.len());
        slots.push(n);
    }
    (slots, changed)
}

fn backend_value(addr: &BackendAddr, def: &ServiceDef) -> Backend {
    let mut flags = 0;
    if def.terminating {
        flags |= backend_flags::TERMINATING;
    }
    if def.local.contains(addr) {
        flags |= backend_flags::LOCAL;
    }
    Backend {
        addr_be: u32::from(addr.addr).to_be(),
        port_be: addr.port.to_be(),
        proto: def.proto.number(),
        flags,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(ids: &[u32]) -> BTreeSet<u32> {
        ids.iter().copied().collect()
    }

    #[test]
    fn one_endpoint_change_touches_one_slot() {
        let (slots, changed) = relayout(&[1, 2, 3, 4], &set(&[2]), &[9]);
        assert_eq!(slots, [1, 9, 3, 4]);
        assert_eq!(changed, BTreeSet::from([1]));
        // A removal moves the last backend into the hole.
        let (slots, changed) = relayout(&[1, 2, 3, 4], &set(&[2]), &[]);
        assert_eq!(slots, [1, 4, 3]);
        assert_eq!(changed, BTreeSet::from([1]));
        // An addition appends.
        let (slots, changed) = relayout(&[1, 2], &set(&[]), &[7]);
        assert_eq!(slots, [1, 2, 7]);
        assert_eq!(changed, BTreeSet::from([2]));
    }

    #[test]
    fn removals_at_the_end_and_in_runs() {
        let (slots, changed) = relayout(&[1, 2, 3, 4], &set(&[3, 4]), &[]);
        assert_eq!(slots, [1, 2]);
        assert!(changed.is_empty(), "only deletions past the end");
        let (slots, _) = relayout(&[1, 2, 3, 4, 5], &set(&[1, 5, 4]), &[]);
        assert_eq!(slots, [3, 2]);
        let (slots, _) = relayout(&[1, 2, 3], &set(&[1, 2, 3]), &[]);
        assert!(slots.is_empty());
        let (slots, changed) = relayout(&[1, 2, 3], &set(&[1, 2, 3]), &[4, 5, 6, 7]);
        assert_eq!(slots, [4, 5, 6, 7]);
        assert_eq!(changed.len(), 4);
    }

    #[test]
    fn ids_are_reused_oldest_freed_first() {
        let mut pool = IdPool::new(5, &BTreeSet::from([1, 3]));
        assert_eq!(pool.take(), Some(2), "gaps of an adopted state first");
        assert_eq!(pool.take(), Some(4));
        assert_eq!(pool.take(), Some(5));
        assert_eq!(pool.take(), None, "exhausted");
        pool.give(3);
        pool.give(1);
        assert_eq!(pool.take(), Some(3));
        assert_eq!(pool.take(), Some(1));
    }
}
