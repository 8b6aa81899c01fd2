//! What the packet-level paths (tc and XDP) share: the parsed packet, the
//! frontend lookup, the flow's hash, the SNAT decision and the conntrack
//! entries of a new flow.

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{bpf_get_prandom_u32, bpf_ktime_get_ns},
};
use skiff_ebpf_common::*;

use crate::{maps::*, select};

pub const TCP_FIN: u8 = 0x01;
pub const TCP_RST: u8 = 0x04;

pub struct Packet {
    pub proto: u8,
    /// Offset of the L4 header from the start of the frame.
    pub l4: usize,
    pub saddr: u32,
    pub daddr: u32,
    pub sport: u16,
    pub dport: u16,
    pub len: u32,
    pub tcp_flags: u8,
}

impl Packet {
    /// The conntrack key of this packet's tuple, in direction `dir`.
    #[inline(always)]
    pub fn ct_key(&self, dir: u8) -> CtKey {
        CtKey {
            src_be: self.saddr,
            dst_be: self.daddr,
            sport_be: self.sport,
            dport_be: self.dport,
            proto: self.proto,
            dir,
            pad: 0,
        }
    }
}

#[inline(always)]
pub fn now() -> u32 {
    (unsafe { bpf_ktime_get_ns() } / 1_000_000_000) as u32
}

#[inline(always)]
pub fn touch(ct: &mut CtValue, p: &Packet) {
    let t = now();
    if ct.last_seen != t {
        ct.last_seen = t;
    }
    if p.tcp_flags & (TCP_FIN | TCP_RST) != 0 && ct.flags & CT_CLOSING == 0 {
        ct.flags |= CT_CLOSING;
    }
}

#[inline(always)]
pub fn count(service_id: u32, backend_id: u32, p: &Packet, new: bool) {
    if let Some(s) = service_stats(service_id) {
        s.packets += 1;
        s.bytes += p.len as u64;
        if new {
            s.connections += 1;
        }
    }
    if let Some(b) = backend_stats(backend_id) {
        b.packets += 1;
        b.bytes += p.len as u64;
        if new {
            b.connections += 1;
        }
    }
}

/// The frontend a packet or socket is addressed to: its exact address,
/// else a NodePort when the address is one of this node's.
#[inline(always)]
pub fn frontend(daddr: u32, dport: u16, proto: u8) -> Option<(ServiceKey, ServiceEntry)> {
    let mut key = ServiceKey {
        addr_be: daddr,
        port_be: dport,
        slot: 0,
        proto,
        scope: SCOPE_ALL,
        pad: [0; 2],
    };
    for node_port in [false, true] {
        if node_port {
            if unsafe { SKIFF_NODE_IPS.get(daddr) }.is_none() {
                return None;
            }
            key.addr_be = 0;
        }
        for scope in [SCOPE_ALL, SCOPE_LOCAL] {
            key.scope = scope;
            if let Some(svc) = unsafe { SKIFF_SERVICES.get(&key) } {
                return Some((key, *svc));
            }
        }
    }
    None
}

/// A new flow's identity for backend selection: random per connection, or
/// the 5-tuple's hash for Maglev; affinity by client address.
#[inline(always)]
pub fn flow(p: &Packet, svc: &ServiceEntry) -> select::Flow {
    select::Flow {
        hash: select::mix64(
            ((p.saddr as u64) << 32 | p.daddr as u64)
                ^ ((p.sport as u64) << 16 | p.dport as u64) << 7
                ^ p.proto as u64,
        ),
        random: svc.flags & flags::MAGLEV == 0,
        affinity_client: p.saddr as u64,
        affinity_kind: 1,
    }
}

/// SNAT when the backend is on another host and the reply must come back
/// through this node: policy Cluster, and a NodePort/ExternalIP or any
/// frontend reached through an external interface.
#[inline(always)]
pub fn needs_snat(svc: &ServiceEntry, backend: &Backend, ifindex: u32) -> bool {
    let external_iface =
        unsafe { SKIFF_IFACES.get(ifindex) }.is_some_and(|f| f & iface_flags::EXTERNAL != 0);
    backend.flags & backend_flags::LOCAL == 0
        && svc.flags & flags::LOCAL == 0
        && (svc.flags & (flags::NODE_PORT | flags::EXTERNAL_IP) != 0 || external_iface)
}

/// Writes the two conntrack entries of a new flow and returns the forward
/// one. With SNAT the client's port is kept when it is free towards the
/// backend, else a few random ones are tried. `None`: no room (counted).
#[inline(always)]
pub fn open_flow(
    p: &Packet,
    fwd_key: &CtKey,
    service_id: u32,
    backend_id: u32,
    backend: &Backend,
    snat_addr: Option<u32>,
) -> Option<CtValue> {
    let mut value = CtValue {
        nat_addr_be: backend.addr_be,
        snat_addr_be: 0,
        nat_port_be: backend.port_be,
        snat_port_be: 0,
        service_id,
        backend_id,
        last_seen: now(),
        flags: 0,
    };
    let mut reply_key = CtKey {
        src_be: backend.addr_be,
        dst_be: p.saddr,
        sport_be: backend.port_be,
        dport_be: p.sport,
        proto: p.proto,
        dir: CT_REPLY,
        pad: 0,
    };
    let reply_value = CtValue {
        nat_addr_be: p.daddr,
        snat_addr_be: p.saddr,
        nat_port_be: p.dport,
        snat_port_be: p.sport,
        service_id,
        backend_id,
        last_seen: value.last_seen,
        flags: if snat_addr.is_some() { CT_SNAT } else { 0 },
    };
    if let Some(snat_addr) = snat_addr {
        value.flags = CT_SNAT;
        value.snat_addr_be = snat_addr;
        reply_key.dst_be = snat_addr;
        let mut port = p.sport;
        let mut placed = false;
        for attempt in 0..4u32 {
            if attempt > 0 {
                let r = unsafe { bpf_get_prandom_u32() } % 28_232 + 32_768;
                port = (r as u16).to_be();
            }
            reply_key.dport_be = port;
            if SKIFF_CT
                .insert(&reply_key, &reply_value, BPF_NOEXIST as u64)
                .is_ok()
            {
                placed = true;
                break;
            }
        }
        if !placed {
            count_global(global::CT_FULL);
            return None;
        }
        value.snat_port_be = port;
    } else if SKIFF_CT.insert(&reply_key, &reply_value, 0).is_err() {
        count_global(global::CT_FULL);
        return None;
    }
    if SKIFF_CT.insert(fwd_key, &value, 0).is_err() {
        count_global(global::CT_FULL);
        let _ = SKIFF_CT.remove(&reply_key);
        return None;
    }
    count(service_id, backend_id, p, true);
    Some(value)
}
