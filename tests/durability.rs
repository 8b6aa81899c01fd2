//! Durability: kill -9 the server while concurrent clients write; after a
//! restart every acknowledged write is there and the store is consistent.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use skiff_api::v1::{ConfigMap, Service, ServicePort, ServiceSpec};
use skiff_api::{ObjectMeta, Resource};
use skiff_client::{Client, ListParams};
use skiff_testkit::{EtcdServer, KillOnDrop, admin_credentials, free_port, wait_server_ready};

const SKIFF: &str = env!("CARGO_BIN_EXE_skiff");
const WRITERS: usize = 8;

fn start_server(addr: &str, data: &Path, store: Option<&str>) -> KillOnDrop {
    let mut cmd = Command::new(SKIFF);
    cmd.args([
        "server",
        "--no-client-config",
        "--listen",
        addr,
        "--data-dir",
    ])
    .arg(data)
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    if let Some(s) = store {
        cmd.args(["--store", s]);
    }
    let child = KillOnDrop(cmd.spawn().unwrap());
    assert!(
        wait_server_ready(addr, data, Duration::from_secs(30)),
        "server not ready"
    );
    child
}

fn meta(name: &str) -> Option<ObjectMeta> {
    Some(ObjectMeta {
        name: name.into(),
        namespace: "default".into(),
        ..Default::default()
    })
}

#[derive(Default)]
struct Acked {
    configmaps: HashSet<String>,
    /// Writer → increments acknowledged on its counter.
    increments: BTreeMap<usize, u64>,
    services: HashSet<String>,
}

async fn writer(client: Client, id: usize, acked: Arc<Mutex<Acked>>) {
    let counter = format!("counter-{id}");
    let Ok(mut current) = client
        .create(&ConfigMap {
            metadata: meta(&counter),
            data: [("n".into(), "0".into())].into(),
            ..Default::default()
        })
        .await
    else {
        return;
    };
    acked.lock().unwrap().increments.insert(id, 0);
    for i in 0.. {
        let name = format!("w{id}-{i}");
        let cm = ConfigMap {
            metadata: meta(&name),
            data: [("i".into(), i.to_string())].into(),
            ..Default::default()
        };
        if client.create(&cm).await.is_err() {
            return;
        }
        acked.lock().unwrap().configmaps.insert(name.clone());
        let n: u64 = current.data["n"].parse().unwrap();
        current.data.insert("n".into(), (n + 1).to_string());
        match client.update(&current).await {
            Ok(updated) => {
                current = updated;
                *acked.lock().unwrap().increments.get_mut(&id).unwrap() += 1;
            }
            Err(_) => return,
        }
        if i % 4 == 0 {
            let svc = Service {
                metadata: meta(&format!("svc-{name}")),
                spec: Some(ServiceSpec {
                    ports: vec![ServicePort {
                        port: 80,
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
                ..Default::default()
            };
            if client.create(&svc).await.is_err() {
                return;
            }
            acked.lock().unwrap().services.insert(format!("svc-{name}"));
        }
    }
}

async fn crash_and_check(store: Option<String>) {
    let data = tempfile::tempdir().unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let mut server = start_server(&addr, data.path(), store.as_deref());
    let client = Client::connect_with(&admin_credentials(data.path()))
        .await
        .unwrap();
    let acked = Arc::new(Mutex::new(Acked::default()));
    let tasks: Vec<_> = (0..WRITERS)
        .map(|id| tokio::spawn(writer(client.clone(), id, acked.clone())))
        .collect();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    server.kill();
    for t in tasks {
        t.await.unwrap();
    }
    let acked = std::mem::take(&mut *acked.lock().unwrap());
    eprintln!(
        "acknowledged before the crash: {} configmaps, {} services",
        acked.configmaps.len(),
        acked.services.len()
    );
    assert!(
        acked.configmaps.len() > 50,
        "the writers barely wrote ({} acknowledged)",
        acked.configmaps.len()
    );

    let _server = start_server(&addr, data.path(), store.as_deref());
    let client = Client::connect_with(&admin_credentials(data.path()))
        .await
        .unwrap();
    let cms = client
        .list::<ConfigMap>("default", &ListParams::default())
        .await
        .unwrap()
        .items;
    let present: HashSet<String> = cms.iter().map(|c| c.name().to_string()).collect();
    let lost: Vec<_> = acked.configmaps.difference(&present).collect();
    assert!(lost.is_empty(), "acknowledged writes lost: {lost:?}");
    for (id, n) in &acked.increments {
        let counter = cms
            .iter()
            .find(|c| c.name() == format!("counter-{id}"))
            .unwrap();
        let stored: u64 = counter.data["n"].parse().unwrap();
        // The one write in flight at the crash may have landed unacknowledged.
        assert!(
            stored == *n || stored == n + 1,
            "counter {id}: {stored} stored, {n} acknowledged"
        );
    }
    let svcs = client
        .list::<Service>("default", &ListParams::default())
        .await
        .unwrap()
        .items;
    let names: HashSet<String> = svcs.iter().map(|s| s.name().to_string()).collect();
    assert!(
        acked.services.is_subset(&names),
        "acknowledged services lost"
    );
    let mut ips = HashSet::new();
    for s in &svcs {
        let ip = s.spec.as_ref().unwrap().cluster_ip.clone();
        assert!(ips.insert(ip.clone()), "ClusterIP {ip} held twice");
        // The allocation survived with the service: asking for it is refused.
        let copy = Service {
            metadata: meta(&format!("copy-{}", s.name())),
            spec: Some(ServiceSpec {
                cluster_ip: ip.clone(),
                ports: vec![ServicePort {
                    port: 80,
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        };
        let err = client.create(&copy).await.unwrap_err();
        assert_eq!(err.code(), 422, "{ip} could be allocated again: {err}");
    }
    // The store is writable and its revisions continue.
    let after = client
        .create(&ConfigMap {
            metadata: meta("after-crash"),
            ..Default::default()
        })
        .await
        .unwrap();
    let newest = cms
        .iter()
        .map(|c| c.meta().resource_version.parse::<i64>().unwrap())
        .max()
        .unwrap();
    assert!(after.meta().resource_version.parse::<i64>().unwrap() > newest);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_loses_no_acknowledged_write_embedded() {
    crash_and_check(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_loses_no_acknowledged_write_etcd() {
    let Some(etcd) = EtcdServer::start() else {
        return;
    };
    crash_and_check(Some(etcd.url())).await;
}

/// The server on a disk that fills up (a real tmpfs): writes fail with a
/// clear 503, `/readyz` and `/healthz` say why and `/metrics` counts it,
/// and once space is back the server serves again by itself — writes,
/// leader election and with it the controllers — with no acknowledged
/// write lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_is_reported_and_survived() {
    use skiff_api::Lease;
    let disk = skiff_testkit::disk::SmallDisk::mount(32);
    let http_get = |addr: &str, path: &str| skiff_testkit::admin_get(addr, disk.path(), path);
    let addr = format!("127.0.0.1:{}", free_port());
    let _server = start_server(&addr, disk.path(), None);
    let client = Client::connect_with(&admin_credentials(disk.path()))
        .await
        .unwrap();
    let lease = || async {
        client
            .get::<Lease>("kube-system", "skiff-controllers")
            .await
            .ok()
            .and_then(|l| l.spec?.renew_time)
            .map(|t| t.seconds)
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while lease().await.is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "no leader within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let filler = disk.fill();
    let big = "z".repeat(256 * 1024);
    let mut acked = Vec::new();
    let mut refused = None;
    for i in 0..200 {
        let name = format!("big-{i}");
        let cm = ConfigMap {
            metadata: meta(&name),
            data: [("z".into(), big.clone())].into(),
            ..Default::default()
        };
        match client.create(&cm).await {
            Ok(_) => acked.push(name),
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
    }
    let refused = refused.expect("a create refused on a full disk");
    assert_eq!(refused.code(), 503, "{refused}");
    assert!(
        refused.to_string().contains("No space left on device"),
        "the reason: {refused}"
    );
    let (status, body) = http_get(&addr, "/readyz").unwrap();
    assert_eq!(status, 503, "/readyz while the disk is full: {body}");
    assert!(body.contains("[-]store failed"), "{body}");
    assert!(body.contains("skiff.redb"), "{body}");
    assert_eq!(http_get(&addr, "/healthz").unwrap().0, 503);
    assert_eq!(http_get(&addr, "/livez").unwrap().0, 200);
    let (_, metrics) = http_get(&addr, "/metrics").unwrap();
    let value = |name: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .unwrap_or_else(|| panic!("{name} in /metrics"))
            .trim()
            .parse()
            .unwrap()
    };
    assert!(value("skiff_store_errors_total") >= 1.0);
    assert_eq!(value("skiff_store_healthy"), 0.0);
    assert!(metrics.ends_with("# EOF\n"), "OpenMetrics ends with # EOF");
    // Reads go on.
    if let Some(first) = acked.first() {
        client.get::<ConfigMap>("default", first).await.unwrap();
    }

    std::fs::remove_file(&filler).unwrap();
    assert!(
        wait_server_ready(&addr, disk.path(), Duration::from_secs(30)),
        "ready again within 30 s of space coming back"
    );
    let cm = ConfigMap {
        metadata: meta("after"),
        data: [("z".into(), big)].into(),
        ..Default::default()
    };
    client.create(&cm).await.expect("writes work again");
    // Leader election goes on: the lease is renewed again.
    let since = lease().await.unwrap_or(0);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while lease().await.unwrap_or(0) <= since {
        assert!(
            std::time::Instant::now() < deadline,
            "the controllers' lease renewed within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for name in &acked {
        client
            .get::<ConfigMap>("default", name)
            .await
            .unwrap_or_else(|e| panic!("acknowledged {name}: {e}"));
    }
}
