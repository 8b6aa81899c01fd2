//! The server's memory against what it stores, on a real `skiff server`
//! (embedded store, controllers running): objects of 100,000 labels (the
//! amplification that once took it from 24 MB to 811 MB for 20 refused
//! creates), and 10,000 pods. RSS is read from /proc; the stored bytes are
//! the objects' JSON as listed back. The bounds asserted are the ones
//! ARCHITECTURE.md documents (a memory bound, not a timing).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use skiff_api::ObjectMeta;
use skiff_api::v1::{ConfigMap, Container, Pod, PodSpec};
use skiff_client::{Client, ListParams};
use skiff_testkit::server::Server;

const SKIFF: &str = env!("CARGO_BIN_EXE_skiff");
const MIB: u64 = 1 << 20;

// The documented bounds (ARCHITECTURE.md, "Memory"): RSS growth per byte
// of stored JSON. Measured on main: 20 for objects of 100,000 labels
// (decoded, a label takes about 12 times its bytes; the server and the
// garbage collector's informer each hold one copy), 35 for 10,000 pods
// with the controllers (their informers, the scheduler's queue), 7 for
// the API server alone. Before lists were encoded object by object the
// labels case took 75.
const PER_STORED_BYTE_LABELS: u64 = 32;
const PER_STORED_BYTE_PODS: u64 = 44;
const PER_STORED_BYTE_PODS_API_ONLY: u64 = 12;

/// (RSS, peak RSS) of a process, in bytes.
fn rss(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|kib| kib.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("{name} in /proc/{pid}/status"))
            * 1024
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// RSS growth from `base` per stored byte.
fn per_stored(rss: u64, base: u64, stored: u64) -> f64 {
    rss.saturating_sub(base) as f64 / stored as f64
}

/// RSS `after` grew from `base` by less than `bound` bytes per stored byte.
fn assert_bound(after: u64, base: u64, stored: u64, bound: u64) {
    assert!(
        after < base + bound * stored,
        "RSS {} from {} for {} stored: over {bound} bytes per stored byte",
        mib(after),
        mib(base),
        mib(stored)
    );
}

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / MIB as f64)
}

/// The bytes of JSON a list of `path` returns, and how many items.
fn listed(server: &Server, path: &str) -> (u64, usize) {
    let (status, body) = get(server, path);
    assert_eq!(status, 200, "{path}: {}", &body[..body.len().min(300)]);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let items = v["items"].as_array().unwrap();
    let bytes = items
        .iter()
        .map(|i| serde_json::to_vec(i).unwrap().len() as u64)
        .sum();
    (bytes, items.len())
}

/// GET as the admin (curl), for as long as a big list takes.
fn get(server: &Server, path: &str) -> (u16, String) {
    let out = server
        .curl()
        .args(["-s", "-m", "120", "-w", "\n%{http_code}"])
        .arg(format!("{}{path}", server.url()))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap();
    (code.trim().parse().unwrap(), body.to_string())
}

fn labelled(name: &str, labels: usize) -> ConfigMap {
    let labels: BTreeMap<String, String> = (0..labels)
        .map(|i| (format!("l{i}"), "v".to_string()))
        .collect();
    ConfigMap {
        metadata: Some(ObjectMeta {
            name: name.into(),
            namespace: "default".into(),
            labels,
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn labels_by_the_hundred_thousand_stay_bounded() {
    let server = Server::start(Path::new(SKIFF), &[], &[]);
    let client = Client::connect_with(&server.credentials()).await.unwrap();
    let pid = server.pid();
    let (base, _) = rss(pid);

    // 20 creates of 100,000 labels, 1.4 MB each: what once took the server
    // from 24 MB to 811 MB.
    for i in 0..20 {
        client
            .create(&labelled(&format!("huge-{i}"), 100_000))
            .await
            .unwrap();
    }
    let (created, peak_created) = rss(pid);
    // Listed whole, 5 times.
    let mut stored = 0;
    for _ in 0..5 {
        let (bytes, n) = listed(&server, "/api/v1/namespaces/default/configmaps");
        assert_eq!(n, 20);
        stored = bytes;
    }
    let (after, peak) = rss(pid);
    println!(
        "100,000 labels: base {}; 20 objects stored ({} of JSON): RSS {} (peak {}); \
         listed 5 times: RSS {} (peak {}): {:.1} bytes of RSS growth per stored byte, peak {:.1}",
        mib(base),
        mib(stored),
        mib(created),
        mib(peak_created),
        mib(after),
        mib(peak),
        per_stored(after, base, stored),
        per_stored(peak, base, stored),
    );
    assert_bound(after, base, stored, PER_STORED_BYTE_LABELS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_pods_stay_bounded() {
    pods(&[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_pods_stay_bounded_without_controllers() {
    pods(&["--no-controllers"]).await;
}

async fn pods(flags: &[&str]) {
    let server = Server::start(Path::new(SKIFF), flags, &[]);
    let client = Client::connect_with(&server.credentials()).await.unwrap();
    let pid = server.pid();
    let (base, _) = rss(pid);
    let started = Instant::now();
    let pods = 10_000;
    let mut tasks = tokio::task::JoinSet::new();
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    for _ in 0..16 {
        let client = client.clone();
        let next = next.clone();
        tasks.spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= pods {
                    return;
                }
                let pod = Pod {
                    metadata: Some(ObjectMeta {
                        name: format!("p-{i}"),
                        namespace: "default".into(),
                        labels: [("app".to_string(), format!("a{}", i % 100))].into(),
                        ..Default::default()
                    }),
                    spec: Some(PodSpec {
                        containers: vec![Container {
                            name: "c".into(),
                            image: "busybox".into(),
                            ..Default::default()
                        }],
                        ..Default::default()
                    }),
                    ..Default::default()
                };
                client.create(&pod).await.unwrap();
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
    let created = started.elapsed();
    // The controllers have seen them all once the list through the
    // client (the watch cache) has them.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let n = client
            .list::<Pod>("default", &ListParams::default())
            .await
            .unwrap()
            .items
            .len();
        if n == pods {
            break;
        }
        assert!(Instant::now() < deadline, "{n} of {pods} listed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (pod_bytes, n) = listed(&server, "/api/v1/namespaces/default/pods");
    assert_eq!(n, pods);
    // What the controllers stored about them (events of scheduling).
    let (event_bytes, events) = listed(&server, "/api/v1/events");
    let stored = pod_bytes + event_bytes;
    println!(
        "{n} pods ({}), {events} events ({})",
        mib(pod_bytes),
        mib(event_bytes)
    );
    let (after, peak) = rss(pid);
    println!(
        "10,000 pods {flags:?}: created in {:.1} s; base {}; {} of JSON stored; RSS {} (peak {}): \
         {:.1} bytes of RSS growth per stored byte, peak {:.1}",
        created.as_secs_f64(),
        mib(base),
        mib(stored),
        mib(after),
        mib(peak),
        per_stored(after, base, stored),
        per_stored(peak, base, stored),
    );
    let bound = if flags.is_empty() {
        PER_STORED_BYTE_PODS
    } else {
        PER_STORED_BYTE_PODS_API_ONLY
    };
    assert_bound(after, base, stored, bound);
}
