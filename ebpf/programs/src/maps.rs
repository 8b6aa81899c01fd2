//! The datapath's maps. Names are at most 15 bytes (the kernel's limit) and
//! are the pin file names; sizes are defaults the loader may override.

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    macros::map,
    maps::{HashMap, LruHashMap, PerCpuArray},
};
use skiff_ebpf_common::*;

#[map]
pub static SKIFF_SERVICES: HashMap<ServiceKey, ServiceEntry> =
    HashMap::pinned(DEFAULT_SERVICE_ENTRIES, 0);

#[map]
pub static SKIFF_BACKENDS: HashMap<u32, Backend> = HashMap::pinned(DEFAULT_BACKEND_ENTRIES, 0);

/// Service id → Maglev table; entries allocated on insert only.
#[map]
pub static SKIFF_MAGLEV: HashMap<u32, MaglevTable> =
    HashMap::pinned(DEFAULT_MAGLEV_ENTRIES, BPF_F_NO_PREALLOC);

#[map]
pub static SKIFF_REV_SOCK: LruHashMap<RevSockKey, RevSockValue> =
    LruHashMap::pinned(DEFAULT_REV_SOCK_ENTRIES, 0);

#[map]
pub static SKIFF_CT: LruHashMap<CtKey, CtValue> = LruHashMap::pinned(DEFAULT_CT_ENTRIES, 0);

/// This node's addresses (network order) → 1: where NodePorts answer.
#[map]
pub static SKIFF_NODE_IPS: HashMap<u32, u32> = HashMap::pinned(DEFAULT_NODE_IP_ENTRIES, 0);

/// ifindex → `iface_flags` for the interfaces the tc program is on.
#[map]
pub static SKIFF_IFACES: HashMap<u32, u32> = HashMap::pinned(DEFAULT_IFACE_ENTRIES, 0);

#[map]
pub static SKIFF_AFFINITY: LruHashMap<AffinityKey, AffinityValue> =
    LruHashMap::pinned(DEFAULT_AFFINITY_ENTRIES, 0);

/// Service id → name; written and read by userspace only.
#[map]
pub static SKIFF_SVC_NAMES: HashMap<u32, ServiceName> = HashMap::pinned(MAX_SERVICE_ID, 0);

#[map]
pub static SKIFF_SVC_STATS: PerCpuArray<Counters> = PerCpuArray::pinned(MAX_SERVICE_ID, 0);

#[map]
pub static SKIFF_BE_STATS: PerCpuArray<Counters> = PerCpuArray::pinned(MAX_BACKEND_ID, 0);

#[map]
pub static SKIFF_GLOBAL: PerCpuArray<u64> = PerCpuArray::pinned(global::COUNT, 0);

#[inline(always)]
pub fn count_global(index: u32) {
    if let Some(c) = SKIFF_GLOBAL.get_ptr_mut(index) {
        // SAFETY: a per-CPU slot; nothing else runs on this CPU meanwhile.
        unsafe { *c += 1 };
    }
}

#[inline(always)]
pub fn service_stats(id: u32) -> Option<&'static mut Counters> {
    // SAFETY: as above.
    SKIFF_SVC_STATS.get_ptr_mut(id).map(|p| unsafe { &mut *p })
}

#[inline(always)]
pub fn backend_stats(id: u32) -> Option<&'static mut Counters> {
    // SAFETY: as above.
    SKIFF_BE_STATS.get_ptr_mut(id).map(|p| unsafe { &mut *p })
}
