//! Network labs for datapath tests: network namespaces on one bridge, a
//! cgroup v2 directory for the clients the datapath must see, and processes
//! inside them (the `netprobe.py` servers and clients). Everything is
//! removed on drop, also when the test fails. Traffic stays inside the
//! lab's namespaces: hosts have no default route.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Runs `ip` with arguments; panics with its stderr on failure.
pub fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("run ip (iproute2)");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Panics unless the test runs as root (the datapath tests need it; CI runs
/// them as root).
pub fn require_root() {
    let uid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(str::to_string))
        })
        .unwrap_or_default();
    assert_eq!(
        uid, "0",
        "this test needs root (network namespaces, eBPF): run it as root, as CI does"
    );
}

/// The root of the cgroup v2 hierarchy.
pub fn cgroup2_root() -> PathBuf {
    let unified = Path::new("/sys/fs/cgroup/unified");
    if unified.join("cgroup.controllers").exists() {
        unified.to_path_buf()
    } else {
        PathBuf::from("/sys/fs/cgroup")
    }
}

pub struct Lab {
    /// Unique per lab: prefixes namespaces, cgroup and datapath instance.
    pub id: String,
    hub: String,
    hosts: Vec<String>,
    cgroup: PathBuf,
    servers: Vec<(Child, ChildStdin)>,
}

/// One namespace of a lab, with its address on the lab's /24.
#[derive(Clone, Debug)]
pub struct Host {
    pub netns: String,
    pub addr: String,
}

impl Lab {
    pub fn new() -> Lab {
        require_root();
        let id = format!(
            "sk{:x}{:x}",
            std::process::id() & 0xffff,
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let hub = format!("{id}-hub");
        ip(&["netns", "add", &hub]);
        let cgroup = cgroup2_root().join(format!("skiff-test-{id}"));
        let lab = Lab {
            id,
            hub,
            hosts: Vec::new(),
            cgroup,
            servers: Vec::new(),
        };
        ip(&["-n", &lab.hub, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &lab.hub, "link", "set", "br0", "up"]);
        std::fs::create_dir(&lab.cgroup).expect("create the lab's cgroup");
        lab
    }

    /// The cgroup v2 directory clients run in (attach the datapath here).
    pub fn cgroup(&self) -> &Path {
        &self.cgroup
    }

    /// A new namespace `10.77.0.<n>/24` on the lab's bridge.
    pub fn host(&mut self) -> Host {
        let n = self.hosts.len() + 2;
        assert!(n < 250, "too many hosts in one lab");
        let netns = format!("{}-{n}", self.id);
        ip(&["netns", "add", &netns]);
        self.hosts.push(netns.clone());
        let peer = format!("h{n}");
        ip(&[
            "-n", &netns, "link", "add", "eth0", "type", "veth", "peer", "name", &peer, "netns",
            &self.hub,
        ]);
        ip(&["-n", &self.hub, "link", "set", &peer, "master", "br0", "up"]);
        let addr = format!("10.77.0.{n}");
        ip(&[
            "-n",
            &netns,
            "addr",
            "add",
            &format!("{addr}/24"),
            "dev",
            "eth0",
        ]);
        ip(&["-n", &netns, "link", "set", "eth0", "up"]);
        ip(&["-n", &netns, "link", "set", "lo", "up"]);
        Host { netns, addr }
    }

    /// `program args...` to run inside `host`, and inside the lab's cgroup
    /// when `in_cgroup` (the shell joins it, then becomes the program).
    pub fn exec(&self, host: &Host, in_cgroup: bool, program: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new("sh");
        let join = if in_cgroup {
            format!("echo $$ > '{}/cgroup.procs' && ", self.cgroup.display())
        } else {
            String::new()
        };
        cmd.arg("-c")
            .arg(format!("{join}exec ip netns exec \"$0\" \"$@\""))
            .arg(&host.netns)
            .arg(program)
            .args(args);
        cmd
    }

    fn command(&self, host: &Host, in_cgroup: bool, args: &[&str]) -> Command {
        let probe = netprobe().display().to_string();
        let mut all = vec![probe.as_str()];
        all.extend(args);
        self.exec(host, in_cgroup, "python3", &all)
    }

    /// A namespace outside the lab's bridge, linked to `node` alone by a
    /// veth pair on 10.78.0.0/24 (`node` gets 10.78.0.1 on its `eth1`, the
    /// new host 10.78.0.2): another host reaching the node from outside.
    pub fn outside(&mut self, node: &Host) -> Host {
        let netns = format!("{}-out", self.id);
        ip(&["netns", "add", &netns]);
        self.hosts.push(netns.clone());
        ip(&[
            "-n",
            &netns,
            "link",
            "add",
            "eth0",
            "type",
            "veth",
            "peer",
            "name",
            "eth1",
            "netns",
            &node.netns,
        ]);
        ip(&["-n", &netns, "addr", "add", "10.78.0.2/24", "dev", "eth0"]);
        ip(&["-n", &netns, "link", "set", "eth0", "up"]);
        ip(&["-n", &netns, "link", "set", "lo", "up"]);
        ip(&[
            "-n",
            &node.netns,
            "addr",
            "add",
            "10.78.0.1/24",
            "dev",
            "eth1",
        ]);
        ip(&["-n", &node.netns, "link", "set", "eth1", "up"]);
        Host {
            netns,
            addr: "10.78.0.2".into(),
        }
    }

    /// A route in `host` (to lab addresses only).
    pub fn route(&self, host: &Host, dst: &str, via: &str) {
        ip(&["-n", &host.netns, "route", "add", dst, "via", via]);
    }

    /// Adds an address (`10.77.0.<n>/24`) to a host.
    pub fn add_address(&self, host: &Host, n: u8) -> String {
        let addr = format!("10.77.0.{n}");
        ip(&[
            "-n",
            &host.netns,
            "addr",
            "add",
            &format!("{addr}/24"),
            "dev",
            "eth0",
        ]);
        addr
    }

    /// Starts a server answering with `name` on TCP and UDP ports of the
    /// host's address; returns once it listens. Servers run outside the
    /// lab's cgroup: the datapath does not see them.
    pub fn serve(&mut self, host: &Host, name: &str, tcp: &[u16], udp: &[u16]) {
        let mut args = vec!["serve".to_string(), name.to_string()];
        for p in tcp {
            args.extend(["--tcp".into(), format!("{}:{p}", host.addr)]);
        }
        for p in udp {
            args.extend(["--udp".into(), format!("{}:{p}", host.addr)]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut child = self
            .command(host, false, &args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start netprobe serve");
        let stdin = child.stdin.take().expect("stdin");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("read from netprobe serve");
        assert_eq!(line.trim(), "ready", "netprobe serve {name} did not start");
        self.servers.push((child, stdin));
    }

    /// Runs a netprobe client to completion in `host` (inside the lab's
    /// cgroup when `in_cgroup`) and returns its standard output.
    pub fn run(&self, host: &Host, in_cgroup: bool, args: &[&str]) -> String {
        let out = self
            .command(host, in_cgroup, args)
            .output()
            .expect("run netprobe");
        assert!(
            out.status.success(),
            "netprobe {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8")
    }

    /// Starts a netprobe client without waiting for it.
    pub fn spawn(&self, host: &Host, in_cgroup: bool, args: &[&str]) -> crate::KillOnDrop {
        crate::KillOnDrop(
            self.command(host, in_cgroup, args)
                .stdout(Stdio::piped())
                .spawn()
                .expect("start netprobe"),
        )
    }
}

impl Default for Lab {
    fn default() -> Self {
        Lab::new()
    }
}

/// The path of netprobe.py.
pub fn netprobe() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("netprobe.py")
}

impl Drop for Lab {
    fn drop(&mut self) {
        for (mut child, mut stdin) in self.servers.drain(..) {
            let _ = stdin.write_all(b"");
            drop(stdin);
            let _ = child.kill();
            let _ = child.wait();
        }
        for ns in self.hosts.iter().chain(std::iter::once(&self.hub)) {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        // Every process of the cgroup has exited by now; an rmdir racing
        // their exit is retried briefly.
        for _ in 0..50 {
            if std::fs::remove_dir(&self.cgroup).is_ok() || !self.cgroup.exists() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}
