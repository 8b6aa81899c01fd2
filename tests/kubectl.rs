//! kubectl against `skiff server`: scripted commands of the kubectl these
//! machines ship (v1.32, /usr/bin/kubectl) and of Debian's
//! kubernetes-client (v1.20, which .ci/run unpacks into
//! /opt/kubernetes-client-1.20), each checked by the objects it leaves, not
//! only its exit code.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;
use skiff_testkit::server::Server;
use skiff_testkit::{in_ci, require_tool};

const SKIFF: &str = env!("CARGO_BIN_EXE_skiff");
/// Where .ci/run puts Debian's kubectl 1.20 (beside the newer one on PATH).
const KUBECTL_1_20: &str = "/opt/kubernetes-client-1.20/usr/bin/kubectl";

struct Kubectl {
    bin: PathBuf,
    config: PathBuf,
    home: PathBuf,
}

impl Kubectl {
    fn new(bin: PathBuf, server: &Server) -> Kubectl {
        Kubectl {
            bin,
            config: server.kubeconfig(),
            // kubectl keeps its discovery cache under HOME.
            home: server.home.path().to_path_buf(),
        }
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new(&self.bin)
            .arg("--kubeconfig")
            .arg(&self.config)
            .args(args)
            .env("HOME", &self.home)
            .env_remove("KUBECONFIG")
            .output()
            .expect("run kubectl")
    }

    /// Stdout of a command that must succeed.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.extend_from_slice(&["-o", "json"]);
        serde_json::from_str(&self.ok(&a)).expect("JSON from kubectl get")
    }
}

/// The kubectl on PATH (1.32 here), required in CI.
fn current(server: &Server) -> Option<Kubectl> {
    require_tool("kubectl").map(|bin| Kubectl::new(bin, server))
}

/// Debian's kubectl 1.20, required in CI.
fn debian(server: &Server) -> Option<Kubectl> {
    let bin = Path::new(KUBECTL_1_20);
    if !bin.is_file() {
        assert!(
            !in_ci(),
            "{KUBECTL_1_20} is required in CI: .ci/run unpacks it"
        );
        eprintln!("skipping kubectl 1.20: {KUBECTL_1_20} is missing (bash .ci/run --setup-only)");
        return None;
    }
    Some(Kubectl::new(bin.to_path_buf(), server))
}

fn deployment(name: &str, image: &str) -> String {
    format!(
        "apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec:
      containers:
      - name: web
        image: {image}
        ports: [{{containerPort: 80}}]
        env: [{{name: A, value: \"1\"}}]
"
    )
}

/// A Deployment as its manifest and the user own it: what controllers
/// write (status, and the resourceVersion that moves with it) left out.
fn desired(mut d: Value) -> Value {
    let obj = d.as_object_mut().expect("an object");
    obj.remove("status");
    obj["metadata"]
        .as_object_mut()
        .expect("metadata")
        .remove("resourceVersion");
    d
}

/// Nothing but the user writes a ConfigMap: its resourceVersion must stay.
fn config_map(data: &str) -> String {
    format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: settings}}\ndata: {{mode: {data}}}\n"
    )
}

fn write(server: &Server, file: &str, text: &str) -> String {
    let path = server.home.path().join(file);
    std::fs::write(&path, text).expect("write manifest");
    path.display().to_string()
}

fn container<'a>(d: &'a Value, name: &str) -> &'a Value {
    d["spec"]["template"]["spec"]["containers"]
        .as_array()
        .expect("containers")
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no container {name} in {d}"))
}

fn container_names(d: &Value) -> Vec<String> {
    d["spec"]["template"]["spec"]["containers"]
        .as_array()
        .expect("containers")
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_string())
        .collect()
}

/// `apply --dry-run=server`, `diff` and `delete --dry-run=server` leave
/// the object and its resourceVersion as they were; a dry-run apply of a
/// new object creates nothing.
#[test]
fn server_dry_runs_and_diff_change_nothing() {
    let s = Server::start(Path::new(SKIFF), &[], &[]);
    let Some(k) = current(&s) else { return };
    let v1 = write(&s, "v1.yaml", &deployment("web", "nginx:1"));
    let v2 = write(&s, "v2.yaml", &deployment("web", "nginx:2"));
    let c1 = write(&s, "c1.yaml", &config_map("a"));
    let c2 = write(&s, "c2.yaml", &config_map("b"));
    k.ok(&["apply", "-f", &v1, "-f", &c1]);
    let before = desired(k.json(&["get", "deployment", "web"]));
    let cm = k.json(&["get", "configmap", "settings"]);

    let out = k.ok(&["apply", "--dry-run=server", "-f", &v2, "-f", &c2]);
    assert!(
        out.contains("deployment.apps/web configured (server dry run)"),
        "{out}"
    );
    assert!(
        out.contains("configmap/settings configured (server dry run)"),
        "{out}"
    );
    assert_eq!(desired(k.json(&["get", "deployment", "web"])), before);
    assert_eq!(k.json(&["get", "configmap", "settings"]), cm);

    let out = k.run(&["diff", "-f", &v2, "-f", &c2]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "differences: {text}");
    assert!(text.contains("-        image: nginx:1"), "{text}");
    assert!(text.contains("+        image: nginx:2"), "{text}");
    assert!(
        text.contains("-  mode: a") && text.contains("+  mode: b"),
        "{text}"
    );
    assert_eq!(
        desired(k.json(&["get", "deployment", "web"])),
        before,
        "diff wrote"
    );
    assert_eq!(k.json(&["get", "configmap", "settings"]), cm, "diff wrote");
    let out = k.run(&["diff", "-f", &v1, "-f", &c1]);
    assert_eq!(out.status.code(), Some(0), "no differences: {out:?}");

    let out = k.ok(&["delete", "--dry-run=server", "deployment", "web"]);
    assert!(out.contains("deleted (server dry run)"), "{out}");
    assert_eq!(desired(k.json(&["get", "deployment", "web"])), before);
    k.ok(&["delete", "--dry-run=server", "-f", &c1]);
    assert_eq!(k.json(&["get", "configmap", "settings"]), cm);

    let new = write(&s, "new.yaml", &deployment("new", "nginx:1"));
    k.ok(&["apply", "--dry-run=server", "-f", &new]);
    let out = k.run(&["get", "deployment", "new"]);
    assert!(!out.status.success(), "a dry-run apply created it");
}

/// `set image`, `patch` (strategic, by default), `patch --type json|merge`
/// and a re-apply keep what they do not name — with both kubectl versions.
#[test]
fn patches_keep_what_they_do_not_name() {
    let s = Server::start(Path::new(SKIFF), &[], &[]);
    let clients: Vec<Kubectl> = [current(&s), debian(&s)].into_iter().flatten().collect();
    for (i, k) in clients.iter().enumerate() {
        let name = format!("web{i}");
        let d = &format!("deployment/{name}");
        let v1 = write(
            &s,
            &format!("{name}-v1.yaml"),
            &deployment(&name, "nginx:1"),
        );
        k.ok(&["apply", "-f", &v1]);

        k.ok(&["set", "image", d, "web=nginx:2"]);
        let got = k.json(&["get", d]);
        let web = container(&got, "web");
        assert_eq!(web["image"], "nginx:2");
        assert_eq!(
            web["ports"][0]["containerPort"], 80,
            "set image dropped the ports: {web}"
        );
        assert_eq!(web["env"][0]["name"], "A");

        k.ok(&[
            "patch",
            d,
            "-p",
            r#"{"spec":{"template":{"spec":{"containers":[{"name":"sidecar","image":"busybox"}]}}}}"#,
        ]);
        let got = k.json(&["get", d]);
        let mut names = container_names(&got);
        names.sort();
        assert_eq!(
            names,
            ["sidecar", "web"],
            "a patched-in sidecar replaced the list"
        );
        assert_eq!(container(&got, "web")["ports"][0]["containerPort"], 80);

        k.ok(&[
            "patch",
            d,
            "--type",
            "json",
            "-p",
            r#"[{"op":"test","path":"/spec/replicas","value":1},{"op":"replace","path":"/spec/replicas","value":3}]"#,
        ]);
        assert_eq!(k.json(&["get", d])["spec"]["replicas"], 3);
        let out = k.run(&[
            "patch",
            d,
            "--type",
            "json",
            "-p",
            r#"[{"op":"test","path":"/spec/replicas","value":1}]"#,
        ]);
        assert!(!out.status.success(), "a failing JSON patch test passed");

        // scale goes through deployments/scale.
        k.ok(&["scale", d, "--replicas=2"]);
        assert_eq!(k.json(&["get", d])["spec"]["replicas"], 2);
        let out = k.run(&["scale", d, "--current-replicas=7", "--replicas=1"]);
        assert!(!out.status.success(), "a failed precondition scaled");
        assert_eq!(k.json(&["get", d])["spec"]["replicas"], 2);

        k.ok(&[
            "patch",
            d,
            "--type",
            "merge",
            "-p",
            r#"{"metadata":{"labels":{"tier":"front"}}}"#,
        ]);
        assert_eq!(k.json(&["get", d])["metadata"]["labels"]["tier"], "front");

        // Re-applying the edited manifest: its image wins, the sidecar
        // someone else added stays, the ports stay.
        let v3 = write(
            &s,
            &format!("{name}-v3.yaml"),
            &deployment(&name, "nginx:3"),
        );
        k.ok(&["apply", "-f", &v3]);
        let got = k.json(&["get", d]);
        assert_eq!(container(&got, "web")["image"], "nginx:3");
        assert_eq!(container(&got, "web")["ports"][0]["containerPort"], 80);
        assert!(container_names(&got).contains(&"sidecar".to_string()));
    }
}

/// `get` prints kubectl's columns from the server's Table, `-o wide` the
/// wide ones, `get all` the kinds of the `all` category — both versions.
#[test]
fn get_prints_tables() {
    let s = Server::start(Path::new(SKIFF), &[], &[]);
    let clients: Vec<Kubectl> = [current(&s), debian(&s)].into_iter().flatten().collect();
    let guestbook =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/manifests/guestbook-all-in-one.yaml");
    s.ok(&["apply", "-f", guestbook.to_str().unwrap()]);
    for k in &clients {
        // Discovery (aggregated for 1.32, per group-version for 1.20).
        let out = k.ok(&["api-resources"]);
        for row in [
            ["deployments", "deploy", "apps/v1", "true", "Deployment"],
            ["nodes", "no", "v1", "false", "Node"],
            [
                "endpointslices",
                "eps",
                "discovery.k8s.io/v1",
                "true",
                "EndpointSlice",
            ],
        ] {
            assert!(
                out.lines()
                    .any(|l| l.split_whitespace().eq(row.iter().copied())),
                "{row:?} in {out}"
            );
        }
        // kubectl pages its lists (500 by default): in chunks of one, the
        // same table, one header.
        let whole = k.ok(&["get", "services", "-o", "name"]);
        assert!(whole.lines().count() >= 3, "{whole}");
        assert_eq!(
            k.ok(&["get", "services", "-o", "name", "--chunk-size=1"]),
            whole
        );
        let chunked = k.ok(&["get", "namespaces", "--chunk-size=1"]);
        assert_eq!(
            chunked.lines().filter(|l| l.starts_with("NAME")).count(),
            1,
            "{chunked}"
        );
        assert_eq!(
            chunked.lines().count(),
            k.ok(&["get", "namespaces"]).lines().count()
        );
        let out = k.ok(&["get", "pods"]);
        let header: Vec<&str> = out
            .lines()
            .next()
            .unwrap_or("")
            .split_whitespace()
            .collect();
        assert_eq!(
            header,
            ["NAME", "READY", "STATUS", "RESTARTS", "AGE"],
            "{out}"
        );
        assert!(
            out.lines().skip(1).all(|l| l.contains("/")),
            "READY cells: {out}"
        );
        let out = k.ok(&["get", "deployments", "-o", "wide"]);
        assert!(
            out.starts_with("NAME") && out.contains("IMAGES") && out.contains("SELECTOR"),
            "{out}"
        );
        assert!(
            out.contains("gcr.io/google-samples/gb-frontend:v4"),
            "{out}"
        );
        let out = k.ok(&["get", "svc", "frontend"]);
        assert!(
            out.contains("CLUSTER-IP") && out.contains("NodePort"),
            "{out}"
        );
        let out = k.ok(&["get", "all"]);
        for shown in [
            "pod/frontend-",
            "service/frontend",
            "deployment.apps/frontend",
            "replicaset.apps/frontend-",
        ] {
            assert!(out.contains(shown), "get all lacks {shown}: {out}");
        }
        let out = k.ok(&["get", "ns"]);
        assert!(
            out.contains("kube-system") && out.contains("Active"),
            "{out}"
        );
    }
}

/// `kubectl create ...` sends Kubernetes' protobuf; `expose` and `run`
/// send JSON: the objects come out as they asked, with both versions.
#[test]
fn create_expose_and_run() {
    let s = Server::start(Path::new(SKIFF), &[], &[]);
    let clients: Vec<Kubectl> = [current(&s), debian(&s)].into_iter().flatten().collect();
    for (i, k) in clients.iter().enumerate() {
        let ns = format!("team{i}");
        k.ok(&["create", "namespace", &ns]);
        let n = |args: &[&str]| {
            let mut a = vec!["-n", ns.as_str()];
            a.extend_from_slice(args);
            k.ok(&a)
        };
        n(&[
            "create",
            "deployment",
            "web",
            "--image=nginx:1",
            "--replicas=2",
            "--port=80",
        ]);
        n(&[
            "create",
            "deployment",
            "none",
            "--image=nginx:1",
            "--replicas=0",
        ]);
        n(&[
            "create",
            "configmap",
            "settings",
            "--from-literal=mode=fast",
            "--from-literal=level=3",
        ]);
        let node_port = format!("--node-port={}", 30080 + i);
        n(&[
            "create",
            "service",
            "nodeport",
            "np",
            "--tcp=80:8080",
            &node_port,
        ]);
        n(&[
            "create",
            "service",
            "externalname",
            "ex",
            "--external-name=example.com",
        ]);
        n(&[
            "expose",
            "deployment",
            "web",
            "--port=8000",
            "--target-port=80",
        ]);
        n(&[
            "run",
            "solo",
            "--image=busybox",
            "--labels=app=solo",
            "--",
            "sleep",
            "1000",
        ]);

        let get = |what: &str| k.json(&["-n", &ns, "get", what]);
        let d = get("deployment/web");
        assert_eq!(d["spec"]["replicas"], 2);
        assert_eq!(d["spec"]["selector"]["matchLabels"]["app"], "web");
        assert_eq!(container(&d, "nginx")["image"], "nginx:1");
        assert_eq!(container(&d, "nginx")["ports"][0]["containerPort"], 80);
        assert_eq!(
            get("deployment/none")["spec"]["replicas"],
            0,
            "zero replicas kept"
        );
        assert_eq!(
            get("configmap/settings")["data"],
            serde_json::json!({"mode": "fast", "level": "3"})
        );
        let np = get("service/np");
        assert_eq!(np["spec"]["type"], "NodePort");
        assert_eq!(np["spec"]["ports"][0]["port"], 80);
        assert_eq!(np["spec"]["ports"][0]["targetPort"], 8080);
        assert_eq!(np["spec"]["ports"][0]["nodePort"], 30080 + i);
        assert_eq!(get("service/ex")["spec"]["externalName"], "example.com");
        let web = get("service/web");
        assert_eq!(web["spec"]["selector"]["app"], "web");
        assert_eq!(web["spec"]["ports"][0]["targetPort"], 80);
        let solo = get("pod/solo");
        assert_eq!(
            solo["spec"]["containers"][0]["args"],
            serde_json::json!(["sleep", "1000"])
        );
    }
}

fn pods_on(k: &Kubectl, ns: &str, node: &str) -> Vec<Value> {
    let field = format!("spec.nodeName={node}");
    k.json(&["-n", ns, "get", "pods", "--field-selector", &field])["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Waits for `done`, at most 30 s; on a timeout says what `state` shows.
fn wait_for(what: &str, state: impl Fn() -> String, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !done() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}:\n{}",
            state()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// `cordon`, `drain` (pods/eviction) and `uncordon` on simulated nodes:
/// the drained node's pods are evicted and come back on the other node.
#[test]
fn cordon_drain_and_uncordon() {
    let s = Server::start(Path::new(SKIFF), &[], &[]);
    let clients: Vec<Kubectl> = [current(&s), debian(&s)].into_iter().flatten().collect();
    for (i, k) in clients.iter().enumerate() {
        let prefix = format!("drain{i}");
        let _nodes = s.sim(&prefix, &["--count", "2", "--pods-running"]);
        let (a, b) = (format!("{prefix}-0"), format!("{prefix}-1"));
        let ns = format!("drain{i}");
        k.ok(&["create", "namespace", &ns]);
        // Spread over both: a's pods are the ones drain must move.
        k.ok(&["cordon", &b]);
        k.ok(&[
            "-n",
            &ns,
            "create",
            "deployment",
            "web",
            "--image=nginx",
            "--replicas=2",
        ]);
        let state = || k.ok(&["get", "pods", "-A", "-o", "wide"]) + &k.ok(&["get", "nodes"]);
        wait_for("two pods running on the first node", state, || {
            pods_on(k, &ns, &a)
                .iter()
                .filter(|p| p["status"]["phase"] == "Running")
                .count()
                == 2
        });
        k.ok(&["uncordon", &b]);
        let out = k.ok(&[
            "drain",
            &a,
            "--ignore-daemonsets",
            "--grace-period=0",
            "--timeout=60s",
        ]);
        assert!(out.contains(&a), "{out}");
        assert_eq!(k.json(&["get", "node", &a])["spec"]["unschedulable"], true);
        assert!(
            pods_on(k, &ns, &a).is_empty(),
            "pods left on the drained node"
        );
        wait_for("two pods running on the other node", state, || {
            pods_on(k, &ns, &b)
                .iter()
                .filter(|p| p["status"]["phase"] == "Running")
                .count()
                == 2
        });
        k.ok(&["uncordon", &a]);
        assert!(
            k.json(&["get", "node", &a])["spec"]
                .get("unschedulable")
                .is_none_or(|u| u == false)
        );
        // The next round's pods must not land on these nodes.
        drop(_nodes);
        k.ok(&["delete", "namespace", &ns, "--wait=false"]);
        k.ok(&["delete", "node", &a, &b]);
    }
}

/// `skiff apply|delete --dry-run=server|client` and `skiff diff` do what
/// kubectl's do, through the gRPC API.
#[test]
fn skiff_dry_runs_and_diff() {
    let s = Server::start(Path::new(SKIFF), &[], &[]);
    let v1 = write(&s, "v1.yaml", &deployment("web", "nginx:1"));
    let v2 = write(&s, "v2.yaml", &deployment("web", "nginx:2"));
    let c1 = write(&s, "c1.yaml", &config_map("a"));
    let c2 = write(&s, "c2.yaml", &config_map("b"));
    s.ok(&["apply", "-f", &v1, "-f", &c1]);
    let before = desired(s.get(&["deployment", "web"]));
    let cm = s.get(&["configmap", "settings"]);
    for mode in ["--dry-run=server", "--dry-run=client", "--dry-run"] {
        let out = s.ok(&["apply", mode, "-f", &v2, "-f", &c2]);
        assert!(out.contains("configured ("), "{mode}: {out}");
        assert_eq!(desired(s.get(&["deployment", "web"])), before, "{mode}");
        assert_eq!(s.get(&["configmap", "settings"]), cm, "{mode}");
    }
    let out = s
        .cmd(&["diff", "-f", &v2, "-f", &c2])
        .output()
        .expect("skiff diff");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("-        image: nginx:1") && text.contains("+        image: nginx:2"),
        "{text}"
    );
    assert!(
        text.contains("-  mode: a") && text.contains("+  mode: b"),
        "{text}"
    );
    let out = s.cmd(&["diff", "-f", &c1]).output().expect("skiff diff");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    let out = s
        .cmd(&["diff", "-f", "/nonexistent/skiff.yaml"])
        .output()
        .expect("skiff diff");
    assert_eq!(out.status.code(), Some(2), "trouble is not a difference");
    assert_eq!(desired(s.get(&["deployment", "web"])), before);
    assert_eq!(s.get(&["configmap", "settings"]), cm);
    for mode in ["--dry-run=server", "--dry-run=client"] {
        let out = s.ok(&["delete", mode, "deployment", "web"]);
        assert!(out.contains("deleted ("), "{mode}: {out}");
        assert_eq!(desired(s.get(&["deployment", "web"])), before, "{mode}");
        s.ok(&["delete", mode, "-f", &c1]);
        assert_eq!(s.get(&["configmap", "settings"]), cm, "{mode}");
    }
    // A real apply of v2 keeps the ports and moves the image.
    s.ok(&["apply", "-f", &v2]);
    let got = s.get(&["deployment", "web"]);
    assert_eq!(container(&got, "web")["image"], "nginx:2");
    assert_eq!(container(&got, "web")["ports"][0]["containerPort"], 80);
}

/// The core kinds clients expect: every namespace has its `default`
/// ServiceAccount (back when deleted), and v1 Endpoints follow a Service's
/// ready pods while user-made Endpoints of a selector-less Service stay.
#[test]
fn service_accounts_and_endpoints() {
    let s = Server::start(Path::new(SKIFF), &[], &[]);
    let clients: Vec<Kubectl> = [current(&s), debian(&s)].into_iter().flatten().collect();
    for (i, k) in clients.iter().enumerate() {
        let prefix = format!("ep{i}");
        let _nodes = s.sim(&prefix, &["--count", "2", "--pods-running"]);
        let ns = format!("core{i}");
        k.ok(&["create", "namespace", &ns]);
        let sa = |name: &str| k.run(&["-n", &ns, "get", "serviceaccount", name, "-o", "json"]);
        let uid = |o: &Output| -> Option<String> {
            let v: Value = serde_json::from_slice(&o.stdout).ok()?;
            v["metadata"]["uid"].as_str().map(str::to_string)
        };
        let accounts = || k.ok(&["get", "sa", "-A"]);
        wait_for("the default service account", accounts, || {
            sa("default").status.success()
        });
        let first = uid(&sa("default")).expect("a uid");
        let listed = k.ok(&["-n", &ns, "get", "sa"]);
        assert!(
            listed.contains("SECRETS") && listed.contains("default"),
            "{listed}"
        );
        k.ok(&["-n", &ns, "delete", "sa", "default"]);
        wait_for("the default service account again", accounts, || {
            uid(&sa("default")).is_some_and(|u| u != first)
        });

        // A selector-less Service with Endpoints of the user's own.
        let ext = write(
            &s,
            &format!("ext{i}.yaml"),
            &format!(
                "apiVersion: v1\nkind: Service\nmetadata: {{name: ext, namespace: {ns}}}\n\
                 spec: {{ports: [{{port: 5432}}]}}\n---\n\
                 apiVersion: v1\nkind: Endpoints\nmetadata: {{name: ext, namespace: {ns}}}\n\
                 subsets: [{{addresses: [{{ip: 192.0.2.10}}], ports: [{{port: 5432}}]}}]\n"
            ),
        );
        k.ok(&["apply", "-f", &ext]);
        let ext_before = k.json(&["-n", &ns, "get", "endpoints", "ext"]);

        k.ok(&[
            "-n",
            &ns,
            "create",
            "deployment",
            "web",
            "--image=nginx",
            "--replicas=2",
        ]);
        k.ok(&["-n", &ns, "expose", "deployment", "web", "--port=80"]);
        let eps = || k.ok(&["-n", &ns, "get", "endpoints,pods", "-o", "wide"]);
        let ready_ips = || -> Vec<String> {
            let e = k.json(&["-n", &ns, "get", "ep", "web"]);
            e["subsets"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|s| s["addresses"].as_array().cloned().unwrap_or_default())
                .filter_map(|a| a["ip"].as_str().map(str::to_string))
                .collect()
        };
        wait_for("two ready addresses", eps, || ready_ips().len() == 2);
        let pod_ips: Vec<String> = k.json(&["-n", &ns, "get", "pods"])["items"]
            .as_array()
            .expect("pods")
            .iter()
            .filter_map(|p| p["status"]["podIP"].as_str().map(str::to_string))
            .collect();
        let mut got = ready_ips();
        let mut want = pod_ips.clone();
        got.sort();
        want.sort();
        assert_eq!(got, want, "the Endpoints name the pods' addresses");
        let e = k.json(&["-n", &ns, "get", "ep", "web"]);
        assert_eq!(e["subsets"][0]["ports"][0]["port"], 80);
        assert_eq!(e["subsets"][0]["addresses"][0]["targetRef"]["kind"], "Pod");
        let table = k.ok(&["-n", &ns, "get", "endpoints", "web"]);
        assert!(
            table.contains("ENDPOINTS") && table.contains(&format!("{}:80", want[0])),
            "{table}"
        );
        // Pods run as the namespace's default account.
        let pod = k.json(&["-n", &ns, "get", "pods"])["items"][0].clone();
        assert_eq!(pod["spec"]["serviceAccountName"], "default");

        k.ok(&["-n", &ns, "scale", "deployment", "web", "--replicas=0"]);
        wait_for("no addresses", eps, || ready_ips().is_empty());
        k.ok(&["-n", &ns, "delete", "service", "web"]);
        wait_for("the Endpoints to go with the Service", eps, || {
            !k.run(&["-n", &ns, "get", "ep", "web"]).status.success()
        });
        assert_eq!(
            k.json(&["-n", &ns, "get", "endpoints", "ext"]),
            ext_before,
            "the user's Endpoints are left alone"
        );
        drop(_nodes);
        k.ok(&["delete", "namespace", &ns, "--wait=false"]);
        k.ok(&[
            "delete",
            "node",
            &format!("{prefix}-0"),
            &format!("{prefix}-1"),
        ]);
    }
}

/// Server-side apply with both kubectls and skiff: a manager's fields are
/// its own; another manager's change to one is a 409 naming that manager
/// and the field, until forced; an object last applied client-side moves
/// to server-side apply without a conflict.
#[test]
fn server_side_apply() {
    let s = Server::start(Path::new(SKIFF), &[], &[]);
    let clients: Vec<Kubectl> = [current(&s), debian(&s)].into_iter().flatten().collect();
    let managers = |d: &Value| -> Vec<(String, String)> {
        d["metadata"]["managedFields"]
            .as_array()
            .expect("managedFields")
            .iter()
            .map(|e| {
                (
                    e["manager"].as_str().unwrap().to_string(),
                    e["operation"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    for (i, k) in clients.iter().enumerate() {
        let ns = format!("ssa{i}");
        k.ok(&["create", "namespace", &ns]);
        let get = || k.json(&["-n", &ns, "get", "deployment", "web"]);
        let v1 = write(&s, &format!("ssa{i}-1.yaml"), &deployment("web", "nginx:1"));
        let out = k.ok(&["-n", &ns, "apply", "--server-side", "-f", &v1]);
        assert!(out.contains("serverside-applied"), "{out}");
        // kubectl hides managedFields (since 1.21): read them with skiff.
        let made = s.get(&["-n", &ns, "deployment", "web"]);
        assert_eq!(
            managers(&made),
            [("kubectl".to_string(), "Apply".to_string())]
        );
        let fields = &made["metadata"]["managedFields"][0]["fieldsV1"];
        assert!(
            fields["f:spec"]["f:replicas"].is_object()
                && fields["f:spec"]["f:template"]["f:spec"]["f:containers"]["k:{\"name\":\"web\"}"]
                    ["f:image"]
                    .is_object(),
            "{fields}"
        );
        assert!(
            made["metadata"]["annotations"]
                .get("kubectl.kubernetes.io/last-applied-configuration")
                .is_none(),
            "server-side apply keeps no last-applied annotation"
        );
        // The same configuration again is no write at all (a ConfigMap:
        // no controller writes it meanwhile).
        let cm = write(&s, &format!("ssa{i}-cm.yaml"), &config_map("a"));
        k.ok(&["-n", &ns, "apply", "--server-side", "-f", &cm]);
        let cm_rv =
            || k.json(&["-n", &ns, "get", "cm", "settings"])["metadata"]["resourceVersion"].clone();
        let rv = cm_rv();
        let out = k.ok(&["-n", &ns, "apply", "--server-side", "-f", &cm]);
        assert!(out.contains("serverside-applied"), "{out}");
        assert_eq!(cm_rv(), rv);

        // Another writer takes .spec.replicas; applying a different count
        // conflicts with it, and changes nothing.
        k.ok(&["-n", &ns, "scale", "deployment", "web", "--replicas=3"]);
        let scaled = get();
        let three = deployment("web", "nginx:1").replace("replicas: 1", "replicas: 5");
        let v3 = write(&s, &format!("ssa{i}-3.yaml"), &three);
        let out = k.run(&["-n", &ns, "apply", "--server-side", "-f", &v3]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "a conflict fails");
        assert!(
            err.contains("conflict with \"kubectl") && err.contains(".spec.replicas"),
            "{err}"
        );
        assert_eq!(
            desired(get()),
            desired(scaled),
            "a refused apply changes nothing"
        );
        assert_eq!(get()["spec"]["replicas"], 3);
        // Forced, the applier takes the field back.
        k.ok(&[
            "-n",
            &ns,
            "apply",
            "--server-side",
            "--force-conflicts",
            "-f",
            &v3,
        ]);
        let forced = get();
        assert_eq!(forced["spec"]["replicas"], 5);
        assert_eq!(container(&forced, "web")["image"], "nginx:1");

        // Fields the configuration drops are removed; those no one named
        // (defaults) stay.
        let lean = deployment("web", "nginx:1")
            .replace("replicas: 1", "replicas: 5")
            .replace("        env: [{name: A, value: \"1\"}]\n", "");
        let v4 = write(&s, &format!("ssa{i}-4.yaml"), &lean);
        k.ok(&["-n", &ns, "apply", "--server-side", "-f", &v4]);
        let lean_live = get();
        assert!(
            container(&lean_live, "web").get("env").is_none(),
            "{lean_live}"
        );
        assert_eq!(
            container(&lean_live, "web")["ports"][0]["containerPort"],
            80
        );
        assert!(lean_live["spec"]["strategy"]["type"].is_string());

        // Client-side apply first, then server-side with a new image: the
        // fields the last-applied annotation set are kubectl's to take.
        let c1 = write(&s, &format!("csa{i}-1.yaml"), &deployment("api", "nginx:1"));
        k.ok(&["-n", &ns, "apply", "-f", &c1]);
        let c2 = write(&s, &format!("csa{i}-2.yaml"), &deployment("api", "nginx:2"));
        let out = k.run(&["-n", &ns, "apply", "--server-side", "-f", &c2]);
        assert!(
            out.status.success(),
            "client-side to server-side apply: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let api = s.get(&["-n", &ns, "deployment", "api"]);
        assert_eq!(container(&api, "web")["image"], "nginx:2");
        assert!(
            managers(&api).contains(&("kubectl".to_string(), "Apply".to_string())),
            "{:?}",
            managers(&api)
        );
        // A client-side apply after that still diffs against a fresh
        // last-applied record: dropping env removes it.
        let last =
            api["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"]
                .as_str()
                .expect("the last-applied annotation is kept up to date");
        assert!(last.contains("nginx:2"), "{last}");
        k.ok(&["delete", "namespace", &ns, "--wait=false"]);
    }

    // skiff's own --server-side, under its own manager.
    let ns = "ssa-skiff";
    s.ok(&["create", "namespace", ns]);
    let m = write(&s, "skiff-ssa.yaml", &deployment("web", "nginx:1"));
    let out = s.ok(&["-n", ns, "apply", "--server-side", "-f", &m]);
    assert!(out.contains("serverside-applied"), "{out}");
    let d = s.get(&["-n", ns, "deployment", "web"]);
    assert_eq!(managers(&d), [("skiff".to_string(), "Apply".to_string())]);
    s.ok(&["-n", ns, "scale", "deployment", "web", "--replicas=4"]);
    let five = deployment("web", "nginx:1").replace("replicas: 1", "replicas: 5");
    let m5 = write(&s, "skiff-ssa5.yaml", &five);
    let (ok, _, err) = s.skiff(&["-n", ns, "apply", "--server-side", "-f", &m5]);
    assert!(!ok && err.contains(".spec.replicas"), "{err}");
    assert_eq!(
        s.get(&["-n", ns, "deployment", "web"])["spec"]["replicas"],
        4
    );
    s.ok(&[
        "-n",
        ns,
        "apply",
        "--server-side",
        "--force-conflicts",
        "-f",
        &m5,
    ]);
    assert_eq!(
        s.get(&["-n", ns, "deployment", "web"])["spec"]["replicas"],
        5
    );
    let (ok, _, err) = s.skiff(&["apply", "--dry-run=client", "--server-side", "-f", &m5]);
    assert!(!ok && err.contains("--dry-run=server"), "{err}");
}

/// `kubectl exec` refusals are clear before any stream opens: a container
/// the pod lacks is named, and kubectl 1.20 (SPDY only) hears which
/// transports are served. (Commands running: tests/node.rs, on a real
/// node.)
#[test]
fn exec_refusals_are_clear() {
    let s = Server::start(Path::new(SKIFF), &[], &[]);
    let _nodes = s.sim("ex", &["--count", "1", "--pods-running"]);
    s.ok(&["create", "namespace", "ex"]);
    s.apply(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: one, namespace: ex}\n\
         spec: {containers: [{name: a, image: busybox}, {name: b, image: busybox}]}\n",
    );
    let clients: Vec<(usize, Kubectl)> = [current(&s), debian(&s)]
        .into_iter()
        .enumerate()
        .filter_map(|(i, k)| k.map(|k| (i, k)))
        .collect();
    for (i, k) in &clients {
        wait_for(
            "the pod to be bound",
            || k.ok(&["-n", "ex", "get", "pods", "-o", "wide"]),
            || {
                k.json(&["-n", "ex", "get", "pod", "one"])["spec"]["nodeName"]
                    .as_str()
                    .is_some_and(|n| !n.is_empty())
            },
        );
        let out = k.run(&["-n", "ex", "exec", "one", "-c", "nope", "--", "true"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains("container nope is not valid for pod one"),
            "{err}"
        );
        let out = k.run(&["-n", "ex", "exec", "nosuch", "-c", "a", "--", "true"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains("nosuch"), "{err}");
        if *i == 1 {
            let out = k.run(&["-n", "ex", "exec", "one", "-c", "a", "--", "true"]);
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(
                !out.status.success() && err.contains("SPDY is not supported"),
                "{err}"
            );
        }
    }
}

/// `kubectl explain` reads the OpenAPI v3 documents (fields, their types
/// and descriptions), and `fieldValidation`: kubectl's default Strict
/// refuses a typo where skiff models every Kubernetes field (ConfigMap),
/// warns where it does not (a Deployment field skiff lacks may be valid),
/// and kubectl 1.20 (which sends no fieldValidation) is warned.
#[test]
fn explain_and_field_validation() {
    let s = Server::start(Path::new(SKIFF), &[], &[]);
    let root = s.rest("/openapi/v3");
    let url = root["paths"]["apis/apps/v1"]["serverRelativeURL"]
        .as_str()
        .expect("apps/v1 is listed");
    let apps = s.rest(url);
    assert!(apps["components"]["schemas"]["io.k8s.api.apps.v1.Deployment"].is_object());

    let typo =
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: NAME}\ndata: {a: b}\ndatta: {x: y}\n";
    let lacking = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: NAME}\nspec:\n  \
        selector: {matchLabels: {app: NAME}}\n  template:\n    metadata: {labels: {app: NAME}}\n    \
        spec: {containers: [{name: c, image: nginx, securityContext: {runAsUser: 1}}]}\n";
    if let Some(k) = current(&s) {
        let out = k.ok(&["explain", "pod.spec"]);
        assert!(
            out.contains("KIND:       Pod")
                && out.contains("containers\t<[]Container>")
                && out.contains("The pod's containers"),
            "{out}"
        );
        let out = k.ok(&["explain", "deployment.spec.replicas"]);
        assert!(
            out.contains("GROUP:      apps") && out.contains("<integer>"),
            "{out}"
        );
        let out = k.ok(&["explain", "svc.spec.ports.targetPort"]);
        assert!(out.contains("<IntOrString>"), "{out}");
        let out = k.run(&["explain", "pod.spec.nosuch"]);
        assert!(!out.status.success());

        let cm = write(&s, "typo.yaml", &typo.replace("NAME", "typo"));
        let out = k.run(&["apply", "-f", &cm]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains("strict decoding error: unknown field \"datta\""),
            "{err}"
        );
        assert!(
            !k.run(&["get", "cm", "typo"]).status.success(),
            "nothing stored"
        );
        let out = k.run(&["apply", "--server-side", "-f", &cm]);
        assert!(!out.status.success(), "server-side apply is strict too");
        let out = k.run(&["apply", "--validate=false", "-f", &cm]);
        assert!(out.status.success(), "{out:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).is_empty(),
            "Ignore: {out:?}"
        );
        assert_eq!(k.json(&["get", "cm", "typo"])["data"]["a"], "b");

        let d = write(&s, "lacking.yaml", &lacking.replace("NAME", "lacking"));
        let out = k.run(&["apply", "-f", &d]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{err}");
        assert!(
            err.contains(
                "Warning: unknown field \"spec.template.spec.containers[0].securityContext\""
            ),
            "{err}"
        );
    }
    if let Some(k) = debian(&s) {
        let cm = write(&s, "typo20.yaml", &typo.replace("NAME", "typo20"));
        let out = k.run(&["apply", "-f", &cm]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{err}");
        assert!(err.contains("unknown field \"datta\""), "{err}");
    }
}
