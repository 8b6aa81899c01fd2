//! The eBPF service datapath, end to end on the real kernel: `skiff bpf`
//! attaches an instance to a lab's cgroup, syncs Services and
//! EndpointSlices from manifests, and clients in network namespaces reach
//! backends in other namespaces through ClusterIPs. Needs root (CI runs it
//! as root).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;
use skiff_testkit::netlab::{Host, Lab};

const SKIFF: &str = env!("CARGO_BIN_EXE_skiff");

fn skiff(args: &[&str]) -> Output {
    Command::new(SKIFF).args(args).output().expect("run skiff")
}

fn ok(args: &[&str]) -> String {
    let out = skiff(args);
    assert!(
        out.status.success(),
        "skiff {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

/// An attached datapath instance for a lab; detached on drop.
struct Datapath {
    instance: String,
}

impl Datapath {
    fn attach(lab: &Lab) -> Datapath {
        let instance = lab.id.clone();
        ok(&[
            "bpf",
            "attach",
            "--instance",
            &instance,
            "--cgroup",
            &lab.cgroup().display().to_string(),
        ]);
        Datapath { instance }
    }

    /// With the packet-level program on `node`'s interfaces: `eth1` faces
    /// the outside host, `eth0` the lab's bridge (backends).
    fn attach_node(lab: &Lab, node: &Host) -> Datapath {
        let instance = lab.id.clone();
        ok(&[
            "bpf",
            "attach",
            "--instance",
            &instance,
            "--cgroup",
            &lab.cgroup().display().to_string(),
            "--netns",
            &node.netns,
            "--iface",
            "eth1",
            "--pod-iface",
            "eth0",
        ]);
        Datapath { instance }
    }

    fn sync(&self, manifest: &str) -> String {
        let path = std::env::temp_dir().join(format!("{}-{}.yaml", self.instance, fastrand()));
        std::fs::write(&path, manifest).expect("write manifest");
        let out = ok(&[
            "bpf",
            "sync",
            "--instance",
            &self.instance,
            "-f",
            &path.display().to_string(),
        ]);
        let _ = std::fs::remove_file(&path);
        out
    }

    fn try_sync(&self, manifest: &str, extra: &[&str]) -> Output {
        let path = std::env::temp_dir().join(format!("{}-{}.yaml", self.instance, fastrand()));
        std::fs::write(&path, manifest).expect("write manifest");
        let p = path.display().to_string();
        let mut args = vec!["bpf", "sync", "--instance", &self.instance, "-f", &p];
        args.extend(extra);
        let out = skiff(&args);
        let _ = std::fs::remove_file(&path);
        out
    }

    fn json(&self, verb: &[&str]) -> Value {
        let mut args = vec!["bpf"];
        args.extend(verb);
        args.extend(["--instance", &self.instance, "-o", "json"]);
        serde_json::from_str(&ok(&args)).expect("JSON from skiff bpf")
    }
}

impl Drop for Datapath {
    fn drop(&mut self) {
        let _ = skiff(&["bpf", "detach", "--instance", &self.instance]);
    }
}

fn fastrand() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(Instant::now().elapsed().as_nanos());
    h.finish()
}

/// A Service with a ClusterIP and the EndpointSlice of its backends
/// (`(address, ready, serving, terminating)`), ports http 80→8080/TCP and
/// dns 53→5353/UDP.
fn service(
    name: &str,
    cluster_ip: &str,
    backends: &[(&str, bool, bool, bool)],
    extra_spec: &str,
    annotations: &str,
) -> String {
    let mut endpoints = String::new();
    for (addr, ready, serving, terminating) in backends {
        endpoints.push_str(&format!(
            "\n- addresses: [{addr}]\n  conditions: {{ready: {ready}, serving: {serving}, terminating: {terminating}}}"
        ));
    }
    if endpoints.is_empty() {
        endpoints = " []".into();
    }
    format!(
        "apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: default{annotations}}}
spec:
  clusterIP: {cluster_ip}
{extra_spec}  ports:
  - {{name: http, port: 80, targetPort: 8080}}
  - {{name: dns, port: 53, targetPort: 5353, protocol: UDP}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: {name}-1
  namespace: default
  labels: {{kubernetes.io/service-name: {name}}}
addressType: IPv4
ports: [{{name: http, port: 8080, protocol: TCP}}, {{name: dns, port: 5353, protocol: UDP}}]
endpoints:{endpoints}
"
    )
}

fn ready(addrs: &[String]) -> Vec<(&str, bool, bool, bool)> {
    addrs
        .iter()
        .map(|a| (a.as_str(), true, true, false))
        .collect()
}

/// A lab with a client and `n` backends answering `b1`..`bn` on 8080/TCP
/// and 5353/UDP.
fn lab_with_backends(n: usize) -> (Lab, Host, Vec<Host>) {
    let mut lab = Lab::new();
    let client = lab.host();
    let mut backends = Vec::new();
    for i in 1..=n {
        let h = lab.host();
        lab.serve(&h, &format!("b{i}"), &[8080], &[5353]);
        backends.push(h);
    }
    (lab, client, backends)
}

fn probe(lab: &Lab, host: &Host, args: &[&str]) -> Value {
    let out = lab.run(host, true, args);
    serde_json::from_str(out.lines().last().unwrap_or(""))
        .unwrap_or_else(|e| panic!("netprobe said {out:?}: {e}"))
}

fn answers(v: &Value, key: &str) -> BTreeMap<String, u64> {
    v[key]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0)))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn cluster_ip_spreads_tcp_and_udp_over_every_backend() {
    let (lab, client, backends) = lab_with_backends(3);
    let dp = Datapath::attach(&lab);
    let addrs: Vec<String> = backends.iter().map(|b| b.addr.clone()).collect();
    dp.sync(&service("web", "10.96.10.1", &ready(&addrs), "", ""));

    let tcp = probe(&lab, &client, &["tcp", "10.96.10.1:80", "--count", "300"]);
    assert_eq!(tcp["failed"], 0, "{tcp}");
    assert_eq!(
        tcp["peerMismatch"], 0,
        "getpeername must show the ClusterIP: {tcp}"
    );
    let spread = answers(&tcp, "answers");
    assert_eq!(spread.len(), 3, "every backend answers: {tcp}");
    assert!(
        spread.values().all(|n| *n >= 50),
        "roughly even (100 each expected): {tcp}"
    );

    let udp = probe(
        &lab,
        &client,
        &["udp", "10.96.10.1:53", "--count", "300", "--sockets", "300"],
    );
    assert_eq!(udp["failed"], 0, "{udp}");
    assert_eq!(
        udp["peerMismatch"], 0,
        "recvfrom must show the ClusterIP: {udp}"
    );
    let spread = answers(&udp, "answers");
    assert_eq!(spread.len(), 3, "every backend answers: {udp}");
    assert!(spread.values().all(|n| *n >= 50), "roughly even: {udp}");

    // The counters saw it: 300 TCP connections and 300 UDP flows.
    let stats = dp.json(&["stats"]);
    let connections: u64 = stats["counters"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["name"].as_str().unwrap().starts_with("service"))
        .map(|c| c["counters"]["connections"].as_u64().unwrap())
        .sum();
    assert_eq!(connections, 600, "{stats}");

    // A process outside the lab's cgroup is not load balanced: the
    // ClusterIP is not routable from the client namespace.
    let outside = lab.run(&client, false, &["refused", "10.96.10.1:80"]);
    assert!(outside.contains("unreachable"), "{outside}");
}

#[test]
fn no_ready_backend_refuses_at_once_and_terminating_ones_serve_as_last_resort() {
    let (lab, client, backends) = lab_with_backends(2);
    let dp = Datapath::attach(&lab);
    let a = backends[0].addr.as_str();
    let b = backends[1].addr.as_str();
    // Neither ready nor serving: nothing to send to.
    dp.sync(&service(
        "gone",
        "10.96.10.2",
        &[(a, false, false, false), (b, false, false, true)],
        "",
        "",
    ));
    for proto in ["tcp", "udp"] {
        let port = if proto == "tcp" { "80" } else { "53" };
        let r = probe(
            &lab,
            &client,
            &["refused", &format!("10.96.10.2:{port}"), "--proto", proto],
        );
        assert_eq!(r["errno"], 111, "{proto}: ECONNREFUSED expected: {r}");
        assert!(
            r["ms"].as_f64().unwrap() < 100.0,
            "{proto}: refused at once: {r}"
        );
    }
    let services = dp.json(&["services"]);
    assert!(
        services
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["backends"].as_array().unwrap().is_empty())
    );
    let stats = dp.json(&["stats"]);
    let refused: u64 = stats["counters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["counters"]["refused"].as_u64().unwrap())
        .sum();
    assert_eq!(refused, 2, "{stats}");

    // b is serving while terminating: with nothing ready it takes the traffic.
    dp.sync(&service(
        "gone",
        "10.96.10.2",
        &[(a, false, false, false), (b, false, true, true)],
        "",
        "",
    ));
    let tcp = probe(&lab, &client, &["tcp", "10.96.10.2:80", "--count", "20"]);
    assert_eq!(
        answers(&tcp, "answers"),
        BTreeMap::from([("b2".to_string(), 20)]),
        "{tcp}"
    );
    // a becomes ready: it alone gets new connections.
    dp.sync(&service(
        "gone",
        "10.96.10.2",
        &[(a, true, true, false), (b, false, true, true)],
        "",
        "",
    ));
    let tcp = probe(&lab, &client, &["tcp", "10.96.10.2:80", "--count", "20"]);
    assert_eq!(
        answers(&tcp, "answers"),
        BTreeMap::from([("b1".to_string(), 20)]),
        "{tcp}"
    );
}

#[test]
fn maglev_moves_only_the_flows_of_a_removed_backend() {
    let (lab, client, backends) = lab_with_backends(5);
    let dp = Datapath::attach(&lab);
    let addrs: Vec<String> = backends.iter().map(|b| b.addr.clone()).collect();
    let maglev = ", annotations: {skiff.io/lb-algorithm: maglev}";
    dp.sync(&service("mg", "10.96.10.3", &ready(&addrs), "", maglev));
    let table = dp.json(&["maglev", "default/mg:dns/UDP"]);
    assert_eq!(table[0]["size"], 16381, "{table}");
    for b in table[0]["backends"].as_array().unwrap() {
        let share = b["entries"].as_u64().unwrap();
        assert!(
            (2500..=4100).contains(&share),
            "each of 5 backends owns about 1/5 of the table: {table}"
        );
    }

    // 200 UDP sockets each reach one backend; then b3 goes away and the same
    // sockets send again.
    let mark = std::env::temp_dir().join(format!("{}-round2", lab.id));
    let mark_s = mark.display().to_string();
    let mut child = lab.spawn(
        &client,
        true,
        &[
            "udp",
            "10.96.10.3:53",
            "--count",
            "200",
            "--sockets",
            "200",
            "--per-socket",
            "--second-round-after",
            &mark_s,
        ],
    );
    let mut lines =
        std::io::BufRead::lines(std::io::BufReader::new(child.0.stdout.take().unwrap()));
    let first: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    let remaining: Vec<String> = addrs.iter().filter(|a| **a != addrs[2]).cloned().collect();
    dp.sync(&service("mg", "10.96.10.3", &ready(&remaining), "", maglev));
    std::fs::write(&mark, "").unwrap();
    let second: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    let _ = std::fs::remove_file(&mark);
    let (first, second) = (
        first["perSocket"].as_array().unwrap(),
        second["perSocket"].as_array().unwrap(),
    );
    let mut on_removed = 0;
    let mut moved_others = 0;
    for (a, b) in first.iter().zip(second) {
        assert!(
            a.is_string() && b.is_string(),
            "every datagram answered: {a} {b}"
        );
        if a == "b3" {
            on_removed += 1;
            assert_ne!(b, "b3");
        } else if a != b {
            moved_others += 1;
        }
    }
    assert!(
        on_removed > 10,
        "about 1/5 of 200 sockets were on b3: {on_removed}"
    );
    assert!(
        moved_others <= 10,
        "Maglev keeps the other flows where they were: {moved_others} of {} moved",
        200 - on_removed
    );
}

#[test]
fn session_affinity_pins_a_client_for_its_timeout() {
    let (lab, client, backends) = lab_with_backends(4);
    let dp = Datapath::attach(&lab);
    let addrs: Vec<String> = backends.iter().map(|b| b.addr.clone()).collect();
    let affinity =
        "  sessionAffinity: ClientIP\n  sessionAffinityConfig: {clientIP: {timeoutSeconds: 1}}\n";
    dp.sync(&service(
        "sticky",
        "10.96.10.4",
        &ready(&addrs),
        affinity,
        "",
    ));
    let tcp = probe(&lab, &client, &["tcp", "10.96.10.4:80", "--count", "50"]);
    assert_eq!(tcp["failed"], 0);
    assert_eq!(
        answers(&tcp, "answers").len(),
        1,
        "one backend for the whole timeout: {tcp}"
    );
    let entries = dp.json(&["affinity"]);
    assert_eq!(entries.as_array().unwrap().len(), 1, "{entries}");
    assert_eq!(entries[0]["service"], "default/sticky:http/TCP");
    // Connections further apart than the timeout choose afresh: 8 of them
    // land on one backend of 4 with probability 4^-7.
    let spaced = probe(
        &lab,
        &client,
        &["tcp", "10.96.10.4:80", "--count", "8", "--gap", "1.6"],
    );
    assert!(
        answers(&spaced, "answers").len() >= 2,
        "affinity expires after its timeout: {spaced}"
    );
}

#[test]
fn hairpin_a_backend_reaches_its_own_service_and_can_land_on_itself() {
    let (lab, _client, backends) = lab_with_backends(2);
    let dp = Datapath::attach(&lab);
    let addrs: Vec<String> = backends.iter().map(|b| b.addr.clone()).collect();
    dp.sync(&service("hair", "10.96.10.5", &ready(&addrs), "", ""));
    let from_b1 = probe(
        &lab,
        &backends[0],
        &["tcp", "10.96.10.5:80", "--count", "60"],
    );
    assert_eq!(from_b1["failed"], 0, "{from_b1}");
    let spread = answers(&from_b1, "answers");
    assert!(
        spread.get("b1").copied().unwrap_or(0) > 0,
        "b1 reached itself: {from_b1}"
    );
    assert!(
        spread.get("b2").copied().unwrap_or(0) > 0,
        "and b2: {from_b1}"
    );
}

#[test]
fn a_removed_endpoint_gets_no_new_connection() {
    let (lab, client, backends) = lab_with_backends(3);
    let dp = Datapath::attach(&lab);
    let addrs: Vec<String> = backends.iter().map(|b| b.addr.clone()).collect();
    dp.sync(&service("churn", "10.96.10.6", &ready(&addrs), "", ""));
    let mark = std::env::temp_dir().join(format!("{}-removed", lab.id));
    let mark_s = mark.display().to_string();
    let seen = std::env::temp_dir().join(format!("{}-seen", lab.id));
    let seen_s = seen.display().to_string();
    let mut child = lab.spawn(
        &client,
        true,
        &[
            "tcp",
            "10.96.10.6:80",
            "--count",
            "3000",
            "--mark",
            &mark_s,
            "--seen",
            &seen_s,
            "--seen-names",
            "3",
        ],
    );
    // The probe says when all three backends have answered; then the sync.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !seen.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the probe did not reach all three backends in 30 s"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = std::fs::remove_file(&seen);
    dp.sync(&service("churn", "10.96.10.6", &ready(&addrs[..2]), "", ""));
    // Connections that start after the sync returned must not reach b3.
    std::fs::write(&mark, "").unwrap();
    let out = child.0.wait_with_output_ref();
    let _ = std::fs::remove_file(&mark);
    let v: Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    assert_eq!(v["failed"], 0, "{v}");
    assert!(
        answers(&v, "before").get("b3").copied().unwrap_or(0) > 0,
        "b3 served before: {v}"
    );
    assert_eq!(
        answers(&v, "after").get("b3"),
        None,
        "no new connection reaches a removed endpoint: {v}"
    );
    assert!(
        answers(&v, "after").values().sum::<u64>() >= 20,
        "connections went on after the removal: {v}"
    );
}

trait WaitOutput {
    fn wait_with_output_ref(&mut self) -> String;
}

impl WaitOutput for std::process::Child {
    fn wait_with_output_ref(&mut self) -> String {
        let mut s = String::new();
        if let Some(mut out) = self.stdout.take() {
            std::io::Read::read_to_string(&mut out, &mut s).unwrap();
        }
        let status = self.wait().unwrap();
        assert!(status.success(), "netprobe exited with {status}");
        s
    }
}

#[test]
fn kill_9_of_the_attaching_process_and_reattach_lose_no_connection() {
    let (lab, client, backends) = lab_with_backends(2);
    // The attaching process stays (sweeping conntrack) like a daemon would.
    let cgroup = lab.cgroup().display().to_string();
    let mut attacher = skiff_testkit::KillOnDrop(
        Command::new(SKIFF)
            .args([
                "bpf",
                "attach",
                "--instance",
                &lab.id,
                "--cgroup",
                &cgroup,
                "--stay",
                "--gc-interval",
                "1",
            ])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("start skiff bpf attach --stay"),
    );
    let dp = Datapath {
        instance: lab.id.clone(),
    };
    let links = Path::new("/sys/fs/bpf/skiff").join(&lab.id).join("links");
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::fs::read_dir(&links).map_or(0, |d| d.count()) < 4 {
        assert!(Instant::now() < deadline, "attach did not pin its links");
        std::thread::sleep(Duration::from_millis(50));
    }
    let addrs: Vec<String> = backends.iter().map(|b| b.addr.clone()).collect();
    let manifest = service("steady", "10.96.10.7", &ready(&addrs), "", "");
    dp.sync(&manifest);
    let before = dp.json(&["services"]);
    // Removed on drop, also when the test fails.
    let progress_file = tempfile::NamedTempFile::new().expect("temp file");
    let progress = progress_file.path().to_path_buf();
    let progress_s = progress.display().to_string();
    let mut child = lab.spawn(
        &client,
        true,
        &[
            "tcp",
            "10.96.10.7:80",
            "--count",
            "3000",
            "--progress",
            &progress_s,
        ],
    );
    let tried = || -> u64 {
        std::fs::read_to_string(&progress)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    };
    let wait_tried = |n: u64, what: &str| {
        let deadline = Instant::now() + Duration::from_secs(30);
        while tried() < n {
            assert!(Instant::now() < deadline, "{what}: {} connections", tried());
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    wait_tried(200, "connections never got going");
    attacher.kill(); // SIGKILL, mid-stream
    // Connections go on with nobody attached: the pinned links hold.
    let at_kill = tried();
    wait_tried(at_kill + 200, "connections stopped with the attacher gone");
    // A new attach adopts; a new sync finds nothing to change (nothing
    // flushed, no id renumbered).
    let again = ok(&[
        "bpf",
        "attach",
        "--instance",
        &dp.instance,
        "--cgroup",
        &cgroup,
        "-o",
        "json",
    ]);
    let again: Value = serde_json::from_str(&again).unwrap();
    assert_eq!(again["attached"].as_array().unwrap().len(), 0, "{again}");
    assert_eq!(again["adopted"].as_array().unwrap().len(), 4, "{again}");
    let synced = dp.try_sync(&manifest, &["-o", "json"]);
    let synced: Value = serde_json::from_slice(&synced.stdout).unwrap();
    assert_eq!(
        synced["writes"], 0,
        "a sync of the same state writes nothing: {synced}"
    );
    assert_eq!(synced["unchanged"], 2, "{synced}");
    assert_eq!(dp.json(&["services"]), before);
    let out = child.0.wait_with_output_ref();
    let v: Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    assert_eq!(
        v["failed"], 0,
        "zero failed connections across the kill and re-attach: {v}"
    );
    assert_eq!(answers(&v, "answers").values().sum::<u64>(), 3000);
}

#[test]
fn ten_thousand_services_of_ten_backends_program_and_read_back() {
    let lab = Lab::new();
    let dp = Datapath::attach(&lab);
    // A JSON List is the quickest manifest to read.
    let mut items = Vec::new();
    for i in 0..10_000u32 {
        let ip = format!("10.96.{}.{}", 100 + i / 250, 1 + i % 250);
        items.push(serde_json::json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": format!("s{i}"), "namespace": "load"},
            "spec": {"clusterIP": ip, "ports": [{"port": 80, "targetPort": 8080}]}
        }));
        let endpoints: Vec<Value> = (0..10u32)
            .map(|j| serde_json::json!({"addresses": [format!("10.{}.{}.{}", 128 + i / 10_000, (i / 25) % 250, (i % 25) * 10 + j)]}))
            .collect();
        items.push(serde_json::json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": format!("s{i}-1"), "namespace": "load", "labels": {"kubernetes.io/service-name": format!("s{i}")}},
            "addressType": "IPv4", "ports": [{"port": 8080, "protocol": "TCP"}], "endpoints": endpoints
        }));
    }
    let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items});
    let out = dp.try_sync(&list.to_string(), &["-o", "json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["added"], 10_000, "{report}");
    let services = dp.json(&["services"]);
    let services = services.as_array().unwrap();
    assert_eq!(services.len(), 10_000);
    for s in services {
        let i: u32 = s["name"]
            .as_str()
            .unwrap()
            .trim_start_matches("load/s")
            .split(':')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(
            s["frontends"][0]["frontend"]["addr"],
            format!("10.96.{}.{}", 100 + i / 250, 1 + i % 250)
        );
        let mut got: Vec<String> = s["backends"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["addr"]["addr"].as_str().unwrap().to_string())
            .collect();
        got.sort();
        let mut want: Vec<String> = (0..10u32)
            .map(|j| {
                format!(
                    "10.{}.{}.{}",
                    128 + i / 10_000,
                    (i / 25) % 250,
                    (i % 25) * 10 + j
                )
            })
            .collect();
        want.sort();
        assert_eq!(got, want, "{}", s["name"]);
    }
}

#[test]
fn bad_input_is_refused_whole_and_changes_nothing() {
    let lab = Lab::new();
    // Small maps, to fill them.
    let cgroup = lab.cgroup().display().to_string();
    ok(&[
        "bpf",
        "attach",
        "--instance",
        &lab.id,
        "--cgroup",
        &cgroup,
        "--services-max",
        "8",
    ]);
    let dp = Datapath {
        instance: lab.id.clone(),
    };
    let good = service(
        "fine",
        "10.96.10.8",
        &[("10.77.0.9", true, true, false)],
        "",
        "",
    );
    dp.sync(&good);
    let before = dp.json(&["services"]);

    let cases: Vec<(String, &str)> = vec![
        (
            format!(
                "{good}---\n{}",
                service("zero", "10.96.10.9", &[], "", "").replace("port: 80,", "port: 0,")
            ),
            "spec.ports[0].port",
        ),
        (
            format!(
                "{good}---\n{}",
                service("sctp", "10.96.10.9", &[], "", "")
                    .replace("protocol: UDP}", "protocol: SCTP}")
            ),
            "SCTP",
        ),
        (
            format!("{good}---\napiVersion: v1\nkind: Service\nmetadata: {{name: [oops\n"),
            "malformed",
        ),
        (
            format!(
                "{good}---\n{}",
                service(
                    "algo",
                    "10.96.10.9",
                    &[],
                    "",
                    ", annotations: {skiff.io/lb-algorithm: fastest}"
                )
            ),
            "lb-algorithm",
        ),
        (
            // Two frontends × 4 backends need more than 8 entries.
            service(
                "big",
                "10.96.10.10",
                &[
                    ("10.77.0.2", true, true, false),
                    ("10.77.0.3", true, true, false),
                    ("10.77.0.4", true, true, false),
                    ("10.77.0.5", true, true, false),
                ],
                "",
                "",
            ),
            "SKIFF_SERVICES is full",
        ),
    ];
    for (manifest, expect) in cases {
        let out = dp.try_sync(&manifest, &[]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "sync must fail for {expect}");
        assert!(err.contains(expect), "error names {expect:?}: {err}");
        assert_eq!(
            dp.json(&["services"]),
            before,
            "nothing written for {expect}"
        );
    }
    let out = skiff(&[
        "bpf",
        "attach",
        "--instance",
        "other-x",
        "--cgroup",
        "/sys/fs/cgroup/unified/no-such-cgroup",
    ]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no-such-cgroup"),
        "{out:?}"
    );
    let out = skiff(&[
        "bpf",
        "attach",
        "--instance",
        &lab.id,
        "--cgroup",
        &cgroup,
        "--iface",
        "nope0",
    ]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("\"nope0\" does not exist"),
        "{out:?}"
    );
    let out = skiff(&["bpf", "services", "--instance", "never-attached"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not attached"),
        "{out:?}"
    );
    let out = skiff(&["bpf", "attach", "--instance", "../escape"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("invalid instance name"),
        "{out:?}"
    );
}

#[test]
fn detach_leaves_no_program_link_or_pin() {
    let (lab, client, backends) = lab_with_backends(1);
    let dp = Datapath::attach(&lab);
    dp.sync(&service(
        "bye",
        "10.96.10.11",
        &ready(&[backends[0].addr.clone()]),
        "",
        "",
    ));
    let tcp = probe(&lab, &client, &["tcp", "10.96.10.11:80", "--count", "3"]);
    assert_eq!(tcp["failed"], 0);
    let out = ok(&["bpf", "detach", "--instance", &dp.instance, "-o", "json"]);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["links"].as_array().unwrap().len(), 4, "{v}");
    assert_eq!(v["maps"].as_array().unwrap().len(), 12, "{v}");
    assert!(!Path::new("/sys/fs/bpf/skiff").join(&dp.instance).exists());
    // The programs are gone from the cgroup: the ClusterIP is not translated.
    let r = probe(&lab, &client, &["refused", "10.96.10.11:80"]);
    assert!(
        r["error"].as_str().unwrap_or("").contains("unreachable"),
        "{r}"
    );
    // Detaching again is fine.
    ok(&["bpf", "detach", "--instance", &dp.instance]);
}

/// A NodePort Service (80→8080/TCP as 30080, 53→5353/UDP as 30053) with
/// the given traffic policy and endpoints `(address, node)`.
fn node_port(policy: &str, endpoints: &[(&str, &str)]) -> String {
    let mut eps = String::new();
    for (addr, node) in endpoints {
        eps.push_str(&format!("\n- addresses: [{addr}]\n  nodeName: {node}"));
    }
    if eps.is_empty() {
        eps = " []".into();
    }
    format!(
        "apiVersion: v1
kind: Service
metadata: {{name: np, namespace: default}}
spec:
  type: NodePort
  clusterIP: 10.96.30.1
  externalTrafficPolicy: {policy}
  ports:
  - {{name: http, port: 80, targetPort: 8080, nodePort: 30080}}
  - {{name: dns, port: 53, targetPort: 5353, nodePort: 30053, protocol: UDP}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: np-1, namespace: default, labels: {{kubernetes.io/service-name: np}}}}
addressType: IPv4
ports: [{{name: http, port: 8080, protocol: TCP}}, {{name: dns, port: 5353, protocol: UDP}}]
endpoints:{eps}
"
    )
}

/// A lab shaped like a node: `node` on the bridge with backends behind it,
/// and an outside host reaching the node on another link.
fn node_lab(backends: usize) -> (Lab, Host, Host, Vec<Host>) {
    let mut lab = Lab::new();
    let node = lab.host();
    let outside = lab.outside(&node);
    let mut hosts = Vec::new();
    for i in 1..=backends {
        let h = lab.host();
        lab.serve(&h, &format!("b{i}"), &[8080], &[5353]);
        hosts.push(h);
    }
    (lab, node, outside, hosts)
}

fn outside_probe(lab: &Lab, outside: &Host, args: &[&str]) -> Value {
    let out = lab.run(outside, false, args);
    serde_json::from_str(out.lines().last().unwrap_or(""))
        .unwrap_or_else(|e| panic!("netprobe said {out:?}: {e}"))
}

#[test]
fn node_port_cluster_policy_snats_to_backends_that_cannot_route_back() {
    // The backends have no route to the outside host: only SNAT to the
    // node's address brings their replies back.
    let (lab, node, outside, backends) = node_lab(2);
    let dp = Datapath::attach_node(&lab, &node);
    let eps: Vec<(&str, &str)> = backends
        .iter()
        .map(|b| (b.addr.as_str(), "elsewhere"))
        .collect();
    dp.sync(&node_port("Cluster", &eps));

    let tcp = outside_probe(&lab, &outside, &["tcp", "10.78.0.1:30080", "--count", "60"]);
    assert_eq!(tcp["failed"], 0, "{tcp}");
    assert_eq!(
        tcp["peerMismatch"], 0,
        "replies come from the NodePort address: {tcp}"
    );
    assert_eq!(answers(&tcp, "answers").len(), 2, "both backends: {tcp}");
    assert_eq!(
        tcp["clientsSeen"],
        serde_json::json!([node.addr]),
        "backends see the node's address: {tcp}"
    );

    let udp = outside_probe(
        &lab,
        &outside,
        &["udp", "10.78.0.1:30053", "--count", "60", "--sockets", "60"],
    );
    assert_eq!(udp["failed"], 0, "{udp}");
    assert_eq!(udp["peerMismatch"], 0, "{udp}");
    assert_eq!(answers(&udp, "answers").len(), 2, "{udp}");

    // A process on the node dialing its own NodePort is balanced at socket
    // level (the node's cgroup has the socket hooks), and sees the address
    // it dialed.
    let local = lab.run(&node, true, &["tcp", "10.78.0.1:30080", "--count", "40"]);
    let local: Value = serde_json::from_str(local.lines().last().unwrap()).unwrap();
    assert_eq!(local["failed"], 0, "{local}");
    assert_eq!(
        local["peerMismatch"], 0,
        "getpeername shows the NodePort: {local}"
    );
    assert_eq!(answers(&local, "answers").len(), 2, "{local}");

    // The connections are tracked and counted per service.
    let ct = dp.json(&["ct", "--service", "default/np"]);
    let entries = ct["packet"].as_array().unwrap();
    assert!(!entries.is_empty(), "{ct}");
    assert!(
        entries.iter().all(|e| e["snat"]
            .as_str()
            .is_some_and(|s| s.starts_with(&node.addr))),
        "{ct}"
    );
    let stats = dp.json(&["stats"]);
    let packets: u64 = stats["counters"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["name"].as_str().unwrap().starts_with("service"))
        .map(|c| c["counters"]["packets"].as_u64().unwrap())
        .sum();
    assert!(packets >= 240, "every packet both ways is counted: {stats}");
}

#[test]
fn node_port_local_policy_keeps_the_client_address_and_uses_local_backends_only() {
    let (lab, node, outside, backends) = node_lab(2);
    // Local backends route through their node, as pods do.
    for b in &backends {
        lab.route(b, "default", &node.addr);
    }
    let dp = Datapath::attach_node(&lab, &node);
    let manifest = node_port(
        "Local",
        &[
            (backends[0].addr.as_str(), "this-node"),
            (backends[1].addr.as_str(), "elsewhere"),
        ],
    );
    let out = dp.try_sync(&manifest, &["--node-name", "this-node"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tcp = outside_probe(&lab, &outside, &["tcp", "10.78.0.1:30080", "--count", "40"]);
    assert_eq!(tcp["failed"], 0, "{tcp}");
    assert_eq!(
        answers(&tcp, "answers"),
        BTreeMap::from([("b1".to_string(), 40)]),
        "this node's backend only: {tcp}"
    );
    assert_eq!(
        tcp["clientsSeen"],
        serde_json::json!([outside.addr]),
        "the client address is kept: {tcp}"
    );
    let udp = outside_probe(
        &lab,
        &outside,
        &["udp", "10.78.0.1:30053", "--count", "20", "--sockets", "20"],
    );
    assert_eq!(
        answers(&udp, "answers"),
        BTreeMap::from([("b1".to_string(), 20)]),
        "{udp}"
    );
    assert_eq!(
        udp["clientsSeen"],
        serde_json::json!([outside.addr]),
        "{udp}"
    );

    // With no local backend a Local NodePort refuses, even though another
    // node has one.
    let out = dp.try_sync(
        &node_port("Local", &[(backends[1].addr.as_str(), "elsewhere")]),
        &["--node-name", "this-node"],
    );
    assert!(out.status.success());
    let r = outside_probe(&lab, &outside, &["refused", "10.78.0.1:30080"]);
    assert_eq!(r["errno"], 111, "{r}");
}

#[test]
fn node_port_without_backends_answers_rst_and_icmp_at_once() {
    let (lab, node, outside, _) = node_lab(0);
    let dp = Datapath::attach_node(&lab, &node);
    dp.sync(&node_port("Cluster", &[]));
    for proto in ["tcp", "udp"] {
        let port = if proto == "tcp" { "30080" } else { "30053" };
        let r = outside_probe(
            &lab,
            &outside,
            &["refused", &format!("10.78.0.1:{port}"), "--proto", proto],
        );
        assert_eq!(
            r["errno"], 111,
            "{proto}: connection refused (RST / ICMP port unreachable): {r}"
        );
        assert!(r["ms"].as_f64().unwrap() < 100.0, "{proto}: at once: {r}");
    }
    let stats = dp.json(&["stats"]);
    let refused: u64 = stats["counters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["counters"]["refused"].as_u64().unwrap())
        .sum();
    assert_eq!(refused, 2, "{stats}");
}

#[test]
fn cluster_ip_from_another_host_is_balanced_at_the_node() {
    let (lab, node, outside, backends) = node_lab(2);
    // The outside host routes the service range to the node, as a router
    // or a peer node would.
    lab.route(&outside, "10.96.0.0/16", "10.78.0.1");
    let dp = Datapath::attach_node(&lab, &node);
    let eps: Vec<(&str, &str)> = backends
        .iter()
        .map(|b| (b.addr.as_str(), "elsewhere"))
        .collect();
    dp.sync(&node_port("Cluster", &eps));
    let tcp = outside_probe(&lab, &outside, &["tcp", "10.96.30.1:80", "--count", "40"]);
    assert_eq!(tcp["failed"], 0, "{tcp}");
    assert_eq!(
        tcp["peerMismatch"], 0,
        "replies come from the ClusterIP: {tcp}"
    );
    assert_eq!(answers(&tcp, "answers").len(), 2, "{tcp}");
}

#[test]
fn conntrack_gc_drops_flows_of_removed_backends_and_idle_ones() {
    let (lab, node, outside, backends) = node_lab(2);
    let dp = Datapath::attach_node(&lab, &node);
    let both: Vec<(&str, &str)> = backends
        .iter()
        .map(|b| (b.addr.as_str(), "elsewhere"))
        .collect();
    dp.sync(&node_port("Cluster", &both));
    let tcp = outside_probe(&lab, &outside, &["tcp", "10.78.0.1:30080", "--count", "30"]);
    let udp = outside_probe(
        &lab,
        &outside,
        &["udp", "10.78.0.1:30053", "--count", "30", "--sockets", "30"],
    );
    assert_eq!(
        tcp["failed"].as_u64().unwrap() + udp["failed"].as_u64().unwrap(),
        0
    );
    let before = dp.json(&["ct"])["packet"].as_array().unwrap().len();
    assert_eq!(before, 60, "one forward entry per flow");
    let gone = format!("{}:8080", backends[1].addr);
    let gone_udp = format!("{}:5353", backends[1].addr);
    dp.sync(&node_port("Cluster", &both[..1]));
    let r = dp.json(&["gc"]);
    assert!(r["backendGone"].as_u64().unwrap() > 0, "{r}");
    let ct = dp.json(&["ct"]);
    let left = ct["packet"].as_array().unwrap();
    assert!(
        left.iter()
            .all(|e| e["backend"] != gone.as_str() && e["backend"] != gone_udp.as_str()),
        "{ct}"
    );
    assert!(
        !left.is_empty(),
        "flows to the remaining backend stay: {ct}"
    );
    // Closed TCP flows and idle UDP ones go with zero grace.
    let out = ok(&[
        "bpf",
        "gc",
        "--instance",
        &dp.instance,
        "--tcp-closing",
        "0",
        "--udp-idle",
        "0",
        "-o",
        "json",
    ]);
    let r: Value = serde_json::from_str(&out).unwrap();
    assert!(r["idle"].as_u64().unwrap() > 0, "{r}");
    assert_eq!(dp.json(&["ct"])["packet"].as_array().unwrap().len(), 0);
}

#[test]
fn xdp_fast_path_hairpins_node_port_flows_to_a_backend_on_the_same_link() {
    // The backend sits on the outside link itself (the outside host serves
    // too): the node sends the request back out of the interface it came
    // in on, which the XDP program does with XDP_TX, both ways.
    let (mut lab, node, outside, _) = node_lab(0);
    lab.serve(&outside, "far", &[8080], &[5353]);
    let instance = lab.id.clone();
    let out = ok(&[
        "bpf",
        "attach",
        "--instance",
        &instance,
        "--cgroup",
        &lab.cgroup().display().to_string(),
        "--netns",
        &node.netns,
        "--iface",
        "eth1",
        "--pod-iface",
        "eth0",
        "-o",
        "json",
    ]);
    let dp = Datapath { instance };
    let report: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        report["xdp"],
        serde_json::json!(["eth1 (generic)"]),
        "generic XDP on a veth: {report}"
    );
    dp.sync(&node_port(
        "Cluster",
        &[(outside.addr.as_str(), "elsewhere")],
    ));
    let tcp = outside_probe(&lab, &outside, &["tcp", "10.78.0.1:30080", "--count", "40"]);
    assert_eq!(tcp["failed"], 0, "{tcp}");
    assert_eq!(tcp["peerMismatch"], 0, "{tcp}");
    assert_eq!(
        tcp["clientsSeen"],
        serde_json::json!(["10.78.0.1"]),
        "SNATed to the node: {tcp}"
    );
    let udp = outside_probe(
        &lab,
        &outside,
        &["udp", "10.78.0.1:30053", "--count", "20", "--sockets", "20"],
    );
    assert_eq!(udp["failed"], 0, "{udp}");
    let stats = dp.json(&["stats"]);
    let xdp = stats["global"]["xdpTransmitted"].as_u64().unwrap();
    assert!(
        xdp >= 4 * 40,
        "requests and replies went through XDP_TX: {stats}"
    );
}

/// The node's datapath sync, against a real API server: a service that
/// does not fit a full services map is programmed by the sync's own retry
/// once another service frees room, with no new event about it.
#[test]
fn a_service_that_did_not_fit_is_programmed_once_room_is_freed() {
    let lab = Lab::new();
    // Each service below takes 4 entries (2 ports × (1 + 1 backend)).
    ok(&[
        "bpf",
        "attach",
        "--instance",
        &lab.id,
        "--cgroup",
        &lab.cgroup().display().to_string(),
        "--services-max",
        "10",
    ]);
    let dp = Datapath {
        instance: lab.id.clone(),
    };
    let server = skiff_testkit::server::Server::start(Path::new(SKIFF), &[], &[]);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let client = rt
        .block_on(skiff_client::Client::connect_with(&server.credentials()))
        .expect("connect");
    let (failing_tx, failing) = tokio::sync::watch::channel(Default::default());
    let sync = rt.spawn(skiff_node::datapath::sync_reporting(
        client,
        dp.instance.clone(),
        "retry-node".into(),
        failing_tx,
    ));
    let failing_on = |svc: &str| failing.borrow().get(svc).cloned();
    // Both ports of the service are in the maps, with their backend.
    let programmed = |svc: &str| -> bool {
        let ports = dp
            .json(&["services"])
            .as_array()
            .expect("a list")
            .iter()
            .filter(|s| {
                s["name"]
                    .as_str()
                    .is_some_and(|n| n.starts_with(&format!("default/{svc}:")))
                    && s["backends"].as_array().is_some_and(|b| b.len() == 1)
            })
            .count();
        ports == 2
    };
    let wait = |what: &str, cond: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let backend = [("10.77.0.9", true, true, false)];
    server.apply(&service("a", "10.96.20.1", &backend, "", ""));
    server.apply(&service("b", "10.96.20.2", &backend, "", ""));
    wait("a and b programmed", &|| programmed("a") && programmed("b"));
    server.apply(&service("c", "10.96.20.3", &backend, "", ""));
    // c does not fit: the sync fails on it and backs off.
    wait("the sync to fail on c", &|| {
        failing_on("default/c").is_some()
    });
    let why = failing_on("default/c").unwrap();
    assert!(
        why.contains("programming default/c:") && why.contains("is full"),
        "{why}"
    );
    assert!(
        !programmed("c"),
        "a full map cannot hold c: {why}\n{}",
        dp.json(&["services"])
    );
    assert!(programmed("a") && programmed("b"), "the others stay");
    // Room is freed by removing a; nothing about c changes in the API.
    server.ok(&["delete", "service", "a"]);
    wait("c programmed by the retry", &|| programmed("c"));
    assert!(!programmed("a"));
    assert!(programmed("b"));
    wait("nothing failing", &|| failing.borrow().is_empty());
    sync.abort();
    drop(rt);
}
