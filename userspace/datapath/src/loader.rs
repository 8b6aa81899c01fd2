//! Load, pin, attach, adopt and detach an instance of the datapath.
//!
//! State lives in bpffs, not in a process: the maps are pinned by name in
//! the instance directory (aya reuses a pin that exists), and each attached
//! program is held by a pinned bpf_link under `links/`. A process that
//! attached can die (kill -9) without a packet noticing; `attach` again
//! adopts what is pinned and only attaches what is missing; `detach` unpins
//! the links (which detaches the programs) and the maps.

use std::fs;
use std::path::{Path, PathBuf};

use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::{CgroupAttachMode, CgroupSockAddr};
use serde::Serialize;
use skiff_ebpf_common::*;

use crate::maps;
use crate::{Error, pins};

/// The eBPF object built by build.rs.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/skiff-ebpf"));

/// The socket-level programs: (program, pin name).
pub const SOCKET_HOOKS: [(&str, &str); 4] = [
    ("skiff_connect4", "connect4"),
    ("skiff_sendmsg4", "sendmsg4"),
    ("skiff_recvmsg4", "recvmsg4"),
    ("skiff_getpeername4", "getpeername4"),
];

/// Map sizes; `None` keeps the program's default (Cilium-like).
#[derive(Clone, Debug, Default)]
pub struct MapSizes {
    pub services: Option<u32>,
    pub backends: Option<u32>,
    pub conntrack: Option<u32>,
    pub affinity: Option<u32>,
    pub maglev: Option<u32>,
}

#[derive(Clone, Debug)]
pub struct AttachOptions {
    pub instance: String,
    /// cgroup v2 directory the socket hooks attach to; default: the root of
    /// the unified hierarchy.
    pub cgroup: Option<PathBuf>,
    pub sizes: MapSizes,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct AttachReport {
    pub instance: String,
    pub pin_dir: PathBuf,
    pub cgroup: PathBuf,
    /// Hooks that were already attached (pinned links) and were adopted.
    pub adopted: Vec<String>,
    /// Hooks attached now.
    pub attached: Vec<String>,
}

pub fn attach(options: &AttachOptions) -> Result<AttachReport, Error> {
    let dir = pins::instance_dir(&options.instance)?;
    pins::ensure_bpffs()?;
    let cgroup = match &options.cgroup {
        Some(c) => c.clone(),
        None => pins::default_cgroup()?,
    };
    if !cgroup.is_dir() {
        return Err(Error::NoSuchCgroup(cgroup));
    }
    pins::check_cgroup2(&cgroup)?;
    let links = pins::links_dir(&dir);
    fs::create_dir_all(&links).map_err(|e| Error::io(format!("create {}", links.display()), e))?;

    let mut report = AttachReport {
        instance: options.instance.clone(),
        pin_dir: dir.clone(),
        cgroup: cgroup.clone(),
        ..Default::default()
    };
    let mut missing = Vec::new();
    for (program, pin) in SOCKET_HOOKS {
        let path = links.join(pin);
        match path.exists().then(|| PinnedLink::from_pin(&path)) {
            Some(Ok(_)) => report.adopted.push(pin.to_string()),
            Some(Err(e)) => {
                tracing::warn!(path = %path.display(), error = %e, "stale link pin, replacing it");
                fs::remove_file(&path)
                    .map_err(|e| Error::io(format!("remove {}", path.display()), e))?;
                missing.push((program, pin));
            }
            None => missing.push((program, pin)),
        }
    }
    // The maps are opened (or created and pinned) even when every hook is
    // adopted: a crash between pinning links and maps must heal too.
    let mut loader = aya::EbpfLoader::new();
    loader.default_map_pin_directory(&dir);
    let sizes = &options.sizes;
    for (map, size) in [
        (maps::SERVICES, sizes.services),
        (maps::BACKENDS, sizes.backends),
        (maps::BE_STATS, sizes.backends),
        (maps::REV_SOCK, sizes.conntrack),
        (maps::AFFINITY, sizes.affinity),
        (maps::MAGLEV, sizes.maglev),
    ] {
        if let Some(n) = size {
            if n == 0 {
                return Err(Error::BadSize(map.to_string()));
            }
            loader.map_max_entries(map, n);
        }
    }
    let mut ebpf = loader.load(OBJECT).map_err(|e| Error::Load(Box::new(e)))?;
    if missing.is_empty() {
        return Ok(report);
    }
    let cgroup_file =
        fs::File::open(&cgroup).map_err(|e| Error::io(format!("open {}", cgroup.display()), e))?;
    for (program, pin) in missing {
        let prog: &mut CgroupSockAddr = ebpf
            .program_mut(program)
            .ok_or_else(|| Error::Kernel(format!("program {program} missing from the object")))?
            .try_into()
            .map_err(|e| Error::Program {
                program: program.into(),
                source: Box::new(e),
            })?;
        prog.load().map_err(|e| Error::Program {
            program: program.into(),
            source: Box::new(e),
        })?;
        let id = prog
            // A cgroup bpf_link takes no flags: links always stack with
            // other programs on the cgroup (multi-attach semantics).
            .attach(&cgroup_file, CgroupAttachMode::Single)
            .map_err(|e| Error::Program {
                program: program.into(),
                source: Box::new(e),
            })?;
        let link = prog.take_link(id).map_err(|e| Error::Program {
            program: program.into(),
            source: Box::new(e),
        })?;
        let link: FdLink = link
            .try_into()
            .map_err(|e: aya::programs::links::LinkError| {
                Error::Kernel(format!("{program}: {e}"))
            })?;
        let path = links.join(pin);
        link.pin(&path).map_err(|e| Error::Io {
            what: format!("pin {}", path.display()),
            source: std::io::Error::other(e),
        })?;
        report.attached.push(pin.to_string());
    }
    Ok(report)
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct DetachReport {
    pub instance: String,
    pub links: Vec<String>,
    pub maps: Vec<String>,
}

/// Detaches every program of `instance` and removes every pin. Detaching
/// what is not attached is not an error.
pub fn detach(instance: &str) -> Result<DetachReport, Error> {
    let dir = pins::instance_dir(instance)?;
    let mut report = DetachReport {
        instance: instance.to_string(),
        ..Default::default()
    };
    if !pins::is_bpffs_mounted() || !dir.exists() {
        return Ok(report);
    }
    let links = pins::links_dir(&dir);
    for entry in read_dir(&links)? {
        let name = entry.file_name().to_string_lossy().into_owned();
        match PinnedLink::from_pin(entry.path()) {
            // Unpinning drops the last reference: the kernel detaches.
            Ok(link) => drop(
                link.unpin()
                    .map_err(|e| Error::io(format!("unpin {name}"), e))?,
            ),
            Err(_) => {
                fs::remove_file(entry.path()).map_err(|e| Error::io(format!("remove {name}"), e))?
            }
        }
        report.links.push(name);
    }
    remove_dir(&links)?;
    for entry in read_dir(&dir)? {
        let name = entry.file_name().to_string_lossy().into_owned();
        fs::remove_file(entry.path()).map_err(|e| Error::io(format!("remove {name}"), e))?;
        report.maps.push(name);
    }
    remove_dir(&dir)?;
    if let Some(parent) = dir.parent() {
        // The shared skiff/ directory goes with its last instance.
        let _ = fs::remove_dir(parent);
    }
    Ok(report)
}

/// What is pinned for an instance.
pub fn pinned(instance: &str) -> Result<(Vec<String>, Vec<String>), Error> {
    let dir = pins::instance_dir(instance)?;
    let names = |d: &Path| -> Result<Vec<String>, Error> {
        let mut v: Vec<String> = read_dir(d)?
            .into_iter()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        Ok(v)
    };
    Ok((names(&pins::links_dir(&dir))?, names(&dir)?))
}

fn read_dir(dir: &Path) -> Result<Vec<fs::DirEntry>, Error> {
    match fs::read_dir(dir) {
        Ok(rd) => rd
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Error::io(format!("read {}", dir.display()), e)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(Error::io(format!("read {}", dir.display()), e)),
    }
}

fn remove_dir(dir: &Path) -> Result<(), Error> {
    match fs::remove_dir(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(Error::io(format!("remove {}", dir.display()), e))
        }
        _ => Ok(()),
    }
}

/// The default maximum of the services map, for messages.
pub const fn default_sizes() -> [(&'static str, u32); 4] {
    [
        (maps::SERVICES, DEFAULT_SERVICE_ENTRIES),
        (maps::BACKENDS, DEFAULT_BACKEND_ENTRIES),
        (maps::REV_SOCK, DEFAULT_REV_SOCK_ENTRIES),
        (maps::AFFINITY, DEFAULT_AFFINITY_ENTRIES),
    ]
}
