//! A `skiff server` of the test's own: embedded store in a temp dir, a free
//! loopback port, its log shown when the test fails, killed on drop.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::{KillOnDrop, free_port, wait_http_ok};

pub struct Server {
    skiff: PathBuf,
    flags: Vec<String>,
    env: Vec<(String, String)>,
    /// The server writes `~/.skiff/config` and the CLI finds it there
    /// (instead of `SKIFF_SERVER`).
    client_config: bool,
    /// `--tls on`: the CLI and kubectl use `<data-dir>/admin.kubeconfig`,
    /// curl the admin's certificate.
    tls: bool,
    proc: Option<KillOnDrop>,
    /// `127.0.0.1:PORT`
    pub addr: String,
    data: tempfile::TempDir,
    /// HOME of the server and of the CLI calls made through it.
    pub home: tempfile::TempDir,
}

impl Server {
    /// Starts `skiff server` with extra flags and environment and waits
    /// until it is ready (30 s at most).
    pub fn start(skiff: &Path, flags: &[&str], env: &[(&str, &str)]) -> Server {
        Server::launch(skiff, flags, env, false)
    }

    /// Like [`Server::start`], the server writing the CLI's config into its
    /// HOME, where the CLI finds it (as a user's first `skiff server`).
    pub fn start_with_client_config(skiff: &Path, flags: &[&str]) -> Server {
        Server::launch(skiff, flags, &[], true)
    }

    /// Like [`Server::start`], saying `--tls on` (the default) outright.
    pub fn start_secure(skiff: &Path, flags: &[&str]) -> Server {
        let mut flags = flags.to_vec();
        flags.extend(["--tls", "on"]);
        Server::launch(skiff, &flags, &[], false)
    }

    fn launch(skiff: &Path, flags: &[&str], env: &[(&str, &str)], client_config: bool) -> Server {
        // TLS unless the test asks for a plain development server.
        let tls = !flags.windows(2).any(|w| w == ["--tls", "off"]);
        let mut s = Server {
            tls,
            skiff: skiff.to_path_buf(),
            flags: flags.iter().map(|f| f.to_string()).collect(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            client_config,
            proc: None,
            addr: format!("127.0.0.1:{}", free_port()),
            data: tempfile::tempdir().expect("temp dir"),
            home: tempfile::tempdir().expect("temp dir"),
        };
        s.boot();
        s
    }

    /// Starts the server process (again: same port, data and HOME).
    pub fn boot(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.home.path().join("server.log"))
            .expect("log file");
        let mut cmd = Command::new(&self.skiff);
        cmd.args(["server", "--listen", &self.addr, "--data-dir"])
            .arg(self.data.path())
            .args(&self.flags)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env("HOME", self.home.path())
            .stdout(Stdio::null())
            .stderr(log);
        if !self.client_config {
            cmd.arg("--no-client-config");
        }
        self.proc = Some(KillOnDrop(cmd.spawn().expect("start skiff server")));
        let ready = if self.tls {
            self.wait_https_ready(Duration::from_secs(30))
        } else {
            wait_http_ok(&self.addr, "/readyz", Duration::from_secs(30))
        };
        assert!(
            ready,
            "skiff server did not become ready:\n{}",
            self.log_tail(40)
        );
        // The server writes the CLI's config once it answers.
        if self.client_config {
            let config = self.home.path().join(".skiff").join("config");
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            while !std::fs::read_to_string(&config).is_ok_and(|t| t.contains(&self.url())) {
                assert!(
                    std::time::Instant::now() < deadline,
                    "skiff server wrote no {}:\n{}",
                    config.display(),
                    self.log_tail(40)
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// `/readyz` over TLS, checked against the server's CA.
    fn wait_https_ready(&self, timeout: Duration) -> bool {
        crate::wait_https_ready(&self.url(), &self.tls_file("server-ca.crt"), timeout)
    }

    pub fn url(&self) -> String {
        if self.tls {
            format!("https://{}", self.addr)
        } else {
            format!("http://{}", self.addr)
        }
    }

    /// A file of the server's PKI (`<data-dir>/tls/NAME`).
    pub fn tls_file(&self, name: &str) -> PathBuf {
        self.data.path().join("tls").join(name)
    }

    /// curl's flags for the admin: the CA and the admin's certificate
    /// (none without TLS).
    pub fn curl_admin(&self) -> Vec<String> {
        if !self.tls {
            return Vec::new();
        }
        let f = |n: &str| self.tls_file(n).display().to_string();
        vec![
            "--cacert".into(),
            f("server-ca.crt"),
            "--cert".into(),
            f("admin.crt"),
            "--key".into(),
            f("admin.key"),
        ]
    }

    /// The admin's credentials (plain: just the URL), for in-process
    /// clients.
    pub fn credentials(&self) -> skiff_client::Credentials {
        if self.tls {
            crate::admin_credentials(self.data.path())
        } else {
            skiff_client::Credentials::plain(&self.url())
        }
    }

    /// curl with the admin's flags; URLs from [`Server::url`].
    pub fn curl(&self) -> Command {
        let mut c = Command::new("curl");
        c.args(self.curl_admin());
        c
    }

    pub fn data_dir(&self) -> &Path {
        self.data.path()
    }

    /// Kills the server (SIGKILL, as a crash).
    pub fn kill(&mut self) {
        self.proc.take();
    }

    pub fn pid(&self) -> u32 {
        self.proc.as_ref().expect("running").0.id()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.home.path().join("server.log")).unwrap_or_default()
    }

    /// The CLI, talking to this server.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.skiff);
        c.args(args).env("HOME", self.home.path());
        if self.client_config {
            // What the server wrote in HOME is all the CLI has.
            c.env_remove("SKIFF_SERVER").env_remove("KUBECONFIG");
        } else if self.tls {
            c.env_remove("SKIFF_SERVER")
                .env("KUBECONFIG", self.data.path().join("admin.kubeconfig"));
        } else {
            c.env("SKIFF_SERVER", self.url());
        }
        c
    }

    /// A CLI call with `input` on its standard input.
    pub fn output_stdin(&self, args: &[&str], input: &str) -> Output {
        use std::io::Write;
        let mut child = self
            .cmd(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run skiff");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input.as_bytes())
            .expect("write stdin");
        child.wait_with_output().expect("skiff")
    }

    /// A REST GET that must succeed, as JSON.
    pub fn rest(&self, path: &str) -> Value {
        let out = Command::new("curl")
            .args(self.curl_admin())
            .args(["-sf", &format!("{}{path}", self.url())])
            .output()
            .expect("run curl");
        assert!(out.status.success(), "curl {path} failed");
        serde_json::from_slice(&out.stdout).expect("JSON")
    }

    /// (success, stdout, stderr)
    pub fn skiff(&self, args: &[&str]) -> (bool, String, String) {
        let out = self.cmd(args).output().expect("run skiff");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Stdout of a CLI call that must succeed.
    pub fn ok(&self, args: &[&str]) -> String {
        let (ok, out, err) = self.skiff(args);
        assert!(ok, "skiff {args:?} failed: {err}\n{out}");
        out
    }

    /// `skiff apply -f -` of a manifest, which must succeed.
    pub fn apply(&self, manifest: &str) {
        let out = self.output_stdin(&["apply", "-f", "-"], manifest);
        assert!(
            out.status.success(),
            "apply failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `skiff get ARGS -o json`
    pub fn get(&self, args: &[&str]) -> Value {
        let mut a = vec!["get"];
        a.extend_from_slice(args);
        a.extend_from_slice(&["-o", "json"]);
        serde_json::from_str(&self.ok(&a)).expect("JSON from skiff get")
    }

    /// The items of a `skiff get` list.
    pub fn items(&self, args: &[&str]) -> Vec<Value> {
        self.get(args)["items"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// `skiff sim nodes` against this server, returned once its nodes are
    /// registered; killed (-9) on drop, like a lost machine.
    pub fn sim(&self, prefix: &str, flags: &[&str]) -> KillOnDrop {
        let mut args = vec![
            "sim",
            "nodes",
            "--prefix",
            prefix,
            "--heartbeat-seconds",
            "1",
        ];
        args.extend_from_slice(flags);
        let mut child = self
            .cmd(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run skiff sim nodes");
        // It says so once its nodes are registered.
        let mut err = BufReader::new(child.stderr.take().expect("stderr"));
        let mut line = String::new();
        loop {
            line.clear();
            let n = err.read_line(&mut line).expect("read skiff sim's output");
            assert!(n > 0, "skiff sim nodes ended early");
            if line.contains("simulated nodes ready") {
                break;
            }
        }
        std::thread::spawn(move || std::io::copy(&mut err, &mut std::io::sink()));
        KillOnDrop(child)
    }

    /// A kubeconfig for this server (in its HOME), for kubectl.
    pub fn kubeconfig(&self) -> PathBuf {
        if self.tls {
            return self.data.path().join("admin.kubeconfig");
        }
        let path = self.home.path().join("kubeconfig");
        let config = format!(
            "apiVersion: v1\nkind: Config\n\
             clusters: [{{name: skiff, cluster: {{server: \"{}\"}}}}]\n\
             users: [{{name: user, user: {{}}}}]\n\
             contexts: [{{name: skiff, context: {{cluster: skiff, user: user}}}}]\n\
             current-context: skiff\n",
            self.url()
        );
        std::fs::write(&path, config).expect("write kubeconfig");
        path
    }

    /// The last `n` lines of the server's log.
    pub fn log_tail(&self, n: usize) -> String {
        let log = std::fs::read_to_string(self.home.path().join("server.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

/// A failed test shows what the server said.
impl Drop for Server {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- server log (last 60 lines)\n{}", self.log_tail(60));
        }
    }
}
