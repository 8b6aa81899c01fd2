//! Project automation: `cargo xtask test` runs every check and test;
//! `cargo xtask up` installs what is missing and brings up a one-node
//! cluster; `cargo xtask bench ...` runs the benchmarks (xtask/bench).
//! This crate depends on nothing of the project's, so it builds on a fresh
//! machine before anything is installed.

mod tidy;
mod up;

use std::process::{Command, ExitCode};

use anyhow::{Context, Result, bail};

const USAGE: &str = "usage: cargo xtask <command>

commands:
  up [skiff up flags]     install what is missing (root), start containerd,
                          build skiff, import the demo image and run `skiff up`
  test [--quick]          fmt check, clippy, tidy, then every test of the
                          workspace (--quick: tests only)
  tidy                    the crate graph against ARCHITECTURE.md's code map
                          and dependency rules
  bench api [--quick]     API server throughput and watch latency, embedded
                          store and etcd, against raw etcd in the same run
  bench datapath [--quick]  connection and request rates through a ClusterIP
                          (1, 1k, 10k services) against direct and iptables (root)
  bench sync [--quick]    programming services and one endpoint change,
                          against iptables-restore (root)
  bench dns [--quick]     dnsperf against skiff dns and dnsmasq serving 10k
                          Services, and API-to-answer latency
  bench pods [--quick]    50 pods create -> Running and -> answering via their
                          Service, against ctr run -d (root)
  soak [--minutes N]      N minutes (default 20) of writes, watches and pods
                          churning on simulated nodes: the server's RSS, fds,
                          watch lag and errors over time, and the RSS slope
                          after warm-up (fails when it grows)";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = match args.as_slice() {
        ["test", rest @ ..] => test(rest.contains(&"--quick")),
        ["up", rest @ ..] => up::run_up(rest),
        ["tidy"] => tidy::run(&mut cargo(), &root()),
        ["soak", rest @ ..] => run(
            "skiff-bench",
            cargo()
                .args(["run", "--quiet", "-p", "skiff-bench", "--", "soak"])
                .args(rest),
        ),
        ["bench", rest @ ..] if !rest.is_empty() => run(
            "skiff-bench",
            cargo()
                .args(["run", "--quiet", "-p", "skiff-bench", "--", "bench"])
                .args(rest),
        ),
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

pub fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn run(step: &str, cmd: &mut Command) -> Result<()> {
    eprintln!("==> {step}");
    let status = cmd.status().with_context(|| format!("run {step}"))?;
    if !status.success() {
        bail!("{step} failed ({status})");
    }
    Ok(())
}

/// The workspace root (xtask lives one level below it).
fn root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask is inside the workspace")
        .to_path_buf()
}

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

/// What the tests need from the machine; in CI all of it is required.
fn check_prerequisites() -> Result<()> {
    if !have("protoc") {
        bail!(
            "protoc is missing (etcd-client compiles its protos with it): apt-get install protobuf-compiler, or run .ci/run once"
        );
    }
    let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    for (tool, package) in [
        ("etcd", "etcd-server"),
        ("etcdctl", "etcd-client"),
        ("curl", "curl"),
        ("dig", "dnsutils"),
        ("dnsmasq", "dnsmasq-base"),
        ("python3", "python3"),
        ("ip", "iproute2"),
        ("containerd", "containerd"),
        ("ctr", "containerd"),
        ("runc", "runc"),
        ("busybox", "busybox-static"),
        ("gcc", "gcc"),
        ("docker-registry", "docker-registry"),
        ("script", "bsdutils"),
    ] {
        if !have(tool) {
            if ci {
                bail!("{tool} is missing in CI: .ci/run must install {package}");
            }
            eprintln!(
                "warning: {tool} is missing (apt-get install {package}); the tests that need it will say they skip"
            );
        }
    }
    Ok(())
}

fn test(quick: bool) -> Result<()> {
    check_prerequisites()?;
    if !quick {
        run(
            "cargo fmt --check",
            cargo().args(["fmt", "--all", "--check"]),
        )?;
        run(
            "cargo clippy",
            cargo().args([
                "clippy",
                "--workspace",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ]),
        )?;
        tidy::run(&mut cargo(), &root())?;
    }
    cargo_test()
}

/// `cargo test` for the workspace (no doc tests: there are none), with its
/// output passed through and one total at the end: the per-binary
/// summaries end with whichever binary ran last, often one with no tests.
/// Every test binary runs even when one fails (`--no-fail-fast`), and the
/// failed tests are listed again at the end.
fn cargo_test() -> Result<()> {
    use std::io::{BufRead, BufReader};
    eprintln!("==> cargo test");
    let mut child = cargo()
        .args(["test", "--workspace", "--all-targets", "--no-fail-fast"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("run cargo test")?;
    let (mut passed, mut failed, mut ignored) = (0u64, 0u64, 0u64);
    let mut failures: Vec<String> = Vec::new();
    let stdout = child.stdout.take().expect("piped stdout");
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        println!("{line}");
        if let Some(name) = line
            .strip_prefix("test ")
            .and_then(|rest| rest.strip_suffix(" ... FAILED"))
        {
            failures.push(name.to_string());
        }
        if let Some(rest) = line.strip_prefix("test result: ") {
            let count = |word: &str| -> u64 {
                rest.split(';')
                    .find_map(|part| {
                        part.trim()
                            .strip_suffix(word)
                            .and_then(|n| n.trim().rsplit(' ').next()?.parse().ok())
                    })
                    .unwrap_or(0)
            };
            passed += count(" passed");
            failed += count(" failed");
            ignored += count(" ignored");
        }
    }
    let status = child.wait()?;
    if !failures.is_empty() {
        println!("failed tests:");
        for f in &failures {
            println!("    {f}");
        }
    }
    println!("{passed} passed, {failed} failed, {ignored} skipped");
    if !status.success() {
        bail!("cargo test failed ({status})");
    }
    if passed == 0 {
        bail!("no test ran");
    }
    Ok(())
}
