//! The pods' cgroups: `/<parent>/pod<uid>/<container id>` in every
//! hierarchy (runc creates them from the spec's cgroupsPath); the pod-level
//! directories are removed here once the pod's containers are gone.

use std::path::Path;

const ROOT: &str = "/sys/fs/cgroup";

/// The cgroupsPath of one container.
pub fn container_path(parent: &str, uid: &str, container_id: &str) -> String {
    format!("/{}/pod{uid}/{container_id}", parent.trim_matches('/'))
}

/// Every hierarchy mounted under /sys/fs/cgroup (v1 controllers and the
/// unified one), or the root itself on a pure cgroup v2 host.
fn hierarchies() -> Vec<std::path::PathBuf> {
    let root = Path::new(ROOT);
    if root.join("cgroup.controllers").exists() {
        return vec![root.to_path_buf()];
    }
    std::fs::read_dir(root)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| p.is_dir() && !p.is_symlink())
                .collect()
        })
        .unwrap_or_default()
}

/// Removes the pod's (by now empty) cgroup directories.
pub fn remove_pod(parent: &str, uid: &str) {
    for h in hierarchies() {
        let dir = h.join(parent.trim_matches('/')).join(format!("pod{uid}"));
        if !dir.exists() {
            continue;
        }
        // Leftover container directories first (runc removes its own).
        if let Ok(rd) = std::fs::read_dir(&dir) {
            for e in rd.flatten() {
                if e.path().is_dir() {
                    let _ = std::fs::remove_dir(e.path());
                }
            }
        }
        if let Err(e) = std::fs::remove_dir(&dir) {
            tracing::debug!("removing {}: {e}", dir.display());
        }
    }
}

/// Removes the parent's directories (a node shutting down for good, tests).
pub fn remove_parent(parent: &str) {
    for h in hierarchies() {
        let dir = h.join(parent.trim_matches('/'));
        if dir.exists() {
            let _ = std::fs::remove_dir(&dir);
        }
    }
}

/// The cgroup v2 directory of the parent (for the socket-level load
/// balancer of a node that keeps it to its pods), created if needed.
pub fn unified_parent(parent: &str) -> std::io::Result<std::path::PathBuf> {
    let root = Path::new(ROOT);
    let unified = if root.join("cgroup.controllers").exists() {
        root.to_path_buf()
    } else {
        root.join("unified")
    };
    let dir = unified.join(parent.trim_matches('/'));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
