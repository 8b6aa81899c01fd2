//! `cargo xtask up`: from a fresh Debian 12 machine to a running one-node
//! cluster. Installs what is missing (through `.ci/run --setup-only`, the
//! one list of what skiff needs), starts containerd when it is not running,
//! builds skiff, imports the busybox demo image, and runs `skiff up`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::{cargo, run};

const SOCKET: &str = "/run/containerd/containerd.sock";

fn root_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

fn containerd_answers() -> bool {
    Command::new("ctr")
        .args(["--address", SOCKET, "version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn start_containerd() -> Result<()> {
    if containerd_answers() {
        eprintln!("==> containerd is running ({SOCKET})");
        return Ok(());
    }
    std::fs::create_dir_all("/var/log/skiff")?;
    let log = "/var/log/skiff/containerd.log";
    eprintln!("==> starting containerd (log: {log})");
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    // setsid: containerd outlives this command and the terminal.
    Command::new("setsid")
        .args(["-f", "containerd"])
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .status()
        .context("starting containerd (is the containerd package installed?)")?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !containerd_answers() {
        if Instant::now() > deadline {
            bail!("containerd did not come up in 30 s: see {log}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}

pub fn run_up(args: &[&str]) -> Result<()> {
    if !is_root() {
        bail!("cargo xtask up installs packages and runs pods: run it as root");
    }
    let root = root_dir();
    run(
        "installing what is missing (apt packages, nightly + rust-src, bpf-linker)",
        Command::new("bash")
            .arg(root.join(".ci/run"))
            .arg("--setup-only"),
    )?;
    start_containerd()?;
    run(
        "building skiff (release)",
        cargo()
            .current_dir(&root)
            .args(["build", "--release", "-p", "skiff"]),
    )?;
    let skiff = root.join("target/release/skiff").canonicalize()?;
    let link = Path::new("/usr/local/bin/skiff");
    let ours = std::fs::read_link(link).ok();
    if !link.exists() || ours.is_some() {
        let _ = std::fs::remove_file(link);
        std::os::unix::fs::symlink(&skiff, link)
            .with_context(|| format!("linking {} to {}", link.display(), skiff.display()))?;
        eprintln!("==> {} -> {}", link.display(), skiff.display());
    } else {
        eprintln!(
            "==> {} exists and is not ours: use {}",
            link.display(),
            skiff.display()
        );
    }
    let images = Path::new("/var/lib/skiff/images");
    std::fs::create_dir_all(images)?;
    for (what, file, demo) in [
        ("busybox", "busybox.tar", false),
        (
            "the demo web server (skiff.local/demo:1.0)",
            "demo.tar",
            true,
        ),
    ] {
        let tar = images.join(file);
        let mut build = Command::new(&skiff);
        build.args(["image", "build-busybox"]).arg(&tar);
        if demo {
            build.arg("--demo");
        }
        run(&format!("building {what} from busybox-static"), &mut build)?;
        run(
            &format!("importing {what}"),
            Command::new(&skiff).args(["image", "import"]).arg(&tar),
        )?;
    }
    eprintln!("==> skiff up {}", args.join(" "));
    use std::os::unix::process::CommandExt;
    let err = Command::new(&skiff).arg("up").args(args).exec();
    Err(err).context("running skiff up")
}
