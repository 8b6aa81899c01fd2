//! `skiff up` end to end, as root: the whole one-node cluster in one
//! process against a private containerd, on a node address of a dummy
//! interface this test makes. The shipped example (deploy/examples) is
//! applied, its ClusterIP answers from this host (the socket load balancer
//! sits on the cgroup root, as `skiff up` puts it) and from a pod by name
//! (the cluster DNS); a restarted `skiff up` adopts the pods.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use skiff_testkit::cluster::{cgroup_roots, free_pod_cidr, remove_cgroups, unmount_under};
use skiff_testkit::{KillOnDrop, free_port, require_tool};

const SKIFF: &str = env!("CARGO_BIN_EXE_skiff");

struct Up {
    dir: tempfile::TempDir,
    id: String,
    url: String,
    node_ip: String,
    dns_ip: String,
    service_cidr: String,
    pod_cidr: String,
    containerd: Option<KillOnDrop>,
    up: Option<std::process::Child>,
}

impl Up {
    fn sock(&self) -> std::path::PathBuf {
        self.dir.path().join("containerd.sock")
    }

    fn start_up(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("up.log"))
            .unwrap();
        let port: u16 = self.url.rsplit(':').next().unwrap().parse().unwrap();
        let child = Command::new(SKIFF)
            .args([
                "up",
                "--no-client-config",
                "--listen",
                &format!("127.0.0.1:{port}"),
            ])
            .arg("--data-dir")
            .arg(self.dir.path().join("state"))
            .args([
                "--name",
                &format!("up-{}", self.id),
                "--node-ip",
                &self.node_ip,
            ])
            .arg("--containerd")
            .arg(self.sock())
            .args([
                "--service-cidr",
                &self.service_cidr,
                "--cluster-cidr",
                &self.pod_cidr,
            ])
            .args([
                "--cluster-dns",
                &self.dns_ip,
                "--dns-listen",
                &format!("{}:0", self.node_ip),
            ])
            .args([
                "--dns-metrics-listen",
                "127.0.0.1:0",
                "--node-listen",
                &format!("{}:0", self.node_ip),
            ])
            .arg("--run-dir")
            .arg(self.dir.path().join("run"))
            .arg("--log-dir")
            .arg(self.dir.path().join("logs"))
            .args(["--datapath-instance", &format!("up-{}", self.id)])
            .env("SKIFF_LOG", "info,netlink_packet_route=error")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.up = Some(child);
        let starts = self.log().matches("skiff is up").count() + 1;
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.log().matches("skiff is up").count() < starts {
            assert!(
                Instant::now() < deadline,
                "skiff up did not come up:\n{}",
                self.log()
            );
            if let Ok(Some(s)) = self.up.as_mut().unwrap().try_wait() {
                panic!("skiff up exited with {s}:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Ctrl-C, as an operator stops it.
    fn stop_up(&mut self) {
        if let Some(mut c) = self.up.take() {
            let _ = Command::new("kill")
                .args(["-INT", &c.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                if let Ok(Some(s)) = c.try_wait() {
                    assert!(s.success(), "skiff up exited with {s}:\n{}", self.log());
                    return;
                }
                if Instant::now() > deadline {
                    let _ = c.kill();
                    panic!("skiff up did not stop on SIGINT:\n{}", self.log());
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("up.log")).unwrap_or_default()
    }

    fn kubeconfig(&self) -> std::path::PathBuf {
        self.dir.path().join("state/server/admin.kubeconfig")
    }

    fn skiff(&self, args: &[&str]) -> String {
        let out = Command::new(SKIFF)
            .arg("--kubeconfig")
            .arg(self.kubeconfig())
            .args(args)
            .env_remove("SKIFF_SERVER")
            .env_remove("KUBECONFIG")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "skiff {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- skiff up log ---\n{}", self.log());
        }
        if let Some(mut c) = self.up.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let parent = format!("skiff-up-{}", self.id);
        for h in cgroup_roots() {
            let _ = std::fs::write(h.join(&parent).join("cgroup.kill"), "1");
        }
        let _ = Command::new("pkill")
            .arg("-9")
            .arg("-f")
            .arg(self.sock().to_string_lossy().as_ref())
            .status();
        if let Some(mut c) = self.containerd.take() {
            c.kill();
        }
        unmount_under(self.dir.path());
        let _ = Command::new(SKIFF)
            .args(["bpf", "detach", "--instance", &format!("up-{}", self.id)])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = Command::new("ip")
            .args(["link", "del", &format!("skup{}", self.id)])
            .status();
        remove_cgroups(&parent);
    }
}

#[test]
fn skiff_up_serves_the_example_by_cluster_ip_and_name() {
    for tool in ["containerd", "runc", "busybox", "dig", "curl", "ip"] {
        if require_tool(tool).is_none() {
            return;
        }
    }
    let id = format!("{:x}", std::process::id() % 0xffff);
    let dir = tempfile::Builder::new()
        .prefix("skiff-up-test-")
        .tempdir()
        .unwrap();
    // A node address on an interface of our own (a bridge without ports).
    let n = std::process::id() % 200 + 20;
    let node_ip = format!("10.199.{n}.1");
    let link = format!("skup{id}");
    for args in [
        vec!["link", "add", link.as_str(), "type", "bridge"],
        vec![
            "addr",
            "add",
            &format!("{node_ip}/32"),
            "dev",
            link.as_str(),
        ],
        vec!["link", "set", link.as_str(), "up"],
    ] {
        assert!(
            Command::new("ip").args(&args).status().unwrap().success(),
            "ip {args:?}"
        );
    }
    let svc_net = format!("10.97.{n}");
    let mut up = Up {
        url: format!("https://127.0.0.1:{}", free_port()),
        node_ip,
        dns_ip: format!("{svc_net}.10"),
        service_cidr: format!("{svc_net}.0/24"),
        pod_cidr: free_pod_cidr(),
        id,
        containerd: None,
        up: None,
        dir,
    };
    let log = std::fs::File::create(up.dir.path().join("containerd.log")).unwrap();
    up.containerd = Some(KillOnDrop(
        Command::new("containerd")
            .arg("--root")
            .arg(up.dir.path().join("croot"))
            .arg("--state")
            .arg(up.dir.path().join("cstate"))
            .arg("--address")
            .arg(up.sock())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    ));
    let deadline = Instant::now() + Duration::from_secs(20);
    while !up.sock().exists() {
        assert!(Instant::now() < deadline, "containerd did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    // The demo image, as `cargo xtask up` builds and imports it.
    let tar = up.dir.path().join("busybox.tar");
    for args in [
        vec!["image", "build-busybox", tar.to_str().unwrap()],
        vec!["image", "import", tar.to_str().unwrap()],
    ] {
        let ok = Command::new(SKIFF)
            .args(&args)
            .env("SKIFF_CONTAINERD", up.sock())
            .status()
            .unwrap();
        assert!(ok.success(), "skiff {args:?}");
    }
    up.start_up();
    // Only TLS, and nothing without credentials.
    let anonymous = Command::new("curl")
        .args(["-sk", "-o", "/dev/null", "-w", "%{http_code}"])
        .arg(format!("{}/api/v1/pods", up.url))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&anonymous.stdout), "401");
    let plain = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
        .arg(format!(
            "{}/api/v1/pods",
            up.url.replace("https://", "http://")
        ))
        .output()
        .unwrap();
    assert_ne!(
        String::from_utf8_lossy(&plain.stdout),
        "200",
        "plain HTTP served"
    );
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/examples/hello.yaml");
    up.skiff(&["apply", "-f", example.to_str().unwrap()]);
    let ready = |up: &Up| -> Vec<Value> {
        let v: Value =
            serde_json::from_str(&up.skiff(&["get", "pods", "-l", "app=hello", "-o", "json"]))
                .unwrap();
        v["items"].as_array().cloned().unwrap_or_default()
    };
    let deadline = Instant::now() + Duration::from_secs(90);
    let pods = loop {
        let pods = ready(&up);
        let n_ready = pods
            .iter()
            .filter(|p| {
                p["status"]["conditions"].as_array().is_some_and(|cs| {
                    cs.iter()
                        .any(|c| c["type"] == "Ready" && c["status"] == "True")
                })
            })
            .count();
        if n_ready == 3 {
            break pods;
        }
        assert!(
            Instant::now() < deadline,
            "{n_ready}/3 ready:\n{}",
            up.log()
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    let svc: Value =
        serde_json::from_str(&up.skiff(&["get", "svc", "hello", "-o", "json"])).unwrap();
    let vip = svc["spec"]["clusterIP"].as_str().unwrap().to_string();
    assert!(vip.starts_with(&svc_net), "{vip}");
    // From this host: curl to the ClusterIP reaches all three pods.
    let names: std::collections::BTreeSet<String> = pods
        .iter()
        .map(|p| p["metadata"]["name"].as_str().unwrap().to_string())
        .collect();
    let curl = |vip: &str| -> Option<String> {
        let out = Command::new("curl")
            .args(["-s", "-m", "3", &format!("http://{vip}/")])
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..60 {
        let body = curl(&vip).expect("curl to the ClusterIP");
        seen.insert(body.trim_start_matches("hello from ").to_string());
        if seen == names {
            break;
        }
    }
    assert_eq!(seen, names, "not every pod answered the ClusterIP");
    // The cluster DNS answers for the Service, on its ClusterIP.
    let dig = Command::new("dig")
        .args([
            "+short",
            "+time=2",
            "+tries=2",
            &format!("@{}", up.dns_ip),
            "hello.default.svc.cluster.local",
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&dig.stdout).trim(), vip, "{dig:?}");
    // From a pod, by name: resolv.conf names the cluster DNS.
    let pod = pods[0]["metadata"]["name"].as_str().unwrap();
    let body = up.skiff(&[
        "exec",
        pod,
        "--",
        "sh",
        "-c",
        "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 hello 80 | tail -1",
    ]);
    assert!(body.starts_with("hello from hello-"), "{body}");

    // Ctrl-C and up again: the same pods, adopted, still serving.
    up.stop_up();
    assert!(curl(&vip).is_some(), "the ClusterIP stopped with skiff up");
    up.start_up();
    let again: std::collections::BTreeSet<String> = ready(&up)
        .iter()
        .map(|p| p["metadata"]["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(again, names);
    assert!(
        up.log().matches("adopted a running container").count() >= 3,
        "{}",
        up.log()
    );
    assert!(curl(&vip).is_some_and(|b| b.starts_with("hello from ")));

    // Deleting the example removes its pods; then a clean stop.
    up.skiff(&["delete", "-f", example.to_str().unwrap()]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ready(&up).is_empty() {
        assert!(
            Instant::now() < deadline,
            "the pods were not removed:\n{}",
            up.log()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    up.stop_up();
}
