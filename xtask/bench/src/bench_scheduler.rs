//! `cargo xtask bench scheduler`: 10,000 pods with resource requests (and
//! ten owners, so spreading counts) created as fast as the API takes them,
//! onto 1,000 and 5,000 simulated nodes (`skiff sim nodes`: Node objects,
//! no daemons). Measured: pods bound per second (first create → last bind
//! seen on the watch) and create → bound per pod. Floor, same run, same
//! server build: a naive first-fit binder written here (nodes in name
//! order, the first with room, one binding at a time) against a server
//! with `--no-controllers` (so it competes with nothing; skiff's scheduler
//! shares the server's two cores with every controller). Cited:
//! kube-scheduler's SchedulingBasic threshold, 270 pods/s at 5,000 nodes.
//! Also the server's resident memory once every pod is bound. With
//! `SKIFF_BENCH_BASELINE=/path/to/an/older/skiff` the same skiff runs are
//! made with that binary too, for before/after in one run.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures::StreamExt;
use serde_json::json;
use skiff_api::v1::{
    ConfigMap, Container, Namespace, OwnerReference, PodSpec, Quantity, ResourceRequirements,
};
use skiff_api::{Node, ObjectMeta, ParsedQuantity, Pod, Resource};
use skiff_client::{Client, ListParams, WatchEvent};
use skiff_testkit::KillOnDrop;

use crate::bench_api::{build_skiff, start_server_with};
use crate::benchkit::{machine, percentile, rerun_in_release, write_json};

const NS: &str = "bench";
const OWNERS: usize = 10;
const WRITERS: usize = 64;
const CONNECTIONS: usize = 4;
const KUBE_SCHEDULER_5K: f64 = 270.0;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Binder {
    Skiff,
    /// skiff's scheduler, in the `SKIFF_BENCH_BASELINE` binary.
    SkiffBaseline,
    NaiveFirstFit,
}

struct Outcome {
    /// The server's VmRSS once every pod is bound, MiB.
    rss_mib: f64,
    pods_per_s: f64,
    create_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
}

fn server(bin: &Path, data: &Path, binder: Binder) -> Result<(KillOnDrop, String)> {
    let mut flags = vec![
        // The simulated nodes renew their Leases once a minute here (10k
        // renewals/min at 5k nodes would be the load of another benchmark).
        "--node-monitor-grace-period",
        "600",
        // A pod network with room for a podCIDR per node at 5,000 nodes.
        "--cluster-cidr",
        "100.64.0.0/10",
    ];
    if binder == Binder::NaiveFirstFit {
        flags.push("--no-controllers");
    }
    start_server_with(bin, data, None, &flags)
}

fn sim(bin: &Path, url: &str, nodes: usize) -> Result<KillOnDrop> {
    sim_nodes(
        bin,
        url,
        nodes,
        &[
            "--cpu",
            "32",
            "--memory",
            "256Gi",
            "--max-pods",
            "110",
            "--heartbeat-seconds",
            "60",
            "--keep",
            "--prefix",
            "node",
        ],
    )
}

/// `skiff sim nodes --count N FLAGS`, once its nodes are ready.
pub(crate) fn sim_nodes(bin: &Path, url: &str, nodes: usize, flags: &[&str]) -> Result<KillOnDrop> {
    let mut child = Command::new(bin)
        .args(["sim", "nodes", "--count", &nodes.to_string()])
        .args(flags)
        .env("SKIFF_SERVER", url)
        .env("SKIFF_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("start skiff sim nodes")?;
    let mut err = BufReader::new(child.stderr.take().context("sim stderr")?);
    let mut line = String::new();
    let mut said = String::new();
    loop {
        line.clear();
        if err.read_line(&mut line)? == 0 {
            bail!("skiff sim nodes ended before its nodes were ready: {said}");
        }
        said.push_str(&line);
        if line.contains("simulated nodes ready") {
            break;
        }
    }
    std::thread::spawn(move || std::io::copy(&mut err, &mut std::io::sink()));
    Ok(KillOnDrop(child))
}

fn meta(name: &str) -> Option<ObjectMeta> {
    Some(ObjectMeta {
        name: name.into(),
        namespace: NS.into(),
        ..Default::default()
    })
}

fn pod(i: usize, owner: &ConfigMap) -> Pod {
    let m = owner.meta();
    let requests = [
        (
            "cpu".to_string(),
            Quantity {
                value: "100m".into(),
            },
        ),
        (
            "memory".to_string(),
            Quantity {
                value: "128Mi".into(),
            },
        ),
    ]
    .into();
    Pod {
        api_version: "v1".into(),
        kind: "Pod".into(),
        metadata: Some(ObjectMeta {
            name: format!("p{i}"),
            namespace: NS.into(),
            // A real owner object (the collector keeps the pod), no
            // controller of pods: only the scheduler's spreading sees it.
            owner_references: vec![OwnerReference {
                api_version: "v1".into(),
                kind: "ConfigMap".into(),
                name: m.name.clone(),
                uid: m.uid.clone(),
                controller: Some(true),
                block_owner_deletion: None,
            }],
            ..Default::default()
        }),
        spec: Some(PodSpec {
            containers: vec![Container {
                name: "main".into(),
                image: "demo:1".into(),
                resources: Some(ResourceRequirements {
                    requests,
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        }),
        status: None,
    }
}

/// The naive binder: nodes in name order, the first with room, one
/// binding at a time; its own accounting of what it bound.
async fn naive_binder(client: Client, total: usize) -> Result<()> {
    let nodes = client.list::<Node>("", &ListParams::default()).await?.items;
    let mut room: BTreeMap<String, (i64, i64, i64)> = nodes
        .iter()
        .map(|n| {
            let a = n
                .status
                .as_ref()
                .map(|s| s.allocatable.clone())
                .unwrap_or_default();
            let q = |k: &str, milli: bool| {
                a.get(k)
                    .and_then(|q| ParsedQuantity::parse(&q.value).ok())
                    .map(|q| if milli { q.milli_value() } else { q.value() })
                    .unwrap_or(0)
            };
            (
                n.name().to_string(),
                (q("cpu", true), q("memory", false), q("pods", false)),
            )
        })
        .collect();
    let mut events = client
        .watch::<Pod>(NS, &ListParams::default(), None)
        .await?;
    let mut bound = 0;
    while bound < total {
        let Some(ev) = events.next().await else {
            bail!("the watch ended");
        };
        let WatchEvent::Added(mut p) = ev? else {
            continue;
        };
        if p.spec.as_ref().is_some_and(|s| !s.node_name.is_empty()) {
            continue;
        }
        let (cpu, mem) = (100, 128 << 20);
        let Some((name, r)) = room
            .iter_mut()
            .find(|(_, r)| r.0 >= cpu && r.1 >= mem && r.2 >= 1)
        else {
            bail!("the naive binder found no room");
        };
        *r = (r.0 - cpu, r.1 - mem, r.2 - 1);
        p.spec.get_or_insert_with(Default::default).node_name = name.clone();
        client.update(&p).await?;
        bound += 1;
    }
    Ok(())
}

/// A process's resident set (VmRSS), MiB.
pub(crate) fn rss_mib(pid: u32) -> Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("no VmRSS")?;
    Ok(kb / 1024.0)
}

async fn measure(url: &str, total: usize, binder: Binder, pid: u32) -> Result<Outcome> {
    let mut clients = Vec::new();
    for _ in 0..CONNECTIONS {
        clients.push(Client::connect(url).await?);
    }
    let c0 = clients[0].clone();
    c0.create(&Namespace {
        metadata: Some(ObjectMeta {
            name: NS.into(),
            ..Default::default()
        }),
        ..Default::default()
    })
    .await?;
    let mut owners = Vec::new();
    for i in 0..OWNERS {
        owners.push(
            c0.create(&ConfigMap {
                metadata: meta(&format!("owner{i}")),
                ..Default::default()
            })
            .await?,
        );
    }
    // Bound times from the watch, which starts before the first create.
    let bound: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let mut events = c0.watch::<Pod>(NS, &ListParams::default(), None).await?;
    let seen = bound.clone();
    let watcher = tokio::spawn(async move {
        while let Some(Ok(ev)) = events.next().await {
            let Some(p) = ev.object() else { continue };
            if p.spec.as_ref().is_some_and(|s| !s.node_name.is_empty()) {
                let mut b = seen.lock().expect("bound");
                b.entry(p.name().to_string()).or_insert_with(Instant::now);
                if b.len() == total {
                    return;
                }
            }
        }
    });
    let naive =
        (binder == Binder::NaiveFirstFit).then(|| tokio::spawn(naive_binder(c0.clone(), total)));

    let created: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let start = Instant::now();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let owners = Arc::new(owners);
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let (client, next, created, owners) = (
            clients[w % CONNECTIONS].clone(),
            next.clone(),
            created.clone(),
            owners.clone(),
        );
        writers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= total {
                    return Ok::<_, anyhow::Error>(());
                }
                let p = pod(i, &owners[i % OWNERS]);
                let t = Instant::now();
                client.create(&p).await?;
                created
                    .lock()
                    .expect("created")
                    .insert(p.name().to_string(), t);
            }
        }));
    }
    for w in writers {
        w.await??;
    }
    let create_s = start.elapsed().as_secs_f64();
    if tokio::time::timeout(Duration::from_secs(600), watcher)
        .await
        .is_err()
    {
        bail!("not every pod was bound within 10 minutes");
    }
    if let Some(n) = naive {
        n.await??;
    }
    let rss_mib = rss_mib(pid)?;
    let bound = bound.lock().expect("bound");
    let created = created.lock().expect("created");
    let last = bound.values().max().copied().context("nothing bound")?;
    let mut lat: Vec<f64> = created
        .iter()
        .filter_map(|(n, t)| Some(bound.get(n)?.duration_since(*t).as_secs_f64() * 1000.0))
        .collect();
    Ok(Outcome {
        rss_mib,
        pods_per_s: total as f64 / last.duration_since(start).as_secs_f64(),
        create_per_s: total as f64 / create_s,
        p50_ms: percentile(&mut lat, 0.5),
        p99_ms: percentile(&mut lat, 0.99),
    })
}

pub fn run(quick: bool) -> Result<()> {
    if !quick && rerun_in_release(&["bench", "scheduler"])? {
        return Ok(());
    }
    let (total, sizes): (usize, &[usize]) = if quick {
        (1000, &[100, 500])
    } else {
        (10_000, &[1000, 5000])
    };
    let bin = build_skiff(quick)?;
    let baseline = std::env::var_os("SKIFF_BENCH_BASELINE").map(std::path::PathBuf::from);
    let rt = tokio::runtime::Runtime::new()?;
    let mut rows = Vec::new();
    let mut binders = vec![Binder::NaiveFirstFit, Binder::Skiff];
    if baseline.is_some() {
        binders.push(Binder::SkiffBaseline);
    }
    for &nodes in sizes {
        for &binder in &binders {
            eprintln!("==> {binder:?}: {total} pods onto {nodes} simulated nodes");
            let data = tempfile::tempdir()?;
            let server_bin = match (binder, &baseline) {
                (Binder::SkiffBaseline, Some(b)) => b.as_path(),
                _ => bin.as_path(),
            };
            let (server, url) = server(server_bin, data.path(), binder)?;
            let sim = sim(&bin, &url, nodes)?;
            let o = rt.block_on(measure(&url, total, binder, server.0.id()))?;
            drop(sim);
            drop(server);
            rows.push((nodes, binder, o));
        }
    }
    let (cores, kernel) = machine();
    println!("\n{total} pods (100m cpu, 128Mi each, 10 owners), {cores} cores, kernel {kernel}:");
    println!(
        "{:>6}  {:<18} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}",
        "nodes", "binder", "pods/s", "x naive", "create/s", "p50 ms", "p99 ms", "RSS MiB"
    );
    let mut json_rows = Vec::new();
    for (nodes, binder, o) in &rows {
        let naive = rows
            .iter()
            .find(|(n, b, _)| n == nodes && *b == Binder::NaiveFirstFit)
            .map(|(_, _, o)| o.pods_per_s)
            .unwrap_or(f64::NAN);
        println!(
            "{nodes:>6}  {:<18} {:>10.0} {:>10.2} {:>10.0} {:>10.0} {:>10.0} {:>10.0}",
            format!("{binder:?}"),
            o.pods_per_s,
            o.pods_per_s / naive,
            o.create_per_s,
            o.p50_ms,
            o.p99_ms,
            o.rss_mib
        );
        json_rows.push(json!({
            "nodes": nodes, "binder": format!("{binder:?}"), "pods_per_s": o.pods_per_s,
            "ratio_to_naive": o.pods_per_s / naive, "create_per_s": o.create_per_s,
            "p50_ms": o.p50_ms, "p99_ms": o.p99_ms, "server_rss_mib": o.rss_mib,
        }));
    }
    println!(
        "cited: kube-scheduler SchedulingBasic threshold {KUBE_SCHEDULER_5K} pods/s at 5000 nodes \
         (kubernetes test/integration/scheduler_perf, SchedulingBasic/5000Nodes)"
    );
    let path = write_json(
        "scheduler",
        &json!({"pods": total, "cores": cores, "kernel": kernel, "rows": json_rows,
                "kube_scheduler_threshold_5k_nodes": KUBE_SCHEDULER_5K}),
    )?;
    println!("\nresults: {}", path.display());
    Ok(())
}
