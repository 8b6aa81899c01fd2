//! `cargo xtask bench pods` (root): pods of a pre-imported image on one
//! node, create → Running and create → first connection through their
//! Service, against `ctr run -d` of the same image and count started at
//! once on the same containerd, in the same run.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures::StreamExt;
use skiff_api::v1::{Container, ContainerPort, IntOrString, PodSpec, ServicePort, ServiceSpec};
use skiff_api::{ObjectMeta, Pod, Service};
use skiff_client::{Client, ListParams, WatchEvent};
use skiff_testkit::cluster::Cluster;

use crate::bench_api::build_skiff;
use crate::benchkit::{machine, percentile, rerun_in_release, write_json};

const IMAGE: &str = "docker.io/library/busybox:latest";
const CTR_NS: &str = "skiff-bench-ctr";

fn stats(mut v: Vec<f64>) -> (f64, f64) {
    let p50 = percentile(&mut v, 0.5);
    let p99 = percentile(&mut v, 0.99);
    (p50, p99)
}

fn ctr(sock: &Path) -> Command {
    let mut c = Command::new("ctr");
    c.arg("--address").arg(sock).args(["-n", CTR_NS]);
    c
}

/// `count` × `ctr run -d` at once; each one's duration (until its task
/// runs) in ms.
fn baseline(sock: &Path, count: usize) -> Result<Vec<f64>> {
    // ctr works in its own namespace: the image is imported there too.
    let import = |tar: &Path| {
        ctr(sock)
            .args(["images", "import"])
            .arg(tar)
            .stdout(Stdio::null())
            .status()
    };
    let tar = std::env::temp_dir().join(format!("skiff-bench-{}.tar", std::process::id()));
    let ok = Command::new(
        std::env::current_exe()?
            .parent()
            .context("bin dir")?
            .join("skiff"),
    )
    .args(["image", "build-busybox"])
    .arg(&tar)
    .stdout(Stdio::null())
    .status();
    if !ok.is_ok_and(|s| s.success()) {
        // The bench runs from target/<profile>: skiff is next to it.
        bail!("building the image for ctr failed");
    }
    if !import(&tar)?.success() {
        bail!("ctr images import failed");
    }
    let _ = std::fs::remove_file(&tar);
    let started = Instant::now();
    let children: Vec<_> = (0..count)
        .map(|i| {
            ctr(sock)
                .args([
                    "run",
                    "-d",
                    IMAGE,
                    &format!("bench-{i}"),
                    "httpd",
                    "-f",
                    "-p",
                    "8080",
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
        })
        .collect::<std::io::Result<_>>()?;
    // Each one's own end: a thread waits for each.
    let waits: Vec<_> = children
        .into_iter()
        .map(|mut c| {
            std::thread::spawn(move || -> Result<f64> {
                let s = c.wait()?;
                if !s.success() {
                    bail!("ctr run failed ({s})");
                }
                Ok(started.elapsed().as_secs_f64() * 1e3)
            })
        })
        .collect();
    let mut out = Vec::new();
    for w in waits {
        out.push(
            w.join()
                .map_err(|_| anyhow::anyhow!("a waiter panicked"))??,
        );
    }
    for i in 0..count {
        let id = format!("bench-{i}");
        let _ = ctr(sock).args(["tasks", "kill", "-s", "9", &id]).status();
    }
    std::thread::sleep(Duration::from_millis(500));
    for i in 0..count {
        let id = format!("bench-{i}");
        let _ = ctr(sock)
            .args(["tasks", "rm", "-f", &id])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = ctr(sock)
            .args(["containers", "rm", &id])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
    skiff_testkit::cluster::remove_cgroups(CTR_NS);
    Ok(out)
}

fn pod(i: usize) -> Pod {
    Pod {
        api_version: "v1".into(),
        kind: "Pod".into(),
        metadata: Some(ObjectMeta {
            name: format!("bench-{i}"),
            namespace: "default".into(),
            labels: [("app".to_string(), "bench".to_string())].into(),
            ..Default::default()
        }),
        spec: Some(PodSpec {
            termination_grace_period_seconds: Some(1),
            containers: vec![Container {
                name: "web".into(),
                image: "busybox".into(),
                command: vec![
                    "sh".into(),
                    "-c".into(),
                    "mkdir -p /tmp/w && echo $HOSTNAME > /tmp/w/index.html && exec httpd -f -p 8080 -h /tmp/w".into(),
                ],
                ports: vec![ContainerPort {
                    container_port: 8080,
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }),
        status: None,
    }
}

/// One GET through the ClusterIP: the pod that answered.
fn ask(vip: &str) -> Option<String> {
    let mut s = std::net::TcpStream::connect_timeout(
        &format!("{vip}:80").parse().ok()?,
        Duration::from_millis(500),
    )
    .ok()?;
    s.set_read_timeout(Some(Duration::from_millis(500))).ok()?;
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    out.lines()
        .last()
        .map(|l| l.trim().to_string())
        .filter(|l| l.starts_with("bench-"))
}

pub fn run(quick: bool) -> Result<()> {
    if !quick && rerun_in_release(&["bench", "pods"])? {
        return Ok(());
    }
    let count = if quick { 10 } else { 50 };
    let bin = build_skiff(quick)?;
    eprintln!("==> a one-node cluster (private containerd, server, node)");
    let c = Cluster::start(&bin).context("containerd, runc or ip is missing")?;
    let tar = c.dir.path().join("image.tar");
    c.skiff_ok(&["image", "build-busybox", tar.to_str().unwrap_or_default()]);
    c.skiff_ok(&["image", "import", tar.to_str().unwrap_or_default()]);

    eprintln!("==> baseline: {count} × ctr run -d at once");
    let ctr_ms = baseline(&c.containerd_sock, count)?;

    eprintln!("==> skiff: {count} pods and their Service");
    let rt = tokio::runtime::Runtime::new()?;
    let (running_ms, answer_ms) = rt.block_on(async {
        let client = Client::connect_with(&skiff_testkit::admin_credentials(
            &c.dir.path().join("server"),
        ))
        .await?;
        let svc = Service {
            api_version: "v1".into(),
            kind: "Service".into(),
            metadata: Some(ObjectMeta {
                name: "bench".into(),
                namespace: "default".into(),
                ..Default::default()
            }),
            spec: Some(ServiceSpec {
                selector: [("app".to_string(), "bench".to_string())].into(),
                ports: vec![ServicePort {
                    port: 80,
                    target_port: Some(IntOrString::int(8080)),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            status: None,
        };
        let svc = client.create(&svc).await?;
        let vip = svc.spec.map(|s| s.cluster_ip).unwrap_or_default();
        let mut watch = client
            .watch::<Pod>("default", &ListParams::default().labels("app=bench"), None)
            .await?;
        // This process joins the pods' cgroup: the socket load balancer
        // of the node (kept to that cgroup) then carries its connections.
        let procs = skiff_testkit::cluster::cgroup_roots()[0]
            .join(&c.cgroup_parent)
            .join("cgroup.procs");
        std::fs::write(&procs, std::process::id().to_string())
            .context("joining the pods' cgroup")?;
        let start = Instant::now();
        let creates = (0..count).map(|i| {
            let client = client.clone();
            async move { client.create(&pod(i)).await }
        });
        for r in futures::future::join_all(creates).await {
            r?;
        }
        let mut running: HashMap<String, f64> = HashMap::new();
        let mut answered: HashMap<String, f64> = HashMap::new();
        let asker = {
            let vip = vip.clone();
            std::thread::spawn(move || {
                let mut seen: HashMap<String, f64> = HashMap::new();
                while seen.len() < count && start.elapsed() < Duration::from_secs(120) {
                    if let Some(name) = ask(&vip) {
                        seen.entry(name)
                            .or_insert(start.elapsed().as_secs_f64() * 1e3);
                    }
                }
                seen
            })
        };
        while running.len() < count && start.elapsed() < Duration::from_secs(120) {
            let ev = tokio::time::timeout(Duration::from_secs(5), watch.next()).await;
            let Ok(Some(Ok(WatchEvent::Added(p) | WatchEvent::Modified(p)))) = ev else {
                continue;
            };
            if p.status.as_ref().is_some_and(|s| s.phase == "Running") {
                let name = p.metadata.map(|m| m.name).unwrap_or_default();
                running
                    .entry(name)
                    .or_insert(start.elapsed().as_secs_f64() * 1e3);
            }
        }
        answered.extend(
            asker
                .join()
                .map_err(|_| anyhow::anyhow!("the asker panicked"))?,
        );
        // Out of the pods' cgroup again, so the cluster can remove it.
        let root = skiff_testkit::cluster::cgroup_roots()[0].join("cgroup.procs");
        std::fs::write(&root, std::process::id().to_string())?;
        for i in 0..count {
            let _ = client
                .delete_with_grace::<Pod>("default", &format!("bench-{i}"), 0)
                .await;
        }
        if running.len() < count || answered.len() < count {
            bail!(
                "{} pods Running and {} answering of {count} after 120 s",
                running.len(),
                answered.len()
            );
        }
        anyhow::Ok((
            running.into_values().collect::<Vec<_>>(),
            answered.into_values().collect::<Vec<_>>(),
        ))
    })?;
    let (c50, c99) = stats(ctr_ms.clone());
    let (r50, r99) = stats(running_ms.clone());
    let (a50, a99) = stats(answer_ms.clone());
    let (cores, kernel) = machine();
    println!(
        "\n{count} at once on one node ({cores} cores, kernel {kernel}); ms from the create call:"
    );
    println!("{:<44} {:>8} {:>8} {:>12}", "", "p50", "p99", "p99 / ctr");
    println!(
        "{:<44} {c50:>8.0} {c99:>8.0} {:>12}",
        "ctr run -d (task running)", "1.00"
    );
    println!(
        "{:<44} {r50:>8.0} {r99:>8.0} {:>12.2}",
        "skiff pod: create -> Running",
        r99 / c99
    );
    println!(
        "{:<44} {a50:>8.0} {a99:>8.0} {:>12.2}",
        "skiff pod: create -> answers via its Service",
        a99 / c99
    );
    let path = write_json(
        "pods",
        &serde_json::json!({
            "count": count, "cores": cores, "kernel": kernel,
            "ctr_ms": {"p50": c50, "p99": c99, "all": ctr_ms},
            "running_ms": {"p50": r50, "p99": r99, "all": running_ms},
            "answer_ms": {"p50": a50, "p99": a99, "all": answer_ms},
        }),
    )?;
    println!("\nresults: {}", path.display());
    drop(c);
    Ok(())
}
