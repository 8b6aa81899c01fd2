//! The node daemon end to end, as root: real containerd (a private
//! instance per test), real runc containers of the busybox image, real
//! network namespaces and veths, the real eBPF datapath — through the
//! built `skiff` binary and its API.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;
use skiff_testkit::cluster::Cluster;
use skiff_testkit::require_tool;

const SKIFF: &str = env!("CARGO_BIN_EXE_skiff");
const BUSYBOX: &str = "docker.io/library/busybox:latest";

/// The test image: busybox with its applets, plus `udp-echo` (a UDP
/// server and client built static from tests/fixtures, as busybox's nc has
/// no UDP), as an OCI layout tar; built once per test run.
fn image_tar() -> &'static Path {
    static TAR: std::sync::OnceLock<(tempfile::TempDir, std::path::PathBuf)> =
        std::sync::OnceLock::new();
    &TAR.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("udp-echo");
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/udp-echo.c");
        let ok = std::process::Command::new("gcc")
            .args(["-static", "-Os", "-o"])
            .arg(&bin)
            .arg(&src)
            .status()
            .expect("run gcc");
        assert!(ok.success(), "building the udp-echo fixture failed");
        let mut fs = skiff_node::image::build::busybox_rootfs(Path::new("/bin/busybox")).unwrap();
        fs.file("bin/udp-echo", 0o755, std::fs::read(&bin).unwrap());
        let tar = dir.path().join("image.tar");
        let mut f = std::fs::File::create(&tar).unwrap();
        skiff_node::image::build::write_layout(
            &mut f,
            BUSYBOX,
            &fs,
            skiff_node::image::build::busybox_run_config(),
        )
        .unwrap();
        (dir, tar)
    })
    .1
}

/// A cluster with the test image imported; `None` outside CI when a tool
/// is missing.
fn cluster(node_flags: &[&str]) -> Option<Cluster> {
    require_tool("busybox")?;
    require_tool("gcc")?;
    let c = Cluster::start_with(Path::new(SKIFF), node_flags)?;
    let out = c.skiff_ok(&["image", "import", image_tar().to_str().unwrap()]);
    assert_eq!(out.trim(), BUSYBOX);
    Some(c)
}

fn pod(c: &Cluster, name: &str) -> Option<Value> {
    let (ok, out, _) = c.skiff(&["get", "pod", name, "-o", "json"]);
    ok.then(|| serde_json::from_str(&out).expect("pod JSON"))
}

/// Polls the pod until `f` holds; fails with the last state seen.
fn wait_pod(
    c: &Cluster,
    name: &str,
    what: &str,
    timeout: Duration,
    f: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let p = pod(c, name);
        if let Some(p) = &p
            && f(p)
        {
            return p.clone();
        }
        assert!(
            Instant::now() < deadline,
            "pod {name}: {what} not reached in {timeout:?}; last: {}\n--- node log ---\n{}",
            p.map(|p| serde_json::to_string_pretty(&p["status"]).unwrap())
                .unwrap_or_default(),
            c.log("node")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn phase(p: &Value) -> &str {
    p["status"]["phase"].as_str().unwrap_or("")
}

fn condition(p: &Value, kind: &str) -> String {
    p["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == kind))
        .and_then(|c| c["status"].as_str())
        .unwrap_or("")
        .to_string()
}

fn running_ready(p: &Value) -> bool {
    phase(p) == "Running" && condition(p, "Ready") == "True"
}

fn restarts(p: &Value) -> i64 {
    p["status"]["containerStatuses"][0]["restartCount"]
        .as_i64()
        .unwrap_or(0)
}

fn pod_ip(p: &Value) -> String {
    p["status"]["podIP"].as_str().unwrap_or("").to_string()
}

fn httpd_pod(name: &str, node: &str, extra: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: {name}
  labels: {{app: web}}
spec:
  nodeName: {node}
  terminationGracePeriodSeconds: 2
  containers:
  - name: httpd
    image: busybox
    command: ["sh", "-c", "echo pod $HOSTNAME starting; exec httpd -f -v -p 8080 -h /var/www"]
    ports: [{{containerPort: 8080, name: http}}]
{extra}"#
    )
}

/// One HTTP GET to an address inside a namespace this test made.
fn http_get(ip: &str, port: u16) -> Option<String> {
    use std::io::{Read, Write};
    let addr: std::net::SocketAddr = format!("{ip}:{port}").parse().ok()?;
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET / HTTP/1.0\r\nHost: {ip}\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

fn list_dir(p: &Path) -> Vec<String> {
    std::fs::read_dir(p)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().to_string())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn a_pod_runs_answers_logs_and_is_removed_completely() {
    let Some(c) = cluster(&[]) else { return };
    c.apply(&httpd_pod("web", &c.name, ""));
    let p = wait_pod(
        &c,
        "web",
        "Running and Ready",
        Duration::from_secs(60),
        running_ready,
    );
    let ip = pod_ip(&p);
    assert!(
        ip.starts_with(c.pod_cidr.trim_end_matches("0/24")),
        "{ip} not in {}",
        c.pod_cidr
    );
    assert_eq!(p["status"]["hostIP"], "127.0.0.1");
    assert!(p["status"]["startTime"].is_string());
    let cs = &p["status"]["containerStatuses"][0];
    assert!(cs["state"]["running"]["startedAt"].is_string(), "{cs}");
    assert!(
        cs["containerID"]
            .as_str()
            .unwrap()
            .starts_with("containerd://")
    );
    assert_eq!(cs["ready"], true);
    for kind in ["PodScheduled", "Initialized", "ContainersReady", "Ready"] {
        assert_eq!(condition(&p, kind), "True", "{kind}");
    }
    let body = http_get(&ip, 8080).expect("the pod answers on its address");
    assert!(body.contains("hello from skiff"), "{body}");

    // The container's output is in its CRI log file.
    let uid = p["metadata"]["uid"].as_str().unwrap();
    let log = c
        .log_dir()
        .join(format!("default_web_{uid}"))
        .join("httpd")
        .join("0.log");
    let deadline = Instant::now() + Duration::from_secs(10);
    let text = loop {
        let t = std::fs::read_to_string(&log).unwrap_or_default();
        if t.contains("response:200") || Instant::now() > deadline {
            break t;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(text.contains(" stdout F pod web starting"), "{text}");
    assert!(
        text.contains(" stderr F ") && text.contains("response:200"),
        "{text}"
    );

    // The pod's files: resolv.conf for the cluster DNS.
    let resolv =
        std::fs::read_to_string(c.node_dir().join("pods").join(uid).join("etc/resolv.conf"))
            .unwrap();
    assert!(
        resolv.contains("nameserver 10.96.0.10")
            && resolv.contains("search default.svc.cluster.local")
    );

    // Deleting removes container, snapshot, namespace, veth and address.
    c.skiff_ok(&["delete", "pod", "web"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while pod(&c, "web").is_some() {
        assert!(
            Instant::now() < deadline,
            "the pod was not removed: {}",
            c.log("node")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let ctr = |what: &str| {
        let out = std::process::Command::new("ctr")
            .arg("--address")
            .arg(&c.containerd_sock)
            .args(["-n", "skiff", what, "ls"])
            .output()
            .unwrap();
        // Every line after the header names one.
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .skip(1)
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    assert!(ctr("containers").is_empty(), "{:?}", ctr("containers"));
    // Only the image's committed layer snapshot is left.
    assert_eq!(ctr("snapshots").len(), 1, "{:?}", ctr("snapshots"));
    assert!(list_dir(&c.run_dir().join("netns")).is_empty());
    let links = std::process::Command::new("ip")
        .args(["-o", "link", "show"])
        .output()
        .unwrap();
    let veth = skiff_node::net::podnet::host_veth_name(uid);
    assert!(
        !String::from_utf8_lossy(&links.stdout).contains(&veth),
        "{veth} is still there"
    );
    let ipam = c.node_dir().join("ipam").join(c.pod_cidr.replace('/', "_"));
    assert_eq!(
        list_dir(&ipam).into_iter().filter(|f| f != "last").count(),
        0,
        "an address is still held"
    );
}

#[test]
fn pods_reach_each_other_and_terminal_phases_are_reported() {
    let Some(c) = cluster(&[]) else { return };
    c.apply(&httpd_pod("server", &c.name, ""));
    let server = wait_pod(
        &c,
        "server",
        "Running",
        Duration::from_secs(60),
        running_ready,
    );
    let ip = pod_ip(&server);
    // A second pod fetches the page over the pod network and exits.
    c.apply(&format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: client}}
spec:
  nodeName: {node}
  restartPolicy: Never
  containers:
  - name: get
    image: busybox
    command: ["sh", "-c", "printf 'GET / HTTP/1.0\r\n\r\n' | nc -w 3 {ip} 8080 | tail -1"]
"#,
        node = c.name
    ));
    let done = wait_pod(&c, "client", "Succeeded", Duration::from_secs(60), |p| {
        phase(p) == "Succeeded"
    });
    let t = &done["status"]["containerStatuses"][0]["state"]["terminated"];
    assert_eq!(t["exitCode"], 0, "{t}");
    assert_eq!(t["reason"], "Completed");
    let uid = done["metadata"]["uid"].as_str().unwrap();
    let log = std::fs::read_to_string(c.log_dir().join(format!("default_client_{uid}/get/0.log")))
        .unwrap();
    assert!(log.contains("stdout F hello from skiff"), "{log}");
    assert_eq!(condition(&done, "Ready"), "False");

    // A failing command under Never: Failed, with its exit code.
    c.apply(&format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: fails}}\nspec:\n  nodeName: {}\n  restartPolicy: Never\n  containers:\n  - {{name: c, image: busybox, command: [sh, -c, 'exit 7']}}\n",
        c.name
    ));
    let failed = wait_pod(&c, "fails", "Failed", Duration::from_secs(60), |p| {
        phase(p) == "Failed"
    });
    assert_eq!(
        failed["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"],
        7
    );
    assert_eq!(restarts(&failed), 0);
}

#[test]
fn crash_loops_back_off_and_probes_restart_and_gate() {
    // A 1 s base back-off keeps the test short; the doubling is the same.
    let Some(c) = cluster(&["--restart-backoff", "1"]) else {
        return;
    };
    c.apply(&format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: crash}}\nspec:\n  nodeName: {}\n  containers:\n  - {{name: c, image: busybox, command: [sh, -c, 'echo boom; exit 3']}}\n",
        c.name
    ));
    // Restart times as the status shows them.
    let mut seen: Vec<(i64, Instant)> = Vec::new();
    let mut backoff_seen = false;
    let deadline = Instant::now() + Duration::from_secs(60);
    while seen.last().map(|s| s.0).unwrap_or(0) < 4 {
        assert!(
            Instant::now() < deadline,
            "restarts seen: {seen:?}\n{}",
            c.log("node")
        );
        if let Some(p) = pod(&c, "crash") {
            let n = restarts(&p);
            if seen.last().map(|s| s.0) != Some(n) {
                seen.push((n, Instant::now()));
            }
            let cs = &p["status"]["containerStatuses"][0];
            if cs["state"]["waiting"]["reason"] == "CrashLoopBackOff" {
                backoff_seen = true;
                assert_eq!(cs["lastState"]["terminated"]["exitCode"], 3, "{cs}");
                assert_eq!(
                    phase(&p),
                    "Running",
                    "a crash-looping Always pod is Running"
                );
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(backoff_seen, "CrashLoopBackOff never showed");
    // Back-offs 1 s, 2 s, 4 s: each gap longer than the one before.
    let gaps: Vec<f64> = seen
        .windows(2)
        .skip(1)
        .map(|w| (w[1].1 - w[0].1).as_secs_f64())
        .collect();
    assert!(gaps.len() >= 3, "{gaps:?}");
    assert!(
        gaps.windows(2).all(|g| g[1] > g[0] * 1.3),
        "back-off did not grow: {gaps:?}"
    );
    // Logs of each attempt are kept per restart.
    let uid = pod(&c, "crash").unwrap()["metadata"]["uid"]
        .as_str()
        .unwrap()
        .to_string();
    let dir = c.log_dir().join(format!("default_crash_{uid}/c"));
    assert!(list_dir(&dir).len() >= 4, "{:?}", list_dir(&dir));

    // Liveness: nothing listens on 8081, so the container is restarted.
    c.apply(&httpd_pod(
        "sick",
        &c.name,
        "    livenessProbe: {httpGet: {path: /, port: 8081}, periodSeconds: 1, failureThreshold: 2}\n",
    ));
    let p = wait_pod(
        &c,
        "sick",
        "a liveness restart",
        Duration::from_secs(60),
        |p| restarts(p) >= 1,
    );
    assert!(p["status"]["containerStatuses"][0]["lastState"]["terminated"].is_object());

    // Readiness: not ready until the port answers, then ready.
    c.apply(&format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: slow}}
spec:
  nodeName: {}
  containers:
  - name: c
    image: busybox
    command: ["sh", "-c", "sleep 3; exec httpd -f -p 8080 -h /var/www"]
    readinessProbe: {{tcpSocket: {{port: 8080}}, periodSeconds: 1}}
"#,
        c.name
    ));
    let p = wait_pod(&c, "slow", "Running", Duration::from_secs(60), |p| {
        phase(p) == "Running"
    });
    assert_eq!(
        condition(&p, "Ready"),
        "False",
        "ready before the probe passed"
    );
    let p = wait_pod(&c, "slow", "Ready", Duration::from_secs(30), running_ready);
    assert_eq!(restarts(&p), 0);
}

#[test]
fn a_restarted_node_adopts_its_running_containers() {
    let Some(mut c) = cluster(&[]) else { return };
    c.apply(&httpd_pod("keep", &c.name, ""));
    c.apply(
        r#"apiVersion: v1
kind: Service
metadata: {name: keep}
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}]
"#,
    );
    let before = wait_pod(
        &c,
        "keep",
        "Running",
        Duration::from_secs(60),
        running_ready,
    );
    let ip = pod_ip(&before);
    let id = before["status"]["containerStatuses"][0]["containerID"].clone();
    let svc: Value =
        serde_json::from_str(&c.skiff_ok(&["get", "svc", "keep", "-o", "json"])).unwrap();
    let vip = svc["spec"]["clusterIP"].as_str().unwrap().to_string();
    // A client pod asks the ClusterIP five times a second and logs each answer.
    c.apply(&format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: asker
spec:
  nodeName: {node}
  terminationGracePeriodSeconds: 1
  containers:
  - name: c
    image: busybox
    command:
    - sh
    - -c
    - |
      while true; do
        printf 'GET / HTTP/1.0\r\n\r\n' | nc -w 1 {vip} 80 | tail -1 | grep -q 'hello from skiff' && echo ok || echo FAIL
        sleep 0.2
      done
"#,
        node = c.name
    ));
    let asker = wait_pod(
        &c,
        "asker",
        "Running",
        Duration::from_secs(60),
        running_ready,
    );
    let asker_log = c.log_dir().join(format!(
        "default_asker_{}/c/0.log",
        asker["metadata"]["uid"].as_str().unwrap()
    ));
    let count = |word: &str| {
        std::fs::read_to_string(&asker_log)
            .unwrap_or_default()
            .matches(word)
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while count("stdout F ok") < 5 {
        assert!(
            Instant::now() < deadline,
            "the ClusterIP never answered: {}",
            std::fs::read_to_string(&asker_log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let fails_before = count("FAIL");
    c.kill_node();
    // The pod and its ClusterIP answer while the node daemon is gone...
    let ok_at_kill = count("stdout F ok");
    let deadline = Instant::now() + Duration::from_secs(30);
    while count("stdout F ok") < ok_at_kill + 5 {
        assert!(
            Instant::now() < deadline,
            "the ClusterIP stopped answering with the node daemon down"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(http_get(&ip, 8080).is_some_and(|b| b.contains("hello from skiff")));
    c.start_node();
    // ...and after it is back (it says so once it adopted the container),
    // through the same container.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !c.log("node").contains("adopted a running container") {
        assert!(
            Instant::now() < deadline,
            "the node never adopted the container"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let after = wait_pod(
        &c,
        "keep",
        "Running",
        Duration::from_secs(30),
        running_ready,
    );
    assert_eq!(
        after["status"]["containerStatuses"][0]["containerID"], id,
        "the container was replaced"
    );
    assert_eq!(restarts(&after), 0);
    assert_eq!(pod_ip(&after), ip);
    assert!(c.log("node").contains("adopted a running container"));
    assert!(http_get(&ip, 8080).is_some_and(|b| b.contains("hello from skiff")));
    let ok_after = count("stdout F ok");
    let deadline = Instant::now() + Duration::from_secs(30);
    while count("stdout F ok") <= ok_after {
        assert!(
            Instant::now() < deadline,
            "the ClusterIP stopped answering after the restart"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        count("FAIL"),
        fails_before,
        "a request through the ClusterIP failed across the restart"
    );
    assert_eq!(restarts(&pod(&c, "asker").unwrap()), 0);
}

#[test]
fn bad_pods_get_a_clear_status_and_nothing_crashes() {
    let Some(c) = cluster(&[]) else { return };
    c.apply(&format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: noimage}}\nspec:\n  nodeName: {}\n  containers:\n  - {{name: c, image: 'example.invalid/nothing:1'}}\n",
        c.name
    ));
    let p = wait_pod(
        &c,
        "noimage",
        "an image error",
        Duration::from_secs(30),
        |p| {
            let r = &p["status"]["containerStatuses"][0]["state"]["waiting"]["reason"];
            r == "ErrImagePull" || r == "ImagePullBackOff"
        },
    );
    let msg = p["status"]["containerStatuses"][0]["state"]["waiting"]["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(msg.contains("example.invalid/nothing:1"), "{msg}");
    assert_eq!(phase(&p), "Pending");

    c.apply(&format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: nocmd}}\nspec:\n  nodeName: {}\n  containers:\n  - {{name: c, image: busybox, command: [/no/such/binary]}}\n",
        c.name
    ));
    let p = wait_pod(&c, "nocmd", "a start error", Duration::from_secs(30), |p| {
        let w = &p["status"]["containerStatuses"][0]["state"]["waiting"];
        w["reason"] == "RunContainerError" || w["reason"] == "CrashLoopBackOff"
    });
    let w = p["status"]["containerStatuses"][0]["state"]["waiting"].to_string();
    assert!(
        w.contains("/no/such/binary") || w.contains("CrashLoopBackOff"),
        "{w}"
    );

    // Meanwhile a good pod on the same node is unaffected.
    c.apply(&httpd_pod("fine", &c.name, ""));
    wait_pod(
        &c,
        "fine",
        "Running",
        Duration::from_secs(60),
        running_ready,
    );
    assert!(
        c.log("node").matches("node ready").count() == 1,
        "the node restarted"
    );
}

#[test]
fn logs_and_exec_go_through_the_api_server() {
    let Some(c) = cluster(&["--restart-backoff", "1"]) else {
        return;
    };
    // Says hello, then counts until told to stop.
    c.apply(&format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: talker}}
spec:
  nodeName: {}
  containers:
  - name: talk
    image: busybox
    command: ["sh", "-c", "echo hello; echo oops >&2; if [ ! -e /tmp/x ]; then echo first run; fi; i=0; while [ ! -e /tmp/stop ]; do i=$((i+1)); echo line $i; sleep 0.2; done; echo stopping; exit 1"]
"#,
        c.name
    ));
    wait_pod(
        &c,
        "talker",
        "Running",
        Duration::from_secs(60),
        running_ready,
    );
    // Wait until it has logged a few lines (its first ones included).
    let deadline = Instant::now() + Duration::from_secs(30);
    while !c.skiff_ok(&["logs", "talker"]).contains("line 3\n") {
        assert!(Instant::now() < deadline, "talker never logged line 3");
        std::thread::sleep(Duration::from_millis(100));
    }
    // stdout and stderr are two pipes: their lines interleave by arrival.
    let without_stderr = |s: &str| {
        s.lines()
            .filter(|l| *l != "oops")
            .collect::<Vec<_>>()
            .join("\n")
    };
    let out = c.skiff_ok(&["logs", "talker"]);
    assert!(out.lines().any(|l| l == "oops"), "{out}");
    assert!(
        without_stderr(&out).starts_with("hello\nfirst run\nline 1\n"),
        "{out}"
    );
    let tail = c.skiff_ok(&["logs", "talker", "--tail", "2"]);
    assert_eq!(tail.lines().count(), 2, "{tail}");
    assert!(tail.lines().all(|l| l.starts_with("line ")), "{tail}");
    let stamped = c.skiff_ok(&["logs", "talker", "--tail", "1", "--timestamps"]);
    assert!(
        stamped.starts_with("20") && stamped.contains("Z line "),
        "{stamped}"
    );

    // --since: once it has logged for more than three seconds (a line each
    // 0.2 s), the last second holds no "hello"; the last hour does.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !c.skiff_ok(&["logs", "talker"]).contains("line 16\n") {
        assert!(Instant::now() < deadline, "talker never logged line 16");
        std::thread::sleep(Duration::from_millis(100));
    }
    let recent = c.skiff_ok(&["logs", "talker", "--since", "1s"]);
    assert!(
        !recent.contains("hello") && recent.contains("line "),
        "{recent}"
    );
    // stderr's "oops" may arrive before "hello" (two pipes).
    let hour = c.skiff_ok(&["logs", "talker", "--since", "1h"]);
    assert!(without_stderr(&hour).starts_with("hello\n"), "{hour}");

    // kubectl reads the same through pods/{name}/log.
    if let Some(kubectl) = require_tool("kubectl") {
        let config = c.kubeconfig();
        let kubectl = |args: &[&str]| {
            let out = std::process::Command::new(&kubectl)
                .arg("--kubeconfig")
                .arg(&config)
                .args(args)
                .env("HOME", c.dir.path())
                .output()
                .unwrap();
            assert!(out.status.success(), "kubectl {args:?}: {out:?}");
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        let all = kubectl(&["logs", "talker"]);
        assert!(
            without_stderr(&all).starts_with("hello\nfirst run\nline 1\n"),
            "{all}"
        );
        // The first line is hello or, arriving first, oops.
        let head = kubectl(&["logs", "talker", "--limit-bytes=3"]);
        assert!(head == "hel" || head == "oop", "{head:?}");
        let tail = kubectl(&["logs", "talker", "--tail=2", "-c", "talk"]);
        assert_eq!(tail.lines().count(), 2, "{tail}");
        let recent = kubectl(&["logs", "talker", "--since=1s"]);
        assert!(!recent.contains("hello"), "{recent}");
        let stamped = kubectl(&["logs", "talker", "--tail=1", "--timestamps"]);
        assert!(
            stamped.starts_with("20") && stamped.contains("Z line "),
            "{stamped}"
        );
    }

    // -f keeps streaming: new lines arrive after the command started.
    let mut follow = c
        .cmd(&["logs", "talker", "-f", "--tail", "0"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = follow.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        use std::io::Read;
        let mut buf = vec![0u8; 4096];
        let n = stdout.read(&mut buf).unwrap_or(0);
        String::from_utf8_lossy(&buf[..n]).to_string()
    });
    let first = reader.join().unwrap();
    let _ = follow.kill();
    let _ = follow.wait();
    assert!(first.starts_with("line "), "{first:?}");

    // exec: output, exit code, stdin, and the container's environment.
    let out = c.skiff_ok(&[
        "exec",
        "talker",
        "--",
        "sh",
        "-c",
        "echo in $HOSTNAME; cat /etc/resolv.conf | head -1",
    ]);
    assert_eq!(
        out,
        "in talker\nsearch default.svc.cluster.local svc.cluster.local cluster.local\n"
    );
    let (ok, _, _) = c.skiff(&["exec", "talker", "--", "sh", "-c", "exit 4"]);
    assert!(!ok);
    let code = c
        .cmd(&["exec", "talker", "--", "sh", "-c", "exit 4"])
        .status()
        .unwrap();
    assert_eq!(code.code(), Some(4), "the command's exit code is the CLI's");
    let mut piped = c
        .cmd(&[
            "exec",
            "-i",
            "talker",
            "--",
            "sh",
            "-c",
            "tr a-z A-Z > /tmp/x; cat /tmp/x",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = piped.stdin.take().unwrap();
        stdin.write_all(b"from stdin\n").unwrap();
    }
    let out = piped.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "FROM STDIN\n");

    // -it: a terminal in the container (script(1) gives this side one).
    if require_tool("script").is_some() {
        let out = std::process::Command::new("script")
            .args(["-eqc"])
            .arg(format!(
                "{SKIFF} --kubeconfig {} exec -it talker -- sh -c 'tty; exit 6'",
                c.kubeconfig().display()
            ))
            .arg("/dev/null")
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(6), "{out:?}");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("/dev/pts/"),
            "{out:?}"
        );
    }

    // kubectl exec: the WebSocket (v5.channel.k8s.io) pods/exec.
    if let Some(kubectl) = require_tool("kubectl") {
        let config = c.kubeconfig();
        let run = |args: &[&str], stdin: &[u8]| {
            use std::io::Write;
            let mut child = std::process::Command::new(&kubectl)
                .arg("--kubeconfig")
                .arg(&config)
                .args(args)
                .env("HOME", c.dir.path())
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            child.stdin.take().unwrap().write_all(stdin).unwrap();
            child.wait_with_output().unwrap()
        };
        let out = run(&["exec", "talker", "--", "echo", "hi"], b"");
        assert!(out.status.success(), "{out:?}");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "hi\n");
        let out = run(
            &[
                "exec",
                "talker",
                "--",
                "sh",
                "-c",
                "echo out; echo err >&2; exit 4",
            ],
            b"",
        );
        assert_eq!(out.status.code(), Some(4), "{out:?}");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "out\n");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("err\n") && err.contains("exit code 4"),
            "{err}"
        );
        let out = run(
            &[
                "exec", "-i", "talker", "-c", "talk", "--", "tr", "a-z", "A-Z",
            ],
            b"piped through\n",
        );
        assert!(out.status.success(), "{out:?}");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "PIPED THROUGH\n");
        let out = run(&["exec", "talker", "-c", "nope", "--", "true"], b"");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains("container nope is not valid"),
            "{err}"
        );
        let out = run(&["exec", "talker", "--", "/no/such/binary"], b"");
        assert!(!out.status.success(), "{out:?}");
    }

    // --previous: after a restart, the first instance's output.
    c.skiff_ok(&["exec", "talker", "--", "touch", "/tmp/stop"]);
    wait_pod(&c, "talker", "a restart", Duration::from_secs(30), |p| {
        restarts(p) >= 1 && running_ready(p)
    });
    let prev = c.skiff_ok(&["logs", "talker", "--previous"]);
    assert!(
        without_stderr(&prev).starts_with("hello\nfirst run\n"),
        "{prev}"
    );
    assert!(prev.ends_with("stopping\n"), "{prev}");
    let now = c.skiff_ok(&["logs", "talker"]);
    // A fresh filesystem: /tmp/x (written by the exec above) is gone.
    assert!(
        without_stderr(&now).starts_with("hello\nfirst run\nline 1"),
        "{now}"
    );
    assert!(!now.contains("stopping"), "{now}");

    // The node endpoint: mutual TLS, and only the API server's kind of
    // certificate (system:masters) may call it; not even the node's own.
    let node: serde_json::Value =
        serde_json::from_str(&c.skiff_ok(&["get", "node", &c.name, "-o", "json"])).unwrap();
    let port = &node["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"];
    let url = format!("https://127.0.0.1:{port}/skiff.v1.Pods/Logs");
    let server_tls = c.dir.path().join("server/tls");
    let node_pki = c.node_dir().join("pki");
    let call = |cert: Option<(PathBuf, PathBuf)>| {
        let mut curl = std::process::Command::new("curl");
        curl.args(["-s", "-o", "/dev/null", "-D", "-", "--http2", "--cacert"])
            .arg(server_tls.join("server-ca.crt"));
        if let Some((crt, key)) = cert {
            curl.arg("--cert").arg(crt).arg("--key").arg(key);
        }
        let out = curl
            .args([
                "-X",
                "POST",
                "-H",
                "content-type: application/grpc",
                "-H",
                "te: trailers",
            ])
            .args(["--data-binary", "", &url])
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_lowercase(),
        )
    };
    let (ok, _) = call(None);
    assert!(!ok, "a caller without a certificate got past the handshake");
    let (ok, headers) = call(Some((
        node_pki.join("client.crt"),
        node_pki.join("client.key"),
    )));
    assert!(ok && headers.contains("grpc-status: 7"), "{headers}");
    let (ok, headers) = call(Some((
        server_tls.join("admin.crt"),
        server_tls.join("admin.key"),
    )));
    assert!(ok && !headers.contains("grpc-status: 7"), "{headers}");

    // Each exec is in the audit log, with who ran it.
    let audit = std::fs::read_to_string(c.dir.path().join("server/audit.log")).unwrap();
    let execs: Vec<serde_json::Value> = audit
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|l: &serde_json::Value| l["objectRef"]["subresource"] == "exec")
        .collect();
    assert!(
        execs
            .iter()
            .any(|l| l["objectRef"]["name"] == "talker" && l["user"]["username"] == "system:admin"),
        "{audit}"
    );

    // Errors are named.
    let (ok, _, err) = c.skiff(&["logs", "nosuchpod"]);
    assert!(!ok && err.contains("nosuchpod"), "{err}");
    let (ok, _, err) = c.skiff(&["exec", "talker", "-c", "nope", "--", "true"]);
    assert!(!ok && err.contains("nope"), "{err}");
}

/// A Deployment's pods behind a Service: the scheduler binds them, the
/// ReplicaSet keeps three, the EndpointSlice controller follows their
/// readiness, and the datapath carries the ClusterIP — TCP and UDP — from
/// another pod to all three.
#[test]
fn a_deployment_behind_a_service_answers_on_its_cluster_ip() {
    let Some(c) = cluster(&[]) else { return };
    c.apply(
        r#"apiVersion: apps/v1
kind: Deployment
metadata: {name: echo}
spec:
  replicas: 3
  selector: {matchLabels: {app: echo}}
  template:
    metadata: {labels: {app: echo}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: echo
        image: busybox
        command: ["sh", "-c", "mkdir -p /tmp/www; echo $HOSTNAME > /tmp/www/index.html; udp-echo serve 5353 & exec httpd -f -p 8080 -h /tmp/www"]
        ports: [{name: http, containerPort: 8080}]
        readinessProbe: {exec: {command: [cat, /tmp/ready]}, periodSeconds: 1}
---
apiVersion: v1
kind: Service
metadata: {name: echo}
spec:
  selector: {app: echo}
  ports:
  - {name: http, port: 80, targetPort: http}
  - {name: dns, port: 53, targetPort: 5353, protocol: UDP}
---
apiVersion: v1
kind: Pod
metadata: {name: client}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - {name: c, image: busybox, command: [sleep, "3600"]}
"#,
    );
    let list = |label: &str| -> Vec<Value> {
        let out = c.skiff_ok(&["get", "pods", "-l", label, "-o", "json"]);
        let v: Value = serde_json::from_str(&out).unwrap();
        v["items"].as_array().cloned().unwrap_or_default()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let pods = loop {
        let pods = list("app=echo");
        if pods.len() == 3 && pods.iter().all(|p| phase(p) == "Running") {
            break pods;
        }
        assert!(
            Instant::now() < deadline,
            "{} echo pods: {:?}\n{}",
            pods.len(),
            pods.iter().map(|p| p["status"].clone()).collect::<Vec<_>>(),
            c.log("node")
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        pods.iter()
            .all(|p| p["spec"]["nodeName"] == c.name.as_str()),
        "scheduled to the node"
    );
    wait_pod(
        &c,
        "client",
        "Running",
        Duration::from_secs(60),
        running_ready,
    );
    let svc: Value =
        serde_json::from_str(&c.skiff_ok(&["get", "svc", "echo", "-o", "json"])).unwrap();
    let vip = svc["spec"]["clusterIP"].as_str().unwrap().to_string();
    let names: Vec<String> = pods
        .iter()
        .map(|p| p["metadata"]["name"].as_str().unwrap().to_string())
        .collect();

    // Who answers the ClusterIP from the client pod, over TCP and UDP.
    let answers = |proto: &str| -> std::collections::BTreeMap<String, usize> {
        let script = if proto == "tcp" {
            format!(
                "for i in $(seq 60); do printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 2 {vip} 80 | tail -1; done"
            )
        } else {
            format!("udp-echo ask {vip} 53 60")
        };
        let out = c.skiff_ok(&["exec", "client", "--", "sh", "-c", &script]);
        let mut seen = std::collections::BTreeMap::new();
        for l in out.lines().filter(|l| !l.is_empty()) {
            *seen.entry(l.to_string()).or_default() += 1;
        }
        seen
    };
    // None is ready: the ClusterIP refuses (no endpoints are ready).
    let refused = c.skiff(&[
        "exec",
        "client",
        "--",
        "sh",
        "-c",
        &format!("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 2 {vip} 80"),
    ]);
    assert!(
        refused.1.is_empty(),
        "answered before any pod was ready: {refused:?}"
    );
    // Two become ready: only those two answer.
    for n in &names[..2] {
        c.skiff_ok(&["exec", n, "--", "touch", "/tmp/ready"]);
    }
    for n in &names[..2] {
        wait_pod(&c, n, "Ready", Duration::from_secs(30), running_ready);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let two = loop {
        let seen = answers("tcp");
        if seen.len() == 2 || Instant::now() > deadline {
            break seen;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let ready: std::collections::BTreeSet<String> = names[..2].iter().cloned().collect();
    assert_eq!(
        two.keys()
            .cloned()
            .collect::<std::collections::BTreeSet<_>>(),
        ready,
        "{two:?}"
    );
    // All three ready: all three answer, over TCP and UDP.
    c.skiff_ok(&["exec", &names[2], "--", "touch", "/tmp/ready"]);
    wait_pod(
        &c,
        &names[2],
        "Ready",
        Duration::from_secs(30),
        running_ready,
    );
    let all: std::collections::BTreeSet<String> = names.iter().cloned().collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let tcp = answers("tcp");
        if tcp
            .keys()
            .cloned()
            .collect::<std::collections::BTreeSet<_>>()
            == all
        {
            assert_eq!(tcp.values().sum::<usize>(), 60, "{tcp:?}");
            break;
        }
        assert!(Instant::now() < deadline, "TCP answers: {tcp:?}");
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let udp = answers("udp");
        if udp
            .keys()
            .cloned()
            .collect::<std::collections::BTreeSet<_>>()
            == all
        {
            break;
        }
        assert!(Instant::now() < deadline, "UDP answers: {udp:?}");
    }
    // The ReplicaSet replaces a deleted pod.
    c.skiff_ok(&["delete", "pod", &names[0], "--grace-period", "1"]);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let now = list("app=echo");
        let fresh = now
            .iter()
            .filter(|p| !names.contains(&p["metadata"]["name"].as_str().unwrap().to_string()))
            .count();
        if now.len() == 3 && fresh == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no replacement: {:?}",
            now.iter()
                .map(|p| p["metadata"]["name"].clone())
                .collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A plain HTTP/1.1 exchange on loopback: (status, headers, body).
fn http(
    port: u16,
    method: &str,
    path: &str,
    content_type: &str,
    body: &[u8],
) -> (u16, String, Vec<u8>) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .unwrap();
    s.write_all(body).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let split = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(out.len(), |i| i + 4);
    let head = String::from_utf8_lossy(&out[..split]).to_string();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, head, out[split..].to_vec())
}

/// Pushes the test image's OCI layout to a registry as `repo:tag`.
fn push(port: u16, repo: &str, tag: &str) {
    let mut archive = tar::Archive::new(std::fs::File::open(image_tar()).unwrap());
    let mut blobs: Vec<(String, Vec<u8>)> = Vec::new();
    let mut index = Vec::new();
    for e in archive.entries().unwrap() {
        let mut e = e.unwrap();
        let path = e.path().unwrap().to_string_lossy().to_string();
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut e, &mut data).unwrap();
        if let Some(hex) = path.strip_prefix("blobs/sha256/") {
            blobs.push((format!("sha256:{hex}"), data));
        } else if path == "index.json" {
            index = data;
        }
    }
    let index: Value = serde_json::from_slice(&index).unwrap();
    let manifest_digest = index["manifests"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    for (digest, data) in &blobs {
        if *digest == manifest_digest {
            continue;
        }
        let (code, head, _) = http(
            port,
            "POST",
            &format!("/v2/{repo}/blobs/uploads/"),
            "application/octet-stream",
            b"",
        );
        assert_eq!(code, 202, "{head}");
        let location = head
            .lines()
            .find_map(|l| {
                l.strip_prefix("Location: ")
                    .or_else(|| l.strip_prefix("location: "))
            })
            .unwrap()
            .trim()
            .to_string();
        let path = location
            .split_once("://")
            .map_or(location.clone(), |(_, r)| {
                format!("/{}", r.split_once('/').unwrap().1)
            });
        let sep = if path.contains('?') { '&' } else { '?' };
        let (code, head, _) = http(
            port,
            "PUT",
            &format!("{path}{sep}digest={digest}"),
            "application/octet-stream",
            data,
        );
        assert_eq!(code, 201, "{head}");
    }
    let manifest = &blobs.iter().find(|(d, _)| *d == manifest_digest).unwrap().1;
    let (code, head, body) = http(
        port,
        "PUT",
        &format!("/v2/{repo}/manifests/{tag}"),
        "application/vnd.oci.image.manifest.v1+json",
        manifest,
    );
    assert_eq!(code, 201, "{head}{}", String::from_utf8_lossy(&body));
}

#[test]
fn images_are_pulled_from_a_registry_when_missing() {
    if require_tool("docker-registry").is_none() {
        return;
    }
    let Some(c) = cluster(&[]) else { return };
    // A local registry (Docker's distribution) on loopback.
    let port = skiff_testkit::free_port();
    let root = c.dir.path().join("registry");
    let config = c.dir.path().join("registry.yml");
    std::fs::write(
        &config,
        format!("version: 0.1\nlog: {{level: warn}}\nstorage: {{filesystem: {{rootdirectory: {}}}}}\nhttp: {{addr: 127.0.0.1:{port}}}\n", root.display()),
    )
    .unwrap();
    let _registry = skiff_testkit::KillOnDrop(
        std::process::Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    assert!(
        skiff_testkit::wait_http_ok(
            &format!("127.0.0.1:{port}"),
            "/v2/",
            Duration::from_secs(20)
        ),
        "the registry did not start"
    );
    push(port, "demo/web", "v1");
    let image = format!("127.0.0.1:{port}/demo/web:v1");
    c.apply(&format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: pulled}}\nspec:\n  nodeName: {}\n  containers:\n  - {{name: c, image: '{image}', command: [httpd, -f, -p, '8080', -h, /var/www]}}\n",
        c.name
    ));
    let p = wait_pod(
        &c,
        "pulled",
        "Running",
        Duration::from_secs(60),
        running_ready,
    );
    assert!(http_get(&pod_ip(&p), 8080).is_some_and(|b| b.contains("hello from skiff")));
    let images = c.skiff_ok(&["image", "ls"]);
    assert!(images.contains(&image), "{images}");
    // A tag the registry does not have: ErrImagePull / ImagePullBackOff, named.
    c.apply(&format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: missing}}\nspec:\n  nodeName: {}\n  containers:\n  - {{name: c, image: '127.0.0.1:{port}/demo/web:nope'}}\n",
        c.name
    ));
    let p = wait_pod(
        &c,
        "missing",
        "ImagePullBackOff",
        Duration::from_secs(60),
        |p| p["status"]["containerStatuses"][0]["state"]["waiting"]["reason"] == "ImagePullBackOff",
    );
    let msg = p["status"]["containerStatuses"][0]["state"]["waiting"]["message"].to_string();
    assert!(
        msg.contains("not found") && msg.contains("demo/web:nope"),
        "{msg}"
    );
}

#[test]
fn faults_get_a_clear_status_and_the_node_carries_on() {
    // A /30: room for one pod.
    let cidr = skiff_testkit::cluster::free_pod_cidr().replace("/24", "/30");
    let Some(mut c) = cluster(&["--pod-cidr", &cidr]) else {
        return;
    };
    c.apply(&httpd_pod("first", &c.name, ""));
    let first = wait_pod(
        &c,
        "first",
        "Running",
        Duration::from_secs(60),
        running_ready,
    );
    let ip = pod_ip(&first);
    c.apply(&httpd_pod("second", &c.name, ""));
    let p = wait_pod(
        &c,
        "second",
        "a sandbox error",
        Duration::from_secs(30),
        |p| p["status"]["reason"] == "FailedCreatePodSandBox",
    );
    let msg = p["status"]["message"].as_str().unwrap_or("");
    assert!(msg.contains("exhausted") && msg.contains(&cidr), "{msg}");
    assert_eq!(phase(&p), "Pending");
    let events = c.skiff_ok(&["get", "events", "-o", "json"]);
    assert!(
        events.contains("FailedCreatePodSandBox"),
        "no event: {events}"
    );

    // The API server dies: pods keep running, the node keeps going...
    let before = c.log("node").len();
    c.kill_server();
    // Once the node has seen its watches break, the pod still answers.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !c.log("node")[before..].contains("watch") {
        assert!(
            Instant::now() < deadline,
            "the node never noticed the server gone"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(http_get(&ip, 8080).is_some_and(|b| b.contains("hello from skiff")));
    // ...and resyncs when it is back: deleting the first pod frees the
    // address the second one waits for.
    c.start_server();
    c.skiff_ok(&["delete", "pod", "first", "--grace-period", "1"]);
    let p = wait_pod(
        &c,
        "second",
        "Running",
        Duration::from_secs(60),
        running_ready,
    );
    assert_eq!(pod_ip(&p), ip, "the freed address is the only one");
    assert_eq!(
        c.log("node").matches("node ready").count(),
        1,
        "the node restarted"
    );
}

#[test]
fn config_maps_empty_dirs_env_and_limits_reach_the_containers() {
    let Some(c) = cluster(&[]) else { return };
    c.apply(&format!(
        r#"apiVersion: v1
kind: ConfigMap
metadata: {{name: settings}}
data:
  greeting: hello
  app.conf: |
    port=8080
---
apiVersion: v1
kind: Pod
metadata:
  name: vols
  labels: {{tier: web}}
spec:
  nodeName: {node}
  terminationGracePeriodSeconds: 1
  volumes:
  - name: shared
    emptyDir: {{}}
  - name: cfg
    configMap: {{name: settings}}
  containers:
  - name: writer
    image: busybox
    command: [sh, -c, "echo written > /shared/note; exec sleep 3600"]
    volumeMounts: [{{name: shared, mountPath: /shared}}]
    resources:
      limits: {{memory: 48Mi, cpu: 200m}}
  - name: reader
    image: busybox
    command: [sleep, "3600"]
    env:
    - {{name: GREETING, valueFrom: {{configMapKeyRef: {{name: settings, key: greeting}}}}}}
    - {{name: MY_IP, valueFrom: {{fieldRef: {{fieldPath: status.podIP}}}}}}
    - {{name: MY_NAME, valueFrom: {{fieldRef: {{fieldPath: metadata.name}}}}}}
    - {{name: TIER, valueFrom: {{fieldRef: {{fieldPath: "metadata.labels['tier']"}}}}}}
    - {{name: PLAIN, value: literal}}
    volumeMounts:
    - {{name: shared, mountPath: /data, readOnly: true}}
    - {{name: cfg, mountPath: /etc/app}}
"#,
        node = c.name
    ));
    let p = wait_pod(
        &c,
        "vols",
        "Running",
        Duration::from_secs(60),
        running_ready,
    );
    let ip = pod_ip(&p);
    let out = c.skiff_ok(&["exec", "vols", "-c", "reader", "--", "sh", "-c", "cat /data/note /etc/app/greeting; echo; cat /etc/app/app.conf; echo $GREETING $MY_IP $MY_NAME $TIER $PLAIN"]);
    assert_eq!(
        out,
        format!("written\nhello\nport=8080\nhello {ip} vols web literal\n")
    );
    let (ok, _, err) = c.skiff(&["exec", "vols", "-c", "reader", "--", "touch", "/data/x"]);
    assert!(!ok, "a read-only mount was written: {err}");
    // The limits are the container's cgroup's.
    let uid = p["metadata"]["uid"].as_str().unwrap();
    let id = p["status"]["containerStatuses"][0]["containerID"]
        .as_str()
        .unwrap()
        .trim_start_matches("containerd://")
        .to_string();
    let memory = std::path::Path::new("/sys/fs/cgroup/memory")
        .join(&c.cgroup_parent)
        .join(format!("pod{uid}"))
        .join(&id)
        .join("memory.limit_in_bytes");
    if memory.exists() {
        assert_eq!(
            std::fs::read_to_string(&memory).unwrap().trim(),
            (48u64 << 20).to_string()
        );
        let quota = memory
            .parent()
            .unwrap()
            .to_string_lossy()
            .replace("/memory/", "/cpu/");
        let quota =
            std::fs::read_to_string(std::path::Path::new(&quota).join("cpu.cfs_quota_us")).unwrap();
        assert_eq!(quota.trim(), "20000");
    } else {
        let max = std::path::Path::new("/sys/fs/cgroup")
            .join(&c.cgroup_parent)
            .join(format!("pod{uid}"))
            .join(&id)
            .join("memory.max");
        assert_eq!(
            std::fs::read_to_string(&max).unwrap().trim(),
            (48u64 << 20).to_string()
        );
    }
}

#[test]
fn init_containers_run_first_in_order() {
    let Some(c) = cluster(&["--restart-backoff", "1"]) else {
        return;
    };
    c.apply(&format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: staged}}
spec:
  nodeName: {node}
  terminationGracePeriodSeconds: 1
  volumes: [{{name: work, emptyDir: {{}}}}]
  initContainers:
  - {{name: first, image: busybox, command: [sh, -c, "echo one > /work/index.html"], volumeMounts: [{{name: work, mountPath: /work}}]}}
  - {{name: second, image: busybox, command: [sh, -c, "sleep 1; echo two >> /work/index.html"], volumeMounts: [{{name: work, mountPath: /work}}]}}
  containers:
  - {{name: web, image: busybox, command: [httpd, -f, -p, "8080", -h, /work], volumeMounts: [{{name: work, mountPath: /work}}]}}
---
apiVersion: v1
kind: Pod
metadata: {{name: blocked}}
spec:
  nodeName: {node}
  restartPolicy: Never
  terminationGracePeriodSeconds: 1
  initContainers:
  - {{name: fails, image: busybox, command: [sh, -c, "exit 9"]}}
  containers:
  - {{name: never, image: busybox, command: [sleep, "3600"]}}
---
apiVersion: v1
kind: Pod
metadata: {{name: retried}}
spec:
  nodeName: {node}
  terminationGracePeriodSeconds: 1
  initContainers:
  - {{name: flaky, image: busybox, command: [sh, -c, "exit 1"]}}
  containers:
  - {{name: app, image: busybox, command: [sleep, "3600"]}}
"#,
        node = c.name
    ));
    // While the second init container runs, the pod is Pending.
    let p = wait_pod(&c, "staged", "initializing", Duration::from_secs(60), |p| {
        p["status"]["initContainerStatuses"][1]["state"]["running"].is_object()
    });
    assert_eq!(phase(&p), "Pending");
    assert_eq!(condition(&p, "Initialized"), "False");
    assert_eq!(
        p["status"]["containerStatuses"][0]["state"]["waiting"]["reason"],
        "PodInitializing"
    );
    let p = wait_pod(
        &c,
        "staged",
        "Running",
        Duration::from_secs(60),
        running_ready,
    );
    assert_eq!(condition(&p, "Initialized"), "True");
    for i in 0..2 {
        let t = &p["status"]["initContainerStatuses"][i]["state"]["terminated"];
        assert_eq!(
            (t["exitCode"].as_i64(), t["reason"].as_str()),
            (Some(0), Some("Completed")),
            "{t}"
        );
    }
    let body = http_get(&pod_ip(&p), 8080).unwrap();
    assert!(
        body.ends_with("one\ntwo\n"),
        "the init containers ran in order: {body}"
    );

    // A failing init container under Never: Failed, the app never started.
    let p = wait_pod(&c, "blocked", "Failed", Duration::from_secs(60), |p| {
        phase(p) == "Failed"
    });
    assert_eq!(
        p["status"]["initContainerStatuses"][0]["state"]["terminated"]["exitCode"],
        9
    );
    assert!(p["status"]["containerStatuses"][0]["state"]["running"].is_null());
    // Under Always it is retried with back-off; the app waits.
    let p = wait_pod(
        &c,
        "retried",
        "init retries",
        Duration::from_secs(60),
        |p| {
            p["status"]["initContainerStatuses"][0]["restartCount"]
                .as_i64()
                .unwrap_or(0)
                >= 2
        },
    );
    assert_eq!(phase(&p), "Pending");
    assert!(p["status"]["containerStatuses"][0]["state"]["running"].is_null());

    // A node restart does not run completed init containers again.
    let mut c = c;
    c.kill_node();
    let before = c.log("node").len();
    c.start_node();
    // The new daemon says when it has adopted the running container.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !c.log("node")[before..].contains("adopted a running container") {
        assert!(
            Instant::now() < deadline,
            "the node never adopted the container"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let p = wait_pod(
        &c,
        "staged",
        "Running",
        Duration::from_secs(30),
        running_ready,
    );
    assert_eq!(p["status"]["initContainerStatuses"][1]["restartCount"], 0);
    assert_eq!(restarts(&p), 0);
    let body = http_get(&pod_ip(&p), 8080).unwrap();
    assert!(body.ends_with("one\ntwo\n"), "{body}");
}

/// An interface with one address of 198.18.0.0/15 (the benchmarking
/// range) in the host's namespace: where pods reach the API server in the
/// test; removed when dropped.
struct HostAddress {
    link: String,
    ip: String,
}

impl HostAddress {
    fn new() -> HostAddress {
        let n = std::process::id();
        let link = format!("skd{:x}", n & 0xff_ffff);
        let ip = format!("198.18.{}.{}", (n >> 8) & 0xff, (n & 0xff).max(1));
        let ip_cmd = |args: &[&str]| {
            let out = std::process::Command::new("ip")
                .args(args)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "ip {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &link])
            .output();
        // A veth pair (this kernel may have no dummy devices); the address
        // on one end is the host's own, as any local address.
        let peer = format!("{link}p");
        ip_cmd(&["link", "add", &link, "type", "veth", "peer", "name", &peer]);
        let a = HostAddress { link, ip };
        ip_cmd(&["addr", "add", &format!("{}/32", a.ip), "dev", &a.link]);
        ip_cmd(&["link", "set", &a.link, "up"]);
        ip_cmd(&["link", "set", &peer, "up"]);
        a
    }
}

impl Drop for HostAddress {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &self.link])
            .output();
    }
}

#[test]
fn a_pod_calls_the_kubernetes_service_with_its_service_account_token() {
    if require_tool("curl").is_none() || require_tool("nsenter").is_none() {
        return;
    }
    let host = HostAddress::new();
    let Some(c) = Cluster::start_full(Path::new(SKIFF), &[], &["--advertise-address", &host.ip])
    else {
        return;
    };
    let out = c.skiff_ok(&["image", "import", image_tar().to_str().unwrap()]);
    assert_eq!(out.trim(), BUSYBOX);
    // The server keeps the `kubernetes` Service at the range's first address.
    let svc: Value =
        serde_json::from_str(&c.skiff_ok(&["get", "svc", "kubernetes", "-o", "json"])).unwrap();
    assert_eq!(svc["spec"]["clusterIP"], "10.96.0.1");
    assert_eq!(svc["spec"]["ports"][0]["port"], 443);
    c.apply(&format!(
        r#"apiVersion: v1
kind: ServiceAccount
metadata: {{name: reader}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: reader-views}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: view}}
subjects: [{{kind: ServiceAccount, name: reader}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: client}}
spec:
  nodeName: {}
  serviceAccountName: reader
  containers:
  - name: c
    image: busybox
    command: ["sleep", "3600"]
"#,
        c.name
    ));
    let p = wait_pod(
        &c,
        "client",
        "Running",
        Duration::from_secs(60),
        running_ready,
    );
    let uid = p["metadata"]["uid"].as_str().unwrap().to_string();
    // The three files, in the container.
    let sa = "/var/run/secrets/kubernetes.io/serviceaccount";
    assert_eq!(
        c.skiff_ok(&["exec", "client", "--", "cat", &format!("{sa}/namespace")]),
        "default"
    );
    let token = c.skiff_ok(&["exec", "client", "--", "cat", &format!("{sa}/token")]);
    assert_eq!(token.split('.').count(), 3, "a JWT: {token}");
    let ca = c.skiff_ok(&["exec", "client", "--", "cat", &format!("{sa}/ca.crt")]);
    assert!(ca.starts_with("-----BEGIN CERTIFICATE-----"), "{ca}");
    let (ok, _, err) = c.skiff(&[
        "exec",
        "client",
        "--",
        "sh",
        "-c",
        &format!("echo x > {sa}/token"),
    ]);
    assert!(!ok, "the token's directory is read-only: {err}");
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.crt");
    std::fs::write(&ca_file, &ca).unwrap();

    // curl in the pod's network namespace and under its cgroup parent (where
    // the datapath's socket programs are), as a process of the pod.
    let probe_cg = skiff_testkit::cluster::cgroup_roots()[0]
        .join(&c.cgroup_parent)
        .join("probe");
    std::fs::create_dir_all(&probe_cg).unwrap();
    let netns = c.run_dir().join("netns").join(&uid);
    let in_pod = |path: &str| -> (u16, String) {
        let script = format!(
            "echo $$ > {}/cgroup.procs && exec nsenter --net={} curl -s -m 10 -w '\\n%{{http_code}}' --cacert {} -H 'Authorization: Bearer {}' --resolve kubernetes.default.svc:443:10.96.0.1 https://kubernetes.default.svc{path}",
            probe_cg.display(),
            netns.display(),
            ca_file.display(),
            token.trim(),
        );
        let out = std::process::Command::new("sh")
            .args(["-c", &script])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
        (code.trim().parse().unwrap_or(0), body.to_string())
    };
    // The datapath follows the Service's EndpointSlice: wait for it.
    let deadline = Instant::now() + Duration::from_secs(30);
    let (code, body) = loop {
        let r = in_pod("/api/v1/namespaces/default/pods");
        if r.0 != 0 || Instant::now() > deadline {
            break r;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(code, 200, "{body}\n--- node log ---\n{}", c.log("node"));
    assert!(body.contains("\"name\":\"client\""), "{body}");
    // What the RoleBinding allows, and nothing more.
    let (code, body) = in_pod("/api/v1/namespaces/kube-system/pods");
    assert_eq!(code, 403, "{body}");
    assert!(
        body.contains(
            "User \\\"system:serviceaccount:default:reader\\\" cannot list resource \\\"pods\\\""
        ),
        "{body}"
    );
    let (code, _) = in_pod("/api/v1/namespaces/default/secrets");
    assert_eq!(code, 403, "view reads no secrets");
    let _ = std::fs::remove_dir(&probe_cg);

    // The token is bound to the pod: once the pod goes, it proves nothing.
    c.skiff_ok(&["delete", "pod", "client", "--grace-period", "0"]);
    let ca_server = c
        .run_dir()
        .parent()
        .unwrap()
        .join("server/tls/server-ca.crt");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = std::process::Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
            .arg(&ca_server)
            .args(["-H", &format!("Authorization: Bearer {}", token.trim())])
            .arg(format!("{}/api/v1/namespaces/default/pods", c.server_url))
            .output()
            .unwrap();
        if String::from_utf8_lossy(&out.stdout) == "401" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the pod's token still works after the pod went"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn secrets_reach_pods_on_tmpfs_and_in_env() {
    let Some(c) = cluster(&[]) else {
        return;
    };
    c.apply(&format!(
        r#"apiVersion: v1
kind: Secret
metadata: {{name: db}}
stringData: {{password: hunter2, user: admin}}
---
apiVersion: v1
kind: Pod
metadata: {{name: app}}
spec:
  nodeName: {}
  containers:
  - name: c
    image: busybox
    command: ["sleep", "3600"]
    env:
    - name: DB_PASSWORD
      valueFrom: {{secretKeyRef: {{name: db, key: password}}}}
    volumeMounts: [{{name: creds, mountPath: /etc/db}}]
  volumes:
  - name: creds
    secret:
      secretName: db
      defaultMode: 256
      items: [{{key: password, path: pw}}, {{key: user, path: sub/user, mode: 288}}]
"#,
        c.name
    ));
    wait_pod(&c, "app", "Running", Duration::from_secs(60), running_ready);
    let sh = |cmd: &str| c.skiff_ok(&["exec", "app", "--", "sh", "-c", cmd]);
    assert_eq!(sh("cat /etc/db/pw"), "hunter2");
    assert_eq!(sh("cat /etc/db/sub/user"), "admin");
    assert_eq!(sh("stat -c %a /etc/db/pw /etc/db/sub/user"), "400\n440\n");
    assert_eq!(sh("echo $DB_PASSWORD"), "hunter2\n");
    // On a tmpfs, never the node's disk.
    let mounts = sh("grep ' /etc/db ' /proc/mounts");
    assert!(mounts.starts_with("tmpfs "), "{mounts}");
    let host_mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let node_dir = c.node_dir().display().to_string();
    assert!(
        host_mounts.contains(&node_dir),
        "the node's tmpfs is mounted"
    );
    // The pod goes, its tmpfs with it.
    c.skiff_ok(&["delete", "pod", "app", "--grace-period", "1"]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while pod(&c, "app").is_some() {
        assert!(Instant::now() < deadline, "the pod was never removed");
        std::thread::sleep(Duration::from_millis(100));
    }
    let host_mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!host_mounts.contains(&node_dir), "{host_mounts}");
}

/// A CA and a serving certificate for 127.0.0.1 it signed, in `dir`:
/// (ca.crt, server.crt, server.key).
fn loopback_tls(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let run = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=skiff test registry CA",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
    ]);
    run(&[
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
    ]);
    std::fs::write(
        dir.join("server.ext"),
        "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1\n",
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        "server.ext",
        "-out",
        "server.crt",
    ]);
    (
        dir.join("ca.crt"),
        dir.join("server.crt"),
        dir.join("server.key"),
    )
}

#[test]
fn images_come_over_https_with_the_pods_image_pull_secrets() {
    for tool in ["docker-registry", "openssl", "python3", "curl"] {
        if require_tool(tool).is_none() {
            return;
        }
    }
    let certs = tempfile::tempdir().unwrap();
    let (ca, crt, key) = loopback_tls(certs.path());
    let Some(c) = cluster(&["--registry-ca", ca.to_str().unwrap()]) else {
        return;
    };
    // One storage, two registries: a plain one to push to, and the one
    // the node pulls from, over TLS with a password (htpasswd, bcrypt).
    let root = c.dir.path().join("registry");
    let hash = std::process::Command::new("python3")
        .args([
            "-W",
            "ignore",
            "-c",
            "import crypt; print(crypt.crypt('s3cret', crypt.mksalt(crypt.METHOD_BLOWFISH)))",
        ])
        .output()
        .unwrap();
    let hash = String::from_utf8_lossy(&hash.stdout).trim().to_string();
    assert!(hash.starts_with("$2"), "a bcrypt hash: {hash:?}");
    let htpasswd = c.dir.path().join("htpasswd");
    std::fs::write(&htpasswd, format!("puller:{hash}\n")).unwrap();
    let (plain, secure) = (skiff_testkit::free_port(), skiff_testkit::free_port());
    let serve = |name: &str, http: String| {
        let config = c.dir.path().join(format!("{name}.yml"));
        std::fs::write(
            &config,
            format!("version: 0.1\nlog: {{level: warn}}\nstorage: {{filesystem: {{rootdirectory: {}}}}}\n{http}", root.display()),
        )
        .unwrap();
        skiff_testkit::KillOnDrop(
            std::process::Command::new("docker-registry")
                .arg("serve")
                .arg(&config)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap(),
        )
    };
    let _plain = serve("plain", format!("http: {{addr: 127.0.0.1:{plain}}}\n"));
    let _secure = serve(
        "secure",
        format!(
            "http: {{addr: 127.0.0.1:{secure}, tls: {{certificate: {}, key: {}}}}}\nauth: {{htpasswd: {{realm: skiff-test, path: {}}}}}\n",
            crt.display(),
            key.display(),
            htpasswd.display()
        ),
    );
    assert!(
        skiff_testkit::wait_http_ok(
            &format!("127.0.0.1:{plain}"),
            "/v2/",
            Duration::from_secs(20)
        ),
        "the registry did not start"
    );
    push(plain, "demo/private", "v1");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = std::process::Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
            .arg(&ca)
            .arg(format!("https://127.0.0.1:{secure}/v2/"))
            .output()
            .unwrap();
        if String::from_utf8_lossy(&out.stdout) == "401" {
            break;
        }
        assert!(Instant::now() < deadline, "the TLS registry did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    let image = format!("127.0.0.1:{secure}/demo/private:v1");
    let pod = |name: &str, secret: Option<&str>| {
        let pull = secret
            .map(|s| format!("  imagePullSecrets: [{{name: {s}}}]\n"))
            .unwrap_or_default();
        format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  nodeName: {}\n{pull}  containers:\n  - {{name: c, image: '{image}', command: [sleep, '3600']}}\n",
            c.name
        )
    };
    let docker_config = |password: &str| {
        let json = format!(
            r#"{{"auths":{{"127.0.0.1:{secure}":{{"username":"puller","password":"{password}"}}}}}}"#
        );
        format!(
            "---\napiVersion: v1\nkind: Secret\nmetadata: {{name: creds-{password}}}\ntype: kubernetes.io/dockerconfigjson\nstringData: {{.dockerconfigjson: '{json}'}}\n"
        )
    };
    c.apply(&format!(
        "{}{}{}{}",
        docker_config("s3cret"),
        docker_config("wrong"),
        pod("anonymous", None),
        pod("mistaken", Some("creds-wrong")),
    ));
    let backoff = |p: &Value| {
        p["status"]["containerStatuses"][0]["state"]["waiting"]["reason"] == "ImagePullBackOff"
    };
    let message =
        |p: &Value| p["status"]["containerStatuses"][0]["state"]["waiting"]["message"].to_string();
    let p = wait_pod(
        &c,
        "anonymous",
        "ImagePullBackOff",
        Duration::from_secs(60),
        backoff,
    );
    assert!(
        message(&p).contains("names no imagePullSecrets"),
        "{}",
        message(&p)
    );
    let p = wait_pod(
        &c,
        "mistaken",
        "ImagePullBackOff",
        Duration::from_secs(60),
        backoff,
    );
    assert!(
        message(&p).contains("refused the pod's imagePullSecrets"),
        "{}",
        message(&p)
    );
    // The right password: pulled over HTTPS, checked against --registry-ca.
    c.apply(&pod("private", Some("creds-s3cret")));
    wait_pod(
        &c,
        "private",
        "Running",
        Duration::from_secs(60),
        running_ready,
    );
    let images = c.skiff_ok(&["image", "ls"]);
    assert!(images.contains(&image), "{images}");
}
