//! The benchmarks `cargo xtask bench ...` runs (see ../shared/benchmarks.md):
//! each measures skiff and its baseline in the same run and reports ratios.

mod bench_api;
mod bench_datapath;
mod bench_dns;
mod bench_pods;
mod bench_scheduler;
mod benchkit;
mod netperf;
mod soak;

use std::process::{Command, ExitCode};

const USAGE: &str = "usage: skiff-bench <benchmark> [--quick]   (normally: cargo xtask bench ...)

benchmarks:
  bench api [--quick]       API server throughput and watch latency, embedded
                            store and etcd, against raw etcd in the same run
  bench datapath [--quick]  connection and request rates through a ClusterIP
                            (1, 1k, 10k services) against direct and iptables (root)
  bench sync [--quick]      programming services and one endpoint change,
                            against iptables-restore (root)
  bench dns [--quick]       dnsperf against skiff dns and dnsmasq serving 10k
                            Services, and API-to-answer latency
  bench pods [--quick]      50 pods create -> Running and -> answering via their
                            Service, against ctr run -d (root)
  bench scheduler [--quick] 10k pods onto 1k and 5k simulated nodes: pods bound/s
                            and create -> bound, against a naive first-fit binder";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = match args.as_slice() {
        ["bench", "api", rest @ ..] => bench_api::run(rest.contains(&"--quick")),
        ["bench", "datapath", rest @ ..] => bench_datapath::datapath(rest.contains(&"--quick")),
        ["bench", "sync", rest @ ..] => bench_datapath::sync(rest.contains(&"--quick")),
        ["bench", "dns", rest @ ..] => bench_dns::run(rest.contains(&"--quick")),
        ["bench", "pods", rest @ ..] => bench_pods::run(rest.contains(&"--quick")),
        ["bench", "scheduler", rest @ ..] => bench_scheduler::run(rest.contains(&"--quick")),
        ["soak", rest @ ..] => soak::run(rest),
        ["netperf", rest @ ..] => netperf::run(rest),
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
