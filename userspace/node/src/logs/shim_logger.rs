//! The logging binary containerd's shim starts for every container
//! (`binary://` stdio URI): it reads the container's stdout (fd 3) and
//! stderr (fd 4) and writes CRI-format records to the container's log
//! file. It lives as long as the container, not as long as the node
//! daemon: a restarted or killed node daemon loses no output.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};

use super::cri::{self, Stream};

/// The stdio URI that makes containerd's shim run this logger.
pub fn stdio_uri(skiff_binary: &Path, log_path: &Path) -> String {
    format!(
        "binary://{}?shim-logger={}",
        skiff_binary.display(),
        percent_encode(&log_path.to_string_lossy())
    )
}

fn percent_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"/-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Runs the logger: called as `skiff shim-logger PATH` by the shim with
/// the pipes on fds 3 and 4 and the readiness pipe on fd 5.
pub fn run(log_path: &Path) -> Result<()> {
    if let Some(dir) = log_path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path)
        .with_context(|| format!("opening {}", log_path.display()))?;
    let file = Arc::new(Mutex::new(file));
    // Opening /proc/self/fd/N gives this process its own descriptor of the
    // same pipe, without adopting a raw descriptor.
    let stdout = File::open("/proc/self/fd/3").context("the container's stdout (fd 3)")?;
    let stderr = File::open("/proc/self/fd/4").context("the container's stderr (fd 4)")?;
    // Tell the shim we are ready: it waits for one byte (or EOF) on fd 5.
    if let Ok(mut ready) = OpenOptions::new().write(true).open("/proc/self/fd/5") {
        let _ = ready.write_all(b"1");
    }
    let threads: Vec<_> = [(stdout, Stream::Stdout), (stderr, Stream::Stderr)]
        .into_iter()
        .map(|(pipe, stream)| {
            let file = file.clone();
            std::thread::spawn(move || pump(pipe, stream, &file))
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
    Ok(())
}

fn pump(mut pipe: File, stream: Stream, file: &Mutex<File>) {
    let mut buf = vec![0u8; 32 * 1024];
    let mut pending = Vec::new();
    loop {
        let n = match pipe.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let mut f = file.lock().unwrap_or_else(|e| e.into_inner());
        if cri::write_records(&mut *f, stream, &mut pending, &buf[..n], &cri::now()).is_err() {
            // A full disk must not block the container: drop output.
            pending.clear();
        }
    }
    let mut f = file.lock().unwrap_or_else(|e| e.into_inner());
    let _ = cri::flush(&mut *f, stream, &mut pending, &cri::now());
}
