//! `cargo xtask bench datapath` and `cargo xtask bench sync`
//! (../shared/benchmarks.md).
//!
//! datapath: TCP connection rate (connect + 1 byte each way + close, like
//! netperf TCP_CRR) and request/response rate on one connection (TCP_RR)
//! from a client namespace to a server namespace with 10 addresses, through
//! a ClusterIP with 1, 1,000 and 10,000 services (10 backends each) loaded.
//! Same-run baselines: the same client to a backend address directly (the
//! ceiling) and the same services as kube-proxy iptables rules. Every
//! configuration is its own lab (client, server, bridge), so each is
//! measured with only its own datapath present: skiff's programs are
//! attached to its lab's cgroup only, the iptables rules live in their
//! client's namespace only. Rounds interleave the configurations and the
//! medians of per-round ratios are reported.
//!
//! sync: programming N services x 10 endpoints from nothing (N = 1k, 10k),
//! and one endpoint change (p50/p99), against iptables-restore of the
//! equivalent ruleset (full, and --noflush of the changed chains, the way
//! kube-proxy writes a change).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write};
use std::net::Ipv4Addr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::json;
use skiff_datapath::model::{
    Algorithm, BackendAddr, Desired, Frontend, FrontendKind, Proto, ServiceDef,
};
use skiff_datapath::{AttachOptions, MaglevConfig, Maps, Reconciler};
use skiff_testkit::netlab::{Host, Lab};

use crate::benchkit::{machine, median, percentile, write_json};

const PORT: u16 = 80;
const TARGET_PORT: u16 = 8080;

fn cluster_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 96, 100 + (i / 250) as u8, 1 + (i % 250) as u8)
}

/// Backends of service `i`: the lab server's ten addresses for the probed
/// service, unique unused addresses for the others.
fn backends_of(i: usize, probed: usize) -> Vec<BackendAddr> {
    (0..10)
        .map(|j| BackendAddr {
            addr: if i == probed {
                Ipv4Addr::new(10, 77, 0, 100 + j as u8)
            } else {
                Ipv4Addr::new(
                    10,
                    80 + (i / 6400) as u8,
                    ((i / 25) % 256) as u8,
                    ((i % 25) * 10 + j) as u8,
                )
            },
            port: TARGET_PORT,
        })
        .collect()
}

fn desired(n: usize, probed: usize) -> Desired {
    let mut d = Desired::default();
    for i in 0..n {
        let name = format!("bench/s{i}:{PORT}/TCP");
        let frontend = Frontend {
            addr: cluster_ip(i),
            port: PORT,
            proto: Proto::Tcp,
            local: false,
        };
        d.services.insert(
            name.clone(),
            ServiceDef {
                name,
                proto: Proto::Tcp,
                frontends: BTreeMap::from([(frontend, FrontendKind::ClusterIp)]),
                backends: backends_of(i, probed),
                terminating: false,
                local: Default::default(),
                algorithm: Algorithm::Random,
                affinity_timeout: None,
            },
        );
    }
    d
}

/// The kube-proxy (iptables mode) nat table for the same services.
fn iptables_rules(n: usize, probed: usize) -> String {
    let mut chains = String::from("*nat\n:KUBE-SERVICES - [0:0]\n");
    let mut rules = String::from(
        "-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
         -A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n",
    );
    for i in 0..n {
        svc_rules(i, &backends_of(i, probed), 0, &mut chains, &mut rules);
        let _ = writeln!(
            rules,
            "-A KUBE-SERVICES -d {}/32 -p tcp -m comment --comment \"bench/s{i}:{PORT} cluster IP\" -m tcp --dport {PORT} -j KUBE-SVC-{i:08}",
            cluster_ip(i)
        );
    }
    format!("{chains}{rules}COMMIT\n")
}

/// One service's KUBE-SVC chain (random choice among its endpoints, as
/// kube-proxy's `statistic --mode random --probability 1/(n-k)`) and its
/// KUBE-SEP chains; `generation` names the SEP chains so a change can add
/// new ones.
fn svc_rules(
    i: usize,
    backends: &[BackendAddr],
    generation: usize,
    chains: &mut String,
    rules: &mut String,
) {
    let _ = writeln!(chains, ":KUBE-SVC-{i:08} - [0:0]");
    let n = backends.len();
    for (k, b) in backends.iter().enumerate() {
        let sep = format!("KUBE-SEP-{i:08}{generation:03}{k:02}");
        let _ = writeln!(chains, ":{sep} - [0:0]");
        if k + 1 < n {
            let _ = writeln!(
                rules,
                "-A KUBE-SVC-{i:08} -m comment --comment \"bench/s{i}:{PORT} -> {b}\" -m statistic --mode random --probability {:.10} -j {sep}",
                1.0 / (n - k) as f64
            );
        } else {
            let _ = writeln!(
                rules,
                "-A KUBE-SVC-{i:08} -m comment --comment \"bench/s{i}:{PORT} -> {b}\" -j {sep}"
            );
        }
        let _ = writeln!(
            rules,
            "-A {sep} -p tcp -m comment --comment \"bench/s{i}:{PORT}\" -m tcp -j DNAT --to-destination {b}"
        );
    }
}

fn iptables_restore(netns: &str, input: &str, noflush: bool) -> Result<Duration> {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", netns, "iptables-restore"]);
    if noflush {
        cmd.arg("--noflush");
    }
    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("run iptables-restore")?;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())?;
    let out = child.wait_with_output()?;
    let took = start.elapsed();
    if !out.status.success() {
        bail!("iptables-restore: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(took)
}

fn sysctl(netns: &str, key: &str, value: &str) {
    let _ = Command::new("ip")
        .args([
            "netns",
            "exec",
            netns,
            "sysctl",
            "-qw",
            &format!("{key}={value}"),
        ])
        .status();
}

/// An attached skiff instance, detached on drop.
struct Instance(String);

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = skiff_datapath::detach(&self.0);
    }
}

fn attach(lab: &Lab) -> Result<(Instance, Reconciler)> {
    let name = format!("bench-{}", lab.id);
    skiff_datapath::attach(&AttachOptions {
        instance: name.clone(),
        cgroup: Some(lab.cgroup().to_path_buf()),
        ..Default::default()
    })?;
    let instance = Instance(name.clone());
    let reconciler = Reconciler::adopt(Maps::open(&name)?, MaglevConfig::default())?;
    Ok((instance, reconciler))
}

#[derive(Clone, Copy, PartialEq)]
enum Path {
    Direct,
    Skiff,
    Iptables,
}

/// One measured configuration: a lab with a client and a server.
struct Config {
    label: String,
    path: Path,
    services: usize,
    lab: Lab,
    client: Host,
    target: String,
    _server: ServerGuard,
    _instance: Option<Instance>,
}

struct ServerGuard(Child);

impl Drop for ServerGuard {
    fn drop(&mut self) {
        drop(self.0.stdin.take());
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn xtask_bin() -> Result<String> {
    Ok(std::env::current_exe()?.display().to_string())
}

fn setup(path: Path, services: usize) -> Result<Config> {
    let mut lab = Lab::new();
    let client = lab.host();
    let server = lab.host();
    for j in 0..10u8 {
        lab.add_address(&server, 100 + j);
    }
    let bin = xtask_bin()?;
    let mut child = lab
        .exec(
            &server,
            false,
            &bin,
            &[
                "netperf",
                "serve",
                "--addr",
                &format!("0.0.0.0:{TARGET_PORT}"),
            ],
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line)?;
    if line.trim() != "ready" {
        bail!("the netperf server did not start");
    }
    let probed = services / 2;
    let mut instance = None;
    let (label, target) = match path {
        Path::Direct => (
            "direct to a backend".to_string(),
            format!("10.77.0.100:{TARGET_PORT}"),
        ),
        Path::Skiff => {
            let (inst, mut reconciler) = attach(&lab)?;
            let started = Instant::now();
            reconciler.apply(&desired(services, probed))?;
            eprintln!(
                "    skiff: {services} services programmed in {:.0} ms",
                started.elapsed().as_secs_f64() * 1e3
            );
            instance = Some(inst);
            (
                format!("skiff, {services} services"),
                format!("{}:{PORT}", cluster_ip(probed)),
            )
        }
        Path::Iptables => {
            // Like a node's default route: locally sent packets need a
            // route before the nat OUTPUT hook rewrites them. Nothing is
            // sent to it unrewritten (every probed ClusterIP has rules).
            skiff_testkit::netlab::ip(&[
                "-n",
                &client.netns,
                "route",
                "add",
                "10.96.0.0/12",
                "dev",
                "eth0",
            ]);
            let took = iptables_restore(&client.netns, &iptables_rules(services, probed), false)?;
            eprintln!(
                "    iptables: {services} services restored in {:.0} ms",
                took.as_secs_f64() * 1e3
            );
            // Short conntrack timeouts: the bench opens tens of thousands
            // of connections a minute.
            for (k, v) in [
                ("net.netfilter.nf_conntrack_tcp_timeout_time_wait", "1"),
                ("net.netfilter.nf_conntrack_tcp_timeout_close_wait", "1"),
                ("net.netfilter.nf_conntrack_tcp_timeout_fin_wait", "1"),
                ("net.netfilter.nf_conntrack_tcp_timeout_last_ack", "1"),
            ] {
                sysctl(&client.netns, k, v);
            }
            (
                format!("iptables, {services} services"),
                format!("{}:{PORT}", cluster_ip(probed)),
            )
        }
    };
    Ok(Config {
        label,
        path,
        services,
        lab,
        client,
        target,
        _server: ServerGuard(child),
        _instance: instance,
    })
}

fn measure(c: &Config, mode: &str, seconds: f64) -> Result<f64> {
    let bin = xtask_bin()?;
    let threads = if mode == "crr" { "2" } else { "1" };
    let out = c
        .lab
        .exec(
            &c.client,
            c.path == Path::Skiff,
            &bin,
            &[
                "netperf",
                mode,
                "--target",
                &c.target,
                "--seconds",
                &seconds.to_string(),
                "--threads",
                threads,
            ],
        )
        .output()?;
    if !out.status.success() {
        bail!(
            "netperf {mode} ({}): {}",
            c.label,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let errors = v["errors"].as_u64().unwrap_or(0);
    if errors > 0 {
        eprintln!("    warning: {} errors in {mode} ({})", errors, c.label);
    }
    Ok(v["rate"].as_f64().unwrap_or(0.0))
}

fn check_tools() -> Result<()> {
    for (tool, package) in [("iptables-restore", "iptables"), ("ip", "iproute2")] {
        if !crate::have(tool) {
            bail!(
                "{tool} is missing: apt-get install {package} (bash .ci/run --setup-only installs it)"
            );
        }
    }
    Ok(())
}

pub fn datapath(quick: bool) -> Result<()> {
    if !quick && crate::benchkit::rerun_in_release(&["bench", "datapath"])? {
        return Ok(());
    }
    check_tools()?;
    let (rounds, seconds, counts): (usize, f64, Vec<usize>) = if quick {
        (1, 0.5, vec![1, 100, 1000])
    } else {
        (5, 1.5, vec![1, 1000, 10_000])
    };
    let (cores, kernel) = machine();
    println!(
        "bench datapath: {cores} cores, kernel {kernel}, {rounds} rounds of {seconds} s per figure"
    );
    eprintln!("==> setting up {} labs", 1 + 2 * counts.len());
    let mut configs = vec![setup(Path::Direct, 0)?];
    for n in &counts {
        configs.push(setup(Path::Skiff, *n)?);
        configs.push(setup(Path::Iptables, *n)?);
    }
    // Each round measures, per service count, a triple (direct, skiff,
    // iptables) back to back in a rotating order; ratios are taken within
    // the triple, so drift between triples cancels out.
    let mut rates: BTreeMap<(&str, usize), Vec<f64>> = BTreeMap::new();
    let mut ratios: BTreeMap<(&str, usize, &str), Vec<f64>> = BTreeMap::new();
    for round in 0..rounds {
        for mode in ["crr", "rr"] {
            for k in 0..counts.len() {
                let mut triple = [0, 1 + 2 * k, 2 + 2 * k];
                triple.rotate_left(round % 3);
                let mut got = BTreeMap::new();
                for i in triple {
                    let r = measure(&configs[i], mode, seconds)?;
                    eprintln!(
                        "    round {} {mode:>3} {:<28} {:>9.0}/s",
                        round + 1,
                        configs[i].label,
                        r
                    );
                    rates.entry((mode, i)).or_default().push(r);
                    got.insert(i, r);
                }
                let (d, s, t) = (got[&0], got[&(1 + 2 * k)], got[&(2 + 2 * k)]);
                ratios
                    .entry((mode, 1 + 2 * k, "direct"))
                    .or_default()
                    .push(s / d.max(1e-9));
                ratios
                    .entry((mode, 2 + 2 * k, "direct"))
                    .or_default()
                    .push(t / d.max(1e-9));
                ratios
                    .entry((mode, 1 + 2 * k, "iptables"))
                    .or_default()
                    .push(s / t.max(1e-9));
            }
        }
    }
    let ratio = |mode: &str, i: usize, base: &str| -> Option<f64> {
        ratios.get(&(mode, i, base)).map(|v| median(v.clone()))
    };
    let mut table = Vec::new();
    println!(
        "\n{:<28} {:>12} {:>12} {:>10} {:>10} {:>10} {:>10}",
        "configuration", "conn/s", "req/s", "crr/direct", "crr/ipt", "rr/direct", "rr/ipt"
    );
    let fmt = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.2}"));
    for (i, c) in configs.iter().enumerate() {
        let crr = median(rates[&("crr", i)].clone());
        let rr = median(rates[&("rr", i)].clone());
        let (crr_d, rr_d) = (ratio("crr", i, "direct"), ratio("rr", i, "direct"));
        let (crr_i, rr_i) = (ratio("crr", i, "iptables"), ratio("rr", i, "iptables"));
        println!(
            "{:<28} {:>12.0} {:>12.0} {:>10} {:>10} {:>10} {:>10}",
            c.label,
            crr,
            rr,
            fmt(crr_d.or((i == 0).then_some(1.0))),
            fmt(crr_i),
            fmt(rr_d.or((i == 0).then_some(1.0))),
            fmt(rr_i)
        );
        table.push(json!({
            "configuration": c.label, "services": c.services,
            "connectionsPerSecond": crr, "requestsPerSecond": rr,
            "connectionRateVsDirect": crr_d, "requestRateVsDirect": rr_d,
            "connectionRateVsIptables": crr_i, "requestRateVsIptables": rr_i,
            "rounds": {"crr": rates[&("crr", i)], "rr": rates[&("rr", i)]},
        }));
    }
    let path = write_json(
        "datapath",
        &json!({"cores": cores, "kernel": kernel, "rounds": rounds, "secondsPerFigure": seconds, "results": table}),
    )?;
    println!("figures written to {}", path.display());
    Ok(())
}

pub fn sync(quick: bool) -> Result<()> {
    if !quick && crate::benchkit::rerun_in_release(&["bench", "sync"])? {
        return Ok(());
    }
    check_tools()?;
    let (rounds, counts, changes, ipt_changes) = if quick {
        (1, vec![100, 1000], 100, 10)
    } else {
        (3, vec![1000, 10_000], 1000, 100)
    };
    let (cores, kernel) = machine();
    println!("bench sync: {cores} cores, kernel {kernel}, {rounds} rounds");
    let mut results = Vec::new();
    for &n in &counts {
        let (mut skiff, mut ipt, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
        let state = desired(n, usize::MAX);
        let rules = iptables_rules(n, usize::MAX);
        for round in 0..rounds {
            let lab = Lab::new();
            let (_instance, mut reconciler) = attach(&lab)?;
            let started = Instant::now();
            reconciler.apply(&state)?;
            let s = started.elapsed().as_secs_f64();
            drop(_instance);
            let mut lab2 = Lab::new();
            let host = lab2.host();
            let i = iptables_restore(&host.netns, &rules, false)?.as_secs_f64();
            eprintln!(
                "    round {} {n:>6} services: skiff {:>8.1} ms, iptables-restore {:>8.1} ms",
                round + 1,
                s * 1e3,
                i * 1e3
            );
            skiff.push(s);
            ipt.push(i);
            ratios.push(s / i);
            drop(lab);
        }
        results.push(json!({
            "services": n, "backendsPerService": 10,
            "skiffSeconds": median(skiff.clone()), "iptablesSeconds": median(ipt.clone()),
            "skiffOverIptables": median(ratios.clone()),
            "rounds": {"skiff": skiff, "iptables": ipt},
        }));
    }

    // One endpoint change with the largest count programmed.
    let n = *counts.last().expect("counts");
    let mut state = desired(n, usize::MAX);
    let lab = Lab::new();
    let (_instance, mut reconciler) = attach(&lab)?;
    reconciler.apply(&state)?;
    let mut skiff_lat = Vec::new();
    for k in 0..changes {
        let i = (k * 7919) % n;
        let name = format!("bench/s{i}:{PORT}/TCP");
        let def = state.services.get_mut(&name).expect("service");
        // Replace one endpoint by a new address, as a pod being replaced.
        def.backends[k % 10] = BackendAddr {
            addr: Ipv4Addr::new(10, 99, (k / 250) as u8, (k % 250) as u8),
            port: TARGET_PORT,
        };
        def.backends.sort();
        let def = def.clone();
        let started = Instant::now();
        reconciler.apply_one(&name, Some(&def))?;
        skiff_lat.push(started.elapsed().as_secs_f64());
    }
    let mut lab2 = Lab::new();
    let host = lab2.host();
    iptables_restore(&host.netns, &iptables_rules(n, usize::MAX), false)?;
    let mut ipt_lat = Vec::new();
    for k in 0..ipt_changes {
        let i = (k * 7919) % n;
        let mut backends = backends_of(i, usize::MAX);
        backends[k % 10].addr = Ipv4Addr::new(10, 99, 0, k as u8);
        // kube-proxy's partial restore: the changed service chain is
        // redeclared (flushed) with new endpoint chains, the old ones
        // flushed and deleted.
        let (mut chains, mut rules) = (String::from("*nat\n"), String::new());
        svc_rules(i, &backends, k + 1, &mut chains, &mut rules);
        let old_generation = if k == 0 || (k - 1) * 7919 % n != i {
            0
        } else {
            k
        };
        for j in 0..10 {
            let old = format!("KUBE-SEP-{i:08}{old_generation:03}{j:02}");
            let _ = writeln!(chains, ":{old} - [0:0]");
            let _ = writeln!(rules, "-X {old}");
        }
        let input = format!("{chains}{rules}COMMIT\n");
        ipt_lat.push(iptables_restore(&host.netns, &input, true)?.as_secs_f64());
    }
    let (s50, s99) = (
        percentile(&mut skiff_lat.clone(), 0.5),
        percentile(&mut skiff_lat, 0.99),
    );
    let (i50, i99) = (
        percentile(&mut ipt_lat.clone(), 0.5),
        percentile(&mut ipt_lat, 0.99),
    );

    println!(
        "\n{:<44} {:>12} {:>12} {:>8}",
        "measure", "skiff", "iptables", "ratio"
    );
    for r in &results {
        println!(
            "{:<44} {:>10.1}ms {:>10.1}ms {:>8.3}",
            format!("program {} services x 10 from empty", r["services"]),
            r["skiffSeconds"].as_f64().unwrap_or(0.0) * 1e3,
            r["iptablesSeconds"].as_f64().unwrap_or(0.0) * 1e3,
            r["skiffOverIptables"].as_f64().unwrap_or(0.0)
        );
    }
    println!(
        "{:<44} {:>10.3}ms {:>10.1}ms {:>8.4}",
        format!("one endpoint change p50 ({n} services)"),
        s50 * 1e3,
        i50 * 1e3,
        s50 / i50
    );
    println!(
        "{:<44} {:>10.3}ms {:>10.1}ms {:>8.4}",
        format!("one endpoint change p99 ({n} services)"),
        s99 * 1e3,
        i99 * 1e3,
        s99 / i99
    );
    let path = write_json(
        "sync",
        &json!({
            "cores": cores, "kernel": kernel, "rounds": rounds, "fromEmpty": results,
            "endpointChange": {
                "services": n, "skiffChanges": changes, "iptablesChanges": ipt_changes,
                "skiffP50Seconds": s50, "skiffP99Seconds": s99,
                "iptablesP50Seconds": i50, "iptablesP99Seconds": i99,
            }
        }),
    )?;
    println!("figures written to {}", path.display());
    Ok(())
}
