//! What every benchmark shares: statistics, the machine line, the release
//! re-run, and the JSON file under target/bench/.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Result, bail};

pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() { 0.0 } else { v[v.len() / 2] }
}

pub fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return 0.0;
    }
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

/// (cores, kernel release).
pub fn machine() -> (usize, String) {
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    (cores, kernel.trim().to_string())
}

/// A load generator must not be an unoptimized build: re-runs this benchmark
/// command in release when it runs in debug. Returns true when it did (the
/// caller is done).
pub fn rerun_in_release(args: &[&str]) -> Result<bool> {
    if !cfg!(debug_assertions) {
        return Ok(false);
    }
    eprintln!("==> building the load generator (release)");
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["run", "--quiet", "--release", "-p", "skiff-bench", "--"])
        .args(args)
        .status()?;
    if !status.success() {
        bail!("{} failed", args.join(" "));
    }
    Ok(true)
}

pub fn write_json(name: &str, value: &serde_json::Value) -> Result<PathBuf> {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("../../target/bench/{name}.json"));
    std::fs::create_dir_all(path.parent().expect("parent"))?;
    std::fs::write(&path, serde_json::to_string_pretty(value)?)?;
    Ok(path)
}
