//! End to end through the built `skiff` binary: a real server process, the
//! CLI as a user runs it, and the REST API read with an HTTP client.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;
use skiff_testkit::server::Server;
use skiff_testkit::{EtcdServer, KillOnDrop, free_port};

const SKIFF: &str = env!("CARGO_BIN_EXE_skiff");

fn manifests() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/manifests")
}

/// A `skiff server` process with its own port, data dir and HOME; the CLI
/// finds it through the ~/.skiff/config the server writes.
fn start(store: Option<String>) -> Server {
    match store {
        Some(s) => Server::start_with_client_config(Path::new(SKIFF), &["--store", &s]),
        None => Server::start_with_client_config(Path::new(SKIFF), &[]),
    }
}

/// A CLI call (no input).
fn skiff(c: &Server, args: &[&str]) -> Output {
    c.output_stdin(args, "")
}

/// The Services of `default` but the server's own `kubernetes`.
fn services(c: &Server) -> Vec<(String, String, String)> {
    let list = c.rest("/api/v1/namespaces/default/services");
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["metadata"]["name"] != "kubernetes")
        .map(|s| {
            (
                s["metadata"]["name"].as_str().unwrap().to_string(),
                s["spec"]["clusterIP"].as_str().unwrap().to_string(),
                s["spec"]["ports"][0]["nodePort"].to_string(),
            )
        })
        .collect()
}

fn guestbook_flow(mut c: Server) {
    let guestbook = manifests().join("guestbook-all-in-one.yaml");
    let guestbook = guestbook.to_str().unwrap();
    let out = c.ok(&["apply", "-f", guestbook]);
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        [
            "service/redis-master created",
            "deployment.apps/redis-master created",
            "service/redis-replica created",
            "deployment.apps/redis-replica created",
            "service/frontend created",
            "deployment.apps/frontend created",
        ]
    );
    assert!(
        c.ok(&["apply", "-f", guestbook])
            .lines()
            .all(|l| l.ends_with(" unchanged"))
    );
    let nginx = manifests().join("nginx-deployment.yaml");
    assert_eq!(
        c.ok(&["apply", "-f", nginx.to_str().unwrap()]),
        "deployment.apps/nginx-deployment created\n"
    );

    // The table shows allocated ClusterIPs and the NodePort.
    let table = c.ok(&["get", "svc"]);
    let frontend = table
        .lines()
        .find(|l| l.starts_with("frontend"))
        .expect("frontend row");
    let cols: Vec<&str> = frontend.split_whitespace().collect();
    assert_eq!(cols[1], "NodePort");
    assert!(cols[2].starts_with("10.96."), "{frontend}");
    assert!(
        cols[4].starts_with("80:3") && cols[4].ends_with("/TCP"),
        "{frontend}"
    );
    assert!(table.lines().next().unwrap().starts_with("NAME"));

    // The REST API shows the same objects.
    let svcs = services(&c);
    assert_eq!(svcs.len(), 3);
    let rest_frontend = c.rest("/api/v1/namespaces/default/services/frontend");
    assert_eq!(
        rest_frontend["spec"]["clusterIP"].as_str().unwrap(),
        cols[2]
    );
    let dep = c.rest("/apis/apps/v1/namespaces/default/deployments/nginx-deployment");
    assert_eq!(dep["spec"]["replicas"], 3);

    // -o json of several objects is a List; one object round-trips.
    let list: Value = serde_json::from_str(&c.ok(&["get", "deploy", "-o", "json"])).unwrap();
    assert_eq!(
        (
            list["kind"].as_str(),
            list["items"].as_array().map(Vec::len)
        ),
        (Some("List"), Some(4))
    );
    let one = c.ok(&["get", "deploy", "nginx-deployment", "-o", "json"]);
    let before: Value = serde_json::from_str(&one).unwrap();
    // Applying the live JSON back changes only what apply records of it
    // (kubectl says "configured" too); once more, nothing changes.
    let out = c.output_stdin(&["apply", "-f", "-"], &one);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let after: Value =
        serde_json::from_str(&c.ok(&["get", "deploy", "nginx-deployment", "-o", "json"])).unwrap();
    assert_eq!(after["spec"], before["spec"]);
    assert_eq!(after["metadata"]["labels"], before["metadata"]["labels"]);
    let one = c.ok(&["get", "deploy", "nginx-deployment", "-o", "json"]);
    let out = c.output_stdin(&["apply", "-f", "-"], &one);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "deployment.apps/nginx-deployment unchanged\n"
    );
    let yaml = c.ok(&["get", "svc", "frontend", "-o", "yaml"]);
    assert!(yaml.contains("clusterIP: 10.96."));
    assert_eq!(c.ok(&["get", "deploy", "-o", "name"]).lines().count(), 4);
    assert!(c.ok(&["get", "ns"]).contains("kube-system"));
    assert!(
        c.ok(&["describe", "svc", "frontend"])
            .contains("Name:         frontend")
    );

    // A change is "configured".
    let changed = one.replace("\"replicas\": 3", "\"replicas\": 5");
    assert_ne!(changed, one);
    let out = c.output_stdin(&["apply", "-f", "-"], &changed);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "deployment.apps/nginx-deployment configured\n"
    );

    // After a restart everything is there, with the same addresses.
    c.kill();
    c.boot();
    assert_eq!(services(&c), svcs);
    assert_eq!(
        c.rest("/apis/apps/v1/namespaces/default/deployments/nginx-deployment")["spec"]["replicas"],
        5
    );

    assert_eq!(c.ok(&["delete", "-f", guestbook]).lines().count(), 6);
    assert_eq!(c.ok(&["get", "svc", "-o", "name"]), "service/kubernetes\n");
    assert_eq!(
        c.ok(&["create", "namespace", "team-a"]),
        "namespace/team-a created\n"
    );
}

#[test]
fn guestbook_on_the_embedded_store() {
    guestbook_flow(start(None));
}

#[test]
fn guestbook_on_etcd() {
    let Some(etcd) = EtcdServer::start() else {
        return;
    };
    guestbook_flow(start(Some(etcd.url())));
}

#[test]
fn bad_input_is_refused_precisely_and_nothing_is_stored() {
    let c = start(None);
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.to_str().unwrap().to_string()
    };
    let good = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: fine\n";
    let cases = [
        (
            write("malformed.yaml", &format!("{good}---\nkind: [unclosed\n")),
            "malformed.yaml: document 2: malformed YAML/JSON",
        ),
        (
            write(
                "kind.yaml",
                &format!("{good}---\napiVersion: v1\nkind: Gadget\nmetadata:\n  name: g\n"),
            ),
            "kind.yaml: document 2: unknown kind \"Gadget\"",
        ),
        (
            write(
                "version.yaml",
                "apiVersion: apps/v2\nkind: Deployment\nmetadata:\n  name: d\n",
            ),
            "version.yaml: document 1: unknown kind \"Deployment\" in apiVersion \"apps/v2\"",
        ),
        (
            write(
                "type.yaml",
                "apiVersion: v1\nkind: Service\nmetadata:\n  name: s\nspec:\n  ports:\n  - port: eighty\n",
            ),
            "type.yaml: document 1: spec.ports[0].port: invalid type",
        ),
    ];
    for (file, want) in &cases {
        let out = skiff(&c, &["apply", "-f", file]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{file} was accepted");
        assert!(stderr.contains(want), "{file}: wanted {want:?} in {stderr}");
        assert!(stderr.contains("nothing was applied"), "{stderr}");
    }
    // Server-side refusals name the file, the document and the field.
    let server_side = [
        (
            write(
                "name.yaml",
                "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: Not_Valid\n",
            ),
            "metadata.name: Invalid value: \"Not_Valid\"",
        ),
        (
            write(
                "port.yaml",
                "apiVersion: v1\nkind: Service\nmetadata:\n  name: s\nspec:\n  ports:\n  - port: 70000\n",
            ),
            "spec.ports[0].port: Invalid value: 70000",
        ),
        (
            write(
                "cidr.yaml",
                "apiVersion: v1\nkind: Service\nmetadata:\n  name: s\nspec:\n  clusterIP: 172.16.0.1\n  ports:\n  - port: 80\n",
            ),
            "spec.clusterIP: Invalid value: \"172.16.0.1\": provided IP is not in the valid range",
        ),
        (
            write(
                "ns.yaml",
                "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: c\n  namespace: missing\n",
            ),
            "namespaces \"missing\" not found",
        ),
    ];
    for (file, want) in &server_side {
        let out = skiff(&c, &["apply", "-f", file]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{file} was accepted");
        assert!(
            stderr.contains(&format!("{file}: document 1")) && stderr.contains(want),
            "{file}: wanted {want:?} in {stderr}"
        );
    }
    // Nothing of any of it was stored, not even the good documents beside
    // unreadable ones.
    assert_eq!(
        c.rest("/api/v1/configmaps")["items"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
    assert_eq!(services(&c).len(), 0, "the server's own `kubernetes` only");
    // Unknown fields warn and apply.
    let extra = write(
        "extra.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: extra\nsurprise: true\n",
    );
    let out = skiff(&c, &["apply", "-f", &extra]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown field \"surprise\""));
    // A stale resourceVersion is a conflict.
    let mut cm: Value = serde_json::from_str(&c.ok(&["get", "cm", "extra", "-o", "json"])).unwrap();
    cm["data"] = serde_json::json!({"a": "1"});
    assert!(
        c.output_stdin(&["apply", "-f", "-"], &cm.to_string())
            .status
            .success()
    );
    // Unknown kinds on the command line.
    let out = skiff(&c, &["get", "gadgets"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("doesn't have a resource type \"gadgets\"")
    );
    let out = skiff(&c, &["get", "po", "missing"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("pods \"missing\" not found"));
}

#[test]
fn a_missing_server_gets_a_clear_error() {
    let home = tempfile::tempdir().unwrap();
    let out = Command::new(SKIFF)
        .args([
            "--server",
            &format!("http://127.0.0.1:{}", free_port()),
            "get",
            "po",
        ])
        .env("HOME", home.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot reach the API server"), "{stderr}");
}

#[test]
fn apply_removes_what_the_manifest_no_longer_has() {
    let c = start(None);
    let v1 = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: m\n  labels:\n    a: '1'\n    b: '2'\ndata:\n  x: '1'\n  y: '2'\n";
    let v2 = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: m\n  labels:\n    a: '1'\ndata:\n  x: '1'\n";
    assert_eq!(
        String::from_utf8_lossy(&c.output_stdin(&["apply", "-f", "-"], v1).stdout),
        "configmap/m created\n"
    );
    // Someone else adds a label: apply leaves it alone.
    let out = c
        .curl()
        .args([
            "-sf",
            "-X",
            "PATCH",
            "-H",
            "content-type: application/merge-patch+json",
            "-d",
            r#"{"metadata":{"labels":{"other":"x"}}}"#,
        ])
        .arg(format!(
            "{}/api/v1/namespaces/default/configmaps/m",
            c.url()
        ))
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&c.output_stdin(&["apply", "-f", "-"], v2).stdout),
        "configmap/m configured\n"
    );
    let live = c.rest("/api/v1/namespaces/default/configmaps/m");
    assert_eq!(
        live["metadata"]["labels"],
        serde_json::json!({"a": "1", "other": "x"})
    );
    assert_eq!(live["data"], serde_json::json!({"x": "1"}));
    assert_eq!(
        String::from_utf8_lossy(&c.output_stdin(&["apply", "-f", "-"], v2).stdout),
        "configmap/m unchanged\n"
    );
}

#[test]
fn get_watch_prints_changes_as_they_happen() {
    use std::io::{BufRead, BufReader};
    let c = start(None);
    c.ok(&["create", "namespace", "w"]);
    let first = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: first\n";
    assert!(
        c.output_stdin(&["-n", "w", "apply", "-f", "-"], first)
            .status
            .success()
    );
    let mut watcher = KillOnDrop(
        Command::new(SKIFF)
            .args(["-n", "w", "get", "cm", "-w"])
            .env("HOME", c.home.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let stdout = watcher.0.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    // The listed row says the list is done: what follows is the watch.
    let listed = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the header");
    assert!(listed.starts_with("NAME"), "{listed}");
    let listed = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("a listed row");
    assert!(listed.starts_with("first"), "{listed}");
    let cm = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: live\ndata:\n  a: b\n";
    assert!(
        c.output_stdin(&["-n", "w", "apply", "-f", "-"], cm)
            .status
            .success()
    );
    let line = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("a row for the new ConfigMap");
    assert!(
        line.starts_with("live") && line.split_whitespace().nth(1) == Some("1"),
        "{line}"
    );
}
