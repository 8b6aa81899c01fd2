//! Test harness pieces shared by skiff's suites: a real etcd server on
//! loopback that is killed and removed when the test ends, free ports, and
//! the rule for tools a test needs (in CI, a missing tool fails the test;
//! elsewhere the test says why it skips).

pub mod cluster;
pub mod disk;
pub mod etcd_cluster;
pub mod history;
pub mod netlab;
pub mod server;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Whether this is a CI run, where nothing may be skipped.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// The path of a tool the test needs, or `None` (after saying so) when it is
/// missing outside CI. In CI a missing tool is a failure.
pub fn require_tool(name: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(name))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        assert!(
            !in_ci(),
            "{name} is required in CI: .ci/run must install it"
        );
        eprintln!("skipping: {name} is not installed (apt-get install the package that has it)");
    }
    found
}

/// A port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral port on loopback")
}

/// An etcd server on loopback with its own data directory; killed and
/// removed on drop.
pub struct EtcdServer {
    child: Child,
    pub endpoint: String,
    _dir: tempfile::TempDir,
}

impl EtcdServer {
    /// Starts etcd and waits until it answers; `None` when etcd is not
    /// installed outside CI.
    pub fn start() -> Option<EtcdServer> {
        let etcd = require_tool("etcd")?;
        for _attempt in 0..3 {
            let dir = tempfile::tempdir().expect("temp dir for etcd");
            let (client, peer) = (free_port(), free_port());
            let endpoint = format!("127.0.0.1:{client}");
            let child = Command::new(&etcd)
                .arg("--name")
                .arg("test")
                .arg("--data-dir")
                .arg(dir.path().join("data"))
                .arg("--listen-client-urls")
                .arg(format!("http://{endpoint}"))
                .arg("--advertise-client-urls")
                .arg(format!("http://{endpoint}"))
                .arg("--listen-peer-urls")
                .arg(format!("http://127.0.0.1:{peer}"))
                .arg("--initial-advertise-peer-urls")
                .arg(format!("http://127.0.0.1:{peer}"))
                .arg("--initial-cluster")
                .arg(format!("test=http://127.0.0.1:{peer}"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start etcd");
            let mut server = EtcdServer {
                child,
                endpoint,
                _dir: dir,
            };
            if server.wait_ready(Duration::from_secs(20)) {
                return Some(server);
            }
            // Most likely a port was taken between probing and binding.
            let _ = server.child.kill();
        }
        panic!("etcd did not start on loopback after 3 attempts");
    }

    fn wait_ready(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return false;
            }
            if etcd_healthy(&self.endpoint) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }

    /// `etcd://127.0.0.1:PORT`, the form `skiff server --store` takes.
    pub fn url(&self) -> String {
        format!("etcd://{}", self.endpoint)
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A child process that is killed (SIGKILL) and reaped on drop.
pub struct KillOnDrop(pub Child);

impl KillOnDrop {
    /// SIGKILL now, as a crash would.
    pub fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A plain HTTP/1.1 GET on loopback; the status code, if any answer came.
pub fn http_status(addr: &str, path: &str) -> Option<u16> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).ok()?;
    let head = std::str::from_utf8(&buf[..n]).ok()?;
    head.split_whitespace().nth(1)?.parse().ok()
}

/// A plain HTTP/1.1 GET on loopback: the status code and the body.
pub fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).ok()?;
    let text = String::from_utf8_lossy(&raw);
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
    Some((status, body))
}

/// Waits until `GET path` answers 200.
pub fn wait_http_ok(addr: &str, path: &str, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if http_status(addr, path) == Some(200) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// The admin's credentials for the server whose data dir is `data_dir`
/// (its `admin.kubeconfig`).
pub fn admin_credentials(data_dir: &Path) -> skiff_client::Credentials {
    skiff_client::kubeconfig::load(&[data_dir.join("admin.kubeconfig")], None)
        .expect("the server's admin kubeconfig")
        .credentials
}

/// Waits until the TLS server on `addr` with data dir `data_dir` is ready.
pub fn wait_server_ready(addr: &str, data_dir: &Path, timeout: Duration) -> bool {
    wait_https_ready(
        &format!("https://{addr}"),
        &data_dir.join("tls").join("server-ca.crt"),
        timeout,
    )
}

/// Waits until `<url>/readyz` answers 200 over TLS checked against `ca`
/// (anonymous: health endpoints need no credentials); the CA file appears
/// when the server made it.
pub fn wait_https_ready(url: &str, ca: &Path, timeout: Duration) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    while std::time::Instant::now() < deadline {
        if ca.exists() {
            let ok = Command::new("curl")
                .args(["-sf", "-o", "/dev/null", "--cacert"])
                .arg(ca)
                .arg(format!("{url}/readyz"))
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                return true;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// A GET as the admin (curl with the admin's certificate) of the TLS
/// server on `addr` with data dir `data_dir`: the status and the body.
pub fn admin_get(addr: &str, data_dir: &Path, path: &str) -> Option<(u16, String)> {
    let tls = data_dir.join("tls");
    let out = Command::new("curl")
        .args(["-s", "-m", "10", "-w", "\n%{http_code}", "--cacert"])
        .arg(tls.join("server-ca.crt"))
        .arg("--cert")
        .arg(tls.join("admin.crt"))
        .arg("--key")
        .arg(tls.join("admin.key"))
        .arg(format!("https://{addr}{path}"))
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n')?;
    Some((
        code.trim().parse().ok().filter(|c| *c != 0)?,
        body.to_string(),
    ))
}

/// Whether the etcd member at `endpoint` (host:port) answers healthy.
pub fn etcd_healthy(endpoint: &str) -> bool {
    Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args(["--endpoints", endpoint, "endpoint", "health"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}
