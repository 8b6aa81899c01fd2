//! Where an instance's pins live, and the bpffs and cgroup v2 checks.

use std::path::{Path, PathBuf};

use crate::Error;

pub const BPFFS: &str = "/sys/fs/bpf";
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

/// `/sys/fs/bpf/skiff/<instance>`: the maps, by name.
pub fn instance_dir(instance: &str) -> Result<PathBuf, Error> {
    let ok = !instance.is_empty()
        && instance.len() <= 63
        && instance
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && !instance.starts_with('.');
    if !ok {
        return Err(Error::BadInstance(instance.to_string()));
    }
    Ok(Path::new(BPFFS).join("skiff").join(instance))
}

/// `<instance dir>/links`: one pinned link per attached program.
pub fn links_dir(instance_dir: &Path) -> PathBuf {
    instance_dir.join("links")
}

fn fs_magic(path: &Path) -> Result<i64, Error> {
    let st = rustix::fs::statfs(path).map_err(|e| Error::Io {
        what: format!("statfs {}", path.display()),
        source: e.into(),
    })?;
    Ok(st.f_type as i64)
}

/// Mounts bpffs at /sys/fs/bpf when it is not (a fresh machine), as Cilium's
/// agent does.
pub fn ensure_bpffs() -> Result<(), Error> {
    let path = Path::new(BPFFS);
    if fs_magic(path)? == BPF_FS_MAGIC {
        return Ok(());
    }
    rustix::mount::mount(
        "bpf",
        path,
        "bpf",
        rustix::mount::MountFlags::empty(),
        None::<&std::ffi::CStr>,
    )
    .map_err(|e| Error::Io {
        what: format!("mount -t bpf bpf {BPFFS}"),
        source: e.into(),
    })?;
    tracing::info!("mounted bpffs at {BPFFS}");
    Ok(())
}

pub fn is_bpffs_mounted() -> bool {
    fs_magic(Path::new(BPFFS)).is_ok_and(|m| m == BPF_FS_MAGIC)
}

/// The cgroup v2 hierarchy's root: `/sys/fs/cgroup/unified` on hybrid
/// systems, else `/sys/fs/cgroup`.
pub fn default_cgroup() -> Result<PathBuf, Error> {
    for p in ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"] {
        if fs_magic(Path::new(p)).is_ok_and(|m| m == CGROUP2_SUPER_MAGIC) {
            return Ok(PathBuf::from(p));
        }
    }
    Err(Error::Kernel(
        "no cgroup v2 hierarchy at /sys/fs/cgroup/unified or /sys/fs/cgroup".into(),
    ))
}

pub fn check_cgroup2(path: &Path) -> Result<(), Error> {
    if fs_magic(path)? != CGROUP2_SUPER_MAGIC {
        return Err(Error::NotCgroup2(path.to_path_buf()));
    }
    Ok(())
}
