//! The map keys and values of skiff's service datapath, shared by the eBPF
//! programs (`ebpf/programs`) and the loader (`userspace/datapath`).
//!
//! Layout rules: every type is `#[repr(C)]`, has no implicit padding (padding
//! is spelled out and always zero, because the kernel hashes whole keys), and
//! keeps addresses and ports in network byte order exactly as the kernel
//! hands them to the programs (`be` in a field name says so).
//!
//! The service map follows the slot layout of Cilium's `lb4_services`: slot 0
//! of a frontend is its *master* entry (backend count, flags, id), slots
//! `1..=count` name the backends. A packet or socket first reads the master,
//! then one slot, then one backend: O(1) whatever the number of services.
#![no_std]
#![cfg_attr(feature = "user", allow(unsafe_code))]

/// Default sizes, like Cilium's (`--bpf-lb-map-max`, `--bpf-ct-global-*`).
pub const DEFAULT_SERVICE_ENTRIES: u32 = 65_536 * 4;
pub const DEFAULT_BACKEND_ENTRIES: u32 = 131_072;
pub const DEFAULT_CT_ENTRIES: u32 = 1 << 20;
pub const DEFAULT_AFFINITY_ENTRIES: u32 = 65_536;
pub const DEFAULT_REV_SOCK_ENTRIES: u32 = 262_144;
/// Services with Maglev selection (each holds one table).
pub const DEFAULT_MAGLEV_ENTRIES: u32 = 1024;
/// Node addresses NodePort frontends answer on, and interfaces with the
/// packet-level program.
pub const DEFAULT_NODE_IP_ENTRIES: u32 = 256;
pub const DEFAULT_IFACE_ENTRIES: u32 = 4096;

/// `SKIFF_IFACES` values: the role of an interface the tc program is on.
pub mod iface_flags {
    /// Faces other hosts: ClusterIP traffic arriving here is SNATed to a
    /// remote backend so its replies return through this node.
    pub const EXTERNAL: u32 = 1 << 0;
}
/// Service and backend ids are indexes into the per-CPU counter arrays, so
/// they stay below these bounds.
pub const MAX_SERVICE_ID: u32 = 65_536;
pub const MAX_BACKEND_ID: u32 = DEFAULT_BACKEND_ENTRIES;

/// The largest Maglev table, and the default size (a prime, as Maglev needs).
/// Smaller primes (251 … 8191) can be configured per loader.
pub const MAGLEV_MAX: usize = 16_381;

pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;

/// Frontend scopes: most frontends have one entry; a NodePort or ExternalIP
/// with `externalTrafficPolicy: Local` also gets a `SCOPE_LOCAL` entry that
/// lists only this node's backends.
pub const SCOPE_ALL: u8 = 0;
pub const SCOPE_LOCAL: u8 = 1;

/// Service flags (`ServiceEntry::flags` of the master slot).
pub mod flags {
    /// Pick backends with the service's Maglev table instead of at random.
    pub const MAGLEV: u16 = 1 << 0;
    /// ClientIP session affinity (`ServiceEntry::affinity_timeout` seconds).
    pub const AFFINITY: u16 = 1 << 1;
    /// The frontend is a ClusterIP.
    pub const CLUSTER_IP: u16 = 1 << 2;
    /// The frontend is a NodePort (address 0 = every node address).
    pub const NODE_PORT: u16 = 1 << 3;
    /// The frontend is an ExternalIP.
    pub const EXTERNAL_IP: u16 = 1 << 4;
    /// externalTrafficPolicy (or internalTrafficPolicy for a ClusterIP) Local.
    pub const LOCAL: u16 = 1 << 5;
}

/// Backend flags (`Backend::flags`).
pub mod backend_flags {
    /// Serving but terminating: picked only because the service has no
    /// ready backend left.
    pub const TERMINATING: u8 = 1 << 0;
    /// Runs on this node: replies come back through it, so packet-level
    /// load balancing need not SNAT.
    pub const LOCAL: u8 = 1 << 1;
}

/// Key of the `SKIFF_SERVICES` hash map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct ServiceKey {
    pub addr_be: u32,
    pub port_be: u16,
    /// 0 = master entry, 1..=count = backend slots.
    pub slot: u16,
    pub proto: u8,
    pub scope: u8,
    pub pad: [u8; 2],
}

/// Value of the `SKIFF_SERVICES` hash map. The master slot uses `count`,
/// `flags`, `id`, `affinity_timeout` and `maglev_size`; a backend slot uses
/// `backend_id`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ServiceEntry {
    pub backend_id: u32,
    pub count: u16,
    pub flags: u16,
    pub id: u32,
    pub affinity_timeout: u32,
    pub maglev_size: u32,
    pub pad: u32,
}

/// Value of the `SKIFF_BACKENDS` hash map (key: backend id, a `u32`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Backend {
    pub addr_be: u32,
    pub port_be: u16,
    pub proto: u8,
    pub flags: u8,
}

/// One Maglev lookup table: backend ids, `maglev_size` of them used.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct MaglevTable {
    pub backend_ids: [u32; MAGLEV_MAX],
}

/// Socket-level reverse translation (`SKIFF_REV_SOCK`, LRU): the socket
/// `cookie` talked to backend `addr:port`, which the application must see as
/// the service address in the value.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct RevSockKey {
    pub cookie: u64,
    pub addr_be: u32,
    pub port_be: u16,
    pub pad: u16,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct RevSockValue {
    pub addr_be: u32,
    pub port_be: u16,
    pub pad: u16,
    pub service_id: u32,
}

/// ClientIP session affinity (`SKIFF_AFFINITY`, LRU). `client` is the
/// client's network namespace cookie at socket level (where the source
/// address is not known yet), or its IPv4 address at packet level.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct AffinityKey {
    pub client: u64,
    pub service_id: u32,
    /// 0 = socket level (netns cookie), 1 = packet level (address).
    pub kind: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct AffinityValue {
    pub backend_id: u32,
    /// Seconds of CLOCK_MONOTONIC (`bpf_ktime_get_ns() / 1e9`).
    pub last_used: u32,
}

/// The name of a service id (`SKIFF_SVC_NAMES`), NUL-padded UTF-8
/// (`ns/svc:port/TCP`). Only userspace reads it: it is how a restarted
/// loader knows which service an id is, and what `skiff bpf` prints.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServiceName {
    pub bytes: [u8; 128],
}

impl Default for ServiceName {
    fn default() -> Self {
        ServiceName { bytes: [0; 128] }
    }
}

/// Packet-level connection tracking (`SKIFF_CT`, LRU), one entry per
/// direction of a translated flow. The key is the packet's tuple as it
/// arrives: client → frontend (`dir` = CT_FORWARD) and backend → client or
/// SNAT address (`dir` = CT_REPLY).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct CtKey {
    pub src_be: u32,
    pub dst_be: u32,
    pub sport_be: u16,
    pub dport_be: u16,
    pub proto: u8,
    pub dir: u8,
    pub pad: u16,
}

pub const CT_FORWARD: u8 = 0;
pub const CT_REPLY: u8 = 1;

/// What to rewrite a packet of the flow to. Forward: destination → `nat`
/// (the backend); source → `snat` when `flags & CT_SNAT`. Reply: source →
/// `nat` (the frontend); destination → `snat` (the client) when SNATed.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct CtValue {
    pub nat_addr_be: u32,
    pub snat_addr_be: u32,
    pub nat_port_be: u16,
    pub snat_port_be: u16,
    pub service_id: u32,
    pub backend_id: u32,
    /// Seconds of CLOCK_MONOTONIC, for idle garbage collection.
    pub last_seen: u32,
    pub flags: u32,
}

/// `CtValue::flags`.
pub const CT_SNAT: u32 = 1 << 0;
/// A FIN or RST was seen: the entry may go after a short grace.
pub const CT_CLOSING: u32 = 1 << 1;

/// Per-CPU counters of one service or backend (`SKIFF_SERVICE_STATS`,
/// `SKIFF_BACKEND_STATS`, indexed by id). Socket-level load balancing sees
/// connections, not packets: its packets and bytes come from the tc path.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Counters {
    pub packets: u64,
    pub bytes: u64,
    pub connections: u64,
    pub refused: u64,
    pub dropped: u64,
}

/// Datapath-wide counters (`SKIFF_GLOBAL_STATS`, per-CPU array), indexes:
pub mod global {
    /// A master slot pointed to a missing slot or backend (a reconciler bug or
    /// a race with a removal): the socket was left untranslated.
    pub const MISSING_BACKEND: u32 = 0;
    /// The reverse-translation map could not take an entry.
    pub const REV_SOCK_FULL: u32 = 1;
    /// The affinity map could not take an entry.
    pub const AFFINITY_FULL: u32 = 2;
    /// The conntrack map could not take an entry (the packet passed
    /// untranslated).
    pub const CT_FULL: u32 = 3;
    /// A packet to a frontend was malformed or too short to translate.
    pub const MALFORMED: u32 = 4;
    /// No route (FIB lookup failed) for a translated packet: dropped.
    pub const NO_ROUTE: u32 = 5;
    /// A reply could not be built (RST for a refused TCP connection).
    pub const REFUSE_FAILED: u32 = 6;
    /// Packets the XDP fast path translated and sent back out (XDP_TX).
    pub const XDP_TX: u32 = 7;
    pub const COUNT: u32 = 8;
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: plain old data, `#[repr(C)]`, every bit pattern valid, no
    // implicit padding.
    unsafe impl aya::Pod for ServiceKey {}
    unsafe impl aya::Pod for ServiceEntry {}
    unsafe impl aya::Pod for Backend {}
    unsafe impl aya::Pod for MaglevTable {}
    unsafe impl aya::Pod for RevSockKey {}
    unsafe impl aya::Pod for RevSockValue {}
    unsafe impl aya::Pod for AffinityKey {}
    unsafe impl aya::Pod for AffinityValue {}
    unsafe impl aya::Pod for Counters {}
    unsafe impl aya::Pod for ServiceName {}
    unsafe impl aya::Pod for CtKey {}
    unsafe impl aya::Pod for CtValue {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn layouts_have_no_hidden_padding() {
        assert_eq!(size_of::<ServiceKey>(), 12);
        assert_eq!(size_of::<ServiceEntry>(), 24);
        assert_eq!(size_of::<Backend>(), 8);
        assert_eq!(size_of::<RevSockKey>(), 16);
        assert_eq!(size_of::<RevSockValue>(), 12);
        assert_eq!(size_of::<AffinityKey>(), 16);
        assert_eq!(size_of::<AffinityValue>(), 8);
        assert_eq!(size_of::<Counters>(), 40);
        assert_eq!(size_of::<ServiceName>(), 128);
        assert_eq!(size_of::<CtKey>(), 16);
        assert_eq!(size_of::<CtValue>(), 28);
        assert_eq!(size_of::<MaglevTable>(), 4 * MAGLEV_MAX);
    }
}
