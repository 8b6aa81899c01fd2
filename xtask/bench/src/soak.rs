//! `cargo xtask soak --minutes N`: a bounded soak of one `skiff server`
//! (embedded store, controllers) under steady load — writers updating
//! ConfigMaps, watchers following them, a Deployment scaled up and down
//! so pods churn on simulated nodes that report them Running. Sampled
//! every few seconds: the server's RSS and open file descriptors, the
//! watch lag (write → event seen), errors and pods. At the end the RSS
//! and fd slopes after warm-up (the first third, at least 10 minutes —
//! until the watch window is full and the store has compacted — left
//! out): flat means the fitted line moves less than 5 MiB (or 3 %) over
//! the measured window, and fds by fewer than 10; otherwise the command
//! fails. Runs shorter than about 11 minutes are refused as too short.
//! Written to target/bench/soak.json.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use futures::StreamExt;
use serde_json::json;
use skiff_api::v1::{
    ConfigMap, Container, Deployment, DeploymentSpec, LabelSelector, Namespace, PodSpec,
    PodTemplateSpec,
};
use skiff_api::{ObjectMeta, Pod, Resource};
use skiff_client::{Client, ListParams, WatchEvent, WatchOptions};

use crate::bench_api::{build_skiff, start_server_with};
use crate::bench_scheduler::{rss_mib, sim_nodes};
use crate::benchkit::{machine, percentile, rerun_in_release, write_json};

const NS: &str = "soak";
const WRITERS: usize = 4;
/// Writes per second of each writer.
const WRITE_RATE: u64 = 25;
const WATCHERS: usize = 10;
const NODES: usize = 20;
/// The Deployment goes between these sizes.
const REPLICAS: (i32, i32) = (10, 60);
const SCALE_EVERY: Duration = Duration::from_secs(15);
/// At least this much is warm-up (see `run`): two of the server's
/// compaction periods.
const WARM_UP: Duration = Duration::from_secs(600);

#[derive(Default)]
struct Counters {
    writes: AtomicU64,
    write_errors: AtomicU64,
    events: AtomicU64,
    watch_errors: AtomicU64,
    scale_errors: AtomicU64,
}

struct Sample {
    at_s: f64,
    rss_mib: f64,
    fds: usize,
    lag_p50_ms: f64,
    lag_p99_ms: f64,
    writes: u64,
    events: u64,
    errors: u64,
    pods: usize,
    /// Watches the server's watch cache feeds (its own and the clients').
    watchers: u64,
}

fn fds(pid: u32) -> Result<usize> {
    Ok(std::fs::read_dir(format!("/proc/{pid}/fd"))?.count())
}

/// One number of the server's /metrics.
fn metric(url: &str, name: &str) -> Option<u64> {
    let addr = url.trim_start_matches("http://");
    let (_, body) = skiff_testkit::http_get(addr, "/metrics")?;
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

fn meta(name: &str) -> Option<ObjectMeta> {
    Some(ObjectMeta {
        name: name.into(),
        namespace: NS.into(),
        ..Default::default()
    })
}

/// Least squares slope of `y` over `x`.
fn slope(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    if n < 2.0 {
        return 0.0;
    }
    let mx = points.iter().map(|p| p.0).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    if sxx == 0.0 { 0.0 } else { sxy / sxx }
}

fn deployment(replicas: i32) -> Deployment {
    let labels: std::collections::BTreeMap<String, String> =
        [("app".to_string(), "churn".to_string())].into();
    Deployment {
        metadata: meta("churn"),
        spec: Some(DeploymentSpec {
            replicas: Some(replicas),
            selector: Some(LabelSelector {
                match_labels: labels.clone(),
                ..Default::default()
            }),
            template: Some(PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels,
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![Container {
                        name: "c".into(),
                        image: "skiff.local/demo:1.0".into(),
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

async fn writer(client: Client, i: usize, stop: Instant, c: Arc<Counters>) {
    let name = format!("w{i}");
    let mut tick = tokio::time::interval(Duration::from_millis(1000 / WRITE_RATE));
    let mut current: Option<ConfigMap> = None;
    while Instant::now() < stop {
        tick.tick().await;
        let mut cm = current.take().unwrap_or_else(|| ConfigMap {
            metadata: meta(&name),
            ..Default::default()
        });
        cm.data.insert("t".into(), now_ns().to_string());
        let r = if cm.meta().resource_version.is_empty() {
            client.create(&cm).await
        } else {
            client.update(&cm).await
        };
        match r {
            Ok(cm) => {
                c.writes.fetch_add(1, Ordering::Relaxed);
                current = Some(cm);
            }
            Err(_) => {
                c.write_errors.fetch_add(1, Ordering::Relaxed);
                current = client.get::<ConfigMap>(NS, &name).await.ok();
            }
        }
    }
}

async fn watcher(client: Client, stop: Instant, c: Arc<Counters>, lags: Arc<Mutex<Vec<f64>>>) {
    let mut from: Option<String> = None;
    while Instant::now() < stop {
        let stream = client
            .watch_with::<ConfigMap>(
                NS,
                &ListParams::default(),
                from.as_deref(),
                WatchOptions {
                    bookmarks: true,
                    timeout_seconds: 60,
                },
            )
            .await;
        let mut stream = match stream {
            Ok(s) => s,
            Err(_) => {
                c.watch_errors.fetch_add(1, Ordering::Relaxed);
                from = None;
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        loop {
            let next = tokio::time::timeout_at(stop.into(), stream.next()).await;
            let Ok(Some(ev)) = next else { break };
            match ev {
                Ok(ev) => {
                    from = Some(ev.resource_version().to_string());
                    if let WatchEvent::Added(cm) | WatchEvent::Modified(cm) = &ev
                        && let Some(t) = cm.data.get("t").and_then(|t| t.parse::<u64>().ok())
                    {
                        let lag = now_ns().saturating_sub(t) as f64 / 1e6;
                        lags.lock().expect("lags").push(lag);
                        c.events.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Err(_) => {
                    c.watch_errors.fetch_add(1, Ordering::Relaxed);
                    from = None;
                    break;
                }
            }
        }
    }
}

async fn scaler(client: Client, stop: Instant, c: Arc<Counters>) {
    let mut up = true;
    let mut tick = tokio::time::interval(SCALE_EVERY);
    while Instant::now() < stop {
        tick.tick().await;
        let want = if up { REPLICAS.1 } else { REPLICAS.0 };
        up = !up;
        let scaled = async {
            let mut d = client.get::<Deployment>(NS, "churn").await?;
            if let Some(spec) = d.spec.as_mut() {
                spec.replicas = Some(want);
            }
            client.update(&d).await
        };
        if scaled.await.is_err() {
            c.scale_errors.fetch_add(1, Ordering::Relaxed);
        }
    }
}

async fn soak(url: &str, pid: u32, minutes: f64) -> Result<Vec<Sample>> {
    let client = Client::connect(url).await?;
    client
        .create(&Namespace {
            metadata: Some(ObjectMeta {
                name: NS.into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await?;
    client.create(&deployment(REPLICAS.0)).await?;
    let started = Instant::now();
    let stop = started + Duration::from_secs_f64(minutes * 60.0);
    let counters = Arc::new(Counters::default());
    let lags = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..WRITERS {
        tasks.spawn(writer(
            Client::connect(url).await?,
            i,
            stop,
            counters.clone(),
        ));
    }
    let watch_client = Client::connect(url).await?;
    for _ in 0..WATCHERS {
        tasks.spawn(watcher(
            watch_client.clone(),
            stop,
            counters.clone(),
            lags.clone(),
        ));
    }
    tasks.spawn(scaler(client.clone(), stop, counters.clone()));

    // About 40 samples, every 5 s at least.
    let every = Duration::from_secs_f64((minutes * 60.0 / 40.0).max(5.0));
    let mut samples = Vec::new();
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    eprintln!(
        "{:>7} {:>8} {:>5} {:>9} {:>9} {:>8} {:>8} {:>6} {:>5} {:>8}",
        "t (s)",
        "RSS MiB",
        "fds",
        "lag p50",
        "lag p99",
        "writes",
        "events",
        "errors",
        "pods",
        "watchers"
    );
    while Instant::now() < stop {
        tick.tick().await;
        let mut interval_lags = std::mem::take(&mut *lags.lock().expect("lags"));
        let pods = client
            .list::<Pod>(NS, &ListParams::default())
            .await
            .map_or(0, |l| l.items.len());
        let watchers = metric(url, "skiff_apiserver_cache_watchers").unwrap_or(0);
        let errors = counters.write_errors.load(Ordering::Relaxed)
            + counters.watch_errors.load(Ordering::Relaxed)
            + counters.scale_errors.load(Ordering::Relaxed);
        let s = Sample {
            at_s: started.elapsed().as_secs_f64(),
            rss_mib: rss_mib(pid)?,
            fds: fds(pid)?,
            lag_p50_ms: percentile(&mut interval_lags, 0.5),
            lag_p99_ms: percentile(&mut interval_lags, 0.99),
            writes: counters.writes.load(Ordering::Relaxed),
            events: counters.events.load(Ordering::Relaxed),
            errors,
            pods,
            watchers,
        };
        eprintln!(
            "{:>7.0} {:>8.1} {:>5} {:>9.1} {:>9.1} {:>8} {:>8} {:>6} {:>5} {:>8}",
            s.at_s,
            s.rss_mib,
            s.fds,
            s.lag_p50_ms,
            s.lag_p99_ms,
            s.writes,
            s.events,
            s.errors,
            s.pods,
            s.watchers
        );
        samples.push(s);
    }
    while tasks.join_next().await.is_some() {}
    Ok(samples)
}

pub fn run(args: &[&str]) -> Result<()> {
    let minutes: f64 = match args {
        ["--minutes", m] => m
            .parse()
            .ok()
            .filter(|m: &f64| *m > 0.0)
            .context("--minutes takes a positive number")?,
        [] => 20.0,
        _ => bail!("usage: cargo xtask soak [--minutes N]"),
    };
    let mut again = vec!["soak".to_string()];
    again.extend(args.iter().map(|a| a.to_string()));
    let again: Vec<&str> = again.iter().map(String::as_str).collect();
    if rerun_in_release(&again)? {
        return Ok(());
    }
    let bin = build_skiff(false)?;
    let data = tempfile::tempdir()?;
    // Events expire after two minutes here, so that a soak of minutes
    // sees their steady state as a day does with the default hour.
    let (server, url) = start_server_with(&bin, data.path(), None, &["--event-ttl", "120"])?;
    let sim = sim_nodes(&bin, &url, NODES, &["--pods-running", "--prefix", "soak"])?;
    eprintln!(
        "==> soak: {minutes} min, {WRITERS} writers at {WRITE_RATE}/s, {WATCHERS} watchers, a Deployment between {} and {} pods on {NODES} simulated nodes",
        REPLICAS.0, REPLICAS.1
    );
    let rt = tokio::runtime::Runtime::new()?;
    let samples = rt.block_on(soak(&url, server.0.id(), minutes))?;
    drop(sim);
    drop(server);

    // Warm-up: the watch cache's window (20,000 events) fills in about
    // three and a half minutes at this load; the store's history (and its
    // page cache, 16 MiB) grows until the first compaction that removes
    // any, at ten minutes (each compacts to where the previous one saw
    // the store); RSS with them.
    let warm = (minutes * 60.0 / 3.0).max(WARM_UP.as_secs_f64());
    let steady: Vec<&Sample> = samples.iter().filter(|s| s.at_s >= warm).collect();
    if steady.len() < 3 {
        bail!(
            "too short to measure after warm-up ({} samples): soak longer",
            steady.len()
        );
    }
    let window_h = (steady.last().expect("samples").at_s - steady[0].at_s) / 3600.0;
    let rss_points: Vec<(f64, f64)> = steady
        .iter()
        .map(|s| (s.at_s / 3600.0, s.rss_mib))
        .collect();
    let fd_points: Vec<(f64, f64)> = steady
        .iter()
        .map(|s| (s.at_s / 3600.0, s.fds as f64))
        .collect();
    let rss_slope = slope(&rss_points);
    let fd_slope = slope(&fd_points);
    let mean_rss = rss_points.iter().map(|p| p.1).sum::<f64>() / rss_points.len() as f64;
    let rss_drift = rss_slope * window_h;
    let fd_drift = fd_slope * window_h;
    let rss_flat = rss_drift.abs() < 5.0_f64.max(0.03 * mean_rss);
    let fds_flat = fd_drift.abs() < 10.0;
    let mut lags: Vec<f64> = steady.iter().map(|s| s.lag_p99_ms).collect();
    let last = samples.last().expect("samples");
    let (cores, kernel) = machine();
    println!(
        "\nsoak, {minutes} min on {cores} cores, kernel {kernel}: {} writes, {} watch events, {} errors",
        last.writes, last.events, last.errors
    );
    println!(
        "after warm-up ({warm:.0} s): RSS {mean_rss:.1} MiB on average, slope {rss_slope:+.1} MiB/h ({rss_drift:+.1} MiB over the window: {}); fds slope {fd_slope:+.1}/h ({fd_drift:+.1}: {}); worst watch lag p99 {:.1} ms",
        if rss_flat { "flat" } else { "GROWING" },
        if fds_flat { "flat" } else { "GROWING" },
        percentile(&mut lags, 1.0),
    );
    let path = write_json(
        "soak",
        &json!({
            "minutes": minutes,
            "cores": cores,
            "kernel": kernel,
            "warm_up_s": warm,
            "rss_slope_mib_per_h": rss_slope,
            "rss_mean_mib": mean_rss,
            "fd_slope_per_h": fd_slope,
            "rss_flat": rss_flat,
            "fds_flat": fds_flat,
            "samples": samples.iter().map(|s| json!({
                "t_s": s.at_s, "rss_mib": s.rss_mib, "fds": s.fds,
                "lag_p50_ms": s.lag_p50_ms, "lag_p99_ms": s.lag_p99_ms,
                "writes": s.writes, "events": s.events, "errors": s.errors, "pods": s.pods,
                "watchers": s.watchers,
            })).collect::<Vec<_>>(),
        }),
    )?;
    println!("written to {}", path.display());
    if !rss_flat || !fds_flat {
        bail!("the server's memory or descriptors grew after warm-up");
    }
    Ok(())
}
