//! `cargo xtask bench api`: creates/s, compare-and-swap updates/s and watch
//! delivery p99 with many watchers, for the API server on its embedded
//! store and on etcd, with raw etcd puts (same client concurrency, no API
//! server) measured in the same run as the baseline. Rounds interleave the
//! three (A B C A B C ...); ratios are medians of the per-round ratios.
//! The two servers above are plain (`--tls off`, comparable with earlier
//! runs); a third, embedded and with TLS and client certificates (the
//! default), measures what TLS and authentication cost against the plain
//! embedded one in the same rounds.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use futures::StreamExt;
use serde_json::json;
use skiff_api::v1::{ConfigMap, Namespace};
use skiff_api::{ObjectMeta, Resource};
use skiff_client::{Client, ListParams, WatchEvent};
use skiff_testkit::{EtcdServer, KillOnDrop, free_port, wait_http_ok};

/// Concurrent writers; connections they share.
const WRITERS: usize = 64;
const CONNECTIONS: usize = 4;

struct Settings {
    rounds: usize,
    phase: Duration,
    watchers: usize,
    watch_writes: usize,
}

use crate::benchkit::{machine, median, percentile};

pub(crate) fn build_skiff(quick: bool) -> Result<PathBuf> {
    let profile = if quick { "debug" } else { "release" };
    eprintln!("==> building skiff ({profile})");
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.args(["build", "-p", "skiff"]);
    if !quick {
        cmd.arg("--release");
    }
    if !cmd.status()?.success() {
        bail!("building skiff failed");
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    Ok(root.join("target").join(profile).join("skiff"))
}

pub(crate) fn start_server(
    bin: &std::path::Path,
    data: &std::path::Path,
    store: Option<&str>,
) -> Result<(KillOnDrop, String)> {
    start_server_with(bin, data, store, &[])
}

/// `start_server` with more `skiff server` flags.
pub(crate) fn start_server_with(
    bin: &std::path::Path,
    data: &std::path::Path,
    store: Option<&str>,
    flags: &[&str],
) -> Result<(KillOnDrop, String)> {
    let addr = format!("127.0.0.1:{}", free_port());
    let mut cmd = Command::new(bin);
    cmd.args([
        "server",
        "--no-client-config",
        "--listen",
        &addr,
        "--data-dir",
    ])
    .arg(data)
    .env("SKIFF_LOG", "warn")
    .stdout(Stdio::null())
    .stderr(Stdio::inherit());
    if let Some(s) = store {
        cmd.args(["--store", s]);
    }
    // Plain unless the flags say otherwise: these figures compare with
    // the earlier runs'; `bench api` measures TLS against them.
    if !flags.contains(&"--tls") {
        cmd.args(["--tls", "off"]);
    }
    cmd.args(flags);
    let child = KillOnDrop(cmd.spawn().context("start skiff server")?);
    let ready = if flags.windows(2).any(|w| w == ["--tls", "on"]) {
        skiff_testkit::wait_server_ready(&addr, data, Duration::from_secs(30))
    } else {
        wait_http_ok(&addr, "/readyz", Duration::from_secs(30))
    };
    if !ready {
        bail!("skiff server on {addr} did not become ready");
    }
    Ok((child, format!("http://{addr}")))
}

/// A server with TLS and authentication (the default) and the admin's
/// credentials for it.
fn start_tls_server(
    bin: &std::path::Path,
    data: &std::path::Path,
) -> Result<(KillOnDrop, skiff_client::Credentials)> {
    let (child, _) = start_server_with(bin, data, None, &["--tls", "on"])?;
    Ok((child, skiff_testkit::admin_credentials(data)))
}

async fn clients(url: &str) -> Result<Vec<Client>> {
    clients_with(&skiff_client::Credentials::plain(url)).await
}

async fn clients_with(creds: &skiff_client::Credentials) -> Result<Vec<Client>> {
    let mut out = Vec::new();
    for _ in 0..CONNECTIONS {
        out.push(Client::connect_with(creds).await?);
    }
    Ok(out)
}

fn meta(ns: &str, name: &str) -> Option<ObjectMeta> {
    Some(ObjectMeta {
        name: name.into(),
        namespace: ns.into(),
        ..Default::default()
    })
}

async fn namespace(client: &Client, name: &str) -> Result<()> {
    let ns = Namespace {
        metadata: Some(ObjectMeta {
            name: name.into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    match client.create(&ns).await {
        Ok(_) => Ok(()),
        Err(e) if e.is_already_exists() => Ok(()),
        Err(e) => Err(e.into()),
    }
}

fn payload() -> String {
    "x".repeat(256)
}

/// Creates ConfigMaps from many writers for `phase`; returns creates/s.
async fn create_rate(clients: &[Client], ns: &str, phase: Duration) -> Result<f64> {
    namespace(&clients[0], ns).await?;
    let done = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + phase;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let (client, done, ns) = (
            clients[w % clients.len()].clone(),
            done.clone(),
            ns.to_string(),
        );
        tasks.push(tokio::spawn(async move {
            let mut i = 0u64;
            while Instant::now() < deadline {
                let cm = ConfigMap {
                    metadata: meta(&ns, &format!("c{w}-{i}")),
                    data: [("v".into(), payload())].into(),
                    ..Default::default()
                };
                client.create(&cm).await?;
                done.fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64())
}

/// Each writer updates its own ConfigMap at its resourceVersion.
async fn cas_rate(clients: &[Client], ns: &str, phase: Duration) -> Result<f64> {
    namespace(&clients[0], ns).await?;
    let done = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    let mut objects = Vec::new();
    for w in 0..WRITERS {
        let cm = ConfigMap {
            metadata: meta(ns, &format!("cas{w}")),
            data: [("n".into(), "0".into())].into(),
            ..Default::default()
        };
        objects.push(match clients[0].create(&cm).await {
            Ok(o) => o,
            Err(e) if e.is_already_exists() => clients[0].get(ns, &format!("cas{w}")).await?,
            Err(e) => return Err(e.into()),
        });
    }
    let deadline = Instant::now() + phase;
    let start = Instant::now();
    for (w, mut obj) in objects.into_iter().enumerate() {
        let (client, done) = (clients[w % clients.len()].clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while Instant::now() < deadline {
                n += 1;
                obj.data.insert("n".into(), n.to_string());
                obj = client.update(&obj).await?;
                done.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64())
}

/// Raw etcd writes of the same size from the same number of writers:
/// plain puts, or (`txn`) create-if-absent transactions, the operation
/// every API write needs.
async fn raw_rate(endpoint: &str, round: usize, phase: Duration, txn: bool) -> Result<f64> {
    let mut conns = Vec::new();
    for _ in 0..CONNECTIONS {
        conns.push(etcd_client::Client::connect([format!("http://{endpoint}")], None).await?);
    }
    let done = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + phase;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let (mut client, done) = (conns[w % conns.len()].clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = 0u64;
            while Instant::now() < deadline {
                let key = format!("/raw/{round}/{txn}/{w}/{i}");
                if txn {
                    let absent = etcd_client::Compare::version(
                        key.clone(),
                        etcd_client::CompareOp::Equal,
                        0,
                    );
                    let put = etcd_client::TxnOp::put(key, payload(), None);
                    client
                        .txn(etcd_client::Txn::new().when([absent]).and_then([put]))
                        .await?;
                } else {
                    client.put(key, payload(), None).await?;
                }
                done.fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64())
}

fn now_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos()
}

/// Opens `watchers` watches, then writes `writes` updates (paced) whose
/// data carries the time they were issued; returns delivery latencies in
/// ms, measured from issuing the write to each watcher receiving it.
async fn watch_latency(url: &str, watchers: usize, writes: usize) -> Result<(f64, f64, usize)> {
    let writer = Client::connect(url).await?;
    namespace(&writer, "watch").await?;
    let mut obj = match writer
        .create(&ConfigMap {
            metadata: meta("watch", "ticker"),
            ..Default::default()
        })
        .await
    {
        Ok(o) => o,
        Err(e) if e.is_already_exists() => writer.get("watch", "ticker").await?,
        Err(e) => return Err(e.into()),
    };
    let conns = clients(url).await?;
    let more = (watchers / 50).max(1);
    let mut watch_conns = conns.clone();
    for _ in CONNECTIONS..more {
        watch_conns.push(Client::connect(url).await?);
    }
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<f64>();
    let mut streams = Vec::new();
    for i in 0..watchers {
        let client = &watch_conns[i % watch_conns.len()];
        let stream = client
            .watch::<ConfigMap>(
                "watch",
                &ListParams::default(),
                Some(&obj.meta().resource_version),
            )
            .await?;
        streams.push(stream);
    }
    let mut readers = Vec::new();
    for mut stream in streams {
        let tx = tx.clone();
        readers.push(tokio::spawn(async move {
            while let Some(Ok(WatchEvent::Modified(cm))) = stream.next().await {
                if let Some(t) = cm.data.get("t").and_then(|t| t.parse::<u128>().ok()) {
                    let _ = tx.send((now_nanos().saturating_sub(t)) as f64 / 1e6);
                }
            }
        }));
    }
    drop(tx);
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    for _ in 0..writes {
        tick.tick().await;
        obj.data.insert("t".into(), now_nanos().to_string());
        obj = writer.update(&obj).await?;
    }
    let mut lat = Vec::with_capacity(watchers * writes);
    let deadline = Instant::now() + Duration::from_secs(30);
    while lat.len() < watchers * writes && Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_secs(5), rx.recv()).await {
            Ok(Some(ms)) => lat.push(ms),
            _ => break,
        }
    }
    for r in readers {
        r.abort();
    }
    let delivered = lat.len();
    if delivered < watchers * writes {
        bail!(
            "only {delivered} of {} watch events arrived",
            watchers * writes
        );
    }
    let p50 = percentile(&mut lat, 0.50);
    let p99 = percentile(&mut lat, 0.99);
    Ok((p50, p99, delivered))
}

pub fn run(quick: bool) -> Result<()> {
    // The load generator shares the machine with the servers: it must not
    // be an unoptimized build, or it starves them of CPU.
    if !quick && crate::benchkit::rerun_in_release(&["bench", "api"])? {
        return Ok(());
    }
    let settings = if quick {
        Settings {
            rounds: 1,
            phase: Duration::from_millis(700),
            watchers: 100,
            watch_writes: 20,
        }
    } else {
        Settings {
            rounds: 3,
            phase: Duration::from_secs(4),
            watchers: 1000,
            watch_writes: 100,
        }
    };
    if !crate::have("etcd") {
        bail!("etcd is missing: apt-get install etcd-server (or run .ci/run once)");
    }
    let bin = build_skiff(quick)?;
    let (cores, kernel) = machine();
    println!(
        "bench api: {cores} cores, kernel {kernel}{}",
        if quick {
            " (quick: debug build, short phases)"
        } else {
            ""
        }
    );

    let etcd = EtcdServer::start().context("start etcd")?;
    let dir = tempfile::tempdir()?;
    let (_embedded, embedded_url) = start_server(&bin, dir.path(), None)?;
    let (_on_etcd, etcd_url) = start_server(&bin, &dir.path().join("unused"), Some(&etcd.url()))?;
    let (_secure, secure) = start_tls_server(&bin, &dir.path().join("tls"))?;

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let emb = clients(&embedded_url).await?;
        let etc = clients(&etcd_url).await?;
        let tls = clients_with(&secure).await?;
        // Per round: embedded creates, etcd creates, raw puts, embedded CAS,
        // etcd CAS, raw create-if-absent txns, embedded creates over TLS.
        let mut rows: Vec<[f64; 7]> = Vec::new();
        for round in 0..settings.rounds {
            eprintln!("==> round {} of {}", round + 1, settings.rounds);
            let e_create = create_rate(&emb, &format!("bench-{round}"), settings.phase).await?;
            let k_create = create_rate(&etc, &format!("bench-{round}"), settings.phase).await?;
            let raw = raw_rate(&etcd.endpoint, round, settings.phase, false).await?;
            let e_cas = cas_rate(&emb, &format!("cas-{round}"), settings.phase).await?;
            let k_cas = cas_rate(&etc, &format!("cas-{round}"), settings.phase).await?;
            let raw_txn = raw_rate(&etcd.endpoint, round, settings.phase, true).await?;
            let t_create = create_rate(&tls, &format!("bench-{round}"), settings.phase).await?;
            rows.push([e_create, k_create, raw, e_cas, k_cas, raw_txn, t_create]);
        }
        eprintln!("==> watch delivery with {} watchers", settings.watchers);
        let (e_p50, e_p99, e_n) = watch_latency(&embedded_url, settings.watchers, settings.watch_writes).await?;
        let (k_p50, k_p99, k_n) = watch_latency(&etcd_url, settings.watchers, settings.watch_writes).await?;

        let col = |i: usize| median(rows.iter().map(|r| r[i]).collect());
        let ratio = |a: usize, b: usize| median(rows.iter().map(|r| r[a] / r[b]).collect());
        println!();
        println!("{:<44} {:>12} {:>10} {:>10}", "measure", "value", "/raw put", "/raw txn");
        println!("{:<44} {:>12.0} {:>10} {:>10}", "raw etcd puts/s (baseline)", col(2), "1.00", "-");
        println!("{:<44} {:>12.0} {:>10.2} {:>10}", "raw etcd create-if-absent txns/s (baseline)", col(5), ratio(5, 2), "1.00");
        println!("{:<44} {:>12.0} {:>10.2} {:>10.2}", "creates/s, embedded store", col(0), ratio(0, 2), ratio(0, 5));
        println!("{:<44} {:>12.0} {:>10.2} {:>10.2}", "creates/s, etcd store", col(1), ratio(1, 2), ratio(1, 5));
        println!("{:<44} {:>12.0} {:>10.2} {:>10.2}", "CAS updates/s, embedded store", col(3), ratio(3, 2), ratio(3, 5));
        println!("{:<44} {:>12.0} {:>10.2} {:>10.2}", "CAS updates/s, etcd store", col(4), ratio(4, 2), ratio(4, 5));
        println!("{:<44} {:>12.0}   {:.2} × plain embedded", "creates/s, embedded store, TLS + client certs", col(6), ratio(6, 0));
        println!("{:<44} {:>9.2} ms", format!("watch delivery p50, embedded ({} watchers)", settings.watchers), e_p50);
        println!("{:<44} {:>9.2} ms", format!("watch delivery p99, embedded ({} watchers)", settings.watchers), e_p99);
        println!("{:<44} {:>9.2} ms", format!("watch delivery p50, etcd ({} watchers)", settings.watchers), k_p50);
        println!("{:<44} {:>9.2} ms", format!("watch delivery p99, etcd ({} watchers)", settings.watchers), k_p99);
        println!("({} rounds of {:?} each, {} writers over {} connections; watch latency from issuing the write to delivery)",
            settings.rounds, settings.phase, WRITERS, CONNECTIONS);

        let out = json!({
            "machine": {"cores": cores, "kernel": kernel},
            "quick": quick,
            "writers": WRITERS,
            "rounds": rows.iter().map(|r| json!({
                "embedded_creates_per_s": r[0], "etcd_creates_per_s": r[1], "raw_etcd_puts_per_s": r[2],
                "embedded_cas_per_s": r[3], "etcd_cas_per_s": r[4], "raw_etcd_txns_per_s": r[5],
                "tls_embedded_creates_per_s": r[6],
            })).collect::<Vec<_>>(),
            "median": {
                "embedded_creates_per_s": col(0), "etcd_creates_per_s": col(1), "raw_etcd_puts_per_s": col(2),
                "embedded_cas_per_s": col(3), "etcd_cas_per_s": col(4), "raw_etcd_txns_per_s": col(5),
                "ratio_embedded_creates_to_raw_put": ratio(0, 2), "ratio_etcd_creates_to_raw_put": ratio(1, 2),
                "ratio_embedded_cas_to_raw_put": ratio(3, 2), "ratio_etcd_cas_to_raw_put": ratio(4, 2),
                "ratio_etcd_creates_to_raw_txn": ratio(1, 5), "ratio_etcd_cas_to_raw_txn": ratio(4, 5),
                "tls_embedded_creates_per_s": col(6), "ratio_tls_to_plain_embedded_creates": ratio(6, 0),
            },
            "watch": {
                "watchers": settings.watchers, "writes": settings.watch_writes,
                "embedded": {"p50_ms": e_p50, "p99_ms": e_p99, "delivered": e_n},
                "etcd": {"p50_ms": k_p50, "p99_ms": k_p99, "delivered": k_n},
            },
        });
        let path = crate::benchkit::write_json("api", &out)?;
        println!("figures written to {}", path.display());
        anyhow::Ok(())
    })
}
