//! Backend selection: session affinity, then Maglev or a random slot.

use aya_ebpf::helpers::{bpf_get_prandom_u32, bpf_ktime_get_ns};
use skiff_ebpf_common::*;

use crate::maps::*;

/// How a flow is identified for the hash-based choices.
pub struct Flow {
    /// A hash of the flow: stable for one socket (or 5-tuple).
    pub hash: u32,
    /// Pick a random slot instead of `hash`'s (TCP connect: every
    /// connection is a new flow).
    pub random: bool,
    /// Who the client is for ClientIP affinity, and at which level.
    pub affinity_client: u64,
    pub affinity_kind: u32,
}

/// Mixes a 64-bit value into 32 well-spread bits (murmur3's finalizer).
#[inline(always)]
pub fn mix64(mut x: u64) -> u32 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^= x >> 33;
    x as u32
}

/// Picks a backend id for the frontend `key` whose master entry is `svc`
/// (`svc.count > 0`). `None` when a slot or table is missing, which only a
/// reconciler bug or a removal racing this lookup can cause.
#[inline(always)]
pub fn backend_for(key: &ServiceKey, svc: &ServiceEntry, flow: &Flow) -> Option<u32> {
    let now = (unsafe { bpf_ktime_get_ns() } / 1_000_000_000) as u32;
    let affinity = svc.flags & flags::AFFINITY != 0;
    let akey = AffinityKey {
        client: flow.affinity_client,
        service_id: svc.id,
        kind: flow.affinity_kind,
    };
    if affinity {
        if let Some(a) = SKIFF_AFFINITY.get_ptr_mut(&akey) {
            // SAFETY: the LRU entry stays valid for this program run.
            let a = unsafe { &mut *a };
            if now.wrapping_sub(a.last_used) <= svc.affinity_timeout
                && SKIFF_BACKENDS.get_ptr(a.backend_id).is_some()
            {
                a.last_used = now;
                return Some(a.backend_id);
            }
        }
    }
    let id = if svc.flags & flags::MAGLEV != 0 {
        let table = SKIFF_MAGLEV.get_ptr(svc.id)?;
        // checked_rem: a division by zero would be a panic path, which the
        // verifier refuses.
        let index = flow.hash.checked_rem(svc.maglev_size)? as usize;
        if index >= MAGLEV_MAX {
            return None;
        }
        // SAFETY: `index` is checked against the table's length above.
        unsafe { (*table).backend_ids[index] }
    } else {
        let pick = if flow.random {
            unsafe { bpf_get_prandom_u32() }
        } else {
            flow.hash
        };
        let slot_key = ServiceKey {
            slot: pick.checked_rem(svc.count as u32)? as u16 + 1,
            ..*key
        };
        // SAFETY: read-only use of a value the reconciler writes whole.
        unsafe { SKIFF_SERVICES.get(&slot_key)?.backend_id }
    };
    if affinity {
        let value = AffinityValue {
            backend_id: id,
            last_used: now,
        };
        if SKIFF_AFFINITY.insert(&akey, &value, 0).is_err() {
            count_global(global::AFFINITY_FULL);
        }
    }
    Some(id)
}
