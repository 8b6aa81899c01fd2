//! Reading a container's logs back: which file (the current instance or
//! the previous one), the last N lines, and following a file as it grows.

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};

use super::cri;

/// The pod's log directory: `<ns>_<pod>_<uid>`; with several (an old pod
/// of the same name), the most recently written.
pub fn pod_dir(log_dir: &Path, namespace: &str, pod: &str) -> Option<PathBuf> {
    let prefix = format!("{namespace}_{pod}_");
    std::fs::read_dir(log_dir)
        .ok()?
        .flatten()
        .filter(|e| {
            let n = e.file_name().to_string_lossy().to_string();
            // The uid follows the prefix and has no '_'.
            n.strip_prefix(&prefix)
                .is_some_and(|uid| !uid.is_empty() && !uid.contains('_'))
        })
        .max_by_key(|e| e.metadata().and_then(|m| m.modified()).ok())
        .map(|e| e.path())
}

/// The container whose logs are meant: the named one, or the only one.
pub fn container_dir(pod_dir: &Path, pod: &str, container: &str) -> Result<PathBuf> {
    let mut names: Vec<String> = std::fs::read_dir(pod_dir)?
        .flatten()
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().to_string())
        .collect();
    names.sort();
    if container.is_empty() {
        return match names.as_slice() {
            [only] => Ok(pod_dir.join(only)),
            _ => bail!(
                "a container name must be specified for pod {pod}, choose one of: [{}]",
                names.join(" ")
            ),
        };
    }
    if !names.iter().any(|n| n == container) {
        bail!("container {container} is not valid for pod {pod}");
    }
    Ok(pod_dir.join(container))
}

/// Restart numbers with a log file, ascending.
pub fn restarts(container_dir: &Path) -> Vec<u32> {
    let mut out: Vec<u32> = std::fs::read_dir(container_dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .strip_suffix(".log")?
                        .parse()
                        .ok()
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort_unstable();
    out
}

/// The log file of the current (or previous) instance.
pub fn instance_file(
    container_dir: &Path,
    previous: bool,
    container: &str,
) -> Result<(u32, PathBuf)> {
    let r = restarts(container_dir);
    let pick = if previous {
        r.len().checked_sub(2).map(|i| r[i])
    } else {
        r.last().copied()
    };
    match pick {
        Some(n) => Ok((n, container_dir.join(format!("{n}.log")))),
        None if previous => bail!("previous terminated container \"{container}\" not found"),
        None => bail!("container \"{container}\" has no logs yet"),
    }
}

/// Turns CRI records into what the container wrote: optionally each line
/// prefixed by its timestamp, optionally only the lines stamped at or
/// after `since` (a time in the records' own fixed-width format, so text
/// order is time order), optionally only the last `tail` lines.
pub fn render(
    records: &[u8],
    timestamps: bool,
    tail: Option<usize>,
    since: Option<&str>,
) -> Vec<u8> {
    let mut lines: Vec<Vec<u8>> = Vec::new();
    let mut partial: Vec<u8> = Vec::new();
    for rec in records.split(|b| *b == b'\n') {
        let Some(r) = cri::parse(rec) else { continue };
        if partial.is_empty() && since.is_some_and(|s| r.time < s) {
            continue;
        }
        if partial.is_empty() && timestamps {
            partial.extend_from_slice(r.time.as_bytes());
            partial.push(b' ');
        }
        partial.extend_from_slice(r.text);
        if r.full {
            partial.push(b'\n');
            lines.push(std::mem::take(&mut partial));
        }
    }
    let skip = tail.map_or(0, |t| lines.len().saturating_sub(t));
    lines.into_iter().skip(skip).flatten().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_and_timestamps() {
        let recs = b"T1 stdout F a\nT2 stderr F b\nT3 stdout P c1\nT4 stdout F c2\n";
        assert_eq!(render(recs, false, None, None), b"a\nb\nc1c2\n");
        assert_eq!(render(recs, false, Some(2), None), b"b\nc1c2\n");
        assert_eq!(render(recs, true, Some(1), None), b"T3 c1c2\n");
        assert_eq!(render(recs, false, Some(0), None), b"");
        assert_eq!(render(recs, false, None, Some("T2")), b"b\nc1c2\n");
        assert_eq!(render(recs, false, Some(1), Some("T2")), b"c1c2\n");
        assert_eq!(render(recs, false, None, Some("T5")), b"");
    }

    #[test]
    fn picks_files() {
        let d = tempfile::tempdir().unwrap();
        let pod = d.path().join("default_web_u1");
        std::fs::create_dir_all(pod.join("c")).unwrap();
        for n in [0, 1, 2] {
            std::fs::write(pod.join("c").join(format!("{n}.log")), "").unwrap();
        }
        assert_eq!(pod_dir(d.path(), "default", "web"), Some(pod.clone()));
        assert_eq!(pod_dir(d.path(), "default", "we"), None);
        let c = container_dir(&pod, "web", "").unwrap();
        assert_eq!(instance_file(&c, false, "c").unwrap().0, 2);
        assert_eq!(instance_file(&c, true, "c").unwrap().0, 1);
        std::fs::create_dir_all(pod.join("d")).unwrap();
        assert!(
            container_dir(&pod, "web", "")
                .unwrap_err()
                .to_string()
                .contains("choose one of: [c d]")
        );
        assert!(container_dir(&pod, "web", "x").is_err());
    }
}
