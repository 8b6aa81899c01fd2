//! A real multi-member etcd cluster on loopback, for fault tests: members
//! can be killed (SIGKILL), restarted on their data, paused (SIGSTOP) and
//! resumed. Everything is killed and removed on drop.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{free_port, require_tool};

struct Member {
    name: String,
    client: String,
    peer: String,
    child: Option<Child>,
}

pub struct EtcdCluster {
    etcd: std::path::PathBuf,
    dir: tempfile::TempDir,
    members: Vec<Member>,
}

impl EtcdCluster {
    /// Starts `n` members and waits until each answers; `None` when etcd is
    /// not installed outside CI.
    pub fn start(n: usize) -> Option<EtcdCluster> {
        let etcd = require_tool("etcd")?;
        let dir = tempfile::Builder::new()
            .prefix("skiff-etcd-cluster-")
            .tempdir()
            .expect("temp dir");
        let members: Vec<Member> = (0..n)
            .map(|i| Member {
                name: format!("m{i}"),
                client: format!("127.0.0.1:{}", free_port()),
                peer: format!("127.0.0.1:{}", free_port()),
                child: None,
            })
            .collect();
        let mut cluster = EtcdCluster { etcd, dir, members };
        for i in 0..n {
            cluster.spawn(i);
        }
        for i in 0..n {
            assert!(
                cluster.wait_healthy(i, Duration::from_secs(30)),
                "etcd member {i} not healthy within 30 s"
            );
        }
        Some(cluster)
    }

    fn spawn(&mut self, i: usize) {
        let initial: Vec<String> = self
            .members
            .iter()
            .map(|m| format!("{}=http://{}", m.name, m.peer))
            .collect();
        let m = &self.members[i];
        let child = Command::new(&self.etcd)
            .arg("--name")
            .arg(&m.name)
            .arg("--data-dir")
            .arg(self.dir.path().join(&m.name))
            .arg("--listen-client-urls")
            .arg(format!("http://{}", m.client))
            .arg("--advertise-client-urls")
            .arg(format!("http://{}", m.client))
            .arg("--listen-peer-urls")
            .arg(format!("http://{}", m.peer))
            .arg("--initial-advertise-peer-urls")
            .arg(format!("http://{}", m.peer))
            .arg("--initial-cluster")
            .arg(initial.join(","))
            .arg("--initial-cluster-token")
            .arg(format!("skiff-test-{}", std::process::id()))
            // Elections within a second, so faults heal quickly.
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start etcd");
        self.members[i].child = Some(child);
    }

    fn wait_healthy(&mut self, i: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if crate::etcd_healthy(&self.members[i].client) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }

    /// `etcd://a,b,c`, the form `skiff server --store` takes.
    pub fn url(&self) -> String {
        let all: Vec<&str> = self.members.iter().map(|m| m.client.as_str()).collect();
        format!("etcd://{}", all.join(","))
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|m| format!("http://{}", m.client))
            .collect()
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// SIGKILL member `i`, as a crash would.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts member `i` again on its data and waits until it is healthy.
    pub fn restart(&mut self, i: usize) {
        self.kill(i);
        self.spawn(i);
        assert!(
            self.wait_healthy(i, Duration::from_secs(30)),
            "etcd member {i} not healthy within 30 s of a restart"
        );
    }

    /// SIGSTOP (`true`) or SIGCONT (`false`) member `i`.
    pub fn pause(&mut self, i: usize, stop: bool) {
        if let Some(c) = &self.members[i].child {
            signal(c.id(), if stop { "STOP" } else { "CONT" });
        }
    }
}

/// Sends a signal by name to a process.
pub fn signal(pid: u32, name: &str) {
    let ok = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "kill -{name} {pid}");
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            // A paused member must be resumed to die promptly.
            self.pause(i, false);
            self.kill(i);
        }
    }
}
