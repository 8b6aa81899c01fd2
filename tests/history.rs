//! The history checker against a real `skiff server` under faults, on
//! both stores: concurrent clients create, compare-and-set, delete and
//! read a few keys and two watches follow them (resuming from bookmarks
//! and after failures), while the server is paused (SIGSTOP), killed
//! (kill -9) and restarted, its disk fills up (embedded store) or etcd
//! members are killed and paused (a 3-member etcd). Then the store's own
//! history is read back and checked: linearizable per key, every watch in
//! order without gaps or repeats (see `skiff_testkit::history`).

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use skiff_api::v1::{ConfigMap, Namespace};
use skiff_api::{ObjectMeta, Resource};
use skiff_client::{Client, ClientError, DeleteParams, ListParams, WatchEvent, WatchOptions};
use skiff_testkit::disk::SmallDisk;
use skiff_testkit::etcd_cluster::{EtcdCluster, signal};
use skiff_testkit::history::{Call, Change, Op, Outcome, Rev, WatchLog, check};
use skiff_testkit::{KillOnDrop, admin_credentials, free_port, wait_server_ready};

const SKIFF: &str = env!("CARGO_BIN_EXE_skiff");
const NS: &str = "history";
const KEYS: usize = 4;
const CLIENTS: usize = 6;
/// How long one operation may take before its outcome is unknown.
const OP_TIMEOUT: Duration = Duration::from_secs(3);

struct Server {
    addr: String,
    data: std::path::PathBuf,
    store: Option<String>,
    child: Option<KillOnDrop>,
}

impl Server {
    fn start(data: &Path, store: Option<String>) -> Server {
        let mut s = Server {
            addr: format!("127.0.0.1:{}", free_port()),
            data: data.to_path_buf(),
            store,
            child: None,
        };
        s.spawn();
        s
    }

    fn spawn(&mut self) {
        let mut cmd = Command::new(SKIFF);
        cmd.args([
            "server",
            "--no-client-config",
            "--listen",
            &self.addr,
            "--data-dir",
        ])
        .arg(&self.data)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        if let Some(s) = &self.store {
            cmd.args(["--store", s]);
        }
        self.child = Some(KillOnDrop(cmd.spawn().unwrap()));
        assert!(
            wait_server_ready(&self.addr, &self.data, Duration::from_secs(60)),
            "server ready within 60 s"
        );
    }

    fn kill_and_restart(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill();
        }
        self.spawn();
    }

    fn pause(&self, stop: bool) {
        if let Some(c) = &self.child {
            signal(c.0.id(), if stop { "STOP" } else { "CONT" });
        }
    }
}

fn meta(name: &str) -> Option<ObjectMeta> {
    Some(ObjectMeta {
        name: name.into(),
        namespace: NS.into(),
        ..Default::default()
    })
}

fn rev_of(cm: &ConfigMap) -> Rev {
    cm.meta().resource_version.parse().unwrap()
}

fn value_of(cm: &ConfigMap) -> String {
    cm.data.get("v").cloned().unwrap_or_default()
}

/// Writes refused for a full disk (the fault is real only if some are).
static DISK_FULL: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// A write's outcome from the server's answer: refusals that change
/// nothing are failures; anything else without an answer is unknown.
fn written(r: Result<Result<ConfigMap, ClientError>, tokio::time::error::Elapsed>) -> Outcome {
    match r {
        Ok(Ok(cm)) => Outcome::Written(rev_of(&cm)),
        Ok(Err(e)) if matches!(e.code(), 400 | 404 | 409 | 422) => Outcome::Failed,
        Ok(Err(e)) if e.to_string().contains("nothing was stored") => {
            if e.to_string().contains("No space left") {
                DISK_FULL.fetch_add(1, Ordering::Relaxed);
            }
            Outcome::Failed
        }
        Ok(Err(e)) if e.to_string().contains("No space left") => {
            DISK_FULL.fetch_add(1, Ordering::Relaxed);
            Outcome::Unknown
        }
        _ => Outcome::Unknown,
    }
}

/// A small deterministic generator, one per client.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

async fn client_loop(
    client: Client,
    process: usize,
    stop: Arc<AtomicBool>,
    ops: Arc<Mutex<Vec<Op>>>,
) {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ ((process as u64 + 1) * 0x1000_0001));
    let mut n = 0;
    let record = |key: &str, call: Call, invoke: Instant, outcome: Outcome| {
        ops.lock().unwrap().push(Op {
            process,
            key: key.to_string(),
            call,
            invoke,
            complete: Instant::now(),
            outcome,
        });
    };
    while !stop.load(Ordering::Relaxed) {
        let key = format!("k{}", rng.below(KEYS as u64));
        n += 1;
        let value = format!("p{process}-{n}");
        let action = rng.below(10);
        if action < 3 {
            let invoke = Instant::now();
            let cm = ConfigMap {
                metadata: meta(&key),
                data: [("v".to_string(), value.clone())].into(),
                ..Default::default()
            };
            let r = tokio::time::timeout(OP_TIMEOUT, client.create(&cm)).await;
            record(&key, Call::Create { value }, invoke, written(r));
            continue;
        }
        // Read; then maybe write on what was read.
        let invoke = Instant::now();
        let read = tokio::time::timeout(OP_TIMEOUT, client.get::<ConfigMap>(NS, &key)).await;
        let current = match read {
            Ok(Ok(cm)) => {
                let (rev, v) = (rev_of(&cm), value_of(&cm));
                record(&key, Call::Get, invoke, Outcome::Read(Some((rev, v))));
                Some(cm)
            }
            Ok(Err(e)) if e.is_not_found() => {
                record(&key, Call::Get, invoke, Outcome::Read(None));
                None
            }
            _ => None,
        };
        let Some(mut cm) = current else { continue };
        let from = rev_of(&cm);
        let invoke = Instant::now();
        if action < 8 {
            cm.data.insert("v".into(), value.clone());
            let r = tokio::time::timeout(OP_TIMEOUT, client.update(&cm)).await;
            record(&key, Call::Update { value, from }, invoke, written(r));
        } else {
            let params = DeleteParams {
                resource_version: from.to_string(),
                ..Default::default()
            };
            let r = tokio::time::timeout(
                OP_TIMEOUT,
                client.delete_object_with(skiff_api::Kind::ConfigMap, NS, &key, &params),
            )
            .await
            .map(|r| {
                r.and_then(|o| {
                    ConfigMap::from_object(o).ok_or(ClientError::Decode("not a ConfigMap".into()))
                })
            });
            record(&key, Call::Delete { from }, invoke, written(r));
        }
    }
}

/// One watch, resumed from the last revision (bookmarks included) after
/// every end, until told to stop once it has reached `until`.
async fn watch_loop(
    client: Client,
    from: Rev,
    until: Arc<Mutex<Option<Rev>>>,
    anomalies: Arc<Mutex<Vec<String>>>,
) -> WatchLog {
    let mut log = WatchLog {
        from,
        changes: Vec::new(),
    };
    let mut last = from;
    loop {
        if until.lock().unwrap().is_some_and(|u| last >= u) {
            return log;
        }
        let options = WatchOptions {
            bookmarks: true,
            timeout_seconds: 2,
        };
        let rv = last.to_string();
        let stream = tokio::time::timeout(
            OP_TIMEOUT,
            client.watch_with::<ConfigMap>(NS, &ListParams::default(), Some(&rv), options),
        )
        .await;
        let mut stream = match stream {
            Ok(Ok(s)) => s,
            Ok(Err(e)) if e.is_gone() => {
                anomalies
                    .lock()
                    .unwrap()
                    .push(format!("a watch from {rv} was told to relist: {e}"));
                return log;
            }
            _ => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // A paused server sends nothing: give up on the stream after a while.
        while let Ok(Some(ev)) = tokio::time::timeout(Duration::from_secs(4), stream.next()).await {
            let ev = match ev {
                Ok(ev) => ev,
                Err(e) if e.is_gone() => {
                    anomalies
                        .lock()
                        .unwrap()
                        .push(format!("a watch from {rv} was told to relist: {e}"));
                    return log;
                }
                Err(_) => break,
            };
            let change = |cm: &ConfigMap, deleted| Change {
                rev: rev_of(cm),
                key: cm.name().to_string(),
                deleted,
                value: value_of(cm),
            };
            let c = match &ev {
                WatchEvent::Added(cm) | WatchEvent::Modified(cm) => Some(change(cm, false)),
                WatchEvent::Deleted(cm) => Some(change(cm, true)),
                WatchEvent::Bookmark(_) => None,
            };
            last = ev.resource_version().parse().unwrap_or(last);
            log.changes.extend(c);
        }
    }
}

/// The store's own history of the namespace after `from`: one watch that
/// ends by itself with a bookmark.
async fn history_after(client: &Client, from: Rev) -> Vec<Change> {
    let options = WatchOptions {
        bookmarks: true,
        timeout_seconds: 3,
    };
    let mut stream = client
        .watch_with::<ConfigMap>(NS, &ListParams::default(), Some(&from.to_string()), options)
        .await
        .unwrap();
    let mut out = Vec::new();
    while let Some(ev) = tokio::time::timeout(Duration::from_secs(30), stream.next())
        .await
        .expect("the history watch ends by itself")
    {
        let (cm, deleted) = match ev.unwrap() {
            WatchEvent::Added(cm) | WatchEvent::Modified(cm) => (cm, false),
            WatchEvent::Deleted(cm) => (cm, true),
            WatchEvent::Bookmark(_) => continue,
        };
        out.push(Change {
            rev: rev_of(&cm),
            key: cm.name().to_string(),
            deleted,
            value: value_of(&cm),
        });
    }
    out
}

enum Fault {
    PauseServer,
    KillServer,
    FillDisk,
    KillEtcdMember(usize),
    PauseEtcdMember(usize),
}

async fn run(
    mut server: Server,
    mut etcd: Option<EtcdCluster>,
    disk: Option<&SmallDisk>,
    faults: Vec<Fault>,
    label: &str,
) {
    let client = Client::connect_with(&admin_credentials(&server.data))
        .await
        .unwrap();
    let ns = client
        .create(&Namespace {
            metadata: Some(ObjectMeta {
                name: NS.into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap();
    let start: Rev = ns.meta().resource_version.parse().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let ops = Arc::new(Mutex::new(Vec::new()));
    let until = Arc::new(Mutex::new(None));
    let watch_anomalies = Arc::new(Mutex::new(Vec::new()));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|p| tokio::spawn(client_loop(client.clone(), p, stop.clone(), ops.clone())))
        .collect();
    let watches: Vec<_> = (0..2)
        .map(|_| {
            tokio::spawn(watch_loop(
                client.clone(),
                start,
                until.clone(),
                watch_anomalies.clone(),
            ))
        })
        .collect();

    // The fault schedule: each fault after a stretch of normal running.
    let injected = faults.len();
    for fault in faults {
        tokio::time::sleep(Duration::from_secs(3)).await;
        match fault {
            Fault::PauseServer => {
                server.pause(true);
                tokio::time::sleep(Duration::from_millis(1500)).await;
                server.pause(false);
            }
            Fault::KillServer => {
                server = tokio::task::spawn_blocking(move || {
                    server.kill_and_restart();
                    server
                })
                .await
                .unwrap();
            }
            Fault::FillDisk => {
                let filler = disk.expect("a small disk").fill();
                tokio::time::sleep(Duration::from_secs(2)).await;
                std::fs::remove_file(filler).unwrap();
            }
            Fault::KillEtcdMember(i) => {
                let mut cluster = etcd.take().unwrap();
                cluster.kill(i);
                tokio::time::sleep(Duration::from_secs(2)).await;
                etcd = Some(
                    tokio::task::spawn_blocking(move || {
                        cluster.restart(i);
                        cluster
                    })
                    .await
                    .unwrap(),
                );
            }
            Fault::PauseEtcdMember(i) => {
                let cluster = etcd.as_mut().unwrap();
                cluster.pause(i, true);
                tokio::time::sleep(Duration::from_secs(2)).await;
                cluster.pause(i, false);
            }
        }
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }

    let history = history_after(&client, start).await;
    *until.lock().unwrap() = Some(history.last().map_or(start, |c| c.rev));
    let mut logs = Vec::new();
    for w in watches {
        logs.push(
            tokio::time::timeout(Duration::from_secs(60), w)
                .await
                .expect("the watches catch up within 60 s")
                .unwrap(),
        );
    }
    let ops = std::mem::take(&mut *ops.lock().unwrap());
    let mut report = check(&ops, &history, &logs);
    report
        .anomalies
        .extend(watch_anomalies.lock().unwrap().drain(..));
    // The final state agrees with the history's last word on each key.
    let (items, _) = client
        .list_objects(skiff_api::Kind::ConfigMap, NS, &ListParams::default())
        .await
        .unwrap();
    for i in 0..KEYS {
        let key = format!("k{i}");
        let last = history.iter().rev().find(|c| c.key == key);
        let now = items.iter().find(|o| o.meta().name == key);
        let expected = last.filter(|c| !c.deleted).map(|c| c.rev.to_string());
        let got = now.map(|o| o.meta().resource_version.clone());
        if expected != got {
            report.anomalies.push(format!(
                "{key} is at {got:?} but the history ends at {expected:?}"
            ));
        }
    }
    println!(
        "history checker ({label}): {} operations ({} writes acknowledged, {} refused, {} of unknown outcome, {} reads), {} changes, {injected} faults injected, {} changes watched by 2 watches, {} anomalies",
        report.ops,
        report.acknowledged_writes,
        report.refused_writes,
        report.unknown_writes,
        report.reads,
        report.changes,
        report.watched,
        report.anomalies.len()
    );
    assert!(
        report.anomalies.is_empty(),
        "{label}: {} anomalies, the first: {:#?}",
        report.anomalies.len(),
        &report.anomalies[..report.anomalies.len().min(10)]
    );
    assert!(
        report.acknowledged_writes >= 100,
        "{label}: too few writes to say much ({})",
        report.acknowledged_writes
    );
    drop(server);
    drop(etcd);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn linearizable_under_faults_embedded() {
    let disk = SmallDisk::mount(64);
    let server = Server::start(disk.path(), None);
    let faults = vec![
        Fault::PauseServer,
        Fault::KillServer,
        Fault::FillDisk,
        Fault::KillServer,
        Fault::PauseServer,
    ];
    run(server, None, Some(&disk), faults, "embedded").await;
    let full = DISK_FULL.load(Ordering::Relaxed);
    println!("writes that met the full disk: {full}");
    assert!(
        full > 0,
        "the full disk refused no write: the fault did not happen"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn linearizable_under_faults_etcd() {
    let Some(cluster) = EtcdCluster::start(3) else {
        return;
    };
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(data.path(), Some(cluster.url()));
    let faults = vec![
        Fault::PauseServer,
        Fault::KillEtcdMember(0),
        Fault::PauseEtcdMember(1),
        Fault::KillServer,
        Fault::KillEtcdMember(2),
    ];
    run(server, Some(cluster), None, faults, "etcd, 3 members").await;
}
