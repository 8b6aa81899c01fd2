//! Named network namespaces the way `ip netns` keeps them: a bind mount of
//! the namespace onto a file, so it outlives every process in it and the
//! node daemon itself.

use std::fs;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow};

/// Creates a new, empty network namespace pinned at `path`. Idempotent:
/// an existing namespace at `path` is kept.
pub fn create(path: &Path) -> Result<()> {
    if is_netns(path) {
        return Ok(());
    }
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let target = path.to_path_buf();
    let r = std::thread::spawn(move || -> Result<()> {
        // This thread alone moves to the new namespace and ends after the
        // bind mount holds it.
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(|e| anyhow!("unshare(CLONE_NEWNET): {e}"))?;
        rustix::mount::mount_bind("/proc/thread-self/ns/net", &target)
            .map_err(|e| anyhow!("bind-mounting the namespace onto {}: {e}", target.display()))?;
        Ok(())
    })
    .join()
    .map_err(|_| anyhow!("the namespace thread panicked"))?;
    if r.is_err() {
        let _ = fs::remove_file(path);
    }
    r
}

/// Whether `path` holds a network namespace (is a bind mount of one).
pub fn is_netns(path: &Path) -> bool {
    let Ok(f) = fs::File::open(path) else {
        return false;
    };
    // f_type is i64 on x86_64 and narrower elsewhere.
    #[allow(clippy::unnecessary_cast)]
    rustix::fs::fstatfs(&f).is_ok_and(|s| s.f_type as i64 == NSFS_MAGIC)
}

const NSFS_MAGIC: i64 = 0x6e73_6673;

/// Unmounts and removes a pinned namespace. Missing is fine.
pub fn remove(path: &Path) -> Result<()> {
    if is_netns(path) {
        rustix::mount::unmount(path, rustix::mount::UnmountFlags::DETACH)
            .map_err(|e| anyhow!("unmounting {}: {e}", path.display()))?;
    }
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", path.display())),
    }
}

/// Runs `f` on a thread inside the namespace at `path` (the caller's
/// threads never change namespace).
pub fn run_in<T: Send + 'static>(
    path: &Path,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    let file = fs::File::open(path)
        .with_context(|| format!("opening network namespace {}", path.display()))?;
    let shown: PathBuf = path.to_path_buf();
    std::thread::spawn(move || {
        rustix::thread::move_into_link_name_space(
            file.as_fd(),
            Some(rustix::thread::LinkNameSpaceType::Network),
        )
        .map_err(|e| anyhow!("entering network namespace {}: {e}", shown.display()))?;
        f()
    })
    .join()
    .map_err(|_| anyhow!("the namespace thread panicked"))?
}
