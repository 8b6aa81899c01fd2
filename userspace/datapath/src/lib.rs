//! skiff's service datapath, userspace side: load and attach the eBPF
//! programs of `ebpf/programs` ([`loader`]), compute what the maps must hold
//! from Services and EndpointSlices ([`desired`], pure), and write it
//! ([`reconcile`]), in an order no packet can observe half-done.
//!
//! This crate knows the API types and the kernel; it knows nothing of the
//! API server, the store or the network beyond the maps.

pub mod desired;
mod ethtool;
pub mod gc;
pub mod inspect;
pub mod loader;
pub mod maglev;
pub mod maps;
pub mod model;
mod pins;
pub mod reconcile;
pub mod snapshot;
pub mod sync;

use std::path::PathBuf;

pub use desired::{InputError, Options, desired, service_desired};
pub use loader::{AttachOptions, MapSizes, PodAttacher, attach, detach, forget_iface};
pub use maps::Maps;
pub use model::{Algorithm, BackendAddr, Desired, Frontend, FrontendKind, Proto, ServiceDef};
pub use pins::{BPFFS, default_cgroup, instance_dir, is_bpffs_mounted};
pub use reconcile::{ApplyReport, MaglevConfig, Reconciler};
pub use snapshot::Snapshot;

/// Seconds of CLOCK_MONOTONIC, the clock `bpf_ktime_get_ns` reads (affinity
/// timestamps are in it).
pub fn monotonic_seconds() -> u32 {
    rustix::time::clock_gettime(rustix::time::ClockId::Monotonic).tv_sec as u32
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid instance name {0:?}: use 1-63 letters, digits, '-', '_' or '.'")]
    BadInstance(String),
    #[error(
        "instance {0:?} is not attached (no pinned maps): run `skiff bpf attach --instance {0}`"
    )]
    NotAttached(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("network interface {0:?} does not exist")]
    NoSuchInterface(String),
    #[error("cgroup {0} does not exist")]
    NoSuchCgroup(PathBuf),
    #[error("{0} is not a cgroup v2 directory (the socket hooks need the unified hierarchy)")]
    NotCgroup2(PathBuf),
    #[error("kernel: {0}")]
    Kernel(String),
    #[error("map size for {0} must be positive")]
    BadSize(String),
    #[error("Maglev table size {0} is not one of 251, 509, 1021, 2039, 4093, 8191, 16381")]
    BadMaglevSize(u32),
    #[error(
        "loading the eBPF object failed (does the kernel have BTF, cgroup sock_addr hooks and LRU maps?): {0}"
    )]
    Load(#[source] Box<aya::EbpfError>),
    #[error("program {program}: {source}")]
    Program {
        program: String,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    #[error("map {map}: {what}: {source}")]
    Map {
        map: String,
        what: String,
        #[source]
        source: Box<aya::maps::MapError>,
    },
    #[error("map {map} is full: {need} entries needed, it holds {max} (raise its size at attach)")]
    MapFull { map: String, need: u64, max: u64 },
    /// A write found the map at its size (the kernel's E2BIG, or no id
    /// left to hand out).
    #[error("map {0} is full: a write was refused (raise its size at attach)")]
    MapFullOnWrite(String),
    #[error("service {0} has {1} backends; at most 65535 fit a frontend")]
    TooManyBackends(String, usize),
    #[error("{0}")]
    Input(String),
}

impl Error {
    pub(crate) fn io(what: String, source: std::io::Error) -> Error {
        Error::Io { what, source }
    }

    pub(crate) fn from_map_write(map: &str, e: aya::maps::MapError) -> Error {
        if let aya::maps::MapError::SyscallError(s) = &e {
            // E2BIG: a hash map at max_entries.
            if s.io_error.raw_os_error() == Some(7) {
                return Error::MapFullOnWrite(map.to_string());
            }
        }
        Error::Map {
            map: map.to_string(),
            what: "write".into(),
            source: Box::new(e),
        }
    }
}
