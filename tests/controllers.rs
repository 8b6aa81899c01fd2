//! The control loops end to end: real `skiff server` processes (embedded
//! store, or two on one real etcd), simulated nodes from `skiff sim nodes`
//! (no containers: what kwok does), the CLI as a user runs it and the REST
//! watch read by curl.

use std::collections::{BTreeMap, BTreeSet};

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use skiff_testkit::server::Server;
use skiff_testkit::{EtcdServer, KillOnDrop};

const SKIFF: &str = env!("CARGO_BIN_EXE_skiff");

fn start(flags: &[&str]) -> Server {
    Server::start(std::path::Path::new(SKIFF), flags, &[])
}

trait RecordPods {
    fn record_pods(&self, selector: &str) -> Recorder;
}

impl RecordPods for Server {
    /// Records the REST watch of pods with `selector` from now on.
    fn record_pods(&self, selector: &str) -> Recorder {
        let list: Value = rest(
            &self.curl_admin(),
            &self.url(),
            &format!("/api/v1/namespaces/default/pods?labelSelector={selector}"),
        );
        let rv = list["metadata"]["resourceVersion"]
            .as_str()
            .unwrap()
            .to_string();
        let file = tempfile::NamedTempFile::new().unwrap();
        let proc = self
            .curl()
            .args([
                "-sN",
                &format!(
                    "{}/api/v1/namespaces/default/pods?watch=true&labelSelector={selector}&resourceVersion={rv}",
                    self.url()
                ),
            ])
            .stdout(file.reopen().unwrap())
            .spawn()
            .unwrap();
        Recorder {
            initial: list["items"].as_array().cloned().unwrap_or_default(),
            file,
            proc: KillOnDrop(proc),
            auth: self.curl_admin(),
            url: self.url(),
            selector: selector.to_string(),
        }
    }
}

fn rest(auth: &[String], url: &str, path: &str) -> Value {
    let out = Command::new("curl")
        .args(auth)
        .args(["-sf", &format!("{url}{path}")])
        .output()
        .unwrap();
    assert!(out.status.success(), "curl {path} failed");
    serde_json::from_slice(&out.stdout).unwrap()
}

struct Recorder {
    initial: Vec<Value>,
    file: tempfile::NamedTempFile,
    proc: KillOnDrop,
    /// curl's credentials and the server's URL.
    auth: Vec<String>,
    url: String,
    selector: String,
}

/// Pod name → resourceVersion.
fn versions<'a>(pods: impl Iterator<Item = &'a Value>) -> BTreeMap<String, String> {
    pods.map(|p| {
        (
            name(p).to_string(),
            p["metadata"]["resourceVersion"]
                .as_str()
                .unwrap_or("")
                .to_string(),
        )
    })
    .collect()
}

impl Recorder {
    /// The states of the pods after each watch event, starting from the
    /// list; recorded until the watch has caught up with a list taken now
    /// (the same pods at the same versions).
    fn states(mut self) -> Vec<BTreeMap<String, Value>> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let now: Value = rest(
                &self.auth,
                &self.url,
                &format!(
                    "/api/v1/namespaces/default/pods?labelSelector={}",
                    self.selector
                ),
            );
            let want = versions(now["items"].as_array().into_iter().flatten());
            let states = self.replay();
            let last = states.last().expect("the list's state");
            if versions(last.values()) == want {
                self.proc.kill();
                return states;
            }
            assert!(
                Instant::now() < deadline,
                "the watch did not catch up with the list: {want:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn replay(&self) -> Vec<BTreeMap<String, Value>> {
        let text = std::fs::read_to_string(self.file.path()).unwrap();
        let mut cur: BTreeMap<String, Value> = self
            .initial
            .iter()
            .map(|p| (name(p).to_string(), p.clone()))
            .collect();
        let mut out = vec![cur.clone()];
        // Only whole lines: the last one may still be being written.
        let complete = text.rfind('\n').map_or("", |i| &text[..i]);
        for line in complete.lines().filter(|l| !l.trim().is_empty()) {
            let ev: Value = serde_json::from_str(line).expect("watch event JSON");
            let obj = ev["object"].clone();
            match ev["type"].as_str().unwrap() {
                "DELETED" => {
                    cur.remove(name(&obj));
                }
                _ => {
                    cur.insert(name(&obj).to_string(), obj);
                }
            }
            out.push(cur.clone());
        }
        out
    }
}

fn name(o: &Value) -> &str {
    o["metadata"]["name"].as_str().unwrap_or("")
}

fn terminating(p: &Value) -> bool {
    !p["metadata"]["deletionTimestamp"].is_null()
}

fn ready(p: &Value) -> bool {
    p["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Ready" && c["status"] == "True")
}

fn node_of(p: &Value) -> &str {
    p["spec"]["nodeName"].as_str().unwrap_or("")
}

/// Polls `f` until it returns `Some`; panics with `what` after `timeout`.
fn wait<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Pods of `app` that are not being deleted.
fn live_pods(s: &Server, app: &str) -> Vec<Value> {
    s.items(&["pods", "-l", &format!("app={app}")])
        .into_iter()
        .filter(|p| !terminating(p))
        .collect()
}

fn wait_ready_pods(s: &Server, app: &str, n: usize) -> Vec<Value> {
    wait(
        &format!("{n} ready pods of {app}"),
        Duration::from_secs(60),
        || {
            let pods = live_pods(s, app);
            (pods.len() == n && pods.iter().all(ready)).then_some(pods)
        },
    )
}

fn deployment(name: &str, replicas: u32, image: &str, extra_spec: &str) -> String {
    let strategy = "{type: RollingUpdate, rollingUpdate: {maxSurge: 1, maxUnavailable: 1}}";
    deployment_with(name, replicas, strategy, image, extra_spec)
}

fn deployment_with(
    name: &str,
    replicas: u32,
    strategy: &str,
    image: &str,
    extra_spec: &str,
) -> String {
    format!(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {name}
spec:
  replicas: {replicas}
  strategy: {strategy}
  selector:
    matchLabels: {{app: {name}}}
  template:
    metadata:
      labels: {{app: {name}}}
    spec:
      containers:
      - name: main
        image: {image}
        ports: [{{name: http, containerPort: 8080}}]
{extra_spec}
"#
    )
}

fn unique(tag: &str) -> String {
    format!("{tag}{}", std::process::id())
}

fn events(s: &Server) -> Vec<Value> {
    s.items(&["events", "-A"])
}

#[test]
fn deployment_scales_replaces_rolls_out_and_undoes() {
    let s = start(&[]);
    let prefix = unique("d");
    let _nodes = s.sim(&prefix, &["--count", "3", "--pods-running"]);
    s.apply(&deployment("web", 4, "demo:1", ""));

    let pods = wait_ready_pods(&s, "web", 4);
    let nodes: BTreeSet<&str> = pods.iter().map(node_of).collect();
    assert!(
        nodes.iter().all(|n| n.starts_with(&prefix)),
        "bound to the simulated nodes: {nodes:?}"
    );
    assert_eq!(nodes.len(), 3, "one owner's pods spread over the nodes");

    // Events of the scheduler, the ReplicaSet and Deployment controllers.
    wait("controller events", Duration::from_secs(20), || {
        let reasons: BTreeSet<String> = events(&s)
            .iter()
            .map(|e| e["reason"].as_str().unwrap_or("").to_string())
            .collect();
        ["Scheduled", "SuccessfulCreate", "ScalingReplicaSet"]
            .iter()
            .all(|r| reasons.contains(*r))
            .then_some(())
    });
    let described = s.ok(&["describe", "deployment", "web"]);
    assert!(described.contains("ScalingReplicaSet"), "{described}");

    // Scale up and down.
    assert_eq!(
        s.ok(&["scale", "deployment/web", "--replicas", "6"]).trim(),
        "deployment.apps/web scaled"
    );
    wait_ready_pods(&s, "web", 6);
    s.ok(&["scale", "deployment", "web", "--replicas", "2"]);
    let pods = wait_ready_pods(&s, "web", 2);
    let (ok, _, err) = s.skiff(&[
        "scale",
        "deployment/web",
        "--replicas",
        "3",
        "--current-replicas",
        "5",
    ]);
    assert!(
        !ok && err.contains("expected replicas to be 5, was 2"),
        "{err}"
    );

    // A deleted pod is replaced.
    let victim = name(&pods[0]).to_string();
    s.ok(&["delete", "pod", &victim]);
    let pods = wait_ready_pods(&s, "web", 2);
    assert!(
        pods.iter().all(|p| name(p) != victim),
        "a new pod replaced {victim}"
    );

    // Rolling update, recorded from the watch.
    s.ok(&["scale", "deployment/web", "--replicas", "4"]);
    wait_ready_pods(&s, "web", 4);
    wait("status caught up", Duration::from_secs(20), || {
        let d = s.get(&["deployment", "web"]);
        (d["status"]["availableReplicas"] == 4 && d["status"]["updatedReplicas"] == 4).then_some(())
    });
    let rec = s.record_pods("app%3Dweb");
    let annotated = |image: &str, cause: &str| {
        deployment("web", 4, image, "").replacen(
            "  name: web\n",
            &format!("  name: web\n  annotations: {{kubernetes.io/change-cause: \"{cause}\"}}\n"),
            1,
        )
    };
    s.apply(&annotated("demo:2", "image demo:2"));
    let out = s.ok(&["rollout", "status", "deployment/web", "--timeout", "60"]);
    assert!(
        out.contains("deployment \"web\" successfully rolled out"),
        "{out}"
    );
    let pods = wait_ready_pods(&s, "web", 4);
    assert!(
        pods.iter()
            .all(|p| p["spec"]["containers"][0]["image"] == "demo:2")
    );
    let states = rec.states();
    assert!(
        states.len() > 8,
        "the watch saw the rollout: {} states",
        states.len()
    );
    for st in &states {
        let live: Vec<&Value> = st.values().filter(|p| !terminating(p)).collect();
        let ready_n = live.iter().filter(|p| ready(p)).count();
        assert!(
            live.len() <= 5,
            "more than replicas + maxSurge pods: {}",
            live.len()
        );
        assert!(
            ready_n >= 3,
            "fewer than replicas - maxUnavailable ready: {ready_n}"
        );
    }

    // History and undo.
    let history = s.ok(&["rollout", "history", "deployment/web"]);
    let lines: Vec<&str> = history.lines().skip(2).map(str::trim_end).collect();
    assert_eq!(
        lines,
        ["1         <none>", "2         image demo:2"],
        "{history}"
    );
    assert_eq!(
        s.ok(&["rollout", "undo", "deployment/web"]).trim(),
        "deployment.apps/web rolled back"
    );
    s.ok(&["rollout", "status", "deployment/web", "--timeout", "60"]);
    let d = s.get(&["deployment", "web"]);
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"][0]["image"],
        "demo:1"
    );
    let pods = wait_ready_pods(&s, "web", 4);
    assert!(
        pods.iter()
            .all(|p| p["spec"]["containers"][0]["image"] == "demo:1")
    );
    let history = s.ok(&["rollout", "history", "deployment/web"]);
    let lines: Vec<&str> = history.lines().skip(2).map(str::trim_end).collect();
    assert_eq!(
        lines,
        ["2         image demo:2", "3         <none>"],
        "revision 1 came back as 3: {history}"
    );

    // Restart replaces every pod.
    let before: BTreeSet<String> = pods.iter().map(|p| name(p).to_string()).collect();
    s.ok(&["rollout", "restart", "deployment/web"]);
    s.ok(&["rollout", "status", "deployment/web", "--timeout", "60"]);
    let after = wait_ready_pods(&s, "web", 4);
    assert!(
        after.iter().all(|p| !before.contains(name(p))),
        "all pods replaced"
    );
    assert!(
        after[0]["metadata"]["annotations"]["kubectl.kubernetes.io/restartedAt"].is_string(),
        "{}",
        after[0]
    );

    // Paused: a template change is recorded but rolls out only on resume.
    assert_eq!(
        s.ok(&["rollout", "pause", "deployment/web"]).trim(),
        "deployment.apps/web paused"
    );
    let replicasets = s.items(&["replicasets", "-l", "app=web"]).len();
    s.apply(&annotated("demo:3", "image demo:3"));
    wait(
        "the paused change observed",
        Duration::from_secs(30),
        || {
            let d = s.get(&["deployment", "web"]);
            (d["status"]["observedGeneration"] == d["metadata"]["generation"]).then_some(())
        },
    );
    assert_eq!(
        s.items(&["replicasets", "-l", "app=web"]).len(),
        replicasets
    );
    assert!(
        live_pods(&s, "web")
            .iter()
            .all(|p| p["spec"]["containers"][0]["image"] == "demo:1")
    );
    assert_eq!(
        s.ok(&["rollout", "resume", "deployment/web"]).trim(),
        "deployment.apps/web resumed"
    );
    s.ok(&["rollout", "status", "deployment/web", "--timeout", "60"]);
    let pods = wait_ready_pods(&s, "web", 4);
    assert!(
        pods.iter()
            .all(|p| p["spec"]["containers"][0]["image"] == "demo:3")
    );
    let history = s.ok(&["rollout", "history", "deployment/web"]);
    assert!(history.trim_end().ends_with("image demo:3"), "{history}");
}

#[test]
fn endpointslices_follow_pods_in_slices_of_100() {
    let s = start(&[]);
    let prefix = unique("e");
    let _nodes = s.sim(&prefix, &["--count", "3", "--pods-running"]);
    s.apply(
        r#"
apiVersion: v1
kind: Service
metadata: {name: big}
spec:
  selector: {app: big}
  ports: [{port: 80, targetPort: http}]
"#,
    );
    s.apply(&deployment("big", 250, "demo:1", ""));
    let slices = || s.items(&["endpointslices", "-l", "kubernetes.io/service-name=big"]);
    let endpoints = |slices: &[Value]| -> Vec<Value> {
        slices
            .iter()
            .flat_map(|sl| sl["endpoints"].as_array().cloned().unwrap_or_default())
            .collect()
    };
    let found = wait("250 ready endpoints", Duration::from_secs(120), || {
        let sl = slices();
        let eps = endpoints(&sl);
        (eps.len() == 250 && eps.iter().all(|e| e["conditions"]["ready"] == true)).then_some(sl)
    });
    assert_eq!(found.len(), 3, "250 endpoints in 3 slices");
    for sl in &found {
        assert!(sl["endpoints"].as_array().unwrap().len() <= 100);
        assert_eq!(sl["ports"][0]["port"], 8080, "named targetPort resolved");
    }

    // Scaled down: deleted pods leave the slices.
    s.ok(&["scale", "deployment/big", "--replicas", "10"]);
    let pods = wait_ready_pods(&s, "big", 10);
    let ips: BTreeSet<String> = pods
        .iter()
        .map(|p| p["status"]["podIP"].as_str().unwrap().to_string())
        .collect();
    wait(
        "10 endpoints, those of the pods",
        Duration::from_secs(60),
        || {
            let eps = endpoints(&slices());
            let have: BTreeSet<String> = eps
                .iter()
                .map(|e| e["addresses"][0].as_str().unwrap().to_string())
                .collect();
            (have == ips).then_some(())
        },
    );
}

#[test]
fn unreachable_node_is_tainted_and_its_pods_evicted() {
    let s = start(&[
        "--node-monitor-grace-period",
        "3",
        "--default-unreachable-toleration-seconds",
        "3600",
    ]);
    let a = unique("a");
    let mut lost = s.sim(&a, &["--count", "1", "--pods-running"]);
    let node_a = format!("{a}-0");
    s.apply(
        r#"
apiVersion: v1
kind: Service
metadata: {name: tol}
spec:
  selector: {app: tol}
  ports: [{port: 80}]
"#,
    );
    let tolerate = r#"      tolerations:
      - {key: node.kubernetes.io/unreachable, operator: Exists, effect: NoExecute, tolerationSeconds: 4}"#;
    s.apply(&deployment("tol", 2, "demo:1", tolerate));
    s.apply(&format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: stay, labels: {{app: stay}}}}
spec:
  nodeSelector: {{kubernetes.io/hostname: {node_a}}}
  containers: [{{name: main, image: demo:1}}]
"#
    ));
    let first = wait_ready_pods(&s, "tol", 2);
    wait_ready_pods(&s, "stay", 1);
    let ready_endpoints = || {
        s.items(&["endpointslices", "-l", "kubernetes.io/service-name=tol"])
            .iter()
            .flat_map(|sl| sl["endpoints"].as_array().cloned().unwrap_or_default())
            .filter(|e| e["conditions"]["ready"] == true)
            .count()
    };
    wait("2 ready endpoints", Duration::from_secs(30), || {
        (ready_endpoints() == 2).then_some(())
    });

    // The machine is lost: its Lease is no longer renewed.
    lost.kill();
    let node = wait(
        "Ready=Unknown and the unreachable taint",
        Duration::from_secs(30),
        || {
            let n = s.get(&["node", &node_a]);
            let unknown = n["status"]["conditions"]
                .as_array()?
                .iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "Unknown");
            let tainted = n["spec"]["taints"].as_array().is_some_and(|t| {
                t.iter().any(|t| {
                    t["key"] == "node.kubernetes.io/unreachable" && t["effect"] == "NoExecute"
                })
            });
            (unknown && tainted).then_some(n)
        },
    );
    assert_eq!(
        node["status"]["conditions"][0]["reason"],
        "NodeStatusUnknown"
    );
    wait("endpoints not ready", Duration::from_secs(15), || {
        (ready_endpoints() == 0).then_some(())
    });

    // After their 4 s toleration the pods are evicted; the one with the
    // default toleration (an hour here) stays.
    let first_names: BTreeSet<String> = first.iter().map(|p| name(p).to_string()).collect();
    wait(
        "eviction of the tolerating pods",
        Duration::from_secs(30),
        || {
            let evicted = first_names.iter().all(|n| {
                let p = s.get(&["pod", n]);
                terminating(&p)
            });
            evicted.then_some(())
        },
    );
    assert!(
        !terminating(&s.get(&["pod", "stay"])),
        "the default toleration still holds"
    );
    wait(
        "TaintManagerEviction events",
        Duration::from_secs(10),
        || {
            events(&s)
                .iter()
                .any(|e| e["reason"] == "TaintManagerEviction")
                .then_some(())
        },
    );
    assert!(
        events(&s).iter().any(|e| e["reason"] == "NodeNotReady"),
        "a NodeNotReady event"
    );

    // A new machine takes the replacements; the tainted one gets none.
    let b = unique("b");
    let _nodes_b = s.sim(&b, &["--count", "1", "--pods-running"]);
    let replacements = wait_ready_pods(&s, "tol", 2);
    assert!(replacements.iter().all(|p| node_of(p) == format!("{b}-0")));

    // The lost node is deleted: what was bound to it goes.
    s.ok(&["delete", "node", &node_a]);
    wait(
        "pods of the deleted node removed",
        Duration::from_secs(30),
        || {
            let left: Vec<Value> = s
                .items(&["pods"])
                .into_iter()
                .filter(|p| node_of(p) == node_a)
                .collect();
            left.is_empty().then_some(())
        },
    );
}

#[test]
fn unschedulable_pod_says_why_then_lands_when_a_node_fits() {
    let s = start(&[]);
    let small = unique("small");
    let _small = s.sim(&small, &["--count", "2", "--cpu", "1", "--pods-running"]);
    s.apply(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: hungry}
spec:
  containers:
  - name: main
    image: demo:1
    resources: {requests: {cpu: "2"}}
"#,
    );
    let cond = wait("PodScheduled=False", Duration::from_secs(30), || {
        let p = s.get(&["pod", "hungry"]);
        p["status"]["conditions"]
            .as_array()?
            .iter()
            .find(|c| c["type"] == "PodScheduled" && c["status"] == "False")
            .cloned()
    });
    assert_eq!(cond["reason"], "Unschedulable");
    assert_eq!(
        cond["message"],
        "0/2 nodes are available: 2 Insufficient cpu."
    );
    wait("a FailedScheduling event", Duration::from_secs(10), || {
        events(&s)
            .iter()
            .any(|e| e["reason"] == "FailedScheduling" && e["involvedObject"]["name"] == "hungry")
            .then_some(())
    });

    // Required anti-affinity on the hostname: one pod per node.
    let apart = r#"      affinity:
        podAntiAffinity:
          requiredDuringSchedulingIgnoredDuringExecution:
          - labelSelector: {matchLabels: {app: apart}}
            topologyKey: kubernetes.io/hostname"#;
    s.apply(&deployment("apart", 3, "demo:1", apart));
    let pending = wait("two placed, one refused", Duration::from_secs(30), || {
        let pods = live_pods(&s, "apart");
        let placed = pods.iter().filter(|p| ready(p)).count();
        let refused: Vec<Value> = pods
            .into_iter()
            .filter(|p| {
                p["status"]["conditions"].as_array().is_some_and(|c| {
                    c.iter()
                        .any(|c| c["type"] == "PodScheduled" && c["status"] == "False")
                })
            })
            .collect();
        (placed == 2 && refused.len() == 1).then(|| refused[0].clone())
    });
    let msg = pending["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "PodScheduled")
        .unwrap()["message"]
        .clone();
    assert_eq!(
        msg,
        "0/2 nodes are available: 2 node(s) didn't match pod anti-affinity rules."
    );

    let big = unique("big");
    let _big = s.sim(&big, &["--count", "1", "--cpu", "4", "--pods-running"]);
    let p = wait(
        "scheduled onto the big node",
        Duration::from_secs(30),
        || {
            let p = s.get(&["pod", "hungry"]);
            ready(&p).then_some(p)
        },
    );
    assert_eq!(node_of(&p), format!("{big}-0"));
    let apart = wait_ready_pods(&s, "apart", 3);
    let nodes: BTreeSet<&str> = apart.iter().map(node_of).collect();
    assert_eq!(nodes.len(), 3, "one per node: {nodes:?}");
}

#[test]
fn garbage_collection_background_foreground_and_orphan() {
    // No nodes: the pods stay Pending, and deleting them is immediate.
    let s = start(&[]);
    let rs_of = |app: &str| s.items(&["replicasets", "-l", &format!("app={app}")]);
    let pods_of = |app: &str| s.items(&["pods", "-l", &format!("app={app}")]);
    for app in ["orph", "fore", "back"] {
        s.apply(&deployment(app, 2, "demo:1", ""));
    }
    for app in ["orph", "fore", "back"] {
        wait(&format!("pods of {app}"), Duration::from_secs(30), || {
            (pods_of(app).len() == 2).then_some(())
        });
    }

    // Orphan: the ReplicaSet stays, without its owner reference.
    s.ok(&["delete", "deployment", "orph", "--cascade=orphan"]);
    let rs = wait(
        "deployment gone, ReplicaSet released",
        Duration::from_secs(30),
        || {
            let (exists, _, _) = s.skiff(&["get", "deployment", "orph"]);
            let rs = rs_of("orph");
            (!exists
                && rs.len() == 1
                && rs[0]["metadata"]["ownerReferences"]
                    .as_array()
                    .is_none_or(|r| r.is_empty()))
            .then(|| rs[0].clone())
        },
    );
    assert_eq!(pods_of("orph").len(), 2, "its pods are kept");
    // Deleting the released ReplicaSet (background) takes its pods.
    s.ok(&["delete", "rs", name(&rs)]);
    wait(
        "orphaned ReplicaSet's pods collected",
        Duration::from_secs(30),
        || pods_of("orph").is_empty().then_some(()),
    );

    // Foreground: once the Deployment is gone, nothing of it is left.
    s.ok(&["delete", "deployment", "fore", "--cascade=foreground"]);
    wait("foreground deletion", Duration::from_secs(30), || {
        let (exists, _, _) = s.skiff(&["get", "deployment", "fore"]);
        if exists {
            return None;
        }
        assert!(
            rs_of("fore").is_empty(),
            "the ReplicaSet went before the Deployment"
        );
        assert!(
            pods_of("fore").is_empty(),
            "the pods went before the Deployment"
        );
        Some(())
    });

    // Background (the default): the Deployment goes at once, the rest after.
    s.ok(&["delete", "deployment", "back"]);
    let (exists, _, _) = s.skiff(&["get", "deployment", "back"]);
    assert!(!exists);
    wait("background collection", Duration::from_secs(30), || {
        (rs_of("back").is_empty() && pods_of("back").is_empty()).then_some(())
    });

    // A bad propagation policy is refused by name.
    let out = s
        .curl()
        .args([
            "-s",
            "-X",
            "DELETE",
            &format!(
                "{}/api/v1/namespaces/default/pods/x?propagationPolicy=Sideways",
                s.url()
            ),
        ])
        .output()
        .unwrap();
    let body = String::from_utf8_lossy(&out.stdout);
    assert!(
        body.contains("propagationPolicy: Unsupported value: \\\"Sideways\\\""),
        "{body}"
    );
}

/// The holder of the controllers' Lease, as `hostname-pid`.
fn leader(s: &Server) -> Option<String> {
    let (ok, out, _) = s.skiff(&[
        "get",
        "lease",
        "-n",
        "kube-system",
        "skiff-controllers",
        "-o",
        "json",
    ]);
    if !ok {
        return None;
    }
    let l: Value = serde_json::from_str(&out).ok()?;
    l["spec"]["holderIdentity"].as_str().map(str::to_string)
}

#[test]
fn leader_killed_another_server_takes_over_and_nothing_is_scheduled_twice() {
    let Some(etcd) = EtcdServer::start() else {
        return;
    };
    let url = etcd.url();
    // The second server joins the first's cluster with its token (they
    // share the CAs through etcd).
    let first = start(&["--store", &url]);
    let token = first.data_dir().join("token").display().to_string();
    let mut servers = [first, start(&["--store", &url, "--token-file", &token])];
    let holder = wait("a leader", Duration::from_secs(30), || leader(&servers[0]));
    let li = servers
        .iter()
        .position(|s| holder.ends_with(&format!("-{}", s.pid())))
        .expect("the leader is one of the two servers");
    let fi = 1 - li;
    let follower = &servers[fi];
    let prefix = unique("f");
    let _nodes = follower.sim(&prefix, &["--count", "3", "--pods-running"]);
    follower.apply(&deployment("one", 6, "demo:1", ""));
    wait_ready_pods(follower, "one", 6);

    let rec = follower.record_pods("tier%3Dha");
    let killed_at = Instant::now();
    servers[li].kill();
    let follower = &servers[fi];
    let ha = |name: &str| {
        deployment(name, 6, "demo:1", "").replace(
            &format!("labels: {{app: {name}}}\n    spec"),
            &format!("labels: {{app: {name}, tier: ha}}\n    spec"),
        )
    };
    follower.apply(&ha("two"));
    let new_holder = wait("a new leader", Duration::from_secs(30), || {
        leader(follower).filter(|h| *h != holder)
    });
    let took = killed_at.elapsed();
    assert!(new_holder.ends_with(&format!("-{}", follower.pid())));
    assert!(
        took <= Duration::from_secs(15),
        "the other server took over after {took:?}, more than 15 s\n{}",
        servers[li].log()
    );
    let follower = &servers[fi];
    wait_ready_pods(follower, "two", 6);
    follower.apply(&ha("three"));
    wait_ready_pods(follower, "three", 6);

    // Every pod was bound once, to one node, and scheduled once.
    let states = rec.states();
    let mut bound: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for st in &states {
        for (n, p) in st {
            if !node_of(p).is_empty() {
                bound
                    .entry(n.clone())
                    .or_default()
                    .insert(node_of(p).to_string());
            }
        }
    }
    assert_eq!(bound.len(), 12, "12 pods bound: {bound:?}");
    assert!(
        bound.values().all(|nodes| nodes.len() == 1),
        "a pod changed nodes: {bound:?}"
    );
    let scheduled: Vec<String> = events(follower)
        .iter()
        .filter(|e| e["reason"] == "Scheduled")
        .map(|e| {
            e["involvedObject"]["name"]
                .as_str()
                .unwrap_or("")
                .to_string()
        })
        .filter(|n| bound.contains_key(n))
        .collect();
    let distinct: BTreeSet<&String> = scheduled.iter().collect();
    assert_eq!(
        scheduled.len(),
        distinct.len(),
        "a pod was scheduled twice: {scheduled:?}"
    );
}

#[test]
fn deleting_a_namespace_removes_everything_in_it() {
    let s = start(&[]);
    let prefix = unique("n");
    let _nodes = s.sim(&prefix, &["--count", "2", "--pods-running"]);
    s.ok(&["create", "namespace", "team"]);
    let in_team = |m: &str| {
        m.replace(
            "metadata:\n  name:",
            "metadata:\n  namespace: team\n  name:",
        )
    };
    s.apply(&in_team(&deployment("app", 3, "demo:1", "")));
    s.apply(
        "apiVersion: v1\nkind: Service\nmetadata:\n  namespace: team\n  name: app\nspec:\n  selector: {app: app}\n  ports: [{port: 80}]\n",
    );
    s.apply("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  namespace: team\n  name: settings\ndata: {a: b}\n");
    let team_pods = || s.items(&["pods", "-n", "team"]);
    wait("3 pods in team", Duration::from_secs(30), || {
        let p = team_pods();
        (p.len() == 3 && p.iter().all(ready)).then_some(())
    });

    s.ok(&["delete", "namespace", "team"]);
    // Terminating: nothing new may be created in it meanwhile.
    let out = s
        .curl()
        .args([
            "-s",
            "-X",
            "POST",
            "-H",
            "Content-Type: application/json",
            "-d",
            r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"late"}}"#,
            &format!("{}/api/v1/namespaces/team/configmaps", s.url()),
        ])
        .output()
        .unwrap();
    let body = String::from_utf8_lossy(&out.stdout);
    assert!(
        body.contains("being terminated") || body.contains("not found"),
        "{body}"
    );
    wait(
        "the namespace and its content gone",
        Duration::from_secs(60),
        || {
            let (exists, _, _) = s.skiff(&["get", "namespace", "team"]);
            (!exists).then_some(())
        },
    );
    for kind in [
        "pods",
        "deployments",
        "replicasets",
        "services",
        "endpointslices",
        "configmaps",
    ] {
        assert!(
            s.items(&[kind, "-n", "team"]).is_empty(),
            "{kind} left in team"
        );
    }
}

fn signal(p: &KillOnDrop, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &p.0.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
}

fn node_state(s: &Server, name: &str) -> (String, bool) {
    let n = s.get(&["node", name]);
    let ready = n["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == "Ready")
        .map(|c| c["status"].as_str().unwrap_or("").to_string())
        .unwrap_or_default();
    let tainted = n["spec"]["taints"].as_array().is_some_and(|t| {
        t.iter()
            .any(|t| t["key"] == "node.kubernetes.io/unreachable")
    });
    (ready, tainted)
}

#[test]
fn a_node_that_comes_back_is_untainted_and_its_pods_ready_again() {
    let s = start(&["--node-monitor-grace-period", "3"]);
    let prefix = unique("c");
    let machine = s.sim(&prefix, &["--count", "1", "--pods-running"]);
    let node = format!("{prefix}-0");
    s.apply(&deployment("back", 2, "demo:1", ""));
    let before: BTreeSet<String> = wait_ready_pods(&s, "back", 2)
        .iter()
        .map(|p| name(p).to_string())
        .collect();

    // Frozen (no Lease renewals): unreachable, its pods not ready.
    signal(&machine, "-STOP");
    wait("the node unreachable", Duration::from_secs(30), || {
        (node_state(&s, &node) == ("Unknown".to_string(), true)).then_some(())
    });
    wait("its pods not ready", Duration::from_secs(15), || {
        live_pods(&s, "back")
            .iter()
            .all(|p| !ready(p))
            .then_some(())
    });

    // Back: the taints go, the node and its pods are Ready again, and
    // nothing was evicted (the default toleration is 300 s).
    signal(&machine, "-CONT");
    wait("the node back", Duration::from_secs(30), || {
        (node_state(&s, &node) == ("True".to_string(), false)).then_some(())
    });
    let after: BTreeSet<String> = wait_ready_pods(&s, "back", 2)
        .iter()
        .map(|p| name(p).to_string())
        .collect();
    assert_eq!(before, after, "the same pods, not replacements");
}

/// Both cores busy until dropped.
struct CpuHog {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl CpuHog {
    fn start(n: usize) -> CpuHog {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let threads = (0..n)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        std::hint::spin_loop();
                    }
                })
            })
            .collect();
        CpuHog { stop, threads }
    }
}

impl Drop for CpuHog {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Issue 21: a rollout with `maxUnavailable: 0` went to 5 of 6 running under
/// load. The old ReplicaSet's status, written from before its own
/// scale-down, still counted a deleted pod as available, and the deployment
/// controller scaled the old ReplicaSet down again in the sync that scaled
/// the new one up; a compare-and-set conflict usually hid it. Here the
/// ReplicaSet controller's status writes are delayed (a failpoint), so the
/// old code fails every time: every watched state must keep the bounds —
/// running and ready pods for availability, all live pods for the surge,
/// and for Recreate never two templates at once (terminating pods
/// included).
#[test]
fn rollouts_keep_their_bounds_with_a_slow_status_writer_and_busy_cores() {
    let s = Server::start(
        std::path::Path::new(SKIFF),
        &[],
        &[("SKIFF_FAILPOINTS", "replicaset-status=delay(300)")],
    );
    let prefix = unique("b");
    let _nodes = s.sim(
        &prefix,
        &[
            "--count",
            "4",
            "--cpu",
            "2",
            "--memory",
            "4Gi",
            "--pods-running",
        ],
    );
    // (name, replicas, strategy, surge, unavailable, busy cores)
    let cases: [(&str, u32, &str, usize, usize, bool); 4] = [
        (
            "exact",
            6,
            "{type: RollingUpdate, rollingUpdate: {maxSurge: 1, maxUnavailable: 0}}",
            1,
            0,
            false,
        ),
        (
            "busy",
            6,
            "{type: RollingUpdate, rollingUpdate: {maxSurge: 1, maxUnavailable: 0}}",
            1,
            0,
            true,
        ),
        (
            "pct",
            20,
            "{type: RollingUpdate, rollingUpdate: {maxSurge: 25%, maxUnavailable: 25%}}",
            5,
            5,
            false,
        ),
        ("recreate", 4, "{type: Recreate}", 0, 0, false),
    ];
    for (name, replicas, strategy, surge, unavailable, busy) in cases {
        let n = replicas as usize;
        s.apply(&deployment_with(name, replicas, strategy, "demo:1", ""));
        wait_ready_pods(&s, name, n);
        wait("status caught up", Duration::from_secs(30), || {
            let d = s.get(&["deployment", name]);
            (d["status"]["availableReplicas"] == replicas
                && d["status"]["updatedReplicas"] == replicas)
                .then_some(())
        });
        let rec = s.record_pods(&format!("app%3D{name}"));
        let hog = busy.then(|| CpuHog::start(2));
        s.apply(&deployment_with(name, replicas, strategy, "demo:2", ""));
        let out = s.ok(&[
            "rollout",
            "status",
            &format!("deployment/{name}"),
            "--timeout",
            "120",
        ]);
        drop(hog);
        assert!(out.contains("successfully rolled out"), "{name}: {out}");
        let pods = wait_ready_pods(&s, name, n);
        assert!(
            pods.iter()
                .all(|p| p["spec"]["containers"][0]["image"] == "demo:2"),
            "{name}: every pod of the new template"
        );
        let states = rec.states();
        assert!(
            states.len() > 2 * n,
            "{name}: the watch saw the rollout ({} states)",
            states.len()
        );
        for (i, st) in states.iter().enumerate() {
            let live: Vec<&Value> = st.values().filter(|p| !terminating(p)).collect();
            if strategy.contains("Recreate") {
                let templates: BTreeSet<&str> = st
                    .values()
                    .map(|p| {
                        p["metadata"]["labels"]["pod-template-hash"]
                            .as_str()
                            .unwrap_or("")
                    })
                    .collect();
                assert!(
                    templates.len() <= 1,
                    "{name}: state {i} has pods of two templates: {templates:?}"
                );
                continue;
            }
            let running = live
                .iter()
                .filter(|p| p["status"]["phase"] == "Running")
                .count();
            let ready_n = live.iter().filter(|p| ready(p)).count();
            assert!(
                live.len() <= n + surge,
                "{name}: state {i}: {} live pods, more than {n} + maxSurge {surge}",
                live.len()
            );
            assert!(
                running >= n - unavailable && ready_n >= n - unavailable,
                "{name}: state {i}: {running} running, {ready_n} ready, fewer than {n} - maxUnavailable {unavailable}"
            );
        }
        s.ok(&["delete", "deployment", name]);
    }
}
