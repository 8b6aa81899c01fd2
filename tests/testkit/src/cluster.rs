//! A one-node skiff cluster for tests: a private containerd (its own
//! socket, root and state), `skiff server` and `skiff node` processes, a
//! unique podCIDR, cgroup parent and datapath instance. Everything is
//! removed on drop, also after a failed assertion: pod processes (through
//! the cgroup), shims, containerd, mounts, network namespaces, pinned maps.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::{KillOnDrop, free_port, require_tool};

pub struct Cluster {
    pub skiff: PathBuf,
    pub dir: tempfile::TempDir,
    pub server_url: String,
    pub containerd_sock: PathBuf,
    pub pod_cidr: String,
    pub name: String,
    pub cgroup_parent: String,
    pub instance: String,
    /// Extra `skiff node` flags.
    pub node_flags: Vec<String>,
    /// Extra `skiff server` flags.
    pub server_flags: Vec<String>,
    node_starts: usize,
    containerd: Option<KillOnDrop>,
    server: Option<KillOnDrop>,
    node: Option<KillOnDrop>,
}

fn unique() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{:x}{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A /24 of 10.128.0.0/9 no route of this host uses yet, and never one
/// handed out before in this process: tests start clusters in parallel,
/// before either has a route, so the routes alone cannot tell them apart.
pub fn free_pod_cidr() -> String {
    static TAKEN: std::sync::Mutex<std::collections::BTreeSet<u32>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    let routes = Command::new("ip")
        .args(["-4", "route", "show"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
        .unwrap_or_default();
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0)
        ^ std::process::id();
    let mut taken = TAKEN.lock().unwrap_or_else(|e| e.into_inner());
    for i in 0..32768u32 {
        let n = (seed.wrapping_mul(2_654_435_761).wrapping_add(i * 7919)) % 32768;
        let net = format!("10.{}.{}.", 128 + n / 256, n % 256);
        if !taken.contains(&n) && !routes.contains(&net) {
            taken.insert(n);
            return format!("{net}0/24");
        }
    }
    panic!("no free /24 in 10.128.0.0/9");
}

impl Cluster {
    /// Starts containerd, the server and the node; `None` (after saying
    /// why) outside CI when containerd or runc are missing.
    pub fn start(skiff: &Path) -> Option<Cluster> {
        Cluster::start_with(skiff, &[])
    }

    /// Like [`Cluster::start`], with extra `skiff node` flags.
    pub fn start_with(skiff: &Path, node_flags: &[&str]) -> Option<Cluster> {
        Cluster::start_full(skiff, node_flags, &[])
    }

    /// Like [`Cluster::start_with`], with extra `skiff server` flags too.
    pub fn start_full(skiff: &Path, node_flags: &[&str], server_flags: &[&str]) -> Option<Cluster> {
        require_tool("containerd")?;
        require_tool("runc")?;
        require_tool("ip")?;
        let id = unique();
        let dir = tempfile::Builder::new()
            .prefix("skiff-node-test-")
            .tempdir()
            .expect("temp dir");
        let mut c = Cluster {
            skiff: skiff.to_path_buf(),
            server_url: String::new(),
            containerd_sock: dir.path().join("containerd.sock"),
            pod_cidr: free_pod_cidr(),
            name: format!("node-{id}"),
            cgroup_parent: format!("skiff-test-{id}"),
            instance: format!("test-{id}"),
            node_flags: node_flags.iter().map(|f| f.to_string()).collect(),
            server_flags: server_flags.iter().map(|f| f.to_string()).collect(),
            node_starts: 0,
            dir,
            containerd: None,
            server: None,
            node: None,
        };
        // A --pod-cidr among the flags replaces the unique /24.
        if let Some(i) = c.node_flags.iter().position(|f| f == "--pod-cidr") {
            c.pod_cidr = c.node_flags[i + 1].clone();
            c.node_flags.drain(i..i + 2);
        }
        c.start_containerd();
        c.start_server();
        c.start_node();
        Some(c)
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    fn start_containerd(&mut self) {
        let log = std::fs::File::create(self.path("containerd.log")).expect("log file");
        let child = Command::new("containerd")
            .arg("--root")
            .arg(self.path("containerd-root"))
            .arg("--state")
            .arg(self.path("containerd-state"))
            .arg("--address")
            .arg(&self.containerd_sock)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start containerd");
        self.containerd = Some(KillOnDrop(child));
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.containerd_sock.exists() {
            assert!(
                Instant::now() < deadline,
                "containerd did not start: {}",
                self.log("containerd")
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts (or starts again, on the same port and data) the server.
    pub fn start_server(&mut self) {
        let port = match self
            .server_url
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
        {
            Some(p) => p,
            None => free_port(),
        };
        self.server_url = format!("https://127.0.0.1:{port}");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path("server.log"))
            .expect("log file");
        let child = Command::new(&self.skiff)
            .args(["server", "--tls", "on", "--no-client-config", "--listen"])
            .arg(format!("127.0.0.1:{port}"))
            .arg("--data-dir")
            .arg(self.path("server"))
            .args(&self.server_flags)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start skiff server");
        self.server = Some(KillOnDrop(child));
        assert!(
            crate::wait_https_ready(
                &self.server_url,
                &self.path("server/tls/server-ca.crt"),
                Duration::from_secs(20)
            ),
            "skiff server did not answer: {}",
            self.log("server")
        );
    }

    /// Starts (or starts again) the node daemon.
    pub fn start_node(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path("node.log"))
            .expect("log file");
        let child = Command::new(&self.skiff)
            .arg("--server")
            .arg(&self.server_url)
            .args(["node", "--node-ip", "127.0.0.1", "--name", &self.name])
            .args(["--pod-cidr", &self.pod_cidr])
            .arg("--data-dir")
            .arg(self.path("node"))
            .arg("--run-dir")
            .arg(self.path("run"))
            .arg("--log-dir")
            .arg(self.path("logs"))
            .arg("--containerd")
            .arg(&self.containerd_sock)
            .args(["--cgroup-parent", &self.cgroup_parent])
            .args([
                "--datapath-instance",
                &self.instance,
                "--datapath-pods-only",
            ])
            .args(["--listen", "127.0.0.1:0", "--token-file"])
            .arg(self.path("server").join("token"))
            .args(&self.node_flags)
            .env("SKIFF_LOG", "info,netlink_packet_route=error")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start skiff node");
        self.node = Some(KillOnDrop(child));
        self.node_starts += 1;
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.log("node").matches("node ready").count() < self.node_starts {
            assert!(
                Instant::now() < deadline,
                "skiff node did not start: {}",
                self.log("node")
            );
            if let Some(n) = self.node.as_mut()
                && let Ok(Some(status)) = n.0.try_wait()
            {
                panic!("skiff node exited with {status}: {}", self.log("node"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// kill -9 of the API server, as a crash.
    pub fn kill_server(&mut self) {
        if let Some(mut s) = self.server.take() {
            s.kill();
        }
    }

    /// kill -9 of the node daemon, as a crash.
    pub fn kill_node(&mut self) {
        if let Some(mut n) = self.node.take() {
            n.kill();
        }
    }

    /// A log of one of the processes (containerd, server, node).
    pub fn log(&self, which: &str) -> String {
        std::fs::read_to_string(self.path(&format!("{which}.log"))).unwrap_or_default()
    }

    /// The admin's kubeconfig (the server's `admin.kubeconfig`), for
    /// `skiff` and kubectl.
    pub fn kubeconfig(&self) -> PathBuf {
        self.path("server/admin.kubeconfig")
    }

    /// `skiff ARGS` as the cluster's admin.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.skiff);
        c.arg("--kubeconfig")
            .arg(self.kubeconfig())
            .args(args)
            .env_remove("SKIFF_SERVER")
            .env_remove("KUBECONFIG")
            .env("SKIFF_CONTAINERD", &self.containerd_sock);
        c
    }

    /// Runs `skiff` against this cluster; (success, stdout, stderr).
    pub fn skiff(&self, args: &[&str]) -> (bool, String, String) {
        let out = self.cmd(args).output().expect("run skiff");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    }

    /// Runs `skiff`, failing the test (with its stderr) when it fails.
    pub fn skiff_ok(&self, args: &[&str]) -> String {
        let (ok, out, err) = self.skiff(args);
        assert!(ok, "skiff {args:?} failed: {err}");
        out
    }

    /// Applies a manifest given as text.
    pub fn apply(&self, manifest: &str) {
        let file = self.dir.path().join(format!("m-{}.yaml", unique()));
        std::fs::write(&file, manifest).expect("write manifest");
        self.skiff_ok(&["apply", "-f", file.to_str().expect("utf-8 path")]);
    }

    pub fn log_dir(&self) -> PathBuf {
        self.path("logs")
    }

    pub fn run_dir(&self) -> PathBuf {
        self.path("run")
    }

    pub fn node_dir(&self) -> PathBuf {
        self.path("node")
    }

    /// Kills every pod process, the shims and containerd; unmounts and
    /// removes what they left.
    fn teardown(&mut self) {
        self.kill_node();
        for h in cgroup_roots() {
            let kill = h.join(&self.cgroup_parent).join("cgroup.kill");
            if kill.exists() {
                let _ = std::fs::write(&kill, "1");
            }
        }
        // The shims serve this containerd only.
        let _ = Command::new("pkill")
            .arg("-9")
            .arg("-f")
            .arg(self.containerd_sock.to_string_lossy().as_ref())
            .status();
        if let Some(mut c) = self.containerd.take() {
            c.kill();
        }
        if let Some(mut s) = self.server.take() {
            s.kill();
        }
        unmount_under(self.dir.path());
        let _ = Command::new(&self.skiff)
            .args(["bpf", "detach", "--instance", &self.instance])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        remove_cgroups(&self.cgroup_parent);
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- node log ---\n{}", self.log("node"));
        }
        self.teardown();
    }
}

pub fn cgroup_roots() -> Vec<PathBuf> {
    let root = Path::new("/sys/fs/cgroup");
    if root.join("cgroup.controllers").exists() {
        vec![root.to_path_buf()]
    } else {
        vec![root.join("unified")]
    }
}

/// Removes a cgroup subtree (bottom up) in every hierarchy.
pub fn remove_cgroups(parent: &str) {
    fn rm(dir: &Path) {
        if let Ok(rd) = std::fs::read_dir(dir) {
            for e in rd.flatten() {
                if e.path().is_dir() {
                    rm(&e.path());
                }
            }
        }
        // Retried: the kernel takes a moment to let killed tasks go.
        for _ in 0..50 {
            if std::fs::remove_dir(dir).is_ok() || !dir.exists() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    if let Ok(rd) = std::fs::read_dir("/sys/fs/cgroup") {
        for h in rd.flatten() {
            let d = h.path().join(parent);
            if d.exists() {
                rm(&d);
            }
        }
    }
}

/// Lazily unmounts everything mounted below `dir` (rootfs overlays,
/// pinned network namespaces), deepest first.
pub fn unmount_under(dir: &Path) {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let prefix = dir.to_string_lossy().to_string();
    let mut points: Vec<String> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|p| p.starts_with(&prefix))
        .map(str::to_string)
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in points {
        let _ = Command::new("umount").arg("-l").arg(&p).status();
    }
}
