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

use std::net::Ipv4Addr;

use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::{
    CgroupAttachMode, CgroupSockAddr, SchedClassifier, TcAttachType, Xdp, XdpMode,
};
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

/// The packet-level program.
pub const TC_PROGRAM: &str = "skiff_tc_ingress";
/// The XDP fast path of external interfaces.
pub const XDP_PROGRAM: &str = "skiff_xdp";

#[derive(Clone, Debug, Default)]
pub struct AttachOptions {
    pub instance: String,
    /// cgroup v2 directory the socket hooks attach to; default: the root of
    /// the unified hierarchy.
    pub cgroup: Option<PathBuf>,
    /// Interfaces facing other hosts: the packet-level program goes on
    /// their ingress (tcx), and their IPv4 addresses serve NodePorts.
    pub ifaces: Vec<String>,
    /// Interfaces towards local pods (veth host sides): the packet-level
    /// program too, without the external role.
    pub pod_ifaces: Vec<String>,
    /// More addresses NodePorts answer on.
    pub node_ips: Vec<Ipv4Addr>,
    /// Do not try the XDP fast path on the external interfaces.
    pub no_xdp: bool,
    /// Network namespace (a name under /var/run/netns, or a path) the
    /// interfaces are in; default: this process's.
    pub netns: Option<String>,
    pub sizes: MapSizes,
}

#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AttachReport {
    pub instance: String,
    pub pin_dir: PathBuf,
    pub cgroup: PathBuf,
    /// Hooks that were already attached (pinned links) and were adopted.
    pub adopted: Vec<String>,
    /// Hooks attached now.
    pub attached: Vec<String>,
    /// Addresses NodePorts answer on.
    pub node_ips: Vec<Ipv4Addr>,
    /// External interfaces with the XDP program, and its mode: native, or
    /// generic for veths (whose native XDP_TX needs the peer's NAPI).
    pub xdp: Vec<String>,
    /// Those whose driver did not, with the reason: tc serves them alone.
    pub xdp_unsupported: Vec<String>,
}

/// Loads, pins and attaches; adopts what is pinned already. With
/// `options.netns`, the interface work runs on a thread inside that
/// namespace (bpffs stays this process's: pins are not affected).
pub fn attach(options: &AttachOptions) -> Result<AttachReport, Error> {
    let Some(netns) = &options.netns else {
        return attach_here(options);
    };
    let path = if netns.contains('/') {
        PathBuf::from(netns)
    } else {
        Path::new("/var/run/netns").join(netns)
    };
    let file = fs::File::open(&path)
        .map_err(|e| Error::io(format!("open network namespace {}", path.display()), e))?;
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                rustix::thread::move_into_link_name_space(
                    std::os::fd::AsFd::as_fd(&file),
                    Some(rustix::thread::LinkNameSpaceType::Network),
                )
                .map_err(|e| {
                    Error::io(
                        format!("enter network namespace {}", path.display()),
                        e.into(),
                    )
                })?;
                attach_here(options)
            })
            .join()
            .unwrap_or_else(|_| Err(Error::Kernel("the attach thread panicked".into())))
    })
}

fn interface_addresses(iface: &str) -> Result<Vec<Ipv4Addr>, Error> {
    let addrs = nix::ifaddrs::getifaddrs().map_err(|e| Error::io("getifaddrs".into(), e.into()))?;
    Ok(addrs
        .filter(|a| a.interface_name == iface)
        .filter_map(|a| a.address.and_then(|s| s.as_sockaddr_in().map(|s| s.ip())))
        .collect())
}

fn attach_here(options: &AttachOptions) -> Result<AttachReport, Error> {
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
        if adopt(&links.join(pin))? {
            report.adopted.push(pin.to_string());
        } else {
            missing.push((program, pin));
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
        (maps::CT, sizes.conntrack),
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
    // Interfaces are checked before anything is attached.
    let mut ifaces = Vec::new();
    for (name, external) in options
        .ifaces
        .iter()
        .map(|i| (i, true))
        .chain(options.pod_ifaces.iter().map(|i| (i, false)))
    {
        ifaces.push((name.clone(), if_index(name)?, external));
    }
    let mut ebpf = loader.load(OBJECT).map_err(|e| Error::Load(Box::new(e)))?;
    let mut node_ips = options.node_ips.clone();
    for (name, _, external) in &ifaces {
        if *external {
            node_ips.extend(interface_addresses(name)?);
        }
    }
    node_ips.sort();
    node_ips.dedup();
    {
        let mut ips: aya::maps::HashMap<_, u32, u32> = aya::maps::HashMap::try_from(
            ebpf.map_mut(maps::NODE_IPS)
                .ok_or_else(|| Error::Kernel("map SKIFF_NODE_IPS missing".into()))?,
        )
        .map_err(|e| Error::Map {
            map: maps::NODE_IPS.into(),
            what: "open".into(),
            source: Box::new(e),
        })?;
        for ip in &node_ips {
            ips.insert(u32::from(*ip).to_be(), 1, 0)
                .map_err(|e| Error::from_map_write(maps::NODE_IPS, e))?;
        }
    }
    for (_, index, external) in &ifaces {
        let flags = if *external { iface_flags::EXTERNAL } else { 0 };
        set_role(&mut ebpf, *index, flags)?;
    }
    report.node_ips = node_ips;
    for (name, _, _) in &ifaces {
        enable_forwarding(name)?;
    }
    let mut tc_missing = Vec::new();
    for (name, _, _) in &ifaces {
        let pin = format!("tc-{name}");
        if adopt(&links.join(&pin))? {
            report.adopted.push(pin);
        } else {
            tc_missing.push((name.clone(), pin));
        }
    }
    if !tc_missing.is_empty() {
        let prog = tc_program(&mut ebpf)?;
        prog.load().map_err(|e| Error::Program {
            program: TC_PROGRAM.into(),
            source: Box::new(e),
        })?;
        for (iface, pin) in tc_missing {
            attach_tc(prog, &iface, &links.join(&pin))?;
            report.attached.push(pin);
        }
    }
    // XDP where the driver supports it (native mode); tc covers the rest.
    let mut xdp_missing = Vec::new();
    if !options.no_xdp {
        for (name, _, external) in &ifaces {
            if !*external {
                continue;
            }
            let pin = format!("xdp-{name}");
            if adopt(&links.join(&pin))? {
                report.adopted.push(pin);
                report.xdp.push(format!("{name} (adopted)"));
            } else {
                xdp_missing.push((name.clone(), pin));
            }
        }
    }
    if !xdp_missing.is_empty() {
        let prog: &mut Xdp = ebpf
            .program_mut(XDP_PROGRAM)
            .ok_or_else(|| Error::Kernel(format!("program {XDP_PROGRAM} missing from the object")))?
            .try_into()
            .map_err(|e| Error::Program {
                program: XDP_PROGRAM.into(),
                source: Box::new(e),
            })?;
        prog.load().map_err(|e| Error::Program {
            program: XDP_PROGRAM.into(),
            source: Box::new(e),
        })?;
        for (iface, pin) in xdp_missing {
            let mode = match crate::ethtool::driver(&iface) {
                Ok(d) if d == "veth" => XdpMode::Skb,
                _ => XdpMode::Driver,
            };
            let id = match prog.attach(&iface, mode) {
                Ok(id) => id,
                Err(e) => {
                    tracing::info!(%iface, error = %e, "no native XDP on this interface: tc alone serves it");
                    report.xdp_unsupported.push(format!("{iface}: {e}"));
                    continue;
                }
            };
            let link = prog.take_link(id).map_err(|e| Error::Program {
                program: XDP_PROGRAM.into(),
                source: Box::new(e),
            })?;
            pin_link(
                link,
                &format!("{XDP_PROGRAM} on {iface}"),
                &links.join(&pin),
            )?;
            report.attached.push(pin);
            let mode = if mode == XdpMode::Skb {
                "generic"
            } else {
                "native"
            };
            report.xdp.push(format!("{iface} ({mode})"));
        }
    }
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
        pin_link(link, program, &links.join(pin))?;
        report.attached.push(pin.to_string());
    }
    Ok(report)
}

/// Puts the packet-level program on pod veths as they come, with the
/// program loaded (and verified) once: a pod's attach is then one tcx link
/// and its pin. For an instance `attach` has set up.
pub struct PodAttacher {
    ebpf: aya::Ebpf,
    links: PathBuf,
}

impl PodAttacher {
    pub fn new(instance: &str) -> Result<PodAttacher, Error> {
        let dir = pins::instance_dir(instance)?;
        let mut loader = aya::EbpfLoader::new();
        loader.default_map_pin_directory(&dir);
        let mut ebpf = loader.load(OBJECT).map_err(|e| Error::Load(Box::new(e)))?;
        tc_program(&mut ebpf)?.load().map_err(|e| Error::Program {
            program: TC_PROGRAM.into(),
            source: Box::new(e),
        })?;
        Ok(PodAttacher {
            ebpf,
            links: pins::links_dir(&dir),
        })
    }

    /// Attaches to `iface` (a pod veth's host side); `false` when a live
    /// link was there already.
    pub fn attach(&mut self, iface: &str) -> Result<bool, Error> {
        let pin = self.links.join(format!("tc-{iface}"));
        if adopt(&pin)? {
            return Ok(false);
        }
        set_role(&mut self.ebpf, if_index(iface)?, 0)?;
        enable_forwarding(iface)?;
        attach_tc(tc_program(&mut self.ebpf)?, iface, &pin)?;
        Ok(true)
    }
}

fn if_index(name: &str) -> Result<u32, Error> {
    rustix::net::netdevice::name_to_index(
        &rustix::net::socket(
            rustix::net::AddressFamily::INET,
            rustix::net::SocketType::DGRAM,
            None,
        )
        .map_err(|e| Error::io("socket".into(), e.into()))?,
        name,
    )
    .map_err(|_| Error::NoSuchInterface(name.to_string()))
}

/// Records an interface's role (external or pod) for the packet path.
fn set_role(ebpf: &mut aya::Ebpf, index: u32, flags: u32) -> Result<(), Error> {
    let mut roles: aya::maps::HashMap<_, u32, u32> = aya::maps::HashMap::try_from(
        ebpf.map_mut(maps::IFACES)
            .ok_or_else(|| Error::Kernel("map SKIFF_IFACES missing".into()))?,
    )
    .map_err(|e| Error::Map {
        map: maps::IFACES.into(),
        what: "open".into(),
        source: Box::new(e),
    })?;
    roles
        .insert(index, flags, 0)
        .map_err(|e| Error::from_map_write(maps::IFACES, e))
}

/// The FIB lookups of the packet path answer "forwarding disabled" on an
/// interface that does not forward; a node forwards (as kube-proxy
/// requires net.ipv4.ip_forward). /proc/sys/net is the calling thread's
/// network namespace.
fn enable_forwarding(name: &str) -> Result<(), Error> {
    let path = format!("/proc/sys/net/ipv4/conf/{name}/forwarding");
    fs::write(&path, "1").map_err(|e| Error::io(format!("enable forwarding on {name} ({path})"), e))
}

fn tc_program(ebpf: &mut aya::Ebpf) -> Result<&mut SchedClassifier, Error> {
    ebpf.program_mut(TC_PROGRAM)
        .ok_or_else(|| Error::Kernel(format!("program {TC_PROGRAM} missing from the object")))?
        .try_into()
        .map_err(|e| Error::Program {
            program: TC_PROGRAM.into(),
            source: Box::new(e),
        })
}

/// The (loaded) packet-level program on `iface`'s ingress, its link pinned.
fn attach_tc(prog: &mut SchedClassifier, iface: &str, pin: &Path) -> Result<(), Error> {
    let id = prog
        .attach(iface, TcAttachType::Ingress)
        .map_err(|e| Error::Program {
            program: format!("{TC_PROGRAM} on {iface}"),
            source: Box::new(e),
        })?;
    let link = prog.take_link(id).map_err(|e| Error::Program {
        program: TC_PROGRAM.into(),
        source: Box::new(e),
    })?;
    pin_link(
        link,
        &format!("{TC_PROGRAM} on {iface} (tcx needs Linux 6.6)"),
        pin,
    )
}

/// Whether the link pinned at `path` is alive (adopted as it is); a stale
/// pin is removed so the attachment is made again.
fn adopt(path: &Path) -> Result<bool, Error> {
    if !path.exists() {
        return Ok(false);
    }
    match PinnedLink::from_pin(path) {
        Ok(_) => Ok(true),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "stale link pin, replacing it");
            fs::remove_file(path)
                .map_err(|e| Error::io(format!("remove {}", path.display()), e))?;
            Ok(false)
        }
    }
}

/// Pins an attachment's bpf_link, so it outlives this process.
fn pin_link<L>(link: L, what: &str, path: &Path) -> Result<(), Error>
where
    L: TryInto<FdLink, Error = aya::programs::links::LinkError>,
{
    let link: FdLink = link
        .try_into()
        .map_err(|e| Error::Kernel(format!("{what}: not a bpf_link: {e}")))?;
    link.pin(path).map_err(|e| Error::Io {
        what: format!("pin {}", path.display()),
        source: std::io::Error::other(e),
    })?;
    Ok(())
}

#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DetachReport {
    pub instance: String,
    pub links: Vec<String>,
    pub maps: Vec<String>,
}

/// Detaches every program of `instance` and removes every pin. Detaching
/// what is not attached is not an error.
/// Unpins the links of one interface (a pod's veth that is gone or about
/// to go) and forgets its role; the rest of the instance is untouched.
pub fn forget_iface(instance: &str, iface: &str) -> Result<Vec<String>, Error> {
    let links = pins::links_dir(&pins::instance_dir(instance)?);
    let mut removed = Vec::new();
    for pin in [format!("tc-{iface}"), format!("xdp-{iface}")] {
        let path = links.join(&pin);
        if !path.exists() {
            continue;
        }
        match PinnedLink::from_pin(&path) {
            Ok(link) => drop(
                link.unpin()
                    .map_err(|e| Error::io(format!("unpin {pin}"), e))?,
            ),
            Err(_) => fs::remove_file(&path).map_err(|e| Error::io(format!("remove {pin}"), e))?,
        }
        removed.push(pin);
    }
    Ok(removed)
}

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
