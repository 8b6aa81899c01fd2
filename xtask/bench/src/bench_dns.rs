//! `cargo xtask bench dns` (../shared/benchmarks.md): dnsperf against
//! `skiff dns` serving 10,000 Services and against dnsmasq serving the same
//! names from generated files, each server pinned to core 0 (dnsperf on
//! core 1), rounds interleaved; a query mix of A, SRV and NXDOMAIN names.
//! Throughput at full load (dnsperf's own figure), latency p50/p99 at a
//! fixed 10k qps (dnsperf -v per-query latencies), and DNS programming
//! latency: a Service created through the API until `skiff dns` answers it.

use std::fmt::Write as _;
use std::net::UdpSocket;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::json;
use skiff_api::v1::{ServicePort, ServiceSpec};
use skiff_api::{ObjectMeta, Service};
use skiff_testkit::{KillOnDrop, free_port, wait_http_ok};

use crate::bench_api::{build_skiff, start_server};
use crate::benchkit::{machine, median, percentile, write_json};

fn cluster_ip(i: usize) -> String {
    format!("10.96.{}.{}", 100 + i / 250, 1 + i % 250)
}

fn service(i: usize, prefix: &str) -> Service {
    Service {
        metadata: Some(ObjectMeta {
            name: format!("{prefix}{i}"),
            namespace: "bench".into(),
            ..Default::default()
        }),
        spec: Some(ServiceSpec {
            cluster_ip: if prefix == "s" {
                cluster_ip(i)
            } else {
                String::new()
            },
            ports: vec![ServicePort {
                name: "http".into(),
                protocol: "TCP".into(),
                port: 80,
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    }
}

async fn create_services(server: &str, n: usize) -> Result<skiff_client::Client> {
    let client = skiff_client::Client::connect(server).await?;
    let ns = skiff_api::Namespace {
        metadata: Some(ObjectMeta {
            name: "bench".into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let _ = client.create(&ns).await;
    let mut tasks = Vec::new();
    for w in 0..16 {
        let c = client.clone();
        tasks.push(tokio::spawn(async move {
            let mut i = w;
            while i < n {
                c.create(&service(i, "s"))
                    .await
                    .map_err(|e| anyhow::anyhow!("create s{i}: {e}"))?;
                i += 16;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(client)
}

/// A minimal DNS query for `name` A; returns whether it had an answer.
fn answered(socket: &UdpSocket, id: u16, name: &str) -> Result<bool> {
    let mut q = Vec::with_capacity(64);
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.trim_end_matches('.').split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    socket.send(&q)?;
    let mut buf = [0u8; 1500];
    loop {
        let n = socket.recv(&mut buf)?;
        if n >= 12 && buf[..2] == id.to_be_bytes() {
            return Ok(u16::from_be_bytes([buf[6], buf[7]]) > 0);
        }
    }
}

fn dnsperf(port: u16, queries: &Path, seconds: u64, qps: Option<u32>) -> Result<String> {
    let mut cmd = Command::new("taskset");
    cmd.args([
        "-c",
        "1",
        "dnsperf",
        "-s",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "-d",
    ])
    .arg(queries)
    .args(["-l", &seconds.to_string(), "-c", "8", "-q", "200"]);
    if let Some(q) = qps {
        cmd.args(["-Q", &q.to_string(), "-v"]);
    }
    let out = cmd.output().context("run dnsperf")?;
    if !out.status.success() {
        bail!("dnsperf: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn qps_of(report: &str) -> (f64, f64) {
    let field = |key: &str| {
        report
            .lines()
            .find(|l| l.trim_start().starts_with(key))
            .and_then(|l| l.split(':').nth(1))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (field("Queries per second"), field("Queries lost"))
}

fn latencies(report: &str) -> Vec<f64> {
    report
        .lines()
        .filter(|l| l.starts_with("> "))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .collect()
}

pub fn run(quick: bool) -> Result<()> {
    if !quick && crate::benchkit::rerun_in_release(&["bench", "dns"])? {
        return Ok(());
    }
    for (tool, package) in [
        ("dnsperf", "dnsperf"),
        ("dnsmasq", "dnsmasq-base"),
        ("taskset", "util-linux"),
    ] {
        if !crate::have(tool) {
            bail!(
                "{tool} is missing: apt-get install {package} (bash .ci/run --setup-only installs it)"
            );
        }
    }
    let (n, rounds, seconds, changes) = if quick {
        (1000, 1, 2, 50)
    } else {
        (10_000, 3, 5, 300)
    };
    let (cores, kernel) = machine();
    println!(
        "bench dns: {cores} cores, kernel {kernel}; servers on core 0, dnsperf on core 1; {n} Services, {rounds} rounds"
    );
    let bin = build_skiff(quick)?;
    let dir = tempfile::tempdir()?;
    let (_server, addr) = start_server(&bin, &dir.path().join("data"), None)?;
    let rt = tokio::runtime::Runtime::new()?;
    eprintln!("==> creating {n} Services");
    let started = Instant::now();
    let client = rt.block_on(create_services(&addr, n))?;
    eprintln!("    {:.1} s", started.elapsed().as_secs_f64());

    let dns_port = free_port();
    let metrics = format!("127.0.0.1:{}", free_port());
    let _dns = KillOnDrop(
        Command::new("taskset")
            .args(["-c", "0"])
            .arg(&bin)
            .args(["--server", &addr, "dns", "--no-forward", "--no-register"])
            .args([
                "--listen",
                &format!("127.0.0.1:{dns_port}"),
                "--metrics-listen",
                &metrics,
            ])
            .env("TOKIO_WORKER_THREADS", "1")
            .env("SKIFF_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .context("start skiff dns")?,
    );
    if !wait_http_ok(&metrics, "/healthz", Duration::from_secs(60)) {
        bail!("skiff dns did not sync");
    }

    // dnsmasq with the same names: A from a hosts file, SRV lines, and the
    // cluster domain local (so unknown names are NXDOMAIN, not forwarded).
    let (mut hosts, mut conf) = (String::new(), String::new());
    for i in 0..n {
        let _ = writeln!(hosts, "{} s{i}.bench.svc.cluster.local", cluster_ip(i));
        let _ = writeln!(
            conf,
            "srv-host=_http._tcp.s{i}.bench.svc.cluster.local,s{i}.bench.svc.cluster.local,80,0,100"
        );
    }
    let hosts_path = dir.path().join("hosts");
    let conf_path = dir.path().join("dnsmasq.conf");
    std::fs::write(&hosts_path, hosts)?;
    let _ = writeln!(conf, "local=/cluster.local/");
    std::fs::write(&conf_path, conf)?;
    let start_dnsmasq = |conf: &Path| -> Result<(KillOnDrop, u16)> {
        let port = free_port();
        let child = Command::new("taskset")
            .args([
                "-c",
                "0",
                "dnsmasq",
                "--no-daemon",
                "--no-resolv",
                "--no-hosts",
                "--bind-interfaces",
            ])
            .args([
                "--listen-address=127.0.0.1",
                "--user=root",
                "--local-ttl=5",
                "--cache-size=10000",
            ])
            .arg(format!("--port={port}"))
            .arg(format!("--addn-hosts={}", hosts_path.display()))
            .arg(format!("--conf-file={}", conf.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("start dnsmasq")?;
        Ok((KillOnDrop(child), port))
    };
    let (_dnsmasq, masq_port) = start_dnsmasq(&conf_path)?;
    // dnsmasq walks its SRV list on every query: for the A-only mix, a
    // second one with the hosts file alone is its best case.
    let hosts_only = dir.path().join("dnsmasq-hosts-only.conf");
    std::fs::write(&hosts_only, "local=/cluster.local/\n")?;
    let (_dnsmasq_a, masq_a_port) = start_dnsmasq(&hosts_only)?;
    // Both answer the same names before anything is measured.
    let probe = UdpSocket::bind("127.0.0.1:0")?;
    probe.set_read_timeout(Some(Duration::from_secs(2)))?;
    for port in [dns_port, masq_port, masq_a_port] {
        probe.connect(("127.0.0.1", port))?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !answered(&probe, 1, &format!("s{}.bench.svc.cluster.local", n - 1)).unwrap_or(false)
        {
            if Instant::now() > deadline {
                bail!("the server on port {port} does not answer the generated names");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    let mut queries = String::new();
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    for _ in 0..50_000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let i = (x % n as u64) as usize;
        match x % 10 {
            0..=5 => writeln!(queries, "s{i}.bench.svc.cluster.local A")?,
            6 | 7 => writeln!(queries, "_http._tcp.s{i}.bench.svc.cluster.local SRV")?,
            _ => writeln!(queries, "missing{i}.bench.svc.cluster.local A")?,
        }
    }
    let qpath = dir.path().join("queries");
    std::fs::write(&qpath, queries)?;
    // A fairer second mix for dnsmasq, whose SRV lines are a linear list:
    // A queries for existing names only (its hashed hosts file).
    let mut a_only = String::new();
    for k in 0..50_000 {
        writeln!(a_only, "s{}.bench.svc.cluster.local A", (k * 7919) % n)?;
    }
    let apath = dir.path().join("queries-a");
    std::fs::write(&apath, a_only)?;

    let (mut skiff_qps, mut masq_qps, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    let (mut skiff_a, mut masq_a, mut ratios_a) = (Vec::new(), Vec::new(), Vec::new());
    let (mut skiff_lat, mut masq_lat) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        let order = if round % 2 == 0 {
            [dns_port, masq_port]
        } else {
            [masq_port, dns_port]
        };
        let mut got = [0.0; 2];
        for port in order {
            let (qps, lost) = qps_of(&dnsperf(port, &qpath, seconds, None)?);
            let who = if port == dns_port {
                "skiff dns"
            } else {
                "dnsmasq"
            };
            eprintln!(
                "    round {} {who:<10} {qps:>10.0} q/s ({lost} lost)",
                round + 1
            );
            got[usize::from(port != dns_port)] = qps;
        }
        skiff_qps.push(got[0]);
        masq_qps.push(got[1]);
        ratios.push(got[0] / got[1].max(1.0));
        let order_a = if round % 2 == 0 {
            [dns_port, masq_a_port]
        } else {
            [masq_a_port, dns_port]
        };
        for port in order_a {
            let (qps, _) = qps_of(&dnsperf(port, &apath, seconds, None)?);
            let who = if port == dns_port {
                "skiff dns"
            } else {
                "dnsmasq (hosts only)"
            };
            eprintln!("    round {} {who:<10} {qps:>10.0} q/s (A only)", round + 1);
            got[usize::from(port != dns_port)] = qps;
        }
        skiff_a.push(got[0]);
        masq_a.push(got[1]);
        ratios_a.push(got[0] / got[1].max(1.0));
        skiff_lat.extend(latencies(&dnsperf(dns_port, &qpath, 2, Some(10_000))?));
        masq_lat.extend(latencies(&dnsperf(masq_port, &qpath, 2, Some(10_000))?));
    }

    // Programming latency: create a Service, ask until it answers.
    eprintln!("==> DNS programming latency over {changes} new Services");
    probe.connect(("127.0.0.1", dns_port))?;
    let mut programming = Vec::new();
    for k in 0..changes {
        let svc = service(k, "p");
        let start = Instant::now();
        rt.block_on(client.create(&svc))
            .map_err(|e| anyhow::anyhow!("create p{k}: {e}"))?;
        let name = format!("p{k}.bench.svc.cluster.local");
        let mut id = 2u16;
        while !answered(&probe, id, &name)? {
            id = id.wrapping_add(1);
            if start.elapsed() > Duration::from_secs(5) {
                bail!("{name} not answered within 5 s");
            }
        }
        programming.push(start.elapsed().as_secs_f64());
    }
    let (p50, p99) = (
        percentile(&mut programming.clone(), 0.5),
        percentile(&mut programming, 0.99),
    );
    let (s50, s99) = (
        percentile(&mut skiff_lat.clone(), 0.5),
        percentile(&mut skiff_lat, 0.99),
    );
    let (m50, m99) = (
        percentile(&mut masq_lat.clone(), 0.5),
        percentile(&mut masq_lat, 0.99),
    );
    let (sq, mq, r) = (
        median(skiff_qps.clone()),
        median(masq_qps.clone()),
        median(ratios.clone()),
    );
    println!(
        "\n{:<46} {:>12} {:>12} {:>8}",
        "measure", "skiff dns", "dnsmasq", "ratio"
    );
    println!(
        "{:<46} {:>12.0} {:>12.0} {:>8.2}",
        "queries/s (one core, A/SRV/NXDOMAIN mix)", sq, mq, r
    );
    let (sa, ma, ra) = (
        median(skiff_a.clone()),
        median(masq_a.clone()),
        median(ratios_a.clone()),
    );
    println!(
        "{:<46} {:>12.0} {:>12.0} {:>8.2}",
        "q/s, A for existing names (dnsmasq hosts only)", sa, ma, ra
    );
    println!(
        "{:<46} {:>10.3}ms {:>10.3}ms",
        "latency p50 at 10k q/s",
        s50 * 1e3,
        m50 * 1e3
    );
    println!(
        "{:<46} {:>10.3}ms {:>10.3}ms",
        "latency p99 at 10k q/s",
        s99 * 1e3,
        m99 * 1e3
    );
    println!(
        "{:<46} {:>10.1}ms {:>10.1}ms",
        "API write → answer p50 / p99",
        p50 * 1e3,
        p99 * 1e3
    );
    let path = write_json(
        "dns",
        &json!({
            "cores": cores, "kernel": kernel, "services": n, "rounds": rounds, "secondsPerRun": seconds,
            "skiffQps": sq, "dnsmasqQps": mq, "skiffOverDnsmasq": r,
            "aOnly": {"skiffQps": sa, "dnsmasqQps": ma, "skiffOverDnsmasq": ra, "rounds": {"skiff": skiff_a, "dnsmasq": masq_a}},
            "rounds_": {"skiff": skiff_qps, "dnsmasq": masq_qps, "ratios": ratios},
            "latencyAt10kQps": {"skiffP50": s50, "skiffP99": s99, "dnsmasqP50": m50, "dnsmasqP99": m99},
            "programmingLatency": {"changes": changes, "p50": p50, "p99": p99},
        }),
    )?;
    println!("figures written to {}", path.display());
    Ok(())
}
